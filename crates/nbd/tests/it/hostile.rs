//! A fake server on a socket pair that breaks the protocol on purpose: every case ends in a
//! named error (or the right answer when the server is odd but within the protocol), never a
//! panic, a hang or an allocation the server sized.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use tern_nbd::{BlockExtent, Client, ConnectOptions, NbdError};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
const CHUNK_MAGIC: u32 = 0x668e_33ef;
const SIMPLE_MAGIC: u32 = 0x6744_6698;
const SIZE: u64 = 1 << 20;
const CTX: &str = "qemu:dirty-bitmap:b";

/// The server's end of the socket.
struct Srv(UnixStream);

impl Srv {
    fn w(&mut self, b: &[u8]) {
        // The client may have hung up already after an error it found: that is fine.
        let _ = self.0.write_all(b);
    }
    fn u16(&mut self, v: u16) {
        self.w(&v.to_be_bytes())
    }
    fn u32(&mut self, v: u32) {
        self.w(&v.to_be_bytes())
    }
    fn u64(&mut self, v: u64) {
        self.w(&v.to_be_bytes())
    }
    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.0.read_exact(&mut b).expect("client sends");
        b
    }
    fn greet(&mut self) {
        self.u64(NBDMAGIC);
        self.u64(IHAVEOPT);
        self.u16(3);
        let flags = self.read_n(4);
        assert_eq!(flags, [0, 0, 0, 3], "fixed newstyle and no zeroes");
    }
    /// Reads one option: its number and payload.
    fn option(&mut self) -> (u32, Vec<u8>) {
        let h = self.read_n(16);
        assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), IHAVEOPT);
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
        (opt, self.read_n(len as usize))
    }
    fn reply(&mut self, opt: u32, kind: u32, data: &[u8]) {
        self.u64(REP_MAGIC);
        self.u32(opt);
        self.u32(kind);
        self.u32(data.len() as u32);
        self.w(data);
    }
    /// A well-behaved handshake: structured replies, the one context (id 7), GO.
    fn handshake(&mut self) {
        self.greet();
        let (opt, _) = self.option();
        assert_eq!(opt, 8);
        self.reply(8, 1, &[]);
        let (opt, _) = self.option();
        assert_eq!(opt, 10);
        let mut m = 7u32.to_be_bytes().to_vec();
        m.extend_from_slice(CTX.as_bytes());
        self.reply(10, 4, &m);
        self.reply(10, 1, &[]);
        let (opt, _) = self.option();
        assert_eq!(opt, 7);
        let mut info = 0u16.to_be_bytes().to_vec();
        info.extend_from_slice(&SIZE.to_be_bytes());
        info.extend_from_slice(&3u16.to_be_bytes());
        self.reply(7, 3, &info);
        self.reply(7, 1, &[]);
    }
    /// Reads a request: (cookie, command, offset, length).
    fn request(&mut self) -> (u64, u16, u64, u32) {
        let r = self.read_n(28);
        assert_eq!(&r[..4], &0x2560_9513u32.to_be_bytes());
        (
            u64::from_be_bytes(r[8..16].try_into().unwrap()),
            u16::from_be_bytes(r[6..8].try_into().unwrap()),
            u64::from_be_bytes(r[16..24].try_into().unwrap()),
            u32::from_be_bytes(r[24..28].try_into().unwrap()),
        )
    }
    fn chunk(&mut self, done: bool, kind: u16, cookie: u64, payload: &[u8]) {
        self.u32(CHUNK_MAGIC);
        self.u16(done as u16);
        self.u16(kind);
        self.u64(cookie);
        self.u32(payload.len() as u32);
        self.w(payload);
    }
    fn status(&mut self, done: bool, cookie: u64, ctx: u32, extents: &[(u32, u32)]) {
        let mut p = ctx.to_be_bytes().to_vec();
        for (l, f) in extents {
            p.extend_from_slice(&l.to_be_bytes());
            p.extend_from_slice(&f.to_be_bytes());
        }
        self.chunk(done, 5, cookie, &p);
    }
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        meta_contexts: vec![CTX.into()],
        timeout: Some(Duration::from_secs(10)),
        ..ConnectOptions::default()
    }
}

/// Runs `server` on one end of a socket pair; returns the client's handshake result.
fn with_server(
    server: impl FnOnce(&mut Srv) + Send + 'static,
) -> (Result<Client, NbdError>, JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || server(&mut Srv(b)));
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = a.try_clone().unwrap();
    (Client::handshake(Box::new(r), Box::new(a), &opts()), t)
}

