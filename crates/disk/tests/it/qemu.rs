//! Every reader and writer checked against `qemu-img`, a tool nobody here wrote: images are
//! built by qemu-img in each format and variant, and our raw output must be byte-identical to
//! `qemu-img convert -O raw` of the same image.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, RngCore, SeedableRng};
use tern_disk::{open, write, Format, OpenOptions, VirtualDisk};
use tern_test_support::qemu::{p, qemu_img};
use tern_test_support::run;

const MIB: u64 = 1 << 20;

/// A raw disk of `size` bytes: random data runs, runs of explicit zeros and holes, with a
/// partition-table-like first sector so it is not all noise.
fn make_raw(path: &Path, size: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size as usize];
    let runs = (size / MIB) * 3;
    for _ in 0..runs {
        let len = rng.random_range(1..=200_000usize);
        let at = rng.random_range(0..size as usize - len);
        if rng.random_bool(0.8) {
            rng.fill_bytes(&mut data[at..at + len]);
        } else {
            data[at..at + len].fill(0);
        }
    }
    // Compressible text in one place so compressed formats have something to shrink.
    let text = b"tern disk engine test pattern ";
    let at = (size / 3) as usize;
    for (i, b) in data[at..at + 300_000].iter_mut().enumerate() {
        *b = text[i % text.len()];
    }
    // The last sector too, to catch off-by-one at the end.
    let n = data.len();
    data[n - 100..].fill(0xab);
    std::fs::write(path, &data).expect("write raw source");
}

fn our_raw(img: &Path, opts: &OpenOptions, out: &Path) -> Box<dyn VirtualDisk> {
    let disk = open(img, opts).unwrap_or_else(|e| panic!("open {}: {e}", img.display()));
    write::write_raw(disk.as_ref(), out, &tern_disk::no_progress).expect("write raw");
    disk
}

/// Converts with both qemu-img and us and requires identical bytes.
fn assert_same_as_qemu(
    img: &Path,
    expect: Format,
    opts: &OpenOptions,
    dir: &Path,
) -> Box<dyn VirtualDisk> {
    let theirs = dir.join("theirs.raw");
    let ours = dir.join("ours.raw");
    // Always name the format: qemu-img probes a fixed VHD as raw (its footer is at the end).
    let qfmt = match expect {
        Format::Raw => "raw",
        Format::Qcow2 => "qcow2",
        Format::Vmdk => "vmdk",
        Format::Vhd => "vpc",
        Format::Vhdx => "vhdx",
    };
    qemu_img(&["convert", "-f", qfmt, "-O", "raw", p(img), p(&theirs)]);
    let disk = our_raw(img, opts, &ours);
    assert_eq!(
        disk.format(),
        expect,
        "detected format of {}",
        img.display()
    );
    let a = std::fs::read(&theirs).expect("read qemu output");
    let b = std::fs::read(&ours).expect("read our output");
    assert_eq!(
        a.len(),
        b.len(),
        "virtual size of {} ({})",
        img.display(),
        disk.variant()
    );
    assert!(
        a == b,
        "content of {} ({}) differs from qemu-img's",
        img.display(),
        disk.variant()
    );
    // Reads at odd offsets and lengths, across unit boundaries, must agree too.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..40 {
        let len = rng.random_range(1..300_000usize).min(a.len());
        let at = rng.random_range(0..=a.len() - len);
        let mut buf = vec![0u8; len];
        disk.read_at(&mut buf, at as u64).expect("read_at");
        assert!(
            buf == a[at..at + len],
            "read_at({at}, {len}) of {}",
            img.display()
        );
    }
    // Nothing outside the allocated extents may be non-zero.
    let ext = disk.allocated().expect("allocated");
    let mut pos = 0usize;
    for e in ext.iter().chain(std::iter::once(&tern_disk::Extent {
        offset: a.len() as u64,
        length: 0,
    })) {
        assert!(
            tern_disk::is_zero(&a[pos..e.offset as usize]),
            "non-zero data outside allocated extents"
        );
        pos = e.end() as usize;
    }
    disk
}

