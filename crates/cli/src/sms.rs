//! `tern sms <operation>`: a client of the SMS-compatible API built on the `aws-sdk-sms` crate.
//!
//! Option names follow the AWS CLI (`aws sms ...`), so existing scripts only change the program
//! name. Endpoint, region and credentials come from the usual AWS settings (`AWS_ENDPOINT_URL`,
//! `AWS_REGION`, `AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE`, `~/.aws/config`, ...), and
//! `--endpoint-url`, `--region`, `--profile` override them. Output is the operation's response as
//! JSON with the SMS wire member names (camelCase, timestamps in epoch seconds). A service error
//! prints its SMS error code and message on stderr and exits with status 254, like the AWS CLI.

mod app_configs;
mod apps;

use std::process::ExitCode;

use anyhow::{bail, Context};
use aws_sdk_sms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sms::types::{
    Connector, LicenseType, ReplicationJob, ReplicationRun, Server, VmServer, VmServerAddress,
};
use aws_sdk_sms::Client;
use aws_smithy_types::DateTime;
use serde_json::{json, Map, Value};

/// Exit status for an error answered by the service (the AWS CLI uses the same number).
const SERVICE_ERROR_EXIT: u8 = 254;

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
}

/// Page controls of the paginated operations. Without `--next-token`/`--max-results` every page
/// is fetched and the lists are joined, as the AWS CLI does.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Paging {
    /// Continue a listing where a previous page ended (fetches one page only).
    #[arg(long)]
    next_token: Option<String>,
    /// Largest number of items per page (fetches one page only).
    #[arg(long)]
    max_results: Option<i32>,
    /// Fetch only the first page.
    #[arg(long)]
    no_paginate: bool,
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
    Service { code: String, message: String },
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
    match runtime.block_on(execute(cmd)) {
        Ok(Some(output)) => {
            println!("{}", serde_json::to_string_pretty(&output)?);
            Ok(ExitCode::SUCCESS)
        }
        Ok(None) => Ok(ExitCode::SUCCESS),
        Err(Failure::Service { code, message }) => {
            eprintln!(
                "An error occurred ({code}) when calling the {operation} operation: {message}"
            );
            Ok(ExitCode::from(SERVICE_ERROR_EXIT))
        }
        Err(Failure::Other(err)) => Err(err.context(format!("calling {operation}"))),
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
    let client = client(cmd.global()).await?;
    let output = match cmd {
        SmsCommand::GetConnectors { paging, .. } => {
            let request = client
                .get_connectors()
                .set_next_token(paging.next_token.clone())
                .set_max_results(paging.max_results);
            let mut list = Vec::new();
            let mut next_token = None;
            if paging.single_page() {
                let page = request.send().await?;
                list.extend(page.connector_list().iter().map(connector_json));
                next_token = page.next_token().map(str::to_owned);
            } else {
                let mut pages = request.into_paginator().send();
                while let Some(page) = pages.next().await {
                    list.extend(page?.connector_list().iter().map(connector_json));
                }
            }
            let mut out = Map::new();
            out.insert("connectorList".into(), Value::Array(list));
            put(&mut out, "nextToken", next_token.map(Value::String));
            Some(Value::Object(out))
        }
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
            let request = client
                .get_servers()
                .set_next_token(paging.next_token.clone())
                .set_max_results(paging.max_results)
                .set_vm_server_address_list(addresses);
            let mut out = Map::new();
            let mut list = Vec::new();
            let mut next_token = None;
            let mut first = true;
            let mut pages = Vec::new();
            if paging.single_page() {
                let page = request.send().await?;
                next_token = page.next_token().map(str::to_owned);
                pages.push(page);
            } else {
                let mut stream = request.into_paginator().send();
                while let Some(page) = stream.next().await {
                    pages.push(page?);
                }
            }
            for page in &pages {
                if first {
                    put(
                        &mut out,
                        "lastModifiedOn",
                        page.last_modified_on().map(time_json),
                    );
                    put(
                        &mut out,
                        "serverCatalogStatus",
                        page.server_catalog_status().map(|s| s.as_str().into()),
                    );
                    first = false;
                }
                list.extend(page.server_list().iter().map(server_json));
            }
            out.insert("serverList".into(), Value::Array(list));
            put(&mut out, "nextToken", next_token.map(Value::String));
            Some(Value::Object(out))
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
        } => {
            let request = client
                .get_replication_jobs()
                .set_replication_job_id(replication_job_id)
                .set_next_token(paging.next_token.clone())
                .set_max_results(paging.max_results);
            let mut list = Vec::new();
            let mut next_token = None;
            if paging.single_page() {
                let page = request.send().await?;
                list.extend(page.replication_job_list().iter().map(job_json));
                next_token = page.next_token().map(str::to_owned);
            } else {
                let mut pages = request.into_paginator().send();
                while let Some(page) = pages.next().await {
                    list.extend(page?.replication_job_list().iter().map(job_json));
                }
            }
            let mut out = Map::new();
            out.insert("replicationJobList".into(), Value::Array(list));
            put(&mut out, "nextToken", next_token.map(Value::String));
            Some(Value::Object(out))
        }
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
            let request = client
                .get_replication_runs()
                .replication_job_id(replication_job_id)
                .set_next_token(paging.next_token.clone())
                .set_max_results(paging.max_results);
            let mut out = Map::new();
            let mut list = Vec::new();
            let mut next_token = None;
            let mut pages = Vec::new();
            if paging.single_page() {
                let page = request.send().await?;
                next_token = page.next_token().map(str::to_owned);
                pages.push(page);
            } else {
                let mut stream = request.into_paginator().send();
                while let Some(page) = stream.next().await {
                    pages.push(page?);
                }
            }
            // Every page repeats the job; the first one is as current as any.
            if let Some(job) = pages.first().and_then(|p| p.replication_job()) {
                out.insert("replicationJob".into(), job_json(job));
            }
            for page in &pages {
                list.extend(page.replication_run_list().iter().map(run_json));
            }
            out.insert("replicationRunList".into(), Value::Array(list));
            put(&mut out, "nextToken", next_token.map(Value::String));
            Some(Value::Object(out))
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

fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value);
    }
}

