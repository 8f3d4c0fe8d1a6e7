//! The stage's entry point: `DataPlan` + tokenizer → train/eval samples (and packs), through the
//! cache. Rows are read in chunks and encoded in parallel (`encode`); a new cache entry is
//! written through a scratch file, so preparing holds one chunk of rows and one record batch,
//! not the dataset (`preprocess` never loads it; `prepare_with` reads the entry back).

use crate::cache::{self, KeyBuilder};
use crate::chat::ChatEncoder;
pub use crate::encode::DatasetSummary;
use crate::encode::encode_dataset;
use crate::error::{DataError, Result};
use crate::formats::{PromptLayout, RowEncoder};
use crate::pack::{Batch, Pack, pack_ffd, pack_lengths, packing_efficiency, pad_batch, pad_packs};
use crate::sample::Sample;
use crate::source::{self, InputFile};
use crate::template::{ChatTemplate, named_template_source};
use crate::tokenizer::{TextTokenizer, TokenizerOverrides};
use runner_recipe::plan::{
    ChatTemplate as PlanTemplate, DataPlan, DatasetFormat, DatasetPlan, ModelPlan, NamedTemplate,
    ValSet,
};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// What `runner preprocess` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub datasets: Vec<DatasetSummary>,
    pub rows_read: u64,
    pub rows_dropped_too_long: u64,
    pub rows_dropped_untrainable: u64,
    pub rows_truncated: u64,
    pub rows_skipped_bad: u64,
    pub train_samples: u64,
    pub eval_samples: u64,
    pub tokens: u64,
    pub trained_tokens: u64,
    /// Train packs and their fill, when `sample_packing`.
    pub train_packs: Option<u64>,
    pub packing_efficiency: Option<f64>,
    pub cache_key: String,
    pub cache_dir: PathBuf,
    pub reused_cache: bool,
    pub seconds: f64,
}

impl Summary {
    pub fn trained_fraction(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.trained_tokens as f64 / self.tokens as f64
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reused_cache {
            writeln!(
                f,
                "reused cache {} ({})",
                self.cache_key,
                self.cache_dir.display()
            )?;
        } else {
            writeln!(
                f,
                "prepared cache {} ({})",
                self.cache_key,
                self.cache_dir.display()
            )?;
        }
        for d in &self.datasets {
            writeln!(
                f,
                "  {}: {} rows from {} file(s), {} dropped (too long), {} dropped (nothing to train), {} truncated, {} tokens",
                d.path,
                d.rows_read,
                d.files.len(),
                d.dropped_too_long,
                d.dropped_untrainable,
                d.truncated,
                d.tokens
            )?;
        }
        writeln!(
            f,
            "rows read {}, dropped {} (too long) + {} (nothing to train), truncated {}",
            self.rows_read,
            self.rows_dropped_too_long,
            self.rows_dropped_untrainable,
            self.rows_truncated
        )?;
        if self.rows_skipped_bad > 0 {
            writeln!(f, "skipped {} bad rows, e.g.:", self.rows_skipped_bad)?;
            for d in &self.datasets {
                for e in &d.bad_row_examples {
                    writeln!(f, "  {e}")?;
                }
            }
        }
        writeln!(
            f,
            "samples: {} train, {} eval",
            self.train_samples, self.eval_samples
        )?;
        writeln!(
            f,
            "tokens {}, trained {} ({:.1}%)",
            self.tokens,
            self.trained_tokens,
            100.0 * self.trained_fraction()
        )?;
        if let (Some(p), Some(e)) = (self.train_packs, self.packing_efficiency) {
            writeln!(f, "packed into {p} sequences, efficiency {:.1}%", 100.0 * e)?;
        }
        let rate = if self.seconds > 0.0 {
            self.tokens as f64 / self.seconds
        } else {
            0.0
        };
        write!(f, "time {:.2} s ({:.0} tokens/s)", self.seconds, rate)
    }
}

/// The prepared data.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub train: Vec<Sample>,
    pub eval: Vec<Sample>,
    /// With `sample_packing`: the train samples packed into `sequence_len` rows.
    pub train_packs: Option<Vec<Pack>>,
    /// With `eval_sample_packing` (and packing): the eval samples packed.
    pub eval_packs: Option<Vec<Pack>>,
    pub summary: Summary,
}

