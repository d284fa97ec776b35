//! `tern sms` behaves like the AWS CLI (issue 11 item 12), with the real binary against an
//! in-process `tern serve`: `--output json|text|table`, `--query`, automatic pagination and
//! `--max-items` / `--starting-token` / `--page-size` / `--no-paginate`, `--cli-input-json` /
//! `--generate-cli-skeleton`, endpoint and region settings, and the exit codes 0, 252, 254, 255.

use std::collections::BTreeSet;

use serde_json::Value;
use tern_acceptance::{now_secs, TestServer, REGION};

use super::{ok, run, str_of, tern};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn server_ids(v: &Value) -> Vec<String> {
    v["serverList"]
        .as_array()
        .unwrap_or_else(|| panic!("serverList in {v}"))
        .iter()
        .map(|s| s["serverId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_sms_has_the_aws_cli_habits() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(5).await;
    let all = ok(&server, &["sms", "get-servers"]).await;
    let listed = server_ids(&all);
    assert_eq!(
        listed.iter().collect::<BTreeSet<_>>(),
        ids.iter().collect::<BTreeSet<_>>()
    );
    assert!(all.get("nextToken").is_none() && all.get("NextToken").is_none());

    // --max-items / --starting-token: three pages of 2, 2 and 1, in the full listing's order.
    let first = ok(&server, &["sms", "get-servers", "--max-items", "2"]).await;
    assert_eq!(server_ids(&first), listed[..2]);
    let token = str_of(&first, "/NextToken").to_owned();
    let second = ok(
        &server,
        &[
            "sms",
            "get-servers",
            "--max-items",
            "2",
            "--starting-token",
            &token,
        ],
    )
    .await;
    assert_eq!(server_ids(&second), listed[2..4]);
    let token = str_of(&second, "/NextToken").to_owned();
    let third = ok(
        &server,
        &[
            "sms",
            "get-servers",
            "--max-items",
            "2",
            "--starting-token",
            &token,
        ],
    )
    .await;
    assert_eq!(server_ids(&third), listed[4..]);
    assert!(third.get("NextToken").is_none(), "{third}");
    // Service pages of 2 under --max-items 3: the token resumes inside a page.
    let split = ok(
        &server,
        &["sms", "get-servers", "--page-size", "2", "--max-items", "3"],
    )
    .await;
    assert_eq!(server_ids(&split), listed[..3]);
    let token = str_of(&split, "/NextToken").to_owned();
    let rest = ok(
        &server,
        &[
            "sms",
            "get-servers",
            "--page-size",
            "2",
            "--starting-token",
            &token,
        ],
    )
    .await;
    assert_eq!(server_ids(&rest), listed[3..]);
    // --page-size alone still lists everything; the members besides the list are kept.
    let paged = ok(&server, &["sms", "get-servers", "--page-size", "2"]).await;
    assert_eq!(server_ids(&paged), listed);
    assert_eq!(paged["serverCatalogStatus"], "AVAILABLE");
    // --no-paginate: one call, and the service's own nextToken.
    let one = ok(
        &server,
        &["sms", "get-servers", "--no-paginate", "--page-size", "2"],
    )
    .await;
    assert_eq!(server_ids(&one), listed[..2]);
    assert!(one["nextToken"].is_string(), "{one}");

    // --query (JMESPath) and --output.
    let queried = ok(
        &server,
        &["sms", "get-servers", "--query", "serverList[].serverId"],
    )
    .await;
    assert_eq!(queried, serde_json::json!(listed));
    let out = run(
        &server,
        &[
            "sms",
            "get-servers",
            "--query",
            "serverList[].serverId",
            "--output",
            "text",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}\n", listed.join("\t")));
    let out = run(&server, &["sms", "get-servers", "--output", "text"]).await;
    let text = stdout(&out);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("SERVERLIST\t"))
        .collect();
    assert_eq!(rows.len(), 5, "{text}");
    assert!(
        rows[0].contains(&listed[0]) && rows[0].contains("VIRTUAL_MACHINE"),
        "{text}"
    );
    let out = tern(&server)
        .env("AWS_DEFAULT_OUTPUT", "table")
        .args(["sms", "get-servers", "--query", "serverList[0]"])
        .output()
        .await
        .unwrap();
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.len() > 4, "{table}");
    assert!(
        lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()),
        "{table}"
    );
    assert!(lines[1].contains("GetServers"), "{table}");
    assert!(
        table.contains(" serverId ") && table.contains(&listed[0]),
        "{table}"
    );

    // --generate-cli-skeleton: the input, with empty values of each member's kind; no call.
    let skeleton = ok(
        &server,
        &[
            "sms",
            "create-replication-job",
            "--generate-cli-skeleton",
            "--endpoint-url",
            "http://127.0.0.1:1",
        ],
    )
    .await;
    assert_eq!(skeleton["serverId"], "");
    assert_eq!(skeleton["frequency"], 0);
    assert_eq!(skeleton["runOnce"], true);
    assert_eq!(skeleton["seedReplicationTime"], "");
    assert!(skeleton.get("endpointUrl").is_none() && skeleton.get("noRunOnce").is_none());

    // --cli-input-json from a file; an option on the command line wins over the file.
    let input = server.scratch().join("job.json");
    std::fs::write(
        &input,
        serde_json::json!({
            "serverId": ids[0],
            "seedReplicationTime": now_secs() + 3600,
            "frequency": 12,
            "runOnce": false,
            "description": "from the file",
            "numberOfRecentAmisToKeep": 2
        })
        .to_string(),
    )
    .unwrap();
    let created = ok(
        &server,
        &[
            "sms",
            "create-replication-job",
            "--cli-input-json",
            &format!("file://{}", input.display()),
            "--description",
            "from the command line",
        ],
    )
    .await;
    let job_id = str_of(&created, "/replicationJobId").to_owned();
    let inline = format!(r#"{{"replicationJobId": "{job_id}"}}"#);
    let jobs = ok(
        &server,
        &["sms", "get-replication-jobs", "--cli-input-json", &inline],
    )
    .await;
    let job = &jobs["replicationJobList"][0];
    assert_eq!(jobs["replicationJobList"].as_array().unwrap().len(), 1);
    assert_eq!(job["frequency"], 12);
    assert_eq!(job["runOnce"], false);
    assert_eq!(job["numberOfRecentAmisToKeep"], 2);
    assert_eq!(job["description"], "from the command line");
    let out = run(
        &server,
        &[
            "sms",
            "get-replication-jobs",
            "--cli-input-json",
            r#"{"replicationJobIdd": "x"}"#,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(252), "{}", stderr(&out));
    assert!(stderr(&out).contains("Unknown parameter in input: \"replicationJobIdd\""));

    // Exit codes: 254 when the service answers an error, printed as the AWS CLI prints it.
    let out = run(
        &server,
        &[
            "sms",
            "delete-replication-job",
            "--replication-job-id",
            "sms-job-00000000000000000",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(254), "{}", stderr(&out));
    assert!(
        stderr(&out).trim_start().starts_with(
            "An error occurred (ReplicationJobNotFoundException) when calling the DeleteReplicationJob operation: "
        ),
        "{}",
        stderr(&out)
    );
    // 255 when nothing answers, or no region is known.
    let out = run(
        &server,
        &["sms", "get-servers", "--endpoint-url", "http://127.0.0.1:1"],
    )
    .await;
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let out = tern(&server)
        .env_remove("AWS_REGION")
        .args(["sms", "get-servers"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains("region"), "{}", stderr(&out));
    // 252 for a command line refused before any call.
    for args in [
        &["sms", "create-replication-job", "--frequency", "12"][..],
        &["sms", "get-servers", "--output", "yaml"],
        &[
            "sms",
            "get-servers",
            "--query",
            "serverList[",
            "--output",
            "json",
        ],
        &["sms", "get-servers", "--no-paginate", "--max-items", "2"],
    ] {
        let out = run(&server, args).await;
        assert_eq!(out.status.code(), Some(252), "{args:?}: {}", stderr(&out));
    }
    // --region, and the endpoint from AWS_ENDPOINT_URL_SMS.
    let out = tern(&server)
        .env_remove("AWS_REGION")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ENDPOINT_URL_SMS", server.endpoint())
        .args(["sms", "get-servers", "--region", REGION, "--max-items", "1"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let one: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(server_ids(&one), listed[..1]);
}
