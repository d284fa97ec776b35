//! The transmission phase: reads (simple and structured replies), block status, disconnect.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::error::{NbdError, Result};
use crate::handshake::{negotiate, ConnectOptions, ExportInfo};
use crate::proto::*;

/// One extent of a block status answer: `flags` mean what the meta context says
/// (`base:allocation`: 1 = hole, 2 = reads as zeros; `qemu:dirty-bitmap:*`: 1 = dirty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockExtent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

impl BlockExtent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// What this connection did: the bytes callers asked to read (`bytes_read`) and the data bytes
/// the server actually sent (`data_bytes_received`; holes cost none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub reads: u64,
    pub bytes_read: u64,
    pub data_bytes_received: u64,
    pub block_status_requests: u64,
}

/// A connected NBD client in the transmission phase. One request is in flight at a time.
pub struct Client {
    conn: Conn,
    info: ExportInfo,
    structured: bool,
    contexts: Vec<(u32, String)>,
    cookie: u64,
    stats: Stats,
    /// Set after an error that leaves the byte stream out of step (a bad reply, a dropped
    /// connection): further commands are refused rather than misread.
    broken: bool,
    disconnected: bool,
}

enum Header {
    Simple { error: u32 },
    Chunk { flags: u16, kind: u16, length: u32 },
}

impl Client {
    /// Connects to a Unix socket (what `qemu-nbd -k` and `qemu-storage-daemon` serve).
    pub fn connect_unix(path: &Path, opts: &ConnectOptions) -> Result<Client> {
        let connect_err = |source| NbdError::Connect {
            address: path.display().to_string(),
            source,
        };
        let s = UnixStream::connect(path).map_err(connect_err)?;
        s.set_read_timeout(opts.timeout).map_err(connect_err)?;
        s.set_write_timeout(opts.timeout).map_err(connect_err)?;
        let r = s.try_clone().map_err(connect_err)?;
        Client::handshake(Box::new(r), Box::new(s), opts)
    }

    /// Connects over TCP.
    pub fn connect_tcp(addr: &str, opts: &ConnectOptions) -> Result<Client> {
        let connect_err = |source| NbdError::Connect {
            address: addr.to_string(),
            source,
        };
        let addrs: Vec<_> = addr.to_socket_addrs().map_err(connect_err)?.collect();
        let s = TcpStream::connect(&addrs[..]).map_err(connect_err)?;
        s.set_nodelay(true).map_err(connect_err)?;
        s.set_read_timeout(opts.timeout).map_err(connect_err)?;
        s.set_write_timeout(opts.timeout).map_err(connect_err)?;
        let r = s.try_clone().map_err(connect_err)?;
        Client::handshake(Box::new(r), Box::new(s), opts)
    }

    /// Runs the handshake over any byte stream (its two directions given apart).
    pub fn handshake(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        opts: &ConnectOptions,
    ) -> Result<Client> {
        let mut conn = Conn::new(reader, writer);
        let n = negotiate(&mut conn, opts)?;
        Ok(Client {
            conn,
            info: n.info,
            structured: n.structured,
            contexts: n.contexts,
            cookie: 0,
            stats: Stats::default(),
            broken: false,
            disconnected: false,
        })
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    pub fn size(&self) -> u64 {
        self.info.size
    }

    pub fn structured_replies(&self) -> bool {
        self.structured
    }

    /// The id the server gave a meta context, if it agreed to it.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.contexts
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| *id)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn check_range(&self, what: &'static str, offset: u64, length: u64) -> Result<()> {
        if offset
            .checked_add(length)
            .is_none_or(|e| e > self.info.size)
        {
            return Err(NbdError::OutOfRange {
                what,
                offset,
                length,
                size: self.info.size,
            });
        }
        Ok(())
    }

