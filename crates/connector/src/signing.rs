//! SigV4 signing of awsJson requests (service `sms`), shared by the connector's client and by
//! tests that need to craft raw requests.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use crate::ConnectorError;

/// The SigV4 signing name of the SMS API (and of Tern's connector operations).
pub const SIGNING_NAME: &str = "sms";

/// The signing name API Gateway's IAM authorizer accepts (the stack's `ApiEndpoint`).
pub const IAM_SIGNING_NAME: &str = "execute-api";

/// Signs a `POST` of `body` to `url` with the given extra `headers` (which are signed too) and
/// returns the headers to add to the request (`authorization`, `x-amz-date`, and
/// `x-amz-security-token` for temporary credentials).
pub fn sign_post(
    credentials: &Credentials,
    region: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, ConnectorError> {
    sign_post_as(SIGNING_NAME, credentials, region, url, headers, body, time)
}

/// [`sign_post`] for the service `signing_name` ([`SIGNING_NAME`] or [`IAM_SIGNING_NAME`]).
pub fn sign_post_as(
    signing_name: &str,
    credentials: &Credentials,
    region: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, ConnectorError> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(signing_name)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| ConnectorError::Signing(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| ConnectorError::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| ConnectorError::Signing(e.to_string()))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn signature_covers_target_and_body() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let headers = [("x-amz-target", "TernConnectorService_V1.PollWork")];
        let a = sign_post(
            &creds,
            "us-east-1",
            "http://127.0.0.1:9/",
            &headers,
            b"{}",
            time,
        )
        .unwrap();
        let auth = |h: &[(String, String)]| {
            h.iter()
                .find(|(n, _)| n == "authorization")
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let auth_a = auth(&a);
        assert!(
            auth_a.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/sms/aws4_request"
            ),
            "{auth_a}"
        );
        assert!(
            auth_a.contains("SignedHeaders=host;x-amz-date;x-amz-target"),
            "{auth_a}"
        );
        let b = sign_post(
            &creds,
            "us-east-1",
            "http://127.0.0.1:9/",
            &headers,
            b"{ }",
            time,
        )
        .unwrap();
        assert_ne!(auth_a, auth(&b), "the body must be part of the signature");
        assert!(a
            .iter()
            .any(|(n, v)| n == "x-amz-date" && v == "20231114T221320Z"));
    }

    #[test]
    fn iam_signatures_are_scoped_to_execute_api_and_carry_the_session_token() {
        let creds = Credentials::new("ASIAEXAMPLE", "secret", Some("token".into()), None, "t");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let signed = sign_post_as(
            IAM_SIGNING_NAME,
            &creds,
            "eu-west-1",
            "https://abc.execute-api.eu-west-1.amazonaws.com/",
            &[("x-amz-target", "TernConnectorService_V1.PollWork")],
            b"{}",
            time,
        )
        .unwrap();
        let header = |name: &str| {
            signed
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert!(
            header("authorization").is_some_and(|a| a.starts_with(
                "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20231114/eu-west-1/execute-api/aws4_request"
            )),
            "{signed:?}"
        );
        assert_eq!(header("x-amz-security-token"), Some("token"));
    }
}
