//! `Ec2Images` (the `Images` port): deltas through EBS direct and images through EC2 on moto;
//! ImportSnapshot, which moto does not model, and the errors moto never gives, with mocks.

use std::collections::{BTreeMap, HashSet};

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::ChecksumAlgorithm;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use base64::Engine as _;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tern_aws::{Ec2Images, Ec2ImagesSettings};
use tern_core::images::{
    Architecture, BlockDevice, BlockRange, BootMode, Images, ImagesError, RegisterImage,
    StagedObject, TaskStatus,
};
use tern_disk::blockmap::BlockMap;
use tern_test_support::moto::{Flavor, Moto};

const BS: usize = 512 * 1024;

pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub ebs: aws_sdk_ebs::Client,
    pub s3: aws_sdk_s3::Client,
}

pub fn clients(endpoint: &str) -> Clients {
    let config = crate::moto_config(endpoint);
    let s3 = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .build();
    Clients {
        ec2: aws_sdk_ec2::Client::new(&config),
        ebs: aws_sdk_ebs::Client::new(&config),
        s3: aws_sdk_s3::Client::from_conf(s3),
    }
}

pub fn images(c: &Clients, blocks_per_range: u64) -> Ec2Images {
    let mut settings = Ec2ImagesSettings::new("vmimport", "tern-tests");
    settings.blocks_per_range = blocks_per_range;
    settings.writes_in_flight = 4;
    Ec2Images::new(c.ec2.clone(), c.ebs.clone(), c.s3.clone(), settings)
}

fn raw(bytes: &[u8]) -> Box<dyn tern_disk::VirtualDisk> {
    let opts = tern_disk::OpenOptions {
        format: Some(tern_disk::Format::Raw),
        ..Default::default()
    };
    tern_disk::open_bytes(bytes.to_vec(), &opts).unwrap()
}

/// The delta from `old` to `new`, made by tern-disk as the connector makes it.
pub fn delta(old: &[u8], new: &[u8]) -> (Vec<u8>, u64) {
    let map = BlockMap::compute(raw(old).as_ref(), &tern_disk::no_progress).unwrap();
    let mut out = Vec::new();
    let summary =
        tern_disk::delta::create(&map, raw(new).as_ref(), &mut out, &tern_disk::no_progress)
            .unwrap();
    (out, summary.changed_blocks)
}

