//! Connectors: registration, heartbeats, listing, disassociation, work queue and error reports.
//!
//! A connector is HEALTHY while its last heartbeat (or registration) is at most
//! `config.connector_unhealthy_after` old; the status is computed when read, so a connector that
//! stops heartbeating turns UNHEALTHY without anybody writing anything. Only healthy connectors
//! get inventory work from ImportServerCatalog.
//!
//! Work items (`WORK#<connectorId>`) are handed out by PollWork with a lease: an item handed out
//! and not finished within `config.work_lease` is handed out again, and at once when its
//! connector registers again (a restarted process). A work item is finished by
//! the report that answers it (ReportInventory with its `requestId`) or by ReportError naming it.

use serde_json::json;
use time::OffsetDateTime;

use super::{expect_of, put, required, retrying, Listing, Service, Versioned};
use crate::enums::*;
use crate::error::{DomainError, Result};
use crate::keys;
use crate::model::{Catalog, Connector, ReplicationJob, Work};
use crate::states::occupies_slot;
use crate::store::{Expect, Write};

/// What a connector says about itself when it registers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewConnector {
    /// Re-registration: keep this id when it names an associated connector.
    pub connector_id: Option<String>,
    pub name: String,
    pub version: String,
    pub vm_manager_name: Option<String>,
    pub vm_manager_type: Option<VmManagerType>,
    pub vm_manager_id: String,
    pub ip_address: Option<String>,
    pub mac_address: Option<String>,
    pub capability_list: Vec<ConnectorCapability>,
}

impl Service {
    /// HEALTHY or UNHEALTHY as of now.
    pub fn connector_status(&self, c: &Connector) -> ConnectorStatus {
        c.status(self.now(), self.config.connector_unhealthy_after)
    }

