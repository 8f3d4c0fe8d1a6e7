//! Training stage: the loop, optimizer, schedules, accumulation, evaluation, checkpoints and metrics.

pub mod error;
pub mod optim;
pub mod schedule;

pub use error::TrainError;
