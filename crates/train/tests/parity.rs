//! Optimizer and schedule parity with PyTorch / transformers.
//! Fixtures: `python3 tools/train/make_fixtures.py` (torch.optim.AdamW, clip_grad_norm_,
//! transformers' get_*_schedule_with_warmup). Tolerance: 1e-6 relative on parameters (f32
//! arithmetic in a slightly different order), 1e-12 on learning rates (f64 both sides).

use candle_core::{Device, Tensor, Var};
use runner_recipe::plan::{Optimizer, Scheduler, SchedulerKind, Warmup};
use runner_train::optim::{AdamW, Grads, ParamGroup, clip_coefficient};
use runner_train::schedule::LrSchedule;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        _ => panic!("not numeric"),
    }
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs().max(1e-3);
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

/// # torch (tools/train/make_fixtures.py, adamw()):
/// opt = AdamW([{a, lr=1e-2, wd=0.01}, {b, lr=1.6e-1, wd=0}], betas=(0.9, 0.999), eps=1e-8)
/// sched = get_cosine_schedule_with_warmup(opt, 2, 6); clip_grad_norm_([a, b], 1.0) each step
#[test]
fn adamw_with_clipping_groups_and_cosine_matches_torch() {
    let f = fixture("adamw.json");
    let dev = Device::Cpu;
    let a = Var::from_tensor(
        &Tensor::new(flat(&f["init"]["a"]), &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap(),
    )
    .unwrap();
    let b = Var::from_tensor(&Tensor::new(flat(&f["init"]["b"]), &dev).unwrap()).unwrap();
    let groups = vec![
        ParamGroup {
            params: vec![("a".into(), a.clone())],
            lr_scale: 1.0,
            weight_decay: 0.01,
        },
        ParamGroup {
            params: vec![("b".into(), b.clone())],
            lr_scale: 16.0,
            weight_decay: 0.0,
        },
    ];
    let cfg = Optimizer {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.01,
    };
    let mut opt = AdamW::new(groups.clone(), &cfg).unwrap();
    let sched = LrSchedule::new(
        1e-2,
        &Scheduler {
            kind: SchedulerKind::Cosine,
            warmup: Warmup::Steps(2),
            cosine_min_lr_ratio: None,
        },
        6,
    );
    for (k, step) in f["steps"].as_array().unwrap().iter().enumerate() {
        let ga = Tensor::new(flat(&step["grad_a"]), &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let gb = Tensor::new(flat(&step["grad_b"]), &dev).unwrap();
        // Accumulate as two half micro-batches: the sum must equal the whole gradient.
        let mut grads = Grads::new();
        for half in [0.25, 0.75] {
            let loss = ((a.as_tensor() * ga.affine(half, 0.0).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                + (b.as_tensor() * gb.affine(half, 0.0).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap())
            .unwrap();
            grads
                .accumulate(&loss.backward().unwrap(), &groups)
                .unwrap();
        }
        let norm = grads.global_norm().unwrap();
        let want_norm = step["norm"].as_f64().unwrap();
        assert!(
            (norm - want_norm).abs() < 1e-5 * want_norm,
            "step {k}: norm {norm} vs {want_norm}"
        );
        let lr = sched.lr(k as u64);
        assert!(
            (lr - step["lr"].as_f64().unwrap()).abs() < 1e-12,
            "step {k}: lr"
        );
        opt.step(&grads, lr, clip_coefficient(norm, Some(1.0)))
            .unwrap();
        let got_a: Vec<f32> = a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let got_b: Vec<f32> = b.as_tensor().to_vec1().unwrap();
        assert_close(&got_a, &flat(&step["a"]), 1e-6, &format!("step {k} a"));
        assert_close(&got_b, &flat(&step["b"]), 1e-6, &format!("step {k} b"));
    }
}

#[test]
fn optimizer_state_round_trips() {
    let dev = Device::Cpu;
    let cfg = Optimizer {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.0,
    };
    let make = || {
        let v = Var::from_tensor(&Tensor::new(&[1f32, -2.0, 3.0], &dev).unwrap()).unwrap();
        let groups = vec![ParamGroup {
            params: vec![("p".into(), v.clone())],
            lr_scale: 1.0,
            weight_decay: 0.0,
        }];
        (v, groups)
    };
    let (v1, g1) = make();
    let mut opt1 = AdamW::new(g1.clone(), &cfg).unwrap();
    let step = |opt: &mut AdamW, v: &Var, groups: &[ParamGroup]| {
        let mut grads = Grads::new();
        let loss = v.as_tensor().sqr().unwrap().sum_all().unwrap();
        grads.accumulate(&loss.backward().unwrap(), groups).unwrap();
        opt.step(&grads, 0.1, 1.0).unwrap();
    };
    step(&mut opt1, &v1, &g1);
    let (tensors, steps) = opt1.state();
    // A resumed optimizer continues exactly like the original.
    let (v2, g2) = make();
    v2.set(v1.as_tensor()).unwrap();
    let mut opt2 = AdamW::new(g2.clone(), &cfg).unwrap();
    opt2.load_state(&tensors, &steps).unwrap();
    step(&mut opt1, &v1, &g1);
    step(&mut opt2, &v2, &g2);
    let a: Vec<f32> = v1.as_tensor().to_vec1().unwrap();
    let b: Vec<f32> = v2.as_tensor().to_vec1().unwrap();
    assert_eq!(a, b);
}

/// # transformers: get_{linear,cosine,cosine_with_min_lr(min_lr_rate=0.1),constant,
/// # constant_with_warmup}_schedule(_with_warmup)(opt, 3, 20), lr read before each step
#[test]
fn schedules_match_transformers() {
    let f = fixture("schedules.json");
    let total = f["total"].as_u64().unwrap();
    let warmup = f["warmup"].as_u64().unwrap();
    let peak = f["peak"].as_f64().unwrap();
    for (name, kind, min, w) in [
        ("linear", SchedulerKind::Linear, None, warmup),
        ("cosine", SchedulerKind::Cosine, None, warmup),
        ("cosine_min_0.1", SchedulerKind::Cosine, Some(0.1), warmup),
        ("constant", SchedulerKind::Constant, None, 0),
        (
            "constant_with_warmup",
            SchedulerKind::ConstantWithWarmup,
            None,
            warmup,
        ),
    ] {
        let s = LrSchedule::new(
            peak,
            &Scheduler {
                kind,
                warmup: Warmup::Steps(w),
                cosine_min_lr_ratio: min,
            },
            total,
        );
        for (k, want) in f["lrs"][name].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = s.lr(k as u64);
            assert!(
                (got - want).abs() <= 1e-12 * peak,
                "{name} step {k}: {got} vs {want}"
            );
        }
    }
}
