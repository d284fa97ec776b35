//! Hostile input on every operation: each of the 35 SMS operations and each connector operation
//! gets correctly signed requests with malformed bodies (not JSON, truncated, not an object,
//! deeply nested, invalid UTF-8, numbers out of range), members of the wrong JSON type, 1 MiB
//! strings, unknown enum values, missing required members and negative page sizes. Every answer
//! must be a 4xx in the exact SMS error shape (spec §1.4) with a short message that names no
//! internals: never a 5xx, never a dropped connection.
//!
//! The same matrix runs against `tern serve` over HTTP and against the `api` Lambda's handler
//! (over the in-memory store, which enforces DynamoDB's item-size limit).

use serde_json::{json, Value};
use tern_acceptance::{connector_target, now_secs, sms_target, TestServer};

/// Who signs a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    Connector,
}

/// A response reduced to what the error contract is about.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: Option<String>,
    error_header: Option<String>,
    has_request_id: bool,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A way to reach the API: the HTTP server or the Lambda handler.
trait Surface {
    async fn call(&self, who: Who, target: &str, body: &[u8]) -> Reply;
}

struct Http(TestServer);

impl Surface for Http {
    async fn call(&self, who: Who, target: &str, body: &[u8]) -> Reply {
        let creds = match who {
            Who::Admin => self.0.admin(),
            Who::Connector => self.0.connector(),
        };
        // `raw` panics when the connection is dropped instead of answered.
        let r = self.0.raw(Some(target), body, Some(&creds)).await;
        Reply {
            status: r.status,
            content_type: r.header("content-type").map(str::to_owned),
            error_header: r.header("x-amzn-errortype").map(str::to_owned),
            has_request_id: r.header("x-amzn-requestid").is_some(),
            body: r.body,
        }
    }
}

struct Lambda {
    handler: tern_fn_api::Handler,
    admin_event: Value,
    connector_event: Value,
}

impl Lambda {
    fn new() -> Self {
        let api = tern_api::Api::new(tern_api::Deps {
            store: std::sync::Arc::new(tern_core::MemoryStore::new()),
            clock: std::sync::Arc::new(tern_core::SystemClock),
            ids: std::sync::Arc::new(tern_core::RandomIds),
            config: tern_core::Config::default(),
        });
        let event = |name: &str| -> Value {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../events/api")
                .join(name);
            serde_json::from_str(&std::fs::read_to_string(&path).expect("event file"))
                .expect("event JSON")
        };
        Self {
            handler: tern_fn_api::Handler::new(api, "TernConnector"),
            admin_event: event("admin-get-connectors.json"),
            connector_event: event("connector-register.json"),
        }
    }
}

