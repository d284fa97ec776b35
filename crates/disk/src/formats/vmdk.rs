//! VMDK: monolithicSparse and streamOptimized (one hosted sparse extent, descriptor embedded),
//! and descriptor files with extents: monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat,
//! vmfs (flat). Extent files are resolved inside the descriptor's folder only.
//!
//! Refused: delta disks (a parent link), VMFS sparse/RDM extents, NOACCESS extents.

use std::path::{Component, Path};
use std::sync::{Arc, Mutex};

use crate::disk::{for_each_unit, push_extent, Extent, Format, VirtualDisk};
use crate::error::{malformed, unsupported, DiskError, Result};
use crate::io::{le16, le32, le64, Source};

const FMT: &str = "vmdk";
pub(crate) const SPARSE_MAGIC: &[u8; 4] = b"KDMV";
pub(crate) const FLAG_NL_TEST: u32 = 1;
pub(crate) const FLAG_ZEROED_GTE: u32 = 1 << 2;
pub(crate) const FLAG_COMPRESSED: u32 = 1 << 16;
pub(crate) const FLAG_MARKERS: u32 = 1 << 17;
pub(crate) const GD_AT_END: u64 = u64::MAX;
const MAX_DESCRIPTOR: u64 = 64 * 1024;
const GT_CACHE: usize = 64;

/// True when the first bytes of a file look like a VMDK text descriptor.
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let t = text.trim_start();
    t.starts_with("# Disk DescriptorFile") || (t.contains("createType=") && t.is_ascii())
}

/// One hosted sparse extent file (the header starting with `KDMV`).
pub struct SparseExtent {
    src: Source,
    capacity: u64,
    grain: u64,
    gt_entries: u64,
    gd: Vec<u32>,
    compressed: bool,
    zeroed_gte: bool,
    embedded_descriptor: Option<String>,
    gt_cache: Mutex<Vec<(u32, Arc<Vec<u8>>)>>,
    /// Buffers and inflate streams of finished reads, for the next ones to reuse (one per
    /// thread that reads at once): a read then neither allocates nor zeroes its buffers, and
    /// each grain resets a stream instead of creating one.
    scratch: Mutex<Vec<Scratch>>,
}

/// What one read of a compressed extent works with; see [`SparseExtent::read_compressed`].
struct Scratch {
    z: flate2::Decompress,
    /// The compressed records a read needs, fetched at once. Only the prefix a read uses is
    /// valid; the rest is left from earlier reads and never looked at.
    span: Vec<u8>,
    /// One grain, for reads that start or end inside a grain.
    grain: Vec<u8>,
}

/// A read buffer larger than this is not kept for the next read.
const KEEP_SPAN: usize = 16 << 20;

struct SparseHeader {
    flags: u32,
    capacity: u64,
    grain: u64,
    desc_off: u64,
    desc_size: u64,
    gt_entries: u32,
    gd_off: u64,
    compress: u16,
}

fn parse_sparse_header(b: &[u8]) -> Result<SparseHeader> {
    if &b[..4] != SPARSE_MAGIC {
        return Err(malformed(FMT, "sparse extent header", "bad magic"));
    }
    let version = le32(b, 4);
    if !(1..=3).contains(&version) {
        return Err(unsupported(FMT, format!("sparse extent version {version}")));
    }
    Ok(SparseHeader {
        flags: le32(b, 8),
        capacity: le64(b, 12),
        grain: le64(b, 20),
        desc_off: le64(b, 28),
        desc_size: le64(b, 36),
        gt_entries: le32(b, 44),
        gd_off: le64(b, 56),
        compress: le16(b, 77),
    })
}

