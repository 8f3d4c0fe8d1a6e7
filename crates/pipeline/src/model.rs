//! Stage 3, build the model: load the base on the run's device in the run's dtype, grow the
//! vocabulary for added tokens, inject the adapters; a micro-batch whose step cannot fit in
//! memory is refused before the weights load ([`crate::memory`]).

use crate::error::bail;
use crate::error::{Error, Result};
use candle_core::{DType, Device};
use runner_recipe::plan::{ModelPlan, Plan};

/// The model stage's output: the base with adapters injected.
pub struct Built {
    pub model: runner_model::CausalLm,
    pub adapters: runner_model::Adapters,
}

/// Stage 3. `model_plan` is the materialised model plan from stage 1; `dtype` the compute
/// dtype from [`compute_dtype`]; `data` is used only for the memory pre-flight (the longest row
/// and the number of rows), which runs before the weights load.
pub fn build_model(
    plan: &Plan,
    model_plan: &ModelPlan,
    tok: &runner_data::tokenizer::TextTokenizer,
    data: &runner_data::Prepared,
    device: &Device,
    dtype: DType,
) -> Result<Built> {
    crate::memory::step_fits(plan, model_plan, data, device)?;
    // QLoRA bases are quantized tensor by tensor while loading.
    let loaded = runner_model::load::load_for_adapter(model_plan, &plan.adapter, dtype, device)?;
    let mut model = loaded.model;
    grow_vocabulary(&mut model, tok, Some(&plan.adapter))?;
    model.gradient_checkpointing = plan.train.gradient_checkpointing;
    let adapters = runner_model::inject(&mut model, &plan.adapter, plan.train.seed)?;
    Ok(Built { model, adapters })
}

/// The frozen weights' and activations' dtype for the recipe's `bf16` / `fp16` on `device`
/// (adapters, gradients and optimizer state stay f32), with the notes to say (what `bf16: auto`
/// chose, what `tf32` does here); sets cuBLAS's TF32 switch on a GPU. Refuses, before any work,
/// an op the engine lacks for this device and dtype, naming each.
pub fn compute_dtype(
    plan: &Plan,
    device: &Device,
) -> Result<runner_model::precision::ComputePrecision> {
    use runner_model::ops::{DeviceKind, Features, check_supported};
    use runner_model::precision::{apply_tf32, compute_precision};
    let kind = DeviceKind::of(device);
    let p =
        compute_precision(plan.train.precision, plan.train.tf32, kind).map_err(Error::Refused)?;
    let features = Features {
        dropout: plan.adapter.dropout > 0.0,
        quantized_base: plan.adapter.base_quant != runner_recipe::plan::BaseQuant::None,
    };
    if let Err(missing) = check_supported(kind, p.dtype, features) {
        bail!(
            "{} op(s) have no implementation for {:?} on this device (nothing was started):\n  {}",
            missing.len(),
            p.dtype,
            missing.join("\n  ")
        );
    }
    apply_tf32(plan.train.tf32, kind);
    Ok(p)
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
) -> Result<()> {
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
            bail!(
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
