//! The local image service on real images: stream-optimized VMDKs made by `qemu-img` and by
//! `tern_disk::write`, deltas made by `tern_disk::delta`, and the block files on disk counted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{RngCore, SeedableRng};
use tern_core::images::{
    Architecture, BlockDevice, BootMode, Images, ImagesError, RegisterImage, Snapshot,
    StagedObject, TaskFailure, TaskStatus,
};
use tern_core::{RandomIds, SystemClock};
use tern_disk::blockmap::{BlockMap, BLOCK_SIZE};
use tern_local::images::{LocalImages, LocalImagesOptions};
use tern_test_support::qemu::{qemu_img, stream_vmdk};

const BS: usize = BLOCK_SIZE as usize;
const BUCKET: &str = "tern-staging";

struct Env {
    _dir: tempfile::TempDir,
    data: PathBuf,
    staging: PathBuf,
    work: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (data, staging, work) = (
            dir.path().join("data"),
            dir.path().join("staging"),
            dir.path().join("work"),
        );
        for d in [&data, &staging.join(BUCKET), &work] {
            std::fs::create_dir_all(d).unwrap();
        }
        Env {
            _dir: dir,
            data,
            staging,
            work,
        }
    }

    fn open(&self) -> LocalImages {
        self.open_with(LocalImagesOptions::default())
    }

    fn open_with(&self, options: LocalImagesOptions) -> LocalImages {
        LocalImages::open_with(
            &self.data,
            &self.staging,
            Arc::new(RandomIds),
            Arc::new(SystemClock),
            options,
        )
        .unwrap()
    }

    /// Puts a file into the staging bucket under `key`.
    fn stage(&self, key: &str, from: &Path) -> StagedObject {
        let to = self.staging.join(BUCKET).join(key);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
        StagedObject {
            bucket: BUCKET.into(),
            key: key.into(),
        }
    }

    fn block_files(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        let dir = self.data.join("images/blocks");
        for fan in std::fs::read_dir(dir).unwrap() {
            for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
                out.insert(f.unwrap().file_name().into_string().unwrap());
            }
        }
        out
    }
}

/// A disk of `blocks` 512 KiB blocks plus `tail` bytes: per block `pattern` says r = random,
/// z = zeros, h = random first half then zeros, d = a copy of the first block (to be shared).
fn make_disk(path: &Path, pattern: &str, tail: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; pattern.len() * BS + tail];
    for (i, c) in pattern.chars().enumerate() {
        let block = i * BS..(i + 1) * BS;
        match c {
            'r' => rng.fill_bytes(&mut data[block]),
            'h' => rng.fill_bytes(&mut data[i * BS..i * BS + BS / 2]),
            'd' => {
                let first = data[..BS].to_vec();
                data[block].copy_from_slice(&first);
            }
            'z' => {}
            other => panic!("pattern {other}"),
        }
    }
    let n = data.len();
    rng.fill_bytes(&mut data[n - tail..]);
    std::fs::write(path, &data).unwrap();
    data
}

fn stream_vmdk_by_tern(raw: &Path) -> PathBuf {
    let disk = tern_disk::open(raw, &Default::default()).unwrap();
    let out = raw.with_extension("tern.vmdk");
    let f = std::fs::File::create(&out).unwrap();
    tern_disk::write::write_vmdk_stream(disk.as_ref(), f, "disk.vmdk", &tern_disk::no_progress)
        .unwrap();
    out
}

/// Writes a delta from `old` (a raw disk) to `new` and returns the delta file.
fn make_delta(old: &Path, new: &Path, out: &Path) -> PathBuf {
    let old_disk = tern_disk::open(old, &Default::default()).unwrap();
    let map = BlockMap::compute(old_disk.as_ref(), &tern_disk::no_progress).unwrap();
    let new_disk = tern_disk::open(new, &Default::default()).unwrap();
    let f = std::fs::File::create(out).unwrap();
    tern_disk::delta::create(&map, new_disk.as_ref(), f, &tern_disk::no_progress).unwrap();
    out.to_path_buf()
}

