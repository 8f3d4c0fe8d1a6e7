//! `runner_model::generate` (KV cache, greedy) against transformers' `generate`
//! (`do_sample=False, use_cache=True`) on the tiny export fixture model, alone, with each PEFT
//! adapter applied unmerged, and merged by `merge_folder`. The fixture is
//! `fixtures/generate.json`, written by tools/export/make_generate_fixture.py; it records the
//! smallest margin between the two best logits along each reference sequence (≥ 5e-4 here,
//! against f32 logit differences of ~1e-6), so equal tokens are a meaningful check.

mod common;

use candle_core::{DType, Device};
use common::fixture;
use runner_model::generate::{GenerateOptions, Sampling, generate};

fn cases() -> (usize, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(fixture("generate.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        v["new_tokens"].as_u64().unwrap() as usize,
        v["cases"].as_array().unwrap().clone(),
    )
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        seed: 0,
        stop: vec![],
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    let (n, cases) = cases();
    assert_eq!(cases.len(), 12);
    for c in cases {
        let model = match c["adapter"].as_str() {
            None => runner_model::load_folder(&fixture("base"), DType::F32, &Device::Cpu).unwrap(),
            Some(a) => {
                runner_export::merge::load_with_adapter(
                    &fixture("base"),
                    &fixture(&format!("adapter-{a}")),
                )
                .unwrap()
                .0
            }
        };
        let out = generate(&model, &ids(&c["prompt"]), &greedy(n), |_| Ok(())).unwrap();
        assert_eq!(out, ids(&c["generated"]), "adapter {:?}", c["adapter"]);
    }
}

#[test]
fn greedy_generation_from_the_merged_model_matches_transformers() {
    let (n, cases) = cases();
    for adapter in ["lora", "dora"] {
        let tmp = tempfile::tempdir().unwrap();
        let out_dir = tmp.path().join("merged");
        runner_export::merge_folder(
            &fixture("base"),
            &fixture(&format!("adapter-{adapter}")),
            &out_dir,
            DType::F32,
            false,
        )
        .unwrap();
        let model = runner_model::load_folder(&out_dir, DType::F32, &Device::Cpu).unwrap();
        for c in cases.iter().filter(|c| c["adapter"] == adapter) {
            let out = generate(&model, &ids(&c["prompt"]), &greedy(n), |_| Ok(())).unwrap();
            assert_eq!(out, ids(&c["generated"]), "merged {adapter}");
        }
    }
}
