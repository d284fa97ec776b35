//! The embedded [`Store`]: one SQLite file (rusqlite, bundled SQLite), the default for
//! `tern serve`.
//!
//! # Layout
//!
//! One table, shared with nothing else in the file (the States engine keeps its own `states_*`
//! tables in the same database):
//!
//! ```sql
//! CREATE TABLE tern_items (
//!     pk      TEXT    NOT NULL,
//!     sk      TEXT    NOT NULL,
//!     version INTEGER NOT NULL,   -- 1 on creation, +1 per write
//!     body    TEXT    NOT NULL,   -- the item's JSON, as text so `sqlite3` can read it
//!     PRIMARY KEY (pk, sk)
//! ) WITHOUT ROWID;
//! ```
//!
//! `WITHOUT ROWID` clusters the rows by `(pk, sk)`, so a partition listing is one range scan of
//! the table itself. SQLite's default `BINARY` collation compares text with `memcmp` over UTF-8,
//! which is the order DynamoDB gives string sort keys, so both adapters list in the same order.
//!
//! # Consistency
//!
//! The database runs in WAL mode. Every `transact` runs inside one `BEGIN IMMEDIATE` transaction,
//! in a savepoint of its own when concurrent calls are committed together (group commit, see
//! `transact`): the transaction takes
//! SQLite's write lock before it reads the versions its conditions need, so the check and the
//! writes are atomic even against other connections to the same file (another process, or the
//! States engine). Reads see every transaction committed before they start (WAL readers never
//! read a partial transaction). `synchronous = NORMAL` in WAL mode keeps the database consistent
//! after a crash; a power loss may drop the last few committed transactions, an accepted trade
//! for a local control plane: a commit then needs no `fsync`, only the periodic checkpoint does.
//!
//! # Threads
//!
//! SQLite calls block (on disk I/O, and for up to [`BUSY_TIMEOUT`] when another connection holds
//! the write lock), so every call runs on tokio's blocking pool via `spawn_blocking`, never on an
//! async worker. Connections live in two small pools, each guarded by an async semaphore that a
//! call acquires *before* it takes a blocking thread: waiting callers queue as cheap futures, not
//! as parked threads, and no connection is opened and closed per call.
//!
//! * Writes share one connection: SQLite admits one writer at a time anyway, and queueing in
//!   process is cheaper and fairer than SQLite's busy-wait.
//! * Reads use up to [`READERS`] read-only connections, so gets and listings run in parallel
//!   with each other and with a write being committed (WAL lets readers proceed meanwhile).
//! * Point reads (`get`, `get_raw`) are the exception to the blocking pool: when a reader
//!   connection is free they run right on the calling task with a zero busy timeout, since a
//!   WAL reader never waits for the writer and one lookup costs less than the two thread
//!   switches of `spawn_blocking`; only if SQLite reports the database busy (another process
//!   recovering or truncating the WAL) does the read go to the blocking pool with the full
//!   [`BUSY_TIMEOUT`]. Listings, which may read a thousand rows, always use the pool.
//!
//! Bodies are handed out as stored text through `get_raw`/`query_raw`, so the domain parses
//! them straight into its types; `get`/`query` parse them into `serde_json::Value` trees.
//!
//! An in-memory store (tests) has a single connection for both: a private in-memory database
//! cannot be opened twice.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::channel::oneshot;
use futures::future::Either;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tern_core::store::validate::{self, Checked};
use tern_core::store::{Body, Expect, Item, Key, Page, RawItem, RawPage, Store, StoreError, Write};
use tokio::sync::Semaphore;

