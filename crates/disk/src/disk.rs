//! The [`VirtualDisk`] trait, format detection and [`open`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DiskError, Result};
use crate::formats;
use crate::io::Source;

/// A disk image container format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
    Vhdx,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = DiskError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "raw" | "img" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vmdk" => Ok(Format::Vmdk),
            "vhd" | "vpc" => Ok(Format::Vhd),
            "vhdx" => Ok(Format::Vhdx),
            other => Err(DiskError::Unsupported {
                format: "image",
                detail: format!(
                    "unknown format name {other:?} (expected raw, qcow2, vmdk, vhd or vhdx)"
                ),
            }),
        }
    }
}

/// A byte range of the virtual disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// A disk image seen as the disk a guest sees: a fixed number of bytes, some of them stored.
///
/// Implementations read with positional I/O and keep any cache behind a lock, so one disk can be
/// read from several threads at once (block maps use both cores this way).
pub trait VirtualDisk: Send + Sync {
    /// The container format.
    fn format(&self) -> Format;
    /// The variant within the format, e.g. `streamOptimized`, `dynamic`, `v3`.
    fn variant(&self) -> String;
    /// Size of the virtual disk in bytes.
    fn size(&self) -> u64;
    /// Sorted, non-overlapping ranges that may hold non-zero data. Everything outside them reads
    /// as zeros. Ranges may still contain zeros (formats store zero blocks, raw files have holes).
    fn allocated(&self) -> Result<Vec<Extent>>;
    /// Fills `buf` with the virtual disk's bytes starting at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// The format, when the caller knows it; otherwise it is detected from the content (never
    /// from the file name).
    pub format: Option<Format>,
    /// Backing images for a qcow2 image with a backing file: first the direct backing file, then
    /// its own backing file, and so on. A backing reference in an image is never followed on its
    /// own: without an entry here such an image is refused.
    pub backing_chain: Vec<PathBuf>,
}

/// Opens an image, detecting its format from its content unless `opts.format` says it.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn VirtualDisk>> {
    let src = Source::open(path)?;
    let format = match opts.format {
        Some(f) => f,
        None => detect_source(&src)?,
    };
    tracing::debug!(path = %path.display(), %format, "opening disk image");
    open_source(src, format, &opts.backing_chain)
}

/// Opens the image stored as `length` bytes at `offset` inside the file at `path` (a disk inside
/// an OVA archive, read in place). The range must lie inside the file. Such an image never
/// references other files: VMDK descriptors with extent files are refused.
pub fn open_range(
    path: &Path,
    offset: u64,
    length: u64,
    opts: &OpenOptions,
) -> Result<Box<dyn VirtualDisk>> {
    let src = Source::open_range(path, offset, length)?;
    let format = match opts.format {
        Some(f) => f,
        None => detect_source(&src)?,
    };
    tracing::debug!(path = %path.display(), offset, length, %format, "opening disk image in a file range");
    open_source(src, format, &opts.backing_chain)
}

/// Opens an image held in memory. The format is detected unless `opts.format` says it. An
/// in-memory image never references other files: VMDK descriptors with extent files are refused
/// (backing files in `opts` are still opened, since the caller named them).
pub fn open_bytes(bytes: Vec<u8>, opts: &OpenOptions) -> Result<Box<dyn VirtualDisk>> {
    let src = Source::from_bytes(bytes);
    let format = match opts.format {
        Some(f) => f,
        None => detect_source(&src)?,
    };
    open_source(src, format, &opts.backing_chain)
}

