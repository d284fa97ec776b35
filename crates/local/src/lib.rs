//! Tern's embedded adapters and the `tern serve` runtime.
//!
//! [`start`] runs Tern on one machine: it opens (or creates) a data directory holding the
//! SQLite database `tern.db` and the `credentials` file, binds an HTTP listener, verifies the
//! SigV4 signature of every request against the local key pairs, and hands authenticated
//! requests to [`tern_api::Api`]. The same listener serves the S3 staging store ([`s3`]) for
//! every request that is not `POST /`. Replication runs in the same process ([`replication`]):
//! the States engine on `statemachines/replication-run.asl.json`, the image service
//! ([`images`]), the scheduler, and the event bus ([`bus`]). The `tern serve` command, `tern
//! demo` and the acceptance tests all start the server through it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern_local::ServeError> {
//! let running = tern_local::start(tern_local::ServeConfig::new(
//!     "./tern-data",
//!     "127.0.0.1:0".parse().unwrap(),
//! ))
//! .await?;
//! println!("{} {}", running.endpoint(), running.credentials_file().display());
//! running.shutdown().await;
//! # Ok(()) }
//! ```

pub mod bus;
pub mod credentials;
pub mod guest;
pub mod images;
pub mod launcher;
pub mod pause;
pub mod replication;
pub mod s3;
pub mod server;
pub use tern_sigv4 as sigv4;
pub mod sqlite;

pub use credentials::Credentials;
pub use server::{
    start, DomainClock, ReplicationOptions, Running, ServeConfig, ServeError, LOCAL_EVENT_SOURCE,
};
pub use sqlite::SqliteStore;
