//! App-level SSM validations (SMS R34): a script from S3 run on the instance the validation
//! names, which must carry the tag `UserForSMSApplicationValidation=true`, once per launch.
//!
//! For each such validation of a LAUNCHED application with no record since the launch:
//!
//! 1. a claim is written (PENDING, no command yet), conditional on the application's
//!    version: of two ticks at once one sends the command. A claim left by a sender that
//!    died is taken over after [`CLAIM_STALE`];
//! 2. the script is read from staging where the launcher carries it to the instance (an
//!    unreadable one fails the validation, naming the object; in AWS the instance downloads it
//!    itself) and sent with the launcher's `send_command`; the command id is recorded
//!    (IN_PROGRESS). A refusal (an instance that is not there, not tagged, not running) fails
//!    the validation with the launcher's reason; a transient error leaves the claim, retried;
//! 3. the command is followed with `command_status` until it ends: SUCCEEDED on exit status
//!    0, FAILED otherwise (exit status, or `executionTimeoutSeconds` passed), with the end of
//!    its output. Its whole output goes to `outputS3BucketName` (SSM writes it itself in AWS;
//!    otherwise Tern puts it at `<appId>/<validationId>/<commandId>/<instanceId>/stdout`). A
//!    command the launcher cannot answer for a grace period past its timeout is FAILED.
//!
//! A changed validation (PutAppValidationConfiguration) loses its record and runs again.

use super::*;
use crate::images::StagedObject;
use crate::launcher::{CommandRequest, CommandState, CommandStatus, LaunchError, Launcher};
use crate::staging::Staging;

/// What runs and reads validations: the host's launcher (consoles, commands) and its staging
/// store (the scripts, their output).
#[derive(Clone, Copy)]
pub struct ValidationRunner<'a> {
    pub launcher: &'a dyn Launcher,
    pub staging: &'a dyn Staging,
}

/// A claim not followed by a sent command this long is taken over.
pub(crate) const CLAIM_STALE: time::Duration = time::Duration::minutes(2);
/// SSM's default `executionTimeout` when the validation names none.
const DEFAULT_TIMEOUT_SECONDS: i64 = 3_600;
/// How long past its timeout a command may go unanswered before it is failed.
const GRACE: time::Duration = time::Duration::minutes(10);
/// The largest script Tern sends (SSM's parameters hold far less inline; AWS downloads it).
const MAX_SCRIPT: u64 = 1 << 20;

/// The file name a script is saved as: its key's last part, with anything but letters,
/// digits, `.`, `-` and `_` made `_` (`script` when nothing is left).
fn script_name(key: &str) -> String {
    let last = key.rsplit('/').next().unwrap_or_default();
    let name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.trim_matches('.').is_empty() {
        "script".into()
    } else {
        name
    }
}

impl Service {
    /// Sends or follows the SSM validations of `app` when it is launched; answers whether any
    /// record was written.
    pub(super) async fn run_app_validations(
        &self,
        runner: ValidationRunner<'_>,
        app: &App,
    ) -> Result<bool> {
        let Some(launched) = app
            .launch
            .as_ref()
            .filter(|l| l.status == AppLaunchStatus::Launched)
            .and_then(|l| l.latest_launch_time)
        else {
            return Ok(false);
        };
        let Some(config) = &app.validation_configuration else {
            return Ok(false);
        };
        let mut wrote = false;
        for v in &config.app_validations {
            let (Some(vid), Some(p)) = (&v.validation_id, &v.ssm_validation_parameters) else {
                continue;
            };
            let rec = app
                .validation_outputs
                .get(vid)
                .filter(|r| r.time >= launched);
            wrote |= match rec {
                Some(r) if r.ended() => false,
                Some(r) if r.command_id.is_some() => {
                    self.follow_command(runner, &app.app_id, vid, p, launched, r)
                        .await?
                }
                Some(r) if self.now() - r.time < CLAIM_STALE => false,
                _ => {
                    self.send_validation(runner, &app.app_id, vid, p, launched)
                        .await?
                }
            };
        }
        Ok(wrote)
    }