pub(crate) fn open_source(
    src: Source,
    format: Format,
    backing_chain: &[PathBuf],
) -> Result<Box<dyn VirtualDisk>> {
    if format != Format::Qcow2 && !backing_chain.is_empty() {
        return Err(DiskError::Unsupported {
            format: format.name(),
            detail: "backing files are only supported for qcow2 images".into(),
        });
    }
    let disk: Box<dyn VirtualDisk> = match format {
        Format::Raw => Box::new(formats::raw::RawDisk::new(src)),
        Format::Qcow2 => Box::new(formats::qcow2::Qcow2Disk::open(src, backing_chain)?),
        Format::Vmdk => formats::vmdk::open(src)?,
        Format::Vhd => Box::new(formats::vhd::VhdDisk::open(src)?),
        Format::Vhdx => Box::new(formats::vhdx::VhdxDisk::open(src)?),
    };
    // Nothing larger exists on the import side; a bigger declared size is a damaged or hostile
    // header, and would make block maps of it allocate without bound.
    if disk.size() > MAX_VIRTUAL_SIZE {
        return Err(DiskError::Unsupported {
            format: format.name(),
            detail: format!(
                "virtual size of {} bytes is larger than 64 TiB, the largest EBS volume",
                disk.size()
            ),
        });
    }
    Ok(disk)
}

/// 64 TiB: the largest EBS volume and the largest VHDX.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Detects the format of the image at `path` from its content.
pub fn detect(path: &Path) -> Result<Format> {
    detect_source(&Source::open(path)?)
}

pub(crate) fn detect_source(src: &Source) -> Result<Format> {
    let mut head = vec![0u8; 1024.min(src.len()) as usize];
    src.read_exact_at(&mut head, 0)?;
    if head.starts_with(b"QFI\xfb") {
        return Ok(Format::Qcow2);
    }
    if head.starts_with(b"KDMV") || formats::vmdk::looks_like_descriptor(&head) {
        return Ok(Format::Vmdk);
    }
    if head.starts_with(b"vhdxfile") {
        return Ok(Format::Vhdx);
    }
    if head.starts_with(b"conectix") {
        return Ok(Format::Vhd);
    }
    if src.len() >= 512 {
        let mut tail = [0u8; 512];
        src.read_exact_at(&mut tail, src.len() - 512)?;
        if tail.starts_with(b"conectix") {
            return Ok(Format::Vhd);
        }
        // Very old Virtual PC images end in a 511-byte footer.
        if tail[1..].starts_with(b"conectix") {
            return Ok(Format::Vhd);
        }
    }
    Ok(Format::Raw)
}

/// Splits a read into pieces that each stay inside one unit (cluster, grain, block) and calls
/// `f(unit_index, offset_in_unit, piece)` for each, after checking the range.
pub(crate) fn for_each_unit(
    buf: &mut [u8],
    offset: u64,
    size: u64,
    unit: u64,
    mut f: impl FnMut(u64, u64, &mut [u8]) -> Result<()>,
) -> Result<()> {
    let len = buf.len() as u64;
    if offset.checked_add(len).is_none_or(|e| e > size) {
        return Err(DiskError::OutOfRange { offset, len, size });
    }
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset + done as u64;
        let idx = pos / unit;
        let within = pos % unit;
        let n = ((unit - within) as usize).min(buf.len() - done);
        f(idx, within, &mut buf[done..done + n])?;
        done += n;
    }
    Ok(())
}

/// Appends a range to a sorted extent list, merging it with the last one when they touch.
pub(crate) fn push_extent(v: &mut Vec<Extent>, offset: u64, length: u64) {
    if length == 0 {
        return;
    }
    if let Some(last) = v.last_mut() {
        if last.end() == offset {
            last.length += length;
            return;
        }
    }
    v.push(Extent { offset, length });
}

/// Merges two sorted extent lists into their sorted union.
pub(crate) fn union_extents(a: &[Extent], b: &[Extent]) -> Vec<Extent> {
    let mut all: Vec<Extent> = a.iter().chain(b.iter()).copied().collect();
    all.sort_by_key(|e| e.offset);
    let mut out: Vec<Extent> = Vec::with_capacity(all.len());
    for e in all {
        if let Some(last) = out.last_mut() {
            if e.offset <= last.end() {
                let end = last.end().max(e.end());
                last.length = end - last.offset;
                continue;
            }
        }
        out.push(e);
    }
    out
}
