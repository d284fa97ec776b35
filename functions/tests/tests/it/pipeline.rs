//! The AWS-mode pipeline on Tern's States engine: `statemachines/replication-run.asl.json`
//! run by the local engine with every Task resolved in-process to the tasks Lambda's handler
//! (`tern_fn_tasks::handle`; WaitForUpload through `lambda:invoke.waitForTaskToken` as on
//! AWS), the task tokens the engine gives handed back by the upload-complete Lambda's handler
//! fed the manifest's S3 Object Created event, the scheduler Lambda's handler starting the
//! executions, and every other AWS call through the adapters to moto (DynamoDB, S3, EC2, EBS
//! direct, seeds through EBS direct). A seed and an incremental run with 5 % of the blocks
//! changed; each run's snapshots read back with GetSnapshotBlock equal the source disk
//! (through the parent: moto does not inherit a parent's blocks). Lambda invocations per
//! function are counted and printed.
//!
//! A late duplicate of a manifest event changes nothing; 3 runs failed on purpose pause the
//! job; the state changes go through the event-publisher Lambda to an EventBridge rule's SQS
//! queue once, even when the stream batch is delivered again. Here the test stages what the
//! connector uploads; `connector.rs` runs the real connector through the same pipeline. Not
//! here: moto's own DynamoDB stream (the batch is built from the outbox items the stream
//! would carry).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tern_aws::{Ec2Images, Ec2ImagesSettings, SeedMethod};
use tern_core::images::Images;
use tern_core::replication::{functions, ObjectKind, Replication, StagingLocation};
use tern_core::store::Store as _;
use tern_fn_common::Deployment;
use tern_local::replication::{function_resource, LocalWorkflows};
use tern_states::{Engine, EngineConfig, FnHandler, StateError, TaskRegistry, TaskRequest};
use tern_test_support::qemu::{change_blocks, make_raw, BLOCK};

use crate::{read_back, Stack};

pub(crate) type Calls = Arc<Mutex<BTreeMap<String, u32>>>;

/// The image adapter's requests (EC2, EBS, S3) by operation.
#[derive(Debug, Default, Clone)]
pub(crate) struct Requests(pub(crate) Arc<Mutex<BTreeMap<String, u32>>>);

impl aws_smithy_runtime_api::client::interceptors::Intercept for Requests {
    fn name(&self) -> &'static str {
        "request counter"
    }

    fn read_before_transmit(
        &self,
        _: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let op = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_default();
        *self.0.lock().unwrap().entry(op).or_default() += 1;
        Ok(())
    }
}

/// The Lambda handler of `function` on `request`'s input, as Step Functions invokes it.
async fn invoke(
    cell: &OnceLock<Replication>,
    calls: &Calls,
    function: &str,
    input: Value,
) -> Result<Value, StateError> {
    *calls
        .lock()
        .unwrap()
        .entry(function.to_string())
        .or_default() += 1;
    let replication = cell
        .get()
        .ok_or_else(|| StateError::new("Tern.Transient", "starting"))?;
    tern_fn_tasks::handle(replication, function, input)
        .await
        .map_err(|d| StateError::new(&d.error_type, &d.error_message))
}

/// Each `${…FunctionArn}` and `lambda:invoke` resolved to the tasks Lambda's handler.
fn registry(cell: Arc<OnceLock<Replication>>, calls: Calls) -> TaskRegistry {
    let mut registry = TaskRegistry::new();
    for (_, function) in functions::SUBSTITUTIONS {
        let (cell, calls) = (cell.clone(), calls.clone());
        registry.register(
            &function_resource(function),
            Arc::new(FnHandler(move |r: TaskRequest| {
                let (cell, calls) = (cell.clone(), calls.clone());
                async move { invoke(&cell, &calls, function, r.input).await }
            })),
        );
    }
    registry.register(
        "arn:aws:states:::lambda:invoke",
        Arc::new(FnHandler(move |r: TaskRequest| {
            let (cell, calls) = (cell.clone(), calls.clone());
            async move {
                let name = r.input["FunctionName"].as_str().unwrap_or_default();
                let function = name
                    .strip_prefix("tern:function:")
                    .unwrap_or(name)
                    .to_string();
                let payload = r.input.get("Payload").cloned().unwrap_or(Value::Null);
                let out = invoke(&cell, &calls, &function, payload).await?;
                Ok(json!({"Payload": out, "StatusCode": 200}))
            }
        })),
    );
    registry
}

