//! Replication runs end to end against moto: seeds, incrementals, commit semantics, resume
//! after an interruption, the delta size limit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tern_connector::replicate::{
    self, commit_run, DiskSource, Manifest, ObjectKind, Progress, ReplicateContext, ReplicateError,
    ReplicateOptions, ReplicationWork, RetryPolicy, Stage, Staging,
};
use tern_disk::{delta, OpenOptions};

use crate::support::*;

const MIB: u64 = 1 << 20;

fn work(job: &str, run: &str, disks: Vec<DiskSource>) -> ReplicationWork {
    ReplicationWork {
        job_id: job.into(),
        run_id: run.into(),
        server_id: "s-0123456789abcdef0".into(),
        disks,
        staging: Staging {
            bucket: "staging".into(),
            prefix: "runs".into(),
        },
        seed: false,
    }
}

fn file(path: &Path) -> DiskSource {
    DiskSource::File {
        path: path.to_path_buf(),
        format: None,
        backing_chain: Vec::new(),
    }
}

fn ctx(moto: &Moto, s3: aws_sdk_s3::Client, state: &Path) -> ReplicateContext {
    let _ = moto;
    ReplicateContext {
        s3,
        state_dir: state.to_path_buf(),
        options: ReplicateOptions {
            part_size: 5 * MIB,
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: std::time::Duration::from_millis(10),
                max_delay: std::time::Duration::from_millis(50),
            },
            ..ReplicateOptions::default()
        },
    }
}

/// Runs and collects the progress reports.
async fn run_collect(
    w: &ReplicationWork,
    c: &ReplicateContext,
) -> (Result<replicate::RunOutcome, ReplicateError>, Vec<Progress>) {
    let seen = Mutex::new(Vec::new());
    let r = replicate::run(w, c, &|p| seen.lock().unwrap().push(p)).await;
    (r, seen.into_inner().unwrap())
}

fn check_progress(events: &[Progress], total: u64) {
    assert_eq!(events.first().map(|p| p.stage), Some(Stage::Preparing));
    let last = events.last().unwrap();
    assert_eq!(last.stage, Stage::Completed);
    assert_eq!(last.percent, 100.0);
    assert_eq!(last.bytes_done, total);
    assert_eq!(last.bytes_total, Some(total));
    assert!(events.iter().any(|p| p.stage == Stage::Uploading));
    for w in events.windows(2) {
        assert!(
            w[0].bytes_done <= w[1].bytes_done,
            "bytes go backwards: {w:?}"
        );
        assert!(
            w[0].percent <= w[1].percent,
            "percent goes backwards: {w:?}"
        );
    }
}

async fn manifest(s3: &aws_sdk_s3::Client, key: &str) -> Manifest {
    serde_json::from_slice(&get(s3, "staging", key).await).expect("manifest parses")
}