    /// Claims validation `vid` for this launch and sends its command.
    async fn send_validation(
        &self,
        runner: ValidationRunner<'_>,
        id: &str,
        vid: &str,
        p: &SsmValidationParameters,
        launched: OffsetDateTime,
    ) -> Result<bool> {
        let instance = p.instance_id.clone().unwrap_or_default();
        let now = self.now();
        let claim = RecordedValidation {
            instance_id: Some(instance.clone()),
            ..RecordedValidation::new(
                ValidationStatus::Pending,
                Some(format!(
                    "sending the validation script to instance {instance}"
                )),
                now,
            )
        };
        let stale = now - CLAIM_STALE;
        let Some(claim_time) = self
            .record_validation(id, vid, launched, claim, |stored| {
                stored.time >= launched
                    && (stored.ended() || stored.command_id.is_some() || stored.time > stale)
            })
            .await?
        else {
            return Ok(false);
        };
        // The claim's time tells it from a record written since.
        let ours = move |stored: &RecordedValidation| stored.time != claim_time;
        let failed = |message: String| RecordedValidation {
            instance_id: Some(instance.clone()),
            ..RecordedValidation::new(ValidationStatus::Failed, Some(message), now)
        };
        let req = match self
            .command_request(runner.launcher, runner.staging, id, vid, p)
            .await
        {
            Ok(req) => req,
            Err(message) => {
                self.record_validation(id, vid, launched, failed(message), ours)
                    .await?;
                return Ok(true);
            }
        };
        let rec = match runner.launcher.send_command(&req).await {
            Ok(command) => RecordedValidation {
                command_id: Some(command.clone()),
                instance_id: Some(instance.clone()),
                ..RecordedValidation::new(
                    ValidationStatus::InProgress,
                    Some(format!(
                        "the validation script runs on instance {instance} (command {command})"
                    )),
                    now,
                )
            },
            Err(LaunchError::Transient(e)) => {
                tracing::warn!(app_id = %id, validation_id = %vid, error = %e, "could not send the validation command yet");
                return Ok(true);
            }
            Err(LaunchError::Failed(e) | LaunchError::Unavailable(e)) => failed(format!(
                "the validation script could not be sent to instance {instance}: {e}"
            )),
        };
        self.record_validation(id, vid, launched, rec, ours).await?;
        Ok(true)
    }

    /// The command for validation `vid`, with its script read from staging; the error says
    /// what is wrong with the script.
    async fn command_request(
        &self,
        launcher: &dyn Launcher,
        staging: &dyn Staging,
        id: &str,
        vid: &str,
        p: &SsmValidationParameters,
    ) -> std::result::Result<CommandRequest, String> {
        let source = p.source.clone().unwrap_or_default();
        let object = StagedObject {
            bucket: source.bucket.clone().unwrap_or_default(),
            key: source.key.clone().unwrap_or_default(),
        };
        let script = if launcher.carries_scripts() {
            staging.get_object(&object, MAX_SCRIPT).await.map_err(|e| {
                format!("cannot read the validation script {object}: {e}; put it there (at most 1 MiB) and put the validation configuration again")
            })?
        } else {
            Vec::new()
        };
        let script_type = p.script_type.unwrap_or(ScriptType::ShellScript);
        let script_name = script_name(&object.key);
        let command = match (&p.command, script_type) {
            (Some(c), _) => c.clone(),
            (None, ScriptType::PowershellScript) => format!(".\\{script_name}"),
            (None, _) => format!("sh {script_name}"),
        };
        Ok(CommandRequest {
            instance_id: p.instance_id.clone().unwrap_or_default(),
            script_bucket: object.bucket,
            script_key: object.key,
            script,
            script_name,
            script_type,
            command,
            timeout_seconds: p
                .execution_timeout_seconds
                .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
                .clamp(*TIMEOUT.start(), *TIMEOUT.end()) as u32,
            output_bucket: p.output_s3_bucket_name.clone(),
            output_prefix: format!("{id}/{vid}"),
            comment: format!("Tern validation {vid} of {id}"),
        })
    }

