//! The server catalog: ImportServerCatalog, ReportInventory, GetServers, DeleteServerCatalog.
//!
//! Catalog status (`ServerCatalogStatus`): NOT_IMPORTED until the first import; IMPORTING while
//! an inventory request queued by ImportServerCatalog is unanswered (and younger than
//! `config.inventory_request_timeout`); AVAILABLE once a report was applied; DELETED after
//! DeleteServerCatalog until the next import. See [`Catalog::status`].
//!
//! Servers are upserted by `vmManagerId` + `vmId` (see [`crate::keys`]), so a VM keeps its
//! `serverId` across re-imports. A server the reporting connector listed before but no longer
//! lists is **marked, not dropped**: its `vanishedOn` is set, it stays in GetServers (and keeps
//! its job reference), and CreateReplicationJob refuses it with ServerCannotBeReplicatedException
//! until a later report lists the VM again, which clears the mark.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{expect_of, put, required, retrying, Listing, Service, Versioned};
use crate::enums::*;
use crate::error::{DomainError, Result};
use crate::keys;
use crate::model::{Catalog, Connector, Disk, Server, VmServer, VmServerAddress, Work};
use crate::store::{Expect, Write, MAX_TRANSACTION_WRITES};

/// One VM of an inventory report (already decoded from the wire).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InventoryVm {
    pub vm_id: String,
    pub vm_name: Option<String>,
    pub vm_path: Option<String>,
    pub vm_manager_id: Option<String>,
    pub vm_manager_name: Option<String>,
    pub vm_manager_type: Option<VmManagerType>,
    pub disks: Vec<Disk>,
    pub os_type: Option<OsType>,
    pub inspection: Option<Value>,
    /// The application the connector's configuration puts the VM in (ImportAppCatalog).
    pub application: Option<String>,
}

/// What a ReportInventory did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InventoryOutcome {
    pub accepted: u32,
    pub vanished: u32,
    /// `(vmId, reason)` of entries that were skipped; the rest was applied.
    pub rejected: Vec<(String, String)>,
}

/// One page of a paged inventory report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InventoryPage {
    /// Chosen by the connector, the same for every page of one report (1-128 of A-Za-z0-9._-).
    pub report_id: String,
    /// From 1.
    pub page: u32,
    /// This page ends the report: the catalog switches to it now.
    pub last: bool,
    pub vms: Vec<InventoryVm>,
}

/// Most pages one report may have.
pub const MAX_REPORT_PAGES: u32 = 100_000;

/// A connector's latest paged report (`INVREPORT/<connectorId>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportRecord {
    report_id: String,
    #[serde(with = "time::serde::rfc3339")]
    started_on: time::OffsetDateTime,
    /// Set once the last page was applied: what a re-delivered page answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied: Option<AppliedReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppliedReport {
    accepted: u32,
    vanished: u32,
}

impl From<AppliedReport> for InventoryOutcome {
    fn from(a: AppliedReport) -> Self {
        InventoryOutcome {
            accepted: a.accepted,
            vanished: a.vanished,
            rejected: Vec::new(),
        }
    }
}

/// A page kept until its report's last page arrives.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredPage {
    vms: Vec<StoredVm>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredVm {
    vm_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vm_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vm_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vm_manager_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vm_manager_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vm_manager_type: Option<VmManagerType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    os_type: Option<OsType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inspection: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    application: Option<String>,
}

impl From<&InventoryVm> for StoredVm {
    fn from(vm: &InventoryVm) -> Self {
        StoredVm {
            vm_id: vm.vm_id.clone(),
            vm_name: vm.vm_name.clone(),
            vm_path: vm.vm_path.clone(),
            vm_manager_id: vm.vm_manager_id.clone(),
            vm_manager_name: vm.vm_manager_name.clone(),
            vm_manager_type: vm.vm_manager_type,
            disks: vm.disks.clone(),
            os_type: vm.os_type,
            inspection: vm.inspection.clone(),
            application: vm.application.clone(),
        }
    }
}

