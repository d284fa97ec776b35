//! Talking to libvirt (feature `libvirt`): the inventory of the domains, and a replication
//! run of one running domain through libvirt's backup API.
//!
//! A run begins a pull-mode backup (`virDomainBackupBegin`) that creates the run's checkpoint
//! `tern-<job>-<run>` at the same instant, so the checkpoint marks exactly the point in time the
//! backup exports. QEMU serves each disk over NBD on a unix socket in the run's work directory
//! (export name = the disk's target, `vda`). The seed reads the `base:allocation` extents; an
//! incremental run's backup is `<incremental>` from the base run's checkpoint and its export
//! carries that checkpoint's bitmap as meta context `qemu:dirty-bitmap:backup-<target>`: only
//! the dirty 512 KiB blocks are read ([`crate::changed::bitmap_delta`], the same delta the full
//! comparison makes). The backup job is always ended (`virDomainAbortJob`, the documented end
//! of a pull backup), also when the read fails.
//!
//! Checkpoints: a run that fails removes its own checkpoint (libvirt merges its bitmap into
//! the parent, so the base still covers every write); [`commit`] (the run was confirmed)
//! removes the job's older ones. A base checkpoint that is missing (deleted behind Tern's
//! back) makes the run compare every block, with the reason in [`Changes::Compare`]; a domain
//! whose disks cannot have checkpoints (raw files, an old libvirt) is read through a backup
//! without checkpoint and compared the same way. `changed_blocks = "bitmap"` makes both a
//! failure.

use std::ffi::{c_void, CStr, CString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tern_disk::blockmap::BlockMap;
use tern_disk::delta::DeltaSummary;
use tern_nbd::{Client, ConnectOptions, NbdDisk, BASE_ALLOCATION};
use virt::connect::Connect;
use virt::domain::Domain;
use virt_sys as sys;

use super::xml::{self, DomainInfo};
use crate::changed::{self, bitmap_name, ChangedBlocks, Changes};
use crate::replicate::prepared;

/// Why a libvirt call or a domain's backup failed, naming the domain and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("cannot connect to libvirt at {uri}: {detail} (check that libvirtd or virtqemud runs and that the connector may use this URI)")]
    Connect { uri: String, detail: String },
    #[error("libvirt at {uri}: {what}: {detail}")]
    Call {
        uri: String,
        what: String,
        detail: String,
    },
    #[error("domain {domain}: {detail}")]
    Domain { domain: String, detail: String },
    #[error("domain {domain}: {reason}; changed_blocks = \"bitmap\" allows no full comparison (use \"auto\" to fall back)")]
    NoBitmap { domain: String, reason: String },
    #[error("domain {domain} disk {target}: reading the backup's NBD export failed: {detail}")]
    Read {
        domain: String,
        target: String,
        detail: String,
    },
}

type Result<T> = std::result::Result<T, LibvirtError>;

fn message(e: &virt::error::Error) -> String {
    e.message().to_string()
}

fn last_error() -> String {
    message(&virt::error::Error::last_error())
}

extern "C" {
    // libvirt's lists are malloc'd; the caller frees the array.
    fn free(p: *mut c_void);
}

/// A connection to one libvirt URI.
pub struct Hypervisor {
    conn: Connect,
    uri: String,
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        let _ = self.conn.close();
    }
}

