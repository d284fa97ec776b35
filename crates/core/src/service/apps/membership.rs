//! Applications and their members: CreateApp, UpdateApp, DeleteApp, and the checks and
//! membership items that keep a server in at most one application.

use super::*;

impl Service {
    /// Shape checks of a request's groups: limits, server ids present and unique.
    pub(super) fn plan_groups(&self, groups: &[NewServerGroup]) -> Result<Vec<GroupPlan>> {
        let l = &self.config.limits;
        if groups.len() > l.max_groups_per_app as usize {
            return Err(invalid(format!(
                "serverGroups has {} groups; an application may have at most {} (limits.max_groups_per_app)",
                groups.len(),
                l.max_groups_per_app
            )));
        }
        let total: usize = groups.iter().map(|g| g.server_ids.len()).sum();
        if total > l.max_servers_per_app as usize {
            return Err(invalid(format!(
                "serverGroups holds {total} servers; an application may have at most {} (limits.max_servers_per_app)",
                l.max_servers_per_app
            )));
        }
        let mut seen = HashMap::new();
        let mut given_ids = HashSet::new();
        let mut plans = Vec::with_capacity(groups.len());
        for (i, g) in groups.iter().enumerate() {
            let given_id = g
                .server_group_id
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            if let Some(id) = &given_id {
                if !given_ids.insert(id.clone()) {
                    return Err(invalid(format!(
                        "serverGroups[{i}].serverGroupId {id} is given twice"
                    )));
                }
            }
            let mut server_ids = Vec::with_capacity(g.server_ids.len());
            for (j, s) in g.server_ids.iter().enumerate() {
                let member = format!("serverGroups[{i}].serverList[{j}].serverId");
                let id = required(&member, s.as_deref().unwrap_or_default())?.to_string();
                if let Some(first) = seen.insert(id.clone(), member.clone()) {
                    return Err(invalid(format!(
                        "{member}: server {id} is already in the application as {first}"
                    )));
                }
                server_ids.push(id);
            }
            plans.push(GroupPlan {
                given_id,
                name: g.name.clone().filter(|n| !n.trim().is_empty()),
                server_ids,
            });
        }
        Ok(plans)
    }

    /// The catalog's description of a server being added, or a refusal naming the member.
    pub(super) async fn catalog_server(&self, member: &str, id: &str) -> Result<AppServer> {
        let (_, server) = self.current_server(id).await?;
        let s = server.ok_or_else(|| {
            invalid(format!(
                "{member}: there is no server {id} in the server catalog (see GetServers)"
            ))
        })?;
        Ok(AppServer {
            server_id: s.value.server_id,
            server_type: s.value.server_type,
            vm_server: s.value.vm_server,
        })
    }

    /// The write that makes `server_id` a member of `app_id`, or a refusal when another
    /// application holds it. A membership whose application no longer lists the server is
    /// taken over.
    pub(super) async fn join(
        &self,
        member: &str,
        server_id: &str,
        app_id: &str,
    ) -> Result<Option<Write>> {
        let key = keys::app_server(server_id);
        let current = self.read::<Membership>(&key).await?;
        if let Some(m) = &current {
            if m.value.app_id == app_id {
                return Ok(None);
            }
            let holder = self.read::<App>(&keys::app(&m.value.app_id)).await?;
            if holder.is_some_and(|h| h.value.has_server(server_id)) {
                return Err(invalid(format!(
                    "{member}: server {server_id} already belongs to application {}; a server can be in one application only",
                    m.value.app_id
                )));
            }
        }
        Ok(Some(put(
            key,
            &Membership {
                app_id: app_id.to_string(),
            },
            expect_of(&current),
        )?))
    }

    /// Builds the groups of `plans` for application `app_id` (existing groups keep their ids),
    /// with the membership writes of the servers it adds.
    pub(super) async fn build_groups(
        &self,
        app_id: &str,
        plans: &[GroupPlan],
        new_ids: &[String],
        existing: &[AppServerGroup],
    ) -> Result<(Vec<AppServerGroup>, Vec<Write>)> {
        let mut groups = Vec::with_capacity(plans.len());
        let mut writes = Vec::new();
        let old: HashMap<&str, &AppServer> = existing
            .iter()
            .flat_map(|g| g.servers.iter())
            .map(|s| (s.server_id.as_str(), s))
            .collect();
        for (i, (plan, new_id)) in plans.iter().zip(new_ids).enumerate() {
            let server_group_id = match &plan.given_id {
                Some(id) if existing.iter().any(|g| &g.server_group_id == id) => id.clone(),
                Some(id) => {
                    return Err(invalid(format!(
                        "serverGroups[{i}].serverGroupId {id} is not a group of application {app_id}; omit it to add a new group"
                    )))
                }
                None => new_id.clone(),
            };
            let mut servers = Vec::with_capacity(plan.server_ids.len());
            for (j, id) in plan.server_ids.iter().enumerate() {
                if let Some(s) = old.get(id.as_str()) {
                    servers.push((*s).clone());
                    continue;
                }
                let member = format!("serverGroups[{i}].serverList[{j}].serverId");
                servers.push(self.catalog_server(&member, id).await?);
                writes.extend(self.join(&member, id, app_id).await?);
            }
            groups.push(AppServerGroup {
                server_group_id,
                name: plan.name.clone(),
                servers,
            });
        }
        Ok((groups, writes))
    }

