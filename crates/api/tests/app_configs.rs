//! Launch and validation configuration through `Api::handle` with raw JSON bodies against
//! `MemoryStore`: round trips, every constraint refused with the SMS error shape naming the
//! member, and validation outcomes reported through NotifyAppValidationOutput.

use std::sync::Arc;

use serde_json::{json, Value};
use tern_api::{Api, Deps, Principal, CONNECTOR_TARGET_PREFIX, SMS_TARGET_PREFIX};
use tern_core::{Config, ManualClock, MemoryStore, RandomIds};
use time::macros::datetime;

struct Env {
    api: Api,
    admin: Principal,
    agent: Principal,
}

impl Env {
    fn new() -> Self {
        Env {
            api: Api::new(Deps {
                store: Arc::new(MemoryStore::new()),
                clock: Arc::new(ManualClock::new(datetime!(2026-01-01 00:00 UTC))),
                ids: Arc::new(RandomIds),
                config: Config::default(),
            }),
            admin: Principal::Admin { id: "ADMIN".into() },
            agent: Principal::Connector { id: "AGENT".into() },
        }
    }

    async fn call(&self, target: String, body: Value, who: &Principal) -> (u16, Value) {
        let r = self
            .api
            .handle(Some(&target), body.to_string().as_bytes(), who)
            .await;
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }

    async fn ok(&self, op: &str, body: Value) -> Value {
        let (s, v) = self
            .call(format!("{SMS_TARGET_PREFIX}.{op}"), body, &self.admin)
            .await;
        assert_eq!(s, 200, "{op}: {v}");
        v
    }

    /// The error's message; asserts its shape.
    async fn err(&self, op: &str, body: Value, shape: &str) -> String {
        let (s, v) = self
            .call(format!("{SMS_TARGET_PREFIX}.{op}"), body, &self.admin)
            .await;
        assert_eq!(s, 400, "{op}: {v}");
        assert_eq!(v["__type"], json!(shape), "{op}: {v}");
        v["message"].as_str().unwrap().to_string()
    }

    async fn conn(&self, op: &str, body: Value) -> Value {
        let (s, v) = self
            .call(format!("{CONNECTOR_TARGET_PREFIX}.{op}"), body, &self.agent)
            .await;
        assert_eq!(s, 200, "{op}: {v}");
        v
    }

