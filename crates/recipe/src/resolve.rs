//! Resolution: the typed flat recipe → the nested [`Plan`], with every default filled, every
//! cross-field rule checked, and a record of where each value came from (`--explain`).

use crate::diag::Diagnostic;
use crate::keys;
use crate::plan::*;
use crate::raw::*;
use crate::yaml::{self, Node, Origin};
use std::path::{Path, PathBuf};

/// Where a Plan value came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Written in the recipe (or given with `--set`) under this key.
    Recipe { key: String, origin: Origin },
    /// runner's default.
    Default,
    /// Computed from other values; the text says how.
    Derived(String),
}

/// Provenance of Plan values, by Plan path (`adapter.r`, `data.datasets[0].format`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Explanation {
    pub entries: Vec<(String, Source)>,
}

impl Explanation {
    /// The source of the longest recorded prefix of `plan_path`.
    pub fn source_of(&self, plan_path: &str) -> Option<&Source> {
        self.entries
            .iter()
            .filter(|(p, _)| {
                plan_path == p
                    || plan_path.starts_with(&format!("{p}."))
                    || plan_path.starts_with(&format!("{p}["))
            })
            .max_by_key(|(p, _)| p.len())
            .map(|(_, s)| s)
    }
}

pub struct Resolved {
    pub plan: Option<Plan>,
    pub errors: Vec<Diagnostic>,
    pub explanation: Explanation,
}

/// Built-in tiny models runner generates itself, for smoke runs and CI (`base_model: builtin:NAME`).
pub const BUILTIN_MODELS: &[&str] = &["tiny-llama", "tiny-qwen3"];

/// The linear projections of a Llama-family decoder layer.
const LLAMA_LINEAR: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

struct Resolver<'a> {
    tree: &'a Node,
    errors: Vec<Diagnostic>,
    explanation: Explanation,
    substitutions: Vec<Substitution>,
}

impl Resolver<'_> {
    /// The origin of a key when it is set (non-empty) in the recipe.
    fn origin(&self, key: &str) -> Option<Origin> {
        let path = yaml::parse_path(key)?;
        let mut node = self.tree;
        for seg in &path {
            node = match (seg, &node.value) {
                (yaml::Segment::Key(k), yaml::Value::Map(entries)) => {
                    &entries.iter().rev().find(|(e, _)| &e.name == k)?.1
                }
                (yaml::Segment::Index(i), yaml::Value::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        if node.is_null() {
            None
        } else {
            Some(node.origin)
        }
    }

    fn error(&mut self, key: &str, message: impl Into<String>, help: impl Into<String>) {
        let origin = self
            .origin(key)
            .or_else(|| yaml::parse_path(key).map(|p| self.tree.locate_key(&p)));
        self.errors
            .push(Diagnostic::new(key, origin, message).help(help));
    }

    /// Records that `plan_path` comes from recipe `key` when set there, else from the default.
    fn from(&mut self, plan_path: &str, key: &str) {
        let source = match self.origin(key) {
            Some(origin) => Source::Recipe {
                key: key.to_string(),
                origin,
            },
            None => Source::Default,
        };
        self.explanation
            .entries
            .push((plan_path.to_string(), source));
    }

    fn derived(&mut self, plan_path: &str, how: impl Into<String>) {
        self.explanation
            .entries
            .push((plan_path.to_string(), Source::Derived(how.into())));
    }

    fn substitute(&mut self, key: &str, asked: impl Into<String>, runs: impl Into<String>) {
        self.substitutions.push(Substitution {
            key: key.to_string(),
            asked: asked.into(),
            runs: runs.into(),
        });
    }

    /// Checks a numeric range; `what` completes "must be ...".
    fn check<T: PartialOrd + Copy + std::fmt::Display>(
        &mut self,
        key: &str,
        value: Option<T>,
        ok: impl Fn(T) -> bool,
        what: &str,
    ) {
        if let Some(v) = value
            && !ok(v)
        {
            self.error(
                key,
                format!("`{key}` must be {what}, got {v}"),
                format!("set `{key}` to a value that is {what}"),
            );
        }
    }

    /// A path that must exist on this machine.
    fn local_path_exists(&mut self, key: &str, path: &str, what: &str) {
        if !Path::new(path).exists() {
            self.error(
                key,
                format!("{what} `{path}` does not exist"),
                format!(
                    "check the path (relative paths are resolved from the current directory, {})",
                    std::env::current_dir()
                        .map(|d| d.display().to_string())
                        .unwrap_or_else(|_| "unknown".into())
                ),
            );
        }
    }

    /// A model or dataset location: a local path must exist; a hub id (`org/name`) is looked up
    /// later in the local Hugging Face cache.
    fn model_or_dataset_location(&mut self, key: &str, value: &str, what: &str) {
        if Path::new(value).exists() || looks_like_hub_id(value) || is_glob(value) {
            return;
        }
        self.local_path_exists(key, value, what);
    }
}

fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    let ok_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match parts.as_slice() {
        [name] => ok_part(name) && !name.contains('.'),
        [org, name] => ok_part(org) && ok_part(name) && !s.ends_with(".gguf"),
        _ => false,
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

pub fn resolve(raw: &RawRecipe, tree: &Node) -> Resolved {
    let mut r = Resolver {
        tree,
        errors: Vec::new(),
        explanation: Explanation::default(),
        substitutions: Vec::new(),
    };
    let model = resolve_model(&mut r, raw);
    let adapter = resolve_adapter(&mut r, raw);
    let data = resolve_data(&mut r, raw);
    let has_eval = data
        .as_ref()
        .is_some_and(|d| d.val_set != ValSet::None || !d.test_datasets.is_empty());
    let train = resolve_train(&mut r, raw, has_eval);
    let plan = match (model, adapter, data, train) {
        (Some(model), Some(adapter), Some(data), Some(train)) if r.errors.is_empty() => {
            Some(Plan {
                model,
                adapter,
                data,
                train,
                substitutions: r.substitutions.clone(),
            })
        }
        _ => None,
    };
    Resolved {
        plan,
        errors: r.errors,
        explanation: r.explanation,
    }
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
                    .filter(|m| !LLAMA_LINEAR.contains(&m.as_str()))
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
            if kind.is_some() {
                r.error(
                    "lora_target_modules",
                    "the adapter has no target modules",
                    "set `lora_target_linear: true`, or list modules, e.g. `lora_target_modules: [q_proj, v_proj]`",
                );
            }
            None
        }
    };

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
        modules_to_save: raw.lora_modules_to_save.clone().unwrap_or_default(),
        use_dora,
        use_rslora,
        init: init?,
        loraplus_lr_ratio: raw.loraplus_lr_ratio,
        loraplus_lr_embedding: raw.loraplus_lr_embedding.unwrap_or(1e-6),
    })
}