struct Case {
    dir: tempfile::TempDir,
    src: PathBuf,
}

fn case(size: u64, seed: u64) -> Case {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src.raw");
    make_raw(&src, size, seed);
    Case { dir, src }
}

impl Case {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn convert(&self, fmt: &str, opts: &[&str], name: &str) -> PathBuf {
        let out = self.path(name);
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        args.extend_from_slice(opts);
        args.push(p(&self.src));
        args.push(p(&out));
        qemu_img(&args);
        out
    }
    fn check(&self, img: &Path, expect: Format) -> Box<dyn VirtualDisk> {
        assert_same_as_qemu(img, expect, &OpenOptions::default(), self.dir.path())
    }
}

#[test]
fn raw_reads_as_itself() {
    let c = case(5 * MIB + 512, 1);
    c.check(&c.src, Format::Raw);
}

#[test]
fn qcow2_versions_and_cluster_sizes() {
    let c = case(9 * MIB, 2);
    for (compat, cluster) in [
        ("0.10", "65536"),
        ("1.1", "512"),
        ("1.1", "4096"),
        ("1.1", "65536"),
        ("1.1", "2M"),
        ("0.10", "4096"),
    ] {
        let img = c.convert(
            "qcow2",
            &["-o", &format!("compat={compat},cluster_size={cluster}")],
            "a.qcow2",
        );
        let d = c.check(&img, Format::Qcow2);
        assert!(d
            .variant()
            .starts_with(if compat == "0.10" { "v2" } else { "v3" }));
    }
}

#[test]
fn qcow2_compressed_deflate_and_zstd() {
    let c = case(7 * MIB, 3);
    for opts in [
        "compression_type=zlib,cluster_size=65536",
        "compression_type=zstd,cluster_size=65536",
        "compression_type=zlib,cluster_size=4096",
        "compression_type=zstd,cluster_size=2M",
        "compat=0.10,cluster_size=16384",
    ] {
        let img = c.convert("qcow2", &["-c", "-o", opts], "c.qcow2");
        c.check(&img, Format::Qcow2);
    }
}

#[test]
fn qcow2_zero_clusters_and_subclusters() {
    let c = case(6 * MIB, 4);
    for opts in [
        "cluster_size=65536",
        "extended_l2=on,cluster_size=65536",
        "extended_l2=on,cluster_size=2M",
    ] {
        let img = c.convert("qcow2", &["-o", opts], "z.qcow2");
        // Zero-write over data (zero clusters / zero subclusters), and small writes that
        // allocate single subclusters.
        run(Command::new("qemu-io").args([
            "-f",
            "qcow2",
            "-c",
            "write -z 1M 1M",
            "-c",
            "write -z 3M 8k",
            "-c",
            "write -P 0x5a 4100k 3k",
            "-c",
            "write -z 5M 64k",
            p(&img),
        ]));
        c.check(&img, Format::Qcow2);
    }
}

#[test]
fn qcow2_backing_chain_given_explicitly() {
    let c = case(6 * MIB, 5);
    let base = c.convert("qcow2", &[], "base.qcow2");
    let mid = c.path("mid.qcow2");
    let top = c.path("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        p(&base),
        "-F",
        "qcow2",
        p(&mid),
    ]);
    run(Command::new("qemu-io").args([
        "-f",
        "qcow2",
        "-c",
        "write -P 0x11 1M 300k",
        "-c",
        "write -z 2M 64k",
        p(&mid),
    ]));
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        p(&mid),
        "-F",
        "qcow2",
        "-o",
        "cluster_size=4096",
        p(&top),
        "8M",
    ]);
    run(Command::new("qemu-io").args([
        "-f",
        "qcow2",
        "-c",
        "write -P 0x22 1100k 10k",
        "-c",
        "write -P 0x33 7M 4k",
        p(&top),
    ]));

    // Never followed on its own.
    let err = open(&top, &OpenOptions::default())
        .err()
        .expect("backing file must be refused");
    assert!(err.to_string().contains("backing"), "{err}");

    let opts = OpenOptions {
        format: None,
        backing_chain: vec![mid.clone(), base.clone()],
    };
    assert_same_as_qemu(&top, Format::Qcow2, &opts, c.dir.path());
}

