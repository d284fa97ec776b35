//! The `libvirt` source: the domains of a libvirt URI (`qemu:///session`, `qemu:///system`),
//! and replication of a running domain through libvirt's backup API with a checkpoint per run.
//!
//! [`xml`] (domain XML, backup and checkpoint documents, name filters) and [`inventory_vm`]
//! are always compiled; talking to libvirt ([`Hypervisor`], [`replicate`], [`commit`]) needs
//! the crate feature `libvirt` (the `virt` crate, which links libvirt's C library and so needs
//! `libvirt-dev` and `pkg-config` to build). See the crate README for what is wired and what is
//! not.

pub mod xml;

#[cfg(feature = "libvirt")]
mod live;
#[cfg(feature = "libvirt")]
pub mod run;

#[cfg(feature = "libvirt")]
pub use live::{
    checkpoint_name, commit, replicate, work_dir, DiskOutput, Hypervisor, LibvirtError, RunSpec,
};

use serde::Deserialize;
use serde_json::json;
use tern_api::connector::{InventoryDisk, InventoryVm};

pub use xml::{DomainDisk, DomainInfo, DomainNic, Firmware};

/// `[libvirt]` of the connector config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtSource {
    /// The libvirt URI: `qemu:///system`, `qemu:///session`, `qemu+ssh://host/system`, …
    pub uri: String,
    /// Shell globs of the domain names to report (`web*`); none: every domain.
    #[serde(default)]
    pub domains: Vec<String>,
    /// How incremental runs find changed blocks: `auto` (checkpoints when usable, else the
    /// full comparison, saying why), `bitmap` (checkpoints only) or `compare`.
    #[serde(default)]
    pub changed_blocks: crate::changed::ChangedBlocks,
}

/// The disk path a libvirt disk is reported with: `libvirt:<domain>/<target>`.
pub fn disk_path(domain: &str, target: &str) -> String {
    format!("{DISK_PREFIX}{domain}/{target}")
}

/// The domain and target of a disk path made by [`disk_path`].
pub fn parse_disk_path(path: &str) -> Option<(&str, &str)> {
    let (domain, target) = path.strip_prefix(DISK_PREFIX)?.rsplit_once('/')?;
    (!domain.is_empty() && !target.is_empty()).then_some((domain, target))
}

const DISK_PREFIX: &str = "libvirt:";

/// The one domain whose disks a run lists, when it lists libvirt disks; an error when it mixes
/// them with other disks or names two domains.
pub fn domain_of(
    disks: &[crate::replicate::DiskSource],
) -> Result<Option<String>, crate::replicate::ReplicateError> {
    crate::replicate::one_owner(disks, "libvirt domain", |d| match d {
        crate::replicate::DiskSource::Libvirt { domain, .. } => Some(domain),
        _ => None,
    })
}

/// A domain as an inventory VM: the UUID is the VM id; the disks are reported as
/// `libvirt:<domain>/<target>` with the driver's format and the virtual size; vCPUs, memory,
/// firmware, NICs and the disks' files go into `inspection.libvirt`.
pub fn inventory_vm(d: &DomainInfo) -> InventoryVm {
    InventoryVm {
        vm_id: d.uuid.clone(),
        vm_name: Some(d.name.clone()),
        disks: d
            .disks
            .iter()
            .map(|k| InventoryDisk {
                path: disk_path(&d.name, &k.target),
                format: k.format.clone(),
                size_bytes: k.virtual_size,
            })
            .collect(),
        inspection: Some(json!({ "libvirt": d })),
        ..InventoryVm::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_is_reported_like_the_other_sources_vms() {
        let d = DomainInfo {
            name: "web01".into(),
            uuid: "4dea22b3-1d52-d8f3-2516-782e98ab3fa0".into(),
            vcpus: 2,
            memory_bytes: 1 << 30,
            firmware: Firmware::Uefi,
            disks: vec![DomainDisk {
                target: "vda".into(),
                source: Some("/img/web01.qcow2".into()),
                format: Some("qcow2".into()),
                bus: Some("virtio".into()),
                virtual_size: Some(8 << 30),
            }],
            nics: vec![DomainNic {
                kind: "network".into(),
                mac: Some("52:54:00:6b:3c:58".into()),
                source: Some("default".into()),
                model: Some("virtio".into()),
            }],
            running: true,
        };
        let vm = inventory_vm(&d);
        assert_eq!(vm.vm_id, d.uuid);
        assert_eq!(vm.vm_name.as_deref(), Some("web01"));
        assert_eq!(vm.disks.len(), 1);
        assert_eq!(vm.disks[0].path, "libvirt:web01/vda");
        assert_eq!(vm.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(vm.disks[0].size_bytes, Some(8 << 30));
        let l = &vm.inspection.as_ref().unwrap()["libvirt"];
        assert_eq!(l["vcpus"], 2);
        assert_eq!(l["memoryBytes"], 1u64 << 30);
        assert_eq!(l["firmware"], "uefi");
        assert_eq!(l["nics"][0]["mac"], "52:54:00:6b:3c:58");
        assert_eq!(l["disks"][0]["source"], "/img/web01.qcow2");
    }

    #[test]
    fn disk_paths_name_one_domain_per_server() {
        use crate::replicate::DiskSource;
        assert_eq!(
            parse_disk_path(&disk_path("web01", "vdb")),
            Some(("web01", "vdb"))
        );
        for bad in [
            "libvirt:",
            "libvirt:/vda",
            "libvirt:web01/",
            "/img/web01.qcow2",
        ] {
            assert_eq!(parse_disk_path(bad), None, "{bad}");
        }
        let lv = |domain: &str, target: &str| DiskSource::Libvirt {
            domain: domain.into(),
            target: target.into(),
        };
        let file = DiskSource::File {
            path: "/img/a.qcow2".into(),
            format: None,
            backing_chain: Vec::new(),
        };
        assert_eq!(
            domain_of(&[lv("web01", "vda"), lv("web01", "vdb")]).unwrap(),
            Some("web01".into())
        );
        assert_eq!(domain_of(&[file.clone(), file.clone()]).unwrap(), None);
        for mixed in [
            vec![lv("web01", "vda"), lv("db01", "vdb")],
            vec![lv("web01", "vda"), file.clone()],
            vec![file, lv("web01", "vda")],
        ] {
            let e = domain_of(&mixed).unwrap_err().to_string();
            assert!(e.contains("one libvirt domain"), "{e}");
        }
    }

    #[test]
    fn the_config_section_takes_a_uri_and_filters() {
        let s: LibvirtSource = toml::from_str(
            "uri = \"qemu:///session\"\ndomains = [\"web*\"]\nchanged_blocks = \"bitmap\"",
        )
        .unwrap();
        assert_eq!(s.uri, "qemu:///session");
        assert_eq!(s.domains, ["web*"]);
        assert_eq!(s.changed_blocks, crate::changed::ChangedBlocks::Bitmap);
        let e = toml::from_str::<LibvirtSource>("uri = \"x\"\ndomain = \"web\"").unwrap_err();
        assert!(e.to_string().contains("domain"), "{e}");
    }
}
