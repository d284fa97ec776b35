//! The awsJson 1.1 protocol of Tern's SMS-compatible API.
//!
//! Transport adapters (`tern serve`'s axum server, the `api` Lambda) authenticate the caller,
//! turn it into a [`Principal`], and call [`Api::handle`] with the `X-Amz-Target` header and the
//! raw body. Everything else — parsing, validation, dispatch, and turning errors into wire
//! responses — happens here, once.
//!
//! * SMS operations (`AWSServerMigrationService_V2016_10_24.<Op>`), administrators only:
//!   GetConnectors, DisassociateConnector, ImportServerCatalog, GetServers, DeleteServerCatalog,
//!   CreateReplicationJob, GetReplicationJobs, UpdateReplicationJob, DeleteReplicationJob,
//!   StartOnDemandReplicationRun, GetReplicationRuns, and the application operations of
//!   [`apps::OPERATIONS`] (applications and their replication) and [`app_configs::OPERATIONS`]
//!   (launch and validation configuration, templates, ImportAppCatalog, LaunchApp and
//!   TerminateApp). GenerateTemplate/GenerateChangeSet need the host's staging bucket and
//!   LaunchApp/TerminateApp its launcher ([`Api::attach_launcher`]); a host started without them
//!   answers `OperationNotPermittedException` with a message naming the missing part.
//! * Connector operations (`TernConnectorService_V1.<Op>`, see [`connector`]), connectors only.
//!
//! Request handling: the body must be a JSON object (an empty body counts as `{}`), unknown
//! members are ignored, a member of the wrong JSON type is a `SerializationException`, an
//! unknown enum string an `InvalidParameterException`, and so is any string longer than
//! [`MAX_STRING_BYTES`] anywhere in the body outside a VM's `inspection`; a VM whose
//! `inspection` is over [`MAX_INSPECTION_BYTES`] is rejected on its own. Listings page with `maxResults`
//! (default `limits.default_page_size`, capped at `limits.max_page_size`, < 1 refused) and an
//! opaque `nextToken` that is omitted on the last page. Errors: see [`error`].

pub mod app_configs;
pub mod apps;
pub mod connector;
pub mod error;
pub mod render;
pub mod wire;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tern_core::service::{self as core, JobUpdate, NewConnector, NewJob};

use crate::render::RenderCache;
use tern_core::DomainError;
use tern_core::{Clock, Config, Ids, Service, Store};

use crate::error::ApiError;

/// Target prefix of the administrative (SMS) operations.
pub const SMS_TARGET_PREFIX: &str = "AWSServerMigrationService_V2016_10_24";
/// Target prefix of the connector-facing operations.
pub const CONNECTOR_TARGET_PREFIX: &str = "TernConnectorService_V1";
/// Content type of every request and response body.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The SMS operations this release implements.
pub const SMS_OPERATIONS: &[&str] = &[
    "GetConnectors",
    "DisassociateConnector",
    "ImportServerCatalog",
    "GetServers",
    "DeleteServerCatalog",
    "CreateReplicationJob",
    "GetReplicationJobs",
    "UpdateReplicationJob",
    "DeleteReplicationJob",
    "StartOnDemandReplicationRun",
    "GetReplicationRuns",
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

/// Who is calling, as established by the transport's authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An administrator: may call the SMS operations, never the connector ones.
    Admin { id: String },
    /// A connector appliance: may call the connector operations, never the SMS ones.
    Connector { id: String },
}

/// A wire response, ready for any transport.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    /// JSON body (`{}` for operations without output members).
    pub body: Vec<u8>,
    /// The bare error shape name when this is an error; transports send it as `X-Amzn-ErrorType`.
    pub error_type: Option<String>,
}

/// The API: one instance per process, shared by every request.
pub struct Api {
    service: Service,
    /// The replication workflow, where the host runs one (connector progress and results go
    /// there).
    replication: std::sync::OnceLock<tern_core::replication::Replication>,
    /// The launcher of LaunchApp / TerminateApp, where the host has one.
    launcher: std::sync::OnceLock<Arc<dyn tern_core::launcher::Launcher>>,
    /// Wire renderings of replication jobs for GetReplicationJobs listings.
    jobs_rendered: RenderCache,
}

/// Most job renderings [`Api`] keeps (about 1 KB each): every job of a large deployment, and
/// far more than the listing pages clients page through at any one time.
pub const RENDERED_JOBS_CACHED: usize = 20_000;

