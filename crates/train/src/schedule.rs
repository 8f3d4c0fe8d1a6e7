//! Learning-rate schedules, each the same function of the optimizer step as in transformers
//! (`get_*_schedule_with_warmup`, which are `LambdaLR` multipliers of the peak rate).
//!
//! As in transformers, the multiplier for optimizer step `k` (0-based) is `lambda(k)`: with
//! warmup, the very first update runs at learning rate 0.

use runner_recipe::plan::{Scheduler, SchedulerKind, Warmup};

/// A schedule resolved against the run's total number of optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub kind: SchedulerKind,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_lr_ratio: Option<f64>,
}

impl LrSchedule {
    pub fn new(peak: f64, scheduler: &Scheduler, total_steps: u64) -> Self {
        LrSchedule {
            peak,
            kind: scheduler.kind,
            warmup_steps: warmup_steps(scheduler.warmup, total_steps),
            total_steps,
            min_lr_ratio: scheduler.cosine_min_lr_ratio,
        }
    }

    /// The learning rate used by optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.peak * self.multiplier(step)
    }

    fn multiplier(&self, step: u64) -> f64 {
        let step = step as f64;
        let warmup = self.warmup_steps as f64;
        let total = self.total_steps as f64;
        let warming = step < warmup;
        let warm = step / warmup.max(1.0);
        match self.kind {
            SchedulerKind::Constant => 1.0,
            SchedulerKind::ConstantWithWarmup => {
                if warming {
                    warm
                } else {
                    1.0
                }
            }
            SchedulerKind::Linear => {
                if warming {
                    warm
                } else {
                    ((total - step) / (total - warmup).max(1.0)).max(0.0)
                }
            }
            SchedulerKind::Cosine => {
                if warming {
                    return warm;
                }
                let progress = (step - warmup) / (total - warmup).max(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                match self.min_lr_ratio {
                    // transformers' get_cosine_with_min_lr_schedule_with_warmup (min_lr_rate).
                    Some(min) => (cosine * (1.0 - min) + min).max(0.0),
                    None => cosine.max(0.0),
                }
            }
        }
    }
}

/// `warmup_ratio` becomes steps as transformers' `TrainingArguments.get_warmup_steps` does:
/// `ceil(total · ratio)`.
pub fn warmup_steps(warmup: Warmup, total_steps: u64) -> u64 {
    match warmup {
        Warmup::Steps(s) => s,
        Warmup::Ratio(r) => (total_steps as f64 * r).ceil() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: SchedulerKind, warmup: Warmup, min: Option<f64>) -> LrSchedule {
        LrSchedule::new(
            1e-3,
            &Scheduler {
                kind,
                warmup,
                cosine_min_lr_ratio: min,
            },
            100,
        )
    }

    #[test]
    fn warmup_starts_at_zero_and_reaches_the_peak() {
        let s = sched(SchedulerKind::Cosine, Warmup::Steps(10), None);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 5e-4).abs() < 1e-15);
        assert!((s.lr(10) - 1e-3).abs() < 1e-15);
        assert!(s.lr(100).abs() < 1e-15);
    }

    #[test]
    fn warmup_ratio_rounds_up() {
        assert_eq!(warmup_steps(Warmup::Ratio(0.05), 30), 2);
        assert_eq!(warmup_steps(Warmup::Ratio(0.1), 100), 10);
    }

    #[test]
    fn cosine_floor_is_the_min_ratio() {
        let s = sched(SchedulerKind::Cosine, Warmup::Steps(0), Some(0.1));
        assert!((s.lr(100) - 1e-4).abs() < 1e-15);
    }
}
