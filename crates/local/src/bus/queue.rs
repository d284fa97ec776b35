//! The durable delivery queue: one row per (event, rule, target) not yet delivered or
//! dead-lettered, in a SQLite file beside the data (`bus.db` by default).
//!
//! A publish batch is recorded in one transaction before the bus reports the entries accepted,
//! so whoever handed the events over (the store's outbox) only forgets them once every
//! delivery they owe survives a crash. The primary key makes recording idempotent: the same
//! event published twice while its deliveries are pending is queued once per target.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

/// Deliveries the worker takes per scan; more are taken as these finish.
const SCAN_LIMIT: usize = 256;

#[derive(Debug, thiserror::Error)]
#[error("delivery queue {}: {what}: {source}", path.display())]
pub struct QueueError {
    pub path: PathBuf,
    what: &'static str,
    #[source]
    source: rusqlite::Error,
}

/// Which delivery a row is: the event and the rule target it goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub event_id: String,
    pub rule: String,
    /// 1-based position of the target in its rule.
    pub target: usize,
}

/// A delivery due for an attempt.
#[derive(Debug, Clone)]
pub(super) struct Due {
    pub key: Key,
    /// The serialized event, exactly as accepted.
    pub event: String,
    /// Attempts already made (before this one), across restarts.
    pub attempts: u32,
}

/// One delivery to record at publish.
pub(super) struct NewDelivery<'a> {
    pub key: Key,
    pub event: &'a str,
}

#[derive(Clone)]
pub(super) struct Queue {
    path: Arc<PathBuf>,
    conn: Arc<Mutex<Connection>>,
}

