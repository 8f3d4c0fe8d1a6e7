//! Chat templates: which Jinja text a dataset uses, and rendering it the way transformers does.
//!
//! transformers renders with `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
//! extensions=[AssistantTracker, loopcontrols])`, its own `tojson` (Python `json.dumps`, key order
//! kept, no HTML escaping), `raise_exception` and `strftime_now`. We mirror that on minijinja with
//! minijinja-contrib's pycompat string methods. `{% generation %}` blocks render their body.
//!
//! Rendering with provenance: each message's content is wrapped in private-use marker characters,
//! so that after rendering we know which output bytes came from which message, whatever the
//! template wrote around them. The marked text, with the markers taken out, must equal the plain
//! render; that check catches templates that rewrite content in ways we cannot follow.
//!
//! The named templates are Axolotl's (`src/axolotl/utils/chat_templates/templates/*.jinja`,
//! Apache-2.0), copied byte for byte.

use crate::error::{DataError, Result};
use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use runner_recipe::plan::NamedTemplate;
use std::ops::Range;

/// The Jinja source of a built-in template.
pub fn named_template_source(name: NamedTemplate) -> &'static str {
    match name {
        NamedTemplate::Chatml => include_str!("templates/chatml.jinja"),
        NamedTemplate::Llama3 => include_str!("templates/llama3.jinja"),
        NamedTemplate::MistralV1 => include_str!("templates/mistral_v1.jinja"),
        NamedTemplate::MistralV2v3 => include_str!("templates/mistral_v2v3.jinja"),
        NamedTemplate::Qwen25 => include_str!("templates/qwen_25.jinja"),
        NamedTemplate::Qwen3 => include_str!("templates/qwen3.jinja"),
        NamedTemplate::Gemma => include_str!("templates/gemma.jinja"),
        NamedTemplate::Phi3 => include_str!("templates/phi_3.jinja"),
    }
}

/// One message as the template sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What a message carries besides role and content (tool calls, reasoning, `name`, ...), as the
/// template sees it, and whether its content is absent (a tool-call turn whose content is null:
/// Axolotl drops null keys, so the template finds no `content`).
#[derive(Debug, Clone, Default)]
pub struct MessageExtra {
    pub no_content: bool,
    /// The turn carries tool calls or reasoning: its span is the whole turn's (see
    /// [`ChatTemplate::render_tracked_rich`]), not its content's.
    pub whole_turn: bool,
    pub fields: Vec<(String, Value)>,
}

/// A rendered conversation: the text, and for each message the byte range its content occupies
/// in it (None when the template did not write that message, e.g. a dropped system prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub spans: Vec<Option<Range<usize>>>,
}

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Human-readable origin, for errors (`named chatml`, `tokenizer_config.json`, ...).
    pub origin: String,
    /// The Jinja text as given (before `{% generation %}` rewriting); part of the cache key.
    pub source: String,
    bos_token: String,
    eos_token: String,
    /// Further template variables (`pad_token`, `unk_token`, ...), as transformers passes the
    /// tokenizer's special tokens map.
    extra: Vec<(String, Value)>,
    /// The tracking mode that last worked (see `try_mode`).
    mode_hint: std::sync::atomic::AtomicUsize,
}

const TEMPLATE_NAME: &str = "chat";
/// The work one render may do, in minijinja fuel: one per instruction plus one per 64 bytes of
/// data the template creates or writes. A chat template renders a long conversation in well
/// under 1% of it; a hostile one (nested `range(100000)` loops, a string doubled in a loop)
/// stops after well under a second and about 320 MB instead of hanging or aborting (issue 17).
pub const TEMPLATE_FUEL: u64 = 5_000_000;
/// The most text one render may write: 32 MiB, far more than any `sequence_len` of tokens.
pub const MAX_RENDER_BYTES: usize = 32 << 20;
/// Markers: message i's content starts with U+100000+2i and ends with U+100001+2i
/// (Supplementary Private Use Area-B, never produced by a template).
const MARK_BASE: u32 = 0x10_0000;
const MAX_MARKED_MESSAGES: usize = 0xFFFD / 2;

