//! Incremental change discovery on a qcow2 disk: the dirty-bitmap path (NBD block status and
//! reads of the dirty blocks through `qemu-nbd`) next to the full read and comparison with the
//! kept block map, each with the image's pages evicted from the page cache first and then
//! cached. Not a test: it prints its figures.
//!
//! `CARGO_TARGET_DIR=$HOME/.cache/tern/target-release cargo run --release -p tern-connector
//! --example bitmap-bench -- [SIZE_GIB] [CHANGED_PERCENT]` (default 4 GiB, 1 %). Needs
//! `qemu-img`, `qemu-io` and `qemu-nbd`; about twice the disk's allocated size in free space
//! under the system's temporary folder.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use tern_connector::changed::{bitmap_delta, Counting, Export};
use tern_disk::blockmap::{BlockMap, BLOCK_SIZE};
use tern_disk::{delta, OpenOptions};

fn sh(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops the file's pages from the page cache (`posix_fadvise(DONTNEED)` after a sync: no root
/// needed), so the next read comes from the disk.
fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise on {}", path.display());
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gib: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let percent: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let size = gib << 30;
    let bs = BLOCK_SIZE as u64;
    let blocks = size / bs;
    let dir = std::env::temp_dir().join(format!("tern-bitmap-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.qcow2");
    sh(
        "qemu-img",
        &["create", "-f", "qcow2", p(&img), &size.to_string()],
    );

    // Half allocated: 64 MiB of data in every 128 MiB.
    let chunk = 64u64 << 20;
    let mut writes = Vec::new();
    let mut at = 0;
    while at < size {
        writes.push(format!("write -P 0x5a {at} {chunk}"));
        at += 2 * chunk;
    }
    let mut io_args: Vec<&str> = Vec::new();
    for w in &writes {
        io_args.extend(["-c", w.as_str()]);
    }
    io_args.push(p(&img));
    sh("qemu-io", &io_args);

    // The seed: the kept block map, and the bitmap added before it was read.
    let bitmap = "tern-bench";
    sh("qemu-img", &["bitmap", "--add", p(&img), bitmap]);
    let disk = tern_disk::open(&img, &OpenOptions::default()).unwrap();
    let old = BlockMap::compute(&*disk, &tern_disk::no_progress).unwrap();
    drop(disk);

    // Change `percent` % of the 512 KiB blocks, chosen at random.
    let want = ((blocks as f64) * percent / 100.0).round().max(1.0) as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut chosen = std::collections::BTreeSet::new();
    while chosen.len() < want {
        chosen.insert(rng.random_range(0..blocks));
    }
    let writes: Vec<String> = chosen
        .iter()
        .map(|b| format!("write -P 0xab {} {bs}", b * bs))
        .collect();
    let mut io_args: Vec<&str> = Vec::new();
    for w in &writes {
        io_args.extend(["-c", w.as_str()]);
    }
    io_args.push(p(&img));
    sh("qemu-io", &io_args);
    let changed_bytes = want as u64 * bs;

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("disk {gib} GiB qcow2, half allocated; {want} of {blocks} blocks changed ({percent} %), {:.1} MiB", mib(changed_bytes));
    // Each path twice: with the image's pages evicted from the page cache first (as after a
    // day of other work: what a scheduled run meets), then with them cached (just read).
    for cache in ["cold", "hot"] {
        // Today's path: read every allocated block and compare.
        if cache == "cold" {
            evict(&img);
        }
        let t = Instant::now();
        let disk = tern_disk::open(&img, &OpenOptions::default()).unwrap();
        let counted = Counting::new(&*disk);
        let mut full_delta = Vec::new();
        let full = delta::create(&old, &counted, &mut full_delta, &tern_disk::no_progress).unwrap();
        let full_time = t.elapsed();
        let full_read = counted.bytes_read();
        drop(disk);

        // The bitmap path: export, block status, read the dirty blocks.
        if cache == "cold" {
            evict(&img);
        }
        let t = Instant::now();
        let (export, mut client) = Export::start(&img, bitmap, &dir).unwrap();
        let mut bitmap_out = Vec::new();
        let found = bitmap_delta(
            &mut client,
            &tern_nbd::dirty_bitmap_context(bitmap),
            &old,
            &mut bitmap_out,
            &tern_disk::no_progress,
        )
        .unwrap();
        let stats = client.stats();
        let bitmap_read = stats.bytes_read;
        client.disconnect().unwrap();
        drop(export);
        let bitmap_time = t.elapsed();

        assert_eq!(
            full.changed_blocks, want as u64,
            "the comparison finds every changed block"
        );
        assert!(
            bitmap_out == full_delta,
            "the bitmap path made a different delta"
        );
        println!("{cache} page cache:");
        println!(
            "  full read + compare: read {:>9.1} MiB in {:>8.3} s",
            mib(full_read),
            full_time.as_secs_f64()
        );
        println!(
            "  dirty bitmap:        read {:>9.1} MiB in {:>8.3} s ({} dirty blocks, {} block status requests)",
            mib(bitmap_read),
            bitmap_time.as_secs_f64(),
            found.dirty_blocks,
            stats.block_status_requests
        );
        println!(
            "  bitmap bytes read / changed bytes: {:.3}; full / bitmap bytes: {:.1}x; full / bitmap time: {:.1}x; identical deltas: yes",
            bitmap_read as f64 / changed_bytes as f64,
            full_read as f64 / bitmap_read.max(1) as f64,
            full_time.as_secs_f64() / bitmap_time.as_secs_f64()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
