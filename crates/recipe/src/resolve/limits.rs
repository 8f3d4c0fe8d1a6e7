//! Upper bounds on the counts in a recipe, each with the reason it exists (issue 17): a value
//! past one is a typo or a hostile recipe, and refusing it at validation is what keeps every
//! later stage's time and memory bounded.

use super::Resolver;
use crate::plan::TargetModules;
use crate::raw::RawRecipe;

/// The most optimizer steps one run may have (`max_steps`, or `num_epochs` × steps per epoch,
/// checked again once the data is known).
pub const MAX_TOTAL_STEPS: u64 = 1_000_000_000;
pub const MAX_EPOCHS: f64 = 10_000.0;
pub const MAX_BATCH: u64 = 65_536;
pub const MAX_ACCUMULATION: u64 = 65_536;
pub const MAX_SEQUENCE_LEN: u64 = 1 << 20;
/// Positions in one micro-batch (`micro_batch_size × sequence_len`).
pub const MAX_POSITIONS: u64 = 1 << 24;
pub const MAX_LORA_R: u64 = 65_536;
pub const MAX_PROCESSES: u64 = 1024;

impl Resolver<'_> {
    /// `key` at most `max`; `why` completes "because ...".
    fn at_most<T: PartialOrd + Copy + std::fmt::Display>(
        &mut self,
        key: &str,
        value: Option<T>,
        max: T,
        why: &str,
        fix: &str,
    ) {
        if let Some(v) = value
            && v > max
        {
            self.error(
                key,
                format!("`{key}` is {v}, more than the {max} runner accepts: {why}"),
                fix.to_string(),
            );
        }
    }
}

/// Checks every bound; the resolved values are not needed, only the raw ones.
pub(super) fn check(r: &mut Resolver, raw: &RawRecipe) {
    r.at_most(
        "num_epochs",
        raw.num_epochs,
        MAX_EPOCHS,
        "that many passes over the data is not a fine-tuning run",
        "lower `num_epochs`, or set `max_steps` for a fixed number of steps",
    );
    r.at_most(
        "max_steps",
        raw.max_steps,
        MAX_TOTAL_STEPS,
        "a run of more steps would take years",
        "lower `max_steps`",
    );
    for key in ["micro_batch_size", "eval_batch_size"] {
        let v = if key == "micro_batch_size" {
            raw.micro_batch_size
        } else {
            raw.eval_batch_size
        };
        r.at_most(
            key,
            v,
            MAX_BATCH,
            "a micro-batch of more rows than that cannot fit in any device's memory (runner never lowers it for you)",
            &format!("lower `{key}`; use `gradient_accumulation_steps` for a larger effective batch"),
        );
    }
    r.at_most(
        "gradient_accumulation_steps",
        raw.gradient_accumulation_steps,
        MAX_ACCUMULATION,
        "one optimizer step would be that many forward and backward passes",
        "lower `gradient_accumulation_steps`",
    );
    r.at_most(
        "sequence_len",
        raw.sequence_len,
        MAX_SEQUENCE_LEN,
        "longer than the context of any model runner supports",
        "lower `sequence_len` to the model's context length",
    );
    if let (Some(b), Some(s)) = (raw.micro_batch_size, raw.sequence_len)
        && b <= MAX_BATCH
        && s <= MAX_SEQUENCE_LEN
        && b * s > MAX_POSITIONS
    {
        r.error(
            "micro_batch_size",
            format!(
                "`micro_batch_size` {b} × `sequence_len` {s} is {} positions per micro-batch, more than the {MAX_POSITIONS} runner accepts: their activations cannot fit in any device's memory",
                b * s
            ),
            "lower `micro_batch_size`; use `gradient_accumulation_steps` for a larger effective batch",
        );
    }
    r.at_most(
        "lora_r",
        raw.lora_r,
        MAX_LORA_R,
        "larger than the hidden size of any supported model (the rank is also checked against the model's layers before training)",
        "lower `lora_r` (8 to 64 is usual)",
    );
    r.at_most(
        "dataset_processes",
        raw.dataset_processes,
        MAX_PROCESSES,
        "each is a worker thread, and no machine has that many cores",
        "lower `dataset_processes`, or remove it to use every core",
    );
    // A warmup longer than the run is what transformers does too, and what a quick
    // `--set max_steps=2` on a recipe asks for: said, not refused.
    if let (Some(w), Some(m)) = (raw.warmup_steps, raw.max_steps)
        && w > m
    {
        r.substitute(
            "warmup_steps",
            format!("{w} with max_steps {m}"),
            format!(
                "the whole run is warmup: the learning rate rises to {}/{w} of learning_rate and never reaches it",
                m.saturating_sub(1)
            ),
        );
    }
}

