//! DeleteReplicationJob all the way down (R10, issue 11 item 6), through `aws-sdk-sms` against
//! `tern serve` with the real connector: the run in progress is stopped, its work withdrawn,
//! its staged objects and multipart uploads removed, no snapshot or AMI of it left, and the
//! AMIs of completed runs kept.

use std::time::Duration;

use aws_sdk_sms::types::ReplicationRunState;
use aws_smithy_types::DateTime;
use serde_json::json;
use tern_acceptance::{connector_target, now_secs, Config, TestServer};
use tern_local::images::ImageCatalog;
use tern_test_support::poll::until_async;

use super::replication::{
    clock_secs, create_job_at, events, inventory, lab_on, manual_clock, poll_replicate, run_state,
    runs_of, state_changes, upload, wait_done, Rng,
};

/// Objects and open multipart uploads under `prefix` in the staging bucket, as S3 lists them.
async fn staged(s: &TestServer, bucket: &str, prefix: &str) -> (Vec<String>, Vec<String>) {
    let s3 = s.s3();
    let objects = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(String::from))
        .collect();
    let uploads = s3
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .uploads()
        .iter()
        .filter_map(|u| u.key().map(String::from))
        .collect();
    (objects, uploads)
}

#[tokio::test]
async fn deleting_a_job_mid_upload_stops_its_run_all_the_way_down() {
    let s = TestServer::start().await;
    // 12 MiB of random data: the seed VMDK takes three 5 MiB parts.
    let disk = s.scratch().join("app-disk0.raw");
    let mut data = vec![0u8; 12 << 20];
    Rng(21).fill(&mut data);
    std::fs::write(&disk, &data).unwrap();
    let mut agent = s.connector_agent("lab", &inventory(&disk)).await;
    agent.run_once().await.unwrap();
    s.client.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();
    let connector_id = agent.connector_id().unwrap().to_string();
    let server_id = s.client.get_servers().send().await.unwrap().server_list()[0]
        .server_id()
        .unwrap()
        .to_string();
    let job_id = s
        .client
        .create_replication_job()
        .server_id(&server_id)
        .seed_replication_time(DateTime::from_secs(now_secs()))
        .frequency(12)
        .number_of_recent_amis_to_keep(0)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned();

    // The first run completes at full speed: its AMI must survive the delete.
    let uploaded = until_async(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            s.tick().await;
            let report = agent.poll_once().await.unwrap();
            (report.replication.replications_completed == 1).then_some(())
        },
    )
    .await;
    assert!(
        uploaded.is_some(),
        "the first run was not uploaded within 30 s"
    );
    let first_run = runs_of(&s, &job_id).await[0]
        .replication_run_id()
        .unwrap()
        .to_owned();
    let (state, message, first_ami) = wait_done(&s, &job_id, &first_run).await;
    assert_eq!(state, ReplicationRunState::Completed, "{message:?}");
    let first_ami = first_ami.expect("the first run's AMI");
    let catalog = ImageCatalog::open(s.data_dir()).unwrap();
    let snapshots_before = catalog.list_snapshot_ids().unwrap();
    assert!(!snapshots_before.is_empty());

    // The second run uploads slowly (1 MB/s), so that the delete meets it mid-upload.
    Rng(22).fill(&mut data);
    std::fs::write(&disk, &data).unwrap();
    let config_path = s.scratch().join("lab").join("connector.toml");
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str("\n[staging]\nbandwidth_limit_mbps = 8\npart_size_mib = 5\n");
    std::fs::write(&config_path, text).unwrap();
    let mut slow =
        tern_connector::Agent::new(tern_connector::ConnectorConfig::load(&config_path).unwrap())
            .await
            .unwrap();
    slow.register().await.unwrap();
    let second_run = s
        .client
        .start_on_demand_replication_run()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap()
        .replication_run_id()
        .unwrap()
        .to_owned();
    let staging = s.replication().settings().staging();
    let prefix = staging.run_prefix(&job_id, &second_run);
    s.tick().await;
    let uploading = tokio::spawn(async move { slow.poll_once().await });
    let mid_upload = until_async(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            s.tick().await;
            let (_, uploads) = staged(&s, &staging.bucket, &prefix).await;
            (!uploads.is_empty()).then_some(uploads)
        },
    )
    .await;
    assert!(
        mid_upload.is_some(),
        "no multipart upload of the second run began"
    );

    s.client
        .delete_replication_job()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();

    // The connector learns of it through its next progress report and gives the upload up.
    let report = tokio::time::timeout(Duration::from_secs(60), uploading)
        .await
        .expect("the connector stopped uploading within 60 s")
        .unwrap()
        .unwrap();
    assert_eq!(report.replication.replications_cancelled, 1, "{report:?}");
    assert_eq!(report.replication.replications_completed, 0, "{report:?}");
    s.tick().await;

    // No replication work for the job any more: only the request to forget it (its bitmaps
    // and state on the connector's side), handed to a connector that names FORGET_JOB among
    // the kinds it runs; one that names none (an older connector) is not handed it.
    let poll = |kinds: Option<Vec<&str>>| {
        let mut body = json!({ "connectorId": connector_id });
        if let Some(k) = kinds {
            body["kinds"] = json!(k);
        }
        body.to_string()
    };
    let older = s
        .raw(
            Some(&connector_target("PollWork")),
            poll(None).as_bytes(),
            Some(&s.connector()),
        )
        .await
        .json();
    assert!(
        !older.to_string().contains("FORGET_JOB"),
        "an older connector is not handed FORGET_JOB: {older}"
    );
    let polled = s
        .raw(
            Some(&connector_target("PollWork")),
            poll(Some(vec![
                "INVENTORY",
                "REPLICATE",
                "COMMIT_RUN",
                "FORGET_JOB",
                "FUTURE_KIND",
            ]))
            .as_bytes(),
            Some(&s.connector()),
        )
        .await
        .json();
    let for_job: Vec<_> = polled["workItems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["payload"]["jobId"] == job_id.as_str())
        .collect();
    let kinds: Vec<&str> = for_job.iter().filter_map(|w| w["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["FORGET_JOB"],
        "work for the deleted job: {for_job:?}"
    );

    // Nothing of the run left in staging: no object, no open multipart upload.
    let (objects, uploads) = staged(&s, &staging.bucket, &prefix).await;
    assert!(objects.is_empty(), "staged objects left: {objects:?}");
    assert!(uploads.is_empty(), "multipart uploads left: {uploads:?}");

    // The run's execution was stopped, and no snapshot or AMI of it exists; the first AMI stays.
    let engine = s.running_server().replication().unwrap().engine();
    let execution = engine
        .list_executions(None, None)
        .into_iter()
        .find(|e| e.name == second_run)
        .expect("the second run's execution");
    assert_eq!(execution.status.as_str(), "ABORTED", "{execution:?}");
    let images: Vec<String> = catalog
        .list_images()
        .unwrap()
        .into_iter()
        .map(|i| i.image_id)
        .collect();
    assert_eq!(images, vec![first_ami.clone()]);
    assert_eq!(catalog.list_snapshot_ids().unwrap(), snapshots_before);

    // Events as documented: the job's one Deleted event; the cancelled run announces nothing
    // after it started (no Completed, no Failed).
    let deleted: Vec<_> = events(&s)
        .into_iter()
        .filter(|e| e["detail"]["replication-job-id"] == job_id.as_str())
        .filter(|e| e["detail"]["state"] == "Deleted")
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["detail"]["replication-run-id"], "N/A");
    assert_eq!(state_changes(&s, &second_run, "Completed"), 0);
    assert_eq!(state_changes(&s, &second_run, "Failed"), 0);
    assert_eq!(state_changes(&s, &first_run, "Completed"), 1);

    // Deleting again is refused as before and leaves nothing behind either.
    assert!(s
        .client
        .delete_replication_job()
        .replication_job_id(&job_id)
        .send()
        .await
        .is_err());
    s.tick().await;
    assert_eq!(staged(&s, &staging.bucket, &prefix).await, (vec![], vec![]));
    assert_eq!(catalog.list_snapshot_ids().unwrap(), snapshots_before);
}

