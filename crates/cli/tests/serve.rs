//! `tern serve` as a process: it announces its endpoint and credentials file, serves, and exits
//! cleanly (status 0) on SIGTERM and on SIGINT.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use std::time::Duration;
use tern_test_support::poll::until;

struct Served {
    child: Child,
    endpoint: String,
    announced: String,
}

fn serve(dir: &std::path::Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("TERN_ACCESS_KEY_ID")
        .env_remove("TERN_SECRET_ACCESS_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run tern serve");
    let stdout = child.stdout.take().unwrap();
    let mut announced = String::new();
    let mut endpoint = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        announced.push_str(&line);
        announced.push('\n');
        if let Some(rest) = line.split_once(" at http://") {
            endpoint = Some(rest.1.split(' ').next().unwrap().to_owned());
        }
        if line.starts_with("Try:") {
            break;
        }
    }
    let endpoint = endpoint.unwrap_or_else(|| panic!("no endpoint announced:\n{announced}"));
    Served {
        child,
        endpoint,
        announced,
    }
}

fn signal_and_wait(mut served: Served, signal: &str) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &served.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exited = until(Duration::from_secs(10), Duration::from_millis(20), || {
        served.child.try_wait().unwrap()
    });
    exited.unwrap_or_else(|| {
        let _ = served.child.kill();
        panic!("tern serve did not exit within 10 s of SIG{signal}")
    })
}

#[test]
fn serve_announces_itself_and_stops_cleanly_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    for signal in ["TERM", "INT"] {
        let served = serve(dir.path());
        let credentials = dir.path().join("credentials");
        assert!(
            served
                .announced
                .contains(&credentials.display().to_string()),
            "credentials location not announced:\n{}",
            served.announced
        );
        assert!(credentials.exists());
        // What LaunchApp will run (the boot kit's QEMU here), or why it cannot; and whether
        // UEFI images can run.
        assert!(
            served
                .announced
                .contains("LaunchApp runs each instance as a QEMU guest")
                || served.announced.contains("LaunchApp is unavailable"),
            "LaunchApp's launcher not announced:\n{}",
            served.announced
        );
        if served.announced.contains("as a QEMU guest") {
            assert!(
                served.announced.contains("UEFI images under")
                    || served.announced.contains("UEFI images are refused"),
                "UEFI support not announced:\n{}",
                served.announced
            );
        }
        TcpStream::connect(&served.endpoint).expect("server accepts connections");
        let endpoint = served.endpoint.clone();
        let status = signal_and_wait(served, signal);
        assert!(status.success(), "exit status after SIG{signal}: {status}");
        assert!(
            TcpStream::connect(&endpoint).is_err(),
            "still listening after SIG{signal}"
        );
    }
}
