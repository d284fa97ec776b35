//! Block maps and deltas: random writes between two block maps, delta, apply onto the old image,
//! and the result must be byte-identical to the new image.

use std::fs::File;
use std::path::Path;

use proptest::prelude::*;
use tern_disk::blockmap::{BlockMap, BLOCK_SIZE};
use tern_disk::delta::{self, DeltaReader, DeltaWriter};
use tern_disk::{open, OpenOptions};

const BS: u64 = BLOCK_SIZE as u64;

fn open_raw(path: &Path) -> Box<dyn tern_disk::VirtualDisk> {
    open(
        path,
        &OpenOptions {
            format: Some(tern_disk::Format::Raw),
            ..Default::default()
        },
    )
    .expect("open")
}

#[derive(Clone, Debug)]
enum Edit {
    Data { at: u64, len: usize, seed: u8 },
    Zero { at: u64, len: usize },
}

fn edit_strategy(size: u64) -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..size, 1..3 * BS as usize, any::<u8>()).prop_map(|(at, len, seed)| Edit::Data {
            at,
            len,
            seed
        }),
        (0..size, 1..3 * BS as usize).prop_map(|(at, len)| Edit::Zero { at, len }),
    ]
}

fn apply_edits(data: &mut [u8], edits: &[Edit]) {
    for e in edits {
        match *e {
            Edit::Data { at, len, seed } => {
                let at = (at % data.len() as u64) as usize;
                let end = (at + len).min(data.len());
                for (i, b) in data[at..end].iter_mut().enumerate() {
                    *b = seed.wrapping_add((i * 31 % 251) as u8) | 1;
                }
            }
            Edit::Zero { at, len } => {
                let at = (at % data.len() as u64) as usize;
                let end = (at + len).min(data.len());
                data[at..end].fill(0);
            }
        }
    }
}

fn roundtrip(old: &[u8], new: &[u8]) -> (delta::DeltaSummary, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_p, new_p, delta_p, out_p, map_p) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("d"),
        dir.path().join("out"),
        dir.path().join("m"),
    );
    std::fs::write(&old_p, old).expect("write old");
    std::fs::write(&new_p, new).expect("write new");
    let map = BlockMap::compute(open_raw(&old_p).as_ref(), &tern_disk::no_progress).expect("map");
    // Through the file format, as the CLI and the connector use it.
    map.write_to(File::create(&map_p).expect("create map"))
        .expect("write map");
    let map = BlockMap::read_from(File::open(&map_p).expect("open map")).expect("read map");
    let summary = delta::create(
        &map,
        open_raw(&new_p).as_ref(),
        File::create(&delta_p).expect("create delta"),
        &tern_disk::no_progress,
    )
    .expect("delta");
    let mut reader =
        DeltaReader::new(File::open(&delta_p).expect("open delta")).expect("read delta");
    delta::apply(
        open_raw(&old_p).as_ref(),
        &mut reader,
        &out_p,
        &tern_disk::no_progress,
    )
    .expect("apply");
    (summary, std::fs::read(&out_p).expect("read out"))
}

fn changed_blocks(old: &[u8], new: &[u8]) -> u64 {
    let blocks = (new.len() as u64).div_ceil(BS);
    (0..blocks)
        .filter(|&b| {
            let s = (b * BS) as usize;
            let n = &new[s..(s + BS as usize).min(new.len())];
            let o = old.get(s..(s + BS as usize).min(old.len())).unwrap_or(&[]);
            let n_zero = n.iter().all(|&x| x == 0);
            if o.is_empty() {
                return !n_zero;
            }
            let o_zero = o.iter().all(|&x| x == 0);
            (n_zero != o_zero) || (!n_zero && n != o)
        })
        .count() as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn delta_apply_reproduces_the_new_image(
        blocks in 1u64..10,
        tail in prop_oneof![Just(0u64), 1u64..BS / 512].prop_map(|t| t * 512),
        base_edits in proptest::collection::vec(edit_strategy(10 * BS), 0..6),
        edits in proptest::collection::vec(edit_strategy(10 * BS), 0..8),
        resize in prop_oneof![Just(0i64), -2i64..3],
    ) {
        let size = blocks * BS + tail;
        let mut old = vec![0u8; size as usize];
        apply_edits(&mut old, &base_edits);
        let new_size = ((size as i64 + resize * BS as i64).max(512)) as usize;
        let mut new = old.clone();
        new.resize(new_size, 0);
        apply_edits(&mut new, &edits);
        let (summary, out) = roundtrip(&old, &new);
        prop_assert!(out == new, "applied delta differs from the new image");
        prop_assert_eq!(summary.changed_blocks, changed_blocks(&old, &new));
        let expect_map = BlockMap::compute(open_raw(&write_tmp(&new).1).as_ref(), &tern_disk::no_progress).expect("map");
        prop_assert_eq!(summary.new_map, expect_map);
    }
}

