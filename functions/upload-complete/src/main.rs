//! The upload-complete Lambda (see the library for what it does).

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;
use tern_fn_common::{aws_config, images, Deployment, Settings};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = Settings::from_env()?;
    let limits = tern_core::Config::from_env(|name| std::env::var(name).ok())?;
    let aws = aws_config(&settings.region).await;
    let images = images(&aws, &settings);
    let deployment = Arc::new(Deployment::connect(&aws, &settings, limits, images)?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let deployment = deployment.clone();
        async move { tern_fn_upload_complete::handle(&deployment.replication, &event.payload).await }
    }))
    .await
}