impl Queue {
    pub(super) fn open(path: &Path) -> Result<Self, QueueError> {
        let fail = |what| {
            move |source| QueueError {
                path: path.to_owned(),
                what,
                source,
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // A missing directory surfaces as SQLite's "unable to open" below, with the path.
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(fail("open"))?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
            .map_err(fail("enable WAL"))?;
        // NORMAL in WAL mode survives a crash of the process, which is what the outbox hands
        // its rows over against; FULL would add an fsync per publish for power loss only.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(fail("set synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail("set busy timeout"))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS deliveries (
                event_id     TEXT    NOT NULL,
                rule         TEXT    NOT NULL,
                target_index INTEGER NOT NULL,
                event        TEXT    NOT NULL,
                attempts     INTEGER NOT NULL DEFAULT 0,
                next_attempt INTEGER NOT NULL,
                last_error   TEXT,
                PRIMARY KEY (event_id, rule, target_index)
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt);",
        )
        .map_err(fail("create the deliveries table"))?;
        Ok(Self {
            path: Arc::new(path.to_owned()),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> QueueError + '_ {
        move |source| QueueError {
            path: self.path.to_path_buf(),
            what,
            source,
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-applied (SQLite rolls
        // an unfinished one back), so the connection is still good.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the deliveries of one publish batch, due at `now_ms`, in one transaction.
    /// Returns the rows now queued in total.
    pub(super) fn record(
        &self,
        deliveries: &[NewDelivery<'_>],
        now_ms: i64,
    ) -> Result<usize, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.fail("begin"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO deliveries
                        (event_id, rule, target_index, event, attempts, next_attempt)
                     VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                )
                .map_err(self.fail("prepare the insert"))?;
            for d in deliveries {
                insert
                    .execute(params![
                        d.key.event_id,
                        d.key.rule,
                        d.key.target as i64,
                        d.event,
                        now_ms
                    ])
                    .map_err(self.fail("record a delivery"))?;
            }
        }
        let count = count(&tx).map_err(self.fail("count"))?;
        tx.commit().map_err(self.fail("commit"))?;
        Ok(count)
    }

    /// Deliveries due at `now_ms`, soonest first, at most `SCAN_LIMIT` past the `skip` ones.
    pub(super) fn due(
        &self,
        now_ms: i64,
        skip: &dyn Fn(&Key) -> bool,
    ) -> Result<Vec<Due>, QueueError> {
        let conn = self.conn();
        let mut select = conn
            .prepare_cached(
                "SELECT event_id, rule, target_index, event, attempts FROM deliveries
                 WHERE next_attempt <= ?1 ORDER BY next_attempt",
            )
            .map_err(self.fail("prepare the scan"))?;
        let rows = select
            .query_map(params![now_ms], |row| {
                Ok(Due {
                    key: Key {
                        event_id: row.get(0)?,
                        rule: row.get(1)?,
                        target: row.get::<_, i64>(2)? as usize,
                    },
                    event: row.get(3)?,
                    attempts: row.get::<_, i64>(4)? as u32,
                })
            })
            .map_err(self.fail("scan"))?;
        let mut due = Vec::new();
        for row in rows {
            let row = row.map_err(self.fail("read a delivery"))?;
            if !skip(&row.key) {
                due.push(row);
                if due.len() == SCAN_LIMIT {
                    break;
                }
            }
        }
        Ok(due)
    }

    /// The earliest next-attempt time of a delivery not skipped, if any.
    pub(super) fn next_due(&self, skip: &dyn Fn(&Key) -> bool) -> Result<Option<i64>, QueueError> {
        let conn = self.conn();
        let mut select = conn
            .prepare_cached(
                "SELECT event_id, rule, target_index, next_attempt FROM deliveries
                 ORDER BY next_attempt",
            )
            .map_err(self.fail("prepare the scan"))?;
        let mut rows = select.query([]).map_err(self.fail("scan"))?;
        while let Some(row) = rows.next().map_err(self.fail("scan"))? {
            let key = Key {
                event_id: row.get(0).map_err(self.fail("read a delivery"))?,
                rule: row.get(1).map_err(self.fail("read a delivery"))?,
                target: row.get::<_, i64>(2).map_err(self.fail("read a delivery"))? as usize,
            };
            if !skip(&key) {
                return row.get(3).map(Some).map_err(self.fail("read a delivery"));
            }
        }
        Ok(None)
    }

    /// A failed attempt: counts it and sets when to try again. Returns the rows queued.
    pub(super) fn retry_at(
        &self,
        key: &Key,
        attempts: u32,
        next_ms: i64,
        error: &str,
    ) -> Result<usize, QueueError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE deliveries SET attempts = ?4, next_attempt = ?5, last_error = ?6
             WHERE event_id = ?1 AND rule = ?2 AND target_index = ?3",
            params![
                key.event_id,
                key.rule,
                key.target as i64,
                attempts,
                next_ms,
                error
            ],
        )
        .map_err(self.fail("reschedule a delivery"))?;
        count(&conn).map_err(self.fail("count"))
    }

    /// Delivered or dead-lettered. Returns the rows queued.
    pub(super) fn remove(&self, key: &Key) -> Result<usize, QueueError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM deliveries WHERE event_id = ?1 AND rule = ?2 AND target_index = ?3",
            params![key.event_id, key.rule, key.target as i64],
        )
        .map_err(self.fail("remove a delivery"))?;
        count(&conn).map_err(self.fail("count"))
    }

    pub(super) fn len(&self) -> Result<usize, QueueError> {
        count(&self.conn()).map_err(self.fail("count"))
    }

    /// The attempts recorded for one delivery; `None` once it left the queue.
    pub(super) fn attempts(&self, key: &Key) -> Result<Option<u32>, QueueError> {
        self.conn()
            .query_row(
                "SELECT attempts FROM deliveries
                 WHERE event_id = ?1 AND rule = ?2 AND target_index = ?3",
                params![key.event_id, key.rule, key.target as i64],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|n| n.map(|n| n as u32))
            .map_err(self.fail("read a delivery"))
    }
}

fn count(conn: &Connection) -> rusqlite::Result<usize> {
    conn.query_row("SELECT COUNT(*) FROM deliveries", [], |row| {
        row.get::<_, i64>(0)
    })
    .map(|n| n as usize)
}
