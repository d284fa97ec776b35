//! `Ec2Images` on the answers moto does not give: ImportSnapshot and its task states (moto has
//! no VM Import), a snapshot still used by an image, throttling.

use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation::create_tags::CreateTagsOutput;
use aws_sdk_ec2::operation::delete_snapshot::DeleteSnapshotError;
use aws_sdk_ec2::operation::describe_images::DescribeImagesOutput;
use aws_sdk_ec2::operation::describe_import_snapshot_tasks::{
    DescribeImportSnapshotTasksError, DescribeImportSnapshotTasksOutput,
};
use aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput;
use aws_sdk_ec2::operation::import_snapshot::ImportSnapshotOutput;
use aws_sdk_ec2::operation::register_image::RegisterImageOutput;
use aws_sdk_ec2::types::builders::SnapshotTaskDetailBuilder;
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, EbsBlockDevice, ImportSnapshotTask, SnapshotState,
    SnapshotTaskDetail,
};
use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
use tern_aws::{Ec2Images, Ec2ImagesSettings};
use tern_core::images::{Images, ImagesError, StagedObject, TaskFailure, TaskStatus};

/// EBS and S3 clients no call in these tests reaches.
fn images(ec2: aws_sdk_ec2::Client) -> Ec2Images {
    let unused = crate::moto_config("http://127.0.0.1:9");
    Ec2Images::new(
        ec2,
        aws_sdk_ebs::Client::new(&unused),
        aws_sdk_s3::Client::new(&unused),
        Ec2ImagesSettings::new("vmimport", "tern-tests"),
    )
}

fn task(status: &str, detail: SnapshotTaskDetailBuilder) -> Rule {
    let detail = detail.status(status).build();
    mock!(aws_sdk_ec2::Client::describe_import_snapshot_tasks)
        .match_requests(|r| r.import_task_ids() == ["import-snap-1"])
        .then_output(move || {
            DescribeImportSnapshotTasksOutput::builder()
                .import_snapshot_tasks(
                    ImportSnapshotTask::builder()
                        .import_task_id("import-snap-1")
                        .snapshot_task_detail(detail.clone())
                        .build(),
                )
                .build()
        })
}

#[tokio::test]
async fn an_import_runs_as_the_vmimport_role_once_per_staged_object() {
    let import = mock!(aws_sdk_ec2::Client::import_snapshot)
        .match_requests(|r| {
            let disk = r.disk_container().unwrap();
            let bucket = disk.user_bucket().unwrap();
            r.role_name() == Some("vmimport")
                && disk.format() == Some("VMDK")
                && bucket.s3_bucket() == Some("staging")
                && bucket.s3_key() == Some("runs/j/r/disk-0.vmdk")
                && r.client_token().is_some_and(|t| t.starts_with("tern-"))
        })
        .then_output(|| {
            ImportSnapshotOutput::builder()
                .import_task_id("import-snap-1")
                .build()
        });
    let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&import]);
    let images = images(client);
    let source = StagedObject {
        bucket: "staging".into(),
        key: "runs/j/r/disk-0.vmdk".into(),
    };
    assert_eq!(
        images.start_import(&source, "disk 0").await.unwrap(),
        "import-snap-1"
    );
    assert_eq!(import.num_calls(), 1);
    assert!(images
        .delta_writes("import-snap-1")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn import_tasks_report_progress_completion_and_ec2s_failure_message() {
    let active = task(
        "active",
        SnapshotTaskDetail::builder()
            .progress("42")
            .status_message("converting")
            .disk_image_size(2_000_000_000.0),
    );
    let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&active]);
    match images(client).describe_task("import-snap-1").await.unwrap() {
        TaskStatus::Active {
            progress_percent,
            bytes_done,
            bytes_total,
            message,
        } => {
            assert_eq!((progress_percent, message.as_str()), (42, "converting"));
            assert_eq!((bytes_done, bytes_total), (840_000_000, 2_000_000_000));
        }
        other => panic!("expected Active, got {other:?}"),
    }

    let completed = task(
        "completed",
        SnapshotTaskDetail::builder()
            .snapshot_id("snap-0abc")
            .progress("100"),
    );
    let snapshot = mock!(aws_sdk_ec2::Client::describe_snapshots)
        .match_requests(|r| r.snapshot_ids() == ["snap-0abc"])
        .then_output(|| {
            DescribeSnapshotsOutput::builder()
                .snapshots(
                    aws_sdk_ec2::types::Snapshot::builder()
                        .snapshot_id("snap-0abc")
                        .volume_size(8)
                        .state(SnapshotState::Completed)
                        .description("disk 0")
                        .build(),
                )
                .build()
        });
    let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&completed, &snapshot]);
    match images(client).describe_task("import-snap-1").await.unwrap() {
        TaskStatus::Completed { snapshot } => {
            assert_eq!(snapshot.snapshot_id, "snap-0abc");
            assert_eq!(snapshot.volume_size_gib(), 8);
            assert_eq!(snapshot.parent_snapshot_id, None);
        }
        other => panic!("expected Completed, got {other:?}"),
    }

    let message = "ClientError: Disk validation failed [Unsupported VMDK File Format]";
    let deleted = task(
        "deleted",
        SnapshotTaskDetail::builder().status_message(message),
    );
    let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&deleted]);
    let status = images(client).describe_task("import-snap-1").await.unwrap();
    assert_eq!(
        status,
        TaskStatus::Failed {
            kind: TaskFailure::InvalidImage,
            message: message.into()
        }
    );
    assert_eq!(
        status.failure().unwrap().error_type(),
        "Images.InvalidImage"
    );
}

