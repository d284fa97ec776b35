use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::Value;
use tern_states::{
    Engine, EngineConfig, FnHandler, ManualClock, Pattern, StateError, Store, TaskRegistry,
};

/// 2024-01-01T00:00:00Z: corpus timestamps are written relative to it.
pub const EPOCH_MS: i64 = 1_704_067_200_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// Documentation for readers of the corpus.
    #[serde(default)]
    #[allow(dead_code)]
    pub comment: Option<String>,
    pub definition: Value,
    #[serde(default)]
    pub input: Value,
    pub expected: Expected,
    /// Scripted task replies by resource, used in order (the last repeats).
    #[serde(default)]
    pub tasks: HashMap<String, Vec<Reply>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub status: String,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub cause: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// Return this value.
    #[serde(default)]
    pub output: Option<Value>,
    /// Return the task input.
    #[serde(default)]
    pub echo: bool,
    /// Fail with this error (and cause).
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub cause: Option<String>,
    /// For `.waitForTaskToken`: the harness sends this back with send_task_success.
    #[serde(default)]
    pub send_success: Option<Value>,
    /// For `.waitForTaskToken`: nobody ever answers (the task must time out).
    #[serde(default)]
    pub never: bool,
}

#[derive(Debug, Deserialize)]
pub struct CorpusFile {
    pub cases: Vec<Case>,
}

pub fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every case of every corpus file, named `file/case`.
pub fn load_corpus() -> Vec<(String, Case)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("moto-")
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read corpus file");
        let parsed: CorpusFile =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        for c in parsed.cases {
            out.push((format!("{stem}/{}", c.name), c));
        }
    }
    out
}

/// Tokens handed to `.waitForTaskToken` tasks, with what to answer.
pub type Parked = Arc<Mutex<Vec<(String, Option<Value>)>>>;

pub fn scripted_registry(tasks: &HashMap<String, Vec<Reply>>, parked: Parked) -> TaskRegistry {
    let mut reg = TaskRegistry::new();
    for (resource, replies) in tasks {
        let replies = Arc::new(replies.clone());
        let calls = Arc::new(Mutex::new(0usize));
        let parked = parked.clone();
        reg.register(
            resource,
            Arc::new(FnHandler(move |req: tern_states::TaskRequest| {
                let replies = replies.clone();
                let calls = calls.clone();
                let parked = parked.clone();
                async move {
                    let n = {
                        let mut c = calls.lock().unwrap();
                        *c += 1;
                        *c - 1
                    };
                    let r = &replies[n.min(replies.len() - 1)];
                    if req.pattern == Pattern::WaitForTaskToken
                        && (r.send_success.is_some() || r.never)
                    {
                        parked
                            .lock()
                            .unwrap()
                            .push((req.task_token.clone(), r.send_success.clone()));
                        return Ok(Value::Null);
                    }
                    if let Some(e) = &r.error {
                        return Err(StateError::new(
                            e.clone(),
                            r.cause.clone().unwrap_or_default(),
                        ));
                    }
                    if r.echo {
                        return Ok(req.input);
                    }
                    Ok(r.output.clone().unwrap_or(Value::Null))
                }
            })),
        );
    }
    reg
}

pub struct Harness {
    pub engine: Engine,
    pub clock: ManualClock,
    pub parked: Parked,
}

impl Harness {
    pub fn new(
        store: Arc<dyn Store>,
        tasks: TaskRegistry,
        clock: ManualClock,
        parked: Parked,
    ) -> Harness {
        let engine = Engine::open(EngineConfig {
            store,
            tasks,
            clock: Arc::new(clock.clone()),
            region: "local".into(),
        })
        .expect("open engine");
        Harness {
            engine,
            clock,
            parked,
        }
    }

    /// Runs until the execution ends, answering parked tokens and jumping the clock to each
    /// timer instead of sleeping.
    pub async fn finish(&self, arn: &str) -> tern_states::ExecutionDescription {
        for _ in 0..100_000 {
            self.engine.run_until_idle().await;
            let d = self.engine.describe_execution(arn).unwrap();
            if d.status != tern_states::ExecutionStatus::Running {
                return d;
            }
            let answers: Vec<(String, Option<Value>)> =
                self.parked.lock().unwrap().drain(..).collect();
            let mut answered = false;
            for (token, answer) in answers {
                match answer {
                    Some(v) => {
                        self.engine
                            .send_task_success(&token, &v.to_string())
                            .unwrap();
                        answered = true;
                    }
                    None => self.parked.lock().unwrap().push((token, None)),
                }
            }
            if answered {
                continue;
            }
            match self.engine.next_deadline() {
                Some(t) => self.clock.set_ms(t.max(self.clock_now())),
                None => panic!("execution {arn} is stuck: nothing to wait for"),
            }
        }
        panic!("execution {arn} did not finish");
    }

    fn clock_now(&self) -> i64 {
        use tern_states::Clock;
        self.clock.now_ms()
    }
}

/// Compares a finished execution with the expectation; returns a message on mismatch.
pub fn check(
    expected: &Expected,
    status: &str,
    output: Option<&str>,
    error: Option<&str>,
    cause: Option<&str>,
) -> Result<(), String> {
    if status != expected.status {
        return Err(format!(
            "status {status} (error {error:?}, cause {cause:?}, output {output:?}), expected {}",
            expected.status
        ));
    }
    if let Some(want) = &expected.output {
        let got: Value = output
            .map(|o| serde_json::from_str(o).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        if &got != want {
            return Err(format!("output {got}, expected {want}"));
        }
    }
    if let Some(want) = &expected.error {
        if error != Some(want.as_str()) {
            return Err(format!(
                "error {error:?} (cause {cause:?}), expected {want}"
            ));
        }
    }
    if let Some(want) = &expected.cause {
        if cause != Some(want.as_str()) {
            return Err(format!("cause {cause:?}, expected {want}"));
        }
    }
    Ok(())
}
