//! The local server's key pairs and the `DIR/credentials` file that holds them.
//!
//! The file is in the AWS shared-credentials format so that any AWS client can use it with
//! `AWS_SHARED_CREDENTIALS_FILE=DIR/credentials`:
//!
//! ```text
//! [default]            # administrator: may call the SMS operations
//! aws_access_key_id = TERN...
//! aws_secret_access_key = ...
//!
//! [connector]          # connector appliances: may call the connector operations only
//! aws_access_key_id = TERN...
//! aws_secret_access_key = ...
//! ```
//!
//! Generated keys are written once and reused on every later start, so clients configured with
//! them keep working across restarts. When the administrator keys come from the environment
//! (`TERN_ACCESS_KEY_ID`/`TERN_SECRET_ACCESS_KEY`), they are not copied to disk: the file then
//! holds only the `[connector]` profile.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// File name of the credentials file inside the data directory.
pub const CREDENTIALS_FILE: &str = "credentials";
/// Profile of the administrator keys.
pub const ADMIN_PROFILE: &str = "default";
/// Profile of the connector keys.
pub const CONNECTOR_PROFILE: &str = "connector";

/// An access key pair. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .finish()
    }
}

impl Credentials {
    /// A fresh random key pair: a 20-character access key id starting with `TERN` and a
    /// 40-character secret, the shapes AWS uses, so clients that check lengths accept them.
    /// The pair as the SigV4 verifier takes it.
    pub fn key_pair(&self) -> tern_sigv4::KeyPair {
        tern_sigv4::KeyPair {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
        }
    }

    pub fn generate() -> Self {
        let (access_key_id, secret_access_key) = tern_core::service::generate_pair();
        Self {
            access_key_id,
            secret_access_key,
        }
    }

    /// Checks the key pair can be used in a SigV4 `Authorization` header and a credentials file.
    pub fn validate(&self) -> Result<(), String> {
        let id = &self.access_key_id;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "access key id must be non-empty ASCII letters and digits, got {id:?}"
            ));
        }
        let secret = &self.secret_access_key;
        if secret.is_empty() || !secret.chars().all(|c| c.is_ascii_graphic()) {
            return Err(
                "secret access key must be non-empty printable ASCII without spaces".into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write credentials file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("credentials file {path}, line {line}: {problem}")]
    Malformed {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("credentials file {path}, profile [{profile}]: {problem}")]
    BadProfile {
        path: PathBuf,
        profile: String,
        problem: String,
    },
    #[error("administrator credentials: {0}")]
    BadOverride(String),
}

/// The key pairs the server accepts, and where they are written.
#[derive(Debug, Clone)]
pub struct Keys {
    pub admin: Credentials,
    pub connector: Credentials,
    pub file: PathBuf,
}

/// Loads the key pairs from `dir/credentials`, generating and persisting whatever is missing.
///
/// `admin_override` (the keys from the environment) replaces the file's `[default]` profile and
/// is never written to disk. The file is rewritten only when its content has to change; it is
/// always left with mode 0600.
pub fn load_or_create(
    dir: &Path,
    admin_override: Option<Credentials>,
) -> Result<Keys, CredentialsError> {
    let file = dir.join(CREDENTIALS_FILE);
    if let Some(admin) = &admin_override {
        admin.validate().map_err(CredentialsError::BadOverride)?;
    }
    let existing = match fs::read_to_string(&file) {
        Ok(text) => parse(&file, &text)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => Profiles::default(),
        Err(source) => return Err(CredentialsError::Read { path: file, source }),
    };

    let connector = existing
        .connector
        .clone()
        .unwrap_or_else(Credentials::generate);
    let (admin, stored_admin) = match admin_override {
        Some(admin) => (admin, None),
        None => {
            let admin = existing.admin.clone().unwrap_or_else(Credentials::generate);
            (admin.clone(), Some(admin))
        }
    };
    if admin.access_key_id == connector.access_key_id {
        return Err(CredentialsError::BadOverride(format!(
            "access key id {} is already the connector's; choose another",
            admin.access_key_id
        )));
    }

    let wanted = Profiles {
        admin: stored_admin,
        connector: Some(connector.clone()),
    };
    if wanted != existing {
        write_atomically(&file, &render(&wanted))?;
    } else {
        restrict_permissions(&file)?;
    }
    Ok(Keys {
        admin,
        connector,
        file,
    })
}

#[derive(Debug, Default, PartialEq)]
struct Profiles {
    admin: Option<Credentials>,
    connector: Option<Credentials>,
}

