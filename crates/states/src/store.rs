//! Durable storage behind a small trait: the engine hands over one [`Batch`] per group of
//! transitions and reads everything back once at start.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachineRecord {
    pub arn: String,
    pub name: String,
    pub definition: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Aborted,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "RUNNING",
            ExecutionStatus::Succeeded => "SUCCEEDED",
            ExecutionStatus::Failed => "FAILED",
            ExecutionStatus::TimedOut => "TIMED_OUT",
            ExecutionStatus::Aborted => "ABORTED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub arn: String,
    pub name: String,
    pub state_machine_arn: String,
    pub status: ExecutionStatus,
    /// JSON text, as the API returns it.
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub start_ms: i64,
    pub stop_ms: Option<i64>,
    /// Counters that must survive a restart so ids are never reused.
    pub next_thread: u64,
    pub next_event: u64,
}

/// One group commit. Threads and blobs are opaque JSON owned by the engine.
#[derive(Debug, Default)]
pub struct Batch {
    pub state_machines: Vec<StateMachineRecord>,
    pub executions: Vec<ExecutionRecord>,
    pub threads: Vec<(String, u64, String)>,
    pub deleted_threads: Vec<(String, u64)>,
    pub blobs: Vec<(String, u64, String)>,
    pub deleted_blobs: Vec<(String, u64)>,
    /// Results of finished Map iterations / Parallel branches: (execution, parent thread, chunk
    /// key, body). One chunk per parent per commit, so a finished child costs no row of its own.
    pub results: Vec<(String, u64, u64, String)>,
    /// Every result chunk of these (execution, parent thread)s; applied before `results`.
    pub deleted_results: Vec<(String, u64)>,
    /// History pages: (execution, id of the first event, events as newline-separated JSON).
    /// One page per execution per commit keeps the write count independent of the event count.
    pub events: Vec<(String, u64, String)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.state_machines.is_empty()
            && self.executions.is_empty()
            && self.threads.is_empty()
            && self.deleted_threads.is_empty()
            && self.blobs.is_empty()
            && self.deleted_blobs.is_empty()
            && self.results.is_empty()
            && self.deleted_results.is_empty()
            && self.events.is_empty()
    }
}

/// Everything needed to resume: all machines and executions, and the live threads and blobs.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub state_machines: Vec<StateMachineRecord>,
    pub executions: Vec<ExecutionRecord>,
    pub threads: Vec<(String, u64, String)>,
    pub blobs: Vec<(String, u64, String)>,
    /// Result chunks: (execution, parent thread, body).
    pub results: Vec<(String, u64, String)>,
}

pub trait Store: Send + Sync {
    /// Applies the batch atomically: all of it or none of it.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// History pages of one execution, in id order: (id of the first event, page body as the
    /// engine wrote it).
    fn events(&self, execution_arn: &str) -> Result<Vec<(u64, String)>, StoreError>;
}

/// Keeps everything in memory. Sharing one `MemoryStore` between two engines (one after the
/// other) simulates a restart in tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    machines: BTreeMap<String, StateMachineRecord>,
    executions: BTreeMap<String, ExecutionRecord>,
    threads: BTreeMap<(String, u64), String>,
    blobs: BTreeMap<(String, u64), String>,
    results: BTreeMap<(String, u64, u64), String>,
    events: BTreeMap<String, Vec<(u64, String)>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn commit(&self, b: &Batch) -> Result<(), StoreError> {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for r in &b.state_machines {
            m.machines.insert(r.arn.clone(), r.clone());
        }
        for r in &b.executions {
            m.executions.insert(r.arn.clone(), r.clone());
        }
        for (arn, id, body) in &b.threads {
            m.threads.insert((arn.clone(), *id), body.clone());
        }
        for (arn, id) in &b.deleted_threads {
            m.threads.remove(&(arn.clone(), *id));
        }
        for (arn, id, body) in &b.blobs {
            m.blobs.insert((arn.clone(), *id), body.clone());
        }
        for (arn, id) in &b.deleted_blobs {
            m.blobs.remove(&(arn.clone(), *id));
        }
        for (arn, thread) in &b.deleted_results {
            let range = (arn.clone(), *thread, 0)..=(arn.clone(), *thread, u64::MAX);
            let keys: Vec<_> = m.results.range(range).map(|(k, _)| k.clone()).collect();
            for k in keys {
                m.results.remove(&k);
            }
        }
        for (arn, thread, chunk, body) in &b.results {
            m.results
                .insert((arn.clone(), *thread, *chunk), body.clone());
        }
        for (arn, first, body) in &b.events {
            m.events
                .entry(arn.clone())
                .or_default()
                .push((*first, body.clone()));
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Snapshot {
            state_machines: m.machines.values().cloned().collect(),
            executions: m.executions.values().cloned().collect(),
            threads: m
                .threads
                .iter()
                .map(|((a, i), b)| (a.clone(), *i, b.clone()))
                .collect(),
            blobs: m
                .blobs
                .iter()
                .map(|((a, i), b)| (a.clone(), *i, b.clone()))
                .collect(),
            results: m
                .results
                .iter()
                .map(|((a, t, _), b)| (a.clone(), *t, b.clone()))
                .collect(),
        })
    }

    fn events(&self, execution_arn: &str) -> Result<Vec<(u64, String)>, StoreError> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(m.events.get(execution_arn).cloned().unwrap_or_default())
    }
}

