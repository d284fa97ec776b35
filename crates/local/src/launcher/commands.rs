//! The local instances' command channel: how `tern serve` runs an app-level validation script
//! in a launched guest, as SSM Run Command does in AWS.
//!
//! An instance whose template tags it `UserForSMSApplicationValidation=true` gets a second
//! serial port (the guest's `/dev/ttyS1`) on a Unix socket QEMU listens on, and its NoCloud
//! meta-data says `tern-command-channel: /dev/ttyS1`; the boot kit's `/init` then stays up after
//! booting and serves that port. The lines (the guest's tty in raw mode):
//!
//! ```text
//! host:  TERN-PING <n>                              until the guest answers TERN-PONG <n>
//! host:  TERN-RUN <id> <timeout s> <file name> <script, base64> <command line, base64>
//! guest: <the command's output>
//! guest: TERN-RUN-END <id> <exit status | timeout>
//! ```
//!
//! Pings first because bytes sent before the guest opened its port may be lost; a lost ping
//! is only sent again. Each command runs on a thread of its own that writes
//! `<instance dir>/commands/<id>/output` and then `result.json`; [`status`] reads them. A
//! command whose thread is gone without a result (tern serve stopped) is reported interrupted.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tern_core::launcher::{CommandRequest, CommandState, CommandStatus};

use super::instances::InstanceRecord;

/// The guest's device for the channel, as the meta-data names it.
pub const GUEST_DEVICE: &str = "/dev/ttyS1";
/// How long a guest may take to answer its first ping (a boot under TCG).
const ANSWER_WITHIN: Duration = Duration::from_secs(300);
/// How much of the output [`status`] answers (SSM's `StandardOutputContent` holds 24,000).
const OUTPUT_SHOWN: usize = 24_000;

/// The socket of instance `instance_id`'s channel: short (a socket path holds 108 bytes), in a
/// directory only this user may open.
pub fn socket_path(instance_id: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("tern-commands-{uid}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir.join(format!("{instance_id}.sock")))
}

/// How a command ended, as its thread recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Ended {
    Exited { code: i32 },
    TimedOut,
    Error { reason: String },
}

/// The commands this process runs, and one lock per channel (a guest runs one at a time).
#[derive(Default)]
pub struct Commands {
    running: Mutex<HashSet<String>>,
    channels: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

fn command_dir(inst: &InstanceRecord, id: &str) -> PathBuf {
    inst.dir.join("commands").join(id)
}

impl Commands {
    /// Starts `req` on `inst` (its channel open, the instance running); answers its id.
    pub fn start(
        self: &Arc<Self>,
        inst: &InstanceRecord,
        req: &CommandRequest,
    ) -> Result<String, String> {
        let socket = inst
            .command_socket
            .clone()
            .ok_or_else(|| "the instance has no command channel".to_string())?;
        let id = uuid::Uuid::new_v4().to_string();
        let dir = command_dir(inst, &id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let line = format!(
            "TERN-RUN {id} {} {} {} {}\n",
            req.timeout_seconds,
            req.script_name,
            b64.encode(&req.script),
            b64.encode(req.command.as_bytes()),
        );
        let channel = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(socket.clone())
            .or_default()
            .clone();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        let me = self.clone();
        let deadline = Duration::from_secs(u64::from(req.timeout_seconds)) + ANSWER_WITHIN;
        let thread_id = id.clone();
        std::thread::Builder::new()
            .name(format!("command-{id}"))
            .spawn(move || {
                let _one_at_a_time = channel.lock().unwrap_or_else(|p| p.into_inner());
                let ended = run(&socket, &thread_id, &line, &dir, deadline).unwrap_or_else(
                    |reason| Ended::Error { reason },
                );
                let result = dir.join("result.json");
                if let Err(e) = serde_json::to_vec(&ended)
                    .map_err(std::io::Error::other)
                    .and_then(|b| std::fs::write(&result, b))
                {
                    tracing::warn!(path = %result.display(), error = %e, "cannot record the command's end");
                }
                me.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&thread_id);
            })
            .map_err(|e| format!("cannot start the command's thread: {e}"))?;
        Ok(id)
    }

