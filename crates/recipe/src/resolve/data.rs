//! The data section: datasets and their formats, chat templates, splits, packing.

use super::Resolver;
use crate::keys;
use crate::plan::*;
use crate::raw::*;
use std::path::PathBuf;

pub(super) fn resolve_data(r: &mut Resolver, raw: &RawRecipe) -> Option<DataPlan> {
    r.check("sequence_len", raw.sequence_len, |v| v >= 2, "at least 2");
    r.check(
        "dataset_processes",
        raw.dataset_processes,
        |v| v >= 1,
        "at least 1",
    );
    let val_set = match raw.val_set_size {
        None => ValSet::None,
        Some(0.0) => ValSet::None,
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
        raw.chat_template,
        raw.chat_template_jinja.as_deref(),
        None,
    );
    let train_sets = raw.datasets.clone().unwrap_or_default();
    if train_sets.is_empty() && r.origin("datasets").is_none() {
        r.error(
            "datasets",
            "missing required key `datasets`",
            "add at least one dataset, e.g.\n  datasets:\n    - path: data/train.jsonl\n      type: chat_template",
        );
    } else if train_sets.is_empty() && raw.datasets.is_some() {
        r.error(
            "datasets",
            "`datasets` is an empty list: there is nothing to train on",
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
    // `chat_template_kwargs` is recipe-wide in Axolotl: every chat dataset renders with it.
    let kwargs = raw.chat_template_kwargs.clone().unwrap_or_default();
    for name in kwargs.keys() {
        if RESERVED_TEMPLATE_VARIABLES.contains(&name.as_str()) {
            r.error(
                &format!("chat_template_kwargs.{name}"),
                format!("`{name}` is set by runner for every render (transformers sets it too)"),
                "remove it",
            );
        }
    }
    let mut datasets = datasets;
    let mut test_datasets = test_datasets;
    for d in datasets
        .iter_mut()
        .chain(test_datasets.iter_mut())
        .flatten()
    {
        if let DatasetFormat::ChatTemplate(c) = &mut d.format {
            c.extras.template_kwargs = kwargs.clone();
            c.extras.eot_tokens = raw.eot_tokens.clone();
        }
    }
    let sample_packing = raw.sample_packing.unwrap_or(false);
    for (plan, key) in [
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
    name: Option<ChatTemplateName>,
    jinja: Option<&str>,
    prefix: Option<&str>,
) -> Option<ChatTemplate> {
    let k = |s: &str| match prefix {
        Some(p) => format!("{p}.{s}"),
        None => s.to_string(),
    };
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
            // Handled by the arms above (with or without `chat_template_jinja`).
            ChatTemplateName::Jinja => return None,
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

fn resolve_dataset(
    r: &mut Resolver,
    list: &str,
    i: usize,
    d: &RawDataset,
    recipe_template: &Option<ChatTemplate>,
) -> Option<DatasetPlan> {
    if d.invalid {
        return None; // its errors are already reported
    }
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
        ("field_tools", d.field_tools.is_some()),
        ("field_thinking", d.field_thinking.is_some()),
        ("template_thinking_key", d.template_thinking_key.is_some()),
        ("message_field_training", d.message_field_training.is_some()),
        (
            "message_field_training_detail",
            d.message_field_training_detail.is_some(),
        ),
        ("train_on_eot", d.train_on_eot.is_some()),
        ("split_thinking", d.split_thinking.is_some()),
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
    let pp = format!("data.{list}[{i}]");
    for (plan_field, key_field) in [
        ("path", "path"),
        ("split", "split"),
        ("data_files", "data_files"),
        ("ds_type", "ds_type"),
        ("name", "name"),
        ("revision", "revision"),
    ] {
        r.from(&format!("{pp}.{plan_field}"), &key(key_field));
    }
    if d.kind.is_some() {
        r.from(&format!("{pp}.format"), &key("type"));
    }
    match &format {
        Some(DatasetFormat::ChatTemplate(_)) => {
            let cp = format!("{pp}.format.chat_template");
            let template_key = if r.origin(&key("chat_template")).is_some() {
                key("chat_template")
            } else if r.origin(&key("chat_template_jinja")).is_some() {
                key("chat_template_jinja")
            } else if r.origin("chat_template").is_some() {
                "chat_template".to_string()
            } else {
                "chat_template_jinja".to_string()
            };
            r.from(&format!("{cp}.template"), &template_key);
            let role_key = if r.origin(&key("message_field_role")).is_some() {
                key("message_field_role")
            } else {
                key("message_property_mappings.role")
            };
            let content_key = if r.origin(&key("message_field_content")).is_some() {
                key("message_field_content")
            } else {
                key("message_property_mappings.content")
            };
            r.from(&format!("{cp}.role_key"), &role_key);
            r.from(&format!("{cp}.content_key"), &content_key);
            for f in [
                "field_messages",
                "roles",
                "roles_to_train",
                "train_on_eos",
                "drop_system_message",
            ] {
                r.from(&format!("{cp}.{f}"), &key(f));
            }
            for f in [
                "field_tools",
                "field_thinking",
                "template_thinking_key",
                "message_field_training",
                "message_field_training_detail",
                "train_on_eot",
                "split_thinking",
            ] {
                r.from(&format!("{cp}.extras.{f}"), &key(f));
            }
            r.from(
                &format!("{cp}.extras.template_kwargs"),
                "chat_template_kwargs",
            );
            r.from(&format!("{cp}.extras.eot_tokens"), "eot_tokens");
        }
        Some(DatasetFormat::Completion { .. }) => {
            r.from(&format!("{pp}.format.completion.field"), &key("field"));
        }
        Some(DatasetFormat::CustomAlpaca(_)) => {
            for f in [
                "field_system",
                "field_instruction",
                "field_input",
                "field_output",
                "format",
                "no_input_format",
                "system_format",
                "system_prompt",
            ] {
                let in_type = key(&format!("type.{f}"));
                let k = if r.origin(&in_type).is_some() {
                    in_type
                } else {
                    key(f)
                };
                r.from(&format!("{pp}.format.custom_alpaca.{f}"), &k);
            }
        }
        _ => {}
    }
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

/// Template variables that come from the data or the tokenizer, never from
/// `chat_template_kwargs`.
const RESERVED_TEMPLATE_VARIABLES: [&str; 6] = [
    "messages",
    "tools",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
    "chat_template",
];

fn eos_mode(n: TrainOnEosName) -> TrainOnEos {
    match n {
        TrainOnEosName::Turn => TrainOnEos::Turn,
        TrainOnEosName::All => TrainOnEos::All,
        TrainOnEosName::Last => TrainOnEos::Last,
        TrainOnEosName::None => TrainOnEos::None,
    }
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
        train_on_eos: d.train_on_eos.map_or(TrainOnEos::Turn, eos_mode),
        drop_system_message: d.drop_system_message.unwrap_or(false),
        extras: ChatExtras {
            field_tools: d.field_tools.clone().unwrap_or_else(|| "tools".into()),
            field_thinking: d
                .field_thinking
                .clone()
                .unwrap_or_else(|| "reasoning_content".into()),
            template_thinking_key: d
                .template_thinking_key
                .clone()
                .unwrap_or_else(|| "reasoning_content".into()),
            message_field_training: d.message_field_training.clone(),
            message_field_training_detail: d.message_field_training_detail.clone(),
            split_thinking: d.split_thinking.unwrap_or(false),
            template_kwargs: Default::default(),
            eot_tokens: None,
            train_on_eot: d.train_on_eot.map(eos_mode),
        },
    })
}
