//! Tern's adapters on the AWS SDK, used by the AWS deployment (the Lambda functions).
//!
//! * [`dynamodb::DynamoStore`]: the `Store` port on one DynamoDB table.
//! * [`stepfunctions::StepFunctions`]: the `Workflows` port on Step Functions.
//! * [`eventbridge::EventBridge`]: the `EventBus` port on EventBridge `PutEvents`.
//! * [`s3::S3Staging`]: the `Staging` port on the S3 staging bucket.
//! * [`images::Ec2Images`]: the `Images` port on EC2 ImportSnapshot, the EBS direct APIs and
//!   EC2 images.
//! * [`launcher::CfnLauncher`]: the `Launcher` port (LaunchApp / TerminateApp) on CloudFormation
//!   stacks.
//!
//! Each maps its service's errors onto its port's kinds in one function, through the shared
//! classification of [`sdk`] (throttling, timeouts and 5xx are transient).

pub mod dynamodb;
pub mod eventbridge;
pub mod images;
pub mod launcher;
pub mod s3;
mod sdk;
pub mod stepfunctions;

pub use dynamodb::DynamoStore;
pub use eventbridge::EventBridge;
pub use images::{Ec2Images, Ec2ImagesSettings, SeedMethod};
pub use launcher::{CfnLauncher, CfnLauncherSettings};
pub use s3::S3Staging;
pub use stepfunctions::StepFunctions;
