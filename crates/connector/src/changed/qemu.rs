//! The qemu tools the bitmap path drives: `qemu-img info` (format, size, backing file, the
//! persistent bitmaps and their flags; a lock held by a running VM shows as a refusal),
//! `qemu-img bitmap --add/--remove`, and a read-only `qemu-nbd` export on a private socket.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tern_nbd::{Client, ConnectOptions, NbdError};

/// Why a qemu tool could not do what was asked, worded for a run's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} is not installed (not found on PATH)")]
    Missing { tool: &'static str },
    #[error("the image is in use by another process (locked): {detail}")]
    Locked { detail: String },
    #[error("{tool} failed: {detail}")]
    Failed { tool: &'static str, detail: String },
}

/// A persistent bitmap as `qemu-img info` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    pub name: String,
    pub flags: Vec<String>,
}

impl Bitmap {
    /// Why this bitmap cannot be trusted, if it cannot: `in-use` on an image nobody has open
    /// means it was not saved cleanly (qemu calls it inconsistent); without `auto` it is
    /// disabled and recorded nothing.
    pub fn unusable(&self) -> Option<String> {
        if self.flags.iter().any(|f| f == "in-use") {
            Some(format!(
                "the bitmap {} is marked in-use (inconsistent: the image was not closed cleanly)",
                self.name
            ))
        } else if !self.flags.iter().any(|f| f == "auto") {
            Some(format!(
                "the bitmap {} is disabled (no auto flag), so it did not record writes",
                self.name
            ))
        } else {
            None
        }
    }
}

/// What `qemu-img info` says about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    pub backing: Option<String>,
    pub bitmaps: Vec<Bitmap>,
}

impl ImageInfo {
    pub fn bitmap(&self, name: &str) -> Option<&Bitmap> {
        self.bitmaps.iter().find(|b| b.name == name)
    }
}

fn run(tool: &'static str, args: &[&std::ffi::OsStr]) -> Result<String, ToolError> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ToolError::Missing { tool },
            _ => ToolError::Failed {
                tool,
                detail: e.to_string(),
            },
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if detail.contains("lock") {
        return Err(ToolError::Locked { detail });
    }
    Err(ToolError::Failed { tool, detail })
}

/// `qemu-img info --output=json` of `path`, taking the shared lock (so an image a VM has open
/// for writing is refused as [`ToolError::Locked`]).
pub fn info(path: &Path) -> Result<ImageInfo, ToolError> {
    let json = run(
        "qemu-img",
        &["info".as_ref(), "--output=json".as_ref(), path.as_os_str()],
    )?;
    parse_info(&json).map_err(|detail| ToolError::Failed {
        tool: "qemu-img",
        detail,
    })
}

pub fn parse_info(json: &str) -> Result<ImageInfo, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("info is not JSON: {e}"))?;
    let format = v["format"]
        .as_str()
        .ok_or("info has no format")?
        .to_string();
    let virtual_size = v["virtual-size"]
        .as_u64()
        .ok_or("info has no virtual-size")?;
    let backing = v["backing-filename"].as_str().map(str::to_string);
    let mut bitmaps = Vec::new();
    if let Some(list) = v["format-specific"]["data"]["bitmaps"].as_array() {
        for b in list {
            let name = b["name"].as_str().ok_or("a bitmap without a name")?;
            let flags = b["flags"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            bitmaps.push(Bitmap {
                name: name.to_string(),
                flags,
            });
        }
    }
    Ok(ImageInfo {
        format,
        virtual_size,
        backing,
        bitmaps,
    })
}

/// Adds an enabled persistent bitmap (`qemu-img bitmap --add`); needs the write lock.
pub fn add_bitmap(path: &Path, name: &str) -> Result<(), ToolError> {
    run(
        "qemu-img",
        &[
            "bitmap".as_ref(),
            "--add".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            path.as_os_str(),
            name.as_ref(),
        ],
    )
    .map(|_| ())
}

/// Removes a persistent bitmap (`qemu-img bitmap --remove`).
pub fn remove_bitmap(path: &Path, name: &str) -> Result<(), ToolError> {
    run(
        "qemu-img",
        &[
            "bitmap".as_ref(),
            "--remove".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            path.as_os_str(),
            name.as_ref(),
        ],
    )
    .map(|_| ())
}

