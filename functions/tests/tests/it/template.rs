//! `template.yaml` as a deployment meets it, offline (`tests/template/check.py`): cfn-lint
//! clean; transformed by samtranslator as `sam deploy` does; every substitution of the ASL
//! resolved to the function running that task; every function given the environment its code
//! reads; each function's IAM actions exactly the calls its code makes (declared below, next
//! to the code they come from); and the transformed stack created in moto's CloudFormation.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::json;
use tern_core::replication::functions;
use tern_fn_common::Settings;

/// DynamoStore's calls (crates/aws/src/dynamodb.rs); every function uses the store.
const TABLE: &[&str] = &[
    "dynamodb:GetItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:ConditionCheckItem",
];

/// The AWS calls each function's code makes beyond the table, by the core's use of its ports:
/// Workflows (Step Functions), Staging (S3), EventBus (EventBridge) and Images (EC2, EBS).
fn permissions() -> serde_json::Value {
    fn with(extra: &[&'static str]) -> Vec<&'static str> {
        let mut all: Vec<&'static str> = TABLE.to_vec();
        all.extend_from_slice(extra);
        all
    }
    // Tearing down a deleted job's run (crates/core/src/replication/teardown.rs).
    const TEARDOWN: &[&str] = &[
        "states:StopExecution",
        "s3:ListBucket",
        "s3:ListBucketMultipartUploads",
        "s3:GetObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "ebs:CompleteSnapshot",
        "ec2:CreateTags",
        "ec2:DeleteSnapshot",
        "ec2:DeregisterImage",
        "ec2:DescribeImportSnapshotTasks",
        "ec2:DescribeSnapshots",
        "ec2:DescribeImages",
    ];
    // Running and following a launched application's validations
    // (crates/core/src/service/apps/validation/): consoles (CfnLauncher::console_output) and
    // SSM commands (send_command, command_status).
    const VALIDATION: &[&str] = &[
        "cloudformation:DescribeStackResource",
        "ec2:GetConsoleOutput",
        "ec2:DescribeTags",
        "ssm:ListTagsForResource",
        "ssm:SendCommand",
        "ssm:GetCommandInvocation",
        "ssm:ListCommands",
    ];
    let with_teardown = |extra: &[&'static str]| {
        let mut all = with(TEARDOWN);
        all.extend_from_slice(VALIDATION);
        all.extend_from_slice(extra);
        all.sort_unstable();
        all.dedup();
        all
    };
    // The Images adapter's calls per method: crates/aws/README.md.
    json!({
        // report_progress heartbeats the waiting task; work_failed fails it; DeleteReplicationJob
        // tears the run down; GenerateTemplate writes templates and reads user data; LaunchApp
        // and TerminateApp create, follow and delete the application's stack as its launch
        // role (CfnLauncher, crates/aws/src/launcher.rs); GetAppValidationOutput reads its
        // instances' consoles.
        "ApiFunction": with_teardown(&[
            "states:SendTaskHeartbeat",
            "states:SendTaskFailure",
            "s3:PutObject",
            "cloudformation:CreateStack",
            "cloudformation:DescribeStacks",
            "cloudformation:DescribeStackEvents",
            "cloudformation:DeleteStack",
            "iam:PassRole",
        ]),
        "PrepareFunction": with(&[]),
        // A manifest recorded before the token arrived is handed over at once.
        "WaitForUploadFunction": with(&["states:SendTaskSuccess"]),
        // ImportSnapshot, or with SeedMethod ebs-direct: the VMDK's layout read from staging,
        // StartSnapshot, and DescribeSnapshots to find a retried task's snapshot.
        "ImportFunction": with(&[
            "ec2:ImportSnapshot",
            "ec2:CreateTags",
            "iam:PassRole",
            "ebs:StartSnapshot",
            "s3:GetObject",
            "ec2:DescribeSnapshots",
        ]),
        "ApplyDeltaFunction": with(&[
            "ebs:StartSnapshot",
            "ec2:CreateTags",
            "ec2:DescribeSnapshots",
            "s3:GetObject",
        ]),
        // A seed's iteration also writes its record of the blocks it wrote.
        "WriteBlocksFunction": with(&["ebs:PutSnapshotBlock", "s3:GetObject", "s3:PutObject"]),
        "CheckSnapshotsFunction": with(&[
            "ebs:CompleteSnapshot",
            "ec2:CreateTags",
            "ec2:DescribeImportSnapshotTasks",
            "ec2:DescribeSnapshots",
            "s3:GetObject",
        ]),
        "RegisterImageFunction": with(&["ec2:RegisterImage", "ec2:CreateTags", "ec2:DescribeImages"]),
        "RetainFunction": with(&["ec2:DeregisterImage", "ec2:DeleteSnapshot"]),
        // Staging's delete_prefix: list, delete, abort open multipart uploads.
        "CompleteFunction": with(&[
            "s3:ListBucket",
            "s3:ListBucketMultipartUploads",
            "s3:DeleteObject",
            "s3:AbortMultipartUpload",
        ]),
        "RecordFailureFunction": with(&[]),
        // The manifest is read (bounded), its objects' sizes checked, the waiting execution
        // resumed or failed.
        "UploadCompleteFunction": with(&[
            "s3:GetObject",
            "s3:ListBucket",
            "states:SendTaskSuccess",
            "states:SendTaskFailure",
        ]),
        // Starts executions, re-signals lost hand-overs, sweeps the outbox and teardowns;
        // launches autoLaunch applications (a large template put for TemplateURL) and follows
        // launches in progress (CfnLauncher).
        "SchedulerFunction": with_teardown(&[
            "s3:PutObject",
            "states:StartExecution",
            "states:SendTaskSuccess",
            "states:SendTaskFailure",
            "events:PutEvents",
            "cloudformation:CreateStack",
            "cloudformation:DescribeStacks",
            "cloudformation:DescribeStackEvents",
            "iam:PassRole",
        ]),
        "EventPublisherFunction": with(&["events:PutEvents"]),
    })
}

/// The `TERN_*` variables the functions read: their settings and Tern's `Config` keys.
fn known_env() -> Vec<String> {
    let mut names = tern_core::Config::env_names();
    names.extend(Settings::REQUIRED.iter().map(|s| s.to_string()));
    names.extend(
        [
            Settings::STAGING_PREFIX,
            Settings::EVENT_BUS_NAME,
            Settings::OUTBOX_SWEEP_SECONDS,
            Settings::SEED_METHOD,
            tern_fn_tasks::TASK_FUNCTION,
            tern_fn_api::Config::CONNECTOR_ROLE_NAME,
        ]
        .map(String::from),
    );
    names
}

#[test]
fn the_template_is_wired_least_privilege_and_creates_in_moto() {
    let have = |module: &str| {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    let lint = Command::new("cfn-lint").arg("--version").output().is_ok();
    if !(lint && have("samtranslator") && have("moto")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "cfn-lint, aws-sam-translator and moto are needed and CI is set: .ci/run installs them"
        );
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the template check needs cfn-lint, aws-sam-translator and moto (pip) ***\n"
        );
        return;
    }
    let substitutions: serde_json::Map<String, serde_json::Value> = functions::SUBSTITUTIONS
        .iter()
        .map(|(name, task)| (name.to_string(), json!(task)))
        .collect();
    let spec = json!({
        "substitutions": substitutions,
        "required_env": Settings::REQUIRED,
        "task_env": tern_fn_tasks::TASK_FUNCTION,
        // Every other TERN_ variable the template sets must be one the code reads.
        "known_env": known_env(),
        "permissions": permissions(),
        // The policies the stack offers to roles outside it, exactly the calls of their users.
        "policies": {
            // tern connector with `api_auth = "iam"`: the API, and its uploads
            // (crates/connector/src/replicate/upload.rs: PutObject, CreateMultipartUpload,
            // UploadPart and CompleteMultipartUpload are s3:PutObject; ListParts;
            // AbortMultipartUpload; HeadObject is s3:GetObject).
            "ConnectorPolicy": [
                "execute-api:Invoke",
                "s3:PutObject",
                "s3:GetObject",
                "s3:ListMultipartUploadParts",
                "s3:AbortMultipartUpload",
            ],
        },
    });
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut child = Command::new("python3")
        .arg(format!("{root}/tests/template/check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the template check found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.contains("moto") && !l.contains("parse_resource"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(stdout.contains("status CREATE_COMPLETE"), "{stdout}");
}

/// `sam validate --lint`, as a user's `sam deploy` checks the template first. The SAM CLI is
/// run from the virtualenv `.ci/run` makes (`$HOME/.cache/tern/venv-sam`), or `TERN_SAM_CLI`;
/// it needs no AWS account for this.
#[test]
fn sam_validates_the_template_offline() {
    let sam = std::env::var_os("TERN_SAM_CLI")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/tern/venv-sam/bin/sam"))
        })
        .filter(|p| p.is_file());
    let Some(sam) = sam else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the SAM CLI is needed and CI is set: .ci/run installs it"
        );
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: sam validate needs the SAM CLI (pip install aws-sam-cli into $HOME/.cache/tern/venv-sam) ***\n"
        );
        return;
    };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new(&sam)
        .args(["validate", "--lint", "--template"])
        .arg(format!("{root}/template.yaml"))
        .env("SAM_CLI_TELEMETRY", "0")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("the SAM CLI runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sam validate --lint: {said}");
    assert!(said.contains("is a valid SAM Template"), "{said}");
}
