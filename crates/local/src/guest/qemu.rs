//! Finding `qemu-system-x86_64` and choosing its accelerator.

use std::path::{Path, PathBuf};

use super::{BootKit, GuestError};

/// The binary looked for.
pub const QEMU_SYSTEM: &str = "qemu-system-x86_64";

/// A QEMU to run, with the firmware directories it needs (`-L`).
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    pub firmware: Vec<PathBuf>,
    /// The UEFI firmware for UEFI guests: the boot kit's, else the system's; `None` when
    /// neither has one (UEFI guests cannot run then).
    pub uefi: Option<UefiFirmware>,
}

/// UEFI firmware (OVMF, EDK II) for QEMU's two flash devices: the code, mapped read-only, and
/// a variable store, which each guest gets its own copy of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UefiFirmware {
    pub code: PathBuf,
    pub vars: PathBuf,
}

impl UefiFirmware {
    /// Where distributions install OVMF: Debian and Ubuntu (4 MiB, then 2 MiB builds), Fedora,
    /// Arch.
    const SYSTEM: [(&'static str, &'static str); 4] = [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
        (
            "/usr/share/edk2/ovmf/OVMF_CODE.fd",
            "/usr/share/edk2/ovmf/OVMF_VARS.fd",
        ),
        (
            "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
            "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
        ),
    ];

    /// The system's OVMF, if one of [`Self::SYSTEM`] is installed.
    pub fn system() -> Option<UefiFirmware> {
        Self::SYSTEM
            .iter()
            .map(|(c, v)| UefiFirmware {
                code: PathBuf::from(c),
                vars: PathBuf::from(v),
            })
            .find(|f| f.code.is_file() && f.vars.is_file())
    }
}

impl Qemu {
    /// The QEMU named explicitly, else `$TERN_QEMU_SYSTEM`, else the boot kit's own, else
    /// `qemu-system-x86_64` on `PATH`; an error says what to install.
    pub fn locate(explicit: Option<&Path>, kit: Option<&BootKit>) -> Result<Qemu, GuestError> {
        // Whichever QEMU runs, UEFI guests get the kit's OVMF, else the system's.
        let uefi = kit
            .and_then(|k| k.uefi.clone())
            .or_else(UefiFirmware::system);
        let named = explicit.map(Path::to_path_buf).or_else(|| {
            std::env::var_os("TERN_QEMU_SYSTEM")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        if let Some(binary) = named {
            return if is_executable(&binary) {
                Ok(Qemu {
                    binary,
                    firmware: Vec::new(),
                    uefi,
                })
            } else {
                Err(GuestError::QemuMissing(format!(
                    "{} is not an executable QEMU",
                    binary.display()
                )))
            };
        }
        if let Some((binary, kit)) = kit.and_then(|k| k.qemu.clone().map(|q| (q, k))) {
            return Ok(Qemu {
                binary,
                firmware: kit.firmware.clone(),
                uefi,
            });
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(QEMU_SYSTEM))
            .find(|p| is_executable(p))
            .map(|binary| Qemu {
                binary,
                firmware: Vec::new(),
                uefi,
            })
            .ok_or_else(|| {
                GuestError::QemuMissing(format!(
                    "{QEMU_SYSTEM} was not found (not on PATH, no TERN_QEMU_SYSTEM, no boot kit with its own): run scripts/boot-kit.sh, which unpacks one privately, or install QEMU (Debian/Ubuntu: apt-get install qemu-system-x86)"
                ))
            })
    }
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` can be opened for reading and writing, TCG otherwise.
    Auto,
    Kvm,
    /// Software emulation: slower, works everywhere.
    Tcg,
}

impl Accel {
    /// `Auto` decided for this host; the others as they are.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto if kvm_usable() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            other => other,
        }
    }

    pub fn qemu_name(self) -> &'static str {
        match self.resolve() {
            Accel::Kvm => "kvm",
            _ => "tcg",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Accel, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!("unknown accelerator {other:?}: auto, kvm or tcg")),
        }
    }
}

/// Whether this process may open `/dev/kvm` (so QEMU may use KVM).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A path as one value of a QEMU `-drive` option (commas are doubled).
pub fn escape_option(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerators_parse_and_drive_paths_escape() {
        assert_eq!("tcg".parse::<Accel>(), Ok(Accel::Tcg));
        assert!("xen"
            .parse::<Accel>()
            .unwrap_err()
            .contains("auto, kvm or tcg"));
        assert_eq!(Accel::Tcg.qemu_name(), "tcg");
        assert_ne!(Accel::Auto.resolve(), Accel::Auto);
        assert_eq!(escape_option(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn an_explicit_qemu_must_be_executable() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("qemu");
        std::fs::write(&q, "").unwrap();
        let e = Qemu::locate(Some(&q), None).unwrap_err().to_string();
        assert!(e.contains("not an executable QEMU"), "{e}");
    }
}
