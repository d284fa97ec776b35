//! The S3 operations of the staging store.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http;
use md5::{Digest as _, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::store::{self, Layout};
use super::{ObjectCreatedSink, LOCAL_ACCOUNT_ID, STAGING_BUCKET};

/// S3's limit on one PUT and on one part.
const MAX_UPLOAD_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// S3's minimum size of every part but the last.
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
const MAX_PART_NUMBER: i32 = 10_000;
/// Most entries one listing returns, as in S3.
const MAX_LIST: usize = 1000;
/// How long the result of a completed upload is kept for a retried CompleteMultipartUpload.
const COMPLETED_KEPT: Duration = Duration::from_secs(24 * 60 * 60);
const READ_CHUNK: usize = 256 * 1024;

/// The staging store: buckets are directories of `DATA_DIR/staging`, objects plain files.
///
/// Cheap to clone: CompleteMultipartUpload assembles the object in a future that outlives the
/// request handler (see [`StagingStore::complete_in_background`]).
#[derive(Clone)]
pub struct StagingStore(Arc<Inner>);

impl std::ops::Deref for StagingStore {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    layout: Layout,
    region: String,
    sink: Option<Arc<dyn ObjectCreatedSink>>,
    /// Serialises the steps that publish parts and objects (rename plus bookkeeping), so
    /// that two requests for the same name cannot interleave them. Data is written before
    /// the lock is taken; only renames happen under it.
    commit: tokio::sync::Mutex<()>,
    sequence: AtomicU64,
    /// One lock per upload being completed: a Complete retried while the first is still
    /// assembling waits for it and then answers with its result.
    completing: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Upload {
    bucket: String,
    key: String,
    initiated_secs: u64,
    initiator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Completed {
    bucket: String,
    key: String,
    etag: String,
}

struct StoredPart {
    number: i32,
    md5: String,
    size: u64,
    modified: SystemTime,
    path: PathBuf,
}

/// Who sent a request, for the notification.
struct Origin {
    request_id: String,
    source_ip: String,
}

impl StagingStore {
    /// Opens (creating when missing) the store under `data_dir`, makes sure the
    /// [`STAGING_BUCKET`] exists, and delivers notifications a crash left undelivered.
    pub async fn open(
        data_dir: &Path,
        region: &str,
        sink: Option<Arc<dyn ObjectCreatedSink>>,
    ) -> io::Result<Self> {
        let layout = Layout::new(data_dir);
        layout.prepare().await?;
        tokio::fs::create_dir_all(layout.bucket_dir(STAGING_BUCKET)).await?;
        let store = Self(Arc::new(Inner {
            layout,
            region: region.to_owned(),
            sink,
            commit: tokio::sync::Mutex::new(()),
            sequence: AtomicU64::new(0),
            completing: std::sync::Mutex::new(HashMap::new()),
        }));
        store.forget_old_completions().await;
        store.redeliver().await?;
        Ok(store)
    }
}

mod checksum;
mod complete;
mod helpers;
mod inner;
mod notify;

use checksum::*;
use complete::*;
use helpers::*;

#[async_trait::async_trait]
impl S3 for StagingStore {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let dir = self.layout.bucket_dir(&req.input.bucket);
        match tokio::fs::create_dir(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(s3_error!(
                    BucketAlreadyOwnedByYou,
                    "Your previous request to create the named bucket succeeded and you already own it."
                ))
            }
            Err(e) => return Err(internal(e, "creating a bucket")),
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket(&req.input.bucket).await?;
        // us-east-1 is the one region S3 reports as an empty constraint.
        let location = (self.region != "us-east-1")
            .then(|| BucketLocationConstraint::from(self.region.clone()));
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: location,
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let dir = self.bucket(&req.input.bucket).await?;
        match tokio::fs::remove_dir(&dir).await {
            Ok(()) => {
                let _ = tokio::fs::remove_dir_all(self.layout.meta_dir(&req.input.bucket)).await;
                Ok(S3Response::new(DeleteBucketOutput {}))
            }
            Err(_) => Err(s3_error!(
                BucketNotEmpty,
                "The bucket you tried to delete is not empty"
            )),
        }
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let mut buckets = Vec::new();
        let mut entries = tokio::fs::read_dir(&self.layout.buckets)
            .await
            .map_err(|e| internal(e, "listing buckets"))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| internal(e, "listing buckets"))?
        {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            if !meta.is_dir() || !s3s::path::check_bucket_name(&name) {
                continue;
            }
            buckets.push(Bucket {
                name: Some(name),
                creation_date: Some(timestamp(
                    meta.created().unwrap_or_else(|_| store::modified(&meta)),
                )),
                bucket_region: Some(self.region.clone()),
            });
        }
        buckets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(Owner {
                display_name: Some("tern".into()),
                id: Some(LOCAL_ACCOUNT_ID.into()),
            }),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let origin = origin(&req);
        let trailer = trailer_header(&req.headers);
        let input = req.input;
        self.bucket(&input.bucket).await?;
        self.object_path(&input.bucket, &input.key)?;
        let claimed = Claimed {
            content_md5: input.content_md5,
            crc32: input.checksum_crc32,
            crc32c: input.checksum_crc32c,
            sha1: input.checksum_sha1,
            sha256: input.checksum_sha256,
            crc64nvme: input.checksum_crc64nvme,
            algorithm: input.checksum_algorithm,
            trailer,
        };
        let (tmp, file, md5) = self
            .receive(input.body, claimed, req.trailing_headers)
            .await?;
        let etag = hex::encode(md5);
        self.publish(
            tmp,
            &file,
            &input.bucket,
            &input.key,
            etag.clone(),
            input.content_type.map(|c| c.to_string()),
            user_metadata(input.metadata),
            "PutObject",
            &origin,
            async || Ok(()),
        )
        .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(quoted(&etag)),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let origin = origin(&req);
        let input = req.input;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            version_id: _,
        } = &input.copy_source
        else {
            return Err(s3_error!(
                NotImplemented,
                "Only copies from a bucket of this endpoint are supported."
            ));
        };
        self.bucket(src_bucket).await?;
        self.bucket(&input.bucket).await?;
        self.object_path(&input.bucket, &input.key)?;
        let (src_path, mut src, src_file) = self.open_object(src_bucket, src_key).await?;
        let src_meta = self.meta(src_bucket, src_key, &src_path, &src_file).await?;
        let mut tmp = self
            .layout
            .temp_file()
            .await
            .map_err(|e| internal(e, "creating a temporary file"))?;
        let mut md5 = Md5::new();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = src
                .read(&mut buf)
                .await
                .map_err(|e| internal(e, "copying"))?;
            if n == 0 {
                break;
            }
            md5.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .await
                .map_err(|e| internal(e, "copying"))?;
        }
        let file = tmp.finish().await.map_err(|e| internal(e, "copying"))?;
        let etag = hex::encode(md5.finalize());
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let (content_type, metadata) = if replace {
            (
                input.content_type.map(|c| c.to_string()),
                user_metadata(input.metadata),
            )
        } else {
            (src_meta.content_type, src_meta.metadata)
        };
        let modified = store::modified(&file);
        self.publish(
            tmp,
            &file,
            &input.bucket,
            &input.key,
            etag.clone(),
            content_type,
            metadata,
            "CopyObject",
            &origin,
            async || Ok(()),
        )
        .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(quoted(&etag)),
                last_modified: Some(timestamp(modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket).await?;
        let path = self
            .object_path(&input.bucket, &input.key)
            .map_err(|_| no_such_key())?;
        let file = match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(no_such_key()),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                return Err(no_such_key())
            }
            Err(e) => return Err(internal(e, "reading an object")),
        };
        let meta = self.meta(&input.bucket, &input.key, &path, &file).await?;
        Ok(S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: i64::try_from(file.len()).ok(),
            content_type: meta.content_type.as_deref().and_then(|c| c.parse().ok()),
            e_tag: Some(quoted(&meta.etag)),
            last_modified: Some(timestamp(store::modified(&file))),
            metadata: to_metadata(&meta.metadata),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket).await?;
        let (path, mut file, stat) = self.open_object(&input.bucket, &input.key).await?;
        let meta = self.meta(&input.bucket, &input.key, &path, &stat).await?;
        let total = stat.len();
        let (start, len, content_range) = match &input.range {
            None => (0, total, None),
            Some(range) => {
                let r = range.check(total)?;
                (
                    r.start,
                    r.end - r.start,
                    Some(format!(
                        "bytes {}-{}/{total}",
                        r.start,
                        r.end.saturating_sub(1)
                    )),
                )
            }
        };
        file.seek(io::SeekFrom::Start(start))
            .await
            .map_err(|e| internal(e, "reading an object"))?;
        let mut response = S3Response::new(GetObjectOutput {
            accept_ranges: Some("bytes".into()),
            body: Some(file_body(file, len)),
            content_length: i64::try_from(len).ok(),
            content_range: content_range.clone(),
            content_type: meta.content_type.as_deref().and_then(|c| c.parse().ok()),
            e_tag: Some(quoted(&meta.etag)),
            last_modified: Some(timestamp(store::modified(&stat))),
            metadata: to_metadata(&meta.metadata),
            ..Default::default()
        });
        if content_range.is_some() {
            response.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(response)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        let bucket_dir = self.bucket(&input.bucket).await?;
        self.remove(&bucket_dir, &input.bucket, &input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let bucket_dir = self.bucket(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in input.delete.objects {
            match self.remove(&bucket_dir, &input.bucket, &object.key).await {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(object.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some(e.code().as_str().to_owned()),
                    key: Some(object.key),
                    message: e.message().map(str::to_owned),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let marker = req.input.marker.clone();
        let v2 = self.list_objects_v2(req.map_input(Into::into)).await?;
        let v2 = v2.output;
        let next_marker = v2
            .next_continuation_token
            .as_deref()
            .map(decode_token)
            .transpose()?;
        Ok(S3Response::new(ListObjectsOutput {
            name: v2.name,
            prefix: v2.prefix,
            marker,
            delimiter: v2.delimiter,
            max_keys: v2.max_keys,
            is_truncated: v2.is_truncated,
            next_marker,
            contents: v2.contents,
            common_prefixes: v2.common_prefixes,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let bucket_dir = self.bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max = page_size(input.max_keys);
        let token = input
            .continuation_token
            .as_deref()
            .map(decode_token)
            .transpose()?;
        let marker = match (token, input.start_after.clone()) {
            (Some(t), Some(s)) => Some(t.max(s)),
            (t, s) => t.or(s),
        };
        let keys = walk(&bucket_dir, &prefix)
            .await
            .map_err(|e| internal(e, "listing objects"))?;

        let mut contents = Vec::new();
        let mut common = Vec::<String>::new();
        let mut last = None::<String>;
        let mut truncated = false;
        for (key, file) in keys {
            if let Some(m) = &marker {
                // A marker that is a common prefix covers every key below it.
                let covered = delimiter.as_deref().is_some_and(|d| m.ends_with(d))
                    && key.starts_with(m.as_str());
                if key.as_str() <= m.as_str() || covered {
                    continue;
                }
            }
            let group = delimiter.as_deref().and_then(|d| {
                key[prefix.len()..]
                    .find(d)
                    .map(|i| key[..prefix.len() + i + d.len()].to_owned())
            });
            if let Some(g) = &group {
                if common.last() == Some(g) {
                    continue;
                }
            }
            if contents.len() + common.len() == max {
                truncated = true;
                break;
            }
            match group {
                Some(g) => {
                    last = Some(g.clone());
                    common.push(g);
                }
                None => {
                    let path = self.object_path(&input.bucket, &key)?;
                    let meta = self.meta(&input.bucket, &key, &path, &file).await?;
                    last = Some(key.clone());
                    contents.push(Object {
                        key: Some(key),
                        size: i64::try_from(file.len()).ok(),
                        e_tag: Some(quoted(&meta.etag)),
                        last_modified: Some(timestamp(store::modified(&file))),
                        storage_class: Some(ObjectStorageClass::from_static(
                            ObjectStorageClass::STANDARD,
                        )),
                        ..Default::default()
                    });
                }
            }
        }
        let key_count = (contents.len() + common.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            is_truncated: Some(truncated),
            continuation_token: input.continuation_token,
            next_continuation_token: if truncated {
                last.as_deref().map(encode_token)
            } else {
                None
            },
            start_after: input.start_after,
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!common.is_empty()).then(|| {
                common
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect()
            }),
            // Keys are returned as they are: echoing `url` would make clients (the AWS CLI
            // asks for it) URL-decode keys that were never encoded, corrupting any with '+'
            // or '%'.
            encoding_type: None,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let initiator = req
            .credentials
            .as_ref()
            .map(|c| c.access_key.clone())
            .unwrap_or_default();
        let input = req.input;
        self.bucket(&input.bucket).await?;
        self.object_path(&input.bucket, &input.key)?;
        let upload_id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self
            .layout
            .upload_dir(&upload_id)
            .ok_or_else(no_such_upload)?;
        let upload = Upload {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            initiated_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            initiator,
            content_type: input.content_type.map(|c| c.to_string()),
            metadata: user_metadata(input.metadata),
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| internal(e, "creating an upload"))?;
        store::write_json(&self.layout, &dir.join("upload.json"), &upload)
            .await
            .map_err(|e| internal(e, "creating an upload"))?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let trailer = trailer_header(&req.headers);
        let input = req.input;
        if !(1..=MAX_PART_NUMBER).contains(&input.part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            ));
        }
        let (dir, _) = self
            .upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let claimed = Claimed {
            content_md5: input.content_md5,
            crc32: input.checksum_crc32,
            crc32c: input.checksum_crc32c,
            sha1: input.checksum_sha1,
            sha256: input.checksum_sha256,
            crc64nvme: input.checksum_crc64nvme,
            algorithm: input.checksum_algorithm,
            trailer,
        };
        let (tmp, _, md5) = self
            .receive(input.body, claimed, req.trailing_headers)
            .await?;
        let md5 = hex::encode(md5);
        let name = format!("{:05}-{md5}.part", input.part_number);
        let _guard = self.commit.lock().await;
        // Aborted or completed while the body was arriving.
        self.upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        tmp.persist(&dir.join(&name))
            .await
            .map_err(|e| internal(e, "storing a part"))?;
        let stale_prefix = format!("{:05}-", input.part_number);
        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let other = entry.file_name();
                let other = other.to_string_lossy();
                if other.starts_with(&stale_prefix) && other != name {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
            }
        }
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(quoted(&md5)),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let (dir, upload) = self
            .upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let max = page_size(input.max_parts);
        let after = input.part_number_marker.unwrap_or(0);
        let all = self.parts(&dir).await?;
        let mut parts = Vec::new();
        let mut truncated = false;
        for part in all.values().filter(|p| p.number > after) {
            if parts.len() == max {
                truncated = true;
                break;
            }
            parts.push(Part {
                part_number: Some(part.number),
                e_tag: Some(quoted(&part.md5)),
                size: i64::try_from(part.size).ok(),
                last_modified: Some(timestamp(part.modified)),
                ..Default::default()
            });
        }
        let next = parts.last().and_then(|p: &Part| p.part_number);
        let initiator = Initiator {
            id: Some(upload.initiator.clone()),
            display_name: Some(upload.initiator),
        };
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: if truncated { next } else { None },
            is_truncated: Some(truncated),
            parts: (!parts.is_empty()).then_some(parts),
            initiator: Some(initiator),
            owner: Some(Owner {
                display_name: Some("tern".into()),
                id: Some(LOCAL_ACCOUNT_ID.into()),
            }),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads = Vec::new();
        let mut entries = tokio::fs::read_dir(&self.layout.uploads)
            .await
            .map_err(|e| internal(e, "listing uploads"))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| internal(e, "listing uploads"))?
        {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if tokio::fs::try_exists(entry.path().join("completed.json"))
                .await
                .unwrap_or(false)
            {
                continue;
            }
            let Ok(Some(upload)) =
                store::read_json::<Upload>(&entry.path().join("upload.json")).await
            else {
                continue;
            };
            if upload.bucket == input.bucket && upload.key.starts_with(&prefix) {
                uploads.push((id, upload));
            }
        }
        uploads.sort_by(|a, b| {
            (a.1.key.as_str(), a.1.initiated_secs, a.0.as_str()).cmp(&(
                b.1.key.as_str(),
                b.1.initiated_secs,
                b.0.as_str(),
            ))
        });
        if let Some(key_marker) = &input.key_marker {
            let id_marker = input.upload_id_marker.as_deref();
            uploads.retain(|(id, u)| match id_marker {
                Some(m) => {
                    u.key.as_str() > key_marker.as_str()
                        || (u.key == *key_marker && id.as_str() > m)
                }
                None => u.key.as_str() > key_marker.as_str(),
            });
        }
        let max = page_size(input.max_uploads);
        let truncated = uploads.len() > max;
        uploads.truncate(max);
        let next_key = truncated
            .then(|| uploads.last().map(|u| u.1.key.clone()))
            .flatten();
        let next_id = truncated
            .then(|| uploads.last().map(|u| u.0.clone()))
            .flatten();
        let uploads: Vec<MultipartUpload> = uploads
            .into_iter()
            .map(|(id, u)| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(id),
                initiated: Some(timestamp(
                    UNIX_EPOCH + Duration::from_secs(u.initiated_secs),
                )),
                initiator: Some(Initiator {
                    id: Some(u.initiator.clone()),
                    display_name: Some(u.initiator),
                }),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: next_key,
            next_upload_id_marker: next_id,
            uploads: (!uploads.is_empty()).then_some(uploads),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let origin = origin(&req);
        let input = req.input;
        // What needs no data moved is checked here, so that its errors get their own status.
        let parts = match self.plan_completion(&input).await? {
            Plan::Done(etag) => {
                return Ok(S3Response::new(completed_output(
                    &input.bucket,
                    &input.key,
                    &etag,
                )))
            }
            Plan::Assemble(parts) => parts,
        };
        // Assembling a disk image can take minutes: like S3, answer 200 at once and keep the
        // connection alive with whitespace until the result (or an error document) follows.
        let store = self.clone();
        let future = async move {
            store
                .complete_in_background(input.bucket, input.key, input.upload_id, parts, origin)
                .await
        };
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            future: Some(Box::pin(future)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        // Not in the middle of a Complete of the same upload: wait for it to finish.
        let lock = self.upload_lock(&input.upload_id);
        let _held = lock.lock().await;
        let (dir, _) = self
            .upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let _guard = self.commit.lock().await;
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| internal(e, "aborting an upload"))?;
        self.completing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&input.upload_id);
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::inner::parse_part_name;
    use super::*;
    use crate::s3::ObjectCreated;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<serde_json::Value>>);

    impl ObjectCreatedSink for Recorder {
        fn object_created(&self, event: serde_json::Value) {
            self.0.lock().unwrap().push(event);
        }
    }

    fn recorded(bucket: &str, key: &str, etag: &str, sequencer: &str) -> ObjectCreated {
        ObjectCreated {
            id: uuid::Uuid::new_v4().to_string(),
            time: "2026-01-01T00:00:00Z".into(),
            region: "us-east-1".into(),
            account: LOCAL_ACCOUNT_ID.into(),
            bucket: bucket.into(),
            key: key.into(),
            size: 5,
            etag: etag.into(),
            sequencer: sequencer.into(),
            request_id: "R".into(),
            requester: LOCAL_ACCOUNT_ID.into(),
            source_ip_address: "127.0.0.1".into(),
            reason: "PutObject".into(),
        }
    }

    /// A crash after an event was recorded: delivered at the next start if its object was
    /// published, dropped if the crash came before the rename (no object, or the old one).
    #[tokio::test]
    async fn events_left_by_a_crash_are_delivered_once_their_object_exists() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.prepare().await.unwrap();
        let object = layout.object_path(STAGING_BUCKET, "runs/a").unwrap();
        std::fs::create_dir_all(object.parent().unwrap()).unwrap();
        std::fs::write(&object, b"hello").unwrap();
        let etag = hex::encode(Md5::digest(b"hello"));
        for (name, event) in [
            ("1-a.json", recorded(STAGING_BUCKET, "runs/a", &etag, "1")),
            (
                "2-b.json",
                recorded(STAGING_BUCKET, "runs/never-renamed", &etag, "2"),
            ),
            ("3-c.json", recorded(STAGING_BUCKET, "runs/a", "0123", "3")),
        ] {
            store::write_json(&layout, &layout.notifications.join(name), &event)
                .await
                .unwrap();
        }

        let sink = Arc::new(Recorder::default());
        StagingStore::open(dir.path(), "us-east-1", Some(sink.clone()))
            .await
            .unwrap();
        let events = sink.0.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["detail"]["object"]["key"], "runs/a");
        assert_eq!(events[0]["detail"]["object"]["sequencer"], "1");
        assert_eq!(
            std::fs::read_dir(&layout.notifications).unwrap().count(),
            0,
            "delivered and dropped events are both gone"
        );

        // Nothing left: a second start delivers nothing again.
        let again = Arc::new(Recorder::default());
        StagingStore::open(dir.path(), "us-east-1", Some(again.clone()))
            .await
            .unwrap();
        assert!(again.0.lock().unwrap().is_empty());
    }

    #[test]
    fn part_file_names_round_trip() {
        let md5 = "0123456789abcdef0123456789abcdef";
        let name = format!("{:05}-{md5}.part", 42);
        assert_eq!(parse_part_name(&name), Some((42, md5)));
        assert_eq!(parse_part_name("upload.json"), None);
        assert_eq!(parse_part_name("00001-short.part"), None);
    }
}
