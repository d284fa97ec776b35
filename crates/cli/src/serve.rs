//! `tern serve`: runs the local server until SIGINT or SIGTERM.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tern_local::{Credentials, ServeConfig};

const ENV_ACCESS_KEY_ID: &str = "TERN_ACCESS_KEY_ID";
const ENV_SECRET_ACCESS_KEY: &str = "TERN_SECRET_ACCESS_KEY";

#[derive(clap::Args)]
#[command(after_help = "\
Every request must be signed with SigV4 (service `sms`, the region given with --region).
Administrator keys come from TERN_ACCESS_KEY_ID and TERN_SECRET_ACCESS_KEY when both are set;
otherwise they are generated on first start and kept in DIR/credentials (profile [default]),
next to the connector keys (profile [connector]). Point any AWS client at the server with:

  export AWS_SHARED_CREDENTIALS_FILE=DIR/credentials AWS_REGION=us-east-1
  tern sms get-connectors --endpoint-url http://127.0.0.1:8080

Logs go to stderr, one line per request; RUST_LOG tunes the level (default: info).")]
pub struct ServeArgs {
    /// Directory for Tern's data: the SQLite databases (`tern.db`, `states.db`, `images.db`),
    /// the `credentials` file, the staging bucket's objects, the image block store and the
    /// event archive `events.ndjson`. Created when missing.
    #[arg(long, value_name = "DIR", env = "TERN_DATA_DIR")]
    data_dir: PathBuf,
    /// Address and port to listen on. Use port 0 to pick a free port.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:8080",
        env = "TERN_LISTEN"
    )]
    listen: SocketAddr,
    /// Region that clients must sign their requests for.
    #[arg(
        long,
        value_name = "REGION",
        default_value = "us-east-1",
        env = "TERN_REGION"
    )]
    region: String,
    /// Event rules: EventBridge patterns and their targets (webhook, NDJSON file, command).
    /// See the README section "Events" for the file format.
    #[arg(long, value_name = "FILE", env = "TERN_RULES")]
    rules: Option<PathBuf>,
    /// Limits and timings (TOML; every key optional, unknown keys refused, durations written
    /// like "90d", "10m", "30s"). See crates/cli/README.md, "Configuration file".
    #[arg(long, value_name = "FILE", env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// The `source` of the events Tern emits (default `aws.sms`, as SMS sent them, so rules
    /// written for SMS match unmodified; overrides `event_source` of the --config file).
    #[arg(long, value_name = "SOURCE", env = "TERN_EVENT_SOURCE")]
    event_source: Option<String>,
    /// How LaunchApp runs the application's instances as QEMU guests: kvm, tcg (software
    /// emulation), or auto (KVM when /dev/kvm may be opened, and TCG for a guest KVM shows
    /// nothing of within 10 s). The QEMU run is $TERN_QEMU_SYSTEM, else the boot kit's
    /// (scripts/boot-kit.sh), else qemu-system-x86_64 on PATH.
    #[arg(
        long,
        value_name = "ACCEL",
        default_value = "auto",
        env = "TERN_LAUNCH_ACCEL"
    )]
    launch_accel: tern_local::guest::Accel,
    /// The most memory one launched instance gets, in MiB, whatever its instance type has
    /// (the instance's record says when it got less).
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 2048,
        value_parser = clap::value_parser!(u32).range(64..),
        env = "TERN_LAUNCH_MAX_MEMORY_MIB"
    )]
    launch_max_memory_mib: u32,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Compact)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable key=value lines.
    Compact,
    /// One JSON object per line.
    Json,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    // Crash tests only (see tern_local::pause); nothing happens unless it is set.
    if let Some(points) = std::env::var_os("TERN_TEST_PAUSE_AT") {
        tern_local::pause::configure(&points.to_string_lossy(), &args.data_dir);
    }
    let credentials = admin_credentials(|name| std::env::var_os(name))?;
    let from_env = credentials.is_some();
    let mut config = match &args.config {
        Some(path) => load_config(path)?,
        None => tern_core::Config::default(),
    };
    if let Some(source) = &args.event_source {
        config.event_source = Some(source.clone());
        config.validate().context("--event-source")?;
    }
    let mut cfg = ServeConfig {
        region: args.region.clone(),
        config,
        credentials,
        rules: args.rules.clone(),
        ..ServeConfig::new(args.data_dir, args.listen)
    };
    if let Some(replication) = cfg.replication.as_mut() {
        replication.launcher.accel = args.launch_accel;
        replication.launcher.max_memory_mib = args.launch_max_memory_mib;
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut signals = Signals::new()?;
        let running = tern_local::start(cfg).await?;
        println!("Tern is serving the SMS-compatible API at {} (region {})", running.endpoint(), args.region);
        println!(
            "  and the S3 staging store (bucket {}) at the same URL, path-style",
            tern_local::s3::STAGING_BUCKET
        );
        if let Some(launch) = running.launch_summary() {
            println!("{launch}");
        }
        println!("Credentials file: {}", running.credentials_file().display());
        if from_env {
            println!("  administrator: the keys from {ENV_ACCESS_KEY_ID}/{ENV_SECRET_ACCESS_KEY}");
        } else {
            println!("  profile [default]: administrator");
        }
        println!("  profile [connector]: connector appliances");
        println!(
            "Try: AWS_SHARED_CREDENTIALS_FILE={} AWS_REGION={} tern sms get-connectors --endpoint-url {}",
            running.credentials_file().display(),
            args.region,
            running.endpoint()
        );
        let signal = signals.recv().await?;
        tracing::info!(signal, "shutting down");
        running.shutdown().await;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// Reads and validates a configuration file; every error names the file and the key.
fn load_config(path: &std::path::Path) -> anyhow::Result<tern_core::Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    parse_config(&text).with_context(|| format!("bad configuration file {}", path.display()))
}

