#!/bin/sh
# Builds a seed corpus for the fuzz targets from tiny images made by qemu-img, each prefixed
# with the selector byte the `image` target reads (0 = detect the format).
# Usage: fuzz/seed.sh   (from crates/disk; needs qemu-img and qemu-io)
set -eu
out=fuzz/corpus/image
mkdir -p "$out" fuzz/corpus/blockmap fuzz/corpus/delta
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -c 8192 /dev/urandom > "$tmp/src.raw"
printf "tern seed text %.0s" $(seq 1 300) | head -c 4096 >> "$tmp/src.raw"; truncate -s 65536 "$tmp/src.raw"
i=0
add() { i=$((i + 1)); { printf '\000'; cat "$1"; } > "$out/seed-$i"; }
for o in "compat=0.10,cluster_size=512" "cluster_size=512" "cluster_size=16384,extended_l2=on" ; do
  qemu-img convert -q -f raw -O qcow2 -o "$o" "$tmp/src.raw" "$tmp/a.qcow2"; add "$tmp/a.qcow2"
done
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=512 "$tmp/src.raw" "$tmp/c.qcow2"; add "$tmp/c.qcow2"
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=512,compression_type=zstd "$tmp/src.raw" "$tmp/z.qcow2"; add "$tmp/z.qcow2"
for s in streamOptimized monolithicSparse; do
  qemu-img convert -q -f raw -O vmdk -o subformat=$s "$tmp/src.raw" "$tmp/v.vmdk"; add "$tmp/v.vmdk"
done
qemu-img convert -q -f raw -O vpc -o subformat=dynamic "$tmp/src.raw" "$tmp/d.vhd"; add "$tmp/d.vhd"
qemu-img convert -q -f raw -O vhdx -o subformat=dynamic,block_size=1M,log_size=1M "$tmp/src.raw" "$tmp/x.vhdx"; add "$tmp/x.vhdx"
printf '# Disk DescriptorFile\ncreateType="monolithicFlat"\nRW 128 FLAT "x.raw" 0\nRW 64 ZERO\n' > "$tmp/desc"; add "$tmp/desc"
# A raw disk with an MBR and GPT for the inspector.
python3 - "$tmp/mbr" <<'PY'
import sys, struct
d = bytearray(65536)
d[446:462] = bytes([0x80, 0, 0, 0, 0xee, 0, 0, 0]) + struct.pack('<II', 1, 127)
d[510:512] = b'\x55\xaa'
d[512:520] = b'EFI PART'
d[512+72:512+88] = struct.pack('<QII', 2, 4, 128)
d[1024:1040] = bytes.fromhex('28732ac11ff8d211ba4b00a0c93ec93b')
d[1024+32:1024+48] = struct.pack('<QQ', 34, 100)
open(sys.argv[1], 'wb').write(d)
PY
add "$tmp/mbr"
# Block map and delta seeds, when a `tern` binary is at hand ($TERN or on PATH).
TERN=${TERN:-tern}
if command -v "$TERN" >/dev/null 2>&1; then
  "$TERN" disk blockmap "$tmp/src.raw" -o fuzz/corpus/blockmap/seed-1 >/dev/null
  cp "$tmp/src.raw" "$tmp/new.raw"
  printf 'changed' | dd of="$tmp/new.raw" bs=1 seek=1000 conv=notrunc 2>/dev/null
  "$TERN" disk delta fuzz/corpus/blockmap/seed-1 "$tmp/new.raw" -o fuzz/corpus/delta/seed-1 >/dev/null
fi
echo "$i image seeds in $out"
