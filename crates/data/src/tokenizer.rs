//! The text tokenizer: loaded from a `tokenizer.json` folder or rebuilt from GGUF metadata, with
//! the special tokens and chat templates its config names.
//!
//! From a GGUF we build what transformers' `convert_gguf_tokenizer` (5.24) builds:
//! - byte-level BPE (`tokenizer.ggml.model = gpt2`): BPE over the file's vocabulary and merges,
//!   GPT-2 byte-level pre-tokenizer (or llama.cpp's split regex for the `tokenizer.ggml.pre`
//!   values transformers knows), control tokens (type 3) special, user-defined ones (type 4)
//!   plain added tokens;
//! - sentencepiece (`llama`, except Gemma and Phi-3 which transformers special-cases): BPE with
//!   byte fallback, merges recovered from the piece scores, Metaspace pre-tokenizer.
//!
//! Both are checked against transformers on real files (tests/parity.rs).

use crate::error::{DataError, Result};
use crate::gguf;
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use tokenizers::{AddedToken, Tokenizer};

/// A special token and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
}

/// Special tokens and added vocabulary the recipe asks for (`special_tokens`, `tokens`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerOverrides {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub added_tokens: Vec<String>,
}

impl TokenizerOverrides {
    pub fn from_model_plan(m: &runner_recipe::plan::ModelPlan) -> Self {
        TokenizerOverrides {
            bos_token: m.special_tokens.bos_token.clone(),
            eos_token: m.special_tokens.eos_token.clone(),
            pad_token: m.special_tokens.pad_token.clone(),
            added_tokens: m.added_tokens.clone(),
        }
    }
}

pub struct TextTokenizer {
    pub(crate) inner: Tokenizer,
    pub bos: Option<SpecialToken>,
    pub eos: Option<SpecialToken>,
    pub pad: Option<SpecialToken>,
    /// Whether plain-text prompts start with BOS (the config's `add_bos_token`, or what the
    /// `tokenizer.json` post-processor does).
    pub add_bos: bool,
    /// Chat templates the tokenizer carries, `(name, jinja)`; the unnamed one is `default`.
    pub chat_templates: Vec<(String, String)>,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// blake3 of everything that decides tokenization; part of the cache key.
    pub fingerprint: String,
    /// The post-processor adds BOS itself (tokenizer.json); else we add it when `add_bos`.
    post_processor_adds_bos: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// Token ids and, for each, the byte range of the input text it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

impl TextTokenizer {
    /// Loads from a `.gguf` file, a folder holding `tokenizer.json`, or a `tokenizer.json` file.
    pub fn load(path: &Path, overrides: &TokenizerOverrides) -> Result<Self> {
        let mut t = if path.extension().is_some_and(|e| e == "gguf") {
            Self::from_gguf(path)?
        } else if path.is_dir() {
            Self::from_hf_files(&path.join("tokenizer.json"))?
        } else if path.is_file() {
            Self::from_hf_files(path)?
        } else {
            return Err(DataError::Tokenizer {
                path: path.to_path_buf(),
                message: "no such file or folder (expected a .gguf file, a tokenizer.json or a folder holding one)".into(),
            });
        };
        t.apply_overrides(overrides)?;
        Ok(t)
    }

    /// The tokenizer of runner's built-in test models (`base_model: builtin:tiny-llama`): byte-level
    /// BPE with no merges. Ids: `<|endoftext|>` 0, `<|im_start|>` 1 (BOS), `<|im_end|>` 2 (EOS),
    /// then the 256 bytes at 3..=258, so 259 ids in all; the ChatML template; no BOS added.
    pub fn builtin(name: &str) -> Result<Self> {
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
        let (tok_json, _) = byte_level_json(&specials, &[], false);
        let inner: Tokenizer = tok_json.parse().map_err(|e| DataError::Tokenizer {
            path: PathBuf::from(format!("builtin:{name}")),
            message: format!("{e}"),
        })?;
        let mut h = blake3::Hasher::new();
        h.update(tok_json.as_bytes());
        Ok(TextTokenizer {
            inner,
            bos: Some(SpecialToken {
                text: specials[1].into(),
                id: 1,
            }),
            eos: Some(SpecialToken {
                text: specials[2].into(),
                id: 2,
            }),
            pad: Some(SpecialToken {
                text: specials[2].into(),
                id: 2,
            }),
            add_bos: false,
            chat_templates: vec![(
                "default".into(),
                crate::template::named_template_source(runner_recipe::plan::NamedTemplate::Chatml)
                    .into(),
            )],
            path: PathBuf::from(format!("builtin:{name}")),
            fingerprint: h.finalize().to_hex().to_string(),
            post_processor_adds_bos: false,
        })
    }

