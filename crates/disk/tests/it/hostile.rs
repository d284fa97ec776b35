//! Malformed and hostile images: each must give an error naming the format and structure,
//! never a panic, a hang, or an allocation the file does not justify.

use std::path::Path;

use tern_disk::{open, write, Format, OpenOptions};

fn try_open_and_read(path: &Path, format: Option<Format>) -> Result<(), String> {
    let disk = open(
        path,
        &OpenOptions {
            format,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let _ = disk.allocated().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; (disk.size().min(1 << 20)) as usize];
    disk.read_at(&mut buf, 0).map_err(|e| e.to_string())?;
    Ok(())
}

fn with_file(bytes: &[u8], name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).expect("write");
    (dir, p)
}

fn qcow2_header(size: u64, cluster_bits: u32, l1_size: u32, l1_off: u64) -> Vec<u8> {
    let mut h = vec![0u8; 4096];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&l1_size.to_be_bytes());
    h[40..48].copy_from_slice(&l1_off.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    h
}

#[test]
fn qcow2_huge_sizes_and_bad_offsets() {
    // 1 EiB virtual size with an L1 table that the 4 KiB file cannot hold.
    let (_d, p) = with_file(&qcow2_header(1 << 60, 16, 1 << 30, 512), "a");
    let e = try_open_and_read(&p, None).unwrap_err();
    assert!(e.contains("qcow2") && e.contains("L1"), "{e}");
    // cluster_bits out of range.
    let (_d, p) = with_file(&qcow2_header(1 << 20, 40, 1, 512), "b");
    assert!(try_open_and_read(&p, None)
        .unwrap_err()
        .contains("cluster_bits"));
    // L1 entry pointing past the end of the file.
    let mut h = qcow2_header(1 << 20, 16, 1, 1024);
    h[1024..1032].copy_from_slice(&(1u64 << 40).to_be_bytes());
    let (_d, p) = with_file(&h, "c");
    let e = try_open_and_read(&p, None).unwrap_err();
    assert!(e.contains("qcow2") && e.contains("L2 table"), "{e}");
    // L2 entry pointing at a compressed cluster full of garbage.
    let mut h = qcow2_header(1 << 16, 12, 1, 1024);
    h.resize(16384, 0xee);
    h[1024..1032].copy_from_slice(&8192u64.to_be_bytes());
    h[8192..12288].fill(0);
    let entry: u64 = (1 << 62) | 12288;
    h[8192..8200].copy_from_slice(&entry.to_be_bytes());
    let (_d, p) = with_file(&h, "d");
    let e = try_open_and_read(&p, None).unwrap_err();
    assert!(e.contains("compressed cluster"), "{e}");
    // Truncated header.
    let (_d, p) = with_file(b"QFI\xfb\0\0\0\x03", "e");
    assert!(try_open_and_read(&p, None).unwrap_err().contains("qcow2"));
}

