//! Fused CPU ops for the f32 training step, each a candle custom op with a hand-written backward:
//! RMSNorm, RoPE, SwiGLU and causal attention over packed samples. Each replaces a chain of
//! five to ten elementwise candle ops (one allocation and one pass over memory each, mostly on
//! one thread) with one multi-threaded pass forward and one backward. The composed versions in
//! `nn.rs` stay the reference (and the path for other dtypes and devices); the tests below
//! check forward values and gradients against them.

use crate::error::Result;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, StorageRef, Tensor,
};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Whether the fused ops apply to `x`: f32 on the CPU.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The f32 values of a contiguous CPU storage (custom-op inputs).
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected f32 values")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input is not contiguous"),
    }
}

/// The f32 values of a CPU tensor, for the backward passes: borrowed from its storage when
/// contiguous (the usual case), copied otherwise.
enum Vals<'a> {
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

fn vals(t: &Tensor) -> candle_core::Result<Vals<'_>> {
    let (st, l) = t.storage_and_layout();
    match (&*st, l.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) => {
            Ok(Vals::Borrowed(st, a..b))
        }
        (candle_core::Storage::Cpu(CpuStorage::F32(_)), None) => {
            drop(st);
            Ok(Vals::Owned(values(t)?))
        }
        _ => candle_core::bail!("fused op: expected an f32 CPU tensor"),
    }
}

/// The f32 values of a CPU tensor, copied.
fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

/// Runs `f` on borrowed contiguous f32 values of `t` without copying when possible.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => match l.contiguous_offsets() {
            Some((a, b)) => Ok(f(&v[a..b])),
            None => Ok(f(&values(&t)?)),
        },
        _ => candle_core::bail!("fused op: expected an f32 CPU tensor"),
    }
}

fn out(v: Vec<f32>, shape: &Shape) -> (CpuStorage, Shape) {
    (CpuStorage::F32(v), shape.clone())
}

/// Rows per rayon task for the row-wise ops: large enough to amortise the task, small enough
/// to balance two to a few dozen threads.
const ROWS_PER_TASK: usize = 64;

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `w · x / sqrt(mean(x²) + eps)` over the last dimension; `x: (..., C)`, `w: (C)`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op2(w, RmsNormOp { eps: eps as f32 })?)
}

struct RmsNormOp {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let c = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(c * ROWS_PER_TASK)
            .zip(x.par_chunks(c * ROWS_PER_TASK))
            .for_each(|(yb, xb)| {
                for (yr, xr) in yb.chunks_mut(c).zip(xb.chunks(c)) {
                    let inv = inv_rms(xr, self.eps);
                    for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
                        *yv = (xv * inv) * wv;
                    }
                }
            });
        Ok(out(y, l1.shape()))
    }

    /// With `x̂ = x·inv` and `g = dy·w`: `dx = inv·(g − x̂·mean(g·x̂))`, `dw = Σ_rows dy·x̂`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let wv = vals(w)?;
        let c = wv.len();
        let want_w = w.is_variable() || w.track_op();
        let dyv = vals(dy)?;
        let (dx, dw) = with_values(x, |xv| {
            let mut dx = vec![0f32; xv.len()];
            let dw = dx
                .par_chunks_mut(c * ROWS_PER_TASK)
                .zip(xv.par_chunks(c * ROWS_PER_TASK))
                .zip(dyv.par_chunks(c * ROWS_PER_TASK))
                .map(|((dxb, xb), dyb)| {
                    let mut dw = if want_w { vec![0f32; c] } else { Vec::new() };
                    for ((dxr, xr), dyr) in dxb.chunks_mut(c).zip(xb.chunks(c)).zip(dyb.chunks(c)) {
                        let inv = inv_rms(xr, self.eps);
                        let dot: f32 = xr
                            .iter()
                            .zip(dyr)
                            .zip(wv.iter())
                            .map(|((x, d), w)| d * w * x * inv)
                            .sum();
                        let mean = dot / c as f32;
                        for i in 0..c {
                            let xh = xr[i] * inv;
                            dxr[i] = inv * (dyr[i] * wv[i] - xh * mean);
                            if want_w {
                                dw[i] += dyr[i] * xh;
                            }
                        }
                    }
                    dw
                })
                .reduce(Vec::new, |a, b| {
                    if a.is_empty() {
                        b
                    } else if b.is_empty() {
                        a
                    } else {
                        a.iter().zip(&b).map(|(p, q)| p + q).collect()
                    }
                });
            (dx, dw)
        })?;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = if want_w {
            Some(Tensor::from_vec(dw, w.shape(), w.device())?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE

/// cos/sin of every (row, position, frequency): `(B·T, D/2)` each, f32, as transformers computes
/// them (`inv_freq · position` in f32, then cos and sin).
#[derive(Debug)]
pub struct RopeTable {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(inv_freq: &[f32], positions: &[u32]) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in inv_freq {
                let a = f * p as f32;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self { half, cos, sin }
    }
}

/// RoPE (`x·cos + rotate_half(x)·sin`) on `x: (B, T, n, D)` in that layout (no transpose).
pub fn rope(x: &Tensor, table: &Arc<RopeTable>) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(RopeOp {
        table: table.clone(),
        inverse: false,
    })?)
}

