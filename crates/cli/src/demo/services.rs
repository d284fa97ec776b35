//! Starting the demo's in-process server and connector, and waiting on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aws_sdk_sms::config::{BehaviorVersion, Credentials, Region};
use tern_local::{Running, ServeConfig};

use super::*;
use report::EventLine;

impl Demo {
    pub(super) async fn start_services(&mut self) -> anyhow::Result<Services> {
        self.step = "2/6, starting tern serve".into();
        self.ui.status("starting tern serve");
        let data_dir = self.dir.join("server");
        let mut cfg = ServeConfig::new(&data_dir, "127.0.0.1:0".parse().expect("an address"));
        let manifests = Arc::new(Manifests {
            staging_root: data_dir.join(tern_local::s3::STAGING_DIR),
            staging: cfg
                .replication
                .as_ref()
                .map(|r| r.settings.staging())
                .unwrap_or_else(|| {
                    tern_core::replication::ReplicationSettings::default().staging()
                }),
            by_run: Mutex::new(HashMap::new()),
        });
        cfg.region = REGION.into();
        cfg.object_created = Some(manifests.clone());
        if let Some(replication) = cfg.replication.as_mut() {
            // Runs start within a quarter second of being due, instead of a second.
            replication.tick_interval = Duration::from_millis(250);
            // --launch runs the instance with the QEMU and accelerator --boot would use.
            replication.launcher.qemu = self.args.qemu.clone();
            replication.launcher.boot_kit = self.args.boot_kit.clone();
            replication.launcher.accel = self
                .args
                .accel
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?;
        }
        let running = tern_local::start(cfg)
            .await
            .context("starting tern serve")?;
        let mut rx = running.events().subscribe();
        let events = self.events.clone();
        let events_task = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        if event.detail_type != JOB_STATE_CHANGE {
                            continue;
                        }
                        if let Ok(v) = serde_json::to_value(&event) {
                            let line = EventLine::from_event(&v);
                            let mut seen = events.lock().unwrap_or_else(|p| p.into_inner());
                            // Delivery is at-least-once; a repeat carries the same id.
                            if seen.0.iter().any(|e| e.id == line.id) {
                                seen.1 += 1;
                            } else {
                                seen.0.push(line);
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the demo fell behind the event bus")
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        self.endpoint = Some(running.endpoint());
        self.ui.line(format!(
            "[2/6] tern serve is running in-process at {} (data in {}), events subscribed",
            running.endpoint(),
            data_dir.display()
        ));
        let admin = running.admin();
        let config = aws_sdk_sms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(running.endpoint())
            .credentials_provider(Credentials::new(
                &admin.access_key_id,
                &admin.secret_access_key,
                None,
                None,
                "tern-demo-admin",
            ))
            .build();
        let client = aws_sdk_sms::Client::from_conf(config);

        self.step = "3/6, starting the connector".into();
        self.ui.status("starting the connector");
        let connector_dir = self.dir.join("connector");
        let config_path = self.write_connector_files(&connector_dir, &running)?;
        let config = tern_connector::ConnectorConfig::load(&config_path)?;
        let mut agent = tern_connector::Agent::new(config)
            .await
            .context("starting the connector")?;
        let (agent_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(async move {
            agent
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        let mut services = Services {
            running,
            client,
            manifests,
            agent_stop: Some(agent_stop),
            agent: Some(agent),
            events_task,
        };
        let client = services.client.clone();
        let connector_id = self
            .wait_for(
                "the connector to register",
                Duration::from_secs(30),
                &mut services,
                || {
                    let client = client.clone();
                    async move {
                        let out = client.get_connectors().send().await.map_err(sdk)?;
                        Ok(out
                            .connector_list()
                            .first()
                            .and_then(|c| c.connector_id())
                            .map(str::to_owned))
                    }
                },
            )
            .await?;
        self.ui.line(format!(
            "[3/6] Connector {connector_id} registered (config {})",
            config_path.display()
        ));
        Ok(services)
    }

    pub(super) fn write_connector_files(
        &self,
        dir: &Path,
        running: &Running,
    ) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let vm = self.vm();
        let disk = |d: &vm::DiskFiles| {
            format!(
                "{{ path = {:?}, format = {:?} }}",
                d.image.display().to_string(),
                match d.format {
                    tern_disk::Format::Qcow2 => "qcow2",
                    _ => "vmdk",
                }
            )
        };
        let inventory = format!(
            "# The demo's VM, as a connector's `files` source lists it.\n\
             vm_manager_id = \"demo-vcenter\"\n\
             vm_manager_name = \"tern demo\"\n\
             vm_manager_type = \"VSPHERE\"\n\n\
             [[vms]]\n\
             id = \"{VM_ID}\"\n\
             name = \"demo-web01\"\n\
             folder = \"/demo/vm\"\n\
             os_type = \"LINUX\"\n\
             disks = [{}, {}]\n",
            disk(&vm.boot),
            disk(&vm.data)
        );
        std::fs::write(dir.join("inventory.toml"), inventory)?;
        let keys = running.connector();
        let config = format!(
            "# The demo's connector: the in-process server's connector keys.\n\
             endpoint = {:?}\n\
             region = \"{REGION}\"\n\
             name = \"tern-demo\"\n\
             state_dir = \"state\"\n\
             heartbeat_interval_secs = 1\n\
             poll_interval_secs = 1\n\n\
             [credentials]\n\
             access_key_id = {:?}\n\
             secret_access_key = {:?}\n\n\
             [files]\n\
             inventory = \"inventory.toml\"\n",
            running.endpoint(),
            keys.access_key_id,
            keys.secret_access_key
        );
        let path = dir.join("connector.toml");
        std::fs::write(&path, config)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(path)
    }

    /// Polls `f` until it yields a value, failing after `timeout` or when the connector stops.
    pub(super) async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        services: &mut Services,
        mut f: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        self.ui.status(format!("waiting for {what}"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await? {
                return Ok(v);
            }
            services.check_agent().await?;
            if Instant::now() > deadline {
                bail!("timed out after {}s waiting for {what}", timeout.as_secs());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
