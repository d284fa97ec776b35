//! Throughput of tern-disk next to qemu-img and sha256sum, in one run on one image.
//!
//! `cargo run --release -p tern-disk --example bench -- [SIZE_GIB] [DIR]`
//!
//! Builds a raw image of SIZE_GIB (default 4) with about half of it allocated (half of that
//! random, half compressible text), then times:
//! * the per-block digests on one core (SHA-256, BLAKE3, xxh3), in memory;
//! * raw → stream-optimized VMDK: ours vs `qemu-img convert -O vmdk -o subformat=streamOptimized`;
//! * stream-optimized VMDK → raw: ours vs `qemu-img convert -O raw` (same input, qemu's VMDK);
//! * block map (SHA-256 per 512 KiB block, every core) vs `sha256sum` of the raw image;
//! * stream-optimized VMDK → raw again on one kind of content at a time (all random, all text,
//!   sparse: 5 % random), each a quarter of SIZE_GIB, since inflate speed depends on what was
//!   compressed.
//!
//! Rates are virtual-disk bytes per second. Not a test: run it by hand on an idle machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use sha2::Digest;
use tern_disk::{blockmap::BlockMap, no_progress, open, write, OpenOptions};

const MIB: u64 = 1 << 20;

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn run(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let st = cmd.status().expect("spawn");
    assert!(st.success(), "{cmd:?} failed");
    t.elapsed()
}

fn make_image(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create");
    f.set_len(size).expect("set_len");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let text: Vec<u8> = b"Lorem ipsum dolor sit amet, tern migrates servers; 0123456789 "
        .iter()
        .cycle()
        .take(MIB as usize)
        .copied()
        .collect();
    let mut buf = vec![0u8; MIB as usize];
    // Allocate every other 8 MiB region; within it alternate random and text megabytes.
    for region in (0..size / (8 * MIB)).step_by(2) {
        for m in 0..8 {
            let at = region * 8 * MIB + m * MIB;
            let data: &[u8] = if m % 2 == 0 {
                rng.fill_bytes(&mut buf);
                &buf
            } else {
                &text
            };
            std::os::unix::fs::FileExt::write_all_at(&f, data, at).expect("write");
        }
    }
    f.sync_all().expect("sync");
}

/// A raw image of `size` bytes holding one kind of content.
fn make_kind(path: &Path, size: u64, kind: &str) {
    let f = std::fs::File::create(path).expect("create");
    f.set_len(size).expect("set_len");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let text: Vec<u8> = b"Lorem ipsum dolor sit amet, tern migrates servers; 0123456789 "
        .iter()
        .cycle()
        .take(MIB as usize)
        .copied()
        .collect();
    let mut buf = vec![0u8; MIB as usize];
    for m in 0..size / MIB {
        let data: &[u8] = match kind {
            "random" => {
                rng.fill_bytes(&mut buf);
                &buf
            }
            "text" => &text,
            // 5 % of the megabytes random, the rest holes.
            _ if m % 20 == 0 => {
                rng.fill_bytes(&mut buf);
                &buf
            }
            _ => continue,
        };
        std::os::unix::fs::FileExt::write_all_at(&f, data, m * MIB).expect("write");
    }
    f.sync_all().expect("sync");
}

/// qemu-img's stream-optimized VMDK of `kind` content read back to raw by tern and by qemu-img.
fn read_case(dir: &Path, size: u64, kind: &str) {
    let raw = dir.join(format!("{kind}.raw"));
    make_kind(&raw, size, kind);
    let vmdk = dir.join(format!("{kind}.vmdk"));
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(&raw)
        .arg(&vmdk));
    let ours = dir.join(format!("{kind}.ours.raw"));
    let (_, d_ours) = timed(|| {
        let disk = open(&vmdk, &OpenOptions::default()).expect("open vmdk");
        write::write_raw(disk.as_ref(), &ours, &no_progress).expect("write raw")
    });
    let theirs = dir.join(format!("{kind}.qemu.raw"));
    let d_qemu = run(Command::new("qemu-img")
        .args(["convert", "-f", "vmdk", "-O", "raw"])
        .arg(&vmdk)
        .arg(&theirs));
    let (o, q) = (rate(size, d_ours), rate(size, d_qemu));
    println!(
        "stream VMDK -> raw, {kind} content ({} MiB, VMDK {} MiB): tern {o:.0} MB/s, qemu-img {q:.0} MB/s, ratio {:.2}x",
        size / MIB,
        std::fs::metadata(&vmdk).map_or(0, |m| m.len() / MIB),
        o / q
    );
    for p in [&raw, &vmdk, &ours, &theirs] {
        let _ = std::fs::remove_file(p);
    }
}

