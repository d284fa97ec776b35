//! The demo's checks: the exported images against the source disks, the events received.

use std::path::Path;

use anyhow::{bail, Context as _};
use tern_disk::inspect::{inspect, PartitionTable};
use tern_disk::{OpenOptions, VirtualDisk};
use tern_local::images::ImageCatalog;

use super::*;
use report::{bytes, EventLine};
use vm::MIB;

impl Demo {
    /// The checks: every run completed with an AMI, the incremental runs sent deltas, the
    /// events, retention, and the latest image's disks against the current source disks.
    pub(super) fn verify(&mut self, events: &[EventLine]) -> anyhow::Result<()> {
        self.ui.line("Checks");
        let runs = self.runs.clone();
        for r in &runs {
            self.check(
                r.state == "COMPLETED" && r.ami_id.is_some(),
                format!(
                    "run {} ({}, {}) completed with AMI {}",
                    r.number,
                    r.run_type,
                    r.run_id,
                    r.ami_id.as_deref().unwrap_or("(none)")
                ),
            );
            let expected = if r.number == 1 { "seed-vmdk" } else { "delta" };
            let kinds: Vec<&str> = r.uploads.iter().map(|u| u.kind.as_str()).collect();
            let sizes: u64 = r.uploads.iter().map(|u| u.virtual_size).sum();
            self.check(
                kinds.len() == 2 && kinds.iter().all(|k| *k == expected),
                format!(
                    "run {} uploaded both disks as {expected} ({} sent for {} of disks; manifest kinds {:?})",
                    r.number,
                    bytes(r.uploaded()),
                    bytes(sizes),
                    kinds
                ),
            );
            if r.number > 1 {
                let changed: u64 = r.uploads.iter().filter_map(|u| u.changed_blocks).sum();
                let made: usize = r.changes.iter().map(vm::Changes::count).sum();
                self.check(
                    changed == made as u64,
                    format!(
                        "run {} sent exactly the {made} blocks the demo changed (deltas list {changed})",
                        r.number
                    ),
                );
            }
            let completed = events
                .iter()
                .find(|e| e.run_id == r.run_id && e.state == "Completed");
            self.check(
                completed.is_some_and(|e| e.ami_id == r.ami_id),
                format!(
                    "a Completed event for run {} with ami-id {}",
                    r.number,
                    completed
                        .and_then(|e| e.ami_id.as_deref())
                        .unwrap_or("(no such event)")
                ),
            );
        }

        self.ui.status("exporting the latest image");
        let data_dir = self.dir.join("server");
        let catalog = ImageCatalog::open(&data_dir)?;
        let amis: Vec<String> = runs.iter().filter_map(|r| r.ami_id.clone()).collect();
        let images = catalog.list_images()?;
        let kept: Vec<&String> = amis
            .iter()
            .filter(|a| images.iter().any(|i| &i.image_id == *a))
            .collect();
        self.check(
            amis.len() == 3 && kept.len() == 2 && !kept.contains(&&amis[0]),
            format!(
                "numberOfRecentAmisToKeep 2: images kept {:?}, the seed's {} deregistered",
                kept,
                amis.first().map(String::as_str).unwrap_or("(none)")
            ),
        );
        let Some(latest) = amis.last().filter(|_| amis.len() == runs.len()) else {
            bail!("no AMI to export");
        };
        let image = catalog.describe_image(latest)?;
        let export_dir = self.dir.join("export");
        std::fs::create_dir_all(&export_dir)?;
        let vm = self.vm().clone();
        if image.block_devices.len() != 2 {
            self.check(
                false,
                format!(
                    "{latest} has {} block devices, expected 2",
                    image.block_devices.len()
                ),
            );
        }
        for (device, disk) in image.block_devices.iter().zip(vm.disks()) {
            let snapshot = catalog.snapshot_disk(&device.snapshot_id)?;
            let out = export_dir.join(format!("{}.raw", disk.name));
            self.ui
                .status(format!("exporting {} {}", latest, device.device_name));
            let verdict = tokio::task::block_in_place(|| -> anyhow::Result<Option<String>> {
                tern_disk::write::write_raw(&snapshot, &out, &tern_disk::no_progress)
                    .with_context(|| {
                        format!("exporting {} to {}", device.snapshot_id, out.display())
                    })?;
                let exported = open(&out)?;
                let source = open(&disk.image)?;
                first_difference(exported.as_ref(), source.as_ref())
            })?;
            self.check(
                verdict.is_none(),
                match &verdict {
                    None => format!(
                        "{} disk: {} of {latest} ({}), exported to {}, is byte-identical to {} ({})",
                        disk.name,
                        device.device_name,
                        device.snapshot_id,
                        out.display(),
                        disk.image.display(),
                        bytes(disk.size)
                    ),
                    Some(diff) => format!(
                        "{} disk: {} of {latest} differs from {}: {diff}",
                        disk.name,
                        device.device_name,
                        disk.image.display()
                    ),
                },
            );
            if disk.name == "boot" {
                let report = inspect(open(&out)?.as_ref())?;
                let fs = report.partitions.first().and_then(|p| p.filesystem);
                self.check(
                    report.partition_table == PartitionTable::Mbr
                        && report.partitions.len() == 1
                        && fs == Some(vm.filesystem),
                    format!(
                        "the exported boot disk shows an MBR with partition 1 {} (found {:?}, {} partition(s), {})",
                        vm.filesystem.name(),
                        report.partition_table,
                        report.partitions.len(),
                        fs.map(|f| f.name()).unwrap_or("no filesystem")
                    ),
                );
            }
        }
        Ok(())
    }
}

