//! Row formats (`type:`): how one row becomes token ids and labels.
//!
//! Instruction formats follow Axolotl's prompters exactly: the prompt is tokenized as
//! `tokenizer(prompt)` (BOS when the tokenizer adds one), the response separately with EOS
//! appended, and the two concatenated; the prompt is masked unless `train_on_inputs`.

use crate::chat::{ChatEncoder, json_kind, present_keys};
use crate::error::{DataError, Location, Result};
use crate::sample::{IGNORE, Sample};
use crate::tokenizer::TextTokenizer;
use runner_recipe::plan::{AlpacaVariant, CustomAlpaca};
use serde_json::{Map, Value as Json};

/// The prompt layout of an alpaca-like format.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLayout {
    pub field_instruction: String,
    pub field_input: Option<String>,
    pub field_output: String,
    /// A column holding a per-row system prompt (used when non-empty).
    pub field_system: Option<String>,
    pub system_prompt: String,
    pub system_no_input_prompt: String,
    pub system_format: String,
    pub turn_format: String,
    pub turn_no_input_format: String,
}

const ALPACA_SYSTEM: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.";
const ALPACA_SYSTEM_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
const CONCISE_SYSTEM: &str = "Below is an instruction from a USER that describes a task, paired with an input that provides further context. The ASSISTANT writes a response that concisely and appropriately completes the request.\n\n";
const CONCISE_SYSTEM_NO_INPUT: &str = "Below is an instruction from a USER that describes a task. The ASSISTANT writes a response that appropriately and concisely completes the request.\n\n";

impl PromptLayout {
    /// Axolotl's built-in alpaca variants.
    pub fn alpaca(variant: AlpacaVariant) -> Self {
        let s = |x: &str| x.to_string();
        let base = PromptLayout {
            field_instruction: s("instruction"),
            field_input: Some(s("input")),
            field_output: s("output"),
            field_system: None,
            system_prompt: s(ALPACA_SYSTEM),
            system_no_input_prompt: s(ALPACA_SYSTEM_NO_INPUT),
            system_format: s("{system}\n\n"),
            turn_format: s(
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
            ),
            turn_no_input_format: s("### Instruction:\n{instruction}\n\n### Response:\n"),
        };
        let chat = PromptLayout {
            system_format: s("SYSTEM: {system}\n"),
            turn_format: s("USER: {instruction}\n{input}\nASSISTANT:"),
            turn_no_input_format: s("USER: {instruction}\nASSISTANT:"),
            ..base.clone()
        };
        match variant {
            AlpacaVariant::Alpaca => base,
            AlpacaVariant::AlpacaChat => chat,
            AlpacaVariant::AlpacaChatQa => PromptLayout {
                field_instruction: s("question"),
                field_input: None,
                field_output: s("answer"),
                system_prompt: s(CONCISE_SYSTEM),
                system_no_input_prompt: s(CONCISE_SYSTEM_NO_INPUT),
                ..chat
            },
            // Axolotl's AlpacaConcisePrompter skips match_prompt_style: base system format,
            // `{instruction} ` turns.
            AlpacaVariant::AlpacaChatConcise => PromptLayout {
                system_prompt: s(CONCISE_SYSTEM),
                system_format: s("{system}"),
                turn_format: s("{instruction}\n{input} "),
                turn_no_input_format: s("{instruction} "),
                ..base
            },
            AlpacaVariant::AlpacaWithSystemOpenOrca => PromptLayout {
                field_instruction: s("question"),
                field_input: None,
                field_output: s("response"),
                field_system: Some(s("system_prompt")),
                system_prompt: String::new(),
                system_no_input_prompt: String::new(),
                system_format: s("### System:\n{system}\n"),
                turn_format: s(
                    "### Human:\n{instruction}\n### Additional Context:\n{input}\n### Assistant:\n",
                ),
                turn_no_input_format: s("### Human:\n{instruction}\n### Assistant:\n"),
            },
        }
    }

    pub fn custom(c: &CustomAlpaca) -> Self {
        PromptLayout {
            field_instruction: c.field_instruction.clone(),
            field_input: Some(c.field_input.clone()),
            field_output: c.field_output.clone(),
            field_system: Some(c.field_system.clone()),
            system_prompt: c.system_prompt.clone(),
            system_no_input_prompt: c.system_prompt.clone(),
            system_format: c.system_format.clone(),
            turn_format: c.format.clone(),
            turn_no_input_format: c.no_input_format.clone(),
        }
    }

