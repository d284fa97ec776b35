//! Replication jobs and runs: create, list, update, delete, on-demand runs, run progress.
//!
//! Validation (limits from `config.limits`): `frequency` within
//! `min_frequency_hours..=max_frequency_hours` (required unless `runOnce`);
//! `numberOfRecentAmisToKeep` 0 (keep all) ..= `max_amis_to_keep`; `seedReplicationTime` at most
//! `max_seed_delay` ahead; license type once the server's OS is known (Linux: BYOL only; Windows:
//! AWS or BYOL); one live job per server (ReplicationJobAlreadyExistsException); at most
//! `max_active_jobs` jobs occupying a slot (a counter item the store adds to atomically in the
//! same transaction, `Write::Add`, so concurrent creations refuse each other only at the limit);
//! `on_demand_runs_per_window` on-demand runs per job per `on_demand_window`
//! (ReplicationRunLimitExceededException); no on-demand run while a run is in progress
//! (OperationNotPermittedException); a runOnce job gets exactly one run and then COMPLETES.
//!
//! A job PAUSED_ON_FAILURE (after `max_consecutive_run_failures` failed runs in a row) is resumed
//! by UpdateReplicationJob: SMS offered resuming only in its console.
//!
//! DeleteReplicationJob ends the job (DELETING → DELETED in one transaction, its run in progress
//! cancelled), releases its slot, moves it to the `JOB_DELETED` partition and marks the server's
//! `replicationJobTerminated`; it never touches the AMIs the job produced. GetReplicationJobs
//! lists deleted jobs (state DELETED, R17) for `deleted_job_retention`; the scheduler then
//! purges their records.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{decode, expect_of, preflight, put, required, retrying, Listing, Service, Versioned};
use crate::enums::*;
use crate::error::{DomainError, Result};
use crate::keys;
use crate::model::{
    Connector, ReplicationJob, ReplicationRun, RunRef, Server, StageDetails, Teardown,
};
use crate::replication::outbox::StateChange;
use crate::states::{
    accepts_runs, job_transition, run_transition, JobEvent, JobTransition, RunEvent,
};
use crate::store::{Expect, RawItem, RawPage, StoreError, Write, MAX_TRANSACTION_WRITES};

/// The active-job counter item.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Counter {
    pub count: u32,
}

/// CreateReplicationJob's input. Numbers are wide so that out-of-range values reach validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewJob {
    pub server_id: String,
    pub seed_replication_time: Option<OffsetDateTime>,
    pub frequency: Option<i64>,
    pub run_once: Option<bool>,
    pub license_type: Option<LicenseType>,
    pub role_name: Option<String>,
    pub description: Option<String>,
    pub number_of_recent_amis_to_keep: Option<i64>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
}

/// UpdateReplicationJob's input: absent members stay unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUpdate {
    pub replication_job_id: String,
    pub frequency: Option<i64>,
    pub next_replication_run_start_time: Option<OffsetDateTime>,
    pub license_type: Option<LicenseType>,
    pub role_name: Option<String>,
    pub description: Option<String>,
    pub number_of_recent_amis_to_keep: Option<i64>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
}

/// Progress of a run, reported by the replication workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct RunUpdate {
    pub event: RunEvent,
    pub stage_details: Option<StageDetails>,
    pub status_message: Option<String>,
    /// Required with `RunEvent::Complete`.
    pub ami_id: Option<String>,
    /// With `RunEvent::Complete`: the run's snapshots, root disk first; they become the
    /// parents of the job's next incremental run.
    pub snapshot_ids: Vec<String>,
}

fn invalid(msg: impl Into<String>) -> DomainError {
    DomainError::InvalidParameter(msg.into())
}

fn not_permitted(msg: impl Into<String>) -> DomainError {
    DomainError::OperationNotPermitted(msg.into())
}

fn illegal(e: crate::states::IllegalTransition) -> DomainError {
    DomainError::OperationNotPermitted(e.to_string())
}

/// Resumes a job PAUSED_ON_FAILURE: its retry budget starts again.
/// The write of run `r`'s teardown record, for the transaction that deletes its job `j` or
/// fails the run (`run_failed`).
fn teardown_of(
    j: &ReplicationJob,
    r: &ReplicationRun,
    now: OffsetDateTime,
    run_failed: bool,
) -> Result<Write> {
    let teardown = Teardown {
        job_id: j.replication_job_id.clone(),
        run_id: r.replication_run_id.clone(),
        connector_id: j.connector_id.clone(),
        snapshot_tasks: r.workflow.snapshot_tasks.clone(),
        deleted_on: now,
        run_failed,
    };
    put(
        keys::teardown(&teardown.job_id, &teardown.run_id),
        &teardown,
        Expect::Any,
    )
}