fn resolve_data(r: &mut Resolver, raw: &RawRecipe) -> Option<DataPlan> {
    r.check("sequence_len", raw.sequence_len, |v| v >= 2, "at least 2");
    r.check(
        "dataset_processes",
        raw.dataset_processes,
        |v| v >= 1,
        "at least 1",
    );
    let val_set = match raw.val_set_size {
        None => ValSet::None,
        Some(v) if v == 0.0 => ValSet::None,
        Some(v) if v > 0.0 && v < 1.0 => ValSet::Fraction(v),
        Some(v) if v >= 1.0 && v.fract() == 0.0 => ValSet::Rows(v as u64),
        Some(v) => {
            r.error(
                "val_set_size",
                format!(
                    "`val_set_size` must be a fraction in [0, 1) or a whole number of rows, got {v}"
                ),
                "e.g. `val_set_size: 0.05` (5%) or `val_set_size: 200` (rows)",
            );
            ValSet::None
        }
    };
    let recipe_template = resolve_template(
        r,
        "chat_template",
        raw.chat_template,
        raw.chat_template_jinja.as_deref(),
        None,
    );
    let train_sets = raw.datasets.clone().unwrap_or_default();
    if train_sets.is_empty() {
        r.error(
            "datasets",
            "missing required key `datasets`",
            "add at least one dataset, e.g.\n  datasets:\n    - path: data/train.jsonl\n      type: chat_template",
        );
    }
    let test_sets = raw.test_datasets.clone().unwrap_or_default();
    if !test_sets.is_empty() && val_set != ValSet::None {
        r.error(
            "val_set_size",
            "`val_set_size` and `test_datasets` both define the evaluation set",
            "remove `val_set_size` (or set it to 0) when using `test_datasets`",
        );
    }
    let datasets: Vec<Option<DatasetPlan>> = train_sets
        .iter()
        .enumerate()
        .map(|(i, d)| resolve_dataset(r, "datasets", i, d, &recipe_template))
        .collect();
    let test_datasets: Vec<Option<DatasetPlan>> = test_sets
        .iter()
        .enumerate()
        .map(|(i, d)| resolve_dataset(r, "test_datasets", i, d, &recipe_template))
        .collect();
    let sample_packing = raw.sample_packing.unwrap_or(false);
    for (plan, key) in [
        ("data.datasets", "datasets"),
        ("data.test_datasets", "test_datasets"),
        ("data.prepared_path", "dataset_prepared_path"),
        ("data.val_set", "val_set_size"),
        ("data.sequence_len", "sequence_len"),
        ("data.excess_length_strategy", "excess_length_strategy"),
        ("data.sample_packing", "sample_packing"),
        ("data.pad_to_sequence_len", "pad_to_sequence_len"),
        ("data.train_on_inputs", "train_on_inputs"),
        ("data.chat_template", "chat_template"),
        ("data.default_system_message", "default_system_message"),
        ("data.shuffle_merged_datasets", "shuffle_merged_datasets"),
        ("data.processes", "dataset_processes"),
        ("data.seed", "seed"),
    ] {
        r.from(plan, key);
    }
    if raw.chat_template.is_none() && raw.chat_template_jinja.is_some() {
        r.from("data.chat_template", "chat_template_jinja");
    }
    if raw.eval_sample_packing.is_some() {
        r.from("data.eval_sample_packing", "eval_sample_packing");
    } else {
        r.derived("data.eval_sample_packing", "same as sample_packing");
    }
    Some(DataPlan {
        datasets: datasets.into_iter().collect::<Option<Vec<_>>>()?,
        test_datasets: test_datasets.into_iter().collect::<Option<Vec<_>>>()?,
        prepared_path: PathBuf::from(
            raw.dataset_prepared_path
                .clone()
                .unwrap_or_else(|| "last_run_prepared".into()),
        ),
        val_set,
        sequence_len: raw.sequence_len.unwrap_or(512) as usize,
        excess_length_strategy: match raw.excess_length_strategy {
            None | Some(ExcessLengthName::Drop) => ExcessLength::Drop,
            Some(ExcessLengthName::Truncate) => ExcessLength::Truncate,
            Some(ExcessLengthName::Raise) => ExcessLength::Raise,
        },
        sample_packing,
        eval_sample_packing: raw.eval_sample_packing.unwrap_or(sample_packing),
        pad_to_sequence_len: raw.pad_to_sequence_len.unwrap_or(false),
        train_on_inputs: raw.train_on_inputs.unwrap_or(false),
        chat_template: recipe_template.unwrap_or(ChatTemplate::TokenizerDefault),
        default_system_message: raw.default_system_message.clone(),
        shuffle_merged_datasets: raw.shuffle_merged_datasets.unwrap_or(true),
        processes: raw.dataset_processes.map(|p| p as usize),
        seed: raw.seed.unwrap_or(42),
    })
}

