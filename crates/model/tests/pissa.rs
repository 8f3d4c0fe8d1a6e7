//! PiSSA (issue 7) against PEFT 0.21 on the tiny-llama fixture: the residual base and `B·A`
//! after `init_lora_weights="pissa"`, A up to the sign of each singular component, the model's
//! output unchanged by the split, and the conversion of a trained adapter to a plain LoRA as
//! `save_pretrained(path_initial_model_for_weight_conversion=...)` writes it; the fast SVD
//! (`pissa_niter_4`) checked for reconstruction quality against PEFT's own fast path.
//! Fixture: `tools/model/make_pissa_fixture.py`. Tolerances (f32): 1e-4 relative.

use candle_core::{DType, Device, Tensor};
use runner_model::{Batch, CausalLm, inject, load_folder};
use runner_recipe::plan::{AdapterKind, AdapterPlan, BaseQuant, LoraInit, TargetModules};
use std::collections::HashMap;
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn plan(niter: Option<u32>, r: usize) -> AdapterPlan {
    AdapterPlan {
        kind: AdapterKind::Lora,
        base_quant: BaseQuant::None,
        init_from: None,
        r,
        alpha: 8.0,
        dropout: 0.0,
        scaling: 8.0 / r as f64,
        targets: TargetModules::Names(vec!["q_proj".into(), "v_proj".into(), "down_proj".into()]),
        modules_to_save: vec![],
        use_dora: false,
        use_rslora: false,
        init: LoraInit::Pissa { niter },
        loraplus_lr_ratio: None,
        loraplus_lr_embedding: 1e-6,
    }
}

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir("pissa").join("pissa.safetensors"), &Device::Cpu).unwrap()
}

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-30)
}

fn base() -> CausalLm {
    load_folder(&dir("tiny-llama"), DType::F32, &Device::Cpu).unwrap()
}

fn weight_of<'a>(m: &'a CausalLm, module: &str) -> &'a Tensor {
    &m.linears()
        .into_iter()
        .find(|l| l.name == module)
        .unwrap()
        .weight
}

#[test]
fn pissa_residual_and_factors_match_peft() {
    let f = fixture();
    let mut m = base();
    let ad = inject(&mut m, &plan(None, 4), 0).unwrap();
    assert_eq!(ad.modules.len(), 6);
    let param = |n: &str| {
        ad.params
            .iter()
            .find(|(p, _)| p == n)
            .unwrap()
            .1
            .as_tensor()
            .clone()
    };
    for module in &ad.modules {
        let res = weight_of(&m, module);
        let e = rel(res, &f[&format!("residual.{module}.weight")]);
        assert!(e < 1e-4, "{module}: residual rel err {e}");
        let pre = format!("base_model.model.{module}");
        let (a, b) = (
            param(&format!("{pre}.lora_A.weight")),
            param(&format!("{pre}.lora_B.weight")),
        );
        let (pa, pb) = (
            &f[&format!("init.{pre}.lora_A.weight")],
            &f[&format!("init.{pre}.lora_B.weight")],
        );
        let e = rel(&b.matmul(&a).unwrap(), &pb.matmul(pa).unwrap());
        assert!(e < 1e-4, "{module}: B·A rel err {e}");
        // Each row of A is PEFT's up to a sign.
        for k in 0..4 {
            let (x, y) = (a.get(k).unwrap(), pa.get(k).unwrap());
            let e = rel(&x, &y).min(rel(&x.neg().unwrap(), &y));
            assert!(e < 1e-3, "{module}: A row {k} rel err {e}");
        }
    }
    // W_res + s·B·A = W: the model computes what the base computed.
    let ids: Vec<u32> = (0..16).map(|i| (i * 7 % 90 + 3) as u32).collect();
    let labels = ids.iter().map(|&i| i as i64).collect();
    let batch = Batch::from_attention_mask(2, 8, ids, &[1u8; 16], labels).unwrap();
    let e = rel(
        &m.logits(&batch, false).unwrap(),
        &base().logits(&batch, false).unwrap(),
    );
    assert!(e < 1e-5, "logits moved by the PiSSA split: {e}");
}

#[test]
fn trained_pissa_converts_to_peft_lora() {
    let f = fixture();
    let mut m = base();
    let ad = inject(&mut m, &plan(None, 4), 0).unwrap();
    for (name, var) in &ad.params {
        var.set(&f[&format!("trained.{name}")]).unwrap();
    }
    let lora = ad.pissa_as_lora().unwrap().unwrap();
    assert_eq!(lora.r, 8);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir("pissa").join("pissa.json")).unwrap())
            .unwrap();
    assert_eq!(info["converted_r"], 8);
    assert_eq!(info["converted_alpha"], 16);
    let converted: HashMap<&str, &Tensor> = lora
        .params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_tensor()))
        .collect();
    for module in &lora.modules {
        let pre = format!("base_model.model.{module}");
        let (a, b) = (
            converted[format!("{pre}.lora_A.weight").as_str()],
            converted[format!("{pre}.lora_B.weight").as_str()],
        );
        let (pa, pb) = (
            &f[&format!("converted.{pre}.lora_A.weight")],
            &f[&format!("converted.{pre}.lora_B.weight")],
        );
        assert_eq!(a.dims(), pa.dims());
        assert_eq!(b.dims(), pb.dims());
        // ΔW = B'·A' (the halves may differ by component signs; the product may not).
        let e = rel(&b.matmul(a).unwrap(), &pb.matmul(pa).unwrap());
        assert!(e < 1e-4, "{module}: converted ΔW rel err {e}");
    }
}

#[test]
fn fast_svd_reconstructs_as_well_as_peft_fast_path() {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir("pissa").join("pissa.json")).unwrap())
            .unwrap();
    let original = base();
    let mut m = base();
    let ad = inject(&mut m, &plan(Some(4), 4), 0).unwrap();
    for module in &ad.modules {
        let w = weight_of(&original, module);
        let res = weight_of(&m, module);
        // ||W − s·B·A|| / ||W|| is the residual's norm over the weight's.
        let norm = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let ours = norm(res) / norm(w);
        let peft = info["fast_relative_error"][format!("{module}.weight")]
            .as_f64()
            .unwrap() as f32;
        println!(
            "{module}: fast PiSSA reconstruction error {ours:.4} (PEFT's fast path {peft:.4})"
        );
        assert!(ours <= peft * 1.03, "{module}: {ours} vs PEFT {peft}");
    }
}

#[test]
fn pissa_rank_above_the_smallest_side_is_refused() {
    let mut m = base();
    // v_proj is [32, 64]: at most 32 singular values.
    let e = inject(&mut m, &plan(None, 33), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("v_proj") && e.contains("lora_r"), "{e}");
}
