//! The real connector on a qcow2 disk: an incremental run whose dirty bitmap was deleted behind
//! Tern's back reads the whole disk instead, and the run's statusMessage says so and why.

use aws_sdk_sms::types::LicenseType;
use aws_smithy_types::DateTime;
use tern_acceptance::{now_secs, TestServer};
use tern_test_support::qemu::{qemu_img, qemu_io};

use super::run_to_end;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_use_the_bitmap_says_why_in_its_status_message() {
    let server = TestServer::start().await;
    let disk = server.scratch().join("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "8M"]);
    let d = disk.to_str().unwrap();
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x11 0 2M", d]);
    let inventory = format!(
        "vm_manager_id = \"vc-changed\"\nvm_manager_type = \"VSPHERE\"\n\n[[vms]]\nid = \"vm-q\"\nname = \"q\"\nos_type = \"LINUX\"\ndisks = [{:?}]\n",
        disk.display().to_string()
    );
    let mut agent = server.connector_agent("changed", &inventory).await;
    agent.run_once().await.unwrap();
    let c = &server.client;
    c.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();
    let servers = c.get_servers().send().await.unwrap();
    let server_id = servers.server_list()[0].server_id().unwrap().to_string();
    let job_id = c
        .create_replication_job()
        .server_id(&server_id)
        .seed_replication_time(DateTime::from_secs(now_secs()))
        .frequency(12)
        .license_type(LicenseType::Byol)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_string();
    let seed = run_to_end(&server, &mut agent, &job_id, None).await;
    let seed_message = seed.status_message().unwrap_or_default();
    assert!(!seed_message.contains("whole disk"), "{seed_message}");

    // Every bitmap Tern added is removed behind its back; the disk changes.
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&disk)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let names: Vec<String> = info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|x| x["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(!names.is_empty(), "the seed left no bitmap: {info}");
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
    let disk = server.scratch().join("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "8M"]);
    let d = disk.to_str().unwrap();
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x11 0 1M", d]);
    let inventory = format!(
        "vm_manager_id = \"vc-forget\"\n\n[[vms]]\nid = \"vm-f\"\nname = \"f\"\nos_type = \"LINUX\"\ndisks = [{:?}]\n",
        disk.display().to_string()
    );
    let mut agent = server.connector_agent("forget", &inventory).await;
    agent.run_once().await.unwrap();
    let c = &server.client;
    c.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();
    let servers = c.get_servers().send().await.unwrap();
    let server_id = servers.server_list()[0].server_id().unwrap().to_string();
    let job_id = c
        .create_replication_job()
        .server_id(&server_id)
        .seed_replication_time(DateTime::from_secs(now_secs()))
        .frequency(12)
        .license_type(LicenseType::Byol)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_string();
    run_to_end(&server, &mut agent, &job_id, None).await;
    agent.poll_once().await.unwrap();
    let bitmaps = || {
        let out = qemu_img(&["info", "--output=json", d]);
        let info: serde_json::Value = serde_json::from_str(&out).unwrap();
        info["format-specific"]["data"]["bitmaps"]
            .as_array()
            .map(|b| {
                b.iter()
                    .map(|x| x["name"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert!(
        bitmaps().iter().any(|b| b.contains(&job_id)),
        "the run kept a bitmap for the next one: {:?}",
        bitmaps()
    );
    let job_dir = server.scratch().join("forget/state/jobs").join(&job_id);
    assert!(job_dir.is_dir(), "{}", job_dir.display());

    c.delete_replication_job()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    let report = agent.poll_once().await.unwrap();
    assert_eq!(report.replication.jobs_forgotten, 1, "{report:?}");
    assert_eq!(bitmaps(), Vec::<String>::new());
    assert!(!job_dir.exists(), "{}", job_dir.display());
    // The item is done: the next poll hands out nothing.
    let report = agent.poll_once().await.unwrap();
    assert_eq!(report.replication.jobs_forgotten, 0, "{report:?}");
    server.shutdown().await;
}
