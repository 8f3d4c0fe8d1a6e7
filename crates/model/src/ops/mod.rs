//! The training engine's ops, one file each: a candle custom op with its CPU implementation
//! (multi-threaded; f32, bf16 and f16 activations, computed in f32 inside and rounded once on
//! store), its GPU side, its hand-written backward and, in its tests only, the slow composed
//! reference it is checked against. The model calls these unconditionally: which implementation
//! runs is decided by the tensor's device and dtype inside the op, and which (op, device, dtype)
//! combinations exist is the one table [`SUPPORT`], checked by [`check_supported`] before any
//! work starts.
//!
//! This module imports nothing from the layer or model files (`nn`, `llama`, `lora`, ...): they
//! import it.

pub mod attention;
pub mod cross_entropy;
pub mod dequant;
pub mod dropout;
pub mod frozen_matmul;
pub mod lora_linear;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Layout, Shape, StorageRef, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use std::borrow::Cow;

/// The linear projections of a decoder layer, in model order: the one list, kept in the shared
/// I/O crate (layers, adapter targets, the GGUF table and the dropout streams number them by it).
pub use runner_io::names::PROJECTIONS;

// ---------------------------------------------------------------------------------------------
// The (op, device, dtype) table

/// The ops of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    RmsNorm,
    Rope,
    SwiGlu,
    Attention,
    LoraLinear,
    FrozenMatmul,
    Dequant,
    CrossEntropy,
    Dropout,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::RmsNorm => "rms_norm",
            Op::Rope => "rope",
            Op::SwiGlu => "swiglu",
            Op::Attention => "attention",
            Op::LoraLinear => "lora_linear",
            Op::FrozenMatmul => "frozen_matmul",
            Op::Dequant => "dequant (NF4/int8)",
            Op::CrossEntropy => "cross_entropy",
            Op::Dropout => "dropout",
        }
    }
}

/// Where an op runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn of(device: &Device) -> Self {
        if device.is_cpu() {
            Self::Cpu
        } else {
            Self::Cuda
        }
    }
}

/// How an op is implemented on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// Hand-written, multi-threaded CPU code (rayon + gemm).
    CpuNative,
    /// A CUDA kernel from `kernels/*.cu` (runner-kernels, NVRTC).
    CudaKernel,
    /// candle CUDA ops composed with the op's memory contract (blockwise, no T×T tensor); the
    /// kernel is issue 13.
    CudaComposed,
}

/// One row of the support table.
#[derive(Debug, Clone, Copy)]
pub struct Support {
    pub op: Op,
    pub device: DeviceKind,
    pub dtypes: &'static [DType],
    pub how: Impl,
}

const CPU_TYPES: &[DType] = &[DType::F32, DType::BF16, DType::F16];
const CUDA_TYPES: &[DType] = &[DType::F32, DType::BF16];

const fn row(op: Op, device: DeviceKind, dtypes: &'static [DType], how: Impl) -> Support {
    Support {
        op,
        device,
        dtypes,
        how,
    }
}

