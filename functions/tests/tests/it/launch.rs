//! LaunchApp and TerminateApp through the `api` Lambda's handler, wired as the function wires
//! itself (`tern_fn_api::deployment_api`), with the table, the staging bucket, EC2 and
//! CloudFormation on moto: a connector's inventory, an application of two groups, its
//! replication jobs with an AMI each, a launch configuration with user data in the staging
//! bucket; LaunchApp creates the stack `sms-app-<id>` as the launch role, GetApp follows it to
//! LAUNCHED with the instances running from the AMIs; TerminateApp deletes it, GetApp follows
//! it to TERMINATED with the instances terminated; a second launch is a new stack. The
//! scheduler Lambda's tick launches an `autoLaunch` application once, with the same launcher.
//!
//! moto's CloudFormation finishes a stack within CreateStack; a real one takes minutes. So the
//! launcher is wrapped to answer "in progress" for the first two looks after each create and
//! delete, as a real stack would: GetApp must follow the stack to its end by itself, and a
//! look that fails (CloudFormation out of reach) leaves GetApp answering the recorded status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tern_core::launcher::{LaunchError, Launcher, StackState};

use serde_json::{json, Value};
use tern_core::service::RunUpdate;
use tern_core::states::RunEvent;
use tern_fn_api::{deployment_api, Handler};

use crate::{Stack, ACCOUNT};

const SMS: &str = "AWSServerMigrationService_V2016_10_24";
const CONNECTOR: &str = "TernConnectorService_V1";

/// One API Gateway request from the `events/api` fixture `base` (which carries the caller's
/// IAM identity), with `target` and `body` in place of the fixture's.
fn request(base: &str, target: &str, body: &Value) -> lambda_http::Request {
    let mut event = crate::fixture(&format!("api/{base}"));
    let text = body.to_string();
    event["headers"]["x-amz-target"] = json!(target);
    event["headers"]["content-length"] = json!(text.len().to_string());
    event["body"] = json!(text);
    lambda_http::request::from_str(&event.to_string()).expect("an API Gateway v2 event")
}

async fn call(h: &Handler, base: &str, target: String, body: Value) -> (u16, Value) {
    let response = h.handle(request(base, &target, &body)).await;
    let status = response.status().as_u16();
    let v = serde_json::from_slice(response.body().as_ref()).expect("a JSON body");
    (status, v)
}

async fn admin(h: &Handler, op: &str, body: Value) -> Value {
    let (status, v) = call(h, "admin-get-connectors.json", format!("{SMS}.{op}"), body).await;
    assert_eq!(status, 200, "{op}: {v}");
    v
}

async fn connector(h: &Handler, op: &str, body: Value) -> Value {
    let (status, v) = call(
        h,
        "connector-register.json",
        format!("{CONNECTOR}.{op}"),
        body,
    )
    .await;
    assert_eq!(status, 200, "{op}: {v}");
    v
}

/// The deployment's launcher, with stacks that take two looks to settle after each create
/// and delete; counts the looks.
struct Settling {
    inner: Arc<dyn Launcher>,
    /// (looks still answered "in progress", the state they answer).
    pending: Mutex<(u32, StackState)>,
    looks: AtomicU32,
    /// The next look fails as CloudFormation out of reach would.
    fail_next: AtomicBool,
}

impl Settling {
    fn settle_after(&self, looks: u32, meanwhile: StackState) {
        *self.pending.lock().unwrap() = (looks, meanwhile);
    }
}

#[async_trait]
impl Launcher for Settling {
    async fn check(&self) -> Result<(), LaunchError> {
        self.inner.check().await
    }

    async fn create_stack(
        &self,
        stack_name: &str,
        template: &Value,
        role_name: Option<&str>,
    ) -> Result<String, LaunchError> {
        let id = self
            .inner
            .create_stack(stack_name, template, role_name)
            .await?;
        self.settle_after(2, StackState::CreateInProgress);
        Ok(id)
    }

