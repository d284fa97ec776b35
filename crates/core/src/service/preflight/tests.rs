//! One test per rule, each with the case it refuses or warns about and the case it lets pass.

use serde_json::{json, Value};
use time::macros::datetime;

use super::*;
use crate::enums::ServerType;
use crate::model::{Disk, VmServer, VmServerAddress};

const GIB: u64 = 1 << 30;

fn server(sizes: &[u64], os_type: Option<OsType>, inspection: Option<Value>) -> Server {
    Server {
        server_id: "s-1".into(),
        server_type: ServerType::VirtualMachine,
        vm_server: VmServer {
            vm_server_address: VmServerAddress {
                vm_manager_id: "m".into(),
                vm_id: "vm".into(),
            },
            vm_name: None,
            vm_manager_name: None,
            vm_manager_type: None,
            vm_path: None,
        },
        replication_job_id: None,
        replication_job_terminated: None,
        connector_id: "c".into(),
        generation: 1,
        disks: sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| Disk {
                path: format!("/d/{i}.raw"),
                format: Some("raw".into()),
                size_bytes: Some(s),
            })
            .collect(),
        os_type,
        inspection,
        application: None,
        preflight: Vec::new(),
        first_seen_on: datetime!(2026-01-01 00:00 UTC),
        last_seen_on: datetime!(2026-01-01 00:00 UTC),
        vanished_on: None,
    }
}

/// An inspection report of one disk: `(type_id, filesystem)` per partition.
fn report(table: &str, parts: &[(&str, Option<&str>)], whole: Option<&str>) -> Value {
    let efi = parts
        .iter()
        .any(|(t, _)| *t == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" || *t == "0xef");
    json!({
        "disk_size": 10 * GIB,
        "sector_size": 512,
        "partition_table": table,
        "partitions": parts.iter().enumerate().map(|(i, (t, fs))| json!({
            "number": i + 1, "type_id": t, "type_name": null, "bootable": i == 0,
            "start": 1 << 20, "size": GIB, "filesystem": fs,
            "efi_system": *t == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" || *t == "0xef",
        })).collect::<Vec<_>>(),
        "whole_disk_filesystem": whole,
        "efi_system_partition": efi,
        "warnings": [],
    })
}

const ESP: (&str, Option<&str>) = ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", Some("fat32"));
const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

fn inspected(disks: Vec<Value>, os: Option<(&str, &str)>) -> Option<Value> {
    let mut i = json!({ "disks": disks });
    if let Some((name, version)) = os {
        i["os"] = json!({"name": name, "version": version});
    }
    Some(i)
}

fn mbr_linux() -> Value {
    report("mbr", &[("0x83", Some("ext4"))], None)
}

fn check(s: &Server) -> Vec<Finding> {
    check_server(s, &Limits::default())
}

fn of<'a>(findings: &'a [Finding], rule: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.rule == rule).collect()
}

fn only(findings: &[Finding], rule: &str, outcome: Outcome) -> String {
    let hits = of(findings, rule);
    assert_eq!(hits.len(), 1, "one {rule} finding in {findings:#?}");
    assert_eq!(hits[0].outcome, outcome, "{:#?}", hits[0]);
    assert!(
        hits[0].message.starts_with(&format!("{rule}: ")),
        "{}",
        hits[0].message
    );
    hits[0].message.clone()
}

#[test]
fn volume_count_refuses_more_than_the_limit() {
    let wide = server(&[GIB; 23], Some(OsType::Linux), None);
    let m = only(&check(&wide), rule::VOLUME_COUNT, Outcome::Refuse);
    assert!(m.contains("23 volumes") && m.contains("at most 22"), "{m}");
    assert!(of(
        &check(&server(&[GIB; 22], Some(OsType::Linux), None)),
        rule::VOLUME_COUNT
    )
    .is_empty());
    let tight = Limits {
        max_volumes_per_vm: 2,
        ..Limits::default()
    };
    let three = server(&[GIB; 3], Some(OsType::Linux), None);
    assert_eq!(
        of(&check_server(&three, &tight), rule::VOLUME_COUNT).len(),
        1
    );
}

