//! A task Lambda of the `replication-run` state machine (see the library for the contract).

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;
use tern_fn_common::Deployment;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let function = tern_fn_tasks::task_function(std::env::var(tern_fn_tasks::TASK_FUNCTION).ok())?;
    let deployment = Arc::new(Deployment::from_env().await?.0);
    tracing::info!(function, "task function ready");
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let deployment = deployment.clone();
        async move { tern_fn_tasks::handle(&deployment.replication, function, event.payload).await }
    }))
    .await
}