#[test]
fn vmdk_all_subformats() {
    let c = case(8 * MIB, 6);
    for sub in [
        "monolithicSparse",
        "streamOptimized",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ] {
        let sub_dir = c.path(sub);
        std::fs::create_dir_all(&sub_dir).expect("mkdir");
        let img = sub_dir.join("d.vmdk");
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            p(&c.src),
            p(&img),
        ]);
        let d = c.check(&img, Format::Vmdk);
        assert_eq!(d.variant(), sub);
    }
}

#[test]
fn vmdk_two_gb_extents_span_several_files() {
    // 4.5 GiB virtual, data only near the extent boundaries: three extent files.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("big.raw");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&src)
        .expect("create");
    let size = 4 * 1024 * MIB + 512 * MIB;
    f.set_len(size).expect("set_len");
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut chunk = vec![0u8; 3 * MIB as usize];
    for at in [0, 2047 * MIB, 4095 * MIB, size - 3 * MIB] {
        rng.fill_bytes(&mut chunk);
        std::os::unix::fs::FileExt::write_all_at(&f, &chunk, at).expect("write");
    }
    for sub in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let img = dir.path().join(format!("{sub}.vmdk"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            p(&src),
            p(&img),
        ]);
        let disk = open(&img, &OpenOptions::default()).expect("open");
        assert_eq!(disk.size(), size);
        let mut a = vec![0u8; 3 * MIB as usize];
        let mut b = vec![0u8; 3 * MIB as usize];
        for at in [
            0,
            2047 * MIB,
            2048 * MIB - 1000,
            4095 * MIB,
            3000 * MIB,
            size - 3 * MIB,
        ] {
            disk.read_at(&mut a, at).expect("read");
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).expect("read src");
            assert!(a == b, "{sub}: 3 MiB at {at}");
        }
    }
}

#[test]
fn vmdk_extent_outside_folder_is_refused() {
    let c = case(2 * MIB, 9);
    let inner = c.path("inner");
    std::fs::create_dir_all(&inner).expect("mkdir");
    let desc = inner.join("evil.vmdk");
    std::fs::write(&desc, "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 4096 FLAT \"../src.raw\" 0\n").expect("write");
    let err = open(&desc, &OpenOptions::default())
        .err()
        .expect("must refuse");
    assert!(
        err.to_string().contains("inside the descriptor's folder"),
        "{err}"
    );
    std::fs::write(
        &desc,
        "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 4096 FLAT \"/etc/passwd\" 0\n",
    )
    .expect("write");
    assert!(open(&desc, &OpenOptions::default()).is_err());
    std::os::unix::fs::symlink(&c.src, inner.join("link.raw")).expect("symlink");
    std::fs::write(
        &desc,
        "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 4096 FLAT \"link.raw\" 0\n",
    )
    .expect("write");
    let err = open(&desc, &OpenOptions::default())
        .err()
        .expect("must refuse symlink out");
    assert!(
        err.to_string().contains("outside the descriptor's folder"),
        "{err}"
    );
}

#[test]
fn vhd_fixed_and_dynamic() {
    let c = case(10 * MIB, 10);
    for opts in [
        "subformat=dynamic",
        "subformat=fixed",
        "subformat=dynamic,force_size=on",
        "subformat=fixed,force_size=on",
    ] {
        let img = c.convert("vpc", &["-o", opts], "d.vhd");
        let d = c.check(&img, Format::Vhd);
        assert!(opts.contains(&d.variant()), "{opts} vs {}", d.variant());
    }
}

