//! The `Staging` port: the bucket connectors upload runs into.
//!
//! In AWS this is S3; on one machine it is the S3-compatible endpoint of `tern serve`, whose
//! objects are files under the data directory. The domain reads small objects (manifests, user
//! data), removes a run's objects once its image exists, and writes the templates it generates;
//! the image side reads the disk data itself.

use async_trait::async_trait;

use crate::images::StagedObject;

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("no object {0}")]
    NotFound(String),
    /// The object is larger than the caller is willing to read.
    #[error("{0}")]
    TooLarge(String),
    /// Throttled or unreachable; the same call may succeed later.
    #[error("{message}")]
    Transient {
        message: String,
        #[source]
        source: Option<Source>,
    },
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Source>,
    },
}

#[async_trait]
pub trait Staging: Send + Sync {
    /// The whole object, refused with `TooLarge` above `max_bytes`.
    async fn get_object(
        &self,
        object: &StagedObject,
        max_bytes: u64,
    ) -> Result<Vec<u8>, StagingError>;

    /// The object's size, or `None` when it does not exist.
    async fn object_size(&self, object: &StagedObject) -> Result<Option<u64>, StagingError>;

    /// Deletes every object under `prefix` and aborts every multipart upload in progress under
    /// it; returns how many objects were deleted. Deleting an empty prefix succeeds.
    async fn delete_prefix(&self, bucket: &str, prefix: &str) -> Result<u64, StagingError>;

    /// Writes a whole object (replacing one of the same key). It becomes visible complete or
    /// not at all. Used for what the service itself produces (CloudFormation templates and
    /// change sets).
    async fn put_object(
        &self,
        object: &StagedObject,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StagingError>;
}
