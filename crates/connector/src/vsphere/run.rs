//! The agent's side of the vSphere source: the inventory of the VMs, and replication work
//! turned into a snapshot whose disks are read into [prepared objects](crate::replicate::prepared).
//!
//! * [`prepare`]: the work's disks (`vsphere:<vm>/<key>`) are checked against the VM's disks
//!   now; a snapshot `tern-<job>-<run>` is taken, its disks read through datastore file access
//!   into the run's `prepared` folder (the seed whole, an incremental run compared block by
//!   block with the kept maps of the last confirmed run), and the snapshot removed, also when
//!   the read fails. A run prepared by an earlier attempt against the same base is reused.
//! * [`give_up`] and [`forget`]: a snapshot of the run (or of the job) that a crash left is
//!   removed, with the prepared objects.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tern_disk::VirtualDisk;

use super::disk::DatastoreDisk;
use super::soap::{self, escape, MoRef, ObjectContent, Session};
use super::{inventory_vm, VmDisk, VmInfo, VmNic, VsphereError, VsphereSource};
use crate::changed::{bitmap_name, job_prefix, ChangedBlocks, Changes};
use crate::replicate::{prepared, DiskSource, PreparedRun, ReplicateError, ReplicationWork};
use crate::{ConnectorError, Inventory};

const SOURCE_PREFIX: &str = "vsphere:";
/// How long a snapshot task may take.
const TASK_LIMIT: Duration = Duration::from_secs(30 * 60);

const VM_PROPERTIES: &[&str] = &[
    "name",
    "parent",
    "config.template",
    "config.instanceUuid",
    "config.uuid",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.guestId",
    "config.guestFullName",
    "config.firmware",
    "config.changeTrackingEnabled",
    "config.hardware.device",
    "runtime.powerState",
];

/// Takes snapshot `name` of `vm` (no memory, not quiesced); returns it.
pub fn take_snapshot(
    session: &Session,
    vm: &MoRef,
    name: &str,
    quiesce: bool,
) -> Result<MoRef, VsphereError> {
    let params = format!(
        "<name>{}</name><description>Tern replication run; removed when the run has read it</description><memory>false</memory><quiesce>{quiesce}</quiesce>",
        escape(name)
    );
    session
        .invoke_task("CreateSnapshot_Task", vm, &params, TASK_LIMIT)?
        .and_then(|r| soap::value_moref(&r))
        .ok_or_else(|| {
            VsphereError::Protocol(format!(
                "CreateSnapshot_Task {name}: the task returned no snapshot"
            ))
        })
}

/// Removes a snapshot (its disks consolidated into the VM's).
pub fn remove_snapshot(session: &Session, snapshot: &MoRef) -> Result<(), VsphereError> {
    session
        .invoke_task(
            "RemoveSnapshot_Task",
            snapshot,
            "<removeChildren>false</removeChildren><consolidate>true</consolidate>",
            TASK_LIMIT,
        )
        .map(|_| ())
}

/// The disks of a snapshot, as its configuration lists them.
pub fn snapshot_disks(session: &Session, snapshot: &MoRef) -> Result<Vec<VmDisk>, VsphereError> {
    let o = session.properties(snapshot, &["config.hardware.device"])?;
    Ok(o.prop("config.hardware.device")
        .map(devices)
        .unwrap_or_default()
        .0)
}

/// The VMs of the source (after its name globs), sorted by name, templates left out.
pub fn vms(session: &Session, filters: &[String]) -> Result<Vec<VmInfo>, VsphereError> {
    let places = Places::read(session)?;
    let mut out = Vec::new();
    for o in session.all("VirtualMachine", VM_PROPERTIES)? {
        let vm = vm_info(&o, &places);
        let template = o
            .prop("config.template")
            .and_then(soap::value_text)
            .as_deref()
            == Some("true");
        if !template && crate::libvirt::xml::selected(filters, &vm.name) {
            out.push(vm);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.moref.cmp(&b.moref)));
    Ok(out)
}

