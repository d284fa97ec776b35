//! An application from replication to its CloudFormation template through `aws-sdk-sms`
//! against a real `tern serve`: launch configuration → validation configuration and outcomes →
//! GenerateTemplate (JSON and YAML, each checked with `cfn-lint`) → GenerateChangeSet refused
//! before a launch → LaunchApp running each instance as a QEMU guest in launch order →
//! TerminateApp. User data and the configure script are real objects in the staging bucket,
//! uploaded with the S3 SDK.

use std::path::Path;
use std::time::Duration;

use aws_sdk_sms::types::{
    AppReplicationStatus, AppValidationConfiguration, AppValidationStrategy, LicenseType,
    NotificationContext, OutputFormat, S3Location, ScriptType, Server,
    ServerGroupLaunchConfiguration, ServerGroupReplicationConfiguration,
    ServerGroupValidationConfiguration, ServerLaunchConfiguration, ServerReplicationConfiguration,
    ServerReplicationParameters, ServerValidationConfiguration, ServerValidationStrategy, Source,
    SsmValidationParameters, UserData, UserDataValidationParameters, ValidationStatus,
};
use aws_smithy_types::DateTime;
use serde_json::Value;
use tern_acceptance::{now_secs, TestServer};
use tern_test_support::poll;

use crate::apps::{catalog, group};
use crate::code_and_message;

/// Reads the application until its launchStatus is `want` (at most 180 s; a guest under TCG
/// shows its firmware within seconds).
async fn launch_status_becomes(
    c: &aws_sdk_sms::Client,
    app_id: &str,
    want: &str,
) -> aws_sdk_sms::types::AppSummary {
    let got = poll::until_async(
        Duration::from_secs(180),
        Duration::from_millis(250),
        || async {
            let app = c.get_app().app_id(app_id).send().await.unwrap();
            let summary = app.app_summary().unwrap().clone();
            let status = summary.launch_status().map(|s| s.as_str().to_string());
            assert_ne!(status.as_deref(), Some("LAUNCH_FAILED"), "{summary:?}");
            (status.as_deref() == Some(want)).then_some(summary)
        },
    )
    .await;
    got.unwrap_or_else(|| panic!("launchStatus of {app_id} did not become {want} within 180 s"))
}

/// Runs `cfn-lint` on `file` and asserts it finds nothing (exit 0: no error, warning or
/// informational finding). A missing `cfn-lint` fails with how to install it.
fn assert_cfn_lint_clean(file: &Path) {
    let out = std::process::Command::new("cfn-lint")
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run cfn-lint ({e}); install it with `python3 -m pip install 'cfn-lint==1.51.0'` (.ci/run does)"
            )
        });
    assert!(
        out.status.success(),
        "cfn-lint found problems in {} (exit {:?}):\n{}{}\n{}",
        file.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
}

fn loc(bucket: &str, key: &str) -> S3Location {
    S3Location::builder().bucket(bucket).key(key).build()
}

fn server(id: &str) -> Server {
    Server::builder().server_id(id).build()
}

