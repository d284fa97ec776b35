//! The fixed newstyle handshake: structured replies, meta contexts, then `NBD_OPT_GO` with the
//! export's size and block sizes.

use crate::error::{NbdError, Result};
use crate::proto::*;

/// What the client asks for during the handshake.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The export name (`""` is the server's default export; qemu-nbd names it with `-x`).
    pub export: String,
    /// Meta contexts to select, e.g. `base:allocation`, `qemu:dirty-bitmap:NAME`. Needs
    /// structured replies.
    pub meta_contexts: Vec<String>,
    /// Ask for structured replies (needed for holes in reads and for block status).
    pub structured_replies: bool,
    /// Read and write timeout of the socket: a server that stops answering fails the call
    /// instead of hanging it.
    pub timeout: Option<std::time::Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            export: String::new(),
            meta_contexts: Vec::new(),
            structured_replies: true,
            timeout: Some(std::time::Duration::from_secs(120)),
        }
    }
}

/// What the server told about the export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_READ_ONLY` = 2, …).
    pub flags: u16,
    pub min_block: u32,
    pub preferred_block: u32,
    /// The largest payload of a read; also the largest block status request this client sends.
    pub max_block: u32,
    /// Whether the server stated its block sizes (`NBD_INFO_BLOCK_SIZE`).
    pub block_sizes_stated: bool,
}

impl ExportInfo {
    pub fn read_only(&self) -> bool {
        self.flags & 2 != 0
    }
}

pub(crate) struct Negotiated {
    pub info: ExportInfo,
    pub structured: bool,
    pub contexts: Vec<(u32, String)>,
}

struct OptReply {
    kind: u32,
    data: Vec<u8>,
}

fn send_option(conn: &mut Conn, option: u32, data: &[u8]) -> Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| NbdError::Unsupported("an option payload over 4 GiB".into()))?;
    let msg = Msg::default()
        .u64(IHAVEOPT)
        .u32(option)
        .u32(len)
        .bytes(data);
    conn.send(&msg.0, "the handshake")
}

fn read_reply(conn: &mut Conn, option: u32) -> Result<OptReply> {
    let magic = conn.u64("the handshake")?;
    if magic != REPLY_MAGIC_OPT {
        return Err(NbdError::BadMagic {
            what: "option reply",
            got: magic,
        });
    }
    let echoed = conn.u32("the handshake")?;
    if echoed != option {
        return Err(NbdError::Protocol(format!(
            "a reply for option {echoed} while {} was asked",
            option_name(option)
        )));
    }
    let kind = conn.u32("the handshake")?;
    let len = conn.u32("the handshake")?;
    if len > MAX_OPTION_REPLY {
        return Err(NbdError::TooLarge {
            what: "option reply",
            length: len as u64,
            limit: MAX_OPTION_REPLY as u64,
        });
    }
    let mut data = vec![0u8; len as usize];
    conn.read_exact(&mut data, "the handshake")?;
    Ok(OptReply { kind, data })
}

fn refused(option: u32, r: &OptReply) -> NbdError {
    NbdError::OptionRefused {
        option: option_name(option),
        reply: reply_name(r.kind),
        message: String::from_utf8_lossy(&r.data).into_owned(),
    }
}

fn name_field(s: &str, what: &str) -> Result<u32> {
    if s.len() > 4096 {
        return Err(NbdError::Unsupported(format!(
            "{what} {s:?} is longer than the protocol's 4096 bytes"
        )));
    }
    Ok(s.len() as u32)
}