/// How long a write waits for another connection's write lock before giving up as `Throttled`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read-only connections per file: more than the cores that run them, so a read waiting on the
/// disk does not stall the others, and few enough to keep memory (page cache per connection) small.
pub const READERS: usize = 4;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tern_items (
    pk      TEXT    NOT NULL,
    sk      TEXT    NOT NULL,
    version INTEGER NOT NULL,
    body    TEXT    NOT NULL,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID";

const GET: &str = "SELECT version, body FROM tern_items WHERE pk = ?1 AND sk = ?2";
const VERSION: &str = "SELECT version FROM tern_items WHERE pk = ?1 AND sk = ?2";
const UPSERT: &str = "INSERT INTO tern_items (pk, sk, version, body) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (pk, sk) DO UPDATE SET version = excluded.version, body = excluded.body";
const DELETE: &str = "DELETE FROM tern_items WHERE pk = ?1 AND sk = ?2";
// Listings: `pk` and a range of `sk`, so SQLite walks the primary key from the first row of the
// answer and stops after it. The lower bound is either the prefix (inclusive) or `after`
// (exclusive), whichever is greater, because SQLite uses only one lower bound per index range;
// the upper bound is the end of the prefix range (none for an empty prefix).
const QUERY_FROM_PREFIX: &str = "SELECT sk, version, body FROM tern_items
    WHERE pk = ?1 AND sk >= ?2 ORDER BY sk LIMIT ?3";
const QUERY_FROM_PREFIX_TO: &str = "SELECT sk, version, body FROM tern_items
    WHERE pk = ?1 AND sk >= ?2 AND sk < ?4 ORDER BY sk LIMIT ?3";
const QUERY_AFTER: &str = "SELECT sk, version, body FROM tern_items
    WHERE pk = ?1 AND sk > ?2 ORDER BY sk LIMIT ?3";
const QUERY_AFTER_TO: &str = "SELECT sk, version, body FROM tern_items
    WHERE pk = ?1 AND sk > ?2 AND sk < ?4 ORDER BY sk LIMIT ?3";

/// The SQLite store. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the file is; `None` for an in-memory database.
    path: Option<PathBuf>,
    writer: Arc<Pool>,
    /// The writer pool again for an in-memory database.
    readers: Arc<Pool>,
    /// Transactions waiting for the writer (see [`SqliteStore::transact`]).
    queued: Arc<Mutex<Vec<Queued>>>,
}

/// A validated transaction waiting to be committed, and where its outcome goes.
struct Queued {
    writes: Vec<Checked>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Most transactions committed together as one SQLite transaction.
const GROUP_COMMIT_MAX: usize = 256;

/// A fixed number of connections; a semaphore permit entitles its holder to one of them.
struct Pool {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Connection>>,
    /// Opens another connection when all idle ones are taken and a permit is still free;
    /// `None` when the pool was filled up front.
    open: Option<Box<dyn Fn() -> Result<Connection, StoreError> + Send + Sync>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and its `tern_items` table.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let writer = Connection::open(path)
            .map_err(|e| unavailable(format!("cannot open {}", path.display()), e))?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| sql_error("enable WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable {
                message: format!(
                    "{} does not support WAL mode (journal_mode is {mode})",
                    path.display()
                ),
                source: None,
            });
        }
        writer
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| sql_error("set synchronous", e))?;
        let writer = Self::prepare(writer)?;
        let reader_path = path.to_path_buf();
        let readers = Pool {
            permits: Arc::new(Semaphore::new(READERS)),
            idle: Mutex::new(Vec::new()),
            open: Some(Box::new(move || open_reader(&reader_path))),
        };
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: Some(path.to_path_buf()),
                writer,
                readers: Arc::new(readers),
                queued: Arc::default(),
            }),
        })
    }

    /// A private in-memory database, for tests. It disappears with the store.
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn =
            Connection::open_in_memory().map_err(|e| sql_error("open in-memory database", e))?;
        let writer = Self::prepare(conn)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: None,
                readers: writer.clone(),
                writer,
                queued: Arc::default(),
            }),
        })
    }

    fn prepare(writer: Connection) -> Result<Arc<Pool>, StoreError> {
        writer
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_error("set busy timeout", e))?;
        writer
            .execute(SCHEMA, [])
            .map_err(|e| sql_error("create table tern_items", e))?;
        Ok(Arc::new(Pool {
            permits: Arc::new(Semaphore::new(1)),
            idle: Mutex::new(vec![writer]),
            open: None,
        }))
    }
}

