//! The `files` source: an inventory file that lists VMs and their disk image files.
//!
//! TOML (or JSON when the name ends in `.json`). Top-level `vm_manager_*` keys describe the VM
//! manager the connector registers for and are the defaults of every VM; a VM may override them.
//! Relative disk paths are relative to the inventory file's directory. The file is read again
//! for every inventory request, so editing it and running `ImportServerCatalog` updates the
//! catalog.
//!
//! A VM lists its disk image files (`disks`), or names an OVA archive (`ova`) whose disks are
//! reported in DiskSection order as `<archive>#disk=<n>` with format `ova`.
//! [`Inventory::inspect`] opens every disk and puts what `tern_disk::inspect` finds into the
//! VM's `inspection` member: `{"disks": [<report or {"error": …}>, …]}`.
//!
//! `[[applications]]` tables (`name`, `vms` = VM names) group VMs into applications: each
//! member VM is reported with `application = <name>`, and ImportAppCatalog makes an SMS
//! application of each. A VM may belong to one application; every name must be a VM of the file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use tern_api::connector::{InventoryDisk, InventoryVm, OsType, VmManagerType};

use crate::config::is_json;
use crate::work::{ova_disk_path, OVA_FORMAT};
use crate::ConnectorError;

/// A parsed inventory file.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub vm_manager_id: String,
    pub vm_manager_name: Option<String>,
    pub vm_manager_type: Option<VmManagerType>,
    /// VMs in file order, in the wire shape of `ReportInventory`.
    pub vms: Vec<InventoryVm>,
    /// Per VM and disk: whether the file stated the format (else it is a guess from the
    /// extension, which inspection replaces with what the content says).
    stated_formats: Vec<Vec<bool>>,
    /// Per VM and disk: the image file inspection reads when the disk's path is not one (a
    /// hypervisor's disk, `libvirt:web01/vda`); empty for inventory files.
    read_paths: Vec<Vec<Option<String>>>,
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
    /// Applications: named sets of VMs (by VM name), reported as each VM's `application` and
    /// imported by ImportAppCatalog.
    #[serde(default)]
    applications: Vec<ApplicationEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationEntry {
    name: String,
    /// VM names (`vms[].name`, else the id) of the application's members.
    #[serde(default)]
    vms: Vec<String>,
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
    /// An OVA archive holding the VM's disks (instead of `disks`).
    #[serde(default)]
    ova: Option<String>,
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
        let mut stated_formats = Vec::with_capacity(file.vms.len());
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
            let mut vm_name = vm.name;
            let mut inspection = None;
            let mut stated = Vec::new();
            let disks = match vm.ova {
                Some(_) if !vm.disks.is_empty() => {
                    return Err(format!(
                        "vms[{index}] ({}): give either disks or ova, not both",
                        vm.id
                    ))
                }
                Some(ova) if ova.trim().is_empty() => {
                    return Err(format!(
                        "vms[{index}] ({}): the ova path must not be empty",
                        vm.id
                    ))
                }
                Some(ova) => match ova_disks(&base.join(ova)) {
                    Ok((disks, name)) => {
                        vm_name = vm_name.or(name);
                        disks
                    }
                    Err(error) => {
                        inspection = Some(json!({ "disks": [], "error": error }));
                        Vec::new()
                    }
                },
                None => vm
                    .disks
                    .into_iter()
                    .map(|d| {
                        stated.push(matches!(
                            d,
                            DiskEntry::Detailed {
                                format: Some(_),
                                ..
                            }
                        ));
                        disk(d, base)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("vms[{index}] ({}): {e}", vm.id))?,
            };
            stated.resize(disks.len(), false);
            stated_formats.push(stated);
            vms.push(InventoryVm {
                vm_id: vm.id,
                vm_name,
                vm_path: vm.folder,
                vm_manager_id: vm.vm_manager_id,
                vm_manager_name: vm.vm_manager_name,
                vm_manager_type: vm.vm_manager_type,
                disks,
                os_type: vm.os_type,
                inspection,
                application: None,
            });
        }
        for (i, app) in file.applications.iter().enumerate() {
            if app.name.trim().is_empty() || app.name.len() > 128 {
                return Err(format!(
                    "applications[{i}]: name must be 1 to 128 characters"
                ));
            }
            for name in &app.vms {
                let vm = vms
                    .iter_mut()
                    .find(|v| v.vm_name.as_deref().unwrap_or(&v.vm_id) == name)
                    .ok_or_else(|| {
                        format!(
                            "applications[{i}] ({}): there is no VM named {name:?} in vms",
                            app.name
                        )
                    })?;
                if let Some(other) = &vm.application {
                    return Err(format!(
                        "applications[{i}] ({}): VM {name:?} is already in application {other:?}",
                        app.name
                    ));
                }
                vm.application = Some(app.name.clone());
            }
        }
        Ok(Self {
            vm_manager_id,
            vm_manager_name: file.vm_manager_name,
            vm_manager_type: file.vm_manager_type,
            vms,
            stated_formats,
            read_paths: Vec::new(),
        })
    }
}

