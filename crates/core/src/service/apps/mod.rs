//! Applications (SMS §2.3–2.4): named sets of server groups holding catalog servers, and their
//! replication.
//!
//! * An application is one item (`APP/<appId>`) holding its groups, the servers in them (as they
//!   were in the catalog when added), its tags, its replication configuration (parameters per
//!   server) and the replication job it started for each server. Everything else in an
//!   `AppSummary` — totals, `replicationStatus` and its message, `latestReplicationTime` — is
//!   computed on read from the groups and the jobs, so it can never disagree with them.
//! * A server belongs to at most one application: `APP_SERVER/<serverId>` names its application
//!   and is written with an `Absent` (or version) condition in the same transaction as the
//!   application, so two concurrent requests cannot both take one server. A membership item whose
//!   application no longer lists the server (left behind when a large update could not fit its
//!   deletions into one transaction) is stale and taken over.
//! * CreateApp with a `clientToken` writes `APP_TOKEN/<clientToken>` (condition `Absent`) with the
//!   new application: of concurrent creations with one token one commits, the others find the
//!   token on retry and answer the same application. The same token with different parameters is
//!   refused.
//! * StartAppReplication creates one replication job per server through
//!   [`Service::create_job`] — the same rules, limits and transaction as CreateReplicationJob —
//!   with the server's parameters from the replication configuration. A server that already has
//!   a live job (created earlier by a StartAppReplication whose answer was lost, or by the user)
//!   is adopted instead: a server has at most one live job, and it belongs to one application.
//!   StopAppReplication deletes the jobs through [`Service::delete_job`].
//! * Limits (`config.limits`): `max_groups_per_app`, `max_servers_per_app`, and
//!   `max_replicating_apps` applications replicating at once (a counter item
//!   `LIMIT/REPLICATING_APPS` the store adds to within the limit, `Write::Add`, like the
//!   active-job counter).
//!
//! * Launch configuration (`launch`), validation configuration and outcomes (`validation`)
//!   are members of the application's item, written with its version as condition.
//!
//! LaunchApp/TerminateApp, templates and ImportAppCatalog: see their modules; `launchStatus` is
//! READY_FOR_CONFIGURATION until a launch configuration exists, READY_FOR_LAUNCH after, and then
//! follows the application's launch.

mod import;
mod launch;
mod launching;
mod membership;
mod replication;
mod template;
mod validation;

pub use import::ImportOutcome;
pub use launch::{
    GroupLaunchView, LaunchConfiguration, LaunchConfigurationView, S3Location,
    ServerGroupLaunchConfiguration, ServerLaunchConfiguration, UserData,
};
pub use validation::{
    AppValidation, NotificationContext, RecordedValidation, ServerGroupValidation,
    ServerValidation, SsmValidationParameters, UserDataValidationParameters,
    ValidationConfiguration, ValidationOutputView, ValidationRunner,
};

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::{expect_of, put, required, retrying, JobUpdate, Listing, NewJob, Service, Versioned};
use crate::enums::*;
use crate::error::{DomainError, Result};
use crate::keys;
use crate::model::{ReplicationJob, VmServer};
use crate::store::{Expect, StoreError, Write, MAX_TRANSACTION_WRITES};

// ------------------------------------------------------------------------------ stored items

/// A server of an application, as the catalog described it when it was added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppServer {
    pub server_id: String,
    pub server_type: ServerType,
    pub vm_server: VmServer,
}

/// SMS `ServerGroup`, stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppServerGroup {
    pub server_group_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub servers: Vec<AppServer>,
}

/// SMS `Tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// SMS `ServerReplicationParameters`. Numbers are wide so that out-of-range values reach
/// validation; stored values have passed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerReplicationParameters {
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
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

/// An application (the body of `APP/<appId>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub app_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_name: Option<String>,
    pub server_groups: Vec<AppServerGroup>,
    pub tags: Vec<Tag>,
    #[serde(with = "time::serde::rfc3339")]
    pub creation_time: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_modified: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// Replication parameters per server id; `None` until PutAppReplicationConfiguration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_configuration: Option<BTreeMap<String, ServerReplicationParameters>>,
    /// The replication job started for each server (server id → job id).
    #[serde(default)]
    pub replication_jobs: BTreeMap<String, String>,
    /// The application holds one slot of `max_replicating_apps`.
    #[serde(default)]
    pub replicating: bool,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub replication_stopped_on: Option<OffsetDateTime>,
    /// PutAppLaunchConfiguration's checked configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_configuration: Option<LaunchConfiguration>,
    /// The application's launch (LaunchApp), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<AppLaunch>,
    /// PutAppValidationConfiguration's checked configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_configuration: Option<ValidationConfiguration>,
    /// The latest outcome of each validation (validation id → output).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub validation_outputs: BTreeMap<String, RecordedValidation>,
    /// Made by ImportAppCatalog from this catalog application (not editable then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_app_id: Option<String>,
}