/// Rewrites the VHD footer's disk type and checksum.
fn set_vhd_type(path: &Path, disk_type: u32) {
    let mut data = std::fs::read(path).expect("read");
    let n = data.len();
    for off in [0, n - 512] {
        if &data[off..off + 8] != b"conectix" {
            continue;
        }
        let f = &mut data[off..off + 512];
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        f[64..68].fill(0);
        let sum: u32 = f.iter().map(|&b| b as u32).sum();
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    }
    std::fs::write(path, data).expect("write");
}

#[test]
fn vhd_differencing_is_refused() {
    let c = case(2 * MIB, 11);
    let img = c.convert("vpc", &["-o", "subformat=dynamic"], "diff.vhd");
    set_vhd_type(&img, 4);
    let err = open(&img, &OpenOptions::default())
        .err()
        .expect("differencing must be refused");
    assert!(err.to_string().contains("differencing"), "{err}");
}

#[test]
fn vhdx_fixed_dynamic_block_sizes() {
    let c = case(12 * MIB, 12);
    for opts in [
        "subformat=dynamic",
        "subformat=dynamic,block_size=1M",
        "subformat=dynamic,block_size=8M",
        "subformat=dynamic,block_size=256M",
        "subformat=fixed",
        "subformat=fixed,block_size=2M",
    ] {
        let img = c.convert("vhdx", &["-o", opts], "d.vhdx");
        let d = c.check(&img, Format::Vhdx);
        assert!(
            d.variant().contains(if opts.contains("fixed") {
                "fixed"
            } else {
                "dynamic"
            }),
            "{}",
            d.variant()
        );
    }
}

fn guid_bytes(s: &str) -> Vec<u8> {
    let h: Vec<u8> = (0..16)
        .map(|i| {
            let hex: String = s.chars().filter(|c| *c != '-').collect();
            u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).expect("hex")
        })
        .collect();
    [h[3], h[2], h[1], h[0], h[5], h[4], h[7], h[6]]
        .into_iter()
        .chain(h[8..].iter().copied())
        .collect()
}