#[test]
fn vmdk_hostile_headers() {
    let mut h = vec![0u8; 2048];
    h[..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&1u32.to_le_bytes());
    h[12..20].copy_from_slice(&(1u64 << 39).to_le_bytes()); // capacity
    h[20..28].copy_from_slice(&128u64.to_le_bytes()); // grain
    h[44..48].copy_from_slice(&512u32.to_le_bytes());
    h[56..64].copy_from_slice(&1u64.to_le_bytes()); // gd at sector 1
    let (_d, p) = with_file(&h, "a.vmdk");
    let e = try_open_and_read(&p, None).unwrap_err();
    assert!(e.contains("vmdk") && e.contains("grain directory"), "{e}");
    // Stream-optimized without its footer (truncated upload).
    h[12..20].copy_from_slice(&2048u64.to_le_bytes());
    h[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    let (_d, p) = with_file(&h, "b.vmdk");
    let e = try_open_and_read(&p, None).unwrap_err();
    assert!(e.contains("vmdk") && e.contains("footer"), "{e}");
    // A descriptor naming a missing extent.
    let (_d, p) = with_file(
        b"# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 100 FLAT \"nothere.raw\" 0\n",
        "c.vmdk",
    );
    assert!(try_open_and_read(&p, None)
        .unwrap_err()
        .contains("nothere.raw"));
    // A delta disk.
    let (_d, p) = with_file(
        b"# Disk DescriptorFile\nparentCID=12345678\ncreateType=\"monolithicSparse\"\n",
        "d.vmdk",
    );
    assert!(try_open_and_read(&p, None).unwrap_err().contains("parent"));
}

#[test]
fn vhd_and_vhdx_hostile_headers() {
    // A VHD footer claiming a dynamic disk with a BAT far past the end.
    let mut f = vec![0u8; 512];
    f[..8].copy_from_slice(b"conectix");
    f[16..24].copy_from_slice(&(1u64 << 50).to_be_bytes());
    f[48..56].copy_from_slice(&(1u64 << 40).to_be_bytes());
    f[60..64].copy_from_slice(&3u32.to_be_bytes());
    let sum: u32 = f.iter().map(|&b| b as u32).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    let (_d, p) = with_file(&f, "a.vhd");
    let e = try_open_and_read(&p, None).unwrap_err();
    assert!(
        e.contains("vhd") && e.contains("dynamic disk header"),
        "{e}"
    );
    // Bad checksum.
    f[100] = 1;
    let (_d, p) = with_file(&f, "b.vhd");
    assert!(try_open_and_read(&p, None)
        .unwrap_err()
        .contains("checksum"));
    // A VHDX signature and nothing else.
    let mut x = vec![0u8; 2 << 20];
    x[..8].copy_from_slice(b"vhdxfile");
    let (_d, p) = with_file(&x, "c.vhdx");
    let e = try_open_and_read(&p, None).unwrap_err();
    assert!(e.contains("vhdx") && e.contains("header"), "{e}");
    let (_d, p) = with_file(b"vhdxfile", "d.vhdx");
    assert!(try_open_and_read(&p, None).unwrap_err().contains("vhdx"));
}

#[test]
fn truncated_qemu_images_fail_cleanly() {
    // Real images cut short at many points: errors or zeros, never panics.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src.raw");
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).expect("write");
    for (fmt, opts) in [
        ("qcow2", "cluster_size=4096"),
        ("vmdk", "subformat=streamOptimized"),
        ("vmdk", "subformat=monolithicSparse"),
        ("vpc", "subformat=dynamic"),
        ("vhdx", "subformat=dynamic"),
    ] {
        let img = dir.path().join(format!("img.{fmt}"));
        let st = std::process::Command::new("qemu-img")
            .args([
                "convert",
                "-f",
                "raw",
                "-O",
                fmt,
                "-o",
                opts,
                src.to_str().unwrap(),
                img.to_str().unwrap(),
            ])
            .status()
            .expect("qemu-img");
        assert!(st.success());
        let full = std::fs::read(&img).expect("read");
        for cut in [
            full.len() / 7,
            full.len() / 3,
            full.len() / 2,
            full.len() - 1,
        ] {
            let t = dir.path().join("cut");
            std::fs::write(&t, &full[..cut]).expect("write");
            if let Ok(d) = open(&t, &OpenOptions::default()) {
                let out = dir.path().join("cut.raw");
                let _ = write::write_raw(d.as_ref(), &out, &tern_disk::no_progress);
            }
        }
    }
}

#[test]
fn qcow2_shared_l2_tables_and_absurd_sizes_are_refused() {
    // Two L1 entries naming the same L2 table: a table walk would repeat without end.
    let mut h = qcow2_header(1 << 30, 16, 2, 1024);
    h.resize(3 * 65536, 0);
    h[1024..1032].copy_from_slice(&65536u64.to_be_bytes());
    h[1032..1040].copy_from_slice(&65536u64.to_be_bytes());
    let (_d, p) = with_file(&h, "a");
    let e = try_open_and_read(&p, None).unwrap_err();
    assert!(e.contains("same L2 table"), "{e}");
    // 1 PiB declared with a consistent L1 table: larger than any EBS volume.
    let mut h = qcow2_header(1 << 50, 21, 2048, 4096);
    h.resize(4096 + 2048 * 8, 0);
    let (_d, p) = with_file(&h, "b");
    let e = try_open_and_read(&p, None).unwrap_err();
    assert!(e.contains("64 TiB"), "{e}");
}

#[test]
fn in_memory_images_never_open_other_files() {
    let desc =
        b"# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"Cargo.toml\" 0\n"
            .to_vec();
    let e = tern_disk::open_bytes(desc, &OpenOptions::default())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("in-memory"), "{e}");
    // The same bytes a fuzzer would feed work through the same entry point without panicking.
    tern_disk::fuzzing::image(&[0u8; 10]);
}

