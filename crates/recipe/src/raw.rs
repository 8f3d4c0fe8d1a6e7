//! The recipe as written: Axolotl's flat keys, each optional, typed but not yet resolved.
//!
//! These types are the single definition of the recipe surface: the JSON Schema
//! (`runner schema`) is generated from them, and validation deserializes each key into them.
//! Doc comments become the schema's descriptions, so they are written for users.

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A runner recipe: Axolotl's flat keys. Keys left empty count as unset.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "runner recipe")]
pub struct RawRecipe {
    // --- model ---------------------------------------------------------------------------
    /// The base model: a local Hugging Face folder, a `.gguf` file, or a hub id (`org/name`)
    /// found in the local Hugging Face cache.
    pub base_model: Option<String>,
    /// Where to read `config.json` from, when not from `base_model`.
    pub base_model_config: Option<String>,
    /// Where to read the tokenizer from, when not from `base_model`.
    pub tokenizer_config: Option<String>,
    /// Hub revision (branch, tag or commit) of `base_model`.
    pub revision_of_model: Option<String>,
    /// Model class name, e.g. `AutoModelForCausalLM` or `LlamaForCausalLM`. The architecture is
    /// read from the checkpoint; this is checked for consistency.
    pub model_type: Option<String>,
    /// Tokenizer class name, e.g. `AutoTokenizer`.
    pub tokenizer_type: Option<String>,
    /// Never honoured: runner does not run code from model repositories. Only `false` is accepted.
    pub trust_remote_code: Option<bool>,
    /// Special tokens to set on the tokenizer (added when missing).
    pub special_tokens: Option<RawSpecialTokens>,
    /// New tokens to add to the vocabulary; the embeddings are resized.
    pub tokens: Option<Vec<String>>,

    // --- adapter -------------------------------------------------------------------------
    /// Adapter type: `lora`, or `qlora` (LoRA on a 4-bit NF4 base; needs `load_in_4bit: true`).
    pub adapter: Option<AdapterName>,
    /// Hold the frozen base weights in 4-bit NF4 (QLoRA).
    pub load_in_4bit: Option<bool>,
    /// Hold the frozen base weights in 8-bit (row-wise int8).
    pub load_in_8bit: Option<bool>,
    /// An existing PEFT adapter folder to start from.
    pub lora_model_dir: Option<String>,
    /// LoRA rank r (≥ 1). Default 8 (PEFT's).
    pub lora_r: Option<u64>,
    /// LoRA alpha; the update is scaled by alpha/r (alpha/√r with rsLoRA). Default 8 (PEFT's).
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapter input, in [0, 1).
    pub lora_dropout: Option<f64>,
    /// Modules that get adapters: a list of names (a module matches when its name ends with
    /// one) or a single regex matching the whole module name.
    pub lora_target_modules: Option<StringOrList>,
    /// Put adapters on every linear layer except the LM head.
    pub lora_target_linear: Option<bool>,
    /// Modules trained fully and saved whole, e.g. `embed_tokens`, `lm_head`.
    pub lora_modules_to_save: Option<Vec<String>>,
    /// Only for GPT-2 style Conv1D weights; Llama-family models need `false`.
    pub lora_fan_in_fan_out: Option<bool>,
    /// DoRA: weight-decomposed LoRA.
    pub peft_use_dora: Option<bool>,
    /// rsLoRA: scale by alpha/√r instead of alpha/r.
    pub peft_use_rslora: Option<bool>,
    /// Adapter initialisation: `true` (PEFT default: kaiming-uniform A, zero B), `gaussian`,
    /// `pissa` or `pissa_niter_N`.
    pub peft_init_lora_weights: Option<BoolOrString>,
    /// LoRA+: learning-rate ratio of B over A (> 0).
    pub loraplus_lr_ratio: Option<f64>,
    /// LoRA+: learning rate of embedding adapters' B matrices. Default 1e-6.
    pub loraplus_lr_embedding: Option<f64>,

