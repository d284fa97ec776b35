//! The parts of a stream-optimized VMDK an EBS-direct seed needs, parsed from byte ranges
//! fetched with ranged GETs: the footer (capacity, grain size, where the grain directory is),
//! the grain directory, grain tables and compressed grain records.
//!
//! Why not `tern_disk`'s reader: it reads from a local file or memory through a synchronous
//! positional-read source, and a seed's VMDK lives in S3, where one GET per small read would
//! cost a request each. Here the caller decides what to fetch (one GET per grain table, one
//! per run of grain records lying back to back), and only the stream-optimized variant the
//! connector uploads is accepted (compressed grains with markers, footer at the end).

use flate2::{Decompress, FlushDecompress};

use super::EBS_BLOCK_SIZE;

const MAGIC: &[u8; 4] = b"KDMV";
const FLAG_ZEROED_GTE: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
/// A grain record's marker: the grain's first sector (u64) and the compressed length (u32).
pub const MARKER_LEN: u64 = 12;
/// The footer header sits 1,024 bytes before the end (then the end-of-stream marker).
pub const FOOTER_FROM_END: u64 = 1024;
/// EBS's largest volume, 64 TiB: a capacity above it is refused before anything is sized by it.
const MAX_CAPACITY: u64 = 64 << 40;

/// What the footer says, and the grain directory it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Length of the whole object.
    pub len: u64,
    /// The virtual disk's size in bytes.
    pub capacity: u64,
    /// Bytes per grain (a power of two, at most one EBS block).
    pub grain: u64,
    /// Entries per grain table.
    pub gt_entries: u64,
    pub zeroed_gte: bool,
    /// Byte offset and length of the grain directory.
    pub gd_at: u64,
    pub gd_len: u64,
    /// Sector of each grain table (0: no table, the region reads as zeros); filled by
    /// [`Layout::set_directory`].
    pub gd: Vec<u32>,
}