/// A `lora_target_modules` regex must compile the way the model stage compiles it (a full
/// match, Rust `regex` syntax), so a bad one is refused at validation, not after data prep.
pub(super) fn check_target_regex(r: &mut Resolver, targets: Option<&TargetModules>) {
    if let Some(TargetModules::Regex(pattern)) = targets
        && let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$"))
    {
        let message = match e {
            regex::Error::Syntax(s) => s
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_string(),
            other => other.to_string(),
        };
        r.error(
            "lora_target_modules",
            format!("`lora_target_modules` is not a valid regex: {message}"),
            "a string is a regex matched against the whole module name (e.g. `.*\\.(q|v)_proj`); lookaround is not supported; for names, write a list: `[q_proj, v_proj]`",
        );
    }
}

#[cfg(test)]
mod tests {
    fn errors(extra: &str) -> Vec<String> {
        let text = format!(
            "base_model: builtin:tiny-llama\nadapter: lora\nlora_target_linear: true\n\
             datasets:\n  - path: ../../recipes/data/smoke-chat.jsonl\n    type: chat_template\n\
             learning_rate: 0.001\n{extra}"
        );
        match crate::load_str("r.yaml", &text, &[]) {
            Ok(_) => Vec::new(),
            Err(e) => e.diagnostics().iter().map(|d| d.message.clone()).collect(),
        }
    }

    #[test]
    fn issue_17_group_6_every_count_has_an_upper_bound_with_its_reason() {
        let at_bound = "num_epochs: 10000\nmicro_batch_size: 64\nsequence_len: 262144\n\
                        gradient_accumulation_steps: 65536\nlora_r: 64\n";
        assert!(errors(at_bound).is_empty(), "{:?}", errors(at_bound));
        for (extra, want) in [
            (
                "num_epochs: 1e9\n",
                "`num_epochs` is 1000000000, more than the 10000",
            ),
            (
                "max_steps: 1000000001\n",
                "`max_steps` is 1000000001, more than the 1000000000",
            ),
            (
                "micro_batch_size: 1000000000000\nmax_steps: 1\n",
                "runner never lowers it for you",
            ),
            (
                "gradient_accumulation_steps: 1000000\nmax_steps: 1\n",
                "one optimizer step would be that many",
            ),
            (
                "sequence_len: 10000000\nmax_steps: 1\n",
                "`sequence_len` is 10000000",
            ),
            (
                "micro_batch_size: 4096\nsequence_len: 8192\nmax_steps: 1\n",
                "33554432 positions per micro-batch",
            ),
            ("lora_r: 100000\nmax_steps: 1\n", "`lora_r` is 100000"),
            (
                "dataset_processes: 1000000000\nmax_steps: 1\n",
                "no machine has that many cores",
            ),
        ] {
            let got = errors(extra);
            assert!(got.iter().any(|m| m.contains(want)), "{extra}: {got:?}");
        }
    }

    #[test]
    fn issue_17_group_7_a_warmup_longer_than_the_run_is_said() {
        let text = "base_model: builtin:tiny-llama\nadapter: lora\nlora_target_linear: true\n\
                    datasets:\n  - path: ../../recipes/data/smoke-chat.jsonl\n    type: chat_template\n\
                    learning_rate: 0.001\nmax_steps: 30\nwarmup_steps: 50\n";
        let loaded = crate::load_str("r.yaml", text, &[]).unwrap();
        let s = &loaded.plan.substitutions;
        assert!(
            s.iter().any(|s| s.key == "warmup_steps"
                && s.asked == "50 with max_steps 30"
                && s.runs.contains("rises to 29/50 of learning_rate")),
            "{s:?}"
        );
    }

    #[test]
    fn issue_17_group_7_empty_datasets_and_a_bad_target_regex_are_refused_at_validation() {
        let text = "base_model: builtin:tiny-llama\nadapter: lora\n\
                    lora_target_modules: \".*(q|v_proj\"\ndatasets: []\nmax_steps: 1\n\
                    learning_rate: 0.001\n";
        let e = crate::load_str("r.yaml", text, &[]).unwrap_err();
        let got: Vec<String> = e.diagnostics().iter().map(|d| d.message.clone()).collect();
        assert!(
            got.iter()
                .any(|m| m.contains("`datasets` is an empty list")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|m| m.contains("`lora_target_modules` is not a valid regex")),
            "{got:?}"
        );
    }
}
