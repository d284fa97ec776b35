//! The client against qemu's own NBD servers: what block status and reads return is checked
//! against what `qemu-io` wrote and what `qemu-img convert` reads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern_disk::{Extent, VirtualDisk};
use tern_nbd::{
    dirty_bitmap_context, Client, ConnectOptions, NbdDisk, NbdError, BASE_ALLOCATION, STATE_DIRTY,
    STATE_ZERO,
};
use tern_test_support::poll::until;
use tern_test_support::qemu::{p, qemu_img, qemu_io};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// A server process, killed when the test ends however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_nbd(image: &Path, sock: &Path, extra: &[&str]) -> Server {
    let child = Command::new("qemu-nbd")
        .args(["--read-only", "--persistent", "-f", "qcow2", "-x", "disk"])
        .args(extra)
        .args(["-k", p(sock), p(image)])
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-nbd runs");
    Server(child)
}

fn connect(sock: &Path, contexts: &[&str]) -> Client {
    let opts = ConnectOptions {
        export: "disk".into(),
        meta_contexts: contexts.iter().map(|s| s.to_string()).collect(),
        ..ConnectOptions::default()
    };
    let mut last = None;
    until(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || match Client::connect_unix(sock, &opts) {
            Ok(c) => Some(c),
            Err(e) => {
                last = Some(e);
                None
            }
        },
    )
    .unwrap_or_else(|| panic!("qemu-nbd never answered on {}: {last:?}", sock.display()))
}

/// The image's bytes as qemu reads them.
fn raw_bytes(image: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("expected.raw");
    qemu_img(&["convert", "-O", "raw", p(image), p(&raw)]);
    std::fs::read(&raw).unwrap()
}

fn extents(v: &[(u64, u64)]) -> Vec<Extent> {
    v.iter()
        .map(|&(offset, length)| Extent { offset, length })
        .collect()
}

/// Keeps the extents whose flags pass `keep`, merged.
fn select(status: &[tern_nbd::BlockExtent], keep: impl Fn(u32) -> bool) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for e in status.iter().filter(|e| keep(e.flags)) {
        match out.last_mut() {
            Some(l) if l.end() == e.offset => l.length += e.length,
            _ => out.push(Extent {
                offset: e.offset,
                length: e.length,
            }),
        }
    }
    out
}

fn image(dir: &Path, size: u64) -> PathBuf {
    let img = dir.join("disk.qcow2");
    qemu_img(&["create", "-f", "qcow2", p(&img), &size.to_string()]);
    img
}

/// Data, a zero cluster range and holes: base:allocation names exactly the data, reads give
/// the image's bytes, holes come back as hole chunks (no data sent), and the 64 MiB status is
/// asked in pieces under the server's 32 MiB maximum.
#[test]
fn allocation_and_reads_match_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 64 * MIB);
    qemu_io(&[
        "-c",
        "write -P 0x11 1M 3M",
        "-c",
        "write -z 8M 2M",
        "-c",
        "write -P 0x22 40M 64k",
        "-c",
        "write -P 0x33 63M 1M",
        p(&img),
    ]);
    let expected = raw_bytes(&img, dir.path());
    let sock = dir.path().join("nbd.sock");
    let _server = qemu_nbd(&img, &sock, &[]);
    let mut c = connect(&sock, &[BASE_ALLOCATION]);
    assert_eq!(c.size(), 64 * MIB);
    assert!(c.info().read_only());
    assert!(c.structured_replies());
    assert!(c.info().max_block >= 512 * KIB as u32, "{:?}", c.info());

    let status = c.block_status(BASE_ALLOCATION, 0, 64 * MIB).unwrap();
    assert_eq!(status.first().unwrap().offset, 0);
    assert_eq!(status.last().unwrap().end(), 64 * MIB);
    assert!(status.windows(2).all(|w| w[0].end() == w[1].offset));
    assert_eq!(
        select(&status, |f| f & STATE_ZERO == 0),
        extents(&[(MIB, 3 * MIB), (40 * MIB, 64 * KIB), (63 * MIB, MIB)])
    );
    let split = c.stats().block_status_requests;
    assert!(split >= 2, "64 MiB asked in {split} requests");

    // A range inside one extent, not starting at zero.
    let inner = c.block_status(BASE_ALLOCATION, 2 * MIB, 512 * KIB).unwrap();
    assert_eq!(inner.len(), 1);
    assert_eq!(
        (
            inner[0].offset,
            inner[0].length,
            inner[0].flags & STATE_ZERO
        ),
        (2 * MIB, 512 * KIB, 0)
    );

    let disk = NbdDisk::new(c);
    assert_eq!(
        disk.allocated().unwrap(),
        extents(&[(MIB, 3 * MIB), (40 * MIB, 64 * KIB), (63 * MIB, MIB)])
    );
    let mut all = vec![0xeeu8; (64 * MIB) as usize];
    disk.read_at(&mut all, 0).unwrap();
    assert!(all == expected, "the export's bytes differ from qemu-img's");
    // An unaligned read in the middle of the data and one across the end of the zero range.
    let mut small = vec![0u8; 777];
    disk.read_at(&mut small, 3 * MIB + 5).unwrap();
    assert_eq!(small, expected[(3 * MIB + 5) as usize..][..777]);
    disk.read_at(&mut small, 10 * MIB - 100).unwrap();
    assert_eq!(small, expected[(10 * MIB - 100) as usize..][..777]);
    let stats = disk.stats();
    assert_eq!(stats.bytes_read, 64 * MIB + 2 * 777);
    assert!(
        stats.data_bytes_received < 16 * MIB,
        "holes were sent as data: {stats:?}"
    );
    // Past the end: a named error, and the connection still works.
    let e = disk.read_at(&mut small, 64 * MIB - 10).unwrap_err();
    assert!(matches!(e, tern_disk::DiskError::OutOfRange { .. }), "{e}");
    disk.read_at(&mut small, 0).unwrap();
    disk.into_client().disconnect().unwrap();
}