impl SparseExtent {
    pub fn open(src: Source) -> Result<Self> {
        let mut hb = [0u8; 512];
        if src.len() < 512 {
            return Err(malformed(
                FMT,
                "sparse extent header",
                "file shorter than one sector",
            ));
        }
        src.read_exact_at(&mut hb, 0)?;
        let mut h = parse_sparse_header(&hb)?;
        if h.gd_off == GD_AT_END {
            // streamOptimized: the real header is the footer, 1024 bytes before the end.
            if src.len() < 1536 {
                return Err(malformed(
                    FMT,
                    "footer",
                    "stream-optimized file too short for a footer",
                ));
            }
            let mut fb = [0u8; 512];
            src.read_exact_at(&mut fb, src.len() - 1024)?;
            let f = parse_sparse_header(&fb).map_err(|_| {
                malformed(
                    FMT,
                    "footer",
                    "no footer header 1024 bytes before the end (truncated stream?)",
                )
            })?;
            if f.gd_off == GD_AT_END {
                return Err(malformed(
                    FMT,
                    "footer",
                    "footer has no grain directory offset",
                ));
            }
            h.gd_off = f.gd_off;
            h.flags = f.flags;
            h.gt_entries = f.gt_entries;
            h.grain = f.grain;
            h.capacity = f.capacity;
        }
        if h.grain == 0 || !h.grain.is_power_of_two() || h.grain > 2048 {
            return Err(malformed(
                FMT,
                "sparse extent header",
                format!("grain size {} sectors", h.grain),
            ));
        }
        if h.gt_entries == 0 || h.gt_entries > 1 << 16 {
            return Err(malformed(
                FMT,
                "sparse extent header",
                format!("{} entries per grain table", h.gt_entries),
            ));
        }
        if h.capacity > 1 << 40 {
            return Err(malformed(
                FMT,
                "sparse extent header",
                format!("capacity of {} sectors is absurd", h.capacity),
            ));
        }
        let compressed = h.flags & FLAG_COMPRESSED != 0;
        if compressed && h.compress != 1 {
            return Err(unsupported(
                FMT,
                format!("compression algorithm {}", h.compress),
            ));
        }
        let gt_cover = h.grain * h.gt_entries as u64;
        let gd_entries = h.capacity.div_ceil(gt_cover);
        let gd_bytes = src.read_vec(
            h.gd_off.saturating_mul(512),
            gd_entries * 4,
            FMT,
            "grain directory",
        )?;
        let gd: Vec<u32> = gd_bytes.chunks_exact(4).map(|c| le32(c, 0)).collect();
        // Shared grain tables never happen in a valid image; allowing them would let a small
        // file make a table walk take as long as its virtual size.
        let mut gts: Vec<u32> = gd.iter().copied().filter(|&s| s != 0).collect();
        gts.sort_unstable();
        if gts.windows(2).any(|w| w[0] == w[1]) {
            return Err(malformed(
                FMT,
                "grain directory",
                "two entries point at the same grain table",
            ));
        }
        let embedded_descriptor = if h.desc_off != 0 && h.desc_size != 0 {
            let len = h.desc_size.saturating_mul(512).min(MAX_DESCRIPTOR);
            let raw = src.read_vec(
                h.desc_off.saturating_mul(512),
                len,
                FMT,
                "embedded descriptor",
            )?;
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            Some(String::from_utf8_lossy(&raw[..end]).into_owned())
        } else {
            None
        };
        Ok(SparseExtent {
            src,
            capacity: h.capacity,
            grain: h.grain,
            gt_entries: h.gt_entries as u64,
            gd,
            compressed,
            zeroed_gte: h.flags & FLAG_ZEROED_GTE != 0,
            embedded_descriptor,
            gt_cache: Mutex::new(Vec::new()),
            scratch: Mutex::new(Vec::new()),
        })
    }

    fn size(&self) -> u64 {
        self.capacity * 512
    }

    fn grain_bytes(&self) -> u64 {
        self.grain * 512
    }

    fn gt(&self, sector: u32) -> Result<Arc<Vec<u8>>> {
        {
            let mut c = self.gt_cache.lock().expect("gt cache lock");
            if let Some(p) = c.iter().position(|(s, _)| *s == sector) {
                let e = c.remove(p);
                let t = e.1.clone();
                c.insert(0, e);
                return Ok(t);
            }
        }
        let t = Arc::new(self.src.read_vec(
            sector as u64 * 512,
            self.gt_entries * 4,
            FMT,
            "grain table",
        )?);
        let mut c = self.gt_cache.lock().expect("gt cache lock");
        c.insert(0, (sector, t.clone()));
        c.truncate(GT_CACHE);
        Ok(t)
    }

    /// Grain table entry for a grain: 0 means not stored (reads as zeros).
    fn gte(&self, grain: u64) -> Result<u32> {
        let gd_idx = (grain / self.gt_entries) as usize;
        let gt_sector = self.gd[gd_idx];
        if gt_sector == 0 {
            return Ok(0);
        }
        let t = self.gt(gt_sector)?;
        let e = le32(&t, ((grain % self.gt_entries) * 4) as usize);
        Ok(if e == 1 && self.zeroed_gte { 0 } else { e })
    }

