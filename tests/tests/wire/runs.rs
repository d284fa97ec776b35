//! StartOnDemandReplicationRun and GetReplicationRuns.

use aws_sdk_sms::types::{ReplicationRunState, ReplicationRunType};
use aws_smithy_types::DateTime;
use tern_acceptance::{now_secs, Config, TestServer};

use crate::code;

async fn job(server: &TestServer, server_id: &str, run_once: bool) -> String {
    let mut request = server
        .client
        .create_replication_job()
        .server_id(server_id)
        .seed_replication_time(DateTime::from_secs(now_secs() + 3600));
    request = if run_once {
        request.run_once(true)
    } else {
        request.frequency(12)
    };
    request
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn an_on_demand_run_is_listed_with_its_job() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    let job_id = job(&server, &ids[0], false).await;
    let before = now_secs();
    let run_id = server
        .client
        .start_on_demand_replication_run()
        .replication_job_id(&job_id)
        .description("before the cut-over")
        .send()
        .await
        .unwrap()
        .replication_run_id()
        .expect("replicationRunId")
        .to_owned();
    assert!(run_id.starts_with("sms-run-"), "{run_id}");

    let out = server
        .client
        .get_replication_runs()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.replication_job().and_then(|j| j.replication_job_id()),
        Some(job_id.as_str())
    );
    let run = out
        .replication_run_list()
        .iter()
        .find(|r| r.replication_run_id() == Some(run_id.as_str()))
        .unwrap_or_else(|| panic!("run {run_id} listed: {out:?}"));
    assert_eq!(run.r#type(), Some(&ReplicationRunType::OnDemand));
    assert!(
        matches!(
            run.state(),
            Some(ReplicationRunState::Pending | ReplicationRunState::Active)
        ),
        "{:?}",
        run.state()
    );
    assert_eq!(run.description(), Some("before the cut-over"));
    let scheduled = run
        .scheduled_start_time()
        .expect("scheduledStartTime")
        .secs();
    assert!(
        (scheduled - before).abs() < 60,
        "scheduledStartTime {scheduled}"
    );
    assert_eq!(run.completed_time(), None);

    // The job embeds its runs too.
    let jobs = server
        .client
        .get_replication_jobs()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    assert!(jobs.replication_job_list()[0]
        .replication_run_list()
        .iter()
        .any(|r| r.replication_run_id() == Some(run_id.as_str())));
    server.shutdown().await;
}

#[tokio::test]
async fn no_second_on_demand_run_while_one_is_active() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    let job_id = job(&server, &ids[0], false).await;
    let start = || {
        server
            .client
            .start_on_demand_replication_run()
            .replication_job_id(&job_id)
            .send()
    };
    start().await.unwrap();
    assert_eq!(code(start().await), "OperationNotPermittedException");
    server.shutdown().await;
}

#[tokio::test]
async fn on_demand_runs_are_limited_per_window() {
    let mut config = Config::default();
    config.limits.on_demand_runs_per_window = 0;
    let server = TestServer::start_with(config).await;
    let (_agent, ids) = server.import_catalog(1).await;
    let job_id = job(&server, &ids[0], false).await;
    let result = server
        .client
        .start_on_demand_replication_run()
        .replication_job_id(&job_id)
        .send()
        .await;
    assert_eq!(code(result), "ReplicationRunLimitExceededException");
    server.shutdown().await;
}

#[tokio::test]
async fn runs_of_unknown_or_deleted_jobs() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    let c = &server.client;
    let unknown = "sms-job-00000000000000000";
    assert_eq!(
        code(
            c.start_on_demand_replication_run()
                .replication_job_id(unknown)
                .send()
                .await
        ),
        "InvalidParameterException"
    );
    assert_eq!(
        code(
            c.start_on_demand_replication_run()
                .replication_job_id("")
                .send()
                .await
        ),
        "MissingRequiredParameterException"
    );
    assert_eq!(
        code(
            c.get_replication_runs()
                .replication_job_id(unknown)
                .send()
                .await
        ),
        "InvalidParameterException"
    );
    assert_eq!(
        code(c.get_replication_runs().replication_job_id("").send().await),
        "MissingRequiredParameterException"
    );
    let job_id = job(&server, &ids[0], false).await;
    c.delete_replication_job()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(
            c.start_on_demand_replication_run()
                .replication_job_id(&job_id)
                .send()
                .await
        ),
        "OperationNotPermittedException"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_run_once_job_reads_back_as_such() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    let job_id = job(&server, &ids[0], true).await;
    let out = server
        .client
        .get_replication_runs()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    assert_eq!(out.replication_job().and_then(|j| j.run_once()), Some(true));
    server.shutdown().await;
}