impl Inventory {
    /// Opens every disk of every VM and records what it holds in the VM's `inspection`:
    /// `{"disks": [<tern_disk InspectionReport>, …]}` in disk order (the control plane reads
    /// `/disks/0/efi_system_partition` to pick the image's boot mode). A disk that cannot be
    /// opened or read gets `{"error": "…"}` in its slot; the inventory is still reported.
    /// A disk opened this way also reports its virtual size and, unless the inventory file
    /// stated one, the format found in its content.
    ///
    /// This holds every inspection at once; the agent reports large inventories page by page
    /// with [`Inventory::inspect_vm`] instead.
    pub fn inspect(&mut self) {
        let mut inspector = Inspector::default();
        for i in 0..self.vms.len() {
            self.inspect_vm(i, &mut inspector);
        }
    }

    /// An inventory a hypervisor reported: its disk formats are the hypervisor's (stated), and
    /// `read_paths[vm][disk]` names the image file inspection reads, where there is one.
    pub fn from_hypervisor(
        vm_manager_id: String,
        vm_manager_name: Option<String>,
        vms: Vec<InventoryVm>,
        read_paths: Vec<Vec<Option<String>>>,
    ) -> Inventory {
        Inventory {
            vm_manager_id,
            vm_manager_name,
            vm_manager_type: None,
            stated_formats: vms.iter().map(|v| vec![true; v.disks.len()]).collect(),
            vms,
            read_paths,
        }
    }