    // --- data ----------------------------------------------------------------------------
    /// Training datasets.
    pub datasets: Option<Vec<RawDataset>>,
    /// Evaluation datasets (instead of a `val_set_size` split).
    pub test_datasets: Option<Vec<RawDataset>>,
    /// Folder of the prepared-data cache. Default `last_run_prepared`.
    pub dataset_prepared_path: Option<String>,
    /// Validation split: a fraction in [0, 1), or a whole number of rows.
    pub val_set_size: Option<f64>,
    /// Maximum tokens per sample (and per packed bin).
    pub sequence_len: Option<u64>,
    /// What to do with samples longer than `sequence_len`: `drop` (default), `truncate`, `raise`.
    pub excess_length_strategy: Option<ExcessLengthName>,
    /// Pack several samples into each `sequence_len` row (attention never crosses samples).
    pub sample_packing: Option<bool>,
    /// Pack evaluation samples too. Default: same as `sample_packing`.
    pub eval_sample_packing: Option<bool>,
    /// Pad every batch to `sequence_len` instead of its longest sample.
    pub pad_to_sequence_len: Option<bool>,
    /// Train on prompt tokens as well as responses.
    pub train_on_inputs: Option<bool>,
    /// Chat template for `chat_template` datasets: `tokenizer_default`, a built-in name, or
    /// `jinja` with `chat_template_jinja`.
    pub chat_template: Option<ChatTemplateName>,
    /// Inline Jinja chat template (with `chat_template: jinja`, or alone).
    pub chat_template_jinja: Option<String>,
    /// Extra chat-template variables for every chat dataset, e.g. `{enable_thinking: false}`
    /// (transformers' `apply_chat_template(**kwargs)`).
    pub chat_template_kwargs: Option<BTreeMap<String, serde_json::Value>>,
    /// Tokens that end a turn, for the datasets' `train_on_eot` (each a single token the chat
    /// template writes). Default: the tokenizer's EOS.
    pub eot_tokens: Option<Vec<String>>,
    /// System message added to conversations that have none.
    pub default_system_message: Option<String>,
    /// Shuffle rows after merging datasets. Default true.
    pub shuffle_merged_datasets: Option<bool>,
    /// Worker threads for tokenization. Default: all cores.
    pub dataset_processes: Option<u64>,

