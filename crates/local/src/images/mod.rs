//! The local image service: the [`Images`] port over a content-addressed block store.
//!
//! * Staged objects are files under the staging root (see [`staging`]).
//! * Snapshots are block maps over 512 KiB block files named by their BLAKE3 digest (see
//!   [`blocks`]): blocks that did not change are shared between snapshots, all-zero blocks are
//!   not stored at all.
//! * Metadata (snapshots, block references, images, tasks) lives in `<data_dir>/images.db`.
//! * Tasks run on their own threads; a task that was active when the process stopped is resumed
//!   by the next [`LocalImages::open`]. Re-running one is safe: blocks are content-addressed and
//!   the snapshot is committed in one transaction.
//! * [`SnapshotDisk`] reads a snapshot back as a [`tern_disk::VirtualDisk`] for export.
//!
//! The on-disk layout is described in `crates/local/README.md`.

mod blocks;
mod db;
mod export;
pub(crate) mod staging;
mod task;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use tern_core::images::{
    Image, Images, ImagesError, RegisterImage, Snapshot, StagedObject, TaskFailure, TaskStatus,
};
use tern_core::{Clock, IdKind, Ids};

pub use export::{ImageCatalog, SnapshotDisk};

use blocks::BlockStore;
use db::{db_err, DeleteOutcome, TaskRow, TaskState};
use task::{Built, TaskCtx, TaskError, TaskProgress};

/// Tuning of [`LocalImages`]; `Default` is what `tern serve` uses.
#[derive(Debug, Clone)]
pub struct LocalImagesOptions {
    /// Tasks that read and store blocks at the same time; more wait, reported as queued.
    pub max_running_tasks: usize,
    /// Threads one import reads and hashes with.
    pub workers_per_task: usize,
    /// Test hook: a task stops as if the process were shutting down after storing this many
    /// blocks, leaving the task active with part of its blocks written, as a crash would.
    #[doc(hidden)]
    pub stop_after_blocks: Option<u64>,
}

impl Default for LocalImagesOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LocalImagesOptions {
            max_running_tasks: cores.clamp(1, 4),
            workers_per_task: cores.clamp(1, 8),
            stop_after_blocks: None,
        }
    }
}

/// What [`LocalImages::gc`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcReport {
    pub removed_files: u64,
}

/// The local [`Images`] adapter. Dropping it stops running tasks (they stay active and resume
/// on the next open) and waits for their threads.
pub struct LocalImages {
    inner: Arc<Inner>,
}

