//! The libvirt XML Tern reads and writes, without libvirt: a domain's description (for the
//! inventory and for the disks a backup exports), and the `<domaincheckpoint>` and
//! `<domainbackup mode='pull'>` documents a run hands to `virDomainBackupBegin`.
//!
//! Compiled without the `libvirt` feature too, so its tests run on every machine.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// BIOS or UEFI, from the domain's `<os>` element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

/// One `<disk device='disk'>` of a domain (CD-ROMs and floppies are not disks to migrate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainDisk {
    /// `<target dev>`: the name a backup exports the disk under (`vda`, `sdb`).
    pub target: String,
    /// `<source file>` or `<source dev>`; none for network or volume disks.
    pub source: Option<PathBuf>,
    /// `<driver type>`: `qcow2`, `raw`, …
    pub format: Option<String>,
    pub bus: Option<String>,
    /// Capacity in bytes (`virDomainGetBlockInfo`); filled in by the live inventory.
    pub virtual_size: Option<u64>,
}

/// One `<interface>` of a domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainNic {
    /// `<interface type>`: `network`, `bridge`, `user`, …
    pub kind: String,
    pub mac: Option<String>,
    /// The network or bridge it is attached to.
    pub source: Option<String>,
    pub model: Option<String>,
}

/// What the inventory reports of a domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainInfo {
    pub name: String,
    pub uuid: String,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    pub disks: Vec<DomainDisk>,
    pub nics: Vec<DomainNic>,
    /// Running (a backup needs a running domain); filled in by the live inventory.
    pub running: bool,
}

fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    })
}

fn child<'a>(n: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    n.children().find(|c| c.has_tag_name(name))
}

