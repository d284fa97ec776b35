//! Incremental runs: a staged Tern delta becomes a child snapshot through the EBS direct APIs.
//!
//! `StartSnapshot` (with the parent) → one `PutSnapshotBlock` per changed block, written by
//! the state machine's WriteBlocks Map a range at a time → `CompleteSnapshot` with the
//! changed-block count and the LINEAR checksum on the first WaitForSnapshots poll. The delta is
//! read straight from staging with ranged GETs: its footer, the index slice of a range, and the
//! blocks' bytes, up to 8 blocks stored back to back per GET. An iteration holds at most about
//! twice `writes_in_flight` blocks in memory (32 MiB at the defaults: the blocks being written
//! and the groups read ahead), whatever the size of its range.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Status, Tag};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tern_core::images::{BlockRange, ImagesError, StagedObject, TaskFailure, TaskStatus};
use tern_disk::delta::{self, DeltaEntry, DeltaReader, ENTRY_LEN, FOOTER_LEN, HEADER_LEN};

use super::{client_token, images_error, tags, Ec2Images, TaskId, EBS_BLOCK_SIZE};
use crate::sdk::classify;

/// What EBS stores for a block that must read as zeros (it has no "trim" call).
static ZEROS: [u8; EBS_BLOCK_SIZE as usize] = [0; EBS_BLOCK_SIZE as usize];

/// What the delta's footer says: how many changed blocks, and where their index starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Footer {
    pub count: u64,
    pub index_offset: u64,
}

/// The fetched parts of a delta object, readable as the whole object by
/// [`DeltaReader::new`] (which reads only the header, the footer and the index).
struct Parts {
    len: u64,
    pos: u64,
    parts: Vec<(u64, Bytes)>,
}

impl Read for Parts {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for (start, bytes) in &self.parts {
            let end = start + bytes.len() as u64;
            if (*start..end).contains(&self.pos) {
                let from = (self.pos - start) as usize;
                let n = buf.len().min(bytes.len() - from);
                buf[..n].copy_from_slice(&bytes[from..from + n]);
                self.pos += n as u64;
                return Ok(n);
            }
        }
        Err(std::io::Error::other(format!(
            "byte {} of the delta was not fetched",
            self.pos
        )))
    }
}

impl Seek for Parts {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.len.saturating_add_signed(d),
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
        };
        Ok(self.pos)
    }
}

fn invalid(source: &StagedObject, e: impl std::fmt::Display) -> ImagesError {
    ImagesError::InvalidImage(format!("{source}: {e}"))
}

/// Blocks read with one ranged GET at most: 4 MiB, S3's sweet spot for ranged reads, and an
/// eighth of the GET requests (and their cost) of one per block.
const BLOCKS_PER_GET: usize = 8;

/// The entries of a range cut into read groups: runs of up to [`BLOCKS_PER_GET`] blocks whose
/// data lies back to back, and runs of zero blocks (nothing to read).
fn read_groups(entries: &[DeltaEntry]) -> Vec<&[DeltaEntry]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=entries.len() {
        let split = i == entries.len() || i - start == BLOCKS_PER_GET || {
            let (prev, next) = (&entries[i - 1], &entries[i]);
            prev.zero != next.zero
                || (!next.zero && prev.data_offset + prev.length as u64 != next.data_offset)
        };
        if split {
            groups.push(&entries[start..i]);
            start = i;
        }
    }
    groups
}

/// The checksum EBS keeps for a block as written (zero-padded to the EBS block size).
fn written_sha256(e: &DeltaEntry, data: &[u8]) -> [u8; 32] {
    if e.length == EBS_BLOCK_SIZE {
        e.sha256
    } else {
        Sha256::digest(data).into()
    }
}