    /// The prompt text for a row, and the response.
    pub fn build(&self, row: &Map<String, Json>, at: &Location) -> Result<(String, String)> {
        let instruction = req_str(row, &self.field_instruction, at)?;
        let input = match &self.field_input {
            Some(f) => opt_str(row, f, at)?.unwrap_or_default(),
            None => String::new(),
        };
        let output = req_str(row, &self.field_output, at)?;
        let row_system = match &self.field_system {
            Some(f) => opt_str(row, f, at)?.filter(|s| !s.is_empty()),
            None => None,
        };
        let has_input = !input.is_empty();
        let system = row_system.unwrap_or_else(|| {
            if has_input {
                self.system_prompt.clone()
            } else {
                self.system_no_input_prompt.clone()
            }
        });
        let mut prompt = if system.is_empty() {
            String::new()
        } else {
            self.system_format.replace("{system}", &system)
        };
        let turn = if has_input || self.turn_no_input_format.is_empty() {
            &self.turn_format
        } else {
            &self.turn_no_input_format
        };
        prompt.push_str(&format_fields(turn, &instruction, &input));
        Ok((prompt, output))
    }
}

/// Python's `str.format(instruction=..., input=...)` for the two names (and `{{`/`}}`).
fn format_fields(fmt: &str, instruction: &str, input: &str) -> String {
    let mut out = String::with_capacity(fmt.len() + instruction.len() + input.len());
    let mut rest = fmt;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{instruction}") {
            out.push_str(instruction);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{input}") {
            out.push_str(input);
            rest = t;
        } else if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn field_at(at: &Location, f: &str) -> Location {
    Location {
        field: Some(f.to_string()),
        ..at.clone()
    }
}

pub(crate) fn req_str(row: &Map<String, Json>, f: &str, at: &Location) -> Result<String> {
    match row.get(f) {
        None => Err(DataError::MissingField {
            at: field_at(at, f),
            present: present_keys(row),
        }),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(other) => Err(DataError::WrongType {
            at: field_at(at, f),
            expected: "a string",
            found: json_kind(other).into(),
        }),
    }
}

fn opt_str(row: &Map<String, Json>, f: &str, at: &Location) -> Result<Option<String>> {
    match row.get(f) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(DataError::WrongType {
            at: field_at(at, f),
            expected: "a string",
            found: json_kind(other).into(),
        }),
    }
}

/// Turns rows of one dataset into samples.
pub enum RowEncoder<'a> {
    Instruction { layout: PromptLayout },
    Chat(Box<ChatEncoder<'a>>),
    Completion { field: String },
    InputOutput,
    Pretokenized,
}

