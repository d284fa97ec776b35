//! qcow2 (versions 2 and 3): any cluster size, compressed clusters (deflate or zstd), zero
//! clusters, extended L2 entries (subclusters), and a backing chain given by the caller.
//!
//! Refused: encryption, external data files, images marked corrupt.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::disk::{for_each_unit, push_extent, union_extents, Extent, Format, VirtualDisk};
use crate::error::{malformed, unsupported, DiskError, Result};
use crate::io::{be32, be64, Source};

const FMT: &str = "qcow2";
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
const L2_CACHE_TABLES: usize = 32;

const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Deflate,
    Zstd,
}

pub struct Qcow2Disk {
    src: Source,
    version: u32,
    size: u64,
    cluster_bits: u32,
    l2_entries: u64,
    /// Bytes per L2 entry: 8, or 16 with extended L2 (entry plus subcluster bitmap).
    l2_entry_size: u64,
    l1: Vec<u64>,
    compression: Compression,
    backing: Option<Box<dyn VirtualDisk>>,
    backing_name: Option<String>,
    l2_cache: Mutex<Vec<(u64, Arc<Vec<u8>>)>>,
}

/// Where one cluster's bytes come from.
enum ClusterMap {
    Unallocated,
    Zero,
    Data(u64),
    Compressed(u64),
    /// Extended L2: host cluster offset (0 if none) and the 64-bit subcluster bitmap.
    Sub(u64, u64),
}