struct RopeOp {
    table: Arc<RopeTable>,
    /// Rotate by `-θ` (the backward of a rotation is the opposite rotation).
    inverse: bool,
}

impl RopeOp {
    fn apply(&self, x: &[f32], shape: &Shape) -> candle_core::Result<Vec<f32>> {
        let (b, t, n, d) = shape.dims4()?;
        let half = self.table.half;
        if d != 2 * half || self.table.cos.len() != b * t * half {
            candle_core::bail!("fused-rope: shape {shape:?} does not match the table");
        }
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        // One task per (row, position): its n heads share cos/sin.
        y.par_chunks_mut(n * d)
            .zip(x.par_chunks(n * d))
            .enumerate()
            .for_each(|(pos, (yp, xp))| {
                let cos = &self.table.cos[pos * half..(pos + 1) * half];
                let sin = &self.table.sin[pos * half..(pos + 1) * half];
                for (yh, xh) in yp.chunks_mut(d).zip(xp.chunks(d)) {
                    let (x1, x2) = xh.split_at(half);
                    let (y1, y2) = yh.split_at_mut(half);
                    for i in 0..half {
                        let s = sign * sin[i];
                        y1[i] = x1[i] * cos[i] + (-x2[i]) * s;
                        y2[i] = x2[i] * cos[i] + x1[i] * s;
                    }
                }
            });
        Ok(y)
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        Ok(out(self.apply(x, l.shape())?, l.shape()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inv = RopeOp {
            table: self.table.clone(),
            inverse: !self.inverse,
        };
        let dx = with_values(dy, |v| inv.apply(v, dy.shape()))??;
        Ok(Some(Tensor::from_vec(dx, dy.shape(), dy.device())?))
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// `silu(g) · u`, elementwise.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    Ok(g.contiguous()?.apply_op2(&u.contiguous()?, SwiGluOp)?)
}

struct SwiGluOp;

const CHUNK: usize = 16 * 1024;

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, self.name())?;
        let u = slice(s2, l2, self.name())?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("fused-swiglu: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(yc, (gc, uc))| {
                for ((y, &g), &u) in yc.iter_mut().zip(gc).zip(uc) {
                    *y = g / (1.0 + (-g).exp()) * u;
                }
            });
        Ok(out(y, l1.shape()))
    }

    /// `σ = sigmoid(g)`: `dg = dy·u·σ·(1 + g·(1 − σ))`, `du = dy·g·σ`.
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (gv, uv, dyv) = (vals(g)?, vals(u)?, vals(dy)?);
        let mut dg = vec![0f32; gv.len()];
        let mut du = vec![0f32; gv.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(gv.par_chunks(CHUNK).zip(uv.par_chunks(CHUNK)))
            .zip(dyv.par_chunks(CHUNK))
            .for_each(|(((dgc, duc), (gc, uc)), dyc)| {
                for i in 0..gc.len() {
                    let s = 1.0 / (1.0 + (-gc[i]).exp());
                    let silu = gc[i] * s;
                    duc[i] = dyc[i] * silu;
                    dgc[i] = dyc[i] * uc[i] * s * (1.0 + gc[i] * (1.0 - s));
                }
            });
        Ok((
            Some(Tensor::from_vec(dg, g.shape(), g.device())?),
            Some(Tensor::from_vec(du, u.shape(), u.device())?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix products on strided f32 views (gemm, the kernel candle's CPU matmul uses)

/// A strided f32 matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl View {
    fn rows(ptr: *const f32, rs: usize) -> Self {
        Self {
            ptr,
            rs: rs as isize,
            cs: 1,
        }
    }

    /// The transpose of a row-major view.
    fn t(self) -> Self {
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
unsafe fn mm(
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
struct Shared(*mut f32);
// SAFETY: every use writes a region no other task touches (stated at each use).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}
impl Shared {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

/// Which keys each query may attend to: for query `i` of a row, the keys `lo[i] ..= i`.
/// Packed samples are contiguous runs of one `seq_id`, so the block-diagonal causal mask of
/// [`crate::nn::attention_mask`] is such a range; padding (id 0) attends only to itself.
#[derive(Debug, Clone)]
pub struct Spans {
    pub b: usize,
    pub t: usize,
    lo: Vec<usize>,
}

impl Spans {
    /// `None` when a sample's positions are not one contiguous run (then the mask is not a
    /// range and the caller uses the general path).
    pub fn new(seq_ids: &[u32], b: usize, t: usize, window: Option<usize>) -> Option<Self> {
        let mut lo = vec![0usize; b * t];
        for row in 0..b {
            let ids = &seq_ids[row * t..(row + 1) * t];
            let mut seen = std::collections::HashSet::new();
            let mut start = 0;
            for i in 0..t {
                if i == 0 || ids[i] != ids[i - 1] {
                    start = i;
                    if ids[i] != 0 && !seen.insert(ids[i]) {
                        return None;
                    }
                }
                let from = if ids[i] == 0 { i } else { start };
                let from = window.map_or(from, |w| from.max((i + 1).saturating_sub(w)));
                lo[row * t + i] = from;
            }
        }
        Some(Self { b, t, lo })
    }
}

/// Query rows per block: the keys a block needs are `min lo .. block end`, so causal and
/// block-diagonal structure skips whole key ranges.
const ATTN_BLOCK: usize = 64;

/// Causal scaled-dot-product attention over packed samples.
/// `q: (B, T, H, D)`, `k, v: (B, T, KV, D)` (grouped-query: `H / KV` query heads per kv head)
/// → `(B, T, H·D)`, ready for `o_proj`. Scores and softmax in f32, as transformers.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spans: &Arc<Spans>) -> Result<Tensor> {
    let op = AttentionOp {
        spans: spans.clone(),
        lse: Mutex::new(None),
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

struct AttentionOp {
    spans: Arc<Spans>,
    /// log-sum-exp of each query's scores `(B, H, T)`, kept by the forward for the backward.
    lse: Mutex<Option<Arc<Vec<f32>>>>,
}

#[derive(Clone, Copy)]
struct AttnDims {
    b: usize,
    t: usize,
    h: usize,
    kv: usize,
    d: usize,
    scale: f32,
}

impl AttnDims {
    fn of(q: &Shape, k: &Shape, v: &Shape, spans: &Spans) -> candle_core::Result<Self> {
        let (b, t, h, d) = q.dims4()?;
        let (kb, kt, kv, kd) = k.dims4()?;
        if (kb, kt, kd) != (b, t, d) || k != v || kv == 0 || h % kv != 0 {
            candle_core::bail!("fused-attention: shapes q {q:?}, k {k:?}, v {v:?} do not fit")
        }
        if (spans.b, spans.t) != (b, t) {
            candle_core::bail!("fused-attention: mask is for ({}, {})", spans.b, spans.t)
        }
        Ok(Self {
            b,
            t,
            h,
            kv,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        })
    }

    /// Query row range of a block and the key range it needs.
    fn block(&self, lo: &[usize], r0: usize) -> (usize, usize, usize) {
        let r1 = (r0 + ATTN_BLOCK).min(self.t);
        let klo = lo[r0..r1].iter().copied().min().unwrap_or(r0);
        (r1, klo, r1)
    }
}

/// Fills `s` (rows × cols, row-major) with the attention weights of queries `r0..` over keys
/// `klo..`: scaled scores, softmax over each query's allowed keys, zero elsewhere. With `lse`
/// given the weights come from it (backward); otherwise it is written (forward).
fn softmax_block(
    s: &mut [f32],
    cols: usize,
    (r0, klo): (usize, usize),
    lo: &[usize],
    scale: f32,
    lse: &mut [f32],
    recompute: bool,
) {
    for (r, row) in s.chunks_mut(cols).enumerate() {
        let i = r0 + r;
        let (a, z) = (lo[i] - klo, i - klo + 1);
        row[..a].fill(0.0);
        row[z..].fill(0.0);
        let allowed = &mut row[a..z];
        for x in allowed.iter_mut() {
            *x *= scale;
        }
        if recompute {
            let l = lse[r];
            for x in allowed.iter_mut() {
                *x = (*x - l).exp();
            }
        } else {
            let max = allowed.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for x in allowed.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            for x in allowed.iter_mut() {
                *x /= sum;
            }
            lse[r] = max + sum.ln();
        }
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.name();
        let (q, k, v) = (slice(s1, l1, n)?, slice(s2, l2, n)?, slice(s3, l3, n)?);
        let dm = AttnDims::of(l1.shape(), l2.shape(), l3.shape(), &self.spans)?;
        let AttnDims {
            b,
            t,
            h,
            kv,
            d,
            scale,
        } = dm;
        let groups = h / kv;
        let mut o = vec![0f32; b * t * h * d];
        let mut lse = vec![0f32; b * h * t];
        let o_ptr = Shared(o.as_mut_ptr());
        lse.par_chunks_mut(t).enumerate().for_each(|(job, lse_bh)| {
            let (bi, hi) = (job / h, job % h);
            let g = hi / groups;
            let lo = &self.spans.lo[bi * t..(bi + 1) * t];
            let qb = bi * t * h * d + hi * d;
            let kb = bi * t * kv * d + g * d;
            let mut s = Vec::new();
            for r0 in (0..t).step_by(ATTN_BLOCK) {
                let (r1, klo, khi) = dm.block(lo, r0);
                let (rows, cols) = (r1 - r0, khi - klo);
                s.clear();
                s.resize(rows * cols, 0.0);
                // SAFETY: q/k/v views stay inside their slices (rows < t, cols ≤ t, d
                // columns at a head offset < row stride); this task alone writes head `hi`'s
                // columns of rows r0..r1 of batch row `bi` in `o`.
                unsafe {
                    mm(
                        (rows, cols, d),
                        s.as_mut_ptr(),
                        cols,
                        false,
                        View::rows(q.as_ptr().add(qb + r0 * h * d), h * d),
                        View::rows(k.as_ptr().add(kb + klo * kv * d), kv * d).t(),
                        1.0,
                        false,
                    );
                }
                softmax_block(
                    &mut s,
                    cols,
                    (r0, klo),
                    lo,
                    scale,
                    &mut lse_bh[r0..r1],
                    false,
                );
                unsafe {
                    mm(
                        (rows, d, cols),
                        o_ptr.at(qb + r0 * h * d),
                        h * d,
                        false,
                        View::rows(s.as_ptr(), cols),
                        View::rows(v.as_ptr().add(kb + klo * kv * d), kv * d),
                        1.0,
                        false,
                    );
                }
            }
        });
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(lse));
        Ok(out(o, &Shape::from((b, t, h * d))))
    }

    /// Per query block, with `P` recomputed from the saved log-sum-exp:
    /// `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ∘ (dP − rowsum(P ∘ dP))`, `dQ = scale · dS K`,
    /// `dK += scale · dSᵀ Q`.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _o: &Tensor,
        d_o: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = AttnDims::of(q.shape(), k.shape(), v.shape(), &self.spans)?;
        let AttnDims {
            b,
            t,
            h,
            kv,
            d,
            scale,
        } = dm;
        let groups = h / kv;
        let lse = self
            .lse
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("fused-attention: no forward state".into()))?;
        let (qv, kvv, vv, dov) = (vals(q)?, vals(k)?, vals(v)?, vals(d_o)?);
        let mut dq = vec![0f32; qv.len()];
        let mut dk = vec![0f32; kvv.len()];
        let mut dv = vec![0f32; vv.len()];
        let (dq_p, dk_p, dv_p) = (
            Shared(dq.as_mut_ptr()),
            Shared(dk.as_mut_ptr()),
            Shared(dv.as_mut_ptr()),
        );
        // One task per (batch row, kv head): it alone writes that kv head's dK/dV and the dQ of
        // the query heads of its group.
        (0..b * kv).into_par_iter().for_each(|job| {
            let (bi, g) = (job / kv, job % kv);
            let lo = &self.spans.lo[bi * t..(bi + 1) * t];
            let kb = bi * t * kv * d + g * d;
            let (mut p, mut dp) = (Vec::new(), Vec::new());
            let mut lse_blk = vec![0f32; ATTN_BLOCK];
            for hi in g * groups..(g + 1) * groups {
                let qb = bi * t * h * d + hi * d;
                let lse_bh = &lse[(bi * h + hi) * t..(bi * h + hi + 1) * t];
                for r0 in (0..t).step_by(ATTN_BLOCK) {
                    let (r1, klo, khi) = dm.block(lo, r0);
                    let (rows, cols) = (r1 - r0, khi - klo);
                    p.clear();
                    p.resize(rows * cols, 0.0);
                    dp.clear();
                    dp.resize(rows * cols, 0.0);
                    let q_blk = View::rows(qv.as_ptr().wrapping_add(qb + r0 * h * d), h * d);
                    let do_blk = View::rows(dov.as_ptr().wrapping_add(qb + r0 * h * d), h * d);
                    let k_rng = View::rows(kvv.as_ptr().wrapping_add(kb + klo * kv * d), kv * d);
                    let v_rng = View::rows(vv.as_ptr().wrapping_add(kb + klo * kv * d), kv * d);
                    // SAFETY: as in the forward; dQ rows r0..r1 of head hi and dK/dV rows of kv
                    // head g of batch row bi belong to this task alone.
                    unsafe {
                        mm(
                            (rows, cols, d),
                            p.as_mut_ptr(),
                            cols,
                            false,
                            q_blk,
                            k_rng.t(),
                            1.0,
                            false,
                        );
                    }
                    lse_blk[..rows].copy_from_slice(&lse_bh[r0..r1]);
                    softmax_block(
                        &mut p,
                        cols,
                        (r0, klo),
                        lo,
                        scale,
                        &mut lse_blk[..rows],
                        true,
                    );
                    unsafe {
                        mm(
                            (rows, cols, d),
                            dp.as_mut_ptr(),
                            cols,
                            false,
                            do_blk,
                            v_rng.t(),
                            1.0,
                            false,
                        );
                    }
                    for (pr, dpr) in p.chunks(cols).zip(dp.chunks_mut(cols)) {
                        let di: f32 = pr.iter().zip(dpr.iter()).map(|(a, b)| a * b).sum();
                        for (x, &pv) in dpr.iter_mut().zip(pr) {
                            *x = pv * (*x - di);
                        }
                    }
                    let ds = View::rows(dp.as_ptr(), cols);
                    let pv = View::rows(p.as_ptr(), cols);
                    unsafe {
                        mm(
                            (rows, d, cols),
                            dq_p.at(qb + r0 * h * d),
                            h * d,
                            false,
                            ds,
                            k_rng,
                            scale,
                            false,
                        );
                        mm(
                            (cols, d, rows),
                            dk_p.at(kb + klo * kv * d),
                            kv * d,
                            true,
                            ds.t(),
                            q_blk,
                            scale,
                            false,
                        );
                        mm(
                            (cols, d, rows),
                            dv_p.at(kb + klo * kv * d),
                            kv * d,
                            true,
                            pv.t(),
                            do_blk,
                            1.0,
                            false,
                        );
                    }
                }
            }
        });
        let mk = |v: Vec<f32>, like: &Tensor| Tensor::from_vec(v, like.shape(), like.device());
        Ok((Some(mk(dq, q)?), Some(mk(dk, k)?), Some(mk(dv, v)?)))
    }
}

// ---------------------------------------------------------------------------------------------
// LoRA linear

/// Which inputs inverted dropout keeps, one bit each, and the factor `1/(1-p)` on the kept ones.
#[derive(Debug)]
pub struct DropMask {
    bits: Vec<u64>,
    scale: f32,
}

impl DropMask {
    /// Keeps element `i` when `draws[i] ≥ p·2³²` (the draws of [`crate::nn::dropout`]).
    pub fn new(draws: &[u32], p: f64) -> Self {
        let threshold = (p * 4_294_967_296.0).min(u32::MAX as f64) as u32;
        let bits = draws
            .par_chunks(64)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u64, |w, (j, &u)| w | (u64::from(u >= threshold) << j))
            })
            .collect();
        Self {
            bits,
            scale: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// `x ∘ mask`, scaled.
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = x.to_vec();
        self.apply_in_place(&mut y);
        y
    }

    fn apply_in_place(&self, x: &mut [f32]) {
        x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, xc)| {
            for (j, v) in xc.iter_mut().enumerate() {
                let i = c * CHUNK + j;
                let keep = self.bits[i / 64] >> (i % 64) & 1 == 1;
                *v = if keep { *v * self.scale } else { 0.0 };
            }
        });
    }
}

/// `y = x Wᵀ (+ bias) + s · (drop(x) Aᵀ) Bᵀ` for a frozen dense `W: (out, in)` as one op, with
/// `x: (N, in)`, `A: (r, in)`, `B: (out, r)`. The graph keeps only `x`, `A`, `B`, the dropout bits
/// and `drop(x) Aᵀ` (N × r); the composed version keeps four `(N, out)`/`(N, in)` tensors more per
/// projection (base output, adapter output, dropout mask and dropped input).
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    (a, b): (&Tensor, &Tensor),
    scale: f64,
    mask: Option<DropMask>,
) -> Result<Tensor> {
    lora_linear_on(
        x,
        BaseWeight::Dense(w.contiguous()?),
        bias,
        (a, b),
        scale,
        mask,
    )
}

/// [`lora_linear`] on an NF4 / int8 base (QLoRA): the frozen weight is dequantized into a
/// transient buffer for the forward product and again for the input gradient, never kept.
pub fn lora_linear_quant(
    x: &Tensor,
    w: &Arc<crate::quant::QuantWeight>,
    bias: Option<&Tensor>,
    (a, b): (&Tensor, &Tensor),
    scale: f64,
    mask: Option<DropMask>,
) -> Result<Tensor> {
    lora_linear_on(x, BaseWeight::Quant(w.clone()), bias, (a, b), scale, mask)
}

/// The frozen weight of a fused LoRA linear: values, or their quantized form.
enum BaseWeight {
    Dense(Tensor),
    Quant(Arc<crate::quant::QuantWeight>),
}

fn lora_linear_on(
    x: &Tensor,
    w: BaseWeight,
    bias: Option<&Tensor>,
    (a, b): (&Tensor, &Tensor),
    scale: f64,
    mask: Option<DropMask>,
) -> Result<Tensor> {
    let op = LoraLinearOp {
        w,
        bias: bias.map(Tensor::contiguous).transpose()?,
        scale: scale as f32,
        mask,
        xa: Mutex::new(None),
    };
    Ok(x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)?)
}