impl Pool {
    /// Waits (asynchronously) for a connection, then runs `f` with it on a blocking thread.
    async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit =
            self.permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| StoreError::Unavailable {
                    message: "SQLite connection pool closed".into(),
                    source: Some(Box::new(e)),
                })?;
        let pool = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            // The permit is released only when the blocking work is over, even if the caller
            // stopped waiting for it.
            let _permit = permit;
            let conn = match lock(&pool.idle).pop() {
                Some(conn) => conn,
                None => match &pool.open {
                    Some(open) => open()?,
                    None => {
                        return Err(StoreError::Unavailable {
                            message: "the SQLite connection was lost".into(),
                            source: None,
                        })
                    }
                },
            };
            let mut lease = Lease {
                conn: Some(conn),
                pool: &pool,
            };
            f(lease.conn.as_mut().expect("leased connection"))
        });
        task.await.map_err(|e| StoreError::Unavailable {
            message: "SQLite task did not complete".into(),
            source: Some(Box::new(e)),
        })?
    }
}

impl Pool {
    /// Runs a point read right here on the caller's thread when an open connection is free and
    /// SQLite can answer without waiting for a lock; otherwise as [`Pool::run`].
    ///
    /// A point read in WAL mode never waits for the writer and finds its few pages in SQLite's
    /// or the operating system's cache, so it takes microseconds, less than handing it to a
    /// blocking thread and back: in CreateReplicationJob (three reads) those thread switches
    /// were a third of the request's time. Listings stay on the blocking pool. The read
    /// runs with a zero busy timeout, so it can never stall an async worker on a lock; in the
    /// rare case it would have to wait (another process recovering or truncating the WAL), it is
    /// run again on the blocking pool with the full [`BUSY_TIMEOUT`].
    async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            let idle = lock(&self.idle).pop();
            if let Some(conn) = idle {
                let mut lease = Lease {
                    conn: Some(conn),
                    pool: self,
                };
                let conn = lease.conn.as_mut().expect("leased connection");
                let outcome = conn
                    .busy_timeout(Duration::ZERO)
                    .map_err(|e| sql_error("set busy timeout", e))
                    .and_then(|()| f(conn));
                conn.busy_timeout(BUSY_TIMEOUT)
                    .map_err(|e| sql_error("set busy timeout", e))?;
                match outcome {
                    Err(StoreError::Throttled(_)) => {}
                    done => return done,
                }
            }
            drop(permit);
        }
        self.run(f).await
    }
}

