//! What every Tern Lambda shares: its [`Settings`], read once at cold start from the
//! environment `template.yaml` sets, and [`Deployment::connect`], which wires the core's
//! replication use cases to the stack's table (DynamoDB), staging bucket (S3), state machine
//! (Step Functions) and event bus (EventBridge) — the same use cases `tern serve` runs on its
//! embedded parts — and LaunchApp's launcher to CloudFormation ([`launcher`]).
//!
//! | variable | meaning |
//! |---|---|
//! | `TERN_TABLE_NAME` | the DynamoDB table |
//! | `TERN_STAGING_BUCKET` | the S3 bucket connectors upload runs into |
//! | `TERN_STAGING_PREFIX` | key prefix of the runs' objects (default `runs`) |
//! | `TERN_STATE_MACHINE_ARN` | the `replication-run` state machine |
//! | `TERN_EVENT_BUS_NAME` | the bus the state-change events go to (default `default`) |
//! | `TERN_EVENT_SOURCE` | their `source` (default `tern.sms`; never `aws.…`) |
//! | `TERN_ACCOUNT_ID` | the account, for the events' `account` field |
//! | `TERN_VMIMPORT_ROLE_NAME` | the role VM Import reads staged VMDKs with |
//! | `TERN_SEED_METHOD` | how seeds become snapshots: `import-snapshot` (default, EC2 ImportSnapshot) or `ebs-direct` (written block by block by WriteBlocks) |
//! | `TERN_OUTBOX_SWEEP_SECONDS` | age after which the scheduler publishes a change the stream consumer left behind (default 300) |
//! | `AWS_REGION` | set by Lambda itself |
//!
//! Limits and timings (`TERN_*` variables of [`tern_core::Config`]) are read by the caller.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tern_aws::{
    CfnLauncher, CfnLauncherSettings, DynamoStore, Ec2Images, Ec2ImagesSettings, EventBridge,
    S3Staging, SeedMethod, StepFunctions,
};
use tern_core::events::EventOrigin;
use tern_core::images::Images;
use tern_core::launcher::Launcher;
use tern_core::replication::{BusAnnouncer, Publishing, Replication, ReplicationSettings};
use tern_core::{RandomIds, Service, SystemClock};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {problem}")]
    Invalid { name: &'static str, problem: String },
}

/// Settings every replication Lambda reads at cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub table_name: String,
    pub region: String,
    pub account_id: String,
    pub staging_bucket: String,
    pub staging_prefix: String,
    pub state_machine_arn: String,
    pub event_bus_name: String,
    pub vmimport_role_name: String,
    pub outbox_sweep_after: Duration,
    pub seed_method: SeedMethod,
}

