//! `tern demo` end to end: the real binary builds its VM, runs the server and the connector
//! in-process, replicates three times and verifies the image (small disks, to stay quick).

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tern_test_support::poll::until;

/// Runs `tern demo ARGS`, killing it if it takes longer than a few minutes (a hang must fail
/// the test, not stall it).
fn demo(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("demo")
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tern demo");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let ended = until(Duration::from_secs(300), Duration::from_millis(100), || {
        child.try_wait().unwrap()
    });
    let Some(status) = ended else {
        let _ = child.kill();
        let status = child.wait().unwrap();
        let err = stderr.join().unwrap();
        panic!(
            "tern demo {args:?} did not finish within 300s ({status}):\n{}",
            String::from_utf8_lossy(&err)
        );
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

#[test]
fn the_demo_replicates_and_verifies_a_sample_vm() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let out = demo(&[
        "--size-mib",
        "16",
        "--data-size-mib",
        "8",
        "--seed",
        "42",
        "--json",
        "--dir",
        work.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tern demo failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    // The human report (on stderr with --json): a PASS line per check and none failing.
    for expected in [
        "PASS run 1 (AUTOMATIC",
        "PASS run 1 uploaded both disks as seed-vmdk",
        "PASS run 2 (ON_DEMAND",
        "PASS run 2 uploaded both disks as delta",
        "PASS run 3 sent exactly the",
        "PASS a Completed event for run 3",
        "PASS numberOfRecentAmisToKeep 2",
        "PASS boot disk: /dev/sda1 of ami-",
        "PASS data disk: /dev/sdb of ami-",
        "PASS the exported boot disk shows an MBR with partition 1",
        "Result: PASS",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("FAIL"), "{stderr}");
    for step in ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"] {
        assert!(stderr.contains(step), "no {step} in:\n{stderr}");
    }

    // The JSON summary on stdout.
    let summary: Value = serde_json::from_str(&stdout).expect("one JSON document on stdout");
    assert_eq!(summary["result"], "PASS");
    assert_eq!(summary["seed"], 42);
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["state"], "COMPLETED", "{run}");
        assert!(run["amiId"].as_str().unwrap().starts_with("ami-"), "{run}");
        assert!(!run["stages"].as_array().unwrap().is_empty(), "{run}");
        let uploads = run["uploads"].as_array().unwrap();
        assert_eq!(uploads.len(), 2, "{run}");
        let kind = if i == 0 { "seed-vmdk" } else { "delta" };
        assert!(uploads.iter().all(|u| u["kind"] == kind), "{run}");
    }
    let disk_bytes = (16 + 8) << 20;
    let delta_bytes: u64 = runs[1]["uploads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["bytesUploaded"].as_u64().unwrap())
        .sum();
    assert!(
        delta_bytes < disk_bytes / 4,
        "a delta of {delta_bytes} bytes"
    );
    let events = summary["events"].as_array().unwrap();
    for run in runs {
        assert!(
            events
                .iter()
                .any(|e| e["runId"] == run["runId"] && e["state"] == "Completed"),
            "no Completed event for {}",
            run["runId"]
        );
    }
    assert!(summary["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["passed"] == true));
    // A directory given with --dir is the user's: kept, with the exported disks in it.
    assert_eq!(summary["kept"], true);
    assert!(work.join("export/boot.raw").is_file());
}

#[test]
fn the_demo_refuses_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("something"), b"x").unwrap();
    let out = demo(&["--dir", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not empty"), "{stderr}");
}

#[test]
fn demo_help_says_what_it_does() {
    let out = demo(&["--help"]);
    assert!(out.status.success());
    // Words only: clap wraps the text to the terminal's width.
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for expected in [
        "sample VM",
        "ext4",
        "stream-optimized VMDK",
        "qcow2",
        "on-demand run",
        "byte-identical",
        "PASS or FAIL",
        "--size-mib",
        "--keep",
        "--json",
    ] {
        assert!(help.contains(expected), "no {expected:?} in:\n{help}");
    }
}

/// The migrated VM boots: the demo builds its VM from the boot kit (`scripts/boot-kit.sh`, which
/// `.ci/run` runs), replicates it three times, exports the latest AMI and boots it under QEMU
/// (TCG, so the test does not depend on the host's KVM); the VM's own init reports the SHA-256 of
/// each disk it reads, and both must be the source's at the last run.
#[test]
fn the_migrated_vm_boots_reads_its_disks_as_they_were_and_launches_as_an_application() {
    let kit = tern_local::guest::BootKit::find(None)
        .expect("a readable boot kit")
        .expect("no boot kit: run scripts/boot-kit.sh (as .ci/run does)");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let out = demo(&[
        "--size-mib",
        "32",
        "--data-size-mib",
        "8",
        "--seed",
        "7",
        "--json",
        "--boot",
        "--launch",
        "--accel",
        "tcg",
        "--boot-kit",
        kit.dir.to_str().unwrap(),
        "--dir",
        work.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tern demo --boot failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    for expected in [
        "PASS run 3 sent exactly the",
        "PASS the exported image boots: Linux",
        "PASS the booted VM reads its boot disk (vda, 32 MiB)",
        "PASS the booted VM reads its data disk (vdb, 8 MiB)",
        "and it booted its migrated disk: \"TERN-BOOT-MARKER",
        "PASS the server's validation script ran in the instance: SUCCEEDED (the validation script exited with status 0: boot disk /dev/vda: ",
        "through its command channel: SUCCEEDED (the validation script exited with status 0: answered on kernel ",
        "PASS TerminateApp stopped instance",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["vm"]["boots"], kit.kernel_release.as_str());
    let boot = &summary["boot"];
    assert_eq!(boot["booted"], true, "{boot}");
    assert_eq!(boot["accel"], "TCG");
    assert_eq!(boot["kernel"], kit.kernel_release.as_str());
    let disks = boot["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    for d in disks {
        assert_eq!(d["sha256"], d["expected"], "{d}");
    }
    // The serial console the VM wrote, kept in the work directory.
    let console = std::fs::read_to_string(work.join("boot-console.log")).unwrap();
    assert!(console.contains("TERN-BOOT-MARKER"), "{console}");
    // --launch: LaunchApp ran the latest AMI as an instance that booted, under TCG.
    let launch = &summary["launch"];
    assert_eq!(launch["booted"], true, "{launch}");
    assert_eq!(launch["accel"], "TCG");
    assert!(
        launch["stackId"]
            .as_str()
            .unwrap()
            .contains(":stack/sms-app-"),
        "{launch}"
    );
    assert_eq!(launch["validation"]["status"], "SUCCEEDED", "{launch}");
    assert_eq!(launch["appValidation"]["status"], "SUCCEEDED", "{launch}");
    let console = std::fs::read_to_string(launch["console"].as_str().unwrap()).unwrap();
    assert!(
        console.contains(&format!("TERN-BOOT-MARKER {}", kit.kernel_release)),
        "{console}"
    );
}

#[test]
fn boot_without_a_kit_or_room_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-kit");
    let out = demo(&["--boot", "--boot-kit", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scripts/boot-kit.sh"), "{stderr}");

    let kit = tern_local::guest::BootKit::find(None)
        .expect("a readable boot kit")
        .expect("no boot kit: run scripts/boot-kit.sh (as .ci/run does)");
    let out = demo(&[
        "--boot",
        "--size-mib",
        "16",
        "--boot-kit",
        kit.dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least 24 MiB"), "{stderr}");
}