fn resume(j: &mut ReplicationJob, why: &str) -> Result<()> {
    j.state = job_transition(j.state, JobEvent::Resume)
        .map_err(illegal)?
        .to;
    j.consecutive_failures = 0;
    j.paused_on = None;
    j.status_message = Some(why.to_string());
    Ok(())
}

impl Service {
    pub(crate) fn check_frequency(&self, f: i64) -> Result<u32> {
        let l = &self.config.limits;
        if f < i64::from(l.min_frequency_hours) || f > i64::from(l.max_frequency_hours) {
            return Err(invalid(format!(
                "frequency must be between {} and {} hours, got {f}",
                l.min_frequency_hours, l.max_frequency_hours
            )));
        }
        Ok(f as u32)
    }

    pub(crate) fn check_amis(&self, n: i64) -> Result<u32> {
        let max = self.config.limits.max_amis_to_keep;
        if n < 0 || n > i64::from(max) {
            return Err(invalid(format!(
                "numberOfRecentAmisToKeep must be between 0 (keep all) and {max}, got {n}"
            )));
        }
        Ok(n as u32)
    }

    pub(crate) fn check_not_too_far(&self, name: &str, t: OffsetDateTime) -> Result<()> {
        let max = self.config.limits.max_seed_delay;
        if t - self.now() > max {
            return Err(invalid(format!(
                "{name} may be at most {} days in the future",
                max.as_secs() / 86_400
            )));
        }
        Ok(())
    }

    pub(crate) fn check_license(
        os: Option<OsType>,
        license: Option<LicenseType>,
        server_id: &str,
    ) -> Result<()> {
        if os == Some(OsType::Linux) && license == Some(LicenseType::Aws) {
            return Err(invalid(format!(
                "{}: server {server_id} runs Linux, which can only use licenseType BYOL",
                preflight::rule::LICENSE_TYPE
            )));
        }
        Ok(())
    }

    /// R6: `encrypted` turns encryption on (with the account's default EBS key when no
    /// `kmsKeyId` is given); `kmsKeyId` only chooses the key. So a key on a job that is not
    /// encrypted is refused, by CreateReplicationJob and UpdateReplicationJob alike (EC2 refuses
    /// a KmsKeyId without Encrypted the same way). `encrypted` is the job's value after the
    /// request.
    pub(crate) fn check_kms(encrypted: bool, kms: Option<&str>) -> Result<()> {
        if !encrypted && kms.is_some_and(|k| !k.is_empty()) {
            return Err(invalid(
                "kmsKeyId requires encrypted: true (encrypted turns encryption on; kmsKeyId chooses the key)",
            ));
        }
        Ok(())
    }

