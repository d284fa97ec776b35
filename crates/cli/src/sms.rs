//! `tern sms <operation>`: a client of the SMS-compatible API built on the `aws-sdk-sms` crate,
//! with the AWS CLI's habits, so existing scripts only change the program name:
//!
//! * option names of `aws sms`, plus `--cli-input-json` / `--generate-cli-skeleton`
//!   ([`input`]);
//! * endpoint, region and credentials from the usual AWS settings (`AWS_ENDPOINT_URL_SMS`,
//!   `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE`,
//!   `~/.aws/config`, ...), overridden by `--endpoint-url`, `--region`, `--profile`;
//! * automatic pagination of the listing operations, `--starting-token`, `--max-items`,
//!   `--page-size`, `--no-paginate`, then `--query` (JMESPath) and `--output json|text|table`
//!   ([`output`]); JSON has the SMS wire member names (camelCase, epoch-second timestamps);
//! * exit status 0 on success, 254 when the service answered an error (printed as
//!   `An error occurred (CODE) when calling the OPERATION operation: MESSAGE`), 255 for other
//!   failures (no connection, no region, a bad `--starting-token`), 252 for a command line
//!   refused before any call.

mod app_configs;
mod apps;
mod input;
mod output;
mod render;

use std::process::ExitCode;

use anyhow::{bail, Context};
use aws_sdk_sms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sms::types::{LicenseType, VmServerAddress};
use aws_sdk_sms::Client;
use aws_smithy_types::DateTime;
use serde_json::{Map, Value};

pub use input::USAGE_EXIT;
pub use input::{prepare, Prepared};
use output::{paginate, Format, Page};
pub(crate) use render::{connector_json, job_json, put, run_json, server_json, time_json};

/// Exit status for an error answered by the service (the AWS CLI uses the same number).
const SERVICE_ERROR_EXIT: u8 = 254;
/// Exit status for any other failure (the AWS CLI's).
const CLIENT_ERROR_EXIT: u8 = 255;

/// Settings every operation accepts, as in the AWS CLI.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Global {
    /// Endpoint of the API, e.g. http://127.0.0.1:8080 (default: AWS_ENDPOINT_URL_SMS,
    /// AWS_ENDPOINT_URL or the profile's endpoint_url).
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// Region to sign requests for (default: AWS_REGION or the profile's region).
    #[arg(long)]
    region: Option<String>,
    /// Named profile from the shared config and credentials files (default: AWS_PROFILE).
    #[arg(long)]
    profile: Option<String>,
    /// Output format (default: AWS_DEFAULT_OUTPUT, else json).
    #[arg(long, value_enum, env = "AWS_DEFAULT_OUTPUT", default_value = "json")]
    output: Format,
    /// A JMESPath query applied to the answer, e.g. `replicationJobList[].replicationJobId`.
    #[arg(long, value_name = "JMESPATH")]
    query: Option<String>,
    /// The operation's input as JSON (inline or file://PATH), as --generate-cli-skeleton
    /// prints it; options on the command line win.
    #[arg(long, value_name = "JSON")]
    cli_input_json: Option<String>,
    /// Print the operation's input as JSON with empty values, and call nothing.
    #[arg(long, value_name = "input", num_args = 0..=1, default_missing_value = "input")]
    generate_cli_skeleton: Option<String>,
}

/// Page controls of the listing operations. By default every page is fetched and the lists
/// are joined, as the AWS CLI does.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Paging {
    /// The API's own token: fetch the one page after it (no automatic pagination).
    #[arg(long)]
    next_token: Option<String>,
    /// The API's own page size: fetch one page of at most this many (no automatic pagination).
    #[arg(long)]
    max_results: Option<i32>,
    /// Fetch only the first page; its nextToken is printed.
    #[arg(long)]
    no_paginate: bool,
    /// Continue from the NextToken a previous --max-items output printed.
    #[arg(long)]
    starting_token: Option<String>,
    /// Print at most this many items in all, and a NextToken when there are more.
    #[arg(long)]
    max_items: Option<usize>,
    /// Items asked for per call while paginating (every item is still fetched).
    #[arg(long)]
    page_size: Option<i32>,
}