struct Pipeline {
    stack: Stack,
    s3: aws_sdk_s3::Client,
    ebs: aws_sdk_ebs::Client,
    deployment: Deployment,
    calls: Calls,
    job_id: String,
}

impl Pipeline {
    /// The pipeline `d` deployed on `stack`, with a job seeded now; answers the parts of `d`
    /// the pipeline does not hold (the image requests, the engine's driver, the engine).
    async fn seeded(
        stack: Stack,
        d: Deployed,
    ) -> (Pipeline, Requests, tokio::task::JoinHandle<()>, Engine) {
        let job_id = crate::job_seeded_now(&stack, &d.deployment.service).await;
        let p = Pipeline {
            stack,
            s3: d.s3,
            ebs: d.ebs,
            deployment: d.deployment,
            calls: d.calls,
            job_id,
        };
        (p, d.requests, d.driver, d.engine)
    }

    /// Stages `object` as disk 0 of `run_id` and its manifest, as the connector does, then
    /// hands the manifest's Object Created event to upload-complete twice (EventBridge
    /// delivers at least once).
    async fn upload(&self, run_id: &str, kind: ObjectKind, object: Vec<u8>, base: Option<&str>) {
        // A connector uploads after Prepare handed it the work and WaitForUpload parked: the
        // test waits for that too. (Racing the parking task's write on moto loses one of
        // the two writes: moto applies a conditional write in two unlocked steps.)
        let service = &self.deployment.service;
        tern_test_support::poll::until_async(
            Duration::from_secs(60),
            Duration::from_millis(20),
            || async {
                let (_, runs) = service.list_runs(&self.job_id, None, 1).await.ok()?;
                let run = runs.items.into_iter().next()?;
                (run.replication_run_id == run_id
                    && run.status_message.as_deref() == Some("Waiting for the connector to upload"))
                .then_some(())
            },
        )
        .await
        .unwrap_or_else(|| panic!("run {run_id} never waited for its upload"));
        let bucket = &self.stack.settings.staging_bucket;
        let layout = StagingLocation::new(bucket, &self.stack.settings.staging_prefix);
        let key = layout.disk_key(&self.job_id, run_id, 0, kind);
        let size = object.len();
        let put = |key: String, body: Vec<u8>| {
            self.s3
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send()
        };
        put(key.clone(), object).await.unwrap();
        let mut disk = json!({"index": 0, "kind": kind.as_str(), "key": key, "size": size});
        if let Some(base) = base {
            disk["baseRunId"] = json!(base);
        }
        let manifest = json!({"jobId": self.job_id, "runId": run_id, "disks": [disk]});
        let manifest_key = layout.manifest_key(&self.job_id, run_id);
        put(manifest_key.clone(), manifest.to_string().into_bytes())
            .await
            .unwrap();
        let mut event = crate::fixture("s3/manifest-object-created.json");
        event["detail"]["bucket"]["name"] = json!(bucket);
        event["detail"]["object"]["key"] = json!(manifest_key);
        let replication = &self.deployment.replication;
        let first = tern_fn_upload_complete::handle(replication, &event)
            .await
            .unwrap();
        assert_eq!(first["outcome"], "Accepted", "{first}");
        let again = tern_fn_upload_complete::handle(replication, &event)
            .await
            .unwrap();
        // Duplicate while the run is in progress; once the execution has moved on (a failed
        // run is recorded within milliseconds) the run no longer waits, and the event is
        // refused. Either way nothing is accepted twice.
        assert!(
            ["Duplicate", "Refused", "Ignored"].contains(&again["outcome"].as_str().unwrap_or("")),
            "a duplicated S3 event: {again}"
        );
    }

