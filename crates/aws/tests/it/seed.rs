//! Seeds through EBS direct (`SeedMethod::EbsDirect`) on moto: a qemu-img-made disk, staged as
//! a stream-optimized VMDK by tern-disk's writer (the connector's) and by qemu-img's, becomes a
//! parentless snapshot written range by range; read back with GetSnapshotBlock it is the disk,
//! block for block. The test counts the SDK's requests by operation and prints them with the
//! bytes and time (`--nocapture`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use tern_aws::{Ec2Images, Ec2ImagesSettings, SeedMethod};
use tern_core::images::{Images, ImagesError, StagedObject, TaskStatus};
use tern_test_support::moto::{Flavor, Moto};
use tern_test_support::qemu::{make_raw, stream_vmdk, BLOCK};

use crate::images::snapshot_blocks;

/// Requests sent, by operation name, and the bytes of their bodies.
#[derive(Debug, Default, Clone)]
pub struct Counter(Arc<Mutex<BTreeMap<String, (u64, u64)>>>);

impl Counter {
    pub fn take(&self) -> BTreeMap<String, (u64, u64)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "request counter"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let op = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_else(|| "?".into());
        let bytes = ctx.request().body().content_length().unwrap_or_default();
        let mut m = self.0.lock().unwrap();
        let e = m.entry(op).or_default();
        e.0 += 1;
        e.1 += bytes;
        Ok(())
    }
}

fn counted_images(endpoint: &str, counter: &Counter, blocks_per_range: u64) -> Ec2Images {
    let config = crate::moto_config(endpoint);
    let s3 = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .interceptor(counter.clone())
        .build();
    let ebs = aws_sdk_ebs::config::Builder::from(&config)
        .interceptor(counter.clone())
        .build();
    let ec2 = aws_sdk_ec2::config::Builder::from(&config)
        .interceptor(counter.clone())
        .build();
    let mut settings = Ec2ImagesSettings::new("vmimport", "tern-tests");
    settings.blocks_per_range = blocks_per_range;
    settings.writes_in_flight = 8;
    settings.seed_method = SeedMethod::EbsDirect;
    Ec2Images::new(
        aws_sdk_ec2::Client::from_conf(ec2),
        aws_sdk_ebs::Client::from_conf(ebs),
        aws_sdk_s3::Client::from_conf(s3),
        settings,
    )
}

/// Seeds `vmdk` and checks the snapshot against `disk`; returns the task id.
async fn seed_and_check(
    images: &Ec2Images,
    ebs: &aws_sdk_ebs::Client,
    s3: &aws_sdk_s3::Client,
    counter: &Counter,
    vmdk: &[u8],
    key: &str,
    disk: &[u8],
) -> String {
    let source = StagedObject {
        bucket: "staging".into(),
        key: key.into(),
    };
    s3.put_object()
        .bucket("staging")
        .key(key)
        .body(S3Body::from(vmdk.to_vec()))
        .send()
        .await
        .unwrap();
    counter.take();
    let started = Instant::now();
    let task = images.start_import(&source, "seed").await.unwrap();
    assert!(task.starts_with("ebs-seed/snap-"), "{task}");
    assert_eq!(
        images.start_import(&source, "seed").await.unwrap(),
        task,
        "a retried Import gets the snapshot it started"
    );
    let ranges = images.delta_writes(&task).await.unwrap();
    assert!(
        ranges.len() > 1,
        "several WriteBlocks iterations: {ranges:?}"
    );
    let mut written = 0;
    for r in &ranges {
        written += images.write_delta_blocks(&task, r).await.unwrap();
    }
    // An interrupted iteration is re-run: the same blocks, the same record.
    images.write_delta_blocks(&task, &ranges[0]).await.unwrap();
    let status = images.describe_task(&task).await.unwrap();
    let elapsed = started.elapsed();
    let TaskStatus::Completed { snapshot } = status else {
        panic!("{status:?}")
    };
    assert_eq!(snapshot.parent_snapshot_id, None);
    assert_eq!(snapshot.volume_size_bytes, disk.len() as u64);
    let requests = counter.take();

    let blocks = snapshot_blocks(ebs, &snapshot.snapshot_id).await;
    let data_blocks: Vec<usize> = disk
        .chunks(BLOCK as usize)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|b| *b != 0))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        blocks.keys().map(|k| *k as usize).collect::<Vec<_>>(),
        data_blocks,
        "exactly the blocks that hold data are written"
    );
    assert_eq!(written, data_blocks.len() as u64);
    for (i, data) in &blocks {
        let at = *i as usize * BLOCK as usize;
        let mut want = disk[at..(at + BLOCK as usize).min(disk.len())].to_vec();
        want.resize(BLOCK as usize, 0);
        assert!(data == &want, "block {i} differs from the disk");
    }
    let (gets, _) = requests.get("GetObject").copied().unwrap_or_default();
    let (puts, put_bytes) = requests
        .get("PutSnapshotBlock")
        .copied()
        .unwrap_or_default();
    let total: u64 = requests.values().map(|(n, _)| n).sum();
    println!(
        "ebs-direct seed of {key}: {} MiB disk, {} KiB VMDK, {} ranges, {total} requests \
         ({gets} S3 GETs, {puts} PutSnapshotBlock carrying {} MiB, {:?}), {:.2} s on moto \
         ({:.0} blocks/s); {:.2} bytes written to EBS per byte staged; ImportSnapshot would be \
         1 ImportSnapshot + 1 DescribeImportSnapshotTasks per poll, 10-60+ min on AWS \
         (moto has no model to time it)",
        disk.len() >> 20,
        vmdk.len() >> 10,
        ranges.len(),
        put_bytes >> 20,
        requests,
        elapsed.as_secs_f64(),
        puts as f64 / elapsed.as_secs_f64(),
        put_bytes as f64 / vmdk.len() as f64,
    );
    task
}