    async fn stack_state(&self, stack_id: &str) -> Result<StackState, LaunchError> {
        self.looks.fetch_add(1, Ordering::SeqCst);
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(LaunchError::Transient(
                "CloudFormation DescribeStacks: dispatch failure".into(),
            ));
        }
        {
            let mut pending = self.pending.lock().unwrap();
            if pending.0 > 0 {
                pending.0 -= 1;
                return Ok(pending.1.clone());
            }
        }
        self.inner.stack_state(stack_id).await
    }

    async fn delete_stack(&self, stack_id: &str) -> Result<(), LaunchError> {
        self.inner.delete_stack(stack_id).await?;
        self.settle_after(2, StackState::DeleteInProgress);
        Ok(())
    }

    async fn console_output(
        &self,
        stack_id: &str,
        logical_id: &str,
    ) -> Result<Option<String>, LaunchError> {
        self.inner.console_output(stack_id, logical_id).await
    }

    fn carries_scripts(&self) -> bool {
        self.inner.carries_scripts()
    }

    async fn send_command(
        &self,
        req: &tern_core::launcher::CommandRequest,
    ) -> Result<String, LaunchError> {
        self.inner.send_command(req).await
    }

    async fn command_status(
        &self,
        command_id: &str,
        instance_id: &str,
    ) -> Result<tern_core::launcher::CommandStatus, LaunchError> {
        self.inner.command_status(command_id, instance_id).await
    }
}

/// An AMI over a snapshot, as a replication run registers one.
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
    let device = aws_sdk_ec2::types::BlockDeviceMapping::builder()
        .device_name("/dev/sda1")
        .ebs(
            aws_sdk_ec2::types::EbsBlockDevice::builder()
                .snapshot_id(snapshot)
                .build(),
        )
        .build();
    ec2.register_image()
        .name(name)
        .root_device_name("/dev/sda1")
        .block_device_mappings(device)
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap()
}

