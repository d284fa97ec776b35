//! CreateReplicationJob, GetReplicationJobs, UpdateReplicationJob, DeleteReplicationJob.

use aws_sdk_sms::operation::create_replication_job::CreateReplicationJobError;
use aws_sdk_sms::types::{LicenseType, ReplicationJobState, ServerType};
use aws_smithy_types::DateTime;
use tern_acceptance::{now_secs, Config, TestServer};

use crate::{code, code_and_message};

const DAY: i64 = 24 * 3600;

fn create(
    server: &TestServer,
    server_id: &str,
) -> aws_sdk_sms::operation::create_replication_job::builders::CreateReplicationJobFluentBuilder {
    server
        .client
        .create_replication_job()
        .server_id(server_id)
        .seed_replication_time(DateTime::from_secs(now_secs() + 3600))
        .frequency(12)
}

#[tokio::test]
async fn create_and_describe_a_job() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    let seed = now_secs() + 2 * 3600;
    let out = server
        .client
        .create_replication_job()
        .server_id(&ids[0])
        .seed_replication_time(DateTime::from_secs(seed))
        .frequency(12)
        .run_once(false)
        .license_type(LicenseType::Byol)
        .role_name("sms")
        .description("web tier")
        .number_of_recent_amis_to_keep(3)
        .encrypted(true)
        .kms_key_id("alias/tern")
        .send()
        .await
        .unwrap();
    let job_id = out
        .replication_job_id()
        .expect("replicationJobId")
        .to_owned();
    assert!(job_id.starts_with("sms-job-"), "{job_id}");

    let jobs = server
        .client
        .get_replication_jobs()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    let [j] = jobs.replication_job_list() else {
        panic!("one job: {jobs:?}")
    };
    assert_eq!(j.replication_job_id(), Some(job_id.as_str()));
    assert_eq!(j.server_id(), Some(ids[0].as_str()));
    assert_eq!(j.server_type(), Some(&ServerType::VirtualMachine));
    assert_eq!(
        j.vm_server()
            .and_then(|v| v.vm_server_address())
            .and_then(|a| a.vm_id()),
        Some("vm-0")
    );
    assert_eq!(j.seed_replication_time().map(|t| t.secs()), Some(seed));
    assert_eq!(
        j.next_replication_run_start_time().map(|t| t.secs()),
        Some(seed)
    );
    assert_eq!(j.frequency(), Some(12));
    assert_eq!(j.run_once(), Some(false));
    assert_eq!(j.license_type(), Some(&LicenseType::Byol));
    assert_eq!(j.role_name(), Some("sms"));
    assert_eq!(j.description(), Some("web tier"));
    assert_eq!(j.number_of_recent_amis_to_keep(), Some(3));
    assert_eq!(j.encrypted(), Some(true));
    assert_eq!(j.kms_key_id(), Some("alias/tern"));
    assert!(
        matches!(
            j.state(),
            Some(ReplicationJobState::Pending | ReplicationJobState::Active)
        ),
        "{:?}",
        j.state()
    );
    assert_eq!(j.latest_ami_id(), None);

    // The catalog names the server's job.
    let servers = server.client.get_servers().send().await.unwrap();
    let s = &servers.server_list()[0];
    assert_eq!(s.replication_job_id(), Some(job_id.as_str()));
    assert_eq!(s.replication_job_terminated(), Some(false));
    server.shutdown().await;
}