/// A persistent bitmap added after some writes: block status in its context is exactly what
/// was written while it was enabled, and a bitmap the server does not export is a named error.
#[test]
fn dirty_bitmap_names_exactly_the_writes_since_it_was_added() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 256 * MIB);
    qemu_io(&[
        "-c",
        "write -P 0x01 0 32M",
        "-c",
        "write -P 0x02 100M 8M",
        p(&img),
    ]);
    qemu_img(&["bitmap", "--add", p(&img), "tern-test"]);
    qemu_io(&[
        "-c",
        "write -P 0xab 4M 512k",
        "-c",
        "write -P 0xab 101M 64k",
        "-c",
        "write -P 0xab 200M 3M",
        "-c",
        "write -P 0xab 255M 1M",
        p(&img),
    ]);
    let expected = raw_bytes(&img, dir.path());
    let sock = dir.path().join("nbd.sock");
    let _server = qemu_nbd(&img, &sock, &["--bitmap", "tern-test"]);
    let ctx = dirty_bitmap_context("tern-test");
    let mut c = connect(&sock, &[BASE_ALLOCATION, &ctx, "qemu:dirty-bitmap:other"]);
    assert!(c.context_id(&ctx).is_some());
    assert!(c.context_id("qemu:dirty-bitmap:other").is_none());
    let dirty = c.block_status(&ctx, 0, 256 * MIB).unwrap();
    assert_eq!(
        select(&dirty, |f| f & STATE_DIRTY != 0),
        extents(&[
            (4 * MIB, 512 * KIB),
            (101 * MIB, 64 * KIB),
            (200 * MIB, 3 * MIB),
            (255 * MIB, MIB)
        ])
    );
    // The dirty extents read back as what qemu-io wrote.
    let mut buf = vec![0u8; (3 * MIB) as usize];
    c.read(200 * MIB, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xab));
    assert_eq!(buf, expected[(200 * MIB) as usize..][..(3 * MIB) as usize]);
    let e = c
        .block_status("qemu:dirty-bitmap:other", 0, MIB)
        .unwrap_err();
    assert!(matches!(e, NbdError::NoMetaContext(_)), "{e}");
    // Allocation and the bitmap are independent contexts of one connection.
    let alloc = c.block_status(BASE_ALLOCATION, 0, 256 * MIB).unwrap();
    assert_eq!(
        select(&alloc, |f| f & STATE_ZERO == 0),
        extents(&[
            (0, 32 * MIB),
            (100 * MIB, 8 * MIB),
            (200 * MIB, 3 * MIB),
            (255 * MIB, MIB)
        ])
    );
    c.disconnect().unwrap();
}

/// qemu-storage-daemon over TCP, once with structured replies and once without (simple
/// replies): both read the image's bytes; without structured replies no meta context can be
/// had.
#[test]
fn storage_daemon_over_tcp_with_and_without_structured_replies() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 16 * MIB);
    qemu_io(&[
        "-c",
        "write -P 0x5a 3M 2M",
        "-c",
        "write -P 0x6b 15M 1M",
        p(&img),
    ]);
    let expected = raw_bytes(&img, dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("qemu-storage-daemon")
        .args([
            "--blockdev",
            &format!(
                "driver=file,filename={},node-name=file0,read-only=on",
                p(&img)
            ),
            "--blockdev",
            "driver=qcow2,file=file0,node-name=disk0,read-only=on",
            "--nbd-server",
            &format!("addr.type=inet,addr.host=127.0.0.1,addr.port={port}"),
            "--export",
            "type=nbd,id=e0,node-name=disk0,name=disk",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon runs");
    let _server = Server(child);
    let addr = format!("127.0.0.1:{port}");
    for structured in [true, false] {
        let opts = ConnectOptions {
            export: "disk".into(),
            structured_replies: structured,
            ..ConnectOptions::default()
        };
        let mut c = until(Duration::from_secs(20), Duration::from_millis(20), || {
            Client::connect_tcp(&addr, &opts).ok()
        })
        .expect("qemu-storage-daemon answers");
        assert_eq!(c.structured_replies(), structured);
        let mut all = vec![0u8; (16 * MIB) as usize];
        c.read(0, &mut all).unwrap();
        assert!(all == expected);
        let s = c.stats();
        if structured {
            assert!(s.data_bytes_received < 8 * MIB, "{s:?}");
        } else {
            assert_eq!(s.data_bytes_received, 16 * MIB);
        }
        c.disconnect().unwrap();
    }
    let e = Client::connect_tcp(
        &addr,
        &ConnectOptions {
            export: "disk".into(),
            structured_replies: false,
            meta_contexts: vec![BASE_ALLOCATION.into()],
            ..ConnectOptions::default()
        },
    )
    .err()
    .expect("meta contexts without structured replies are refused");
    assert!(matches!(e, NbdError::Unsupported(_)), "{e}");
    let e = Client::connect_tcp(
        &addr,
        &ConnectOptions {
            export: "no-such-export".into(),
            ..ConnectOptions::default()
        },
    )
    .err()
    .expect("an unknown export is refused");
    assert!(
        matches!(
            &e,
            NbdError::OptionRefused {
                option: "NBD_OPT_GO",
                ..
            }
        ),
        "{e}"
    );
}
