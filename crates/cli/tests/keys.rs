//! `tern keys` against a DynamoDB table on moto: issue, list, rotate and revoke, as an
//! administrator of an AWS deployment runs them; the keys it writes are the ones the `api`
//! Lambda's signed API accepts (the same use cases read them: functions/api/tests/signed.rs).

use std::process::Command;

use serde_json::Value;
use tern_test_support::moto::{Flavor, Moto};

fn keys(moto: &Moto, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("keys")
        .args(args)
        .args([
            "--table",
            "tern",
            "--region",
            "us-east-1",
            "--endpoint-url",
            &moto.endpoint,
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("tern runs");
    assert!(
        out.status.success(),
        "tern keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[tokio::test]
async fn keys_are_issued_listed_rotated_and_revoked_in_the_stack_table() {
    let Some(moto) = Moto::start(Flavor::Threaded, "tern keys") else {
        return;
    };
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&moto.endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    tern_aws::DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), "tern")
        .create_table()
        .await
        .unwrap();

    let issued = keys(&moto, &["issue", "--role", "admin", "--description", "ops"]);
    let id = issued["AccessKey"]["AccessKeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("TERN") && id.len() == 20, "{issued}");
    assert_eq!(
        issued["AccessKey"]["SecretAccessKey"]
            .as_str()
            .unwrap()
            .len(),
        40
    );
    assert_eq!(issued["AccessKey"]["Status"], "Active");

    let rotated = keys(&moto, &["rotate", &id]);
    let new_id = rotated["AccessKey"]["AccessKeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_id, id);
    assert_eq!(rotated["AccessKey"]["Role"], "admin");
    assert_eq!(rotated["AccessKey"]["Description"], "ops");
    assert_eq!(rotated["Revoked"], id.as_str());

    let revoked = keys(&moto, &["revoke", &new_id]);
    assert_eq!(revoked["AccessKey"]["Status"], "Revoked");
    assert!(revoked["AccessKey"].get("SecretAccessKey").is_none());

    let listed = keys(&moto, &["list"]);
    let all = listed["AccessKeys"].as_array().unwrap();
    assert_eq!(all.len(), 2);
    assert!(all
        .iter()
        .all(|k| k["Status"] == "Revoked" && k.get("SecretAccessKey").is_none()));
}
