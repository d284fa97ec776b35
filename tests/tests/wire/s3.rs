//! The S3 staging store on the `tern serve` endpoint, driven with `aws-sdk-s3` (path style) as
//! the connector and the AWS CLI would: objects, listings, multipart uploads across a restart,
//! Object Created events, authentication, and the SMS API on the same URL.

use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use md5::{Digest as _, Md5};
use serde_json::Value;
use tern_acceptance::{s3_client, TestServer};

const BUCKET: &str = "tern-staging";
const MIB: usize = 1024 * 1024;

fn md5_hex(data: &[u8]) -> String {
    format!("{:x}", Md5::digest(data))
}

/// The ETag S3 gives a multipart object: MD5 of the parts' binary MD5s, then `-<parts>`.
fn multipart_etag(parts: &[&[u8]]) -> String {
    let mut all = Md5::new();
    for p in parts {
        all.update(Md5::digest(p));
    }
    format!("{:x}-{}", all.finalize(), parts.len())
}

/// Distinct, non-repeating content so that a misplaced byte range shows.
fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[seed as usize % 4] ^ seed)
        .collect()
}

fn unquote(etag: Option<&str>) -> String {
    etag.expect("an ETag").trim_matches('"').to_owned()
}

fn staged(server: &TestServer, key: &str) -> std::path::PathBuf {
    server.data_dir().join("staging").join(BUCKET).join(key)
}

async fn put(s3: &aws_sdk_s3::Client, key: &str, body: &[u8]) -> String {
    let out = s3
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutObject {key}: {e:?}"));
    unquote(out.e_tag())
}

async fn upload_part(
    s3: &aws_sdk_s3::Client,
    key: &str,
    upload_id: &str,
    number: i32,
    body: &[u8],
) -> CompletedPart {
    let out = s3
        .upload_part()
        .bucket(BUCKET)
        .key(key)
        .upload_id(upload_id)
        .part_number(number)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("UploadPart {number}: {e:?}"));
    assert_eq!(unquote(out.e_tag()), md5_hex(body), "part {number} ETag");
    CompletedPart::builder()
        .part_number(number)
        .e_tag(out.e_tag().expect("ETag"))
        .build()
}

async fn list_parts(
    s3: &aws_sdk_s3::Client,
    key: &str,
    upload_id: &str,
) -> Vec<(i32, String, i64)> {
    let out = s3
        .list_parts()
        .bucket(BUCKET)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .expect("ListParts");
    out.parts()
        .iter()
        .map(|p| {
            (
                p.part_number().expect("part number"),
                unquote(p.e_tag()),
                p.size().expect("size"),
            )
        })
        .collect()
}

async fn complete(
    s3: &aws_sdk_s3::Client,
    key: &str,
    upload_id: &str,
    parts: Vec<CompletedPart>,
) -> String {
    let out = s3
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("CompleteMultipartUpload: {e:?}"));
    unquote(out.e_tag())
}

async fn create_upload(s3: &aws_sdk_s3::Client, key: &str) -> String {
    s3.create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("CreateMultipartUpload")
        .upload_id()
        .expect("upload id")
        .to_owned()
}

