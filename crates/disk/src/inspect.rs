//! What is on a disk: partition table (MBR or GPT), each partition's type, bootable flag, start
//! and size, the filesystem found from its superblock, and whether an EFI system partition
//! exists. The report is serialisable so the connector can ship it in the server inventory.

use serde::{Deserialize, Serialize};

use crate::disk::VirtualDisk;
use crate::error::Result;

const ESP_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Extended partitions are chains; a hostile disk could loop them, so the walk is bounded.
const MAX_LOGICAL: usize = 128;
const MAX_GPT_ENTRIES: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionTable {
    None,
    Mbr,
    Gpt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext2,
    Ext3,
    Ext4,
    Xfs,
    Btrfs,
    Jfs,
    Ntfs,
    Refs,
    Fat12,
    Fat16,
    Fat32,
    Exfat,
    Swap,
    LvmPv,
}

impl Filesystem {
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext2 => "ext2",
            Filesystem::Ext3 => "ext3",
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
            Filesystem::Btrfs => "btrfs",
            Filesystem::Jfs => "jfs",
            Filesystem::Ntfs => "ntfs",
            Filesystem::Refs => "refs",
            Filesystem::Fat12 => "fat12",
            Filesystem::Fat16 => "fat16",
            Filesystem::Fat32 => "fat32",
            Filesystem::Exfat => "exfat",
            Filesystem::Swap => "swap",
            Filesystem::LvmPv => "lvm2 pv",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// 1-based number as Linux names it (MBR logical partitions start at 5).
    pub number: u32,
    /// MBR type byte as hex (`"0x83"`) or GPT type GUID (upper case).
    pub type_id: String,
    /// A human name for the type, when known.
    pub type_name: Option<String>,
    pub bootable: bool,
    pub start: u64,
    pub size: u64,
    pub filesystem: Option<Filesystem>,
    /// GPT partition name, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub efi_system: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectionReport {
    pub disk_size: u64,
    pub sector_size: u32,
    pub partition_table: PartitionTable,
    pub partitions: Vec<Partition>,
    /// A filesystem on the whole disk, without a partition table.
    pub whole_disk_filesystem: Option<Filesystem>,
    pub efi_system_partition: bool,
    /// Problems noticed while reading the tables (kept instead of failing the whole report).
    pub warnings: Vec<String>,
}

fn read(disk: &dyn VirtualDisk, off: u64, len: usize) -> Result<Option<Vec<u8>>> {
    if off.checked_add(len as u64).is_none_or(|e| e > disk.size()) {
        return Ok(None);
    }
    let mut b = vec![0u8; len];
    disk.read_at(&mut b, off)?;
    Ok(Some(b))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Formats a GUID stored in the mixed-endian on-disk layout.
fn guid_string(g: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(g, 0),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10..16]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    )
}

fn gpt_type_name(guid: &str) -> Option<&'static str> {
    Some(match guid {
        ESP_GUID => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3" => "Windows LDM metadata",
        "AF9B60A0-1431-4F62-BC68-3311714A69AD" => "Windows LDM data",
        _ => return None,
    })
}

fn mbr_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0e => "FAT16",
        0x05 | 0x0f | 0x85 => "Extended",
        0x07 => "NTFS/exFAT/HPFS",
        0x0b | 0x0c => "FAT32",
        0x27 => "Windows recovery",
        0x42 => "Windows dynamic",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xfd => "Linux RAID",
        0xee => "GPT protective",
        0xef => "EFI System",
        _ => return None,
    })
}

