//! What Tern's tests share, so that each is written once:
//!
//! * [`moto`]: starts moto's server (PyPI `moto[server]`) on a free port and stops it when
//!   dropped; skips with a notice when moto is missing, fails under `CI`.
//! * [`poll`]: bounded polls, the one way a test waits for another process (moto, a child
//!   `tern serve`): never a fixed sleep.
//! * [`qemu`]: `qemu-img` / `qemu-io` runners and random disks with blocks changed on purpose.

pub mod moto;
pub mod poll;
pub mod qemu;

use std::process::Command;

/// Runs `cmd` to completion and returns its stdout; panics with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when `program` is an executable file on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}
