//! GenerateTemplate and GenerateChangeSet (SMS §2.7): a CloudFormation template of the
//! application from its launch configuration and the latest AMI of each server's replication
//! job, and for a launched application what a relaunch on the newest AMIs would change. Both
//! are written to the staging bucket through the `Staging` port:
//!
//! ```text
//! apps/<appId>/template.json | template.yaml     GenerateTemplate
//! apps/<appId>/changeset.json | changeset.yaml   GenerateChangeSet
//! ```
//!
//! The template has one `AWS::EC2::Instance` per server (logical id from the launch
//! configuration, else `Server` + the server id's alphanumerics). Groups start in `launchOrder`
//! (groups without one last, in application order): each instance `DependsOn` every instance of
//! the nearest earlier launch order. User data is the user-data object, and a configure script
//! is added to it (a `multipart/mixed` cloud-init archive for shell scripts, a `<powershell>`
//! block for PowerShell), read through the staging port so an unreadable object is refused
//! before anything is written. Application tags go on every instance (SMS: "tags are
//! propagated to every resource"), with `Name` and Tern's `tern:appId` / `tern:serverId`.
//! Parameters: `DefaultInstanceType`, only when a server has no instance type. Outputs: each
//! instance's id and private IP.

use serde_json::{json, Map};

use super::launch::default_logical_id;
use super::*;
use crate::images::StagedObject;
use crate::staging::{Staging, StagingError};

/// EC2 refuses user data over 16 KiB (before base64).
const MAX_USER_DATA: usize = 16 * 1024;
/// Instance type of servers whose launch configuration names none (a parameter's default).
const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";

/// One server as the template launches it.
pub(super) struct Planned<'a> {
    pub(super) server: &'a AppServer,
    config: Option<&'a ServerLaunchConfiguration>,
    logical_id: String,
    pub(super) image: String,
    /// The position of its group's launch order among the distinct orders (0 = first).
    level: usize,
}

/// Where the objects of an application go in the staging bucket.
fn object_key(app_id: &str, what: &str, format: OutputFormat) -> String {
    let ext = match format {
        OutputFormat::Json => "json",
        OutputFormat::Yaml => "yaml",
    };
    format!("apps/{app_id}/{what}.{ext}")
}

/// A document as JSON (pretty) or YAML.
pub(crate) fn render(doc: &Value, format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(doc).unwrap_or_default();
            s.push('\n');
            s
        }
        OutputFormat::Yaml => yaml::to_string(doc),
    }
}

fn content_type(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Json => "application/json",
        OutputFormat::Yaml => "application/x-yaml",
    }
}

/// A block-style YAML writer for JSON documents. Every string is written double-quoted with
/// JSON escapes (valid YAML 1.2 double-quoted scalars), so no value is ever read back as
/// another type (`"yes"`, `"1.0"`, `"null"` stay strings).
mod yaml {
    use serde_json::Value;