    // -------------------------------------------------------------------------- writes

    /// CreateApp.
    #[tracing::instrument(name = "create_app", skip_all)]
    pub async fn create_app(&self, req: NewApp) -> Result<AppDetails> {
        self.create_app_as(req, None).await
    }

    /// CreateApp, recording the catalog application it was imported from (if any).
    pub(super) async fn create_app_as(
        &self,
        req: NewApp,
        imported_app_id: Option<String>,
    ) -> Result<AppDetails> {
        let token = req
            .client_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.as_ref().is_some_and(|t| t.len() > MAX_CLIENT_TOKEN) {
            return Err(invalid(format!(
                "clientToken is longer than {MAX_CLIENT_TOKEN} characters"
            )));
        }
        let tags = check_tags(req.tags.as_deref().unwrap_or_default())?;
        let plans = self.plan_groups(req.server_groups.as_deref().unwrap_or_default())?;
        if plans.iter().any(|p| p.given_id.is_some()) {
            // New applications get new group ids; a given one would name nothing.
            let i = plans.iter().position(|p| p.given_id.is_some()).unwrap_or(0);
            return Err(invalid(format!(
                "serverGroups[{i}].serverGroupId: a new application's groups get their ids from CreateApp; omit it"
            )));
        }
        let request = crate::service::encode(&req)?;
        let app_id = self.ids.new_id(crate::IdKind::App);
        let group_ids: Vec<String> = plans
            .iter()
            .map(|_| self.ids.new_id(crate::IdKind::ServerGroup))
            .collect();
        // The application an earlier request with this clientToken created, if any.
        let earlier = || async {
            let Some(t) = &token else {
                return Ok(None);
            };
            let Some(done) = self.read::<TokenItem>(&keys::app_token(t)).await? else {
                return Ok(None);
            };
            if done.value.request != request {
                return Err(invalid(format!(
                    "clientToken {t} was already used to create application {} with different parameters",
                    done.value.app_id
                )));
            }
            Ok(Some(self.app(&done.value.app_id).await?.value))
        };
        let app = retrying!(self, "CreateApp", async {
            if let Some(app) = earlier().await? {
                return Ok(app);
            }
            let (server_groups, mut writes) =
                match self.build_groups(&app_id, &plans, &group_ids, &[]).await {
                    Ok(built) => built,
                    // A request with the same token may have committed between our reads of
                    // the token and of the memberships: then its servers read as taken, and the
                    // answer is that request's application.
                    Err(e) => match earlier().await? {
                        Some(app) => return Ok(app),
                        None => return Err(e),
                    },
                };
            let now = self.now();
            let app = App {
                app_id: app_id.clone(),
                name: req.name.clone(),
                description: req.description.clone(),
                role_name: req.role_name.clone(),
                server_groups,
                tags: tags.clone(),
                creation_time: now,
                last_modified: now,
                client_token: token.clone(),
                replication_configuration: None,
                replication_jobs: BTreeMap::new(),
                replicating: false,
                replication_stopped_on: None,
                launch_configuration: None,
                launch: None,
                validation_configuration: None,
                validation_outputs: BTreeMap::new(),
                imported_app_id: imported_app_id.clone(),
            };
            writes.push(put(keys::app(&app_id), &app, Expect::Absent)?);
            if let Some(t) = &token {
                writes.push(put(
                    keys::app_token(t),
                    &TokenItem {
                        app_id: app_id.clone(),
                        request: request.clone(),
                    },
                    Expect::Absent,
                )?);
            }
            self.store.transact(writes).await?;
            tracing::info!(app_id = %app_id, "application created");
            Ok(app)
        })?;
        self.details(&app).await
    }

