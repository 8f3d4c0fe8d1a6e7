//! A fault-injection hook for tests: with `RUNNER_FAULT_AT=N` in the environment the process
//! ends just before the Nth file-system operation made inside a [`scope`] (a checkpoint save,
//! the final export), as `kill -9` would: no destructor runs and no temporary is removed.
//! Without the variable every call is one relaxed load. The suite that kills a run at every
//! operation and resumes it lives in crates/cli/tests/faults.rs.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The exit code of a process ended by the hook (a test tells it from a real failure).
pub const EXIT_CODE: i32 = 86;
pub const ENV: &str = "RUNNER_FAULT_AT";

static DEPTH: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);

fn target() -> Option<u64> {
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    *AT.get_or_init(|| std::env::var(ENV).ok().and_then(|v| v.trim().parse().ok()))
}

/// File-system operations between this and its drop are counted by the hook.
pub struct Scope(());

pub fn scope() -> Scope {
    DEPTH.fetch_add(1, Ordering::SeqCst);
    Scope(())
}

impl Drop for Scope {
    fn drop(&mut self) {
        DEPTH.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Called just before a file-system operation (`what` on `path`).
pub fn op(what: &str, path: &Path) {
    let Some(at) = target() else { return };
    if DEPTH.load(Ordering::SeqCst) == 0 {
        return;
    }
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    if n == at {
        eprintln!(
            "fault injection ({ENV}={at}): the process ends before {what} {}",
            path.display()
        );
        std::process::exit(EXIT_CODE);
    }
}