/// The folders and datacenters, to name where a VM sits.
struct Places {
    /// moref value → (name, parent, is a datacenter)
    nodes: HashMap<String, (String, Option<String>, bool)>,
    root: String,
    datacenters: Vec<String>,
}

impl Places {
    fn read(session: &Session) -> Result<Places, VsphereError> {
        let mut nodes = HashMap::new();
        let mut datacenters = Vec::new();
        for (kind, dc) in [("Folder", false), ("Datacenter", true)] {
            for o in session.all(kind, &["name", "parent"])? {
                let name = o
                    .prop("name")
                    .and_then(soap::value_text)
                    .unwrap_or_default();
                let parent = o
                    .prop("parent")
                    .and_then(soap::value_moref)
                    .map(|m| m.value);
                if dc {
                    datacenters.push(name.clone());
                }
                nodes.insert(o.obj.value, (name, parent, dc));
            }
        }
        Ok(Places {
            nodes,
            root: session.root_folder.value.clone(),
            datacenters,
        })
    }

    /// Only the folders and datacenter above `parent` (a VM's parent folder): what one VM's run
    /// needs, in a call per level instead of a listing of the whole inventory. A VM without a
    /// parent folder (in a vApp) needs the full listing to find its datacenter.
    fn above(session: &Session, parent: Option<&MoRef>) -> Result<Places, VsphereError> {
        let Some(parent) = parent else {
            return Places::read(session);
        };
        let root = session.root_folder.value.clone();
        let mut nodes = HashMap::new();
        let mut at = Some(parent.clone());
        while let Some(obj) = at.filter(|o| o.value != root && nodes.len() < 64) {
            let o = session.properties(&obj, &["name", "parent"])?;
            let name = o
                .prop("name")
                .and_then(soap::value_text)
                .unwrap_or_default();
            at = o.prop("parent").and_then(soap::value_moref);
            let dc = obj.kind == "Datacenter";
            nodes.insert(obj.value, (name, at.as_ref().map(|m| m.value.clone()), dc));
        }
        Ok(Places {
            nodes,
            root,
            datacenters: Vec::new(),
        })
    }

    /// `(/<datacenter>/vm/<folders>, datacenter)` of a VM whose parent folder is `parent`.
    fn locate(&self, parent: Option<&str>) -> (Option<String>, Option<String>) {
        let mut names = Vec::new();
        let mut datacenter = None;
        let mut at = parent.map(str::to_string);
        while let Some(id) = at.filter(|id| *id != self.root) {
            let Some((name, up, dc)) = self.nodes.get(&id) else {
                break;
            };
            if *dc && datacenter.is_none() {
                datacenter = Some(name.clone());
            }
            names.push(name.clone());
            at = up.clone();
            if names.len() > 64 {
                break;
            }
        }
        // A VM in a vApp has no folder; with one datacenter it is still known where it is.
        if datacenter.is_none() && self.datacenters.len() == 1 {
            datacenter = Some(self.datacenters[0].clone());
        }
        let folder = (!names.is_empty()).then(|| {
            names.reverse();
            format!("/{}", names.join("/"))
        });
        (folder, datacenter)
    }
}

fn vm_info(o: &ObjectContent, places: &Places) -> VmInfo {
    let text = |p: &str| o.prop(p).and_then(soap::value_text);
    let parent = o
        .prop("parent")
        .and_then(soap::value_moref)
        .map(|m| m.value);
    let (folder, datacenter) = places.locate(parent.as_deref());
    let (disks, nics) = o
        .prop("config.hardware.device")
        .map(devices)
        .unwrap_or_default();
    VmInfo {
        moref: o.obj.value.clone(),
        name: text("name").unwrap_or_else(|| o.obj.value.clone()),
        instance_uuid: text("config.instanceUuid"),
        bios_uuid: text("config.uuid"),
        vcpus: text("config.hardware.numCPU").and_then(|v| v.parse().ok()),
        memory_mb: text("config.hardware.memoryMB").and_then(|v| v.parse().ok()),
        guest_id: text("config.guestId"),
        guest_full_name: text("config.guestFullName"),
        firmware: text("config.firmware"),
        power_state: text("runtime.powerState"),
        change_tracking: text("config.changeTrackingEnabled").as_deref() == Some("true"),
        folder,
        datacenter,
        disks,
        nics,
    }
}

