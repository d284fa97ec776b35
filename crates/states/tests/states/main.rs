//! Integration tests of the engine: the conformance corpus (ours and, for machines without Task
//! states, moto's), restarts, the execution API and task integration patterns.

mod api;
mod common;
mod corpus;
mod moto;
mod restart;
