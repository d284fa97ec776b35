//! `tern instances` on a local stack's records: listing with live state, a console, stopping
//! an instance's process (a stand-in process carrying the instance id on its command line, as
//! QEMU's `-name` does), and an unknown instance named in the error.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tern_local::launcher::{status, InstanceRecord, StackRecord};
use tern_test_support::poll::until;

fn tern(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("instances")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run tern")
}

fn ok(data: &std::path::Path, args: &[&str]) -> String {
    let out = tern(data, args);
    assert!(
        out.status.success(),
        "tern instances {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn instances_are_listed_read_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let stack_dir = data.join("instances/sms-app-0123456789abcdef0");
    let id = "i-0123456789abcdef0";
    let inst_dir = stack_dir.join(id);
    std::fs::create_dir_all(&inst_dir).unwrap();
    std::fs::write(
        inst_dir.join("console.log"),
        "SeaBIOS\r\nTERN-BOOT-MARKER\r\n",
    )
    .unwrap();
    // `sh -c CMD NAME`: NAME is $0, so the process's command line carries the instance id.
    let mut guest = Command::new("sh")
        .args(["-c", "sleep 60", id])
        .spawn()
        .unwrap();
    let record = StackRecord {
        stack_id: "arn:aws:cloudformation:us-east-1:000000000000:stack/sms-app-0123456789abcdef0/u"
            .into(),
        stack_name: "sms-app-0123456789abcdef0".into(),
        status: status::CREATE_COMPLETE.into(),
        reason: None,
        instances: vec![InstanceRecord {
            command_socket: None,
            instance_id: id.into(),
            logical_id: "Database".into(),
            name: Some("db-1".into()),
            image_id: "ami-0123456789abcdef0".into(),
            instance_type: "t3.small".into(),
            vcpus: 2,
            memory_mib: 2048,
            size_note: None,
            launch_level: 0,
            accel: Some("TCG".into()),
            accel_note: None,
            pid: Some(guest.id()),
            uefi: None,
            running_since: None,
            dir: inst_dir.clone(),
        }],
    };
    record.save(&stack_dir).unwrap();

    let table = ok(data, &["list"]);
    assert!(
        table.contains("sms-app-0123456789abcdef0  CREATE_COMPLETE"),
        "{table}"
    );
    assert!(
        table.contains(id) && table.contains("running") && table.contains("t3.small"),
        "{table}"
    );
    // Started under SeaBIOS (no UEFI firmware recorded).
    assert!(table.contains("  BIOS   TCG"), "{table}");
    let listed: Value = serde_json::from_str(&ok(data, &["list", "--json"])).unwrap();
    assert_eq!(listed[0]["instances"][0]["state"], "running");
    assert_eq!(listed[0]["instances"][0]["instanceId"], id);

    assert!(ok(data, &["console", "db-1"]).contains("TERN-BOOT-MARKER"));

    let stopped = ok(data, &["stop", "Database"]);
    assert!(stopped.contains(&format!("stopped {id}")), "{stopped}");
    until(Duration::from_secs(10), Duration::from_millis(50), || {
        guest.try_wait().unwrap()
    })
    .expect("the instance's process stops within 10 s");
    let listed: Value = serde_json::from_str(&ok(data, &["list", "--json"])).unwrap();
    assert_eq!(listed[0]["instances"][0]["state"], "stopped");
    assert!(ok(data, &["stop", id]).contains("is not running"));

    let out = tern(data, &["console", "i-ffffffffffffffff0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no instance i-ffffffffffffffff0") && err.contains("tern instances list"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    assert!(ok(empty.path(), &["list"]).contains("no launched applications"));
}
