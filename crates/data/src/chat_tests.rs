//! Tests of the chat encoder: message reading, roles, system messages, end-of-turn training.
use super::*;
use crate::template::named_template_source;
use runner_recipe::plan::{ChatTemplate as PlanTemplate, NamedTemplate, RoleMapping};
use serde_json::json;

fn fmt() -> ChatFormat {
    ChatFormat {
        template: PlanTemplate::Named(NamedTemplate::Chatml),
        field_messages: "messages".into(),
        role_key: "role".into(),
        content_key: "content".into(),
        roles: vec![],
        roles_to_train: vec!["assistant".into()],
        train_on_eos: TrainOnEos::Turn,
        drop_system_message: false,
        extras: Default::default(),
    }
}

fn encoder<'a>(tok: &'a TextTokenizer, f: &ChatFormat, sys: Option<&str>) -> ChatEncoder<'a> {
    let t = ChatTemplate::new(
        named_template_source(NamedTemplate::Chatml),
        "chatml",
        "",
        "<|im_end|>",
    )
    .unwrap();
    ChatEncoder::new(t, tok, f, false, sys.map(Into::into))
}

fn row(v: serde_json::Value) -> Map<String, Json> {
    v.as_object().unwrap().clone()
}

fn roles(ms: &[Message]) -> Vec<&str> {
    ms.iter().map(|m| m.role.as_str()).collect()
}

#[test]
fn system_messages_are_dropped_or_defaulted() {
    let tok = TextTokenizer::builtin("t").unwrap();
    let r = row(
        json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}),
    );
    let mut f = fmt();
    f.drop_system_message = true;
    let ms = encoder(&tok, &f, Some("d"))
        .messages(&r, &Location::default())
        .unwrap();
    assert_eq!(roles(&ms), ["user"]);
    let r2 = row(json!({"messages": [{"role": "user", "content": "u"}]}));
    let ms = encoder(&tok, &fmt(), Some("d"))
        .messages(&r2, &Location::default())
        .unwrap();
    assert_eq!(roles(&ms), ["system", "user"]);
    assert_eq!(ms[0].content, "d");
    let ms = encoder(&tok, &fmt(), Some("d"))
        .messages(&r, &Location::default())
        .unwrap();
    assert_eq!(ms[0].content, "s", "an existing system message wins");
}

#[test]
fn content_parts_are_joined() {
    let tok = TextTokenizer::builtin("t").unwrap();
    let r = row(
        json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
    );
    let ms = encoder(&tok, &fmt(), None)
        .messages(&r, &Location::default())
        .unwrap();
    assert_eq!(ms[0].content, "ab");
    let flagged = row(
        json!({"messages": [{"role": "assistant", "content": [{"type": "text", "text": "a", "train": "no"}]}]}),
    );
    let e = encoder(&tok, &fmt(), None)
        .messages(&flagged, &Location::default())
        .unwrap_err();
    assert!(
        e.to_string().contains("messages[0].content[0].train"),
        "{e}"
    );
    let bad = row(json!({"messages": [{"role": "user", "content": [{"type": "image"}]}]}));
    let e = encoder(&tok, &fmt(), None)
        .messages(&bad, &Location::default())
        .unwrap_err();
    assert!(e.to_string().contains("messages[0].content[0]"), "{e}");
}

#[test]
fn roles_are_remapped() {
    let tok = TextTokenizer::builtin("t").unwrap();
    let r = row(
        json!({"messages": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}, {"role": "bot", "content": "b"}]}),
    );
    // Without `roles`: ShareGPT names map by default; an unknown role is refused by name.
    let e = encoder(&tok, &fmt(), None)
        .messages(&r, &Location::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("messages[2].role") && e.contains("unknown role `bot`"),
        "{e}"
    );
    let mut f = fmt();
    f.roles = vec![
        RoleMapping {
            role: "assistant".into(),
            aliases: vec!["bot".into(), "gpt".into()],
        },
        RoleMapping {
            role: "user".into(),
            aliases: vec!["human".into()],
        },
    ];
    let ms = encoder(&tok, &f, None)
        .messages(&r, &Location::default())
        .unwrap();
    assert_eq!(roles(&ms), ["user", "assistant", "assistant"]);
    // A role the recipe trains is the recipe's choice.
    let mut f = fmt();
    f.roles_to_train.push("bot".into());
    let ms = encoder(&tok, &f, None)
        .messages(&r, &Location::default())
        .unwrap();
    assert_eq!(roles(&ms), ["user", "assistant", "bot"]);
}

#[test]
fn train_on_eos_variants() {
    let tok = TextTokenizer::builtin("t").unwrap();
    let ms = vec![
        Message {
            role: "user".into(),
            content: "q".into(),
        },
        Message {
            role: "assistant".into(),
            content: "a".into(),
        },
        Message {
            role: "user".into(),
            content: "r".into(),
        },
        Message {
            role: "assistant".into(),
            content: "b".into(),
        },
    ];
    let trained = |mode, train_inputs| -> String {
        let mut f = fmt();
        f.train_on_eos = mode;
        let t = ChatTemplate::new(
            named_template_source(NamedTemplate::Chatml),
            "chatml",
            "",
            "<|im_end|>",
        )
        .unwrap();
        let s = ChatEncoder::new(t, &tok, &f, train_inputs, None)
            .encode(&ms, &Location::default())
            .unwrap();
        s.input_ids
            .iter()
            .zip(&s.labels)
            .filter(|(_, l)| **l != IGNORE)
            .map(|(&i, _)| tok.decode_one(i))
            .collect()
    };
    assert_eq!(trained(TrainOnEos::Turn, false), "a<|im_end|>b<|im_end|>");
    assert_eq!(
        trained(TrainOnEos::All, false),
        "<|im_end|>a<|im_end|><|im_end|>b<|im_end|>"
    );
    assert_eq!(trained(TrainOnEos::Last, false), "ab<|im_end|>");
    assert_eq!(trained(TrainOnEos::None, false), "ab");
    assert_eq!(
        trained(TrainOnEos::Turn, true),
        "q<|im_end|>a<|im_end|>r<|im_end|>b<|im_end|>"
    );
}
