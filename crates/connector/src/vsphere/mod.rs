//! The `vsphere` source: the VMs of a vCenter (or ESXi host) through the vSphere Web Services
//! API, replicated from a snapshot per run.
//!
//! * Inventory: every VM under the root folder whose name passes the `vms` globs, with its
//!   vCPUs, memory, firmware, guest OS, power state, NICs and disks, and its folder path
//!   (`/DC0/vm/prod/web`) as `vmPath`, the hint for grouping servers into applications. The
//!   catalog's `vmId` is the VM's managed object id (`vm-42`), as SMS reported vSphere VMs;
//!   each disk is `vsphere:<vmId>/<device key>`.
//! * A run ([`run::prepare`]): a snapshot `tern-<job>-<run>` (no memory, quiesced when the
//!   source asks), the snapshot's disks read through the datastore's HTTP file access (ranged
//!   GETs of each disk's flat extents, [`disk::DatastoreDisk`]) into the run's prepared
//!   objects, then the snapshot removed — also when the read fails. The seed reads every
//!   block. An incremental run asks vSphere's changed block tracking for the areas changed
//!   since the base run's change id (`QueryChangedDiskAreas`) and reads only the 512 KiB blocks
//!   they touch; without tracking (off on the VM, a reset that invalidated the change id, no
//!   id kept) it compares every block with the kept block map and says why.
//!
//! See [`soap`] for the calls made.

pub mod disk;
pub mod run;
pub mod soap;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tern_api::connector::{InventoryDisk, InventoryVm};

use crate::replicate::{DiskSource, ReplicateError};

/// `[vsphere]` in the connector's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsphereSource {
    /// The SDK endpoint: `https://vcenter.example.com/sdk`.
    pub url: String,
    pub username: String,
    /// The password itself, or (better) `password_env`, the environment variable holding it.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// A PEM file with the CA certificate(s) that signed the server's certificate, when it is
    /// not signed by a public CA (vCenter's own VMCA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate (a lab without a CA file); never in production.
    #[serde(default)]
    pub insecure: bool,
    /// VM name globs (`web*`); none: every VM.
    #[serde(default)]
    pub vms: Vec<String>,
    /// Report each VM's folder below its datacenter's VM folder (`prod/web` for
    /// `/DC0/vm/prod/web`) as its application, which ImportAppCatalog turns into an SMS
    /// application; VMs right in the VM folder belong to none.
    #[serde(default)]
    pub applications_from_folders: bool,
    /// Quiesce the guest's file systems for each run's snapshot (needs VMware Tools).
    #[serde(default)]
    pub quiesce: bool,
    /// How incremental runs find changed blocks: `auto` asks vSphere's changed block tracking
    /// (QueryChangedDiskAreas) where the VM has it on and compares every block otherwise,
    /// `bitmap` allows only tracking, `compare` never asks.
    #[serde(default)]
    pub changed_blocks: crate::changed::ChangedBlocks,
}

impl VsphereSource {
    /// The password, from the configuration or its environment variable.
    pub fn password(&self) -> Result<String, VsphereError> {
        match (&self.password, &self.password_env) {
            (Some(p), None) => Ok(p.clone()),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                VsphereError::Config(format!(
                    "vsphere.password_env names {var}, which is not set in the connector's environment"
                ))
            }),
            _ => Err(VsphereError::Config(
                "give exactly one of vsphere.password and vsphere.password_env".into(),
            )),
        }
    }

    /// Checks what can be checked without the server.
    pub fn validate(&self) -> Result<(), String> {
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "https" | "http") => {}
            _ => return Err(format!("vsphere.url must be the SDK URL, e.g. \"https://vcenter.example.com/sdk\" (got {:?})", self.url)),
        }
        if self.username.trim().is_empty() {
            return Err("vsphere.username is empty".into());
        }
        if self.password.is_some() == self.password_env.is_some() {
            return Err("give exactly one of vsphere.password and vsphere.password_env (the name of an environment variable holding it)".into());
        }
        if self.insecure && self.ca_file.is_some() {
            return Err("give vsphere.ca_file or vsphere.insecure = true, not both".into());
        }
        Ok(())
    }
}