/// A launch of the application and what it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppLaunch {
    pub status: AppLaunchStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<String>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub latest_launch_time: Option<OffsetDateTime>,
    /// The image each server was launched from (server id → AMI id).
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

impl AppLaunch {
    /// Something launched may still exist (a stack or instances to terminate).
    pub fn is_live(&self) -> bool {
        use AppLaunchStatus as L;
        matches!(
            self.status,
            L::LaunchPending
                | L::LaunchInProgress
                | L::Launched
                | L::PartiallyLaunched
                | L::DeltaLaunchInProgress
                | L::DeltaLaunchFailed
                | L::TerminateInProgress
                | L::TerminateFailed
        )
    }
}

impl App {
    /// Imported applications are read-only (seed: "imported apps are not editable").
    pub(super) fn refuse_if_imported(&self, op: &str) -> Result<()> {
        if self.imported_app_id.is_some() {
            return Err(not_permitted(format!(
                "application {} was imported by ImportAppCatalog and is not editable ({op})",
                self.app_id
            )));
        }
        Ok(())
    }

    fn servers(&self) -> impl Iterator<Item = &AppServer> {
        self.server_groups.iter().flat_map(|g| g.servers.iter())
    }

    fn has_server(&self, server_id: &str) -> bool {
        self.servers().any(|s| s.server_id == server_id)
    }

    /// Servers without replication parameters, in group order.
    fn unconfigured(&self) -> Vec<&str> {
        let config = self.replication_configuration.as_ref();
        self.servers()
            .filter(|s| config.is_none_or(|c| !c.contains_key(&s.server_id)))
            .map(|s| s.server_id.as_str())
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Membership {
    app_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenItem {
    app_id: String,
    /// The request the token was first used with.
    request: Value,
}

// ------------------------------------------------------------------------------ inputs

/// A server group as a request gives it. `server_ids` holds each `serverList[].serverId` (None
/// when the member is absent, refused naming it).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NewServerGroup {
    pub server_group_id: Option<String>,
    pub name: Option<String>,
    pub server_ids: Vec<Option<String>>,
}

/// A tag as a request gives it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NewTag {
    pub key: Option<String>,
    pub value: Option<String>,
}

/// CreateApp's input.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NewApp {
    pub name: Option<String>,
    pub description: Option<String>,
    pub role_name: Option<String>,
    pub client_token: Option<String>,
    pub server_groups: Option<Vec<NewServerGroup>>,
    pub tags: Option<Vec<NewTag>>,
}

/// UpdateApp's input: a given list replaces the stored one, absent members stay unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppUpdate {
    pub app_id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub role_name: Option<String>,
    pub server_groups: Option<Vec<NewServerGroup>>,
    pub tags: Option<Vec<NewTag>>,
}

/// One server's entry of PutAppReplicationConfiguration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerReplication {
    pub server_id: Option<String>,
    pub parameters: Option<ServerReplicationParameters>,
}

/// One group's entry of PutAppReplicationConfiguration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupReplication {
    pub server_group_id: Option<String>,
    pub servers: Vec<ServerReplication>,
}

// ------------------------------------------------------------------------------ outputs

/// SMS `AppSummary`, every member computed from the application and its jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSummary {
    pub app_id: String,
    pub imported_app_id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub status: AppStatus,
    pub status_message: Option<String>,
    pub replication_configuration_status: AppConfigurationStatus,
    pub replication_status: AppReplicationStatus,
    pub replication_status_message: Option<String>,
    pub latest_replication_time: Option<OffsetDateTime>,
    pub launch_configuration_status: AppConfigurationStatus,
    pub launch_status: AppLaunchStatus,
    pub launch_status_message: Option<String>,
    /// SMS `LaunchDetails` (stackName, stackId, latestLaunchTime) of the latest launch.
    pub launch_details: Option<AppLaunch>,
    pub creation_time: OffsetDateTime,
    pub last_modified: OffsetDateTime,
    pub role_name: Option<String>,
    pub total_server_groups: u32,
    pub total_servers: u32,
}

