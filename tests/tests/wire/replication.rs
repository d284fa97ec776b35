//! Replication runs through the public surfaces: the connector side is played by this test
//! (PollWork, S3 uploads of real stream-optimized VMDKs and Tern deltas, the manifest last,
//! ReportError), the control plane is the real `tern serve` (States engine on
//! `replication-run.asl.json`, image service, staging endpoint, event bus). The scheduler is
//! stepped with `TestServer::tick`.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_sms::types::{ReplicationJobState, ReplicationRunState};
use aws_smithy_types::DateTime;
use serde_json::{json, Value};
use tern_acceptance::{connector_target, now_secs, Config, TestServer};
use tern_disk::blockmap::{BlockMap, BLOCK_SIZE};
use tern_disk::VirtualDisk;
use tern_local::images::ImageCatalog;
use tern_test_support::poll::until_async;

const DISK_BYTES: u64 = 8 << 20;

/// A small deterministic generator (xorshift): random content without a dependency.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(super) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A raw disk: random data in some blocks, zeros elsewhere.
fn make_disk(path: &Path, seed: u64) {
    let mut rng = Rng(seed);
    let mut data = vec![0u8; DISK_BYTES as usize];
    for block in data.chunks_mut(BLOCK_SIZE as usize) {
        if !rng.next().is_multiple_of(3) {
            rng.fill(block);
        }
    }
    std::fs::write(path, data).unwrap();
}

/// Rewrites two blocks with new data and zeroes one that had data.
fn change_disk(path: &Path, seed: u64) {
    let mut data = std::fs::read(path).unwrap();
    let mut rng = Rng(seed);
    let bs = BLOCK_SIZE as usize;
    for b in [1usize, 7] {
        rng.fill(&mut data[b * bs..(b + 1) * bs]);
    }
    let zeroed = (0..data.len() / bs)
        .find(|b| data[b * bs..(b + 1) * bs].iter().any(|&x| x != 0) && *b != 1 && *b != 7)
        .unwrap();
    data[zeroed * bs..(zeroed + 1) * bs].fill(0);
    std::fs::write(path, data).unwrap();
}

fn open(path: &Path) -> Box<dyn VirtualDisk> {
    tern_disk::open(path, &Default::default()).unwrap()
}

pub(super) fn inventory(disk: &Path) -> String {
    format!(
        "vm_manager_id = \"vc-rep\"\n\n[[vms]]\nid = \"vm-0\"\nname = \"app\"\nos_type = \"LINUX\"\ndisks = [{:?}]\n",
        disk.display().to_string()
    )
}

/// The connector side of one run, played by the test.
pub(super) struct Upload {
    connector_id: String,
    work_id: String,
    job_id: String,
    pub(super) run_id: String,
    seed: bool,
    pub(super) prefix: String,
}

pub(super) async fn poll_replicate(server: &TestServer, connector_id: &str) -> Upload {
    let last = RefCell::new(Value::Null);
    let found = until_async(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            server.tick().await;
            let out = server
                .raw(
                    Some(&connector_target("PollWork")),
                    json!({ "connectorId": connector_id })
                        .to_string()
                        .as_bytes(),
                    Some(&server.connector()),
                )
                .await
                .json();
            if let Some(item) = out["workItems"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|w| w["kind"] == "REPLICATE")
            {
                let p = &item["payload"];
                return Some(Upload {
                    connector_id: connector_id.to_string(),
                    work_id: item["workId"].as_str().unwrap().into(),
                    job_id: p["jobId"].as_str().unwrap().into(),
                    run_id: p["runId"].as_str().unwrap().into(),
                    seed: p["seed"].as_bool().unwrap(),
                    prefix: format!(
                        "{}/{}/{}/",
                        p["staging"]["prefix"].as_str().unwrap(),
                        p["jobId"].as_str().unwrap(),
                        p["runId"].as_str().unwrap()
                    ),
                });
            }
            last.replace(out);
            None
        },
    )
    .await;
    found.unwrap_or_else(|| panic!("no REPLICATE work within 30 s: {}", last.borrow()))
}

async fn put(server: &TestServer, key: &str, body: Vec<u8>) {
    server
        .s3()
        .put_object()
        .bucket("tern-staging")
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutObject {key}: {e:?}"));
}

