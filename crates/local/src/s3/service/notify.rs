//! "Object Created" notifications: recorded before delivery, redelivered after a restart.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use s3s::S3Result;

use super::super::event::{object_created_event, ObjectCreated};
use super::super::store::{self, ObjectMeta, TempFile};
use super::*;

impl Inner {
    /// Publishes a finished temporary file as `bucket/key`, with its metadata and its
    /// notification.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn publish(
        &self,
        tmp: TempFile,
        file: &std::fs::Metadata,
        bucket: &str,
        key: &str,
        etag: String,
        content_type: Option<String>,
        metadata: Option<BTreeMap<String, String>>,
        reason: &str,
        origin: &Origin,
        after: impl AsyncFnOnce() -> io::Result<()>,
    ) -> S3Result<()> {
        let dest = self.object_path(bucket, key)?;
        let meta = ObjectMeta {
            key: key.to_owned(),
            etag: etag.clone(),
            size: file.len(),
            mtime_ns: store::mtime_ns(file).unwrap_or_default(),
            content_type,
            metadata,
        };
        let _guard = self.commit.lock().await;
        if let Some(parent) = dest.parent() {
            if let Err(e) = tokio::fs::create_dir_all(parent).await {
                return Err(
                    if e.kind() == io::ErrorKind::NotADirectory
                        || e.kind() == io::ErrorKind::AlreadyExists
                    {
                        key_conflict()
                    } else {
                        internal(e, "creating an object's directory")
                    },
                );
            }
        }
        if tokio::fs::metadata(&dest).await.is_ok_and(|m| m.is_dir()) {
            return Err(key_conflict());
        }
        let pending = self
            .record_notification(bucket, key, &meta, reason, origin)
            .await?;
        store::write_json(&self.layout, &self.layout.meta_path(bucket, key), &meta)
            .await
            .map_err(|e| internal(e, "writing object metadata"))?;
        tmp.persist(&dest).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotADirectory {
                key_conflict()
            } else {
                internal(e, "publishing an object")
            }
        })?;
        after()
            .await
            .map_err(|e| internal(e, "finishing an upload"))?;
        drop(_guard);
        if let Some((path, event)) = pending {
            self.deliver(&path, event).await;
        }
        Ok(())
    }

    /// Writes the event to `notifications/` before the object is published, so a crash in
    /// between cannot lose it (see [`StagingStore::redeliver`]).
    pub(super) async fn record_notification(
        &self,
        bucket: &str,
        key: &str,
        meta: &ObjectMeta,
        reason: &str,
        origin: &Origin,
    ) -> S3Result<Option<(PathBuf, ObjectCreated)>> {
        if self.sink.is_none() {
            return Ok(None);
        }
        let now = SystemTime::now();
        let nanos = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let event = ObjectCreated {
            id: uuid::Uuid::new_v4().to_string(),
            time: rfc3339(now),
            region: self.region.clone(),
            account: LOCAL_ACCOUNT_ID.into(),
            bucket: bucket.into(),
            key: key.into(),
            size: meta.size,
            etag: meta.etag.clone(),
            // Nanoseconds then a counter: increases for every event of this process, and
            // across restarts as long as the clock does.
            sequencer: format!("{:020X}{:04X}", nanos as u64, seq & 0xFFFF),
            request_id: origin.request_id.clone(),
            requester: LOCAL_ACCOUNT_ID.into(),
            source_ip_address: origin.source_ip.clone(),
            reason: reason.into(),
        };
        let path = self
            .layout
            .notifications
            .join(format!("{}-{}.json", event.sequencer, event.id));
        store::write_json(&self.layout, &path, &event)
            .await
            .map_err(|e| internal(e, "recording a notification"))?;
        Ok(Some((path, event)))
    }

    pub(super) async fn deliver(&self, path: &Path, event: ObjectCreated) {
        if let Some(sink) = &self.sink {
            sink.object_created(object_created_event(&event));
            if let Err(e) = tokio::fs::remove_file(path).await {
                tracing::warn!(error = %e, "could not remove a delivered notification; it will be delivered again at the next start");
            }
        }
    }

    /// Delivers the events of a previous run that were recorded but not handed to the sink,
    /// for objects that were published (same ETag) — in the order they were recorded.
    pub(super) async fn redeliver(&self) -> io::Result<()> {
        if self.sink.is_none() {
            return Ok(());
        }
        let mut names = Vec::new();
        let mut entries = tokio::fs::read_dir(&self.layout.notifications).await?;
        while let Some(entry) = entries.next_entry().await? {
            names.push(entry.path());
        }
        names.sort();
        for path in names {
            let event = match store::read_json::<ObjectCreated>(&path).await {
                Ok(Some(event)) => event,
                _ => {
                    let _ = tokio::fs::remove_file(&path).await;
                    continue;
                }
            };
            let published = match self.layout.object_path(&event.bucket, &event.key) {
                Ok(object) => match tokio::fs::metadata(&object).await {
                    Ok(file) => self
                        .meta(&event.bucket, &event.key, &object, &file)
                        .await
                        .is_ok_and(|m| m.etag == event.etag),
                    Err(_) => false,
                },
                Err(_) => false,
            };
            if published {
                tracing::info!(bucket = %event.bucket, "delivering an Object Created event left over from the previous run");
                self.deliver(&path, event).await;
            } else {
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
        Ok(())
    }

    pub(super) async fn forget_old_completions(&self) {
        let Ok(mut entries) = tokio::fs::read_dir(&self.layout.uploads).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let marker = entry.path().join("completed.json");
            let old = tokio::fs::metadata(&marker).await.is_ok_and(|m| {
                m.modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > COMPLETED_KEPT)
            });
            if old {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
            }
        }
    }
}