/// SQLite storage. Tables are prefixed `states_` because the file is shared with the rest of Tern.
///
/// The database runs in WAL mode with `synchronous=NORMAL`: a committed batch survives a crash of
/// the process; after a power loss the last few batches may be lost (they are then redone, which
/// the at-least-once task guarantee already allows for). Use [`SqliteStore::open_with`] with
/// `full_sync = true` to fsync every commit instead.
pub struct SqliteStore {
    inner: Mutex<SqliteInner>,
}

struct SqliteInner {
    conn: Connection,
    /// Execution ARN → `states_executions.seq`. Child tables are keyed by this integer rather than
    /// by the ARN: B-tree seeks on 70-byte text keys were a third of the commit time.
    seqs: std::collections::HashMap<String, i64>,
}

// Rows of threads, blobs and history pages can be large: rowid tables (with the primary key as an
// index) store them far faster than WITHOUT ROWID tables, whose B-tree cells would hold them.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS states_machines (
    arn TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS states_executions (
    seq INTEGER PRIMARY KEY, arn TEXT NOT NULL UNIQUE, state_machine_arn TEXT NOT NULL,
    status TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS states_threads (
    execution INTEGER NOT NULL, id INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (execution, id));
CREATE TABLE IF NOT EXISTS states_blobs (
    execution INTEGER NOT NULL, id INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (execution, id));
CREATE TABLE IF NOT EXISTS states_results (
    execution INTEGER NOT NULL, thread INTEGER NOT NULL, chunk INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (execution, thread, chunk));
CREATE TABLE IF NOT EXISTS states_events (
    execution INTEGER NOT NULL, id INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (execution, id));
";

impl SqliteStore {
    pub fn open(path: &FsPath) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, false)
    }

    pub fn open_with(path: &FsPath, full_sync: bool) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Larger pages suit the large history pages; it only takes effect on a new file, and
        // whoever creates the shared data file first decides.
        conn.pragma_update(None, "page_size", 16384)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if full_sync { "FULL" } else { "NORMAL" },
        )?;
        // Histories are written in large pages; checkpoint every 64 MiB rather than 4 MiB so a
        // busy engine is not stalled by checkpoints (and their fsyncs) in mid-run.
        conn.pragma_update(None, "wal_autocheckpoint", 4096)?;
        conn.pragma_update(None, "cache_size", -32768)?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore {
            inner: Mutex::new(SqliteInner {
                conn,
                seqs: std::collections::HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SqliteInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn seq_of(
    tx: &rusqlite::Transaction<'_>,
    seqs: &mut std::collections::HashMap<String, i64>,
    arn: &str,
) -> Result<i64, StoreError> {
    if let Some(s) = seqs.get(arn) {
        return Ok(*s);
    }
    let seq: i64 = tx
        .query_row(
            "SELECT seq FROM states_executions WHERE arn = ?1",
            [arn],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::Corrupt(format!("no execution row for {arn}")))?;
    seqs.insert(arn.to_string(), seq);
    Ok(seq)
}

fn write_batch(
    tx: &rusqlite::Transaction<'_>,
    seqs: &mut std::collections::HashMap<String, i64>,
    b: &Batch,
) -> Result<(), StoreError> {
    let mut st =
        tx.prepare_cached("INSERT OR REPLACE INTO states_machines (arn, body) VALUES (?1, ?2)")?;
    for r in &b.state_machines {
        st.execute(params![r.arn, to_json(r)?])?;
    }
    // An upsert keeps `seq` stable (INSERT OR REPLACE would give the row a new one).
    let mut st = tx.prepare_cached(
            "INSERT INTO states_executions (arn, state_machine_arn, status, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (arn) DO UPDATE SET status = excluded.status, body = excluded.body",
        )?;
    for r in &b.executions {
        st.execute(params![
            r.arn,
            r.state_machine_arn,
            r.status.as_str(),
            to_json(r)?
        ])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT OR REPLACE INTO states_threads (execution, id, body) VALUES (?1, ?2, ?3)",
    )?;
    for (a, i, body) in &b.threads {
        st.execute(params![seq_of(tx, seqs, a)?, *i as i64, body])?;
    }
    let mut st =
        tx.prepare_cached("DELETE FROM states_threads WHERE execution = ?1 AND id = ?2")?;
    for (a, i) in &b.deleted_threads {
        st.execute(params![seq_of(tx, seqs, a)?, *i as i64])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT OR REPLACE INTO states_blobs (execution, id, body) VALUES (?1, ?2, ?3)",
    )?;
    for (a, i, body) in &b.blobs {
        st.execute(params![seq_of(tx, seqs, a)?, *i as i64, body])?;
    }
    let mut st = tx.prepare_cached("DELETE FROM states_blobs WHERE execution = ?1 AND id = ?2")?;
    for (a, i) in &b.deleted_blobs {
        st.execute(params![seq_of(tx, seqs, a)?, *i as i64])?;
    }
    let mut st =
        tx.prepare_cached("DELETE FROM states_results WHERE execution = ?1 AND thread = ?2")?;
    for (a, t) in &b.deleted_results {
        st.execute(params![seq_of(tx, seqs, a)?, *t as i64])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT OR REPLACE INTO states_results (execution, thread, chunk, body) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (a, t, c, body) in &b.results {
        st.execute(params![seq_of(tx, seqs, a)?, *t as i64, *c as i64, body])?;
    }
    let mut st =
        tx.prepare_cached("INSERT INTO states_events (execution, id, body) VALUES (?1, ?2, ?3)")?;
    for (a, i, body) in &b.events {
        st.execute(params![seq_of(tx, seqs, a)?, *i as i64, body])?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn commit(&self, b: &Batch) -> Result<(), StoreError> {
        if b.is_empty() {
            return Ok(());
        }
        let mut guard = self.lock();
        let SqliteInner { conn, seqs } = &mut *guard;
        let tx = conn.transaction()?;
        let result = write_batch(&tx, seqs, b).and_then(|()| tx.commit().map_err(StoreError::from));
        if result.is_err() {
            // Sequence numbers learned in a rolled-back transaction may not exist.
            seqs.clear();
        }
        result
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let guard = self.lock();
        let conn = &guard.conn;
        let mut snap = Snapshot::default();
        let mut st = conn.prepare("SELECT body FROM states_machines")?;
        for row in st.query_map([], |r| r.get::<_, String>(0))? {
            snap.state_machines.push(from_json(&row?)?);
        }
        let mut st = conn.prepare("SELECT body FROM states_executions")?;
        for row in st.query_map([], |r| r.get::<_, String>(0))? {
            snap.executions.push(from_json(&row?)?);
        }
        for (table, out) in [
            ("states_threads", &mut snap.threads),
            ("states_blobs", &mut snap.blobs),
        ] {
            let mut st = conn.prepare(&format!(
                "SELECT e.arn, t.id, t.body FROM {table} t JOIN states_executions e ON e.seq = t.execution"
            ))?;
            for row in st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, String>(2)?,
                ))
            })? {
                out.push(row?);
            }
        }
        let mut st = conn.prepare(
            "SELECT e.arn, r.thread, r.body FROM states_results r
             JOIN states_executions e ON e.seq = r.execution ORDER BY r.execution, r.thread, r.chunk",
        )?;
        for row in st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, String>(2)?,
            ))
        })? {
            snap.results.push(row?);
        }
        Ok(snap)
    }

    fn events(&self, execution_arn: &str) -> Result<Vec<(u64, String)>, StoreError> {
        let guard = self.lock();
        let mut st = guard.conn.prepare_cached(
            "SELECT v.id, v.body FROM states_events v JOIN states_executions e ON e.seq = v.execution
             WHERE e.arn = ?1 ORDER BY v.id",
        )?;
        let rows = st.query_map([execution_arn], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?;
        rows.map(|r| r.map_err(StoreError::from)).collect()
    }
}

impl SqliteStore {
    /// The stored status of one execution, read straight from disk (used by restart tests).
    pub fn stored_status(&self, execution_arn: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .conn
            .query_row(
                "SELECT status FROM states_executions WHERE arn = ?1",
                [execution_arn],
                |r| r.get(0),
            )
            .optional()?)
    }
}