/// Configures each group's one server (server group id, server id) to replicate from now,
/// starts the application's replication and drives it (scheduler ticks, connector polls) until
/// the application is REPLICATED, within 120 s.
async fn replicate(
    server_: &TestServer,
    agent: &tern_connector::Agent,
    app_id: &str,
    groups: &[(&str, &str)],
) {
    let c = &server_.client;
    let mut put = c.put_app_replication_configuration().app_id(app_id);
    for (gid, sid) in groups {
        put = put.server_group_replication_configurations(
            ServerGroupReplicationConfiguration::builder()
                .server_group_id(*gid)
                .server_replication_configurations(
                    ServerReplicationConfiguration::builder()
                        .server(server(sid))
                        .server_replication_parameters(
                            ServerReplicationParameters::builder()
                                .seed_time(DateTime::from_secs(now_secs()))
                                .frequency(12)
                                .license_type(LicenseType::Byol)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        );
    }
    put.send().await.unwrap();
    c.start_app_replication()
        .app_id(app_id)
        .send()
        .await
        .unwrap();
    let replicated = poll::until_async(
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            server_.tick().await;
            agent.poll_once().await.unwrap();
            let app = c.get_app().app_id(app_id).send().await.unwrap();
            let status = app.app_summary().unwrap().replication_status().cloned();
            assert_ne!(status, Some(AppReplicationStatus::ReplicationFailed));
            (status == Some(AppReplicationStatus::Replicated)).then_some(())
        },
    )
    .await;
    assert!(
        replicated.is_some(),
        "the application replicated within 120 s"
    );
}

#[tokio::test]
async fn an_application_is_configured_validated_and_templated() {
    let server_ = TestServer::start().await;
    let (agent, s) = catalog(&server_, 3).await;
    let c = &server_.client;
    let bucket = server_.replication().settings().staging_bucket.clone();
    let s3 = server_.s3();

    let created = c
        .create_app()
        .name("shop")
        .server_groups(group("web", &[&s[0]]))
        .server_groups(group("app", &[&s[1]]))
        .server_groups(group("db", &[&s[2]]))
        .tags(
            aws_sdk_sms::types::Tag::builder()
                .key("team")
                .value("blue")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let app_id = created.app_summary().unwrap().app_id().unwrap().to_string();
    let g: Vec<String> = created
        .server_groups()
        .iter()
        .map(|g| g.server_group_id().unwrap().to_string())
        .collect();

    // No template before there are AMIs: the message says what to do.
    let (code, message) = code_and_message(c.generate_template().app_id(&app_id).send().await);
    assert_eq!(code, "InvalidParameterException");
    assert!(
        message.contains("launch before any AMI exists") && message.contains(&s[0]),
        "{message}"
    );

    // Launch configuration: the database first, then the app tier, then the web tier.
    for (key, body) in [
        ("scripts/db-user-data.sh", "#!/bin/sh\necho db-user-data\n"),
        ("scripts/db-configure.sh", "#!/bin/sh\necho db-configure\n"),
        (
            "scripts/web-user-data.yaml",
            "#cloud-config\nruncmd:\n  - echo web\n",
        ),
        (
            "scripts/web-check.sh",
            "#!/bin/sh\ncurl -fs http://localhost/\n",
        ),
    ] {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let launch = |db_user_data: &str| {
        c.put_app_launch_configuration()
            .app_id(&app_id)
            .role_name("sms-launch")
            .auto_launch(false)
            .server_group_launch_configurations(
                ServerGroupLaunchConfiguration::builder()
                    .server_group_id(&g[0])
                    .launch_order(3)
                    .server_launch_configurations(
                        ServerLaunchConfiguration::builder()
                            .server(server(&s[0]))
                            .logical_id("Web")
                            .instance_type("t3.small")
                            .associate_public_ip_address(true)
                            .subnet("subnet-0123abcd")
                            .security_group("sg-0123abcd")
                            .user_data(
                                UserData::builder()
                                    .s3_location(loc(&bucket, "scripts/web-user-data.yaml"))
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .server_group_launch_configurations(
                ServerGroupLaunchConfiguration::builder()
                    .server_group_id(&g[1])
                    .launch_order(2)
                    .server_launch_configurations(
                        ServerLaunchConfiguration::builder()
                            .server(server(&s[1]))
                            .build(),
                    )
                    .build(),
            )
            .server_group_launch_configurations(
                ServerGroupLaunchConfiguration::builder()
                    .server_group_id(&g[2])
                    .launch_order(1)
                    .server_launch_configurations(
                        ServerLaunchConfiguration::builder()
                            .server(server(&s[2]))
                            .logical_id("Database")
                            .instance_type("m5.large")
                            .ec2_key_name("ops")
                            .iam_instance_profile_name("db-profile")
                            .subnet("subnet-0123abcd")
                            .security_group("sg-0123abcd")
                            .vpc("vpc-0123abcd")
                            .user_data(
                                UserData::builder()
                                    .s3_location(loc(&bucket, db_user_data))
                                    .build(),
                            )
                            .configure_script(loc(&bucket, "scripts/db-configure.sh"))
                            .configure_script_type(ScriptType::ShellScript)
                            .build(),
                    )
                    .build(),
            )
            .send()
    };
    launch("scripts/db-user-data.sh").await.unwrap();
    let got = c
        .get_app_launch_configuration()
        .app_id(&app_id)
        .send()
        .await
        .unwrap();
    assert_eq!(got.role_name(), Some("sms-launch"));
    assert_eq!(got.auto_launch(), Some(false));
    let db = &got.server_group_launch_configurations()[2];
    assert_eq!(db.launch_order(), Some(1));
    let db0 = &db.server_launch_configurations()[0];
    assert_eq!(db0.logical_id(), Some("Database"));
    assert_eq!(db0.configure_script_type(), Some(&ScriptType::ShellScript));
    assert_eq!(
        db0.server()
            .and_then(|s| s.vm_server())
            .and_then(|v| v.vm_name()),
        Some("app2")
    );
    let summary = c.get_app().app_id(&app_id).send().await.unwrap();
    let summary = summary.app_summary().unwrap();
    assert_eq!(
        summary.launch_configuration_status().map(|s| s.as_str()),
        Some("CONFIGURED")
    );
    assert_eq!(
        summary.launch_status().map(|s| s.as_str()),
        Some("READY_FOR_LAUNCH")
    );

    // Validation: an app-level SSM script and a server-level user-data script.
    c.put_app_validation_configuration()
        .app_id(&app_id)
        .app_validation_configurations(
            AppValidationConfiguration::builder()
                .name("smoke")
                .app_validation_strategy(AppValidationStrategy::Ssm)
                .ssm_validation_parameters(
                    SsmValidationParameters::builder()
                        .source(
                            Source::builder()
                                .s3_location(loc(&bucket, "scripts/smoke.sh"))
                                .build(),
                        )
                        .instance_id("i-0123456789abcdef0")
                        .script_type(ScriptType::ShellScript)
                        .command("bash smoke.sh")
                        .execution_timeout_seconds(600)
                        .build(),
                )
                .build(),
        )
        .server_group_validation_configurations(
            ServerGroupValidationConfiguration::builder()
                .server_group_id(&g[0])
                .server_validation_configurations(
                    ServerValidationConfiguration::builder()
                        .server(server(&s[0]))
                        .name("web-up")
                        .server_validation_strategy(ServerValidationStrategy::Userdata)
                        .user_data_validation_parameters(
                            UserDataValidationParameters::builder()
                                .source(
                                    Source::builder()
                                        .s3_location(loc(&bucket, "scripts/web-check.sh"))
                                        .build(),
                                )
                                .script_type(ScriptType::ShellScript)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let vc = c
        .get_app_validation_configuration()
        .app_id(&app_id)
        .send()
        .await
        .unwrap();
    let smoke = vc.app_validation_configurations()[0]
        .validation_id()
        .unwrap()
        .to_string();
    assert!(smoke.starts_with("val-") && smoke.len() == 21, "{smoke}");
    let out = c
        .get_app_validation_output()
        .app_id(&app_id)
        .send()
        .await
        .unwrap();
    assert_eq!(out.validation_output_list().len(), 2);
    assert!(out
        .validation_output_list()
        .iter()
        .all(|o| o.status() == Some(&ValidationStatus::ReadyForValidation)));
    c.notify_app_validation_output()
        .app_id(&app_id)
        .notification_context(
            NotificationContext::builder()
                .validation_id(&smoke)
                .status(ValidationStatus::Succeeded)
                .status_message("all 3 tiers answer")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let out = c
        .get_app_validation_output()
        .app_id(&app_id)
        .send()
        .await
        .unwrap();
    let o = &out.validation_output_list()[0];
    assert_eq!(o.validation_id(), Some(smoke.as_str()));
    assert_eq!(o.status(), Some(&ValidationStatus::Succeeded));
    assert_eq!(o.status_message(), Some("all 3 tiers answer"));
    assert!(o.latest_validation_time().is_some());
    assert_eq!(
        out.validation_output_list()[1]
            .server_validation_output()
            .and_then(|v| v.server())
            .and_then(|s| s.server_id()),
        Some(s[0].as_str())
    );

    // Replicate: one job per server until every server has an AMI.
    let groups: Vec<(&str, &str)> = g
        .iter()
        .zip(&s)
        .map(|(g, s)| (g.as_str(), s.as_str()))
        .collect();
    replicate(&server_, &agent, &app_id, &groups).await;
    let mut amis = Vec::new();
    let app = c.get_app().app_id(&app_id).send().await.unwrap();
    for g in app.server_groups() {
        let job = g.server_list()[0].replication_job_id().unwrap();
        let jobs = c
            .get_replication_jobs()
            .replication_job_id(job)
            .send()
            .await
            .unwrap();
        amis.push(
            jobs.replication_job_list()[0]
                .latest_ami_id()
                .unwrap()
                .to_string(),
        );
    }

    // GenerateTemplate, JSON: one instance per server from its AMI, in launch order.
    let out = c
        .generate_template()
        .app_id(&app_id)
        .template_format(OutputFormat::Json)
        .send()
        .await
        .unwrap();
    let at = out.s3_location().unwrap();
    assert_eq!(at.bucket(), Some(bucket.as_str()));
    assert_eq!(
        at.key(),
        Some(format!("apps/{app_id}/template.json").as_str())
    );
    let read = |key: String| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            let o = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            o.body.collect().await.unwrap().into_bytes().to_vec()
        }
    };
    let json_bytes = read(at.key().unwrap().to_string()).await;
    let t: Value = serde_json::from_slice(&json_bytes).unwrap();
    let r = &t["Resources"];
    let app_logical = format!("Server{}", s[1].replace('-', ""));
    assert_eq!(r.as_object().unwrap().len(), 3, "{t}");
    assert_eq!(r["Database"]["Properties"]["ImageId"], amis[2].as_str());
    assert_eq!(r[&app_logical]["Properties"]["ImageId"], amis[1].as_str());
    assert_eq!(r["Web"]["Properties"]["ImageId"], amis[0].as_str());
    assert!(r["Database"].get("DependsOn").is_none());
    assert_eq!(
        r[&app_logical]["DependsOn"],
        serde_json::json!(["Database"])
    );
    assert_eq!(r["Web"]["DependsOn"], serde_json::json!([app_logical]));
    assert_eq!(r["Database"]["Properties"]["InstanceType"], "m5.large");
    assert_eq!(
        r[&app_logical]["Properties"]["InstanceType"],
        serde_json::json!({"Ref": "DefaultInstanceType"})
    );
    assert_eq!(r["Database"]["Properties"]["KeyName"], "ops");
    assert_eq!(
        r["Database"]["Properties"]["IamInstanceProfile"],
        "db-profile"
    );
    let db_user_data = r["Database"]["Properties"]["UserData"]["Fn::Base64"]
        .as_str()
        .unwrap();
    assert!(
        db_user_data.contains("echo db-user-data") && db_user_data.contains("echo db-configure"),
        "{db_user_data}"
    );
    // The web server's user data, with its USERDATA validation script added between the
    // console markers GetAppValidationOutput reads back.
    let web_user_data = r["Web"]["Properties"]["UserData"]["Fn::Base64"]
        .as_str()
        .unwrap();
    assert!(
        web_user_data.starts_with("Content-Type: multipart/mixed")
            && web_user_data.contains("#cloud-config\nruncmd:\n  - echo web\n")
            && web_user_data.contains("curl -fs http://localhost/")
            && web_user_data.contains("echo \"TERN-VALIDATION-BEGIN val-"),
        "{web_user_data}"
    );
    assert_eq!(
        r["Web"]["Properties"]["NetworkInterfaces"][0]["AssociatePublicIpAddress"],
        true
    );
    let tags = r["Web"]["Properties"]["Tags"].as_array().unwrap();
    assert!(
        tags.iter()
            .any(|t| t["Key"] == "team" && t["Value"] == "blue"),
        "{tags:?}"
    );
    assert!(t["Outputs"]["DatabaseInstanceId"].is_object());
    assert!(t["Outputs"]["WebPrivateIp"].is_object());
    let dir = tempfile::tempdir().unwrap();
    let json_file = dir.path().join("template.json");
    std::fs::write(&json_file, &json_bytes).unwrap();
    assert_cfn_lint_clean(&json_file);

    // YAML: the same template.
    let out = c
        .generate_template()
        .app_id(&app_id)
        .template_format(OutputFormat::Yaml)
        .send()
        .await
        .unwrap();
    let key = out.s3_location().unwrap().key().unwrap().to_string();
    assert_eq!(key, format!("apps/{app_id}/template.yaml"));
    let yaml_file = dir.path().join("template.yaml");
    std::fs::write(&yaml_file, read(key).await).unwrap();
    assert_cfn_lint_clean(&yaml_file);

    // An unreadable user-data object is refused naming it, and the template stays as it was.
    launch("scripts/missing.sh").await.unwrap();
    let (code, message) = code_and_message(
        c.generate_template()
            .app_id(&app_id)
            .template_format(OutputFormat::Json)
            .send()
            .await,
    );
    assert_eq!(code, "InvalidParameterException");
    assert!(
        message.contains("scripts/missing.sh") && message.contains(&s[2]),
        "{message}"
    );
    assert_eq!(
        read(format!("apps/{app_id}/template.json")).await,
        json_bytes
    );

    // Before a launch: no change set, nothing to terminate.
    launch("scripts/db-user-data.sh").await.unwrap();
    let (code, message) = code_and_message(c.generate_change_set().app_id(&app_id).send().await);
    assert_eq!(code, "InvalidParameterException");
    assert!(message.contains("has not been launched"), "{message}");
    let (code, message) = code_and_message(c.terminate_app().app_id(&app_id).send().await);
    assert_eq!(code, "OperationNotPermittedException");
    assert!(message.contains("has not been launched"), "{message}");

    // LaunchApp on tern serve: every instance a QEMU guest (the boot kit's QEMU, TCG), the
    // database first, then the app tier, then the web tier.
    c.launch_app().app_id(&app_id).send().await.unwrap();
    let summary = launch_status_becomes(c, &app_id, "LAUNCHED").await;
    let details = summary.launch_details().unwrap();
    let stack_id = details.stack_id().unwrap();
    assert!(details.stack_name().unwrap().starts_with("sms-app-"));
    assert!(
        stack_id.contains(&format!(":stack/{}/", details.stack_name().unwrap())),
        "{stack_id}"
    );
    let stacks = tern_local::launcher::list(server_.data_dir()).unwrap();
    assert_eq!(stacks.len(), 1);
    assert_eq!(stacks[0].stack_id, stack_id);
    let by = |l: &str| {
        stacks[0]
            .instances
            .iter()
            .find(|i| i.logical_id == l)
            .unwrap()
            .clone()
    };
    let (db, mid, web) = (by("Database"), by(&app_logical), by("Web"));
    assert_eq!(
        (db.launch_level, mid.launch_level, web.launch_level),
        (0, 1, 2)
    );
    for i in [&db, &mid, &web] {
        assert!(
            i.running(),
            "{} ({}) is not running",
            i.logical_id,
            i.instance_id
        );
        assert_eq!(i.accel.as_deref(), Some("TCG"));
    }
    // m5.large has 8 GiB; the guest gets tern serve's cap and its record says so.
    assert_eq!(
        (db.instance_type.as_str(), db.memory_mib),
        ("m5.large", 2048)
    );
    assert!(
        db.size_note
            .as_deref()
            .is_some_and(|n| n.contains("8192 MiB")),
        "{db:?}"
    );
    assert_eq!(
        (
            web.instance_type.as_str(),
            web.memory_mib,
            web.size_note.as_deref()
        ),
        ("t3.small", 2048, None)
    );
    let seed = std::fs::read_to_string(db.dir.join("seed/user-data")).unwrap();
    assert!(
        seed.contains("echo db-user-data") && seed.contains("echo db-configure"),
        "{seed}"
    );
    let (code, message) = code_and_message(c.launch_app().app_id(&app_id).send().await);
    assert_eq!(code, "OperationNotPermittedException");
    assert!(message.contains("already launched"), "{message}");

    // TerminateApp stops every guest and removes its disks.
    c.terminate_app().app_id(&app_id).send().await.unwrap();
    launch_status_becomes(c, &app_id, "TERMINATED").await;
    for i in [&db, &mid, &web] {
        assert!(!i.running(), "{} still runs", i.instance_id);
        assert!(!i.dir.join("disk0.qcow2").exists());
    }

    // Each launch status and each validation report was announced once, as "Server Migration
    // App State Change" (published by the next tick on tern serve).
    server_.tick().await;
    let text = std::fs::read_to_string(server_.data_dir().join("events.ndjson")).unwrap();
    let app_events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["detail-type"] == "Server Migration App State Change")
        .filter(|e| e["detail"]["app-id"] == app_id.as_str())
        .collect();
    let launch: Vec<&str> = app_events
        .iter()
        .filter(|e| e["detail"]["state-type"] == "launch")
        .map(|e| e["detail"]["state"].as_str().unwrap())
        .collect();
    let mut sorted = launch.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        launch.len(),
        "an event announced twice: {launch:?}"
    );
    for want in [
        "LAUNCH_PENDING",
        "LAUNCH_IN_PROGRESS",
        "LAUNCHED",
        "TERMINATE_IN_PROGRESS",
        "TERMINATED",
    ] {
        assert!(launch.contains(&want), "no {want} event: {launch:?}");
    }
    let launched = app_events
        .iter()
        .find(|e| e["detail"]["state"] == "LAUNCHED")
        .unwrap();
    assert_eq!(launched["detail"]["stack-id"], stack_id);
    assert_eq!(launched["detail"]["app-name"], "shop");
    assert!(
        app_events
            .iter()
            .any(|e| e["detail"]["state-type"] == "validation"
                && e["detail"]["validation-id"].is_string()),
        "no validation event: {app_events:?}"
    );

    c.delete_app()
        .app_id(&app_id)
        .force_stop_app_replication(true)
        .send()
        .await
        .unwrap();
    server_.shutdown().await;
}

#[tokio::test]
async fn import_app_catalog_makes_the_connectors_applications() {
    let server_ = TestServer::start().await;
    let c = &server_.client;
    let mut toml = crate::apps::inventory(&server_, 3);
    toml.push_str("\n[[applications]]\nname = \"crm\"\nvms = [\"app0\", \"app2\"]\n");
    let mut agent = server_.connector_agent("apps", &toml).await;
    agent.run_once().await.unwrap();
    c.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();

    c.import_app_catalog()
        .role_name("sms-import")
        .send()
        .await
        .unwrap();
    let apps = c.list_apps().send().await.unwrap();
    assert_eq!(apps.apps().len(), 1);
    let a = &apps.apps()[0];
    assert_eq!(a.imported_app_id(), Some("crm"));
    assert_eq!(a.name(), Some("crm"));
    assert_eq!(a.total_servers(), Some(2));
    let app = c
        .get_app()
        .app_id(a.app_id().unwrap())
        .send()
        .await
        .unwrap();
    let mut names: Vec<&str> = app.server_groups()[0]
        .server_list()
        .iter()
        .filter_map(|s| s.vm_server().and_then(|v| v.vm_name()))
        .collect();
    names.sort();
    assert_eq!(names, ["app0", "app2"]);
    // Not editable; a second import adds nothing.
    let (code, message) = code_and_message(
        c.update_app()
            .app_id(a.app_id().unwrap())
            .name("other")
            .send()
            .await,
    );
    assert_eq!(code, "OperationNotPermittedException");
    assert!(message.contains("ImportAppCatalog"), "{message}");
    c.import_app_catalog().send().await.unwrap();
    assert_eq!(c.list_apps().send().await.unwrap().apps().len(), 1);
    server_.shutdown().await;
}

/// A migrated UEFI server boots. Its boot disk holds an EFI System Partition with GRUB for UEFI,
/// the boot kit's kernel and initramfs: the catalog's inspection finds the partition, the run's
/// AMI is a UEFI image, and LaunchApp runs it under OVMF, where GRUB boots Linux from the
/// migrated disk and the initramfs's `/init` prints its marker on the console.
#[tokio::test]
async fn a_migrated_uefi_server_launches_under_ovmf_and_boots_linux() {
    let kit = tern_local::guest::BootKit::find(None)
        .unwrap()
        .expect("the boot kit (scripts/boot-kit.sh, run by .ci/run)");
    let grub_efi = kit
        .grub_efi
        .clone()
        .expect("the boot kit predates UEFI support: run scripts/boot-kit.sh again");
    let server_ = TestServer::start().await;
    let c = &server_.client;
    let disk = server_.scratch().join("efi-vm0.raw");
    tern_test_support::uefi::esp_disk(
        &disk,
        &grub_efi,
        "linux /vmlinuz console=ttyS0 panic=-1 quiet\ninitrd /initrd.img\nboot\n",
        &[("vmlinuz", &kit.kernel), ("initrd.img", &kit.initrd)],
        24,
    );
    let inventory = format!(
        "vm_manager_id = \"vc-efi\"\nvm_manager_type = \"VSPHERE\"\n\n[[vms]]\nid = \"vm-0\"\nname = \"efi0\"\nos_type = \"LINUX\"\ndisks = [{:?}]\n",
        disk.display().to_string()
    );
    let mut agent = server_.connector_agent("efi", &inventory).await;
    agent.run_once().await.unwrap();
    c.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();
    let servers = c.get_servers().send().await.unwrap();
    let sid = servers.server_list()[0].server_id().unwrap().to_string();

    let created = c
        .create_app()
        .name("efi")
        .server_groups(group("all", &[&sid]))
        .send()
        .await
        .unwrap();
    let app_id = created.app_summary().unwrap().app_id().unwrap().to_string();
    let gid = created.server_groups()[0]
        .server_group_id()
        .unwrap()
        .to_string();
    replicate(&server_, &agent, &app_id, &[(&gid, &sid)]).await;
    let jobs = c.get_replication_jobs().send().await.unwrap();
    let ami = jobs.replication_job_list()[0]
        .latest_ami_id()
        .unwrap()
        .to_string();
    let image = tern_local::images::ImageCatalog::open(server_.data_dir())
        .unwrap()
        .describe_image(&ami)
        .unwrap();
    assert_eq!(image.boot_mode, tern_core::images::BootMode::Uefi);

    c.put_app_launch_configuration()
        .app_id(&app_id)
        .role_name("sms-launch")
        .server_group_launch_configurations(
            ServerGroupLaunchConfiguration::builder()
                .server_group_id(&gid)
                .launch_order(1)
                .server_launch_configurations(
                    ServerLaunchConfiguration::builder()
                        .server(server(&sid))
                        .logical_id("Efi")
                        .instance_type("t3.small")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    c.launch_app().app_id(&app_id).send().await.unwrap();
    launch_status_becomes(c, &app_id, "LAUNCHED").await;
    let instance = tern_local::launcher::list(server_.data_dir()).unwrap()[0].instances[0].clone();
    assert!(instance.uefi.is_some(), "{instance:?}");
    let console = poll::until(Duration::from_secs(120), Duration::from_millis(200), || {
        std::fs::read_to_string(instance.console())
            .ok()
            .filter(|text| text.contains("TERN-BOOT-MARKER"))
    });
    assert!(
        console.is_some(),
        "Linux did not boot from the migrated ESP: {}",
        std::fs::read_to_string(instance.console()).unwrap_or_default()
    );
    c.terminate_app().app_id(&app_id).send().await.unwrap();
    launch_status_becomes(c, &app_id, "TERMINATED").await;
    assert!(!instance.running());
}