impl ChatTemplate {
    pub fn new(source: &str, origin: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_err(origin, &e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_function("raise_exception", crate::jinja_fns::raise_exception);
        env.add_function("strftime_now", crate::jinja_fns::strftime_now);
        env.add_filter("tojson", crate::jinja_fns::tojson);
        // Jinja2 prints Python's `True`/`False`/`None`.
        env.set_formatter(|out, state, value| match value.kind() {
            ValueKind::Bool => out
                .write_str(if value.is_true() { "True" } else { "False" })
                .map_err(JinjaError::from),
            ValueKind::None => out.write_str("None").map_err(JinjaError::from),
            _ => minijinja::escape_formatter(out, state, value),
        });
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_blocks(source))
            .map_err(|e| template_err(origin, &e))?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_string(),
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            extra: Vec::new(),
            mode_hint: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Adds a template variable, e.g. `pad_token`.
    pub fn with_variable(mut self, name: &str, value: &str) -> Self {
        self.extra.push((name.to_string(), Value::from(value)));
        self
    }

    /// Adds a template variable of any value, e.g. a `chat_template_kwargs` entry.
    pub fn with_value(mut self, name: &str, value: Value) -> Self {
        self.extra.push((name.to_string(), value));
        self
    }

    /// Adds the recipe's `chat_template_kwargs` (JSON values, maps in their order).
    pub fn with_kwargs<'a>(
        mut self,
        kwargs: impl IntoIterator<Item = (&'a String, &'a serde_json::Value)>,
    ) -> Self {
        for (k, v) in kwargs {
            self = self.with_value(k, Value::from(minijinja::value::Serde(v)));
        }
        self
    }