#[test]
fn volume_size_refuses_a_disk_over_16_tib() {
    let s = server(&[GIB, 20 * TIB], Some(OsType::Linux), None);
    let m = only(&check(&s), rule::VOLUME_SIZE, Outcome::Refuse);
    assert_eq!(
        m,
        "volume-size: VM Import supports volumes up to 16 TiB; disk 2 (/d/1.raw) is 20 TiB"
    );
    let edge = server(&[GIB, 16 * TIB], Some(OsType::Linux), None);
    assert!(check(&edge).is_empty(), "{:#?}", check(&edge));
    // The inspected size counts when the connector reported none.
    let mut unsized_ = server(
        &[GIB],
        Some(OsType::Linux),
        inspected(vec![mbr_linux()], None),
    );
    unsized_.disks[0].size_bytes = None;
    unsized_.inspection.as_mut().unwrap()["disks"][0]["disk_size"] = json!(17 * TIB);
    assert_eq!(of(&check(&unsized_), rule::VOLUME_SIZE).len(), 1);
}

#[test]
fn boot_volume_size_refuses_a_boot_disk_over_2_tib_only() {
    let big_boot = server(&[3 * TIB, GIB], Some(OsType::Linux), None);
    let m = only(&check(&big_boot), rule::BOOT_VOLUME_SIZE, Outcome::Refuse);
    assert!(
        m.contains("up to 2 TiB") && m.contains("disk 1 (/d/0.raw), is 3 TiB"),
        "{m}"
    );
    let big_data = server(&[GIB, 3 * TIB], Some(OsType::Linux), None);
    assert!(check(&big_data).is_empty());
    assert_eq!(human_size(1536 * GIB), "1.5 TiB");
    assert_eq!(human_size(512 * GIB), "512 GiB");
}

#[test]
fn an_unpartitioned_boot_disk_is_refused() {
    let blank = report("none", &[], None);
    let s = server(&[GIB], Some(OsType::Linux), inspected(vec![blank], None));
    let m = only(&check(&s), rule::BOOT_DISK_UNPARTITIONED, Outcome::Refuse);
    assert!(
        m.contains("no partition table and no filesystem: nothing to boot"),
        "{m}"
    );
    let whole = report("none", &[], Some("ext4"));
    let s = server(&[GIB], Some(OsType::Linux), inspected(vec![whole], None));
    let m = only(&check(&s), rule::BOOT_DISK_UNPARTITIONED, Outcome::Refuse);
    assert!(m.contains("a ext4 filesystem on the whole disk"), "{m}");
    // An unpartitioned data disk is fine.
    let s = server(
        &[GIB, GIB],
        Some(OsType::Linux),
        inspected(vec![mbr_linux(), report("none", &[], Some("xfs"))], None),
    );
    assert!(check(&s).is_empty(), "{:#?}", check(&s));
}

#[test]
fn an_unreadable_boot_disk_only_warns() {
    let s = server(
        &[GIB],
        Some(OsType::Linux),
        inspected(vec![json!({"error": "cannot open /d/0.raw: gone"})], None),
    );
    let f = check(&s);
    let m = only(&f, rule::BOOT_DISK_UNINSPECTED, Outcome::Warn);
    assert!(m.contains("cannot open /d/0.raw: gone"), "{m}");
    assert_eq!(refusal_reason(&f), None);
    // Nothing inspected at all: nothing said about the disks.
    assert!(check(&server(&[GIB], Some(OsType::Linux), None)).is_empty());
}

