//! Axolotl keys runner knows but does not run, and why: a recipe that sets one is refused by
//! name instead of having the key silently dropped. Empty values count as unset and pass.

/// (key, why it is refused and what to do instead)
pub const REFUSED: &[(&str, &str)] = &[
    // integrations
    (
        "wandb_project",
        "Weights & Biases logging is not built in; runner writes metrics.jsonl in output_dir (leave the key empty or remove it)",
    ),
    (
        "wandb_entity",
        "Weights & Biases logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "wandb_watch",
        "Weights & Biases logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "wandb_name",
        "Weights & Biases logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "wandb_run_id",
        "Weights & Biases logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "wandb_log_model",
        "Weights & Biases logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "wandb_mode",
        "Weights & Biases logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "mlflow_tracking_uri",
        "MLflow logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "mlflow_experiment_name",
        "MLflow logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "comet_api_key",
        "Comet logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "comet_workspace",
        "Comet logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "comet_project_name",
        "Comet logging is not built in; runner writes metrics.jsonl in output_dir",
    ),
    (
        "use_tensorboard",
        "TensorBoard logging is not built in; runner writes metrics.jsonl and a loss chart in output_dir",
    ),
    (
        "hub_model_id",
        "pushing to the Hugging Face Hub is not built in; upload output_dir with `huggingface-cli upload`",
    ),
    (
        "hub_strategy",
        "pushing to the Hugging Face Hub is not built in; upload output_dir with `huggingface-cli upload`",
    ),
    (
        "push_dataset_to_hub",
        "pushing datasets to the Hub is not built in; the prepared data is Arrow IPC under dataset_prepared_path",
    ),
    (
        "hf_use_auth_token",
        "runner reads models and datasets from local paths and the local Hugging Face cache",
    ),
    // distributed back-ends
    (
        "deepspeed",
        "DeepSpeed is not used; runner runs data parallel with `runner run --gpus N` or under torchrun",
    ),
    (
        "fsdp",
        "FSDP is not supported; runner runs data parallel with `runner run --gpus N` or under torchrun",
    ),
    (
        "fsdp_config",
        "FSDP is not supported; runner runs data parallel with `runner run --gpus N` or under torchrun",
    ),
    (
        "fsdp_version",
        "FSDP is not supported; runner runs data parallel with `runner run --gpus N` or under torchrun",
    ),
    (
        "ddp_timeout",
        "set the collective timeout with the launcher; runner's watchdog names a stalled rank",
    ),
    (
        "ddp_bucket_cap_mb",
        "runner buckets adapter gradients itself",
    ),
    (
        "ddp_broadcast_buffers",
        "runner has no buffers to broadcast",
    ),
    (
        "ddp_find_unused_parameters",
        "runner knows its parameters; there is nothing to find",
    ),
    (
        "device_map",
        "runner places the model itself (one device per process)",
    ),
    (
        "max_memory",
        "runner places the model itself (one device per process)",
    ),
    (
        "gpu_memory_limit",
        "runner places the model itself (one device per process)",
    ),
    (
        "lora_on_cpu",
        "runner places the model itself (one device per process)",
    ),
    (
        "local_rank",
        "set by the launcher through the LOCAL_RANK environment variable, not the recipe",
    ),
    // training methods not implemented
    (
        "rl",
        "preference training (DPO/ORPO/KTO/GRPO) is not supported yet; only supervised fine-tuning",
    ),
    ("rl_beta", "preference training is not supported yet"),
    ("dpo_beta", "preference training is not supported yet"),
    ("reward_model", "reward-model training is not supported"),
    (
        "process_reward_model",
        "reward-model training is not supported",
    ),
    ("relora_steps", "ReLoRA is not supported"),
    ("relora_warmup_steps", "ReLoRA is not supported"),
    ("relora_cpu_offload", "ReLoRA is not supported"),
    ("lisa_n_layers", "LISA is not supported"),
    ("lisa_step_interval", "LISA is not supported"),
    (
        "unfrozen_parameters",
        "full fine-tuning of chosen parameters is not supported; use lora_modules_to_save",
    ),
    ("neftune_noise_alpha", "NEFTune noise is not supported"),
    (
        "gptq",
        "GPTQ checkpoints are not supported; use load_in_4bit (QLoRA, NF4)",
    ),
    (
        "gptq_groupsize",
        "GPTQ checkpoints are not supported; use load_in_4bit (QLoRA, NF4)",
    ),
    (
        "gptq_model_v1",
        "GPTQ checkpoints are not supported; use load_in_4bit (QLoRA, NF4)",
    ),
    (
        "bnb_config_kwargs",
        "runner's NF4 is fixed to bitsandbytes' QLoRA defaults (nf4, double quantization)",
    ),
    (
        "peft_layers_to_transform",
        "restricting adapters to some layers is not supported yet; use a regex in lora_target_modules",
    ),
    (
        "peft_layers_pattern",
        "restricting adapters to some layers is not supported yet; use a regex in lora_target_modules",
    ),
    (
        "lora_target_parameters",
        "adapters on raw parameters are not supported",
    ),
    ("adapter_config", "give the adapter settings as lora_* keys"),
    // speed knobs of the Python stack
    (
        "torch_compile",
        "runner has its own kernels; there is no torch to compile",
    ),
    (
        "torch_compile_backend",
        "runner has its own kernels; there is no torch to compile",
    ),
    (
        "torch_compile_mode",
        "runner has its own kernels; there is no torch to compile",
    ),
    (
        "xformers_attention",
        "not needed: runner's own attention is used (remove the key)",
    ),
    ("s2_attention", "shifted-sparse attention is not supported"),
    (
        "flash_attn_cross_entropy",
        "runner's chunked cross-entropy is always used (remove the key)",
    ),
    (
        "flash_attn_rms_norm",
        "runner's fused RMSNorm is always used (remove the key)",
    ),
    ("flash_attn_fuse_qkv", "not supported"),
    ("flash_attn_fuse_mlp", "not supported"),
    (
        "unsloth_cross_entropy_loss",
        "runner's chunked cross-entropy is always used (remove the key)",
    ),
    (
        "unsloth_lora_mlp",
        "runner's fused LoRA paths are always used (remove the key)",
    ),
    (
        "unsloth_lora_qkv",
        "runner's fused LoRA paths are always used (remove the key)",
    ),
    (
        "unsloth_lora_o",
        "runner's fused LoRA paths are always used (remove the key)",
    ),
    (
        "unsloth_rms_norm",
        "runner's fused RMSNorm is always used (remove the key)",
    ),
    (
        "unsloth_rope",
        "runner's RoPE is always used (remove the key)",
    ),
    (
        "liger_rope",
        "runner's kernels are always used (remove the key)",
    ),
    (
        "liger_rms_norm",
        "runner's kernels are always used (remove the key)",
    ),
    (
        "liger_glu_activation",
        "runner's kernels are always used (remove the key)",
    ),
    (
        "liger_fused_linear_cross_entropy",
        "runner's chunked cross-entropy is always used (remove the key)",
    ),
    (
        "plugins",
        "Axolotl plugins are Python; runner cannot load them",
    ),
    ("low_cpu_mem_usage", "runner always loads memory-mapped"),
    (
        "sample_packing_eff_est",
        "runner packs exactly and reports the efficiency itself",
    ),
    ("multipack_real_batches", "runner packs exactly"),
    (
        "max_packed_sequence_len",
        "removed in Axolotl too: use sample_packing with sequence_len",
    ),
    (
        "group_by_length",
        "length-grouped sampling is not supported",
    ),
    (
        "curriculum_sampling",
        "curriculum sampling is not supported",
    ),
    (
        "pretraining_dataset",
        "streaming pretraining datasets are not supported; use datasets with type: completion",
    ),
    ("dataset_shard_num", "dataset sharding is not supported"),
    ("dataset_shard_idx", "dataset sharding is not supported"),
    (
        "dataset_exact_deduplication",
        "deduplication is not supported",
    ),
    (
        "skip_prepare_dataset",
        "runner always prepares (and caches) the dataset",
    ),
    (
        "chat_template_kwargs",
        "extra template variables are not supported yet",
    ),
    (
        "eot_tokens",
        "not supported yet; train_on_eos covers the tokenizer's EOS",
    ),
    ("train_on_eot", "not supported yet; use train_on_eos"),
    (
        "tokenizer_use_fast",
        "runner always uses the fast (tokenizers) implementation",
    ),
    ("tokenizer_legacy", "not supported"),
    ("resize_token_embeddings_to_32x", "not supported"),
    (
        "lr_quadratic_warmup",
        "quadratic warmup is not supported; runner warms up linearly",
    ),
    ("lr_div_factor", "one-cycle schedules are not supported"),
    (
        "lr_groups",
        "per-module learning rates are not supported; see loraplus_lr_ratio",
    ),
    (
        "embedding_lr",
        "separate embedding learning rates are not supported; see loraplus_lr_embedding",
    ),
    (
        "embedding_lr_scale",
        "separate embedding learning rates are not supported; see loraplus_lr_embedding",
    ),
    ("optim_args", "optimizer arguments are the adam_* keys"),
    ("optim_target_modules", "not supported"),
    (
        "save_safetensors",
        "runner always saves safetensors (remove the key)",
    ),
    ("save_strategy", "use save_steps or saves_per_epoch"),
    ("eval_strategy", "use eval_steps or evals_per_epoch"),
    ("evaluation_strategy", "use eval_steps or evals_per_epoch"),
    (
        "eval_table_size",
        "generation tables during eval are not supported",
    ),
    ("do_causal_lm_eval", "not supported"),
    ("eval_causal_lm_metrics", "not supported"),
    ("bench_dataset", "not supported"),
    ("do_bench_eval", "not supported"),
    ("debug", "use `runner inspect` to see prompts and masks"),
    ("special_tokens_reference", "not supported"),
    (
        "model_config_type",
        "not needed: the architecture is read from the checkpoint",
    ),
    (
        "overrides_of_model_config",
        "changing the model config is not supported",
    ),
    ("model_kwargs", "not supported"),
    ("auto_find_batch_size", "give micro_batch_size explicitly"),
    (
        "batch_size",
        "give micro_batch_size and gradient_accumulation_steps",
    ),
    ("eval_sequence_len", "evaluation uses sequence_len"),
    (
        "shuffle_before_merging_datasets",
        "not supported; see shuffle_merged_datasets",
    ),
    ("max_prompt_len", "not supported"),
    (
        "dataloader_num_workers",
        "runner's data is prepared ahead; there are no loader workers",
    ),
    (
        "dataloader_pin_memory",
        "runner's data is prepared ahead; there are no loader workers",
    ),
    (
        "dataloader_prefetch_factor",
        "runner's data is prepared ahead; there are no loader workers",
    ),
];

