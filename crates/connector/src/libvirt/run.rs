//! The agent's side of the libvirt source (feature `libvirt`): the inventory of the domains,
//! and replication work turned into a backup of the domain whose objects are uploaded as
//! [prepared objects](crate::replicate::prepared).
//!
//! * [`prepare`]: the work's disks (`libvirt:<domain>/<target>`) are checked against the
//!   domain's disks now, then one backup reads them all at one point in time (a checkpoint per
//!   run: [`super::replicate`]) into the run's `prepared` folder, relative to the kept block
//!   maps of the last confirmed run and its checkpoint. A run prepared by an earlier attempt
//!   against the same base is reused as it is: resuming never takes a second point in time.
//!   A shut-off domain (no backup job possible, nothing writing) is read from its image files
//!   whole instead ([`read_shut_off`]).
//! * [`after_commit`]: once a run is confirmed, the job's older checkpoints are removed (its
//!   own is the next run's base), and prepared folders of the job's failed runs with them.
//! * [`give_up`]: a run that failed or was withdrawn removes its checkpoint (libvirt merges its
//!   bitmap into the parent, so the base still covers every write) and its prepared objects.

use std::fs::File;
use std::path::Path;

use super::{checkpoint_name, inventory_vm, Hypervisor, LibvirtSource, RunSpec};
use crate::replicate::{prepared, DiskSource, PreparedRun, ReplicateError, ReplicationWork};
use crate::{ConnectorError, Inventory};

const SOURCE_PREFIX: &str = "libvirt:";

/// The domains of the source's URI (after its name filters) as an inventory; each disk is
/// inspected through its image file, where it has one.
pub fn inventory(source: &LibvirtSource, manager_id: &str) -> Result<Inventory, ConnectorError> {
    let hv = Hypervisor::open(&source.uri).map_err(|e| ConnectorError::Source(e.to_string()))?;
    let domains = hv
        .inventory(&source.domains)
        .map_err(|e| ConnectorError::Source(e.to_string()))?;
    let read_paths = domains
        .iter()
        .map(|d| {
            d.disks
                .iter()
                .map(|k| k.source.as_ref().map(|p| p.to_string_lossy().into_owned()))
                .collect()
        })
        .collect();
    Ok(Inventory::from_hypervisor(
        manager_id.to_string(),
        Some(source.uri.clone()),
        domains.iter().map(inventory_vm).collect(),
        read_paths,
    ))
}