/// The disks and NICs of a `config.hardware.device` value.
fn devices(val: &str) -> (Vec<VmDisk>, Vec<VmNic>) {
    soap::with_value(val, |v| {
        let mut disks = Vec::new();
        let mut nics = Vec::new();
        for d in v.children().filter(|n| n.is_element()) {
            let kind = soap::xsi_type(d).unwrap_or_default();
            let key = soap::text_of(d, "key").and_then(|k| k.parse::<i32>().ok());
            let label = soap::child(d, "deviceInfo")
                .and_then(|i| soap::text_of(i, "label"))
                .unwrap_or_default()
                .to_string();
            if kind == "VirtualDisk" {
                let backing = soap::child(d, "backing");
                let capacity = soap::text_of(d, "capacityInBytes")
                    .and_then(|b| b.parse::<u64>().ok())
                    .or_else(|| {
                        soap::text_of(d, "capacityInKB")
                            .and_then(|k| k.parse::<u64>().ok())
                            .map(|k| k * 1024)
                    });
                if let (Some(key), Some(capacity_bytes), Some(b)) = (key, capacity, backing) {
                    disks.push(VmDisk {
                        key,
                        label,
                        file_name: soap::text_of(b, "fileName").unwrap_or_default().to_string(),
                        capacity_bytes,
                        thin: soap::text_of(b, "thinProvisioned").map(|t| t == "true"),
                        change_id: soap::text_of(b, "changeId").map(str::to_string),
                    });
                }
            } else if let Some(mac) = soap::text_of(d, "macAddress") {
                nics.push(VmNic {
                    label,
                    kind: kind.to_string(),
                    mac: Some(mac.to_string()),
                });
            }
        }
        Some((disks, nics))
    })
    .unwrap_or_default()
}

/// The source's VMs as an inventory.
pub fn inventory(source: &VsphereSource, manager_id: &str) -> Result<Inventory, ConnectorError> {
    let err = |e: VsphereError| ConnectorError::Source(e.to_string());
    let session = Session::login(source).map_err(err)?;
    let vms = vms(&session, &source.vms);
    session.logout();
    let vms = vms.map_err(err)?;
    let mut inventory = Inventory::from_hypervisor(
        manager_id.to_string(),
        reqwest::Url::parse(&source.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string)),
        vms.iter()
            .map(|v| inventory_vm(v, source.applications_from_folders))
            .collect(),
        vms.iter().map(|v| vec![None; v.disks.len()]).collect(),
    );
    inventory.vm_manager_type = Some(tern_api::connector::VmManagerType::Vsphere);
    Ok(inventory)
}

/// The snapshot of run `run_id` of job `job_id`.
pub fn snapshot_name(job_id: &str, run_id: &str) -> String {
    bitmap_name(job_id, run_id)
}

/// Reads the VM's disks at one point in time (a snapshot) into the run's prepared folder, or
/// finds them there from an earlier attempt. `progress` gets the virtual bytes read. Blocking.
pub fn prepare(
    source: &VsphereSource,
    state_dir: &Path,
    work: &ReplicationWork,
    vm: &str,
    progress: tern_disk::Progress<'_>,
) -> Result<PreparedRun, ReplicateError> {
    let dir = prepared::prepared_dir(state_dir, &work.job_id, &work.run_id)?;
    let keys: Vec<i32> = work
        .disks
        .iter()
        .map(|d| match d {
            DiskSource::Vsphere { key, .. } => *key,
            _ => 0,
        })
        .collect();
    let (base, old) = prepared::base_maps(state_dir, work, keys.len())?;
    if let Some(run) = prepared::reusable(&dir, state_dir, work, &base)? {
        return Ok(run);
    }
    let hv = |e: VsphereError| ReplicateError::Hypervisor(e.to_string());
    let base_ids = match &base {
        Some(b) => kept_change_ids(state_dir, &work.job_id, b),
        None => Vec::new(),
    };
    let session = Arc::new(Session::login(source).map_err(hv)?);
    let bases = Bases {
        run: &base,
        maps: &old,
        change_ids: &base_ids,
    };
    let result = read_vm(&session, source, &dir, work, vm, &keys, &bases, progress);
    session.logout();
    let disks = result?;
    let run = PreparedRun {
        source: format!("{SOURCE_PREFIX}{vm}"),
        base_run_id: base,
        disks,
    };
    prepared::save(&dir, &run)?;
    Ok(run)
}

