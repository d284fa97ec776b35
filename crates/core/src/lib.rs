//! Tern's domain core: ids, entities, validation, state transitions, use cases and the port
//! traits that adapters implement. Depends on no infrastructure crate.
//!
//! * [`store`]: the `Store` port; [`memory_store`]: a complete in-memory implementation.
//! * [`keys`]: how entities are laid out in the single table.
//! * [`model`]: stored entities; [`enums`]: SMS enums with their wire strings.
//! * [`states`]: the job and run state machines.
//! * [`service`]: the use cases (connectors, catalog, jobs and runs).
//! * [`launcher`]: the `Launcher` port (LaunchApp / TerminateApp).
//! * [`replication`]: replication runs — the contract of the replication-run state machine and
//!   its task functions, upload complete, the scheduler, the staging layout and the outbox.

pub mod config;
pub mod enums;
pub mod error;
pub mod events;
pub mod images;
pub mod keys;
pub mod launcher;
pub mod memory_store;
pub mod model;
pub mod ports;
pub mod replication;
pub mod service;
pub mod staging;
pub mod states;
pub mod store;
pub mod workflows;

pub use config::{Config, ConfigError, Limits};
pub use error::DomainError;
pub use images::Images;
pub use memory_store::MemoryStore;
pub use ports::{Clock, IdKind, Ids, ManualClock, RandomIds, SystemClock};
pub use service::Service;
pub use store::Store;

#[cfg(test)]
mod tests {
    /// The domain stays free of infrastructure: adapters depend on it, never the reverse.
    #[test]
    fn depends_on_no_infrastructure_crate() {
        let manifest = include_str!("../Cargo.toml");
        let deps = manifest
            .split("[dependencies]")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            .expect("a [dependencies] section");
        for line in deps
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            for forbidden in [
                "aws-", "aws_", "lambda", "rusqlite", "axum", "hyper", "tokio", "reqwest",
            ] {
                assert!(
                    !name.starts_with(forbidden),
                    "tern-core must not depend on {name}"
                );
            }
        }
    }
}