struct Inner {
    db: Mutex<Connection>,
    blocks: BlockStore,
    staging_root: PathBuf,
    ids: Arc<dyn Ids>,
    clock: Arc<dyn Clock>,
    options: LocalImagesOptions,
    progress: Mutex<HashMap<String, Arc<TaskProgress>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    shutdown: AtomicBool,
    running: Mutex<usize>,
    slot_freed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_internal(what: String) -> impl FnOnce(std::io::Error) -> ImagesError {
    move |e| ImagesError::internal_from(what, e)
}

impl LocalImages {
    /// Opens (or creates) the image service of a data directory: `<data_dir>/images.db` and
    /// `<data_dir>/images/`. Staged objects are read from `<staging_root>/<bucket>/<key>`.
    /// Every task that was active is resumed. One process at a time owns a data directory
    /// (`tern serve`); other tools read it through [`ImageCatalog`].
    pub fn open(
        data_dir: &Path,
        staging_root: &Path,
        ids: Arc<dyn Ids>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ImagesError> {
        Self::open_with(
            data_dir,
            staging_root,
            ids,
            clock,
            LocalImagesOptions::default(),
        )
    }

    pub fn open_with(
        data_dir: &Path,
        staging_root: &Path,
        ids: Arc<dyn Ids>,
        clock: Arc<dyn Clock>,
        options: LocalImagesOptions,
    ) -> Result<Self, ImagesError> {
        std::fs::create_dir_all(data_dir).map_err(io_internal(format!(
            "cannot create the data directory {}",
            data_dir.display()
        )))?;
        let root = data_dir.join("images");
        let blocks = BlockStore::open(&root, true).map_err(io_internal(format!(
            "cannot prepare the block store in {}",
            root.display()
        )))?;
        let conn = db::open(&data_dir.join(db::FILE_NAME), false).map_err(db_err)?;
        let active = db::active_tasks(&conn).map_err(db_err)?;
        let inner = Arc::new(Inner {
            db: Mutex::new(conn),
            blocks,
            staging_root: staging_root.to_path_buf(),
            ids,
            clock,
            options,
            progress: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            shutdown: AtomicBool::new(false),
            running: Mutex::new(0),
            slot_freed: Condvar::new(),
        });
        for t in active {
            tracing::info!(task_id = %t.task_id, "resuming image task");
            spawn_task(&inner, t);
        }
        Ok(LocalImages { inner })
    }

    /// Blocks until every task started so far has finished (or stopped), so tests and the
    /// local runtime can step deterministically instead of sleeping.
    pub fn wait_for_tasks(&self) {
        loop {
            let handles: Vec<_> = lock(&self.inner.threads).drain(..).collect();
            if handles.is_empty() {
                return;
            }
            for h in handles {
                let _ = h.join();
            }
        }
    }

    /// A snapshot as a virtual disk, for `tern_disk::write` to export. Blocking.
    pub fn snapshot_disk(&self, snapshot_id: &str) -> Result<SnapshotDisk, ImagesError> {
        SnapshotDisk::load(&lock(&self.inner.db), self.inner.blocks.dir(), snapshot_id)
    }

    /// Removes block files no snapshot references (left by a crash between a delete's commit
    /// and its unlinks, or by a task that never completed). Blocking.
    pub fn gc(&self) -> Result<GcReport, ImagesError> {
        let removed_files = self
            .inner
            .blocks
            .sweep(|| db::referenced(&lock(&self.inner.db)).map_err(db_err))?;
        Ok(GcReport { removed_files })
    }
}

impl LocalImages {
    /// Stops running tasks (they stay active and resume on the next open) and waits for their
    /// threads; what dropping the service does, for hosts that share it and must release the
    /// data directory before reopening it (a restart in the same process).
    pub fn stop(&self) {
        self.inner.shutdown.store(true, Ordering::Relaxed);
        self.inner.slot_freed.notify_all();
        self.wait_for_tasks();
    }
}

impl Drop for LocalImages {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_task(inner: &Arc<Inner>, task: TaskRow) {
    let progress = Arc::new(TaskProgress::default());
    progress.set_stage("queued");
    lock(&inner.progress).insert(task.task_id.clone(), progress.clone());
    let me = inner.clone();
    let task_id = task.task_id.clone();
    let name = format!("tern-{task_id}");
    let spawned = std::thread::Builder::new()
        .name(name)
        .spawn(move || run_task(&me, &task, &progress));
    match spawned {
        Ok(h) => lock(&inner.threads).push(h),
        Err(e) => {
            tracing::error!(error = %e, "cannot start an image task thread");
            lock(&inner.progress).remove(&task_id);
            let message = format!("cannot start a thread for the task: {e}");
            let now = inner.clock.now();
            if let Err(e) = db::fail_task(
                &lock(&inner.db),
                &task_id,
                TaskFailure::Internal,
                &message,
                now,
            ) {
                tracing::error!(error = %e, "cannot record the failure of an image task");
            }
        }
    }
}

/// Waits for a running slot; false if shutdown came first.
fn acquire_slot(inner: &Inner) -> bool {
    let mut running = lock(&inner.running);
    loop {
        if inner.shutdown.load(Ordering::Relaxed) {
            return false;
        }
        if *running < inner.options.max_running_tasks.max(1) {
            *running += 1;
            return true;
        }
        running = inner
            .slot_freed
            .wait_timeout(running, Duration::from_millis(200))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn release_slot(inner: &Inner) {
    *lock(&inner.running) -= 1;
    inner.slot_freed.notify_one();
}

#[tracing::instrument(skip_all, fields(task_id = %task.task_id))]
fn run_task(inner: &Inner, task: &TaskRow, progress: &TaskProgress) {
    if !acquire_slot(inner) {
        return;
    }
    let ctx = TaskCtx {
        blocks: &inner.blocks,
        progress,
        shutdown: &inner.shutdown,
        stop_after_blocks: inner.options.stop_after_blocks,
        workers: inner.options.workers_per_task,
        stored: AtomicU64::new(0),
        pinned: Mutex::new(HashSet::new()),
        dirs: Mutex::new(HashSet::new()),
    };
    let result = run_until_space(inner, task, &ctx, progress);
    release_slot(inner);
    match result {
        Ok(()) => tracing::info!("image task completed"),
        Err(TaskError::Cancelled) => tracing::info!("image task stopped; resumes on next open"),
        Err(TaskError::NoSpace(message)) | Err(TaskError::Failed(_, message))
            if inner.shutdown.load(Ordering::Relaxed) =>
        {
            tracing::info!(%message, "image task stopped while failing; resumes on next open")
        }
        Err(TaskError::NoSpace(message)) => {
            let message = format!(
                "{message} (the data directory stayed full for {} s)",
                NO_SPACE_PATIENCE.as_secs()
            );
            record_failure(inner, task, TaskFailure::Internal, &message);
        }
        Err(TaskError::Failed(kind, message)) => record_failure(inner, task, kind, &message),
    }
    // Only after the commit (or the failure) is recorded: until then a concurrent delete or
    // sweep must not remove the blocks this task relies on.
    inner.blocks.unpin_all(lock(&ctx.pinned).iter());
    lock(&inner.progress).remove(&task.task_id);
}

/// How long a task waits for a full data directory to get space back before it fails.
const NO_SPACE_PATIENCE: Duration = Duration::from_secs(600);

/// Builds and commits the task; while the data directory is full it waits (1 s, doubling to
/// 30 s) and tries again, for up to [`NO_SPACE_PATIENCE`]. Blocks already written stay: they
/// are content-addressed, so the retry finds them.
fn run_until_space(
    inner: &Inner,
    task: &TaskRow,
    ctx: &TaskCtx<'_>,
    progress: &TaskProgress,
) -> Result<(), TaskError> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_secs(1);
    loop {
        match build(inner, task, ctx).and_then(|built| commit(inner, task, ctx, &built)) {
            Err(TaskError::NoSpace(message)) if started.elapsed() < NO_SPACE_PATIENCE => {
                tracing::warn!(%message, retry_in_s = delay.as_secs(), "image task waits for disk space");
                progress.set_stage(format!("waiting for disk space: {message}"));
                if !pause(inner, delay) {
                    return Err(TaskError::Cancelled);
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

/// Sleeps for `delay` unless shutdown comes first (then false).
fn pause(inner: &Inner, delay: Duration) -> bool {
    let deadline = std::time::Instant::now() + delay;
    while std::time::Instant::now() < deadline {
        if inner.shutdown.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(deadline - std::time::Instant::now()));
    }
    !inner.shutdown.load(Ordering::Relaxed)
}

/// Records a task's failure. The record may itself meet a full disk: it is retried (a task
/// left active with no thread behind it would keep its run waiting forever) until it is
/// written or the service shuts down, when the task stays active and resumes on next open.
fn record_failure(inner: &Inner, task: &TaskRow, kind: TaskFailure, message: &str) {
    tracing::warn!(%message, kind = kind.as_str(), "image task failed");
    let mut delay = Duration::from_secs(1);
    loop {
        let now = inner.clock.now();
        match db::fail_task(&lock(&inner.db), &task.task_id, kind, message, now) {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, retry_in_s = delay.as_secs(), "cannot record the failure of an image task; retrying");
            }
        }
        if !pause(inner, delay) {
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

fn build(inner: &Inner, task: &TaskRow, ctx: &TaskCtx<'_>) -> Result<Built, TaskError> {
    let what = format!("staged object {}", task.source);
    let path = staging::resolve(&inner.staging_root, &task.source).map_err(|e| {
        let kind = match e {
            ImagesError::NotFound(_) => TaskFailure::NotFound,
            ImagesError::InvalidParameter(_) => TaskFailure::InvalidImage,
            _ => TaskFailure::Internal,
        };
        TaskError::Failed(kind, e.to_string())
    })?;
    match &task.parent {
        None => {
            ctx.progress.set_stage(format!("importing {}", task.source));
            task::import(ctx, &path, &what)
        }
        Some(parent) => {
            ctx.progress
                .set_stage(format!("applying {} onto {parent}", task.source));
            let blocks = {
                let conn = lock(&inner.db);
                let internal = |e: rusqlite::Error| {
                    TaskError::Failed(TaskFailure::Internal, format!("image database: {e}"))
                };
                // Without its parent a delta would silently build on zeros.
                if db::snapshot(&conn, parent).map_err(internal)?.is_none() {
                    return Err(TaskError::Failed(
                        TaskFailure::NotFound,
                        format!("parent snapshot {parent} does not exist any more"),
                    ));
                }
                db::snapshot_blocks(&conn, parent).map_err(internal)?
            };
            task::apply_delta(ctx, &path, &what, parent, blocks)
        }
    }
}

fn commit(
    inner: &Inner,
    task: &TaskRow,
    ctx: &TaskCtx<'_>,
    built: &Built,
) -> Result<(), TaskError> {
    ctx.progress.set_stage("saving the snapshot");
    let failed = |e: String| TaskError::Failed(TaskFailure::Internal, e);
    inner.blocks.sync_dirs(&lock(&ctx.dirs)).map_err(|e| {
        let message = format!("cannot sync the block store: {e}");
        if task::is_no_space(&e) {
            TaskError::NoSpace(message)
        } else {
            failed(message)
        }
    })?;
    let snapshot = db::NewSnapshot {
        task,
        volume_size_bytes: built.size,
        blocks: &built.blocks,
        created_at: inner.clock.now(),
    };
    let committed = db::commit_snapshot(&mut lock(&inner.db), &snapshot).map_err(|e| {
        let message = format!("cannot record snapshot {}: {e}", task.snapshot_id);
        if task::is_db_full(&e) {
            TaskError::NoSpace(message)
        } else {
            failed(message)
        }
    })?;
    if !committed {
        tracing::info!("image task was already finished elsewhere");
    }
    Ok(())
}

fn validate_image_name(name: &str) -> Result<(), ImagesError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c);
    if !(3..=128).contains(&name.chars().count()) || !name.chars().all(ok_char) {
        return Err(ImagesError::InvalidParameter(format!(
            "image name {name:?} must be 3-128 characters of letters, digits and ()[] ./-'@_"
        )));
    }
    Ok(())
}

impl Inner {
    /// Runs blocking work on tokio's blocking pool: SQLite and the filesystem may block.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Arc<Inner>) -> Result<T, ImagesError> + Send + 'static,
    ) -> Result<T, ImagesError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| ImagesError::internal_from("image service call panicked", e))?
    }

    fn start(
        self: &Arc<Self>,
        source: &StagedObject,
        parent: Option<&str>,
        description: &str,
    ) -> Result<String, ImagesError> {
        staging::check_names(source)?;
        let mut conn = lock(&self.db);
        if let Some(existing) = db::task_for_source(&conn, source, parent).map_err(db_err)? {
            // An internal failure (a full disk, an I/O error) may not recur: asking again
            // retries it. Any other outcome is final for this staged object.
            let retry = existing.state == TaskState::Failed
                && matches!(existing.failure, Some((TaskFailure::Internal, _)));
            if retry {
                if let Some(p) = parent {
                    if db::snapshot(&conn, p).map_err(db_err)?.is_none() {
                        return Err(ImagesError::NotFound(format!(
                            "parent snapshot {p} does not exist"
                        )));
                    }
                }
                db::reactivate_task(&conn, &existing.task_id, self.clock.now()).map_err(db_err)?;
                drop(conn);
                spawn_task(self, existing.clone());
            }
            return Ok(existing.task_id);
        }
        staging::resolve(&self.staging_root, source)?;
        let snapshot_id = self.ids.new_id(IdKind::Snapshot);
        let prefix = if parent.is_some() {
            "delta-"
        } else {
            "import-"
        };
        let row = TaskRow {
            task_id: format!("{prefix}{snapshot_id}"),
            source: source.clone(),
            parent: parent.map(str::to_owned),
            description: description.to_owned(),
            snapshot_id,
            state: TaskState::Active,
            failure: None,
        };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if let Some(p) = parent {
            if db::snapshot(&tx, p).map_err(db_err)?.is_none() {
                return Err(ImagesError::NotFound(format!(
                    "parent snapshot {p} does not exist"
                )));
            }
        }
        db::insert_task(&tx, &row, self.clock.now()).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        drop(conn);
        let id = row.task_id.clone();
        spawn_task(self, row);
        Ok(id)
    }

    fn describe_task(&self, task_id: &str) -> Result<TaskStatus, ImagesError> {
        let conn = lock(&self.db);
        let t = db::task(&conn, task_id)
            .map_err(db_err)?
            .ok_or_else(|| ImagesError::NotFound(format!("no image task {task_id}")))?;
        Ok(match t.state {
            TaskState::Active => {
                let p = lock(&self.progress).get(task_id).cloned();
                let (done, total, message) = match p {
                    Some(p) => (
                        p.done.load(Ordering::Relaxed),
                        p.total.load(Ordering::Relaxed),
                        p.stage(),
                    ),
                    None => (0, 0, "waiting to resume".to_string()),
                };
                // 100 only once the snapshot is committed.
                let percent = done
                    .saturating_mul(100)
                    .checked_div(total)
                    .map_or(0, |p| p.min(99) as u8);
                TaskStatus::Active {
                    progress_percent: percent,
                    bytes_done: done,
                    bytes_total: total,
                    message,
                }
            }
            TaskState::Completed => {
                let snapshot = db::snapshot(&conn, &t.snapshot_id)
                    .map_err(db_err)?
                    .ok_or_else(|| {
                        ImagesError::NotFound(format!(
                            "snapshot {} made by task {task_id} has been deleted",
                            t.snapshot_id
                        ))
                    })?;
                TaskStatus::Completed { snapshot }
            }
            TaskState::Failed => {
                let (kind, message) = t
                    .failure
                    .unwrap_or((TaskFailure::Internal, "failed".to_string()));
                TaskStatus::Failed { kind, message }
            }
        })
    }

    fn register_image(&self, req: &RegisterImage) -> Result<Image, ImagesError> {
        validate_image_name(&req.name)?;
        if req.block_devices.is_empty() {
            return Err(ImagesError::InvalidParameter(
                "an image needs at least one block device".into(),
            ));
        }
        let mut names = HashSet::new();
        for b in &req.block_devices {
            if b.device_name.is_empty() || !names.insert(b.device_name.as_str()) {
                return Err(ImagesError::InvalidParameter(format!(
                    "device name {:?} is empty or given twice",
                    b.device_name
                )));
            }
        }
        let mut conn = lock(&self.db);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        for b in &req.block_devices {
            let snap = db::snapshot(&tx, &b.snapshot_id)
                .map_err(db_err)?
                .ok_or_else(|| {
                    ImagesError::NotFound(format!(
                        "snapshot {} of {} does not exist",
                        b.snapshot_id, b.device_name
                    ))
                })?;
            if b.volume_size < snap.volume_size_gib() {
                return Err(ImagesError::InvalidParameter(format!(
                    "volume size {} GiB of {} is smaller than snapshot {} ({} GiB)",
                    b.volume_size,
                    b.device_name,
                    snap.snapshot_id,
                    snap.volume_size_gib()
                )));
            }
        }
        if let Some(existing) = db::image_by_name(&tx, &req.name).map_err(db_err)? {
            let same = existing.block_devices == req.block_devices
                && existing.architecture == req.architecture
                && existing.boot_mode == req.boot_mode
                && existing.ena_support == req.ena_support
                && existing.description == req.description;
            return if same {
                Ok(existing)
            } else {
                Err(ImagesError::InvalidParameter(format!(
                    "an image named {:?} already exists ({}) with other settings",
                    req.name, existing.image_id
                )))
            };
        }
        let image = Image {
            image_id: self.ids.new_id(IdKind::Image),
            name: req.name.clone(),
            description: req.description.clone(),
            created_at: self.clock.now(),
            architecture: req.architecture,
            boot_mode: req.boot_mode,
            ena_support: req.ena_support,
            root_device_name: req.block_devices[0].device_name.clone(),
            block_devices: req.block_devices.clone(),
        };
        db::insert_image(&tx, &image).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(image)
    }

    fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), ImagesError> {
        let outcome = db::delete_snapshot(&mut lock(&self.db), snapshot_id).map_err(db_err)?;
        match outcome {
            DeleteOutcome::Absent => Ok(()),
            DeleteOutcome::UsedByImages(users) => {
                let list: Vec<String> = users
                    .iter()
                    .map(|(image, device)| format!("{image} ({device})"))
                    .collect();
                Err(ImagesError::InUse(format!(
                    "snapshot {snapshot_id} is used by {}; deregister it first",
                    list.join(", ")
                )))
            }
            DeleteOutcome::ParentOfTasks(tasks) => Err(ImagesError::InUse(format!(
                "snapshot {snapshot_id} is the parent of running task {}",
                tasks.join(", ")
            ))),
            DeleteOutcome::Deleted { freed } => {
                let removed = self.blocks.remove_freed(&freed, |candidates| {
                    db::unreferenced(&lock(&self.db), candidates).map_err(db_err)
                })?;
                tracing::info!(
                    snapshot_id,
                    freed = freed.len(),
                    removed,
                    "snapshot deleted"
                );
                Ok(())
            }
        }
    }
}

#[async_trait]
impl Images for LocalImages {
    async fn start_import(
        &self,
        source: &StagedObject,
        description: &str,
    ) -> Result<String, ImagesError> {
        let (source, description) = (source.clone(), description.to_owned());
        self.inner
            .blocking(move |me| me.start(&source, None, &description))
            .await
    }

