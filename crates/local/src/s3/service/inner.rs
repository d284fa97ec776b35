//! The staging store's files: buckets, objects, received bodies, multipart upload directories.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use futures::StreamExt as _;
use md5::{Digest as _, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Result};

use super::super::store::{self, ObjectMeta, TempFile};
use super::*;

impl Inner {
    pub(super) async fn bucket(&self, bucket: &str) -> S3Result<PathBuf> {
        let dir = self.layout.bucket_dir(bucket);
        match tokio::fs::metadata(&dir).await {
            Ok(m) if m.is_dir() => Ok(dir),
            Ok(_) => Err(no_such_bucket()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(no_such_bucket()),
            Err(e) => Err(internal(e, "reading a bucket")),
        }
    }

    pub(super) fn object_path(&self, bucket: &str, key: &str) -> S3Result<PathBuf> {
        self.layout
            .object_path(bucket, key)
            .map_err(|m| s3_error!(InvalidArgument, "{m}"))
    }

    /// Opens a stored object: its path, the open file, and the metadata of the open file, not of
    /// the path (a concurrent PUT renames a new file into place, and the request must describe
    /// the bytes it reads). A key that names no file is NoSuchKey.
    pub(super) async fn open_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> S3Result<(PathBuf, tokio::fs::File, std::fs::Metadata)> {
        let path = self.object_path(bucket, key).map_err(|_| no_such_key())?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                return Err(no_such_key())
            }
            Err(e) => return Err(internal(e, "opening an object")),
        };
        let stat = file
            .metadata()
            .await
            .map_err(|e| internal(e, "reading an object"))?;
        if !stat.is_file() {
            return Err(no_such_key());
        }
        Ok((path, file, stat))
    }

    /// The object's metadata, recomputed (and stored again) when the stored copy does not
    /// describe the file that is there now.
    pub(super) async fn meta(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        file: &std::fs::Metadata,
    ) -> S3Result<ObjectMeta> {
        let meta_path = self.layout.meta_path(bucket, key);
        if let Ok(Some(meta)) = store::read_json::<ObjectMeta>(&meta_path).await {
            if meta.key == key && meta.describes(file) {
                return Ok(meta);
            }
        }
        let etag = md5_of_file(path)
            .await
            .map_err(|e| internal(e, "hashing an object"))?;
        let meta = ObjectMeta {
            key: key.to_owned(),
            etag,
            size: file.len(),
            mtime_ns: store::mtime_ns(file).unwrap_or_default(),
            content_type: None,
            metadata: None,
        };
        if let Err(e) = store::write_json(&self.layout, &meta_path, &meta).await {
            tracing::warn!(error = %e, "could not store recomputed object metadata");
        }
        Ok(meta)
    }

    /// Streams a request body into a temporary file, checking the digests the client sent.
    pub(super) async fn receive(
        &self,
        body: Option<StreamingBlob>,
        claimed: Claimed,
        trailers: Option<s3s::TrailingHeaders>,
    ) -> S3Result<(TempFile, std::fs::Metadata, [u8; 16])> {
        // No body at all is an empty object (a zero-length PUT).
        let mut body = body;
        let mut tmp = self
            .layout
            .temp_file()
            .await
            .map_err(|e| internal(e, "creating a temporary file"))?;
        let mut md5 = Md5::new();
        let mut checksums = claimed.hasher();
        let mut size: u64 = 0;
        while let Some(chunk) = match body.as_mut() {
            Some(b) => b.next().await,
            None => None,
        } {
            let chunk = chunk.map_err(|e| {
                tracing::debug!(error = %e, "request body ended early");
                s3_error!(
                    IncompleteBody,
                    "The request body could not be read completely."
                )
            })?;
            size += chunk.len() as u64;
            if size > MAX_UPLOAD_BYTES {
                return Err(s3_error!(
                    EntityTooLarge,
                    "Your proposed upload exceeds the maximum allowed size of 5 GiB."
                ));
            }
            md5.update(&chunk);
            checksums.update(&chunk);
            tmp.write_all(&chunk)
                .await
                .map_err(|e| internal(e, "writing a temporary file"))?;
        }
        let md5: [u8; 16] = md5.finalize().into();
        claimed.verify(&md5, checksums.finalize(), trailers)?;
        let file = tmp
            .finish()
            .await
            .map_err(|e| internal(e, "writing a temporary file"))?;
        Ok((tmp, file, md5))
    }

    pub(super) async fn upload(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
    ) -> S3Result<(PathBuf, Upload)> {
        let dir = self
            .layout
            .upload_dir(upload_id)
            .ok_or_else(no_such_upload)?;
        let upload = store::read_json::<Upload>(&dir.join("upload.json"))
            .await
            .map_err(|e| internal(e, "reading an upload"))?
            .ok_or_else(no_such_upload)?;
        let completed = tokio::fs::try_exists(dir.join("completed.json"))
            .await
            .unwrap_or(false);
        if upload.bucket != bucket || upload.key != key || completed {
            return Err(no_such_upload());
        }
        Ok((dir, upload))
    }

    /// The parts of an upload by number; of two files for one number (a part uploaded again
    /// while the old one was being replaced), the newer wins.
    pub(super) async fn parts(&self, dir: &Path) -> S3Result<BTreeMap<i32, StoredPart>> {
        let mut parts = BTreeMap::<i32, StoredPart>::new();
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| internal(e, "listing parts"))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| internal(e, "listing parts"))?
        {
            let name = entry.file_name();
            let Some(part) = name.to_str().and_then(parse_part_name) else {
                continue;
            };
            let Ok(file) = entry.metadata().await else {
                continue;
            };
            let stored = StoredPart {
                number: part.0,
                md5: part.1.to_owned(),
                size: file.len(),
                modified: store::modified(&file),
                path: entry.path(),
            };
            match parts.get(&stored.number) {
                Some(existing) if existing.modified > stored.modified => {}
                _ => {
                    parts.insert(stored.number, stored);
                }
            }
        }
        Ok(parts)
    }
}

pub(super) fn parse_part_name(name: &str) -> Option<(i32, &str)> {
    let stem = name.strip_suffix(".part")?;
    let (number, md5) = stem.split_once('-')?;
    let number: i32 = number.parse().ok()?;
    (md5.len() == 32).then_some((number, md5))
}