/// Patches the logical sector size metadata item of a qemu-made VHDX (metadata has no checksum).
fn set_vhdx_logical_sector(path: &Path, size: u32) {
    let mut data = std::fs::read(path).expect("read");
    let want = guid_bytes("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
    let meta_id = guid_bytes("8B7CA206-4790-4B9A-B8FE-575F050F886E");
    let rt = 192 * 1024;
    let count = u32::from_le_bytes(data[rt + 8..rt + 12].try_into().unwrap()) as usize;
    let meta = (0..count)
        .map(|i| rt + 16 + i * 32)
        .find(|&e| data[e..e + 16] == meta_id[..])
        .expect("metadata region");
    let meta_off = u64::from_le_bytes(data[meta + 16..meta + 24].try_into().unwrap()) as usize;
    let entries =
        u16::from_le_bytes(data[meta_off + 10..meta_off + 12].try_into().unwrap()) as usize;
    let e = (0..entries)
        .map(|i| meta_off + 32 + i * 32)
        .find(|&e| data[e..e + 16] == want[..])
        .expect("lss item");
    let item = meta_off + u32::from_le_bytes(data[e + 16..e + 20].try_into().unwrap()) as usize;
    data[item..item + 4].copy_from_slice(&size.to_le_bytes());
    std::fs::write(path, data).expect("write");
}

#[test]
fn vhdx_4096_byte_logical_sectors() {
    // qemu-img neither writes nor reads 4096-byte logical sectors, so the image is made by qemu
    // with 512-byte sectors and relabelled; below 4 GiB the payload layout is the same, and the
    // content must still be the source's.
    let c = case(12 * MIB, 13);
    let src = std::fs::read(&c.src).expect("read src");
    for opts in ["subformat=dynamic,block_size=1M", "subformat=fixed"] {
        let img = c.convert("vhdx", &["-o", opts], "s.vhdx");
        set_vhdx_logical_sector(&img, 4096);
        let out = c.path("s.raw");
        let d = our_raw(&img, &OpenOptions::default(), &out);
        assert!(d.variant().contains("4096-byte"), "{}", d.variant());
        assert!(
            std::fs::read(&out).expect("read") == src,
            "content of {opts}"
        );
    }
}

#[test]
fn vhdx_crossing_sector_bitmap_entries() {
    // With 1 MiB blocks and 512-byte sectors, a sector bitmap entry sits in the BAT after every
    // 4096 payload blocks (4 GiB): data past 4 GiB is found only if the interleave is right.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("big.raw");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&src)
        .expect("create");
    let size = 9 * 1024 * MIB;
    f.set_len(size).expect("set_len");
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut chunk = vec![0u8; 2 * MIB as usize];
    let spots = [
        0,
        4096 * MIB - MIB,
        4096 * MIB,
        8192 * MIB + 5 * MIB,
        size - 2 * MIB,
    ];
    for at in spots {
        rng.fill_bytes(&mut chunk);
        std::os::unix::fs::FileExt::write_all_at(&f, &chunk, at).expect("write");
    }
    let img = dir.path().join("big.vhdx");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vhdx",
        "-o",
        "subformat=dynamic,block_size=1M",
        p(&src),
        p(&img),
    ]);
    let disk = open(&img, &OpenOptions::default()).expect("open");
    assert_eq!(disk.size(), size);
    let mut a = vec![0u8; 2 * MIB as usize];
    let mut b = vec![0u8; 2 * MIB as usize];
    for at in spots.into_iter().chain([6000 * MIB]) {
        disk.read_at(&mut a, at).expect("read");
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).expect("read src");
        assert!(a == b, "2 MiB at {at}");
    }
    let allocated: u64 = disk
        .allocated()
        .expect("allocated")
        .iter()
        .map(|e| e.length)
        .sum();
    assert!(
        allocated <= 16 * MIB,
        "only the written blocks are allocated, got {allocated}"
    );
}

