//! SigV4 verification of incoming requests: the one verifier `tern serve` (against its key
//! file) and the `api` Lambda's `sms` route (against the Tern-issued keys in its table) share.
//!
//! The signature is recomputed with the `aws-sigv4` crate — the same canonical-request code the
//! AWS SDK for Rust signs with — fed with exactly the headers the client listed in
//! `SignedHeaders`, the client's own `X-Amz-Date`, and the received body. The crate always adds
//! `host` and `x-amz-date` to what it signs, so both must be among the signed headers (every AWS
//! SDK signs them); a request dated with `Date` instead of `X-Amz-Date` is refused as incomplete.
//!
//! Errors follow AWS's codes and messages: see [`AuthError`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http::{HeaderMap, Method, Uri};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{macros::format_description, OffsetDateTime, PrimitiveDateTime};

/// The only algorithm accepted (SigV4A is not).
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far the request's `X-Amz-Date` may be from the server's clock, as in AWS.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request was refused. `error_type()` is the AWS error code sent as `__type`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header at all.
    #[error("Request is missing Authentication Token")]
    Missing,
    /// The header or a required companion is malformed or incomplete.
    #[error("{0}")]
    Incomplete(String),
    /// The access key id is not one of ours.
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// Recomputed signature differs, or the credential scope is wrong.
    #[error("{0}")]
    Invalid(String),
}

const MISMATCH: &str = "The request signature we calculated does not match the signature you provided. \
Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

impl AuthError {
    pub fn error_type(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignatureException",
            AuthError::UnknownKey => "UnrecognizedClientException",
            AuthError::Invalid(_) => "InvalidSignatureException",
        }
    }

    /// HTTP status: 400 for a malformed request, 403 for refused credentials (as AWS does).
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Incomplete(_) => 400,
            AuthError::Missing | AuthError::UnknownKey | AuthError::Invalid(_) => 403,
        }
    }

    fn mismatch() -> Self {
        AuthError::Invalid(MISMATCH.to_owned())
    }
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub access_key_id: &'a str,
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    /// Lower-cased, in the client's order.
    pub signed_headers: Vec<String>,
    pub signature: &'a str,
}

impl<'a> Authorization<'a> {
    pub fn parse(header: &'a str) -> Result<Self, AuthError> {
        let header = header.trim();
        let (algorithm, rest) = header.split_once(' ').unwrap_or((header, ""));
        if algorithm != ALGORITHM {
            return Err(AuthError::Incomplete(format!(
                "Unsupported AWS 'algorithm': '{algorithm}'; only '{ALGORITHM}' is accepted."
            )));
        }
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if let Some((name, value)) = part.split_once('=') {
                match name.trim() {
                    "Credential" => credential = Some(value.trim()),
                    "SignedHeaders" => signed = Some(value.trim()),
                    "Signature" => signature = Some(value.trim()),
                    _ => {}
                }
            }
        }
        let mut missing = Vec::new();
        for (name, value) in [
            ("Credential", credential),
            ("Signature", signature),
            ("SignedHeaders", signed),
        ] {
            if value.is_none_or(str::is_empty) {
                missing.push(format!("Authorization header requires '{name}' parameter."));
            }
        }
        if !missing.is_empty() {
            return Err(AuthError::Incomplete(missing.join(" ")));
        }
        let (credential, signed, signature) = (
            credential.unwrap_or_default(),
            signed.unwrap_or_default(),
            signature.unwrap_or_default(),
        );
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = scope[..] else {
            return Err(AuthError::Incomplete(format!(
                "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"
            )));
        };
        if terminator != "aws4_request" {
            return Err(AuthError::Incomplete(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
            )));
        }
        if access_key_id.is_empty() {
            return Err(AuthError::Incomplete(
                "Credential has an empty access key id.".into(),
            ));
        }
        Ok(Self {
            access_key_id,
            date,
            region,
            service,
            signed_headers: signed
                .split(';')
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            signature,
        })
    }
}

/// An access key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Verifies requests for one service and region against a fixed set of key pairs.
pub struct Verifier<P> {
    region: String,
    service: String,
    keys: HashMap<String, (String, P)>,
}

/// The access key id a request claims to be signed with (to look its secret up before
/// [`Verifier::verify_with`]); the same errors as verification for a missing or malformed
/// `Authorization` header.
pub fn claimed_key(headers: &HeaderMap) -> Result<String, AuthError> {
    let Some(header) = headers.get("authorization") else {
        return Err(AuthError::Missing);
    };
    let header = header
        .to_str()
        .map_err(|_| AuthError::Incomplete("Authorization header is not valid ASCII.".into()))?;
    Ok(Authorization::parse(header)?.access_key_id.to_owned())
}

impl<P: Clone> Verifier<P> {
    /// `keys`: each key pair and the principal it authenticates.
    pub fn new(
        region: impl Into<String>,
        service: impl Into<String>,
        keys: impl IntoIterator<Item = (KeyPair, P)>,
    ) -> Self {
        Self {
            region: region.into(),
            service: service.into(),
            keys: keys
                .into_iter()
                .map(|(c, p)| (c.access_key_id, (c.secret_access_key, p)))
                .collect(),
        }
    }