    /// Waits (bounded) until `run_id` is the job's latest completed run; its snapshot.
    async fn completed(&self, run_id: &str) -> String {
        let service = &self.deployment.service;
        let job = tern_test_support::poll::until_async(
            Duration::from_secs(120),
            Duration::from_millis(50),
            || async {
                let job = service.get_job(&self.job_id).await.ok()?;
                (job.latest_run_id.as_deref() == Some(run_id)).then_some(job)
            },
        )
        .await;
        let Some(job) = job else {
            let (_, runs) = service.list_runs(&self.job_id, None, 3).await.unwrap();
            panic!(
                "run {run_id} did not complete within 120 s: {:#?}",
                runs.items
            );
        };
        job.latest_snapshot_ids[0].clone()
    }

    fn take_calls(&self) -> BTreeMap<String, u32> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

/// The stack for a pipeline test (`what` it tests), when moto and qemu-img are here. Its moto
/// takes one request at a time: moto snapshots and restores a whole table around a transaction
/// without a lock, so the handlers' concurrent writes could tear items.
pub(crate) async fn pipeline_stack(what: &str) -> Option<Stack> {
    let stack = Stack::start_on(
        tern_test_support::moto::Flavor::S3RootsFixedSingleThreaded,
        what,
    )
    .await?;
    if !tern_test_support::on_path("qemu-img") {
        assert!(std::env::var_os("CI").is_none(), "qemu-img is needed in CI");
        return None;
    }
    Some(stack)
}

/// The deployed pipeline on `stack`: the ASL on Tern's States engine with every Task resolved
/// to the tasks Lambda's handler, the deployment (seeds through EBS direct, five on-demand
/// runs a day) wired to moto; with the staging bucket made, S3 and EBS clients, the counted
/// Lambda invocations and image requests, and the engine's driver.
pub(crate) async fn deployed(stack: &Stack) -> Deployed {
    deployed_with(stack, |_| {}, |images| images).await
}

/// The deployed pipeline and what the tests read it with.
pub(crate) struct Deployed {
    pub deployment: Deployment,
    pub s3: aws_sdk_s3::Client,
    pub ebs: aws_sdk_ebs::Client,
    /// Task Lambda invocations, by function.
    pub calls: Calls,
    /// The image adapter's requests, by operation.
    pub requests: Requests,
    /// The engine's driver (abort it when done).
    pub driver: tokio::task::JoinHandle<()>,
    pub engine: Engine,
}

/// [`deployed`], with `config` changed by `adjust` and the images adapter wrapped by `wrap`.
pub(crate) async fn deployed_with(
    stack: &Stack,
    adjust: impl FnOnce(&mut tern_core::Config),
    wrap: impl FnOnce(Arc<dyn Images>) -> Arc<dyn Images>,
) -> Deployed {
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&stack.aws)
            .force_path_style(true)
            .build(),
    );
    let ebs = aws_sdk_ebs::Client::new(&stack.aws);
    s3.create_bucket()
        .bucket(&stack.settings.staging_bucket)
        .send()
        .await
        .unwrap();
    let mut settings = Ec2ImagesSettings::new("tern-vmimport", "tern:tern");
    settings.seed_method = SeedMethod::EbsDirect;
    settings.blocks_per_range = 8;
    let requests = Requests::default();
    let images = Ec2Images::new(
        aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&stack.aws)
                .interceptor(requests.clone())
                .build(),
        ),
        aws_sdk_ebs::Client::from_conf(
            aws_sdk_ebs::config::Builder::from(&stack.aws)
                .interceptor(requests.clone())
                .build(),
        ),
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&stack.aws)
                .force_path_style(true)
                .interceptor(requests.clone())
                .build(),
        ),
        settings,
    );
    let cell = Arc::new(OnceLock::new());
    let calls: Calls = Arc::default();
    let engine = Engine::open(EngineConfig {
        store: Arc::new(tern_states::MemoryStore::new()),
        tasks: registry(cell.clone(), calls.clone()),
        clock: Arc::new(tern_states::SystemClock),
        region: "us-east-1".into(),
    })
    .unwrap();
    let workflows = LocalWorkflows::new(engine.clone()).unwrap();
    let driver = engine.spawn_driver();
    // Five on-demand runs in a day: the incremental run and the three that fail.
    let mut limits = tern_core::Config::default();
    limits.limits.on_demand_runs_per_window = 5;
    // The test disks are random blocks, not bootable: the operator's waiver of that rule.
    limits.preflight_waive = Some("boot-disk-unpartitioned".into());
    adjust(&mut limits);
    let deployment = Deployment::connect_with(
        &stack.aws,
        &stack.settings,
        limits,
        wrap(Arc::new(images)),
        Arc::new(workflows),
    )
    .unwrap();
    let _ = cell.set(deployment.replication.clone());
    Deployed {
        deployment,
        s3,
        ebs,
        calls,
        requests,
        driver,
        engine,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asl_on_the_states_engine_replicates_through_the_lambda_handlers() {
    let Some(stack) = pipeline_stack("the AWS-mode pipeline").await else {
        return;
    };
    let deployed = deployed(&stack).await;
    let (p, requests, driver, engine) = Pipeline::seeded(stack, deployed).await;
    let replication = &p.deployment.replication;

    // Seed: the scheduler starts the execution; the engine runs Prepare and parks in
    // WaitForUpload; the connector's upload resumes it.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let mut disk = make_raw(&raw, 40 * BLOCK, 31);
    let opened = tern_disk::open(&raw, &tern_disk::OpenOptions::default()).unwrap();
    let mut vmdk = Vec::new();
    tern_disk::write::write_vmdk_stream(opened.as_ref(), &mut vmdk, "disk.vmdk", &|_| {}).unwrap();
    let map =
        tern_disk::blockmap::BlockMap::compute(opened.as_ref(), &tern_disk::no_progress).unwrap();
    let started = Instant::now();
    let tick = tern_fn_scheduler::handle(replication).await.unwrap();
    let run1 = tick["runsCreated"][0].as_str().unwrap().to_owned();
    // A second tick starts nothing twice (the execution is named after the run).
    tern_fn_scheduler::handle(replication).await.unwrap();
    p.upload(&run1, ObjectKind::SeedVmdk, vmdk, None).await;
    let seed_snapshot = p.completed(&run1).await;
    let seed_time = started.elapsed();
    let seed_transitions = transitions(&engine, &run1);
    let seed_calls = p.take_calls();
    let seed_requests = std::mem::take(&mut *requests.0.lock().unwrap());
    let mut read = vec![0u8; disk.len()];
    let seed_blocks = read_back(&p.ebs, &seed_snapshot, &mut read).await;
    assert!(read == disk, "the seed's snapshot reads back as the disk");

    // Incremental: 2 of 40 blocks (5 %) changed, the connector's delta.
    change_blocks(&mut disk, &[5, 30], &[], 32);
    std::fs::write(&raw, &disk).unwrap();
    let opened = tern_disk::open(&raw, &tern_disk::OpenOptions::default()).unwrap();
    let mut delta = Vec::new();
    let summary =
        tern_disk::delta::create(&map, opened.as_ref(), &mut delta, &tern_disk::no_progress)
            .unwrap();
    let started = Instant::now();
    let run2 = p
        .deployment
        .service
        .start_on_demand_run(&p.job_id, None)
        .await
        .unwrap();
    tern_fn_scheduler::handle(replication).await.unwrap();
    p.upload(&run2, ObjectKind::Delta, delta, Some(&run1)).await;
    let child = p.completed(&run2).await;
    let incremental_time = started.elapsed();
    let incremental_transitions = transitions(&engine, &run2);
    let incremental_calls = p.take_calls();
    let incremental_requests = std::mem::take(&mut *requests.0.lock().unwrap());
    assert_ne!(child, seed_snapshot);
    let mut read = vec![0u8; disk.len()];
    read_back(&p.ebs, &seed_snapshot, &mut read).await;
    let child_blocks = read_back(&p.ebs, &child, &mut read).await;
    assert_eq!(child_blocks as u64, summary.changed_blocks);
    assert!(read == disk, "parent + child read back as the changed disk");

    // A late re-delivery of the seed's manifest event changes nothing.
    let layout = StagingLocation::new(
        &p.stack.settings.staging_bucket,
        &p.stack.settings.staging_prefix,
    );
    let mut late = crate::fixture("s3/manifest-object-created.json");
    late["detail"]["bucket"]["name"] = json!(p.stack.settings.staging_bucket);
    late["detail"]["object"]["key"] = json!(layout.manifest_key(&p.job_id, &run1));
    let outcome = tern_fn_upload_complete::handle(replication, &late)
        .await
        .unwrap();
    assert_ne!(outcome["outcome"], "Accepted", "{outcome}");
    let job = p.deployment.service.get_job(&p.job_id).await.unwrap();
    assert_eq!(job.latest_run_id.as_deref(), Some(run2.as_str()));
    assert_eq!(job.latest_snapshot_ids, std::slice::from_ref(&child));

    // 3 injected failures: each run's connector stages a delta that claims another base run,
    // ApplyDelta refuses it (Tern.InvalidManifest), the Catch records the failure; after the
    // third the job is PAUSED_ON_FAILURE, as SMS pauses it.
    for n in 1..=3u32 {
        let run = p
            .deployment
            .service
            .start_on_demand_run(&p.job_id, None)
            .await
            .unwrap();
        tern_fn_scheduler::handle(replication).await.unwrap();
        p.upload(
            &run,
            ObjectKind::Delta,
            vec![0; 64],
            Some("sms-run-0123456789abcdef0"),
        )
        .await;
        let service = &p.deployment.service;
        let job = tern_test_support::poll::until_async(
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async {
                let job = service.get_job(&p.job_id).await.ok()?;
                (job.consecutive_failures == n).then_some(job)
            },
        )
        .await
        .unwrap_or_else(|| panic!("failure {n} was not recorded"));
        let want = if n < 3 {
            "FAILING"
        } else {
            "PAUSED_ON_FAILURE"
        };
        assert_eq!(job.state.as_str(), want, "after failure {n}");
        assert_eq!(job.latest_run_id.as_deref(), Some(run2.as_str()));
        let (_, runs) = service.list_runs(&p.job_id, None, 1).await.unwrap();
        let failed = &runs.items[0];
        assert_eq!(failed.replication_run_id, run);
        let message = failed.status_message.as_deref().unwrap_or_default();
        assert!(
            message.contains("applies onto run sms-run-0123456789abcdef0")
                && message.contains(&format!("{} re-try run(s) remaining", 3 - n)),
            "{message}"
        );
    }

    // Events: the outbox items the runs wrote, as the table's stream delivers them (moto's
    // stream is not read here; the records carry the items' new images), through the
    // event-publisher Lambda to EventBridge and the rule's SQS queue; the batch delivered
    // again publishes nothing twice.
    let outbox = p
        .stack
        .store
        .query(tern_core::keys::OUTBOX, "", None, 100)
        .await
        .unwrap();
    assert!(!outbox.items.is_empty());
    let records: Vec<Value> = outbox
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let keys = json!({"pk": {"S": item.key.pk}, "sk": {"S": item.key.sk}});
            let mut image = keys.clone();
            image["version"] = json!({"N": item.version.to_string()});
            image["body"] = json!({"S": item.body.to_string()});
            json!({
                "eventID": format!("{i:032x}"),
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1796119200,
                    "Keys": keys,
                    "NewImage": image,
                    "SequenceNumber": format!("{:024}", i + 1),
                    "SizeBytes": 400,
                    "StreamViewType": "NEW_IMAGE"
                },
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/tern/stream/2026-12-01T00:00:00.000"
            })
        })
        .collect();
    let batch = json!({ "Records": records });
    let response = tern_fn_event_publisher::handle(
        replication,
        serde_json::from_value(batch.clone()).unwrap(),
    )
    .await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let delivered = p.stack.delivered().await;
    let seen = |state: &str, run: &str| {
        delivered
            .iter()
            .any(|e| e["detail"]["state"] == state && e["detail"]["replication-run-id"] == run)
    };
    assert!(
        seen("Completed", &run1) && seen("Completed", &run2),
        "{delivered:#?}"
    );
    assert!(seen("Paused", "N/A"), "{delivered:#?}");
    let amis: Vec<&Value> = delivered
        .iter()
        .filter(|e| e["detail"]["state"] == "Completed" && e["detail"]["ami-id"].is_string())
        .collect();
    assert_eq!(amis.len(), 2, "one event per AMI");
    let again =
        tern_fn_event_publisher::handle(replication, serde_json::from_value(batch).unwrap()).await;
    assert!(again.batch_item_failures.is_empty(), "{again:?}");
    assert!(
        p.stack.delivered().await.is_empty(),
        "a re-delivered batch published again"
    );
    println!(
        "pipeline events: {} outbox changes, {} events delivered to the rule's queue",
        outbox.items.len(),
        delivered.len()
    );

    for (what, calls, images, blocks, t, states) in [
        (
            "seed",
            &seed_calls,
            &seed_requests,
            seed_blocks as u64,
            seed_time,
            seed_transitions,
        ),
        (
            "incremental (5 %)",
            &incremental_calls,
            &incremental_requests,
            summary.changed_blocks,
            incremental_time,
            incremental_transitions,
        ),
    ] {
        let total: u32 = calls.values().sum();
        let image_total: u32 = images.values().sum();
        println!(
            "pipeline {what}: 40-block disk, {blocks} blocks written, {total} task Lambda \
             invocations {calls:?} + 2 upload-complete + scheduler ticks; {image_total} image \
             requests (EC2, EBS, S3 reads) {images:?}; {states} state transitions; {:.2} s",
            t.as_secs_f64()
        );
    }
    driver.abort();
}

