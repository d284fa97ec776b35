//! Source disks: raw files of 512 KiB blocks, about half of them random data, the rest zero,
//! changed in place between runs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const BLOCK: u64 = 512 * 1024;

/// SplitMix64: reproducible random data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes a raw disk of `blocks` blocks, every other block random data. Returns the bytes of
/// data written.
pub fn create(path: &Path, blocks: u64, rng: &mut Rng) -> u64 {
    let f = File::create(path).expect("disk file");
    f.set_len(blocks * BLOCK).expect("disk size");
    let mut buf = vec![0u8; BLOCK as usize];
    let mut data = 0;
    for b in (0..blocks).step_by(2) {
        rng.fill(&mut buf);
        f.write_all_at(&buf, b * BLOCK).expect("disk write");
        data += BLOCK;
    }
    f.sync_all().expect("disk sync");
    data
}

/// Overwrites `count` distinct blocks with new random data and zeroes two more. Returns the
/// number of blocks changed.
pub fn change(path: &Path, blocks: u64, count: u64, rng: &mut Rng) -> u64 {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("disk file");
    let count = count.min(blocks.saturating_sub(2));
    // A random start and a stride coprime to `blocks` (odd and not sharing a factor) picks
    // distinct blocks.
    let start = rng.next_u64() % blocks;
    let mut stride = (rng.next_u64() % blocks) | 1;
    while gcd(stride, blocks) != 1 {
        stride += 2;
    }
    let mut buf = vec![0u8; BLOCK as usize];
    let pick = |i: u64| (start + i * stride) % blocks;
    for i in 0..count {
        rng.fill(&mut buf);
        f.write_all_at(&buf, pick(i) * BLOCK).expect("disk write");
    }
    let zero = vec![0u8; BLOCK as usize];
    for i in count..count + 2 {
        f.write_all_at(&zero, pick(i) * BLOCK).expect("disk write");
    }
    f.sync_all().expect("disk sync");
    count + 2
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Whether two files hold the same bytes; the first difference otherwise.
pub fn first_difference(a: &Path, b: &Path) -> Option<String> {
    let (x, y) = (
        std::fs::read(a).expect("read"),
        std::fs::read(b).expect("read"),
    );
    if x.len() != y.len() {
        return Some(format!("{} bytes against {}", x.len(), y.len()));
    }
    x.iter().zip(&y).position(|(p, q)| p != q).map(|at| {
        format!(
            "first difference at byte {at} (block {})",
            at as u64 / BLOCK
        )
    })
}
