//! LaunchApp and TerminateApp through the [`Launcher`] port.
//!
//! LaunchApp builds the template GenerateTemplate would write (so every refusal of
//! GenerateTemplate — no AMI yet, an unreadable user-data object — refuses the launch too),
//! asks the launcher whether this host can launch at all, and only then records the launch
//! (LAUNCH_PENDING, conditional on the application's version, so of two concurrent LaunchApp
//! one wins) and creates the stack `sms-app-<17 hex of the app id>`. From then on
//! `launchStatus` follows the stack ([`Service::sync_launch`]):
//!
//! | stack | launchStatus |
//! |---|---|
//! | create in progress | LAUNCH_IN_PROGRESS |
//! | create complete | LAUNCHED |
//! | create failed | LAUNCH_FAILED (with the launcher's message) |
//! | delete in progress | TERMINATE_IN_PROGRESS |
//! | delete complete | TERMINATED |
//! | delete failed | TERMINATE_FAILED |
//!
//! The launch records the AMI each server was launched from, which GenerateChangeSet compares
//! with the newest ones.

use super::*;
use crate::events::AppStateChange;
use crate::launcher::{LaunchError, Launcher, StackState};
use crate::replication::outbox::{AppChange, StateChange};
use crate::staging::Staging;

/// The outbox entry announcing that `launch` reached its status ("Server Migration App State
/// Change", `state-type` launch). One per status per launch: the launch's time is in the id.
fn launch_change(app: &App, launch: &AppLaunch, now: OffsetDateTime) -> StateChange {
    let launched = launch
        .latest_launch_time
        .map_or(0, OffsetDateTime::unix_timestamp);
    StateChange::App(AppChange {
        id: format!("{}.launch.{launched}.{}", app.app_id, launch.status),
        detail: AppStateChange {
            stack_id: launch.stack_id.clone(),
            status_message: launch.message.clone(),
            ..AppStateChange::new(
                &app.app_id,
                app.name.as_deref(),
                "launch",
                launch.status.as_str(),
            )
        },
        time: now,
    })
}

fn refused(e: LaunchError) -> DomainError {
    not_permitted(e.to_string())
}

impl Service {
    /// Changes the application's launch record in one conditional write.
    async fn set_launch(&self, id: &str, f: impl Fn(&mut AppLaunch)) -> Result<Option<AppLaunch>> {
        retrying!(self, id, async {
            let stored = self.app(id).await?;
            let mut app = stored.value.clone();
            let Some(launch) = app.launch.as_mut() else {
                return Ok(None);
            };
            let before = launch.clone();
            f(launch);
            if *launch == before {
                return Ok(Some(before));
            }
            let after = launch.clone();
            app.last_modified = self.now();
            let mut writes = vec![put(keys::app(id), &app, stored.expect())?];
            if after.status != before.status {
                writes.push(launch_change(&app, &after, self.now()).write()?);
            }
            self.store.transact(writes).await?;
            Ok(Some(after))
        })
    }