/// The state transitions (states entered, as Step Functions bills them) of run `run_id`'s
/// execution.
fn transitions(engine: &Engine, run_id: &str) -> usize {
    let execution = engine
        .list_executions(None, None)
        .into_iter()
        .find(|e| e.name == run_id)
        .unwrap_or_else(|| panic!("no execution for {run_id}"));
    engine
        .get_execution_history(&execution.execution_arn)
        .unwrap()
        .iter()
        .filter(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("StateEntered"))
        })
        .count()
}

/// The image adapter with RegisterImage failing after it registered (an image AWS made and then
/// reported bad): the run fails with an image and snapshot of its own behind it.
struct RegisterFails(Arc<dyn Images>);

#[async_trait::async_trait]
impl Images for RegisterFails {
    async fn start_import(
        &self,
        source: &tern_core::images::StagedObject,
        description: &str,
    ) -> Result<String, tern_core::images::ImagesError> {
        self.0.start_import(source, description).await
    }
    async fn start_apply_delta(
        &self,
        parent: &str,
        source: &tern_core::images::StagedObject,
        description: &str,
    ) -> Result<String, tern_core::images::ImagesError> {
        self.0.start_apply_delta(parent, source, description).await
    }
    async fn delta_writes(
        &self,
        task_id: &str,
    ) -> Result<Vec<tern_core::images::BlockRange>, tern_core::images::ImagesError> {
        self.0.delta_writes(task_id).await
    }
    async fn write_delta_blocks(
        &self,
        task_id: &str,
        range: &tern_core::images::BlockRange,
    ) -> Result<u64, tern_core::images::ImagesError> {
        self.0.write_delta_blocks(task_id, range).await
    }
    async fn describe_task(
        &self,
        task_id: &str,
    ) -> Result<tern_core::images::TaskStatus, tern_core::images::ImagesError> {
        self.0.describe_task(task_id).await
    }
    async fn describe_snapshot(
        &self,
        id: &str,
    ) -> Result<tern_core::images::Snapshot, tern_core::images::ImagesError> {
        self.0.describe_snapshot(id).await
    }
    async fn register_image(
        &self,
        request: &tern_core::images::RegisterImage,
    ) -> Result<tern_core::images::Image, tern_core::images::ImagesError> {
        let image = self.0.register_image(request).await?;
        Err(tern_core::images::ImagesError::InvalidImage(format!(
            "image {} failed its checks (injected by the test)",
            image.image_id
        )))
    }
    async fn describe_image(
        &self,
        id: &str,
    ) -> Result<tern_core::images::Image, tern_core::images::ImagesError> {
        self.0.describe_image(id).await
    }
    async fn list_images(
        &self,
    ) -> Result<Vec<tern_core::images::Image>, tern_core::images::ImagesError> {
        self.0.list_images().await
    }
    async fn deregister_image(&self, id: &str) -> Result<(), tern_core::images::ImagesError> {
        self.0.deregister_image(id).await
    }
    async fn delete_snapshot(&self, id: &str) -> Result<(), tern_core::images::ImagesError> {
        self.0.delete_snapshot(id).await
    }
}

