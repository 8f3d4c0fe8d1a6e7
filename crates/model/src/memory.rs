//! The memory planner: what a training step holds at its peak (weights, adapters + optimizer,
//! activations, workspace), counted from the architecture alone, on the CPU or a GPU, so that
//! `--dry-run` can print it for a model whose weights are not here and a micro-batch that
//! cannot fit is refused before any work instead of the kernel (or the CUDA allocator) killing
//! the run halfway through it.

use crate::config::ModelConfig;
use crate::precision::DeviceKind;
use candle_core::DType;
use runner_recipe::plan::BaseQuant;

/// Values one decoder layer keeps per position for its backward pass through the ops layer
/// ([`crate::ops`]): the two norm outputs, the o_proj and down_proj outputs and the two residual
/// sums (hidden each); q before and after RoPE and the attention output (heads·head_dim each);
/// k, k after RoPE and v (kv_heads·head_dim each); gate, up and their SwiGLU product
/// (intermediate each). Qwen3's q/k norms keep one more q and k. DoRA layers (composed
/// from ops) keep more: this is a lower bound for them.
pub fn values_per_position_per_layer(cfg: &ModelConfig) -> usize {
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let norms = if cfg.qk_norm { q + kv } else { 0 };
    6 * cfg.hidden_size + 3 * q + 3 * kv + 3 * cfg.intermediate_size + norms
}

/// Values of one chunk of the loss head: the logits of up to `chunk` labelled positions.
const LOSS_CHUNK: usize = crate::loss::DEFAULT_CHUNK;

/// Bytes a training step on a micro-batch of `positions` (rows × padded length) holds at its
/// peak besides the weights and optimizer state: the saved activations (every layer's, or with
/// `gradient_checkpointing` each layer's input plus one layer's), the gradients of about two
/// layers in flight during the backward pass, and one chunk of logits.
pub fn step_activation_bytes(
    cfg: &ModelConfig,
    positions: usize,
    gradient_checkpointing: bool,
    dtype_bytes: usize,
) -> u64 {
    let layer = values_per_position_per_layer(cfg) as u64;
    let layers = cfg.num_hidden_layers as u64;
    let saved = if gradient_checkpointing {
        layers * cfg.hidden_size as u64 + layer
    } else {
        layers * layer
    };
    let per_position = (saved + 2 * layer) * dtype_bytes as u64;
    let logits = (LOSS_CHUNK.min(positions) * cfg.vocab_size * 4) as u64;
    per_position * positions as u64 + logits
}

/// Bytes of one quantized `[rows, cols]` weight, as [`crate::quant`] holds it: NF4 packs two
/// values per byte plus one absmax byte per 64 values, one f32 scale per 256 absmax values and
/// the f32 offset (≈ 0.5159 bytes per parameter); int8 is one byte per value plus an f32 scale
/// per row.
pub fn quantized_bytes(rows: usize, cols: usize, kind: BaseQuant) -> u64 {
    let n = (rows * cols) as u64;
    match kind {
        BaseQuant::None => 0,
        BaseQuant::Nf4 => {
            let blocks = n.div_ceil(crate::quant::NF4_BLOCK as u64);
            n.div_ceil(2) + blocks + 4 * blocks.div_ceil(crate::quant::NF4_BLOCK2 as u64) + 4
        }
        BaseQuant::Int8 => n + 4 * rows as u64,
    }
}

/// GPUs `--plan-device` knows by name, with the memory their driver reports as total
/// (`nvidia-smi`'s MiB), so a dry-run can plan for a GPU this machine does not have. All are
/// Ampere or newer: bf16 and TF32 exist on each.
pub const KNOWN_GPUS: [(&str, &str, u64); 9] = [
    ("h200", "NVIDIA H200 (141 GB)", 143_771),
    ("h100", "NVIDIA H100 80GB", 81_559),
    ("a100-80", "NVIDIA A100 80GB", 81_920),
    ("a100-40", "NVIDIA A100 40GB", 40_960),
    ("l40s", "NVIDIA L40S", 46_068),
    ("a10", "NVIDIA A10", 23_028),
    ("l4", "NVIDIA L4", 23_034),
    ("rtx4090", "NVIDIA GeForce RTX 4090", 24_564),
    ("rtx3090", "NVIDIA GeForce RTX 3090", 24_576),
];

