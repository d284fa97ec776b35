//! Preflight: the import rules a server must meet before any byte moves (issue 12, item 5).
//!
//! Pure functions over a catalog server as its connector reported it (disks, `osType`, the
//! disk inspection) and `config.limits`. Each rule has a stable name and answers
//! [`Outcome::Refuse`] (CreateReplicationJob refuses the server: the job would fail at import)
//! or [`Outcome::Warn`] (shown with the server in GetServers, not refused). Every message starts
//! with the rule's name and says the value that broke it.
//!
//! The rules are VM Import/Export's, as AWS SMS applied them to its seed imports
//! (awsdocs/vm-import-export-user-guide `vmie_prereqs.md`, 2019: "Operating Systems", "Volume
//! Types and File Systems", "Licensing Options", "Limitations"), with SMS's own 22-volume limit:
//!
//! | rule | outcome | what |
//! |---|---|---|
//! | `volume-count` | refuse | more than `limits.max_volumes_per_vm` disks (SMS: 22) |
//! | `volume-size` | refuse | a disk larger than 16 TiB |
//! | `boot-volume-size` | refuse | a boot disk larger than 2 TiB ("due to MBR limitations") |
//! | `boot-disk-unpartitioned` | refuse | boot disk without a partition table: nothing to boot |
//! | `boot-disk-encrypted` | refuse | boot disk with a LUKS/BitLocker partition: nothing VM Import can boot |
//! | `boot-disk-uninspected` | warn | the connector could not read the boot disk |
//! | `encrypted-volume` | warn | an encrypted partition on a data disk (copied as is) |
//! | `os-supported` | warn / refuse | OS unknown (warn); a version older than VM Import supports (refuse); a version or system VM Import does not list (warn) |
//! | `boot-mode` | warn / refuse | UEFI boot with an unknown OS (warn) or an OS VM Import cannot boot with UEFI (refuse); BIOS boot from a GPT disk on Linux (warn) |
//! | `filesystem` | warn / refuse | boot disk whose filesystems VM Import cannot convert for the OS (refuse); such a filesystem elsewhere (warn) |
//! | `dual-boot` | warn | boot disk holds both NTFS and Linux root filesystems |
//! | `license-type` | refuse (InvalidParameterException) | Linux with licenseType AWS (R14) |
//! | `windows-byol` | refuse (InvalidParameterException) / warn | Windows client with licenseType AWS; Windows with BYOL (Dedicated Host licensing) |
//!
//! What the inventory says: disk 1 is the boot disk (Tern's convention, root first); the
//! inspection is `{"disks": [<tern_disk::inspect report> | {"error": …}, …]}` (see
//! `tern_connector::inventory`); a source that knows the guest OS may add
//! `"os": {"name": "Ubuntu", "version": "22.04"}` to it. What the inventory cannot tell (free
//! space, 32-bit guests, P2V origin, language packs, custom kernels) is not checked.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Limits;
use crate::enums::{LicenseType, OsType};
use crate::error::DomainError;
use crate::model::Server;

/// Stable rule names.
pub mod rule {
    pub const VOLUME_COUNT: &str = "volume-count";
    pub const VOLUME_SIZE: &str = "volume-size";
    pub const BOOT_VOLUME_SIZE: &str = "boot-volume-size";
    pub const BOOT_DISK_UNPARTITIONED: &str = "boot-disk-unpartitioned";
    pub const BOOT_DISK_ENCRYPTED: &str = "boot-disk-encrypted";
    pub const BOOT_DISK_UNINSPECTED: &str = "boot-disk-uninspected";
    pub const ENCRYPTED_VOLUME: &str = "encrypted-volume";
    pub const OS_SUPPORTED: &str = "os-supported";
    pub const BOOT_MODE: &str = "boot-mode";
    pub const FILESYSTEM: &str = "filesystem";
    pub const DUAL_BOOT: &str = "dual-boot";
    pub const LICENSE_TYPE: &str = "license-type";
    pub const WINDOWS_BYOL: &str = "windows-byol";
}

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
/// VM Import: "non-bootable volumes … cannot be bigger than 16 TiB".
pub const MAX_VOLUME_BYTES: u64 = 16 * TIB;
/// VM Import: "boot volume cannot exceed 2 TiB (uncompressed) due to MBR limitations".
pub const MAX_BOOT_VOLUME_BYTES: u64 = 2 * TIB;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The job would fail at import: CreateReplicationJob refuses it.
    Refuse,
    /// Shown, not refused.
    Warn,
}

