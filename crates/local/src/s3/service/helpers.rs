//! Small conversions shared by the operations: errors, times, ETags, bodies, listings, tokens.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest as _, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Request, S3Result};
use tokio::io::AsyncReadExt as _;

use super::*;

pub(super) fn origin<T>(req: &S3Request<T>) -> Origin {
    let source_ip = req
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    Origin {
        request_id: uuid::Uuid::new_v4().simple().to_string()[..16].to_ascii_uppercase(),
        source_ip,
    }
}

pub(super) fn internal(err: io::Error, doing: &str) -> S3Error {
    // The cause goes to the log only: a 5xx never echoes paths of the server.
    tracing::error!(error = %err, doing, "staging store I/O error");
    s3_error!(
        InternalError,
        "We encountered an internal error. Please try again."
    )
}

pub(super) fn no_such_bucket() -> S3Error {
    s3_error!(NoSuchBucket, "The specified bucket does not exist")
}

pub(super) fn no_such_key() -> S3Error {
    s3_error!(NoSuchKey, "The specified key does not exist.")
}

pub(super) fn no_such_upload() -> S3Error {
    s3_error!(
        NoSuchUpload,
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
    )
}

pub(super) fn key_conflict() -> S3Error {
    s3_error!(
        InvalidArgument,
        "The key conflicts with an existing object: the local staging store keeps objects as files, so one key cannot be both an object and a prefix of another (as 'a' and 'a/b')."
    )
}

pub(super) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(super) fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

pub(super) fn quoted(etag: &str) -> ETag {
    ETag::Strong(etag.to_owned())
}

pub(super) async fn md5_of_file(path: &Path) -> io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
    }
    Ok(hex::encode(md5.finalize()))
}

/// `len` bytes of `file` from its current position, as a response body.
pub(super) fn file_body(file: tokio::fs::File, len: u64) -> StreamingBlob {
    let stream = futures::stream::try_unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return Ok::<_, io::Error>(None);
        }
        let want = usize::try_from(left.min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
        let mut buf = vec![0u8; want];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "object shrank while being read",
            ));
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), (file, left - n as u64))))
    });
    StreamingBlob::wrap(stream)
}

pub(super) fn user_metadata(m: Option<Metadata>) -> Option<BTreeMap<String, String>> {
    m.filter(|m| !m.is_empty()).map(|m| m.into_iter().collect())
}

pub(super) fn to_metadata(m: &Option<BTreeMap<String, String>>) -> Option<Metadata> {
    m.as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Every object key of a bucket under `prefix`, sorted as S3 sorts (bytes of UTF-8), with its
/// file metadata.
pub(super) async fn walk(
    bucket_dir: &Path,
    prefix: &str,
) -> io::Result<Vec<(String, std::fs::Metadata)>> {
    // Only the directory the prefix names can hold matches: start there, not at the top.
    let start_rel = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let mut start = bucket_dir.to_path_buf();
    if !start_rel.is_empty() {
        if start_rel
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Ok(Vec::new());
        }
        start.extend(start_rel.split('/'));
    }
    let mut out = Vec::new();
    let mut stack = vec![(start, start_rel.to_owned())];
    while let Some((dir, rel)) = stack.pop() {
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        while let Some(entry) = entries.next_entry().await? {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let file_type = entry.file_type().await?;
            if file_type.is_dir() {
                if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                    stack.push((entry.path(), key));
                }
            } else if file_type.is_file() && key.starts_with(prefix) {
                out.push((key, entry.metadata().await?));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

pub(super) fn page_size(requested: Option<i32>) -> usize {
    requested
        .and_then(|n| usize::try_from(n).ok())
        .map_or(MAX_LIST, |n| n.min(MAX_LIST))
}

pub(super) fn encode_token(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

pub(super) fn decode_token(token: &str) -> S3Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "The continuation token provided is incorrect"
            )
        })
}
