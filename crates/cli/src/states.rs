//! `tern states`: validate and run States Language definitions offline with the Tern States engine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tern_states::{
    Engine, EngineConfig, ExecutionStatus, FnHandler, MemoryStore, Pattern, StateError,
    StateMachine, SystemClock, TaskRegistry, TaskRequest,
};
use tokio::io::AsyncWriteExt;

#[derive(clap::Subcommand)]
pub enum StatesCommand {
    /// Check a definition; prints every problem with its JSON path (exit 1 if there is any).
    Validate {
        /// The definition (`*.asl.json`).
        file: PathBuf,
    },
    /// Run a definition to completion and print its output, or its error and cause, as JSON.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The definition (`*.asl.json`).
    file: PathBuf,
    /// Execution input: JSON text, or @FILE to read it from a file.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Run a Task resource as a shell command: RESOURCE=COMMAND (repeatable). The command reads
    /// the task input as JSON on stdin and prints the result as JSON on stdout; a non-zero exit
    /// fails the task with the `{"error": …, "cause": …}` it printed on stderr, else with
    /// States.TaskFailed. `.waitForTaskToken` tasks complete with the command's output; the token
    /// is in the TERN_TASK_TOKEN environment variable.
    #[arg(long = "task", value_name = "RESOURCE=COMMAND")]
    tasks: Vec<String>,
    /// Replace `${NAME}` in the definition: NAME=VALUE (repeatable), like DefinitionSubstitutions.
    #[arg(long = "substitution", value_name = "NAME=VALUE")]
    substitutions: Vec<String>,
    /// Name of the execution.
    #[arg(long, default_value = "cli")]
    name: String,
    /// Also print the execution history (GetExecutionHistory events).
    #[arg(long)]
    history: bool,
}

pub fn run(cmd: StatesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StatesCommand::Validate { file } => validate(&file),
        StatesCommand::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(run_definition(args))
        }
    }
}

fn read(file: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn validate(file: &PathBuf) -> anyhow::Result<ExitCode> {
    match StateMachine::parse(&read(file)?) {
        Ok(_) => {
            print_json(&json!({"valid": true}))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            print_json(&json!({"valid": false, "problems": errors.0}))?;
            Ok(ExitCode::FAILURE)
        }
    }
}

fn split_pair<'a>(text: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k, v)),
        _ => bail!("{what} must look like NAME=VALUE, got '{text}'"),
    }
}

/// Runs `command` with the task input on stdin; see `RunArgs::tasks` for the contract.
async fn run_command(command: &str, req: &TaskRequest) -> Result<Value, StateError> {
    let failed = |cause: String| StateError::new(tern_states::names::TASK_FAILED, cause);
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("TERN_TASK_TOKEN", &req.task_token)
        .env("TERN_TASK_RESOURCE", &req.resource)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot start '{command}': {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input closes the pipe early; that is not an error.
        let _ = stdin.write_all(req.input.to_string().as_bytes()).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| failed(format!("'{command}' did not finish: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if let Ok(v) = serde_json::from_str::<Value>(stderr.trim()) {
            let field = |a: &str, b: &str| {
                v.get(a)
                    .or_else(|| v.get(b))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            if let Some(error) = field("error", "Error") {
                return Err(StateError::new(
                    error,
                    field("cause", "Cause").unwrap_or_default(),
                ));
            }
        }
        return Err(failed(format!(
            "'{command}' exited with {}: {}",
            out.status,
            stderr.trim()
        )));
    }
    let text = stdout.trim();
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text)
        .map_err(|e| failed(format!("'{command}' printed output that is not JSON: {e}")))
}

async fn run_definition(args: RunArgs) -> anyhow::Result<ExitCode> {
    let definition = read(&args.file)?;
    let input = match args.input.strip_prefix('@') {
        Some(path) => read(&PathBuf::from(path))?,
        None => args.input.clone(),
    };
    serde_json::from_str::<Value>(&input).context("--input is not valid JSON")?;

    let engine_cell: Arc<OnceLock<Engine>> = Arc::new(OnceLock::new());
    let mut registry = TaskRegistry::new();
    let mut definition = definition;
    for s in &args.substitutions {
        let (k, v) = split_pair(s, "--substitution")?;
        // Like SAM's DefinitionSubstitutions: anywhere in the definition, not only in resources.
        definition = definition.replace(&format!("${{{k}}}"), v);
        registry.substitution(k, v);
    }
    let mut commands: HashMap<String, String> = HashMap::new();
    for t in &args.tasks {
        let (resource, command) = split_pair(t, "--task")?;
        commands.insert(resource.to_string(), command.to_string());
    }
    for (resource, command) in commands {
        let cell = engine_cell.clone();
        registry.register(
            &resource,
            Arc::new(FnHandler(move |req: TaskRequest| {
                let command = command.clone();
                let cell = cell.clone();
                async move {
                    let out = run_command(&command, &req).await?;
                    if req.pattern == Pattern::WaitForTaskToken {
                        // The command plays the part of whoever holds the token.
                        if let Some(engine) = cell.get() {
                            engine
                                .send_task_success(&req.task_token, &out.to_string())
                                .map_err(|e| {
                                    StateError::new(tern_states::names::TASK_FAILED, e.to_string())
                                })?;
                        }
                    }
                    Ok(out)
                }
            })),
        );
    }

    let engine = Engine::open(EngineConfig {
        store: Arc::new(MemoryStore::new()),
        tasks: registry,
        clock: Arc::new(SystemClock),
        region: "local".into(),
    })?;
    let _ = engine_cell.set(engine.clone());
    let machine_name = args
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().replace(['.', ' '], "-"))
        .unwrap_or_else(|| "machine".into());
    let sm = match engine.create_state_machine(&machine_name, &definition) {
        Ok(sm) => sm,
        Err(tern_states::EngineError::InvalidDefinition(errors)) => {
            print_json(&json!({"valid": false, "problems": errors.0}))?;
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let driver = engine.spawn_driver();
    let started = engine.start_execution(&sm, Some(&args.name), &input)?;
    let done = engine.wait_for(&started.execution_arn).await?;
    driver.abort();

    let mut result = match done.status {
        ExecutionStatus::Succeeded => {
            let output: Value = serde_json::from_str(done.output.as_deref().unwrap_or("null"))?;
            if !args.history {
                print_json(&output)?;
                return Ok(ExitCode::SUCCESS);
            }
            json!({"status": done.status, "output": output})
        }
        _ => json!({"status": done.status, "error": done.error, "cause": done.cause}),
    };
    if args.history {
        result["history"] = Value::Array(engine.get_execution_history(&started.execution_arn)?);
    }
    print_json(&result)?;
    Ok(if done.status == ExecutionStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
