//! QLoRA / 8-bit bases: LoRA (and DoRA) gradients through a quantized frozen layer equal those
//! through an f32 layer holding the dequantized weight, and the tiny model trains on a quantized
//! base. (Bit-exact NF4 / int8 parity with bitsandbytes is in `src/quant.rs`.)

use candle_core::{DType, Device, Tensor};
use runner_model::quant::{NF4_BLOCK, NF4_BLOCK2};
use runner_model::tiny::write_tiny_llama;
use runner_model::{Batch, CausalLm, load_folder, loss, quantize_frozen};
use runner_recipe::plan::{AdapterKind, AdapterPlan, BaseQuant, LoraInit, TargetModules};

fn plan(base_quant: BaseQuant, use_dora: bool) -> AdapterPlan {
    AdapterPlan {
        kind: AdapterKind::Lora,
        base_quant,
        init_from: None,
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        scaling: 2.0,
        targets: TargetModules::AllLinear,
        modules_to_save: vec![],
        use_dora,
        use_rslora: false,
        init: LoraInit::Kaiming,
        loraplus_lr_ratio: None,
        loraplus_lr_embedding: 1e-6,
    }
}

fn batch() -> Batch {
    let (b, t) = (2, 12);
    let ids: Vec<u32> = (0..b * t).map(|i| ((i * 37 + 11) % 90) as u32).collect();
    let mut mask = vec![1u8; b * t];
    mask[b * t - 3..].fill(0);
    let labels = ids
        .iter()
        .zip(&mask)
        .map(|(&i, &m)| if m == 1 { i as i64 } else { -100 })
        .collect();
    Batch::from_attention_mask(b, t, ids, &mask, labels).unwrap()
}

