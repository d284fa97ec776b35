//! Writers: sparse raw, stream-optimized VMDK, and qcow2.
//!
//! Like `cp` and `qemu-img convert`, the writers leave flushing to the page cache: a caller
//! that needs the output durable calls `File::sync_all` on it.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::disk::{Extent, VirtualDisk};
use crate::error::{DiskError, Result};
use crate::formats::vmdk::{FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NL_TEST, GD_AT_END, SPARSE_MAGIC};
use crate::io::{is_zero, write_all_at};
use crate::{par, Progress};

/// Bytes handed to one worker at a time; a multiple of every grain and cluster size used here.
const CHUNK: u64 = 4 << 20;
/// What a worker returns for one chunk: bytes of virtual disk covered, and the numbered
/// units (grains, clusters) it produced.
type ChunkOut = (u64, Vec<(u64, Vec<u8>)>);
/// What a worker returns for one chunk of a stream-optimized VMDK: bytes of virtual disk
/// covered, the grain number and offset in `data` of each record, and the records.
struct VmdkChunk {
    covered: u64,
    grains: Vec<(u64, usize)>,
    data: Vec<u8>,
}
/// Granularity at which zero runs are skipped when writing raw output.
const ZERO_PROBE: usize = 64 * 1024;
const _: () = assert!(
    CHUNK as usize / ZERO_PROBE <= 64,
    "a u64 mask covers a chunk"
);
/// What a worker returns for one chunk of raw output: bytes of virtual disk covered, and for
/// a chunk with data its offset, a mask of its non-zero 64 KiB pieces and the bytes.
type RawChunk = (u64, Option<(u64, u64, Vec<u8>)>);

fn overlaps(ext: &[Extent], start: u64, end: u64) -> bool {
    let i = ext.partition_point(|e| e.end() <= start);
    i < ext.len() && ext[i].offset < end
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the virtual disk to `path` as a raw file, leaving zero ranges as holes (the file is
/// sized first and only non-zero 64 KiB pieces are written).
pub fn write_raw(disk: &dyn VirtualDisk, path: &Path, progress: Progress) -> Result<()> {
    let file = File::create(path).map_err(io_err(path))?;
    file.set_len(disk.size()).map_err(io_err(path))?;
    let ext = disk.allocated()?;
    let size = disk.size();
    let chunks = size.div_ceil(CHUNK);
    // Workers read (and, for compressed formats, inflate) chunks; the writes all happen here,
    // on one thread. Profiling VMDK -> raw showed the two workers' writes serialised on the
    // file's inode lock, the waiting one spinning (12% of samples in rwsem_spin_on_owner)
    // instead of inflating. Chunk buffers go back to a pool once written.
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    par::ordered(
        chunks,
        |c| -> Result<RawChunk> {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(size);
            if !overlaps(&ext, start, end) {
                return Ok((end - start, None));
            }
            let mut buf = pool.lock().expect("pool lock").pop().unwrap_or_default();
            buf.resize((end - start) as usize, 0);
            disk.read_at(&mut buf, start)?;
            // Bit i: the i-th 64 KiB piece is not all zeros (CHUNK / ZERO_PROBE == 64).
            let mask = buf
                .chunks(ZERO_PROBE)
                .enumerate()
                .filter(|(_, p)| !is_zero(p))
                .fold(0u64, |m, (i, _)| m | 1 << i);
            Ok((end - start, Some((start, mask, buf))))
        },
        |_, (n, data)| {
            if let Some((start, mask, buf)) = data {
                for (i, piece) in buf.chunks(ZERO_PROBE).enumerate() {
                    if mask & 1 << i != 0 {
                        write_all_at(&file, piece, start + (i * ZERO_PROBE) as u64)
                            .map_err(io_err(path))?;
                    }
                }
                pool.lock().expect("pool lock").push(buf);
            }
            progress(n);
            Ok(())
        },
    )?;
    Ok(())
}

/// Grain size of the VMDKs we write: 128 sectors (64 KiB), what VMware and qemu use.
const GRAIN: u64 = 64 * 1024;
const GT_ENTRIES: u64 = 512;
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// Counts bytes so the writer always knows its sector position without seeking.
struct Counting<W: Write> {
    inner: W,
    pos: u64,
}

impl<W: Write> Counting<W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.inner.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }
    fn pad_sector(&mut self) -> Result<()> {
        let rem = (self.pos % 512) as usize;
        if rem != 0 {
            self.put(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }
    fn sector(&self) -> u64 {
        self.pos / 512
    }
    fn marker(&mut self, val: u64, kind: u32) -> Result<()> {
        let mut m = [0u8; 512];
        m[..8].copy_from_slice(&val.to_le_bytes());
        m[12..16].copy_from_slice(&kind.to_le_bytes());
        self.put(&m)
    }
}

/// Header, descriptor and padding up to the first grain boundary, as VMware and qemu lay out
/// stream-optimized files (grains then start grain-aligned).
fn overhead_sectors(desc_sectors: u64) -> u64 {
    (1 + desc_sectors).div_ceil(GRAIN / 512) * (GRAIN / 512)
}

fn sparse_header(capacity: u64, desc_sectors: u64, gd_offset: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..4].copy_from_slice(SPARSE_MAGIC);
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&(FLAG_NL_TEST | FLAG_COMPRESSED | FLAG_MARKERS).to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&(GRAIN / 512).to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&desc_sectors.to_le_bytes());
    h[44..48].copy_from_slice(&(GT_ENTRIES as u32).to_le_bytes());
    h[48..56].copy_from_slice(&0u64.to_le_bytes());
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&overhead_sectors(desc_sectors).to_le_bytes());
    h[73] = b'\n';
    h[74] = b' ';
    h[75] = b'\r';
    h[76] = b'\n';
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    h
}