pub(crate) fn negotiate(conn: &mut Conn, opts: &ConnectOptions) -> Result<Negotiated> {
    let magic = conn.u64("the greeting")?;
    if magic != NBDMAGIC {
        return Err(NbdError::BadMagic {
            what: "greeting",
            got: magic,
        });
    }
    let style = conn.u64("the greeting")?;
    if style == OLDSTYLE_MAGIC {
        return Err(NbdError::Unsupported(
            "oldstyle negotiation (the server must offer fixed newstyle)".into(),
        ));
    }
    if style != IHAVEOPT {
        return Err(NbdError::BadMagic {
            what: "newstyle greeting",
            got: style,
        });
    }
    let hflags = conn.u16("the greeting")?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Unsupported(
            "the server does not offer fixed newstyle negotiation".into(),
        ));
    }
    let mut cflags = CLIENT_FIXED_NEWSTYLE;
    if hflags & FLAG_NO_ZEROES != 0 {
        cflags |= CLIENT_NO_ZEROES;
    }
    conn.send(&cflags.to_be_bytes(), "the handshake")?;

    let mut structured = false;
    if opts.structured_replies {
        send_option(conn, OPT_STRUCTURED_REPLY, &[])?;
        let r = read_reply(conn, OPT_STRUCTURED_REPLY)?;
        match r.kind {
            REP_ACK => structured = true,
            k if k & REP_ERR_BIT != 0 => {}
            k => {
                return Err(NbdError::Protocol(format!(
                    "reply type {k} to NBD_OPT_STRUCTURED_REPLY"
                )))
            }
        }
    }

    let mut contexts = Vec::new();
    if !opts.meta_contexts.is_empty() {
        if !structured {
            return Err(NbdError::Unsupported(
                "meta contexts need structured replies, which the server refused".into(),
            ));
        }
        let mut m = Msg::default()
            .u32(name_field(&opts.export, "export name")?)
            .bytes(opts.export.as_bytes())
            .u32(opts.meta_contexts.len() as u32);
        for q in &opts.meta_contexts {
            m = m.u32(name_field(q, "meta context")?).bytes(q.as_bytes());
        }
        send_option(conn, OPT_SET_META_CONTEXT, &m.0)?;
        loop {
            let r = read_reply(conn, OPT_SET_META_CONTEXT)?;
            match r.kind {
                REP_ACK => break,
                REP_META_CONTEXT => {
                    let mut f = Fields {
                        buf: &r.data,
                        what: "NBD_REP_META_CONTEXT",
                    };
                    let id = f.u32()?;
                    let name = String::from_utf8_lossy(f.buf).into_owned();
                    if !opts.meta_contexts.contains(&name) {
                        return Err(NbdError::Protocol(format!(
                            "the server selected meta context {name:?}, which was not asked for"
                        )));
                    }
                    if contexts.len() >= opts.meta_contexts.len() {
                        return Err(NbdError::Protocol(
                            "more meta contexts selected than asked for".into(),
                        ));
                    }
                    contexts.push((id, name));
                }
                k if k & REP_ERR_BIT != 0 => return Err(refused(OPT_SET_META_CONTEXT, &r)),
                k => {
                    return Err(NbdError::Protocol(format!(
                        "reply type {k} to NBD_OPT_SET_META_CONTEXT"
                    )))
                }
            }
        }
    }

    let go = Msg::default()
        .u32(name_field(&opts.export, "export name")?)
        .bytes(opts.export.as_bytes())
        .u16(1)
        .u16(INFO_BLOCK_SIZE);
    send_option(conn, OPT_GO, &go.0)?;
    let mut export: Option<(u64, u16)> = None;
    let mut sizes: Option<(u32, u32, u32)> = None;
    loop {
        let r = read_reply(conn, OPT_GO)?;
        match r.kind {
            REP_ACK => break,
            REP_INFO => {
                let mut f = Fields {
                    buf: &r.data,
                    what: "NBD_REP_INFO",
                };
                match f.u16()? {
                    INFO_EXPORT => export = Some((f.u64()?, f.u16()?)),
                    INFO_BLOCK_SIZE => sizes = Some((f.u32()?, f.u32()?, f.u32()?)),
                    // Name, description and later additions: nothing this client needs.
                    _ => {}
                }
            }
            k if k & REP_ERR_BIT != 0 => return Err(refused(OPT_GO, &r)),
            k => return Err(NbdError::Protocol(format!("reply type {k} to NBD_OPT_GO"))),
        }
    }
    let (size, flags) = export
        .ok_or_else(|| NbdError::Protocol("NBD_OPT_GO succeeded without NBD_INFO_EXPORT".into()))?;
    if size > i64::MAX as u64 {
        return Err(NbdError::Protocol(format!("export size {size}")));
    }
    let info = match sizes {
        Some((min, pref, max)) => {
            let ok = min.is_power_of_two()
                && min <= 64 * 1024
                && pref.is_power_of_two()
                && pref >= min
                && max >= min
                && (max % min == 0 || max == u32::MAX);
            if !ok {
                return Err(NbdError::Protocol(format!(
                    "block sizes min {min}, preferred {pref}, max {max} break the protocol's rules"
                )));
            }
            ExportInfo {
                size,
                flags,
                min_block: min,
                preferred_block: pref,
                max_block: max,
                block_sizes_stated: true,
            }
        }
        None => ExportInfo {
            size,
            flags,
            min_block: 1,
            preferred_block: 4096,
            max_block: DEFAULT_MAX_BLOCK,
            block_sizes_stated: false,
        },
    };
    tracing::debug!(size, flags, structured, contexts = ?contexts, "NBD handshake done");
    Ok(Negotiated {
        info,
        structured,
        contexts,
    })
}
