//! The LoRA linear layer as one op: `y = x Wᵀ (+ bias) + s · (drop(x) Aᵀ) Bᵀ` for a frozen `W`
//! (dense or quantized), `x: (N, in)`, `A: (r, in)`, `B: (out, r)`. The graph keeps only `x`,
//! `A`, `B`, the dropout bits and `drop(x) Aᵀ` (N × r); the frozen weight gets no gradient.
//!
//! Mixed precision as PEFT/AMP: `x` (and a dense `W`) may be bf16/f16 while `A`, `B` are the
//! f32 master weights; the op casts inside and hands `dA`, `dB` back in their own dtype. CPU: gemm
//! in f32 throughout, multi-threaded. GPU: candle ops composed around [`frozen_matmul`] (the
//! graph there also keeps `drop(x)` when dropping; the fused kernel is issue 13).

use super::dropout::{DropMask, DropSpec, dropout};
use super::frozen_matmul::{Frozen, frozen_matmul};
use super::{Op, View, cpu_f32, cpu_store, mm, require, tensor_from_f32, vals};
use crate::error::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// See the module comment; the result has `x`'s dtype.
pub fn lora_linear(
    x: &Tensor,
    w: &Frozen,
    bias: Option<&Tensor>,
    (a, b): (&Tensor, &Tensor),
    scale: f64,
    drop: Option<DropSpec>,
) -> Result<Tensor> {
    if x.device().is_cpu() {
        let op = LoraLinearOp {
            w: w.clone(),
            bias: bias.map(Tensor::contiguous).transpose()?,
            scale: scale as f32,
            mask: drop.map(|d| d.mask(x.elem_count())),
            xa: Mutex::new(None),
        };
        return Ok(x
            .contiguous()?
            .apply_op3(&a.contiguous()?, &b.contiguous()?, op)?);
    }
    require(Op::LoraLinear, x)?;
    composed(x, w, bias, (a, b), scale, drop)
}

/// The GPU side (written for any device).
fn composed(
    x: &Tensor,
    w: &Frozen,
    bias: Option<&Tensor>,
    (a, b): (&Tensor, &Tensor),
    scale: f64,
    drop: Option<DropSpec>,
) -> Result<Tensor> {
    let dt = x.dtype();
    let mut y = frozen_matmul(x, w)?;
    if let Some(bias) = bias {
        y = y.broadcast_add(&bias.to_dtype(dt)?)?;
    }
    let xd = match drop {
        Some(d) => dropout(x, d)?,
        None => x.clone(),
    };
    let z = xd
        .matmul(&a.to_dtype(dt)?.t()?)?
        .matmul(&(b * scale)?.to_dtype(dt)?.t()?)?;
    Ok((y + z)?)
}

struct LoraLinearOp {
    w: Frozen,
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
            Frozen::Dense(t) => Ok(f(&vals(t)?)),
            Frozen::Quant(q) => Ok(f(&q.dequantize())),
        }
    }

    fn dropped<'a>(&self, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        match &self.mask {
            Some(m) => {
                let mut y = x.to_vec();
                m.apply_in_place(&mut y);
                std::borrow::Cow::Owned(y)
            }
            None => std::borrow::Cow::Borrowed(x),
        }
    }
}

