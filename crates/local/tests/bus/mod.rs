//! The local event bus: rules from a file, webhook / file / command targets, retries, the
//! dead letter, the archive and subscribers. Every test steps the bus with `flush()`; backoff
//! is configured in milliseconds so retries cost nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use tern_core::events::{Event, EventBus, EventOrigin, JobEventState, JobStateChange};
use tern_local::bus::{BusConfig, LocalBus, RuleProblem, RulesError, TargetProblem};

mod durable;
use time::OffsetDateTime;

fn event(job: &str, state: JobEventState) -> Event {
    JobStateChange::new(state, job)
        .with_run("sms-run-00000000000000001")
        .into_event(
            &EventOrigin::new("us-east-1", "123456789012"),
            OffsetDateTime::now_utc(),
            "1",
        )
}

fn bus(dir: &Path, rules: &str) -> LocalBus {
    let file = dir.join("rules.toml");
    std::fs::write(&file, rules).unwrap();
    LocalBus::new(BusConfig::load(&file, dir).expect("rules load")).expect("bus starts")
}

fn lines(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON value"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// A webhook receiver that answers `fail_with` to the first `failures` calls, then 200.
struct Hook {
    failures: usize,
    fail_with: StatusCode,
    calls: AtomicUsize,
    received: Mutex<Vec<(HeaderMap, Value)>>,
}

impl Hook {
    async fn start(failures: usize, fail_with: StatusCode) -> (String, Arc<Hook>) {
        let hook = Arc::new(Hook {
            failures,
            fail_with,
            calls: AtomicUsize::new(0),
            received: Mutex::new(Vec::new()),
        });
        async fn receive(
            State(hook): State<Arc<Hook>>,
            headers: HeaderMap,
            body: String,
        ) -> StatusCode {
            let call = hook.calls.fetch_add(1, Ordering::SeqCst);
            let json = serde_json::from_str(&body).unwrap_or(Value::Null);
            hook.received.lock().unwrap().push((headers, json));
            if call < hook.failures {
                hook.fail_with
            } else {
                StatusCode::OK
            }
        }
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, hook)
    }

    fn ids(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| body["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

#[tokio::test]
async fn webhook_is_retried_until_delivered_with_the_same_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let (url, hook) = Hook::start(2, StatusCode::INTERNAL_SERVER_ERROR).await;
    let bus = bus(
        dir.path(),
        &format!(
            r#"
[[rule]]
name = "failed-jobs"
event_pattern = '{{"source": ["tern.sms"], "detail": {{"state": ["Failed"]}}}}'

[[rule.target]]
type = "webhook"
url = "{url}"
headers = {{ X-Token = "secret" }}
backoff_base_ms = 1
"#
        ),
    );
    let e = event("sms-job-00000000000000001", JobEventState::Failed);
    let outcome = bus.publish(std::slice::from_ref(&e)).await.unwrap();
    assert!(outcome.is_complete(), "{outcome:?}");
    bus.flush().await;
    assert_eq!(bus.pending(), 0);

    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        3,
        "two failures, one success"
    );
    assert_eq!(hook.ids(), vec![e.id.clone(); 3]);
    let received = hook.received.lock().unwrap();
    let (headers, body) = received.last().unwrap();
    assert_eq!(headers["x-token"], "secret");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(serde_json::from_value::<Event>(body.clone()).unwrap(), e);
    assert!(lines(bus.dead_letter_path()).is_empty());
}

#[tokio::test]
async fn a_webhook_that_always_fails_ends_in_the_dead_letter_file() {
    let dir = tempfile::tempdir().unwrap();
    let (url, hook) = Hook::start(usize::MAX, StatusCode::SERVICE_UNAVAILABLE).await;
    let bus = bus(
        dir.path(),
        &format!(
            r#"
[[rule]]
name = "everything"
event_pattern = {{ source = ["tern.sms"] }}

[[rule.target]]
type = "webhook"
url = "{url}"
max_attempts = 3
backoff_base_ms = 1
"#
        ),
    );
    let e = event("sms-job-00000000000000002", JobEventState::Completed);
    bus.publish(std::slice::from_ref(&e))
        .await
        .unwrap()
        .into_result()
        .unwrap();
    bus.flush().await;

    assert_eq!(hook.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        bus.dead_letter_path(),
        dir.path().join("events-dead-letter.ndjson")
    );
    let dead = lines(bus.dead_letter_path());
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["rule"], "everything");
    assert_eq!(dead[0]["attempts"], 3);
    assert!(dead[0]["target"]
        .as_str()
        .unwrap()
        .starts_with("webhook http://127.0.0.1:"));
    assert!(
        dead[0]["error"].as_str().unwrap().contains("503"),
        "{}",
        dead[0]
    );
    assert_eq!(dead[0]["event"]["id"], e.id.as_str());
}

