//! Resident memory of a QLoRA base: loads SmolLM2-135M (GGUF) in f32, quantizes the frozen
//! decoder linears to NF4 (or int8), and prints the bytes per quantized parameter with the RSS
//! before and after; then times forward + backward of a LoRA step on both bases.
//!
//!     scripts/fetch-smollm2.sh
//!     cargo run --release -p runner-model --example quant_mem [nf4|int8] [batch] [seq_len]
//!
//! Measured here (shared 2-core machine, `CANDLE_BARRIER_POOL_SPIN_LIMIT=100`): 210 linears,
//! 106,168,320 parameters → 54,770,040 bytes = 0.5159 bytes/param (n/2 packed + n/64 absmax
//! bytes + 4·n/16384 second-level scales + 4 per layer); RSS 537.0 MiB (f32) → 231.2 MiB after
//! quantizing (305.8 MiB freed of the 352.8 MiB expected: the allocator keeps some). Step
//! (forward + backward, LoRA r=16 on all 7 projections): 1×128 tokens f32 1.77 s vs NF4 2.27 s
//! (+28%: dequantizing 2×106M weights per step is a fixed cost); 4×256 tokens f32 14.1 s vs
//! NF4 12.6 s (the difference is within this machine's noise).

use candle_core::{DType, Device};
use runner_model::lora::{LoraSettings, inject_settings};
use runner_model::{Batch, CausalLm, loss, quantize_frozen};
use runner_recipe::plan::{BaseQuant, LoraInit, TargetModules};
use std::time::Instant;

/// `VmRSS` / `VmHWM` of this process, in bytes.
fn rss(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn step_seconds(m: &mut CausalLm, b: usize, t: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let s = LoraSettings {
        r: 16,
        alpha: 32.0,
        dropout: 0.0,
        scaling: 2.0,
        targets: TargetModules::AllLinear,
        init: LoraInit::Kaiming,
        use_dora: false,
    };
    inject_settings(m, &s, 0)?;
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7919 % 49000) as u32).collect();
    let labels = ids.iter().map(|&i| i as i64).collect();
    let batch = Batch::from_attention_mask(b, t, ids, &vec![1u8; b * t], labels)?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        let out = loss::causal_lm_loss(m, &batch, true, loss::DEFAULT_CHUNK)?;
        let _g = runner_model::backward(&out.loss, m)?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = match args.first().map(String::as_str) {
        Some("int8") => BaseQuant::Int8,
        _ => BaseQuant::Nf4,
    };
    let b: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let t: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(128);
    let path = std::env::var("RUNNER_SMOLLM2_GGUF")
        .unwrap_or_else(|_| ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let rss0 = rss("VmRSS:");
    let (mut m, _) =
        runner_model::gguf::load_gguf(std::path::Path::new(&path), DType::F32, &Device::Cpu)?;
    let rss_f32 = rss("VmRSS:");
    let quantizable: usize = m
        .linears()
        .iter()
        .filter(|l| l.name != "lm_head")
        .map(|l| l.weight.elem_count())
        .sum();
    let t0 = Instant::now();
    let s = quantize_frozen(&mut m, kind)?;
    let secs = t0.elapsed().as_secs_f64();
    let rss_q = rss("VmRSS:");
    println!(
        "{kind:?}: {} layers, {} parameters quantized in {secs:.2}s",
        s.layers, s.params
    );
    assert_eq!(s.params, quantizable);
    println!(
        "held: {} bytes = {:.4} bytes/param (f32: {} bytes = 4 bytes/param)",
        s.bytes,
        s.bytes as f64 / s.params as f64,
        4 * s.params
    );
    let freed = rss_f32 as f64 - rss_q as f64;
    println!(
        "RSS: start {:.1} MiB, f32 model {:.1} MiB, after quantizing {:.1} MiB (freed {:.1} MiB; \
         the f32 linears were {:.1} MiB, their quantized form {:.1} MiB: expected drop {:.1} MiB)",
        mib(rss0),
        mib(rss_f32),
        mib(rss_q),
        freed / (1024.0 * 1024.0),
        mib(4 * s.params as u64),
        mib(s.bytes as u64),
        mib(4 * s.params as u64 - s.bytes as u64),
    );
    let ts_q = step_seconds(&mut m, b, t)?;
    drop(m);
    let (mut f, _) =
        runner_model::gguf::load_gguf(std::path::Path::new(&path), DType::F32, &Device::Cpu)?;
    let ts_f = step_seconds(&mut f, b, t)?;
    println!(
        "forward+backward, LoRA r=16 all linears, {b}x{t} tokens (best of 3): f32 base {ts_f:.3}s, \
         {kind:?} base {ts_q:.3}s ({:+.1}%)",
        100.0 * (ts_q / ts_f - 1.0)
    );
    println!("peak RSS (VmHWM): {:.1} MiB", mib(rss("VmHWM:")));
    Ok(())
}
