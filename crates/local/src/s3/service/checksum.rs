//! Checksums a client claims for a body (headers or trailers), verified as the body arrives.

use axum::http;
use base64::Engine as _;
use s3s::dto::*;
use s3s::{s3_error, S3Result};

/// Digests the client sent in headers (and, for `aws-chunked` uploads, trailers).
pub(super) struct Claimed {
    pub(super) content_md5: Option<String>,
    pub(super) crc32: Option<String>,
    pub(super) crc32c: Option<String>,
    pub(super) sha1: Option<String>,
    pub(super) sha256: Option<String>,
    pub(super) crc64nvme: Option<String>,
    pub(super) algorithm: Option<ChecksumAlgorithm>,
    pub(super) trailer: Option<String>,
}

impl Claimed {
    pub(super) fn wants(&self, name: &str, value: &Option<String>) -> bool {
        value.is_some()
            || self
                .algorithm
                .as_ref()
                .is_some_and(|a| a.as_str().eq_ignore_ascii_case(name))
            || self.trailer.as_deref().is_some_and(|t| {
                t.to_ascii_lowercase()
                    .contains(&format!("x-amz-checksum-{}", name.to_ascii_lowercase()))
            })
    }

    pub(super) fn hasher(&self) -> s3s::checksum::ChecksumHasher {
        let mut h = s3s::checksum::ChecksumHasher::default();
        if self.wants("CRC32", &self.crc32) {
            h.crc32 = Some(Default::default());
        }
        if self.wants("CRC32C", &self.crc32c) {
            h.crc32c = Some(Default::default());
        }
        if self.wants("SHA1", &self.sha1) {
            h.sha1 = Some(Default::default());
        }
        if self.wants("SHA256", &self.sha256) {
            h.sha256 = Some(Default::default());
        }
        if self.wants("CRC64NVME", &self.crc64nvme) {
            h.crc64nvme = Some(Default::default());
        }
        h
    }

    pub(super) fn verify(
        mut self,
        md5: &[u8; 16],
        computed: Checksum,
        trailers: Option<s3s::TrailingHeaders>,
    ) -> S3Result<()> {
        if let Some(claimed) = &self.content_md5 {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(claimed)
                .map_err(|_| {
                    s3_error!(InvalidDigest, "The Content-MD5 you specified was invalid.")
                })?;
            if decoded != md5 {
                return Err(s3_error!(
                    BadDigest,
                    "The Content-MD5 you specified did not match what we received."
                ));
            }
        }
        if let Some(trailers) = trailers.and_then(|t| t.take()) {
            let get = |name: &str| {
                trailers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            self.crc32 = self.crc32.or_else(|| get("x-amz-checksum-crc32"));
            self.crc32c = self.crc32c.or_else(|| get("x-amz-checksum-crc32c"));
            self.sha1 = self.sha1.or_else(|| get("x-amz-checksum-sha1"));
            self.sha256 = self.sha256.or_else(|| get("x-amz-checksum-sha256"));
            self.crc64nvme = self.crc64nvme.or_else(|| get("x-amz-checksum-crc64nvme"));
        }
        for (name, claimed, actual) in [
            ("CRC32", &self.crc32, &computed.checksum_crc32),
            ("CRC32C", &self.crc32c, &computed.checksum_crc32c),
            ("SHA1", &self.sha1, &computed.checksum_sha1),
            ("SHA256", &self.sha256, &computed.checksum_sha256),
            ("CRC64NVME", &self.crc64nvme, &computed.checksum_crc64nvme),
        ] {
            if let (Some(claimed), Some(actual)) = (claimed, actual) {
                if claimed != actual {
                    return Err(s3_error!(
                        BadDigest,
                        "The {name} you specified did not match the calculated checksum."
                    ));
                }
            }
        }
        Ok(())
    }
}

pub(super) fn trailer_header(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("x-amz-trailer")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