    async fn start_apply_delta(
        &self,
        parent_snapshot_id: &str,
        source: &StagedObject,
        description: &str,
    ) -> Result<String, ImagesError> {
        let (parent, source, description) = (
            parent_snapshot_id.to_owned(),
            source.clone(),
            description.to_owned(),
        );
        self.inner
            .blocking(move |me| me.start(&source, Some(&parent), &description))
            .await
    }

    async fn describe_task(&self, task_id: &str) -> Result<TaskStatus, ImagesError> {
        let id = task_id.to_owned();
        self.inner.blocking(move |me| me.describe_task(&id)).await
    }

    async fn describe_snapshot(&self, snapshot_id: &str) -> Result<Snapshot, ImagesError> {
        let id = snapshot_id.to_owned();
        self.inner
            .blocking(move |me| {
                db::snapshot(&lock(&me.db), &id)
                    .map_err(db_err)?
                    .ok_or_else(|| ImagesError::NotFound(format!("no snapshot {id}")))
            })
            .await
    }

    async fn register_image(&self, request: &RegisterImage) -> Result<Image, ImagesError> {
        let req = request.clone();
        self.inner.blocking(move |me| me.register_image(&req)).await
    }

    async fn describe_image(&self, image_id: &str) -> Result<Image, ImagesError> {
        let id = image_id.to_owned();
        self.inner
            .blocking(move |me| {
                db::image(&lock(&me.db), &id)
                    .map_err(db_err)?
                    .ok_or_else(|| ImagesError::NotFound(format!("no image {id}")))
            })
            .await
    }

    async fn list_images(&self) -> Result<Vec<Image>, ImagesError> {
        self.inner
            .blocking(|me| db::list_images(&lock(&me.db)).map_err(db_err))
            .await
    }

    async fn deregister_image(&self, image_id: &str) -> Result<(), ImagesError> {
        let id = image_id.to_owned();
        self.inner
            .blocking(move |me| db::delete_image(&mut lock(&me.db), &id).map_err(db_err))
            .await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), ImagesError> {
        let id = snapshot_id.to_owned();
        self.inner.blocking(move |me| me.delete_snapshot(&id)).await
    }
}
