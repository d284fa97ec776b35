//! Building a run's delta from a bitmap's dirty extents, and counting what the full
//! comparison reads.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use tern_disk::blockmap::{block_digest, zero_digest, BlockEntry, BlockMap, BLOCK_SIZE};
use tern_disk::delta::{DeltaSummary, DeltaWriter};
use tern_disk::{is_zero, DiskError, Extent, Format, VirtualDisk};
use tern_nbd::{Client, STATE_DIRTY};

/// The 512 KiB blocks that `dirty` extents touch, ascending, without repeats.
pub fn dirty_blocks(dirty: &[Extent], disk_size: u64) -> Vec<u64> {
    let bs = BLOCK_SIZE as u64;
    let mut out: Vec<u64> = Vec::new();
    for e in dirty.iter().filter(|e| e.length > 0) {
        let first = e.offset / bs;
        let last = (e.end().min(disk_size)).div_ceil(bs);
        for b in first..last {
            if out.last().is_none_or(|l| *l < b) {
                out.push(b);
            }
        }
    }
    out
}

fn nbd_err(e: tern_nbd::NbdError) -> DiskError {
    DiskError::Stream(std::io::Error::other(e))
}

/// What [`bitmap_delta`] did besides the delta.
pub struct BitmapRead {
    pub summary: DeltaSummary,
    /// Blocks the bitmap marked dirty (each read once).
    pub dirty_blocks: u64,
}

/// Writes the delta of the blocks the bitmap `context` marks dirty: each dirty block is read
/// through the export and compared with `old` exactly as [`tern_disk::delta::create`] compares
/// every block, so the delta is the one the full comparison would make (a block rewritten
/// with the same bytes is dirty but unchanged). The new map is `old` with the dirty blocks'
/// entries replaced, so a later full comparison stays correct.
pub fn bitmap_delta<W: Write>(
    client: &mut Client,
    context: &str,
    old: &BlockMap,
    out: W,
    progress: tern_disk::Progress,
) -> Result<BitmapRead, DiskError> {
    let size = client.size();
    let status = client.block_status(context, 0, size).map_err(nbd_err)?;
    let dirty: Vec<Extent> = status
        .iter()
        .filter(|e| e.flags & STATE_DIRTY != 0)
        .map(|e| Extent {
            offset: e.offset,
            length: e.length,
        })
        .collect();
    extents_delta(
        |at, buf| client.read(at, buf).map_err(nbd_err),
        size,
        &dirty,
        old,
        out,
        progress,
    )
}

/// Writes the delta of the blocks that `dirty` extents touch (a dirty bitmap's, or the areas
/// a hypervisor's change tracking reports), each read with `read` and compared with `old`
/// exactly as [`tern_disk::delta::create`] compares every block, so the delta is the one the
/// full comparison would make (a block rewritten with the same bytes is dirty but unchanged).
/// The new map is `old` with the dirty blocks' entries replaced, so a later full comparison
/// stays correct.
pub fn extents_delta<W: Write>(
    mut read: impl FnMut(u64, &mut [u8]) -> Result<(), DiskError>,
    size: u64,
    dirty: &[Extent],
    old: &BlockMap,
    out: W,
    progress: tern_disk::Progress,
) -> Result<BitmapRead, DiskError> {
    if old.block_size != BLOCK_SIZE || old.disk_size != size {
        return Err(DiskError::Mismatch(format!(
            "the kept block map is of a {}-byte disk in {}-byte blocks; the disk has {size} bytes",
            old.disk_size, old.block_size
        )));
    }
    let blocks = dirty_blocks(dirty, size);
    let bs = BLOCK_SIZE as u64;
    let mut w = DeltaWriter::new(out, BLOCK_SIZE, size)?;
    let mut map = old.clone();
    let (mut changed, mut zeros, mut data_bytes) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    let mut done = 0u64;
    for &b in &blocks {
        let start = b * bs;
        let len = bs.min(size - start) as usize;
        let data = &mut buf[..len];
        read(start, data)?;
        let entry = if is_zero(data) {
            BlockEntry {
                zero: true,
                digest: zero_digest(len),
            }
        } else {
            BlockEntry {
                zero: false,
                digest: block_digest(data),
            }
        };
        let o = &old.blocks[b as usize];
        if o.zero != entry.zero || (!entry.zero && o.digest != entry.digest) {
            changed += 1;
            if entry.zero {
                w.add_zero(b)?;
                zeros += 1;
            } else {
                w.add_block(b, data, None)?;
                data_bytes += len as u64;
            }
        }
        map.blocks[b as usize] = entry;
        let through = start + len as u64;
        progress(through - done);
        done = through;
    }
    progress(size - done);
    let (_, object_bytes) = w.finish()?;
    Ok(BitmapRead {
        summary: DeltaSummary {
            changed_blocks: changed,
            zero_blocks: zeros,
            data_bytes,
            object_bytes,
            new_map: map,
        },
        dirty_blocks: blocks.len() as u64,
    })
}

/// A disk that counts the bytes read through it: what a full comparison or a seed costs.
pub struct Counting<'a> {
    inner: &'a dyn VirtualDisk,
    read: AtomicU64,
}

impl<'a> Counting<'a> {
    pub fn new(inner: &'a dyn VirtualDisk) -> Counting<'a> {
        Counting {
            inner,
            read: AtomicU64::new(0),
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

impl VirtualDisk for Counting<'_> {
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
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_extents_round_out_to_whole_blocks() {
        let bs = BLOCK_SIZE as u64;
        let e = |offset, length| Extent { offset, length };
        assert_eq!(dirty_blocks(&[], 10 * bs), Vec::<u64>::new());
        // 64 KiB inside block 1, a range across blocks 3-5, one ending at a block boundary,
        // and one running into the short last block.
        let got = dirty_blocks(
            &[
                e(bs + 4096, 65536),
                e(3 * bs + 1, 2 * bs),
                e(7 * bs, bs),
                e(9 * bs + 10, 100),
            ],
            9 * bs + 200,
        );
        assert_eq!(got, vec![1, 3, 4, 5, 7, 9]);
        // Overlapping extents do not repeat a block.
        assert_eq!(dirty_blocks(&[e(0, 10), e(5, 10)], bs), vec![0]);
    }
}