impl CustomOp3 for LoraLinearOp {
    fn name(&self) -> &'static str {
        "lora-linear"
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
        let (x, a, b) = (
            cpu_f32(s1, l1, n)?,
            cpu_f32(s2, l2, n)?,
            cpu_f32(s3, l3, n)?,
        );
        let (rows, din) = l1.shape().dims2()?;
        let (r, _) = l2.shape().dims2()?;
        let (dout, _) = l3.shape().dims2()?;
        if a.len() != r * din || b.len() != dout * r || self.w.dims()? != (dout, din) {
            candle_core::bail!("lora-linear: shapes do not fit");
        }
        let mut y = vec![0f32; rows * dout];
        self.with_w(|w| {
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
        })?;
        if let Some(bias) = &self.bias {
            let bv = vals(bias)?;
            y.par_chunks_mut(dout).for_each(|row| {
                for (v, b) in row.iter_mut().zip(bv.iter()) {
                    *v += b;
                }
            });
        }
        let xd = self.dropped(&x);
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
        Ok((cpu_store(s1.dtype(), y, n)?, Shape::from((rows, dout))))
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
            .ok_or_else(|| candle_core::Error::Msg("lora-linear: no forward state".into()))?;
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
        {
            let xv = vals(x)?;
            let xd = self.dropped(&xv);
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
        }
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
                dx.par_chunks_mut(super::CHUNK)
                    .zip(ga.par_chunks(super::CHUNK))
                    .for_each(|(d, g)| {
                        for (d, g) in d.iter_mut().zip(g) {
                            *d += g;
                        }
                    });
            }
            Some(tensor_from_f32(dx, (rows, din), x.dtype())?)
        } else {
            None
        };
        Ok((
            dx,
            Some(tensor_from_f32(da, (r, din), a.dtype())?),
            Some(tensor_from_f32(db, (dout, r), b.dtype())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::dropout::{DropoutKey, Stream};
    use crate::ops::testing::{check_typed, max_diff, randn};
    use candle_core::DType;

    /// The slow reference: plain matmuls, the mask as a tensor of 0 and `1/(1-p)` built from the
    /// generator's per-element draws.
    fn lora_slow(t: &[Tensor], w: &Tensor, bias: Option<&Tensor>, keep: &Tensor) -> Tensor {
        let mut y = t[0].matmul(&w.t().unwrap()).unwrap();
        if let Some(b) = bias {
            y = y.broadcast_add(b).unwrap();
        }
        let xd = (&t[0] * keep).unwrap();
        let z = xd
            .matmul(&t[1].t().unwrap())
            .unwrap()
            .matmul(&t[2].t().unwrap())
            .unwrap();
        (y + (z * 1.5).unwrap()).unwrap()
    }

    fn keep_tensor(p: f64, n: usize, din: usize, key: &DropoutKey, s: Stream) -> Tensor {
        let th = crate::ops::dropout::threshold(p);
        let v: Vec<f32> = (0..n * din)
            .map(|i| {
                if key.draw(s, i) >= th {
                    (1.0 / (1.0 - p)) as f32
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(v, (n, din), &candle_core::Device::Cpu).unwrap()
    }

    fn run(x_dtype: DType, ab_dtype: DType, tol: f32, quant: bool) {
        let (n, din, dout, r) = (150, 40, 30, 4);
        let wf = randn(&[dout, din], 20).to_dtype(x_dtype).unwrap();
        let bias = randn(&[dout], 21);
        let key = DropoutKey {
            seed: 5,
            step: 2,
            micro: 1,
        };
        let s = Stream {
            layer: 1,
            projection: 2,
        };
        for (p, with_bias) in [(0.0, false), (0.3, true)] {
            let keep = keep_tensor(p, n, din, &key, s);
            let spec = (p > 0.0).then_some(DropSpec { key, stream: s, p });
            let b_opt = with_bias.then_some(&bias);
            let base = if quant {
                #[derive(Debug)]
                struct H(Vec<f32>);
                impl crate::ops::dequant::Dequantize for H {
                    fn dims(&self) -> (usize, usize) {
                        (30, 40)
                    }
                    fn dequantize(&self) -> Vec<f32> {
                        self.0.clone()
                    }
                }
                let v = wf.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
                Frozen::Quant(std::sync::Arc::new(H(v.to_vec1().unwrap())))
            } else {
                Frozen::Dense(wf.clone())
            };
            let w32 = wf.to_dtype(DType::F32).unwrap();
            check_typed(
                &[
                    randn(&[n, din], 23),
                    randn(&[r, din], 24),
                    randn(&[dout, r], 25),
                ],
                &[x_dtype, ab_dtype, ab_dtype],
                |t| lora_linear(&t[0], &base, b_opt, (&t[1], &t[2]), 1.5, spec).unwrap(),
                |t| lora_slow(t, &w32, b_opt, &keep),
                tol,
            );
            // The GPU side's composition, run on CPU tensors, against the same reference.
            if x_dtype == DType::F32 {
                let t = [
                    randn(&[n, din], 23),
                    randn(&[r, din], 24),
                    randn(&[dout, r], 25),
                ];
                let y = composed(&t[0], &base, b_opt, (&t[1], &t[2]), 1.5, spec).unwrap();
                assert!(max_diff(&y, &lora_slow(&t, &w32, b_opt, &keep)) < 2e-5);
            }
        }
    }

    #[test]
    fn lora_linear_matches_the_reference_f32() {
        run(DType::F32, DType::F32, 2e-5, false);
        run(DType::F32, DType::F32, 2e-5, true);
    }

    /// bf16 activations and frozen weight with f32 master adapters (AMP): dA, dB come back f32.
    #[test]
    fn issue_12_lora_linear_bf16_activations_with_f32_adapters() {
        run(DType::BF16, DType::F32, 3e-2, false);
        run(DType::BF16, DType::F32, 3e-2, true);
        run(DType::BF16, DType::BF16, 3e-2, false);
        run(DType::F16, DType::F32, 5e-3, false);
    }
}
