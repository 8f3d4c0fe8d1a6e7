//! Training stage: the loop, optimizer, schedules, accumulation, evaluation, checkpoints and metrics.
