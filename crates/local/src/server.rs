//! `tern serve`: the SMS-compatible API and the S3 staging store over HTTP on one machine.
//!
//! One listener serves both, told apart by the request line: `POST /` is the SMS API (awsJson
//! always posts to `/`, and S3 has no operation there, since path-style S3 requests name a
//! bucket in the path); everything else is S3 ([`crate::s3`]). An SMS request must carry a
//! valid SigV4 signature (service `sms`, the configured region) made with one of the local key
//! pairs; the authenticated principal and the raw body then go to [`tern_api::Api::handle`],
//! which owns everything protocol-level.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::Router;
use tern_api::{Api, Deps, Principal, Response as ApiResponse, CONTENT_TYPE};
use tern_core::{RandomIds, Store, SystemClock};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::credentials::{self, Credentials, CredentialsError};
use crate::s3::ObjectCreatedSink;
use crate::sigv4::{AuthError, Verifier};

/// SigV4 signing name of the API (the SMS model's `signingName`).
pub const SERVICE: &str = "sms";
/// Largest request body accepted. Matches what the `api` Lambda can receive (6 MB invocation
/// payload), so a request that works locally also fits the AWS deployment.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;
/// How much of an over-long body is read (and thrown away) before the 413 is sent. Most HTTP
/// clients (Python's http.client, reqwest, curl without `Expect: 100-continue`) write the whole
/// body before they read anything; a server that answers and closes while they are still
/// writing makes them fail with a broken pipe or a reset instead of showing the 413. Draining
/// lets every such client read the answer. The bound keeps a hostile client from making the
/// server read without end: four times the limit (24 MiB) covers any plausible mistake (a
/// request a few megabytes too large), and a body declared larger than that is refused at once,
/// since reading it would cost more than the client's confusion is worth.
pub const DRAIN_BYTES: u64 = 4 * MAX_BODY_BYTES as u64;
/// Longest time spent draining (a client sending 24 MiB at ~3 MB/s finishes in time); a slower
/// client gets the 413 when it runs out, and the connection is closed.
pub const DRAIN_TIME: Duration = Duration::from_secs(8);
/// File name of the SQLite database inside the data directory.
pub const DATABASE_FILE: &str = "tern.db";
/// Every published event is appended here (NDJSON) unless the rules file names an archive.
pub const EVENTS_FILE: &str = "events.ndjson";
/// How long [`Running::shutdown`] waits for in-flight requests before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Events' `source` on `tern serve` unless configured (`event_source`): the one SMS used, so
/// rules written for SMS (`"source": ["aws.sms"]`) match unmodified. Nothing on one machine
/// reserves it, unlike EventBridge.
pub const LOCAL_EVENT_SOURCE: &str = "aws.sms";

/// What `tern serve` needs to start.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Holds `tern.db` and `credentials`; created when missing.
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (see [`Running::addr`]).
    pub listen: SocketAddr,
    /// Region clients must sign for.
    pub region: String,
    /// Administrator keys to use instead of generated ones (not written to disk).
    pub credentials: Option<Credentials>,
    pub config: tern_core::Config,
    /// Receives an S3 "Object Created" event for every object the staging store creates.
    pub object_created: Option<Arc<dyn ObjectCreatedSink>>,
    /// Event rules file (EventBridge patterns and targets, see the README); without one,
    /// events are still archived to `DIR/events.ndjson` and seen by in-process subscribers.
    pub rules: Option<PathBuf>,
    /// Replication: the workflow engine, the image service and the scheduler. `None` serves
    /// only the API and the staging store.
    pub replication: Option<ReplicationOptions>,
    /// The clock the domain decides by (schedules, connector health, limit windows); `None`
    /// is the system clock. Tests and demos move a [`tern_core::ManualClock`] instead of waiting.
    pub clock: Option<DomainClock>,
}

/// A clock shared with the server (see [`ServeConfig::clock`]).
#[derive(Clone)]
pub struct DomainClock(pub Arc<dyn tern_core::Clock>);

