//! Booting disk images as QEMU guests: the boot proof of `tern demo --boot`, and the base of the
//! local launcher.
//!
//! A guest is `qemu-system-x86_64` with its serial console on a pipe: every line it prints is
//! appended to a log file and handed to the caller, who waits for the lines it expects under a
//! deadline. Acceleration is KVM when `/dev/kvm` can be opened, TCG otherwise; a KVM that opens
//! but never runs the guest (seen in nested sandboxes) is given up for TCG after a bounded wait.

mod kit;
mod qemu;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use kit::BootKit;
pub use qemu::{escape_option, is_executable, kvm_usable, Accel, Qemu, UefiFirmware, QEMU_SYSTEM};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The boot kit is missing or incomplete.
    #[error("{0}")]
    Kit(String),
    /// No `qemu-system-x86_64` to run.
    #[error("{0}")]
    QemuMissing(String),
    /// The guest did not boot as expected; the message names what was seen last.
    #[error("{0}")]
    Boot(String),
    #[error("{0}")]
    Io(String),
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> GuestError {
    move |e| GuestError::Io(format!("{what}: {e}"))
}

/// One disk of a guest, attached as a virtio disk in the order given.
#[derive(Debug, Clone)]
pub struct GuestDisk {
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: &'static str,
    /// Writes go to a temporary overlay QEMU throws away (`snapshot=on`), so the file is left
    /// exactly as it was.
    pub discard_writes: bool,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub disks: Vec<GuestDisk>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Where every serial-console line is appended.
    pub serial_log: PathBuf,
}

/// A running guest. Dropping it kills QEMU.
pub struct Guest {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub accel: Accel,
    pub started: Instant,
    stderr_log: PathBuf,
    serial_log: PathBuf,
}

impl Guest {
    /// Starts QEMU with `accel` (`Kvm` or `Tcg`; `Auto` is resolved by the caller, see
    /// [`boot_and_report`]).
    pub fn start(qemu: &Qemu, spec: &GuestSpec, accel: Accel) -> Result<Guest, GuestError> {
        let mut cmd = Command::new(&qemu.binary);
        for dir in &qemu.firmware {
            cmd.arg("-L").arg(dir);
        }
        // -nographic (not -display none): QEMU then tells SeaBIOS to use the serial console, so even a
        // firmware-level failure ("not a bootable disk") shows on the console.
        cmd.args([
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
        ]);
        cmd.args(["-serial", "stdio"]);
        cmd.args(["-accel", accel.qemu_name()]);
        cmd.arg("-m").arg(spec.memory_mib.to_string());
        cmd.arg("-smp").arg(spec.cpus.to_string());
        for d in &spec.disks {
            let mut drive = format!(
                "file={},format={},if=virtio",
                qemu::escape_option(&d.path),
                d.format
            );
            if d.discard_writes {
                drive.push_str(",snapshot=on");
            }
            cmd.arg("-drive").arg(drive);
        }
        let stderr_log = spec.serial_log.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_log)
            .map_err(io(format!("creating {}", stderr_log.display())))?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.serial_log)
            .map_err(io(format!("creating {}", spec.serial_log.display())))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(io(format!("starting {}", qemu.binary.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| GuestError::Io("QEMU's console pipe is missing".into()))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = log.write_all(&buf);
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_string();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Guest {
            child,
            lines,
            accel,
            started: Instant::now(),
            stderr_log,
            serial_log: spec.serial_log.clone(),
        })
    }

    /// The next console line before `deadline`: `Ok(None)` when the deadline passed, an error
    /// when QEMU exited (its own error output quoted).
    pub fn next_line(&mut self, deadline: Instant) -> Result<Option<String>, GuestError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().map_err(io("waiting for QEMU"))?;
                Err(GuestError::Boot(format!(
                    "QEMU exited ({status}) {}",
                    self.what_was_seen()
                )))
            }
        }
    }

    /// The tail of the console and QEMU's error output, for messages.
    pub fn what_was_seen(&self) -> String {
        let tail = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            lines[lines.len().saturating_sub(5)..].join(" | ")
        };
        format!(
            "; console ({}): {}; QEMU said: {}",
            self.serial_log.display(),
            tail(&self.serial_log),
            tail(&self.stderr_log)
        )
    }

    /// Stops QEMU (a guest that powered itself off is simply reaped).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What Tern's boot-kit VM printed: `TERN-BOOT-MARKER`, one `TERN-DISK` line per disk, then
/// `TERN-BOOT-DONE` (see `scripts/boot-kit/init`).
#[derive(Debug, Clone)]
pub struct BootReport {
    pub accel: Accel,
    pub kernel_release: String,
    pub disks: Vec<DiskReading>,
    /// From QEMU's start to `TERN-BOOT-DONE`.
    pub elapsed: Duration,
    /// Why the boot ran under TCG although KVM was chosen, when it did.
    pub fallback: Option<String>,
}

