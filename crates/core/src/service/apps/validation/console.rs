//! Server-level USERDATA validations read from the launched instances' consoles: the markers
//! GenerateTemplate's wrapper prints around each script (`apps/template.rs`), parsed
//! into a status and message, recorded and announced once per launch.

use super::*;

/// What an instance's console shows of validation `vid`: its status, and for one that ended,
/// its exit status and the last lines of its output (within SMS's 2500 characters).
pub(super) fn console_validation(console: &str, vid: &str) -> (ValidationStatus, Option<String>) {
    use super::template::{VALIDATION_BEGIN, VALIDATION_END};
    let begin = format!("{VALIDATION_BEGIN} {vid}");
    let end = format!("{VALIDATION_END} {vid} ");
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    let Some(start) = lines.iter().position(|l| l.trim() == begin) else {
        return (
            ValidationStatus::Pending,
            Some("waiting for the instance to run the validation script".into()),
        );
    };
    let Some(stop) = lines[start..]
        .iter()
        .position(|l| l.trim().starts_with(&end))
    else {
        return (ValidationStatus::InProgress, None);
    };
    let code = lines[start + stop].trim()[end.len()..].trim().to_string();
    let output = lines[start + 1..start + stop].join("\n");
    let head = if code == "0" {
        "the validation script exited with status 0".to_string()
    } else {
        format!("the validation script exited with status {code}")
    };
    let message = with_tail(&head, &output);
    let status = if code == "0" {
        ValidationStatus::Succeeded
    } else {
        ValidationStatus::Failed
    };
    (status, Some(message))
}

impl Service {
    /// The outcomes the consoles of a launched application's instances show for its USERDATA
    /// validations, by validation id. A console that cannot be read shows nothing.
    pub(super) async fn validations_on_consoles(
        &self,
        launcher: &dyn crate::launcher::Launcher,
        app: &App,
        config: &ValidationConfiguration,
    ) -> HashMap<String, RecordedValidation> {
        let mut out = HashMap::new();
        let Some(launch) = app.launch.as_ref() else {
            return out;
        };
        let (Some(stack), Some(launched)) = (&launch.stack_id, launch.latest_launch_time) else {
            return out;
        };
        let logical_id = |sid: &str| {
            app.launch_configuration
                .as_ref()
                .into_iter()
                .flat_map(|c| c.server_groups.iter())
                .flat_map(|g| g.servers.iter())
                .find(|s| s.server_id.as_deref() == Some(sid))
                .and_then(|s| s.logical_id.clone())
                .unwrap_or_else(|| super::launch::default_logical_id(sid))
        };
        for (vid, sid, v) in config.server_validations() {
            if v.server_validation_strategy != Some(ServerValidationStrategy::Userdata) {
                continue;
            }
            let logical = logical_id(sid);
            let (status, message) = match launcher.console_output(stack, &logical).await {
                Ok(Some(console)) => console_validation(&console, vid),
                // No console (yet): nothing to show, unless the time is up.
                Ok(None) => (ValidationStatus::ReadyForValidation, None),
                Err(e) => {
                    tracing::warn!(app_id = %app.app_id, server_id = %sid, error = ?e, "could not read the instance's console for its validation");
                    continue;
                }
            };
            // A script that never ends (or an instance that never runs it) fails once the
            // launch is `validation_timeout` old.
            let limit = self.config.validation_timeout;
            let (status, message) = if !matches!(
                status,
                ValidationStatus::Succeeded | ValidationStatus::Failed
            ) && self.now() - launched >= limit
            {
                let shown = match status {
                    ValidationStatus::InProgress => "started but did not end",
                    _ => "did not start",
                };
                (
                    ValidationStatus::Failed,
                    Some(format!(
                        "the validation script {shown} within {} of the launch (validation_timeout); see instance {logical}'s console, fix the script or the instance, and launch again",
                        crate::config::format_duration(limit)
                    )),
                )
            } else if status == ValidationStatus::ReadyForValidation {
                continue;
            } else {
                (status, message)
            };
            out.insert(
                vid.to_string(),
                RecordedValidation::new(status, message, launched),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_tells_a_validation_scripts_progress_and_outcome() {
        let vid = "val-0123456789abcdef0";
        let boot = "SeaBIOS\r\nTERN-BOOT-MARKER 6.1.0\r\n";
        assert_eq!(console_validation(boot, vid).0, ValidationStatus::Pending);
        let started = format!("{boot}TERN-VALIDATION-BEGIN {vid}\r\nchecking\r\n");
        assert_eq!(
            console_validation(&started, vid).0,
            ValidationStatus::InProgress
        );
        let ok =
            format!("{started}disk found\r\nTERN-VALIDATION-END {vid} 0\r\nTERN-BOOT-DONE\r\n");
        let (status, message) = console_validation(&ok, vid);
        assert_eq!(status, ValidationStatus::Succeeded);
        assert_eq!(
            message.as_deref(),
            Some("the validation script exited with status 0: checking\ndisk found")
        );
        let failed = format!("{started}TERN-VALIDATION-END {vid} 3\r\n");
        let (status, message) = console_validation(&failed, vid);
        assert_eq!(status, ValidationStatus::Failed);
        assert!(message
            .unwrap()
            .starts_with("the validation script exited with status 3"));
        // Another validation's markers say nothing of this one.
        let other = format!("{boot}TERN-VALIDATION-BEGIN val-1\r\nTERN-VALIDATION-END val-1 0\r\n");
        assert_eq!(console_validation(&other, vid).0, ValidationStatus::Pending);
        // A long output keeps its end, within SMS's 2500 characters.
        let long = format!(
            "{started}{}\r\nlast line\r\nTERN-VALIDATION-END {vid} 1\r\n",
            "x".repeat(5000)
        );
        let message = console_validation(&long, vid).1.unwrap();
        assert!(
            message.chars().count() <= MAX_STATUS_MESSAGE && message.ends_with("last line"),
            "{}",
            message.len()
        );
    }
}
