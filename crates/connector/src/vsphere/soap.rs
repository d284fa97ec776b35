//! A small client of the vSphere Web Services API (vim25 over SOAP): the handful of calls the
//! `vsphere` source makes — the service content, a session, property retrieval through a
//! container view, snapshot tasks — and the datastore's HTTP file access with the same session.
//!
//! Written by hand because no maintained Rust crate speaks vim25 SOAP (the ones on crates.io
//! target the JSON API of vSphere 8.0 U1+, which older vCenters and vcsim do not serve). The
//! requests are small fixed templates; the answers are parsed with `roxmltree`; HTTP and TLS
//! are `reqwest` (rustls).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client as Http, Response};
use reqwest::header::{CONTENT_TYPE, COOKIE, RANGE, SET_COOKIE};
use reqwest::{StatusCode, Url};

use super::{VsphereError, VsphereSource};

type Result<T> = std::result::Result<T, VsphereError>;

/// A managed object reference: its type (`VirtualMachine`) and value (`vm-42`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoRef {
    pub kind: String,
    pub value: String,
}

impl MoRef {
    pub fn new(kind: &str, value: &str) -> Self {
        MoRef {
            kind: kind.into(),
            value: value.into(),
        }
    }

    fn xml(&self, tag: &str) -> String {
        format!(
            "<{tag} type=\"{}\">{}</{tag}>",
            escape(&self.kind),
            escape(&self.value)
        )
    }
}

/// One object's properties as RetrievePropertiesEx returns them: each property's value as
/// the XML of its `<val>` element, parsed by the caller.
#[derive(Clone, Debug)]
pub struct ObjectContent {
    pub obj: MoRef,
    pub props: Vec<(String, String)>,
}

impl ObjectContent {
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A logged-in session.
pub struct Session {
    http: Http,
    sdk: Url,
    cookie: Mutex<String>,
    pub root_folder: MoRef,
    property_collector: MoRef,
    view_manager: MoRef,
    session_manager: MoRef,
    /// `about.apiType` and `about.fullName`, for messages.
    pub api_type: String,
    pub full_name: String,
}

/// Escapes text for an XML element or attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns=\"urn:vim25\"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )
}

/// The first descendant element named `name` (any namespace).
pub fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

/// The text of the child element `name`.
pub fn text_of<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(node, name).and_then(|n| n.text())
}

/// The `xsi:type` of an element (`VirtualDisk`), without a namespace prefix.
pub fn xsi_type<'a>(node: roxmltree::Node<'a, '_>) -> Option<&'a str> {
    node.attributes()
        .find(|a| {
            a.name() == "type"
                && a.namespace()
                    .is_some_and(|ns| ns.ends_with("XMLSchema-instance"))
        })
        .map(|a| a.value().rsplit(':').next().unwrap_or(a.value()))
}

pub fn moref_of(node: roxmltree::Node<'_, '_>) -> Option<MoRef> {
    let kind = node.attribute("type")?;
    Some(MoRef::new(kind, node.text()?.trim()))
}