    /// Checks the request's signature and returns the principal of its key.
    pub fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<P, AuthError> {
        self.verify_with(method, uri, headers, body, now, |id| {
            self.keys.get(id).cloned()
        })
    }

    /// [`Verifier::verify`] with the key pairs held elsewhere: `lookup` gives the secret and
    /// principal of an access key id (`None`: unknown, or revoked).
    pub fn verify_with<Q>(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
        lookup: impl FnOnce(&str) -> Option<(String, Q)>,
    ) -> Result<Q, AuthError> {
        let Some(header) = headers.get("authorization") else {
            return Err(AuthError::Missing);
        };
        let header = header.to_str().map_err(|_| {
            AuthError::Incomplete("Authorization header is not valid ASCII.".into())
        })?;
        let auth = Authorization::parse(header)?;

        let amz_date = headers
            .get("x-amz-date")
            .ok_or_else(|| {
                AuthError::Incomplete(
                    "Authorization header requires existence of a 'X-Amz-Date' header.".into(),
                )
            })?
            .to_str()
            .unwrap_or_default();
        let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
            AuthError::Incomplete(format!(
                "X-Amz-Date must be in the ISO-8601 basic format yyyyMMdd'T'HHmmss'Z', got '{amz_date}'."
            ))
        })?;
        for required in ["host", "x-amz-date"] {
            if !auth.signed_headers.iter().any(|h| h == required) {
                return Err(AuthError::Incomplete(format!(
                    "'{required}' must be a 'SignedHeader' in the AWS Authorization."
                )));
            }
        }

        let Some((secret, principal)) = lookup(auth.access_key_id) else {
            return Err(AuthError::UnknownKey);
        };

        if auth.date != &amz_date[..8] {
            return Err(AuthError::Invalid(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.",
                auth.date,
                &amz_date[..8]
            )));
        }
        if auth.region != self.region {
            return Err(AuthError::Invalid(format!(
                "Credential should be scoped to a valid region: '{}', not '{}'.",
                self.region, auth.region
            )));
        }
        if auth.service != self.service {
            return Err(AuthError::Invalid(format!(
                "Credential should be scoped to correct service: '{}'.",
                self.service
            )));
        }
        check_skew(amz_date, signed_at, now)?;

        if let Some(claimed) = headers.get("x-amz-content-sha256") {
            let actual = hex::encode(Sha256::digest(body));
            if claimed.as_bytes() != actual.as_bytes() {
                return Err(AuthError::Invalid(
                    "The provided 'x-amz-content-sha256' header does not match what was computed."
                        .into(),
                ));
            }
        }

        let expected = self.signature(method, uri, headers, body, &auth, signed_at, &secret)?;
        if bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
            Ok(principal)
        } else {
            Err(AuthError::mismatch())
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn signature(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        auth: &Authorization<'_>,
        signed_at: SystemTime,
        secret: &str,
    ) -> Result<String, AuthError> {
        let mut signed: Vec<(&str, &str)> = Vec::with_capacity(auth.signed_headers.len());
        for name in &auth.signed_headers {
            let values = headers.get_all(name.as_str());
            let mut any = false;
            for value in values {
                let value = value.to_str().map_err(|_| {
                    AuthError::Invalid(format!("Signed header '{name}' is not valid ASCII."))
                })?;
                signed.push((name.as_str(), value));
                any = true;
            }
            if !any {
                return Err(AuthError::Invalid(format!(
                    "Header '{name}' is listed in SignedHeaders but missing from the request."
                )));
            }
        }
        // The crate needs an absolute URI; the authority it would derive is never used because
        // `host` is always among the signed headers passed above.
        let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let absolute = format!("http://localhost{path_and_query}");
        let request = SignableRequest::new(
            method.as_str(),
            absolute,
            signed.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|_| AuthError::mismatch())?;

        let identity =
            aws_credential_types::Credentials::new(auth.access_key_id, secret, None, None, "tern")
                .into();
        let mut settings = SigningSettings::default();
        // Sign exactly what the client listed: the default exclusions (user-agent, …) would
        // drop headers a client chose to sign.
        settings.excluded_headers = None;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(auth.region)
            .name(auth.service)
            .time(signed_at)
            .settings(settings)
            .build()
            .map_err(|_| AuthError::mismatch())?
            .into();
        let output = sign(request, &params).map_err(|_| AuthError::mismatch())?;
        Ok(output.signature().to_owned())
    }
}

fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    let parsed = PrimitiveDateTime::parse(value, &format).ok()?;
    Some(parsed.assume_utc().into())
}

fn format_amz_date(t: SystemTime) -> String {
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    OffsetDateTime::from(t).format(&format).unwrap_or_default()
}

