//! The integration tests of tern-disk, in one binary.

mod delta;
mod hostile;
mod inspect;
mod qemu;
