//! `qemu-img` and `qemu-io`, tools nobody here wrote, to make test inputs and check outputs; and
//! random disks whose blocks a test changes on purpose.

use std::path::Path;
use std::process::Command;

use rand::{Rng, SeedableRng};

use crate::run;

/// Tern's block size (the block map's and EBS's): 512 KiB.
pub const BLOCK: u64 = 512 * 1024;

/// Runs `qemu-img ARGS`; panics with its output when it fails.
pub fn qemu_img(args: &[&str]) -> String {
    run(Command::new("qemu-img").args(args))
}

/// Runs `qemu-io ARGS`; panics with its output when it fails.
pub fn qemu_io(args: &[&str]) -> String {
    run(Command::new("qemu-io").args(args))
}

/// A path as the `&str` a command line takes (test paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 test path")
}

/// Converts a raw image to `fmt` (`qcow2`, `vmdk`, `vpc`, …) with extra `opts` (`-o …`).
pub fn convert(raw: &Path, out: &Path, fmt: &str, opts: &[&str]) {
    let mut args = vec!["convert", "-f", "raw", "-O", fmt];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[p(raw), p(out)]);
    qemu_img(&args);
}

/// A stream-optimized VMDK of `raw` made by qemu-img, next to it.
pub fn stream_vmdk(raw: &Path) -> std::path::PathBuf {
    let out = raw.with_extension("vmdk");
    convert(raw, &out, "vmdk", &["-o", "subformat=streamOptimized"]);
    out
}

/// Writes a raw image of `size` bytes at `path` and returns its bytes: random data in scattered
/// runs (some block-aligned, some not), a run of text, and holes everywhere else.
pub fn make_raw(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size as usize];
    let mut at = 0u64;
    while at < size {
        let len = rng.random_range(64 * 1024..3 * BLOCK).min(size - at);
        if rng.random_bool(0.45) {
            rng.fill(&mut data[at as usize..(at + len) as usize]);
        }
        at += len + rng.random_range(0..2 * BLOCK);
    }
    let text = b"Tern replicates this text block. ".repeat(4096);
    let t = (size / 3) as usize;
    let n = text.len().min(data.len() - t);
    data[t..t + n].copy_from_slice(&text[..n]);
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    data
}

/// Overwrites `blocks` (block indexes) with fresh random bytes and `zeroed` with zeros.
pub fn change_blocks(data: &mut [u8], blocks: &[u64], zeroed: &[u64], seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for b in blocks {
        let s = (b * BLOCK) as usize;
        rng.fill(&mut data[s..s + BLOCK as usize]);
    }
    for b in zeroed {
        let s = (b * BLOCK) as usize;
        data[s..s + BLOCK as usize].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_disk_round_trips_through_qemu_img() {
        let dir = std::env::temp_dir().join(format!("tern-test-support-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("d.raw");
        let mut data = make_raw(&raw, 4 * BLOCK, 7);
        assert!(data.iter().any(|b| *b != 0), "the disk holds data");
        change_blocks(&mut data, &[1], &[2], 8);
        assert!(data[2 * BLOCK as usize..3 * BLOCK as usize]
            .iter()
            .all(|b| *b == 0));
        std::fs::write(&raw, &data).unwrap();
        let q = dir.join("d.qcow2");
        convert(&raw, &q, "qcow2", &[]);
        let back = dir.join("back.raw");
        qemu_img(&["convert", "-O", "raw", p(&q), p(&back)]);
        assert_eq!(std::fs::read(&back).unwrap(), data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
