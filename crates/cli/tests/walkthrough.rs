//! The CLI walk-through, end to end with the real `tern` binary: `tern connector run` answers
//! the inventory request and `tern sms ...` drives the catalog and a replication job against an
//! in-process `tern serve`, reading endpoint and keys the way any AWS client does.

// `tern demo`, the same walk-through packed into one command.
mod demo;
// `tern sms` with the AWS CLI's habits: output formats, --query, pagination, input JSON, exit codes.
mod habits;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tern_acceptance::{inventory_toml, now_secs, TestServer, REGION};
use tern_test_support::poll::until_async;
use tokio::process::Command;

/// A `tern` command with the AWS settings a user would export, and nothing from this machine.
fn tern(server: &TestServer) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL_SMS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_SHARED_CREDENTIALS_FILE", server.credentials_file())
        .env("AWS_CONFIG_FILE", server.scratch().join("no-aws-config"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", REGION)
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    cmd
}

async fn run(server: &TestServer, args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(60), tern(server).args(args).output())
        .await
        .unwrap_or_else(|_| panic!("tern {args:?} timed out"))
        .expect("tern runs")
}

/// Runs `tern ARGS`, expects success, returns stdout as JSON (Null when empty).
async fn ok(server: &TestServer, args: &[&str]) -> Value {
    let out = run(server, args).await;
    assert!(
        out.status.success(),
        "tern {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tern {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} in {v}"))
}