struct LoraLinearOp {
    w: BaseWeight,
    bias: Option<Tensor>,
    scale: f32,
    mask: Option<DropMask>,
    /// `drop(x) Aᵀ`, kept by the forward for `dB`.
    xa: Mutex<Option<Vec<f32>>>,
}

impl LoraLinearOp {
    /// Runs `f` on the frozen weight's f32 values `[out, in]`.
    fn with_w<R>(&self, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
        match &self.w {
            BaseWeight::Dense(t) => with_values(t, f),
            BaseWeight::Quant(q) => Ok(f(&q.dequantize())),
        }
    }
}

impl CustomOp3 for LoraLinearOp {
    fn name(&self) -> &'static str {
        "fused-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.name();
        let (x, a, b) = (slice(s1, l1, n)?, slice(s2, l2, n)?, slice(s3, l3, n)?);
        let (rows, din) = l1.shape().dims2()?;
        let (r, _) = l2.shape().dims2()?;
        let (dout, _) = l3.shape().dims2()?;
        let mut y = vec![0f32; rows * dout];
        self.with_w(|w| {
            if w.len() != dout * din || a.len() != r * din || b.len() != dout * r {
                candle_core::bail!("fused-lora-linear: shapes do not fit");
            }
            // SAFETY: every view is inside its slice (checked sizes above); `y` is ours.
            unsafe {
                mm(
                    (rows, dout, din),
                    y.as_mut_ptr(),
                    dout,
                    false,
                    View::rows(x.as_ptr(), din),
                    View::rows(w.as_ptr(), din).t(),
                    1.0,
                    true,
                );
            }
            Ok(())
        })??;
        if let Some(bias) = &self.bias {
            with_values(bias, |bv| {
                y.par_chunks_mut(dout).for_each(|row| {
                    for (v, b) in row.iter_mut().zip(bv) {
                        *v += b;
                    }
                })
            })?;
        }
        let dropped = self.mask.as_ref().map(|m| m.apply(x));
        let xd = dropped.as_deref().unwrap_or(x);
        let mut xa = vec![0f32; rows * r];
        // SAFETY: as above.
        unsafe {
            mm(
                (rows, r, din),
                xa.as_mut_ptr(),
                r,
                false,
                View::rows(xd.as_ptr(), din),
                View::rows(a.as_ptr(), din).t(),
                1.0,
                true,
            );
            mm(
                (rows, dout, r),
                y.as_mut_ptr(),
                dout,
                true,
                View::rows(xa.as_ptr(), r),
                View::rows(b.as_ptr(), r).t(),
                self.scale,
                true,
            );
        }
        *self.xa.lock().unwrap_or_else(|e| e.into_inner()) = Some(xa);
        Ok(out(y, &Shape::from((rows, dout))))
    }

    /// With `g = s · dy B`: `dx = dy W + drop'(g A)`, `dA = gᵀ drop(x)`, `dB = s · dyᵀ (drop(x) Aᵀ)`.
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, din) = x.dims2()?;
        let (r, dout) = (a.dim(0)?, b.dim(0)?);
        let xa = self
            .xa
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg("fused-lora-linear: no forward state".into()))?;
        let (dyv, av, bv) = (vals(dy)?, vals(a)?, vals(b)?);
        let dyr = View::rows(dyv.as_ptr(), dout);
        let mut g = vec![0f32; rows * r];
        let mut da = vec![0f32; r * din];
        let mut db = vec![0f32; dout * r];
        // SAFETY: every view is inside its vector; the outputs are ours.
        unsafe {
            mm(
                (rows, r, dout),
                g.as_mut_ptr(),
                r,
                false,
                dyr,
                View::rows(bv.as_ptr(), r),
                self.scale,
                true,
            );
            mm(
                (dout, r, rows),
                db.as_mut_ptr(),
                r,
                false,
                dyr.t(),
                View::rows(xa.as_ptr(), r),
                self.scale,
                true,
            );
        }
        with_values(x, |xv| {
            let dropped = self.mask.as_ref().map(|m| m.apply(xv));
            let xd = dropped.as_deref().unwrap_or(xv);
            // SAFETY: as above.
            unsafe {
                mm(
                    (r, din, rows),
                    da.as_mut_ptr(),
                    din,
                    false,
                    View::rows(g.as_ptr(), r).t(),
                    View::rows(xd.as_ptr(), din),
                    1.0,
                    true,
                );
            }
        })?;
        let dx = if x.track_op() {
            let mut dx = vec![0f32; rows * din];
            // dx = dy W + drop'(g A): g A goes straight into dx without dropout, through a
            // buffer that is masked and added with it.
            let mut ga = if self.mask.is_some() {
                vec![0f32; rows * din]
            } else {
                Vec::new()
            };
            let (ga_dst, ga_acc) = match self.mask {
                Some(_) => (ga.as_mut_ptr(), false),
                None => (dx.as_mut_ptr(), true),
            };
            self.with_w(|w| unsafe {
                // SAFETY: as above; `ga_dst` is `dx` or `ga`, both rows × din and ours.
                mm(
                    (rows, din, dout),
                    dx.as_mut_ptr(),
                    din,
                    false,
                    dyr,
                    View::rows(w.as_ptr(), din),
                    1.0,
                    true,
                );
                mm(
                    (rows, din, r),
                    ga_dst,
                    din,
                    ga_acc,
                    View::rows(g.as_ptr(), r),
                    View::rows(av.as_ptr(), din),
                    1.0,
                    true,
                );
            })?;
            if let Some(m) = &self.mask {
                m.apply_in_place(&mut ga);
                dx.par_chunks_mut(CHUNK)
                    .zip(ga.par_chunks(CHUNK))
                    .for_each(|(d, g)| {
                        for (d, g) in d.iter_mut().zip(g) {
                            *d += g;
                        }
                    });
            }
            Some(Tensor::from_vec(dx, (rows, din), x.device())?)
        } else {
            None
        };
        Ok((
            dx,
            Some(Tensor::from_vec(da, (r, din), a.device())?),
            Some(Tensor::from_vec(db, (dout, r), b.device())?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy over the vocabulary

/// `Σ_i CE(h_i Wᵀ, label_i)` for `h: (N, H)`, `W: (V, H)`, chunk by chunk over the tokens, and
/// when asked its gradients `dh = (softmax − onehot) W`, `dW = (softmax − onehot)ᵀ h`. One
/// `(chunk, V)` buffer holds the logits, is turned into `softmax − onehot` in place and feeds the
/// two gradient products: no other vocabulary-sized tensor exists.
pub fn cross_entropy(
    h: &Tensor,
    w: &Tensor,
    labels: &[u32],
    chunk: usize,
    want_dh: bool,
    want_dw: bool,
) -> candle_core::Result<(f32, Option<Tensor>, Option<Tensor>)> {
    let (n, hd) = h.dims2()?;
    let (v, wd) = w.dims2()?;
    if wd != hd || labels.len() != n {
        candle_core::bail!(
            "fused-cross-entropy: h {:?}, W {:?}, {} labels",
            h.shape(),
            w.shape(),
            labels.len()
        );
    }
    if let Some(&l) = labels.iter().find(|&&l| l as usize >= v) {
        candle_core::bail!("fused-cross-entropy: label {l} outside the vocabulary of {v}");
    }
    let (hv, wv) = (vals(h)?, vals(w)?);
    let chunk = chunk.clamp(1, n.max(1));
    let mut logits = vec![0f32; chunk * v];
    let mut dh = if want_dh {
        vec![0f32; n * hd]
    } else {
        Vec::new()
    };
    let mut dw = if want_dw {
        vec![0f32; v * hd]
    } else {
        Vec::new()
    };
    let mut total = 0f64;
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let lg = &mut logits[..len * v];
        let h_rows = View::rows(hv[start * hd..].as_ptr(), hd);
        // SAFETY: h rows start..start+len and all of W are in bounds; `lg` is ours.
        unsafe {
            mm(
                (len, v, hd),
                lg.as_mut_ptr(),
                v,
                false,
                h_rows,
                View::rows(wv.as_ptr(), hd).t(),
                1.0,
                true,
            );
        }
        let grads = want_dh || want_dw;
        // Per-row losses summed in order afterwards: rayon's reduction tree varies from run to
        // run, and the logged loss must not.
        let row_losses: Vec<f64> = lg
            .par_chunks_mut(v)
            .zip(&labels[start..start + len])
            .map(|(row, &label)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|x| (x - max).exp()).sum();
                let lse = max + sum.ln();
                let loss = lse - row[label as usize];
                if grads {
                    for x in row.iter_mut() {
                        *x = (*x - lse).exp();
                    }
                    row[label as usize] -= 1.0;
                }
                f64::from(loss)
            })
            .collect();
        total += row_losses.iter().sum::<f64>();
        let p = View::rows(lg.as_ptr(), v);
        // SAFETY: dh rows start..start+len and dW (V, H) are ours; the views are in bounds.
        unsafe {
            if want_dh {
                mm(
                    (len, hd, v),
                    dh[start * hd..].as_mut_ptr(),
                    hd,
                    false,
                    p,
                    View::rows(wv.as_ptr(), hd),
                    1.0,
                    true,
                );
            }
            if want_dw {
                mm(
                    (v, hd, len),
                    dw.as_mut_ptr(),
                    hd,
                    start > 0,
                    p.t(),
                    h_rows,
                    1.0,
                    true,
                );
            }
        }
    }
    let dh = want_dh
        .then(|| Tensor::from_vec(dh, (n, hd), h.device()))
        .transpose()?;
    let dw = want_dw
        .then(|| Tensor::from_vec(dw, (v, hd), w.device()))
        .transpose()?;
    Ok((total as f32, dh, dw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{RmsNorm, apply_rope, attention_mask, masked_softmax_last};
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.shape(), b.shape());
        (a - b)
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
    /// (gradients relative to their largest entry when that exceeds 1).
    fn check(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (yf, yr) = (fused(&ts), reference(&ts));
        assert!(
            max_diff(&yf, &yr) < tol,
            "forward differs by {}",
            max_diff(&yf, &yr)
        );
        let r = randn(yf.dims(), 99);
        let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&yr * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, t) in ts.iter().enumerate() {
            let (a, b) = (gf.get(t).unwrap(), gr.get(t).unwrap());
            // Relative to the gradient's size: sums over many rows grow large.
            let size = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let size = size.to_scalar::<f32>().unwrap().max(1.0);
            let d = max_diff(a, b);
            assert!(
                d < tol * size,
                "gradient of input {i} differs by {d} (size {size})"
            );
        }
    }

    #[test]
    fn rms_norm_matches_composed() {
        let x = randn(&[3, 5, 24], 1);
        let w = randn(&[24], 2);
        check(
            &[x, w],
            |t| rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            |t| {
                RmsNorm {
                    weight: t[1].clone(),
                    eps: 1e-5,
                }
                .forward_composed(&t[0])
                .unwrap()
            },
            1e-5,
        );
    }

    #[test]
    fn swiglu_matches_composed() {
        let g = (randn(&[70, 300], 3) * 6.0).unwrap();
        let u = randn(&[70, 300], 4);
        check(
            &[g, u],
            |t| swiglu(&t[0], &t[1]).unwrap(),
            |t| (t[0].silu().unwrap() * &t[1]).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn rope_matches_composed() {
        let (b, t, n, d) = (2, 7, 3, 8);
        let positions: Vec<u32> = (0..b * t).map(|i| (i % t) as u32 * 3 + 1).collect();
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 100f32.powf(i as f32 / 4.0))
            .collect();
        let table = Arc::new(RopeTable::new(&inv, &positions));
        let rope_ref = crate::nn::Rope {
            inv_freq: inv.clone(),
            head_dim: d,
        };
        let (cos, sin) = rope_ref
            .cos_sin(&positions, b, t, &Device::Cpu, DType::F32)
            .unwrap();
        check(
            &[randn(&[b, t, n, d], 5)],
            |x| rope(&x[0], &table).unwrap(),
            |x| {
                let xt = x[0].transpose(1, 2).unwrap();
                apply_rope(&xt, &cos, &sin)
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
            },
            1e-6,
        );
    }

    fn attention_case(
        seq_ids: &[u32],
        b: usize,
        t: usize,
        h: usize,
        kv: usize,
        window: Option<usize>,
    ) {
        let d = 8;
        let spans = Arc::new(Spans::new(seq_ids, b, t, window).expect("contiguous samples"));
        let mask = attention_mask(seq_ids, b, t, window, &Device::Cpu, DType::F32).unwrap();
        let reference = |x: &[Tensor]| {
            let tr = |y: &Tensor| y.transpose(1, 2).unwrap().contiguous().unwrap();
            let rep = |y: Tensor| {
                let g = h / kv;
                y.unsqueeze(2)
                    .unwrap()
                    .broadcast_as((b, kv, g, t, d))
                    .unwrap()
                    .reshape((b, h, t, d))
                    .unwrap()
            };
            let (q, k, v) = (tr(&x[0]), rep(tr(&x[1])), rep(tr(&x[2])));
            let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let p = masked_softmax_last(&s, &mask).unwrap();
            p.matmul(&v)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, t, h * d))
                .unwrap()
        };
        check(
            &[
                randn(&[b, t, h, d], 6),
                randn(&[b, t, kv, d], 7),
                randn(&[b, t, kv, d], 8),
            ],
            |x| attention(&x[0], &x[1], &x[2], &spans).unwrap(),
            reference,
            2e-5,
        );
    }

    #[test]
    fn attention_matches_composed_packed_and_padded() {
        // Three packed samples, trailing padding, more than one query block (t > 64).
        let t = 150;
        let mut ids = vec![1u32; 40];
        ids.extend(vec![2u32; 70]);
        ids.extend(vec![3u32; 30]);
        ids.extend(vec![0u32; 10]);
        let mut second = vec![1u32; 130];
        second.extend(vec![0u32; 20]);
        ids.extend(second);
        attention_case(&ids, 2, t, 6, 2, None);
    }

    #[test]
    fn attention_matches_composed_sliding_window() {
        let ids = vec![1u32; 90];
        attention_case(&ids, 1, 90, 4, 4, Some(17));
    }

    #[test]
    fn cross_entropy_matches_autograd() {
        let (n, hd, v) = (37, 12, 101);
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 13) % v as u32).collect();
        let h = Var::from_tensor(&randn(&[n, hd], 10)).unwrap();
        let w = Var::from_tensor(&(randn(&[v, hd], 11) * 3.0).unwrap()).unwrap();
        let logits = h.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        let lbl = Tensor::from_slice(&labels, (n, 1), &Device::Cpu).unwrap();
        let lse = candle_core::Tensor::log_sum_exp(&logits, 1).unwrap();
        let picked = logits.gather(&lbl, 1).unwrap().squeeze(1).unwrap();
        let reference = (lse - picked).unwrap().sum_all().unwrap();
        let g = reference.backward().unwrap();
        for chunk in [5, 37, 64] {
            let (value, dh, dw) =
                cross_entropy(h.as_tensor(), w.as_tensor(), &labels, chunk, true, true).unwrap();
            let want = reference.to_scalar::<f32>().unwrap();
            assert!(
                (value - want).abs() < 1e-4 * want.abs(),
                "{value} vs {want}"
            );
            assert!(max_diff(&dh.unwrap(), g.get(h.as_tensor()).unwrap()) < 1e-5);
            assert!(max_diff(&dw.unwrap(), g.get(w.as_tensor()).unwrap()) < 1e-5);
        }
    }

    #[test]
    fn lora_linear_matches_composed() {
        let (n, din, dout, r) = (150, 40, 30, 4);
        let w = randn(&[dout, din], 20);
        let bias = randn(&[dout], 21);
        for (p, with_bias) in [(0.0, false), (0.3, true)] {
            let draws: Vec<u32> = {
                use rand::{Rng, SeedableRng};
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
                (0..n * din).map(|_| rng.random()).collect()
            };
            let threshold = (p * 4_294_967_296.0) as u32;
            let keep: Vec<f32> = draws
                .iter()
                .map(|&u| {
                    if u >= threshold {
                        (1.0 / (1.0 - p)) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            let keep = Tensor::from_vec(keep, (n, din), &Device::Cpu).unwrap();
            let b_opt = with_bias.then_some(&bias);
            check(
                &[
                    randn(&[n, din], 23),
                    randn(&[r, din], 24),
                    randn(&[dout, r], 25),
                ],
                |t| {
                    let mask = (p > 0.0).then(|| DropMask::new(&draws, p));
                    lora_linear(&t[0], &w, b_opt, (&t[1], &t[2]), 1.5, mask).unwrap()
                },
                |t| {
                    let mut y = t[0].matmul(&w.t().unwrap()).unwrap();
                    if let Some(b) = b_opt {
                        y = y.broadcast_add(b).unwrap();
                    }
                    let xd = (&t[0] * &keep).unwrap();
                    let z = xd
                        .matmul(&t[1].t().unwrap())
                        .unwrap()
                        .matmul(&t[2].t().unwrap())
                        .unwrap();
                    (y + (z * 1.5).unwrap()).unwrap()
                },
                2e-5,
            );
        }
    }

    #[test]
    fn spans_refuse_a_split_sample() {
        assert!(Spans::new(&[1, 1, 2, 1], 1, 4, None).is_none());
        assert!(Spans::new(&[1, 1, 2, 2, 0, 0], 1, 6, None).is_some());
    }
}