/// A read-only `qemu-nbd` export of one qcow2 image with one bitmap, on a Unix socket in a
/// folder only this user can enter. The process ends when the client disconnects, and is
/// killed (and the folder removed) when this is dropped.
pub struct Export {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

/// How long qemu-nbd may take to open the image and listen.
const START_BOUND: Duration = Duration::from_secs(20);

static EXPORTS: AtomicU64 = AtomicU64::new(0);

/// A folder for the socket: under the state directory when the path fits a Unix socket
/// address (108 bytes), else under the system's temporary folder.
fn socket_dir(state_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let name = format!(
        "nbd-{}-{}",
        std::process::id(),
        EXPORTS.fetch_add(1, Ordering::Relaxed)
    );
    let mut dir = state_dir.join(&name);
    if dir.join("export.sock").as_os_str().len() > 100 {
        dir = std::env::temp_dir().join(format!("tern-{name}"));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    Ok(dir)
}

impl Export {
    /// Starts `qemu-nbd --read-only --bitmap NAME` and connects to it, asking for the bitmap's
    /// meta context.
    pub fn start(
        image: &Path,
        bitmap: &str,
        state_dir: &Path,
    ) -> Result<(Export, Client), ToolError> {
        let failed = |detail: String| ToolError::Failed {
            tool: "qemu-nbd",
            detail,
        };
        let dir = socket_dir(state_dir).map_err(|e| failed(format!("socket folder: {e}")))?;
        let socket = dir.join("export.sock");
        let child = Command::new("qemu-nbd")
            .args(["--read-only", "--format=qcow2", "--export-name=tern"])
            .arg(format!("--bitmap={bitmap}"))
            .arg("--socket")
            .arg(&socket)
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound => ToolError::Missing { tool: "qemu-nbd" },
                    _ => failed(e.to_string()),
                });
            }
        };
        let mut export = Export { child, dir, socket };
        let client = export.connect(bitmap)?;
        Ok((export, client))
    }

    fn connect(&mut self, bitmap: &str) -> Result<Client, ToolError> {
        let opts = ConnectOptions {
            export: "tern".into(),
            meta_contexts: vec![tern_nbd::dirty_bitmap_context(bitmap)],
            ..ConnectOptions::default()
        };
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut s) = self.child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                let detail = format!("exited ({status}) before serving: {}", err.trim());
                return Err(if err.contains("lock") {
                    ToolError::Locked { detail }
                } else {
                    ToolError::Failed {
                        tool: "qemu-nbd",
                        detail,
                    }
                });
            }
            match Client::connect_unix(&self.socket, &opts) {
                Ok(c) => return Ok(c),
                // Not listening yet.
                Err(NbdError::Connect { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => {
                    return Err(ToolError::Failed {
                        tool: "qemu-nbd",
                        detail: e.to_string(),
                    })
                }
            }
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        // Our own child: it exits by itself once the client disconnected; this makes sure.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_json_is_read_with_bitmaps_and_flags() {
        let json = r#"{"virtual-size": 67108864, "filename": "a.qcow2", "format": "qcow2",
            "backing-filename": "base.qcow2",
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1",
              "bitmaps": [{"flags": ["auto"], "name": "tern-a", "granularity": 65536},
                          {"flags": ["in-use", "auto"], "name": "tern-b", "granularity": 65536},
                          {"flags": [], "name": "tern-c", "granularity": 65536}]}}}"#;
        let i = parse_info(json).unwrap();
        assert_eq!((i.format.as_str(), i.virtual_size), ("qcow2", 64 << 20));
        assert_eq!(i.backing.as_deref(), Some("base.qcow2"));
        assert_eq!(i.bitmaps.len(), 3);
        assert_eq!(i.bitmap("tern-a").unwrap().unusable(), None);
        assert!(i
            .bitmap("tern-b")
            .unwrap()
            .unusable()
            .unwrap()
            .contains("in-use"));
        assert!(i
            .bitmap("tern-c")
            .unwrap()
            .unusable()
            .unwrap()
            .contains("disabled"));
        assert!(parse_info("{}").is_err());
        assert!(parse_info("not json").is_err());
        let raw = parse_info(r#"{"virtual-size": 1024, "format": "raw"}"#).unwrap();
        assert!(raw.bitmaps.is_empty());
    }
}
