//! Training stage: the loop, optimizer, schedules, accumulation, evaluation, checkpoints and metrics.

pub mod checkpoint;
pub mod dist;
pub mod error;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use error::TrainError;