/// Identifies the filesystem (or swap / LVM PV) starting at `off`, from its superblock magic.
pub fn probe_filesystem(disk: &dyn VirtualDisk, off: u64) -> Result<Option<Filesystem>> {
    let Some(b) = read(
        disk,
        off,
        4096.min(disk.size().saturating_sub(off)) as usize,
    )?
    else {
        return Ok(None);
    };
    if b.len() < 512 {
        return Ok(None);
    }
    if &b[3..11] == b"NTFS    " {
        return Ok(Some(Filesystem::Ntfs));
    }
    if &b[3..7] == b"ReFS" {
        return Ok(Some(Filesystem::Refs));
    }
    if &b[3..11] == b"EXFAT   " {
        return Ok(Some(Filesystem::Exfat));
    }
    if &b[..4] == b"XFSB" {
        return Ok(Some(Filesystem::Xfs));
    }
    // LVM2 label: "LABELONE" in one of the first four sectors, type "LVM2 001".
    for s in 0..4 {
        let o = s * 512;
        if b.len() >= o + 32 && &b[o..o + 8] == b"LABELONE" && &b[o + 24..o + 32] == b"LVM2 001" {
            return Ok(Some(Filesystem::LvmPv));
        }
    }
    if b.len() >= 1024 + 512 && b[1024 + 56] == 0x53 && b[1024 + 57] == 0xef {
        let sb = &b[1024..];
        let compat = le32(sb, 92);
        let incompat = le32(sb, 96);
        let ro_compat = le32(sb, 100);
        // Features only ext4 has: extents, 64bit, flex_bg, and a few later ones.
        let ext4_incompat = 0x40 | 0x80 | 0x200 | 0x400 | 0x1000 | 0x8000 | 0x10000;
        let ext4_ro = 0x8 | 0x10 | 0x20 | 0x40 | 0x400;
        return Ok(Some(
            if incompat & ext4_incompat != 0 || ro_compat & ext4_ro != 0 {
                Filesystem::Ext4
            } else if compat & 0x4 != 0 {
                Filesystem::Ext3
            } else {
                Filesystem::Ext2
            },
        ));
    }
    if b.len() >= 4096 && (&b[4086..4096] == b"SWAPSPACE2" || &b[4086..4096] == b"SWAP-SPACE") {
        return Ok(Some(Filesystem::Swap));
    }
    if b[510] == 0x55 && b[511] == 0xaa {
        if &b[82..87] == b"FAT32" {
            return Ok(Some(Filesystem::Fat32));
        }
        if &b[54..59] == b"FAT16" {
            return Ok(Some(Filesystem::Fat16));
        }
        if &b[54..59] == b"FAT12" {
            return Ok(Some(Filesystem::Fat12));
        }
    }
    // Superblocks further in: JFS at 32 KiB, Btrfs at 64 KiB.
    if let Some(j) = read(disk, off + 32768, 4)? {
        if &j[..] == b"JFS1" {
            return Ok(Some(Filesystem::Jfs));
        }
    }
    if let Some(bt) = read(disk, off + 65536 + 64, 8)? {
        if &bt[..] == b"_BHRfS_M" {
            return Ok(Some(Filesystem::Btrfs));
        }
    }
    Ok(None)
}

/// Reads the partition table and the filesystems of a virtual disk.
pub fn inspect(disk: &dyn VirtualDisk) -> Result<InspectionReport> {
    let mut report = InspectionReport {
        disk_size: disk.size(),
        sector_size: 512,
        partition_table: PartitionTable::None,
        partitions: Vec::new(),
        whole_disk_filesystem: None,
        efi_system_partition: false,
        warnings: Vec::new(),
    };
    let Some(mbr) = read(disk, 0, 512)? else {
        return Ok(report);
    };
    let has_sig = mbr[510] == 0x55 && mbr[511] == 0xaa;
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + i * 16..462 + i * 16]).collect();
    // A FAT or NTFS boot sector also ends in 55 AA; it is a partition table only if the
    // entries make sense (status 0x00/0x80 and some non-empty entry).
    let plausible = has_sig
        && entries.iter().all(|e| e[0] == 0 || e[0] == 0x80)
        && entries.iter().any(|e| e[4] != 0);
    if plausible && entries.iter().any(|e| e[4] == 0xee) {
        for sector in [512u32, 4096] {
            if gpt(disk, sector, &mut report)? {
                break;
            }
        }
        if report.partition_table != PartitionTable::Gpt {
            report
                .warnings
                .push("protective MBR but no valid GPT header".into());
        }
    } else if plausible {
        report.partition_table = PartitionTable::Mbr;
        mbr_partitions(disk, &mbr, &mut report)?;
    } else {
        report.whole_disk_filesystem = probe_filesystem(disk, 0)?;
    }
    for p in &mut report.partitions {
        if p.type_name.as_deref() != Some("Extended") {
            p.filesystem = probe_filesystem(disk, p.start)?;
        }
    }
    report.efi_system_partition = report.partitions.iter().any(|p| p.efi_system);
    Ok(report)
}