    /// The id batches are padded with: `pad_token`, else EOS, else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad.as_ref().or(self.eos.as_ref()).map_or(0, |t| t.id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn from_gguf(path: &Path) -> Result<Self> {
        let md = gguf::read_metadata(path).map_err(|e| match e {
            gguf::GgufError::Io(e) => DataError::io(e.path, e.source),
            gguf::GgufError::Corrupt { path, message } => DataError::Tokenizer { path, message },
        })?;
        let bad = |m: String| DataError::Tokenizer {
            path: path.to_path_buf(),
            message: m,
        };
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let sentencepiece = model == "llama" && !arch.starts_with("gemma") && arch != "phi3";
        if model != "gpt2" && !sentencepiece {
            return Err(bad(format!(
                "GGUF tokenizer `{model}` (architecture `{arch}`) is not supported yet (byte-level \
                 BPE `gpt2` and sentencepiece `llama` are); point `tokenizer_config` at a folder \
                 with tokenizer.json instead"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            md.get(key)
                .and_then(|v| v.as_array())
                .ok_or_else(|| bad(format!("metadata `{key}` missing")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("`{key}` holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<u64> = md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let spec = if sentencepiece {
            let scores: Vec<f64> = md
                .get("tokenizer.ggml.scores")
                .and_then(|v| v.as_array())
                .ok_or_else(|| bad("metadata `tokenizer.ggml.scores` missing".into()))?
                .iter()
                .map(|v| match v {
                    gguf::Value::F64(f) => *f,
                    _ => 0.0,
                })
                .collect();
            let unk = md
                .get("tokenizer.ggml.unknown_token_id")
                .and_then(|v| v.as_u64());
            spm_spec(&tokens, &scores, &types, unk)
        } else {
            let merges = strings("tokenizer.ggml.merges")?;
            let pre = md
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            gpt2_spec(&tokens, &types, merges, pre)
        };
        let spec_text = spec.to_string();
        let inner: Tokenizer = spec_text
            .parse()
            .map_err(|e| bad(format!("cannot build the tokenizer: {e}")))?;
        let token_at = |key: &str| -> Option<SpecialToken> {
            let id = md.get(key)?.as_u64()? as u32;
            Some(SpecialToken {
                text: tokens.get(id as usize)?.clone(),
                id,
            })
        };
        // transformers: older sentencepiece files carry no flag, and llama.cpp adds BOS then.
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(sentencepiece);
        let mut chat_templates = Vec::new();
        if let Some(t) = md.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            chat_templates.push(("default".to_string(), t.to_string()));
        }
        for (k, v) in &md {
            if let (Some(name), Some(t)) = (k.strip_prefix("tokenizer.chat_template."), v.as_str())
            {
                chat_templates.push((name.to_string(), t.to_string()));
            }
        }
        let mut h = blake3::Hasher::new();
        h.update(spec_text.as_bytes());
        h.update(format!("{add_bos}").as_bytes());
        Ok(TextTokenizer {
            inner,
            bos: token_at("tokenizer.ggml.bos_token_id"),
            eos: token_at("tokenizer.ggml.eos_token_id"),
            pad: token_at("tokenizer.ggml.padding_token_id"),
            add_bos,
            chat_templates,
            path: path.to_path_buf(),
            fingerprint: h.finalize().to_hex().to_string(),
            post_processor_adds_bos: false,
        })
    }

    fn from_hf_files(tokenizer_json: &Path) -> Result<Self> {
        let bad = |m: String| DataError::Tokenizer {
            path: tokenizer_json.to_path_buf(),
            message: m,
        };
        let bytes = std::fs::read(tokenizer_json).map_err(|e| DataError::io(tokenizer_json, e))?;
        let inner = Tokenizer::from_bytes(&bytes).map_err(|e| bad(format!("cannot parse: {e}")))?;
        let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
        let config_path = dir.join("tokenizer_config.json");
        let config: Json = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| DataError::io(&config_path, e))?;
            serde_json::from_str(&text).map_err(|e| DataError::Tokenizer {
                path: config_path.clone(),
                message: format!("malformed JSON: {e}"),
            })?
        } else {
            json!({})
        };
        let token_of = |key: &str| -> Option<SpecialToken> {
            let v = config.get(key)?;
            let text = match v {
                Json::String(s) => s.clone(),
                Json::Object(o) => o.get("content")?.as_str()?.to_string(),
                _ => return None,
            };
            let id = inner.token_to_id(&text)?;
            Some(SpecialToken { text, id })
        };
        let bos = token_of("bos_token");
        // What the post-processor does decides BOS for text prompts; probe it.
        let probe = inner.encode("a", true).map_err(|e| bad(format!("{e}")))?;
        let post_processor_adds_bos = bos
            .as_ref()
            .is_some_and(|b| probe.get_ids().first() == Some(&b.id));
        let add_bos = post_processor_adds_bos
            || config
                .get("add_bos_token")
                .and_then(Json::as_bool)
                .unwrap_or(false);
        let mut chat_templates = Vec::new();
        match config.get("chat_template") {
            Some(Json::String(s)) => chat_templates.push(("default".to_string(), s.clone())),
            Some(Json::Array(list)) => {
                for item in list {
                    if let (Some(n), Some(t)) = (
                        item.get("name").and_then(Json::as_str),
                        item.get("template").and_then(Json::as_str),
                    ) {
                        chat_templates.push((n.to_string(), t.to_string()));
                    }
                }
            }
            _ => {}
        }
        let jinja_file = dir.join("chat_template.jinja");
        if chat_templates.is_empty() && jinja_file.is_file() {
            let t =
                std::fs::read_to_string(&jinja_file).map_err(|e| DataError::io(&jinja_file, e))?;
            chat_templates.push(("default".to_string(), t));
        }
        let mut h = blake3::Hasher::new();
        h.update(&bytes);
        h.update(config.to_string().as_bytes());
        Ok(TextTokenizer {
            eos: token_of("eos_token"),
            pad: token_of("pad_token"),
            bos,
            inner,
            add_bos,
            chat_templates,
            path: tokenizer_json.to_path_buf(),
            fingerprint: h.finalize().to_hex().to_string(),
            post_processor_adds_bos,
        })
    }

    pub fn apply_overrides(&mut self, o: &TokenizerOverrides) -> Result<()> {
        let mut h = blake3::Hasher::new();
        h.update(self.fingerprint.as_bytes());
        let path = self.path.clone();
        let fail = |e: tokenizers::Error| DataError::Tokenizer {
            path: path.clone(),
            message: format!("cannot add tokens: {e}"),
        };
        let mut set = |slot: &mut Option<SpecialToken>,
                       text: &Option<String>,
                       inner: &mut Tokenizer|
         -> Result<()> {
            if let Some(text) = text {
                h.update(text.as_bytes());
                let id = match inner.token_to_id(text) {
                    Some(id) => id,
                    None => {
                        inner
                            .add_special_tokens([AddedToken::from(text.clone(), true)])
                            .map_err(fail)?;
                        inner.token_to_id(text).unwrap_or(0)
                    }
                };
                *slot = Some(SpecialToken {
                    text: text.clone(),
                    id,
                });
            }
            Ok(())
        };
        set(&mut self.bos, &o.bos_token, &mut self.inner)?;
        set(&mut self.eos, &o.eos_token, &mut self.inner)?;
        set(&mut self.pad, &o.pad_token, &mut self.inner)?;
        if !o.added_tokens.is_empty() {
            let new: Vec<AddedToken> = o
                .added_tokens
                .iter()
                .map(|t| AddedToken::from(t.clone(), false))
                .collect();
            self.inner
                .add_tokens(new)
                .map_err(|e| DataError::Tokenizer {
                    path: self.path.clone(),
                    message: format!("cannot add tokens: {e}"),
                })?;
            for t in &o.added_tokens {
                h.update(t.as_bytes());
            }
        }
        self.fingerprint = h.finalize().to_hex().to_string();
        Ok(())
    }

    /// Tokenizes without special tokens, with byte offsets into `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    /// Tokenizes a plain-text prompt as `tokenizer(text)` does: BOS first when the tokenizer adds it.
    pub fn encode_prompt(&self, text: &str, with_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, with_bos && self.post_processor_adds_bos)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        let mut ids = enc.get_ids().to_vec();
        if with_bos
            && self.add_bos
            && !self.post_processor_adds_bos
            && let Some(b) = &self.bos
        {
            ids.insert(0, b.id);
        }
        Ok(ids)
    }

    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Decodes one token to the text it stands for (special tokens as written).
    pub fn decode_one(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }

    /// The tokenizer as `tokenizer.json` text (what the GGUF export converts).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Decodes ids to text, as `tokenizer.decode(ids, skip_special_tokens=...)` does.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (special tokens, `add_bos_token`,
    /// the chat templates) into `dir`, as `tokenizer.save_pretrained(output_dir)` does in
    /// Axolotl, so that the adapter folder carries the vocabulary it was trained with (tokens
    /// the recipe added included) and `AutoTokenizer.from_pretrained(dir)` and runner read it
    /// back. Each file goes to a temporary name first and is renamed.
    pub fn save_pretrained(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::write(dir, e))?;
        let tok_json = self
            .inner
            .to_string(true)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot serialize: {e}"),
            })?;
        let mut config = serde_json::Map::new();
        config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        config.insert("add_bos_token".into(), json!(self.add_bos));
        for (key, tok) in [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("pad_token", &self.pad),
        ] {
            if let Some(t) = tok {
                config.insert(key.into(), json!(t.text));
            }
        }
        match self.chat_templates.as_slice() {
            [] => {}
            [(name, t)] if name == "default" => {
                config.insert("chat_template".into(), json!(t));
            }
            many => {
                let list: Vec<Json> = many
                    .iter()
                    .map(|(n, t)| json!({"name": n, "template": t}))
                    .collect();
                config.insert("chat_template".into(), Json::Array(list));
            }
        }
        let config = serde_json::to_string_pretty(&Json::Object(config)).unwrap_or_default();
        let mut written = Vec::new();
        for (name, text) in [
            ("tokenizer.json", tok_json),
            ("tokenizer_config.json", config),
        ] {
            let path = dir.join(name);
            runner_io::atomic::write(&path, text.as_bytes())
                .map_err(|e| DataError::write(&e.path, e.source))?;
            written.push(path);
        }
        Ok(written)
    }

    /// The named chat template the tokenizer carries (`None` = its default one).
    pub fn chat_template(&self, name: Option<&str>) -> Option<&str> {
        let want = name.unwrap_or("default");
        self.chat_templates
            .iter()
            .find(|(n, _)| n == want)
            .map(|(_, t)| t.as_str())
    }
}