/// SMS `Server` inside an application's group: the job is the one the application started.
#[derive(Debug, Clone, PartialEq)]
pub struct AppServerView {
    pub server_id: String,
    pub server_type: ServerType,
    pub vm_server: VmServer,
    pub replication_job_id: Option<String>,
    pub replication_job_terminated: Option<bool>,
}

/// SMS `ServerGroup` as answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerGroupView {
    pub server_group_id: String,
    pub name: Option<String>,
    pub servers: Vec<AppServerView>,
}

/// CreateApp / GetApp / UpdateApp output.
#[derive(Debug, Clone, PartialEq)]
pub struct AppDetails {
    pub summary: AppSummary,
    pub server_groups: Vec<ServerGroupView>,
    pub tags: Vec<Tag>,
}

/// One group of GetAppReplicationConfiguration.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupReplicationView {
    pub server_group_id: String,
    pub servers: Vec<(AppServerView, ServerReplicationParameters)>,
}

// ------------------------------------------------------------------------------ helpers

fn invalid(msg: impl Into<String>) -> DomainError {
    DomainError::InvalidParameter(msg.into())
}

fn missing(msg: impl Into<String>) -> DomainError {
    DomainError::MissingParameter(msg.into())
}

fn not_permitted(msg: impl Into<String>) -> DomainError {
    DomainError::OperationNotPermitted(msg.into())
}

/// Longest `clientToken` accepted (it is a store key).
const MAX_CLIENT_TOKEN: usize = 255;
/// AWS tag rules: keys up to 128 characters, values up to 256, at most 50 tags.
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;
const MAX_TAGS: usize = 50;
/// ListApps' default page size (SMS model: 100).
const LIST_APPS_DEFAULT: usize = 100;

/// `appId`: required, `app-` + 17 lowercase hex (the model's `AppIdWithValidation` pattern).
fn app_id(name: &str, value: &str) -> Result<String> {
    let v = required(name, value)?;
    let hex = v.strip_prefix("app-").unwrap_or_default();
    if hex.len() != 17 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid(format!(
            "{name} {v:?} is not an application id (app- and 17 lowercase hex digits)"
        )));
    }
    Ok(v.to_string())
}