    /// Where command `id` on `inst` stands.
    pub fn status(&self, inst: &InstanceRecord, id: &str) -> Result<CommandStatus, String> {
        let dir = command_dir(inst, id);
        if !dir.is_dir() {
            return Err(format!("instance {} ran no command {id}", inst.instance_id));
        }
        let output = std::fs::read(dir.join("output"))
            .map(|b| {
                let text = String::from_utf8_lossy(&b).into_owned();
                let chars: Vec<char> = text.chars().collect();
                chars[chars.len().saturating_sub(OUTPUT_SHOWN)..]
                    .iter()
                    .collect()
            })
            .unwrap_or_default();
        let state = match std::fs::read(dir.join("result.json")) {
            Ok(b) => match serde_json::from_slice::<Ended>(&b) {
                Ok(Ended::Exited { code: 0 }) => CommandState::Succeeded,
                Ok(Ended::Exited { code }) => CommandState::Failed {
                    code: Some(code),
                    reason: format!("exit status {code}"),
                },
                Ok(Ended::TimedOut) => CommandState::TimedOut,
                Ok(Ended::Error { reason }) => CommandState::Failed { code: None, reason },
                Err(e) => CommandState::Failed {
                    code: None,
                    reason: format!("its record {} is malformed: {e}", dir.display()),
                },
            },
            Err(_) if self.running.lock().unwrap_or_else(|p| p.into_inner()).contains(id) => {
                CommandState::InProgress
            }
            Err(_) => CommandState::Failed {
                code: None,
                reason: "it was interrupted (tern serve stopped while it ran); put the validation configuration again to run it again".into(),
            },
        };
        Ok(CommandStatus {
            state,
            output,
            output_location: None,
        })
    }
}

/// Runs one command over the channel at `socket`: pings until the guest answers, sends
/// `line`, and keeps what the guest prints in `dir/output` until its end line.
fn run(
    socket: &Path,
    id: &str,
    line: &str,
    dir: &Path,
    deadline: Duration,
) -> Result<Ended, String> {
    let until = Instant::now() + deadline;
    let stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot open the instance's command channel {}: {e}",
            socket.display()
        )
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    // Reads one line (without its end); `None` when none came within the read timeout.
    let mut next_line = |buf: &mut Vec<u8>| -> Result<Option<String>, String> {
        match reader.read_until(b'\n', buf) {
            Ok(0) => Err("the instance closed its command channel (it stopped)".into()),
            Ok(_) if buf.ends_with(b"\n") => {
                let l = String::from_utf8_lossy(buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                buf.clear();
                Ok(Some(l))
            }
            Ok(_) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(format!("reading the command channel: {e}")),
        }
    };
    let ping_until = Instant::now() + ANSWER_WITHIN;
    let mut n = 0u32;
    'answered: loop {
        if Instant::now() > ping_until {
            return Err(format!(
                "the instance did not answer on its command channel within {} s",
                ANSWER_WITHIN.as_secs()
            ));
        }
        n += 1;
        writer
            .write_all(format!("TERN-PING {n}\n").as_bytes())
            .map_err(|e| format!("writing the command channel: {e}"))?;
        while let Some(l) = next_line(&mut buf)? {
            if l.trim() == format!("TERN-PONG {n}") {
                break 'answered;
            }
        }
    }
    writer
        .write_all(line.as_bytes())
        .map_err(|e| format!("writing the command channel: {e}"))?;
    let path = dir.join("output");
    let mut output = std::fs::File::create(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let end = format!("TERN-RUN-END {id} ");
    loop {
        if Instant::now() > until {
            return Ok(Ended::TimedOut);
        }
        let Some(l) = next_line(&mut buf)? else {
            continue;
        };
        if let Some(code) = l.strip_prefix(&end) {
            return Ok(match code.trim() {
                "timeout" => Ended::TimedOut,
                c => Ended::Exited {
                    code: c
                        .parse()
                        .map_err(|_| format!("the instance ended the command with {c:?}"))?,
                },
            });
        }
        if l.starts_with("TERN-PONG ") {
            continue;
        }
        writeln!(output, "{l}").map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
}
