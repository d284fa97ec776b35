//! Launch configuration of an application (SMS §2.5): Put/Get/DeleteAppLaunchConfiguration.
//!
//! The configuration is part of the application's item (`APP/<appId>`), written with the
//! application's version as condition, so it can never name a server the application no longer
//! holds at the moment of writing, and a concurrent UpdateApp and PutAppLaunchConfiguration
//! cannot interleave. A later UpdateApp that removes servers leaves their entries in place;
//! every reader (GetAppLaunchConfiguration, GenerateTemplate) only uses the entries of servers
//! the application holds.
//!
//! The model constrains only `S3Location` (bucket 3..63, key ≤ 1024). Tern also checks what a
//! CloudFormation template built from the configuration needs to be valid (and what `cfn-lint`
//! checks): logical ids alphanumeric and unique, EC2 ids in their `vpc-`/`subnet-`/`sg-` + 8 or
//! 17 hex form, IAM names in IAM's alphabet, an instance type of the `family.size` form.

use super::*;

/// SMS `S3Location`. Both members are optional on the wire; stored locations have both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Location {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl S3Location {
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            bucket: Some(bucket.into()),
            key: Some(key.into()),
        }
    }
}

/// SMS `UserData`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_location: Option<S3Location>,
}

/// SMS `ServerLaunchConfiguration` (the server by id; the rest of `Server` comes from the app).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerLaunchConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_key_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<UserData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub associate_public_ip_address: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configure_script: Option<S3Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configure_script_type: Option<ScriptType>,
}

/// SMS `ServerGroupLaunchConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerGroupLaunchConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_order: Option<i64>,
    #[serde(default)]
    pub servers: Vec<ServerLaunchConfiguration>,
}

/// PutAppLaunchConfiguration's content, and what the application stores after the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_name: Option<String>,
    #[serde(default)]
    pub auto_launch: bool,
    #[serde(default)]
    pub server_groups: Vec<ServerGroupLaunchConfiguration>,
}

/// GetAppLaunchConfiguration's answer: the stored configuration by the application's current
/// groups and servers.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchConfigurationView {
    pub app_id: String,
    pub role_name: Option<String>,
    pub auto_launch: Option<bool>,
    pub server_groups: Vec<GroupLaunchView>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupLaunchView {
    pub server_group_id: String,
    pub launch_order: Option<i64>,
    pub servers: Vec<(AppServerView, ServerLaunchConfiguration)>,
}

/// S3 bucket names: the model's 3..63.
const BUCKET_LEN: std::ops::RangeInclusive<usize> = 3..=63;
/// S3 keys: the model's ≤ 1024 (an empty key names no object, so 1..1024 here).
const MAX_KEY: usize = 1024;
/// CloudFormation logical ids: alphanumeric, at most 255 characters.
const MAX_LOGICAL_ID: usize = 255;

/// An `S3Location` naming one object: bucket 3..63 characters, key 1..1024.
pub(super) fn check_s3_location(at: &str, loc: Option<&S3Location>) -> Result<S3Location> {
    let loc = loc.ok_or_else(|| missing(format!("{at} is required")))?;
    let bucket = required(
        &format!("{at}.bucket"),
        loc.bucket.as_deref().unwrap_or_default(),
    )?;
    if !BUCKET_LEN.contains(&bucket.len()) {
        return Err(invalid(format!(
            "{at}.bucket {bucket:?} must be 3 to 63 characters long"
        )));
    }
    let key = loc.key.as_deref().unwrap_or_default();
    if key.is_empty() {
        return Err(missing(format!("{at}.key is required")));
    }
    if key.len() > MAX_KEY {
        return Err(invalid(format!(
            "{at}.key is longer than {MAX_KEY} characters"
        )));
    }
    Ok(S3Location::new(bucket, key))
}