/// What an incremental run starts from: the confirmed run, its block maps and its disks'
/// change ids (empty for a seed).
struct Bases<'a> {
    run: &'a Option<String>,
    maps: &'a [tern_disk::blockmap::BlockMap],
    change_ids: &'a [Option<String>],
}

#[allow(clippy::too_many_arguments)]
fn read_vm(
    session: &Arc<Session>,
    source: &VsphereSource,
    dir: &Path,
    work: &ReplicationWork,
    vm: &str,
    keys: &[i32],
    bases: &Bases<'_>,
    progress: tern_disk::Progress<'_>,
) -> Result<Vec<prepared::PreparedObject>, ReplicateError> {
    let hv = |e: VsphereError| ReplicateError::Hypervisor(e.to_string());
    let vm_err = |detail: String| {
        ReplicateError::Hypervisor(
            VsphereError::Vm {
                vm: vm.into(),
                detail,
            }
            .to_string(),
        )
    };
    let vm_ref = MoRef::new("VirtualMachine", vm);
    let props = session
        .properties(&vm_ref, VM_PROPERTIES)
        .map_err(|e| match e {
            VsphereError::Fault { fault, .. } if fault == "ManagedObjectNotFound" => {
                vm_err("no longer exists in vSphere (deleted or unregistered?); re-import the server catalog".into())
            }
            e => hv(e),
        })?;
    let parent = props.prop("parent").and_then(soap::value_moref);
    let places = Places::above(session, parent.as_ref()).map_err(hv)?;
    let info = vm_info(&props, &places);
    let now: Vec<i32> = info.disks.iter().map(|d| d.key).collect();
    if now != keys {
        return Err(vm_err(format!(
            "({}) now has disks {now:?} but the server catalog lists {keys:?}: re-import the server catalog (ImportServerCatalog) and create the job again",
            info.name
        )));
    }
    let datacenter = info.datacenter.clone().ok_or_else(|| {
        vm_err(
            "its datacenter could not be found (a VM in a vApp with several datacenters?)".into(),
        )
    })?;
    // A snapshot an earlier attempt of this job left (a crash mid-read) goes first.
    remove_snapshots(session, &vm_ref, &job_prefix(&work.job_id)).map_err(hv)?;
    std::fs::create_dir_all(dir).map_err(|source| ReplicateError::State {
        path: dir.to_path_buf(),
        source,
    })?;
    let name = snapshot_name(&work.job_id, &work.run_id);
    let snapshot = take_snapshot(session, &vm_ref, &name, source.quiesce)
        .map_err(|e| vm_err(format!("taking snapshot {name}: {e}")))?;
    let read = read_snapshot(
        session,
        source,
        &snapshot,
        &datacenter,
        dir,
        &info,
        bases,
        progress,
    );
    let removed = remove_snapshot(session, &snapshot);
    match (read, removed) {
        (Ok(disks), Ok(_)) => Ok(disks),
        (Ok(_), Err(e)) => Err(vm_err(format!(
            "removing snapshot {name} after the read: {e}; the next run removes it"
        ))),
        (Err(e), Ok(_)) => Err(e),
        (Err(e), Err(r)) => {
            tracing::warn!(%vm, snapshot = %name, error = %r, "could not remove the failed run's snapshot; the next run removes it");
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn read_snapshot(
    session: &Arc<Session>,
    source: &VsphereSource,
    snapshot: &MoRef,
    datacenter: &str,
    dir: &Path,
    info: &VmInfo,
    bases: &Bases<'_>,
    progress: tern_disk::Progress<'_>,
) -> Result<Vec<prepared::PreparedObject>, ReplicateError> {
    let hv = |e: VsphereError| ReplicateError::Hypervisor(e.to_string());
    let disks = snapshot_disks(session, snapshot).map_err(hv)?;
    let mut out = Vec::with_capacity(info.disks.len());
    for (i, now) in info.disks.iter().enumerate() {
        let d = disks.iter().find(|d| d.key == now.key).ok_or_else(|| {
            hv(VsphereError::Vm {
                vm: info.moref.clone(),
                detail: format!("disk {} is not in the run's snapshot", now.label),
            })
        })?;
        let rerr = |detail: String| {
            hv(VsphereError::Vm {
                vm: info.moref.clone(),
                detail: format!("reading disk {} ({}): {detail}", d.label, d.file_name),
            })
        };
        let disk =
            DatastoreDisk::open(session.clone(), datacenter, d).map_err(|e| rerr(e.to_string()))?;
        let object = prepared::object_path(dir, i);
        let w = File::create(&object).map_err(|source| ReplicateError::State {
            path: object.clone(),
            source,
        })?;
        let w = std::io::BufWriter::new(w);
        let (changes, map, delta) = match bases.maps.get(i) {
            None => {
                let (map, _) =
                    prepared::read_whole(&disk, &format!("disk-{i}.vmdk"), None, w, progress)
                        .map_err(|e| rerr(e.to_string()))?;
                (Changes::Seed, map, None)
            }
            Some(old) => {
                let base_id = bases.change_ids.get(i).cloned().flatten();
                let tracked = match tracked_areas(session, source, snapshot, info, d, base_id.as_deref()) {
                    Ok(areas) => Ok(areas),
                    Err(Some(reason)) if source.changed_blocks == ChangedBlocks::Bitmap => {
                        return Err(rerr(format!(
                            "{reason}; changed_blocks = \"bitmap\" allows no full comparison (use \"auto\" to fall back)"
                        )))
                    }
                    Err(reason) => Err(reason),
                };
                match tracked {
                    Ok(areas) => {
                        let found = crate::changed::extents_delta(
                            |at, buf| disk.read_at(buf, at),
                            disk.size(),
                            &areas,
                            old,
                            w,
                            progress,
                        )
                        .map_err(|e| rerr(e.to_string()))?;
                        let changes = Changes::Bitmap {
                            bitmap: format!(
                                "vSphere changed block tracking since change id {}",
                                base_id.unwrap_or_default()
                            ),
                            dirty_blocks: found.dirty_blocks,
                        };
                        let mut summary = found.summary;
                        let map = crate::replicate::take_map(&mut summary);
                        (changes, map, Some(summary))
                    }
                    Err(reason) => {
                        if reason.is_some() {
                            tracing::warn!(vm = %info.moref, disk = %d.label, ?reason, "reading the whole disk to find its changes");
                        }
                        let name = format!("disk-{i}.vmdk");
                        let (map, delta) =
                            prepared::read_whole(&disk, &name, Some(old), w, progress)
                                .map_err(|e| rerr(e.to_string()))?;
                        (Changes::Compare { fallback: reason }, map, delta)
                    }
                }
            }
        };
        let made = prepared::Made {
            what: format!("vsphere {} {}", info.name, d.label),
            source_format: "vmdk".into(),
            source_variant: disk.variant(),
            virtual_size: disk.size(),
            changes,
            bytes_read: disk.bytes_read(),
            map,
            delta,
            change_id: d.change_id.clone().filter(|id| !id.is_empty()),
        };
        out.push(prepared::made(dir, i, made, bases.run)?);
    }
    Ok(out)
}

/// The areas of `disk` changed since change id `base_id`, as vSphere's changed block tracking
/// reports them; or why they cannot be had (`None`: the source compares by choice).
fn tracked_areas(
    session: &Session,
    source: &VsphereSource,
    snapshot: &MoRef,
    info: &VmInfo,
    disk: &VmDisk,
    base_id: Option<&str>,
) -> Result<Vec<tern_disk::Extent>, Option<String>> {
    if source.changed_blocks == ChangedBlocks::Compare {
        return Err(None);
    }
    if !info.change_tracking {
        return Err(Some("changed block tracking is off on this VM".into()));
    }
    let Some(base_id) = base_id else {
        return Err(Some(
            "no change id of the base run is kept (tracking was off then)".into(),
        ));
    };
    if disk.change_id.as_deref().is_none_or(str::is_empty) {
        return Err(Some(
            "vSphere reports no change id for the disk in the run's snapshot".into(),
        ));
    }
    changed_areas(session, &MoRef::new("VirtualMachine", &info.moref), snapshot, disk, base_id).map_err(|e| {
        Some(format!(
            "vSphere answered no changed areas since the base run's change id ({e}); was tracking reset?"
        ))
    })
}

/// QueryChangedDiskAreas from offset 0 to the disk's end (vSphere may answer in parts).
pub fn changed_areas(
    session: &Session,
    vm: &MoRef,
    snapshot: &MoRef,
    disk: &VmDisk,
    change_id: &str,
) -> Result<Vec<tern_disk::Extent>, VsphereError> {
    let mut areas = Vec::new();
    let mut offset = 0u64;
    while offset < disk.capacity_bytes {
        let params = format!(
            "<snapshot type=\"VirtualMachineSnapshot\">{}</snapshot><deviceKey>{}</deviceKey><startOffset>{offset}</startOffset><changeId>{}</changeId>",
            escape(&snapshot.value),
            disk.key,
            escape(change_id)
        );
        let answer = session.invoke("QueryChangedDiskAreas", vm, &params)?;
        let doc = roxmltree::Document::parse(&answer)
            .map_err(|e| VsphereError::Protocol(format!("QueryChangedDiskAreas: {e}")))?;
        let rv = doc
            .descendants()
            .find(|n| n.is_element() && n.tag_name().name() == "returnval")
            .ok_or_else(|| VsphereError::Protocol("QueryChangedDiskAreas: no returnval".into()))?;
        let num = |n: roxmltree::Node<'_, '_>, name: &str| {
            soap::text_of(n, name).and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (start, length) = (num(rv, "startOffset"), num(rv, "length"));
        let (Some(start), Some(length)) = (start, length) else {
            return Err(VsphereError::Protocol(
                "QueryChangedDiskAreas: no startOffset/length".into(),
            ));
        };
        if start != offset || length == 0 {
            return Err(VsphereError::Protocol(format!(
                "QueryChangedDiskAreas answered {length} bytes from {start} when asked from {offset}"
            )));
        }
        for a in rv
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "changedArea")
        {
            if let (Some(s), Some(l)) = (num(a, "start"), num(a, "length")) {
                areas.push(tern_disk::Extent {
                    offset: s,
                    length: l,
                });
            }
        }
        offset = start + length;
    }
    Ok(areas)
}

const CHANGE_IDS: &str = "vsphere-change-ids.json";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeptChangeIds {
    run_id: String,
    change_ids: Vec<Option<String>>,
}

/// The change ids kept with confirmed run `base` of `job_id`, one per disk (empty when none).
fn change_ids_path(state_dir: &Path, job_id: &str) -> std::path::PathBuf {
    state_dir.join("jobs").join(job_id).join(CHANGE_IDS)
}

fn kept_change_ids(state_dir: &Path, job_id: &str, base: &str) -> Vec<Option<String>> {
    let path = change_ids_path(state_dir, job_id);
    // An unreadable record makes the next run compare every block: slower, never wrong.
    crate::replicate::read_json::<KeptChangeIds>(&path, "")
        .ok()
        .flatten()
        .filter(|k| k.run_id == base)
        .map(|k| k.change_ids)
        .unwrap_or_default()
}

/// After run `run_id` of `job_id` (prepared as `run`) is confirmed: its disks' change ids are
/// kept for the next run, and the prepared folders of the job's other runs go.
pub fn after_commit(state_dir: &Path, job_id: &str, run_id: &str, run: &PreparedRun) {
    let path = change_ids_path(state_dir, job_id);
    let kept = KeptChangeIds {
        run_id: run_id.into(),
        change_ids: run.disks.iter().map(|d| d.change_id.clone()).collect(),
    };
    let bytes = serde_json::to_vec(&kept).expect("change ids serialise");
    if let Err(e) = crate::replicate::write_atomic(&path, &bytes) {
        // The next run then compares every block: slower, never wrong.
        tracing::warn!(path = %path.display(), error = %e, "could not keep the run's change ids");
    }
    prepared::remove_other_runs(state_dir, job_id, run_id);
}

/// The snapshots of a VM, by name (the whole tree).
pub fn snapshots(session: &Session, vm: &MoRef) -> Result<Vec<(String, MoRef)>, VsphereError> {
    let o = session.properties(vm, &["snapshot.rootSnapshotList"]);
    let o = match o {
        Ok(o) => o,
        // A VM without snapshots has no `snapshot` property at all.
        Err(VsphereError::Fault { fault, .. }) if fault == "InvalidProperty" => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let Some(val) = o.prop("snapshot.rootSnapshotList") else {
        return Ok(Vec::new());
    };
    Ok(soap::with_value(val, |v| {
        let mut out = Vec::new();
        for tree in v.descendants().filter(|n| {
            n.is_element()
                && soap::child(*n, "snapshot").is_some()
                && soap::child(*n, "name").is_some()
        }) {
            if let (Some(name), Some(snap)) = (
                soap::text_of(tree, "name"),
                soap::child(tree, "snapshot").and_then(soap::moref_of),
            ) {
                out.push((name.to_string(), snap));
            }
        }
        Some(out)
    })
    .unwrap_or_default())
}

/// Removes the VM's snapshots whose names start with `prefix`; returns their names.
fn remove_snapshots(
    session: &Session,
    vm: &MoRef,
    prefix: &str,
) -> Result<Vec<String>, VsphereError> {
    let mut removed = Vec::new();
    for (name, snap) in snapshots(session, vm)? {
        if name.starts_with(prefix) {
            remove_snapshot(session, &snap)?;
            tracing::info!(vm = %vm.value, snapshot = %name, "removed a snapshot an earlier attempt left");
            removed.push(name);
        }
    }
    Ok(removed)
}

/// The VM a prepared run of this source read.
pub fn prepared_vm(run: &PreparedRun) -> Option<&str> {
    run.source.strip_prefix(SOURCE_PREFIX)
}

/// A run that will not be resumed: a snapshot of it that a crash left, and its prepared
/// objects, go. Blocking.
pub fn give_up(source: &VsphereSource, state_dir: &Path, job_id: &str, run_id: &str, vm: &str) {
    let own = snapshot_name(job_id, run_id);
    let result = Session::login(source).and_then(|s| {
        let r = remove_snapshots(&s, &MoRef::new("VirtualMachine", vm), &own);
        s.logout();
        r
    });
    if let Err(e) = result {
        tracing::warn!(%vm, snapshot = %own, error = %e, "could not check for a snapshot of the run given up");
    }
    if let Ok(dir) = prepared::prepared_dir(state_dir, job_id, run_id) {
        prepared::remove(&dir);
    }
}

/// A deleted job: any snapshot of it left on the VM goes. Returns the snapshots removed.
/// Blocking.
pub fn forget(source: &VsphereSource, vm: &str, job_id: &str) -> Result<Vec<String>, VsphereError> {
    let session = Session::login(source)?;
    let removed = remove_snapshots(
        &session,
        &MoRef::new("VirtualMachine", vm),
        &job_prefix(job_id),
    );
    session.logout();
    removed
}