/// What one rule found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub rule: String,
    pub outcome: Outcome,
    /// Starts with the rule's name: `"volume-size: VM Import supports …"`.
    pub message: String,
}

impl Finding {
    fn new(rule: &str, outcome: Outcome, text: impl std::fmt::Display) -> Self {
        Self {
            rule: rule.to_string(),
            outcome,
            message: format!("{rule}: {text}"),
        }
    }

    fn refuse(rule: &str, text: impl std::fmt::Display) -> Self {
        Self::new(rule, Outcome::Refuse, text)
    }

    fn warn(rule: &str, text: impl std::fmt::Display) -> Self {
        Self::new(rule, Outcome::Warn, text)
    }

    pub fn is_refusal(&self) -> bool {
        self.outcome == Outcome::Refuse
    }

    /// The error CreateReplicationJob answers for this refusal: a licence the request asked
    /// for is a bad parameter (InvalidParameterException, as R14 is answered today); anything
    /// about the server itself is ServerCannotBeReplicatedException.
    pub fn error(&self) -> DomainError {
        match self.rule.as_str() {
            rule::LICENSE_TYPE | rule::WINDOWS_BYOL => {
                DomainError::InvalidParameter(self.message.clone())
            }
            _ => DomainError::ServerCannotBeReplicated(self.message.clone()),
        }
    }
}

/// The refusals' messages joined, or `None` when nothing is refused.
pub fn refusal_reason(findings: &[Finding]) -> Option<String> {
    let parts: Vec<&str> = findings
        .iter()
        .filter(|f| f.is_refusal())
        .map(|f| f.message.as_str())
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The warnings' messages.
pub fn warnings(findings: &[Finding]) -> Vec<String> {
    findings
        .iter()
        .filter(|f| !f.is_refusal())
        .map(|f| f.message.clone())
        .collect()
}

/// Sizes as people read them: whole TiB or GiB when exact, else one decimal.
pub fn human_size(bytes: u64) -> String {
    let (unit, name) = if bytes >= TIB {
        (TIB, "TiB")
    } else {
        (GIB, "GiB")
    };
    if bytes.is_multiple_of(unit) {
        format!("{} {name}", bytes / unit)
    } else {
        format!("{:.1} {name}", bytes as f64 / unit as f64)
    }
}

/// One disk as the rules see it.
struct DiskView<'a> {
    /// 1-based, as the messages say it.
    number: usize,
    path: &'a str,
    size: Option<u64>,
    report: Option<&'a Value>,
}

