//! The process's answer to SIGINT/SIGTERM, shared by every stage. The binary installs the
//! signal handler; stages say here whether a stop request can wait for a safe point
//! ([`graceful`]: the training loop finishes its step and saves) and which stage runs, so that
//! anywhere else the handler ends the process at once, naming the stage, after removing the
//! temporary files [`crate::atomic`] has open (nothing is ever half-written under a final name).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

static GRACEFUL: AtomicUsize = AtomicUsize::new(0);
static STAGE: Mutex<String> = Mutex::new(String::new());

/// The flag a stop request sets (read by the training loop at each step boundary).
pub fn stop_flag() -> Arc<AtomicBool> {
    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    STOP.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// While the returned guard lives, a first stop request only sets [`stop_flag`].
pub struct Graceful(());

pub fn graceful() -> Graceful {
    GRACEFUL.fetch_add(1, Ordering::SeqCst);
    Graceful(())
}

impl Drop for Graceful {
    fn drop(&mut self) {
        GRACEFUL.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a stop request can wait for the current step (see [`graceful`]).
pub fn is_graceful() -> bool {
    GRACEFUL.load(Ordering::SeqCst) > 0
}

/// Names the stage now running, for the message of an interrupted process.
pub fn set_stage(name: &str) {
    let mut s = STAGE.lock().unwrap_or_else(|e| e.into_inner());
    s.clear();
    s.push_str(name);
}

/// The stage now running ("" before the first).
pub fn stage() -> String {
    STAGE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
