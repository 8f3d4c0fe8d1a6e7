//! `runner generate`: a prompt or chat messages through the recipe's model (+ adapter), a
//! merged model or a GGUF file, tokens streamed to stdout as they are chosen.

use anyhow::{Context, bail};
use candle_core::Device;
use runner_data::template::Message;
use runner_recipe::Loaded;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What `runner generate` was asked, as parsed from the command line.
pub struct GenerateArgs {
    pub model: Option<String>,
    pub adapter: Option<PathBuf>,
    pub no_adapter: bool,
    pub prompt: Option<String>,
    pub user: Option<String>,
    pub system: Option<String>,
    pub chat: Option<PathBuf>,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
}

/// Which adapter to apply: `--adapter`, else (unless `--model`/`--no-adapter`) the recipe's
/// `lora_model_dir`, else the adapter a finished run left in `output_dir`, else none.
fn adapter_dir(loaded: &Loaded, given: Option<&Path>, none: bool) -> Option<PathBuf> {
    if let Some(d) = given {
        return Some(d.to_path_buf());
    }
    if none {
        return None;
    }
    let plan = &loaded.plan;
    if let Some(d) = &plan.adapter.init_from {
        return Some(d.clone());
    }
    let out = &plan.train.output_dir;
    out.join(runner_model::peft::WEIGHTS_FILE)
        .is_file()
        .then(|| out.clone())
}

/// Whether `path` carries its own tokenizer (a GGUF, or a folder with tokenizer.json).
fn has_tokenizer(path: &Path) -> bool {
    path.is_file() || path.join("tokenizer.json").is_file()
}

/// The recipe's plan with `--model` / the adapter applied, its tokenizer and the loaded model
/// with the adapter injected (unmerged).
pub struct Chosen {
    pub plan: runner_recipe::plan::Plan,
    pub tok: runner_data::tokenizer::TextTokenizer,
    pub model: runner_model::CausalLm,
    pub adapter: Option<PathBuf>,
}

/// Loads what `--model`, `--adapter` and `--no-adapter` select (see [`adapter_dir`]).
pub fn choose(
    loaded: &Loaded,
    model: Option<&str>,
    adapter: Option<&Path>,
    no_adapter: bool,
) -> anyhow::Result<Chosen> {
    let mut plan = loaded.plan.clone();
    if let Some(m) = model {
        let p = Path::new(m);
        if !p.exists() {
            bail!(
                "--model {m}: no such file or folder (give a merged model folder or a .gguf file)"
            );
        }
        // The model's own tokenizer when it has one, else the recipe's (a model merged from a
        // built-in base has none).
        if has_tokenizer(p) {
            plan.model.tokenizer = None;
        } else if plan.model.tokenizer.is_none() {
            plan.model.tokenizer = Some(plan.model.base_model.clone());
        }
        plan.model.base_model = m.to_string();
        plan.adapter.base_quant = runner_recipe::plan::BaseQuant::None;
    }
    let adapter = adapter_dir(loaded, adapter, no_adapter || model.is_some());
    if let Some(dir) = &adapter {
        runner_pipeline::outdir::check_adapter(dir)?;
        let saved = runner_model::peft::read_config(dir)
            .with_context(|| format!("reading the adapter in {}", dir.display()))?;
        let quant = plan.adapter.base_quant;
        plan.adapter = saved.adapter_plan(Some(dir.clone()));
        // A QLoRA adapter runs against the quantized base it was trained with.
        plan.adapter.base_quant = quant;
    }
    let tok = runner_data::load_tokenizer(&plan.model)?;
    let model_plan = runner_pipeline::inputs::materialized(&plan.model)?;
    let mut model = runner_model::load(&model_plan, &Device::Cpu)?.model;
    if adapter.is_some() {
        runner_model::inject(&mut model, &plan.adapter, plan.train.seed)?;
    }
    Ok(Chosen {
        plan,
        tok,
        model,
        adapter,
    })
}

