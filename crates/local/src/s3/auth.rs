//! Who may use the staging store: the same key pairs as the SMS API.
//!
//! `s3s` verifies the signature (SigV4 headers, presigned URLs, `aws-chunked` streaming, and
//! SigV2); it only needs the secret of an access key, which [`LocalKeys`] looks up. Both the
//! administrator and the connector keys may use S3: the connector uploads, the administrator
//! inspects and cleans up.

use std::collections::HashMap;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};

use crate::Credentials;

/// The accepted key pairs.
pub struct LocalKeys {
    secrets: HashMap<String, String>,
}

impl LocalKeys {
    pub fn new(keys: impl IntoIterator<Item = Credentials>) -> Self {
        Self {
            secrets: keys
                .into_iter()
                .map(|c| (c.access_key_id, c.secret_access_key))
                .collect(),
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for LocalKeys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.secrets.get(access_key) {
            Some(secret) => Ok(SecretKey::from(secret.clone())),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )),
        }
    }
}

/// Refuses anonymous requests, and signatures scoped to another region (which `s3s` accepts
/// but S3 refuses, so a misconfigured client fails here as it would against AWS).
pub struct RegionCheck {
    region: String,
}

impl RegionCheck {
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl S3Access for RegionCheck {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        let scope = cx
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("Credential=").nth(1))
            .map(str::to_owned)
            .or_else(|| {
                cx.uri().query().and_then(|q| {
                    q.split('&')
                        .find_map(|p| p.strip_prefix("X-Amz-Credential="))
                        .map(|v| v.replace("%2F", "/").replace("%2f", "/"))
                })
            });
        // Credential=AKID/DATE/REGION/SERVICE/aws4_request; SigV2 has no scope.
        if let Some(region) = scope.as_deref().and_then(|s| s.split('/').nth(2)) {
            if region != self.region {
                return Err(s3_error!(
                    AuthorizationHeaderMalformed,
                    "The authorization header is malformed; the region '{region}' is wrong; expecting '{}'",
                    self.region
                ));
            }
        }
        Ok(())
    }
}