async fn wait_done(images: &LocalImages, task: &str) -> TaskStatus {
    images.wait_for_tasks();
    images.describe_task(task).await.unwrap()
}

async fn completed(images: &LocalImages, task: &str) -> Snapshot {
    match wait_done(images, task).await {
        TaskStatus::Completed { snapshot } => snapshot,
        other => panic!("task {task} did not complete: {other:?}"),
    }
}

fn export_raw(images: &LocalImages, snapshot_id: &str, out: &Path) -> Vec<u8> {
    let disk = images.snapshot_disk(snapshot_id).unwrap();
    tern_disk::write::write_raw(&disk, out, &tern_disk::no_progress).unwrap();
    std::fs::read(out).unwrap()
}

/// Non-zero 512 KiB blocks of `data`, as the block store names them.
fn digests(data: &[u8]) -> HashSet<String> {
    data.chunks(BS)
        .filter(|c| c.iter().any(|b| *b != 0))
        .map(|c| blake3::hash(c).to_hex().to_string())
        .collect()
}

fn register(snapshot: &Snapshot, name: &str) -> RegisterImage {
    RegisterImage {
        name: name.into(),
        description: "test".into(),
        block_devices: vec![BlockDevice {
            device_name: "/dev/sda1".into(),
            snapshot_id: snapshot.snapshot_id.clone(),
            volume_size: snapshot.volume_size_gib(),
            delete_on_termination: false,
        }],
        architecture: Architecture::X86_64,
        boot_mode: BootMode::LegacyBios,
        ena_support: true,
    }
}

#[tokio::test]
async fn import_then_export_is_byte_identical_in_every_format() {
    let env = Env::new();
    let raw = env.work.join("seed.raw");
    // Random, zero, half-zero and duplicate blocks, and a short last block.
    let data = make_disk(&raw, "rrzzhrdzzr", 3 * 4096 + 512, 1);
    let staged = env.stage("jobs/j1/run1/disk0.vmdk", &stream_vmdk(&raw));
    let images = env.open();
    let task = images.start_import(&staged, "seed").await.unwrap();
    assert!(task.starts_with("import-snap-"), "{task}");
    let snap = completed(&images, &task).await;
    assert!(snap.snapshot_id.starts_with("snap-") && snap.snapshot_id.len() == 22);
    assert_eq!(snap.volume_size_bytes, data.len() as u64);
    assert_eq!(snap.parent_snapshot_id, None);
    assert_eq!(snap.description, "seed");
    // 6 non-zero blocks, one a duplicate of the first, plus the short tail block.
    assert_eq!(snap.stored_bytes, 6 * BS as u64 + 3 * 4096 + 512);
    assert_eq!(
        images.describe_snapshot(&snap.snapshot_id).await.unwrap(),
        snap
    );

    // Zero blocks are not stored, duplicates are stored once.
    assert_eq!(env.block_files(), digests(&data));
    assert_eq!(env.block_files().len(), 6);

    assert!(export_raw(&images, &snap.snapshot_id, &env.work.join("out.raw")) == data);
    let disk = images.snapshot_disk(&snap.snapshot_id).unwrap();
    let vmdk = env.work.join("out.vmdk");
    tern_disk::write::write_vmdk_stream(
        &disk,
        std::fs::File::create(&vmdk).unwrap(),
        "out.vmdk",
        &tern_disk::no_progress,
    )
    .unwrap();
    let qcow2 = env.work.join("out.qcow2");
    tern_disk::write::write_qcow2(&disk, &qcow2, &tern_disk::no_progress).unwrap();
    for (file, fmt) in [(&vmdk, "vmdk"), (&qcow2, "qcow2")] {
        // qemu-img is the independent reader here.
        qemu_img(&[
            "compare",
            "-f",
            fmt,
            "-F",
            "raw",
            file.to_str().unwrap(),
            raw.to_str().unwrap(),
        ]);
    }
}

