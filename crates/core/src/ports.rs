//! Small ports besides the store: time and identifiers. Adapters inject them so tests can
//! control both.

use time::OffsetDateTime;

/// The current time. Tests use a settable clock instead of sleeping.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// What an identifier names; decides its prefix (ARCHITECTURE.md, "Identifiers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    Connector,
    Server,
    ReplicationJob,
    ReplicationRun,
    App,
    /// A server group of an application (SMS documents no format; Tern uses `sg-`).
    ServerGroup,
    Validation,
    Image,
    Snapshot,
    /// A work item queued for a connector (inventory request, later replication work).
    Work,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Connector => "c-",
            IdKind::Server => "s-",
            IdKind::ReplicationJob => "sms-job-",
            IdKind::ReplicationRun => "sms-run-",
            IdKind::App => "app-",
            IdKind::ServerGroup => "sg-",
            IdKind::Validation => "val-",
            IdKind::Image => "ami-",
            IdKind::Snapshot => "snap-",
            IdKind::Work => "work-",
        }
    }
}

/// Source of new identifiers.
pub trait Ids: Send + Sync {
    fn new_id(&self, kind: IdKind) -> String;
}

/// Random ids: prefix + 17 lowercase hex digits.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl Ids for RandomIds {
    fn new_id(&self, kind: IdKind) -> String {
        let n: u128 = rand::random();
        let hex = format!("{:032x}", n);
        format!("{}{}", kind.prefix(), &hex[..17])
    }
}

/// A clock that only moves when told to: for tests and deterministic stepping.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self(std::sync::Mutex::new(start))
    }

    pub fn set(&self, t: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
