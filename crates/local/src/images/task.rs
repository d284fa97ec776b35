//! The work of a task: read staged data block by block into the block store and produce the new
//! snapshot's block map. Synchronous (tern-disk is), run on the task's own thread.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

use tern_core::images::TaskFailure;
use tern_disk::blockmap::{Digest32, BLOCK_SIZE};
use tern_disk::delta::DeltaReader;
use tern_disk::{DiskError, Extent, Format, OpenOptions};

use super::blocks::{digest, BlockStore};
use super::db::StoredBlock;

/// Blocks a worker takes at a time: 4 MiB of reads amortises the hand-off between workers.
const BATCH: u64 = 8;

pub(crate) enum TaskError {
    /// Shutdown (or the test hook) stopped the task; it stays active and resumes on next open.
    Cancelled,
    /// The data directory's filesystem is full: the task waits for space and tries again
    /// rather than failing the run over a condition that an operator can fix.
    NoSpace(String),
    Failed(TaskFailure, String),
}

/// Whether an I/O error means the filesystem is full.
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// Whether an SQLite error means the filesystem is full.
pub(crate) fn is_db_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

fn invalid(message: String) -> TaskError {
    TaskError::Failed(TaskFailure::InvalidImage, message)
}

fn internal(message: String) -> TaskError {
    TaskError::Failed(TaskFailure::Internal, message)
}

/// Damaged or unsupported content is the data's fault; I/O errors are ours.
fn disk_failure(e: DiskError, what: &str) -> TaskError {
    match e {
        DiskError::Io { .. } | DiskError::Stream(_) => internal(format!("cannot read {what}: {e}")),
        other => invalid(format!("{what}: {other}")),
    }
}

/// Live progress of one task, read by `describe_task`.
#[derive(Debug, Default)]
pub(crate) struct TaskProgress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub stage: Mutex<String>,
}

impl TaskProgress {
    pub(crate) fn set_stage(&self, stage: impl Into<String>) {
        *self.stage.lock().unwrap_or_else(|p| p.into_inner()) = stage.into();
    }

    pub(crate) fn stage(&self) -> String {
        self.stage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a task shares between its workers.
pub(crate) struct TaskCtx<'a> {
    pub blocks: &'a BlockStore,
    pub progress: &'a TaskProgress,
    pub shutdown: &'a AtomicBool,
    /// Test hook: behave as if shut down once this many blocks have been stored.
    pub stop_after_blocks: Option<u64>,
    pub workers: usize,
    pub stored: AtomicU64,
    pub pinned: Mutex<HashSet<Digest32>>,
    pub dirs: Mutex<HashSet<PathBuf>>,
}

impl TaskCtx<'_> {
    fn cancelled(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
            || self
                .stop_after_blocks
                .is_some_and(|n| self.stored.load(Ordering::Relaxed) >= n)
    }

    /// Stores one non-zero block (unless a file with its digest exists) and returns its digest.
    fn store(&self, data: &[u8]) -> Result<Digest32, TaskError> {
        let d = digest(data);
        let newly_pinned = self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(d);
        let exists = if newly_pinned {
            self.blocks.pin(&d)
        } else {
            self.blocks.path(&d).is_file()
        };
        if !exists {
            let dir = self.blocks.write(&d, data).map_err(|e| {
                let message = format!(
                    "cannot write block file {}: {e}",
                    self.blocks.path(&d).display()
                );
                if is_no_space(&e) {
                    TaskError::NoSpace(message)
                } else {
                    internal(message)
                }
            })?;
            self.dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(dir);
        }
        self.stored.fetch_add(1, Ordering::Relaxed);
        Ok(d)
    }
}

/// What a task built: the new snapshot's size and its non-zero blocks in block order.
pub(crate) struct Built {
    pub size: u64,
    pub blocks: Vec<StoredBlock>,
}

fn overlaps(ext: &[Extent], start: u64, end: u64) -> bool {
    let i = ext.partition_point(|e| e.end() <= start);
    i < ext.len() && ext[i].offset < end
}

