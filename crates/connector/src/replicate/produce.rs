//! Making one disk's object on a blocking thread: a stream-optimized VMDK for a seed, a delta
//! for an incremental run, from the dirty bitmap's extents or from a full comparison
//! ([`crate::changed`]).

use std::sync::Arc;

use tern_disk::blockmap::{BlockMap, BLOCK_SIZE};
use tern_disk::{DiskError, VirtualDisk};
use tokio::sync::mpsc;

use super::stream::{self, PartSink, Recording};
use super::upload::Target;
use super::{Plan, ReplicateContext, ReplicateError, ReplicationWork};
use crate::changed::{self, BitmapSource, Changes};

/// What the blocking writer produced for one disk.
pub(super) struct Produced {
    pub size: u64,
    pub sha256: [u8; 32],
    pub map: BlockMap,
    pub delta: Option<tern_disk::delta::DeltaSummary>,
    pub read: SourceRead,
}

/// How much of the source a disk's object cost to make, and how its changes were found.
pub(super) struct SourceRead {
    pub bytes: u64,
    pub changes: Changes,
}

/// How a disk's changes are found, decided before it is read: see [`changed`].
#[derive(Clone)]
pub(super) struct ChangePlan {
    bitmap: Option<Arc<BitmapSource>>,
    /// Why an incremental run reads the whole disk although bitmaps are enabled.
    fallback: Option<String>,
}

impl ChangePlan {
    /// Why an incremental run reads the whole disk although bitmaps are enabled.
    pub(super) fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}

/// Adds the run's own bitmap (before the disk is read) and picks the bitmap or the comparison.
pub(super) fn prepare_changes(
    work: &ReplicationWork,
    ctx: &ReplicateContext,
    t: &Target<'_>,
    plan: &Plan,
) -> Result<ChangePlan, ReplicateError> {
    let (incremental, base_run, base_size) = match plan {
        // A prepared object's changes were found when it was made.
        Plan::Seed | Plan::Prepared(_) => (false, None, None),
        Plan::Delta { old, base_run } => (true, base_run.as_deref(), Some(old.disk_size)),
    };
    let record = t.state.bitmaps_path(t.run_id);
    let run = changed::RunInfo {
        job_id: &work.job_id,
        run_id: &work.run_id,
        incremental,
        base_run,
        base_size,
        state_dir: &ctx.state_dir,
        record: &record,
    };
    let p = changed::prepare(
        ctx.options.changed_blocks,
        t.disk,
        &work.disks[t.disk],
        &run,
    )?;
    Ok(ChangePlan {
        bitmap: p.bitmap.map(Arc::new),
        fallback: p.fallback,
    })
}

/// Writes the disk's object into the part channel: a stream-optimized VMDK for a seed, a delta
/// against `old` otherwise. Runs on a blocking thread.
pub(super) fn produce(
    disk: &dyn VirtualDisk,
    old: Option<&BlockMap>,
    changes: ChangePlan,
    tx: mpsc::Sender<stream::Part>,
    part_size: usize,
    limit: u64,
    name: &str,
) -> Result<Produced, DiskError> {
    let mut sink = PartSink::new(tx, part_size, limit);
    let virtual_done = sink.virtual_done.clone();
    let progress = move |n: u64| {
        virtual_done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    };
    let counted = changed::Counting::new(disk);
    let (map, delta, read) = match (old, &changes.bitmap) {
        (None, _) => {
            let rec = Recording::new(&counted);
            tern_disk::write::write_vmdk_stream(&rec, &mut sink, name, &progress)?;
            let map = rec.into_map()?;
            let read = SourceRead {
                bytes: counted.bytes_read(),
                changes: Changes::Seed,
            };
            (map, None, read)
        }
        (Some(old), Some(bitmap)) => {
            let (export, mut client) = bitmap
                .connect()
                .map_err(|e| DiskError::Stream(std::io::Error::other(e)))?;
            let found =
                changed::bitmap_delta(&mut client, &bitmap.context(), old, &mut sink, &progress)?;
            let bytes = client.stats().bytes_read;
            // Ends the qemu-nbd session; dropping the export stops the process.
            let _ = client.disconnect();
            drop(export);
            let read = SourceRead {
                bytes,
                changes: Changes::Bitmap {
                    bitmap: bitmap.bitmap.clone(),
                    dirty_blocks: found.dirty_blocks,
                },
            };
            let mut d = found.summary;
            (take_map(&mut d), Some(d), read)
        }
        (Some(old), None) => {
            let mut d = tern_disk::delta::create(old, &counted, &mut sink, &progress)?;
            let read = SourceRead {
                bytes: counted.bytes_read(),
                changes: Changes::Compare {
                    fallback: changes.fallback.clone(),
                },
            };
            (take_map(&mut d), Some(d), read)
        }
    };
    let (size, sha256) = sink.finish(disk.size())?;
    Ok(Produced {
        size,
        sha256,
        map,
        delta,
        read,
    })
}

/// Moves the new block map out of a delta summary (the summary goes into the manifest, the
/// map into the state directory).
pub(crate) fn take_map(d: &mut tern_disk::delta::DeltaSummary) -> BlockMap {
    std::mem::replace(
        &mut d.new_map,
        BlockMap {
            block_size: BLOCK_SIZE,
            disk_size: 0,
            blocks: Vec::new(),
        },
    )
}
