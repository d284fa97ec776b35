//! Applications and their replication through `aws-sdk-sms` against a real `tern serve`: the
//! catalog comes from a real connector agent over real disk files, and the same agent uploads the
//! replication runs the application's jobs ask for. The scheduler is stepped with
//! `TestServer::tick`; every wait is a bounded poll.

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_sms::types::{
    AppReplicationConfigurationStatus, AppReplicationStatus, AppStatus, LicenseType,
    ReplicationJobState, Server, ServerGroup, ServerGroupReplicationConfiguration,
    ServerReplicationConfiguration, ServerReplicationParameters, Tag,
};
use aws_smithy_types::DateTime;
use tern_acceptance::{now_secs, Config, TestServer};

use crate::{code, code_and_message};

/// A small raw disk with data in some blocks.
fn make_disk(path: &Path, seed: u8) {
    let mut data = vec![0u8; 2 << 20];
    for (i, block) in data.chunks_mut(512 * 1024).enumerate() {
        if i % 2 == 0 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u8).wrapping_mul(31).wrapping_add(seed);
            }
        }
    }
    std::fs::write(path, data).unwrap();
}

/// An inventory of `n` Linux VMs, each with one raw disk in the server's scratch directory.
pub(crate) fn inventory(server: &TestServer, n: usize) -> String {
    let mut s = "vm_manager_id = \"vc-apps\"\nvm_manager_type = \"VSPHERE\"\n".to_string();
    for i in 0..n {
        let disk = server.scratch().join(format!("app-vm{i}.raw"));
        make_disk(&disk, i as u8);
        s.push_str(&format!(
            "\n[[vms]]\nid = \"vm-{i}\"\nname = \"app{i}\"\nos_type = \"LINUX\"\ndisks = [{:?}]\n",
            disk.display().to_string()
        ));
    }
    s
}

/// Registers a connector over `n` VMs with real disks and imports the catalog; returns the
/// agent and the server ids in VM order.
pub(crate) async fn catalog(server: &TestServer, n: usize) -> (tern_connector::Agent, Vec<String>) {
    let mut agent = server.connector_agent("apps", &inventory(server, n)).await;
    agent.run_once().await.unwrap();
    server.client.import_server_catalog().send().await.unwrap();
    agent.poll_once().await.unwrap();
    let servers = server.client.get_servers().send().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let vm = format!("vm-{i}");
        let s = servers
            .server_list()
            .iter()
            .find(|s| {
                s.vm_server()
                    .and_then(|v| v.vm_server_address())
                    .and_then(|a| a.vm_id())
                    == Some(vm.as_str())
            })
            .unwrap_or_else(|| panic!("{vm} in the catalog"));
        ids.push(s.server_id().unwrap().to_string());
    }
    (agent, ids)
}

pub(crate) fn group(name: &str, servers: &[&str]) -> ServerGroup {
    let mut g = ServerGroup::builder().name(name);
    for s in servers {
        g = g.server_list(Server::builder().server_id(*s).build());
    }
    g.build()
}

async fn app_status(server: &TestServer, app_id: &str) -> (AppReplicationStatus, Option<String>) {
    let out = server.client.get_app().app_id(app_id).send().await.unwrap();
    let s = out.app_summary().unwrap();
    (
        s.replication_status().unwrap().clone(),
        s.replication_status_message().map(String::from),
    )
}