/// What the API needs from its host.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn Ids>,
    pub config: Config,
}

/// Which API an operation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Sms,
    Connector,
}

/// A successful response body, already serialised.
type ApiResult = Result<Vec<u8>, ApiError>;

impl Api {
    pub fn new(deps: Deps) -> Self {
        Self {
            service: Service::new(deps.store, deps.clock, deps.ids, deps.config),
            replication: std::sync::OnceLock::new(),
            launcher: std::sync::OnceLock::new(),
            jobs_rendered: RenderCache::new(RENDERED_JOBS_CACHED),
        }
    }

    /// Connects the launcher LaunchApp and TerminateApp use; until then they answer that this
    /// host was started without one. Only the first call counts.
    pub fn attach_launcher(&self, launcher: Arc<dyn tern_core::launcher::Launcher>) {
        let _ = self.launcher.set(launcher);
    }

    /// The launcher, for the SMS operation `op`.
    fn launcher_for(&self, op: &str) -> Result<&dyn tern_core::launcher::Launcher, ApiError> {
        self.launcher.get().map(|l| l.as_ref()).ok_or_else(|| {
            ApiError::NotConfigured(format!(
                "{op} needs a launcher, and this Tern API was started without one: \
                     launch from `tern serve` or the stack's api function, which attach theirs"
            ))
        })
    }

    /// Connects the replication workflow; until then the replication operations of the
    /// connector API answer that replication is not available. Only the first call counts.
    pub fn attach_replication(&self, replication: tern_core::replication::Replication) {
        let _ = self.replication.set(replication);
    }

    /// The replication workflow, for an operation `op` that needs it or its staging bucket.
    fn replication_for(&self, op: &str) -> Result<&tern_core::replication::Replication, ApiError> {
        self.replication.get().ok_or_else(|| {
            ApiError::NotConfigured(format!(
                "{op} needs the staging bucket and the replication workflow, and this Tern API \
                 was started without them: run `tern serve` with replication on, or the stack's \
                 api function"
            ))
        })
    }

    /// The domain service behind the API (for hosts that drive runs, and for tests).
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Handles one request. `target` is the `X-Amz-Target` header (None when absent); `body` the
    /// raw request body (an empty body counts as `{}`). Never panics, never leaks internals.
    pub async fn handle(
        &self,
        target: Option<&str>,
        body: &[u8],
        principal: &Principal,
    ) -> Response {
        match self.dispatch(target, body, principal).await {
            Ok(body) => Response {
                status: 200,
                body,
                error_type: None,
            },
            Err(e) => e.into_response(),
        }
    }

