//! CompleteMultipartUpload: planned once per upload, assembled in the background, idempotent.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use md5::{Digest as _, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Result};

use super::super::store::{self};
use super::*;

pub(super) enum Plan {
    /// Completed before (a retry): its ETag.
    Done(String),
    /// The stored parts, in order, that make up the object.
    Assemble(Vec<StoredPart>),
}

pub(super) fn completed_output(
    bucket: &str,
    key: &str,
    etag: &str,
) -> CompleteMultipartUploadOutput {
    CompleteMultipartUploadOutput {
        bucket: Some(bucket.to_owned()),
        key: Some(key.to_owned()),
        e_tag: Some(quoted(etag)),
        location: Some(format!("/{bucket}/{key}")),
        ..Default::default()
    }
}

impl Inner {
    pub(super) fn upload_lock(&self, upload_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.completing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(upload_id.to_owned())
            .or_default()
            .clone()
    }

    pub(super) async fn completed(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
    ) -> Option<String> {
        let dir = self.layout.upload_dir(upload_id)?;
        match store::read_json::<Completed>(&dir.join("completed.json")).await {
            Ok(Some(c)) if c.bucket == bucket && c.key == key => Some(c.etag),
            _ => None,
        }
    }

    pub(super) async fn plan_completion(
        &self,
        input: &CompleteMultipartUploadInput,
    ) -> S3Result<Plan> {
        // A retry of a Complete that succeeded (its response lost) succeeds again, without
        // a second notification.
        if let Some(etag) = self
            .completed(&input.upload_id, &input.bucket, &input.key)
            .await
        {
            return Ok(Plan::Done(etag));
        }
        let (dir, _) = self
            .upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let requested = input
            .multipart_upload
            .as_ref()
            .and_then(|m| m.parts.as_ref())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                s3_error!(
                    MalformedXML,
                    "You must specify at least one part in CompleteMultipartUpload."
                )
            })?;
        let numbers: Vec<i32> = requested
            .iter()
            .map(|p| p.part_number.unwrap_or(0))
            .collect();
        if numbers[0] < 1 || numbers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(s3_error!(
                InvalidPartOrder,
                "The list of parts was not in ascending order. The parts list must be specified in order by part number."
            ));
        }
        let mut stored = self.parts(&dir).await?;
        let mut chosen = Vec::with_capacity(requested.len());
        for (i, (part, number)) in requested.iter().zip(&numbers).enumerate() {
            let matches = stored.get(number).is_some_and(|s| {
                part.e_tag
                    .as_ref()
                    .is_some_and(|e| e.value().trim_matches('"').eq_ignore_ascii_case(&s.md5))
            });
            let Some(found) = stored.remove(number).filter(|_| matches) else {
                return Err(s3_error!(
                    InvalidPart,
                    "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag."
                ));
            };
            if i + 1 < requested.len() && found.size < MIN_PART_BYTES {
                return Err(s3_error!(
                    EntityTooSmall,
                    "Your proposed upload is smaller than the minimum allowed size: every part but the last must be at least 5 MiB."
                ));
            }
            chosen.push(found);
        }
        Ok(Plan::Assemble(chosen))
    }
}

impl StagingStore {
    pub(super) async fn complete_in_background(
        self,
        bucket: String,
        key: String,
        upload_id: String,
        parts: Vec<StoredPart>,
        origin: Origin,
    ) -> S3Result<CompleteMultipartUploadOutput> {
        let lock = self.upload_lock(&upload_id);
        let held = lock.lock().await;
        let result = self
            .assemble(&bucket, &key, &upload_id, parts, &origin)
            .await;
        drop(held);
        self.completing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&upload_id);
        result.map(|etag| completed_output(&bucket, &key, &etag))
    }
}

impl Inner {
    pub(super) async fn assemble(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<StoredPart>,
        origin: &Origin,
    ) -> S3Result<String> {
        // Another Complete of this upload may have finished while this one waited.
        if let Some(etag) = self.completed(upload_id, bucket, key).await {
            return Ok(etag);
        }
        let (dir, upload) = self.upload(upload_id, bucket, key).await?;
        let mut digests = Md5::new();
        for part in &parts {
            digests.update(hex::decode(&part.md5).unwrap_or_default());
        }
        let etag = format!("{}-{}", hex::encode(digests.finalize()), parts.len());
        let mut tmp = self
            .layout
            .temp_file()
            .await
            .map_err(|e| internal(e, "creating a temporary file"))?;
        let sources: Vec<PathBuf> = parts.iter().map(|p| p.path.clone()).collect();
        let file = tmp.fill_from(sources).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                // Aborted, or a part replaced, while waiting.
                no_such_upload()
            } else {
                internal(e, "assembling an object")
            }
        })?;
        let completed = Completed {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            etag: etag.clone(),
        };
        let marker = dir.join("completed.json");
        let layout = &self.layout;
        self.publish(
            tmp,
            &file,
            bucket,
            key,
            etag.clone(),
            upload.content_type,
            upload.metadata,
            "CompleteMultipartUpload",
            origin,
            async || store::write_json(layout, &marker, &completed).await,
        )
        .await?;
        // The parts are no longer needed once the marker says the upload is complete.
        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                if entry.file_name().to_string_lossy().ends_with(".part") {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
            }
        }
        Ok(etag)
    }
}

impl Inner {
    /// Deletes an object if it exists (S3 answers a delete of a missing key with success).
    pub(super) async fn remove(&self, bucket_dir: &Path, bucket: &str, key: &str) -> S3Result<()> {
        let Ok(path) = self.layout.object_path(bucket, key) else {
            return Ok(());
        };
        let _guard = self.commit.lock().await;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory
                    || e.kind() == io::ErrorKind::IsADirectory =>
            {
                return Ok(())
            }
            Err(e) => return Err(internal(e, "deleting an object")),
        }
        let _ = tokio::fs::remove_file(self.layout.meta_path(bucket, key)).await;
        store::prune_empty_dirs(bucket_dir, &path).await;
        Ok(())
    }
}
