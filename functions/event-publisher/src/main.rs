//! The event-publisher Lambda (see the library for what it does).

use std::sync::Arc;

use aws_lambda_events::event::dynamodb::Event;
use lambda_runtime::{service_fn, LambdaEvent};
use tern_fn_common::Deployment;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let deployment = Arc::new(Deployment::from_env().await?.0);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| {
        let deployment = deployment.clone();
        async move {
            let response = tern_fn_event_publisher::handle(&deployment.replication, event.payload);
            Ok::<_, lambda_runtime::Error>(response.await)
        }
    }))
    .await
}
