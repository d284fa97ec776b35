//! The [`Staging`] port on Amazon S3: the bucket connectors upload runs into. The domain reads
//! manifests (small objects), checks that the objects a manifest lists exist, and removes a
//! run's objects once its image exists, including multipart uploads a connector left open, so
//! nothing of a finished or abandoned run stays behind.

use async_trait::async_trait;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use tern_core::images::StagedObject;
use tern_core::staging::{Staging, StagingError};

use crate::sdk::{classify, Failure};

/// S3 staging, through one client (the bucket is named by each call).
#[derive(Debug, Clone)]
pub struct S3Staging {
    client: Client,
}

impl S3Staging {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// `missing`: the typed error says the object is not there (its code is only filled in when it
/// came off the wire, so the variant is checked too).
fn staging_error(f: Failure, missing: bool) -> StagingError {
    let missing = missing || matches!(f.code.as_deref(), Some("NoSuchKey" | "NotFound"));
    match f.code.as_deref() {
        _ if missing => StagingError::NotFound(f.message),
        _ if f.transient => StagingError::Transient {
            message: f.message,
            source: None,
        },
        _ => StagingError::Internal {
            message: f.message,
            source: None,
        },
    }
}

#[async_trait]
impl Staging for S3Staging {
    async fn get_object(
        &self,
        object: &StagedObject,
        max_bytes: u64,
    ) -> Result<Vec<u8>, StagingError> {
        // One byte more than allowed tells a too-large object from one of exactly `max_bytes`
        // without reading it whole.
        let out = self
            .client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .range(format!("bytes=0-{max_bytes}"))
            .send()
            .await
            .map_err(|e| {
                let missing = matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_)));
                staging_error(classify("GetObject", &e), missing)
            })?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StagingError::Transient {
                message: format!("GetObject {object}: reading the body: {e}"),
                source: Some(Box::new(e)),
            })?
            .into_bytes();
        if bytes.len() as u64 > max_bytes {
            return Err(StagingError::TooLarge(format!(
                "{object} is larger than the {max_bytes} bytes allowed"
            )));
        }
        Ok(bytes.to_vec())
    }

    async fn object_size(&self, object: &StagedObject) -> Result<Option<u64>, StagingError> {
        match self
            .client
            .head_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => {
                let missing = matches!(e.as_service_error(), Some(HeadObjectError::NotFound(_)));
                match staging_error(classify("HeadObject", &e), missing) {
                    StagingError::NotFound(_) => Ok(None),
                    other => Err(other),
                }
            }
        }
    }

    async fn put_object(
        &self,
        object: &StagedObject,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StagingError> {
        self.client
            .put_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .content_type(content_type)
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .send()
            .await
            .map_err(|e| staging_error(classify("PutObject", &e), false))?;
        Ok(())
    }

    async fn delete_prefix(&self, bucket: &str, prefix: &str) -> Result<u64, StagingError> {
        let mut deleted = 0u64;
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| staging_error(classify("ListObjectsV2", &e), false))?;
            let ids = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StagingError::Internal {
                    message: format!("DeleteObjects: {e}"),
                    source: None,
                })?;
            if ids.is_empty() {
                continue;
            }
            let count = ids.len() as u64;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| StagingError::Internal {
                    message: format!("DeleteObjects: {e}"),
                    source: None,
                })?;
            let out = self
                .client
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| staging_error(classify("DeleteObjects", &e), false))?;
            if let Some(err) = out.errors().first() {
                return Err(StagingError::Transient {
                    message: format!(
                        "DeleteObjects left {} object(s), first {}: {}",
                        out.errors().len(),
                        err.key().unwrap_or_default(),
                        err.message().unwrap_or_default()
                    ),
                    source: None,
                });
            }
            deleted += count;
        }
        // Uploads a connector started and never completed hold parts that cost storage.
        let uploads = self
            .client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .map_err(|e| staging_error(classify("ListMultipartUploads", &e), false))?;
        for upload in uploads.uploads() {
            let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                continue;
            };
            match self
                .client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) => match staging_error(classify("AbortMultipartUpload", &e), false) {
                    StagingError::NotFound(_) => {}
                    other => return Err(other),
                },
            }
        }
        Ok(deleted)
    }
}
