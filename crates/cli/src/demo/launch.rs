//! `tern demo --launch`: the migrated server launched as a one-server application on tern serve's
//! local launcher, and its instance's console checked for the VM's boot marker: LaunchApp boots
//! what replication made.

use std::time::{Duration, Instant};

use aws_sdk_sms::types::{
    AppValidationConfiguration, AppValidationStrategy, LicenseType, S3Location, ScriptType, Server,
    ServerGroup, ServerGroupLaunchConfiguration, ServerGroupReplicationConfiguration,
    ServerGroupValidationConfiguration, ServerLaunchConfiguration, ServerReplicationConfiguration,
    ServerReplicationParameters, ServerValidationConfiguration, ServerValidationStrategy, Source,
    SsmValidationParameters, Tag, UserDataValidationParameters,
};
use aws_smithy_types::DateTime;
use serde_json::json;

use super::*;

/// What the VM's `/init` prints first (scripts/boot-kit/init).
const MARKER: &str = "TERN-BOOT-MARKER";

/// The app-level validation script, run on the launched instance through its command channel
/// (SSM Run Command's place on tern serve).
const APP_VALIDATION_SCRIPT: &str = "#!/bin/sh\n# tern demo: the application's instance answers commands\ntest -b /dev/vda || exit 1\necho \"answered on kernel $(uname -r)\"\n";

/// The demo server's validation script: the launched instance sees its migrated boot disk.
const VALIDATION_SCRIPT: &str = "#!/bin/sh\n# tern demo: the launched instance sees its migrated boot disk\ntest -b /dev/vda || { echo \"no boot disk /dev/vda\"; exit 1; }\necho \"boot disk /dev/vda: $(( $(cat /sys/block/vda/size) * 512 )) bytes\"\n";