    // --- training ------------------------------------------------------------------------
    /// Samples per micro-batch.
    pub micro_batch_size: Option<u64>,
    /// Samples per evaluation batch. Default: `micro_batch_size`.
    pub eval_batch_size: Option<u64>,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: Option<u64>,
    /// Epochs to train (may be fractional).
    pub num_epochs: Option<f64>,
    /// Optimizer steps to train; takes precedence over `num_epochs`.
    pub max_steps: Option<u64>,
    /// Peak learning rate (> 0).
    pub learning_rate: Option<f64>,
    /// Optimizer: `adamw_torch` (default), `adamw_torch_fused`; the 8-bit, 4-bit, FP8 and paged
    /// AdamW variants run as AdamW with f32 state (listed by `runner validate`).
    pub optimizer: Option<OptimizerName>,
    /// Learning-rate schedule: `cosine` (default), `linear`, `constant`, `constant_with_warmup`.
    pub lr_scheduler: Option<SchedulerName>,
    /// Cosine schedule floor, as a fraction of the peak learning rate, in [0, 1].
    pub cosine_min_lr_ratio: Option<f64>,
    /// Warmup length in optimizer steps (exclusive with `warmup_ratio`).
    pub warmup_steps: Option<u64>,
    /// Warmup length as a fraction of all optimizer steps, in [0, 1).
    pub warmup_ratio: Option<f64>,
    /// Decoupled weight decay (AdamW).
    pub weight_decay: Option<f64>,
    /// AdamW beta1, in [0, 1).
    pub adam_beta1: Option<f64>,
    /// AdamW beta2, in [0, 1).
    pub adam_beta2: Option<f64>,
    /// AdamW epsilon (> 0).
    pub adam_epsilon: Option<f64>,
    /// Global gradient-norm clipping; 0 disables it. Default 1.0.
    pub max_grad_norm: Option<f64>,
    /// bf16 compute: `true`, `false` or `auto` (bf16 where the device supports it).
    pub bf16: Option<BoolOrAuto>,
    /// fp16 compute.
    pub fp16: Option<bool>,
    /// Allow TF32 matmuls on GPUs that have them.
    pub tf32: Option<bool>,
    /// Recompute activations per decoder layer in backward to save memory.
    pub gradient_checkpointing: Option<BoolOrString>,
    /// Options passed to gradient checkpointing (`use_reentrant`).
    pub gradient_checkpointing_kwargs: Option<BTreeMap<String, serde_json::Value>>,
    /// Use FlashAttention (runner's own fused attention computes the same result).
    pub flash_attention: Option<bool>,
    /// Use PyTorch SDPA attention (runner's own attention computes the same result).
    pub sdp_attention: Option<bool>,
    /// Attention implementation: `eager`, `sdpa`, `flash_attention_2|3|4`,
    /// `flash_attention_torch`, `flex_attention`, `xformers` (all exact: they run runner's own).
    pub attn_implementation: Option<AttnName>,
    /// Log every N optimizer steps.
    pub logging_steps: Option<u64>,
    /// Evaluate every N optimizer steps.
    pub eval_steps: Option<u64>,
    /// Evaluate N times per epoch.
    pub evals_per_epoch: Option<u64>,
    /// Save a checkpoint every N optimizer steps.
    pub save_steps: Option<u64>,
    /// Save N checkpoints per epoch.
    pub saves_per_epoch: Option<u64>,
    /// Keep at most N checkpoints (oldest removed first).
    pub save_total_limit: Option<u64>,
    /// Also save a checkpoint after the first step.
    pub save_first_step: Option<bool>,
    /// Where checkpoints, metrics and the final adapter go. Default `./outputs/out`.
    pub output_dir: Option<String>,
    /// A checkpoint folder to resume from.
    pub resume_from_checkpoint: Option<String>,
    /// Resume from the newest checkpoint in `output_dir` when there is one.
    pub auto_resume_from_checkpoints: Option<bool>,
    /// Seed for data order, splits, dropout and adapter initialisation. Default 42.
    pub seed: Option<u64>,
    /// Stop after N evaluations without improvement of the eval loss.
    pub early_stopping_patience: Option<u64>,
    /// Stop when the training loss exceeds this value for `loss_watchdog_patience` steps.
    pub loss_watchdog_threshold: Option<f64>,
    /// Consecutive steps over `loss_watchdog_threshold` before stopping. Default 3.
    pub loss_watchdog_patience: Option<u64>,
    /// Also write the logged metrics as TensorBoard event files under `output_dir/runs/`.
    pub use_tensorboard: Option<bool>,
    /// Axolotl's strict mode. runner is always strict; both values are accepted.
    pub strict: Option<bool>,

    // --- export (runner's own keys; Axolotl has none) -------------------------------------
    /// runner's own key: after training, merge the adapter into the base model (W + s·B·A,
    /// DoRA rescaled) and write it to `output_dir/merged`: the base's sharding and index,
    /// config and tokenizer files, then a logit check against base + adapter. A QLoRA / int8
    /// adapter is merged into the NF4 / int8 round-tripped base it trained against. A GGUF
    /// base is merged in memory and written as one `model.safetensors` with `config.json` and
    /// the tokenizer. Default false.
    pub merge_adapter: Option<bool>,
    /// runner's own key: weight dtype of the merged model (`merge_adapter`): `f32`, `bf16` or
    /// `f16`. Default f32.
    pub merged_dtype: Option<MergedDtypeName>,
    /// runner's own key: after training, write the model with the adapter merged as GGUF for
    /// llama.cpp / Ollama, one file per type: `f32`, `f16` or `q8_0` (one name or a list).
    /// Files go to `output_dir/<model name>-<type>.gguf`, with the tokenizer and the chat
    /// template the recipe trains with.
    pub export_gguf: Option<StringOrList>,
}

