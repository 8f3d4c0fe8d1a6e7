//! The run's step schedule (which units each optimizer step trains, computed one epoch at a
//! time) and the learning-rate schedules, each the same function of the optimizer step as in
//! transformers (`get_*_schedule_with_warmup`, which are `LambdaLR` multipliers of the peak rate).
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

/// The most optimizer steps one run may have: `num_epochs × steps per epoch` (or `max_steps`)
/// above this is a typo, not a run; the recipe checks `max_steps` against it at validation.
pub use runner_recipe::resolve::limits::MAX_TOTAL_STEPS;

/// A training unit: a packed row or a single sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Pack(usize),
    Sample(usize),
}

/// One optimizer step's work: its micro-batches, as lists of units.
#[derive(Debug, Clone, PartialEq)]
pub struct StepWork {
    pub epoch: f64,
    pub micro_batches: Vec<Vec<Unit>>,
}

/// The whole run's schedule, fixed by the data and the seed: epoch 0 visits the units in the
/// prepared order, epoch `e > 0` in the order `shuffle(units, seed + e)`; each epoch is cut
/// into micro-batches and then optimizer steps (its last step may have fewer micro-batches).
///
/// Steps are computed on demand, one epoch's order at a time, so memory is that of one epoch
/// whatever `num_epochs` is (issue 17: `num_epochs: 1e9` once materialised 576 GB of steps).
#[derive(Debug, Clone)]
pub struct StepPlan {
    units: usize,
    packed: bool,
    mbs: usize,
    accum: usize,
    steps_per_epoch: u64,
    total: u64,
    seed: u64,
    /// The epoch whose order `order` holds.
    epoch: Option<u64>,
    order: Vec<Unit>,
}

impl StepPlan {
    /// `units` packed rows (or samples) per epoch, `accum` micro-batches per step (already
    /// multiplied by the number of data-parallel ranks). Refuses a schedule of more than
    /// [`MAX_TOTAL_STEPS`] steps, naming where the count comes from.
    pub fn new(
        units: usize,
        packed: bool,
        micro_batch_size: usize,
        accum: usize,
        max_steps: Option<u64>,
        num_epochs: f64,
        seed: u64,
    ) -> Result<Self, String> {
        let mbs = micro_batch_size.max(1);
        let accum = accum.max(1);
        let steps_per_epoch = units.div_ceil(mbs).div_ceil(accum) as u64;
        let total = if units == 0 {
            0
        } else {
            match max_steps {
                Some(s) => s,
                None => {
                    let t = (num_epochs * steps_per_epoch as f64).ceil();
                    if t.is_nan() || t > MAX_TOTAL_STEPS as f64 {
                        return Err(format!(
                            "num_epochs {num_epochs} × {steps_per_epoch} steps per epoch is {t:.3e} \
                             optimizer steps, more than the {MAX_TOTAL_STEPS} a run may have; \
                             lower num_epochs or set max_steps"
                        ));
                    }
                    (t as u64).max(1)
                }
            }
        };
        if total > MAX_TOTAL_STEPS {
            return Err(format!(
                "max_steps {total} is more than the {MAX_TOTAL_STEPS} optimizer steps a run may have"
            ));
        }
        Ok(StepPlan {
            units,
            packed,
            mbs,
            accum,
            steps_per_epoch,
            total,
            seed,
            epoch: None,
            order: Vec::new(),
        })
    }

    /// Said before training when a micro-batch asks for more rows than an epoch has: the
    /// batch is then the whole epoch, smaller than the recipe's (issue 17: this was silent).
    pub fn note(&self) -> Option<String> {
        (self.units > 0 && self.mbs > self.units).then(|| {
            format!(
                "note: micro_batch_size {} is more than the {} {} an epoch has: each micro-batch \
                 holds all {}",
                self.mbs,
                self.units,
                if self.packed {
                    "packed rows"
                } else {
                    "samples"
                },
                self.units
            )
        })
    }

