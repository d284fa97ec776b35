//! The `libvirt` source against a real libvirt (feature `libvirt`): a private session daemon
//! (`libvirtd`, unprivileged in a user namespace when the tests run as root, its runtime,
//! config and cache directories in a temporary directory, stopped when the test ends) running a
//! domain under the boot kit's QEMU 7.2 (TCG, no OS: its disk is written through the QEMU
//! monitor with `qemu-io`). Every run's image is checked against a model of the disk kept by
//! the test (the bytes written and when), so "point in time" is checked, not assumed.

use std::fs::File;
use std::path::{Path, PathBuf};

use tern_connector::changed::{ChangedBlocks, Changes};
use tern_connector::libvirt::{
    self, checkpoint_name, commit, replicate, Firmware, Hypervisor, LibvirtError, RunSpec,
};
use tern_disk::blockmap::BlockMap;
use tern_disk::{delta, OpenOptions};
use tern_local::guest::BootKit;
use tern_test_support::libvirt::Daemon;
use tern_test_support::qemu::{convert, make_raw, BLOCK};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;
const DOMAIN: &str = "tern-it";
const JOB: &str = "sms-job-00000000000000001";

/// The disk as the test wrote it, and the seed and deltas so far.
struct Model {
    bytes: Vec<u8>,
    dir: PathBuf,
    /// Raw images of the runs so far (the seed's VMDK applied with every delta).
    image: PathBuf,
    maps: Vec<BlockMap>,
}

impl Model {
    fn write(&mut self, d: &Daemon, offset: u64, len: u64, byte: u8) {
        d.write(DOMAIN, offset, len, byte);
        self.bytes[offset as usize..(offset + len) as usize].fill(byte);
    }

    fn spec<'a>(&'a self, run: &'a str, base: Option<&'a str>, mode: ChangedBlocks) -> RunSpec<'a> {
        RunSpec {
            job_id: JOB,
            run_id: run,
            domain: DOMAIN,
            base_run: base,
            mode,
            work_dir: &self.dir,
            progress: &tern_disk::no_progress,
        }
    }

    /// Checks that `object` (seed VMDK or delta) gives the disk `expected` at the run's point.
    fn check(&mut self, object: &Path, expected: &[u8], what: &str) {
        let next = self.dir.join("next.raw");
        if self.maps.is_empty() {
            let seed = tern_disk::open(object, &OpenOptions::default()).unwrap();
            tern_disk::write::write_raw(&*seed, &next, &tern_disk::no_progress).unwrap();
        } else {
            let base = tern_disk::open(&self.image, &OpenOptions::default()).unwrap();
            let mut r = delta::DeltaReader::new(File::open(object).unwrap()).unwrap();
            delta::apply(&*base, &mut r, &next, &tern_disk::no_progress).unwrap();
        }
        std::fs::rename(&next, &self.image).unwrap();
        let got = std::fs::read(&self.image).unwrap();
        assert_eq!(got.len(), expected.len(), "{what}: image size");
        if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
            panic!(
                "{what}: the image differs from the disk at the run's point in time at byte {at}"
            );
        }
    }
}

/// Runs `run` and checks its object against the model's bytes at the moment the backup began;
/// `during` writes into the disk after the backup began (before its read), which the run must
/// not see and the next run must.
fn run_and_check(
    d: &Daemon,
    hv: &Hypervisor,
    m: &mut Model,
    run: &str,
    base: Option<&str>,
    during: Option<(u64, u64, u8)>,
) -> libvirt::DiskOutput {
    let expected = m.bytes.clone();
    let object = m.dir.join(format!("{run}.obj"));
    let old = m.maps.last().cloned().map(|x| vec![x]);
    let mut wrote = None;
    let spec = m.spec(run, base, ChangedBlocks::Auto);
    let out = replicate(hv, &spec, old.as_deref(), |_, target| {
        assert_eq!(target, "vda");
        if let Some((off, len, byte)) = during {
            d.write(DOMAIN, off, len, byte);
            wrote = Some((off, len, byte));
        }
        File::create(&object)
    })
    .unwrap_or_else(|e| panic!("run {run}: {e}"));
    if let Some((off, len, byte)) = wrote {
        m.bytes[off as usize..(off + len) as usize].fill(byte);
    }
    let mut out = out.into_iter().next().unwrap();
    m.check(&object, &expected, run);
    m.maps.push(std::mem::replace(
        &mut out.map,
        BlockMap {
            block_size: 0,
            disk_size: 0,
            blocks: Vec::new(),
        },
    ));
    assert!(!hv.has_job(DOMAIN).unwrap(), "run {run} left a backup job");
    out
}

