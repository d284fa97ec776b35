//! OVA archives built here with the tar crate: listing, in-place reads, replication, and
//! archives that lie.

use std::path::Path;

use tern_connector::ova::{self, OvaError};
use tern_connector::replicate::{self, DiskSource, ReplicateContext, ReplicateOptions, Staging};

use crate::support::*;

const MIB: u64 = 1 << 20;

fn ovf(disks: &[(&str, u64, &str)], files: &[(&str, &str, u64)]) -> String {
    let refs: String = files
        .iter()
        .map(|(id, href, size)| {
            format!(r#"<File ovf:id="{id}" ovf:href="{href}" ovf:size="{size}"/>"#)
        })
        .collect();
    let ds: String = disks
        .iter()
        .map(|(id, mib, fref)| {
            format!(
                r#"<Disk ovf:diskId="{id}" ovf:fileRef="{fref}" ovf:capacity="{mib}" ovf:capacityAllocationUnits="byte * 2^20" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>"#
            )
        })
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>{refs}</References>
  <DiskSection><Info>Virtual disks</Info>{ds}</DiskSection>
  <NetworkSection><Info>n</Info><Network ovf:name="VM Network"/></NetworkSection>
  <VirtualSystem ovf:id="vm-web01">
    <Info>A virtual machine</Info>
    <Name>web01</Name>
  </VirtualSystem>
</Envelope>
"#
    )
}

fn tar_of(path: &Path, members: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *bytes).unwrap();
    }
    b.finish().unwrap();
}

/// An OVA with two stream-optimized disks lists both in DiskSection order, each reads
/// byte-identical to its source, and a replication run reads one straight from the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ova_disks_are_listed_and_read_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (raw0, raw1) = (dir.path().join("d0.raw"), dir.path().join("d1.raw"));
    let data0 = make_raw(&raw0, 16 * MIB, 21);
    let data1 = make_raw(&raw1, 8 * MIB, 22);
    let (v0, v1) = (dir.path().join("d0.vmdk"), dir.path().join("d1.vmdk"));
    convert(&raw0, &v0, "vmdk", &["-o", "subformat=streamOptimized"]);
    convert(&raw1, &v1, "vmdk", &["-o", "subformat=streamOptimized"]);
    let (b0, b1) = (std::fs::read(&v0).unwrap(), std::fs::read(&v1).unwrap());
    // Disk order comes from DiskSection, not from the archive or References.
    let desc = ovf(
        &[("vmdisk1", 16, "file1"), ("vmdisk2", 8, "file2")],
        &[
            ("file2", "web01-disk2.vmdk", b1.len() as u64),
            ("file1", "web01-disk1.vmdk", b0.len() as u64),
        ],
    );
    let path = dir.path().join("web01.ova");
    tar_of(
        &path,
        &[
            ("web01.ovf", desc.as_bytes()),
            ("web01.mf", b"SHA256(web01.ovf)= 00\n"),
            ("web01-disk2.vmdk", &b1),
            ("web01-disk1.vmdk", &b0),
        ],
    );

    let vm = ova::read(&path).expect("reads the OVA");
    assert_eq!(vm.name, "web01");
    assert_eq!(vm.disks.len(), 2);
    assert_eq!(
        (vm.disks[0].file.as_str(), vm.disks[0].capacity),
        ("web01-disk1.vmdk", 16 * MIB)
    );
    assert_eq!(
        (vm.disks[1].file.as_str(), vm.disks[1].capacity),
        ("web01-disk2.vmdk", 8 * MIB)
    );
    assert_eq!(vm.disks[0].disk_id, "vmdisk1");
    let archive = std::fs::read(&path).unwrap();
    for (d, (bytes, data)) in vm.disks.iter().zip([(&b0, &data0), (&b1, &data1)]) {
        let (o, l) = (d.offset as usize, d.length as usize);
        assert!(
            archive[o..o + l] == bytes[..],
            "{} is not at the offset listed",
            d.file
        );
        let disk = ova::open_disk(&path, d).expect("opens in place");
        assert_eq!(disk.size(), d.capacity);
        let mut back = vec![0u8; disk.size() as usize];
        disk.read_at(&mut back, 0).unwrap();
        assert!(
            back == *data,
            "{} reads differently from its source",
            d.file
        );
    }

    let Some(moto) = Moto::start() else { return };
    let s3 = moto.bucket("staging").await;
    let c = ReplicateContext {
        s3: s3.clone(),
        state_dir: dir.path().join("state"),
        options: ReplicateOptions {
            part_size: 5 * MIB,
            ..ReplicateOptions::default()
        },
    };
    let w = replicate::ReplicationWork {
        job_id: "sms-job-0000000000000000e".into(),
        run_id: "sms-run-00000000000000001".into(),
        server_id: "s-0000000000000000e".into(),
        disks: vec![DiskSource::Ova {
            path: path.clone(),
            disk: 1,
        }],
        staging: Staging {
            bucket: "staging".into(),
            prefix: String::new(),
        },
        seed: false,
    };
    let out = replicate::run(&w, &c, &|_| {})
        .await
        .expect("replicates the OVA disk");
    let d = &out.manifest.disks[0];
    assert_eq!(
        d.key,
        "sms-job-0000000000000000e/sms-run-00000000000000001/disk-0.vmdk"
    );
    assert!(
        d.source.contains("web01.ova") && d.source.contains("disk 1"),
        "{}",
        d.source
    );
    let got = write(dir.path(), "got.vmdk", &get(&s3, "staging", &d.key).await);
    qemu_img(&["compare", "-f", "vmdk", "-F", "raw", p(&got), p(&raw1)]);
}

