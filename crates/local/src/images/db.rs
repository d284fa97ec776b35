//! The image service's SQLite database, `<data_dir>/images.db`.
//!
//! ```sql
//! blocks          (digest BLOB PK, length, refs)               -- one row per stored block file
//! snapshots       (snapshot_id PK, parent_snapshot_id, description, created_at,
//!                  volume_size_bytes, stored_bytes, task_id)
//! snapshot_blocks (snapshot_id, block_index, digest) PK (snapshot_id, block_index)
//!                                                              -- the non-zero blocks only
//! images          (image_id PK, name UNIQUE, description, created_at, architecture,
//!                  boot_mode, ena_support)
//! block_devices   (image_id, position, device_name, snapshot_id, volume_size,
//!                  delete_on_termination) PK (image_id, position)
//! tasks           (task_id PK, bucket, key, parent_snapshot_id ('' for an import),
//!                  description, snapshot_id, state, failure_kind, message, created_at,
//!                  updated_at) UNIQUE (bucket, key, parent_snapshot_id)
//! ```
//!
//! `blocks.refs` counts the `snapshot_blocks` rows naming the digest; it is changed only in the
//! transactions that add or remove those rows, so it is always exact. Times are Unix
//! nanoseconds.
//!
//! The database runs in WAL mode with `synchronous = FULL`: a delete unlinks block files right
//! after its commit, so that commit must be on disk first, or a power loss could bring back a
//! snapshot whose blocks are gone. Commits are a handful per task, so the fsync costs nothing
//! that matters.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction};
use tern_core::images::{
    Architecture, BlockDevice, BootMode, Image, ImagesError, Snapshot, StagedObject, TaskFailure,
};
use tern_disk::blockmap::Digest32;
use time::OffsetDateTime;