impl Prepared {
    /// Training micro-batches in order, built lazily: packs when packing, else samples; padded to the longest
    /// row, or to `sequence_len` when `pad_to_sequence_len` (always when packing).
    pub fn train_batches<'a>(
        &'a self,
        micro_batch_size: usize,
        pad_id: u32,
        plan: &DataPlan,
    ) -> Box<dyn Iterator<Item = Batch> + 'a> {
        batches(
            &self.train,
            self.train_packs.as_deref(),
            micro_batch_size,
            pad_id,
            plan,
        )
    }

    /// Evaluation batches, the same way (packs when `eval_sample_packing`).
    pub fn eval_batches<'a>(
        &'a self,
        batch_size: usize,
        pad_id: u32,
        plan: &DataPlan,
    ) -> Box<dyn Iterator<Item = Batch> + 'a> {
        batches(
            &self.eval,
            self.eval_packs.as_deref(),
            batch_size,
            pad_id,
            plan,
        )
    }
}

fn batches<'a>(
    samples: &'a [Sample],
    packs: Option<&'a [Pack]>,
    size: usize,
    pad_id: u32,
    plan: &DataPlan,
) -> Box<dyn Iterator<Item = Batch> + 'a> {
    let size = size.max(1);
    let seq = plan.sequence_len;
    match packs {
        Some(packs) => Box::new(
            packs
                .chunks(size)
                .map(move |c| pad_packs(&c.iter().collect::<Vec<_>>(), samples, pad_id, Some(seq))),
        ),
        None => {
            let pad_to = plan.pad_to_sequence_len.then_some(seq);
            Box::new(
                samples
                    .chunks(size)
                    .map(move |c| pad_batch(&c.iter().collect::<Vec<_>>(), pad_id, pad_to)),
            )
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Re-prepare even when a cache entry exists.
    pub force: bool,
    /// Do not write the cache (e.g. `inspect`).
    pub no_write: bool,
    /// Skip rows that cannot be read or encoded (counted and reported) instead of stopping.
    pub skip_bad_rows: bool,
    /// Encode only the first N rows of each dataset (a smoke run, issue 19); part of the cache
    /// key, so a limited entry never stands in for the whole data.
    pub max_rows: Option<u64>,
}

impl PrepareOptions {
    fn rows(self) -> crate::encode::RowOptions {
        crate::encode::RowOptions {
            skip_bad_rows: self.skip_bad_rows,
            max_rows: self.max_rows,
        }
    }
}

/// Loads the tokenizer the model plan names (`tokenizer_config`, else `base_model`), applying
/// `special_tokens` and `tokens`.
pub fn load_tokenizer(model: &ModelPlan) -> Result<TextTokenizer> {
    let src = model.tokenizer.as_deref().unwrap_or(&model.base_model);
    if let Some(name) = src.strip_prefix("builtin:") {
        let mut t = TextTokenizer::builtin(name)?;
        t.apply_overrides(&TokenizerOverrides::from_model_plan(model))?;
        return Ok(t);
    }
    let mut path = PathBuf::from(src);
    if !path.exists() {
        let (snapshot, looked) = if source::looks_like_hub_id(src) {
            source::hub_snapshot("models", src, model.revision.as_deref())
        } else {
            (None, vec![src.to_string()])
        };
        match snapshot {
            Some(dir) => path = dir,
            None => {
                return Err(DataError::Tokenizer {
                    path: path.clone(),
                    message: format!(
                        "not found (looked at: {}); give `base_model`/`tokenizer_config` as a .gguf \
                         file or a folder with tokenizer.json, or download the model into the \
                         Hugging Face cache (HF_HOME / HF_HUB_CACHE) first",
                        looked.join(", ")
                    ),
                });
            }
        }
    }
    TextTokenizer::load(&path, &TokenizerOverrides::from_model_plan(model))
}

/// The Jinja text a chat dataset renders with.
pub fn template_source(t: &PlanTemplate, tok: &TextTokenizer) -> Result<(String, String)> {
    Ok(match t {
        PlanTemplate::TokenizerDefault => match tok.chat_template(None) {
            Some(s) => (
                s.to_string(),
                format!("tokenizer_default ({})", tok.path.display()),
            ),
            None => {
                return Err(DataError::Template {
                    template: "tokenizer_default".into(),
                    message: format!(
                        "the tokenizer ({}) has no chat template; name one (`chat_template: chatml`) or give `chat_template_jinja`",
                        tok.path.display()
                    ),
                });
            }
        },
        PlanTemplate::TokenizerDefaultFallbackChatml => match tok.chat_template(None) {
            Some(s) => (
                s.to_string(),
                format!("tokenizer_default ({})", tok.path.display()),
            ),
            None => (
                named_template_source(NamedTemplate::Chatml).to_string(),
                "chatml".into(),
            ),
        },
        PlanTemplate::Named(n) => (
            named_template_source(*n).to_string(),
            format!("{n:?}").to_lowercase(),
        ),
        PlanTemplate::Jinja(s) => (s.clone(), "chat_template_jinja".into()),
    })
}

fn encoder_for<'a>(
    ds: &DatasetPlan,
    plan: &DataPlan,
    tok: &'a TextTokenizer,
    key: &mut KeyBuilder,
) -> Result<RowEncoder<'a>> {
    Ok(match &ds.format {
        DatasetFormat::Alpaca(v) => RowEncoder::Instruction {
            layout: PromptLayout::alpaca(*v),
        },
        DatasetFormat::CustomAlpaca(c) => RowEncoder::Instruction {
            layout: PromptLayout::custom(c),
        },
        DatasetFormat::ChatTemplate(fmt) => {
            let (source, origin) = template_source(&fmt.template, tok)?;
            key.text("template", &source);
            let bos = tok.bos.as_ref().map(|t| t.text.as_str()).unwrap_or("");
            let eos = tok.eos.as_ref().map(|t| t.text.as_str()).unwrap_or("");
            let mut t = ChatTemplate::new(&source, &origin, bos, eos)?;
            if let Some(p) = &tok.pad {
                t = t.with_variable("pad_token", &p.text);
            }
            let enc = ChatEncoder::new(
                t,
                tok,
                fmt,
                plan.train_on_inputs,
                plan.default_system_message.clone(),
            );
            enc.check_passes()?;
            RowEncoder::Chat(Box::new(enc))
        }
        DatasetFormat::Completion { field } => RowEncoder::Completion {
            field: field.clone(),
        },
        DatasetFormat::InputOutput => RowEncoder::InputOutput,
        DatasetFormat::Pretokenized => RowEncoder::Pretokenized,
    })
}

