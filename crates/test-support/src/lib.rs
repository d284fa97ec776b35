//! What Tern's tests share, so that each is written once:
//!
//! * [`moto`]: starts moto's server (PyPI `moto[server]`) on a free port and stops it when
//!   dropped; skips with a notice when moto is missing, fails under `CI`.
//! * [`poll`]: bounded polls, the one way a test waits for another process (moto, a child
//!   `tern serve`): never a fixed sleep.
//! * [`qemu`]: `qemu-img` / `qemu-io` runners and random disks with blocks changed on purpose.
//! * [`fixtures`]: disks with a real partition table, built in memory.
//! * [`libvirt`]: a private `libvirtd` for `qemu:///session`, stopped when dropped.
//! * [`tmpfs`]: a small filesystem to fill up (disk-full tests).

pub mod fixtures;
pub mod libvirt;
pub mod moto;
pub mod poll;
pub mod qemu;
pub mod tmpfs;
pub mod uefi;
pub mod vcsim;

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// `docs/ARCHITECTURE.md` names every workspace crate, and every path it names in backticks
    /// exists: the page cannot silently fall behind the code.
    #[test]
    fn architecture_doc_stays_true() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let members = manifest
            .split("members = [")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .expect("the workspace lists its members");
        let members: Vec<&str> = members
            .split(',')
            .map(|m| m.trim().trim_matches('"'))
            .filter(|m| !m.is_empty())
            .collect();
        assert!(members.len() > 5, "{members:?}");
        for member in members {
            assert!(
                doc.contains(&format!("`{member}`")),
                "docs/ARCHITECTURE.md does not name the crate {member}"
            );
        }
        let named: Vec<&str> = doc
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| {
                s.contains('/') && !s.contains(' ') && !s.starts_with("http") && !s.contains("..")
            })
            .collect();
        assert!(named.len() > 10, "{named:?}");
        for path in named {
            assert!(
                root.join(path).exists(),
                "docs/ARCHITECTURE.md names {path}, which does not exist"
            );
        }
    }
}
