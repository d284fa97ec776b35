//! Validation of an application (SMS §2.6): Put/Get/DeleteAppValidationConfiguration,
//! GetAppValidationOutput and NotifyAppValidationOutput.
//!
//! The configuration and the latest outcome of each validation live in the application's item
//! (`APP/<appId>`), written with its version as condition. Each validation has an id (`val-` +
//! 17 hex): a given one is kept (so a client can re-put its configuration and keep its
//! outcomes), an absent one is generated. Replacing the configuration drops the outcomes of the
//! validations it no longer holds.
//!
//! Outcomes come from NotifyAppValidationOutput (the caller's script or agent reports status,
//! message and the time of the report), and for server-level USERDATA validations from the
//! launched instance itself: GenerateTemplate adds each such script to its server's user data
//! between console markers (`TERN-VALIDATION-BEGIN <id>` … `TERN-VALIDATION-END <id>
//! <status>`), and GetAppValidationOutput reads the instance's console through the launcher:
//! PENDING until the script starts, IN_PROGRESS while it runs, SUCCEEDED or FAILED (with the
//! exit status and the end of its output) once it ended — then recorded as a report would be,
//! and announced by one event per launch. A notified outcome newer than the launch wins. Until either a validation is READY_FOR_VALIDATION.
//! A script that has not ended `validation_timeout` after the launch is FAILED.
//!
//! App-level SSM validations run once per launch on the instance they name ([`ssm`]): through
//! the launcher's `send_command` (SSM Run Command in AWS, the local instance's command channel
//! on `tern serve`), followed to its end by GetAppValidationOutput and the scheduler's tick,
//! their output kept in `outputS3BucketName`.

mod console;
mod ssm;

pub use ssm::ValidationRunner;

use super::launch::check_s3_location;
use super::*;

/// SMS `SSMValidationParameters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SsmValidationParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<S3Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_type: Option<ScriptType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_s3_bucket_name: Option<String>,
}

/// SMS `AppValidationConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppValidation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_validation_strategy: Option<AppValidationStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm_validation_parameters: Option<SsmValidationParameters>,
}

/// SMS `UserDataValidationParameters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDataValidationParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<S3Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_type: Option<ScriptType>,
}

/// SMS `ServerValidationConfiguration` (the server by id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerValidation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_validation_strategy: Option<ServerValidationStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_validation_parameters: Option<UserDataValidationParameters>,
}

/// SMS `ServerGroupValidationConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroupValidation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_group_id: Option<String>,
    #[serde(default)]
    pub servers: Vec<ServerValidation>,
}

/// PutAppValidationConfiguration's content, and what the application stores after the checks
/// (then every validation has its id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationConfiguration {
    #[serde(default)]
    pub app_validations: Vec<AppValidation>,
    #[serde(default)]
    pub server_group_validations: Vec<ServerGroupValidation>,
}

/// The latest outcome of one validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedValidation {
    pub status: ValidationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// An app-level validation's command since the launch (SSM's command id), once sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// The instance that command runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Where the command's output was kept (SMS `SSMOutput.s3Location`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<S3Location>,
}

impl RecordedValidation {
    pub fn new(
        status: ValidationStatus,
        status_message: Option<String>,
        time: OffsetDateTime,
    ) -> Self {
        Self {
            status,
            status_message,
            time,
            command_id: None,
            instance_id: None,
            output: None,
        }
    }

    /// SUCCEEDED or FAILED.
    pub fn ended(&self) -> bool {
        matches!(
            self.status,
            ValidationStatus::Succeeded | ValidationStatus::Failed
        )
    }
}

/// SMS `NotificationContext`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotificationContext {
    pub validation_id: Option<String>,
    pub status: Option<ValidationStatus>,
    pub status_message: Option<String>,
}

/// SMS `ValidationOutput`: the app-level ones carry no server, the server-level ones theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationOutputView {
    pub validation_id: String,
    pub name: Option<String>,
    pub status: ValidationStatus,
    pub status_message: Option<String>,
    pub latest_validation_time: Option<OffsetDateTime>,
    pub server: Option<AppServerView>,
    /// An app-level validation's output (SMS `appValidationOutput.ssmOutput.s3Location`).
    pub output: Option<S3Location>,
}

