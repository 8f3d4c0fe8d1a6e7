//! Causal scaled-dot-product attention over packed samples, grouped-query, with an optional
//! sliding window, for training and for KV-cached generation alike: `q: (B, Tq, H, D)` against
//! `k, v: (B, Tk, KV, D)` → `(B, Tq, H·D)`, scores and softmax in f32 as transformers.
//!
//! Memory contract (every device): no `T×T` tensor. Queries are processed in blocks; the
//! forward keeps only its output and each query's log-sum-exp, and the backward recomputes the
//! block's weights from them. CPU: hand-written blocks on gemm, multi-threaded over (row, head).
//! GPU: the same blocks composed of candle ops (the fused kernel is issue 13).

use super::{Op, Shared, View, cpu_f32, cpu_store, mm, require, tensor_from_f32, vals};
use crate::error::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Which keys each query may attend to. Query `i` of a row sits at key position
/// `q_offset + i` and sees keys `lo[i] ..= q_offset + i` (causal, and the sliding window),
/// minus, when `ids` is set, the keys of another sample. Packed samples are contiguous runs of
/// one `seq_id` and give exact ranges; padding (id 0) attends only to itself.
#[derive(Debug, Clone)]
pub struct Spans {
    pub b: usize,
    /// Queries per row.
    pub tq: usize,
    /// Keys per row.
    pub tk: usize,
    q_offset: usize,
    lo: Vec<usize>,
    /// Per key `(B·Tk)`: sample ids, kept only when some sample is not one contiguous run (then
    /// ranges are not exact and keys of other samples inside them are masked one by one).
    ids: Option<Vec<u32>>,
}

impl Spans {
    /// Training: `b` rows of `t` tokens with their sample ids (0: padding).
    pub fn new(seq_ids: &[u32], b: usize, t: usize, window: Option<usize>) -> Self {
        let mut lo = vec![0usize; b * t];
        let mut exact = true;
        for row in 0..b {
            let ids = &seq_ids[row * t..(row + 1) * t];
            let mut first = std::collections::HashMap::new();
            for i in 0..t {
                let id = ids[i];
                let start = if id == 0 {
                    i
                } else {
                    let f = *first.entry(id).or_insert(i);
                    if i > 0 && ids[i - 1] != id && f != i {
                        exact = false; // the sample resumes after a gap
                    }
                    f
                };
                lo[row * t + i] = window.map_or(start, |w| start.max((i + 1).saturating_sub(w)));
            }
        }
        Self {
            b,
            tq: t,
            tk: t,
            q_offset: 0,
            lo,
            ids: (!exact).then(|| seq_ids.to_vec()),
        }
    }

    /// Generation: `t` new queries after `past` cached positions of one sequence.
    pub fn cached(past: usize, t: usize, window: Option<usize>) -> Self {
        let lo = (0..t)
            .map(|i| window.map_or(0, |w| (past + i + 1).saturating_sub(w)))
            .collect();
        Self {
            b: 1,
            tq: t,
            tk: past + t,
            q_offset: past,
            lo,
            ids: None,
        }
    }

    fn lo_row(&self, bi: usize) -> &[usize] {
        &self.lo[bi * self.tq..(bi + 1) * self.tq]
    }

    /// Key range `klo..khi` a block of queries `r0..r1` needs.
    fn block_keys(&self, bi: usize, r0: usize, r1: usize) -> (usize, usize) {
        let lo = self.lo_row(bi);
        let klo = lo[r0..r1].iter().copied().min().unwrap_or(r0);
        (klo, self.q_offset + r1)
    }

    /// Whether query `i` of row `bi` may see key `j` (inside its range).
    fn sees(&self, bi: usize, i: usize, j: usize) -> bool {
        match &self.ids {
            None => true,
            Some(ids) => {
                let row = &ids[bi * self.tk..(bi + 1) * self.tk];
                let qi = self.q_offset + i;
                j == qi || (row[qi] != 0 && row[j] == row[qi])
            }
        }
    }
}

