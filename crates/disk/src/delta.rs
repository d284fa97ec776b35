//! Deltas: the blocks of a disk that changed since a block map was taken, stored as one
//! compact object, and applied onto the previous image.
//!
//! A block is changed when its all-zero flag or its SHA-256 differs from the previous map.
//! Blocks that *became* all-zero are changed too: on an incremental EBS snapshot an unwritten
//! block inherits the parent's data, so zeros must be written explicitly. Blocks past the end
//! of the previous disk (the disk grew) are changed only when they hold data.
//!
//! # Delta object format (`TERNDLTA`), version 1
//!
//! All integers little-endian. Written in one forward pass (it can be streamed to an upload);
//! the index is at the end, found through the fixed-size footer.
//!
//! | part | layout |
//! |---|---|
//! | header, 32 bytes | magic `TERNDLTA` (8), version u32 = 1, block size u32, new disk size u64, reserved u64 = 0 |
//! | data | the bytes of every changed non-zero block, in ascending block order, back to back |
//! | index, 56 bytes per changed block, ascending block order | block index u64, data offset u64 (from the start of the object; 0 for zero blocks), length u32, flags u32 (bit 0 = all zeros, no data stored), SHA-256 of the block (32; for a zero block the SHA-256 of its zeros, which EBS needs too) |
//! | footer, 56 bytes | magic `TERNDIDX` (8), entry count u64, index offset u64, SHA-256 of the index bytes (32) |
//!
//! The length of each block is the block size except for the last block of the disk. Readers
//! check the footer, the index checksum, ordering, bounds and lengths before trusting anything,
//! and check each block's SHA-256 when reading its data.

use std::fs::OpenOptions as FsOpen;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::blockmap::{scan, zero_sha256, BlockEntry, BlockMap, Digest32, BLOCK_SIZE};
use crate::disk::VirtualDisk;
use crate::error::{DiskError, Result};
use crate::io::write_all_at;
use crate::Progress;

const MAGIC: &[u8; 8] = b"TERNDLTA";
const FOOTER_MAGIC: &[u8; 8] = b"TERNDIDX";
const VERSION: u32 = 1;
/// Bytes of the header, of one index entry and of the footer: what a reader that fetches parts
/// of the object (ranged GETs) needs to find them.
pub const HEADER_LEN: u64 = 32;
pub const ENTRY_LEN: usize = 56;
pub const FOOTER_LEN: u64 = 56;
const FLAG_ZERO: u32 = 1;

/// One changed block in a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaEntry {
    pub block: u64,
    pub zero: bool,
    pub length: u32,
    /// Offset of the block's bytes in the delta object (0 for zero blocks).
    pub data_offset: u64,
    pub sha256: Digest32,
}

/// What [`create`] found.
#[derive(Clone, Debug)]
pub struct DeltaSummary {
    pub changed_blocks: u64,
    /// Changed blocks that are now all zeros (written as zeros, no data stored).
    pub zero_blocks: u64,
    pub data_bytes: u64,
    pub object_bytes: u64,
    /// The block map of the disk as read now: the base for the next delta.
    pub new_map: BlockMap,
}

fn bad(detail: impl Into<String>) -> DiskError {
    DiskError::BadObject {
        what: "delta object",
        detail: detail.into(),
    }
}

/// Streams a delta object to any `Write`.
pub struct DeltaWriter<W: Write> {
    w: W,
    pos: u64,
    block_size: u32,
    disk_size: u64,
    entries: Vec<DeltaEntry>,
}

impl<W: Write> DeltaWriter<W> {
    pub fn new(mut w: W, block_size: u32, disk_size: u64) -> Result<Self> {
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&block_size.to_le_bytes());
        h.extend_from_slice(&disk_size.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        w.write_all(&h)?;
        Ok(DeltaWriter {
            w,
            pos: HEADER_LEN,
            block_size,
            disk_size,
            entries: Vec::new(),
        })
    }

