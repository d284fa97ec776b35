//! A private libvirt daemon for tests: `libvirtd` for `qemu:///session` with its runtime,
//! config and cache directories in a temporary directory (unprivileged in a user namespace when
//! the tests run as root, where libvirtd would otherwise be the system daemon), its domains
//! destroyed and the daemon killed on drop, so no test leaves one running. Missing libvirt
//! fails with what to install.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::poll::until;
use crate::qemu::p;

/// A temporary directory with a short path (unix sockets inside must fit in 107 bytes).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = PathBuf::from(format!(
            "/tmp/tlv-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        TempDir(d)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a machine needs for these tests.
pub const INSTALL: &str = "apt-get install -y --no-install-recommends libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config";

fn need(program: &str) {
    if !crate::on_path(program) {
        panic!("{program} is not installed: the libvirt tests (feature `libvirt`) need libvirt's daemon and client; install them with `{INSTALL}`");
    }
}

/// A private `libvirtd` for `qemu:///session`, killed (with its domains destroyed) on drop.
pub struct Daemon {
    dir: TempDir,
    child: Child,
    /// The URI to connect to (`qemu:///session?socket=…`).
    pub uri: String,
    emulator: PathBuf,
}

impl Daemon {
    /// Starts the daemon; its domains run `qemu` (a system emulator) with `-L` on each of
    /// `firmware`.
    pub fn start(qemu: &Path, firmware: &[PathBuf]) -> Daemon {
        need("libvirtd");
        need("virsh");
        // Short: the sockets inside must fit in 107 bytes.
        let dir = TempDir::new();
        let d = dir.path();
        for sub in ["run", "config/libvirt", "cache", "data", "home"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // QEMU's output straight into the domain's log file: without this libvirtd starts a
        // virtlogd of its own, which would outlive the test (by its 120 s idle timeout).
        std::fs::write(
            d.join("config/libvirt/qemu.conf"),
            "stdio_handler = \"file\"\n",
        )
        .unwrap();
        // libvirt probes the emulator it is given; the wrapper adds the kit's firmware dirs.
        let emulator = d.join("qemu-kit");
        let mut script = format!("#!/bin/sh\nexec {}", qemu.display());
        for f in firmware {
            script.push_str(&format!(" -L {}", f.display()));
        }
        script.push_str(" \"$@\"\n");
        std::fs::write(&emulator, script).unwrap();
        std::fs::set_permissions(
            &emulator,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();

        // As root libvirtd would be the system daemon; in a user namespace it is a session one.
        let root = euid() == 0;
        let mut cmd = if root {
            need("unshare");
            let mut c = Command::new("unshare");
            c.args(["-U", "--map-user=1000", "--map-group=1000", "libvirtd"]);
            c
        } else {
            Command::new("libvirtd")
        };
        cmd.env("XDG_RUNTIME_DIR", d.join("run"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_CACHE_HOME", d.join("cache"))
            .env("XDG_DATA_HOME", d.join("data"))
            .env("HOME", d.join("home"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(d.join("libvirtd.err")).unwrap());
        let mut child = cmd.spawn().expect("start libvirtd");
        let sock = d.join("run/libvirt/libvirt-sock");
        until(Duration::from_secs(30), Duration::from_millis(50), || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "libvirtd exited ({st}): {}",
                    std::fs::read_to_string(d.join("libvirtd.err")).unwrap_or_default()
                );
            }
            sock.exists().then_some(())
        })
        .unwrap_or_else(|| panic!("libvirtd did not open {} in 30 s", sock.display()));
        let uri = format!("qemu:///session?socket={}", sock.display());
        Daemon {
            dir,
            child,
            uri,
            emulator,
        }
    }

    /// The daemon's temporary directory (free for the caller's files too).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `virsh -c URI ARGS`; panics with its error output when it fails.
    pub fn virsh(&self, args: &[&str]) -> String {
        let out = Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run virsh");
        assert!(
            out.status.success(),
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Defines and starts a domain with one qcow2 disk (`vda`) and a user-mode NIC.
    /// The disk is raw when its name ends in `.raw`, else qcow2.
    pub fn start_domain(&self, name: &str, disk: &Path) {
        let format = match disk.extension().and_then(|e| e.to_str()) {
            Some("raw") => "raw",
            _ => "qcow2",
        };
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <emulator>{}</emulator>\
             <disk type='file' device='disk'><driver name='qemu' type='{format}'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
             <interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface>\
             </devices></domain>",
            self.emulator.display(),
            disk.display()
        );
        let path = self.path().join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        self.virsh(&["define", p(&path)]);
        self.virsh(&["start", name]);
    }

    /// Writes `len` bytes of `byte` at `offset` of the running domain's disk `vda` through the
    /// QEMU monitor, and checks QEMU read them back (qemu-io prints into the domain's log).
    pub fn write(&self, name: &str, offset: u64, len: u64, byte: u8) {
        let dev = "/machine/peripheral/virtio-disk0/virtio-backend";
        for cmd in [
            format!("qemu-io -d {dev} \"write -P {byte:#x} {offset} {len}\""),
            format!("qemu-io -d {dev} \"read -P {byte:#x} {offset} {len}\""),
        ] {
            let out = self.virsh(&["qemu-monitor-command", "--hmp", name, &cmd]);
            assert!(!out.contains("rror"), "{cmd}: {out}");
        }
        let log = self
            .path()
            .join(format!("cache/libvirt/qemu/log/{name}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !text.contains("Pattern verification failed"),
            "qemu-io could not write the disk: {text}"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(["list", "--name"])
            .output()
        {
            for name in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
            {
                let _ = Command::new("virsh")
                    .arg("-c")
                    .arg(&self.uri)
                    .args(["destroy", name])
                    .output();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn euid() -> u32 {
    // The owner of /proc/self is this process's effective uid.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}