fn handshake_error(server: impl FnOnce(&mut Srv) + Send + 'static) -> NbdError {
    let (c, t) = with_server(server);
    let e = c.err().expect("the handshake fails");
    t.join().unwrap();
    e
}

#[test]
fn bad_greetings_are_named() {
    let e = handshake_error(|s| s.u64(0x1122_3344_5566_7788));
    assert!(
        matches!(
            e,
            NbdError::BadMagic {
                what: "greeting",
                ..
            }
        ),
        "{e}"
    );
    let e = handshake_error(|s| {
        s.u64(NBDMAGIC);
        s.u64(0x0000_4202_8186_1253);
    });
    assert!(matches!(e, NbdError::Unsupported(_)), "{e}");
    let e = handshake_error(|s| {
        s.u64(NBDMAGIC);
        s.u64(IHAVEOPT);
        s.u16(0);
    });
    assert!(matches!(e, NbdError::Unsupported(_)), "{e}");
    let e = handshake_error(|s| {
        s.u64(NBDMAGIC);
    });
    assert!(matches!(e, NbdError::Closed { .. }), "{e}");
}

#[test]
fn hostile_option_replies_are_named() {
    // An option reply claiming 1 GiB: refused before anything is allocated.
    let e = handshake_error(|s| {
        s.greet();
        s.option();
        s.u64(REP_MAGIC);
        s.u32(8);
        s.u32(1);
        s.u32(1 << 30);
    });
    assert!(
        matches!(
            e,
            NbdError::TooLarge {
                length: 1073741824,
                ..
            }
        ),
        "{e}"
    );
    // A reply with the wrong magic.
    let e = handshake_error(|s| {
        s.greet();
        s.option();
        s.u64(0xdead_beef);
    });
    assert!(
        matches!(
            e,
            NbdError::BadMagic {
                what: "option reply",
                ..
            }
        ),
        "{e}"
    );
    // A context that was never asked for.
    let e = handshake_error(|s| {
        s.greet();
        s.option();
        s.reply(8, 1, &[]);
        s.option();
        let mut m = 1u32.to_be_bytes().to_vec();
        m.extend_from_slice(b"qemu:dirty-bitmap:evil");
        s.reply(10, 4, &m);
    });
    assert!(matches!(e, NbdError::Protocol(_)), "{e}");
    // GO refused: no such export.
    let e = handshake_error(|s| {
        s.greet();
        s.option();
        s.reply(8, 1, &[]);
        s.option();
        s.reply(10, 1, &[]);
        s.option();
        s.reply(7, 0x8000_0006, b"export 'x' not present");
    });
    match &e {
        NbdError::OptionRefused {
            option,
            reply,
            message,
        } => {
            assert_eq!(*option, "NBD_OPT_GO");
            assert!(reply.contains("NBD_REP_ERR_UNKNOWN"), "{reply}");
            assert!(message.contains("not present"), "{message}");
        }
        other => panic!("{other}"),
    }
    // GO acknowledged without ever saying the export's size.
    let e = handshake_error(|s| {
        s.greet();
        s.option();
        s.reply(8, 1, &[]);
        s.option();
        s.reply(10, 1, &[]);
        s.option();
        s.reply(7, 1, &[]);
    });
    assert!(matches!(e, NbdError::Protocol(_)), "{e}");
}

/// Runs one session: the good handshake, then `server` answers requests; `client` drives.
fn session<T>(
    server: impl FnOnce(&mut Srv) + Send + 'static,
    client: impl FnOnce(&mut Client) -> T,
) -> T {
    let (c, t) = with_server(move |s| {
        s.handshake();
        server(s);
    });
    let mut c = c.expect("handshake");
    let out = client(&mut c);
    drop(c);
    t.join().unwrap();
    out
}

fn read_err(server: impl FnOnce(&mut Srv, u64) + Send + 'static) -> NbdError {
    session(
        move |s| {
            let (cookie, cmd, _, _) = s.request();
            assert_eq!(cmd, 0);
            server(s, cookie);
        },
        |c| {
            let mut buf = vec![0u8; 4096];
            let e = c.read(0, &mut buf).unwrap_err();
            // After a protocol failure the connection is done with.
            if !matches!(e, NbdError::Command { .. }) {
                let again = c.read(0, &mut buf).unwrap_err();
                assert!(matches!(again, NbdError::Protocol(_)), "{again}");
            }
            e
        },
    )
}