    /// CreateReplicationJob; returns the new job id.
    #[tracing::instrument(name = "create_job", skip_all, fields(server_id = %req.server_id))]
    pub async fn create_job(&self, req: NewJob) -> Result<String> {
        let server_id = required("serverId", &req.server_id)?.to_string();
        let seed = req.seed_replication_time.ok_or_else(|| {
            DomainError::MissingParameter("seedReplicationTime is required".into())
        })?;
        let run_once = req.run_once.unwrap_or(false);
        let frequency = match (req.frequency, run_once) {
            (Some(f), _) => Some(self.check_frequency(f)?),
            (None, true) => None,
            (None, false) => {
                return Err(DomainError::MissingParameter(
                    "frequency is required unless runOnce is true".into(),
                ))
            }
        };
        let amis = self.check_amis(req.number_of_recent_amis_to_keep.unwrap_or(0))?;
        self.check_not_too_far("seedReplicationTime", seed)?;
        Self::check_kms(req.encrypted.unwrap_or(false), req.kms_key_id.as_deref())?;
        let job_id = self.ids.new_id(crate::IdKind::ReplicationJob);

        retrying!(self, server_id, async {
            let (catalog, server) = self.current_server(&server_id).await?;
            let Some(server) = server else {
                return Err(invalid(format!(
                    "there is no server {server_id} in the server catalog (see GetServers)"
                )));
            };
            let s = &server.value;
            let warnings = self.preflight_job(s, req.license_type)?;
            if s.replication_job_id.as_deref() == Some(job_id.as_str()) {
                // An earlier attempt of this very request committed, though its answer was
                // lost (see `commit_taking_slot`).
                return Ok(job_id.clone());
            }
            if s.has_live_job() {
                return Err(DomainError::JobAlreadyExists(format!(
                    "server {server_id} already has replication job {}",
                    s.replication_job_id.as_deref().unwrap_or_default()
                )));
            }
            if self
                .read::<Connector>(&keys::connector(&s.connector_id))
                .await?
                .is_none()
            {
                return Err(DomainError::NoConnectorsAvailable(format!(
                    "connector {} that serves server {server_id} is no longer associated",
                    s.connector_id
                )));
            }
            let now = self.now();
            let job = ReplicationJob {
                replication_job_id: job_id.clone(),
                server_id: server_id.clone(),
                server_type: s.server_type,
                vm_server: s.vm_server.clone(),
                seed_replication_time: seed,
                frequency,
                run_once,
                next_replication_run_start_time: Some(seed),
                license_type: req.license_type,
                role_name: req.role_name.clone(),
                latest_ami_id: None,
                state: ReplicationJobState::Pending,
                status_message: (!warnings.is_empty())
                    .then(|| format!("preflight warnings: {}", warnings.join("; "))),
                description: req.description.clone(),
                number_of_recent_amis_to_keep: amis,
                encrypted: req.encrypted.unwrap_or(false),
                kms_key_id: req.kms_key_id.clone().filter(|k| !k.is_empty()),
                replication_run_list: Vec::new(),
                os_type: s.os_type,
                connector_id: s.connector_id.clone(),
                created_on: now,
                run_count: 0,
                active_run: None,
                on_demand_run_times: Vec::new(),
                consecutive_failures: 0,
                latest_snapshot_ids: Vec::new(),
                latest_run_id: None,
                images: Vec::new(),
                paused_on: None,
                first_run_on: None,
                deleted_on: None,
            };
            let mut updated = s.clone();
            updated.replication_job_id = Some(job_id.clone());
            updated.replication_job_terminated = Some(false);
            let mut writes = vec![
                put(keys::job(&job_id), &job, Expect::Absent)?,
                put(
                    keys::server(s.generation, &server_id),
                    &updated,
                    server.expect(),
                )?,
            ];
            if let Some(c) = StateChange::of_job(&job, job.state, now) {
                writes.push(c.write()?);
            }
            let max_active = self.config.limits.max_active_jobs;
            let slot = writes.len();
            writes.push(Write::Add {
                key: keys::active_jobs(),
                delta: 1,
                at_most: Some(u64::from(max_active)),
            });
            // The catalog must not have been deleted since we read the server.
            writes.push(Write::Check {
                key: keys::catalog(),
                expect: expect_of(&catalog),
            });
            match self.store.transact(writes).await {
                Err(StoreError::ConditionFailed {
                    index: Some(index), ..
                }) if index == slot => {
                    return Err(DomainError::LimitExceeded(format!(
                        "the limit of {max_active} active replication jobs is reached; delete a job or raise limits.max_active_jobs"
                    )))
                }
                result => result?,
            }
            tracing::info!(replication_job_id = %job_id, server_id = %server_id, "replication job created");
            Ok(job_id.clone())
        })
    }

    /// A live job, or `not_found` for an id that names none.
    pub(crate) async fn live_job(
        &self,
        id: &str,
        not_found: fn(String) -> DomainError,
    ) -> Result<Versioned<ReplicationJob>> {
        let id = required("replicationJobId", id)?;
        if let Some(j) = self.read(&keys::job(id)).await? {
            return Ok(j);
        }
        if self.store.get(&keys::deleted_job(id)).await?.is_some() {
            return Err(not_found(format!("replication job {id} was deleted")));
        }
        Err(not_found(format!("there is no replication job {id}")))
    }

    /// One job by id, live or deleted (GetReplicationJobs with `replicationJobId`).
    pub async fn get_job(&self, id: &str) -> Result<ReplicationJob> {
        let id = required("replicationJobId", id)?;
        if let Some(j) = self.read::<ReplicationJob>(&keys::job(id)).await? {
            return Ok(j.value);
        }
        if let Some(j) = self.read::<ReplicationJob>(&keys::deleted_job(id)).await? {
            return Ok(j.value);
        }
        Err(invalid(format!("there is no replication job {id}")))
    }