    /// Inflates one compressed grain whose marker starts at `rec[0]`, with a stream that is
    /// reset first.
    fn inflate_grain(
        &self,
        z: &mut flate2::Decompress,
        sector: u32,
        rec: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let size = le32(rec, 8) as usize;
        if size == 0
            || size as u64 > max_compressed_grain(self.grain_bytes())
            || 12 + size > rec.len()
        {
            return Err(malformed(
                FMT,
                "compressed grain",
                format!("at sector {sector}: stored size {size}"),
            ));
        }
        z.reset(true);
        match z.decompress(&rec[12..12 + size], out, flate2::FlushDecompress::Finish) {
            Ok(_) => {
                let n = z.total_out() as usize;
                out[n..].fill(0);
                Ok(())
            }
            Err(e) => Err(malformed(
                FMT,
                "compressed grain",
                format!("at sector {sector}: {e}"),
            )),
        }
    }

    /// Reads a range of a compressed extent. The grains a range needs usually sit next to each
    /// other in the file, so their records are fetched with one read when they are close.
    fn read_compressed(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let sc = self.scratch.lock().expect("scratch lock").pop();
        let mut sc = sc.unwrap_or_else(|| Scratch {
            z: flate2::Decompress::new(true),
            span: Vec::new(),
            grain: Vec::new(),
        });
        let r = self.read_compressed_with(&mut sc, buf, offset);
        if sc.span.len() > KEEP_SPAN {
            sc.span = Vec::new();
        }
        self.scratch.lock().expect("scratch lock").push(sc);
        r
    }

    fn read_compressed_with(&self, sc: &mut Scratch, buf: &mut [u8], offset: u64) -> Result<()> {
        let gb = self.grain_bytes();
        let max_rec = max_compressed_grain(gb) + 12;
        let mut grains = Vec::new();
        for_each_unit(buf, offset, self.size(), gb, |g, _, _| {
            grains.push(self.gte(g)?);
            Ok(())
        })?;
        let stored = grains.iter().filter(|&&e| e != 0).map(|&e| e as u64 * 512);
        let (lo, hi) = match (stored.clone().min(), stored.clone().max()) {
            (Some(lo), Some(hi)) => (lo, (hi + max_rec).min(self.src.len())),
            _ => (0, 0),
        };
        let span = if hi > lo && hi - lo <= 2 * max_rec * stored.count() as u64 {
            let n = (hi - lo) as usize;
            if sc.span.len() < n {
                sc.span.resize(n, 0);
            }
            self.src.read_clamped(&mut sc.span[..n], lo)?;
            Some(&sc.span[..n])
        } else {
            None
        };
        let Scratch { z, grain: temp, .. } = sc;
        let mut i = 0;
        for_each_unit(buf, offset, self.size(), gb, |_, within, piece| {
            let e = grains[i];
            i += 1;
            if e == 0 {
                piece.fill(0);
                return Ok(());
            }
            let at = e as u64 * 512;
            let owned;
            let rec: &[u8] = match span {
                // A grain past the end of the file leaves nothing: reported as truncated.
                Some(v) => v.get((at - lo) as usize..).unwrap_or(&[]),
                None => {
                    let len = max_rec.min(self.src.len().saturating_sub(at));
                    owned = self.src.read_vec(at, len, FMT, "compressed grain")?;
                    &owned
                }
            };
            if rec.len() < 12 {
                return Err(malformed(
                    FMT,
                    "compressed grain",
                    format!("at sector {e}: truncated"),
                ));
            }
            if within == 0 && piece.len() as u64 == gb {
                self.inflate_grain(z, e, rec, piece)
            } else {
                temp.resize(gb as usize, 0);
                self.inflate_grain(z, e, rec, temp)?;
                piece.copy_from_slice(&temp[within as usize..within as usize + piece.len()]);
                Ok(())
            }
        })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.compressed {
            return self.read_compressed(buf, offset);
        }
        let gb = self.grain_bytes();
        for_each_unit(buf, offset, self.size(), gb, |g, within, piece| {
            let e = self.gte(g)?;
            if e == 0 {
                piece.fill(0);
            } else {
                self.src
                    .read_data(piece, e as u64 * 512 + within, FMT, "grain table")?;
            }
            Ok::<(), DiskError>(())
        })
    }