/// Every (op, device, dtype) the engine implements. A combination missing here is refused by
/// [`check_supported`] before any work, naming it; nothing falls back silently.
pub const SUPPORT: &[Support] = {
    use DeviceKind::{Cpu, Cuda};
    use Impl::*;
    &[
        row(Op::RmsNorm, Cpu, CPU_TYPES, CpuNative),
        row(Op::Rope, Cpu, CPU_TYPES, CpuNative),
        row(Op::SwiGlu, Cpu, CPU_TYPES, CpuNative),
        row(Op::Attention, Cpu, CPU_TYPES, CpuNative),
        row(Op::LoraLinear, Cpu, CPU_TYPES, CpuNative),
        row(Op::FrozenMatmul, Cpu, CPU_TYPES, CpuNative),
        row(Op::Dequant, Cpu, CPU_TYPES, CpuNative),
        row(Op::CrossEntropy, Cpu, CPU_TYPES, CpuNative),
        row(Op::Dropout, Cpu, CPU_TYPES, CpuNative),
        row(Op::RmsNorm, Cuda, CUDA_TYPES, CudaKernel),
        row(Op::Rope, Cuda, CUDA_TYPES, CudaKernel),
        row(Op::SwiGlu, Cuda, CUDA_TYPES, CudaKernel),
        // Blockwise (query blocks, output + log-sum-exp kept, recomputed in the backward).
        row(Op::Attention, Cuda, CUDA_TYPES, CudaComposed),
        // Around frozen_matmul; dropout by the dropout kernel; keeps drop(x) when dropping.
        row(Op::LoraLinear, Cuda, CUDA_TYPES, CudaComposed),
        // cuBLAS through candle's matmul; input gradient only.
        row(Op::FrozenMatmul, Cuda, CUDA_TYPES, CudaComposed),
        // NF4 by its kernel; int8 dequantized on the host and uploaded (no kernel yet).
        row(Op::Dequant, Cuda, CUDA_TYPES, CudaKernel),
        // Chunked logits from candle ops (kernels/cross_entropy.cu is not wired yet).
        row(Op::CrossEntropy, Cuda, CUDA_TYPES, CudaComposed),
        row(Op::Dropout, Cuda, CUDA_TYPES, CudaKernel),
    ]
};

/// What a training plan asks of the ops beyond the ones every step uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// `lora_dropout > 0`.
    pub dropout: bool,
    /// `load_in_4bit` / `load_in_8bit`.
    pub quantized_base: bool,
}

/// The ops a plan with `features` runs.
pub fn ops_for(features: Features) -> Vec<Op> {
    let mut ops = vec![
        Op::RmsNorm,
        Op::Rope,
        Op::SwiGlu,
        Op::Attention,
        Op::LoraLinear,
        Op::FrozenMatmul,
        Op::CrossEntropy,
    ];
    if features.dropout {
        ops.push(Op::Dropout);
    }
    if features.quantized_base {
        ops.push(Op::Dequant);
    }
    ops
}

/// The table's row for `(op, device)` when it covers `dtype`.
pub fn lookup(op: Op, device: DeviceKind, dtype: DType) -> Option<&'static Support> {
    SUPPORT
        .iter()
        .find(|s| s.op == op && s.device == device && s.dtypes.contains(&dtype))
}

/// `Ok` when every op the plan needs exists for `(device, dtype)`; otherwise one message per
/// missing combination, naming it.
pub fn check_supported(
    device: DeviceKind,
    dtype: DType,
    features: Features,
) -> std::result::Result<(), Vec<String>> {
    let missing: Vec<String> = ops_for(features)
        .into_iter()
        .filter(|&op| lookup(op, device, dtype).is_none())
        .map(|op| {
            format!(
                "op `{}` has no {device:?} implementation for {dtype:?} activations \
                 (see runner_model::ops::SUPPORT); use f32{}",
                op.name(),
                if device == DeviceKind::Cuda {
                    " or bf16"
                } else {
                    ", bf16 or f16"
                }
            )
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// The error of an op asked for a combination the table lacks (a bug once
/// [`check_supported`] ran, so reported, never worked around).
pub(crate) fn unsupported(op: Op, device: &Device, dtype: DType) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "op `{}` has no {:?} implementation for {dtype:?}",
        op.name(),
        DeviceKind::of(device)
    ))
}

/// `Ok` when the table has `op` for `x`'s device and dtype.
pub(crate) fn require(op: Op, x: &Tensor) -> candle_core::Result<()> {
    match lookup(op, DeviceKind::of(x.device()), x.dtype()) {
        Some(_) => Ok(()),
        None => Err(unsupported(op, x.device(), x.dtype())),
    }
}

// ---------------------------------------------------------------------------------------------
// CPU values: f32 borrowed, bf16/f16 converted (the op computes in f32 inside)

