//! The single-table key layout on the [`Store`](crate::store::Store) port.
//!
//! | partition (`pk`) | sort key (`sk`) | body | why |
//! |---|---|---|---|
//! | `CONNECTOR` | connector id | [`Connector`](crate::model::Connector) | GetConnectors = one partition query |
//! | `CONNECTOR_GONE` | connector id | disassociated connector | a later call by it gets a clear error |
//! | `CATALOG` | `META` | [`Catalog`](crate::model::Catalog) | status, generation, pending imports |
//! | `SERVER#<generation>` | server id | [`Server`](crate::model::Server) | GetServers = one partition query |
//! | `VMADDR` | `<vmManagerId>#<vmId>` (escaped) | `{"serverId": …}` | stable server ids |
//! | `JOB` | job id | [`ReplicationJob`](crate::model::ReplicationJob) | list-all-jobs = one partition query |
//! | `JOB_DELETED` | job id | deleted job (state DELETED) | history; GetReplicationJobs by id still answers |
//! | `RUN#<jobId>` | run seq, 10 digits | [`ReplicationRun`](crate::model::ReplicationRun) | runs in creation order |
//! | `WORK#<connectorId>` | work id | [`Work`](crate::model::Work) | PollWork = one partition query |
//! | `LIMIT` | `ACTIVE_JOBS` | `{"count": n}` | the active-job limit under concurrency |
//! | `APP` | app id | [`App`](crate::service::App) | ListApps = one partition query |
//! | `APP_TOKEN` | clientToken | `{"appId": …, "request": …}` | CreateApp idempotency |
//! | `APP_SERVER` | server id | `{"appId": …}` | a server belongs to at most one application |
//! | `LIMIT` | `REPLICATING_APPS` | `{"count": n}` | the replicating-application limit |
//! | `INVREPORT` | connector id | the connector's latest paged inventory report | a re-delivered page is recognised |
//! | `INVPAGE#<connectorId>#<reportId>` | page number, 8 digits | one page's VMs | kept until the last page arrives |
//! | `TEARDOWN` | `<jobId>#<runId>` | [`Teardown`](crate::model::Teardown) | a deleted job's unfinished run still to undo |
//! | `OUTBOX` | state-change id | [`StateChange`](crate::replication::StateChange) | events written with the change they announce, published after |
//!
//! **Stable server ids.** The `VMADDR` item maps a VM's `vmManagerId` + `vmId` to its server id.
//! It is created together with the server (one transaction, `Absent` condition, so two
//! concurrent reports cannot mint two ids) and never deleted, not even by DeleteServerCatalog:
//! the same VM keeps its server id across re-imports and catalog deletions.
//!
//! **Catalog generations.** DeleteServerCatalog does not delete servers one by one inside the
//! request; it bumps `Catalog.generation` in one conditional write, which empties the catalog
//! atomically (readers only look at `SERVER#<current generation>`), and then purges the old
//! partition in batches. Each import writes into the current generation.
//!
//! **Active-job counter.** Every transaction that creates a job, or moves one out of the states
//! that occupy a slot, also writes `LIMIT/ACTIVE_JOBS` with a version condition. Two concurrent
//! creations therefore cannot both take the last slot: one of them fails its condition, re-reads
//! the counter and sees the limit.
//!
//! `#` separates key parts; the user-supplied parts (`vmManagerId`, `vmId`) are escaped so a `#`
//! inside them cannot collide with another address.

use crate::store::Key;

pub const CONNECTOR: &str = "CONNECTOR";
pub const CONNECTOR_GONE: &str = "CONNECTOR_GONE";
pub const JOB: &str = "JOB";
pub const JOB_DELETED: &str = "JOB_DELETED";
pub const VMADDR: &str = "VMADDR";

pub fn connector(id: &str) -> Key {
    Key::new(CONNECTOR, id)
}

pub fn connector_gone(id: &str) -> Key {
    Key::new(CONNECTOR_GONE, id)
}

pub fn catalog() -> Key {
    Key::new("CATALOG", "META")
}

pub fn server_partition(generation: u64) -> String {
    format!("SERVER#{generation}")
}

pub fn server(generation: u64, id: &str) -> Key {
    Key::new(server_partition(generation), id)
}

fn escape(part: &str) -> String {
    part.replace('%', "%25").replace('#', "%23")
}

pub fn vm_address(vm_manager_id: &str, vm_id: &str) -> Key {
    Key::new(
        VMADDR,
        format!("{}#{}", escape(vm_manager_id), escape(vm_id)),
    )
}

pub fn inventory_report(connector_id: &str) -> Key {
    Key::new("INVREPORT", connector_id)
}

/// Report ids are 1-128 of `A-Za-z0-9._-` (checked before), so no escaping is needed.
pub fn inventory_page_partition(connector_id: &str, report_id: &str) -> String {
    format!("INVPAGE#{connector_id}#{report_id}")
}

pub fn inventory_page(connector_id: &str, report_id: &str, page: u32) -> Key {
    Key::new(
        inventory_page_partition(connector_id, report_id),
        format!("{page:08}"),
    )
}

pub fn job(id: &str) -> Key {
    Key::new(JOB, id)
}

pub fn deleted_job(id: &str) -> Key {
    Key::new(JOB_DELETED, id)
}

pub fn run_partition(job_id: &str) -> String {
    format!("RUN#{job_id}")
}

pub fn run(job_id: &str, seq: u64) -> Key {
    Key::new(run_partition(job_id), format!("{seq:010}"))
}

pub fn work_partition(connector_id: &str) -> String {
    format!("WORK#{connector_id}")
}

pub fn work(connector_id: &str, work_id: &str) -> Key {
    Key::new(work_partition(connector_id), work_id)
}

pub const TEARDOWN: &str = "TEARDOWN";

/// Job and run ids are generated (`sms-job-…`, `sms-run-…`), so `#` cannot occur in them.
pub fn teardown(job_id: &str, run_id: &str) -> Key {
    Key::new(TEARDOWN, format!("{job_id}#{run_id}"))
}

pub const OUTBOX: &str = "OUTBOX";

pub fn outbox(id: &str) -> Key {
    Key::new(OUTBOX, id)
}

pub const APP: &str = "APP";

pub fn app(id: &str) -> Key {
    Key::new(APP, id)
}

pub fn app_token(client_token: &str) -> Key {
    Key::new("APP_TOKEN", client_token)
}

pub fn app_server(server_id: &str) -> Key {
    Key::new("APP_SERVER", server_id)
}

pub fn replicating_apps() -> Key {
    Key::new("LIMIT", "REPLICATING_APPS")
}

pub fn active_jobs() -> Key {
    Key::new("LIMIT", "ACTIVE_JOBS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_addresses_cannot_collide_through_separators() {
        assert_ne!(vm_address("a#b", "c"), vm_address("a", "b#c"));
        assert_ne!(vm_address("a%23", "b"), vm_address("a#", "b"));
        assert_eq!(vm_address("vc-1", "vm-9").sk, "vc-1#vm-9");
    }

    #[test]
    fn run_keys_sort_in_creation_order() {
        assert!(run("j", 9).sk < run("j", 10).sk);
    }
}
