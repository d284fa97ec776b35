//! The connector's configuration file (TOML, or JSON when the file name ends in `.json`).
//! Relative paths in it are relative to the directory of the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
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
    /// How API calls are signed. `"keys"` (the default): Tern-issued connector keys, signed
    /// for service `sms`, which `tern serve` and the stack's `SmsEndpoint` accept. `"iam"`: IAM
    /// credentials signed for `execute-api`, for the stack's `ApiEndpoint`, whose IAM authorizer
    /// checks them (a session of the stack's `ConnectorRoleName` role, `TernConnector` by
    /// default, is a connector). With `"iam"` the credentials are refreshed as they expire, and
    /// `[staging]` uploads use them too unless it names others: one identity for API and S3.
    #[serde(default)]
    pub api_auth: ApiAuth,
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
    /// Replication uploads that run at once; PollWork asks for no more items than there are
    /// free slots (plus one that waits), so the rest stay queued on the service.
    #[serde(default = "default_max_concurrent_uploads")]
    pub max_concurrent_uploads: usize,
    /// `[files]`: VMs listed in an inventory file. A connector serves one source: this,
    /// `[libvirt]` or `[vsphere]`.
    #[serde(default)]
    pub files: Option<FilesSource>,
    /// `[libvirt]`: the domains of a libvirt URI (needs a connector built with the `libvirt`
    /// feature).
    #[serde(default)]
    pub libvirt: Option<crate::libvirt::LibvirtSource>,
    /// `[vsphere]`: the VMs of a vCenter or ESXi host.
    #[serde(default)]
    pub vsphere: Option<crate::vsphere::VsphereSource>,
    /// Where and how replication runs upload (the S3 staging bucket).
    #[serde(default)]
    pub staging: StagingConfig,
}

/// `[staging]`: the S3 endpoint replication uploads go to, and the upload tunables.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagingConfig {
    /// S3 endpoint (path-style). Default: the API `endpoint`, since `tern serve` serves its
    /// staging store on the same URL.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Multipart part size in MiB (5 to 5120).
    #[serde(default = "default_part_size_mib")]
    pub part_size_mib: u64,
    /// Average upload rate cap in megabits per second; absent for no cap.
    #[serde(default)]
    pub bandwidth_limit_mbps: Option<f64>,
    /// Largest delta an incremental run may upload, GiB; past it the run fails and asks for a
    /// new seed.
    #[serde(default = "default_max_delta_gib")]
    pub max_delta_gib: u64,
    /// Where the upload credentials come from when they are not the API's (the default, what
    /// `tern serve` accepts). In the AWS deployment the API is signed with Tern-issued keys
    /// (the stack's `SmsEndpoint`), which S3 does not know: uploads then need IAM credentials
    /// allowed to write the staging bucket. `"aws"`: the default AWS credential chain
    /// (environment, profile, SSO, instance role), refreshed as they expire.
    #[serde(default)]
    pub credentials_from: CredentialsFrom,
    /// Or: a profile of a shared-credentials file (refreshed as the SDK does).
    #[serde(default)]
    pub profile: Option<String>,
    /// The shared-credentials file holding `profile`.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Or: keys given inline.
    #[serde(default)]
    pub credentials: Option<StaticCredentials>,
}

/// How API calls are signed (`api_auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiAuth {
    /// Tern-issued keys, service `sms`.
    #[default]
    Keys,
    /// IAM credentials, service `execute-api`.
    Iam,
}

/// Where `[staging]` takes its credentials from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialsFrom {
    /// The API's credentials.
    #[default]
    Api,
    /// The default AWS credential chain.
    Aws,
}

impl Default for StagingConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            part_size_mib: default_part_size_mib(),
            bandwidth_limit_mbps: None,
            max_delta_gib: default_max_delta_gib(),
            credentials_from: CredentialsFrom::Api,
            profile: None,
            credentials_file: None,
            credentials: None,
        }
    }
}

fn default_part_size_mib() -> u64 {
    25
}
fn default_max_delta_gib() -> u64 {
    1024
}

