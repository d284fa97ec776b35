//! The `files` source: an inventory file that lists VMs and their disk image files.
//!
//! TOML (or JSON when the name ends in `.json`). Top-level `vm_manager_*` keys describe the VM
//! manager the connector registers for and are the defaults of every VM; a VM may override them.
//! Relative disk paths are relative to the inventory file's directory. The file is read again
//! for every inventory request, so editing it and running `ImportServerCatalog` updates the
//! catalog.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tern_api::connector::{InventoryDisk, InventoryVm, OsType, VmManagerType};

use crate::config::is_json;
use crate::ConnectorError;

/// A parsed inventory file.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub vm_manager_id: String,
    pub vm_manager_name: Option<String>,
    pub vm_manager_type: Option<VmManagerType>,
    /// VMs in file order, in the wire shape of `ReportInventory`.
    pub vms: Vec<InventoryVm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    vm_manager_id: Option<String>,
    #[serde(default)]
    vm_manager_name: Option<String>,
    #[serde(default)]
    vm_manager_type: Option<VmManagerType>,
    #[serde(default)]
    vms: Vec<VmEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmEntry {
    id: String,
    #[serde(default)]
    name: Option<String>,
    /// Folder path of the VM in its manager's inventory (reported as `vmPath`).
    #[serde(default)]
    folder: Option<String>,
    #[serde(default)]
    os_type: Option<OsType>,
    #[serde(default)]
    vm_manager_id: Option<String>,
    #[serde(default)]
    vm_manager_name: Option<String>,
    #[serde(default)]
    vm_manager_type: Option<VmManagerType>,
    #[serde(default)]
    disks: Vec<DiskEntry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DiskEntry {
    Path(String),
    Detailed {
        path: String,
        #[serde(default)]
        format: Option<String>,
        #[serde(default)]
        size_bytes: Option<u64>,
    },
}

impl Inventory {
    /// Reads an inventory file. `default_manager_id` is used when the file names no VM manager.
    pub fn load(path: &Path, default_manager_id: &str) -> Result<Self, ConnectorError> {
        let err = |message: String| ConnectorError::Inventory {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: FileFormat = if is_json(path) {
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_file(file, base, default_manager_id).map_err(err)
    }

    fn from_file(file: FileFormat, base: &Path, default_manager_id: &str) -> Result<Self, String> {
        let vm_manager_id = file
            .vm_manager_id
            .filter(|id| !id.trim().is_empty())
            .unwrap_or_else(|| default_manager_id.to_owned());
        let mut seen = HashSet::new();
        let mut vms = Vec::with_capacity(file.vms.len());
        for (index, vm) in file.vms.into_iter().enumerate() {
            if vm.id.trim().is_empty() {
                return Err(format!("vms[{index}]: id must not be empty"));
            }
            let manager = vm
                .vm_manager_id
                .clone()
                .unwrap_or_else(|| vm_manager_id.clone());
            if !seen.insert((manager, vm.id.clone())) {
                return Err(format!("vms[{index}]: VM id {:?} is listed twice", vm.id));
            }
            let disks = vm
                .disks
                .into_iter()
                .map(|d| disk(d, base))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("vms[{index}] ({}): {e}", vm.id))?;
            vms.push(InventoryVm {
                vm_id: vm.id,
                vm_name: vm.name,
                vm_path: vm.folder,
                vm_manager_id: vm.vm_manager_id,
                vm_manager_name: vm.vm_manager_name,
                vm_manager_type: vm.vm_manager_type,
                disks,
                os_type: vm.os_type,
                inspection: None,
            });
        }
        Ok(Self {
            vm_manager_id,
            vm_manager_name: file.vm_manager_name,
            vm_manager_type: file.vm_manager_type,
            vms,
        })
    }
}

fn disk(entry: DiskEntry, base: &Path) -> Result<InventoryDisk, String> {
    let (path, format, size_bytes) = match entry {
        DiskEntry::Path(path) => (path, None, None),
        DiskEntry::Detailed {
            path,
            format,
            size_bytes,
        } => (path, format, size_bytes),
    };
    if path.trim().is_empty() {
        return Err("a disk path must not be empty".into());
    }
    let full: PathBuf = base.join(&path);
    let format = format.or_else(|| format_from_extension(&full));
    if !full.exists() {
        // Reported anyway: the catalog should show the VM; replication will fail loudly later.
        tracing::warn!(disk = %full.display(), "disk image listed in the inventory does not exist");
    }
    Ok(InventoryDisk {
        path: full.to_string_lossy().into_owned(),
        format,
        size_bytes,
    })
}

/// The image format implied by a file name; a hint only (real inspection comes with tern-disk).
fn format_from_extension(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    let format = match ext.as_str() {
        "raw" | "img" => "raw",
        "qcow2" => "qcow2",
        "vmdk" => "vmdk",
        "vhd" => "vhd",
        "vhdx" => "vhdx",
        _ => return None,
    };
    Some(format.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_inventory_with_defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web01.qcow2"), b"").unwrap();
        let path = dir.path().join("inventory.toml");
        std::fs::write(
            &path,
            r#"
vm_manager_id = "vc-lab"
vm_manager_name = "vcenter.lab"
vm_manager_type = "VSPHERE"

[[vms]]
id = "vm-101"
name = "web01"
folder = "/DC1/vm/web"
os_type = "LINUX"
disks = ["web01.qcow2", { path = "/srv/web01-data.img", size_bytes = 1048576 }]

[[vms]]
id = "vm-7"
vm_manager_id = "hv-2"
vm_manager_type = "HYPERV-MANAGER"
"#,
        )
        .unwrap();
        let inv = Inventory::load(&path, "unused").unwrap();
        assert_eq!(inv.vm_manager_id, "vc-lab");
        assert_eq!(inv.vm_manager_type, Some(VmManagerType::Vsphere));
        assert_eq!(inv.vms.len(), 2);
        let web = &inv.vms[0];
        assert_eq!(web.vm_id, "vm-101");
        assert_eq!(web.vm_name.as_deref(), Some("web01"));
        assert_eq!(web.vm_path.as_deref(), Some("/DC1/vm/web"));
        assert_eq!(web.os_type, Some(OsType::Linux));
        assert_eq!(web.vm_manager_id, None, "the registered manager applies");
        assert_eq!(
            web.disks[0].path,
            dir.path().join("web01.qcow2").to_string_lossy()
        );
        assert_eq!(web.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(web.disks[1].path, "/srv/web01-data.img");
        assert_eq!(web.disks[1].format.as_deref(), Some("raw"));
        assert_eq!(web.disks[1].size_bytes, Some(1_048_576));
        assert_eq!(inv.vms[1].vm_manager_id.as_deref(), Some("hv-2"));
        assert_eq!(
            inv.vms[1].vm_manager_type,
            Some(VmManagerType::HypervManager)
        );
    }

    #[test]
    fn json_inventory_and_default_manager() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.json");
        std::fs::write(
            &path,
            r#"{"vms":[{"id":"a","disks":["/x/a.vmdk"]},{"id":"b"}]}"#,
        )
        .unwrap();
        let inv = Inventory::load(&path, "files-lab").unwrap();
        assert_eq!(inv.vm_manager_id, "files-lab");
        assert_eq!(inv.vms[0].disks[0].format.as_deref(), Some("vmdk"));
        assert!(inv.vms[1].disks.is_empty());
    }

    #[test]
    fn bad_inventories_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.toml");
        let check = |text: &str, needle: &str| {
            std::fs::write(&path, text).unwrap();
            let err = Inventory::load(&path, "m").unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
            assert!(err.contains("inv.toml"), "{err}");
        };
        check("[[vms]]\nid = \"a\"\n[[vms]]\nid = \"a\"\n", "listed twice");
        check("[[vms]]\nid = \"\"\n", "id must not be empty");
        check("[[vms]]\nname = \"x\"\n", "id");
        check("[[vms]]\nid = \"a\"\nflavour = 1\n", "flavour");
        check("vm_manager_type = \"vSphere\"\n", "vSphere");
    }
}
