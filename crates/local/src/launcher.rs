//! The local `Launcher` of `tern serve`: runs each `AWS::EC2::Instance` of an application's
//! template as a QEMU guest (`qemu-system-x86_64`, KVM when `/dev/kvm` may be opened, TCG
//! otherwise).
//!
//! This release implements the launcher's checks, not the guests: where
//! `qemu-system-x86_64` is missing, LaunchApp fails with a message saying what to install; where
//! it is present, LaunchApp fails saying that running guests is not implemented yet. It never
//! pretends to have launched anything.

use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::Value;
use tern_core::launcher::{LaunchError, Launcher, StackState};

use crate::guest::is_executable;

/// The QEMU binary the launcher runs.
pub const QEMU: &str = crate::guest::QEMU_SYSTEM;

pub struct QemuLauncher {
    /// Directories searched for [`QEMU`] (the `PATH` of `tern serve`).
    search: Vec<PathBuf>,
}

impl QemuLauncher {
    /// A launcher that looks for QEMU on the process's `PATH`.
    pub fn from_env() -> Self {
        let search = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Self { search }
    }

    /// A launcher that looks for QEMU in `dirs` only.
    pub fn with_search_path(dirs: Vec<PathBuf>) -> Self {
        Self { search: dirs }
    }

    /// The QEMU binary, if one of the search directories holds an executable one.
    pub fn qemu(&self) -> Option<PathBuf> {
        self.search
            .iter()
            .map(|d| d.join(QEMU))
            .find(|p| is_executable(p))
    }
}

/// What LaunchApp answers on a host without QEMU.
pub fn missing_qemu_message() -> String {
    format!(
        "LaunchApp on tern serve runs each instance of the application as a QEMU guest, and {QEMU} is not installed (not found on PATH): install QEMU (Debian/Ubuntu: apt-get install qemu-system-x86; Fedora: dnf install qemu-system-x86; macOS: brew install qemu), restart tern serve and LaunchApp again. GenerateTemplate writes the application's CloudFormation template meanwhile."
    )
}

#[async_trait]
impl Launcher for QemuLauncher {
    async fn check(&self) -> Result<(), LaunchError> {
        match self.qemu() {
            None => Err(LaunchError::Unavailable(missing_qemu_message())),
            Some(q) => Err(LaunchError::Unavailable(format!(
                "{} is installed, but this Tern release does not run application instances as QEMU guests yet; use GenerateTemplate and launch the template with CloudFormation",
                q.display()
            ))),
        }
    }

    async fn create_stack(
        &self,
        _stack_name: &str,
        _template: &Value,
        _role_name: Option<&str>,
    ) -> Result<String, LaunchError> {
        self.check().await.map(|_| String::new())
    }

    async fn stack_state(&self, stack_id: &str) -> Result<StackState, LaunchError> {
        Err(LaunchError::Failed(format!(
            "there is no local stack {stack_id}"
        )))
    }

    async fn delete_stack(&self, _stack_id: &str) -> Result<(), LaunchError> {
        // Nothing is ever started, so nothing is left to stop.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_qemu_launch_says_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let l = QemuLauncher::with_search_path(vec![dir.path().to_path_buf()]);
        assert_eq!(l.qemu(), None);
        let e = l.check().await.unwrap_err();
        let LaunchError::Unavailable(m) = &e else {
            panic!("{e:?}")
        };
        assert!(
            m.contains(QEMU) && m.contains("apt-get install qemu-system-x86"),
            "{m}"
        );
        assert!(l.create_stack("s", &Value::Null, None).await.is_err());

        // A non-executable file of that name is not QEMU; an executable one is found, and
        // still nothing pretends to launch.
        let bin = dir.path().join(QEMU);
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        assert_eq!(l.qemu(), None);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(l.qemu(), Some(bin));
        let m = l.check().await.unwrap_err().to_string();
        assert!(m.contains("does not run application instances"), "{m}");
    }
}