    /// A page of all jobs in id order: the live ones and those deleted less than
    /// `deleted_job_retention` ago (state DELETED, R17). Two partition queries merged by id;
    /// the token is the last id answered, so it works across both.
    async fn job_page(&self, after: Option<&str>, limit: usize) -> Result<RawPage> {
        let limit = limit.max(1);
        let live = self.store.query_raw(keys::JOB, "", after, limit).await?;
        let gone = self
            .store
            .query_raw(keys::JOB_DELETED, "", after, limit)
            .await?;
        let horizon = self.now() - self.config.deleted_job_retention;
        let mut items = live.items;
        for item in gone.items {
            let job = decode::<ReplicationJob>(item.clone())?.value;
            if job.deleted_on.unwrap_or(job.created_on) > horizon {
                items.push(item);
            }
        }
        items.sort_by(|a, b| a.key.sk.cmp(&b.key.sk));
        // A job deleted between the two queries may be in both: answered once.
        items.dedup_by(|a, b| a.key.sk == b.key.sk);
        // Everything up to the smaller of the two partitions' last ids has been seen in both.
        let bound = match (live.last_sk, gone.last_sk) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(bound) = &bound {
            items.retain(|i| i.key.sk <= *bound);
        }
        if items.len() > limit {
            items.truncate(limit);
            let last = items.last().map(|i| i.key.sk.clone());
            return Ok(RawPage {
                items,
                last_sk: last,
            });
        }
        Ok(RawPage {
            items,
            last_sk: bound,
        })
    }

