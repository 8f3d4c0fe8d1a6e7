//! A stall watchdog for collectives that block inside a library (NCCL waits forever for a rank
//! that died): the caller marks the stage it enters, a background thread notices when one lasts
//! longer than the timeout and reports rank and stage through a callback (the CLI prints it and
//! exits, which is the only way out of a blocked NCCL call).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type OnStall = Box<dyn Fn(String) + Send + Sync>;

pub struct Watchdog {
    rank: usize,
    current: Arc<Mutex<Option<(String, Instant)>>>,
}

/// Leaves the stage when dropped.
pub struct StageGuard<'a> {
    dog: &'a Watchdog,
}

impl Drop for StageGuard<'_> {
    fn drop(&mut self) {
        *self.dog.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Watchdog {
    /// Starts the watching thread; `on_stall` gets a message naming the rank and the stage.
    pub fn start(rank: usize, timeout: Duration, on_stall: OnStall) -> Self {
        let current: Arc<Mutex<Option<(String, Instant)>>> = Arc::default();
        let watched = Arc::downgrade(&current);
        let poll = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(poll);
                // The watchdog is gone: stop watching.
                let Some(cur) = watched.upgrade() else { return };
                let stalled = {
                    let g = cur.lock().unwrap_or_else(|e| e.into_inner());
                    g.as_ref()
                        .filter(|(_, since)| since.elapsed() > timeout)
                        .map(|(stage, since)| (stage.clone(), since.elapsed()))
                };
                if let Some((stage, for_)) = stalled {
                    on_stall(format!(
                        "rank {rank}: stalled at stage \"{stage}\" for {} s (another rank died or is stuck; see its output)",
                        for_.as_secs()
                    ));
                    return;
                }
            }
        });
        Self { rank, current }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Marks `stage` as entered until the guard drops.
    pub fn stage(&self, stage: &str) -> StageGuard<'_> {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((stage.to_string(), Instant::now()));
        StageGuard { dog: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_stage_that_outlasts_the_timeout_is_reported_with_rank_and_stage() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let dog = Watchdog::start(
            2,
            Duration::from_millis(100),
            Box::new(move |m| {
                let _ = tx.lock().unwrap().send(m);
            }),
        );
        {
            let _quick = dog.stage("step 1: gradients");
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            rx.try_recv().is_err(),
            "a finished stage must not be reported"
        );
        let _slow = dog.stage("step 2: gradient bucket 0");
        let m = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            m.starts_with("rank 2: stalled at stage \"step 2: gradient bucket 0\""),
            "{m}"
        );
    }
}