/// The values of a contiguous CPU custom-op input as f32: borrowed for f32, converted otherwise.
pub(crate) fn cpu_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<Cow<'a, [f32]>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: input is not contiguous")
    };
    Ok(match s {
        CpuStorage::F32(v) => Cow::Borrowed(&v[a..b]),
        CpuStorage::BF16(v) => Cow::Owned(v[a..b].par_iter().map(|x| x.to_f32()).collect()),
        CpuStorage::F16(v) => Cow::Owned(v[a..b].par_iter().map(|x| x.to_f32()).collect()),
        other => candle_core::bail!("{op}: {:?} inputs are not supported", other.dtype()),
    })
}

/// f32 results stored as `dtype` (round to nearest even).
pub(crate) fn cpu_store(dtype: DType, v: Vec<f32>, op: &str) -> candle_core::Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::BF16 => CpuStorage::BF16(v.par_iter().map(|&x| bf16::from_f32(x)).collect()),
        DType::F16 => CpuStorage::F16(v.par_iter().map(|&x| f16::from_f32(x)).collect()),
        other => candle_core::bail!("{op}: {other:?} outputs are not supported"),
    })
}

/// A CPU tensor of `dtype` from f32 values (the backward's gradients).
pub(crate) fn tensor_from_f32(
    v: Vec<f32>,
    shape: impl Into<Shape>,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let shape = shape.into();
    let dev = Device::Cpu;
    match dtype {
        DType::F32 => Tensor::from_vec(v, shape, &dev),
        DType::BF16 => Tensor::from_vec(
            v.par_iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(),
            shape,
            &dev,
        ),
        DType::F16 => Tensor::from_vec(
            v.par_iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
            shape,
            &dev,
        ),
        other => candle_core::bail!("{other:?} gradients are not supported"),
    }
}

/// The f32 values of a CPU tensor, for the backward passes and captured tensors: borrowed from
/// its storage when it is contiguous f32 (the usual case), converted or copied otherwise.
pub(crate) enum Vals<'a> {
    Borrowed(StorageRef<'a>, std::ops::Range<usize>),
    Owned(Vec<f32>),
}

impl std::ops::Deref for Vals<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            // `vals` builds `Borrowed` only over f32 CPU storage.
            Vals::Borrowed(g, r) => match &**g {
                candle_core::Storage::Cpu(CpuStorage::F32(v)) => &v[r.clone()],
                _ => &[],
            },
            Vals::Owned(v) => v,
        }
    }
}

pub(crate) fn vals(t: &Tensor) -> candle_core::Result<Vals<'_>> {
    let (st, l) = t.storage_and_layout();
    match (&*st, l.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) => {
            Ok(Vals::Borrowed(st, a..b))
        }
        // Converted straight from the storage: one f32 copy, never a converted tensor and
        // then its `Vec` (twice the bytes at once; for a bf16 LM head that was 2 × 113 MB on
        // SmolLM2, issue 12).
        (candle_core::Storage::Cpu(CpuStorage::BF16(x)), Some((a, b))) => Ok(Vals::Owned(
            x[a..b].par_iter().map(|x| x.to_f32()).collect(),
        )),
        (candle_core::Storage::Cpu(CpuStorage::F16(x)), Some((a, b))) => Ok(Vals::Owned(
            x[a..b].par_iter().map(|x| x.to_f32()).collect(),
        )),
        (candle_core::Storage::Cpu(_), _) => {
            drop(st);
            Ok(Vals::Owned(
                t.to_dtype(DType::F32)?
                    .contiguous()?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ))
        }
        _ => candle_core::bail!("op: expected a CPU tensor"),
    }
}

/// Whether a backward should produce a gradient for `t`.
pub(crate) fn wants_grad(t: &Tensor) -> bool {
    t.is_variable() || t.track_op()
}

/// Rows per rayon task for the row-wise ops: large enough to amortise the task, small enough
/// to balance two to a few dozen threads.
pub(crate) const ROWS_PER_TASK: usize = 64;

/// Elements per rayon task for the elementwise ops.
pub(crate) const CHUNK: usize = 16 * 1024;

/// A CPU tensor's storage handed back by a custom op whose output was computed beforehand with
/// tensor ops (the blockwise GPU sides record themselves this way).
pub(crate) fn take_output(
    slot: &std::sync::Mutex<Option<Tensor>>,
    op: &str,
) -> candle_core::Result<Tensor> {
    slot.lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: output already taken")))
}