/// Parses a domain's XML description (`virDomainGetXMLDesc`).
pub fn parse_domain(xml: &str) -> Result<DomainInfo, String> {
    let doc =
        roxmltree::Document::parse(xml).map_err(|e| format!("domain XML does not parse: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return Err(format!(
            "expected a <domain> document, found <{}>",
            root.tag_name().name()
        ));
    }
    let text = |name: &str| child(root, name).and_then(|n| n.text()).map(str::trim);
    let name = text("name").ok_or("the domain has no <name>")?.to_string();
    let uuid = text("uuid")
        .ok_or_else(|| format!("domain {name} has no <uuid>"))?
        .to_string();
    let vcpus = match text("vcpu") {
        Some(v) => v
            .parse()
            .map_err(|_| format!("domain {name}: <vcpu> {v:?} is not a number"))?,
        None => 1,
    };
    let memory_bytes = match child(root, "memory") {
        Some(m) => {
            let v: u64 = m
                .text()
                .map(str::trim)
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| format!("domain {name}: <memory> is not a number"))?;
            let unit = m.attribute("unit").unwrap_or("KiB");
            let mul = unit_bytes(unit)
                .ok_or_else(|| format!("domain {name}: unknown memory unit {unit:?}"))?;
            v.checked_mul(mul)
                .ok_or_else(|| format!("domain {name}: <memory> overflows"))?
        }
        None => 0,
    };
    let firmware = match child(root, "os") {
        Some(os) => {
            let loader = child(os, "loader");
            let efi_loader = loader.is_some_and(|l| {
                l.attribute("type") == Some("pflash")
                    || l.text()
                        .is_some_and(|t| t.contains("OVMF") || t.contains("edk2"))
            });
            if os.attribute("firmware") == Some("efi") || efi_loader {
                Firmware::Uefi
            } else {
                Firmware::Bios
            }
        }
        None => Firmware::Bios,
    };
    let mut disks = Vec::new();
    let mut nics = Vec::new();
    if let Some(devices) = child(root, "devices") {
        for d in devices.children().filter(|c| c.has_tag_name("disk")) {
            if d.attribute("device").unwrap_or("disk") != "disk" {
                continue;
            }
            let target = child(d, "target")
                .and_then(|t| t.attribute("dev"))
                .ok_or_else(|| format!("domain {name}: a disk without <target dev>"))?;
            let source = child(d, "source")
                .and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")))
                .map(PathBuf::from);
            disks.push(DomainDisk {
                target: target.to_string(),
                source,
                format: child(d, "driver")
                    .and_then(|t| t.attribute("type"))
                    .map(str::to_string),
                bus: child(d, "target")
                    .and_then(|t| t.attribute("bus"))
                    .map(str::to_string),
                virtual_size: None,
            });
        }
        for i in devices.children().filter(|c| c.has_tag_name("interface")) {
            let src = child(i, "source");
            nics.push(DomainNic {
                kind: i.attribute("type").unwrap_or("unknown").to_string(),
                mac: child(i, "mac")
                    .and_then(|m| m.attribute("address"))
                    .map(str::to_string),
                source: src
                    .and_then(|s| s.attribute("network").or_else(|| s.attribute("bridge")))
                    .map(str::to_string),
                model: child(i, "model")
                    .and_then(|m| m.attribute("type"))
                    .map(str::to_string),
            });
        }
    }
    Ok(DomainInfo {
        name,
        uuid,
        vcpus,
        memory_bytes,
        firmware,
        disks,
        nics,
        running: false,
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The checkpoint a run creates with its backup: a bitmap on each disk, named `name`.
pub fn checkpoint_xml(name: &str, targets: &[&str]) -> String {
    let mut s = format!("<domaincheckpoint><name>{}</name><disks>", escape(name));
    for t in targets {
        s.push_str(&format!("<disk name='{}' checkpoint='bitmap'/>", escape(t)));
    }
    s.push_str("</disks></domaincheckpoint>");
    s
}

/// A pull-mode backup of `targets` served over NBD on the unix socket `socket`, each disk's
/// scratch (the copy-before-write overlay) in `scratch_dir`; incremental from checkpoint
/// `incremental` when given (then each export carries the bitmap `backup-<target>`).
pub fn backup_xml(
    socket: &Path,
    scratch_dir: &Path,
    targets: &[&str],
    incremental: Option<&str>,
) -> String {
    let mut s = String::from("<domainbackup mode='pull'>");
    if let Some(c) = incremental {
        s.push_str(&format!("<incremental>{}</incremental>", escape(c)));
    }
    s.push_str(&format!(
        "<server transport='unix' socket='{}'/><disks>",
        escape(&socket.to_string_lossy())
    ));
    for t in targets {
        let scratch = scratch_dir.join(format!("scratch-{t}.qcow2"));
        s.push_str(&format!(
            "<disk name='{}' backup='yes' type='file'><scratch file='{}'/></disk>",
            escape(t),
            escape(&scratch.to_string_lossy())
        ));
    }
    s.push_str("</disks></domainbackup>");
    s
}

/// The unix socket of a running pull backup (`virDomainBackupGetXMLDesc`), if it has one.
pub fn backup_socket(xml: &str) -> Option<PathBuf> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    if !root.has_tag_name("domainbackup") {
        return None;
    }
    let server = child(root, "server")?;
    if server.attribute("transport") != Some("unix") {
        return None;
    }
    server.attribute("socket").map(PathBuf::from)
}

/// The NBD meta context of an incremental backup's export of `target`: libvirt names the
/// exported bitmap `backup-<target>`.
pub fn backup_bitmap_context(target: &str) -> String {
    tern_nbd::dirty_bitmap_context(&format!("backup-{target}"))
}

/// Shell-style match of `name` against `pattern`: `*` any run, `?` one character, else literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether a domain passes the `domains` filters (none: every domain).
pub fn selected(filters: &[String], name: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| glob_match(f, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='kvm' id='3'>
  <name>web01</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>2</vcpu>
  <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source bridge='br0'/>
    </interface>
  </devices>
</domain>"#;

    #[test]
    fn a_domain_is_read_with_its_disks_nics_and_firmware() {
        let d = parse_domain(DOMAIN).unwrap();
        assert_eq!(d.name, "web01");
        assert_eq!(d.uuid, "4dea22b3-1d52-d8f3-2516-782e98ab3fa0");
        assert_eq!(d.vcpus, 2);
        assert_eq!(d.memory_bytes, 2 << 30);
        assert_eq!(d.firmware, Firmware::Uefi);
        // The CD-ROM is not a disk to migrate.
        let targets: Vec<_> = d.disks.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(targets, ["vda", "vdb"]);
        assert_eq!(d.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(
            d.disks[0].source.as_deref(),
            Some(Path::new("/var/lib/libvirt/images/web01.qcow2"))
        );
        assert_eq!(
            d.disks[1].source.as_deref(),
            Some(Path::new("/dev/vg/data"))
        );
        assert_eq!(d.nics.len(), 2);
        assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:6b:3c:58"));
        assert_eq!(d.nics[0].source.as_deref(), Some("default"));
        assert_eq!(d.nics[1].kind, "bridge");
        assert_eq!(d.nics[1].model, None);
    }

    #[test]
    fn bios_and_pflash_loaders_and_memory_units() {
        let bios = DOMAIN
            .replace(" firmware='efi'", "")
            .replace("unit='KiB'>2097152", "unit='MiB'>512");
        let d = parse_domain(&bios).unwrap();
        assert_eq!(d.firmware, Firmware::Bios);
        assert_eq!(d.memory_bytes, 512 << 20);
        let pflash = bios.replace(
            "</type>",
            "</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>",
        );
        assert_eq!(parse_domain(&pflash).unwrap().firmware, Firmware::Uefi);
    }

    #[test]
    fn broken_domain_xml_is_refused_with_the_reason() {
        assert!(parse_domain("<domain>")
            .unwrap_err()
            .contains("does not parse"));
        assert!(parse_domain("<network/>")
            .unwrap_err()
            .contains("<network>"));
        let e = parse_domain(&DOMAIN.replace("unit='KiB'", "unit='parsecs'")).unwrap_err();
        assert!(e.contains("parsecs"), "{e}");
        let e = parse_domain(&DOMAIN.replace("<target dev='vdb' bus='virtio'/>", "")).unwrap_err();
        assert!(e.contains("target dev"), "{e}");
        let e = parse_domain(&DOMAIN.replace(">2<", ">two<")).unwrap_err();
        assert!(e.contains("vcpu"), "{e}");
    }

    #[test]
    fn backup_and_checkpoint_documents() {
        let c = checkpoint_xml("tern-j-r", &["vda", "vdb"]);
        let doc = roxmltree::Document::parse(&c).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "domaincheckpoint");
        let disks: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("disk"))
            .map(|n| {
                (
                    n.attribute("name").unwrap(),
                    n.attribute("checkpoint").unwrap(),
                )
            })
            .collect();
        assert_eq!(disks, [("vda", "bitmap"), ("vdb", "bitmap")]);

        let b = backup_xml(
            Path::new("/run/t/nbd.sock"),
            Path::new("/run/t"),
            &["vda"],
            Some("tern-j-r0"),
        );
        let doc = roxmltree::Document::parse(&b).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("mode"), Some("pull"));
        assert_eq!(
            child(root, "incremental").unwrap().text(),
            Some("tern-j-r0")
        );
        let server = child(root, "server").unwrap();
        assert_eq!(server.attribute("socket"), Some("/run/t/nbd.sock"));
        let scratch = doc
            .descendants()
            .find(|n| n.has_tag_name("scratch"))
            .unwrap();
        assert_eq!(scratch.attribute("file"), Some("/run/t/scratch-vda.qcow2"));
        // A seed has no <incremental>; odd characters are escaped, not injected.
        let b = backup_xml(Path::new("/a'b"), Path::new("/t"), &["vda"], None);
        let doc = roxmltree::Document::parse(&b).unwrap();
        assert!(child(doc.root_element(), "incremental").is_none());
        assert_eq!(
            child(doc.root_element(), "server")
                .unwrap()
                .attribute("socket"),
            Some("/a'b")
        );
        assert_eq!(backup_bitmap_context("vda"), "qemu:dirty-bitmap:backup-vda");
        // A running backup's description names its socket (how a leftover job is recognised).
        let b = backup_xml(Path::new("/s/nbd.sock"), Path::new("/s"), &["vda"], None);
        assert_eq!(backup_socket(&b), Some(PathBuf::from("/s/nbd.sock")));
        let tcp =
            "<domainbackup mode='pull'><server transport='tcp' name='h' port='1'/></domainbackup>";
        assert_eq!(backup_socket(tcp), None);
        assert_eq!(backup_socket("<domain/>"), None);
        assert_eq!(backup_socket("not xml"), None);
    }

    #[test]
    fn domain_filters_are_shell_globs() {
        assert!(glob_match("web*", "web01"));
        assert!(glob_match("*01", "web01"));
        assert!(glob_match("w?b0*", "web01"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("web", "web01"));
        assert!(!glob_match("db*", "web01"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(selected(&[], "anything"));
        assert!(selected(&["db*".into(), "web*".into()], "web01"));
        assert!(!selected(&["db*".into()], "web01"));
    }
}
