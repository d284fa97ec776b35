//! The boot kit: a kernel, an initramfs, GRUB for BIOS and UEFI, a private QEMU and OVMF, unpacked from
//! the distribution's packages by `scripts/boot-kit.sh`. `tern demo` builds its bootable VM
//! from it, and `tern demo --boot` boots the exported image with its QEMU.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::GuestError;

/// The manifest the script writes last (`kit.toml`), so a half-built kit has none.
const MANIFEST: &str = "kit.toml";

#[derive(Debug, Clone)]
pub struct BootKit {
    pub dir: PathBuf,
    /// `uname -r` of the kit's kernel.
    pub kernel_release: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// GRUB's MBR code (`boot.img`; its first 440 bytes go in sector 0).
    pub grub_boot_img: PathBuf,
    /// GRUB's core (`core.img`), written right after the MBR; it reads
    /// `(hd0,msdos1)/boot/grub/grub.cfg`.
    pub grub_core_img: PathBuf,
    /// The kit's own `qemu-system-x86_64`, when it has one.
    pub qemu: Option<PathBuf>,
    /// Directories QEMU is given with `-L` for its firmware (SeaBIOS, option ROMs).
    pub firmware: Vec<PathBuf>,
    /// GRUB for UEFI (`bootx64.efi`, an EFI System Partition's `\EFI\BOOT\BOOTX64.EFI`); it
    /// reads `grub.cfg` next to itself. Kits made before UEFI support have none.
    pub grub_efi: Option<PathBuf>,
    /// OVMF, for UEFI guests (kits made before UEFI support have none).
    pub uefi: Option<super::UefiFirmware>,
}

#[derive(Deserialize)]
struct Manifest {
    kernel_release: String,
    kernel: PathBuf,
    initrd: PathBuf,
    grub_boot_img: PathBuf,
    grub_core_img: PathBuf,
    qemu: Option<PathBuf>,
    #[serde(default)]
    firmware: Vec<PathBuf>,
    grub_efi: Option<PathBuf>,
    uefi_code: Option<PathBuf>,
    uefi_vars: Option<PathBuf>,
}

impl BootKit {
    /// Where the kit is looked for when none is named: `$TERN_BOOT_KIT`, else
    /// `~/.cache/tern/boot-kit` (the script's default).
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("TERN_BOOT_KIT").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(d));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tern/boot-kit"))
    }

    /// The kit in `dir`; an error names what is missing or malformed.
    pub fn load(dir: &Path) -> Result<BootKit, GuestError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            GuestError::Kit(format!(
                "no boot kit in {} ({}: {e}); build one with scripts/boot-kit.sh",
                dir.display(),
                path.display()
            ))
        })?;
        let m: Manifest = toml::from_str(&text)
            .map_err(|e| GuestError::Kit(format!("{} is malformed: {e}", path.display())))?;
        let file = |p: &Path| -> Result<PathBuf, GuestError> {
            let full = dir.join(p);
            if full.is_file() {
                Ok(full)
            } else {
                Err(GuestError::Kit(format!(
                    "the boot kit in {} lacks {}; rebuild it with scripts/boot-kit.sh",
                    dir.display(),
                    p.display()
                )))
            }
        };
        Ok(BootKit {
            dir: dir.to_path_buf(),
            kernel_release: m.kernel_release,
            kernel: file(&m.kernel)?,
            initrd: file(&m.initrd)?,
            grub_boot_img: file(&m.grub_boot_img)?,
            grub_core_img: file(&m.grub_core_img)?,
            qemu: m.qemu.as_deref().map(file).transpose()?,
            firmware: m.firmware.iter().map(|f| dir.join(f)).collect(),
            grub_efi: m.grub_efi.as_deref().map(file).transpose()?,
            uefi: match (&m.uefi_code, &m.uefi_vars) {
                (Some(code), Some(vars)) => Some(super::UefiFirmware {
                    code: file(code)?,
                    vars: file(vars)?,
                }),
                _ => None,
            },
        })
    }

    /// The kit at `explicit`, or at the default place if one was built there. `Ok(None)` only
    /// when none was named and the default place holds none.
    pub fn find(explicit: Option<&Path>) -> Result<Option<BootKit>, GuestError> {
        match explicit {
            Some(dir) => BootKit::load(dir).map(Some),
            None => match BootKit::default_dir() {
                Some(dir) if dir.join(MANIFEST).is_file() => BootKit::load(&dir).map(Some),
                _ => Ok(None),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, body: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    #[test]
    fn a_kit_loads_from_its_manifest_and_names_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let e = BootKit::load(d).unwrap_err().to_string();
        assert!(e.contains("scripts/boot-kit.sh"), "{e}");

        write(
            d,
            "kit.toml",
            r#"kernel_release = "6.1.0-test"
kernel = "vmlinuz"
initrd = "initrd.img"
grub_boot_img = "grub/boot.img"
grub_core_img = "grub/core.img"
qemu = "root/usr/bin/qemu-system-x86_64"
firmware = ["root/usr/share/qemu"]
"#,
        );
        for f in ["vmlinuz", "initrd.img", "grub/boot.img", "grub/core.img"] {
            write(d, f, "x");
        }
        let e = BootKit::load(d).unwrap_err().to_string();
        assert!(e.contains("root/usr/bin/qemu-system-x86_64"), "{e}");
        write(d, "root/usr/bin/qemu-system-x86_64", "x");
        let kit = BootKit::load(d).unwrap();
        assert_eq!(kit.kernel_release, "6.1.0-test");
        assert_eq!(kit.kernel, d.join("vmlinuz"));
        assert_eq!(kit.firmware, vec![d.join("root/usr/share/qemu")]);
        assert_eq!(BootKit::find(Some(d)).unwrap().unwrap().dir, d);
        // A kit made before UEFI support has neither part.
        assert!(kit.uefi.is_none() && kit.grub_efi.is_none());

        let manifest = std::fs::read_to_string(d.join("kit.toml")).unwrap();
        write(
            d,
            "kit.toml",
            &format!(
                "{manifest}grub_efi = \"grub/bootx64.efi\"\nuefi_code = \"ovmf/CODE.fd\"\nuefi_vars = \"ovmf/VARS.fd\"\n"
            ),
        );
        for f in ["grub/bootx64.efi", "ovmf/CODE.fd"] {
            write(d, f, "x");
        }
        let e = BootKit::load(d).unwrap_err().to_string();
        assert!(e.contains("ovmf/VARS.fd"), "{e}");
        write(d, "ovmf/VARS.fd", "x");
        let kit = BootKit::load(d).unwrap();
        assert_eq!(kit.grub_efi, Some(d.join("grub/bootx64.efi")));
        assert_eq!(
            kit.uefi,
            Some(crate::guest::UefiFirmware {
                code: d.join("ovmf/CODE.fd"),
                vars: d.join("ovmf/VARS.fd"),
            })
        );

        write(d, "kit.toml", "kernel = 3");
        let e = BootKit::load(d).unwrap_err().to_string();
        assert!(e.contains("malformed"), "{e}");
    }
}
