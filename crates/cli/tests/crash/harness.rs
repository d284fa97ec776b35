//! The lab of a crash test: a data directory, the server and connector processes, the source
//! disks, and the checks every run must pass.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_acceptance::aws_sdk_sms::config::Credentials;
use tern_acceptance::aws_sdk_sms::primitives::DateTime;
use tern_acceptance::aws_sdk_sms::types::ReplicationRun;
use tern_acceptance::{now_secs, sms_client};

use crate::disks::{self, Rng, BLOCK};
use crate::procs::{self, Connector, Proxy, Server, ADMIN_KEY, ADMIN_SECRET};

/// Which process is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    Server,
    Connector,
}

/// When it is killed.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// In the middle of the upload: after 40 % of the run's bytes went through the proxy.
    Uploading,
    /// Once the run's manifest is in the staging bucket.
    ManifestLanded,
    /// At a pause point of the server (the server is started with it beforehand).
    Pause(&'static str),
    /// While the server is held at a pause point: the victim is killed and restarted, then the
    /// server is let go on (for killing the connector in a stage the server passes in
    /// milliseconds).
    Hold(&'static str),
}

struct Vm {
    disk: PathBuf,
    blocks: u64,
    /// Data blocks of the seed and blocks changed per incremental run.
    data_bytes: u64,
    changed_blocks: u64,
    server_id: String,
    job_id: Option<String>,
    runs: Vec<String>,
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    server: Option<Server>,
    server_pause: Option<String>,
    connector: Option<Connector>,
    connector_config: PathBuf,
    proxy: Proxy,
    client: tern_acceptance::aws_sdk_sms::Client,
    vms: Vec<Vm>,
    manifests: Arc<Mutex<HashMap<String, Value>>>,
    rng: Rng,
    amis: Vec<String>,
    pub lines: Vec<String>,
    /// The manifest watcher; stopped with the lab.
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

// One 5 MiB part lost to a kill must stay under 10 % of the objects: 60 MiB of data.
const BIG_BLOCKS: u64 = 240; // 120 MiB, 60 MiB of data
const SMALL_BLOCKS: u64 = 48; // 24 MiB
const BIG_CHANGE: u64 = 120; // 60 MiB delta: 12 parts of 5 MiB
const SMALL_CHANGE: u64 = 6;
/// The connector's upload cap: slow enough for a kill to land in the middle of an upload.
const BANDWIDTH_MBPS: u64 = 240;

fn admin(endpoint: &str) -> tern_acceptance::aws_sdk_sms::Client {
    sms_client(
        endpoint,
        Credentials::new(ADMIN_KEY, ADMIN_SECRET, None, None, "crash-admin"),
    )
}

impl Lab {
    /// Builds one VM per `(name, big)` and starts the server and the connector; the catalog is
    /// imported.
    pub async fn start(vms: Vec<(String, bool)>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        Self::start_in(dir, data, vms).await
    }

    /// Like [`Lab::start`], with the server's data directory at `data`.
    pub async fn start_in(dir: tempfile::TempDir, data: PathBuf, vms: Vec<(String, bool)>) -> Self {
        let proxy = Proxy::start().await;
        let server = Server::start(&data, &dir.path().join("server.log"), None).await;
        proxy.point_at(server.port);
        let client = admin(&server.endpoint());
        let mut rng = Rng::new(0x7e27);
        let disk_dir = dir.path().join("disks");
        std::fs::create_dir_all(&disk_dir).expect("disk dir");
        let mut inventory = String::from(
            "vm_manager_id = \"crash-lab\"\nvm_manager_name = \"lab\"\nvm_manager_type = \"VSPHERE\"\n",
        );
        let mut list = Vec::new();
        for (i, (name, big)) in vms.iter().enumerate() {
            let blocks = if *big { BIG_BLOCKS } else { SMALL_BLOCKS };
            let disk = disk_dir.join(format!("{name}.raw"));
            let data_bytes = disks::create(&disk, blocks, &mut rng);
            inventory.push_str(&format!(
                "\n[[vms]]\nid = \"vm-{i}\"\nname = {name:?}\nos_type = \"LINUX\"\ndisks = [{{ path = {:?}, format = \"raw\" }}]\n",
                disk.display().to_string()
            ));
            list.push(Vm {
                disk,
                blocks,
                data_bytes,
                changed_blocks: if *big { BIG_CHANGE } else { SMALL_CHANGE },
                server_id: String::new(),
                job_id: None,
                runs: Vec::new(),
            });
        }
        let connector_config = procs::write_connector_config(
            &dir.path().join("connector"),
            &proxy.endpoint(),
            &data.join("credentials"),
            &inventory,
            BANDWIDTH_MBPS,
        );
        let connector =
            Connector::start(&connector_config, &dir.path().join("connector.log")).await;
        let manifests = Arc::new(Mutex::new(HashMap::new()));
        let watch = spawn_manifest_watch(data.clone(), manifests.clone());
        let mut lab = Lab {
            dir,
            data,
            server: Some(server),
            server_pause: None,
            connector: Some(connector),
            connector_config,
            proxy,
            client,
            vms: list,
            manifests,
            rng,
            amis: Vec::new(),
            lines: Vec::new(),
            watch,
        };
        lab.import_catalog().await;
        lab
    }

    async fn import_catalog(&mut self) {
        let client = self.client.clone();
        self.poll("the connector registers", 60, || {
            let client = client.clone();
            async move {
                let out = client.get_connectors().send().await.ok()?;
                (!out.connector_list().is_empty()).then_some(())
            }
        })
        .await;
        self.client
            .import_server_catalog()
            .send()
            .await
            .expect("ImportServerCatalog");
        let want = self.vms.len();
        let servers = self
            .poll("the catalog lists every VM", 60, || {
                let client = client.clone();
                async move {
                    let out = client.get_servers().max_results(100).send().await.ok()?;
                    (out.server_list().len() == want).then(|| out.server_list().to_vec())
                }
            })
            .await;
        for s in servers {
            let vm_id = s
                .vm_server()
                .and_then(|v| v.vm_server_address())
                .and_then(|a| a.vm_id())
                .expect("vmId");
            let i: usize = vm_id.trim_start_matches("vm-").parse().expect("vm index");
            self.vms[i].server_id = s.server_id().expect("serverId").to_owned();
        }
    }

    /// Polls `f` every 50 ms until it gives a value, for at most `secs` seconds.
    async fn poll<T, F, Fut>(&self, what: &str, secs: u64, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if Instant::now() > deadline {
                self.fail(&format!("timed out after {secs} s waiting until {what}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics with `message` and the logs' tails. With `CRASH_KEEP` set the test's directory
    /// (data, logs, disks) is kept for a post-mortem.
    pub fn fail(&self, message: &str) -> ! {
        let kept = match std::env::var_os("CRASH_KEEP") {
            Some(to) => {
                let ok = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(self.dir.path())
                    .arg(&to)
                    .status()
                    .is_ok_and(|s| s.success());
                format!("\n(copied to {}: {ok})", Path::new(&to).display())
            }
            None => String::new(),
        };
        panic!(
            "{message}{kept}\n--- server log (tail) ---\n{}\n--- connector log (tail) ---\n{}",
            procs::tail(&self.dir.path().join("server.log")),
            procs::tail(&self.dir.path().join("connector.log"))
        );
    }

    async fn restart_server(&mut self, pause: Option<&str>) {
        if let Some(s) = self.server.take() {
            s.kill().await;
        }
        for entry in std::fs::read_dir(&self.data).expect("data dir").flatten() {
            if entry.file_name().to_string_lossy().starts_with("paused-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let server = Server::start(&self.data, &self.dir.path().join("server.log"), pause).await;
        self.proxy.point_at(server.port);
        self.client = admin(&server.endpoint());
        self.server = Some(server);
        self.server_pause = pause.map(String::from);
    }

    async fn restart_connector(&mut self) {
        if let Some(c) = self.connector.take() {
            c.kill().await;
        }
        self.connector = Some(
            Connector::start(
                &self.connector_config,
                &self.dir.path().join("connector.log"),
            )
            .await,
        );
    }

    /// The seed and one incremental run of VM `i`, each with a kill of `victim` at its trigger.
    pub async fn scenario(
        &mut self,
        i: usize,
        name: &str,
        victim: Victim,
        seed: Trigger,
        incremental: Trigger,
    ) {
        self.prepare_server(victim, seed).await;
        let sent_before = self.proxy.sent();
        let (job_id, run_id) = self.start_seed(i).await;
        let expected = self.vms[i].data_bytes;
        self.fire(victim, seed, &job_id, &run_id, expected).await;
        self.check_run(i, &format!("{name} seed"), &run_id, Some(sent_before))
            .await;

        let blocks = self.change_disk(i);
        self.prepare_server(victim, incremental).await;
        let sent_before = self.proxy.sent();
        let run_id = self.start_incremental(i).await;
        self.fire(victim, incremental, &job_id, &run_id, blocks * BLOCK)
            .await;
        self.check_run(
            i,
            &format!("{name} incremental"),
            &run_id,
            Some(sent_before),
        )
        .await;
    }

    /// Creates VM `i`'s job; the scheduler starts the seed at seedReplicationTime (now).
    pub async fn start_seed(&mut self, i: usize) -> (String, String) {
        let job_id = self
            .client
            .create_replication_job()
            .server_id(&self.vms[i].server_id)
            .seed_replication_time(DateTime::from_secs(now_secs()))
            .frequency(12)
            .number_of_recent_amis_to_keep(2)
            .send()
            .await
            .expect("CreateReplicationJob")
            .replication_job_id()
            .expect("job id")
            .to_owned();
        self.vms[i].job_id = Some(job_id.clone());
        let client = self.client.clone();
        let run_id = self
            .poll("the seed run is scheduled", 30, || {
                let (client, job_id) = (client.clone(), job_id.clone());
                async move {
                    let out = client
                        .get_replication_runs()
                        .replication_job_id(&job_id)
                        .send()
                        .await
                        .ok()?;
                    out.replication_run_list()
                        .first()
                        .and_then(|r| r.replication_run_id())
                        .map(String::from)
                }
            })
            .await;
        self.vms[i].runs.push(run_id.clone());
        (job_id, run_id)
    }

    /// Changes VM `i`'s disk for its next incremental run; returns the blocks changed.
    pub fn change_disk(&mut self, i: usize) -> u64 {
        disks::change(
            &self.vms[i].disk,
            self.vms[i].blocks,
            self.vms[i].changed_blocks,
            &mut self.rng,
        )
    }

    /// An on-demand run of VM `i`'s job.
    pub async fn start_incremental(&mut self, i: usize) -> String {
        let job_id = self.vms[i].job_id.clone().expect("job");
        let run_id = self
            .client
            .start_on_demand_replication_run()
            .replication_job_id(&job_id)
            .send()
            .await
            .expect("StartOnDemandReplicationRun")
            .replication_run_id()
            .expect("run id")
            .to_owned();
        self.vms[i].runs.push(run_id.clone());
        run_id
    }

    /// Bytes the connector has sent so far.
    pub fn sent(&self) -> u64 {
        self.proxy.sent()
    }

    /// Waits until the connector sent `bytes` more than `from`.
    pub async fn wait_sent(&self, from: u64, bytes: u64) {
        let proxy = self.proxy.clone();
        self.poll(&format!("{bytes} bytes went through"), 120, || {
            let sent = proxy.sent() - from;
            async move { (sent >= bytes).then_some(()) }
        })
        .await;
    }

    /// Waits until the server's log has a line containing `text`; returns it.
    /// Waits until the server logs a line holding any of `texts`; returns the line.
    pub async fn wait_log(&self, texts: &[&str], secs: u64) -> String {
        let log = self.dir.path().join("server.log");
        self.poll(&format!("the server logs one of {texts:?}"), secs, || {
            let log = log.clone();
            async move {
                let all = std::fs::read_to_string(&log).ok()?;
                all.lines()
                    .find(|l| texts.iter().any(|t| l.contains(t)))
                    .map(String::from)
            }
        })
        .await
    }

    /// Waits until the server holds run `run_id` at pause point `point` (see
    /// [`Trigger::Hold`]); [`Lab::release`] lets it go on.
    ///
    /// A task of an earlier run may arrive first: the server was restarted before that run's
    /// workflow had recorded the task's result (the run itself already reads COMPLETED), so the
    /// task runs again (at-least-once). Such a hold is let go.
    pub async fn wait_held(&mut self, point: &'static str, run_id: &str) {
        let marker = self.data.join(format!("paused-{point}"));
        let run = run_id.to_string();
        self.poll(
            &format!("the server pauses at {point} for {run_id}"),
            120,
            || {
                let (m, run) = (marker.clone(), run.clone());
                async move {
                    let detail = std::fs::read_to_string(&m).ok()?;
                    if detail.contains(&run) {
                        return Some(());
                    }
                    eprintln!("held at {point} for {detail:?}, an earlier run's task: let go");
                    let _ = std::fs::remove_file(&m);
                    None
                }
            },
        )
        .await;
    }

    /// Starts the server again with pause point `point` (no run is held yet).
    pub async fn restart_with_pause(&mut self, point: &'static str) {
        self.restart_server(Some(point)).await;
    }

    /// Lets a server held at `point` go on.
    pub fn release(&self, point: &str) {
        std::fs::remove_file(self.data.join(format!("paused-{point}"))).expect("release");
    }

    /// Whether the server process is still running (not exited by itself).
    pub fn server_alive(&mut self) -> bool {
        self.server.as_mut().is_some_and(Server::alive)
    }

    pub fn client(&self) -> &tern_acceptance::aws_sdk_sms::Client {
        &self.client
    }

    pub fn job_id(&self, i: usize) -> String {
        self.vms[i].job_id.clone().expect("job")
    }

    /// Starts the server with the pause point the trigger needs, or without one if the last
    /// start had one.
    async fn prepare_server(&mut self, victim: Victim, trigger: Trigger) {
        let pause = match (victim, trigger) {
            (Victim::Server, Trigger::Pause(p)) | (_, Trigger::Hold(p)) => Some(p),
            _ => None,
        };
        if pause.is_some() || self.server_pause.is_some() {
            self.restart_server(pause).await;
        }
    }

    pub async fn fire(
        &mut self,
        victim: Victim,
        trigger: Trigger,
        job_id: &str,
        run_id: &str,
        expected_bytes: u64,
    ) {
        let staged = self
            .data
            .join(format!("staging/tern-staging/runs/{job_id}/{run_id}"));
        let manifest = staged.join("manifest.json");
        match trigger {
            Trigger::Uploading => {
                let start = self.proxy.sent();
                let proxy = self.proxy.clone();
                let goal = expected_bytes * 2 / 5;
                self.poll("40 % of the upload went through", 120, || {
                    let sent = proxy.sent() - start;
                    async move { (sent >= goal).then_some(()) }
                })
                .await;
                if manifest.exists() {
                    self.fail(&format!(
                        "run {run_id}: the upload finished before the kill could land in it"
                    ));
                }
            }
            Trigger::ManifestLanded => {
                self.poll("the manifest lands", 120, || {
                    let m = manifest.clone();
                    async move { m.exists().then_some(()) }
                })
                .await;
            }
            Trigger::Pause(point) | Trigger::Hold(point) => {
                self.wait_held(point, run_id).await;
            }
        }
        match victim {
            Victim::Server => self.restart_server(None).await,
            Victim::Connector => self.restart_connector().await,
        }
        if let Trigger::Hold(point) = trigger {
            let marker = self.data.join(format!("paused-{point}"));
            std::fs::remove_file(&marker).expect("release the held server");
        }
    }

    /// Waits for the run to end and checks everything a crash must not break.
    /// With `sent_before` (the proxy's count when the run started), the connector's bytes are
    /// checked too.
    pub async fn check_run(
        &mut self,
        i: usize,
        what: &str,
        run_id: &str,
        sent_before: Option<u64>,
    ) {
        let started = Instant::now();
        let job_id = self.vms[i].job_id.clone().expect("job");
        let client = self.client.clone();
        let run = self
            .poll(&format!("{what}: run {run_id} ends"), 240, || {
                let client = client.clone();
                let (job_id, run_id) = (job_id.clone(), run_id.to_string());
                async move {
                    let run = find_run(&client, &job_id, &run_id).await?;
                    let state = run.state()?.as_str().to_string();
                    matches!(state.as_str(), "COMPLETED" | "FAILED").then_some(run)
                }
            })
            .await;
        let state = run
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if state != "COMPLETED" {
            self.fail(&format!(
                "{what}: run {run_id} ended {state}: {}",
                run.status_message().unwrap_or_default()
            ));
        }
        let ami = run.ami_id().expect("a completed run has an AMI").to_owned();
        self.amis.push(ami.clone());

        // Exactly the runs that were started, once each.
        let runs = self
            .client
            .get_replication_runs()
            .replication_job_id(&job_id)
            .send()
            .await
            .expect("GetReplicationRuns");
        let mut ids: Vec<&str> = runs
            .replication_run_list()
            .iter()
            .filter_map(|r| r.replication_run_id())
            .collect();
        ids.sort_unstable();
        let mut want: Vec<&str> = self.vms[i].runs.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(ids, want, "{what}: the job's runs");
        let job_state = runs
            .replication_job()
            .and_then(|j| j.state())
            .map(|s| s.as_str().to_string());
        assert_eq!(job_state.as_deref(), Some("ACTIVE"), "{what}: job state");

        // The image's disk is the source disk.
        let export = self.dir.path().join("export.raw");
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["images", "export", &ami, "--disk", "0", "--to", "raw", "-o"])
            .arg(&export)
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .await
            .expect("tern images export runs");
        assert!(
            out.status.success(),
            "{what}: export of {ami} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(diff) = disks::first_difference(&export, &self.vms[i].disk) {
            self.fail(&format!(
                "{what}: image {ami} differs from the source disk: {diff}"
            ));
        }
        let _ = std::fs::remove_file(&export);

        // Nothing left behind: the run's staged objects, multipart uploads, snapshots no image
        // uses, images no run made, image tasks still going.
        let staged = self
            .data
            .join(format!("staging/tern-staging/runs/{job_id}/{run_id}"));
        let uploads = self.data.join("staging-internal/uploads");
        self.poll(
            &format!("{what}: the staged objects are deleted"),
            20,
            || {
                let (staged, uploads) = (staged.clone(), uploads.clone());
                async move {
                    let gone = dir_is_empty(&staged);
                    let no_uploads = no_open_uploads(&uploads);
                    (gone && no_uploads).then_some(())
                }
            },
        )
        .await;
        let leftovers = image_store_leftovers(&self.data, &self.amis);
        if !leftovers.is_empty() {
            self.fail(&format!("{what}: image store leftovers: {leftovers:?}"));
        }

        // What the connector sent against what the run needed.
        let Some(sent_before) = sent_before else {
            return;
        };
        let sent = self.proxy.sent() - sent_before;
        let objects: u64 = self
            .manifests
            .lock()
            .expect("manifests")
            .get(run_id)
            .and_then(|m| m["disks"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|d| d["size"].as_u64())
            .sum();
        if objects == 0 {
            self.fail(&format!("{what}: the run's manifest was never seen"));
        }
        let ratio = sent as f64 / objects as f64;
        let line = format!(
            "{what}: sent {sent} bytes for {objects} bytes of objects ({ratio:.3}x), ended {:.1} s after the kill",
            started.elapsed().as_secs_f64()
        );
        eprintln!("{line}");
        self.lines.push(line);
        assert!(
            ratio <= 1.10,
            "{what}: the connector sent {sent} bytes for {objects} bytes of objects ({ratio:.3}x > 1.10)"
        );
    }

    /// Integrity of every database once the matrix is done.
    pub async fn final_checks(&mut self) {
        for db in ["tern.db", "images.db", "states.db"] {
            let result = integrity(&self.data.join(db));
            assert_eq!(result, "ok", "PRAGMA integrity_check of {db}");
        }
    }

    pub fn report(&self) {
        for l in &self.lines {
            eprintln!("{l}");
        }
    }
}

async fn find_run(
    client: &tern_acceptance::aws_sdk_sms::Client,
    job_id: &str,
    run_id: &str,
) -> Option<ReplicationRun> {
    let out = client
        .get_replication_runs()
        .replication_job_id(job_id)
        .send()
        .await
        .ok()?;
    out.replication_run_list()
        .iter()
        .find(|r| r.replication_run_id() == Some(run_id))
        .cloned()
}

/// Every multipart upload of the staging store is completed (a completed one keeps its
/// `completed.json` for a while, so that a retried CompleteMultipartUpload gets its answer).
fn no_open_uploads(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .all(|e| e.path().join("completed.json").exists())
}

fn dir_is_empty(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => true,
    }
}

/// Copies every manifest that appears in staging, before a completed run's objects are
/// deleted. It samples the staging directory every 10 ms for the lab's whole life (a run keeps
/// its manifest for seconds at the least); it waits for nothing, so it has no bound of its own.
fn spawn_manifest_watch(
    data: PathBuf,
    manifests: Arc<Mutex<HashMap<String, Value>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let runs = data.join("staging/tern-staging/runs");
        loop {
            for job in std::fs::read_dir(&runs).into_iter().flatten().flatten() {
                for run in std::fs::read_dir(job.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let id = run.file_name().to_string_lossy().to_string();
                    if manifests.lock().expect("manifests").contains_key(&id) {
                        continue;
                    }
                    let Ok(bytes) = std::fs::read(run.path().join("manifest.json")) else {
                        continue;
                    };
                    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                        manifests.lock().expect("manifests").insert(id, v);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// What the image store holds that it should not: snapshots no image uses, images that are
/// not the AMI of a completed run, tasks still active.
fn image_store_leftovers(data: &Path, amis: &[String]) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("images.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("images.db opens");
    let strings = |sql: &str| -> Vec<String> {
        let mut stmt = conn.prepare(sql).expect("query");
        stmt.query_map([], |r| r.get::<_, String>(0))
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect()
    };
    let mut out = Vec::new();
    for s in strings(
        "SELECT snapshot_id FROM snapshots WHERE snapshot_id NOT IN (SELECT snapshot_id FROM block_devices)",
    ) {
        out.push(format!("snapshot {s} is used by no image"));
    }
    let wanted: HashSet<&str> = amis.iter().map(String::as_str).collect();
    for image in strings("SELECT image_id FROM images") {
        if !wanted.contains(image.as_str()) {
            out.push(format!("image {image} is the AMI of no completed run"));
        }
    }
    for t in strings("SELECT task_id FROM tasks WHERE state = 'active'") {
        out.push(format!("task {t} is still active"));
    }
    out
}

pub fn integrity(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("database opens");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .expect("integrity_check")
}
