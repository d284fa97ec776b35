//! VHDX (Hyper-V): fixed and dynamic disks, any block size, 512 and 4096-byte logical sectors.
//!
//! A VHDX whose log still holds entries (the writer did not close it cleanly) is refused: its
//! metadata or BAT on disk may be stale until the log is replayed, and reading it would silently
//! return old data. Differencing disks are refused.

use crate::disk::{for_each_unit, push_extent, Extent, Format, VirtualDisk};
use crate::error::{malformed, unsupported, DiskError, Result};
use crate::io::{le16, le32, le64, Source};

const FMT: &str = "vhdx";
const BAT_GUID: &str = "2DC27766-F623-4200-9D64-115E9BFD4A08";
const METADATA_GUID: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
const FILE_PARAMETERS: &str = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B";
const VIRTUAL_DISK_SIZE: &str = "2FA54224-CD1B-4876-B211-5DBED83BF4B8";
const LOGICAL_SECTOR_SIZE: &str = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F";

const PAYLOAD_NOT_PRESENT: u64 = 0;
const PAYLOAD_UNDEFINED: u64 = 1;
const PAYLOAD_ZERO: u64 = 2;
const PAYLOAD_UNMAPPED: u64 = 3;
const PAYLOAD_FULLY_PRESENT: u64 = 6;
const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;

/// A GUID in its on-disk layout (first three fields little-endian).
fn guid(s: &str) -> [u8; 16] {
    let hex: Vec<u8> = s
        .bytes()
        .filter(|b| *b != b'-')
        .collect::<Vec<u8>>()
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).expect("ascii"), 16).expect("hex"))
        .collect();
    let mut g = [0u8; 16];
    g[0..4].copy_from_slice(&[hex[3], hex[2], hex[1], hex[0]]);
    g[4..6].copy_from_slice(&[hex[5], hex[4]]);
    g[6..8].copy_from_slice(&[hex[7], hex[6]]);
    g[8..16].copy_from_slice(&hex[8..16]);
    g
}

fn crc_ok(buf: &[u8]) -> bool {
    let stored = le32(buf, 4);
    let mut copy = buf.to_vec();
    copy[4..8].fill(0);
    crc32c::crc32c(&copy) == stored
}

pub struct VhdxDisk {
    src: Source,
    size: u64,
    block: u64,
    logical_sector: u32,
    chunk_ratio: u64,
    bat: Vec<u64>,
    fixed: bool,
}

