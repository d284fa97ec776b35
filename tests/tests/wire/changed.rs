//! The real connector on a qcow2 disk: an incremental run whose dirty bitmap was deleted behind
//! Tern's back reads the whole disk instead, and the run's statusMessage says so and why.

use tern_acceptance::TestServer;
use tern_test_support::qemu::{qemu_img, qemu_io};

use super::{create_job, run_to_end};

/// A connector over one VM with an 8 MiB qcow2 disk (2 MiB written), the catalog imported and
/// a replication job made for it (its seed not run yet): the agent, the job and the disk.
async fn qcow2_job(
    server: &TestServer,
    name: &str,
) -> (tern_connector::Agent, String, std::path::PathBuf) {
    let disk = server.scratch().join(format!("{name}.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "8M"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x11 0 2M",
        disk.to_str().unwrap(),
    ]);
    let inventory = format!(
        "vm_manager_id = \"vc-{name}\"\nvm_manager_type = \"VSPHERE\"\n\n[[vms]]\nid = \"vm-q\"\nname = \"q\"\nos_type = \"LINUX\"\ndisks = [{:?}]\n",
        disk.display().to_string()
    );
    let mut agent = server.connector_agent(name, &inventory).await;
    agent.run_once().await.unwrap();
    let c = &server.client;
    c.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();
    let servers = c.get_servers().send().await.unwrap();
    let server_id = servers.server_list()[0].server_id().unwrap().to_string();
    let job_id = create_job(c, &server_id).await;
    (agent, job_id, disk)
}

/// The dirty bitmaps of a qcow2 image, by name.
/// The names of the persistent bitmaps in qcow2 image `image`.
pub(super) fn bitmap_names(image: &str) -> Vec<String> {
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", image])).unwrap();
    info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|x| x["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_use_the_bitmap_says_why_in_its_status_message() {
    let server = TestServer::start().await;
    let (mut agent, job_id, disk) = qcow2_job(&server, "changed").await;
    let d = disk.to_str().unwrap();
    let c = &server.client;
    let seed = run_to_end(&server, &mut agent, &job_id, None).await;
    let seed_message = seed.status_message().unwrap_or_default();
    assert!(!seed_message.contains("whole disk"), "{seed_message}");

    // Every bitmap Tern added is removed behind its back; the disk changes.
    let names = bitmap_names(d);
    assert!(!names.is_empty(), "the seed left no bitmap: {names:?}");
    for n in &names {
        qemu_img(&["bitmap", "--remove", d, n]);
    }
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x22 4M 512k", d]);
    let run_id = c
        .start_on_demand_replication_run()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap()
        .replication_run_id()
        .unwrap()
        .to_string();
    let run = run_to_end(&server, &mut agent, &job_id, Some(&run_id)).await;
    let message = run.status_message().unwrap_or_default();
    assert!(
        message.starts_with("Completed: ami-")
            && message.contains("disk 0: changes found by reading the whole disk")
            && message.contains(&names[0]),
        "{message}"
    );
    server.shutdown().await;
}

/// A deleted job leaves nothing in the source's image: the connector is sent FORGET_JOB and
/// removes the job's dirty bitmaps from the qcow2 file and its folder from its state directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_job_leaves_no_bitmap_in_the_image() {
    let server = TestServer::start().await;
    let (mut agent, job_id, disk) = qcow2_job(&server, "forget").await;
    let d = disk.to_str().unwrap();
    run_to_end(&server, &mut agent, &job_id, None).await;
    agent.poll_once().await.unwrap();
    let bitmaps = || bitmap_names(d);
    assert!(
        bitmaps().iter().any(|b| b.contains(&job_id)),
        "the run kept a bitmap for the next one: {:?}",
        bitmaps()
    );
    let job_dir = server.scratch().join("forget/state/jobs").join(&job_id);
    assert!(job_dir.is_dir(), "{}", job_dir.display());

    super::delete_and_forget(&server, &mut agent, &job_id).await;
    assert_eq!(bitmaps(), Vec::<String>::new());
    assert!(!job_dir.exists(), "{}", job_dir.display());
    // The item is done: the next poll hands out nothing.
    let report = agent.poll_once().await.unwrap();
    assert_eq!(report.replication.jobs_forgotten, 0, "{report:?}");
    server.shutdown().await;
}