/// A dataset entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    /// A local file, folder or glob, or a hub dataset id.
    pub path: Option<String>,
    /// How rows become prompts: `alpaca`, `alpaca_chat`, `chat_template`, `completion`,
    /// `input_output`, or a mapping of custom alpaca fields. Omit for pre-tokenized rows.
    #[serde(rename = "type")]
    pub kind: Option<DatasetType>,
    /// Split to read. Default `train`.
    pub split: Option<String>,
    /// Files to read within `path`.
    pub data_files: Option<StringOrList>,
    /// File format when the extension does not tell: `json`, `jsonl`, `parquet`, `arrow`, `csv`.
    pub ds_type: Option<FileFormatName>,
    /// Hub dataset configuration name.
    pub name: Option<String>,
    /// Hub dataset revision.
    pub revision: Option<String>,
    /// Column holding the text (`completion`).
    pub field: Option<String>,
    /// Column holding the list of messages (`chat_template`). Default `messages`.
    pub field_messages: Option<String>,
    /// Message keys holding the role and the content, e.g. `{role: from, content: value}`.
    pub message_property_mappings: Option<BTreeMap<String, String>>,
    /// Older spelling of `message_property_mappings.role`.
    pub message_field_role: Option<String>,
    /// Older spelling of `message_property_mappings.content`.
    pub message_field_content: Option<String>,
    /// Dataset role names per template role, e.g. `{user: [human], assistant: [gpt]}`.
    pub roles: Option<BTreeMap<String, Vec<String>>>,
    /// Roles whose turns are trained. Default `[assistant]`.
    pub roles_to_train: Option<Vec<String>>,
    /// Which end-of-turn tokens are trained: `turn` (default), `all`, `last`, `none`.
    pub train_on_eos: Option<TrainOnEosName>,
    /// Chat template for this dataset (overrides the recipe's).
    pub chat_template: Option<ChatTemplateName>,
    /// Inline Jinja chat template for this dataset.
    pub chat_template_jinja: Option<String>,
    /// Drop system messages from conversations.
    pub drop_system_message: Option<bool>,
    /// Row column holding the tool definitions handed to the chat template as `tools` (a list,
    /// or a JSON string of one). Default `tools`.
    pub field_tools: Option<String>,
    /// Message key holding a turn's reasoning text. Default `reasoning_content`.
    pub field_thinking: Option<String>,
    /// The message key the chat template reads reasoning from. Default `reasoning_content`.
    pub template_thinking_key: Option<String>,
    /// Message key holding `true`/`false`: train that turn or not, whatever its role.
    pub message_field_training: Option<String>,
    /// Message key holding character ranges of the content to train or not:
    /// `[{begin_offset, end_offset, train}]` (inclusive ends, Axolotl's).
    pub message_field_training_detail: Option<String>,
    /// Cut `<think>…</think>` (or `<reasoning>`, `<|begin_of_thought|>`) out of assistant
    /// contents into the reasoning field, as Axolotl does.
    pub split_thinking: Option<bool>,
    /// Which `eot_tokens` are trained: `turn`, `all`, `last`, `none`. Default: as `train_on_eos`.
    pub train_on_eot: Option<TrainOnEosName>,
    /// Custom alpaca: column of the system prompt.
    pub field_system: Option<String>,
    /// Custom alpaca: column of the instruction.
    pub field_instruction: Option<String>,
    /// Custom alpaca: column of the optional input.
    pub field_input: Option<String>,
    /// Custom alpaca: column of the response.
    pub field_output: Option<String>,
    /// Custom alpaca: prompt template with `{instruction}` and `{input}`.
    pub format: Option<String>,
    /// Custom alpaca: prompt template used when the input is empty.
    pub no_input_format: Option<String>,
    /// Custom alpaca: system template with `{system}`.
    pub system_format: Option<String>,
    /// Custom alpaca: system prompt used when the row has none.
    pub system_prompt: Option<String>,
    /// Set by validation when this entry failed to deserialize (its errors are already
    /// reported); resolution skips it so that the other entries are still checked.
    #[serde(skip)]
    #[schemars(skip)]
    pub invalid: bool,
}

/// Axolotl's custom prompt format, given as the `type:` mapping.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCustomFormat {
    pub field_system: Option<String>,
    pub field_instruction: Option<String>,
    pub field_input: Option<String>,
    pub field_output: Option<String>,
    pub format: Option<String>,
    pub no_input_format: Option<String>,
    pub system_format: Option<String>,
    pub system_prompt: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
}

/// A dataset's `type`: a named format or a custom alpaca-like mapping.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum DatasetType {
    Named(String),
    Custom(RawCustomFormat),
}

impl<'de> Deserialize<'de> for DatasetType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => Ok(DatasetType::Named(s)),
            serde_json::Value::Object(_) => serde_json::from_value(v)
                .map(DatasetType::Custom)
                .map_err(de::Error::custom),
            other => Err(de::Error::custom(format!(
                "expected a format name or a mapping of custom fields, found {}",
                json_kind(&other)
            ))),
        }
    }
}

