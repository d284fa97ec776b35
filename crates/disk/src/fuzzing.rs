//! Entry points shared by the fuzz targets (`fuzz/`) and the regression tests that replay the
//! inputs they found. Each runs a parser on arbitrary bytes and exercises what it returns;
//! errors are expected, panics, hangs and huge allocations are bugs.

use crate::{Format, OpenOptions};

/// Opens `data[1..]` as an image (format chosen by `data[0]`), lists its extents, reads a few
/// ranges and inspects its partitions.
pub fn image(data: &[u8]) {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let format = match sel % 6 {
        1 => Some(Format::Raw),
        2 => Some(Format::Qcow2),
        3 => Some(Format::Vmdk),
        4 => Some(Format::Vhd),
        5 => Some(Format::Vhdx),
        _ => None,
    };
    let opts = OpenOptions {
        format,
        ..Default::default()
    };
    let Ok(disk) = crate::open_bytes(bytes.to_vec(), &opts) else {
        return;
    };
    let _ = disk.allocated();
    let size = disk.size();
    let mut buf = vec![0u8; 256 * 1024];
    for at in [
        0,
        size / 3,
        size.saturating_sub(buf.len() as u64),
        size.saturating_sub(1),
    ] {
        let len = (buf.len() as u64).min(size - at.min(size)) as usize;
        let _ = disk.read_at(&mut buf[..len], at);
    }
    let _ = crate::inspect::inspect(disk.as_ref());
}

/// Parses a block map, as given and with its checksum made valid, so mutations reach the
/// parser behind the checksum.
pub fn blockmap(data: &[u8]) {
    let _ = crate::blockmap::BlockMap::read_from(data);
    if data.len() >= 32 {
        let (body, _) = data.split_at(data.len() - 32);
        let mut fixed = body.to_vec();
        fixed.extend_from_slice(blake3::hash(body).as_bytes());
        let _ = crate::blockmap::BlockMap::read_from(&fixed[..]);
    }
}

/// Parses a delta object (as given and with its index checksum made valid) and reads the
/// blocks it lists.
pub fn delta(data: &[u8]) {
    delta_once(data);
    let n = data.len();
    if n >= 56 {
        let index_offset = u64::from_le_bytes(data[n - 40..n - 32].try_into().expect("8 bytes"));
        if index_offset <= (n - 56) as u64 {
            use sha2::Digest;
            let mut fixed = data.to_vec();
            let sum = sha2::Sha256::digest(&data[index_offset as usize..n - 56]);
            fixed[n - 32..].copy_from_slice(&sum);
            delta_once(&fixed);
        }
    }
}

fn delta_once(data: &[u8]) {
    let Ok(mut r) = crate::delta::DeltaReader::new(std::io::Cursor::new(data)) else {
        return;
    };
    let entries = r.entries().to_vec();
    let mut buf = Vec::new();
    for e in entries.iter().take(64) {
        let _ = r.read_block(e, &mut buf);
    }
}
