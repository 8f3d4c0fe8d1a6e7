//! The engine's ops (`runner_model::ops`) on every device against the same op on the CPU (whose
//! own tests check it against the composed references). `device_test!` writes a test
//! per device: `_cpu` always, and under `cuda` a `_cuda` one that needs a GPU (marked ignored
//! so the no-GPU build stays green; `scripts/gpu-check.sh` runs them with `--ignored`, where a
//! missing GPU fails them).

use candle_core::{DType, Device, Result, Tensor};
use runner_model::ops;
use std::sync::Arc;

macro_rules! device_test {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn cpu() -> Result<()> {
                ($body)(&Device::Cpu)
            }

            #[cfg(feature = "cuda")]
            #[test]
            #[ignore = "needs a GPU; scripts/gpu-check.sh runs it"]
            fn cuda() -> Result<()> {
                let dev =
                    runner_kernels::select_device(Some(0)).map_err(candle_core::Error::wrap)?;
                ($body)(&dev)
            }
        }
    };
}

/// max |a − b| / (1 + |b|): absolute near zero, relative for large values (a bf16 rounding
/// flip of one ulp is relative to the magnitude).
fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    ((a - &b)?.abs()? / (b.abs()? + 1.0)?)?
        .max_all()?
        .to_scalar::<f32>()
}

/// Deterministic inputs made on the CPU, then moved.
fn randn(shape: &[usize], std: f32, seed: u64, dev: &Device, dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.4 * std
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)
}

/// f32 within 1e-5 (relative to magnitude ~1), bf16 within a few of its ulps.
fn tol(dtype: DType) -> f32 {
    if dtype == DType::BF16 { 3e-2 } else { 2e-5 }
}

fn both_dtypes(dev: &Device, f: impl Fn(&Device, DType) -> Result<()>) -> Result<()> {
    f(dev, DType::F32)?;
    f(dev, DType::BF16)
}

/// Forward values and the gradients of `Σ y·up` for every input, on `dev` and on the CPU.
fn compare(
    dev: &Device,
    dt: DType,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    tol_scale: f32,
) -> Result<()> {
    let run = |d: &Device| -> Result<(Tensor, Vec<Tensor>)> {
        let vars = inputs
            .iter()
            .map(|t| candle_core::Var::from_tensor(&t.to_device(d)?))
            .collect::<Result<Vec<_>>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts)?;
        let up = randn(y.dims(), 1.0, 99, d, DType::F32)?;
        let g = (y.to_dtype(DType::F32)? * up)?.sum_all()?.backward()?;
        let grads = ts.iter().map(|t| g.get(t).unwrap().clone()).collect();
        Ok((y, grads))
    };
    let (y, g) = run(dev)?;
    let (yc, gc) = run(&Device::Cpu)?;
    assert!(max_diff(&y, &yc)? < tol(dt) * tol_scale, "{dt:?} forward");
    for (i, (a, b)) in g.iter().zip(&gc).enumerate() {
        assert!(
            max_diff(a, b)? < tol(dt) * tol_scale * 4.0,
            "{dt:?} gradient {i}"
        );
    }
    Ok(())
}

fn err(e: runner_model::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

device_test!(rms_norm_forward_and_backward, |dev: &Device| both_dtypes(
    dev,
    |dev, dt| {
        let x = randn(&[3, 5, 200], 1.0, 1, dev, dt)?;
        let w = randn(&[200], 0.5, 2, dev, dt)?;
        compare(
            dev,
            dt,
            &[x],
            |t| ops::rms_norm::rms_norm(&t[0], &w.to_device(t[0].device())?, 1e-5).map_err(err),
            1.0,
        )
    }
));

device_test!(rope_forward_and_backward, |dev: &Device| both_dtypes(
    dev,
    |dev, dt| {
        let (b, t, h, d) = (2, 9, 4, 16);
        let positions: Vec<u32> = (0..b * t).map(|i| (i % t) as u32 * 7).collect();
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 1e4f32.powf(2.0 * i as f32 / d as f32))
            .collect();
        let table = Arc::new(ops::rope::RopeTable::new(&inv, &positions));
        let x = randn(&[b, t, h, d], 1.0, 4, dev, dt)?;
        compare(
            dev,
            dt,
            &[x],
            |x| ops::rope::rope(&x[0], &table).map_err(err),
            1.0,
        )
    }
));