    /// Runs one exchange; errors that leave the stream out of step disable the connection.
    fn exchange<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.broken {
            return Err(NbdError::Protocol(
                "the connection is unusable after an earlier failure".into(),
            ));
        }
        let r = f(self);
        if let Err(e) = &r {
            if !matches!(
                e,
                NbdError::Command { .. } | NbdError::OutOfRange { .. } | NbdError::NoMetaContext(_)
            ) {
                self.broken = true;
            }
        }
        r
    }

    fn request(&mut self, cmd: u16, offset: u64, length: u32) -> Result<u64> {
        self.cookie += 1;
        let m = Msg::default()
            .u32(REQUEST_MAGIC)
            .u16(0)
            .u16(cmd)
            .u64(self.cookie)
            .u64(offset)
            .u32(length);
        self.conn.send(&m.0, "a request")?;
        Ok(self.cookie)
    }

    fn header(&mut self, cookie: u64, during: &'static str) -> Result<Header> {
        let magic = self.conn.u32(during)?;
        let h = match magic {
            SIMPLE_REPLY_MAGIC => {
                let error = self.conn.u32(during)?;
                let c = self.conn.u64(during)?;
                (Header::Simple { error }, c)
            }
            STRUCTURED_REPLY_MAGIC if self.structured => {
                let flags = self.conn.u16(during)?;
                let kind = self.conn.u16(during)?;
                let c = self.conn.u64(during)?;
                let length = self.conn.u32(during)?;
                (
                    Header::Chunk {
                        flags,
                        kind,
                        length,
                    },
                    c,
                )
            }
            got => {
                return Err(NbdError::BadMagic {
                    what: "reply",
                    got: got as u64,
                })
            }
        };
        if h.1 != cookie {
            return Err(NbdError::Protocol(format!(
                "a reply for request {} while request {cookie} is the only one in flight",
                h.1
            )));
        }
        Ok(h.0)
    }

    /// Reads a payload that is not data (block status, error) after checking its length.
    fn payload(&mut self, length: u32) -> Result<Vec<u8>> {
        if length > MAX_CHUNK {
            return Err(NbdError::TooLarge {
                what: "reply chunk",
                length: length as u64,
                limit: MAX_CHUNK as u64,
            });
        }
        let mut data = vec![0u8; length as usize];
        self.conn.read_exact(&mut data, "a reply chunk")?;
        Ok(data)
    }

    /// Parses an error chunk (`NBD_REPLY_TYPE_ERROR*`, or an error type this client does not
    /// know, which the protocol says to treat as an error all the same).
    fn error_chunk(
        &mut self,
        command: &'static str,
        kind: u16,
        length: u32,
        request_offset: u64,
    ) -> Result<NbdError> {
        let data = self.payload(length)?;
        let mut f = Fields {
            buf: &data,
            what: "an error chunk",
        };
        let errno = f.u32()?;
        let mut message = String::new();
        let mut offset = request_offset;
        if kind == REPLY_TYPE_ERROR || kind == REPLY_TYPE_ERROR_OFFSET {
            let mlen = f.u16()? as usize;
            message = String::from_utf8_lossy(f.take(mlen)?).into_owned();
            if kind == REPLY_TYPE_ERROR_OFFSET {
                offset = f.u64()?;
            }
        }
        if errno == 0 {
            return Err(NbdError::Protocol(
                "an error chunk with error value 0".into(),
            ));
        }
        Ok(NbdError::Command {
            command,
            errno,
            offset,
            message,
        })
    }

    /// Reads `buf.len()` bytes at `offset`. Reads larger than the server's maximum are split;
    /// reads not aligned to its minimum block size go through an aligned bounce buffer.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range("read", offset, buf.len() as u64)?;
        self.stats.reads += 1;
        self.stats.bytes_read += buf.len() as u64;
        let min = self.info.min_block as u64;
        let end = offset + buf.len() as u64;
        if offset.is_multiple_of(min) && (end.is_multiple_of(min) || end == self.info.size) {
            return self.read_aligned(offset, buf);
        }
        let a_start = offset - offset % min;
        let a_end = end.next_multiple_of(min).min(self.info.size);
        let mut bounce = vec![0u8; (a_end - a_start) as usize];
        self.read_aligned(a_start, &mut bounce)?;
        let s = (offset - a_start) as usize;
        buf.copy_from_slice(&bounce[s..s + buf.len()]);
        Ok(())
    }

    fn read_aligned(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let piece = (self.info.max_block.min(DEFAULT_MAX_BLOCK) as u64 / self.info.min_block as u64
            * self.info.min_block as u64)
            .max(self.info.min_block as u64) as usize;
        let mut done = 0usize;
        while done < buf.len() {
            let n = piece.min(buf.len() - done);
            let at = offset + done as u64;
            self.exchange(|c| c.read_piece(at, &mut buf[done..done + n]))?;
            done += n;
        }
        Ok(())
    }

    fn read_piece(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        let cookie = self.request(CMD_READ, offset, len as u32)?;
        let mut covered: Vec<(u64, u64)> = Vec::new();
        let mut failed: Option<NbdError> = None;
        loop {
            match self.header(cookie, "a read")? {
                Header::Simple { error: 0 } => {
                    if !covered.is_empty() {
                        return Err(NbdError::Protocol(
                            "a simple reply after structured chunks".into(),
                        ));
                    }
                    self.conn.read_exact(buf, "a read")?;
                    self.stats.data_bytes_received += len;
                    return Ok(());
                }
                Header::Simple { error } => {
                    return Err(NbdError::Command {
                        command: "NBD_CMD_READ",
                        errno: error,
                        offset,
                        message: String::new(),
                    })
                }
                Header::Chunk {
                    flags,
                    kind,
                    length,
                } => {
                    match kind {
                        REPLY_TYPE_OFFSET_DATA => {
                            if length < 8 || (length - 8) as u64 > len {
                                return Err(NbdError::TooLarge {
                                    what: "data chunk",
                                    length: length as u64,
                                    limit: len + 8,
                                });
                            }
                            let at = self.conn.u64("a read")?;
                            let n = (length - 8) as u64;
                            let rel = chunk_place(offset, len, at, n, "data chunk")?;
                            self.conn
                                .read_exact(&mut buf[rel..rel + n as usize], "a read")?;
                            self.stats.data_bytes_received += n;
                            covered.push((at, at + n));
                        }
                        REPLY_TYPE_OFFSET_HOLE => {
                            if length != 12 {
                                return Err(NbdError::Protocol(format!(
                                    "a hole chunk of {length} bytes (it has 12)"
                                )));
                            }
                            let at = self.conn.u64("a read")?;
                            let n = self.conn.u32("a read")? as u64;
                            let rel = chunk_place(offset, len, at, n, "hole chunk")?;
                            buf[rel..rel + n as usize].fill(0);
                            covered.push((at, at + n));
                        }
                        REPLY_TYPE_NONE => {
                            if length != 0 || flags & REPLY_FLAG_DONE == 0 {
                                return Err(NbdError::Protocol(
                                    "a NONE chunk with a payload or without the DONE flag".into(),
                                ));
                            }
                        }
                        k if k & 0x8000 != 0 => {
                            let e = self.error_chunk("NBD_CMD_READ", k, length, offset)?;
                            failed.get_or_insert(e);
                        }
                        k => {
                            return Err(NbdError::Protocol(format!(
                                "unknown reply chunk type {k} to a read"
                            )))
                        }
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        break;
                    }
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        covered.sort_unstable();
        let mut at = offset;
        for (s, e) in covered {
            if s != at {
                return Err(NbdError::Protocol(format!(
                    "the read's chunks overlap or leave a gap at offset {at}"
                )));
            }
            at = e;
        }
        if at != offset + len {
            return Err(NbdError::Protocol(format!(
                "the read's chunks end at {at}, not at {}",
                offset + len
            )));
        }
        Ok(())
    }

    /// The block status of `[offset, offset + length)` in the meta context `context`: extents
    /// covering exactly that range, in order, adjacent ones with equal flags merged. Requests
    /// are split below 4 GiB and below the server's maximum block size; a server that answers
    /// for less than was asked is asked again from where it stopped.
    pub fn block_status(
        &mut self,
        context: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<BlockExtent>> {
        let id = self
            .context_id(context)
            .ok_or_else(|| NbdError::NoMetaContext(context.to_string()))?;
        self.check_range("block status", offset, length)?;
        let min = self.info.min_block as u64;
        let limit = if self.info.block_sizes_stated {
            self.info.max_block as u64
        } else {
            u32::MAX as u64
        };
        let cap = (limit.min(u32::MAX as u64) / min * min).max(min);
        let end = offset + length;
        let mut out: Vec<BlockExtent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let want = (end - pos).min(cap) as u32;
            let got = self.exchange(|c| c.status_once(id, pos, want))?;
            for e in got {
                match out.last_mut() {
                    Some(last) if last.flags == e.flags && last.end() == e.offset => {
                        last.length += e.length
                    }
                    _ => out.push(e),
                }
                pos = e.end();
            }
        }
        Ok(out)
    }

    fn status_once(&mut self, id: u32, offset: u64, len: u32) -> Result<Vec<BlockExtent>> {
        self.stats.block_status_requests += 1;
        let cookie = self.request(CMD_BLOCK_STATUS, offset, len)?;
        let end = offset + len as u64;
        let mut mine: Option<Vec<BlockExtent>> = None;
        let mut failed: Option<NbdError> = None;
        loop {
            match self.header(cookie, "a block status")? {
                Header::Simple { error: 0 } => {
                    return Err(NbdError::Protocol(
                        "a simple reply without error to a block status request".into(),
                    ))
                }
                Header::Simple { error } => {
                    return Err(NbdError::Command {
                        command: "NBD_CMD_BLOCK_STATUS",
                        errno: error,
                        offset,
                        message: String::new(),
                    })
                }
                Header::Chunk {
                    flags,
                    kind,
                    length,
                } => {
                    match kind {
                        REPLY_TYPE_BLOCK_STATUS => {
                            if length < 12 || (length - 4) % 8 != 0 {
                                return Err(NbdError::Protocol(format!(
                                    "a block status chunk of {length} bytes"
                                )));
                            }
                            let data = self.payload(length)?;
                            let mut f = Fields {
                                buf: &data,
                                what: "a block status chunk",
                            };
                            let ctx = f.u32()?;
                            if !self.contexts.iter().any(|(i, _)| *i == ctx) {
                                return Err(NbdError::Protocol(format!(
                                    "block status for context id {ctx}, which was never agreed"
                                )));
                            }
                            if ctx == id {
                                if mine.is_some() {
                                    return Err(NbdError::Protocol(
                                        "two block status chunks for one context".into(),
                                    ));
                                }
                                mine = Some(descriptors(&mut f, offset, end)?);
                            }
                        }
                        REPLY_TYPE_NONE => {
                            if length != 0 || flags & REPLY_FLAG_DONE == 0 {
                                return Err(NbdError::Protocol(
                                    "a NONE chunk with a payload or without the DONE flag".into(),
                                ));
                            }
                        }
                        k if k & 0x8000 != 0 => {
                            let e = self.error_chunk("NBD_CMD_BLOCK_STATUS", k, length, offset)?;
                            failed.get_or_insert(e);
                        }
                        k => {
                            return Err(NbdError::Protocol(format!(
                                "unknown reply chunk type {k} to a block status request"
                            )))
                        }
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        break;
                    }
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        mine.ok_or_else(|| {
            NbdError::Protocol("the block status reply has no extents for the context".into())
        })
    }

    /// Ends the session politely (`NBD_CMD_DISC`); the server closes the connection.
    pub fn disconnect(mut self) -> Result<()> {
        self.disconnected = true;
        if self.broken {
            return Ok(());
        }
        self.request(CMD_DISC, 0, 0).map(|_| ())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if !self.disconnected && !self.broken {
            let _ = self.request(CMD_DISC, 0, 0);
        }
    }
}

/// Where a chunk for `[at, at + n)` lands in a read of `[offset, offset + len)`.
fn chunk_place(offset: u64, len: u64, at: u64, n: u64, what: &str) -> Result<usize> {
    if n == 0 || at < offset || at.checked_add(n).is_none_or(|e| e > offset + len) {
        return Err(NbdError::Protocol(format!(
            "a {what} for [{at}, +{n}) outside the read of [{offset}, +{len})"
        )));
    }
    Ok((at - offset) as usize)
}

/// The extents of one block status chunk, from `offset`, clipped at `end`. The protocol lets
/// the last extent run past the request; nothing may be empty.
fn descriptors(f: &mut Fields<'_>, offset: u64, end: u64) -> Result<Vec<BlockExtent>> {
    let mut out = Vec::with_capacity(f.buf.len() / 8);
    let mut pos = offset;
    while !f.buf.is_empty() {
        let length = f.u32()? as u64;
        let flags = f.u32()?;
        if length == 0 {
            return Err(NbdError::Protocol(
                "a block status extent of length 0".into(),
            ));
        }
        if pos >= end {
            return Err(NbdError::Protocol(
                "block status extents past the end of the request".into(),
            ));
        }
        let length = length.min(end - pos);
        out.push(BlockExtent {
            offset: pos,
            length,
            flags,
        });
        pos += length;
    }
    Ok(out)
}
