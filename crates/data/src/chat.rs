//! `type: chat_template`: rows of messages → rendered conversation → token ids and labels.
//!
//! Which tokens are trained follows from where each byte of the rendered text came from
//! (`ChatTemplate::render_tracked`), mapped onto tokens through the tokenizer's byte offsets.
//! The rule is Axolotl's: for each turn that trains (`train_on_inputs`, or its role is in
//! `roles_to_train`), the tokens of its content; then the first end-of-turn token within three
//! tokens after that content, when `train_on_eos` is `turn` (trained turns) or `all` (every
//! turn), or only the last such token with `last`. Headers (`<|im_start|>assistant\n`) and the
//! newline after `<|im_end|>` are never trained.
//!
//! One deliberate difference: an assistant turn with empty content still has its closing
//! end-of-turn token trained (the data says "answer nothing, then stop"); Axolotl 0.21's
//! token-diffing `find_turn` cannot locate an empty turn and trains nothing there.

pub(crate) use crate::conversation::json_kind;
use crate::conversation::{
    Conversation, TrainDetail, detail_mask, json_value, parse_detail, parse_tool_calls,
    split_thinking, tools,
};
use crate::error::{DataError, Location, Result};
use crate::sample::{IGNORE, Sample};
use crate::template::{ChatTemplate, Message, MessageExtra};
use crate::tokenizer::TextTokenizer;
use minijinja::value::Value;
use runner_recipe::plan::{ChatFormat, TrainOnEos};
use serde_json::{Map, Value as Json};

/// Tokens that close a turn in the common templates; those the template text writes count as
/// end-of-turn tokens besides the tokenizer's EOS (so Llama 3's `<|eot_id|>` is found even when
/// the tokenizer's EOS is `<|end_of_text|>`).
const TURN_END_TOKENS: [&str; 6] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
    "<|endoftext|>",
];

/// The roles chat templates render (OpenAI's and transformers' names).
pub const KNOWN_ROLES: [&str; 7] = [
    "system",
    "user",
    "assistant",
    "tool",
    "function",
    "ipython",
    "developer",
];

/// The ids that close a turn for a template: the tokenizer's EOS, then the known end-of-turn
/// tokens the template text writes. Training masks them; generation stops at them.
pub fn turn_end_ids(template_source: &str, tok: &TextTokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = tok.eos.iter().map(|e| e.id).collect();
    for t in TURN_END_TOKENS {
        if template_source.contains(t)
            && let Some(id) = tok.token_to_id(t)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}

/// The end-of-turn passes of a dataset. Without `eot_tokens` and `train_on_eot`: one pass over
/// [`turn_end_ids`] with `train_on_eos`. With either: Axolotl's two passes, the tokenizer's EOS
/// with `train_on_eos`, then `eot_tokens` (default: the EOS) with `train_on_eot` (default:
/// `train_on_eos`). Each end-of-turn token must be one token the template writes, and an EOS
/// listed there cannot train differently from `train_on_eos` (Axolotl refuses both too; it
/// drops a token missing from the template with a warning, runner refuses it).
fn eot_passes(
    source: &str,
    tok: &TextTokenizer,
    fmt: &ChatFormat,
) -> std::result::Result<Vec<(Vec<u32>, TrainOnEos)>, String> {
    let x = &fmt.extras;
    if x.eot_tokens.is_none() && x.train_on_eot.is_none() {
        return Ok(vec![(turn_end_ids(source, tok), fmt.train_on_eos)]);
    }
    let eos: Vec<u32> = tok.eos.iter().map(|e| e.id).collect();
    let eot_mode = x.train_on_eot.unwrap_or(fmt.train_on_eos);
    let eot = match &x.eot_tokens {
        None => eos.clone(),
        Some(list) => {
            let mut ids = Vec::new();
            for t in list {
                if !source.contains(t.as_str()) {
                    return Err(format!(
                        "eot_tokens: `{t}` never appears in the chat template's text, so it \
                         cannot end a turn; list the token the template writes at the end of \
                         each turn"
                    ));
                }
                let enc = tok
                    .encode_with_offsets(t)
                    .map_err(|e| format!("eot_tokens: `{t}`: {e}"))?;
                match enc.ids.as_slice() {
                    [id] => ids.push(*id),
                    other => {
                        return Err(format!(
                            "eot_tokens: `{t}` is {} tokens, not one; add it under `tokens:`",
                            other.len()
                        ));
                    }
                }
            }
            ids
        }
    };
    if eot.iter().any(|id| eos.contains(id)) && eot_mode != fmt.train_on_eos {
        return Err(
            "eot_tokens lists the EOS token, and train_on_eot differs from train_on_eos: the \
             same token cannot be both trained and not; make them equal or leave the EOS out"
                .into(),
        );
    }
    Ok(vec![(eos, fmt.train_on_eos), (eot, eot_mode)])
}

/// Everything needed to turn one chat row into a sample.
pub struct ChatEncoder<'a> {
    pub template: ChatTemplate,
    tok: &'a TextTokenizer,
    fmt: ChatFormat,
    train_on_inputs: bool,
    default_system_message: Option<String>,
    /// End-of-turn passes: (token ids, which of them train). One merged pass by default; the
    /// EOS pass and the `eot_tokens` pass with `eot_tokens` / `train_on_eot` (Axolotl's rule).
    /// An error when those settings do not fit the tokenizer or template.
    passes: std::result::Result<Vec<(Vec<u32>, TrainOnEos)>, String>,
    /// Rows whose rendered text held none of their messages' content: a template that never
    /// prints `message['content']` trains nothing, and the empty-dataset error says so.
    contentless: std::sync::atomic::AtomicU64,
}