impl Ec2Images {
    /// Bytes `range` (an HTTP range, e.g. `bytes=0-31`) of a staged object, and the object's
    /// length when S3 said it.
    pub(super) async fn get_range(
        &self,
        source: &StagedObject,
        range: String,
    ) -> Result<(Bytes, Option<u64>), ImagesError> {
        let out = self
            .s3
            .get_object()
            .bucket(&source.bucket)
            .key(&source.key)
            .range(&range)
            .send()
            .await
            .map_err(|e| {
                let f = classify("GetObject", &e);
                match f.code.as_deref() {
                    Some("InvalidRange") => invalid(source, "too short to be a delta object"),
                    _ => images_error(f, &["NoSuchKey", "NoSuchBucket", "NotFound"]),
                }
            })?;
        let total = out
            .content_range()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|t| t.parse().ok());
        let body = out.body.collect().await.map_err(|e| {
            ImagesError::transient_from(format!("GetObject {source} {range}: reading the body"), e)
        })?;
        Ok((body.into_bytes(), total))
    }

    pub(super) async fn delta_footer(&self, source: &StagedObject) -> Result<Footer, ImagesError> {
        let (tail, total) = self
            .get_range(source, format!("bytes=-{FOOTER_LEN}"))
            .await?;
        let len = total.ok_or_else(|| {
            ImagesError::internal(format!(
                "GetObject {source}: no Content-Range in the answer"
            ))
        })?;
        let (count, index_offset) = delta::parse_footer(&tail).map_err(|e| invalid(source, e))?;
        let consistent = count
            .checked_mul(ENTRY_LEN as u64)
            .and_then(|n| n.checked_add(index_offset))
            .and_then(|n| n.checked_add(FOOTER_LEN))
            == Some(len)
            && index_offset >= HEADER_LEN;
        if !consistent {
            return Err(invalid(
                source,
                "index offset and entry count do not match the object's length",
            ));
        }
        Ok(Footer {
            count,
            index_offset,
        })
    }

    /// The whole index, validated as [`DeltaReader`] validates it (checksum, order, bounds,
    /// data placement): three ranged GETs however large the delta's data.
    async fn delta_index(
        &self,
        source: &StagedObject,
    ) -> Result<(u64, Vec<DeltaEntry>), ImagesError> {
        let footer = self.delta_footer(source).await?;
        let (header, _) = self
            .get_range(source, format!("bytes=0-{}", HEADER_LEN - 1))
            .await?;
        let len = footer.index_offset + footer.count * ENTRY_LEN as u64 + FOOTER_LEN;
        let (tail, _) = self
            .get_range(source, format!("bytes={}-{}", footer.index_offset, len - 1))
            .await?;
        let reader = DeltaReader::new(Parts {
            len,
            pos: 0,
            parts: vec![(0, header), (footer.index_offset, tail)],
        })
        .map_err(|e| invalid(source, e))?;
        if reader.block_size != EBS_BLOCK_SIZE {
            return Err(invalid(
                source,
                format!(
                    "the delta uses {}-byte blocks; EBS snapshots use {EBS_BLOCK_SIZE}",
                    reader.block_size
                ),
            ));
        }
        Ok((reader.disk_size, reader.entries().to_vec()))
    }

    /// One block's bytes as EBS must store them (see [`Ec2Images::group_bytes`]).
    async fn block_bytes(
        &self,
        source: &StagedObject,
        e: &DeltaEntry,
    ) -> Result<Bytes, ImagesError> {
        let mut one = self.group_bytes(source, std::slice::from_ref(e)).await?;
        Ok(one.pop().expect("one block asked, one given"))
    }

    /// The bytes of a group of blocks whose data lies back to back in the delta (one ranged
    /// GET for them all), each checked against its SHA-256 in the index and zero-padded to a
    /// whole EBS block (the last block of a disk may be short). Zero blocks read nothing.
    async fn group_bytes(
        &self,
        source: &StagedObject,
        group: &[DeltaEntry],
    ) -> Result<Vec<Bytes>, ImagesError> {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            return Ok(Vec::new());
        };
        if first.zero {
            return Ok(group.iter().map(|_| Bytes::from_static(&ZEROS)).collect());
        }
        let end = last.data_offset + last.length as u64;
        let (data, _) = self
            .get_range(source, format!("bytes={}-{}", first.data_offset, end - 1))
            .await?;
        if data.len() as u64 != end - first.data_offset {
            return Err(invalid(source, "the object is shorter than its index says"));
        }
        group
            .iter()
            .map(|e| {
                let at = (e.data_offset - first.data_offset) as usize;
                let block = data.slice(at..at + e.length as usize);
                if Sha256::digest(&block).as_slice() != e.sha256 {
                    return Err(invalid(
                        source,
                        format!("block {}: SHA-256 mismatch", e.block),
                    ));
                }
                if block.len() == EBS_BLOCK_SIZE as usize {
                    return Ok(block);
                }
                let mut padded = block.to_vec();
                padded.resize(EBS_BLOCK_SIZE as usize, 0);
                Ok(Bytes::from(padded))
            })
            .collect()
    }

    pub(super) async fn start_delta_snapshot(
        &self,
        parent_snapshot_id: &str,
        source: &StagedObject,
        description: &str,
    ) -> Result<String, ImagesError> {
        let (disk_size, entries) = self.delta_index(source).await?;
        let token = client_token(&["delta", parent_snapshot_id, &source.bucket, &source.key]);
        // EBS keeps a client token for a while; the tag finds the snapshot after that too.
        if let Some(existing) = self.snapshot_by_token(&token).await? {
            return Ok(TaskId::delta(&existing, source));
        }
        let tag = |k: &str, v: String| Tag::builder().key(k).value(v).build();
        let request = self
            .ebs
            .start_snapshot()
            .volume_size(disk_size.div_ceil(1 << 30).max(1) as i64)
            .parent_snapshot_id(parent_snapshot_id)
            .client_token(&token)
            .description(description)
            .tags(tag(tags::MANAGED_BY, self.settings.managed_by.clone()))
            .tags(tag(tags::SOURCE, source.to_string()))
            .tags(tag(tags::CLIENT_TOKEN, token.clone()))
            .tags(tag(tags::CHANGED_BLOCKS, entries.len().to_string()))
            .tags(tag(tags::PARENT, parent_snapshot_id.to_string()))
            .tags(tag(tags::DISK_SIZE, disk_size.to_string()));
        let snapshot_id = start_snapshot(request, source, &["ResourceNotFoundException"]).await?;
        Ok(TaskId::delta(&snapshot_id, source))
    }

    pub(super) async fn write_range(
        &self,
        snapshot_id: &str,
        source: &StagedObject,
        range: &BlockRange,
    ) -> Result<u64, ImagesError> {
        let footer = self.delta_footer(source).await?;
        let end = range.first.checked_add(range.count);
        if range.count == 0 || end.is_none_or(|end| end > footer.count) {
            return Err(ImagesError::InvalidParameter(format!(
                "blocks {}..+{} are not within the {} changed blocks of {source}",
                range.first, range.count, footer.count
            )));
        }
        let (header, _) = self
            .get_range(source, format!("bytes=0-{}", HEADER_LEN - 1))
            .await?;
        let (block_size, disk_size) =
            delta::parse_header(&header).map_err(|e| invalid(source, e))?;
        let start = footer.index_offset + range.first * ENTRY_LEN as u64;
        let (slice, _) = self
            .get_range(
                source,
                format!(
                    "bytes={start}-{}",
                    start + range.count * ENTRY_LEN as u64 - 1
                ),
            )
            .await?;
        let entries = delta::decode_entries(&slice, range.first, block_size, disk_size)
            .map_err(|e| invalid(source, e))?;
        if block_size != EBS_BLOCK_SIZE || entries.len() as u64 != range.count {
            return Err(invalid(source, "not a delta of 512 KiB blocks"));
        }
        // Groups of up to BLOCKS_PER_GET blocks stored back to back are read with one GET;
        // `writes_in_flight` bounds the blocks held and written at once either way.
        let groups: Vec<Vec<DeltaEntry>> = read_groups(&entries)
            .into_iter()
            .map(<[_]>::to_vec)
            .collect();
        let in_flight = self.settings.writes_in_flight.max(1);
        futures::stream::iter(groups)
            .map(|group| async move {
                let data = self.group_bytes(source, &group).await?;
                Ok::<_, ImagesError>(group.into_iter().zip(data).collect::<Vec<_>>())
            })
            .buffered(in_flight.div_ceil(BLOCKS_PER_GET))
            .map_ok(|pairs| futures::stream::iter(pairs.into_iter().map(Ok::<_, ImagesError>)))
            .try_flatten()
            .map_ok(|(e, data)| async move { self.put_block(snapshot_id, source, &e, data).await })
            .try_buffer_unordered(in_flight)
            .try_for_each(|()| async { Ok(()) })
            .await?;
        Ok(range.count)
    }

    async fn put_block(
        &self,
        snapshot_id: &str,
        source: &StagedObject,
        e: &DeltaEntry,
        data: Bytes,
    ) -> Result<(), ImagesError> {
        let sha = written_sha256(e, &data);
        self.put_raw_block(snapshot_id, source, e.block, data, sha)
            .await
    }

    /// `PutSnapshotBlock` of one whole 512 KiB block with its SHA-256 (base64).
    pub(super) async fn put_raw_block(
        &self,
        snapshot_id: &str,
        source: &StagedObject,
        block: u64,
        data: Bytes,
        sha256: [u8; 32],
    ) -> Result<(), ImagesError> {
        let index = i32::try_from(block)
            .map_err(|_| invalid(source, format!("block {block} is past EBS's largest")))?;
        self.ebs
            .put_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(index)
            .data_length(EBS_BLOCK_SIZE as i32)
            .checksum(BASE64.encode(sha256))
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .block_data(ByteStream::from(data))
            .send()
            .await
            .map_err(|err| {
                let f = classify("PutSnapshotBlock", &err);
                images_error(f, &["ResourceNotFoundException"])
            })?;
        Ok(())
    }

    /// The LINEAR aggregate EBS checks on `CompleteSnapshot`: the SHA-256 of the written
    /// blocks' SHA-256 digests, concatenated in block order.
    async fn linear_checksum(
        &self,
        source: &StagedObject,
        entries: &[DeltaEntry],
    ) -> Result<String, ImagesError> {
        let mut h = Sha256::new();
        for e in entries {
            if e.length == EBS_BLOCK_SIZE {
                h.update(e.sha256);
            } else {
                // Only the disk's last block can be short: its padded digest needs its bytes.
                let data = self.block_bytes(source, e).await?;
                h.update(written_sha256(e, &data));
            }
        }
        Ok(BASE64.encode(h.finalize()))
    }

    /// The status of a snapshot written through EBS direct (a delta, or a seed when `seed`),
    /// sealing it on the first poll.
    pub(super) async fn describe_written(
        &self,
        snapshot_id: &str,
        source: &StagedObject,
        seed: bool,
    ) -> Result<TaskStatus, ImagesError> {
        let (snapshot, info) = self.snapshot(snapshot_id).await?;
        if info.state == "error" {
            return Ok(TaskStatus::Failed {
                kind: TaskFailure::Internal,
                message: info
                    .state_message
                    .unwrap_or_else(|| format!("EBS reports snapshot {snapshot_id} as error")),
            });
        }
        let mut sealed_now = None;
        if !info.tags.contains_key(tags::SEALED) {
            let completed = info.state == "completed";
            let failed = |message| {
                Ok(TaskStatus::Failed {
                    kind: TaskFailure::Internal,
                    message,
                })
            };
            let inputs = match self.seal_inputs(source, seed).await {
                Ok(inputs) => Some(inputs),
                // A delta sealed before, by a poll whose tag write was lost (its staged
                // object may be gone since). A seed's missing write records never mean that:
                // they say a range was not written (and moto completes at once).
                Err(_) if completed && !seed => None,
                Err(ImagesError::Internal { message, .. }) => return failed(message),
                Err(e) => return Err(e),
            };
            if let Some((count, checksum)) = inputs {
                match self.seal(snapshot_id, count, checksum).await {
                    Ok(status) => sealed_now = Some(status),
                    // Sealed before, by a poll whose tag write was lost.
                    Err(_) if completed => {}
                    Err(ImagesError::Internal { message, .. }) => return failed(message),
                    Err(e) => return Err(e),
                }
            }
        }
        match (info.state.as_str(), sealed_now) {
            (_, Some(Status::Error)) => Ok(TaskStatus::Failed {
                kind: TaskFailure::Internal,
                message: format!("EBS could not complete snapshot {snapshot_id}"),
            }),
            ("completed", None | Some(Status::Completed)) => Ok(TaskStatus::Completed { snapshot }),
            _ => {
                let total = snapshot.volume_size_bytes;
                let percent = info.progress.min(99);
                Ok(TaskStatus::Active {
                    progress_percent: percent,
                    bytes_done: total / 100 * percent as u64,
                    bytes_total: total,
                    message: format!("EBS is completing snapshot {snapshot_id}"),
                })
            }
        }
    }

    /// `CompleteSnapshot` with the count and checksum of the blocks written (from the delta's
    /// index, or a seed's write records), then the [`tags::SEALED`] tag so that later polls
    /// only wait.
    /// The count and LINEAR checksum of the blocks written: from the delta's index, or from
    /// a seed's write records.
    async fn seal_inputs(
        &self,
        source: &StagedObject,
        seed: bool,
    ) -> Result<(i32, String), ImagesError> {
        let (count, checksum) = if seed {
            let (count, linear) = self.seed_seal_inputs(source).await?;
            (count as usize, BASE64.encode(linear.finalize()))
        } else {
            let (_, entries) = self.delta_index(source).await?;
            let checksum = self.linear_checksum(source, &entries).await?;
            (entries.len(), checksum)
        };
        let count = i32::try_from(count)
            .map_err(|_| invalid(source, "more changed blocks than EBS counts"))?;
        Ok((count, checksum))
    }

    /// `CompleteSnapshot` with the count and checksum of the blocks written, then the
    /// [`tags::SEALED`] tag so that later polls only wait.
    async fn seal(
        &self,
        snapshot_id: &str,
        count: i32,
        checksum: String,
    ) -> Result<Status, ImagesError> {
        let mut call = self
            .ebs
            .complete_snapshot()
            .snapshot_id(snapshot_id)
            .changed_blocks_count(count);
        // An aggregate of no blocks checks nothing.
        if count > 0 {
            call = call
                .checksum(checksum)
                .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear);
        }
        let out = call.send().await.map_err(|e| {
            images_error(
                classify("CompleteSnapshot", &e),
                &["ResourceNotFoundException"],
            )
        })?;
        self.tag(snapshot_id, &HashMap::from([(tags::SEALED, "true")]))
            .await?;
        Ok(out.status.unwrap_or(Status::Pending))
    }
}