    /// An application of two groups (web: 2 servers, db: 1); returns (appId, [group ids],
    /// [server ids]).
    async fn app(&self) -> (String, Vec<String>, Vec<String>) {
        let c = self
            .conn(
                "RegisterConnector",
                json!({"name": "c", "version": "1", "vmManagerId": "vc", "vmManagerType": "VSPHERE"}),
            )
            .await["connectorId"]
            .as_str()
            .unwrap()
            .to_string();
        self.ok("ImportServerCatalog", json!({})).await;
        let work = self.conn("PollWork", json!({"connectorId": c})).await;
        let request = work["workItems"][0]["payload"]["requestId"].clone();
        let vms: Vec<Value> = (0..3)
            .map(|i| {
                json!({"vmId": format!("vm-{i}"), "vmName": format!("vm{i}"), "osType": "LINUX",
                "disks": [{"path": format!("/d/{i}.raw"), "format": "raw", "sizeBytes": 1048576}]})
            })
            .collect();
        self.conn(
            "ReportInventory",
            json!({"connectorId": c, "requestId": request, "vmList": vms}),
        )
        .await;
        let servers = self.ok("GetServers", json!({})).await["serverList"].clone();
        let mut ids: Vec<(String, String)> = servers
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["vmServer"]["vmServerAddress"]["vmId"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    s["serverId"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        ids.sort();
        let s: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
        let app = self
            .ok(
                "CreateApp",
                json!({"name": "shop", "serverGroups": [
                    {"name": "web", "serverList": [{"serverId": s[0]}, {"serverId": s[1]}]},
                    {"name": "db", "serverList": [{"serverId": s[2]}]}]}),
            )
            .await;
        let groups = app["serverGroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["serverGroupId"].as_str().unwrap().to_string())
            .collect();
        (
            app["appSummary"]["appId"].as_str().unwrap().to_string(),
            groups,
            s,
        )
    }
}

/// Sets the member at `pointer`, adding it to its object when absent.
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let obj = doc
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{pointer}"));
    obj.insert(key.to_string(), value);
}

fn launch(app: &str, g: &[String], s: &[String]) -> Value {
    json!({"appId": app, "roleName": "sms-launch", "autoLaunch": false,
        "serverGroupLaunchConfigurations": [
            {"serverGroupId": g[1], "launchOrder": 1, "serverLaunchConfigurations": [
                {"server": {"serverId": s[2]}, "logicalId": "Database", "instanceType": "m5.large",
                 "vpc": "vpc-0123abcd", "subnet": "subnet-0123abcd", "securityGroup": "sg-0123abcd",
                 "ec2KeyName": "ops", "associatePublicIpAddress": false,
                 "iamInstanceProfileName": "db-profile",
                 "userData": {"s3Location": {"bucket": "sms-app-scripts", "key": "db/user-data.sh"}},
                 "configureScript": {"bucket": "sms-app-scripts", "key": "db/configure.sh"},
                 "configureScriptType": "SHELL_SCRIPT"}]},
            {"serverGroupId": g[0], "launchOrder": 2, "serverLaunchConfigurations": [
                {"server": {"serverId": s[0]}, "logicalId": "Web0", "instanceType": "t3.small"},
                {"server": {"serverId": s[1]}}]}]})
}

#[tokio::test]
async fn launch_configuration_round_trip_and_statuses() {
    let e = Env::new();
    let (app, g, s) = e.app().await;
    let summary = e.ok("GetApp", json!({"appId": app})).await["appSummary"].clone();
    assert_eq!(summary["launchConfigurationStatus"], "NOT_CONFIGURED");
    assert_eq!(summary["launchStatus"], "READY_FOR_CONFIGURATION");
    let empty = e
        .ok("GetAppLaunchConfiguration", json!({"appId": app}))
        .await;
    assert_eq!(
        empty,
        json!({"appId": app, "serverGroupLaunchConfigurations": []})
    );

    let put = launch(&app, &g, &s);
    e.ok("PutAppLaunchConfiguration", put.clone()).await;
    let got = e
        .ok("GetAppLaunchConfiguration", json!({"appId": app}))
        .await;
    assert_eq!(got["appId"], json!(app));
    assert_eq!(got["roleName"], "sms-launch");
    assert_eq!(got["autoLaunch"], false);
    let db = &got["serverGroupLaunchConfigurations"][0];
    assert_eq!(db["serverGroupId"], json!(g[1]));
    assert_eq!(db["launchOrder"], 1);
    let db0 = &db["serverLaunchConfigurations"][0];
    let sent = &put["serverGroupLaunchConfigurations"][0]["serverLaunchConfigurations"][0];
    for member in [
        "logicalId",
        "instanceType",
        "vpc",
        "subnet",
        "securityGroup",
        "ec2KeyName",
        "associatePublicIpAddress",
        "iamInstanceProfileName",
        "userData",
        "configureScript",
        "configureScriptType",
    ] {
        assert_eq!(db0[member], sent[member], "{member}");
    }
    // The server comes back whole, from the application.
    assert_eq!(db0["server"]["serverId"], json!(s[2]));
    assert_eq!(db0["server"]["serverType"], "VIRTUAL_MACHINE");
    assert_eq!(db0["server"]["vmServer"]["vmName"], "vm2");
    let web = &got["serverGroupLaunchConfigurations"][1]["serverLaunchConfigurations"];
    assert_eq!(web.as_array().unwrap().len(), 2);
    assert!(web[1].get("logicalId").is_none(), "{web}");

    let summary = e.ok("GetApp", json!({"appId": app})).await["appSummary"].clone();
    assert_eq!(summary["launchConfigurationStatus"], "CONFIGURED");
    assert_eq!(summary["launchStatus"], "READY_FOR_LAUNCH");

    // A server removed from the application drops out of the configuration.
    e.ok(
        "UpdateApp",
        json!({"appId": app, "serverGroups": [
            {"serverGroupId": g[0], "name": "web", "serverList": [{"serverId": s[0]}]},
            {"serverGroupId": g[1], "name": "db", "serverList": [{"serverId": s[2]}]}]}),
    )
    .await;
    let got = e
        .ok("GetAppLaunchConfiguration", json!({"appId": app}))
        .await;
    let web = &got["serverGroupLaunchConfigurations"][1]["serverLaunchConfigurations"];
    assert_eq!(web.as_array().unwrap().len(), 1, "{web}");

    e.ok("DeleteAppLaunchConfiguration", json!({"appId": app}))
        .await;
    e.ok("DeleteAppLaunchConfiguration", json!({"appId": app}))
        .await;
    let summary = e.ok("GetApp", json!({"appId": app})).await["appSummary"].clone();
    assert_eq!(summary["launchConfigurationStatus"], "NOT_CONFIGURED");
}

#[tokio::test]
async fn launch_configuration_constraints_name_the_member() {
    let e = Env::new();
    let (app, g, s) = e.app().await;
    const INVALID: &str = "InvalidParameterException";
    const MISSING: &str = "MissingRequiredParameterException";
    let at = "serverGroupLaunchConfigurations[0].serverLaunchConfigurations[0]";
    // (pointer into the request, new value, error shape, text the message must contain)
    let cases: Vec<(&str, Value, &str, String)> = vec![
        ("/appId", json!("app-1"), INVALID, "appId".into()),
        ("/appId", json!("app-0123456789abcdef9"), INVALID, "there is no application".into()),
        ("/roleName", json!("has space"), INVALID, "roleName".into()),
        ("/serverGroupLaunchConfigurations/0/serverGroupId", json!("sg-nope"), INVALID,
            "serverGroupLaunchConfigurations[0].serverGroupId".into()),
        ("/serverGroupLaunchConfigurations/0/serverGroupId", Value::Null, MISSING,
            "serverGroupLaunchConfigurations[0].serverGroupId".into()),
        ("/serverGroupLaunchConfigurations/1/serverGroupId", json!(g[1]), INVALID,
            "configured twice".into()),
        ("/serverGroupLaunchConfigurations/0/launchOrder", json!(-1), INVALID,
            "serverGroupLaunchConfigurations[0].launchOrder".into()),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/server", json!({}), MISSING,
            format!("{at}.server.serverId")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/server/serverId", json!(s[0]),
            INVALID, "in another group".into()),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/logicalId", json!("db-1"),
            INVALID, format!("{at}.logicalId")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/logicalId", json!("Web0"),
            INVALID, "logical ids must be unique".into()),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/vpc", json!("vpc-1"),
            INVALID, format!("{at}.vpc")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/subnet", json!("subnet-xyz"),
            INVALID, format!("{at}.subnet")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/securityGroup", json!("web"),
            INVALID, format!("{at}.securityGroup")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/ec2KeyName", json!(""),
            INVALID, format!("{at}.ec2KeyName")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/instanceType", json!("big"),
            INVALID, format!("{at}.instanceType")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/iamInstanceProfileName",
            json!("a/b"), INVALID, format!("{at}.iamInstanceProfileName")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/userData", json!({}),
            MISSING, format!("{at}.userData.s3Location")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/userData/s3Location/bucket",
            json!("ab"), INVALID, format!("{at}.userData.s3Location.bucket")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/userData/s3Location/bucket",
            json!("b".repeat(64)), INVALID, format!("{at}.userData.s3Location.bucket")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/userData/s3Location/key",
            json!("k".repeat(1025)), INVALID, format!("{at}.userData.s3Location.key")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/configureScript/key",
            json!(""), MISSING, format!("{at}.configureScript.key")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/configureScriptType",
            Value::Null, MISSING, format!("{at}.configureScriptType")),
        ("/serverGroupLaunchConfigurations/0/serverLaunchConfigurations/0/configureScriptType",
            json!("BATCH"), INVALID, "BATCH".into()),
    ];
    for (pointer, value, shape, text) in cases {
        let mut req = launch(&app, &g, &s);
        set(&mut req, pointer, value);
        let m = e.err("PutAppLaunchConfiguration", req, shape).await;
        assert!(m.contains(&text), "{pointer}: {m}");
    }
    // Nothing of the refused requests was stored.
    let got = e
        .ok("GetAppLaunchConfiguration", json!({"appId": app}))
        .await;
    assert_eq!(got["serverGroupLaunchConfigurations"], json!([]));
    let m = e.err("GetAppLaunchConfiguration", json!({}), MISSING).await;
    assert!(m.contains("appId"), "{m}");
}

