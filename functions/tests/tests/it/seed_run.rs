//! A seed run through EBS direct with the Lambda handlers, on moto: the tasks handler invoked
//! state by state in the order of `statemachines/replication-run.asl.json` (Prepare,
//! WaitForUpload, Import, one WriteBlocks per item of `writes`, WaitForSnapshots,
//! RegisterImage, Retain, Complete) with each state's output placed where its ResultPath puts
//! it, the upload-complete handler fed the manifest's Object Created event (twice), and every
//! AWS call going through the adapters to moto (DynamoDB, S3, EC2, EBS). The image's snapshot,
//! read back with GetSnapshotBlock, is the source disk (made with qemu-img, staged as the
//! connector stages it, a stream-optimized VMDK from tern-disk's writer).
//!
//! Not the whole acceptance pipeline yet: the States engine does not drive these handlers here
//! (the test steps the states itself), the connector is not in the loop (the test stages what
//! it would) and no incremental run follows; see functions/README or the branch report.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tern_aws::{Ec2Images, Ec2ImagesSettings, SeedMethod};
use tern_core::replication::{functions, ObjectKind, StagingLocation};
use tern_core::service::NewJob;
use tern_fn_common::Deployment;
use tern_test_support::qemu::{make_raw, BLOCK};

use crate::Stack;

async fn task(
    replication: &tern_core::replication::Replication,
    function: &str,
    input: Value,
    calls: &mut u32,
) -> Value {
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

    let (_, servers) = tern_store_contract::apps::service_with_catalog(
        Arc::new(stack.store.clone()),
        tern_core::Config::default(),
        1,
    )
    .await;
    let job_id = deployment
        .service
        .create_job(NewJob {
            server_id: servers[0].clone(),
            seed_replication_time: Some(time::OffsetDateTime::now_utc()),
            frequency: Some(12),
            ..NewJob::default()
        })
        .await
        .unwrap();
    let tick = tern_fn_scheduler::handle(replication).await.unwrap();
    let run_id = tick["runsCreated"][0].as_str().unwrap().to_owned();

    let started = Instant::now();
    let mut calls = 0;
    let mut state = json!({"jobId": job_id, "runId": run_id});
    let ids = state.clone();
    state["run"] = task(replication, functions::PREPARE, ids.clone(), &mut calls).await;
    assert_eq!(state["run"]["seed"], true);
    let mut waiting = ids.clone();
    waiting["taskToken"] = json!("token-of-the-wait");
    task(replication, functions::WAIT_FOR_UPLOAD, waiting, &mut calls).await;

    // What the connector uploads: the disk as a stream-optimized VMDK, then the manifest.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let disk = make_raw(&raw, 40 * BLOCK, 21);
    let opened = tern_disk::open(&raw, &tern_disk::OpenOptions::default()).unwrap();
    let mut vmdk = Vec::new();
    tern_disk::write::write_vmdk_stream(opened.as_ref(), &mut vmdk, "disk.vmdk", &|_| {}).unwrap();
    let layout = StagingLocation::new(&bucket, &stack.settings.staging_prefix);
    let disk_key = layout.disk_key(&job_id, &run_id, 0, ObjectKind::SeedVmdk);
    s3.put_object()
        .bucket(&bucket)
        .key(&disk_key)
        .body(vmdk.clone().into())
        .send()
        .await
        .unwrap();
    let manifest_key = layout.manifest_key(&job_id, &run_id);
    let manifest = json!({
        "jobId": job_id,
        "runId": run_id,
        "disks": [{"index": 0, "kind": "seed-vmdk", "key": disk_key, "size": vmdk.len(), "virtualSize": disk.len()}]
    });
    s3.put_object()
        .bucket(&bucket)
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
    state["upload"] = manifest.clone();

    let mut input = ids.clone();
    input["manifest"] = state["upload"].clone();
    state["started"] = task(replication, functions::IMPORT, input.clone(), &mut calls).await;
    let writes = state["started"]["writes"].as_array().unwrap().clone();
    assert!(writes.len() > 1, "{}", state["started"]);
    assert!(state["started"]["tasks"][0]["taskId"]
        .as_str()
        .unwrap()
        .starts_with("ebs-seed/"));
    for w in &writes {
        let mut item = ids.clone();
        item["write"] = w.clone();
        task(replication, functions::WRITE_BLOCKS, item, &mut calls).await;
    }
    // A re-delivered Import (Step Functions retries a task whose answer was lost) starts
    // nothing new.
    let again = task(replication, functions::IMPORT, input, &mut calls).await;
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
    let elapsed = started.elapsed();

    let job = deployment.service.get_job(&job_id).await.unwrap();
    assert_eq!(
        job.latest_ami_id.as_deref(),
        done["imageId"].as_str(),
        "{done}"
    );
    let snapshot_id = state["snapshots"][0]["snapshotId"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", state["snapshots"]))
        .to_string();

    // Read back: every block of the disk, from the snapshot.
    let listed = ebs
        .list_snapshot_blocks()
        .snapshot_id(&snapshot_id)
        .send()
        .await
        .unwrap();
    let mut read = vec![0u8; disk.len()];
    for b in listed.blocks() {
        let i = b.block_index().unwrap() as usize;
        let got = ebs
            .get_snapshot_block()
            .snapshot_id(&snapshot_id)
            .block_index(i as i32)
            .block_token(b.block_token().unwrap())
            .send()
            .await
            .unwrap();
        let data = got.block_data.collect().await.unwrap().into_bytes();
        let at = i * BLOCK as usize;
        let n = (disk.len() - at).min(BLOCK as usize);
        read[at..at + n].copy_from_slice(&data[..n]);
    }
    assert!(read == disk, "the image's snapshot reads back as the disk");
    println!(
        "seed run through EBS direct, Lambda handlers on moto: {} MiB disk, {} KiB staged, \
         {} blocks written by {} WriteBlocks iterations, {calls} task invocations + 2 \
         upload-complete + 1 scheduler, {:.2} s",
        disk.len() >> 20,
        vmdk.len() >> 10,
        listed.blocks().len(),
        writes.len(),
        elapsed.as_secs_f64()
    );
}