pub(crate) const FILE_NAME: &str = "images.db";
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blocks (
    digest BLOB PRIMARY KEY,
    length INTEGER NOT NULL,
    refs   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id        TEXT PRIMARY KEY,
    parent_snapshot_id TEXT,
    description        TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    volume_size_bytes  INTEGER NOT NULL,
    stored_bytes       INTEGER NOT NULL,
    task_id            TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_blocks (
    snapshot_id TEXT NOT NULL,
    block_index INTEGER NOT NULL,
    digest      BLOB NOT NULL,
    PRIMARY KEY (snapshot_id, block_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images (
    image_id     TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    description  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    architecture TEXT NOT NULL,
    boot_mode    TEXT NOT NULL,
    ena_support  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS block_devices (
    image_id              TEXT NOT NULL,
    position              INTEGER NOT NULL,
    device_name           TEXT NOT NULL,
    snapshot_id           TEXT NOT NULL,
    volume_size           INTEGER NOT NULL,
    delete_on_termination INTEGER NOT NULL,
    PRIMARY KEY (image_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS block_devices_by_snapshot ON block_devices (snapshot_id);
CREATE TABLE IF NOT EXISTS tasks (
    task_id            TEXT PRIMARY KEY,
    bucket             TEXT NOT NULL,
    key                TEXT NOT NULL,
    parent_snapshot_id TEXT NOT NULL,
    description        TEXT NOT NULL,
    snapshot_id        TEXT NOT NULL,
    state              TEXT NOT NULL,
    failure_kind       TEXT,
    message            TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    UNIQUE (bucket, key, parent_snapshot_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state);
";

/// Maps a database failure to the port's error: lock contention may clear up, the rest is ours.
pub(crate) fn db_err(e: rusqlite::Error) -> ImagesError {
    match e.sqlite_error_code() {
        // SQLITE_PROTOCOL: a connection raced another's WAL recovery (a restart opening the file
        // while the last one closes); SQLite documents it as worth retrying.
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::FileLockingProtocolFailed,
        ) => ImagesError::transient_from("the image database is busy; retry", e),
        // A full data directory is an operator's to fix; what failed may be retried after.
        Some(ErrorCode::DiskFull) => ImagesError::transient_from(
            "the data directory is full (free space on it; the call can be retried)",
            e,
        ),
        _ => ImagesError::internal_from("image database error", e),
    }
}

pub(crate) fn open(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                Some(format!(
                    "{} has schema version {version}; this tern knows {SCHEMA_VERSION}",
                    path.display()
                )),
            ));
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

fn to_nanos(t: OffsetDateTime) -> i64 {
    t.unix_timestamp_nanos().clamp(0, i64::MAX as i128) as i64
}

fn from_nanos(n: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(n as i128).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn digest_of(v: Vec<u8>) -> rusqlite::Result<Digest32> {
    Digest32::try_from(v).map_err(|v| {
        rusqlite::Error::FromSqlConversionFailure(
            v.len(),
            rusqlite::types::Type::Blob,
            "a block digest is 32 bytes".into(),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// tasks

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskState {
    Active,
    Completed,
    Failed,
}

impl TaskState {
    fn as_str(self) -> &'static str {
        match self {
            TaskState::Active => "active",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TaskRow {
    pub task_id: String,
    pub source: StagedObject,
    /// `None` for an import.
    pub parent: Option<String>,
    pub description: String,
    /// The id the task's snapshot gets, fixed when the task is created so that a resumed task
    /// produces the same snapshot.
    pub snapshot_id: String,
    pub state: TaskState,
    pub failure: Option<(TaskFailure, String)>,
}

const TASK_COLUMNS: &str = "task_id, bucket, key, parent_snapshot_id, description, snapshot_id, \
                            state, failure_kind, message";

fn task_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    let parent: String = r.get(3)?;
    let state: String = r.get(6)?;
    let kind: Option<String> = r.get(7)?;
    let message: Option<String> = r.get(8)?;
    let state = match state.as_str() {
        "active" => TaskState::Active,
        "completed" => TaskState::Completed,
        _ => TaskState::Failed,
    };
    let failure = (state == TaskState::Failed).then(|| {
        (
            kind.as_deref()
                .and_then(TaskFailure::parse)
                .unwrap_or(TaskFailure::Internal),
            message.unwrap_or_default(),
        )
    });
    Ok(TaskRow {
        task_id: r.get(0)?,
        source: StagedObject {
            bucket: r.get(1)?,
            key: r.get(2)?,
        },
        parent: (!parent.is_empty()).then_some(parent),
        description: r.get(4)?,
        snapshot_id: r.get(5)?,
        state,
        failure,
    })
}

pub(crate) fn task(conn: &Connection, task_id: &str) -> rusqlite::Result<Option<TaskRow>> {
    conn.query_row(
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?1"),
        [task_id],
        task_from_row,
    )
    .optional()
}

pub(crate) fn task_for_source(
    conn: &Connection,
    source: &StagedObject,
    parent: Option<&str>,
) -> rusqlite::Result<Option<TaskRow>> {
    conn.query_row(
        &format!(
            "SELECT {TASK_COLUMNS} FROM tasks \
             WHERE bucket = ?1 AND key = ?2 AND parent_snapshot_id = ?3"
        ),
        params![source.bucket, source.key, parent.unwrap_or("")],
        task_from_row,
    )
    .optional()
}

pub(crate) fn active_tasks(conn: &Connection) -> rusqlite::Result<Vec<TaskRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'active' ORDER BY created_at, task_id"
    ))?;
    let rows = st.query_map([], task_from_row)?;
    rows.collect()
}

pub(crate) fn insert_task(
    tx: &Transaction<'_>,
    t: &TaskRow,
    now: OffsetDateTime,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO tasks (task_id, bucket, key, parent_snapshot_id, description, snapshot_id, \
         state, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7, ?7)",
        params![
            t.task_id,
            t.source.bucket,
            t.source.key,
            t.parent.as_deref().unwrap_or(""),
            t.description,
            t.snapshot_id,
            to_nanos(now)
        ],
    )?;
    Ok(())
}

/// Puts a failed task back to active (a retry after an internal failure).
pub(crate) fn reactivate_task(
    conn: &Connection,
    task_id: &str,
    now: OffsetDateTime,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE tasks SET state = 'active', failure_kind = NULL, message = NULL, updated_at = ?2 \
         WHERE task_id = ?1",
        params![task_id, to_nanos(now)],
    )?;
    Ok(())
}

/// Marks an active task failed; a task that already finished is left alone.
pub(crate) fn fail_task(
    conn: &Connection,
    task_id: &str,
    kind: TaskFailure,
    message: &str,
    now: OffsetDateTime,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE tasks SET state = ?2, failure_kind = ?3, message = ?4, updated_at = ?5 \
         WHERE task_id = ?1 AND state = 'active'",
        params![
            task_id,
            TaskState::Failed.as_str(),
            kind.as_str(),
            message,
            to_nanos(now)
        ],
    )?;
    Ok(())
}

/// Active tasks that build on `snapshot_id`.
pub(crate) fn active_children(
    conn: &Connection,
    snapshot_id: &str,
) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT task_id FROM tasks WHERE state = 'active' AND parent_snapshot_id = ?1 \
         ORDER BY task_id",
    )?;
    let rows = st.query_map([snapshot_id], |r| r.get(0))?;
    rows.collect()
}

// ---------------------------------------------------------------------------------------------
// snapshots and blocks

/// One stored (non-zero) block of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredBlock {
    pub index: u64,
    pub digest: Digest32,
    pub length: u32,
}

fn snapshot_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Snapshot> {
    Ok(Snapshot {
        snapshot_id: r.get(0)?,
        parent_snapshot_id: r.get(1)?,
        description: r.get(2)?,
        created_at: from_nanos(r.get(3)?),
        volume_size_bytes: r.get::<_, i64>(4)? as u64,
        stored_bytes: r.get::<_, i64>(5)? as u64,
    })
}

pub(crate) fn snapshot(conn: &Connection, snapshot_id: &str) -> rusqlite::Result<Option<Snapshot>> {
    conn.query_row(
        "SELECT snapshot_id, parent_snapshot_id, description, created_at, volume_size_bytes, \
         stored_bytes FROM snapshots WHERE snapshot_id = ?1",
        [snapshot_id],
        snapshot_from_row,
    )
    .optional()
}

/// The stored blocks of a snapshot in block order.
pub(crate) fn snapshot_blocks(
    conn: &Connection,
    snapshot_id: &str,
) -> rusqlite::Result<Vec<StoredBlock>> {
    let mut st = conn.prepare(
        "SELECT sb.block_index, sb.digest, b.length FROM snapshot_blocks sb \
         JOIN blocks b ON b.digest = sb.digest \
         WHERE sb.snapshot_id = ?1 ORDER BY sb.block_index",
    )?;
    let rows = st.query_map([snapshot_id], |r| {
        Ok(StoredBlock {
            index: r.get::<_, i64>(0)? as u64,
            digest: digest_of(r.get(1)?)?,
            length: r.get::<_, i64>(2)? as u32,
        })
    })?;
    rows.collect()
}

/// What a finished task commits.
pub(crate) struct NewSnapshot<'a> {
    pub task: &'a TaskRow,
    pub volume_size_bytes: u64,
    pub blocks: &'a [StoredBlock],
    pub created_at: OffsetDateTime,
}

/// Records the snapshot, its block map, the block references and the task's completion in one
/// transaction. Returns false (and changes nothing) when the task is no longer active.
pub(crate) fn commit_snapshot(
    conn: &mut Connection,
    s: &NewSnapshot<'_>,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let state: Option<String> = tx
        .query_row(
            "SELECT state FROM tasks WHERE task_id = ?1",
            [&s.task.task_id],
            |r| r.get(0),
        )
        .optional()?;
    if state.as_deref() != Some("active") {
        return Ok(false);
    }
    let stored_bytes: u64 = s.blocks.iter().map(|b| b.length as u64).sum();
    tx.execute(
        "INSERT INTO snapshots (snapshot_id, parent_snapshot_id, description, created_at, \
         volume_size_bytes, stored_bytes, task_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            s.task.snapshot_id,
            s.task.parent,
            s.task.description,
            to_nanos(s.created_at),
            s.volume_size_bytes as i64,
            stored_bytes as i64,
            s.task.task_id
        ],
    )?;
    let mut refs: BTreeMap<Digest32, (u32, i64)> = BTreeMap::new();
    {
        let mut ins = tx.prepare(
            "INSERT INTO snapshot_blocks (snapshot_id, block_index, digest) VALUES (?1, ?2, ?3)",
        )?;
        for b in s.blocks {
            ins.execute(params![s.task.snapshot_id, b.index as i64, &b.digest[..]])?;
            refs.entry(b.digest).or_insert((b.length, 0)).1 += 1;
        }
        let mut up = tx.prepare(
            "INSERT INTO blocks (digest, length, refs) VALUES (?1, ?2, ?3) \
             ON CONFLICT (digest) DO UPDATE SET refs = refs + excluded.refs",
        )?;
        for (d, (len, n)) in &refs {
            up.execute(params![&d[..], *len as i64, n])?;
        }
    }
    tx.execute(
        "UPDATE tasks SET state = 'completed', updated_at = ?2 WHERE task_id = ?1",
        params![s.task.task_id, to_nanos(s.created_at)],
    )?;
    tx.commit()?;
    Ok(true)
}

