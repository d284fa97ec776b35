//! The `api` Lambda: builds configuration, the DynamoDB store and the API once per execution
//! environment, then serves API Gateway requests with [`tern_fn_api::Handler`].

use std::convert::Infallible;
use std::sync::Arc;

use tern_api::{Api, Deps};
use tern_core::{RandomIds, Service, SystemClock};
use tern_fn_api::{Config, Handler};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let config = Config::from_env()?;
    let limits = tern_core::Config::from_env(|name| std::env::var(name).ok())?;
    let event_source = tern_fn_api::event_source(&limits)?;
    tracing::info!(event_source, "configuration read");
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(config.region.clone()))
        .load()
        .await;
    let store = Arc::new(tern_aws::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&aws),
        &config.table_name,
    ));
    let keys = Service::new(
        store.clone(),
        Arc::new(SystemClock),
        Arc::new(RandomIds),
        limits.clone(),
    );
    let api = Api::new(Deps {
        store,
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        config: limits,
    });
    let handler =
        &Handler::new(api, config.connector_role_name).with_signed_route(keys, &config.region);
    lambda_http::run(lambda_http::service_fn(move |request| async move {
        Ok::<_, Infallible>(handler.handle(request).await)
    }))
    .await
}