    fn render_values(
        &self,
        messages: Vec<Value>,
        add_generation_prompt: bool,
        vars: &[(String, Value)],
    ) -> Result<String, JinjaError> {
        let fixed = [
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
        ];
        let extra = self
            .extra
            .iter()
            .chain(vars)
            .map(|(k, v)| (k.as_str(), v.clone()));
        let ctx = Value::from_pairs(extra.chain(fixed));
        let mut out = Bounded::default();
        match self
            .env
            .get_template(TEMPLATE_NAME)?
            .render_captured_to(ctx, &mut out)
        {
            Ok(_) => {}
            Err(_) if out.over => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "{TEMPLATE_LIMIT}: the rendered text passed {} MiB, the most one \
                         conversation may render to",
                        MAX_RENDER_BYTES >> 20
                    ),
                ));
            }
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "{TEMPLATE_LIMIT}: rendering did not finish within {TEMPLATE_FUEL} steps \
                         (instructions, plus one per 64 bytes of text it builds); a chat template \
                         needs a tiny fraction of that, so this one loops or builds text without \
                         bound"
                    ),
                ));
            }
            Err(e) => return Err(e),
        }
        String::from_utf8(out.buf).map_err(|e| {
            JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("the template wrote invalid UTF-8: {e}"),
            )
        })
    }

    /// Renders like `tokenizer.apply_chat_template(messages, tokenize=False)`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, JinjaError> {
        let values = messages
            .iter()
            .map(|m| message_value(&m.role, Some(Value::from(m.content.as_str())), None))
            .collect();
        self.render_values(values, add_generation_prompt, &[])
    }

    /// Like [`Self::render_tracked`], with each message's extra fields (`extras`: empty, or one
    /// per message) and per-row variables (`tools`). A message with extra fields gets Axolotl's
    /// `find_turn` span instead of its content's: the stretch of text that changes when that
    /// message is replaced by `{role, content: <dummy>}`, which covers its tool calls and
    /// reasoning wherever the template writes them (taken on the whole conversation, as text).
    pub fn render_tracked_rich(
        &self,
        messages: &[Message],
        extras: &[MessageExtra],
        vars: &[(String, Value)],
    ) -> Result<Rendered, JinjaError> {
        let ctx = Ctx { extras, vars };
        let mut r = self.render_tracked_ctx(messages, &ctx)?;
        for (i, x) in extras.iter().enumerate() {
            if !x.whole_turn {
                continue;
            }
            let values = messages
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    if j == i {
                        message_value(&m.role, Some(Value::from(DUMMY.to_string())), None)
                    } else {
                        message_value(&m.role, ctx.content(j, &m.content), extras.get(j))
                    }
                })
                .collect();
            let dummy = self.render_values(values, false, vars)?;
            r.spans[i] = diff_span(&r.text, &dummy);
        }
        Ok(r)
    }

    /// Renders and reports where each message's content landed in the text.
    ///
    /// First the whole content is marked; if the template changes content at its edges (`| trim`,
    /// `.strip()`), the markers go around the content without its surrounding whitespace instead.
    /// Either way the text returned is exactly the plain render.
    pub fn render_tracked(&self, messages: &[Message]) -> Result<Rendered, JinjaError> {
        self.render_tracked_ctx(
            messages,
            &Ctx {
                extras: &[],
                vars: &[],
            },
        )
    }

    fn render_tracked_ctx(&self, messages: &[Message], ctx: &Ctx) -> Result<Rendered, JinjaError> {
        if messages.len() > MAX_MARKED_MESSAGES {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                format!(
                    "conversation has {} messages; at most {MAX_MARKED_MESSAGES} are supported",
                    messages.len()
                ),
            ));
        }
        for m in messages {
            if m.content.chars().any(is_marker) {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    "message content contains characters from U+100000..U+10FFFD, which runner reserves",
                ));
            }
        }
        let plain = self.render_values(
            messages
                .iter()
                .enumerate()
                .map(|(j, m)| message_value(&m.role, ctx.content(j, &m.content), ctx.extras.get(j)))
                .collect(),
            false,
            ctx.vars,
        )?;
        // Try the mode that worked last first: templates are consistent, so this is usually
        // the only extra render. Every mode is checked against the plain render, so the order
        // cannot change the result.
        let hint = self.mode_hint.load(std::sync::atomic::Ordering::Relaxed);
        for mode in std::iter::once(hint).chain((0..3).filter(|&m| m != hint)) {
            if let Some(r) = self.try_mode(mode, messages, &plain, ctx)? {
                self.mode_hint
                    .store(mode, std::sync::atomic::Ordering::Relaxed);
                return Ok(r);
            }
        }
        Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            format!(
                "template {} rewrites message content in a way runner cannot trace back to the \
                 messages (it must write each message's content whole, optionally trimmed)",
                self.origin
            ),
        ))
    }

    /// One way of marking contents: 0 whole contents, 1 contents without edge whitespace, 2
    /// whole contents anchored on whichever marker survives. `None` when the result does not
    /// reproduce the plain render.
    fn try_mode(
        &self,
        mode: usize,
        messages: &[Message],
        plain: &str,
        ctx: &Ctx,
    ) -> Result<Option<Rendered>, JinjaError> {
        if mode < 2 {
            let core_only = mode == 1;
            let values = messages
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let (start, end) = markers(i);
                    let marked = if core_only {
                        let c = m.content.as_str();
                        let core = c.trim();
                        let lead = &c[..c.len() - c.trim_start().len()];
                        let trail = &c[c.trim_end().len()..];
                        format!("{lead}{start}{core}{end}{trail}")
                    } else {
                        format!("{start}{}{end}", m.content)
                    };
                    let content = ctx.content(i, &m.content).map(|c| {
                        if ctx.whole_turn(i) {
                            c
                        } else {
                            Value::from(marked)
                        }
                    });
                    message_value(&m.role, content, ctx.extras.get(i))
                })
                .collect();
            let marked = self.render_values(values, false, ctx.vars)?;
            if let Some(mut r) = strip_markers(&marked, messages.len())
                && r.text == *plain
            {
                if core_only {
                    // Messages the template did not trim keep their whitespace in the text: widen
                    // their spans back to the whole content.
                    for (m, span) in messages.iter().zip(r.spans.iter_mut()) {
                        let (Some(sp), c) = (span.as_mut(), m.content.as_str()) else {
                            continue;
                        };
                        let lead = c.len() - c.trim_start().len();
                        let trail = c.len() - c.trim_end().len();
                        if c.trim().is_empty() || (lead == 0 && trail == 0) || sp.start < lead {
                            continue;
                        }
                        let (s, e) = (sp.start - lead, sp.end + trail);
                        if r.text.get(s..e) == Some(c) {
                            *sp = s..e;
                        }
                    }
                }
                return Ok(Some(r));
            }
            return Ok(None);
        }
        // Last resort, for templates that split a content (Qwen3 moves a `<think>` block out of
        // an assistant message and may drop it): one surviving marker anchors the message, and
        // the span is the longest stretch of the content that the text holds next to it.
        let values = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (start, end) = markers(i);
                let content = ctx.content(i, &m.content).map(|c| {
                    if ctx.whole_turn(i) {
                        c
                    } else {
                        Value::from(format!("{start}{}{end}", m.content))
                    }
                });
                message_value(&m.role, content, ctx.extras.get(i))
            })
            .collect();
        let marked = self.render_values(values, false, ctx.vars)?;
        if let Some((text, ends)) = strip_markers_lenient(&marked, messages.len())
            && text == *plain
        {
            let spans = messages
                .iter()
                .zip(ends)
                .map(|(m, (s, e))| anchored_span(&text, &m.content, s, e))
                .collect();
            return Ok(Some(Rendered { text, spans }));
        }
        Ok(None)
    }
}