fn check_tags(tags: &[NewTag]) -> Result<Vec<Tag>> {
    if tags.len() > MAX_TAGS {
        return Err(invalid(format!(
            "tags has {} tags; at most {MAX_TAGS} are allowed",
            tags.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(tags.len());
    for (i, t) in tags.iter().enumerate() {
        let key = required(
            &format!("tags[{i}].key"),
            t.key.as_deref().unwrap_or_default(),
        )?;
        if key.chars().count() > MAX_TAG_KEY {
            return Err(invalid(format!(
                "tags[{i}].key is longer than {MAX_TAG_KEY} characters"
            )));
        }
        let value = t.value.clone().unwrap_or_default();
        if value.chars().count() > MAX_TAG_VALUE {
            return Err(invalid(format!(
                "tags[{i}].value is longer than {MAX_TAG_VALUE} characters"
            )));
        }
        if !seen.insert(key.to_string()) {
            return Err(invalid(format!("tags[{i}].key {key:?} is given twice")));
        }
        out.push(Tag {
            key: key.to_string(),
            value,
        });
    }
    Ok(out)
}

/// A group of a request after shape checks: its given id (if any), name and server ids.
struct GroupPlan {
    given_id: Option<String>,
    name: Option<String>,
    server_ids: Vec<String>,
}

/// Latest completion time of a successful run the job still lists.
fn latest_success(job: &ReplicationJob) -> Option<OffsetDateTime> {
    job.replication_run_list
        .iter()
        .filter(|r| r.state == ReplicationRunState::Completed)
        .filter_map(|r| r.completed_time)
        .max()
}

/// What the application's jobs say about its replication.
struct ReplicationAggregate {
    status: AppReplicationStatus,
    message: Option<String>,
    latest: Option<OffsetDateTime>,
}

fn list_names(ids: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = ids
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        s.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    s
}

/// `replicationStatus` from the application and the current state of each of its jobs
/// (`None`: the job no longer exists as a live job).
fn aggregate(app: &App, jobs: &HashMap<String, Option<ReplicationJob>>) -> ReplicationAggregate {
    let servers: Vec<&AppServer> = app.servers().collect();
    let latest = jobs.values().flatten().filter_map(latest_success).max();
    if app.replication_jobs.is_empty() {
        let unconfigured = app.unconfigured();
        let (status, message) = if app.replication_stopped_on.is_some() {
            (
                AppReplicationStatus::ReplicationStopped,
                Some("Replication was stopped; StartAppReplication starts it again".into()),
            )
        } else if servers.is_empty() {
            (
                AppReplicationStatus::ReadyForConfiguration,
                Some("The application has no servers".into()),
            )
        } else if app.replication_configuration.is_none() {
            (AppReplicationStatus::ReadyForConfiguration, None)
        } else if !unconfigured.is_empty() {
            let ids: Vec<String> = unconfigured.iter().map(|s| s.to_string()).collect();
            (
                AppReplicationStatus::ReadyForConfiguration,
                Some(format!(
                    "No replication parameters for {}",
                    list_names(&ids)
                )),
            )
        } else {
            (AppReplicationStatus::ReadyForReplication, None)
        };
        return ReplicationAggregate {
            status,
            message,
            latest,
        };
    }
    let mut failed = Vec::new();
    let mut lagging = Vec::new();
    let mut imaged = 0usize;
    let mut running = 0usize;
    for s in &servers {
        let job = app
            .replication_jobs
            .get(&s.server_id)
            .and_then(|id| jobs.get(id).map(|j| (id, j)));
        match job {
            None => lagging.push(format!("{} (no replication job yet)", s.server_id)),
            Some((id, None)) => failed.push(format!("{} (job {id} was deleted)", s.server_id)),
            Some((id, Some(j))) => {
                let has_image = j.latest_ami_id.is_some();
                let failing = matches!(
                    j.state,
                    ReplicationJobState::Failed
                        | ReplicationJobState::Failing
                        | ReplicationJobState::PausedOnFailure
                        | ReplicationJobState::Deleting
                        | ReplicationJobState::Deleted
                );
                if has_image {
                    imaged += 1;
                }
                if j.active_run.is_some() {
                    running += 1;
                }
                if failing {
                    let why = j.status_message.as_deref().unwrap_or("no message");
                    failed.push(format!("{} (job {id} {}: {why})", s.server_id, j.state));
                } else if !has_image {
                    lagging.push(s.server_id.clone());
                }
            }
        }
    }
    let n = servers.len();
    let (status, message) = if !failed.is_empty() {
        let status = if imaged == n {
            AppReplicationStatus::DeltaReplicationFailed
        } else if imaged > 0 {
            AppReplicationStatus::PartiallyReplicated
        } else {
            AppReplicationStatus::ReplicationFailed
        };
        (
            status,
            Some(format!(
                "{imaged} of {n} servers replicated; failed: {}",
                list_names(&failed)
            )),
        )
    } else if lagging.is_empty() {
        if running > 0 {
            (
                AppReplicationStatus::DeltaReplicationInProgress,
                Some(format!("{running} of {n} servers are replicating changes")),
            )
        } else {
            (AppReplicationStatus::Replicated, None)
        }
    } else if imaged > 0 || running > 0 {
        (
            AppReplicationStatus::ReplicationInProgress,
            Some(format!(
                "{imaged} of {n} servers replicated; waiting for {}",
                list_names(&lagging)
            )),
        )
    } else {
        (
            AppReplicationStatus::ReplicationPending,
            Some(format!(
                "Waiting for the first run of {}",
                list_names(&lagging)
            )),
        )
    };
    ReplicationAggregate {
        status,
        message,
        latest,
    }
}

impl Service {
    // -------------------------------------------------------------------------- reads

    async fn app(&self, id: &str) -> Result<Versioned<App>> {
        self.read::<App>(&keys::app(id))
            .await?
            .ok_or_else(|| invalid(format!("there is no application {id}")))
    }

    /// The live job of each job id the application recorded (`None` when it was deleted).
    async fn app_jobs(&self, app: &App) -> Result<HashMap<String, Option<ReplicationJob>>> {
        let reads = app.replication_jobs.values().map(|id| async move {
            let job = self.read::<ReplicationJob>(&keys::job(id)).await?;
            Ok::<_, DomainError>((id.clone(), job.map(|j| j.value)))
        });
        futures::future::try_join_all(reads)
            .await
            .map(|v| v.into_iter().collect())
    }

    fn summarize(&self, app: &App, jobs: &HashMap<String, Option<ReplicationJob>>) -> AppSummary {
        let agg = aggregate(app, jobs);
        AppSummary {
            app_id: app.app_id.clone(),
            imported_app_id: app.imported_app_id.clone(),
            name: app.name.clone(),
            description: app.description.clone(),
            status: AppStatus::Active,
            status_message: None,
            replication_configuration_status: if app.replication_configuration.is_some() {
                AppConfigurationStatus::Configured
            } else {
                AppConfigurationStatus::NotConfigured
            },
            replication_status: agg.status,
            replication_status_message: agg.message,
            latest_replication_time: agg.latest,
            launch_configuration_status: if app.launch_configuration.is_some() {
                AppConfigurationStatus::Configured
            } else {
                AppConfigurationStatus::NotConfigured
            },
            launch_status: match (&app.launch, &app.launch_configuration) {
                (Some(l), _) => l.status,
                (None, Some(_)) => AppLaunchStatus::ReadyForLaunch,
                (None, None) => AppLaunchStatus::ReadyForConfiguration,
            },
            launch_status_message: app.launch.as_ref().and_then(|l| l.message.clone()),
            launch_details: app.launch.clone(),
            creation_time: app.creation_time,
            last_modified: app.last_modified,
            role_name: app.role_name.clone(),
            total_server_groups: app.server_groups.len() as u32,
            total_servers: app.servers().count() as u32,
        }
    }

    fn server_view(
        app: &App,
        s: &AppServer,
        jobs: &HashMap<String, Option<ReplicationJob>>,
    ) -> AppServerView {
        let job_id = app.replication_jobs.get(&s.server_id).cloned();
        let terminated = job_id.as_ref().map(|id| {
            jobs.get(id).is_none_or(|j| {
                j.as_ref().is_none_or(|j| {
                    matches!(
                        j.state,
                        ReplicationJobState::Failed | ReplicationJobState::Deleted
                    )
                })
            })
        });
        AppServerView {
            server_id: s.server_id.clone(),
            server_type: s.server_type,
            vm_server: s.vm_server.clone(),
            replication_job_id: job_id,
            replication_job_terminated: terminated,
        }
    }

    async fn details(&self, app: &App) -> Result<AppDetails> {
        let jobs = self.app_jobs(app).await?;
        Ok(AppDetails {
            summary: self.summarize(app, &jobs),
            server_groups: app
                .server_groups
                .iter()
                .map(|g| ServerGroupView {
                    server_group_id: g.server_group_id.clone(),
                    name: g.name.clone(),
                    servers: g
                        .servers
                        .iter()
                        .map(|s| Self::server_view(app, s, &jobs))
                        .collect(),
                })
                .collect(),
            tags: app.tags.clone(),
        })
    }

    /// GetApp.
    pub async fn get_app(&self, id: &str) -> Result<AppDetails> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?;
        self.details(&app.value).await
    }

    /// ListApps: a page of summaries in id order, of every application or of `app_ids`
    /// (unknown ids are left out, malformed ones refused).
    pub async fn list_apps(
        &self,
        app_ids: Option<Vec<String>>,
        max_results: Option<i64>,
        after: Option<&str>,
    ) -> Result<Listing<AppSummary>> {
        let limit = match max_results {
            None => LIST_APPS_DEFAULT.min(self.config.limits.max_page_size.max(1) as usize),
            n => self.page_size(n)?,
        };
        let (apps, last) = match app_ids.filter(|ids| !ids.is_empty()) {
            None => {
                let (items, last) = self.list::<App>(keys::APP, after, limit).await?;
                (items.into_iter().map(|v| v.value).collect::<Vec<_>>(), last)
            }
            Some(ids) => {
                let mut wanted = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| app_id(&format!("appIds[{i}]"), id))
                    .collect::<Result<Vec<_>>>()?;
                wanted.sort();
                wanted.dedup();
                wanted.retain(|id| after.is_none_or(|a| id.as_str() > a));
                let more = wanted.len() > limit;
                wanted.truncate(limit);
                let reads = wanted
                    .iter()
                    .map(|id| async move { self.read::<App>(&keys::app(id)).await });
                let found: Vec<App> = futures::future::try_join_all(reads)
                    .await?
                    .into_iter()
                    .flatten()
                    .map(|v| v.value)
                    .collect();
                let last = if more { wanted.last().cloned() } else { None };
                (found, last)
            }
        };
        let summaries = futures::future::try_join_all(apps.iter().map(|app| async move {
            let jobs = self.app_jobs(app).await?;
            Ok::<_, DomainError>(self.summarize(app, &jobs))
        }))
        .await?;
        Ok(Listing {
            items: summaries,
            last,
        })
    }

    // -------------------------------------------------------------------------- groups
}

#[cfg(test)]
mod tests;