/// Why a vSphere call or a VM's run failed, naming the VM and what to do.
#[derive(Debug, thiserror::Error)]
pub enum VsphereError {
    #[error("vsphere source: {0}")]
    Config(String),
    #[error("cannot reach vSphere at {url}: {detail} (check vsphere.url, the network, and vsphere.ca_file for a certificate error)")]
    Connect { url: String, detail: String },
    #[error(
        "vSphere at {url} refused the login of {user} (check vsphere.username and the password)"
    )]
    Login { url: String, user: String },
    #[error("vSphere {method} failed: {fault}: {message}")]
    Fault {
        method: String,
        fault: String,
        message: String,
    },
    #[error("unexpected answer from vSphere: {0}")]
    Protocol(String),
    #[error("VM {vm}: {detail}")]
    Vm { vm: String, detail: String },
    #[error("datastore file {url}: {detail}")]
    Datastore { url: String, detail: String },
}

/// One VM as the inventory reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmInfo {
    /// The managed object id (`vm-42`): the catalog's `vmId`.
    pub moref: String,
    pub name: String,
    pub instance_uuid: Option<String>,
    pub bios_uuid: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u64>,
    pub guest_id: Option<String>,
    pub guest_full_name: Option<String>,
    /// `bios` or `efi`.
    pub firmware: Option<String>,
    /// `poweredOn`, `poweredOff`, `suspended`.
    pub power_state: Option<String>,
    pub change_tracking: bool,
    /// `/<datacenter>/vm/<folders>`: where the VM sits.
    pub folder: Option<String>,
    pub datacenter: Option<String>,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<VmNic>,
}

/// A virtual disk of a VM (or of one of its snapshots).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmDisk {
    /// The device key (`2000`): stable for the disk's life in the VM.
    pub key: i32,
    pub label: String,
    /// `[datastore] folder/name.vmdk`: the descriptor.
    pub file_name: String,
    pub capacity_bytes: u64,
    pub thin: Option<bool>,
    /// The changed-block-tracking id, when tracking is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
}

