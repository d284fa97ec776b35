//! The demo's replication: the seed and incremental runs, each watched stage by stage.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use aws_sdk_sms::types::ReplicationRunState;
use aws_smithy_types::DateTime;

use super::*;
use report::{bytes, DiskUpload, RunReport, StageStep};

impl Demo {
    pub(super) async fn replicate(&mut self, services: &mut Services) -> anyhow::Result<()> {
        let client = services.client.clone();
        self.step = "4/6, importing the catalog and creating the job".into();
        self.ui.status("importing the server catalog");
        client
            .import_server_catalog()
            .send()
            .await
            .map_err(sdk)
            .context("ImportServerCatalog")?;
        let c = client.clone();
        let server_id = self
            .wait_for(
                "GetServers to list the VM",
                Duration::from_secs(60),
                services,
                || {
                    let client = c.clone();
                    async move {
                        let out = client.get_servers().send().await.map_err(sdk)?;
                        Ok(out
                            .server_list()
                            .iter()
                            .find(|s| {
                                s.vm_server()
                                    .and_then(|v| v.vm_server_address())
                                    .and_then(|a| a.vm_id())
                                    == Some(VM_ID)
                            })
                            .and_then(|s| s.server_id())
                            .map(str::to_owned))
                    }
                },
            )
            .await?;
        self.server_id = Some(server_id.clone());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let job_id = client
            .create_replication_job()
            .server_id(&server_id)
            .seed_replication_time(DateTime::from_secs(now))
            .frequency(12)
            .number_of_recent_amis_to_keep(2)
            .description("tern demo")
            .send()
            .await
            .map_err(sdk)
            .context("CreateReplicationJob")?
            .replication_job_id()
            .ok_or_else(|| anyhow!("CreateReplicationJob returned no replicationJobId"))?
            .to_owned();
        self.job_id = Some(job_id.clone());
        self.ui.line(format!(
            "[4/6] Catalog imported: server {server_id} ({VM_ID}, 2 disks); replication job \
             {job_id}: frequency 12 h, seed now, numberOfRecentAmisToKeep 2"
        ));

        // Run 1: the seed, started by the scheduler at seedReplicationTime.
        let c = client.clone();
        let j = job_id.clone();
        let seed_run = self
            .wait_for(
                "the scheduler to start the seed run",
                Duration::from_secs(60),
                services,
                || {
                    let client = c.clone();
                    let job_id = j.clone();
                    async move {
                        let out = client
                            .get_replication_runs()
                            .replication_job_id(job_id)
                            .send()
                            .await
                            .map_err(sdk)?;
                        Ok(out
                            .replication_run_list()
                            .first()
                            .and_then(|r| r.replication_run_id())
                            .map(str::to_owned))
                    }
                },
            )
            .await?;
        self.ui.line("[5/6] Replication runs");
        self.ui.line(format!(
            "  run 1: the seed, started by the scheduler at seedReplicationTime ({seed_run})"
        ));
        self.watch_run(services, &job_id, &seed_run, Vec::new())
            .await?;

        for number in 2..=3 {
            self.step = "5/6, changing blocks of both disks".into();
            self.ui.status("changing blocks of both disks");
            let vm = self.vm().clone();
            let percent = self.args.change_percent;
            let rng = &mut self.rng;
            let changes = tokio::task::block_in_place(|| {
                vm.disks()
                    .iter()
                    .map(|d| vm::mutate(d, percent, rng))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .context("changing the disks")?;
            let run_id = client
                .start_on_demand_replication_run()
                .replication_job_id(&job_id)
                .description(format!("tern demo: incremental run {}", number - 1))
                .send()
                .await
                .map_err(sdk)
                .context("StartOnDemandReplicationRun")?
                .replication_run_id()
                .ok_or_else(|| anyhow!("StartOnDemandReplicationRun returned no run id"))?
                .to_owned();
            let described: Vec<String> = vm
                .disks()
                .iter()
                .zip(&changes)
                .map(|(d, c)| {
                    format!(
                        "{} disk {} blocks ({} zeroed)",
                        d.name,
                        c.count(),
                        c.zeroed.len()
                    )
                })
                .collect();
            self.ui.line(format!(
                "  run {number}: on demand ({run_id}), after changing {}",
                described.join(", ")
            ));
            self.watch_run(services, &job_id, &run_id, changes).await?;
        }

        self.step = "6/6, events and checks".into();
        self.ui.status("waiting for the last events");
        let want: Vec<String> = self.runs.iter().map(|r| r.run_id.clone()).collect();
        let events = self.events.clone();
        let _ = self
            .wait_for(
                "a Completed event for every run",
                Duration::from_secs(15),
                services,
                || {
                    let events = events.clone();
                    let want = want.clone();
                    async move {
                        let ev = &events.lock().unwrap_or_else(|p| p.into_inner()).0;
                        Ok(want
                            .iter()
                            .all(|r| ev.iter().any(|e| &e.run_id == r && e.state == "Completed"))
                            .then_some(()))
                    }
                },
            )
            .await;
        let (events, duplicates) = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let repeats = match duplicates {
            0 => String::new(),
            1 => ", and 1 repeated delivery dropped by event id".into(),
            n => format!(", and {n} repeated deliveries dropped by event id"),
        };
        self.ui.line(format!(
            "[6/6] Events received: {} \"{JOB_STATE_CHANGE}\"{repeats} (time, state, job, run, ami-id)",
            events.len()
        ));
        for e in &events {
            self.ui.line(format!("  {}", e.describe()));
        }
        self.verify(&events)
    }

    /// Follows one run until it completes, recording its stages; fails when it fails.
    pub(super) async fn watch_run(
        &mut self,
        services: &mut Services,
        job_id: &str,
        run_id: &str,
        changes: Vec<vm::Changes>,
    ) -> anyhow::Result<()> {
        let number = self.runs.len() + 1;
        self.step = format!("5/6, replication run {number} ({run_id})");
        let started = Instant::now();
        let timeout = Duration::from_secs(self.args.run_timeout_secs);
        let mut stages: Vec<StageStep> = Vec::new();
        let mut report = RunReport {
            number,
            run_id: run_id.to_owned(),
            run_type: String::new(),
            state: String::new(),
            ami_id: None,
            seconds: 0.0,
            stages: Vec::new(),
            uploads: Vec::new(),
            changes,
        };
        let outcome: anyhow::Result<()> = async {
            loop {
                let out = services
                    .client
                    .get_replication_runs()
                    .replication_job_id(job_id)
                    .send()
                    .await
                    .map_err(sdk)
                    .context("GetReplicationRuns")?;
                let run = out
                    .replication_run_list()
                    .iter()
                    .find(|r| r.replication_run_id() == Some(run_id))
                    .ok_or_else(|| {
                        anyhow!("run {run_id} is no longer listed by GetReplicationRuns")
                    })?;
                let state = run
                    .state()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                let step = StageStep {
                    at_secs: started.elapsed().as_secs_f64(),
                    state: state.clone(),
                    stage: run
                        .stage_details()
                        .and_then(|d| d.stage())
                        .map(str::to_owned),
                    progress: run
                        .stage_details()
                        .and_then(|d| d.stage_progress())
                        .map(str::to_owned),
                    status_message: run.status_message().map(str::to_owned),
                };
                report.run_type = run
                    .r#type()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default();
                report.state = state;
                if stages.last().is_none_or(|last| !last.same_as(&step)) {
                    self.ui.line(format!("      {}", step.describe()));
                    self.ui.status(format!(
                        "run {number}: {} {} {}",
                        step.state,
                        step.stage.as_deref().unwrap_or(""),
                        step.progress.as_deref().unwrap_or("")
                    ));
                    stages.push(step);
                }
                match run.state() {
                    Some(ReplicationRunState::Completed) => {
                        report.ami_id = run.ami_id().map(str::to_owned);
                        return Ok(());
                    }
                    Some(ReplicationRunState::Failed | ReplicationRunState::Deleted) => {
                        bail!(
                            "run {number} ({run_id}) ended {}: {}",
                            report.state,
                            run.status_message().unwrap_or("no status message")
                        );
                    }
                    _ => {}
                }
                services.check_agent().await?;
                if started.elapsed() > timeout {
                    bail!(
                        "run {number} ({run_id}) did not complete within {}s (last: {})",
                        timeout.as_secs(),
                        stages.last().map(StageStep::describe).unwrap_or_default()
                    );
                }
                tokio::time::sleep(POLL).await;
            }
        }
        .await;
        report.seconds = started.elapsed().as_secs_f64();
        report.stages = stages;
        let manifest = services
            .manifests
            .by_run
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned();
        if let Some(m) = &manifest {
            report.uploads = DiskUpload::from_manifest(m);
        }
        let names = ["boot", "data"];
        for u in &report.uploads {
            let name = names.get(u.index as usize).copied().unwrap_or("?");
            self.ui.line(format!("      {}", u.describe(name)));
        }
        if outcome.is_ok() {
            let total: u64 = self.vm().disks().iter().map(|d| d.size).sum();
            self.ui.line(format!(
                "      run {number} completed in {:.1}s: uploaded {} for {} of disks, AMI {}",
                report.seconds,
                bytes(report.uploaded()),
                bytes(total),
                report.ami_id.as_deref().unwrap_or("(none)")
            ));
        }
        self.runs.push(report);
        outcome
    }
}
