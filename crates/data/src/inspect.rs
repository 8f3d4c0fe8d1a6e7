//! `runner inspect`: the first samples with trained and masked tokens visibly distinct, the way
//! people check masks in Axolotl's `--debug`. On a terminal trained tokens are green and masked
//! ones dim; otherwise trained runs are wrapped in `⟦ ⟧`.

use crate::sample::{IGNORE, Sample};
use crate::tokenizer::TextTokenizer;
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InspectOptions {
    /// How many samples to show.
    pub samples: usize,
    /// ANSI colours (use when stdout is a terminal).
    pub color: bool,
    /// Also list every token as `id:label:text`.
    pub tokens: bool,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            samples: 5,
            color: false,
            tokens: false,
        }
    }
}

const GREEN: &str = "\x1b[1;32m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Renders the first `opts.samples` samples.
pub fn render(tok: &TextTokenizer, samples: &[Sample], opts: InspectOptions) -> String {
    let mut out = String::new();
    if !opts.color {
        out.push_str("(trained tokens are inside ⟦ ⟧; everything else is masked)\n");
    }
    for (k, s) in samples.iter().take(opts.samples).enumerate() {
        let trained = s.trained_tokens();
        let _ = writeln!(
            out,
            "── sample {k}: {} tokens, {trained} trained ──",
            s.len()
        );
        let mut in_trained = false;
        for (&id, &label) in s.input_ids.iter().zip(&s.labels) {
            let t = label != IGNORE;
            let text = tok.decode_one(id);
            if opts.color {
                out.push_str(if t { GREEN } else { DIM });
                out.push_str(&text);
                out.push_str(RESET);
            } else {
                if t && !in_trained {
                    out.push('⟦');
                }
                if !t && in_trained {
                    out.push('⟧');
                }
                out.push_str(&text);
            }
            in_trained = t;
        }
        if in_trained && !opts.color {
            out.push('⟧');
        }
        out.push('\n');
        if opts.tokens {
            let cells: Vec<String> = s
                .input_ids
                .iter()
                .zip(&s.labels)
                .map(|(&id, &l)| format!("{id}:{l}:{:?}", tok.decode_one(id)))
                .collect();
            let _ = writeln!(out, "{}", cells.join(" "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_trained_runs() {
        let tok = TextTokenizer::builtin("tiny-llama").unwrap();
        let e = tok.encode_with_offsets("ab<|im_end|>c").unwrap();
        let s = Sample {
            labels: vec![IGNORE, e.ids[1] as i32, e.ids[2] as i32, IGNORE],
            input_ids: e.ids,
        };
        let plain = render(&tok, std::slice::from_ref(&s), InspectOptions::default());
        assert!(plain.contains("a⟦b<|im_end|>⟧c"), "{plain}");
        let coloured = render(
            &tok,
            &[s],
            InspectOptions {
                color: true,
                ..Default::default()
            },
        );
        assert!(coloured.contains("\x1b[1;32mb\x1b[0m"), "{coloured}");
    }
}
