//! PutSnapshotBlock throughput of one WriteBlocks iteration (`Ec2Images::write_delta_blocks`)
//! against a moto server, next to EBS's ceiling of about 1,000 PutSnapshotBlock/s per snapshot.
//!
//! `cargo run -p tern-aws --example ebs_put_throughput -- [BLOCKS] [IN_FLIGHT]` (defaults 256
//! and 32). Needs moto (`pip install 'moto[server]'`). moto is one Python process, so the figures
//! measure the adapter's pipeline (a ranged GET, a SHA-256 check and a PutSnapshotBlock per
//! block) bounded by moto, not EBS. A second figure times PutSnapshotBlock alone (the same
//! blocks from memory, the same parallelism), which is moto's EBS ceiling on this machine; moto's
//! S3 reads the whole object for every ranged GET, so the first figure falls as the delta grows.

use std::time::Instant;

use aws_config::BehaviorVersion;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use futures::{StreamExt, TryStreamExt};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tern_aws::{Ec2Images, Ec2ImagesSettings};
use tern_core::images::{BlockRange, Images, StagedObject};
use tern_disk::blockmap::BlockMap;
use tern_test_support::moto::{Flavor, Moto};

const BS: usize = 512 * 1024;
const EBS_CEILING: f64 = 1_000.0;

fn raw(bytes: Vec<u8>) -> Box<dyn tern_disk::VirtualDisk> {
    let opts = tern_disk::OpenOptions {
        format: Some(tern_disk::Format::Raw),
        ..Default::default()
    };
    tern_disk::open_bytes(bytes, &opts).expect("a raw disk")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let blocks: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(256);
    let in_flight: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(32);
    let Some(moto) = Moto::start(Flavor::S3RootsFixed, "the PutSnapshotBlock benchmark") else {
        return Ok(());
    };
    let config = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "testing", "testing", None, None, "bench",
        )))
        .endpoint_url(&moto.endpoint)
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let ebs = aws_sdk_ebs::Client::new(&config);
    let ec2 = aws_sdk_ec2::Client::new(&config);

    // Every block of an empty disk changed: the delta holds `blocks` random blocks.
    let old = vec![0u8; blocks * BS];
    let mut new = old.clone();
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut new);
    let map = BlockMap::compute(raw(old).as_ref(), &tern_disk::no_progress)?;
    let mut delta = Vec::new();
    tern_disk::delta::create(
        &map,
        raw(new.clone()).as_ref(),
        &mut delta,
        &tern_disk::no_progress,
    )?;
    s3.create_bucket().bucket("staging").send().await?;
    let source = StagedObject {
        bucket: "staging".into(),
        key: "runs/bench/disk-0.delta".into(),
    };
    s3.put_object()
        .bucket(&source.bucket)
        .key(&source.key)
        .body(delta.into())
        .send()
        .await?;
    let parent = ebs
        .start_snapshot()
        .volume_size(1)
        .send()
        .await?
        .snapshot_id
        .unwrap_or_default();

    let mut settings = Ec2ImagesSettings::new("vmimport", "bench");
    settings.blocks_per_range = blocks as u64;
    settings.writes_in_flight = in_flight;
    let images = Ec2Images::new(ec2, ebs.clone(), s3, settings);
    let task = images.start_apply_delta(&parent, &source, "bench").await?;
    let range = BlockRange {
        first: 0,
        count: blocks as u64,
    };
    let start = Instant::now();
    let written = images.write_delta_blocks(&task, &range).await?;
    let secs = start.elapsed().as_secs_f64();
    let rate = written as f64 / secs;
    println!(
        "one WriteBlocks iteration against moto: {written} blocks ({} MiB) in {secs:.2} s, {in_flight} in flight",
        (written as usize * BS) >> 20
    );
    println!(
        "  {rate:.0} PutSnapshotBlock/s = {:.2}x the EBS ceiling of {EBS_CEILING:.0}/s per snapshot ({:.0} MiB/s)",
        rate / EBS_CEILING,
        rate * BS as f64 / (1 << 20) as f64
    );

    let bare = ebs
        .start_snapshot()
        .volume_size(1)
        .send()
        .await?
        .snapshot_id
        .unwrap_or_default();
    let start = Instant::now();
    futures::stream::iter(new.chunks(BS).enumerate())
        .map(|(i, block)| {
            let (ebs, bare) = (ebs.clone(), bare.clone());
            let checksum = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                Sha256::digest(block),
            );
            let block = bytes::Bytes::copy_from_slice(block);
            async move {
                ebs.put_snapshot_block()
                    .snapshot_id(bare)
                    .block_index(i as i32)
                    .data_length(BS as i32)
                    .checksum(checksum)
                    .checksum_algorithm(
                        aws_sdk_ebs::types::ChecksumAlgorithm::ChecksumAlgorithmSha256,
                    )
                    .block_data(block.into())
                    .send()
                    .await
            }
        })
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let bare_rate = blocks as f64 / start.elapsed().as_secs_f64();
    println!(
        "  PutSnapshotBlock alone (blocks from memory, {in_flight} in flight): {bare_rate:.0}/s = {:.2}x the EBS ceiling; the iteration ran at {:.0}% of it",
        bare_rate / EBS_CEILING,
        100.0 * rate / bare_rate
    );
    Ok(())
}
