//! The local stacks' records and their QEMU processes.
//!
//! Each stack lives in `<data dir>/instances/<stack name>/`: `stack.json` (the record below,
//! replaced atomically) and one directory per instance holding its disks (qcow2 overlays on the
//! image's exported disks), its NoCloud seed, `console.log` (the serial console) and
//! `qemu.log`. Guests run detached (`-daemonize`), as EC2 instances outlive the API that made
//! them: `tern serve` may restart, and `tern instances` reads the same records.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::guest::{escape_option, Accel, Qemu};

/// The directory of the local stacks under a data directory.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("instances")
}

/// CloudFormation's stack statuses the local launcher moves through.
pub mod status {
    pub const CREATE_IN_PROGRESS: &str = "CREATE_IN_PROGRESS";
    pub const CREATE_COMPLETE: &str = "CREATE_COMPLETE";
    /// The create failed and what it started was removed (CloudFormation's rollback).
    pub const ROLLBACK_COMPLETE: &str = "ROLLBACK_COMPLETE";
    pub const DELETE_IN_PROGRESS: &str = "DELETE_IN_PROGRESS";
    pub const DELETE_COMPLETE: &str = "DELETE_COMPLETE";
    pub const DELETE_FAILED: &str = "DELETE_FAILED";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackRecord {
    pub stack_id: String,
    pub stack_name: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub instances: Vec<InstanceRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    /// `i-` + 17 hex digits, derived from the stack id and the logical id.
    pub instance_id: String,
    pub logical_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub image_id: String,
    pub instance_type: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Why the guest got less than its instance type has, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_note: Option<String>,
    pub launch_level: usize,
    /// `KVM` or `TCG` once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// Why it runs under TCG although KVM was asked for, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel_note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// RFC 3339, when its console first showed output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since: Option<String>,
    pub dir: PathBuf,
    /// The command channel's socket, for an instance tagged
    /// `UserForSMSApplicationValidation=true` (see `commands`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_socket: Option<PathBuf>,
    /// For an instance of a UEFI image: the firmware's code and the instance's own copy of its
    /// variable store (boot entries the guest writes survive its restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uefi: Option<crate::guest::UefiFirmware>,
}

impl InstanceRecord {
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Whether its QEMU still runs (the process id is checked against the instance id on its
    /// command line, so a reused id is not mistaken for it).
    pub fn running(&self) -> bool {
        self.pid.is_some_and(|p| is_our_qemu(p, &self.instance_id))
    }
}

impl StackRecord {
    pub fn load(dir: &Path) -> Result<StackRecord, String> {
        let path = dir.join("stack.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is malformed: {e}", path.display()))
    }

    /// Writes the record to `dir/stack.json` atomically (a new file renamed into place).
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let path = dir.join("stack.json");
        let tmp = dir.join("stack.json.tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// Every stack under `data_dir`, by name.
pub fn list(data_dir: &Path) -> Result<Vec<StackRecord>, String> {
    let root = root(data_dir);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(format!("cannot read {}: {e}", root.display())),
    };
    let mut stacks = Vec::new();
    for entry in entries.flatten() {
        if entry.path().join("stack.json").is_file() {
            stacks.push(StackRecord::load(&entry.path())?);
        }
    }
    stacks.sort_by(|a, b| a.stack_name.cmp(&b.stack_name));
    Ok(stacks)
}

/// Finds an instance by id or by `Name` tag among every stack.
pub fn find(data_dir: &Path, which: &str) -> Result<(StackRecord, InstanceRecord), String> {
    let mut found = Vec::new();
    for s in list(data_dir)? {
        for i in &s.instances {
            if i.instance_id == which || i.name.as_deref() == Some(which) || i.logical_id == which {
                found.push((s.clone(), i.clone()));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "no instance {which} in {}; `tern instances list` shows them",
            root(data_dir).display()
        )),
        n => Err(format!(
            "{n} instances match {which}; name it by its instance id"
        )),
    }
}

fn is_our_qemu(pid: u32, instance_id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .any(|arg| arg == instance_id.as_bytes())
    })
}