#[tokio::test]
async fn a_webhook_refusing_the_event_is_not_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let (url, hook) = Hook::start(usize::MAX, StatusCode::BAD_REQUEST).await;
    let bus = bus(
        dir.path(),
        &format!(
            r#"
dead_letter = "dlq/bus.ndjson"
[[rule]]
name = "r"
event_pattern = '{{"source": ["tern.sms"]}}'
[[rule.target]]
type = "webhook"
url = "{url}"
backoff_base_ms = 1
"#
        ),
    );
    bus.publish(&[event("sms-job-3", JobEventState::Failed)])
        .await
        .unwrap()
        .into_result()
        .unwrap();
    bus.flush().await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    let dead = lines(&dir.path().join("dlq/bus.ndjson"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["attempts"], 1);
}

#[tokio::test]
async fn file_target_and_archive_get_one_json_event_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(
        dir.path(),
        r#"
archive = "archive.ndjson"

[[rule]]
name = "to-file"
event_pattern = '{"detail-type": ["Server Migration Job State Change"]}'

[[rule.target]]
type = "file"
path = "out/events.ndjson"
"#,
    );
    let published: Vec<Event> = (1..=3)
        .map(|n| event(&format!("sms-job-{n}"), JobEventState::Completed))
        .collect();
    bus.publish(&published)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    bus.flush().await;

    for path in [
        dir.path().join("out/events.ndjson"),
        dir.path().join("archive.ndjson"),
    ] {
        let got: Vec<Event> = lines(&path)
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        let mut got_ids: Vec<_> = got.iter().map(|e| e.id.clone()).collect();
        let mut want_ids: Vec<_> = published.iter().map(|e| e.id.clone()).collect();
        got_ids.sort();
        want_ids.sort();
        assert_eq!(got_ids, want_ids, "{}", path.display());
        assert!(got.iter().all(|e| published.contains(e)));
    }
    assert_eq!(
        bus.archive_path(),
        Some(dir.path().join("archive.ndjson").as_path())
    );
}

#[tokio::test]
async fn command_target_gets_the_event_on_stdin_and_is_retried_when_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmd.ndjson");
    let count = dir.path().join("count");
    let bus = bus(
        dir.path(),
        &format!(
            r#"
[[rule]]
name = "append"
event_pattern = '{{"detail": {{"state": ["Completed"]}}}}'
[[rule.target]]
type = "command"
argv = ["sh", "-c", "cat >> '{out}'"]

[[rule]]
name = "flaky"
event_pattern = '{{"detail": {{"state": ["Completed"]}}}}'
[[rule.target]]
type = "command"
# Fails on its first two runs, succeeds on the third.
argv = ["sh", "-c", "n=$(cat '{count}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{count}'; [ $n -ge 3 ]"]
backoff_base_ms = 1

[[rule]]
name = "broken"
event_pattern = '{{"detail": {{"state": ["Completed"]}}}}'
[[rule.target]]
type = "command"
argv = ["sh", "-c", "cat >/dev/null; echo boom >&2; exit 3"]
max_attempts = 2
backoff_base_ms = 1
"#,
            out = out.display(),
            count = count.display(),
        ),
    );
    let e = event("sms-job-4", JobEventState::Completed);
    bus.publish(std::slice::from_ref(&e))
        .await
        .unwrap()
        .into_result()
        .unwrap();
    bus.flush().await;

    let appended = lines(&out);
    assert_eq!(appended.len(), 1);
    assert_eq!(
        serde_json::from_value::<Event>(appended[0].clone()).unwrap(),
        e
    );
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");
    let dead = lines(bus.dead_letter_path());
    assert_eq!(
        dead.len(),
        1,
        "only the broken command is dead-lettered: {dead:?}"
    );
    assert_eq!(dead[0]["rule"], "broken");
    assert_eq!(dead[0]["attempts"], 2);
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains("boom") && error.contains('3'), "{error}");
}

