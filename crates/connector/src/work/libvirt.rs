//! The libvirt side of a run: a domain's disks read at one point in time into prepared objects
//! before the upload, and a run given up leaving no checkpoint behind.

use super::Worker;
use crate::replicate::{self, DiskSource, Progress, ReplicateError};

impl Worker {
    /// Before the upload: a libvirt domain's disks are read at one point in time into prepared
    /// objects (or found there from an earlier attempt), which become the work's disks; they
    /// are freed once the manifest is up.
    pub(super) async fn prepare(
        &self,
        work: &mut replicate::ReplicationWork,
        domain: Option<&str>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Option<replicate::PreparedRun>, ReplicateError> {
        let Some(domain) = domain else {
            return Ok(None);
        };
        if replicate::committed_run(self.state_dir(), &work.job_id)?.as_deref()
            == Some(work.run_id.as_str())
        {
            return Err(ReplicateError::AlreadyCommitted {
                job_id: work.job_id.clone(),
                run_id: work.run_id.clone(),
            });
        }
        let prepared = self.prepare_libvirt(work, domain, progress).await?;
        work.disks = prepared
            .disks
            .iter()
            .cloned()
            .map(DiskSource::Prepared)
            .collect();
        Ok(Some(prepared))
    }

    /// Reads the domain's disks on a blocking thread, reporting `Preparing` about once a
    /// second meanwhile (which also keeps the item's lease).
    #[cfg(feature = "libvirt")]
    async fn prepare_libvirt(
        &self,
        work: &replicate::ReplicationWork,
        domain: &str,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<replicate::PreparedRun, ReplicateError> {
        use super::PROGRESS_EVERY;
        use crate::replicate::Stage;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let Some(source) = self.libvirt.clone() else {
            return Err(ReplicateError::InvalidWork(format!(
                "the server is libvirt domain {domain}, but this connector has no [libvirt] source; run the connector configured with the domain's libvirt URI"
            )));
        };
        let read = Arc::new(AtomicU64::new(0));
        let task = {
            let (read, state_dir, work, domain) = (
                read.clone(),
                self.state_dir().to_path_buf(),
                work.clone(),
                domain.to_string(),
            );
            tokio::task::spawn_blocking(move || {
                let on_read = move |n: u64| {
                    read.fetch_add(n, Ordering::Relaxed);
                };
                crate::libvirt::run::prepare(&source, &state_dir, &work, &domain, &on_read)
            })
        };
        tokio::pin!(task);
        let mut every = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                done = &mut task => {
                    return done.map_err(|e| ReplicateError::Internal(format!("libvirt backup: {e}")))?;
                }
                _ = every.tick() => progress(Progress {
                    stage: Stage::Preparing,
                    disk: None,
                    percent: 0.0,
                    bytes_done: 0,
                    bytes_total: None,
                    virtual_total: 0,
                    note: Some(format!(
                        "reading domain {domain} from its backup: {} MiB read",
                        read.load(Ordering::Relaxed) >> 20
                    )),
                }),
            }
        }
    }

    #[cfg(not(feature = "libvirt"))]
    async fn prepare_libvirt(
        &self,
        _work: &replicate::ReplicationWork,
        domain: &str,
        _progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<replicate::PreparedRun, ReplicateError> {
        Err(ReplicateError::InvalidWork(format!(
            "the server is libvirt domain {domain}, but this connector was built without the libvirt feature; run one built with it (cargo build -p tern-cli --features libvirt)"
        )))
    }

    /// A libvirt run that will not be resumed: its checkpoint and prepared objects go.
    pub(super) async fn give_up_libvirt(&self, work: &replicate::ReplicationWork, domain: &str) {
        #[cfg(feature = "libvirt")]
        if let Some(source) = self.libvirt.clone() {
            let (state_dir, job, run, domain) = (
                self.state_dir().to_path_buf(),
                work.job_id.clone(),
                work.run_id.clone(),
                domain.to_string(),
            );
            let _ = tokio::task::spawn_blocking(move || {
                crate::libvirt::run::give_up(&source, &state_dir, &job, &run, &domain)
            })
            .await;
        }
        #[cfg(not(feature = "libvirt"))]
        let _ = (work, domain);
    }
}