/// (logical id, image, state) of the instances of `stack_id`.
async fn instances(ec2: &aws_sdk_ec2::Client, stack_id: &str) -> Vec<(String, String, String)> {
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
    let mut found: Vec<(String, String, String)> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            let logical = i
                .tags()
                .iter()
                .find(|t| t.key() == Some("aws:cloudformation:logical-id"))
                .and_then(|t| t.value())
                .unwrap_or_default();
            (
                logical.to_owned(),
                i.image_id().unwrap_or_default().to_owned(),
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    found.sort();
    found
}

/// `text` decoded from base64 (EC2 answers user data encoded), or empty.
fn decoded(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// What a launch needs, made through the handler: two VMs in the catalog, the application
/// `shop` (group db: the database, group web: the web server), its replication with a completed
/// run and an AMI per server, and a launch configuration (launch role `sms-launch`, the
/// database first, the web server with user data from the staging bucket) asking for
/// `autoLaunch` or not. Answers the application id and the AMI of each server id, and the
/// (database, web) server ids.
async fn replicated_app(
    stack: &Stack,
    h: &Handler,
    auto_launch: bool,
) -> (String, HashMap<String, String>, String, String) {
    let ec2 = aws_sdk_ec2::Client::new(&stack.aws);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&stack.aws)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket("tern-staging")
        .send()
        .await
        .unwrap();
    for (key, body) in [
        ("scripts/web.sh", "#!/bin/sh\necho web\n"),
        (
            "scripts/web-check.sh",
            "#!/bin/sh\ncurl -fs http://localhost/\n",
        ),
        ("scripts/smoke.sh", "#!/bin/sh\ncurl -fs http://web/\n"),
    ] {
        s3.put_object()
            .bucket("tern-staging")
            .key(key)
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }
    // The catalog: two VMs reported by a connector.
    let registered = connector(
        h,
        "RegisterConnector",
        json!({"name": "lab", "version": "1.0.0", "vmManagerId": "vc-1", "vmManagerType": "VSPHERE"}),
    )
    .await;
    let c = registered["connectorId"].as_str().unwrap().to_owned();
    admin(h, "ImportServerCatalog", json!({})).await;
    let work = connector(h, "PollWork", json!({"connectorId": c})).await;
    let request_id = work["workItems"][0]["payload"]["requestId"].clone();
    let vms: Vec<Value> = ["db", "web"]
        .iter()
        .map(|n| {
            json!({"vmId": format!("vm-{n}"), "vmName": n, "osType": "LINUX",
                   "disks": [{"path": format!("/d/{n}.raw"), "format": "raw", "sizeBytes": 1048576}]})
        })
        .collect();
    connector(
        h,
        "ReportInventory",
        json!({"connectorId": c, "requestId": request_id, "vmList": vms}),
    )
    .await;
    let servers = admin(h, "GetServers", json!({})).await["serverList"].clone();
    let server = |vm: &str| {
        servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vmServer"]["vmServerAddress"]["vmId"] == vm)
            .and_then(|s| s["serverId"].as_str())
            .unwrap_or_else(|| panic!("no server for {vm}: {servers}"))
            .to_owned()
    };
    let (db, web) = (server("vm-db"), server("vm-web"));

    // The application, replicated: one job per server, each with a completed run's AMI.
    let app = admin(
        h,
        "CreateApp",
        json!({"name": "shop", "serverGroups": [
            {"name": "db", "serverList": [{"serverId": db}]},
            {"name": "web", "serverList": [{"serverId": web}]}]}),
    )
    .await;
    let app_id = app["appSummary"]["appId"].as_str().unwrap().to_owned();
    let group = |i: usize| {
        app["serverGroups"][i]["serverGroupId"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (db_group, web_group) = (group(0), group(1));
    let tomorrow = time::OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    let params = json!({"seedTime": tomorrow, "frequency": 12, "licenseType": "BYOL"});
    admin(
        h,
        "PutAppReplicationConfiguration",
        json!({"appId": app_id, "serverGroupReplicationConfigurations": [
            {"serverGroupId": db_group, "serverReplicationConfigurations": [
                {"server": {"serverId": db}, "serverReplicationParameters": params}]},
            {"serverGroupId": web_group, "serverReplicationConfigurations": [
                {"server": {"serverId": web}, "serverReplicationParameters": params}]}]}),
    )
    .await;
    admin(h, "StartAppReplication", json!({"appId": app_id})).await;
    let jobs = admin(h, "GetReplicationJobs", json!({})).await["replicationJobList"].clone();
    let mut amis = HashMap::new();
    for j in jobs.as_array().unwrap() {
        let job = j["replicationJobId"].as_str().unwrap();
        let server_id = j["serverId"].as_str().unwrap().to_owned();
        let ami = register_ami(&ec2, &format!("tern-{server_id}")).await;
        let run = admin(
            h,
            "StartOnDemandReplicationRun",
            json!({"replicationJobId": job}),
        )
        .await["replicationRunId"]
            .as_str()
            .unwrap()
            .to_owned();
        let update = |event, ami_id: Option<String>| RunUpdate {
            event,
            stage_details: None,
            status_message: None,
            ami_id,
            snapshot_ids: Vec::new(),
        };
        let svc = &stack.deployment.service;
        svc.record_run(job, &run, update(RunEvent::Start, None))
            .await
            .unwrap();
        svc.record_run(job, &run, update(RunEvent::Complete, Some(ami.clone())))
            .await
            .unwrap();
        amis.insert(server_id, ami);
    }
    assert_eq!(amis.len(), 2, "{jobs}");

    // The launch configuration: the database first, the web tier with user data after it.
    admin(
        h,
        "PutAppLaunchConfiguration",
        json!({"appId": app_id, "roleName": "sms-launch", "autoLaunch": auto_launch,
            "serverGroupLaunchConfigurations": [
                {"serverGroupId": db_group, "launchOrder": 1, "serverLaunchConfigurations": [
                    {"server": {"serverId": db}, "logicalId": "Database", "instanceType": "t3.medium"}]},
                {"serverGroupId": web_group, "launchOrder": 2, "serverLaunchConfigurations": [
                    {"server": {"serverId": web}, "logicalId": "Web",
                     "userData": {"s3Location": {"bucket": "tern-staging", "key": "scripts/web.sh"}}}]}]}),
    )
    .await;

    (app_id, amis, db, web)
}

#[tokio::test]
async fn launch_app_and_terminate_app_through_the_api_handler_on_cloudformation() {
    let Some(stack) = Stack::start("LaunchApp / TerminateApp through the api Lambda").await else {
        return;
    };
    let ec2 = aws_sdk_ec2::Client::new(&stack.aws);
    let settling = Arc::new(Settling {
        inner: stack.deployment.launcher.clone(),
        pending: Mutex::new((0, StackState::CreateInProgress)),
        looks: AtomicU32::new(0),
        fail_next: AtomicBool::new(false),
    });
    let mut deployment = stack.deployment.clone();
    deployment.launcher = settling.clone();
    let h = Handler::new(deployment_api(&deployment), "TernConnector");

    let (app_id, amis, db, web) = replicated_app(&stack, &h, false).await;

    // LaunchApp: the stack exists and, on moto, is complete by the time GetApp asks.
    let started = Instant::now();
    admin(&h, "LaunchApp", json!({"appId": app_id})).await;
    let launch_status = |v: &Value| v["appSummary"]["launchStatus"].clone();
    let got = admin(&h, "GetApp", json!({"appId": app_id})).await;
    assert_eq!(launch_status(&got), "LAUNCH_IN_PROGRESS", "{got}");
    // CloudFormation out of reach: GetApp still answers, with the status recorded.
    settling.fail_next.store(true, Ordering::SeqCst);
    let got = admin(&h, "GetApp", json!({"appId": app_id})).await;
    assert_eq!(launch_status(&got), "LAUNCH_IN_PROGRESS", "{got}");
    let got = admin(&h, "GetApp", json!({"appId": app_id})).await;
    let took = started.elapsed();
    // LaunchApp looked once, each GetApp once; a launched application is not looked at again.
    assert_eq!(settling.looks.load(Ordering::SeqCst), 4);
    admin(&h, "GetApp", json!({"appId": app_id})).await;
    assert_eq!(settling.looks.load(Ordering::SeqCst), 4);
    let summary = &got["appSummary"];
    assert_eq!(summary["launchStatus"], "LAUNCHED", "{summary}");
    let details = &summary["launchDetails"];
    let stack_name = format!("sms-app-{}", app_id.trim_start_matches("app-"));
    assert_eq!(details["stackName"], json!(stack_name), "{details}");
    let stack_id = details["stackId"].as_str().unwrap().to_owned();
    assert!(
        stack_id.starts_with(&format!(
            "arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/{stack_name}/"
        )),
        "{stack_id}"
    );
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!("LaunchApp to LAUNCHED through the api handler on moto: {took:?}\n"),
    );

    // A USERDATA validation of the web server is read from its instance's console (DescribeStack
    // Resource, then EC2 GetConsoleOutput): moto's sample console shows no markers of it, so it
    // is PENDING (the console was read), not READY_FOR_VALIDATION.
    let app = admin(&h, "GetApp", json!({"appId": app_id})).await;
    let web_group = app["serverGroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["serverList"][0]["serverId"] == web.as_str())
        .and_then(|g| g["serverGroupId"].as_str())
        .unwrap()
        .to_owned();
    admin(
        &h,
        "PutAppValidationConfiguration",
        json!({"appId": app_id, "serverGroupValidationConfigurations": [
            {"serverGroupId": web_group, "serverValidationConfigurations": [
                {"server": {"serverId": web}, "name": "web-up", "serverValidationStrategy": "USERDATA",
                 "userDataValidationParameters": {"scriptType": "SHELL_SCRIPT",
                     "source": {"s3Location": {"bucket": "tern-staging", "key": "scripts/web-check.sh"}}}}]}]}),
    )
    .await;
    let out = admin(&h, "GetAppValidationOutput", json!({"appId": app_id})).await;
    let v = &out["validationOutputList"][0];
    assert_eq!(v["status"], "PENDING", "{out}");
    assert!(
        v["statusMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("waiting for the instance"),
        "{out}"
    );

    // An app-level SSM validation on the database's instance (SSM Run Command on moto). Untagged,
    // the instance is refused naming the tag; tagged, and the validation put again (changed), the
    // script is sent once and SUCCEEDED (moto runs every command successfully), its output in
    // the output bucket under the validation's prefix.
    let db_instance = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:tern:serverId")
                .values(&db)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.instance_id().map(str::to_owned))
        .expect("the database server's instance");
    let config = |name: &str| {
        json!({"appId": app_id, "appValidationConfigurations": [
            {"name": name, "appValidationStrategy": "SSM", "ssmValidationParameters": {
                "instanceId": db_instance, "scriptType": "SHELL_SCRIPT", "command": "sh smoke.sh",
                "executionTimeoutSeconds": 300, "outputS3BucketName": "sms-app-output",
                "source": {"s3Location": {"bucket": "tern-staging", "key": "scripts/smoke.sh"}}}}]})
    };
    admin(&h, "PutAppValidationConfiguration", config("smoke")).await;
    let out = admin(&h, "GetAppValidationOutput", json!({"appId": app_id})).await;
    let v = &out["validationOutputList"][0];
    assert_eq!(v["status"], "FAILED", "{out}");
    assert!(
        v["statusMessage"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!(
                "{db_instance} does not carry the tag UserForSMSApplicationValidation=true"
            )),
        "{out}"
    );
    ec2.create_tags()
        .resources(&db_instance)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("UserForSMSApplicationValidation")
                .value("true")
                .build(),
        )
        .send()
        .await
        .unwrap();
    admin(&h, "PutAppValidationConfiguration", config("smoke-again")).await;
    let out = admin(&h, "GetAppValidationOutput", json!({"appId": app_id})).await;
    let v = &out["validationOutputList"][0];
    assert_eq!(v["status"], "IN_PROGRESS", "{out}");
    let validation_id = v["validationId"].as_str().unwrap().to_owned();
    let out = admin(&h, "GetAppValidationOutput", json!({"appId": app_id})).await;
    let v = &out["validationOutputList"][0];
    assert_eq!(v["status"], "SUCCEEDED", "{out}");
    let location = &v["appValidationOutput"]["ssmOutput"]["s3Location"];
    assert_eq!(location["bucket"], "sms-app-output", "{out}");
    let key = location["key"].as_str().unwrap();
    assert!(
        key.starts_with(&format!("{app_id}/{validation_id}/")) && key.ends_with(&db_instance),
        "{key}"
    );
    let ssm = aws_sdk_ssm::Client::new(&stack.aws);
    let commands = ssm.list_commands().send().await.unwrap();
    let sent = commands.commands();
    assert_eq!(sent.len(), 1, "one command for the tagged instance");
    assert_eq!(sent[0].document_name(), Some("AWS-RunRemoteScript"));
    // moto adds every instance of the region to a command sent without Targets (its
    // _get_instance_ids_from_targets with no filters); the request named the tagged one.
    assert!(sent[0].instance_ids().contains(&db_instance), "{sent:?}");
    let params = sent[0].parameters().unwrap();
    assert_eq!(params["commandLine"], ["sh smoke.sh"]);
    assert_eq!(params["executionTimeout"], ["300"]);
    assert!(
        params["sourceInfo"][0].ends_with("/tern-staging/scripts/smoke.sh\"}"),
        "{params:?}"
    );

    // CloudFormation ran it as the launch role, tagged as this deployment's.
    let cfn = aws_sdk_cloudformation::Client::new(&stack.aws);
    let described = cfn
        .describe_stacks()
        .stack_name(&stack_id)
        .send()
        .await
        .unwrap();
    let s = &described.stacks()[0];
    assert_eq!(
        s.role_arn(),
        Some(format!("arn:aws:iam::{ACCOUNT}:role/sms-launch").as_str())
    );
    assert!(
        s.tags()
            .iter()
            .any(|t| t.key() == Some("tern:managed-by") && t.value() == Some("tern:tern")),
        "{:?}",
        s.tags()
    );
    assert!(
        s.outputs()
            .iter()
            .any(|o| o.output_key() == Some("WebPrivateIp") && o.output_value().is_some()),
        "{:?}",
        s.outputs()
    );
    assert_eq!(
        instances(&ec2, &stack_id).await,
        vec![
            ("Database".into(), amis[&db].clone(), "running".into()),
            ("Web".into(), amis[&web].clone(), "running".into()),
        ]
    );

    // The template CloudFormation was given, for the README's size figures.
    let body = cfn
        .get_template()
        .stack_name(&stack_id)
        .send()
        .await
        .unwrap()
        .template_body
        .unwrap_or_default();
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!(
            "template of 2 servers (one with 20 bytes of user data): {} bytes\n",
            body.len()
        ),
    );
    assert!(body.contains(&amis[&db]), "{body}");

    // The web server's user data is the object the launch configuration named.
    let web_instance = cfn
        .describe_stack_resource()
        .stack_name(&stack_id)
        .logical_resource_id("Web")
        .send()
        .await
        .unwrap()
        .stack_resource_detail
        .and_then(|r| r.physical_resource_id)
        .unwrap();
    let user_data = ec2
        .describe_instance_attribute()
        .instance_id(&web_instance)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap()
        .user_data
        .and_then(|u| u.value)
        .unwrap_or_default();
    assert_eq!(
        decoded(&user_data),
        "#!/bin/sh\necho web\n",
        "{user_data:?}"
    );

    // A second LaunchApp while launched is refused, naming the status.
    let (status, refused) = call(
        &h,
        "admin-get-connectors.json",
        format!("{SMS}.LaunchApp"),
        json!({"appId": app_id}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("already launched")),
        "{refused}"
    );

    // TerminateApp: the stack is deleted and its instances terminated.
    admin(&h, "TerminateApp", json!({"appId": app_id})).await;
    let got = admin(&h, "GetApp", json!({"appId": app_id})).await;
    assert_eq!(launch_status(&got), "TERMINATE_IN_PROGRESS", "{got}");
    let got = admin(&h, "GetApp", json!({"appId": app_id})).await;
    assert_eq!(got["appSummary"]["launchStatus"], "TERMINATED", "{got}");
    let after = instances(&ec2, &stack_id).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|i| i.2 == "terminated"), "{after:?}");
    let (status, again) = call(
        &h,
        "admin-get-connectors.json",
        format!("{SMS}.TerminateApp"),
        json!({"appId": app_id}),
    )
    .await;
    assert_eq!(status, 400, "{again}");

    // Launched again: a new stack of the same name.
    admin(&h, "LaunchApp", json!({"appId": app_id})).await;
    admin(&h, "GetApp", json!({"appId": app_id})).await;
    let got = admin(&h, "GetApp", json!({"appId": app_id})).await;
    assert_eq!(got["appSummary"]["launchStatus"], "LAUNCHED", "{got}");
    let second = got["appSummary"]["launchDetails"]["stackId"]
        .as_str()
        .unwrap();
    assert_ne!(second, stack_id);
    assert_eq!(instances(&ec2, second).await.len(), 2);
}

