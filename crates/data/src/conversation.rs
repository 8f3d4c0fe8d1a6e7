//! What a chat row carries besides roles and contents (issue 15): the row's tool definitions,
//! tool calls with JSON-string arguments, and the [`Conversation`] handed to the template.

use crate::error::{DataError, Location, Result};
use crate::template::{ChatTemplate, Message, MessageExtra};
use minijinja::value::Value;
use serde_json::{Map, Value as Json};

/// One row's conversation as the template gets it: messages, what each carries besides its
/// content, each one's own training flag (`message_field_training`), and the row's `tools`.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub extras: Vec<MessageExtra>,
    pub train: Vec<Option<bool>>,
    /// Each message's character ranges to train or not (`message_field_training_detail`).
    pub detail: Vec<Option<Vec<TrainDetail>>>,
    pub vars: Vec<(String, Value)>,
}

/// The row's tool definitions (`field_tools`): a list, or a JSON string of one, with each
/// function's `parameters` parsed when given as a JSON string (as Axolotl does). None when
/// absent or empty (transformers then renders without tools).
pub(crate) fn tools(
    row: &Map<String, Json>,
    field: &str,
    template: &ChatTemplate,
    at: &Location,
) -> Result<Option<Json>> {
    let tools = match row.get(field) {
        None | Some(Json::Null) => return Ok(None),
        Some(Json::String(s)) => parse_json(s, at, "the tools")?,
        Some(v) => v.clone(),
    };
    let Json::Array(mut list) = tools else {
        return Err(DataError::WrongType {
            at: at.clone(),
            expected: "a list of tool definitions",
            found: json_kind(&tools).into(),
        });
    };
    if list.is_empty() {
        return Ok(None);
    }
    for tool in list.iter_mut() {
        if let Some(Json::String(p)) = tool.pointer("/function/parameters") {
            let parsed = parse_json(p, at, "a tool's `parameters`")?;
            if let Some(slot) = tool.pointer_mut("/function/parameters") {
                *slot = parsed;
            }
        }
    }
    if !template.source.contains("tools") {
        return Err(DataError::BadRow {
            at: at.clone(),
            message: format!(
                "template {} never reads `tools`, so the row's tool definitions would be \
                 dropped; use a template that renders them (the model's own, or qwen_25 / \
                 qwen3)",
                template.origin
            ),
        });
    }
    Ok(Some(Json::Array(list)))
}

/// `split_thinking`: an assistant content's reasoning and the rest, Axolotl's way: the first
/// pair of thinking tags present cut out (stripped), the rest left-stripped, or only what sits
/// between `<|begin_of_solution|>` and `<|end_of_solution|>` (stripped) when both are there.
/// None when no pair is present.
pub(crate) fn split_thinking(content: &str) -> Option<(String, String)> {
    const PAIRS: [(&str, &str); 3] = [
        ("<think>", "</think>"),
        ("<reasoning>", "</reasoning>"),
        ("<|begin_of_thought|>", "<|end_of_thought|>"),
    ];
    let (open, close) = PAIRS
        .into_iter()
        .find(|(o, c)| content.contains(o) && content.contains(c))?;
    let (o, c) = (content.find(open)? + open.len(), content.find(close)?);
    // Python's slice of an inverted range is empty.
    let thinking = content.get(o..c).unwrap_or("").trim().to_string();
    let rest = content[c + close.len()..].trim_start();
    let (so, se) = ("<|begin_of_solution|>", "<|end_of_solution|>");
    let answer = match (rest.find(so), rest.find(se)) {
        (Some(a), Some(b)) => rest.get(a + so.len()..b).unwrap_or("").trim(),
        _ => rest,
    };
    Some((thinking, answer.to_string()))
}

/// One range of `message_field_training_detail`: characters `begin..=end` of the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainDetail {
    pub begin: usize,
    pub end: usize,
    pub train: bool,
}

/// A message's training detail: a list of `{begin_offset, end_offset, train}`.
pub(crate) fn parse_detail(v: &Json, at: &Location) -> Result<Vec<TrainDetail>> {
    let bad = |found: &Json| DataError::WrongType {
        at: at.clone(),
        expected: "a list of {begin_offset, end_offset, train} (character offsets, inclusive end)",
        found: json_kind(found).into(),
    };
    let Json::Array(list) = v else {
        return Err(bad(v));
    };
    list.iter()
        .map(|d| {
            let num = |k: &str| d.get(k).and_then(Json::as_u64).map(|n| n as usize);
            match (num("begin_offset"), num("end_offset"), d.get("train")) {
                (Some(begin), Some(end), Some(Json::Bool(train))) => Ok(TrainDetail {
                    begin,
                    end,
                    train: *train,
                }),
                _ => Err(bad(d)),
            }
        })
        .collect()
}