fn write_tmp(data: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("img");
    std::fs::write(&p, data).expect("write");
    (dir, p)
}

#[test]
fn block_that_became_zero_is_in_the_delta() {
    let mut old = vec![0u8; 4 * BS as usize];
    old[BS as usize + 5] = 9;
    old[3 * BS as usize] = 1;
    let mut new = old.clone();
    new[BS as usize + 5] = 0;
    let dir = tempfile::tempdir().expect("tempdir");
    let (o, n, d) = (
        dir.path().join("o"),
        dir.path().join("n"),
        dir.path().join("d"),
    );
    std::fs::write(&o, &old).unwrap();
    std::fs::write(&n, &new).unwrap();
    let map = BlockMap::compute(open_raw(&o).as_ref(), &tern_disk::no_progress).unwrap();
    assert_eq!(map.nonzero_blocks(), 2);
    let s = delta::create(
        &map,
        open_raw(&n).as_ref(),
        File::create(&d).unwrap(),
        &tern_disk::no_progress,
    )
    .unwrap();
    assert_eq!((s.changed_blocks, s.zero_blocks, s.data_bytes), (1, 1, 0));
    let r = DeltaReader::new(File::open(&d).unwrap()).unwrap();
    let e = r.entries()[0];
    assert_eq!((e.block, e.zero), (1, true));
    // The digest EBS needs for a block of zeros.
    let zero_sha = {
        use sha2::Digest;
        sha2::Sha256::digest(vec![0u8; BS as usize])
    };
    assert_eq!(e.sha256.as_slice(), zero_sha.as_slice());
}

#[test]
fn damaged_delta_and_map_are_refused() {
    let (_d, p) = write_tmp(&{
        let mut v = vec![7u8; 2 * BS as usize];
        v[0] = 1;
        v
    });
    let map = BlockMap::compute(open_raw(&p).as_ref(), &tern_disk::no_progress).unwrap();
    let mut bytes = Vec::new();
    map.write_to(&mut bytes).unwrap();
    let mut bad = bytes.clone();
    bad[40] ^= 1;
    assert!(BlockMap::read_from(&bad[..])
        .unwrap_err()
        .to_string()
        .contains("checksum"));
    assert!(BlockMap::read_from(&bytes[..bytes.len() - 1]).is_err());

    let empty = BlockMap {
        block_size: BLOCK_SIZE,
        disk_size: 2 * BS,
        blocks: vec![],
    };
    let mut obj = Vec::new();
    delta::create(
        &empty,
        open_raw(&p).as_ref(),
        &mut obj,
        &tern_disk::no_progress,
    )
    .unwrap();
    assert!(DeltaReader::new(std::io::Cursor::new(obj.clone())).is_ok());
    // Flip a data byte: the index is intact but the block's SHA-256 no longer matches.
    let mut flipped = obj.clone();
    flipped[100] ^= 0xff;
    let mut r = DeltaReader::new(std::io::Cursor::new(flipped)).unwrap();
    let e = r.entries()[0];
    let err = r.read_block(&e, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
    // Truncated: no footer.
    assert!(DeltaReader::new(std::io::Cursor::new(obj[..obj.len() - 10].to_vec())).is_err());
    // Index tampered: checksum catches it.
    let mut idx = obj.clone();
    let n = idx.len();
    idx[n - 56 - 56] ^= 1;
    assert!(DeltaReader::new(std::io::Cursor::new(idx))
        .unwrap_err()
        .to_string()
        .contains("index checksum"));
}

#[test]
fn writer_rejects_out_of_order_and_wrong_lengths() {
    let mut w = DeltaWriter::new(Vec::new(), BLOCK_SIZE, 3 * BS).unwrap();
    w.add_block(1, &vec![1u8; BS as usize], None).unwrap();
    assert!(w.add_zero(1).is_err());
    assert!(w.add_block(2, &[1u8; 10], None).is_err());
    assert!(w.add_zero(3).is_err());
    w.add_zero(2).unwrap();
    let (obj, len) = w.finish().unwrap();
    assert_eq!(obj.len() as u64, len);
    let r = DeltaReader::new(std::io::Cursor::new(obj)).unwrap();
    assert_eq!(r.entries().len(), 2);
}
