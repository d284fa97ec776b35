//! The connector's `[libvirt]` source end to end (feature `libvirt`): a private libvirtd runs a
//! domain under the boot kit's QEMU; the connector reports it, and its runs are backups of the
//! running domain. Each AMI's root disk is checked against the disk as the test wrote it, the
//! checkpoints against what a confirmed run leaves; a shut-off domain is read from its image
//! file, and the next run after it starts again is exact.

use tern_acceptance::TestServer;
use tern_local::guest::BootKit;
use tern_test_support::libvirt::Daemon;
use tern_test_support::qemu::{convert, make_raw, p, qemu_io};

use super::{
    assert_image, create_job, delete_and_forget, files_ending, only_server, run_to_end,
    source_agent, start_run,
};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 32 * MIB;
const DOMAIN: &str = "tern-wire";

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

fn checkpoints(d: &Daemon) -> Vec<String> {
    let mut c: Vec<String> = d
        .virsh(&["checkpoint-list", DOMAIN, "--name"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    c.sort();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libvirt_domain_is_listed_and_replicated_through_its_backups() {
    let d = kit_daemon();
    let raw = d.path().join("src.raw");
    let mut bytes = make_raw(&raw, SIZE, 7);
    let disk = d.path().join("vda.qcow2");
    convert(&raw, &disk, "qcow2", &[]);
    d.start_domain(DOMAIN, &disk);
    let uuid = d.virsh(&["domuuid", DOMAIN]).trim().to_string();

    // Four runs in a row: more on-demand runs than SMS allows a day.
    let mut config = tern_acceptance::Config::default();
    config.limits.on_demand_runs_per_window = 10;
    let server = TestServer::start_with(config).await;
    let (mut agent, config) = source_agent(
        &server,
        "lv",
        &format!("[libvirt]\nuri = {:?}\ndomains = [\"tern-*\"]\n", d.uri),
    )
    .await;
    let c = &server.client;

    // The catalog: the domain, by UUID and name, with its disk inspected through its file.
    let listed = only_server(&server, &mut agent).await;
    let vm = listed.vm_server().unwrap();
    assert_eq!(vm.vm_name(), Some(DOMAIN));
    assert_eq!(
        vm.vm_server_address().and_then(|a| a.vm_id()),
        Some(uuid.as_str())
    );
    let server_id = listed.server_id().unwrap().to_string();

    let job_id = create_job(c, &server_id).await;

    // The seed: the disk as it is, and the run's checkpoint the base of the next.
    let seed = run_to_end(&server, &mut agent, &job_id, None).await;
    assert_image(&server, "the domain's disk", &seed, &bytes);
    let cp = |run: &aws_sdk_sms::types::ReplicationRun| {
        format!("tern-{job_id}-{}", run.replication_run_id().unwrap())
    };
    agent.poll_once().await.unwrap();
    assert_eq!(checkpoints(&d), [cp(&seed)]);

    // Writes while the domain runs; the next run reads its changes from the checkpoint.
    for (offset, len, byte) in [(3 * MIB + 512, 200 * 1024, 0xa1u8), (30 * MIB, MIB, 0)] {
        d.write(DOMAIN, offset, len, byte);
        bytes[offset as usize..(offset + len) as usize].fill(byte);
    }
    let run_id = start_run(c, &job_id).await;
    let second = run_to_end(&server, &mut agent, &job_id, Some(&run_id)).await;
    let message = second.status_message().unwrap_or_default();
    assert!(
        message.starts_with("Completed: ami-") && !message.contains("whole disk"),
        "the incremental run used the checkpoint: {message}"
    );
    assert_image(&server, "the domain's disk", &second, &bytes);
    // Confirmed: the seed's checkpoint is superseded; the run's objects are freed.
    agent.poll_once().await.unwrap();
    assert_eq!(checkpoints(&d), [cp(&second)]);
    let state = config.parent().unwrap().join("state");
    assert_eq!(
        files_ending(&state, ".obj"),
        Vec::<std::path::PathBuf>::new()
    );

    // The domain is shut off and its disk written offline: the run reads the image file whole
    // (there is no backup of a shut-off domain) and says so, and is exact.
    d.virsh(&["destroy", DOMAIN]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        &format!("write -P 0x5e {} 65536", 13 * MIB),
        p(&disk),
    ]);
    bytes[13 * MIB as usize..(13 * MIB + 65536) as usize].fill(0x5e);
    let run_id = start_run(c, &job_id).await;
    let offline = run_to_end(&server, &mut agent, &job_id, Some(&run_id)).await;
    let message = offline.status_message().unwrap_or_default();
    assert!(message.contains("shut off"), "{message}");
    assert_image(&server, "the shut-off domain's disk", &offline, &bytes);
    agent.poll_once().await.unwrap();

    // Started again and written: the next run is exact (compared whole, since the shut-off
    // run left no checkpoint to read changes from), and its checkpoint is the only one left.
    d.virsh(&["start", DOMAIN]);
    d.write(DOMAIN, 9 * MIB, 64 * 1024, 0x3c);
    bytes[9 * MIB as usize..(9 * MIB + 64 * 1024) as usize].fill(0x3c);
    let run_id = start_run(c, &job_id).await;
    let third = run_to_end(&server, &mut agent, &job_id, Some(&run_id)).await;
    assert_image(&server, "the domain's disk", &third, &bytes);
    agent.poll_once().await.unwrap();
    assert_eq!(checkpoints(&d), [cp(&third)]);

    // Shut off and deleted: the domain is left as it was before Tern, with no checkpoint of the
    // job and no bitmap of it in its image (libvirt deletes only the metadata of a shut-off
    // domain's checkpoints; the connector removes the bitmaps from the image itself).
    d.virsh(&["destroy", DOMAIN]);
    assert!(!super::changed::bitmap_names(p(&disk)).is_empty());
    delete_and_forget(&server, &mut agent, &job_id).await;
    assert_eq!(checkpoints(&d), Vec::<String>::new());
    assert_eq!(super::changed::bitmap_names(p(&disk)), Vec::<String>::new());
    assert!(!state.join("jobs").join(&job_id).exists());
    server.shutdown().await;
}