    fn allocated(&self, base: u64, out: &mut Vec<Extent>) -> Result<()> {
        let gb = self.grain_bytes();
        let grains = self.size().div_ceil(gb);
        for (i, &gts) in self.gd.iter().enumerate() {
            if gts == 0 {
                continue;
            }
            let first = i as u64 * self.gt_entries;
            for g in first..(first + self.gt_entries).min(grains) {
                if self.gte(g)? != 0 {
                    let s = g * gb;
                    push_extent(out, base + s, gb.min(self.size() - s));
                }
            }
        }
        Ok(())
    }
}

enum ExtentKind {
    Sparse(SparseExtent),
    Flat { src: Source, offset: u64 },
    Zero,
}

struct VmdkExtent {
    start: u64,
    len: u64,
    kind: ExtentKind,
}

pub struct VmdkDisk {
    variant: String,
    size: u64,
    extents: Vec<VmdkExtent>,
}

/// Opens a VMDK: a hosted sparse file, or a text descriptor with its extents.
pub fn open(src: Source) -> Result<Box<dyn VirtualDisk>> {
    let mut magic = [0u8; 4];
    if src.len() >= 4 {
        src.read_exact_at(&mut magic, 0)?;
    }
    if &magic == SPARSE_MAGIC {
        let ext = SparseExtent::open(src)?;
        let desc = ext.embedded_descriptor.clone().unwrap_or_default();
        let d = parse_descriptor(&desc)?;
        let variant = d.create_type.unwrap_or_else(|| {
            if ext.compressed {
                "streamOptimized".into()
            } else {
                "monolithicSparse".into()
            }
        });
        let size = ext.size();
        return Ok(Box::new(VmdkDisk {
            variant,
            size,
            extents: vec![VmdkExtent {
                start: 0,
                len: size,
                kind: ExtentKind::Sparse(ext),
            }],
        }));
    }
    if src.len() > MAX_DESCRIPTOR {
        return Err(malformed(
            FMT,
            "descriptor",
            format!("text descriptor of {} bytes is too large", src.len()),
        ));
    }
    let raw = src.read_vec(0, src.len(), FMT, "descriptor")?;
    let text =
        String::from_utf8(raw).map_err(|_| malformed(FMT, "descriptor", "not UTF-8 text"))?;
    let d = parse_descriptor(&text)?;
    if src.is_embedded() {
        return Err(DiskError::PathRefused {
            path: src.path().to_path_buf(),
            reason: "an in-memory VMDK descriptor, or one inside another file, cannot reference extent files".into(),
        });
    }
    let dir = match src.path().parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let mut extents = Vec::new();
    let mut start = 0u64;
    for e in &d.extents {
        let len = e
            .sectors
            .checked_mul(512)
            .ok_or_else(|| malformed(FMT, "extent line", "size overflows"))?;
        let kind = match e.kind.as_str() {
            "ZERO" => ExtentKind::Zero,
            "FLAT" | "VMFS" | "VMFSRAW" => {
                let src = open_extent_file(&dir, e.file.as_deref())?;
                let offset = e
                    .offset
                    .checked_mul(512)
                    .ok_or_else(|| malformed(FMT, "extent line", "offset overflows"))?;
                if offset.checked_add(len).is_none_or(|end| end > src.len()) {
                    return Err(malformed(FMT, "flat extent", format!(
                        "{} is {} bytes, shorter than the {} bytes at offset {} the descriptor declares",
                        src.path().display(), src.len(), len, offset)));
                }
                ExtentKind::Flat { src, offset }
            }
            "SPARSE" => {
                let src = open_extent_file(&dir, e.file.as_deref())?;
                let s = SparseExtent::open(src)?;
                if s.size() < len {
                    return Err(malformed(FMT, "sparse extent", format!(
                        "extent capacity {} bytes is smaller than the {} bytes the descriptor declares", s.size(), len)));
                }
                ExtentKind::Sparse(s)
            }
            other => return Err(unsupported(FMT, format!("extent type {other}"))),
        };
        if e.access == "NOACCESS" {
            return Err(unsupported(FMT, "NOACCESS extents"));
        }
        extents.push(VmdkExtent { start, len, kind });
        start = start
            .checked_add(len)
            .ok_or_else(|| malformed(FMT, "descriptor", "total size overflows"))?;
    }
    if extents.is_empty() {
        return Err(malformed(FMT, "descriptor", "no extent lines"));
    }
    Ok(Box::new(VmdkDisk {
        variant: d.create_type.unwrap_or_else(|| "unknown".into()),
        size: start,
        extents,
    }))
}

