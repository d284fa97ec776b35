//! Seeds through EBS direct ([`SeedMethod::EbsDirect`](super::SeedMethod)): no ImportSnapshot,
//! no VM Import role. The staged stream-optimized VMDK is written block by block onto a new
//! snapshot without a parent, by the same WriteBlocks Map that writes deltas:
//!
//! * the Import task starts the snapshot (`StartSnapshot`, volume size from the VMDK's
//!   capacity, idempotent by a client token and its tag) and returns ranges of the disk's
//!   512 KiB blocks, `blocks_per_range` each, leaving out ranges the grain directory says are
//!   empty (`first`/`count` are block numbers here, not positions in a delta's index);
//! * each WriteBlocks iteration reads the footer and grain directory, the grain tables of its
//!   range and then the grain records, up to 8 blocks' worth per ranged GET, inflates them and
//!   writes every block that is not all zeros with `PutSnapshotBlock` and its SHA-256. It never
//!   holds more than a few MiB per write in flight, whatever the disk's size. It then records
//!   what it wrote (block numbers and SHA-256s) in a small object next to the VMDK,
//!   `<vmdk key>.ebs-seed/<first block>`, because `CompleteSnapshot` needs the count and the
//!   LINEAR checksum of every written block and the Map's results are not kept; re-running an
//!   iteration writes the same blocks and the same record;
//! * WaitForSnapshots' first poll reads those records in block order and seals the snapshot
//!   exactly as a delta's. The records live under the run's staging prefix, so the run's
//!   cleanup and the bucket's lifecycle rule remove them with the VMDK.

use std::collections::HashMap;

use aws_sdk_ebs::types::Tag;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tern_core::images::{BlockRange, ImagesError, StagedObject};

use super::vmdk::{self, Layout, FOOTER_FROM_END};
use super::{client_token, images_error, tags, Ec2Images, TaskId, EBS_BLOCK_SIZE};
use crate::sdk::classify;

/// Blocks whose grain records are fetched with one ranged GET at most (4 MiB of disk).
const BLOCKS_PER_GET: usize = 8;
/// Grain tables fetched at once by an iteration.
const TABLES_IN_FLIGHT: usize = 8;

const RECORD_MAGIC: &[u8; 8] = b"TERNSEED";
const RECORD_VERSION: u32 = 1;
const RECORD_HEAD: usize = 8 + 4 + 4 + 8 + 8 + 8;
const RECORD_ENTRY: usize = 8 + 32;

fn invalid(source: &StagedObject, e: impl std::fmt::Display) -> ImagesError {
    ImagesError::InvalidImage(format!("{source}: {e}"))
}

/// The key of the record of the range starting at block `first`.
pub(super) fn record_key(source: &StagedObject, first: u64) -> String {
    format!("{}.ebs-seed/{first:012}", source.key)
}

