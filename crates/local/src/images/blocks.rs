//! The content-addressed block files: `blocks/<first two hex digits>/<64 hex digits>`, each
//! holding one 512 KiB block (shorter for the last block of a disk whose size is not a multiple),
//! named by the BLAKE3 of its bytes.
//!
//! Which blocks exist is decided by the database; the files only hold bytes. Two rules keep
//! files and database consistent across crashes and concurrent tasks:
//!
//! * A block is written to `tmp/`, fsynced, renamed into place, and its directory fsynced before
//!   any snapshot referencing it is committed, so a committed snapshot never points at a torn or
//!   missing file. A crash before the commit leaves only unreferenced files, which [`gc`] sweeps.
//! * A task *pins* each digest before it checks whether the file exists, and unpins it after its
//!   snapshot is committed (or it gave up). Freeing (after a delete commits) and sweeping skip
//!   pinned digests, under the same lock, so a task never relies on a file that is being
//!   removed because the last snapshot that used it was just deleted.
//!
//! [`gc`]: super::LocalImages::gc

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tern_core::images::ImagesError;
use tern_disk::blockmap::Digest32;

fn io_error(path: &Path, e: std::io::Error) -> ImagesError {
    ImagesError::internal_from(format!("block store I/O error on {}", path.display()), e)
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> ImagesError + '_ {
    move |e| io_error(path, e)
}

pub(crate) fn digest(data: &[u8]) -> Digest32 {
    *blake3::hash(data).as_bytes()
}

pub(crate) struct BlockStore {
    dir: PathBuf,
    tmp: PathBuf,
    pins: Mutex<HashMap<Digest32, usize>>,
    counter: AtomicU64,
}

impl BlockStore {
    /// `root` is `<data_dir>/images`. Leftover temporary files are removed: they belong to
    /// writes that never reached their rename, and no task runs yet to be racing with us.
    pub(crate) fn open(root: &Path, clean_tmp: bool) -> std::io::Result<Self> {
        let dir = root.join("blocks");
        let tmp = root.join("tmp");
        if clean_tmp {
            std::fs::create_dir_all(&dir)?;
            std::fs::create_dir_all(&tmp)?;
            for entry in std::fs::read_dir(&tmp)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(BlockStore {
            dir,
            tmp,
            pins: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn fanout(&self, d: &Digest32) -> PathBuf {
        self.dir.join(hex::encode(&d[..1]))
    }

    pub(crate) fn path(&self, d: &Digest32) -> PathBuf {
        self.fanout(d).join(hex::encode(d))
    }

    fn lock_pins(&self) -> MutexGuard<'_, HashMap<Digest32, usize>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `d` for a task and says whether its file already exists.
    pub(crate) fn pin(&self, d: &Digest32) -> bool {
        let mut pins = self.lock_pins();
        *pins.entry(*d).or_default() += 1;
        self.path(d).is_file()
    }

    pub(crate) fn unpin_all<'a>(&self, ds: impl IntoIterator<Item = &'a Digest32>) {
        let mut pins = self.lock_pins();
        for d in ds {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }

    /// Writes one block durably; returns its directory, which the caller fsyncs (once per
    /// directory, see [`BlockStore::sync_dirs`]) before committing a reference to it.
    pub(crate) fn write(&self, d: &Digest32, data: &[u8]) -> std::io::Result<PathBuf> {
        let name = format!(
            "{}.{}.{}",
            hex::encode(d),
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = self.tmp.join(name);
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            let fanout = self.fanout(d);
            std::fs::create_dir_all(&fanout)?;
            std::fs::rename(&tmp, self.path(d))?;
            Ok(fanout)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Makes the renames into `dirs` (and the creation of new fan-out directories) durable.
    pub(crate) fn sync_dirs(&self, dirs: &HashSet<PathBuf>) -> std::io::Result<()> {
        for d in dirs
            .iter()
            .map(PathBuf::as_path)
            .chain([self.dir.as_path()])
        {
            File::open(d)?.sync_all()?;
        }
        Ok(())
    }

    /// Removes the files of `freed` blocks that no task pins and that `unreferenced` (asked under
    /// the pin lock) confirms the database still does not reference: a task may have committed
    /// a new reference to one of them between the delete's commit and this call.
    pub(crate) fn remove_freed(
        &self,
        freed: &[Digest32],
        unreferenced: impl FnOnce(&[Digest32]) -> Result<HashSet<Digest32>, ImagesError>,
    ) -> Result<u64, ImagesError> {
        let pins = self.lock_pins();
        let candidates: Vec<Digest32> = freed
            .iter()
            .filter(|d| !pins.contains_key(*d))
            .copied()
            .collect();
        let mut removed = 0;
        for d in unreferenced(&candidates)? {
            match std::fs::remove_file(self.path(&d)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&self.path(&d), e)),
            }
        }
        Ok(removed)
    }

    /// Removes every block file that `load_referenced` (the digests the database references)
    /// does not list and no task pins. The pin lock is held while the database is read: a task
    /// unpins only after its commit, so every block is either in the loaded set or still pinned.
    pub(crate) fn sweep(
        &self,
        load_referenced: impl FnOnce() -> Result<HashSet<Digest32>, ImagesError>,
    ) -> Result<u64, ImagesError> {
        let pins = self.lock_pins();
        let referenced = load_referenced()?;
        let mut removed = 0;
        for fan in std::fs::read_dir(&self.dir).map_err(err(&self.dir))? {
            let fan = fan.map_err(err(&self.dir))?;
            let fan_path = fan.path();
            if !fan.file_type().map_err(err(&fan_path))?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&fan_path).map_err(err(&fan_path))? {
                let entry = entry.map_err(err(&fan_path))?;
                let name = entry.file_name();
                let keep = name
                    .to_str()
                    .and_then(|n| hex::decode(n).ok())
                    .and_then(|v| Digest32::try_from(v).ok())
                    .is_some_and(|d| referenced.contains(&d) || pins.contains_key(&d));
                if !keep {
                    std::fs::remove_file(entry.path()).map_err(err(&entry.path()))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
