//! A data directory on a filesystem that fills up in the middle of an incremental run: the
//! server reports the failure clearly (a 503 TemporarilyUnavailableException on the API, the
//! cause in its log), corrupts nothing, keeps running, and the run completes once space
//! returns: once while the connector uploads (its CompleteMultipartUpload fails and is retried)
//! and once while the States engine commits a task result (the commit fails and is retried).
//! The filesystem is a small tmpfs (the test runs as root, as CI does).

use tern_test_support::tmpfs::Tmpfs;

use crate::harness::{integrity, Lab};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_mid_run_then_space_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mount = Tmpfs::mount(&dir.path().join("fs"), 128);
    let data = mount.0.join("data");
    let mut lab = Lab::start_in(dir, data.clone(), vec![("full".into(), false)]).await;

    let (_, seed) = lab.start_seed(0).await;
    lab.check_run(0, "disk-full seed", &seed, None).await;

    // Fill the disk while the incremental run uploads.
    let blocks = lab.change_disk(0);
    let before = lab.sent();
    let run_id = lab.start_incremental(0).await;
    lab.wait_sent(before, 256 * 1024).await;
    let filler = mount.fill();

    // The failure is visible and clear, and nothing is corrupted meanwhile.
    // Whichever hits the full disk first says so: a staged part's write (ENOSPC) or a store
    // commit (SQLite's "database or disk is full").
    let line = lab
        .wait_log(&["No space left on device", "database or disk is full"], 60)
        .await;
    eprintln!("disk full, the server logs: {line}");
    let err = lab
        .client()
        .update_replication_job()
        .replication_job_id(lab.job_id(0))
        .description("written while the disk is full")
        .send()
        .await;
    match err {
        Ok(_) => eprintln!("UpdateReplicationJob still fitted in the database's free pages"),
        Err(e) => {
            let service = e.into_service_error();
            let code = tern_acceptance::aws_sdk_sms::error::ProvideErrorMetadata::code(&service);
            assert_eq!(
                code,
                Some("TemporarilyUnavailableException"),
                "a write on a full disk: {service:?}"
            );
        }
    }
    assert!(
        lab.server_alive(),
        "the server exited when the disk filled up"
    );
    for db in ["tern.db", "images.db", "states.db"] {
        assert_eq!(integrity(&data.join(db)), "ok", "{db} on a full disk");
    }

    // Space returns: the run goes on and completes with the right image.
    std::fs::remove_file(&filler).expect("remove filler");
    lab.check_run(0, "disk-full incremental", &run_id, None)
        .await;
    assert!(blocks > 0);

    // Another incremental run: the disk fills while the server holds the run right after the
    // delta was applied, so the States engine's commit of that task's result meets the full
    // disk. The engine retries the commit; the run completes once space returns.
    lab.change_disk(0);
    lab.restart_with_pause("apply-delta").await;
    let run_id = lab.start_incremental(0).await;
    lab.wait_held("apply-delta", &run_id).await;
    let filler = mount.fill();
    lab.release("apply-delta");
    let line = lab.wait_log(&["states: commit failed"], 60).await;
    eprintln!("disk full, the engine logs: {line}");
    assert!(
        lab.server_alive(),
        "the server exited when the disk filled up"
    );
    for db in ["tern.db", "images.db", "states.db"] {
        assert_eq!(integrity(&data.join(db)), "ok", "{db} on a full disk");
    }
    std::fs::remove_file(&filler).expect("remove filler");
    lab.check_run(0, "disk-full engine commit", &run_id, None)
        .await;
    assert!(
        lab.server_alive(),
        "the server exited after the disk filled up"
    );
    lab.final_checks().await;
}
