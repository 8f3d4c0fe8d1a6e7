//! Merges a PEFT adapter into its base model and prints how far the merged model's logits are
//! from base + adapter, until `runner merge` wires [`runner_export::merge_folder`].
//!
//! ```text
//! cargo run -p runner-export --example merge -- BASE_DIR ADAPTER_DIR OUT_DIR [f32|bf16|f16] [--force]
//! ```

use candle_core::DType;
use runner_export::merge::{max_logit_difference, merge_folder};
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let force = args.iter().any(|a| a == "--force");
    let pos: Vec<&String> = args.iter().filter(|a| *a != "--force").collect();
    let (base, adapter, out, dtype) = match &pos[..] {
        [b, a, o] => (b, a, o, "f32"),
        [b, a, o, d] => (b, a, o, d.as_str()),
        _ => {
            return Err(
                "usage: merge BASE_DIR ADAPTER_DIR OUT_DIR [f32|bf16|f16] [--force]".into(),
            );
        }
    };
    let dtype = match dtype {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => return Err(format!("dtype {other:?}: use f32, bf16 or f16").into()),
    };
    let (base, adapter, out) = (
        PathBuf::from(base),
        PathBuf::from(adapter),
        PathBuf::from(out),
    );
    let report = merge_folder(&base, &adapter, &out, dtype, force)?;
    println!(
        "merged {} modules (scaling {}, DoRA {}) into {}: {} shard(s), {} tensors, {} bytes \
         ({:?}); largest tensor {} bytes; copied {:?}",
        report.merged_modules.len(),
        report.scaling,
        report.use_dora,
        out.display(),
        report.shards.len(),
        report.tensors,
        report.bytes_written,
        report.dtype,
        report.largest_tensor_bytes,
        report.copied,
    );
    let rows = vec![(0..12).map(|i| (i * 7 + 3) % 50).collect::<Vec<u32>>(); 2];
    let e = max_logit_difference(&base, &adapter, &out, &rows)?;
    println!("merged vs base+adapter logits: max |difference| / max |logit| = {e:.3e}");
    Ok(())
}
