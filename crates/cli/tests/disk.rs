//! `tern disk` end to end: the binary on real images made by qemu-img and mkfs, and
//! `tern images`, which exports snapshots through the same writers.

#[cfg(feature = "server")]
mod images;

use std::path::Path;
use std::process::{Command, Output};

use tern_test_support::qemu::qemu_img;

const MIB: usize = 1 << 20;

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("disk")
        .args(args)
        .output()
        .expect("run tern")
}

fn ok(args: &[&str]) -> String {
    let out = tern(args);
    assert!(
        out.status.success(),
        "tern disk {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Piped: no progress bar escape codes may leak into the output.
    assert!(
        !out.stderr.contains(&b'\r'),
        "progress output on a pipe: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// An MBR disk whose first partition holds a real ext4 filesystem, plus some noise.
fn make_disk(dir: &Path) -> std::path::PathBuf {
    let fs = dir.join("fs.img");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(6 * MIB as u64)
        .unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&fs)
        .status()
        .expect("mkfs.ext4");
    assert!(st.success());
    let mut img = vec![0u8; 12 * MIB];
    img[MIB..7 * MIB].copy_from_slice(&std::fs::read(&fs).unwrap());
    let e = &mut img[446..462];
    e[0] = 0x80;
    e[4] = 0x83;
    e[8..12].copy_from_slice(&2048u32.to_le_bytes());
    e[12..16].copy_from_slice(&12288u32.to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
    for (i, b) in img[8 * MIB..9 * MIB + 12345].iter_mut().enumerate() {
        *b = (i * 7 % 253) as u8;
    }
    let p = dir.join("disk.raw");
    std::fs::write(&p, &img).unwrap();
    p
}

#[test]
fn info_reports_format_partitions_and_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_disk(dir.path());
    let vhdx = dir.path().join("disk.vhdx");
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", s(&raw), s(&vhdx)]);
    let text = ok(&["info", s(&vhdx)]);
    assert!(text.contains("vhdx (dynamic"), "{text}");
    assert!(text.contains("MBR"), "{text}");
    assert!(text.contains("ext4"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", s(&vhdx)])).unwrap();
    assert_eq!(json["format"], "vhdx");
    assert_eq!(json["virtual_size"], 12 * MIB);
    assert_eq!(json["partition_table"], "mbr");
    assert_eq!(json["partitions"][0]["filesystem"], "ext4");
    assert_eq!(json["partitions"][0]["bootable"], true);
    assert_eq!(json["partitions"][0]["start"], MIB);
    assert_eq!(json["efi_system_partition"], false);
    // Stating the format overrides detection.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--json", "--format", "raw", s(&vhdx)])).unwrap();
    assert_eq!(json["format"], "raw");
}

#[test]
fn convert_to_every_target_matches_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let raw = make_disk(dir.path());
    let qcow = dir.path().join("in.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-c",
        s(&raw),
        s(&qcow),
    ]);
    for (to, fmt) in [("raw", "raw"), ("vmdk-stream", "vmdk"), ("qcow2", "qcow2")] {
        let out = dir.path().join(format!("out.{to}"));
        ok(&["convert", s(&qcow), s(&out), "--to", to]);
        let cmp = qemu_img(&["compare", "-f", fmt, "-F", "raw", s(&out), s(&raw)]);
        assert!(cmp.contains("identical"), "{to}: {cmp}");
    }
    let raw_out = std::fs::read(dir.path().join("out.raw")).unwrap();
    assert!(raw_out == std::fs::read(&raw).unwrap());
}

#[test]
fn blockmap_delta_apply_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let old = make_disk(dir.path());
    let mut data = std::fs::read(&old).unwrap();
    data[3 * MIB + 17] ^= 0xff; // changes one block
    data[8 * MIB..8 * MIB + 524_288].fill(0); // one block becomes zero
    let new_raw = dir.path().join("new.raw");
    std::fs::write(&new_raw, &data).unwrap();
    let new_vmdk = dir.path().join("new.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        s(&new_raw),
        s(&new_vmdk),
    ]);

    let map = dir.path().join("old.map");
    let out = ok(&["blockmap", s(&old), "-o", s(&map)]);
    assert!(out.contains("24 blocks"), "{out}");
    let delta = dir.path().join("d.delta");
    let next = dir.path().join("new.map");
    let out = ok(&[
        "delta",
        s(&map),
        s(&new_vmdk),
        "-o",
        s(&delta),
        "--new-map",
        s(&next),
    ]);
    assert!(out.starts_with("2 changed blocks (1 now zero)"), "{out}");
    let applied = dir.path().join("applied.raw");
    ok(&["apply", s(&old), s(&delta), "-o", s(&applied)]);
    assert!(std::fs::read(&applied).unwrap() == data);
    // The new map is the base of the next delta: nothing changed since.
    let d2 = dir.path().join("d2.delta");
    let out = ok(&["delta", s(&next), s(&new_raw), "-o", s(&d2)]);
    assert!(out.starts_with("0 changed blocks"), "{out}");
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.qcow2");
    std::fs::write(&bogus, b"QFI\xfb\0\0\0\x09 garbage").unwrap();
    let out = tern(&["info", s(&bogus)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("qcow2") && err.contains("header"), "{err}");
    let out = tern(&[
        "delta",
        s(&bogus),
        s(&bogus),
        "-o",
        s(&dir.path().join("x")),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("block map"));
    let out = tern(&["info", s(&dir.path().join("missing.vmdk"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.vmdk"));
}