    /// Inspects the disks of VM `index` (see [`Inventory::inspect`]); a disk several VMs share
    /// is opened once per `inspector`.
    pub fn inspect_vm(&mut self, index: usize, inspector: &mut Inspector) {
        let (Some(vm), Some(stated)) = (self.vms.get_mut(index), self.stated_formats.get(index))
        else {
            return;
        };
        if vm.disks.is_empty() {
            return;
        }
        let reads = self.read_paths.get(index);
        let reports: Vec<Value> = vm
            .disks
            .iter_mut()
            .zip(stated)
            .enumerate()
            .map(|(j, (d, &stated))| {
                match reads.and_then(|r| r.get(j)).cloned().flatten() {
                    None => inspector.disk(d, stated),
                    Some(file) => {
                        // The image file stands in for the disk; the disk keeps its own path.
                        let mut f = InventoryDisk {
                            path: file,
                            format: d.format.clone(),
                            size_bytes: d.size_bytes,
                        };
                        let report = inspector.disk(&mut f, stated);
                        d.size_bytes = d.size_bytes.or(f.size_bytes);
                        report
                    }
                }
            })
            .collect();
        let mut inspection = match vm.inspection.take() {
            Some(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        inspection.insert("disks".into(), Value::Array(reports));
        vm.inspection = Some(Value::Object(inspection));
    }
}

/// Inspects disks, remembering the last results so that a disk image many VMs list (a shared
/// template, 10,000 VMs over one image) is opened and read once. The memory is bounded: the
/// results of at most [`Inspector::CAPACITY`] disks are kept.
#[derive(Default)]
pub struct Inspector {
    seen: std::collections::HashMap<(String, Option<String>, bool), Inspected>,
    /// Disks actually opened (tests check that a shared disk is opened once).
    pub opened: usize,
}

#[derive(Clone)]
struct Inspected {
    report: Value,
    size_bytes: Option<u64>,
    format: Option<String>,
}

impl Inspector {
    pub const CAPACITY: usize = 1024;

    fn disk(&mut self, d: &mut InventoryDisk, format_stated: bool) -> Value {
        let key = (d.path.clone(), d.format.clone(), format_stated);
        if let Some(hit) = self.seen.get(&key) {
            if hit.size_bytes.is_some() {
                d.size_bytes = hit.size_bytes;
            }
            if hit.format.is_some() {
                d.format = hit.format.clone();
            }
            return hit.report.clone();
        }
        self.opened += 1;
        let before = (d.size_bytes, d.format.clone());
        let report = inspect_disk(d, format_stated);
        if self.seen.len() >= Self::CAPACITY {
            self.seen.clear();
        }
        self.seen.insert(
            key,
            Inspected {
                report: report.clone(),
                size_bytes: (d.size_bytes != before.0).then_some(d.size_bytes).flatten(),
                format: (d.format != before.1).then(|| d.format.clone()).flatten(),
            },
        );
        report
    }
}

fn inspect_disk(d: &mut InventoryDisk, format_stated: bool) -> Value {
    // A format guessed from the extension is no reason to refuse the content: detect it.
    let format = if format_stated || d.format.as_deref() == Some(OVA_FORMAT) {
        d.format.as_deref()
    } else {
        None
    };
    let source = match crate::work::translate_disk(&d.path, format) {
        Ok(s) => s,
        Err(e) => return json!({ "error": e }),
    };
    let opened = match crate::replicate::open_disk(&source) {
        Ok(disk) => disk,
        Err(e) => {
            tracing::warn!(disk = %d.path, error = %e, "cannot open disk for inspection");
            return json!({ "error": e.to_string() });
        }
    };
    d.size_bytes = Some(opened.size());
    if !matches!(source, crate::replicate::DiskSource::Ova { .. }) && !format_stated {
        d.format = Some(opened.format().name().to_string());
    }
    match tern_disk::inspect::inspect(&*opened) {
        Ok(report) => serde_json::to_value(report)
            .unwrap_or_else(|e| json!({ "error": format!("cannot encode the report: {e}") })),
        Err(e) => {
            tracing::warn!(disk = %d.path, error = %e, "cannot inspect disk");
            json!({ "error": format!("cannot read {}: {e}", d.path) })
        }
    }
}

/// The disks of an OVA archive as inventory disks, and the VM name its descriptor gives. An
/// unreadable archive is reported as a VM without disks and the reason in its inspection (and
/// logged): the catalog still shows the VM.
fn ova_disks(path: &Path) -> Result<(Vec<InventoryDisk>, Option<String>), String> {
    match crate::ova::read(path) {
        Ok(vm) => {
            let disks = vm
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| InventoryDisk {
                    path: ova_disk_path(path, i),
                    format: Some(OVA_FORMAT.into()),
                    size_bytes: Some(d.capacity),
                })
                .collect();
            Ok((disks, (!vm.name.is_empty()).then_some(vm.name)))
        }
        Err(e) => {
            tracing::warn!(ova = %path.display(), error = %e, "cannot read the OVA archive listed in the inventory");
            Err(e.to_string())
        }
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
    fn applications_name_their_vms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.toml");
        let write = |apps: &str| {
            std::fs::write(
                &path,
                format!(
                    "[[vms]]\nid = \"vm-1\"\nname = \"web\"\n\n[[vms]]\nid = \"vm-2\"\nname = \"db\"\n\n[[vms]]\nid = \"vm-3\"\n{apps}"
                ),
            )
            .unwrap();
        };
        write("\n[[applications]]\nname = \"shop\"\nvms = [\"web\", \"db\"]\n");
        let inv = Inventory::load(&path, "vc").unwrap();
        let apps: Vec<Option<&str>> = inv.vms.iter().map(|v| v.application.as_deref()).collect();
        assert_eq!(apps, [Some("shop"), Some("shop"), None]);
        // A VM without a name is named by its id.
        write("\n[[applications]]\nname = \"misc\"\nvms = [\"vm-3\"]\n");
        let inv = Inventory::load(&path, "vc").unwrap();
        assert_eq!(inv.vms[2].application.as_deref(), Some("misc"));
        for (apps, wanted) in [
            ("\n[[applications]]\nname = \"shop\"\nvms = [\"nope\"]\n", "no VM named \"nope\""),
            (
                "\n[[applications]]\nname = \"a\"\nvms = [\"web\"]\n\n[[applications]]\nname = \"b\"\nvms = [\"web\"]\n",
                "already in application \"a\"",
            ),
            ("\n[[applications]]\nname = \" \"\nvms = []\n", "applications[0]: name"),
        ] {
            write(apps);
            let e = Inventory::load(&path, "vc").unwrap_err().to_string();
            assert!(e.contains(wanted), "{e}");
        }
    }

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

    /// A raw disk whose MBR holds one EFI system partition (type 0xEF).
    fn efi_disk(path: &Path) {
        let mut d = vec![0u8; 4 << 20];
        let e = &mut d[446..462];
        e[4] = 0xef;
        e[8..12].copy_from_slice(&2048u32.to_le_bytes());
        e[12..16].copy_from_slice(&4096u32.to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xaa;
        std::fs::write(path, d).unwrap();
    }

    #[test]
    fn inspection_reports_every_disk_and_errors_in_their_slots() {
        let dir = tempfile::tempdir().unwrap();
        // Formats guessed from the extension are replaced by what the content says; a stated
        // format is kept, also for a disk that cannot be opened.
        efi_disk(&dir.path().join("boot.img"));
        std::fs::write(dir.path().join("data.qcow2"), b"not a qcow2 image").unwrap();
        let path = dir.path().join("inv.toml");
        std::fs::write(
            &path,
            r#"
[[vms]]
id = "vm-1"
disks = ["boot.img", "data.qcow2", { path = "gone.vmdk", format = "vmdk" }]

[[vms]]
id = "vm-2"
"#,
        )
        .unwrap();
        let mut inv = Inventory::load(&path, "m").unwrap();
        assert!(inv.vms[0].inspection.is_none(), "loading reads no disk");
        inv.inspect();
        let vm = &inv.vms[0];
        let i = vm.inspection.as_ref().unwrap();
        // The pointer the control plane reads to choose UEFI boot.
        assert_eq!(
            i.pointer("/disks/0/efi_system_partition"),
            Some(&json!(true))
        );
        assert_eq!(i["disks"][0]["partition_table"], "mbr");
        assert_eq!(i["disks"][0]["partitions"][0]["start"], 2048 * 512);
        assert_eq!(vm.disks[0].size_bytes, Some(4 << 20));
        assert_eq!(vm.disks[0].format.as_deref(), Some("raw"));
        // Not a qcow2 after all: the content says raw, and the report is still made.
        assert_eq!(vm.disks[1].format.as_deref(), Some("raw"));
        assert_eq!(i["disks"][1]["efi_system_partition"], false);
        let err = i["disks"][2]["error"].as_str().unwrap();
        assert!(err.contains("gone.vmdk"), "{err}");
        assert_eq!(vm.disks[2].format.as_deref(), Some("vmdk"));
        assert_eq!(vm.disks[2].size_bytes, None);
        assert!(
            inv.vms[1].inspection.is_none(),
            "no disks, nothing to inspect"
        );
    }

    #[test]
    fn ova_entries_list_the_archives_disks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inv.toml");
        std::fs::write(&path, "[[vms]]\nid = \"a\"\nova = \"missing.ova\"\n").unwrap();
        let inv = Inventory::load(&path, "m").unwrap();
        // An unreadable archive: the VM is still reported, without disks, with the reason.
        assert!(inv.vms[0].disks.is_empty());
        let err = inv.vms[0].inspection.as_ref().unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(err.contains("missing.ova"), "{err}");
        std::fs::write(
            &path,
            "[[vms]]\nid = \"a\"\nova = \"x.ova\"\ndisks = [\"d.raw\"]\n",
        )
        .unwrap();
        let err = Inventory::load(&path, "m").unwrap_err().to_string();
        assert!(err.contains("either disks or ova"), "{err}");
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
