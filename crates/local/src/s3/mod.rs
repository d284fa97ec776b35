//! The local staging store: an S3-compatible endpoint over the data directory.
//!
//! The connector uploads disk data and run manifests here exactly as it would to the staging
//! bucket of the AWS deployment, and the local image service reads what it staged straight
//! from the file system. The S3 protocol (REST routing, XML, SigV4 including `aws-chunked`
//! streaming uploads) is the `s3s` crate's; this module is the storage behind it
//! ([`StagingStore`]), the key lookup for signatures ([`auth`]) and the "Object Created"
//! notifications ([`ObjectCreatedSink`]).
//!
//! # Layout
//!
//! ```text
//! DATA_DIR/staging/<bucket>/<key>           complete objects, plain files (key '/' = directory)
//! DATA_DIR/staging-internal/tmp/            files being written; renamed into place when complete
//! DATA_DIR/staging-internal/objects/<bucket>/<sha256(key)>.json
//!                                           ETag, size, content type and user metadata of an object
//! DATA_DIR/staging-internal/uploads/<upload-id>/
//!     upload.json                           bucket, key, initiation time, content type, metadata
//!     <part number, 5 digits>-<md5>.part    one uploaded part
//!     completed.json                        the result, kept so that a retried Complete succeeds
//! DATA_DIR/staging-internal/notifications/  Object Created events not yet accepted by the sink
//! ```
//!
//! A file appears under `staging/` only once its object is complete: every write goes to
//! `tmp/` and is renamed into place, and multipart parts stay in `uploads/` until
//! CompleteMultipartUpload. Uploads in progress therefore survive a restart.
//!
//! # Notifications
//!
//! After PutObject, CopyObject and CompleteMultipartUpload the sink receives an event shaped
//! like the one EventBridge delivers for S3 "Object Created". Delivery is **at-least-once**:
//! the event is written to `notifications/` before the object becomes visible and removed once
//! [`ObjectCreatedSink::object_created`] has returned; at the next start, leftover events whose
//! object still exists with the same ETag are delivered again. Consumers must be idempotent
//! (the event `id` and the object's `sequencer` stay the same across redeliveries).

pub mod auth;
mod event;
mod service;
mod store;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use event::{object_created_event, ObjectCreated};
pub use service::StagingStore;

/// The bucket that exists from the start: the connector's uploads go here.
pub const STAGING_BUCKET: &str = "tern-staging";
/// Directory under the data directory that holds the buckets.
pub const STAGING_DIR: &str = "staging";
/// Directory under the data directory for everything that is not a complete object.
pub const INTERNAL_DIR: &str = "staging-internal";

/// Where the multipart uploads in progress of the endpoint over `data_dir` are kept (see the
/// layout above): what the `Staging` port's `delete_prefix` aborts.
pub fn uploads_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    store::Layout::new(data_dir).uploads
}
/// Account id in ARNs and events: the local deployment has no AWS account, and twelve zeros
/// is what local AWS emulators use, so tools that parse account ids accept it.
pub const LOCAL_ACCOUNT_ID: &str = "000000000000";
/// SigV4 signing name of S3.
pub const SERVICE: &str = "s3";

/// Receives an event for every object created in the staging store.
///
/// Called after the object is visible, once per object, possibly again after a crash (see the
/// module documentation). It runs on the request's task, so it should hand the event off
/// (e.g. to a queue) rather than block.
pub trait ObjectCreatedSink: Send + Sync {
    /// `event` is an EventBridge event with `detail-type` "Object Created" and source `aws.s3`.
    fn object_created(&self, event: serde_json::Value);
}

impl fmt::Debug for dyn ObjectCreatedSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObjectCreatedSink")
    }
}

/// What the staging endpoint needs from `tern serve`.
pub struct StagingConfig<'a> {
    pub data_dir: &'a Path,
    pub region: &'a str,
    /// Key pairs that may use S3.
    pub keys: Vec<crate::Credentials>,
    pub sink: Option<Arc<dyn ObjectCreatedSink>>,
}

/// Opens the staging store (creating its directories and the [`STAGING_BUCKET`]), delivers
/// notifications left over from a previous run, and builds the S3 service.
pub async fn build(cfg: StagingConfig<'_>) -> std::io::Result<s3s::service::S3Service> {
    let store = StagingStore::open(cfg.data_dir, cfg.region, cfg.sink).await?;
    let mut builder = s3s::service::S3ServiceBuilder::new(store);
    builder.set_auth(auth::LocalKeys::new(cfg.keys));
    builder.set_access(auth::RegionCheck::new(cfg.region));
    Ok(builder.build())
}