impl Settings {
    pub const TABLE_NAME: &'static str = "TERN_TABLE_NAME";
    pub const REGION: &'static str = "AWS_REGION";
    pub const ACCOUNT_ID: &'static str = "TERN_ACCOUNT_ID";
    pub const STAGING_BUCKET: &'static str = "TERN_STAGING_BUCKET";
    pub const STAGING_PREFIX: &'static str = "TERN_STAGING_PREFIX";
    pub const STATE_MACHINE_ARN: &'static str = "TERN_STATE_MACHINE_ARN";
    pub const EVENT_BUS_NAME: &'static str = "TERN_EVENT_BUS_NAME";
    pub const OUTBOX_SWEEP_SECONDS: &'static str = "TERN_OUTBOX_SWEEP_SECONDS";
    pub const VMIMPORT_ROLE_NAME: &'static str = "TERN_VMIMPORT_ROLE_NAME";
    pub const SEED_METHOD: &'static str = "TERN_SEED_METHOD";
    /// The variables without a default; `template.yaml` must set the `TERN_*` ones on every
    /// replication function.
    pub const REQUIRED: [&'static str; 6] = [
        Self::TABLE_NAME,
        Self::REGION,
        Self::ACCOUNT_ID,
        Self::STAGING_BUCKET,
        Self::STATE_MACHINE_ARN,
        Self::VMIMPORT_ROLE_NAME,
    ];

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `lookup` returns a variable's value; tests pass a map instead of the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let value = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let get = |name: &'static str| value(name).ok_or(ConfigError::Missing(name));
        let state_machine_arn = get(Self::STATE_MACHINE_ARN)?;
        if !state_machine_arn.starts_with("arn:") || !state_machine_arn.contains(":stateMachine:") {
            return Err(ConfigError::Invalid {
                name: Self::STATE_MACHINE_ARN,
                problem: format!("{state_machine_arn:?} is not a state machine ARN"),
            });
        }
        let outbox_sweep_after = match value(Self::OUTBOX_SWEEP_SECONDS) {
            None => Duration::from_secs(300),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s >= 60)
                .map(Duration::from_secs)
                .ok_or(ConfigError::Invalid {
                    name: Self::OUTBOX_SWEEP_SECONDS,
                    problem: format!("{v:?} is not a whole number of seconds of at least 60"),
                })?,
        };
        let seed_method = match value(Self::SEED_METHOD) {
            None => SeedMethod::default(),
            Some(v) => SeedMethod::parse(&v).ok_or(ConfigError::Invalid {
                name: Self::SEED_METHOD,
                problem: format!("{v:?} is not import-snapshot or ebs-direct"),
            })?,
        };
        Ok(Self {
            table_name: get(Self::TABLE_NAME)?,
            region: get(Self::REGION)?,
            account_id: get(Self::ACCOUNT_ID)?,
            staging_bucket: get(Self::STAGING_BUCKET)?,
            staging_prefix: value(Self::STAGING_PREFIX).unwrap_or_else(|| "runs".into()),
            state_machine_arn,
            event_bus_name: value(Self::EVENT_BUS_NAME).unwrap_or_else(|| "default".into()),
            vmimport_role_name: get(Self::VMIMPORT_ROLE_NAME)?,
            outbox_sweep_after,
            seed_method,
        })
    }
}

/// The `source` of the events this deployment emits: `event_source` (`TERN_EVENT_SOURCE`, the
/// stack parameter `EventSource`), default `tern.sms`. EventBridge refuses PutEvents entries
/// whose source starts with `aws.` unless AWS sends them, so such a value fails at start
/// instead of failing every publication.
pub fn event_source(config: &tern_core::Config) -> Result<String, ConfigError> {
    let source = config
        .event_source
        .clone()
        .unwrap_or_else(|| tern_core::events::DEFAULT_SOURCE.to_string());
    if source.starts_with("aws.") {
        return Err(ConfigError::Invalid {
            name: "TERN_EVENT_SOURCE",
            problem: format!(
                "{source:?}: EventBridge refuses PutEvents with an aws. source from anyone but AWS; use e.g. tern.sms and match it in your rules"
            ),
        });
    }
    Ok(source)
}

/// The SDK configuration of the function's own region and credentials.
pub async fn aws_config(region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .load()
        .await
}

/// The stack's image service: EC2 ImportSnapshot (or EBS direct, `TERN_SEED_METHOD`) for
/// seeds, EBS direct for deltas, AMIs.
/// Images and snapshots are tagged with the table's name, which tells this stack's images
/// from others' in the account.
pub fn images(aws: &aws_config::SdkConfig, settings: &Settings) -> Arc<dyn Images> {
    let mut images = Ec2ImagesSettings::new(
        &settings.vmimport_role_name,
        format!("tern:{}", settings.table_name),
    );
    images.seed_method = settings.seed_method;
    Arc::new(Ec2Images::new(
        aws_sdk_ec2::Client::new(aws),
        aws_sdk_ebs::Client::new(aws),
        aws_sdk_s3::Client::new(aws),
        images,
    ))
}