impl VmDisk {
    /// The datastore name and the path inside it of the descriptor.
    pub fn datastore_path(&self) -> Option<(&str, &str)> {
        let rest = self.file_name.strip_prefix('[')?;
        let (ds, path) = rest.split_once(']')?;
        Some((ds, path.trim_start()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmNic {
    pub label: String,
    /// The device type (`VirtualVmxnet3`, `VirtualE1000`).
    pub kind: String,
    pub mac: Option<String>,
}

const DISK_PREFIX: &str = "vsphere:";

/// `vsphere:<vmId>/<device key>`: how a disk of a vSphere VM is named in the catalog.
pub fn disk_path(vm: &str, key: i32) -> String {
    format!("{DISK_PREFIX}{vm}/{key}")
}

/// The VM and device key of a [`disk_path`].
pub fn parse_disk_path(path: &str) -> Option<(&str, i32)> {
    let (vm, key) = path.strip_prefix(DISK_PREFIX)?.rsplit_once('/')?;
    let key = key.parse().ok()?;
    (!vm.is_empty()).then_some((vm, key))
}

/// The VM whose disks a run reads, when its disks are vSphere disks (all of one VM).
pub fn vm_of(disks: &[DiskSource]) -> Result<Option<String>, ReplicateError> {
    crate::replicate::one_owner(disks, "vSphere VM", |d| match d {
        DiskSource::Vsphere { vm, .. } => Some(vm),
        _ => None,
    })
}

/// The application a VM in `folder` (`/DC0/vm/prod/web`) belongs to: the folders below the
/// datacenter's VM folder (`prod/web`), if any (and if they fit SMS's 128 characters).
pub fn folder_application(folder: &str) -> Option<String> {
    let parts: Vec<&str> = folder.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [_datacenter, "vm", rest @ ..] if !rest.is_empty() => {
            Some(rest.join("/")).filter(|a| a.len() <= 128)
        }
        _ => None,
    }
}

/// A VM as the connector reports it in its inventory (with its folder as its application
/// when `applications_from_folders`).
pub fn inventory_vm(v: &VmInfo, applications_from_folders: bool) -> InventoryVm {
    InventoryVm {
        application: v
            .folder
            .as_deref()
            .filter(|_| applications_from_folders)
            .and_then(folder_application),
        vm_id: v.moref.clone(),
        vm_name: Some(v.name.clone()),
        vm_path: v.folder.as_ref().map(|f| format!("{f}/{}", v.name)),
        disks: v
            .disks
            .iter()
            .map(|d| InventoryDisk {
                path: disk_path(&v.moref, d.key),
                format: Some("vmdk".into()),
                size_bytes: Some(d.capacity_bytes),
            })
            .collect(),
        os_type: v.guest_id.as_deref().map(|g| {
            if g.to_ascii_lowercase().starts_with("win") {
                tern_api::connector::OsType::Windows
            } else {
                tern_api::connector::OsType::Linux
            }
        }),
        inspection: Some(json!({ "vsphere": v })),
        ..InventoryVm::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_paths_name_one_vm_per_server() {
        assert_eq!(
            parse_disk_path(&disk_path("vm-42", 2000)),
            Some(("vm-42", 2000))
        );
        for bad in [
            "vsphere:",
            "vsphere:/2000",
            "vsphere:vm-42/",
            "vsphere:vm-42/disk",
            "libvirt:a/vda",
        ] {
            assert_eq!(parse_disk_path(bad), None, "{bad}");
        }
        let vs = |vm: &str, key: i32| DiskSource::Vsphere { vm: vm.into(), key };
        assert_eq!(
            vm_of(&[vs("vm-42", 2000), vs("vm-42", 2001)]).unwrap(),
            Some("vm-42".into())
        );
        assert!(vm_of(&[vs("vm-42", 2000), vs("vm-43", 2000)]).is_err());
        assert_eq!(vm_of(&[]).unwrap(), None);
    }

    #[test]
    fn folders_below_the_vm_folder_are_applications() {
        assert_eq!(
            folder_application("/DC0/vm/prod/web").as_deref(),
            Some("prod/web")
        );
        assert_eq!(folder_application("/DC0/vm/crm").as_deref(), Some("crm"));
        assert_eq!(folder_application("/DC0/vm"), None);
        assert_eq!(folder_application("/DC0/host/cluster"), None);
        assert_eq!(
            folder_application(&format!("/DC0/vm/{}", "x".repeat(129))),
            None
        );
    }

    #[test]
    fn a_config_names_its_mistakes() {
        let ok = VsphereSource {
            url: "https://vc.example.com/sdk".into(),
            username: "tern@vsphere.local".into(),
            password: None,
            password_env: Some("TERN_VC_PASSWORD".into()),
            ca_file: None,
            insecure: false,
            vms: vec![],
            applications_from_folders: false,
            quiesce: false,
            changed_blocks: Default::default(),
        };
        ok.validate().unwrap();
        let both = VsphereSource {
            password: Some("x".into()),
            ..ok.clone()
        };
        assert!(both.validate().unwrap_err().contains("exactly one"));
        let url = VsphereSource {
            url: "vc.example.com".into(),
            ..ok.clone()
        };
        assert!(url.validate().unwrap_err().contains("vsphere.url"));
        let tls = VsphereSource {
            insecure: true,
            ca_file: Some("/ca.pem".into()),
            ..ok.clone()
        };
        assert!(tls.validate().unwrap_err().contains("not both"));
        let unset = VsphereSource {
            password_env: Some("TERN_SURELY_UNSET_42".into()),
            ..ok
        };
        assert!(unset
            .password()
            .unwrap_err()
            .to_string()
            .contains("not set"));
    }
}
