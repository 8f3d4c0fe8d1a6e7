//! The resolved `Plan`: the typed, nested, defaults-filled form of a recipe that the stages run.
//!
//! A recipe is flat (Axolotl's keys); the Plan is grouped by stage, and each stage crate takes
//! only its own section (`DataPlan`, `ModelPlan`, `AdapterPlan`, `TrainPlan`). Every value here
//! has been validated: stages never re-check ranges or combinations.

use serde::Serialize;
use std::path::PathBuf;

/// Everything a run needs, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub model: ModelPlan,
    pub adapter: AdapterPlan,
    pub data: DataPlan,
    pub train: TrainPlan,
    pub export: ExportPlan,
    /// Documented equivalents runner uses in place of what the recipe named.
    pub substitutions: Vec<Substitution>,
}

/// A recipe value runner honours through an equivalent rather than literally.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Substitution {
    /// The recipe key, e.g. `optimizer`.
    pub key: String,
    /// The value as written.
    pub asked: String,
    /// What runner does instead, and why that is equivalent.
    pub runs: String,
}

// ---------------------------------------------------------------------------------------------
// Model

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelPlan {
    /// `base_model`: a local folder, a `.gguf` file or a hub id (`org/name`).
    pub base_model: String,
    /// `base_model_config`: where `config.json` comes from when it differs from `base_model`.
    pub config: Option<String>,
    /// `tokenizer_config`: where the tokenizer comes from when it differs from `base_model`.
    pub tokenizer: Option<String>,
    /// `model_type`, as written (e.g. `AutoModelForCausalLM`); the architecture itself is read
    /// from the checkpoint.
    pub model_type: Option<String>,
    /// `tokenizer_type`, as written (e.g. `AutoTokenizer`).
    pub tokenizer_type: Option<String>,
    /// `revision_of_model`: hub revision.
    pub revision: Option<String>,
    /// `special_tokens`: tokens to set (and add when missing).
    pub special_tokens: SpecialTokens,
    /// `tokens`: new tokens to add to the vocabulary (the embeddings are resized).
    pub added_tokens: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Adapter

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdapterPlan {
    pub kind: AdapterKind,
    /// How the frozen base weights are held in memory.
    pub base_quant: BaseQuant,
    /// `lora_model_dir`: an existing PEFT adapter to load and continue from.
    pub init_from: Option<PathBuf>,
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scaling: f64,
    pub targets: TargetModules,
    /// `lora_modules_to_save`: modules trained fully and saved whole (e.g. `embed_tokens`).
    pub modules_to_save: Vec<String>,
    pub use_dora: bool,
    pub use_rslora: bool,
    pub init: LoraInit,
    /// `loraplus_lr_ratio`: B matrices train at `lr · ratio` when set.
    pub loraplus_lr_ratio: Option<f64>,
    /// `loraplus_lr_embedding`: learning rate of embedding-adapter B matrices under LoRA+.
    pub loraplus_lr_embedding: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    Lora,
    Qlora,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseQuant {
    /// Kept in the compute dtype.
    None,
    /// NF4, bitsandbytes layout, blocks of 64, double-quantized absmax (`load_in_4bit`).
    Nf4,
    /// Row-wise int8 (`load_in_8bit`).
    Int8,
}

/// Which linear layers get adapters, as PEFT selects them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetModules {
    /// `lora_target_linear: true`: every linear layer except the LM head.
    AllLinear,
    /// A list: a module is targeted when its name equals an entry or ends with `.{entry}`.
    Names(Vec<String>),
    /// A single string: a regex that must match the whole module name.
    Regex(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// PEFT's default: A kaiming-uniform (a = sqrt(5)), B zeros.
    Kaiming,
    /// A ~ N(0, 1/r), B zeros.
    Gaussian,
    /// A and B from the top-`r` singular vectors of W; W keeps the residual.
    /// `niter` = None means a full SVD.
    Pissa { niter: Option<u32> },
}

// ---------------------------------------------------------------------------------------------
// Data

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataPlan {
    pub datasets: Vec<DatasetPlan>,
    /// `test_datasets`: the evaluation set; when non-empty, `val_set_size` must be 0.
    pub test_datasets: Vec<DatasetPlan>,
    /// `dataset_prepared_path`: root of the content-addressed prepared-data cache.
    pub prepared_path: PathBuf,
    pub val_set: ValSet,
    pub sequence_len: usize,
    pub excess_length_strategy: ExcessLength,
    pub sample_packing: bool,
    pub eval_sample_packing: bool,
    pub pad_to_sequence_len: bool,
    /// `train_on_inputs`: train on prompt tokens too.
    pub train_on_inputs: bool,
    /// The recipe-wide chat template, used by `chat_template` datasets that name none.
    pub chat_template: ChatTemplate,
    pub default_system_message: Option<String>,
    pub shuffle_merged_datasets: bool,
    /// `dataset_processes`: worker threads for tokenization (None = all cores).
    pub processes: Option<usize>,
    /// Seed for splits and shuffling (`seed`).
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValSet {
    None,
    /// A fraction in (0, 1) of the merged training rows.
    Fraction(f64),
    /// An absolute number of rows.
    Rows(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExcessLength {
    /// Drop samples longer than `sequence_len` (counted and reported).
    Drop,
    /// Keep the first `sequence_len` tokens.
    Truncate,
    /// Stop with an error naming the sample.
    Raise,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetPlan {
    /// `path`: a local file, folder or glob, or a hub id.
    pub path: String,
    pub split: String,
    pub data_files: Vec<String>,
    /// `ds_type`: the file format when it cannot be told from the extension.
    pub ds_type: Option<FileFormat>,
    /// `name`: the hub dataset configuration.
    pub name: Option<String>,
    pub revision: Option<String>,
    pub format: DatasetFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Json,
    Jsonl,
    Parquet,
    Arrow,
    Csv,
}

/// How rows become prompts and labels (the dataset's `type:`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// `type: alpaca` and Axolotl's alpaca variants.
    Alpaca(AlpacaVariant),
    /// A user-defined alpaca-like format (`field_instruction`, `format`, ...).
    CustomAlpaca(CustomAlpaca),
    ChatTemplate(ChatFormat),
    /// `type: completion`: raw text from `field`, every token trained.
    Completion {
        field: String,
    },
    /// `type: input_output`: `segments` of `{text, label}`.
    InputOutput,
    /// No `type`: rows already hold `input_ids` (and optionally `labels`, `attention_mask`).
    Pretokenized,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlpacaVariant {
    /// `alpaca`: the Stanford Alpaca prompt.
    Alpaca,
    /// `alpaca_chat`: `USER: ... ASSISTANT: ...`.
    AlpacaChat,
    /// `alpaca_chat.load_qa`: `question`/`answer` columns in the chat layout.
    AlpacaChatQa,
    /// `alpaca_chat.load_concise`: alpaca_chat asking for concise answers.
    AlpacaChatConcise,
    /// `alpaca_w_system.load_open_orca`: OpenOrca's `system_prompt`/`question`/`response`.
    AlpacaWithSystemOpenOrca,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomAlpaca {
    pub field_system: String,
    pub field_instruction: String,
    pub field_input: String,
    pub field_output: String,
    /// Template with `{instruction}` and `{input}`.
    pub format: String,
    /// Template used when the row's input is empty.
    pub no_input_format: String,
    /// Template for the system prompt, with `{system}`.
    pub system_format: String,
    pub system_prompt: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatFormat {
    pub template: ChatTemplate,
    /// `field_messages`: the column holding the list of messages.
    pub field_messages: String,
    /// `message_property_mappings.role`: the message key holding the role.
    pub role_key: String,
    /// `message_property_mappings.content`: the message key holding the content.
    pub content_key: String,
    /// `roles`: dataset role names mapped onto template roles; empty = identity.
    pub roles: Vec<RoleMapping>,
    pub roles_to_train: Vec<String>,
    pub train_on_eos: TrainOnEos,
    pub drop_system_message: bool,
    /// Tools, reasoning, template variables and per-message training flags.
    pub extras: ChatExtras,
}

/// What a chat row carries besides roles and contents (issue 15), with Axolotl's defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatExtras {
    /// `field_tools`: the row column passed to the template as `tools`.
    pub field_tools: String,
    /// `field_thinking`: the message key holding a turn's reasoning.
    pub field_thinking: String,
    /// `template_thinking_key`: the key the template reads that reasoning from.
    pub template_thinking_key: String,
    /// `message_field_training`: the message key whose boolean trains the turn or not.
    pub message_field_training: Option<String>,
    /// `message_field_training_detail`: the message key of character ranges to train or not.
    pub message_field_training_detail: Option<String>,
    /// `split_thinking`: reasoning cut out of assistant contents.
    pub split_thinking: bool,
    /// `chat_template_kwargs` (recipe level): extra template variables.
    pub template_kwargs: std::collections::BTreeMap<String, serde_json::Value>,
    /// `eot_tokens` (recipe level): the end-of-turn tokens of `train_on_eot`.
    pub eot_tokens: Option<Vec<String>>,
    /// `train_on_eot`; None = as `train_on_eos`. With this or `eot_tokens` set, the EOS and
    /// the end-of-turn tokens are two passes, as in Axolotl.
    pub train_on_eot: Option<TrainOnEos>,
}

impl Default for ChatExtras {
    fn default() -> Self {
        ChatExtras {
            field_tools: "tools".into(),
            field_thinking: "reasoning_content".into(),
            template_thinking_key: "reasoning_content".into(),
            message_field_training: None,
            message_field_training_detail: None,
            split_thinking: false,
            template_kwargs: Default::default(),
            eot_tokens: None,
            train_on_eot: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleMapping {
    /// The template role (`user`, `assistant`, `system`, ...).
    pub role: String,
    /// Dataset role names that mean it (e.g. `human`, `gpt`).
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainOnEos {
    /// Every EOS token.
    All,
    /// The EOS closing each trained turn.
    Turn,
    /// Only the last EOS.
    Last,
    None,
}

/// Where a chat template comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatTemplate {
    /// The tokenizer's own (`tokenizer_config.json` or GGUF metadata).
    TokenizerDefault,
    /// The tokenizer's own, else ChatML.
    TokenizerDefaultFallbackChatml,
    /// A built-in named template.
    Named(NamedTemplate),
    /// Inline Jinja (`chat_template_jinja`).
    Jinja(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedTemplate {
    Chatml,
    Llama3,
    MistralV1,
    MistralV2v3,
    Qwen25,
    Qwen3,
    Gemma,
    Phi3,
}

// ---------------------------------------------------------------------------------------------
// Training

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainPlan {
    pub micro_batch_size: usize,
    pub eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    /// `num_epochs`; ignored for stopping when `max_steps` is set (as in transformers).
    pub num_epochs: f64,
    pub max_steps: Option<u64>,
    pub learning_rate: f64,
    pub optimizer: Optimizer,
    pub scheduler: Scheduler,
    /// `max_grad_norm`: global-norm clipping; None = no clipping.
    pub max_grad_norm: Option<f64>,
    pub precision: Precision,
    pub tf32: bool,
    pub gradient_checkpointing: bool,
    pub logging_steps: u64,
    pub eval: EvalSchedule,
    pub save: SaveSchedule,
    pub output_dir: PathBuf,
    pub resume: Resume,
    pub seed: u64,
    pub early_stopping_patience: Option<u64>,
    pub loss_watchdog: Option<LossWatchdog>,
    /// `use_tensorboard`: write the logged metrics as TensorBoard event files too.
    pub tensorboard: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Optimizer {
    /// AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW`).
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scheduler {
    pub kind: SchedulerKind,
    pub warmup: Warmup,
    /// `cosine_min_lr_ratio`: the cosine floor as a fraction of the peak.
    pub cosine_min_lr_ratio: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    Linear,
    Cosine,
    Constant,
    ConstantWithWarmup,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    Steps(u64),
    /// A fraction of the total optimizer steps (rounded up, as transformers does).
    Ratio(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    F32,
    Bf16,
    F16,
    /// `bf16: auto`: bf16 where the device supports it, else f32.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalSchedule {
    /// No evaluation during training.
    Never,
    /// Every N optimizer steps.
    Steps(u64),
    /// N times per epoch, evenly spaced.
    PerEpoch(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SaveSchedule {
    pub every: SaveEvery,
    pub total_limit: Option<u64>,
    pub save_first_step: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveEvery {
    /// Only at the end.
    End,
    Steps(u64),
    PerEpoch(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resume {
    Fresh,
    /// `resume_from_checkpoint`: this checkpoint folder.
    From(PathBuf),
    /// `auto_resume_from_checkpoints`: the newest checkpoint under `output_dir`, if any.
    Latest,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LossWatchdog {
    pub threshold: f64,
    pub patience: u64,
}

// ---------------------------------------------------------------------------------------------
// Export

/// What `runner run` writes after training besides the PEFT adapter (runner's own keys).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ExportPlan {
    /// `merge_adapter`: write the merged model to `output_dir/merged`.
    pub merge_adapter: bool,
    /// `merged_dtype`.
    pub merged_dtype: MergedDtype,
    /// `export_gguf`: one GGUF per type, in the order given.
    pub gguf: Vec<GgufQuant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MergedDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

/// GGUF tensor types runner writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GgufQuant {
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl GgufQuant {
    pub const ALL: [GgufQuant; 3] = [GgufQuant::F32, GgufQuant::F16, GgufQuant::Q8_0];

    pub fn as_str(self) -> &'static str {
        match self {
            GgufQuant::F32 => "f32",
            GgufQuant::F16 => "f16",
            GgufQuant::Q8_0 => "q8_0",
        }
    }
}
