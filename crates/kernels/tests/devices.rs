//! The fused ops on every device against their CPU reference. `device_test!` writes a test
//! per device: `_cpu` always, and under `cuda` a `_cuda` one that needs a GPU (marked ignored
//! so the no-GPU build stays green; `scripts/gpu-check.sh` runs them with `--ignored`, where a
//! missing GPU fails them).

use candle_core::{DType, Device, Result, Tensor};
use runner_kernels::ops;

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

device_test!(rms_norm_forward_and_backward, |dev: &Device| both_dtypes(
    dev,
    |dev, dt| {
        let x = randn(&[3, 5, 200], 1.0, 1, dev, dt)?;
        let w = randn(&[200], 0.5, 2, dev, dt)?;
        let up = randn(&[3, 5, 200], 1.0, 3, dev, dt)?;
        let xv = candle_core::Var::from_tensor(&x)?;
        let y = ops::rms_norm(xv.as_tensor(), &w, 1e-5)?;
        let g = (&y * &up)?.sum_all()?.backward()?;
        let dx = g.get(xv.as_tensor()).unwrap().clone();
        // The reference: the same op on the CPU.
        let cpu = Device::Cpu;
        let xc = candle_core::Var::from_tensor(&x.to_device(&cpu)?)?;
        let yc = ops::rms_norm(xc.as_tensor(), &w.to_device(&cpu)?, 1e-5)?;
        let gc = (&yc * &up.to_device(&cpu)?)?.sum_all()?.backward()?;
        assert!(max_diff(&y, &yc)? < tol(dt), "{dt:?} forward");
        assert!(
            max_diff(&dx, gc.get(xc.as_tensor()).unwrap())? < tol(dt) * 4.0,
            "{dt:?} backward"
        );
        Ok(())
    }
));

device_test!(rope_forward_and_backward, |dev: &Device| both_dtypes(
    dev,
    |dev, dt| {
        let (b, h, t, d) = (2, 4, 9, 16);
        let x = randn(&[b, h, t, d], 1.0, 4, dev, dt)?;
        let cos = randn(&[b, 1, t, d], 0.5, 5, dev, dt)?;
        let sin = randn(&[b, 1, t, d], 0.5, 6, dev, dt)?;
        let up = randn(&[b, h, t, d], 1.0, 7, dev, dt)?;
        let run = |dev: &Device| -> Result<(Tensor, Tensor)> {
            let xv = candle_core::Var::from_tensor(&x.to_device(dev)?)?;
            let y = ops::rope(xv.as_tensor(), &cos.to_device(dev)?, &sin.to_device(dev)?)?;
            let g = (&y * &up.to_device(dev)?)?.sum_all()?.backward()?;
            Ok((y, g.get(xv.as_tensor()).unwrap().clone()))
        };
        let (y, dx) = run(dev)?;
        let (yc, dxc) = run(&Device::Cpu)?;
        assert!(max_diff(&y, &yc)? < tol(dt), "{dt:?} forward");
        assert!(max_diff(&dx, &dxc)? < tol(dt), "{dt:?} backward");
        Ok(())
    }
));

device_test!(swiglu_forward_and_backward, |dev: &Device| both_dtypes(
    dev,
    |dev, dt| {
        let gate = randn(&[7, 300], 2.0, 8, dev, dt)?;
        let upv = randn(&[7, 300], 1.0, 9, dev, dt)?;
        let w = randn(&[7, 300], 1.0, 10, dev, dt)?;
        let run = |dev: &Device| -> Result<(Tensor, Tensor, Tensor)> {
            let g = candle_core::Var::from_tensor(&gate.to_device(dev)?)?;
            let u = candle_core::Var::from_tensor(&upv.to_device(dev)?)?;
            let y = ops::swiglu(g.as_tensor(), u.as_tensor())?;
            let gr = (&y * &w.to_device(dev)?)?.sum_all()?.backward()?;
            Ok((
                y,
                gr.get(g.as_tensor()).unwrap().clone(),
                gr.get(u.as_tensor()).unwrap().clone(),
            ))
        };
        let (y, dg, du) = run(dev)?;
        let (yc, dgc, duc) = run(&Device::Cpu)?;
        assert!(max_diff(&y, &yc)? < tol(dt) * 4.0, "{dt:?} forward");
        assert!(max_diff(&dg, &dgc)? < tol(dt) * 4.0, "{dt:?} dgate");
        assert!(max_diff(&du, &duc)? < tol(dt) * 4.0, "{dt:?} dup");
        Ok(())
    }
));

device_test!(cross_entropy_forward_and_backward, |dev: &Device| {
    both_dtypes(dev, |dev, dt| {
        let (n, v) = (5, 1000);
        let logits = randn(&[n, v], 4.0, 11, dev, dt)?;
        let labels = Tensor::from_vec(vec![0u32, 999, 17, 500, 3], n, &Device::Cpu)?;
        let up = randn(&[n, 2], 1.0, 12, dev, DType::F32)?;
        let run = |dev: &Device| -> Result<(Tensor, Tensor)> {
            let l = candle_core::Var::from_tensor(&logits.to_device(dev)?)?;
            let stats = ops::cross_entropy(l.as_tensor(), &labels.to_device(dev)?)?;
            let g = (&stats * &up.to_device(dev)?)?.sum_all()?.backward()?;
            Ok((stats, g.get(l.as_tensor()).unwrap().clone()))
        };
        let (s, d) = run(dev)?;
        let (sc, dc) = run(&Device::Cpu)?;
        assert!(max_diff(&s, &sc)? < 1e-3, "{dt:?} loss/lse");
        assert!(max_diff(&d, &dc)? < tol(dt), "{dt:?} dlogits");
        Ok(())
    })
});

device_test!(nf4_dequantize, |dev: &Device| both_dtypes(
    dev,
    |dev, dt| {
        // 3 rows × 200 columns: 600 values, 10 blocks (the last one partial), one absmax2 block.
        let (rows, cols) = (3usize, 200usize);
        let n = rows * cols;
        let packed: Vec<u8> = (0..n.div_ceil(2)).map(|i| (i * 37 % 256) as u8).collect();
        let absmax_q: Vec<u8> = (0..n.div_ceil(64)).map(|i| (i * 53 % 256) as u8).collect();
        let absmax2 = vec![0.75f32];
        let mut map = [0f32; 256];
        for (i, m) in map.iter_mut().enumerate() {
            *m = (i as f32 - 127.5) / 128.0;
        }
        let make = |dev: &Device| {
            ops::Nf4Parts::new(rows, cols, &packed, &absmax_q, &absmax2, &map, 0.125, dev)
        };
        let w = ops::nf4_dequantize(&make(dev)?, dt)?;
        let wc = ops::nf4_dequantize(&make(&Device::Cpu)?, dt)?;
        assert_eq!(w.dims(), [rows, cols]);
        assert_eq!(
            max_diff(&w, &wc)?,
            0.0,
            "{dt:?}: dequantization is exact arithmetic"
        );
        Ok(())
    }
));