#[tokio::test]
async fn unmatched_and_disabled_rules_deliver_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, hook) = Hook::start(0, StatusCode::OK).await;
    let bus = bus(
        dir.path(),
        &format!(
            r#"
[[rule]]
name = "failures-only"
event_pattern = '{{"detail": {{"state": ["Failed"]}}}}'
[[rule.target]]
type = "file"
path = "failures.ndjson"
[[rule.target]]
type = "webhook"
url = "{url}"

[[rule]]
name = "switched-off"
enabled = false
event_pattern = '{{"source": ["tern.sms"]}}'
[[rule.target]]
type = "file"
path = "disabled.ndjson"
"#
        ),
    );
    let mut subscriber = bus.subscribe();
    let e = event("sms-job-5", JobEventState::Completed);
    bus.publish(std::slice::from_ref(&e))
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(bus.pending(), 0, "nothing was queued");
    bus.flush().await;
    assert!(!dir.path().join("failures.ndjson").exists());
    assert!(!dir.path().join("disabled.ndjson").exists());
    assert_eq!(hook.calls.load(Ordering::SeqCst), 0);
    // Subscribers see every accepted event, matched by a rule or not.
    assert_eq!(subscriber.recv().await.unwrap(), e);

    // The same rules do deliver a matching event, so the silence above is the pattern's doing.
    bus.publish(&[event("sms-job-5", JobEventState::Failed)])
        .await
        .unwrap()
        .into_result()
        .unwrap();
    bus.flush().await;
    assert_eq!(lines(&dir.path().join("failures.ndjson")).len(), 1);
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    assert!(!dir.path().join("disabled.ndjson").exists());
}

#[tokio::test]
async fn malformed_entries_are_refused_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(
        dir.path(),
        r#"
archive = "archive.ndjson"
[[rule]]
name = "all"
event_pattern = '{"source": [{"prefix": ""}]}'
[[rule.target]]
type = "file"
path = "all.ndjson"
"#,
    );
    let good = event("sms-job-6", JobEventState::Active);
    let mut no_source = good.clone();
    no_source.source = String::new();
    let mut bad_detail = good.clone();
    bad_detail.detail = Value::String("not an object".into());
    let outcome = bus
        .publish(&[no_source, good.clone(), bad_detail])
        .await
        .unwrap();
    assert_eq!(outcome.failed_entry_count(), 2);
    assert_eq!(
        outcome
            .failed
            .iter()
            .map(|f| (f.index, f.error_code.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "InvalidArgument"), (2, "MalformedDetail")]
    );
    bus.flush().await;
    for file in ["archive.ndjson", "all.ndjson"] {
        let got = lines(&dir.path().join(file));
        assert_eq!(got.len(), 1, "{file}");
        assert_eq!(got[0]["id"], good.id.as_str());
    }
}