fn tiny() -> (tempfile::TempDir, CausalLm) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path(), 3).unwrap();
    let m = load_folder(dir.path(), DType::F32, &Device::Cpu).unwrap();
    (dir, m)
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Non-zero B everywhere (B starts at zero, which would leave A's gradient zero).
fn randomize_b(params: &[(String, candle_core::Var)]) {
    for (k, (name, v)) in params.iter().enumerate() {
        if name.ends_with("lora_B.weight") {
            let n = v.elem_count();
            let vals: Vec<f32> = (0..n)
                .map(|i| (((i * 131 + k * 17) % 97) as f32 / 97.0 - 0.5) * 0.2)
                .collect();
            v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

fn loss_and_grads(m: &CausalLm, params: &[(String, candle_core::Var)]) -> (f32, Vec<Vec<f32>>) {
    let out = loss::causal_lm_loss(m, &batch(), true, loss::DEFAULT_CHUNK).unwrap();
    let grads = runner_model::backward(&out.loss, m).unwrap();
    let g = params
        .iter()
        .map(|(name, v)| {
            to_vec(
                grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}")),
            )
        })
        .collect();
    (out.loss.to_scalar::<f32>().unwrap(), g)
}

#[test]
fn lora_and_dora_grads_through_quantized_base_equal_f32_with_dequantized_weights() {
    for kind in [BaseQuant::Nf4, BaseQuant::Int8] {
        for dora in [false, true] {
            for checkpointing in [false, true] {
                let (_d, mut q) = tiny();
                let s = quantize_frozen(&mut q, kind).unwrap();
                assert_eq!(s.layers, 7 * q.layers.len());
                // The reference: the same model in f32 holding the dequantized weights.
                let (_d2, mut f) = tiny();
                for (lf, lq) in f.linears_mut().into_iter().zip(q.linears()) {
                    assert_eq!(lf.name, lq.name);
                    assert_eq!(lq.quant.is_some(), lq.name != "lm_head", "{}", lq.name);
                    lf.weight = lq.dense_weight().unwrap();
                }
                q.gradient_checkpointing = checkpointing;
                f.gradient_checkpointing = checkpointing;
                let p = plan(BaseQuant::None, dora);
                let aq = runner_model::inject(&mut q, &p, 5).unwrap();
                let af = runner_model::inject(&mut f, &p, 5).unwrap();
                randomize_b(&aq.params);
                randomize_b(&af.params);
                let (lq, gq) = loss_and_grads(&q, &aq.params);
                let (lf, gf) = loss_and_grads(&f, &af.params);
                let what = format!("{kind:?} dora={dora} checkpointing={checkpointing}");
                assert!(
                    (lq - lf).abs() <= 1e-6 * lf.abs(),
                    "{what}: loss {lq} vs {lf}"
                );
                for ((name, _), (a, b)) in aq.params.iter().zip(gq.iter().zip(&gf)) {
                    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
                    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                    assert!(d <= 1e-5 * scale, "{what}: {name}: {d} (max |g| {scale})");
                }
            }
        }
    }
}

#[test]
fn quantized_layers_hold_about_half_a_byte_per_parameter() {
    let (_d, mut m) = tiny();
    let s = quantize_frozen(&mut m, BaseQuant::Nf4).unwrap();
    let n = s.params;
    let blocks = n.div_ceil(NF4_BLOCK);
    // Per layer: n/2 packed bytes, one byte per 64-block, 4 bytes per 256 blocks, a 4-byte offset.
    let per_layer_extra: usize = m
        .linears()
        .iter()
        .filter_map(|l| l.quant.as_ref())
        .map(|q| {
            let (r, c) = q.dims();
            4 * (r * c).div_ceil(NF4_BLOCK).div_ceil(NF4_BLOCK2) + 4
        })
        .sum();
    assert_eq!(s.bytes, n / 2 + blocks + per_layer_extra);
    assert!((s.bytes as f64 / n as f64) < 0.53, "{s:?}");
    // Quantizing twice changes nothing; int8 on top of NF4 is a no-op too.
    assert_eq!(quantize_frozen(&mut m, BaseQuant::Nf4).unwrap().layers, 0);
    assert_eq!(quantize_frozen(&mut m, BaseQuant::Int8).unwrap().layers, 0);
}

#[test]
fn tiny_model_trains_on_a_quantized_base() {
    for kind in [BaseQuant::Nf4, BaseQuant::Int8] {
        let (_d, mut m) = tiny();
        // `inject` quantizes the base itself when the plan asks for it.
        let ad = runner_model::inject(&mut m, &plan(kind, false), 1).unwrap();
        assert!(m.layers[0].self_attn.q_proj.quant.is_some());
        assert!(m.lm_head.quant.is_none());
        let mut losses = Vec::new();
        for _ in 0..6 {
            let out = loss::causal_lm_loss(&m, &batch(), true, loss::DEFAULT_CHUNK).unwrap();
            let grads = runner_model::backward(&out.loss, &m).unwrap();
            losses.push(out.loss.to_scalar::<f32>().unwrap());
            for (_, v) in &ad.params {
                let g = grads.get(v.as_tensor()).unwrap();
                v.set(&(v.as_tensor() - (g * 0.5).unwrap()).unwrap())
                    .unwrap();
            }
        }
        assert!(losses.iter().all(|l| l.is_finite()), "{kind:?}: {losses:?}");
        assert!(
            losses.windows(2).all(|w| w[1] < w[0]),
            "{kind:?}: {losses:?}"
        );
    }
}

/// The quantized weights of every decoder projection, by module name.
fn quantized(m: &CausalLm) -> Vec<(String, runner_model::quant::QuantWeight)> {
    m.linears()
        .iter()
        .filter_map(|l| l.quant.as_ref().map(|q| (l.name.clone(), (**q).clone())))
        .collect()
}

fn model_plan(base_model: &std::path::Path) -> runner_recipe::plan::ModelPlan {
    runner_recipe::plan::ModelPlan {
        base_model: base_model.display().to_string(),
        config: None,
        tokenizer: None,
        model_type: None,
        tokenizer_type: None,
        revision: None,
        special_tokens: Default::default(),
        added_tokens: vec![],
    }
}

/// Issue 12: loading a QLoRA base quantizes tensor by tensor; the result is exactly what
/// quantizing the whole loaded model gives (NF4 and int8), every projection is quantized, and
/// the rest of the model (embeddings, norms, LM head) is the same.
#[test]
fn issue_12_streaming_quantization_equals_quantizing_the_loaded_model() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path(), 3).unwrap();
    let mp = model_plan(dir.path());
    for kind in [BaseQuant::Nf4, BaseQuant::Int8] {
        let mut whole = load_folder(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let summary = quantize_frozen(&mut whole, kind).unwrap();
        let streamed =
            runner_model::load::load_for_adapter(&mp, &plan(kind, false), DType::F32, &Device::Cpu)
                .unwrap()
                .model;
        let (a, b) = (quantized(&whole), quantized(&streamed));
        assert_eq!(a.len(), summary.layers);
        assert_eq!(a.len(), 7 * whole.cfg.num_hidden_layers);
        assert!(a == b, "{kind:?}: streamed quantization differs");
        assert_eq!(to_vec(&whole.embed_tokens), to_vec(&streamed.embed_tokens));
        assert_eq!(
            to_vec(&whole.lm_head.weight),
            to_vec(&streamed.lm_head.weight)
        );
        // And it trains through inject (which leaves the quantized layers as they are).
        let mut streamed = streamed;
        let adapters = runner_model::inject(&mut streamed, &plan(kind, true), 0).unwrap();
        assert_eq!(quantized(&streamed).len(), a.len());
        let (l, g) = loss_and_grads(&streamed, &adapters.params);
        assert!(l.is_finite() && g.iter().all(|g| g.iter().all(|x| x.is_finite())));
    }
}
