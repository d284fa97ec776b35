//! `tern images` on a data directory filled by the local image service itself.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use tern_core::images::{
    Architecture, BlockDevice, BootMode, Images, RegisterImage, StagedObject, TaskStatus,
};
use tern_core::{RandomIds, SystemClock};
use tern_local::images::LocalImages;

const MIB: usize = 1 << 20;

fn images_cmd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("images")
        .args(args)
        .output()
        .expect("run tern")
}

fn ok(args: &[&str]) -> String {
    let out = images_cmd(args);
    assert!(
        out.status.success(),
        "tern images {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stderr.contains(&b'\r'), "progress output on a pipe");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = images_cmd(args);
    assert!(!out.status.success(), "tern images {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Imports `raw` as a snapshot and registers an image over it; returns the image id.
async fn make_image(data_dir: &Path, staging: &Path, raw: &Path) -> String {
    let disk = tern_disk::open(raw, &Default::default()).unwrap();
    let staged = staging.join("bucket/run1/disk0.vmdk");
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    tern_disk::write::write_vmdk_stream(
        disk.as_ref(),
        std::fs::File::create(&staged).unwrap(),
        "disk0.vmdk",
        &tern_disk::no_progress,
    )
    .unwrap();
    let images = LocalImages::open(
        data_dir,
        staging,
        Arc::new(RandomIds),
        Arc::new(SystemClock),
    )
    .unwrap();
    let source = StagedObject {
        bucket: "bucket".into(),
        key: "run1/disk0.vmdk".into(),
    };
    let task = images.start_import(&source, "seed").await.unwrap();
    images.wait_for_tasks();
    let TaskStatus::Completed { snapshot } = images.describe_task(&task).await.unwrap() else {
        panic!("import did not complete");
    };
    let image = images
        .register_image(&RegisterImage {
            name: "web-1 run 1".into(),
            description: "seed".into(),
            block_devices: vec![BlockDevice {
                device_name: "/dev/sda1".into(),
                snapshot_id: snapshot.snapshot_id.clone(),
                volume_size: snapshot.volume_size_gib(),
                delete_on_termination: false,
            }],
            architecture: Architecture::X86_64,
            boot_mode: BootMode::Uefi,
            ena_support: true,
        })
        .await
        .unwrap();
    image.image_id
}

#[tokio::test]
async fn list_and_export_images_of_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (data, staging) = (dir.path().join("data"), dir.path().join("staging"));
    let raw = dir.path().join("disk.raw");
    let mut bytes = vec![0u8; 5 * MIB + 4096];
    for (i, b) in bytes[MIB..3 * MIB + 777].iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    bytes[5 * MIB..].fill(0xa5);
    std::fs::write(&raw, &bytes).unwrap();

    let empty = fails(&["list", "--data-dir", s(&data)]);
    assert!(empty.contains("no image database"), "{empty}");

    let ami = make_image(&data, &staging, &raw).await;
    let text = ok(&["list", "--data-dir", s(&data)]);
    assert!(
        text.contains(&ami) && text.contains("web-1 run 1"),
        "{text}"
    );
    assert!(text.contains("/dev/sda1=snap-"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["list", "--data-dir", s(&data), "--json"])).unwrap();
    assert_eq!(json[0]["image_id"], ami.as_str());
    assert_eq!(json[0]["boot_mode"], "uefi");
    assert_eq!(json[0]["block_devices"][0]["device_name"], "/dev/sda1");

    let out = dir.path().join("out.raw");
    ok(&[
        "export",
        &ami,
        "--disk",
        "0",
        "--to",
        "raw",
        "-o",
        s(&out),
        "--data-dir",
        s(&data),
    ]);
    assert!(std::fs::read(&out).unwrap() == bytes);
    for (to, fmt) in [("qcow2", "qcow2"), ("vmdk-stream", "vmdk")] {
        let out = dir.path().join(format!("out.{fmt}"));
        ok(&[
            "export",
            &ami,
            "--to",
            to,
            "-o",
            s(&out),
            "--data-dir",
            s(&data),
        ]);
        let cmp = Command::new("qemu-img")
            .args(["compare", "-f", fmt, "-F", "raw", s(&out), s(&raw)])
            .output()
            .expect("qemu-img");
        assert!(cmp.status.success(), "{to}: {cmp:?}");
    }

    let err = fails(&[
        "export",
        "ami-00000000000000000",
        "--to",
        "raw",
        "-o",
        s(&out),
        "--data-dir",
        s(&data),
    ]);
    assert!(
        err.contains("no image ami-00000000000000000 in")
            && err.contains("images.db")
            && err.contains("`tern images list` shows the images"),
        "{err}"
    );
    let err = fails(&[
        "export",
        &ami,
        "--disk",
        "3",
        "--to",
        "raw",
        "-o",
        s(&out),
        "--data-dir",
        s(&data),
    ]);
    assert!(err.contains("has 1 disk(s) (0: /dev/sda1)"), "{err}");
}
