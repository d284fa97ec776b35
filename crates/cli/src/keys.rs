//! `tern keys`: the access keys of an AWS deployment. Unmodified SMS clients sign for service
//! `sms`, which API Gateway's IAM authorizer refuses, so they call the stack's `SmsEndpoint`,
//! where the `api` Lambda verifies their signature against these keys. The keys live in the
//! stack's table (encrypted at rest); this command writes them there with your AWS
//! credentials, through the same use cases the Lambda reads them with.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use tern_core::service::{AccessKey, KeyRole};
use tern_core::{RandomIds, Service, SystemClock};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key; prints its secret once (JSON, like `aws iam create-access-key`).
    Issue {
        /// Whom the key authenticates: `admin` (every SMS operation) or `connector` (the
        /// connector operations only).
        #[arg(long, value_parser = ["admin", "connector"])]
        role: String,
        /// What the key is for, shown by `list`.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Issue a new key with the role and description of ACCESS_KEY_ID and revoke that one, at once.
    Rotate {
        access_key_id: String,
        #[command(flatten)]
        table: TableArgs,
    },
    /// Revoke a key: requests signed with it are refused from now on.
    Revoke {
        access_key_id: String,
        #[command(flatten)]
        table: TableArgs,
    },
    /// List the keys (never their secrets), revoked ones included.
    List {
        #[command(flatten)]
        table: TableArgs,
    },
}

#[derive(Debug, Args)]
pub struct TableArgs {
    /// The stack's table (its `TableName` output).
    #[arg(long, env = "TERN_TABLE_NAME")]
    table: String,
    /// The stack's region (default: your AWS configuration's).
    #[arg(long)]
    region: Option<String>,
    /// Another endpoint for DynamoDB (a local stand-in, for tests).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
}

async fn service(t: &TableArgs) -> Service {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &t.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(e) = &t.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    let aws = loader.load().await;
    let store = tern_aws::DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), &t.table);
    Service::new(
        Arc::new(store),
        Arc::new(SystemClock),
        Arc::new(RandomIds),
        tern_core::Config::default(),
    )
}

fn shown(k: &AccessKey, with_secret: bool) -> serde_json::Value {
    let time = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut v = json!({
        "AccessKeyId": k.access_key_id,
        "Role": match k.role { KeyRole::Admin => "admin", KeyRole::Connector => "connector" },
        "Description": k.description,
        "Status": if k.revoked_at.is_some() { "Revoked" } else { "Active" },
        "CreateDate": time(k.created_at),
    });
    if let Some(r) = k.revoked_at {
        v["RevokeDate"] = json!(time(r));
    }
    if with_secret {
        v["SecretAccessKey"] = json!(k.secret_access_key);
    }
    v
}

pub fn run(cmd: KeysCommand) -> Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let out = match &cmd {
            KeysCommand::Issue {
                role,
                description,
                table,
            } => {
                let role = KeyRole::parse(role)?;
                let k = service(table)
                    .await
                    .issue_access_key(role, description)
                    .await?;
                json!({ "AccessKey": shown(&k, true) })
            }
            KeysCommand::Rotate {
                access_key_id,
                table,
            } => {
                let k = service(table)
                    .await
                    .rotate_access_key(access_key_id)
                    .await?;
                json!({ "AccessKey": shown(&k, true), "Revoked": access_key_id })
            }
            KeysCommand::Revoke {
                access_key_id,
                table,
            } => {
                let k = service(table)
                    .await
                    .revoke_access_key(access_key_id)
                    .await?;
                json!({ "AccessKey": shown(&k, false) })
            }
            KeysCommand::List { table } => {
                let keys = service(table).await.list_access_keys().await?;
                json!({ "AccessKeys": keys.iter().map(|k| shown(k, false)).collect::<Vec<_>>() })
            }
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(ExitCode::SUCCESS)
    })
}
