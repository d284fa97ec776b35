//! `tern sms` subcommands of the application operations, named and optioned as `aws sms` has
//! them. Structure-valued options (`--server-groups`, `--tags`,
//! `--server-group-replication-configurations`) take the SMS wire JSON, inline or as
//! `file://PATH`, as the AWS CLI does.

use anyhow::{bail, Context};
use aws_sdk_sms::types::{
    AppSummary, LicenseType, ServerGroup, ServerGroupReplicationConfiguration,
    ServerReplicationConfiguration, ServerReplicationParameters, Tag,
};
use aws_sdk_sms::Client;
use aws_smithy_types::DateTime;
use serde_json::{Map, Value};

use super::{flag_pair, put, server_json, time_json, Failure, Global, Paging};

/// The application subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AppCommand {
    /// Create an application from server groups of catalog servers.
    CreateApp {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        role_name: Option<String>,
        /// Makes the call idempotent: the same token answers the same application.
        #[arg(long)]
        client_token: Option<String>,
        /// JSON list of `{"name":..,"serverList":[{"serverId":..}]}`, or file://PATH.
        #[arg(long)]
        server_groups: Option<String>,
        /// JSON list of `{"key":..,"value":..}`, or file://PATH.
        #[arg(long)]
        tags: Option<String>,
    },
    /// Describe an application: summary, server groups and tags.
    GetApp {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
    /// List application summaries.
    ListApps {
        #[command(flatten)]
        global: Global,
        /// Only these applications.
        #[arg(long, num_args = 1..)]
        app_ids: Vec<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Change an application; a given list replaces the stored one.
    UpdateApp {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        role_name: Option<String>,
        /// JSON list of server groups (keep a group's `serverGroupId` to keep the group).
        #[arg(long)]
        server_groups: Option<String>,
        #[arg(long)]
        tags: Option<String>,
    },
    /// Delete an application.
    DeleteApp {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
        /// Also delete its replication jobs.
        #[arg(long, overrides_with = "no_force_stop_app_replication")]
        force_stop_app_replication: bool,
        #[arg(long, overrides_with = "force_stop_app_replication")]
        no_force_stop_app_replication: bool,
        #[arg(long, overrides_with = "no_force_terminate_app")]
        force_terminate_app: bool,
        #[arg(long, overrides_with = "force_terminate_app")]
        no_force_terminate_app: bool,
    },
    /// Create a replication job for every server of the application.
    StartAppReplication {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
    /// Start an on-demand run of every job of the application.
    StartOnDemandAppReplication {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete the replication jobs of the application (their AMIs are kept).
    StopAppReplication {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
    /// Set the replication parameters of the application's servers.
    PutAppReplicationConfiguration {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
        /// JSON list of `{"serverGroupId":..,"serverReplicationConfigurations":[{"server":
        /// {"serverId":..},"serverReplicationParameters":{"seedTime":..,"frequency":..}}]}`,
        /// or file://PATH.
        #[arg(long)]
        server_group_replication_configurations: String,
    },
    /// Show the replication parameters of the application's servers.
    GetAppReplicationConfiguration {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
    /// Remove the application's replication configuration.
    DeleteAppReplicationConfiguration {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
}

impl AppCommand {
    pub(super) fn paging(&self) -> Option<&Paging> {
        match self {
            AppCommand::ListApps { paging, .. } => Some(paging),
            _ => None,
        }
    }

    pub(super) fn global(&self) -> &Global {
        match self {
            AppCommand::CreateApp { global, .. }
            | AppCommand::GetApp { global, .. }
            | AppCommand::ListApps { global, .. }
            | AppCommand::UpdateApp { global, .. }
            | AppCommand::DeleteApp { global, .. }
            | AppCommand::StartAppReplication { global, .. }
            | AppCommand::StartOnDemandAppReplication { global, .. }
            | AppCommand::StopAppReplication { global, .. }
            | AppCommand::PutAppReplicationConfiguration { global, .. }
            | AppCommand::GetAppReplicationConfiguration { global, .. }
            | AppCommand::DeleteAppReplicationConfiguration { global, .. } => global,
        }
    }

    pub(super) fn operation(&self) -> &'static str {
        match self {
            AppCommand::CreateApp { .. } => "CreateApp",
            AppCommand::GetApp { .. } => "GetApp",
            AppCommand::ListApps { .. } => "ListApps",
            AppCommand::UpdateApp { .. } => "UpdateApp",
            AppCommand::DeleteApp { .. } => "DeleteApp",
            AppCommand::StartAppReplication { .. } => "StartAppReplication",
            AppCommand::StartOnDemandAppReplication { .. } => "StartOnDemandAppReplication",
            AppCommand::StopAppReplication { .. } => "StopAppReplication",
            AppCommand::PutAppReplicationConfiguration { .. } => "PutAppReplicationConfiguration",
            AppCommand::GetAppReplicationConfiguration { .. } => "GetAppReplicationConfiguration",
            AppCommand::DeleteAppReplicationConfiguration { .. } => {
                "DeleteAppReplicationConfiguration"
            }
        }
    }
}

pub(super) async fn execute(client: &Client, cmd: AppCommand) -> Result<Option<Value>, Failure> {
    let out = match cmd {
        AppCommand::CreateApp {
            name,
            description,
            role_name,
            client_token,
            server_groups,
            tags,
            ..
        } => {
            let out = client
                .create_app()
                .set_name(name)
                .set_description(description)
                .set_role_name(role_name)
                .set_client_token(client_token)
                .set_server_groups(server_groups.as_deref().map(groups_in).transpose()?)
                .set_tags(tags.as_deref().map(tags_in).transpose()?)
                .send()
                .await?;
            Some(app_json(out.app_summary(), out.server_groups(), out.tags()))
        }
        AppCommand::GetApp { app_id, .. } => {
            let out = client.get_app().app_id(app_id).send().await?;
            Some(app_json(out.app_summary(), out.server_groups(), out.tags()))
        }
        AppCommand::ListApps {
            app_ids, paging, ..
        } => {
            let ids = (!app_ids.is_empty()).then_some(app_ids);
            // The SDK has no ListApps paginator (no @paginated in the model): `paginate`
            // follows the token.
            Some(
                super::output::paginate(&paging, "apps", |token, max| {
                    let request = client
                        .list_apps()
                        .set_app_ids(ids.clone())
                        .set_next_token(token)
                        .set_max_results(max);
                    async move {
                        let page = request.send().await?;
                        let mut members = Map::new();
                        members.insert(
                            "apps".into(),
                            page.apps().iter().map(summary_json).collect(),
                        );
                        Ok(super::output::Page {
                            members,
                            next_token: page.next_token().map(str::to_owned),
                        })
                    }
                })
                .await?,
            )
        }
        AppCommand::UpdateApp {
            app_id,
            name,
            description,
            role_name,
            server_groups,
            tags,
            ..
        } => {
            let out = client
                .update_app()
                .app_id(app_id)
                .set_name(name)
                .set_description(description)
                .set_role_name(role_name)
                .set_server_groups(server_groups.as_deref().map(groups_in).transpose()?)
                .set_tags(tags.as_deref().map(tags_in).transpose()?)
                .send()
                .await?;
            Some(app_json(out.app_summary(), out.server_groups(), out.tags()))
        }
        AppCommand::DeleteApp {
            app_id,
            force_stop_app_replication,
            no_force_stop_app_replication,
            force_terminate_app,
            no_force_terminate_app,
            ..
        } => {
            client
                .delete_app()
                .app_id(app_id)
                .set_force_stop_app_replication(flag_pair(
                    force_stop_app_replication,
                    no_force_stop_app_replication,
                ))
                .set_force_terminate_app(flag_pair(force_terminate_app, no_force_terminate_app))
                .send()
                .await?;
            None
        }
        AppCommand::StartAppReplication { app_id, .. } => {
            client.start_app_replication().app_id(app_id).send().await?;
            None
        }
        AppCommand::StartOnDemandAppReplication {
            app_id,
            description,
            ..
        } => {
            client
                .start_on_demand_app_replication()
                .app_id(app_id)
                .set_description(description)
                .send()
                .await?;
            None
        }
        AppCommand::StopAppReplication { app_id, .. } => {
            client.stop_app_replication().app_id(app_id).send().await?;
            None
        }
        AppCommand::PutAppReplicationConfiguration {
            app_id,
            server_group_replication_configurations,
            ..
        } => {
            client
                .put_app_replication_configuration()
                .app_id(app_id)
                .set_server_group_replication_configurations(Some(configs_in(
                    &server_group_replication_configurations,
                )?))
                .send()
                .await?;
            None
        }
        AppCommand::GetAppReplicationConfiguration { app_id, .. } => {
            let out = client
                .get_app_replication_configuration()
                .app_id(app_id)
                .send()
                .await?;
            let list = out
                .server_group_replication_configurations()
                .iter()
                .map(config_json)
                .collect();
            let mut m = Map::new();
            m.insert(
                "serverGroupReplicationConfigurations".into(),
                Value::Array(list),
            );
            Some(Value::Object(m))
        }
        AppCommand::DeleteAppReplicationConfiguration { app_id, .. } => {
            client
                .delete_app_replication_configuration()
                .app_id(app_id)
                .send()
                .await?;
            None
        }
    };
    Ok(out)
}

// ------------------------------------------------------------------------------ input JSON

/// An option's JSON: inline, or the content of `file://PATH`.
pub(super) fn json_arg(option: &str, text: &str) -> anyhow::Result<Value> {
    let text = match text.strip_prefix("file://") {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--{option}: cannot read {path}"))?,
        None => text.to_string(),
    };
    serde_json::from_str(&text).with_context(|| format!("--{option}: not valid JSON"))
}

pub(super) fn list(option: &str, value: Value) -> anyhow::Result<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        item @ Value::Object(_) => Ok(vec![item]),
        other => bail!("--{option}: expected a JSON list of objects, got {other}"),
    }
}

pub(super) fn string(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

pub(super) fn server_in(v: &Value) -> aws_sdk_sms::types::Server {
    aws_sdk_sms::types::Server::builder()
        .set_server_id(string(v, "serverId"))
        .build()
}

fn groups_in(text: &str) -> anyhow::Result<Vec<ServerGroup>> {
    let option = "server-groups";
    list(option, json_arg(option, text)?)?
        .iter()
        .map(|g| {
            let servers = match g.get("serverList") {
                None => Vec::new(),
                Some(v) => list(option, v.clone())?,
            };
            Ok(ServerGroup::builder()
                .set_server_group_id(string(g, "serverGroupId"))
                .set_name(string(g, "name"))
                .set_server_list(Some(servers.iter().map(server_in).collect()))
                .build())
        })
        .collect()
}

fn tags_in(text: &str) -> anyhow::Result<Vec<Tag>> {
    let option = "tags";
    Ok(list(option, json_arg(option, text)?)?
        .iter()
        .map(|t| {
            Tag::builder()
                .set_key(string(t, "key"))
                .set_value(string(t, "value"))
                .build()
        })
        .collect())
}

fn parameters_in(option: &str, p: &Value) -> anyhow::Result<ServerReplicationParameters> {
    let seed_time = match p.get("seedTime") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(DateTime::from_secs_f64(n.as_f64().unwrap_or_default())),
        Some(Value::String(s)) => {
            Some(super::parse_timestamp(s).map_err(|e| anyhow::anyhow!("--{option}: {e}"))?)
        }
        Some(other) => bail!("--{option}: seedTime {other} is not a timestamp"),
    };
    let license_type = match string(p, "licenseType").as_deref() {
        None => None,
        Some("AWS") => Some(LicenseType::Aws),
        Some("BYOL") => Some(LicenseType::Byol),
        Some(other) => bail!("--{option}: licenseType {other:?} is not AWS or BYOL"),
    };
    let int = |key: &str| p.get(key).and_then(Value::as_i64).map(|n| n as i32);
    let flag = |key: &str| p.get(key).and_then(Value::as_bool);
    Ok(ServerReplicationParameters::builder()
        .set_seed_time(seed_time)
        .set_frequency(int("frequency"))
        .set_run_once(flag("runOnce"))
        .set_license_type(license_type)
        .set_number_of_recent_amis_to_keep(int("numberOfRecentAmisToKeep"))
        .set_encrypted(flag("encrypted"))
        .set_kms_key_id(string(p, "kmsKeyId"))
        .build())
}

fn configs_in(text: &str) -> anyhow::Result<Vec<ServerGroupReplicationConfiguration>> {
    let option = "server-group-replication-configurations";
    list(option, json_arg(option, text)?)?
        .iter()
        .map(|g| {
            let servers = match g.get("serverReplicationConfigurations") {
                None => Vec::new(),
                Some(v) => list(option, v.clone())?,
            };
            let servers = servers
                .iter()
                .map(|s| {
                    let params = s
                        .get("serverReplicationParameters")
                        .map(|p| parameters_in(option, p))
                        .transpose()?;
                    Ok(ServerReplicationConfiguration::builder()
                        .set_server(s.get("server").map(server_in))
                        .set_server_replication_parameters(params)
                        .build())
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(ServerGroupReplicationConfiguration::builder()
                .set_server_group_id(string(g, "serverGroupId"))
                .set_server_replication_configurations(Some(servers))
                .build())
        })
        .collect()
}

// ------------------------------------------------------------------------------ output JSON

fn summary_json(s: &AppSummary) -> Value {
    let mut m = Map::new();
    let text = |v: Option<&str>| v.map(Value::from);
    put(&mut m, "appId", text(s.app_id()));
    put(&mut m, "importedAppId", text(s.imported_app_id()));
    put(&mut m, "name", text(s.name()));
    put(&mut m, "description", text(s.description()));
    put(&mut m, "status", s.status().map(|v| v.as_str().into()));
    put(&mut m, "statusMessage", text(s.status_message()));
    put(
        &mut m,
        "replicationConfigurationStatus",
        s.replication_configuration_status()
            .map(|v| v.as_str().into()),
    );
    put(
        &mut m,
        "replicationStatus",
        s.replication_status().map(|v| v.as_str().into()),
    );
    put(
        &mut m,
        "replicationStatusMessage",
        text(s.replication_status_message()),
    );
    put(
        &mut m,
        "latestReplicationTime",
        s.latest_replication_time().map(time_json),
    );
    put(
        &mut m,
        "launchConfigurationStatus",
        s.launch_configuration_status().map(|v| v.as_str().into()),
    );
    put(
        &mut m,
        "launchStatus",
        s.launch_status().map(|v| v.as_str().into()),
    );
    put(
        &mut m,
        "launchStatusMessage",
        text(s.launch_status_message()),
    );
    put(&mut m, "creationTime", s.creation_time().map(time_json));
    put(&mut m, "lastModified", s.last_modified().map(time_json));
    put(&mut m, "roleName", text(s.role_name()));
    put(
        &mut m,
        "totalServerGroups",
        s.total_server_groups().map(Value::from),
    );
    put(&mut m, "totalServers", s.total_servers().map(Value::from));
    Value::Object(m)
}

fn group_json(g: &ServerGroup) -> Value {
    let mut m = Map::new();
    put(
        &mut m,
        "serverGroupId",
        g.server_group_id().map(Value::from),
    );
    put(&mut m, "name", g.name().map(Value::from));
    m.insert(
        "serverList".into(),
        Value::Array(g.server_list().iter().map(server_json).collect()),
    );
    Value::Object(m)
}

fn tag_json(t: &Tag) -> Value {
    let mut m = Map::new();
    put(&mut m, "key", t.key().map(Value::from));
    put(&mut m, "value", t.value().map(Value::from));
    Value::Object(m)
}

fn app_json(summary: Option<&AppSummary>, groups: &[ServerGroup], tags: &[Tag]) -> Value {
    let mut m = Map::new();
    put(&mut m, "appSummary", summary.map(summary_json));
    m.insert(
        "serverGroups".into(),
        Value::Array(groups.iter().map(group_json).collect()),
    );
    m.insert(
        "tags".into(),
        Value::Array(tags.iter().map(tag_json).collect()),
    );
    Value::Object(m)
}

fn config_json(g: &ServerGroupReplicationConfiguration) -> Value {
    let servers = g
        .server_replication_configurations()
        .iter()
        .map(|s| {
            let mut m = Map::new();
            put(&mut m, "server", s.server().map(server_json));
            if let Some(p) = s.server_replication_parameters() {
                let mut pm = Map::new();
                put(&mut pm, "seedTime", p.seed_time().map(time_json));
                put(&mut pm, "frequency", p.frequency().map(Value::from));
                put(&mut pm, "runOnce", p.run_once().map(Value::from));
                put(
                    &mut pm,
                    "licenseType",
                    p.license_type().map(|v| v.as_str().into()),
                );
                put(
                    &mut pm,
                    "numberOfRecentAmisToKeep",
                    p.number_of_recent_amis_to_keep().map(Value::from),
                );
                put(&mut pm, "encrypted", p.encrypted().map(Value::from));
                put(&mut pm, "kmsKeyId", p.kms_key_id().map(Value::from));
                m.insert("serverReplicationParameters".into(), Value::Object(pm));
            }
            Value::Object(m)
        })
        .collect();
    let mut m = Map::new();
    put(
        &mut m,
        "serverGroupId",
        g.server_group_id().map(Value::from),
    );
    m.insert(
        "serverReplicationConfigurations".into(),
        Value::Array(servers),
    );
    Value::Object(m)
}
