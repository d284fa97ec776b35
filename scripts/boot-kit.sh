#!/usr/bin/env bash
# Builds Tern's boot kit: what `tern demo` needs to make a VM that really boots, and what
# `tern demo --boot` (and the local launcher) need to boot it.
#
#   scripts/boot-kit.sh [KIT_DIR]      (default: $TERN_BOOT_KIT, else ~/.cache/tern/boot-kit)
#
# Everything comes from the distribution's packages (Debian/Ubuntu, apt): a kernel, a static
# busybox for the initramfs, GRUB for the boot sector and for UEFI, and qemu-system-x86 with its
# firmware: SeaBIOS for legacy-BIOS guests, OVMF (EDK II) for UEFI guests.
# The packages are unpacked privately (apt-get download + dpkg -x) into the kit, so nothing
# else on the machine changes: in particular an installed qemu-utils keeps its version (the
# registry's qemu-system-x86 would otherwise pull qemu-utils to its own version). Only QEMU's
# shared libraries are installed with apt-get (as root; otherwise the script prints the command).
#
# The kit is rebuilt only when it is missing, its /init changed or it is of an older format;
# its manifest is kit.toml.
set -euo pipefail

# Bumped when the kit gains parts (2: OVMF and GRUB for UEFI).
kit_format=2

here="$(cd "$(dirname "$0")" && pwd)"
kit="${1:-${TERN_BOOT_KIT:-$HOME/.cache/tern/boot-kit}}"
init="$here/boot-kit/init"
init_sha="$(sha256sum "$init" | cut -d' ' -f1)"

if [[ -f "$kit/kit.toml" ]] && grep -q "init_sha256 = \"$init_sha\"" "$kit/kit.toml" \
   && grep -q "^kit_format = $kit_format\$" "$kit/kit.toml" \
   && "$kit/root/usr/bin/qemu-system-x86_64" --version >/dev/null 2>&1; then
  echo "boot kit up to date: $kit"
  exit 0
fi

command -v apt-get >/dev/null || { echo "boot-kit: needs apt-get (Debian or Ubuntu)" >&2; exit 1; }

# QEMU's shared libraries (the binary itself is unpacked below).
qemu_libs=(libcapstone4 libfdt1 libpmem1 librdmacm1 libibverbs1 libslirp0 libvdeplug2)
missing=()
for p in "${qemu_libs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "boot-kit: QEMU needs these libraries; run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

kernel_pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
[[ -n "$kernel_pkg" ]] || { echo "boot-kit: no linux-image-amd64 in apt's lists; run apt-get update first" >&2; exit 1; }
packages=("$kernel_pkg" busybox-static grub-pc-bin grub-efi-amd64-bin grub-common
          qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu ovmf)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/root"
echo "boot-kit: downloading ${packages[*]}"
(cd "$work/debs" && apt-get download -qq "${packages[@]}" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
for p in "${packages[@]}"; do
  ls "$work/debs/${p}_"*.deb >/dev/null 2>&1 || { echo "boot-kit: apt-get download $p failed; run apt-get update first" >&2; exit 1; }
done
for deb in "$work/debs"/*.deb; do dpkg -x "$deb" "$work/root"; done

root="$work/root"
release="$(ls "$root/lib/modules")"
if ldd "$root/usr/bin/qemu-system-x86_64" | grep -q "not found"; then
  echo "boot-kit: qemu-system-x86_64 still misses libraries:" >&2
  ldd "$root/usr/bin/qemu-system-x86_64" | grep "not found" >&2
  exit 1
fi

# The initramfs: static busybox, the virtio disk drivers, FAT (to read the NoCloud seed the
# local launcher attaches: the instance's user data), and Tern's /init.
ir="$work/initramfs"
mkdir -p "$ir/bin" "$ir/lib/modules" "$ir/dev" "$ir/proc" "$ir/sys"
cp "$root/bin/busybox" "$ir/bin/busybox"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
         fat vfat nls_cp437 nls_ascii nls_utf8; do
  ko="$(find "$root/lib/modules/$release" -name "$m.ko" | head -n1)"
  [[ -n "$ko" ]] || { echo "boot-kit: module $m.ko not found in $kernel_pkg" >&2; exit 1; }
  cp "$ko" "$ir/lib/modules/"
done
install -m 0755 "$init" "$ir/init"

new="$kit.new"
rm -rf "$new"
mkdir -p "$new/grub"
(cd "$ir" && find . | "$root/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -9n > "$new/initrd.img"
cp "$root/boot/vmlinuz-$release" "$new/vmlinuz"
# GRUB for BIOS: boot.img goes in the MBR's code area, core.img right after it (the gap before
# the first partition); core.img finds grub.cfg on the first partition by itself.
cp "$root/usr/lib/grub/i386-pc/boot.img" "$new/grub/boot.img"
"$root/usr/bin/grub-mkimage" -d "$root/usr/lib/grub/i386-pc" -O i386-pc -o "$new/grub/core.img" \
  -p '(hd0,msdos1)/boot/grub' biosdisk part_msdos ext2 normal linux configfile echo test
# GRUB for UEFI: an EFI System Partition's \EFI\BOOT\BOOTX64.EFI (the path firmware boots without
# a boot entry); it reads grub.cfg next to itself, on the partition it was loaded from.
"$root/usr/bin/grub-mkimage" -d "$root/usr/lib/grub/x86_64-efi" -O x86_64-efi -o "$new/grub/bootx64.efi" \
  -p /EFI/BOOT part_msdos part_gpt fat ext2 normal linux configfile echo halt serial terminal test
for fd in OVMF_CODE_4M.fd OVMF_VARS_4M.fd; do
  [[ -f "$root/usr/share/OVMF/$fd" ]] || { echo "boot-kit: ovmf has no $fd" >&2; exit 1; }
done
# Keep what QEMU runs from; the kernel's modules (400 MB) were only needed for the initramfs.
rm -rf "$root/lib/modules" "$root/boot" "$root/usr/lib/grub"
mv "$root" "$new/root"
cat > "$new/kit.toml" <<TOML
# Tern boot kit, made by scripts/boot-kit.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)
kernel_release = "$release"
kernel = "vmlinuz"
initrd = "initrd.img"
grub_boot_img = "grub/boot.img"
grub_core_img = "grub/core.img"
grub_efi = "grub/bootx64.efi"
uefi_code = "root/usr/share/OVMF/OVMF_CODE_4M.fd"
uefi_vars = "root/usr/share/OVMF/OVMF_VARS_4M.fd"
qemu = "root/usr/bin/qemu-system-x86_64"
firmware = ["root/usr/share/qemu", "root/usr/share/seabios"]
init_sha256 = "$init_sha"
kit_format = $kit_format
TOML
rm -rf "$kit"
mv "$new" "$kit"
echo "boot kit ready: $kit (kernel $release, $("$kit/root/usr/bin/qemu-system-x86_64" --version | head -n1))"