/// Seed from a qcow2, check the VMDK against the source with qemu-img and the manifest; then
/// change blocks and run incrementally: the delta applied onto the seed gives the new disk.
/// A run that is not confirmed does not move the base of the next delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_then_incremental_runs() {
    let Some(moto) = Moto::start() else { return };
    let s3 = moto.bucket("staging").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let c = ctx(&moto, s3.clone(), &state);
    let raw = dir.path().join("src.raw");
    let size = 48 * MIB;
    let mut data = make_raw(&raw, size, 1);
    let qcow = dir.path().join("src.qcow2");
    convert(&raw, &qcow, "qcow2", &[]);

    // Seed.
    let job = "sms-job-0000000000000000a";
    let w1 = work(job, "sms-run-00000000000000001", vec![file(&qcow)]);
    let (r, events) = run_collect(&w1, &c).await;
    let out = r.expect("seed run");
    let log = moto.log.take();
    let m = &out.manifest;
    assert_eq!(
        out.manifest_key,
        format!("runs/{job}/sms-run-00000000000000001/manifest.json")
    );
    assert_eq!(manifest(&s3, &out.manifest_key).await, *m);
    assert_eq!(
        (m.job_id.as_str(), m.server_id.as_str()),
        (job, "s-0123456789abcdef0")
    );
    let d = &m.disks[0];
    assert_eq!(d.kind, ObjectKind::SeedVmdk);
    assert_eq!(
        d.key,
        format!("runs/{job}/sms-run-00000000000000001/disk-0.vmdk")
    );
    assert_eq!((d.source_format.as_str(), d.virtual_size), ("qcow2", size));
    assert!(
        d.parts >= 2,
        "the test disk should need several parts, got {}",
        d.parts
    );
    let vmdk = get(&s3, "staging", &d.key).await;
    assert_eq!(vmdk.len() as u64, d.size);
    assert_eq!(sha256_hex(&vmdk), d.sha256);
    assert_eq!(d.bytes_uploaded, d.size);
    let seed_file = write(dir.path(), "seed.vmdk", &vmdk);
    qemu_img(&[
        "compare",
        "-f",
        "vmdk",
        "-F",
        "qcow2",
        p(&seed_file),
        p(&qcow),
    ]);
    check_progress(&events, d.size);
    // The manifest is the last write of the run, after the upload's completion.
    let writes: Vec<_> = log
        .iter()
        .filter(|r| r.method != "GET" && r.method != "HEAD")
        .collect();
    let last = writes.last().unwrap();
    assert!(
        last.method == "PUT" && last.uri.contains("/manifest.json?"),
        "{last:?}"
    );
    let complete = writes
        .iter()
        .position(|r| r.method == "POST" && r.uri.contains("uploadId="))
        .expect("CompleteMultipartUpload was sent");
    assert_eq!(complete, writes.len() - 2, "{writes:?}");

    // Not confirmed yet: the next run would still be a seed.
    assert!(!state.join("jobs").join(job).join("disk-0.map").exists());
    commit_run(&state, job, "sms-run-00000000000000001").expect("commit");
    commit_run(&state, job, "sms-run-00000000000000001").expect("commit is idempotent");
    let kept = std::fs::read(state.join("jobs").join(job).join("disk-0.map")).unwrap();

    // Incremental: 5 blocks rewritten, 1 data block zeroed.
    let nonzero_block = (20..size / BLOCK)
        .find(|b| {
            let s = (b * BLOCK) as usize;
            ![40, 60, 95].contains(b) && data[s..s + BLOCK as usize].iter().any(|&x| x != 0)
        })
        .expect("a block with data");
    change_blocks(&mut data, &[3, 17, 18, 40, 95], &[nonzero_block], 2);
    std::fs::write(&raw, &data).unwrap();
    convert(&raw, &qcow, "qcow2", &[]);
    let w2 = work(job, "sms-run-00000000000000002", vec![file(&qcow)]);
    let (r, events) = run_collect(&w2, &c).await;
    let out2 = r.expect("incremental run");
    let log = moto.log.take();
    let d2 = &out2.manifest.disks[0];
    assert_eq!(d2.kind, ObjectKind::Delta);
    assert_eq!(
        d2.key,
        format!("runs/{job}/sms-run-00000000000000002/disk-0.delta")
    );
    assert_eq!(d2.base_run_id.as_deref(), Some("sms-run-00000000000000001"));
    assert_eq!(d2.changed_blocks, Some(6));
    assert_eq!(d2.zero_blocks, Some(1));
    assert_eq!(d2.data_bytes, Some(5 * BLOCK));
    check_progress(&events, d2.size);
    let uploaded: u64 = log
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.body_len)
        .sum();
    let manifest_len = get(&s3, "staging", &out2.manifest_key).await.len() as u64;
    assert!(
        uploaded <= 5 * BLOCK + 5 * BLOCK / 100 + manifest_len,
        "uploaded {uploaded} bytes for 5 changed blocks"
    );
    let delta_bytes = get(&s3, "staging", &d2.key).await;
    assert_eq!(sha256_hex(&delta_bytes), d2.sha256);
    let base = tern_disk::open(&seed_file, &OpenOptions::default()).unwrap();
    let mut reader = delta::DeltaReader::new(std::io::Cursor::new(delta_bytes)).unwrap();
    let applied = dir.path().join("applied.raw");
    delta::apply(&*base, &mut reader, &applied, &tern_disk::no_progress).unwrap();
    assert!(
        std::fs::read(&applied).unwrap() == data,
        "seed + delta differs from the new disk"
    );
    // The map only moves on confirmation.
    assert_eq!(
        std::fs::read(state.join("jobs").join(job).join("disk-0.map")).unwrap(),
        kept
    );

    // Run 3 is never confirmed (its import failed, say); run 4's delta is still relative to
    // run 1 and carries the same changes.
    change_blocks(&mut data, &[60], &[], 3);
    std::fs::write(&raw, &data).unwrap();
    convert(&raw, &qcow, "qcow2", &[]);
    let w3 = work(job, "sms-run-00000000000000003", vec![file(&qcow)]);
    let d3 = run_collect(&w3, &c).await.0.expect("run 3").manifest.disks[0].clone();
    let w4 = work(job, "sms-run-00000000000000004", vec![file(&qcow)]);
    let d4 = run_collect(&w4, &c).await.0.expect("run 4").manifest.disks[0].clone();
    assert_eq!(d4.base_run_id.as_deref(), Some("sms-run-00000000000000001"));
    assert_eq!((d3.changed_blocks, d4.changed_blocks), (Some(7), Some(7)));
    assert_eq!(d3.sha256, d4.sha256, "the delta writer is deterministic");
    // Confirming run 4 moves the base: run 5 with no changes has an empty delta.
    commit_run(&state, job, "sms-run-00000000000000004").unwrap();
    let e = commit_run(&state, job, "sms-run-00000000000000009").unwrap_err();
    assert!(matches!(e, ReplicateError::UnknownRun { .. }), "{e}");
    let w5 = work(job, "sms-run-00000000000000005", vec![file(&qcow)]);
    let d5 = run_collect(&w5, &c).await.0.expect("run 5").manifest.disks[0].clone();
    assert_eq!(d5.base_run_id.as_deref(), Some("sms-run-00000000000000004"));
    assert_eq!(d5.changed_blocks, Some(0));
    // A run that was confirmed cannot run again.
    let e = run_collect(&w4, &c).await.0.unwrap_err();
    assert!(matches!(e, ReplicateError::AlreadyCommitted { .. }), "{e}");
    // seed = true uploads in full even with a kept map.
    let mut w6 = work(job, "sms-run-00000000000000006", vec![file(&qcow)]);
    w6.seed = true;
    let d6 = run_collect(&w6, &c).await.0.expect("run 6").manifest.disks[0].clone();
    assert_eq!(d6.kind, ObjectKind::SeedVmdk);
}