/// Query rows per block on the CPU: the keys a block needs are `min lo .. block end`, so causal
/// and block-diagonal structure skips whole key ranges.
const ATTN_BLOCK: usize = 64;

/// Query rows per block on a GPU: `B·H·block·Tk` f32 scores alive at once.
const GPU_BLOCK: usize = 256;

/// Attention; see the module comment. The result has `q`'s dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spans: &Arc<Spans>) -> Result<Tensor> {
    let dm = AttnDims::of(q.shape(), k.shape(), v.shape(), spans)?;
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    if q.device().is_cpu() {
        let op = AttentionOp {
            spans: spans.clone(),
            lse: Mutex::new(None),
            output: Mutex::new(None),
        };
        return Ok(q.apply_op3(&k, &v, op)?);
    }
    require(Op::Attention, &q)?;
    // GPU: computed blockwise with candle ops outside the graph, then recorded as the op (whose
    // backward recomputes blockwise).
    let (o, lse) = composed_forward(&q.detach(), &k.detach(), &v.detach(), spans, dm)?;
    let op = AttentionOp {
        spans: spans.clone(),
        lse: Mutex::new(Some(Lse::Device(lse))),
        output: Mutex::new(Some(o)),
    };
    Ok(q.apply_op3(&k, &v, op)?)
}

/// log-sum-exp of each query's scores `(B, H, Tq)`, kept by the forward for the backward.
#[derive(Clone)]
enum Lse {
    Cpu(Arc<Vec<f32>>),
    Device(Tensor),
}

struct AttentionOp {
    spans: Arc<Spans>,
    lse: Mutex<Option<Lse>>,
    /// The GPU side's output, computed before the op is recorded.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    output: Mutex<Option<Tensor>>,
}

#[derive(Clone, Copy)]
struct AttnDims {
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    kv: usize,
    d: usize,
    scale: f32,
}

impl AttnDims {
    fn of(q: &Shape, k: &Shape, v: &Shape, spans: &Spans) -> candle_core::Result<Self> {
        let (b, tq, h, d) = q.dims4()?;
        let (kb, tk, kv, kd) = k.dims4()?;
        if (kb, kd) != (b, d) || k != v || kv == 0 || h % kv != 0 {
            candle_core::bail!("attention: shapes q {q:?}, k {k:?}, v {v:?} do not fit")
        }
        if (spans.b, spans.tq, spans.tk) != (b, tq, tk) {
            candle_core::bail!(
                "attention: mask is for ({}, {}, {}), inputs ({b}, {tq}, {tk})",
                spans.b,
                spans.tq,
                spans.tk
            )
        }
        Ok(Self {
            b,
            tq,
            tk,
            h,
            kv,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        })
    }
}

