//! The `Staging` port over the local S3 endpoint's files: `<staging_root>/<bucket>/<key>`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tern_core::images::{ImagesError, StagedObject};
use tern_core::staging::{Staging, StagingError};

use crate::images::staging::{check_names, resolve};

pub struct LocalStaging {
    root: PathBuf,
    /// The endpoint's multipart uploads in progress (`staging-internal/uploads/<id>/`).
    uploads: PathBuf,
}

impl LocalStaging {
    /// `root` is `DATA_DIR/staging`; the uploads in progress are beside it, in the S3
    /// endpoint's layout.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            uploads: crate::s3::uploads_dir(root.parent().unwrap_or(root)),
        }
    }

    /// Aborts every multipart upload in progress of `bucket` whose key starts with `prefix`
    /// (as AbortMultipartUpload does: its parts go). A completed upload's record is the
    /// endpoint's (a retried Complete answers from it) and is left alone.
    fn abort_uploads(&self, bucket: &str, prefix: &str) -> Result<u64, StagingError> {
        #[derive(serde::Deserialize)]
        struct Upload {
            bucket: String,
            key: String,
        }
        let entries = match std::fs::read_dir(&self.uploads) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(format!("cannot list {}", self.uploads.display()))(e)),
        };
        let mut aborted = 0;
        for entry in entries {
            let dir = entry
                .map_err(io(format!("cannot list {}", self.uploads.display())))?
                .path();
            if dir.join("completed.json").exists() {
                continue;
            }
            let Ok(bytes) = std::fs::read(dir.join("upload.json")) else {
                continue; // being created or aborted meanwhile
            };
            let Ok(upload) = serde_json::from_slice::<Upload>(&bytes) else {
                continue;
            };
            if upload.bucket != bucket || !upload.key.starts_with(prefix) {
                continue;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => aborted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("cannot abort the upload {}", dir.display()))(e)),
            }
        }
        Ok(aborted)
    }
}

fn from_images(e: ImagesError) -> StagingError {
    match e {
        ImagesError::NotFound(m) => StagingError::NotFound(m),
        other => StagingError::Internal {
            message: other.to_string(),
            source: Some(Box::new(other)),
        },
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StagingError {
    move |e| StagingError::Internal {
        message: what,
        source: Some(Box::new(e)),
    }
}

#[async_trait]
impl Staging for LocalStaging {
    async fn get_object(
        &self,
        object: &StagedObject,
        max_bytes: u64,
    ) -> Result<Vec<u8>, StagingError> {
        let path = resolve(&self.root, object).map_err(from_images)?;
        let len = std::fs::metadata(&path)
            .map_err(io(format!("cannot stat {object}")))?
            .len();
        if len > max_bytes {
            return Err(StagingError::TooLarge(format!(
                "{object} is {len} bytes, more than the {max_bytes} allowed"
            )));
        }
        tokio::fs::read(&path)
            .await
            .map_err(io(format!("cannot read {object}")))
    }

    async fn object_size(&self, object: &StagedObject) -> Result<Option<u64>, StagingError> {
        match resolve(&self.root, object) {
            Ok(path) => Ok(Some(
                std::fs::metadata(&path)
                    .map_err(io(format!("cannot stat {object}")))?
                    .len(),
            )),
            Err(ImagesError::NotFound(_)) => Ok(None),
            Err(e) => Err(from_images(e)),
        }
    }

    async fn delete_prefix(&self, bucket: &str, prefix: &str) -> Result<u64, StagingError> {
        let probe = StagedObject {
            bucket: bucket.to_string(),
            key: prefix.trim_end_matches('/').to_string(),
        };
        check_names(&probe).map_err(from_images)?;
        if !prefix.ends_with('/') {
            return Ok(0);
        }
        self.abort_uploads(bucket, prefix)?;
        let dir = self.root.join(bucket).join(&probe.key);
        if !dir.is_dir() {
            return Ok(0);
        }
        let mut count = 0u64;
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for entry in
                std::fs::read_dir(&d).map_err(io(format!("cannot list {}", d.display())))?
            {
                let entry = entry.map_err(io(format!("cannot list {}", d.display())))?;
                let kind = entry
                    .file_type()
                    .map_err(io(format!("cannot stat {}", entry.path().display())))?;
                if kind.is_dir() {
                    stack.push(entry.path());
                } else {
                    count += 1;
                }
            }
        }
        std::fs::remove_dir_all(&dir).map_err(io(format!("cannot delete {}", dir.display())))?;
        Ok(count)
    }

    async fn put_object(
        &self,
        object: &StagedObject,
        body: Vec<u8>,
        _content_type: &str,
    ) -> Result<(), StagingError> {
        check_names(object).map_err(from_images)?;
        let path = self.root.join(&object.bucket).join(&object.key);
        let dir = path
            .parent()
            .ok_or_else(|| StagingError::Internal {
                message: format!("{object} has no parent directory"),
                source: None,
            })?
            .to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io(format!("cannot create the directory of {object}")))?;
        // Written beside the staging root (not inside a bucket, so never listed as an object)
        // and renamed into place, so readers see the whole object or none.
        let tmp = self.root.join(format!(".put-{}", uuid::Uuid::new_v4()));
        tokio::fs::write(&tmp, &body)
            .await
            .map_err(io(format!("cannot write {object}")))?;
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io(format!("cannot move {object} into place"))(e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_object_writes_whole_objects_inside_the_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let staging = LocalStaging::new(dir.path());
        let obj = StagedObject {
            bucket: "staging".into(),
            key: "templates/app-1/template.yaml".into(),
        };
        staging
            .put_object(&obj, b"Resources: {}\n".to_vec(), "application/x-yaml")
            .await
            .unwrap();
        assert_eq!(
            staging.get_object(&obj, 100).await.unwrap(),
            b"Resources: {}\n"
        );
        // Replacing it leaves no temporary file behind.
        staging
            .put_object(&obj, b"x".to_vec(), "text/plain")
            .await
            .unwrap();
        assert_eq!(staging.get_object(&obj, 100).await.unwrap(), b"x");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["staging"]);
        for key in ["../escape", "/abs", "a//b"] {
            let bad = StagedObject {
                bucket: "staging".into(),
                key: key.into(),
            };
            assert!(
                staging.put_object(&bad, vec![], "x").await.is_err(),
                "{key}"
            );
        }
    }
}