fn descriptor(capacity: u64, name: &str) -> String {
    // Geometry as VMware computes it for SCSI disks: 255 heads, 63 sectors per track.
    let cylinders = (capacity / (255 * 63)).clamp(1, 65535);
    // The CID only has to change when the content changes; deriving it from the size keeps our
    // output reproducible byte for byte.
    let cid = (crc32c::crc32c(&capacity.to_le_bytes()) | 1) & 0xffff_fffe;
    format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n\
         # Extent description\nRW {capacity} SPARSE \"{name}\"\n\n\
         # The Disk Data Base\n#DDB\n\n\
         ddb.virtualHWVersion = \"4\"\nddb.adapterType = \"lsilogic\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\n"
    )
}

/// Size of the output buffer `flate2::write::ZlibEncoder` compresses through. Stored blocks
/// are cut where that buffer fills, so it is part of the output format of our VMDKs.
const ZLIB_WRITER_BUF: usize = 32 * 1024;

/// One worker's deflate streams, reused grain after grain: a new stream costs an allocation
/// and the zeroing of its window and hash tables, which profiling showed at 11% of the VMDK
/// write's time when every grain (and its sample) had its own.
struct GrainCoder {
    fast: Compress,
    stored: Compress,
    scratch: Vec<u8>,
    sample: Vec<u8>,
}

impl GrainCoder {
    fn new() -> Self {
        GrainCoder {
            fast: Compress::new(Compression::fast(), true),
            stored: Compress::new(Compression::none(), true),
            scratch: Vec::with_capacity(ZLIB_WRITER_BUF),
            sample: Vec::with_capacity(4096 + 64),
        }
    }

