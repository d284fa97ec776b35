//! Partition tables and filesystems. ext4 and swap come from the real mkfs tools; the other
//! superblocks are written by hand with their documented magic at the documented offset.

use std::path::Path;
use std::process::Command;

use tern_disk::inspect::{inspect, Filesystem, PartitionTable};
use tern_disk::{open, OpenOptions};

const MIB: u64 = 1 << 20;

fn put(img: &mut [u8], at: u64, bytes: &[u8]) {
    img[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

fn mkfs(tool: &str, args: &[&str], size: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("fs");
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    let out = Command::new(tool)
        .args(args)
        .arg(&p)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&p).unwrap()
}

fn mbr_entry(img: &mut [u8], i: usize, boot: bool, t: u8, start_lba: u32, sectors: u32) {
    let e = 446 + i * 16;
    img[e] = if boot { 0x80 } else { 0 };
    img[e + 4] = t;
    put(img, e as u64 + 8, &start_lba.to_le_bytes());
    put(img, e as u64 + 12, &sectors.to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
}

fn report_of(img: &[u8]) -> tern_disk::inspect::InspectionReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("disk.raw");
    std::fs::write(&p, img).unwrap();
    // Through qcow2 too: inspection works on the virtual disk, whatever the container.
    let q = dir.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&p)
        .arg(&q)
        .status()
        .unwrap();
    assert!(st.success());
    let a = inspect(open(&p, &OpenOptions::default()).unwrap().as_ref()).unwrap();
    let b = inspect(
        open(Path::new(&q), &OpenOptions::default())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    assert_eq!(a, b);
    a
}

#[test]
fn mbr_with_real_ext4_swap_and_logical_partitions() {
    let mut img = vec![0u8; (48 * MIB) as usize];
    let ext4 = mkfs("mkfs.ext4", &["-q", "-F"], 8 * MIB);
    let swap = mkfs("mkswap", &[], 4 * MIB);
    put(&mut img, MIB, &ext4);
    put(&mut img, 10 * MIB, &swap);
    mbr_entry(&mut img, 0, true, 0x83, 2048, 16384);
    mbr_entry(&mut img, 1, false, 0x82, 20480, 8192);
    // Extended partition at 16 MiB with two logical partitions: NTFS and XFS signatures.
    mbr_entry(&mut img, 2, false, 0x05, 32768, 32768);
    let ext = 16 * MIB;
    let mut ebr1 = [0u8; 512];
    mbr_entry(&mut ebr1, 0, false, 0x07, 2048, 4096);
    mbr_entry(&mut ebr1, 1, false, 0x05, 8192, 8192);
    put(&mut img, ext, &ebr1);
    put(&mut img, ext + MIB + 3, b"NTFS    ");
    let mut ebr2 = [0u8; 512];
    mbr_entry(&mut ebr2, 0, false, 0x83, 2048, 4096);
    put(&mut img, ext + 4 * MIB, &ebr2);
    put(&mut img, ext + 5 * MIB, b"XFSB");
    let r = report_of(&img);
    assert_eq!(r.partition_table, PartitionTable::Mbr);
    let fs: Vec<_> = r
        .partitions
        .iter()
        .map(|p| (p.number, p.filesystem, p.bootable, p.start, p.size))
        .collect();
    assert_eq!(
        fs,
        vec![
            (1, Some(Filesystem::Ext4), true, MIB, 8 * MIB),
            (2, Some(Filesystem::Swap), false, 10 * MIB, 4 * MIB),
            (3, None, false, 16 * MIB, 16 * MIB),
            (5, Some(Filesystem::Ntfs), false, 17 * MIB, 2 * MIB),
            (6, Some(Filesystem::Xfs), false, 21 * MIB, 2 * MIB),
        ]
    );
    assert!(!r.efi_system_partition);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["partitions"][0]["filesystem"], "ext4");
    assert_eq!(json["partition_table"], "mbr");
}

#[test]
fn ext2_and_ext3_are_told_apart() {
    for (args, want) in [
        (&["-q", "-F", "-t", "ext2"][..], Filesystem::Ext2),
        (&["-q", "-F", "-t", "ext3"][..], Filesystem::Ext3),
    ] {
        let img = mkfs("mkfs.ext4", args, 4 * MIB);
        assert_eq!(report_of(&img).whole_disk_filesystem, Some(want));
    }
}

