//! A vCenter simulator for tests: `scripts/vcsim/main.go` (govmomi's vcsim, one datacenter
//! `DC0`, one datastore `LocalDS_0` backed by a local directory, VMs `DC0_C0_RP0_VM0`, …)
//! serving HTTPS with a certificate of its own CA. Killed on drop. A missing binary fails with
//! the command that builds it.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub const USER: &str = "tern";
pub const PASSWORD: &str = "tern-secret";
pub const VM0: &str = "DC0_C0_RP0_VM0";

pub struct Vcsim {
    child: Child,
    dir: PathBuf,
    /// The SDK URL (`https://127.0.0.1:PORT/sdk`).
    pub url: String,
    /// The PEM file of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// The local directory behind datastore `LocalDS_0`.
    pub datastore: PathBuf,
    /// Each VM's disk capacity, bytes.
    pub disk_size: u64,
}

/// Where the simulator binary is: `$TERN_VCSIM`, else `~/.cache/tern/vcsim/vcsim`.
pub fn binary() -> PathBuf {
    std::env::var_os("TERN_VCSIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/tern/vcsim/vcsim")
        })
}

impl Vcsim {
    /// Starts a simulator whose VMs have one disk of `disk_mib` MiB each, with changed block
    /// tracking on when `cbt`.
    pub fn start(disk_mib: u64, cbt: bool) -> Vcsim {
        let bin = binary();
        assert!(
            bin.is_file(),
            "no vCenter simulator at {}: build it with scripts/vcsim.sh (Go and govmomi from apt)",
            bin.display()
        );
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tern-vcsim-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(&bin)
            .args([
                "-dir",
                &dir.to_string_lossy(),
                "-user",
                USER,
                "-pass",
                PASSWORD,
            ])
            .args(["-disk-mb", &disk_mib.to_string(), &format!("-cbt={cbt}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("vcsim printed {line:?}: {e}"));
        Vcsim {
            child,
            url: v["url"].as_str().unwrap().to_string(),
            ca_file: dir.join("ca.pem"),
            datastore: PathBuf::from(v["datastores"]["LocalDS_0"].as_str().unwrap()),
            disk_size: disk_mib << 20,
            dir,
        }
    }

    /// The `[vsphere]` section of a connector config for this simulator.
    pub fn source_toml(&self, vms: &[&str]) -> String {
        format!(
            "[vsphere]\nurl = {:?}\nusername = {USER:?}\npassword = {PASSWORD:?}\nca_file = {:?}\nvms = {vms:?}\n",
            self.url,
            self.ca_file.to_string_lossy()
        )
    }

    /// The flat extent of `vm`'s disk (`<vm>/disk1-flat.vmdk` in the datastore).
    pub fn flat(&self, vm: &str) -> PathBuf {
        self.datastore.join(vm).join("disk1-flat.vmdk")
    }

    /// Gives `vm`'s disk the content `bytes` (its capacity long): a VMFS flat descriptor and
    /// its flat extent, as vSphere keeps a thick or thin disk.
    pub fn write_disk(&self, vm: &str, bytes: &[u8]) {
        assert_eq!(
            bytes.len() as u64,
            self.disk_size,
            "a disk's content is its capacity"
        );
        let folder = self.datastore.join(vm);
        let descriptor = format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW {} VMFS \"disk1-flat.vmdk\"\n\nddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"13\"\n",
            self.disk_size / 512
        );
        std::fs::write(folder.join("disk1.vmdk"), descriptor).unwrap();
        self.write_at(vm, 0, bytes);
    }

    /// Writes `bytes` into `vm`'s disk at `offset`, as the running guest would.
    pub fn write_at(&self, vm: &str, offset: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.flat(vm))
            .unwrap();
        f.write_all_at(bytes, offset).unwrap();
        f.sync_all().unwrap();
    }

    /// Resets changed block tracking, as vSphere does after some storage operations: every
    /// change id given so far becomes invalid.
    pub fn reset_tracking(&self) {
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("cbt-") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }

    /// Bytes the simulator served to ranged datastore reads so far (a disk's data as a run
    /// reads it).
    pub fn bytes_served(&self) -> u64 {
        match std::fs::read_to_string(self.dir.join("served")) {
            Ok(n) => n.trim().parse().expect("vcsim's served counter"),
            Err(_) => 0,
        }
    }

    /// Makes the simulator refuse (or allow again) snapshots of VM `vm_id` (`vm-42`).
    pub fn refuse_snapshots(&self, vm_id: &str, refuse: bool) {
        let flag = self.dir.join(format!("refuse-snapshot-{vm_id}"));
        if refuse {
            std::fs::write(flag, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.datastore);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::io::stderr().flush();
    }
}