    async fn dispatch(
        &self,
        target: Option<&str>,
        body: &[u8],
        principal: &Principal,
    ) -> ApiResult {
        let target = target
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::UnknownOperation("the X-Amz-Target header is missing".into())
            })?;
        let unknown = || ApiError::unknown_operation(target);
        let (prefix, op) = target.split_once('.').ok_or_else(unknown)?;
        let family = match prefix {
            SMS_TARGET_PREFIX if SMS_OPERATIONS.contains(&op) => Family::Sms,
            CONNECTOR_TARGET_PREFIX if connector::op::ALL.contains(&op) => Family::Connector,
            _ => return Err(unknown()),
        };
        match (family, principal) {
            (Family::Sms, Principal::Admin { .. })
            | (Family::Connector, Principal::Connector { .. }) => {}
            (Family::Sms, Principal::Connector { id }) => {
                return Err(ApiError::AccessDenied(format!(
                    "connector credentials ({id}) cannot call {op}"
                )))
            }
            (Family::Connector, Principal::Admin { id }) => {
                return Err(ApiError::AccessDenied(format!(
                    "administrator credentials ({id}) cannot call connector operation {op}"
                )))
            }
        }
        let input = parse_object(body)?;
        tracing::debug!(operation = op, "dispatching");
        match family {
            Family::Sms => self.sms(op, input).await,
            Family::Connector => self.connector(op, input).await,
        }
    }

    async fn sms(&self, op: &str, input: Value) -> ApiResult {
        use wire::*;
        if apps::OPERATIONS.contains(&op) {
            return self.apps(op, input).await;
        }
        if app_configs::OPERATIONS.contains(&op) {
            return self.app_configs(op, input).await;
        }
        let svc = &self.service;
        match op {
            "GetConnectors" => {
                let req: GetConnectorsRequest = decode(input)?;
                let limit = svc.page_size(req.max_results)?;
                let after = token::decode("connectors", req.next_token.as_deref())?;
                let page = svc.list_connectors(after.as_deref(), limit).await?;
                let connector_list = page
                    .items
                    .into_iter()
                    .map(|c| {
                        let status = svc.connector_status(&c);
                        Connector::from_model(c, status)
                    })
                    .collect();
                let next_token = token::encode("connectors", page.last);
                encode(&GetConnectorsResponse {
                    connector_list,
                    next_token,
                })
            }
            "DisassociateConnector" => {
                let req: DisassociateConnectorRequest = decode(input)?;
                svc.disassociate_connector(req.connector_id.as_deref().unwrap_or_default())
                    .await?;
                encode(&EmptyResponse {})
            }
            "ImportServerCatalog" => {
                let _: EmptyRequest = decode(input)?;
                svc.import_catalog().await?;
                encode(&EmptyResponse {})
            }
            "GetServers" => {
                let req: GetServersRequest = decode(input)?;
                let limit = svc.page_size(req.max_results)?;
                let scope = "servers";
                let after = token::decode(scope, req.next_token.as_deref())?;
                let filter = req.vm_server_address_list.map(|list| {
                    list.into_iter()
                        .map(|a| tern_core::model::VmServerAddress {
                            vm_manager_id: a.vm_manager_id.unwrap_or_default(),
                            vm_id: a.vm_id.unwrap_or_default(),
                        })
                        .collect()
                });
                let listing = svc.get_servers(filter, after.as_deref(), limit).await?;
                encode(&GetServersResponse {
                    last_modified_on: listing.last_modified_on,
                    server_catalog_status: listing.status,
                    server_catalog_status_message: listing.status_message,
                    server_list: listing
                        .servers
                        .items
                        .into_iter()
                        .map(|s| {
                            let (why, warnings) = svc.catalog_view(&s);
                            Server {
                                cannot_replicate_reason: why,
                                preflight_warnings: warnings,
                                ..s.into()
                            }
                        })
                        .collect(),
                    next_token: token::encode(scope, listing.servers.last),
                })
            }
            "DeleteServerCatalog" => {
                let _: EmptyRequest = decode(input)?;
                svc.delete_catalog().await?;
                encode(&EmptyResponse {})
            }
            "CreateReplicationJob" => {
                let req: CreateReplicationJobRequest = decode(input)?;
                let id = svc
                    .create_job(NewJob {
                        server_id: req.server_id.unwrap_or_default(),
                        seed_replication_time: req.seed_replication_time,
                        frequency: req.frequency,
                        run_once: req.run_once,
                        license_type: req.license_type,
                        role_name: req.role_name,
                        description: req.description,
                        number_of_recent_amis_to_keep: req.number_of_recent_amis_to_keep,
                        encrypted: req.encrypted,
                        kms_key_id: req.kms_key_id,
                    })
                    .await?;
                encode(&CreateReplicationJobResponse {
                    replication_job_id: id,
                })
            }
            "GetReplicationJobs" => {
                let req: GetReplicationJobsRequest = decode(input)?;
                let limit = svc.page_size(req.max_results)?;
                if let Some(id) = req.replication_job_id.filter(|i| !i.trim().is_empty()) {
                    let job = svc.get_job(&id).await?;
                    return encode(&GetReplicationJobsResponse {
                        replication_job_list: vec![job.into()],
                        next_token: None,
                    });
                }
                let after = token::decode("jobs", req.next_token.as_deref())?;
                let page = svc.list_jobs_raw(after.as_deref(), limit).await?;
                let jobs = self.jobs_rendered.render_all(page.items, |item| {
                    let key = format!("{}/{}", item.key.pk, item.key.sk);
                    let job = core::Service::decode_job(item)?;
                    serde_json::to_vec(&ReplicationJob::from(job)).map_err(|e| {
                        DomainError::Corrupt {
                            key,
                            message: format!("cannot render: {e}"),
                        }
                    })
                })?;
                // The shape of `GetReplicationJobsResponse`, assembled from the cached renderings.
                let next_token = token::encode("jobs", page.last_sk);
                let size = jobs.iter().map(|j| j.len() + 1).sum::<usize>();
                let mut out = Vec::with_capacity(size + 64);
                out.extend_from_slice(b"{\"replicationJobList\":[");
                for (i, job) in jobs.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(job);
                }
                out.push(b']');
                if let Some(token) = next_token {
                    out.extend_from_slice(b",\"nextToken\":");
                    out.extend_from_slice(&encode(&token)?);
                }
                out.push(b'}');
                Ok(out)
            }
            "UpdateReplicationJob" => {
                let req: UpdateReplicationJobRequest = decode(input)?;
                svc.update_job(JobUpdate {
                    replication_job_id: req.replication_job_id.unwrap_or_default(),
                    frequency: req.frequency,
                    next_replication_run_start_time: req.next_replication_run_start_time,
                    license_type: req.license_type,
                    role_name: req.role_name,
                    description: req.description,
                    number_of_recent_amis_to_keep: req.number_of_recent_amis_to_keep,
                    encrypted: req.encrypted,
                    kms_key_id: req.kms_key_id,
                })
                .await?;
                encode(&EmptyResponse {})
            }
            "DeleteReplicationJob" => {
                let req: ReplicationJobIdRequest = decode(input)?;
                let id = req.replication_job_id.as_deref().unwrap_or_default();
                svc.delete_job(id).await?;
                if let Some(replication) = self.replication.get() {
                    // The delete is recorded; what is left of its run in progress (execution,
                    // staged objects, image tasks) goes now, or on the scheduler's sweep when a
                    // dependency fails, so the caller is not answered with an error for it.
                    if let Err(e) = replication.tear_down_job(id).await {
                        tracing::warn!(replication_job_id = id, error = %e, "teardown of the deleted job's run is left to the scheduler");
                    }
                }
                encode(&EmptyResponse {})
            }
            "StartOnDemandReplicationRun" => {
                let req: StartOnDemandReplicationRunRequest = decode(input)?;
                let id = svc
                    .start_on_demand_run(
                        req.replication_job_id.as_deref().unwrap_or_default(),
                        req.description,
                    )
                    .await?;
                encode(&StartOnDemandReplicationRunResponse {
                    replication_run_id: id,
                })
            }
            "GetReplicationRuns" => {
                let req: GetReplicationRunsRequest = decode(input)?;
                let limit = svc.page_size(req.max_results)?;
                let job_id = req.replication_job_id.unwrap_or_default();
                if job_id.trim().is_empty() {
                    return Err(ApiError::missing("replicationJobId is required"));
                }
                let scope = format!("runs:{job_id}");
                let after = token::decode(&scope, req.next_token.as_deref())?;
                let (job, page) = svc.list_runs(&job_id, after.as_deref(), limit).await?;
                encode(&GetReplicationRunsResponse {
                    replication_job: job.into(),
                    replication_run_list: page.items.into_iter().map(Into::into).collect(),
                    next_token: token::encode(&scope, page.last),
                })
            }
            other => Err(ApiError::unknown_operation(other)),
        }
    }

    async fn connector(&self, op: &str, input: Value) -> ApiResult {
        use connector::*;
        let svc = &self.service;
        match op {
            op::REGISTER_CONNECTOR => {
                let req: RegisterConnectorRequest = decode(input)?;
                let connector_id = svc
                    .register_connector(NewConnector {
                        connector_id: req.connector_id,
                        name: req.name,
                        version: req.version,
                        vm_manager_name: req.vm_manager_name,
                        vm_manager_type: req.vm_manager_type,
                        vm_manager_id: req.vm_manager_id,
                        ip_address: req.ip_address,
                        mac_address: req.mac_address,
                        capability_list: req.capability_list,
                    })
                    .await?;
                encode(&RegisterConnectorResponse { connector_id })
            }
            op::SEND_HEARTBEAT => {
                let req: SendHeartbeatRequest = decode(input)?;
                svc.heartbeat(&req.connector_id).await?;
                encode(&SendHeartbeatResponse {})
            }
            op::REPORT_INVENTORY => {
                let req: ReportInventoryRequest = decode(input)?;
                // An oversized inspection rejects its VM alone, as the catalog rejects any bad
                // entry (and, not being reported, the VM reads as vanished), so one VM with
                // many disks cannot block a whole inventory.
                let (vm_list, oversized): (Vec<_>, Vec<_>) =
                    req.vm_list.into_iter().partition(|vm| {
                        vm.inspection
                            .as_ref()
                            .is_none_or(|v| v.to_string().len() <= MAX_INSPECTION_BYTES)
                    });
                let vms = vm_list
                    .into_iter()
                    .map(|vm| core::InventoryVm {
                        vm_id: vm.vm_id,
                        vm_name: vm.vm_name,
                        vm_path: vm.vm_path,
                        vm_manager_id: vm.vm_manager_id,
                        vm_manager_name: vm.vm_manager_name,
                        vm_manager_type: vm.vm_manager_type,
                        disks: vm
                            .disks
                            .into_iter()
                            .map(|d| tern_core::model::Disk {
                                path: d.path,
                                format: d.format,
                                size_bytes: d.size_bytes,
                            })
                            .collect(),
                        os_type: vm.os_type,
                        inspection: vm.inspection,
                        application: vm.application,
                    })
                    .collect();
                let outcome = match req.report_id {
                    None => {
                        svc.report_inventory(&req.connector_id, req.request_id.as_deref(), vms)
                            .await?
                    }
                    Some(report_id) => {
                        let Some(page) = req.page else {
                            return Err(ApiError::missing("page is required with reportId"));
                        };
                        svc.report_inventory_page(
                            &req.connector_id,
                            req.request_id.as_deref(),
                            core::InventoryPage {
                                report_id,
                                page,
                                last: req.last_page,
                                vms,
                            },
                        )
                        .await?
                    }
                };
                encode(&ReportInventoryResponse {
                    accepted_count: outcome.accepted,
                    vanished_count: outcome.vanished,
                    rejected_list: oversized
                        .into_iter()
                        .map(|vm| RejectedVm {
                            vm_id: vm.vm_id,
                            message: format!(
                                "inspection is larger than {MAX_INSPECTION_BYTES} bytes"
                            ),
                        })
                        .chain(
                            outcome
                                .rejected
                                .into_iter()
                                .map(|(vm_id, message)| RejectedVm { vm_id, message }),
                        )
                        .collect(),
                })
            }
            op::POLL_WORK => {
                let req: PollWorkRequest = decode(input)?;
                let limit = svc.page_size(req.max_results)?;
                let work = svc
                    .poll_work_of(&req.connector_id, limit, &req.work_kinds())
                    .await?;
                encode(&PollWorkResponse {
                    work_items: work
                        .into_iter()
                        .map(|w| WorkItem {
                            work_id: w.work_id,
                            kind: w.kind.as_str().to_string(),
                            payload: w.payload,
                        })
                        .collect(),
                })
            }
            op::REPORT_ERROR => {
                let req: ReportErrorRequest = decode(input)?;
                if let (Some(work_id), Some(replication)) =
                    (req.work_id.as_deref(), self.replication.get())
                {
                    // Before the item is closed: the failure ends the run it belongs to.
                    replication
                        .work_failed(&req.connector_id, work_id, &req.message)
                        .await?;
                }
                svc.report_error(&req.connector_id, req.work_id.as_deref(), &req.message)
                    .await?;
                encode(&ReportErrorResponse {})
            }
            op::REPORT_PROGRESS => {
                let req: ReportProgressRequest = decode(input)?;
                // Checked before the replication side looks the item up by an empty key.
                if req.work_id.trim().is_empty() {
                    return Err(ApiError::missing("workId is required"));
                }
                self.replication_for(op::REPORT_PROGRESS)?
                    .report_progress(
                        &req.connector_id,
                        tern_core::replication::Progress {
                            work_id: req.work_id,
                            stage: req.stage,
                            percent: req.percent,
                            bytes_done: req.bytes_done,
                            bytes_total: req.bytes_total,
                            note: req.note,
                        },
                    )
                    .await?;
                encode(&ReportProgressResponse {})
            }
            op::COMPLETE_WORK => {
                let req: CompleteWorkRequest = decode(input)?;
                svc.complete_work(&req.connector_id, &req.work_id).await?;
                encode(&CompleteWorkResponse {})
            }
            other => Err(ApiError::unknown_operation(other)),
        }
    }
}

