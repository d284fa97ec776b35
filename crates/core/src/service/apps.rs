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
//! Launch configuration, LaunchApp/TerminateApp, templates, validation and ImportAppCatalog are
//! not implemented yet: `launchStatus` is always READY_FOR_CONFIGURATION and no stack is ever
//! launched, so DeleteApp never has one to leave behind.

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
}

impl App {
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
            launch_configuration_status: AppConfigurationStatus::NotConfigured,
            launch_status: AppLaunchStatus::ReadyForConfiguration,
            launch_status_message: None,
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

    /// Shape checks of a request's groups: limits, server ids present and unique.
    fn plan_groups(&self, groups: &[NewServerGroup]) -> Result<Vec<GroupPlan>> {
        let l = &self.config.limits;
        if groups.len() > l.max_groups_per_app as usize {
            return Err(invalid(format!(
                "serverGroups has {} groups; an application may have at most {} (limits.max_groups_per_app)",
                groups.len(),
                l.max_groups_per_app
            )));
        }
        let total: usize = groups.iter().map(|g| g.server_ids.len()).sum();
        if total > l.max_servers_per_app as usize {
            return Err(invalid(format!(
                "serverGroups holds {total} servers; an application may have at most {} (limits.max_servers_per_app)",
                l.max_servers_per_app
            )));
        }
        let mut seen = HashMap::new();
        let mut given_ids = HashSet::new();
        let mut plans = Vec::with_capacity(groups.len());
        for (i, g) in groups.iter().enumerate() {
            let given_id = g
                .server_group_id
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            if let Some(id) = &given_id {
                if !given_ids.insert(id.clone()) {
                    return Err(invalid(format!(
                        "serverGroups[{i}].serverGroupId {id} is given twice"
                    )));
                }
            }
            let mut server_ids = Vec::with_capacity(g.server_ids.len());
            for (j, s) in g.server_ids.iter().enumerate() {
                let member = format!("serverGroups[{i}].serverList[{j}].serverId");
                let id = required(&member, s.as_deref().unwrap_or_default())?.to_string();
                if let Some(first) = seen.insert(id.clone(), member.clone()) {
                    return Err(invalid(format!(
                        "{member}: server {id} is already in the application as {first}"
                    )));
                }
                server_ids.push(id);
            }
            plans.push(GroupPlan {
                given_id,
                name: g.name.clone().filter(|n| !n.trim().is_empty()),
                server_ids,
            });
        }
        Ok(plans)
    }

    /// The catalog's description of a server being added, or a refusal naming the member.
    async fn catalog_server(&self, member: &str, id: &str) -> Result<AppServer> {
        let (_, server) = self.current_server(id).await?;
        let s = server.ok_or_else(|| {
            invalid(format!(
                "{member}: there is no server {id} in the server catalog (see GetServers)"
            ))
        })?;
        Ok(AppServer {
            server_id: s.value.server_id,
            server_type: s.value.server_type,
            vm_server: s.value.vm_server,
        })
    }

    /// The write that makes `server_id` a member of `app_id`, or a refusal when another
    /// application holds it. A membership whose application no longer lists the server is
    /// taken over.
    async fn join(&self, member: &str, server_id: &str, app_id: &str) -> Result<Option<Write>> {
        let key = keys::app_server(server_id);
        let current = self.read::<Membership>(&key).await?;
        if let Some(m) = &current {
            if m.value.app_id == app_id {
                return Ok(None);
            }
            let holder = self.read::<App>(&keys::app(&m.value.app_id)).await?;
            if holder.is_some_and(|h| h.value.has_server(server_id)) {
                return Err(invalid(format!(
                    "{member}: server {server_id} already belongs to application {}; a server can be in one application only",
                    m.value.app_id
                )));
            }
        }
        Ok(Some(put(
            key,
            &Membership {
                app_id: app_id.to_string(),
            },
            expect_of(&current),
        )?))
    }