fn b64_sha256(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

/// A completed snapshot holding `disk`'s non-zero blocks, written with the plain SDK.
pub async fn seed_snapshot(ebs: &aws_sdk_ebs::Client, disk: &[u8]) -> String {
    let id = ebs
        .start_snapshot()
        .volume_size(1)
        .description("seed")
        .send()
        .await
        .unwrap()
        .snapshot_id
        .unwrap();
    let mut written = 0;
    for (i, chunk) in disk.chunks(BS).enumerate() {
        if chunk.iter().all(|b| *b == 0) {
            continue;
        }
        let mut block = chunk.to_vec();
        block.resize(BS, 0);
        ebs.put_snapshot_block()
            .snapshot_id(&id)
            .block_index(i as i32)
            .data_length(BS as i32)
            .checksum(b64_sha256(&block))
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .block_data(ByteStream::from(block))
            .send()
            .await
            .unwrap();
        written += 1;
    }
    ebs.complete_snapshot()
        .snapshot_id(&id)
        .changed_blocks_count(written)
        .send()
        .await
        .unwrap();
    id
}

/// Every block a snapshot holds itself, by index, read back with GetSnapshotBlock.
pub async fn snapshot_blocks(ebs: &aws_sdk_ebs::Client, id: &str) -> BTreeMap<i32, Vec<u8>> {
    let list = ebs
        .list_snapshot_blocks()
        .snapshot_id(id)
        .send()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for b in list.blocks() {
        let index = b.block_index().unwrap();
        let got = ebs
            .get_snapshot_block()
            .snapshot_id(id)
            .block_index(index)
            .block_token(b.block_token().unwrap())
            .send()
            .await
            .unwrap();
        let data = got
            .block_data
            .collect()
            .await
            .unwrap()
            .into_bytes()
            .to_vec();
        out.insert(index, data);
    }
    out
}

fn random_blocks(rng: &mut rand::rngs::StdRng, data: &mut [u8], blocks: &[usize]) {
    for &b in blocks {
        let end = ((b + 1) * BS).min(data.len());
        rng.fill_bytes(&mut data[b * BS..end]);
    }
}

/// The child snapshot holds exactly the changed blocks (EBS direct: an incremental snapshot
/// inherits the rest from its parent), and parent + child read back byte for byte as the new
/// disk, including a block that became zero and a short last block of a grown disk.
#[tokio::test]
async fn a_delta_written_range_by_range_reads_back_as_the_new_disk() {
    let Some(moto) = Moto::start(Flavor::S3RootsFixed, "the EBS direct images adapter") else {
        return;
    };
    let c = clients(&moto.endpoint);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut old = vec![0u8; 10 * BS];
    random_blocks(&mut rng, &mut old, &[0, 1, 2, 3, 4, 5, 6, 7]);
    let mut new = old.clone();
    new.resize(10 * BS + 100_000, 0);
    random_blocks(&mut rng, &mut new, &[1, 4, 8, 10]);
    new[2 * BS..3 * BS].fill(0);
    let (delta_bytes, changed) = delta(&old, &new);
    assert_eq!(
        changed, 5,
        "blocks 1, 2 (now zero), 4, 8 and the short block 10"
    );

    c.s3.create_bucket().bucket("staging").send().await.unwrap();
    let source = StagedObject {
        bucket: "staging".into(),
        key: "runs/sms-job-1/sms-run-2/disk-0.delta".into(),
    };
    c.s3.put_object()
        .bucket(&source.bucket)
        .key(&source.key)
        .body(S3Body::from(delta_bytes))
        .send()
        .await
        .unwrap();
    let parent = seed_snapshot(&c.ebs, &old).await;
    let images = images(&c, 2);

    let task = images
        .start_apply_delta(&parent, &source, "disk 0")
        .await
        .unwrap();
    assert_eq!(
        images
            .start_apply_delta(&parent, &source, "disk 0")
            .await
            .unwrap(),
        task,
        "a retried ApplyDelta gets the snapshot it started"
    );
    let ranges = images.delta_writes(&task).await.unwrap();
    assert_eq!(ranges, BlockRange::split(5, 2));
    for r in &ranges {
        assert_eq!(images.write_delta_blocks(&task, r).await.unwrap(), r.count);
    }
    let child = task.split('/').nth(1).unwrap().to_string();
    let written = snapshot_blocks(&c.ebs, &child).await;
    assert_eq!(
        written.keys().copied().collect::<Vec<_>>(),
        [1, 2, 4, 8, 10],
        "exactly the changed blocks"
    );
    // An iteration run again (a Map retry) writes the same bytes: nothing changes.
    images.write_delta_blocks(&task, &ranges[0]).await.unwrap();
    assert_eq!(snapshot_blocks(&c.ebs, &child).await, written);

    // The first poll seals the snapshot: CompleteSnapshot with the number of blocks written
    // and the LINEAR aggregate of their checksums as EBS computes it from what it stored (the
    // SHA-256 of each zero-padded block, concatenated in block order). moto ignores both, so a
    // mocked EBS checks them; EC2 and S3 stay moto's.
    let mut padded = new.clone();
    padded.resize(11 * BS, 0);
    let mut aggregate = Sha256::new();
    for i in [1usize, 2, 4, 8, 10] {
        aggregate.update(Sha256::digest(&padded[i * BS..(i + 1) * BS]));
    }
    let expected_checksum = base64::engine::general_purpose::STANDARD.encode(aggregate.finalize());
    let complete = aws_smithy_mocks::mock!(aws_sdk_ebs::Client::complete_snapshot)
        .match_requests(move |r| {
            r.changed_blocks_count() == Some(5)
                && r.checksum() == Some(expected_checksum.as_str())
                && r.checksum_aggregation_method()
                    == Some(
                        &aws_sdk_ebs::types::ChecksumAggregationMethod::ChecksumAggregationLinear,
                    )
        })
        .then_output(|| {
            aws_sdk_ebs::operation::complete_snapshot::CompleteSnapshotOutput::builder()
                .status(aws_sdk_ebs::types::Status::Completed)
                .build()
        });
    let mocked_ebs = aws_smithy_mocks::mock_client!(aws_sdk_ebs, [&complete]);
    let sealing = Ec2Images::new(
        c.ec2.clone(),
        mocked_ebs,
        c.s3.clone(),
        Ec2ImagesSettings::new("vmimport", "tern-tests"),
    );
    assert!(matches!(
        sealing.describe_task(&task).await.unwrap(),
        TaskStatus::Completed { .. }
    ));
    assert_eq!(complete.num_calls(), 1);

    let snapshot = match images.describe_task(&task).await.unwrap() {
        TaskStatus::Completed { snapshot } => snapshot,
        other => panic!("expected a completed snapshot, got {other:?}"),
    };
    assert_eq!(snapshot.snapshot_id, child);
    assert_eq!(
        snapshot.parent_snapshot_id.as_deref(),
        Some(parent.as_str())
    );
    assert_eq!(snapshot.volume_size_bytes, new.len() as u64);
    assert_eq!(snapshot.volume_size_gib(), 1);
    let described = c
        .ec2
        .describe_snapshots()
        .snapshot_ids(&child)
        .send()
        .await
        .unwrap();
    let tags: HashSet<(String, String)> = described.snapshots()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().into(), t.value().unwrap().into()))
        .collect();
    for (k, v) in [
        ("tern:sealed", "true"),
        ("tern:changed-blocks", "5"),
        (
            "tern:source",
            "s3://staging/runs/sms-job-1/sms-run-2/disk-0.delta",
        ),
        ("tern:managed-by", "tern-tests"),
    ] {
        assert!(tags.contains(&(k.into(), v.into())), "{k}={v} in {tags:?}");
    }
    // Asking again only reads: the snapshot was sealed once.
    assert!(matches!(
        images.describe_task(&task).await.unwrap(),
        TaskStatus::Completed { .. }
    ));

    let parent_blocks = snapshot_blocks(&c.ebs, &parent).await;
    let mut expected = new.clone();
    expected.resize(11 * BS, 0);
    for i in 0..11 {
        let got = written
            .get(&i)
            .or_else(|| parent_blocks.get(&i))
            .cloned()
            .unwrap_or_else(|| vec![0; BS]);
        let i = i as usize;
        assert!(got == expected[i * BS..(i + 1) * BS], "block {i} differs");
    }

    // Damaged input is named, never half-applied.
    c.s3.put_object()
        .bucket("staging")
        .key("runs/bad.delta")
        .body(S3Body::from(vec![7u8; 500]))
        .send()
        .await
        .unwrap();
    let bad = StagedObject {
        bucket: "staging".into(),
        key: "runs/bad.delta".into(),
    };
    match images.start_apply_delta(&parent, &bad, "bad").await {
        Err(ImagesError::InvalidImage(m)) => assert!(m.contains("runs/bad.delta"), "{m}"),
        other => panic!("expected InvalidImage, got {other:?}"),
    }
    let gone = StagedObject {
        bucket: "staging".into(),
        key: "runs/none.delta".into(),
    };
    assert!(matches!(
        images.start_apply_delta(&parent, &gone, "gone").await,
        Err(ImagesError::NotFound(_))
    ));
    assert!(matches!(
        images
            .write_delta_blocks(&task, &BlockRange { first: 4, count: 2 })
            .await,
        Err(ImagesError::InvalidParameter(_))
    ));
    assert!(matches!(
        images.describe_task("ebs-delta/nonsense").await,
        Err(ImagesError::NotFound(_))
    ));
}