impl From<StoredVm> for InventoryVm {
    fn from(vm: StoredVm) -> Self {
        InventoryVm {
            vm_id: vm.vm_id,
            vm_name: vm.vm_name,
            vm_path: vm.vm_path,
            vm_manager_id: vm.vm_manager_id,
            vm_manager_name: vm.vm_manager_name,
            vm_manager_type: vm.vm_manager_type,
            disks: vm.disks,
            os_type: vm.os_type,
            inspection: vm.inspection,
            application: vm.application,
        }
    }
}

/// A report being applied: VMs validated and waiting, addresses applied so far, the outcome.
#[derive(Default)]
struct Apply {
    valid: Vec<(VmServerAddress, InventoryVm)>,
    seen: HashSet<VmServerAddress>,
    outcome: InventoryOutcome,
}

/// GetServers' answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerListing {
    pub status: ServerCatalogStatus,
    /// Why the last import failed (Tern's addition to GetServers), or `None`.
    pub status_message: Option<String>,
    pub last_modified_on: Option<time::OffsetDateTime>,
    pub servers: Listing<Server>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddressIndex {
    server_id: String,
}

impl Service {
    async fn catalog(&self) -> Result<Option<Versioned<Catalog>>> {
        self.read(&keys::catalog()).await
    }

    /// The catalog, with the time it began as its `lastModifiedOn` when nothing has modified it
    /// yet: SMS answered GetServers with `lastModifiedOn` from the start, not only after an
    /// import. Written once (conditionally), on the first read that finds it missing.
    async fn started_catalog(&self) -> Result<Catalog> {
        retrying!(self, "the server catalog", async {
            let current = self.catalog().await?;
            let mut catalog = current
                .as_ref()
                .map(|c| c.value.clone())
                .unwrap_or_default();
            if catalog.last_modified_on.is_some() {
                return Ok(catalog);
            }
            catalog.last_modified_on = Some(self.now());
            self.store
                .write(put(keys::catalog(), &catalog, expect_of(&current))?)
                .await?;
            Ok(catalog)
        })
    }

    /// ImportServerCatalog: queues an INVENTORY work item for every healthy connector that has
    /// no unanswered one yet. No healthy connector → NoConnectorsAvailableException.
    #[tracing::instrument(name = "import_catalog", skip_all)]
    pub async fn import_catalog(&self) -> Result<()> {
        let now = self.now();
        let healthy: Vec<Connector> = self
            .all_connectors()
            .await?
            .into_iter()
            .filter(|c| self.connector_status(c) == ConnectorStatus::Healthy)
            .collect();
        if healthy.is_empty() {
            return Err(DomainError::NoConnectorsAvailable(
                "no healthy connector is registered; start a connector (tern connector run) and retry"
                    .into(),
            ));
        }
        let timeout = self.config.inventory_request_timeout;
        retrying!(self, "the server catalog", async {
            let current = self.catalog().await?;
            let mut catalog = current
                .as_ref()
                .map(|c| c.value.clone())
                .unwrap_or_default();
            let mut writes = Vec::new();
            // Requests nobody answered in time are dropped, and so is their work item.
            for p in catalog
                .pending
                .iter()
                .filter(|p| now - p.queued_on > timeout)
            {
                writes.push(Write::Delete {
                    key: keys::work(&p.connector_id, &p.work_id),
                    expect: Expect::Any,
                });
            }
            catalog.pending.retain(|p| now - p.queued_on <= timeout);
            catalog.last_modified_on.get_or_insert(now);
            for c in &healthy {
                if catalog
                    .pending
                    .iter()
                    .any(|p| p.connector_id == c.connector_id)
                {
                    continue;
                }
                // Asked again: its earlier failure is history; a new one will be recorded.
                catalog
                    .failures
                    .retain(|f| f.connector_id != c.connector_id);
                let work = self.new_work(&c.connector_id, WorkKind::Inventory, now);
                catalog.pending.push(crate::model::PendingImport {
                    work_id: work.work_id.clone(),
                    connector_id: c.connector_id.clone(),
                    queued_on: now,
                });
                writes.push(put(
                    keys::work(&c.connector_id, &work.work_id),
                    &work,
                    Expect::Absent,
                )?);
            }
            if writes.len() + 1 > MAX_TRANSACTION_WRITES {
                return Err(DomainError::LimitExceeded(format!(
                    "one import can address at most {} connectors",
                    MAX_TRANSACTION_WRITES - 1
                )));
            }
            writes.push(put(keys::catalog(), &catalog, expect_of(&current))?);
            self.store.transact(writes).await?;
            Ok(())
        })
    }

