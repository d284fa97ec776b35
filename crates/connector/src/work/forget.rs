//! `FORGET_JOB`: a deleted job's traces on the source VM (qcow2 dirty bitmaps, libvirt
//! checkpoints, or a vSphere snapshot a crashed run left) and in the state directory are
//! removed.

use std::path::Path;
use std::sync::Arc;

use tern_api::connector::ForgetJobWork;
use tern_disk::Format;

use super::{translate_disk, WorkOutcome, Worker};
use crate::libvirt::LibvirtSource;
use crate::replicate::{self, DiskSource};

impl Worker {
    /// Runs one `FORGET_JOB` item: the deleted job's bitmaps (qcow2 disks) or checkpoints
    /// (libvirt domain) are removed from the source, and its folder from the state directory.
    /// What cannot be removed is reported with ReportError, naming it.
    pub async fn forget(
        self: Arc<Self>,
        connector_id: String,
        work_id: String,
        work: ForgetJobWork,
    ) -> WorkOutcome {
        let job_lock = self.job_lock(&work.job_id);
        let _job = job_lock.lock().await;
        let state_dir = self.state_dir().to_path_buf();
        let (libvirt, vsphere) = (self.libvirt.clone(), self.vsphere.clone());
        let job_id = work.job_id.clone();
        let left =
            tokio::task::spawn_blocking(move || forget_job(&work, &state_dir, libvirt, vsphere))
                .await
                .unwrap_or_else(|e| vec![format!("the cleanup stopped: {e}")]);
        if left.is_empty() {
            tracing::info!(%job_id, "deleted job forgotten: its bitmaps, checkpoints and state are removed");
            self.complete(connector_id, &work_id).await;
            WorkOutcome::Forgotten
        } else {
            let message = format!(
                "could not remove everything kept for deleted replication job {job_id}: {}",
                left.join("; ")
            );
            tracing::warn!(work_id, error = %message, "forget failed");
            self.fail(connector_id, &work_id, message).await;
            WorkOutcome::ForgetFailed
        }
    }
}

/// Removes what is kept for a deleted job; returns what could not be removed, in words.
fn forget_job(
    work: &ForgetJobWork,
    state_dir: &Path,
    libvirt: Option<LibvirtSource>,
    vsphere: Option<crate::vsphere::VsphereSource>,
) -> Vec<String> {
    let mut left = Vec::new();
    let sources: Vec<DiskSource> = work
        .disks
        .iter()
        .filter_map(|d| translate_disk(&d.path, d.format.as_deref()).ok())
        .collect();
    let vm = crate::vsphere::vm_of(&sources).ok().flatten();
    match crate::libvirt::domain_of(&sources) {
        Ok(Some(domain)) => {
            forget_checkpoints(&work.job_id, &domain, state_dir, libvirt, &mut left)
        }
        _ if vm.is_some() => {
            let vm = vm.unwrap_or_default();
            match vsphere.map(|source| crate::vsphere::run::forget(&source, &vm, &work.job_id)) {
                None => left.push(format!(
                    "any snapshot of the job on vSphere VM {vm} (this connector has no [vsphere] source)"
                )),
                Some(Ok(removed)) if !removed.is_empty() => {
                    tracing::info!(%vm, ?removed, "snapshots of the deleted job removed")
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => left.push(format!("the snapshots on VM {vm}: {e}")),
            }
        }
        _ => {
            for s in &sources {
                let DiskSource::File { path, .. } = s else {
                    continue;
                };
                // Only qcow2 images carry Tern's bitmaps; the others have nothing to remove.
                if !matches!(tern_disk::detect(path), Ok(Format::Qcow2)) {
                    continue;
                }
                match crate::changed::forget_job(path, &work.job_id) {
                    Ok(removed) if !removed.is_empty() => {
                        tracing::info!(image = %path.display(), ?removed, "bitmaps of the deleted job removed")
                    }
                    Ok(_) => {}
                    Err(e) => left.push(format!("the bitmaps in {}: {e}", path.display())),
                }
            }
        }
    }
    if replicate::forget_job(state_dir, &work.job_id).is_err() {
        left.push(format!(
            "its folder in the state directory {}",
            state_dir.join("jobs").join(&work.job_id).display()
        ));
    }
    left
}

#[cfg(feature = "libvirt")]
fn forget_checkpoints(
    job_id: &str,
    domain: &str,
    state_dir: &Path,
    libvirt: Option<LibvirtSource>,
    left: &mut Vec<String>,
) {
    let Some(source) = libvirt else {
        left.push(format!(
            "the checkpoints on libvirt domain {domain} (this connector has no [libvirt] source)"
        ));
        return;
    };
    match crate::libvirt::run::forget(&source, state_dir, domain, job_id) {
        Ok(removed) => {
            tracing::info!(%domain, ?removed, "checkpoints of the deleted job removed")
        }
        Err(e) => left.push(format!("the checkpoints on domain {domain}: {e}")),
    }
}

#[cfg(not(feature = "libvirt"))]
fn forget_checkpoints(
    _job_id: &str,
    domain: &str,
    _state_dir: &Path,
    _libvirt: Option<LibvirtSource>,
    left: &mut Vec<String>,
) {
    left.push(format!(
        "the checkpoints on libvirt domain {domain} (this connector was built without the libvirt feature)"
    ));
}