fn local_vmdk(src: &Path) -> Vec<u8> {
    let disk = tern_disk::open(src, &OpenOptions::default()).unwrap();
    let mut out = Vec::new();
    tern_disk::write::write_vmdk_stream(&*disk, &mut out, "disk-0.vmdk", &tern_disk::no_progress)
        .unwrap();
    out
}

fn upload_record(state: &Path, job: &str, run: &str) -> serde_json::Value {
    let path = state.join("jobs").join(job).join(run).join("upload-0.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A seed interrupted after 2 parts resumes: the rerun sends only the remaining parts and the
/// object is byte for byte the one an uninterrupted upload gives. A rerun after the source
/// changed notices the difference and starts that disk's upload over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_upload_resumes() {
    let Some(moto) = Moto::start() else { return };
    let s3 = moto.bucket("staging").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let raw = dir.path().join("src.raw");
    let mut data = make_raw(&raw, 40 * MIB, 7);
    let vmdk = dir.path().join("src.vmdk");
    convert(&raw, &vmdk, "vmdk", &[]);

    // The writer is deterministic: what resume relies on.
    let expected = local_vmdk(&vmdk);
    assert!(
        expected == local_vmdk(&vmdk),
        "two VMDK streams of one disk differ"
    );
    let parts = (expected.len() as u64).div_ceil(5 * MIB);
    assert!(parts >= 4, "want at least 4 parts, got {parts}");

    let job = "sms-job-0000000000000000b";
    let run = "sms-run-00000000000000001";
    let w = work(job, run, vec![file(&vmdk)]);
    let mut c = ctx(&moto, s3.clone(), &state);
    c.options.fail_after_parts = Some(2);
    let e = run_collect(&w, &c).await.0.unwrap_err();
    assert!(
        matches!(e, ReplicateError::Interrupted { parts_sent: 2 }),
        "{e}"
    );
    let log = moto.log.take();
    assert_eq!(log.iter().filter(|r| r.is_upload_part()).count(), 2);
    assert!(
        !log.iter().any(|r| r.uri.contains("manifest.json")),
        "no manifest after a failure"
    );
    let rec = upload_record(&state, job, run);
    assert_eq!(rec["parts"].as_array().unwrap().len(), 2);

    c.options.fail_after_parts = None;
    let (r, events) = run_collect(&w, &c).await;
    let out = r.expect("resumed run");
    let log = moto.log.take();
    let sent = log.iter().filter(|r| r.is_upload_part()).count() as u64;
    assert_eq!(
        sent,
        parts - 2,
        "the rerun sends only the parts S3 does not have"
    );
    assert!(
        log.iter()
            .any(|r| r.method == "GET" && r.uri.contains("uploadId=")),
        "ListParts"
    );
    assert!(
        !log.iter()
            .any(|r| r.method == "POST" && r.uri.contains("uploads")),
        "no new upload"
    );
    assert_eq!(
        (out.disks[0].parts_sent, out.disks[0].parts_skipped),
        (parts - 2, 2)
    );
    let d = &out.manifest.disks[0];
    let got = get(&s3, "staging", &d.key).await;
    assert!(
        got == expected,
        "the resumed object differs from a straight upload"
    );
    assert_eq!(
        d.bytes_uploaded, d.size,
        "each byte went over the wire once"
    );
    check_progress(&events, d.size);
    let skipped_done = events
        .iter()
        .find(|p| p.stage == Stage::Uploading)
        .expect("an upload event")
        .bytes_done;
    assert_eq!(skipped_done, 5 * MIB, "a skipped part counts as done");

    // Interrupt run 2 of another job, then change the disk before resuming.
    let job2 = "sms-job-0000000000000000c";
    let w2 = work(job2, run, vec![file(&vmdk)]);
    c.options.fail_after_parts = Some(1);
    run_collect(&w2, &c).await.0.unwrap_err();
    let first_upload = upload_record(&state, job2, run)["uploadId"].clone();
    change_blocks(&mut data, &[0, 1], &[], 9);
    std::fs::write(&raw, &data).unwrap();
    convert(&raw, &vmdk, "vmdk", &[]);
    moto.log.take();
    c.options.fail_after_parts = None;
    let out = run_collect(&w2, &c).await.0.expect("restarted run");
    assert_eq!(out.disks[0].parts_skipped, 0);
    let got = get(&s3, "staging", &out.manifest.disks[0].key).await;
    assert!(
        got == local_vmdk(&vmdk),
        "the restarted object is not the changed disk"
    );
    assert_ne!(upload_record(&state, job2, run)["uploadId"], first_upload);
    let uploads = s3
        .list_multipart_uploads()
        .bucket("staging")
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "the stale upload was aborted: {uploads:?}"
    );
}

