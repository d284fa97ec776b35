//! The processes of a crash test: `tern serve` and `tern connector run` as children of the
//! test, and a TCP proxy in front of the server that counts what the connector sends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub const ADMIN_KEY: &str = "TERNCRASHADMIN000001";
pub const ADMIN_SECRET: &str = "crash-test-admin-secret-key-0000000000000";

fn tern() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "TERN_TEST_PAUSE_AT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "RUST_LOG",
            std::env::var("CRASH_LOG").unwrap_or_else(|_| "info,s3s=off".into()),
        )
        .kill_on_drop(true);
    cmd
}

fn log_file(path: &Path) -> Stdio {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file");
    Stdio::from(f)
}

/// A running `tern serve`.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    /// Starts `tern serve` on `data_dir` (port 0), with `pause` as `TERN_TEST_PAUSE_AT`, and
    /// waits for it to announce its endpoint.
    pub async fn start(data_dir: &Path, log: &Path, pause: Option<&str>) -> Self {
        // The harness's VMs are synthetic disks without a partition table.
        let config = log.with_file_name("tern-serve.toml");
        std::fs::write(&config, "preflight_waive = \"boot-disk-unpartitioned\"\n")
            .expect("serve config written");
        let mut cmd = tern();
        cmd.args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("TERN_ACCESS_KEY_ID", ADMIN_KEY)
            .env("TERN_SECRET_ACCESS_KEY", ADMIN_SECRET)
            .stdout(Stdio::piped())
            .stderr(log_file(log));
        if let Some(p) = pause {
            cmd.env("TERN_TEST_PAUSE_AT", p);
        }
        let mut child = cmd.spawn().expect("tern serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let announce = "Tern is serving the SMS-compatible API at http://";
        let port = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("stdout line") {
                if let Some(rest) = line.strip_prefix(announce) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    return addr.rsplit(':').next().and_then(|p| p.parse().ok());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "tern serve did not announce its endpoint; its log:\n{}",
                tail(log)
            )
        });
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9` and reap.
    pub async fn kill(mut self) {
        kill9(&mut self.child).await;
    }
}

/// A running `tern connector run`.
pub struct Connector {
    child: Child,
}

impl Connector {
    pub async fn start(config: &Path, log: &Path) -> Self {
        let child = tern()
            .args(["connector", "run", "--config"])
            .arg(config)
            .stdout(log_file(log))
            .stderr(log_file(log))
            .spawn()
            .expect("tern connector run starts");
        Connector { child }
    }

    pub async fn kill(mut self) {
        kill9(&mut self.child).await;
    }
}

async fn kill9(child: &mut Child) {
    child.start_kill().expect("SIGKILL");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("killed process exits")
        .expect("wait");
    assert!(
        !status.success(),
        "the process was killed, not finished: {status}"
    );
}

/// The last lines of a log, for failure messages, without the successful polling requests
/// (the test's GetReplicationRuns, the connector's PollWork and heartbeats) that would fill it.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let noise = ["GetReplicationRuns", "PollWork", "SendHeartbeat"];
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !(l.contains("status=200") && noise.iter().any(|n| l.contains(n))))
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Forwards 127.0.0.1:`port` to the server's current port and counts the bytes clients send
/// through it (the connector's requests: API calls and staging uploads).
#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    target: Arc<AtomicU16>,
    sent: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().expect("proxy addr").port();
        let proxy = Proxy {
            port,
            target: Arc::new(AtomicU16::new(0)),
            sent: Arc::new(AtomicU64::new(0)),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let target = p.target.load(Ordering::SeqCst);
                let sent = p.sent.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await {
                        pipe(client, server, sent).await;
                    }
                });
            }
        });
        proxy
    }

    pub fn point_at(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes sent by clients so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

async fn pipe(client: TcpStream, server: TcpStream, sent: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            sent.fetch_add(n as u64, Ordering::SeqCst);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Where the connector keeps its files.
pub fn write_connector_config(
    dir: &Path,
    endpoint: &str,
    credentials: &Path,
    inventory: &str,
    bandwidth_mbps: u64,
) -> PathBuf {
    std::fs::create_dir_all(dir).expect("connector dir");
    std::fs::write(dir.join("inventory.toml"), inventory).expect("inventory");
    let config = format!(
        "endpoint = {endpoint:?}\nregion = \"us-east-1\"\nname = \"crash\"\nprofile = \"connector\"\n\
         credentials_file = {creds:?}\nstate_dir = \"state\"\nheartbeat_interval_secs = 5\n\
         poll_interval_secs = 1\nrequest_timeout_secs = 10\n\n[files]\ninventory = \"inventory.toml\"\n\n\
         [staging]\npart_size_mib = 5\nbandwidth_limit_mbps = {bandwidth_mbps}.0\n",
        creds = credentials.display().to_string(),
    );
    let path = dir.join("connector.toml");
    std::fs::write(&path, config).expect("connector config");
    path
}