#[tokio::test]
async fn create_validates_its_input() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    let s = ids[0].as_str();
    let bad = [
        (create(&server, s).frequency(0), "frequency 0"),
        (create(&server, s).frequency(25), "frequency 25"),
        (
            create(&server, s).number_of_recent_amis_to_keep(271),
            "271 AMIs",
        ),
        (
            create(&server, s).number_of_recent_amis_to_keep(-1),
            "-1 AMIs",
        ),
        (
            create(&server, s).seed_replication_time(DateTime::from_secs(now_secs() + 31 * DAY)),
            "seed 31 days ahead",
        ),
        (
            create(&server, s).license_type(LicenseType::Aws),
            "AWS license on Linux",
        ),
        (create(&server, "s-00000000000000000"), "unknown server"),
    ];
    for (request, what) in bad {
        assert_eq!(
            code(request.send().await),
            "InvalidParameterException",
            "{what}"
        );
    }
    assert_eq!(
        code(create(&server, "").send().await),
        "MissingRequiredParameterException",
        "empty serverId"
    );
    // Within the limits is fine: 30 days ahead, 270 AMIs, 1 and 24 hours.
    create(&server, s)
        .seed_replication_time(DateTime::from_secs(now_secs() + 29 * DAY))
        .number_of_recent_amis_to_keep(270)
        .frequency(24)
        .send()
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn one_job_per_server() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    create(&server, &ids[0]).send().await.unwrap();
    let err = create(&server, &ids[0]).send().await.unwrap_err();
    assert!(
        matches!(
            err.into_service_error(),
            CreateReplicationJobError::ReplicationJobAlreadyExistsException(_)
        ),
        "the SDK maps the code to its modelled exception"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn active_jobs_are_limited_by_configuration() {
    let mut config = Config::default();
    config.limits.max_active_jobs = 2;
    let server = TestServer::start_with(config).await;
    let (_agent, ids) = server.import_catalog(3).await;
    let first = create(&server, &ids[0]).send().await.unwrap();
    create(&server, &ids[1]).send().await.unwrap();
    let (code, message) = code_and_message(create(&server, &ids[2]).send().await);
    assert_eq!(code, "OperationNotPermittedException", "{message}");
    assert!(
        message.contains('2') && message.contains("limit"),
        "{message}"
    );
    // Deleting a job frees its slot.
    server
        .client
        .delete_replication_job()
        .replication_job_id(first.replication_job_id().unwrap())
        .send()
        .await
        .unwrap();
    create(&server, &ids[2]).send().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn update_a_job() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    let job_id = create(&server, &ids[0])
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned();
    let next = now_secs() + 5 * 3600;
    server
        .client
        .update_replication_job()
        .replication_job_id(&job_id)
        .frequency(6)
        .next_replication_run_start_time(DateTime::from_secs(next))
        .license_type(LicenseType::Byol)
        .role_name("custom-role")
        .description("updated")
        .number_of_recent_amis_to_keep(5)
        .encrypted(true)
        .send()
        .await
        .unwrap();
    let jobs = server
        .client
        .get_replication_jobs()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    let j = &jobs.replication_job_list()[0];
    assert_eq!(j.frequency(), Some(6));
    assert_eq!(
        j.next_replication_run_start_time().map(|t| t.secs()),
        Some(next)
    );
    assert_eq!(j.role_name(), Some("custom-role"));
    assert_eq!(j.description(), Some("updated"));
    assert_eq!(j.number_of_recent_amis_to_keep(), Some(5));
    assert_eq!(j.encrypted(), Some(true));

    let c = &server.client;
    assert_eq!(
        code(
            c.update_replication_job()
                .replication_job_id(&job_id)
                .frequency(30)
                .send()
                .await
        ),
        "InvalidParameterException"
    );
    assert_eq!(
        code(
            c.update_replication_job()
                .replication_job_id("sms-job-00000000000000000")
                .frequency(6)
                .send()
                .await
        ),
        "ReplicationJobNotFoundException"
    );
    assert_eq!(
        code(
            c.update_replication_job()
                .replication_job_id("")
                .send()
                .await
        ),
        "MissingRequiredParameterException"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn delete_a_job_marks_the_server_and_frees_it() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    let job_id = create(&server, &ids[0])
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned();
    let c = &server.client;
    c.delete_replication_job()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    let servers = c.get_servers().send().await.unwrap();
    let s = &servers.server_list()[0];
    assert_eq!(s.replication_job_id(), Some(job_id.as_str()));
    assert_eq!(s.replication_job_terminated(), Some(true));
    // The job no longer runs: it is gone from the listing of live jobs or reads DELETED.
    let listed = c.get_replication_jobs().send().await.unwrap();
    assert!(listed
        .replication_job_list()
        .iter()
        .filter(|j| j.replication_job_id() == Some(job_id.as_str()))
        .all(|j| j.state() == Some(&ReplicationJobState::Deleted)));
    let deleted = c
        .get_replication_jobs()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        deleted.replication_job_list()[0].state(),
        Some(&ReplicationJobState::Deleted),
        "a deleted job can still be described"
    );
    assert_eq!(
        code(
            c.delete_replication_job()
                .replication_job_id("sms-job-00000000000000000")
                .send()
                .await
        ),
        "ReplicationJobNotFoundException"
    );
    assert_eq!(
        code(
            c.delete_replication_job()
                .replication_job_id("")
                .send()
                .await
        ),
        "MissingRequiredParameterException"
    );
    // The server may get a new job.
    create(&server, &ids[0]).send().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn get_replication_jobs_paginates_and_rejects_unknown_ids() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(5).await;
    let mut created = Vec::new();
    for id in &ids {
        let out = create(&server, id).send().await.unwrap();
        created.push(out.replication_job_id().unwrap().to_owned());
    }
    let pages: Vec<_> = server
        .client
        .get_replication_jobs()
        .max_results(2)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        pages
            .iter()
            .map(|p| p.replication_job_list().len())
            .collect::<Vec<_>>(),
        [2, 2, 1]
    );
    let mut listed: Vec<_> = pages
        .iter()
        .flat_map(|p| p.replication_job_list())
        .map(|j| j.replication_job_id().unwrap().to_owned())
        .collect();
    listed.sort();
    created.sort();
    assert_eq!(listed, created);
    let all = server.client.get_replication_jobs().send().await.unwrap();
    assert_eq!(
        all.replication_job_list().len(),
        5,
        "default page holds them all"
    );
    assert_eq!(all.next_token(), None);

    assert_eq!(
        code(
            server
                .client
                .get_replication_jobs()
                .replication_job_id("sms-job-00000000000000000")
                .send()
                .await
        ),
        "InvalidParameterException"
    );
    assert_eq!(
        code(
            server
                .client
                .get_replication_jobs()
                .max_results(-1)
                .send()
                .await
        ),
        "InvalidParameterException"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_creates_respect_one_job_per_server_and_the_limit() {
    let mut config = Config::default();
    config.limits.max_active_jobs = 4;
    let server = TestServer::start_with(config).await;
    let (_agent, ids) = server.import_catalog(12).await;

    // Eight clients race for the same server: exactly one wins.
    let same = (0..8).map(|_| create(&server, &ids[0]).send());
    let results = futures_join_all(same).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for r in results.into_iter().filter(Result::is_err) {
        assert_eq!(code(r), "ReplicationJobAlreadyExistsException");
    }

    // Eleven more servers race for the three slots left.
    let others = ids[1..].iter().map(|id| create(&server, id).send());
    let results = futures_join_all(others).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 3, "{results:?}");
    for r in results.into_iter().filter(Result::is_err) {
        assert_eq!(code(r), "OperationNotPermittedException");
    }
    let jobs = server.client.get_replication_jobs().send().await.unwrap();
    assert_eq!(jobs.replication_job_list().len(), 4);
    server.shutdown().await;
}

/// Runs the futures concurrently on the test's runtime and returns their results in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// R17: GetReplicationJobs without an id lists every job, deleted ones included (state DELETED),
/// for `deleted_job_retention`; pages run across live and deleted jobs in id order.
#[tokio::test]
async fn deleted_jobs_are_listed_as_deleted_for_the_configured_time() {
    let clock = std::sync::Arc::new(tern_core::ManualClock::new(time::OffsetDateTime::now_utc()));
    let config = Config {
        deleted_job_retention: std::time::Duration::from_secs(3600),
        ..Config::default()
    };
    let server = TestServer::start_with_clock(config, Some(clock.clone())).await;
    let (_agent, ids) = server.import_catalog(3).await;
    let c = &server.client;
    let mut jobs = Vec::new();
    for id in &ids {
        let job = c
            .create_replication_job()
            .server_id(id)
            .seed_replication_time(DateTime::from_secs(clock_now(&clock) + 3600))
            .frequency(12)
            .send()
            .await
            .unwrap();
        jobs.push(job.replication_job_id().unwrap().to_owned());
    }
    jobs.sort();
    c.delete_replication_job()
        .replication_job_id(&jobs[1])
        .send()
        .await
        .unwrap();

    // One job a page: live, deleted, live, each once, in id order.
    let mut listed = Vec::new();
    let mut token = None;
    loop {
        let page = c
            .get_replication_jobs()
            .max_results(1)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        for j in page.replication_job_list() {
            listed.push((
                j.replication_job_id().unwrap().to_owned(),
                j.state().unwrap().clone(),
            ));
        }
        token = page.next_token().map(String::from);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(
        listed,
        vec![
            (jobs[0].clone(), ReplicationJobState::Pending),
            (jobs[1].clone(), ReplicationJobState::Deleted),
            (jobs[2].clone(), ReplicationJobState::Pending),
        ]
    );

    // Still listed just before the retention ends; gone (and purged) after it.
    clock.advance(std::time::Duration::from_secs(3540));
    server.tick().await;
    let all = c.get_replication_jobs().send().await.unwrap();
    assert_eq!(all.replication_job_list().len(), 3);
    clock.advance(std::time::Duration::from_secs(120));
    let all = c.get_replication_jobs().send().await.unwrap();
    let left: Vec<_> = all
        .replication_job_list()
        .iter()
        .map(|j| j.replication_job_id().unwrap())
        .collect();
    assert_eq!(left, vec![jobs[0].as_str(), jobs[2].as_str()]);
    server.tick().await;
    assert_eq!(
        code(
            c.get_replication_jobs()
                .replication_job_id(&jobs[1])
                .send()
                .await
        ),
        "InvalidParameterException"
    );
    server.shutdown().await;
}

fn clock_now(clock: &tern_core::ManualClock) -> i64 {
    use tern_core::Clock;
    clock.now().unix_timestamp()
}

/// R6: `encrypted` turns encryption on, `kmsKeyId` only chooses the key. Create and update
/// apply the same rule: a key without `encrypted: true` is refused by both; turning encryption
/// off drops the key.
#[tokio::test]
async fn kms_key_id_needs_encrypted_on_create_and_update_alike() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(2).await;
    let c = &server.client;
    let (code, message) = code_and_message(
        create(&server, &ids[0])
            .kms_key_id("alias/tern")
            .send()
            .await,
    );
    assert_eq!(code, "InvalidParameterException");
    assert!(
        message.contains("kmsKeyId requires encrypted: true"),
        "{message}"
    );
    assert_eq!(
        code_and_message(
            create(&server, &ids[0])
                .encrypted(false)
                .kms_key_id("alias/tern")
                .send()
                .await
        )
        .0,
        "InvalidParameterException"
    );

    // Not encrypted: a key alone is refused by update too.
    let plain = create(&server, &ids[0])
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned();
    let (code, message) = code_and_message(
        c.update_replication_job()
            .replication_job_id(&plain)
            .kms_key_id("alias/tern")
            .send()
            .await,
    );
    assert_eq!(code, "InvalidParameterException");
    assert!(
        message.contains("kmsKeyId requires encrypted: true"),
        "{message}"
    );
    // With encrypted: true it is taken.
    c.update_replication_job()
        .replication_job_id(&plain)
        .encrypted(true)
        .kms_key_id("alias/tern")
        .send()
        .await
        .unwrap();
    let job = |id: String| async move {
        c.get_replication_jobs()
            .replication_job_id(id)
            .send()
            .await
            .unwrap()
            .replication_job_list()[0]
            .clone()
    };
    let j = job(plain.clone()).await;
    assert_eq!(
        (j.encrypted(), j.kms_key_id()),
        (Some(true), Some("alias/tern"))
    );
    // Encrypted already: a new key alone is fine; encrypted: false drops the key.
    c.update_replication_job()
        .replication_job_id(&plain)
        .kms_key_id("alias/other")
        .send()
        .await
        .unwrap();
    assert_eq!(job(plain.clone()).await.kms_key_id(), Some("alias/other"));
    c.update_replication_job()
        .replication_job_id(&plain)
        .encrypted(false)
        .send()
        .await
        .unwrap();
    let j = job(plain.clone()).await;
    assert_eq!((j.encrypted(), j.kms_key_id()), (Some(false), None));

    // encrypted: true without a key: the account's default key (no kmsKeyId recorded).
    let default_key = create(&server, &ids[1])
        .encrypted(true)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned();
    let j = job(default_key).await;
    assert_eq!((j.encrypted(), j.kms_key_id()), (Some(true), None));
    server.shutdown().await;
}