/// Resolves `chat_template` + `chat_template_jinja` at one level; None = not given here.
fn resolve_template(
    r: &mut Resolver,
    key: &str,
    name: Option<ChatTemplateName>,
    jinja: Option<&str>,
    prefix: Option<&str>,
) -> Option<ChatTemplate> {
    let k = |s: &str| match prefix {
        Some(p) => format!("{p}.{s}"),
        None => s.to_string(),
    };
    let _ = key;
    match (name, jinja) {
        (None, None) => None,
        (None, Some(j)) | (Some(ChatTemplateName::Jinja), Some(j)) => {
            Some(ChatTemplate::Jinja(j.to_string()))
        }
        (Some(ChatTemplateName::Jinja), None) => {
            r.error(
                &k("chat_template"),
                "`chat_template: jinja` needs `chat_template_jinja`",
                "add `chat_template_jinja:` with the template text",
            );
            None
        }
        (Some(n), Some(_)) => {
            r.error(
                &k("chat_template_jinja"),
                format!(
                    "`chat_template_jinja` is given but `chat_template` is `{}`",
                    n.as_str()
                ),
                "set `chat_template: jinja` to use the inline template, or remove `chat_template_jinja`",
            );
            None
        }
        (Some(n), None) => Some(match n {
            ChatTemplateName::TokenizerDefault => ChatTemplate::TokenizerDefault,
            ChatTemplateName::TokenizerDefaultFallbackChatml => {
                ChatTemplate::TokenizerDefaultFallbackChatml
            }
            ChatTemplateName::Jinja => unreachable_jinja(),
            ChatTemplateName::Chatml => ChatTemplate::Named(NamedTemplate::Chatml),
            ChatTemplateName::Llama3 => ChatTemplate::Named(NamedTemplate::Llama3),
            ChatTemplateName::MistralV1 => ChatTemplate::Named(NamedTemplate::MistralV1),
            ChatTemplateName::MistralV2v3 => ChatTemplate::Named(NamedTemplate::MistralV2v3),
            ChatTemplateName::Qwen25 => ChatTemplate::Named(NamedTemplate::Qwen25),
            ChatTemplateName::Qwen3 => ChatTemplate::Named(NamedTemplate::Qwen3),
            ChatTemplateName::Gemma => ChatTemplate::Named(NamedTemplate::Gemma),
            ChatTemplateName::Phi3 => ChatTemplate::Named(NamedTemplate::Phi3),
        }),
    }
}

/// `chat_template: jinja` is handled by the match arms above; this keeps the match total.
fn unreachable_jinja() -> ChatTemplate {
    ChatTemplate::TokenizerDefault
}

