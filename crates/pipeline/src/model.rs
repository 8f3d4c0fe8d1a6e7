//! Stage 3, build the model: load the base on the run's device in the run's dtype, grow the
//! vocabulary for added tokens, inject the adapters, and refuse (before the first step) a
//! micro-batch whose step cannot fit in memory.

use candle_core::{DType, Device};
use runner_recipe::plan::{ModelPlan, Plan};

/// The model stage's output: the base with adapters injected.
pub struct Built {
    pub model: runner_model::CausalLm,
    pub adapters: runner_model::Adapters,
}

/// Stage 3. `model_plan` is the materialised model plan from stage 1; `data` is used only for
/// the memory pre-flight (the longest row and the number of rows).
pub fn build_model(
    plan: &Plan,
    model_plan: &ModelPlan,
    tok: &runner_data::tokenizer::TextTokenizer,
    data: &runner_data::Prepared,
    device: &Device,
) -> anyhow::Result<Built> {
    let loaded = runner_model::load::load_with(model_plan, model_dtype(plan, device), device)?;
    let mut model = loaded.model;
    grow_vocabulary(&mut model, tok, Some(&plan.adapter))?;
    model.gradient_checkpointing = plan.train.gradient_checkpointing;
    let adapters = runner_model::inject(&mut model, &plan.adapter, plan.train.seed)?;
    // The estimate is of host memory: the CPU engine's.
    if device.is_cpu() {
        step_fits_in_memory(plan, &model, data)?;
    }
    Ok(Built { model, adapters })
}

/// The weights' dtype: f32 on the CPU (bf16 is slower there); on a GPU bf16 when the recipe
/// asks for it (`bf16: true` or `auto`).
pub fn model_dtype(plan: &Plan, device: &Device) -> DType {
    use runner_recipe::plan::Precision;
    match plan.train.precision {
        Precision::Bf16 | Precision::Auto if device.is_cuda() => DType::BF16,
        _ => DType::F32,
    }
}

/// Tokens the recipe adds (`tokens`, new `special_tokens`) need embedding and LM-head rows:
/// when the tokenizer has more ids than the embeddings have rows, the model grows as
/// transformers' `resize_token_embeddings` grows it (new rows at the mean; Axolotl does the
/// same). Under an adapter (`adapter` given) the new rows only train as trainable copies, so
/// `lora_modules_to_save` must hold both modules, as Axolotl requires (a new pad token alone
/// is exempt there too: its row is never trained).
pub fn grow_vocabulary(
    model: &mut runner_model::CausalLm,
    tok: &runner_data::tokenizer::TextTokenizer,
    adapter: Option<&runner_recipe::plan::AdapterPlan>,
) -> anyhow::Result<()> {
    let rows = model.cfg.vocab_size;
    let tokenizer_ids = tok.vocab_size();
    if tokenizer_ids <= rows {
        return Ok(());
    }
    let pad = tok.pad.as_ref().map(|p| p.id as usize);
    let trained_new = (rows..tokenizer_ids).any(|id| Some(id) != pad);
    if let (Some(a), true) = (adapter, trained_new) {
        let has = |m: &str| {
            a.modules_to_save
                .iter()
                .any(|s| s == m || s.ends_with(&format!(".{m}")))
        };
        if !(has("embed_tokens") && has("lm_head")) {
            anyhow::bail!(
                "the tokenizer has {tokenizer_ids} ids (tokens added by `tokens` or `special_tokens`) \
                 but the model's embeddings have {rows} rows: the new rows only train with \
                 `lora_modules_to_save: [embed_tokens, lm_head]` (Axolotl requires the same); add it \
                 (nothing was trained)"
            );
        }
    }
    model.resize_token_embeddings(tokenizer_ids)?;
    eprintln!(
        "vocabulary grown from {rows} to {tokenizer_ids} tokens (new rows at the mean embedding, \
         as transformers' resize_token_embeddings)"
    );
    Ok(())
}

/// Refuses a micro-batch whose training step cannot fit in the memory this process may still
/// use, before the first step (the alternative is the kernel killing the run mid-step).
fn step_fits_in_memory(
    plan: &Plan,
    model: &runner_model::CausalLm,
    data: &runner_data::Prepared,
) -> anyhow::Result<()> {
    let d = &plan.data;
    // Rows are packs of `sequence_len`, or samples padded to the longest in their micro-batch.
    let longest = data.train.iter().map(|s| s.len()).max().unwrap_or(0);
    let row = if d.sample_packing || d.pad_to_sequence_len {
        d.sequence_len
    } else {
        longest.min(d.sequence_len)
    };
    // A micro-batch holds at most the rows there are.
    let rows = match &data.train_packs {
        Some(packs) => packs.len(),
        None => data.train.len(),
    };
    let batch = plan.train.micro_batch_size.min(rows.max(1));
    let positions = batch * row;
    let bytes = model.dtype().size_in_bytes();
    let est =
        |ckpt| runner_model::memory::step_activation_bytes(&model.cfg, positions, ckpt, bytes);
    let need = est(model.gradient_checkpointing);
    let Some(available) = available_memory() else {
        return Ok(());
    };
    check_fits(
        need,
        available,
        batch,
        row,
        (!model.gradient_checkpointing).then(|| est(true)),
    )
}

/// The refusal itself, apart from reading the machine: `need` and `available` in bytes.
fn check_fits(
    need: u64,
    available: u64,
    micro_batch_size: usize,
    row: usize,
    with_checkpointing: Option<u64>,
) -> anyhow::Result<()> {
    if need <= available {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    let mut fix = "lower `micro_batch_size` (raise `gradient_accumulation_steps` to keep the same \
                   batch per optimizer step) or `sequence_len`"
        .to_string();
    if let Some(c) = with_checkpointing {
        fix.push_str(&format!(
            ", or set `gradient_checkpointing: true` (about {:.1} GB)",
            gb(c)
        ));
    }
    anyhow::bail!(
        "a training step on micro_batch_size {micro_batch_size} × {row} positions needs at least \
         {:.1} GB besides the weights, and {:.1} GB of memory is available (nothing was \
         trained); {fix}",
        gb(need),
        gb(available)
    )
}

/// Memory this process may still use: `MemAvailable`, capped by the cgroup's limit.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    let mut avail = kb * 1024;
    let read = |f: &str| std::fs::read_to_string(f).ok()?.trim().parse::<u64>().ok();
    if let (Some(max), Some(cur)) = (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        avail = avail.min(max.saturating_sub(cur));
    }
    Some(avail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 5: a micro-batch that cannot fit is refused with the figures and the fixes.
    #[test]
    fn a_step_that_cannot_fit_is_refused_with_the_fixes() {
        assert!(check_fits(1 << 30, 2 << 30, 4, 256, None).is_ok());
        let e = check_fits(
            40_000_000_000,
            20_000_000_000,
            64,
            4096,
            Some(3_000_000_000),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("micro_batch_size 64 × 4096 positions"), "{e}");
        assert!(e.contains("40.0 GB") && e.contains("20.0 GB"), "{e}");
        assert!(
            e.contains("gradient_checkpointing: true` (about 3.0 GB)"),
            "{e}"
        );
        assert!(available_memory().is_some_and(|b| b > 0));
    }
}