/// Prepares the data: from the cache when its key matches, else from the sources.
pub fn prepare(plan: &DataPlan, tok: &TextTokenizer) -> Result<Prepared> {
    prepare_with(plan, tok, PrepareOptions::default())
}

type Job<'a, 'p> = (
    &'static str,
    &'p DatasetPlan,
    Vec<InputFile>,
    RowEncoder<'a>,
);

fn worker_pool(plan: &DataPlan) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(plan.processes.unwrap_or(0))
        .build()
        .map_err(|e| DataError::Config(format!("cannot start worker threads: {e}")))
}

/// The cache key and the datasets to encode.
fn plan_jobs<'a, 'p>(
    plan: &'p DataPlan,
    tok: &'a TextTokenizer,
    opts: PrepareOptions,
) -> Result<(String, Vec<Job<'a, 'p>>)> {
    // Key: version, tokenizer, settings (without where-to and how-many-threads), templates, files.
    let mut key = KeyBuilder::default();
    key.text("tokenizer", &tok.fingerprint);
    let mut settings = plan.clone();
    settings.prepared_path = PathBuf::new();
    settings.processes = None;
    key.text(
        "settings",
        &serde_json::to_string(&settings).unwrap_or_default(),
    );
    // Data prepared with rows skipped is not the data a run without the flag asks for.
    if opts.skip_bad_rows {
        key.text("skip_bad_rows", "true");
    }
    if let Some(n) = opts.max_rows {
        key.text("max_rows", &n.to_string());
    }
    let mut jobs = Vec::new();
    for (split, list) in [("train", &plan.datasets), ("test", &plan.test_datasets)] {
        for ds in list.iter() {
            let files = source::resolve(ds)?;
            for f in &files {
                key.file(&f.path)?;
            }
            let enc = encoder_for(ds, plan, tok, &mut key)?;
            jobs.push((split, ds, files, enc));
        }
    }
    Ok((key.finish(), jobs))
}