fn check_skew(amz_date: &str, signed_at: SystemTime, now: SystemTime) -> Result<(), AuthError> {
    if let Ok(age) = now.duration_since(signed_at) {
        if age > MAX_SKEW {
            return Err(AuthError::Invalid(format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
                format_amz_date(now - MAX_SKEW),
                format_amz_date(now)
            )));
        }
    } else if let Ok(ahead) = signed_at.duration_since(now) {
        if ahead > MAX_SKEW {
            return Err(AuthError::Invalid(format!(
                "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
                format_amz_date(now + MAX_SKEW),
                format_amz_date(now)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // Vectors from the AWS SigV4 test suite (shipped with the aws-sigv4 crate as
    // aws-signing-test-suite/v4): an independent check that verification agrees with AWS's
    // published signatures, not merely with our own signer.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn verifier() -> Verifier<&'static str> {
        Verifier::new(
            "us-east-1",
            "service",
            [(
                KeyPair {
                    access_key_id: AKID.into(),
                    secret_access_key: SECRET.into(),
                },
                "admin",
            )],
        )
    }

    fn vector_headers(extra: &[(&str, &str)], signed: &str, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static(DATE));
        for (k, v) in extra {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let auth = format!("AWS4-HMAC-SHA256 Credential={AKID}/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={signature}");
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        h
    }

    fn at_vector_time() -> SystemTime {
        parse_amz_date(DATE).unwrap()
    }

    #[test]
    fn aws_suite_post_vanilla() {
        let h = vector_headers(
            &[],
            "host;x-amz-date",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        );
        let uri: Uri = "/".parse().unwrap();
        assert_eq!(
            verifier().verify(&Method::POST, &uri, &h, b"", at_vector_time()),
            Ok("admin")
        );
    }

    #[test]
    fn aws_suite_post_vanilla_query() {
        let h = vector_headers(
            &[],
            "host;x-amz-date",
            "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        );
        let uri: Uri = "/?Param1=value1".parse().unwrap();
        assert_eq!(
            verifier().verify(&Method::POST, &uri, &h, b"", at_vector_time()),
            Ok("admin")
        );
    }

    #[test]
    fn aws_suite_post_x_www_form_urlencoded_body() {
        let h = vector_headers(
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("content-length", "13"),
                (
                    "x-amz-content-sha256",
                    "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
                ),
            ],
            "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
            "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
        );
        let uri: Uri = "/".parse().unwrap();
        assert_eq!(
            verifier().verify(&Method::POST, &uri, &h, b"Param1=value1", at_vector_time()),
            Ok("admin")
        );
        // One changed body byte must break it (here caught by the signed content hash).
        let err = verifier()
            .verify(&Method::POST, &uri, &h, b"Param1=value2", at_vector_time())
            .unwrap_err();
        assert_eq!(err.error_type(), "InvalidSignatureException");
        let mut unhashed = h.clone();
        unhashed.remove("x-amz-content-sha256");
        let err = verifier()
            .verify(
                &Method::POST,
                &uri,
                &unhashed,
                b"Param1=value1",
                at_vector_time(),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("is listed in SignedHeaders but missing"),
            "{err}"
        );
    }

    #[test]
    fn aws_suite_get_header_value_trim() {
        let h = vector_headers(
            &[("my-header1", " value1"), ("my-header2", " \"a   b   c\"")],
            "host;my-header1;my-header2;x-amz-date",
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        );
        let uri: Uri = "/".parse().unwrap();
        assert_eq!(
            verifier().verify(&Method::GET, &uri, &h, b"", at_vector_time()),
            Ok("admin")
        );
    }

    #[test]
    fn parse_reports_missing_parts() {
        let err = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/sms/aws4_request",
        )
        .unwrap_err();
        assert_eq!(err.error_type(), "IncompleteSignatureException");
        assert!(err.to_string().contains("'Signature'"), "{err}");
        assert!(err.to_string().contains("'SignedHeaders'"), "{err}");
        let err = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=A/x, SignedHeaders=host, Signature=ab",
        )
        .unwrap_err();
        assert!(err.to_string().contains("5 slash-delimited"), "{err}");
        let err = Authorization::parse("Basic dXNlcjpwYXNz").unwrap_err();
        assert!(err.to_string().contains("Unsupported"), "{err}");
    }

    #[test]
    fn skew_is_checked_both_ways() {
        let signed = at_vector_time();
        assert!(check_skew(DATE, signed, signed + Duration::from_secs(14 * 60)).is_ok());
        let late = check_skew(DATE, signed, signed + Duration::from_secs(16 * 60)).unwrap_err();
        assert!(
            late.to_string().starts_with(
                "Signature expired: 20150830T123600Z is now earlier than 20150830T123700Z"
            ),
            "{late}"
        );
        let early = check_skew(DATE, signed, signed - Duration::from_secs(16 * 60)).unwrap_err();
        assert!(
            early.to_string().starts_with("Signature not yet current"),
            "{early}"
        );
    }

    #[test]
    fn scope_date_must_match_x_amz_date() {
        let mut h = vector_headers(
            &[],
            "host;x-amz-date",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        );
        h.insert("x-amz-date", HeaderValue::from_static("20150831T123600Z"));
        let uri: Uri = "/".parse().unwrap();
        let err = verifier()
            .verify(
                &Method::POST,
                &uri,
                &h,
                b"",
                parse_amz_date("20150831T123600Z").unwrap(),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Date in Credential scope does not match"),
            "{err}"
        );
    }
}