#[tokio::test]
async fn a_delta_onto_its_parent_gives_the_new_disk_and_shares_unchanged_blocks() {
    let env = Env::new();
    let old = env.work.join("old.raw");
    let new = env.work.join("new.raw");
    let old_data = make_disk(&old, "rrrrzrrr", 0, 2);
    // Block 1 rewritten, block 3 zeroed, block 4 filled, the disk grown by two blocks and a
    // partial one.
    let mut new_data = old_data.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    rng.fill_bytes(&mut new_data[BS..2 * BS]);
    new_data[3 * BS..4 * BS].fill(0);
    rng.fill_bytes(&mut new_data[4 * BS..5 * BS]);
    let mut grown = vec![0u8; 2 * BS + 4096];
    rng.fill_bytes(&mut grown[BS..]);
    new_data.extend_from_slice(&grown);
    std::fs::write(&new, &new_data).unwrap();

    let images = env.open();
    let seed = env.stage("run1/disk0.vmdk", &stream_vmdk_by_tern(&old));
    let parent = completed(&images, &images.start_import(&seed, "seed").await.unwrap()).await;
    let parent_files = env.block_files();
    assert_eq!(parent_files, digests(&old_data));

    let delta = env.stage(
        "run2/disk0.delta",
        &make_delta(&old, &new, &env.work.join("d")),
    );
    let task = images
        .start_apply_delta(&parent.snapshot_id, &delta, "run 2")
        .await
        .unwrap();
    assert!(task.starts_with("delta-snap-"), "{task}");
    let child = completed(&images, &task).await;
    assert_eq!(
        child.parent_snapshot_id.as_deref(),
        Some(parent.snapshot_id.as_str())
    );
    assert_eq!(child.volume_size_bytes, new_data.len() as u64);
    assert!(export_raw(&images, &child.snapshot_id, &env.work.join("child.raw")) == new_data);
    // The parent is unchanged by its child.
    assert!(export_raw(&images, &parent.snapshot_id, &env.work.join("parent.raw")) == old_data);

    // Shared: the union of both disks' blocks, each file once; the child added only the
    // blocks it changed (1 rewritten, 1 filled, 2 grown).
    let files = env.block_files();
    let both: HashSet<String> = digests(&old_data)
        .union(&digests(&new_data))
        .cloned()
        .collect();
    assert_eq!(files, both);
    assert_eq!(files.len(), parent_files.len() + 4);
}

#[tokio::test]
async fn deleting_snapshots_frees_exactly_the_blocks_no_other_snapshot_uses() {
    let env = Env::new();
    let (a, b) = (env.work.join("a.raw"), env.work.join("b.raw"));
    let a_data = make_disk(&a, "rrrr", 0, 4);
    let mut b_data = a_data.clone();
    rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut b_data[2 * BS..3 * BS]);
    std::fs::write(&b, &b_data).unwrap();
    let images = env.open();
    let parent = completed(
        &images,
        &images
            .start_import(&env.stage("a.vmdk", &stream_vmdk(&a)), "")
            .await
            .unwrap(),
    )
    .await;
    let delta = env.stage("b.delta", &make_delta(&a, &b, &env.work.join("d")));
    let child = completed(
        &images,
        &images
            .start_apply_delta(&parent.snapshot_id, &delta, "")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(env.block_files().len(), 5);

    let image = images
        .register_image(&register(&child, "tern-job-1 run 2"))
        .await
        .unwrap();
    assert!(image.image_id.starts_with("ami-") && image.image_id.len() == 21);
    assert_eq!(image.root_device_name, "/dev/sda1");
    let refused = images
        .delete_snapshot(&child.snapshot_id)
        .await
        .unwrap_err();
    assert_eq!(refused.error_type(), "Images.InUse");
    assert!(refused.to_string().contains(&image.image_id), "{refused}");

    images.deregister_image(&image.image_id).await.unwrap();
    images.deregister_image(&image.image_id).await.unwrap();
    let gone = images.describe_image(&image.image_id).await.unwrap_err();
    assert_eq!(gone.error_type(), "Images.NotFound");

    // The child's own block goes; the three it shares with the parent stay.
    images.delete_snapshot(&child.snapshot_id).await.unwrap();
    assert_eq!(env.block_files(), digests(&a_data));
    images.delete_snapshot(&child.snapshot_id).await.unwrap();
    assert_eq!(
        images
            .describe_snapshot(&child.snapshot_id)
            .await
            .unwrap_err()
            .error_type(),
        "Images.NotFound"
    );
    assert!(export_raw(&images, &parent.snapshot_id, &env.work.join("p.raw")) == a_data);
    images.delete_snapshot(&parent.snapshot_id).await.unwrap();
    assert!(env.block_files().is_empty());
    assert_eq!(images.gc().unwrap().removed_files, 0);
}

