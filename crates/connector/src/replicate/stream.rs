//! The bridge between the synchronous disk writers (stream-optimized VMDK, delta) and the
//! asynchronous uploader: the writer runs on a blocking thread and writes into a [`PartSink`],
//! which cuts the stream into parts and hands each to the uploader through a bounded channel,
//! so at most a few parts are ever in memory and nothing is spooled to disk.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tern_disk::blockmap::{block_digest, zero_digest, BlockEntry, BlockMap, BLOCK_SIZE};
use tern_disk::{Extent, Format, VirtualDisk};
use tokio::sync::mpsc;

/// One part of the object, in stream order.
pub struct Part {
    pub bytes: Vec<u8>,
    /// Virtual-disk bytes the writer had fully consumed when the part was cut: once this part
    /// is sent, at least that much of the disk is in the bucket (drives the percentage).
    pub virtual_done: u64,
}

/// Returned by the sink's `write` when the delta grows past the limit.
#[derive(Debug)]
pub struct LimitExceeded;

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("object larger than the limit")
    }
}

impl std::error::Error for LimitExceeded {}

pub struct PartSink {
    tx: mpsc::Sender<Part>,
    buf: Vec<u8>,
    part_size: usize,
    /// Updated by the writer's progress callback.
    pub virtual_done: Arc<AtomicU64>,
    hasher: Sha256,
    total: u64,
    limit: u64,
}

impl PartSink {
    pub fn new(tx: mpsc::Sender<Part>, part_size: usize, limit: u64) -> PartSink {
        PartSink {
            tx,
            buf: Vec::with_capacity(part_size),
            part_size,
            virtual_done: Arc::new(AtomicU64::new(0)),
            hasher: Sha256::new(),
            total: 0,
            limit,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
        let part = Part {
            bytes,
            virtual_done: self.virtual_done.load(Ordering::Relaxed),
        };
        // A closed channel means the uploader gave up; stop the writer instead of reading on.
        self.tx
            .blocking_send(part)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "uploader stopped"))
    }

    /// Sends the last (possibly short) part; returns the object's size and SHA-256.
    pub fn finish(mut self, virtual_size: u64) -> std::io::Result<(u64, [u8; 32])> {
        self.virtual_done.store(virtual_size, Ordering::Relaxed);
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok((self.total, self.hasher.finalize().into()))
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.total + data.len() as u64 > self.limit {
            return Err(std::io::Error::other(LimitExceeded));
        }
        let n = data.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hasher.update(&data[..n]);
        self.total += n as u64;
        if self.buf.len() == self.part_size {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A disk that records the block map of what is read through it, so a seed computes the map
/// for the next run's delta in the same pass that writes the VMDK, instead of reading the disk
/// twice. Blocks the writer never read are filled in by [`Recording::into_map`].
pub struct Recording<'a> {
    inner: &'a dyn VirtualDisk,
    blocks: Mutex<Vec<Option<BlockEntry>>>,
}

impl<'a> Recording<'a> {
    pub fn new(inner: &'a dyn VirtualDisk) -> Recording<'a> {
        let n = inner.size().div_ceil(BLOCK_SIZE as u64) as usize;
        Recording {
            inner,
            blocks: Mutex::new(vec![None; n]),
        }
    }

    fn block_len(&self, b: u64) -> usize {
        (BLOCK_SIZE as u64).min(self.inner.size() - b * BLOCK_SIZE as u64) as usize
    }

    fn entry(data: &[u8]) -> BlockEntry {
        if tern_disk::is_zero(data) {
            BlockEntry {
                zero: true,
                digest: zero_digest(data.len()),
            }
        } else {
            BlockEntry {
                zero: false,
                digest: block_digest(data),
            }
        }
    }

    /// The block map of the disk: blocks seen while writing, the rest read now (a block in no
    /// allocated extent is zero without reading it).
    pub fn into_map(self) -> tern_disk::Result<BlockMap> {
        let ext = self.inner.allocated()?;
        let mut blocks = self.blocks.into_inner().unwrap_or_else(|p| p.into_inner());
        let bs = BLOCK_SIZE as u64;
        let mut buf = Vec::new();
        for (b, slot) in blocks.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let start = b as u64 * bs;
            let len = bs.min(self.inner.size() - start) as usize;
            *slot = Some(if overlaps(&ext, start, start + len as u64) {
                buf.resize(len, 0);
                self.inner.read_at(&mut buf, start)?;
                Self::entry(&buf)
            } else {
                BlockEntry {
                    zero: true,
                    digest: zero_digest(len),
                }
            });
        }
        Ok(BlockMap {
            block_size: BLOCK_SIZE,
            disk_size: self.inner.size(),
            blocks: blocks.into_iter().flatten().collect(),
        })
    }
}

fn overlaps(ext: &[Extent], start: u64, end: u64) -> bool {
    let i = ext.partition_point(|e| e.end() <= start);
    i < ext.len() && ext[i].offset < end
}

impl VirtualDisk for Recording<'_> {
    fn format(&self) -> Format {
        self.inner.format()
    }
    fn variant(&self) -> String {
        self.inner.variant()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn allocated(&self) -> tern_disk::Result<Vec<Extent>> {
        self.inner.allocated()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> tern_disk::Result<()> {
        self.inner.read_at(buf, offset)?;
        let bs = BLOCK_SIZE as u64;
        // Only whole blocks can be digested; the writer reads block-aligned chunks, and any
        // block it did not read whole is read again by into_map.
        let first = offset.div_ceil(bs);
        let end = offset + buf.len() as u64;
        let mut found = Vec::new();
        let mut b = first;
        while b * bs < end {
            let len = self.block_len(b) as u64;
            let start = b * bs;
            if start + len > end {
                break;
            }
            let s = (start - offset) as usize;
            found.push((b as usize, Self::entry(&buf[s..s + len as usize])));
            b += 1;
        }
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        for (b, e) in found {
            blocks[b] = Some(e);
        }
        Ok(())
    }
}