    /// LaunchApp (see the module comment).
    #[tracing::instrument(name = "launch_app", skip(self, launcher, staging))]
    pub async fn launch_app(
        &self,
        launcher: &dyn Launcher,
        staging: &dyn Staging,
        id: &str,
    ) -> Result<()> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        let role = match &app.launch_configuration {
            Some(c) => c.role_name.clone(),
            None => {
                return Err(not_permitted(format!(
                    "application {id} has no launch configuration; PutAppLaunchConfiguration first"
                )))
            }
        };
        if let Some(l) = app.launch.as_ref().filter(|l| l.is_live()) {
            return Err(not_permitted(format!(
                "application {id} is already launched (launchStatus {}); TerminateApp first",
                l.status
            )));
        }
        let jobs = self.app_jobs(&app).await?;
        let planned = self.plan(&app, &jobs).await?;
        let template = self.template(staging, &app, &planned).await?;
        launcher.check().await.map_err(refused)?;
        let stack_name = format!("sms-app-{}", id.trim_start_matches("app-"));
        let images: BTreeMap<String, String> = planned
            .iter()
            .map(|p| (p.server.server_id.clone(), p.image.clone()))
            .collect();
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            if let Some(l) = app.launch.as_ref().filter(|l| l.is_live()) {
                return Err(not_permitted(format!(
                    "application {id} is already launched (launchStatus {}); TerminateApp first",
                    l.status
                )));
            }
            let launch = AppLaunch {
                status: AppLaunchStatus::LaunchPending,
                message: None,
                stack_name: Some(stack_name.clone()),
                stack_id: None,
                latest_launch_time: Some(self.now()),
                images: images.clone(),
            };
            let change = launch_change(&app, &launch, self.now());
            app.launch = Some(launch);
            app.last_modified = self.now();
            self.store
                .transact(vec![
                    put(keys::app(&id), &app, stored.expect())?,
                    change.write()?,
                ])
                .await?;
            Ok(())
        })?;
        match launcher
            .create_stack(&stack_name, &template, role.as_deref())
            .await
        {
            Ok(stack_id) => {
                self.set_launch(&id, |l| {
                    l.stack_id = Some(stack_id.clone());
                    l.status = AppLaunchStatus::LaunchInProgress;
                })
                .await?;
                tracing::info!(app_id = %id, stack = %stack_name, "application launching");
                self.sync_launch(launcher, &id).await
            }
            Err(e) => {
                let message = format!("the stack {stack_name} could not be created: {e}; fix the cause and LaunchApp again");
                self.set_launch(&id, |l| {
                    l.status = AppLaunchStatus::LaunchFailed;
                    l.message = Some(message.clone());
                })
                .await?;
                Err(not_permitted(message))
            }
        }
    }

    /// Brings `launchStatus` up to the stack's state.
    pub async fn sync_launch(&self, launcher: &dyn Launcher, id: &str) -> Result<()> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        let Some(stack) = app.launch.as_ref().and_then(|l| l.stack_id.clone()) else {
            return Ok(());
        };
        let state = launcher.stack_state(&stack).await.map_err(refused)?;
        let (status, message) = match state {
            StackState::CreateInProgress => (AppLaunchStatus::LaunchInProgress, None),
            StackState::CreateComplete => (AppLaunchStatus::Launched, None),
            StackState::CreateFailed(m) => (
                AppLaunchStatus::LaunchFailed,
                Some(format!(
                    "the stack failed: {m}; TerminateApp, fix the cause and LaunchApp again"
                )),
            ),
            StackState::DeleteInProgress => (AppLaunchStatus::TerminateInProgress, None),
            StackState::DeleteComplete => (AppLaunchStatus::Terminated, None),
            StackState::DeleteFailed(m) => (
                AppLaunchStatus::TerminateFailed,
                Some(format!(
                    "the stack could not be deleted: {m}; TerminateApp again"
                )),
            ),
        };
        self.set_launch(&id, |l| {
            l.status = status;
            l.message = message.clone();
        })
        .await?;
        Ok(())
    }

    /// TerminateApp: deletes the launched stack.
    #[tracing::instrument(name = "terminate_app", skip(self, launcher))]
    pub async fn terminate_app(&self, launcher: &dyn Launcher, id: &str) -> Result<()> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        let Some(launch) = app.launch.as_ref().filter(|l| l.is_live()) else {
            return Err(not_permitted(format!(
                "application {id} has not been launched; there is nothing to terminate"
            )));
        };
        let Some(stack) = launch.stack_id.clone() else {
            return Err(not_permitted(format!(
                "application {id} is still starting its launch (LAUNCH_PENDING); try again shortly"
            )));
        };
        self.set_launch(&id, |l| {
            l.status = AppLaunchStatus::TerminateInProgress;
            l.message = None;
        })
        .await?;
        if let Err(e) = launcher.delete_stack(&stack).await {
            let message =
                format!("the stack {stack} could not be deleted: {e}; TerminateApp again");
            self.set_launch(&id, |l| {
                l.status = AppLaunchStatus::TerminateFailed;
                l.message = Some(message.clone());
            })
            .await?;
            return Err(not_permitted(message));
        }
        self.sync_launch(launcher, &id).await
    }
}