/// A delta larger than max_delta_bytes fails the run with advice, leaves no upload behind,
/// and keeps the map of the last good run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_over_the_limit_fails_with_advice() {
    let Some(moto) = Moto::start() else { return };
    let s3 = moto.bucket("staging").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let raw = dir.path().join("src.raw");
    let mut data = make_raw(&raw, 24 * MIB, 11);
    let mut c = ctx(&moto, s3.clone(), &state);
    let job = "sms-job-0000000000000000d";
    let w1 = work(job, "sms-run-00000000000000001", vec![file(&raw)]);
    run_collect(&w1, &c).await.0.expect("seed");
    commit_run(&state, job, "sms-run-00000000000000001").unwrap();
    let kept = std::fs::read(state.join("jobs").join(job).join("disk-0.map")).unwrap();

    let blocks: Vec<u64> = (0..24).collect();
    change_blocks(&mut data, &blocks, &[], 12);
    std::fs::write(&raw, &data).unwrap();
    c.options.max_delta_bytes = 6 * MIB;
    let w2 = work(job, "sms-run-00000000000000002", vec![file(&raw)]);
    let e = run_collect(&w2, &c).await.0.unwrap_err();
    assert!(
        matches!(e, ReplicateError::DeltaTooLarge { index: 0, limit } if limit == 6 * MIB),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("max_delta_bytes") && msg.contains("seed"),
        "{msg}"
    );
    let uploads = s3
        .list_multipart_uploads()
        .bucket("staging")
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{uploads:?}");
    let listed = s3
        .list_objects_v2()
        .bucket("staging")
        .prefix(format!("runs/{job}/sms-run-00000000000000002/"))
        .send()
        .await
        .unwrap();
    assert!(listed.contents().is_empty(), "{listed:?}");
    assert_eq!(
        std::fs::read(state.join("jobs").join(job).join("disk-0.map")).unwrap(),
        kept
    );
    // Raising the limit lets the same run through; interrupted after one part, the delta
    // resumes like a seed does (the delta writer regenerates the same bytes).
    c.options.max_delta_bytes = 64 * MIB;
    c.options.fail_after_parts = Some(1);
    let e = run_collect(&w2, &c).await.0.unwrap_err();
    assert!(
        matches!(e, ReplicateError::Interrupted { parts_sent: 1 }),
        "{e}"
    );
    c.options.fail_after_parts = None;
    moto.log.take();
    let out = run_collect(&w2, &c).await.0.expect("within the limit");
    let d = &out.manifest.disks[0];
    assert_eq!(d.changed_blocks, Some(24));
    assert_eq!(out.disks[0].parts_skipped, 1);
    let sent = moto
        .log
        .take()
        .iter()
        .filter(|r| r.is_upload_part())
        .count() as u32;
    assert_eq!(sent, d.parts - 1);
    let base = tern_disk::open(&raw, &OpenOptions::default()).unwrap();
    let mut local = Vec::new();
    let old = tern_disk::blockmap::BlockMap::read_from(&kept[..]).unwrap();
    delta::create(&old, &*base, &mut local, &tern_disk::no_progress).unwrap();
    assert!(
        get(&s3, "staging", &d.key).await == local,
        "the resumed delta differs"
    );
}