/// LaunchApp's launcher: CloudFormation stacks in the function's account and region, run as
/// the launch role the application's launch configuration names
/// (`arn:…:iam::TERN_ACCOUNT_ID:role/<roleName>`), tagged with the table's name as images are;
/// it reads the instances' consoles with EC2 (GetConsoleOutput) for USERDATA validations and
/// runs app-level validation scripts with SSM Run Command; a template over CloudFormation's
/// `TemplateBody` limit goes to the staging bucket (`apps/<stack>/`) for `TemplateURL`.
pub fn launcher(aws: &aws_config::SdkConfig, settings: &Settings) -> Arc<dyn Launcher> {
    Arc::new(
        CfnLauncher::new(
            aws_sdk_cloudformation::Client::new(aws),
            CfnLauncherSettings {
                account_id: settings.account_id.clone(),
                region: settings.region.clone(),
                managed_by: format!("tern:{}", settings.table_name),
            },
        )
        .with_ec2(aws_sdk_ec2::Client::new(aws))
        .with_ssm(aws_sdk_ssm::Client::new(aws))
        .with_template_bucket(aws_sdk_s3::Client::new(aws), &settings.staging_bucket),
    )
}

/// The use cases a replication Lambda runs, wired to the stack's resources.
#[derive(Clone)]
pub struct Deployment {
    pub store: Arc<dyn tern_core::store::Store>,
    pub service: Service,
    pub replication: Replication,
    /// LaunchApp / TerminateApp's stacks ([`launcher`]): the `api` function's API and the
    /// scheduler's tick (autoLaunch, following launches in progress) use it.
    pub launcher: Arc<dyn Launcher>,
}

impl Deployment {
    /// What every replication function does at cold start: its settings and limits from the
    /// environment, the SDK configuration of its region, and [`Deployment::connect`] with the
    /// stack's image service.
    pub async fn from_env() -> Result<(Self, Settings), lambda_runtime::Error> {
        let settings = Settings::from_env()?;
        let limits = tern_core::Config::from_env(|name| std::env::var(name).ok())?;
        let aws = aws_config(&settings.region).await;
        let deployment = Self::connect(&aws, &settings, limits, images(&aws, &settings))?;
        Ok((deployment, settings))
    }

    /// Wires the use cases: DynamoDB store, S3 staging, Step Functions workflows, EventBridge
    /// announcements published from the table's stream ([`Publishing::Stream`]), and `images`
    /// (EC2 and EBS in the stack; any [`Images`] in tests).
    pub fn connect(
        aws: &aws_config::SdkConfig,
        settings: &Settings,
        limits: tern_core::Config,
        images: Arc<dyn Images>,
    ) -> Result<Self, ConfigError> {
        let machines = HashMap::from([(
            tern_core::workflows::REPLICATION_RUN.to_string(),
            settings.state_machine_arn.clone(),
        )]);
        let workflows = StepFunctions::new(aws_sdk_sfn::Client::new(aws), machines);
        Self::connect_with(aws, settings, limits, images, Arc::new(workflows))
    }

    /// [`Deployment::connect`] with another workflow engine than the stack's Step Functions:
    /// the acceptance pipeline runs the same ASL on Tern's States engine, whose task tokens
    /// only that engine knows.
    pub fn connect_with(
        aws: &aws_config::SdkConfig,
        settings: &Settings,
        limits: tern_core::Config,
        images: Arc<dyn Images>,
        workflows: Arc<dyn tern_core::workflows::Workflows>,
    ) -> Result<Self, ConfigError> {
        let source = event_source(&limits)?;
        let store: Arc<dyn tern_core::store::Store> = Arc::new(DynamoStore::new(
            aws_sdk_dynamodb::Client::new(aws),
            &settings.table_name,
        ));
        let service = Service::new(
            store.clone(),
            Arc::new(SystemClock),
            Arc::new(RandomIds),
            limits,
        );
        let bus = EventBridge::new(
            aws_sdk_eventbridge::Client::new(aws),
            &settings.event_bus_name,
        );
        let origin = EventOrigin {
            source,
            region: settings.region.clone(),
            account: settings.account_id.clone(),
        };
        let replication = Replication::new(
            service.clone(),
            images,
            workflows,
            Arc::new(S3Staging::new(aws_sdk_s3::Client::new(aws))),
            Arc::new(BusAnnouncer::new(Arc::new(bus), origin)),
            ReplicationSettings {
                staging_bucket: settings.staging_bucket.clone(),
                staging_prefix: settings.staging_prefix.clone(),
                publishing: Publishing::Stream {
                    sweep_after: settings.outbox_sweep_after,
                },
                ..ReplicationSettings::default()
            },
        );
        // The scheduler's tick launches autoLaunch applications and follows launches in
        // progress with the same launcher the API uses.
        let launcher = launcher(aws, settings);
        replication.attach_launcher(launcher.clone());
        Ok(Self {
            store,
            service,
            replication,
            launcher,
        })
    }
}