/// The extras and variables of one render.
struct Ctx<'a> {
    extras: &'a [MessageExtra],
    vars: &'a [(String, Value)],
}

impl Ctx<'_> {
    /// Message `i` is traced by [`diff_span`], not by markers: markers would change how a
    /// template treats its content (`{% if content %}` of an empty tool-call turn).
    fn whole_turn(&self, i: usize) -> bool {
        self.extras.get(i).is_some_and(|x| x.whole_turn)
    }

    /// Message `i`'s content as the template gets it: none when the message has none.
    fn content(&self, i: usize, content: &str) -> Option<Value> {
        match self.extras.get(i) {
            Some(x) if x.no_content => None,
            _ => Some(Value::from(content)),
        }
    }
}

/// The stand-in content for Axolotl's `find_turn` diff: a reserved character no content holds.
const DUMMY: char = '\u{10FFFD}';

fn message_value(role: &str, content: Option<Value>, extra: Option<&MessageExtra>) -> Value {
    let mut pairs = vec![("role", Value::from(role))];
    if let Some(c) = content {
        pairs.push(("content", c));
    }
    if let Some(x) = extra {
        pairs.extend(x.fields.iter().map(|(k, v)| (k.as_str(), v.clone())));
    }
    Value::from_pairs(pairs)
}