/// Longest string accepted anywhere in a request body, in bytes. SMS models no length for ids,
/// names or descriptions, but every one of them ends up in a stored item, and a stored item may
/// not exceed DynamoDB's 400 KB: without a bound a long description was refused by the store as
/// an internal error. 8 KiB holds the longest real values (a 4 KiB path, a 2 KiB KMS ARN) with
/// room to spare, while the handful of strings one item carries stay far below the item limit.
pub const MAX_STRING_BYTES: usize = 8 * 1024;

/// Largest `inspection` object of one inventory VM (serialised), for the same reason. What a
/// connector's disk inspection reports is a few KiB per disk; strings inside it are not
/// bounded one by one.
pub const MAX_INSPECTION_BYTES: usize = 64 * 1024;

/// The body as a JSON object; an empty body is `{}`.
fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::Serialization(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::Serialization(
            "the request body must be a JSON object".into(),
        ));
    }
    if let Some(path) = overlong_string(&value, &mut String::new()) {
        return Err(ApiError::invalid(format!(
            "{path} is longer than {MAX_STRING_BYTES} bytes"
        )));
    }
    Ok(value)
}

/// The path (`vmList[0].vmName`) of the first string, member name included, longer than
/// [`MAX_STRING_BYTES`]. serde_json's recursion limit (128) bounds the depth walked here.
fn overlong_string(value: &Value, path: &mut String) -> Option<String> {
    let here = path.len();
    let found = match value {
        Value::String(s) if s.len() > MAX_STRING_BYTES => Some(path.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            path.truncate(here);
            path.push_str(&format!("[{i}]"));
            overlong_string(v, path)
        }),
        Value::Object(members) => members.iter().find_map(|(k, v)| {
            path.truncate(here);
            if k.len() > MAX_STRING_BYTES {
                return Some(format!("a member name in {}", display(&path[..here])));
            }
            if here > 0 {
                path.push('.');
            }
            path.push_str(k);
            // Free-form and bounded as a whole (see MAX_INSPECTION_BYTES).
            if k == "inspection" {
                return None;
            }
            overlong_string(v, path)
        }),
        _ => None,
    };
    path.truncate(here);
    found
}