/// A delete made without its teardown (as the scheduler's and StopAppReplication's deletes
/// are, and as a process that died right after the delete's transaction leaves it) is finished
/// by the scheduler's sweep, which also removes an object completed after the delete, and
/// keeps its record until the work lease has passed.
#[tokio::test]
async fn the_scheduler_sweep_finishes_a_teardown_the_delete_did_not_do() {
    let clock = manual_clock();
    let lab =
        lab_on(TestServer::start_with_clock(Config::default(), Some(clock.clone())).await).await;
    let s = &lab.server;
    let job_id = create_job_at(&lab, 0, clock_secs(&clock), 12).await;
    let up = poll_replicate(s, &lab.connector_id).await;
    let bucket = s.replication().settings().staging().bucket;
    let s3 = s.s3();
    let put = |key: String| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .body(vec![7u8; 4096].into())
                .send()
                .await
                .unwrap();
        }
    };
    put(format!("{}disk-0.vmdk", up.prefix)).await;
    s3.create_multipart_upload()
        .bucket(&bucket)
        .key(format!("{}disk-1.vmdk", up.prefix))
        .send()
        .await
        .unwrap();

    s.replication().service().delete_job(&job_id).await.unwrap();
    let (objects, uploads) = staged(s, &bucket, &up.prefix).await;
    assert_eq!((objects.len(), uploads.len()), (1, 1), "nothing undone yet");

    let first = s.tick().await;
    assert_eq!(staged(s, &bucket, &up.prefix).await, (vec![], vec![]));
    let engine = s.running_server().replication().unwrap().engine();
    let execution = engine
        .list_executions(None, None)
        .into_iter()
        .find(|e| e.name == up.run_id)
        .expect("the run's execution");
    assert_eq!(execution.status.as_str(), "ABORTED", "{execution:?}");
    assert_eq!(
        first.teardowns_finished, 0,
        "kept while a connector may still write"
    );

    // An object a connector completed before it learnt of the delete goes on the next sweep.
    put(format!("{}disk-0.vmdk", up.prefix)).await;
    s.tick().await;
    assert_eq!(staged(s, &bucket, &up.prefix).await, (vec![], vec![]));

    clock.advance(Config::default().work_lease + Duration::from_secs(1));
    assert_eq!(s.tick().await.teardowns_finished, 1);
    assert_eq!(s.tick().await.teardowns_finished, 0, "done once");
}

