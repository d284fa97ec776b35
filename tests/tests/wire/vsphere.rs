//! The connector's `[vsphere]` source end to end against a vCenter simulator (govmomi's vcsim,
//! HTTPS with its own CA): the catalog lists the VMs with their folder paths, each run reads a
//! snapshot of the VM through datastore file access, and every AMI's disk is compared byte
//! for byte with the VM's disk at the run's point in time. No run leaves a snapshot behind:
//! not a completed one, not one whose read failed, not a crashed attempt's (removed by the next
//! run), and a deleted job's FORGET_JOB removes what is left.

use aws_sdk_sms::types::ReplicationRunState;
use tern_acceptance::TestServer;
use tern_connector::vsphere::soap::{self, MoRef, Session};
use tern_connector::vsphere::{run as vsphere_run, VsphereSource};
use tern_test_support::qemu::make_raw;
use tern_test_support::vcsim::{Vcsim, VM0};

use super::{
    assert_image, create_job, delete_and_forget, files_ending, only_server, run_over, run_to_end,
    source_agent, start_run,
};

const MIB: u64 = 1 << 20;
const DISK_MIB: u64 = 24;

fn source(sim: &Vcsim) -> VsphereSource {
    VsphereSource {
        url: sim.url.clone(),
        username: tern_test_support::vcsim::USER.into(),
        password: Some(tern_test_support::vcsim::PASSWORD.into()),
        password_env: None,
        ca_file: Some(sim.ca_file.clone()),
        insecure: false,
        vms: vec![VM0.into()],
        applications_from_folders: false,
        quiesce: false,
        changed_blocks: Default::default(),
    }
}

/// The names of the VM's snapshots, asked of the simulator with the connector's own (blocking)
/// client.
fn snapshots(sim: &Vcsim, vm: &str) -> Vec<String> {
    tokio::task::block_in_place(|| snapshot_names(sim, vm))
}

fn snapshot_names(sim: &Vcsim, vm: &str) -> Vec<String> {
    let session = Session::login(&source(sim)).unwrap();
    let names = vsphere_run::snapshots(&session, &MoRef::new("VirtualMachine", vm))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    session.logout();
    names
}

/// Takes snapshot `name` of VM `vm_id`, as a run that crashed after taking it would leave it.
fn leave_snapshot(sim: &Vcsim, vm_id: &str, name: &str) {
    tokio::task::block_in_place(|| {
        let session = Session::login(&source(sim)).unwrap();
        let vm = MoRef::new("VirtualMachine", vm_id);
        vsphere_run::take_snapshot(&session, &vm, name, false).unwrap();
        session.logout();
    });
}