/// A cache entry that cannot be read back (damaged on disk) is a miss: it is removed and the
/// data prepared again.
fn cached<T>(
    plan: &DataPlan,
    key: &str,
    opts: PrepareOptions,
    read: impl FnOnce(&std::path::Path) -> Result<T>,
) -> Option<T> {
    cache::find_entry(&plan.prepared_path, key)
        .filter(|_| !opts.force)
        .and_then(|dir| match read(&dir) {
            Ok(v) => Some(v),
            Err(_) => {
                let _ = std::fs::remove_dir_all(&dir);
                None
            }
        })
}

pub fn prepare_with(
    plan: &DataPlan,
    tok: &TextTokenizer,
    opts: PrepareOptions,
) -> Result<Prepared> {
    let start = Instant::now();
    let pool = worker_pool(plan)?;
    let (cache_key, jobs) = plan_jobs(plan, tok, opts)?;
    let cache_dir = plan.prepared_path.join(&cache_key);
    let mut summary = Summary {
        cache_key: cache_key.clone(),
        cache_dir: cache_dir.clone(),
        ..Default::default()
    };
    let (train, eval) = match cached(plan, &cache_key, opts, read_entry) {
        Some((train, eval, datasets)) => {
            summary.datasets = datasets;
            summary.reused_cache = true;
            (train, eval)
        }
        None if opts.no_write => {
            let mut train = Vec::new();
            let mut test = Vec::new();
            for (split, ds, files, enc) in &jobs {
                let out = if *split == "train" {
                    &mut train
                } else {
                    &mut test
                };
                let ds_summary = pool.install(|| {
                    encode_dataset(ds, files, enc, tok, plan, opts.rows(), &mut |s| {
                        out.push(s);
                        Ok(())
                    })
                })?;
                summary.datasets.push(ds_summary);
            }
            let (mut train, eval) = split_eval(train, test, plan);
            if plan.shuffle_merged_datasets {
                shuffle(&mut train, plan.seed);
            }
            (train, eval)
        }
        None => {
            // The same path as `runner preprocess` (memory bounded by a chunk), then read back.
            encode_to_cache(&jobs, &pool, plan, tok, opts, &mut summary)?;
            let (train, eval, _) = read_entry(&cache_dir)?;
            (train, eval)
        }
    };
    let stats = |v: &[Sample]| SplitStats {
        lens: v.iter().map(|s| s.len() as u32).collect(),
        trained: v.iter().map(|s| s.trained_tokens() as u32).collect(),
    };
    let train_packs = finish_summary(
        &mut summary,
        plan,
        &stats(&train),
        &stats(&eval),
        opts.skip_bad_rows,
    )?;
    let eval_packs = (plan.sample_packing && plan.eval_sample_packing && !eval.is_empty())
        .then(|| pack_ffd(&eval, plan.sequence_len));
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(Prepared {
        train,
        eval,
        train_packs,
        eval_packs,
        summary,
    })
}