/// Why a snapshot cannot be deleted.
pub(crate) enum DeleteOutcome {
    Deleted { freed: Vec<Digest32> },
    Absent,
    UsedByImages(Vec<(String, String)>),
    ParentOfTasks(Vec<String>),
}

/// Removes a snapshot and its references in one transaction; returns the digests whose last
/// reference went with it.
pub(crate) fn delete_snapshot(
    conn: &mut Connection,
    snapshot_id: &str,
) -> rusqlite::Result<DeleteOutcome> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if snapshot(&tx, snapshot_id)?.is_none() {
        return Ok(DeleteOutcome::Absent);
    }
    let users = {
        let mut st = tx.prepare(
            "SELECT image_id, device_name FROM block_devices WHERE snapshot_id = ?1 \
             ORDER BY image_id, position",
        )?;
        let rows = st.query_map([snapshot_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<Vec<(String, String)>>>()?
    };
    if !users.is_empty() {
        return Ok(DeleteOutcome::UsedByImages(users));
    }
    let children = active_children(&tx, snapshot_id)?;
    if !children.is_empty() {
        return Ok(DeleteOutcome::ParentOfTasks(children));
    }
    let counts = {
        let mut st = tx.prepare(
            "SELECT digest, COUNT(*) FROM snapshot_blocks WHERE snapshot_id = ?1 GROUP BY digest",
        )?;
        let rows = st.query_map([snapshot_id], |r| {
            Ok((digest_of(r.get(0)?)?, r.get::<_, i64>(1)?))
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let mut freed = Vec::new();
    {
        let mut dec =
            tx.prepare("UPDATE blocks SET refs = refs - ?2 WHERE digest = ?1 RETURNING refs")?;
        let mut del = tx.prepare("DELETE FROM blocks WHERE digest = ?1")?;
        for (d, n) in &counts {
            let left: i64 = dec.query_row(params![&d[..], n], |r| r.get(0))?;
            if left <= 0 {
                del.execute([&d[..]])?;
                freed.push(*d);
            }
        }
    }
    tx.execute(
        "DELETE FROM snapshot_blocks WHERE snapshot_id = ?1",
        [snapshot_id],
    )?;
    tx.execute(
        "DELETE FROM snapshots WHERE snapshot_id = ?1",
        [snapshot_id],
    )?;
    tx.commit()?;
    Ok(DeleteOutcome::Deleted { freed })
}

/// Which of `candidates` no snapshot references.
pub(crate) fn unreferenced(
    conn: &Connection,
    candidates: &[Digest32],
) -> rusqlite::Result<HashSet<Digest32>> {
    let mut st = conn.prepare_cached("SELECT 1 FROM blocks WHERE digest = ?1")?;
    let mut out = HashSet::new();
    for d in candidates {
        if st.query_row([&d[..]], |_| Ok(())).optional()?.is_none() {
            out.insert(*d);
        }
    }
    Ok(out)
}

pub(crate) fn referenced(conn: &Connection) -> rusqlite::Result<HashSet<Digest32>> {
    let mut st = conn.prepare("SELECT digest FROM blocks")?;
    let rows = st.query_map([], |r| digest_of(r.get(0)?))?;
    rows.collect()
}

// ---------------------------------------------------------------------------------------------
// images

fn load_image(conn: &Connection, r: &rusqlite::Row<'_>) -> rusqlite::Result<Image> {
    let image_id: String = r.get(0)?;
    let arch: String = r.get(4)?;
    let boot: String = r.get(5)?;
    let bad = |what: &str, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown {what} {v:?} stored for {image_id}").into(),
        )
    };
    let block_devices = {
        let mut st = conn.prepare_cached(
            "SELECT device_name, snapshot_id, volume_size, delete_on_termination \
             FROM block_devices WHERE image_id = ?1 ORDER BY position",
        )?;
        let rows = st.query_map([&image_id], |r| {
            Ok(BlockDevice {
                device_name: r.get(0)?,
                snapshot_id: r.get(1)?,
                volume_size: r.get::<_, i64>(2)? as u64,
                delete_on_termination: r.get(3)?,
            })
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    Ok(Image {
        architecture: Architecture::parse(&arch).ok_or_else(|| bad("architecture", &arch))?,
        boot_mode: BootMode::parse(&boot).ok_or_else(|| bad("boot mode", &boot))?,
        name: r.get(1)?,
        description: r.get(2)?,
        created_at: from_nanos(r.get(3)?),
        ena_support: r.get(6)?,
        root_device_name: block_devices
            .first()
            .map(|b| b.device_name.clone())
            .unwrap_or_default(),
        block_devices,
        image_id,
    })
}

const IMAGE_COLUMNS: &str =
    "image_id, name, description, created_at, architecture, boot_mode, ena_support";

pub(crate) fn image(conn: &Connection, image_id: &str) -> rusqlite::Result<Option<Image>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {IMAGE_COLUMNS} FROM images WHERE image_id = ?1"
    ))?;
    let mut rows = st.query([image_id])?;
    match rows.next()? {
        Some(r) => Ok(Some(load_image(conn, r)?)),
        None => Ok(None),
    }
}

pub(crate) fn image_by_name(conn: &Connection, name: &str) -> rusqlite::Result<Option<Image>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {IMAGE_COLUMNS} FROM images WHERE name = ?1"
    ))?;
    let mut rows = st.query([name])?;
    match rows.next()? {
        Some(r) => Ok(Some(load_image(conn, r)?)),
        None => Ok(None),
    }
}