fn validation(app: &str, g: &[String], s: &[String]) -> Value {
    json!({"appId": app,
        "appValidationConfigurations": [{"name": "smoke", "appValidationStrategy": "SSM",
            "ssmValidationParameters": {
                "source": {"s3Location": {"bucket": "sms-app-scripts", "key": "smoke.sh"}},
                "instanceId": "i-0123456789abcdef0", "scriptType": "SHELL_SCRIPT",
                "command": "bash smoke.sh", "executionTimeoutSeconds": 900,
                "outputS3BucketName": "sms-app-output"}}],
        "serverGroupValidationConfigurations": [{"serverGroupId": g[0],
            "serverValidationConfigurations": [{"server": {"serverId": s[0]}, "name": "web-boot",
                "serverValidationStrategy": "USERDATA",
                "userDataValidationParameters": {
                    "source": {"s3Location": {"bucket": "sms-app-scripts", "key": "boot.sh"}},
                    "scriptType": "SHELL_SCRIPT"}}]}]})
}

#[tokio::test]
async fn validation_configuration_outputs_and_notifications() {
    let e = Env::new();
    let (app, g, s) = e.app().await;
    assert_eq!(
        e.ok("GetAppValidationOutput", json!({"appId": app})).await,
        json!({"validationOutputList": []})
    );
    let put = validation(&app, &g, &s);
    e.ok("PutAppValidationConfiguration", put.clone()).await;
    let got = e
        .ok("GetAppValidationConfiguration", json!({"appId": app}))
        .await;
    let a = &got["appValidationConfigurations"][0];
    let app_val = a["validationId"].as_str().unwrap().to_string();
    assert!(
        app_val.starts_with("val-") && app_val.len() == 21,
        "{app_val}"
    );
    assert_eq!(
        a["ssmValidationParameters"],
        put["appValidationConfigurations"][0]["ssmValidationParameters"]
    );
    let sv = &got["serverGroupValidationConfigurations"][0]["serverValidationConfigurations"][0];
    assert_eq!(sv["server"]["serverId"], json!(s[0]));
    assert_eq!(sv["serverValidationStrategy"], "USERDATA");
    let server_val = sv["validationId"].as_str().unwrap().to_string();
    assert_ne!(server_val, app_val);

    let out = e.ok("GetAppValidationOutput", json!({"appId": app})).await;
    let list = out["validationOutputList"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter().all(|o| o["status"] == "READY_FOR_VALIDATION"),
        "{out}"
    );
    assert_eq!(
        list[1]["serverValidationOutput"]["server"]["serverId"],
        json!(s[0])
    );

    // Each ValidationStatus of §3 is recorded as reported.
    for status in ["PENDING", "IN_PROGRESS", "FAILED", "SUCCEEDED"] {
        e.ok(
            "NotifyAppValidationOutput",
            json!({"appId": app, "notificationContext": {"validationId": app_val,
                "status": status, "statusMessage": format!("script says {status}")}}),
        )
        .await;
        let out = e.ok("GetAppValidationOutput", json!({"appId": app})).await;
        let o = &out["validationOutputList"][0];
        assert_eq!(o["validationId"], json!(app_val));
        assert_eq!(o["status"], status);
        assert_eq!(o["statusMessage"], json!(format!("script says {status}")));
        assert_eq!(o["latestValidationTime"], json!(1_767_225_600));
        assert_eq!(
            out["validationOutputList"][1]["status"],
            "READY_FOR_VALIDATION"
        );
    }

    // Re-putting with the ids kept keeps outcomes; without them the old outcomes go.
    let mut again = put.clone();
    again["appValidationConfigurations"][0]["validationId"] = json!(app_val);
    e.ok("PutAppValidationConfiguration", again).await;
    let out = e.ok("GetAppValidationOutput", json!({"appId": app})).await;
    assert_eq!(out["validationOutputList"][0]["status"], "SUCCEEDED");
    e.ok("PutAppValidationConfiguration", put).await;
    let out = e.ok("GetAppValidationOutput", json!({"appId": app})).await;
    assert_eq!(
        out["validationOutputList"][0]["status"],
        "READY_FOR_VALIDATION"
    );

    e.ok("DeleteAppValidationConfiguration", json!({"appId": app}))
        .await;
    let got = e
        .ok("GetAppValidationConfiguration", json!({"appId": app}))
        .await;
    assert_eq!(
        got,
        json!({"appValidationConfigurations": [], "serverGroupValidationConfigurations": []})
    );
}

