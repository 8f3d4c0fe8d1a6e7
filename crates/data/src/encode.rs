//! Reading one dataset's rows and encoding them into samples: rows in chunks, encoded in
//! parallel (rayon), each kept sample handed to a sink in row order, with the dataset's counts.

use crate::error::{DataError, Result};
use crate::formats::RowEncoder;
use crate::sample::Sample;
use crate::source::{self, InputFile};
use crate::tokenizer::TextTokenizer;
use rayon::prelude::*;
use runner_recipe::plan::{DataPlan, DatasetPlan, ExcessLength};
use serde::Serialize;
use std::path::PathBuf;

const CHUNK_ROWS: usize = 2048;

/// One dataset's counts, as `runner preprocess` reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct DatasetSummary {
    pub path: String,
    pub files: Vec<PathBuf>,
    pub rows_read: u64,
    pub dropped_too_long: u64,
    pub dropped_untrainable: u64,
    pub truncated: u64,
    pub tokens: u64,
    pub trained_tokens: u64,
    /// Rows skipped as unreadable or malformed (only with `skip_bad_rows`).
    #[serde(default)]
    pub skipped_bad: u64,
    /// The first few of those errors.
    #[serde(default)]
    pub bad_row_examples: Vec<String>,
    /// Rows whose chat template rendered none of their messages' content.
    #[serde(default)]
    pub contentless: u64,
}

enum Outcome {
    Keep(Sample, bool),
    TooLong,
    Untrainable,
    /// Not encoded: another row's error stops the run.
    Stopped,
}

/// Errors that belong to one row (skippable with `skip_bad_rows`), as opposed to the file, the
/// tokenizer or the recipe.
pub(crate) fn is_row_error(e: &DataError) -> bool {
    matches!(
        e,
        DataError::Json { .. }
            | DataError::NotUtf8 { .. }
            | DataError::MissingField { .. }
            | DataError::WrongType { .. }
            | DataError::BadRow { .. }
            | DataError::TemplateRejected { .. }
    )
}

/// Which rows [`encode_dataset`] reads: bad ones skipped (and counted) or fatal, and at most
/// how many.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowOptions {
    pub skip_bad_rows: bool,
    pub max_rows: Option<u64>,
}

pub(crate) fn encode_dataset(
    ds: &DatasetPlan,
    files: &[InputFile],
    enc: &RowEncoder<'_>,
    tok: &TextTokenizer,
    plan: &DataPlan,
    rows: RowOptions,
    sink: &mut (dyn FnMut(Sample) -> Result<()> + Send),
) -> Result<DatasetSummary> {
    let skip_bad_rows = rows.skip_bad_rows;
    // A smoke run reads the first `max_rows` rows of each dataset.
    let mut left = rows.max_rows.unwrap_or(u64::MAX);
    let mut sum = DatasetSummary {
        path: ds.path.clone(),
        files: files.iter().map(|f| f.path.clone()).collect(),
        ..Default::default()
    };
    let max = plan.sequence_len;
    let mut bad = 0u64;
    let mut bad_examples: Vec<String> = Vec::new();
    let mut on_bad = |e: DataError| -> Result<()> {
        if !skip_bad_rows || !is_row_error(&e) {
            return Err(e);
        }
        bad += 1;
        if bad_examples.len() < 3 {
            bad_examples.push(e.to_string());
        }
        Ok(())
    };
    let mut encode_bad = 0u64;
    let max_row = source::max_row_bytes(plan.sequence_len);
    // Set by the first error that stops the run (a template past its limits, a tokenizer
    // failure), so the chunk's other rows return at once instead of each failing the same
    // slow way.
    let stop = std::sync::atomic::AtomicBool::new(false);
    for file in files {
        if left == 0 {
            break;
        }
        let mut bad_in_encode = Vec::new();
        source::read_rows_bounded(file, CHUNK_ROWS, max_row, &mut on_bad, &mut |mut rows| {
            // Past the limit the rest of the file is still parsed (a malformed row fails as it
            // would in the full run) but not encoded.
            rows.truncate(left.min(rows.len() as u64) as usize);
            left -= rows.len() as u64;
            sum.rows_read += rows.len() as u64;
            let results: Vec<Result<Outcome>> = rows
                .par_iter()
                .map(|row| {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return Ok(Outcome::Stopped);
                    }
                    let s = enc.encode(tok, plan.train_on_inputs, &row.value, &row.at);
                    if let Err(e) = &s
                        && !(skip_bad_rows && is_row_error(e))
                    {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    let mut s = s?;
                    let mut truncated = false;
                    if s.len() > max {
                        match plan.excess_length_strategy {
                            ExcessLength::Drop => return Ok(Outcome::TooLong),
                            ExcessLength::Raise => {
                                return Err(DataError::TooLong {
                                    at: row.at.clone(),
                                    len: s.len(),
                                    max,
                                });
                            }
                            ExcessLength::Truncate => {
                                s.input_ids.truncate(max);
                                s.labels.truncate(max);
                                truncated = true;
                            }
                        }
                    }
                    if s.trained_tokens() == 0 {
                        return Ok(Outcome::Untrainable);
                    }
                    Ok(Outcome::Keep(s, truncated))
                })
                .collect();
            for r in results {
                let r = match r {
                    Ok(r) => r,
                    Err(e) if skip_bad_rows && is_row_error(&e) => {
                        bad_in_encode.push(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                match r {
                    Outcome::Keep(s, truncated) => {
                        sum.tokens += s.len() as u64;
                        sum.trained_tokens += s.trained_tokens() as u64;
                        sum.truncated += u64::from(truncated);
                        sink(s)?;
                    }
                    Outcome::TooLong => sum.dropped_too_long += 1,
                    Outcome::Untrainable => sum.dropped_untrainable += 1,
                    Outcome::Stopped => {}
                }
            }
            Ok(())
        })?;
        encode_bad += bad_in_encode.len() as u64;
        for e in bad_in_encode {
            on_bad(e)?;
        }
    }
    // Rows that failed to parse never reached the encoder's count.
    sum.rows_read += bad - encode_bad;
    sum.skipped_bad = bad;
    sum.bad_row_examples = bad_examples;
    sum.contentless = enc.contentless_rows();
    if sum.rows_read == 0 {
        return Err(DataError::EmptyDataset {
            dataset: ds.path.clone(),
            looked: sum
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(sum)
}