    /// Builds the groups of `plans` for application `app_id` (existing groups keep their ids),
    /// with the membership writes of the servers it adds.
    async fn build_groups(
        &self,
        app_id: &str,
        plans: &[GroupPlan],
        new_ids: &[String],
        existing: &[AppServerGroup],
    ) -> Result<(Vec<AppServerGroup>, Vec<Write>)> {
        let mut groups = Vec::with_capacity(plans.len());
        let mut writes = Vec::new();
        let old: HashMap<&str, &AppServer> = existing
            .iter()
            .flat_map(|g| g.servers.iter())
            .map(|s| (s.server_id.as_str(), s))
            .collect();
        for (i, (plan, new_id)) in plans.iter().zip(new_ids).enumerate() {
            let server_group_id = match &plan.given_id {
                Some(id) if existing.iter().any(|g| &g.server_group_id == id) => id.clone(),
                Some(id) => {
                    return Err(invalid(format!(
                        "serverGroups[{i}].serverGroupId {id} is not a group of application {app_id}; omit it to add a new group"
                    )))
                }
                None => new_id.clone(),
            };
            let mut servers = Vec::with_capacity(plan.server_ids.len());
            for (j, id) in plan.server_ids.iter().enumerate() {
                if let Some(s) = old.get(id.as_str()) {
                    servers.push((*s).clone());
                    continue;
                }
                let member = format!("serverGroups[{i}].serverList[{j}].serverId");
                servers.push(self.catalog_server(&member, id).await?);
                writes.extend(self.join(&member, id, app_id).await?);
            }
            groups.push(AppServerGroup {
                server_group_id,
                name: plan.name.clone(),
                servers,
            });
        }
        Ok((groups, writes))
    }

    // -------------------------------------------------------------------------- writes

    /// CreateApp.
    #[tracing::instrument(name = "create_app", skip_all)]
    pub async fn create_app(&self, req: NewApp) -> Result<AppDetails> {
        let token = req
            .client_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.as_ref().is_some_and(|t| t.len() > MAX_CLIENT_TOKEN) {
            return Err(invalid(format!(
                "clientToken is longer than {MAX_CLIENT_TOKEN} characters"
            )));
        }
        let tags = check_tags(req.tags.as_deref().unwrap_or_default())?;
        let plans = self.plan_groups(req.server_groups.as_deref().unwrap_or_default())?;
        if plans.iter().any(|p| p.given_id.is_some()) {
            // New applications get new group ids; a given one would name nothing.
            let i = plans.iter().position(|p| p.given_id.is_some()).unwrap_or(0);
            return Err(invalid(format!(
                "serverGroups[{i}].serverGroupId: a new application's groups get their ids from CreateApp; omit it"
            )));
        }
        let request = super::encode(&req)?;
        let app_id = self.ids.new_id(crate::IdKind::App);
        let group_ids: Vec<String> = plans
            .iter()
            .map(|_| self.ids.new_id(crate::IdKind::ServerGroup))
            .collect();
        // The application an earlier request with this clientToken created, if any.
        let earlier = || async {
            let Some(t) = &token else {
                return Ok(None);
            };
            let Some(done) = self.read::<TokenItem>(&keys::app_token(t)).await? else {
                return Ok(None);
            };
            if done.value.request != request {
                return Err(invalid(format!(
                    "clientToken {t} was already used to create application {} with different parameters",
                    done.value.app_id
                )));
            }
            Ok(Some(self.app(&done.value.app_id).await?.value))
        };
        let app = retrying!(self, "CreateApp", async {
            if let Some(app) = earlier().await? {
                return Ok(app);
            }
            let (server_groups, mut writes) =
                match self.build_groups(&app_id, &plans, &group_ids, &[]).await {
                    Ok(built) => built,
                    // A request with the same token may have committed between our reads of
                    // the token and of the memberships: then its servers read as taken, and the
                    // answer is that request's application.
                    Err(e) => match earlier().await? {
                        Some(app) => return Ok(app),
                        None => return Err(e),
                    },
                };
            let now = self.now();
            let app = App {
                app_id: app_id.clone(),
                name: req.name.clone(),
                description: req.description.clone(),
                role_name: req.role_name.clone(),
                server_groups,
                tags: tags.clone(),
                creation_time: now,
                last_modified: now,
                client_token: token.clone(),
                replication_configuration: None,
                replication_jobs: BTreeMap::new(),
                replicating: false,
                replication_stopped_on: None,
            };
            writes.push(put(keys::app(&app_id), &app, Expect::Absent)?);
            if let Some(t) = &token {
                writes.push(put(
                    keys::app_token(t),
                    &TokenItem {
                        app_id: app_id.clone(),
                        request: request.clone(),
                    },
                    Expect::Absent,
                )?);
            }
            self.store.transact(writes).await?;
            tracing::info!(app_id = %app_id, "application created");
            Ok(app)
        })?;
        self.details(&app).await
    }