impl Session {
    /// Connects to the source's SDK URL, reads the service content and logs in.
    pub fn login(source: &VsphereSource) -> Result<Session> {
        let sdk = Url::parse(&source.url)
            .map_err(|e| VsphereError::Config(format!("vsphere.url {:?}: {e}", source.url)))?;
        let mut http = Http::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(20));
        if source.insecure {
            http = http.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &source.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                VsphereError::Config(format!("vsphere.ca_file {}: {e}", ca.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                VsphereError::Config(format!(
                    "vsphere.ca_file {}: not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            http = http.add_root_certificate(cert);
        }
        let http = http
            .build()
            .map_err(|e| VsphereError::Config(format!("HTTP client: {e}")))?;
        let mut s = Session {
            http,
            sdk,
            cookie: Mutex::default(),
            root_folder: MoRef::new("Folder", "group-d1"),
            property_collector: MoRef::new("PropertyCollector", "propertyCollector"),
            view_manager: MoRef::new("ViewManager", "ViewManager"),
            session_manager: MoRef::new("SessionManager", "SessionManager"),
            api_type: String::new(),
            full_name: String::new(),
        };
        let content = s.call(
            "RetrieveServiceContent",
            "<RetrieveServiceContent><_this type=\"ServiceInstance\">ServiceInstance</_this></RetrieveServiceContent>",
        )?;
        {
            let doc = parse(&content)?;
            let rv = returnval(&doc).ok_or_else(|| {
                VsphereError::Protocol("RetrieveServiceContent: no returnval".into())
            })?;
            let get = |name: &str| child(rv, name).and_then(moref_of);
            s.root_folder = get("rootFolder").unwrap_or(s.root_folder.clone());
            s.property_collector = get("propertyCollector").unwrap_or(s.property_collector.clone());
            s.view_manager = get("viewManager").ok_or_else(|| {
                VsphereError::Protocol(
                    "the server has no ViewManager (an ESXi host older than 5.5?)".into(),
                )
            })?;
            s.session_manager = get("sessionManager").unwrap_or(s.session_manager.clone());
            if let Some(about) = child(rv, "about") {
                s.api_type = text_of(about, "apiType").unwrap_or_default().to_string();
                s.full_name = text_of(about, "fullName").unwrap_or_default().to_string();
            }
        }
        let body = format!(
            "<Login>{}<userName>{}</userName><password>{}</password></Login>",
            s.session_manager.xml("_this"),
            escape(&source.username),
            escape(&source.password()?),
        );
        s.call("Login", &body).map_err(|e| match e {
            VsphereError::Fault { fault, .. } if fault == "InvalidLogin" => VsphereError::Login {
                url: source.url.clone(),
                user: source.username.clone(),
            },
            e => e,
        })?;
        Ok(s)
    }

    /// Ends the session (best effort).
    pub fn logout(&self) {
        let body = format!("<Logout>{}</Logout>", self.session_manager.xml("_this"));
        let _ = self.call("Logout", &body);
    }

    /// Sends one SOAP request; a fault comes back as [`VsphereError::Fault`].
    fn call(&self, method: &str, body: &str) -> Result<String> {
        let mut req = self
            .http
            .post(self.sdk.clone())
            .header(CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/6.5")
            .body(envelope(body));
        let cookie = lock(&self.cookie).clone();
        if !cookie.is_empty() {
            req = req.header(COOKIE, cookie);
        }
        let resp = req.send().map_err(|e| VsphereError::Connect {
            url: self.sdk.to_string(),
            detail: error_chain(&e),
        })?;
        if let Some(c) = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("vmware_soap_session"))
        {
            *lock(&self.cookie) = c.split(';').next().unwrap_or(c).to_string();
        }
        let status = resp.status();
        let text = resp.text().map_err(|e| VsphereError::Connect {
            url: self.sdk.to_string(),
            detail: error_chain(&e),
        })?;
        let doc = parse(&text)?;
        if let Some(fault) = doc
            .descendants()
            .find(|n| n.is_element() && n.tag_name().name() == "Fault")
        {
            let message = text_of(fault, "faultstring")
                .unwrap_or("no message")
                .trim()
                .to_string();
            let kind = child(fault, "detail")
                .and_then(|d| d.children().find(|n| n.is_element()))
                .map(|d| {
                    xsi_type(d)
                        .unwrap_or(d.tag_name().name())
                        .trim_end_matches("Fault")
                        .to_string()
                })
                .unwrap_or_else(|| "SoapFault".into());
            return Err(VsphereError::Fault {
                method: method.into(),
                fault: kind,
                message,
            });
        }
        if !status.is_success() {
            return Err(VsphereError::Protocol(format!("{method}: HTTP {status}")));
        }
        Ok(text)
    }

    /// The properties `paths` of every object of type `kind` under the root folder.
    pub fn all(&self, kind: &str, paths: &[&str]) -> Result<Vec<ObjectContent>> {
        let view = self.call(
            "CreateContainerView",
            &format!(
                "<CreateContainerView>{}{}<type>{}</type><recursive>true</recursive></CreateContainerView>",
                self.view_manager.xml("_this"),
                self.root_folder.xml("container"),
                escape(kind)
            ),
        )?;
        let view = answer_moref(&view)
            .ok_or_else(|| VsphereError::Protocol("CreateContainerView: no view".into()))?;
        let objects = format!(
            "<objectSet>{}<skip>true</skip><selectSet xsi:type=\"TraversalSpec\"><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>",
            view.xml("obj")
        );
        let result = self.retrieve(kind, paths, &objects);
        let _ = self.call(
            "DestroyView",
            &format!("<DestroyView>{}</DestroyView>", view.xml("_this")),
        );
        result
    }

    /// The properties `paths` of one object.
    pub fn properties(&self, obj: &MoRef, paths: &[&str]) -> Result<ObjectContent> {
        let objects = format!(
            "<objectSet>{}<skip>false</skip></objectSet>",
            obj.xml("obj")
        );
        let mut found = self.retrieve(&obj.kind, paths, &objects)?;
        if found.is_empty() {
            return Err(VsphereError::Fault {
                method: "RetrievePropertiesEx".into(),
                fault: "ManagedObjectNotFound".into(),
                message: format!("{} {} no longer exists", obj.kind, obj.value),
            });
        }
        Ok(found.swap_remove(0))
    }

    fn retrieve(&self, kind: &str, paths: &[&str], objects: &str) -> Result<Vec<ObjectContent>> {
        let path_set: String = paths
            .iter()
            .map(|p| format!("<pathSet>{}</pathSet>", escape(p)))
            .collect();
        let mut body = format!(
            "<RetrievePropertiesEx>{}<specSet><propSet><type>{}</type>{path_set}</propSet>{objects}</specSet><options/></RetrievePropertiesEx>",
            self.property_collector.xml("_this"),
            escape(kind)
        );
        let mut out = Vec::new();
        loop {
            let answer = self.call("RetrievePropertiesEx", &body)?;
            let doc = parse(&answer)?;
            let Some(rv) = returnval(&doc) else {
                return Ok(out);
            };
            for o in rv
                .children()
                .filter(|n| n.is_element() && n.tag_name().name() == "objects")
            {
                let Some(obj) = child(o, "obj").and_then(moref_of) else {
                    continue;
                };
                let props = o
                    .children()
                    .filter(|n| n.is_element() && n.tag_name().name() == "propSet")
                    .filter_map(|p| {
                        let name = text_of(p, "name")?.to_string();
                        let val = child(p, "val")?;
                        Some((name, wrap(val, &answer)))
                    })
                    .collect();
                out.push(ObjectContent { obj, props });
            }
            match text_of(rv, "token") {
                Some(token) => {
                    body = format!(
                        "<ContinueRetrievePropertiesEx>{}<token>{}</token></ContinueRetrievePropertiesEx>",
                        self.property_collector.xml("_this"),
                        escape(token)
                    )
                }
                None => return Ok(out),
            }
        }
    }

    /// Calls a `…_Task` method and waits for its task to end; returns the task's result XML
    /// (the `<result>` element), if any.
    pub fn run_task(&self, method: &str, body: &str, limit: Duration) -> Result<Option<String>> {
        let answer = self.call(method, body)?;
        let task = answer_moref(&answer)
            .ok_or_else(|| VsphereError::Protocol(format!("{method}: no task")))?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let info = self.properties(&task, &["info.state", "info.error", "info.result"])?;
            let state = info
                .prop("info.state")
                .and_then(value_text)
                .unwrap_or_default();
            match state.as_str() {
                "success" => return Ok(info.prop("info.result").map(str::to_string)),
                "error" => {
                    let (fault, message) = info
                        .prop("info.error")
                        .and_then(|v| {
                            with_value(v, |root| {
                                let message = text_of(root, "localizedMessage")
                                    .unwrap_or("no message")
                                    .to_string();
                                let fault = child(root, "fault")
                                    .and_then(xsi_type)
                                    .unwrap_or("TaskError")
                                    .to_string();
                                Some((fault, message))
                            })
                        })
                        .unwrap_or_else(|| {
                            (
                                "TaskError".into(),
                                "the task failed without a message".into(),
                            )
                        });
                    return Err(VsphereError::Fault {
                        method: method.into(),
                        fault,
                        message,
                    });
                }
                _ if started.elapsed() > limit => {
                    return Err(VsphereError::Protocol(format!(
                        "{method} did not finish within {} s (task {} is still {state})",
                        limit.as_secs(),
                        task.value
                    )))
                }
                _ => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Calls a method with `_this` set to `this` and the given parameters.
    pub fn invoke(&self, method: &str, this: &MoRef, params: &str) -> Result<String> {
        self.call(
            method,
            &format!("<{method}>{}{params}</{method}>", this.xml("_this")),
        )
    }

    /// The task version of [`Session::invoke`].
    pub fn invoke_task(
        &self,
        method: &str,
        this: &MoRef,
        params: &str,
        limit: Duration,
    ) -> Result<Option<String>> {
        self.run_task(
            method,
            &format!("<{method}>{}{params}</{method}>", this.xml("_this")),
            limit,
        )
    }

    /// The URL of a datastore file through the server's HTTP file access
    /// (`/folder/<path>?dcPath=<datacenter>&dsName=<datastore>`).
    pub fn datastore_url(&self, datacenter: &str, datastore: &str, path: &str) -> Url {
        let mut u = self.sdk.clone();
        u.set_query(None);
        {
            let mut segs = u.path_segments_mut().expect("an http(s) URL has a path");
            segs.clear().push("folder");
            for s in path.split('/').filter(|s| !s.is_empty()) {
                segs.push(s);
            }
        }
        u.query_pairs_mut()
            .append_pair("dcPath", datacenter)
            .append_pair("dsName", datastore);
        u
    }

    /// GETs a datastore file, or `range` bytes of it.
    pub fn get(&self, url: &Url, range: Option<(u64, u64)>) -> Result<Response> {
        let mut req = self
            .http
            .get(url.clone())
            .header(COOKIE, lock(&self.cookie).clone());
        if let Some((start, len)) = range {
            req = req.header(RANGE, format!("bytes={start}-{}", start + len - 1));
        }
        let resp = req.send().map_err(|e| VsphereError::Connect {
            url: url.to_string(),
            detail: error_chain(&e),
        })?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(VsphereError::Datastore {
                url: url.to_string(),
                detail: "no such file (HTTP 404)".into(),
            }),
            s => Err(VsphereError::Datastore {
                url: url.to_string(),
                detail: format!("HTTP {s}"),
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A property's `<val>` element as a document of its own: the namespaces in scope where it
/// was (a server may declare `xsi` on the envelope) are declared on a wrapper around it.
fn wrap(val: roxmltree::Node<'_, '_>, answer: &str) -> String {
    let mut w = String::from("<w");
    for ns in val.namespaces() {
        match ns.name() {
            Some(p) => w.push_str(&format!(" xmlns:{p}=\"{}\"", escape(ns.uri()))),
            None => w.push_str(&format!(" xmlns=\"{}\"", escape(ns.uri()))),
        }
    }
    w.push('>');
    w.push_str(&answer[val.range()]);
    w.push_str("</w>");
    w
}

/// Parses a property value ([`ObjectContent::prop`]) and hands its `<val>` element to `f`.
pub fn with_value<T>(
    val_xml: &str,
    f: impl FnOnce(roxmltree::Node<'_, '_>) -> Option<T>,
) -> Option<T> {
    let doc = roxmltree::Document::parse(val_xml).ok()?;
    let val = doc.root_element().children().find(|n| n.is_element())?;
    f(val)
}

/// The text of a simple `<val>` (a string, a number or an enum).
pub fn value_text(val_xml: &str) -> Option<String> {
    with_value(val_xml, |v| v.text().map(|t| t.trim().to_string()))
}

/// The managed object reference an answer returns (`CreateFolder`, a `…_Task` method).
pub fn answer_moref(answer: &str) -> Option<MoRef> {
    let doc = roxmltree::Document::parse(answer).ok()?;
    returnval(&doc).and_then(moref_of)
}

/// The managed object reference a `<val>` holds.
pub fn value_moref(val_xml: &str) -> Option<MoRef> {
    with_value(val_xml, moref_of)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn parse(xml: &str) -> Result<roxmltree::Document<'_>> {
    roxmltree::Document::parse(xml)
        .map_err(|e| VsphereError::Protocol(format!("unreadable SOAP answer: {e}")))
}

fn returnval<'a, 'i>(doc: &'a roxmltree::Document<'i>) -> Option<roxmltree::Node<'a, 'i>> {
    doc.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "returnval")
}