#[tokio::test]
async fn an_application_replicates_stops_and_is_deleted() {
    let server = TestServer::start().await;
    let (agent, s) = catalog(&server, 3).await;
    let c = &server.client;

    // Three groups of one server each.
    let created = c
        .create_app()
        .name("shop")
        .description("three tiers")
        .role_name("sms")
        .client_token("shop-1")
        .server_groups(group("web", &[&s[0]]))
        .server_groups(group("app", &[&s[1]]))
        .server_groups(group("db", &[&s[2]]))
        .tags(Tag::builder().key("team").value("blue").build())
        .send()
        .await
        .unwrap();
    let summary = created.app_summary().unwrap();
    let app_id = summary.app_id().unwrap().to_string();
    assert!(app_id.starts_with("app-") && app_id.len() == 21, "{app_id}");
    assert_eq!(summary.name(), Some("shop"));
    assert_eq!(summary.description(), Some("three tiers"));
    assert_eq!(summary.role_name(), Some("sms"));
    assert_eq!(summary.status(), Some(&AppStatus::Active));
    assert_eq!(summary.total_server_groups(), Some(3));
    assert_eq!(summary.total_servers(), Some(3));
    assert!(summary.creation_time().is_some() && summary.last_modified().is_some());
    assert_eq!(
        summary.replication_status(),
        Some(&AppReplicationStatus::ReadyForConfiguration)
    );
    assert_eq!(
        summary.replication_configuration_status(),
        Some(&AppReplicationConfigurationStatus::NotConfigured)
    );
    let groups = created.server_groups();
    assert_eq!(groups.len(), 3);
    assert!(groups
        .iter()
        .all(|g| g.server_group_id().unwrap().starts_with("sg-")));
    assert_eq!(groups[2].server_list()[0].server_id(), Some(s[2].as_str()));
    assert_eq!(
        groups[0].server_list()[0]
            .vm_server()
            .and_then(|v| v.vm_name()),
        Some("app0")
    );
    assert_eq!(created.tags()[0].key(), Some("team"));

    // Replication configuration: one set of parameters per server, read back by group.
    let mut put = c.put_app_replication_configuration().app_id(&app_id);
    for g in groups {
        let mut cfg = ServerGroupReplicationConfiguration::builder()
            .server_group_id(g.server_group_id().unwrap());
        for srv in g.server_list() {
            cfg = cfg.server_replication_configurations(
                ServerReplicationConfiguration::builder()
                    .server(
                        Server::builder()
                            .server_id(srv.server_id().unwrap())
                            .build(),
                    )
                    .server_replication_parameters(
                        ServerReplicationParameters::builder()
                            .seed_time(DateTime::from_secs(now_secs()))
                            .frequency(12)
                            .license_type(LicenseType::Byol)
                            .number_of_recent_amis_to_keep(2)
                            .build(),
                    )
                    .build(),
            );
        }
        put = put.server_group_replication_configurations(cfg.build());
    }
    put.send().await.unwrap();
    let got = c
        .get_app_replication_configuration()
        .app_id(&app_id)
        .send()
        .await
        .unwrap();
    let configs = got.server_group_replication_configurations();
    assert_eq!(configs.len(), 3);
    let p = configs[1].server_replication_configurations()[0]
        .server_replication_parameters()
        .unwrap();
    assert_eq!(p.frequency(), Some(12));
    assert_eq!(p.license_type(), Some(&LicenseType::Byol));
    assert_eq!(
        app_status(&server, &app_id).await.0,
        AppReplicationStatus::ReadyForReplication
    );

    // StartAppReplication: a job per server, each running its seed.
    c.start_app_replication()
        .app_id(&app_id)
        .send()
        .await
        .unwrap();
    let app = c.get_app().app_id(&app_id).send().await.unwrap();
    let jobs: Vec<String> = app
        .server_groups()
        .iter()
        .flat_map(|g| g.server_list())
        .map(|s| {
            s.replication_job_id()
                .expect("each server has its job")
                .to_string()
        })
        .collect();
    assert_eq!(jobs.len(), 3);
    let (status, message) = app_status(&server, &app_id).await;
    assert!(
        matches!(
            status,
            AppReplicationStatus::ReplicationPending | AppReplicationStatus::ReplicationInProgress
        ),
        "{status:?}"
    );
    assert!(
        message.as_deref().unwrap_or_default().contains(&s[0]),
        "the message names the lagging servers: {message:?}"
    );
    // The jobs are CreateReplicationJob's jobs, listed with all others.
    let listed = c.get_replication_jobs().send().await.unwrap();
    assert_eq!(listed.replication_job_list().len(), 3);

    // The connector uploads what the runs ask for; the scheduler moves them to COMPLETED.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        server.tick().await;
        agent.poll_once().await.unwrap();
        let (status, message) = app_status(&server, &app_id).await;
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == AppReplicationStatus::Replicated {
            assert_eq!(message, None);
            break;
        }
        assert!(
            !matches!(
                status,
                AppReplicationStatus::ReplicationFailed | AppReplicationStatus::PartiallyReplicated
            ),
            "{status:?}: {message:?}"
        );
        assert!(
            Instant::now() < deadline,
            "still {status:?} ({message:?}) after {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = c.list_apps().send().await.unwrap();
    let summary = &listed.apps()[0];
    assert_eq!(summary.app_id(), Some(app_id.as_str()));
    assert_eq!(
        summary.replication_status(),
        Some(&AppReplicationStatus::Replicated)
    );
    let latest = summary
        .latest_replication_time()
        .expect("latestReplicationTime once replicated");
    assert!((latest.secs() - now_secs()).abs() < 600, "{latest:?}");
    for j in &jobs {
        let job = &c
            .get_replication_jobs()
            .replication_job_id(j)
            .send()
            .await
            .unwrap()
            .replication_job_list()[0]
            .clone();
        assert!(job.latest_ami_id().is_some(), "{job:?}");
        assert_eq!(job.number_of_recent_amis_to_keep(), Some(2));
    }

    // autoLaunch: the next tick launches the replicated application (QEMU guests on tern
    // serve); GetApp follows it to LAUNCHED; a terminated application is not launched again.
    c.put_app_launch_configuration()
        .app_id(&app_id)
        .role_name("sms-launch")
        .auto_launch(true)
        .send()
        .await
        .unwrap();
    assert_eq!(server.tick().await.apps_launched, vec![app_id.clone()]);
    let launch_status = || async {
        let app = c.get_app().app_id(&app_id).send().await.unwrap();
        let summary = app.app_summary().unwrap().clone();
        summary
            .launch_status()
            .map(|s| s.as_str().to_string())
            .unwrap()
    };
    tern_test_support::poll::until_async(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            let status = launch_status().await;
            assert!(
                status == "LAUNCHED" || status == "LAUNCH_IN_PROGRESS",
                "{status}"
            );
            (status == "LAUNCHED").then_some(())
        },
    )
    .await
    .expect("autoLaunch finishes in 120 s");
    let stacks = tern_local::launcher::list(server.data_dir()).unwrap();
    assert_eq!(stacks[0].instances.len(), 3);
    assert!(stacks[0].instances.iter().all(|i| i.running()));
    c.terminate_app().app_id(&app_id).send().await.unwrap();
    tern_test_support::poll::until_async(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { (launch_status().await == "TERMINATED").then_some(()) },
    )
    .await
    .expect("TerminateApp finishes in 60 s");
    assert!(server.tick().await.apps_launched.is_empty());
    assert!(!stacks[0].instances.iter().any(|i| i.running()));

    // An on-demand replication of the application: each job gets a run.
    c.start_on_demand_app_replication()
        .app_id(&app_id)
        .description("before the cut-over")
        .send()
        .await
        .unwrap();
    assert_eq!(
        app_status(&server, &app_id).await.0,
        AppReplicationStatus::DeltaReplicationInProgress
    );

    // Deleting a replicating application needs forceStopAppReplication.
    let (code_, message) = code_and_message(c.delete_app().app_id(&app_id).send().await);
    assert_eq!(code_, "OperationNotPermittedException");
    assert!(message.contains("forceStopAppReplication"), "{message}");

    // StopAppReplication deletes the jobs (the AMIs stay).
    c.stop_app_replication()
        .app_id(&app_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        app_status(&server, &app_id).await.0,
        AppReplicationStatus::ReplicationStopped
    );
    for j in &jobs {
        let out = c
            .get_replication_jobs()
            .replication_job_id(j)
            .send()
            .await
            .unwrap();
        assert_eq!(
            out.replication_job_list()[0].state(),
            Some(&ReplicationJobState::Deleted)
        );
    }

    c.delete_app().app_id(&app_id).send().await.unwrap();
    assert_eq!(
        code(c.get_app().app_id(&app_id).send().await),
        "InvalidParameterException"
    );
    assert!(c.list_apps().send().await.unwrap().apps().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn application_constraints_are_refused_naming_the_member() {
    let mut config = Config::default();
    config.limits.max_servers_per_app = 2;
    config.limits.max_groups_per_app = 2;
    let server = TestServer::start_with(config).await;
    let (_agent, s) = server.import_catalog(4).await;
    let c = &server.client;

    let refused = [
        (
            c.create_app()
                .server_groups(group("a", &[]))
                .server_groups(group("b", &[]))
                .server_groups(group("c", &[]))
                .send()
                .await,
            "serverGroups",
            "max_groups_per_app",
        ),
        (
            c.create_app()
                .server_groups(group("a", &[&s[0], &s[1], &s[2]]))
                .send()
                .await,
            "serverGroups",
            "max_servers_per_app",
        ),
        (
            c.create_app()
                .server_groups(group("a", &["s-00000000000000000"]))
                .send()
                .await,
            "serverGroups[0].serverList[0].serverId",
            "server catalog",
        ),
        (
            c.create_app()
                .server_groups(
                    ServerGroup::builder()
                        .server_list(Server::builder().build())
                        .build(),
                )
                .send()
                .await,
            "serverGroups[0].serverList[0].serverId",
            "required",
        ),
        (
            c.create_app()
                .tags(Tag::builder().value("v").build())
                .send()
                .await,
            "tags[0].key",
            "required",
        ),
    ];
    for (result, member, why) in refused {
        let (code_, message) = code_and_message(result);
        assert!(
            code_ == "InvalidParameterException" || code_ == "MissingRequiredParameterException",
            "{code_}: {message}"
        );
        assert!(
            message.contains(member) && message.contains(why),
            "{member}/{why}: {message}"
        );
    }
    let (code_, message) = code_and_message(c.get_app().send().await);
    assert_eq!(code_, "MissingRequiredParameterException");
    assert!(message.contains("appId"), "{message}");
    let (code_, message) = code_and_message(c.get_app().app_id("app-1").send().await);
    assert_eq!(code_, "InvalidParameterException");
    assert!(message.contains("appId"), "{message}");
    let (code_, message) = code_and_message(
        c.list_apps()
            .app_ids("app-0123456789abcdef0")
            .app_ids("bogus")
            .send()
            .await,
    );
    assert_eq!(code_, "InvalidParameterException");
    assert!(message.contains("appIds[1]"), "{message}");
    let (code_, message) = code_and_message(c.start_on_demand_app_replication().send().await);
    assert_eq!(code_, "MissingRequiredParameterException");
    assert!(message.contains("appId"), "{message}");

    // A server belongs to one application.
    let first = c
        .create_app()
        .name("first")
        .server_groups(group("g", &[&s[0]]))
        .send()
        .await
        .unwrap();
    let first_id = first.app_summary().unwrap().app_id().unwrap().to_string();
    let (code_, message) = code_and_message(
        c.create_app()
            .name("second")
            .server_groups(group("g", &[&s[1], &s[0]]))
            .send()
            .await,
    );
    assert_eq!(code_, "InvalidParameterException");
    assert!(
        message.contains("serverGroups[0].serverList[1].serverId") && message.contains(&first_id),
        "{message}"
    );

    // Replication parameters follow CreateReplicationJob's rules, named by their member.
    let sg = first.server_groups()[0]
        .server_group_id()
        .unwrap()
        .to_string();
    let (code_, message) = code_and_message(
        c.put_app_replication_configuration()
            .app_id(&first_id)
            .server_group_replication_configurations(
                ServerGroupReplicationConfiguration::builder()
                    .server_group_id(&sg)
                    .server_replication_configurations(
                        ServerReplicationConfiguration::builder()
                            .server(Server::builder().server_id(&s[0]).build())
                            .server_replication_parameters(
                                ServerReplicationParameters::builder().frequency(25).build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await,
    );
    assert_eq!(code_, "InvalidParameterException");
    assert!(
        message.contains("serverGroupReplicationConfigurations[0].serverReplicationConfigurations[0].serverReplicationParameters")
            && message.contains("frequency"),
        "{message}"
    );
    let (code_, message) =
        code_and_message(c.start_app_replication().app_id(&first_id).send().await);
    assert_eq!(code_, "OperationNotPermittedException");
    assert!(
        message.contains("PutAppReplicationConfiguration"),
        "{message}"
    );

    // Launch and templates need a launch configuration and AMIs first.
    let (code_, message) = code_and_message(c.launch_app().app_id(&first_id).send().await);
    assert_eq!(code_, "OperationNotPermittedException");
    assert!(message.contains("PutAppLaunchConfiguration"), "{message}");
    let (code_, message) = code_and_message(c.generate_template().app_id(&first_id).send().await);
    assert_eq!(code_, "InvalidParameterException");
    assert!(
        message.contains("launch before any AMI exists"),
        "{message}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_create_app_with_one_client_token_makes_one_application() {
    let server = TestServer::start().await;
    let (_agent, s) = server.import_catalog(2).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = server.client.clone();
        let id = s[0].clone();
        tasks.push(tokio::spawn(async move {
            c.create_app()
                .name("once")
                .client_token("one-token")
                .server_groups(group("g", &[&id]))
                .send()
                .await
                .map(|o| o.app_summary().unwrap().app_id().unwrap().to_string())
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(
            t.await
                .unwrap()
                .expect("every call answers the one application"),
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let apps = server.client.list_apps().send().await.unwrap();
    assert_eq!(apps.apps().len(), 1);

    // The token with other parameters is refused; UpdateApp replaces only what it is given.
    let (code_, message) = code_and_message(
        server
            .client
            .create_app()
            .name("twice")
            .client_token("one-token")
            .send()
            .await,
    );
    assert_eq!(code_, "InvalidParameterException");
    assert!(message.contains("clientToken"), "{message}");
    let updated = server
        .client
        .update_app()
        .app_id(&ids[0])
        .description("now described")
        .server_groups(group("g", &[&s[0], &s[1]]))
        .send()
        .await
        .unwrap();
    let summary = updated.app_summary().unwrap();
    assert_eq!(summary.name(), Some("once"));
    assert_eq!(summary.description(), Some("now described"));
    assert_eq!(summary.total_servers(), Some(2));
    server.shutdown().await;
}
