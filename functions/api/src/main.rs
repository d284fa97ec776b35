//! The `api` Lambda: builds configuration, the deployment's use cases (DynamoDB, S3, Step
//! Functions, EventBridge, EC2/EBS) and the API once per execution environment, then serves
//! both HTTP APIs with [`tern_fn_api::Handler`].

use std::convert::Infallible;
use std::sync::Arc;

use tern_api::{Api, Deps};
use tern_core::{RandomIds, SystemClock};
use tern_fn_api::{Config, Handler};
use tern_fn_common::{aws_config, images, Deployment, Settings};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let config = Config::from_env()?;
    let settings = Settings::from_env()?;
    let limits = tern_core::Config::from_env(|name| std::env::var(name).ok())?;
    let aws = aws_config(&settings.region).await;
    let d = Deployment::connect(&aws, &settings, limits.clone(), images(&aws, &settings))?;
    let api = Api::new(Deps {
        store: d.store.clone(),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        config: limits,
    });
    api.attach_replication(d.replication.clone());
    let handler = &Handler::new(api, config.connector_role_name)
        .with_signed_route(d.service.clone(), &settings.region);
    lambda_http::run(lambda_http::service_fn(move |request| async move {
        Ok::<_, Infallible>(handler.handle(request).await)
    }))
    .await
}
