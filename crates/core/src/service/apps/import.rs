//! ImportAppCatalog (SMS §2.8) from the applications the connectors' inventories name.
//!
//! SMS imports Migration Hub applications. Locally the application definitions come from the
//! connector: its inventory's `[[applications]]` tables put VMs into named applications, and
//! each catalog server carries its VM's `application`. ImportAppCatalog makes one SMS
//! application per name, with the seed's rules:
//!
//! * only catalog servers (not vanished) are imported, and only those not already in another
//!   application — a partial import is still an import;
//! * at most `limits.max_servers_per_app` servers per application (the first ones in catalog
//!   order), in one server group named after the application;
//! * an imported application records the name as `importedAppId` and is not editable
//!   (UpdateApp refuses it); its replication and launch are configured as for any other;
//! * no re-import: a name that already has its application is left alone (DeleteApp it to import
//!   it again).
//!
//! Each application is created by CreateApp's use case with the client token
//! `ImportAppCatalog:<name>`, so concurrent imports make it once.

use super::launch::iam_name;
use super::*;

/// What an ImportAppCatalog did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOutcome {
    /// Application ids created, in name order.
    pub imported: Vec<String>,
    /// Names whose application existed already.
    pub already_imported: Vec<String>,
    /// `(serverId, reason)` of servers left out.
    pub skipped: Vec<(String, String)>,
}

impl Service {
    /// ImportAppCatalog (see the module comment).
    #[tracing::instrument(name = "import_app_catalog", skip(self))]
    pub async fn import_app_catalog(&self, role_name: Option<String>) -> Result<ImportOutcome> {
        if let Some(r) = &role_name {
            iam_name("roleName", r, 64)?;
        }
        // The catalog's servers by application name, in catalog order.
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.get_servers(None, after.as_deref(), 500).await?;
            for s in &page.servers.items {
                if let (Some(name), None) = (&s.application, s.vanished_on) {
                    by_name
                        .entry(name.clone())
                        .or_default()
                        .push(s.server_id.clone());
                }
            }
            match page.servers.last {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        if by_name.is_empty() {
            return Err(invalid(
                "the server catalog names no applications: list them in the connector's inventory ([[applications]] with name and vms), then ImportServerCatalog and ImportAppCatalog",
            ));
        }
        let imported_names: HashSet<String> = self
            .list_all::<App>(keys::APP)
            .await?
            .into_iter()
            .filter_map(|a| a.value.imported_app_id)
            .collect();
        let max = self.config.limits.max_servers_per_app as usize;
        let mut out = ImportOutcome::default();
        for (name, servers) in by_name {
            let token = format!("ImportAppCatalog:{name}");
            if imported_names.contains(&name) || self.token_used(&token).await? {
                out.already_imported.push(name);
                continue;
            }
            let mut free = Vec::new();
            for sid in servers {
                match self.join("serverId", &sid, "") .await {
                    Err(DomainError::InvalidParameter(why)) => out.skipped.push((sid, why)),
                    Err(e) => return Err(e),
                    Ok(_) if free.len() >= max => out.skipped.push((
                        sid,
                        format!("application {name} has {max} servers, the limit (limits.max_servers_per_app)"),
                    )),
                    Ok(_) => free.push(Some(sid)),
                }
            }
            if free.is_empty() {
                continue;
            }
            let req = NewApp {
                name: Some(name.clone()),
                description: Some(
                    "Imported by ImportAppCatalog from the connector's application definitions"
                        .into(),
                ),
                role_name: role_name.clone(),
                client_token: Some(token.clone()),
                server_groups: Some(vec![NewServerGroup {
                    server_group_id: None,
                    name: Some(name.clone()),
                    server_ids: free,
                }]),
                tags: None,
            };
            let app = match self.create_app_as(req, Some(name.clone())).await {
                Ok(app) => app,
                // A concurrent ImportAppCatalog imported it between this one's reads (it took
                // some of the servers, so this one's request differs): imported once.
                Err(_) if self.token_used(&token).await? => {
                    out.already_imported.push(name);
                    continue;
                }
                Err(e) => return Err(e),
            };
            tracing::info!(app_id = %app.summary.app_id, name = %name, "application imported");
            out.imported.push(app.summary.app_id);
        }
        Ok(out)
    }
}

impl Service {
    /// Whether an application was created with client token `token`.
    async fn token_used(&self, token: &str) -> Result<bool> {
        Ok(self
            .read::<TokenItem>(&keys::app_token(token))
            .await?
            .is_some())
    }
}