/// The outbox entry announcing a validation's outcome ("Server Migration App State Change",
/// `state-type` validation), under event id `event_id`.
fn validation_change(
    app: &App,
    vid: &str,
    status: ValidationStatus,
    message: Option<String>,
    event_id: String,
    now: OffsetDateTime,
) -> crate::replication::outbox::StateChange {
    crate::replication::outbox::StateChange::App(crate::replication::outbox::AppChange {
        id: event_id,
        detail: crate::events::AppStateChange {
            validation_id: Some(vid.to_string()),
            status_message: message,
            ..crate::events::AppStateChange::new(
                &app.app_id,
                app.name.as_deref(),
                "validation",
                status.as_str(),
            )
        },
        time: now,
    })
}

/// `head`, then as much of the end of a script's `output` as SMS's 2500 characters hold.
fn with_tail(head: &str, output: &str) -> String {
    let room = MAX_STATUS_MESSAGE.saturating_sub(head.chars().count() + 2);
    let chars: Vec<char> = output.trim_end().chars().collect();
    let tail: String = chars[chars.len().saturating_sub(room)..].iter().collect();
    if tail.trim().is_empty() {
        head.to_string()
    } else {
        format!("{head}: {tail}")
    }
}

/// The model's `NonEmptyStringWithMaxLen255`: 1..255 characters, no whitespace.
const MAX_NAME: usize = 255;
/// `Command`: 1..64000 characters.
const MAX_COMMAND: usize = 64_000;
/// `ExecutionTimeoutSeconds`: 60..28800.
const TIMEOUT: std::ops::RangeInclusive<i64> = 60..=28_800;
/// `ValidationStatusMessage`: at most 2500 characters.
const MAX_STATUS_MESSAGE: usize = 2500;

/// `val-` + 17 lowercase hex (the model's `ValidationId`).
pub(super) fn validation_id(at: &str, v: &str) -> Result<()> {
    let ok = v.strip_prefix("val-").is_some_and(|h| {
        h.len() == 17 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{at} {v:?} is not a validation id (val- and 17 lowercase hex digits)"
        )))
    }
}

fn name(at: &str, v: Option<&str>) -> Result<String> {
    let v = v.ok_or_else(|| missing(format!("{at} is required")))?;
    if v.is_empty() {
        return Err(missing(format!("{at} is required")));
    }
    if v.chars().count() > MAX_NAME || v.chars().any(char::is_whitespace) {
        return Err(invalid(format!(
            "{at} {v:?} must be 1 to {MAX_NAME} characters without whitespace"
        )));
    }
    Ok(v.to_string())
}

/// `instanceId`: `i-` + 8 or 17 word characters, or `mi-` + 17.
fn instance_id(at: &str, v: &str) -> Result<()> {
    let word = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let ok = v.strip_prefix("i-").is_some_and(|s| word(s, &[8, 17]))
        || v.strip_prefix("mi-").is_some_and(|s| word(s, &[17]));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{at} {v:?} is not an instance id (i- and 8 or 17 characters, or mi- and 17)"
        )))
    }
}

/// A validation's id: the given one checked, or a new one; unique in the configuration.
fn id_for(
    svc: &Service,
    at: &str,
    given: Option<&str>,
    seen: &mut HashSet<String>,
) -> Result<String> {
    let id = match given.filter(|v| !v.is_empty()) {
        Some(v) => {
            validation_id(at, v)?;
            v.to_string()
        }
        None => svc.ids.new_id(crate::IdKind::Validation),
    };
    if !seen.insert(id.clone()) {
        return Err(invalid(format!("{at} {id} is used twice")));
    }
    Ok(id)
}