impl Surface for Lambda {
    async fn call(&self, who: Who, target: &str, body: &[u8]) -> Reply {
        use base64::Engine as _;
        let mut event = match who {
            Who::Admin => self.admin_event.clone(),
            Who::Connector => self.connector_event.clone(),
        };
        event["headers"]["x-amz-target"] = json!(target);
        event["headers"]["content-length"] = json!(body.len().to_string());
        // API Gateway base64-encodes bodies that are not valid UTF-8 text.
        event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
        event["isBase64Encoded"] = json!(true);
        let request =
            lambda_http::request::from_str(&event.to_string()).expect("an API Gateway v2 event");
        let response = self.handler.handle(request).await;
        let header = |n: &str| {
            response
                .headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Reply {
            status: response.status().as_u16(),
            content_type: header("content-type"),
            error_header: header("x-amzn-errortype"),
            has_request_id: header("x-amzn-requestid").is_some(),
            body: response.body().as_ref().to_vec(),
        }
    }
}

/// What a case must get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// This exact error shape (always a 4xx).
    Error(&'static str),
    /// Some client error in the SMS shape.
    AnyClientError,
    /// A client error, or a success (a request that is valid after all, such as an empty
    /// body for an operation without required members). Never a 5xx.
    NotServerError,
    /// A ReportInventory applied without the one bad VM, which is in `rejectedList`.
    RejectedEntry,
}

/// Substrings that would mean a message leaks how Tern is built.
const INTERNALS: &[&str] = &[
    "sqlite",
    "rusqlite",
    "panicked",
    ".rs:",
    "tern_",
    "StoreError",
    "DomainError",
    "/tmp",
    "backtrace",
    "Corrupt",
];

/// Longest message a client gets: enough to name the problem, never a reflection of a 1 MiB
/// input.
const MAX_MESSAGE: usize = tern_api::error::MAX_MESSAGE_BYTES;

/// Checks one reply; returns a description of what is wrong, if anything.
fn check(reply: &Reply, expect: Expect) -> Result<(), String> {
    let body = reply.json();
    let short = String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]).into_owned();
    if expect == Expect::RejectedEntry {
        let rejected = body["rejectedList"].as_array().map_or(0, Vec::len);
        return if reply.status == 200 && rejected == 1 {
            Ok(())
        } else {
            Err(format!("want 200 with one rejected VM: {short}"))
        };
    }
    if matches!(expect, Expect::NotServerError) && reply.status == 200 {
        return if body.is_object() {
            Ok(())
        } else {
            Err(format!("200 without a JSON object: {short}"))
        };
    }
    if !(400..500).contains(&reply.status) {
        return Err(format!("status {} (want 4xx): {short}", reply.status));
    }
    if reply.content_type.as_deref() != Some("application/x-amz-json-1.1") {
        return Err(format!("content-type {:?}", reply.content_type));
    }
    if !reply.has_request_id {
        return Err("no x-amzn-RequestId".into());
    }
    let Some(object) = body.as_object() else {
        return Err(format!("error body is not a JSON object: {short}"));
    };
    let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["__type", "message"] {
        return Err(format!("error members {keys:?}: {short}"));
    }
    let (Some(shape), Some(message)) = (body["__type"].as_str(), body["message"].as_str()) else {
        return Err(format!("__type and message must be strings: {short}"));
    };
    if reply.error_header.as_deref() != Some(shape) {
        return Err(format!(
            "X-Amzn-ErrorType {:?} differs from __type {shape}",
            reply.error_header
        ));
    }
    if message.is_empty() || message.len() > MAX_MESSAGE {
        return Err(format!("{shape}: message of {} bytes", message.len()));
    }
    let lower = message.to_lowercase();
    if let Some(leak) = INTERNALS.iter().find(|s| lower.contains(&s.to_lowercase())) {
        return Err(format!(
            "{shape}: message names internals ({leak}): {message}"
        ));
    }
    match expect {
        Expect::Error(want) if shape != want => Err(format!("{shape} (want {want}): {message}")),
        _ => Ok(()),
    }
}

/// JSON type of a member, as the matrix needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Int,
    Bool,
    Time,
    /// An enum string: unknown values are InvalidParameterException.
    Enum,
    /// A list of objects (the members of which the table lists separately, as `list.member`).
    List,
    /// A list of enum strings.
    EnumList,
    /// Free-form JSON object.
    Object,
}

