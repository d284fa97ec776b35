//! Pause points for crash tests: `tern serve` with `TERN_TEST_PAUSE_AT=<point>[,<point>…]`
//! stops at the first arrival at each named point, writes `<data_dir>/paused-<point>` (holding
//! what it was doing, e.g. the run id) and waits there until that file is removed, so a test
//! can `kill -9` the process (or the connector) in a state that lasts only microseconds otherwise (an image registered but not yet
//! recorded by the workflow, a manifest stored but not yet taken). Inert unless configured;
//! only the `tern` binary configures it, from the environment, once at start.
//!
//! Points: the replication task functions (`prepare`, `import`, `apply-delta`,
//! `check-snapshots`, `register-image`, `retain`, `complete`, …) pause *after* their effect and
//! before the workflow records their result; `upload-complete` pauses after a manifest's
//! Object Created event arrived and before the run records the manifest.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

struct Plan {
    points: HashSet<String>,
    marker_dir: PathBuf,
    reached: Mutex<HashSet<String>>,
}

static PLAN: OnceLock<Plan> = OnceLock::new();

/// Sets the pause points (comma-separated names) and where their markers go. The first call
/// wins; later calls are ignored.
pub fn configure(points: &str, marker_dir: impl Into<PathBuf>) {
    let points = points
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    let _ = PLAN.set(Plan {
        points,
        marker_dir: marker_dir.into(),
        reached: Mutex::new(HashSet::new()),
    });
}

/// Waits when `point` is configured and reached for the first time for this `detail` (a run:
/// a task of an earlier run invoked again after a restart must not take a later run's
/// pause), until its marker file
/// is removed (a test that killed another process meanwhile lets the server go on) or forever
/// (the test kills this process); returns at once otherwise.
pub async fn point(point: &str, detail: &str) {
    let Some(plan) = PLAN.get() else {
        return;
    };
    if !plan.points.contains(point) {
        return;
    }
    let first = plan
        .reached
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(format!("{point} {detail}"));
    if !first {
        return;
    }
    let marker = plan.marker_dir.join(format!("paused-{point}"));
    if let Err(e) = std::fs::write(&marker, detail) {
        tracing::error!(error = %e, marker = %marker.display(), "cannot write the pause marker");
    }
    tracing::warn!(
        point,
        detail,
        "paused for a crash test (TERN_TEST_PAUSE_AT)"
    );
    while marker.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tracing::warn!(point, detail, "released by the crash test; going on");
}
