//! Replication of an application: its replication configuration, StartAppReplication,
//! StartOnDemandAppReplication and StopAppReplication, through the replication-job use cases.

use super::*;

impl Service {
    /// PutAppReplicationConfiguration: replaces the stored configuration. Each server's
    /// parameters pass the rules of CreateReplicationJob; a server that already has a job of
    /// the application gets the changeable ones (frequency, license, AMIs kept, encryption)
    /// through UpdateReplicationJob.
    #[tracing::instrument(name = "put_app_replication_configuration", skip(self, groups))]
    pub async fn put_app_replication_configuration(
        &self,
        id: &str,
        groups: Vec<GroupReplication>,
    ) -> Result<()> {
        let id = app_id("appId", id)?;
        const LIST: &str = "serverGroupReplicationConfigurations";
        let app = self.app(&id).await?.value;
        let mut config = BTreeMap::new();
        for (i, g) in groups.iter().enumerate() {
            let group_member = format!("{LIST}[{i}].serverGroupId");
            let gid = required(
                &group_member,
                g.server_group_id.as_deref().unwrap_or_default(),
            )?;
            let group = app
                .server_groups
                .iter()
                .find(|x| x.server_group_id == gid)
                .ok_or_else(|| {
                    invalid(format!(
                        "{group_member}: {gid} is not a server group of application {id}"
                    ))
                })?;
            for (j, s) in g.servers.iter().enumerate() {
                let at = format!("{LIST}[{i}].serverReplicationConfigurations[{j}]");
                let sid = required(
                    &format!("{at}.server.serverId"),
                    s.server_id.as_deref().unwrap_or_default(),
                )?;
                if !group.servers.iter().any(|x| x.server_id == sid) {
                    return Err(invalid(format!(
                        "{at}.server.serverId: server {sid} is not in server group {gid}"
                    )));
                }
                let p = s.parameters.clone().ok_or_else(|| {
                    missing(format!("{at}.serverReplicationParameters is required"))
                })?;
                self.check_parameters(&format!("{at}.serverReplicationParameters"), sid, &p)
                    .await?;
                if config.insert(sid.to_string(), p).is_some() {
                    return Err(invalid(format!(
                        "{at}.server.serverId: server {sid} is configured twice"
                    )));
                }
            }
        }
        let config_for_jobs = config.clone();
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            app.replication_configuration = Some(config.clone());
            app.last_modified = self.now();
            self.store
                .write(put(keys::app(&id), &app, stored.expect())?)
                .await?;
            Ok(())
        })?;
        for (server, job) in &app.replication_jobs {
            let Some(p) = config_for_jobs.get(server) else {
                continue;
            };
            let update = JobUpdate {
                replication_job_id: job.clone(),
                frequency: p.frequency.filter(|_| p.run_once != Some(true)),
                license_type: p.license_type,
                number_of_recent_amis_to_keep: p.number_of_recent_amis_to_keep,
                encrypted: p.encrypted,
                kms_key_id: p.kms_key_id.clone(),
                ..JobUpdate::default()
            };
            match self.update_job(update).await {
                // A job that ended or is gone keeps what it had.
                Ok(()) | Err(DomainError::JobNotFound(_)) => {}
                Err(DomainError::OperationNotPermitted(m)) => {
                    tracing::info!(job, message = %m, "job not updated");
                }
                Err(DomainError::InvalidParameter(m)) if m.contains("runOnce") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The rules of CreateReplicationJob applied to one server's parameters, with `at` naming
    /// the member in messages.
    pub(super) async fn check_parameters(
        &self,
        at: &str,
        server_id: &str,
        p: &ServerReplicationParameters,
    ) -> Result<()> {
        let named = |e: DomainError| match e {
            DomainError::InvalidParameter(m) => invalid(format!("{at}: {m}")),
            DomainError::MissingParameter(m) => missing(format!("{at}: {m}")),
            other => other,
        };
        match (p.frequency, p.run_once.unwrap_or(false)) {
            (Some(f), _) => {
                self.check_frequency(f).map_err(named)?;
            }
            (None, true) => {}
            (None, false) => {
                return Err(missing(format!(
                    "{at}.frequency is required unless runOnce is true"
                )))
            }
        }
        self.check_amis(p.number_of_recent_amis_to_keep.unwrap_or(0))
            .map_err(named)?;
        if let Some(t) = p.seed_time {
            self.check_not_too_far("seedTime", t).map_err(named)?;
        }
        Self::check_kms(p.encrypted.unwrap_or(false), p.kms_key_id.as_deref()).map_err(named)?;
        let (_, server) = self.current_server(server_id).await?;
        let os = server.and_then(|s| s.value.os_type);
        Self::check_license(os, p.license_type, server_id).map_err(named)?;
        Ok(())
    }

    /// GetAppReplicationConfiguration: the configuration by the application's current groups
    /// (empty when none is stored).
    pub async fn get_app_replication_configuration(
        &self,
        id: &str,
    ) -> Result<Vec<GroupReplicationView>> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        let Some(config) = &app.replication_configuration else {
            return Ok(Vec::new());
        };
        let jobs = self.app_jobs(&app).await?;
        Ok(app
            .server_groups
            .iter()
            .map(|g| GroupReplicationView {
                server_group_id: g.server_group_id.clone(),
                servers: g
                    .servers
                    .iter()
                    .filter_map(|s| {
                        config
                            .get(&s.server_id)
                            .map(|p| (Self::server_view(&app, s, &jobs), p.clone()))
                    })
                    .collect(),
            })
            .filter(|g| !g.servers.is_empty())
            .collect())
    }

    /// DeleteAppReplicationConfiguration; refused while the application has replication jobs.
    pub async fn delete_app_replication_configuration(&self, id: &str) -> Result<()> {
        let id = app_id("appId", id)?;
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            if !app.replication_jobs.is_empty() {
                return Err(not_permitted(format!(
                    "application {id} is replicating; stop its replication (StopAppReplication) before deleting its replication configuration"
                )));
            }
            if app.replication_configuration.take().is_none() {
                return Ok(());
            }
            app.last_modified = self.now();
            self.store
                .write(put(keys::app(&id), &app, stored.expect())?)
                .await?;
            Ok(())
        })
    }

    /// The write that releases one slot of the replicating-application counter.
    pub(super) fn release_app_slot() -> Write {
        Write::Add {
            key: keys::replicating_apps(),
            delta: -1,
            at_most: None,
        }
    }

    /// StartAppReplication: one replication job per server (see the module comment). Servers
    /// that already have the application's live job are left alone, so a retry only creates
    /// what is missing.
    #[tracing::instrument(name = "start_app_replication", skip(self))]
    pub async fn start_app_replication(&self, id: &str) -> Result<()> {
        let id = app_id("appId", id)?;
        let max = self.config.limits.max_replicating_apps;
        // Take a slot of the replicating-application limit (once per application).
        let app = retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let app = &stored.value;
            if app.servers().next().is_none() {
                return Err(not_permitted(format!(
                    "application {id} has no servers to replicate"
                )));
            }
            if app.replication_configuration.is_none() {
                return Err(not_permitted(format!(
                    "application {id} has no replication configuration; PutAppReplicationConfiguration first"
                )));
            }
            let unconfigured = app.unconfigured();
            if !unconfigured.is_empty() {
                let ids: Vec<String> = unconfigured.iter().map(|s| s.to_string()).collect();
                return Err(not_permitted(format!(
                    "application {id} has no replication parameters for {}; PutAppReplicationConfiguration first",
                    list_names(&ids)
                )));
            }
            if app.replicating {
                return Ok(stored.value.clone());
            }
            let mut app = stored.value.clone();
            app.replicating = true;
            app.replication_stopped_on = None;
            app.last_modified = self.now();
            let taken = self
                .store
                .transact(vec![
                    put(keys::app(&id), &app, stored.expect())?,
                    Write::Add {
                        key: keys::replicating_apps(),
                        delta: 1,
                        at_most: Some(u64::from(max)),
                    },
                ])
                .await;
            match taken {
                Err(StoreError::ConditionFailed { index: Some(1), .. }) => {
                    Err(DomainError::LimitExceeded(format!(
                        "{max} applications are replicating, the limit (limits.max_replicating_apps); stop one first"
                    )))
                }
                other => {
                    other?;
                    Ok(app)
                }
            }
        })?;
        let config = app.replication_configuration.clone().unwrap_or_default();
        let jobs = self.app_jobs(&app).await?;
        let mut created = Vec::new();
        let mut failure = None;
        for s in app.servers() {
            let has_live = app
                .replication_jobs
                .get(&s.server_id)
                .is_some_and(|j| jobs.get(j).is_some_and(Option::is_some));
            if has_live {
                continue;
            }
            let p = config.get(&s.server_id).cloned().unwrap_or_default();
            match self.app_server_job(&app, &s.server_id, &p).await {
                Ok(job) => created.push((s.server_id.clone(), job)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // Record what exists, even when a later server failed: those jobs are the
        // application's and StopAppReplication must find them.
        retrying!(self, id, async {
            let Some(stored) = self.read::<App>(&keys::app(&id)).await? else {
                return Err(not_permitted(format!(
                    "application {id} was deleted while its replication started"
                )));
            };
            let mut app = stored.value.clone();
            let mut changed = false;
            for (server, job) in &created {
                if app.has_server(server) && app.replication_jobs.get(server) != Some(job) {
                    app.replication_jobs.insert(server.clone(), job.clone());
                    changed = true;
                }
            }
            if changed {
                app.last_modified = self.now();
                self.store
                    .write(put(keys::app(&id), &app, stored.expect())?)
                    .await?;
            }
            Ok(())
        })?;
        match failure {
            Some(e) => Err(e),
            None => {
                tracing::info!(app_id = %id, jobs = created.len(), "application replication started");
                Ok(())
            }
        }
    }

    /// The live job replicating `server_id` for `app`: its existing one (adopted), else a new
    /// one made by CreateReplicationJob's use case.
    pub(super) async fn app_server_job(
        &self,
        app: &App,
        server_id: &str,
        p: &ServerReplicationParameters,
    ) -> Result<String> {
        let existing = || async {
            let (_, server) = self.current_server(server_id).await?;
            Ok::<_, DomainError>(
                server
                    .filter(|s| s.value.has_live_job())
                    .and_then(|s| s.value.replication_job_id),
            )
        };
        if let Some(job) = existing().await? {
            return Ok(job);
        }
        let req = NewJob {
            server_id: server_id.to_string(),
            seed_replication_time: Some(p.seed_time.unwrap_or_else(|| self.now())),
            frequency: p.frequency,
            run_once: p.run_once,
            license_type: p.license_type,
            role_name: app.role_name.clone(),
            description: Some(format!(
                "application {}{}",
                app.app_id,
                app.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )),
            number_of_recent_amis_to_keep: p.number_of_recent_amis_to_keep,
            encrypted: p.encrypted,
            kms_key_id: p.kms_key_id.clone(),
        };
        match self.create_job(req).await {
            Ok(job) => Ok(job),
            // A concurrent StartAppReplication of this application made it.
            Err(DomainError::JobAlreadyExists(m)) => {
                existing().await?.ok_or(DomainError::JobAlreadyExists(m))
            }
            Err(e) => Err(e),
        }
    }

    /// StartOnDemandAppReplication: an on-demand run of every job of the application that has
    /// no run in progress (StartOnDemandReplicationRun's use case, with its limits).
    #[tracing::instrument(name = "start_on_demand_app_replication", skip(self, description))]
    pub async fn start_on_demand_app_replication(
        &self,
        id: &str,
        description: Option<String>,
    ) -> Result<()> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        let jobs = self.app_jobs(&app).await?;
        let live: Vec<&ReplicationJob> = jobs.values().flatten().collect();
        if live.is_empty() {
            return Err(not_permitted(format!(
                "application {id} has no replication jobs; StartAppReplication first"
            )));
        }
        let mut started = 0;
        for j in live {
            if j.active_run.is_some() {
                continue;
            }
            self.start_on_demand_run(&j.replication_job_id, description.clone())
                .await?;
            started += 1;
        }
        tracing::info!(app_id = %id, started, "on-demand application replication");
        Ok(())
    }

    /// StopAppReplication: deletes every job of the application (DeleteReplicationJob's use
    /// case; AMIs are kept) and releases its replicating slot.
    #[tracing::instrument(name = "stop_app_replication", skip(self))]
    pub async fn stop_app_replication(&self, id: &str) -> Result<()> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        for job in app.replication_jobs.values() {
            match self.delete_job(job).await {
                Ok(()) | Err(DomainError::JobNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let stopped: HashSet<String> = app.replication_jobs.values().cloned().collect();
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            if !app.replicating && app.replication_jobs.is_empty() {
                return Ok(());
            }
            // Jobs recorded meanwhile by a concurrent start stay recorded (and running).
            app.replication_jobs.retain(|_, job| !stopped.contains(job));
            let mut writes = Vec::new();
            if app.replication_jobs.is_empty() {
                if app.replicating {
                    writes.push(Self::release_app_slot());
                }
                app.replicating = false;
                app.replication_stopped_on = Some(self.now());
            }
            app.last_modified = self.now();
            writes.push(put(keys::app(&id), &app, stored.expect())?);
            self.store.transact(writes).await?;
            Ok(())
        })
    }
}
