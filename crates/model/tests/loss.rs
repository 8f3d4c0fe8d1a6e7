//! The chunked loss equals the plain one (values and gradients), packing does not change the
//! per-sample loss, and an adapter on the LM head trains through the chunked path.

use candle_core::{DType, Device, Tensor, Var};
use runner_model::lora::{LoraSettings, inject_settings};
use runner_model::tiny::write_tiny_llama;
use runner_model::{Adapters, Batch, CausalLm, load_folder, loss};
use runner_recipe::plan::{LoraInit, TargetModules};

fn model_with(targets: TargetModules) -> (CausalLm, Adapters, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path(), 21).unwrap();
    let mut m = load_folder(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let s = LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        scaling: 2.0,
        targets,
        init: LoraInit::Gaussian,
        use_dora: false,
    };
    let ad = inject_settings(&mut m, &s, 5).unwrap();
    // Non-zero B so every adapter matrix gets a gradient.
    for (name, v) in &ad.params {
        if name.contains("lora_B") {
            // deterministic, varied values
            let n = v.elem_count();
            let t = (Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap() * 1.7)
                .unwrap()
                .sin()
                .unwrap()
                .affine(0.05, 0.0)
                .unwrap()
                .reshape(v.shape())
                .unwrap();
            v.set(&t).unwrap();
        }
    }
    (m, ad, dir)
}

fn samples() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, 17, 33, 2],
        vec![101, 7, 8, 200],
        vec![3, 4, 250, 6, 77, 12],
    ]
}

