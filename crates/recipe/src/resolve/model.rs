//! The model and adapter sections: base model location, quantization, LoRA settings.

use super::BUILTIN_MODELS;
use super::Resolver;
use crate::keys;
use crate::plan::*;
use crate::raw::*;
use std::path::PathBuf;

/// The model section and the adapter section of the Plan.
pub(super) fn resolve_model_and_adapter(
    r: &mut Resolver,
    raw: &RawRecipe,
) -> (Option<ModelPlan>, Option<AdapterPlan>) {
    (resolve_model(r, raw), resolve_adapter(r, raw))
}

fn resolve_model(r: &mut Resolver, raw: &RawRecipe) -> Option<ModelPlan> {
    if raw.trust_remote_code == Some(true) {
        r.error(
            "trust_remote_code",
            "`trust_remote_code: true` is refused: runner never runs code from a model repository",
            "remove the key; runner implements the supported architectures itself (Llama, Mistral, Qwen2, Qwen3)",
        );
    }
    if let Some(t) = &raw.model_type {
        const MODEL_TYPES: &[&str] = &[
            "AutoModelForCausalLM",
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
        ];
        if !MODEL_TYPES.contains(&t.as_str()) {
            let help = match keys::did_you_mean(t, MODEL_TYPES.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? supported: {}", MODEL_TYPES.join(", ")),
                None => format!("supported: {}", MODEL_TYPES.join(", ")),
            };
            r.error("model_type", format!("unsupported `model_type: {t}`"), help);
        }
    }
    if let Some(t) = &raw.tokenizer_type
        && t != "AutoTokenizer"
    {
        if t.ends_with("Tokenizer") || t.ends_with("TokenizerFast") {
            r.substitute(
                "tokenizer_type",
                t.clone(),
                "the tokenizer's tokenizer.json read by the `tokenizers` library (the ids of its fast tokenizer)",
            );
        } else {
            r.error(
                "tokenizer_type",
                format!("`tokenizer_type: {t}` is not a tokenizer class"),
                "use AutoTokenizer (or leave it empty)",
            );
        }
    }
    let Some(base_model) = raw.base_model.clone() else {
        if r.origin("base_model").is_some() {
            return None; // present but invalid: already reported
        }
        r.error(
            "base_model",
            "missing required key `base_model`",
            "add `base_model:` with a local folder, a .gguf file, a hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct) or builtin:tiny-llama",
        );
        return None;
    };
    if let Some(name) = base_model.strip_prefix("builtin:") {
        if !BUILTIN_MODELS.contains(&name) {
            r.error(
                "base_model",
                format!("unknown built-in model `{name}`"),
                format!("built-in models: {}", BUILTIN_MODELS.join(", ")),
            );
        }
    } else {
        r.model_or_dataset_location("base_model", &base_model, "base model");
    }
    for key in ["base_model_config", "tokenizer_config"] {
        let value = if key == "base_model_config" {
            &raw.base_model_config
        } else {
            &raw.tokenizer_config
        };
        if let Some(v) = value {
            r.model_or_dataset_location(key, v, key);
        }
    }
    for (plan, key) in [
        ("model.base_model", "base_model"),
        ("model.config", "base_model_config"),
        ("model.tokenizer", "tokenizer_config"),
        ("model.model_type", "model_type"),
        ("model.tokenizer_type", "tokenizer_type"),
        ("model.revision", "revision_of_model"),
        ("model.special_tokens", "special_tokens"),
        ("model.added_tokens", "tokens"),
    ] {
        r.from(plan, key);
    }
    let st = raw.special_tokens.clone().unwrap_or_default();
    Some(ModelPlan {
        base_model,
        config: raw.base_model_config.clone(),
        tokenizer: raw.tokenizer_config.clone(),
        model_type: raw.model_type.clone(),
        tokenizer_type: raw.tokenizer_type.clone(),
        revision: raw.revision_of_model.clone(),
        special_tokens: SpecialTokens {
            bos_token: st.bos_token,
            eos_token: st.eos_token,
            pad_token: st.pad_token,
            unk_token: st.unk_token,
        },
        added_tokens: raw.tokens.clone().unwrap_or_default(),
    })
}