impl AppLaunchStatus {
    /// A status that moves on by itself as the stack does (LAUNCH_IN_PROGRESS,
    /// TERMINATE_IN_PROGRESS): whoever shows or drives the application asks the stack.
    pub fn follows_stack(self) -> bool {
        matches!(
            self,
            AppLaunchStatus::LaunchInProgress | AppLaunchStatus::TerminateInProgress
        )
    }
}

impl Service {
    /// autoLaunch, and the launches in progress followed to their stacks: launches every
    /// application whose launch configuration asks for it, once all its servers have
    /// replicated (replicationStatus REPLICATED) and it was never launched; a terminated
    /// application is not launched again by itself. Run by the scheduler's tick; answers the
    /// ids it launched. Two ticks at once launch an application
    /// once (LaunchApp's conditional write), and a launch refused before anything is recorded
    /// (e.g. an unreadable user-data object) is logged and tried again next tick.
    pub async fn auto_launch(&self, launcher: &dyn Launcher, staging: &dyn Staging) -> Vec<String> {
        let apps = match self.list_all::<App>(keys::APP).await {
            Ok(apps) => apps,
            Err(e) => {
                tracing::warn!(error = %e, "autoLaunch could not list the applications");
                return vec![];
            }
        };
        let mut launched = Vec::new();
        for stored in apps {
            let app = &stored.value;
            let asked = app
                .launch_configuration
                .as_ref()
                .is_some_and(|c| c.auto_launch);
            if let Some(l) = &app.launch {
                // A launch moving on its own (the stack) is followed here too, so its status
                // moves without anyone reading the application.
                if l.status.follows_stack() {
                    if let Err(e) = self.sync_launch(launcher, &app.app_id).await {
                        tracing::warn!(app_id = %app.app_id, error = %e, "cannot follow the launch's stack");
                    }
                }
                // So are its validations, until each ended: SSM ones are sent and followed,
                // outcomes recorded and announced without anyone asking for them.
                if l.status == AppLaunchStatus::Launched && awaits_validation(app, l) {
                    let runner = ValidationRunner { launcher, staging };
                    if let Err(e) = self
                        .get_app_validation_output(Some(runner), &app.app_id)
                        .await
                    {
                        tracing::warn!(app_id = %app.app_id, error = %e, "cannot follow the application's validations");
                    }
                }
                continue;
            }
            if !asked {
                continue;
            }
            let ready = match self.details(app).await {
                Ok(d) => d.summary.replication_status == AppReplicationStatus::Replicated,
                Err(e) => {
                    tracing::warn!(app_id = %app.app_id, error = %e, "autoLaunch could not read the application");
                    false
                }
            };
            if !ready {
                continue;
            }
            match self.launch_app(launcher, staging, &app.app_id).await {
                Ok(()) => {
                    tracing::info!(app_id = %app.app_id, "autoLaunch launched the replicated application");
                    launched.push(app.app_id.clone());
                }
                Err(e) => {
                    tracing::warn!(app_id = %app.app_id, error = %e, "autoLaunch could not launch the application")
                }
            }
        }
        launched
    }
}