fn config_arg(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_walkthrough() {
    let server = TestServer::start().await;
    let config = server.write_connector_config("lab", &inventory_toml("vc-test", 2));
    let config = config_arg(&config);

    // The connector registers (nothing to do yet).
    let first = ok(
        &server,
        &["connector", "run", "--config", &config, "--once"],
    )
    .await;
    let connector_id = str_of(&first, "/connectorId").to_owned();
    assert_eq!(first["workItems"], 0);

    // get-connectors, with the endpoint given as an option instead of the environment.
    let out = tern(&server)
        .env_remove("AWS_ENDPOINT_URL")
        .args([
            "sms",
            "get-connectors",
            "--endpoint-url",
            &server.endpoint(),
            "--profile",
            "default",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let connectors: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        str_of(&connectors, "/connectorList/0/connectorId"),
        connector_id
    );
    assert_eq!(str_of(&connectors, "/connectorList/0/status"), "HEALTHY");
    assert!(connectors["connectorList"][0]["associatedOn"].is_number());

    // import-server-catalog prints nothing; the connector answers on its next poll.
    assert_eq!(
        ok(&server, &["sms", "import-server-catalog"]).await,
        Value::Null
    );
    let answered = ok(
        &server,
        &["connector", "run", "--config", &config, "--once"],
    )
    .await;
    assert_eq!(
        answered["connectorId"],
        connector_id.as_str(),
        "same connector after a restart"
    );
    assert_eq!(answered["inventoriesReported"], 1);
    assert_eq!(answered["vmsReported"], 2);

    let servers = ok(&server, &["sms", "get-servers"]).await;
    assert_eq!(servers["serverCatalogStatus"], "AVAILABLE");
    assert!(servers["lastModifiedOn"].is_number());
    assert_eq!(servers["serverList"].as_array().unwrap().len(), 2);
    let filtered = ok(
        &server,
        &[
            "sms",
            "get-servers",
            "--vm-server-address-list",
            "vmManagerId=vc-test,vmId=vm-1",
        ],
    )
    .await;
    let [web1] = filtered["serverList"].as_array().unwrap().as_slice() else {
        panic!("one server: {filtered}")
    };
    assert_eq!(str_of(web1, "/vmServer/vmName"), "web1");
    let server_id = str_of(web1, "/serverId").to_owned();

    // create-replication-job with an ISO 8601 seed time, read back as epoch seconds.
    let seed = (now_secs() + 3600) / 60 * 60;
    let seed_iso = time::OffsetDateTime::from_unix_timestamp(seed)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created = ok(
        &server,
        &[
            "sms",
            "create-replication-job",
            "--server-id",
            &server_id,
            "--frequency",
            "12",
            "--seed-replication-time",
            &seed_iso,
            "--license-type",
            "BYOL",
            "--description",
            "walk",
            "--number-of-recent-amis-to-keep",
            "2",
            "--encrypted",
        ],
    )
    .await;
    let job_id = str_of(&created, "/replicationJobId").to_owned();

    let jobs = ok(&server, &["sms", "get-replication-jobs"]).await;
    let job = &jobs["replicationJobList"][0];
    assert_eq!(job["replicationJobId"], job_id.as_str());
    assert_eq!(job["seedReplicationTime"], seed);
    assert_eq!(job["frequency"], 12);
    assert_eq!(job["licenseType"], "BYOL");
    assert_eq!(job["encrypted"], true);
    assert_eq!(job["numberOfRecentAmisToKeep"], 2);

    let runs = ok(
        &server,
        &[
            "sms",
            "get-replication-runs",
            "--replication-job-id",
            &job_id,
        ],
    )
    .await;
    assert_eq!(runs["replicationJob"]["replicationJobId"], job_id.as_str());
    assert!(runs["replicationRunList"].is_array());

    let next = (seed + 7200).to_string();
    let updated = ok(
        &server,
        &[
            "sms",
            "update-replication-job",
            "--replication-job-id",
            &job_id,
            "--frequency",
            "6",
            "--next-replication-run-start-time",
            &next,
            "--description",
            "walk, updated",
        ],
    )
    .await;
    assert_eq!(updated, Value::Null);
    let jobs = ok(
        &server,
        &[
            "sms",
            "get-replication-jobs",
            "--replication-job-id",
            &job_id,
        ],
    )
    .await;
    assert_eq!(jobs["replicationJobList"][0]["frequency"], 6);
    assert_eq!(
        jobs["replicationJobList"][0]["nextReplicationRunStartTime"],
        seed + 7200
    );
    assert_eq!(
        jobs["replicationJobList"][0]["description"],
        "walk, updated"
    );

    let started = ok(
        &server,
        &[
            "sms",
            "start-on-demand-replication-run",
            "--replication-job-id",
            &job_id,
            "--description",
            "now",
        ],
    )
    .await;
    let run_id = str_of(&started, "/replicationRunId").to_owned();
    let runs = ok(
        &server,
        &[
            "sms",
            "get-replication-runs",
            "--replication-job-id",
            &job_id,
        ],
    )
    .await;
    let listed = runs["replicationRunList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["replicationRunId"] == run_id.as_str())
        .unwrap_or_else(|| panic!("{run_id} in {runs}"));
    assert_eq!(listed["type"], "ON_DEMAND");

    // A service error: its SMS code and message on stderr, exit status 254.
    let refused = run(
        &server,
        &[
            "sms",
            "start-on-demand-replication-run",
            "--replication-job-id",
            &job_id,
        ],
    )
    .await;
    assert_eq!(refused.status.code(), Some(254));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("(OperationNotPermittedException)")
            && stderr.contains("StartOnDemandReplicationRun"),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty());

    assert_eq!(
        ok(
            &server,
            &[
                "sms",
                "delete-replication-job",
                "--replication-job-id",
                &job_id
            ]
        )
        .await,
        Value::Null
    );
    assert_eq!(
        ok(&server, &["sms", "delete-server-catalog"]).await,
        Value::Null
    );
    let servers = ok(&server, &["sms", "get-servers"]).await;
    assert_eq!(servers["serverList"], serde_json::json!([]));
    assert_eq!(servers["serverCatalogStatus"], "DELETED");
    assert_eq!(
        ok(
            &server,
            &[
                "sms",
                "disassociate-connector",
                "--connector-id",
                &connector_id
            ]
        )
        .await,
        Value::Null
    );
    let connectors = ok(&server, &["sms", "get-connectors"]).await;
    assert_eq!(connectors["connectorList"], serde_json::json!([]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_bad_input_and_unreachable_endpoints() {
    let server = TestServer::start().await;
    // Bad timestamp: rejected before any request, naming the accepted forms.
    let out = run(
        &server,
        &[
            "sms",
            "create-replication-job",
            "--server-id",
            "s-1",
            "--seed-replication-time",
            "soon",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ISO 8601"));
    // Unknown keys: the service's own code.
    let out = tern(&server)
        .env("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        .env("AWS_SECRET_ACCESS_KEY", "x".repeat(40))
        .args(["sms", "get-connectors"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(254));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(UnrecognizedClientException)"));
    // Nothing listening: a clear error, not a panic, with the AWS CLI's client-error status.
    let out = run(
        &server,
        &["sms", "get-servers", "--endpoint-url", "http://127.0.0.1:9"],
    )
    .await;
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GetServers") && !stderr.contains("panicked"),
        "{stderr}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_runs_until_sigterm() {
    let server = TestServer::start().await;
    let config = server.write_connector_config("lab", &inventory_toml("vc-test", 1));
    let mut child = tern(&server)
        .args(["connector", "run", "--config", &config_arg(&config)])
        .spawn()
        .expect("connector starts");
    // It registers, then answers an import on its own within a few poll intervals (1 s).
    let registered = until_async(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            let out = server.client.get_connectors().send().await.unwrap();
            (!out.connector_list().is_empty()).then_some(())
        },
    )
    .await;
    assert!(registered.is_some(), "the connector registered");
    server.client.import_server_catalog().send().await.unwrap();
    let imported = until_async(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            let out = server.client.get_servers().send().await.unwrap();
            (out.server_list().len() == 1).then_some(())
        },
    )
    .await;
    assert!(
        imported.is_some(),
        "the running connector answered the inventory request"
    );

    let pid = child.id().expect("pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    server.shutdown().await;
}

/// The application subcommands, named as `aws sms` names them, with the SMS wire JSON in and out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_applications() {
    let server = TestServer::start().await;
    let (_agent, s) = server.import_catalog(3).await;
    let groups = format!(
        r#"[{{"name":"web","serverList":[{{"serverId":"{}"}},{{"serverId":"{}"}}]}},{{"name":"db","serverList":[{{"serverId":"{}"}}]}}]"#,
        s[0], s[1], s[2]
    );
    let created = ok(
        &server,
        &[
            "sms",
            "create-app",
            "--name",
            "shop",
            "--client-token",
            "cli-1",
            "--server-groups",
            &groups,
            "--tags",
            r#"[{"key":"team","value":"blue"}]"#,
        ],
    )
    .await;
    let app_id = str_of(&created, "/appSummary/appId").to_owned();
    assert_eq!(created["appSummary"]["totalServers"], 3);
    assert_eq!(created["appSummary"]["totalServerGroups"], 2);
    assert_eq!(
        created["appSummary"]["replicationStatus"],
        "READY_FOR_CONFIGURATION"
    );
    assert!(created["appSummary"]["creationTime"].is_number());
    assert_eq!(created["tags"][0]["key"], "team");
    let web = str_of(&created, "/serverGroups/0/serverGroupId").to_owned();
    let db = str_of(&created, "/serverGroups/1/serverGroupId").to_owned();

    let got = ok(&server, &["sms", "get-app", "--app-id", &app_id]).await;
    assert_eq!(
        got["serverGroups"][1]["serverList"][0]["serverId"],
        s[2].as_str()
    );
    let listed = ok(&server, &["sms", "list-apps"]).await;
    assert_eq!(listed["apps"][0]["appId"], app_id.as_str());
    let listed = ok(&server, &["sms", "list-apps", "--app-ids", &app_id]).await;
    assert_eq!(listed["apps"].as_array().unwrap().len(), 1);

    let updated = ok(
        &server,
        &[
            "sms",
            "update-app",
            "--app-id",
            &app_id,
            "--description",
            "described",
        ],
    )
    .await;
    assert_eq!(updated["appSummary"]["name"], "shop");
    assert_eq!(updated["appSummary"]["description"], "described");

    let params = r#"{"seedTime":"2030-01-01T00:00:00Z","frequency":12,"licenseType":"BYOL"}"#;
    let seed = now_secs() + 3600;
    let params = params.replace(r#""2030-01-01T00:00:00Z""#, &seed.to_string());
    let configs = format!(
        r#"[{{"serverGroupId":"{web}","serverReplicationConfigurations":[{{"server":{{"serverId":"{}"}},"serverReplicationParameters":{params}}},{{"server":{{"serverId":"{}"}},"serverReplicationParameters":{params}}}]}},{{"serverGroupId":"{db}","serverReplicationConfigurations":[{{"server":{{"serverId":"{}"}},"serverReplicationParameters":{params}}}]}}]"#,
        s[0], s[1], s[2]
    );
    let file = server.scratch().join("replication.json");
    std::fs::write(&file, configs).unwrap();
    assert_eq!(
        ok(
            &server,
            &[
                "sms",
                "put-app-replication-configuration",
                "--app-id",
                &app_id,
                "--server-group-replication-configurations",
                &format!("file://{}", file.display()),
            ],
        )
        .await,
        Value::Null
    );
    let config = ok(
        &server,
        &[
            "sms",
            "get-app-replication-configuration",
            "--app-id",
            &app_id,
        ],
    )
    .await;
    let p = &config["serverGroupReplicationConfigurations"][0]["serverReplicationConfigurations"]
        [1]["serverReplicationParameters"];
    assert_eq!(p["frequency"], 12);
    assert_eq!(p["seedTime"], seed);

    ok(
        &server,
        &["sms", "start-app-replication", "--app-id", &app_id],
    )
    .await;
    let got = ok(&server, &["sms", "get-app", "--app-id", &app_id]).await;
    assert_eq!(
        got["appSummary"]["replicationStatus"],
        "REPLICATION_PENDING"
    );
    assert!(got["serverGroups"][0]["serverList"][0]["replicationJobId"].is_string());

    // A refusal exits 254 with the SMS code, as the AWS CLI does.
    let refused = run(&server, &["sms", "delete-app", "--app-id", &app_id]).await;
    assert_eq!(refused.status.code(), Some(254));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("OperationNotPermittedException"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    ok(
        &server,
        &["sms", "stop-app-replication", "--app-id", &app_id],
    )
    .await;
    ok(
        &server,
        &[
            "sms",
            "delete-app-replication-configuration",
            "--app-id",
            &app_id,
        ],
    )
    .await;
    let got = ok(&server, &["sms", "get-app", "--app-id", &app_id]).await;
    assert_eq!(
        got["appSummary"]["replicationConfigurationStatus"],
        "NOT_CONFIGURED"
    );
    ok(
        &server,
        &[
            "sms",
            "delete-app",
            "--app-id",
            &app_id,
            "--force-stop-app-replication",
        ],
    )
    .await;
    let listed = ok(&server, &["sms", "list-apps"]).await;
    assert!(listed["apps"].as_array().unwrap().is_empty());
    server.shutdown().await;
}

/// The launch and validation subcommands, with the SMS wire JSON in and out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_launch_and_validation_configuration() {
    let server = TestServer::start().await;
    let (_agent, s) = server.import_catalog(2).await;
    let groups = format!(
        r#"[{{"name":"web","serverList":[{{"serverId":"{}"}}]}},{{"name":"db","serverList":[{{"serverId":"{}"}}]}}]"#,
        s[0], s[1]
    );
    let created = ok(
        &server,
        &[
            "sms",
            "create-app",
            "--name",
            "cli",
            "--server-groups",
            &groups,
        ],
    )
    .await;
    let app_id = str_of(&created, "/appSummary/appId").to_owned();
    let web = str_of(&created, "/serverGroups/0/serverGroupId").to_owned();
    let db = str_of(&created, "/serverGroups/1/serverGroupId").to_owned();

    let launch = format!(
        r#"[{{"serverGroupId":"{db}","launchOrder":1,"serverLaunchConfigurations":[{{"server":{{"serverId":"{}"}},"logicalId":"Db","instanceType":"m5.large","userData":{{"s3Location":{{"bucket":"sms-app-x","key":"db.sh"}}}},"configureScript":{{"bucket":"sms-app-x","key":"c.sh"}},"configureScriptType":"SHELL_SCRIPT"}}]}},{{"serverGroupId":"{web}","launchOrder":2}}]"#,
        s[1]
    );
    let out = ok(
        &server,
        &[
            "sms",
            "put-app-launch-configuration",
            "--app-id",
            &app_id,
            "--role-name",
            "launcher",
            "--auto-launch",
            "--server-group-launch-configurations",
            &launch,
        ],
    )
    .await;
    assert_eq!(out, Value::Null);
    let got = ok(
        &server,
        &["sms", "get-app-launch-configuration", "--app-id", &app_id],
    )
    .await;
    assert_eq!(got["roleName"], "launcher");
    assert_eq!(got["autoLaunch"], true);
    let db0 = &got["serverGroupLaunchConfigurations"][0]["serverLaunchConfigurations"][0];
    assert_eq!(db0["logicalId"], "Db");
    assert_eq!(db0["userData"]["s3Location"]["key"], "db.sh");
    assert_eq!(db0["configureScriptType"], "SHELL_SCRIPT");
    assert_eq!(db0["server"]["serverId"], s[1].as_str());

    let validations = r#"[{"name":"smoke","appValidationStrategy":"SSM","ssmValidationParameters":{"source":{"s3Location":{"bucket":"sms-app-x","key":"v.sh"}},"instanceId":"i-0123456789abcdef0","scriptType":"SHELL_SCRIPT","executionTimeoutSeconds":120}}]"#;
    ok(
        &server,
        &[
            "sms",
            "put-app-validation-configuration",
            "--app-id",
            &app_id,
            "--app-validation-configurations",
            validations,
        ],
    )
    .await;
    let got = ok(
        &server,
        &[
            "sms",
            "get-app-validation-configuration",
            "--app-id",
            &app_id,
        ],
    )
    .await;
    let v = &got["appValidationConfigurations"][0];
    assert_eq!(v["ssmValidationParameters"]["executionTimeoutSeconds"], 120);
    let vid = str_of(v, "/validationId").to_owned();
    let ctx =
        format!(r#"{{"validationId":"{vid}","status":"FAILED","statusMessage":"port 80 closed"}}"#);
    ok(
        &server,
        &[
            "sms",
            "notify-app-validation-output",
            "--app-id",
            &app_id,
            "--notification-context",
            &ctx,
        ],
    )
    .await;
    let out = ok(
        &server,
        &["sms", "get-app-validation-output", "--app-id", &app_id],
    )
    .await;
    assert_eq!(out["validationOutputList"][0]["status"], "FAILED");
    assert_eq!(
        out["validationOutputList"][0]["statusMessage"],
        "port 80 closed"
    );

    // Refusals exit 254 with the SMS code and the message.
    for (args, code, text) in [
        (
            vec![
                "sms",
                "generate-template",
                "--app-id",
                &app_id,
                "--template-format",
                "YAML",
            ],
            "InvalidParameterException",
            "launch before any AMI exists",
        ),
        (
            vec!["sms", "generate-change-set", "--app-id", &app_id],
            "InvalidParameterException",
            "has not been launched",
        ),
        (
            vec!["sms", "launch-app", "--app-id", &app_id],
            "InvalidParameterException",
            "launch before any AMI exists",
        ),
        (
            vec!["sms", "terminate-app", "--app-id", &app_id],
            "OperationNotPermittedException",
            "has not been launched",
        ),
        (
            vec!["sms", "import-app-catalog", "--role-name", "r"],
            "InvalidParameterException",
            "[[applications]]",
        ),
    ] {
        let out = run(&server, &args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(254), "{args:?}: {err}");
        assert!(err.contains(code) && err.contains(text), "{args:?}: {err}");
    }

    for op in [
        "delete-app-validation-configuration",
        "delete-app-launch-configuration",
    ] {
        ok(&server, &["sms", op, "--app-id", &app_id]).await;
    }
    let got = ok(&server, &["sms", "get-app", "--app-id", &app_id]).await;
    assert_eq!(
        got["appSummary"]["launchConfigurationStatus"],
        "NOT_CONFIGURED"
    );
    server.shutdown().await;
}
