//! Token ids and labels equal transformers' `apply_chat_template` and Axolotl's masking rule, on
//! real tokenizers and templates. Fixtures: `tools/data/make_fixtures.py`.

use runner_data::chat::ChatEncoder;
use runner_data::template::{ChatTemplate, Message, named_template_source};
use runner_data::testing::{real_tokenizer, smollm2_gguf};
use runner_data::tokenizer::{TextTokenizer, TokenizerOverrides};
use runner_data::{Location, sample::IGNORE};
use runner_recipe::plan::{ChatFormat, ChatTemplate as PlanTemplate, NamedTemplate, TrainOnEos};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("chat_{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn load_tokenizer(which: &str) -> TextTokenizer {
    let path = match which {
        "smollm2" => smollm2_gguf(),
        "llama-3.2" => real_tokenizer("llama-3.2"),
        "qwen3" => real_tokenizer("qwen3"),
        "mistral-spm" => {
            Ok(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/mistral-v1-spm.gguf"))
        }
        other => panic!("unknown tokenizer {other}"),
    };
    let path = path.unwrap_or_else(|e| panic!("{e}"));
    TextTokenizer::load(&path, &TokenizerOverrides::default()).unwrap()
}

fn named(n: &str) -> NamedTemplate {
    match n {
        "chatml" => NamedTemplate::Chatml,
        "llama3" => NamedTemplate::Llama3,
        "mistral_v1" => NamedTemplate::MistralV1,
        "mistral_v2v3" => NamedTemplate::MistralV2v3,
        "qwen_25" => NamedTemplate::Qwen25,
        "qwen3" => NamedTemplate::Qwen3,
        "gemma" => NamedTemplate::Gemma,
        "phi_3" => NamedTemplate::Phi3,
        other => panic!("unknown template {other}"),
    }
}

fn check(name: &str) {
    let fx = fixture(name);
    let spec = &fx["template"];
    let tok = load_tokenizer(spec["tokenizer"].as_str().unwrap());
    let source = match spec["kind"].as_str().unwrap() {
        "tokenizer_default" => tok
            .chat_template(None)
            .expect("tokenizer has a template")
            .to_string(),
        _ => named_template_source(named(spec["name"].as_str().unwrap())).to_string(),
    };
    let bos = tok.bos.as_ref().map(|t| t.text.clone()).unwrap_or_default();
    let eos = tok.eos.as_ref().map(|t| t.text.clone()).unwrap_or_default();
    for case in fx["cases"].as_array().unwrap() {
        let cname = case["name"].as_str().unwrap();
        let messages: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        let template = ChatTemplate::new(&source, name, &bos, &eos).unwrap();
        let text = template.render(&messages, false).unwrap();
        assert_eq!(
            text,
            case["text"].as_str().unwrap(),
            "{name}/{cname}: rendered text"
        );
        let want_ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        for (mode, eos_mode, train_on_inputs) in [
            ("turn", TrainOnEos::Turn, false),
            ("all", TrainOnEos::All, false),
            ("last", TrainOnEos::Last, false),
            ("none", TrainOnEos::None, false),
            ("train_on_inputs", TrainOnEos::Turn, true),
        ] {
            let fmt = ChatFormat {
                template: PlanTemplate::TokenizerDefault,
                field_messages: "messages".into(),
                role_key: "role".into(),
                content_key: "content".into(),
                roles: vec![],
                roles_to_train: vec!["assistant".into()],
                train_on_eos: eos_mode,
                drop_system_message: false,
                extras: Default::default(),
            };
            let template = ChatTemplate::new(&source, name, &bos, &eos).unwrap();
            let enc = ChatEncoder::new(template, &tok, &fmt, train_on_inputs, None);
            let s = enc.encode(&messages, &Location::default()).unwrap();
            assert_eq!(s.input_ids, want_ids, "{name}/{cname}: token ids");
            let want: Vec<i32> = serde_json::from_value(case["labels"][mode].clone()).unwrap();
            if s.labels != want {
                let show = |l: &[i32]| -> String {
                    l.iter()
                        .zip(&s.input_ids)
                        .map(|(&l, &id)| {
                            let t = tok.decode_one(id);
                            if l == IGNORE {
                                format!("·{t:?}")
                            } else {
                                format!("[{t:?}]")
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("")
                };
                panic!(
                    "{name}/{cname}/{mode}: labels differ\n got:  {}\n want: {}",
                    show(&s.labels),
                    show(&want)
                );
            }
        }
    }
}

#[test]
fn smollm2_own_template_matches_transformers() {
    check("smollm2_default");
}

#[test]
fn smollm2_chatml_matches_transformers() {
    check("smollm2_chatml");
}

#[test]
fn llama32_llama3_matches_transformers() {
    check("llama32_llama3");
}

#[test]
fn qwen3_own_template_matches_transformers() {
    check("qwen3_default");
}

#[test]
fn qwen3_qwen25_matches_transformers() {
    check("qwen3_qwen25");
}

#[test]
fn named_templates_render_like_jinja2() {
    for n in ["mistral_v1", "mistral_v2v3", "gemma", "phi_3", "qwen3"] {
        check(&format!("smollm2_{n}"));
    }
}

fn check_formats(tokenizer: &str) {
    use runner_data::formats::{PromptLayout, RowEncoder};
    use runner_recipe::plan::AlpacaVariant;
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("fixtures/formats_{tokenizer}.json"));
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let tok = load_tokenizer(tokenizer);
    for (k, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let enc = match case["format"].as_str().unwrap() {
            "alpaca" => RowEncoder::Instruction {
                layout: PromptLayout::alpaca(AlpacaVariant::Alpaca),
            },
            "completion" => RowEncoder::Completion {
                field: "text".into(),
            },
            "input_output" => RowEncoder::InputOutput,
            other => panic!("unknown format {other}"),
        };
        let row = case["row"].as_object().unwrap();
        let s = enc.encode(&tok, false, row, &Location::default()).unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let want_labels: Vec<i32> = serde_json::from_value(case["labels"].clone()).unwrap();
        assert_eq!(
            s.input_ids, want_ids,
            "{tokenizer} case {k} ({}): ids",
            case["format"]
        );
        assert_eq!(
            s.labels, want_labels,
            "{tokenizer} case {k} ({}): labels",
            case["format"]
        );
    }
}

#[test]
fn instruction_formats_match_axolotl_smollm2() {
    check_formats("smollm2");
}

#[test]
fn instruction_formats_match_axolotl_llama32() {
    check_formats("llama-3.2");
}

#[test]
fn sentencepiece_gguf_mistral_matches_transformers() {
    check("mistral_spm_default");
}

#[test]
fn instruction_formats_match_axolotl_sentencepiece() {
    check_formats("mistral-spm");
}

/// Issue 15: rows with tools, tool calls (arguments as JSON strings, null content), the `tool`
/// role, reasoning content, `chat_template_kwargs` and per-message training flags, prepared as
/// Axolotl prepares them and rendered by transformers (`chat_rich_*.json`).
fn mode(m: &str) -> TrainOnEos {
    match m {
        "turn" => TrainOnEos::Turn,
        "all" => TrainOnEos::All,
        "last" => TrainOnEos::Last,
        _ => TrainOnEos::None,
    }
}

fn check_rich(name: &str) {
    use runner_recipe::plan::ChatExtras;
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/chat_rich_{name}.json"));
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let spec = &fx["template"];
    let tok = load_tokenizer(spec["tokenizer"].as_str().unwrap());
    let source = match spec["kind"].as_str().unwrap() {
        "tokenizer_default" => tok.chat_template(None).unwrap().to_string(),
        _ => named_template_source(named(spec["name"].as_str().unwrap())).to_string(),
    };
    let bos = tok.bos.as_ref().map(|t| t.text.clone()).unwrap_or_default();
    let eos = tok.eos.as_ref().map(|t| t.text.clone()).unwrap_or_default();
    let cases = fx["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let cname = case["name"].as_str().unwrap();
        let st = &case["settings"];
        let fmt = ChatFormat {
            template: PlanTemplate::TokenizerDefault,
            field_messages: "messages".into(),
            role_key: "role".into(),
            content_key: "content".into(),
            roles: vec![],
            roles_to_train: serde_json::from_value(st["roles_to_train"].clone()).unwrap(),
            train_on_eos: mode(st["train_on_eos"].as_str().unwrap()),
            drop_system_message: false,
            extras: ChatExtras {
                field_tools: st["field_tools"].as_str().unwrap().into(),
                field_thinking: st["field_thinking"].as_str().unwrap().into(),
                template_thinking_key: st["template_thinking_key"].as_str().unwrap().into(),
                message_field_training: st["message_field_training"].as_str().map(Into::into),
                message_field_training_detail: st["message_field_training_detail"]
                    .as_str()
                    .map(Into::into),
                split_thinking: st["split_thinking"].as_bool().unwrap(),
                template_kwargs: serde_json::from_value(st["chat_template_kwargs"].clone())
                    .unwrap(),
                eot_tokens: serde_json::from_value(st["eot_tokens"].clone()).unwrap(),
                train_on_eot: st["train_on_eot"].as_str().map(mode),
            },
        };
        let template = ChatTemplate::new(&source, name, &bos, &eos).unwrap();
        let enc = ChatEncoder::new(
            template,
            &tok,
            &fmt,
            st["train_on_inputs"].as_bool().unwrap(),
            None,
        );
        let row = case["row"].as_object().unwrap();
        let conv = enc
            .conversation(row, &Location::default())
            .unwrap_or_else(|e| panic!("{name}/{cname}: {e}"));
        let text = enc
            .template
            .render_tracked_rich(&conv.messages, &conv.extras, &conv.vars)
            .unwrap()
            .text;
        assert_eq!(text, case["text"].as_str().unwrap(), "{name}/{cname}: text");
        let s = enc
            .encode_conversation(&conv, &Location::default())
            .unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        assert_eq!(s.input_ids, want_ids, "{name}/{cname}: token ids");
        let want: Vec<i32> = serde_json::from_value(case["labels"].clone()).unwrap();
        let show = |l: &[i32]| -> String {
            l.iter()
                .zip(&s.input_ids)
                .map(|(&l, &id)| {
                    let t = tok.decode_one(id);
                    if l == IGNORE {
                        format!("·{t:?}")
                    } else {
                        format!("[{t:?}]")
                    }
                })
                .collect::<Vec<_>>()
                .join("")
        };
        assert!(
            s.labels == want,
            "{name}/{cname}: labels differ\n got:  {}\n want: {}",
            show(&s.labels),
            show(&want)
        );
    }
}

#[test]
fn issue_15_tools_reasoning_kwargs_and_flags_match_transformers_qwen3() {
    check_rich("qwen3_default");
}

#[test]
fn issue_15_tool_calls_with_null_content_match_transformers_qwen25() {
    check_rich("qwen3_qwen25");
}

#[test]
fn issue_15_eot_tokens_and_train_on_eot_match_axolotl_llama32() {
    check_rich("llama32_llama3");
}
