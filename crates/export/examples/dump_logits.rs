//! Writes runner's logits of a base model + PEFT adapter on a fixed batch, for
//! `tools/export/verify_peft.py` to compare with `PeftModel.from_pretrained`.
//!
//! ```text
//! cargo run -p runner-export --example dump_logits -- BASE_DIR ADAPTER_DIR OUT.safetensors
//! ```
//!
//! The file holds `input_ids` (i64, 2 × 16, drawn from a fixed seed below the vocabulary size)
//! and `logits` (f32, 2 × 16 × vocab).

use candle_core::{DType, Device, Tensor};
use runner_export::merge::{fixed_batch, load_with_adapter};
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, adapter, out] = &args[..] else {
        return Err("usage: dump_logits BASE_DIR ADAPTER_DIR OUT.safetensors".into());
    };
    let (model, _) = load_with_adapter(&PathBuf::from(base), &PathBuf::from(adapter))?;
    let vocab = model_vocab(&PathBuf::from(base))?;
    // A small LCG: the same ids on every machine, no dependency.
    let mut state = 0x2545_f491_u64;
    let rows: Vec<Vec<u32>> = (0..2)
        .map(|_| {
            (0..16)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect();
    let logits = model
        .logits(&fixed_batch(&rows)?, false)?
        .to_dtype(DType::F32)?;
    let ids: Vec<i64> = rows.concat().into_iter().map(i64::from).collect();
    let ids = Tensor::from_vec(ids, (2, 16), &Device::Cpu)?;
    candle_core::safetensors::save(
        &[
            ("input_ids".to_string(), ids),
            ("logits".to_string(), logits),
        ]
        .into_iter()
        .collect(),
        out,
    )?;
    println!("wrote {out}");
    Ok(())
}

fn model_vocab(base: &std::path::Path) -> Result<usize, Box<dyn std::error::Error>> {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json"))?)?;
    cfg["vocab_size"]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| "config.json has no vocab_size".into())
}