/// `prefix` + 8 or 17 lowercase or uppercase hex digits (EC2 resource ids).
fn ec2_id(at: &str, prefix: &str, value: &str) -> Result<()> {
    let ok = value.strip_prefix(prefix).is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{at} {value:?} is not an EC2 id ({prefix} and 8 or 17 hex digits)"
        )))
    }
}

/// IAM role and instance-profile names: 1..`max` characters of `[A-Za-z0-9+=,.@_-]`.
pub(super) fn iam_name(at: &str, value: &str, max: usize) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{at} {value:?} is not an IAM name (1 to {max} of letters, digits and +=,.@_-)"
        )))
    }
}

fn instance_type(at: &str, value: &str) -> Result<()> {
    let ok = value.len() <= 64
        && value.split_once('.').is_some_and(|(family, size)| {
            let word = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            word(family) && word(size)
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{at} {value:?} is not an instance type (family.size, e.g. t3.medium)"
        )))
    }
}

fn logical_id(at: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= MAX_LOGICAL_ID
        && value.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{at} {value:?} is not a CloudFormation logical id (1 to {MAX_LOGICAL_ID} letters and digits)"
        )))
    }
}

/// The logical id of a server without one configured: `Server` + the alphanumerics of its id.
pub(crate) fn default_logical_id(server_id: &str) -> String {
    let tail: String = server_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("Server{tail}")
}

/// One server's launch settings, checked (`at` names the member in messages).
fn check_server(at: &str, s: &ServerLaunchConfiguration) -> Result<ServerLaunchConfiguration> {
    let mut out = s.clone();
    if let Some(v) = &s.logical_id {
        logical_id(&format!("{at}.logicalId"), v)?;
    }
    if let Some(v) = &s.vpc {
        ec2_id(&format!("{at}.vpc"), "vpc-", v)?;
    }
    if let Some(v) = &s.subnet {
        ec2_id(&format!("{at}.subnet"), "subnet-", v)?;
    }
    if let Some(v) = &s.security_group {
        ec2_id(&format!("{at}.securityGroup"), "sg-", v)?;
    }
    if let Some(v) = &s.ec2_key_name {
        if v.is_empty() || v.len() > 255 || v.chars().any(char::is_control) {
            return Err(invalid(format!(
                "{at}.ec2KeyName must be 1 to 255 characters without control characters"
            )));
        }
    }
    if let Some(v) = &s.instance_type {
        instance_type(&format!("{at}.instanceType"), v)?;
    }
    if let Some(v) = &s.iam_instance_profile_name {
        iam_name(&format!("{at}.iamInstanceProfileName"), v, 128)?;
    }
    if let Some(u) = &s.user_data {
        let loc = check_s3_location(&format!("{at}.userData.s3Location"), u.s3_location.as_ref())?;
        out.user_data = Some(UserData {
            s3_location: Some(loc),
        });
    }
    match (&s.configure_script, s.configure_script_type) {
        (Some(loc), Some(_)) => {
            out.configure_script = Some(check_s3_location(
                &format!("{at}.configureScript"),
                Some(loc),
            )?);
        }
        (Some(_), None) => {
            return Err(missing(format!(
                "{at}.configureScriptType is required with configureScript (SHELL_SCRIPT or POWERSHELL_SCRIPT)"
            )))
        }
        (None, Some(_)) => {
            return Err(invalid(format!(
                "{at}.configureScriptType is given without configureScript"
            )))
        }
        (None, None) => {}
    }
    Ok(out)
}