fn display(path: &str) -> &str {
    if path.is_empty() {
        "the body"
    } else {
        path
    }
}

/// Decodes an input shape. A missing required member (connector shapes) is
/// MissingRequiredParameter; a well-typed value outside its domain (unknown enum string,
/// timestamp or number out of range) InvalidParameter; any other mismatch (wrong JSON type) a
/// SerializationException.
fn decode<T: DeserializeOwned>(input: Value) -> Result<T, ApiError> {
    serde_json::from_value(input).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("missing field") {
            ApiError::missing(msg)
        } else if msg.starts_with("unknown variant") || msg.starts_with("invalid value") {
            ApiError::invalid(msg)
        } else {
            ApiError::Serialization(msg)
        }
    })
}

fn encode<T: Serialize>(output: &T) -> ApiResult {
    serde_json::to_vec(output).map_err(|e| {
        ApiError::Domain(tern_core::DomainError::Corrupt {
            key: "(response)".into(),
            message: e.to_string(),
        })
    })
}

/// Opaque pagination tokens: the listing's scope and the key to continue after, hex-encoded.
/// The scope binds a token to the listing it came from.
mod token {
    use super::ApiError;

    const VERSION: &str = "t1";

    pub fn encode(scope: &str, last: Option<String>) -> Option<String> {
        last.map(|l| hex::encode(format!("{VERSION}\n{scope}\n{l}")))
    }