impl RowEncoder<'_> {
    /// Rows whose chat template rendered none of their content (0 for other formats).
    pub fn contentless_rows(&self) -> u64 {
        match self {
            RowEncoder::Chat(c) => c.contentless_rows(),
            _ => 0,
        }
    }

    pub fn encode(
        &self,
        tok: &TextTokenizer,
        train_on_inputs: bool,
        row: &Map<String, Json>,
        at: &Location,
    ) -> Result<Sample> {
        match self {
            RowEncoder::Chat(c) => {
                let conv = c.conversation(row, at)?;
                c.encode_conversation(&conv, at)
            }
            RowEncoder::Instruction { layout } => {
                let (prompt, response) = layout.build(row, at)?;
                let mut ids = tok.encode_prompt(&prompt, true)?;
                let prompt_len = ids.len();
                let mut resp = tok.encode_prompt(&response, true)?;
                if let (Some(b), Some(first)) = (&tok.bos, resp.first())
                    && *first == b.id
                {
                    resp.remove(0);
                }
                if let Some(e) = &tok.eos
                    && resp.last() != Some(&e.id)
                {
                    resp.push(e.id);
                }
                ids.extend_from_slice(&resp);
                let labels = ids
                    .iter()
                    .enumerate()
                    .map(|(k, &id)| {
                        if k < prompt_len && !train_on_inputs {
                            IGNORE
                        } else {
                            id as i32
                        }
                    })
                    .collect();
                Ok(Sample {
                    input_ids: ids,
                    labels,
                })
            }
            RowEncoder::Completion { field } => {
                let text = req_str(row, field, at)?;
                let mut ids = tok.encode_prompt(&text, true)?;
                if let Some(e) = &tok.eos
                    && ids.last() != Some(&e.id)
                {
                    ids.push(e.id);
                }
                let labels = ids.iter().map(|&i| i as i32).collect();
                Ok(Sample {
                    input_ids: ids,
                    labels,
                })
            }
            RowEncoder::InputOutput => {
                let segs = match row.get("segments") {
                    Some(Json::Array(a)) => a,
                    Some(other) => {
                        return Err(DataError::WrongType {
                            at: field_at(at, "segments"),
                            expected: "a list of {text, label}",
                            found: json_kind(other).into(),
                        });
                    }
                    None => {
                        return Err(DataError::MissingField {
                            at: field_at(at, "segments"),
                            present: present_keys(row),
                        });
                    }
                };
                let mut s = Sample::default();
                for (i, seg) in segs.iter().enumerate() {
                    let f = |k: &str| field_at(at, &format!("segments[{i}].{k}"));
                    let Json::Object(seg) = seg else {
                        return Err(DataError::WrongType {
                            at: f(""),
                            expected: "an object {text, label}",
                            found: json_kind(seg).into(),
                        });
                    };
                    let text = match seg.get("text") {
                        Some(Json::String(t)) => t,
                        Some(o) => {
                            return Err(DataError::WrongType {
                                at: f("text"),
                                expected: "a string",
                                found: json_kind(o).into(),
                            });
                        }
                        None => {
                            return Err(DataError::MissingField {
                                at: f("text"),
                                present: present_keys(seg),
                            });
                        }
                    };
                    let label = match seg.get("label") {
                        Some(Json::Bool(b)) => *b,
                        None | Some(Json::Null) => true,
                        Some(o) => {
                            return Err(DataError::WrongType {
                                at: f("label"),
                                expected: "a boolean",
                                found: json_kind(o).into(),
                            });
                        }
                    };
                    if text.is_empty() {
                        continue;
                    }
                    let ids = tok.encode_with_offsets(text)?.ids;
                    let trained = label || train_on_inputs;
                    s.labels.extend(
                        ids.iter()
                            .map(|&id| if trained { id as i32 } else { IGNORE }),
                    );
                    s.input_ids.extend(ids);
                }
                Ok(s)
            }
            RowEncoder::Pretokenized => {
                let ints = |f: &str| -> Result<Option<Vec<i64>>> {
                    match row.get(f) {
                        None | Some(Json::Null) => Ok(None),
                        Some(Json::Array(a)) => a
                            .iter()
                            .map(|v| {
                                v.as_i64().ok_or_else(|| DataError::WrongType {
                                    at: field_at(at, f),
                                    expected: "a list of integers",
                                    found: format!("an element that is {}", json_kind(v)),
                                })
                            })
                            .collect::<Result<Vec<_>>>()
                            .map(Some),
                        Some(o) => Err(DataError::WrongType {
                            at: field_at(at, f),
                            expected: "a list of integers",
                            found: json_kind(o).into(),
                        }),
                    }
                };
                let Some(ids) = ints("input_ids")? else {
                    return Err(DataError::MissingField {
                        at: field_at(at, "input_ids"),
                        present: present_keys(row),
                    });
                };
                let input_ids: Vec<u32> = ids
                    .iter()
                    .map(|&i| {
                        u32::try_from(i).map_err(|_| DataError::BadRow {
                            at: field_at(at, "input_ids"),
                            message: format!("token id {i} out of range"),
                        })
                    })
                    .collect::<Result<_>>()?;
                let mut labels: Vec<i32> = match ints("labels")? {
                    Some(l) if l.len() != input_ids.len() => {
                        return Err(DataError::BadRow {
                            at: field_at(at, "labels"),
                            message: format!(
                                "{} labels for {} input_ids",
                                l.len(),
                                input_ids.len()
                            ),
                        });
                    }
                    Some(l) => l.iter().map(|&x| x as i32).collect(),
                    None => input_ids.iter().map(|&i| i as i32).collect(),
                };
                if let Some(mask) = ints("attention_mask")? {
                    for (l, m) in labels.iter_mut().zip(mask) {
                        if m == 0 {
                            *l = IGNORE;
                        }
                    }
                }
                Ok(Sample { input_ids, labels })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_fields_like_python() {
        assert_eq!(
            format_fields("A {instruction} {{x}} {input}", "i", "n"),
            "A i {x} n"
        );
    }

    #[test]
    fn alpaca_prompt_text() {
        let l = PromptLayout::alpaca(AlpacaVariant::Alpaca);
        let row: Map<String, Json> =
            serde_json::from_str(r#"{"instruction":"Say hi","input":"","output":"hi"}"#).unwrap();
        let (p, o) = l.build(&row, &Location::default()).unwrap();
        assert_eq!(
            p,
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nSay hi\n\n### Response:\n"
        );
        assert_eq!(o, "hi");
    }
}
