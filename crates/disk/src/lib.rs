//! Tern's disk image engine.
//!
//! * [`open`] any supported image as a [`VirtualDisk`]: raw, qcow2, VMDK, VHD, VHDX. The format
//!   is detected from the content, never from the file name, unless the caller states it.
//! * [`write`](mod@write): convert a virtual disk to a stream-optimized VMDK (what EC2 ImportSnapshot takes),
//!   a sparse raw file, or qcow2.
//! * [`blockmap`] and [`delta`]: 512 KiB block maps (all-zero flag and BLAKE3 per block),
//!   deltas between a block map and the current disk (with the SHA-256 EBS needs for each
//!   changed block), and the delta object format.
//! * [`inspect`]: partition table, filesystems and EFI system partition of a disk.
//!
//! See `README.md` in this crate for the supported variants, the file formats and the limits.

pub mod blockmap;
pub mod delta;
mod disk;
mod error;
mod formats;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
mod io;
mod par;
pub mod write;

pub use disk::{detect, open, open_bytes, open_range, Extent, Format, OpenOptions, VirtualDisk};
pub use error::{DiskError, Result};
pub use formats::vmdk::{flat_extents as vmdk_flat_extents, FlatExtent as VmdkFlatExtent};
pub use io::is_zero;

/// Called with the number of virtual-disk bytes just processed; used for progress bars.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// A progress callback that ignores progress.
pub fn no_progress(_: u64) {}