/// Where `text` differs from `other`: after their common prefix, before their common suffix
/// (on characters). None when nothing differs.
fn diff_span(text: &str, other: &str) -> Option<Range<usize>> {
    let prefix: usize = text
        .chars()
        .zip(other.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    let room = text.len().min(other.len()) - prefix;
    let mut suffix = 0;
    for (a, b) in text.chars().rev().zip(other.chars().rev()) {
        if a != b || suffix + a.len_utf8() > room {
            break;
        }
        suffix += a.len_utf8();
    }
    let end = text.len() - suffix;
    (prefix < end).then_some(prefix..end)
}

fn is_marker(c: char) -> bool {
    (MARK_BASE..=0x10_FFFD).contains(&(c as u32))
}

fn markers(i: usize) -> (char, char) {
    let s = MARK_BASE + 2 * i as u32;
    (
        char::from_u32(s).unwrap_or('\u{FFFD}'),
        char::from_u32(s + 1).unwrap_or('\u{FFFD}'),
    )
}

/// Removes the markers; returns the clean text and each message's span. None when markers are
/// unbalanced or repeated (the template wrote a content twice or cut it).
fn strip_markers(marked: &str, n: usize) -> Option<Rendered> {
    let mut text = String::with_capacity(marked.len());
    let mut spans: Vec<Option<Range<usize>>> = vec![None; n];
    let mut open: Option<(usize, usize)> = None;
    let mut last = 0;
    for (pos, c) in marked.char_indices() {
        if !is_marker(c) {
            continue;
        }
        text.push_str(&marked[last..pos]);
        last = pos + c.len_utf8();
        let k = (c as u32 - MARK_BASE) as usize;
        let (i, is_end) = (k / 2, k % 2 == 1);
        if i >= n {
            return None;
        }
        match (open, is_end) {
            (None, false) if spans[i].is_none() => open = Some((i, text.len())),
            (Some((j, start)), true) if j == i => {
                spans[i] = Some(start..text.len());
                open = None;
            }
            _ => return None,
        }
    }
    if open.is_some() {
        return None;
    }
    text.push_str(&marked[last..]);
    Some(Rendered { text, spans })
}

/// Like [`strip_markers`], but keeps whatever markers survived: per message, where its start and
/// end markers landed (each at most once).
type Anchors = (Option<usize>, Option<usize>);

fn strip_markers_lenient(marked: &str, n: usize) -> Option<(String, Vec<Anchors>)> {
    let mut text = String::with_capacity(marked.len());
    let mut anchors: Vec<Anchors> = vec![(None, None); n];
    let mut last = 0;
    for (pos, c) in marked.char_indices() {
        if !is_marker(c) {
            continue;
        }
        text.push_str(&marked[last..pos]);
        last = pos + c.len_utf8();
        let k = (c as u32 - MARK_BASE) as usize;
        let (i, is_end) = (k / 2, k % 2 == 1);
        let slot = if is_end {
            &mut anchors.get_mut(i)?.1
        } else {
            &mut anchors.get_mut(i)?.0
        };
        if slot.replace(text.len()).is_some() {
            return None;
        }
    }
    text.push_str(&marked[last..]);
    Some((text, anchors))
}

/// The span of a content in `text` given its surviving anchors: both → between them; only the
/// end → the longest suffix of the content that ends there; only the start → the longest
/// prefix starting there. Whitespace at the open edge is left out (templates strip it).
fn anchored_span(
    text: &str,
    content: &str,
    start: Option<usize>,
    end: Option<usize>,
) -> Option<Range<usize>> {
    match (start, end) {
        (Some(s), Some(e)) if s <= e => Some(s..e),
        (_, Some(e)) => {
            let before = &text[..e];
            let mut l = before.len().min(content.len());
            while l > 0
                && !(content.is_char_boundary(content.len() - l)
                    && before.ends_with(&content[content.len() - l..]))
            {
                l -= 1;
            }
            let piece = &text[e - l..e];
            let s = e - piece.trim_start().len();
            Some(s..e)
        }
        (Some(s), None) => {
            let after = &text[s..];
            let mut l = after.len().min(content.len());
            while l > 0 && !(content.is_char_boundary(l) && after.starts_with(&content[..l])) {
                l -= 1;
            }
            let piece = &text[s..s + l];
            Some(s..s + piece.trim_end().len())
        }
        _ => None,
    }
}

/// `{% generation %}` / `{% endgeneration %}` (transformers' AssistantTracker) become an always-true
/// `if`, which keeps their whitespace control exactly.
fn rewrite_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        let Some(close_rel) = rest[open..].find("%}") else {
            break;
        };
        let close = open + close_rel;
        let inner = &rest[open + 2..close];
        let (lead, body, trail) = split_ws_control(inner);
        out.push_str(&rest[..open]);
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&rest[open..close + 2]),
        }
        rest = &rest[close + 2..];
    }
    out.push_str(rest);
    out
}

fn split_ws_control(inner: &str) -> (&str, &str, &str) {
    let lead = if inner.starts_with('-') || inner.starts_with('+') {
        &inner[..1]
    } else {
        ""
    };
    let trail = if inner.len() > lead.len() && (inner.ends_with('-') || inner.ends_with('+')) {
        &inner[inner.len() - 1..]
    } else {
        ""
    };
    (lead, &inner[lead.len()..inner.len() - trail.len()], trail)
}

/// The words every limit error starts with, so the data stage can tell a template that ran out
/// of its budget (stop the run, whatever the row) from one that rejected a row.
pub const TEMPLATE_LIMIT: &str = "the chat template exceeded its limit";

/// An output buffer that refuses to grow past [`MAX_RENDER_BYTES`].
#[derive(Default)]
struct Bounded {
    buf: Vec<u8>,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > MAX_RENDER_BYTES {
            self.over = true;
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn template_err(origin: &str, e: &JinjaError) -> DataError {
    DataError::Template {
        template: origin.to_string(),
        message: format!("{e:#}"),
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
