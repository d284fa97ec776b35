//! The application use cases (`tern_core::service::apps`) run on a given `Store` adapter.
//!
//! Not a store case: no new store semantics are involved. The applications lean harder than any
//! other use case on conditional writes across several items (application, memberships, client
//! token, the replicating-application counter, and the jobs made through CreateReplicationJob's
//! use case), so the same scenario runs on every adapter — memory, SQLite and DynamoDB — to show
//! that they hold there exactly as in memory.

use std::sync::Arc;

use tern_core::enums::*;
use tern_core::model::Disk;
use tern_core::service::{
    AppUpdate, GroupReplication, InventoryVm, NewApp, NewConnector, NewServerGroup, NewTag,
    ServerReplication, ServerReplicationParameters,
};
use tern_core::{Config, DomainError, ManualClock, RandomIds, Service, Store};

fn group(name: &str, servers: &[&str]) -> NewServerGroup {
    NewServerGroup {
        server_group_id: None,
        name: Some(name.into()),
        server_ids: servers.iter().map(|s| Some(s.to_string())).collect(),
    }
}

fn app(name: &str, groups: Vec<NewServerGroup>) -> NewApp {
    NewApp {
        name: Some(name.into()),
        server_groups: Some(groups),
        ..NewApp::default()
    }
}

fn message(e: DomainError) -> String {
    e.to_string()
}

/// A service on `store` whose catalog holds `vms` servers; returns it with the server ids in VM
/// order.
pub async fn service_with_catalog(
    store: Arc<dyn Store>,
    config: Config,
    vms: usize,
) -> (Service, Vec<String>) {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let svc = Service::new(store, clock, Arc::new(RandomIds), config);
    let c = svc
        .register_connector(NewConnector {
            name: "apps".into(),
            version: "1.0".into(),
            vm_manager_id: format!("vc-apps-{}", uuid::Uuid::new_v4()),
            vm_manager_type: Some(VmManagerType::Vsphere),
            ..Default::default()
        })
        .await
        .expect("register");
    svc.import_catalog().await.expect("import");
    let work = svc.poll_work(&c, 10).await.expect("poll");
    let req = work
        .iter()
        .find(|w| w.kind == WorkKind::Inventory)
        .expect("inventory work");
    let inventory = (0..vms)
        .map(|i| InventoryVm {
            vm_id: format!("vm-{i}"),
            vm_name: Some(format!("web{i}")),
            disks: vec![Disk {
                path: format!("/disks/{i}.raw"),
                format: Some("raw".into()),
                size_bytes: Some(1 << 20),
            }],
            os_type: Some(OsType::Linux),
            ..Default::default()
        })
        .collect();
    svc.report_inventory(&c, Some(&req.work_id), inventory)
        .await
        .expect("inventory");
    let listing = svc.get_servers(None, None, 1000).await.expect("servers");
    let mut by_vm: Vec<(String, String)> = listing
        .servers
        .items
        .into_iter()
        .map(|s| (s.vm_server.vm_server_address.vm_id, s.server_id))
        .collect();
    by_vm.sort_by_key(|(vm, _)| vm[3..].parse::<usize>().unwrap_or(0));
    (svc, by_vm.into_iter().map(|(_, id)| id).collect())
}