    pub fn to_string(doc: &Value) -> String {
        let mut out = String::new();
        match doc {
            Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
            Value::Array(a) if !a.is_empty() => write_list(&mut out, a, 0),
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
        out
    }

    fn scalar(v: &Value) -> String {
        match v {
            Value::Object(_) => "{}".into(),
            Value::Array(_) => "[]".into(),
            // Strings, numbers, booleans and null are all valid YAML in their JSON form.
            other => other.to_string(),
        }
    }

    fn is_block(v: &Value) -> bool {
        matches!(v, Value::Object(m) if !m.is_empty())
            || matches!(v, Value::Array(a) if !a.is_empty())
    }

    fn write_map(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
        for (k, v) in m {
            out.push_str(&" ".repeat(indent));
            out.push_str(&Value::String(k.clone()).to_string());
            out.push(':');
            write_value(out, v, indent);
        }
    }

    fn write_list(out: &mut String, a: &[Value], indent: usize) {
        for v in a {
            out.push_str(&" ".repeat(indent));
            out.push('-');
            write_value(out, v, indent);
        }
    }

    /// The value after `key:` or `-`, block values on the following lines.
    fn write_value(out: &mut String, v: &Value, indent: usize) {
        match v {
            Value::Object(m) if is_block(v) => {
                out.push('\n');
                write_map(out, m, indent + 2);
            }
            Value::Array(a) if is_block(v) => {
                out.push('\n');
                write_list(out, a, indent + 2);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

/// A staging failure reading an object the launch configuration names, as the caller's error.
fn unreadable(what: &str, loc: &S3Location, fix_with: &str, e: StagingError) -> DomainError {
    let at = format!(
        "s3://{}/{}",
        loc.bucket.as_deref().unwrap_or_default(),
        loc.key.as_deref().unwrap_or_default()
    );
    match e {
        StagingError::NotFound(_) => invalid(format!(
            "{what} {at} does not exist; upload it or change the configuration ({fix_with})"
        )),
        StagingError::TooLarge(_) => invalid(format!(
            "{what} {at} is larger than the {MAX_USER_DATA} bytes EC2 accepts as user data"
        )),
        other => DomainError::Staging(other),
    }
}

/// Reads a user-data, configure or validation script object; `fix_with` names the operation
/// that points at it, for the message when it is missing.
async fn read_object(
    staging: &dyn Staging,
    what: &str,
    loc: &S3Location,
    fix_with: &str,
) -> Result<Vec<u8>> {
    let obj = StagedObject {
        bucket: loc.bucket.clone().unwrap_or_default(),
        key: loc.key.clone().unwrap_or_default(),
    };
    staging
        .get_object(&obj, MAX_USER_DATA as u64)
        .await
        .map_err(|e| unreadable(what, loc, fix_with, e))
}

const LAUNCH_CONFIG: &str = "PutAppLaunchConfiguration";

/// The instance's user data: the user-data object, with the configure script and the
/// server's USERDATA validation scripts added.
async fn user_data(
    staging: &dyn Staging,
    server_id: &str,
    c: &ServerLaunchConfiguration,
    validations: &[&ServerValidation],
) -> Result<Option<String>> {
    let text = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes).map_err(|_| {
            invalid(format!(
                "the {what} of server {server_id} is not UTF-8 text; CloudFormation user data must be text"
            ))
        })
    };
    let data = match c.user_data.as_ref().and_then(|u| u.s3_location.as_ref()) {
        Some(loc) => Some(text(
            read_object(
                staging,
                &format!("the user data of server {server_id}"),
                loc,
                LAUNCH_CONFIG,
            )
            .await?,
            "user data",
        )?),
        None => None,
    };
    let script = match &c.configure_script {
        Some(loc) => Some(text(
            read_object(
                staging,
                &format!("the configure script of server {server_id}"),
                loc,
                LAUNCH_CONFIG,
            )
            .await?,
            "configure script",
        )?),
        None => None,
    };
    let mut checks = Vec::new();
    for v in validations {
        let (Some(vid), Some(loc)) = (
            &v.validation_id,
            v.user_data_validation_parameters
                .as_ref()
                .and_then(|p| p.source.as_ref()),
        ) else {
            continue;
        };
        let what = format!("validation script {vid} of server {server_id}");
        let bytes = read_object(staging, &what, loc, "PutAppValidationConfiguration").await?;
        let body = text(bytes, "validation script")?;
        checks.push((
            format!("tern-validation-{vid}"),
            validation_part(vid, &body),
        ));
    }
    let mut parts: Vec<(String, String)> = Vec::new();
    let combined = match (data, script) {
        (Some(d), Some(s)) if c.configure_script_type == Some(ScriptType::PowershellScript) => {
            Some(format!("{d}\n<powershell>\n{s}\n</powershell>\n"))
        }
        (d, s) => {
            parts.extend(d.map(|d| ("user-data".to_string(), d)));
            parts.extend(s.map(|s| ("configure-script".to_string(), s)));
            None
        }
    };
    parts.extend(checks);
    let combined = match (combined, parts.len()) {
        (Some(c), 0) => Some(c),
        (Some(c), _) => {
            parts.insert(0, ("user-data".to_string(), c));
            Some(multipart(&parts))
        }
        (None, 0) => None,
        (None, 1) => parts.pop().map(|(_, p)| p),
        (None, _) => Some(multipart(&parts)),
    };
    if let Some(u) = &combined {
        if u.len() > MAX_USER_DATA {
            return Err(invalid(format!(
                "the user data of server {server_id} with its configure and validation scripts is {} bytes; EC2 accepts at most {MAX_USER_DATA}",
                u.len()
            )));
        }
    }
    Ok(combined)
}

/// A USERDATA validation script as the instance runs it: between console markers that carry
/// its id and, at the end, its exit status (read back by GetAppValidationOutput).
pub(super) fn validation_part(validation_id: &str, script: &str) -> String {
    let body = if script.starts_with("#!") {
        script.to_string()
    } else {
        format!("#!/bin/sh\n{script}")
    };
    format!(
        "#!/bin/sh\n# Tern: validation {validation_id}, its output and exit status on the console.\nmkdir -p /tmp\nf=/tmp/{VALIDATION_FILE}-{validation_id}\ncat > \"$f\" <<'TERN_VALIDATION_SCRIPT_END'\n{body}\nTERN_VALIDATION_SCRIPT_END\nchmod +x \"$f\"\necho \"{VALIDATION_BEGIN} {validation_id}\"\n\"$f\" 2>&1\necho \"{VALIDATION_END} {validation_id} $?\"\n"
    )
}

const VALIDATION_FILE: &str = "tern-validation";
/// The console line a validation script's output begins after.
pub(crate) const VALIDATION_BEGIN: &str = "TERN-VALIDATION-BEGIN";
/// The console line that ends it: `TERN-VALIDATION-END <id> <exit status>`.
pub(crate) const VALIDATION_END: &str = "TERN-VALIDATION-END";

/// A cloud-init `multipart/mixed` archive of named parts (user data, configure script,
/// validation scripts), in the order they run.
fn multipart(parts: &[(String, String)]) -> String {
    const BOUNDARY: &str = "==TernUserData==";
    let kind = |s: &str| {
        if s.starts_with("#cloud-config") {
            "text/cloud-config"
        } else {
            "text/x-shellscript"
        }
    };
    let mut out =
        format!("Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\nMIME-Version: 1.0\n\n");
    for (name, part) in parts {
        out.push_str(&format!(
            "--{BOUNDARY}\nContent-Type: {}; charset=\"utf-8\"\nContent-Disposition: attachment; filename=\"{name}\"\n\n{part}\n",
            kind(part)
        ));
    }
    out.push_str(&format!("--{BOUNDARY}--\n"));
    out
}

impl Service {
    /// Every server of the application with its launch settings, logical id, latest AMI and
    /// launch level, in launch order. Refused when a server has no AMI yet.
    pub(super) async fn plan<'a>(
        &self,
        app: &'a App,
        jobs: &HashMap<String, Option<ReplicationJob>>,
    ) -> Result<Vec<Planned<'a>>> {
        let config = app.launch_configuration.as_ref();
        let group_config = |gid: &str| {
            config.and_then(|c| {
                c.server_groups
                    .iter()
                    .find(|g| g.server_group_id.as_deref() == Some(gid))
            })
        };
        let mut groups: Vec<(i64, usize, &AppServerGroup)> = app
            .server_groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let order = group_config(&g.server_group_id)
                    .and_then(|c| c.launch_order)
                    .unwrap_or(i64::MAX);
                (order, i, g)
            })
            .collect();
        groups.sort_by_key(|(order, i, _)| (*order, *i));
        let mut orders: Vec<i64> = groups.iter().map(|(o, _, _)| *o).collect();
        orders.dedup();
        let mut planned = Vec::new();
        let mut missing_images = Vec::new();
        for (order, _, g) in &groups {
            let gc = group_config(&g.server_group_id);
            for s in &g.servers {
                let sc = gc.and_then(|gc| {
                    gc.servers
                        .iter()
                        .find(|x| x.server_id.as_deref() == Some(s.server_id.as_str()))
                });
                let job_id = app.replication_jobs.get(&s.server_id);
                let image = job_id
                    .and_then(|j| jobs.get(j))
                    .and_then(|j| j.as_ref())
                    .and_then(|j| j.latest_ami_id.clone());
                let Some(image) = image else {
                    missing_images.push(match job_id {
                        None => format!("{} (no replication job)", s.server_id),
                        Some(j) => format!("{} (job {j} has no AMI yet)", s.server_id),
                    });
                    continue;
                };
                planned.push(Planned {
                    server: s,
                    config: sc,
                    logical_id: sc
                        .and_then(|c| c.logical_id.clone())
                        .unwrap_or_else(|| default_logical_id(&s.server_id)),
                    image,
                    level: orders.iter().position(|o| o == order).unwrap_or(0),
                });
            }
        }
        if app.servers().next().is_none() {
            return Err(invalid(format!(
                "application {} has no servers to launch",
                app.app_id
            )));
        }
        if !missing_images.is_empty() {
            return Err(invalid(format!(
                "launch before any AMI exists: application {} has no AMI yet for {}; start its replication (StartAppReplication) and wait until its replicationStatus is REPLICATED",
                app.app_id,
                list_names(&missing_images)
            )));
        }
        Ok(planned)
    }

    /// The CloudFormation template of `app` (see the module comment).
    pub(super) async fn template(
        &self,
        staging: &dyn Staging,
        app: &App,
        planned: &[Planned<'_>],
    ) -> Result<Value> {
        let mut resources = Map::new();
        let mut outputs = Map::new();
        let mut needs_default_type = false;
        for p in planned {
            let c = p.config.cloned().unwrap_or_default();
            let mut props = Map::new();
            props.insert("ImageId".into(), json!(p.image));
            props.insert(
                "InstanceType".into(),
                match &c.instance_type {
                    Some(t) => json!(t),
                    None => {
                        needs_default_type = true;
                        json!({"Ref": "DefaultInstanceType"})
                    }
                },
            );
            if let Some(k) = &c.ec2_key_name {
                props.insert("KeyName".into(), json!(k));
            }
            if let Some(r) = &c.iam_instance_profile_name {
                props.insert("IamInstanceProfile".into(), json!(r));
            }
            let groups: Vec<&String> = c.security_group.iter().collect();
            if let Some(public) = c.associate_public_ip_address {
                let mut nic = Map::new();
                nic.insert("DeviceIndex".into(), json!("0"));
                nic.insert("AssociatePublicIpAddress".into(), json!(public));
                if let Some(s) = &c.subnet {
                    nic.insert("SubnetId".into(), json!(s));
                }
                if !groups.is_empty() {
                    nic.insert("GroupSet".into(), json!(groups));
                }
                props.insert("NetworkInterfaces".into(), json!([nic]));
            } else {
                if let Some(s) = &c.subnet {
                    props.insert("SubnetId".into(), json!(s));
                }
                if !groups.is_empty() {
                    props.insert("SecurityGroupIds".into(), json!(groups));
                }
            }
            let validations: Vec<&ServerValidation> = app
                .validation_configuration
                .iter()
                .flat_map(|v| v.server_validations())
                .filter(|(_, sid, v)| {
                    *sid == p.server.server_id
                        && v.server_validation_strategy == Some(ServerValidationStrategy::Userdata)
                })
                .map(|(_, _, v)| v)
                .collect();
            if let Some(u) = user_data(staging, &p.server.server_id, &c, &validations).await? {
                props.insert("UserData".into(), json!({"Fn::Base64": u}));
            }
            let vm_name = p.server.vm_server.vm_name.clone();
            let mut tags = vec![
                json!({"Key": "Name", "Value": vm_name.clone().unwrap_or_else(|| p.logical_id.clone())}),
                json!({"Key": "tern:appId", "Value": app.app_id}),
                json!({"Key": "tern:serverId", "Value": p.server.server_id}),
            ];
            for t in &app.tags {
                if !matches!(t.key.as_str(), "Name" | "tern:appId" | "tern:serverId") {
                    tags.push(json!({"Key": t.key, "Value": t.value}));
                }
            }
            props.insert("Tags".into(), json!(tags));
            let mut resource = Map::new();
            resource.insert("Type".into(), json!("AWS::EC2::Instance"));
            if p.level > 0 {
                let before: Vec<&str> = planned
                    .iter()
                    .filter(|q| q.level + 1 == p.level)
                    .map(|q| q.logical_id.as_str())
                    .collect();
                resource.insert("DependsOn".into(), json!(before));
            }
            let mut meta = Map::new();
            meta.insert("serverId".into(), json!(p.server.server_id));
            if let Some(n) = &vm_name {
                meta.insert("vmName".into(), json!(n));
            }
            if let Some(v) = &c.vpc {
                meta.insert("vpc".into(), json!(v));
            }
            if let Some(j) = app.replication_jobs.get(&p.server.server_id) {
                meta.insert("replicationJobId".into(), json!(j));
            }
            meta.insert("launchLevel".into(), json!(p.level + 1));
            resource.insert("Metadata".into(), json!({"Tern::Server": meta}));
            resource.insert("Properties".into(), Value::Object(props));
            resources.insert(p.logical_id.clone(), Value::Object(resource));
            let described = match &vm_name {
                Some(n) => format!("server {} ({n})", p.server.server_id),
                None => format!("server {}", p.server.server_id),
            };
            outputs.insert(
                format!("{}InstanceId", p.logical_id),
                json!({"Description": format!("Instance of {described}"),
                       "Value": {"Ref": p.logical_id}}),
            );
            outputs.insert(
                format!("{}PrivateIp", p.logical_id),
                json!({"Description": format!("Private IP address of {described}"),
                       "Value": {"Fn::GetAtt": [p.logical_id, "PrivateIp"]}}),
            );
        }
        let levels = planned.iter().map(|p| p.level).max().map_or(0, |l| l + 1);
        let mut doc = Map::new();
        doc.insert("AWSTemplateFormatVersion".into(), json!("2010-09-09"));
        doc.insert(
            "Description".into(),
            json!(format!(
                "Application {}{} migrated by Tern: {} servers in {levels} launch steps",
                app.app_id,
                app.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                planned.len()
            )),
        );
        if needs_default_type {
            doc.insert(
                "Parameters".into(),
                json!({"DefaultInstanceType": {
                    "Type": "String",
                    "Default": DEFAULT_INSTANCE_TYPE,
                    "Description": "Instance type of the servers whose launch configuration names none"
                }}),
            );
        }
        doc.insert("Resources".into(), Value::Object(resources));
        doc.insert("Outputs".into(), Value::Object(outputs));
        Ok(Value::Object(doc))
    }

    /// GenerateTemplate: writes the application's template to `bucket` through `staging` and
    /// answers its location.
    #[tracing::instrument(name = "generate_template", skip(self, staging))]
    pub async fn generate_template(
        &self,
        staging: &dyn Staging,
        bucket: &str,
        id: &str,
        format: Option<OutputFormat>,
    ) -> Result<S3Location> {
        let id = app_id("appId", id)?;
        let format = format.unwrap_or(OutputFormat::Json);
        let app = self.app(&id).await?.value;
        let jobs = self.app_jobs(&app).await?;
        let planned = self.plan(&app, &jobs).await?;
        let doc = self.template(staging, &app, &planned).await?;
        let key = object_key(&id, "template", format);
        let obj = StagedObject {
            bucket: bucket.to_string(),
            key: key.clone(),
        };
        staging
            .put_object(
                &obj,
                render(&doc, format).into_bytes(),
                content_type(format),
            )
            .await?;
        tracing::info!(app_id = %id, key = %key, "template written");
        Ok(S3Location::new(bucket, key))
    }

    /// GenerateChangeSet: for a launched application, the instances a relaunch on the newest
    /// AMIs would replace (their ImageId changes), add or remove, in the shape of
    /// CloudFormation's DescribeChangeSet `Changes`.
    #[tracing::instrument(name = "generate_change_set", skip(self, staging))]
    pub async fn generate_change_set(
        &self,
        staging: &dyn Staging,
        bucket: &str,
        id: &str,
        format: Option<OutputFormat>,
    ) -> Result<S3Location> {
        let id = app_id("appId", id)?;
        let format = format.unwrap_or(OutputFormat::Json);
        let app = self.app(&id).await?.value;
        let Some(launch) = app.launch.as_ref().filter(|l| l.is_live()) else {
            return Err(invalid(format!(
                "the application {id} has not been launched: GenerateChangeSet describes what a relaunch of a launched application would change; generate its template (GenerateTemplate) instead"
            )));
        };
        let jobs = self.app_jobs(&app).await?;
        let planned = self.plan(&app, &jobs).await?;
        let mut changes = Vec::new();
        for p in &planned {
            let change = match launch.images.get(&p.server.server_id) {
                Some(old) if *old == p.image => continue,
                Some(old) => json!({"Action": "Modify", "Replacement": "True",
                    "Details": [{"Target": {"Attribute": "Properties", "Name": "ImageId",
                        "RequiresRecreation": "Always"}, "Before": old, "After": p.image}]}),
                None => json!({"Action": "Add"}),
            };
            let mut rc = change.as_object().cloned().unwrap_or_default();
            rc.insert("LogicalResourceId".into(), json!(p.logical_id));
            rc.insert("ResourceType".into(), json!("AWS::EC2::Instance"));
            changes.push(json!({"Type": "Resource", "ResourceChange": rc}));
        }
        for (server, _) in launch
            .images
            .iter()
            .filter(|(s, _)| !planned.iter().any(|p| &p.server.server_id == *s))
        {
            changes.push(json!({"Type": "Resource", "ResourceChange": {
                "Action": "Remove", "LogicalResourceId": default_logical_id(server),
                "ResourceType": "AWS::EC2::Instance"}}));
        }
        let doc = json!({
            "AppId": id,
            "StackName": launch.stack_name,
            "StackId": launch.stack_id,
            "CreationTime": self.now().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "Changes": changes,
        });
        let key = object_key(&id, "changeset", format);
        let obj = StagedObject {
            bucket: bucket.to_string(),
            key: key.clone(),
        };
        staging
            .put_object(
                &obj,
                render(&doc, format).into_bytes(),
                content_type(format),
            )
            .await?;
        Ok(S3Location::new(bucket, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_keeps_every_value_and_type() {
        let doc = json!({"A": "yes", "B": [1, true, null, {"C": "1.0"}], "D": {}, "E": [],
            "F": {"Fn::GetAtt": ["X", "Y"]}, "G": "line\nbreak \"quoted\""});
        let y = yaml::to_string(&doc);
        assert_eq!(
            y,
            "\"A\": \"yes\"\n\"B\":\n  - 1\n  - true\n  - null\n  -\n    \"C\": \"1.0\"\n\"D\": {}\n\"E\": []\n\"F\":\n  \"Fn::GetAtt\":\n    - \"X\"\n    - \"Y\"\n\"G\": \"line\\nbreak \\\"quoted\\\"\"\n"
        );
    }

    #[test]
    fn multipart_user_data_has_both_parts() {
        let m = multipart(&[
            ("user-data".into(), "#cloud-config\nruncmd: []".into()),
            ("configure-script".into(), "#!/bin/sh\necho hi".into()),
        ]);
        assert!(
            m.contains("text/cloud-config") && m.contains("text/x-shellscript"),
            "{m}"
        );
        assert!(m.ends_with("--==TernUserData==--\n"));
    }

    #[test]
    fn a_validation_script_runs_between_markers_that_carry_its_id_and_status() {
        let v = validation_part("val-0123456789abcdef0", "test -b /dev/vda");
        assert!(v.starts_with("#!/bin/sh\n"), "{v}");
        assert!(
            v.contains("#!/bin/sh\ntest -b /dev/vda\nTERN_VALIDATION_SCRIPT_END"),
            "{v}"
        );
        assert!(
            v.contains("echo \"TERN-VALIDATION-BEGIN val-0123456789abcdef0\""),
            "{v}"
        );
        assert!(
            v.contains("echo \"TERN-VALIDATION-END val-0123456789abcdef0 $?\""),
            "{v}"
        );
        let own = validation_part("val-1", "#!/bin/bash\necho hi");
        assert!(
            own.contains("<<'TERN_VALIDATION_SCRIPT_END'\n#!/bin/bash\necho hi\n"),
            "{own}"
        );
    }
}