/// Reads the domain's disks at one point in time into the run's prepared folder (or finds
/// them there from an earlier attempt) and returns the run with its disks as prepared objects.
/// `progress` gets the virtual bytes read. Blocking.
pub fn prepare(
    source: &LibvirtSource,
    state_dir: &Path,
    work: &ReplicationWork,
    domain: &str,
    progress: tern_disk::Progress<'_>,
) -> Result<PreparedRun, ReplicateError> {
    let dir = prepared::prepared_dir(state_dir, &work.job_id, &work.run_id)?;
    let targets: Vec<&str> = work
        .disks
        .iter()
        .map(|d| match d {
            DiskSource::Libvirt { target, .. } => target.as_str(),
            _ => "",
        })
        .collect();
    let (base, old) = prepared::base_maps(state_dir, work, targets.len())?;
    if let Some(run) = prepared::reusable(&dir, state_dir, work, &base)? {
        return Ok(run);
    }

    let hv_err = |e: super::LibvirtError| ReplicateError::Hypervisor(e.to_string());
    let hv = Hypervisor::open(&source.uri).map_err(hv_err)?;
    let info = hv.domain(domain).map_err(hv_err)?;
    let now: Vec<&str> = info.disks.iter().map(|d| d.target.as_str()).collect();
    if now != targets {
        return Err(ReplicateError::Hypervisor(format!(
            "domain {domain} now has disks [{}] but the server catalog lists [{}]: re-import the server catalog (ImportServerCatalog) and create the job again",
            now.join(", "),
            targets.join(", ")
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|source| ReplicateError::State {
        path: dir.clone(),
        source,
    })?;
    if !info.running {
        let disks = read_shut_off(source, &hv, &info, &dir, &base, &old, progress)?;
        return finish(&dir, domain, base, disks);
    }
    let work_dir = super::work_dir(state_dir, &work.job_id);
    let spec = RunSpec {
        job_id: &work.job_id,
        run_id: &work.run_id,
        domain,
        base_run: base.as_deref(),
        mode: source.changed_blocks,
        work_dir: &work_dir,
        progress,
    };
    let outputs = super::replicate(
        &hv,
        &spec,
        (!old.is_empty()).then_some(old.as_slice()),
        |i, _| File::create(prepared::object_path(&dir, i)),
    )
    .map_err(hv_err)?;
    let mut disks = Vec::with_capacity(outputs.len());
    for (i, out) in outputs.into_iter().enumerate() {
        let made = prepared::Made {
            what: format!("libvirt {domain}/{}", out.target),
            source_format: info.disks[i].format.clone().unwrap_or_else(|| "raw".into()),
            source_variant: "libvirt backup".into(),
            virtual_size: out.virtual_size,
            changes: out.changes,
            bytes_read: out.bytes_read,
            map: out.map,
            delta: out.delta,
            change_id: None,
        };
        disks.push(prepared::made(&dir, i, made, &base)?);
    }
    finish(&dir, domain, base, disks)
}

fn finish(
    dir: &Path,
    domain: &str,
    base: Option<String>,
    disks: Vec<prepared::PreparedObject>,
) -> Result<PreparedRun, ReplicateError> {
    let run = PreparedRun {
        source: format!("{SOURCE_PREFIX}{domain}"),
        base_run_id: base,
        disks,
    };
    prepared::save(dir, &run)?;
    Ok(run)
}

/// A shut-off domain has no backup job (the backup API reads running domains), and nothing
/// writes its disks: they are read from their image files, whole — the seed as a VMDK, an
/// incremental run compared block by block (there is no checkpoint to read changes from; the
/// next running run compares too, since this run left no checkpoint). A domain started while
/// its files were read fails the run: the next one reads it through a backup.
fn read_shut_off(
    source: &LibvirtSource,
    hv: &Hypervisor,
    info: &super::DomainInfo,
    dir: &Path,
    base: &Option<String>,
    old: &[tern_disk::blockmap::BlockMap],
    progress: tern_disk::Progress<'_>,
) -> Result<Vec<prepared::PreparedObject>, ReplicateError> {
    let domain = info.name.as_str();
    let fail = |detail: String| {
        ReplicateError::Hypervisor(format!("domain {domain} (shut off): {detail}"))
    };
    if !old.is_empty() && source.changed_blocks == crate::changed::ChangedBlocks::Bitmap {
        return Err(fail("its changes can only be found by reading its disks whole, and changed_blocks = \"bitmap\" allows no full comparison (start the domain, or use \"auto\")".into()));
    }
    let mut out = Vec::with_capacity(info.disks.len());
    for (i, d) in info.disks.iter().enumerate() {
        let Some(path) = &d.source else {
            return Err(fail(format!("disk {} has no image file to read", d.target)));
        };
        let format = d
            .format
            .as_deref()
            .and_then(|f| f.parse::<tern_disk::Format>().ok());
        let opened = tern_disk::open(
            path,
            &tern_disk::OpenOptions {
                format,
                ..Default::default()
            },
        )
        .map_err(|e| fail(format!("disk {} ({}): {e}", d.target, path.display())))?;
        let counted = crate::changed::Counting::new(&*opened);
        let object = prepared::object_path(dir, i);
        let w = File::create(&object).map_err(|source| ReplicateError::State {
            path: object.clone(),
            source,
        })?;
        let name = format!("{}.vmdk", d.target);
        let (map, delta) = prepared::read_whole(
            &counted,
            &name,
            old.get(i),
            std::io::BufWriter::new(w),
            progress,
        )
        .map_err(|e| fail(format!("disk {} ({}): {e}", d.target, path.display())))?;
        let made = prepared::Made {
            what: format!(
                "libvirt {domain}/{} (shut off: {})",
                d.target,
                path.display()
            ),
            source_format: opened.format().to_string(),
            source_variant: opened.variant(),
            virtual_size: opened.size(),
            changes: if old.is_empty() {
                crate::changed::Changes::Seed
            } else {
                crate::changed::Changes::Compare {
                    fallback: Some(
                        "the domain is shut off, so its disk files were read whole".into(),
                    ),
                }
            },
            bytes_read: counted.bytes_read(),
            map,
            delta,
            change_id: None,
        };
        out.push(prepared::made(dir, i, made, base)?);
    }
    let now = hv
        .domain(domain)
        .map_err(|e| ReplicateError::Hypervisor(e.to_string()))?;
    if now.running {
        return Err(fail(
            "it was started while its disk files were read; the next run reads it through a backup"
                .into(),
        ));
    }
    Ok(out)
}

/// The domain a prepared run of this source read.
pub fn prepared_domain(run: &PreparedRun) -> Option<&str> {
    run.source.strip_prefix(SOURCE_PREFIX)
}

/// After run `run_id` of `job_id` is confirmed: the job's other checkpoints on `domain` go, and
/// so do the prepared folders of its other runs. Failures are logged (a little metadata left
/// behind, never a wrong delta). Blocking.
pub fn after_commit(
    source: &LibvirtSource,
    state_dir: &Path,
    job_id: &str,
    run_id: &str,
    domain: &str,
) {
    match Hypervisor::open(&source.uri).and_then(|hv| super::commit(&hv, domain, job_id, run_id)) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(%domain, ?removed, "superseded checkpoints removed")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(%domain, error = %e, "could not remove the job's superseded checkpoints")
        }
    }
    prepared::remove_other_runs(state_dir, job_id, run_id);
}

/// A deleted job: every checkpoint of `job_id` on `domain` goes, and the job's work directory.
/// Returns the checkpoints removed. Blocking.
pub fn forget(
    source: &LibvirtSource,
    state_dir: &Path,
    domain: &str,
    job_id: &str,
) -> Result<Vec<String>, super::LibvirtError> {
    let prefix = crate::changed::job_prefix(job_id);
    let hv = Hypervisor::open(&source.uri)?;
    let info = hv.domain(domain)?;
    let mut removed = Vec::new();
    for c in hv.checkpoints(domain)? {
        if !c.starts_with(&prefix) {
            continue;
        }
        if info.running {
            hv.delete_checkpoint(domain, &c)?;
        } else {
            // libvirt deletes no checkpoint of a shut-off domain but its metadata; the job's
            // bitmaps (named after its checkpoints) are then removed from the images below.
            hv.delete_checkpoint_metadata(domain, &c)?;
        }
        removed.push(c);
    }
    if !info.running {
        for d in &info.disks {
            let Some(path) = &d.source else { continue };
            if d.format.as_deref() == Some("qcow2") {
                crate::changed::forget_job(path, job_id).map_err(|e| {
                    super::LibvirtError::Domain {
                        domain: domain.into(),
                        detail: format!(
                            "removing the job's bitmaps from {} (disk {}): {e}",
                            path.display(),
                            d.target
                        ),
                    }
                })?;
            }
        }
    }
    let _ = std::fs::remove_dir_all(super::work_dir(state_dir, job_id));
    Ok(removed)
}

/// A run that will not be resumed (it failed, or its work was withdrawn): its checkpoint and
/// prepared objects go. Blocking.
pub fn give_up(source: &LibvirtSource, state_dir: &Path, job_id: &str, run_id: &str, domain: &str) {
    let own = checkpoint_name(job_id, run_id);
    let result = Hypervisor::open(&source.uri).and_then(|hv| {
        if hv.checkpoints(domain)?.contains(&own) {
            hv.delete_checkpoint(domain, &own)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        tracing::warn!(%domain, checkpoint = %own, error = %e, "could not remove the checkpoint of a run given up");
    }
    if let Ok(dir) = prepared::prepared_dir(state_dir, job_id, run_id) {
        prepared::remove(&dir);
    }
}