pub fn generate(loaded: &Loaded, a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let Chosen {
        plan,
        tok,
        model,
        adapter,
    } = choose(
        loaded,
        a.model.as_deref(),
        a.adapter.as_deref(),
        a.no_adapter,
    )?;
    let (prompt_ids, stop) = prompt_ids(&plan, &tok, &a)?;
    eprintln!(
        "model {}{}; prompt {} tokens",
        plan.model.base_model,
        match &adapter {
            Some(d) => format!(" + adapter {}", d.display()),
            None => " (no adapter)".into(),
        },
        prompt_ids.len()
    );

    let sampling = if a.temperature == 0.0 {
        runner_model::Sampling::Greedy
    } else {
        runner_model::Sampling::Sample {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
        }
    };
    let opts = runner_model::GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling,
        seed: a.seed.unwrap_or(plan.train.seed),
        stop: stop.clone(),
    };
    // Streaming: decode everything generated so far and print what is new, holding back an
    // incomplete UTF-8 sequence (shown as U+FFFD) until its last byte arrives.
    let mut ids: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout().lock();
    let started = std::time::Instant::now();
    let out = runner_model::generate(&model, &prompt_ids, &opts, |t| {
        if stop.contains(&t) {
            return Ok(());
        }
        ids.push(t);
        let text = tok.decode(&ids, true).unwrap_or_default();
        if !text.ends_with('\u{FFFD}') && text.len() > printed && text.is_char_boundary(printed) {
            let _ = stdout.write_all(&text.as_bytes()[printed..]);
            let _ = stdout.flush();
            printed = text.len();
        }
        Ok(())
    })?;
    let text = tok.decode(&ids, true)?;
    if text.len() > printed && text.is_char_boundary(printed) {
        stdout.write_all(&text.as_bytes()[printed..])?;
    }
    writeln!(stdout)?;
    let secs = started.elapsed().as_secs_f64();
    let ended = match out.last() {
        Some(t) if stop.contains(t) => "stop token",
        _ => "max_new_tokens",
    };
    eprintln!(
        "{} tokens in {secs:.2} s ({:.1} tokens/s), ended by {ended}",
        out.len(),
        out.len() as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// The prompt's token ids and the ids that stop generation. Chat messages go through the chat
/// template the recipe trains with (its first `chat_template` dataset's, else the recipe-wide
/// one), rendered with the generation prompt and tokenized exactly as training tokenizes.
fn prompt_ids(
    plan: &runner_recipe::plan::Plan,
    tok: &runner_data::tokenizer::TextTokenizer,
    a: &GenerateArgs,
) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    let given = [a.prompt.is_some(), a.user.is_some(), a.chat.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given != 1 {
        bail!(
            "give exactly one of --prompt TEXT (plain text), --user TEXT (a chat message) or --chat FILE (a JSON list of {{\"role\", \"content\"}} messages)"
        );
    }
    let eos: Vec<u32> = tok.eos.iter().map(|e| e.id).collect();
    if let Some(p) = &a.prompt {
        if a.system.is_some() {
            bail!("--system applies to chat messages (--user or --chat), not to --prompt");
        }
        return Ok((tok.encode_prompt(p, true)?, eos));
    }
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message {
            role: "system".into(),
            content: s.clone(),
        });
    }
    if let Some(u) = &a.user {
        messages.push(Message {
            role: "user".into(),
            content: u.clone(),
        });
    }
    if let Some(file) = &a.chat {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading --chat {}", file.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("--chat {}: not JSON", file.display()))?;
        let list = v
            .as_array()
            .or_else(|| v.get("messages").and_then(|m| m.as_array()));
        let Some(list) = list else {
            bail!(
                "--chat {}: expected a list of {{\"role\", \"content\"}} objects (or {{\"messages\": [...]}})",
                file.display()
            );
        };
        for (i, m) in list.iter().enumerate() {
            let (Some(role), Some(content)) = (
                m.get("role").and_then(|r| r.as_str()),
                m.get("content").and_then(|c| c.as_str()),
            ) else {
                bail!(
                    "--chat {}: message {i} needs string `role` and `content`",
                    file.display()
                );
            };
            messages.push(Message {
                role: role.into(),
                content: content.into(),
            });
        }
    }
    let (source, t) = runner_pipeline::export::training_template(plan, tok)?;
    let origin = t.origin.clone();
    let text = t
        .render(&messages, true)
        .map_err(|e| anyhow::anyhow!("chat template {origin}: {e:#}"))?;
    let ids = tok.encode_with_offsets(&text)?.ids;
    Ok((ids, runner_data::chat::turn_end_ids(&source, tok)))
}

/// `runner export-gguf`: the recipe's model with its adapter merged (or a merged folder, or a
/// GGUF) written as a llama GGUF with tokenizer and chat template, then read back and compared.
pub fn export_gguf(
    loaded: &Loaded,
    model: Option<&str>,
    adapter: Option<&Path>,
    no_adapter: bool,
    out: &Path,
    ty: &str,
    force: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let ty = runner_export::gguf::GgufType::parse(ty)?;
    if out.exists() && !force {
        anyhow::bail!(
            "{} already exists; choose another name or pass --force to overwrite it",
            out.display()
        );
    }
    let c = choose(loaded, model, adapter, no_adapter)?;
    runner_pipeline::export::write_and_check(
        &c.plan,
        &c.tok,
        &c.model,
        c.adapter.as_deref(),
        out,
        ty,
        force,
    )?;
    Ok(std::process::ExitCode::SUCCESS)
}