fn resolve_dataset(
    r: &mut Resolver,
    list: &str,
    i: usize,
    d: &RawDataset,
    recipe_template: &Option<ChatTemplate>,
) -> Option<DatasetPlan> {
    let at = format!("{list}[{i}]");
    let key = |s: &str| format!("{at}.{s}");
    let Some(path) = d.path.clone() else {
        r.error(
            &key("path"),
            format!("dataset {list}[{i}] has no `path`"),
            "add `path:` with a local file, folder or glob, or a hub dataset id",
        );
        return None;
    };
    r.model_or_dataset_location(&key("path"), &path, "dataset");

    let custom_on_entry = [
        ("field_system", &d.field_system),
        ("field_instruction", &d.field_instruction),
        ("field_input", &d.field_input),
        ("field_output", &d.field_output),
        ("format", &d.format),
        ("no_input_format", &d.no_input_format),
        ("system_format", &d.system_format),
        ("system_prompt", &d.system_prompt),
    ];
    let custom_given: Vec<&str> = custom_on_entry
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| *k)
        .collect();
    let chat_fields = [
        ("field_messages", d.field_messages.is_some()),
        (
            "message_property_mappings",
            d.message_property_mappings.is_some(),
        ),
        ("message_field_role", d.message_field_role.is_some()),
        ("message_field_content", d.message_field_content.is_some()),
        ("roles", d.roles.is_some()),
        ("roles_to_train", d.roles_to_train.is_some()),
        ("train_on_eos", d.train_on_eos.is_some()),
        ("chat_template", d.chat_template.is_some()),
        ("chat_template_jinja", d.chat_template_jinja.is_some()),
        ("drop_system_message", d.drop_system_message.is_some()),
    ];

    let misplaced = |r: &mut Resolver, fields: &[&str], kind: &str| {
        for f in fields {
            r.error(
                &key(f),
                format!("`{f}` does not apply to `type: {kind}`"),
                "remove it, or change the dataset's `type`",
            );
        }
    };
    let chat_given: Vec<&str> = chat_fields
        .iter()
        .filter(|(_, g)| *g)
        .map(|(k, _)| *k)
        .collect();

    let type_name = match &d.kind {
        Some(DatasetType::Named(n)) => Some(n.as_str()),
        _ => None,
    };
    let format = match &d.kind {
        Some(DatasetType::Custom(c)) => {
            if !custom_given.is_empty() {
                r.error(
                    &key(custom_given[0]),
                    "custom format fields are given both in `type:` and on the dataset",
                    "give them in one place (Axolotl's form is the `type:` mapping)",
                );
            }
            misplaced(r, &chat_given, "custom");
            if d.field.is_some() {
                misplaced(r, &["field"], "custom");
            }
            Some(DatasetFormat::CustomAlpaca(custom_alpaca(c.clone())))
        }
        None if !custom_given.is_empty() => {
            misplaced(r, &chat_given, "custom");
            Some(DatasetFormat::CustomAlpaca(custom_alpaca(
                RawCustomFormat {
                    field_system: d.field_system.clone(),
                    field_instruction: d.field_instruction.clone(),
                    field_input: d.field_input.clone(),
                    field_output: d.field_output.clone(),
                    format: d.format.clone(),
                    no_input_format: d.no_input_format.clone(),
                    system_format: d.system_format.clone(),
                    system_prompt: d.system_prompt.clone(),
                },
            )))
        }
        None => {
            misplaced(r, &chat_given, "pre-tokenized (no type)");
            if d.field.is_some() {
                misplaced(r, &["field"], "pre-tokenized (no type)");
            }
            r.derived(
                &format!("data.{list}[{i}].format"),
                "no `type`: rows hold input_ids",
            );
            Some(DatasetFormat::Pretokenized)
        }
        Some(DatasetType::Named(_)) => {
            let name = type_name.unwrap_or_default();
            if name != "chat_template" {
                misplaced(r, &chat_given, name);
            }
            if name != "completion" && d.field.is_some() {
                misplaced(r, &["field"], name);
            }
            if !custom_given.is_empty() && !name.starts_with("alpaca") {
                misplaced(r, &custom_given, name);
            }
            match name {
                "alpaca"
                | "alpaca_chat"
                | "alpaca_chat.load_qa"
                | "alpaca_chat.load_concise"
                | "alpaca_w_system.load_open_orca"
                    if !custom_given.is_empty() =>
                {
                    r.error(
                        &key(custom_given[0]),
                        format!("custom format fields need a custom format, not `type: {name}`"),
                        "remove `type:` from this dataset, or move the fields into a `type:` mapping",
                    );
                    None
                }
                "alpaca" => Some(DatasetFormat::Alpaca(AlpacaVariant::Alpaca)),
                "alpaca_chat" => Some(DatasetFormat::Alpaca(AlpacaVariant::AlpacaChat)),
                "alpaca_chat.load_qa" => Some(DatasetFormat::Alpaca(AlpacaVariant::AlpacaChatQa)),
                "alpaca_chat.load_concise" => {
                    Some(DatasetFormat::Alpaca(AlpacaVariant::AlpacaChatConcise))
                }
                "alpaca_w_system.load_open_orca" => Some(DatasetFormat::Alpaca(
                    AlpacaVariant::AlpacaWithSystemOpenOrca,
                )),
                "completion" => Some(DatasetFormat::Completion {
                    field: d.field.clone().unwrap_or_else(|| "text".into()),
                }),
                "input_output" => Some(DatasetFormat::InputOutput),
                "chat_template" => {
                    chat_format(r, &at, d, recipe_template).map(DatasetFormat::ChatTemplate)
                }
                other => {
                    if let Some(why) = keys::refused_dataset_type(other) {
                        r.error(
                            &key("type"),
                            format!("dataset type `{other}` is not supported"),
                            why,
                        );
                    } else {
                        let help =
                            match keys::did_you_mean(other, keys::DATASET_TYPES.iter().copied()) {
                                Some(s) => format!(
                                    "did you mean `{s}`? valid types: {}",
                                    keys::DATASET_TYPES.join(", ")
                                ),
                                None => format!("valid types: {}", keys::DATASET_TYPES.join(", ")),
                            };
                        r.error(
                            &key("type"),
                            format!("unknown dataset type `{other}`"),
                            help,
                        );
                    }
                    None
                }
            }
        }
    };
    Some(DatasetPlan {
        path,
        split: d.split.clone().unwrap_or_else(|| "train".into()),
        data_files: match &d.data_files {
            None => Vec::new(),
            Some(StringOrList::One(s)) => vec![s.clone()],
            Some(StringOrList::Many(v)) => v.clone(),
        },
        ds_type: d.ds_type.map(|t| match t {
            FileFormatName::Json => FileFormat::Json,
            FileFormatName::Jsonl => FileFormat::Jsonl,
            FileFormatName::Parquet => FileFormat::Parquet,
            FileFormatName::Arrow => FileFormat::Arrow,
            FileFormatName::Csv => FileFormat::Csv,
        }),
        name: d.name.clone(),
        revision: d.revision.clone(),
        format: format?,
    })
}