/// A Lambda error whose `errorType` Step Functions and EventBridge see: the name the state
/// machine's Retry and Catch lists match.
pub fn diagnostic(
    error_type: impl Into<String>,
    message: impl Into<String>,
) -> lambda_runtime::Diagnostic {
    lambda_runtime::Diagnostic {
        error_type: error_type.into(),
        error_message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const FULL: &[(&str, &str)] = &[
        ("TERN_TABLE_NAME", "tern"),
        ("AWS_REGION", "eu-west-1"),
        ("TERN_ACCOUNT_ID", "123456789012"),
        ("TERN_STAGING_BUCKET", "tern-staging-123"),
        ("TERN_VMIMPORT_ROLE_NAME", "tern-VmImportRole-1"),
        (
            "TERN_STATE_MACHINE_ARN",
            "arn:aws:states:eu-west-1:123456789012:stateMachine:ReplicationRun",
        ),
    ];

    #[test]
    fn settings_have_defaults_for_what_may_be_left_out() {
        let s = Settings::from_lookup(env(FULL)).unwrap();
        assert_eq!(s.staging_prefix, "runs");
        assert_eq!(s.event_bus_name, "default");
        assert_eq!(s.outbox_sweep_after, Duration::from_secs(300));
        assert_eq!(s.account_id, "123456789012");
        assert_eq!(s.seed_method, SeedMethod::ImportSnapshot);
        let mut ebs = FULL.to_vec();
        ebs.push(("TERN_SEED_METHOD", "ebs-direct"));
        assert_eq!(
            Settings::from_lookup(env(&ebs)).unwrap().seed_method,
            SeedMethod::EbsDirect
        );
    }

    #[test]
    fn each_missing_or_bad_variable_is_named() {
        for name in Settings::REQUIRED {
            let without: Vec<_> = FULL.iter().copied().filter(|(k, _)| *k != name).collect();
            assert_eq!(
                Settings::from_lookup(env(&without)).unwrap_err(),
                ConfigError::Missing(name)
            );
        }
        let mut bad = FULL.to_vec();
        bad.push(("TERN_OUTBOX_SWEEP_SECONDS", "5"));
        assert!(matches!(
            Settings::from_lookup(env(&bad)).unwrap_err(),
            ConfigError::Invalid {
                name: "TERN_OUTBOX_SWEEP_SECONDS",
                ..
            }
        ));
        let mut bad = FULL.to_vec();
        bad.push(("TERN_SEED_METHOD", "ebs"));
        assert!(matches!(
            Settings::from_lookup(env(&bad)).unwrap_err(),
            ConfigError::Invalid {
                name: "TERN_SEED_METHOD",
                ..
            }
        ));
        let mut bad = FULL.to_vec();
        bad.retain(|(k, _)| *k != "TERN_STATE_MACHINE_ARN");
        bad.push(("TERN_STATE_MACHINE_ARN", "ReplicationRun"));
        let err = Settings::from_lookup(env(&bad)).unwrap_err().to_string();
        assert!(
            err.contains("TERN_STATE_MACHINE_ARN") && err.contains("not a state machine ARN"),
            "{err}"
        );
    }
}