#[test]
fn hostile_read_replies_are_named() {
    // A data chunk longer than the read.
    let e = read_err(|s, cookie| {
        s.u32(CHUNK_MAGIC);
        s.u16(1);
        s.u16(1);
        s.u64(cookie);
        s.u32(u32::MAX);
    });
    assert!(
        matches!(
            e,
            NbdError::TooLarge {
                what: "data chunk",
                ..
            }
        ),
        "{e}"
    );
    // A chunk type nobody defined.
    let e = read_err(|s, cookie| s.chunk(true, 77, cookie, &[0; 8]));
    assert!(
        matches!(e, NbdError::Protocol(ref m) if m.contains("77")),
        "{e}"
    );
    // The connection drops half-way through the data.
    let e = read_err(|s, cookie| {
        s.u32(CHUNK_MAGIC);
        s.u16(1);
        s.u16(1);
        s.u64(cookie);
        s.u32(8 + 4096);
        s.u64(0);
        s.w(&[1; 100]);
        s.0.shutdown(std::net::Shutdown::Both).unwrap();
    });
    assert!(matches!(e, NbdError::Closed { .. }), "{e}");
    // A reply to a request that was never sent.
    let e = read_err(|s, cookie| s.chunk(true, 2, cookie + 5, &[0; 12]));
    assert!(matches!(e, NbdError::Protocol(_)), "{e}");
    // A reply magic that is neither kind.
    let e = read_err(|s, _| s.u32(0x0bad_f00d));
    assert!(matches!(e, NbdError::BadMagic { what: "reply", .. }), "{e}");
    // Chunks that leave a gap.
    let e = read_err(|s, cookie| {
        let mut hole = 0u64.to_be_bytes().to_vec();
        hole.extend_from_slice(&1024u32.to_be_bytes());
        s.chunk(true, 2, cookie, &hole);
    });
    assert!(
        matches!(e, NbdError::Protocol(ref m) if m.contains("end at 1024")),
        "{e}"
    );
    // A hole outside the read.
    let e = read_err(|s, cookie| {
        let mut hole = 8192u64.to_be_bytes().to_vec();
        hole.extend_from_slice(&1024u32.to_be_bytes());
        s.chunk(true, 2, cookie, &hole);
    });
    assert!(matches!(e, NbdError::Protocol(_)), "{e}");
}

/// An error chunk is the server's answer, not a broken stream: it is reported with its
/// message and the next read on the same connection works, assembled from data and hole
/// chunks in any order.
#[test]
fn error_chunks_are_reported_and_the_connection_goes_on() {
    session(
        |s| {
            let (cookie, _, _, _) = s.request();
            let mut p = 5u32.to_be_bytes().to_vec();
            p.extend_from_slice(&7u16.to_be_bytes());
            p.extend_from_slice(b"bad LBA");
            s.chunk(true, 0x8001, cookie, &p);
            let (cookie, _, offset, len) = s.request();
            assert_eq!((offset, len), (4096, 4096));
            let mut data = (4096u64 + 1024).to_be_bytes().to_vec();
            data.extend_from_slice(&[0xcd; 3072]);
            s.chunk(false, 1, cookie, &data);
            let mut hole = 4096u64.to_be_bytes().to_vec();
            hole.extend_from_slice(&1024u32.to_be_bytes());
            s.chunk(true, 2, cookie, &hole);
            let (_, cmd, _, _) = s.request();
            assert_eq!(cmd, 2, "the client disconnects when dropped");
        },
        |c| {
            let mut buf = vec![0xffu8; 4096];
            let e = c.read(0, &mut buf).unwrap_err();
            match &e {
                NbdError::Command {
                    errno: 5, message, ..
                } => assert_eq!(message, "bad LBA"),
                other => panic!("{other}"),
            }
            assert!(e.to_string().contains("EIO"), "{e}");
            c.read(4096, &mut buf).unwrap();
            assert!(buf[..1024].iter().all(|&b| b == 0));
            assert!(buf[1024..].iter().all(|&b| b == 0xcd));
        },
    );
}

