//! Task resources: the host registers async handlers by resource string.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::StateError;

/// How a Task waits for its work, from the suffix of its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    RequestResponse,
    /// `.sync` / `.sync:2`: the handler returns when the job it started is finished.
    Sync,
    /// `.waitForTaskToken`: the handler only hands the token on; the task ends with
    /// send_task_success / send_task_failure.
    WaitForTaskToken,
}

/// Splits `arn:aws:states:::sqs:sendMessage.waitForTaskToken` into the base resource and pattern.
pub fn split_resource(resource: &str) -> (&str, Pattern) {
    if let Some(base) = resource.strip_suffix(".waitForTaskToken") {
        return (base, Pattern::WaitForTaskToken);
    }
    for suffix in [".sync:2", ".sync"] {
        if let Some(base) = resource.strip_suffix(suffix) {
            return (base, Pattern::Sync);
        }
    }
    (resource, Pattern::RequestResponse)
}

/// What a handler receives.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// The resource after `${…}` substitution, with its pattern suffix.
    pub resource: String,
    pub pattern: Pattern,
    pub input: Value,
    /// Always set: handlers may send heartbeats with it; `.waitForTaskToken` tasks complete with it.
    pub task_token: String,
    pub execution_arn: String,
    pub state_name: String,
}

#[async_trait]
pub trait TaskHandler: Send + Sync {
    /// The result becomes the task's result; an error is matched by Retry/Catch by its name.
    /// For `.waitForTaskToken` the returned value is ignored (an error still fails the task).
    async fn invoke(&self, request: TaskRequest) -> Result<Value, StateError>;
}

/// Handlers by base resource (the pattern suffix removed), with an optional fallback.
#[derive(Default, Clone)]
pub struct TaskRegistry {
    handlers: HashMap<String, Arc<dyn TaskHandler>>,
    fallback: Option<Arc<dyn TaskHandler>>,
    substitutions: HashMap<String, String>,
}

impl TaskRegistry {
    pub fn new() -> TaskRegistry {
        TaskRegistry::default()
    }

    /// Registers a handler for a resource; `.sync` and `.waitForTaskToken` variants share it.
    pub fn register(&mut self, resource: &str, handler: Arc<dyn TaskHandler>) -> &mut Self {
        let resource = self.substitute(resource);
        let (base, _) = split_resource(&resource);
        self.handlers.insert(base.to_string(), handler);
        self
    }

    /// Handler for any resource that has none of its own.
    pub fn fallback(&mut self, handler: Arc<dyn TaskHandler>) -> &mut Self {
        self.fallback = Some(handler);
        self
    }

    /// `${Name}` → value, applied to Task resources before lookup (like DefinitionSubstitutions).
    pub fn substitution(&mut self, name: &str, value: &str) -> &mut Self {
        self.substitutions
            .insert(name.to_string(), value.to_string());
        self
    }

    pub fn substitute(&self, resource: &str) -> String {
        let mut out = resource.to_string();
        for (k, v) in &self.substitutions {
            out = out.replace(&format!("${{{k}}}"), v);
        }
        out
    }

    pub fn lookup(&self, resource: &str) -> Option<Arc<dyn TaskHandler>> {
        let (base, _) = split_resource(resource);
        self.handlers
            .get(base)
            .cloned()
            .or_else(|| self.fallback.clone())
    }
}

/// A handler from a closure, for hosts and tests.
pub struct FnHandler<F>(pub F);

#[async_trait]
impl<F, Fut> TaskHandler for FnHandler<F>
where
    F: Fn(TaskRequest) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<Value, StateError>> + Send,
{
    async fn invoke(&self, request: TaskRequest) -> Result<Value, StateError> {
        (self.0)(request).await
    }
}

/// `(resourceType, resource)` as history events show them.
pub fn resource_parts(resource: &str) -> (String, String) {
    if let Some(rest) = resource.strip_prefix("arn:aws:states:::") {
        let (base, _) = split_resource(rest);
        if let Some((ty, action)) = base.split_once(':') {
            return (ty.to_string(), action.to_string());
        }
    }
    if resource.starts_with("arn:aws:lambda:") {
        return ("lambda".into(), resource.to_string());
    }
    if resource.contains(":activity:") {
        return ("activity".into(), resource.to_string());
    }
    ("custom".into(), resource.to_string())
}
