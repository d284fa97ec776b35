//! Replication on one machine: the States engine running `statemachines/replication-run.asl.json`
//! with Tern's task functions, the local image service, staging over the S3 endpoint's files,
//! and the scheduler's tick loop — all driving the same [`Replication`] use cases the AWS
//! deployment runs.

mod notify;
mod staging;
mod workflows;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tern_core::images::Images;
use tern_core::replication::{Announcer, Replication, ReplicationSettings};
use tern_core::{Clock, Ids, Service};
use tern_states::{Engine, EngineConfig};

pub use notify::{spawn_upload_listener, BusSink};
pub use staging::LocalStaging;
pub use workflows::{
    function_resource, substituted_definition, LocalWorkflows, ReplicationTasks,
    REPLICATION_RUN_ASL,
};

use crate::images::LocalImages;

/// Where and how replication runs locally.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub data_dir: PathBuf,
    /// Root of the staged objects (`<staging_root>/<bucket>/<key>`).
    pub staging_root: PathBuf,
    pub region: String,
    /// How often the scheduler looks for due runs (SMS's granularity is minutes; locally a
    /// second keeps on-demand runs immediate).
    pub tick_interval: Duration,
    pub settings: ReplicationSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot open the workflow store {path}: {source}")]
    States {
        path: PathBuf,
        #[source]
        source: tern_states::StoreError,
    },
    #[error("cannot start the workflow engine: {0}")]
    Engine(#[from] tern_states::EngineError),
    #[error("cannot open the image service: {0}")]
    Images(#[from] tern_core::images::ImagesError),
}

/// The running replication side of `tern serve`.
pub struct ReplicationRuntime {
    replication: Replication,
    engine: Engine,
    images: Arc<LocalImages>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ReplicationRuntime {
    /// Opens the engine (resuming every execution that was running), the image service
    /// (resuming its tasks) and starts the engine's driver and the tick loop.
    pub fn start(
        service: Service,
        ids: Arc<dyn Ids>,
        clock: Arc<dyn Clock>,
        announcer: Arc<dyn Announcer>,
        config: RuntimeConfig,
    ) -> Result<Self, RuntimeError> {
        let states_db = config.data_dir.join("states.db");
        let store =
            tern_states::SqliteStore::open(&states_db).map_err(|source| RuntimeError::States {
                path: states_db.clone(),
                source,
            })?;
        let tasks = ReplicationTasks::default();
        let engine = Engine::open(EngineConfig {
            store: Arc::new(store),
            tasks: tasks.registry(),
            clock: Arc::new(workflows::EngineClock(clock.clone())),
            region: config.region.clone(),
        })?;
        let workflows = LocalWorkflows::new(engine.clone())?;
        let images = Arc::new(LocalImages::open(
            &config.data_dir,
            &config.staging_root,
            ids,
            clock,
        )?);
        let replication = Replication::new(
            service,
            images.clone() as Arc<dyn Images>,
            Arc::new(workflows),
            Arc::new(LocalStaging::new(&config.staging_root)),
            announcer,
            config.settings.clone(),
        );
        tasks.set(replication.clone());
        let driver = engine.spawn_driver();
        let ticker = {
            let replication = replication.clone();
            let every = config.tick_interval;
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    if let Err(e) = replication.tick().await {
                        tracing::warn!(error = %e, "scheduler tick failed");
                    }
                }
            })
        };
        Ok(Self {
            replication,
            engine,
            images,
            tasks: vec![driver, ticker],
        })
    }

    pub fn replication(&self) -> &Replication {
        &self.replication
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn images(&self) -> &Arc<LocalImages> {
        &self.images
    }

    /// Stops the driver and the tick loop. Executions and image tasks in flight resume when
    /// the data directory is opened again.
    pub fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        // Other holders of the image service (the API's use cases) may outlive this call; the
        // data directory must be free for the next open all the same.
        self.images.stop();
    }
}

impl Drop for ReplicationRuntime {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
