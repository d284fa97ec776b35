//! The SMS enums, with their exact wire strings (spec §3), plus Tern's own `OsType` and
//! `WorkKind`. Every enum serialises as its wire string, both in stored items and on the wire.

use std::fmt;
use std::str::FromStr;

/// The value was not one of the enum's strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a valid {enum_name}; expected one of: {expected}")]
pub struct UnknownEnumValue {
    pub enum_name: &'static str,
    pub value: String,
    pub expected: String,
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// Every value, in model order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact wire string.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownEnumValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    _ => Err(UnknownEnumValue {
                        enum_name: stringify!($name),
                        value: s.to_string(),
                        expected: [$($wire),+].join(", "),
                    }),
                }
            }
        }
    };
}

wire_enum!(
    /// `ConnectorStatus`.
    ConnectorStatus { Healthy => "HEALTHY", Unhealthy => "UNHEALTHY" }
);

wire_enum!(
    /// `ConnectorCapability`.
    ConnectorCapability {
        Vsphere => "VSPHERE",
        Scvmm => "SCVMM",
        HypervManager => "HYPERV-MANAGER",
        SnapshotBatching => "SNAPSHOT_BATCHING",
        SmsOptimized => "SMS_OPTIMIZED",
    }
);

wire_enum!(
    /// `VmManagerType`.
    VmManagerType { Vsphere => "VSPHERE", Scvmm => "SCVMM", HypervManager => "HYPERV-MANAGER" }
);

wire_enum!(
    /// `LicenseType`.
    LicenseType { Aws => "AWS", Byol => "BYOL" }
);

wire_enum!(
    /// `ServerType`.
    ServerType { VirtualMachine => "VIRTUAL_MACHINE" }
);

wire_enum!(
    /// `ServerCatalogStatus`.
    ServerCatalogStatus {
        NotImported => "NOT_IMPORTED",
        Importing => "IMPORTING",
        Available => "AVAILABLE",
        Deleted => "DELETED",
        Expired => "EXPIRED",
    }
);

wire_enum!(
    /// `ReplicationJobState`. Transitions: [`crate::states::job_transition`].
    ReplicationJobState {
        Pending => "PENDING",
        Active => "ACTIVE",
        Failed => "FAILED",
        Deleting => "DELETING",
        Deleted => "DELETED",
        Completed => "COMPLETED",
        PausedOnFailure => "PAUSED_ON_FAILURE",
        Failing => "FAILING",
    }
);

wire_enum!(
    /// `ReplicationRunState`. Transitions: [`crate::states::run_transition`].
    ReplicationRunState {
        Pending => "PENDING",
        Missed => "MISSED",
        Active => "ACTIVE",
        Failed => "FAILED",
        Completed => "COMPLETED",
        Deleting => "DELETING",
        Deleted => "DELETED",
    }
);

wire_enum!(
    /// `ReplicationRunType`.
    ReplicationRunType { OnDemand => "ON_DEMAND", Automatic => "AUTOMATIC" }
);

wire_enum!(
    /// `AppStatus`.
    AppStatus {
        Creating => "CREATING",
        Active => "ACTIVE",
        Updating => "UPDATING",
        Deleting => "DELETING",
        Deleted => "DELETED",
        DeleteFailed => "DELETE_FAILED",
    }
);

wire_enum!(
    /// `AppReplicationConfigurationStatus` (also the values of `AppLaunchConfigurationStatus`).
    AppConfigurationStatus { NotConfigured => "NOT_CONFIGURED", Configured => "CONFIGURED" }
);

wire_enum!(
    /// `AppReplicationStatus`.
    AppReplicationStatus {
        ReadyForConfiguration => "READY_FOR_CONFIGURATION",
        ConfigurationInProgress => "CONFIGURATION_IN_PROGRESS",
        ConfigurationInvalid => "CONFIGURATION_INVALID",
        ReadyForReplication => "READY_FOR_REPLICATION",
        ValidationInProgress => "VALIDATION_IN_PROGRESS",
        ReplicationPending => "REPLICATION_PENDING",
        ReplicationInProgress => "REPLICATION_IN_PROGRESS",
        Replicated => "REPLICATED",
        PartiallyReplicated => "PARTIALLY_REPLICATED",
        DeltaReplicationInProgress => "DELTA_REPLICATION_IN_PROGRESS",
        DeltaReplicated => "DELTA_REPLICATED",
        DeltaReplicationFailed => "DELTA_REPLICATION_FAILED",
        ReplicationFailed => "REPLICATION_FAILED",
        ReplicationStopping => "REPLICATION_STOPPING",
        ReplicationStopFailed => "REPLICATION_STOP_FAILED",
        ReplicationStopped => "REPLICATION_STOPPED",
    }
);