#[test]
fn an_encrypted_boot_disk_is_refused_and_an_encrypted_data_disk_warns() {
    let luks_gpt = "CA7D7CCB-63ED-4C53-861C-1742536059CC";
    let boot = report("gpt", &[ESP, (LINUX, Some("ext4")), (luks_gpt, None)], None);
    let s = server(&[GIB], Some(OsType::Linux), inspected(vec![boot], None));
    let m = only(&check(&s), rule::BOOT_DISK_ENCRYPTED, Outcome::Refuse);
    assert!(
        m.contains("LUKS-encrypted partition 3") && m.contains("nothing to boot"),
        "{m}"
    );

    let data = report("mbr", &[("0xe8", None)], None);
    let s = server(
        &[GIB, GIB],
        Some(OsType::Linux),
        inspected(vec![mbr_linux(), data], None),
    );
    let f = check(&s);
    let m = only(&f, rule::ENCRYPTED_VOLUME, Outcome::Warn);
    assert!(
        m.contains("disk 2 (/d/1.raw) has a LUKS-encrypted partition 1"),
        "{m}"
    );
    assert_eq!(refusal_reason(&f), None);
    // A source that names BitLocker as the filesystem.
    let bitlocker = report("mbr", &[("0x07", Some("bitlocker"))], None);
    let s = server(
        &[GIB],
        Some(OsType::Windows),
        inspected(vec![bitlocker], None),
    );
    let m = only(&check(&s), rule::BOOT_DISK_ENCRYPTED, Outcome::Refuse);
    assert!(m.contains("BitLocker"), "{m}");
}

#[test]
fn the_os_must_be_one_vm_import_supports() {
    let with = |os: Option<OsType>, name: Option<(&str, &str)>| {
        check(&server(&[GIB], os, inspected(vec![mbr_linux()], name)))
    };
    let m = only(&with(None, None), rule::OS_SUPPORTED, Outcome::Warn);
    assert!(m.contains("did not report the operating system"), "{m}");

    let m = only(
        &with(Some(OsType::Linux), Some(("Ubuntu", "10.04"))),
        rule::OS_SUPPORTED,
        Outcome::Refuse,
    );
    assert_eq!(
        m,
        "os-supported: VM Import supports Ubuntu 12.04 and later; the VM runs Ubuntu 10.04"
    );
    let m = only(
        &with(
            Some(OsType::Linux),
            Some(("Red Hat Enterprise Linux", "6.0")),
        ),
        rule::OS_SUPPORTED,
        Outcome::Refuse,
    );
    assert!(m.contains("6.0 lacks required drivers"), "{m}");
    let m = only(
        &with(Some(OsType::Linux), Some(("Ubuntu", "24.04"))),
        rule::OS_SUPPORTED,
        Outcome::Warn,
    );
    assert!(m.contains("newer than") && m.contains("up to 18.04"), "{m}");
    let m = only(
        &with(Some(OsType::Linux), Some(("FreeBSD", "13.2"))),
        rule::OS_SUPPORTED,
        Outcome::Warn,
    );
    assert!(
        m.contains("FreeBSD 13.2 is not a Linux release VM Import lists"),
        "{m}"
    );
    assert!(with(Some(OsType::Linux), Some(("Ubuntu", "16.04"))).is_empty());
    assert!(with(Some(OsType::Linux), Some(("CentOS Linux", "7.4.1708"))).is_empty());
    let windows = |name| {
        let ntfs = report("mbr", &[("0x07", Some("ntfs"))], None);
        check(&server(
            &[GIB],
            Some(OsType::Windows),
            inspected(vec![ntfs], name),
        ))
    };
    let f = windows(Some(("Windows Server 2012 R2", "6.3")));
    assert!(f.is_empty(), "{f:#?}");
    // The OS type alone is enough to say nothing.
    assert!(windows(None).is_empty());
    assert!(with(Some(OsType::Linux), None).is_empty());
    // A name alone tells the type.
    let m = only(
        &with(None, Some(("Windows Server 2000", ""))),
        rule::OS_SUPPORTED,
        Outcome::Refuse,
    );
    assert!(m.contains("Windows Server 2003 and later"), "{m}");
}