/// Which tokens of `content`, tokenized alone, train under `details`: Axolotl's
/// `get_offsets_for_train_detail`. Offsets are characters; each token's range runs to the
/// next token's start - 1 (the last to the content's end), each detail is widened to the
/// tokens it touches, and a token trains when it lies inside a range marked `train`.
pub(crate) fn detail_mask(
    tok: &crate::tokenizer::TextTokenizer,
    content: &str,
    details: &[TrainDetail],
) -> Result<Vec<bool>> {
    let enc = tok.encode_with_offsets(content)?;
    let char_at = |byte: usize| content[..byte.min(content.len())].chars().count();
    let starts: Vec<usize> = enc.offsets.iter().map(|&(s, _)| char_at(s)).collect();
    let n = starts.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let len = content.chars().count();
    let offs: Vec<(usize, usize)> = (0..n)
        .map(|i| {
            let end = if i + 1 < n { starts[i + 1] } else { len };
            (starts[i], end.saturating_sub(1))
        })
        .collect();
    let mut ranges = Vec::new();
    for d in details {
        let mut bt = offs.iter().position(|&(s, _)| s >= d.begin).unwrap_or(n);
        if bt > 0 && offs[bt - 1].1 > d.begin {
            bt -= 1;
        }
        let mut et = offs.iter().rposition(|&(_, e)| e <= d.end);
        match et {
            Some(e) if e + 1 < n && offs[e + 1].0 < d.end => et = Some(e + 1),
            None if offs[0].0 < d.end => et = Some(0),
            _ => {}
        }
        if let Some(et) = et
            && bt <= et
        {
            ranges.push((offs[bt].0, offs[et].1, d.train));
        }
    }
    Ok(offs
        .iter()
        .map(|&(s, e)| ranges.iter().any(|&(b, en, t)| t && s >= b && e <= en))
        .collect())
}

/// Tool calls with each `function.arguments` given as a JSON string parsed into its object, as
/// Axolotl does before rendering (templates write the arguments with `tojson`).
pub(crate) fn parse_tool_calls(calls: &[Json], at: &Location) -> Result<Vec<Json>> {
    let mut out = calls.to_vec();
    for call in out.iter_mut() {
        if let Some(Json::String(a)) = call.pointer("/function/arguments") {
            let parsed = parse_json(a, at, "a tool call's `arguments`")?;
            if let Some(slot) = call.pointer_mut("/function/arguments") {
                *slot = parsed;
            }
        }
    }
    Ok(out)
}

/// A JSON value as a template value (maps keep their key order, like Python dicts).
pub(crate) fn json_value<T: serde::Serialize>(v: T) -> Value {
    Value::from(minijinja::value::Serde(v))
}

fn parse_json(text: &str, at: &Location, what: &str) -> Result<Json> {
    serde_json::from_str(text).map_err(|e| DataError::BadRow {
        at: at.clone(),
        message: format!("{what} is a string but not valid JSON ({e}); write it as JSON"),
    })
}