fn refused(dir: &Path, text: &str) -> RulesError {
    let file: PathBuf = dir.join("rules.toml");
    std::fs::write(&file, text).unwrap();
    match BusConfig::load(&file, dir) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn bad_rules_files_are_refused_with_the_rule_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let e = refused(
        d,
        r#"
[[rule]]
name = "bad-pattern"
event_pattern = '{"detail": {"state": "Failed"}}'
"#,
    );
    let text = e.to_string();
    assert!(
        matches!(&e, RulesError::Rule { rule, problem: RuleProblem::Pattern(_), .. } if rule == "bad-pattern"),
        "{text}"
    );
    assert!(
        text.contains("rule 'bad-pattern'") && text.contains("$.detail.state"),
        "{text}"
    );

    let e = refused(
        d,
        r#"
[[rule]]
name = "typo"
evnt_pattern = '{"source": ["x"]}'
"#,
    );
    assert!(
        matches!(&e, RulesError::Rule { rule, problem: RuleProblem::Shape(_), .. } if rule == "typo"),
        "{e}"
    );
    assert!(e.to_string().contains("evnt_pattern"), "{e}");

    let e = refused(
        d,
        r#"
[[rule]]
name = "hooks"
event_pattern = { source = ["x"] }
[[rule.target]]
type = "webhook"
url = "ftp://example.com/x"
"#,
    );
    assert!(
        matches!(&e, RulesError::Rule { rule, problem: RuleProblem::Target { index: 1, problem: TargetProblem::UnsupportedScheme { .. } }, .. } if rule == "hooks"),
        "{e}"
    );

    let e = refused(
        d,
        r#"
[[rule]]
name = "never"
event_pattern = { source = ["x"] }
[[rule.target]]
type = "file"
path = "a.ndjson"
[[rule.target]]
type = "command"
argv = ["true"]
max_attempts = 0
"#,
    );
    assert!(
        matches!(
            &e,
            RulesError::Rule {
                problem: RuleProblem::Target {
                    index: 2,
                    problem: TargetProblem::ZeroAttempts
                },
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("rule 'never': target 2: max_attempts"),
        "{e}"
    );

    let e = refused(
        d,
        r#"
[[rule]]
name = "carrier-pigeon"
event_pattern = { source = ["x"] }
[[rule.target]]
type = "pigeon"
"#,
    );
    assert!(
        e.to_string().contains("rule 'carrier-pigeon'") && e.to_string().contains("pigeon"),
        "{e}"
    );

    let e = refused(
        d,
        r#"
[[rule]]
name = "twice"
event_pattern = { source = ["x"] }
[[rule]]
name = "twice"
event_pattern = { source = ["y"] }
"#,
    );
    assert!(
        matches!(&e, RulesError::Rule { rule, problem: RuleProblem::DuplicateName, .. } if rule == "twice"),
        "{e}"
    );

    let e = refused(d, "[[rule]]\nevent_pattern = '{\"a\": [1]}'\n");
    assert!(
        matches!(&e, RulesError::Rule { rule, problem: RuleProblem::MissingName, .. } if rule == "#1"),
        "{e}"
    );

    let e = refused(d, "[[rule]\nname = 'x'\n");
    assert!(matches!(e, RulesError::Syntax { .. }), "{e}");

    let e = BusConfig::load(&d.join("missing.toml"), d).unwrap_err();
    assert!(matches!(e, RulesError::Read { .. }), "{e}");
}

/// The example in the README is a working rules file, and its patterns route as it says.
#[tokio::test]
async fn the_readme_example_loads_and_routes() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("## Event rules").expect("README section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig::parse(example, Path::new("README.md"), dir.path()).expect("loads");
    let names: Vec<_> = config.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["failed-jobs", "ami-log"]);
    assert_eq!(
        config.archive,
        Some(dir.path().join("events-archive.ndjson"))
    );

    let completed = JobStateChange::new(JobEventState::Completed, "sms-job-7")
        .with_run("sms-run-7")
        .with_ami("ami-00000000000000007")
        .into_event(
            &EventOrigin::new("us-east-1", "123456789012"),
            OffsetDateTime::now_utc(),
            "2",
        );
    // The README's rules are written for `tern serve`, whose events carry SMS's source.
    let mut json = serde_json::to_value(&completed).unwrap();
    json["source"] = tern_local::LOCAL_EVENT_SOURCE.into();
    let matching: Vec<_> = config
        .rules
        .iter()
        .filter(|r| r.pattern.matches(&json))
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(matching, ["ami-log"]);
    let mut paused = serde_json::to_value(event("sms-job-7", JobEventState::Paused)).unwrap();
    paused["source"] = tern_local::LOCAL_EVENT_SOURCE.into();
    assert!(config.rules[0].pattern.matches(&paused));
    assert!(!config.rules[1].pattern.matches(&paused));
}

/// Many publishers at once: every event reaches the file exactly once, each as one whole
/// line, and `flush` waits for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_lose_and_interleave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(
        dir.path(),
        r#"
archive = "archive.ndjson"
[[rule]]
name = "all"
event_pattern = '{"source": ["tern.sms"]}'
[[rule.target]]
type = "file"
path = "all.ndjson"
[[rule.target]]
type = "file"
path = "all.ndjson"
"#,
    );
    let tasks: Vec<_> = (0..20)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let batch: Vec<Event> = (0..10)
                    .map(|n| event(&format!("sms-job-{p}-{n}"), JobEventState::Active))
                    .collect();
                bus.publish(&batch).await.unwrap().into_result().unwrap();
                batch.into_iter().map(|e| e.id).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut want = Vec::new();
    for t in tasks {
        want.extend(t.await.unwrap());
    }
    bus.flush().await;
    want.sort();
    let ids = |file: &str| {
        let mut ids: Vec<String> = lines(&dir.path().join(file))
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids("archive.ndjson"), want);
    // Two targets of one rule write the same file: each event appears twice, never torn.
    let mut twice: Vec<String> = want
        .iter()
        .flat_map(|id| [id.clone(), id.clone()])
        .collect();
    twice.sort();
    assert_eq!(ids("all.ndjson"), twice);
}
