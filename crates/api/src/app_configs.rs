//! Launch and validation configuration of applications, templates and change sets (spec
//! §2.5–2.7): wire shapes and dispatch onto `tern_core::service::apps`. Templates and change
//! sets are written to the staging bucket of the attached replication workflow; without one
//! (a host that runs no replication) they answer "not available".

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use tern_core::enums::*;
use tern_core::service as core;

use crate::apps::server;
use crate::wire::{epoch, EmptyResponse, Server};
use crate::{decode, encode, Api, ApiResult};

/// The operations of this module.
pub const OPERATIONS: &[&str] = &[
    "PutAppLaunchConfiguration",
    "GetAppLaunchConfiguration",
    "DeleteAppLaunchConfiguration",
    "PutAppValidationConfiguration",
    "GetAppValidationConfiguration",
    "DeleteAppValidationConfiguration",
    "GetAppValidationOutput",
    "NotifyAppValidationOutput",
    "GenerateTemplate",
    "GenerateChangeSet",
    "ImportAppCatalog",
    "LaunchApp",
    "TerminateApp",
];

/// `Server` in a request: only `serverId` matters.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRef {
    #[serde(default)]
    pub server_id: Option<String>,
}

/// SMS `S3Location` (in and out: the core's shape is the wire's).
pub type S3Location = core::S3Location;

/// SMS `UserData` and `Source` (both hold one `s3Location`).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Located {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_location: Option<S3Location>,
}

fn located(l: Option<Located>) -> Option<S3Location> {
    l.and_then(|l| l.s3_location)
}

fn locate(l: Option<S3Location>) -> Option<Located> {
    l.map(|l| Located {
        s3_location: Some(l),
    })
}