/// Uploads the disk as the run asks (seed VMDK, or the delta against `map`), then the manifest;
/// returns the new block map and the bytes uploaded (objects and manifest).
pub(super) async fn upload(
    server: &TestServer,
    up: &Upload,
    disk: &Path,
    map: Option<&BlockMap>,
    base_run: Option<&str>,
) -> (BlockMap, u64) {
    let d = open(disk);
    let (kind, key, bytes, new_map) = match (up.seed, map) {
        (true, _) | (false, None) => {
            let mut out = Vec::new();
            tern_disk::write::write_vmdk_stream(
                d.as_ref(),
                &mut out,
                "disk-0.vmdk",
                &tern_disk::no_progress,
            )
            .unwrap();
            let map = BlockMap::compute(d.as_ref(), &tern_disk::no_progress).unwrap();
            ("seed-vmdk", format!("{}disk-0.vmdk", up.prefix), out, map)
        }
        (false, Some(old)) => {
            let mut out = Vec::new();
            let summary =
                tern_disk::delta::create(old, d.as_ref(), &mut out, &tern_disk::no_progress)
                    .unwrap();
            (
                "delta",
                format!("{}disk-0.delta", up.prefix),
                out,
                summary.new_map,
            )
        }
    };
    let size = bytes.len() as u64;
    put(server, &key, bytes).await;
    let manifest = json!({
        "formatVersion": 1,
        "jobId": up.job_id,
        "runId": up.run_id,
        "serverId": "",
        "disks": [{
            "index": 0, "kind": kind, "key": key, "size": size,
            "virtualSize": d.size(), "baseRunId": base_run,
        }],
    })
    .to_string()
    .into_bytes();
    let total = size + manifest.len() as u64;
    put(server, &format!("{}manifest.json", up.prefix), manifest).await;
    let done = server
        .raw(
            Some(&connector_target("CompleteWork")),
            json!({ "connectorId": up.connector_id, "workId": up.work_id })
                .to_string()
                .as_bytes(),
            Some(&server.connector()),
        )
        .await;
    assert_eq!(done.status, 200, "CompleteWork: {:?}", done.json());
    (new_map, total)
}

/// Waits until the run parks in WaitForUpload (its task token is stored), as a connector that
/// takes a while to upload would find it.
async fn wait_for_upload_token(server: &TestServer, job_id: &str, run_id: &str) {
    let waiting = until_async(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            (run_state(server, job_id, run_id).await.1.as_deref()
                == Some("Waiting for the connector to upload"))
            .then_some(())
        },
    )
    .await;
    assert!(
        waiting.is_some(),
        "run {run_id} never waited for its upload"
    );
}

/// The connector reports that it could not upload the run.
async fn report_error(server: &TestServer, up: &Upload, message: &str) {
    let out = server
        .raw(
            Some(&connector_target("ReportError")),
            json!({ "connectorId": up.connector_id, "workId": up.work_id, "message": message })
                .to_string()
                .as_bytes(),
            Some(&server.connector()),
        )
        .await;
    assert_eq!(out.status, 200, "ReportError: {:?}", out.json());
}

pub(super) async fn run_state(
    server: &TestServer,
    job_id: &str,
    run_id: &str,
) -> (ReplicationRunState, Option<String>, Option<String>) {
    let out = server
        .client
        .get_replication_runs()
        .replication_job_id(job_id)
        .send()
        .await
        .unwrap();
    let run = out
        .replication_run_list()
        .iter()
        .find(|r| r.replication_run_id() == Some(run_id))
        .unwrap_or_else(|| panic!("run {run_id} listed"));
    (
        run.state().unwrap().clone(),
        run.status_message().map(String::from),
        run.ami_id().map(String::from),
    )
}

/// Steps the scheduler until the run is no longer in progress.
pub(super) async fn wait_done(
    server: &TestServer,
    job_id: &str,
    run_id: &str,
) -> (ReplicationRunState, Option<String>, Option<String>) {
    wait_until_done(server, None, job_id, run_id).await
}

/// [`wait_done`] on a server whose clock the test moves: the workflow engine runs on that clock,
/// so its Retry backoffs (WaitForSnapshots polls the import) are due only when it moves. Each
/// round moves it by the longest backoff of the run's state machine (10 s).
async fn wait_done_moving(
    server: &TestServer,
    clock: &tern_core::ManualClock,
    job_id: &str,
    run_id: &str,
) -> (ReplicationRunState, Option<String>, Option<String>) {
    wait_until_done(server, Some(clock), job_id, run_id).await
}

async fn wait_until_done(
    server: &TestServer,
    clock: Option<&tern_core::ManualClock>,
    job_id: &str,
    run_id: &str,
) -> (ReplicationRunState, Option<String>, Option<String>) {
    let last = RefCell::new(None);
    let done = until_async(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            server.tick().await;
            let s = run_state(server, job_id, run_id).await;
            if matches!(
                s.0,
                ReplicationRunState::Completed | ReplicationRunState::Failed
            ) {
                return Some(s);
            }
            if let Some(clock) = clock {
                clock.advance(Duration::from_secs(10));
            }
            last.replace(Some(s));
            None
        },
    )
    .await;
    done.unwrap_or_else(|| panic!("run still {:?} after 60 s", last.borrow()))
}

async fn job_state(server: &TestServer, job_id: &str) -> (ReplicationJobState, Option<String>) {
    let out = server
        .client
        .get_replication_jobs()
        .replication_job_id(job_id)
        .send()
        .await
        .unwrap();
    let j = &out.replication_job_list()[0];
    (
        j.state().unwrap().clone(),
        j.status_message().map(String::from),
    )
}

