//! The Lambda handlers of the AWS deployment with every AWS call going through Tern's SDK
//! adapters to moto's server, fed the realistic fixtures of `events/` (the ones
//! `cargo lambda invoke --data-file` uses).

mod connector;
mod event_publisher;
mod fixtures;
mod launch;
mod pipeline;
mod scheduler;
mod seed_run;
mod template;
mod upload_complete;

use std::path::PathBuf;
use std::sync::Arc;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use tern_aws::DynamoStore;
use tern_fn_common::{Deployment, Settings};
use tern_test_support::moto::{Flavor, Moto};
use tern_test_support::qemu::BLOCK;

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

/// An SDK config for moto at `endpoint` (any credentials; moto checks none).
pub fn moto_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
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

/// A fixture of `events/`, parsed.
pub fn fixture(path: &str) -> serde_json::Value {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../events")
        .join(path);
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", file.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", file.display()))
}

/// The stack's resources on moto: the table, a rule on the default bus sending Tern's events
/// to an SQS queue (to see what was published), and the deployment wired to them.
pub struct Stack {
    pub _moto: Moto,
    pub _data: tempfile::TempDir,
    pub aws: aws_config::SdkConfig,
    pub settings: Settings,
    pub store: DynamoStore,
    pub deployment: Deployment,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
}

impl Stack {
    pub async fn start(what: &str) -> Option<Stack> {
        // S3RootsFixed: EBS ListSnapshotBlocks answers as EBS does (the pipeline reads blocks back).
        Self::start_on(Flavor::S3RootsFixed, what).await
    }

    /// The stack on a moto of `flavor`.
    pub async fn start_on(flavor: Flavor, what: &str) -> Option<Stack> {
        let moto = Moto::start(flavor, what)?;
        let aws = moto_config(&moto.endpoint);
        let settings = Settings::from_lookup(|name| {
            Some(
                match name {
                    Settings::TABLE_NAME => "tern",
                    Settings::REGION => REGION,
                    Settings::ACCOUNT_ID => ACCOUNT,
                    Settings::STAGING_BUCKET => "tern-staging",
                    Settings::VMIMPORT_ROLE_NAME => "tern-vmimport",
                    Settings::STATE_MACHINE_ARN => {
                        "arn:aws:states:us-east-1:123456789012:stateMachine:ReplicationRun"
                    }
                    _ => return None,
                }
                .to_string(),
            )
        })
        .expect("settings");
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), "tern");
        store.create_table().await.expect("table");

        let sqs = aws_sdk_sqs::Client::new(&aws);
        let queue_url = sqs
            .create_queue()
            .queue_name("tern-events")
            .send()
            .await
            .expect("queue")
            .queue_url
            .expect("queue url");
        let events = aws_sdk_eventbridge::Client::new(&aws);
        events
            .put_rule()
            .name("tern-job-state-changes")
            .event_pattern(
                r#"{"source":["tern.sms"],"detail-type":["Server Migration Job State Change"]}"#,
            )
            .send()
            .await
            .expect("rule");
        events
            .put_targets()
            .rule("tern-job-state-changes")
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("queue")
                    .arn(format!("arn:aws:sqs:{REGION}:{ACCOUNT}:tern-events"))
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("target");

        // The state machine (moto stores the definition; it cannot run Lambda tasks).
        aws_sdk_sfn::Client::new(&aws)
            .create_state_machine()
            .name("ReplicationRun")
            .definition(include_str!(
                "../../../../statemachines/replication-run.asl.json"
            ))
            .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/tern-states"))
            .send()
            .await
            .expect("state machine");

        let data = tempfile::tempdir().unwrap();
        let images = tern_local::images::LocalImages::open(
            data.path(),
            &data.path().join("staging"),
            Arc::new(tern_core::RandomIds),
            Arc::new(tern_core::SystemClock),
        )
        .expect("images");
        let deployment = Deployment::connect(
            &aws,
            &settings,
            tern_core::Config::default(),
            Arc::new(images),
        )
        .expect("deployment");
        Some(Stack {
            _moto: moto,
            _data: data,
            aws,
            settings,
            store,
            deployment,
            sqs,
            queue_url,
        })
    }

    /// The events the rule delivered so far (drains the queue), as parsed JSON.
    pub async fn delivered(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        loop {
            let got = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .send()
                .await
                .expect("receive");
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                return out;
            }
            for m in messages {
                out.push(serde_json::from_str(m.body().unwrap()).expect("event json"));
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .expect("delete");
            }
        }
    }
}

/// Blocks snapshot `id` holds itself, written over `disk`; answers how many.
pub async fn read_back(ebs: &aws_sdk_ebs::Client, id: &str, disk: &mut [u8]) -> usize {
    let listed = ebs
        .list_snapshot_blocks()
        .snapshot_id(id)
        .send()
        .await
        .unwrap();
    for b in listed.blocks() {
        let i = b.block_index().unwrap() as usize;
        let got = ebs
            .get_snapshot_block()
            .snapshot_id(id)
            .block_index(i as i32)
            .block_token(b.block_token().unwrap())
            .send()
            .await
            .unwrap();
        let data = got.block_data.collect().await.unwrap().into_bytes();
        let at = i * BLOCK as usize;
        let n = (disk.len() - at).min(BLOCK as usize);
        disk[at..at + n].copy_from_slice(&data[..n]);
    }
    listed.blocks().len()
}

/// A server in the catalog of the stack's table and a 12-hourly replication job for it, seeded
/// now (so the next scheduler tick creates its first run); answers the job id.
pub async fn job_seeded_now(stack: &Stack, service: &tern_core::service::Service) -> String {
    let (_, servers) = tern_store_contract::apps::service_with_catalog(
        Arc::new(stack.store.clone()),
        tern_core::Config::default(),
        1,
    )
    .await;
    service
        .create_job(tern_core::service::NewJob {
            server_id: servers[0].clone(),
            seed_replication_time: Some(time::OffsetDateTime::now_utc()),
            frequency: Some(12),
            ..Default::default()
        })
        .await
        .expect("a replication job")
}
