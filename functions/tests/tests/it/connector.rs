//! The real connector in the AWS pipeline. `tern connector`'s agent (the `[files]` source over a
//! qcow2 disk made by `qemu-img`) talks to the `api` Lambda's handler behind a stand-in of one
//! of the stack's APIs (`tern_fn_api::gateway`), either
//! * the `SmsEndpoint`, signing with a Tern-issued connector key, and uploading into moto's S3
//!   with IAM credentials of its own (`[staging.credentials]`: S3 does not know Tern's keys); or
//! * the `ApiEndpoint` behind the IAM authorizer (`api_auth = "iam"`), as a session of the
//!   `TernConnector` role, the same identity uploading into S3.
//!
//! The rest is the deployed pipeline of `pipeline.rs`: the ASL on the States
//! engine with its Tasks resolved to the tasks Lambda's handler, EBS direct and EC2 on moto. What
//! EventBridge does in the stack is played by two loops: the every-minute schedule (the
//! scheduler Lambda's handler, here every 300 ms) and the staging bucket's Object Created
//! events (each new `manifest.json` handed to the upload-complete Lambda's handler).
//!
//! A seed and an incremental run: each run's snapshot read back with GetSnapshotBlock equals
//! the disk at that run, and the incremental run writes exactly the changed blocks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sms::config::{BehaviorVersion, Credentials, Region};
use serde_json::json;
use tern_core::service::KeyRole;
use tern_fn_api::Handler;
use tern_test_support::qemu::{change_blocks, make_raw, BLOCK};

use crate::pipeline::{deployed, pipeline_stack, Deployed};
use crate::{read_back, REGION};

fn sms(endpoint: &str, id: &str, secret: &str) -> aws_sdk_sms::Client {
    aws_sdk_sms::Client::from_conf(
        aws_sdk_sms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(id, secret, None, None, "tern-tests"))
            .endpoint_url(endpoint)
            .build(),
    )
}

/// `raw` as the qcow2 image `qcow2`, made by qemu-img.
fn to_qcow2(raw: &std::path::Path, qcow2: &std::path::Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(qcow2)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Which of the stack's two APIs the connector calls.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// `SmsEndpoint`: a Tern-issued connector key (service `sms`); IAM keys of its own for S3.
    TernKeys,
    /// `ApiEndpoint`: a session of the `TernConnector` role (service `execute-api`), the same
    /// identity for S3.
    IamRole,
}