/// Whether a launched application has a validation (SSM, or USERDATA) with no outcome since
/// `launch`.
fn awaits_validation(app: &App, launch: &AppLaunch) -> bool {
    let Some(config) = &app.validation_configuration else {
        return false;
    };
    let open = |vid: &str| {
        !app.validation_outputs
            .get(vid)
            .is_some_and(|r| r.ended() && launch.latest_launch_time.is_none_or(|t| r.time >= t))
    };
    config
        .app_validations
        .iter()
        .filter_map(|v| v.validation_id.as_deref())
        .any(open)
        || config.server_validations().any(|(vid, _, v)| {
            v.server_validation_strategy == Some(ServerValidationStrategy::Userdata) && open(vid)
        })
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;

    use super::super::tests::{app, job};
    use super::*;
    use crate::images::StagedObject;
    use crate::staging::StagingError;
    use crate::{Config, ManualClock, MemoryStore, RandomIds};

    /// A launcher whose stack state the test sets.
    #[derive(Default)]
    pub(crate) struct FakeLauncher {
        pub unavailable: Option<String>,
        pub fail_create: Option<String>,
        pub state: Mutex<Option<StackState>>,
        pub templates: Mutex<Vec<Value>>,
        /// Every instance's console, once set.
        pub console: Mutex<Option<String>>,
        /// The commands sent, in order.
        pub commands: Mutex<Vec<crate::launcher::CommandRequest>>,
        /// Why a command is refused, if it is.
        pub refuse_commands: Mutex<Option<LaunchError>>,
        /// Every command's status (running until set).
        pub command_state: Mutex<Option<crate::launcher::CommandState>>,
    }

    #[async_trait]
    impl Launcher for FakeLauncher {
        async fn check(&self) -> std::result::Result<(), LaunchError> {
            match &self.unavailable {
                Some(m) => Err(LaunchError::Unavailable(m.clone())),
                None => Ok(()),
            }
        }
        async fn create_stack(
            &self,
            name: &str,
            template: &Value,
            _role: Option<&str>,
        ) -> std::result::Result<String, LaunchError> {
            if let Some(m) = &self.fail_create {
                return Err(LaunchError::Failed(m.clone()));
            }
            self.templates.lock().unwrap().push(template.clone());
            *self.state.lock().unwrap() = Some(StackState::CreateInProgress);
            Ok(format!("stack/{name}"))
        }
        async fn stack_state(&self, _id: &str) -> std::result::Result<StackState, LaunchError> {
            Ok(self.state.lock().unwrap().clone().unwrap())
        }
        async fn delete_stack(&self, _id: &str) -> std::result::Result<(), LaunchError> {
            *self.state.lock().unwrap() = Some(StackState::DeleteComplete);
            Ok(())
        }
        async fn console_output(
            &self,
            _stack: &str,
            _logical_id: &str,
        ) -> std::result::Result<Option<String>, LaunchError> {
            Ok(self.console.lock().unwrap().clone())
        }
        async fn send_command(
            &self,
            req: &crate::launcher::CommandRequest,
        ) -> std::result::Result<String, LaunchError> {
            if let Some(e) = self.refuse_commands.lock().unwrap().clone() {
                return Err(e);
            }
            let mut sent = self.commands.lock().unwrap();
            sent.push(req.clone());
            Ok(format!("cmd-{}", sent.len()))
        }
        async fn command_status(
            &self,
            _command: &str,
            _instance: &str,
        ) -> std::result::Result<crate::launcher::CommandStatus, LaunchError> {
            let state = self.command_state.lock().unwrap().clone();
            Ok(crate::launcher::CommandStatus {
                state: state.unwrap_or(crate::launcher::CommandState::InProgress),
                output: "port 80 answers\nall checks done\n".into(),
                output_location: None,
            })
        }
    }

    /// Staging that holds what is put (no user data is configured here).
    #[derive(Default)]
    pub(crate) struct FakeStaging(pub Mutex<BTreeMap<String, Vec<u8>>>);

    #[async_trait]
    impl Staging for FakeStaging {
        async fn get_object(
            &self,
            o: &StagedObject,
            _max: u64,
        ) -> std::result::Result<Vec<u8>, StagingError> {
            self.0
                .lock()
                .unwrap()
                .get(&o.key)
                .cloned()
                .ok_or_else(|| StagingError::NotFound(o.key.clone()))
        }
        async fn object_size(
            &self,
            _o: &StagedObject,
        ) -> std::result::Result<Option<u64>, StagingError> {
            Ok(None)
        }
        async fn delete_prefix(
            &self,
            _b: &str,
            _p: &str,
        ) -> std::result::Result<u64, StagingError> {
            Ok(0)
        }
        async fn put_object(
            &self,
            o: &StagedObject,
            body: Vec<u8>,
            _t: &str,
        ) -> std::result::Result<(), StagingError> {
            self.0.lock().unwrap().insert(o.key.clone(), body);
            Ok(())
        }
    }

    /// A service holding application `app-00000000000000001` (servers s-a, s-b, each with an
    /// AMI from its job) with a launch configuration.
    pub(crate) async fn world() -> (Service, String) {
        let svc = Service::new(
            Arc::new(MemoryStore::new()),
            Arc::new(ManualClock::new(OffsetDateTime::UNIX_EPOCH)),
            Arc::new(RandomIds),
            Config::default(),
        );
        let mut a = app(&[("s-a", "j-a"), ("s-b", "j-b")]);
        a.launch_configuration = Some(LaunchConfiguration {
            role_name: Some("launcher".into()),
            ..Default::default()
        });
        for j in ["j-a", "j-b"] {
            let w = put(keys::job(j), &job(j, "ACTIVE", true, false), Expect::Absent).unwrap();
            svc.store.write(w).await.unwrap();
        }
        let id = a.app_id.clone();
        svc.store
            .write(put(keys::app(&id), &a, Expect::Absent).unwrap())
            .await
            .unwrap();
        (svc, id)
    }

    /// Configures a USERDATA validation `vid` of server `server` (group sg-1) running the
    /// script `body`, staged in `staging` under `key`.
    pub(crate) async fn with_userdata_validation(
        svc: &Service,
        id: &str,
        staging: &FakeStaging,
        (vid, name, server): (&str, &str, &str),
        (key, body): (&str, &str),
    ) {
        let mut a = svc.app(id).await.unwrap();
        a.value.validation_configuration = Some(ValidationConfiguration {
            server_group_validations: vec![ServerGroupValidation {
                server_group_id: Some(a.value.server_groups[0].server_group_id.clone()),
                servers: vec![ServerValidation {
                    server_id: Some(server.into()),
                    validation_id: Some(vid.into()),
                    name: Some(name.into()),
                    server_validation_strategy: Some(ServerValidationStrategy::Userdata),
                    user_data_validation_parameters: Some(UserDataValidationParameters {
                        source: Some(S3Location::new("b", key)),
                        script_type: Some(ScriptType::ShellScript),
                    }),
                }],
            }],
            ..Default::default()
        });
        let w = put(keys::app(id), &a.value, a.expect()).unwrap();
        svc.store.write(w).await.unwrap();
        staging
            .0
            .lock()
            .unwrap()
            .insert(key.into(), body.as_bytes().to_vec());
    }

    /// The validation outcomes announced so far (their outbox keys).
    pub(crate) async fn validation_events(svc: &Service) -> Vec<String> {
        svc.store
            .query(keys::OUTBOX, "", None, 100)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|i| i.key.sk.contains(".validation."))
            .map(|i| i.key.sk)
            .collect()
    }

    async fn status(svc: &Service, id: &str) -> (AppLaunchStatus, Option<String>) {
        let s = svc.get_app(id).await.unwrap().summary;
        (s.launch_status, s.launch_status_message)
    }

    #[tokio::test]
    async fn a_userdata_validation_runs_in_its_instance_and_its_outcome_is_announced_once() {
        let (svc, id) = world().await;
        let vid = "val-00000000000000001";
        let staging = FakeStaging::default();
        with_userdata_validation(
            &svc,
            &id,
            &staging,
            (vid, "web-up", "s-a"),
            ("check.sh", "curl -fs localhost"),
        )
        .await;
        let l = FakeLauncher::default();
        svc.launch_app(&l, &staging, &id).await.unwrap();
        // The script is in the server's user data, between its markers.
        let t = l.templates.lock().unwrap()[0].clone();
        let ud = t["Resources"]["Serversa"]["Properties"]["UserData"]["Fn::Base64"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            ud.contains("curl -fs localhost") && ud.contains(vid),
            "{ud}"
        );
        let out = |svc: &Service| {
            let svc = svc.clone();
            let id = id.clone();
            let l = &l;
            async move {
                let runner = ValidationRunner {
                    launcher: l,
                    staging: &FakeStaging::default(),
                };
                let o = svc
                    .get_app_validation_output(Some(runner), &id)
                    .await
                    .unwrap();
                (o[0].status, o[0].status_message.clone())
            }
        };
        let events = |svc: &Service| {
            let svc = svc.clone();
            async move { validation_events(&svc).await.len() }
        };
        assert_eq!(out(&svc).await.0, ValidationStatus::ReadyForValidation);
        *l.console.lock().unwrap() = Some("SeaBIOS\r\nTERN-BOOT-MARKER 6.1\r\n".into());
        assert_eq!(out(&svc).await.0, ValidationStatus::Pending);
        assert_eq!(events(&svc).await, 0);
        *l.console.lock().unwrap() = Some(format!(
            "TERN-BOOT-MARKER 6.1\r\nTERN-VALIDATION-BEGIN {vid}\r\nok\r\nTERN-VALIDATION-END {vid} 0\r\n"
        ));
        // The scheduler's tick follows the launched application's validation: the outcome is
        // recorded and announced before anyone asks for it.
        *l.state.lock().unwrap() = Some(StackState::CreateComplete);
        svc.sync_launch(&l, &id).await.unwrap();
        assert!(svc.auto_launch(&l, &staging).await.is_empty());
        assert_eq!(events(&svc).await, 1);
        let a = svc.app(&id).await.unwrap().value;
        assert_eq!(
            a.validation_outputs[vid].status,
            ValidationStatus::Succeeded
        );
        assert!(!awaits_validation(&a, a.launch.as_ref().unwrap()));
        let (status, message) = out(&svc).await;
        assert_eq!(status, ValidationStatus::Succeeded);
        assert_eq!(
            message.as_deref(),
            Some("the validation script exited with status 0: ok")
        );
        assert_eq!(events(&svc).await, 1);
        // Read again later: recorded once (its time stays), announced once.
        let recorded = svc.app(&id).await.unwrap().value.validation_outputs[vid].clone();
        let later = Service {
            clock: Arc::new(ManualClock::new(
                OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1),
            )),
            ..svc.clone()
        };
        assert_eq!(out(&later).await.0, ValidationStatus::Succeeded);
        assert_eq!(
            svc.app(&id).await.unwrap().value.validation_outputs[vid],
            recorded
        );
        assert_eq!(events(&svc).await, 1);
    }

    #[tokio::test]
    async fn a_userdata_validation_that_never_ends_fails_after_the_validation_timeout() {
        let (svc, id) = world().await;
        let clock = Arc::new(ManualClock::new(OffsetDateTime::UNIX_EPOCH));
        let svc = Service {
            clock: clock.clone(),
            ..svc
        };
        let vid = "val-00000000000000002";
        let staging = FakeStaging::default();
        with_userdata_validation(
            &svc,
            &id,
            &staging,
            (vid, "hangs", "s-b"),
            ("hang.sh", "sleep infinity"),
        )
        .await;
        let l = FakeLauncher::default();
        svc.launch_app(&l, &staging, &id).await.unwrap();
        *l.state.lock().unwrap() = Some(StackState::CreateComplete);
        svc.sync_launch(&l, &id).await.unwrap();
        *l.console.lock().unwrap() = Some(format!("TERN-VALIDATION-BEGIN {vid}\r\n"));
        clock.advance(std::time::Duration::from_secs(59 * 60));
        svc.auto_launch(&l, &staging).await;
        let a = svc.app(&id).await.unwrap().value;
        assert!(awaits_validation(&a, a.launch.as_ref().unwrap()));
        clock.advance(std::time::Duration::from_secs(60));
        svc.auto_launch(&l, &staging).await;
        let a = svc.app(&id).await.unwrap().value;
        let r = &a.validation_outputs[vid];
        assert_eq!(r.status, ValidationStatus::Failed);
        assert!(
            r.status_message.as_deref().unwrap().starts_with(
                "the validation script started but did not end within 1h of the launch"
            ),
            "{r:?}"
        );
        assert!(!awaits_validation(&a, a.launch.as_ref().unwrap()));
    }

    #[tokio::test]
    async fn launch_status_follows_the_stack() {
        let (svc, id) = world().await;
        let staging = FakeStaging::default();
        let l = FakeLauncher::default();
        assert_eq!(status(&svc, &id).await.0, AppLaunchStatus::ReadyForLaunch);
        svc.launch_app(&l, &staging, &id).await.unwrap();
        assert_eq!(status(&svc, &id).await.0, AppLaunchStatus::LaunchInProgress);
        let t = l.templates.lock().unwrap()[0].clone();
        assert_eq!(t["Resources"]["Serversa"]["Properties"]["ImageId"], "ami-1");
        let details = svc
            .get_app(&id)
            .await
            .unwrap()
            .summary
            .launch_details
            .unwrap();
        assert_eq!(
            details.stack_name.as_deref(),
            Some("sms-app-00000000000000001")
        );
        assert_eq!(
            details.stack_id.as_deref(),
            Some("stack/sms-app-00000000000000001")
        );
        assert!(details.latest_launch_time.is_some());

        *l.state.lock().unwrap() = Some(StackState::CreateComplete);
        svc.sync_launch(&l, &id).await.unwrap();
        assert_eq!(status(&svc, &id).await.0, AppLaunchStatus::Launched);
        let e = svc
            .launch_app(&l, &staging, &id)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("already launched"), "{e}");
        let e = svc
            .delete_app(&id, false, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TerminateApp") && e.contains("forceTerminateApp"),
            "{e}"
        );
        let e = svc
            .delete_app_launch_configuration(&id)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("TerminateApp"), "{e}");

        // The change set: nothing while the AMIs are those launched, then the new one.
        let loc = svc
            .generate_change_set(&staging, "b", &id, None)
            .await
            .unwrap();
        let doc: Value =
            serde_json::from_slice(&staging.0.lock().unwrap()[loc.key.as_deref().unwrap()])
                .unwrap();
        assert_eq!(doc["Changes"], serde_json::json!([]));
        let mut newer = job("j-b", "ACTIVE", true, false);
        newer.latest_ami_id = Some("ami-2".into());
        let cur = svc
            .read::<ReplicationJob>(&keys::job("j-b"))
            .await
            .unwrap()
            .unwrap();
        svc.store
            .write(put(keys::job("j-b"), &newer, cur.expect()).unwrap())
            .await
            .unwrap();
        svc.generate_change_set(&staging, "b", &id, Some(OutputFormat::Json))
            .await
            .unwrap();
        let doc: Value =
            serde_json::from_slice(&staging.0.lock().unwrap()[loc.key.as_deref().unwrap()])
                .unwrap();
        let rc = &doc["Changes"][0]["ResourceChange"];
        assert_eq!(doc["Changes"].as_array().unwrap().len(), 1, "{doc}");
        assert_eq!(rc["Action"], "Modify");
        assert_eq!(rc["LogicalResourceId"], "Serversb");
        assert_eq!(rc["Details"][0]["Before"], "ami-1");
        assert_eq!(rc["Details"][0]["After"], "ami-2");

        svc.terminate_app(&l, &id).await.unwrap();
        assert_eq!(status(&svc, &id).await.0, AppLaunchStatus::Terminated);
        let e = svc.terminate_app(&l, &id).await.unwrap_err().to_string();
        assert!(e.contains("has not been launched"), "{e}");
        // Terminated: DeleteApp no longer refuses for the launch (only for the jobs here).
        let e = svc
            .delete_app(&id, false, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("replication jobs") && !e.contains("TerminateApp"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_unavailable_launcher_writes_nothing_and_a_failed_stack_is_stated() {
        let (svc, id) = world().await;
        let staging = FakeStaging::default();
        let l = FakeLauncher {
            unavailable: Some("install QEMU".into()),
            ..Default::default()
        };
        let e = svc.launch_app(&l, &staging, &id).await.unwrap_err();
        assert!(
            matches!(&e, DomainError::OperationNotPermitted(m) if m == "install QEMU"),
            "{e}"
        );
        assert_eq!(
            status(&svc, &id).await,
            (AppLaunchStatus::ReadyForLaunch, None)
        );

        let l = FakeLauncher {
            fail_create: Some("no capacity".into()),
            ..Default::default()
        };
        let e = svc
            .launch_app(&l, &staging, &id)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no capacity"), "{e}");
        let (s, m) = status(&svc, &id).await;
        assert_eq!(s, AppLaunchStatus::LaunchFailed);
        assert!(m.unwrap().contains("LaunchApp again"));
        // A failed launch can be launched again.
        let ok = FakeLauncher::default();
        svc.launch_app(&ok, &staging, &id).await.unwrap();
        *ok.state.lock().unwrap() = Some(StackState::CreateFailed("instance limit".into()));
        svc.sync_launch(&ok, &id).await.unwrap();
        let (s, m) = status(&svc, &id).await;
        assert_eq!(s, AppLaunchStatus::LaunchFailed);
        assert!(m.unwrap().contains("instance limit"));
    }

    #[tokio::test]
    async fn auto_launch_launches_a_replicated_application_once() {
        let (svc, id) = world().await;
        let staging = FakeStaging::default();
        let l = FakeLauncher::default();
        assert_eq!(
            svc.get_app(&id).await.unwrap().summary.replication_status,
            AppReplicationStatus::Replicated
        );
        // Not asked: nothing launches.
        assert!(svc.auto_launch(&l, &staging).await.is_empty());
        assert_eq!(status(&svc, &id).await.0, AppLaunchStatus::ReadyForLaunch);

        let stored = svc.app(&id).await.unwrap();
        let mut a = stored.value.clone();
        a.launch_configuration.as_mut().unwrap().auto_launch = true;
        svc.store
            .write(put(keys::app(&id), &a, stored.expect()).unwrap())
            .await
            .unwrap();
        assert_eq!(svc.auto_launch(&l, &staging).await, vec![id.clone()]);
        assert_eq!(status(&svc, &id).await.0, AppLaunchStatus::LaunchInProgress);
        assert_eq!(l.templates.lock().unwrap().len(), 1);
        // Launched (and later terminated) applications are not launched again by themselves.
        assert!(svc.auto_launch(&l, &staging).await.is_empty());
        *l.state.lock().unwrap() = Some(StackState::CreateComplete);
        svc.sync_launch(&l, &id).await.unwrap();
        svc.terminate_app(&l, &id).await.unwrap();
        assert_eq!(status(&svc, &id).await.0, AppLaunchStatus::Terminated);
        assert!(svc.auto_launch(&l, &staging).await.is_empty());
        assert_eq!(l.templates.lock().unwrap().len(), 1);
    }
}
