//! The changed-extent path for qcow2 files (`tern_connector::changed`): an incremental run
//! reads only the blocks a persistent dirty bitmap marks, builds the delta the full comparison
//! would, and falls back to the comparison with a reason when the bitmap cannot be trusted.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern_connector::changed::{bitmap_name, parse_info, ChangedBlocks, Changes};
use tern_connector::replicate::{
    self, commit_run, DiskSource, ReplicateContext, ReplicateError, ReplicateOptions,
    ReplicationWork, RetryPolicy, RunOutcome, Staging,
};
use tern_disk::{delta, OpenOptions};
use tern_test_support::poll::until;
use tern_test_support::qemu::qemu_io;

use crate::support::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

fn work(job: &str, run: &str, disk: &Path) -> ReplicationWork {
    ReplicationWork {
        job_id: job.into(),
        run_id: run.into(),
        server_id: "s-0123456789abcdef0".into(),
        disks: vec![DiskSource::File {
            path: disk.to_path_buf(),
            format: None,
            backing_chain: Vec::new(),
        }],
        staging: Staging {
            bucket: "staging".into(),
            prefix: "runs".into(),
        },
        seed: false,
    }
}

fn ctx(s3: aws_sdk_s3::Client, state: &Path, mode: ChangedBlocks) -> ReplicateContext {
    ReplicateContext {
        s3,
        state_dir: state.to_path_buf(),
        options: ReplicateOptions {
            part_size: 5 * MIB,
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
            },
            changed_blocks: mode,
            ..ReplicateOptions::default()
        },
    }
}

async fn run(w: &ReplicationWork, c: &ReplicateContext) -> Result<RunOutcome, ReplicateError> {
    replicate::run(w, c, &|_| {}).await
}

fn bitmaps(img: &Path) -> Vec<String> {
    let info = parse_info(&qemu_img(&["info", "--output=json", p(img)])).unwrap();
    info.bitmaps.into_iter().map(|b| b.name).collect()
}

/// The guest's bytes of the image now, as qemu reads them.
fn image_bytes(img: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("now.raw");
    qemu_img(&["convert", "-O", "raw", p(img), p(&raw)]);
    std::fs::read(&raw).unwrap()
}

/// The seed's VMDK with the run's delta applied, as raw bytes.
async fn applied(s3: &aws_sdk_s3::Client, seed: &Path, out: &RunOutcome, dir: &Path) -> Vec<u8> {
    let d = &out.manifest.disks[0];
    let bytes = get(s3, "staging", &d.key).await;
    let base = tern_disk::open(seed, &OpenOptions::default()).unwrap();
    let mut reader = delta::DeltaReader::new(std::io::Cursor::new(bytes)).unwrap();
    let path = dir.join("applied.raw");
    delta::apply(&*base, &mut reader, &path, &tern_disk::no_progress).unwrap();
    std::fs::read(&path).unwrap()
}

/// A qcow2 with data, seeded and confirmed: returns the image and the seed's VMDK.
async fn seeded(
    s3: &aws_sdk_s3::Client,
    dir: &Path,
    c: &ReplicateContext,
    job: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let raw = dir.join("src.raw");
    make_raw(&raw, SIZE, 11);
    let img = dir.join("src.qcow2");
    convert(&raw, &img, "qcow2", &[]);
    let out = run(&work(job, "sms-run-00000000000000001", &img), c)
        .await
        .expect("seed");
    assert_eq!(out.disks[0].changes, Some(Changes::Seed));
    let seed = write(
        dir,
        "seed.vmdk",
        &get(s3, "staging", &out.manifest.disks[0].key).await,
    );
    commit_run(&c.state_dir, job, "sms-run-00000000000000001").unwrap();
    (img, seed)
}

fn change(img: &Path, writes: &[&str]) {
    let mut args = Vec::new();
    for w in writes {
        args.push("-c");
        args.push(*w);
    }
    args.push(p(img));
    qemu_io(&args);
}