fn parse_config(text: &str) -> anyhow::Result<tern_core::Config> {
    let config: tern_core::Config = toml::from_str(text)?;
    config.validate()?;
    Ok(config)
}

/// Administrator keys from the environment (`env` looks a variable up). Both variables or
/// neither: half a key pair is a mistake worth stopping for.
fn admin_credentials(
    env: impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<Option<Credentials>> {
    let read = |name: &str| match env(name) {
        Some(value) if value.is_empty() => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name} is not valid UTF-8")),
        None => Ok(None),
    };
    match (read(ENV_ACCESS_KEY_ID)?, read(ENV_SECRET_ACCESS_KEY)?) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Credentials {
            access_key_id,
            secret_access_key,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => anyhow::bail!(
            "{ENV_ACCESS_KEY_ID} is set but {ENV_SECRET_ACCESS_KEY} is not; set both or neither"
        ),
        (None, Some(_)) => anyhow::bail!(
            "{ENV_SECRET_ACCESS_KEY} is set but {ENV_ACCESS_KEY_ID} is not; set both or neither"
        ),
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // s3s logs every S3 error answer (a 404 included) at level error; the request line says
    // what matters, so its own logs are off unless RUST_LOG asks for them.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,s3s=off"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // try_init: a subscriber may already be installed (tests running several commands).
    let _ = match format {
        LogFormat::Compact => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// SIGINT and SIGTERM, listened for from creation on: set up before the server announces
/// itself, so a signal sent right after the announcement is never missed.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) -> anyhow::Result<&'static str> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => Ok("SIGINT"),
                _ = self.terminate.recv() => Ok("SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c()
                .await
                .context("cannot listen for Ctrl-C")?;
            Ok("Ctrl-C")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn config_file_errors_name_the_key() {
        let config =
            parse_config("work_lease = \"2m\"\n[limits]\nmax_active_jobs = 1000\n").unwrap();
        assert_eq!(config.limits.max_active_jobs, 1000);
        assert_eq!(config.work_lease, std::time::Duration::from_secs(120));
        let err = format!(
            "{:#}",
            parse_config("[limits]\nmax_active_job = 5\n").unwrap_err()
        );
        assert!(err.contains("max_active_job"), "{err}");
        let err = format!("{:#}", parse_config("work_lease = 600\n").unwrap_err());
        assert!(err.contains("work_lease"), "{err}");
        let err = format!(
            "{:#}",
            parse_config("[limits]\non_demand_window = \"1w\"\n").unwrap_err()
        );
        assert!(err.contains("on_demand_window"), "{err}");
        let err = format!(
            "{:#}",
            parse_config("[limits]\nmin_frequency_hours = 48\n").unwrap_err()
        );
        assert!(err.contains("limits.min_frequency_hours"), "{err}");
    }

    #[test]
    fn admin_keys_need_both_variables() {
        assert_eq!(admin_credentials(env(&[])).unwrap(), None);
        let both = admin_credentials(env(&[
            (ENV_ACCESS_KEY_ID, "AKID"),
            (ENV_SECRET_ACCESS_KEY, "secret"),
        ]))
        .unwrap();
        assert_eq!(
            both,
            Some(Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "secret".into()
            })
        );
        let err = admin_credentials(env(&[(ENV_ACCESS_KEY_ID, "AKID")])).unwrap_err();
        assert!(
            err.to_string().contains("TERN_SECRET_ACCESS_KEY is not"),
            "{err}"
        );
        let err = admin_credentials(env(&[(ENV_SECRET_ACCESS_KEY, "s")])).unwrap_err();
        assert!(
            err.to_string().contains("TERN_ACCESS_KEY_ID is not"),
            "{err}"
        );
        // An empty variable counts as unset, as in most shells' `VAR= cmd`.
        assert_eq!(
            admin_credentials(env(&[(ENV_ACCESS_KEY_ID, ""), (ENV_SECRET_ACCESS_KEY, "")]))
                .unwrap(),
            None
        );
    }
}
