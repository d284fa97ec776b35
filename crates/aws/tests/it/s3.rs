//! `S3Staging` (the `Staging` port) on moto's S3.

use aws_sdk_s3::primitives::ByteStream;
use tern_aws::S3Staging;
use tern_core::images::StagedObject;
use tern_core::staging::{Staging, StagingError};
use tern_test_support::moto::{Flavor, Moto};

fn object(key: &str) -> StagedObject {
    StagedObject {
        bucket: "staging".into(),
        key: key.into(),
    }
}

#[tokio::test]
async fn manifests_are_read_bounded_and_a_runs_objects_and_uploads_removed() {
    let Some(moto) = Moto::start(Flavor::S3RootsFixed, "the S3 staging adapter") else {
        return;
    };
    let config = aws_sdk_s3::config::Builder::from(&crate::moto_config(&moto.endpoint))
        .force_path_style(true)
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(config);
    s3.create_bucket().bucket("staging").send().await.unwrap();
    let put = |key: &'static str, body: Vec<u8>| {
        let s3 = s3.clone();
        async move {
            s3.put_object()
                .bucket("staging")
                .key(key)
                .body(ByteStream::from(body))
                .send()
                .await
                .unwrap();
        }
    };
    put(
        "runs/sms-job-1/sms-run-1/manifest.json",
        b"{\"disks\":[]}".to_vec(),
    )
    .await;
    put("runs/sms-job-1/sms-run-1/disk-0.vmdk", vec![7u8; 5000]).await;
    put("runs/sms-job-1/sms-run-2/disk-0.vmdk", vec![1u8; 10]).await;
    let open_upload = s3
        .create_multipart_upload()
        .bucket("staging")
        .key("runs/sms-job-1/sms-run-1/disk-1.vmdk")
        .send()
        .await
        .unwrap();
    assert!(open_upload.upload_id().is_some());

    let staging = S3Staging::new(s3.clone());
    let manifest = object("runs/sms-job-1/sms-run-1/manifest.json");
    assert_eq!(
        staging.get_object(&manifest, 1024).await.unwrap(),
        b"{\"disks\":[]}"
    );
    // Exactly at the bound is fine; one byte under the object's size is too large.
    assert_eq!(staging.get_object(&manifest, 12).await.unwrap().len(), 12);
    assert!(matches!(
        staging.get_object(&manifest, 11).await,
        Err(StagingError::TooLarge(_))
    ));
    assert!(matches!(
        staging.get_object(&object("runs/none"), 10).await,
        Err(StagingError::NotFound(_))
    ));
    assert_eq!(
        staging
            .object_size(&object("runs/sms-job-1/sms-run-1/disk-0.vmdk"))
            .await
            .unwrap(),
        Some(5000)
    );
    assert_eq!(
        staging.object_size(&object("runs/none")).await.unwrap(),
        None
    );

    let deleted = staging
        .delete_prefix("staging", "runs/sms-job-1/sms-run-1/")
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    let left = s3.list_objects_v2().bucket("staging").send().await.unwrap();
    let keys: Vec<&str> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        keys,
        ["runs/sms-job-1/sms-run-2/disk-0.vmdk"],
        "other runs stay"
    );
    let uploads = s3
        .list_multipart_uploads()
        .bucket("staging")
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "the open upload was aborted");
    assert_eq!(
        staging
            .delete_prefix("staging", "runs/none/")
            .await
            .unwrap(),
        0,
        "deleting an empty prefix succeeds"
    );

    // put_object writes a whole object that reads back, with its content type.
    let template = object("templates/app-1/template.json");
    staging
        .put_object(
            &template,
            b"{\"Resources\":{}}".to_vec(),
            "application/json",
        )
        .await
        .unwrap();
    assert_eq!(
        staging.get_object(&template, 1024).await.unwrap(),
        b"{\"Resources\":{}}"
    );
    let head = s3
        .head_object()
        .bucket("staging")
        .key("templates/app-1/template.json")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/json"));
}