/// Why a VMDK cannot be seeded from: the text names the structure at fault.
pub type Invalid = String;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Layout {
    /// Parses the footer header (the 512 bytes at `len - 1024`) of an object of `len` bytes.
    pub fn from_footer(footer: &[u8], len: u64) -> Result<Layout, Invalid> {
        if footer.len() < 512 || &footer[..4] != MAGIC {
            return Err(
                "not a stream-optimized VMDK: no footer header 1024 bytes before the end".into(),
            );
        }
        let version = le32(footer, 4);
        let flags = le32(footer, 8);
        let capacity = le64(footer, 12).saturating_mul(512);
        let grain_sectors = le64(footer, 20);
        let gt_entries = le32(footer, 44) as u64;
        let gd_sector = le64(footer, 56);
        let compress = u16::from_le_bytes([footer[77], footer[78]]);
        if !(1..=3).contains(&version) {
            return Err(format!("VMDK footer: version {version}"));
        }
        if flags & FLAG_COMPRESSED == 0 || flags & FLAG_MARKERS == 0 || compress != 1 {
            return Err(
                "not a stream-optimized VMDK: grains are not deflate-compressed with markers"
                    .into(),
            );
        }
        if grain_sectors == 0
            || !grain_sectors.is_power_of_two()
            || grain_sectors * 512 > EBS_BLOCK_SIZE as u64
        {
            return Err(format!(
                "VMDK footer: a grain of {grain_sectors} sectors (EBS direct seeds take grains of at most 512 KiB)"
            ));
        }
        if gt_entries == 0 || gt_entries > 1 << 16 {
            return Err(format!("VMDK footer: {gt_entries} entries per grain table"));
        }
        if capacity > MAX_CAPACITY {
            return Err(format!(
                "VMDK footer: a capacity of {capacity} bytes is larger than EBS's 64 TiB"
            ));
        }
        let grain = grain_sectors * 512;
        let gd_entries = capacity.div_ceil(grain * gt_entries);
        let gd_at = gd_sector.saturating_mul(512);
        let gd_len = gd_entries * 4;
        if gd_at
            .checked_add(gd_len)
            .is_none_or(|end| end > len.saturating_sub(FOOTER_FROM_END))
        {
            return Err("VMDK grain directory: past the end of the object".into());
        }
        Ok(Layout {
            len,
            capacity,
            grain,
            gt_entries,
            zeroed_gte: flags & FLAG_ZEROED_GTE != 0,
            gd_at,
            gd_len,
            gd: Vec::new(),
        })
    }

    /// Takes the grain directory's bytes; tables must lie inside the object and no two
    /// entries may share a table (a small file would otherwise describe an endless disk).
    pub fn set_directory(&mut self, bytes: &[u8]) -> Result<(), Invalid> {
        if bytes.len() as u64 != self.gd_len {
            return Err("VMDK grain directory: shorter than the footer says".into());
        }
        let gd: Vec<u32> = bytes.chunks_exact(4).map(|c| le32(c, 0)).collect();
        let mut seen: Vec<u32> = gd.iter().copied().filter(|s| *s != 0).collect();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err("VMDK grain directory: two entries point at the same grain table".into());
        }
        if seen
            .last()
            .is_some_and(|s| *s as u64 * 512 + self.gt_len() > self.len)
        {
            return Err("VMDK grain directory: a grain table past the end of the object".into());
        }
        self.gd = gd;
        Ok(())
    }

    /// Bytes of one grain table.
    pub fn gt_len(&self) -> u64 {
        self.gt_entries * 4
    }

    /// 512 KiB blocks of the disk.
    pub fn blocks(&self) -> u64 {
        self.capacity.div_ceil(EBS_BLOCK_SIZE as u64)
    }

    /// Grains per EBS block.
    pub fn grains_per_block(&self) -> u64 {
        EBS_BLOCK_SIZE as u64 / self.grain
    }

    /// The grain directory entries (index, table sector) covering blocks
    /// `first .. first + count` that have a table.
    pub fn tables(&self, first: u64, count: u64) -> Vec<(usize, u32)> {
        let per_table = self.grain * self.gt_entries;
        let start = first * EBS_BLOCK_SIZE as u64;
        let end = ((first + count) * EBS_BLOCK_SIZE as u64).min(self.capacity);
        if start >= end {
            return Vec::new();
        }
        (start / per_table..=(end - 1) / per_table)
            .filter_map(|i| {
                let i = i as usize;
                self.gd.get(i).filter(|s| **s != 0).map(|s| (i, *s))
            })
            .collect()
    }

    /// The largest a grain record may be: marker plus a grain deflated with fixed Huffman
    /// codes (up to 1/8 larger) and some slack, as `tern_disk` accepts.
    pub fn max_record(&self) -> u64 {
        MARKER_LEN + self.grain + self.grain / 8 + 1024
    }

    /// Where grain `grain`'s record starts (0: not stored, reads as zeros), from its table.
    pub fn grain_offset(&self, table: &[u8], grain: u64) -> Result<u64, Invalid> {
        let at = ((grain % self.gt_entries) * 4) as usize;
        let e = le32(table, at);
        if e == 0 || (e == 1 && self.zeroed_gte) {
            return Ok(0);
        }
        let offset = e as u64 * 512;
        if offset + MARKER_LEN > self.len {
            return Err(format!(
                "VMDK grain table: grain {grain} past the end of the object"
            ));
        }
        Ok(offset)
    }
}

