//! Harness for Tern's acceptance and wire-compatibility tests.
//!
//! [`TestServer::start`] runs the real `tern serve` runtime (`tern_local::start`) on
//! `127.0.0.1:0` over a fresh temporary data directory and hands out what a client needs: an
//! `aws_sdk_sms::Client` signed with the administrator keys, the endpoint, both key pairs, a
//! raw-HTTP caller for requests no SDK would send, a connector agent fed by an inventory file, and
//! for the S3 staging store on the same endpoint an `aws_sdk_s3::Client` and the Object Created
//! events the server emitted.
//! Set `TEST_LOG=1` to see the server's logs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::SystemTime;

use aws_sdk_sms::config::{BehaviorVersion, Credentials, Region};
use serde_json::Value;
use tern_connector::{Agent, ConnectorConfig};
use tern_local::{Running, ServeConfig};

pub use aws_sdk_s3;
pub use aws_sdk_sms;
pub use tern_core::Config;

/// Region the test server signs for.
pub const REGION: &str = "us-east-1";
/// Full target of an SMS operation.
pub fn sms_target(operation: &str) -> String {
    format!("{}.{operation}", tern_api::SMS_TARGET_PREFIX)
}
/// Full target of a connector operation.
pub fn connector_target(operation: &str) -> String {
    format!("{}.{operation}", tern_api::CONNECTOR_TARGET_PREFIX)
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_test_writer()
                .try_init();
        }
    });
}

/// A running in-process `tern serve` with its own data directory.
pub struct TestServer {
    running: Option<Running>,
    dir: tempfile::TempDir,
    serve: ServeConfig,
    events: Arc<RecordingSink>,
    pub client: aws_sdk_sms::Client,
}

/// Keeps every S3 "Object Created" event the staging store emits.
#[derive(Default)]
pub struct RecordingSink(Mutex<Vec<Value>>);

impl tern_local::s3::ObjectCreatedSink for RecordingSink {
    fn object_created(&self, event: Value) {
        self.0.lock().expect("sink lock").push(event);
    }
}