/// Imports a stream-optimized VMDK.
pub(crate) fn import(ctx: &TaskCtx<'_>, path: &Path, what: &str) -> Result<Built, TaskError> {
    let format = tern_disk::detect(path).map_err(|e| disk_failure(e, what))?;
    if format != Format::Vmdk {
        let looks = match format {
            Format::Raw => "has no VMDK header (it reads as raw data)".to_string(),
            other => format!("is a {other} image"),
        };
        return Err(invalid(format!(
            "{what} is not a stream-optimized VMDK: its content {looks}"
        )));
    }
    let opts = OpenOptions {
        format: Some(Format::Vmdk),
        backing_chain: Vec::new(),
    };
    let disk = tern_disk::open(path, &opts).map_err(|e| disk_failure(e, what))?;
    let variant = disk.variant();
    if variant != "streamOptimized" {
        return Err(invalid(format!(
            "{what} is a {variant} VMDK; a seed must be a stream-optimized VMDK \
             (`tern disk convert IN OUT --to vmdk-stream` makes one)"
        )));
    }
    let size = disk.size();
    ctx.progress.total.store(size, Ordering::Relaxed);
    let ext = disk.allocated().map_err(|e| disk_failure(e, what))?;
    let bs = BLOCK_SIZE as u64;
    let blocks = size.div_ceil(bs);
    let batches = blocks.div_ceil(BATCH);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<TaskError>> = Mutex::new(None);
    let found: Mutex<Vec<StoredBlock>> = Mutex::new(Vec::new());
    let fail = |e: TaskError| {
        stop.store(true, Ordering::Relaxed);
        failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    };
    std::thread::scope(|s| {
        for _ in 0..ctx.workers.max(1) {
            s.spawn(|| {
                let mut mine = Vec::new();
                let mut buf = vec![0u8; bs as usize];
                'work: while !stop.load(Ordering::Relaxed) {
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    if t >= batches {
                        break;
                    }
                    for b in t * BATCH..((t + 1) * BATCH).min(blocks) {
                        if ctx.cancelled() {
                            fail(TaskError::Cancelled);
                            break 'work;
                        }
                        let start = b * bs;
                        let len = bs.min(size - start) as usize;
                        if overlaps(&ext, start, start + len as u64) {
                            let data = &mut buf[..len];
                            if let Err(e) = disk.read_at(data, start) {
                                fail(disk_failure(e, what));
                                break 'work;
                            }
                            if !tern_disk::is_zero(data) {
                                match ctx.store(data) {
                                    Ok(d) => mine.push(StoredBlock {
                                        index: b,
                                        digest: d,
                                        length: len as u32,
                                    }),
                                    Err(e) => {
                                        fail(e);
                                        break 'work;
                                    }
                                }
                            }
                        }
                        ctx.progress.done.fetch_add(len as u64, Ordering::Relaxed);
                    }
                }
                found.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut blocks = found.into_inner().unwrap_or_else(|p| p.into_inner());
    blocks.sort_by_key(|b| b.index);
    Ok(Built { size, blocks })
}

/// Applies a delta object onto a parent's block map.
pub(crate) fn apply_delta(
    ctx: &TaskCtx<'_>,
    path: &Path,
    what: &str,
    parent_id: &str,
    parent_blocks: Vec<StoredBlock>,
) -> Result<Built, TaskError> {
    let file = File::open(path).map_err(|e| internal(format!("cannot open {what}: {e}")))?;
    let mut reader =
        DeltaReader::new(BufReader::with_capacity(1 << 20, file)).map_err(|e| match e {
            DiskError::Io { .. } | DiskError::Stream(_) => {
                internal(format!("cannot read {what}: {e}"))
            }
            other => invalid(format!("{what} is not a valid Tern delta object: {other}")),
        })?;
    let bs = BLOCK_SIZE as u64;
    if reader.block_size != BLOCK_SIZE {
        return Err(invalid(format!(
            "{what} uses {}-byte blocks; snapshots use {BLOCK_SIZE}",
            reader.block_size
        )));
    }
    let size = reader.disk_size;
    let count = size.div_ceil(bs);
    let entries = reader.entries().to_vec();
    let total: u64 = entries
        .iter()
        .filter(|e| !e.zero)
        .map(|e| e.length as u64)
        .sum();
    ctx.progress.total.store(total, Ordering::Relaxed);
    let mut map: BTreeMap<u64, StoredBlock> = parent_blocks
        .into_iter()
        .filter(|b| b.index < count)
        .map(|b| (b.index, b))
        .collect();

    // Reading verifies each block's SHA-256 and storing hashes it with BLAKE3 and writes it:
    // one thread each, so both cores work.
    let (tx, rx) = sync_channel::<Result<(u64, bool, Vec<u8>), TaskError>>(4);
    let outcome = std::thread::scope(|s| {
        s.spawn(move || {
            let mut buf = Vec::with_capacity(bs as usize);
            for e in &entries {
                let r = reader.read_block(e, &mut buf).map(|()| {
                    let data = if e.zero { Vec::new() } else { buf.clone() };
                    (e.block, e.zero, data)
                });
                let failed = r.is_err();
                let msg = r.map_err(|err| disk_failure(err, what));
                if tx.send(msg).is_err() || failed {
                    return;
                }
            }
        });
        for msg in rx {
            if ctx.cancelled() {
                return Err(TaskError::Cancelled);
            }
            let (block, zero, data) = msg?;
            if zero || tern_disk::is_zero(&data) {
                // Now zero: the new snapshot simply stores nothing there.
                map.remove(&block);
            } else {
                let d = ctx.store(&data)?;
                map.insert(
                    block,
                    StoredBlock {
                        index: block,
                        digest: d,
                        length: data.len() as u32,
                    },
                );
            }
            ctx.progress
                .done
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    });
    outcome?;
    // Blocks kept from the parent must still have the right length at their place in the new
    // disk: the last block of a disk that grew or shrank changes length, and a delta made from
    // the right block map always rewrites it.
    for b in map.values() {
        let expected = bs.min(size - b.index * bs);
        if b.length as u64 != expected {
            return Err(invalid(format!(
                "{what} does not fit parent snapshot {parent_id}: block {} is {} bytes in the \
                 parent but {expected} bytes in the {size}-byte disk, and the delta does not \
                 rewrite it (was the delta made from this snapshot's block map?)",
                b.index, b.length
            )));
        }
    }
    Ok(Built {
        size,
        blocks: map.into_values().collect(),
    })
}