/// The image's root disk, read back from the block store.
pub(super) fn image_disk(server: &TestServer, ami: &str) -> Vec<u8> {
    let catalog = ImageCatalog::open(server.data_dir()).unwrap();
    let image = catalog.describe_image(ami).unwrap();
    assert_eq!(image.block_devices[0].device_name, "/dev/sda1");
    assert!(!image.block_devices[0].delete_on_termination);
    let disk = catalog
        .snapshot_disk(&image.block_devices[0].snapshot_id)
        .unwrap();
    let mut out = vec![0u8; disk.size() as usize];
    disk.read_at(&mut out, 0).unwrap();
    out
}

pub(super) fn events(server: &TestServer) -> Vec<Value> {
    let text = std::fs::read_to_string(server.data_dir().join("events.ndjson")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Transitions of the run into `state`, as announced: events with distinct ids (a repeated
/// publication keeps its id, as EventBridge consumers expect).
pub(super) fn state_changes(server: &TestServer, run_id: &str, state: &str) -> usize {
    let mut ids: Vec<String> = events(server)
        .iter()
        .filter(|e| {
            e["detail-type"] == "Server Migration Job State Change"
                && e["detail"]["replication-run-id"] == run_id
                && e["detail"]["state"] == state
        })
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

pub(super) struct Lab {
    pub(super) server: TestServer,
    agent: tern_connector::Agent,
    pub(super) connector_id: String,
    pub(super) disk: PathBuf,
    server_id: String,
}

async fn lab(config: Config) -> Lab {
    lab_on(TestServer::start_with(config).await).await
}

pub(super) async fn lab_on(server: TestServer) -> Lab {
    let disk = server.scratch().join("app-disk0.raw");
    make_disk(&disk, 7);
    let mut agent = server.connector_agent("lab", &inventory(&disk)).await;
    agent.run_once().await.unwrap();
    server.client.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();
    let connector_id = agent.connector_id().unwrap().to_string();
    let servers = server.client.get_servers().send().await.unwrap();
    let server_id = servers.server_list()[0].server_id().unwrap().to_string();
    Lab {
        server,
        agent,
        connector_id,
        disk,
        server_id,
    }
}

async fn create_job(lab: &Lab, keep: i32) -> String {
    create_job_at(lab, keep, now_secs(), 12).await
}

pub(super) async fn create_job_at(lab: &Lab, keep: i32, seed_secs: i64, frequency: i32) -> String {
    lab.server
        .client
        .create_replication_job()
        .server_id(&lab.server_id)
        .seed_replication_time(DateTime::from_secs(seed_secs))
        .frequency(frequency)
        .number_of_recent_amis_to_keep(keep)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned()
}

async fn on_demand(lab: &Lab, job_id: &str) -> String {
    super::start_run(&lab.server.client, job_id).await
}

#[tokio::test]
async fn seed_then_incremental_runs_make_images_identical_to_the_disk() {
    let lab = lab(Config::default()).await;
    let s = &lab.server;
    let job_id = create_job(&lab, 0).await;

    // The scheduler starts the seed at seedReplicationTime (now).
    let up = poll_replicate(s, &lab.connector_id).await;
    assert_eq!(up.job_id, job_id);
    assert!(up.seed, "the first run is a seed");
    let (map, _) = upload(s, &up, &lab.disk, None, None).await;
    let (state, message, ami) = wait_done(s, &job_id, &up.run_id).await;
    assert_eq!(state, ReplicationRunState::Completed, "{message:?}");
    let ami1 = ami.expect("a completed run has its AMI");
    assert_eq!(image_disk(s, &ami1), std::fs::read(&lab.disk).unwrap());
    let (job, _) = job_state(s, &job_id).await;
    assert_eq!(job, ReplicationJobState::Active);

    // Changed blocks only, applied onto the seed's snapshot.
    change_disk(&lab.disk, 11);
    let run2 = on_demand(&lab, &job_id).await;
    let up2 = poll_replicate(s, &lab.connector_id).await;
    assert_eq!(up2.run_id, run2);
    assert!(!up2.seed, "the second run is incremental");
    let (_, uploaded) = upload(s, &up2, &lab.disk, Some(&map), Some(&up.run_id)).await;
    let changed = 3 * BLOCK_SIZE as u64;
    assert!(
        uploaded <= changed + changed / 100 + 4096,
        "uploaded {uploaded} bytes for {changed} bytes of changed blocks"
    );
    let (state, message, ami) = wait_done(s, &job_id, &run2).await;
    assert_eq!(state, ReplicationRunState::Completed, "{message:?}");
    let ami2 = ami.unwrap();
    assert_ne!(ami1, ami2);
    assert_eq!(image_disk(s, &ami2), std::fs::read(&lab.disk).unwrap());
    // Both images are kept (numberOfRecentAmisToKeep 0 keeps all).
    assert_eq!(
        ImageCatalog::open(s.data_dir())
            .unwrap()
            .list_images()
            .unwrap()
            .len(),
        2
    );

    // Events: one Completed per run, carrying the AMI, with the SMS detail keys.
    s.tick().await;
    s.running_server().events().flush().await;
    let completed: Vec<Value> = events(s)
        .into_iter()
        .filter(|e| {
            e["detail"]["state"] == "Completed" && e["detail"]["replication-run-id"] == run2
        })
        .collect();
    assert_eq!(
        completed.len(),
        1,
        "announced once in one process: {completed:?}"
    );
    let d = &completed[0]["detail"];
    assert_eq!(d["ami-id"], ami2.as_str());
    assert_eq!(d["replication-job-id"], job_id.as_str());
    assert_eq!(d["version"], "1.0");
    assert_eq!(
        completed[0]["source"], "aws.sms",
        "tern serve speaks as SMS did"
    );
    assert_eq!(state_changes(s, &up.run_id, "Active"), 1);
    // The job's own life: announced when created (Pending) and when its first run started.
    for state in ["Pending", "Active"] {
        assert!(
            events(s).iter().any(|e| e["detail"]["state"] == state
                && e["detail"]["replication-job-id"] == job_id.as_str()
                && e["detail"]["replication-run-id"] == "N/A"),
            "a job {state} event"
        );
    }
}

#[tokio::test]
async fn a_repeated_manifest_notification_changes_nothing() {
    let lab = lab(Config::default()).await;
    let s = &lab.server;
    let job_id = create_job(&lab, 0).await;
    let up = poll_replicate(s, &lab.connector_id).await;
    upload(s, &up, &lab.disk, None, None).await;
    let (state, _, ami) = wait_done(s, &job_id, &up.run_id).await;
    assert_eq!(state, ReplicationRunState::Completed);

    // The same notification again, twice (S3 and EventBridge deliver at least once).
    let manifest = s
        .s3()
        .get_object()
        .bucket("tern-staging")
        .key(format!("{}manifest.json", up.prefix))
        .send()
        .await;
    // The run's staged objects are deleted once its image exists; a replayed notification
    // is made through the handler directly, as a duplicate delivery would arrive.
    assert!(
        manifest.is_err(),
        "staged objects are removed after the import"
    );
    for _ in 0..2 {
        let outcome = s
            .replication()
            .upload_complete("tern-staging", &format!("{}manifest.json", up.prefix))
            .await
            .unwrap();
        assert!(
            matches!(outcome, tern_core::replication::UploadOutcome::Ignored(_)),
            "{outcome:?}"
        );
    }
    s.tick().await;
    s.running_server().events().flush().await;
    assert_eq!(state_changes(s, &up.run_id, "Completed"), 1);
    assert_eq!(run_state(s, &job_id, &up.run_id).await.2, ami);
}

#[tokio::test]
async fn a_duplicate_notification_while_the_run_waits_causes_one_transition() {
    let lab = lab(Config::default()).await;
    let s = &lab.server;
    let job_id = create_job(&lab, 0).await;
    let up = poll_replicate(s, &lab.connector_id).await;
    // Wait until the run parks in WaitForUpload, then deliver the manifest three times at once.
    wait_for_upload_token(s, &job_id, &up.run_id).await;
    upload(s, &up, &lab.disk, None, None).await;
    let key = format!("{}manifest.json", up.prefix);
    let r = s.replication();
    let (a, b, c) = tokio::join!(
        r.upload_complete("tern-staging", &key),
        r.upload_complete("tern-staging", &key),
        r.upload_complete("tern-staging", &key)
    );
    let accepted = [a, b, c]
        .into_iter()
        .filter(|o| matches!(o, Ok(tern_core::replication::UploadOutcome::Accepted)))
        .count();
    // The bus listener saw the real notification too; at most one of all of them is taken.
    assert!(accepted <= 1, "{accepted} deliveries accepted");
    let (state, message, _) = wait_done(s, &job_id, &up.run_id).await;
    assert_eq!(state, ReplicationRunState::Completed, "{message:?}");
    s.tick().await;
    s.running_server().events().flush().await;
    assert_eq!(state_changes(s, &up.run_id, "Completed"), 1);
}

#[tokio::test]
async fn three_failed_runs_pause_the_job_and_an_on_demand_run_resumes_it() {
    let mut config = Config::default();
    config.limits.on_demand_runs_per_window = 10;
    let lab = lab(config).await;
    let s = &lab.server;
    let job_id = create_job(&lab, 0).await;
    let mut expected = vec![
        (
            ReplicationJobState::Failing,
            "2 re-try run(s) remaining before the job will be paused",
        ),
        (
            ReplicationJobState::Failing,
            "1 re-try run(s) remaining before the job will be paused",
        ),
        (
            ReplicationJobState::PausedOnFailure,
            "0 re-try run(s) remaining before the job will be paused",
        ),
    ]
    .into_iter();
    let mut first = true;
    loop {
        if !first {
            on_demand(&lab, &job_id).await;
        }
        first = false;
        let up = poll_replicate(s, &lab.connector_id).await;
        // Wait for the token before failing, as a real upload would take a while.
        wait_for_upload_token(s, &job_id, &up.run_id).await;
        report_error(
            s,
            &up,
            "disk 0: cannot read /images/app.raw: permission denied",
        )
        .await;
        let (state, message, _) = wait_done(s, &job_id, &up.run_id).await;
        assert_eq!(state, ReplicationRunState::Failed);
        let message = message.unwrap();
        assert!(message.contains("permission denied"), "{message}");
        let Some((job, retries)) = expected.next() else {
            break;
        };
        assert!(message.contains(retries), "{message}");
        assert_eq!(job_state(s, &job_id).await.0, job, "{message}");
        if job == ReplicationJobState::PausedOnFailure {
            break;
        }
    }
    s.tick().await;
    s.running_server().events().flush().await;
    assert!(events(s)
        .iter()
        .any(|e| e["detail"]["state"] == "Paused" && e["detail"]["replication-run-id"] == "N/A"));

    // An on-demand run resumes the job, and a good upload completes it.
    let run = on_demand(&lab, &job_id).await;
    assert_eq!(job_state(s, &job_id).await.0, ReplicationJobState::Active);
    let up = poll_replicate(s, &lab.connector_id).await;
    assert_eq!(up.run_id, run);
    upload(s, &up, &lab.disk, None, None).await;
    let (state, message, _) = wait_done(s, &job_id, &run).await;
    assert_eq!(state, ReplicationRunState::Completed, "{message:?}");
}

#[tokio::test]
async fn images_beyond_the_retention_count_are_removed_and_their_blocks_freed() {
    let mut config = Config::default();
    config.limits.on_demand_runs_per_window = 10;
    let lab = lab(config).await;
    let s = &lab.server;
    let job_id = create_job(&lab, 1).await;
    let blocks = || walk(&s.data_dir().join("images/blocks"));
    let up = poll_replicate(s, &lab.connector_id).await;
    let (_, _, ami1) = {
        upload(s, &up, &lab.disk, None, None).await;
        wait_done(s, &job_id, &up.run_id).await
    };
    let after_seed = blocks();
    // A new seed of different content: the old image's blocks are all unique to it.
    make_disk(&lab.disk, 99);
    let run2 = on_demand(&lab, &job_id).await;
    let up2 = poll_replicate(s, &lab.connector_id).await;
    assert_eq!(up2.run_id, run2);
    let mut forced = up2;
    forced.seed = true;
    upload(s, &forced, &lab.disk, None, None).await;
    let (state, message, ami2) = wait_done(s, &job_id, &run2).await;
    assert_eq!(state, ReplicationRunState::Completed, "{message:?}");
    let images = ImageCatalog::open(s.data_dir())
        .unwrap()
        .list_images()
        .unwrap();
    assert_eq!(images.len(), 1, "only the newest image is kept");
    assert_eq!(Some(&images[0].image_id), ami2.as_ref());
    assert!(ami1 != ami2);
    let now = blocks();
    assert!(
        now.iter().all(|b| !after_seed.contains(b)),
        "the first image's blocks were freed"
    );
}

#[tokio::test]
async fn a_run_survives_restarts_during_the_upload_and_the_import() {
    let mut lab = lab(Config::default()).await;
    let job_id = create_job(&lab, 0).await;
    let up = poll_replicate(&lab.server, &lab.connector_id).await;
    wait_for_upload_token(&lab.server, &job_id, &up.run_id).await;
    // Killed while the connector uploads: the parked task and its token survive.
    lab.server.restart().await;
    upload(&lab.server, &up, &lab.disk, None, None).await;
    // Killed right after the upload completed (during the import).
    lab.server.restart().await;
    let (state, message, ami) = wait_done(&lab.server, &job_id, &up.run_id).await;
    assert_eq!(state, ReplicationRunState::Completed, "{message:?}");
    assert_eq!(
        image_disk(&lab.server, &ami.unwrap()),
        std::fs::read(&lab.disk).unwrap()
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub(super) fn manual_clock() -> std::sync::Arc<tern_core::ManualClock> {
    std::sync::Arc::new(tern_core::ManualClock::new(time::OffsetDateTime::now_utc()))
}

pub(super) async fn runs_of(
    server: &TestServer,
    job_id: &str,
) -> Vec<aws_sdk_sms::types::ReplicationRun> {
    server
        .client
        .get_replication_runs()
        .replication_job_id(job_id)
        .send()
        .await
        .unwrap()
        .replication_run_list()
        .to_vec()
}

#[tokio::test]
async fn a_scheduled_run_due_while_the_previous_one_runs_is_recorded_missed() {
    let clock = manual_clock();
    let lab =
        lab_on(TestServer::start_with_clock(Config::default(), Some(clock.clone())).await).await;
    let s = &lab.server;
    let job_id = create_job_at(&lab, 0, clock_secs(&clock), 1).await;
    let first = s.tick().await;
    assert_eq!(first.runs_created.len(), 1, "{first:?}");
    // The seed's execution prepares it before the clock moves: a Prepare that ran an hour
    // later (under load, the engine may be that slow) found the run no longer preparable and
    // failed it, so the second tick started a run instead of recording one missed.
    wait_for_upload_token(s, &job_id, &first.runs_created[0]).await;
    // The seed is still uploading an hour later: that interval's run is skipped, on record.
    clock.advance(Duration::from_secs(3601));
    let second = s.tick().await;
    assert_eq!(second.runs_missed.len(), 1, "{second:?}");
    let runs = runs_of(s, &job_id).await;
    let missed = runs
        .iter()
        .find(|r| r.replication_run_id() == Some(second.runs_missed[0].as_str()))
        .unwrap();
    assert_eq!(missed.state(), Some(&ReplicationRunState::Missed));
    assert_eq!(
        missed.r#type(),
        Some(&aws_sdk_sms::types::ReplicationRunType::Automatic)
    );
    let job = &s
        .client
        .get_replication_jobs()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap()
        .replication_job_list()[0]
        .clone();
    let next = job.next_replication_run_start_time().unwrap().secs();
    assert!(
        next > clock_secs(&clock),
        "the next run moved past now: {next}"
    );
    // Still one run in progress, and the same next start: ticking again changes nothing.
    let third = s.tick().await;
    assert!(
        third.runs_created.is_empty() && third.runs_missed.is_empty(),
        "{third:?}"
    );
}

pub(super) fn clock_secs(clock: &tern_core::ManualClock) -> i64 {
    use tern_core::Clock;
    clock.now().unix_timestamp()
}

#[tokio::test]
async fn a_run_once_job_completes_after_its_run() {
    let lab = lab(Config::default()).await;
    let s = &lab.server;
    let job_id = s
        .client
        .create_replication_job()
        .server_id(&lab.server_id)
        .seed_replication_time(DateTime::from_secs(now_secs()))
        .run_once(true)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned();
    let up = poll_replicate(s, &lab.connector_id).await;
    upload(s, &up, &lab.disk, None, None).await;
    let (state, message, ami) = wait_done(s, &job_id, &up.run_id).await;
    assert_eq!(state, ReplicationRunState::Completed, "{message:?}");
    assert_eq!(
        job_state(s, &job_id).await.0,
        ReplicationJobState::Completed
    );
    // Nothing more is scheduled for it.
    let report = s.tick().await;
    assert!(report.runs_created.is_empty(), "{report:?}");

    // One event per AMI: the run's Completed carries it, the job's own Completed does not
    // (automation launches an instance for every Completed event with an `ami-id`).
    let ami = ami.expect("the run's AMI");
    let deadline = Instant::now() + Duration::from_secs(10);
    let job_completed = |e: &Value| {
        e["detail"]["replication-job-id"] == job_id.as_str()
            && e["detail"]["replication-run-id"] == "N/A"
            && e["detail"]["state"] == "Completed"
    };
    while !events(s).iter().any(job_completed) {
        assert!(Instant::now() < deadline, "no job Completed event");
        s.tick().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = events(s);
    let with_ami: Vec<&Value> = all
        .iter()
        .filter(|e| e["detail"]["ami-id"] == ami.as_str())
        .collect();
    assert_eq!(with_ami.len(), 1, "{with_ami:#?}");
    assert_eq!(with_ami[0]["detail"]["state"], "Completed");
    assert_eq!(
        with_ami[0]["detail"]["replication-run-id"],
        up.run_id.as_str()
    );
    let job_event = all.iter().find(|e| job_completed(e)).unwrap();
    assert!(job_event["detail"].get("ami-id").is_none(), "{job_event}");
}

#[tokio::test]
async fn jobs_end_after_ninety_days_and_paused_jobs_are_deleted_after_four() {
    let clock = manual_clock();
    let mut config = Config::default();
    config.limits.on_demand_runs_per_window = 10;
    let lab = lab_on(TestServer::start_with_clock(config, Some(clock.clone())).await).await;
    let s = &lab.server;
    let job_id = create_job_at(&lab, 0, clock_secs(&clock), 12).await;
    let up = poll_replicate(s, &lab.connector_id).await;
    upload(s, &up, &lab.disk, None, None).await;
    assert_eq!(
        wait_done_moving(s, &clock, &job_id, &up.run_id).await.0,
        ReplicationRunState::Completed
    );

    clock.advance(Duration::from_secs(91 * 24 * 3600));
    let report = s.tick().await;
    assert_eq!(report.jobs_ended, vec![job_id.clone()]);
    assert_eq!(job_state(s, &job_id).await.0, ReplicationJobState::Deleted);
    let servers = s.client.get_servers().send().await.unwrap();
    assert_eq!(
        servers.server_list()[0].replication_job_terminated(),
        Some(true)
    );

    // A new job on the same server, paused after three failures, then left alone. The
    // connector heartbeats at the new time so that it counts as healthy.
    lab.agent.heartbeat().await.unwrap();
    let job2 = create_job_at(&lab, 0, clock_secs(&clock), 12).await;
    for i in 0..3 {
        if i > 0 {
            on_demand(&lab, &job2).await;
        }
        let up = poll_replicate(s, &lab.connector_id).await;
        wait_for_upload_token(s, &job2, &up.run_id).await;
        report_error(s, &up, "network down").await;
        wait_done(s, &job2, &up.run_id).await;
    }
    assert_eq!(
        job_state(s, &job2).await.0,
        ReplicationJobState::PausedOnFailure
    );
    clock.advance(Duration::from_secs(4 * 24 * 3600 - 60));
    assert!(s.tick().await.jobs_ended.is_empty(), "still resumable");
    clock.advance(Duration::from_secs(120));
    assert_eq!(s.tick().await.jobs_ended, vec![job2.clone()]);
    assert_eq!(job_state(s, &job2).await.0, ReplicationJobState::Deleted);
}

/// R13: the 90 days count from the first replication. The User Guide's own example seeds in
/// 2016: such a job starts its seed now and lives 90 days from now, not zero.
#[tokio::test]
async fn a_job_seeded_in_the_past_replicates_now_and_lives_ninety_days_from_its_first_run() {
    let clock = manual_clock();
    let lab =
        lab_on(TestServer::start_with_clock(Config::default(), Some(clock.clone())).await).await;
    let s = &lab.server;
    // 2016-11-01T00:00:00Z, as in the User Guide's CLI walkthrough.
    let job_id = create_job_at(&lab, 0, 1_477_958_400, 12).await;
    let up = poll_replicate(s, &lab.connector_id).await;
    assert!(up.seed, "the first run is the seed");
    assert_eq!(up.job_id, job_id);
    let report = s.tick().await;
    assert!(report.jobs_ended.is_empty(), "{report:?}");
    let (map, _) = upload(s, &up, &lab.disk, None, None).await;
    assert_eq!(
        wait_done_moving(s, &clock, &job_id, &up.run_id).await.0,
        ReplicationRunState::Completed
    );
    assert_eq!(job_state(s, &job_id).await.0, ReplicationJobState::Active);

    // 89 days on it still replicates (the runs due meanwhile are created, not the job ended).
    clock.advance(Duration::from_secs(89 * 24 * 3600));
    let report = s.tick().await;
    assert!(report.jobs_ended.is_empty(), "{report:?}");
    assert_ne!(job_state(s, &job_id).await.0, ReplicationJobState::Deleted);
    // Past 90 days from the seed run (once the run now in progress ends) the job is ended.
    let first = up.run_id.clone();
    let up = poll_replicate(s, &lab.connector_id).await;
    upload(s, &up, &lab.disk, Some(&map), Some(&first)).await;
    wait_done_moving(s, &clock, &job_id, &up.run_id).await;
    clock.advance(Duration::from_secs(2 * 24 * 3600));
    let report = s.tick().await;
    assert_eq!(report.jobs_ended, vec![job_id.clone()]);
    assert_eq!(job_state(s, &job_id).await.0, ReplicationJobState::Deleted);
}

/// Events of `server` in its archive once one satisfies `found` (polled with a bound).
async fn events_once(server: &TestServer, found: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        server.tick().await;
        server.running_server().events().flush().await;
        let all = events(server);
        if all.iter().any(&found) {
            return all;
        }
        assert!(Instant::now() < deadline, "no such event in {all:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `tern serve` sends events with SMS's source `aws.sms`, so the User Guide's sample rule
/// matches unmodified; `event_source` (`--event-source`, TERN_EVENT_SOURCE) changes it.
#[tokio::test]
async fn events_match_the_user_guides_sample_rule_unmodified() {
    let rules = "[[rule]]\nname = \"sms-sample\"\nevent_pattern = '{\"source\": [\"aws.sms\"], \"detail-type\": [\"Server Migration Job State Change\"]}'\n\n[[rule.target]]\ntype = \"file\"\npath = \"matched.ndjson\"\n";
    let server = TestServer::start_adjusted(Config::default(), None, |serve, dir| {
        let path = dir.join("rules.toml");
        std::fs::write(&path, rules).unwrap();
        serve.rules = Some(path);
    })
    .await;
    let (_agent, ids) = server.import_catalog(1).await;
    let job_id = server
        .client
        .create_replication_job()
        .server_id(&ids[0])
        .seed_replication_time(DateTime::from_secs(now_secs() + 3600))
        .frequency(12)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned();
    let pending = events_once(&server, |e| {
        e["detail"]["replication-job-id"] == job_id.as_str()
    })
    .await;
    assert!(
        pending.iter().all(|e| e["source"] == "aws.sms"),
        "{pending:#?}"
    );
    // The rule's target got it too.
    let matched = server.data_dir().join("matched.ndjson");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&matched)
        .unwrap_or_default()
        .contains(job_id.as_str())
    {
        assert!(
            Instant::now() < deadline,
            "the sample rule delivered nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;

    let config = Config {
        event_source: Some("acme.migrations".into()),
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;
    let (_agent, ids) = server.import_catalog(1).await;
    let job_id = server
        .client
        .create_replication_job()
        .server_id(&ids[0])
        .seed_replication_time(DateTime::from_secs(now_secs() + 3600))
        .frequency(12)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned();
    let all = events_once(&server, |e| {
        e["detail"]["replication-job-id"] == job_id.as_str()
    })
    .await;
    assert!(
        all.iter().all(|e| e["source"] == "acme.migrations"),
        "{all:#?}"
    );
    server.shutdown().await;
}

/// A connector killed mid-upload and started again (same state directory, so the same
/// connector id) gets its REPLICATE work back at once — not after the 10-minute lease — and
/// finishes the run from where its upload stood.
#[tokio::test]
async fn a_restarted_connector_resumes_its_upload_at_once() {
    // A disk of 12 MiB of random data: its seed VMDK takes three 5 MiB parts.
    let server = TestServer::start().await;
    let disk = server.scratch().join("app-disk0.raw");
    let mut data = vec![0u8; 12 << 20];
    Rng(11).fill(&mut data);
    std::fs::write(&disk, data).unwrap();
    let mut agent = server.connector_agent("lab", &inventory(&disk)).await;
    agent.run_once().await.unwrap();
    server.client.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();
    let servers = server.client.get_servers().send().await.unwrap();
    let lab = Lab {
        server_id: servers.server_list()[0].server_id().unwrap().to_string(),
        connector_id: agent.connector_id().unwrap().to_string(),
        server,
        agent,
        disk,
    };
    let s = &lab.server;
    // Slow uploads (1 MB/s: each 5 MiB part after the first waits ~4 s), so that the first process dies in the middle.
    let config_path = s.scratch().join("lab").join("connector.toml");
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str("\n[staging]\nbandwidth_limit_mbps = 8\npart_size_mib = 5\n");
    std::fs::write(&config_path, text).unwrap();
    let agent = || async {
        tern_connector::Agent::new(tern_connector::ConnectorConfig::load(&config_path).unwrap())
            .await
            .unwrap()
    };
    let job_id = create_job(&lab, 0).await;

    let mut first = agent().await;
    first.register().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        s.tick().await;
        match tokio::time::timeout(Duration::from_secs(2), first.poll_once()).await {
            Err(_) => break, // killed with the upload in progress
            Ok(report) => {
                let report = report.unwrap();
                assert_eq!(
                    report.replication_items_started, 0,
                    "finished too fast: {report:?}"
                );
            }
        }
        assert!(Instant::now() < deadline, "no REPLICATE work");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(first);

    // The restarted process: registers with its id and gets the work back without waiting.
    let mut second = agent().await;
    let report = second.run_once().await.unwrap();
    assert_eq!(report.replication_items_started, 1, "{report:?}");
    let run_id = runs_of(s, &job_id).await[0]
        .replication_run_id()
        .unwrap()
        .to_owned();
    let (state, message, _) = wait_done(s, &job_id, &run_id).await;
    assert_eq!(state, ReplicationRunState::Completed, "{message:?}");
}

/// A connector whose upload slots are all taken (long seeds) still answers an inventory request
/// at once, and leaves the replication work queued until a slot is free again.
#[tokio::test]
async fn a_connector_with_every_upload_slot_busy_still_answers_inventory_requests() {
    let lab = lab(Config::default()).await;
    let s = &lab.server;
    let job_id = create_job(&lab, 0).await;
    s.tick().await;
    let run_id = runs_of(s, &job_id).await[0]
        .replication_run_id()
        .unwrap()
        .to_owned();
    wait_for_upload_token(s, &job_id, &run_id).await;

    let held = lab.agent.occupy_upload_slots();
    s.client.import_server_catalog().send().await.unwrap();
    let report = lab.agent.poll_once().await.unwrap();
    assert_eq!(report.inventories_reported, 1, "{report:?}");
    assert_eq!(report.replication_items_started, 0, "{report:?}");

    drop(held);
    let report = lab.agent.poll_once().await.unwrap();
    assert_eq!(report.replication_items_started, 1, "{report:?}");
    let (state, message, _) = wait_done(s, &job_id, &run_id).await;
    assert_eq!(state, ReplicationRunState::Completed, "{message:?}");
}