device_test!(swiglu_forward_and_backward, |dev: &Device| both_dtypes(
    dev,
    |dev, dt| {
        let g = randn(&[7, 300], 2.0, 8, dev, dt)?;
        let u = randn(&[7, 300], 1.0, 9, dev, dt)?;
        compare(
            dev,
            dt,
            &[g, u],
            |t| ops::swiglu::swiglu(&t[0], &t[1]).map_err(err),
            4.0,
        )
    }
));

device_test!(attention_forward_and_backward, |dev: &Device| both_dtypes(
    dev,
    |dev, dt| {
        // Two packed samples and padding, a sliding window, grouped-query heads, and more
        // queries than one GPU block.
        let (b, t, h, kv, d) = (1, 300, 4, 2, 16);
        let mut ids = vec![1u32; 170];
        ids.extend(vec![2u32; 120]);
        ids.extend(vec![0u32; 10]);
        let spans = Arc::new(ops::attention::Spans::new(&ids, b, t, Some(100)));
        let x = [
            randn(&[b, t, h, d], 1.0, 20, dev, dt)?,
            randn(&[b, t, kv, d], 1.0, 21, dev, dt)?,
            randn(&[b, t, kv, d], 1.0, 22, dev, dt)?,
        ];
        compare(
            dev,
            dt,
            &x,
            |x| ops::attention::attention(&x[0], &x[1], &x[2], &spans).map_err(err),
            2.0,
        )
    }
));

device_test!(lora_linear_with_dropout, |dev: &Device| both_dtypes(
    dev,
    |dev, dt| {
        let w = ops::frozen_matmul::Frozen::Dense(randn(&[48, 64], 0.2, 30, dev, dt)?);
        let bias = randn(&[48], 0.2, 31, dev, dt)?;
        let spec = ops::dropout::DropSpec {
            key: ops::dropout::DropoutKey {
                seed: 9,
                step: 4,
                micro: 1,
            },
            stream: ops::dropout::Stream {
                layer: 3,
                projection: 2,
            },
            p: 0.1,
        };
        let x = [
            randn(&[70, 64], 1.0, 32, dev, dt)?,
            // f32 master adapters whatever the activations' dtype.
            randn(&[8, 64], 0.3, 33, dev, DType::F32)?,
            randn(&[48, 8], 0.3, 34, dev, DType::F32)?,
        ];
        compare(
            dev,
            dt,
            &x,
            |t| {
                let (w, b) = match t[0].device().is_cpu() {
                    true => (w.clone(), bias.to_device(&Device::Cpu)?),
                    false => (w.clone(), bias.clone()),
                };
                let w = match w {
                    ops::frozen_matmul::Frozen::Dense(t0) => {
                        ops::frozen_matmul::Frozen::Dense(t0.to_device(t[0].device())?)
                    }
                    q => q,
                };
                ops::lora_linear::lora_linear(&t[0], &w, Some(&b), (&t[1], &t[2]), 2.0, Some(spec))
                    .map_err(err)
            },
            4.0,
        )
    }
));

device_test!(cross_entropy_forward_and_backward, |dev: &Device| {
    both_dtypes(dev, |dev, dt| {
        let (n, hd, v) = (33, 64, 1000);
        let labels: Vec<u32> = (0..n as u32).map(|i| i * 31 % v as u32).collect();
        let x = [
            randn(&[n, hd], 1.0, 40, dev, dt)?,
            randn(&[v, hd], 0.5, 41, dev, dt)?,
        ];
        compare(
            dev,
            dt,
            &x,
            |t| {
                ops::cross_entropy::cross_entropy_sum(&t[0], &t[1], labels.clone(), 8, true)
                    .map_err(err)
            },
            4.0,
        )
    })
});

device_test!(dropout_masks_match_the_cpu, |dev: &Device| {
    let spec = ops::dropout::DropSpec {
        key: ops::dropout::DropoutKey {
            seed: 0x5eed,
            step: 77,
            micro: 3,
        },
        stream: ops::dropout::Stream {
            layer: 11,
            projection: 5,
        },
        p: 0.3,
    };
    let ones = Tensor::ones((5, 1001), DType::F32, dev)?;
    let y = ops::dropout::dropout(&ones, spec).map_err(err)?;
    let mask = spec.mask(5 * 1001);
    let got: Vec<f32> = y.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    for (i, g) in got.iter().enumerate() {
        assert_eq!(*g != 0.0, mask.keeps(i), "element {i}");
    }
    Ok(())
});