#[tokio::test]
async fn validation_constraints_name_the_member() {
    let e = Env::new();
    let (app, g, s) = e.app().await;
    const INVALID: &str = "InvalidParameterException";
    const MISSING: &str = "MissingRequiredParameterException";
    let a = "appValidationConfigurations[0]";
    let p = "/appValidationConfigurations/0/ssmValidationParameters";
    let cases: Vec<(String, Value, &str, String)> = vec![
        ("/appId".into(), json!("app-0123456789ABCDEF0"), INVALID, "appId".into()),
        ("/appId".into(), Value::Null, MISSING, "appId".into()),
        ("/appValidationConfigurations/0/validationId".into(), json!("val-1"), INVALID, format!("{a}.validationId")),
        ("/appValidationConfigurations/0/name".into(), json!("two words"), INVALID, format!("{a}.name")),
        ("/appValidationConfigurations/0/name".into(), json!("n".repeat(256)), INVALID, format!("{a}.name")),
        ("/appValidationConfigurations/0/name".into(), json!(""), MISSING, format!("{a}.name")),
        ("/appValidationConfigurations/0/appValidationStrategy".into(), json!("SSH"), INVALID, "SSH".into()),
        ("/appValidationConfigurations/0/appValidationStrategy".into(), Value::Null, MISSING, format!("{a}.appValidationStrategy")),
        (format!("{p}/instanceId"), json!("i-123"), INVALID, format!("{a}.ssmValidationParameters.instanceId")),
        (format!("{p}/instanceId"), json!("mi-0123456789abcdef"), INVALID, format!("{a}.ssmValidationParameters.instanceId")),
        (format!("{p}/command"), json!(""), INVALID, format!("{a}.ssmValidationParameters.command")),
        (format!("{p}/command"), json!("x".repeat(64_001)), INVALID, format!("{a}.ssmValidationParameters.command")),
        (format!("{p}/executionTimeoutSeconds"), json!(59), INVALID, "executionTimeoutSeconds".into()),
        (format!("{p}/executionTimeoutSeconds"), json!(28_801), INVALID, "executionTimeoutSeconds".into()),
        (format!("{p}/scriptType"), Value::Null, MISSING, format!("{a}.ssmValidationParameters.scriptType")),
        (format!("{p}/source/s3Location/bucket"), json!("ab"), INVALID, "source.s3Location.bucket".into()),
        (format!("{p}/source/s3Location/key"), json!("k".repeat(1025)), INVALID, "source.s3Location.key".into()),
        ("/serverGroupValidationConfigurations/0/serverGroupId".into(), json!("sg-x"), INVALID,
            "serverGroupValidationConfigurations[0].serverGroupId".into()),
        ("/serverGroupValidationConfigurations/0/serverValidationConfigurations/0/server/serverId".into(),
            json!(s[2]), INVALID, "is not in server group".into()),
        ("/serverGroupValidationConfigurations/0/serverValidationConfigurations/0/serverValidationStrategy".into(),
            json!("SSM"), INVALID, "SSM".into()),
        ("/serverGroupValidationConfigurations/0/serverValidationConfigurations/0/userDataValidationParameters/source".into(),
            json!({}), MISSING, "userDataValidationParameters.source.s3Location".into()),
    ];
    for (pointer, value, shape, text) in cases {
        let mut req = validation(&app, &g, &s);
        set(&mut req, &pointer, value);
        let m = e.err("PutAppValidationConfiguration", req, shape).await;
        assert!(m.contains(&text), "{pointer}: {m}");
    }
    let got = e
        .ok("GetAppValidationConfiguration", json!({"appId": app}))
        .await;
    assert_eq!(got["appValidationConfigurations"], json!([]));

    // NotifyAppValidationOutput.
    e.ok("PutAppValidationConfiguration", validation(&app, &g, &s))
        .await;
    let ctx = |c: Value| json!({"appId": app, "notificationContext": c});
    let m = e
        .err("NotifyAppValidationOutput", json!({"appId": app}), MISSING)
        .await;
    assert!(m.contains("notificationContext"), "{m}");
    let m = e
        .err(
            "NotifyAppValidationOutput",
            ctx(json!({"status": "PENDING"})),
            MISSING,
        )
        .await;
    assert!(m.contains("notificationContext.validationId"), "{m}");
    let m = e
        .err(
            "NotifyAppValidationOutput",
            ctx(json!({"validationId": "val-12", "status": "PENDING"})),
            INVALID,
        )
        .await;
    assert!(m.contains("notificationContext.validationId"), "{m}");
    let m = e
        .err(
            "NotifyAppValidationOutput",
            ctx(json!({"validationId": "val-0123456789abcdef0", "status": "PENDING"})),
            INVALID,
        )
        .await;
    assert!(m.contains("is not a validation of application"), "{m}");
    let id = e.ok("GetAppValidationOutput", json!({"appId": app})).await["validationOutputList"][0]
        ["validationId"]
        .clone();
    let m = e
        .err(
            "NotifyAppValidationOutput",
            ctx(json!({"validationId": id})),
            MISSING,
        )
        .await;
    assert!(m.contains("notificationContext.status"), "{m}");
    let m = e
        .err(
            "NotifyAppValidationOutput",
            ctx(json!({"validationId": id, "status": "DONE"})),
            INVALID,
        )
        .await;
    assert!(m.contains("DONE"), "{m}");
    let m = e
        .err(
            "NotifyAppValidationOutput",
            ctx(json!({"validationId": id, "status": "FAILED", "statusMessage": "m".repeat(2501)})),
            INVALID,
        )
        .await;
    assert!(m.contains("notificationContext.statusMessage"), "{m}");
    e.ok(
        "NotifyAppValidationOutput",
        ctx(json!({"validationId": id, "status": "FAILED", "statusMessage": "m".repeat(2500)})),
    )
    .await;
}