impl DiskView<'_> {
    fn label(&self) -> String {
        format!("disk {} ({})", self.number, self.path)
    }

    fn error(&self) -> Option<&str> {
        self.report
            .and_then(|r| r.get("error"))
            .and_then(Value::as_str)
    }

    /// The inspection report, when the disk was read.
    fn inspected(&self) -> Option<&Value> {
        self.report.filter(|r| r.get("partition_table").is_some())
    }

    fn partitions(&self) -> impl Iterator<Item = &Value> {
        self.inspected()
            .and_then(|r| r.get("partitions"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }

    /// `(partition number or None for the whole disk, filesystem name)` of every filesystem.
    fn filesystems(&self) -> Vec<(Option<u64>, &str)> {
        let mut out: Vec<(Option<u64>, &str)> = self
            .partitions()
            .filter_map(|p| {
                let fs = p.get("filesystem").and_then(Value::as_str)?;
                Some((p.get("number").and_then(Value::as_u64), fs))
            })
            .collect();
        if let Some(fs) = self
            .inspected()
            .and_then(|r| r.get("whole_disk_filesystem"))
            .and_then(Value::as_str)
        {
            out.push((None, fs));
        }
        out
    }

    /// The first encrypted partition: `(where, what)`.
    fn encrypted(&self) -> Option<(String, &'static str)> {
        for p in self.partitions() {
            let type_id = p.get("type_id").and_then(Value::as_str).unwrap_or("");
            let fs = p.get("filesystem").and_then(Value::as_str).unwrap_or("");
            let kind = encryption_kind(type_id, fs);
            if let Some(kind) = kind {
                let n = p.get("number").and_then(Value::as_u64).unwrap_or(0);
                return Some((format!("partition {n}"), kind));
            }
        }
        let whole = self
            .inspected()
            .and_then(|r| r.get("whole_disk_filesystem"))
            .and_then(Value::as_str)?;
        encryption_kind("", whole).map(|k| ("the whole disk".to_string(), k))
    }

    fn efi(&self) -> bool {
        self.inspected()
            .and_then(|r| r.get("efi_system_partition"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    fn table(&self) -> Option<&str> {
        self.inspected()
            .and_then(|r| r.get("partition_table"))
            .and_then(Value::as_str)
    }
}

/// LUKS by its GPT type GUID or MBR type byte, or any encryption a source names as the
/// filesystem (`luks`, `bitlocker`).
fn encryption_kind(type_id: &str, fs: &str) -> Option<&'static str> {
    const LUKS_GPT: &str = "CA7D7CCB-63ED-4C53-861C-1742536059CC";
    if type_id.eq_ignore_ascii_case(LUKS_GPT) || type_id.eq_ignore_ascii_case("0xe8") {
        return Some("LUKS");
    }
    match fs.to_ascii_lowercase().as_str() {
        "luks" | "crypto_luks" | "luks1" | "luks2" => Some("LUKS"),
        "bitlocker" => Some("BitLocker"),
        _ => None,
    }
}

fn disks(server: &Server) -> Vec<DiskView<'_>> {
    let reports = server
        .inspection
        .as_ref()
        .and_then(|i| i.get("disks"))
        .and_then(Value::as_array);
    server
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let report = reports.and_then(|r| r.get(i));
            let inspected_size = report
                .and_then(|r| r.get("disk_size"))
                .and_then(Value::as_u64);
            DiskView {
                number: i + 1,
                path: &d.path,
                size: d.size_bytes.or(inspected_size),
                report,
            }
        })
        .collect()
}

/// The guest OS as far as the inventory knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GuestOs {
    pub os_type: Option<OsType>,
    /// `inspection.os.name`, e.g. "Ubuntu", "Windows Server 2019".
    pub name: Option<String>,
    /// `inspection.os.version`, e.g. "22.04", "2019".
    pub version: Option<String>,
}

impl GuestOs {
    fn of(server: &Server) -> Self {
        let os = server.inspection.as_ref().and_then(|i| i.get("os"));
        let text = |k: &str| {
            os.and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let name = text("name");
        let os_type = server.os_type.or_else(|| {
            let n = name.as_deref()?.to_ascii_lowercase();
            Some(if n.contains("windows") {
                OsType::Windows
            } else {
                OsType::Linux
            })
        });
        Self {
            os_type,
            name,
            version: text("version"),
        }
    }

    fn describe(&self) -> String {
        match (&self.name, &self.version) {
            // A name that carries its version ("Windows Server 2019") says enough.
            (Some(n), Some(v)) if !n.contains(|c: char| c.is_ascii_digit()) => format!("{n} {v}"),
            (Some(n), _) => n.clone(),
            (None, Some(v)) => v.clone(),
            (None, None) => "an unknown version".into(),
        }
    }

    /// Known well enough to be checked against VM Import's list.
    fn release(&self) -> Option<Release> {
        release(self.name.as_deref()?, self.version.as_deref())
    }
}

/// A system of VM Import's list and the version found.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Release {
    family: &'static Family,
    version: (u32, u32),
}