/// Deleted while its snapshots are being made: the import task started for the run ends, and
/// the sweep deletes the snapshot it made; no image is registered. The engine runs on a clock
/// this test does not move, so the run's WaitForSnapshots does not poll again after its first
/// look, and only the teardown can act on the finished task.
#[tokio::test]
async fn a_job_deleted_during_its_import_leaves_no_snapshot() {
    let clock = manual_clock();
    let lab =
        lab_on(TestServer::start_with_clock(Config::default(), Some(clock.clone())).await).await;
    let s = &lab.server;
    // 48 MiB of random data: an import that takes long enough to be met in progress.
    let mut data = vec![0u8; 48 << 20];
    Rng(31).fill(&mut data);
    std::fs::write(&lab.disk, &data).unwrap();
    let job_id = create_job_at(&lab, 0, clock_secs(&clock), 12).await;
    let up = poll_replicate(s, &lab.connector_id).await;
    upload(s, &up, &lab.disk, None, None).await;
    // "Converting" is set once the run's import tasks are recorded on it.
    let converting = until_async(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            s.tick().await;
            let (state, message, _) = run_state(s, &job_id, &up.run_id).await;
            assert_ne!(
                state,
                ReplicationRunState::Completed,
                "finished before the delete"
            );
            message
                .is_some_and(|m| m.starts_with("Converting"))
                .then_some(())
        },
    )
    .await;
    assert!(converting.is_some(), "the import never started");

    s.client
        .delete_replication_job()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    let runtime = s.running_server().replication().unwrap();
    let images = runtime.images().clone();
    tokio::task::spawn_blocking(move || images.wait_for_tasks())
        .await
        .unwrap();
    s.tick().await;

    let catalog = ImageCatalog::open(s.data_dir()).unwrap();
    assert_eq!(catalog.list_snapshot_ids().unwrap(), Vec::<String>::new());
    assert!(catalog.list_images().unwrap().is_empty());
    let execution = runtime
        .engine()
        .list_executions(None, None)
        .into_iter()
        .find(|e| e.name == up.run_id)
        .expect("the run's execution");
    assert_eq!(execution.status.as_str(), "ABORTED", "{execution:?}");
    // Moving the clock lets nothing of the run go on; the teardown ends after the work lease.
    clock.advance(Config::default().work_lease + Duration::from_secs(1));
    assert_eq!(s.tick().await.teardowns_finished, 1);
    assert!(catalog.list_images().unwrap().is_empty());
    assert_eq!(state_changes(s, &up.run_id, "Completed"), 0);
}
