//! Stage 5, export: what `merge_adapter` / `export_gguf` ask for after training (a merged
//! Hugging Face folder, GGUF files), each read back and compared with the trained model; the
//! same functions serve `runner export-gguf` and `runner merge --base FILE.gguf`.

use crate::error::{Context, Result};
use runner_data::template::ChatTemplate;
use runner_export::gguf::{GgufTokenizer, GgufType, SpecialIds};
use std::path::Path;

/// The chat template the recipe trains with (its first `chat_template` dataset's, else the
/// recipe-wide one), compiled with the tokenizer's special tokens as the data stage does.
pub fn training_template(
    plan: &runner_recipe::plan::Plan,
    tok: &runner_data::tokenizer::TextTokenizer,
) -> Result<(String, ChatTemplate)> {
    let template = crate::inputs::training_template_choice(plan);
    let (source, origin) = runner_data::prepare::template_source(&template, tok)?;
    let bos = tok.bos.as_ref().map(|t| t.text.as_str()).unwrap_or("");
    let eos_text = tok.eos.as_ref().map(|t| t.text.as_str()).unwrap_or("");
    let mut t = ChatTemplate::new(&source, &origin, bos, eos_text)?;
    if let Some(p) = &tok.pad {
        t = t.with_variable("pad_token", &p.text);
    }
    // `chat_template_kwargs` (recipe-wide, e.g. Qwen3's `enable_thinking`) render generation
    // prompts as they rendered the training data.
    let kwargs = plan.data.datasets.iter().find_map(|d| match &d.format {
        runner_recipe::plan::DatasetFormat::ChatTemplate(c) => Some(&c.extras.template_kwargs),
        _ => None,
    });
    if let Some(kwargs) = kwargs {
        t = t.with_kwargs(kwargs);
    }
    Ok((source, t))
}

/// The GGUF tokenizer metadata for `tok`: copied from its GGUF when it came from one (exactly
/// what llama.cpp wrote), else converted from its tokenizer.json; the chat template is the one
/// the recipe trains with.
pub fn gguf_tokenizer(
    plan: &runner_recipe::plan::Plan,
    tok: &runner_data::tokenizer::TextTokenizer,
) -> Result<GgufTokenizer> {
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
    plan: &runner_recipe::plan::Plan,
    tok: &runner_data::tokenizer::TextTokenizer,
    model: &runner_model::CausalLm,
    adapter: Option<&Path>,
    out: &Path,
    ty: GgufType,
    force: bool,
) -> Result<()> {
    let g = gguf_tokenizer(plan, tok)?;
    let name = model_name(plan);
    let report = runner_export::write_gguf(model, &g, &name, out, ty, force)
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
        match adapter {
            Some(d) => format!(" from {}", d.display()),
            None => String::new(),
        }
    );
    let vocab = model.cfg.vocab_size as u32;
    let rows: Vec<Vec<u32>> = (0..2u32)
        .map(|r| (0..16u32).map(|i| (3 + r * 37 + i * 11) % vocab).collect())
        .collect();
    let diff = runner_export::gguf::max_logit_difference(model, out, &rows)?;
    println!(
        "largest logit difference, model vs the GGUF read back: {diff:.3e} (relative to the largest logit)"
    );
    Ok(())
}

