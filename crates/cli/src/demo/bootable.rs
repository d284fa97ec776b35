//! Making the sample VM really boot: the boot kit's kernel and initramfs go in `/boot` of the
//! ext4 partition with a GRUB configuration, GRUB's boot code goes in the MBR and its core right
//! after it (the gap before the partition at 1 MiB), and the disk blocks holding what GRUB reads
//! on the way are kept out of the demo's random changes, so every run's image still boots.
//!
//! The guest's `/init` (from `scripts/boot-kit/init`) prints a marker and the SHA-256 of each disk
//! it sees on the serial console; `tern demo --boot` compares those with the source disks.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use tern_local::guest::BootKit;

use super::vm::{BLOCK, PARTITION_START};

/// A boot disk smaller than this has no room for the kernel and initramfs next to the demo's data.
pub const MIN_BOOTABLE_MIB: u64 = 24;

/// What GRUB reads: the kernel command line sends the console to the first serial port, and a
/// kernel panic reboots, which ends QEMU (`-no-reboot`) instead of hanging it.
const GRUB_CFG: &str = "set timeout=0
set default=0
menuentry \"Tern demo VM\" {
  linux /boot/vmlinuz console=ttyS0 panic=-1 quiet
  initrd /boot/initrd.img
}
";

/// The paths GRUB walks: their inodes, directory blocks and file blocks must not change.
const BOOT_PATHS: [&str; 6] = [
    "/",
    "/boot",
    "/boot/grub",
    "/boot/grub/grub.cfg",
    "/boot/vmlinuz",
    "/boot/initrd.img",
];

/// Copies the kernel and initramfs into `tree/boot` and writes GRUB's configuration.
pub fn add_boot_files(tree: &Path, kit: &BootKit) -> anyhow::Result<()> {
    let grub = tree.join("boot/grub");
    std::fs::create_dir_all(&grub).with_context(|| format!("creating {}", grub.display()))?;
    for (from, to) in [(&kit.kernel, "vmlinuz"), (&kit.initrd, "initrd.img")] {
        let dest = tree.join("boot").join(to);
        std::fs::copy(from, &dest)
            .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    }
    std::fs::write(grub.join("grub.cfg"), GRUB_CFG).context("writing grub.cfg")?;
    Ok(())
}

/// Writes GRUB's boot code into sector 0 (the first 440 bytes, leaving the disk signature and
/// partition table alone) and its core image from sector 1 on.
pub fn install_grub(disk: &Path, kit: &BootKit) -> anyhow::Result<()> {
    let boot = std::fs::read(&kit.grub_boot_img)
        .with_context(|| format!("reading {}", kit.grub_boot_img.display()))?;
    let core = std::fs::read(&kit.grub_core_img)
        .with_context(|| format!("reading {}", kit.grub_core_img.display()))?;
    if boot.len() != 512 {
        bail!(
            "{} is {} bytes, not GRUB's 512-byte boot sector",
            kit.grub_boot_img.display(),
            boot.len()
        );
    }
    if core.is_empty() || core.len() as u64 > PARTITION_START - 512 {
        bail!(
            "{} is {} bytes; it must fit between the MBR and the partition at {PARTITION_START}",
            kit.grub_core_img.display(),
            core.len()
        );
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    f.write_all_at(&boot[..440], 0)?;
    f.write_all_at(&core, 512)?;
    Ok(())
}

/// The 512 KiB blocks of the whole disk (partition at [`PARTITION_START`]) that hold what GRUB
/// reads: the inodes, directory blocks, extent-tree blocks and data blocks of [`BOOT_PATHS`], as
/// `debugfs` (e2fsprogs, next to `mke2fs`) reports them for the partition image `part`.
pub fn boot_blocks(debugfs: &Path, part: &Path) -> anyhow::Result<BTreeSet<u64>> {
    let block_size: u64 = run(debugfs, "stats", part)?
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse().ok())
        .context("debugfs did not report the filesystem's block size")?;
    let mut fs_blocks = BTreeSet::new();
    for path in BOOT_PATHS {
        let imap = run(debugfs, &format!("imap {path}"), part)?;
        let at = imap
            .split("located at block ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|b| b.trim().parse::<u64>().ok())
            .with_context(|| format!("debugfs imap {path}: {imap}"))?;
        fs_blocks.insert(at);
        let stat = run(debugfs, &format!("stat {path}"), part)?;
        fs_blocks.extend(extent_blocks(&stat).with_context(|| format!("debugfs stat {path}"))?);
    }
    Ok(fs_blocks
        .into_iter()
        .map(|b| (PARTITION_START + b * block_size) / BLOCK)
        .collect())
}

/// The physical blocks listed after `EXTENTS:` in `debugfs stat` output:
/// `(ETB0):13684, (0-14):5400-5414, (8029):13683`.
fn extent_blocks(stat: &str) -> anyhow::Result<Vec<u64>> {
    let Some(list) = stat.split("EXTENTS:").nth(1) else {
        bail!("no EXTENTS section (not an extent-mapped inode?)");
    };
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let physical = item
            .rsplit_once(':')
            .map(|(_, p)| p.trim())
            .with_context(|| format!("unexpected extent {item:?}"))?;
        let (first, last) = match physical.split_once('-') {
            Some((a, b)) => (a.parse::<u64>()?, b.parse::<u64>()?),
            None => {
                let b = physical.parse::<u64>()?;
                (b, b)
            }
        };
        if last < first {
            bail!("unexpected extent {item:?}");
        }
        out.extend(first..=last);
    }
    Ok(out)
}

fn run(debugfs: &Path, request: &str, part: &Path) -> anyhow::Result<String> {
    let out = Command::new(debugfs)
        .env("DEBUGFS_PAGER", "__none__")
        .args(["-R", request])
        .arg(part)
        .output()
        .with_context(|| format!("running {}", debugfs.display()))?;
    if !out.status.success() {
        bail!(
            "{} -R {request:?} failed ({}): {}",
            debugfs.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `debugfs`, next to the `mke2fs` the demo uses.
pub fn debugfs_next_to(mke2fs: &Path) -> Option<PathBuf> {
    let p = mke2fs.with_file_name("debugfs");
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_of_debugfs_stat_are_parsed() {
        let stat = "Inode: 14 ...\nEXTENTS:\n(ETB0):13684, (0-2):5400-5402, (8029):13683\n";
        assert_eq!(
            extent_blocks(stat).unwrap(),
            vec![13684, 5400, 5401, 5402, 13683]
        );
        assert!(extent_blocks("Inode: 3\n").is_err());
        assert!(extent_blocks("EXTENTS:\n(0-2):9-5\n").is_err());
    }
}
