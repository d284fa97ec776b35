//! `tern demo --boot`: the latest image's exported disks booted under `qemu-system-x86_64`. The
//! VM's own `/init` prints a marker and the SHA-256 of each disk it reads; both must equal the
//! source disks at the last run's point in time.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use tern_local::guest::{boot_and_report, GuestDisk, GuestSpec};

use super::*;

impl Demo {
    pub(super) fn boot_check(&mut self) -> anyhow::Result<()> {
        self.step = "booting the exported image".into();
        let (Some(qemu), Some(vm)) = (self.qemu.clone(), self.vm.clone()) else {
            bail!("--boot needs QEMU and a bootable VM; both are checked before the demo starts");
        };
        let export = self.dir.join("export");
        let disks: Vec<GuestDisk> = vm
            .disks()
            .iter()
            .map(|d| GuestDisk {
                path: export.join(format!("{}.raw", d.name)),
                format: "raw",
                discard_writes: true,
            })
            .collect();
        if let Some(missing) = disks.iter().find(|d| !d.path.is_file()) {
            bail!(
                "{} was not exported; no image to boot",
                missing.path.display()
            );
        }
        self.ui.line("Boot");
        self.ui.status(format!(
            "booting the exported image under {} ({})",
            qemu.binary.display(),
            self.args.accel
        ));
        let spec = GuestSpec {
            disks,
            memory_mib: 256,
            cpus: 1,
            serial_log: self.dir.join("boot-console.log"),
        };
        let accel = self.args.accel.parse().map_err(|e: String| anyhow!(e))?;
        let timeout = Duration::from_secs(self.args.boot_timeout_secs);
        let report = tokio::task::block_in_place(|| boot_and_report(&qemu, &spec, accel, timeout));
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                self.check(false, format!("the exported image boots: {e}"));
                self.boot = Some(json!({ "booted": false, "error": e.to_string() }));
                return Ok(());
            }
        };
        let fallback = report
            .fallback
            .as_deref()
            .map(|why| format!("; KVM was given up: {why}"))
            .unwrap_or_default();
        self.check(
            true,
            format!(
                "the exported image boots: Linux {} started under {} in {:.1}s and printed its marker on the serial console ({}){fallback}",
                report.kernel_release,
                report.accel.label(),
                report.elapsed.as_secs_f64(),
                spec.serial_log.display()
            ),
        );
        let mut readings = Vec::new();
        for (i, disk) in vm.disks().iter().enumerate() {
            let device = format!("vd{}", char::from(b'a' + i as u8));
            let expected = tokio::task::block_in_place(|| sha256_file(&disk.master))?;
            let seen = report.disks.iter().find(|r| r.device == device);
            self.check(
                seen.is_some_and(|r| r.sha256 == expected && r.bytes == disk.size),
                match seen {
                    Some(r) => format!(
                        "the booted VM reads its {} disk ({device}, {}) with SHA-256 {}, the source's at the last run: {}",
                        disk.name,
                        bytes(r.bytes),
                        &r.sha256[..16],
                        if r.sha256 == expected { "equal" } else { "DIFFERENT" }
                    ),
                    None => format!("the booted VM did not report its {} disk ({device})", disk.name),
                },
            );
            readings.push(json!({
                "disk": disk.name,
                "device": device,
                "sha256": seen.map(|r| r.sha256.clone()),
                "expected": expected,
            }));
        }
        self.boot = Some(json!({
            "booted": true,
            "kernel": report.kernel_release,
            "accel": report.accel.label(),
            "seconds": report.elapsed.as_secs_f64(),
            "kvmFallback": report.fallback,
            "qemu": qemu.binary.display().to_string(),
            "console": spec.serial_log.display().to_string(),
            "disks": readings,
        }));
        Ok(())
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