/// Stops the instance's QEMU: SIGTERM, then SIGKILL after 5 s. Stopping a stopped one succeeds.
pub fn stop(inst: &InstanceRecord) -> Result<(), String> {
    let Some(pid) = inst.pid else { return Ok(()) };
    let signal = |sig| {
        if is_our_qemu(pid, &inst.instance_id) {
            // SAFETY: kill(2) with a pid we checked is this instance's QEMU.
            unsafe { libc::kill(pid as libc::pid_t, sig) };
        }
    };
    signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_our_qemu(pid, &inst.instance_id) {
        if Instant::now() > deadline {
            signal(libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(100));
            if is_our_qemu(pid, &inst.instance_id)
                && Instant::now() > deadline + Duration::from_secs(5)
            {
                return Err(format!("QEMU {pid} of {} does not stop", inst.instance_id));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One guest to start.
pub struct Start<'a> {
    pub qemu: &'a Qemu,
    pub instance: &'a InstanceRecord,
    pub disks: &'a [PathBuf],
    pub seed: &'a Path,
    pub accel: Accel,
}

/// Starts QEMU detached and answers its pid once QEMU has set the guest up (its parent process
/// exits only then, with QEMU's own message on failure).
pub fn start(s: &Start<'_>) -> Result<u32, String> {
    let dir = &s.instance.dir;
    let pidfile = dir.join("qemu.pid");
    let _ = std::fs::remove_file(&pidfile);
    // SeaBIOS writes to the serial port only when told which one; -nographic tells it, but
    // cannot be combined with -daemonize.
    let sercon = dir.join("sercon-port");
    std::fs::write(&sercon, 0x3f8u16.to_le_bytes())
        .map_err(|e| format!("cannot write {}: {e}", sercon.display()))?;
    let log = dir.join("qemu.log");
    let mut cmd = std::process::Command::new(&s.qemu.binary);
    for d in &s.qemu.firmware {
        cmd.arg("-L").arg(d);
    }
    cmd.args(["-name", &s.instance.instance_id]);
    cmd.args([
        "-nodefaults",
        "-display",
        "none",
        "-vga",
        "none",
        "-monitor",
        "none",
    ]);
    cmd.arg("-serial")
        .arg(format!("file:{}", s.instance.console().display()));
    if let Some(socket) = &s.instance.command_socket {
        let _ = std::fs::remove_file(socket);
        cmd.arg("-serial")
            .arg(format!("unix:{},server=on,wait=off", escape_option(socket)));
    }
    cmd.arg("-fw_cfg").arg(format!(
        "name=etc/sercon-port,file={}",
        escape_option(&sercon)
    ));
    if let Some(fw) = &s.instance.uefi {
        cmd.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            escape_option(&fw.code)
        ));
        cmd.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            escape_option(&fw.vars)
        ));
    }
    cmd.args(["-accel", s.accel.qemu_name()]);
    cmd.arg("-m").arg(s.instance.memory_mib.to_string());
    cmd.arg("-smp").arg(s.instance.vcpus.to_string());
    for d in s.disks {
        cmd.arg("-drive")
            .arg(format!("file={},format=qcow2,if=virtio", escape_option(d)));
    }
    cmd.arg("-drive").arg(format!(
        "driver=vvfat,dir={},label=cidata,if=virtio,read-only=on",
        escape_option(s.seed)
    ));
    cmd.arg("-nic").arg(format!(
        "user,model=virtio-net-pci,mac={}",
        mac(&s.instance.instance_id)
    ));
    cmd.arg("-daemonize").arg("-pidfile").arg(&pidfile);
    let out =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", s.qemu.binary.display()))?;
    let said = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("should be prefixed with \"opt/\""))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    if !status.success() {
        return Err(format!("QEMU refused to start ({status}): {}", said()));
    }
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| format!("QEMU started but wrote no pid to {}", pidfile.display()))?;
    Ok(pid)
}

/// Waits until the guest's console shows output (the firmware prints first, whatever the OS);
/// false after `timeout`, or at once when QEMU is gone.
pub fn wait_for_console(inst: &InstanceRecord, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::metadata(inst.console()).is_ok_and(|m| m.len() > 0) {
            return true;
        }
        if Instant::now() > deadline || !inst.running() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A locally administered MAC address derived from the instance id.
fn mac(instance_id: &str) -> String {
    let h = blake3::hash(instance_id.as_bytes());
    let b = h.as_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}
