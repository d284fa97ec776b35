//! The hypervisor side of a run (a libvirt domain or a vSphere VM): the VM's disks read at one
//! point in time into prepared objects before the upload, and a run given up leaving no
//! checkpoint or snapshot behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Worker, PROGRESS_EVERY};
use crate::replicate::{self, DiskSource, PreparedRun, Progress, ReplicateError};

/// The VM a run's disks belong to, when a hypervisor serves them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SourceVm {
    Libvirt(String),
    Vsphere(String),
}

impl SourceVm {
    pub(super) fn of(disks: &[DiskSource]) -> Result<Option<SourceVm>, ReplicateError> {
        if let Some(domain) = crate::libvirt::domain_of(disks)? {
            return Ok(Some(SourceVm::Libvirt(domain)));
        }
        Ok(crate::vsphere::vm_of(disks)?.map(SourceVm::Vsphere))
    }

    fn describe(&self) -> String {
        match self {
            SourceVm::Libvirt(d) => format!("domain {d} from its backup"),
            SourceVm::Vsphere(vm) => format!("VM {vm} from its snapshot"),
        }
    }
}

impl Worker {
    /// Before the upload: a hypervisor VM's disks are read at one point in time into prepared
    /// objects (or found there from an earlier attempt), which become the work's disks; they
    /// are freed once the manifest is up.
    pub(super) async fn prepare(
        &self,
        work: &mut replicate::ReplicationWork,
        vm: Option<&SourceVm>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Option<PreparedRun>, ReplicateError> {
        let Some(vm) = vm else {
            return Ok(None);
        };
        replicate::ensure_uncommitted(self.state_dir(), work)?;
        let prepared = self.read_vm(work, vm, progress).await?;
        work.disks = prepared
            .disks
            .iter()
            .cloned()
            .map(|p| DiskSource::Prepared(Box::new(p)))
            .collect();
        Ok(Some(prepared))
    }

    /// Reads the VM's disks on a blocking thread, reporting `Preparing` about once a second
    /// meanwhile (which also keeps the item's lease).
    async fn read_vm(
        &self,
        work: &replicate::ReplicationWork,
        vm: &SourceVm,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<PreparedRun, ReplicateError> {
        let read = Arc::new(AtomicU64::new(0));
        let task = {
            let (read, state_dir, work) =
                (read.clone(), self.state_dir().to_path_buf(), work.clone());
            let reader = self.vm_reader(vm)?;
            tokio::task::spawn_blocking(move || {
                let on_read = move |n: u64| {
                    read.fetch_add(n, Ordering::Relaxed);
                };
                reader(&state_dir, &work, &on_read)
            })
        };
        tokio::pin!(task);
        let mut every = tokio::time::interval(PROGRESS_EVERY);
        let what = vm.describe();
        loop {
            tokio::select! {
                done = &mut task => {
                    return done.map_err(|e| ReplicateError::Internal(format!("reading {what}: {e}")))?;
                }
                _ = every.tick() => progress(Progress::preparing(Some(format!(
                    "reading {what}: {} MiB read",
                    read.load(Ordering::Relaxed) >> 20
                )))),
            }
        }
    }

    /// The blocking read of `vm`'s disks with this connector's source, or why it cannot be.
    fn vm_reader(&self, vm: &SourceVm) -> Result<Reader, ReplicateError> {
        match vm {
            SourceVm::Vsphere(id) => {
                let Some(source) = self.vsphere.clone() else {
                    return Err(ReplicateError::InvalidWork(format!(
                        "the server is vSphere VM {id}, but this connector has no [vsphere] source; run the connector configured with the VM's vCenter"
                    )));
                };
                let id = id.clone();
                Ok(Box::new(move |state_dir, work, progress| {
                    crate::vsphere::run::prepare(&source, state_dir, work, &id, progress)
                }))
            }
            SourceVm::Libvirt(domain) => self.libvirt_reader(domain),
        }
    }

    #[cfg(feature = "libvirt")]
    fn libvirt_reader(&self, domain: &str) -> Result<Reader, ReplicateError> {
        let Some(source) = self.libvirt.clone() else {
            return Err(ReplicateError::InvalidWork(format!(
                "the server is libvirt domain {domain}, but this connector has no [libvirt] source; run the connector configured with the domain's libvirt URI"
            )));
        };
        let domain = domain.to_string();
        Ok(Box::new(move |state_dir, work, progress| {
            crate::libvirt::run::prepare(&source, state_dir, work, &domain, progress)
        }))
    }

    #[cfg(not(feature = "libvirt"))]
    fn libvirt_reader(&self, domain: &str) -> Result<Reader, ReplicateError> {
        Err(ReplicateError::InvalidWork(format!(
            "the server is libvirt domain {domain}, but this connector was built without the libvirt feature; run one built with it (cargo build -p tern-cli --features libvirt)"
        )))
    }

    /// A run that will not be resumed: its checkpoint or snapshot and prepared objects go.
    pub(super) async fn give_up(&self, work: &replicate::ReplicationWork, vm: &SourceVm) {
        let (state_dir, job, run) = (
            self.state_dir().to_path_buf(),
            work.job_id.clone(),
            work.run_id.clone(),
        );
        match vm.clone() {
            SourceVm::Vsphere(id) => {
                if let Some(source) = self.vsphere.clone() {
                    let _ = tokio::task::spawn_blocking(move || {
                        crate::vsphere::run::give_up(&source, &state_dir, &job, &run, &id)
                    })
                    .await;
                }
            }
            #[cfg(feature = "libvirt")]
            SourceVm::Libvirt(domain) => {
                if let Some(source) = self.libvirt.clone() {
                    let _ = tokio::task::spawn_blocking(move || {
                        crate::libvirt::run::give_up(&source, &state_dir, &job, &run, &domain)
                    })
                    .await;
                }
            }
            #[cfg(not(feature = "libvirt"))]
            SourceVm::Libvirt(_) => {}
        }
    }
}

/// Reads a VM's disks into a prepared run (state directory, work, progress). Blocking.
type Reader = Box<
    dyn FnOnce(
            &std::path::Path,
            &replicate::ReplicationWork,
            tern_disk::Progress<'_>,
        ) -> Result<PreparedRun, ReplicateError>
        + Send,
>;