impl std::fmt::Debug for DomainClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DomainClock({})", self.0.now())
    }
}

/// How `tern serve` replicates.
#[derive(Debug, Clone)]
pub struct ReplicationOptions {
    pub settings: tern_core::replication::ReplicationSettings,
    /// How often the scheduler looks for due runs.
    pub tick_interval: Duration,
    /// How LaunchApp runs application instances as QEMU guests.
    pub launcher: crate::launcher::LauncherOptions,
}

impl Default for ReplicationOptions {
    fn default() -> Self {
        Self {
            settings: Default::default(),
            tick_interval: Duration::from_secs(1),
            launcher: Default::default(),
        }
    }
}

impl ServeConfig {
    /// Defaults for everything but the data directory and the address: region `us-east-1`,
    /// generated administrator keys, default limits.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            region: "us-east-1".into(),
            credentials: None,
            config: tern_core::Config::default(),
            object_created: None,
            rules: None,
            replication: Some(ReplicationOptions::default()),
            clock: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid region {0:?}: expected a name like us-east-1")]
    Region(String),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot open the database {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: tern_core::store::StoreError,
    },
    #[error("cannot open the staging store in {path}: {source}")]
    Staging {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad event rules: {0}")]
    Rules(#[from] crate::bus::RulesError),
    #[error("cannot start the event bus: {0}")]
    Bus(#[from] crate::bus::BusSetupError),
    #[error(transparent)]
    Replication(#[from] crate::replication::RuntimeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started server. Dropping it also starts a graceful shutdown, without waiting for it; call
/// [`Running::shutdown`] to stop and wait until the listener is closed.
pub struct Running {
    addr: SocketAddr,
    admin: Credentials,
    connector: Credentials,
    credentials_file: PathBuf,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    bus: crate::bus::LocalBus,
    replication: Option<(crate::replication::ReplicationRuntime, JoinHandle<()>)>,
    launch: Option<String>,
}

impl Running {
    /// How LaunchApp runs instances here (the QEMU and accelerator), or why it cannot; `None`
    /// without replication.
    pub fn launch_summary(&self) -> Option<&str> {
        self.launch.as_deref()
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, ready for `--endpoint-url`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Administrator keys (profile `[default]` of the credentials file unless overridden).
    pub fn admin(&self) -> &Credentials {
        &self.admin
    }

    /// Connector keys (profile `[connector]`).
    pub fn connector(&self) -> &Credentials {
        &self.connector
    }

    /// `DIR/credentials`.
    pub fn credentials_file(&self) -> &Path {
        &self.credentials_file
    }

    /// The local event bus: subscribe to see every event as it is published.
    pub fn events(&self) -> &crate::bus::LocalBus {
        &self.bus
    }

    /// The replication side, when it runs.
    pub fn replication(&self) -> Option<&crate::replication::ReplicationRuntime> {
        self.replication.as_ref().map(|(r, _)| r)
    }

    /// Stops accepting connections, lets in-flight requests finish (at most
    /// [`SHUTDOWN_GRACE`]), and returns once the listener is closed.
    pub async fn shutdown(self) {
        if let Some((runtime, listener)) = self.replication {
            listener.abort();
            runtime.shutdown();
        }
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => tracing::info!("server stopped"),
            Ok(Ok(Err(err))) => tracing::error!(error = %err, "server stopped with an error"),
            Ok(Err(err)) => tracing::error!(error = %err, "server task failed"),
            Err(_) => {
                tracing::warn!(
                    grace_secs = SHUTDOWN_GRACE.as_secs(),
                    "requests still running after the grace period; dropping them"
                );
                task.abort();
            }
        }
        self.bus.stop(BUS_GRACE).await;
    }
}

/// How long a shutdown lets the event bus attempt the deliveries due; the rest stay queued in
/// `bus.db` for the next start.
const BUS_GRACE: Duration = Duration::from_secs(5);

/// Opens the data directory, the credentials and the database, binds the listener and starts
/// serving in the background.
pub async fn start(cfg: ServeConfig) -> Result<Running, ServeError> {
    if !valid_region(&cfg.region) {
        return Err(ServeError::Region(cfg.region));
    }
    create_private_dir(&cfg.data_dir).map_err(|source| ServeError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let keys = credentials::load_or_create(&cfg.data_dir, cfg.credentials)?;
    let store = open_store(&cfg.data_dir.join(DATABASE_FILE))?;

    let clock: Arc<dyn tern_core::Clock> = match &cfg.clock {
        Some(c) => c.0.clone(),
        None => Arc::new(SystemClock),
    };
    let ids: Arc<dyn tern_core::Ids> = Arc::new(RandomIds);
    let event_source = cfg
        .config
        .event_source
        .clone()
        .unwrap_or_else(|| LOCAL_EVENT_SOURCE.to_string());
    let api = Api::new(Deps {
        store,
        clock: clock.clone(),
        ids: ids.clone(),
        config: cfg.config,
    });
    let mut bus_config = match &cfg.rules {
        Some(path) => crate::bus::BusConfig::load(path, &cfg.data_dir)?,
        None => crate::bus::BusConfig::new(&cfg.data_dir),
    };
    if bus_config.archive.is_none() {
        bus_config.archive = Some(cfg.data_dir.join(EVENTS_FILE));
    }
    let bus = crate::bus::LocalBus::new(bus_config)?;
    let mut launch = None;
    let replication = match &cfg.replication {
        Some(options) => {
            let origin = tern_core::events::EventOrigin::new(
                cfg.region.clone(),
                crate::s3::LOCAL_ACCOUNT_ID,
            )
            .with_source(event_source);
            let runtime = crate::replication::ReplicationRuntime::start(
                api.service().clone(),
                ids.clone(),
                clock.clone(),
                Arc::new(tern_core::replication::BusAnnouncer::new(
                    Arc::new(bus.clone()),
                    origin,
                )),
                crate::replication::RuntimeConfig {
                    data_dir: cfg.data_dir.clone(),
                    staging_root: cfg.data_dir.join(crate::s3::STAGING_DIR),
                    region: cfg.region.clone(),
                    tick_interval: options.tick_interval,
                    settings: options.settings.clone(),
                },
            )?;
            api.attach_replication(runtime.replication().clone());
            let qemu_launcher = crate::launcher::QemuLauncher::new(
                cfg.data_dir.clone(),
                cfg.region.clone(),
                options.launcher.clone(),
            );
            launch = Some(qemu_launcher.summary());
            let launcher: Arc<dyn tern_core::launcher::Launcher> = Arc::new(qemu_launcher);
            api.attach_launcher(launcher.clone());
            runtime.replication().attach_launcher(launcher);
            let listener = crate::replication::spawn_upload_listener(
                bus.subscribe(),
                runtime.replication().clone(),
            );
            Some((runtime, listener))
        }
        None => None,
    };
    let sink: Arc<dyn ObjectCreatedSink> = Arc::new(crate::replication::BusSink::new(
        bus.clone(),
        cfg.object_created.clone(),
    ));
    let verifier = Verifier::new(
        cfg.region.clone(),
        SERVICE,
        [
            (
                keys.admin.key_pair(),
                Principal::Admin {
                    id: keys.admin.access_key_id.clone(),
                },
            ),
            (
                keys.connector.key_pair(),
                Principal::Connector {
                    id: keys.connector.access_key_id.clone(),
                },
            ),
        ],
    );
    let s3 = crate::s3::build(crate::s3::StagingConfig {
        data_dir: &cfg.data_dir,
        region: &cfg.region,
        keys: vec![keys.admin.clone(), keys.connector.clone()],
        sink: Some(sink),
    })
    .await
    .map_err(|source| ServeError::Staging {
        path: cfg.data_dir.join(crate::s3::STAGING_DIR),
        source,
    })?;
    let app = router(Arc::new(AppState { api, verifier, s3 }));

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Connection info gives the staging store's events their source-ip-address.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            // A dropped sender also means "stop": nobody can ask any more.
            let _ = stopped.await;
        })
        .await
    });
    tracing::info!(endpoint = %format!("http://{addr}"), region = %cfg.region, data_dir = %cfg.data_dir.display(), "serving");
    Ok(Running {
        addr,
        admin: keys.admin,
        connector: keys.connector,
        credentials_file: keys.file,
        stop,
        task,
        bus,
        replication,
        launch,
    })
}

fn open_store(path: &Path) -> Result<Arc<dyn Store>, ServeError> {
    let store = crate::sqlite::SqliteStore::open(path).map_err(|source| ServeError::Store {
        path: path.to_owned(),
        source,
    })?;
    Ok(Arc::new(store))
}

/// Creates the data directory (and parents) readable only by its owner: it holds secrets and
/// the whole migration state. An existing directory is left as the user set it up.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 64
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

struct AppState {
    api: Api,
    verifier: Verifier<Principal>,
    s3: s3s::service::S3Service,
}

fn router(state: Arc<AppState>) -> Router {
    // One fallback handler instead of routes: both protocols answer every path and method
    // in their own error shapes, which axum's built-in 404/405 responses are not.
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(state: State<Arc<AppState>>, request: Request) -> axum::response::Response {
    if request.method() == Method::POST && request.uri().path() == "/" {
        handle(state, request).await
    } else {
        handle_s3(&state.s3, request).await
    }
}

async fn handle_s3(s3: &s3s::service::S3Service, request: Request) -> axum::response::Response {
    let started = Instant::now();
    let method = request.method().clone();
    let request = request.map(s3s::Body::http_body_unsync);
    let response = match s3.call(request).await {
        Ok(response) => response.map(Body::new),
        Err(err) => {
            // s3s answers S3 errors itself; this is a failure to even build a response.
            tracing::error!(error = ?err, "S3 request failed");
            let mut fallback = axum::response::Response::new(Body::empty());
            *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        }
    };
    tracing::info!(
        operation = %format!("S3 {method}"),
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

async fn handle(State(state): State<Arc<AppState>>, request: Request) -> axum::response::Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (response, principal) = process(&state, request, target.as_deref()).await;
    tracing::info!(
        request_id = %request_id,
        // Not `target`: that key is tracing's own (the module path) in JSON output.
        operation = target.as_deref().map(truncate_for_log).unwrap_or("-"),
        principal = principal.unwrap_or("-"),
        status = response.status,
        error_type = response.error_type.as_deref().unwrap_or("-"),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    to_http(response, &request_id)
}

/// Runs the request through the transport checks, authentication and the API. Returns the
/// response and the kind of principal that made it (for the log line).
async fn process(
    state: &AppState,
    request: Request,
    target: Option<&str>,
) -> (ApiResponse, Option<&'static str>) {
    let (parts, body) = request.into_parts();
    if parts.uri.path() != "/" {
        let message = format!(
            "No route for {} {}: the API is served at POST /",
            parts.method,
            parts.uri.path()
        );
        return (error(404, "NotFoundException", &message), None);
    }
    if parts.method != Method::POST {
        let message = format!(
            "Method {} is not allowed: the API accepts only POST /",
            parts.method
        );
        return (error(405, "MethodNotAllowedException", &message), None);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        // A client that asked `Expect: 100-continue` waits for our answer before sending.
        let waits = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits && declared.is_some_and(|n| n <= DRAIN_BYTES) {
            drain(body, 0).await;
        }
        return (too_large(), None);
    }
    let body = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => return (too_large(), None),
        Err(BodyError::Broken(err)) => {
            tracing::debug!(error = %err, "could not read request body");
            return (
                error(
                    400,
                    "SerializationException",
                    "Could not read the request body",
                ),
                None,
            );
        }
    };

    let principal = match state.verifier.verify(
        &parts.method,
        &parts.uri,
        &parts.headers,
        &body,
        SystemTime::now(),
    ) {
        Ok(principal) => principal,
        Err(err) => return (auth_error(&err), None),
    };
    let kind = match principal {
        Principal::Admin { .. } => "admin",
        Principal::Connector { .. } => "connector",
    };
    (
        state.api.handle(target, &body, &principal).await,
        Some(kind),
    )
}

enum BodyError {
    /// Over [`MAX_BODY_BYTES`] (and drained, see [`DRAIN_BYTES`]).
    TooLarge,
    /// The connection broke or the framing was bad.
    Broken(axum::Error),
}

/// The whole body, at most [`MAX_BODY_BYTES`] of it; a longer one (chunked, so its length was
/// not declared) is drained before the caller answers 413.
async fn read_body(mut body: Body) -> Result<bytes::Bytes, BodyError> {
    use http_body_util::BodyExt as _;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY_BYTES {
                drain(body, (buf.len() + data.len()) as u64).await;
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and discards the rest of `body` (of which `seen` bytes were read already) until it
/// ends, [`DRAIN_BYTES`] have been read, or [`DRAIN_TIME`] has passed.
async fn drain(mut body: Body, mut seen: u64) {
    use http_body_util::BodyExt as _;
    let read_all = async {
        while seen <= DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                Some(Err(_)) | None => return,
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIME, read_all).await.is_err() {
        tracing::debug!("gave up draining an over-long request body");
    }
}

fn too_large() -> ApiResponse {
    error(
        413,
        "RequestEntityTooLargeException",
        &format!("Request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn auth_error(err: &AuthError) -> ApiResponse {
    error(err.status(), err.error_type(), &err.to_string())
}

/// An error produced by the transport itself, in the same `__type`/`message` shape as the API's.
fn error(status: u16, error_type: &str, message: &str) -> ApiResponse {
    let body = serde_json::json!({ "__type": error_type, "message": message });
    ApiResponse {
        status,
        body: serde_json::to_vec(&body).unwrap_or_default(),
        error_type: Some(error_type.to_owned()),
    }
}

fn to_http(response: ApiResponse, request_id: &str) -> axum::response::Response {
    let mut builder = axum::response::Response::builder()
        .status(StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .header("x-amzn-RequestId", request_id);
    if let Some(error_type) = response
        .error_type
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        builder = builder.header("X-Amzn-ErrorType", error_type);
    }
    if response.status == 405 {
        builder = builder.header(header::ALLOW, "POST");
    }
    if response.status == 413 {
        // The body may not have been read to its end: the connection cannot carry another
        // request.
        builder = builder.header(header::CONNECTION, "close");
    }
    builder
        .body(Body::from(response.body))
        .unwrap_or_else(|err| {
            tracing::error!(error = %err, "could not build the HTTP response");
            let mut fallback = axum::response::Response::new(Body::empty());
            *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
}

/// Targets come from the client: keep log lines short whatever it sends.
fn truncate_for_log(target: &str) -> &str {
    match target.char_indices().nth(120) {
        Some((i, _)) => &target[..i],
        None => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_over_long_body_without_declared_length_is_recognised() {
        // A chunked upload has no Content-Length; the limit is then found while reading.
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..7)
            .map(|_| Ok(bytes::Bytes::from(vec![0u8; 1 << 20])))
            .collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        assert!(matches!(read_body(body).await, Err(BodyError::TooLarge)));
        let body = Body::from(vec![1u8; MAX_BODY_BYTES]);
        assert_eq!(
            read_body(body).await.ok().map(|b| b.len()),
            Some(MAX_BODY_BYTES)
        );
    }

    #[test]
    fn regions_are_checked() {
        assert!(valid_region("us-east-1"));
        assert!(valid_region("eu-central-2"));
        assert!(!valid_region(""));
        assert!(!valid_region("us east"));
        assert!(!valid_region("us-east-1/sms"));
    }

    #[test]
    fn transport_errors_carry_the_type_in_header_and_body() {
        let response = to_http(error(404, "NotFoundException", "no route"), "rid");
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["x-amzn-errortype"], "NotFoundException");
        assert_eq!(response.headers()["x-amzn-requestid"], "rid");
        assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
    }
}
