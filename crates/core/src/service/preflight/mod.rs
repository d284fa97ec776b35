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

mod os;

#[cfg(test)]
use os::parse_version;
use os::{show, GuestOs};

use super::Service;
use crate::config::Limits;
use crate::enums::{LicenseType, OsType};
use crate::error::{DomainError, Result};
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

    /// Every rule (what `preflight_waive` may name).
    pub const ALL: &[&str] = &[
        VOLUME_COUNT,
        VOLUME_SIZE,
        BOOT_VOLUME_SIZE,
        BOOT_DISK_UNPARTITIONED,
        BOOT_DISK_ENCRYPTED,
        BOOT_DISK_UNINSPECTED,
        ENCRYPTED_VOLUME,
        OS_SUPPORTED,
        BOOT_MODE,
        FILESYSTEM,
        DUAL_BOOT,
        LICENSE_TYPE,
        WINDOWS_BYOL,
    ];
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

/// Turns the refusals of the `waived` rules into warnings that say so (the operator's
/// `preflight_waive`).
pub fn waive(findings: &mut [Finding], waived: &[&str]) {
    for f in findings
        .iter_mut()
        .filter(|f| f.is_refusal() && waived.contains(&f.rule.as_str()))
    {
        f.outcome = Outcome::Warn;
        f.message.push_str(" (waived by preflight_waive)");
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

impl Service {
    /// Why `server` cannot get a replication job at all (it vanished from its connector's
    /// inventory, or has no disks), before any import rule is looked at.
    fn unavailable(server: &Server) -> Option<String> {
        let id = &server.server_id;
        if server.vanished_on.is_some() {
            Some(format!(
                "server {id} is no longer in its connector's inventory"
            ))
        } else if server.disks.is_empty() {
            Some(format!("server {id} has no disks to replicate"))
        } else {
            None
        }
    }

    /// The import rules' findings about `server` (see [`preflight`]), with this service's
    /// limits.
    pub fn preflight(&self, server: &Server) -> Vec<Finding> {
        let mut findings = check_server(server, &self.config.limits);
        waive(&mut findings, &self.config.waived_rules());
        findings
    }

    /// Why `server` cannot get a replication job, if it cannot: CreateReplicationJob refuses it
    /// with this message, and GetServers shows it with the server (`cannotReplicateReason`).
    /// Every preflight refusal is named, joined by "; ".
    pub fn cannot_replicate(&self, server: &Server) -> Option<String> {
        self.catalog_view(server).0
    }

    /// What GetServers shows with `server`: [`Service::cannot_replicate`] and the preflight
    /// warnings (`preflightWarnings`), from one evaluation of the rules.
    pub fn catalog_view(&self, server: &Server) -> (Option<String>, Vec<String>) {
        if let Some(why) = Self::unavailable(server) {
            return (Some(why), Vec::new());
        }
        let findings = self.preflight(server);
        let why =
            refusal_reason(&findings).map(|why| format!("server {}: {why}", server.server_id));
        (why, warnings(&findings))
    }

    /// CreateReplicationJob's preflight: the server's rules and the licence asked for. A
    /// refusal answers the first refusal's error (ServerCannotBeReplicatedException, or
    /// InvalidParameterException for a licence) with every refusal's message; otherwise the
    /// warnings that depend on the request, for the job's statusMessage.
    pub(crate) fn preflight_job(
        &self,
        server: &Server,
        license: Option<LicenseType>,
    ) -> Result<Vec<String>> {
        if let Some(why) = Self::unavailable(server) {
            return Err(DomainError::ServerCannotBeReplicated(why));
        }
        let mut findings = check_job(server, &self.config.limits, license);
        waive(&mut findings, &self.config.waived_rules());
        if let Some(first) = findings.iter().find(|f| f.is_refusal()) {
            let why = refusal_reason(&findings).unwrap_or_default();
            let message = format!("server {}: {why}", server.server_id);
            return Err(match first.error() {
                DomainError::InvalidParameter(_) => DomainError::InvalidParameter(message),
                _ => DomainError::ServerCannotBeReplicated(message),
            });
        }
        // The server's own warnings are in the catalog already.
        Ok(findings
            .into_iter()
            .filter(|f| f.rule == rule::WINDOWS_BYOL)
            .map(|f| f.message)
            .collect())
    }
}

#[cfg(test)]
mod tests;
