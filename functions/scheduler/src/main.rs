//! The scheduler Lambda (see the library for what it does).

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;
use tern_fn_common::Deployment;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let deployment = Arc::new(Deployment::from_env().await?.0);
    lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| {
        let deployment = deployment.clone();
        async move { tern_fn_scheduler::handle(&deployment.replication).await }
    }))
    .await
}