/// Bad work and options are refused before anything is uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_work_is_refused_up_front() {
    let Some(moto) = Moto::start() else { return };
    let s3 = moto.bucket("staging").await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = ctx(&moto, s3, dir.path());
    let missing = PathBuf::from("/nonexistent/disk.qcow2");
    let e = run_collect(&work("j", "r", vec![file(&missing)]), &c)
        .await
        .0
        .unwrap_err();
    assert!(matches!(e, ReplicateError::Disk { index: 0, .. }), "{e}");
    let e = run_collect(&work("../j", "r", vec![file(&missing)]), &c)
        .await
        .0
        .unwrap_err();
    assert!(matches!(e, ReplicateError::InvalidWork(_)), "{e}");
    c.options.part_size = MIB;
    let e = run_collect(&work("j", "r", vec![file(&missing)]), &c)
        .await
        .0
        .unwrap_err();
    assert!(matches!(e, ReplicateError::InvalidOptions(_)), "{e}");
    assert!(moto.log.take().is_empty(), "nothing was sent");
    // A bucket that does not exist is a permanent error: not retried.
    c.options.part_size = 5 * MIB;
    let raw = dir.path().join("small.raw");
    make_raw(&raw, 2 * MIB, 3);
    let mut w = work("j", "r", vec![file(&raw)]);
    w.staging.bucket = "no-such-bucket".into();
    let e = run_collect(&w, &c).await.0.unwrap_err();
    assert!(
        matches!(
            &e,
            ReplicateError::S3 {
                retryable: false,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(moto.log.take().len(), 1, "a permanent error is not retried");
}

/// A connection that fails during an UploadPart is retried with backoff; the object is still
/// right, and only the failed part went out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried() {
    let Some(moto) = Moto::start() else { return };
    moto.bucket("staging").await;
    let s3 = moto.client_with_broken_parts(&[2, 3]);
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    make_raw(&raw, 24 * MIB, 31);
    let c = ctx(&moto, s3.clone(), &dir.path().join("state"));
    let w = work(
        "sms-job-0000000000000000f",
        "sms-run-00000000000000001",
        vec![file(&raw)],
    );
    let out = run_collect(&w, &c)
        .await
        .0
        .expect("retried through the failures");
    let d = &out.manifest.disks[0];
    let log = moto.log.take();
    let attempts = log.iter().filter(|r| r.is_upload_part()).count() as u32;
    assert_eq!(
        attempts,
        d.parts + 2,
        "two failed attempts, each retried once"
    );
    assert!(get(&s3, "staging", &d.key).await == local_vmdk(&raw));
}

/// A CompleteMultipartUpload that fails with an error document in a 200 answer (what a full
/// `tern serve` sends) is retried with backoff, not given up at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_completes_in_a_200_answer_are_retried() {
    let Some(moto) = Moto::start() else { return };
    moto.bucket("staging").await;
    let s3 = moto.client_with_failing_completes(2);
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    make_raw(&raw, 12 * MIB, 37);
    let c = ctx(&moto, s3.clone(), &dir.path().join("state"));
    let w = work(
        "sms-job-0000000000000000f",
        "sms-run-00000000000000002",
        vec![file(&raw)],
    );
    let out = run_collect(&w, &c)
        .await
        .0
        .expect("retried through the failed completes");
    let log = moto.log.take();
    let completes = log
        .iter()
        .filter(|r| r.method == "POST" && r.uri.contains("uploadId="))
        .count();
    assert_eq!(
        completes, 3,
        "two failed completes, then one that worked: {log:?}"
    );
    let d = &out.manifest.disks[0];
    assert!(get(&s3, "staging", &d.key).await == local_vmdk(&raw));
}

