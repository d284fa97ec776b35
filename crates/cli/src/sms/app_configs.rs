//! `tern sms` subcommands of launch and validation configuration, templates, ImportAppCatalog,
//! LaunchApp and TerminateApp, named and optioned as `aws sms` has them. Structure-valued
//! options take the SMS wire JSON, inline or as `file://PATH`, as the AWS CLI does; output is
//! the response in the SMS wire JSON.

use anyhow::bail;
use aws_sdk_sms::types::{
    AppValidationConfiguration, AppValidationStrategy, NotificationContext, OutputFormat,
    S3Location, ScriptType, ServerGroupLaunchConfiguration, ServerGroupValidationConfiguration,
    ServerLaunchConfiguration, ServerValidationConfiguration, ServerValidationStrategy, Source,
    SsmValidationParameters, UserData, UserDataValidationParameters, ValidationStatus,
};
use aws_sdk_sms::Client;
use serde_json::{Map, Value};

use super::apps::{json_arg, list, server_in, string};
use super::{flag_pair, put, server_json, time_json, Failure, Global};

/// The subcommands of this module.
#[derive(clap::Subcommand, Debug)]
pub enum AppConfigCommand {
    /// Set an application's launch configuration (replaces the stored one).
    PutAppLaunchConfiguration {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
        /// Role CloudFormation assumes to launch the application.
        #[arg(long)]
        role_name: Option<String>,
        /// Launch once every server has replicated.
        #[arg(long, overrides_with = "no_auto_launch")]
        auto_launch: bool,
        #[arg(long)]
        no_auto_launch: bool,
        /// JSON list of ServerGroupLaunchConfiguration, or file://PATH.
        #[arg(long)]
        server_group_launch_configurations: Option<String>,
    },
    /// Describe an application's launch configuration.
    GetAppLaunchConfiguration {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
    /// Remove an application's launch configuration.
    DeleteAppLaunchConfiguration {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
    /// Set an application's validation configuration (replaces the stored one).
    PutAppValidationConfiguration {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
        /// JSON list of AppValidationConfiguration, or file://PATH.
        #[arg(long)]
        app_validation_configurations: Option<String>,
        /// JSON list of ServerGroupValidationConfiguration, or file://PATH.
        #[arg(long)]
        server_group_validation_configurations: Option<String>,
    },
    /// Describe an application's validation configuration.
    GetAppValidationConfiguration {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
    /// Remove an application's validation configuration and its outcomes.
    DeleteAppValidationConfiguration {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
    /// The latest outcome of each of an application's validations.
    GetAppValidationOutput {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
    /// Report the outcome of a validation.
    NotifyAppValidationOutput {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
        /// JSON `{"validationId":..,"status":..,"statusMessage":..}`, or file://PATH.
        #[arg(long)]
        notification_context: Option<String>,
    },
    /// Write the application's CloudFormation template to the staging bucket.
    GenerateTemplate {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
        /// JSON or YAML.
        #[arg(long, value_parser = parse_format)]
        template_format: Option<OutputFormat>,
    },
    /// Write what a relaunch on the newest AMIs would change to the staging bucket.
    GenerateChangeSet {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
        /// JSON or YAML.
        #[arg(long, value_parser = parse_format)]
        changeset_format: Option<OutputFormat>,
    },
    /// Make applications of the catalog's application definitions.
    ImportAppCatalog {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        role_name: Option<String>,
    },
    /// Launch the application from its launch configuration.
    LaunchApp {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
    /// Terminate the application's launched stack.
    TerminateApp {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        app_id: String,
    },
}

fn parse_format(s: &str) -> Result<OutputFormat, String> {
    match s {
        "JSON" => Ok(OutputFormat::Json),
        "YAML" => Ok(OutputFormat::Yaml),
        other => Err(format!("{other:?} is not an output format (JSON or YAML)")),
    }
}

impl AppConfigCommand {
    pub(super) fn global(&self) -> &Global {
        use AppConfigCommand::*;
        match self {
            PutAppLaunchConfiguration { global, .. }
            | GetAppLaunchConfiguration { global, .. }
            | DeleteAppLaunchConfiguration { global, .. }
            | PutAppValidationConfiguration { global, .. }
            | GetAppValidationConfiguration { global, .. }
            | DeleteAppValidationConfiguration { global, .. }
            | GetAppValidationOutput { global, .. }
            | NotifyAppValidationOutput { global, .. }
            | GenerateTemplate { global, .. }
            | GenerateChangeSet { global, .. }
            | ImportAppCatalog { global, .. }
            | LaunchApp { global, .. }
            | TerminateApp { global, .. } => global,
        }
    }

    pub(super) fn operation(&self) -> &'static str {
        use AppConfigCommand::*;
        match self {
            PutAppLaunchConfiguration { .. } => "PutAppLaunchConfiguration",
            GetAppLaunchConfiguration { .. } => "GetAppLaunchConfiguration",
            DeleteAppLaunchConfiguration { .. } => "DeleteAppLaunchConfiguration",
            PutAppValidationConfiguration { .. } => "PutAppValidationConfiguration",
            GetAppValidationConfiguration { .. } => "GetAppValidationConfiguration",
            DeleteAppValidationConfiguration { .. } => "DeleteAppValidationConfiguration",
            GetAppValidationOutput { .. } => "GetAppValidationOutput",
            NotifyAppValidationOutput { .. } => "NotifyAppValidationOutput",
            GenerateTemplate { .. } => "GenerateTemplate",
            GenerateChangeSet { .. } => "GenerateChangeSet",
            ImportAppCatalog { .. } => "ImportAppCatalog",
            LaunchApp { .. } => "LaunchApp",
            TerminateApp { .. } => "TerminateApp",
        }
    }
}

pub(super) async fn execute(
    client: &Client,
    cmd: AppConfigCommand,
) -> Result<Option<Value>, Failure> {
    use AppConfigCommand::*;
    let out = match cmd {
        PutAppLaunchConfiguration {
            app_id,
            role_name,
            auto_launch,
            no_auto_launch,
            server_group_launch_configurations,
            ..
        } => {
            client
                .put_app_launch_configuration()
                .app_id(app_id)
                .set_role_name(role_name)
                .set_auto_launch(flag_pair(auto_launch, no_auto_launch))
                .set_server_group_launch_configurations(
                    server_group_launch_configurations
                        .as_deref()
                        .map(launch_groups_in)
                        .transpose()?,
                )
                .send()
                .await?;
            None
        }
        GetAppLaunchConfiguration { app_id, .. } => {
            let o = client
                .get_app_launch_configuration()
                .app_id(app_id)
                .send()
                .await?;
            let mut m = Map::new();
            put(&mut m, "appId", o.app_id().map(Value::from));
            put(&mut m, "roleName", o.role_name().map(Value::from));
            put(&mut m, "autoLaunch", o.auto_launch().map(Value::from));
            m.insert(
                "serverGroupLaunchConfigurations".into(),
                o.server_group_launch_configurations()
                    .iter()
                    .map(launch_group_json)
                    .collect(),
            );
            Some(Value::Object(m))
        }
        DeleteAppLaunchConfiguration { app_id, .. } => {
            client
                .delete_app_launch_configuration()
                .app_id(app_id)
                .send()
                .await?;
            None
        }
        PutAppValidationConfiguration {
            app_id,
            app_validation_configurations,
            server_group_validation_configurations,
            ..
        } => {
            client
                .put_app_validation_configuration()
                .app_id(app_id)
                .set_app_validation_configurations(
                    app_validation_configurations
                        .as_deref()
                        .map(app_validations_in)
                        .transpose()?,
                )
                .set_server_group_validation_configurations(
                    server_group_validation_configurations
                        .as_deref()
                        .map(server_validations_in)
                        .transpose()?,
                )
                .send()
                .await?;
            None
        }
        GetAppValidationConfiguration { app_id, .. } => {
            let o = client
                .get_app_validation_configuration()
                .app_id(app_id)
                .send()
                .await?;
            let mut m = Map::new();
            m.insert(
                "appValidationConfigurations".into(),
                o.app_validation_configurations()
                    .iter()
                    .map(app_validation_json)
                    .collect(),
            );
            m.insert(
                "serverGroupValidationConfigurations".into(),
                o.server_group_validation_configurations()
                    .iter()
                    .map(|g| {
                        let mut m = Map::new();
                        put(
                            &mut m,
                            "serverGroupId",
                            g.server_group_id().map(Value::from),
                        );
                        m.insert(
                            "serverValidationConfigurations".into(),
                            g.server_validation_configurations()
                                .iter()
                                .map(server_validation_json)
                                .collect(),
                        );
                        Value::Object(m)
                    })
                    .collect(),
            );
            Some(Value::Object(m))
        }
        DeleteAppValidationConfiguration { app_id, .. } => {
            client
                .delete_app_validation_configuration()
                .app_id(app_id)
                .send()
                .await?;
            None
        }
        GetAppValidationOutput { app_id, .. } => {
            let o = client
                .get_app_validation_output()
                .app_id(app_id)
                .send()
                .await?;
            let list = o
                .validation_output_list()
                .iter()
                .map(|v| {
                    let mut m = Map::new();
                    put(&mut m, "validationId", v.validation_id().map(Value::from));
                    put(&mut m, "name", v.name().map(Value::from));
                    put(&mut m, "status", v.status().map(|s| s.as_str().into()));
                    put(&mut m, "statusMessage", v.status_message().map(Value::from));
                    put(
                        &mut m,
                        "latestValidationTime",
                        v.latest_validation_time().map(time_json),
                    );
                    put(
                        &mut m,
                        "serverValidationOutput",
                        v.server_validation_output().map(|s| {
                            let mut o = Map::new();
                            put(&mut o, "server", s.server().map(server_json));
                            Value::Object(o)
                        }),
                    );
                    Value::Object(m)
                })
                .collect();
            let mut m = Map::new();
            m.insert("validationOutputList".into(), list);
            Some(Value::Object(m))
        }
        NotifyAppValidationOutput {
            app_id,
            notification_context,
            ..
        } => {
            client
                .notify_app_validation_output()
                .app_id(app_id)
                .set_notification_context(
                    notification_context
                        .as_deref()
                        .map(notification_in)
                        .transpose()?,
                )
                .send()
                .await?;
            None
        }
        GenerateTemplate {
            app_id,
            template_format,
            ..
        } => {
            let o = client
                .generate_template()
                .app_id(app_id)
                .set_template_format(template_format)
                .send()
                .await?;
            Some(location_out(o.s3_location()))
        }
        GenerateChangeSet {
            app_id,
            changeset_format,
            ..
        } => {
            let o = client
                .generate_change_set()
                .app_id(app_id)
                .set_changeset_format(changeset_format)
                .send()
                .await?;
            Some(location_out(o.s3_location()))
        }
        ImportAppCatalog { role_name, .. } => {
            client
                .import_app_catalog()
                .set_role_name(role_name)
                .send()
                .await?;
            None
        }
        LaunchApp { app_id, .. } => {
            client.launch_app().app_id(app_id).send().await?;
            None
        }
        TerminateApp { app_id, .. } => {
            client.terminate_app().app_id(app_id).send().await?;
            None
        }
    };
    Ok(out)
}

// ------------------------------------------------------------------------------ input JSON

fn location_in(v: Option<&Value>) -> Option<S3Location> {
    v.map(|l| {
        S3Location::builder()
            .set_bucket(string(l, "bucket"))
            .set_key(string(l, "key"))
            .build()
    })
}

/// `{"s3Location": …}` (UserData, Source).
fn located_in(v: Option<&Value>) -> Option<S3Location> {
    v.and_then(|v| location_in(v.get("s3Location")))
}

fn script_type(option: &str, v: &Value) -> anyhow::Result<Option<ScriptType>> {
    match v.as_str() {
        None => Ok(None),
        Some("SHELL_SCRIPT") => Ok(Some(ScriptType::ShellScript)),
        Some("POWERSHELL_SCRIPT") => Ok(Some(ScriptType::PowershellScript)),
        Some(other) => bail!("--{option}: {other:?} is not SHELL_SCRIPT or POWERSHELL_SCRIPT"),
    }
}

fn items(option: &str, v: Option<&Value>) -> anyhow::Result<Vec<Value>> {
    match v {
        None => Ok(Vec::new()),
        Some(v) => list(option, v.clone()),
    }
}

fn launch_groups_in(text: &str) -> anyhow::Result<Vec<ServerGroupLaunchConfiguration>> {
    let option = "server-group-launch-configurations";
    list(option, json_arg(option, text)?)?
        .iter()
        .map(|g| {
            let servers = items(option, g.get("serverLaunchConfigurations"))?
                .iter()
                .map(|s| {
                    Ok(ServerLaunchConfiguration::builder()
                        .set_server(s.get("server").map(server_in))
                        .set_logical_id(string(s, "logicalId"))
                        .set_vpc(string(s, "vpc"))
                        .set_subnet(string(s, "subnet"))
                        .set_security_group(string(s, "securityGroup"))
                        .set_ec2_key_name(string(s, "ec2KeyName"))
                        .set_user_data(s.get("userData").map(|u| {
                            UserData::builder()
                                .set_s3_location(location_in(u.get("s3Location")))
                                .build()
                        }))
                        .set_instance_type(string(s, "instanceType"))
                        .set_associate_public_ip_address(
                            s.get("associatePublicIpAddress").and_then(Value::as_bool),
                        )
                        .set_iam_instance_profile_name(string(s, "iamInstanceProfileName"))
                        .set_configure_script(location_in(s.get("configureScript")))
                        .set_configure_script_type(script_type(
                            option,
                            s.get("configureScriptType").unwrap_or(&Value::Null),
                        )?)
                        .build())
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(ServerGroupLaunchConfiguration::builder()
                .set_server_group_id(string(g, "serverGroupId"))
                .set_launch_order(
                    g.get("launchOrder")
                        .and_then(Value::as_i64)
                        .map(|n| n as i32),
                )
                .set_server_launch_configurations(Some(servers))
                .build())
        })
        .collect()
}

fn app_validations_in(text: &str) -> anyhow::Result<Vec<AppValidationConfiguration>> {
    let option = "app-validation-configurations";
    list(option, json_arg(option, text)?)?
        .iter()
        .map(|v| {
            let strategy = match v.get("appValidationStrategy").and_then(Value::as_str) {
                None => None,
                Some("SSM") => Some(AppValidationStrategy::Ssm),
                Some(other) => bail!("--{option}: appValidationStrategy {other:?} is not SSM"),
            };
            let p = v
                .get("ssmValidationParameters")
                .map(|p| {
                    Ok::<_, anyhow::Error>(
                        SsmValidationParameters::builder()
                            .set_source(p.get("source").map(|s| {
                                Source::builder()
                                    .set_s3_location(located_in(Some(s)))
                                    .build()
                            }))
                            .set_instance_id(string(p, "instanceId"))
                            .set_script_type(script_type(
                                option,
                                p.get("scriptType").unwrap_or(&Value::Null),
                            )?)
                            .set_command(string(p, "command"))
                            .set_execution_timeout_seconds(
                                p.get("executionTimeoutSeconds")
                                    .and_then(Value::as_i64)
                                    .map(|n| n as i32),
                            )
                            .set_output_s3_bucket_name(string(p, "outputS3BucketName"))
                            .build(),
                    )
                })
                .transpose()?;
            Ok(AppValidationConfiguration::builder()
                .set_validation_id(string(v, "validationId"))
                .set_name(string(v, "name"))
                .set_app_validation_strategy(strategy)
                .set_ssm_validation_parameters(p)
                .build())
        })
        .collect()
}

fn server_validations_in(text: &str) -> anyhow::Result<Vec<ServerGroupValidationConfiguration>> {
    let option = "server-group-validation-configurations";
    list(option, json_arg(option, text)?)?
        .iter()
        .map(|g| {
            let servers = items(option, g.get("serverValidationConfigurations"))?
                .iter()
                .map(|v| {
                    let strategy = match v.get("serverValidationStrategy").and_then(Value::as_str) {
                        None => None,
                        Some("USERDATA") => Some(ServerValidationStrategy::Userdata),
                        Some(other) => {
                            bail!("--{option}: serverValidationStrategy {other:?} is not USERDATA")
                        }
                    };
                    let p = v
                        .get("userDataValidationParameters")
                        .map(|p| {
                            Ok::<_, anyhow::Error>(
                                UserDataValidationParameters::builder()
                                    .set_source(p.get("source").map(|s| {
                                        Source::builder()
                                            .set_s3_location(located_in(Some(s)))
                                            .build()
                                    }))
                                    .set_script_type(script_type(
                                        option,
                                        p.get("scriptType").unwrap_or(&Value::Null),
                                    )?)
                                    .build(),
                            )
                        })
                        .transpose()?;
                    Ok(ServerValidationConfiguration::builder()
                        .set_server(v.get("server").map(server_in))
                        .set_validation_id(string(v, "validationId"))
                        .set_name(string(v, "name"))
                        .set_server_validation_strategy(strategy)
                        .set_user_data_validation_parameters(p)
                        .build())
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(ServerGroupValidationConfiguration::builder()
                .set_server_group_id(string(g, "serverGroupId"))
                .set_server_validation_configurations(Some(servers))
                .build())
        })
        .collect()
}

fn notification_in(text: &str) -> anyhow::Result<NotificationContext> {
    let option = "notification-context";
    let v = json_arg(option, text)?;
    let status =
        match v.get("status").and_then(Value::as_str) {
            None => None,
            Some(s) => Some(ValidationStatus::try_parse(s).map_err(|_| {
                anyhow::anyhow!("--{option}: status {s:?} is not a ValidationStatus")
            })?),
        };
    Ok(NotificationContext::builder()
        .set_validation_id(string(&v, "validationId"))
        .set_status(status)
        .set_status_message(string(&v, "statusMessage"))
        .build())
}

// ------------------------------------------------------------------------------ output JSON

fn location_json(l: &S3Location) -> Value {
    let mut m = Map::new();
    put(&mut m, "bucket", l.bucket().map(Value::from));
    put(&mut m, "key", l.key().map(Value::from));
    Value::Object(m)
}

fn located_json(l: Option<&S3Location>) -> Option<Value> {
    l.map(|l| {
        let mut m = Map::new();
        m.insert("s3Location".into(), location_json(l));
        Value::Object(m)
    })
}

fn location_out(l: Option<&S3Location>) -> Value {
    let mut m = Map::new();
    put(&mut m, "s3Location", l.map(location_json));
    Value::Object(m)
}

fn launch_group_json(g: &ServerGroupLaunchConfiguration) -> Value {
    let mut m = Map::new();
    put(
        &mut m,
        "serverGroupId",
        g.server_group_id().map(Value::from),
    );
    put(&mut m, "launchOrder", g.launch_order().map(Value::from));
    let servers = g
        .server_launch_configurations()
        .iter()
        .map(|s| {
            let mut m = Map::new();
            let text = |v: Option<&str>| v.map(Value::from);
            put(&mut m, "server", s.server().map(server_json));
            put(&mut m, "logicalId", text(s.logical_id()));
            put(&mut m, "vpc", text(s.vpc()));
            put(&mut m, "subnet", text(s.subnet()));
            put(&mut m, "securityGroup", text(s.security_group()));
            put(&mut m, "ec2KeyName", text(s.ec2_key_name()));
            put(
                &mut m,
                "userData",
                s.user_data().and_then(|u| located_json(u.s3_location())),
            );
            put(&mut m, "instanceType", text(s.instance_type()));
            put(
                &mut m,
                "associatePublicIpAddress",
                s.associate_public_ip_address().map(Value::from),
            );
            put(
                &mut m,
                "iamInstanceProfileName",
                text(s.iam_instance_profile_name()),
            );
            put(
                &mut m,
                "configureScript",
                s.configure_script().map(location_json),
            );
            put(
                &mut m,
                "configureScriptType",
                s.configure_script_type().map(|t| t.as_str().into()),
            );
            Value::Object(m)
        })
        .collect();
    m.insert("serverLaunchConfigurations".into(), servers);
    Value::Object(m)
}

fn app_validation_json(v: &AppValidationConfiguration) -> Value {
    let mut m = Map::new();
    put(&mut m, "validationId", v.validation_id().map(Value::from));
    put(&mut m, "name", v.name().map(Value::from));
    put(
        &mut m,
        "appValidationStrategy",
        v.app_validation_strategy().map(|s| s.as_str().into()),
    );
    put(
        &mut m,
        "ssmValidationParameters",
        v.ssm_validation_parameters().map(|p| {
            let mut o = Map::new();
            put(
                &mut o,
                "source",
                p.source().and_then(|s| located_json(s.s3_location())),
            );
            put(&mut o, "instanceId", p.instance_id().map(Value::from));
            put(
                &mut o,
                "scriptType",
                p.script_type().map(|t| t.as_str().into()),
            );
            put(&mut o, "command", p.command().map(Value::from));
            put(
                &mut o,
                "executionTimeoutSeconds",
                Some(p.execution_timeout_seconds())
                    .filter(|&n| n != 0)
                    .map(Value::from),
            );
            put(
                &mut o,
                "outputS3BucketName",
                p.output_s3_bucket_name().map(Value::from),
            );
            Value::Object(o)
        }),
    );
    Value::Object(m)
}

fn server_validation_json(v: &ServerValidationConfiguration) -> Value {
    let mut m = Map::new();
    put(&mut m, "server", v.server().map(server_json));
    put(&mut m, "validationId", v.validation_id().map(Value::from));
    put(&mut m, "name", v.name().map(Value::from));
    put(
        &mut m,
        "serverValidationStrategy",
        v.server_validation_strategy().map(|s| s.as_str().into()),
    );
    put(
        &mut m,
        "userDataValidationParameters",
        v.user_data_validation_parameters().map(|p| {
            let mut o = Map::new();
            put(
                &mut o,
                "source",
                p.source().and_then(|s| located_json(s.s3_location())),
            );
            put(
                &mut o,
                "scriptType",
                p.script_type().map(|t| t.as_str().into()),
            );
            Value::Object(o)
        }),
    );
    Value::Object(m)
}
