//! `CfnLauncher` (the `Launcher` port) against moto's CloudFormation and EC2: a stack from a
//! template of the shape GenerateTemplate writes (instances from registered AMIs in launch
//! order, the default instance type as a parameter, user data, Tern's metadata and tags, the
//! instance and IP outputs) is created, is found again by name, runs its instances, and is
//! deleted twice; the refusals name their cause.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tern_aws::{CfnLauncher, CfnLauncherSettings};
use tern_core::launcher::{LaunchError, Launcher, StackState};
use tern_test_support::moto::{Flavor, Moto};
use tern_test_support::poll;

fn launcher(config: &aws_config::SdkConfig) -> CfnLauncher {
    CfnLauncher::new(
        aws_sdk_cloudformation::Client::new(config),
        CfnLauncherSettings {
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            managed_by: "tern:tests".into(),
        },
    )
    .with_ec2(aws_sdk_ec2::Client::new(config))
}

/// An AMI over a snapshot of a fresh volume, as a replication run registers one.
async fn register_ami(ec2: &aws_sdk_ec2::Client, name: &str) -> String {
    let volume = ec2
        .create_volume()
        .size(1)
        .availability_zone("us-east-1a")
        .send()
        .await
        .unwrap()
        .volume_id
        .unwrap();
    let snapshot = ec2
        .create_snapshot()
        .volume_id(volume)
        .send()
        .await
        .unwrap()
        .snapshot_id
        .unwrap();
    ec2.register_image()
        .name(name)
        .root_device_name("/dev/sda1")
        .block_device_mappings(
            aws_sdk_ec2::types::BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(
                    aws_sdk_ec2::types::EbsBlockDevice::builder()
                        .snapshot_id(snapshot)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap()
}

/// Two servers in two launch steps, as `Service::template` writes them.
fn template(db_ami: &str, web_ami: &str) -> Value {
    let server = |logical: &str, ami: &str, server: &str, level: u32| {
        let mut r = json!({
            "Type": "AWS::EC2::Instance",
            "Metadata": {"Tern::Server": {"serverId": server, "vmName": logical.to_lowercase(), "launchLevel": level}},
            "Properties": {
                "ImageId": ami,
                "InstanceType": {"Ref": "DefaultInstanceType"},
                "UserData": {"Fn::Base64": format!("#!/bin/sh\necho {logical}\n")},
                "Tags": [
                    {"Key": "Name", "Value": logical.to_lowercase()},
                    {"Key": "tern:appId", "Value": "app-0123456789abcdef0"},
                    {"Key": "tern:serverId", "Value": server},
                ],
            },
        });
        if level > 1 {
            r["DependsOn"] = json!(["Database"]);
        }
        r
    };
    let outputs = |logical: &str| {
        [
            (
                format!("{logical}InstanceId"),
                json!({"Value": {"Ref": logical}}),
            ),
            (
                format!("{logical}PrivateIp"),
                json!({"Value": {"Fn::GetAtt": [logical, "PrivateIp"]}}),
            ),
        ]
    };
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "Application app-0123456789abcdef0 migrated by Tern: 2 servers in 2 launch steps",
        "Parameters": {"DefaultInstanceType": {"Type": "String", "Default": "t3.medium"}},
        "Resources": {
            "Database": server("Database", db_ami, "s-00000000000000001", 1),
            "Web": server("Web", web_ami, "s-00000000000000002", 2),
        },
        "Outputs": outputs("Database").into_iter().chain(outputs("Web")).collect::<serde_json::Map<_, _>>(),
    })
}