/// transformers' GGUF byte-level BPE (`GPT2Tokenizer` over the file's vocabulary and merges).
fn gpt2_spec(tokens: &[String], types: &[u64], merges: Vec<String>, pre: &str) -> Json {
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let spelled = if t.chars().all(|c| alphabet.contains(&c)) {
            t.clone()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, json!(i));
    }
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(types.iter()).enumerate() {
        let control = *ty == 3 && t.chars().all(|c| alphabet.contains(&c));
        if control || *ty == 4 {
            added.push(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": control}),
            );
        }
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match split_regex(pre) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
        None => byte_level.clone(),
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    })
}

/// transformers' GGUF sentencepiece (`LlamaTokenizer`): BPE with byte fallback over the file's
/// pieces, merges recovered from the scores exactly as `generate_merges` does, Metaspace with
/// `prepend_scheme: first`, control tokens (and `<unk>`) special.
fn spm_spec(tokens: &[String], scores: &[f64], types: &[u64], unk: Option<u64>) -> Json {
    // Python dicts: a repeated piece keeps its first position and its last id and score.
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut index = std::collections::HashMap::with_capacity(tokens.len());
    let mut score_of = std::collections::HashMap::with_capacity(tokens.len());
    for (i, (t, &sc)) in tokens.iter().zip(scores).enumerate() {
        vocab.insert(t.clone(), json!(i));
        index.insert(t.as_str(), i);
        score_of.insert(t.as_str(), sc);
    }
    // generate_merges(vocab, vocab_scores): every split of every piece into two pieces that are
    // both in the vocabulary, per piece ordered by the ids of its halves, then all ordered by
    // score (high first), then by the lengths (in characters) of the halves, longest first.
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in tokens {
        if !seen.insert(t.as_str()) {
            continue;
        }
        let score = score_of.get(t.as_str()).copied().unwrap_or(0.0);
        let mut local: Vec<(&str, &str, f64)> = t
            .char_indices()
            .skip(1)
            .map(|(k, _)| (&t[..k], &t[k..], score))
            .filter(|(l, r, _)| index.contains_key(l) && index.contains_key(r))
            .collect();
        local.sort_by_key(|(l, r, _)| (index[l], index[r]));
        merges.extend(local);
    }
    merges.sort_by(|a, b| {
        b.2.partial_cmp(&a.2)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| b.0.chars().count().cmp(&a.0.chars().count()))
            .then_with(|| b.1.chars().count().cmp(&a.1.chars().count()))
    });
    let merges: Vec<Json> = merges.iter().map(|(l, r, _)| json!([l, r])).collect();
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(types).enumerate() {
        let special = *ty == 3 || Some(i as u64) == unk;
        if special || *ty == 4 {
            added.push(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special}),
            );
        }
    }
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    })
}