fn check_app_validation(
    svc: &Service,
    at: &str,
    v: &AppValidation,
    seen: &mut HashSet<String>,
) -> Result<AppValidation> {
    let id = id_for(
        svc,
        &format!("{at}.validationId"),
        v.validation_id.as_deref(),
        seen,
    )?;
    let name = name(&format!("{at}.name"), v.name.as_deref())?;
    let strategy = v
        .app_validation_strategy
        .ok_or_else(|| missing(format!("{at}.appValidationStrategy is required (SSM)")))?;
    let p = v
        .ssm_validation_parameters
        .as_ref()
        .ok_or_else(|| missing(format!("{at}.ssmValidationParameters is required")))?;
    let pat = format!("{at}.ssmValidationParameters");
    let source = check_s3_location(&format!("{pat}.source.s3Location"), p.source.as_ref())?;
    let instance = p
        .instance_id
        .as_deref()
        .ok_or_else(|| missing(format!("{pat}.instanceId is required")))?;
    instance_id(&format!("{pat}.instanceId"), instance)?;
    let script_type = p
        .script_type
        .ok_or_else(|| missing(format!("{pat}.scriptType is required")))?;
    if let Some(c) = &p.command {
        let n = c.chars().count();
        if n == 0 || n > MAX_COMMAND {
            return Err(invalid(format!(
                "{pat}.command must be 1 to {MAX_COMMAND} characters"
            )));
        }
    }
    if let Some(t) = p.execution_timeout_seconds {
        if !TIMEOUT.contains(&t) {
            return Err(invalid(format!(
                "{pat}.executionTimeoutSeconds {t} must be between 60 and 28800"
            )));
        }
    }
    if let Some(b) = &p.output_s3_bucket_name {
        if b.is_empty() {
            return Err(invalid(format!("{pat}.outputS3BucketName is empty")));
        }
    }
    Ok(AppValidation {
        validation_id: Some(id),
        name: Some(name),
        app_validation_strategy: Some(strategy),
        ssm_validation_parameters: Some(SsmValidationParameters {
            source: Some(source),
            instance_id: Some(instance.to_string()),
            script_type: Some(script_type),
            command: p.command.clone(),
            execution_timeout_seconds: p.execution_timeout_seconds,
            output_s3_bucket_name: p.output_s3_bucket_name.clone(),
        }),
    })
}

fn check_server_validation(
    svc: &Service,
    app: &App,
    group: &AppServerGroup,
    at: &str,
    v: &ServerValidation,
    seen: &mut HashSet<String>,
) -> Result<ServerValidation> {
    let sid = required(
        &format!("{at}.server.serverId"),
        v.server_id.as_deref().unwrap_or_default(),
    )?;
    if !group.servers.iter().any(|s| s.server_id == sid) {
        return Err(invalid(format!(
            "{at}.server.serverId: server {sid} is not in server group {} of application {}",
            group.server_group_id, app.app_id
        )));
    }
    let id = id_for(
        svc,
        &format!("{at}.validationId"),
        v.validation_id.as_deref(),
        seen,
    )?;
    let name = name(&format!("{at}.name"), v.name.as_deref())?;
    let strategy = v.server_validation_strategy.ok_or_else(|| {
        missing(format!(
            "{at}.serverValidationStrategy is required (USERDATA)"
        ))
    })?;
    let p = v
        .user_data_validation_parameters
        .as_ref()
        .ok_or_else(|| missing(format!("{at}.userDataValidationParameters is required")))?;
    let pat = format!("{at}.userDataValidationParameters");
    let source = check_s3_location(&format!("{pat}.source.s3Location"), p.source.as_ref())?;
    let script_type = p
        .script_type
        .ok_or_else(|| missing(format!("{pat}.scriptType is required")))?;
    Ok(ServerValidation {
        server_id: Some(sid.to_string()),
        validation_id: Some(id),
        name: Some(name),
        server_validation_strategy: Some(strategy),
        user_data_validation_parameters: Some(UserDataValidationParameters {
            source: Some(source),
            script_type: Some(script_type),
        }),
    })
}

