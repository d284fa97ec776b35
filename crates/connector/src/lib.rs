//! Tern's connector agent: the process that runs next to the hypervisor.
//!
//! It registers with the control plane (keeping its `connectorId` in a state directory so that a
//! restart is the same connector), sends heartbeats, polls for work and answers it. In this
//! release a connector serves one source: `files` — an inventory file listing VMs and their disk
//! images or OVA archives (see `README.md` in this crate for both file formats) — or `libvirt`
//! (feature `libvirt`), the domains of a libvirt URI. Work is `INVENTORY`
//! (report the VMs, each disk inspected, so that `ImportServerCatalog` fills the server
//! catalog), `REPLICATE` and `COMMIT_RUN` ([`work`], in background tasks).
//!
//! [`replicate`] runs replication work: seeds as stream-optimized VMDKs, incremental runs as
//! block deltas, both streamed into resumable S3 multipart uploads, manifest last. [`ova`]
//! lists and reads the disks of OVA archives in place. [`libvirt`] (feature `libvirt`) lists the
//! domains of a libvirt URI and replicates a running domain from a checkpoint per run, its
//! objects made before the upload ([`replicate::prepared`]).
//!
//! Requests use the same awsJson 1.1 protocol as the SMS API, under the target prefix
//! `TernConnectorService_V1`, signed with SigV4 (service `sms`) using connector credentials.

pub mod agent;
pub mod changed;
pub mod client;
pub mod config;
pub mod inventory;
pub mod libvirt;
pub mod ova;
pub mod replicate;
pub mod signing;
pub mod vsphere;
pub mod work;

pub use agent::{Agent, CycleReport};
pub use client::ApiClient;
pub use config::ConnectorConfig;
pub use inventory::Inventory;

use std::path::PathBuf;

/// Everything that can go wrong in the connector.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("config file {path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The hypervisor the connector reads could not list its VMs (the message says why).
    #[error("{0}")]
    Source(String),
    #[error("inventory file {path}: {message}")]
    Inventory { path: PathBuf, message: String },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("state directory {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signing the request: {0}")]
    Signing(String),
    #[error("calling {operation}: {source}")]
    Http {
        operation: String,
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an error: `code` is the bare error shape name.
    #[error("{operation} failed: {code}: {message}")]
    Service {
        operation: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{operation}: unexpected response: {message}")]
    Protocol { operation: String, message: String },
    /// Stopped on purpose (fault injection in tests and drills), as a killed process would:
    /// nothing is reported to the service.
    #[error("interrupted: {0}")]
    Interrupted(String),
}