impl Qcow2Disk {
    pub fn open(src: Source, backing_chain: &[PathBuf]) -> Result<Self> {
        let mut h = [0u8; 112];
        let hl = (src.len() as usize).min(h.len());
        if hl < 72 {
            return Err(malformed(FMT, "header", "file shorter than a qcow2 header"));
        }
        src.read_exact_at(&mut h[..hl], 0)?;
        if &h[..4] != b"QFI\xfb" {
            return Err(malformed(FMT, "header", "bad magic"));
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(
                FMT,
                format!("version {version} (only 2 and 3 exist)"),
            ));
        }
        let backing_off = be64(&h, 8);
        let backing_len = be32(&h, 16);
        let cluster_bits = be32(&h, 20);
        let size = be64(&h, 24);
        let crypt = be32(&h, 32);
        let l1_size = be32(&h, 36) as u64;
        let l1_off = be64(&h, 40);
        if !(9..=21).contains(&cluster_bits) {
            return Err(malformed(
                FMT,
                "header",
                format!("cluster_bits {cluster_bits} outside 9..=21"),
            ));
        }
        if crypt != 0 {
            return Err(unsupported(FMT, "encrypted images"));
        }
        let mut incompat = 0;
        let mut compression = Compression::Deflate;
        if version == 3 {
            if hl < 104 {
                return Err(malformed(FMT, "header", "v3 header truncated"));
            }
            incompat = be64(&h, 72);
            let header_len = be32(&h, 100);
            if incompat & INCOMPAT_COMPRESSION != 0 {
                if header_len < 105 || hl < 105 {
                    return Err(malformed(
                        FMT,
                        "header",
                        "compression type bit set but header has no compression type field",
                    ));
                }
                compression = match h[104] {
                    0 => Compression::Deflate,
                    1 => Compression::Zstd,
                    t => return Err(unsupported(FMT, format!("compression type {t}"))),
                };
            }
        }
        if incompat & INCOMPAT_CORRUPT != 0 {
            return Err(unsupported(
                FMT,
                "the image is marked corrupt; repair it with `qemu-img check -r all` first",
            ));
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported(FMT, "images with an external data file"));
        }
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
        if incompat & !known != 0 {
            return Err(unsupported(
                FMT,
                format!("unknown incompatible feature bits {:#x}", incompat & !known),
            ));
        }
        let extl2 = incompat & INCOMPAT_EXTL2 != 0;
        if extl2 && cluster_bits < 14 {
            return Err(malformed(
                FMT,
                "header",
                "extended L2 needs clusters of at least 16 KiB",
            ));
        }
        let cluster = 1u64 << cluster_bits;
        let l2_entry_size = if extl2 { 16 } else { 8 };
        let l2_entries = cluster / l2_entry_size;
        let needed_l1 = size.div_ceil(cluster).div_ceil(l2_entries);
        if l1_size < needed_l1 {
            return Err(malformed(
                FMT,
                "L1 table",
                format!("{l1_size} entries cannot map {size} bytes (need {needed_l1})"),
            ));
        }
        if size > (1u64 << 62) {
            return Err(malformed(
                FMT,
                "header",
                format!("virtual size {size} is absurd"),
            ));
        }
        let l1_bytes = src.read_vec(l1_off, needed_l1 * 8, FMT, "L1 table")?;
        let l1: Vec<u64> = l1_bytes.chunks_exact(8).map(|c| be64(c, 0)).collect();
        // Two L1 entries sharing an L2 table never happen in a valid active table; allowing
        // them would let a small file make a table walk take as long as its virtual size.
        let mut l2s: Vec<u64> = l1
            .iter()
            .map(|e| e & OFFSET_MASK)
            .filter(|&o| o != 0)
            .collect();
        l2s.sort_unstable();
        if l2s.windows(2).any(|w| w[0] == w[1]) {
            return Err(malformed(
                FMT,
                "L1 table",
                "two entries point at the same L2 table",
            ));
        }

        let backing_name = if backing_off != 0 && backing_len != 0 {
            if backing_len > 1023 {
                return Err(malformed(
                    FMT,
                    "backing file name",
                    format!("{backing_len} bytes long"),
                ));
            }
            let raw = src.read_vec(backing_off, backing_len as u64, FMT, "backing file name")?;
            Some(String::from_utf8_lossy(&raw).into_owned())
        } else {
            None
        };
        let backing = match (&backing_name, backing_chain.split_first()) {
            (None, None) => None,
            (Some(name), None) => {
                return Err(unsupported(
                    FMT,
                    format!(
                        "the image has the backing file {name:?}; backing files are never opened \
                         implicitly: pass the backing chain explicitly"
                    ),
                ))
            }
            (None, Some(_)) => {
                return Err(unsupported(
                    FMT,
                    "a backing file was given but the image has none",
                ))
            }
            (Some(_), Some((first, rest))) => {
                let bsrc = Source::open(first)?;
                let bformat = crate::disk::detect_source(&bsrc)?;
                Some(crate::disk::open_source(bsrc, bformat, rest)?)
            }
        };
        Ok(Qcow2Disk {
            src,
            version,
            size,
            cluster_bits,
            l2_entries,
            l2_entry_size,
            l1,
            compression,
            backing,
            backing_name,
            l2_cache: Mutex::new(Vec::new()),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_table(&self, l2_off: u64) -> Result<Arc<Vec<u8>>> {
        {
            let mut cache = self.l2_cache.lock().expect("l2 cache lock");
            if let Some(pos) = cache.iter().position(|(o, _)| *o == l2_off) {
                let e = cache.remove(pos);
                let t = e.1.clone();
                cache.insert(0, e);
                return Ok(t);
            }
        }
        if !l2_off.is_multiple_of(self.cluster_size()) {
            return Err(malformed(
                FMT,
                "L1 table",
                format!("L2 table offset {l2_off:#x} is not cluster-aligned"),
            ));
        }
        let t = Arc::new(
            self.src
                .read_vec(l2_off, self.cluster_size(), FMT, "L2 table")?,
        );
        let mut cache = self.l2_cache.lock().expect("l2 cache lock");
        cache.insert(0, (l2_off, t.clone()));
        cache.truncate(L2_CACHE_TABLES);
        Ok(t)
    }

    fn map(&self, vcluster: u64) -> Result<ClusterMap> {
        let l1_idx = (vcluster / self.l2_entries) as usize;
        let l2_off = self.l1[l1_idx] & OFFSET_MASK;
        if l2_off == 0 {
            return Ok(ClusterMap::Unallocated);
        }
        let table = self.l2_table(l2_off)?;
        let at = ((vcluster % self.l2_entries) * self.l2_entry_size) as usize;
        let entry = be64(&table, at);
        if entry & L2_COMPRESSED != 0 {
            return Ok(ClusterMap::Compressed(entry));
        }
        let off = entry & OFFSET_MASK;
        if !off.is_multiple_of(self.cluster_size()) {
            return Err(malformed(
                FMT,
                "L2 table",
                format!("data cluster offset {off:#x} is not cluster-aligned"),
            ));
        }
        if self.l2_entry_size == 16 {
            return Ok(ClusterMap::Sub(off, be64(&table, at + 8)));
        }
        if self.version >= 3 && entry & L2_ZERO != 0 {
            return Ok(ClusterMap::Zero);
        }
        Ok(if off == 0 {
            ClusterMap::Unallocated
        } else {
            ClusterMap::Data(off)
        })
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            None => buf.fill(0),
            Some(b) => {
                let bsize = b.size();
                let avail = bsize.saturating_sub(offset).min(buf.len() as u64) as usize;
                if avail > 0 {
                    b.read_at(&mut buf[..avail], offset)?;
                }
                buf[avail..].fill(0);
            }
        }
        Ok(())
    }

    fn decompress(&self, entry: u64, out: &mut [u8]) -> Result<()> {
        let x = 62 - (self.cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = ((entry >> x) & ((1u64 << (self.cluster_bits - 8)) - 1)) + 1;
        let csize = sectors * 512 - (host & 511);
        if host >= self.src.len() {
            return Err(malformed(
                FMT,
                "L2 table",
                format!("compressed cluster at {host:#x} is past the end of the file"),
            ));
        }
        let mut comp = vec![0u8; csize as usize];
        self.src.read_clamped(&mut comp, host)?;
        let res = match self.compression {
            Compression::Deflate => flate2::read::DeflateDecoder::new(&comp[..]).read_exact(out),
            Compression::Zstd => {
                let mut dec = ruzstd::decoding::StreamingDecoder::new(&comp[..]).map_err(|e| {
                    malformed(FMT, "compressed cluster", format!("zstd frame: {e}"))
                })?;
                dec.read_exact(out)
            }
        };
        res.map_err(|e| malformed(FMT, "compressed cluster", format!("at {host:#x}: {e}")))
    }
}

impl VirtualDisk for Qcow2Disk {
    fn format(&self) -> Format {
        Format::Qcow2
    }
    fn variant(&self) -> String {
        match &self.backing_name {
            Some(b) => format!("v{}, backing file {b:?}", self.version),
            None => format!("v{}", self.version),
        }
    }
    fn size(&self) -> u64 {
        self.size
    }

    fn allocated(&self) -> Result<Vec<Extent>> {
        let cs = self.cluster_size();
        let mut out = Vec::new();
        let clusters = self.size.div_ceil(cs);
        for (l1_idx, l1e) in self.l1.iter().enumerate() {
            let l2_off = l1e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            let first = l1_idx as u64 * self.l2_entries;
            let last = (first + self.l2_entries).min(clusters);
            for vc in first..last {
                let stored = match self.map(vc)? {
                    ClusterMap::Data(_) | ClusterMap::Compressed(_) => true,
                    ClusterMap::Sub(off, bitmap) => off != 0 && bitmap as u32 != 0,
                    ClusterMap::Zero | ClusterMap::Unallocated => false,
                };
                if stored {
                    let start = vc * cs;
                    push_extent(&mut out, start, cs.min(self.size - start));
                }
            }
        }
        if let Some(b) = &self.backing {
            let mut bext: Vec<Extent> = Vec::new();
            for e in b.allocated()? {
                if e.offset >= self.size {
                    break;
                }
                push_extent(&mut bext, e.offset, e.length.min(self.size - e.offset));
            }
            out = union_extents(&out, &bext);
        }
        Ok(out)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let cs = self.cluster_size();
        for_each_unit(buf, offset, self.size, cs, |vc, within, piece| {
            match self.map(vc)? {
                ClusterMap::Zero => piece.fill(0),
                ClusterMap::Unallocated => self.read_backing(piece, vc * cs + within)?,
                ClusterMap::Data(host) => {
                    self.src.read_data(piece, host + within, FMT, "L2 table")?
                }
                ClusterMap::Compressed(entry) => {
                    let mut cluster = vec![0u8; cs as usize];
                    self.decompress(entry, &mut cluster)?;
                    piece.copy_from_slice(&cluster[within as usize..within as usize + piece.len()]);
                }
                ClusterMap::Sub(host, bitmap) => {
                    let sc = cs / 32;
                    let mut done = 0usize;
                    while done < piece.len() {
                        let pos = within + done as u64;
                        let i = pos / sc;
                        let n = ((sc - pos % sc) as usize).min(piece.len() - done);
                        let part = &mut piece[done..done + n];
                        if bitmap & (1 << (32 + i)) != 0 {
                            part.fill(0);
                        } else if bitmap & (1 << i) != 0 {
                            if host == 0 {
                                return Err(malformed(
                                    FMT,
                                    "L2 table",
                                    "allocated subcluster without a host cluster",
                                ));
                            }
                            self.src.read_data(part, host + pos, FMT, "L2 table")?;
                        } else {
                            self.read_backing(part, vc * cs + pos)?;
                        }
                        done += n;
                    }
                }
            }
            Ok::<(), DiskError>(())
        })
    }
}
