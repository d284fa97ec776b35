//! The `api` Lambda: builds configuration, the deployment's use cases (DynamoDB, S3, Step
//! Functions, EventBridge, EC2/EBS, CloudFormation for LaunchApp) and the API once per execution
//! environment, then serves both HTTP APIs with [`tern_fn_api::Handler`].

use std::convert::Infallible;

use tern_fn_api::{deployment_api, Config, Handler};
use tern_fn_common::Deployment;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let config = Config::from_env()?;
    let (d, settings) = Deployment::from_env().await?;
    let api = deployment_api(&d);
    let handler = &Handler::new(api, config.connector_role_name)
        .with_signed_route(d.service.clone(), &settings.region);
    lambda_http::run(lambda_http::service_fn(move |request| async move {
        Ok::<_, Infallible>(handler.handle(request).await)
    }))
    .await
}
