//! What the local launcher runs: the `AWS::EC2::Instance` resources of an application's
//! CloudFormation template, in the order their `DependsOn` gives, with the size their instance
//! type has in EC2.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde_json::Value;

/// One instance to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePlan {
    pub logical_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The user data as the guest reads it (decoded from `Fn::Base64` or base64).
    pub user_data: Option<String>,
    /// 0 for instances that depend on nothing; every instance starts after all of a lower level
    /// run.
    pub level: usize,
    /// The `Name` tag, for listings.
    pub name: Option<String>,
    /// Tagged `UserForSMSApplicationValidation=true`: it runs app-level validation scripts.
    pub validation_target: bool,
}

/// vCPUs and MiB of memory of an EC2 instance type: the common types by name, others by their
/// size (the part after the dot), as EC2's general-purpose families size them.
pub fn instance_size(instance_type: &str) -> Option<(u32, u32)> {
    let known = match instance_type {
        "t2.nano" | "t3.nano" | "t3a.nano" | "t4g.nano" => Some((1, 512)),
        "t2.micro" => Some((1, 1024)),
        "t2.small" => Some((1, 2048)),
        "t2.medium" => Some((2, 4096)),
        "t2.large" => Some((2, 8192)),
        "m4.large" | "m5.large" | "m5a.large" | "m6i.large" | "m7i.large" => Some((2, 8192)),
        "c5.large" | "c6i.large" | "c7i.large" => Some((2, 4096)),
        "r5.large" | "r6i.large" | "r7i.large" => Some((2, 16384)),
        _ => None,
    };
    if known.is_some() {
        return known;
    }
    let (family, size) = instance_type.split_once('.')?;
    if family.is_empty()
        || !family
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return None;
    }
    Some(match size {
        "nano" => (2, 512),
        "micro" => (2, 1024),
        "small" => (2, 2048),
        "medium" => (2, 4096),
        "large" => (2, 8192),
        "xlarge" => (4, 16384),
        s => {
            let n: u32 = s.strip_suffix("xlarge")?.parse().ok()?;
            (n.checked_mul(4)?, n.checked_mul(16384)?)
        }
    })
}

/// The instances of `template`, in launch order (by level, then logical id).
pub fn plan(template: &Value) -> Result<Vec<InstancePlan>, String> {
    let resources = template
        .get("Resources")
        .and_then(Value::as_object)
        .ok_or("the template has no Resources")?;
    let parameters = template.get("Parameters").and_then(Value::as_object);
    let mut instances = BTreeMap::new();
    for (id, r) in resources {
        match r.get("Type").and_then(Value::as_str) {
            Some("AWS::EC2::Instance") => {}
            Some(other) => {
                return Err(format!(
                    "resource {id} is a {other}; the local launcher runs only AWS::EC2::Instance resources"
                ))
            }
            None => return Err(format!("resource {id} has no Type")),
        }
        instances.insert(id.clone(), r);
    }
    if instances.is_empty() {
        return Err("the template has no AWS::EC2::Instance to launch".into());
    }
    let mut plans = Vec::new();
    let mut depends: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (id, r) in &instances {
        let props = r.get("Properties").and_then(Value::as_object);
        let prop = |k: &str| props.and_then(|p| p.get(k));
        let image_id = resolve(prop("ImageId"), parameters)
            .ok_or_else(|| format!("instance {id} has no ImageId"))?;
        let instance_type = resolve(prop("InstanceType"), parameters)
            .ok_or_else(|| format!("instance {id} has no InstanceType"))?;
        let (vcpus, memory_mib) = instance_size(&instance_type).ok_or_else(|| {
            format!("instance {id}: {instance_type:?} is not an EC2 instance type")
        })?;
        let user_data = match prop("UserData") {
            None => None,
            Some(v) => Some(user_data(v).map_err(|e| format!("instance {id}: UserData {e}"))?),
        };
        let tag = |key: &str| {
            prop("Tags")
                .and_then(Value::as_array)
                .and_then(|tags| {
                    tags.iter()
                        .find(|t| t.get("Key").and_then(Value::as_str) == Some(key))
                })
                .and_then(|t| t.get("Value").and_then(Value::as_str))
                .map(str::to_string)
        };
        let name = tag("Name");
        let validation_target = tag(tern_core::launcher::VALIDATION_INSTANCE_TAG)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let deps = match r.get("DependsOn") {
            None => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|d| {
                    d.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("instance {id}: DependsOn holds a non-string"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("instance {id}: DependsOn is not a name or a list")),
        };
        for d in &deps {
            if !instances.contains_key(d) {
                return Err(format!(
                    "instance {id} depends on {d}, which is not an instance of the template"
                ));
            }
        }
        depends.insert(id, deps);
        plans.push(InstancePlan {
            logical_id: id.clone(),
            image_id,
            instance_type,
            vcpus,
            memory_mib,
            user_data,
            level: 0,
            name,
            validation_target,
        });
    }
    // Levels: an instance's level is one more than its highest dependency's.
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    let mut placed = BTreeSet::new();
    while placed.len() < depends.len() {
        let before = placed.len();
        for (id, deps) in &depends {
            if placed.contains(id) || !deps.iter().all(|d| placed.contains(d.as_str())) {
                continue;
            }
            let l = deps
                .iter()
                .map(|d| level[d.as_str()] + 1)
                .max()
                .unwrap_or(0);
            level.insert(id, l);
            placed.insert(*id);
        }
        if placed.len() == before {
            let stuck: Vec<&str> = depends
                .keys()
                .filter(|k| !placed.contains(*k))
                .copied()
                .collect();
            return Err(format!(
                "the DependsOn of {} form a cycle",
                stuck.join(", ")
            ));
        }
    }
    for p in &mut plans {
        p.level = level[p.logical_id.as_str()];
    }
    plans.sort_by(|a, b| (a.level, &a.logical_id).cmp(&(b.level, &b.logical_id)));
    Ok(plans)
}

/// A string property, literal or `{"Ref": parameter}` with a default.
fn resolve(
    v: Option<&Value>,
    parameters: Option<&serde_json::Map<String, Value>>,
) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => {
            let name = o.get("Ref")?.as_str()?;
            parameters?
                .get(name)?
                .get("Default")?
                .as_str()
                .map(str::to_string)
        }
        _ => None,
    }
}

