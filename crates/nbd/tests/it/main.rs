//! tern-nbd's integration tests, in one binary: against real `qemu-nbd` and
//! `qemu-storage-daemon` serving images made by `qemu-img`/`qemu-io` (`qemu`), and against a
//! fake server on a socket pair that breaks the protocol on purpose (`hostile`).

mod hostile;
mod qemu;
