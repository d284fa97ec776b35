//! The one error type of this crate.

/// Everything that can go wrong talking to an NBD server. A broken or hostile server gets one
/// of these, never a panic and never an allocation sized by what it claims.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("connecting to the NBD server at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the NBD server closed the connection during {during}")]
    Closed { during: &'static str },
    #[error("I/O error talking to the NBD server during {during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("bad {what} magic from the NBD server: {got:#x}")]
    BadMagic { what: &'static str, got: u64 },
    #[error("the NBD server does not speak what this client needs: {0}")]
    Unsupported(String),
    #[error("the NBD server refused {option}: {reply} {message:?}")]
    OptionRefused {
        option: &'static str,
        /// The reply type's name (`NBD_REP_ERR_UNKNOWN`, …) or its number.
        reply: String,
        message: String,
    },
    #[error(
        "the NBD server sent a {what} of {length} bytes, more than the {limit} this client accepts"
    )]
    TooLarge {
        what: &'static str,
        length: u64,
        limit: u64,
    },
    #[error("protocol violation by the NBD server: {0}")]
    Protocol(String),
    #[error("the NBD server failed {command} at offset {offset}: {} ({errno}){}",
        errno_name(*errno), if message.is_empty() { String::new() } else { format!(": {message}") })]
    Command {
        command: &'static str,
        errno: u32,
        offset: u64,
        message: String,
    },
    #[error(
        "the NBD server did not agree to the meta context {0:?} (no such bitmap, or not offered)"
    )]
    NoMetaContext(String),
    #[error("{what} of {length} bytes at offset {offset} is outside the {size}-byte export")]
    OutOfRange {
        what: &'static str,
        offset: u64,
        length: u64,
        size: u64,
    },
}

pub type Result<T, E = NbdError> = std::result::Result<T, E>;

/// The names the protocol gives its error values.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "unknown error",
    }
}

/// Maps an I/O error to [`NbdError::Closed`] when the server went away, else [`NbdError::Io`].
pub(crate) fn io(during: &'static str) -> impl Fn(std::io::Error) -> NbdError {
    move |source| match source.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionAborted => NbdError::Closed { during },
        _ => NbdError::Io { during, source },
    }
}
