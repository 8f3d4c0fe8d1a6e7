//! Property: for any conversation, provenance tracking reproduces the plain render exactly, each
//! message's span holds its content (whole, or trimmed where the template trims), and encoding
//! never panics; trained tokens always lie inside assistant contents or are end-of-turn tokens.

use proptest::prelude::*;
use runner_data::Location;
use runner_data::chat::ChatEncoder;
use runner_data::sample::IGNORE;
use runner_data::template::{ChatTemplate, Message, named_template_source};
use runner_data::tokenizer::TextTokenizer;
use runner_recipe::plan::{ChatFormat, ChatTemplate as PlanTemplate, NamedTemplate, TrainOnEos};

fn content() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just(" ".to_string()),
            Just("\n".to_string()),
            Just("\t".to_string()),
            "[a-zA-Z0-9]{1,6}",
            "[àéîõüßçñ]{1,3}",
            "[日本語中文한국어]{1,3}",
            Just("🙂".to_string()),
            Just("👋🏽".to_string()),
            "[.,;:!?()\\[\\]{}'\"-]{1,2}",
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

fn conversation() -> impl Strategy<Value = Vec<Message>> {
    (
        any::<bool>(),
        prop::collection::vec((content(), content()), 1..4),
    )
        .prop_map(|(system, turns)| {
            let mut m = Vec::new();
            if system {
                m.push(Message {
                    role: "system".into(),
                    content: "Be brief.".into(),
                });
            }
            for (u, a) in turns {
                m.push(Message {
                    role: "user".into(),
                    content: u,
                });
                m.push(Message {
                    role: "assistant".into(),
                    content: a,
                });
            }
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn spans_hold_contents_and_masks_stay_inside(conv in conversation(), which in 0usize..5) {
        let name = [NamedTemplate::Chatml, NamedTemplate::Llama3, NamedTemplate::Qwen25, NamedTemplate::Phi3, NamedTemplate::MistralV1][which];
        let src = named_template_source(name);
        let t = ChatTemplate::new(src, "prop", "<s>", "<|im_end|>").unwrap();
        let plain = t.render(&conv, false).unwrap();
        let r = t.render_tracked(&conv).unwrap();
        prop_assert_eq!(&r.text, &plain);
        for (m, span) in conv.iter().zip(&r.spans) {
            if let Some(sp) = span {
                let got = &r.text[sp.clone()];
                prop_assert!(got == m.content || got == m.content.trim(), "span {:?} for content {:?}", got, m.content);
            }
        }
        let tok = TextTokenizer::builtin("prop").unwrap();
        let fmt = ChatFormat {
            template: PlanTemplate::Named(name),
            field_messages: "messages".into(),
            role_key: "role".into(),
            content_key: "content".into(),
            roles: vec![],
            roles_to_train: vec!["assistant".into()],
            train_on_eos: TrainOnEos::Turn,
            drop_system_message: false,
            extras: Default::default(),
        };
        let enc = ChatEncoder::new(t, &tok, &fmt, false, None);
        let s = enc.encode(&conv, &Location::default()).unwrap();
        prop_assert_eq!(s.input_ids.len(), s.labels.len());
        // Every trained byte comes from an assistant content or is an end-of-turn token.
        let offsets = tok.encode_with_offsets(&r.text).unwrap().offsets;
        for (k, &l) in s.labels.iter().enumerate() {
            if l == IGNORE {
                continue;
            }
            prop_assert_eq!(l, s.input_ids[k] as i32);
            let (a, b) = offsets[k];
            let inside = conv.iter().zip(&r.spans).any(|(m, sp)| {
                m.role == "assistant" && sp.as_ref().is_some_and(|sp| a < sp.end && b > sp.start)
            });
            prop_assert!(inside || s.input_ids[k] == 2, "token {} ({:?}) trained outside assistant content", k, &r.text[a..b]);
        }
    }
}