/// The connector role's session as IAM knows it (the stand-in authorizer's only identity).
const ROLE_KEY: &str = "ASIACONNECTORSESSION";
const ROLE_SECRET: &str = "role-session-secret";
const ROLE_ARN: &str = "arn:aws:sts::123456789012:assumed-role/TernConnector/lab-appliance";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_connector_seeds_and_replicates_incrementally_through_the_deployed_pipeline() {
    replicate_through_the_pipeline(Route::TernKeys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_with_the_connector_role_replicates_through_the_iam_endpoint() {
    replicate_through_the_pipeline(Route::IamRole).await;
}

async fn replicate_through_the_pipeline(route: Route) {
    let what = format!("the real connector in the AWS pipeline ({route:?})");
    let Some(stack) = pipeline_stack(&what).await else {
        return;
    };
    let Deployed {
        deployment,
        s3,
        ebs,
        driver,
        ..
    } = deployed(&stack).await;
    let service = deployment.service.clone();
    let replication = deployment.replication.clone();

    // The API as the stack's SmsEndpoint serves it, with keys `tern keys issue` would make, and
    // as its ApiEndpoint serves it, behind the IAM authorizer.
    let handler = Arc::new(
        Handler::new(tern_fn_api::deployment_api(&deployment), "TernConnector")
            .with_signed_route(service.clone(), REGION),
    );
    let endpoint = tern_fn_api::gateway::serve(handler.clone()).await.unwrap();
    let role = tern_sigv4::KeyPair {
        access_key_id: ROLE_KEY.into(),
        secret_access_key: ROLE_SECRET.into(),
    };
    let iam_endpoint = tern_fn_api::gateway::serve_iam(handler, REGION, [(role, ROLE_ARN.into())])
        .await
        .unwrap();
    let admin = service
        .issue_access_key(KeyRole::Admin, "ops")
        .await
        .unwrap();
    let connector_key = service
        .issue_access_key(KeyRole::Connector, "lab")
        .await
        .unwrap();
    let client = sms(&endpoint, &admin.access_key_id, &admin.secret_access_key);

    // What EventBridge does in the stack: the schedule, and the manifests' Object Created events.
    let bucket = stack.settings.staging_bucket.clone();
    let schedule = {
        let replication = replication.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = tern_fn_scheduler::handle(&replication).await {
                    eprintln!("scheduler tick: {e:?}");
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let notifications = {
        let (replication, s3, bucket) = (replication.clone(), s3.clone(), bucket.clone());
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            loop {
                let listed = s3.list_objects_v2().bucket(&bucket).send().await;
                let keys: Vec<String> = listed
                    .map(|l| {
                        l.contents()
                            .iter()
                            .filter_map(|o| o.key().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                for key in keys {
                    if key.ends_with("/manifest.json") && seen.insert(key.clone()) {
                        let mut event = crate::fixture("s3/manifest-object-created.json");
                        event["detail"]["bucket"]["name"] = json!(bucket);
                        event["detail"]["object"]["key"] = json!(key);
                        let outcome = tern_fn_upload_complete::handle(&replication, &event).await;
                        eprintln!("upload-complete {key}: {outcome:?}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // The connector: a qcow2 disk in its inventory, and the identity of its route.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk0.qcow2");
    let mut disk = make_raw(&raw, 40 * BLOCK, 31);
    to_qcow2(&raw, &qcow2);
    std::fs::write(
        dir.path().join("inventory.toml"),
        format!(
            "vm_manager_id = \"lab\"\n\n[[vms]]\nid = \"vm-1\"\nname = \"app\"\nos_type = \"LINUX\"\ndisks = [{:?}]\n",
            qcow2.display().to_string()
        ),
    )
    .unwrap();
    let identity = match route {
        Route::TernKeys => format!(
            "endpoint = {endpoint:?}\n\
             [credentials]\naccess_key_id = {:?}\nsecret_access_key = {:?}\n\n\
             [staging]\nendpoint = {:?}\npart_size_mib = 5\n\
             [staging.credentials]\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\n",
            connector_key.access_key_id, connector_key.secret_access_key, stack._moto.endpoint,
        ),
        Route::IamRole => format!(
            "endpoint = {iam_endpoint:?}\napi_auth = \"iam\"\n\
             [credentials]\naccess_key_id = {ROLE_KEY:?}\nsecret_access_key = {ROLE_SECRET:?}\n\n\
             [staging]\nendpoint = {:?}\npart_size_mib = 5\n",
            stack._moto.endpoint,
        ),
    };
    let config = dir.path().join("connector.toml");
    std::fs::write(
        &config,
        format!(
            "region = {REGION:?}\nname = \"lab\"\nstate_dir = \"state\"\n\
             heartbeat_interval_secs = 1\npoll_interval_secs = 1\n{identity}\n\
             [files]\ninventory = \"inventory.toml\"\n",
        ),
    )
    .unwrap();
    let mut agent =
        tern_connector::Agent::new(tern_connector::ConnectorConfig::load(&config).unwrap())
            .await
            .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(async move {
        agent
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    // The catalog from the connector, and a job seeded now.
    let server_id = tern_test_support::poll::until_async(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            client.import_server_catalog().send().await.ok()?;
            let servers = client.get_servers().send().await.ok()?;
            servers
                .server_list()
                .first()
                .and_then(|s| s.server_id())
                .map(str::to_owned)
        },
    )
    .await
    .expect("the connector's VM in the catalog");
    let job_id = client
        .create_replication_job()
        .server_id(&server_id)
        .seed_replication_time(aws_smithy_types::DateTime::from_secs(
            time::OffsetDateTime::now_utc().unix_timestamp(),
        ))
        .frequency(12)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned();

    // Waits (bounded) for the job's latest run to be one other than `before`; its snapshot.
    let completed = |before: Option<String>| {
        let service = service.clone();
        let job_id = job_id.clone();
        async move {
            let job = tern_test_support::poll::until_async(
                Duration::from_secs(180),
                Duration::from_millis(200),
                || async {
                    let job = service.get_job(&job_id).await.ok()?;
                    (job.latest_run_id.is_some() && job.latest_run_id != before).then_some(job)
                },
            )
            .await;
            let Some(job) = job else {
                let (_, runs) = service.list_runs(&job_id, None, 3).await.unwrap();
                panic!(
                    "no run of {job_id} completed within 180 s: {:#?}",
                    runs.items
                );
            };
            (
                job.latest_run_id.unwrap(),
                job.latest_snapshot_ids[0].clone(),
            )
        }
    };

    // The seed: the connector uploads a stream-optimized VMDK, written to EBS direct.
    let (run1, seed_snapshot) = completed(None).await;
    let mut read = vec![0u8; disk.len()];
    read_back(&ebs, &seed_snapshot, &mut read).await;
    assert!(read == disk, "the seed's snapshot reads back as the disk");

    // Incremental: 2 of 40 blocks changed; the connector uploads their delta only.
    change_blocks(&mut disk, &[5, 30], &[], 32);
    std::fs::write(&raw, &disk).unwrap();
    to_qcow2(&raw, &qcow2);
    client
        .start_on_demand_replication_run()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    let (run2, child) = completed(Some(run1.clone())).await;
    assert_ne!(child, seed_snapshot);
    let mut read = vec![0u8; disk.len()];
    read_back(&ebs, &seed_snapshot, &mut read).await;
    let written = read_back(&ebs, &child, &mut read).await;
    assert_eq!(
        written, 2,
        "the incremental run wrote exactly the changed blocks"
    );
    assert!(read == disk, "parent + child read back as the changed disk");
    let (_, runs) = service.list_runs(&job_id, None, 5).await.unwrap();
    let done: Vec<_> = runs
        .items
        .iter()
        .filter(|r| r.replication_run_id == run1 || r.replication_run_id == run2)
        .map(|r| r.state.as_str().to_owned())
        .collect();
    assert_eq!(done, ["COMPLETED", "COMPLETED"], "{:#?}", runs.items);

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
    schedule.abort();
    notifications.abort();
    driver.abort();
}

/// The `ApiEndpoint`'s authorizer and the handler's reading of the caller: a session of the
/// connector role is a connector; any other IAM identity is an administrator, refused the
/// connector operations; a request signed for `sms`, or with a key IAM does not know, never
/// reaches the handler.
#[tokio::test]
async fn the_iam_endpoint_admits_only_the_connector_role_as_a_connector() {
    use aws_credential_types::provider::SharedCredentialsProvider;
    use tern_connector::signing::IAM_SIGNING_NAME;
    use tern_connector::{ApiClient, ConnectorError};

    let store = Arc::new(tern_core::MemoryStore::new());
    let api = tern_api::Api::new(tern_api::Deps {
        store,
        clock: Arc::new(tern_core::SystemClock),
        ids: Arc::new(tern_core::RandomIds),
        config: tern_core::Config::default(),
    });
    let handler = Arc::new(Handler::new(api, "TernConnector"));
    let pair = |id: &str| tern_sigv4::KeyPair {
        access_key_id: id.into(),
        secret_access_key: format!("{id}-secret"),
    };
    let endpoint = tern_fn_api::gateway::serve_iam(
        handler,
        REGION,
        [
            (pair("ASIAROLE"), ROLE_ARN.to_owned()),
            (
                pair("AKIAOPS"),
                "arn:aws:iam::123456789012:user/ops".to_owned(),
            ),
        ],
    )
    .await
    .unwrap();
    let client = |id: &str, secret: &str, signing_name: &'static str| {
        ApiClient::with_provider(
            &endpoint,
            REGION,
            SharedCredentialsProvider::new(Credentials::new(id, secret, None, None, "test")),
            signing_name,
            Duration::from_secs(10),
        )
        .unwrap()
    };
    let register = json!({"name": "lab", "version": "1.0", "vmManagerId": "lab"});
    let call = |c: ApiClient| {
        let register = register.clone();
        async move {
            c.call::<_, serde_json::Value>("RegisterConnector", &register)
                .await
        }
    };

    let registered = call(client("ASIAROLE", "ASIAROLE-secret", IAM_SIGNING_NAME))
        .await
        .unwrap();
    assert!(
        registered["connectorId"]
            .as_str()
            .is_some_and(|id| id.starts_with("c-")),
        "{registered}"
    );
    let refused = |r: Result<serde_json::Value, ConnectorError>| match r {
        Err(ConnectorError::Service { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refused(call(client("AKIAOPS", "AKIAOPS-secret", IAM_SIGNING_NAME)).await),
        (400, "AccessDeniedException".to_owned()),
        "an administrator is not a connector"
    );
    for (id, secret, name) in [
        ("ASIAROLE", "ASIAROLE-secret", "sms"),
        ("ASIAROLE", "wrong-secret", IAM_SIGNING_NAME),
        ("AKIAUNKNOWN", "x", IAM_SIGNING_NAME),
    ] {
        assert_eq!(
            refused(call(client(id, secret, name)).await),
            (403, "ForbiddenException".to_owned()),
            "{id} signing for {name}"
        );
    }
}
