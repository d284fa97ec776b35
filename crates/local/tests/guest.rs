//! QEMU guests from the boot kit (`scripts/boot-kit.sh`, run by `.ci/run`): a disk that does not
//! boot is reported as such, with what the console showed, within the deadline. (That the demo's
//! migrated VM boots is `crates/cli/tests/demo`.)

use std::time::{Duration, Instant};

use tern_local::guest::{boot_and_report, Accel, BootKit, GuestDisk, GuestSpec, Qemu};

#[test]
fn a_disk_without_a_bootloader_fails_the_boot_check_naming_what_was_seen() {
    let kit = BootKit::find(None)
        .expect("a readable boot kit")
        .expect("no boot kit: run scripts/boot-kit.sh (as .ci/run does)");
    let qemu = Qemu::locate(None, Some(&kit)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let spec = GuestSpec {
        disks: vec![GuestDisk {
            path: blank.clone(),
            format: "raw",
            discard_writes: true,
        }],
        memory_mib: 64,
        cpus: 1,
        serial_log: dir.path().join("console.log"),
    };
    let started = Instant::now();
    let e = boot_and_report(&qemu, &spec, Accel::Tcg, Duration::from_secs(8))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no boot marker within 8 s under TCG"), "{e}");
    // SeaBIOS said why on the console, and the message quotes it.
    assert!(e.contains("not a bootable disk"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The disk was attached with its writes discarded: it is untouched.
    assert_eq!(std::fs::read(&blank).unwrap(), vec![0u8; 4 << 20]);
}