/// The bandwidth cap holds the average rate. The limiter meters whole parts: a part starts once
/// the bucket (capacity R, full at the start) holds min(part, R) bytes, and the rest of it is
/// debt the next part pays. So the last part starts no sooner than
/// (S - last - R + min(last, R)) / R seconds after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_cap_limits_the_rate() {
    let Some(moto) = Moto::start() else { return };
    let s3 = moto.bucket("staging").await;
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    make_raw(&raw, 24 * MIB, 41);
    let mut c = ctx(&moto, s3, &dir.path().join("state"));
    let rate = 2 * MIB;
    c.options.bandwidth_limit = Some(rate);
    let w = work(
        "sms-job-00000000000000010",
        "sms-run-00000000000000001",
        vec![file(&raw)],
    );
    let started = std::time::Instant::now();
    let out = run_collect(&w, &c).await.0.expect("capped run");
    let took = started.elapsed().as_secs_f64();
    let size = out.manifest.disks[0].size;
    let part = c.options.part_size;
    let last = match size % part {
        0 => part,
        r => r,
    };
    let floor = (size - last - rate + last.min(rate)) as f64 / rate as f64;
    assert!(
        size > 2 * rate,
        "the object ({size} bytes) must outlast the bucket"
    );
    assert!(
        took >= floor,
        "{size} bytes in {took:.2} s at a {rate} B/s cap"
    );
}