    /// ReportInventory in one request: applies a connector's complete inventory to the catalog.
    ///
    /// Accepted when it answers a pending request of this connector, or when the catalog is
    /// already imported (a refresh); otherwise OperationNotPermitted, because GetServers only has
    /// content after an ImportServerCatalog (R20). Bad VM entries are rejected one by one, the
    /// rest is applied. Large inventories use [`Service::report_inventory_page`].
    #[tracing::instrument(name = "report_inventory", skip(self, vms), fields(vms = vms.len()))]
    pub async fn report_inventory(
        &self,
        connector_id: &str,
        request_id: Option<&str>,
        vms: Vec<InventoryVm>,
    ) -> Result<InventoryOutcome> {
        let conn = self.associated_connector(connector_id).await?.value;
        let request_id = request_id.map(str::trim).filter(|r| !r.is_empty());
        let answers = self.check_report_allowed(&conn, request_id).await?;
        let mut apply = Apply::default();
        for vm in vms {
            match self.validate_vm(&conn, vm) {
                Err(reason) => apply.outcome.rejected.push(reason),
                Ok(valid) => apply.valid.push(valid),
            }
        }
        let generation = self.catalog().await?.map_or(0, |c| c.value.generation);
        self.apply_vms(generation, &conn, &mut apply).await?;
        self.finish_report(generation, &conn, request_id, answers, apply)
            .await
    }

