//! The application operations (spec §2.3–2.4): their wire shapes and their dispatch onto the
//! core's use cases (`tern_core::service::apps`). Launch and validation configuration are in
//! [`crate::app_configs`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use tern_core::enums::*;
use tern_core::service as core;

use crate::wire::{epoch, EmptyResponse, Server};
use crate::{decode, encode, token, Api, ApiResult};

/// The application operations this release implements.
pub const OPERATIONS: &[&str] = &[
    "CreateApp",
    "GetApp",
    "ListApps",
    "UpdateApp",
    "DeleteApp",
    "StartAppReplication",
    "StartOnDemandAppReplication",
    "StopAppReplication",
    "PutAppReplicationConfiguration",
    "GetAppReplicationConfiguration",
    "DeleteAppReplicationConfiguration",
];

// ------------------------------------------------------------------------------ input shapes

/// `Server` in a request: only `serverId` matters (the rest comes from the catalog).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerIn {
    #[serde(default)]
    pub server_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroupIn {
    #[serde(default)]
    pub server_group_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub server_list: Option<Vec<ServerIn>>,
}

impl From<ServerGroupIn> for core::NewServerGroup {
    fn from(g: ServerGroupIn) -> Self {
        Self {
            server_group_id: g.server_group_id,
            name: g.name,
            server_ids: g
                .server_list
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.server_id)
                .collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagIn {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

impl From<TagIn> for core::NewTag {
    fn from(t: TagIn) -> Self {
        Self {
            key: t.key,
            value: t.value,
        }
    }
}

fn groups(g: Option<Vec<ServerGroupIn>>) -> Option<Vec<core::NewServerGroup>> {
    g.map(|g| g.into_iter().map(Into::into).collect())
}

fn tags(t: Option<Vec<TagIn>>) -> Option<Vec<core::NewTag>> {
    t.map(|t| t.into_iter().map(Into::into).collect())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateAppRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub role_name: Option<String>,
    #[serde(default)]
    pub client_token: Option<String>,
    #[serde(default)]
    pub server_groups: Option<Vec<ServerGroupIn>>,
    #[serde(default)]
    pub tags: Option<Vec<TagIn>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateAppRequest {
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub role_name: Option<String>,
    #[serde(default)]
    pub server_groups: Option<Vec<ServerGroupIn>>,
    #[serde(default)]
    pub tags: Option<Vec<TagIn>>,
}

/// Requests whose only member is `appId`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppIdRequest {
    #[serde(default)]
    pub app_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListAppsRequest {
    #[serde(default)]
    pub app_ids: Option<Vec<String>>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteAppRequest {
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub force_stop_app_replication: Option<bool>,
    #[serde(default)]
    pub force_terminate_app: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartOnDemandAppReplicationRequest {
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerReplicationParameters {
    #[serde(default, with = "epoch", skip_serializing_if = "Option::is_none")]
    pub seed_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_once: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_type: Option<LicenseType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_recent_amis_to_keep: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

impl From<ServerReplicationParameters> for core::ServerReplicationParameters {
    fn from(p: ServerReplicationParameters) -> Self {
        Self {
            seed_time: p.seed_time,
            frequency: p.frequency,
            run_once: p.run_once,
            license_type: p.license_type,
            number_of_recent_amis_to_keep: p.number_of_recent_amis_to_keep,
            encrypted: p.encrypted,
            kms_key_id: p.kms_key_id,
        }
    }
}

impl From<core::ServerReplicationParameters> for ServerReplicationParameters {
    fn from(p: core::ServerReplicationParameters) -> Self {
        Self {
            seed_time: p.seed_time,
            frequency: p.frequency,
            run_once: p.run_once,
            license_type: p.license_type,
            number_of_recent_amis_to_keep: p.number_of_recent_amis_to_keep,
            encrypted: p.encrypted,
            kms_key_id: p.kms_key_id,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerReplicationConfigurationIn {
    #[serde(default)]
    pub server: Option<ServerIn>,
    #[serde(default)]
    pub server_replication_parameters: Option<ServerReplicationParameters>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroupReplicationConfigurationIn {
    #[serde(default)]
    pub server_group_id: Option<String>,
    #[serde(default)]
    pub server_replication_configurations: Option<Vec<ServerReplicationConfigurationIn>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutAppReplicationConfigurationRequest {
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub server_group_replication_configurations: Option<Vec<ServerGroupReplicationConfigurationIn>>,
}

// ------------------------------------------------------------------------------ output shapes

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSummary {
    pub app_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imported_app_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub status: AppStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    pub replication_configuration_status: AppConfigurationStatus,
    pub replication_status: AppReplicationStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_status_message: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "epoch::serialize"
    )]
    pub latest_replication_time: Option<OffsetDateTime>,
    pub launch_configuration_status: AppConfigurationStatus,
    pub launch_status: AppLaunchStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_status_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_details: Option<LaunchDetails>,
    #[serde(serialize_with = "epoch::serialize")]
    pub creation_time: Option<OffsetDateTime>,
    #[serde(serialize_with = "epoch::serialize")]
    pub last_modified: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_name: Option<String>,
    pub total_server_groups: u32,
    pub total_servers: u32,
}

impl From<core::AppSummary> for AppSummary {
    fn from(s: core::AppSummary) -> Self {
        Self {
            app_id: s.app_id,
            imported_app_id: s.imported_app_id,
            name: s.name,
            description: s.description,
            status: s.status,
            status_message: s.status_message,
            replication_configuration_status: s.replication_configuration_status,
            replication_status: s.replication_status,
            replication_status_message: s.replication_status_message,
            latest_replication_time: s.latest_replication_time,
            launch_configuration_status: s.launch_configuration_status,
            launch_status: s.launch_status,
            launch_status_message: s.launch_status_message,
            launch_details: s.launch_details.map(|l| LaunchDetails {
                latest_launch_time: l.latest_launch_time,
                stack_name: l.stack_name,
                stack_id: l.stack_id,
            }),
            creation_time: Some(s.creation_time),
            last_modified: Some(s.last_modified),
            role_name: s.role_name,
            total_server_groups: s.total_server_groups,
            total_servers: s.total_servers,
        }
    }
}

/// SMS `LaunchDetails`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchDetails {
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "epoch::serialize"
    )]
    pub latest_launch_time: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<String>,
}

pub(crate) fn server(s: core::AppServerView) -> Server {
    Server {
        server_id: s.server_id,
        server_type: s.server_type,
        vm_server: s.vm_server.into(),
        replication_job_id: s.replication_job_id,
        replication_job_terminated: s.replication_job_terminated,
        cannot_replicate_reason: None,
        preflight_warnings: Vec::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroup {
    pub server_group_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub server_list: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// Output of CreateApp, GetApp and UpdateApp.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppResponse {
    pub app_summary: AppSummary,
    pub server_groups: Vec<ServerGroup>,
    pub tags: Vec<Tag>,
}

impl From<core::AppDetails> for AppResponse {
    fn from(d: core::AppDetails) -> Self {
        Self {
            app_summary: d.summary.into(),
            server_groups: d
                .server_groups
                .into_iter()
                .map(|g| ServerGroup {
                    server_group_id: g.server_group_id,
                    name: g.name,
                    server_list: g.servers.into_iter().map(server).collect(),
                })
                .collect(),
            tags: d
                .tags
                .into_iter()
                .map(|t| Tag {
                    key: t.key,
                    value: t.value,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListAppsResponse {
    pub apps: Vec<AppSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerReplicationConfiguration {
    pub server: Server,
    pub server_replication_parameters: ServerReplicationParameters,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroupReplicationConfiguration {
    pub server_group_id: String,
    pub server_replication_configurations: Vec<ServerReplicationConfiguration>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetAppReplicationConfigurationResponse {
    pub server_group_replication_configurations: Vec<ServerGroupReplicationConfiguration>,
}

// ------------------------------------------------------------------------------ dispatch

fn id(req: Option<String>) -> String {
    req.unwrap_or_default()
}

impl Api {
    /// Brings a launch that follows its stack (LAUNCH_IN_PROGRESS, TERMINATE_IN_PROGRESS) up to
    /// the stack's state before the application is shown: the stack moves on its own and
    /// nothing else asks it. Answers whether the status was looked up. A launcher that cannot
    /// answer now leaves the status as it was (logged), rather than failing the read.
    async fn follow_launch(&self, app: &core::AppSummary) -> bool {
        let moving = app.launch_status.follows_stack();
        let Some(launcher) = self.launcher.get().filter(|_| moving) else {
            return false;
        };
        match self
            .service()
            .sync_launch(launcher.as_ref(), &app.app_id)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(app_id = %app.app_id, error = %e, "cannot follow the launch's stack");
                false
            }
        }
    }

    /// One application operation (one of [`OPERATIONS`]).
    pub(crate) async fn apps(&self, op: &str, input: Value) -> ApiResult {
        let svc = self.service();
        match op {
            "CreateApp" => {
                let req: CreateAppRequest = decode(input)?;
                let app = svc
                    .create_app(core::NewApp {
                        name: req.name,
                        description: req.description,
                        role_name: req.role_name,
                        client_token: req.client_token,
                        server_groups: groups(req.server_groups),
                        tags: tags(req.tags),
                    })
                    .await?;
                encode(&AppResponse::from(app))
            }
            "GetApp" => {
                let req: AppIdRequest = decode(input)?;
                let app_id = id(req.app_id);
                let mut app = svc.get_app(&app_id).await?;
                if self.follow_launch(&app.summary).await {
                    app = svc.get_app(&app_id).await?;
                }
                encode(&AppResponse::from(app))
            }
            "ListApps" => {
                let req: ListAppsRequest = decode(input)?;
                let after = token::decode("apps", req.next_token.as_deref())?;
                let mut page = svc
                    .list_apps(req.app_ids.clone(), req.max_results, after.as_deref())
                    .await?;
                let mut moved = false;
                for app in &page.items {
                    moved |= self.follow_launch(app).await;
                }
                if moved {
                    page = svc
                        .list_apps(req.app_ids, req.max_results, after.as_deref())
                        .await?;
                }
                encode(&ListAppsResponse {
                    apps: page.items.into_iter().map(Into::into).collect(),
                    next_token: token::encode("apps", page.last),
                })
            }
            "UpdateApp" => {
                let req: UpdateAppRequest = decode(input)?;
                let app = svc
                    .update_app(core::AppUpdate {
                        app_id: id(req.app_id),
                        name: req.name,
                        description: req.description,
                        role_name: req.role_name,
                        server_groups: groups(req.server_groups),
                        tags: tags(req.tags),
                    })
                    .await?;
                encode(&AppResponse::from(app))
            }
            "DeleteApp" => {
                let req: DeleteAppRequest = decode(input)?;
                if req.force_terminate_app == Some(true) {
                    let launched = svc
                        .get_app(&id(req.app_id.clone()))
                        .await?
                        .summary
                        .launch_details
                        .is_some_and(|l| l.is_live());
                    if launched {
                        svc.terminate_app(self.launcher_for(op)?, &id(req.app_id.clone()))
                            .await?;
                    }
                }
                svc.delete_app(
                    &id(req.app_id),
                    req.force_stop_app_replication.unwrap_or(false),
                    req.force_terminate_app.unwrap_or(false),
                )
                .await?;
                encode(&EmptyResponse {})
            }
            "StartAppReplication" => {
                let req: AppIdRequest = decode(input)?;
                svc.start_app_replication(&id(req.app_id)).await?;
                encode(&EmptyResponse {})
            }
            "StartOnDemandAppReplication" => {
                let req: StartOnDemandAppReplicationRequest = decode(input)?;
                svc.start_on_demand_app_replication(&id(req.app_id), req.description)
                    .await?;
                encode(&EmptyResponse {})
            }
            "StopAppReplication" => {
                let req: AppIdRequest = decode(input)?;
                svc.stop_app_replication(&id(req.app_id)).await?;
                encode(&EmptyResponse {})
            }
            "PutAppReplicationConfiguration" => {
                let req: PutAppReplicationConfigurationRequest = decode(input)?;
                let groups = req
                    .server_group_replication_configurations
                    .unwrap_or_default()
                    .into_iter()
                    .map(|g| core::GroupReplication {
                        server_group_id: g.server_group_id,
                        servers: g
                            .server_replication_configurations
                            .unwrap_or_default()
                            .into_iter()
                            .map(|s| core::ServerReplication {
                                server_id: s.server.and_then(|s| s.server_id),
                                parameters: s.server_replication_parameters.map(Into::into),
                            })
                            .collect(),
                    })
                    .collect();
                svc.put_app_replication_configuration(&id(req.app_id), groups)
                    .await?;
                encode(&EmptyResponse {})
            }
            "GetAppReplicationConfiguration" => {
                let req: AppIdRequest = decode(input)?;
                let groups = svc
                    .get_app_replication_configuration(&id(req.app_id))
                    .await?;
                encode(&GetAppReplicationConfigurationResponse {
                    server_group_replication_configurations: groups
                        .into_iter()
                        .map(|g| ServerGroupReplicationConfiguration {
                            server_group_id: g.server_group_id,
                            server_replication_configurations: g
                                .servers
                                .into_iter()
                                .map(|(s, p)| ServerReplicationConfiguration {
                                    server: server(s),
                                    server_replication_parameters: p.into(),
                                })
                                .collect(),
                        })
                        .collect(),
                })
            }
            "DeleteAppReplicationConfiguration" => {
                let req: AppIdRequest = decode(input)?;
                svc.delete_app_replication_configuration(&id(req.app_id))
                    .await?;
                encode(&EmptyResponse {})
            }
            other => Err(crate::ApiError::unknown_operation(other)),
        }
    }
}