/// Sends a StartSnapshot (seed or delta) and answers the new snapshot's id. `gone` names the
/// codes that mean a referenced resource (the parent) no longer exists.
pub(super) async fn start_snapshot(
    request: aws_sdk_ebs::operation::start_snapshot::builders::StartSnapshotFluentBuilder,
    source: &StagedObject,
    gone: &[&str],
) -> Result<String, ImagesError> {
    let out = request.send().await.map_err(|e| {
        let f = classify("StartSnapshot", &e);
        match f.code.as_deref() {
            // e.g. a volume smaller than its parent: the snapshot does not fit.
            Some("ValidationException") if !f.transient => ImagesError::InvalidImage(f.message),
            Some("ConcurrentLimitExceededException") => ImagesError::Transient {
                message: f.message,
                source: None,
            },
            _ => images_error(f, gone),
        }
    })?;
    out.snapshot_id.ok_or_else(|| {
        ImagesError::internal(format!("StartSnapshot for {source} gave no snapshot id"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(block: u64, zero: bool, data_offset: u64) -> DeltaEntry {
        DeltaEntry {
            block,
            zero,
            length: EBS_BLOCK_SIZE,
            data_offset,
            sha256: [0; 32],
        }
    }

    /// Runs of stored blocks are read together up to the GET size; zero blocks are never read
    /// with data, and data that is not back to back is never read as one.
    #[test]
    fn read_groups_cut_at_zeros_gaps_and_the_get_size() {
        let bs = EBS_BLOCK_SIZE as u64;
        let mut entries: Vec<DeltaEntry> = (0..10).map(|i| entry(i, false, 32 + i * bs)).collect();
        entries.insert(3, entry(50, true, 0));
        entries.insert(4, entry(51, true, 0));
        // A hole in the data (a damaged index): the next block starts a new read.
        entries.push(entry(99, false, 32 + 20 * bs));
        let sizes: Vec<(usize, bool)> = read_groups(&entries)
            .iter()
            .map(|g| (g.len(), g[0].zero))
            .collect();
        assert_eq!(
            sizes,
            [(3, false), (2, true), (7, false), (1, false)],
            "3 stored, 2 zero, then 7 contiguous, then the block after the hole"
        );
        let long: Vec<DeltaEntry> = (0..20).map(|i| entry(i, false, 32 + i * bs)).collect();
        let lens: Vec<usize> = read_groups(&long).iter().map(|g| g.len()).collect();
        assert_eq!(lens, [8, 8, 4]);
        assert!(read_groups(&[]).is_empty());
    }
}