impl VhdxDisk {
    pub fn open(src: Source) -> Result<Self> {
        let mut ident = [0u8; 8];
        if src.len() < 1 << 20 {
            return Err(malformed(
                FMT,
                "file",
                "shorter than the 1 MiB header section",
            ));
        }
        src.read_exact_at(&mut ident, 0)?;
        if &ident != b"vhdxfile" {
            return Err(malformed(FMT, "file identifier", "bad signature"));
        }
        // Two header copies; the valid one with the higher sequence number is current.
        let mut best: Option<Vec<u8>> = None;
        for off in [64 * 1024u64, 128 * 1024] {
            let h = src.read_vec(off, 4096, FMT, "header")?;
            if &h[..4] != b"head" || !crc_ok(&h) {
                continue;
            }
            if best.as_ref().is_none_or(|b| le64(&h, 8) > le64(b, 8)) {
                best = Some(h);
            }
        }
        let h = best.ok_or_else(|| {
            malformed(
                FMT,
                "header",
                "neither header copy has a valid signature and checksum",
            )
        })?;
        let version = le16(&h, 66);
        if version != 1 {
            return Err(unsupported(FMT, format!("header version {version}")));
        }
        if h[48..64].iter().any(|&b| b != 0) {
            return Err(unsupported(
                FMT,
                "the log holds entries that were never replayed (the disk was not closed cleanly); \
                 attach it once in Hyper-V or run `qemu-img check -r all` to replay the log, then retry",
            ));
        }
        // Region table: same rule, but both copies must agree, so the first valid one is used.
        let mut regions = None;
        for off in [192 * 1024u64, 256 * 1024] {
            let r = src.read_vec(off, 64 * 1024, FMT, "region table")?;
            if &r[..4] == b"regi" && crc_ok(&r) {
                regions = Some(r);
                break;
            }
        }
        let r = regions.ok_or_else(|| {
            malformed(
                FMT,
                "region table",
                "no copy with a valid signature and checksum",
            )
        })?;
        let count = le32(&r, 8) as usize;
        if count > 2047 {
            return Err(malformed(FMT, "region table", format!("{count} entries")));
        }
        let (mut bat_region, mut meta_region) = (None, None);
        for i in 0..count {
            let e = &r[16 + i * 32..16 + (i + 1) * 32];
            let id: [u8; 16] = e[..16].try_into().expect("16 bytes");
            let (off, len, required) = (le64(e, 16), le32(e, 24) as u64, le32(e, 28) & 1 != 0);
            if id == guid(BAT_GUID) {
                bat_region = Some((off, len));
            } else if id == guid(METADATA_GUID) {
                meta_region = Some((off, len));
            } else if required {
                return Err(unsupported(
                    FMT,
                    "a required region this reader does not know",
                ));
            }
        }
        let (meta_off, meta_len) =
            meta_region.ok_or_else(|| malformed(FMT, "region table", "no metadata region"))?;
        let (bat_off, bat_len) =
            bat_region.ok_or_else(|| malformed(FMT, "region table", "no BAT region"))?;
        let meta = src.read_vec(meta_off, meta_len, FMT, "metadata region")?;
        if meta.len() < 32 || &meta[..8] != b"metadata" {
            return Err(malformed(FMT, "metadata table", "bad signature"));
        }
        let entries = le16(&meta, 10) as usize;
        if entries > 2047 || 32 + entries * 32 > meta.len() {
            return Err(malformed(
                FMT,
                "metadata table",
                format!("{entries} entries"),
            ));
        }
        let item = |id: &str| -> Result<Option<&[u8]>> {
            let want = guid(id);
            for i in 0..entries {
                let e = &meta[32 + i * 32..64 + i * 32];
                if e[..16] == want {
                    let (o, l) = (le32(e, 16) as usize, le32(e, 20) as usize);
                    if o.checked_add(l).is_none_or(|end| end > meta.len()) || l == 0 {
                        return Err(malformed(
                            FMT,
                            "metadata table",
                            "item outside the metadata region",
                        ));
                    }
                    return Ok(Some(&meta[o..o + l]));
                }
            }
            Ok(None)
        };
        let need = |id: &str, what: &'static str, len: usize| -> Result<Vec<u8>> {
            match item(id)? {
                Some(b) if b.len() >= len => Ok(b.to_vec()),
                _ => Err(malformed(
                    FMT,
                    "metadata",
                    format!("missing or short {what} item"),
                )),
            }
        };
        let fp = need(FILE_PARAMETERS, "file parameters", 8)?;
        let block = le32(&fp, 0) as u64;
        let flags = le32(&fp, 4);
        let size = le64(&need(VIRTUAL_DISK_SIZE, "virtual disk size", 8)?, 0);
        let logical_sector = le32(&need(LOGICAL_SECTOR_SIZE, "logical sector size", 4)?, 0);
        if flags & 2 != 0 {
            return Err(unsupported(
                FMT,
                "differencing disks (a child of a parent VHDX); merge the disk first",
            ));
        }
        if !(1 << 20..=256 << 20).contains(&block) || !block.is_power_of_two() {
            return Err(malformed(
                FMT,
                "file parameters",
                format!("block size {block}"),
            ));
        }
        if logical_sector != 512 && logical_sector != 4096 {
            return Err(malformed(
                FMT,
                "logical sector size",
                format!("{logical_sector}"),
            ));
        }
        if size == 0 || size > 64 << 40 || !size.is_multiple_of(logical_sector as u64) {
            return Err(malformed(FMT, "virtual disk size", format!("{size} bytes")));
        }
        let chunk_ratio = ((1u64 << 23) * logical_sector as u64) / block;
        let payload = size.div_ceil(block);
        let total = payload + (payload - 1) / chunk_ratio;
        if total * 8 > bat_len {
            return Err(malformed(
                FMT,
                "BAT",
                format!("region of {bat_len} bytes cannot hold {total} entries"),
            ));
        }
        let bat_bytes = src.read_vec(bat_off, total * 8, FMT, "BAT")?;
        let bat: Vec<u64> = bat_bytes.chunks_exact(8).map(|c| le64(c, 0)).collect();
        // Fixed disks are created with every block allocated and ask to keep it that way.
        let fixed = flags & 1 != 0;
        for i in 0..payload {
            let e = bat[(i + i / chunk_ratio) as usize];
            match e & 7 {
                PAYLOAD_FULLY_PRESENT
                | PAYLOAD_NOT_PRESENT
                | PAYLOAD_UNDEFINED
                | PAYLOAD_ZERO
                | PAYLOAD_UNMAPPED => {}
                PAYLOAD_PARTIALLY_PRESENT => {
                    return Err(unsupported(
                        FMT,
                        "partially present blocks (differencing disks)",
                    ))
                }
                s => {
                    return Err(malformed(
                        FMT,
                        "BAT",
                        format!("block {i} has invalid state {s}"),
                    ))
                }
            }
        }
        Ok(VhdxDisk {
            src,
            size,
            block,
            logical_sector,
            chunk_ratio,
            bat,
            fixed,
        })
    }

    /// File offset of a payload block, or None when it reads as zeros.
    fn block_offset(&self, i: u64) -> Result<Option<u64>> {
        let e = self.bat[(i + i / self.chunk_ratio) as usize];
        if e & 7 != PAYLOAD_FULLY_PRESENT {
            return Ok(None);
        }
        let off = e & !0xfffff;
        if off < 1 << 20 || off.checked_add(self.block).is_none() {
            return Err(malformed(
                FMT,
                "BAT",
                format!("block {i} at offset {off:#x}"),
            ));
        }
        Ok(Some(off))
    }
}

impl VirtualDisk for VhdxDisk {
    fn format(&self) -> Format {
        Format::Vhdx
    }
    fn variant(&self) -> String {
        let kind = if self.fixed { "fixed" } else { "dynamic" };
        format!(
            "{kind}, {} MiB blocks, {}-byte logical sectors",
            self.block >> 20,
            self.logical_sector
        )
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn allocated(&self) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        for i in 0..self.size.div_ceil(self.block) {
            if self.block_offset(i)?.is_some() {
                let s = i * self.block;
                push_extent(&mut out, s, self.block.min(self.size - s));
            }
        }
        Ok(out)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        for_each_unit(buf, offset, self.size, self.block, |b, within, piece| {
            match self.block_offset(b)? {
                None => piece.fill(0),
                Some(off) => self.src.read_data(piece, off + within, FMT, "BAT")?,
            }
            Ok::<(), DiskError>(())
        })
    }
}
