//! upload-complete and the task functions: a run prepared and parked in WaitForUpload by the
//! tasks Lambda's handler; the staging bucket's "Object Created" event of its manifest (the
//! fixture, as EventBridge delivers it) is accepted once, a repeat changes nothing, a foreign
//! object is ignored, and a task called with a bad payload fails with the error name the state
//! machine matches.

use serde_json::json;
use tern_core::replication::{functions, ObjectKind, StagingLocation};

use crate::{fixture, Stack};

fn object_created(bucket: &str, key: &str) -> serde_json::Value {
    let mut event = fixture("s3/manifest-object-created.json");
    event["detail"]["bucket"]["name"] = json!(bucket);
    event["detail"]["object"]["key"] = json!(key);
    event
}

#[tokio::test]
async fn a_manifest_resumes_its_run_once_and_other_objects_change_nothing() {
    let Some(stack) = Stack::start("the upload-complete and task Lambdas").await else {
        return;
    };
    let bucket = stack.settings.staging_bucket.clone();
    let s3 = aws_sdk_s3::Client::new(&stack.aws);
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let replication = &stack.deployment.replication;
    let job_id = crate::job_seeded_now(&stack, &stack.deployment.service).await;
    let tick = tern_fn_scheduler::handle(replication).await.unwrap();
    let run_id = tick["runsCreated"][0].as_str().unwrap().to_owned();

    // What Step Functions would invoke: Prepare, then WaitForUpload with its task token.
    let ids = json!({"jobId": job_id, "runId": run_id});
    let prepared = tern_fn_tasks::handle(replication, functions::PREPARE, ids.clone())
        .await
        .expect("prepare");
    assert_eq!(prepared["seed"], true, "{prepared}");
    let mut waiting = ids.clone();
    waiting["taskToken"] = json!("token-of-the-wait");
    tern_fn_tasks::handle(replication, functions::WAIT_FOR_UPLOAD, waiting)
        .await
        .expect("wait-for-upload");

    // The connector's upload: the disk, then the manifest.
    let layout = StagingLocation::new(&bucket, &stack.settings.staging_prefix);
    let disk_key = layout.disk_key(&job_id, &run_id, 0, ObjectKind::SeedVmdk);
    let disk = vec![7u8; 4096];
    s3.put_object()
        .bucket(&bucket)
        .key(&disk_key)
        .body(disk.clone().into())
        .send()
        .await
        .unwrap();
    let manifest_key = layout.manifest_key(&job_id, &run_id);
    let manifest = json!({
        "jobId": job_id,
        "runId": run_id,
        "disks": [{"index": 0, "kind": "seed-vmdk", "key": disk_key, "size": disk.len(), "virtualSize": 1 << 20}]
    });
    s3.put_object()
        .bucket(&bucket)
        .key(&manifest_key)
        .body(manifest.to_string().into_bytes().into())
        .send()
        .await
        .unwrap();

    let event = object_created(&bucket, &manifest_key);
    let first = tern_fn_upload_complete::handle(replication, &event)
        .await
        .expect("handled");
    assert_eq!(first["outcome"], "Accepted", "{first}");
    let again = tern_fn_upload_complete::handle(replication, &event)
        .await
        .expect("handled");
    assert_eq!(again["outcome"], "Duplicate", "{again}");
    let disk_event = object_created(&bucket, &disk_key);
    let other = tern_fn_upload_complete::handle(replication, &disk_event)
        .await
        .expect("handled");
    assert_eq!(other["outcome"], "Ignored", "{other}");
    let not_s3 = tern_fn_upload_complete::handle(replication, &json!({"source": "aws.ec2"}))
        .await
        .expect("handled");
    assert_eq!(not_s3["outcome"], "Ignored", "{not_s3}");

    // The run records the manifest it was resumed with.
    let run = stack.deployment.service.get_job(&job_id).await.unwrap();
    assert!(run.active_run.is_some());

    // A task invoked with a payload that does not fit its contract.
    let err = tern_fn_tasks::handle(replication, functions::PREPARE, json!({"jobId": 5}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "Tern.InvalidInput", "{err:?}");
}

#[test]
fn the_task_function_is_checked_at_start() {
    assert_eq!(
        tern_fn_tasks::task_function(Some("import".into())).unwrap(),
        "import"
    );
    let err = tern_fn_tasks::task_function(Some("imprt".into()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("TERN_TASK_FUNCTION") && err.contains("import"),
        "{err}"
    );
    assert!(tern_fn_tasks::task_function(None).is_err());
}
