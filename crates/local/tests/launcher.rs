//! The local launcher runs a template's instances as QEMU guests from the boot kit
//! (`scripts/boot-kit.sh`, run by `.ci/run`), booting each from an overlay on its image's
//! exported disks: the images here hold a boot sector that prints its own marker on the serial
//! port, so a marker on an instance's console proves it booted the image it was given. A UEFI
//! image holds an EFI System Partition whose GRUB (the boot kit's) prints the marker instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tern_core::images::{
    Architecture, BlockDevice, BootMode, Images, RegisterImage, StagedObject, TaskStatus,
};
use tern_core::launcher::{Launcher, StackState};
use tern_core::{RandomIds, SystemClock};
use tern_local::guest::Accel;
use tern_local::images::{LocalImages, LocalImagesOptions};
use tern_local::launcher::{self, status, LauncherOptions, QemuLauncher};
use tern_test_support::poll;
use tern_test_support::qemu::stream_vmdk;

const BUCKET: &str = "tern-staging";

/// A 1 MiB disk whose boot sector writes `marker` to COM1 and halts.
fn marker_disk(path: &Path, marker: &str) {
    let mut code = vec![
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xFC, // cld
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xBE, 0x20, 0x7C, // mov si, 0x7c20
        0xAC, // lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz hlt
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp lodsb
        0xF4, // hlt
        0xEB, 0xFD, // jmp hlt
    ];
    code.resize(0x20, 0);
    code.extend_from_slice(format!("\r\n{marker}\r\n\0").as_bytes());
    let mut disk = vec![0u8; 1 << 20];
    disk[..code.len()].copy_from_slice(&code);
    disk[510] = 0x55;
    disk[511] = 0xAA;
    std::fs::write(path, disk).unwrap();
}

struct Env {
    _dir: tempfile::TempDir,
    data: PathBuf,
    staging: PathBuf,
    images: LocalImages,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let staging = dir.path().join("staging");
        std::fs::create_dir_all(staging.join(BUCKET)).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let images = LocalImages::open_with(
            &data,
            &staging,
            Arc::new(RandomIds),
            Arc::new(SystemClock),
            LocalImagesOptions::default(),
        )
        .unwrap();
        Env {
            _dir: dir,
            data,
            staging,
            images,
        }
    }

    /// An image of one disk per marker, the first its root.
    async fn image(&self, markers: &[&str]) -> String {
        let raws = markers
            .iter()
            .map(|m| {
                let raw = self.staging.join(format!("{m}.raw"));
                marker_disk(&raw, m);
                raw
            })
            .collect::<Vec<_>>();
        self.image_of(&markers.join("-"), &raws, BootMode::LegacyBios)
            .await
    }

    /// An image named `name` of the raw disks `raws` (the first its root), booting `boot_mode`.
    async fn image_of(&self, name: &str, raws: &[PathBuf], boot_mode: BootMode) -> String {
        let mut devices = Vec::new();
        for (n, raw) in raws.iter().enumerate() {
            let m = format!("{name}-{n}");
            let key = format!("jobs/{m}/disk{n}.vmdk");
            let to = self.staging.join(BUCKET).join(&key);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(stream_vmdk(raw), &to).unwrap();
            let task = self
                .images
                .start_import(
                    &StagedObject {
                        bucket: BUCKET.into(),
                        key,
                    },
                    &m,
                )
                .await
                .unwrap();
            self.images.wait_for_tasks();
            let TaskStatus::Completed { snapshot } =
                self.images.describe_task(&task).await.unwrap()
            else {
                panic!("import of {m} did not complete")
            };
            devices.push(BlockDevice {
                device_name: if n == 0 {
                    "/dev/sda1".into()
                } else {
                    format!("/dev/sd{}", (b'a' + n as u8) as char)
                },
                snapshot_id: snapshot.snapshot_id.clone(),
                volume_size: snapshot.volume_size_gib(),
                delete_on_termination: false,
            });
        }
        self.images
            .register_image(&RegisterImage {
                name: name.into(),
                description: "launcher test".into(),
                block_devices: devices,
                architecture: Architecture::X86_64,
                boot_mode,
                ena_support: true,
            })
            .await
            .unwrap()
            .image_id
    }

    fn launcher(&self) -> QemuLauncher {
        QemuLauncher::new(
            self.data.clone(),
            "us-east-1".into(),
            LauncherOptions {
                accel: Accel::Tcg,
                console_timeout: Duration::from_secs(60),
                ..Default::default()
            },
        )
    }
}

