//! Positional reads on a file shared between threads, and small byte helpers.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{DiskError, Result};

/// An image file opened read-only, read with positional reads so one handle serves many threads.
/// Images can also live in memory (fuzzing, small embedded images); those never reference
/// other files.
#[derive(Debug)]
pub struct Source {
    inner: Inner,
    path: PathBuf,
    len: u64,
    /// Where the image starts in the file: non-zero for an image stored inside another file
    /// (a disk inside an OVA archive).
    base: u64,
}

#[derive(Debug)]
enum Inner {
    File(File),
    Memory(Vec<u8>),
}

impl Source {
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| DiskError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        let len = if meta.is_file() {
            meta.len()
        } else {
            // Block devices report length 0 in metadata; seeking to the end gives the real size.
            use std::io::{Seek, SeekFrom};
            let mut f = &file;
            f.seek(SeekFrom::End(0)).map_err(io_err)?
        };
        Ok(Source {
            inner: Inner::File(file),
            path: path.to_path_buf(),
            len,
            base: 0,
        })
    }

    /// Opens `length` bytes at `offset` of the file at `path` as an image of its own. The range
    /// is checked against the file's length, so a hostile archive index cannot point reads
    /// outside the file.
    pub fn open_range(path: &Path, offset: u64, length: u64) -> Result<Self> {
        let mut src = Source::open(path)?;
        if offset.checked_add(length).is_none_or(|end| end > src.len) {
            return Err(DiskError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "image of {length} bytes at offset {offset} runs past the end of the {}-byte file",
                        src.len
                    ),
                ),
            });
        }
        src.base = offset;
        src.len = length;
        Ok(src)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Source {
            len: bytes.len() as u64,
            inner: Inner::Memory(bytes),
            path: PathBuf::from("<memory>"),
            base: 0,
        }
    }

    /// True for images that are not a file of their own (in memory, or a byte range of another
    /// file): they have no folder to resolve references in.
    pub fn is_embedded(&self) -> bool {
        matches!(self.inner, Inner::Memory(_)) || self.base != 0
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads exactly `buf.len()` bytes at `offset`; reading past the end of the file is an error.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(DiskError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at offset {offset} past the end of the {}-byte file",
                        buf.len(),
                        self.len
                    ),
                ),
            });
        }
        match &self.inner {
            // Bounds were checked above against len, and base + len against the file when opened.
            Inner::File(f) => {
                read_exact_at(f, buf, self.base + offset).map_err(|source| DiskError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
            Inner::Memory(m) => {
                // Bounds were checked above against len == m.len().
                buf.copy_from_slice(&m[offset as usize..offset as usize + buf.len()]);
                Ok(())
            }
        }
    }

    /// Reads image data that a table points at; a pointer past the end of the file is reported
    /// as a malformed table rather than an I/O error.
    pub fn read_data(
        &self,
        buf: &mut [u8],
        offset: u64,
        format: &'static str,
        structure: &'static str,
    ) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(crate::error::malformed(
                format,
                structure,
                format!(
                    "points at {} bytes at offset {offset}, past the end of the {}-byte file",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.read_exact_at(buf, offset)
    }

    /// Reads up to `buf.len()` bytes at `offset`, zero-filling what lies past the end of the file.
    /// Used for structures (compressed clusters) whose stored length is only an upper bound.
    pub fn read_clamped(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let avail = self.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        buf[avail..].fill(0);
        if avail > 0 {
            self.read_exact_at(&mut buf[..avail], offset)?;
        }
        Ok(())
    }

    /// Reads a table of `len` bytes, refusing lengths the file cannot contain, so a hostile
    /// header cannot make us allocate more than the file justifies.
    pub fn read_vec(
        &self,
        offset: u64,
        len: u64,
        format: &'static str,
        what: &'static str,
    ) -> Result<Vec<u8>> {
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(crate::error::malformed(
                format,
                what,
                format!(
                    "{len} bytes at offset {offset} run past the end of the {}-byte file",
                    self.len
                ),
            ));
        }
        let mut v = vec![0u8; len as usize];
        self.read_exact_at(&mut v, offset)?;
        Ok(v)
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(unix)]
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// True when every byte is zero. Works on 64-byte chunks OR-ed as words, which vectorises.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        let mut o = 0u64;
        for w in c.chunks_exact(8) {
            o |= u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        }
        if o != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}