/// What one WriteBlocks iteration wrote: `TERNSEED`, version, reserved, first block, block
/// count of the range, n, then n × (block u64, SHA-256 of the block as written), then the
/// SHA-256 of everything before it. Little-endian.
pub(super) fn encode_record(range: &BlockRange, written: &[(u64, [u8; 32])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEAD + written.len() * RECORD_ENTRY + 32);
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&RECORD_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&range.first.to_le_bytes());
    out.extend_from_slice(&range.count.to_le_bytes());
    out.extend_from_slice(&(written.len() as u64).to_le_bytes());
    for (block, sha) in written {
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(sha);
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// The (block, SHA-256) pairs of a record, checked: its own digest, the range it claims, and
/// blocks ascending inside that range.
pub(super) fn decode_record(
    bytes: &[u8],
    range: &BlockRange,
) -> Result<Vec<(u64, [u8; 32])>, String> {
    if bytes.len() < RECORD_HEAD + 32 || &bytes[..8] != RECORD_MAGIC {
        return Err("not a seed write record".into());
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err("its checksum does not match".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != RECORD_VERSION {
        return Err(format!("version {version}"));
    }
    if (u64_at(16), u64_at(24)) != (range.first, range.count) {
        return Err(format!(
            "it records blocks {}..+{}, not {}..+{}",
            u64_at(16),
            u64_at(24),
            range.first,
            range.count
        ));
    }
    let n = u64_at(32);
    if n.checked_mul(RECORD_ENTRY as u64) != Some((body.len() - RECORD_HEAD) as u64) {
        return Err("its length does not match its entry count".into());
    }
    let mut out = Vec::with_capacity(n as usize);
    for e in body[RECORD_HEAD..].chunks_exact(RECORD_ENTRY) {
        let block = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
        let in_range = block >= range.first && block - range.first < range.count;
        if !in_range || out.last().is_some_and(|(b, _)| *b >= block) {
            return Err(format!(
                "block {block} is out of order or outside its range"
            ));
        }
        out.push((block, e[8..].try_into().expect("32 bytes")));
    }
    Ok(out)
}

/// The blocks of one GET: each block's grains as (grain number, record offset; 0 = zeros).
type BlockGrains = (u64, Vec<(u64, u64)>);

/// Blocks cut into GET groups: up to [`BLOCKS_PER_GET`] blocks whose stored grains lie
/// close together (the span read is at most twice their records' largest size).
fn get_groups(blocks: Vec<BlockGrains>, max_record: u64) -> Vec<Vec<BlockGrains>> {
    let mut groups: Vec<Vec<BlockGrains>> = Vec::new();
    let span = |g: &[BlockGrains]| {
        let offs = g
            .iter()
            .flat_map(|(_, gs)| gs.iter().map(|(_, o)| *o))
            .filter(|o| *o != 0);
        let (lo, hi, n) = offs.fold((u64::MAX, 0, 0u64), |(lo, hi, n), o| {
            (lo.min(o), hi.max(o), n + 1)
        });
        n == 0 || hi + max_record - lo <= 2 * max_record * n
    };
    for b in blocks {
        if let Some(last) = groups.last_mut() {
            if last.len() < BLOCKS_PER_GET {
                last.push(b);
                if span(last) {
                    continue;
                }
                let b = last.pop().expect("just pushed");
                groups.push(vec![b]);
                continue;
            }
        }
        groups.push(vec![b]);
    }
    groups
}

impl Ec2Images {
    /// The VMDK's footer and grain directory: two ranged GETs.
    pub(super) async fn seed_layout(&self, source: &StagedObject) -> Result<Layout, ImagesError> {
        let (tail, total) = self
            .get_range(source, format!("bytes=-{FOOTER_FROM_END}"))
            .await?;
        let len = total.ok_or_else(|| {
            ImagesError::internal(format!(
                "GetObject {source}: no Content-Range in the answer"
            ))
        })?;
        let mut layout = match Layout::from_footer(&tail, len) {
            Ok(layout) => layout,
            // qemu-img writes the real grain directory offset into the header at the start
            // (and a footer VMware's readers need not find): read that one instead.
            Err(footer) => {
                let (head, _) = self.get_range(source, "bytes=0-511".into()).await?;
                match Layout::from_footer(&head, len) {
                    Ok(layout) => layout,
                    _ => return Err(invalid(source, footer)),
                }
            }
        };
        if layout.gd_len > 0 {
            let (gd, _) = self
                .get_range(
                    source,
                    format!(
                        "bytes={}-{}",
                        layout.gd_at,
                        layout.gd_at + layout.gd_len - 1
                    ),
                )
                .await?;
            layout.set_directory(&gd).map_err(|e| invalid(source, e))?;
        }
        Ok(layout)
    }

    /// The ranges WriteBlocks writes: the disk's blocks, cut into `blocks_per_range`, without
    /// ranges that have no grain table.
    pub(super) fn seed_ranges(&self, layout: &Layout) -> Vec<BlockRange> {
        BlockRange::split(layout.blocks(), self.settings.blocks_per_range)
            .into_iter()
            .filter(|r| !layout.tables(r.first, r.count).is_empty())
            .collect()
    }

    pub(super) async fn start_seed_snapshot(
        &self,
        source: &StagedObject,
        description: &str,
    ) -> Result<String, ImagesError> {
        let layout = self.seed_layout(source).await?;
        let token = client_token(&["seed", &source.bucket, &source.key]);
        if let Some(existing) = self.snapshot_by_token(&token).await? {
            return Ok(TaskId::seed(&existing, source));
        }
        let tag = |k: &str, v: String| Tag::builder().key(k).value(v).build();
        let request = self
            .ebs
            .start_snapshot()
            .volume_size(layout.capacity.div_ceil(1 << 30).max(1) as i64)
            .client_token(&token)
            .description(description)
            .tags(tag(tags::MANAGED_BY, self.settings.managed_by.clone()))
            .tags(tag(tags::SOURCE, source.to_string()))
            .tags(tag(tags::CLIENT_TOKEN, token.clone()))
            .tags(tag(tags::DISK_SIZE, layout.capacity.to_string()));
        let snapshot_id = super::delta::start_snapshot(request, source, &[]).await?;
        Ok(TaskId::seed(&snapshot_id, source))
    }

    /// One WriteBlocks iteration of a seed: the non-zero blocks of `range` (block numbers),
    /// then its record. Answers how many blocks it wrote.
    pub(super) async fn write_seed_range(
        &self,
        snapshot_id: &str,
        source: &StagedObject,
        range: &BlockRange,
    ) -> Result<u64, ImagesError> {
        let layout = self.seed_layout(source).await?;
        let end = range.first.checked_add(range.count);
        if range.count == 0 || end.is_none_or(|end| end > layout.blocks()) {
            return Err(ImagesError::InvalidParameter(format!(
                "blocks {}..+{} are not within the {} blocks of {source}",
                range.first,
                range.count,
                layout.blocks()
            )));
        }
        // The grain tables of the range, one GET each.
        let mut tables: HashMap<usize, Bytes> = HashMap::new();
        for chunk in layout
            .tables(range.first, range.count)
            .chunks(TABLES_IN_FLIGHT)
        {
            let reads: Vec<_> = chunk
                .iter()
                .map(|&(i, sector)| self.grain_table(&layout, source, i, sector))
                .collect();
            let got = futures::future::try_join_all(reads).await?;
            tables.extend(got);
        }
        // Each block's grains and where their records are; blocks without any are zeros.
        let per_table = layout.gt_entries;
        let grains_total = layout.capacity.div_ceil(layout.grain);
        let mut blocks = Vec::new();
        for block in range.first..range.first + range.count {
            let first_grain = block * layout.grains_per_block();
            let mut grains = Vec::new();
            for g in first_grain..(first_grain + layout.grains_per_block()).min(grains_total) {
                if let Some(t) = tables.get(&((g / per_table) as usize)) {
                    let off = layout.grain_offset(t, g).map_err(|e| invalid(source, e))?;
                    if off != 0 {
                        grains.push((g, off));
                    }
                }
            }
            if !grains.is_empty() {
                blocks.push((block, grains));
            }
        }
        // Read a batch of groups (about `writes_in_flight` blocks), then write its blocks at
        // once: at most two batches of blocks are held, whatever the range's size.
        let reads_at_once = self
            .settings
            .writes_in_flight
            .max(1)
            .div_ceil(BLOCKS_PER_GET);
        let groups = get_groups(blocks, layout.max_record());
        let mut written: Vec<(u64, [u8; 32])> = Vec::new();
        for batch in groups.chunks(reads_at_once) {
            let reads: Vec<_> = batch
                .iter()
                .map(|g| self.seed_group(&layout, source, g.clone()))
                .collect();
            let read = futures::future::try_join_all(reads).await?;
            let puts: Vec<_> = read
                .into_iter()
                .flatten()
                .map(|(block, data)| self.put_seed_block(snapshot_id, source, block, data))
                .collect();
            let put = futures::future::try_join_all(puts).await?;
            written.extend(put.into_iter().flatten());
        }
        written.sort_unstable_by_key(|(b, _)| *b);
        let record = encode_record(range, &written);
        self.s3
            .put_object()
            .bucket(&source.bucket)
            .key(record_key(source, range.first))
            .body(S3Body::from(record))
            .send()
            .await
            .map_err(|e| images_error(classify("PutObject", &e), &["NoSuchBucket"]))?;
        Ok(written.len() as u64)
    }

    async fn grain_table(
        &self,
        layout: &Layout,
        source: &StagedObject,
        index: usize,
        sector: u32,
    ) -> Result<(usize, Bytes), ImagesError> {
        let at = sector as u64 * 512;
        let (t, _) = self
            .get_range(source, format!("bytes={at}-{}", at + layout.gt_len() - 1))
            .await?;
        if t.len() as u64 != layout.gt_len() {
            return Err(invalid(source, "VMDK grain table: truncated"));
        }
        Ok((index, t))
    }

    /// Writes a block that holds data; a block of zeros is left out (a snapshot without a
    /// parent reads zeros wherever nothing was written).
    async fn put_seed_block(
        &self,
        snapshot_id: &str,
        source: &StagedObject,
        block: u64,
        data: Bytes,
    ) -> Result<Option<(u64, [u8; 32])>, ImagesError> {
        if tern_disk::is_zero(&data) {
            return Ok(None);
        }
        let sha: [u8; 32] = Sha256::digest(&data).into();
        self.put_raw_block(snapshot_id, source, block, data, sha)
            .await?;
        Ok(Some((block, sha)))
    }

    /// The blocks of one GET group, inflated (512 KiB each, zero-filled where no grain is).
    async fn seed_group(
        &self,
        layout: &Layout,
        source: &StagedObject,
        group: Vec<BlockGrains>,
    ) -> Result<Vec<(u64, Bytes)>, ImagesError> {
        let (mut lo, mut hi) = (u64::MAX, 0);
        for (_, grains) in &group {
            for &(_, offset) in grains {
                lo = lo.min(offset);
                hi = hi.max(offset);
            }
        }
        let hi = (hi + layout.max_record()).min(layout.len - FOOTER_FROM_END);
        if hi <= lo {
            return Err(invalid(
                source,
                "VMDK grain table: a grain inside the footer",
            ));
        }
        let (span, _) = self
            .get_range(source, format!("bytes={lo}-{}", hi - 1))
            .await?;
        let layout = layout.clone();
        let source = source.clone();
        // Inflating 4 MiB is CPU work: off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut z = flate2::Decompress::new(true);
            group
                .into_iter()
                .map(|(block, grains)| {
                    let mut data = vec![0u8; EBS_BLOCK_SIZE as usize];
                    let base = block * layout.grains_per_block();
                    for (g, off) in grains {
                        let at = ((g - base) * layout.grain) as usize;
                        let rec = span.get((off - lo) as usize..).unwrap_or(&[]);
                        vmdk::inflate_grain(
                            &mut z,
                            &layout,
                            g,
                            rec,
                            &mut data[at..at + layout.grain as usize],
                        )
                        .map_err(|e| invalid(&source, e))?;
                    }
                    Ok((block, Bytes::from(data)))
                })
                .collect::<Result<Vec<_>, ImagesError>>()
        })
        .await
        .map_err(|e| ImagesError::internal(format!("inflating grains: {e}")))?
    }

    /// What `CompleteSnapshot` needs for a seed: the count of written blocks and their LINEAR
    /// checksum, from the iterations' records in block order.
    pub(super) async fn seed_seal_inputs(
        &self,
        source: &StagedObject,
    ) -> Result<(u64, Sha256), ImagesError> {
        let layout = self.seed_layout(source).await?;
        let ranges = self.seed_ranges(&layout);
        let mut records = futures::stream::iter(ranges)
            .map(|r| async move {
                let key = StagedObject {
                    bucket: source.bucket.clone(),
                    key: record_key(source, r.first),
                };
                let (bytes, _) =
                    self.get_range(&key, "bytes=0-".into())
                        .await
                        .map_err(|e| match e {
                            ImagesError::NotFound(_) => ImagesError::internal(format!(
                                "{source}: blocks {}..+{} were never written (no record {key})",
                                r.first, r.count
                            )),
                            e => e,
                        })?;
                decode_record(&bytes, &r)
                    .map_err(|e| ImagesError::internal(format!("{source}: the record {key}: {e}")))
            })
            .buffered(TABLES_IN_FLIGHT);
        let (mut count, mut linear) = (0u64, Sha256::new());
        while let Some(written) = records.try_next().await? {
            for (_, sha) in written {
                linear.update(sha);
                count += 1;
            }
        }
        Ok((count, linear))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_what_they_do_not_describe() {
        let range = BlockRange {
            first: 2000,
            count: 2000,
        };
        let written = vec![(2000, [1u8; 32]), (2500, [2u8; 32]), (3999, [3u8; 32])];
        let bytes = encode_record(&range, &written);
        assert_eq!(decode_record(&bytes, &range).unwrap(), written);
        let other = BlockRange {
            first: 0,
            count: 2000,
        };
        assert!(decode_record(&bytes, &other)
            .unwrap_err()
            .contains("not 0..+2000"));
        let mut flipped = bytes.clone();
        flipped[50] ^= 1;
        assert!(decode_record(&flipped, &range)
            .unwrap_err()
            .contains("checksum"));
        assert!(decode_record(&bytes[..20], &range).is_err());
        let outside = encode_record(&range, &[(4000, [0; 32])]);
        assert!(decode_record(&outside, &range)
            .unwrap_err()
            .contains("outside"));
        let empty = encode_record(&range, &[]);
        assert!(decode_record(&empty, &range).unwrap().is_empty());
    }

    #[test]
    fn get_groups_keep_close_records_together_and_split_far_ones() {
        let rec = 100_000;
        let near = |b: u64| (b, vec![(b * 8, 1_000 + b * 50_000)]);
        let groups = get_groups((0..10).map(near).collect(), rec);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [8, 2],
            "8 blocks per GET"
        );
        // Block 2's grain lies far away (another writer's layout): it is read on its own.
        let blocks = vec![near(0), near(1), (2, vec![(16, 90_000_000)]), near(3)];
        let groups = get_groups(blocks, rec);
        assert_eq!(
            groups
                .iter()
                .map(|g| g.iter().map(|b| b.0).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            [vec![0, 1], vec![2], vec![3]]
        );
    }
}