fn checkpoints(hv: &Hypervisor) -> Vec<String> {
    let mut c = hv.checkpoints(DOMAIN).unwrap();
    c.sort();
    c
}

/// A private libvirtd whose domains run the boot kit's QEMU.
fn kit_daemon() -> Daemon {
    let kit = BootKit::find(None)
        .expect("boot kit")
        .expect("no boot kit: build it with scripts/boot-kit.sh (its QEMU runs the test domain)");
    let qemu = kit
        .qemu
        .clone()
        .expect("the boot kit has no qemu-system-x86_64; rebuild it with scripts/boot-kit.sh");
    Daemon::start(&qemu, &kit.firmware)
}

#[test]
fn a_running_domain_is_seeded_and_replicated_from_its_checkpoints() {
    let d = kit_daemon();
    let work = d.path().join("w");
    let raw = d.path().join("src.raw");
    let bytes = make_raw(&raw, SIZE, 21);
    let disk = d.path().join("vda.qcow2");
    convert(&raw, &disk, "qcow2", &[]);
    d.start_domain(DOMAIN, &disk);
    let hv = Hypervisor::open(&d.uri).unwrap();

    // Inventory: what the domain is, filtered by name.
    let inv = hv.inventory(&[]).unwrap();
    assert_eq!(inv.len(), 1);
    let dom = &inv[0];
    assert_eq!(dom.name, DOMAIN);
    assert_eq!(dom.uuid.len(), 36, "{}", dom.uuid);
    assert_eq!((dom.vcpus, dom.memory_bytes), (2, 64 * MIB));
    assert_eq!(dom.firmware, Firmware::Bios);
    assert!(dom.running);
    assert_eq!(dom.disks.len(), 1);
    assert_eq!(dom.disks[0].target, "vda");
    assert_eq!(dom.disks[0].format.as_deref(), Some("qcow2"));
    assert_eq!(dom.disks[0].virtual_size, Some(SIZE));
    assert_eq!(dom.nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
    let vm = libvirt::inventory_vm(dom);
    assert_eq!(vm.vm_id, dom.uuid);
    assert_eq!(vm.disks[0].path, format!("libvirt:{DOMAIN}/vda"));
    assert!(hv.inventory(&["web*".into()]).unwrap().is_empty());
    assert_eq!(hv.inventory(&["tern-*".into()]).unwrap().len(), 1);

    let mut m = Model {
        bytes,
        dir: work.clone(),
        image: work.join("image.raw"),
        maps: Vec::new(),
    };
    std::fs::create_dir_all(&work).unwrap();
    let runs: Vec<String> = (1..=6)
        .map(|i| format!("sms-run-0000000000000000{i}"))
        .collect();
    let cp = |i: usize| checkpoint_name(JOB, &runs[i]);

    // Seed: the allocated extents only; a write made after the backup began is not in it.
    let s = run_and_check(
        &d,
        &hv,
        &mut m,
        &runs[0],
        None,
        Some((5 * MIB, 64 * 1024, 0x5e)),
    );
    assert_eq!(s.changes, Changes::Seed);
    assert!(
        s.bytes_read < SIZE,
        "the seed read {} bytes of a sparse {SIZE}",
        s.bytes_read
    );
    assert_eq!(
        commit(&hv, DOMAIN, JOB, &runs[0]).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(checkpoints(&hv), [cp(0)]);

    // Writes while the domain runs; the incremental run reads only the dirty blocks.
    m.write(&d, 20 * MIB + 4096, 300 * 1024, 0xab);
    m.write(&d, 40 * MIB, 2 * BLOCK, 0xcd);
    let r = run_and_check(
        &d,
        &hv,
        &mut m,
        &runs[1],
        Some(&runs[0]),
        Some((7 * MIB, 4096, 0x77)),
    );
    let Changes::Bitmap {
        bitmap,
        dirty_blocks,
    } = &r.changes
    else {
        panic!("run 2 did not use the checkpoint: {:?}", r.changes)
    };
    assert_eq!(bitmap, &cp(0));
    // The write during the seed's read (block 10), 300 KiB at 20 MiB + 4 KiB (block 40) and
    // 1 MiB at 40 MiB (blocks 80-81); not the write made during this run's own read.
    assert_eq!(*dirty_blocks, 4);
    let changed = r.delta.as_ref().unwrap().changed_blocks * BLOCK;
    assert!(changed > 0);
    assert!(
        r.bytes_read as f64 <= 1.05 * changed as f64,
        "read {} bytes for {changed} changed",
        r.bytes_read
    );
    assert_eq!(commit(&hv, DOMAIN, JOB, &runs[1]).unwrap(), [cp(0)]);
    assert_eq!(checkpoints(&hv), [cp(1)]);

    // A checkpoint deleted behind Tern's back: the full comparison, said so, still exact.
    m.write(&d, 33 * MIB, 8192, 0x11);
    d.virsh(&["checkpoint-delete", DOMAIN, &cp(1)]);
    let strict = m.spec(&runs[2], Some(&runs[1]), ChangedBlocks::Bitmap);
    let old = vec![m.maps.last().unwrap().clone()];
    match replicate(&hv, &strict, Some(&old), |_, _| {
        File::create(work.join("never"))
    }) {
        Err(LibvirtError::NoBitmap { reason, .. }) => {
            assert!(reason.contains("missing"), "{reason}")
        }
        other => panic!("changed_blocks = bitmap without the checkpoint: {other:?}"),
    }
    assert!(!work.join("never").exists());
    assert!(!hv.has_job(DOMAIN).unwrap());
    let r = run_and_check(&d, &hv, &mut m, &runs[2], Some(&runs[1]), None);
    match &r.changes {
        Changes::Compare {
            fallback: Some(why),
        } => {
            assert!(why.contains(&cp(1)) && why.contains("missing"), "{why}")
        }
        other => panic!("run 3 should compare: {other:?}"),
    }
    // The comparison reads every allocated extent (the disk is about half allocated), not
    // only the dirty blocks.
    assert!(
        r.bytes_read >= SIZE / 4 && r.bytes_read <= SIZE,
        "the comparison read {} bytes",
        r.bytes_read
    );
    commit(&hv, DOMAIN, JOB, &runs[2]).unwrap();
    assert_eq!(checkpoints(&hv), [cp(2)]);

    // A run that fails after its backup began leaves no job and no checkpoint of its own;
    // the next run is still correct (the failed run's checkpoint is merged into the base).
    m.write(&d, 50 * MIB, 4096, 0x22);
    let spec = m.spec(&runs[3], Some(&runs[2]), ChangedBlocks::Auto);
    let old = vec![m.maps.last().unwrap().clone()];
    let e = replicate(&hv, &spec, Some(&old), |_, _| -> std::io::Result<File> {
        Err(std::io::Error::other("disk full"))
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("disk full") && e.to_string().contains("vda"),
        "{e}"
    );
    assert!(
        !hv.has_job(DOMAIN).unwrap(),
        "the failed run left its backup job"
    );
    assert_eq!(
        checkpoints(&hv),
        [cp(2)],
        "the failed run left its checkpoint"
    );

    let r = run_and_check(&d, &hv, &mut m, &runs[4], Some(&runs[2]), None);
    assert!(
        matches!(r.changes, Changes::Bitmap { .. }),
        "{:?}",
        r.changes
    );
    commit(&hv, DOMAIN, JOB, &runs[4]).unwrap();
    assert_eq!(checkpoints(&hv), [cp(4)]);
    assert!(
        hv.domain(DOMAIN).unwrap().running,
        "the domain kept running"
    );
}

/// An NBD server that goes away mid-run, then a domain that stops while its run reads: each
/// run fails naming the domain and the disk, and once the domain runs again the next run from the last confirmed checkpoint is still exact.
/// The failed run's checkpoint cannot be deleted while the domain is shut off (libvirt 9.0:
/// "cannot delete checkpoint for inactive domain"; logged), so it stays until the next
/// confirmation removes it with the other superseded ones.
#[test]
fn a_dropped_export_or_a_stopped_domain_fails_the_run_and_the_next_run_is_exact() {
    let d = kit_daemon();
    let work = d.path().join("w");
    std::fs::create_dir_all(&work).unwrap();
    let raw = d.path().join("src.raw");
    let bytes = make_raw(&raw, SIZE, 22);
    let disk = d.path().join("vda.qcow2");
    convert(&raw, &disk, "qcow2", &[]);
    d.start_domain(DOMAIN, &disk);
    let hv = Hypervisor::open(&d.uri).unwrap();
    let mut m = Model {
        bytes,
        dir: work.clone(),
        image: work.join("image.raw"),
        maps: Vec::new(),
    };
    let runs: Vec<String> = (1..=4)
        .map(|i| format!("sms-run-0000000000000000{i}"))
        .collect();
    run_and_check(&d, &hv, &mut m, &runs[0], None, None);
    commit(&hv, DOMAIN, JOB, &runs[0]).unwrap();

    // The NBD server goes away under the run (its backup job aborted from outside): the run
    // fails naming the domain (and the disk, when a read was cut), leaves no job and no
    // checkpoint of its own.
    m.write(&d, 9 * MIB, 64 * 1024, 0x42);
    let spec = m.spec(&runs[3], Some(&runs[0]), ChangedBlocks::Auto);
    let old = vec![m.maps.last().unwrap().clone()];
    let e = replicate(&hv, &spec, Some(&old), |_, _| {
        d.virsh(&["domjobabort", DOMAIN]);
        File::create(work.join("cut"))
    })
    .unwrap_err();
    match &e {
        LibvirtError::Read { target, .. } => assert_eq!(target, "vda"),
        // The reads got through before the export went away: ending the job then fails,
        // and the run with it (no run completes whose backup job was not its own to end).
        LibvirtError::Domain { detail, .. } => {
            assert!(detail.contains("ending the backup job"), "{e}")
        }
        other => panic!("a run whose backup was aborted: {other}"),
    }
    assert!(e.to_string().contains(DOMAIN), "{e}");
    assert!(!hv.has_job(DOMAIN).unwrap());
    assert_eq!(checkpoints(&hv), [checkpoint_name(JOB, &runs[0])]);

    let spec = m.spec(&runs[1], Some(&runs[0]), ChangedBlocks::Auto);
    let old = vec![m.maps.last().unwrap().clone()];
    let e = replicate(&hv, &spec, Some(&old), |_, _| {
        d.virsh(&["destroy", DOMAIN]);
        File::create(work.join("lost"))
    })
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(DOMAIN) && msg.contains("vda"), "{msg}");
    assert!(!hv.domain(DOMAIN).unwrap().running);

    d.virsh(&["start", DOMAIN]);
    // A backup job a crashed attempt left running (its socket in the job's work directory)
    // is ended by the next run instead of blocking it.
    let leftover = d.path().join("leftover.xml");
    let xml =
        tern_connector::libvirt::xml::backup_xml(&work.join("nbd.sock"), &work, &["vda"], None);
    std::fs::write(&leftover, xml).unwrap();
    d.virsh(&["backup-begin", DOMAIN, leftover.to_str().unwrap()]);
    assert!(hv.has_job(DOMAIN).unwrap());
    let left = checkpoints(&hv);
    assert!(left.contains(&checkpoint_name(JOB, &runs[0])), "{left:?}");
    assert!(left.len() <= 2, "{left:?}");
    let r = run_and_check(&d, &hv, &mut m, &runs[2], Some(&runs[0]), None);
    assert!(
        matches!(r.changes, Changes::Bitmap { .. }),
        "{:?}",
        r.changes
    );
    commit(&hv, DOMAIN, JOB, &runs[2]).unwrap();
    assert_eq!(checkpoints(&hv), [checkpoint_name(JOB, &runs[2])]);
}

/// A raw disk cannot have checkpoints: the seed still reads a consistent backup, an incremental
/// run compares the whole disk saying why (libvirt's refusal), still exact, and
/// `changed_blocks = "bitmap"` refuses the run.
#[test]
fn a_domain_without_checkpoints_falls_back_to_the_comparison_saying_why() {
    let d = kit_daemon();
    let work = d.path().join("w");
    std::fs::create_dir_all(&work).unwrap();
    let raw = d.path().join("vda.raw");
    let bytes = make_raw(&raw, SIZE, 23);
    d.start_domain(DOMAIN, &raw);
    let hv = Hypervisor::open(&d.uri).unwrap();
    assert_eq!(
        hv.domain(DOMAIN).unwrap().disks[0].format.as_deref(),
        Some("raw")
    );
    let mut m = Model {
        bytes,
        dir: work.clone(),
        image: work.join("image.raw"),
        maps: Vec::new(),
    };
    let runs: Vec<String> = (1..=3)
        .map(|i| format!("sms-run-0000000000000000{i}"))
        .collect();
    let s = run_and_check(&d, &hv, &mut m, &runs[0], None, Some((3 * MIB, 4096, 0x31)));
    assert_eq!(s.changes, Changes::Seed);
    assert!(checkpoints(&hv).is_empty());

    m.write(&d, 30 * MIB, 70 * 1024, 0x32);
    let strict = m.spec(&runs[1], Some(&runs[0]), ChangedBlocks::Bitmap);
    let old = vec![m.maps.last().unwrap().clone()];
    assert!(matches!(
        replicate(&hv, &strict, Some(&old), |_, _| File::create(
            work.join("never")
        )),
        Err(LibvirtError::NoBitmap { .. })
    ));
    let r = run_and_check(&d, &hv, &mut m, &runs[2], Some(&runs[0]), None);
    match &r.changes {
        Changes::Compare {
            fallback: Some(why),
        } => {
            assert!(why.contains("could not create a checkpoint"), "{why}")
        }
        other => panic!("a raw disk should compare: {other:?}"),
    }
    assert!(
        r.bytes_read >= s.bytes_read,
        "{} < {}",
        r.bytes_read,
        s.bytes_read
    );
    assert!(checkpoints(&hv).is_empty());
}

/// The agent's side: a run's backup is taken once. Its objects wait in the run's `prepared`
/// folder; another attempt of the run uploads the same objects (the same point in time, not a
/// second backup), and a run given up removes its checkpoint and objects.
#[test]
fn a_prepared_run_is_taken_once_and_given_up_cleanly() {
    use tern_connector::libvirt::{run, LibvirtSource};
    use tern_connector::replicate::{DiskSource, ObjectKind, ReplicationWork, Staging};

    let d = kit_daemon();
    let raw = d.path().join("src.raw");
    let bytes = make_raw(&raw, SIZE, 23);
    let disk = d.path().join("vda.qcow2");
    convert(&raw, &disk, "qcow2", &[]);
    d.start_domain(DOMAIN, &disk);
    let hv = Hypervisor::open(&d.uri).unwrap();
    let state = d.path().join("state");
    let source = LibvirtSource {
        uri: d.uri.clone(),
        domains: Vec::new(),
        changed_blocks: ChangedBlocks::Auto,
    };
    let run_id = "sms-run-00000000000000001";
    let work = ReplicationWork {
        job_id: JOB.into(),
        run_id: run_id.into(),
        server_id: "s-00000000000000001".into(),
        disks: vec![DiskSource::Libvirt {
            domain: DOMAIN.into(),
            target: "vda".into(),
        }],
        staging: Staging {
            bucket: "tern-staging".into(),
            prefix: "runs".into(),
        },
        seed: false,
    };

    let first = run::prepare(&source, &state, &work, DOMAIN, &tern_disk::no_progress)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.disks.len(), 1);
    let p = &first.disks[0];
    assert_eq!(
        (p.kind, p.base_run_id.as_deref()),
        (ObjectKind::SeedVmdk, None)
    );
    assert_eq!(p.what, format!("libvirt {DOMAIN}/vda"));
    assert_eq!((p.source_format.as_str(), p.virtual_size), ("qcow2", SIZE));
    assert_eq!(checkpoints(&hv), [checkpoint_name(JOB, run_id)]);
    let object = std::fs::read(&p.object).unwrap();

    // The disk changes; the run's next attempt still uploads the backup's instant.
    d.write(DOMAIN, MIB, 256 * 1024, 0x77);
    let again = run::prepare(&source, &state, &work, DOMAIN, &tern_disk::no_progress).unwrap();
    assert_eq!(again, first);
    assert_eq!(std::fs::read(&p.object).unwrap(), object);
    let image = d.path().join("seed.raw");
    let seed = tern_disk::open(&p.object, &OpenOptions::default()).unwrap();
    tern_disk::write::write_raw(&*seed, &image, &tern_disk::no_progress).unwrap();
    assert!(
        std::fs::read(&image).unwrap() == bytes,
        "the seed is the disk before the write"
    );

    // Given up: no checkpoint, no objects.
    run::give_up(&source, &state, JOB, run_id, DOMAIN);
    assert_eq!(checkpoints(&hv), Vec::<String>::new());
    assert!(!p.object.exists() && !p.map.exists());

    // A domain whose disks are not those of the work is refused, naming both.
    let mut two = work.clone();
    two.run_id = "sms-run-00000000000000002".into();
    two.disks.push(DiskSource::Libvirt {
        domain: DOMAIN.into(),
        target: "vdb".into(),
    });
    let e = run::prepare(&source, &state, &two, DOMAIN, &tern_disk::no_progress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[vda]") && e.contains("[vda, vdb]"), "{e}");
    assert_eq!(checkpoints(&hv), Vec::<String>::new());
}