#[tokio::test]
async fn start_import_is_idempotent_per_staged_object() {
    let env = Env::new();
    let raw = env.work.join("d.raw");
    let data = make_disk(&raw, "rzr", 0, 6);
    let vmdk = stream_vmdk_by_tern(&raw);
    let staged = env.stage("run1/d.vmdk", &vmdk);
    let images = env.open();
    let first = images.start_import(&staged, "one").await.unwrap();
    let second = images.start_import(&staged, "again").await.unwrap();
    assert_eq!(first, second);
    let other = images
        .start_import(&env.stage("run2/d.vmdk", &vmdk), "other")
        .await
        .unwrap();
    assert_ne!(first, other);
    let snap = completed(&images, &first).await;
    assert_eq!(snap.description, "one");
    // Same task, and the same snapshot, even once the staged object has been cleaned up.
    std::fs::remove_file(env.staging.join(BUCKET).join("run1/d.vmdk")).unwrap();
    assert_eq!(images.start_import(&staged, "late").await.unwrap(), first);
    assert_eq!(completed(&images, &first).await, snap);
    let other_snap = completed(&images, &other).await;
    assert_ne!(other_snap.snapshot_id, snap.snapshot_id);
    // Both snapshots, one set of block files.
    assert_eq!(env.block_files(), digests(&data));

    // A second registration of the same image is the same image; a clash is refused.
    let req = register(&snap, "web-1 2026-12-01");
    let image = images.register_image(&req).await.unwrap();
    assert_eq!(images.register_image(&req).await.unwrap(), image);
    let clash = images
        .register_image(&register(&other_snap, "web-1 2026-12-01"))
        .await
        .unwrap_err();
    assert_eq!(clash.error_type(), "Images.InvalidParameter");
    let second_image = images
        .register_image(&register(&other_snap, "web-1 2026-12-02"))
        .await
        .unwrap();
    let listed: Vec<String> = images
        .list_images()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.image_id)
        .collect();
    assert_eq!(listed, [image.image_id.clone(), second_image.image_id]);
    assert_eq!(images.describe_image(&image.image_id).await.unwrap(), image);
}

#[tokio::test]
async fn an_import_interrupted_midway_completes_after_reopening() {
    let env = Env::new();
    let raw = env.work.join("big.raw");
    let data = make_disk(&raw, &"r".repeat(24), 0, 7);
    let staged = env.stage("big.vmdk", &stream_vmdk(&raw));
    let task = {
        // Stops as a crash would, with some of the blocks written and nothing committed.
        let images = env.open_with(LocalImagesOptions {
            stop_after_blocks: Some(5),
            ..Default::default()
        });
        let task = images.start_import(&staged, "seed").await.unwrap();
        match wait_done(&images, &task).await {
            TaskStatus::Active { .. } => {}
            other => panic!("expected an interrupted task, got {other:?}"),
        }
        let written = env.block_files().len();
        assert!((5..24).contains(&written), "{written} blocks written");
        task
    };
    // Reopening resumes the task; a temporary file left by the "crash" is cleaned up.
    std::fs::write(env.data.join("images/tmp/leftover.1.1"), b"torn").unwrap();
    let images = env.open();
    let snap = completed(&images, &task).await;
    assert!(export_raw(&images, &snap.snapshot_id, &env.work.join("out.raw")) == data);
    assert_eq!(env.block_files(), digests(&data));
    assert!(!env.data.join("images/tmp/leftover.1.1").exists());

    // Dropped right after the start: whether it got far or not, the reopened service ends it.
    let staged = env.stage("big2.vmdk", &stream_vmdk_by_tern(&raw));
    let task = images.start_import(&staged, "again").await.unwrap();
    drop(images);
    let images = env.open();
    let snap = completed(&images, &task).await;
    assert!(export_raw(&images, &snap.snapshot_id, &env.work.join("out2.raw")) == data);
}