/// The instances moto's EC2 runs for `stack_id`, with their image and `tern:managed-by` tag.
async fn instances_of(
    ec2: &aws_sdk_ec2::Client,
    stack_id: &str,
) -> Vec<(String, String, String, Option<String>)> {
    let out = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:aws:cloudformation:stack-id")
                .values(stack_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut found = Vec::new();
    for i in out.reservations().iter().flat_map(|r| r.instances()) {
        let tag = |k: &str| {
            i.tags()
                .iter()
                .find(|t| t.key() == Some(k))
                .and_then(|t| t.value().map(str::to_owned))
        };
        found.push((
            tag("aws:cloudformation:logical-id").unwrap_or_default(),
            i.image_id().unwrap_or_default().to_owned(),
            i.state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
            tag("tern:managed-by"),
        ));
    }
    found.sort();
    found
}

async fn settled(l: &CfnLauncher, stack: &str, want: StackState) -> Duration {
    let started = Instant::now();
    let got = poll::until_async(Duration::from_secs(60), Duration::from_millis(100), || {
        let want = want.clone();
        async move {
            let s = l.stack_state(stack).await.unwrap();
            (s == want).then_some(s)
        }
    })
    .await;
    assert_eq!(
        got,
        Some(want.clone()),
        "the stack {stack} did not reach {want:?} within 60 s (now {:?})",
        l.stack_state(stack).await
    );
    started.elapsed()
}

#[tokio::test]
async fn launcher_creates_finds_again_and_deletes_a_stack_of_instances() {
    let Some(moto) = Moto::start(Flavor::Threaded, "the CloudFormation launcher") else {
        return;
    };
    let config = crate::moto_config(&moto.endpoint);
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let db_ami = register_ami(&ec2, "tern-db").await;
    let web_ami = register_ami(&ec2, "tern-web").await;
    let l = launcher(&config);
    l.check().await.unwrap();
    let doc = template(&db_ami, &web_ami);

    let started = Instant::now();
    let id = l
        .create_stack("sms-app-0123456789abcdef0", &doc, Some("sms-launch"))
        .await
        .unwrap();
    assert!(
        id.starts_with(
            "arn:aws:cloudformation:us-east-1:123456789012:stack/sms-app-0123456789abcdef0/"
        ),
        "{id}"
    );
    settled(&l, &id, StackState::CreateComplete).await;
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!(
            "CfnLauncher on moto: CREATE_COMPLETE {:?} after CreateStack\n",
            started.elapsed()
        ),
    );

    // What CloudFormation recorded: the launch role as an ARN of the account, Tern's tag.
    let cfn = aws_sdk_cloudformation::Client::new(&config);
    let described = cfn.describe_stacks().stack_name(&id).send().await.unwrap();
    let stack = &described.stacks()[0];
    assert_eq!(
        stack.role_arn(),
        Some("arn:aws:iam::123456789012:role/sms-launch")
    );
    assert!(
        stack
            .tags()
            .iter()
            .any(|t| t.key() == Some("tern:managed-by") && t.value() == Some("tern:tests")),
        "{:?}",
        stack.tags()
    );
    let ip = stack
        .outputs()
        .iter()
        .find(|o| o.output_key() == Some("WebPrivateIp"))
        .and_then(|o| o.output_value());
    assert!(
        ip.is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()),
        "{ip:?}"
    );

    // The instances run from the AMIs, carrying the stack's tags.
    let running = instances_of(&ec2, &id).await;
    let managed = Some("tern:tests".to_string());
    assert_eq!(
        running,
        vec![
            (
                "Database".into(),
                db_ami.clone(),
                "running".into(),
                managed.clone()
            ),
            (
                "Web".into(),
                web_ami.clone(),
                "running".into(),
                managed.clone()
            ),
        ]
    );

    // Idempotent by name: the same stack again is the same stack, nothing more runs.
    let again = l
        .create_stack("sms-app-0123456789abcdef0", &doc, Some("sms-launch"))
        .await
        .unwrap();
    assert_eq!(again, id);
    assert_eq!(instances_of(&ec2, &id).await.len(), 2);

    // An instance's console, by its logical id (moto's GetConsoleOutput answers a sample boot
    // log); a logical id the stack does not have, and a launcher without EC2, read none.
    let console = l.console_output(&id, "Web").await.unwrap();
    assert!(
        console
            .as_deref()
            .is_some_and(|c| c.contains("Linux version")),
        "{console:?}"
    );
    assert_eq!(l.console_output(&id, "NoSuchServer").await.unwrap(), None);
    let without_ec2 = CfnLauncher::new(
        aws_sdk_cloudformation::Client::new(&config),
        CfnLauncherSettings {
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            managed_by: "tern:tests".into(),
        },
    );
    assert_eq!(without_ec2.console_output(&id, "Web").await.unwrap(), None);

    // Deleted, its instances terminated; deleting again and asking again change nothing.
    l.delete_stack(&id).await.unwrap();
    settled(&l, &id, StackState::DeleteComplete).await;
    let after = instances_of(&ec2, &id).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|i| i.2 == "terminated"), "{after:?}");
    l.delete_stack(&id).await.unwrap();
    assert_eq!(
        l.stack_state(&id).await.unwrap(),
        StackState::DeleteComplete
    );
    // A stack CloudFormation never heard of is gone as well.
    let unknown = "arn:aws:cloudformation:us-east-1:123456789012:stack/sms-app-1/none";
    assert_eq!(
        l.stack_state(unknown).await.unwrap(),
        StackState::DeleteComplete
    );
    l.delete_stack(unknown).await.unwrap();

    // A new launch after the delete is a new stack (the old one's name is free again).
    let relaunched = l
        .create_stack("sms-app-0123456789abcdef0", &doc, Some("sms-launch"))
        .await
        .unwrap();
    assert_ne!(relaunched, id);
    settled(&l, &relaunched, StackState::CreateComplete).await;
}