#[tokio::test]
async fn templates_need_a_staging_bucket_and_a_known_format() {
    let e = Env::new();
    let (app, _, _) = e.app().await;
    let m = e
        .err(
            "GenerateTemplate",
            json!({"appId": app, "templateFormat": "XML"}),
            "InvalidParameterException",
        )
        .await;
    assert!(m.contains("XML"), "{m}");
    // An API without a replication workflow (so no staging bucket) says so.
    let m = e
        .err(
            "GenerateTemplate",
            json!({"appId": app, "templateFormat": "JSON"}),
            "OperationNotPermittedException",
        )
        .await;
    assert!(
        m.contains("GenerateTemplate") && m.contains("staging bucket"),
        "{m}"
    );
}

#[tokio::test]
async fn import_app_catalog_from_the_connectors_applications() {
    let e = Env::new();
    let c = e
        .conn(
            "RegisterConnector",
            json!({"name": "c", "version": "1", "vmManagerId": "vc", "vmManagerType": "VSPHERE"}),
        )
        .await["connectorId"]
        .as_str()
        .unwrap()
        .to_string();
    let report = |vms: Vec<Value>| {
        let e = &e;
        let c = c.clone();
        async move {
            e.ok("ImportServerCatalog", json!({})).await;
            let work = e.conn("PollWork", json!({"connectorId": c})).await;
            let request = work["workItems"][0]["payload"]["requestId"].clone();
            e.conn(
                "ReportInventory",
                json!({"connectorId": c, "requestId": request, "vmList": vms}),
            )
            .await
        }
    };
    let vm = |i: usize, app: Option<&str>| {
        let mut v = json!({"vmId": format!("vm-{i}"), "vmName": format!("vm{i}"),
            "disks": [{"path": format!("/d/{i}.raw"), "format": "raw", "sizeBytes": 1048576}]});
        if let Some(a) = app {
            v["application"] = json!(a);
        }
        v
    };
    // Without application definitions there is nothing to import, and the message says how.
    report(vec![vm(0, None)]).await;
    let m = e
        .err("ImportAppCatalog", json!({}), "InvalidParameterException")
        .await;
    assert!(m.contains("[[applications]]"), "{m}");
    let m = e
        .err(
            "ImportAppCatalog",
            json!({"roleName": "a b"}),
            "InvalidParameterException",
        )
        .await;
    assert!(m.contains("roleName"), "{m}");

    // vm-2 goes into an application of its own first: the import leaves it out.
    let inv = report(vec![
        vm(0, Some("shop")),
        vm(1, Some("shop")),
        vm(2, Some("shop")),
        vm(3, Some("crm")),
        vm(4, None),
    ])
    .await;
    assert_eq!(inv["acceptedCount"], 5, "{inv}");
    let servers = e.ok("GetServers", json!({})).await["serverList"].clone();
    let id_of = |vm: &str| {
        servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vmServer"]["vmServerAddress"]["vmId"] == vm)
            .unwrap()["serverId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    e.ok(
        "CreateApp",
        json!({"name": "mine", "serverGroups": [{"serverList": [{"serverId": id_of("vm-2")}]}]}),
    )
    .await;
    e.ok("ImportAppCatalog", json!({"roleName": "migration-hub"}))
        .await;
    let apps = e.ok("ListApps", json!({})).await["apps"].clone();
    let imported: Vec<&Value> = apps
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a.get("importedAppId").is_some())
        .collect();
    assert_eq!(imported.len(), 2, "{apps}");
    let shop = imported
        .iter()
        .find(|a| a["importedAppId"] == "shop")
        .unwrap();
    assert_eq!(shop["name"], "shop");
    assert_eq!(shop["totalServers"], 2, "vm-2 is in another application");
    assert_eq!(shop["roleName"], "migration-hub");
    let shop_id = shop["appId"].as_str().unwrap().to_string();
    let got = e.ok("GetApp", json!({"appId": shop_id})).await;
    let mut members: Vec<String> = got["serverGroups"][0]["serverList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["serverId"].as_str().unwrap().to_string())
        .collect();
    members.sort();
    let mut want = vec![id_of("vm-0"), id_of("vm-1")];
    want.sort();
    assert_eq!(members, want);

    // Imported applications are not editable, and a second import creates nothing.
    let m = e
        .err(
            "UpdateApp",
            json!({"appId": shop_id, "name": "renamed"}),
            "OperationNotPermittedException",
        )
        .await;
    assert!(m.contains("ImportAppCatalog"), "{m}");
    e.ok("ImportAppCatalog", json!({})).await;
    assert_eq!(
        e.ok("ListApps", json!({})).await["apps"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // A bad application name in an inventory entry is refused for that VM only.
    let inv = report(vec![vm(0, Some("shop")), vm(5, Some(""))]).await;
    assert_eq!(inv["acceptedCount"], 1, "{inv}");
}
