//! Tern's domain core: ids, entities, validation, state transitions, use cases and the port
//! traits that adapters implement. Depends on no infrastructure crate.

pub mod config;
pub mod ports;
pub mod store;

pub use config::{Config, Limits};
pub use ports::{Clock, IdKind, Ids, RandomIds, SystemClock};
pub use store::Store;