/// The configuration checked against `app`: every group one of the application's, every
/// server a member of that group, nothing given twice, logical ids unique.
pub(super) fn check_launch_configuration(
    app: &App,
    req: &LaunchConfiguration,
) -> Result<LaunchConfiguration> {
    const LIST: &str = "serverGroupLaunchConfigurations";
    if let Some(r) = &req.role_name {
        iam_name("roleName", r, 64)?;
    }
    let mut groups_seen = HashSet::new();
    let mut servers_seen = HashSet::new();
    let mut logical_ids: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(req.server_groups.len());
    for (i, g) in req.server_groups.iter().enumerate() {
        let member = format!("{LIST}[{i}].serverGroupId");
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
        if let Some(order) = g.launch_order {
            if !(0..=i64::from(i32::MAX)).contains(&order) {
                return Err(invalid(format!(
                    "{LIST}[{i}].launchOrder {order} must be 0 or more"
                )));
            }
        }
        let mut servers = Vec::with_capacity(g.servers.len());
        for (j, s) in g.servers.iter().enumerate() {
            let at = format!("{LIST}[{i}].serverLaunchConfigurations[{j}]");
            let sid = required(
                &format!("{at}.server.serverId"),
                s.server_id.as_deref().unwrap_or_default(),
            )?;
            if !group.servers.iter().any(|x| x.server_id == sid) {
                let why = if app.has_server(sid) {
                    format!("is in another group of application {}", app.app_id)
                } else {
                    format!("is not a member of application {}", app.app_id)
                };
                return Err(invalid(format!(
                    "{at}.server.serverId: server {sid} {why}, not in group {gid}"
                )));
            }
            if !servers_seen.insert(sid.to_string()) {
                return Err(invalid(format!(
                    "{at}.server.serverId: server {sid} is configured twice"
                )));
            }
            let checked = check_server(&at, s)?;
            let lid = checked
                .logical_id
                .clone()
                .unwrap_or_else(|| default_logical_id(sid));
            if let Some(other) = logical_ids.insert(lid.clone(), sid.to_string()) {
                return Err(invalid(format!(
                    "{at}.logicalId {lid:?} is also the logical id of server {other}; logical ids must be unique"
                )));
            }
            servers.push(checked);
        }
        out.push(ServerGroupLaunchConfiguration {
            server_group_id: Some(gid.to_string()),
            launch_order: g.launch_order,
            servers,
        });
    }
    Ok(LaunchConfiguration {
        role_name: req.role_name.clone(),
        auto_launch: req.auto_launch,
        server_groups: out,
    })
}

