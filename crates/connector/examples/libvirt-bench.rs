//! An incremental run of a running libvirt domain (feature `libvirt`): the checkpoint path
//! (pull-mode backup, NBD block status of the checkpoint's bitmap, reads of the dirty blocks)
//! next to the full comparison over the same backup export and next to today's `files` source
//! reading the qcow2 file whole. Not a test: it prints its figures.
//!
//! `CARGO_TARGET_DIR=$HOME/.cache/tern/target-release cargo run --release -p tern-connector
//! --features libvirt --example libvirt-bench -- [SIZE_GIB] [CHANGED_PERCENT]` (default 4 GiB,
//! 1 %). Needs libvirt (see the crate README), `qemu-img`, `qemu-io` and the boot kit
//! (`scripts/boot-kit.sh`); about the disk's allocated size in free space under /tmp.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use tern_connector::changed::{ChangedBlocks, Changes, Counting};
use tern_connector::libvirt::{commit, replicate, Hypervisor, RunSpec};
use tern_disk::blockmap::BLOCK_SIZE;
use tern_disk::{delta, OpenOptions};
use tern_local::guest::BootKit;
use tern_test_support::libvirt::Daemon;

const DOMAIN: &str = "tern-bench";
const JOB: &str = "sms-job-00000000000000b01";

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

    let kit = BootKit::find(None)
        .expect("boot kit")
        .expect("no boot kit: build it with scripts/boot-kit.sh");
    let qemu = kit.qemu.clone().expect("the boot kit has no QEMU");
    let d = Daemon::start(&qemu, &kit.firmware);
    let dir = d.path().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let img = d.path().join("disk.qcow2");
    sh(
        "qemu-img",
        &["create", "-f", "qcow2", p(&img), &size.to_string()],
    );
    // Half allocated: 64 MiB of data in every 128 MiB.
    let chunk = 64u64 << 20;
    let writes: Vec<String> = (0..size)
        .step_by(2 * chunk as usize)
        .map(|at| format!("write -P 0x5a {at} {chunk}"))
        .collect();
    let mut io_args: Vec<&str> = Vec::new();
    for w in &writes {
        io_args.extend(["-c", w.as_str()]);
    }
    io_args.push(p(&img));
    sh("qemu-io", &io_args);
    d.start_domain(DOMAIN, &img);
    let hv = Hypervisor::open(&d.uri).unwrap();
    let spec = |run: &'static str, base: Option<&'static str>, mode| RunSpec {
        job_id: JOB,
        run_id: run,
        domain: DOMAIN,
        base_run: base,
        mode,
        work_dir: &dir,
        progress: &tern_disk::no_progress,
    };

    let t = Instant::now();
    let seed = replicate(
        &hv,
        &spec("sms-run-1", None, ChangedBlocks::Auto),
        None,
        |_, _| Ok(std::io::sink()),
    )
    .unwrap();
    let seed_time = t.elapsed();
    commit(&hv, DOMAIN, JOB, "sms-run-1").unwrap();
    let old = vec![seed[0].map.clone()];

    // Change `percent` % of the 512 KiB blocks, chosen at random, while the domain runs.
    let want = ((blocks as f64) * percent / 100.0).round().max(1.0) as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut chosen = std::collections::BTreeSet::new();
    while chosen.len() < want {
        chosen.insert(rng.random_range(0..blocks));
    }
    for b in &chosen {
        d.write(DOMAIN, b * bs, bs, 0xab);
    }
    let changed_bytes = want as u64 * bs;

    // The checkpoint path.
    let bitmap_delta = dir.join("bitmap.delta");
    let t = Instant::now();
    let inc = replicate(
        &hv,
        &spec("sms-run-2", Some("sms-run-1"), ChangedBlocks::Auto),
        Some(&old),
        |_, _| File::create(&bitmap_delta),
    )
    .unwrap();
    let inc_time = t.elapsed();
    assert!(
        matches!(inc[0].changes, Changes::Bitmap { .. }),
        "{:?}",
        inc[0].changes
    );

    // The full comparison over a backup export of the same point in time (no writes since).
    let full_delta = dir.join("full.delta");
    let t = Instant::now();
    let full = replicate(
        &hv,
        &spec("sms-run-3", None, ChangedBlocks::Compare),
        Some(&old),
        |_, _| File::create(&full_delta),
    )
    .unwrap();
    let full_time = t.elapsed();

    // Today's `files` source: the qcow2 file read whole and compared.
    let t = Instant::now();
    let disk = tern_disk::open(&img, &OpenOptions::default()).unwrap();
    let counted = Counting::new(&*disk);
    let files = delta::create(&old[0], &counted, std::io::sink(), &tern_disk::no_progress).unwrap();
    let files_time = t.elapsed();
    let files_read = counted.bytes_read();

    let same = std::fs::read(&bitmap_delta).unwrap() == std::fs::read(&full_delta).unwrap();
    assert!(same, "the checkpoint path made a different delta");
    assert_eq!(full[0].delta.as_ref().unwrap().changed_blocks, want as u64);
    assert_eq!(files.changed_blocks, want as u64);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "domain disk {gib} GiB qcow2, half allocated; {want} of {blocks} blocks changed ({percent} %), {:.1} MiB",
        mib(changed_bytes)
    );
    println!(
        "seed (base:allocation):        read {:>9.1} MiB in {:>8.3} s",
        mib(seed[0].bytes_read),
        seed_time.as_secs_f64()
    );
    println!(
        "files source, whole file:      read {:>9.1} MiB in {:>8.3} s",
        mib(files_read),
        files_time.as_secs_f64()
    );
    println!(
        "backup export, full compare:   read {:>9.1} MiB in {:>8.3} s",
        mib(full[0].bytes_read),
        full_time.as_secs_f64()
    );
    println!(
        "backup export, checkpoint:     read {:>9.1} MiB in {:>8.3} s",
        mib(inc[0].bytes_read),
        inc_time.as_secs_f64()
    );
    println!(
        "checkpoint bytes read / changed: {:.3}; time vs files source: {:.1}x faster, vs full compare over NBD: {:.1}x; identical deltas: yes",
        inc[0].bytes_read as f64 / changed_bytes as f64,
        files_time.as_secs_f64() / inc_time.as_secs_f64(),
        full_time.as_secs_f64() / inc_time.as_secs_f64()
    );
}
