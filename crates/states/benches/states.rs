//! Transitions per second of the engine on the definitions in `bench/states/`, in memory and
//! durable (SQLite). Prints one JSON line per case; `bench/states/run.sh` compares them with
//! aws-local-stepfunctions. Not a test: run with `cargo bench -p tern-states --bench states`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tern_states::{
    Engine, EngineConfig, ExecutionStatus, MemoryStore, SqliteStore, Store, SystemClock,
    TaskRegistry,
};

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/states")
}

fn run_once(store: Arc<dyn Store>, definition: &str, input: &str) -> (f64, u64, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Engine::open(EngineConfig {
            store,
            tasks: TaskRegistry::new(),
            clock: Arc::new(SystemClock),
            region: "local".into(),
        })
        .unwrap();
        let sm = engine.create_state_machine("bench", definition).unwrap();
        let start = Instant::now();
        let e = engine.start_execution(&sm, Some("run"), input).unwrap();
        engine.run_until_idle().await;
        let secs = start.elapsed().as_secs_f64();
        let d = engine.describe_execution(&e.execution_arn).unwrap();
        assert_eq!(d.status, ExecutionStatus::Succeeded, "{d:?}");
        (
            secs,
            engine.transitions(),
            serde_json::from_str(d.output.as_deref().unwrap()).unwrap(),
        )
    })
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let items: Vec<u64> = (1..=10_000).collect();
    let cases = [
        ("loop", "loop.asl.json", json!({})),
        ("map", "map.asl.json", json!({"items": items})),
    ];
    // BENCH_ONLY=loop or BENCH_ONLY=map-sqlite narrows the run (for profiling).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for (name, file, input) in cases {
        let definition =
            std::fs::read_to_string(bench_dir().join(file)).expect("benchmark definition");
        let input = input.to_string();
        for mode in ["memory", "sqlite"] {
            if !format!("{name}-{mode}").starts_with(only.as_str()) {
                continue;
            }
            let mut best = f64::MAX;
            let mut transitions = 0;
            let mut output = Value::Null;
            for _ in 0..rounds {
                let dir = tempfile::tempdir().unwrap();
                let store: Arc<dyn Store> = match mode {
                    "memory" => Arc::new(MemoryStore::new()),
                    _ => Arc::new(SqliteStore::open(&dir.path().join("states.db")).unwrap()),
                };
                let (secs, t, out) = run_once(store, &definition, &input);
                best = best.min(secs);
                transitions = t;
                output = out;
            }
            println!(
                "{}",
                json!({"engine": format!("tern-{mode}"), "case": name, "seconds": best, "transitions": transitions,
                       "transitions_per_second": transitions as f64 / best, "output": output})
            );
        }
    }
}