/// A run that fails after it built a snapshot and registered an image leaves nothing: the
/// failure records a teardown, and the scheduler's sweep deregisters the image, deletes the
/// snapshot and removes the staged objects (moto's EC2, EBS and S3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_leaves_no_snapshot_image_or_staged_object() {
    let Some(stack) = pipeline_stack("the sweep of a failed run").await else {
        return;
    };
    let deployed = deployed_with(
        &stack,
        // No connector works on the run: its staging prefix may go at once.
        |c| c.work_lease = Duration::ZERO,
        |images| Arc::new(RegisterFails(images)),
    )
    .await;
    let (p, _, driver, _) = Pipeline::seeded(stack, deployed).await;
    let replication = &p.deployment.replication;
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    make_raw(&raw, 8 * BLOCK, 5);
    let opened = tern_disk::open(&raw, &tern_disk::OpenOptions::default()).unwrap();
    let mut vmdk = Vec::new();
    tern_disk::write::write_vmdk_stream(opened.as_ref(), &mut vmdk, "disk.vmdk", &|_| {}).unwrap();
    let tick = tern_fn_scheduler::handle(replication).await.unwrap();
    let run = tick["runsCreated"][0].as_str().unwrap().to_owned();
    p.upload(&run, ObjectKind::SeedVmdk, vmdk, None).await;

    let service = &p.deployment.service;
    let failed = tern_test_support::poll::until_async(
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let (_, runs) = service.list_runs(&p.job_id, None, 1).await.ok()?;
            let r = runs.items.into_iter().next()?;
            (r.state.as_str() == "FAILED").then_some(r)
        },
    )
    .await
    .expect("the run failed");
    assert!(
        failed
            .status_message
            .as_deref()
            .unwrap_or_default()
            .contains("failed its checks"),
        "{failed:?}"
    );
    let ec2 = aws_sdk_ec2::Client::new(&p.stack.aws);
    // moto lists public snapshots too: this deployment's carry its tern:managed-by tag.
    let snapshots = || async {
        ec2.describe_snapshots()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag-key")
                    .values("tern:managed-by")
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .snapshots()
            .len()
    };
    let images = || async {
        ec2.describe_images()
            .owners("self")
            .send()
            .await
            .unwrap()
            .images()
            .len()
    };
    let staged = || async {
        p.s3.list_objects_v2()
            .bucket(&p.stack.settings.staging_bucket)
            .prefix("runs/")
            .send()
            .await
            .unwrap()
            .key_count()
            .unwrap_or(0)
    };
    assert_eq!(images().await, 1, "the failed run registered an image");
    assert!(snapshots().await >= 1);
    assert!(staged().await >= 2, "the seed and its manifest are staged");

    // The scheduler's tick sweeps the failed run's teardown.
    let swept = tern_test_support::poll::until_async(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            tern_fn_scheduler::handle(replication).await.ok()?;
            let left = p
                .stack
                .store
                .query(tern_core::keys::TEARDOWN, "", None, 10)
                .await
                .ok()?;
            left.items.is_empty().then_some(())
        },
    )
    .await;
    assert!(
        swept.is_some(),
        "the failed run's teardown was never finished"
    );
    assert_eq!(images().await, 0, "the failed run's image is deregistered");
    assert_eq!(snapshots().await, 0, "the failed run's snapshot is deleted");
    assert_eq!(
        staged().await,
        0,
        "the failed run's staged objects are removed"
    );
    let job = service.get_job(&p.job_id).await.unwrap();
    assert!(job.latest_snapshot_ids.is_empty());
    driver.abort();
}
