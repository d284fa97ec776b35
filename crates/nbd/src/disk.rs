//! [`NbdDisk`]: an NBD export read as a [`VirtualDisk`], so Tern's replication (block maps,
//! deltas, the stream VMDK writer) reads an export like any image file.

use std::sync::{Mutex, MutexGuard};

use tern_disk::{DiskError, Extent, Format, VirtualDisk};

use crate::client::{Client, Stats};
use crate::proto::STATE_ZERO;
use crate::NbdError;

/// The meta context of allocation status every NBD server with block status offers.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// An export seen as a virtual disk. Reads go through one connection, one at a time.
pub struct NbdDisk {
    client: Mutex<Client>,
    size: u64,
}

fn disk_err(e: NbdError) -> DiskError {
    DiskError::Stream(std::io::Error::other(e))
}

impl NbdDisk {
    pub fn new(client: Client) -> NbdDisk {
        NbdDisk {
            size: client.size(),
            client: Mutex::new(client),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Client> {
        // A panic cannot leave the client half-way through a reply that a later call would
        // misread: every error marks it unusable before returning.
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the connection did so far (bytes read, block status requests).
    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }

    /// Runs `f` on the connection (block status in another context, say).
    pub fn with_client<T>(&self, f: impl FnOnce(&mut Client) -> T) -> T {
        f(&mut self.lock())
    }

    pub fn into_client(self) -> Client {
        self.client.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl VirtualDisk for NbdDisk {
    /// An export shows the guest's bytes, whatever the image behind it is.
    fn format(&self) -> Format {
        Format::Raw
    }

    fn variant(&self) -> String {
        "nbd".into()
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// From `base:allocation` when the server agreed to it (extents that read as zeros are
    /// left out); otherwise the whole disk.
    fn allocated(&self) -> tern_disk::Result<Vec<Extent>> {
        let mut c = self.lock();
        if c.context_id(BASE_ALLOCATION).is_none() || self.size == 0 {
            return Ok(vec![Extent {
                offset: 0,
                length: self.size,
            }]
            .into_iter()
            .filter(|e| e.length > 0)
            .collect());
        }
        let status = c
            .block_status(BASE_ALLOCATION, 0, self.size)
            .map_err(disk_err)?;
        let mut out: Vec<Extent> = Vec::new();
        for e in status.iter().filter(|e| e.flags & STATE_ZERO == 0) {
            match out.last_mut() {
                Some(last) if last.end() == e.offset => last.length += e.length,
                _ => out.push(Extent {
                    offset: e.offset,
                    length: e.length,
                }),
            }
        }
        Ok(out)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> tern_disk::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(DiskError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size: self.size,
            });
        }
        self.lock().read(offset, buf).map_err(disk_err)
    }
}