fn resolve_adapter(r: &mut Resolver, raw: &RawRecipe) -> Option<AdapterPlan> {
    let four = raw.load_in_4bit == Some(true);
    let eight = raw.load_in_8bit == Some(true);
    if four && eight {
        r.error(
            "load_in_8bit",
            "`load_in_4bit` and `load_in_8bit` are both true",
            "choose one: load_in_4bit (QLoRA, NF4) or load_in_8bit",
        );
    }
    let kind = match raw.adapter {
        None if r.origin("adapter").is_some() => None, // present but invalid: reported
        None => {
            r.error(
                "adapter",
                "missing `adapter`: runner trains adapters, not full models",
                "add `adapter: lora` (or `adapter: qlora` with `load_in_4bit: true`)",
            );
            None
        }
        Some(AdapterName::Qlora) => {
            if !four {
                r.error(
                    "adapter",
                    "`adapter: qlora` needs `load_in_4bit: true`",
                    "add `load_in_4bit: true` (QLoRA trains LoRA on a 4-bit NF4 base)",
                );
            }
            Some(AdapterKind::Qlora)
        }
        Some(AdapterName::Lora) => {
            if four {
                r.error(
                    "load_in_4bit",
                    "`load_in_4bit: true` with `adapter: lora` is QLoRA",
                    "write `adapter: qlora`",
                );
            }
            Some(AdapterKind::Lora)
        }
    };
    let base_quant = if four {
        BaseQuant::Nf4
    } else if eight {
        BaseQuant::Int8
    } else {
        BaseQuant::None
    };
    r.from("adapter.kind", "adapter");
    r.from(
        "adapter.base_quant",
        if four { "load_in_4bit" } else { "load_in_8bit" },
    );

    r.check("lora_r", raw.lora_r, |v| v >= 1, "at least 1");
    r.check("lora_alpha", raw.lora_alpha, |v| v > 0.0, "greater than 0");
    r.check(
        "lora_dropout",
        raw.lora_dropout,
        |v| (0.0..1.0).contains(&v),
        "in [0, 1)",
    );
    r.check(
        "loraplus_lr_ratio",
        raw.loraplus_lr_ratio,
        |v| v > 0.0,
        "greater than 0",
    );
    r.check(
        "loraplus_lr_embedding",
        raw.loraplus_lr_embedding,
        |v| v > 0.0,
        "greater than 0",
    );
    if raw.lora_fan_in_fan_out == Some(true) {
        r.error(
            "lora_fan_in_fan_out",
            "`lora_fan_in_fan_out: true` is for GPT-2 style Conv1D weights",
            "Llama-family models store Linear weights as [out, in]: set it to false or remove it",
        );
    }
    if let Some(dir) = &raw.lora_model_dir {
        r.local_path_exists("lora_model_dir", dir, "adapter folder");
    }

    let targets = match (&raw.lora_target_linear, &raw.lora_target_modules) {
        (Some(true), modules) => {
            if let Some(StringOrList::Many(list)) = modules {
                let extra: Vec<&String> = list
                    .iter()
                    .filter(|m| {
                        !runner_io::names::PROJECTIONS
                            .iter()
                            .any(|p| p.leaf == m.as_str())
                    })
                    .collect();
                if !extra.is_empty() {
                    r.error(
                        "lora_target_modules",
                        format!(
                            "`lora_target_linear: true` already targets every linear layer; {} {} not a decoder linear layer",
                            extra.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
                            if extra.len() == 1 { "is" } else { "are" }
                        ),
                        "remove them, or train those modules fully with lora_modules_to_save",
                    );
                }
            }
            r.from("adapter.targets", "lora_target_linear");
            Some(TargetModules::AllLinear)
        }
        (_, Some(StringOrList::Many(list))) if !list.is_empty() => {
            r.from("adapter.targets", "lora_target_modules");
            Some(TargetModules::Names(list.clone()))
        }
        (_, Some(StringOrList::One(regex))) if !regex.is_empty() => {
            r.from("adapter.targets", "lora_target_modules");
            Some(TargetModules::Regex(regex.clone()))
        }
        _ => {
            let given = r.origin("lora_target_modules").is_some()
                || r.origin("lora_target_linear").is_some();
            if kind.is_some()
                && !(given && raw.lora_target_modules.is_none() && raw.lora_target_linear.is_none())
            {
                r.error(
                    "lora_target_modules",
                    "the adapter has no target modules",
                    "set `lora_target_linear: true`, or list modules, e.g. `lora_target_modules: [q_proj, v_proj]`",
                );
            }
            None
        }
    };

    let to_save = raw.lora_modules_to_save.clone().unwrap_or_default();
    for m in &to_save {
        if !["embed_tokens", "model.embed_tokens", "lm_head"].contains(&m.as_str()) {
            r.error(
                "lora_modules_to_save",
                format!("`{m}` cannot be trained fully: only the embeddings and the LM head can"),
                "use embed_tokens and/or lm_head (train other modules with LoRA targets)",
            );
        }
    }
    if to_save.iter().any(|m| m == "lm_head")
        && matches!(&targets, Some(TargetModules::Names(l)) if l.iter().any(|t| t == "lm_head"))
    {
        r.error(
            "lora_modules_to_save",
            "`lm_head` is both a LoRA target and in `lora_modules_to_save`",
            "choose one: remove it from lora_target_modules or from lora_modules_to_save",
        );
    }
    // Axolotl's rule (check_model_config): new tokens get new embedding and LM-head rows, which
    // only train when both modules are trained fully.
    let new_tokens = raw.tokens.as_ref().is_some_and(|t| !t.is_empty());
    if kind.is_some()
        && new_tokens
        && !["embed_tokens", "lm_head"]
            .iter()
            .all(|m| to_save.iter().any(|s| s == m))
    {
        r.error(
            "lora_modules_to_save",
            "`lora_modules_to_save` not properly set when adding new tokens: their embedding and \
             LM-head rows would stay at their initial values",
            "include [`embed_tokens`, `lm_head`] in `lora_modules_to_save`",
        );
    }

    let use_rslora = raw.peft_use_rslora.unwrap_or(false);
    let use_dora = raw.peft_use_dora.unwrap_or(false);
    let init = match &raw.peft_init_lora_weights {
        None | Some(BoolOrString::Bool(true)) => Some(LoraInit::Kaiming),
        Some(BoolOrString::Name(n)) if n == "gaussian" => Some(LoraInit::Gaussian),
        Some(BoolOrString::Name(n)) if n == "pissa" => Some(LoraInit::Pissa { niter: None }),
        Some(BoolOrString::Name(n)) if n.starts_with("pissa_niter_") => {
            match n["pissa_niter_".len()..].parse::<u32>() {
                Ok(k) if k >= 1 => Some(LoraInit::Pissa { niter: Some(k) }),
                _ => {
                    r.error(
                        "peft_init_lora_weights",
                        format!("`{n}`: the iteration count must be a whole number ≥ 1"),
                        "write e.g. `pissa_niter_16`",
                    );
                    None
                }
            }
        }
        Some(BoolOrString::Bool(false)) => {
            r.error(
                "peft_init_lora_weights",
                "`peft_init_lora_weights: false` (random B, for PEFT's own tests) is not supported",
                "use true (default), gaussian or pissa",
            );
            None
        }
        Some(BoolOrString::Name(n)) => {
            r.error(
                "peft_init_lora_weights",
                format!("unsupported initialisation `{n}`"),
                "use true (PEFT default), gaussian, pissa or pissa_niter_N (olora, loftq, eva and corda are not supported)",
            );
            None
        }
    };
    if matches!(init, Some(LoraInit::Pissa { .. })) {
        if use_dora {
            r.error(
                "peft_use_dora",
                "DoRA cannot be combined with PiSSA initialisation: the trained PiSSA adapter is \
                 saved as a LoRA of the original base, a conversion that has no form for DoRA's \
                 magnitudes (PEFT's drops them)",
                "use one of them: remove peft_use_dora or peft_init_lora_weights",
            );
        }
        if raw.lora_model_dir.is_some() {
            r.error(
                "peft_init_lora_weights",
                "`lora_model_dir` with PiSSA initialisation: the loaded adapter replaces the \
                 initial A and B, so PiSSA would only corrupt the base",
                "remove peft_init_lora_weights (a saved PiSSA adapter is a LoRA of the original base)",
            );
        }
    }
    let rank = raw.lora_r.unwrap_or(8).max(1) as usize;
    let alpha = raw.lora_alpha.unwrap_or(8.0);
    let scaling = if use_rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    };
    for (plan, key) in [
        ("adapter.init_from", "lora_model_dir"),
        ("adapter.r", "lora_r"),
        ("adapter.alpha", "lora_alpha"),
        ("adapter.dropout", "lora_dropout"),
        ("adapter.modules_to_save", "lora_modules_to_save"),
        ("adapter.use_dora", "peft_use_dora"),
        ("adapter.use_rslora", "peft_use_rslora"),
        ("adapter.init", "peft_init_lora_weights"),
        ("adapter.loraplus_lr_ratio", "loraplus_lr_ratio"),
        ("adapter.loraplus_lr_embedding", "loraplus_lr_embedding"),
    ] {
        r.from(plan, key);
    }
    r.derived(
        "adapter.scaling",
        if use_rslora {
            "lora_alpha / sqrt(lora_r) (rsLoRA)"
        } else {
            "lora_alpha / lora_r"
        },
    );
    Some(AdapterPlan {
        kind: kind?,
        base_quant,
        init_from: raw.lora_model_dir.as_ref().map(PathBuf::from),
        r: rank,
        alpha,
        dropout: raw.lora_dropout.unwrap_or(0.0),
        scaling,
        targets: targets?,
        modules_to_save: to_save,
        use_dora,
        use_rslora,
        init: init?,
        loraplus_lr_ratio: raw.loraplus_lr_ratio,
        loraplus_lr_embedding: raw.loraplus_lr_embedding.unwrap_or(1e-6),
    })
}