/// The configuration checked against `app`, every validation with its id.
pub(super) fn check_validation_configuration(
    svc: &Service,
    app: &App,
    req: &ValidationConfiguration,
) -> Result<ValidationConfiguration> {
    let mut seen = HashSet::new();
    let app_validations = req
        .app_validations
        .iter()
        .enumerate()
        .map(|(i, v)| {
            check_app_validation(
                svc,
                &format!("appValidationConfigurations[{i}]"),
                v,
                &mut seen,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut groups_seen = HashSet::new();
    let mut groups = Vec::with_capacity(req.server_group_validations.len());
    for (i, g) in req.server_group_validations.iter().enumerate() {
        let at = format!("serverGroupValidationConfigurations[{i}]");
        let member = format!("{at}.serverGroupId");
        let gid = required(&member, g.server_group_id.as_deref().unwrap_or_default())?;
        let group = app
            .server_groups
            .iter()
            .find(|x| x.server_group_id == gid)
            .ok_or_else(|| {
                invalid(format!(
                    "{member}: {gid} is not a server group of application {}",
                    app.app_id
                ))
            })?;
        if !groups_seen.insert(gid.to_string()) {
            return Err(invalid(format!(
                "{member}: group {gid} is configured twice"
            )));
        }
        let servers = g
            .servers
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let at = format!("{at}.serverValidationConfigurations[{j}]");
                check_server_validation(svc, app, group, &at, v, &mut seen)
            })
            .collect::<Result<Vec<_>>>()?;
        groups.push(ServerGroupValidation {
            server_group_id: Some(gid.to_string()),
            servers,
        });
    }
    Ok(ValidationConfiguration {
        app_validations,
        server_group_validations: groups,
    })
}

impl ValidationConfiguration {
    /// Every validation id of the configuration.
    fn ids(&self) -> impl Iterator<Item = &str> {
        self.app_validations
            .iter()
            .filter_map(|v| v.validation_id.as_deref())
            .chain(self.server_validations().map(|(vid, _, _)| vid))
    }

    /// Each validation's definition by id, to tell a changed one.
    fn definitions(&self) -> HashMap<&str, String> {
        // Both serialize from plain data; a failure would only make it read as changed.
        fn text(v: &impl Serialize) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        self.app_validations
            .iter()
            .filter_map(|v| Some((v.validation_id.as_deref()?, text(v))))
            .chain(self.server_validations().map(|(vid, _, v)| (vid, text(v))))
            .collect()
    }

    /// The server-level validations that name their id and server: (validation id, server
    /// id, the validation).
    pub(super) fn server_validations(
        &self,
    ) -> impl Iterator<Item = (&str, &str, &ServerValidation)> {
        self.server_group_validations
            .iter()
            .flat_map(|g| g.servers.iter())
            .filter_map(|v| Some((v.validation_id.as_deref()?, v.server_id.as_deref()?, v)))
    }
}

impl Service {
    /// PutAppValidationConfiguration: replaces the stored configuration; outcomes of
    /// validations it no longer holds are dropped.
    #[tracing::instrument(name = "put_app_validation_configuration", skip(self, req))]
    pub async fn put_app_validation_configuration(
        &self,
        id: &str,
        req: ValidationConfiguration,
    ) -> Result<()> {
        let id = app_id("appId", id)?;
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            let config = check_validation_configuration(self, &app, &req)?;
            // An outcome stays only while its validation stays as it was: a changed one runs
            // again (an SSM one at once on a launched application).
            let before = app
                .validation_configuration
                .as_ref()
                .map(ValidationConfiguration::definitions)
                .unwrap_or_default();
            let after = config.definitions();
            app.validation_outputs.retain(|v, _| {
                after
                    .get(v.as_str())
                    .is_some_and(|d| before.get(v.as_str()) == Some(d))
            });
            app.validation_configuration = Some(config);
            app.last_modified = self.now();
            self.store
                .write(put(keys::app(&id), &app, stored.expect())?)
                .await?;
            Ok(())
        })
    }

    /// GetAppValidationConfiguration: the stored configuration, server-level entries only for
    /// servers the application still holds.
    pub async fn get_app_validation_configuration(
        &self,
        id: &str,
    ) -> Result<(ValidationConfiguration, Vec<Vec<AppServerView>>)> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        let mut config = app.validation_configuration.clone().unwrap_or_default();
        let jobs = self.app_jobs(&app).await?;
        let mut views = Vec::new();
        for g in &mut config.server_group_validations {
            g.servers
                .retain(|v| v.server_id.as_deref().is_some_and(|s| app.has_server(s)));
            views.push(
                g.servers
                    .iter()
                    .filter_map(|v| {
                        let sid = v.server_id.as_deref()?;
                        let s = app.servers().find(|s| s.server_id == sid)?;
                        Some(Self::server_view(&app, s, &jobs))
                    })
                    .collect(),
            );
        }
        Ok((config, views))
    }

    /// DeleteAppValidationConfiguration: removes the configuration and its outcomes.
    pub async fn delete_app_validation_configuration(&self, id: &str) -> Result<()> {
        let id = app_id("appId", id)?;
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            if app.validation_configuration.take().is_none() && app.validation_outputs.is_empty() {
                return Ok(());
            }
            app.validation_outputs.clear();
            app.last_modified = self.now();
            self.store
                .write(put(keys::app(&id), &app, stored.expect())?)
                .await?;
            Ok(())
        })
    }

    /// GetAppValidationOutput: one output per configured validation, app-level first. With a
    /// runner (the host's launcher and staging), a launched application's validations move
    /// first: its USERDATA ones are read from their instances' consoles, its SSM ones sent or
    /// followed (see the module docs).
    pub async fn get_app_validation_output(
        &self,
        runner: Option<ValidationRunner<'_>>,
        id: &str,
    ) -> Result<Vec<ValidationOutputView>> {
        let id = app_id("appId", id)?;
        let mut app = self.app(&id).await?.value;
        let Some(config) = app.validation_configuration.clone() else {
            return Ok(Vec::new());
        };
        let mut from_consoles = HashMap::new();
        if let Some(r) = runner {
            from_consoles = self
                .validations_on_consoles(r.launcher, &app, &config)
                .await;
            // An outcome that ended is recorded and announced (once per launch).
            let mut recorded = false;
            for (vid, seen) in &from_consoles {
                if seen.ended() {
                    let launched = seen.time;
                    recorded |= self
                        .record_validation(&id, vid, launched, seen.clone(), |stored| {
                            stored.time >= launched
                        })
                        .await?
                        .is_some();
                }
            }
            recorded |= self.run_app_validations(r, &app).await?;
            if recorded {
                app = self.app(&id).await?.value;
            }
        }
        let Some(config) = &app.validation_configuration else {
            return Ok(Vec::new());
        };
        let jobs = self.app_jobs(&app).await?;
        let output = |vid: &str, name: &Option<String>, server: Option<AppServerView>| {
            let notified = app.validation_outputs.get(vid);
            let seen = from_consoles.get(vid);
            // The later of a notified outcome and what the console shows.
            let rec = match (notified, seen) {
                (Some(n), Some(s)) if n.time >= s.time => Some(n),
                (_, Some(s)) => Some(s),
                (n, None) => n,
            };
            ValidationOutputView {
                validation_id: vid.to_string(),
                name: name.clone(),
                status: rec.map_or(ValidationStatus::ReadyForValidation, |r| r.status),
                status_message: rec.and_then(|r| r.status_message.clone()),
                latest_validation_time: rec.map(|r| r.time),
                server,
                output: rec.and_then(|r| r.output.clone()),
            }
        };
        let mut out = Vec::new();
        for v in &config.app_validations {
            if let Some(vid) = &v.validation_id {
                out.push(output(vid, &v.name, None));
            }
        }
        for (vid, sid, v) in config.server_validations() {
            let Some(s) = app.servers().find(|s| s.server_id == sid) else {
                continue;
            };
            out.push(output(
                vid,
                &v.name,
                Some(Self::server_view(&app, s, &jobs)),
            ));
        }
        Ok(out)
    }

    /// Writes `rec` as validation `vid`'s record of the launch at `launched`, unless `keep`
    /// holds of the record stored (then it stays and this answers `None`); answers the time
    /// the record was written with. A record that ended is announced with it: one event per
    /// validation, status and launch.
    pub(super) async fn record_validation(
        &self,
        id: &str,
        vid: &str,
        launched: OffsetDateTime,
        rec: RecordedValidation,
        keep: impl Fn(&RecordedValidation) -> bool,
    ) -> Result<Option<OffsetDateTime>> {
        retrying!(self, id, async {
            let stored = self.app(id).await?;
            if stored.value.validation_outputs.get(vid).is_some_and(&keep) {
                return Ok(None);
            }
            let mut app = stored.value.clone();
            let now = self.now();
            let rec = RecordedValidation {
                time: now,
                ..rec.clone()
            };
            app.validation_outputs.insert(vid.to_string(), rec.clone());
            app.last_modified = now;
            let mut writes = vec![put(keys::app(id), &app, stored.expect())?];
            if rec.ended() {
                let change = validation_change(
                    &app,
                    vid,
                    rec.status,
                    rec.status_message.clone(),
                    format!(
                        "{id}.validation.{vid}.{}.launch.{}",
                        rec.status,
                        launched.unix_timestamp_nanos()
                    ),
                    now,
                );
                writes.push(change.write()?);
            }
            self.store.transact(writes).await?;
            Ok(Some(now))
        })
    }

    /// NotifyAppValidationOutput: records the reported status and message of one of the
    /// application's validations, with the time of the report.
    #[tracing::instrument(name = "notify_app_validation_output", skip(self, ctx))]
    pub async fn notify_app_validation_output(
        &self,
        id: &str,
        ctx: Option<NotificationContext>,
    ) -> Result<()> {
        let id = app_id("appId", id)?;
        let ctx = ctx.ok_or_else(|| missing("notificationContext is required"))?;
        let vid = required(
            "notificationContext.validationId",
            ctx.validation_id.as_deref().unwrap_or_default(),
        )?;
        validation_id("notificationContext.validationId", vid)?;
        let status = ctx
            .status
            .ok_or_else(|| missing("notificationContext.status is required"))?;
        if let Some(m) = &ctx.status_message {
            if m.chars().count() > MAX_STATUS_MESSAGE {
                return Err(invalid(format!(
                    "notificationContext.statusMessage is longer than {MAX_STATUS_MESSAGE} characters"
                )));
            }
        }
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            let known = app
                .validation_configuration
                .as_ref()
                .is_some_and(|c| c.ids().any(|v| v == vid));
            if !known {
                return Err(invalid(format!(
                    "notificationContext.validationId: {vid} is not a validation of application {id}"
                )));
            }
            app.validation_outputs.insert(
                vid.to_string(),
                RecordedValidation::new(status, ctx.status_message.clone(), self.now()),
            );
            app.last_modified = self.now();
            let now = self.now();
            // One event per report: the report's time is in the id.
            let change = validation_change(
                &app,
                vid,
                status,
                ctx.status_message.clone(),
                format!(
                    "{id}.validation.{vid}.{status}.{}",
                    now.unix_timestamp_nanos()
                ),
                now,
            );
            self.store
                .transact(vec![
                    put(keys::app(&id), &app, stored.expect())?,
                    change.write()?,
                ])
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::app;
    use super::*;
    use crate::{Config, ManualClock, MemoryStore, RandomIds};
    use std::sync::Arc;

    fn svc() -> Service {
        Service::new(
            Arc::new(MemoryStore::new()),
            Arc::new(ManualClock::new(OffsetDateTime::UNIX_EPOCH)),
            Arc::new(RandomIds),
            Config::default(),
        )
    }

    fn ssm() -> AppValidation {
        AppValidation {
            validation_id: None,
            name: Some("smoke".into()),
            app_validation_strategy: Some(AppValidationStrategy::Ssm),
            ssm_validation_parameters: Some(SsmValidationParameters {
                source: Some(S3Location::new("sms-app-scripts", "check.sh")),
                instance_id: Some("i-0123456789abcdef0".into()),
                script_type: Some(ScriptType::ShellScript),
                command: Some("bash check.sh".into()),
                execution_timeout_seconds: Some(900),
                output_s3_bucket_name: Some("sms-app-output".into()),
            }),
        }
    }

    fn userdata(server: &str) -> ServerValidation {
        ServerValidation {
            server_id: Some(server.into()),
            validation_id: None,
            name: Some("boot".into()),
            server_validation_strategy: Some(ServerValidationStrategy::Userdata),
            user_data_validation_parameters: Some(UserDataValidationParameters {
                source: Some(S3Location::new("sms-app-scripts", "boot.sh")),
                script_type: Some(ScriptType::ShellScript),
            }),
        }
    }

    fn config(a: Vec<AppValidation>, s: Vec<ServerValidation>) -> ValidationConfiguration {
        ValidationConfiguration {
            app_validations: a,
            server_group_validations: vec![ServerGroupValidation {
                server_group_id: Some("sg-1".into()),
                servers: s,
            }],
        }
    }

    fn check(c: ValidationConfiguration) -> Result<ValidationConfiguration> {
        check_validation_configuration(&svc(), &app(&[]), &c)
    }

    #[test]
    fn ids_are_generated_or_kept() {
        let mut kept = ssm();
        kept.validation_id = Some("val-0123456789abcdef0".into());
        let c = check(config(vec![kept, ssm()], vec![userdata("s-a")])).unwrap();
        assert_eq!(
            c.app_validations[0].validation_id.as_deref(),
            Some("val-0123456789abcdef0")
        );
        for id in c.ids() {
            validation_id("id", id).unwrap();
        }
        assert_eq!(c.ids().collect::<HashSet<_>>().len(), 3);
    }

    #[test]
    fn every_constraint_is_refused_naming_the_member() {
        type Edit = Box<dyn Fn(&mut AppValidation)>;
        let params = |f: fn(&mut SsmValidationParameters)| -> Edit {
            Box::new(move |v: &mut AppValidation| f(v.ssm_validation_parameters.as_mut().unwrap()))
        };
        let cases: Vec<(bool, &str, Edit)> = vec![
            (
                false,
                "validationId",
                Box::new(|v| v.validation_id = Some("val-123".into())),
            ),
            (true, "name", Box::new(|v| v.name = None)),
            (
                false,
                "name",
                Box::new(|v| v.name = Some("two words".into())),
            ),
            (false, "name", Box::new(|v| v.name = Some("n".repeat(256)))),
            (
                true,
                "appValidationStrategy",
                Box::new(|v| v.app_validation_strategy = None),
            ),
            (
                true,
                "ssmValidationParameters",
                Box::new(|v| v.ssm_validation_parameters = None),
            ),
            (true, "source.s3Location", params(|p| p.source = None)),
            (
                false,
                "source.s3Location.bucket",
                params(|p| p.source = Some(S3Location::new("b".repeat(64), "k"))),
            ),
            (true, "instanceId", params(|p| p.instance_id = None)),
            (
                false,
                "instanceId",
                params(|p| p.instance_id = Some("i-123".into())),
            ),
            (
                false,
                "instanceId",
                params(|p| p.instance_id = Some("mi-0123abcd".into())),
            ),
            (true, "scriptType", params(|p| p.script_type = None)),
            (
                false,
                "command",
                params(|p| p.command = Some(String::new())),
            ),
            (
                false,
                "command",
                params(|p| p.command = Some("x".repeat(64_001))),
            ),
            (
                false,
                "executionTimeoutSeconds",
                params(|p| p.execution_timeout_seconds = Some(59)),
            ),
            (
                false,
                "executionTimeoutSeconds",
                params(|p| p.execution_timeout_seconds = Some(28_801)),
            ),
        ];
        for (want_missing, member, edit) in cases {
            let mut v = ssm();
            edit(&mut v);
            let e = check(config(vec![v], vec![])).unwrap_err();
            let is_missing = matches!(e, DomainError::MissingParameter(_));
            let m = e.to_string();
            assert_eq!(is_missing, want_missing, "{member}: {m}");
            assert!(
                m.contains("appValidationConfigurations[0]") && m.contains(member),
                "{member}: {m}"
            );
        }
        // Accepted limits.
        let mut v = ssm();
        v.ssm_validation_parameters
            .as_mut()
            .unwrap()
            .execution_timeout_seconds = Some(60);
        v.ssm_validation_parameters.as_mut().unwrap().instance_id =
            Some("mi-0123456789abcdef0".into());
        check(config(vec![v], vec![])).unwrap();

        // Server-level.
        let at = "serverGroupValidationConfigurations[0].serverValidationConfigurations[0]";
        let e = check(config(vec![], vec![userdata("s-zz")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(at) && e.contains("s-zz"), "{e}");
        let mut u = userdata("s-a");
        u.server_validation_strategy = None;
        let e = check(config(vec![], vec![u])).unwrap_err();
        assert!(
            matches!(e, DomainError::MissingParameter(ref m) if m.contains("serverValidationStrategy")),
            "{e}"
        );
        let mut u = userdata("s-a");
        u.user_data_validation_parameters
            .as_mut()
            .unwrap()
            .script_type = None;
        let e = check(config(vec![], vec![u])).unwrap_err().to_string();
        assert!(e.contains("userDataValidationParameters.scriptType"), "{e}");
        let mut c = config(vec![], vec![]);
        c.server_group_validations[0].server_group_id = Some("sg-9".into());
        let e = check(c).unwrap_err().to_string();
        assert!(
            e.contains("serverGroupValidationConfigurations[0].serverGroupId"),
            "{e}"
        );
        // One id twice.
        let mut a = ssm();
        a.validation_id = Some("val-0123456789abcdef0".into());
        let mut u = userdata("s-a");
        u.validation_id = a.validation_id.clone();
        let e = check(config(vec![a], vec![u])).unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");
    }
}