/// What `runner preprocess` does: prepares the data into the cache (or finds it there) and
/// reports it, without holding the dataset: rows are encoded a chunk at a time into a scratch
/// file, the cache files are written from it a record batch at a time, and the summary and the
/// packing come from each sample's length and trained-token count (issue 14: memory bounded by
/// a batch, time linear in the rows). With `no_write` it is [`prepare_with`]'s summary.
pub fn preprocess(plan: &DataPlan, tok: &TextTokenizer, opts: PrepareOptions) -> Result<Summary> {
    if opts.no_write {
        return prepare_with(plan, tok, opts).map(|p| p.summary);
    }
    let start = Instant::now();
    let pool = worker_pool(plan)?;
    let (cache_key, jobs) = plan_jobs(plan, tok, opts)?;
    let cache_dir = plan.prepared_path.join(&cache_key);
    let mut summary = Summary {
        cache_key: cache_key.clone(),
        cache_dir: cache_dir.clone(),
        ..Default::default()
    };
    let read_stats = |dir: &std::path::Path| -> Result<(SplitStats, SplitStats)> {
        let split = |name: &str| -> Result<SplitStats> {
            let path = dir.join(name);
            if name == "eval.arrow" && !path.is_file() {
                return Ok(SplitStats::default());
            }
            let (lens, trained) = cache::read_stats(&path)?;
            Ok(SplitStats { lens, trained })
        };
        Ok((split("train.arrow")?, split("eval.arrow")?))
    };
    let (train, eval) = match cached(plan, &cache_key, opts, read_stats) {
        Some(stats) => {
            summary.datasets = read_datasets(&cache_dir);
            summary.reused_cache = true;
            stats
        }
        None => encode_to_cache(&jobs, &pool, plan, tok, opts, &mut summary)?,
    };
    finish_summary(&mut summary, plan, &train, &eval, opts.skip_bad_rows)?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Each sample's length and trained tokens, in a split's order.
#[derive(Debug, Default)]
struct SplitStats {
    lens: Vec<u32>,
    trained: Vec<u32>,
}

/// Encodes every dataset into a new cache entry through a scratch file ([`cache::Spill`]):
/// the rows are never all in memory, and the files are the bytes the in-memory path writes
/// (the same split, shuffle and record batches). Returns the train and eval splits' stats.
fn encode_to_cache(
    jobs: &[Job<'_, '_>],
    pool: &rayon::ThreadPool,
    plan: &DataPlan,
    tok: &TextTokenizer,
    opts: PrepareOptions,
    summary: &mut Summary,
) -> Result<(SplitStats, SplitStats)> {
    let mut out = (SplitStats::default(), SplitStats::default());
    let dir = summary.cache_dir.clone();
    cache::write_entry_with(&dir, |tmp| {
        let mut spill = cache::Spill::create(&tmp.join("samples.spill"))?;
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (split, ds, files, enc) in jobs {
            let order = if *split == "train" {
                &mut train
            } else {
                &mut test
            };
            let spill = &mut spill;
            let ds_summary = pool.install(|| {
                encode_dataset(ds, files, enc, tok, plan, opts.rows(), &mut |s| {
                    order.push(spill.push(&s)?);
                    Ok(())
                })
            })?;
            summary.datasets.push(ds_summary);
        }
        let (mut train, eval) = split_eval(train, test, plan);
        if plan.shuffle_merged_datasets {
            shuffle(&mut train, plan.seed);
        }
        spill.write_arrow(&train, &tmp.join("train.arrow"))?;
        if !eval.is_empty() {
            spill.write_arrow(&eval, &tmp.join("eval.arrow"))?;
        }
        let stats = |order: &[u32]| SplitStats {
            lens: order.iter().map(|&i| spill.lens()[i as usize]).collect(),
            trained: order.iter().map(|&i| spill.trained()[i as usize]).collect(),
        };
        out = (stats(&train), stats(&eval));
        spill.remove();
        let mut s = summary.clone();
        s.train_samples = train.len() as u64;
        s.eval_samples = eval.len() as u64;
        Ok(serde_json::to_string_pretty(&s).unwrap_or_default())
    })?;
    Ok(out)
}

/// Totals, counts and packing for the summary; the train packs when `sample_packing`. Refuses
/// when no training sample is left, saying why.
fn finish_summary(
    summary: &mut Summary,
    plan: &DataPlan,
    train: &SplitStats,
    eval: &SplitStats,
    skipping: bool,
) -> Result<Option<Vec<Pack>>> {
    if train.lens.is_empty() {
        return Err(DataError::NothingToTrain {
            reasons: why_empty(summary, plan, eval.lens.len(), skipping),
        });
    }
    for d in &summary.datasets {
        summary.rows_read += d.rows_read;
        summary.rows_dropped_too_long += d.dropped_too_long;
        summary.rows_dropped_untrainable += d.dropped_untrainable;
        summary.rows_truncated += d.truncated;
        summary.rows_skipped_bad += d.skipped_bad;
    }
    summary.train_samples = train.lens.len() as u64;
    summary.eval_samples = eval.lens.len() as u64;
    let sum = |v: &[u32]| v.iter().map(|&n| n as u64).sum::<u64>();
    summary.tokens = sum(&train.lens) + sum(&eval.lens);
    summary.trained_tokens = sum(&train.trained) + sum(&eval.trained);
    if !plan.sample_packing {
        return Ok(None);
    }
    let lens: Vec<usize> = train.lens.iter().map(|&n| n as usize).collect();
    let mut tp = pack_lengths(&lens, plan.sequence_len);
    if plan.shuffle_merged_datasets {
        shuffle(&mut tp, plan.seed ^ 0x9E37_79B9_7F4A_7C15);
    }
    summary.train_packs = Some(tp.len() as u64);
    summary.packing_efficiency = Some(packing_efficiency(&tp, plan.sequence_len));
    Ok(Some(tp))
}

type Entry = (Vec<Sample>, Vec<Sample>, Vec<DatasetSummary>);

fn read_entry(dir: &std::path::Path) -> Result<Entry> {
    let train = cache::read_samples(&dir.join("train.arrow"))?;
    let eval_path = dir.join("eval.arrow");
    let eval = if eval_path.is_file() {
        cache::read_samples(&eval_path)?
    } else {
        Vec::new()
    };
    Ok((train, eval, read_datasets(dir)))
}

/// The per-dataset counts a cache entry's summary.json recorded.
fn read_datasets(dir: &std::path::Path) -> Vec<DatasetSummary> {
    if let Ok(text) = std::fs::read_to_string(dir.join("summary.json"))
        && let Ok(old) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(ds) = old.get("datasets")
    {
        serde_json::from_value(ds.clone()).unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// Why no training sample is left, per dataset and cause, with counts (issue 17: one catch-all
/// sentence hid a template that prints no content, rows skipped as binary, and the rest).
fn why_empty(s: &Summary, plan: &DataPlan, eval: usize, skipping: bool) -> String {
    let mut out = Vec::new();
    for d in &s.datasets {
        let mut causes = Vec::new();
        if d.skipped_bad > 0 {
            let example = d
                .bad_row_examples
                .first()
                .map(|e| format!(", e.g. {e}"))
                .unwrap_or_default();
            causes.push(format!(
                "{} skipped as unreadable by --skip-bad-rows{example}",
                d.skipped_bad
            ));
        }
        if d.dropped_too_long > 0 {
            causes.push(format!(
                "{} dropped as longer than sequence_len {} (excess_length_strategy: drop; \
                 raise sequence_len or use truncate)",
                d.dropped_too_long, plan.sequence_len
            ));
        }
        if d.contentless > 0 {
            causes.push(format!(
                "{} rendered by the chat template without any of their messages' content (does \
                 the template print `message['content']`?)",
                d.contentless
            ));
        }
        let other_untrainable = d.dropped_untrainable.saturating_sub(d.contentless);
        if other_untrainable > 0 {
            causes.push(format!(
                "{other_untrainable} had no token to train (no turn of a role in roles_to_train, \
                 or only empty content; check roles_to_train and train_on_inputs)"
            ));
        }
        let kept = d
            .rows_read
            .saturating_sub(d.skipped_bad + d.dropped_too_long + d.dropped_untrainable);
        if kept > 0 {
            causes.push(format!("{kept} kept"));
        }
        out.push(format!(
            "`{}`: {} rows read: {}",
            d.path,
            d.rows_read,
            if causes.is_empty() {
                "none to use".to_string()
            } else {
                causes.join("; ")
            }
        ));
    }
    if eval > 0 {
        out.push(format!(
            "all {eval} remaining samples went to the evaluation set (val_set_size): lower \
             val_set_size or add rows"
        ));
    }
    if !skipping && s.datasets.iter().all(|d| d.rows_read == 0) {
        out.push("no rows at all".into());
    }
    out.join("\n  ")
}

/// `test_datasets` when given; else `val_set_size` rows chosen by a seeded shuffle.
fn split_eval<T>(mut train: Vec<T>, test: Vec<T>, plan: &DataPlan) -> (Vec<T>, Vec<T>) {
    if !test.is_empty() {
        return (train, test);
    }
    let n = match plan.val_set {
        ValSet::None => 0,
        ValSet::Fraction(f) => (f * train.len() as f64).ceil() as usize,
        ValSet::Rows(r) => r as usize,
    }
    .min(train.len());
    if n == 0 {
        return (train, Vec::new());
    }
    let mut idx: Vec<usize> = (0..train.len()).collect();
    shuffle(&mut idx, plan.seed);
    let mut is_eval = vec![false; train.len()];
    for &i in &idx[..n] {
        is_eval[i] = true;
    }
    let mut eval = Vec::with_capacity(n);
    let mut keep = Vec::with_capacity(train.len() - n);
    for (i, s) in train.drain(..).enumerate() {
        if is_eval[i] {
            eval.push(s)
        } else {
            keep.push(s)
        }
    }
    (keep, eval)
}

/// Fisher–Yates with SplitMix64: the same order for the same seed on every platform.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}
