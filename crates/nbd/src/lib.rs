//! A small synchronous client of the NBD protocol (the NetworkBlockDevice project's
//! `doc/proto.md`), enough to read a disk export and ask which parts of it are allocated or
//! dirty:
//!
//! * fixed newstyle handshake (`NBD_FLAG_NO_ZEROES` when offered), `NBD_OPT_STRUCTURED_REPLY`,
//!   `NBD_OPT_SET_META_CONTEXT` (`base:allocation`, `qemu:dirty-bitmap:NAME`), `NBD_OPT_GO`
//!   with the export's size and block sizes;
//! * `NBD_CMD_READ` with simple or structured replies (data, hole and error chunks),
//!   `NBD_CMD_BLOCK_STATUS` per context, `NBD_CMD_DISC`;
//! * Unix sockets and TCP.
//!
//! A broken or hostile server gets a named [`NbdError`]: lengths are checked before anything
//! is allocated or read, replies must match the one request in flight, and after any error
//! that leaves the stream out of step the connection refuses further commands.
//!
//! [`NbdDisk`] adapts a connection to [`tern_disk::VirtualDisk`]. See `README.md` for why this
//! crate exists rather than a dependency.

mod client;
mod disk;
mod error;
mod handshake;
mod proto;

pub use client::{BlockExtent, Client, Stats};
pub use disk::{NbdDisk, BASE_ALLOCATION};
pub use error::{errno_name, NbdError, Result};
pub use handshake::{ConnectOptions, ExportInfo};
pub use proto::{STATE_DIRTY, STATE_HOLE, STATE_ZERO};

/// The meta context of a qemu dirty bitmap.
pub fn dirty_bitmap_context(bitmap: &str) -> String {
    format!("qemu:dirty-bitmap:{bitmap}")
}