    /// Optimizer steps in the run.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_per_epoch
    }

    /// The work of optimizer step `k` (0-based, `k < total`).
    pub fn step(&mut self, k: u64) -> StepWork {
        let spe = self.steps_per_epoch.max(1);
        let (epoch, j) = (k / spe, (k % spe) as usize);
        if self.epoch != Some(epoch) {
            let unit = |i| {
                if self.packed {
                    Unit::Pack(i)
                } else {
                    Unit::Sample(i)
                }
            };
            self.order = (0..self.units).map(unit).collect();
            // Epoch 0 keeps the prepared order (the data stage already shuffled it with `seed`
            // when `shuffle_merged_datasets`); later epochs visit the units in a new order.
            if epoch > 0 {
                runner_data::prepare::shuffle(&mut self.order, self.seed.wrapping_add(epoch));
            }
            self.epoch = Some(epoch);
        }
        let per_step = self.mbs * self.accum;
        let start = (j * per_step).min(self.order.len());
        let end = ((j + 1) * per_step).min(self.order.len());
        StepWork {
            epoch: epoch as f64 + (j + 1) as f64 / spe as f64,
            micro_batches: self.order[start..end]
                .chunks(self.mbs)
                .map(<[Unit]>::to_vec)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule as it was built before it became lazy: every step of every epoch in a list.
    fn materialised(p: &StepPlan) -> Vec<StepWork> {
        let units: Vec<Unit> = (0..p.units)
            .map(|i| {
                if p.packed {
                    Unit::Pack(i)
                } else {
                    Unit::Sample(i)
                }
            })
            .collect();
        let mut out = Vec::new();
        let mut epoch = 0u64;
        while (out.len() as u64) < p.total {
            let mut order = units.clone();
            if epoch > 0 {
                runner_data::prepare::shuffle(&mut order, p.seed.wrapping_add(epoch));
            }
            let batches: Vec<Vec<Unit>> = order.chunks(p.mbs).map(<[Unit]>::to_vec).collect();
            for (k, step) in batches.chunks(p.accum).enumerate() {
                if out.len() as u64 >= p.total {
                    break;
                }
                out.push(StepWork {
                    epoch: epoch as f64 + (k + 1) as f64 / p.steps_per_epoch as f64,
                    micro_batches: step.to_vec(),
                });
            }
            epoch += 1;
        }
        out
    }

    #[test]
    fn lazy_steps_equal_the_materialised_schedule() {
        for (units, mbs, accum, epochs) in [(10, 3, 2, 3.0), (7, 1, 1, 2.5), (5, 8, 1, 4.0)] {
            let p = StepPlan::new(units, true, mbs, accum, None, epochs, 42).unwrap();
            let want = materialised(&p);
            assert_eq!(want.len() as u64, p.total());
            let mut lazy = p.clone();
            // Out of order too: a resumed run starts in the middle.
            for k in (0..p.total()).rev() {
                assert_eq!(lazy.step(k), want[k as usize], "step {k}");
            }
        }
    }

    #[test]
    fn issue_17_group_6_num_epochs_1e9_is_refused_and_memory_does_not_grow_with_epochs() {
        let e = StepPlan::new(100, false, 4, 1, None, 1e9, 0).unwrap_err();
        assert!(
            e.contains("num_epochs 1000000000 × 25 steps per epoch"),
            "{e}"
        );
        assert!(e.contains("lower num_epochs or set max_steps"), "{e}");
        // Within the bound, a long run holds one epoch's order, not every step.
        let mut p = StepPlan::new(100, false, 4, 1, None, 1e7, 0).unwrap();
        assert_eq!(p.total(), 250_000_000);
        let last = p.step(p.total() - 1);
        assert_eq!(last.micro_batches.len(), 1);
        assert!(p.order.len() == 100 && p.order.capacity() < 1000);
        assert!(StepPlan::new(100, false, 4, 1, Some(MAX_TOTAL_STEPS + 1), 1.0, 0).is_err());
        // A micro-batch larger than the data is said, not silently clamped.
        let p = StepPlan::new(3, true, 1000, 1, Some(2), 1.0, 0).unwrap();
        assert!(
            p.note()
                .unwrap()
                .contains("micro_batch_size 1000 is more than the 3 packed rows")
        );
        assert!(
            StepPlan::new(3, true, 2, 1, Some(2), 1.0, 0)
                .unwrap()
                .note()
                .is_none()
        );
    }

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