fn open(path: &Path) -> anyhow::Result<Box<dyn VirtualDisk>> {
    tern_disk::open(path, &OpenOptions::default())
        .with_context(|| format!("opening {}", path.display()))
}

/// `None` when both disks hold the same bytes; otherwise where they first differ.
fn first_difference(a: &dyn VirtualDisk, b: &dyn VirtualDisk) -> anyhow::Result<Option<String>> {
    if a.size() != b.size() {
        return Ok(Some(format!("sizes differ: {} and {}", a.size(), b.size())));
    }
    let mut x = vec![0u8; 4 * MIB as usize];
    let mut y = vec![0u8; 4 * MIB as usize];
    let mut pos = 0;
    while pos < a.size() {
        let n = (a.size() - pos).min(4 * MIB) as usize;
        a.read_at(&mut x[..n], pos)?;
        b.read_at(&mut y[..n], pos)?;
        if let Some(i) = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q) {
            let at = pos + i as u64;
            return Ok(Some(format!(
                "first difference at byte {at} (block {})",
                at / vm::BLOCK
            )));
        }
        pos += n as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_disk::OpenOptions;

    #[test]
    fn identical_and_different_disks() {
        let a = tern_disk::open_bytes(vec![1u8; 3 << 20], &OpenOptions::default()).unwrap();
        let b = tern_disk::open_bytes(vec![1u8; 3 << 20], &OpenOptions::default()).unwrap();
        assert_eq!(first_difference(a.as_ref(), b.as_ref()).unwrap(), None);
        let mut bytes = vec![1u8; 3 << 20];
        bytes[(1 << 20) + 5] = 0;
        let c = tern_disk::open_bytes(bytes, &OpenOptions::default()).unwrap();
        let diff = first_difference(a.as_ref(), c.as_ref()).unwrap().unwrap();
        assert!(diff.contains("byte 1048581 (block 2)"), "{diff}");
        let d = tern_disk::open_bytes(vec![1u8; 1 << 20], &OpenOptions::default()).unwrap();
        assert!(first_difference(a.as_ref(), d.as_ref())
            .unwrap()
            .unwrap()
            .contains("sizes differ"));
    }
}