// ------------------------------------------------------------------------------ launch

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerLaunchConfigurationIn {
    #[serde(default)]
    pub server: Option<ServerRef>,
    #[serde(default)]
    pub logical_id: Option<String>,
    #[serde(default)]
    pub vpc: Option<String>,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub security_group: Option<String>,
    #[serde(default)]
    pub ec2_key_name: Option<String>,
    #[serde(default)]
    pub user_data: Option<Located>,
    #[serde(default)]
    pub instance_type: Option<String>,
    #[serde(default)]
    pub associate_public_ip_address: Option<bool>,
    #[serde(default)]
    pub iam_instance_profile_name: Option<String>,
    #[serde(default)]
    pub configure_script: Option<S3Location>,
    #[serde(default)]
    pub configure_script_type: Option<ScriptType>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroupLaunchConfigurationIn {
    #[serde(default)]
    pub server_group_id: Option<String>,
    #[serde(default)]
    pub launch_order: Option<i64>,
    #[serde(default)]
    pub server_launch_configurations: Option<Vec<ServerLaunchConfigurationIn>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutAppLaunchConfigurationRequest {
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub role_name: Option<String>,
    #[serde(default)]
    pub auto_launch: Option<bool>,
    #[serde(default)]
    pub server_group_launch_configurations: Option<Vec<ServerGroupLaunchConfigurationIn>>,
}

impl From<PutAppLaunchConfigurationRequest> for core::LaunchConfiguration {
    fn from(r: PutAppLaunchConfigurationRequest) -> Self {
        Self {
            role_name: r.role_name,
            auto_launch: r.auto_launch.unwrap_or(false),
            server_groups: r
                .server_group_launch_configurations
                .unwrap_or_default()
                .into_iter()
                .map(|g| core::ServerGroupLaunchConfiguration {
                    server_group_id: g.server_group_id,
                    launch_order: g.launch_order,
                    servers: g
                        .server_launch_configurations
                        .unwrap_or_default()
                        .into_iter()
                        .map(|s| core::ServerLaunchConfiguration {
                            server_id: s.server.and_then(|s| s.server_id),
                            logical_id: s.logical_id,
                            vpc: s.vpc,
                            subnet: s.subnet,
                            security_group: s.security_group,
                            ec2_key_name: s.ec2_key_name,
                            user_data: s.user_data.map(|u| core::UserData {
                                s3_location: u.s3_location,
                            }),
                            instance_type: s.instance_type,
                            associate_public_ip_address: s.associate_public_ip_address,
                            iam_instance_profile_name: s.iam_instance_profile_name,
                            configure_script: s.configure_script,
                            configure_script_type: s.configure_script_type,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerLaunchConfiguration {
    pub server: Server,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ec2_key_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<Located>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub associate_public_ip_address: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configure_script: Option<S3Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configure_script_type: Option<ScriptType>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroupLaunchConfiguration {
    pub server_group_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_order: Option<i64>,
    pub server_launch_configurations: Vec<ServerLaunchConfiguration>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetAppLaunchConfigurationResponse {
    pub app_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_launch: Option<bool>,
    pub server_group_launch_configurations: Vec<ServerGroupLaunchConfiguration>,
}

impl From<core::LaunchConfigurationView> for GetAppLaunchConfigurationResponse {
    fn from(v: core::LaunchConfigurationView) -> Self {
        Self {
            app_id: v.app_id,
            role_name: v.role_name,
            auto_launch: v.auto_launch,
            server_group_launch_configurations: v
                .server_groups
                .into_iter()
                .map(|g| ServerGroupLaunchConfiguration {
                    server_group_id: g.server_group_id,
                    launch_order: g.launch_order,
                    server_launch_configurations: g
                        .servers
                        .into_iter()
                        .map(|(s, c)| ServerLaunchConfiguration {
                            server: server(s),
                            logical_id: c.logical_id,
                            vpc: c.vpc,
                            subnet: c.subnet,
                            security_group: c.security_group,
                            ec2_key_name: c.ec2_key_name,
                            user_data: locate(c.user_data.and_then(|u| u.s3_location)),
                            instance_type: c.instance_type,
                            associate_public_ip_address: c.associate_public_ip_address,
                            iam_instance_profile_name: c.iam_instance_profile_name,
                            configure_script: c.configure_script,
                            configure_script_type: c.configure_script_type,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

// ------------------------------------------------------------------------------ validation

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SsmValidationParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Located>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_type: Option<ScriptType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_s3_bucket_name: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppValidationConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_validation_strategy: Option<AppValidationStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm_validation_parameters: Option<SsmValidationParameters>,
}

impl From<AppValidationConfiguration> for core::AppValidation {
    fn from(v: AppValidationConfiguration) -> Self {
        Self {
            validation_id: v.validation_id,
            name: v.name,
            app_validation_strategy: v.app_validation_strategy,
            ssm_validation_parameters: v.ssm_validation_parameters.map(|p| {
                core::SsmValidationParameters {
                    source: located(p.source),
                    instance_id: p.instance_id,
                    script_type: p.script_type,
                    command: p.command,
                    execution_timeout_seconds: p.execution_timeout_seconds,
                    output_s3_bucket_name: p.output_s3_bucket_name,
                }
            }),
        }
    }
}

impl From<core::AppValidation> for AppValidationConfiguration {
    fn from(v: core::AppValidation) -> Self {
        Self {
            validation_id: v.validation_id,
            name: v.name,
            app_validation_strategy: v.app_validation_strategy,
            ssm_validation_parameters: v.ssm_validation_parameters.map(|p| {
                SsmValidationParameters {
                    source: locate(p.source),
                    instance_id: p.instance_id,
                    script_type: p.script_type,
                    command: p.command,
                    execution_timeout_seconds: p.execution_timeout_seconds,
                    output_s3_bucket_name: p.output_s3_bucket_name,
                }
            }),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDataValidationParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Located>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_type: Option<ScriptType>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerValidationConfigurationIn {
    #[serde(default)]
    pub server: Option<ServerRef>,
    #[serde(default)]
    pub validation_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub server_validation_strategy: Option<ServerValidationStrategy>,
    #[serde(default)]
    pub user_data_validation_parameters: Option<UserDataValidationParameters>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroupValidationConfigurationIn {
    #[serde(default)]
    pub server_group_id: Option<String>,
    #[serde(default)]
    pub server_validation_configurations: Option<Vec<ServerValidationConfigurationIn>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutAppValidationConfigurationRequest {
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub app_validation_configurations: Option<Vec<AppValidationConfiguration>>,
    #[serde(default)]
    pub server_group_validation_configurations: Option<Vec<ServerGroupValidationConfigurationIn>>,
}

impl From<PutAppValidationConfigurationRequest> for core::ValidationConfiguration {
    fn from(r: PutAppValidationConfigurationRequest) -> Self {
        Self {
            app_validations: r
                .app_validation_configurations
                .unwrap_or_default()
                .into_iter()
                .map(Into::into)
                .collect(),
            server_group_validations: r
                .server_group_validation_configurations
                .unwrap_or_default()
                .into_iter()
                .map(|g| core::ServerGroupValidation {
                    server_group_id: g.server_group_id,
                    servers: g
                        .server_validation_configurations
                        .unwrap_or_default()
                        .into_iter()
                        .map(|s| core::ServerValidation {
                            server_id: s.server.and_then(|s| s.server_id),
                            validation_id: s.validation_id,
                            name: s.name,
                            server_validation_strategy: s.server_validation_strategy,
                            user_data_validation_parameters: s.user_data_validation_parameters.map(
                                |p| core::UserDataValidationParameters {
                                    source: located(p.source),
                                    script_type: p.script_type,
                                },
                            ),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerValidationConfiguration {
    pub server: Server,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_validation_strategy: Option<ServerValidationStrategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data_validation_parameters: Option<UserDataValidationParameters>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroupValidationConfiguration {
    pub server_group_id: String,
    pub server_validation_configurations: Vec<ServerValidationConfiguration>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetAppValidationConfigurationResponse {
    pub app_validation_configurations: Vec<AppValidationConfiguration>,
    pub server_group_validation_configurations: Vec<ServerGroupValidationConfiguration>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerValidationOutput {
    pub server: Server,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationOutput {
    pub validation_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub status: ValidationStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "epoch::serialize"
    )]
    pub latest_validation_time: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_validation_output: Option<ServerValidationOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_validation_output: Option<AppValidationOutput>,
}

/// SMS `AppValidationOutput`: where an SSM validation's output was kept.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppValidationOutput {
    pub ssm_output: SsmOutput,
}

/// SMS `SSMOutput`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SsmOutput {
    pub s3_location: core::S3Location,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetAppValidationOutputResponse {
    pub validation_output_list: Vec<ValidationOutput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationContextIn {
    #[serde(default)]
    pub validation_id: Option<String>,
    #[serde(default)]
    pub status: Option<ValidationStatus>,
    #[serde(default)]
    pub status_message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyAppValidationOutputRequest {
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub notification_context: Option<NotificationContextIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateRequest {
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub template_format: Option<OutputFormat>,
    #[serde(default)]
    pub changeset_format: Option<OutputFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportAppCatalogRequest {
    #[serde(default)]
    pub role_name: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct S3LocationResponse {
    pub s3_location: S3Location,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppIdRequest {
    #[serde(default)]
    app_id: Option<String>,
}

// ------------------------------------------------------------------------------ dispatch

impl Api {
    /// One operation of [`OPERATIONS`].
    pub(crate) async fn app_configs(&self, op: &str, input: Value) -> ApiResult {
        let svc = self.service();
        let app_id = |input: &Value| -> Result<String, crate::ApiError> {
            let r: AppIdRequest = decode(input.clone())?;
            Ok(r.app_id.unwrap_or_default())
        };
        // The request is checked before the host's launcher or staging bucket is asked for,
        // so a malformed request is told so wherever it is sent.
        let required_app_id = |id: Option<String>| -> Result<String, crate::ApiError> {
            match id {
                Some(id) if !id.trim().is_empty() => Ok(id),
                _ => Err(crate::ApiError::missing("appId is required")),
            }
        };
        match op {
            "PutAppLaunchConfiguration" => {
                let req: PutAppLaunchConfigurationRequest = decode(input)?;
                let id = req.app_id.clone().unwrap_or_default();
                svc.put_app_launch_configuration(&id, req.into()).await?;
                encode(&EmptyResponse {})
            }
            "GetAppLaunchConfiguration" => {
                let v = svc.get_app_launch_configuration(&app_id(&input)?).await?;
                encode(&GetAppLaunchConfigurationResponse::from(v))
            }
            "DeleteAppLaunchConfiguration" => {
                svc.delete_app_launch_configuration(&app_id(&input)?)
                    .await?;
                encode(&EmptyResponse {})
            }
            "PutAppValidationConfiguration" => {
                let req: PutAppValidationConfigurationRequest = decode(input)?;
                let id = req.app_id.clone().unwrap_or_default();
                svc.put_app_validation_configuration(&id, req.into())
                    .await?;
                encode(&EmptyResponse {})
            }
            "GetAppValidationConfiguration" => {
                let (config, views) = svc
                    .get_app_validation_configuration(&app_id(&input)?)
                    .await?;
                let groups = config
                    .server_group_validations
                    .into_iter()
                    .zip(views)
                    .map(|(g, views)| ServerGroupValidationConfiguration {
                        server_group_id: g.server_group_id.unwrap_or_default(),
                        server_validation_configurations: g
                            .servers
                            .into_iter()
                            .zip(views)
                            .map(|(v, s)| ServerValidationConfiguration {
                                server: server(s),
                                validation_id: v.validation_id,
                                name: v.name,
                                server_validation_strategy: v.server_validation_strategy,
                                user_data_validation_parameters: v
                                    .user_data_validation_parameters
                                    .map(|p| UserDataValidationParameters {
                                        source: locate(p.source),
                                        script_type: p.script_type,
                                    }),
                            })
                            .collect(),
                    })
                    .collect();
                encode(&GetAppValidationConfigurationResponse {
                    app_validation_configurations: config
                        .app_validations
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                    server_group_validation_configurations: groups,
                })
            }
            "DeleteAppValidationConfiguration" => {
                svc.delete_app_validation_configuration(&app_id(&input)?)
                    .await?;
                encode(&EmptyResponse {})
            }
            "GetAppValidationOutput" => {
                // With a launcher and a staging store, the launched application's validations
                // move as they are read (consoles read, SSM commands sent and followed).
                let runner = match (self.launcher.get(), self.replication.get()) {
                    (Some(l), Some(r)) => Some(core::ValidationRunner {
                        launcher: l.as_ref(),
                        staging: r.staging(),
                    }),
                    _ => None,
                };
                let list = svc
                    .get_app_validation_output(runner, &app_id(&input)?)
                    .await?;
                encode(&GetAppValidationOutputResponse {
                    validation_output_list: list
                        .into_iter()
                        .map(|o| ValidationOutput {
                            validation_id: o.validation_id,
                            name: o.name,
                            status: o.status,
                            status_message: o.status_message,
                            latest_validation_time: o.latest_validation_time,
                            server_validation_output: o
                                .server
                                .map(|s| ServerValidationOutput { server: server(s) }),
                            app_validation_output: o.output.map(|s3_location| {
                                AppValidationOutput {
                                    ssm_output: SsmOutput { s3_location },
                                }
                            }),
                        })
                        .collect(),
                })
            }
            "NotifyAppValidationOutput" => {
                let req: NotifyAppValidationOutputRequest = decode(input)?;
                let ctx = req.notification_context.map(|c| core::NotificationContext {
                    validation_id: c.validation_id,
                    status: c.status,
                    status_message: c.status_message,
                });
                svc.notify_app_validation_output(&req.app_id.unwrap_or_default(), ctx)
                    .await?;
                encode(&EmptyResponse {})
            }
            "GenerateTemplate" | "GenerateChangeSet" => {
                let req: GenerateRequest = decode(input)?;
                let id = required_app_id(req.app_id)?;
                let r = self.replication_for(op)?;
                let bucket = &r.settings().staging_bucket;
                let loc = if op == "GenerateTemplate" {
                    svc.generate_template(r.staging(), bucket, &id, req.template_format)
                        .await?
                } else {
                    svc.generate_change_set(r.staging(), bucket, &id, req.changeset_format)
                        .await?
                };
                encode(&S3LocationResponse { s3_location: loc })
            }
            "LaunchApp" => {
                let id = required_app_id(Some(app_id(&input)?))?;
                let launcher = self.launcher_for(op)?;
                let r = self.replication_for(op)?;
                svc.launch_app(launcher, r.staging(), &id).await?;
                encode(&EmptyResponse {})
            }
            "TerminateApp" => {
                let id = required_app_id(Some(app_id(&input)?))?;
                let launcher = self.launcher_for(op)?;
                svc.terminate_app(launcher, &id).await?;
                encode(&EmptyResponse {})
            }
            "ImportAppCatalog" => {
                let req: ImportAppCatalogRequest = decode(input)?;
                svc.import_app_catalog(req.role_name).await?;
                encode(&EmptyResponse {})
            }
            other => Err(crate::ApiError::unknown_operation(other)),
        }
    }
}