/// A response as it came off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body's `__type` (the error shape name).
    pub fn error_type(&self) -> String {
        self.json()["__type"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestServer {
    /// Default limits.
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> Self {
        Self::start_with_clock(config, None).await
    }

    /// Like [`TestServer::start_with`], deciding schedules and limits by `clock` (a
    /// `ManualClock` the test moves) instead of the system clock.
    pub async fn start_with_clock(
        config: Config,
        clock: Option<std::sync::Arc<dyn tern_core::Clock>>,
    ) -> Self {
        Self::start_adjusted(config, clock, |_, _| {}).await
    }

    /// Like [`TestServer::start_with_clock`], letting `adjust` change the `tern serve`
    /// configuration first (given the scratch directory for files it names, e.g. a rules file).
    pub async fn start_adjusted(
        config: Config,
        clock: Option<std::sync::Arc<dyn tern_core::Clock>>,
        adjust: impl FnOnce(&mut ServeConfig, &Path),
    ) -> Self {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut serve = ServeConfig::new(
            dir.path().join("data"),
            "127.0.0.1:0".parse().expect("address"),
        );
        serve.region = REGION.into();
        serve.config = config;
        // The tests' VMs are synthetic disks (random or empty bytes, no partition table); the
        // preflight tests ask for every rule with `preflight_waive = Some("")`.
        if serve.config.preflight_waive.is_none() {
            serve.config.preflight_waive =
                Some(tern_core::service::preflight::rule::BOOT_DISK_UNPARTITIONED.into());
        }
        serve.clock = clock.map(tern_local::DomainClock);
        let events = Arc::new(RecordingSink::default());
        serve.object_created = Some(events.clone());
        // The scheduler only moves when a test calls `tick`, so runs stay where a test put
        // them; the workflow engine and the image service run in real time.
        serve.replication = Some(tern_local::ReplicationOptions {
            tick_interval: std::time::Duration::from_secs(24 * 3600),
            // LaunchApp's guests run under TCG: deterministic on any host.
            launcher: tern_local::launcher::LauncherOptions {
                accel: tern_local::guest::Accel::Tcg,
                ..Default::default()
            },
            ..Default::default()
        });
        adjust(&mut serve, dir.path());
        let running = tern_local::start(serve.clone())
            .await
            .expect("tern serve starts");
        let client = sms_client(&running.endpoint(), admin_of(&running));
        Self {
            running: Some(running),
            dir,
            serve,
            events,
            client,
        }
    }

    /// Stops the server and starts it again on the same data directory (on a new port:
    /// clients made before the restart must be made again).
    pub async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        let running = tern_local::start(self.serve.clone())
            .await
            .expect("tern serve starts again");
        self.client = sms_client(&running.endpoint(), admin_of(&running));
        self.running = Some(running);
    }

    /// One pass of the scheduler (due runs, pending executions, lost hand-overs, events).
    pub async fn tick(&self) -> tern_core::replication::TickReport {
        self.replication().tick().await.expect("scheduler tick")
    }

    /// The replication use cases of the running server.
    pub fn replication(&self) -> &tern_core::replication::Replication {
        self.running()
            .replication()
            .expect("replication runs")
            .replication()
    }

    /// The running server (its event bus, replication runtime, keys).
    pub fn running_server(&self) -> &Running {
        self.running()
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.serve.data_dir
    }

    /// The S3 "Object Created" events emitted so far, oldest first.
    pub fn object_events(&self) -> Vec<Value> {
        self.events.0.lock().expect("sink lock").clone()
    }

    /// An S3 client for the staging store, signed with the administrator keys.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint(), self.admin())
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("server running")
    }

    pub fn endpoint(&self) -> String {
        self.running().endpoint()
    }

    pub fn admin(&self) -> Credentials {
        admin_of(self.running())
    }

    pub fn connector(&self) -> Credentials {
        let c = self.running().connector();
        Credentials::new(
            &c.access_key_id,
            &c.secret_access_key,
            None,
            None,
            "tern-connector",
        )
    }

    pub fn credentials_file(&self) -> PathBuf {
        self.running().credentials_file().to_owned()
    }

    /// A scratch directory next to the server's data directory.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// An SDK client with other credentials (e.g. the connector's, to check they are refused).
    pub fn client_with(&self, credentials: Credentials) -> aws_sdk_sms::Client {
        sms_client(&self.endpoint(), credentials)
    }

    /// POSTs `body` to `/` with `target`, signed with `credentials` when given.
    pub async fn raw(
        &self,
        target: Option<&str>,
        body: &[u8],
        credentials: Option<&Credentials>,
    ) -> RawResponse {
        self.raw_at(target, body, credentials, SystemTime::now(), |_| {})
            .await
    }

    /// Like [`TestServer::raw`], signing as of `time`, and letting `tamper` change the signed
    /// headers before sending.
    pub async fn raw_at(
        &self,
        target: Option<&str>,
        body: &[u8],
        credentials: Option<&Credentials>,
        time: SystemTime,
        tamper: impl FnOnce(&mut Vec<(String, String)>),
    ) -> RawResponse {
        let url = format!("{}/", self.endpoint());
        let mut headers: Vec<(String, String)> =
            vec![("content-type".into(), tern_api::CONTENT_TYPE.into())];
        if let Some(t) = target {
            headers.push(("x-amz-target".into(), t.into()));
        }
        if let Some(c) = credentials {
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let signed = tern_connector::signing::sign_post(c, REGION, &url, &pairs, body, time)
                .expect("signing");
            headers.extend(signed);
        }
        tamper(&mut headers);
        let mut request = reqwest::Client::new().post(&url).body(body.to_vec());
        for (n, v) in &headers {
            request = request.header(n.as_str(), v.as_str());
        }
        let response = request.send().await.expect("request reaches the server");
        RawResponse {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await.expect("response body").to_vec(),
        }
    }

    /// Writes an inventory file and a connector config (with the connector keys from the
    /// server's credentials file) under the scratch dir; returns the config file's path.
    pub fn write_connector_config(&self, name: &str, inventory_toml: &str) -> PathBuf {
        let dir = self.scratch().join(name);
        std::fs::create_dir_all(&dir).expect("connector dir");
        std::fs::write(dir.join("inventory.toml"), inventory_toml).expect("inventory");
        self.write_connector_source(name, "[files]\ninventory = \"inventory.toml\"\n")
    }

    /// Writes `SCRATCH/NAME/connector.toml` for this server, whose source is the TOML section
    /// `source` (`[files]` or `[libvirt]`); returns its path.
    pub fn write_connector_source(&self, name: &str, source: &str) -> PathBuf {
        let dir = self.scratch().join(name);
        std::fs::create_dir_all(&dir).expect("connector dir");
        let config = format!(
            "endpoint = {endpoint:?}\nregion = {REGION:?}\nname = {name:?}\nprofile = \"connector\"\ncredentials_file = {creds:?}\nstate_dir = \"state\"\nheartbeat_interval_secs = 1\npoll_interval_secs = 1\n\n{source}",
            endpoint = self.endpoint(),
            creds = self.credentials_file().display().to_string(),
        );
        let path = dir.join("connector.toml");
        std::fs::write(&path, config).expect("connector config");
        path
    }

    /// A connector agent over `inventory_toml` (not yet registered).
    pub async fn connector_agent(&self, name: &str, inventory_toml: &str) -> Agent {
        let path = self.write_connector_config(name, inventory_toml);
        let config = ConnectorConfig::load(&path).expect("connector config loads");
        Agent::new(config).await.expect("agent starts")
    }

    /// Registers a connector over an inventory of `vm_count` VMs (`vm-0`, `vm-1`, …, manager
    /// `vc-test`), imports the catalog through the SMS API and lets the connector answer.
    /// Returns the agent and the catalog's server ids in VM order.
    pub async fn import_catalog(&self, vm_count: usize) -> (Agent, Vec<String>) {
        let mut agent = self
            .connector_agent("lab", &inventory_toml("vc-test", vm_count))
            .await;
        agent.run_once().await.expect("connector registers");
        self.client
            .import_server_catalog()
            .send()
            .await
            .expect("ImportServerCatalog");
        let report = agent.poll_once().await.expect("connector polls");
        assert_eq!(
            report.inventories_reported, 1,
            "one inventory request answered: {report:?}"
        );
        let servers: Vec<_> = self
            .client
            .get_servers()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .expect("GetServers");
        let mut ids = Vec::with_capacity(vm_count);
        for i in 0..vm_count {
            let vm_id = format!("vm-{i}");
            let server = servers
                .iter()
                .find(|s| {
                    s.vm_server()
                        .and_then(|v| v.vm_server_address())
                        .and_then(|a| a.vm_id())
                        == Some(vm_id.as_str())
                })
                .unwrap_or_else(|| panic!("{vm_id} is in the catalog"));
            ids.push(server.server_id().expect("serverId").to_owned());
        }
        (agent, ids)
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

impl Drop for TestServer {
    /// Guests LaunchApp started outlive the server (as instances do); a test that stops
    /// half-way must not leave them running.
    fn drop(&mut self) {
        for stack in tern_local::launcher::list(&self.serve.data_dir).unwrap_or_default() {
            for i in &stack.instances {
                let _ = tern_local::launcher::stop_instance(i);
            }
        }
    }
}

fn admin_of(running: &Running) -> Credentials {
    let c = running.admin();
    Credentials::new(
        &c.access_key_id,
        &c.secret_access_key,
        None,
        None,
        "tern-admin",
    )
}

/// An SDK client for `endpoint`. Retries are off so that every error surfaces as sent.
pub fn sms_client(endpoint: &str, credentials: Credentials) -> aws_sdk_sms::Client {
    let config = aws_sdk_sms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .retry_config(aws_sdk_sms::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_sms::Client::from_conf(config)
}

/// An S3 client for `endpoint` (path-style, as the local endpoint needs). Retries are off so
/// that every error surfaces as sent.
pub fn s3_client(endpoint: &str, credentials: Credentials) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(credentials)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// An inventory file of `count` Linux VMs named `web0…`, ids `vm-0…`, under `manager`.
pub fn inventory_toml(manager: &str, count: usize) -> String {
    let mut s = format!(
        "vm_manager_id = {manager:?}\nvm_manager_name = \"vcenter.test\"\nvm_manager_type = \"VSPHERE\"\n"
    );
    for i in 0..count {
        s.push_str(&format!(
            "\n[[vms]]\nid = \"vm-{i}\"\nname = \"web{i}\"\nfolder = \"/DC1/vm/web\"\nos_type = \"LINUX\"\ndisks = [\"/images/web{i}.qcow2\"]\n"
        ));
    }
    s
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}
