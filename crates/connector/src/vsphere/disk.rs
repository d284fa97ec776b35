//! A vSphere disk read in place through the datastore's HTTP file access: the descriptor
//! (`disk.vmdk`) is fetched and parsed ([`tern_disk::vmdk_flat_extents`]), then every read is
//! a ranged GET of the flat extent file that holds those bytes. The disk is a
//! [`VirtualDisk`], so the seed writer and the block comparison read it like any image.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reqwest::Url;
use tern_disk::{DiskError, Extent, Format, VirtualDisk, VmdkFlatExtent};

use super::soap::Session;
use super::{VmDisk, VsphereError};

/// Largest descriptor accepted (VMware's own limit is far below).
const MAX_DESCRIPTOR: u64 = 64 * 1024;

struct Piece {
    extent: VmdkFlatExtent,
    url: Option<Url>,
}

pub struct DatastoreDisk {
    session: Arc<Session>,
    size: u64,
    pieces: Vec<Piece>,
    what: String,
    read: AtomicU64,
}

impl DatastoreDisk {
    /// Opens `disk` (as a VM or snapshot's device lists it) in datacenter `datacenter`.
    pub fn open(
        session: Arc<Session>,
        datacenter: &str,
        disk: &VmDisk,
    ) -> Result<Self, VsphereError> {
        let (ds, path) = disk.datastore_path().ok_or_else(|| {
            VsphereError::Protocol(format!(
                "disk {} has no datastore path: {:?}",
                disk.label, disk.file_name
            ))
        })?;
        let url = session.datastore_url(datacenter, ds, path);
        let bad = |detail: String| VsphereError::Datastore {
            url: url.to_string(),
            detail,
        };
        let mut text = String::new();
        session
            .get(&url, None)?
            .take(MAX_DESCRIPTOR)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("reading the descriptor: {e}")))?;
        let extents = tern_disk::vmdk_flat_extents(&text).map_err(|e| {
            bad(format!(
                "{e}; Tern reads disks whose data is in flat extents (thick or thin disks on VMFS or NFS, without snapshots of their own)"
            ))
        })?;
        let size: u64 = extents.iter().map(|e| e.len).sum();
        if size != disk.capacity_bytes {
            return Err(bad(format!(
                "the descriptor's extents hold {size} bytes but the disk's capacity is {} bytes",
                disk.capacity_bytes
            )));
        }
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        let pieces = extents
            .into_iter()
            .map(|extent| {
                let url = extent.file.as_ref().map(|f| {
                    let p = if dir.is_empty() {
                        f.clone()
                    } else {
                        format!("{dir}/{f}")
                    };
                    session.datastore_url(datacenter, ds, &p)
                });
                Piece { extent, url }
            })
            .collect();
        Ok(DatastoreDisk {
            session,
            size,
            pieces,
            what: disk.file_name.clone(),
            read: AtomicU64::new(0),
        })
    }

    /// Bytes fetched from the datastore so far.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    fn fetch(&self, url: &Url, buf: &mut [u8], offset: u64) -> Result<(), VsphereError> {
        let mut resp = self.session.get(url, Some((offset, buf.len() as u64)))?;
        let partial = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        if !partial && offset != 0 {
            return Err(VsphereError::Datastore {
                url: url.to_string(),
                detail: "the server ignored the byte range of the request".into(),
            });
        }
        resp.read_exact(buf).map_err(|e| VsphereError::Datastore {
            url: url.to_string(),
            detail: format!(
                "reading {} bytes at offset {offset}: {e} (is the flat extent shorter than the descriptor says?)",
                buf.len()
            ),
        })?;
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl VirtualDisk for DatastoreDisk {
    fn format(&self) -> Format {
        Format::Vmdk
    }
    fn variant(&self) -> String {
        "vsphere datastore".into()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn allocated(&self) -> tern_disk::Result<Vec<Extent>> {
        // Datastore file access does not say which blocks a thin disk allocated: every flat
        // extent may hold data (zero blocks are still recognised while reading).
        Ok(self
            .pieces
            .iter()
            .filter(|p| p.url.is_some() && p.extent.len > 0)
            .map(|p| Extent {
                offset: p.extent.start,
                length: p.extent.len,
            })
            .collect())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> tern_disk::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let piece = self
                .pieces
                .iter()
                .find(|p| at >= p.extent.start && at < p.extent.start + p.extent.len)
                .ok_or_else(|| {
                    DiskError::Stream(std::io::Error::other(format!(
                        "{}: read at {at} beyond the disk's {} bytes",
                        self.what, self.size
                    )))
                })?;
            let within = at - piece.extent.start;
            let n = ((piece.extent.len - within) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            match &piece.url {
                None => part.fill(0),
                Some(url) => self
                    .fetch(url, part, piece.extent.offset + within)
                    .map_err(|e| DiskError::Stream(std::io::Error::other(e.to_string())))?,
            }
            done += n;
        }
        Ok(())
    }
}
