//! Tern's domain core: ids, entities, validation, state transitions, use cases and the port
//! traits that adapters implement. Depends on no infrastructure crate.

pub mod store;
