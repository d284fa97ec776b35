//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading, writing or comparing disk images.
///
/// `Malformed` names the format and the structure at fault so that a user holding a damaged or
/// hostile image learns what is wrong with it rather than just that something is.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Stream(#[from] std::io::Error),
    #[error("malformed {format} image: {structure}: {detail}")]
    Malformed {
        format: &'static str,
        structure: &'static str,
        detail: String,
    },
    #[error("unsupported {format} image: {detail}")]
    Unsupported {
        format: &'static str,
        detail: String,
    },
    #[error(
        "read of {len} bytes at offset {offset} is past the end of the {size}-byte virtual disk"
    )]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("refused to open {path}: {reason}")]
    PathRefused { path: PathBuf, reason: String },
    #[error("malformed {what}: {detail}")]
    BadObject { what: &'static str, detail: String },
    #[error("{0}")]
    Mismatch(String),
}

pub type Result<T, E = DiskError> = std::result::Result<T, E>;

pub(crate) fn malformed(
    format: &'static str,
    structure: &'static str,
    detail: impl Into<String>,
) -> DiskError {
    DiskError::Malformed {
        format,
        structure,
        detail: detail.into(),
    }
}

pub(crate) fn unsupported(format: &'static str, detail: impl Into<String>) -> DiskError {
    DiskError::Unsupported {
        format,
        detail: detail.into(),
    }
}