fn guid_bytes(s: &str) -> Vec<u8> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let h: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    [h[3], h[2], h[1], h[0], h[5], h[4], h[7], h[6]]
        .into_iter()
        .chain(h[8..].iter().copied())
        .collect()
}

#[test]
fn gpt_with_esp_and_many_filesystems() {
    let mut img = vec![0u8; (40 * MIB) as usize];
    mbr_entry(&mut img, 0, false, 0xee, 1, u32::MAX);
    put(&mut img, 512, b"EFI PART");
    put(&mut img, 512 + 72, &2u64.to_le_bytes());
    put(&mut img, 512 + 80, &128u32.to_le_bytes());
    put(&mut img, 512 + 84, &128u32.to_le_bytes());
    // (type GUID, start MiB, length MiB, name, magic, magic offset in the partition)
    type Part<'a> = (&'a str, u64, u64, &'a str, &'a [u8], u64);
    let parts: [Part; 7] = [
        (
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            1,
            2,
            "EFI",
            b"FAT32   ",
            82,
        ),
        (
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            3,
            3,
            "btrfs",
            b"_BHRfS_M",
            65536 + 64,
        ),
        (
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            7,
            3,
            "jfs",
            b"JFS1",
            32768,
        ),
        (
            "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            11,
            3,
            "refs",
            b"ReFS\0\0\0\0",
            3,
        ),
        (
            "E6D6D379-F507-44C2-A23C-238F2A3DF928",
            15,
            3,
            "pv",
            b"LABELONE",
            512,
        ),
        (
            "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            19,
            3,
            "fat16",
            b"FAT16   ",
            54,
        ),
        (
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            23,
            3,
            "empty",
            b"",
            0,
        ),
    ];
    for (i, (t, start, len, name, magic, at)) in parts.iter().enumerate() {
        let e = 1024 + i as u64 * 128;
        put(&mut img, e, &guid_bytes(t));
        put(&mut img, e + 16, &[i as u8 + 1; 16]);
        put(&mut img, e + 32, &(start * 2048).to_le_bytes());
        put(&mut img, e + 40, &((start + len) * 2048 - 1).to_le_bytes());
        let n: Vec<u8> = name.encode_utf16().flat_map(|c| c.to_le_bytes()).collect();
        put(&mut img, e + 56, &n);
        let base = start * MIB;
        put(&mut img, base + at, magic);
        if *name == "pv" {
            put(&mut img, base + 512 + 24, b"LVM2 001");
        }
        if magic.starts_with(b"FAT") {
            put(&mut img, base + 510, &[0x55, 0xaa]);
        }
    }
    let r = report_of(&img);
    assert_eq!(r.partition_table, PartitionTable::Gpt);
    assert!(r.efi_system_partition);
    let got: Vec<_> = r
        .partitions
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.filesystem))
        .collect();
    let want = vec![
        ("EFI".to_string(), Some(Filesystem::Fat32)),
        ("btrfs".into(), Some(Filesystem::Btrfs)),
        ("jfs".into(), Some(Filesystem::Jfs)),
        ("refs".into(), Some(Filesystem::Refs)),
        ("pv".into(), Some(Filesystem::LvmPv)),
        ("fat16".into(), Some(Filesystem::Fat16)),
        ("empty".into(), None),
    ];
    assert_eq!(got, want);
    assert_eq!(r.partitions[0].type_name.as_deref(), Some("EFI System"));
    assert_eq!(r.partitions[0].start, MIB);
    assert_eq!(r.partitions[0].size, 2 * MIB);
}

#[test]
fn looping_extended_chain_is_stopped() {
    let mut img = vec![0u8; (4 * MIB) as usize];
    mbr_entry(&mut img, 0, false, 0x05, 2048, 4096);
    let mut ebr = [0u8; 512];
    mbr_entry(&mut ebr, 0, false, 0x83, 10, 10);
    mbr_entry(&mut ebr, 1, false, 0x05, 0, 10); // points at itself
    put(&mut img, MIB, &ebr);
    let r = report_of(&img);
    assert!(
        r.warnings.iter().any(|w| w.contains("loops")),
        "{:?}",
        r.warnings
    );
}