/// The device a memory plan is for, and the memory it offers.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanDevice {
    pub kind: DeviceKind,
    /// What the user reads: `CPU (host memory)`, `NVIDIA H200 (141 GB)`, `GPU 0: NVIDIA ...`.
    pub label: String,
    /// Bytes the run may use: free GPU memory, or host memory available; None when unknown.
    pub available: Option<u64>,
}

impl PlanDevice {
    /// Parses `--plan-device`: `cpu`, a name from [`KNOWN_GPUS`], or `cuda:GB` (any GPU with
    /// that many gigabytes, e.g. `cuda:24`). A GPU named here is planned as if empty.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        if t == "cpu" {
            return Ok(Self {
                kind: DeviceKind::Cpu,
                label: "CPU".into(),
                available: None,
            });
        }
        if let Some(gb) = t.strip_prefix("cuda:") {
            let gb: f64 = gb
                .parse()
                .ok()
                .filter(|g: &f64| g.is_finite() && *g > 0.0)
                .ok_or_else(|| {
                    format!(
                        "--plan-device {text}: `cuda:` takes the GPU's memory in GB, e.g. cuda:24"
                    )
                })?;
            return Ok(Self {
                kind: DeviceKind::Cuda,
                label: format!("a GPU with {gb} GB"),
                available: Some((gb * 1e9) as u64),
            });
        }
        match KNOWN_GPUS.iter().find(|(k, _, _)| *k == t) {
            Some((_, name, mib)) => Ok(Self {
                kind: DeviceKind::Cuda,
                label: (*name).to_string(),
                available: Some(mib * 1024 * 1024),
            }),
            None => Err(format!(
                "--plan-device {text}: unknown device; use cpu, cuda:GB (e.g. cuda:24) or one of {}",
                KNOWN_GPUS
                    .iter()
                    .map(|(k, _, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// What a training step's memory plan is computed from.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub cfg: &'a ModelConfig,
    /// LoRA (and DoRA magnitude) parameters: f32 masters.
    pub adapter_params: usize,
    /// `lora_modules_to_save` (`model.embed_tokens`, `lm_head`): full trainable copies.
    pub modules_to_save: &'a [String],
    pub quant: BaseQuant,
    /// The frozen weights' and activations' dtype.
    pub dtype: DType,
    pub device: DeviceKind,
    pub micro_batch_size: usize,
    /// Positions per row (the packed or padded length).
    pub row: usize,
    pub gradient_checkpointing: bool,
    pub lora_dropout: bool,
}

/// CUDA context, cuBLAS workspace and allocator slack a GPU process holds before its first
/// tensor: about 0.5 GB on recent drivers (PyTorch's "reserved but unallocated" is of the same
/// order). An assumption, to be replaced by the GPU check's measurement.
pub const CUDA_CONTEXT_BYTES: u64 = 600_000_000;

/// The estimated peak of a training step, by part, in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// Frozen base: quantized decoder projections, everything else in the compute dtype.
    pub weights: u64,
    /// Adapter masters, their gradients and both AdamW moments (f32: 16 bytes per
    /// parameter), plus `lora_modules_to_save` copies.
    pub adapters_optimizer: u64,
    /// Bytes one decoder layer keeps for its backward (all positions of the micro-batch).
    pub activations_per_layer: u64,
    /// Everything the activations take at the peak of the backward (see [`plan`]).
    pub activations: u64,
    /// Loss chunk logits and their gradient, dequantized weight buffers, CUDA context.
    pub workspace: u64,
    pub positions: usize,
    pub gradient_checkpointing: bool,
}

impl MemoryPlan {
    pub fn total(&self) -> u64 {
        self.weights + self.adapters_optimizer + self.activations + self.workspace
    }
}

/// The estimated peak of one training step (the arithmetic, for `recipes/mistral-qlora.yaml` on
/// one GPU, is in this module's `mistral_qlora_on_one_h200_fits_in_20_gb` test):
///
/// - weights: each decoder projection in NF4/int8 ([`quantized_bytes`]) or the compute dtype;
///   embeddings, LM head (counted once when tied) and norms in the compute dtype.
/// - adapters + optimizer: 4 (f32 master) + 4 (f32 gradient) + 8 (two f32 moments) = 16 bytes
///   per adapter parameter; a `lora_modules_to_save` copy adds the same per parameter plus its
///   compute-dtype copy (the f32 master lives in the optimizer when the model is bf16).
/// - activations: [`values_per_position_per_layer`] in the compute dtype per position and
///   layer, assuming the ops layer of issue 12 (attention keeps its output and log-sum-exp,
///   never a T×T matrix; the LoRA op keeps x·Aᵀ, r values per projection, and one dropout bit
///   per input value). Without checkpointing every layer's values are kept; with it each
///   layer's input (hidden values) plus one recomputed layer. During the backward about two
///   layers' worth of gradients are alive at once (measured on the CPU engine, whose peak this
///   formula matched within 10%: `smollm2_step_matches_the_measured_peak`).
/// - workspace: one chunk of logits in f32 and its gradient, the final hidden states and their
///   gradient, the dequantized weight of the largest quantized projection (forward and
///   backward buffers, compute dtype) and, on a GPU, [`CUDA_CONTEXT_BYTES`].
pub fn plan(p: &PlanInput) -> MemoryPlan {
    let cfg = p.cfg;
    let b = p.dtype.size_in_bytes() as u64;
    let positions = p.micro_batch_size * p.row;
    let pos = positions as u64;
    // Weights.
    let shapes = cfg.linear_shapes();
    let mut weights = 0u64;
    let mut largest_quantized = 0u64;
    for (name, din, dout) in &shapes {
        if name == "lm_head" {
            continue;
        }
        let n = (din * dout) as u64;
        weights += match p.quant {
            BaseQuant::None => n * b,
            kind => {
                largest_quantized = largest_quantized.max(n);
                quantized_bytes(*dout, *din, kind)
            }
        };
    }
    let linear_params: usize = shapes
        .iter()
        .filter(|(n, _, _)| n != "lm_head")
        .map(|(_, i, o)| i * o)
        .sum();
    // Embeddings, LM head (once when tied), norms, biases: the rest of the parameters.
    let rest = cfg.param_count().saturating_sub(linear_params) as u64;
    weights += rest * b;
    // Adapters and optimizer.
    let embedding = (cfg.vocab_size * cfg.hidden_size) as u64;
    // Each module-to-save copy: the trainable copy (compute dtype), its f32 gradient, two f32
    // moments and, below f32, the optimizer's f32 master.
    let master = if b < 4 { 4 } else { 0 };
    let adapters_optimizer = 16 * p.adapter_params as u64
        + p.modules_to_save.len() as u64 * embedding * (b + 4 + 8 + master);
    // Activations.
    let r_values: u64 = if p.adapter_params > 0 {
        // x·Aᵀ per projection: r values each; the rank is adapter_params / Σ(in + out).
        let sum_io: usize = shapes
            .iter()
            .filter(|(n, _, _)| n != "lm_head")
            .map(|(_, i, o)| i + o)
            .sum();
        let r = p.adapter_params / sum_io.max(1);
        (7 * r) as u64
    } else {
        0
    };
    let dropout_bytes_per_position = if p.lora_dropout {
        // one bit per input value of each projection: q, k, v, gate, up read hidden; o reads
        // heads·head_dim; down reads intermediate.
        let bits =
            5 * cfg.hidden_size + cfg.num_attention_heads * cfg.head_dim + cfg.intermediate_size;
        bits.div_ceil(8) as u64
    } else {
        0
    };
    let layer_values = values_per_position_per_layer(cfg) as u64 + r_values;
    let per_layer = (layer_values * b + dropout_bytes_per_position) * pos;
    let layers = cfg.num_hidden_layers as u64;
    let saved = if p.gradient_checkpointing {
        layers * cfg.hidden_size as u64 * b * pos + per_layer
    } else {
        layers * per_layer
    };
    let activations = saved + 2 * per_layer;
    // Workspace.
    let chunk = LOSS_CHUNK.min(positions) as u64;
    let logits = 2 * chunk * cfg.vocab_size as u64 * 4;
    let head = 2 * cfg.hidden_size as u64 * b * pos;
    let dequant = 2 * largest_quantized * b;
    let context = match p.device {
        DeviceKind::Cuda => CUDA_CONTEXT_BYTES,
        DeviceKind::Cpu => 0,
    };
    MemoryPlan {
        weights,
        adapters_optimizer,
        activations_per_layer: per_layer,
        activations,
        workspace: logits + head + dequant + context,
        positions,
        gradient_checkpointing: p.gradient_checkpointing,
    }
}

/// Gigabytes (10⁹ bytes), as the figures are printed.
pub fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  weights (frozen base)        {:>8.2} GB",
            gb(self.weights)
        )?;
        writeln!(
            f,
            "  adapters + optimizer (f32)   {:>8.2} GB",
            gb(self.adapters_optimizer)
        )?;
        writeln!(
            f,
            "  activations                  {:>8.2} GB  ({:.3} GB per layer, {} positions{})",
            gb(self.activations),
            gb(self.activations_per_layer),
            self.positions,
            if self.gradient_checkpointing {
                ", checkpointed"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  workspace                    {:>8.2} GB",
            gb(self.workspace)
        )?;
        write!(
            f,
            "  estimated peak               {:>8.2} GB",
            gb(self.total())
        )
    }
}

/// The refusal of a step that cannot fit: `None` when `plan` fits in `available` bytes, else
/// the message with the figures and the fixes (`with_checkpointing`: the plan with
/// `gradient_checkpointing` on, offered when the recipe has it off).
pub fn refusal(
    plan: &MemoryPlan,
    available: u64,
    device: &str,
    micro_batch_size: usize,
    row: usize,
    with_checkpointing: Option<&MemoryPlan>,
) -> Option<String> {
    if plan.total() <= available {
        return None;
    }
    let mut fix = "lower `micro_batch_size` (raise `gradient_accumulation_steps` to keep the same \
                   batch per optimizer step) or `sequence_len`"
        .to_string();
    if let Some(c) = with_checkpointing {
        fix.push_str(&format!(
            ", or set `gradient_checkpointing: true` (about {:.1} GB)",
            gb(c.total())
        ));
    }
    if plan.weights > available / 2 {
        fix.push_str(", or quantize the base (`load_in_4bit: true`, `adapter: qlora`)");
    }
    Some(format!(
        "a training step on micro_batch_size {micro_batch_size} × {row} positions needs about \
         {:.1} GB on {device} and {:.1} GB is available (nothing was trained):\n{plan}\n{fix}",
        gb(plan.total()),
        gb(available)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> ModelConfig {
        let mut c = crate::tiny::builtin_config("tiny-llama").expect("builtin config");
        c.hidden_size = 576;
        c.intermediate_size = 1536;
        c.num_hidden_layers = 30;
        c.num_attention_heads = 9;
        c.num_key_value_heads = 3;
        c.head_dim = 64;
        c.vocab_size = 49152;
        c
    }

    fn mistral_7b() -> ModelConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/configs/mistral-7b-v0.1.json");
        ModelConfig::from_file(&path).expect("Mistral-7B config")
    }

    /// The issue-12 bar: `recipes/mistral-qlora.yaml` (Mistral-7B, NF4, LoRA r=32 on all seven
    /// projections, micro-batch 2 × 8192 packed positions, checkpointing on, bf16) on one H200
    /// is estimated at ≤ 20 GB. The arithmetic, by hand from the config (hidden h = 4096,
    /// intermediate i = 14336, 32 layers, 32 heads / 8 kv heads × 128, vocab 32000, untied):
    ///
    /// - projections: 32 × (2·h² + 2·h·1024 + 3·h·i) = 6,979,321,856 parameters; NF4 per
    ///   `[rows, cols]`: n/2 + n/64 + 4·⌈n/64/256⌉ + 4 bytes → 3,600,417,664 B.
    ///   The rest (embed_tokens and lm_head 2 × 32000·4096, 65 norms × 4096) = 262,410,240
    ///   parameters in bf16 = 524,820,480 B. Weights: 4.125 GB.
    /// - adapters: 32 × 32·Σ(in + out) = 83,886,080 parameters × 16 B (f32 master, gradient,
    ///   two moments) = 1.342 GB.
    /// - one layer, per position: 6h + 3·(32·128) + 3·(8·128) + 3i + 7r = 82,944 + 224 bf16
    ///   values = 166,336 B, plus the dropout bits (5h + 4096 + i)/8 = 4,864 B → 171,200 B ×
    ///   16,384 positions = 2.805 GB. Checkpointed: 32 layer inputs (h bf16 values each:
    ///   4.295 GB) + one recomputed layer + two layers of gradients in flight = 12.710 GB.
    /// - workspace: 512 logits × 32000 in f32 and their gradient (0.131 GB), the final hidden
    ///   states and their gradient (0.268 GB), two dequantized bf16 copies of the largest
    ///   projection (h·i: 0.235 GB), the CUDA context (0.6 GB) = 1.234 GB.
    ///
    /// Total 19.41 GB, of an H200's 150.8 GB.
    #[test]
    fn mistral_qlora_on_one_h200_fits_in_20_gb() {
        let cfg = mistral_7b();
        let r = 32;
        let adapter_params: usize = cfg
            .linear_shapes()
            .iter()
            .filter(|(n, _, _)| n != "lm_head")
            .map(|(_, i, o)| r * (i + o))
            .sum();
        assert_eq!(adapter_params, 83_886_080);
        let p = plan(&PlanInput {
            cfg: &cfg,
            adapter_params,
            modules_to_save: &[],
            quant: BaseQuant::Nf4,
            dtype: DType::BF16,
            device: DeviceKind::Cuda,
            micro_batch_size: 2,
            row: 8192,
            gradient_checkpointing: true,
            lora_dropout: true,
        });
        assert_eq!(p.weights, 3_600_417_664 + 524_820_480);
        assert_eq!(p.adapters_optimizer, 1_342_177_280);
        assert_eq!(p.activations_per_layer, 171_200 * 16_384);
        assert_eq!(
            p.activations,
            32 * 4096 * 2 * 16_384 + 3 * p.activations_per_layer
        );
        assert_eq!(
            p.workspace,
            2 * 512 * 32000 * 4 + 2 * 4096 * 2 * 16_384 + 2 * 4096 * 14336 * 2 + 600_000_000
        );
        let total = gb(p.total());
        assert!((19.3..=20.0).contains(&total), "{total} GB");
        let h200 = PlanDevice::parse("h200").unwrap();
        assert!(refusal(&p, h200.available.unwrap(), &h200.label, 2, 8192, None).is_none());
        // On a 16 GB card the same step is refused, with the figures.
        let small = PlanDevice::parse("cuda:16").unwrap();
        let e = refusal(&p, small.available.unwrap(), &small.label, 2, 8192, None).unwrap();
        assert!(e.contains("19.4 GB") && e.contains("16.0 GB"), "{e}");
    }

    /// The NF4 size formula against the quantizer's own buffers.
    #[test]
    fn quantized_bytes_match_the_quantizer() {
        for (rows, cols) in [(64, 64), (96, 80), (300, 70)] {
            let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let nf4 = crate::quant::Nf4::quantize(&w, rows, cols).nbytes() as u64;
            assert_eq!(
                quantized_bytes(rows, cols, BaseQuant::Nf4),
                nf4,
                "{rows}×{cols}"
            );
            let int8 = crate::quant::Int8::quantize(&w, rows, cols).nbytes() as u64;
            assert_eq!(quantized_bytes(rows, cols, BaseQuant::Int8), int8);
        }
    }

    /// Issue 5 / 12: a micro-batch that cannot fit is refused with the figures and the fixes.
    #[test]
    fn a_step_that_cannot_fit_is_refused_with_the_fixes() {
        let cfg = smollm2();
        let input = |ckpt| PlanInput {
            cfg: &cfg,
            adapter_params: 4_884_480,
            modules_to_save: &[],
            quant: BaseQuant::None,
            dtype: DType::F32,
            device: DeviceKind::Cpu,
            micro_batch_size: 64,
            row: 4096,
            gradient_checkpointing: ckpt,
            lora_dropout: false,
        };
        let (p, c) = (plan(&input(false)), plan(&input(true)));
        assert!(c.total() < p.total());
        assert!(refusal(&p, p.total(), "the CPU", 64, 4096, Some(&c)).is_none());
        let e = refusal(&p, 20_000_000_000, "the CPU", 64, 4096, Some(&c)).unwrap();
        assert!(e.contains("micro_batch_size 64 × 4096 positions"), "{e}");
        assert!(e.contains("20.0 GB") && e.contains("estimated peak"), "{e}");
        let with = format!(
            "gradient_checkpointing: true` (about {:.1} GB)",
            gb(c.total())
        );
        assert!(e.contains(&with), "{e}");
    }

    #[test]
    fn smollm2_step_matches_the_measured_peak() {
        // Measured: peak RSS 2.15 GB for 4 × 256 positions, f32, of which ~0.55 GB weights
        // (tools/train/bench.sh); the estimate is a lower bound of the rest.
        let c = smollm2();
        assert_eq!(values_per_position_per_layer(&c), 10368);
        let est = step_activation_bytes(&c, 1024, false, 4) as f64 / 1e9;
        assert!((1.3..1.6).contains(&est), "{est}");
        let ckpt = step_activation_bytes(&c, 1024, true, 4) as f64 / 1e9;
        assert!(ckpt < 0.35, "{ckpt}");
    }
}