    /// Follows the command recorded for validation `vid`; records its outcome once it ended.
    async fn follow_command(
        &self,
        runner: ValidationRunner<'_>,
        id: &str,
        vid: &str,
        p: &SsmValidationParameters,
        launched: OffsetDateTime,
        rec: &RecordedValidation,
    ) -> Result<bool> {
        let command = rec.command_id.clone().unwrap_or_default();
        let instance = rec.instance_id.clone().unwrap_or_default();
        let timeout = p
            .execution_timeout_seconds
            .unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        let overdue = self.now() - rec.time > time::Duration::seconds(timeout) + GRACE;
        let st = match runner.launcher.command_status(&command, &instance).await {
            Ok(s) => s,
            Err(LaunchError::Transient(e)) if !overdue => {
                tracing::warn!(app_id = %id, validation_id = %vid, error = %e, "cannot read the validation command's status yet");
                return Ok(false);
            }
            Err(
                LaunchError::Transient(e) | LaunchError::Failed(e) | LaunchError::Unavailable(e),
            ) => CommandStatus {
                state: CommandState::Failed {
                    code: None,
                    reason: format!("its status cannot be read: {e}"),
                },
                output: String::new(),
                output_location: None,
            },
        };
        let (status, head) = match &st.state {
            CommandState::InProgress if !overdue => return Ok(false),
            CommandState::InProgress => (
                ValidationStatus::Failed,
                format!("instance {instance} gave no result within {timeout} s (executionTimeoutSeconds) and 10 minutes more; the command {command} may still run there"),
            ),
            CommandState::Succeeded => (
                ValidationStatus::Succeeded,
                "the validation script exited with status 0".to_string(),
            ),
            CommandState::Failed {
                code: Some(code), ..
            } => (
                ValidationStatus::Failed,
                format!("the validation script exited with status {code}"),
            ),
            CommandState::Failed { code: None, reason } => (
                ValidationStatus::Failed,
                format!("the validation script failed: {reason}"),
            ),
            CommandState::TimedOut => (
                ValidationStatus::Failed,
                format!("the validation script did not end within its executionTimeoutSeconds ({timeout} s)"),
            ),
        };
        let key = format!("{id}/{vid}/{command}/{instance}/stdout");
        let output = self.keep_output(runner.staging, p, &key, &st).await;
        let message = with_tail(&head, &st.output);
        let done = RecordedValidation {
            command_id: Some(command.clone()),
            instance_id: Some(instance),
            output,
            ..RecordedValidation::new(status, Some(message), self.now())
        };
        let written = self
            .record_validation(id, vid, launched, done, |stored| {
                stored.ended() || stored.command_id.as_deref() != Some(command.as_str())
            })
            .await?;
        Ok(written.is_some())
    }