#[tokio::test]
async fn hostile_staged_keys_are_refused() {
    let env = Env::new();
    std::fs::write(env.staging.parent().unwrap().join("secret"), b"x").unwrap();
    std::os::unix::fs::symlink(
        env.staging.parent().unwrap().join("secret"),
        env.staging.join(BUCKET).join("link"),
    )
    .unwrap();
    let images = env.open();
    for (bucket, key) in [
        (BUCKET, "../secret"),
        (BUCKET, "a/../../secret"),
        (BUCKET, "/etc/passwd"),
        ("..", "secret"),
        (BUCKET, "link"),
    ] {
        let obj = StagedObject {
            bucket: bucket.into(),
            key: key.into(),
        };
        let err = images.start_import(&obj, "").await.unwrap_err();
        assert_eq!(err.error_type(), "Images.InvalidParameter", "{key}: {err}");
        let err = images
            .start_apply_delta("snap-0", &obj, "")
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "Images.InvalidParameter", "{key}: {err}");
    }
    let missing = StagedObject {
        bucket: BUCKET.into(),
        key: "nothing/here".into(),
    };
    let err = images.start_import(&missing, "").await.unwrap_err();
    assert_eq!(err.error_type(), "Images.NotFound");
    assert!(
        err.to_string().contains("s3://tern-staging/nothing/here"),
        "{err}"
    );
}

async fn failure(images: &LocalImages, task: &str) -> (TaskFailure, String) {
    match wait_done(images, task).await {
        TaskStatus::Failed { kind, message } => (kind, message),
        other => panic!("expected a failed task, got {other:?}"),
    }
}

#[tokio::test]
async fn staged_data_that_is_not_what_was_promised_fails_the_task_clearly() {
    let env = Env::new();
    let raw = env.work.join("d.raw");
    make_disk(&raw, "rr", 0, 8);
    let qcow2 = env.work.join("d.qcow2");
    let sparse = env.work.join("d.sparse.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        raw.to_str().unwrap(),
        sparse.to_str().unwrap(),
    ]);
    let images = env.open();
    for (file, expect) in [
        (
            &raw,
            "is not a stream-optimized VMDK: its content has no VMDK header",
        ),
        (
            &qcow2,
            "is not a stream-optimized VMDK: its content is a qcow2 image",
        ),
        (
            &sparse,
            "is a monolithicSparse VMDK; a seed must be a stream-optimized VMDK",
        ),
    ] {
        let name = file.file_name().unwrap().to_str().unwrap();
        let task = images
            .start_import(&env.stage(name, file), "")
            .await
            .unwrap();
        let (kind, message) = failure(&images, &task).await;
        assert_eq!(kind, TaskFailure::InvalidImage, "{message}");
        assert!(message.contains(expect), "{name}: {message}");
        assert!(
            message.contains(&format!("s3://{BUCKET}/{name}")),
            "{message}"
        );
        let err = images
            .describe_task(&task)
            .await
            .unwrap()
            .failure()
            .unwrap();
        assert_eq!(err.error_type(), ImagesError::INVALID_IMAGE);
        // Idempotent: the same object gives the same failed task, not a new attempt.
        assert_eq!(
            images
                .start_import(&env.stage(name, file), "")
                .await
                .unwrap(),
            task
        );
    }

    // A delta whose block data was damaged in transit.
    let seed = env.stage("seed.vmdk", &stream_vmdk_by_tern(&raw));
    let parent = completed(&images, &images.start_import(&seed, "").await.unwrap()).await;
    let new = env.work.join("new.raw");
    make_disk(&new, "rz", 0, 9);
    let delta = make_delta(&raw, &new, &env.work.join("d.delta"));
    let mut bytes = std::fs::read(&delta).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&delta, &bytes).unwrap();
    let task = images
        .start_apply_delta(&parent.snapshot_id, &env.stage("bad.delta", &delta), "")
        .await
        .unwrap();
    let (kind, message) = failure(&images, &task).await;
    assert_eq!(kind, TaskFailure::InvalidImage);
    assert!(message.contains("SHA-256 mismatch"), "{message}");
    // A VMDK handed in as a delta.
    let task = images
        .start_apply_delta(&parent.snapshot_id, &seed, "")
        .await
        .unwrap();
    let (kind, message) = failure(&images, &task).await;
    assert_eq!(kind, TaskFailure::InvalidImage);
    assert!(
        message.contains("is not a valid Tern delta object"),
        "{message}"
    );

    let err = images
        .start_apply_delta("snap-00000000000000000", &env.stage("x.delta", &delta), "")
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "Images.NotFound");
    assert!(err.to_string().contains("parent snapshot"), "{err}");
}