    /// Registers a connector and returns its id. Re-registering with the id of an associated
    /// connector updates it and keeps the id; an unknown or disassociated id gets a new one.
    #[tracing::instrument(name = "register_connector", skip_all, fields(name = %req.name))]
    pub async fn register_connector(&self, req: NewConnector) -> Result<String> {
        let name = required("name", &req.name)?.to_string();
        let version = required("version", &req.version)?.to_string();
        let vm_manager_id = required("vmManagerId", &req.vm_manager_id)?.to_string();
        let existing = match req.connector_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => Some(id.to_string()),
            _ => None,
        };
        let id = existing.unwrap_or_else(|| self.ids.new_id(crate::IdKind::Connector));
        let (id, known) = retrying!(self, id, async {
            let now = self.now();
            let current: Option<Versioned<Connector>> = self.read(&keys::connector(&id)).await?;
            let (id, associated_on, last_error, expect) = match &current {
                Some(c) => (
                    id.clone(),
                    c.value.associated_on,
                    c.value.last_error.clone(),
                    c.expect(),
                ),
                None if req.connector_id.is_some() => {
                    // Unknown or disassociated id: register afresh under a new id.
                    (
                        self.ids.new_id(crate::IdKind::Connector),
                        now,
                        None,
                        Expect::Absent,
                    )
                }
                None => (id.clone(), now, None, Expect::Absent),
            };
            let connector = Connector {
                connector_id: id.clone(),
                version: version.clone(),
                capability_list: req.capability_list.clone(),
                vm_manager_name: req.vm_manager_name.clone(),
                vm_manager_type: req.vm_manager_type,
                vm_manager_id: vm_manager_id.clone(),
                ip_address: req.ip_address.clone(),
                mac_address: req.mac_address.clone(),
                associated_on,
                name: name.clone(),
                last_heartbeat_on: now,
                last_error,
                disassociated_on: None,
            };
            self.store
                .write(put(keys::connector(&id), &connector, expect)?)
                .await?;
            tracing::info!(connector_id = %id, "connector registered");
            Ok((id, current.is_some()))
        })?;
        if known {
            // A connector registers once when it starts: a known one registering again has
            // restarted, and whatever it had leased died with the old process. Its items are
            // handed out again at once instead of after `work_lease` (its uploads resume).
            self.release_leases(&id).await?;
        }
        Ok(id)
    }

    /// Hands a re-registering connector's leased work back at once. A connector registers when
    /// its process starts, so whatever its id still holds was leased by a process that is gone;
    /// waiting out `work_lease` only delayed the resumed upload (the agent picks it up from its
    /// state directory). Work of other connectors lives in their own partitions and is never
    /// touched.
    async fn release_leases(&self, connector_id: &str) -> Result<()> {
        let work = self
            .list_all::<Work>(&keys::work_partition(connector_id))
            .await?;
        for w in work.into_iter().filter(|w| w.value.leased_on.is_some()) {
            let mut free = w.value.clone();
            free.leased_on = None;
            match self
                .store
                .write(put(
                    keys::work(connector_id, &free.work_id),
                    &free,
                    w.expect(),
                )?)
                .await
            {
                // Finished or leased again meanwhile: nothing to give back.
                Ok(()) | Err(crate::store::StoreError::ConditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The associated connector `id`, or the error a connector call with that id deserves.
    pub(crate) async fn associated_connector(&self, id: &str) -> Result<Versioned<Connector>> {
        let id = required("connectorId", id)?;
        if let Some(c) = self.read(&keys::connector(id)).await? {
            return Ok(c);
        }
        if self.store.get(&keys::connector_gone(id)).await?.is_some() {
            return Err(DomainError::OperationNotPermitted(format!(
                "connector {id} was disassociated; register again to get a new connector id"
            )));
        }
        Err(DomainError::InvalidParameter(format!(
            "there is no connector {id}"
        )))
    }

    pub async fn heartbeat(&self, connector_id: &str) -> Result<()> {
        retrying!(self, connector_id, async {
            let mut c = self.associated_connector(connector_id).await?;
            c.value.last_heartbeat_on = self.now();
            let key = keys::connector(&c.value.connector_id);
            self.store.write(put(key, &c.value, c.expect())?).await?;
            Ok(())
        })
    }

    /// A page of associated connectors, in id order.
    pub async fn list_connectors(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Listing<Connector>> {
        let (items, last) = self
            .list::<Connector>(keys::CONNECTOR, after, limit)
            .await?;
        Ok(Listing {
            items: items.into_iter().map(|v| v.value).collect(),
            last,
        })
    }

    /// Every associated connector.
    pub(crate) async fn all_connectors(&self) -> Result<Vec<Connector>> {
        Ok(self
            .list_all::<Connector>(keys::CONNECTOR)
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    /// DisassociateConnector: the connector stops being usable. Refused while it serves
    /// replication jobs that have not ended (R22). Its queued work is dropped.
    #[tracing::instrument(name = "disassociate_connector", skip(self))]
    pub async fn disassociate_connector(&self, connector_id: &str) -> Result<()> {
        let id = required("connectorId", connector_id)?.to_string();
        let serving = self.live_jobs_of_connector(&id).await?;
        if !serving.is_empty() {
            return Err(DomainError::OperationNotPermitted(format!(
                "connector {id} still serves replication jobs {}; delete them first",
                serving.join(", ")
            )));
        }
        retrying!(self, id, async {
            let Some(c) = self.read::<Connector>(&keys::connector(&id)).await? else {
                return if self.store.get(&keys::connector_gone(&id)).await?.is_some() {
                    Err(DomainError::OperationNotPermitted(format!(
                        "connector {id} is already disassociated"
                    )))
                } else {
                    Err(DomainError::InvalidParameter(format!(
                        "there is no connector {id}"
                    )))
                };
            };
            let mut gone = c.value.clone();
            gone.disassociated_on = Some(self.now());
            self.store
                .transact(vec![
                    Write::Delete {
                        key: keys::connector(&id),
                        expect: c.expect(),
                    },
                    put(keys::connector_gone(&id), &gone, Expect::Any)?,
                ])
                .await?;
            Ok(())
        })?;
        // The connector can no longer answer; stop waiting for it and drop its queue.
        self.forget_pending_imports(|p| p.connector_id == id)
            .await?;
        for w in self.list_all::<Work>(&keys::work_partition(&id)).await? {
            self.store
                .write(Write::Delete {
                    key: keys::work(&id, &w.value.work_id),
                    expect: Expect::Any,
                })
                .await?;
        }
        tracing::info!(connector_id = %id, "connector disassociated");
        Ok(())
    }

    async fn live_jobs_of_connector(&self, connector_id: &str) -> Result<Vec<String>> {
        let jobs = self.list_all::<ReplicationJob>(keys::JOB).await?;
        Ok(jobs
            .into_iter()
            .filter(|j| j.value.connector_id == connector_id && occupies_slot(j.value.state))
            .map(|j| j.value.replication_job_id)
            .collect())
    }

    /// Removes pending inventory requests matching `pred` from the catalog.
    pub(crate) async fn forget_pending_imports(
        &self,
        pred: impl Fn(&crate::model::PendingImport) -> bool,
    ) -> Result<()> {
        retrying!(self, "the server catalog", async {
            let current: Option<Versioned<Catalog>> = self.read(&keys::catalog()).await?;
            let Some(cur) = &current else { return Ok(()) };
            if !cur.value.pending.iter().any(&pred) {
                return Ok(());
            }
            let mut catalog = cur.value.clone();
            catalog.pending.retain(|p| !pred(p));
            self.store
                .write(put(keys::catalog(), &catalog, expect_of(&current))?)
                .await?;
            Ok(())
        })
    }

    /// An inventory request its connector could not answer: no longer pending, and its cause
    /// kept for GetServers' status message until the connector's next applied report.
    async fn fail_pending_import(
        &self,
        connector_id: &str,
        work_id: &str,
        message: &str,
    ) -> Result<()> {
        let now = self.now();
        retrying!(self, "the server catalog", async {
            let current: Option<Versioned<Catalog>> = self.read(&keys::catalog()).await?;
            let Some(cur) = &current else { return Ok(()) };
            if !cur.value.pending.iter().any(|p| p.work_id == work_id) {
                return Ok(());
            }
            let mut catalog = cur.value.clone();
            catalog.pending.retain(|p| p.work_id != work_id);
            catalog.failures.retain(|f| f.connector_id != connector_id);
            catalog.failures.push(crate::model::ImportFailure {
                connector_id: connector_id.to_string(),
                work_id: work_id.to_string(),
                message: message.to_string(),
                failed_on: now,
            });
            self.store
                .write(put(keys::catalog(), &catalog, expect_of(&current))?)
                .await?;
            Ok(())
        })
    }

    /// PollWork: hands out up to `limit` work items that are not leased (or whose lease ran out),
    /// oldest first, and leases them.
    pub async fn poll_work(&self, connector_id: &str, limit: usize) -> Result<Vec<Work>> {
        self.poll_work_of(connector_id, limit, WorkKind::ALL).await
    }

    /// [`Service::poll_work`] for a connector that runs only work of `kinds`: items of other
    /// kinds stay queued, unleased, for a connector that runs them.
    pub async fn poll_work_of(
        &self,
        connector_id: &str,
        limit: usize,
        kinds: &[WorkKind],
    ) -> Result<Vec<Work>> {
        let c = self.associated_connector(connector_id).await?;
        let id = c.value.connector_id;
        let now = self.now();
        let lease = self.config.work_lease;
        let mut queued = self.list_all::<Work>(&keys::work_partition(&id)).await?;
        queued.retain(|w| {
            kinds.contains(&w.value.kind) && w.value.leased_on.is_none_or(|t| now - t > lease)
        });
        queued.sort_by_key(|w| w.value.queued_on);
        let mut out = Vec::new();
        for w in queued.into_iter().take(limit) {
            let mut work = w.value.clone();
            work.leased_on = Some(now);
            match self
                .store
                .write(put(keys::work(&id, &work.work_id), &work, w.expect())?)
                .await
            {
                Ok(()) => out.push(work),
                // Another poll leased or finished it meanwhile: not ours to hand out.
                Err(crate::store::StoreError::ConditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Queues one work item (inventory today; replication work later).
    pub(crate) fn new_work(&self, connector_id: &str, kind: WorkKind, now: OffsetDateTime) -> Work {
        let work_id = self.ids.new_id(crate::IdKind::Work);
        let payload = match kind {
            WorkKind::Inventory => json!({ "requestId": work_id }),
            WorkKind::Replicate | WorkKind::CommitRun | WorkKind::ForgetJob => {
                json!({ "workId": work_id })
            }
        };
        Work {
            work_id,
            connector_id: connector_id.to_string(),
            kind,
            payload,
            queued_on: now,
            leased_on: None,
        }
    }

    /// ReportError: records the message on the connector and, when it names a work item, closes
    /// that item (an inventory request stops keeping the catalog in IMPORTING).
    pub async fn report_error(
        &self,
        connector_id: &str,
        work_id: Option<&str>,
        message: &str,
    ) -> Result<()> {
        let message = required("message", message)?.to_string();
        let id = retrying!(self, connector_id, async {
            let mut c = self.associated_connector(connector_id).await?;
            c.value.last_error = Some(message.clone());
            let key = keys::connector(&c.value.connector_id);
            self.store.write(put(key, &c.value, c.expect())?).await?;
            Ok(c.value.connector_id)
        })?;
        tracing::warn!(connector_id = %id, work_id = ?work_id, error = %message, "connector reported an error");
        let Some(work_id) = work_id.map(str::trim).filter(|w| !w.is_empty()) else {
            return Ok(());
        };
        let Some(work) = self.read::<Work>(&keys::work(&id, work_id)).await? else {
            // Already finished (a retried report) or never ours: nothing left to close.
            return Ok(());
        };
        if work.value.kind == WorkKind::Inventory {
            self.fail_pending_import(&id, work_id, &message).await?;
        }
        self.store
            .write(Write::Delete {
                key: keys::work(&id, work_id),
                expect: Expect::Any,
            })
            .await?;
        Ok(())
    }

    /// CompleteWork: the connector is done with a work item (a run uploaded, a run's block maps
    /// kept). Finishing an item twice, or one already gone, succeeds.
    pub async fn complete_work(&self, connector_id: &str, work_id: &str) -> Result<()> {
        let work_id = required("workId", work_id)?;
        let c = self.associated_connector(connector_id).await?;
        self.store
            .write(Write::Delete {
                key: keys::work(&c.value.connector_id, work_id),
                expect: Expect::Any,
            })
            .await?;
        Ok(())
    }
}
