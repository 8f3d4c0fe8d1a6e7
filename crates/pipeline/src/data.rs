//! Stage 2, prepare data: tokenize, mask and pack the datasets (or read the prepared-data
//! cache). In a job, rank 0 prepares first and the others then read its cache entry, instead
//! of every rank tokenizing the same data and racing to write the same entry.

use crate::error::Result;
use runner_recipe::plan::DataPlan;
use runner_train::dist::Communicator;
use std::sync::Arc;

/// Stage 2: the prepared data (its summary holds the cache key recorded in `run.json`).
pub fn prepare_data(
    plan: &DataPlan,
    tok: &runner_data::tokenizer::TextTokenizer,
    comm: Option<&Arc<dyn Communicator>>,
    skip_bad_rows: bool,
) -> Result<runner_data::Prepared> {
    let options = runner_data::PrepareOptions {
        skip_bad_rows,
        ..Default::default()
    };
    prepare_data_with(plan, tok, comm, options)
}

/// Stage 2 with preparation options (a smoke run limits the rows read).
pub fn prepare_data_with(
    plan: &DataPlan,
    tok: &runner_data::tokenizer::TextTokenizer,
    comm: Option<&Arc<dyn Communicator>>,
    options: runner_data::PrepareOptions,
) -> Result<runner_data::Prepared> {
    let rank = comm.map_or(0, |c| c.rank());
    let barrier =
        |c: &Arc<dyn Communicator>| c.all_reduce_f64("data preparation (rank 0 first)", &mut [0.0]);
    if let Some(c) = comm.filter(|_| rank != 0) {
        barrier(c)?;
    }
    let data = runner_data::prepare_with(plan, tok, options)?;
    if let Some(c) = comm.filter(|_| rank == 0) {
        barrier(c)?;
    }
    Ok(data)
}
