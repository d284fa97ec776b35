//! A seed run through EBS direct and an incremental run, with the Lambda handlers, on moto:
//! the tasks handler invoked
//! state by state in the order of `statemachines/replication-run.asl.json` (Prepare,
//! WaitForUpload, Import, one WriteBlocks per item of `writes`, WaitForSnapshots,
//! RegisterImage, Retain, Complete) with each state's output placed where its ResultPath puts
//! it, the upload-complete handler fed the manifest's Object Created event (twice), and every
//! AWS call going through the adapters to moto (DynamoDB, S3, EC2, EBS). The image's snapshot,
//! read back with GetSnapshotBlock, is the source disk (made with qemu-img, staged as the
//! connector stages it, a stream-optimized VMDK from tern-disk's writer); then 5 % of its
//! blocks change, the delta (tern-disk's, as the connector makes it) goes through ApplyDelta,
//! and parent + child read back as the changed disk.
//!
//! Not the whole acceptance pipeline yet: the States engine does not drive these handlers here
//! (the test steps the states itself), the connector is not in the loop (the test stages what
//! it would), and events and failure injection are not checked here.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tern_aws::{Ec2Images, Ec2ImagesSettings, SeedMethod};
use tern_core::replication::{functions, ObjectKind, Replication, StagingLocation};
use tern_fn_common::Deployment;
use tern_test_support::qemu::{make_raw, BLOCK};

use crate::{read_back, Stack};

async fn task(replication: &Replication, function: &str, input: Value, calls: &mut u32) -> Value {
    *calls += 1;
    tern_fn_tasks::handle(replication, function, input.clone())
        .await
        .unwrap_or_else(|e| panic!("{function}({input}): {e:?}"))
}

#[tokio::test]
async fn a_seed_through_ebs_direct_becomes_an_image_of_the_disk() {
    let Some(stack) = Stack::start("a seed run through EBS direct").await else {
        return;
    };
    if !tern_test_support::on_path("qemu-img") {
        assert!(std::env::var_os("CI").is_none(), "qemu-img is needed in CI");
        return;
    }
    let bucket = stack.settings.staging_bucket.clone();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&stack.aws)
            .force_path_style(true)
            .build(),
    );
    let ebs = aws_sdk_ebs::Client::new(&stack.aws);
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let mut images = Ec2ImagesSettings::new("tern-vmimport", "tern:tern");
    images.seed_method = SeedMethod::EbsDirect;
    images.blocks_per_range = 8;
    let images = Ec2Images::new(
        aws_sdk_ec2::Client::new(&stack.aws),
        ebs.clone(),
        s3.clone(),
        images,
    );
    let deployment = Deployment::connect(
        &stack.aws,
        &stack.settings,
        tern_core::Config::default(),
        Arc::new(images),
    )
    .expect("deployment");
    let replication = &deployment.replication;

    let job_id = crate::job_seeded_now(&stack, &deployment.service).await;
    let tick = tern_fn_scheduler::handle(replication).await.unwrap();
    let run_id = tick["runsCreated"][0].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let mut disk = make_raw(&raw, 40 * BLOCK, 21);
    let opened = tern_disk::open(&raw, &tern_disk::OpenOptions::default()).unwrap();
    let mut vmdk = Vec::new();
    tern_disk::write::write_vmdk_stream(opened.as_ref(), &mut vmdk, "disk.vmdk", &|_| {}).unwrap();
    let map =
        tern_disk::blockmap::BlockMap::compute(opened.as_ref(), &tern_disk::no_progress).unwrap();
    let run = Run {
        replication,
        s3: &s3,
        bucket: &bucket,
        prefix: &stack.settings.staging_prefix,
        job_id: &job_id,
    };
    let seed = run
        .step(&run_id, ObjectKind::SeedVmdk, vmdk, disk.len(), None)
        .await;
    let mut read = vec![0u8; disk.len()];
    let seed_blocks = read_back(&ebs, &seed.snapshot_id, &mut read).await;
    assert!(read == disk, "the seed's snapshot reads back as the disk");
    println!(
        "seed run through EBS direct, Lambda handlers on moto: {} MiB disk, {} KiB staged, \
         {seed_blocks} blocks written by {} WriteBlocks iterations, {} task invocations + 2 \
         upload-complete, {:.2} s",
        disk.len() >> 20,
        seed.staged >> 10,
        seed.writes,
        seed.calls,
        seed.elapsed
    );

    // An incremental run: 2 blocks of 40 (5 %) changed and one zeroed, as the connector's
    // delta against its block map of the seed.
    tern_test_support::qemu::change_blocks(&mut disk, &[3, 17], &[9], 22);
    std::fs::write(&raw, &disk).unwrap();
    let opened = tern_disk::open(&raw, &tern_disk::OpenOptions::default()).unwrap();
    let mut delta = Vec::new();
    let summary =
        tern_disk::delta::create(&map, opened.as_ref(), &mut delta, &tern_disk::no_progress)
            .unwrap();
    let run2 = deployment
        .service
        .start_on_demand_run(&job_id, None)
        .await
        .unwrap();
    let incremental = run
        .step(&run2, ObjectKind::Delta, delta, disk.len(), Some(&run_id))
        .await;
    // moto's StartSnapshot ignores the parent: read the parent, then the child over it.
    let mut read = vec![0u8; disk.len()];
    read_back(&ebs, &seed.snapshot_id, &mut read).await;
    let child_blocks = read_back(&ebs, &incremental.snapshot_id, &mut read).await;
    assert_eq!(
        child_blocks as u64, summary.changed_blocks,
        "exactly the changed blocks"
    );
    assert!(read == disk, "parent + child read back as the changed disk");
    println!(
        "incremental run, {} of 40 blocks changed: {} KiB staged, {} WriteBlocks iterations, \
         {} task invocations + 2 upload-complete, {:.2} s",
        summary.changed_blocks,
        incremental.staged >> 10,
        incremental.writes,
        incremental.calls,
        incremental.elapsed
    );
    let job = deployment.service.get_job(&job_id).await.unwrap();
    assert_eq!(job.latest_run_id.as_deref(), Some(run2.as_str()));
}