fn grads_of(loss: &Tensor, ad: &Adapters) -> Vec<Vec<f32>> {
    let g = loss.backward().unwrap();
    ad.params
        .iter()
        .map(|(n, v)| {
            g.get(v.as_tensor())
                .unwrap_or_else(|| panic!("no grad for {n}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect()
}

fn max_rel(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        worst = worst.max(d / scale);
    }
    worst
}

#[test]
fn packed_equals_padded() {
    let (m, ad, _dir) = model_with(TargetModules::AllLinear);
    let s = samples();
    // padded: one sample per row, right padding to 6
    let t = 6;
    let mut ids = vec![];
    let mut mask = vec![];
    for x in &s {
        ids.extend(x.iter().copied().chain(std::iter::repeat_n(0, t - x.len())));
        mask.extend(std::iter::repeat_n(1u8, x.len()).chain(std::iter::repeat_n(0, t - x.len())));
    }
    let labels = ids
        .iter()
        .zip(&mask)
        .map(|(&i, &k)| if k == 1 { i as i64 } else { -100 })
        .collect();
    let padded = Batch::from_attention_mask(3, t, ids, &mask, labels).unwrap();
    // packed: all three in one row of 16 (one pad)
    let mut pids: Vec<u32> = s.concat();
    pids.push(0);
    let mut plabels: Vec<i64> = pids.iter().map(|&i| i as i64).collect();
    *plabels.last_mut().unwrap() = -100;
    let packed = Batch::packed(1, 16, pids, &[vec![0, 5, 9, 15]], plabels).unwrap();

    let a = loss::causal_lm_loss(&m, &padded, true, 4).unwrap();
    let b = loss::causal_lm_loss(&m, &packed, true, 4).unwrap();
    assert_eq!(a.n_tokens, b.n_tokens);
    let (la, lb) = (
        a.loss.to_scalar::<f32>().unwrap(),
        b.loss.to_scalar::<f32>().unwrap(),
    );
    assert!(
        (la - lb).abs() < 1e-5 * la.abs(),
        "padded {la} vs packed {lb}"
    );
    let e = max_rel(&grads_of(&a.loss, &ad), &grads_of(&b.loss, &ad));
    assert!(e < 1e-4, "grad rel err {e}");
}

#[test]
fn chunk_size_does_not_change_loss_or_grads() {
    let (m, ad, _dir) = model_with(TargetModules::Names(vec![
        "q_proj".into(),
        "down_proj".into(),
    ]));
    let s = samples();
    let ids: Vec<u32> = s.concat();
    let n = ids.len();
    let labels = ids.iter().map(|&i| i as i64).collect();
    let batch = Batch::packed(1, n, ids, &[vec![0, 5, 9, 15]], labels).unwrap();
    let reference = loss::reference_loss(&m.logits(&batch, true).unwrap(), &batch).unwrap();
    let want = grads_of(&reference, &ad);
    for chunk in [1, 3, 7, 1000] {
        let out = loss::causal_lm_loss(&m, &batch, true, chunk).unwrap();
        let (a, b) = (
            out.loss.to_scalar::<f32>().unwrap(),
            reference.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5 * b.abs(), "chunk {chunk}: {a} vs {b}");
        let e = max_rel(&grads_of(&out.loss, &ad), &want);
        assert!(e < 1e-4, "chunk {chunk}: grad rel err {e}");
    }
}

#[test]
fn adapter_on_lm_head_trains_through_the_chunked_path() {
    let (m, ad, _dir) = model_with(TargetModules::Names(vec![
        "lm_head".into(),
        "v_proj".into(),
    ]));
    assert!(ad.modules.iter().any(|x| x == "lm_head"));
    let ids: Vec<u32> = samples().concat();
    let n = ids.len();
    let labels = ids.iter().map(|&i| i as i64).collect();
    let batch = Batch::packed(1, n, ids, &[vec![0, 5, 9, 15]], labels).unwrap();
    let reference = loss::reference_loss(&m.logits(&batch, true).unwrap(), &batch).unwrap();
    let out = loss::causal_lm_loss(&m, &batch, true, 4).unwrap();
    let (a, b) = (
        out.loss.to_scalar::<f32>().unwrap(),
        reference.to_scalar::<f32>().unwrap(),
    );
    assert!((a - b).abs() < 1e-5 * b.abs());
    let e = max_rel(&grads_of(&out.loss, &ad), &grads_of(&reference, &ad));
    assert!(e < 1e-4, "grad rel err {e}");
}

/// A trainable LM head weight (e.g. `lora_modules_to_save: [lm_head]` later) gets the same
/// gradient from the chunked custom op as from plain autograd.
#[test]
fn chunked_op_gives_weight_gradient_when_trainable() {
    let dev = Device::Cpu;
    let wave = |n: usize, scale: f64| {
        (Tensor::arange(0f32, n as f32, &dev).unwrap() * 0.37)
            .unwrap()
            .cos()
            .unwrap()
            .affine(scale, 0.0)
            .unwrap()
    };
    let h = Var::from_tensor(&wave(7 * 16, 1.0).reshape((1, 7, 16)).unwrap()).unwrap();
    let w = Var::from_tensor(&wave(40 * 16, 0.3).reshape((40, 16)).unwrap()).unwrap();
    let head = runner_model::nn::Linear {
        name: "lm_head".into(),
        weight: w.as_tensor().clone(),
        bias: None,
        lora: None,
        quant: None,
    };
    let ids: Vec<u32> = vec![1, 5, 9, 33, 2, 17, 8];
    let labels = ids.iter().map(|&i| i as i64).collect();
    let batch = Batch::from_attention_mask(1, 7, ids, &[1; 7], labels).unwrap();
    let logits = h
        .as_tensor()
        .broadcast_matmul(&w.as_tensor().t().unwrap())
        .unwrap();
    let reference = loss::reference_loss(&logits, &batch).unwrap();
    let g2 = reference.backward().unwrap();
    // train: gradients computed in the forward pass; eval: recomputed in the backward pass.
    for train in [true, false] {
        let out = loss::loss_from_hidden(h.as_tensor(), &head, &batch, train, 2).unwrap();
        let g1 = out.loss.backward().unwrap();
        for v in [&h, &w] {
            let a: Vec<f32> = g1
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let b: Vec<f32> = g2
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let e = max_rel(&[a], &[b]);
            assert!(e < 1e-5, "train={train}: rel err {e}");
        }
    }
}

/// A few plain SGD steps on the adapters lower the loss of a fixed batch: gradients point the
/// right way end to end.
#[test]
fn sgd_on_adapters_lowers_the_loss() {
    let (m, ad, _dir) = model_with(TargetModules::AllLinear);
    let ids: Vec<u32> = samples().concat();
    let n = ids.len();
    let labels = ids.iter().map(|&i| i as i64).collect();
    let batch = Batch::packed(1, n, ids, &[vec![0, 5, 9, 15]], labels).unwrap();
    let mut losses = vec![];
    for _ in 0..5 {
        let out = loss::causal_lm_loss(&m, &batch, true, 8).unwrap();
        losses.push(out.loss.to_scalar::<f32>().unwrap());
        let g = out.loss.backward().unwrap();
        for (_, v) in &ad.params {
            let step = (g.get(v.as_tensor()).unwrap() * 0.001).unwrap();
            v.set(&(v.as_tensor() - step).unwrap()).unwrap();
        }
    }
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
}

/// Gradient checkpointing recomputes each layer (same dropout masks) and gives the same loss
/// and adapter gradients as keeping the activations, in f32 and (issue 12: the same ops, no
/// fallback) with bf16 activations.
#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    for dtype in [DType::F32, DType::BF16] {
        for targets in [
            TargetModules::AllLinear,
            // only layer 0 adapted: layer 1 is checkpointed through its input alone
            TargetModules::Regex(r"model\.layers\.0\..*".into()),
            // only layer 1 adapted: layer 0 runs plainly, layer 1 anchors on its adapters
            TargetModules::Regex(r"model\.layers\.1\.mlp\..*".into()),
        ] {
            let run = |ckpt: bool| {
                let dir = tempfile::tempdir().unwrap();
                write_tiny_llama(dir.path(), 21).unwrap();
                let mut m = load_folder(dir.path(), dtype, &Device::Cpu).unwrap();
                let s = LoraSettings {
                    r: 4,
                    alpha: 8.0,
                    dropout: 0.2,
                    scaling: 2.0,
                    targets: targets.clone(),
                    init: LoraInit::Gaussian,
                    use_dora: false,
                };
                let ad = inject_settings(&mut m, &s, 5).unwrap();
                for (name, v) in &ad.params {
                    if name.contains("lora_B") {
                        let b = Tensor::full(0.01f32, v.shape(), &Device::Cpu).unwrap();
                        v.set(&b.to_dtype(v.dtype()).unwrap()).unwrap();
                    }
                }
                m.gradient_checkpointing = ckpt;
                let ids: Vec<u32> = samples().concat();
                let n = ids.len();
                let labels = ids.iter().map(|&i| i as i64).collect();
                let batch = Batch::packed(1, n, ids, &[vec![0, 5, 9, 15]], labels).unwrap();
                let out = loss::causal_lm_loss(&m, &batch, true, 8).unwrap();
                let g = runner_model::backward(&out.loss, &m).unwrap();
                let grads: Vec<Vec<f32>> = ad
                    .params
                    .iter()
                    .map(|(n, v)| {
                        g.get(v.as_tensor())
                            .unwrap_or_else(|| panic!("no grad for {n}"))
                            .to_dtype(DType::F32)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1()
                            .unwrap()
                    })
                    .collect();
                (out.loss.to_scalar::<f32>().unwrap(), grads)
            };
            let (l0, g0) = run(false);
            let (l1, g1) = run(true);
            assert!(
                (l0 - l1).abs() < 1e-6 * l0.abs(),
                "{targets:?}: {l0} vs {l1}"
            );
            let e = max_rel(&g1, &g0);
            assert!(e < 1e-5, "{dtype:?} {targets:?}: grad rel err {e}");
        }
    }
}

#[test]
fn out_of_vocabulary_ids_are_errors() {
    let (m, _ad, _dir) = model_with(TargetModules::AllLinear);
    let bad = Batch::from_attention_mask(1, 3, vec![1, 999, 2], &[1, 1, 1], vec![1, 2, 3]).unwrap();
    let e = loss::causal_lm_loss(&m, &bad, false, 8)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("999") && e.contains("position 1"), "{e}");
    let bad =
        Batch::from_attention_mask(1, 3, vec![1, 2, 3], &[1, 1, 1], vec![1, 2, 5000]).unwrap();
    let e = loss::causal_lm_loss(&m, &bad, false, 8)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("5000"), "{e}");
}