/// A server that answers block status for less than was asked is asked again from where it
/// stopped; one whose last extent runs past the request is clipped; a zero-length extent and
/// a context id never agreed are protocol violations.
#[test]
fn block_status_short_long_and_broken_answers() {
    let got = session(
        |s| {
            let (cookie, cmd, offset, len) = s.request();
            assert_eq!((cmd, offset, len), (7, 0, SIZE as u32));
            s.status(true, cookie, 7, &[(65536, 0), (65536, 1)]);
            let (cookie, _, offset, len) = s.request();
            assert_eq!((offset, len), (131072, SIZE as u32 - 131072));
            s.status(true, cookie, 7, &[(65536, 1), (u32::MAX, 0)]);
        },
        |c| c.block_status(CTX, 0, SIZE).unwrap(),
    );
    assert_eq!(
        got,
        vec![
            BlockExtent {
                offset: 0,
                length: 65536,
                flags: 0
            },
            BlockExtent {
                offset: 65536,
                length: 131072,
                flags: 1
            },
            BlockExtent {
                offset: 196608,
                length: SIZE - 196608,
                flags: 0
            },
        ]
    );
    let e = session(
        |s| {
            let (cookie, _, _, _) = s.request();
            s.status(true, cookie, 7, &[(0, 1)]);
        },
        |c| c.block_status(CTX, 0, SIZE).unwrap_err(),
    );
    assert!(
        matches!(e, NbdError::Protocol(ref m) if m.contains("length 0")),
        "{e}"
    );
    let e = session(
        |s| {
            let (cookie, _, _, _) = s.request();
            s.status(true, cookie, 99, &[(4096, 1)]);
        },
        |c| c.block_status(CTX, 0, SIZE).unwrap_err(),
    );
    assert!(
        matches!(e, NbdError::Protocol(ref m) if m.contains("99")),
        "{e}"
    );
    // Extents after the one that reached the end of the request.
    let e = session(
        |s| {
            let (cookie, _, _, _) = s.request();
            s.status(true, cookie, 7, &[(SIZE as u32, 1), (4096, 0)]);
        },
        |c| c.block_status(CTX, 0, SIZE).unwrap_err(),
    );
    assert!(matches!(e, NbdError::Protocol(_)), "{e}");
    // A status chunk claiming 1 GiB of extents.
    let e = session(
        |s| {
            let (cookie, _, _, _) = s.request();
            s.u32(CHUNK_MAGIC);
            s.u16(1);
            s.u16(5);
            s.u64(cookie);
            s.u32((1 << 30) + 4);
        },
        |c| c.block_status(CTX, 0, SIZE).unwrap_err(),
    );
    assert!(matches!(e, NbdError::TooLarge { .. }), "{e}");
    // Asking outside the export, or in a context that was not agreed, sends nothing.
    session(
        |s| {
            let (_, cmd, _, _) = s.request();
            assert_eq!(cmd, 2);
        },
        |c| {
            let e = c.block_status(CTX, SIZE - 10, 20).unwrap_err();
            assert!(matches!(e, NbdError::OutOfRange { .. }), "{e}");
            let e = c.block_status("base:allocation", 0, 10).unwrap_err();
            assert!(matches!(e, NbdError::NoMetaContext(_)), "{e}");
        },
    );
}

/// A simple reply carries the read's data (servers may use them even with structured replies
/// on); a simple error reply is the server's answer.
#[test]
fn simple_replies() {
    session(
        |s| {
            let (cookie, _, _, len) = s.request();
            s.u32(SIMPLE_MAGIC);
            s.u32(0);
            s.u64(cookie);
            s.w(&vec![0x42; len as usize]);
            let (cookie, _, _, _) = s.request();
            s.u32(SIMPLE_MAGIC);
            s.u32(22);
            s.u64(cookie);
            let (_, cmd, _, _) = s.request();
            assert_eq!(cmd, 2);
        },
        |c| {
            let mut buf = vec![0u8; 1000];
            c.read(10, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 0x42));
            let e = c.read(10, &mut buf).unwrap_err();
            assert!(matches!(e, NbdError::Command { errno: 22, .. }), "{e}");
        },
    );
}

/// A server that stops answering fails the call at the socket timeout instead of hanging.
#[test]
fn a_silent_server_times_out() {
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = Srv(b);
        s.handshake();
        let _ = s.request();
        // Say nothing until the client gives up and hangs up.
        let mut rest = Vec::new();
        let _ = s.0.read_to_end(&mut rest);
    });
    a.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let r = a.try_clone().unwrap();
    let mut c = Client::handshake(Box::new(r), Box::new(a), &opts()).unwrap();
    let started = std::time::Instant::now();
    let e = c.read(0, &mut [0u8; 512]).unwrap_err();
    assert!(matches!(e, NbdError::Io { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(c);
    t.join().unwrap();
}
