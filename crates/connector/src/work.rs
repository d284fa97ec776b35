//! Replication work items: `REPLICATE` (upload one run) and `COMMIT_RUN` (keep a run's block
//! maps), run as background tasks so that heartbeats and polls go on during long uploads.
//!
//! * A `REPLICATE` item is translated into [`replicate::ReplicationWork`] (the disks as this
//!   connector reported them in its inventory) and uploaded with [`replicate::run`]. Progress
//!   goes to the control plane with `ReportProgress` about once a second and at every stage
//!   change; success is `CompleteWork`, failure `ReportError` with a message that says what to
//!   do (the control plane fails the run with it).
//! * Before a delta, the connector's kept block maps must be those of the run the control plane
//!   will apply the delta onto (`parentRunId`). When they are not, but that run's maps are
//!   pending here (its `COMMIT_RUN` item was lost), the run is committed first; when they still
//!   differ, every disk is uploaded in full.
//! * Items of one job run one at a time (a per-job lock), so a commit never renames maps that a
//!   running upload is reading.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tern_api::connector::{
    op, CommitRunWork, CompleteWorkRequest, CompleteWorkResponse, ReplicationWork as ApiWork,
    ReportErrorRequest, ReportErrorResponse, ReportProgressRequest, ReportProgressResponse,
};
use tern_disk::Format;
use tokio::sync::mpsc;

use crate::libvirt::LibvirtSource;

mod forget;
mod hypervisor;
use crate::replicate::{self, DiskSource, Progress, ReplicateContext, ReplicateError, Stage};
use crate::{ApiClient, ConnectorError};

/// `format` of an inventory disk that lives inside an OVA archive; its `path` is
/// `<archive path>#disk=<n>` (see [`ova_disk_path`]).
pub const OVA_FORMAT: &str = "ova";
const OVA_DISK_MARK: &str = "#disk=";

/// The inventory path of the `disk`-th disk (DiskSection order, from 0) of an OVA archive.
pub fn ova_disk_path(archive: &Path, disk: usize) -> String {
    format!("{}{OVA_DISK_MARK}{disk}", archive.display())
}

/// Least time between two progress reports of one item (stage changes go at once).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Attempts at the calls that close an item (CompleteWork, ReportError) while the service is
/// unreachable; the item is handed out again after its lease if all fail.
const CLOSE_ATTEMPTS: u32 = 5;

/// How one work item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkOutcome {
    /// The run's objects and manifest are in the staging bucket (or it was already done).
    Replicated,
    /// The upload failed and was reported with ReportError.
    ReplicationFailed,
    /// The control plane dropped the item while it ran (the run failed or the job was
    /// deleted); the upload stopped. Its parts stay resumable.
    Cancelled,
    /// A run's block maps are now the kept ones.
    Committed,
    /// A COMMIT_RUN of a run this connector has no record of (completed anyway).
    CommitUnknown,
    /// A COMMIT_RUN that could not be done (reported with ReportError).
    CommitFailed,
    /// A deleted job's bitmaps, checkpoints and state are gone (FORGET_JOB).
    Forgotten,
    /// A FORGET_JOB that left something behind (reported with ReportError, naming it).
    ForgetFailed,
}

/// Counts of finished replication work, in `--once`'s summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkCounts {
    pub replications_completed: usize,
    pub replications_failed: usize,
    pub replications_cancelled: usize,
    pub runs_committed: usize,
    pub commits_failed: usize,
    pub jobs_forgotten: usize,
    pub forgets_failed: usize,
}

impl WorkCounts {
    pub fn record(&mut self, outcome: WorkOutcome) {
        match outcome {
            WorkOutcome::Replicated => self.replications_completed += 1,
            WorkOutcome::ReplicationFailed => self.replications_failed += 1,
            WorkOutcome::Cancelled => self.replications_cancelled += 1,
            WorkOutcome::Committed | WorkOutcome::CommitUnknown => self.runs_committed += 1,
            WorkOutcome::CommitFailed => self.commits_failed += 1,
            WorkOutcome::Forgotten => self.jobs_forgotten += 1,
            WorkOutcome::ForgetFailed => self.forgets_failed += 1,
        }
    }
}