    /// UpdateApp.
    #[tracing::instrument(name = "update_app", skip_all, fields(app_id = %req.app_id))]
    pub async fn update_app(&self, req: AppUpdate) -> Result<AppDetails> {
        let id = app_id("appId", &req.app_id)?;
        let tags = req.tags.as_deref().map(check_tags).transpose()?;
        let plans = req
            .server_groups
            .as_deref()
            .map(|g| self.plan_groups(g))
            .transpose()?;
        let new_ids: Vec<String> = plans
            .iter()
            .flatten()
            .map(|_| self.ids.new_id(crate::IdKind::ServerGroup))
            .collect();
        let app = retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            if let Some(n) = &req.name {
                app.name = Some(n.clone());
            }
            if let Some(d) = &req.description {
                app.description = Some(d.clone());
            }
            if let Some(r) = &req.role_name {
                app.role_name = Some(r.clone());
            }
            if let Some(t) = &tags {
                app.tags = t.clone();
            }
            let mut writes = Vec::new();
            if let Some(plans) = &plans {
                let keep: HashSet<&str> = plans
                    .iter()
                    .flat_map(|p| p.server_ids.iter().map(String::as_str))
                    .collect();
                let removed: Vec<String> = app
                    .servers()
                    .filter(|s| !keep.contains(s.server_id.as_str()))
                    .map(|s| s.server_id.clone())
                    .collect();
                if let Some(s) = removed
                    .iter()
                    .find(|s| app.replication_jobs.contains_key(*s))
                {
                    return Err(not_permitted(format!(
                        "server {s} of application {id} is being replicated (job {}); stop the application's replication (StopAppReplication) before removing it",
                        app.replication_jobs[s]
                    )));
                }
                let (groups, joins) = self
                    .build_groups(&id, plans, &new_ids, &app.server_groups)
                    .await?;
                writes = joins;
                // Memberships of removed servers go in the same transaction when it has room;
                // otherwise they are left stale, and the next application to take a server
                // takes it over (see `join`).
                for s in &removed {
                    if writes.len() + 2 > MAX_TRANSACTION_WRITES {
                        break;
                    }
                    let key = keys::app_server(s);
                    if let Some(m) = self.read::<Membership>(&key).await? {
                        if m.value.app_id == id {
                            writes.push(Write::Delete {
                                key,
                                expect: m.expect(),
                            });
                        }
                    }
                }
                if let Some(config) = &mut app.replication_configuration {
                    config.retain(|server, _| keep.contains(server.as_str()));
                }
                app.server_groups = groups;
            }
            app.last_modified = self.now();
            writes.push(put(keys::app(&id), &app, stored.expect())?);
            self.store.transact(writes).await?;
            Ok(app)
        })?;
        self.details(&app).await
    }

    /// DeleteApp. Replication jobs still running are refused unless `force_stop_replication`
    /// (then they are deleted first, through StopAppReplication). No application is ever
    /// launched in this release, so `force_terminate` has no stack to terminate.
    #[tracing::instrument(name = "delete_app", skip(self))]
    pub async fn delete_app(
        &self,
        id: &str,
        force_stop_replication: bool,
        force_terminate: bool,
    ) -> Result<()> {
        let id = app_id("appId", id)?;
        let _ = force_terminate;
        let app = self.app(&id).await?;
        let jobs = self.app_jobs(&app.value).await?;
        let mut live: Vec<String> = jobs
            .iter()
            .filter(|(_, j)| j.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        live.sort();
        if !live.is_empty() {
            if !force_stop_replication {
                return Err(not_permitted(format!(
                    "application {id} still has replication jobs {}; stop its replication (StopAppReplication) or pass forceStopAppReplication",
                    list_names(&live)
                )));
            }
            self.stop_app_replication(&id).await?;
        }
        retrying!(self, id, async {
            let Some(app) = self.read::<App>(&keys::app(&id)).await? else {
                // Deleted by a concurrent request, or an earlier attempt of this one.
                return Ok(());
            };
            if !app.value.replication_jobs.is_empty() {
                return Err(not_permitted(format!(
                    "application {id} started replicating again; stop it first"
                )));
            }
            let mut writes = vec![Write::Delete {
                key: keys::app(&id),
                expect: app.expect(),
            }];
            for s in app.value.servers() {
                let key = keys::app_server(&s.server_id);
                if let Some(m) = self.read::<Membership>(&key).await? {
                    if m.value.app_id == id {
                        writes.push(Write::Delete {
                            key,
                            expect: m.expect(),
                        });
                    }
                }
            }
            if let Some(t) = &app.value.client_token {
                writes.push(Write::Delete {
                    key: keys::app_token(t),
                    expect: Expect::Any,
                });
            }
            if app.value.replicating {
                writes.push(Self::release_app_slot());
            }
            self.store.transact(writes).await?;
            tracing::info!(app_id = %id, "application deleted");
            Ok(())
        })
    }

    // -------------------------------------------------------------------------- replication

    /// PutAppReplicationConfiguration: replaces the stored configuration. Each server's
    /// parameters pass the rules of CreateReplicationJob; a server that already has a job of
    /// the application gets the changeable ones (frequency, license, AMIs kept, encryption)
    /// through UpdateReplicationJob.
    #[tracing::instrument(name = "put_app_replication_configuration", skip(self, groups))]
    pub async fn put_app_replication_configuration(
        &self,
        id: &str,
        groups: Vec<GroupReplication>,
    ) -> Result<()> {
        let id = app_id("appId", id)?;
        const LIST: &str = "serverGroupReplicationConfigurations";
        let app = self.app(&id).await?.value;
        let mut config = BTreeMap::new();
        for (i, g) in groups.iter().enumerate() {
            let group_member = format!("{LIST}[{i}].serverGroupId");
            let gid = required(
                &group_member,
                g.server_group_id.as_deref().unwrap_or_default(),
            )?;
            let group = app
                .server_groups
                .iter()
                .find(|x| x.server_group_id == gid)
                .ok_or_else(|| {
                    invalid(format!(
                        "{group_member}: {gid} is not a server group of application {id}"
                    ))
                })?;
            for (j, s) in g.servers.iter().enumerate() {
                let at = format!("{LIST}[{i}].serverReplicationConfigurations[{j}]");
                let sid = required(
                    &format!("{at}.server.serverId"),
                    s.server_id.as_deref().unwrap_or_default(),
                )?;
                if !group.servers.iter().any(|x| x.server_id == sid) {
                    return Err(invalid(format!(
                        "{at}.server.serverId: server {sid} is not in server group {gid}"
                    )));
                }
                let p = s.parameters.clone().ok_or_else(|| {
                    missing(format!("{at}.serverReplicationParameters is required"))
                })?;
                self.check_parameters(&format!("{at}.serverReplicationParameters"), sid, &p)
                    .await?;
                if config.insert(sid.to_string(), p).is_some() {
                    return Err(invalid(format!(
                        "{at}.server.serverId: server {sid} is configured twice"
                    )));
                }
            }
        }
        let config_for_jobs = config.clone();
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            app.replication_configuration = Some(config.clone());
            app.last_modified = self.now();
            self.store
                .write(put(keys::app(&id), &app, stored.expect())?)
                .await?;
            Ok(())
        })?;
        for (server, job) in &app.replication_jobs {
            let Some(p) = config_for_jobs.get(server) else {
                continue;
            };
            let update = JobUpdate {
                replication_job_id: job.clone(),
                frequency: p.frequency.filter(|_| p.run_once != Some(true)),
                license_type: p.license_type,
                number_of_recent_amis_to_keep: p.number_of_recent_amis_to_keep,
                encrypted: p.encrypted,
                kms_key_id: p.kms_key_id.clone(),
                ..JobUpdate::default()
            };
            match self.update_job(update).await {
                // A job that ended or is gone keeps what it had.
                Ok(()) | Err(DomainError::JobNotFound(_)) => {}
                Err(DomainError::OperationNotPermitted(m)) => {
                    tracing::info!(job, message = %m, "job not updated");
                }
                Err(DomainError::InvalidParameter(m)) if m.contains("runOnce") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The rules of CreateReplicationJob applied to one server's parameters, with `at` naming
    /// the member in messages.
    async fn check_parameters(
        &self,
        at: &str,
        server_id: &str,
        p: &ServerReplicationParameters,
    ) -> Result<()> {
        let named = |e: DomainError| match e {
            DomainError::InvalidParameter(m) => invalid(format!("{at}: {m}")),
            DomainError::MissingParameter(m) => missing(format!("{at}: {m}")),
            other => other,
        };
        match (p.frequency, p.run_once.unwrap_or(false)) {
            (Some(f), _) => {
                self.check_frequency(f).map_err(named)?;
            }
            (None, true) => {}
            (None, false) => {
                return Err(missing(format!(
                    "{at}.frequency is required unless runOnce is true"
                )))
            }
        }
        self.check_amis(p.number_of_recent_amis_to_keep.unwrap_or(0))
            .map_err(named)?;
        if let Some(t) = p.seed_time {
            self.check_not_too_far("seedTime", t).map_err(named)?;
        }
        Self::check_kms(p.encrypted.unwrap_or(false), p.kms_key_id.as_deref()).map_err(named)?;
        let (_, server) = self.current_server(server_id).await?;
        let os = server.and_then(|s| s.value.os_type);
        Self::check_license(os, p.license_type, server_id).map_err(named)?;
        Ok(())
    }

    /// GetAppReplicationConfiguration: the configuration by the application's current groups
    /// (empty when none is stored).
    pub async fn get_app_replication_configuration(
        &self,
        id: &str,
    ) -> Result<Vec<GroupReplicationView>> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        let Some(config) = &app.replication_configuration else {
            return Ok(Vec::new());
        };
        let jobs = self.app_jobs(&app).await?;
        Ok(app
            .server_groups
            .iter()
            .map(|g| GroupReplicationView {
                server_group_id: g.server_group_id.clone(),
                servers: g
                    .servers
                    .iter()
                    .filter_map(|s| {
                        config
                            .get(&s.server_id)
                            .map(|p| (Self::server_view(&app, s, &jobs), p.clone()))
                    })
                    .collect(),
            })
            .filter(|g| !g.servers.is_empty())
            .collect())
    }

    /// DeleteAppReplicationConfiguration; refused while the application has replication jobs.
    pub async fn delete_app_replication_configuration(&self, id: &str) -> Result<()> {
        let id = app_id("appId", id)?;
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            if !app.replication_jobs.is_empty() {
                return Err(not_permitted(format!(
                    "application {id} is replicating; stop its replication (StopAppReplication) before deleting its replication configuration"
                )));
            }
            if app.replication_configuration.take().is_none() {
                return Ok(());
            }
            app.last_modified = self.now();
            self.store
                .write(put(keys::app(&id), &app, stored.expect())?)
                .await?;
            Ok(())
        })
    }

    /// The write that releases one slot of the replicating-application counter.
    fn release_app_slot() -> Write {
        Write::Add {
            key: keys::replicating_apps(),
            delta: -1,
            at_most: None,
        }
    }

    /// StartAppReplication: one replication job per server (see the module comment). Servers
    /// that already have the application's live job are left alone, so a retry only creates
    /// what is missing.
    #[tracing::instrument(name = "start_app_replication", skip(self))]
    pub async fn start_app_replication(&self, id: &str) -> Result<()> {
        let id = app_id("appId", id)?;
        let max = self.config.limits.max_replicating_apps;
        // Take a slot of the replicating-application limit (once per application).
        let app = retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let app = &stored.value;
            if app.servers().next().is_none() {
                return Err(not_permitted(format!(
                    "application {id} has no servers to replicate"
                )));
            }
            if app.replication_configuration.is_none() {
                return Err(not_permitted(format!(
                    "application {id} has no replication configuration; PutAppReplicationConfiguration first"
                )));
            }
            let unconfigured = app.unconfigured();
            if !unconfigured.is_empty() {
                let ids: Vec<String> = unconfigured.iter().map(|s| s.to_string()).collect();
                return Err(not_permitted(format!(
                    "application {id} has no replication parameters for {}; PutAppReplicationConfiguration first",
                    list_names(&ids)
                )));
            }
            if app.replicating {
                return Ok(stored.value.clone());
            }
            let mut app = stored.value.clone();
            app.replicating = true;
            app.replication_stopped_on = None;
            app.last_modified = self.now();
            let taken = self
                .store
                .transact(vec![
                    put(keys::app(&id), &app, stored.expect())?,
                    Write::Add {
                        key: keys::replicating_apps(),
                        delta: 1,
                        at_most: Some(u64::from(max)),
                    },
                ])
                .await;
            match taken {
                Err(StoreError::ConditionFailed { index: Some(1), .. }) => {
                    Err(DomainError::LimitExceeded(format!(
                        "{max} applications are replicating, the limit (limits.max_replicating_apps); stop one first"
                    )))
                }
                other => {
                    other?;
                    Ok(app)
                }
            }
        })?;
        let config = app.replication_configuration.clone().unwrap_or_default();
        let jobs = self.app_jobs(&app).await?;
        let mut created = Vec::new();
        let mut failure = None;
        for s in app.servers() {
            let has_live = app
                .replication_jobs
                .get(&s.server_id)
                .is_some_and(|j| jobs.get(j).is_some_and(Option::is_some));
            if has_live {
                continue;
            }
            let p = config.get(&s.server_id).cloned().unwrap_or_default();
            match self.app_server_job(&app, &s.server_id, &p).await {
                Ok(job) => created.push((s.server_id.clone(), job)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // Record what exists, even when a later server failed: those jobs are the
        // application's and StopAppReplication must find them.
        retrying!(self, id, async {
            let Some(stored) = self.read::<App>(&keys::app(&id)).await? else {
                return Err(not_permitted(format!(
                    "application {id} was deleted while its replication started"
                )));
            };
            let mut app = stored.value.clone();
            let mut changed = false;
            for (server, job) in &created {
                if app.has_server(server) && app.replication_jobs.get(server) != Some(job) {
                    app.replication_jobs.insert(server.clone(), job.clone());
                    changed = true;
                }
            }
            if changed {
                app.last_modified = self.now();
                self.store
                    .write(put(keys::app(&id), &app, stored.expect())?)
                    .await?;
            }
            Ok(())
        })?;
        match failure {
            Some(e) => Err(e),
            None => {
                tracing::info!(app_id = %id, jobs = created.len(), "application replication started");
                Ok(())
            }
        }
    }

    /// The live job replicating `server_id` for `app`: its existing one (adopted), else a new
    /// one made by CreateReplicationJob's use case.
    async fn app_server_job(
        &self,
        app: &App,
        server_id: &str,
        p: &ServerReplicationParameters,
    ) -> Result<String> {
        let existing = || async {
            let (_, server) = self.current_server(server_id).await?;
            Ok::<_, DomainError>(
                server
                    .filter(|s| s.value.has_live_job())
                    .and_then(|s| s.value.replication_job_id),
            )
        };
        if let Some(job) = existing().await? {
            return Ok(job);
        }
        let req = NewJob {
            server_id: server_id.to_string(),
            seed_replication_time: Some(p.seed_time.unwrap_or_else(|| self.now())),
            frequency: p.frequency,
            run_once: p.run_once,
            license_type: p.license_type,
            role_name: app.role_name.clone(),
            description: Some(format!(
                "application {}{}",
                app.app_id,
                app.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )),
            number_of_recent_amis_to_keep: p.number_of_recent_amis_to_keep,
            encrypted: p.encrypted,
            kms_key_id: p.kms_key_id.clone(),
        };
        match self.create_job(req).await {
            Ok(job) => Ok(job),
            // A concurrent StartAppReplication of this application made it.
            Err(DomainError::JobAlreadyExists(m)) => {
                existing().await?.ok_or(DomainError::JobAlreadyExists(m))
            }
            Err(e) => Err(e),
        }
    }

    /// StartOnDemandAppReplication: an on-demand run of every job of the application that has
    /// no run in progress (StartOnDemandReplicationRun's use case, with its limits).
    #[tracing::instrument(name = "start_on_demand_app_replication", skip(self, description))]
    pub async fn start_on_demand_app_replication(
        &self,
        id: &str,
        description: Option<String>,
    ) -> Result<()> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        let jobs = self.app_jobs(&app).await?;
        let live: Vec<&ReplicationJob> = jobs.values().flatten().collect();
        if live.is_empty() {
            return Err(not_permitted(format!(
                "application {id} has no replication jobs; StartAppReplication first"
            )));
        }
        let mut started = 0;
        for j in live {
            if j.active_run.is_some() {
                continue;
            }
            self.start_on_demand_run(&j.replication_job_id, description.clone())
                .await?;
            started += 1;
        }
        tracing::info!(app_id = %id, started, "on-demand application replication");
        Ok(())
    }

    /// StopAppReplication: deletes every job of the application (DeleteReplicationJob's use
    /// case; AMIs are kept) and releases its replicating slot.
    #[tracing::instrument(name = "stop_app_replication", skip(self))]
    pub async fn stop_app_replication(&self, id: &str) -> Result<()> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        for job in app.replication_jobs.values() {
            match self.delete_job(job).await {
                Ok(()) | Err(DomainError::JobNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let stopped: HashSet<String> = app.replication_jobs.values().cloned().collect();
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            if !app.replicating && app.replication_jobs.is_empty() {
                return Ok(());
            }
            // Jobs recorded meanwhile by a concurrent start stay recorded (and running).
            app.replication_jobs.retain(|_, job| !stopped.contains(job));
            let mut writes = Vec::new();
            if app.replication_jobs.is_empty() {
                if app.replicating {
                    writes.push(Self::release_app_slot());
                }
                app.replicating = false;
                app.replication_stopped_on = Some(self.now());
            }
            app.last_modified = self.now();
            writes.push(put(keys::app(&id), &app, stored.expect())?);
            self.store.transact(writes).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server(id: &str) -> AppServer {
        serde_json::from_value(json!({"serverId": id, "serverType": "VIRTUAL_MACHINE",
            "vmServer": {"vmServerAddress": {"vmManagerId": "vc", "vmId": id}}}))
        .unwrap()
    }

    fn app(jobs: &[(&str, &str)]) -> App {
        let t = OffsetDateTime::UNIX_EPOCH;
        App {
            app_id: "app-00000000000000001".into(),
            name: None,
            description: None,
            role_name: None,
            server_groups: vec![AppServerGroup {
                server_group_id: "sg-1".into(),
                name: None,
                servers: vec![server("s-a"), server("s-b")],
            }],
            tags: vec![],
            creation_time: t,
            last_modified: t,
            client_token: None,
            replication_configuration: Some(BTreeMap::from([
                ("s-a".into(), ServerReplicationParameters::default()),
                ("s-b".into(), ServerReplicationParameters::default()),
            ])),
            replication_jobs: jobs
                .iter()
                .map(|(s, j)| (s.to_string(), j.to_string()))
                .collect(),
            replicating: !jobs.is_empty(),
            replication_stopped_on: None,
        }
    }

    /// A job in `state`, with an image when `ami`, a run in progress when `running`.
    fn job(id: &str, state: &str, ami: bool, running: bool) -> ReplicationJob {
        let mut runs = vec![];
        if ami {
            runs.push(
                json!({"replicationRunId": "sms-run-1", "state": "COMPLETED",
                "type": "AUTOMATIC", "completedTime": "2026-01-02T00:00:00Z", "seq": 1}),
            );
        }
        serde_json::from_value(json!({
            "replicationJobId": id, "serverId": "s", "serverType": "VIRTUAL_MACHINE",
            "vmServer": {"vmServerAddress": {"vmManagerId": "vc", "vmId": "v"}},
            "seedReplicationTime": "2026-01-01T00:00:00Z", "runOnce": false, "state": state,
            "statusMessage": "disk unreadable",
            "numberOfRecentAmisToKeep": 0, "encrypted": false, "replicationRunList": runs,
            "connectorId": "c", "createdOn": "2026-01-01T00:00:00Z", "runCount": 1,
            "latestAmiId": if ami { json!("ami-1") } else { json!(null) },
            "activeRun": if running { json!({"replicationRunId": "sms-run-2", "seq": 2}) } else { json!(null) },
        }))
        .unwrap()
    }

    fn status(
        app: &App,
        jobs: Vec<(&str, Option<ReplicationJob>)>,
    ) -> (AppReplicationStatus, String) {
        let jobs = jobs
            .into_iter()
            .map(|(id, j)| (id.to_string(), j))
            .collect();
        let a = aggregate(app, &jobs);
        (a.status, a.message.unwrap_or_default())
    }

    #[test]
    fn replication_status_follows_the_jobs() {
        use AppReplicationStatus as S;
        let two = app(&[("s-a", "j-a"), ("s-b", "j-b")]);
        let j = |a: &str, b: &str, ami_a, ami_b, run_a, run_b| {
            vec![
                ("j-a", Some(job("j-a", a, ami_a, run_a))),
                ("j-b", Some(job("j-b", b, ami_b, run_b))),
            ]
        };
        assert_eq!(status(&app(&[]), vec![]).0, S::ReadyForReplication);
        let (s, m) = status(&two, j("PENDING", "PENDING", false, false, false, false));
        assert_eq!(s, S::ReplicationPending);
        assert!(m.contains("s-a") && m.contains("s-b"), "{m}");
        let (s, m) = status(&two, j("ACTIVE", "ACTIVE", true, false, false, true));
        assert_eq!(s, S::ReplicationInProgress);
        assert!(
            m.contains("1 of 2") && m.contains("s-b") && !m.contains("s-a"),
            "{m}"
        );
        assert_eq!(
            status(&two, j("ACTIVE", "ACTIVE", true, true, false, false)).0,
            S::Replicated
        );
        assert_eq!(
            status(&two, j("ACTIVE", "ACTIVE", true, true, true, false)).0,
            S::DeltaReplicationInProgress
        );
        let (s, m) = status(&two, j("ACTIVE", "FAILED", true, false, false, false));
        assert_eq!(s, S::PartiallyReplicated);
        assert!(m.contains("s-b") && m.contains("disk unreadable"), "{m}");
        assert_eq!(
            status(
                &two,
                j("PAUSED_ON_FAILURE", "ACTIVE", false, false, false, true)
            )
            .0,
            S::ReplicationFailed
        );
        assert_eq!(
            status(
                &two,
                j("ACTIVE", "PAUSED_ON_FAILURE", true, true, false, false)
            )
            .0,
            S::DeltaReplicationFailed
        );
        let (s, m) = status(
            &two,
            vec![
                ("j-a", Some(job("j-a", "ACTIVE", true, false))),
                ("j-b", None),
            ],
        );
        assert_eq!(s, S::PartiallyReplicated);
        assert!(m.contains("j-b was deleted"), "{m}");
        let latest = aggregate(
            &two,
            &j("ACTIVE", "ACTIVE", true, true, false, false)
                .into_iter()
                .map(|(id, j)| (id.to_string(), j))
                .collect(),
        )
        .latest;
        assert_eq!(latest, Some(time::macros::datetime!(2026-01-02 00:00 UTC)));
        let mut stopped = app(&[]);
        stopped.replication_stopped_on = Some(OffsetDateTime::UNIX_EPOCH);
        assert_eq!(status(&stopped, vec![]).0, S::ReplicationStopped);
        let mut unconfigured = app(&[]);
        unconfigured.replication_configuration = None;
        assert_eq!(status(&unconfigured, vec![]).0, S::ReadyForConfiguration);
    }

    #[test]
    fn app_ids_are_checked_by_pattern() {
        assert!(app_id("appId", "app-0123456789abcdef0").is_ok());
        for bad in [
            "app-0123456789abcdef",
            "app-0123456789ABCDEF0",
            "sg-0123456789abcdef0",
        ] {
            assert!(matches!(
                app_id("appId", bad),
                Err(DomainError::InvalidParameter(_))
            ));
        }
        assert!(matches!(
            app_id("appId", " "),
            Err(DomainError::MissingParameter(_))
        ));
    }
}