#[tokio::test]
async fn objects_round_trip_through_put_get_head_list_and_delete() {
    let server = TestServer::start().await;
    let s3 = server.s3();

    let buckets = s3.list_buckets().send().await.expect("ListBuckets");
    let names: Vec<_> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, [BUCKET], "the staging bucket exists from the start");
    s3.head_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("HeadBucket");

    let body = data(1, 1000);
    let etag = put(&s3, "runs/r1/disk-0.vmdk", &body).await;
    assert_eq!(etag, md5_hex(&body), "single-PUT ETag is the MD5");
    assert_eq!(
        std::fs::read(staged(&server, "runs/r1/disk-0.vmdk")).expect("staged file"),
        body,
        "the object is a plain file at staging/<bucket>/<key>"
    );

    let got = s3
        .get_object()
        .bucket(BUCKET)
        .key("runs/r1/disk-0.vmdk")
        .send()
        .await
        .expect("GetObject");
    assert_eq!(unquote(got.e_tag()), etag);
    assert_eq!(got.content_length(), Some(1000));
    let bytes = got.body.collect().await.expect("body").into_bytes();
    assert_eq!(bytes.as_ref(), body.as_slice());

    let ranged = s3
        .get_object()
        .bucket(BUCKET)
        .key("runs/r1/disk-0.vmdk")
        .range("bytes=100-355")
        .send()
        .await
        .expect("ranged GetObject");
    assert_eq!(ranged.content_range(), Some("bytes 100-355/1000"));
    assert_eq!(ranged.content_length(), Some(256));
    let bytes = ranged.body.collect().await.expect("body").into_bytes();
    assert_eq!(bytes.as_ref(), &body[100..356]);
    let suffix = s3
        .get_object()
        .bucket(BUCKET)
        .key("runs/r1/disk-0.vmdk")
        .range("bytes=-10")
        .send()
        .await
        .expect("suffix GetObject");
    let bytes = suffix.body.collect().await.expect("body").into_bytes();
    assert_eq!(bytes.as_ref(), &body[990..]);

    let head = s3
        .head_object()
        .bucket(BUCKET)
        .key("runs/r1/disk-0.vmdk")
        .send()
        .await
        .expect("HeadObject");
    assert_eq!(head.content_length(), Some(1000));
    assert_eq!(unquote(head.e_tag()), etag);

    for i in 0..5 {
        put(
            &s3,
            &format!("runs/r2/block-{i}"),
            &data(i, 10 + i as usize),
        )
        .await;
    }
    put(&s3, "manifests/r2.json", b"{}").await;

    // Two per page, following continuation tokens, under a prefix.
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix("runs/r2/")
            .max_keys(2)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("ListObjectsV2");
        assert!(page.key_count().unwrap_or_default() <= 2);
        for o in page.contents() {
            keys.push(o.key().expect("key").to_owned());
            assert!(o.e_tag().is_some() && o.size().is_some());
        }
        match page.next_continuation_token() {
            Some(t) => {
                assert_eq!(page.is_truncated(), Some(true));
                token = Some(t.to_owned());
            }
            None => break,
        }
    }
    let expected: Vec<_> = (0..5).map(|i| format!("runs/r2/block-{i}")).collect();
    assert_eq!(keys, expected);

    let top = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .delimiter("/")
        .send()
        .await
        .expect("ListObjectsV2 with delimiter");
    let prefixes: Vec<_> = top
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(prefixes, ["manifests/", "runs/"]);
    assert!(top.contents().is_empty());

    s3.delete_object()
        .bucket(BUCKET)
        .key("runs/r1/disk-0.vmdk")
        .send()
        .await
        .expect("DeleteObject");
    let gone = s3
        .head_object()
        .bucket(BUCKET)
        .key("runs/r1/disk-0.vmdk")
        .send()
        .await;
    assert!(
        gone.as_ref()
            .err()
            .and_then(|e| e.as_service_error())
            .is_some_and(|e| e.is_not_found()),
        "{gone:?}"
    );
    let missing = s3
        .get_object()
        .bucket(BUCKET)
        .key("runs/r1/disk-0.vmdk")
        .send()
        .await;
    assert_eq!(
        missing
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("NoSuchKey")
    );
    assert!(
        !staged(&server, "runs/r1").exists(),
        "empty directories are pruned"
    );

    let deleted = s3
        .delete_objects()
        .bucket(BUCKET)
        .delete(
            Delete::builder()
                .objects(
                    ObjectIdentifier::builder()
                        .key("runs/r2/block-0")
                        .build()
                        .unwrap(),
                )
                .objects(
                    ObjectIdentifier::builder()
                        .key("runs/r2/block-1")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("DeleteObjects");
    assert_eq!(deleted.deleted().len(), 2);
    let left = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("runs/")
        .send()
        .await
        .expect("ListObjectsV2");
    let left: Vec<_> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        left,
        ["runs/r2/block-2", "runs/r2/block-3", "runs/r2/block-4"]
    );

    let no_bucket = s3.get_object().bucket("nope").key("k").send().await;
    assert_eq!(
        no_bucket
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("NoSuchBucket")
    );
    let empty = put(&s3, "empty", b"").await;
    assert_eq!(empty, md5_hex(b""));
    assert_eq!(
        std::fs::read(staged(&server, "empty")).expect("staged"),
        b""
    );

    // Keys come back exactly as stored, whatever characters they hold; ListObjects (v1)
    // pages with markers.
    let odd = "odd/a+b%20c d=e&f";
    put(&s3, odd, b"odd").await;
    let listed = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("odd/")
        .send()
        .await
        .expect("ListObjectsV2");
    assert_eq!(listed.contents()[0].key(), Some(odd));
    let got = s3
        .get_object()
        .bucket(BUCKET)
        .key(odd)
        .send()
        .await
        .expect("GetObject odd");
    assert_eq!(
        got.body
            .collect()
            .await
            .expect("body")
            .into_bytes()
            .as_ref(),
        b"odd"
    );
    let v1 = s3
        .list_objects()
        .bucket(BUCKET)
        .prefix("runs/")
        .max_keys(2)
        .send()
        .await
        .expect("ListObjects");
    let page: Vec<_> = v1.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(page, ["runs/r2/block-2", "runs/r2/block-3"]);
    assert_eq!(v1.is_truncated(), Some(true));
    let v1 = s3
        .list_objects()
        .bucket(BUCKET)
        .prefix("runs/")
        .marker(v1.next_marker().expect("NextMarker"))
        .send()
        .await
        .expect("ListObjects from a marker");
    let page: Vec<_> = v1.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(page, ["runs/r2/block-4"]);

    s3.create_bucket()
        .bucket("other")
        .send()
        .await
        .expect("CreateBucket");
    s3.head_bucket()
        .bucket("other")
        .send()
        .await
        .expect("HeadBucket other");
    server.shutdown().await;
}