impl Drop for Env {
    /// A failed test leaves no guest running.
    fn drop(&mut self) {
        for stack in launcher::list(&self.data).unwrap_or_default() {
            for i in &stack.instances {
                let _ = launcher::stop_instance(i);
            }
        }
    }
}

fn instance(image: &str, depends: &[&str], user_data: Option<&str>) -> Value {
    let mut r = json!({"Type": "AWS::EC2::Instance",
        "Properties": {"ImageId": image, "InstanceType": {"Ref": "DefaultInstanceType"}}});
    if !depends.is_empty() {
        r["DependsOn"] = json!(depends);
    }
    if let Some(u) = user_data {
        r["Properties"]["UserData"] = json!({"Fn::Base64": u});
    }
    r
}

async fn settle(l: &QemuLauncher, id: &str, done: impl Fn(&StackState) -> bool) -> StackState {
    let settled = poll::until_async(
        Duration::from_secs(180),
        Duration::from_millis(200),
        || async { Some(l.stack_state(id).await.unwrap()).filter(|s| done(s)) },
    )
    .await;
    settled.unwrap_or_else(|| panic!("stack {id} did not settle within 180 s"))
}

/// What `file` holds once it holds `text` (the guest prints after the firmware), or after 60 s.
fn wait_for_text(file: &Path, text: &str) -> String {
    let read = || std::fs::read_to_string(file).unwrap_or_default();
    poll::until(Duration::from_secs(60), Duration::from_millis(100), || {
        Some(read()).filter(|got| got.contains(text))
    })
    .unwrap_or_else(read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_s_instances_boot_their_images_in_launch_order_and_are_removed_on_delete() {
    let env = Env::new();
    let db_image = env.image(&["TERN-IMAGE-DB"]).await;
    let web_image = env.image(&["TERN-IMAGE-WEB", "TERN-DATA-WEB"]).await;
    let template = json!({
    "Parameters": {"DefaultInstanceType": {"Type": "String", "Default": "t3.micro"}},
    "Resources": {
        "Db": instance(&db_image, &[], Some("#!/bin/sh\necho db-user-data\n")),
        "Web": instance(&web_image, &["Db"], None),
    }});
    let l = env.launcher();
    let id = l
        .create_stack("sms-app-test", &template, Some("role"))
        .await
        .unwrap();
    assert!(
        id.starts_with("arn:aws:cloudformation:us-east-1:") && id.contains(":stack/sms-app-test/"),
        "{id}"
    );
    // Asking again while it is being made answers the same stack.
    assert_eq!(
        l.create_stack("sms-app-test", &template, None)
            .await
            .unwrap(),
        id
    );
    let state = settle(&l, &id, |s| *s != StackState::CreateInProgress).await;
    assert_eq!(state, StackState::CreateComplete);

    let stacks = launcher::list(&env.data).unwrap();
    assert_eq!(stacks.len(), 1);
    let stack = &stacks[0];
    assert_eq!(
        (stack.stack_id.as_str(), stack.status.as_str()),
        (id.as_str(), status::CREATE_COMPLETE)
    );
    let by = |logical: &str| {
        stack
            .instances
            .iter()
            .find(|i| i.logical_id == logical)
            .unwrap()
            .clone()
    };
    let (db, web) = (by("Db"), by("Web"));
    for i in [&db, &web] {
        assert!(i.running(), "{} is not running", i.instance_id);
        assert!(i.instance_id.starts_with("i-") && i.instance_id.len() == 19);
        assert_eq!(
            (i.vcpus, i.memory_mib, i.accel.as_deref()),
            (2.min(i.vcpus), 1024, Some("TCG"))
        );
    }
    // Web depends on Db: it started only once Db's console showed output.
    assert_eq!((db.launch_level, web.launch_level), (0, 1));
    let since = |i: &launcher::InstanceRecord| {
        time::OffsetDateTime::parse(
            i.running_since.as_deref().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert!(since(&db) <= since(&web));
    // Each booted its own image's root disk.
    let console = wait_for_text(&db.console(), "TERN-IMAGE-DB");
    assert!(
        console.contains("TERN-IMAGE-DB") && !console.contains("TERN-IMAGE-WEB"),
        "{console}"
    );
    let console = wait_for_text(&web.console(), "TERN-IMAGE-WEB");
    assert!(
        console.contains("SeaBIOS") && console.contains("TERN-IMAGE-WEB"),
        "{console}"
    );
    // Disks: overlays sized as the image's volumes (1 GiB), over one export per snapshot; the
    // user data is the NoCloud seed's.
    assert!(web.dir.join("disk1.qcow2").is_file() && !web.dir.join("disk2.qcow2").exists());
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(web.dir.join("disk0.qcow2"))
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], json!(1u64 << 30));
    assert_eq!(
        std::fs::read_dir(env.data.join("instances/images"))
            .unwrap()
            .count(),
        3
    );
    assert_eq!(
        std::fs::read_to_string(db.dir.join("seed/user-data")).unwrap(),
        "#!/bin/sh\necho db-user-data\n"
    );
    let meta = std::fs::read_to_string(db.dir.join("seed/meta-data")).unwrap();
    assert!(
        meta.contains(&format!("instance-id: {}", db.instance_id)),
        "{meta}"
    );
    assert_eq!(launcher::find(&env.data, &web.instance_id).unwrap().1, web);

    // Delete: the guests stop, their disks go, the consoles stay for reading.
    l.delete_stack(&id).await.unwrap();
    assert_eq!(
        settle(&l, &id, |s| *s == StackState::DeleteComplete).await,
        StackState::DeleteComplete
    );
    let after = launcher::list(&env.data).unwrap().remove(0);
    assert_eq!(after.status, status::DELETE_COMPLETE);
    for i in [&db, &web] {
        assert!(!i.running(), "{} still runs", i.instance_id);
        assert!(!i.dir.join("disk0.qcow2").exists());
        assert!(i.console().is_file());
    }
    l.delete_stack(&id).await.unwrap();
    // The name can be launched again: a new stack.
    let again = l
        .create_stack("sms-app-test", &template, None)
        .await
        .unwrap();
    assert_ne!(again, id);
    assert_eq!(
        l.stack_state(&id).await.unwrap(),
        StackState::DeleteComplete
    );
    l.delete_stack(&again).await.unwrap();
    settle(&l, &again, |s| *s == StackState::DeleteComplete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_that_cannot_be_made_rolls_back_what_it_started() {
    let env = Env::new();
    let image = env.image(&["TERN-IMAGE-OK"]).await;
    let template = json!({
    "Parameters": {"DefaultInstanceType": {"Type": "String", "Default": "t3.nano"}},
    "Resources": {
        "First": instance(&image, &[], None),
        "Second": instance("ami-0123456789abcdef0", &["First"], None),
    }});
    let l = env.launcher();
    let id = l
        .create_stack("sms-app-broken", &template, None)
        .await
        .unwrap();
    let state = settle(&l, &id, |s| *s != StackState::CreateInProgress).await;
    let StackState::CreateFailed(reason) = state else {
        panic!("{state:?}")
    };
    assert!(
        reason.contains("Second")
            && reason.contains("ami-0123456789abcdef0")
            && reason.contains("not in this Tern's image store"),
        "{reason}"
    );
    let stack = launcher::list(&env.data).unwrap().remove(0);
    assert_eq!(stack.status, status::ROLLBACK_COMPLETE);
    let first = stack
        .instances
        .iter()
        .find(|i| i.logical_id == "First")
        .unwrap();
    assert!(
        first.console().is_file(),
        "First was started before Second failed"
    );
    assert!(!first.running() && !first.dir.join("disk0.qcow2").exists());

    // A template the launcher cannot run is refused before anything is made.
    let e = l
        .create_stack(
            "sms-app-bad",
            &json!({"Resources": {"B": {"Type": "AWS::S3::Bucket"}}}),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("AWS::S3::Bucket"), "{e}");
    assert!(!env.data.join("instances/sms-app-bad").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_left_half_made_by_a_stopped_server_is_rolled_back_when_asked() {
    let env = Env::new();
    let image = env.image(&["TERN-IMAGE-RESTART"]).await;
    let template = json!({
        "Parameters": {"DefaultInstanceType": {"Type": "String", "Default": "t3.nano"}},
        "Resources": {"Only": instance(&image, &[], None)}});
    let l = env.launcher();
    let id = l
        .create_stack("sms-app-restart", &template, None)
        .await
        .unwrap();
    settle(&l, &id, |s| *s == StackState::CreateComplete).await;
    // As if tern serve had stopped mid-launch: the record says CREATE_IN_PROGRESS, a guest runs.
    let dir = env.data.join("instances/sms-app-restart");
    let mut record = tern_local::launcher::StackRecord::load(&dir).unwrap();
    record.status = status::CREATE_IN_PROGRESS.into();
    record.save(&dir).unwrap();
    let guest = record.instances[0].clone();
    assert!(guest.running());
    // A new launcher (a restarted tern serve) finds nobody making it, and rolls it back.
    let restarted = env.launcher();
    let StackState::CreateFailed(reason) = restarted.stack_state(&id).await.unwrap() else {
        panic!("not rolled back")
    };
    assert!(reason.contains("tern serve stopped"), "{reason}");
    assert!(!guest.running() && !guest.dir.join("disk0.qcow2").exists());
    assert_eq!(
        launcher::list(&env.data).unwrap()[0].status,
        status::ROLLBACK_COMPLETE
    );
    // Deleting a rolled-back stack finishes it.
    restarted.delete_stack(&id).await.unwrap();
    settle(&restarted, &id, |s| *s == StackState::DeleteComplete).await;
}

/// A UEFI image boots under OVMF (the boot kit's): the GRUB of its EFI System Partition prints
/// the image's marker. The instance gets a UEFI variable store of its own, removed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_image_boots_under_ovmf_with_a_variable_store_of_its_own() {
    let env = Env::new();
    let kit = tern_local::guest::BootKit::find(None)
        .unwrap()
        .expect("the boot kit (scripts/boot-kit.sh, run by .ci/run)");
    let grub_efi = kit
        .grub_efi
        .clone()
        .expect("the boot kit predates UEFI support: run scripts/boot-kit.sh again");
    let raw = env.staging.join("uefi.raw");
    tern_test_support::uefi::esp_disk(&raw, &grub_efi, "echo TERN-IMAGE-UEFI\n", &[], 32);
    let image = env.image_of("uefi", &[raw], BootMode::Uefi).await;
    let template = json!({
    "Parameters": {"DefaultInstanceType": {"Type": "String", "Default": "t3.micro"}},
    "Resources": {"App": instance(&image, &[], None)}});
    let l = env.launcher();
    let id = l
        .create_stack("sms-app-uefi", &template, None)
        .await
        .unwrap();
    let state = settle(&l, &id, |s| *s != StackState::CreateInProgress).await;
    assert_eq!(state, StackState::CreateComplete);
    let app = launcher::list(&env.data)
        .unwrap()
        .remove(0)
        .instances
        .remove(0);
    assert!(app.running(), "{} is not running", app.instance_id);
    let fw = app
        .uefi
        .clone()
        .expect("a UEFI instance records its firmware");
    assert_eq!(fw.code, kit.uefi.as_ref().unwrap().code);
    assert!(fw.vars.starts_with(&app.dir) && fw.vars.is_file(), "{fw:?}");
    let console = wait_for_text(&app.console(), "TERN-IMAGE-UEFI");
    assert!(
        console.contains("TERN-IMAGE-UEFI") && !console.contains("SeaBIOS"),
        "{console}"
    );

    l.delete_stack(&id).await.unwrap();
    settle(&l, &id, |s| *s == StackState::DeleteComplete).await;
    assert!(!app.running() && !fw.vars.exists());
}
