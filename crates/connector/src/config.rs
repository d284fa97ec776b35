//! The connector's configuration file (TOML, or JSON when the file name ends in `.json`).
//! Relative paths in it are relative to the directory of the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use serde::Deserialize;

use crate::ConnectorError;

/// `tern connector run --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Base URL of the Tern API, e.g. `http://127.0.0.1:8080`.
    pub endpoint: String,
    /// Region the requests are signed for (the server's region).
    #[serde(default = "default_region")]
    pub region: String,
    /// Name shown for this connector. Default: `tern-connector`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Connector access keys, given inline.
    #[serde(default)]
    pub credentials: Option<StaticCredentials>,
    /// Or: a profile of a shared-credentials file (`tern serve` writes `[connector]` into
    /// `DATA_DIR/credentials`). Without either, the usual AWS environment/profile chain is used.
    #[serde(default)]
    pub profile: Option<String>,
    /// The shared-credentials file holding `profile` (default: the usual AWS locations).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Where the connector keeps its registration (`connector.json`).
    pub state_dir: PathBuf,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_secs: u64,
    /// Seconds between polls for work.
    #[serde(default = "default_poll")]
    pub poll_interval_secs: u64,
    /// Per-request timeout, seconds.
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
    /// The `files` source: VMs listed in an inventory file.
    pub files: FilesSource,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSource {
    /// Path of the inventory file.
    pub inventory: PathBuf,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_name() -> String {
    "tern-connector".into()
}
fn default_heartbeat() -> u64 {
    60
}
fn default_poll() -> u64 {
    10
}
fn default_timeout() -> u64 {
    30
}

impl ConnectorConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConnectorError> {
        let err = |message: String| ConnectorError::Config {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut config: ConnectorConfig = if is_json(path) {
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        config.state_dir = base.join(&config.state_dir);
        config.files.inventory = base.join(&config.files.inventory);
        if let Some(file) = &config.credentials_file {
            config.credentials_file = Some(base.join(file));
        }
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(format!(
                "endpoint {:?} must be an http:// or https:// URL",
                self.endpoint
            ));
        }
        if self.credentials.is_some() && (self.profile.is_some() || self.credentials_file.is_some())
        {
            return Err("give either [credentials] or profile/credentials_file, not both".into());
        }
        if self.heartbeat_interval_secs == 0 || self.poll_interval_secs == 0 {
            return Err("heartbeat_interval_secs and poll_interval_secs must be at least 1".into());
        }
        if self.request_timeout_secs == 0 {
            return Err("request_timeout_secs must be at least 1".into());
        }
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// Resolves the credentials once, at start: inline keys, a profile, or the AWS default chain.
    pub async fn resolve_credentials(&self) -> Result<Credentials, ConnectorError> {
        if let Some(c) = &self.credentials {
            return Ok(Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.clone(),
                None,
                "tern-connector-config",
            ));
        }
        let result = if self.profile.is_some() || self.credentials_file.is_some() {
            use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
            let mut builder = aws_config::profile::ProfileFileCredentialsProvider::builder();
            if let Some(profile) = &self.profile {
                builder = builder.profile_name(profile);
            }
            if let Some(file) = &self.credentials_file {
                let files = EnvConfigFiles::builder()
                    .include_default_config_file(false)
                    .with_file(EnvConfigFileKind::Credentials, file)
                    .build();
                builder = builder.profile_files(files);
            }
            builder.build().provide_credentials().await
        } else {
            aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                .build()
                .await
                .provide_credentials()
                .await
        };
        result.map_err(|e| {
            let what = match (&self.profile, &self.credentials_file) {
                (Some(p), Some(f)) => format!("profile {p:?} of {}", f.display()),
                (Some(p), None) => format!("profile {p:?}"),
                (None, Some(f)) => format!("default profile of {}", f.display()),
                (None, None) => "the default AWS credential chain".into(),
            };
            ConnectorError::Credentials(format!(
                "{what}: {}",
                aws_credential_types::provider::error::CredentialsError::to_string(&e)
            ))
        })
    }
}

pub(crate) fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn toml_config_with_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "c.toml",
            r#"
endpoint = "http://127.0.0.1:8080"
state_dir = "state"
profile = "connector"
credentials_file = "data/credentials"
[files]
inventory = "inv.toml"
"#,
        );
        let c = ConnectorConfig::load(&p).unwrap();
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(60));
        assert_eq!(c.poll_interval(), Duration::from_secs(10));
        assert_eq!(c.state_dir, dir.path().join("state"));
        assert_eq!(c.files.inventory, dir.path().join("inv.toml"));
        assert_eq!(
            c.credentials_file,
            Some(dir.path().join("data/credentials"))
        );
    }

    #[test]
    fn json_config_with_inline_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "c.json",
            r#"{"endpoint":"http://h:1","region":"eu-west-1","stateDir":"x"}"#,
        );
        // Member names are snake_case in both formats; the error names the offending key.
        let err = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("stateDir"), "{err}");
        let p = write(
            dir.path(),
            "c.json",
            r#"{"endpoint":"http://h:1","region":"eu-west-1","state_dir":"/abs/state",
                "credentials":{"access_key_id":"AK","secret_access_key":"SK"},
                "heartbeat_interval_secs":5,"files":{"inventory":"/abs/inv.json"}}"#,
        );
        let c = ConnectorConfig::load(&p).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/abs/state"));
        assert_eq!(c.heartbeat_interval_secs, 5);
        assert!(
            !format!("{c:?}").contains("SK"),
            "secret must not be printed"
        );
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let base = "state_dir = \"s\"\n[files]\ninventory = \"i\"\n";
        let p = write(
            dir.path(),
            "a.toml",
            &format!("endpoint = \"ftp://x\"\n{base}"),
        );
        let err = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("http://"), "{err}");
        let p = write(
            dir.path(),
            "b.toml",
            &format!("endpoint = \"http://x\"\npoll_interval_secs = 0\n{base}"),
        );
        let err = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("poll_interval_secs"), "{err}");
        let p = write(dir.path(), "c.toml", "endpoint = \"http://x\"\n");
        let err = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("state_dir"), "{err}");
        let err = ConnectorConfig::load(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }

    #[tokio::test]
    async fn credentials_from_a_profile_in_a_given_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "credentials",
            "[default]\naws_access_key_id = ADMIN\naws_secret_access_key = a\n\n[connector]\naws_access_key_id = CONN\naws_secret_access_key = c\n",
        );
        let p = write(
            dir.path(),
            "c.toml",
            "endpoint = \"http://x\"\nstate_dir = \"s\"\nprofile = \"connector\"\ncredentials_file = \"credentials\"\n[files]\ninventory = \"i\"\n",
        );
        let c = ConnectorConfig::load(&p).unwrap();
        let creds = c.resolve_credentials().await.unwrap();
        assert_eq!(creds.access_key_id(), "CONN");
        assert_eq!(creds.secret_access_key(), "c");
    }
}