/// The model's name for file names and `general.name`: the base model's file or folder name.
pub fn model_name(plan: &runner_recipe::plan::Plan) -> String {
    let b = plan.model.base_model.trim_end_matches('/');
    let b = b.strip_prefix("builtin:").unwrap_or(b);
    Path::new(b)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// What `merge_adapter` / `export_gguf` ask for at the end of `runner run`, from the trained
/// model in memory (GGUF) and the adapter just saved (merged folder).
pub fn after_training(
    plan: &runner_recipe::plan::Plan,
    tok: &runner_data::tokenizer::TextTokenizer,
    model: &runner_model::CausalLm,
    base_plan: &runner_recipe::plan::ModelPlan,
) -> Result<()> {
    use runner_recipe::plan::MergedDtype;
    let out = &plan.train.output_dir;
    let e = &plan.export;
    if e.merge_adapter {
        let dtype = match e.merged_dtype {
            MergedDtype::F32 => candle_core::DType::F32,
            MergedDtype::Bf16 => candle_core::DType::BF16,
            MergedDtype::F16 => candle_core::DType::F16,
        };
        let merged = out.join("merged");
        let base = plan.adapter.base_quant;
        let base_dir = match runner_model::load::resolve(
            &base_plan.base_model,
            base_plan.revision.as_deref(),
        )? {
            runner_model::load::Checkpoint::Folder(d) => d,
            runner_model::load::Checkpoint::Gguf(_) => {
                // A GGUF base: merged in memory from the trained model (whose quantized base,
                // if any, is what the adapter trained against).
                let (report, diff) = write_folder_and_check(model, tok, &merged, dtype, true)?;
                println!(
                    "merged:  {} ({} module(s), {dtype:?}, from the GGUF base; largest logit difference vs base + adapter {diff:.3e})",
                    merged.display(),
                    report.merged_modules,
                );
                return export_ggufs(plan, tok, model, e);
            }
        };
        let report =
            runner_export::merge::merge_folder_into(&base_dir, out, &merged, dtype, true, base)?;
        let rows: Vec<Vec<u32>> = (0..2u32)
            .map(|r| {
                (0..16u32)
                    .map(|i| (3 + r * 37 + i * 11) % model.cfg.vocab_size as u32)
                    .collect()
            })
            .collect();
        let diff =
            runner_export::merge::max_logit_difference_on(&base_dir, out, &merged, &rows, base)?;
        println!(
            "merged:  {} ({} module(s), {:?}, into the {} base; largest logit difference vs base + adapter {diff:.3e})",
            merged.display(),
            report.merged_modules.len(),
            report.dtype,
            match base {
                runner_recipe::plan::BaseQuant::None => "stored",
                runner_recipe::plan::BaseQuant::Nf4 => "NF4 round-tripped",
                runner_recipe::plan::BaseQuant::Int8 => "int8 round-tripped",
            }
        );
    }
    export_ggufs(plan, tok, model, e)
}

fn export_ggufs(
    plan: &runner_recipe::plan::Plan,
    tok: &runner_data::tokenizer::TextTokenizer,
    model: &runner_model::CausalLm,
    e: &runner_recipe::plan::ExportPlan,
) -> Result<()> {
    use runner_recipe::plan::GgufQuant;
    let out = &plan.train.output_dir;
    for q in &e.gguf {
        let ty = match q {
            GgufQuant::F32 => GgufType::F32,
            GgufQuant::F16 => GgufType::F16,
            GgufQuant::Q8_0 => GgufType::Q8_0,
        };
        let file = out.join(format!("{}-{}.gguf", model_name(plan), ty.name()));
        write_and_check(plan, tok, model, Some(out), &file, ty, true)?;
    }
    Ok(())
}

/// `runner merge --base FILE.gguf`: the GGUF base dequantized, the adapter injected (into the
/// NF4/int8 round-tripped base with `--dequantized-base`), merged and written as a Hugging Face
/// folder with config.json and the tokenizer rebuilt from the GGUF; then loaded back and
/// compared with base + adapter.
pub fn merge_gguf_base(
    base: &Path,
    adapter: &Path,
    out: &Path,
    dtype: candle_core::DType,
    base_quant: runner_recipe::plan::BaseQuant,
    force: bool,
) -> Result<std::process::ExitCode> {
    let saved = runner_model::peft::read_config(adapter)?;
    let mut plan = saved.adapter_plan(Some(adapter.to_path_buf()));
    plan.base_quant = base_quant;
    let (mut model, _) =
        runner_model::gguf::load_gguf(base, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    runner_model::inject(&mut model, &plan, 0)?;
    let tok = runner_data::tokenizer::TextTokenizer::load(base, &Default::default())?;
    let (report, diff) = write_folder_and_check(&model, &tok, out, dtype, force)?;
    println!(
        "merged {} module(s) (scaling {}, DoRA {}) into {}: {} tensors, {} bytes as {dtype:?}; merged into {}",
        report.merged_modules,
        saved.scaling,
        saved.use_dora,
        out.display(),
        report.tensors,
        report.bytes_written,
        match base_quant {
            runner_recipe::plan::BaseQuant::None => "the base as stored in the GGUF (dequantized)",
            runner_recipe::plan::BaseQuant::Nf4 =>
                "the NF4 round-tripped base (what a QLoRA adapter trained against)",
            runner_recipe::plan::BaseQuant::Int8 => "the int8 round-tripped base",
        }
    );
    println!(
        "largest logit difference, base + adapter vs merged: {diff:.3e} (relative to the largest logit)"
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Writes `model` (adapters merged) as a Hugging Face folder with `tok`'s files (through a
/// scratch folder, so that they are staged with the weights), loads it back and returns the
/// largest logit difference against `model`, relative to the largest logit.
fn write_folder_and_check(
    model: &runner_model::CausalLm,
    tok: &runner_data::tokenizer::TextTokenizer,
    out: &Path,
    dtype: candle_core::DType,
    force: bool,
) -> Result<(runner_export::merge::FolderReport, f32)> {
    let scratch = std::env::temp_dir().join(format!("runner-merge-tok-{}", std::process::id()));
    let files = tok.save_pretrained(&scratch)?;
    let mut extra = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        extra.push((name, std::fs::read(&f)?));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let report = runner_export::merge::write_model_folder(model, &extra, out, dtype, force)?;
    let merged =
        runner_model::load_folder(out, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let vocab = model.cfg.vocab_size as u32;
    let rows: Vec<Vec<u32>> = (0..3u32)
        .map(|r| (0..16u32).map(|i| (3 + r * 37 + i * 11) % vocab).collect())
        .collect();
    let batch = runner_export::merge::fixed_batch(&rows)?;
    let a = model.logits(&batch, false)?;
    let b = merged.logits(&batch, false)?;
    let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = a.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok((report, diff / scale.max(1e-30)))
}