/// Gives the connection back to its pool when the call is over, also when it panicked (rusqlite
/// rolls back an open transaction while unwinding, so the connection is clean).
struct Lease<'a> {
    conn: Option<Connection>,
    pool: &'a Pool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            lock(&self.pool.idle).push(conn);
        }
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| unavailable(format!("cannot open {} for reading", path.display()), e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sql_error("set busy timeout", e))?;
    Ok(conn)
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.get_raw(key).await?.map(parsed).transpose()
    }

    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let page = self.query_raw(pk, sk_prefix, after, limit).await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(parsed)
                .collect::<Result<_, _>>()?,
            last_sk: page.last_sk,
        })
    }

    /// The body is handed out as the stored text: the domain parses it straight into its types.
    async fn get_raw(&self, key: &Key) -> Result<Option<RawItem>, StoreError> {
        validate::check_key(key)?;
        let key = key.clone();
        self.inner
            .readers
            .read(move |conn| {
                let row = conn
                    .prepare_cached(GET)
                    .and_then(|mut stmt| {
                        stmt.query_row(params![key.pk, key.sk], |row| {
                            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                        })
                        .optional()
                    })
                    .map_err(|e| sql_error("get", e))?;
                row.map(|(version, body)| to_item(key.clone(), version, body))
                    .transpose()
            })
            .await
    }

    async fn query_raw(
        &self,
        pk: &str,
        sk_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        validate::check_query(pk, sk_prefix, after, limit)?;
        // One more row than asked tells whether another page follows.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let upper = prefix_end(sk_prefix);
        let (sql, lower) = match (after, &upper) {
            (Some(after), None) if after >= sk_prefix => (QUERY_AFTER, after),
            (Some(after), Some(_)) if after >= sk_prefix => (QUERY_AFTER_TO, after),
            (_, None) => (QUERY_FROM_PREFIX, sk_prefix),
            (_, Some(_)) => (QUERY_FROM_PREFIX_TO, sk_prefix),
        };
        let (pk, lower) = (pk.to_owned(), lower.to_owned());
        // A page (up to a thousand rows) is too much work to do on an async worker: unlike a
        // point read (see `Pool::read`), it goes to the blocking pool.
        self.inner
            .readers
            .run(move |conn| {
                let mut rows = Vec::with_capacity(limit.min(1024) + 1);
                conn.prepare_cached(sql)
                    .and_then(|mut stmt| {
                        let mut it = match &upper {
                            Some(upper) => stmt.query(params![pk, lower, fetch, upper])?,
                            None => stmt.query(params![pk, lower, fetch])?,
                        };
                        while let Some(row) = it.next()? {
                            rows.push((
                                row.get::<_, String>(0)?,
                                row.get::<_, i64>(1)?,
                                row.get::<_, String>(2)?,
                            ));
                        }
                        Ok(())
                    })
                    .map_err(|e| sql_error("query", e))?;

                let more = rows.len() > limit;
                rows.truncate(limit);
                let items = rows
                    .into_iter()
                    .map(|(sk, version, body)| to_item(Key { pk: pk.clone(), sk }, version, body))
                    .collect::<Result<Vec<_>, _>>()?;
                let last_sk = if more {
                    items.last().map(|i| i.key.sk.clone())
                } else {
                    None
                };
                Ok(RawPage { items, last_sk })
            })
            .await
    }

    /// Group commit: concurrent transactions are queued, and whichever caller gets the writer
    /// commits everything queued as one SQLite transaction, each caller's writes inside a
    /// savepoint of their own. A caller whose conditions fail is rolled back to its savepoint
    /// alone; the others commit. N concurrent writers cost one `BEGIN`/`COMMIT` (one WAL append
    /// and lock hand-over) instead of N. A caller answered by another's commit never takes the
    /// writer at all.
    async fn transact(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        // Validate and serialise before queueing: nothing slow happens while holding the writer.
        let writes = validate::check_transaction(writes)?;
        if writes.is_empty() {
            return Ok(());
        }
        let (reply, mut answer) = oneshot::channel();
        lock(&self.inner.queued).push(Queued { writes, reply });
        loop {
            let queued = self.inner.queued.clone();
            let commit = self.inner.writer.run(move |conn| {
                let batch: Vec<Queued> = {
                    let mut q = lock(&queued);
                    let n = q.len().min(GROUP_COMMIT_MAX);
                    q.drain(..n).collect()
                };
                commit_batch(conn, batch);
                Ok(())
            });
            futures::pin_mut!(commit);
            match futures::future::select(&mut answer, commit).await {
                Either::Left((answered, _)) => {
                    return answered.unwrap_or_else(|_| Err(writer_gone()));
                }
                Either::Right((ran, _)) => {
                    ran?;
                    // The batch this holder committed held ours unless more were queued than
                    // one batch takes; then take the writer again.
                    match answer.try_recv() {
                        Ok(Some(result)) => return result,
                        Ok(None) => {}
                        Err(_) => return Err(writer_gone()),
                    }
                }
            }
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable {
        message: "the SQLite writer stopped before committing the transaction".into(),
        source: None,
    }
}

/// Commits `batch` as one transaction, each entry in its own savepoint, and answers each.
fn commit_batch(conn: &mut Connection, mut batch: Vec<Queued>) {
    // A transaction whose caller went away is not made behind its back.
    batch.retain(|q| !q.reply.is_canceled());
    if batch.is_empty() {
        return;
    }
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = sql_error("begin transaction", e);
            for q in batch {
                let _ = q.reply.send(Err(copy(&e)));
            }
            return;
        }
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for q in &batch {
        let outcome = match tx.savepoint() {
            Ok(mut sp) => {
                let applied = q
                    .writes
                    .iter()
                    .enumerate()
                    .try_for_each(|(index, write)| apply(&sp, index, write));
                match applied {
                    Ok(()) => sp.commit().map_err(|e| sql_error("release savepoint", e)),
                    Err(e) => {
                        // Dropping the savepoint rolls back this caller's writes alone.
                        sp.set_drop_behavior(rusqlite::DropBehavior::Rollback);
                        Err(e)
                    }
                }
            }
            Err(e) => Err(sql_error("savepoint", e)),
        };
        outcomes.push(outcome);
    }
    let committed = tx.commit().map_err(|e| sql_error("commit", e));
    for (q, outcome) in batch.into_iter().zip(outcomes) {
        let result = match (&committed, outcome) {
            (Ok(()), outcome) => outcome,
            // Nothing of the batch is stored; a caller refused anyway keeps its own error.
            (Err(_), Err(own)) => Err(own),
            (Err(e), Ok(())) => Err(copy(e)),
        };
        let _ = q.reply.send(result);
    }
}

