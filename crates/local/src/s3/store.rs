//! Where the staging store keeps things on disk, and the write-then-rename primitive.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::{INTERNAL_DIR, STAGING_DIR};

/// S3's limit on key length, in bytes of UTF-8.
const MAX_KEY_BYTES: usize = 1024;
/// Most file systems' limit on one name.
const MAX_COMPONENT_BYTES: usize = 255;

pub(crate) struct Layout {
    pub buckets: PathBuf,
    tmp: PathBuf,
    objects: PathBuf,
    pub uploads: PathBuf,
    pub notifications: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        let internal = data_dir.join(INTERNAL_DIR);
        Self {
            buckets: data_dir.join(STAGING_DIR),
            tmp: internal.join("tmp"),
            objects: internal.join("objects"),
            uploads: internal.join("uploads"),
            notifications: internal.join("notifications"),
        }
    }

    /// Creates the directories and drops temporary files of writes a crash interrupted.
    pub async fn prepare(&self) -> io::Result<()> {
        for dir in [
            &self.buckets,
            &self.tmp,
            &self.objects,
            &self.uploads,
            &self.notifications,
        ] {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut entries = tokio::fs::read_dir(&self.tmp).await?;
        while let Some(entry) = entries.next_entry().await? {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
        Ok(())
    }

    /// Bucket names are checked by `s3s` (S3's naming rules: no `/`, no `..`).
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.buckets.join(bucket)
    }

    pub fn object_path(&self, bucket: &str, key: &str) -> Result<PathBuf, &'static str> {
        check_key(key)?;
        let mut path = self.bucket_dir(bucket);
        path.extend(key.split('/'));
        Ok(path)
    }

    /// Metadata lives apart from the object so that `staging/` holds nothing but objects; the
    /// name is a hash because a key may be longer than a file name may be.
    pub fn meta_path(&self, bucket: &str, key: &str) -> PathBuf {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        self.objects.join(bucket).join(format!("{digest}.json"))
    }

    pub fn meta_dir(&self, bucket: &str) -> PathBuf {
        self.objects.join(bucket)
    }

    /// `None` for anything that is not an upload id this store hands out, so that a client's
    /// string never becomes an arbitrary path.
    pub fn upload_dir(&self, upload_id: &str) -> Option<PathBuf> {
        let valid = upload_id.len() == 32 && upload_id.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.uploads.join(upload_id))
    }

    pub async fn temp_file(&self) -> io::Result<TempFile> {
        let path = self
            .tmp
            .join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::File::create(&path).await?;
        Ok(TempFile {
            path,
            file: Some(file),
            keep: false,
        })
    }
}

/// Keys become paths: refuse what would not map back to the same key or would escape the
/// bucket directory.
pub fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("The key must not be empty.");
    }
    if key.len() > MAX_KEY_BYTES {
        return Err("Your key is too long.");
    }
    if key.ends_with('/') {
        return Err(
            "Keys ending in '/' (folder markers) are not supported by the local staging store.",
        );
    }
    for part in key.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err("Keys with empty, '.' or '..' path segments (such as a leading '/' or '//') are not supported by the local staging store.");
        }
        if part.len() > MAX_COMPONENT_BYTES {
            return Err("A path segment of the key is longer than 255 bytes, which the local staging store cannot keep.");
        }
        if part.contains('\0') {
            return Err("Keys must not contain NUL characters.");
        }
    }
    Ok(())
}

/// What the store remembers about an object besides its bytes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    pub key: String,
    pub etag: String,
    pub size: u64,
    /// Modification time of the file the metadata describes: a file replaced behind the
    /// store's back (or a crash between the two renames) makes the metadata stale, and a
    /// mismatch here is how that is noticed.
    pub mtime_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl ObjectMeta {
    pub fn describes(&self, file: &std::fs::Metadata) -> bool {
        self.size == file.len() && Some(self.mtime_ns) == mtime_ns(file)
    }
}

pub fn mtime_ns(file: &std::fs::Metadata) -> Option<u64> {
    let t = file.modified().ok()?;
    u64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()
}

pub fn modified(file: &std::fs::Metadata) -> SystemTime {
    file.modified().unwrap_or(UNIX_EPOCH)
}

/// A file under `tmp/`, removed when dropped unless it was renamed into place.
pub struct TempFile {
    pub path: PathBuf,
    file: Option<tokio::fs::File>,
    keep: bool,
}

impl TempFile {
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.write_all(data).await,
            None => Err(io::Error::other("temporary file already closed")),
        }
    }

    /// Flushes to disk (a renamed file must be complete even after a power cut) and closes it.
    pub async fn finish(&mut self) -> io::Result<std::fs::Metadata> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("temporary file already closed"))?;
        file.flush().await?;
        file.sync_all().await?;
        let meta = file.metadata().await?;
        drop(file);
        Ok(meta)
    }

    /// Appends the files at `sources` and flushes to disk, as [`TempFile::finish`] does. The
    /// copy runs on a blocking thread with `std::io::copy`, which on Linux copies inside the
    /// kernel (`copy_file_range`, a reflink where the file system supports it).
    pub async fn fill_from(&mut self, sources: Vec<PathBuf>) -> io::Result<std::fs::Metadata> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("temporary file already closed"))?;
        let mut file = file.into_std().await;
        tokio::task::spawn_blocking(move || {
            for source in sources {
                let mut source = std::fs::File::open(source)?;
                io::copy(&mut source, &mut file)?;
            }
            file.sync_all()?;
            file.metadata()
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Moves the finished file to `dest`, creating its parent directories.
    pub async fn persist(mut self, dest: &Path) -> io::Result<()> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(&self.path, dest).await?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `value` as JSON through a temporary file and a rename.
pub async fn write_json(
    layout: &Layout,
    dest: &Path,
    value: &impl serde::Serialize,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut tmp = layout.temp_file().await?;
    tmp.write_all(&bytes).await?;
    tmp.finish().await?;
    tmp.persist(dest).await
}

/// Reads JSON written by [`write_json`]; `None` when the file does not exist.
pub async fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the now-empty directories between a deleted object and its bucket directory, so
/// that a deleted `a/b` leaves no `a/` behind (which would block a later object `a`).
pub async fn prune_empty_dirs(bucket_dir: &Path, from: &Path) {
    let mut dir = from.parent();
    while let Some(d) = dir {
        if d == bucket_dir || !d.starts_with(bucket_dir) {
            break;
        }
        if tokio::fs::remove_dir(d).await.is_err() {
            break;
        }
        dir = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_do_not_map_to_a_path_are_refused() {
        for good in ["a", "runs/sms-run-1/disk-0.vmdk", "a b/ü.txt", "x.y/..z"] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a//b",
            "a/",
            "../a",
            "a/./b",
            "a/..",
            "nul\0",
            &"k".repeat(256),
            &"a/".repeat(600),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn object_paths_stay_in_the_bucket() {
        let layout = Layout::new(Path::new("/data"));
        assert_eq!(
            layout.object_path("tern-staging", "a/b/c").unwrap(),
            Path::new("/data/staging/tern-staging/a/b/c")
        );
        assert!(layout.object_path("b", "../../etc/passwd").is_err());
        assert!(layout.upload_dir("../x").is_none());
        assert!(layout
            .upload_dir("0123456789abcdef0123456789abcdef")
            .is_some());
    }
}