/// The credentials of `profile` (default: the default profile) in `file` (default: the usual
/// AWS locations).
fn profile_provider(
    profile: Option<&str>,
    file: Option<&Path>,
) -> aws_config::profile::ProfileFileCredentialsProvider {
    use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
    let mut builder = aws_config::profile::ProfileFileCredentialsProvider::builder();
    if let Some(profile) = profile {
        builder = builder.profile_name(profile);
    }
    if let Some(file) = file {
        let files = EnvConfigFiles::builder()
            .include_default_config_file(false)
            .with_file(EnvConfigFileKind::Credentials, file)
            .build();
        builder = builder.profile_files(files);
    }
    builder.build()
}

#[derive(Clone, PartialEq, Eq, Deserialize)]
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
    /// How incremental runs find changed blocks: `auto` (a qcow2 dirty bitmap when it can be
    /// trusted, else the full comparison), `bitmap` (only the bitmap) or `compare`.
    #[serde(default)]
    pub changed_blocks: crate::changed::ChangedBlocks,
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
/// Default of `max_concurrent_uploads`.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS: usize = 8;

fn default_max_concurrent_uploads() -> usize {
    DEFAULT_MAX_CONCURRENT_UPLOADS
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
        if let Some(files) = &mut config.files {
            files.inventory = base.join(&files.inventory);
        }
        if let Some(file) = &config.credentials_file {
            config.credentials_file = Some(base.join(file));
        }
        if let Some(file) = &config.staging.credentials_file {
            config.staging.credentials_file = Some(base.join(file));
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
        let st = &self.staging;
        let staging_sources = [
            st.credentials_from == CredentialsFrom::Aws,
            st.profile.is_some() || st.credentials_file.is_some(),
            st.credentials.is_some(),
        ];
        if staging_sources.iter().filter(|s| **s).count() > 1 {
            return Err("[staging]: give one of credentials_from = \"aws\", profile/credentials_file or [staging.credentials], not several".into());
        }
        match [self.files.is_some(), self.libvirt.is_some(), self.vsphere.is_some()].iter().filter(|s| **s).count() {
            0 => return Err("no source: add [files] with inventory = \"FILE\" (VMs listed in an inventory file), [libvirt] with uri = \"qemu:///system\" (the domains of a libvirt host) or [vsphere] with url = \"https://vcenter/sdk\" (the VMs of a vCenter)".into()),
            1 => {}
            _ => return Err("give one source, [files], [libvirt] or [vsphere], not several (run one connector per source)".into()),
        }
        if let Some(v) = &self.vsphere {
            v.validate()?;
        }
        if let Some(l) = &self.libvirt {
            if l.uri.trim().is_empty() {
                return Err("libvirt.uri must name a libvirt URI, e.g. \"qemu:///system\"".into());
            }
            if !cfg!(feature = "libvirt") {
                return Err("[libvirt] needs a connector built with the libvirt feature (cargo build -p tern-cli --features libvirt, with libvirt-dev installed)".into());
            }
        }
        if self.heartbeat_interval_secs == 0 || self.poll_interval_secs == 0 {
            return Err("heartbeat_interval_secs and poll_interval_secs must be at least 1".into());
        }
        if self.max_concurrent_uploads == 0 {
            return Err("max_concurrent_uploads must be at least 1".into());
        }
        if self.request_timeout_secs == 0 {
            return Err("request_timeout_secs must be at least 1".into());
        }
        let st = &self.staging;
        if let Some(e) = &st.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!(
                    "staging.endpoint {e:?} must be an http:// or https:// URL"
                ));
            }
        }
        if !(5..=5120).contains(&st.part_size_mib) {
            return Err(format!(
                "staging.part_size_mib {} is outside S3's part sizes (5 to 5120 MiB)",
                st.part_size_mib
            ));
        }
        if let Some(mbps) = st.bandwidth_limit_mbps {
            // Below ~8 kbit/s not even one byte a millisecond goes out: surely a typo.
            if !mbps.is_finite() || mbps < 0.01 {
                return Err(format!(
                    "staging.bandwidth_limit_mbps {mbps} must be at least 0.01 (leave it out for no limit)"
                ));
            }
        }
        if st.max_delta_gib == 0 {
            return Err("staging.max_delta_gib must be at least 1".into());
        }
        Ok(())
    }

    /// `changed_blocks` of the configured source.
    pub fn changed_blocks(&self) -> crate::changed::ChangedBlocks {
        match (&self.files, &self.libvirt, &self.vsphere) {
            (Some(f), _, _) => f.changed_blocks,
            (None, Some(l), _) => l.changed_blocks,
            (None, None, Some(v)) => v.changed_blocks,
            (None, None, None) => Default::default(),
        }
    }

    /// The S3 endpoint replication uploads go to.
    pub fn staging_endpoint(&self) -> &str {
        self.staging.endpoint.as_deref().unwrap_or(&self.endpoint)
    }

    /// The upload options of `[staging]`, in the units `replicate` takes.
    pub fn replicate_options(&self) -> crate::replicate::ReplicateOptions {
        let st = &self.staging;
        crate::replicate::ReplicateOptions {
            part_size: st.part_size_mib << 20,
            bandwidth_limit: st
                .bandwidth_limit_mbps
                .map(|mbps| ((mbps * 1_000_000.0 / 8.0) as u64).max(1)),
            max_delta_bytes: st.max_delta_gib << 30,
            changed_blocks: self.changed_blocks(),
            ..Default::default()
        }
    }

    /// The credentials of replication uploads (`[staging]`): the API's `api` credentials
    /// unless `[staging]` names others.
    pub async fn staging_credentials(
        &self,
        api: &SharedCredentialsProvider,
    ) -> SharedCredentialsProvider {
        let st = &self.staging;
        if let Some(c) = &st.credentials {
            return SharedCredentialsProvider::new(Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.clone(),
                None,
                "tern-connector-staging",
            ));
        }
        if st.profile.is_some() || st.credentials_file.is_some() {
            return SharedCredentialsProvider::new(profile_provider(
                st.profile.as_deref(),
                st.credentials_file.as_deref(),
            ));
        }
        match st.credentials_from {
            CredentialsFrom::Api => api.clone(),
            CredentialsFrom::Aws => SharedCredentialsProvider::new(
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .build()
                    .await,
            ),
        }
    }

    /// The S3 client of replication uploads: path-style (what `tern serve` and most
    /// S3-compatible stores need), the config's region, and `credentials`
    /// ([`Self::staging_credentials`]). The SDK's own retries stay on; `replicate` adds its
    /// own around whole calls.
    pub fn s3_client(&self, credentials: SharedCredentialsProvider) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .endpoint_url(self.staging_endpoint().trim_end_matches('/'))
            .force_path_style(true)
            .credentials_provider(credentials)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(self.request_timeout())
                    .build(),
            )
            .build();
        aws_sdk_s3::Client::from_conf(conf)
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

    /// The SigV4 signing name of API calls (`api_auth`).
    pub fn signing_name(&self) -> &'static str {
        match self.api_auth {
            ApiAuth::Keys => crate::signing::SIGNING_NAME,
            ApiAuth::Iam => crate::signing::IAM_SIGNING_NAME,
        }
    }

    /// The credentials of API calls: inline keys, a profile, or the AWS default chain. Tern
    /// keys are resolved once, here; IAM credentials (`api_auth = "iam"`) are fetched here
    /// too, so that a missing role fails at start, and the provider then refreshes them.
    pub async fn api_credentials(&self) -> Result<SharedCredentialsProvider, ConnectorError> {
        let provider = if let Some(c) = &self.credentials {
            SharedCredentialsProvider::new(Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.clone(),
                None,
                "tern-connector-config",
            ))
        } else if self.profile.is_some() || self.credentials_file.is_some() {
            SharedCredentialsProvider::new(profile_provider(
                self.profile.as_deref(),
                self.credentials_file.as_deref(),
            ))
        } else {
            SharedCredentialsProvider::new(
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .build()
                    .await,
            )
        };
        let resolved = provider.provide_credentials().await.map_err(|e| {
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
        })?;
        Ok(match self.api_auth {
            ApiAuth::Keys => SharedCredentialsProvider::new(resolved),
            ApiAuth::Iam => provider,
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
    fn a_connector_serves_exactly_one_source() {
        let dir = tempfile::tempdir().unwrap();
        let base = "endpoint = \"http://127.0.0.1:8080\"\nstate_dir = \"s\"\n";
        let files = "[files]\ninventory = \"i.toml\"\n";
        let libvirt = "[libvirt]\nuri = \"qemu:///system\"\ndomains = [\"web*\"]\nchanged_blocks = \"bitmap\"\n";
        let p = write(dir.path(), "c.toml", &format!("{base}{libvirt}"));
        if cfg!(feature = "libvirt") {
            let c = ConnectorConfig::load(&p).unwrap();
            assert!(c.files.is_none());
            assert_eq!(c.libvirt.as_ref().unwrap().domains, ["web*"]);
            assert_eq!(
                c.replicate_options().changed_blocks,
                crate::changed::ChangedBlocks::Bitmap
            );
        } else {
            let e = ConnectorConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains("libvirt feature"), "{e}");
        }
        let p = write(dir.path(), "both.toml", &format!("{base}{files}{libvirt}"));
        let e = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("not several"), "{e}");
        let p = write(dir.path(), "none.toml", base);
        let e = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("no source") && e.contains("[libvirt]"), "{e}");
        let p = write(
            dir.path(),
            "d.toml",
            &format!("{base}[libvirt]\nuri = \" \"\n"),
        );
        let e = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("libvirt.uri"), "{e}");
        let p = write(
            dir.path(),
            "e.toml",
            &format!("{base}[libvirt]\nuri = \"x\"\nfilter = 1\n"),
        );
        let e = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("filter"), "{e}");
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
        assert_eq!(
            c.files.as_ref().unwrap().inventory,
            dir.path().join("inv.toml")
        );
        assert_eq!(
            c.credentials_file,
            Some(dir.path().join("data/credentials"))
        );
        // Without [staging]: uploads go to the API endpoint with the documented defaults.
        assert_eq!(c.staging, StagingConfig::default());
        assert_eq!(c.staging_endpoint(), "http://127.0.0.1:8080");
        let o = c.replicate_options();
        assert_eq!(o.part_size, 25 << 20);
        assert_eq!(o.bandwidth_limit, None);
        assert_eq!(o.max_delta_bytes, 1024 << 30);
        assert_eq!(o.changed_blocks, crate::changed::ChangedBlocks::Auto);
    }

    #[test]
    fn changed_blocks_per_source() {
        use crate::changed::ChangedBlocks;
        let dir = tempfile::tempdir().unwrap();
        let base =
            "endpoint = \"http://api:8080\"\nstate_dir = \"s\"\n[files]\ninventory = \"i\"\n";
        for (value, want) in [
            ("auto", ChangedBlocks::Auto),
            ("bitmap", ChangedBlocks::Bitmap),
            ("compare", ChangedBlocks::Compare),
        ] {
            let p = write(
                dir.path(),
                "c.toml",
                &format!("{base}changed_blocks = \"{value}\"\n"),
            );
            let c = ConnectorConfig::load(&p).unwrap();
            assert_eq!(c.replicate_options().changed_blocks, want, "{value}");
        }
        let p = write(
            dir.path(),
            "c.toml",
            &format!("{base}changed_blocks = \"cbt\"\n"),
        );
        let err = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("cbt"), "{err}");
    }

    #[test]
    fn staging_section() {
        let dir = tempfile::tempdir().unwrap();
        let base =
            "endpoint = \"http://api:8080\"\nstate_dir = \"s\"\n[files]\ninventory = \"i\"\n";
        let p = write(
            dir.path(),
            "c.toml",
            &format!("{base}[staging]\nendpoint = \"https://s3.lab:9000/\"\npart_size_mib = 64\nbandwidth_limit_mbps = 80\nmax_delta_gib = 2\n"),
        );
        let c = ConnectorConfig::load(&p).unwrap();
        assert_eq!(c.staging_endpoint(), "https://s3.lab:9000/");
        let o = c.replicate_options();
        assert_eq!(o.part_size, 64 << 20);
        assert_eq!(o.bandwidth_limit, Some(10_000_000), "80 Mbit/s is 10 MB/s");
        assert_eq!(o.max_delta_bytes, 2 << 30);
        for (bad, needle) in [
            ("part_size_mib = 4", "part_size_mib"),
            ("bandwidth_limit_mbps = 0", "bandwidth_limit_mbps"),
            ("max_delta_gib = 0", "max_delta_gib"),
            ("endpoint = \"s3.lab\"", "staging.endpoint"),
            ("part_sise_mib = 30", "part_sise_mib"),
        ] {
            let p = write(dir.path(), "d.toml", &format!("{base}[staging]\n{bad}\n"));
            let err = ConnectorConfig::load(&p).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn staging_credentials_are_the_apis_unless_staging_names_others() {
        let dir = tempfile::tempdir().unwrap();
        let base = "endpoint = \"http://api:8080\"\nstate_dir = \"s\"\n[credentials]\naccess_key_id = \"TERNKEY\"\nsecret_access_key = \"tern-secret\"\n[files]\ninventory = \"i\"\n";
        let id = |c: ConnectorConfig| async move {
            let api = c.api_credentials().await.unwrap();
            let staging = c.staging_credentials(&api).await;
            staging
                .provide_credentials()
                .await
                .unwrap()
                .access_key_id()
                .to_owned()
        };
        let p = write(dir.path(), "a.toml", base);
        assert_eq!(id(ConnectorConfig::load(&p).unwrap()).await, "TERNKEY");
        // IAM keys for S3 in the AWS deployment, inline or from a profile of a file.
        let p = write(
            dir.path(),
            "b.toml",
            &format!("{base}[staging]\n[staging.credentials]\naccess_key_id = \"AKIAS3\"\nsecret_access_key = \"s3-secret\"\n"),
        );
        assert_eq!(id(ConnectorConfig::load(&p).unwrap()).await, "AKIAS3");
        write(
            dir.path(),
            "iam",
            "[uploader]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = x\n",
        );
        let p = write(
            dir.path(),
            "c.toml",
            &format!("{base}[staging]\nprofile = \"uploader\"\ncredentials_file = \"iam\"\n"),
        );
        assert_eq!(id(ConnectorConfig::load(&p).unwrap()).await, "AKIAPROFILE");
        // One source only.
        let p = write(
            dir.path(),
            "d.toml",
            &format!("{base}[staging]\ncredentials_from = \"aws\"\nprofile = \"uploader\"\n"),
        );
        let err = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("give one of credentials_from"), "{err}");
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
        let creds = c.api_credentials().await.unwrap();
        let creds = creds.provide_credentials().await.unwrap();
        assert_eq!(creds.access_key_id(), "CONN");
        assert_eq!(creds.secret_access_key(), "c");
        assert_eq!(c.signing_name(), "sms");
    }

    /// `api_auth = "iam"`: signed for `execute-api`, and uploads use the same identity by
    /// default.
    #[tokio::test]
    async fn iam_api_auth_signs_for_execute_api_with_refreshed_credentials() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "credentials",
            "[connector]\naws_access_key_id = ASIAFIRST\naws_secret_access_key = s\n",
        );
        let p = write(
            dir.path(),
            "c.toml",
            "endpoint = \"https://abc.execute-api.us-east-1.amazonaws.com\"\nstate_dir = \"s\"\napi_auth = \"iam\"\nprofile = \"connector\"\ncredentials_file = \"credentials\"\n[files]\ninventory = \"i\"\n",
        );
        let c = ConnectorConfig::load(&p).unwrap();
        assert_eq!(c.signing_name(), "execute-api");
        let api = c.api_credentials().await.unwrap();
        let staging = c.staging_credentials(&api).await;
        assert_eq!(
            staging.provide_credentials().await.unwrap().access_key_id(),
            "ASIAFIRST"
        );
        let p = write(
            dir.path(),
            "d.toml",
            "endpoint = \"http://x\"\nstate_dir = \"s\"\napi_auth = \"role\"\n[files]\ninventory = \"i\"\n",
        );
        let err = ConnectorConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("`keys`") && err.contains("`iam`"), "{err}");
    }
}
