//! The AWS adapters through the real SDK: against moto's server where it models the service
//! (DynamoDB, S3, Step Functions, EventBridge, EC2 snapshots and images, EBS direct, CloudFormation stacks), and with `aws-smithy-mocks` for the answers moto
//! never gives (Step Functions' task-token errors, throttling, per-entry PutEvents failures).

mod dynamodb;
mod eventbridge;
mod images;
mod images_mocked;
mod launcher;
mod launcher_mocked;
mod s3;
mod seed;
mod stepfunctions;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};

/// An SDK config for moto at `endpoint` (any credentials; moto checks none).
pub fn moto_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "tern-tests",
            )),
        )
        .endpoint_url(endpoint)
        .build()
}