/// Parses the subset of the shared-credentials format Tern writes: `[profile]` headers,
/// `key = value` lines, `#`/`;` comments. Unknown profiles and keys are tolerated (a user may
/// have added a region); a Tern profile missing one of its two keys is an error, because
/// silently replacing it would invalidate keys a client may already hold.
fn parse(path: &Path, text: &str) -> Result<Profiles, CredentialsError> {
    #[derive(Default)]
    struct Partial {
        id: Option<String>,
        secret: Option<String>,
    }
    let mut admin = None::<Partial>;
    let mut connector = None::<Partial>;
    let mut current: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let malformed = |problem: &str| CredentialsError::Malformed {
            path: path.to_owned(),
            line: n + 1,
            problem: problem.to_owned(),
        };
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| malformed("profile header without ']'"))?;
            let name = name.trim().to_owned();
            match name.as_str() {
                ADMIN_PROFILE => admin = Some(Partial::default()),
                CONNECTOR_PROFILE => connector = Some(Partial::default()),
                _ => {}
            }
            current = Some(name);
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| malformed("expected 'key = value'"))?;
        let (key, value) = (key.trim(), value.trim().to_owned());
        let section = match current.as_deref() {
            Some(ADMIN_PROFILE) => admin.as_mut(),
            Some(CONNECTOR_PROFILE) => connector.as_mut(),
            Some(_) => None,
            None => return Err(malformed("setting before any [profile] header")),
        };
        if let Some(section) = section {
            match key {
                "aws_access_key_id" => section.id = Some(value),
                "aws_secret_access_key" => section.secret = Some(value),
                _ => {}
            }
        }
    }
    let finish = |profile: &str,
                  partial: Option<Partial>|
     -> Result<Option<Credentials>, CredentialsError> {
        let Some(partial) = partial else {
            return Ok(None);
        };
        let bad = |problem: String| CredentialsError::BadProfile {
            path: path.to_owned(),
            profile: profile.to_owned(),
            problem,
        };
        match (partial.id, partial.secret) {
            (Some(access_key_id), Some(secret_access_key)) => {
                let creds = Credentials {
                    access_key_id,
                    secret_access_key,
                };
                creds.validate().map_err(bad)?;
                Ok(Some(creds))
            }
            (None, _) => Err(bad("aws_access_key_id is missing".into())),
            (_, None) => Err(bad("aws_secret_access_key is missing".into())),
        }
    };
    Ok(Profiles {
        admin: finish(ADMIN_PROFILE, admin)?,
        connector: finish(CONNECTOR_PROFILE, connector)?,
    })
}

fn render(profiles: &Profiles) -> String {
    let mut out = String::from(
        "# Written by `tern serve`. Use with AWS_SHARED_CREDENTIALS_FILE=<this file>.\n\
         # Profile [default] holds the administrator keys, [connector] the keys for connector appliances.\n",
    );
    if profiles.admin.is_none() {
        out.push_str(
            "# The administrator keys come from TERN_ACCESS_KEY_ID/TERN_SECRET_ACCESS_KEY.\n",
        );
    }
    for (name, creds) in [
        (ADMIN_PROFILE, &profiles.admin),
        (CONNECTOR_PROFILE, &profiles.connector),
    ] {
        if let Some(creds) = creds {
            out.push_str(&format!(
                "\n[{name}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                creds.access_key_id, creds.secret_access_key
            ));
        }
    }
    out
}

/// Writes through a temporary file and a rename so a crash never leaves a half-written file,
/// and creates it with mode 0600 so the secret is never readable by others, not even briefly.
fn write_atomically(path: &Path, content: &str) -> Result<(), CredentialsError> {
    let err = |source| CredentialsError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(err)?;
    f.write_all(content.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)?;
    restrict_permissions(path)
}

/// Tightens an existing file that someone made readable by others.
fn restrict_permissions(path: &Path) -> Result<(), CredentialsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let err = |source| CredentialsError::Write {
            path: path.to_owned(),
            source,
        };
        let mode = fs::metadata(path).map_err(err)?.permissions().mode() & 0o777;
        if mode != 0o600 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "credentials file was not private; setting mode 0600");
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_aws_shapes_and_differ() {
        let a = Credentials::generate();
        let b = Credentials::generate();
        assert_eq!(a.access_key_id.len(), 20);
        assert!(a.access_key_id.starts_with("TERN"));
        assert_eq!(a.secret_access_key.len(), 40);
        assert!(a.validate().is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = Credentials::generate();
        let shown = format!("{c:?}");
        assert!(shown.contains(&c.access_key_id));
        assert!(!shown.contains(&c.secret_access_key));
    }

    #[test]
    fn parse_reads_what_render_writes_and_tolerates_extra_settings() {
        let profiles = Profiles {
            admin: Some(Credentials::generate()),
            connector: Some(Credentials::generate()),
        };
        let mut text = render(&profiles);
        text.push_str("\n[other]\nregion = eu-west-1\n");
        text = text.replace("[connector]\n", "[connector]\nregion = us-east-1\n");
        assert_eq!(parse(Path::new("f"), &text).unwrap(), profiles);
    }

    #[test]
    fn parse_names_the_problem() {
        let err = parse(Path::new("f"), "[default]\naws_access_key_id = AKID\n").unwrap_err();
        assert!(
            err.to_string().contains("aws_secret_access_key is missing"),
            "{err}"
        );
        let err = parse(Path::new("f"), "aws_access_key_id = AKID\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = parse(Path::new("f"), "[default\n").unwrap_err();
        assert!(err.to_string().contains("without ']'"), "{err}");
    }

    #[test]
    fn override_equal_to_connector_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = load_or_create(dir.path(), None).unwrap();
        let clash = Credentials {
            access_key_id: keys.connector.access_key_id.clone(),
            secret_access_key: "x".repeat(40),
        };
        let err = load_or_create(dir.path(), Some(clash)).unwrap_err();
        assert!(err.to_string().contains("already the connector's"), "{err}");
    }

    #[test]
    fn override_is_not_written_and_connector_key_survives() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), None).unwrap();
        let admin = Credentials {
            access_key_id: "MYADMINKEY".into(),
            secret_access_key: "s3cr3t/value".into(),
        };
        let second = load_or_create(dir.path(), Some(admin.clone())).unwrap();
        assert_eq!(second.admin, admin);
        assert_eq!(second.connector, first.connector);
        let text = fs::read_to_string(&second.file).unwrap();
        assert!(!text.contains("s3cr3t/value"));
        assert!(!text.contains("\n[default]\n"), "{text}");
    }
}