    /// Where the command's whole output is: where the launcher wrote it, or `key` in the
    /// validation's output bucket once Tern put it there; none without an output bucket.
    async fn keep_output(
        &self,
        staging: &dyn Staging,
        p: &SsmValidationParameters,
        key: &str,
        st: &CommandStatus,
    ) -> Option<S3Location> {
        if let Some((bucket, key)) = &st.output_location {
            return Some(S3Location::new(bucket, key));
        }
        let bucket = p.output_s3_bucket_name.as_deref()?;
        let object = StagedObject {
            bucket: bucket.to_string(),
            key: key.to_string(),
        };
        match staging
            .put_object(&object, st.output.clone().into_bytes(), "text/plain")
            .await
        {
            Ok(()) => Some(S3Location::new(bucket, key)),
            Err(e) => {
                tracing::warn!(%object, error = %e, "cannot keep the validation command's output");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::super::launching::tests::{
        validation_events, world, FakeLauncher, FakeStaging,
    };
    use super::*;
    use crate::launcher::StackState;
    use crate::ManualClock;

    const VID: &str = "val-00000000000000007";

    /// A launched application (its stack complete) with one SSM validation whose script is
    /// staged; the service's clock is the one answered.
    async fn launched(
        l: &FakeLauncher,
        staging: &FakeStaging,
    ) -> (Service, String, Arc<ManualClock>) {
        let (svc, id) = world().await;
        let clock = Arc::new(ManualClock::new(OffsetDateTime::UNIX_EPOCH));
        let svc = Service {
            clock: clock.clone(),
            ..svc
        };
        staging
            .0
            .lock()
            .unwrap()
            .insert("check.sh".into(), b"#!/bin/sh\ncurl -fs web\n".to_vec());
        svc.put_app_validation_configuration(&id, config("./check.sh"))
            .await
            .unwrap();
        svc.launch_app(l, staging, &id).await.unwrap();
        // Not launched yet: nothing is sent.
        assert!(svc.auto_launch(l, staging).await.is_empty());
        assert!(l.commands.lock().unwrap().is_empty());
        *l.state.lock().unwrap() = Some(StackState::CreateComplete);
        svc.sync_launch(l, &id).await.unwrap();
        (svc, id, clock)
    }

    fn config(command: &str) -> ValidationConfiguration {
        ValidationConfiguration {
            app_validations: vec![AppValidation {
                validation_id: Some(VID.into()),
                name: Some("smoke".into()),
                app_validation_strategy: Some(AppValidationStrategy::Ssm),
                ssm_validation_parameters: Some(SsmValidationParameters {
                    source: Some(S3Location::new("scripts", "check.sh")),
                    instance_id: Some("i-0123456789abcdef0".into()),
                    script_type: Some(ScriptType::ShellScript),
                    command: Some(command.into()),
                    execution_timeout_seconds: Some(600),
                    output_s3_bucket_name: Some("outputs".into()),
                }),
            }],
            ..Default::default()
        }
    }

    async fn output(
        svc: &Service,
        l: &FakeLauncher,
        staging: &FakeStaging,
        id: &str,
    ) -> ValidationOutputView {
        let runner = ValidationRunner {
            launcher: l,
            staging,
        };
        let mut o = svc
            .get_app_validation_output(Some(runner), id)
            .await
            .unwrap();
        o.remove(0)
    }

    #[tokio::test]
    async fn an_ssm_validation_runs_once_per_launch_and_its_outcome_is_kept_and_announced_once() {
        let (l, staging) = (FakeLauncher::default(), FakeStaging::default());
        let (svc, id, clock) = launched(&l, &staging).await;
        // Ticks at once and again send one command, with the staged script.
        let (a, b) = tokio::join!(svc.auto_launch(&l, &staging), svc.auto_launch(&l, &staging));
        assert!(a.is_empty() && b.is_empty());
        svc.auto_launch(&l, &staging).await;
        let sent = l.commands.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].instance_id, "i-0123456789abcdef0");
        assert_eq!(sent[0].script, b"#!/bin/sh\ncurl -fs web\n");
        assert_eq!(sent[0].command, "./check.sh");
        assert_eq!(sent[0].script_name, "check.sh");
        assert_eq!(sent[0].timeout_seconds, 600);
        assert_eq!(sent[0].output_prefix, format!("{id}/{VID}"));
        let o = output(&svc, &l, &staging, &id).await;
        assert_eq!(o.status, ValidationStatus::InProgress);
        assert!(o.status_message.unwrap().contains("cmd-1"));
        assert!(validation_events(&svc).await.is_empty());
        // The script fails: FAILED with its exit status and output, kept in the output bucket.
        clock.advance(std::time::Duration::from_secs(30));
        *l.command_state.lock().unwrap() = Some(CommandState::Failed {
            code: Some(3),
            reason: "exit status 3".into(),
        });
        svc.auto_launch(&l, &staging).await;
        let o = output(&svc, &l, &staging, &id).await;
        assert_eq!(o.status, ValidationStatus::Failed);
        assert_eq!(
            o.status_message.as_deref(),
            Some("the validation script exited with status 3: port 80 answers\nall checks done")
        );
        let key = format!("{id}/{VID}/cmd-1/i-0123456789abcdef0/stdout");
        assert_eq!(o.output, Some(S3Location::new("outputs", &key)));
        assert_eq!(
            staging.0.lock().unwrap()[&key],
            b"port 80 answers\nall checks done\n"
        );
        assert_eq!(validation_events(&svc).await.len(), 1);
        // Ended: later ticks and reads send and announce nothing more.
        *l.command_state.lock().unwrap() = Some(CommandState::Succeeded);
        svc.auto_launch(&l, &staging).await;
        assert_eq!(
            output(&svc, &l, &staging, &id).await.status,
            ValidationStatus::Failed
        );
        assert_eq!(l.commands.lock().unwrap().len(), 1);
        assert_eq!(validation_events(&svc).await.len(), 1);
        // A changed validation runs again at once.
        svc.put_app_validation_configuration(&id, config("sh check.sh --verbose"))
            .await
            .unwrap();
        assert_eq!(
            output(&svc, &l, &staging, &id).await.status,
            ValidationStatus::InProgress
        );
        assert_eq!(l.commands.lock().unwrap().len(), 2);
        svc.auto_launch(&l, &staging).await;
        let o = output(&svc, &l, &staging, &id).await;
        assert_eq!(o.status, ValidationStatus::Succeeded);
        assert_eq!(validation_events(&svc).await.len(), 2);
    }

    #[test]
    fn scripts_are_saved_under_a_safe_name() {
        assert_eq!(script_name("validation/check web.sh"), "check_web.sh");
        assert_eq!(script_name("a/../"), "script");
        assert_eq!(script_name("run.ps1"), "run.ps1");
    }

    #[tokio::test]
    async fn a_refused_or_unreadable_or_silent_validation_fails_saying_why() {
        // The instance is not tagged: the launcher's reason.
        let (l, staging) = (FakeLauncher::default(), FakeStaging::default());
        let (svc, id, _) = launched(&l, &staging).await;
        *l.refuse_commands.lock().unwrap() = Some(LaunchError::Failed(
            "instance i-0123456789abcdef0 does not carry the tag UserForSMSApplicationValidation=true".into(),
        ));
        let o = output(&svc, &l, &staging, &id).await;
        assert_eq!(o.status, ValidationStatus::Failed);
        assert!(o.status_message.unwrap().contains("does not carry the tag"));
        assert_eq!(validation_events(&svc).await.len(), 1);

        // A transient refusal leaves the claim; it is sent once the claim is stale.
        let (l, staging) = (FakeLauncher::default(), FakeStaging::default());
        let (svc, id, clock) = launched(&l, &staging).await;
        *l.refuse_commands.lock().unwrap() = Some(LaunchError::Transient("throttled".into()));
        assert_eq!(
            output(&svc, &l, &staging, &id).await.status,
            ValidationStatus::Pending
        );
        *l.refuse_commands.lock().unwrap() = None;
        svc.auto_launch(&l, &staging).await;
        assert!(l.commands.lock().unwrap().is_empty());
        clock.advance(std::time::Duration::from_secs(121));
        svc.auto_launch(&l, &staging).await;
        assert_eq!(l.commands.lock().unwrap().len(), 1);

        // The script cannot be read: named, and nothing is sent.
        let (l, staging) = (FakeLauncher::default(), FakeStaging::default());
        let (svc, id, _) = launched(&l, &staging).await;
        staging.0.lock().unwrap().clear();
        svc.auto_launch(&l, &staging).await;
        let o = output(&svc, &l, &staging, &id).await;
        assert_eq!(o.status, ValidationStatus::Failed);
        assert!(o
            .status_message
            .unwrap()
            .contains("cannot read the validation script s3://scripts/check.sh"),);
        assert!(l.commands.lock().unwrap().is_empty());

        // A command that never answers fails once its timeout and the grace have passed.
        let (l, staging) = (FakeLauncher::default(), FakeStaging::default());
        let (svc, id, clock) = launched(&l, &staging).await;
        svc.auto_launch(&l, &staging).await;
        clock.advance(std::time::Duration::from_secs(600 + 9 * 60));
        svc.auto_launch(&l, &staging).await;
        assert_eq!(
            output(&svc, &l, &staging, &id).await.status,
            ValidationStatus::InProgress
        );
        clock.advance(std::time::Duration::from_secs(61));
        svc.auto_launch(&l, &staging).await;
        let o = output(&svc, &l, &staging, &id).await;
        assert_eq!(o.status, ValidationStatus::Failed);
        assert!(o
            .status_message
            .unwrap()
            .contains("gave no result within 600 s"));

        // The launcher says it timed out.
        let (l, staging) = (FakeLauncher::default(), FakeStaging::default());
        let (svc, id, _) = launched(&l, &staging).await;
        svc.auto_launch(&l, &staging).await;
        *l.command_state.lock().unwrap() = Some(CommandState::TimedOut);
        let o = output(&svc, &l, &staging, &id).await;
        assert_eq!(o.status, ValidationStatus::Failed);
        assert!(o.status_message.unwrap().starts_with(
            "the validation script did not end within its executionTimeoutSeconds (600 s)"
        ));
    }
}