    /// A page of all jobs, live and recently deleted, in id order.
    pub async fn list_jobs(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Listing<ReplicationJob>> {
        let page = self.job_page(after, limit).await?;
        let items = page
            .items
            .into_iter()
            .map(|i| decode::<ReplicationJob>(i).map(|v| v.value))
            .collect::<Result<Vec<_>>>()?;
        Ok(Listing {
            items,
            last: page.last_sk,
        })
    }

    /// [`Service::list_jobs`] with the jobs as the store holds them, for callers that keep
    /// their own rendering of an unchanged item (the API's render cache); decode each with
    /// [`Service::decode_job`].
    pub async fn list_jobs_raw(&self, after: Option<&str>, limit: usize) -> Result<RawPage> {
        self.job_page(after, limit).await
    }

    /// A job from an item of [`Service::list_jobs_raw`].
    pub fn decode_job(item: RawItem) -> Result<ReplicationJob> {
        Ok(decode::<ReplicationJob>(item)?.value)
    }

    /// Deletes the records of jobs deleted more than `deleted_job_retention` ago, with their
    /// runs (the scheduler's tick calls this); returns how many went.
    pub async fn purge_deleted_jobs(&self) -> Result<usize> {
        let horizon = self.now() - self.config.deleted_job_retention;
        let mut purged = 0;
        for job in self.list_all::<ReplicationJob>(keys::JOB_DELETED).await? {
            let j = &job.value;
            if j.deleted_on.unwrap_or(j.created_on) > horizon {
                continue;
            }
            // Its runs first: a purge cut short leaves the job record, and the next tick
            // finishes it.
            let runs = keys::run_partition(&j.replication_job_id);
            loop {
                let page = self
                    .store
                    .query_raw(&runs, "", None, MAX_TRANSACTION_WRITES)
                    .await?;
                if page.items.is_empty() {
                    break;
                }
                let deletes = page
                    .items
                    .into_iter()
                    .map(|i| Write::Delete {
                        key: i.key,
                        expect: Expect::Any,
                    })
                    .collect();
                self.store.transact(deletes).await?;
            }
            let gone = self
                .store
                .write(Write::Delete {
                    key: keys::deleted_job(&j.replication_job_id),
                    expect: job.expect(),
                })
                .await;
            match gone {
                Ok(()) => purged += 1,
                Err(StoreError::ConditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(purged)
    }

    /// GetReplicationRuns: the job and a page of its runs, newest first.
    ///
    /// A job's runs are numbered 1..=`run_count` with no gaps (a skipped interval is a MISSED
    /// run), so a page is a range of numbers read with one ascending query and reversed. The
    /// token is the oldest run number answered: runs created while a client pages are newer
    /// than every page it has not read yet, so they neither shift nor repeat its pages.
    pub async fn list_runs(
        &self,
        job_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(ReplicationJob, Listing<ReplicationRun>)> {
        let job = self.get_job(job_id).await?;
        let newest = match after {
            None => job.run_count,
            Some(token) => token
                .parse::<u64>()
                .map_err(|_| invalid("nextToken is not a token from this listing"))?
                .saturating_sub(1),
        };
        if newest == 0 {
            return Ok((
                job,
                Listing {
                    items: Vec::new(),
                    last: None,
                },
            ));
        }
        let limit = limit.max(1) as u64;
        let oldest = newest.saturating_sub(limit - 1).max(1);
        let from = keys::run(&job.replication_job_id, oldest - 1).sk;
        let (items, _) = self
            .list::<ReplicationRun>(
                &keys::run_partition(&job.replication_job_id),
                Some(&from),
                (newest - oldest + 1) as usize,
            )
            .await?;
        let mut items: Vec<ReplicationRun> = items
            .into_iter()
            .map(|v| v.value)
            .filter(|r| r.seq <= newest)
            .collect();
        items.reverse();
        Ok((
            job,
            Listing {
                items,
                last: (oldest > 1).then(|| keys::run("", oldest).sk),
            },
        ))
    }

    /// UpdateReplicationJob. Each attempt re-reads the job and re-applies only the given members,
    /// so concurrent updates of different members all survive.
    #[tracing::instrument(name = "update_job", skip_all, fields(job_id = %req.replication_job_id))]
    pub async fn update_job(&self, req: JobUpdate) -> Result<()> {
        let frequency = req.frequency.map(|f| self.check_frequency(f)).transpose()?;
        let amis = req
            .number_of_recent_amis_to_keep
            .map(|n| self.check_amis(n))
            .transpose()?;
        if let Some(t) = req.next_replication_run_start_time {
            self.check_not_too_far("nextReplicationRunStartTime", t)?;
        }
        retrying!(self, req.replication_job_id, async {
            let mut job = self
                .live_job(&req.replication_job_id, DomainError::JobNotFound)
                .await?;
            let j = &mut job.value;
            if !crate::states::occupies_slot(j.state) {
                return Err(not_permitted(format!(
                    "replication job {} is {} and can no longer be changed",
                    j.replication_job_id, j.state
                )));
            }
            if frequency.is_some() && j.run_once {
                return Err(invalid("a runOnce job has no frequency to update"));
            }
            Self::check_license(j.os_type, req.license_type, &j.server_id)?;
            let encrypted = req.encrypted.unwrap_or(j.encrypted);
            Self::check_kms(encrypted, req.kms_key_id.as_deref())?;
            if let Some(f) = frequency {
                j.frequency = Some(f);
            }
            if let Some(t) = req.next_replication_run_start_time {
                j.next_replication_run_start_time = Some(t);
            }
            if let Some(l) = req.license_type {
                j.license_type = Some(l);
            }
            if let Some(r) = &req.role_name {
                j.role_name = Some(r.clone());
            }
            if let Some(d) = &req.description {
                j.description = Some(d.clone());
            }
            if let Some(n) = amis {
                j.number_of_recent_amis_to_keep = n;
            }
            j.encrypted = encrypted;
            if let Some(k) = &req.kms_key_id {
                j.kms_key_id = Some(k.clone()).filter(|k| !k.is_empty());
            }
            if !encrypted {
                // Turning encryption off drops the key it used.
                j.kms_key_id = None;
            }
            // SMS has no API to resume a job paused after repeated failures (its console had a
            // button); in Tern, updating the job is the resume.
            if j.state == ReplicationJobState::PausedOnFailure {
                resume(j, "Resumed by UpdateReplicationJob")?;
                let change = StateChange::of_job(j, j.state, self.now());
                let key = keys::job(&j.replication_job_id);
                let mut writes = vec![put(key, &job.value, job.expect())?];
                if let Some(c) = &change {
                    writes.push(c.write()?);
                }
                self.store.transact(writes).await?;
                return Ok(());
            }
            let key = keys::job(&j.replication_job_id);
            self.store
                .write(put(key, &job.value, job.expect())?)
                .await?;
            Ok(())
        })
    }

    /// The write that releases a job's slot in the active-job counter.
    fn release_slot() -> Write {
        Write::Add {
            key: keys::active_jobs(),
            delta: -1,
            at_most: None,
        }
    }

    /// Marks the job's server terminated, when it is still in the catalog and still points at
    /// this job.
    async fn terminate_on_server(&self, job: &ReplicationJob) -> Result<Option<Write>> {
        let (_, server) = self.current_server(&job.server_id).await?;
        let Some(server) = server else {
            return Ok(None);
        };
        if server.value.replication_job_id.as_deref() != Some(&job.replication_job_id) {
            return Ok(None);
        }
        let mut s: Server = server.value.clone();
        s.replication_job_terminated = Some(true);
        Ok(Some(put(
            keys::server(s.generation, &s.server_id),
            &s,
            server.expect(),
        )?))
    }

    /// DeleteReplicationJob.
    #[tracing::instrument(name = "delete_job", skip(self))]
    pub async fn delete_job(&self, id: &str) -> Result<()> {
        retrying!(self, id, async {
            let job = self.live_job(id, DomainError::JobNotFound).await?;
            let mut j = job.value.clone();
            let now = self.now();
            let t: JobTransition = job_transition(j.state, JobEvent::Delete).map_err(illegal)?;
            let mut writes = vec![Write::Delete {
                key: keys::job(&j.replication_job_id),
                expect: job.expect(),
            }];
            if let Some(active) = j.active_run.take() {
                let key = keys::run(&j.replication_job_id, active.seq);
                if let Some(run) = self.read::<ReplicationRun>(&key).await? {
                    let mut r = run.value.clone();
                    r.state = run_transition(r.state, RunEvent::Delete).map_err(illegal)?;
                    r.state = run_transition(r.state, RunEvent::Purged).map_err(illegal)?;
                    r.completed_time = Some(now);
                    r.status_message = Some("Cancelled: the replication job was deleted".into());
                    Self::embed_run(&mut j, &r, usize::MAX);
                    writes.push(put(key, &r, run.expect())?);
                    // The run is stopped all the way down (R10): its work item is withdrawn
                    // here, in the same transaction, so no poll hands it out after the delete
                    // and the uploading connector's next report learns that it is gone; the
                    // execution, staged objects and image tasks are undone through the
                    // teardown record (`Replication::tear_down`), which the scheduler's tick
                    // sweeps until every step is done.
                    let work_id =
                        crate::replication::work::replicate_work_id(&r.replication_run_id);
                    writes.push(Write::Delete {
                        key: keys::work(&j.connector_id, &work_id),
                        expect: Expect::Any,
                    });
                    writes.push(teardown_of(&j, &r, now, false)?);
                }
            }
            // Nor is the connector asked to keep the block maps of the job's last run.
            if let Some(latest) = &j.latest_run_id {
                writes.push(Write::Delete {
                    key: keys::work(
                        &j.connector_id,
                        &crate::replication::work::commit_work_id(latest),
                    ),
                    expect: Expect::Any,
                });
            }
            // The connector is asked to remove what it keeps for the job on the source VM (its
            // dirty bitmaps or checkpoints) and in its state directory.
            writes.push(self.forget_work(&j, now).await?);
            if t.releases_slot() {
                writes.push(Self::release_slot());
            }
            if let Some(w) = self.terminate_on_server(&j).await? {
                writes.push(w);
            }
            j.state = t.to;
            j.state = job_transition(j.state, JobEvent::Purged)
                .map_err(illegal)?
                .to;
            j.next_replication_run_start_time = None;
            j.deleted_on = Some(now);
            j.status_message = Some("Deleted; AMIs created by the job are kept".into());
            writes.push(put(
                keys::deleted_job(&j.replication_job_id),
                &j,
                Expect::Any,
            )?);
            if let Some(c) = StateChange::of_job(&j, j.state, now) {
                writes.push(c.write()?);
            }
            self.store.transact(writes).await?;
            tracing::info!(replication_job_id = %j.replication_job_id, "replication job deleted");
            Ok(())
        })
    }

    /// The `FORGET_JOB` item of a job being deleted, naming the server's disks as the catalog
    /// has them.
    async fn forget_work(&self, j: &ReplicationJob, now: OffsetDateTime) -> Result<Write> {
        use crate::replication::work::{forget_work_id, ForgetJobWork, WorkDisk};
        let (_, server) = self.current_server(&j.server_id).await?;
        let (vm_id, disks) = server.map_or((String::new(), Vec::new()), |s| {
            let disks = s
                .value
                .disks
                .iter()
                .enumerate()
                .map(|(index, d)| WorkDisk {
                    index,
                    path: d.path.clone(),
                    format: d.format.clone(),
                })
                .collect();
            (s.value.vm_server.vm_server_address.vm_id.clone(), disks)
        });
        let work_id = forget_work_id(&j.replication_job_id);
        let payload = ForgetJobWork {
            job_id: j.replication_job_id.clone(),
            vm_id,
            disks,
        };
        let work = crate::model::Work {
            work_id: work_id.clone(),
            connector_id: j.connector_id.clone(),
            kind: WorkKind::ForgetJob,
            payload: serde_json::to_value(&payload).map_err(|e| DomainError::Corrupt {
                key: work_id.clone(),
                message: e.to_string(),
            })?,
            queued_on: now,
            leased_on: None,
        };
        put(keys::work(&j.connector_id, &work_id), &work, Expect::Any)
    }

    /// Puts `run` into the job's embedded run list (replacing the same run), keeping at most
    /// `keep` entries (the newest).
    pub(crate) fn embed_run(job: &mut ReplicationJob, run: &ReplicationRun, keep: usize) {
        match job
            .replication_run_list
            .iter_mut()
            .find(|r| r.replication_run_id == run.replication_run_id)
        {
            Some(slot) => *slot = run.clone(),
            None => job.replication_run_list.push(run.clone()),
        }
        let excess = job.replication_run_list.len().saturating_sub(keep);
        job.replication_run_list.drain(..excess);
    }

    /// StartOnDemandReplicationRun; returns the new run id (the run starts PENDING).
    #[tracing::instrument(name = "start_on_demand_run", skip(self, description))]
    pub async fn start_on_demand_run(
        &self,
        id: &str,
        description: Option<String>,
    ) -> Result<String> {
        let run_id = self.ids.new_id(crate::IdKind::ReplicationRun);
        let limits = &self.config.limits;
        retrying!(self, id, async {
            let job = self
                .live_job(id, DomainError::InvalidParameter)
                .await
                .map_err(|e| match e {
                    DomainError::InvalidParameter(m) if m.ends_with("was deleted") => {
                        not_permitted(m)
                    }
                    other => other,
                })?;
            let mut j = job.value.clone();
            let now = self.now();
            let mut changes = Vec::new();
            // An on-demand run is how a user retries a job paused after repeated failures.
            if j.state == ReplicationJobState::PausedOnFailure {
                resume(&mut j, "Resumed by an on-demand run")?;
                changes.extend(StateChange::of_job(&j, j.state, now));
            }
            if !accepts_runs(j.state) {
                return Err(not_permitted(format!(
                    "replication job {} is {}; it cannot start runs",
                    j.replication_job_id, j.state
                )));
            }
            if let Some(active) = &j.active_run {
                return Err(not_permitted(format!(
                    "run {} of replication job {} is still in progress",
                    active.replication_run_id, j.replication_job_id
                )));
            }
            if j.run_once && j.run_count > 0 {
                return Err(not_permitted(format!(
                    "replication job {} is a runOnce job and already ran",
                    j.replication_job_id
                )));
            }
            let window_start = (now - limits.on_demand_window).unix_timestamp();
            j.on_demand_run_times.retain(|&t| t > window_start);
            if j.on_demand_run_times.len() >= limits.on_demand_runs_per_window as usize {
                return Err(DomainError::RunLimitExceeded(format!(
                    "replication job {} already had {} on-demand runs in the last {} hours",
                    j.replication_job_id,
                    j.on_demand_run_times.len(),
                    limits.on_demand_window.as_secs() / 3600
                )));
            }
            let seq = j.run_count + 1;
            let run = ReplicationRun {
                replication_run_id: run_id.clone(),
                state: ReplicationRunState::Pending,
                run_type: ReplicationRunType::OnDemand,
                stage_details: None,
                status_message: None,
                ami_id: None,
                scheduled_start_time: Some(now),
                completed_time: None,
                description: description.clone(),
                encrypted: Some(j.encrypted),
                kms_key_id: j.kms_key_id.clone(),
                seq,
                workflow: Default::default(),
            };
            j.run_count = seq;
            j.first_run_on.get_or_insert(now);
            j.active_run = Some(RunRef {
                replication_run_id: run_id.clone(),
                seq,
            });
            j.on_demand_run_times.push(now.unix_timestamp());
            Self::embed_run(&mut j, &run, limits.runs_embedded_in_job as usize);
            changes.extend(StateChange::of_run(
                &j.replication_job_id,
                &j.server_id,
                &run,
                now,
            ));
            let mut writes = vec![
                put(keys::run(&j.replication_job_id, seq), &run, Expect::Absent)?,
                put(keys::job(&j.replication_job_id), &j, job.expect())?,
            ];
            for c in &changes {
                writes.push(c.write()?);
            }
            self.store.transact(writes).await?;
            tracing::info!(replication_job_id = %j.replication_job_id, replication_run_id = %run_id, "on-demand run started");
            Ok(run_id.clone())
        })
    }

    /// Applies a run's progress and the job transition it implies, in one transaction. This is
    /// what the replication workflow calls; only the job's run in progress can change.
    #[tracing::instrument(name = "record_run", skip(self, update), fields(event = ?update.event))]
    pub async fn record_run(
        &self,
        job_id: &str,
        run_id: &str,
        update: RunUpdate,
    ) -> Result<ReplicationJob> {
        if update.event == RunEvent::Complete && update.ami_id.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid("a completed run needs its amiId"));
        }
        if matches!(update.event, RunEvent::Delete | RunEvent::Purged) {
            return Err(invalid("runs are deleted through DeleteReplicationJob"));
        }
        let limits = &self.config.limits;
        retrying!(self, job_id, async {
            let job = self.live_job(job_id, DomainError::JobNotFound).await?;
            let mut j = job.value.clone();
            let active = j
                .active_run
                .clone()
                .filter(|a| a.replication_run_id == run_id)
                .ok_or_else(|| {
                    not_permitted(format!(
                        "run {run_id} is not the run in progress of replication job {job_id}"
                    ))
                })?;
            let key = keys::run(job_id, active.seq);
            let run =
                self.read::<ReplicationRun>(&key)
                    .await?
                    .ok_or_else(|| DomainError::Corrupt {
                        key: format!("{}/{}", key.pk, key.sk),
                        message: "missing run".into(),
                    })?;
            let mut r = run.value.clone();
            let now = self.now();
            r.state = run_transition(r.state, update.event).map_err(illegal)?;
            let mut changes = Vec::new();
            if update.stage_details.is_some() {
                r.stage_details = update.stage_details.clone();
            }
            if update.status_message.is_some() {
                r.status_message = update.status_message.clone();
                j.status_message = update.status_message.clone();
            }
            let job_event = match update.event {
                RunEvent::Start => Some(JobEvent::RunStarted),
                RunEvent::Complete => {
                    r.ami_id = update.ami_id.clone();
                    j.latest_ami_id = update.ami_id.clone();
                    j.consecutive_failures = 0;
                    if !update.snapshot_ids.is_empty() {
                        r.workflow.snapshot_ids = update.snapshot_ids.clone();
                        j.latest_snapshot_ids = update.snapshot_ids.clone();
                        j.latest_run_id = Some(r.replication_run_id.clone());
                    }
                    Some(JobEvent::RunSucceeded {
                        run_once: j.run_once,
                    })
                }
                RunEvent::Fail => {
                    j.consecutive_failures += 1;
                    let retries_left = limits
                        .max_consecutive_run_failures
                        .saturating_sub(j.consecutive_failures);
                    Some(JobEvent::RunFailed {
                        retries_left,
                        can_pause: !j.run_once,
                    })
                }
                RunEvent::Miss | RunEvent::Delete | RunEvent::Purged => None,
            };
            if crate::states::run_in_progress(r.state) {
                j.active_run = Some(active);
            } else {
                j.active_run = None;
                r.completed_time = Some(now);
            }
            let mut writes = Vec::new();
            changes.extend(StateChange::of_run(job_id, &j.server_id, &r, now));
            if let Some(ev) = job_event {
                let t = job_transition(j.state, ev).map_err(illegal)?;
                j.state = t.to;
                if t.to == ReplicationJobState::PausedOnFailure {
                    j.paused_on = Some(now);
                }
                if t.from != t.to {
                    changes.extend(StateChange::of_job(&j, t.to, now));
                }
                if t.releases_slot() {
                    writes.push(Self::release_slot());
                }
                if t.to == ReplicationJobState::Failed {
                    if let Some(w) = self.terminate_on_server(&j).await? {
                        writes.push(w);
                    }
                }
                if !crate::states::occupies_slot(t.to) {
                    j.next_replication_run_start_time = None;
                }
            }
            // A failed run leaves nothing behind: what it staged and built (snapshots, an image
            // registered before the failure) is removed by its teardown, recorded here so that
            // a crash before it ran leaves it to the scheduler's sweep.
            if update.event == RunEvent::Fail {
                writes.push(teardown_of(&j, &r, now, true)?);
            }
            Self::embed_run(&mut j, &r, limits.runs_embedded_in_job as usize);
            writes.push(put(key.clone(), &r, run.expect())?);
            writes.push(put(keys::job(job_id), &j, job.expect())?);
            for c in &changes {
                writes.push(c.write()?);
            }
            self.store.transact(writes).await?;
            Ok(j)
        })
    }
}