impl Service {
    /// PutAppLaunchConfiguration: checks the whole configuration, then replaces the stored one
    /// in one conditional write of the application.
    #[tracing::instrument(name = "put_app_launch_configuration", skip(self, req))]
    pub async fn put_app_launch_configuration(
        &self,
        id: &str,
        req: LaunchConfiguration,
    ) -> Result<()> {
        let id = app_id("appId", id)?;
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            let config = check_launch_configuration(&app, &req)?;
            app.launch_configuration = Some(config);
            app.last_modified = self.now();
            self.store
                .write(put(keys::app(&id), &app, stored.expect())?)
                .await?;
            Ok(())
        })
    }

    /// GetAppLaunchConfiguration: the stored configuration by the application's current groups
    /// (no groups and no role when none is stored).
    pub async fn get_app_launch_configuration(&self, id: &str) -> Result<LaunchConfigurationView> {
        let id = app_id("appId", id)?;
        let app = self.app(&id).await?.value;
        let Some(config) = &app.launch_configuration else {
            return Ok(LaunchConfigurationView {
                app_id: id,
                role_name: None,
                auto_launch: None,
                server_groups: Vec::new(),
            });
        };
        let jobs = self.app_jobs(&app).await?;
        let server_groups = config
            .server_groups
            .iter()
            .filter_map(|g| {
                let gid = g.server_group_id.as_deref()?;
                let group = app
                    .server_groups
                    .iter()
                    .find(|x| x.server_group_id == gid)?;
                let servers = g
                    .servers
                    .iter()
                    .filter_map(|s| {
                        let sid = s.server_id.as_deref()?;
                        let member = group.servers.iter().find(|x| x.server_id == sid)?;
                        Some((Self::server_view(&app, member, &jobs), s.clone()))
                    })
                    .collect();
                Some(GroupLaunchView {
                    server_group_id: gid.to_string(),
                    launch_order: g.launch_order,
                    servers,
                })
            })
            .collect();
        Ok(LaunchConfigurationView {
            app_id: id,
            role_name: config.role_name.clone(),
            auto_launch: Some(config.auto_launch),
            server_groups,
        })
    }

    /// DeleteAppLaunchConfiguration; refused while the application is launched (its stack was
    /// made from the configuration).
    pub async fn delete_app_launch_configuration(&self, id: &str) -> Result<()> {
        let id = app_id("appId", id)?;
        retrying!(self, id, async {
            let stored = self.app(&id).await?;
            let mut app = stored.value.clone();
            if app.launch.as_ref().is_some_and(|l| l.is_live()) {
                return Err(not_permitted(format!(
                    "application {id} is launched; terminate it (TerminateApp) before deleting its launch configuration"
                )));
            }
            if app.launch_configuration.take().is_none() {
                return Ok(());
            }
            app.last_modified = self.now();
            self.store
                .write(put(keys::app(&id), &app, stored.expect())?)
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::app;
    use super::*;

    fn server(id: &str) -> ServerLaunchConfiguration {
        ServerLaunchConfiguration {
            server_id: Some(id.into()),
            ..Default::default()
        }
    }

    fn config(servers: Vec<ServerLaunchConfiguration>) -> LaunchConfiguration {
        LaunchConfiguration {
            role_name: Some("launch-role".into()),
            auto_launch: false,
            server_groups: vec![ServerGroupLaunchConfiguration {
                server_group_id: Some("sg-1".into()),
                launch_order: Some(1),
                servers,
            }],
        }
    }

    /// The error's kind and message for a configuration of group sg-1 holding `servers`.
    fn refused(servers: Vec<ServerLaunchConfiguration>) -> (bool, String) {
        match check_launch_configuration(&app(&[]), &config(servers)) {
            Ok(_) => panic!("accepted"),
            Err(DomainError::MissingParameter(m)) => (true, m),
            Err(DomainError::InvalidParameter(m)) => (false, m),
            Err(e) => panic!("{e}"),
        }
    }

    fn loc(bucket: &str, key: &str) -> S3Location {
        S3Location::new(bucket, key)
    }

    #[test]
    fn a_full_configuration_is_accepted_as_given() {
        let s = ServerLaunchConfiguration {
            server_id: Some("s-a".into()),
            logical_id: Some("WebServer1".into()),
            vpc: Some("vpc-0123abcd".into()),
            subnet: Some("subnet-0123456789abcdef0".into()),
            security_group: Some("sg-0123abcd".into()),
            ec2_key_name: Some("my key".into()),
            user_data: Some(UserData {
                s3_location: Some(loc("sms-app-scripts", "web/user-data.sh")),
            }),
            instance_type: Some("t3.medium".into()),
            associate_public_ip_address: Some(true),
            iam_instance_profile_name: Some("web-profile".into()),
            configure_script: Some(loc("sms-app-scripts", "web/configure.sh")),
            configure_script_type: Some(ScriptType::ShellScript),
        };
        let got = check_launch_configuration(&app(&[]), &config(vec![s.clone(), server("s-b")]))
            .expect("valid");
        assert_eq!(got, config(vec![s, server("s-b")]));
    }

    #[test]
    fn every_constraint_is_refused_naming_the_member() {
        let at = "serverGroupLaunchConfigurations[0].serverLaunchConfigurations[0]";
        let with = |f: &dyn Fn(&mut ServerLaunchConfiguration)| {
            let mut s = server("s-a");
            f(&mut s);
            refused(vec![s])
        };
        let cases: Vec<(bool, &str, (bool, String))> = vec![
            (true, "server.serverId", refused(vec![server(" ")])),
            (false, "not a member", refused(vec![server("s-zzz")])),
            (
                false,
                "configured twice",
                refused(vec![server("s-a"), server("s-a")]),
            ),
            (
                false,
                "logicalId",
                with(&|s| s.logical_id = Some("web-1".into())),
            ),
            (false, "vpc", with(&|s| s.vpc = Some("vpc-12".into()))),
            (
                false,
                "subnet",
                with(&|s| s.subnet = Some("sg-0123abcd".into())),
            ),
            (
                false,
                "securityGroup",
                with(&|s| s.security_group = Some("default".into())),
            ),
            (
                false,
                "ec2KeyName",
                with(&|s| s.ec2_key_name = Some(String::new())),
            ),
            (
                false,
                "instanceType",
                with(&|s| s.instance_type = Some("large".into())),
            ),
            (
                false,
                "iamInstanceProfileName",
                with(&|s| s.iam_instance_profile_name = Some("a b".into())),
            ),
            (
                true,
                "userData.s3Location",
                with(&|s| s.user_data = Some(UserData::default())),
            ),
            (
                false,
                "userData.s3Location.bucket",
                with(&|s| {
                    s.user_data = Some(UserData {
                        s3_location: Some(loc("ab", "k")),
                    })
                }),
            ),
            (
                false,
                "userData.s3Location.key",
                with(&|s| {
                    s.user_data = Some(UserData {
                        s3_location: Some(loc("bucket", &"k".repeat(1025))),
                    })
                }),
            ),
            (
                true,
                "configureScript.key",
                with(&|s| {
                    s.configure_script = Some(S3Location {
                        bucket: Some("bucket".into()),
                        key: None,
                    });
                    s.configure_script_type = Some(ScriptType::ShellScript);
                }),
            ),
            (
                true,
                "configureScriptType",
                with(&|s| s.configure_script = Some(loc("bucket", "k"))),
            ),
            (
                false,
                "configureScriptType",
                with(&|s| s.configure_script_type = Some(ScriptType::PowershellScript)),
            ),
        ];
        for (want_missing, member, (is_missing, message)) in cases {
            assert_eq!(is_missing, want_missing, "{member}: {message}");
            assert!(message.contains(member), "{member}: {message}");
            if member != "not a member" && member != "configured twice" {
                assert!(message.contains(at), "{member}: {message}");
            }
        }
        // Logical ids are unique, also against the default of a server without one.
        let (_, m) = refused(vec![
            ServerLaunchConfiguration {
                logical_id: Some(default_logical_id("s-b")),
                ..server("s-a")
            },
            server("s-b"),
        ]);
        assert!(
            m.contains("logical ids must be unique") && m.contains("s-a"),
            "{m}"
        );
    }

    #[test]
    fn groups_roles_and_orders_are_checked() {
        let a = app(&[]);
        let mut c = config(vec![]);
        c.server_groups[0].server_group_id = Some("sg-9".into());
        let e = check_launch_configuration(&a, &c).unwrap_err().to_string();
        assert!(
            e.contains("serverGroupLaunchConfigurations[0].serverGroupId") && e.contains("sg-9"),
            "{e}"
        );
        let mut c = config(vec![]);
        c.server_groups.push(c.server_groups[0].clone());
        let e = check_launch_configuration(&a, &c).unwrap_err().to_string();
        assert!(
            e.contains("[1].serverGroupId") && e.contains("twice"),
            "{e}"
        );
        let mut c = config(vec![]);
        c.server_groups[0].launch_order = Some(-1);
        let e = check_launch_configuration(&a, &c).unwrap_err().to_string();
        assert!(e.contains("launchOrder"), "{e}");
        let mut c = config(vec![]);
        c.role_name = Some("r".repeat(65));
        let e = check_launch_configuration(&a, &c).unwrap_err().to_string();
        assert!(e.contains("roleName"), "{e}");
        let mut c = config(vec![]);
        c.server_groups[0].server_group_id = None;
        assert!(matches!(
            check_launch_configuration(&a, &c),
            Err(DomainError::MissingParameter(_))
        ));
    }
}