fn open_extent_file(dir: &Path, name: Option<&str>) -> Result<Source> {
    let name = name.ok_or_else(|| malformed(FMT, "extent line", "extent without a file name"))?;
    let rel = Path::new(name);
    let refuse = |reason: &str| DiskError::PathRefused {
        path: rel.to_path_buf(),
        reason: reason.into(),
    };
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(refuse(
            "VMDK extent paths must stay inside the descriptor's folder",
        ));
    }
    let path = dir.join(rel);
    // Resolve symlinks too: a link pointing out of the folder is refused like `..` is.
    let canon_dir = dir.canonicalize().map_err(|source| DiskError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let canon = path.canonicalize().map_err(|source| DiskError::Io {
        path: path.clone(),
        source,
    })?;
    if !canon.starts_with(&canon_dir) {
        return Err(refuse(
            "the extent file resolves outside the descriptor's folder",
        ));
    }
    Source::open(&canon)
}

/// One extent of a flat VMDK descriptor, as a reader of the disk's files needs it: the disk's
/// bytes `[start, start + len)` are in `file` from byte `offset` (`None`: a ZERO extent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlatExtent {
    pub start: u64,
    pub len: u64,
    pub file: Option<String>,
    pub offset: u64,
}

/// The extents of a descriptor whose data is in flat files (monolithicFlat, twoGbMaxExtentFlat,
/// vmfs), for a reader that fetches those files itself (a datastore over HTTP). Sparse, delta
/// and raw-device descriptors are refused, naming why.
pub fn flat_extents(text: &str) -> Result<Vec<FlatExtent>> {
    let d = parse_descriptor(text)?;
    if d.extents.is_empty() {
        return Err(malformed(FMT, "descriptor", "no extent lines"));
    }
    let mut out = Vec::with_capacity(d.extents.len());
    let mut start = 0u64;
    for e in &d.extents {
        let too_big = || malformed(FMT, "extent line", "size overflows");
        let len = e.sectors.checked_mul(512).ok_or_else(too_big)?;
        let file = match e.kind.as_str() {
            "ZERO" => None,
            "FLAT" | "VMFS" => Some(
                e.file
                    .clone()
                    .ok_or_else(|| malformed(FMT, "extent line", "a flat extent names no file"))?,
            ),
            other => {
                return Err(unsupported(
                    FMT,
                    format!("extent type {other} (only flat extents are read this way)"),
                ))
            }
        };
        if e.access == "NOACCESS" {
            return Err(unsupported(FMT, "NOACCESS extents"));
        }
        out.push(FlatExtent {
            start,
            len,
            file,
            offset: e.offset.checked_mul(512).ok_or_else(too_big)?,
        });
        start = start.checked_add(len).ok_or_else(too_big)?;
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct Descriptor {
    create_type: Option<String>,
    extents: Vec<ExtentLine>,
}

#[derive(Debug)]
struct ExtentLine {
    access: String,
    sectors: u64,
    kind: String,
    file: Option<String>,
    offset: u64,
}

fn parse_descriptor(text: &str) -> Result<Descriptor> {
    let mut d = Descriptor::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let k = k.trim();
            let v = v.trim().trim_matches('"');
            match k {
                "createType" => d.create_type = Some(v.to_string()),
                "parentCID" if !v.eq_ignore_ascii_case("ffffffff") => {
                    return Err(unsupported(
                        FMT,
                        "delta disks with a parent (snapshots); consolidate the disk first",
                    ))
                }
                "parentFileNameHint" => {
                    return Err(unsupported(
                        FMT,
                        "delta disks with a parent (snapshots); consolidate the disk first",
                    ))
                }
                _ => {}
            }
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
            d.extents.push(parse_extent_line(line)?);
        }
    }
    if let Some(t) = &d.create_type {
        if matches!(
            t.as_str(),
            "vmfsSparse"
                | "seSparse"
                | "vmfsRDM"
                | "vmfsRawDeviceMap"
                | "vmfsPassthroughRawDeviceMap"
        ) {
            return Err(unsupported(FMT, format!("createType {t}")));
        }
    }
    Ok(d)
}