    /// ReportInventory, one page of a paged report (`reportId`, `page` from 1, `lastPage`).
    ///
    /// Pages are kept aside (`INVPAGE#<connectorId>#<reportId>`, one item per page) and the
    /// catalog switches to the new inventory only when the last page arrives and every page
    /// before it is there: then all pages are applied as one report (servers upserted, those
    /// not listed marked vanished) and the kept pages deleted. A page sent again with the same
    /// content changes nothing; with other content it is refused. After the last page was
    /// applied, sending any page of that report again answers the applied report's outcome
    /// without applying it twice. A new `reportId` from the same connector discards the pages
    /// of its unfinished earlier report.
    #[tracing::instrument(name = "report_inventory_page", skip(self, page),
        fields(report_id = %page.report_id, page = page.page, last = page.last, vms = page.vms.len()))]
    pub async fn report_inventory_page(
        &self,
        connector_id: &str,
        request_id: Option<&str>,
        page: InventoryPage,
    ) -> Result<InventoryOutcome> {
        let conn = self.associated_connector(connector_id).await?.value;
        let cid = conn.connector_id.clone();
        let request_id = request_id.map(str::trim).filter(|r| !r.is_empty());
        let report_id = page.report_id.trim();
        if report_id.is_empty()
            || report_id.len() > 128
            || !report_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(DomainError::InvalidParameter(
                "reportId must be 1-128 characters of A-Za-z0-9._-".into(),
            ));
        }
        if page.page == 0 || page.page > MAX_REPORT_PAGES {
            return Err(DomainError::InvalidParameter(format!(
                "page must be between 1 and {MAX_REPORT_PAGES}"
            )));
        }
        let record_key = keys::inventory_report(&cid);
        let record: Option<Versioned<ReportRecord>> = self.read(&record_key).await?;
        if let Some(done) = record
            .as_ref()
            .filter(|r| r.value.report_id == report_id)
            .and_then(|r| r.value.applied.clone())
        {
            // A re-delivery after the report was applied: nothing to do twice.
            return Ok(done.into());
        }
        let answers = self.check_report_allowed(&conn, request_id).await?;
        if record
            .as_ref()
            .is_none_or(|r| r.value.report_id != report_id)
        {
            let fresh = ReportRecord {
                report_id: report_id.to_string(),
                started_on: self.now(),
                applied: None,
            };
            match self
                .store
                .write(put(record_key.clone(), &fresh, expect_of(&record))?)
                .await
            {
                Ok(()) => {}
                // A concurrent page of the same report wrote the record first: fine.
                Err(crate::store::StoreError::ConditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(old) = &record {
                self.purge_prefix(&keys::inventory_page_partition(&cid, &old.value.report_id))
                    .await;
            }
        }

        let mut outcome = InventoryOutcome::default();
        let mut kept = Vec::new();
        for vm in page.vms {
            match self.validate_vm(&conn, vm) {
                Err(reason) => outcome.rejected.push(reason),
                Ok((_, vm)) => kept.push(vm),
            }
        }
        outcome.accepted = kept.len() as u32;
        let stored = StoredPage {
            vms: kept.iter().map(StoredVm::from).collect(),
        };
        let body = super::encode(&stored)?;
        let size = body.to_string().len();
        if size > crate::store::MAX_ITEM_BYTES {
            return Err(DomainError::InvalidParameter(format!(
                "page {} of report {report_id} holds {size} bytes of VMs; at most {} fit in one page: send fewer VMs per page",
                page.page,
                crate::store::MAX_ITEM_BYTES
            )));
        }
        let page_key = keys::inventory_page(&cid, report_id, page.page);
        match self
            .store
            .write(Write::Put {
                key: page_key.clone(),
                body: body.clone(),
                expect: Expect::Absent,
            })
            .await
        {
            Ok(()) => {}
            Err(crate::store::StoreError::ConditionFailed { .. }) => {
                let same = self
                    .store
                    .get_raw(&page_key)
                    .await?
                    .and_then(|item| item.body.decode::<Value>().ok())
                    .is_some_and(|v| v == body);
                if !same {
                    return Err(DomainError::InvalidParameter(format!(
                        "page {} of report {report_id} was already received with other content; start a new report (new reportId)",
                        page.page
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        }
        if !page.last {
            return Ok(outcome);
        }

        // The last page: every page before it must be here, then the report is applied.
        let partition = keys::inventory_page_partition(&cid, report_id);
        let numbers: Vec<u32> = {
            let mut out = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let got = self
                    .store
                    .query_raw(&partition, "", after.as_deref(), 500)
                    .await?;
                out.extend(
                    got.items
                        .iter()
                        .filter_map(|i| i.key.sk.parse::<u32>().ok()),
                );
                match got.last_sk {
                    Some(l) => after = Some(l),
                    None => break out,
                }
            }
        };
        let missing: Vec<u32> = (1..=page.page).filter(|n| !numbers.contains(n)).collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(20).map(u32::to_string).collect();
            return Err(DomainError::InvalidParameter(format!(
                "report {report_id} ends at page {} but page(s) {}{} have not arrived; send them, then the last page again",
                page.page,
                shown.join(", "),
                if missing.len() > 20 { ", …" } else { "" }
            )));
        }
        if let Some(extra) = numbers.iter().find(|n| **n > page.page) {
            return Err(DomainError::InvalidParameter(format!(
                "report {report_id} ends at page {} but page {extra} was received; start a new report (new reportId)",
                page.page
            )));
        }
        let generation = self.catalog().await?.map_or(0, |c| c.value.generation);
        let mut apply = Apply::default();
        for n in 1..=page.page {
            let Some(item) = self
                .store
                .get_raw(&keys::inventory_page(&cid, report_id, n))
                .await?
            else {
                return Err(DomainError::Contention(format!(
                    "page {n} of report {report_id} disappeared while it was applied"
                )));
            };
            let stored: StoredPage = super::decode(item)?.value;
            for vm in stored.vms {
                let vm = InventoryVm::from(vm);
                // Validated when the page arrived; this only derives the address again.
                if let Ok(valid) = self.validate_vm(&conn, vm) {
                    apply.valid.push(valid);
                }
            }
            // Applied page by page, so one page's VMs are in memory at a time.
            self.apply_vms(generation, &conn, &mut apply).await?;
        }
        let mut done = self
            .finish_report(generation, &conn, request_id, answers, apply)
            .await?;
        let applied = AppliedReport {
            accepted: done.accepted,
            vanished: done.vanished,
        };
        retrying!(self, "the inventory report", async {
            let current: Option<Versioned<ReportRecord>> = self.read(&record_key).await?;
            let mut rec = match &current {
                Some(r) if r.value.report_id == report_id => r.value.clone(),
                _ => ReportRecord {
                    report_id: report_id.to_string(),
                    started_on: self.now(),
                    applied: None,
                },
            };
            rec.applied = Some(applied.clone());
            self.store
                .write(put(record_key.clone(), &rec, expect_of(&current))?)
                .await?;
            Ok(())
        })?;
        self.purge_prefix(&partition).await;
        outcome.rejected.append(&mut done.rejected);
        done.rejected = outcome.rejected;
        Ok(done)
    }

    /// Whether a report of `conn` answering `request_id` may be applied: it answers a pending
    /// request of this connector (returns true), or the catalog is already imported (a refresh).
    async fn check_report_allowed(
        &self,
        conn: &Connector,
        request_id: Option<&str>,
    ) -> Result<bool> {
        let catalog = self.catalog().await?.map(|c| c.value).unwrap_or_default();
        let answers = request_id.is_some_and(|r| {
            catalog
                .pending
                .iter()
                .any(|p| p.work_id == r && p.connector_id == conn.connector_id)
        });
        if !answers && !catalog.imported {
            return Err(DomainError::OperationNotPermitted(match request_id {
                Some(r) => format!("inventory request {r} is not pending (answered, expired or its catalog was deleted)"),
                None => "no server catalog import is in progress; call ImportServerCatalog first".into(),
            }));
        }
        Ok(answers)
    }

    /// Upserts the VMs queued in `apply.valid` (skipping VMs listed earlier in the report).
    async fn apply_vms(&self, generation: u64, conn: &Connector, apply: &mut Apply) -> Result<()> {
        for (address, vm) in std::mem::take(&mut apply.valid) {
            if !apply.seen.insert(address.clone()) {
                apply.outcome.rejected.push((
                    address.vm_id,
                    "the report lists this VM more than once".into(),
                ));
                continue;
            }
            self.upsert_server(generation, conn, &address, &vm).await?;
            apply.outcome.accepted += 1;
        }
        Ok(())
    }

    /// Marks what the report no longer lists as vanished and closes the request it answers.
    async fn finish_report(
        &self,
        generation: u64,
        conn: &Connector,
        request_id: Option<&str>,
        answers: bool,
        apply: Apply,
    ) -> Result<InventoryOutcome> {
        let mut outcome = apply.outcome;
        outcome.vanished = self
            .mark_vanished(generation, &conn.connector_id, &apply.seen)
            .await?;

        let now = self.now();
        retrying!(self, "the server catalog", async {
            let current = self.catalog().await?;
            let mut catalog = current
                .as_ref()
                .map(|c| c.value.clone())
                .unwrap_or_default();
            if let Some(r) = request_id {
                catalog.pending.retain(|p| p.work_id != r);
            }
            catalog
                .failures
                .retain(|f| f.connector_id != conn.connector_id);
            catalog.imported = true;
            catalog.last_modified_on = Some(now);
            let mut writes = vec![put(keys::catalog(), &catalog, expect_of(&current))?];
            if let Some(r) = request_id.filter(|_| answers) {
                writes.push(Write::Delete {
                    key: keys::work(&conn.connector_id, r),
                    expect: Expect::Any,
                });
            }
            self.store.transact(writes).await?;
            Ok(())
        })?;
        tracing::info!(connector_id = %conn.connector_id, accepted = outcome.accepted,
            vanished = outcome.vanished, rejected = outcome.rejected.len(), "inventory applied");
        Ok(outcome)
    }

    /// Deletes every item of a partition, in batches. Best effort (leftovers only cost space):
    /// a failure is logged.
    async fn purge_prefix(&self, partition: &str) {
        loop {
            let page = match self
                .store
                .query(partition, "", None, MAX_TRANSACTION_WRITES)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, partition, "could not purge");
                    return;
                }
            };
            if page.items.is_empty() {
                return;
            }
            let writes = page
                .items
                .into_iter()
                .map(|i| Write::Delete {
                    key: i.key,
                    expect: Expect::Any,
                })
                .collect();
            if let Err(e) = self.store.transact(writes).await {
                tracing::warn!(error = %e, partition, "could not purge");
                return;
            }
        }
    }

    fn validate_vm(
        &self,
        conn: &Connector,
        vm: InventoryVm,
    ) -> std::result::Result<(VmServerAddress, InventoryVm), (String, String)> {
        let vm_id = vm.vm_id.trim().to_string();
        if vm_id.is_empty() {
            return Err((String::new(), "vmId is required".into()));
        }
        let manager = vm
            .vm_manager_id
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        let vm_manager_id = manager.unwrap_or(&conn.vm_manager_id).to_string();
        if let Some(bad) = vm.disks.iter().position(|d| d.path.trim().is_empty()) {
            return Err((vm_id, format!("disk {bad} has no path")));
        }
        if vm.inspection.as_ref().is_some_and(|i| !i.is_object()) {
            return Err((vm_id, "inspection must be a JSON object".into()));
        }
        if vm
            .application
            .as_ref()
            .is_some_and(|a| a.trim().is_empty() || a.len() > 128)
        {
            return Err((vm_id, "application must be 1 to 128 characters".into()));
        }
        Ok((
            VmServerAddress {
                vm_manager_id,
                vm_id,
            },
            vm,
        ))
    }

    /// Creates or refreshes the catalog server of one VM; returns its server id.
    async fn upsert_server(
        &self,
        generation: u64,
        conn: &Connector,
        address: &VmServerAddress,
        vm: &InventoryVm,
    ) -> Result<String> {
        let index_key = keys::vm_address(&address.vm_manager_id, &address.vm_id);
        retrying!(self, address.vm_id, async {
            let now = self.now();
            let index: Option<Versioned<AddressIndex>> = self.read(&index_key).await?;
            let vm_server = VmServer {
                vm_server_address: address.clone(),
                vm_name: vm.vm_name.clone(),
                vm_manager_name: vm
                    .vm_manager_name
                    .clone()
                    .or_else(|| conn.vm_manager_name.clone()),
                vm_manager_type: vm.vm_manager_type.or(conn.vm_manager_type),
                vm_path: vm.vm_path.clone(),
            };
            let fresh = |server_id: String| Server {
                server_id,
                server_type: ServerType::VirtualMachine,
                vm_server: vm_server.clone(),
                replication_job_id: None,
                replication_job_terminated: None,
                connector_id: conn.connector_id.clone(),
                generation,
                disks: vm.disks.clone(),
                os_type: vm.os_type,
                inspection: vm.inspection.clone(),
                application: vm.application.clone(),
                preflight: Vec::new(),
                first_seen_on: now,
                last_seen_on: now,
                vanished_on: None,
            };
            // The import rules run on every report and are stored with the server.
            let checked = |mut s: Server| {
                s.preflight = self.preflight(&s);
                s
            };
            let Some(index) = index else {
                let server = checked(fresh(self.ids.new_id(crate::IdKind::Server)));
                let id = server.server_id.clone();
                let entry = AddressIndex {
                    server_id: id.clone(),
                };
                self.store
                    .transact(vec![
                        put(index_key.clone(), &entry, Expect::Absent)?,
                        put(keys::server(generation, &id), &server, Expect::Absent)?,
                    ])
                    .await?;
                return Ok(id);
            };
            let id = index.value.server_id;
            let key = keys::server(generation, &id);
            let current: Option<Versioned<Server>> = self.read(&key).await?;
            let server = checked(match &current {
                None => fresh(id.clone()),
                Some(cur) => Server {
                    vm_server: vm_server.clone(),
                    connector_id: conn.connector_id.clone(),
                    disks: vm.disks.clone(),
                    os_type: vm.os_type.or(cur.value.os_type),
                    inspection: vm
                        .inspection
                        .clone()
                        .or_else(|| cur.value.inspection.clone()),
                    application: vm.application.clone(),
                    last_seen_on: now,
                    vanished_on: None,
                    ..cur.value.clone()
                },
            });
            self.store
                .write(put(key, &server, expect_of(&current))?)
                .await?;
            Ok(id)
        })
    }

    /// Marks the connector's servers that the report did not list; returns how many are newly marked.
    async fn mark_vanished(
        &self,
        generation: u64,
        connector_id: &str,
        reported: &HashSet<VmServerAddress>,
    ) -> Result<u32> {
        let partition = keys::server_partition(generation);
        let mut count = 0;
        // Page by page: a catalog of 10,000 servers is not held in memory at once.
        let mut after: Option<String> = None;
        loop {
            let (page, last) = self
                .list::<Server>(&partition, after.as_deref(), 500)
                .await?;
            for s in page {
                let gone = s.value.connector_id == connector_id
                    && s.value.vanished_on.is_none()
                    && !reported.contains(&s.value.vm_server.vm_server_address);
                if !gone {
                    continue;
                }
                let key = keys::server(generation, &s.value.server_id);
                let marked = retrying!(self, s.value.server_id, async {
                    let Some(mut cur) = self.read::<Server>(&key).await? else {
                        return Ok(false);
                    };
                    if cur.value.vanished_on.is_some() || cur.value.connector_id != connector_id {
                        return Ok(false);
                    }
                    cur.value.vanished_on = Some(self.now());
                    self.store
                        .write(put(key.clone(), &cur.value, cur.expect())?)
                        .await?;
                    Ok(true)
                })?;
                count += u32::from(marked);
            }
            match last {
                Some(l) => after = Some(l),
                None => return Ok(count),
            }
        }
    }

    /// GetServers: the catalog status and one page of servers, optionally only those at the
    /// given VM addresses.
    pub async fn get_servers(
        &self,
        filter: Option<Vec<VmServerAddress>>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ServerListing> {
        let catalog = self.started_catalog().await?;
        let status = catalog.status(self.now(), self.config.inventory_request_timeout);
        let status_message =
            catalog.status_message(self.now(), self.config.inventory_request_timeout);
        let generation = catalog.generation;
        let servers = match filter.filter(|f| !f.is_empty()) {
            None => {
                let (items, last) = self
                    .list::<Server>(&keys::server_partition(generation), after, limit)
                    .await?;
                Listing {
                    items: items.into_iter().map(|v| v.value).collect(),
                    last,
                }
            }
            Some(addresses) => {
                let mut ids = Vec::new();
                for a in &addresses {
                    required("vmServerAddress.vmManagerId", &a.vm_manager_id)?;
                    required("vmServerAddress.vmId", &a.vm_id)?;
                    let idx: Option<Versioned<AddressIndex>> = self
                        .read(&keys::vm_address(&a.vm_manager_id, &a.vm_id))
                        .await?;
                    if let Some(idx) = idx {
                        ids.push(idx.value.server_id);
                    }
                }
                ids.sort();
                ids.dedup();
                ids.retain(|id| after.is_none_or(|a| id.as_str() > a));
                let mut items = Vec::new();
                let mut rest = ids.into_iter();
                for id in rest.by_ref() {
                    if let Some(s) = self.read::<Server>(&keys::server(generation, &id)).await? {
                        items.push(s.value);
                        if items.len() == limit {
                            break;
                        }
                    }
                }
                let more = rest.next().is_some();
                let last = if more {
                    items.last().map(|s| s.server_id.clone())
                } else {
                    None
                };
                Listing { items, last }
            }
        };
        Ok(ServerListing {
            status,
            status_message,
            last_modified_on: catalog.last_modified_on,
            servers,
        })
    }

    /// DeleteServerCatalog: empties the catalog (status DELETED). Refused while replication jobs
    /// are active, since their servers would vanish under them.
    #[tracing::instrument(name = "delete_catalog", skip_all)]
    pub async fn delete_catalog(&self) -> Result<()> {
        let old_generation = retrying!(self, "the server catalog", async {
            let counter = self
                .read::<super::jobs::Counter>(&keys::active_jobs())
                .await?;
            let active = counter.as_ref().map_or(0, |c| c.value.count);
            if active > 0 {
                return Err(DomainError::OperationNotPermitted(format!(
                    "{active} replication job(s) are active; delete them before deleting the server catalog"
                )));
            }
            let current = self.catalog().await?;
            let old = current
                .as_ref()
                .map(|c| c.value.clone())
                .unwrap_or_default();
            let catalog = Catalog {
                generation: old.generation + 1,
                imported: false,
                deleted: true,
                last_modified_on: Some(self.now()),
                pending: Vec::new(),
                failures: Vec::new(),
            };
            let mut writes = vec![
                put(keys::catalog(), &catalog, expect_of(&current))?,
                Write::Check {
                    key: keys::active_jobs(),
                    expect: expect_of(&counter),
                },
            ];
            for p in old
                .pending
                .iter()
                .take(MAX_TRANSACTION_WRITES - writes.len())
            {
                writes.push(Write::Delete {
                    key: keys::work(&p.connector_id, &p.work_id),
                    expect: Expect::Any,
                });
            }
            self.store.transact(writes).await?;
            Ok(old.generation)
        })?;
        self.purge_generation(old_generation).await;
        tracing::info!(generation = old_generation + 1, "server catalog deleted");
        Ok(())
    }

    /// Removes the servers of a replaced generation. Best effort: readers never look at an old
    /// generation, so leftovers after a failure only cost space; the failure is logged.
    async fn purge_generation(&self, generation: u64) {
        self.purge_prefix(&keys::server_partition(generation)).await;
    }

    /// The server `id` of the current catalog.
    pub(crate) async fn current_server(
        &self,
        id: &str,
    ) -> Result<(Option<Versioned<Catalog>>, Option<Versioned<Server>>)> {
        let catalog = self.catalog().await?;
        let generation = catalog.as_ref().map_or(0, |c| c.value.generation);
        let server = self.read(&keys::server(generation, id)).await?;
        Ok((catalog, server))
    }

    /// Work queued for a connector (tests and diagnostics).
    pub async fn queued_work(&self, connector_id: &str) -> Result<Vec<Work>> {
        Ok(self
            .list_all::<Work>(&keys::work_partition(connector_id))
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }
}
