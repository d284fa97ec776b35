//! UEFI test disks: an MBR whose one partition, at 1 MiB, is an EFI System Partition (type
//! 0xEF, FAT16, written with the `fatfs` crate) holding GRUB for UEFI as `\EFI\BOOT\BOOTX64.EFI`
//! (the path firmware boots with no boot entry) and a `grub.cfg` next to it, plus any other
//! files at the partition's root (a kernel and initramfs GRUB loads). Firmware finds the
//! partition by its type, and Tern's inspection reports it as an EFI System Partition.

use std::io::Write as _;
use std::path::Path;

const PART_START: usize = 1 << 20;

/// Writes the disk to `path`: `grub_efi` (the boot kit's `grub/bootx64.efi`) with `grub_cfg`
/// beside it, and each `(name, source)` of `files` copied to the partition's root. The
/// partition is `part_mib` MiB.
pub fn esp_disk(
    path: &Path,
    grub_efi: &Path,
    grub_cfg: &str,
    files: &[(&str, &Path)],
    part_mib: usize,
) {
    let part_size = part_mib << 20;
    let mut part = std::io::Cursor::new(vec![0u8; part_size]);
    fatfs::format_volume(
        &mut part,
        fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat16),
    )
    .expect("FAT16 fits the partition");
    {
        let fs = fatfs::FileSystem::new(&mut part, fatfs::FsOptions::new()).expect("FAT opens");
        let root = fs.root_dir();
        let copy = |dir: &fatfs::Dir<'_, _>, name: &str, data: &[u8]| {
            let mut f = dir.create_file(name).expect("FAT file");
            f.write_all(data).expect("FAT write");
        };
        let boot = root
            .create_dir("EFI")
            .and_then(|d| d.create_dir("BOOT"))
            .expect("\\EFI\\BOOT");
        copy(
            &boot,
            "BOOTX64.EFI",
            &std::fs::read(grub_efi).expect("GRUB for UEFI"),
        );
        copy(&boot, "grub.cfg", grub_cfg.as_bytes());
        for (name, source) in files {
            copy(
                &root,
                name,
                &std::fs::read(source).expect("a file for the ESP"),
            );
        }
        drop((boot, root));
        fs.unmount().expect("FAT unmounts");
    }
    let mut disk = vec![0u8; PART_START];
    let entry = &mut disk[446..462];
    entry[4] = 0xEF;
    entry[8..12].copy_from_slice(&((PART_START / 512) as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&((part_size / 512) as u32).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk.extend_from_slice(&part.into_inner());
    std::fs::write(path, disk).expect("the disk is written");
}