    /// UpdateApp.
    #[tracing::instrument(name = "update_app", skip_all, fields(app_id = %req.app_id))]
    pub async fn update_app(&self, req: AppUpdate) -> Result<AppDetails> {
        let id = app_id("appId", &req.app_id)?;
        let tags = req.tags.as_deref().map(check_tags).transpose()?;
        let plans = req
            .server_groups
            .as_deref()
            .map(|g| self.plan_groups(g))
            .transpose()?;
        let new_ids: Vec<String> = plans
            .iter()
            .flatten()
            .map(|_| self.ids.new_id(crate::IdKind::ServerGroup))
            .collect();
        let app = retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            app.refuse_if_imported("UpdateApp")?;
            if let Some(n) = &req.name {
                app.name = Some(n.clone());
            }
            if let Some(d) = &req.description {
                app.description = Some(d.clone());
            }
            if let Some(r) = &req.role_name {
                app.role_name = Some(r.clone());
            }
            if let Some(t) = &tags {
                app.tags = t.clone();
            }
            let mut writes = Vec::new();
            if let Some(plans) = &plans {
                let keep: HashSet<&str> = plans
                    .iter()
                    .flat_map(|p| p.server_ids.iter().map(String::as_str))
                    .collect();
                let removed: Vec<String> = app
                    .servers()
                    .filter(|s| !keep.contains(s.server_id.as_str()))
                    .map(|s| s.server_id.clone())
                    .collect();
                if let Some(s) = removed
                    .iter()
                    .find(|s| app.replication_jobs.contains_key(*s))
                {
                    return Err(not_permitted(format!(
                        "server {s} of application {id} is being replicated (job {}); stop the application's replication (StopAppReplication) before removing it",
                        app.replication_jobs[s]
                    )));
                }
                let (groups, joins) = self
                    .build_groups(&id, plans, &new_ids, &app.server_groups)
                    .await?;
                writes = joins;
                // Memberships of removed servers go in the same transaction when it has room;
                // otherwise they are left stale, and the next application to take a server
                // takes it over (see `join`).
                for s in &removed {
                    if writes.len() + 2 > MAX_TRANSACTION_WRITES {
                        break;
                    }
                    let key = keys::app_server(s);
                    if let Some(m) = self.read::<Membership>(&key).await? {
                        if m.value.app_id == id {
                            writes.push(Write::Delete {
                                key,
                                expect: m.expect(),
                            });
                        }
                    }
                }
                if let Some(config) = &mut app.replication_configuration {
                    config.retain(|server, _| keep.contains(server.as_str()));
                }
                app.server_groups = groups;
            }
            app.last_modified = self.now();
            writes.push(put(keys::app(&id), &app, stored.expect())?);
            self.store.transact(writes).await?;
            Ok(app)
        })?;
        self.details(&app).await
    }

    /// DeleteApp. Replication jobs still running are refused unless `force_stop_replication`
    /// (then they are deleted first, through StopAppReplication). A launched application is
    /// refused: TerminateApp first (the API does so for `forceTerminateApp`).
    #[tracing::instrument(name = "delete_app", skip(self))]
    pub async fn delete_app(
        &self,
        id: &str,
        force_stop_replication: bool,
        force_terminate: bool,
    ) -> Result<()> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?;
        if let Some(l) = app.value.launch.as_ref().filter(|l| l.is_live()) {
            // With forceTerminateApp the API terminates the stack (TerminateApp) first; one
            // still live here is still terminating, or failed to.
            return Err(not_permitted(if force_terminate {
                format!(
                    "application {id} is still launched (launchStatus {}); wait for TERMINATED, or TerminateApp again",
                    l.status
                )
            } else {
                format!(
                    "application {id} is launched (launchStatus {}); terminate it (TerminateApp) or pass forceTerminateApp",
                    l.status
                )
            }));
        }
        let jobs = self.app_jobs(&app.value).await?;
        let mut live: Vec<String> = jobs
            .iter()
            .filter(|(_, j)| j.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        live.sort();
        if !live.is_empty() {
            if !force_stop_replication {
                return Err(not_permitted(format!(
                    "application {id} still has replication jobs {}; stop its replication (StopAppReplication) or pass forceStopAppReplication",
                    list_names(&live)
                )));
            }
            self.stop_app_replication(&id).await?;
        }
        retrying!(self, id, async {
            let Some(app) = self.read::<App>(&keys::app(&id)).await? else {
                // Deleted by a concurrent request, or an earlier attempt of this one.
                return Ok(());
            };
            if !app.value.replication_jobs.is_empty() {
                return Err(not_permitted(format!(
                    "application {id} started replicating again; stop it first"
                )));
            }
            let mut writes = vec![Write::Delete {
                key: keys::app(&id),
                expect: app.expect(),
            }];
            for s in app.value.servers() {
                let key = keys::app_server(&s.server_id);
                if let Some(m) = self.read::<Membership>(&key).await? {
                    if m.value.app_id == id {
                        writes.push(Write::Delete {
                            key,
                            expect: m.expect(),
                        });
                    }
                }
            }
            if let Some(t) = &app.value.client_token {
                writes.push(Write::Delete {
                    key: keys::app_token(t),
                    expect: Expect::Any,
                });
            }
            if app.value.replicating {
                writes.push(Self::release_app_slot());
            }
            self.store.transact(writes).await?;
            tracing::info!(app_id = %id, "application deleted");
            Ok(())
        })
    }

    // -------------------------------------------------------------------------- replication
}