    /// Appends the zlib stream of `input` to `out`, produced exactly as
    /// `flate2::write::ZlibEncoder` (which earlier versions used) produces it: everything
    /// written without flushing, then finished, through a 32 KiB buffer. The stream is reset,
    /// not recreated; the bytes are the same (resumed uploads regenerate them).
    fn deflate(
        z: &mut Compress,
        scratch: &mut Vec<u8>,
        mut input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        z.reset();
        scratch.clear();
        let zerr = |e: flate2::CompressError| std::io::Error::other(e);
        while !input.is_empty() {
            out.extend_from_slice(scratch);
            scratch.clear();
            let before = z.total_in();
            let st = z
                .compress_vec(input, scratch, FlushCompress::None)
                .map_err(zerr)?;
            let n = (z.total_in() - before) as usize;
            if n == 0 && st == Status::StreamEnd {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            input = &input[n..];
        }
        loop {
            out.extend_from_slice(scratch);
            scratch.clear();
            let before = z.total_out();
            z.compress_vec(&[], scratch, FlushCompress::Finish)
                .map_err(zerr)?;
            if before == z.total_out() {
                return Ok(());
            }
        }
    }

    /// Compression level for one grain. Level 1 costs a fraction of the default's CPU time for
    /// nearly the same ratio on disk data. Grains that do not compress (encrypted or already
    /// compressed files) are the slowest to deflate and gain nothing, so a 4 KiB sample
    /// decides: if it shrinks by less than 1/16 the grain is stored (zlib "stored" blocks,
    /// still a valid compressed grain for every reader).
    fn compressible(&mut self, grain: &[u8]) -> Result<bool> {
        let sample = &grain[..grain.len().min(4096)];
        self.sample.clear();
        let mut out = std::mem::take(&mut self.sample);
        let r = Self::deflate(&mut self.fast, &mut self.scratch, sample, &mut out);
        let small = out.len() < sample.len() - sample.len() / 16;
        self.sample = out;
        Ok(r.is_err() || small)
    }

    /// Appends one grain record (marker: LBA, compressed length; then the zlib stream),
    /// padded to a sector, to `out`.
    fn grain(&mut self, lba: u64, g: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.extend_from_slice(&lba.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        let fast = self.compressible(g)?;
        let z = if fast {
            &mut self.fast
        } else {
            &mut self.stored
        };
        Self::deflate(z, &mut self.scratch, g, out)?;
        // The fast level uses fixed Huffman codes, which grow incompressible bytes by up to
        // 1/8: a grain whose sample compressed but whose bulk did not comes out larger than it
        // went in. Stored blocks cost 5 bytes per 64 KiB instead.
        if fast && out.len() - start - 12 > g.len() {
            out.truncate(start + 12);
            Self::deflate(&mut self.stored, &mut self.scratch, g, out)?;
        }
        let clen = (out.len() - start - 12) as u32;
        out[start + 8..start + 12].copy_from_slice(&clen.to_le_bytes());
        out.resize(start + (out.len() - start).div_ceil(512) * 512, 0);
        Ok(())
    }
}

/// Writes the virtual disk as a stream-optimized VMDK to any `Write` (a file, a pipe, an
/// upload): a single forward pass, compressed 64 KiB grains, zero grains skipped, each grain
/// table after its grains, then the grain directory, the footer and the end-of-stream marker.
/// `name` is the extent file name recorded in the embedded descriptor. Returns bytes written.
pub fn write_vmdk_stream<W: Write>(
    disk: &dyn VirtualDisk,
    out: W,
    name: &str,
    progress: Progress,
) -> Result<u64> {
    let size = disk.size();
    let capacity = size.div_ceil(512);
    let desc = descriptor(capacity, name);
    // 20 sectors reserved for the descriptor, as VMware and qemu do, unless it needs more.
    let desc_sectors = (desc.len() as u64).div_ceil(512).max(20);
    let mut w = Counting { inner: out, pos: 0 };
    w.put(&sparse_header(capacity, desc_sectors, GD_AT_END))?;
    w.put(desc.as_bytes())?;
    let first_grain = overhead_sectors(desc_sectors) * 512;
    w.put(&vec![0u8; (first_grain - w.pos) as usize])?;

    let grains = size.div_ceil(GRAIN);
    let gts = grains.div_ceil(GT_ENTRIES);
    let mut gd = vec![0u32; gts as usize];
    let mut gt = vec![0u32; GT_ENTRIES as usize];
    let mut gt_index = 0u64;
    let mut gt_used = false;
    let ext = disk.allocated()?;
    let grains_per_chunk = CHUNK / GRAIN;

    let flush_gt =
        |w: &mut Counting<W>, gt: &mut Vec<u32>, idx: u64, gd: &mut Vec<u32>| -> Result<()> {
            w.marker(GT_ENTRIES * 4 / 512, MARKER_GT)?;
            gd[idx as usize] = sector32(w.sector())?;
            let bytes: Vec<u8> = gt.iter().flat_map(|e| e.to_le_bytes()).collect();
            w.put(&bytes)?;
            gt.fill(0);
            Ok(())
        };

    // Each chunk comes back as its grain records back to back in one buffer, with the grain
    // number and offset of each: one allocation per chunk, and the sink hands whole runs of
    // records to the output (a BufWriter passes writes larger than its buffer straight on).
    par::ordered_with(
        size.div_ceil(CHUNK),
        || (GrainCoder::new(), Vec::new()),
        |(coder, buf), c| -> Result<VmdkChunk> {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(size);
            let mut out = VmdkChunk {
                covered: end - start,
                grains: Vec::new(),
                data: Vec::new(),
            };
            if !overlaps(&ext, start, end) {
                return Ok(out);
            }
            buf.resize((end - start) as usize, 0);
            disk.read_at(buf, start)?;
            for (i, g) in buf.chunks(GRAIN as usize).enumerate() {
                if is_zero(g) {
                    continue;
                }
                let grain = c * grains_per_chunk + i as u64;
                if out.data.is_empty() {
                    // Room for every grain stored, the worst case once the fallback below
                    // applies; compressible grains leave most of it unused (never touched).
                    out.data
                        .reserve(buf.len() / GRAIN as usize * (GRAIN as usize + 512));
                }
                out.grains.push((grain, out.data.len()));
                coder.grain(grain * GRAIN / 512, g, &mut out.data)?;
            }
            Ok(out)
        },
        |_, chunk| {
            let mut run = 0;
            while run < chunk.grains.len() {
                let idx = chunk.grains[run].0 / GT_ENTRIES;
                if idx != gt_index {
                    if gt_used {
                        flush_gt(&mut w, &mut gt, gt_index, &mut gd)?;
                    }
                    gt_index = idx;
                    gt_used = false;
                }
                // The records of this chunk that belong to the current grain table.
                let base = chunk.grains[run].1;
                let mut stop = run;
                while stop < chunk.grains.len() && chunk.grains[stop].0 / GT_ENTRIES == idx {
                    let (grain, off) = chunk.grains[stop];
                    gt[(grain % GT_ENTRIES) as usize] =
                        sector32(w.sector() + (off - base) as u64 / 512)?;
                    stop += 1;
                }
                let data_end = chunk.grains.get(stop).map_or(chunk.data.len(), |g| g.1);
                gt_used = true;
                w.put(&chunk.data[base..data_end])?;
                run = stop;
            }
            progress(chunk.covered);
            Ok(())
        },
    )?;
    if gt_used {
        flush_gt(&mut w, &mut gt, gt_index, &mut gd)?;
    }
    let gd_bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
    w.marker((gd_bytes.len() as u64).div_ceil(512), MARKER_GD)?;
    let gd_sector = w.sector();
    w.put(&gd_bytes)?;
    w.pad_sector()?;
    w.marker(1, MARKER_FOOTER)?;
    w.put(&sparse_header(capacity, desc_sectors, gd_sector))?;
    w.marker(0, MARKER_EOS)?;
    w.inner.flush()?;
    Ok(w.pos)
}

fn sector32(s: u64) -> Result<u32> {
    u32::try_from(s).map_err(|_| DiskError::Unsupported {
        format: "vmdk",
        detail: "output larger than 2 TiB of compressed data".into(),
    })
}

const QCOW2_CLUSTER_BITS: u32 = 16;
const QCOW2_COPIED: u64 = 1 << 63;

/// Writes the virtual disk as a qcow2 (version 3) image: 64 KiB clusters, zero clusters left
/// unallocated, every table with a reference count of one so `qemu-img check` finds it clean.
/// Data clusters come first, then L2 tables, L1 table and refcount structures; the header is
/// written last, so an interrupted write leaves no image that looks valid.
pub fn write_qcow2(disk: &dyn VirtualDisk, path: &Path, progress: Progress) -> Result<()> {
    write_qcow2_with_clusters(disk, path, QCOW2_CLUSTER_BITS, progress)
}

/// [`write_qcow2`] with another cluster size, 2^`cluster_bits` bytes (9 to 21).
pub fn write_qcow2_with_clusters(
    disk: &dyn VirtualDisk,
    path: &Path,
    cluster_bits: u32,
    progress: Progress,
) -> Result<()> {
    if !(9..=21).contains(&cluster_bits) {
        return Err(DiskError::Unsupported {
            format: "qcow2",
            detail: format!("cluster_bits {cluster_bits} outside 9..=21"),
        });
    }
    let cs = 1u64 << cluster_bits;
    let size = disk.size();
    let clusters = size.div_ceil(cs);
    let l2_entries = cs / 8;
    let l1_size = clusters.div_ceil(l2_entries).max(1);
    let file = File::create(path).map_err(io_err(path))?;
    let ext = disk.allocated()?;
    let mut l2: Vec<Option<Vec<u64>>> = vec![None; l1_size as usize];
    let mut pos = cs; // cluster 0 is the header
    let clusters_per_chunk = CHUNK / cs;
    par::ordered(
        size.div_ceil(CHUNK),
        |c| -> Result<ChunkOut> {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(size);
            let mut out = Vec::new();
            if overlaps(&ext, start, end) {
                let mut buf = vec![0u8; (end - start) as usize];
                disk.read_at(&mut buf, start)?;
                for (i, piece) in buf.chunks(cs as usize).enumerate() {
                    if !is_zero(piece) {
                        let mut cl = piece.to_vec();
                        cl.resize(cs as usize, 0);
                        out.push((c * clusters_per_chunk + i as u64, cl));
                    }
                }
            }
            Ok((end - start, out))
        },
        |_, (n, clusters)| {
            for (vc, data) in clusters {
                write_all_at(&file, &data, pos).map_err(io_err(path))?;
                let t = l2[(vc / l2_entries) as usize]
                    .get_or_insert_with(|| vec![0; l2_entries as usize]);
                t[(vc % l2_entries) as usize] = pos | QCOW2_COPIED;
                pos += cs;
            }
            progress(n);
            Ok(())
        },
    )?;
    let mut l1 = vec![0u64; l1_size as usize];
    for (i, t) in l2.iter().enumerate() {
        if let Some(t) = t {
            let bytes: Vec<u8> = t.iter().flat_map(|e| e.to_be_bytes()).collect();
            write_all_at(&file, &bytes, pos).map_err(io_err(path))?;
            l1[i] = pos | QCOW2_COPIED;
            pos += cs;
        }
    }
    let l1_offset = pos;
    let l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
    write_all_at(&file, &l1_bytes, pos).map_err(io_err(path))?;
    pos += (l1_bytes.len() as u64).div_ceil(cs) * cs;

    // Refcount blocks (16-bit counts, 32768 per block) must also count themselves and the
    // refcount table: grow both until they cover every cluster.
    let used = pos / cs;
    let per_block = cs / 2;
    let (mut blocks, mut table) = (1u64, 1u64);
    loop {
        let total = used + blocks + table;
        let nb = total.div_ceil(per_block);
        let nt = (nb * 8).div_ceil(cs);
        if nb == blocks && nt == table {
            break;
        }
        (blocks, table) = (nb, nt);
    }
    let total = used + blocks + table;
    let table_offset = pos;
    let first_block = pos + table * cs;
    let table_bytes: Vec<u8> = (0..blocks)
        .flat_map(|b| (first_block + b * cs).to_be_bytes())
        .collect();
    write_all_at(&file, &table_bytes, table_offset).map_err(io_err(path))?;
    let mut counts = vec![0u8; (blocks * cs) as usize];
    for c in 0..total {
        counts[(c * 2) as usize..(c * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
    }
    write_all_at(&file, &counts, first_block).map_err(io_err(path))?;
    file.set_len(total * cs).map_err(io_err(path))?;

    let mut h = vec![0u8; 112];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    h[48..56].copy_from_slice(&table_offset.to_be_bytes());
    h[56..60].copy_from_slice(&(table as u32).to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order: 16-bit
    h[100..104].copy_from_slice(&104u32.to_be_bytes()); // header length; extensions end at 104
    write_all_at(&file, &h, 0).map_err(io_err(path))?;
    Ok(())
}
