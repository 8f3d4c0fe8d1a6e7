//! The fused ops of `runner_kernels` (whose CPU implementations are the reference for their CUDA
//! kernels) against this crate's own CPU code for the same maths: `nn::RmsNorm`,
//! `nn::apply_rope` with `nn::Rope`'s tables, `quant::Nf4::dequantize` and `loss::reference_loss`.

use candle_core::{DType, Device, Tensor, Var};
use runner_kernels::ops;
use runner_model::config::Arch;
use runner_model::nn::{RmsNorm, Rope, apply_rope};
use runner_model::quant::{Nf4, dynamic_map};

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
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

#[test]
fn rms_norm_matches_the_model_norm_forward_and_backward() {
    let dev = Device::Cpu;
    for dtype in [DType::F32, DType::BF16] {
        let x = Tensor::randn(0f32, 2.0, (2, 7, 64), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let w = Tensor::randn(1f32, 0.2, 64, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let norm = RmsNorm {
            weight: w.clone(),
            eps: 1e-6,
        };
        let xv = Var::from_tensor(&x).unwrap();
        let ours = ops::rms_norm(xv.as_tensor(), &w, 1e-6).unwrap();
        let theirs = norm.forward(xv.as_tensor()).unwrap();
        let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
        assert!(max_diff(&ours, &theirs) < tol, "{dtype:?} forward");
        let up = Tensor::randn(0f32, 1.0, (2, 7, 64), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let g1 = (&ours * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&theirs * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = max_diff(
            g1.get(xv.as_tensor()).unwrap(),
            g2.get(xv.as_tensor()).unwrap(),
        );
        assert!(d < tol * 5.0, "{dtype:?} backward differs by {d}");
    }
}

#[test]
fn rope_matches_the_model_rope_forward_and_backward() {
    let dev = Device::Cpu;
    let cfg = runner_model::tiny::tiny_config(Arch::Llama);
    let rope = Rope::new(&cfg);
    let (b, h, t, d) = (2, cfg.num_attention_heads, 6, cfg.head_dim);
    // Packed positions: a second sample restarts at 0.
    let positions: Vec<u32> = [0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1, 2].to_vec();
    let (cos, sin) = rope.cos_sin(&positions, b, t, &dev, DType::F32).unwrap();
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap()).unwrap();
    let ours = ops::rope(x.as_tensor(), &cos, &sin).unwrap();
    let theirs = apply_rope(x.as_tensor(), &cos, &sin).unwrap();
    assert!(max_diff(&ours, &theirs) < 1e-6);
    let up = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
    let g1 = (&ours * &up)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g2 = (&theirs * &up)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(
        max_diff(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap()
        ) < 1e-6
    );
}

#[test]
fn nf4_dequantize_equals_the_model_dequantizer_bit_for_bit() {
    // 5 × 3000 values: 235 blocks of 64 (the last partial), so absmax2 has a second block.
    let (rows, cols) = (5usize, 3000usize);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| (i as f32 * 0.37).sin() * (1.0 + (i % 97) as f32 / 10.0))
        .collect();
    let q = Nf4::quantize(&w, rows, cols);
    let want = q.dequantize();
    let parts = ops::Nf4Parts::new(
        rows,
        cols,
        &q.packed,
        &q.absmax_q,
        &q.absmax2,
        &dynamic_map(),
        q.offset,
        &Device::Cpu,
    )
    .unwrap();
    let got = ops::nf4_dequantize(&parts, DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let first_bad = got
        .iter()
        .zip(&want)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    assert_eq!(first_bad, None, "differs at {first_bad:?}");
}

#[test]
fn nf4_parts_of_the_wrong_size_are_an_error() {
    let e = ops::Nf4Parts::new(
        2,
        64,
        &[0; 63],
        &[0; 2],
        &[1.0],
        &dynamic_map(),
        0.0,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs 64 packed bytes"), "{e}");
}

#[test]
fn cross_entropy_matches_the_reference_loss() {
    let dev = Device::Cpu;
    let (b, t, v) = (2usize, 5usize, 40usize);
    let ids: Vec<u32> = (0..(b * t) as u32).map(|i| i * 7 % v as u32).collect();
    let labels: Vec<i64> = (0..(b * t) as i64)
        .map(|i| if i % 4 == 0 { -100 } else { i * 3 % v as i64 })
        .collect();
    let batch =
        runner_model::Batch::packed(b, t, ids, &[vec![0, 5], vec![0, 3, 5]], labels).unwrap();
    let logits = Var::from_tensor(&Tensor::randn(0f32, 2.0, (b, t, v), &dev).unwrap()).unwrap();
    let want = runner_model::loss::reference_loss(logits.as_tensor(), &batch).unwrap();
    let targets = batch.targets().unwrap();
    let rows: Vec<u32> = targets.iter().map(|&(r, _)| r).collect();
    let lbl: Vec<u32> = targets.iter().map(|&(_, l)| l).collect();
    let n = rows.len();
    let picked = logits
        .as_tensor()
        .reshape((b * t, v))
        .unwrap()
        .index_select(&Tensor::from_slice(&rows, n, &dev).unwrap(), 0)
        .unwrap();
    let stats = ops::cross_entropy(&picked, &Tensor::from_slice(&lbl, n, &dev).unwrap()).unwrap();
    let ours = (stats.narrow(1, 0, 1).unwrap().sum_all().unwrap() / n as f64).unwrap();
    assert!(max_diff(&ours, &want) < 1e-5);
    let g1 = ours.backward().unwrap();
    let g2 = want.backward().unwrap();
    let d = max_diff(
        g1.get(logits.as_tensor()).unwrap(),
        g2.get(logits.as_tensor()).unwrap(),
    );
    assert!(d < 1e-6, "gradients differ by {d}");
}
