//! Forward + backward of one LoRA step on SmolLM2-135M (GGUF), printing tokens/s.
//!
//!     scripts/fetch-smollm2.sh
//!     cargo run -p runner-model --example step_bench [batch] [seq_len] [threads...]
//!
//! Reference (DESIGN.md): PyTorch + PEFT, r=16 on all 7 projections, 4×256 tokens, fp32, 2
//! threads: about 180 tokens/s for a full step, 4.4 GB peak RSS.
//!
//! This measures the model alone (no optimizer, no data stage, the system allocator); the
//! end-to-end comparison with PyTorch + PEFT is `tools/train/bench.sh`. Set
//! `CANDLE_BARRIER_POOL_SPIN_LIMIT=100` as the `runner` binary does, or candle's idle worker
//! spins on the core the step needs.

use candle_core::{DType, Device};
use runner_model::lora::{LoraSettings, inject_settings};
use runner_model::{Batch, loss};
use runner_recipe::plan::{LoraInit, TargetModules};
use std::time::Instant;

/// CPU seconds used by this process so far (user + system), from /proc/self/stat: on a shared
/// machine this measures our work, not the wait for a core.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // after the command name: state is not numeric, so utime/stime are fields 11 and 12 here
    (f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let b = args.first().copied().unwrap_or(4);
    let t = args.get(1).copied().unwrap_or(256);
    let path = std::env::var("RUNNER_SMOLLM2_GGUF")
        .unwrap_or_else(|_| ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    {
        // machine check: the matmul throughput available right now
        let x = candle_core::Tensor::randn(0f32, 1.0, (1024, 576), &Device::Cpu)?;
        let w = candle_core::Tensor::randn(0f32, 1.0, (1536, 576), &Device::Cpu)?;
        let t0 = Instant::now();
        let c0 = cpu_s();
        for _ in 0..20 {
            let _ = x.matmul(&w.t()?)?;
        }
        let flops = 20.0 * 2.0 * 1024.0 * 576.0 * 1536.0;
        println!(
            "matmul: {:.1} GFLOP/s wall, {:.1} GFLOP per CPU-second",
            flops / t0.elapsed().as_secs_f64() / 1e9,
            flops / (cpu_s() - c0).max(1e-9) / 1e9
        );
    }
    let t0 = Instant::now();
    let (mut model, _) = runner_model::gguf::load_gguf(path.as_ref(), DType::F32, &Device::Cpu)?;
    println!("loaded in {:.2}s", t0.elapsed().as_secs_f64());
    let s = LoraSettings {
        r: 16,
        alpha: 32.0,
        dropout: std::env::var("DROPOUT")
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0.05),
        scaling: 2.0,
        targets: TargetModules::AllLinear,
        init: LoraInit::Kaiming,
        use_dora: false,
    };
    let adapters = inject_settings(&mut model, &s, 0)?;
    model.gradient_checkpointing = std::env::var("CKPT").is_ok_and(|v| v == "1");
    let ids: Vec<u32> = (0..b * t)
        .map(|i| ((i * 7919) % 49000) as u32 + 10)
        .collect();
    // two packed samples per row
    let cu: Vec<Vec<usize>> = (0..b).map(|_| vec![0, t / 3, t]).collect();
    let labels = ids.iter().map(|&x| x as i64).collect();
    let batch = Batch::packed(b, t, ids, &cu, labels)?;
    {
        let t0 = Instant::now();
        let h = model.hidden_states(&batch, false)?;
        let t1 = Instant::now();
        let _ = loss::loss_from_hidden(&h, &model.lm_head, &batch, false, 512)?;
        println!(
            "eval forward: body {:.2}s, loss head {:.2}s",
            (t1 - t0).as_secs_f64(),
            t1.elapsed().as_secs_f64()
        );
    }
    {
        // one layer, piece by piece
        use candle_core::Tensor;
        let l = &model.layers[0];
        let x = Tensor::randn(0f32, 1.0, (b, t, 576), &Device::Cpu)?;
        let time = |name: &str,
                    f: &dyn Fn() -> runner_model::Result<Tensor>|
         -> runner_model::Result<Tensor> {
            let t0 = Instant::now();
            let mut r = f()?;
            for _ in 0..4 {
                r = f()?;
            }
            println!(
                "  {name}: {:.1} ms",
                t0.elapsed().as_secs_f64() * 1000.0 / 5.0
            );
            Ok(r)
        };
        let n = time("rmsnorm", &|| l.input_layernorm.forward(&x))?;
        let _ = time("q_proj", &|| l.self_attn.q_proj.forward(&n, false))?;
        let _ = time("q_proj plain matmul", &|| {
            Ok(n.reshape((b * t, 576))?
                .matmul(&l.self_attn.q_proj.weight.t()?)?)
        })?;
        let inputs = runner_model::llama::LayerInputs::new(&model.rope, &batch, &[None]);
        let _ = time("attention", &|| l.self_attn.forward(&n, &inputs, false))?;
        let _ = time("mlp", &|| l.mlp.forward(&n, false))?;
    }
    for step in 0..3 {
        let t0 = Instant::now();
        let c0 = cpu_s();
        let out = loss::causal_lm_loss(&model, &batch, true, 512)?;
        let t1 = Instant::now();
        let c1 = cpu_s();
        let grads = runner_model::backward(&out.loss, &model)?;
        let t2 = Instant::now();
        let c2 = cpu_s();
        println!(
            "  CPU seconds: forward {:.2}, backward {:.2}",
            c1 - c0,
            c2 - c1
        );
        let n = adapters
            .params
            .iter()
            .filter(|(_, v)| grads.get(v.as_tensor()).is_some())
            .count();
        println!(
            "step {step}: loss {:.4}, forward {:.2}s, backward {:.2}s, {:.0} tokens/s ({n} grads)",
            out.loss.to_scalar::<f32>()?,
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (b * t) as f64 / (t2 - t0).as_secs_f64()
        );
    }
    Ok(())
}