impl Demo {
    pub(super) async fn launch_check(&mut self, services: &Services) -> anyhow::Result<()> {
        self.step = "launching the migrated server".into();
        self.ui.line("Launch");
        let c = &services.client;
        let server_id = self
            .server_id
            .clone()
            .ok_or_else(|| anyhow!("no server was imported"))?;
        self.ui.status("creating the application");
        // Tagged so that its instance runs app-level validation scripts, as SMS required.
        let created = c
            .create_app()
            .name("tern-demo")
            .description("the demo's VM, launched from its latest AMI")
            .tags(
                Tag::builder()
                    .key("UserForSMSApplicationValidation")
                    .value("true")
                    .build(),
            )
            .server_groups(
                ServerGroup::builder()
                    .name("vm")
                    .server_list(Server::builder().server_id(&server_id).build())
                    .build(),
            )
            .send()
            .await
            .map_err(sdk)?;
        let app_id = created
            .app_summary()
            .and_then(|s| s.app_id())
            .ok_or_else(|| anyhow!("CreateApp answered no appId"))?
            .to_string();
        let group_id = created
            .server_groups()
            .first()
            .and_then(|g| g.server_group_id())
            .ok_or_else(|| anyhow!("CreateApp answered no server group"))?
            .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // The application adopts the demo's replication job (a server has one live job).
        c.put_app_replication_configuration()
            .app_id(&app_id)
            .server_group_replication_configurations(
                ServerGroupReplicationConfiguration::builder()
                    .server_group_id(&group_id)
                    .server_replication_configurations(
                        ServerReplicationConfiguration::builder()
                            .server(Server::builder().server_id(&server_id).build())
                            .server_replication_parameters(
                                ServerReplicationParameters::builder()
                                    .seed_time(DateTime::from_secs(now))
                                    .frequency(12)
                                    .license_type(LicenseType::Byol)
                                    .number_of_recent_amis_to_keep(2)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(sdk)?;
        c.start_app_replication()
            .app_id(&app_id)
            .send()
            .await
            .map_err(sdk)?;
        c.put_app_launch_configuration()
            .app_id(&app_id)
            .role_name("tern-demo")
            .auto_launch(false)
            .server_group_launch_configurations(
                ServerGroupLaunchConfiguration::builder()
                    .server_group_id(&group_id)
                    .launch_order(1)
                    .server_launch_configurations(
                        ServerLaunchConfiguration::builder()
                            .server(Server::builder().server_id(&server_id).build())
                            .logical_id("DemoVm")
                            .instance_type("t3.micro")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(sdk)?;
        // A server-level USERDATA validation: the script runs in the launched instance, added
        // to its user data by GenerateTemplate; GetAppValidationOutput reads its outcome from
        // the instance's console.
        let script_key = "demo/validation/check-boot-disk.sh";
        let bucket = services.manifests.staging.bucket.clone();
        let stage = |key: &str, body: &str| -> anyhow::Result<()> {
            let staged = services.manifests.staging_root.join(&bucket).join(key);
            std::fs::create_dir_all(staged.parent().expect("a key has a folder"))?;
            std::fs::write(&staged, body)?;
            Ok(())
        };
        stage(script_key, VALIDATION_SCRIPT)?;
        let validations = Validations {
            app_id: &app_id,
            group_id: &group_id,
            server_id: &server_id,
            bucket: &bucket,
            server_script: script_key,
        };
        validations.put(c, None, None).await?;
        self.ui.status("LaunchApp: starting the instance");
        let started = Instant::now();
        c.launch_app().app_id(&app_id).send().await.map_err(sdk)?;
        let timeout = Duration::from_secs(self.args.boot_timeout_secs);
        let summary = self
            .launch_status_becomes(c, &app_id, "LAUNCHED", timeout)
            .await?;
        let details = summary.launch_details();
        let stack_id = details
            .and_then(|d| d.stack_id())
            .unwrap_or_default()
            .to_string();
        let data_dir = self.dir.join("server");
        let instance = tern_local::launcher::list(&data_dir)
            .map_err(|e| anyhow!(e))?
            .into_iter()
            .find(|s| s.stack_id == stack_id)
            .and_then(|s| s.instances.into_iter().next())
            .ok_or_else(|| anyhow!("stack {stack_id} has no instance record"))?;
        self.ui.status(format!(
            "waiting for {}'s boot marker on its console",
            instance.instance_id
        ));
        let console = instance.console();
        let deadline = started + timeout;
        let booted = tokio::task::block_in_place(|| loop {
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(MARKER)) {
                break Some(line.trim().to_string());
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        });
        let seconds = started.elapsed().as_secs_f64();
        self.check(
            booted.is_some(),
            match &booted {
                Some(line) => format!(
                    "LaunchApp ran the migrated server as instance {} ({}, {} vCPU, {} MiB, {}), and it booted its migrated disk: \"{line}\" on its console {seconds:.1}s after LaunchApp ({})",
                    instance.instance_id,
                    instance.instance_type,
                    instance.vcpus,
                    instance.memory_mib,
                    instance.accel.as_deref().unwrap_or("?"),
                    console.display()
                ),
                None => format!(
                    "LaunchApp's instance {} showed no boot marker within {}s ({})",
                    instance.instance_id,
                    timeout.as_secs(),
                    console.display()
                ),
            },
        );
        self.ui
            .status("GetAppValidationOutput: waiting for the validation script");
        let (validation, server_vid) = self
            .validation_outcome(c, &app_id, "boot-disk", deadline)
            .await?;
        self.check(
            validation.0 == "SUCCEEDED",
            format!(
                "the server's validation script ran in the instance: {} ({})",
                validation.0, validation.1
            ),
        );
        // An app-level validation on the (tagged) instance: sent through its command channel
        // once configured, as SSM Run Command would; its output kept in the staging bucket.
        self.ui
            .status("GetAppValidationOutput: running the app-level validation on the instance");
        let app_script = "demo/validation/check-instance.sh";
        stage(app_script, APP_VALIDATION_SCRIPT)?;
        validations
            .put(
                c,
                Some(server_vid),
                Some((instance.instance_id.as_str(), app_script)),
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let (app_validation, _) = self
            .validation_outcome(c, &app_id, "instance-check", deadline)
            .await?;
        self.check(
            app_validation.0 == "SUCCEEDED" && app_validation.1.contains("answered on kernel"),
            format!(
                "the app-level validation script ran on instance {} through its command channel: {} ({})",
                instance.instance_id, app_validation.0, app_validation.1
            ),
        );
        self.ui.status("TerminateApp");
        c.terminate_app()
            .app_id(&app_id)
            .send()
            .await
            .map_err(sdk)?;
        self.launch_status_becomes(c, &app_id, "TERMINATED", Duration::from_secs(60))
            .await?;
        self.check(
            !instance.running() && !instance.dir.join("disk0.qcow2").exists(),
            format!(
                "TerminateApp stopped instance {} and removed its disk",
                instance.instance_id
            ),
        );
        self.launch = Some(json!({
            "appId": app_id,
            "stackId": stack_id,
            "instanceId": instance.instance_id,
            "instanceType": instance.instance_type,
            "accel": instance.accel,
            "booted": booted.is_some(),
            "marker": booted,
            "seconds": seconds,
            "console": console.display().to_string(),
            "validation": {"status": validation.0, "message": validation.1},
            "appValidation": {"status": app_validation.0, "message": app_validation.1},
        }));
        Ok(())
    }

    /// The status and message of the app's validation `name` once it ended (or at the
    /// deadline), and its id.
    async fn validation_outcome(
        &self,
        c: &aws_sdk_sms::Client,
        app_id: &str,
        name: &str,
        deadline: Instant,
    ) -> anyhow::Result<((String, String), String)> {
        loop {
            let out = c
                .get_app_validation_output()
                .app_id(app_id)
                .send()
                .await
                .map_err(sdk)?;
            let v = out
                .validation_output_list()
                .iter()
                .find(|v| v.name() == Some(name))
                .ok_or_else(|| anyhow!("GetAppValidationOutput answered no validation {name}"))?;
            let status = v
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            let message = v.status_message().unwrap_or_default().to_string();
            if matches!(status.as_str(), "SUCCEEDED" | "FAILED") || Instant::now() > deadline {
                let id = v.validation_id().unwrap_or_default().to_string();
                return Ok(((status, message), id));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn launch_status_becomes(
        &self,
        c: &aws_sdk_sms::Client,
        app_id: &str,
        want: &str,
        timeout: Duration,
    ) -> anyhow::Result<aws_sdk_sms::types::AppSummary> {
        let deadline = Instant::now() + timeout;
        loop {
            let app = c.get_app().app_id(app_id).send().await.map_err(sdk)?;
            let summary = app
                .app_summary()
                .cloned()
                .ok_or_else(|| anyhow!("GetApp answered no appSummary"))?;
            let status = summary.launch_status().map(|s| s.as_str().to_string());
            if status.as_deref() == Some(want) {
                return Ok(summary);
            }
            if matches!(
                status.as_deref(),
                Some("LAUNCH_FAILED" | "TERMINATE_FAILED")
            ) {
                bail!(
                    "launchStatus {}: {}",
                    status.unwrap_or_default(),
                    summary.launch_status_message().unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "launchStatus is still {status:?}, not {want}, after {}s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The demo application's validation configuration: the server's USERDATA script, and once
/// the instance is known an app-level script on it.
struct Validations<'a> {
    app_id: &'a str,
    group_id: &'a str,
    server_id: &'a str,
    bucket: &'a str,
    server_script: &'a str,
}

impl Validations<'_> {
    fn source(&self, key: &str) -> Source {
        Source::builder()
            .s3_location(S3Location::builder().bucket(self.bucket).key(key).build())
            .build()
    }

    /// Puts the configuration: the server's validation (keeping its id, and so its outcome,
    /// when given) and, with `on`, the app-level one on that instance running that script.
    async fn put(
        &self,
        c: &aws_sdk_sms::Client,
        server_vid: Option<String>,
        on: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        let app_level = on.map(|(instance, key)| {
            AppValidationConfiguration::builder()
                .name("instance-check")
                .app_validation_strategy(AppValidationStrategy::Ssm)
                .ssm_validation_parameters(
                    SsmValidationParameters::builder()
                        .instance_id(instance)
                        .script_type(ScriptType::ShellScript)
                        .execution_timeout_seconds(60)
                        .output_s3_bucket_name(self.bucket)
                        .source(self.source(key))
                        .build(),
                )
                .build()
        });
        c.put_app_validation_configuration()
            .app_id(self.app_id)
            .set_app_validation_configurations(app_level.map(|v| vec![v]))
            .server_group_validation_configurations(
                ServerGroupValidationConfiguration::builder()
                    .server_group_id(self.group_id)
                    .server_validation_configurations(
                        ServerValidationConfiguration::builder()
                            .server(Server::builder().server_id(self.server_id).build())
                            .set_validation_id(server_vid)
                            .name("boot-disk")
                            .server_validation_strategy(ServerValidationStrategy::Userdata)
                            .user_data_validation_parameters(
                                UserDataValidationParameters::builder()
                                    .script_type(ScriptType::ShellScript)
                                    .source(self.source(self.server_script))
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }
}