/// A string or a list of strings.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => Ok(StringOrList::One(s)),
            serde_json::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    serde_json::Value::String(s) => Ok(s),
                    other => Err(de::Error::custom(format!(
                        "item {i}: expected a string, found {}",
                        json_kind(&other)
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(StringOrList::Many),
            other => Err(de::Error::custom(format!(
                "expected a string or a list of strings, found {}",
                json_kind(&other)
            ))),
        }
    }
}

/// `true`, `false`, or a named mode.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum BoolOrString {
    Bool(bool),
    Name(String),
}

impl<'de> Deserialize<'de> for BoolOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BoolOrString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or a mode name")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<BoolOrString, E> {
                Ok(BoolOrString::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BoolOrString, E> {
                Ok(BoolOrString::Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `true`, `false` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum BoolOrAuto {
    Bool(bool),
    Auto(AutoWord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AutoWord {
    #[serde(rename = "auto")]
    Auto,
}

impl<'de> Deserialize<'de> for BoolOrAuto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BoolOrAuto;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or auto")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<BoolOrAuto, E> {
                Ok(BoolOrAuto::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BoolOrAuto, E> {
                if v == "auto" {
                    Ok(BoolOrAuto::Auto(AutoWord::Auto))
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "nothing",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

/// Declares a closed set of names; serde's "unknown variant" error lists them, and the
/// validator adds a "did you mean".
macro_rules! names {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            pub const ALL: &'static [&'static str] = &[$($text),+];
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
    };
}

names!(AdapterName { Lora = "lora", Qlora = "qlora" });
names!(MergedDtypeName { F32 = "f32", Bf16 = "bf16", F16 = "f16" });
names!(ExcessLengthName { Drop = "drop", Truncate = "truncate", Raise = "raise" });
names!(TrainOnEosName { All = "all", Turn = "turn", Last = "last", None = "none" });
names!(FileFormatName {
    Json = "json",
    Jsonl = "jsonl",
    Parquet = "parquet",
    Arrow = "arrow",
    Csv = "csv",
});
names!(ChatTemplateName {
    TokenizerDefault = "tokenizer_default",
    TokenizerDefaultFallbackChatml = "tokenizer_default_fallback_chatml",
    Jinja = "jinja",
    Chatml = "chatml",
    Llama3 = "llama3",
    MistralV1 = "mistral_v1",
    MistralV2v3 = "mistral_v2v3",
    Qwen25 = "qwen_25",
    Qwen3 = "qwen3",
    Gemma = "gemma",
    Phi3 = "phi_3",
});
names!(OptimizerName {
    AdamwTorch = "adamw_torch",
    AdamwTorchFused = "adamw_torch_fused",
    AdamwHf = "adamw_hf",
    AdamwBnb8bit = "adamw_bnb_8bit",
    Adamw8bit = "adamw_8bit",
    PagedAdamw8bit = "paged_adamw_8bit",
    PagedAdamw32bit = "paged_adamw_32bit",
    AdamwTorch8bit = "adamw_torch_8bit",
    AdamwTorch4bit = "adamw_torch_4bit",
    AoAdamw8bit = "ao_adamw_8bit",
    AoAdamw4bit = "ao_adamw_4bit",
    AoAdamwFp8 = "ao_adamw_fp8",
});
names!(SchedulerName {
    Linear = "linear",
    Cosine = "cosine",
    Constant = "constant",
    ConstantWithWarmup = "constant_with_warmup",
});
names!(AttnName {
    Eager = "eager",
    Sdpa = "sdpa",
    FlashAttention2 = "flash_attention_2",
    FlashAttention3 = "flash_attention_3",
    FlashAttention4 = "flash_attention_4",
    FlashAttentionTorch = "flash_attention_torch",
    FlexAttention = "flex_attention",
    Xformers = "xformers",
});

/// The top-level keys the recipe types define, in declaration order.
pub fn field_names() -> Vec<String> {
    object_properties(&schemars::schema_for!(RawRecipe))
}

/// The keys a dataset entry accepts.
pub fn dataset_field_names() -> Vec<String> {
    object_properties(&schemars::schema_for!(RawDataset))
}

fn object_properties(schema: &schemars::Schema) -> Vec<String> {
    schema
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}