/// Axolotl keys that have no effect on what runner computes; a recipe may set them, and
/// `runner validate` lists each one with what runner does instead.
pub const INERT: &[(&str, &str)] = &[
    (
        "is_llama_derived_model",
        "nothing: the architecture is read from the checkpoint's config",
    ),
    (
        "is_mistral_derived_model",
        "nothing: the architecture is read from the checkpoint's config",
    ),
    (
        "is_qwen_derived_model",
        "nothing: the architecture is read from the checkpoint's config",
    ),
    (
        "is_falcon_derived_model",
        "nothing: the architecture is read from the checkpoint's config",
    ),
    (
        "eval_max_new_tokens",
        "nothing: runner does not generate during evaluation (without eval_table_size Axolotl does not either)",
    ),
    (
        "eval_table_max_new_tokens",
        "nothing: runner does not generate during evaluation (without eval_table_size Axolotl does not either)",
    ),
];

pub fn inert_key(key: &str) -> Option<&'static str> {
    INERT.iter().find(|(k, _)| *k == key).map(|(_, what)| *what)
}

/// Axolotl dataset `type`s runner does not implement, with the equivalent to use.
pub const REFUSED_DATASET_TYPES: &[(&str, &str)] = &[
    (
        "sharegpt",
        "removed in Axolotl too: use `type: chat_template` with `field_messages: conversations`, `message_property_mappings: {role: from, content: value}` and `roles: {user: [human], assistant: [gpt], system: [system]}`",
    ),
    ("oasst", "convert to messages and use `type: chat_template`"),
    ("llama2_chat", "use `type: chat_template`"),
    ("pygmalion", "use `type: chat_template`"),
    (
        "metharme",
        "use `type: chat_template` or a custom alpaca-like `type:` mapping",
    ),
    ("context_qa", "use a custom alpaca-like `type:` mapping"),
    ("explainchoice", "use a custom alpaca-like `type:` mapping"),
    ("jeopardy", "use a custom alpaca-like `type:` mapping"),
    ("gpteacher", "use a custom alpaca-like `type:` mapping"),
    ("reflection", "use a custom alpaca-like `type:` mapping"),
    ("summarizetldr", "use a custom alpaca-like `type:` mapping"),
    (
        "stepwise_supervised",
        "process supervision is not supported",
    ),
    ("bradley_terry", "reward-model training is not supported"),
];

