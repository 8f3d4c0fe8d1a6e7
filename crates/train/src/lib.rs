//! Training stage: the loop, optimizer, schedules, accumulation, evaluation, checkpoints and metrics.
//! Adapters are written through `runner_model::peft`, files through `runner_io::atomic`; the
//! stage depends on nothing downstream of it (no export).

pub mod checkpoint;
pub mod dist;
pub mod error;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod tensorboard;
pub mod trainer;

pub use error::TrainError;