impl Hypervisor {
    pub fn open(uri: &str) -> Result<Hypervisor> {
        // libvirt's default handler prints every error to the terminal; Tern returns or logs
        // each one with its context instead.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| LibvirtError::Connect {
            uri: uri.into(),
            detail: message(&e),
        })?;
        Ok(Hypervisor {
            conn,
            uri: uri.into(),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn call(&self, what: impl Into<String>, detail: String) -> LibvirtError {
        LibvirtError::Call {
            uri: self.uri.clone(),
            what: what.into(),
            detail,
        }
    }

    fn lookup(&self, name: &str) -> Result<Domain> {
        Domain::lookup_by_name(&self.conn, name).map_err(|e| LibvirtError::Domain {
            domain: name.into(),
            detail: format!("not found ({})", message(&e)),
        })
    }

    /// The domains whose names pass `filters` (shell globs; none: all), sorted by name.
    pub fn inventory(&self, filters: &[String]) -> Result<Vec<DomainInfo>> {
        let doms = self
            .conn
            .list_all_domains(0)
            .map_err(|e| self.call("listing the domains", message(&e)))?;
        let mut out = Vec::new();
        for d in doms {
            let name = d
                .get_name()
                .map_err(|e| self.call("reading a domain's name", message(&e)))?;
            if xml::selected(filters, &name) {
                out.push(self.describe(&d, &name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One domain as the inventory reports it.
    pub fn domain(&self, name: &str) -> Result<DomainInfo> {
        let d = self.lookup(name)?;
        self.describe(&d, name)
    }

    fn describe(&self, d: &Domain, name: &str) -> Result<DomainInfo> {
        let dom_err = |detail: String| LibvirtError::Domain {
            domain: name.into(),
            detail,
        };
        let text = d
            .get_xml_desc(0)
            .map_err(|e| dom_err(format!("reading its XML: {}", message(&e))))?;
        let mut info = xml::parse_domain(&text).map_err(dom_err)?;
        info.running = d
            .is_active()
            .map_err(|e| dom_err(format!("reading its state: {}", message(&e))))?;
        for disk in &mut info.disks {
            let target = CString::new(disk.target.as_str())
                .map_err(|_| dom_err("a disk target holds a NUL byte".into()))?;
            let mut bi = sys::virDomainBlockInfo {
                capacity: 0,
                allocation: 0,
                physical: 0,
            };
            // SAFETY: the domain pointer is alive while `d` is; `bi` is a valid out-pointer.
            let rc = unsafe { sys::virDomainGetBlockInfo(d.as_ptr(), target.as_ptr(), &mut bi, 0) };
            if rc == 0 {
                disk.virtual_size = Some(bi.capacity);
            } else {
                tracing::warn!(domain = name, disk = %disk.target, error = %last_error(), "no virtual size for a disk");
            }
        }
        Ok(info)
    }

    /// The names of the domain's checkpoints.
    pub fn checkpoints(&self, domain: &str) -> Result<Vec<String>> {
        let d = self.lookup(domain)?;
        list_checkpoints(&d).map_err(|detail| LibvirtError::Domain {
            domain: domain.into(),
            detail: format!("listing its checkpoints: {detail}"),
        })
    }

    /// Deletes one checkpoint (its bitmap is merged into its parent's by libvirt).
    pub fn delete_checkpoint(&self, domain: &str, name: &str) -> Result<()> {
        let d = self.lookup(domain)?;
        delete_checkpoint(&d, name).map_err(|detail| LibvirtError::Domain {
            domain: domain.into(),
            detail: format!("deleting checkpoint {name}: {detail}"),
        })
    }

    /// Deletes one checkpoint's libvirt metadata only, leaving its bitmap in the disk images:
    /// what libvirt allows for a shut-off domain, whose images the caller then edits itself.
    pub fn delete_checkpoint_metadata(&self, domain: &str, name: &str) -> Result<()> {
        let d = self.lookup(domain)?;
        delete_checkpoint_flags(&d, name, sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY).map_err(
            |detail| LibvirtError::Domain {
                domain: domain.into(),
                detail: format!("deleting the metadata of checkpoint {name}: {detail}"),
            },
        )
    }

    /// Whether the domain has a job (a backup) running.
    pub fn has_job(&self, domain: &str) -> Result<bool> {
        let d = self.lookup(domain)?;
        let mut info = std::mem::MaybeUninit::<sys::virDomainJobInfo>::zeroed();
        // SAFETY: valid domain pointer and out-pointer.
        let rc = unsafe { sys::virDomainGetJobInfo(d.as_ptr(), info.as_mut_ptr()) };
        if rc != 0 {
            return Err(self.call(format!("reading the job of {domain}"), last_error()));
        }
        // SAFETY: filled in by libvirt on success.
        let info = unsafe { info.assume_init() };
        Ok(info.type_ != sys::VIR_DOMAIN_JOB_NONE as i32)
    }
}

fn list_checkpoints(d: &Domain) -> std::result::Result<Vec<String>, String> {
    let mut arr: *mut sys::virDomainCheckpointPtr = std::ptr::null_mut();
    // SAFETY: libvirt fills `arr` with `n` references that we free below.
    let n = unsafe { sys::virDomainListAllCheckpoints(d.as_ptr(), &mut arr, 0) };
    if n < 0 {
        return Err(last_error());
    }
    let mut names = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: `arr` holds `n` valid checkpoint pointers.
        unsafe {
            let c = *arr.add(i);
            let p = sys::virDomainCheckpointGetName(c);
            if !p.is_null() {
                names.push(CStr::from_ptr(p).to_string_lossy().into_owned());
            }
            sys::virDomainCheckpointFree(c);
        }
    }
    // SAFETY: the array was allocated by libvirt with malloc.
    unsafe { free(arr as *mut c_void) };
    Ok(names)
}

fn delete_checkpoint(d: &Domain, name: &str) -> std::result::Result<(), String> {
    delete_checkpoint_flags(d, name, 0)
}

fn delete_checkpoint_flags(d: &Domain, name: &str, flags: u32) -> std::result::Result<(), String> {
    let cname = CString::new(name).map_err(|_| "the name holds a NUL byte".to_string())?;
    // SAFETY: valid domain pointer and C string; the checkpoint reference is freed below.
    unsafe {
        let c = sys::virDomainCheckpointLookupByName(d.as_ptr(), cname.as_ptr(), 0);
        if c.is_null() {
            return Err(last_error());
        }
        let rc = sys::virDomainCheckpointDelete(c, flags);
        let err = (rc != 0).then(last_error);
        sys::virDomainCheckpointFree(c);
        err.map_or(Ok(()), Err)
    }
}

/// The pull-mode backup of a run, ended (`virDomainAbortJob`) when dropped.
struct ActiveBackup<'a> {
    dom: &'a Domain,
    name: &'a str,
    ended: bool,
}

impl ActiveBackup<'_> {
    fn end(&mut self) -> std::result::Result<(), String> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        // SAFETY: valid domain pointer.
        let rc = unsafe { sys::virDomainAbortJob(self.dom.as_ptr()) };
        if rc != 0 {
            return Err(last_error());
        }
        Ok(())
    }
}

impl Drop for ActiveBackup<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            tracing::warn!(domain = self.name, error = %e, "could not end the backup job");
        }
    }
}