/// Epoch seconds as the wire carries them: an integer when whole, else a fraction.
pub(crate) fn time_json(t: &DateTime) -> Value {
    if t.subsec_nanos() == 0 {
        json!(t.secs())
    } else {
        json!(t.as_secs_f64())
    }
}

fn connector_json(c: &Connector) -> Value {
    let mut m = Map::new();
    put(&mut m, "connectorId", c.connector_id().map(Value::from));
    put(&mut m, "version", c.version().map(Value::from));
    put(&mut m, "status", c.status().map(|v| v.as_str().into()));
    put(
        &mut m,
        "capabilityList",
        c.capability_list
            .as_ref()
            .map(|l| l.iter().map(|v| Value::from(v.as_str())).collect()),
    );
    put(
        &mut m,
        "vmManagerName",
        c.vm_manager_name().map(Value::from),
    );
    put(
        &mut m,
        "vmManagerType",
        c.vm_manager_type().map(|v| v.as_str().into()),
    );
    put(&mut m, "vmManagerId", c.vm_manager_id().map(Value::from));
    put(&mut m, "ipAddress", c.ip_address().map(Value::from));
    put(&mut m, "macAddress", c.mac_address().map(Value::from));
    put(&mut m, "associatedOn", c.associated_on().map(time_json));
    Value::Object(m)
}

fn address_json(a: &VmServerAddress) -> Value {
    let mut m = Map::new();
    put(&mut m, "vmManagerId", a.vm_manager_id().map(Value::from));
    put(&mut m, "vmId", a.vm_id().map(Value::from));
    Value::Object(m)
}

