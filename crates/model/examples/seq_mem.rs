//! Peak resident memory of one training step (forward + backward, micro-batch 1, no gradient
//! checkpointing) at sequence 1024 and 4096, f32 and bf16 activations: issue 12's bar is a
//! growth of at most 4.5× (linear in the sequence; a T×T tensor anywhere would make it ~16× in
//! the activation part). Each setting runs in a child process (this binary again) so its peak
//! (`VmHWM`) is its own; the model is SmolLM2-135M's shape (fixtures/configs) with random
//! weights and `layers` decoder layers (default 4, to fit the time; activations scale with the
//! layer count, the ratio does not), LoRA r=16 on all linear layers with dropout 0.05.
//!
//!     cargo run --release -p runner-model --example seq_mem [layers]
//!
//! Prints per setting: RSS after building the model, peak RSS during the step (VmHWM, reset
//! before the step), and the step's own part (peak − before); then the 4096/1024 ratios.
//!
//! Measured (debug profile with optimised dependencies, shared 2-core AMD EPYC, 4 layers):
//! f32 447.3 → 1021.6 MiB peak (2.28×; the step's part 276.7 → 851.0 MiB, 3.08×); bf16
//! 428.8 → 775.5 MiB (1.81×; step part 340.2 → 686.8 MiB, 2.02×). The step part is not 4×
//! because part of it does not grow with the sequence (the `(chunk, vocab)` cross-entropy
//! buffer, the LM head's gradient products, transient weight conversions).

use candle_core::{DType, Device};
use runner_model::lora::{LoraSettings, inject_settings};
use runner_model::weights::{MemorySource, Weights};
use runner_model::{Batch, CausalLm, ModelConfig, loss};
use runner_recipe::plan::{LoraInit, TargetModules};
use std::process::Command;
use std::sync::Arc;

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One setting, in this process: prints `before_kib peak_kib seconds`.
fn child(dtype: DType, t: usize, layers: usize) -> Result<(), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/configs/smollm2-135m-instruct.json");
    let mut cfg = ModelConfig::from_json_str(&std::fs::read_to_string(&path)?, &path)?;
    cfg.num_hidden_layers = layers;
    cfg.sliding_window = vec![None; layers];
    let tensors = runner_model::tiny::random_weights(&cfg, 1)?;
    let source = MemorySource {
        name: "random".into(),
        tensors: tensors.into_iter().collect(),
    };
    let w = Weights::new(Arc::new(source), dtype, Device::Cpu);
    let mut model = CausalLm::load(&w, &cfg)?;
    drop(w);
    let s = LoraSettings {
        r: 16,
        alpha: 32.0,
        dropout: 0.05,
        scaling: 2.0,
        targets: TargetModules::AllLinear,
        init: LoraInit::Kaiming,
        use_dora: false,
    };
    inject_settings(&mut model, &s, 0)?;
    let ids: Vec<u32> = (0..t).map(|i| (i * 7919 % 49000) as u32).collect();
    let labels = ids.iter().map(|&i| i as i64).collect();
    let batch = Batch::from_attention_mask(1, t, ids, &vec![1u8; t], labels)?;
    // Building the model (f32 random values, then the cast) has its own peak: reset the
    // high-water mark so VmHWM is the step's (Linux: `5` to clear_refs).
    std::fs::write("/proc/self/clear_refs", "5")?;
    let before = status_kib("VmRSS:");
    let t0 = std::time::Instant::now();
    let out = loss::causal_lm_loss(&model, &batch, true, loss::DEFAULT_CHUNK)?;
    let g = runner_model::backward(&out.loss, &model)?;
    let secs = t0.elapsed().as_secs_f64();
    drop(g);
    println!("{before} {} {secs:.1}", status_kib("VmHWM:"));
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        let dtype = if args[1] == "bf16" {
            DType::BF16
        } else {
            DType::F32
        };
        return child(dtype, args[2].parse()?, args[3].parse()?);
    }
    let layers: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(4);
    let exe = std::env::current_exe()?;
    println!(
        "SmolLM2-135M shape, {layers} layers, LoRA r=16 all linears, dropout 0.05, micro-batch 1"
    );
    println!("dtype  seq   before(MiB)  peak(MiB)  step part(MiB)  step(s)");
    for dt in ["f32", "bf16"] {
        let mut rows = Vec::new();
        for t in [1024usize, 4096] {
            let out = Command::new(&exe)
                .args(["child", dt, &t.to_string(), &layers.to_string()])
                .output()?;
            if !out.status.success() {
                return Err(format!("{dt} {t}: {}", String::from_utf8_lossy(&out.stderr)).into());
            }
            let text = String::from_utf8(out.stdout)?;
            let f: Vec<f64> = text
                .split_whitespace()
                .map(|v| v.parse())
                .collect::<Result<_, _>>()?;
            let (before, peak) = (f[0] / 1024.0, f[1] / 1024.0);
            println!(
                "{dt:5} {t:5} {before:12.1} {peak:10.1} {:15.1} {:8.1}",
                peak - before,
                f[2]
            );
            rows.push((peak, peak - before));
        }
        println!(
            "{dt}: 4096/1024 peak RSS {:.2}x, step part {:.2}x (bar: <= 4.5x)",
            rows[1].0 / rows[0].0,
            rows[1].1 / rows[0].1
        );
    }
    Ok(())
}