/// A copy of a store error for each caller of a batch (the source chain stays with the one
/// logged).
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::ConditionFailed { key, index } => StoreError::ConditionFailed {
            key: key.clone(),
            index: *index,
        },
        StoreError::Throttled(m) => StoreError::Throttled(m.clone()),
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
        StoreError::TooLarge { key, bytes, limit } => StoreError::TooLarge {
            key: key.clone(),
            bytes: *bytes,
            limit: *limit,
        },
        StoreError::Unavailable { message, .. } => StoreError::Unavailable {
            message: message.clone(),
            source: None,
        },
    }
}

/// Checks one write's condition inside the open transaction and applies it.
fn apply(tx: &Connection, index: usize, write: &Checked) -> Result<(), StoreError> {
    let key = write.key();
    let failed = || StoreError::ConditionFailed {
        key: key.clone(),
        index: Some(index),
    };
    if let Checked::Add { delta, at_most, .. } = write {
        let current: Option<(i64, String)> = tx
            .prepare_cached(GET)
            .and_then(|mut stmt| {
                stmt.query_row(params![key.pk, key.sk], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
            })
            .map_err(|e| sql_error("read counter", e))?;
        let body = match &current {
            Some((_, text)) => Some(serde_json::from_str::<serde_json::Value>(text).map_err(
                |e| StoreError::Unavailable {
                    message: format!("counter {key:?} holds a body that is not JSON"),
                    source: Some(Box::new(e)),
                },
            )?),
            None => None,
        };
        let count = tern_core::store::added(body.as_ref(), *delta, *at_most).ok_or_else(failed)?;
        let version = current.map_or(0, |(v, _)| v) + 1;
        let body = serde_json::json!({ tern_core::store::COUNT: count }).to_string();
        tx.prepare_cached(UPSERT)
            .and_then(|mut stmt| stmt.execute(params![key.pk, key.sk, version, body]))
            .map_err(|e| sql_error("add", e))?;
        return Ok(());
    }
    let current: Option<i64> = tx
        .prepare_cached(VERSION)
        .and_then(|mut stmt| {
            stmt.query_row(params![key.pk, key.sk], |row| row.get(0))
                .optional()
        })
        .map_err(|e| sql_error("read version", e))?;
    let holds = match (write.expect(), current) {
        (Expect::Any, _) | (Expect::Absent, None) => true,
        (Expect::Version(want), Some(have)) => u64::try_from(have).is_ok_and(|have| have == want),
        (Expect::Absent, Some(_)) | (Expect::Version(_), None) => false,
    };
    if !holds {
        return Err(failed());
    }
    match write {
        Checked::Put { body, .. } => {
            let version = current.unwrap_or(0) + 1;
            tx.prepare_cached(UPSERT)
                .and_then(|mut stmt| stmt.execute(params![key.pk, key.sk, version, body]))
                .map_err(|e| sql_error("put", e))?;
        }
        Checked::Delete { .. } => {
            if current.is_some() {
                tx.prepare_cached(DELETE)
                    .and_then(|mut stmt| stmt.execute(params![key.pk, key.sk]))
                    .map_err(|e| sql_error("delete", e))?;
            }
        }
        Checked::Check { .. } | Checked::Add { .. } => {}
    }
    Ok(())
}

/// The smallest string greater than every string that starts with `prefix`, or `None` when
/// there is no such bound (empty prefix, or only `char::MAX`). UTF-8 byte order equals code
/// point order, so bumping the last code point that can be bumped gives the bound.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 {
            0xD7FF => Some('\u{E000}'), // skip the surrogate range, which has no chars
            n => char::from_u32(n + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn to_item(key: Key, version: i64, body: String) -> Result<RawItem, StoreError> {
    let version = u64::try_from(version).map_err(|_| StoreError::Unavailable {
        message: format!("item {key:?} has a negative version {version}"),
        source: None,
    })?;
    Ok(RawItem {
        key,
        version,
        body: Body::Text(body),
    })
}

/// A raw item with its body parsed into a JSON tree (`get` and `query`).
fn parsed(item: RawItem) -> Result<Item, StoreError> {
    let RawItem { key, version, body } = item;
    let body = body.into_value().map_err(|e| StoreError::Unavailable {
        message: format!("item {key:?} holds a body that is not JSON"),
        source: Some(Box::new(e)),
    })?;
    Ok(Item { key, version, body })
}

/// The pools' mutexes are held only to push or pop a connection, which cannot leave the list
/// half-changed, so a poisoned lock is safe to keep using.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sql_error(what: &str, error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    match error.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked) => StoreError::Throttled(format!(
            "{what}: the database stayed locked by another connection for {BUSY_TIMEOUT:?}"
        )),
        // The cause in the message too: a batch's callers get copies without the source chain,
        // and the log must still say what went wrong ("database or disk is full").
        _ => {
            let message = format!("SQLite {what} failed: {error}");
            unavailable(message, error)
        }
    }
}