// ---------------------------------------------------------------------------------------------
// Matrix products on strided f32 views (gemm, the kernel candle's CPU matmul uses)

/// A strided f32 matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl View {
    pub fn rows(ptr: *const f32, rs: usize) -> Self {
        Self {
            ptr,
            rs: rs as isize,
            cs: 1,
        }
    }

    /// The transpose of a view.
    pub fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `dst (m×n, row stride dst_rs) = [dst +] beta · lhs (m×k) · rhs (k×n)`.
///
/// # Safety
/// Every element the views address must be in bounds of live allocations, and `dst` must not be
/// written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    beta: f32,
    threads: bool,
) {
    let par = if threads {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        )
    }
}

/// A raw output pointer handed to rayon tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub *mut f32);
// SAFETY: every use writes a region no other task touches (stated at each use).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}
impl Shared {
    pub fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;

    /// Every op has a CPU row for every dtype the CPU path runs, and a missing combination is
    /// refused with its name.
    #[test]
    fn issue_12_the_table_refuses_a_missing_combination_by_name() {
        let all = Features {
            dropout: true,
            quantized_base: true,
        };
        for dt in [DType::F32, DType::BF16, DType::F16] {
            assert!(check_supported(DeviceKind::Cpu, dt, all).is_ok());
        }
        assert!(check_supported(DeviceKind::Cuda, DType::BF16, all).is_ok());
        let e = check_supported(DeviceKind::Cuda, DType::F16, all).unwrap_err();
        assert_eq!(e.len(), ops_for(all).len());
        assert!(e[0].contains("`rms_norm`") && e[0].contains("F16"), "{e:?}");
        let e = check_supported(DeviceKind::Cpu, DType::F64, Features::default()).unwrap_err();
        assert!(e.iter().any(|m| m.contains("`attention`")), "{e:?}");
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Shared test helpers: random inputs and the fused-vs-reference check, in any dtype.
    use candle_core::{DType, Device, Tensor, Var};

    pub fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.shape(), b.shape());
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        (f(a) - f(b))
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Forward values and the gradients of `Σ y·r` for every input agree with `reference`
    /// (relative to the largest entry when that exceeds 1). `dtypes[i]` is the
    /// dtype input `i` is given to the op; the reference always runs in f32 on the same
    /// (rounded) values, so the tolerance states the op's own rounding.
    pub fn check_typed(
        inputs: &[Tensor],
        dtypes: &[DType],
        op: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        let rounded: Vec<Tensor> = inputs
            .iter()
            .zip(dtypes)
            .map(|(t, &d)| t.to_dtype(d).unwrap())
            .collect();
        let vars: Vec<Var> = rounded
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let ref_vars: Vec<Var> = rounded
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap())
            .collect();
        let rs: Vec<Tensor> = ref_vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (yf, yr) = (op(&ts), reference(&rs));
        let d = max_diff(&yf, &yr);
        let size = yr.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let size = size.to_scalar::<f32>().unwrap().max(1.0);
        assert!(d < tol * size, "forward differs by {d} (size {size})");
        let r = randn(yf.dims(), 99);
        let gf = (yf.to_dtype(DType::F32).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr = (&yr * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, (t, rt)) in ts.iter().zip(&rs).enumerate() {
            let (a, b) = (gf.get(t).unwrap(), gr.get(rt).unwrap());
            assert_eq!(
                a.dtype(),
                t.dtype(),
                "gradient {i} comes back in its input's dtype"
            );
            let size = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let size = size.to_scalar::<f32>().unwrap().max(1.0);
            let d = max_diff(a, b);
            assert!(
                d < tol * size,
                "gradient of input {i} differs by {d} (size {size})"
            );
        }
    }

    /// [`check_typed`] with every input in f32.
    pub fn check(
        inputs: &[Tensor],
        op: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        check_typed(inputs, &vec![DType::F32; inputs.len()], op, reference, tol);
    }
}