/// A byte-level BPE `tokenizer.json`: `specials` first (ids 0..), then the 256 byte tokens, then
/// one token per merge. With `bos_post_processor`, the post-processor prepends `specials[2]`.
pub(crate) fn byte_level_json(
    specials: &[&str],
    merges: &[&str],
    bos_post_processor: bool,
) -> (String, usize) {
    let table = bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    for (i, t) in specials.iter().enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    let n = specials.len();
    for (b, c) in table.iter().enumerate() {
        vocab.insert(c.to_string(), json!(n + b));
    }
    for (k, m) in merges.iter().enumerate() {
        vocab.insert(m.replace(' ', ""), json!(n + 256 + k));
    }
    let added: Vec<Json> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let post = if bos_post_processor && specials.len() > 2 {
        let b = specials[2];
        json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b: {"id": b, "ids": [2], "tokens": [b]}}})
    } else {
        Json::Null
    };
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });
    (tok.to_string(), n + 256 + merges.len())
}

/// GPT-2's byte → printable-character table.
pub(crate) fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap_or(' ');
    }
    table
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers (5.24, `GGUF_PRE_TOKENIZER_SPLITS`) uses for a `tokenizer.ggml.pre`.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tokenizer_fits_the_tiny_model_ids() {
        let t = TextTokenizer::builtin("tiny-llama").unwrap();
        assert_eq!(t.vocab_size(), 259);
        let e = t
            .encode_with_offsets("<|im_start|>user\nhé<|im_end|>")
            .unwrap();
        assert_eq!(e.ids[0], 1);
        assert_eq!(*e.ids.last().unwrap(), 2);
        assert_eq!(e.ids.len(), 2 + 4 + 1 + 3);
        assert_eq!(t.decode_one(e.ids[6]), "h");
    }

    /// Issue 7: the tokenizer with the recipe's added tokens, saved into the output folder,
    /// reads back with the same ids, special tokens and chat template.
    #[test]
    fn save_pretrained_round_trips_added_tokens() {
        let mut t = TextTokenizer::builtin("tiny-llama").unwrap();
        t.apply_overrides(&TokenizerOverrides {
            pad_token: Some("<|pad|>".into()),
            added_tokens: vec!["<|tool|>".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.vocab_size(), 261);
        let dir = tempfile::tempdir().unwrap();
        t.save_pretrained(dir.path()).unwrap();
        let back = TextTokenizer::load(dir.path(), &TokenizerOverrides::default()).unwrap();
        assert_eq!(back.vocab_size(), 261);
        let text = "<|im_start|>user\n<|tool|>hé<|pad|><|im_end|>";
        assert_eq!(
            back.encode_with_offsets(text).unwrap(),
            t.encode_with_offsets(text).unwrap()
        );
        assert_eq!(back.token_to_id("<|tool|>"), t.token_to_id("<|tool|>"));
        assert_eq!(back.pad, t.pad);
        assert_eq!(back.eos, t.eos);
        assert_eq!(back.chat_template(None), t.chat_template(None));
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn named_template_list_form() {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::write_tiny_tokenizer(dir.path(), false).unwrap();
        let cfg = json!({"bos_token": {"content": "<s>", "special": true}, "eos_token": "<|im_end|>",
            "chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]});
        std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
        let t = TextTokenizer::load(dir.path(), &TokenizerOverrides::default()).unwrap();
        assert_eq!(t.chat_template(None), Some("D"));
        assert_eq!(t.chat_template(Some("tool_use")), Some("T"));
        assert_eq!(t.bos.as_ref().map(|b| b.id), Some(2));
    }
}