#[tokio::test]
async fn unknown_tasks_are_not_found_and_throttling_is_transient() {
    let unknown = mock!(aws_sdk_ec2::Client::describe_import_snapshot_tasks).then_error(|| {
        DescribeImportSnapshotTasksError::generic(
            ErrorMetadata::builder()
                .code("InvalidConversionTaskId.Malformed")
                .message("no such task")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&unknown]);
    assert!(matches!(
        images(client).describe_task("import-snap-9").await,
        Err(ImagesError::NotFound(_))
    ));

    let throttled = mock!(aws_sdk_ec2::Client::describe_import_snapshot_tasks).then_error(|| {
        DescribeImportSnapshotTasksError::generic(
            ErrorMetadata::builder()
                .code("RequestLimitExceeded")
                .message("Request limit exceeded.")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&throttled]);
    match images(client).describe_task("import-snap-1").await {
        Err(e @ ImagesError::Transient { .. }) => {
            assert!(e.to_string().contains("Request limit exceeded"), "{e}");
            assert_eq!(e.error_type(), "Images.Transient");
        }
        other => panic!("expected Transient, got {other:?}"),
    }
}

#[tokio::test]
async fn a_snapshot_an_image_still_uses_is_in_use() {
    let in_use = mock!(aws_sdk_ec2::Client::delete_snapshot).then_error(|| {
        DeleteSnapshotError::generic(
            ErrorMetadata::builder()
                .code("InvalidSnapshot.InUse")
                .message("The snapshot snap-1 is currently in use by ami-1")
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&in_use]);
    match images(client).delete_snapshot("snap-1").await {
        Err(ImagesError::InUse(m)) => assert!(m.contains("ami-1"), "{m}"),
        other => panic!("expected InUse, got {other:?}"),
    }
}

fn ec2_image(id: &str, name: &str, snapshots: &[&str]) -> aws_sdk_ec2::types::Image {
    let mut b = aws_sdk_ec2::types::Image::builder()
        .image_id(id)
        .name(name)
        .architecture(ArchitectureValues::X8664)
        .root_device_name("/dev/sda1")
        .ena_support(true)
        .creation_date("2026-12-06T07:00:00.000Z");
    for (i, s) in snapshots.iter().enumerate() {
        b = b.block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(if i == 0 { "/dev/sda1" } else { "/dev/sdb" })
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(*s)
                        .volume_size(2)
                        .delete_on_termination(false)
                        .build(),
                )
                .build(),
        );
    }
    b.build()
}

/// RegisterImage gets the root disk first as the root device, DeleteOnTermination false, ENA,
/// HVM, x86_64; a name already registered over the same disks returns that image without a
/// second registration, and the image is tagged as Tern's either way.
#[tokio::test]
async fn images_are_registered_root_first_and_once_by_name() {
    let none_yet = mock!(aws_sdk_ec2::Client::describe_images)
        .match_requests(|r| r.image_ids().is_empty())
        .then_output(|| DescribeImagesOutput::builder().build());
    let register = mock!(aws_sdk_ec2::Client::register_image)
        .match_requests(|r| {
            let disks: Vec<(&str, &str, Option<bool>)> = r
                .block_device_mappings()
                .iter()
                .map(|m| {
                    let ebs = m.ebs().unwrap();
                    (
                        m.device_name().unwrap(),
                        ebs.snapshot_id().unwrap(),
                        ebs.delete_on_termination(),
                    )
                })
                .collect();
            r.root_device_name() == Some("/dev/sda1")
                && disks
                    == [
                        ("/dev/sda1", "snap-root", Some(false)),
                        ("/dev/sdb", "snap-data", Some(false)),
                    ]
                && r.ena_support() == Some(true)
                && r.virtualization_type() == Some("hvm")
                && r.architecture() == Some(&ArchitectureValues::X8664)
                && r.name() == Some("sms-job-1-run-1")
        })
        .then_output(|| RegisterImageOutput::builder().image_id("ami-1").build());
    let described = mock!(aws_sdk_ec2::Client::describe_images)
        .match_requests(|r| r.image_ids() == ["ami-1"])
        .then_output(|| {
            DescribeImagesOutput::builder()
                .images(ec2_image(
                    "ami-1",
                    "sms-job-1-run-1",
                    &["snap-root", "snap-data"],
                ))
                .build()
        });
    let tagged = mock!(aws_sdk_ec2::Client::create_tags)
        .match_requests(|r| {
            r.resources() == ["ami-1"]
                && r.tags()
                    .iter()
                    .any(|t| t.key() == Some("tern:managed-by") && t.value() == Some("tern-tests"))
        })
        .then_output(|| CreateTagsOutput::builder().build());
    let client = mock_client!(
        aws_sdk_ec2,
        RuleMode::MatchAny,
        [&none_yet, &register, &described, &tagged]
    );
    let request = crate::images::request("sms-job-1-run-1", &["snap-root", "snap-data"]);
    let image = images(client).register_image(&request).await.unwrap();
    assert_eq!(image.image_id, "ami-1");
    assert_eq!(image.block_devices, request.block_devices);
    assert_eq!((register.num_calls(), tagged.num_calls()), (1, 1));

    let existing = mock!(aws_sdk_ec2::Client::describe_images)
        .match_requests(|r| r.image_ids().is_empty())
        .then_output(|| {
            DescribeImagesOutput::builder()
                .images(ec2_image(
                    "ami-1",
                    "sms-job-1-run-1",
                    &["snap-root", "snap-data"],
                ))
                .build()
        });
    let register_again = mock!(aws_sdk_ec2::Client::register_image)
        .then_output(|| RegisterImageOutput::builder().image_id("ami-2").build());
    let client = mock_client!(
        aws_sdk_ec2,
        RuleMode::MatchAny,
        [&existing, &register_again, &tagged]
    );
    let images = images(client);
    assert_eq!(
        images.register_image(&request).await.unwrap().image_id,
        "ami-1"
    );
    assert_eq!(
        register_again.num_calls(),
        0,
        "found by name, not registered twice"
    );
    let other_disks = crate::images::request("sms-job-1-run-1", &["snap-other"]);
    assert!(matches!(
        images.register_image(&other_disks).await,
        Err(ImagesError::InvalidParameter(_))
    ));
}