#[tokio::test]
async fn get_replication_runs_pages_repeat_the_job() {
    let server = TestServer::start().await;
    let (_agent, ids) = server.import_catalog(1).await;
    let job_id = job(&server, &ids[0], false).await;
    server
        .client
        .start_on_demand_replication_run()
        .replication_job_id(&job_id)
        .send()
        .await
        .unwrap();
    let pages: Vec<_> = server
        .client
        .get_replication_runs()
        .replication_job_id(&job_id)
        .max_results(1)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .unwrap();
    let runs: usize = pages.iter().map(|p| p.replication_run_list().len()).sum();
    assert!(runs >= 1, "{pages:?}");
    assert!(pages.iter().all(|p| p.replication_run_list().len() <= 1));
    assert!(
        pages
            .iter()
            .all(|p| p.replication_job().and_then(|j| j.replication_job_id())
                == Some(job_id.as_str()))
    );
    assert_eq!(pages.last().unwrap().next_token(), None);
    server.shutdown().await;
}

/// GetReplicationRuns answers newest first, and a client paging through the runs sees each run
/// once even when new runs are created meanwhile.
#[tokio::test]
async fn runs_are_listed_newest_first_and_pages_hold_still_under_new_runs() {
    use tern_core::Clock;
    let clock = std::sync::Arc::new(tern_core::ManualClock::new(time::OffsetDateTime::now_utc()));
    // Nobody uploads, so each hour's run fails on the connector's silence; the job must not be
    // paused on the third failure, or the runs this test pages through stop coming.
    let mut config = Config::default();
    config.limits.max_consecutive_run_failures = 100;
    let server = TestServer::start_with_clock(config, Some(clock.clone())).await;
    let (_agent, ids) = server.import_catalog(1).await;
    let job_id = server
        .client
        .create_replication_job()
        .server_id(&ids[0])
        .seed_replication_time(DateTime::from_secs(clock.now().unix_timestamp()))
        .frequency(1)
        .send()
        .await
        .unwrap()
        .replication_job_id()
        .unwrap()
        .to_owned();
    // The seed run stays in progress, so later intervals are recorded as MISSED runs: one run
    // per interval either way.
    // The seed's workflow may fail in the background while the clock moves, and its failure
    // pushes the next start out by an interval: tick hourly until five runs exist (at most
    // three ticks more than five).
    let mut created = Vec::new();
    let hour = std::time::Duration::from_secs(3601);
    for _ in 0..8 {
        let report = server.tick().await;
        created.extend(report.runs_created);
        created.extend(report.runs_missed);
        clock.advance(hour);
        if created.len() >= 5 {
            break;
        }
    }
    assert_eq!(created.len(), 5, "{created:?}");
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let page = |token: Option<String>| {
        server
            .client
            .get_replication_runs()
            .replication_job_id(&job_id)
            .max_results(2)
            .set_next_token(token)
            .send()
    };
    let ids_of = |out: &aws_sdk_sms::operation::get_replication_runs::GetReplicationRunsOutput| {
        out.replication_run_list()
            .iter()
            .map(|r| r.replication_run_id().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let first = page(None).await.unwrap();
    assert_eq!(ids_of(&first), newest_first[..2]);
    // A new run while the client is between pages: it belongs before page one, not in page two.
    // (MISSED while the seed is in progress; a new run if the seed's workflow gave up meanwhile.)
    // The seed's workflow may fail in the background while the clock moves, and its failure
    // pushes the next start out: tick, an hour later at most twice more, until one run appears.
    let mut newest: Vec<String> = Vec::new();
    let mut reports = Vec::new();
    for _ in 0..3 {
        let report = server.tick().await;
        newest.extend(
            report
                .runs_created
                .iter()
                .chain(&report.runs_missed)
                .cloned(),
        );
        reports.push(report);
        if !newest.is_empty() {
            break;
        }
        clock.advance(hour);
    }
    assert_eq!(newest.len(), 1, "{reports:?}");
    let second = page(first.next_token().map(String::from)).await.unwrap();
    assert_eq!(ids_of(&second), newest_first[2..4]);
    let third = page(second.next_token().map(String::from)).await.unwrap();
    assert_eq!(ids_of(&third), newest_first[4..]);
    assert_eq!(third.next_token(), None);
    // A fresh listing starts with the new run.
    let again = page(None).await.unwrap();
    assert_eq!(ids_of(&again)[0], newest[0]);
    assert_eq!(
        code(
            server
                .client
                .get_replication_runs()
                .replication_job_id(&job_id)
                .next_token("not-a-token")
                .send()
                .await
        ),
        "InvalidParameterException"
    );
    server.shutdown().await;
}