fn begin(dom: &Domain, backup: &str, checkpoint: Option<&str>) -> std::result::Result<(), String> {
    let b = CString::new(backup).map_err(|_| "backup XML holds a NUL byte".to_string())?;
    let c = checkpoint
        .map(CString::new)
        .transpose()
        .map_err(|_| "checkpoint XML holds a NUL byte".to_string())?;
    // SAFETY: valid domain pointer and C strings (or null for no checkpoint).
    let rc = unsafe {
        sys::virDomainBackupBegin(
            dom.as_ptr(),
            b.as_ptr(),
            c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            0,
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Ends a pull backup that an earlier attempt left running (a crashed connector): one whose
/// NBD socket is this job's `socket`. A backup job of anyone else is left alone (the new
/// backup then fails, naming libvirt's refusal). Returns whether one was ended.
fn end_leftover(dom: &Domain, socket: &Path) -> bool {
    // SAFETY: valid domain pointer; a non-null result is a malloc'd C string freed below.
    let p = unsafe { sys::virDomainBackupGetXMLDesc(dom.as_ptr(), 0) };
    if p.is_null() {
        return false; // no backup job
    }
    // SAFETY: libvirt returned a NUL-terminated string.
    let text = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: allocated by libvirt with malloc.
    unsafe { free(p as *mut c_void) };
    if xml::backup_socket(&text).as_deref() != Some(socket) {
        return false;
    }
    // SAFETY: valid domain pointer.
    unsafe { sys::virDomainAbortJob(dom.as_ptr()) == 0 }
}

/// One run of one domain.
pub struct RunSpec<'a> {
    pub job_id: &'a str,
    pub run_id: &'a str,
    pub domain: &'a str,
    /// The confirmed run an incremental run is relative to (its checkpoint is the base).
    pub base_run: Option<&'a str>,
    pub mode: ChangedBlocks,
    /// Where the NBD socket and the backup's scratch files go (short path: unix sockets are
    /// limited to 107 bytes).
    pub work_dir: &'a Path,
    /// Called with the virtual bytes of each disk gone through as the disks are read.
    pub progress: tern_disk::Progress<'a>,
}

/// What a run made of one disk.
#[derive(Debug)]
pub struct DiskOutput {
    pub target: String,
    pub virtual_size: u64,
    pub changes: Changes,
    /// Bytes read from the export (data of NBD reads).
    pub bytes_read: u64,
    /// The disk's block map at the run's point in time (kept for the next run).
    pub map: BlockMap,
    /// Incremental runs: the delta's summary.
    pub delta: Option<DeltaSummary>,
}

/// The checkpoint of run `run_id` of job `job_id`.
pub fn checkpoint_name(job_id: &str, run_id: &str) -> String {
    bitmap_name(job_id, run_id)
}

enum How {
    Seed,
    Bitmap { base: String },
    Compare { fallback: Option<String> },
}

/// Replicates every disk of a running domain at one point in time: a seed (stream-optimized
/// VMDK) when `old` is `None`, else a delta against `old` (the kept block maps, one per disk
/// in the domain's order). `out(i, target)` gives the writer of disk `i`'s object.
pub fn replicate<W: Write>(
    hv: &Hypervisor,
    spec: &RunSpec<'_>,
    old: Option<&[BlockMap]>,
    mut out: impl FnMut(usize, &str) -> std::io::Result<W>,
) -> Result<Vec<DiskOutput>> {
    let name = spec.domain;
    let dom_err = |detail: String| LibvirtError::Domain {
        domain: name.into(),
        detail,
    };
    let dom = hv.lookup(name)?;
    let info = hv.describe(&dom, name)?;
    if !info.running {
        return Err(dom_err("is not running; libvirt's backup API reads running domains only (start it, or list its disk files in the files source)".into()));
    }
    let targets: Vec<&str> = info.disks.iter().map(|d| d.target.as_str()).collect();
    if targets.is_empty() {
        return Err(dom_err("has no disks".into()));
    }
    if let Some(old) = old {
        if old.len() != targets.len() {
            return Err(dom_err(format!(
                "has {} disks but the kept block maps are of {}; a new seed is needed",
                targets.len(),
                old.len()
            )));
        }
    }
    let own = checkpoint_name(spec.job_id, spec.run_id);
    let no_bitmap = |reason: String| -> Result<How> {
        if spec.mode == ChangedBlocks::Bitmap && old.is_some() {
            return Err(LibvirtError::NoBitmap {
                domain: name.into(),
                reason,
            });
        }
        if old.is_some() {
            tracing::warn!(domain = name, %reason, "reading the whole disks to find their changes");
        }
        Ok(match old {
            None => How::Seed,
            Some(_) => How::Compare {
                fallback: Some(reason),
            },
        })
    };
    let use_checkpoints = spec.mode != ChangedBlocks::Compare;
    let mut how = match old {
        None => How::Seed,
        Some(_) if !use_checkpoints => How::Compare { fallback: None },
        Some(_) => How::Bitmap {
            base: String::new(),
        },
    };
    if use_checkpoints {
        let present =
            list_checkpoints(&dom).map_err(|e| dom_err(format!("listing its checkpoints: {e}")))?;
        // An earlier attempt of this run made its checkpoint at another instant: remake it.
        if present.contains(&own) {
            delete_checkpoint(&dom, &own).map_err(|e| {
                dom_err(format!(
                    "removing checkpoint {own} of an earlier attempt: {e}"
                ))
            })?;
        }
        if let (Some(old), How::Bitmap { base }) = (old, &mut how) {
            match spec.base_run {
                None => how = no_bitmap("no confirmed run is recorded to start from".into())?,
                Some(b) => {
                    let want = checkpoint_name(spec.job_id, b);
                    let sizes: Vec<u64> = info
                        .disks
                        .iter()
                        .map(|d| d.virtual_size.unwrap_or(0))
                        .collect();
                    if !present.contains(&want) {
                        how = no_bitmap(format!("the checkpoint {want} of the base run is missing (deleted outside Tern?)"))?;
                    } else if let Some((i, _)) = old
                        .iter()
                        .zip(&sizes)
                        .enumerate()
                        .find(|(_, (m, s))| m.disk_size != **s)
                    {
                        how = no_bitmap(format!(
                            "disk {} was resized since the base run",
                            targets[i]
                        ))?;
                    } else {
                        *base = want;
                    }
                }
            }
        }
    }

    std::fs::create_dir_all(spec.work_dir).map_err(|e| {
        dom_err(format!(
            "creating the work directory {}: {e}",
            spec.work_dir.display()
        ))
    })?;
    let socket = spec.work_dir.join("nbd.sock");
    if end_leftover(&dom, &socket) {
        tracing::warn!(
            domain = name,
            "ended a backup job an earlier attempt of this job left running"
        );
    }
    let _ = std::fs::remove_file(&socket);
    for t in &targets {
        let _ = std::fs::remove_file(spec.work_dir.join(format!("scratch-{t}.qcow2")));
    }
    let incremental = match &how {
        How::Bitmap { base } => Some(base.as_str()),
        _ => None,
    };
    let backup = xml::backup_xml(&socket, spec.work_dir, &targets, incremental);
    let mut made_checkpoint = false;
    if use_checkpoints {
        match begin(&dom, &backup, Some(&xml::checkpoint_xml(&own, &targets))) {
            Ok(()) => made_checkpoint = true,
            Err(e) => {
                how = no_bitmap(format!("libvirt could not create a checkpoint: {e}"))?;
                tracing::info!(domain = name, error = %e, "no checkpoint for the next run");
            }
        }
    }
    if !made_checkpoint {
        let backup = xml::backup_xml(&socket, spec.work_dir, &targets, None);
        begin(&dom, &backup, None).map_err(|e| dom_err(format!("starting the backup: {e}")))?;
    }
    let mut active = ActiveBackup {
        dom: &dom,
        name,
        ended: false,
    };
    let read = read_disks(spec, &info, &socket, &how, old, &mut out);
    let ended = active.end();
    let _ = std::fs::remove_file(&socket);
    let result = read.and_then(|r| {
        ended.map_err(|e| dom_err(format!("ending the backup job: {e}")))?;
        Ok(r)
    });
    if result.is_err() && made_checkpoint {
        if let Err(e) = delete_checkpoint(&dom, &own) {
            tracing::warn!(domain = name, checkpoint = %own, error = %e, "could not remove the failed run's checkpoint");
        }
    }
    result
}

fn read_disks<W: Write>(
    spec: &RunSpec<'_>,
    info: &DomainInfo,
    socket: &Path,
    how: &How,
    old: Option<&[BlockMap]>,
    out: &mut impl FnMut(usize, &str) -> std::io::Result<W>,
) -> Result<Vec<DiskOutput>> {
    let mut outputs = Vec::new();
    for (i, d) in info.disks.iter().enumerate() {
        let target = d.target.as_str();
        let rerr = |detail: String| LibvirtError::Read {
            domain: spec.domain.into(),
            target: target.into(),
            detail,
        };
        // The seed and the comparison read only the allocated extents; an incremental run
        // reads the dirty ones.
        let context = match how {
            How::Seed | How::Compare { .. } => BASE_ALLOCATION.to_string(),
            How::Bitmap { .. } => xml::backup_bitmap_context(target),
        };
        let client = Client::connect_unix(
            socket,
            &ConnectOptions {
                export: target.into(),
                meta_contexts: vec![context.clone()],
                timeout: Some(Duration::from_secs(120)),
                ..ConnectOptions::default()
            },
        )
        .map_err(|e| rerr(e.to_string()))?;
        let w = out(i, target).map_err(|e| rerr(format!("opening the output: {e}")))?;
        let size = client.size();
        let output = match how {
            How::Seed => {
                let disk = NbdDisk::new(client);
                let name = format!("{target}.vmdk");
                let (map, _) = prepared::read_whole(&disk, &name, None, w, spec.progress)
                    .map_err(|e| rerr(e.to_string()))?;
                let bytes_read = disk.stats().bytes_read;
                let _ = disk.into_client().disconnect();
                DiskOutput {
                    target: target.into(),
                    virtual_size: size,
                    changes: Changes::Seed,
                    bytes_read,
                    map,
                    delta: None,
                }
            }
            How::Bitmap { base } => {
                let mut client = client;
                let ctx = context.as_str();
                if client.context_id(ctx).is_none() {
                    return Err(rerr(format!("the export does not offer {ctx}")));
                }
                let old = &old.expect("incremental runs have maps")[i];
                let found = changed::bitmap_delta(&mut client, ctx, old, w, spec.progress)
                    .map_err(|e| rerr(e.to_string()))?;
                let bytes_read = client.stats().bytes_read;
                let _ = client.disconnect();
                let mut summary = found.summary;
                DiskOutput {
                    target: target.into(),
                    virtual_size: size,
                    changes: Changes::Bitmap {
                        bitmap: base.clone(),
                        dirty_blocks: found.dirty_blocks,
                    },
                    bytes_read,
                    map: take_map(&mut summary),
                    delta: Some(summary),
                }
            }
            How::Compare { fallback } => {
                let disk = NbdDisk::new(client);
                let old = &old.expect("incremental runs have maps")[i];
                let name = format!("{target}.vmdk");
                let (map, delta) = prepared::read_whole(&disk, &name, Some(old), w, spec.progress)
                    .map_err(|e| rerr(e.to_string()))?;
                let bytes_read = disk.stats().bytes_read;
                let _ = disk.into_client().disconnect();
                DiskOutput {
                    target: target.into(),
                    virtual_size: size,
                    changes: Changes::Compare {
                        fallback: fallback.clone(),
                    },
                    bytes_read,
                    map,
                    delta,
                }
            }
        };
        outputs.push(output);
    }
    Ok(outputs)
}

fn take_map(d: &mut DeltaSummary) -> BlockMap {
    crate::replicate::take_map(d)
}

/// After run `run_id` is confirmed: the job's other checkpoints are superseded and removed
/// (a failure leaves one behind and is logged: a little metadata, never a wrong delta).
/// Returns the names removed.
pub fn commit(hv: &Hypervisor, domain: &str, job_id: &str, run_id: &str) -> Result<Vec<String>> {
    let own = checkpoint_name(job_id, run_id);
    let prefix = format!("tern-{job_id}-");
    let mut removed = Vec::new();
    for c in hv.checkpoints(domain)? {
        if c.starts_with(&prefix) && c != own {
            match hv.delete_checkpoint(domain, &c) {
                Ok(()) => removed.push(c),
                Err(e) => {
                    tracing::warn!(%domain, checkpoint = %c, error = %e, "could not remove a superseded checkpoint")
                }
            }
        }
    }
    Ok(removed)
}

/// The default work directory of a run: short, under the state directory.
pub fn work_dir(state_dir: &Path, job_id: &str) -> PathBuf {
    state_dir.join("libvirt").join(job_id)
}