    fn expected_len(&self, block: u64) -> Result<u32> {
        let bs = self.block_size as u64;
        let start = block
            .checked_mul(bs)
            .filter(|s| *s < self.disk_size)
            .ok_or_else(|| {
                DiskError::Mismatch(format!(
                    "block {block} is past the end of the {}-byte disk",
                    self.disk_size
                ))
            })?;
        if let Some(last) = self.entries.last() {
            if last.block >= block {
                return Err(DiskError::Mismatch(format!(
                    "blocks must be added in ascending order ({block} after {})",
                    last.block
                )));
            }
        }
        Ok(bs.min(self.disk_size - start) as u32)
    }

    /// Adds a changed block holding data; `sha256` is its digest when the caller has it already.
    pub fn add_block(&mut self, block: u64, data: &[u8], sha256: Option<Digest32>) -> Result<()> {
        let len = self.expected_len(block)?;
        if data.len() != len as usize {
            return Err(DiskError::Mismatch(format!(
                "block {block} has {} bytes, expected {len}",
                data.len()
            )));
        }
        let sha256 = sha256.unwrap_or_else(|| Sha256::digest(data).into());
        self.w.write_all(data)?;
        self.entries.push(DeltaEntry {
            block,
            zero: false,
            length: len,
            data_offset: self.pos,
            sha256,
        });
        self.pos += len as u64;
        Ok(())
    }

    /// Adds a block that must be written as zeros.
    pub fn add_zero(&mut self, block: u64) -> Result<()> {
        let len = self.expected_len(block)?;
        self.entries.push(DeltaEntry {
            block,
            zero: true,
            length: len,
            data_offset: 0,
            sha256: zero_sha256(len as usize),
        });
        Ok(())
    }

    /// Writes the index and footer; returns the writer and the object's total length.
    pub fn finish(mut self) -> Result<(W, u64)> {
        let mut index = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            index.extend_from_slice(&e.block.to_le_bytes());
            index.extend_from_slice(&e.data_offset.to_le_bytes());
            index.extend_from_slice(&e.length.to_le_bytes());
            index.extend_from_slice(&(if e.zero { FLAG_ZERO } else { 0 }).to_le_bytes());
            index.extend_from_slice(&e.sha256);
        }
        let index_offset = self.pos;
        self.w.write_all(&index)?;
        let mut f = Vec::with_capacity(FOOTER_LEN as usize);
        f.extend_from_slice(FOOTER_MAGIC);
        f.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        f.extend_from_slice(&index_offset.to_le_bytes());
        f.extend_from_slice(&Sha256::digest(&index));
        self.w.write_all(&f)?;
        self.w.flush()?;
        Ok((self.w, index_offset + index.len() as u64 + FOOTER_LEN))
    }
}

/// Reads the disk once, compares every block with `old` and writes the changed ones to `out`.
pub fn create<W: Write>(
    old: &BlockMap,
    disk: &dyn VirtualDisk,
    out: W,
    progress: Progress,
) -> Result<DeltaSummary> {
    if old.block_size != BLOCK_SIZE {
        return Err(DiskError::Mismatch(format!(
            "the block map uses {}-byte blocks; deltas use {BLOCK_SIZE}",
            old.block_size
        )));
    }
    let mut w = DeltaWriter::new(out, BLOCK_SIZE, disk.size())?;
    let mut blocks: Vec<BlockEntry> =
        Vec::with_capacity(disk.size().div_ceil(BLOCK_SIZE as u64).min(1 << 20) as usize);
    let (mut changed, mut zeros, mut data_bytes) = (0u64, 0u64, 0u64);
    let differs = |b: u64, e: &BlockEntry| match old.blocks.get(b as usize) {
        Some(o) => o.zero != e.zero || (!e.zero && o.digest != e.digest),
        None => !e.zero,
    };
    scan(disk, progress, &differs, |b, e, kept| {
        if differs(b, &e) {
            changed += 1;
            match kept {
                Some(k) => {
                    w.add_block(b, &k.data, Some(k.sha256))?;
                    data_bytes += k.data.len() as u64;
                }
                None => {
                    w.add_zero(b)?;
                    zeros += 1;
                }
            }
        }
        blocks.push(e);
        Ok(())
    })?;
    let (_, object_bytes) = w.finish()?;
    Ok(DeltaSummary {
        changed_blocks: changed,
        zero_blocks: zeros,
        data_bytes,
        object_bytes,
        new_map: BlockMap {
            block_size: BLOCK_SIZE,
            disk_size: disk.size(),
            blocks,
        },
    })
}