wire_enum!(
    /// `AppLaunchStatus`.
    AppLaunchStatus {
        ReadyForConfiguration => "READY_FOR_CONFIGURATION",
        ConfigurationInProgress => "CONFIGURATION_IN_PROGRESS",
        ConfigurationInvalid => "CONFIGURATION_INVALID",
        ReadyForLaunch => "READY_FOR_LAUNCH",
        ValidationInProgress => "VALIDATION_IN_PROGRESS",
        LaunchPending => "LAUNCH_PENDING",
        LaunchInProgress => "LAUNCH_IN_PROGRESS",
        Launched => "LAUNCHED",
        PartiallyLaunched => "PARTIALLY_LAUNCHED",
        DeltaLaunchInProgress => "DELTA_LAUNCH_IN_PROGRESS",
        DeltaLaunchFailed => "DELTA_LAUNCH_FAILED",
        LaunchFailed => "LAUNCH_FAILED",
        TerminateInProgress => "TERMINATE_IN_PROGRESS",
        TerminateFailed => "TERMINATE_FAILED",
        Terminated => "TERMINATED",
    }
);

wire_enum!(
    /// `ScriptType`.
    ScriptType { ShellScript => "SHELL_SCRIPT", PowershellScript => "POWERSHELL_SCRIPT" }
);

wire_enum!(
    /// `OutputFormat` (GenerateTemplate / GenerateChangeSet).
    OutputFormat { Json => "JSON", Yaml => "YAML" }
);

wire_enum!(
    /// `AppValidationStrategy`.
    AppValidationStrategy { Ssm => "SSM" }
);

wire_enum!(
    /// `ServerValidationStrategy`.
    ServerValidationStrategy { Userdata => "USERDATA" }
);

wire_enum!(
    /// `ValidationStatus`.
    ValidationStatus {
        ReadyForValidation => "READY_FOR_VALIDATION",
        Pending => "PENDING",
        InProgress => "IN_PROGRESS",
        Succeeded => "SUCCEEDED",
        Failed => "FAILED",
    }
);

wire_enum!(
    /// Tern's operating-system hint for a VM, reported by the connector. Decides which license
    /// types a job may use (Linux: BYOL only; Windows: AWS or BYOL).
    OsType { Linux => "LINUX", Windows => "WINDOWS" }
);

wire_enum!(
    /// Kind of a connector work item. New kinds are added by later releases; connectors skip
    /// kinds they do not know (see `tern_api::connector::WorkItem`).
    WorkKind {
        Inventory => "INVENTORY",
        Replicate => "REPLICATE",
        CommitRun => "COMMIT_RUN",
        ForgetJob => "FORGET_JOB"
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_round_trip() {
        for s in ReplicationJobState::ALL {
            assert_eq!(s.as_str().parse::<ReplicationJobState>().unwrap(), *s);
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(
                serde_json::from_str::<ReplicationJobState>(&json).unwrap(),
                *s
            );
        }
        assert_eq!(VmManagerType::HypervManager.as_str(), "HYPERV-MANAGER");
        assert_eq!(ConnectorCapability::ALL.len(), 5);
        assert_eq!(ReplicationRunState::ALL.len(), 7);
    }

    #[test]
    fn unknown_values_name_the_enum_and_choices() {
        let err = "Active".parse::<ReplicationJobState>().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("'Active'") && msg.contains("ReplicationJobState"),
            "{msg}"
        );
        assert!(msg.contains("PAUSED_ON_FAILURE"), "{msg}");
        assert!("aws".parse::<LicenseType>().is_err());
    }
}