#[tokio::test]
async fn launcher_refusals_name_their_cause() {
    let Some(moto) = Moto::start(Flavor::Threaded, "the CloudFormation launcher's refusals") else {
        return;
    };
    let config = crate::moto_config(&moto.endpoint);
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let ami = register_ami(&ec2, "tern-one").await;
    let l = launcher(&config);
    let cfn = aws_sdk_cloudformation::Client::new(&config);
    let stacks = || async {
        cfn.list_stacks()
            .send()
            .await
            .unwrap()
            .stack_summaries()
            .len()
    };

    // An attribute CloudFormation (here moto's) does not know: CloudFormation's code and
    // message, and no stack.
    let mut doc = template(&ami, &ami);
    doc["Outputs"]["WebPrivateIp"]["Value"]["Fn::GetAtt"][1] = json!("PrivateIpAddr");
    let err = l
        .create_stack("sms-app-00000000000000bad", &doc, Some("sms-launch"))
        .await
        .unwrap_err();
    let LaunchError::Failed(message) = &err else {
        panic!("a template CloudFormation refuses is Failed, not {err:?}");
    };
    assert!(
        message.contains("CreateStack")
            && message.contains("ValidationError")
            && message.contains("PrivateIpAddr"),
        "{message}"
    );
    assert_eq!(stacks().await, 0);

    // No launch role: refused before any call, saying what to set.
    let err = l
        .create_stack("sms-app-00000000000000bad", &template(&ami, &ami), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LaunchError::Failed(m) if m.contains("roleName")),
        "{err:?}"
    );

    // Over CloudFormation's TemplateBody limit: refused before any call, with the size.
    let mut big = template(&ami, &ami);
    big["Description"] = json!("x".repeat(60_000));
    let err = l
        .create_stack("sms-app-00000000000000bad", &big, Some("sms-launch"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LaunchError::Failed(m) if m.contains("51200-byte") && m.contains("bytes")),
        "{err:?}"
    );
    assert_eq!(stacks().await, 0);

    // With a template bucket, the same template is put there and created from its TemplateURL.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket("tern-staging")
        .send()
        .await
        .unwrap();
    let staged = launcher(&config).with_template_bucket(s3.clone(), "tern-staging");
    let id = staged
        .create_stack("sms-app-00000000000000big", &big, Some("sms-launch"))
        .await
        .unwrap();
    let kept = s3
        .get_object()
        .bucket("tern-staging")
        .key("apps/sms-app-00000000000000big/launch-template.json")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(serde_json::from_slice::<Value>(&kept).unwrap(), big);
    let described = cfn.describe_stacks().stack_name(&id).send().await.unwrap();
    assert_eq!(
        described.stacks()[0].description(),
        Some("x".repeat(60_000).as_str())
    );
    staged.delete_stack(&id).await.unwrap();
    // Over the 1 MiB a template in S3 may have: refused, naming that limit.
    big["Description"] = json!("x".repeat(1_100_000));
    let err = staged
        .create_stack("sms-app-00000000000000bad", &big, Some("sms-launch"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LaunchError::Failed(m) if m.contains("1048576-byte")),
        "{err:?}"
    );

    // CloudFormation out of reach: transient, the same call may succeed later.
    drop(moto);
    let err = l
        .stack_state("arn:aws:cloudformation:us-east-1:123456789012:stack/sms-app-1/x")
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::Transient(_)), "{err:?}");
}