/// Digests on one core, in memory (so the disk does not hide the difference); best of three.
fn digests() {
    let mut data = vec![0u8; 256 * MIB as usize];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data);
    let block = 512 * 1024;
    let best = |f: &dyn Fn(&[u8]) -> u8| {
        (0..3)
            .map(|_| timed(|| data.chunks(block).map(f).fold(0u8, |a, b| a ^ b)).1)
            .min()
            .map(|d| rate(data.len() as u64, d))
            .unwrap_or_default()
    };
    let sha = best(&|c| sha2::Sha256::digest(c)[0]);
    let b3 = best(&|c| blake3::hash(c).as_bytes()[0]);
    let xx = best(&|c| xxhash_rust::xxh3::xxh3_128(c) as u8);
    println!("digest per 512 KiB block, one core: SHA-256 {sha:.0} MB/s, BLAKE3 {b3:.0} MB/s, xxh3-128 {xx:.0} MB/s");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("digests") {
        digests();
        return;
    }
    let gib: u64 = args.get(1).map_or(4, |s| s.parse().expect("SIZE_GIB"));
    let dir = args.get(2).map_or_else(
        || std::env::temp_dir().join("tern-disk-bench"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("mkdir");
    let size = gib << 30;
    let raw = dir.join("src.raw");
    println!(
        "image: {} GiB raw, about half allocated, in {}",
        gib,
        dir.display()
    );
    make_image(&raw, size);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cores: {threads}");

    digests();

    let src = open(&raw, &OpenOptions::default()).expect("open raw");

    // raw -> stream-optimized VMDK
    let ours_vmdk = dir.join("ours.vmdk");
    let (_, d_ours) = timed(|| {
        let f = std::fs::File::create(&ours_vmdk).expect("create");
        write::write_vmdk_stream(
            src.as_ref(),
            std::io::BufWriter::with_capacity(1 << 20, f),
            "ours.vmdk",
            &no_progress,
        )
        .expect("write vmdk")
    });
    let qemu_vmdk = dir.join("qemu.vmdk");
    let d_qemu = run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(&raw)
        .arg(&qemu_vmdk));
    let (o, q) = (rate(size, d_ours), rate(size, d_qemu));
    println!(
        "raw -> stream VMDK: tern {o:.0} MB/s ({} MiB), qemu-img {q:.0} MB/s ({} MiB), ratio {:.1}x",
        std::fs::metadata(&ours_vmdk).unwrap().len() / MIB,
        std::fs::metadata(&qemu_vmdk).unwrap().len() / MIB,
        o / q
    );

    // stream-optimized VMDK -> raw, both from qemu's VMDK
    let ours_raw = dir.join("ours.raw");
    let (_, d_ours) = timed(|| {
        let disk = open(&qemu_vmdk, &OpenOptions::default()).expect("open vmdk");
        write::write_raw(disk.as_ref(), &ours_raw, &no_progress).expect("write raw")
    });
    let qemu_raw = dir.join("qemu.raw");
    let d_qemu = run(Command::new("qemu-img")
        .args(["convert", "-f", "vmdk", "-O", "raw"])
        .arg(&qemu_vmdk)
        .arg(&qemu_raw));
    let (o, q) = (rate(size, d_ours), rate(size, d_qemu));
    println!(
        "stream VMDK -> raw: tern {o:.0} MB/s, qemu-img {q:.0} MB/s, ratio {:.1}x",
        o / q
    );

    // Block map vs sha256sum (which hashes the whole file, one core).
    let (map, d_ours) = timed(|| BlockMap::compute(src.as_ref(), &no_progress).expect("block map"));
    let d_sum = run(Command::new("sha256sum")
        .arg(&raw)
        .stdout(std::process::Stdio::null()));
    let (o, q) = (rate(size, d_ours), rate(size, d_sum));
    println!(
        "block map ({} blocks, {} non-zero): tern {o:.0} MB/s, sha256sum {q:.0} MB/s, ratio {:.1}x",
        map.blocks.len(),
        map.nonzero_blocks(),
        o / q
    );
    // Same, from the stream-optimized VMDK (the connector hashes whatever format it reads).
    let vm = open(&qemu_vmdk, &OpenOptions::default()).expect("open vmdk");
    let (_, d) = timed(|| BlockMap::compute(vm.as_ref(), &no_progress).expect("block map"));
    println!("block map from stream VMDK: tern {:.0} MB/s", rate(size, d));

    for p in [&raw, &ours_vmdk, &qemu_vmdk, &ours_raw, &qemu_raw] {
        let _ = std::fs::remove_file(p);
    }

    for kind in ["random", "text", "sparse"] {
        read_case(&dir, (size / 4).max(256 * MIB), kind);
    }
}