#[tokio::test]
async fn gc_removes_orphan_block_files_only() {
    let env = Env::new();
    let raw = env.work.join("d.raw");
    let data = make_disk(&raw, "rr", 0, 10);
    let images = env.open();
    let seed = env.stage("d.vmdk", &stream_vmdk_by_tern(&raw));
    let snap = completed(&images, &images.start_import(&seed, "").await.unwrap()).await;
    // What a crash between a delete's commit and its unlink leaves behind.
    let orphan = blake3::hash(b"orphan").to_hex().to_string();
    let fan = env.data.join("images/blocks").join(&orphan[..2]);
    std::fs::create_dir_all(&fan).unwrap();
    std::fs::write(fan.join(&orphan), b"orphan").unwrap();
    assert_eq!(images.gc().unwrap().removed_files, 1);
    assert_eq!(env.block_files(), digests(&data));
    assert!(export_raw(&images, &snap.snapshot_id, &env.work.join("o.raw")) == data);
}

#[tokio::test]
async fn progress_is_reported_in_true_bytes_while_an_import_runs() {
    let env = Env::new();
    let raw = env.work.join("d.raw");
    let data = make_disk(&raw, &"rz".repeat(48), 0, 11);
    let staged = env.stage("d.vmdk", &stream_vmdk(&raw));
    let images = env.open();
    let task = images.start_import(&staged, "").await.unwrap();
    let (mut last, mut midway) = (0u64, false);
    let snap = loop {
        match images.describe_task(&task).await.unwrap() {
            TaskStatus::Active {
                progress_percent,
                bytes_done,
                bytes_total,
                message,
            } => {
                assert!(bytes_done >= last, "progress went back");
                assert!(progress_percent < 100);
                if bytes_total > 0 {
                    assert_eq!(bytes_total, data.len() as u64);
                    assert_eq!(
                        progress_percent as u64,
                        (bytes_done * 100 / bytes_total).min(99)
                    );
                }
                midway |= bytes_done > 0 && bytes_done < bytes_total;
                if bytes_done > 0 {
                    assert!(
                        message.starts_with("importing s3://tern-staging/d.vmdk")
                            || message == "saving the snapshot",
                        "{message}"
                    );
                }
                last = bytes_done;
            }
            TaskStatus::Completed { snapshot } => break snapshot,
            other => panic!("{other:?}"),
        }
    };
    // Every block is fsynced before the commit, so 48 blocks take far longer than one poll.
    assert!(midway, "never saw the import midway");
    assert_eq!(snap.stored_bytes, 48 * BS as u64);
}