impl Paging {
    fn single_page(&self) -> bool {
        self.no_paginate || self.next_token.is_some() || self.max_results.is_some()
    }
}

/// Job settings shared by create-replication-job and update-replication-job.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct JobSettings {
    /// Hours between replication runs.
    #[arg(long)]
    frequency: Option<i32>,
    /// License type of the AMIs: AWS or BYOL.
    #[arg(long, value_parser = parse_license_type)]
    license_type: Option<LicenseType>,
    /// IAM role the service uses for this job.
    #[arg(long)]
    role_name: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// AMIs of this job to keep (0 keeps all).
    #[arg(long)]
    number_of_recent_amis_to_keep: Option<i32>,
    /// Encrypt the AMIs' snapshots.
    #[arg(long, overrides_with = "no_encrypted")]
    encrypted: bool,
    #[arg(long, overrides_with = "encrypted")]
    no_encrypted: bool,
    /// KMS key for the encrypted snapshots (key id, alias, key ARN or alias ARN).
    #[arg(long)]
    kms_key_id: Option<String>,
}

impl JobSettings {
    fn encrypted(&self) -> Option<bool> {
        flag_pair(self.encrypted, self.no_encrypted)
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum SmsCommand {
    /// List the connectors registered with the service.
    GetConnectors {
        #[command(flatten)]
        global: Global,
        #[command(flatten)]
        paging: Paging,
    },
    /// Unregister a connector.
    DisassociateConnector {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        connector_id: String,
    },
    /// Ask the connectors to (re)inventory their VMs into the server catalog.
    ImportServerCatalog {
        #[command(flatten)]
        global: Global,
    },
    /// List the server catalog.
    GetServers {
        #[command(flatten)]
        global: Global,
        #[command(flatten)]
        paging: Paging,
        /// Only these servers: `vmManagerId=ID,vmId=ID` (repeatable) or a JSON list of
        /// `{"vmManagerId":..,"vmId":..}`.
        #[arg(long, num_args = 1.., value_name = "ADDRESS")]
        vm_server_address_list: Vec<String>,
    },
    /// Remove every server from the catalog.
    DeleteServerCatalog {
        #[command(flatten)]
        global: Global,
    },
    /// Create a replication job for a catalog server.
    CreateReplicationJob {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        server_id: String,
        /// Start of the first run: ISO 8601 (2026-12-01T10:00:00Z) or epoch seconds.
        #[arg(long, value_parser = parse_timestamp)]
        seed_replication_time: DateTime,
        /// Replicate once (a one-time migration) instead of on a schedule.
        #[arg(long, overrides_with = "no_run_once")]
        run_once: bool,
        #[arg(long, overrides_with = "run_once")]
        no_run_once: bool,
        #[command(flatten)]
        settings: JobSettings,
    },
    /// Describe one replication job, or all of them.
    GetReplicationJobs {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        replication_job_id: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Change the settings of a replication job.
    UpdateReplicationJob {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        replication_job_id: String,
        /// New start of the next run: ISO 8601 or epoch seconds.
        #[arg(long, value_parser = parse_timestamp)]
        next_replication_run_start_time: Option<DateTime>,
        #[command(flatten)]
        settings: JobSettings,
    },
    /// Delete a replication job (its AMIs are kept).
    DeleteReplicationJob {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        replication_job_id: String,
    },
    /// Start a replication run now, outside the schedule.
    StartOnDemandReplicationRun {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        replication_job_id: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Describe a replication job and its runs.
    GetReplicationRuns {
        #[command(flatten)]
        global: Global,
        #[arg(long)]
        replication_job_id: String,
        #[command(flatten)]
        paging: Paging,
    },
    /// The application operations (create-app, get-app, list-apps, …).
    #[command(flatten)]
    Apps(apps::AppCommand),
    /// Launch and validation configuration, templates, import, launch and terminate.
    #[command(flatten)]
    AppConfigs(app_configs::AppConfigCommand),
}

impl SmsCommand {
    fn global(&self) -> &Global {
        match self {
            SmsCommand::GetConnectors { global, .. }
            | SmsCommand::DisassociateConnector { global, .. }
            | SmsCommand::ImportServerCatalog { global }
            | SmsCommand::GetServers { global, .. }
            | SmsCommand::DeleteServerCatalog { global }
            | SmsCommand::CreateReplicationJob { global, .. }
            | SmsCommand::GetReplicationJobs { global, .. }
            | SmsCommand::UpdateReplicationJob { global, .. }
            | SmsCommand::DeleteReplicationJob { global, .. }
            | SmsCommand::StartOnDemandReplicationRun { global, .. }
            | SmsCommand::GetReplicationRuns { global, .. } => global,
            SmsCommand::Apps(cmd) => cmd.global(),
            SmsCommand::AppConfigs(cmd) => cmd.global(),
        }
    }

    /// The page controls of a listing operation.
    fn paging(&self) -> Option<&Paging> {
        match self {
            SmsCommand::GetConnectors { paging, .. }
            | SmsCommand::GetServers { paging, .. }
            | SmsCommand::GetReplicationJobs { paging, .. }
            | SmsCommand::GetReplicationRuns { paging, .. } => Some(paging),
            SmsCommand::Apps(cmd) => cmd.paging(),
            _ => None,
        }
    }

    /// The API operation name, for error messages.
    fn operation(&self) -> &'static str {
        match self {
            SmsCommand::GetConnectors { .. } => "GetConnectors",
            SmsCommand::DisassociateConnector { .. } => "DisassociateConnector",
            SmsCommand::ImportServerCatalog { .. } => "ImportServerCatalog",
            SmsCommand::GetServers { .. } => "GetServers",
            SmsCommand::DeleteServerCatalog { .. } => "DeleteServerCatalog",
            SmsCommand::CreateReplicationJob { .. } => "CreateReplicationJob",
            SmsCommand::GetReplicationJobs { .. } => "GetReplicationJobs",
            SmsCommand::UpdateReplicationJob { .. } => "UpdateReplicationJob",
            SmsCommand::DeleteReplicationJob { .. } => "DeleteReplicationJob",
            SmsCommand::StartOnDemandReplicationRun { .. } => "StartOnDemandReplicationRun",
            SmsCommand::GetReplicationRuns { .. } => "GetReplicationRuns",
            SmsCommand::Apps(cmd) => cmd.operation(),
            SmsCommand::AppConfigs(cmd) => cmd.operation(),
        }
    }
}

/// Why an operation failed: answered by the service (code + message), or not (transport,
/// configuration, bad input).
enum Failure {
    Service {
        code: String,
        message: String,
    },
    /// Refused before any call (conflicting options).
    Usage(anyhow::Error),
    Other(anyhow::Error),
}

impl<E, R> From<SdkError<E, R>> for Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    fn from(err: SdkError<E, R>) -> Self {
        match err.code() {
            Some(code) => Failure::Service {
                code: code.to_owned(),
                message: err.message().unwrap_or_default().to_owned(),
            },
            None => Failure::Other(anyhow::anyhow!("{}", DisplayErrorContext(&err))),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::Other(err)
    }
}

pub fn run(cmd: SmsCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let operation = cmd.operation();
    let global = cmd.global().clone();
    let printed = match runtime.block_on(execute(cmd)) {
        Ok(None) => Ok(String::new()),
        Ok(Some(answer)) => {
            let answer = match &global.query {
                Some(q) => output::query(q, &answer),
                None => Ok(answer),
            };
            answer.and_then(|a| output::render(global.output, operation, &a))
        }
        Err(Failure::Service { code, message }) => {
            eprintln!(
                "\nAn error occurred ({code}) when calling the {operation} operation: {message}"
            );
            return Ok(ExitCode::from(SERVICE_ERROR_EXIT));
        }
        Err(Failure::Usage(err)) => {
            eprintln!("\n{err:#}\n");
            return Ok(ExitCode::from(USAGE_EXIT));
        }
        Err(Failure::Other(err)) => Err(err.context(format!("calling {operation}"))),
    };
    match printed {
        Ok(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("\n{err:#}\n");
            Ok(ExitCode::from(CLIENT_ERROR_EXIT))
        }
    }
}

async fn client(global: &Global) -> anyhow::Result<Client> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(profile) = &global.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &global.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &global.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    if config.region().is_none() {
        bail!("no region configured: pass --region or set AWS_REGION (tern serve uses us-east-1 unless configured otherwise)");
    }
    Ok(Client::new(&config))
}

/// Runs the operation; `None` means an output without members (nothing is printed, as in the AWS CLI).
async fn execute(cmd: SmsCommand) -> Result<Option<Value>, Failure> {
    if let Some(paging) = cmd.paging() {
        output::check_paging(paging).map_err(Failure::Usage)?;
    }
    if let Some(q) = &cmd.global().query {
        output::check_query(q).map_err(Failure::Usage)?;
    }
    let client = client(cmd.global()).await?;
    let output = match cmd {
        SmsCommand::GetConnectors { paging, .. } => Some(
            paginate(&paging, "connectorList", |token, max| {
                let request = client
                    .get_connectors()
                    .set_next_token(token)
                    .set_max_results(max);
                async move {
                    let page = request.send().await?;
                    let mut members = Map::new();
                    members.insert(
                        "connectorList".into(),
                        page.connector_list().iter().map(connector_json).collect(),
                    );
                    Ok(Page {
                        members,
                        next_token: page.next_token().map(str::to_owned),
                    })
                }
            })
            .await?,
        ),
        SmsCommand::DisassociateConnector { connector_id, .. } => {
            client
                .disassociate_connector()
                .connector_id(connector_id)
                .send()
                .await?;
            None
        }
        SmsCommand::ImportServerCatalog { .. } => {
            client.import_server_catalog().send().await?;
            None
        }
        SmsCommand::GetServers {
            paging,
            vm_server_address_list,
            ..
        } => {
            let addresses = if vm_server_address_list.is_empty() {
                None
            } else {
                Some(parse_addresses(&vm_server_address_list)?)
            };
            Some(
                paginate(&paging, "serverList", |token, max| {
                    let request = client
                        .get_servers()
                        .set_next_token(token)
                        .set_max_results(max)
                        .set_vm_server_address_list(addresses.clone());
                    async move {
                        let page = request.send().await?;
                        let mut members = Map::new();
                        put(
                            &mut members,
                            "lastModifiedOn",
                            page.last_modified_on().map(time_json),
                        );
                        put(
                            &mut members,
                            "serverCatalogStatus",
                            page.server_catalog_status().map(|s| s.as_str().into()),
                        );
                        members.insert(
                            "serverList".into(),
                            page.server_list().iter().map(server_json).collect(),
                        );
                        Ok(Page {
                            members,
                            next_token: page.next_token().map(str::to_owned),
                        })
                    }
                })
                .await?,
            )
        }
        SmsCommand::DeleteServerCatalog { .. } => {
            client.delete_server_catalog().send().await?;
            None
        }
        SmsCommand::CreateReplicationJob {
            server_id,
            seed_replication_time,
            run_once,
            no_run_once,
            settings,
            ..
        } => {
            let out = client
                .create_replication_job()
                .server_id(server_id)
                .seed_replication_time(seed_replication_time)
                .set_run_once(flag_pair(run_once, no_run_once))
                .set_frequency(settings.frequency)
                .set_license_type(settings.license_type.clone())
                .set_role_name(settings.role_name.clone())
                .set_description(settings.description.clone())
                .set_number_of_recent_amis_to_keep(settings.number_of_recent_amis_to_keep)
                .set_encrypted(settings.encrypted())
                .set_kms_key_id(settings.kms_key_id.clone())
                .send()
                .await?;
            let mut map = Map::new();
            put(
                &mut map,
                "replicationJobId",
                out.replication_job_id().map(Value::from),
            );
            Some(Value::Object(map))
        }
        SmsCommand::GetReplicationJobs {
            replication_job_id,
            paging,
            ..
        } => Some(
            paginate(&paging, "replicationJobList", |token, max| {
                let request = client
                    .get_replication_jobs()
                    .set_replication_job_id(replication_job_id.clone())
                    .set_next_token(token)
                    .set_max_results(max);
                async move {
                    let page = request.send().await?;
                    let mut members = Map::new();
                    members.insert(
                        "replicationJobList".into(),
                        page.replication_job_list().iter().map(job_json).collect(),
                    );
                    Ok(Page {
                        members,
                        next_token: page.next_token().map(str::to_owned),
                    })
                }
            })
            .await?,
        ),
        SmsCommand::UpdateReplicationJob {
            replication_job_id,
            next_replication_run_start_time,
            settings,
            ..
        } => {
            client
                .update_replication_job()
                .replication_job_id(replication_job_id)
                .set_next_replication_run_start_time(next_replication_run_start_time)
                .set_frequency(settings.frequency)
                .set_license_type(settings.license_type.clone())
                .set_role_name(settings.role_name.clone())
                .set_description(settings.description.clone())
                .set_number_of_recent_amis_to_keep(settings.number_of_recent_amis_to_keep)
                .set_encrypted(settings.encrypted())
                .set_kms_key_id(settings.kms_key_id.clone())
                .send()
                .await?;
            None
        }
        SmsCommand::DeleteReplicationJob {
            replication_job_id, ..
        } => {
            client
                .delete_replication_job()
                .replication_job_id(replication_job_id)
                .send()
                .await?;
            None
        }
        SmsCommand::StartOnDemandReplicationRun {
            replication_job_id,
            description,
            ..
        } => {
            let out = client
                .start_on_demand_replication_run()
                .replication_job_id(replication_job_id)
                .set_description(description)
                .send()
                .await?;
            let mut map = Map::new();
            put(
                &mut map,
                "replicationRunId",
                out.replication_run_id().map(Value::from),
            );
            Some(Value::Object(map))
        }
        SmsCommand::GetReplicationRuns {
            replication_job_id,
            paging,
            ..
        } => {
            Some(
                paginate(&paging, "replicationRunList", |token, max| {
                    let request = client
                        .get_replication_runs()
                        .replication_job_id(replication_job_id.clone())
                        .set_next_token(token)
                        .set_max_results(max);
                    async move {
                        let page = request.send().await?;
                        let mut members = Map::new();
                        // Every page repeats the job; the first one is as current as any.
                        put(
                            &mut members,
                            "replicationJob",
                            page.replication_job().map(job_json),
                        );
                        members.insert(
                            "replicationRunList".into(),
                            page.replication_run_list().iter().map(run_json).collect(),
                        );
                        Ok(Page {
                            members,
                            next_token: page.next_token().map(str::to_owned),
                        })
                    }
                })
                .await?,
            )
        }
        SmsCommand::Apps(cmd) => apps::execute(&client, cmd).await?,
        SmsCommand::AppConfigs(cmd) => app_configs::execute(&client, cmd).await?,
    };
    Ok(output)
}

/// `--flag` / `--no-flag`: None when neither was given, so the service default applies.
fn flag_pair(yes: bool, no: bool) -> Option<bool> {
    match (yes, no) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

fn parse_license_type(s: &str) -> Result<LicenseType, String> {
    match s {
        "AWS" => Ok(LicenseType::Aws),
        "BYOL" => Ok(LicenseType::Byol),
        other => Err(format!("{other:?} is not a license type (AWS or BYOL)")),
    }
}

/// Accepts what the AWS CLI accepts for timestamps that matter here: epoch seconds (integer or
/// fractional), RFC 3339 / ISO 8601 with offset, ISO 8601 without offset (read as UTC), or a
/// bare date (midnight UTC).
pub(crate) fn parse_timestamp(s: &str) -> Result<DateTime, String> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let secs: f64 = s
            .parse()
            .map_err(|_| format!("{s:?} is not a number of epoch seconds"))?;
        return Ok(DateTime::from_secs_f64(secs));
    }
    let parsed = time::OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| {
            time::PrimitiveDateTime::parse(
                s,
                format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
            )
            .map(|t| t.assume_utc())
        })
        .or_else(|_| {
            time::Date::parse(s, format_description!("[year]-[month]-[day]"))
                .map(|d| d.midnight().assume_utc())
        })
        .map_err(|_| {
            format!(
                "{s:?} is not a timestamp: use ISO 8601 (2026-12-01T10:00:00Z) or epoch seconds"
            )
        })?;
    Ok(DateTime::from_secs_and_nanos(
        parsed.unix_timestamp(),
        parsed.nanosecond(),
    ))
}