#[test]
fn vhdx_dirty_log_is_refused() {
    let c = case(2 * MIB, 15);
    let img = c.convert("vhdx", &[], "dirty.vhdx");
    let mut data = std::fs::read(&img).expect("read");
    for off in [64 * 1024usize, 128 * 1024] {
        let h = &mut data[off..off + 4096];
        h[48..64].copy_from_slice(&[0x42; 16]);
        h[4..8].fill(0);
        let crc = crc32c_sw(h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
    }
    std::fs::write(&img, data).expect("write");
    let err = open(&img, &OpenOptions::default())
        .err()
        .expect("dirty log must be refused");
    assert!(err.to_string().contains("log"), "{err}");
}

/// CRC-32C, bit by bit: independent of the crate under test.
fn crc32c_sw(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn stream_optimized_vmdk_we_write_is_identical_for_qemu() {
    let c = case(11 * MIB + 4096, 16);
    for (name, src) in [
        ("from-raw", c.src.clone()),
        ("from-qcow2", c.convert("qcow2", &["-c"], "s.qcow2")),
    ] {
        let disk = open(&src, &OpenOptions::default()).expect("open");
        let out = c.path(&format!("{name}.vmdk"));
        let f = std::fs::File::create(&out).expect("create");
        write::write_vmdk_stream(
            disk.as_ref(),
            std::io::BufWriter::new(f),
            "out.vmdk",
            &tern_disk::no_progress,
        )
        .expect("write vmdk");
        let cmp = qemu_img(&["compare", "-f", "vmdk", "-F", "raw", p(&out), p(&c.src)]);
        assert!(cmp.contains("identical"), "{cmp}");
        let info = qemu_img(&["info", "--output=json", p(&out)]);
        assert!(
            info.contains("\"create-type\": \"streamOptimized\""),
            "{info}"
        );
        // Compressed: the random data is not smaller, but zero grains are gone and text shrinks.
        let ours = open(&out, &OpenOptions::default()).expect("reopen ours");
        assert_eq!(ours.variant(), "streamOptimized");
        assert!(std::fs::metadata(&out).unwrap().len() < std::fs::metadata(&c.src).unwrap().len());
        c.check(&out, Format::Vmdk);
    }
}

#[test]
fn detection_ignores_file_names_and_format_can_be_stated() {
    let c = case(2 * MIB, 17);
    let img = c.convert("qcow2", &[], "looks-like.vmdk");
    assert_eq!(tern_disk::detect(&img).expect("detect"), Format::Qcow2);
    let opts = OpenOptions {
        format: Some(Format::Raw),
        ..Default::default()
    };
    let d = open(&img, &opts).expect("open as raw");
    assert_eq!(d.format(), Format::Raw);
    assert_eq!(d.size(), std::fs::metadata(&img).unwrap().len());
}

#[test]
fn qcow2_we_write_is_clean_and_identical_for_qemu() {
    let c = case(13 * MIB + 512, 18);
    let src = c.convert("vhdx", &[], "s.vhdx");
    let disk = open(&src, &OpenOptions::default()).expect("open");
    let out = c.path("out.qcow2");
    write::write_qcow2(disk.as_ref(), &out, &tern_disk::no_progress).expect("write qcow2");
    let check = qemu_img(&["check", "-f", "qcow2", p(&out)]);
    assert!(check.contains("No errors were found"), "{check}");
    let cmp = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", p(&out), p(&c.src)]);
    assert!(cmp.contains("identical"), "{cmp}");
    c.check(&out, Format::Qcow2);
    // Small clusters: a refcount block then covers only 256 clusters, so the image needs many
    // refcount blocks and a multi-cluster refcount table; qemu-img check must still be clean.
    for bits in [9, 12, 21] {
        write::write_qcow2_with_clusters(disk.as_ref(), &out, bits, &tern_disk::no_progress)
            .expect("write qcow2");
        let check = qemu_img(&["check", "-f", "qcow2", p(&out)]);
        assert!(
            check.contains("No errors were found"),
            "cluster_bits {bits}: {check}"
        );
        c.check(&out, Format::Qcow2);
    }
}

#[test]
fn vhd_sector_bitmap_is_honoured() {
    // Hyper-V leaves sectors of an allocated block absent (bitmap bit clear); they read as
    // zeros whatever the block's data area holds. qemu-img always sets every bit, so the image
    // is made by qemu and one bit is cleared by hand.
    let c = case(4 * MIB, 19);
    let mut src = std::fs::read(&c.src).expect("read src");
    src[..8 * 512]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 251) as u8 | 1);
    std::fs::write(&c.src, &src).expect("write src");
    let img = c.convert("vpc", &["-o", "subformat=dynamic"], "b.vhd");
    let mut data = std::fs::read(&img).expect("read");
    let n = data.len();
    let footer = &data[n - 512..];
    let hdr = u64::from_be_bytes(footer[16..24].try_into().unwrap()) as usize;
    let bat = u64::from_be_bytes(data[hdr + 16..hdr + 24].try_into().unwrap()) as usize;
    let block0 = u32::from_be_bytes(data[bat..bat + 4].try_into().unwrap());
    assert_ne!(block0, u32::MAX, "block 0 allocated");
    let bitmap = block0 as usize * 512;
    data[bitmap] &= !0x10; // sector 3 of block 0
    std::fs::write(&img, &data).expect("write");
    let disk = open(&img, &OpenOptions::default()).expect("open");
    let mut buf = vec![0u8; 8 * 512];
    disk.read_at(&mut buf, 0).expect("read");
    assert!(
        buf[3 * 512..4 * 512].iter().all(|&b| b == 0),
        "absent sector reads as zeros"
    );
    assert_eq!(&buf[..3 * 512], &src[..3 * 512]);
    assert_eq!(&buf[4 * 512..], &src[4 * 512..8 * 512]);
}