/// The dataset `type` names runner implements.
pub const DATASET_TYPES: &[&str] = &[
    "alpaca",
    "alpaca_chat",
    "alpaca_chat.load_qa",
    "alpaca_chat.load_concise",
    "alpaca_w_system.load_open_orca",
    "chat_template",
    "completion",
    "input_output",
];

/// Axolotl values of enumerated keys that runner knows but does not implement.
pub const REFUSED_VALUES: &[(&str, &str, &str)] = &[
    ("optimizer", "sgd", "only AdamW is implemented"),
    ("optimizer", "adafactor", "only AdamW is implemented"),
    ("optimizer", "lion_8bit", "only AdamW is implemented"),
    ("optimizer", "paged_lion_8bit", "only AdamW is implemented"),
    (
        "optimizer",
        "schedule_free_adamw",
        "only AdamW is implemented",
    ),
    ("optimizer", "muon", "only AdamW is implemented"),
    ("optimizer", "adamw_torch_4bit", "only AdamW is implemented"),
    ("optimizer", "ao_adamw_8bit", "only AdamW is implemented"),
    ("optimizer", "adopt_adamw", "only AdamW is implemented"),
    ("optimizer", "came_pytorch", "only AdamW is implemented"),
    ("optimizer", "galore_adamw", "only AdamW is implemented"),
    ("lr_scheduler", "one_cycle", "use cosine or linear"),
    ("lr_scheduler", "rex", "use cosine or linear"),
    ("lr_scheduler", "polynomial", "use cosine or linear"),
    ("lr_scheduler", "inverse_sqrt", "use cosine or linear"),
    ("lr_scheduler", "cosine_with_restarts", "use cosine"),
    (
        "lr_scheduler",
        "cosine_with_min_lr",
        "use cosine with cosine_min_lr_ratio",
    ),
    (
        "lr_scheduler",
        "reduce_lr_on_plateau",
        "use cosine or linear",
    ),
    (
        "lr_scheduler",
        "warmup_stable_decay",
        "use cosine or linear",
    ),
    (
        "attn_implementation",
        "flex_attention",
        "runner uses its own attention; use eager, sdpa or flash_attention_2",
    ),
];

pub fn refused_key(key: &str) -> Option<&'static str> {
    REFUSED.iter().find(|(k, _)| *k == key).map(|(_, why)| *why)
}

pub fn refused_dataset_type(name: &str) -> Option<&'static str> {
    REFUSED_DATASET_TYPES
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, why)| *why)
}

pub fn refused_value(key: &str, value: &str) -> Option<&'static str> {
    REFUSED_VALUES
        .iter()
        .find(|(k, v, _)| *k == key && *v == value)
        .map(|(_, _, why)| *why)
}

/// The closest candidate by edit distance, when it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&lower, c), c))
        .filter(|(score, _)| *score >= 0.82)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        let keys = ["lora_r", "lora_alpha", "learning_rate", "micro_batch_size"];
        assert_eq!(did_you_mean("lora_rr", keys), Some("lora_r"));
        assert_eq!(did_you_mean("lerning_rate", keys), Some("learning_rate"));
        assert_eq!(
            did_you_mean("micro_batchsize", keys),
            Some("micro_batch_size")
        );
        assert_eq!(did_you_mean("zzz", keys), None);
    }

    #[test]
    fn refused_keys_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (k, _) in REFUSED {
            assert!(seen.insert(*k), "{k} listed twice");
        }
    }
}