/// What the background tasks share: the API client, the replication context, the items in
/// flight and the per-job locks.
pub(crate) struct Worker {
    pub client: ApiClient,
    pub ctx: ReplicateContext,
    in_flight: Mutex<HashSet<String>>,
    job_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    observer: Mutex<Option<Arc<ProgressObserver>>>,
    /// Uploads that may run at once (the rest of the items wait for a permit).
    uploads: tokio::sync::Semaphore,
    pub max_uploads: usize,
    /// The libvirt source, when the connector serves one: its runs are backups of domains.
    libvirt: Option<LibvirtSource>,
    /// The vSphere source, when the connector serves one: its runs read VM snapshots.
    vsphere: Option<crate::vsphere::VsphereSource>,
}

/// Sees every progress update of every run (unthrottled), e.g. to draw progress bars: the
/// replication run id and the update.
pub type ProgressObserver = dyn Fn(&str, &Progress) + Send + Sync;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes an item out of the in-flight set when its task ends, also when the task is aborted.
pub(crate) struct InFlight {
    worker: Arc<Worker>,
    work_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.worker.in_flight).remove(&self.work_id);
    }
}

impl Worker {
    pub fn new(client: ApiClient, ctx: ReplicateContext) -> Self {
        Self {
            client,
            ctx,
            in_flight: Mutex::default(),
            job_locks: Mutex::default(),
            observer: Mutex::default(),
            uploads: tokio::sync::Semaphore::new(crate::config::DEFAULT_MAX_CONCURRENT_UPLOADS),
            max_uploads: crate::config::DEFAULT_MAX_CONCURRENT_UPLOADS,
            libvirt: None,
            vsphere: None,
        }
    }

    /// Serves the domains of a libvirt source: their runs are taken with backups.
    pub fn serve_libvirt(mut self, source: Option<LibvirtSource>) -> Self {
        self.libvirt = source;
        self
    }

    /// Serves the VMs of a vSphere source: their runs read a snapshot per run.
    pub fn serve_vsphere(mut self, source: Option<crate::vsphere::VsphereSource>) -> Self {
        self.vsphere = source;
        self
    }