pub(crate) fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use crate::chat::ChatEncoder;
    use crate::error::Location;
    use crate::sample::IGNORE;
    use crate::template::{ChatTemplate, named_template_source};
    use crate::tokenizer::TextTokenizer;
    use runner_recipe::plan::{
        ChatFormat, ChatTemplate as PlanTemplate, NamedTemplate, TrainOnEos,
    };
    use serde_json::{Map, Value as Json, json};

    fn fmt() -> ChatFormat {
        ChatFormat {
            template: PlanTemplate::TokenizerDefault,
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

    fn encoder<'a>(tok: &'a TextTokenizer, name: NamedTemplate, f: &ChatFormat) -> ChatEncoder<'a> {
        let t = ChatTemplate::new(named_template_source(name), "named", "", "<|im_end|>").unwrap();
        ChatEncoder::new(t, tok, f, false, None)
    }

    fn row(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    fn call(args: Json) -> Json {
        json!([{"type": "function", "function": {"name": "f", "arguments": args}}])
    }

    fn trained(tok: &TextTokenizer, enc: &ChatEncoder, r: &Map<String, Json>) -> String {
        let conv = enc.conversation(r, &Location::default()).unwrap();
        let s = enc
            .encode_conversation(&conv, &Location::default())
            .unwrap();
        s.input_ids
            .iter()
            .zip(&s.labels)
            .filter(|(_, l)| **l != IGNORE)
            .map(|(&i, _)| tok.decode_one(i))
            .collect()
    }

    #[test]
    fn issue_15_null_content_is_allowed_only_on_tool_call_turns() {
        let tok = TextTokenizer::builtin("t").unwrap();
        let enc = encoder(&tok, NamedTemplate::Qwen25, &fmt());
        let r = row(json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": null, "tool_calls": call(json!("{\"x\": 1}"))},
        ]}));
        // The template sees no content (its `{% if message.content %}` skips it), never `None`;
        // the whole tool call is trained, and its arguments string was parsed to an object.
        assert_eq!(
            trained(&tok, &enc, &r),
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call><|im_end|>"
        );
        for bad in [
            json!({"role": "assistant", "content": null}),
            json!({"role": "assistant", "content": null, "tool_calls": []}),
            json!({"role": "user", "content": null, "tool_calls": null}),
        ] {
            let r = row(json!({"messages": [{"role": "user", "content": "q"}, bad]}));
            let e = enc
                .conversation(&r, &Location::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("messages[1].content") && e.contains("content is null"),
                "{e}"
            );
        }
    }

    #[test]
    fn issue_15_tools_calls_and_reasoning_a_template_ignores_are_refused() {
        let tok = TextTokenizer::builtin("t").unwrap();
        let enc = encoder(&tok, NamedTemplate::Chatml, &fmt());
        for (r, field, what) in [
            (
                json!({"messages": [{"role": "assistant", "content": "", "tool_calls": call(json!({}))}]}),
                "messages[0].tool_calls",
                "never reads `tool_calls`",
            ),
            (
                json!({"tools": [{"type": "function"}], "messages": [{"role": "user", "content": "q"}]}),
                "tools",
                "never reads `tools`",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": "a", "reasoning_content": "r"}]}),
                "messages[0].reasoning_content",
                "never reads `reasoning_content`",
            ),
        ] {
            let e = enc
                .conversation(&row(r), &Location::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains(what), "{e}");
        }
        // Empty tools are no tools (transformers' `if tools`): nothing is dropped.
        let r = row(json!({"tools": [], "messages": [{"role": "user", "content": "q"}]}));
        assert!(enc.conversation(&r, &Location::default()).is_ok());
    }

    #[test]
    fn issue_15_bad_tool_json_and_training_flags_are_refused_where_they_are() {
        let tok = TextTokenizer::builtin("t").unwrap();
        let mut f = fmt();
        f.extras.message_field_training = Some("train".into());
        let enc = encoder(&tok, NamedTemplate::Qwen25, &f);
        for (r, want) in [
            (
                json!({"messages": [{"role": "assistant", "content": "", "tool_calls": call(json!("{oops"))}]}),
                "messages[0].tool_calls",
            ),
            (
                json!({"tools": "[not json", "messages": [{"role": "user", "content": "q"}]}),
                "tools",
            ),
            (
                json!({"messages": [{"role": "user", "content": "q", "train": "yes"}]}),
                "messages[0].train",
            ),
        ] {
            let e = enc
                .conversation(&row(r), &Location::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        // A flag trains a user turn and silences an assistant one, whatever roles_to_train says.
        let r = row(json!({"messages": [
            {"role": "user", "content": "q", "train": true},
            {"role": "assistant", "content": "a", "train": false},
        ]}));
        assert_eq!(trained(&tok, &enc, &r), "q<|im_end|>");
    }

    #[test]
    fn issue_15_eot_tokens_that_cannot_end_a_turn_are_refused() {
        let tok = TextTokenizer::builtin("t").unwrap();
        let r = row(
            json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
        );
        for (eot, train_on_eot, want) in [
            (
                vec!["<|eot_id|>"],
                None,
                "never appears in the chat template",
            ),
            (vec!["im_start"], None, "tokens, not one"),
            (
                vec!["<|im_end|>"],
                Some(TrainOnEos::All),
                "lists the EOS token",
            ),
        ] {
            let mut f = fmt();
            f.extras.eot_tokens = Some(eot.iter().map(|t| t.to_string()).collect());
            f.extras.train_on_eot = train_on_eot;
            let enc = encoder(&tok, NamedTemplate::Chatml, &f);
            let e = enc.check_passes().unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            let conv = enc.conversation(&r, &Location::default()).unwrap();
            assert!(
                enc.encode_conversation(&conv, &Location::default())
                    .is_err()
            );
        }
        // The EOS listed, trained the same way: fine, and the same as the default.
        let mut f = fmt();
        f.extras.eot_tokens = Some(vec!["<|im_end|>".into()]);
        let enc = encoder(&tok, NamedTemplate::Chatml, &f);
        assert_eq!(trained(&tok, &enc, &r), "a<|im_end|>");
    }

    #[test]
    fn issue_15_chat_template_kwargs_are_template_variables() {
        let tok = TextTokenizer::builtin("t").unwrap();
        let mut f = fmt();
        f.extras.template_kwargs = [
            ("enable_thinking".to_string(), json!(false)),
            ("date_string".to_string(), json!("26 Jul 2024")),
            ("opts".to_string(), json!({"b": 1, "a": [2.5]})),
        ]
        .into_iter()
        .collect();
        let src = "{% if not enable_thinking %}[no-think]{% endif %}{{ date_string }}|{{ opts | tojson }}|{{ enable_thinking }}{% for m in messages %}<{{ m.role }}>{{ m.content }}<|im_end|>{% endfor %}";
        let t = ChatTemplate::new(src, "inline", "", "<|im_end|>").unwrap();
        let enc = ChatEncoder::new(t, &tok, &f, false, None);
        let r = row(
            json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
        );
        let conv = enc.conversation(&r, &Location::default()).unwrap();
        let text = enc
            .template
            .render_tracked_rich(&conv.messages, &conv.extras, &conv.vars)
            .unwrap()
            .text;
        // Maps keep their order (as a Python dict would), values print as Jinja2 prints them.
        assert_eq!(
            text,
            "[no-think]26 Jul 2024|{\"b\": 1, \"a\": [2.5]}|False<user>q<|im_end|><assistant>a<|im_end|>"
        );
        assert_eq!(trained(&tok, &enc, &r), "a<|im_end|>");
    }

    #[test]
    fn issue_15_training_details_mark_tokens_as_axolotl_does() {
        use super::{TrainDetail, detail_mask};
        let tok = TextTokenizer::builtin("t").unwrap();
        // The builtin tokenizer is byte-level, one token per byte of ASCII text.
        let d = |begin, end, train| TrainDetail { begin, end, train };
        let on =
            |m: Vec<bool>| -> String { m.iter().map(|&b| if b { '1' } else { '0' }).collect() };
        assert_eq!(
            on(detail_mask(&tok, "abcdef", &[d(2, 3, true)]).unwrap()),
            "001100"
        );
        // A later range marked not to train does not undo an earlier one (Axolotl only sets).
        assert_eq!(
            on(detail_mask(&tok, "abcdef", &[d(0, 3, true), d(2, 5, false)]).unwrap()),
            "111100"
        );
        // Character offsets, not bytes: `é` is one character.
        assert!(on(detail_mask(&tok, "é!", &[d(1, 1, true)]).unwrap()).ends_with('1'));
        let mut f = fmt();
        f.extras.message_field_training_detail = Some("detail".into());
        let enc = encoder(&tok, NamedTemplate::Qwen25, &f);
        for (r, want) in [
            (
                json!({"messages": [{"role": "user", "content": "q", "detail": [{"begin_offset": 0}]}]}),
                "messages[0].detail",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": "", "tool_calls": call(json!({})), "detail": [{"begin_offset": 0, "end_offset": 0, "train": true}]}]}),
                "not supported yet",
            ),
        ] {
            let e = enc
                .conversation(&row(r), &Location::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        let r = row(json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "xyz", "detail": [{"begin_offset": 1, "end_offset": 2, "train": true}]},
        ]}));
        assert_eq!(trained(&tok, &enc, &r), "yz<|im_end|>");
    }

    #[test]
    fn issue_15_split_thinking_cuts_reasoning_out_as_axolotl_does() {
        use super::split_thinking;
        let s = |c: &str| split_thinking(c).map(|(t, a)| format!("{t}|{a}"));
        assert_eq!(s("<think>\n r \n</think>\n\nA").as_deref(), Some("r|A"));
        assert_eq!(
            s("<reasoning>r</reasoning> x <|begin_of_solution|> A <|end_of_solution|>").as_deref(),
            Some("r|A")
        );
        assert_eq!(s("</think>a<think>").as_deref(), Some("|a<think>"));
        assert_eq!(s("no tags"), None);
        // Only assistant turns are split, and only when asked.
        let tok = TextTokenizer::builtin("t").unwrap();
        let mut f = fmt();
        f.extras.split_thinking = true;
        let enc = encoder(&tok, NamedTemplate::Qwen3, &f);
        let r = row(json!({"messages": [
            {"role": "user", "content": "<think>u</think>q"},
            {"role": "assistant", "content": "<think>r</think>a"},
        ]}));
        let conv = enc.conversation(&r, &Location::default()).unwrap();
        assert_eq!(conv.messages[0].content, "<think>u</think>q");
        assert_eq!(conv.messages[1].content, "a");
        assert_eq!(trained(&tok, &enc, &r), "r\n</think>\n\na<|im_end|>");
    }
}