async fn plain_snapshot(ec2: &aws_sdk_ec2::Client) -> String {
    let vol = ec2
        .create_volume()
        .size(2)
        .availability_zone("us-east-1a")
        .send()
        .await
        .unwrap();
    ec2.create_snapshot()
        .volume_id(vol.volume_id().unwrap())
        .send()
        .await
        .unwrap()
        .snapshot_id
        .unwrap()
}

pub fn request(name: &str, snapshots: &[&str]) -> RegisterImage {
    RegisterImage {
        name: name.into(),
        description: "sms-job-1 run 1".into(),
        block_devices: snapshots
            .iter()
            .enumerate()
            .map(|(i, s)| BlockDevice {
                device_name: if i == 0 {
                    "/dev/sda1".into()
                } else {
                    "/dev/sdb".into()
                },
                snapshot_id: s.to_string(),
                volume_size: 2,
                delete_on_termination: false,
            })
            .collect(),
        architecture: Architecture::X86_64,
        boot_mode: BootMode::LegacyBios,
        ena_support: true,
    }
}

#[tokio::test]
async fn images_are_listed_by_tag_and_go_away_idempotently() {
    let Some(moto) = Moto::start(Flavor::Threaded, "the EC2 images adapter") else {
        return;
    };
    let c = clients(&moto.endpoint);
    let images = images(&c, 2_000);
    let root = plain_snapshot(&c.ec2).await;
    let data = plain_snapshot(&c.ec2).await;

    // moto keeps only an image's name and description (RegisterImage's block devices,
    // architecture and ENA flag are checked on the request, with mocks, in images_mocked).
    let image = images
        .register_image(&request("sms-job-1-run-1", &[&root, &data]))
        .await
        .unwrap();
    assert!(image.image_id.starts_with("ami-"), "{}", image.image_id);
    assert_eq!(image.name, "sms-job-1-run-1");
    assert_eq!(images.describe_image(&image.image_id).await.unwrap(), image);

    // An image someone else registered in the account is not Tern's.
    c.ec2
        .register_image()
        .name("not-ours")
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap();
    let listed: Vec<String> = images
        .list_images()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.image_id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&image.image_id));

    images.deregister_image(&image.image_id).await.unwrap();
    assert!(matches!(
        images.describe_image(&image.image_id).await,
        Err(ImagesError::NotFound(_))
    ));
    images
        .deregister_image(&image.image_id)
        .await
        .expect("an image already gone is deregistered");
    assert!(images.list_images().await.unwrap().is_empty());

    let snapshot = images.describe_snapshot(&root).await.unwrap();
    assert_eq!(snapshot.volume_size_gib(), 2);
    images.delete_snapshot(&root).await.unwrap();
    images
        .delete_snapshot(&root)
        .await
        .expect("a snapshot already gone is deleted");
    assert!(matches!(
        images.describe_snapshot(&root).await,
        Err(ImagesError::NotFound(_))
    ));
}
