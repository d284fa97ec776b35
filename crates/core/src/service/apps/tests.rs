//! Unit tests of the application read model (ids, replication status aggregation).
use super::*;
use serde_json::json;

fn server(id: &str) -> AppServer {
    serde_json::from_value(json!({"serverId": id, "serverType": "VIRTUAL_MACHINE",
        "vmServer": {"vmServerAddress": {"vmManagerId": "vc", "vmId": id}}}))
    .unwrap()
}

pub(super) fn app(jobs: &[(&str, &str)]) -> App {
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
        launch_configuration: None,
        launch: None,
        validation_configuration: None,
        validation_outputs: BTreeMap::new(),
        imported_app_id: None,
    }
}

/// A job in `state`, with an image when `ami`, a run in progress when `running`.
pub(super) fn job(id: &str, state: &str, ami: bool, running: bool) -> ReplicationJob {
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

fn status(app: &App, jobs: Vec<(&str, Option<ReplicationJob>)>) -> (AppReplicationStatus, String) {
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
