//! VHD (Virtual PC / Hyper-V / Azure): fixed and dynamic disks. Differencing disks are refused,
//! as SMS refuses them.

use std::sync::Mutex;

use crate::disk::{for_each_unit, push_extent, Extent, Format, VirtualDisk};
use crate::error::{malformed, unsupported, DiskError, Result};
use crate::io::{be32, be64, Source};

const FMT: &str = "vhd";
const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFFERENCING: u32 = 4;
const UNALLOCATED: u32 = 0xffff_ffff;

pub struct VhdDisk {
    src: Source,
    size: u64,
    kind: Kind,
}

enum Kind {
    Fixed,
    Dynamic {
        block: u64,
        bitmap_bytes: u64,
        bat: Vec<u32>,
        /// Sector bitmap of the last block read, as sequential reads hit the same block often.
        bitmap_cache: Mutex<Option<(u32, Vec<u8>)>>,
    },
}

/// Checks the one's-complement checksum the VHD spec puts on the footer and dynamic header.
fn checksum_ok(b: &[u8], at: usize) -> bool {
    let stored = be32(b, at);
    let sum: u32 = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(x as u32));
    !sum == stored
}

impl VhdDisk {
    pub fn open(src: Source) -> Result<Self> {
        if src.len() < 512 {
            return Err(malformed(FMT, "footer", "file shorter than a footer"));
        }
        let mut footer = [0u8; 512];
        src.read_exact_at(&mut footer, src.len() - 512)?;
        let mut footer_at_end = src.len() - 512;
        if !footer.starts_with(b"conectix") {
            // Dynamic disks keep a footer copy at offset 0; use it when the end one is damaged
            // (for example an interrupted copy).
            src.read_exact_at(&mut footer, 0)?;
            if !footer.starts_with(b"conectix") {
                return Err(malformed(
                    FMT,
                    "footer",
                    "no 'conectix' footer at the end or start",
                ));
            }
            footer_at_end = src.len();
        }
        if !checksum_ok(&footer, 64) {
            return Err(malformed(FMT, "footer", "checksum mismatch"));
        }
        let disk_type = be32(&footer, 60);
        let size = be64(&footer, 48);
        match disk_type {
            TYPE_FIXED => {
                if size > footer_at_end {
                    return Err(malformed(FMT, "footer", format!(
                        "fixed disk of {size} bytes in a {}-byte file", src.len())));
                }
                Ok(VhdDisk { src, size, kind: Kind::Fixed })
            }
            TYPE_DYNAMIC => {
                let hdr_off = be64(&footer, 16);
                let h = src.read_vec(hdr_off, 1024, FMT, "dynamic disk header")?;
                if !h.starts_with(b"cxsparse") {
                    return Err(malformed(FMT, "dynamic disk header", "bad cookie"));
                }
                if !checksum_ok(&h, 36) {
                    return Err(malformed(FMT, "dynamic disk header", "checksum mismatch"));
                }
                let bat_off = be64(&h, 16);
                let max_entries = be32(&h, 28) as u64;
                let block = be32(&h, 32) as u64;
                if block < 512 || !block.is_power_of_two() || block > 256 << 20 {
                    return Err(malformed(FMT, "dynamic disk header", format!("block size {block}")));
                }
                let needed = size.div_ceil(block);
                if max_entries < needed {
                    return Err(malformed(FMT, "block allocation table", format!(
                        "{max_entries} entries cannot map {size} bytes")));
                }
                let bat_bytes = src.read_vec(bat_off, needed * 4, FMT, "block allocation table")?;
                let bat = bat_bytes.chunks_exact(4).map(|c| be32(c, 0)).collect();
                let bitmap_bytes = (block / 512).div_ceil(8).div_ceil(512) * 512;
                Ok(VhdDisk {
                    src,
                    size,
                    kind: Kind::Dynamic { block, bitmap_bytes, bat, bitmap_cache: Mutex::new(None) },
                })
            }
            TYPE_DIFFERENCING => Err(unsupported(
                FMT,
                "differencing disks (a child of a parent VHD); merge the disk first, as SMS does not support them either",
            )),
            t => Err(malformed(FMT, "footer", format!("disk type {t}"))),
        }
    }
}

impl VirtualDisk for VhdDisk {
    fn format(&self) -> Format {
        Format::Vhd
    }
    fn variant(&self) -> String {
        match self.kind {
            Kind::Fixed => "fixed".into(),
            Kind::Dynamic { .. } => "dynamic".into(),
        }
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn allocated(&self) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        match &self.kind {
            Kind::Fixed => push_extent(&mut out, 0, self.size),
            Kind::Dynamic { block, bat, .. } => {
                for (i, &e) in bat.iter().enumerate() {
                    if e != UNALLOCATED {
                        let s = i as u64 * block;
                        push_extent(&mut out, s, (*block).min(self.size - s));
                    }
                }
            }
        }
        Ok(out)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.kind {
            Kind::Fixed => for_each_unit(buf, offset, self.size, u64::MAX, |_, within, piece| {
                self.src.read_exact_at(piece, within)
            }),
            Kind::Dynamic {
                block,
                bitmap_bytes,
                bat,
                bitmap_cache,
            } => {
                for_each_unit(buf, offset, self.size, *block, |b, within, piece| {
                    let e = bat[b as usize];
                    if e == UNALLOCATED {
                        piece.fill(0);
                        return Ok(());
                    }
                    let base = e as u64 * 512;
                    let bitmap = {
                        let mut c = bitmap_cache.lock().expect("bitmap cache lock");
                        match &*c {
                            Some((k, bm)) if *k == e => bm.clone(),
                            _ => {
                                let bm =
                                    self.src
                                        .read_vec(base, *bitmap_bytes, FMT, "sector bitmap")?;
                                *c = Some((e, bm.clone()));
                                bm
                            }
                        }
                    };
                    let data = base + bitmap_bytes;
                    // Sectors whose bitmap bit is clear hold no data and read as zeros.
                    let mut done = 0usize;
                    while done < piece.len() {
                        let pos = within + done as u64;
                        let sector = pos / 512;
                        let present = bitmap[(sector / 8) as usize] & (0x80 >> (sector % 8)) != 0;
                        let mut run_end = (sector + 1) * 512;
                        let stop = within + piece.len() as u64;
                        while run_end < stop {
                            let s = run_end / 512;
                            let p = bitmap[(s / 8) as usize] & (0x80 >> (s % 8)) != 0;
                            if p != present {
                                break;
                            }
                            run_end += 512;
                        }
                        let n = (run_end.min(stop) - pos) as usize;
                        let part = &mut piece[done..done + n];
                        if present {
                            self.src
                                .read_data(part, data + pos, FMT, "block allocation table")?;
                        } else {
                            part.fill(0);
                        }
                        done += n;
                    }
                    Ok::<(), DiskError>(())
                })
            }
        }
    }
}