fn custom_alpaca(c: RawCustomFormat) -> CustomAlpaca {
    // Axolotl's defaults for a user-defined prompt format.
    CustomAlpaca {
        field_system: c.field_system.unwrap_or_else(|| "system".into()),
        field_instruction: c.field_instruction.unwrap_or_else(|| "instruction".into()),
        field_input: c.field_input.unwrap_or_else(|| "input".into()),
        field_output: c.field_output.unwrap_or_else(|| "output".into()),
        format: c.format.unwrap_or_else(|| "{instruction} {input} ".into()),
        no_input_format: c.no_input_format.unwrap_or_else(|| "{instruction} ".into()),
        system_format: c.system_format.unwrap_or_else(|| "{system}".into()),
        system_prompt: c.system_prompt.unwrap_or_default(),
    }
}

fn chat_format(
    r: &mut Resolver,
    at: &str,
    d: &RawDataset,
    recipe_template: &Option<ChatTemplate>,
) -> Option<ChatFormat> {
    let key = |s: &str| format!("{at}.{s}");
    let template = resolve_template(
        r,
        "chat_template",
        d.chat_template,
        d.chat_template_jinja.as_deref(),
        Some(at),
    )
    .or_else(|| recipe_template.clone())
    .unwrap_or(ChatTemplate::TokenizerDefault);

    let mappings = d.message_property_mappings.clone().unwrap_or_default();
    for k in mappings.keys() {
        if k != "role" && k != "content" {
            r.error(
                &key(&format!("message_property_mappings.{k}")),
                format!("message property `{k}` cannot be mapped yet; only `role` and `content`"),
                "remove it",
            );
        }
    }
    let pick = |r: &mut Resolver, name: &str, legacy: &Option<String>, legacy_key: &str| match (
        mappings.get(name),
        legacy,
    ) {
        (Some(a), Some(b)) if a != b => {
            r.error(
                &key(legacy_key),
                format!("`{legacy_key}: {b}` contradicts `message_property_mappings.{name}: {a}`"),
                format!("keep only `message_property_mappings.{name}`"),
            );
            a.clone()
        }
        (Some(a), _) => a.clone(),
        (None, Some(b)) => b.clone(),
        (None, None) => name.to_string(),
    };
    let role_key = pick(r, "role", &d.message_field_role, "message_field_role");
    let content_key = pick(
        r,
        "content",
        &d.message_field_content,
        "message_field_content",
    );
    let roles: Vec<RoleMapping> = match &d.roles {
        Some(map) => map
            .iter()
            .map(|(role, aliases)| RoleMapping {
                role: role.clone(),
                aliases: aliases.clone(),
            })
            .collect(),
        // Axolotl's default mapping: ShareGPT's human/gpt work without a `roles:` key.
        None => [
            ("user", &["human", "user"][..]),
            ("assistant", &["gpt", "assistant"][..]),
            ("system", &["system"][..]),
            ("tool", &["tool"][..]),
        ]
        .iter()
        .map(|(role, aliases)| RoleMapping {
            role: role.to_string(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        })
        .collect(),
    };
    let roles_to_train = d
        .roles_to_train
        .clone()
        .unwrap_or_else(|| vec!["assistant".into()]);
    let known_roles: Vec<&str> = roles
        .iter()
        .map(|m: &RoleMapping| m.role.as_str())
        .collect();
    for (j, role) in roles_to_train.iter().enumerate() {
        if !known_roles.contains(&role.as_str()) {
            r.error(
                &key(&format!("roles_to_train[{j}]")),
                format!("`{role}` is not a role of this dataset"),
                format!("roles: {}", known_roles.join(", ")),
            );
        }
    }
    Some(ChatFormat {
        template,
        field_messages: d
            .field_messages
            .clone()
            .unwrap_or_else(|| "messages".into()),
        role_key,
        content_key,
        roles,
        roles_to_train,
        train_on_eos: match d.train_on_eos {
            None | Some(TrainOnEosName::Turn) => TrainOnEos::Turn,
            Some(TrainOnEosName::All) => TrainOnEos::All,
            Some(TrainOnEosName::Last) => TrainOnEos::Last,
            Some(TrainOnEosName::None) => TrainOnEos::None,
        },
        drop_system_message: d.drop_system_message.unwrap_or(false),
    })
}

fn resolve_train(r: &mut Resolver, raw: &RawRecipe, has_eval: bool) -> Option<TrainPlan> {
    let positive = |v: u64| v >= 1;
    for (key, value) in [
        ("micro_batch_size", raw.micro_batch_size),
        ("eval_batch_size", raw.eval_batch_size),
        (
            "gradient_accumulation_steps",
            raw.gradient_accumulation_steps,
        ),
        ("max_steps", raw.max_steps),
        ("logging_steps", raw.logging_steps),
        ("eval_steps", raw.eval_steps),
        ("evals_per_epoch", raw.evals_per_epoch),
        ("save_steps", raw.save_steps),
        ("saves_per_epoch", raw.saves_per_epoch),
        ("save_total_limit", raw.save_total_limit),
        ("early_stopping_patience", raw.early_stopping_patience),
        ("loss_watchdog_patience", raw.loss_watchdog_patience),
    ] {
        r.check(key, value, positive, "at least 1");
    }
    r.check("num_epochs", raw.num_epochs, |v| v > 0.0, "greater than 0");
    r.check(
        "learning_rate",
        raw.learning_rate,
        |v| v > 0.0,
        "greater than 0",
    );
    r.check(
        "warmup_ratio",
        raw.warmup_ratio,
        |v| (0.0..1.0).contains(&v),
        "in [0, 1)",
    );
    r.check(
        "cosine_min_lr_ratio",
        raw.cosine_min_lr_ratio,
        |v| (0.0..=1.0).contains(&v),
        "in [0, 1]",
    );
    r.check("weight_decay", raw.weight_decay, |v| v >= 0.0, "at least 0");
    r.check(
        "adam_beta1",
        raw.adam_beta1,
        |v| (0.0..1.0).contains(&v),
        "in [0, 1)",
    );
    r.check(
        "adam_beta2",
        raw.adam_beta2,
        |v| (0.0..1.0).contains(&v),
        "in [0, 1)",
    );
    r.check(
        "adam_epsilon",
        raw.adam_epsilon,
        |v| v > 0.0,
        "greater than 0",
    );
    r.check(
        "max_grad_norm",
        raw.max_grad_norm,
        |v| v >= 0.0,
        "at least 0",
    );
    r.check(
        "loss_watchdog_threshold",
        raw.loss_watchdog_threshold,
        |v| v > 0.0,
        "greater than 0",
    );

    if raw.num_epochs.is_none() && raw.max_steps.is_none() {
        r.error(
            "num_epochs",
            "the recipe does not say how long to train",
            "set `num_epochs` (e.g. 1) or `max_steps`",
        );
    }
    let learning_rate = match raw.learning_rate {
        Some(lr) => lr,
        None => {
            r.error(
                "learning_rate",
                "missing required key `learning_rate`",
                "add e.g. `learning_rate: 0.0002` (a common LoRA rate)",
            );
            0.0
        }
    };
    if raw.warmup_steps.is_some() && raw.warmup_ratio.is_some() {
        r.error(
            "warmup_ratio",
            "`warmup_steps` and `warmup_ratio` are exclusive",
            "keep one of them",
        );
    }
    let kind = match raw.lr_scheduler {
        None | Some(SchedulerName::Cosine) => SchedulerKind::Cosine,
        Some(SchedulerName::Linear) => SchedulerKind::Linear,
        Some(SchedulerName::Constant) => SchedulerKind::Constant,
        Some(SchedulerName::ConstantWithWarmup) => SchedulerKind::ConstantWithWarmup,
    };
    let warmup = match (raw.warmup_steps, raw.warmup_ratio) {
        (Some(s), _) => Warmup::Steps(s),
        (None, Some(f)) => Warmup::Ratio(f),
        (None, None) => Warmup::Steps(0),
    };
    if kind == SchedulerKind::Constant && warmup != Warmup::Steps(0) {
        let key = if raw.warmup_steps.is_some() {
            "warmup_steps"
        } else {
            "warmup_ratio"
        };
        r.error(
            key,
            "`lr_scheduler: constant` has no warmup",
            "use `lr_scheduler: constant_with_warmup`, or remove the warmup",
        );
    }
    if raw.cosine_min_lr_ratio.is_some() && kind != SchedulerKind::Cosine {
        r.error(
            "cosine_min_lr_ratio",
            "`cosine_min_lr_ratio` applies only to `lr_scheduler: cosine`",
            "remove it or use the cosine schedule",
        );
    }

    let optimizer = raw.optimizer.unwrap_or(OptimizerName::AdamwTorch);
    match optimizer {
        OptimizerName::AdamwTorch | OptimizerName::AdamwTorchFused => {}
        OptimizerName::AdamwHf => r.substitute(
            "optimizer",
            "adamw_hf",
            "AdamW (torch.optim.AdamW's update, which transformers' removed AdamW class matched)",
        ),
        other => r.substitute(
            "optimizer",
            other.as_str(),
            "AdamW with f32 state: only adapter parameters have optimizer state, so 8-bit or paged state would save little memory",
        ),
    }

    let precision = match (raw.bf16, raw.fp16) {
        (Some(BoolOrAuto::Bool(true)), Some(true)) | (Some(BoolOrAuto::Auto(_)), Some(true)) => {
            r.error("fp16", "`bf16` and `fp16` are both enabled", "choose one");
            Precision::F32
        }
        (Some(BoolOrAuto::Bool(true)), _) => Precision::Bf16,
        (Some(BoolOrAuto::Auto(_)), _) => Precision::Auto,
        (_, Some(true)) => Precision::F16,
        _ => Precision::F32,
    };

    let gradient_checkpointing = match &raw.gradient_checkpointing {
        None => false,
        Some(BoolOrString::Bool(b)) => *b,
        Some(BoolOrString::Name(n)) if n == "unsloth" || n == "offload" => {
            r.substitute(
                "gradient_checkpointing",
                n.clone(),
                "recompute per decoder layer (activations are not offloaded to host memory)",
            );
            true
        }
        Some(BoolOrString::Name(n)) => {
            r.error(
                "gradient_checkpointing",
                format!("unknown gradient checkpointing mode `{n}`"),
                "use true, false, unsloth or offload",
            );
            false
        }
    };
    if let Some(kwargs) = &raw.gradient_checkpointing_kwargs {
        for k in kwargs.keys() {
            if k == "use_reentrant" {
                r.substitute(
                    "gradient_checkpointing_kwargs.use_reentrant",
                    kwargs[k].to_string(),
                    "no effect: runner's recompute has a single (non-reentrant) form",
                );
            } else {
                r.error(
                    &format!("gradient_checkpointing_kwargs.{k}"),
                    format!("gradient checkpointing option `{k}` is not supported"),
                    "only `use_reentrant` is accepted",
                );
            }
        }
    }
    if raw.flash_attention == Some(true) {
        r.substitute(
            "flash_attention",
            "true",
            "runner's own memory-efficient attention (the same result, computed without the full attention matrix on GPU)",
        );
    }
    if raw.sdp_attention == Some(true) {
        r.substitute(
            "sdp_attention",
            "true",
            "runner's own attention (the same result)",
        );
    }
    if let Some(a) = raw.attn_implementation
        && a != AttnName::Eager
    {
        r.substitute(
            "attn_implementation",
            a.as_str(),
            "runner's own attention (the same result)",
        );
    }
    if raw.strict == Some(false) {
        r.substitute(
            "strict",
            "false",
            "strict validation: runner always rejects unknown and unsupported keys",
        );
    }

    if raw.eval_steps.is_some() && raw.evals_per_epoch.is_some() {
        r.error(
            "evals_per_epoch",
            "`eval_steps` and `evals_per_epoch` are exclusive",
            "keep one of them",
        );
    }
    if raw.save_steps.is_some() && raw.saves_per_epoch.is_some() {
        r.error(
            "saves_per_epoch",
            "`save_steps` and `saves_per_epoch` are exclusive",
            "keep one of them",
        );
    }
    let eval = match (raw.eval_steps, raw.evals_per_epoch) {
        (Some(s), _) => EvalSchedule::Steps(s),
        (None, Some(n)) => EvalSchedule::PerEpoch(n),
        (None, None) if has_eval => EvalSchedule::PerEpoch(1),
        (None, None) => EvalSchedule::Never,
    };
    if !has_eval {
        for key in ["eval_steps", "evals_per_epoch", "early_stopping_patience"] {
            if r.origin(key).is_some() {
                r.error(
                    key,
                    format!("`{key}` needs an evaluation set"),
                    "set `val_set_size` (e.g. 0.05) or `test_datasets`",
                );
            }
        }
    }
    let save_every = match (raw.save_steps, raw.saves_per_epoch) {
        (Some(s), _) => SaveEvery::Steps(s),
        (None, Some(n)) => SaveEvery::PerEpoch(n),
        (None, None) => SaveEvery::PerEpoch(1),
    };
    if raw.loss_watchdog_patience.is_some() && raw.loss_watchdog_threshold.is_none() {
        r.error(
            "loss_watchdog_patience",
            "`loss_watchdog_patience` without `loss_watchdog_threshold`",
            "add `loss_watchdog_threshold` (e.g. 5.0) or remove the patience",
        );
    }
    let resume = match (
        &raw.resume_from_checkpoint,
        raw.auto_resume_from_checkpoints,
    ) {
        (Some(_), Some(true)) => {
            r.error(
                "auto_resume_from_checkpoints",
                "`resume_from_checkpoint` and `auto_resume_from_checkpoints` are both set",
                "keep one: a fixed checkpoint, or the newest in output_dir",
            );
            Resume::Fresh
        }
        (Some(p), _) => {
            r.local_path_exists("resume_from_checkpoint", p, "checkpoint");
            Resume::From(PathBuf::from(p))
        }
        (None, Some(true)) => Resume::Latest,
        _ => Resume::Fresh,
    };

    let micro_batch_size = raw.micro_batch_size.unwrap_or(1) as usize;
    for (plan, key) in [
        ("train.micro_batch_size", "micro_batch_size"),
        (
            "train.gradient_accumulation_steps",
            "gradient_accumulation_steps",
        ),
        ("train.num_epochs", "num_epochs"),
        ("train.max_steps", "max_steps"),
        ("train.learning_rate", "learning_rate"),
        ("train.optimizer", "optimizer"),
        ("train.optimizer.beta1", "adam_beta1"),
        ("train.optimizer.beta2", "adam_beta2"),
        ("train.optimizer.epsilon", "adam_epsilon"),
        ("train.optimizer.weight_decay", "weight_decay"),
        ("train.scheduler.kind", "lr_scheduler"),
        (
            "train.scheduler.warmup",
            if raw.warmup_ratio.is_some() {
                "warmup_ratio"
            } else {
                "warmup_steps"
            },
        ),
        ("train.scheduler.cosine_min_lr_ratio", "cosine_min_lr_ratio"),
        ("train.max_grad_norm", "max_grad_norm"),
        (
            "train.precision",
            if raw.fp16 == Some(true) {
                "fp16"
            } else {
                "bf16"
            },
        ),
        ("train.tf32", "tf32"),
        ("train.gradient_checkpointing", "gradient_checkpointing"),
        ("train.logging_steps", "logging_steps"),
        ("train.save.total_limit", "save_total_limit"),
        ("train.save.save_first_step", "save_first_step"),
        ("train.output_dir", "output_dir"),
        ("train.seed", "seed"),
        ("train.early_stopping_patience", "early_stopping_patience"),
        ("train.loss_watchdog", "loss_watchdog_threshold"),
        ("train.loss_watchdog.patience", "loss_watchdog_patience"),
    ] {
        r.from(plan, key);
    }
    match raw.eval_batch_size {
        Some(_) => r.from("train.eval_batch_size", "eval_batch_size"),
        None => r.derived("train.eval_batch_size", "same as micro_batch_size"),
    }
    match (raw.eval_steps, raw.evals_per_epoch) {
        (Some(_), _) => r.from("train.eval", "eval_steps"),
        (None, Some(_)) => r.from("train.eval", "evals_per_epoch"),
        (None, None) if has_eval => {
            r.derived("train.eval", "once per epoch: an evaluation set exists")
        }
        (None, None) => r.derived("train.eval", "no evaluation set"),
    }
    match (raw.save_steps, raw.saves_per_epoch) {
        (Some(_), _) => r.from("train.save.every", "save_steps"),
        (None, Some(_)) => r.from("train.save.every", "saves_per_epoch"),
        (None, None) => r.from("train.save.every", "saves_per_epoch"),
    }
    r.from(
        "train.resume",
        if raw.resume_from_checkpoint.is_some() {
            "resume_from_checkpoint"
        } else {
            "auto_resume_from_checkpoints"
        },
    );

    Some(TrainPlan {
        micro_batch_size,
        eval_batch_size: raw.eval_batch_size.map_or(micro_batch_size, |b| b as usize),
        gradient_accumulation_steps: raw.gradient_accumulation_steps.unwrap_or(1) as usize,
        num_epochs: raw.num_epochs.unwrap_or(1.0),
        max_steps: raw.max_steps,
        learning_rate,
        optimizer: Optimizer {
            beta1: raw.adam_beta1.unwrap_or(0.9),
            beta2: raw.adam_beta2.unwrap_or(0.999),
            epsilon: raw.adam_epsilon.unwrap_or(1e-8),
            weight_decay: raw.weight_decay.unwrap_or(0.0),
        },
        scheduler: Scheduler {
            kind,
            warmup,
            cosine_min_lr_ratio: raw.cosine_min_lr_ratio,
        },
        max_grad_norm: match raw.max_grad_norm {
            Some(v) if v == 0.0 => None,
            Some(v) => Some(v),
            None => Some(1.0),
        },
        precision,
        tf32: raw.tf32.unwrap_or(false),
        gradient_checkpointing,
        logging_steps: raw.logging_steps.unwrap_or(1),
        eval,
        save: SaveSchedule {
            every: save_every,
            total_limit: raw.save_total_limit,
            save_first_step: raw.save_first_step.unwrap_or(false),
        },
        output_dir: PathBuf::from(
            raw.output_dir
                .clone()
                .unwrap_or_else(|| "./outputs/out".into()),
        ),
        resume,
        seed: raw.seed.unwrap_or(42),
        early_stopping_patience: raw.early_stopping_patience,
        loss_watchdog: raw.loss_watchdog_threshold.map(|threshold| LossWatchdog {
            threshold,
            patience: raw.loss_watchdog_patience.unwrap_or(3),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_local_paths_are_told_apart() {
        assert!(looks_like_hub_id("mistralai/Mistral-7B-v0.1"));
        assert!(looks_like_hub_id("tatsu-lab/alpaca"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("models/x/y"));
        assert!(!looks_like_hub_id("data.jsonl"));
        assert!(!looks_like_hub_id("dir/model.gguf"));
    }
}