/// One run's outcome.
struct Outcome {
    snapshot_id: String,
    staged: usize,
    writes: usize,
    calls: u32,
    elapsed: f64,
}

struct Run<'a> {
    replication: &'a Replication,
    s3: &'a aws_sdk_s3::Client,
    bucket: &'a str,
    prefix: &'a str,
    job_id: &'a str,
}

impl Run<'_> {
    /// Steps run `run_id` through the state machine's states with the tasks handler, staging
    /// `object` (disk 0, of `kind`) and the manifest as the connector does.
    async fn step(
        &self,
        run_id: &str,
        kind: ObjectKind,
        object: Vec<u8>,
        disk_len: usize,
        base_run: Option<&str>,
    ) -> Outcome {
        let (replication, s3, bucket, job_id) =
            (self.replication, self.s3, self.bucket, self.job_id);
        let started = Instant::now();
        let mut calls = 0;
        let mut state = json!({"jobId": job_id, "runId": run_id});
        let ids = state.clone();
        state["run"] = task(replication, functions::PREPARE, ids.clone(), &mut calls).await;
        assert_eq!(state["run"]["seed"], kind == ObjectKind::SeedVmdk);
        let mut waiting = ids.clone();
        waiting["taskToken"] = json!(format!("token-of-{run_id}"));
        task(replication, functions::WAIT_FOR_UPLOAD, waiting, &mut calls).await;

        let layout = StagingLocation::new(bucket, self.prefix);
        let disk_key = layout.disk_key(job_id, run_id, 0, kind);
        let staged = object.len();
        s3.put_object()
            .bucket(bucket)
            .key(&disk_key)
            .body(object.into())
            .send()
            .await
            .unwrap();
        let manifest_key = layout.manifest_key(job_id, run_id);
        let mut disk0 = json!({"index": 0, "kind": kind.as_str(), "key": disk_key, "size": staged, "virtualSize": disk_len});
        if let Some(base) = base_run {
            disk0["baseRunId"] = json!(base);
        }
        let manifest = json!({"jobId": job_id, "runId": run_id, "disks": [disk0]});
        s3.put_object()
            .bucket(bucket)
            .key(&manifest_key)
            .body(manifest.to_string().into_bytes().into())
            .send()
            .await
            .unwrap();
        let mut event = crate::fixture("s3/manifest-object-created.json");
        event["detail"]["bucket"]["name"] = json!(bucket);
        event["detail"]["object"]["key"] = json!(manifest_key);
        let first = tern_fn_upload_complete::handle(replication, &event)
            .await
            .unwrap();
        assert_eq!(first["outcome"], "Accepted", "{first}");
        let again = tern_fn_upload_complete::handle(replication, &event)
            .await
            .unwrap();
        assert_eq!(
            again["outcome"], "Duplicate",
            "a duplicated S3 event: {again}"
        );
        // What SendTaskSuccess hands the execution: the manifest (`$.upload`).
        state["upload"] = manifest;

        let start = if kind == ObjectKind::SeedVmdk {
            functions::IMPORT
        } else {
            functions::APPLY_DELTA
        };
        let mut input = ids.clone();
        input["manifest"] = state["upload"].clone();
        state["started"] = task(replication, start, input.clone(), &mut calls).await;
        let writes = state["started"]["writes"].as_array().unwrap().clone();
        assert!(!writes.is_empty(), "{}", state["started"]);
        let prefix = if kind == ObjectKind::SeedVmdk {
            "ebs-seed/"
        } else {
            "ebs-delta/"
        };
        assert!(state["started"]["tasks"][0]["taskId"]
            .as_str()
            .unwrap()
            .starts_with(prefix));
        for w in &writes {
            let mut item = ids.clone();
            item["write"] = w.clone();
            task(replication, functions::WRITE_BLOCKS, item, &mut calls).await;
        }
        // A re-delivered start (Step Functions retries a task whose answer was lost) starts
        // nothing new.
        let again = task(replication, start, input, &mut calls).await;
        assert_eq!(again["tasks"], state["started"]["tasks"]);

        let mut check = ids.clone();
        check["tasks"] = state["started"]["tasks"].clone();
        state["snapshots"] = task(replication, functions::CHECK_SNAPSHOTS, check, &mut calls).await;
        let mut register = ids.clone();
        register["snapshots"] = state["snapshots"].clone();
        state["image"] = task(replication, functions::REGISTER_IMAGE, register, &mut calls).await;
        let mut retain = ids.clone();
        retain["image"] = state["image"].clone();
        task(replication, functions::RETAIN, retain.clone(), &mut calls).await;
        let done = task(replication, functions::COMPLETE, retain, &mut calls).await;
        assert_eq!(done["imageId"], state["image"]["imageId"], "{done}");
        Outcome {
            snapshot_id: state["snapshots"][0]["snapshotId"]
                .as_str()
                .unwrap_or_else(|| panic!("{}", state["snapshots"]))
                .to_string(),
            staged,
            writes: writes.len(),
            calls,
            elapsed: started.elapsed().as_secs_f64(),
        }
    }
}