/// Create, get, list, update and delete applications, their limits and constraints, one server
/// per application, clientToken idempotency under concurrency, and the replication lifecycle up
/// to the jobs (StartAppReplication → jobs exist → StopAppReplication → jobs deleted).
pub async fn use_cases(store: Arc<dyn Store>) {
    let mut config = Config::default();
    config.limits.max_groups_per_app = 3;
    config.limits.max_servers_per_app = 4;
    config.limits.max_replicating_apps = 1;
    let (svc, s) = service_with_catalog(store, config, 8).await;

    // Create: ids, groups, tags, honest totals and statuses.
    let mut req = app(
        "shop",
        vec![group("web", &[&s[0], &s[1]]), group("db", &[&s[2]])],
    );
    req.description = Some("the shop".into());
    req.client_token = Some("token-1".into());
    req.tags = Some(vec![NewTag {
        key: Some("team".into()),
        value: Some("blue".into()),
    }]);
    let a = svc.create_app(req.clone()).await.expect("CreateApp");
    let id = a.summary.app_id.clone();
    assert!(id.starts_with("app-") && id.len() == 21, "{id}");
    assert_eq!(a.summary.total_servers, 3);
    assert_eq!(a.summary.total_server_groups, 2);
    assert_eq!(a.summary.status, AppStatus::Active);
    assert_eq!(
        a.summary.replication_status,
        AppReplicationStatus::ReadyForConfiguration
    );
    assert_eq!(
        a.summary.replication_configuration_status,
        AppConfigurationStatus::NotConfigured
    );
    assert_eq!(a.summary.creation_time, a.summary.last_modified);
    assert!(a
        .server_groups
        .iter()
        .all(|g| g.server_group_id.starts_with("sg-")));
    assert_eq!(a.server_groups[0].servers[1].server_id, s[1]);
    assert_eq!(a.tags[0].key, "team");

    // The same clientToken answers the same application; with other parameters it is refused.
    let again = svc.create_app(req.clone()).await.expect("CreateApp again");
    assert_eq!(again.summary.app_id, id);
    let mut other = req.clone();
    other.name = Some("other".into());
    let e = message(svc.create_app(other).await.unwrap_err());
    assert!(e.contains("clientToken"), "{e}");

    // Concurrent creations with one new token make one application.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let svc = svc.clone();
        let mut r = app("concurrent", vec![group("g", &[&s[3]])]);
        r.client_token = Some("token-2".into());
        tasks.push(tokio::spawn(async move { svc.create_app(r).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().expect("one token, one app").summary.app_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let concurrent_id = ids[0].clone();

    // A server belongs to one application.
    let e = svc
        .create_app(app("thief", vec![group("g", &[&s[0]])]))
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::InvalidParameter(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("serverGroups[0].serverList[0].serverId")
            && e.to_string().contains(&id),
        "{e}"
    );
    // …also when two requests race for it.
    let (x, y) = futures::join!(
        svc.create_app(app("x", vec![group("g", &[&s[4]])])),
        svc.create_app(app("y", vec![group("g", &[&s[4]])])),
    );
    assert!(x.is_ok() != y.is_ok(), "exactly one wins: {x:?} {y:?}");
    let racer = x.or(y).unwrap().summary.app_id;

    // Constraints, each naming its member.
    let refusals = [
        (
            app(
                "big",
                vec![
                    group("a", &[]),
                    group("b", &[]),
                    group("c", &[]),
                    group("d", &[]),
                ],
            ),
            "serverGroups",
        ),
        (
            app(
                "big",
                vec![group(
                    "a",
                    &[&s[5], &s[6], &s[7], "s-00000000000000000", "s-1"],
                )],
            ),
            "serverGroups",
        ),
        (
            app("ghost", vec![group("a", &["s-00000000000000000"])]),
            "serverGroups[0].serverList[0].serverId",
        ),
        (
            app("twice", vec![group("a", &[&s[5]]), group("b", &[&s[5]])]),
            "serverGroups[1].serverList[0].serverId",
        ),
    ];
    for (req, member) in refusals {
        let e = svc.create_app(req).await.unwrap_err();
        assert!(matches!(e, DomainError::InvalidParameter(_)), "{e:?}");
        assert!(e.to_string().contains(member), "{member}: {e}");
    }
    let mut no_key = app("tags", vec![]);
    no_key.tags = Some(vec![NewTag {
        key: None,
        value: Some("v".into()),
    }]);
    let e = svc.create_app(no_key).await.unwrap_err();
    assert!(matches!(e, DomainError::MissingParameter(_)), "{e:?}");
    assert!(e.to_string().contains("tags[0].key"), "{e}");
    let mut no_server = app("s", vec![]);
    no_server.server_groups = Some(vec![NewServerGroup {
        server_ids: vec![None],
        ..NewServerGroup::default()
    }]);
    let e = svc.create_app(no_server).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("serverGroups[0].serverList[0].serverId"),
        "{e}"
    );
    for bad in [
        "",
        "app-1",
        "app-0123456789ABCDEF0",
        "sms-job-0123456789abcdef0",
    ] {
        let e = svc.get_app(bad).await.unwrap_err();
        assert!(e.to_string().contains("appId"), "{bad}: {e}");
    }
    let e = svc.get_app("app-0123456789abcdef0").await.unwrap_err();
    assert!(matches!(e, DomainError::InvalidParameter(_)), "{e:?}");

    // ListApps: every application, pages, a filter.
    let all = svc.list_apps(None, None, None).await.unwrap();
    assert_eq!(all.items.len(), 3, "{:?}", all.items);
    assert!(all.last.is_none());
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = svc
            .list_apps(None, Some(1), after.as_deref())
            .await
            .unwrap();
        seen.extend(page.items.into_iter().map(|a| a.app_id));
        match page.last {
            Some(l) => after = Some(l),
            None => break,
        }
    }
    let mut expected = vec![id.clone(), concurrent_id.clone(), racer.clone()];
    expected.sort();
    assert_eq!(seen, expected);
    let filtered = svc
        .list_apps(
            Some(vec![id.clone(), "app-0123456789abcdef0".into()]),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(filtered.items.len(), 1);
    assert_eq!(filtered.items[0].total_servers, 3);
    assert!(svc
        .list_apps(Some(vec!["nope".into()]), None, None)
        .await
        .unwrap_err()
        .to_string()
        .contains("appIds[0]"));

    // UpdateApp: a given list replaces, omitted members stay; a kept group keeps its id.
    let web = a.server_groups[0].server_group_id.clone();
    let u = svc
        .update_app(AppUpdate {
            app_id: id.clone(),
            name: Some("shop2".into()),
            server_groups: Some(vec![
                NewServerGroup {
                    server_group_id: Some(web.clone()),
                    name: Some("web".into()),
                    server_ids: vec![Some(s[0].clone()), Some(s[5].clone())],
                },
                group("db", &[&s[2]]),
            ]),
            ..AppUpdate::default()
        })
        .await
        .expect("UpdateApp");
    assert_eq!(u.summary.name.as_deref(), Some("shop2"));
    assert_eq!(u.summary.description.as_deref(), Some("the shop"));
    assert_eq!(u.tags.len(), 1, "tags were not given, so they stay");
    assert_eq!(u.server_groups[0].server_group_id, web);
    assert_ne!(
        u.server_groups[1].server_group_id,
        a.server_groups[1].server_group_id
    );
    assert_eq!(u.summary.total_servers, 3);
    // s[1] left the application: another one may take it now.
    let freed = svc
        .create_app(app("freed", vec![group("g", &[&s[1]])]))
        .await
        .expect("a removed server is free");
    let e = svc
        .update_app(AppUpdate {
            app_id: id.clone(),
            server_groups: Some(vec![NewServerGroup {
                server_group_id: Some("sg-00000000000000000".into()),
                ..NewServerGroup::default()
            }]),
            ..AppUpdate::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("serverGroups[0].serverGroupId"),
        "{e}"
    );

    // Replication configuration: refused naming the member, then stored and read back.
    let groups_of = |d: &tern_core::service::AppDetails| -> Vec<GroupReplication> {
        d.server_groups
            .iter()
            .map(|g| GroupReplication {
                server_group_id: Some(g.server_group_id.clone()),
                servers: g
                    .servers
                    .iter()
                    .map(|s| ServerReplication {
                        server_id: Some(s.server_id.clone()),
                        parameters: Some(ServerReplicationParameters {
                            frequency: Some(12),
                            license_type: Some(LicenseType::Byol),
                            ..Default::default()
                        }),
                    })
                    .collect(),
            })
            .collect()
    };
    let mut bad = groups_of(&u);
    bad[1].servers[0].parameters.as_mut().unwrap().frequency = Some(25);
    let e = svc
        .put_app_replication_configuration(&id, bad)
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::InvalidParameter(_)), "{e:?}");
    assert!(
        e.to_string().contains(
            "serverGroupReplicationConfigurations[1].serverReplicationConfigurations[0].serverReplicationParameters"
        ) && e.to_string().contains("frequency"),
        "{e}"
    );
    let mut bad = groups_of(&u);
    bad[0].servers[0].parameters.as_mut().unwrap().license_type = Some(LicenseType::Aws);
    assert!(svc
        .put_app_replication_configuration(&id, bad)
        .await
        .unwrap_err()
        .to_string()
        .contains("BYOL"));
    let e = svc.start_app_replication(&id).await.unwrap_err();
    assert!(matches!(e, DomainError::OperationNotPermitted(_)), "{e:?}");
    svc.put_app_replication_configuration(&id, groups_of(&u))
        .await
        .expect("PutAppReplicationConfiguration");
    let config = svc.get_app_replication_configuration(&id).await.unwrap();
    assert_eq!(config.len(), 2);
    assert_eq!(config[0].servers.len(), 2);
    assert_eq!(config[0].servers[0].1.frequency, Some(12));
    let d = svc.get_app(&id).await.unwrap();
    assert_eq!(
        d.summary.replication_status,
        AppReplicationStatus::ReadyForReplication
    );
    assert_eq!(
        d.summary.replication_configuration_status,
        AppConfigurationStatus::Configured
    );

    // StartAppReplication: one job per server through CreateReplicationJob's use case.
    // Concurrent starts of one application make one job per server and take one slot.
    let (x, y, z) = futures::join!(
        svc.start_app_replication(&id),
        svc.start_app_replication(&id),
        svc.start_app_replication(&id),
    );
    x.and(y).and(z).expect("StartAppReplication");
    svc.start_app_replication(&id)
        .await
        .expect("a repeated start creates nothing new");
    assert_eq!(
        svc.list_jobs(None, 100).await.unwrap().items.len(),
        3,
        "one job per server"
    );
    let d = svc.get_app(&id).await.unwrap();
    let jobs: Vec<String> = d
        .server_groups
        .iter()
        .flat_map(|g| g.servers.iter())
        .map(|s| {
            s.replication_job_id
                .clone()
                .expect("every server has its job")
        })
        .collect();
    assert_eq!(jobs.len(), 3);
    for j in &jobs {
        let job = svc.get_job(j).await.unwrap();
        assert_eq!(job.frequency, Some(12));
        assert_eq!(job.license_type, Some(LicenseType::Byol));
        assert!(job.description.unwrap_or_default().contains(&id));
    }
    assert_eq!(
        d.summary.replication_status,
        AppReplicationStatus::ReplicationPending
    );
    assert!(d
        .summary
        .replication_status_message
        .unwrap_or_default()
        .contains(&s[0]));
    // One application may replicate at once here (limits.max_replicating_apps = 1).
    svc.put_app_replication_configuration(&freed.summary.app_id, groups_of(&freed))
        .await
        .unwrap();
    let e = svc
        .start_app_replication(&freed.summary.app_id)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("max_replicating_apps"), "{e}");
    // A replicating server cannot leave, nor can the application be deleted without force.
    let e = svc
        .update_app(AppUpdate {
            app_id: id.clone(),
            server_groups: Some(vec![group("web", &[&s[0]])]),
            ..AppUpdate::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, DomainError::OperationNotPermitted(_)), "{e:?}");
    let e = svc.delete_app(&id, false, false).await.unwrap_err();
    assert!(
        matches!(&e, DomainError::OperationNotPermitted(m) if m.contains("forceStopAppReplication")),
        "{e:?}"
    );

    // StopAppReplication deletes the jobs and frees the slot.
    svc.stop_app_replication(&id)
        .await
        .expect("StopAppReplication");
    for j in &jobs {
        assert_eq!(
            svc.get_job(j).await.unwrap().state,
            ReplicationJobState::Deleted
        );
    }
    let d = svc.get_app(&id).await.unwrap();
    assert_eq!(
        d.summary.replication_status,
        AppReplicationStatus::ReplicationStopped
    );
    svc.start_app_replication(&freed.summary.app_id)
        .await
        .expect("the slot was released");

    // DeleteApp with force stops the replication first; memberships are released.
    svc.delete_app(&freed.summary.app_id, true, false)
        .await
        .expect("forced delete");
    svc.delete_app(&id, false, false).await.expect("DeleteApp");
    assert!(svc.get_app(&id).await.is_err());
    let after_delete = svc
        .create_app(app("reuse", vec![group("g", &[&s[0], &s[1]])]))
        .await
        .expect("deleted applications release their servers");
    assert_eq!(after_delete.summary.total_servers, 2);
}