fn vm_server_json(v: &VmServer) -> Value {
    let mut m = Map::new();
    put(
        &mut m,
        "vmServerAddress",
        v.vm_server_address().map(address_json),
    );
    put(&mut m, "vmName", v.vm_name().map(Value::from));
    put(
        &mut m,
        "vmManagerName",
        v.vm_manager_name().map(Value::from),
    );
    put(
        &mut m,
        "vmManagerType",
        v.vm_manager_type().map(|t| t.as_str().into()),
    );
    put(&mut m, "vmPath", v.vm_path().map(Value::from));
    Value::Object(m)
}

fn server_json(s: &Server) -> Value {
    let mut m = Map::new();
    put(&mut m, "serverId", s.server_id().map(Value::from));
    put(
        &mut m,
        "serverType",
        s.server_type().map(|t| t.as_str().into()),
    );
    put(&mut m, "vmServer", s.vm_server().map(vm_server_json));
    put(
        &mut m,
        "replicationJobId",
        s.replication_job_id().map(Value::from),
    );
    put(
        &mut m,
        "replicationJobTerminated",
        s.replication_job_terminated().map(Value::from),
    );
    Value::Object(m)
}

fn job_json(j: &ReplicationJob) -> Value {
    let mut m = Map::new();
    put(
        &mut m,
        "replicationJobId",
        j.replication_job_id().map(Value::from),
    );
    put(&mut m, "serverId", j.server_id().map(Value::from));
    put(
        &mut m,
        "serverType",
        j.server_type().map(|t| t.as_str().into()),
    );
    put(&mut m, "vmServer", j.vm_server().map(vm_server_json));
    put(
        &mut m,
        "seedReplicationTime",
        j.seed_replication_time().map(time_json),
    );
    put(&mut m, "frequency", j.frequency().map(Value::from));
    put(&mut m, "runOnce", j.run_once().map(Value::from));
    put(
        &mut m,
        "nextReplicationRunStartTime",
        j.next_replication_run_start_time().map(time_json),
    );
    put(
        &mut m,
        "licenseType",
        j.license_type().map(|t| t.as_str().into()),
    );
    put(&mut m, "roleName", j.role_name().map(Value::from));
    put(&mut m, "latestAmiId", j.latest_ami_id().map(Value::from));
    put(&mut m, "state", j.state().map(|t| t.as_str().into()));
    put(&mut m, "statusMessage", j.status_message().map(Value::from));
    put(&mut m, "description", j.description().map(Value::from));
    put(
        &mut m,
        "numberOfRecentAmisToKeep",
        j.number_of_recent_amis_to_keep().map(Value::from),
    );
    put(&mut m, "encrypted", j.encrypted().map(Value::from));
    put(&mut m, "kmsKeyId", j.kms_key_id().map(Value::from));
    put(
        &mut m,
        "replicationRunList",
        j.replication_run_list
            .as_ref()
            .map(|runs| runs.iter().map(run_json).collect()),
    );
    Value::Object(m)
}

fn run_json(r: &ReplicationRun) -> Value {
    let mut m = Map::new();
    put(
        &mut m,
        "replicationRunId",
        r.replication_run_id().map(Value::from),
    );
    put(&mut m, "state", r.state().map(|t| t.as_str().into()));
    put(&mut m, "type", r.r#type().map(|t| t.as_str().into()));
    put(
        &mut m,
        "stageDetails",
        r.stage_details().map(|d| {
            let mut s = Map::new();
            put(&mut s, "stage", d.stage().map(Value::from));
            put(&mut s, "stageProgress", d.stage_progress().map(Value::from));
            Value::Object(s)
        }),
    );
    put(&mut m, "statusMessage", r.status_message().map(Value::from));
    put(&mut m, "amiId", r.ami_id().map(Value::from));
    put(
        &mut m,
        "scheduledStartTime",
        r.scheduled_start_time().map(time_json),
    );
    put(&mut m, "completedTime", r.completed_time().map(time_json));
    put(&mut m, "description", r.description().map(Value::from));
    put(&mut m, "encrypted", r.encrypted().map(Value::from));
    put(&mut m, "kmsKeyId", r.kms_key_id().map(Value::from));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

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