/// The header's block size and new disk size, checked.
pub fn parse_header(h: &[u8]) -> Result<(u32, u64)> {
    if h.len() < HEADER_LEN as usize || &h[..8] != MAGIC {
        return Err(bad("not a Tern delta object (bad magic)"));
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4"));
    if version != VERSION {
        return Err(bad(format!(
            "version {version} (this reader knows {VERSION})"
        )));
    }
    let block_size = u32::from_le_bytes(h[12..16].try_into().expect("4"));
    let disk_size = u64::from_le_bytes(h[16..24].try_into().expect("8"));
    if block_size == 0 || block_size % 512 != 0 {
        return Err(bad(format!("block size {block_size}")));
    }
    Ok((block_size, disk_size))
}

/// The footer's entry count and index offset (the index checksum is checked by whoever reads
/// the whole index).
pub fn parse_footer(f: &[u8]) -> Result<(u64, u64)> {
    if f.len() != FOOTER_LEN as usize || &f[..8] != FOOTER_MAGIC {
        return Err(bad("no footer (truncated object?)"));
    }
    let count = u64::from_le_bytes(f[8..16].try_into().expect("8"));
    let index_offset = u64::from_le_bytes(f[16..24].try_into().expect("8"));
    Ok((count, index_offset))
}

/// Decodes consecutive index entries (`first` is the position of the first, for messages),
/// each checked on its own: known flags, ascending blocks, inside the disk, the right length.
/// Where the data of each lies relative to the others is checked by [`DeltaReader::new`],
/// which sees the whole index; a reader of a slice relies on each block's SHA-256 instead.
pub fn decode_entries(
    index: &[u8],
    first: u64,
    block_size: u32,
    disk_size: u64,
) -> Result<Vec<DeltaEntry>> {
    if !index.len().is_multiple_of(ENTRY_LEN) {
        return Err(bad(format!(
            "an index slice of {} bytes is not whole entries",
            index.len()
        )));
    }
    let bs = block_size as u64;
    let mut entries: Vec<DeltaEntry> = Vec::with_capacity(index.len() / ENTRY_LEN);
    for (n, c) in index.chunks_exact(ENTRY_LEN).enumerate() {
        let i = first + n as u64;
        let block = u64::from_le_bytes(c[0..8].try_into().expect("8"));
        let data_offset = u64::from_le_bytes(c[8..16].try_into().expect("8"));
        let length = u32::from_le_bytes(c[16..20].try_into().expect("4"));
        let flags = u32::from_le_bytes(c[20..24].try_into().expect("4"));
        if flags & !FLAG_ZERO != 0 {
            return Err(bad(format!("entry {i}: unknown flags {flags:#x}")));
        }
        if entries.last().is_some_and(|p| p.block >= block) {
            return Err(bad(format!("entry {i}: blocks out of order")));
        }
        let start = block
            .checked_mul(bs)
            .filter(|s| *s < disk_size)
            .ok_or_else(|| bad(format!("entry {i}: block {block} past the end of the disk")))?;
        if length as u64 != bs.min(disk_size - start) {
            return Err(bad(format!("entry {i}: block {block} has length {length}")));
        }
        entries.push(DeltaEntry {
            block,
            zero: flags & FLAG_ZERO != 0,
            length,
            data_offset,
            sha256: c[24..56].try_into().expect("32"),
        });
    }
    Ok(entries)
}

/// Reads a delta object; the index is validated up front, block data when read.
#[derive(Debug)]
pub struct DeltaReader<R: Read + Seek> {
    r: R,
    pub block_size: u32,
    pub disk_size: u64,
    entries: Vec<DeltaEntry>,
}

impl<R: Read + Seek> DeltaReader<R> {
    pub fn new(mut r: R) -> Result<Self> {
        let len = r.seek(SeekFrom::End(0))?;
        if len < HEADER_LEN + FOOTER_LEN {
            return Err(bad("too short to be a delta object"));
        }
        let mut h = [0u8; HEADER_LEN as usize];
        r.seek(SeekFrom::Start(0))?;
        r.read_exact(&mut h)?;
        let (block_size, disk_size) = parse_header(&h)?;
        let mut f = [0u8; FOOTER_LEN as usize];
        r.seek(SeekFrom::Start(len - FOOTER_LEN))?;
        r.read_exact(&mut f)?;
        let (count, index_offset) = parse_footer(&f)?;
        let index_len = count
            .checked_mul(ENTRY_LEN as u64)
            .ok_or_else(|| bad("entry count overflows"))?;
        if index_offset < HEADER_LEN
            || index_offset.checked_add(index_len) != Some(len - FOOTER_LEN)
        {
            return Err(bad(
                "index offset and entry count do not match the object's length",
            ));
        }
        let mut index = vec![0u8; index_len as usize];
        r.seek(SeekFrom::Start(index_offset))?;
        r.read_exact(&mut index)?;
        if Sha256::digest(&index).as_slice() != &f[24..56] {
            return Err(bad("index checksum mismatch"));
        }
        let mut entries: Vec<DeltaEntry> = Vec::with_capacity(count as usize);
        let mut data_end = HEADER_LEN;
        for (i, e) in decode_entries(&index, 0, block_size, disk_size)?
            .into_iter()
            .enumerate()
        {
            let (data_offset, length) = (e.data_offset, e.length);
            if !e.zero {
                // Data is stored in index order, back to back, before the index.
                if data_offset != data_end || data_offset + length as u64 > index_offset {
                    return Err(bad(format!(
                        "entry {i}: data offset {data_offset} out of place"
                    )));
                }
                data_end += length as u64;
            }
            entries.push(e);
        }
        if data_end != index_offset {
            return Err(bad("unreferenced bytes between the data and the index"));
        }
        Ok(DeltaReader {
            r,
            block_size,
            disk_size,
            entries,
        })
    }

    pub fn entries(&self) -> &[DeltaEntry] {
        &self.entries
    }

    /// Reads one block's bytes (zeros for a zero block) and checks its SHA-256.
    pub fn read_block(&mut self, e: &DeltaEntry, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        buf.resize(e.length as usize, 0);
        if !e.zero {
            self.r.seek(SeekFrom::Start(e.data_offset))?;
            self.r.read_exact(buf)?;
        }
        if Sha256::digest(&buf[..]).as_slice() != e.sha256 {
            return Err(bad(format!("block {}: SHA-256 mismatch", e.block)));
        }
        Ok(())
    }
}

/// Writes `base` with the delta applied to `out` as a raw image (sparse where zero).
pub fn apply<R: Read + Seek>(
    base: &dyn VirtualDisk,
    delta: &mut DeltaReader<R>,
    out: &Path,
    progress: Progress,
) -> Result<()> {
    if delta.block_size != BLOCK_SIZE {
        return Err(DiskError::Mismatch(format!(
            "delta uses {}-byte blocks",
            delta.block_size
        )));
    }
    crate::write::write_raw(base, out, progress)?;
    let io_err = |source| DiskError::Io {
        path: out.to_path_buf(),
        source,
    };
    let file = FsOpen::new().write(true).open(out).map_err(io_err)?;
    file.set_len(delta.disk_size).map_err(io_err)?;
    let entries = delta.entries.clone();
    let mut buf = Vec::with_capacity(BLOCK_SIZE as usize);
    for e in &entries {
        delta.read_block(e, &mut buf)?;
        write_all_at(&file, &buf, e.block * delta.block_size as u64).map_err(io_err)?;
    }
    Ok(())
}