#[tokio::test]
async fn the_scheduler_lambda_auto_launches_a_replicated_application_once() {
    let Some(stack) = Stack::start("autoLaunch through the scheduler Lambda").await else {
        return;
    };
    let h = Handler::new(deployment_api(&stack.deployment), "TernConnector");
    let (app_id, amis, db, web) = replicated_app(&stack, &h, true).await;
    let got = admin(&h, "GetApp", json!({"appId": app_id})).await;
    assert_eq!(
        got["appSummary"]["replicationStatus"], "REPLICATED",
        "{got}"
    );
    assert_eq!(
        got["appSummary"]["launchStatus"], "READY_FOR_LAUNCH",
        "{got}"
    );

    // The tick, as the every-minute schedule invokes the scheduler function.
    let tick = tern_fn_scheduler::handle(&stack.deployment.replication)
        .await
        .expect("tick");
    assert_eq!(tick["appsLaunched"], json!([app_id]), "{tick}");
    let got = admin(&h, "GetApp", json!({"appId": app_id})).await;
    assert_eq!(got["appSummary"]["launchStatus"], "LAUNCHED", "{got}");
    let stack_id = got["appSummary"]["launchDetails"]["stackId"]
        .as_str()
        .unwrap()
        .to_owned();
    let ec2 = aws_sdk_ec2::Client::new(&stack.aws);
    assert_eq!(
        instances(&ec2, &stack_id).await,
        vec![
            ("Database".into(), amis[&db].clone(), "running".into()),
            ("Web".into(), amis[&web].clone(), "running".into()),
        ]
    );

    // Once: later ticks launch nothing more, and a terminated application stays terminated.
    let tick = tern_fn_scheduler::handle(&stack.deployment.replication)
        .await
        .expect("tick");
    assert_eq!(tick["appsLaunched"], json!([]), "{tick}");
    admin(&h, "TerminateApp", json!({"appId": app_id})).await;
    let tick = tern_fn_scheduler::handle(&stack.deployment.replication)
        .await
        .expect("tick");
    assert_eq!(tick["appsLaunched"], json!([]), "{tick}");
    let got = admin(&h, "GetApp", json!({"appId": app_id})).await;
    assert_eq!(got["appSummary"]["launchStatus"], "TERMINATED", "{got}");
    let stacks = aws_sdk_cloudformation::Client::new(&stack.aws)
        .list_stacks()
        .send()
        .await
        .unwrap();
    assert_eq!(stacks.stack_summaries().len(), 1, "{stacks:?}");
}
