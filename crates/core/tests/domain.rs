//! Use-case tests of the domain against `MemoryStore` and a manual clock.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tern_core::enums::*;
use tern_core::keys;
use tern_core::model::Disk;
use tern_core::service::{InventoryPage, InventoryVm, JobUpdate, NewConnector, NewJob, RunUpdate};
use tern_core::states::RunEvent;
use tern_core::{Config, DomainError, ManualClock, MemoryStore, RandomIds, Service, Store};
use time::macros::datetime;
use time::OffsetDateTime;

const HOUR: Duration = Duration::from_secs(3600);

struct World {
    svc: Service,
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
}

fn world_with(config: Config) -> World {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(datetime!(2026-01-01 00:00 UTC)));
    let svc = Service::new(store.clone(), clock.clone(), Arc::new(RandomIds), config);
    World { svc, store, clock }
}

fn world() -> World {
    world_with(Config::default())
}

fn vm(id: &str, os: Option<OsType>) -> InventoryVm {
    InventoryVm {
        vm_id: id.into(),
        vm_name: Some(format!("{id}-name")),
        vm_path: Some("/dc/vm".into()),
        disks: vec![Disk {
            path: format!("/disks/{id}.qcow2"),
            format: Some("qcow2".into()),
            size_bytes: Some(1 << 30),
        }],
        os_type: os,
        ..Default::default()
    }
}