impl<'a> ChatEncoder<'a> {
    pub fn new(
        template: ChatTemplate,
        tok: &'a TextTokenizer,
        fmt: &ChatFormat,
        train_on_inputs: bool,
        default_system_message: Option<String>,
    ) -> Self {
        let passes = eot_passes(&template.source, tok, fmt);
        let template = template.with_kwargs(&fmt.extras.template_kwargs);
        ChatEncoder {
            template,
            tok,
            fmt: fmt.clone(),
            train_on_inputs,
            default_system_message,
            passes,
            contentless: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Rows so far whose render held none of their content.
    pub fn contentless_rows(&self) -> u64 {
        self.contentless.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The row's messages with roles mapped, system message dropped or defaulted.
    pub fn messages(&self, row: &Map<String, Json>, at: &Location) -> Result<Vec<Message>> {
        Ok(self.conversation(row, at)?.messages)
    }

    /// The row's conversation: messages with roles mapped, system message dropped or
    /// defaulted, tool calls, reasoning and training flags, and the row's tools.
    pub fn conversation(&self, row: &Map<String, Json>, at: &Location) -> Result<Conversation> {
        let field = &self.fmt.field_messages;
        let with_field = |f: &str| Location {
            field: Some(f.to_string()),
            ..at.clone()
        };
        let list = match row.get(field) {
            None => {
                return Err(DataError::MissingField {
                    at: with_field(field),
                    present: present_keys(row),
                });
            }
            Some(Json::Array(a)) => a,
            Some(other) => {
                return Err(DataError::WrongType {
                    at: with_field(field),
                    expected: "a list of messages",
                    found: json_kind(other).into(),
                });
            }
        };
        let mut out = Vec::with_capacity(list.len() + 1);
        let mut extras = Vec::with_capacity(list.len() + 1);
        let mut train = Vec::with_capacity(list.len() + 1);
        let mut detail = Vec::with_capacity(list.len() + 1);
        let source = &self.template.source;
        let x = &self.fmt.extras;
        for (i, m) in list.iter().enumerate() {
            let path = |k: &str| with_field(&format!("{field}[{i}].{k}"));
            let Json::Object(m) = m else {
                return Err(DataError::WrongType {
                    at: with_field(&format!("{field}[{i}]")),
                    expected: "a message object",
                    found: json_kind(m).into(),
                });
            };
            let role = match m.get(&self.fmt.role_key) {
                Some(Json::String(s)) => s.as_str(),
                Some(other) => {
                    return Err(DataError::WrongType {
                        at: path(&self.fmt.role_key),
                        expected: "a string",
                        found: json_kind(other).into(),
                    });
                }
                None => {
                    return Err(DataError::MissingField {
                        at: path(&self.fmt.role_key),
                        present: present_keys(m),
                    });
                }
            };
            let mut extra = MessageExtra::default();
            let tool_calls = match m.get("tool_calls") {
                None | Some(Json::Null) => None,
                Some(Json::Array(calls)) if calls.is_empty() => None,
                Some(Json::Array(calls)) => Some(parse_tool_calls(calls, &path("tool_calls"))?),
                Some(other) => {
                    return Err(DataError::WrongType {
                        at: path("tool_calls"),
                        expected: "a list of tool calls",
                        found: json_kind(other).into(),
                    });
                }
            };
            if tool_calls.is_some() && !source.contains("tool_calls") {
                return Err(DataError::BadRow {
                    at: path("tool_calls"),
                    message: format!(
                        "template {} never reads `tool_calls`, so this turn's tool calls would \
                         be dropped; use a template that renders them (the model's own, or \
                         qwen_25 / qwen3)",
                        self.template.origin
                    ),
                });
            }
            let mut part_details = None;
            let content = match m.get(&self.fmt.content_key) {
                // A tool-call turn may have no content (OpenAI's `content: null`); Axolotl drops
                // the null, so the template sees no `content` key.
                None | Some(Json::Null) if tool_calls.is_some() => {
                    extra.no_content = true;
                    String::new()
                }
                Some(Json::String(s)) => s.clone(),
                // transformers hands `None` to the template, which prints it as the text `None`
                // or skips the turn, depending on the template: neither is what a training row
                // means, so it is refused rather than guessed (issue 17).
                Some(Json::Null) => {
                    return Err(DataError::BadRow {
                        at: path(&self.fmt.content_key),
                        message: "the content is null (transformers would hand the template \
                                  `None`, which most templates print as the text `None`); write a \
                                  string, \"\" for an empty turn, or skip such rows with \
                                  --skip-bad-rows"
                            .into(),
                    });
                }
                // Content parts (`[{"type": "text", "text": ...}]`): their texts joined, as
                // Axolotl does.
                Some(Json::Array(parts)) => {
                    let mut text = String::new();
                    // Parts marked `train` / `weight` become a training detail (Axolotl's
                    // `_convert_content_parts`); unmarked parts train with their turn.
                    let (mut details, mut marked) = (Vec::new(), false);
                    for (k, part) in parts.iter().enumerate() {
                        let at_part = |f: &str| path(&format!("{}[{k}].{f}", self.fmt.content_key));
                        let flag = match (part.get("train"), part.get("weight")) {
                            (Some(Json::Bool(b)), _) => Some(*b),
                            (Some(v), _) if !v.is_null() => {
                                return Err(DataError::WrongType {
                                    at: at_part("train"),
                                    expected: "true or false",
                                    found: json_kind(v).into(),
                                });
                            }
                            (_, Some(Json::Number(w))) => Some(w.as_f64() != Some(0.0)),
                            (_, Some(Json::Bool(b))) => Some(*b),
                            (_, Some(v)) if !v.is_null() => {
                                return Err(DataError::WrongType {
                                    at: at_part("weight"),
                                    expected: "a number (0 = not trained)",
                                    found: json_kind(v).into(),
                                });
                            }
                            _ => None,
                        };
                        marked |= flag.is_some();
                        let t = part.as_object().and_then(|p| {
                            ["text", "content", "value"]
                                .iter()
                                .find_map(|key| p.get(*key)?.as_str())
                        });
                        match t {
                            Some(t) => {
                                let begin = text.chars().count();
                                let len = t.chars().count();
                                if len > 0 {
                                    details.push(TrainDetail {
                                        begin,
                                        end: begin + len - 1,
                                        train: flag.unwrap_or(true),
                                    });
                                }
                                text.push_str(t);
                            }
                            None => {
                                return Err(DataError::WrongType {
                                    at: path(&format!("{}[{k}]", self.fmt.content_key)),
                                    expected: "a content part with a `text` string",
                                    found: json_kind(part).into(),
                                });
                            }
                        }
                    }
                    if marked {
                        part_details = Some(details);
                    }
                    text
                }
                Some(other) => {
                    return Err(DataError::WrongType {
                        at: path(&self.fmt.content_key),
                        expected: "a string or a list of text parts",
                        found: json_kind(other).into(),
                    });
                }
                None => {
                    return Err(DataError::MissingField {
                        at: path(&self.fmt.content_key),
                        present: present_keys(m),
                    });
                }
            };
            let role = self.map_role(role);
            if !self.known_role(&role) {
                return Err(DataError::BadRow {
                    at: path(&self.fmt.role_key),
                    message: format!(
                        "unknown role `{role}`: chat templates know {}; map it with `roles:` \
                         (e.g. `roles: {{assistant: [{role}]}}`), or list it in \
                         `roles_to_train` if the template renders it",
                        KNOWN_ROLES.join(", ")
                    ),
                });
            }
            if self.fmt.drop_system_message && role == "system" {
                continue;
            }
            let thinking = match m.get(&x.field_thinking) {
                None | Some(Json::Null) => None,
                Some(Json::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(DataError::WrongType {
                        at: path(&x.field_thinking),
                        expected: "a string (the turn's reasoning)",
                        found: json_kind(other).into(),
                    });
                }
            };
            // `split_thinking`: reasoning written inside an assistant content (Axolotl's).
            let split = (x.split_thinking && role == "assistant")
                .then(|| split_thinking(&content))
                .flatten();
            let (content, thinking) = match split {
                Some((t, c)) => (c, Some(t)),
                None => (content, thinking),
            };
            if let Some(t) = thinking {
                if !source.contains(x.template_thinking_key.as_str()) {
                    return Err(DataError::BadRow {
                        at: path(&x.field_thinking),
                        message: format!(
                            "template {} never reads `{}`, so this turn's reasoning would be \
                             dropped; use a template that renders it (the model's own, or qwen3), \
                             or set `template_thinking_key` to the key it reads",
                            self.template.origin, x.template_thinking_key
                        ),
                    });
                }
                extra.whole_turn = true;
                extra
                    .fields
                    .push((x.template_thinking_key.clone(), Value::from(t)));
            }
            let flag = match &x.message_field_training {
                None => None,
                Some(k) => match m.get(k) {
                    None | Some(Json::Null) => None,
                    Some(Json::Bool(b)) => Some(*b),
                    Some(other) => {
                        return Err(DataError::WrongType {
                            at: path(k),
                            expected: "true or false (train this turn or not)",
                            found: json_kind(other).into(),
                        });
                    }
                },
            };
            let details = match &x.message_field_training_detail {
                None => None,
                Some(k) => match m.get(k) {
                    None | Some(Json::Null) => None,
                    Some(v) => Some(parse_detail(v, &path(k))?),
                },
            };
            // Flags on content parts win over the message's detail, as in Axolotl.
            let detail_key = match &part_details {
                Some(_) => self.fmt.content_key.as_str(),
                None => x
                    .message_field_training_detail
                    .as_deref()
                    .unwrap_or_default(),
            };
            let details = part_details.or(details);
            if details.as_ref().is_some_and(|d| !d.is_empty())
                && (extra.whole_turn || tool_calls.is_some())
            {
                return Err(DataError::BadRow {
                    at: path(detail_key),
                    message: "a training detail on a turn with tool calls or reasoning is not \
                              supported yet; use `message_field_training` for the whole turn"
                        .into(),
                });
            }
            if let Some(calls) = tool_calls {
                extra.whole_turn = true;
                extra.fields.push(("tool_calls".into(), json_value(&calls)));
            }
            // Other message keys (`name`, `tool_call_id`, ...) reach the template as they are.
            for (k, v) in m {
                let taken = [
                    self.fmt.role_key.as_str(),
                    self.fmt.content_key.as_str(),
                    x.field_thinking.as_str(),
                    "tool_calls",
                ];
                if v.is_null()
                    || taken.contains(&k.as_str())
                    || extra.fields.iter().any(|(f, _)| f == k)
                    || x.message_field_training.as_deref() == Some(k.as_str())
                    || x.message_field_training_detail.as_deref() == Some(k.as_str())
                {
                    continue;
                }
                extra.fields.push((k.clone(), json_value(v)));
            }
            out.push(Message { role, content });
            extras.push(extra);
            train.push(flag);
            detail.push(details);
        }
        if out.is_empty() {
            return Err(DataError::BadRow {
                at: with_field(field),
                message: "the conversation has no messages".into(),
            });
        }
        if let Some(sys) = &self.default_system_message
            && !self.fmt.drop_system_message
            && out[0].role != "system"
        {
            out.insert(
                0,
                Message {
                    role: "system".into(),
                    content: sys.clone(),
                },
            );
            extras.insert(0, MessageExtra::default());
            train.insert(0, None);
            detail.insert(0, None);
        }
        let vars = match tools(
            row,
            &x.field_tools,
            &self.template,
            &with_field(&x.field_tools),
        )? {
            Some(tools) => vec![("tools".to_string(), json_value(&tools))],
            None => Vec::new(),
        };
        Ok(Conversation {
            messages: out,
            extras,
            train,
            detail,
            vars,
        })
    }

    /// A role the template is expected to render: one chat templates share, one the recipe
    /// maps onto, or one it trains. Anything else rendered silently as whatever the template
    /// does with an unknown role (ChatML: a turn of that name) before issue 17.
    fn known_role(&self, role: &str) -> bool {
        KNOWN_ROLES.contains(&role)
            || self.fmt.roles.iter().any(|m| m.role == role)
            || self.fmt.roles_to_train.iter().any(|r| r == role)
    }

    fn map_role(&self, role: &str) -> String {
        if self.fmt.roles.is_empty() {
            // Axolotl's default mapping, so ShareGPT (`human`/`gpt`) works without `roles:`.
            return match role {
                "human" => "user",
                "gpt" => "assistant",
                r => r,
            }
            .to_string();
        }
        for m in &self.fmt.roles {
            if m.aliases.iter().any(|a| a == role) {
                return m.role.clone();
            }
        }
        role.to_string()
    }

    /// Renders, tokenizes and masks one conversation of plain messages.
    pub fn encode(&self, messages: &[Message], at: &Location) -> Result<Sample> {
        self.encode_conversation(
            &Conversation {
                messages: messages.to_vec(),
                ..Default::default()
            },
            at,
        )
    }

    /// Renders, tokenizes and masks one conversation.
    pub fn encode_conversation(&self, conv: &Conversation, at: &Location) -> Result<Sample> {
        let messages = &conv.messages;
        let rendered = self
            .template
            .render_tracked_rich(messages, &conv.extras, &conv.vars)
            .map_err(|e| self.render_error(&e, at))?;
        if rendered.spans.iter().all(Option::is_none)
            && messages.iter().any(|m| !m.content.is_empty())
        {
            self.contentless
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let passes = self.check_passes()?;
        let enc = self.tok.encode_with_offsets(&rendered.text)?;
        let n = enc.ids.len();
        let mut labels = vec![IGNORE; n];
        let mut last_eot: Vec<Option<usize>> = vec![None; passes.len()];
        let any_all = passes.iter().any(|(_, m)| *m == TrainOnEos::All);
        for (i, m) in messages.iter().enumerate() {
            // A message's own training flag wins over its role, then whether it has a
            // training detail (Axolotl's `should_train`).
            let detail = conv.detail.get(i).and_then(Option::as_ref);
            let trains = conv
                .train
                .get(i)
                .copied()
                .flatten()
                .or(detail.map(|d| !d.is_empty()))
                .unwrap_or_else(|| {
                    self.train_on_inputs || self.fmt.roles_to_train.contains(&m.role)
                });
            if !trains && !any_all {
                continue;
            }
            let Some(span) = rendered.spans[i].clone() else {
                continue;
            };
            // Tokens overlapping the content's bytes.
            let first = enc.offsets.partition_point(|&(_, e)| e <= span.start);
            let mut end = first;
            while end < n && enc.offsets[end].0 < span.end && span.start < span.end {
                end += 1;
            }
            if let Some(d) = detail.filter(|d| trains && !d.is_empty()) {
                // Axolotl counts the content's own tokens from the turn's first token.
                for (k, on) in detail_mask(self.tok, &m.content, d)?
                    .into_iter()
                    .enumerate()
                {
                    if on && first + k < n {
                        labels[first + k] = enc.ids[first + k] as i32;
                    }
                }
            } else if trains {
                for (l, &id) in labels[first..end].iter_mut().zip(&enc.ids[first..end]) {
                    *l = id as i32;
                }
            }
            for ((ids, mode), last) in passes.iter().zip(last_eot.iter_mut()) {
                if let Some(k) = (end..n).find(|&k| ids.contains(&enc.ids[k]))
                    && k - end <= 3
                {
                    *last = Some(last.map_or(k, |l| l.max(k)));
                    if *mode == TrainOnEos::All || (*mode == TrainOnEos::Turn && trains) {
                        labels[k] = enc.ids[k] as i32;
                    }
                }
            }
        }
        for ((_, mode), last) in passes.iter().zip(&last_eot) {
            if *mode == TrainOnEos::Last
                && let Some(k) = *last
            {
                labels[k] = enc.ids[k] as i32;
            }
        }
        Ok(Sample {
            input_ids: enc.ids,
            labels,
        })
    }
}

impl ChatEncoder<'_> {
    /// The end-of-turn passes, or why `eot_tokens` / `train_on_eot` cannot be used (an error of
    /// the recipe, not of a row: the data stage stops on it before the first row).
    pub fn check_passes(&self) -> Result<&[(Vec<u32>, TrainOnEos)]> {
        self.passes
            .as_deref()
            .map_err(|message| DataError::Template {
                template: self.template.origin.clone(),
                message: message.clone(),
            })
    }

    /// A failed render: the row's fault only when the template rejected it; a template that
    /// cannot render at all (an `include` of nothing, an unknown filter) or ran past its limits
    /// is the template's, and stops the run whatever `--skip-bad-rows` says (issue 17: an
    /// `include` was blamed on "row 1").
    fn render_error(&self, e: &minijinja::Error, at: &Location) -> DataError {
        use minijinja::ErrorKind as K;
        let message = jinja_message(e);
        let template = format!("{}, dataset {}", self.template.origin, at.file.display());
        if message.starts_with(crate::template::TEMPLATE_LIMIT) {
            return DataError::TemplateLimit {
                at: at.clone(),
                template: self.template.origin.clone(),
                message,
            };
        }
        match e.kind() {
            K::TemplateNotFound => DataError::Template {
                template,
                message: format!(
                    "{message}: a chat template must be self-contained (`include`, `import` and \
                     `extends` have nothing to load, in transformers too)"
                ),
            },
            K::SyntaxError | K::UnknownFilter | K::UnknownTest | K::UnknownFunction => {
                DataError::Template { template, message }
            }
            _ => DataError::TemplateRejected {
                at: at.clone(),
                message,
            },
        }
    }
}

pub(crate) fn jinja_message(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => d.to_string(),
        None => e.to_string(),
    }
}

pub(crate) fn present_keys(m: &Map<String, Json>) -> String {
    if m.is_empty() {
        return "no fields".into();
    }
    let keys: Vec<String> = m.keys().map(|k| format!("`{k}`")).collect();
    format!("fields {}", keys.join(", "))
}

#[cfg(test)]
#[path = "chat_tests.rs"]
mod tests;
