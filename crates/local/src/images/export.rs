//! Reading snapshots back: a [`VirtualDisk`] over a snapshot's blocks, so that every writer of
//! `tern_disk::write` exports it, and [`ImageCatalog`], a read-only view of a data directory for
//! tools (`tern images`) that must not start or resume tasks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;
use tern_core::images::{Image, ImagesError, Snapshot};
use tern_disk::blockmap::BLOCK_SIZE;
use tern_disk::{DiskError, Extent, Format, VirtualDisk};

use super::blocks::digest;
use super::db::{self, db_err, StoredBlock};

/// A snapshot seen as a disk: stored blocks read from their files (each checked against its
/// digest, so a damaged block store is reported instead of exported), zeros elsewhere.
#[derive(Debug)]
pub struct SnapshotDisk {
    snapshot_id: String,
    size: u64,
    blocks: Vec<StoredBlock>,
    dir: PathBuf,
}

impl SnapshotDisk {
    pub(crate) fn load(
        conn: &Connection,
        blocks_dir: &Path,
        snapshot_id: &str,
    ) -> Result<Self, ImagesError> {
        let snap = db::snapshot(conn, snapshot_id)
            .map_err(db_err)?
            .ok_or_else(|| ImagesError::NotFound(format!("no snapshot {snapshot_id}")))?;
        let blocks = db::snapshot_blocks(conn, snapshot_id).map_err(db_err)?;
        Ok(SnapshotDisk {
            snapshot_id: snap.snapshot_id,
            size: snap.volume_size_bytes,
            blocks,
            dir: blocks_dir.to_path_buf(),
        })
    }

    pub fn snapshot_id(&self) -> &str {
        &self.snapshot_id
    }

    /// Number of blocks held in block files (the others are all zeros).
    pub fn stored_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn read_block(&self, b: &StoredBlock, into: &mut [u8]) -> tern_disk::Result<()> {
        let hex = hex::encode(b.digest);
        let path = self.dir.join(&hex[..2]).join(&hex);
        let io = |source| DiskError::Io {
            path: path.clone(),
            source,
        };
        let f = File::open(&path).map_err(io)?;
        if f.metadata().map_err(io)?.len() != b.length as u64 {
            return Err(self.damaged(b, "has the wrong length"));
        }
        f.read_exact_at(into, 0).map_err(io)?;
        if digest(into) != b.digest {
            return Err(self.damaged(b, "does not match its digest"));
        }
        Ok(())
    }

    fn damaged(&self, b: &StoredBlock, what: &str) -> DiskError {
        DiskError::BadObject {
            what: "image block store",
            detail: format!(
                "block {} of {}: file {} {what}",
                b.index,
                self.snapshot_id,
                hex::encode(b.digest)
            ),
        }
    }
}

impl VirtualDisk for SnapshotDisk {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn variant(&self) -> String {
        "tern snapshot".into()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn allocated(&self) -> tern_disk::Result<Vec<Extent>> {
        let mut out: Vec<Extent> = Vec::new();
        for b in &self.blocks {
            let offset = b.index * BLOCK_SIZE as u64;
            match out.last_mut() {
                Some(last) if last.end() == offset => last.length += b.length as u64,
                _ => out.push(Extent {
                    offset,
                    length: b.length as u64,
                }),
            }
        }
        Ok(out)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> tern_disk::Result<()> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(DiskError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        let bs = BLOCK_SIZE as u64;
        let mut whole = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / bs;
            let within = (pos % bs) as usize;
            let n = (bs as usize - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.blocks.binary_search_by_key(&index, |b| b.index) {
                Err(_) => out.fill(0),
                Ok(i) => {
                    let b = &self.blocks[i];
                    if within == 0 && n == b.length as usize {
                        self.read_block(b, out)?;
                    } else {
                        // A partial read still checks the whole block's digest.
                        whole.resize(b.length as usize, 0);
                        self.read_block(b, &mut whole)?;
                        let end = (within + n).min(whole.len());
                        let avail = end.saturating_sub(within);
                        out[..avail].copy_from_slice(&whole[within..end]);
                        out[avail..].fill(0);
                    }
                }
            }
            done += n;
        }
        Ok(())
    }
}

/// A read-only view of a data directory's images and snapshots. Opening it starts nothing, so it
/// is safe next to a running `tern serve` (WAL readers never block the writer).
pub struct ImageCatalog {
    conn: Mutex<Connection>,
    db_path: PathBuf,
    blocks_dir: PathBuf,
}

impl ImageCatalog {
    pub fn open(data_dir: &Path) -> Result<Self, ImagesError> {
        let db_path = data_dir.join(db::FILE_NAME);
        if !db_path.is_file() {
            return Err(ImagesError::NotFound(format!(
                "no image database at {} (no image was ever imported into {})",
                db_path.display(),
                data_dir.display()
            )));
        }
        let conn = db::open(&db_path, true).map_err(db_err)?;
        Ok(ImageCatalog {
            conn: Mutex::new(conn),
            db_path,
            blocks_dir: data_dir.join("images").join("blocks"),
        })
    }

    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list_images(&self) -> Result<Vec<Image>, ImagesError> {
        db::list_images(&self.conn()).map_err(db_err)
    }

    pub fn describe_image(&self, image_id: &str) -> Result<Image, ImagesError> {
        db::image(&self.conn(), image_id)
            .map_err(db_err)?
            .ok_or_else(|| ImagesError::NotFound(format!("no image {image_id}")))
    }

    pub fn describe_snapshot(&self, snapshot_id: &str) -> Result<Snapshot, ImagesError> {
        db::snapshot(&self.conn(), snapshot_id)
            .map_err(db_err)?
            .ok_or_else(|| ImagesError::NotFound(format!("no snapshot {snapshot_id}")))
    }

    pub fn snapshot_disk(&self, snapshot_id: &str) -> Result<SnapshotDisk, ImagesError> {
        SnapshotDisk::load(&self.conn(), &self.blocks_dir, snapshot_id)
    }

    /// Every snapshot's id, sorted (what exists, images or not).
    pub fn list_snapshot_ids(&self) -> Result<Vec<String>, ImagesError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT snapshot_id FROM snapshots ORDER BY snapshot_id")
            .map_err(db_err)?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db_err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err)?;
        Ok(ids)
    }
}