#[tokio::test]
async fn an_internal_failure_is_retried_by_starting_again() {
    let env = Env::new();
    let raw = env.work.join("d.raw");
    let data = make_disk(&raw, "rr", 0, 12);
    let staged = env.stage("d.vmdk", &stream_vmdk_by_tern(&raw));
    let images = env.open();
    // Block files cannot be written while their temporary directory is a file.
    let tmp = env.data.join("images/tmp");
    std::fs::remove_dir(&tmp).unwrap();
    std::fs::write(&tmp, b"").unwrap();
    let task = images.start_import(&staged, "").await.unwrap();
    let (kind, message) = failure(&images, &task).await;
    assert_eq!(kind, TaskFailure::Internal);
    assert!(message.contains("cannot write block file"), "{message}");
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(images.start_import(&staged, "").await.unwrap(), task);
    let snap = completed(&images, &task).await;
    assert!(export_raw(&images, &snap.snapshot_id, &env.work.join("o.raw")) == data);
}

/// A running import that finds its blocks already stored keeps them even when the snapshot that
/// stored them is deleted meanwhile: the task pins the blocks, it does not just look them up.
#[tokio::test]
async fn deleting_a_snapshot_during_an_import_of_the_same_blocks_loses_nothing() {
    let env = Env::new();
    let raw = env.work.join("d.raw");
    let data = make_disk(&raw, &"r".repeat(32), 0, 13);
    let vmdk = stream_vmdk_by_tern(&raw);
    let images = env.open();
    for round in 0..4 {
        let held = images
            .start_import(&env.stage(&format!("a{round}.vmdk"), &vmdk), "")
            .await
            .unwrap();
        let held = completed(&images, &held).await;
        let racing = images
            .start_import(&env.stage(&format!("b{round}.vmdk"), &vmdk), "")
            .await
            .unwrap();
        images.delete_snapshot(&held.snapshot_id).await.unwrap();
        let snap = completed(&images, &racing).await;
        let out = env.work.join("o.raw");
        assert!(
            export_raw(&images, &snap.snapshot_id, &out) == data,
            "round {round}"
        );
        assert_eq!(env.block_files(), digests(&data), "round {round}");
        images.delete_snapshot(&snap.snapshot_id).await.unwrap();
        assert!(env.block_files().is_empty(), "round {round}");
    }
}

/// A full data directory does not fail the import: the task stays active, says that it waits
/// for disk space, and completes with the right snapshot once space returns.
#[tokio::test]
async fn an_import_on_a_full_disk_waits_for_space_and_then_completes() {
    let env = Env::new();
    let fs = tern_test_support::tmpfs::Tmpfs::mount(&env.data, 16);
    let raw = env.work.join("d.raw");
    let data = make_disk(&raw, "rrrr", 0, 21);
    let staged = env.stage("d.vmdk", &stream_vmdk_by_tern(&raw));
    let images = env.open();
    let filler = fs.fill();
    // Recording a new task needs space too: that start is refused as retryable.
    let err = images.start_import(&staged, "").await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("data directory is full"), "{err}");
    // With room for the task's record (128 KiB) but none for a 512 KiB block, the task waits.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() - 128 * 1024).unwrap();
    drop(f); // an open file keeps its space after the unlink below
    let task = images.start_import(&staged, "").await.unwrap();
    let waiting = tern_test_support::poll::until_async(
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(20),
        || async {
            match images.describe_task(&task).await.unwrap() {
                TaskStatus::Active { message, .. }
                    if message.starts_with("waiting for disk space") =>
                {
                    Some(message)
                }
                TaskStatus::Active { .. } => None,
                other => panic!("the task ended on a full disk: {other:?}"),
            }
        },
    )
    .await
    .expect("the task never said it waits for disk space");
    assert!(waiting.contains("No space left on device"), "{waiting}");
    std::fs::remove_file(&filler).unwrap();
    let snap = completed(&images, &task).await;
    assert!(export_raw(&images, &snap.snapshot_id, &env.work.join("o.raw")) == data);
    drop(images);
}