/// Inputs that once crashed or hung a fuzz target, replayed on every test run.
#[test]
fn fuzz_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let targets = [
        ("image", tern_disk::fuzzing::image as fn(&[u8])),
        ("blockmap", tern_disk::fuzzing::blockmap),
        ("delta", tern_disk::fuzzing::delta),
    ];
    let mut replayed = 0;
    for entry in std::fs::read_dir(&root).expect("tests/fuzz-regressions") {
        let dir = entry.expect("dir entry").path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        // A finding saved under a folder no target reads would silently never be replayed.
        let (_, f) = targets
            .iter()
            .find(|(t, _)| *t == name)
            .unwrap_or_else(|| panic!("{} names no fuzz target", dir.display()));
        for input in std::fs::read_dir(&dir).expect("target folder") {
            let path = input.expect("dir entry").path();
            if path.is_file() {
                f(&std::fs::read(&path).expect("read input"));
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 2, "only {replayed} saved findings replayed");
}

/// An image stored inside another file (a disk inside an OVA) reads as that image, and ranges
/// that leave the file or descriptors that reference other files are refused.
#[test]
fn image_in_a_file_range() {
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let disk = tern_disk::open_bytes(data.clone(), &OpenOptions::default()).expect("raw");
    let mut vmdk = Vec::new();
    write::write_vmdk_stream(&*disk, &mut vmdk, "d.vmdk", &tern_disk::no_progress).expect("vmdk");
    // 1000 bytes of something else before, 777 after.
    let mut file = vec![0x5au8; 1000];
    file.extend_from_slice(&vmdk);
    file.extend_from_slice(&[0xa5; 777]);
    let (_d, p) = with_file(&file, "archive");
    let opened =
        tern_disk::open_range(&p, 1000, vmdk.len() as u64, &OpenOptions::default()).expect("open");
    assert_eq!(opened.format(), Format::Vmdk);
    assert_eq!(opened.size(), data.len() as u64);
    let mut back = vec![0u8; data.len()];
    opened.read_at(&mut back, 0).expect("read");
    assert!(
        back == data,
        "the ranged image reads differently from its source"
    );

    let len = file.len() as u64;
    for (offset, length) in [(0, len + 1), (len, 1), (u64::MAX, 2), (1000, u64::MAX)] {
        let e = tern_disk::open_range(&p, offset, length, &OpenOptions::default())
            .err()
            .unwrap_or_else(|| panic!("range {offset}+{length} of a {len}-byte file opened"));
        assert!(e.to_string().contains("past the end"), "{e}");
    }

    let desc = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"other.img\" 0\n";
    let mut file = vec![0u8; 512];
    file.extend_from_slice(desc);
    let (_d, p) = with_file(&file, "with-descriptor");
    let e = tern_disk::open_range(&p, 512, desc.len() as u64, &OpenOptions::default())
        .err()
        .expect("a descriptor inside an archive referencing another file must be refused");
    assert!(
        e.to_string().contains("cannot reference extent files"),
        "{e}"
    );
}

/// Grains whose first 4 KiB compress a little (a short zero run) but whose rest is random: the fast deflate level grows
/// them past the grain size. Our writer stores them instead, and our reader accepts VMDKs from
/// writers that do not (qemu accepts them too).
#[test]
fn vmdk_grains_that_deflate_grows() {
    use rand::{RngCore, SeedableRng};
    let mut data = vec![0u8; 4 << 20];
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for g in data.chunks_mut(64 * 1024) {
        g[..512].fill(0);
        rng.fill_bytes(&mut g[512..]);
    }
    let disk = tern_disk::open_bytes(data.clone(), &OpenOptions::default()).expect("raw");
    let mut vmdk = Vec::new();
    write::write_vmdk_stream(&*disk, &mut vmdk, "d.vmdk", &tern_disk::no_progress).expect("vmdk");
    assert!(
        // Per grain one extra sector (marker and stored-block headers), plus the header and tables.
        (vmdk.len() as u64) <= data.len() as u64 + 64 * 512 + 64 * 1024 + 8192,
        "{} bytes of VMDK for {} bytes of disk",
        vmdk.len(),
        data.len()
    );
    let back = tern_disk::open_bytes(vmdk, &OpenOptions::default()).expect("reopen");
    let mut got = vec![0u8; data.len()];
    back.read_at(&mut got, 0).expect("read");
    assert!(got == data);
}
