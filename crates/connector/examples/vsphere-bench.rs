//! An incremental run of a vSphere VM's disk through datastore file access: the changed-block-
//! tracking path (QueryChangedDiskAreas since the seed's change id, ranged reads of the blocks
//! it touches) next to the full comparison (every block read and compared with the seed's
//! block map) and next to a peer, `curl` downloading the flat extent whole (what a copy tool
//! without change tracking moves). Not a test: it prints its figures.
//!
//! `CARGO_TARGET_DIR=$HOME/.cache/tern/target-release cargo run --release -p tern-connector
//! --example vsphere-bench -- [SIZE_MIB] [CHANGED_PERCENT] [RUNS]` (default 1024 MiB, 1 %, 3).
//! Needs the vCenter simulator (`scripts/vcsim.sh`) and `curl`; about twice the disk's size in
//! free space under /tmp.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use tern_connector::vsphere::disk::DatastoreDisk;
use tern_connector::vsphere::run::{
    self, changed_areas, remove_snapshot, snapshot_disks, take_snapshot,
};
use tern_connector::vsphere::soap::{MoRef, Session};
use tern_connector::vsphere::VsphereSource;
use tern_disk::blockmap::{BlockMap, BLOCK_SIZE};
use tern_disk::{delta, VirtualDisk};
use tern_test_support::vcsim::{Vcsim, VM0};

const MIB: u64 = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size_mib: u64 = args.first().map_or(1024, |a| a.parse().expect("SIZE_MIB"));
    let percent: f64 = args
        .get(1)
        .map_or(1.0, |a| a.parse().expect("CHANGED_PERCENT"));
    let runs: usize = args.get(2).map_or(3, |a| a.parse().expect("RUNS"));
    let size = size_mib * MIB;
    let sim = Vcsim::start(size_mib, true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    // Half the blocks hold data, as a used disk does.
    let mut content = vec![0u8; size as usize];
    for block in content.chunks_mut(BLOCK_SIZE as usize) {
        if rng.random_bool(0.5) {
            rng.fill(block);
        }
    }
    sim.write_disk(VM0, &content);
    drop(content);
    // The `[vsphere]` section a user would write for this simulator.
    let source: VsphereSource = toml::from_str::<toml::Table>(&sim.source_toml(&[VM0]))
        .and_then(|mut t| t.remove("vsphere").expect("a [vsphere] table").try_into())
        .expect("the simulator's [vsphere] section parses");
    let session = Arc::new(Session::login(&source).expect("login"));
    let info = run::vms(&session, &source.vms)
        .expect("inventory")
        .remove(0);
    let vm = MoRef::new("VirtualMachine", &info.moref);
    let dc = info.datacenter.clone().expect("datacenter");
    let blocks = size / BLOCK_SIZE as u64;
    let changed_blocks = ((blocks as f64 * percent / 100.0).round() as u64).max(1);
    println!(
        "vSphere incremental run: {size_mib} MiB disk, {changed_blocks} of {blocks} blocks changed ({percent} %), {runs} runs, over HTTPS to vcsim on 127.0.0.1"
    );
    for r in 0..runs {
        // The seed's point in time: its snapshot gives the change id and the block map.
        let seed = take_snapshot(&session, &vm, "bench-seed", false).unwrap();
        let disk = snapshot_disks(&session, &seed).unwrap().remove(0);
        let base_id = disk.change_id.clone().expect("tracking is on");
        let reader = DatastoreDisk::open(session.clone(), &dc, &disk).unwrap();
        let old = BlockMap::compute(&reader as &dyn VirtualDisk, &tern_disk::no_progress).unwrap();
        remove_snapshot(&session, &seed).unwrap();

        // The guest changes 1 % of its blocks, anywhere.
        let mut written = std::collections::BTreeSet::new();
        while (written.len() as u64) < changed_blocks {
            written.insert(rng.random_range(0..blocks));
        }
        let mut data = vec![0u8; BLOCK_SIZE as usize];
        for &b in &written {
            rng.fill(&mut data[..]);
            sim.write_at(VM0, b * BLOCK_SIZE as u64, &data);
        }
        let snap = take_snapshot(&session, &vm, "bench-run", false).unwrap();
        let disk = snapshot_disks(&session, &snap).unwrap().remove(0);

        // Changed block tracking.
        // The query's time is the simulator's (it compares the disk with its copy to answer, where
        // vCenter reads its change-tracking file): timed apart from Tern's reads.
        let t = Instant::now();
        let areas = changed_areas(&session, &vm, &snap, &disk, &base_id).unwrap();
        let query_time = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let cbt_disk = DatastoreDisk::open(session.clone(), &dc, &disk).unwrap();
        let mut cbt_delta = Vec::new();
        let found = tern_connector::changed::extents_delta(
            |at, buf| cbt_disk.read_at(buf, at),
            size,
            &areas,
            &old,
            &mut cbt_delta,
            &tern_disk::no_progress,
        )
        .unwrap();
        let cbt_time = t.elapsed().as_secs_f64();
        let cbt_read = cbt_disk.bytes_read();

        // The full comparison.
        let t = Instant::now();
        let full_disk = DatastoreDisk::open(session.clone(), &dc, &disk).unwrap();
        let mut full_delta = Vec::new();
        let summary = delta::create(
            &old,
            &full_disk as &dyn VirtualDisk,
            &mut full_delta,
            &tern_disk::no_progress,
        )
        .unwrap();
        let full_time = t.elapsed().as_secs_f64();
        let full_read = full_disk.bytes_read();
        assert_eq!(
            summary.changed_blocks, changed_blocks,
            "the comparison found every changed block"
        );
        assert_eq!(
            found.summary.changed_blocks, changed_blocks,
            "tracking found every changed block"
        );
        assert_eq!(cbt_delta, full_delta, "both paths make the same delta");

        // The peer: curl downloading the flat extent whole.
        let url = session.datastore_url(&dc, "LocalDS_0", &format!("{VM0}/disk1-flat.vmdk"));
        let t = Instant::now();
        let out = Command::new("curl")
            .args([
                "-sS",
                "--cacert",
                &sim.ca_file.to_string_lossy(),
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                url.as_str(),
            ])
            .output()
            .expect("curl");
        let curl_time = t.elapsed().as_secs_f64();
        let curl_read: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("curl's size");
        remove_snapshot(&session, &snap).unwrap();

        let changed_bytes = changed_blocks * BLOCK_SIZE as u64;
        println!(
            "run {}: tracking read {:.1} MiB ({:.3}x the changed bytes) in {cbt_time:.3} s (+ {query_time:.3} s the simulator took to answer QueryChangedDiskAreas); full comparison read {:.1} MiB in {full_time:.3} s ({:.1}x the tracking read's time); curl whole-disk download {:.1} MiB in {curl_time:.3} s ({:.1}x)",
            r + 1,
            cbt_read as f64 / MIB as f64,
            cbt_read as f64 / changed_bytes as f64,
            full_read as f64 / MIB as f64,
            full_time / cbt_time,
            curl_read as f64 / MIB as f64,
            curl_time / cbt_time,
        );
    }
    session.logout();
}