#[tokio::test]
async fn a_seed_through_ebs_direct_reads_back_as_the_disk() {
    let Some(moto) = Moto::start(Flavor::S3RootsFixed, "the EBS direct seed") else {
        return;
    };
    if !tern_test_support::on_path("qemu-img") {
        assert!(std::env::var_os("CI").is_none(), "qemu-img is needed in CI");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 24 MiB and a bit: random runs, text, holes, and a short last block.
    let raw = dir.path().join("disk.raw");
    let disk = make_raw(&raw, 24 * BLOCK * 2 + 300 * 512, 11);
    let counter = Counter::default();
    let images = counted_images(&moto.endpoint, &counter, 16);
    let c = crate::images::clients(&moto.endpoint);
    c.s3.create_bucket().bucket("staging").send().await.unwrap();

    // As the connector stages it: tern-disk's writer.
    let opened = tern_disk::open(&raw, &tern_disk::OpenOptions::default()).unwrap();
    let mut ours = Vec::new();
    tern_disk::write::write_vmdk_stream(opened.as_ref(), &mut ours, "disk.vmdk", &|_| {}).unwrap();
    let task = seed_and_check(
        &images,
        &c.ebs,
        &c.s3,
        &counter,
        &ours,
        "runs/sms-job-1/sms-run-1/disk-0.vmdk",
        &disk,
    )
    .await;
    // Each iteration left its record next to the VMDK (the run's cleanup removes them).
    let listed =
        c.s3.list_objects_v2()
            .bucket("staging")
            .prefix("runs/sms-job-1/sms-run-1/disk-0.vmdk.ebs-seed/")
            .send()
            .await
            .unwrap();
    assert_eq!(
        listed.contents().len(),
        images.delta_writes(&task).await.unwrap().len()
    );

    // Another writer's layout: qemu-img's stream-optimized VMDK.
    let theirs = std::fs::read(stream_vmdk(&raw)).unwrap();
    seed_and_check(
        &images,
        &c.ebs,
        &c.s3,
        &counter,
        &theirs,
        "runs/sms-job-1/sms-run-2/disk-0.vmdk",
        &disk,
    )
    .await;
}

/// What is not a stream-optimized VMDK is refused by name before a snapshot starts; a seed
/// whose ranges were not all written fails when it is sealed instead of completing short.
#[tokio::test]
async fn bad_seeds_are_named_errors() {
    let Some(moto) = Moto::start(Flavor::S3RootsFixed, "the EBS direct seed") else {
        return;
    };
    let counter = Counter::default();
    let images = counted_images(&moto.endpoint, &counter, 4);
    let c = crate::images::clients(&moto.endpoint);
    c.s3.create_bucket().bucket("staging").send().await.unwrap();
    let put = |key: &'static str, body: Vec<u8>| {
        let s3 = c.s3.clone();
        async move {
            s3.put_object()
                .bucket("staging")
                .key(key)
                .body(S3Body::from(body))
                .send()
                .await
                .unwrap();
            StagedObject {
                bucket: "staging".into(),
                key: key.into(),
            }
        }
    };
    let raw = put("runs/j/r/disk-0.vmdk", vec![0x42; 8192]).await;
    match images.start_import(&raw, "seed").await {
        Err(ImagesError::InvalidImage(m)) => {
            assert!(m.contains("not a stream-optimized VMDK"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let missing = StagedObject {
        bucket: "staging".into(),
        key: "runs/j/r/none.vmdk".into(),
    };
    assert!(matches!(
        images.start_import(&missing, "seed").await,
        Err(ImagesError::NotFound(_))
    ));

    // 8 MiB of data in 4-block ranges: seal before the second range is written.
    let data: Vec<u8> = (0..16 * BLOCK).map(|i| (i % 251) as u8 | 1).collect();
    let opened = tern_disk::open_bytes(data.clone(), &tern_disk::OpenOptions::default()).unwrap();
    let mut vmdk = Vec::new();
    tern_disk::write::write_vmdk_stream(opened.as_ref(), &mut vmdk, "d.vmdk", &|_| {}).unwrap();
    let source = put("runs/j/r2/disk-0.vmdk", vmdk).await;
    let task = images.start_import(&source, "seed").await.unwrap();
    let ranges = images.delta_writes(&task).await.unwrap();
    assert_eq!(ranges.len(), 4);
    images.write_delta_blocks(&task, &ranges[0]).await.unwrap();
    match images.describe_task(&task).await.unwrap() {
        TaskStatus::Failed { message, .. } => {
            assert!(message.contains("were never written"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let outside = tern_core::images::BlockRange {
        first: 14,
        count: 4,
    };
    assert!(matches!(
        images.write_delta_blocks(&task, &outside).await,
        Err(ImagesError::InvalidParameter(_))
    ));
}