/// Fills `s` (rows × cols, row-major, the raw scores of queries `r0..` over keys `klo..`) with
/// the attention weights: scaled, softmax over each query's visible keys, zero elsewhere. With
/// `recompute` the weights come from the given `lse` (backward); otherwise it is written.
fn softmax_block(
    s: &mut [f32],
    cols: usize,
    (bi, r0, klo): (usize, usize, usize),
    spans: &Spans,
    scale: f32,
    lse: &mut [f32],
    recompute: bool,
) {
    let lo = spans.lo_row(bi);
    for (r, row) in s.chunks_mut(cols).enumerate() {
        let i = r0 + r;
        let (a, z) = (lo[i] - klo, spans.q_offset + i - klo + 1);
        row[..a].fill(0.0);
        row[z..].fill(0.0);
        for (c, x) in row[a..z].iter_mut().enumerate() {
            *x = if spans.sees(bi, i, klo + a + c) {
                *x * scale
            } else {
                f32::NEG_INFINITY
            };
        }
        let allowed = &mut row[a..z];
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
        "attention"
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
        let (q, k, v) = (
            cpu_f32(s1, l1, n)?,
            cpu_f32(s2, l2, n)?,
            cpu_f32(s3, l3, n)?,
        );
        let dm = AttnDims::of(l1.shape(), l2.shape(), l3.shape(), &self.spans)?;
        let AttnDims {
            b,
            tq,
            tk,
            h,
            kv,
            d,
            scale,
        } = dm;
        let groups = h / kv;
        let mut o = vec![0f32; b * tq * h * d];
        let mut lse = vec![0f32; b * h * tq];
        let o_ptr = Shared(o.as_mut_ptr());
        lse.par_chunks_mut(tq.max(1))
            .enumerate()
            .for_each(|(job, lse_bh)| {
                let (bi, hi) = (job / h, job % h);
                let g = hi / groups;
                let qb = bi * tq * h * d + hi * d;
                let kb = bi * tk * kv * d + g * d;
                let mut s = Vec::new();
                for r0 in (0..tq).step_by(ATTN_BLOCK) {
                    let r1 = (r0 + ATTN_BLOCK).min(tq);
                    let (klo, khi) = self.spans.block_keys(bi, r0, r1);
                    let (rows, cols) = (r1 - r0, khi - klo);
                    s.clear();
                    s.resize(rows * cols, 0.0);
                    // SAFETY: q/k/v views stay inside their slices (rows ≤ tq, keys < tk, d
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
                        (bi, r0, klo),
                        &self.spans,
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
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = Some(Lse::Cpu(Arc::new(lse)));
        Ok((cpu_store(s1.dtype(), o, n)?, Shape::from((b, tq, h * d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s1: &candle_core::CudaStorage,
        _l1: &Layout,
        _s2: &candle_core::CudaStorage,
        _l2: &Layout,
        _s3: &candle_core::CudaStorage,
        _l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let o = super::take_output(&self.output, self.name())?;
        let (st, l) = o.storage_and_layout();
        match &*st {
            candle_core::Storage::Cuda(c) => Ok((c.try_clone(l)?, o.shape().clone())),
            _ => candle_core::bail!("attention: the output is not on the GPU"),
        }
    }

    /// Per query block, with `P` recomputed from the saved log-sum-exp:
    /// `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ∘ (dP − rowsum(P ∘ dP))`, `dQ = scale · dS K`,
    /// `dK += scale · dSᵀ Q`.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        d_o: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = AttnDims::of(q.shape(), k.shape(), v.shape(), &self.spans)?;
        let lse = self
            .lse
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("attention: no forward state".into()))?;
        let lse = match lse {
            Lse::Cpu(l) => l,
            Lse::Device(l) => {
                let (dq, dk, dv) =
                    composed_backward(q, k, v, o, &l, &d_o.contiguous()?, &self.spans, dm)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                return Ok((Some(dq), Some(dk), Some(dv)));
            }
        };
        let AttnDims {
            b,
            tq,
            tk,
            h,
            kv,
            d,
            scale,
        } = dm;
        let groups = h / kv;
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
            let kb = bi * tk * kv * d + g * d;
            let (mut p, mut dp) = (Vec::new(), Vec::new());
            let mut lse_blk = vec![0f32; ATTN_BLOCK];
            for hi in g * groups..(g + 1) * groups {
                let qb = bi * tq * h * d + hi * d;
                let lse_bh = &lse[(bi * h + hi) * tq..(bi * h + hi + 1) * tq];
                for r0 in (0..tq).step_by(ATTN_BLOCK) {
                    let r1 = (r0 + ATTN_BLOCK).min(tq);
                    let (klo, khi) = self.spans.block_keys(bi, r0, r1);
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
                        (bi, r0, klo),
                        &self.spans,
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
        let mk = |v: Vec<f32>, like: &Tensor| tensor_from_f32(v, like.shape(), like.dtype());
        Ok((Some(mk(dq, q)?), Some(mk(dk, k)?), Some(mk(dv, v)?)))
    }
}

// ---------------------------------------------------------------------------------------------
// The GPU side: the same blocks composed of candle ops (written for any device; tested on CPU)

/// Additive mask `(B, 1, rows, cols)` for queries `r0..r1` over keys `klo..khi`.
fn block_mask(
    spans: &Spans,
    r0: usize,
    r1: usize,
    (klo, khi): (usize, usize),
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let (rows, cols) = (r1 - r0, khi - klo);
    let mut m = vec![f32::NEG_INFINITY; spans.b * rows * cols];
    for bi in 0..spans.b {
        let lo = spans.lo_row(bi);
        for r in 0..rows {
            let i = r0 + r;
            for j in lo[i].max(klo)..=spans.q_offset + i {
                if spans.sees(bi, i, j) {
                    m[(bi * rows + r) * cols + j - klo] = 0.0;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (spans.b, 1, rows, cols), dev)?)
}

/// `(B, T, n, D)` rows `a..z` as `(B, n, z−a, D)` f32, each kv head repeated for its group.
fn heads(x: &Tensor, a: usize, z: usize, groups: usize) -> Result<Tensor> {
    let y = x
        .narrow(1, a, z - a)?
        .transpose(1, 2)?
        .to_dtype(DType::F32)?;
    if groups == 1 {
        return Ok(y.contiguous()?);
    }
    let (b, n, t, d) = y.dims4()?;
    Ok(y.unsqueeze(2)?
        .broadcast_as((b, n, groups, t, d))?
        .reshape((b, n * groups, t, d))?)
}

/// The key range all rows of a block need.
fn union_keys(spans: &Spans, r0: usize, r1: usize) -> (usize, usize) {
    (0..spans.b)
        .map(|bi| spans.block_keys(bi, r0, r1))
        .fold((usize::MAX, 0), |(a, b), (c, d)| (a.min(c), b.max(d)))
}

/// `(o (B, Tq, H·D) in q's dtype, lse (B, H, Tq) f32)`.
fn composed_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &Spans,
    dm: AttnDims,
) -> Result<(Tensor, Tensor)> {
    let groups = dm.h / dm.kv;
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for r0 in (0..dm.tq).step_by(GPU_BLOCK) {
        let r1 = (r0 + GPU_BLOCK).min(dm.tq);
        let keys = union_keys(spans, r0, r1);
        let qb = heads(q, r0, r1, 1)?; // (B, H, rows, D)
        let kb = heads(k, keys.0, keys.1, groups)?;
        let vb = heads(v, keys.0, keys.1, groups)?;
        let s = (qb.matmul(&kb.t()?)? * f64::from(dm.scale))?.broadcast_add(&block_mask(
            spans,
            r0,
            r1,
            keys,
            q.device(),
        )?)?;
        let max = s.max_keepdim(3)?;
        let e = s.broadcast_sub(&max)?.exp()?;
        let sum = e.sum_keepdim(3)?;
        let p = e.broadcast_div(&sum)?;
        outs.push(p.matmul(&vb)?); // (B, H, rows, D)
        lses.push((max + sum.log()?)?.squeeze(3)?); // (B, H, rows)
    }
    let o = Tensor::cat(&outs, 2)?
        .transpose(1, 2)?
        .reshape((dm.b, dm.tq, dm.h * dm.d))?
        .to_dtype(q.dtype())?;
    Ok((o, Tensor::cat(&lses, 2)?))
}

/// The blockwise backward of [`composed_forward`], recomputing each block's weights.
#[allow(clippy::too_many_arguments)]
fn composed_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    d_o: &Tensor,
    spans: &Spans,
    dm: AttnDims,
) -> Result<(Tensor, Tensor, Tensor)> {
    let groups = dm.h / dm.kv;
    let (b, h, d) = (dm.b, dm.h, dm.d);
    let d_o4 = d_o.reshape((b, dm.tq, h, d))?;
    let o4 = o.reshape((b, dm.tq, h, d))?;
    let mut dq_blocks = Vec::new();
    // dK, dV per query head (B, H, Tk, D) f32, summed over each group at the end.
    let mut dk = Tensor::zeros((b, h, dm.tk, d), DType::F32, q.device())?;
    let mut dv = dk.clone();
    for r0 in (0..dm.tq).step_by(GPU_BLOCK) {
        let r1 = (r0 + GPU_BLOCK).min(dm.tq);
        let keys = union_keys(spans, r0, r1);
        let qb = heads(q, r0, r1, 1)?;
        let kb = heads(k, keys.0, keys.1, groups)?;
        let vb = heads(v, keys.0, keys.1, groups)?;
        let dob = heads(&d_o4, r0, r1, 1)?;
        let ob = heads(&o4, r0, r1, 1)?;
        let s = (qb.matmul(&kb.t()?)? * f64::from(dm.scale))?.broadcast_add(&block_mask(
            spans,
            r0,
            r1,
            keys,
            q.device(),
        )?)?;
        let l = lse.narrow(2, r0, r1 - r0)?.unsqueeze(3)?;
        let p = s.broadcast_sub(&l)?.exp()?; // (B, H, rows, cols)
        let dp = dob.matmul(&vb.t()?)?;
        let di = (&dob * &ob)?.sum_keepdim(3)?; // rowsum(dO ∘ O) = rowsum(P ∘ dP)
        let ds = (p.clone() * dp.broadcast_sub(&di)?)?;
        dq_blocks.push((ds.matmul(&kb)? * f64::from(dm.scale))?);
        let dkb = (ds.t()?.matmul(&qb)? * f64::from(dm.scale))?;
        let dvb = p.t()?.matmul(&dob)?;
        let cols = keys.1 - keys.0;
        dk = dk.slice_assign(
            &[0..b, 0..h, keys.0..keys.1, 0..d],
            &(dk.narrow(2, keys.0, cols)? + dkb)?,
        )?;
        dv = dv.slice_assign(
            &[0..b, 0..h, keys.0..keys.1, 0..d],
            &(dv.narrow(2, keys.0, cols)? + dvb)?,
        )?;
    }
    let dq = Tensor::cat(&dq_blocks, 2)?
        .transpose(1, 2)?
        .to_dtype(q.dtype())?;
    let fold = |t: Tensor| -> Result<Tensor> {
        Ok(t.reshape((b, dm.kv, groups, dm.tk, d))?
            .sum(2)?
            .transpose(1, 2)?
            .contiguous()?
            .to_dtype(k.dtype())?)
    };
    Ok((dq.contiguous()?, fold(dk)?, fold(dv)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check, check_typed, max_diff, randn};
    use candle_core::{D, Device};

    /// The slow reference: the full `(B, H, Tq, Tk)` scores with an additive mask built from the
    /// definition (same sample, causal, window), softmax from candle ops.
    fn attention_slow(
        x: &[Tensor],
        seq_ids: &[u32],
        (b, t, h, kv): (usize, usize, usize, usize),
        window: Option<usize>,
    ) -> Tensor {
        let d = x[0].dim(3).unwrap();
        let mut m = vec![f32::MIN; b * t * t];
        for row in 0..b {
            let ids = &seq_ids[row * t..(row + 1) * t];
            for i in 0..t {
                for j in 0..=i {
                    let same = ids[i] != 0 && ids[j] == ids[i];
                    let near = window.is_none_or(|w| i - j < w);
                    if (same && near) || i == j {
                        m[row * t * t + i * t + j] = 0.0;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, t), &Device::Cpu).unwrap();
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
        let s = s.broadcast_add(&mask).unwrap();
        let max = s.max_keepdim(D::Minus1).unwrap().detach();
        let e = s.broadcast_sub(&max).unwrap().exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        p.matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, h * d))
            .unwrap()
    }

    fn inputs(b: usize, t: usize, h: usize, kv: usize) -> Vec<Tensor> {
        vec![
            randn(&[b, t, h, 8], 6),
            randn(&[b, t, kv, 8], 7),
            randn(&[b, t, kv, 8], 8),
        ]
    }

    fn case(seq_ids: &[u32], dims: (usize, usize, usize, usize), window: Option<usize>) {
        let (b, t, h, kv) = dims;
        let spans = Arc::new(Spans::new(seq_ids, b, t, window));
        check(
            &inputs(b, t, h, kv),
            |x| attention(&x[0], &x[1], &x[2], &spans).unwrap(),
            |x| attention_slow(x, seq_ids, dims, window),
            2e-5,
        );
        // The GPU side's blocks, run on CPU tensors, against the same reference.
        let x = inputs(b, t, h, kv);
        let dm = AttnDims::of(x[0].shape(), x[1].shape(), x[2].shape(), &spans).unwrap();
        let (o, lse) = composed_forward(&x[0], &x[1], &x[2], &spans, dm).unwrap();
        let want = attention_slow(&x, seq_ids, dims, window);
        assert!(max_diff(&o, &want) < 2e-5);
        let d_o = randn(o.dims(), 9);
        let (dq, dk, dv) =
            composed_backward(&x[0], &x[1], &x[2], &o, &lse, &d_o, &spans, dm).unwrap();
        let vars: Vec<candle_core::Var> = x
            .iter()
            .map(|t| candle_core::Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let g = (attention_slow(&ts, seq_ids, dims, window) * &d_o)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (mine, t) in [dq, dk, dv].iter().zip(&ts) {
            assert!(max_diff(mine, g.get(t).unwrap()) < 1e-4);
        }
    }

    #[test]
    fn attention_matches_the_reference_packed_and_padded() {
        // Three packed samples, trailing padding, more than one query block (t > 64).
        let t = 150;
        let mut ids = vec![1u32; 40];
        ids.extend(vec![2u32; 70]);
        ids.extend(vec![3u32; 30]);
        ids.extend(vec![0u32; 10]);
        let mut second = vec![1u32; 130];
        second.extend(vec![0u32; 20]);
        ids.extend(second);
        case(&ids, (2, t, 6, 2), None);
    }

    #[test]
    fn attention_matches_the_reference_sliding_window() {
        case(&vec![1u32; 90], (1, 90, 4, 4), Some(17));
    }

    /// A sample interrupted by padding (left and middle padding from an attention mask): the
    /// ranges are not exact and keys are masked one by one.
    #[test]
    fn attention_handles_a_sample_split_by_padding() {
        let mut ids = vec![0u32; 5];
        ids.extend(vec![1u32; 60]);
        ids.extend(vec![0u32; 3]);
        ids.extend(vec![1u32; 12]);
        case(&ids, (1, 80, 2, 1), None);
        assert!(Spans::new(&ids, 1, 80, None).ids.is_some());
        assert!(Spans::new(&[1, 1, 2, 2, 0, 0], 1, 6, None).ids.is_none());
    }

    #[test]
    fn issue_12_attention_half_precision_matches_the_f32_reference() {
        let (b, t, h, kv) = (1, 100, 4, 2);
        let mut ids = vec![1u32; 70];
        ids.extend(vec![2u32; 30]);
        let spans = Arc::new(Spans::new(&ids, b, t, None));
        for (dtype, tol) in [(DType::BF16, 2e-2), (DType::F16, 3e-3)] {
            check_typed(
                &inputs(b, t, h, kv),
                &[dtype; 3],
                |x| attention(&x[0], &x[1], &x[2], &spans).unwrap(),
                |x| attention_slow(x, &ids, (b, t, h, kv), None),
                tol,
            );
        }
    }

    /// Generation: new queries after cached positions see all earlier keys (and the window).
    #[test]
    fn cached_attention_matches_the_last_rows_of_the_full_one() {
        let (t, past, h, kv) = (70, 61, 4, 2);
        for window in [None, Some(20)] {
            let x = inputs(1, t, h, kv);
            let ids = vec![1u32; t];
            let full = attention_slow(&x, &ids, (1, t, h, kv), window);
            let spans = Arc::new(Spans::cached(past, t - past, window));
            let q = x[0].narrow(1, past, t - past).unwrap();
            let mine = attention(&q, &x[1], &x[2], &spans).unwrap();
            let want = full.narrow(1, past, t - past).unwrap();
            assert!(max_diff(&mine, &want) < 2e-5, "{window:?}");
        }
    }
}
