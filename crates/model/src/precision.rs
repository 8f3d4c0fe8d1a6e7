//! Which dtype the frozen weights and the activations take for a recipe's `bf16` / `fp16` on a
//! device, and what `tf32` does there: one decision, printed by `runner run` and `--dry-run`.
//!
//! Mixed precision as PyTorch AMP and PEFT do it (issue 12): the frozen base and the activations
//! in the compute dtype; adapter master weights ([`crate::lora::ADAPTER_DTYPE`]), their
//! gradients and the AdamW moments in f32.

use candle_core::DType;
use runner_recipe::plan::Precision;

/// The kind of device a run trains on (or that `--dry-run` plans for): the ops table's.
pub use crate::ops::DeviceKind;

/// The compute dtype chosen for a recipe on a device, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputePrecision {
    pub dtype: DType,
    /// Said to the user when the recipe's words do not name the dtype by themselves
    /// (`bf16: auto` on a CPU, `tf32` on a CPU).
    pub notes: Vec<String>,
}

/// Why `bf16: auto` keeps f32 on the CPU. Measured side by side on this project's 2-core AMD
/// EPYC (no AVX512-BF16), recipes/smollm2-lora.yaml (SmolLM2-135M, LoRA r=16 on all seven
/// projections, 4 × 256 packed tokens), 3 steps each, alternating, with the ops layer's bf16
/// CPU sides (which compute in f32 inside): f32 50 and 61 tokens/s at 2.15 GB peak RSS, bf16
/// 43 and 48 tokens/s at 1.44 GB (dev profile with optimised crates, so absolute figures are
/// below a release build's). The bf16 ops convert to f32 and back around f32 GEMMs, which costs
/// more than the halved memory traffic saves on such a CPU; `bf16: true` is the choice when
/// memory matters more than speed.
pub const CPU_AUTO_REASON: &str = "bf16 measured about 0.8× the speed of f32 on a CPU without \
     native bf16 arithmetic, at 0.67× the peak memory";

/// The dtype of the frozen weights and activations for `precision` on `device`, or the reason
/// the combination cannot run. `bf16: true` is honoured everywhere (on the CPU too, for tests
/// and memory); `bf16: auto` is bf16 on a GPU and f32 on the CPU, saying so.
pub fn compute_precision(
    precision: Precision,
    tf32: bool,
    device: DeviceKind,
) -> Result<ComputePrecision, String> {
    let mut notes = Vec::new();
    let dtype = match (precision, device) {
        (Precision::F32, _) => DType::F32,
        (Precision::Bf16, _) | (Precision::Auto, DeviceKind::Cuda) => DType::BF16,
        (Precision::Auto, DeviceKind::Cpu) => {
            notes.push(format!(
                "bf16: auto → f32 on the CPU ({CPU_AUTO_REASON}); `bf16: true` forces bf16"
            ));
            DType::F32
        }
        (Precision::F16, _) => {
            return Err(
                "`fp16: true` needs dynamic loss scaling, which this engine does not \
                        have yet (fp16 gradients underflow without it); use `bf16: true` \
                        (the same memory, no loss scaling needed) or remove `fp16`"
                    .into(),
            );
        }
    };
    if tf32 && device == DeviceKind::Cpu {
        notes.push(
            "tf32: no effect on the CPU (its f32 matmuls are full f32); it applies to f32 \
             matmuls on a GPU"
                .into(),
        );
    }
    Ok(ComputePrecision { dtype, notes })
}

/// `tf32` on a GPU: cuBLAS may use TF32 tensor cores for f32 matmuls (PyTorch's
/// `torch.backends.cuda.matmul.allow_tf32`). candle's switch is process-wide; set it both
/// ways so the recipe, not an earlier run in the same process, decides.
pub fn apply_tf32(tf32: bool, device: DeviceKind) {
    if device == DeviceKind::Cuda {
        // Without the `cuda` feature candle's switch is a no-op, and no CUDA device exists.
        candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_bf16_on_a_gpu_and_f32_on_the_cpu_with_a_note() {
        let gpu = compute_precision(Precision::Auto, false, DeviceKind::Cuda).unwrap();
        assert_eq!((gpu.dtype, gpu.notes.len()), (DType::BF16, 0));
        let cpu = compute_precision(Precision::Auto, false, DeviceKind::Cpu).unwrap();
        assert_eq!(cpu.dtype, DType::F32);
        assert!(cpu.notes[0].contains("bf16: auto → f32"), "{:?}", cpu.notes);
        let forced = compute_precision(Precision::Bf16, false, DeviceKind::Cpu).unwrap();
        assert_eq!(forced.dtype, DType::BF16);
        let e = compute_precision(Precision::F16, false, DeviceKind::Cuda).unwrap_err();
        assert!(e.contains("bf16: true"), "{e}");
        let tf32 = compute_precision(Precision::F32, true, DeviceKind::Cpu).unwrap();
        assert!(tf32.notes[0].contains("no effect on the CPU"));
        assert!(
            compute_precision(Precision::F32, true, DeviceKind::Cuda)
                .unwrap()
                .notes
                .is_empty()
        );
    }

    /// candle's switch is real only in a CUDA build (a no-op stub otherwise).
    #[cfg(feature = "cuda")]
    #[test]
    fn tf32_switch_follows_the_recipe_on_a_gpu_only() {
        apply_tf32(true, DeviceKind::Cuda);
        assert!(candle_core::cuda::gemm_reduced_precision_f32());
        apply_tf32(false, DeviceKind::Cpu);
        assert!(
            candle_core::cuda::gemm_reduced_precision_f32(),
            "the CPU leaves it"
        );
        apply_tf32(false, DeviceKind::Cuda);
        assert!(!candle_core::cuda::gemm_reduced_precision_f32());
    }
}