/// `--vm-server-address-list` values: AWS CLI shorthand (`vmManagerId=a,vmId=b`) or JSON.
fn parse_addresses(values: &[String]) -> anyhow::Result<Vec<VmServerAddress>> {
    let mut out = Vec::new();
    for value in values {
        let value = value.trim();
        if value.starts_with('[') || value.starts_with('{') {
            let json: Value = serde_json::from_str(value).with_context(|| {
                format!("--vm-server-address-list: {value:?} is not valid JSON")
            })?;
            let items = match json {
                Value::Array(items) => items,
                item => vec![item],
            };
            for item in items {
                let field = |name: &str| item.get(name).and_then(Value::as_str).map(str::to_owned);
                if item
                    .as_object()
                    .is_none_or(|o| o.keys().any(|k| k != "vmManagerId" && k != "vmId"))
                {
                    bail!("--vm-server-address-list: {item} must be an object with only vmManagerId and vmId");
                }
                out.push(
                    VmServerAddress::builder()
                        .set_vm_manager_id(field("vmManagerId"))
                        .set_vm_id(field("vmId"))
                        .build(),
                );
            }
        } else {
            let mut address = VmServerAddress::builder();
            for pair in value.split(',') {
                match pair.split_once('=') {
                    Some(("vmManagerId", v)) => address = address.vm_manager_id(v),
                    Some(("vmId", v)) => address = address.vm_id(v),
                    _ => bail!(
                        "--vm-server-address-list: {pair:?} in {value:?} is not vmManagerId=ID or vmId=ID"
                    ),
                }
            }
            out.push(address.build());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::render::address_json;
    use super::*;
    use aws_sdk_sms::types::{ReplicationJob, ReplicationRun};
    use serde_json::json;

    #[test]
    fn timestamps_accept_iso_8601_and_epoch_seconds() {
        let iso = parse_timestamp("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(iso.secs(), 1_796_119_200);
        assert_eq!(parse_timestamp("1796119200").unwrap(), iso);
        assert_eq!(parse_timestamp("2026-12-01T11:00:00+01:00").unwrap(), iso);
        assert_eq!(parse_timestamp("2026-12-01T10:00:00").unwrap(), iso);
        assert_eq!(
            parse_timestamp("2026-12-01").unwrap().secs(),
            1_796_119_200 - 10 * 3600
        );
        let fractional = parse_timestamp("1796119200.5").unwrap();
        assert_eq!(fractional.subsec_nanos(), 500_000_000);
        assert_eq!(time_json(&fractional), json!(1_796_119_200.5));
        assert_eq!(time_json(&iso), json!(1_796_119_200));
    }

    #[test]
    fn bad_timestamps_say_what_is_accepted() {
        let err = parse_timestamp("next tuesday").unwrap_err();
        assert!(err.contains("ISO 8601"), "{err}");
        assert!(parse_timestamp("2026-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn vm_server_addresses_accept_shorthand_and_json() {
        let parsed = parse_addresses(&[
            "vmManagerId=vc-1,vmId=vm-1".into(),
            r#"[{"vmManagerId":"vc-2","vmId":"vm-2"}]"#.into(),
        ])
        .unwrap();
        let json: Vec<Value> = parsed.iter().map(address_json).collect();
        assert_eq!(
            json,
            vec![
                json!({"vmManagerId":"vc-1","vmId":"vm-1"}),
                json!({"vmManagerId":"vc-2","vmId":"vm-2"})
            ]
        );
        assert!(parse_addresses(&["vmid=x".into()]).is_err());
        assert!(parse_addresses(&[r#"{"vmManagerId":"a","bogus":1}"#.into()]).is_err());
    }

    #[test]
    fn job_json_uses_wire_names_and_omits_absent_members() {
        let job = ReplicationJob::builder()
            .replication_job_id("sms-job-1")
            .frequency(12)
            .run_once(false)
            .seed_replication_time(DateTime::from_secs(1_796_119_200))
            .state(aws_sdk_sms::types::ReplicationJobState::Active)
            .license_type(LicenseType::Byol)
            .replication_run_list(
                ReplicationRun::builder()
                    .replication_run_id("sms-run-1")
                    .r#type(aws_sdk_sms::types::ReplicationRunType::OnDemand)
                    .build(),
            )
            .build();
        assert_eq!(
            job_json(&job),
            json!({
                "replicationJobId": "sms-job-1",
                "seedReplicationTime": 1_796_119_200,
                "frequency": 12,
                "runOnce": false,
                "licenseType": "BYOL",
                "state": "ACTIVE",
                "replicationRunList": [{"replicationRunId": "sms-run-1", "type": "ON_DEMAND"}]
            })
        );
    }

    #[test]
    fn cli_parses_aws_cli_option_names() {
        use clap::Parser;
        #[derive(Parser)]
        struct Top {
            #[command(subcommand)]
            cmd: SmsCommand,
        }
        let top = Top::try_parse_from([
            "tern",
            "create-replication-job",
            "--server-id",
            "s-1",
            "--seed-replication-time",
            "2026-12-01T10:00:00Z",
            "--frequency",
            "12",
            "--run-once",
            "--license-type",
            "BYOL",
            "--encrypted",
            "--number-of-recent-amis-to-keep",
            "3",
            "--endpoint-url",
            "http://127.0.0.1:1",
            "--region",
            "eu-west-1",
        ])
        .unwrap();
        match top.cmd {
            SmsCommand::CreateReplicationJob {
                server_id,
                run_once,
                settings,
                global,
                ..
            } => {
                assert_eq!(server_id, "s-1");
                assert!(run_once);
                assert_eq!(settings.frequency, Some(12));
                assert_eq!(settings.license_type, Some(LicenseType::Byol));
                assert_eq!(settings.encrypted(), Some(true));
                assert_eq!(global.region.as_deref(), Some("eu-west-1"));
            }
            _ => panic!("wrong subcommand"),
        }
        assert!(
            Top::try_parse_from(["tern", "create-replication-job", "--server-id", "s-1"]).is_err()
        );
        assert!(Top::try_parse_from([
            "tern",
            "update-replication-job",
            "--replication-job-id",
            "j",
            "--license-type",
            "FREE"
        ])
        .is_err());
    }
}
