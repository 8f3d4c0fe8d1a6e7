//! The cached inference path against the full forward, and the sampler.
//!
//! Models: the parity fixtures (tools/model/make_fixtures.py) with their LoRA/DoRA adapters
//! applied unmerged, covering Llama 3.1 rope scaling, Qwen3's q/k norm, Qwen2's biases and
//! Mistral's sliding window (4, shorter than the sequences here, so the window is exercised).
//!
//! Tolerance (f32): the logits of every position, decoded with the cache in uneven chunks,
//! equal the full forward's to max-abs error / max-abs value ≤ 1e-5.

use candle_core::{DType, Device, Tensor};
use runner_model::generate::{GenerateOptions, KvCache, Sampler, Sampling, generate};
use runner_model::lora::{LoraSettings, inject_settings};
use runner_model::peft::load_adapter_file;
use runner_model::{Batch, CausalLm, load_folder};
use runner_recipe::plan::{LoraInit, TargetModules};
use std::path::PathBuf;

fn model(name: &str) -> CausalLm {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let mut model = load_folder(&dir, DType::F32, &Device::Cpu).expect("load fixture model");
    let lora: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lora.json")).unwrap()).unwrap();
    let targets = match &lora["target_modules"] {
        serde_json::Value::String(s) if s == "all-linear" => TargetModules::AllLinear,
        serde_json::Value::String(s) => TargetModules::Regex(s.clone()),
        serde_json::Value::Array(a) => {
            TargetModules::Names(a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        }
        other => panic!("bad target_modules {other}"),
    };
    let r = lora["r"].as_u64().unwrap() as usize;
    let alpha = lora["lora_alpha"].as_f64().unwrap();
    let s = LoraSettings {
        r,
        alpha,
        dropout: 0.0,
        scaling: if lora["use_rslora"].as_bool().unwrap() {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        },
        targets,
        init: LoraInit::Kaiming,
        use_dora: lora["use_dora"].as_bool().unwrap_or(false),
    };
    let adapters = inject_settings(&mut model, &s, 0).expect("inject");
    load_adapter_file(&adapters, &dir.join("lora.safetensors")).expect("adapter weights");
    model
}

fn ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 37 + 11) % (vocab - 3) + 3) as u32)
        .collect()
}

fn full_logits(m: &CausalLm, ids: &[u32]) -> Tensor {
    let t = ids.len();
    let batch = Batch::from_attention_mask(
        1,
        t,
        ids.to_vec(),
        &vec![1u8; t],
        ids.iter().map(|&i| i64::from(i)).collect(),
    )
    .unwrap();
    m.logits(&batch, false).unwrap().squeeze(0).unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-30)
}

#[test]
fn cached_decoding_matches_the_full_forward() {
    for name in [
        "tiny-llama",
        "tiny-llama-dora",
        "tiny-qwen3",
        "tiny-qwen2",
        "tiny-mistral",
        "tiny-qwen2-window",
    ] {
        let m = model(name);
        let seq = ids(13, m.cfg.vocab_size);
        let full = full_logits(&m, &seq);
        let mut cache = KvCache::new(&m);
        // Uneven chunks: a prompt, single tokens, then a chunk again.
        let mut parts = Vec::new();
        for range in [0..6, 6..7, 7..8, 8..11, 11..13] {
            parts.push(m.forward_cached(&seq[range], &mut cache).unwrap());
        }
        assert_eq!(cache.len(), 13);
        let cached = Tensor::cat(&parts, 0).unwrap();
        let err = rel_err(&cached, &full);
        assert!(
            err <= 1e-5,
            "{name}: cached vs full logits rel. error {err:e}"
        );

        // next_logits is the last row.
        let mut cache = KvCache::new(&m);
        let last = m.next_logits(&seq, &mut cache).unwrap();
        let err = rel_err(&last, &full.get(12).unwrap());
        assert!(err <= 1e-5, "{name}: next_logits rel. error {err:e}");
    }
}

#[test]
fn greedy_generation_is_the_argmax_of_the_full_forward() {
    let m = model("tiny-qwen2-window");
    let prompt = ids(5, m.cfg.vocab_size);
    let opts = GenerateOptions {
        max_new_tokens: 8,
        sampling: Sampling::Greedy,
        seed: 0,
        stop: vec![],
    };
    let mut streamed = Vec::new();
    let out = generate(&m, &prompt, &opts, |t| {
        streamed.push(t);
        Ok(())
    })
    .unwrap();
    assert_eq!(out, streamed);
    assert_eq!(out.len(), 8);
    let mut seq = prompt.clone();
    for &tok in &out {
        let logits = full_logits(&m, &seq);
        let last: Vec<f32> = logits.get(seq.len() - 1).unwrap().to_vec1().unwrap();
        let best = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        assert_eq!(tok, best);
        seq.push(tok);
    }
}

#[test]
fn generation_stops_at_a_stop_token_and_returns_it() {
    let m = model("tiny-llama");
    let prompt = ids(4, m.cfg.vocab_size);
    let greedy = GenerateOptions {
        max_new_tokens: 6,
        sampling: Sampling::Greedy,
        seed: 0,
        stop: vec![],
    };
    let all = generate(&m, &prompt, &greedy, |_| Ok(())).unwrap();
    let stop = all[2];
    let first = all.iter().position(|&t| t == stop).unwrap();
    let stopped = generate(
        &m,
        &prompt,
        &GenerateOptions {
            stop: vec![stop],
            ..greedy
        },
        |_| Ok(()),
    )
    .unwrap();
    assert_eq!(stopped, all[..=first]);
}

#[test]
fn sampling_is_deterministic_for_a_seed() {
    let m = model("tiny-qwen3");
    let prompt = ids(5, m.cfg.vocab_size);
    let opts = |seed| GenerateOptions {
        max_new_tokens: 24,
        sampling: Sampling::Sample {
            temperature: 1.5,
            top_k: Some(40),
            top_p: Some(0.95),
        },
        seed,
        stop: vec![],
    };
    let a = generate(&m, &prompt, &opts(7), |_| Ok(())).unwrap();
    let b = generate(&m, &prompt, &opts(7), |_| Ok(())).unwrap();
    let c = generate(&m, &prompt, &opts(8), |_| Ok(())).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed should give other tokens");
}

#[test]
fn top_k_one_and_tiny_top_p_are_greedy() {
    let logits = Tensor::new(&[0.1f32, 2.0, -1.0, 1.9, 0.0], &Device::Cpu).unwrap();
    for sampling in [
        Sampling::Sample {
            temperature: 1.0,
            top_k: Some(1),
            top_p: None,
        },
        Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: Some(1e-6),
        },
    ] {
        let mut s = Sampler::new(sampling, 3).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&logits).unwrap(), 1);
        }
    }
    // top_p = 0.6 keeps ids 1 and 3 (the mass before id 3 is ~0.45 < 0.6), never the others.
    let mut s = Sampler::new(
        Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.6),
        },
        3,
    )
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        seen.insert(s.sample(&logits).unwrap());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3]);
}

#[test]
fn bad_sampling_settings_are_errors() {
    for (t, k, p) in [
        (0.0, None, None),
        (-1.0, None, None),
        (1.0, Some(0), None),
        (1.0, None, Some(0.0)),
        (1.0, None, Some(1.5)),
    ] {
        let sampling = Sampling::Sample {
            temperature: t,
            top_k: k,
            top_p: p,
        };
        assert!(Sampler::new(sampling, 0).is_err(), "{sampling:?}");
    }
}