/// An operation: its target, who calls it, and its members.
struct Op {
    target: String,
    who: Who,
    /// Members with a required mark (SMS required members are MissingRequiredParameter when
    /// absent).
    members: Vec<(&'static str, Ty, bool)>,
}

fn sms(name: &str, members: Vec<(&'static str, Ty, bool)>) -> Op {
    Op {
        target: sms_target(name),
        who: Who::Admin,
        members,
    }
}

fn connector(name: &str, members: Vec<(&'static str, Ty, bool)>) -> Op {
    Op {
        target: connector_target(name),
        who: Who::Connector,
        members,
    }
}

fn operations() -> Vec<Op> {
    use Ty::*;
    let page = || vec![("nextToken", Str, false), ("maxResults", Int, false)];
    let job_settings = || {
        vec![
            ("frequency", Int, false),
            ("licenseType", Enum, false),
            ("roleName", Str, false),
            ("description", Str, false),
            ("numberOfRecentAmisToKeep", Int, false),
            ("encrypted", Bool, false),
            ("kmsKeyId", Str, false),
        ]
    };
    let mut ops = vec![
        sms("GetConnectors", page()),
        sms("DisassociateConnector", vec![("connectorId", Str, true)]),
        sms("ImportServerCatalog", vec![]),
        sms("GetServers", {
            let mut m = page();
            m.push(("vmServerAddressList", List, false));
            m.push(("vmServerAddressList.vmManagerId", Str, false));
            m.push(("vmServerAddressList.vmId", Str, false));
            m
        }),
        sms("DeleteServerCatalog", vec![]),
        sms("CreateReplicationJob", {
            let mut m = vec![
                ("serverId", Str, true),
                ("seedReplicationTime", Time, true),
                ("runOnce", Bool, false),
            ];
            m.extend(job_settings());
            m
        }),
        sms("GetReplicationJobs", {
            let mut m = page();
            m.push(("replicationJobId", Str, false));
            m
        }),
        sms("UpdateReplicationJob", {
            let mut m = vec![
                ("replicationJobId", Str, true),
                ("nextReplicationRunStartTime", Time, false),
            ];
            m.extend(job_settings());
            m
        }),
        sms(
            "DeleteReplicationJob",
            vec![("replicationJobId", Str, true)],
        ),
        sms(
            "StartOnDemandReplicationRun",
            vec![("replicationJobId", Str, true), ("description", Str, false)],
        ),
        sms("GetReplicationRuns", {
            let mut m = page();
            m.push(("replicationJobId", Str, true));
            m
        }),
        connector(
            "RegisterConnector",
            vec![
                ("connectorId", Str, false),
                ("name", Str, true),
                ("version", Str, true),
                ("vmManagerName", Str, false),
                ("vmManagerType", Enum, false),
                ("vmManagerId", Str, true),
                ("ipAddress", Str, false),
                ("macAddress", Str, false),
                ("capabilityList", EnumList, false),
            ],
        ),
        connector("SendHeartbeat", vec![("connectorId", Str, true)]),
        connector(
            "ReportInventory",
            vec![
                ("connectorId", Str, true),
                ("requestId", Str, false),
                ("vmList", List, false),
                ("vmList.vmId", Str, true),
                ("vmList.vmName", Str, false),
                ("vmList.vmPath", Str, false),
                ("vmList.vmManagerId", Str, false),
                ("vmList.vmManagerName", Str, false),
                ("vmList.vmManagerType", Enum, false),
                ("vmList.disks", List, false),
                ("vmList.osType", Enum, false),
                ("vmList.inspection", Object, false),
            ],
        ),
        connector(
            "PollWork",
            vec![("connectorId", Str, true), ("maxResults", Int, false)],
        ),
        connector(
            "ReportError",
            vec![
                ("connectorId", Str, true),
                ("workId", Str, false),
                ("message", Str, false),
            ],
        ),
        connector(
            "ReportProgress",
            vec![
                ("connectorId", Str, true),
                ("workId", Str, true),
                ("stage", Str, false),
                ("percent", Int, false),
                ("bytesDone", Int, false),
                ("bytesTotal", Int, false),
            ],
        ),
        connector(
            "CompleteWork",
            vec![("connectorId", Str, true), ("workId", Str, true)],
        ),
    ];
    // Applications (the ones this release implements).
    let app_id = || ("appId", Str, true);
    let app_settings = || {
        vec![
            ("name", Str, false),
            ("description", Str, false),
            ("roleName", Str, false),
            ("serverGroups", List, false),
            ("serverGroups.name", Str, false),
            ("serverGroups.serverList", List, false),
            ("tags", List, false),
            ("tags.key", Str, false),
            ("tags.value", Str, false),
        ]
    };
    ops.push(sms("CreateApp", {
        let mut m = app_settings();
        m.push(("clientToken", Str, false));
        m
    }));
    ops.push(sms("UpdateApp", {
        let mut m = app_settings();
        m.push(app_id());
        m
    }));
    ops.push(sms("ListApps", {
        let mut m = page();
        m.push(("appIds", EnumList, false));
        m
    }));
    for name in [
        "GetApp",
        "StartAppReplication",
        "StopAppReplication",
        "GetAppReplicationConfiguration",
        "DeleteAppReplicationConfiguration",
    ] {
        ops.push(sms(name, vec![app_id()]));
    }
    ops.push(sms(
        "DeleteApp",
        vec![
            app_id(),
            ("forceStopAppReplication", Bool, false),
            ("forceTerminateApp", Bool, false),
        ],
    ));
    ops.push(sms(
        "StartOnDemandAppReplication",
        vec![app_id(), ("description", Str, false)],
    ));
    ops.push(sms(
        "PutAppReplicationConfiguration",
        vec![
            app_id(),
            ("serverGroupReplicationConfigurations", List, false),
            (
                "serverGroupReplicationConfigurations.serverGroupId",
                Str,
                false,
            ),
            (
                "serverGroupReplicationConfigurations.serverReplicationConfigurations",
                List,
                false,
            ),
        ],
    ));
    // Launch and validation configuration, templates, launch and import.
    for name in [
        "GetAppLaunchConfiguration",
        "DeleteAppLaunchConfiguration",
        "GetAppValidationConfiguration",
        "DeleteAppValidationConfiguration",
        "GetAppValidationOutput",
        "TerminateApp",
        "LaunchApp",
    ] {
        ops.push(sms(name, vec![app_id()]));
    }
    ops.push(sms(
        "PutAppLaunchConfiguration",
        vec![
            app_id(),
            ("roleName", Str, false),
            ("autoLaunch", Bool, false),
            ("serverGroupLaunchConfigurations", List, false),
            ("serverGroupLaunchConfigurations.serverGroupId", Str, false),
            ("serverGroupLaunchConfigurations.launchOrder", Int, false),
            (
                "serverGroupLaunchConfigurations.serverLaunchConfigurations",
                List,
                false,
            ),
        ],
    ));
    ops.push(sms(
        "PutAppValidationConfiguration",
        vec![
            app_id(),
            ("appValidationConfigurations", List, false),
            ("appValidationConfigurations.name", Str, false),
            (
                "appValidationConfigurations.appValidationStrategy",
                Enum,
                false,
            ),
            ("serverGroupValidationConfigurations", List, false),
            (
                "serverGroupValidationConfigurations.serverGroupId",
                Str,
                false,
            ),
        ],
    ));
    // (notificationContext is a structure; the matrix's Object stands for free-form JSON.)
    ops.push(sms("NotifyAppValidationOutput", vec![app_id()]));
    ops.push(sms(
        "GenerateTemplate",
        vec![app_id(), ("templateFormat", Enum, false)],
    ));
    ops.push(sms(
        "GenerateChangeSet",
        vec![app_id(), ("changesetFormat", Enum, false)],
    ));
    ops.push(sms("ImportAppCatalog", vec![("roleName", Str, false)]));
    assert_eq!(
        ops.iter()
            .filter(|o| o.target.starts_with(tern_api::SMS_TARGET_PREFIX))
            .count(),
        35,
        "every SMS operation is in the matrix"
    );
    assert_eq!(
        ops.len(),
        35 + tern_api::connector::op::ALL.len(),
        "every connector operation is in the matrix"
    );
    ops
}

/// Bodies that are no JSON object at all, for every operation.
fn malformed_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let deep_arrays = vec![b'['; 100_000];
    let mut deep_objects = b"{\"a\":".repeat(100_000);
    deep_objects.extend(b"1");
    let mut deep_member = b"{\"x\":".to_vec();
    deep_member.extend(vec![b'['; 100_000]);
    vec![
        ("not JSON", b"not json".to_vec()),
        ("a lone brace", b"{".to_vec()),
        ("truncated object", b"{\"maxResults\": 10".to_vec()),
        ("truncated string", b"{\"name\": \"ab".to_vec()),
        ("missing value", b"{\"a\": }".to_vec()),
        ("trailing garbage", b"{} {}".to_vec()),
        ("array", b"[]".to_vec()),
        ("array of object", b"[{}]".to_vec()),
        ("number", b"42".to_vec()),
        ("negative number", b"-1".to_vec()),
        ("string", b"\"a string\"".to_vec()),
        ("null", b"null".to_vec()),
        ("boolean", b"true".to_vec()),
        ("100,000 [", deep_arrays),
        ("100,000 nested objects", deep_objects),
        ("100,000 [ in a member", deep_member),
        (
            "invalid UTF-8 in a string",
            b"{\"x\": \"\xff\xfe\"}".to_vec(),
        ),
        ("invalid UTF-8 outside strings", b"\xff\xfe{}".to_vec()),
        ("a byte-order mark", b"\xef\xbb\xbf{}".to_vec()),
        ("a lone surrogate", b"{\"x\": \"\\ud800\"}".to_vec()),
        ("1e400", b"{\"x\": 1e400}".to_vec()),
        ("-1e400", b"{\"x\": -1e400}".to_vec()),
        ("a NUL byte", b"\0".to_vec()),
        ("single quotes", b"{'a': 1}".to_vec()),
        ("a comment", b"{/* hi */}".to_vec()),
        ("NaN", b"{\"x\": NaN}".to_vec()),
    ]
}

/// Values of the wrong JSON type for a member of type `ty`.
fn wrong_types(ty: Ty) -> Vec<Value> {
    let object = json!({"a": {"b": 1}});
    match ty {
        Ty::Str | Ty::Enum => vec![json!(5), object, json!(true), json!(["a"])],
        Ty::Int => vec![json!("3"), object, json!(true), json!([1]), json!(1.5)],
        Ty::Bool => vec![json!("yes"), json!(1), json!([]), object],
        Ty::Time => vec![json!("2026-12-01T10:00:00Z"), json!(true), object],
        Ty::List | Ty::EnumList => vec![json!(true), json!("x"), object, json!(5), json!([5])],
        Ty::Object => vec![json!("x"), json!(5), json!(true)],
    }
}

/// Sets `path` (`member` or `list.member`, the latter in the first element) in `body`.
fn set(body: &mut Value, path: &str, value: Value) {
    match path.split_once('.') {
        None => body[path] = value,
        Some((list, member)) => {
            if !body[list].is_array() || body[list].as_array().is_some_and(Vec::is_empty) {
                body[list] = json!([{}]);
            }
            body[list][0][member] = value;
        }
    }
}

fn remove(body: &mut Value, path: &str) {
    if let Some(o) = body.as_object_mut() {
        o.remove(path);
    }
}

/// Ids made by the setup, for request bodies that are valid apart from the hostile member.
struct Ids {
    connector: String,
    /// A catalog server without a job.
    free_server: String,
    job: String,
}

/// Registers a connector, imports a two-VM catalog through it and creates a job on the first.
async fn setup(s: &impl Surface) -> Ids {
    let ok = |r: Reply, what: &str| -> Value {
        assert_eq!(
            r.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    };
    let c = ok(
        s.call(
            Who::Connector,
            &connector_target("RegisterConnector"),
            json!({"name": "lab", "version": "1.0", "vmManagerId": "vc-hostile",
                   "vmManagerType": "VSPHERE", "capabilityList": ["VSPHERE"]})
            .to_string()
            .as_bytes(),
        )
        .await,
        "RegisterConnector",
    );
    let connector = c["connectorId"].as_str().expect("connectorId").to_owned();
    ok(
        s.call(Who::Admin, &sms_target("ImportServerCatalog"), b"{}")
            .await,
        "ImportServerCatalog",
    );
    let work = ok(
        s.call(
            Who::Connector,
            &connector_target("PollWork"),
            json!({"connectorId": connector}).to_string().as_bytes(),
        )
        .await,
        "PollWork",
    );
    let request_id = work["workItems"][0]["payload"]["requestId"]
        .as_str()
        .unwrap_or_else(|| panic!("an inventory request: {work}"))
        .to_owned();
    ok(
        s.call(
            Who::Connector,
            &connector_target("ReportInventory"),
            json!({"connectorId": connector, "requestId": request_id, "vmList": vms()})
                .to_string()
                .as_bytes(),
        )
        .await,
        "ReportInventory",
    );
    let servers = ok(
        s.call(Who::Admin, &sms_target("GetServers"), b"{}").await,
        "GetServers",
    );
    let server = |vm: &str| {
        servers["serverList"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|s| s["vmServer"]["vmServerAddress"]["vmId"] == vm)
            })
            .and_then(|s| s["serverId"].as_str())
            .unwrap_or_else(|| panic!("{vm} in {servers}"))
            .to_owned()
    };
    let job = ok(
        s.call(
            Who::Admin,
            &sms_target("CreateReplicationJob"),
            json!({"serverId": server("vm-0"), "seedReplicationTime": now_secs() + 3600,
                   "frequency": 12})
            .to_string()
            .as_bytes(),
        )
        .await,
        "CreateReplicationJob",
    );
    Ids {
        connector,
        free_server: server("vm-1"),
        job: job["replicationJobId"].as_str().expect("job id").to_owned(),
    }
}

fn vms() -> Value {
    json!([
        {"vmId": "vm-0", "disks": [{"path": "/vms/vm-0.raw", "format": "raw", "sizeBytes": 1048576}]},
        {"vmId": "vm-1", "disks": [{"path": "/vms/vm-1.raw", "format": "raw", "sizeBytes": 1048576}]}
    ])
}

/// A body for `op` that is valid but for whatever a case changes.
fn base(op: &Op, ids: &Ids) -> Value {
    let name = op.target.rsplit('.').next().unwrap_or_default();
    let c = &ids.connector;
    let seed = now_secs() + 7200;
    match name {
        "DisassociateConnector" => json!({"connectorId": "c-00000000000000000"}),
        "CreateReplicationJob" => {
            json!({"serverId": ids.free_server, "seedReplicationTime": seed, "frequency": 12})
        }
        "GetReplicationJobs" | "GetReplicationRuns" | "DeleteReplicationJob" => {
            json!({"replicationJobId": ids.job})
        }
        "UpdateReplicationJob" | "StartOnDemandReplicationRun" => {
            json!({"replicationJobId": ids.job, "description": "nightly"})
        }
        "RegisterConnector" => {
            json!({"connectorId": c, "name": "lab", "version": "1.0", "vmManagerId": "vc-hostile"})
        }
        "ReportInventory" => {
            let mut list = vms();
            list.as_array_mut().expect("list").insert(
                0,
                json!({"vmId": "vm-9", "disks": [{"path": "/vms/vm-9.raw"}]}),
            );
            json!({"connectorId": c, "vmList": list})
        }
        "ReportProgress" | "CompleteWork" => json!({"connectorId": c, "workId": "work-none"}),
        "SendHeartbeat" | "PollWork" | "ReportError" => json!({"connectorId": c}),
        // An application id that is well formed (most of these answer that it does not exist).
        "CreateApp" => json!({"name": "hostile", "serverGroups": [{"name": "g", "serverList": []}],
                              "tags": [{"key": "k", "value": "v"}]}),
        "UpdateApp"
        | "GetApp"
        | "DeleteApp"
        | "StartAppReplication"
        | "StopAppReplication"
        | "StartOnDemandAppReplication"
        | "PutAppReplicationConfiguration"
        | "GetAppReplicationConfiguration"
        | "DeleteAppReplicationConfiguration" => {
            json!({"appId": "app-00000000000000000"})
        }
        _ => json!({}),
    }
}

/// One hostile request and what it must get.
struct Case {
    op: String,
    who: Who,
    label: String,
    body: Vec<u8>,
    expect: Expect,
}

fn cases(ids: &Ids) -> Vec<Case> {
    const MIB: usize = 1 << 20;
    let mut out = Vec::new();
    for op in operations() {
        let mut push = |label: String, body: Vec<u8>, expect: Expect| {
            out.push(Case {
                op: op.target.clone(),
                who: op.who,
                label,
                body,
                expect,
            });
        };
        for (label, body) in malformed_bodies() {
            push(label.into(), body, Expect::Error("SerializationException"));
        }
        let valid = base(&op, ids);
        let text = valid.to_string();
        if text.len() > 2 {
            push(
                "truncated valid body".into(),
                text.as_bytes()[..text.len() - 1].to_vec(),
                Expect::Error("SerializationException"),
            );
        }
        let needs_member = op.members.iter().any(|(_, _, required)| *required);
        let empty = match (needs_member, op.who) {
            (true, Who::Admin) => Expect::Error("MissingRequiredParameterException"),
            (true, Who::Connector) => Expect::AnyClientError,
            (false, _) => Expect::NotServerError,
        };
        push("empty body".into(), Vec::new(), empty);
        push("{}".into(), b"{}".to_vec(), empty);
        for &(member, ty, required) in &op.members {
            for wrong in wrong_types(ty) {
                let mut body = valid.clone();
                set(&mut body, member, wrong.clone());
                let expect = if ty == Ty::Enum && wrong.is_object() {
                    // serde reads `{"a": …}` as an enum variant named `a`: an unknown value.
                    Expect::AnyClientError
                } else if member.starts_with("vmList.") {
                    // A bad inventory entry is rejected alone; the rest of the report applies.
                    Expect::NotServerError
                } else {
                    Expect::Error("SerializationException")
                };
                push(
                    format!("{member} = {wrong}"),
                    body.to_string().into_bytes(),
                    expect,
                );
            }
            let mut huge = valid.clone();
            let big = "x".repeat(MIB);
            match ty {
                Ty::Str | Ty::Enum => set(&mut huge, member, json!(big)),
                Ty::EnumList => set(&mut huge, member, json!([big])),
                Ty::Object => set(&mut huge, member, json!({ "k": big })),
                _ => {}
            }
            if huge != valid {
                let expect = if ty == Ty::Object {
                    Expect::RejectedEntry
                } else {
                    Expect::Error("InvalidParameterException")
                };
                push(
                    format!("{member} of 1 MiB"),
                    huge.to_string().into_bytes(),
                    expect,
                );
            }
            if matches!(ty, Ty::Enum | Ty::EnumList) {
                let mut body = valid.clone();
                let value = if ty == Ty::Enum {
                    json!("NOT_A_VALUE")
                } else {
                    json!(["NOT_A_VALUE"])
                };
                set(&mut body, member, value);
                push(
                    format!("{member} unknown enum value"),
                    body.to_string().into_bytes(),
                    Expect::Error("InvalidParameterException"),
                );
            }
            if matches!(ty, Ty::Int | Ty::Time) {
                let body = valid.to_string();
                for raw in ["1e400", "-1e400", "18446744073709551616", "1e300"] {
                    let mut b = serde_json::from_str::<Value>(&body).expect("json");
                    set(&mut b, member, json!("@@"));
                    let text = b.to_string().replace("\"@@\"", raw);
                    push(
                        format!("{member} = {raw}"),
                        text.into_bytes(),
                        Expect::AnyClientError,
                    );
                }
                let mut b = valid.clone();
                set(&mut b, member, json!(-1));
                let expect = match ty {
                    _ if member == "maxResults" => Expect::Error("InvalidParameterException"),
                    // A start time in the past means "as soon as possible".
                    Ty::Time => Expect::NotServerError,
                    _ => Expect::AnyClientError,
                };
                push(format!("{member} = -1"), b.to_string().into_bytes(), expect);
            }
            if required && !member.contains('.') {
                let mut body = valid.clone();
                remove(&mut body, member);
                let expect = if op.who == Who::Admin {
                    Expect::Error("MissingRequiredParameterException")
                } else {
                    Expect::AnyClientError
                };
                push(
                    format!("without {member}"),
                    body.to_string().into_bytes(),
                    expect,
                );
                if ty == Ty::Str {
                    let mut body = valid.clone();
                    set(&mut body, member, json!("   "));
                    push(
                        format!("{member} blank"),
                        body.to_string().into_bytes(),
                        expect,
                    );
                }
            }
        }
    }
    out
}

/// Runs every case; fails listing all that were answered wrongly.
async fn run_matrix(s: &impl Surface) {
    let ids = setup(s).await;
    let cases = cases(&ids);
    let mut failures = Vec::new();
    for case in &cases {
        let reply = s.call(case.who, &case.op, &case.body).await;
        if let Err(problem) = check(&reply, case.expect) {
            failures.push(format!("{} [{}]: {problem}", case.op, case.label));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile requests were answered wrongly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Still serving, and the state the setup made is intact.
    let r = s
        .call(
            Who::Admin,
            &sms_target("GetReplicationJobs"),
            json!({"replicationJobId": ids.job}).to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn hostile_bodies_get_client_errors_from_tern_serve() {
    let server = Http(TestServer::start().await);
    run_matrix(&server).await;
    server.0.shutdown().await;
}

#[tokio::test]
async fn hostile_bodies_get_client_errors_from_the_api_lambda() {
    run_matrix(&Lambda::new()).await;
}