impl World {
    async fn connector(&self, name: &str) -> String {
        self.svc
            .register_connector(NewConnector {
                name: name.into(),
                version: "1.0".into(),
                vm_manager_id: format!("vc-{name}"),
                vm_manager_type: Some(VmManagerType::Vsphere),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// Imports `vms` through connector `c`, answering its inventory request.
    async fn import(&self, c: &str, vms: Vec<InventoryVm>) -> tern_core::service::InventoryOutcome {
        self.svc.import_catalog().await.unwrap();
        let work = self.svc.poll_work(c, 10).await.unwrap();
        let req = work
            .iter()
            .find(|w| w.kind == WorkKind::Inventory)
            .expect("inventory work");
        self.svc
            .report_inventory(c, Some(&req.work_id), vms)
            .await
            .unwrap()
    }

    async fn server_ids(&self) -> Vec<(String, String)> {
        let l = self.svc.get_servers(None, None, 100).await.unwrap();
        l.servers
            .items
            .into_iter()
            .map(|s| (s.vm_server.vm_server_address.vm_id, s.server_id))
            .collect()
    }

    fn job(&self, server_id: &str) -> NewJob {
        NewJob {
            server_id: server_id.into(),
            seed_replication_time: Some(self.clock.now() + HOUR),
            frequency: Some(12),
            ..Default::default()
        }
    }
}

use tern_core::Clock as _;

#[tokio::test]
async fn catalog_status_moves_through_import_and_delete_with_stable_ids() {
    let w = world();
    let l = w.svc.get_servers(None, None, 10).await.unwrap();
    assert_eq!(l.status, ServerCatalogStatus::NotImported);
    assert!(matches!(
        w.svc.import_catalog().await,
        Err(DomainError::NoConnectorsAvailable(_))
    ));

    let c = w.connector("a").await;
    w.svc.import_catalog().await.unwrap();
    assert_eq!(
        w.svc.get_servers(None, None, 10).await.unwrap().status,
        ServerCatalogStatus::Importing
    );
    let work = w.svc.poll_work(&c, 10).await.unwrap();
    assert_eq!(work.len(), 1);
    assert_eq!(work[0].payload, json!({"requestId": work[0].work_id}));
    // Leased: a second poll within the lease gets nothing, after the lease it is handed out again.
    assert!(w.svc.poll_work(&c, 10).await.unwrap().is_empty());
    w.clock
        .advance(w.svc.config().work_lease + Duration::from_secs(1));
    assert_eq!(w.svc.poll_work(&c, 10).await.unwrap().len(), 1);
    // A restarted connector registers again: what the old process had leased is handed out at
    // once, not after the lease.
    assert!(w.svc.poll_work(&c, 10).await.unwrap().is_empty());
    let again = w
        .svc
        .register_connector(NewConnector {
            connector_id: Some(c.clone()),
            name: "a".into(),
            version: "1.0".into(),
            vm_manager_id: "vc-a".into(),
            vm_manager_type: Some(VmManagerType::Vsphere),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(again, c);
    assert_eq!(w.svc.poll_work(&c, 10).await.unwrap().len(), 1);
    w.svc.heartbeat(&c).await.unwrap();

    let out = w
        .svc
        .report_inventory(
            &c,
            Some(&work[0].work_id),
            vec![vm("vm-1", None), vm("vm-2", None), vm("", None)],
        )
        .await
        .unwrap();
    assert_eq!(out.accepted, 2);
    assert_eq!(out.rejected.len(), 1);
    let l = w.svc.get_servers(None, None, 10).await.unwrap();
    assert_eq!(l.status, ServerCatalogStatus::Available);
    assert_eq!(l.last_modified_on, Some(w.clock.now()));
    let first = w.server_ids().await;
    assert_eq!(first.len(), 2);
    // The answered work item is gone.
    assert!(w.svc.queued_work(&c).await.unwrap().is_empty());

    // Re-import without vm-2: same ids, vm-2 marked vanished but still listed.
    let out = w.import(&c, vec![vm("vm-1", None), vm("vm-3", None)]).await;
    assert_eq!((out.accepted, out.vanished), (2, 1));
    let second = w.server_ids().await;
    assert_eq!(second.len(), 3);
    for (vm_id, id) in &first {
        assert!(
            second.contains(&(vm_id.clone(), id.clone())),
            "{vm_id} kept its id"
        );
    }
    let vm2 = first.iter().find(|(v, _)| v == "vm-2").unwrap().1.clone();
    let err = w.svc.create_job(w.job(&vm2)).await.unwrap_err();
    assert!(
        matches!(err, DomainError::ServerCannotBeReplicated(_)),
        "{err:?}"
    );

    // Delete: empty and DELETED; re-import gives the same ids again.
    w.svc.delete_catalog().await.unwrap();
    let l = w.svc.get_servers(None, None, 10).await.unwrap();
    assert_eq!(l.status, ServerCatalogStatus::Deleted);
    assert!(l.servers.items.is_empty());
    w.import(&c, vec![vm("vm-1", None)]).await;
    let third = w.server_ids().await;
    assert_eq!(
        third,
        vec![first.iter().find(|(v, _)| v == "vm-1").unwrap().clone()]
    );
    // Only the current generation's items remain.
    assert!(w
        .store
        .query(&keys::server_partition(0), "", None, 10)
        .await
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test]
async fn unhealthy_and_disassociated_connectors_get_no_work() {
    let w = world();
    let c = w.connector("a").await;
    w.clock
        .advance(w.svc.config().connector_unhealthy_after + Duration::from_secs(1));
    assert!(matches!(
        w.svc.import_catalog().await,
        Err(DomainError::NoConnectorsAvailable(_))
    ));
    w.svc.heartbeat(&c).await.unwrap();
    w.svc.import_catalog().await.unwrap();
    w.svc.disassociate_connector(&c).await.unwrap();
    assert!(matches!(
        w.svc.heartbeat(&c).await,
        Err(DomainError::OperationNotPermitted(_))
    ));
    assert!(matches!(
        w.svc.poll_work(&c, 5).await,
        Err(DomainError::OperationNotPermitted(_))
    ));
    // Its pending request no longer holds the catalog in IMPORTING.
    assert_eq!(
        w.svc.get_servers(None, None, 10).await.unwrap().status,
        ServerCatalogStatus::NotImported
    );
    assert!(matches!(
        w.svc.disassociate_connector("c-nope").await,
        Err(DomainError::InvalidParameter(_))
    ));
}

#[tokio::test]
async fn job_rules_and_run_lifecycle() {
    let w = world();
    let c = w.connector("a").await;
    w.import(
        &c,
        vec![
            vm("lin", Some(OsType::Linux)),
            vm("win", Some(OsType::Windows)),
        ],
    )
    .await;
    let ids = w.server_ids().await;
    let lin = ids.iter().find(|(v, _)| v == "lin").unwrap().1.clone();
    let win = ids.iter().find(|(v, _)| v == "win").unwrap().1.clone();

    let bad = |f: fn(&mut NewJob)| {
        let mut j = w.job(&lin);
        f(&mut j);
        j
    };
    for (job, what) in [
        (bad(|j| j.frequency = Some(0)), "frequency 0"),
        (bad(|j| j.frequency = Some(25)), "frequency 25"),
        (
            bad(|j| j.number_of_recent_amis_to_keep = Some(271)),
            "amis 271",
        ),
        (
            bad(|j| j.number_of_recent_amis_to_keep = Some(-1)),
            "amis -1",
        ),
        (
            bad(|j| j.license_type = Some(LicenseType::Aws)),
            "AWS license on Linux",
        ),
        (
            bad(|j| j.server_id = "s-00000000000000000".into()),
            "unknown server",
        ),
    ] {
        let err = w.svc.create_job(job).await.unwrap_err();
        assert!(
            matches!(err, DomainError::InvalidParameter(_)),
            "{what}: {err:?}"
        );
    }
    let mut far = w.job(&lin);
    far.seed_replication_time = Some(w.clock.now() + Duration::from_secs(31 * 86_400));
    assert!(matches!(
        w.svc.create_job(far).await,
        Err(DomainError::InvalidParameter(_))
    ));
    let mut no_freq = w.job(&lin);
    no_freq.frequency = None;
    assert!(matches!(
        w.svc.create_job(no_freq).await,
        Err(DomainError::MissingParameter(_))
    ));

    let mut ok = w.job(&win);
    ok.license_type = Some(LicenseType::Aws);
    ok.number_of_recent_amis_to_keep = Some(270);
    let job = w.svc.create_job(ok).await.unwrap();
    assert!(job.starts_with("sms-job-") && job.len() == "sms-job-".len() + 17);
    assert!(matches!(
        w.svc.create_job(w.job(&win)).await,
        Err(DomainError::JobAlreadyExists(_))
    ));

    // Two on-demand runs per 24 h, never while one is in progress.
    let run1 = w
        .svc
        .start_on_demand_run(&job, Some("first".into()))
        .await
        .unwrap();
    assert!(matches!(
        w.svc.start_on_demand_run(&job, None).await,
        Err(DomainError::OperationNotPermitted(_))
    ));
    let upd = |event, ami: Option<&str>| RunUpdate {
        event,
        stage_details: None,
        status_message: None,
        ami_id: ami.map(Into::into),
        snapshot_ids: Vec::new(),
    };
    assert!(w
        .svc
        .record_run(&job, &run1, upd(RunEvent::Complete, Some("ami-1")))
        .await
        .is_err());
    let j = w
        .svc
        .record_run(&job, &run1, upd(RunEvent::Start, None))
        .await
        .unwrap();
    assert_eq!(j.state, ReplicationJobState::Active);
    let j = w
        .svc
        .record_run(&job, &run1, upd(RunEvent::Complete, Some("ami-1")))
        .await
        .unwrap();
    assert_eq!(
        (j.state, j.latest_ami_id.as_deref()),
        (ReplicationJobState::Active, Some("ami-1"))
    );
    let run2 = w.svc.start_on_demand_run(&job, None).await.unwrap();
    w.svc
        .record_run(&job, &run2, upd(RunEvent::Fail, None))
        .await
        .unwrap();
    assert!(matches!(
        w.svc.start_on_demand_run(&job, None).await,
        Err(DomainError::RunLimitExceeded(_))
    ));
    w.clock.advance(24 * HOUR + Duration::from_secs(1));
    let run3 = w.svc.start_on_demand_run(&job, None).await.unwrap();
    let (j, runs) = w.svc.list_runs(&job, None, 10).await.unwrap();
    assert_eq!(j.state, ReplicationJobState::Failing);
    let listed: Vec<_> = runs
        .items
        .iter()
        .map(|r| r.replication_run_id.clone())
        .collect();
    // Newest first.
    assert_eq!(listed, vec![run3.clone(), run2, run1.clone()]);
    assert_eq!(runs.items[2].state, ReplicationRunState::Completed);
    assert_eq!(runs.items[1].state, ReplicationRunState::Failed);

    // Delete: the run in progress is cancelled, the AMI stays recorded, the server is marked.
    w.svc.delete_job(&job).await.unwrap();
    let deleted = w.svc.get_job(&job).await.unwrap();
    assert_eq!(deleted.state, ReplicationJobState::Deleted);
    assert_eq!(deleted.latest_ami_id.as_deref(), Some("ami-1"));
    let (_, runs) = w.svc.list_runs(&job, None, 10).await.unwrap();
    assert_eq!(runs.items[0].state, ReplicationRunState::Deleted);
    assert_eq!(runs.items[2].ami_id.as_deref(), Some("ami-1"));
    let servers = w
        .svc
        .get_servers(None, None, 10)
        .await
        .unwrap()
        .servers
        .items;
    let s = servers.iter().find(|s| s.server_id == win).unwrap();
    assert_eq!(
        (
            s.replication_job_id.as_deref(),
            s.replication_job_terminated
        ),
        (Some(job.as_str()), Some(true))
    );
    // R17: the deleted job stays listed, as DELETED, for `deleted_job_retention`.
    let listed = w.svc.list_jobs(None, 10).await.unwrap().items;
    assert_eq!(
        listed
            .iter()
            .map(|j| (j.replication_job_id.as_str(), j.state))
            .collect::<Vec<_>>(),
        vec![(job.as_str(), ReplicationJobState::Deleted)]
    );
    assert!(matches!(
        w.svc.delete_job(&job).await,
        Err(DomainError::JobNotFound(_))
    ));
    // A terminated job no longer blocks a new one.
    w.svc.create_job(w.job(&win)).await.unwrap();
}

#[tokio::test]
async fn run_once_jobs_complete_after_one_run_and_release_their_slot() {
    let mut config = Config::default();
    config.limits.max_active_jobs = 1;
    let w = world_with(config);
    let c = w.connector("a").await;
    w.import(&c, vec![vm("a", None), vm("b", None)]).await;
    let ids = w.server_ids().await;
    let mut once = w.job(&ids[0].1);
    once.run_once = Some(true);
    once.frequency = None;
    let job = w.svc.create_job(once).await.unwrap();
    let err = w.svc.create_job(w.job(&ids[1].1)).await.unwrap_err();
    assert!(
        matches!(err, DomainError::LimitExceeded(ref m) if m.contains("1 active")),
        "{err:?}"
    );
    // A runOnce job cannot take a frequency later.
    let upd = JobUpdate {
        replication_job_id: job.clone(),
        frequency: Some(2),
        ..Default::default()
    };
    assert!(matches!(
        w.svc.update_job(upd).await,
        Err(DomainError::InvalidParameter(_))
    ));

    let run = w.svc.start_on_demand_run(&job, None).await.unwrap();
    let start = RunUpdate {
        event: RunEvent::Start,
        stage_details: None,
        status_message: None,
        ami_id: None,
        snapshot_ids: Vec::new(),
    };
    w.svc.record_run(&job, &run, start).await.unwrap();
    let done = RunUpdate {
        event: RunEvent::Complete,
        stage_details: None,
        status_message: None,
        ami_id: Some("ami-9".into()),
        snapshot_ids: Vec::new(),
    };
    let j = w.svc.record_run(&job, &run, done).await.unwrap();
    assert_eq!(j.state, ReplicationJobState::Completed);
    assert!(matches!(
        w.svc.start_on_demand_run(&job, None).await,
        Err(DomainError::OperationNotPermitted(_))
    ));
    // The completed job gave its slot back.
    w.svc.create_job(w.job(&ids[1].1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_updates_of_one_job_lose_nothing() {
    let w = world();
    let c = w.connector("a").await;
    w.import(&c, vec![vm("a", Some(OsType::Windows))]).await;
    let server = w.server_ids().await[0].1.clone();
    let job = w.svc.create_job(w.job(&server)).await.unwrap();
    let before = w
        .store
        .get(&keys::job(&job))
        .await
        .unwrap()
        .unwrap()
        .version;

    const ROUNDS: usize = 6;
    let mut tasks = Vec::new();
    for round in 0..ROUNDS {
        for field in 0..7 {
            let svc = w.svc.clone();
            let job = job.clone();
            tasks.push(tokio::spawn(async move {
                let mut u = JobUpdate {
                    replication_job_id: job,
                    ..Default::default()
                };
                match field {
                    0 => u.frequency = Some(6),
                    1 => u.description = Some("described".into()),
                    2 => u.role_name = Some("tern-role".into()),
                    3 => u.number_of_recent_amis_to_keep = Some(5),
                    4 => u.license_type = Some(LicenseType::Byol),
                    5 => u.encrypted = Some(true),
                    _ => u.next_replication_run_start_time = Some(datetime!(2026-01-05 00:00 UTC)),
                }
                let _ = round;
                svc.update_job(u).await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().expect("every update succeeds");
    }
    let j = w.svc.get_job(&job).await.unwrap();
    assert_eq!(j.frequency, Some(6));
    assert_eq!(j.description.as_deref(), Some("described"));
    assert_eq!(j.role_name.as_deref(), Some("tern-role"));
    assert_eq!(j.number_of_recent_amis_to_keep, 5);
    assert_eq!(j.license_type, Some(LicenseType::Byol));
    assert!(j.encrypted);
    assert_eq!(
        j.next_replication_run_start_time,
        Some(datetime!(2026-01-05 00:00 UTC))
    );
    // Every update produced exactly one new version: none was applied over a stale read.
    let after = w
        .store
        .get(&keys::job(&job))
        .await
        .unwrap()
        .unwrap()
        .version;
    assert_eq!(after - before, (ROUNDS * 7) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_active_job_limit_holds_under_concurrency() {
    let mut config = Config::default();
    config.limits.max_active_jobs = 10;
    let w = world_with(config);
    let c = w.connector("a").await;
    w.import(
        &c,
        (0..25).map(|i| vm(&format!("vm-{i:02}"), None)).collect(),
    )
    .await;
    let ids = w.server_ids().await;
    assert_eq!(ids.len(), 25);
    let mut tasks = Vec::new();
    for (_, server) in ids {
        let svc = w.svc.clone();
        let job = w.job(&server);
        tasks.push(tokio::spawn(async move { svc.create_job(job).await }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => created += 1,
            Err(DomainError::LimitExceeded(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(created, 10);
    assert_eq!(w.svc.list_jobs(None, 100).await.unwrap().items.len(), 10);
    let counter = w.store.get(&keys::active_jobs()).await.unwrap().unwrap();
    assert_eq!(counter.body, json!({"count": 10}));
    // Deleting jobs is refused for the catalog while they are active.
    assert!(matches!(
        w.svc.delete_catalog().await,
        Err(DomainError::OperationNotPermitted(_))
    ));
}

#[tokio::test]
async fn reports_without_a_pending_import_are_refused_until_imported() {
    let w = world();
    let c = w.connector("a").await;
    let err = w
        .svc
        .report_inventory(&c, None, vec![vm("x", None)])
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::OperationNotPermitted(_)));
    let _: OffsetDateTime = w.clock.now();
    w.import(&c, vec![vm("x", None)]).await;
    // Once imported, an unsolicited report refreshes the catalog.
    let out = w
        .svc
        .report_inventory(&c, None, vec![vm("x", None), vm("y", None)])
        .await
        .unwrap();
    assert_eq!(out.accepted, 2);
    assert_eq!(w.server_ids().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_below_the_limit_all_succeed() {
    let mut config = Config::default();
    config.limits.max_active_jobs = 1000;
    let w = world_with(config);
    let c = w.connector("a").await;
    w.import(
        &c,
        (0..64).map(|i| vm(&format!("vm-{i:02}"), None)).collect(),
    )
    .await;
    let mut tasks = Vec::new();
    for (_, server) in w.server_ids().await {
        let svc = w.svc.clone();
        let job = w.job(&server);
        tasks.push(tokio::spawn(async move { svc.create_job(job).await }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("no create gives up under contention");
    }
    let counter = w.store.get(&keys::active_jobs()).await.unwrap().unwrap();
    assert_eq!(counter.body, json!({"count": 64}));
}

#[tokio::test]
async fn repeated_failures_pause_a_job_and_an_update_resumes_it() {
    let mut config = Config::default();
    config.limits.on_demand_runs_per_window = 10;
    let w = world_with(config);
    let c = w.connector("a").await;
    w.import(&c, vec![vm("a", None)]).await;
    let server = w.server_ids().await[0].1.clone();
    let job = w.svc.create_job(w.job(&server)).await.unwrap();
    let fail = || RunUpdate {
        event: RunEvent::Fail,
        stage_details: None,
        status_message: Some("upload failed".into()),
        ami_id: None,
        snapshot_ids: Vec::new(),
    };
    let mut states = Vec::new();
    for _ in 0..3 {
        let run = w.svc.start_on_demand_run(&job, None).await.unwrap();
        states.push(w.svc.record_run(&job, &run, fail()).await.unwrap().state);
    }
    use ReplicationJobState::*;
    assert_eq!(states, vec![Failing, Failing, PausedOnFailure]);
    assert_eq!(
        w.svc.get_job(&job).await.unwrap().status_message.as_deref(),
        Some("upload failed")
    );
    let resume = JobUpdate {
        replication_job_id: job.clone(),
        description: Some("fixed the network".into()),
        ..Default::default()
    };
    w.svc.update_job(resume).await.unwrap();
    let j = w.svc.get_job(&job).await.unwrap();
    assert_eq!((j.state, j.consecutive_failures), (Active, 0));

    // Paused again: an on-demand run is the other way to resume (the console's "Resume").
    for _ in 0..3 {
        let run = w.svc.start_on_demand_run(&job, None).await.unwrap();
        w.svc.record_run(&job, &run, fail()).await.unwrap();
    }
    assert_eq!(w.svc.get_job(&job).await.unwrap().state, PausedOnFailure);
    assert!(w.svc.get_job(&job).await.unwrap().paused_on.is_some());
    w.svc.start_on_demand_run(&job, None).await.unwrap();
    let j = w.svc.get_job(&job).await.unwrap();
    assert_eq!(
        (j.state, j.consecutive_failures, j.paused_on),
        (Active, 0, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_process_never_race_on_the_counter() {
    // One attempt each: a creation that lost a race on the counter would fail with Contention.
    // Creations queue and are committed together instead.
    let mut config = Config::default();
    config.limits.max_active_jobs = 1000;
    config.max_write_attempts = 1;
    let w = world_with(config);
    let c = w.connector("a").await;
    w.import(
        &c,
        (0..40).map(|i| vm(&format!("vm-{i:02}"), None)).collect(),
    )
    .await;
    let mut tasks = Vec::new();
    for (_, server) in w.server_ids().await {
        let svc = w.svc.clone();
        let job = w.job(&server);
        tasks.push(tokio::spawn(async move { svc.create_job(job).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().expect("created in one attempt"));
    }
    assert_eq!(ids.len(), 40);
    let counter = w.store.get(&keys::active_jobs()).await.unwrap().unwrap();
    assert_eq!(counter.body, json!({"count": 40}));
    for (_, server) in w.server_ids().await {
        let s = w.svc.get_servers(None, None, 100).await.unwrap();
        let s = s
            .servers
            .items
            .iter()
            .find(|s| s.server_id == server)
            .unwrap();
        assert!(ids.contains(s.replication_job_id.as_deref().unwrap()));
    }
}

#[tokio::test]
async fn the_remembered_counter_follows_releases_and_other_processes() {
    let mut config = Config::default();
    config.limits.max_active_jobs = 2;
    let w = world_with(config.clone());
    // A second process on the same store.
    let other = Service::new(
        w.store.clone(),
        w.clock.clone(),
        Arc::new(RandomIds),
        config,
    );
    let c = w.connector("a").await;
    w.import(&c, (0..4).map(|i| vm(&format!("vm-{i}"), None)).collect())
        .await;
    let servers: Vec<String> = w.server_ids().await.into_iter().map(|(_, s)| s).collect();
    let first = w.svc.create_job(w.job(&servers[0])).await.unwrap();
    // The other process takes the second slot behind this one's remembered counter.
    other.create_job(w.job(&servers[1])).await.unwrap();
    assert!(matches!(
        w.svc.create_job(w.job(&servers[2])).await,
        Err(DomainError::LimitExceeded(_))
    ));
    // A release by the other process frees a slot this one must see.
    let listed = other.list_jobs(None, 10).await.unwrap();
    let theirs = listed
        .items
        .iter()
        .find(|j| j.replication_job_id != first)
        .unwrap();
    other.delete_job(&theirs.replication_job_id).await.unwrap();
    w.svc.create_job(w.job(&servers[2])).await.unwrap();
    assert!(matches!(
        w.svc.create_job(w.job(&servers[3])).await,
        Err(DomainError::LimitExceeded(_))
    ));
    // And a release in this process too.
    w.svc.delete_job(&first).await.unwrap();
    w.svc.create_job(w.job(&servers[3])).await.unwrap();
    let counter = w.store.get(&keys::active_jobs()).await.unwrap().unwrap();
    assert_eq!(counter.body, json!({"count": 2}));
}

fn page(report: &str, n: u32, last: bool, vms: Vec<InventoryVm>) -> InventoryPage {
    InventoryPage {
        report_id: report.into(),
        page: n,
        last,
        vms,
    }
}

#[tokio::test]
async fn a_paged_report_switches_the_catalog_at_its_last_page_and_resent_pages_change_nothing() {
    let w = world();
    let c = w.connector("a").await;
    w.svc.import_catalog().await.unwrap();
    let work = w.svc.poll_work(&c, 10).await.unwrap();
    let req = work[0].work_id.clone();
    let send = |n: u32, last: bool, vms: Vec<InventoryVm>| {
        let (svc, c, req) = (w.svc.clone(), c.clone(), req.clone());
        async move {
            svc.report_inventory_page(&c, Some(&req), page("rep-1", n, last, vms))
                .await
        }
    };
    let out = send(1, false, vec![vm("a", None), vm("b", None)])
        .await
        .unwrap();
    assert_eq!(out.accepted, 2);
    // The same page again: nothing changes; other content under its number: refused.
    send(1, false, vec![vm("a", None), vm("b", None)])
        .await
        .unwrap();
    let err = send(1, false, vec![vm("z", None)]).await.unwrap_err();
    assert!(
        matches!(&err, DomainError::InvalidParameter(m) if m.contains("other content")),
        "{err:?}"
    );
    // Not switched yet: still importing, still empty.
    let l = w.svc.get_servers(None, None, 100).await.unwrap();
    assert_eq!(l.status, ServerCatalogStatus::Importing);
    assert!(l.servers.items.is_empty());
    // A last page with a hole before it is refused, naming the hole.
    let err = send(3, true, vec![vm("e", None)]).await.unwrap_err();
    assert!(
        matches!(&err, DomainError::InvalidParameter(m) if m.contains("page(s) 2 have not arrived")),
        "{err:?}"
    );
    send(2, false, vec![vm("c", None), vm("a", None)])
        .await
        .unwrap();
    let done = send(3, true, vec![vm("e", None)]).await.unwrap();
    // "a" is listed on pages 1 and 2: applied once, the second rejected.
    assert_eq!(done.accepted, 4, "{done:?}");
    assert_eq!(done.rejected.len(), 1, "{done:?}");
    let l = w.svc.get_servers(None, None, 100).await.unwrap();
    assert_eq!(l.status, ServerCatalogStatus::Available);
    assert_eq!(l.status_message, None);
    let ids = w.server_ids().await;
    assert_eq!(ids.len(), 4);
    // The last page delivered twice (a lost answer): the outcome again, nothing applied twice.
    let modified = l.last_modified_on;
    w.clock.advance(Duration::from_secs(60));
    let again = send(3, true, vec![vm("e", None)]).await.unwrap();
    assert_eq!((again.accepted, again.vanished), (4, 0));
    let l = w.svc.get_servers(None, None, 100).await.unwrap();
    assert_eq!(l.last_modified_on, modified);
    assert_eq!(w.server_ids().await, ids);
    // Kept pages are gone once applied.
    let left = w
        .store
        .query(&keys::inventory_page_partition(&c, "rep-1"), "", None, 10)
        .await
        .unwrap();
    assert!(left.items.is_empty());
    // A refresh in pages: VMs not listed are marked vanished only at its last page.
    send_refresh(&w, &c).await;
}

async fn send_refresh(w: &World, c: &str) {
    w.svc
        .report_inventory_page(c, None, page("rep-2", 1, false, vec![vm("a", None)]))
        .await
        .unwrap();
    let vanished = |l: &tern_core::service::ServerListing| {
        l.servers
            .items
            .iter()
            .filter(|s| s.vanished_on.is_some())
            .count()
    };
    let l = w.svc.get_servers(None, None, 100).await.unwrap();
    assert_eq!(vanished(&l), 0);
    let out = w
        .svc
        .report_inventory_page(c, None, page("rep-2", 2, true, vec![vm("b", None)]))
        .await
        .unwrap();
    assert_eq!((out.accepted, out.vanished), (2, 2));
    let l = w.svc.get_servers(None, None, 100).await.unwrap();
    assert_eq!(vanished(&l), 2);
}

#[tokio::test]
async fn a_failed_import_shows_in_the_catalog_status_at_once() {
    let w = world();
    let c = w.connector("a").await;
    w.svc.import_catalog().await.unwrap();
    let work = w.svc.poll_work(&c, 10).await.unwrap();
    w.svc
        .report_error(
            &c,
            Some(&work[0].work_id),
            "inventory file /x.toml: No such file",
        )
        .await
        .unwrap();
    let l = w.svc.get_servers(None, None, 100).await.unwrap();
    assert_eq!(l.status, ServerCatalogStatus::Expired);
    let message = l.status_message.unwrap();
    assert!(
        message.contains(&c) && message.contains("No such file"),
        "{message}"
    );

    // A new import asks again (IMPORTING); its success clears the failure.
    w.import(&c, vec![vm("a", None)]).await;
    let l = w.svc.get_servers(None, None, 100).await.unwrap();
    assert_eq!(
        (l.status, l.status_message),
        (ServerCatalogStatus::Available, None)
    );

    // A refresh that fails leaves the catalog AVAILABLE (its servers stand) and says why.
    w.svc.import_catalog().await.unwrap();
    let work = w.svc.poll_work(&c, 10).await.unwrap();
    w.svc
        .report_error(&c, Some(&work[0].work_id), "page 3 refused")
        .await
        .unwrap();
    let l = w.svc.get_servers(None, None, 100).await.unwrap();
    assert_eq!(l.status, ServerCatalogStatus::Available);
    assert!(l.status_message.unwrap().contains("page 3 refused"));
    assert_eq!(l.servers.items.len(), 1);
}

#[tokio::test]
async fn an_unanswered_import_expires_with_a_message() {
    let w = world();
    let c = w.connector("a").await;
    w.svc.import_catalog().await.unwrap();
    let l = w.svc.get_servers(None, None, 100).await.unwrap();
    assert_eq!(
        (l.status, l.status_message),
        (ServerCatalogStatus::Importing, None)
    );
    w.clock
        .advance(Config::default().inventory_request_timeout + Duration::from_secs(1));
    let l = w.svc.get_servers(None, None, 100).await.unwrap();
    assert_eq!(l.status, ServerCatalogStatus::Expired);
    let message = l.status_message.unwrap();
    assert!(
        message.contains(&c) && message.contains("did not answer"),
        "{message}"
    );
}
