//! Fixture disks built in memory, for tests and benchmarks that need a real partition table
//! without running a partitioning tool.

const MIB: u64 = 1 << 20;

/// The bytes of a raw disk of `size` bytes (at least 5 MiB) with a GPT: an EFI system partition
/// (1–3 MiB, a FAT32 boot sector) and a Linux partition (3 MiB to the last MiB), protective MBR
/// included. Everything else is zeros.
pub fn gpt_disk(size: u64) -> Vec<u8> {
    assert!(
        size >= 5 * MIB,
        "a GPT fixture needs at least 5 MiB, not {size}"
    );
    let mut img = vec![0u8; size as usize];
    fn put(img: &mut [u8], at: u64, b: &[u8]) {
        img[at as usize..at as usize + b.len()].copy_from_slice(b)
    }
    // Protective MBR.
    img[446 + 4] = 0xee;
    put(&mut img, 446 + 8, &1u32.to_le_bytes());
    put(&mut img, 446 + 12, &u32::MAX.to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
    // GPT header: entries from LBA 2, 128 of 128 bytes.
    put(&mut img, 512, b"EFI PART");
    put(&mut img, 512 + 72, &2u64.to_le_bytes());
    put(&mut img, 512 + 80, &128u32.to_le_bytes());
    put(&mut img, 512 + 84, &128u32.to_le_bytes());
    let parts = [
        ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", MIB, 2 * MIB),
        (
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            3 * MIB,
            size - 4 * MIB,
        ),
    ];
    for (i, (ty, start, len)) in parts.iter().enumerate() {
        let e = 1024 + i as u64 * 128;
        put(&mut img, e, &guid(ty));
        put(&mut img, e + 16, &[i as u8 + 1; 16]);
        put(&mut img, e + 32, &(start / 512).to_le_bytes());
        put(&mut img, e + 40, &((start + len) / 512 - 1).to_le_bytes());
    }
    put(&mut img, MIB + 82, b"FAT32   ");
    img
}

/// A GUID's on-disk bytes (the first three fields little-endian).
fn guid(s: &str) -> Vec<u8> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let h: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).expect("a hex GUID"))
        .collect();
    [h[3], h[2], h[1], h[0], h[5], h[4], h[7], h[6]]
        .into_iter()
        .chain(h[8..].iter().copied())
        .collect()
}
