//! Numbers of the NBD protocol (`doc/proto.md` of the NetworkBlockDevice project) and the
//! framing both phases share: big-endian integers over one byte stream.

use std::io::{BufReader, Read, Write};

use crate::error::{io, Result};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
pub const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
pub const CLIENT_NO_ZEROES: u32 = 2;

pub const OPT_ABORT: u32 = 2;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_BIT: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const CMD_READ: u16 = 0;
pub const CMD_DISC: u16 = 2;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// `base:allocation` flags.
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:*` flag.
pub const STATE_DIRTY: u32 = 1;

/// The largest option reply this client reads: every string in one is at most 4 KiB.
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// The largest non-data reply chunk (block status, error): 8 bytes per extent, so a 16 MiB
/// chunk already describes two million extents.
pub const MAX_CHUNK: u32 = 16 << 20;
/// The payload limit the protocol assumes when the server states none.
pub const DEFAULT_MAX_BLOCK: u32 = 32 << 20;

pub fn option_name(opt: u32) -> &'static str {
    match opt {
        OPT_ABORT => "NBD_OPT_ABORT",
        OPT_GO => "NBD_OPT_GO",
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        _ => "NBD option",
    }
}

pub fn reply_name(rep: u32) -> String {
    match rep {
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP".into(),
        0x8000_0002 => "NBD_REP_ERR_POLICY".into(),
        0x8000_0003 => "NBD_REP_ERR_INVALID".into(),
        0x8000_0004 => "NBD_REP_ERR_PLATFORM".into(),
        0x8000_0005 => "NBD_REP_ERR_TLS_REQD".into(),
        0x8000_0006 => "NBD_REP_ERR_UNKNOWN (no such export)".into(),
        0x8000_0007 => "NBD_REP_ERR_SHUTDOWN".into(),
        0x8000_0008 => "NBD_REP_ERR_BLOCK_SIZE_REQD".into(),
        0x8000_0009 => "NBD_REP_ERR_TOO_BIG".into(),
        other => format!("reply type {other:#x}"),
    }
}

/// Both directions of one connection. Reads are buffered; each request is written whole.
pub struct Conn {
    r: BufReader<Box<dyn Read + Send>>,
    w: Box<dyn Write + Send>,
}

impl Conn {
    pub fn new(r: Box<dyn Read + Send>, w: Box<dyn Write + Send>) -> Conn {
        Conn {
            r: BufReader::with_capacity(64 * 1024, r),
            w,
        }
    }

    pub fn read_exact(&mut self, buf: &mut [u8], during: &'static str) -> Result<()> {
        self.r.read_exact(buf).map_err(io(during))
    }

    pub fn u16(&mut self, during: &'static str) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b, during)?;
        Ok(u16::from_be_bytes(b))
    }

    pub fn u32(&mut self, during: &'static str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, during)?;
        Ok(u32::from_be_bytes(b))
    }

    pub fn u64(&mut self, during: &'static str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, during)?;
        Ok(u64::from_be_bytes(b))
    }

    pub fn send(&mut self, bytes: &[u8], during: &'static str) -> Result<()> {
        self.w.write_all(bytes).map_err(io(during))?;
        self.w.flush().map_err(io(during))
    }
}

/// Builds big-endian messages.
#[derive(Default)]
pub struct Msg(pub Vec<u8>);

impl Msg {
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// Reads big-endian fields out of a payload already in memory, failing on a short one.
pub struct Fields<'a> {
    pub buf: &'a [u8],
    pub what: &'static str,
}

impl<'a> Fields<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(crate::NbdError::Protocol(format!(
                "{} is too short ({} bytes left, {n} needed)",
                self.what,
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}