pub(crate) fn list_images(conn: &Connection) -> rusqlite::Result<Vec<Image>> {
    let mut st = conn.prepare(&format!(
        "SELECT {IMAGE_COLUMNS} FROM images ORDER BY created_at, image_id"
    ))?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(load_image(conn, r)?);
    }
    Ok(out)
}

pub(crate) fn insert_image(tx: &Transaction<'_>, image: &Image) -> rusqlite::Result<()> {
    tx.execute(
        &format!("INSERT INTO images ({IMAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
        params![
            image.image_id,
            image.name,
            image.description,
            to_nanos(image.created_at),
            image.architecture.as_str(),
            image.boot_mode.as_str(),
            image.ena_support
        ],
    )?;
    let mut st = tx.prepare(
        "INSERT INTO block_devices (image_id, position, device_name, snapshot_id, volume_size, \
         delete_on_termination) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (i, b) in image.block_devices.iter().enumerate() {
        st.execute(params![
            image.image_id,
            i as i64,
            b.device_name,
            b.snapshot_id,
            b.volume_size as i64,
            b.delete_on_termination
        ])?;
    }
    Ok(())
}

pub(crate) fn delete_image(conn: &mut Connection, image_id: &str) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM block_devices WHERE image_id = ?1", [image_id])?;
    tx.execute("DELETE FROM images WHERE image_id = ?1", [image_id])?;
    tx.commit()
}