    /// Waits for an upload slot. Meanwhile a `Queued` progress report every minute keeps the
    /// run's upload heartbeat and the item's lease alive, so a run waiting behind long uploads
    /// does not time out.
    async fn upload_slot(
        &self,
        connector_id: &str,
        work_id: &str,
    ) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let acquire = self.uploads.acquire();
        tokio::pin!(acquire);
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        every.tick().await;
        loop {
            tokio::select! {
                permit = &mut acquire => return permit.ok(),
                _ = every.tick() => {
                    let queued = ReportProgressRequest {
                        connector_id: connector_id.to_string(),
                        work_id: work_id.to_string(),
                        stage: "Queued".into(),
                        ..Default::default()
                    };
                    let sent: Result<tern_api::connector::ReportProgressResponse, _> =
                        self.client.call(op::REPORT_PROGRESS, &queued).await;
                    if let Err(e) = sent {
                        tracing::debug!(work_id, error = %e, "queued progress report failed");
                    }
                }
            }
        }
    }

    /// At most `n` (at least 1) uploads run at once.
    pub fn limit_uploads(mut self, n: usize) -> Self {
        let n = n.max(1);
        self.uploads = tokio::sync::Semaphore::new(n);
        self.max_uploads = n;
        self
    }

    pub fn observe(&self, observer: Arc<ProgressObserver>) {
        *lock(&self.observer) = Some(observer);
    }

    /// Marks `work_id` as in flight; `None` when it already is (PollWork handed it out again
    /// while it runs).
    pub fn claim(self: &Arc<Self>, work_id: &str) -> Option<InFlight> {
        lock(&self.in_flight)
            .insert(work_id.to_string())
            .then(|| InFlight {
                worker: self.clone(),
                work_id: work_id.to_string(),
            })
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    fn job_lock(&self, job_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.job_locks)
            .entry(job_id.to_string())
            .or_default()
            .clone()
    }

    fn state_dir(&self) -> &Path {
        &self.ctx.state_dir
    }

    /// Runs one `REPLICATE` item to its end, reporting the result to the control plane.
    pub async fn replicate(
        self: Arc<Self>,
        connector_id: String,
        work_id: String,
        work: ApiWork,
    ) -> WorkOutcome {
        let job_lock = self.job_lock(&work.job_id);
        let _job = job_lock.lock().await;
        // Reading, compressing and sending a thousand disks at once only thrashes: memory grows
        // with every upload in flight and none finishes sooner.
        let _permit = self.upload_slot(&connector_id, &work_id).await;
        let result = self.upload(&connector_id, &work_id, &work).await;
        match result {
            Ok(Uploaded::Done) | Ok(Uploaded::AlreadyCommitted) => {
                if let Ok(Uploaded::AlreadyCommitted) = result {
                    tracing::warn!(work_id, run_id = %work.run_id, "run was already uploaded and confirmed; closing the item");
                }
                // The manifest is in the bucket, so the run goes on regardless; the item
                // comes back after its lease and finds the upload done.
                self.complete(connector_id, &work_id).await;
                WorkOutcome::Replicated
            }
            Ok(Uploaded::Cancelled) => {
                tracing::warn!(work_id, run_id = %work.run_id, "the control plane dropped the work item; upload stopped");
                WorkOutcome::Cancelled
            }
            Err(message) => {
                tracing::warn!(work_id, run_id = %work.run_id, error = %message, "replication run failed");
                self.fail(connector_id, &work_id, message).await;
                WorkOutcome::ReplicationFailed
            }
        }
    }

    async fn upload(
        &self,
        connector_id: &str,
        work_id: &str,
        original: &ApiWork,
    ) -> Result<Uploaded, String> {
        let mut work = translate(original).map_err(|e| advise_run(&e, None, original))?;
        self.settle_parent(&mut work, original.parent_run_id.as_deref())
            .map_err(|e| advise_run(&e, Some(&work), original))?;
        let vm = hypervisor::SourceVm::of(&work.disks)
            .map_err(|e| advise_run(&e, Some(&work), original))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let throttle = Mutex::new(Throttle::default());
        let observer = lock(&self.observer).clone();
        let run_id = original.run_id.clone();
        let last = Arc::new(Mutex::new(None::<Progress>));
        let seen = last.clone();
        let on_progress = move |p: Progress| {
            if let Some(o) = &observer {
                o(&run_id, &p);
            }
            *lock(&seen) = Some(p.clone());
            if lock(&throttle).due(&p) {
                let _ = tx.send(p);
            }
        };
        let cancelled = Arc::new(tokio::sync::Notify::new());
        let reporter = tokio::spawn(report_progress(
            self.client.clone(),
            connector_id.to_string(),
            work_id.to_string(),
            rx,
            cancelled.clone(),
        ));
        // A backup is not cut short by a withdrawal (it ends within the time to read the
        // changes, and a half-taken one would leave its checkpoint): the upload is.
        let result = match self.prepare(&mut work, vm.as_ref(), &on_progress).await {
            Err(e) => Some(Err(e)),
            Ok(prepared) => {
                let result = tokio::select! {
                    r = replicate::run(&work, &self.ctx, &on_progress) => Some(r),
                    _ = cancelled.notified() => None,
                };
                if let (Some(Ok(_)), Some(p)) = (&result, &prepared) {
                    replicate::prepared::release_objects(p);
                }
                result
            }
        };
        // Dropping the callback drops the sender: the reporter sends what is queued and stops,
        // so the last report goes out before CompleteWork or ReportError.
        drop(on_progress);
        let withdrawn_seen = reporter.await.unwrap_or(false);
        // A run that failed may have failed because its work was withdrawn (the control plane
        // aborts the run's multipart uploads when its job is deleted, so the next part is
        // refused): one more report of the last progress tells, before a failure is reported.
        let withdrawn = match &result {
            None => true,
            Some(Err(ReplicateError::AlreadyCommitted { .. })) | Some(Ok(_)) => false,
            Some(Err(_)) => {
                let last = lock(&last).clone();
                withdrawn_seen || self.withdrawn(connector_id, work_id, last.as_ref()).await
            }
        };
        let given_up = withdrawn
            || matches!(&result, Some(Err(e)) if !matches!(e, ReplicateError::AlreadyCommitted { .. } | ReplicateError::Interrupted { .. }));
        if let (true, Some(vm)) = (given_up, &vm) {
            self.give_up(&work, vm).await;
        }
        if withdrawn {
            // Withdrawn, not interrupted: the upload is not to be resumed or finished.
            match replicate::abandon_run(&work, &self.ctx).await {
                Ok(aborted) => {
                    tracing::info!(work_id, run_id = %work.run_id, aborted, "multipart uploads of the withdrawn run aborted")
                }
                Err(e) => {
                    tracing::warn!(work_id, run_id = %work.run_id, error = %e, "could not abandon the withdrawn run's uploads")
                }
            }
            return Ok(Uploaded::Cancelled);
        }
        match result {
            // Stopped by the reporter: withdrawn, handled above.
            None => Ok(Uploaded::Cancelled),
            Some(Ok(outcome)) => {
                tracing::info!(work_id, manifest = %outcome.manifest_key, "run uploaded");
                Ok(Uploaded::Done)
            }
            Some(Err(ReplicateError::AlreadyCommitted { .. })) => Ok(Uploaded::AlreadyCommitted),
            Some(Err(e)) => Err(advise_run(&e, Some(&work), original)),
        }
    }

    /// Whether the control plane no longer has the work item: a report of the run's last
    /// progress (which changes nothing when the item is still there) is answered "no work item".
    async fn withdrawn(&self, connector_id: &str, work_id: &str, last: Option<&Progress>) -> bool {
        let Some(p) = last else {
            return false;
        };
        let request = wire_progress(connector_id, work_id, p);
        match self
            .client
            .call::<_, ReportProgressResponse>(op::REPORT_PROGRESS, &request)
            .await
        {
            Err(e) => is_withdrawn(&e),
            Ok(_) => false,
        }
    }

    /// Makes sure a delta goes onto the run the control plane applies it to: commits a parent
    /// run whose COMMIT_RUN was lost, and falls back to a full upload when the kept maps are
    /// still not the parent's.
    fn settle_parent(
        &self,
        work: &mut replicate::ReplicationWork,
        parent: Option<&str>,
    ) -> Result<(), ReplicateError> {
        if work.seed {
            return Ok(());
        }
        let Some(parent) = parent else {
            // Nothing named to build on: a delta would be refused.
            work.seed = true;
            return Ok(());
        };
        let dir = self.state_dir();
        let committed = replicate::committed_run(dir, &work.job_id)?;
        if committed.as_deref() == Some(parent) {
            return Ok(());
        }
        if replicate::has_pending_run(dir, &work.job_id, parent) {
            tracing::info!(job_id = %work.job_id, run_id = parent, "committing the parent run, whose COMMIT_RUN never arrived");
            if let Err(e) = self.commit_run(&work.job_id, parent) {
                tracing::warn!(job_id = %work.job_id, run_id = parent, error = %e, "could not commit the parent run");
            }
        }
        let committed = replicate::committed_run(dir, &work.job_id)?;
        if committed.as_deref() != Some(parent) {
            tracing::warn!(
                job_id = %work.job_id,
                parent,
                kept = committed.as_deref().unwrap_or("(none)"),
                "the kept block maps are not of the run the delta would apply onto; uploading in full"
            );
            work.seed = true;
        }
        Ok(())
    }

    /// Runs one `COMMIT_RUN` item.
    pub async fn commit(
        self: Arc<Self>,
        connector_id: String,
        work_id: String,
        work: CommitRunWork,
    ) -> WorkOutcome {
        let job_lock = self.job_lock(&work.job_id);
        let _job = job_lock.lock().await;
        let outcome = match self.commit_run(&work.job_id, &work.run_id) {
            Ok(()) => {
                tracing::info!(job_id = %work.job_id, run_id = %work.run_id, "run confirmed; its block maps are kept");
                WorkOutcome::Committed
            }
            Err(ReplicateError::UnknownRun { .. }) => {
                // Nothing to keep (another state directory uploaded it, or it was cleaned
                // up): the next run finds no matching maps and uploads in full.
                tracing::warn!(job_id = %work.job_id, run_id = %work.run_id, "COMMIT_RUN for a run this connector has no uploaded block maps of");
                WorkOutcome::CommitUnknown
            }
            Err(e) => {
                let message = format!(
                    "could not keep the block maps of run {} of job {}: {e}. Check the connector's state directory {}; until it is fixed the next runs of the job upload every disk in full",
                    work.run_id,
                    work.job_id,
                    self.state_dir().display()
                );
                tracing::warn!(work_id, error = %message, "commit failed");
                self.fail(connector_id, &work_id, message).await;
                return WorkOutcome::CommitFailed;
            }
        };
        // Committing again when the item comes back is a no-op.
        self.complete(connector_id, &work_id).await;
        outcome
    }

    /// Confirms a run: its block maps become the kept ones, and for a libvirt domain its
    /// checkpoint becomes the only one of the job.
    fn commit_run(&self, job_id: &str, run_id: &str) -> Result<(), ReplicateError> {
        let dir = self.state_dir();
        // Read before the commit removes the run's folder.
        let prepared = replicate::prepared::prepared_dir(dir, job_id, run_id)
            .ok()
            .and_then(|d| replicate::prepared::load(&d).ok().flatten());
        replicate::commit_run(dir, job_id, run_id)?;
        if let Some(run) = prepared
            .as_ref()
            .filter(|r| crate::vsphere::run::prepared_vm(r).is_some())
        {
            crate::vsphere::run::after_commit(dir, job_id, run_id, run);
        }
        #[cfg(feature = "libvirt")]
        if let (Some(source), Some(domain)) = (
            &self.libvirt,
            prepared
                .as_ref()
                .and_then(crate::libvirt::run::prepared_domain),
        ) {
            crate::libvirt::run::after_commit(source, dir, job_id, run_id, domain);
        }
        #[cfg(not(feature = "libvirt"))]
        let _ = prepared;
        Ok(())
    }

    /// Closes an item as done (CompleteWork, retried); a failure is logged, and the item
    /// comes back after its lease.
    async fn complete(&self, connector_id: String, work_id: &str) {
        let request = CompleteWorkRequest {
            connector_id,
            work_id: work_id.to_string(),
        };
        if let Err(e) = self
            .close::<_, CompleteWorkResponse>(op::COMPLETE_WORK, &request)
            .await
        {
            tracing::warn!(work_id, error = %e, "could not complete the work item");
        }
    }

    /// Closes an item as failed with `message` (ReportError, retried); a failure is logged.
    async fn fail(&self, connector_id: String, work_id: &str, message: String) {
        let request = ReportErrorRequest {
            connector_id,
            work_id: Some(work_id.to_string()),
            message,
        };
        if let Err(e) = self
            .close::<_, ReportErrorResponse>(op::REPORT_ERROR, &request)
            .await
        {
            tracing::warn!(work_id, error = %e, "could not report the failure");
        }
    }

    /// A call that closes an item, retried with backoff while the service is unreachable or
    /// failing (an answered 4xx is final).
    async fn close<I: Serialize, O: serde::de::DeserializeOwned>(
        &self,
        operation: &str,
        input: &I,
    ) -> Result<O, ConnectorError> {
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match self.client.call(operation, input).await {
                Err(e) if attempt < CLOSE_ATTEMPTS && retryable(&e) => {
                    tracing::debug!(operation, error = %e, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

enum Uploaded {
    Done,
    AlreadyCommitted,
    Cancelled,
}

fn retryable(e: &ConnectorError) -> bool {
    matches!(
        e,
        ConnectorError::Http { .. } | ConnectorError::Service { status: 500.., .. }
    ) || matches!(e, ConnectorError::Service { code, .. } if code.contains("Throttl"))
}

/// Lets a progress report through when its stage differs from the last one let through, or
/// [`PROGRESS_EVERY`] has passed since.
#[derive(Default)]
struct Throttle {
    last: Option<(Stage, Instant)>,
}

impl Throttle {
    fn due(&mut self, p: &Progress) -> bool {
        let now = Instant::now();
        let due = match self.last {
            None => true,
            Some((stage, at)) => stage != p.stage || now.duration_since(at) >= PROGRESS_EVERY,
        };
        if due {
            self.last = Some((p.stage, now));
        }
        due
    }
}

/// The wire form of a progress report. `bytesDone` counts the object bytes S3 holds for the
/// run (sent now, or kept from an interrupted attempt); `bytesTotal` is the size of the
/// server's disks until the objects are complete (their sizes are not known before: the seed
/// is compressed, a delta holds only changed blocks), then the objects' total.
fn wire_progress(connector_id: &str, work_id: &str, p: &Progress) -> ReportProgressRequest {
    ReportProgressRequest {
        note: p.note.clone(),
        connector_id: connector_id.to_string(),
        work_id: work_id.to_string(),
        stage: match p.stage {
            Stage::Preparing => "Preparing",
            Stage::Uploading => "Uploading",
            // Not "Completed": that is the run's own last stage, after its import.
            Stage::Completed => "Uploaded",
        }
        .to_string(),
        percent: p.percent.clamp(0.0, 100.0).floor() as u8,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total.unwrap_or(p.virtual_total),
    }
}

/// Sends the reports the throttle let through, in order. When the control plane answers that
/// the item no longer exists (the run failed or the job was deleted meanwhile) it notifies
/// `cancelled` and stops, returning `true`.
async fn report_progress(
    client: ApiClient,
    connector_id: String,
    work_id: String,
    mut rx: mpsc::UnboundedReceiver<Progress>,
    cancelled: Arc<tokio::sync::Notify>,
) -> bool {
    while let Some(mut p) = rx.recv().await {
        // Reports queued while the last one was on the wire: only the newest matters, unless
        // a stage change is among them.
        while let Ok(next) = rx.try_recv() {
            let changed = next.stage != p.stage;
            p = next;
            if changed {
                break;
            }
        }
        let request = wire_progress(&connector_id, &work_id, &p);
        match client
            .call::<_, ReportProgressResponse>(op::REPORT_PROGRESS, &request)
            .await
        {
            Ok(_) => {}
            Err(e) if is_withdrawn(&e) => {
                cancelled.notify_one();
                return true;
            }
            // Progress is advisory: the upload goes on, the next report may get through.
            Err(e) => tracing::warn!(work_id, error = %e, "could not report progress"),
        }
    }
    false
}

/// The control plane's answer for a work item it no longer has (the run failed or its job was
/// deleted): the work is withdrawn.
fn is_withdrawn(e: &ConnectorError) -> bool {
    matches!(e, ConnectorError::Service { code, message, .. }
        if code == "InvalidParameterException" && message.contains("no work item"))
}

/// The control plane's work item in `replicate`'s terms. Disks are the paths this connector
/// reported in its inventory: image files, or `<archive>#disk=<n>` with format `ova`.
pub fn translate(work: &ApiWork) -> Result<replicate::ReplicationWork, ReplicateError> {
    let mut disks: Vec<_> = work.disks.iter().collect();
    disks.sort_by_key(|d| d.index);
    let sources = disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if d.index != i {
                return Err(ReplicateError::InvalidWork(format!(
                    "the work lists disk index {} where disk {i} belongs",
                    d.index
                )));
            }
            translate_disk(&d.path, d.format.as_deref())
                .map_err(|e| ReplicateError::InvalidWork(format!("disk {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(replicate::ReplicationWork {
        job_id: work.job_id.clone(),
        run_id: work.run_id.clone(),
        server_id: work.server_id.clone(),
        disks: sources,
        staging: work.staging.clone(),
        seed: work.seed,
    })
}

/// One disk as the inventory reported it (`path`, `format`) in `replicate`'s terms.
pub fn translate_disk(path: &str, format: Option<&str>) -> Result<DiskSource, String> {
    if path.trim().is_empty() {
        return Err("the disk has no path; re-import the server catalog".into());
    }
    if let Some((vm, key)) = crate::vsphere::parse_disk_path(path) {
        return Ok(DiskSource::Vsphere { vm: vm.into(), key });
    }
    if let Some((domain, target)) = crate::libvirt::parse_disk_path(path) {
        return Ok(DiskSource::Libvirt {
            domain: domain.into(),
            target: target.into(),
        });
    }
    if format.is_some_and(|f| f.eq_ignore_ascii_case(OVA_FORMAT)) {
        let (archive, n) = path
            .rsplit_once(OVA_DISK_MARK)
            .ok_or_else(|| format!("OVA disk path {path:?} does not end in {OVA_DISK_MARK}<n>"))?;
        let disk = n
            .parse::<usize>()
            .map_err(|_| format!("OVA disk path {path:?}: {n:?} is not a disk number"))?;
        return Ok(DiskSource::Ova {
            path: PathBuf::from(archive),
            disk,
        });
    }
    // The format the inventory reported (detected from the content when the disk could be
    // opened, or stated in the inventory file): stating it keeps a raw disk whose guest wrote
    // an image header at its start from being read as that image. A name tern-disk does not
    // know leaves detection to the content.
    let format = format.and_then(|f| f.parse::<Format>().ok());
    Ok(DiskSource::File {
        path: PathBuf::from(path),
        format,
        backing_chain: Vec::new(),
    })
}

/// A failed upload, in words for the run's status message: what went wrong and what to do.
fn advise_run(
    e: &ReplicateError,
    work: Option<&replicate::ReplicationWork>,
    original: &ApiWork,
) -> String {
    let bucket = work.map_or(&original.staging.bucket, |w| &w.staging.bucket);
    let what = match e {
        ReplicateError::Disk { .. } | ReplicateError::Ova { .. } => {
            "Check that the disk image exists and the connector can read it (re-import the server catalog if the VM's disks moved), then start a new run"
                .to_string()
        }
        ReplicateError::S3 { .. } => format!(
            "Check the connector's [staging] endpoint and that its credentials may write to bucket {}; a new run resumes the upload where it stopped",
            bucket
        ),
        ReplicateError::State { .. } | ReplicateError::StateCorrupt { .. } => {
            "Check the connector's state directory (free space, permissions), then start a new run"
                .to_string()
        }
        ReplicateError::InvalidWork(_) | ReplicateError::UnknownRun { .. } => {
            "Re-import the server catalog, then start a new run".to_string()
        }
        ReplicateError::InvalidOptions(_) => {
            "Fix the connector's [staging] settings and restart it".to_string()
        }
        ReplicateError::Hypervisor(_) if work.is_some_and(|w| crate::vsphere::vm_of(&w.disks).ok().flatten().is_some()) => {
            "Check that the VM exists in vSphere and that the connector can reach its vCenter, then start a new run".to_string()
        }
        ReplicateError::Hypervisor(_) => {
            "Check that the domain runs and that the connector can reach its libvirt URI, then start a new run".to_string()
        }
        ReplicateError::ChangedBlocks { .. } => {
            "Set changed_blocks = \"auto\" in the connector's [files] section to fall back to reading the whole disk, or fix the cause above, then start a new run".to_string()
        }
        // These say what to do themselves.
        ReplicateError::DeltaTooLarge { .. }
        | ReplicateError::Interrupted { .. }
        | ReplicateError::AlreadyCommitted { .. } => String::new(),
        ReplicateError::Internal(_) => {
            "Start a new run (the upload resumes); report this if it happens again".to_string()
        }
    };
    let head = format!(
        "connector could not upload run {} of job {}: {e}",
        original.run_id, original.job_id
    );
    if what.is_empty() {
        head
    } else {
        format!("{head}. {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_api::connector::{StagingLocation, WorkDisk};

    fn api_work(disks: Vec<WorkDisk>) -> ApiWork {
        ApiWork {
            job_id: "sms-job-1".into(),
            run_id: "sms-run-2".into(),
            server_id: "s-1".into(),
            vm_id: "vm-1".into(),
            disks,
            staging: StagingLocation {
                bucket: "tern-staging".into(),
                prefix: "runs".into(),
            },
            seed: false,
            parent_run_id: Some("sms-run-1".into()),
        }
    }

    fn disk(index: usize, path: &str, format: Option<&str>) -> WorkDisk {
        WorkDisk {
            index,
            path: path.into(),
            format: format.map(str::to_string),
        }
    }

    #[test]
    fn work_items_become_replicate_work_in_disk_order() {
        let archive = ova_disk_path(Path::new("/srv/web #1.ova"), 1);
        assert_eq!(archive, "/srv/web #1.ova#disk=1");
        let w = translate(&api_work(vec![
            disk(1, &archive, Some("ova")),
            disk(0, "/srv/web.qcow2", Some("qcow2")),
            disk(2, "/srv/data.img", Some("no-such-format")),
        ]))
        .unwrap();
        assert_eq!(
            w.disks,
            vec![
                DiskSource::File {
                    path: "/srv/web.qcow2".into(),
                    format: Some(Format::Qcow2),
                    backing_chain: vec![],
                },
                DiskSource::Ova {
                    path: "/srv/web #1.ova".into(),
                    disk: 1
                },
                DiskSource::File {
                    path: "/srv/data.img".into(),
                    format: None,
                    backing_chain: vec![],
                },
            ]
        );
        assert_eq!(w.staging.bucket, "tern-staging");
        assert_eq!(w.staging.prefix, "runs");
        assert!(!w.seed);

        let err = translate(&api_work(vec![disk(1, "/a", None)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("index 1 where disk 0"), "{err}");
        let err = translate(&api_work(vec![disk(0, "/a.ova", Some("OVA"))]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("#disk="), "{err}");
        let err = translate(&api_work(vec![disk(0, " ", None)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("re-import"), "{err}");
    }

    fn progress(stage: Stage, percent: f64, done: u64, total: Option<u64>) -> Progress {
        Progress {
            stage,
            disk: None,
            percent,
            bytes_done: done,
            bytes_total: total,
            virtual_total: 1000,
            note: None,
        }
    }

    #[test]
    fn progress_is_throttled_except_for_stage_changes() {
        let mut t = Throttle::default();
        assert!(t.due(&progress(Stage::Preparing, 0.0, 0, None)));
        assert!(
            t.due(&progress(Stage::Uploading, 1.0, 10, None)),
            "new stage"
        );
        assert!(
            !t.due(&progress(Stage::Uploading, 2.0, 20, None)),
            "too soon"
        );
        assert!(t.due(&progress(Stage::Completed, 100.0, 30, Some(30))));
        t.last = Some((Stage::Uploading, Instant::now() - PROGRESS_EVERY));
        assert!(
            t.due(&progress(Stage::Uploading, 3.0, 40, None)),
            "a second on"
        );
    }

    #[test]
    fn wire_progress_reports_true_figures() {
        let r = wire_progress("c-1", "w-1", &progress(Stage::Uploading, 42.9, 300, None));
        assert_eq!(
            (r.stage.as_str(), r.percent, r.bytes_done, r.bytes_total),
            ("Uploading", 42, 300, 1000),
            "until the objects are complete, the total is the disks' size"
        );
        let r = wire_progress(
            "c-1",
            "w-1",
            &progress(Stage::Completed, 100.0, 310, Some(310)),
        );
        assert_eq!(
            (r.stage.as_str(), r.percent, r.bytes_total),
            ("Uploaded", 100, 310)
        );
        assert_eq!(
            (r.connector_id.as_str(), r.work_id.as_str()),
            ("c-1", "w-1")
        );
    }

    #[test]
    fn an_item_in_flight_is_claimed_once_until_its_task_ends() {
        let creds = aws_credential_types::Credentials::new("a", "b", None, None, "t");
        let client = ApiClient::new(
            "http://127.0.0.1:1",
            "us-east-1",
            creds.clone(),
            Duration::from_secs(1),
        )
        .unwrap();
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .credentials_provider(creds)
                .build(),
        );
        let worker = Arc::new(Worker::new(
            client,
            ReplicateContext {
                s3,
                state_dir: "/nonexistent".into(),
                options: Default::default(),
            },
        ));
        let claim = worker.claim("work-1").expect("first claim");
        assert!(
            worker.claim("work-1").is_none(),
            "handed out again while running"
        );
        let other = worker.claim("work-2").expect("another item");
        assert_eq!(worker.in_flight(), 2);
        drop(claim);
        assert_eq!(worker.in_flight(), 1);
        assert!(worker.claim("work-1").is_some(), "free once its task ended");
        drop(other);
    }

    #[test]
    fn failure_messages_say_what_to_do() {
        let original = api_work(vec![disk(0, "/a", None)]);
        let e = ReplicateError::S3 {
            operation: "UploadPart",
            code: Some("AccessDenied".into()),
            retryable: false,
            message: "denied".into(),
        };
        let m = advise_run(&e, None, &original);
        assert!(
            m.starts_with("connector could not upload run sms-run-2 of job sms-job-1: S3 UploadPart failed: denied. Check the connector's [staging] endpoint")
                && m.contains("bucket tern-staging"),
            "{m}"
        );
        let m = advise_run(
            &ReplicateError::DeltaTooLarge { index: 0, limit: 5 },
            None,
            &original,
        );
        assert!(m.ends_with("or raise max_delta_bytes"), "{m}");
    }
}
