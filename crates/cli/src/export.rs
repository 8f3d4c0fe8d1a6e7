//! `runner export-gguf`: the recipe's model with its adapter merged (or a merged folder, or a
//! GGUF) written as a llama GGUF with tokenizer and chat template, then read back and compared.

use crate::generate::{Chosen, choose, training_template};
use anyhow::Context;
use runner_export::gguf::{GgufTokenizer, GgufType, SpecialIds};
use runner_recipe::Loaded;
use std::path::Path;

/// The GGUF tokenizer metadata for `tok`: copied from its GGUF when it came from one (exactly
/// what llama.cpp wrote), else converted from its tokenizer.json; the chat template is the one
/// the recipe trains with.
pub fn gguf_tokenizer(
    plan: &runner_recipe::plan::Plan,
    tok: &runner_data::tokenizer::TextTokenizer,
) -> anyhow::Result<GgufTokenizer> {
    let mut g = if tok.path.extension().is_some_and(|e| e == "gguf") {
        GgufTokenizer::from_gguf(&tok.path)?
    } else {
        let special = SpecialIds {
            bos: tok.bos.as_ref().map(|t| t.id),
            eos: tok.eos.as_ref().map(|t| t.id),
            pad: tok.pad.as_ref().map(|t| t.id),
            add_bos: tok.add_bos,
        };
        GgufTokenizer::from_tokenizer_json(&tok.to_json()?, &special, &tok.path)?
    };
    match training_template(plan, tok) {
        Ok((source, _)) => g.set_chat_template(&source),
        Err(e) => eprintln!("note: no chat template written to the GGUF ({e:#})"),
    }
    Ok(g)
}

/// Writes `model` to `out` as a GGUF of type `ty`, then loads it back and prints the largest
/// logit difference against `model` on a few fixed sequences.
pub fn write_and_check(
    chosen: &Chosen,
    out: &Path,
    ty: GgufType,
    force: bool,
) -> anyhow::Result<()> {
    let g = gguf_tokenizer(&chosen.plan, &chosen.tok)?;
    let name = Path::new(&chosen.plan.model.base_model)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let report = runner_export::write_gguf(&chosen.model, &g, &name, out, ty, force)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({}, {} tensors, {} bytes{}); {} adapted layer(s) merged{}",
        out.display(),
        ty.name(),
        report.tensors,
        report.bytes,
        if report.kept_f16.is_empty() {
            String::new()
        } else {
            format!(
                ", {} matrices in f16 (rows not a multiple of 32)",
                report.kept_f16.len()
            )
        },
        report.merged_modules,
        match &chosen.adapter {
            Some(d) => format!(" from {}", d.display()),
            None => String::new(),
        }
    );
    let vocab = chosen.model.cfg.vocab_size as u32;
    let rows: Vec<Vec<u32>> = (0..2u32)
        .map(|r| (0..16u32).map(|i| (3 + r * 37 + i * 11) % vocab).collect())
        .collect();
    let diff = runner_export::gguf::max_logit_difference(&chosen.model, out, &rows)?;
    println!(
        "largest logit difference, model vs the GGUF read back: {diff:.3e} (relative to the largest logit)"
    );
    Ok(())
}

pub fn export_gguf(
    loaded: &Loaded,
    model: Option<&str>,
    adapter: Option<&Path>,
    no_adapter: bool,
    out: &Path,
    ty: &str,
    force: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let ty = GgufType::parse(ty)?;
    if out.exists() && !force {
        anyhow::bail!(
            "{} already exists; choose another name or pass --force to overwrite it",
            out.display()
        );
    }
    let chosen = choose(loaded, model, adapter, no_adapter)?;
    write_and_check(&chosen, out, ty, force)?;
    Ok(std::process::ExitCode::SUCCESS)
}