/// A disk as the guest read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReading {
    /// The guest's name for it (`vda`, `vdb`, … in attachment order).
    pub device: String,
    pub bytes: u64,
    pub sha256: String,
}

const MARKER: &str = "TERN-BOOT-MARKER";
const DISK: &str = "TERN-DISK";
const DONE: &str = "TERN-BOOT-DONE";

/// How long a KVM guest may stay silent before it is given up for TCG.
const KVM_STALL: Duration = Duration::from_secs(45);

/// Boots `spec` and collects the boot-kit VM's report, within `timeout`.
pub fn boot_and_report(
    qemu: &Qemu,
    spec: &GuestSpec,
    accel: Accel,
    timeout: Duration,
) -> Result<BootReport, GuestError> {
    let chosen = accel.resolve();
    if accel != Accel::Auto || chosen != Accel::Kvm {
        return run_once(qemu, spec, chosen, timeout).map_err(Failure::into_error);
    }
    match run_once(qemu, spec, Accel::Kvm, timeout.min(KVM_STALL)) {
        Err(Failure::NoMarker(why)) => {
            let mut r = run_once(qemu, spec, Accel::Tcg, timeout).map_err(Failure::into_error)?;
            r.fallback = Some(why);
            Ok(r)
        }
        other => other.map_err(Failure::into_error),
    }
}

/// Why a boot failed: before the guest's marker (so possibly the accelerator's fault), or after.
enum Failure {
    NoMarker(String),
    Other(String),
}

impl Failure {
    fn into_error(self) -> GuestError {
        match self {
            Failure::NoMarker(m) | Failure::Other(m) => GuestError::Boot(m),
        }
    }
}

fn run_once(
    qemu: &Qemu,
    spec: &GuestSpec,
    accel: Accel,
    timeout: Duration,
) -> Result<BootReport, Failure> {
    let mut guest = Guest::start(qemu, spec, accel).map_err(|e| Failure::Other(e.to_string()))?;
    let deadline = guest.started + timeout;
    let mut kernel_release = None;
    let mut disks = Vec::new();
    let fail = |seen_marker: bool, why: String| {
        if seen_marker {
            Failure::Other(why)
        } else {
            Failure::NoMarker(why)
        }
    };
    loop {
        let line = match guest.next_line(deadline) {
            Ok(Some(l)) => l,
            Ok(None) => {
                let what = if kernel_release.is_none() {
                    "no boot marker"
                } else {
                    "the guest booted but did not finish its report"
                };
                let why = format!(
                    "{what} within {} s under {}{}",
                    timeout.as_secs(),
                    accel.label(),
                    guest.what_was_seen()
                );
                guest.stop();
                return Err(fail(kernel_release.is_some(), why));
            }
            Err(e) => return Err(fail(kernel_release.is_some(), e.to_string())),
        };
        if let Some(rest) = after(&line, MARKER) {
            kernel_release = Some(rest.to_string());
        } else if let Some(rest) = after(&line, DISK) {
            let disk = parse_disk(rest).ok_or_else(|| {
                Failure::Other(format!("the guest printed a malformed disk line: {line:?}"))
            })?;
            disks.push(disk);
        } else if after(&line, DONE).is_some() {
            let elapsed = guest.started.elapsed();
            guest.stop();
            let Some(kernel_release) = kernel_release else {
                return Err(Failure::NoMarker(format!(
                    "the guest finished without its boot marker{}",
                    guest.what_was_seen()
                )));
            };
            return Ok(BootReport {
                accel,
                kernel_release,
                disks,
                elapsed,
                fallback: None,
            });
        }
    }
}

/// The text after `token` when the line carries it (console lines may start with escapes).
fn after<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    line.find(token).map(|i| line[i + token.len()..].trim())
}

fn parse_disk(rest: &str) -> Option<DiskReading> {
    let mut it = rest.split_whitespace();
    let device = it.next()?.to_string();
    let bytes = it.next()?.parse().ok()?;
    let sha256 = it.next()?.to_string();
    (sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) && it.next().is_none())
        .then_some(DiskReading {
            device,
            bytes,
            sha256,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_read_through_escapes_and_checked() {
        assert_eq!(
            after("\u{1b}[0mTERN-BOOT-MARKER 6.1.0", MARKER),
            Some("6.1.0")
        );
        assert_eq!(after("Booting", MARKER), None);
        let sha = "ab".repeat(32);
        assert_eq!(
            parse_disk(&format!("vdb 8388608 {sha}")),
            Some(DiskReading {
                device: "vdb".into(),
                bytes: 8 << 20,
                sha256: sha.clone()
            })
        );
        assert_eq!(parse_disk(&format!("vdb x {sha}")), None);
        assert_eq!(parse_disk("vdb 1 abc"), None);
        assert_eq!(parse_disk(&format!("vdb 1 {sha} extra")), None);
    }
}