    pub fn decode(scope: &str, token: Option<&str>) -> Result<Option<String>, ApiError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let bad = || ApiError::invalid("nextToken is not a token from this listing");
        let bytes = hex::decode(token).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = text.splitn(3, '\n');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(VERSION), Some(s), Some(last)) if s == scope && !last.is_empty() => {
                Ok(Some(last.to_string()))
            }
            _ => Err(bad()),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn tokens_round_trip_and_are_scoped() {
            let t = super::encode("jobs", Some("sms-job-1".into())).unwrap();
            assert_eq!(
                super::decode("jobs", Some(&t)).unwrap().as_deref(),
                Some("sms-job-1")
            );
            assert!(super::decode("servers", Some(&t)).is_err());
            assert!(super::decode("jobs", Some("zz")).is_err());
            assert_eq!(super::encode("jobs", None), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlong_strings_are_named_by_their_path() {
        let long = "x".repeat(MAX_STRING_BYTES + 1);
        let body = serde_json::json!({"vmList": [{"vmId": "a"}, {"disks": [{"path": long}]}]});
        let err = parse_object(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("vmList[1].disks[0].path is longer than {MAX_STRING_BYTES} bytes")
        );
        let at_limit = serde_json::json!({"description": "x".repeat(MAX_STRING_BYTES)});
        assert!(parse_object(at_limit.to_string().as_bytes()).is_ok());
        let long_key = format!("{{\"{long}\": 1}}");
        assert!(parse_object(long_key.as_bytes())
            .unwrap_err()
            .to_string()
            .starts_with("a member name in the body"));
    }
}