fn user_data(v: &Value) -> Result<String, String> {
    match v {
        Value::Object(o) => match o.get("Fn::Base64") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err("is neither base64 text nor {\"Fn::Base64\": text}".into()),
        },
        Value::String(s) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| format!("is not base64 ({e})"))?;
            String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".into())
        }
        _ => Err("is neither base64 text nor {\"Fn::Base64\": text}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance(image: &str, depends: Option<Value>) -> Value {
        let mut r = json!({"Type": "AWS::EC2::Instance",
            "Properties": {"ImageId": image, "InstanceType": {"Ref": "DefaultInstanceType"},
                "Tags": [{"Key": "Name", "Value": format!("vm-{image}")}]}});
        if let Some(d) = depends {
            r["DependsOn"] = d;
        }
        r
    }

    #[test]
    fn instances_start_in_dependency_levels_with_their_type_s_size() {
        let mut t = json!({
        "Parameters": {"DefaultInstanceType": {"Type": "String", "Default": "t3.small"}},
        "Resources": {
            "Web": instance("ami-3", Some(json!(["App"]))),
            "Db": instance("ami-1", None),
            "App": instance("ami-2", Some(json!("Db"))),
            "Cache": instance("ami-4", None),
        }});
        t["Resources"]["Web"]["Properties"]["InstanceType"] = json!("m5.2xlarge");
        t["Resources"]["Db"]["Properties"]["UserData"] =
            json!({"Fn::Base64": "#!/bin/sh\necho hi\n"});
        t["Resources"]["App"]["Properties"]["UserData"] = json!("I2Nsb3VkLWNvbmZpZwo=");
        let p = plan(&t).unwrap();
        let order: Vec<(&str, usize)> =
            p.iter().map(|p| (p.logical_id.as_str(), p.level)).collect();
        assert_eq!(order, [("Cache", 0), ("Db", 0), ("App", 1), ("Web", 2)]);
        assert_eq!(
            (p[1].vcpus, p[1].memory_mib, p[1].instance_type.as_str()),
            (2, 2048, "t3.small")
        );
        assert_eq!((p[3].vcpus, p[3].memory_mib), (8, 32768));
        assert_eq!(p[1].user_data.as_deref(), Some("#!/bin/sh\necho hi\n"));
        assert_eq!(p[2].user_data.as_deref(), Some("#cloud-config\n"));
        assert_eq!(p[0].name.as_deref(), Some("vm-ami-4"));
    }

    fn params() -> Value {
        json!({"DefaultInstanceType": {"Type": "String", "Default": "t3.micro"}})
    }

    #[test]
    fn templates_the_launcher_cannot_run_are_refused_by_name() {
        let cases = [
            (json!({}), "no Resources"),
            (json!({"Resources": {}}), "no AWS::EC2::Instance"),
            (
                json!({"Resources": {"B": {"Type": "AWS::S3::Bucket"}}}),
                "B is a AWS::S3::Bucket",
            ),
            (
                json!({"Parameters": params(), "Resources": {"A": instance("ami-1", Some(json!(["B"]))),
                                  "B": instance("ami-2", Some(json!(["A"])))}}),
                "form a cycle",
            ),
            (
                json!({"Parameters": params(), "Resources": {"A": instance("ami-1", Some(json!(["Z"])))}}),
                "depends on Z",
            ),
            (
                json!({"Resources": {"A": {"Type": "AWS::EC2::Instance",
                "Properties": {"ImageId": "ami-1", "InstanceType": "banana"}}}}),
                "\"banana\" is not",
            ),
            (
                json!({"Resources": {"A": {"Type": "AWS::EC2::Instance",
                "Properties": {"ImageId": "ami-1", "InstanceType": "t3.micro", "UserData": "%%"}}}}),
                "not base64",
            ),
        ];
        for (t, want) in cases {
            let e = plan(&t).unwrap_err();
            assert!(e.contains(want), "{t}: {e}");
        }
        // A Ref without a parameter default names the missing property.
        let t = json!({"Resources": {"A": instance("ami-1", None)}});
        assert!(plan(&t).unwrap_err().contains("A has no InstanceType"));
    }
}
