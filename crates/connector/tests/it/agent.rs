//! The agent against a real `tern serve` (in-process `tern_local::start`: API, S3 staging store,
//! replication-run state machine, local image service): catalog import, seed and incremental
//! runs that end in an AMI whose disks equal the sources byte for byte, a lost COMMIT_RUN, a
//! failing upload, heartbeats during a long upload, and the work lease kept by progress.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use serde_json::{json, Value};
use tern_connector::{replicate, Agent, ConnectorConfig};

use crate::support::*;

const MIB: u64 = 1 << 20;
const REGION: &str = "us-east-1";

/// A running `tern serve` and the scratch directory next to its data directory.
struct Lab {
    running: Option<tern_local::Running>,
    dir: tempfile::TempDir,
}

impl Lab {
    async fn start(config: tern_core::Config) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let mut serve =
            tern_local::ServeConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
        serve.config = config;
        // The tests' VMs are synthetic disks without a partition table.
        if serve.config.preflight_waive.is_none() {
            serve.config.preflight_waive = Some("boot-disk-unpartitioned".into());
        }
        let running = tern_local::start(serve).await.expect("tern serve starts");
        Lab {
            running: Some(running),
            dir,
        }
    }

    fn running(&self) -> &tern_local::Running {
        self.running.as_ref().unwrap()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn scratch(&self) -> &Path {
        self.dir.path()
    }

    fn admin(&self) -> Credentials {
        let c = self.running().admin();
        Credentials::new(&c.access_key_id, &c.secret_access_key, None, None, "admin")
    }

    fn connector_keys(&self) -> Credentials {
        let c = self.running().connector();
        Credentials::new(&c.access_key_id, &c.secret_access_key, None, None, "conn")
    }

    /// One awsJson call; `Err((status, body))` for an error answer.
    async fn raw(
        &self,
        credentials: &Credentials,
        target: &str,
        body: &Value,
    ) -> Result<Value, (u16, Value)> {
        let url = format!("{}/", self.running().endpoint());
        let body = serde_json::to_vec(body).unwrap();
        let headers = [
            ("content-type", tern_api::CONTENT_TYPE),
            ("x-amz-target", target),
        ];
        let signed = tern_connector::signing::sign_post(
            credentials,
            REGION,
            &url,
            &headers,
            &body,
            SystemTime::now(),
        )
        .unwrap();
        let mut request = reqwest::Client::new().post(&url).body(body);
        for (n, v) in headers {
            request = request.header(n, v);
        }
        for (n, v) in &signed {
            request = request.header(n.as_str(), v.as_str());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status == 200 {
            Ok(value)
        } else {
            Err((status, value))
        }
    }

    async fn sms(&self, operation: &str, body: Value) -> Value {
        let target = format!("{}.{operation}", tern_api::SMS_TARGET_PREFIX);
        self.raw(&self.admin(), &target, &body)
            .await
            .unwrap_or_else(|e| panic!("{operation}: {e:?}"))
    }

    async fn connector_call(&self, operation: &str, body: Value) -> Result<Value, (u16, Value)> {
        let target = format!("{}.{operation}", tern_api::CONNECTOR_TARGET_PREFIX);
        self.raw(&self.connector_keys(), &target, &body).await
    }

    /// A connector config over `inventory` (TOML), with `extra` appended (e.g. `[staging]`).
    fn agent_config(&self, inventory: &str, extra: &str) -> ConnectorConfig {
        let dir = self.scratch().join("connector");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("inventory.toml"), inventory).unwrap();
        let config = format!(
            "endpoint = {endpoint:?}\nregion = {REGION:?}\nname = \"lab\"\nprofile = \"connector\"\ncredentials_file = {creds:?}\nstate_dir = \"state\"\nheartbeat_interval_secs = 1\npoll_interval_secs = 1\n\n[files]\ninventory = \"inventory.toml\"\n{extra}",
            endpoint = self.running().endpoint(),
            creds = self.running().credentials_file().display().to_string(),
        );
        let path = dir.join("connector.toml");
        std::fs::write(&path, config).unwrap();
        ConnectorConfig::load(&path).unwrap()
    }

    /// Registers the agent, imports the catalog and returns the server id of `vm-0`.
    async fn import(&self, agent: &mut Agent) -> String {
        agent.run_once().await.expect("agent registers");
        self.sms("ImportServerCatalog", json!({})).await;
        let report = agent.poll_once().await.expect("agent polls");
        assert_eq!(report.inventories_reported, 1, "{report:?}");
        let servers = self.sms("GetServers", json!({})).await;
        servers["serverList"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vmServer"]["vmServerAddress"]["vmId"] == "vm-0")
            .expect("vm-0 is in the catalog")["serverId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A job over `server_id` whose seed time is now; returns its id.
    async fn create_job(&self, server_id: &str) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let job = self
            .sms(
                "CreateReplicationJob",
                json!({"serverId": server_id, "seedReplicationTime": now, "frequency": 12,
                       "licenseType": "BYOL", "numberOfRecentAmisToKeep": 0}),
            )
            .await;
        job["replicationJobId"].as_str().unwrap().to_string()
    }

    /// Starts an on-demand run. The first run of a job seeded "now" may already have been
    /// started by the scheduler: then that run is the one to follow.
    async fn start_run(&self, job_id: &str) -> String {
        let target = format!(
            "{}.StartOnDemandReplicationRun",
            tern_api::SMS_TARGET_PREFIX
        );
        match self
            .raw(&self.admin(), &target, &json!({"replicationJobId": job_id}))
            .await
        {
            Ok(v) => v["replicationRunId"].as_str().unwrap().to_string(),
            Err((_, e)) if e["message"].as_str().unwrap_or("").contains("in progress") => {
                let runs = self.runs(job_id).await;
                runs.iter()
                    .find(|r| r["state"] != "COMPLETED" && r["state"] != "FAILED")
                    .expect("the scheduler's run")["replicationRunId"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
            Err(e) => panic!("StartOnDemandReplicationRun: {e:?}"),
        }
    }

    async fn runs(&self, job_id: &str) -> Vec<Value> {
        let r = self
            .sms("GetReplicationRuns", json!({"replicationJobId": job_id}))
            .await;
        r["replicationRunList"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn run(&self, job_id: &str, run_id: &str) -> Value {
        self.runs(job_id)
            .await
            .into_iter()
            .find(|r| r["replicationRunId"] == run_id)
            .unwrap_or_else(|| panic!("run {run_id} is listed"))
    }

    /// Polls GetReplicationRuns until the run is COMPLETED or FAILED.
    async fn wait_for_end(&self, job_id: &str, run_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let run = self.run(job_id, run_id).await;
            if run["state"] == "COMPLETED" || run["state"] == "FAILED" {
                return run;
            }
            assert!(Instant::now() < deadline, "run did not end in time: {run}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// Polls with the agent (waiting for the work each poll starts) until it has finished one
/// REPLICATE item; returns the summary of that poll.
async fn upload_with(agent: &Agent) -> tern_connector::CycleReport {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let report = agent.poll_once().await.expect("poll");
        let r = &report.replication;
        if r.replications_completed + r.replications_failed + r.replications_cancelled > 0 {
            return report;
        }
        assert!(Instant::now() < deadline, "no replication work came");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The AMI's disks exported to raw, in block-device order.
fn exported_disks(data_dir: &Path, ami: &str, scratch: &Path) -> Vec<Vec<u8>> {
    let catalog = tern_local::images::ImageCatalog::open(data_dir).expect("image catalog");
    let image = catalog.describe_image(ami).expect("the AMI exists");
    assert_eq!(image.block_devices[0].device_name, "/dev/sda1");
    image
        .block_devices
        .iter()
        .map(|bd| {
            let disk = catalog.snapshot_disk(&bd.snapshot_id).unwrap();
            let out = scratch.join(format!("{}.raw", bd.snapshot_id));
            tern_disk::write::write_raw(&disk, &out, &tern_disk::no_progress).unwrap();
            std::fs::read(out).unwrap()
        })
        .collect()
}

/// The snapshot may be rounded up to whole GiB: the source's bytes, then zeros.
fn assert_same_disk(exported: &[u8], source: &[u8], what: &str) {
    assert!(
        exported.len() >= source.len(),
        "{what}: exported disk is shorter"
    );
    assert!(
        exported[..source.len()] == *source,
        "{what}: exported disk differs from the source"
    );
    assert!(
        tern_disk::is_zero(&exported[source.len()..]),
        "{what}: bytes past the source's end are not zero"
    );
}

/// Blocks whose bytes differ (a block zeroed that was zero already did not change).
fn changed(old: &[u8], new: &[u8]) -> u64 {
    old.chunks(BLOCK as usize)
        .zip(new.chunks(BLOCK as usize))
        .filter(|(a, b)| a != b)
        .count() as u64
}

fn inventory(disks: &[&Path]) -> String {
    let list: Vec<String> = disks.iter().map(|d| format!("{:?}", p(d))).collect();
    format!(
        "vm_manager_id = \"vc-lab\"\nvm_manager_type = \"VSPHERE\"\n\n[[vms]]\nid = \"vm-0\"\nname = \"web0\"\nos_type = \"LINUX\"\ndisks = [{}]\n",
        list.join(", ")
    )
}

fn manifest_kinds(state_or_staging: &Value) -> Vec<String> {
    state_or_staging["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The connector's copy of a run's manifest (the staged objects are deleted after the import;
/// the copy stays in the state directory until the run is committed).
fn local_manifest(state_dir: &Path, job_id: &str, run_id: &str) -> Value {
    let path = state_dir
        .join("jobs")
        .join(job_id)
        .join(run_id)
        .join("manifest.json");
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("manifest copy {}: {e}", path.display())),
    )
    .unwrap()
}

/// Seed, then deltas of changed blocks: every run ends COMPLETED with an AMI whose disks are
/// the sources byte for byte. A COMMIT_RUN that never reaches the agent is made up for before
/// the next delta, so that delta still applies onto the right image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_incremental_runs_produce_identical_images() {
    let mut config = tern_core::Config::default();
    // SMS allows two on-demand runs a day; this test starts three.
    config.limits.on_demand_runs_per_window = 10;
    let lab = Lab::start(config).await;
    let s = lab.scratch().to_path_buf();
    let raw0 = s.join("d0.raw");
    let raw1 = s.join("d1.raw");
    let mut d0 = make_raw(&raw0, 24 * MIB, 1);
    let mut d1 = make_raw(&raw1, 8 * MIB, 2);
    let (q0, v1) = (s.join("web0.qcow2"), s.join("web0-data.vmdk"));
    convert(&raw0, &q0, "qcow2", &[]);
    convert(&raw1, &v1, "vmdk", &[]);

    let config = lab.agent_config(&inventory(&[&q0, &v1]), "");
    let state_dir = config.state_dir.clone();
    let mut agent = Agent::new(config).await.unwrap();
    let server_id = lab.import(&mut agent).await;
    let job_id = lab.create_job(&server_id).await;

    // Run 1: a seed.
    let run1 = lab.start_run(&job_id).await;
    let report = upload_with(&agent).await;
    assert_eq!(report.replication.replications_completed, 1, "{report:?}");
    assert_eq!(
        manifest_kinds(&local_manifest(&state_dir, &job_id, &run1)),
        ["seed-vmdk", "seed-vmdk"]
    );
    let done = lab.wait_for_end(&job_id, &run1).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");
    let ami1 = done["amiId"].as_str().unwrap().to_string();
    let disks = exported_disks(&lab.data_dir(), &ami1, &s);
    assert_eq!(disks.len(), 2);
    assert_same_disk(&disks[0], &d0, "run 1 disk 0");
    assert_same_disk(&disks[1], &d1, "run 1 disk 1");
    // The COMMIT_RUN item (queued just after the run is recorded COMPLETED): the run's block
    // maps become the base of the next delta.
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.poll_once().await.unwrap().replication.runs_committed == 0 {
        assert!(Instant::now() < deadline, "no COMMIT_RUN item");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        replicate::committed_run(&state_dir, &job_id)
            .unwrap()
            .as_deref(),
        Some(run1.as_str())
    );

    // Run 2: some blocks changed (some zeroed) → deltas.
    let before = d0.clone();
    change_blocks(&mut d0, &[1, 7, 30, 31], &[12], 11);
    change_blocks(&mut d1, &[3], &[], 12);
    std::fs::write(&raw0, &d0).unwrap();
    std::fs::write(&raw1, &d1).unwrap();
    convert(&raw0, &q0, "qcow2", &[]);
    convert(&raw1, &v1, "vmdk", &[]);
    let run2 = lab.start_run(&job_id).await;
    let report = upload_with(&agent).await;
    assert_eq!(report.replication.replications_completed, 1, "{report:?}");
    let manifest = local_manifest(&state_dir, &job_id, &run2);
    assert_eq!(manifest_kinds(&manifest), ["delta", "delta"]);
    assert_eq!(manifest["disks"][0]["baseRunId"], run1.as_str());
    assert_eq!(manifest["disks"][0]["changedBlocks"], changed(&before, &d0));
    let done = lab.wait_for_end(&job_id, &run2).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");
    let disks = exported_disks(&lab.data_dir(), done["amiId"].as_str().unwrap(), &s);
    assert_same_disk(&disks[0], &d0, "run 2 disk 0");
    assert_same_disk(&disks[1], &d1, "run 2 disk 1");

    // Run 2's COMMIT_RUN is lost: taken and closed here, the agent never sees it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let polled = loop {
        let polled = lab
            .connector_call(
                "PollWork",
                json!({"connectorId": agent.connector_id().unwrap()}),
            )
            .await
            .unwrap();
        if polled["workItems"] != json!([]) {
            break polled;
        }
        assert!(Instant::now() < deadline, "no COMMIT_RUN item");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let items = polled["workItems"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{polled}");
    assert_eq!(items[0]["kind"], "COMMIT_RUN");
    lab.connector_call(
        "CompleteWork",
        json!({"connectorId": agent.connector_id().unwrap(), "workId": items[0]["workId"]}),
    )
    .await
    .unwrap();
    assert_eq!(
        replicate::committed_run(&state_dir, &job_id)
            .unwrap()
            .as_deref(),
        Some(run1.as_str()),
        "run 2 is not committed yet"
    );

    // Run 3: the agent commits run 2 itself (its maps are pending here), so the delta is
    // relative to run 2's image, which the control plane applies it onto.
    let before = d0.clone();
    change_blocks(&mut d0, &[2, 40], &[], 21);
    std::fs::write(&raw0, &d0).unwrap();
    convert(&raw0, &q0, "qcow2", &[]);
    let run3 = lab.start_run(&job_id).await;
    let report = upload_with(&agent).await;
    assert_eq!(report.replication.replications_completed, 1, "{report:?}");
    let manifest = local_manifest(&state_dir, &job_id, &run3);
    assert_eq!(manifest_kinds(&manifest), ["delta", "delta"]);
    assert_eq!(manifest["disks"][0]["baseRunId"], run2.as_str());
    assert_eq!(manifest["disks"][0]["changedBlocks"], changed(&before, &d0));
    assert_eq!(manifest["disks"][1]["changedBlocks"], 0);
    let done = lab.wait_for_end(&job_id, &run3).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");
    let disks = exported_disks(&lab.data_dir(), done["amiId"].as_str().unwrap(), &s);
    assert_same_disk(&disks[0], &d0, "run 3 disk 0");
    assert_same_disk(&disks[1], &d1, "run 3 disk 1");
    lab.shutdown().await;
}

/// A disk that is gone when the run starts fails the run; the run's status message carries the
/// connector's explanation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upload_fails_the_run_with_the_connectors_message() {
    let lab = Lab::start(tern_core::Config::default()).await;
    let s = lab.scratch().to_path_buf();
    let raw = s.join("d0.raw");
    make_raw(&raw, 8 * MIB, 5);
    let q = s.join("web0.qcow2");
    convert(&raw, &q, "qcow2", &[]);
    let mut agent = Agent::new(lab.agent_config(&inventory(&[&q]), ""))
        .await
        .unwrap();
    let server_id = lab.import(&mut agent).await;
    let job_id = lab.create_job(&server_id).await;
    std::fs::remove_file(&q).unwrap();
    let run = lab.start_run(&job_id).await;
    let report = upload_with(&agent).await;
    assert_eq!(report.replication.replications_failed, 1, "{report:?}");
    let done = lab.wait_for_end(&job_id, &run).await;
    assert_eq!(done["state"], "FAILED", "{done}");
    let message = done["statusMessage"].as_str().unwrap();
    assert!(
        message.contains(&format!("connector could not upload run {run}"))
            && message.contains(p(&q))
            && message.contains("Check that the disk image exists"),
        "{message}"
    );
    lab.shutdown().await;
}

/// `Agent::run` keeps heartbeating while an upload (slowed by the bandwidth cap) runs in the
/// background: the connector stays HEALTHY although the upload takes longer than the server's
/// unhealthy-after, progress shows on the run, and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_go_on_during_a_long_upload() {
    let config = tern_core::Config {
        connector_unhealthy_after: Duration::from_secs(3),
        // Shorter than the upload: PollWork would hand the item out again without the
        // renewal by progress reports; the agent would skip it as in flight anyway.
        work_lease: Duration::from_secs(2),
        ..Default::default()
    };
    let lab = Lab::start(config).await;
    let s = lab.scratch().to_path_buf();
    let raw = s.join("d0.raw");
    let data: Vec<u8> = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut d = vec![0u8; (12 * MIB) as usize];
        rng.fill(&mut d[..]);
        d
    };
    std::fs::write(&raw, &data).unwrap();
    let v = s.join("web0.vmdk");
    convert(&raw, &v, "vmdk", &["-o", "subformat=streamOptimized"]);
    // 12 MiB of random data at 16 Mbit/s: about 6 s.
    let mut agent = Agent::new(lab.agent_config(
        &inventory(&[&v]),
        "[staging]\npart_size_mib = 5\nbandwidth_limit_mbps = 16\n",
    ))
    .await
    .unwrap();
    let server_id = lab.import(&mut agent).await;
    let job_id = lab.create_job(&server_id).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let background = tokio::spawn(async move {
        agent
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let run = lab.start_run(&job_id).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut progress_seen = Vec::new();
    let done = loop {
        let r = lab.run(&job_id, &run).await;
        if r["state"] == "COMPLETED" || r["state"] == "FAILED" {
            break r;
        }
        if let Some(m) = r["statusMessage"].as_str() {
            if m.starts_with("Uploading ")
                && m.contains('%')
                && !progress_seen.contains(&m.to_string())
            {
                progress_seen.push(m.to_string());
            }
        }
        let connectors = lab.sms("GetConnectors", json!({})).await;
        assert_eq!(
            connectors["connectorList"][0]["status"], "HEALTHY",
            "heartbeats stopped during the upload: {connectors}"
        );
        assert!(Instant::now() < deadline, "run did not end: {r}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(done["state"], "COMPLETED", "{done}");
    assert!(
        progress_seen.len() >= 2,
        "progress reports show on the run as the upload goes: {progress_seen:?}"
    );
    let disks = exported_disks(&lab.data_dir(), done["amiId"].as_str().unwrap(), &s);
    assert_same_disk(&disks[0], &data, "disk 0");
    let _ = stop.send(());
    background.await.unwrap().unwrap();
    lab.shutdown().await;
}

/// ReportProgress renews the lease of its work item: PollWork does not hand out an item whose
/// connector keeps reporting on it, and does again once the reports stop for a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_keep_the_work_lease() {
    let lease = Duration::from_secs(2);
    let lab = Lab::start(tern_core::Config {
        work_lease: lease,
        ..Default::default()
    })
    .await;
    let s = lab.scratch().to_path_buf();
    let raw = s.join("d0.raw");
    make_raw(&raw, 4 * MIB, 3);
    let mut agent = Agent::new(lab.agent_config(&inventory(&[&raw]), ""))
        .await
        .unwrap();
    let server_id = lab.import(&mut agent).await;
    let job_id = lab.create_job(&server_id).await;
    let run = lab.start_run(&job_id).await;
    let connector_id = agent.connector_id().unwrap().to_string();
    let poll = || lab.connector_call("PollWork", json!({"connectorId": connector_id}));
    // The REPLICATE item, taken here instead of by the agent.
    let deadline = Instant::now() + Duration::from_secs(60);
    let work_id = loop {
        let items = poll().await.unwrap()["workItems"].clone();
        if let Some(item) = items.as_array().unwrap().first() {
            assert_eq!(item["kind"], "REPLICATE");
            assert_eq!(item["payload"]["runId"], run.as_str());
            break item["workId"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no REPLICATE item");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Reports for twice the lease: the item stays with its connector.
    let until = Instant::now() + lease * 2;
    while Instant::now() < until {
        lab.connector_call(
            "ReportProgress",
            json!({"connectorId": connector_id, "workId": work_id, "stage": "Uploading",
                   "percent": 10, "bytesDone": 1, "bytesTotal": 10}),
        )
        .await
        .unwrap();
        let items = poll().await.unwrap();
        assert_eq!(
            items["workItems"],
            json!([]),
            "leased item handed out again"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let r = lab.run(&job_id, &run).await;
    assert_eq!(r["statusMessage"], "Uploading 10% (0.0 MiB of 0.0 MiB)");
    // No more reports: after the lease the item is handed out again.
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    let items = poll().await.unwrap();
    assert_eq!(items["workItems"][0]["workId"], work_id.as_str(), "{items}");
    lab.shutdown().await;
}

/// A run that fails on the server while its upload goes on (here: its work item reported as
/// failed from outside) stops the upload at the next progress report, before the manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_stops_when_the_control_plane_drops_its_work() {
    let lab = Lab::start(tern_core::Config::default()).await;
    let s = lab.scratch().to_path_buf();
    let raw = s.join("d0.raw");
    let data: Vec<u8> = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let mut d = vec![0u8; (20 * MIB) as usize];
        rng.fill(&mut d[..]);
        d
    };
    std::fs::write(&raw, &data).unwrap();
    // 20 MiB of random data at 16 Mbit/s: about 10 s if it ran to the end.
    let config = lab.agent_config(
        &inventory(&[&raw]),
        "[staging]\npart_size_mib = 5\nbandwidth_limit_mbps = 16\n",
    );
    let state_dir = config.state_dir.clone();
    let mut agent = Agent::new(config).await.unwrap();
    let server_id = lab.import(&mut agent).await;
    let connector_id = agent.connector_id().unwrap().to_string();
    let job_id = lab.create_job(&server_id).await;
    let run = lab.start_run(&job_id).await;
    let uploading = tokio::spawn(async move { upload_with(&agent).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = lab.run(&job_id, &run).await;
        let m = r["statusMessage"].as_str().unwrap_or("");
        if m.starts_with("Uploading ") && m.contains('%') {
            break;
        }
        assert!(Instant::now() < deadline, "the upload did not start: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.connector_call(
        "ReportError",
        json!({"connectorId": connector_id, "workId": format!("work-{run}"),
               "message": "operator stopped the run"}),
    )
    .await
    .unwrap();
    let report = uploading.await.unwrap();
    assert_eq!(report.replication.replications_cancelled, 1, "{report:?}");
    assert!(
        !state_dir
            .join("jobs")
            .join(&job_id)
            .join(&run)
            .join("manifest.json")
            .exists(),
        "no manifest after the cancellation"
    );
    let done = lab.wait_for_end(&job_id, &run).await;
    assert_eq!(done["state"], "FAILED", "{done}");
    assert!(
        done["statusMessage"]
            .as_str()
            .unwrap()
            .contains("operator stopped the run"),
        "{done}"
    );
    lab.shutdown().await;
}

/// A raw disk with a GPT: an EFI system partition (FAT32 boot sector) and a Linux partition.
fn small_gpt_disk(path: &Path, size: u64) {
    std::fs::write(path, tern_test_support::fixtures::gpt_disk(size)).unwrap();
}

/// An inventory of `count` VMs that all list `disk`, and optionally one VM named `name`.
fn shared_disk_inventory(count: usize, disk: &Path) -> String {
    let mut text = String::from("vm_manager_id = \"lab\"\n");
    for i in 0..count {
        text.push_str(&format!(
            "[[vms]]\nid = \"vm-{i}\"\nname = \"web{i:05}\"\nfolder = \"/dc/vm/web\"\nos_type = \"LINUX\"\ndisks = [{:?}]\n",
            p(disk)
        ));
    }
    text
}

async fn catalog(lab: &Lab) -> (String, Vec<Value>, Option<String>) {
    let mut servers = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut body = json!({"maxResults": 1000});
        if let Some(t) = &token {
            body["nextToken"] = json!(t);
        }
        let page = lab.sms("GetServers", body).await;
        servers.extend(page["serverList"].as_array().cloned().unwrap_or_default());
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => {
                let status = page["serverCatalogStatus"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let message = page["serverCatalogStatusMessage"]
                    .as_str()
                    .map(str::to_string);
                return (status, servers, message);
            }
        }
    }
}

/// 1,200 VMs over one shared GPT disk: reported in several pages, the disk opened once, every
/// VM in the catalog with its inspection, and the catalog AVAILABLE only after the last page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_inventory_is_reported_in_pages_and_a_shared_disk_inspected_once() {
    let lab = Lab::start(tern_core::Config::default()).await;
    let disk = lab.scratch().join("template.raw");
    small_gpt_disk(&disk, 8 * MIB);
    let mut agent = Agent::new(lab.agent_config(&shared_disk_inventory(1200, &disk), ""))
        .await
        .unwrap();
    agent.run_once().await.expect("agent registers");
    lab.sms("ImportServerCatalog", json!({})).await;
    let report = agent.poll_once().await.expect("agent polls");
    assert_eq!(report.inventories_reported, 1, "{report:?}");
    assert_eq!(report.vms_reported, 1200, "{report:?}");
    assert!(report.inventory_pages >= 3, "{report:?}");
    assert_eq!(report.disks_inspected, 1, "{report:?}");
    let (status, servers, message) = catalog(&lab).await;
    assert_eq!((status.as_str(), message), ("AVAILABLE", None));
    assert_eq!(servers.len(), 1200);
    assert!(servers.iter().all(|s| s["vmServer"]["vmName"]
        .as_str()
        .is_some_and(|n| n.starts_with("web"))));
    // No state of the finished report is left behind.
    let state = lab.scratch().join("connector/state/inventory-report.json");
    assert!(!state.exists());
    lab.shutdown().await;
}

/// A connector killed in the middle of a report resumes it when it starts again: the pages the
/// service took are not sent again, and the catalog switches only when the last page arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_inventory_report_resumes_after_a_restart() {
    let lab = Lab::start(tern_core::Config::default()).await;
    let disk = lab.scratch().join("template.raw");
    small_gpt_disk(&disk, 8 * MIB);
    let config = lab.agent_config(&shared_disk_inventory(1200, &disk), "");
    let mut first = Agent::new(config.clone()).await.unwrap();
    first.stop_inventory_after_pages(1);
    first.run_once().await.expect("agent registers");
    lab.sms("ImportServerCatalog", json!({})).await;
    let err = first.poll_once().await.unwrap_err();
    assert!(
        matches!(err, tern_connector::ConnectorError::Interrupted(_)),
        "{err}"
    );
    drop(first);
    // One page in: the catalog still waits, and shows nothing of the new inventory.
    let (status, servers, _) = catalog(&lab).await;
    assert_eq!(status, "IMPORTING");
    assert!(servers.is_empty());

    let mut second = Agent::new(config).await.unwrap();
    second.register().await.unwrap();
    // The work item is still leased to the killed process; the restarted one resumes anyway.
    let report = second.poll_once().await.expect("agent polls");
    assert_eq!(report.inventories_reported, 1, "{report:?}");
    let (status, servers, _) = catalog(&lab).await;
    assert_eq!(status, "AVAILABLE");
    assert_eq!(servers.len(), 1200);
    assert!(report.vms_reported < 1200, "{report:?}");
    // The first page's VMs came from the first process: all VMs are there exactly once.
    let mut names: Vec<&str> = servers
        .iter()
        .map(|s| s["vmServer"]["vmServerAddress"]["vmId"].as_str().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 1200);
    lab.shutdown().await;
}

/// A page the service refuses fails the import at once: the connector reports it, and
/// GetServers says EXPIRED with the cause instead of IMPORTING until the request times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_inventory_page_shows_in_the_catalog_status_at_once() {
    let lab = Lab::start(tern_core::Config::default()).await;
    let disk = lab.scratch().join("template.raw");
    small_gpt_disk(&disk, 8 * MIB);
    // A VM name over the service's 8 KiB string limit makes its page a 4xx.
    let mut text = shared_disk_inventory(3, &disk);
    text.push_str(&format!(
        "[[vms]]\nid = \"vm-long\"\nname = \"{}\"\n",
        "x".repeat(9000)
    ));
    let mut agent = Agent::new(lab.agent_config(&text, "")).await.unwrap();
    agent.run_once().await.expect("agent registers");
    lab.sms("ImportServerCatalog", json!({})).await;
    let report = agent.poll_once().await.expect("agent polls");
    assert_eq!(report.failed, 1, "{report:?}");
    let (status, servers, message) = catalog(&lab).await;
    assert_eq!(status, "EXPIRED");
    assert!(servers.is_empty());
    let message = message.expect("a status message");
    assert!(
        message.contains("page 1 of inventory report") && message.contains("refused"),
        "{message}"
    );
    // An unreadable inventory file is reported the same way, naming the file.
    let inventory = lab.scratch().join("connector/inventory.toml");
    std::fs::write(&inventory, "vms = [").unwrap();
    lab.sms("ImportServerCatalog", json!({})).await;
    let report = agent.poll_once().await.expect("agent polls");
    assert_eq!(report.failed, 1, "{report:?}");
    let (status, _, message) = catalog(&lab).await;
    assert_eq!(status, "EXPIRED");
    assert!(message.unwrap().contains("inventory.toml"));
    lab.shutdown().await;
}