/// Creates folder `name` in the VM's folder and moves the VM into it, as an administrator would.
fn move_into_folder(sim: &Vcsim, vm_name: &str, name: &str) {
    let session = Session::login(&source(sim)).unwrap();
    let vm = vsphere_run::vms(&session, &[vm_name.into()]).unwrap()[0]
        .moref
        .clone();
    let vm = MoRef::new("VirtualMachine", &vm);
    let parent = session.properties(&vm, &["parent"]).unwrap();
    let parent = soap::value_moref(parent.prop("parent").unwrap()).unwrap();
    let made = session
        .invoke("CreateFolder", &parent, &format!("<name>{name}</name>"))
        .unwrap();
    let folder = soap::answer_moref(&made).unwrap();
    let list = format!("<list type=\"VirtualMachine\">{}</list>", vm.value);
    session
        .invoke_task(
            "MoveIntoFolder_Task",
            &folder,
            &list,
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    session.logout();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vsphere_vm_is_listed_and_replicated_from_a_snapshot_per_run() {
    let sim = Vcsim::start(DISK_MIB, true);
    let scratch = tempfile::tempdir().unwrap();
    let mut bytes = make_raw(&scratch.path().join("src.raw"), DISK_MIB * MIB, 11);
    sim.write_disk(VM0, &bytes);
    // The VM sits in folder web-tier: with applications_from_folders that is its application.
    tokio::task::block_in_place(|| move_into_folder(&sim, VM0, "web-tier"));

    let mut config = tern_acceptance::Config::default();
    config.limits.on_demand_runs_per_window = 10;
    let server = TestServer::start_with(config).await;
    let toml = format!(
        "{}applications_from_folders = true\n",
        sim.source_toml(&[VM0])
    );
    let (mut agent, config) = source_agent(&server, "vs", &toml).await;
    let c = &server.client;

    // The catalog: the one VM the glob selects, by its managed object id, with its folder path.
    let listed = only_server(&server, &mut agent).await;
    let vm = listed.vm_server().unwrap();
    assert_eq!(vm.vm_name(), Some(VM0));
    assert_eq!(
        vm.vm_server_address().and_then(|a| a.vm_manager_id()),
        Some("vsphere-vs")
    );
    let vm_id = vm
        .vm_server_address()
        .and_then(|a| a.vm_id())
        .unwrap()
        .to_string();
    assert!(vm_id.starts_with("vm-"), "{vm_id}");
    assert_eq!(
        vm.vm_path(),
        Some(format!("/DC0/vm/web-tier/{VM0}").as_str())
    );
    assert_eq!(
        vm.vm_manager_type(),
        Some(&aws_sdk_sms::types::VmManagerType::VSphere)
    );
    let server_id = listed.server_id().unwrap().to_string();
    // ImportAppCatalog makes the folder an application holding the VM.
    c.import_app_catalog().send().await.unwrap();
    let apps = c.list_apps().send().await.unwrap();
    assert_eq!(apps.apps().len(), 1, "{apps:?}");
    assert_eq!(apps.apps()[0].name(), Some("web-tier"));
    assert_eq!(apps.apps()[0].total_servers(), Some(1));
    let job_id = create_job(c, &server_id).await;

    // The seed: the disk as it is; the run's snapshot is gone once read.
    let seed = run_to_end(&server, &mut agent, &job_id, None).await;
    assert_image(&server, "the VM's disk", &seed, &bytes);
    assert_eq!(snapshots(&sim, &vm_id), Vec::<String>::new());

    // The guest writes; the next run reads only the areas vSphere's changed block tracking
    // reports since the seed's change id.
    for (offset, len, byte) in [(2 * MIB + 512, 300 * 1024, 0x5au8), (20 * MIB, MIB, 0)] {
        sim.write_at(VM0, offset, &vec![byte; len as usize]);
        bytes[offset as usize..(offset + len) as usize].fill(byte);
    }
    let served = sim.bytes_served();
    let run_id = start_run(c, &job_id).await;
    let second = run_to_end(&server, &mut agent, &job_id, Some(&run_id)).await;
    let message = second.status_message().unwrap_or_default();
    assert!(
        message.starts_with("Completed: ami-") && !message.contains("whole disk"),
        "the incremental run used changed block tracking: {message}"
    );
    assert_image(&server, "the VM's disk", &second, &bytes);
    // What the run read: the three 512 KiB blocks the written areas touch, nothing else.
    assert_eq!(sim.bytes_served() - served, 3 * 512 * 1024);
    agent.poll_once().await.unwrap();
    let state = config.parent().unwrap().join("state");
    assert_eq!(
        files_ending(&state, ".obj"),
        Vec::<std::path::PathBuf>::new()
    );

    // Tracking reset behind Tern's back: the kept change id is refused, and the run compares
    // every block instead, saying why, and is still exact.
    sim.reset_tracking();
    sim.write_at(VM0, 11 * MIB, &[0x77; 8192]);
    bytes[11 * MIB as usize..11 * MIB as usize + 8192].fill(0x77);
    let served = sim.bytes_served();
    let run_id = start_run(c, &job_id).await;
    let reset = run_to_end(&server, &mut agent, &job_id, Some(&run_id)).await;
    let message = reset.status_message().unwrap_or_default();
    assert!(
        message.contains("whole disk") && message.contains("tracking reset"),
        "{message}"
    );
    assert_image(&server, "the VM's disk", &reset, &bytes);
    assert_eq!(sim.bytes_served() - served, DISK_MIB * MIB);

    // vCenter refuses the snapshot: the run fails naming the VM and the refusal.
    sim.refuse_snapshots(&vm_id, true);
    let run_id = start_run(c, &job_id).await;
    let refused = run_over(&server, &mut agent, &job_id, Some(&run_id)).await;
    assert_eq!(refused.state(), Some(&ReplicationRunState::Failed));
    let message = refused.status_message().unwrap_or_default();
    assert!(
        message.contains(&vm_id) && message.contains("SnapshotDisabled"),
        "{message}"
    );
    sim.refuse_snapshots(&vm_id, false);

    // A flat extent shorter than its descriptor: the run fails naming the disk, and the
    // snapshot it took is removed anyway.
    let flat = sim.flat(VM0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&flat)
        .unwrap()
        .set_len(DISK_MIB * MIB / 2)
        .unwrap();
    let run_id = start_run(c, &job_id).await;
    let failed = run_over(&server, &mut agent, &job_id, Some(&run_id)).await;
    assert_eq!(failed.state(), Some(&ReplicationRunState::Failed));
    let message = failed.status_message().unwrap_or_default();
    assert!(
        message.contains(&vm_id) && message.contains("disk1-flat.vmdk"),
        "{message}"
    );
    assert_eq!(snapshots(&sim, &vm_id), Vec::<String>::new());

    // Repaired, and a snapshot a crashed attempt left behind: the next run removes it first and
    // is exact.
    sim.write_at(VM0, 0, &bytes);
    leave_snapshot(&sim, &vm_id, &format!("tern-{job_id}-crashed"));
    assert_eq!(snapshots(&sim, &vm_id), [format!("tern-{job_id}-crashed")]);
    sim.write_at(VM0, 7 * MIB, &[0xc3; 4096]);
    bytes[7 * MIB as usize..7 * MIB as usize + 4096].fill(0xc3);
    let run_id = start_run(c, &job_id).await;
    let third = run_to_end(&server, &mut agent, &job_id, Some(&run_id)).await;
    assert_image(&server, "the VM's disk", &third, &bytes);
    assert_eq!(snapshots(&sim, &vm_id), Vec::<String>::new());

    // Deleted, with a snapshot of the job left behind: FORGET_JOB removes it, and nothing of
    // the job is left in the connector's state.
    leave_snapshot(&sim, &vm_id, &format!("tern-{job_id}-left"));
    delete_and_forget(&server, &mut agent, &job_id).await;
    assert_eq!(snapshots(&sim, &vm_id), Vec::<String>::new());
    assert!(!state.join("jobs").join(&job_id).exists());
    server.shutdown().await;
}

#[test]
fn a_vsphere_source_names_what_is_wrong_with_its_connection() {
    let sim = Vcsim::start(1, false);
    let good = source(&sim);
    let wrong_password = VsphereSource {
        password: Some("not-the-password".into()),
        ..good.clone()
    };
    let e = Session::login(&wrong_password).err().unwrap().to_string();
    assert!(e.contains("refused the login of tern"), "{e}");
    // Without the CA file the simulator's certificate is not trusted.
    let no_ca = VsphereSource {
        ca_file: None,
        ..good.clone()
    };
    let e = Session::login(&no_ca).err().unwrap().to_string();
    assert!(
        e.contains("cannot reach vSphere") && e.contains("ca_file"),
        "{e}"
    );
    // An unknown VM in a run: named, with what to do.
    let session = Session::login(&good).unwrap();
    let vms = vsphere_run::vms(&session, &[]).unwrap();
    assert_eq!(vms.len(), 2, "{vms:?}");
    assert!(vms
        .iter()
        .all(|v| v.disks.len() == 1 && v.disks[0].capacity_bytes == MIB));
    assert!(vms.iter().all(|v| v.datacenter.as_deref() == Some("DC0")));
    session.logout();
}