/// Degenerate batches: a fully padded row, a batch with nothing to train, one-token rows.
#[test]
fn edge_batches_do_not_panic() {
    let (m, _ad, _dir) = model_with(TargetModules::AllLinear);
    let b = Batch::from_attention_mask(
        2,
        3,
        vec![5, 6, 7, 0, 0, 0],
        &[1, 1, 1, 0, 0, 0],
        vec![5, 6, 7, -100, -100, -100],
    )
    .unwrap();
    let out = loss::causal_lm_loss(&m, &b, true, 8).unwrap();
    assert_eq!(out.n_tokens, 2);
    assert!(out.loss.to_scalar::<f32>().unwrap().is_finite());
    let g = runner_model::backward(&out.loss, &m).unwrap();
    drop(g);
    let none = Batch::from_attention_mask(1, 3, vec![5, 6, 7], &[1, 1, 1], vec![-100; 3]).unwrap();
    let out = loss::causal_lm_loss(&m, &none, true, 8).unwrap();
    assert_eq!(out.n_tokens, 0);
    assert_eq!(out.loss.to_scalar::<f32>().unwrap(), 0.0);
    assert!(runner_model::backward(&out.loss, &m).is_ok());
    let one = Batch::from_attention_mask(2, 1, vec![5, 6], &[1, 1], vec![5, 6]).unwrap();
    let logits = m.logits(&one, false).unwrap();
    assert_eq!(logits.dims(), &[2, 1, 256]);
    assert!(Batch::from_attention_mask(2, 3, vec![1, 2], &[1, 1], vec![1, 2]).is_err());
    assert!(Batch::packed(1, 4, vec![1, 2, 3, 4], &[vec![0, 5]], vec![1, 2, 3, 4]).is_err());
}