fn parse_extent_line(line: &str) -> Result<ExtentLine> {
    let bad = |why: &str| malformed(FMT, "extent line", format!("{why}: {line:?}"));
    let (head, rest) = match line.find('"') {
        Some(q) => (&line[..q], Some(&line[q + 1..])),
        None => (line, None),
    };
    let mut parts = head.split_whitespace();
    let access = parts.next().ok_or_else(|| bad("empty"))?.to_string();
    let sectors = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad sector count"))?;
    let kind = parts
        .next()
        .ok_or_else(|| bad("no extent type"))?
        .to_ascii_uppercase();
    let (file, offset) = match rest {
        Some(r) => {
            let end = r.find('"').ok_or_else(|| bad("unterminated file name"))?;
            let off = r[end + 1..]
                .split_whitespace()
                .next()
                .map(|s| s.parse::<u64>())
                .transpose()
                .map_err(|_| bad("bad offset"))?;
            (Some(r[..end].to_string()), off.unwrap_or(0))
        }
        None => (None, 0),
    };
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

impl VirtualDisk for VmdkDisk {
    fn format(&self) -> Format {
        Format::Vmdk
    }
    fn variant(&self) -> String {
        self.variant.clone()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn allocated(&self) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        for e in &self.extents {
            match &e.kind {
                ExtentKind::Zero => {}
                ExtentKind::Flat { .. } => push_extent(&mut out, e.start, e.len),
                ExtentKind::Sparse(s) => {
                    let mut tmp = Vec::new();
                    s.allocated(e.start, &mut tmp)?;
                    for t in tmp {
                        let end = t.end().min(e.start + e.len);
                        if t.offset < end {
                            push_extent(&mut out, t.offset, end - t.offset);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(DiskError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        let mut done = 0usize;
        let mut idx = self.extents.partition_point(|e| e.start + e.len <= offset);
        while done < buf.len() {
            let pos = offset + done as u64;
            let e = &self.extents[idx];
            let within = pos - e.start;
            let n = ((e.len - within) as usize).min(buf.len() - done);
            let piece = &mut buf[done..done + n];
            match &e.kind {
                ExtentKind::Zero => piece.fill(0),
                ExtentKind::Flat { src, offset } => src.read_exact_at(piece, offset + within)?,
                ExtentKind::Sparse(s) => s.read_at(piece, within)?,
            }
            done += n;
            idx += 1;
        }
        Ok(())
    }
}

/// The largest compressed grain accepted. Deflate with fixed Huffman codes (what the fast levels
/// of zlib-ng and zlib-rs emit) grows incompressible bytes by up to 1/8, and not every writer
/// falls back to stored blocks; anything beyond this bound is damage, not compression.
fn max_compressed_grain(grain_bytes: u64) -> u64 {
    grain_bytes + grain_bytes / 8 + 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_descriptors_give_their_extents_and_sparse_ones_are_refused() {
        let two = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\nRW 4 FLAT \"d-f001.vmdk\" 0\nRW 2 ZERO\nRW 8 VMFS \"d-f002.vmdk\" 16\n";
        assert_eq!(
            flat_extents(two).unwrap(),
            vec![
                FlatExtent {
                    start: 0,
                    len: 2048,
                    file: Some("d-f001.vmdk".into()),
                    offset: 0
                },
                FlatExtent {
                    start: 2048,
                    len: 1024,
                    file: None,
                    offset: 0
                },
                FlatExtent {
                    start: 3072,
                    len: 4096,
                    file: Some("d-f002.vmdk".into()),
                    offset: 8192
                },
            ]
        );
        for (bad, says) in [
            (
                "createType=\"vmfsSparse\"\nRW 8 VMFSSPARSE \"d-delta.vmdk\"\n",
                "vmfsSparse",
            ),
            (
                "parentFileNameHint=\"base.vmdk\"\nRW 8 VMFS \"d-flat.vmdk\"\n",
                "delta disks",
            ),
            (
                "createType=\"monolithicSparse\"\nRW 8 SPARSE \"d.vmdk\"\n",
                "extent type SPARSE",
            ),
            ("createType=\"vmfs\"\n", "no extent lines"),
        ] {
            let e = flat_extents(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