/// Inflates the grain record at the start of `rec` (marker, then zlib data) into `out` (one
/// grain), checking that the marker names `grain` as the table does.
pub fn inflate_grain(
    z: &mut Decompress,
    layout: &Layout,
    grain: u64,
    rec: &[u8],
    out: &mut [u8],
) -> Result<(), Invalid> {
    let damaged = |what: &str| format!("VMDK grain {grain}: {what}");
    if rec.len() < MARKER_LEN as usize {
        return Err(damaged("truncated record"));
    }
    let lba = le64(rec, 0);
    let size = le32(rec, 8) as u64;
    if lba != grain * (layout.grain / 512) {
        return Err(damaged(&format!(
            "its marker names sector {lba}, not the grain's"
        )));
    }
    if size == 0 || size + MARKER_LEN > layout.max_record() || MARKER_LEN + size > rec.len() as u64
    {
        return Err(damaged(&format!("compressed size {size}")));
    }
    z.reset(true);
    let data = &rec[MARKER_LEN as usize..(MARKER_LEN + size) as usize];
    match z.decompress(data, out, FlushDecompress::Finish) {
        Ok(flate2::Status::StreamEnd) => {
            let n = z.total_out() as usize;
            out[n..].fill(0);
            Ok(())
        }
        Ok(_) => Err(damaged("the deflate stream does not end within the grain")),
        Err(e) => Err(damaged(&e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer(capacity_sectors: u64, grain: u64, gt_entries: u32, gd_sector: u64) -> Vec<u8> {
        let mut f = vec![0u8; 512];
        f[..4].copy_from_slice(MAGIC);
        f[4..8].copy_from_slice(&3u32.to_le_bytes());
        f[8..12].copy_from_slice(&(FLAG_COMPRESSED | FLAG_MARKERS | 1).to_le_bytes());
        f[12..20].copy_from_slice(&capacity_sectors.to_le_bytes());
        f[20..28].copy_from_slice(&grain.to_le_bytes());
        f[44..48].copy_from_slice(&gt_entries.to_le_bytes());
        f[56..64].copy_from_slice(&gd_sector.to_le_bytes());
        f[77..79].copy_from_slice(&1u16.to_le_bytes());
        f
    }

    #[test]
    fn a_footer_gives_the_layout_and_bad_ones_are_named() {
        // 64 MiB disk, 64 KiB grains, 512 entries per table: 2 tables.
        let l = Layout::from_footer(&footer(131_072, 128, 512, 100), 1 << 20).unwrap();
        assert_eq!(
            (l.capacity, l.grain, l.gt_len(), l.gd_len),
            (64 << 20, 65_536, 2048, 8)
        );
        assert_eq!(l.blocks(), 128);
        assert_eq!(l.grains_per_block(), 8);
        for (f, says) in [
            (footer(131_072, 3, 512, 100), "grain of 3 sectors"),
            (footer(131_072, 2048, 512, 100), "at most 512 KiB"),
            (footer(131_072, 128, 0, 100), "0 entries"),
            (footer(1 << 40, 128, 512, 100), "64 TiB"),
            (footer(131_072, 128, 512, 1 << 40), "past the end"),
            (vec![0; 512], "not a stream-optimized VMDK"),
        ] {
            let err = Layout::from_footer(&f, 1 << 20).unwrap_err();
            assert!(err.contains(says), "{err} should say {says}");
        }
        let mut plain = footer(131_072, 128, 512, 100);
        plain[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(Layout::from_footer(&plain, 1 << 20)
            .unwrap_err()
            .contains("not a stream-optimized"));
    }

    #[test]
    fn tables_cover_exactly_the_blocks_asked_for_and_shared_tables_are_refused() {
        let mut l = Layout::from_footer(&footer(131_072, 128, 512, 100), 1 << 20).unwrap();
        let gd: Vec<u8> = [10u32, 0].iter().flat_map(|s| s.to_le_bytes()).collect();
        l.set_directory(&gd).unwrap();
        // A table covers 32 MiB = 64 blocks; the second has no table.
        assert_eq!(l.tables(0, 64), vec![(0, 10)]);
        assert_eq!(l.tables(63, 2), vec![(0, 10)]);
        assert!(l.tables(64, 64).is_empty());
        assert!(l.tables(500, 10).is_empty(), "past the disk's end");
        let shared: Vec<u8> = [10u32, 10].iter().flat_map(|s| s.to_le_bytes()).collect();
        assert!(l
            .set_directory(&shared)
            .unwrap_err()
            .contains("same grain table"));
        let far: Vec<u8> = [10u32, 4000].iter().flat_map(|s| s.to_le_bytes()).collect();
        assert!(l.set_directory(&far).unwrap_err().contains("past the end"));
    }

    #[test]
    fn a_grain_record_inflates_only_where_its_marker_says() {
        use std::io::Write as _;
        let l = Layout::from_footer(&footer(131_072, 128, 512, 100), 1 << 20).unwrap();
        let grain = vec![7u8; 65_536];
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&grain).unwrap();
        let data = z.finish().unwrap();
        let mut rec = Vec::new();
        rec.extend_from_slice(&(5u64 * 128).to_le_bytes());
        rec.extend_from_slice(&(data.len() as u32).to_le_bytes());
        rec.extend_from_slice(&data);
        let mut out = vec![1u8; 65_536];
        let mut d = Decompress::new(true);
        inflate_grain(&mut d, &l, 5, &rec, &mut out).unwrap();
        assert_eq!(out, grain);
        assert!(inflate_grain(&mut d, &l, 6, &rec, &mut out)
            .unwrap_err()
            .contains("marker names sector 640"));
        assert!(inflate_grain(&mut d, &l, 5, &rec[..20], &mut out)
            .unwrap_err()
            .contains("compressed size"));
    }
}
