//! Tern's adapters on the AWS SDK, used by the AWS deployment (the Lambda functions).
//!
//! * [`dynamodb::DynamoStore`]: the `Store` port on one DynamoDB table.

pub mod dynamodb;

pub use dynamodb::DynamoStore;