/// The seed adds the run's bitmap before reading; the incremental run reads only the dirty
/// blocks (at most 1.05x the changed bytes), its delta is byte for byte the one the full
/// comparison makes, and seed + delta is the image now. Confirming it removes the older bitmap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_run_reads_only_the_dirty_blocks() {
    let Some(moto) = Moto::start() else { return };
    let s3 = moto.bucket("staging").await;
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(s3.clone(), &dir.path().join("state"), ChangedBlocks::Auto);
    let job = "sms-job-000000000000000b1";
    let (img, seed) = seeded(&s3, dir.path(), &c, job).await;
    let r1 = bitmap_name(job, "sms-run-00000000000000001");
    assert_eq!(bitmaps(&img), vec![r1.clone()]);

    // Blocks 3 and 40 rewritten whole, 64 KiB inside block 17, 4 KiB across the end of block
    // 90 into 91, block 100 zeroed: six changed blocks, one of them now zero.
    change(
        &img,
        &[
            "write -P 0xab 1536k 512k",
            "write -P 0xcd 20M 512k",
            "write -P 0xef 8768k 64k",
            "write -P 0x12 46078k 4k",
            "write -z 50M 512k",
        ],
    );
    let now = image_bytes(&img, dir.path());
    let w2 = work(job, "sms-run-00000000000000002", &img);
    let out = run(&w2, &c).await.expect("incremental run");
    let d = &out.manifest.disks[0];
    let changed_bytes = d.changed_blocks.unwrap() * BLOCK;
    assert!(
        matches!(&out.disks[0].changes, Some(Changes::Bitmap { bitmap, dirty_blocks: 6 }) if *bitmap == r1),
        "{:?}",
        out.disks[0].changes
    );
    assert_eq!(d.changed_blocks, Some(6));
    let read = out.disks[0].source_bytes_read;
    assert!(
        read as f64 <= 1.05 * changed_bytes as f64,
        "read {read} bytes for {changed_bytes} changed"
    );
    assert!(applied(&s3, &seed, &out, dir.path()).await == now);

    // The full comparison over the same base finds the same delta.
    let cc = ctx(
        s3.clone(),
        &dir.path().join("state"),
        ChangedBlocks::Compare,
    );
    let compared = run(&work(job, "sms-run-00000000000000003", &img), &cc)
        .await
        .expect("compare run");
    assert_eq!(
        compared.disks[0].changes,
        Some(Changes::Compare { fallback: None })
    );
    assert_eq!(compared.manifest.disks[0].sha256, d.sha256);
    assert!(compared.disks[0].source_bytes_read > 4 * read);

    // Confirming run 2 makes its bitmap the base and removes run 1's.
    commit_run(&c.state_dir, job, "sms-run-00000000000000002").unwrap();
    assert_eq!(
        bitmaps(&img),
        vec![bitmap_name(job, "sms-run-00000000000000002")]
    );
    // A run with nothing changed reads nothing.
    let out = run(&work(job, "sms-run-00000000000000004", &img), &c)
        .await
        .unwrap();
    assert_eq!(out.manifest.disks[0].changed_blocks, Some(0));
    assert_eq!(out.disks[0].source_bytes_read, 0);
}