#[test]
fn uefi_boot_needs_an_os_vm_import_boots_with_uefi() {
    let uefi = || report("gpt", &[ESP, (LINUX, Some("ext4"))], None);
    let with = |os: Option<OsType>, name: Option<(&str, &str)>| {
        check(&server(&[GIB], os, inspected(vec![uefi()], name)))
    };
    let m = only(&with(None, None), rule::BOOT_MODE, Outcome::Warn);
    assert!(
        m.contains("boots with UEFI") && m.contains("OS is unknown"),
        "{m}"
    );
    let m = only(
        &with(Some(OsType::Linux), Some(("Ubuntu", "14.04"))),
        rule::BOOT_MODE,
        Outcome::Refuse,
    );
    assert!(
        m.contains("boots Ubuntu with UEFI from version 16.04, the VM runs Ubuntu 14.04"),
        "{m}"
    );
    let m = only(
        &with(Some(OsType::Linux), Some(("Fedora", "20"))),
        rule::BOOT_MODE,
        Outcome::Refuse,
    );
    assert!(m.contains("cannot boot Fedora Server with UEFI"), "{m}");
    let m = only(
        &with(Some(OsType::Linux), None),
        rule::BOOT_MODE,
        Outcome::Warn,
    );
    assert!(m.contains("version is unknown"), "{m}");
    assert!(with(Some(OsType::Linux), Some(("Ubuntu", "18.04"))).is_empty());
    let win = report(
        "gpt",
        &[ESP, ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", Some("ntfs"))],
        None,
    );
    let s = server(&[GIB], Some(OsType::Windows), inspected(vec![win], None));
    assert!(check(&s).is_empty(), "{:#?}", check(&s));
    // BIOS boot from GPT: Linux warns.
    let bios_gpt = report("gpt", &[(LINUX, Some("ext4"))], None);
    let s = server(&[GIB], Some(OsType::Linux), inspected(vec![bios_gpt], None));
    let m = only(&check(&s), rule::BOOT_MODE, Outcome::Warn);
    assert!(m.contains("BIOS from a GPT partition table"), "{m}");
}

#[test]
fn filesystems_vm_import_cannot_convert() {
    // A Windows boot disk with only ReFS: refused.
    let refs = report("mbr", &[("0x07", Some("refs"))], None);
    let s = server(&[GIB], Some(OsType::Windows), inspected(vec![refs], None));
    let m = only(&check(&s), rule::FILESYSTEM, Outcome::Refuse);
    assert!(
        m.contains("disk 1 (/d/0.raw) partition 1 is refs") && m.contains("converts ntfs"),
        "{m}"
    );
    // A Linux boot disk with ext4 and exFAT: the root converts, so only a warning.
    let mixed = report(
        "mbr",
        &[("0x83", Some("ext4")), ("0x07", Some("exfat"))],
        None,
    );
    let s = server(&[GIB], Some(OsType::Linux), inspected(vec![mixed], None));
    let m = only(&check(&s), rule::FILESYSTEM, Outcome::Warn);
    assert!(m.contains("partition 2 is exfat"), "{m}");
    // NTFS on a Linux data disk: copied as is, a warning.
    let ntfs = report("mbr", &[("0x07", Some("ntfs"))], None);
    let s = server(
        &[GIB, GIB],
        Some(OsType::Linux),
        inspected(vec![mbr_linux(), ntfs], None),
    );
    let m = only(&check(&s), rule::FILESYSTEM, Outcome::Warn);
    assert!(
        m.contains("disk 2 (/d/1.raw) partition 1 is ntfs") && m.contains("copied as is"),
        "{m}"
    );
    // LVM, swap and an EFI FAT are all fine for Linux.
    let lvm = report(
        "gpt",
        &[
            ESP,
            (LINUX, Some("xfs")),
            ("E6D6D379-F507-44C2-A23C-238F2A3DF928", Some("lvm2 pv")),
            ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", Some("swap")),
        ],
        None,
    );
    let s = server(
        &[GIB],
        Some(OsType::Linux),
        inspected(vec![lvm], Some(("Ubuntu", "18.04"))),
    );
    assert!(check(&s).is_empty(), "{:#?}", check(&s));
}

#[test]
fn a_dual_boot_disk_warns() {
    let dual = report(
        "mbr",
        &[("0x07", Some("ntfs")), ("0x83", Some("ext4"))],
        None,
    );
    let s = server(&[GIB], None, inspected(vec![dual], None));
    let f = check(&s);
    let m = only(&f, rule::DUAL_BOOT, Outcome::Warn);
    assert!(m.contains("both NTFS and Linux filesystems"), "{m}");
    assert_eq!(refusal_reason(&f), None);
}

#[test]
fn licence_rules_depend_on_the_os_and_answer_invalid_parameter() {
    let lin = server(&[GIB], Some(OsType::Linux), None);
    let f = check_job(&lin, &Limits::default(), Some(LicenseType::Aws));
    let m = only(&f, rule::LICENSE_TYPE, Outcome::Refuse);
    assert!(m.contains("can only use licenseType BYOL"), "{m}");
    assert!(matches!(f[0].error(), DomainError::InvalidParameter(_)));
    assert!(check_job(&lin, &Limits::default(), Some(LicenseType::Byol)).is_empty());

    let client = server(
        &[GIB],
        Some(OsType::Windows),
        inspected(vec![], Some(("Windows 10 Pro", "10.0.19045"))),
    );
    let f = check_job(&client, &Limits::default(), Some(LicenseType::Aws));
    let m = only(&f, rule::WINDOWS_BYOL, Outcome::Refuse);
    assert!(
        m.contains("Windows 10 Pro, a Windows client edition") && m.contains("only as BYOL"),
        "{m}"
    );
    assert!(matches!(f[0].error(), DomainError::InvalidParameter(_)));

    let srv = server(&[GIB], Some(OsType::Windows), None);
    assert!(check_job(&srv, &Limits::default(), Some(LicenseType::Aws)).is_empty());
    assert!(check_job(&srv, &Limits::default(), None).is_empty());
    let m = only(
        &check_job(&srv, &Limits::default(), Some(LicenseType::Byol)),
        rule::WINDOWS_BYOL,
        Outcome::Warn,
    );
    assert!(m.contains("Dedicated Hosts"), "{m}");
}

#[test]
fn refusals_are_server_errors_and_all_are_named() {
    let s = server(&[20 * TIB; 23], Some(OsType::Linux), None);
    let f = check(&s);
    assert!(matches!(
        f[0].error(),
        DomainError::ServerCannotBeReplicated(_)
    ));
    let why = refusal_reason(&f).unwrap();
    assert!(
        why.starts_with("volume-count: ") && why.contains("; volume-size: "),
        "{why}"
    );
    assert!(warnings(&f).is_empty());
    assert_eq!(parse_version("7.4.1708"), Some((7, 4)));
    assert_eq!(parse_version("SP3"), Some((3, 0)));
    assert_eq!(parse_version("none"), None);
}

#[test]
fn a_waived_rule_warns_instead_and_only_known_rules_can_be_waived() {
    let blank = report("none", &[], None);
    let s = server(&[GIB], Some(OsType::Linux), inspected(vec![blank], None));
    let mut f = check(&s);
    waive(&mut f, &[rule::BOOT_DISK_UNPARTITIONED]);
    let m = only(&f, rule::BOOT_DISK_UNPARTITIONED, Outcome::Warn);
    assert!(m.ends_with("(waived by preflight_waive)"), "{m}");
    assert_eq!(refusal_reason(&f), None);

    let lookup =
        |v: &'static str| move |k: &str| (k == "TERN_PREFLIGHT_WAIVE").then(|| v.to_string());
    let config = crate::Config::from_env(lookup("boot-disk-unpartitioned, volume-size")).unwrap();
    assert_eq!(
        config.waived_rules(),
        vec![rule::BOOT_DISK_UNPARTITIONED, rule::VOLUME_SIZE]
    );
    let err = crate::Config::from_env(lookup("boot-disk")).unwrap_err();
    assert!(err.to_string().contains("preflight_waive"), "{err}");
}