#[tokio::test]
async fn a_multipart_upload_becomes_a_byte_identical_file_only_when_completed() {
    let server = TestServer::start().await;
    let s3 = server.s3();
    let key = "runs/sms-run-1/disk-0.vmdk";
    let parts = [data(1, 5 * MIB), data(2, 5 * MIB), data(3, 1234)];

    let upload_id = create_upload(&s3, key).await;
    let p1 = upload_part(&s3, key, &upload_id, 1, &parts[0]).await;
    let p2 = upload_part(&s3, key, &upload_id, 2, &parts[1]).await;
    assert_eq!(
        list_parts(&s3, key, &upload_id).await,
        [
            (1, md5_hex(&parts[0]), (5 * MIB) as i64),
            (2, md5_hex(&parts[1]), (5 * MIB) as i64)
        ],
        "ListParts shows exactly the parts uploaded so far"
    );
    let uploads = s3
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .expect("ListMultipartUploads");
    let listed: Vec<_> = uploads
        .uploads()
        .iter()
        .map(|u| {
            (
                u.key().unwrap_or_default(),
                u.upload_id().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(listed, [(key, upload_id.as_str())]);
    assert!(
        !staged(&server, key).exists(),
        "nothing is staged before completion"
    );

    let p3 = upload_part(&s3, key, &upload_id, 3, &parts[2]).await;
    let etag = complete(&s3, key, &upload_id, vec![p1, p2, p3]).await;
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    assert_eq!(etag, multipart_etag(&refs));

    let staged_bytes = std::fs::read(staged(&server, key)).expect("staged file");
    assert_eq!(
        staged_bytes,
        parts.concat(),
        "the staged file is byte-identical"
    );
    let head = s3
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("HeadObject");
    assert_eq!(unquote(head.e_tag()), etag);
    assert_eq!(head.content_length(), Some((10 * MIB + 1234) as i64));
    let uploads = s3
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .expect("ListMultipartUploads");
    assert!(
        uploads.uploads().is_empty(),
        "a completed upload is no longer listed"
    );
    let after = s3
        .list_parts()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .send()
        .await;
    assert_eq!(
        after
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("NoSuchUpload")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn completion_checks_parts_and_abort_discards_them() {
    let server = TestServer::start().await;
    let s3 = server.s3();
    let key = "runs/bad/disk.raw";
    let upload_id = create_upload(&s3, key).await;
    let small = upload_part(&s3, key, &upload_id, 1, b"too small").await;
    let last = upload_part(&s3, key, &upload_id, 2, b"last").await;

    let result = s3
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(small.clone())
                .parts(last.clone())
                .build(),
        )
        .send()
        .await;
    assert_eq!(
        result
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("EntityTooSmall")
    );
    let wrong_etag = CompletedPart::builder()
        .part_number(1)
        .e_tag("\"00000000000000000000000000000000\"")
        .build();
    let result = s3
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(wrong_etag)
                .build(),
        )
        .send()
        .await;
    assert_eq!(
        result
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("InvalidPart")
    );
    let result = s3
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(last)
                .parts(small)
                .build(),
        )
        .send()
        .await;
    assert_eq!(
        result
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("InvalidPartOrder")
    );

    s3.abort_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .send()
        .await
        .expect("AbortMultipartUpload");
    let result = s3
        .upload_part()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&upload_id)
        .part_number(3)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(
        result
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("NoSuchUpload")
    );
    assert!(!staged(&server, key).exists());
    assert!(server.object_events().is_empty(), "nothing was created");
    server.shutdown().await;
}

#[tokio::test]
async fn a_multipart_upload_survives_a_server_restart() {
    let mut server = TestServer::start().await;
    let key = "runs/resume/disk-0.vmdk";
    let parts = [data(4, 5 * MIB), data(5, 5 * MIB), data(6, 777)];
    let s3 = server.s3();
    let upload_id = create_upload(&s3, key).await;
    upload_part(&s3, key, &upload_id, 1, &parts[0]).await;
    upload_part(&s3, key, &upload_id, 2, &parts[1]).await;

    server.restart().await;
    let s3 = server.s3();
    // What a connector does after a crash: find its upload and the parts already there.
    let uploads = s3
        .list_multipart_uploads()
        .bucket(BUCKET)
        .prefix("runs/resume/")
        .send()
        .await
        .expect("ListMultipartUploads");
    assert_eq!(uploads.uploads().len(), 1);
    assert_eq!(uploads.uploads()[0].upload_id(), Some(upload_id.as_str()));
    let listed = list_parts(&s3, key, &upload_id).await;
    assert_eq!(
        listed,
        [
            (1, md5_hex(&parts[0]), (5 * MIB) as i64),
            (2, md5_hex(&parts[1]), (5 * MIB) as i64)
        ]
    );
    let mut completed: Vec<CompletedPart> = listed
        .iter()
        .map(|(n, etag, _)| {
            CompletedPart::builder()
                .part_number(*n)
                .e_tag(format!("\"{etag}\""))
                .build()
        })
        .collect();
    completed.push(upload_part(&s3, key, &upload_id, 3, &parts[2]).await);
    let etag = complete(&s3, key, &upload_id, completed.clone()).await;
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    assert_eq!(etag, multipart_etag(&refs));
    assert_eq!(
        std::fs::read(staged(&server, key)).expect("staged"),
        parts.concat()
    );

    // A retried Complete (its first response lost) answers the same, and creates nothing new.
    let again = complete(&s3, key, &upload_id, completed).await;
    assert_eq!(again, etag);
    let events: Vec<_> = server
        .object_events()
        .into_iter()
        .filter(|e| e["detail"]["object"]["key"] == key)
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn every_created_object_is_announced_once_with_the_s3_event_shape() {
    let server = TestServer::start().await;
    let s3 = server.s3();
    let small = data(7, 4321);
    let put_etag = put(&s3, "manifests/run-1.json", &small).await;

    let key = "runs/run-1/disk-0.vmdk";
    let parts = [data(8, 5 * MIB), data(9, 10)];
    let upload_id = create_upload(&s3, key).await;
    let p1 = upload_part(&s3, key, &upload_id, 1, &parts[0]).await;
    let p2 = upload_part(&s3, key, &upload_id, 2, &parts[1]).await;
    let mp_etag = complete(&s3, key, &upload_id, vec![p1, p2]).await;

    // Refused writes announce nothing.
    let refused = s3
        .put_object()
        .bucket("no-such-bucket")
        .key("k")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert!(refused.is_err());

    let events = server.object_events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let (first, second) = (&events[0], &events[1]);
    for e in &events {
        assert_eq!(e["version"], "0");
        assert_eq!(e["detail-type"], "Object Created");
        assert_eq!(e["source"], "aws.s3");
        assert_eq!(e["region"], "us-east-1");
        assert_eq!(e["account"], "000000000000");
        assert_eq!(
            e["resources"],
            serde_json::json!(["arn:aws:s3:::tern-staging"])
        );
        assert_eq!(e["detail"]["version"], "0");
        assert_eq!(e["detail"]["bucket"]["name"], BUCKET);
        assert_eq!(e["detail"]["source-ip-address"], "127.0.0.1");
        for field in ["request-id", "requester"] {
            assert!(
                e["detail"][field].as_str().is_some_and(|s| !s.is_empty()),
                "{field}: {e}"
            );
        }
        assert!(e["id"].as_str().is_some_and(uuid_like), "{e}");
        assert!(e["time"].as_str().is_some_and(|s| s.ends_with('Z')), "{e}");
    }
    assert_eq!(first["detail"]["object"]["key"], "manifests/run-1.json");
    assert_eq!(first["detail"]["object"]["size"], 4321);
    assert_eq!(first["detail"]["object"]["etag"], put_etag.as_str());
    assert_eq!(first["detail"]["reason"], "PutObject");
    assert_eq!(second["detail"]["object"]["key"], key);
    assert_eq!(second["detail"]["object"]["size"], (5 * MIB + 10) as u64);
    assert_eq!(second["detail"]["object"]["etag"], mp_etag.as_str());
    assert_eq!(second["detail"]["reason"], "CompleteMultipartUpload");
    let seq = |e: &Value| {
        e["detail"]["object"]["sequencer"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(seq(first) < seq(second), "sequencers increase");
    server.shutdown().await;
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

#[tokio::test]
async fn unsigned_and_wrongly_signed_requests_are_refused() {
    let server = TestServer::start().await;

    let unsigned = reqwest::get(format!("{}/{BUCKET}?list-type=2", server.endpoint()))
        .await
        .expect("request reaches the server");
    assert_eq!(unsigned.status(), 403);
    let body = unsigned.text().await.unwrap_or_default();
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    let unsigned_put = reqwest::Client::new()
        .put(format!("{}/{BUCKET}/sneaky", server.endpoint()))
        .body("x")
        .send()
        .await
        .expect("request reaches the server");
    assert_eq!(unsigned_put.status(), 403);
    assert!(!staged(&server, "sneaky").exists());

    let admin = server.admin();
    let wrong_secret = aws_sdk_s3::config::Credentials::new(
        admin.access_key_id(),
        "x".repeat(40),
        None,
        None,
        "wrong",
    );
    let result = s3_client(&server.endpoint(), wrong_secret)
        .list_buckets()
        .send()
        .await;
    assert_eq!(
        result
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("SignatureDoesNotMatch")
    );
    let unknown = aws_sdk_s3::config::Credentials::new(
        "AKIAUNKNOWNKEY000000",
        "x".repeat(40),
        None,
        None,
        "unknown",
    );
    let result = s3_client(&server.endpoint(), unknown)
        .put_object()
        .bucket(BUCKET)
        .key("k")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(
        result
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("InvalidAccessKeyId")
    );
    assert!(server.object_events().is_empty());

    // The connector's keys may use S3 (it is the one that uploads).
    let connector = s3_client(&server.endpoint(), server.connector());
    connector
        .put_object()
        .bucket(BUCKET)
        .key("from-connector")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .expect("connector PutObject");
    assert_eq!(
        std::fs::read(staged(&server, "from-connector")).expect("staged"),
        b"hello"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_sms_api_and_s3_share_one_endpoint() {
    let server = TestServer::start().await;
    let connectors = server
        .client
        .get_connectors()
        .send()
        .await
        .expect("GetConnectors on the shared endpoint");
    assert!(connectors.connector_list().is_empty());
    let s3 = server.s3();
    put(&s3, "k", b"v").await;
    let listed = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .expect("ListObjectsV2");
    assert_eq!(listed.key_count(), Some(1));
    server.shutdown().await;
}

#[tokio::test]
async fn corrupted_uploads_and_keys_that_cannot_be_files_are_refused() {
    let server = TestServer::start().await;
    let s3 = server.s3();
    let code = |r: Result<_, aws_sdk_s3::error::SdkError<_, _>>| -> Option<String> {
        r.err().and_then(
            |e: aws_sdk_s3::error::SdkError<
                aws_sdk_s3::operation::put_object::PutObjectError,
                _,
            >| { e.code().map(str::to_owned) },
        )
    };

    // Content-MD5 of other bytes: the upload arrived damaged.
    let wrong_md5 = s3
        .put_object()
        .bucket(BUCKET)
        .key("damaged")
        .content_md5("1B2M2Y8AsgTpgAmY7PhCfg==")
        .body(ByteStream::from_static(b"hello world"))
        .send()
        .await;
    assert_eq!(code(wrong_md5).as_deref(), Some("BadDigest"));
    let wrong_crc = s3
        .put_object()
        .bucket(BUCKET)
        .key("damaged")
        .checksum_crc32("AAAAAA==")
        .body(ByteStream::from_static(b"hello world"))
        .send()
        .await;
    assert_eq!(code(wrong_crc).as_deref(), Some("BadDigest"));
    assert!(!staged(&server, "damaged").exists());
    let right_crc = s3
        .put_object()
        .bucket(BUCKET)
        .key("checked")
        .checksum_crc32("DUoRhQ==")
        .body(ByteStream::from_static(b"hello world"))
        .send()
        .await;
    assert!(right_crc.is_ok(), "{right_crc:?}");

    // Objects are files: "a" and "a/b" cannot both exist, and "a//b" has no file name.
    put(&s3, "disk", b"1").await;
    let below_object = s3
        .put_object()
        .bucket(BUCKET)
        .key("disk/part")
        .body(ByteStream::from_static(b"2"))
        .send()
        .await;
    assert_eq!(code(below_object).as_deref(), Some("InvalidArgument"));
    put(&s3, "dir/leaf", b"3").await;
    let over_prefix = s3
        .put_object()
        .bucket(BUCKET)
        .key("dir")
        .body(ByteStream::from_static(b"4"))
        .send()
        .await;
    assert_eq!(code(over_prefix).as_deref(), Some("InvalidArgument"));
    let empty_segment = s3
        .put_object()
        .bucket(BUCKET)
        .key("a//b")
        .body(ByteStream::from_static(b"5"))
        .send()
        .await;
    assert_eq!(code(empty_segment).as_deref(), Some("InvalidArgument"));
    let created: Vec<_> = server
        .object_events()
        .iter()
        .map(|e| {
            e["detail"]["object"]["key"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(created, ["checked", "disk", "dir/leaf"]);
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_completes_of_one_upload_create_the_object_once() {
    let server = TestServer::start().await;
    let s3 = server.s3();
    let key = "runs/twice/disk.raw";
    let parts = [data(10, 5 * MIB), data(11, 99)];
    let upload_id = create_upload(&s3, key).await;
    let p1 = upload_part(&s3, key, &upload_id, 1, &parts[0]).await;
    let p2 = upload_part(&s3, key, &upload_id, 2, &parts[1]).await;
    // A client that timed out and retried while the first Complete was still assembling.
    let (a, b) = tokio::join!(
        complete(&s3, key, &upload_id, vec![p1.clone(), p2.clone()]),
        complete(&s3, key, &upload_id, vec![p1, p2]),
    );
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    assert_eq!(a, multipart_etag(&refs));
    assert_eq!(b, a);
    assert_eq!(
        std::fs::read(staged(&server, key)).expect("staged"),
        parts.concat()
    );
    assert_eq!(
        server.object_events().len(),
        1,
        "{:?}",
        server.object_events()
    );
    server.shutdown().await;
}