/// Our own server process, killed when the test ends.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A deleted bitmap and an image in use both fall back to the comparison, saying why, and the
/// delta is still right; with changed_blocks = "bitmap" they fail the run instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_bitmap_and_locked_image_fall_back_with_the_reason() {
    let Some(moto) = Moto::start() else { return };
    let s3 = moto.bucket("staging").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let c = ctx(s3.clone(), &state, ChangedBlocks::Auto);
    let job = "sms-job-000000000000000b2";
    let (img, seed) = seeded(&s3, dir.path(), &c, job).await;
    let r1 = bitmap_name(job, "sms-run-00000000000000001");
    qemu_img(&["bitmap", "--remove", p(&img), &r1]);
    change(&img, &["write -P 0xab 1M 512k", "write -P 0xcd 30M 1M"]);
    let now = image_bytes(&img, dir.path());

    let strict = ctx(s3.clone(), &state, ChangedBlocks::Bitmap);
    let e = run(&work(job, "sms-run-00000000000000002", &img), &strict)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ReplicateError::ChangedBlocks { reason, .. } if reason.contains("missing")),
        "{e}"
    );
    let notes = std::sync::Mutex::new(Vec::new());
    let out = replicate::run(&work(job, "sms-run-00000000000000003", &img), &c, &|p| {
        notes.lock().unwrap().push(p.note.clone());
    })
    .await
    .expect("falls back");
    // The reason goes out with the progress reports (the run's statusMessage), from before
    // the disk is read to the last report.
    let notes = notes.into_inner().unwrap();
    let first = notes
        .iter()
        .position(Option::is_some)
        .expect("a report with the reason");
    assert!(
        notes[first..].iter().all(|n| n.as_deref().is_some_and(|n| {
            n.contains("disk 0: changes found by reading the whole disk") && n.contains(&r1)
        })),
        "{notes:?}"
    );
    match &out.disks[0].changes {
        Some(Changes::Compare {
            fallback: Some(reason),
        }) => assert!(
            reason.contains(&r1) && reason.contains("missing"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(out.manifest.disks[0].changed_blocks, Some(3));
    assert!(applied(&s3, &seed, &out, dir.path()).await == now);
    commit_run(&state, job, "sms-run-00000000000000003").unwrap();

    // A process holding the image open for writing (as a running VM would).
    let sock = dir.path().join("holder.sock");
    let holder = Holder(
        Command::new("qemu-nbd")
            .args(["--persistent", "-f", "qcow2", "-k", p(&sock), p(&img)])
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-nbd runs"),
    );
    until(Duration::from_secs(20), Duration::from_millis(20), || {
        sock.exists().then_some(())
    })
    .expect("qemu-nbd holds the image");
    let out = run(&work(job, "sms-run-00000000000000004", &img), &c)
        .await
        .expect("falls back");
    match &out.disks[0].changes {
        Some(Changes::Compare {
            fallback: Some(reason),
        }) => assert!(reason.contains("in use"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(out.manifest.disks[0].changed_blocks, Some(0));
    drop(holder);
}

/// A run that fails after reading the dirty blocks confirms nothing and removes no bitmap:
/// the next run reads the same bitmap, which holds the failed run's changes and the later
/// ones, and its delta is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_the_bitmap() {
    let Some(moto) = Moto::start() else { return };
    let s3 = moto.bucket("staging").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut c = ctx(s3.clone(), &state, ChangedBlocks::Auto);
    let job = "sms-job-000000000000000b3";
    let (img, seed) = seeded(&s3, dir.path(), &c, job).await;
    // 12 MiB changed: the delta needs three 5 MiB parts, and the run stops after the first.
    change(&img, &["write -P 0x77 8M 12M"]);
    c.options.fail_after_parts = Some(1);
    let e = run(&work(job, "sms-run-00000000000000002", &img), &c)
        .await
        .unwrap_err();
    assert!(matches!(e, ReplicateError::Interrupted { .. }), "{e}");
    let r1 = bitmap_name(job, "sms-run-00000000000000001");
    assert!(bitmaps(&img).contains(&r1));

    c.options.fail_after_parts = None;
    change(&img, &["write -P 0x78 40M 512k"]);
    let now = image_bytes(&img, dir.path());
    let out = run(&work(job, "sms-run-00000000000000003", &img), &c)
        .await
        .expect("next run");
    assert!(
        matches!(&out.disks[0].changes, Some(Changes::Bitmap { bitmap, .. }) if *bitmap == r1),
        "{:?}",
        out.disks[0].changes
    );
    assert_eq!(out.manifest.disks[0].changed_blocks, Some(25));
    assert!(applied(&s3, &seed, &out, dir.path()).await == now);
    // Confirming run 3 removes run 1's bitmap and the failed run 2's.
    commit_run(&state, job, "sms-run-00000000000000003").unwrap();
    assert_eq!(
        bitmaps(&img),
        vec![bitmap_name(job, "sms-run-00000000000000003")]
    );
}