/// Archives that lie about their content give errors naming the problem.
#[test]
fn hostile_ovas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.ova");
    let disk = vec![0u8; 4096];

    // A disk file the archive does not hold.
    tar_of(
        &path,
        &[(
            "x.ovf",
            ovf(&[("d", 1, "f")], &[("f", "gone.vmdk", 4096)]).as_bytes(),
        )],
    );
    let e = ova::read(&path).unwrap_err();
    assert!(
        matches!(e, OvaError::Malformed { .. }) && e.to_string().contains("gone.vmdk"),
        "{e}"
    );

    // A declared size that differs from the member's.
    let desc = ovf(&[("d", 1, "f")], &[("f", "d.vmdk", 9999)]);
    tar_of(&path, &[("x.ovf", desc.as_bytes()), ("d.vmdk", &disk)]);
    assert!(ova::read(&path).unwrap_err().to_string().contains("9999"));

    // A fileRef with no File.
    let desc = ovf(&[("d", 1, "nope")], &[("f", "d.vmdk", 4096)]);
    tar_of(&path, &[("x.ovf", desc.as_bytes()), ("d.vmdk", &disk)]);
    assert!(ova::read(&path).unwrap_err().to_string().contains("nope"));

    // No descriptor, not XML, not a tar at all.
    tar_of(&path, &[("d.vmdk", &disk)]);
    assert!(ova::read(&path).unwrap_err().to_string().contains(".ovf"));
    tar_of(&path, &[("x.ovf", b"<Envelope><unclosed>")]);
    assert!(matches!(
        ova::read(&path).unwrap_err(),
        OvaError::Xml { .. }
    ));
    std::fs::write(&path, vec![0x41u8; 3000]).unwrap();
    assert!(ova::read(&path).is_err());

    // A member whose header claims more bytes than the archive has.
    let desc = ovf(&[("d", 1, "f")], &[("f", "d.vmdk", 4096)]);
    tar_of(&path, &[("x.ovf", desc.as_bytes()), ("d.vmdk", &disk)]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 1024 - 2048);
    std::fs::write(&path, &bytes).unwrap();
    let e = ova::read(&path).unwrap_err();
    assert!(
        e.to_string().contains("past the end") || matches!(e, OvaError::Tar { .. }),
        "{e}"
    );
}

/// An inventory VM given as an OVA reports the archive's disks in DiskSection order, as paths
/// the agent turns back into in-place reads of the archive, with inspection reports.
#[test]
fn ova_inventory_entries_report_the_archives_disks() {
    let dir = tempfile::tempdir().unwrap();
    let (raw0, raw1) = (dir.path().join("d0.raw"), dir.path().join("d1.raw"));
    let data0 = make_raw(&raw0, 8 * MIB, 31);
    let data1 = make_raw(&raw1, 4 * MIB, 32);
    let (v0, v1) = (dir.path().join("d0.vmdk"), dir.path().join("d1.vmdk"));
    convert(&raw0, &v0, "vmdk", &["-o", "subformat=streamOptimized"]);
    convert(&raw1, &v1, "vmdk", &["-o", "subformat=streamOptimized"]);
    let (b0, b1) = (std::fs::read(&v0).unwrap(), std::fs::read(&v1).unwrap());
    let desc = ovf(
        &[("vmdisk1", 8, "file1"), ("vmdisk2", 4, "file2")],
        &[
            ("file1", "web01-disk1.vmdk", b0.len() as u64),
            ("file2", "web01-disk2.vmdk", b1.len() as u64),
        ],
    );
    let archive = dir.path().join("web01.ova");
    tar_of(
        &archive,
        &[
            ("web01.ovf", desc.as_bytes()),
            ("web01-disk2.vmdk", &b1),
            ("web01-disk1.vmdk", &b0),
        ],
    );
    let inv_path = dir.path().join("inventory.toml");
    std::fs::write(&inv_path, "[[vms]]\nid = \"vm-ova\"\nova = \"web01.ova\"\n").unwrap();
    let mut inv = tern_connector::Inventory::load(&inv_path, "m").unwrap();
    inv.inspect();
    let vm = &inv.vms[0];
    assert_eq!(
        vm.vm_name.as_deref(),
        Some("web01"),
        "named by the descriptor"
    );
    assert_eq!(vm.disks.len(), 2);
    for (i, (d, data)) in vm.disks.iter().zip([&data0, &data1]).enumerate() {
        assert_eq!(d.path, format!("{}#disk={i}", archive.display()));
        assert_eq!(d.format.as_deref(), Some("ova"));
        assert_eq!(d.size_bytes, Some(data.len() as u64));
        let report = &vm.inspection.as_ref().unwrap()["disks"][i];
        assert_eq!(report["disk_size"], data.len() as u64, "{report}");
        // What a REPLICATE item names comes back to the same bytes.
        let src = tern_connector::work::translate_disk(&d.path, d.format.as_deref()).unwrap();
        assert_eq!(
            src,
            DiskSource::Ova {
                path: archive.clone(),
                disk: i
            }
        );
        let disk = replicate::open_disk(&src).unwrap();
        let mut back = vec![0u8; disk.size() as usize];
        disk.read_at(&mut back, 0).unwrap();
        assert!(back == **data, "disk {i} reads differently from its source");
    }
}