fn unavailable(message: String, error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable {
        message,
        source: Some(Box::new(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_reads_hand_out_the_stored_text_and_agree_with_parsed_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let body = serde_json::json!({"name": "a \"quoted\" é", "n": [1, 2.5, null]});
        for sk in ["a", "b"] {
            store
                .write(Write::Put {
                    key: Key::new("P", sk),
                    body: body.clone(),
                    expect: Expect::Absent,
                })
                .await
                .unwrap();
        }
        let key = Key::new("P", "a");
        // Twice: the first read opens a connection on the blocking pool, the second runs inline.
        for _ in 0..2 {
            let raw = store.get_raw(&key).await.unwrap().unwrap();
            assert!(
                matches!(&raw.body, Body::Text(t) if t == &serde_json::to_string(&body).unwrap())
            );
            let parsed = store.get(&key).await.unwrap().unwrap();
            assert_eq!(
                (raw.version, raw.body.into_value().unwrap()),
                (parsed.version, parsed.body)
            );
        }
        assert!(store.get_raw(&Key::new("P", "zz")).await.unwrap().is_none());
        let page = store.query_raw("P", "", None, 1).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.last_sk.as_deref(), Some("a"));
        let rest = store.query_raw("P", "", Some("a"), 5).await.unwrap();
        assert_eq!(rest.items[0].key.sk, "b");
        assert_eq!(rest.last_sk, None);
        assert_eq!(rest.items[0].body.clone().into_value().unwrap(), body);
    }

    #[test]
    fn prefix_end_bounds_exactly_the_strings_with_the_prefix() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("job#").as_deref(), Some("job$"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}\u{10FFFF}"), None);
        for (prefix, inside, outside) in [
            ("job#", "job#\u{10FFFF}x", "job$"),
            ("é", "éz", "ê"),
            ("a\u{10FFFF}", "a\u{10FFFF}\u{10FFFF}", "b"),
        ] {
            let end = prefix_end(prefix).unwrap();
            assert!(
                inside.starts_with(prefix) && inside < end.as_str(),
                "{inside:?} < {end:?}"
            );
            assert!(outside >= end.as_str(), "{outside:?} >= {end:?}");
        }
    }
}