fn mbr_partitions(disk: &dyn VirtualDisk, mbr: &[u8], report: &mut InspectionReport) -> Result<()> {
    let size = disk.size();
    for i in 0..4 {
        let e = &mbr[446 + i * 16..462 + i * 16];
        let t = e[4];
        if t == 0 {
            continue;
        }
        let start = le32(e, 8) as u64 * 512;
        let len = le32(e, 12) as u64 * 512;
        if start + len > size {
            report
                .warnings
                .push(format!("partition {} ends past the end of the disk", i + 1));
        }
        report.partitions.push(Partition {
            number: i as u32 + 1,
            type_id: format!("0x{t:02x}"),
            type_name: mbr_type_name(t).map(str::to_string),
            bootable: e[0] == 0x80,
            start,
            size: len,
            filesystem: None,
            name: None,
            efi_system: t == 0xef,
        });
        if matches!(t, 0x05 | 0x0f | 0x85) {
            logical_partitions(disk, start, report)?;
        }
    }
    Ok(())
}

fn logical_partitions(
    disk: &dyn VirtualDisk,
    ext_start: u64,
    report: &mut InspectionReport,
) -> Result<()> {
    let mut ebr = ext_start;
    let mut seen = Vec::new();
    for n in 0..MAX_LOGICAL {
        if seen.contains(&ebr) {
            report
                .warnings
                .push("extended partition chain loops".into());
            return Ok(());
        }
        seen.push(ebr);
        let Some(b) = read(disk, ebr, 512)? else {
            report
                .warnings
                .push("extended partition chain points past the end of the disk".into());
            return Ok(());
        };
        if b[510] != 0x55 || b[511] != 0xaa {
            report
                .warnings
                .push("extended boot record without signature".into());
            return Ok(());
        }
        let e = &b[446..462];
        if e[4] != 0 {
            report.partitions.push(Partition {
                number: 5 + n as u32,
                type_id: format!("0x{:02x}", e[4]),
                type_name: mbr_type_name(e[4]).map(str::to_string),
                bootable: e[0] == 0x80,
                start: ebr + le32(e, 8) as u64 * 512,
                size: le32(e, 12) as u64 * 512,
                filesystem: None,
                name: None,
                efi_system: e[4] == 0xef,
            });
        }
        let next = &b[462..478];
        if next[4] == 0 {
            return Ok(());
        }
        ebr = ext_start + le32(next, 8) as u64 * 512;
    }
    report.warnings.push(format!(
        "more than {MAX_LOGICAL} logical partitions; stopped"
    ));
    Ok(())
}

fn gpt(disk: &dyn VirtualDisk, sector: u32, report: &mut InspectionReport) -> Result<bool> {
    let ss = sector as u64;
    let Some(h) = read(disk, ss, 92)? else {
        return Ok(false);
    };
    if &h[..8] != b"EFI PART" {
        return Ok(false);
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80);
    let esize = le32(&h, 84) as u64;
    if !(128..=4096).contains(&esize) || count > MAX_GPT_ENTRIES {
        report
            .warnings
            .push(format!("GPT header with {count} entries of {esize} bytes"));
        return Ok(false);
    }
    let Some(table) = read(
        disk,
        entries_lba.saturating_mul(ss),
        (count as u64 * esize) as usize,
    )?
    else {
        report
            .warnings
            .push("GPT entries past the end of the disk".into());
        return Ok(false);
    };
    report.partition_table = PartitionTable::Gpt;
    report.sector_size = sector;
    for i in 0..count as usize {
        let e = &table[i * esize as usize..(i + 1) * esize as usize];
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let type_id = guid_string(&e[..16]);
        let first = le64(e, 32);
        let last = le64(e, 40);
        let attrs = le64(e, 48);
        let name: String = char::decode_utf16(
            e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .take_while(|&c| c != '\0')
        .collect();
        let efi = type_id == ESP_GUID;
        report.partitions.push(Partition {
            number: i as u32 + 1,
            type_name: gpt_type_name(&type_id).map(str::to_string),
            type_id,
            // Legacy BIOS bootable attribute (bit 2).
            bootable: attrs & 4 != 0,
            start: first.saturating_mul(ss),
            size: last
                .saturating_sub(first)
                .saturating_add(1)
                .saturating_mul(ss),
            filesystem: None,
            name: (!name.is_empty()).then_some(name),
            efi_system: efi,
        });
    }
    Ok(true)
}