struct Family {
    /// Lower-case words that identify it in `os.name`.
    keys: &'static [&'static str],
    display: &'static str,
    windows: bool,
    /// Windows client editions are licensed only as BYOL.
    client: bool,
    /// Oldest and newest version VM Import lists (`(major, minor)`).
    oldest: (u32, u32),
    newest: (u32, u32),
    /// Versions inside the range VM Import excludes, with why.
    excluded: &'static [((u32, u32), &'static str)],
    /// Oldest version that boots with UEFI after import (`None`: UEFI not supported).
    uefi_from: Option<(u32, u32)>,
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.display)
    }
}

impl PartialEq for Family {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// VM Import's operating systems (vmie_prereqs.md as SMS used it, newest versions as listed
/// in 2019; a newer version only warns). Windows Server versions are years; client versions
/// are the edition number (8.1 = (8, 1)).
static FAMILIES: &[Family] = &[
    Family {
        keys: &["windows server"],
        display: "Windows Server",
        windows: true,
        client: false,
        oldest: (2003, 0),
        newest: (2019, 0),
        excluded: &[],
        uefi_from: Some((2003, 0)),
    },
    Family {
        keys: &["windows"],
        display: "Windows",
        windows: true,
        client: true,
        oldest: (7, 0),
        newest: (10, 0),
        excluded: &[],
        uefi_from: Some((7, 0)),
    },
    Family {
        keys: &["ubuntu"],
        display: "Ubuntu",
        windows: false,
        client: false,
        oldest: (12, 4),
        newest: (18, 4),
        excluded: &[],
        uefi_from: Some((16, 4)),
    },
    Family {
        keys: &["red hat", "rhel"],
        display: "Red Hat Enterprise Linux",
        windows: false,
        client: false,
        oldest: (5, 1),
        newest: (7, 6),
        excluded: &[((6, 0), "6.0 lacks required drivers")],
        uefi_from: Some((7, 0)),
    },
    Family {
        keys: &["centos"],
        display: "CentOS",
        windows: false,
        client: false,
        oldest: (5, 1),
        newest: (7, 6),
        excluded: &[((6, 0), "6.0 lacks required drivers")],
        uefi_from: Some((7, 0)),
    },
    Family {
        keys: &["oracle"],
        display: "Oracle Linux",
        windows: false,
        client: false,
        oldest: (5, 10),
        newest: (7, 6),
        excluded: &[],
        uefi_from: Some((7, 0)),
    },
    Family {
        keys: &["suse", "sles"],
        display: "SUSE Linux Enterprise Server",
        windows: false,
        client: false,
        oldest: (11, 1),
        newest: (12, 3),
        excluded: &[],
        uefi_from: Some((12, 3)),
    },
    Family {
        keys: &["debian"],
        display: "Debian",
        windows: false,
        client: false,
        oldest: (6, 0),
        newest: (8, 0),
        excluded: &[],
        uefi_from: Some((10, 0)),
    },
    Family {
        keys: &["fedora"],
        display: "Fedora Server",
        windows: false,
        client: false,
        oldest: (19, 0),
        newest: (21, 0),
        excluded: &[],
        uefi_from: None,
    },
    Family {
        keys: &["amazon linux"],
        display: "Amazon Linux",
        windows: false,
        client: false,
        oldest: (2, 0),
        newest: (2, 0),
        excluded: &[],
        uefi_from: Some((2, 0)),
    },
];

/// `"22.04"` → (22, 4); `"7"` → (7, 0); `"SP3"`-style suffixes are ignored.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let mut parts = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

fn release(name: &str, version: Option<&str>) -> Option<Release> {
    let lower = name.to_ascii_lowercase();
    let family = FAMILIES
        .iter()
        .find(|f| f.keys.iter().any(|k| lower.contains(k)))?;
    let version = if family.windows {
        // The name says it ("Windows Server 2012 R2", "Windows 8.1 Pro"); a version alone
        // counts when it is one the list uses (a year for servers, not the kernel's "10.0").
        let numeric = |t: &str| {
            t.starts_with(|c: char| c.is_ascii_digit())
                .then(|| parse_version(t))
                .flatten()
        };
        let from_name = lower.split_whitespace().find_map(numeric);
        let from_version = version
            .and_then(numeric)
            .filter(|v| family.client || v.0 >= 2000);
        from_name.or(from_version)?
    } else {
        parse_version(version?)?
    };
    Some(Release { family, version })
}

/// A version as the family writes it: "2019", "8.1", "12.04", "7.6".
fn show((major, minor): (u32, u32), family: &Family) -> String {
    if family.windows && minor == 0 {
        major.to_string()
    } else if family.display == "Ubuntu" {
        format!("{major}.{minor:02}")
    } else {
        format!("{major}.{minor}")
    }
}

/// Findings about the server itself: run when an inventory report is stored, shown by
/// GetServers, and again at CreateReplicationJob.
pub fn check_server(server: &Server, limits: &Limits) -> Vec<Finding> {
    let mut out = Vec::new();
    let disks = disks(server);
    let os = GuestOs::of(server);
    volume_rules(&disks, limits, &mut out);
    if let Some(boot) = disks.first() {
        boot_disk_rules(boot, &mut out);
        boot_mode_rule(boot, &os, &mut out);
        filesystem_rules(&disks, &os, &mut out);
        dual_boot_rule(boot, &mut out);
    }
    for d in disks.iter().skip(1) {
        if let Some((at, kind)) = d.encrypted() {
            out.push(Finding::warn(
                rule::ENCRYPTED_VOLUME,
                format!(
                    "{} has a {kind}-encrypted {at}; it is copied as is (VM Import does not support encrypted guest volumes, so the instance must unlock it itself)",
                    d.label()
                ),
            ));
        }
    }
    os_rule(&os, &mut out);
    out
}

/// [`check_server`] plus the rules that depend on CreateReplicationJob's `licenseType`.
pub fn check_job(server: &Server, limits: &Limits, license: Option<LicenseType>) -> Vec<Finding> {
    let mut out = check_server(server, limits);
    license_rules(server, license, &mut out);
    out
}

fn volume_rules(disks: &[DiskView<'_>], limits: &Limits, out: &mut Vec<Finding>) {
    let max = limits.max_volumes_per_vm;
    if disks.len() > max as usize {
        out.push(Finding::refuse(
            rule::VOLUME_COUNT,
            format!(
                "the server has {} volumes; at most {max} volumes per VM can be replicated (limits.max_volumes_per_vm)",
                disks.len()
            ),
        ));
    }
    for d in disks {
        let Some(size) = d.size else { continue };
        if size > MAX_VOLUME_BYTES {
            out.push(Finding::refuse(
                rule::VOLUME_SIZE,
                format!(
                    "VM Import supports volumes up to {}; {} is {}",
                    human_size(MAX_VOLUME_BYTES),
                    d.label(),
                    human_size(size)
                ),
            ));
        } else if d.number == 1 && size > MAX_BOOT_VOLUME_BYTES {
            out.push(Finding::refuse(
                rule::BOOT_VOLUME_SIZE,
                format!(
                    "VM Import supports boot volumes up to {} (MBR limit); the boot disk, {}, is {}",
                    human_size(MAX_BOOT_VOLUME_BYTES),
                    d.label(),
                    human_size(size)
                ),
            ));
        }
    }
}

fn boot_disk_rules(boot: &DiskView<'_>, out: &mut Vec<Finding>) {
    if let Some(e) = boot.error() {
        out.push(Finding::warn(
            rule::BOOT_DISK_UNINSPECTED,
            format!(
                "the connector could not read the boot disk, {}, so the boot checks did not run: {e}",
                boot.label()
            ),
        ));
        return;
    }
    if boot.table() == Some("none") {
        let what = match boot
            .inspected()
            .and_then(|r| r.get("whole_disk_filesystem"))
            .and_then(Value::as_str)
        {
            Some(fs) if encryption_kind("", fs).is_none() => {
                format!("a {fs} filesystem on the whole disk and no partition table")
            }
            Some(fs) => format!("{fs} encryption on the whole disk and no partition table"),
            None => "no partition table and no filesystem".to_string(),
        };
        out.push(Finding::refuse(
            rule::BOOT_DISK_UNPARTITIONED,
            format!(
                "the boot disk, {}, has {what}: nothing to boot (VM Import needs a partitioned boot volume)",
                boot.label()
            ),
        ));
        return;
    }
    if let Some((at, kind)) = boot.encrypted() {
        out.push(Finding::refuse(
            rule::BOOT_DISK_ENCRYPTED,
            format!(
                "the boot disk, {}, has a {kind}-encrypted {at}: VM Import cannot convert encrypted volumes and the instance cannot unlock them at boot, so there is nothing to boot",
                boot.label()
            ),
        ));
    }
}

fn boot_mode_rule(boot: &DiskView<'_>, os: &GuestOs, out: &mut Vec<Finding>) {
    if boot.inspected().is_none() {
        return;
    }
    if boot.efi() {
        match (os.os_type, os.release()) {
            (None, _) => out.push(Finding::warn(
                rule::BOOT_MODE,
                format!(
                    "{} boots with UEFI (it has an EFI system partition), which VM Import supports only for some operating systems, and the OS is unknown",
                    boot.label()
                ),
            )),
            (_, Some(r)) => match r.family.uefi_from {
                Some(from) if r.version >= from => {}
                Some(from) => out.push(Finding::refuse(
                    rule::BOOT_MODE,
                    format!(
                        "{} boots with UEFI; VM Import boots {} with UEFI from version {}, the VM runs {}",
                        boot.label(),
                        r.family.display,
                        show(from, r.family),
                        os.describe()
                    ),
                )),
                None => out.push(Finding::refuse(
                    rule::BOOT_MODE,
                    format!(
                        "{} boots with UEFI; VM Import cannot boot {} with UEFI (the VM runs {})",
                        boot.label(),
                        r.family.display,
                        os.describe()
                    ),
                )),
            },
            (Some(OsType::Linux), None) => out.push(Finding::warn(
                rule::BOOT_MODE,
                format!(
                    "{} boots Linux with UEFI; VM Import supports UEFI only for some distributions and versions, and the version is unknown",
                    boot.label()
                ),
            )),
            (Some(OsType::Windows), None) => {}
        }
    } else if boot.table() == Some("gpt") && os.os_type != Some(OsType::Windows) {
        out.push(Finding::warn(
            rule::BOOT_MODE,
            format!(
                "{} boots with BIOS from a GPT partition table; VM Import converts Linux boot volumes only with MBR partitions",
                boot.label()
            ),
        ));
    }
}

const LINUX_FS: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs", "jfs", "lvm2 pv"];
const WINDOWS_FS: &[&str] = &["ntfs"];
/// Needed around the root filesystem; never a reason to refuse.
const NEUTRAL_FS: &[&str] = &["swap", "fat12", "fat16", "fat32"];

fn filesystem_rules(disks: &[DiskView<'_>], os: &GuestOs, out: &mut Vec<Finding>) {
    let convertible: Vec<&str> = match os.os_type {
        Some(OsType::Linux) => LINUX_FS.to_vec(),
        Some(OsType::Windows) => WINDOWS_FS.to_vec(),
        None => LINUX_FS.iter().chain(WINDOWS_FS).copied().collect(),
    };
    let system = match os.os_type {
        Some(OsType::Linux) => "Linux",
        Some(OsType::Windows) => "Windows",
        None => "any system",
    };
    let mut unconvertible_boot = Vec::new();
    let mut convertible_boot = false;
    for d in disks {
        for (part, fs) in d.filesystems() {
            let fs_l = fs.to_ascii_lowercase();
            if NEUTRAL_FS.contains(&fs_l.as_str()) || encryption_kind("", &fs_l).is_some() {
                continue;
            }
            if convertible.contains(&fs_l.as_str()) {
                convertible_boot |= d.number == 1;
                continue;
            }
            let at = match part {
                Some(n) => format!("{} partition {n}", d.label()),
                None => d.label(),
            };
            if d.number == 1 {
                unconvertible_boot.push(format!("{at} is {fs}"));
            } else {
                out.push(Finding::warn(
                    rule::FILESYSTEM,
                    format!(
                        "{at} is {fs}, which VM Import cannot convert for {system} ({}); it is copied as is",
                        convertible.join(", ")
                    ),
                ));
            }
        }
    }
    if unconvertible_boot.is_empty() {
        return;
    }
    let text = format!(
        "{}, which VM Import cannot convert for {system} (it converts {})",
        unconvertible_boot.join(", "),
        convertible.join(", ")
    );
    out.push(if convertible_boot {
        Finding::warn(rule::FILESYSTEM, text)
    } else {
        Finding::refuse(
            rule::FILESYSTEM,
            format!("{text}; the boot disk has no filesystem it can convert"),
        )
    });
}

fn dual_boot_rule(boot: &DiskView<'_>, out: &mut Vec<Finding>) {
    let fss: Vec<String> = boot
        .filesystems()
        .into_iter()
        .map(|(_, f)| f.to_ascii_lowercase())
        .collect();
    let windows = fss.iter().any(|f| f == "ntfs");
    let linux = fss
        .iter()
        .any(|f| LINUX_FS.contains(&f.as_str()) && f != "lvm2 pv");
    if windows && linux {
        out.push(Finding::warn(
            rule::DUAL_BOOT,
            format!(
                "the boot disk, {}, holds both NTFS and Linux filesystems; VM Import does not support dual-boot configurations",
                boot.label()
            ),
        ));
    }
}

fn os_rule(os: &GuestOs, out: &mut Vec<Finding>) {
    let Some(os_type) = os.os_type else {
        out.push(Finding::warn(
            rule::OS_SUPPORTED,
            "the connector did not report the operating system; VM Import imports only the systems it lists, which is checked only at import",
        ));
        return;
    };
    if os.name.is_none() {
        return;
    }
    let Some(r) = os.release() else {
        out.push(Finding::warn(
            rule::OS_SUPPORTED,
            format!(
                "{} is not a {} release VM Import lists (or its version is unknown); the import may fail",
                os.describe(),
                if os_type == OsType::Windows { "Windows" } else { "Linux" }
            ),
        ));
        return;
    };
    let f = r.family;
    if r.version < f.oldest {
        out.push(Finding::refuse(
            rule::OS_SUPPORTED,
            format!(
                "VM Import supports {} {} and later; the VM runs {}",
                f.display,
                show(f.oldest, f),
                os.describe()
            ),
        ));
    } else if let Some((_, why)) = f.excluded.iter().find(|(v, _)| *v == r.version) {
        out.push(Finding::refuse(
            rule::OS_SUPPORTED,
            format!(
                "VM Import does not support {} {why}; the VM runs {}",
                f.display,
                os.describe()
            ),
        ));
    } else if r.version > f.newest {
        out.push(Finding::warn(
            rule::OS_SUPPORTED,
            format!(
                "{} is newer than the {} versions VM Import listed (up to {}); the import may fail",
                os.describe(),
                f.display,
                show(f.newest, f)
            ),
        ));
    }
}

fn license_rules(server: &Server, license: Option<LicenseType>, out: &mut Vec<Finding>) {
    let os = GuestOs::of(server);
    let id = &server.server_id;
    match (os.os_type, license) {
        (Some(OsType::Linux), Some(LicenseType::Aws)) => out.push(Finding::refuse(
            rule::LICENSE_TYPE,
            format!("server {id} runs Linux, which can only use licenseType BYOL"),
        )),
        (Some(OsType::Windows), Some(l)) => {
            let client = os.release().is_some_and(|r| r.family.client);
            if client && l == LicenseType::Aws {
                out.push(Finding::refuse(
                    rule::WINDOWS_BYOL,
                    format!(
                        "server {id} runs {}, a Windows client edition, which VM Import licenses only as BYOL; licenseType AWS was asked",
                        os.describe()
                    ),
                ));
            } else if l == LicenseType::Byol {
                out.push(Finding::warn(
                    rule::WINDOWS_BYOL,
                    format!(
                        "server {id} runs Windows with licenseType BYOL: VM Import keeps your Microsoft licence; instances must run on Dedicated Hosts and activate with your own keys"
                    ),
                ));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "preflight_tests.rs"]
mod tests;
