//! The EventBridge "Object Created" event of Amazon S3, as the staging store emits it.

use serde_json::{json, Value};

/// What one event says. Every field is a value EventBridge would put there; see
/// <https://docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html>.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ObjectCreated {
    /// Event id (a UUID), the same across redeliveries.
    pub id: String,
    /// `2026-01-02T03:04:05Z`.
    pub time: String,
    pub region: String,
    pub account: String,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Without quotes, as in S3 events.
    pub etag: String,
    /// Hex string that orders the events of one key.
    pub sequencer: String,
    pub request_id: String,
    /// Account of the requester.
    pub requester: String,
    pub source_ip_address: String,
    /// `PutObject`, `CopyObject` or `CompleteMultipartUpload`.
    pub reason: String,
}

/// The event as EventBridge delivers it.
pub fn object_created_event(e: &ObjectCreated) -> Value {
    json!({
        "version": "0",
        "id": e.id,
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": e.account,
        "time": e.time,
        "region": e.region,
        "resources": [format!("arn:aws:s3:::{}", e.bucket)],
        "detail": {
            "version": "0",
            "bucket": { "name": e.bucket },
            "object": {
                "key": e.key,
                "size": e.size,
                "etag": e.etag,
                "sequencer": e.sequencer,
            },
            "request-id": e.request_id,
            "requester": e.requester,
            "source-ip-address": e.source_ip_address,
            "reason": e.reason,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_eventbridge_shape() {
        let event = object_created_event(&ObjectCreated {
            id: "17793124-05d4-b198-2fde-7ededc63b103".into(),
            time: "2021-11-12T00:00:00Z".into(),
            region: "ca-central-1".into(),
            account: "123456789012".into(),
            bucket: "example-bucket".into(),
            key: "example-key".into(),
            size: 5,
            etag: "b1946ac92492d2347c6235b4d2611184".into(),
            sequencer: "00617F08299329D189".into(),
            request_id: "N4N7GDK58NMKJ12R".into(),
            requester: "123456789012".into(),
            source_ip_address: "1.2.3.4".into(),
            reason: "PutObject".into(),
        });
        // The sample event of the S3 user guide, minus version-id (no versioning here).
        let expected = json!({
            "version": "0",
            "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "account": "123456789012",
            "time": "2021-11-12T00:00:00Z",
            "region": "ca-central-1",
            "resources": ["arn:aws:s3:::example-bucket"],
            "detail": {
                "version": "0",
                "bucket": {"name": "example-bucket"},
                "object": {
                    "key": "example-key",
                    "size": 5,
                    "etag": "b1946ac92492d2347c6235b4d2611184",
                    "sequencer": "00617F08299329D189"
                },
                "request-id": "N4N7GDK58NMKJ12R",
                "requester": "123456789012",
                "source-ip-address": "1.2.3.4",
                "reason": "PutObject"
            }
        });
        assert_eq!(event, expected);
    }
}
