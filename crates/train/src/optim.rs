//! AdamW exactly as `torch.optim.AdamW` computes it (decoupled weight decay, bias correction,
//! per-parameter step counts), parameter groups with their own learning-rate scale (LoRA+),
//! global-norm gradient clipping as `torch.nn.utils.clip_grad_norm_`, and gradient
//! accumulation across micro-batches.
//!
//! Mixed precision as PyTorch AMP and PEFT do it (issue 12): the moments, the gradients and the
//! update are f32 whatever a parameter's dtype. LoRA factors are f32 masters already
//! (`runner_model::lora::ADAPTER_DTYPE`); a parameter held in a lower precision (the trainable
//! embedding / LM-head copies of `lora_modules_to_save` in a bf16 model) gets an f32 master copy
//! here, updated in f32 and written back rounded, so updates smaller than the parameter's bf16
//! spacing accumulate instead of vanishing.

use crate::error::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use runner_recipe::plan::Optimizer;
use std::collections::HashMap;

/// Trainable parameters that share a learning-rate scale and weight decay.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// (name, parameter); names are the saved (PEFT) names and key the optimizer state.
    pub params: Vec<(String, Var)>,
    /// Multiplier of the scheduled learning rate (LoRA+: `loraplus_lr_ratio` for B matrices).
    pub lr_scale: f64,
    pub weight_decay: f64,
}

#[derive(Debug)]
struct Moments {
    step: u64,
    /// f32, the parameter's shape.
    exp_avg: Tensor,
    /// f32, the parameter's shape.
    exp_avg_sq: Tensor,
    /// The f32 master copy of a parameter whose own dtype is not f32 (None for f32 ones).
    master: Option<Tensor>,
}

/// The dtype of optimizer state and of the update arithmetic.
pub const STATE_DTYPE: DType = DType::F32;

#[derive(Debug)]
pub struct AdamW {
    groups: Vec<ParamGroup>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    state: HashMap<String, Moments>,
}

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, cfg: &Optimizer) -> Result<Self, TrainError> {
        let mut seen = std::collections::HashSet::new();
        for g in &groups {
            for (name, _) in &g.params {
                if !seen.insert(name.clone()) {
                    return Err(TrainError::Optimizer(format!(
                        "parameter `{name}` is in two parameter groups"
                    )));
                }
            }
        }
        Ok(AdamW {
            groups,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.epsilon,
            state: HashMap::new(),
        })
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// One update at learning rate `lr` with gradients multiplied by `grad_scale` (the
    /// clipping coefficient). Parameters without a gradient are left alone, state included,
    /// as torch does.
    pub fn step(&mut self, grads: &Grads, lr: f64, grad_scale: f64) -> Result<(), TrainError> {
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        for group in &self.groups {
            let lr = lr * group.lr_scale;
            for (name, var) in &group.params {
                let Some(grad) = grads.get(name) else {
                    continue;
                };
                let grad = if grad_scale == 1.0 {
                    grad.clone()
                } else {
                    grad.affine(grad_scale, 0.0)?
                };
                let moments = match self.state.remove(name) {
                    Some(m) => m,
                    None => Moments {
                        step: 0,
                        exp_avg: Tensor::zeros(var.shape(), STATE_DTYPE, var.device())?,
                        exp_avg_sq: Tensor::zeros(var.shape(), STATE_DTYPE, var.device())?,
                        master: master_copy(var)?,
                    },
                };
                // Gradients arrive in f32 (`Grads::accumulate`); the cast is a no-op then.
                let grad = grad.to_dtype(STATE_DTYPE)?;
                let param = match &moments.master {
                    Some(m) => m.clone(),
                    None => var.as_tensor().clone(),
                };
                let step = moments.step + 1;
                // exp_avg.lerp_(grad, 1 - beta1)
                let exp_avg = (&moments.exp_avg + ((&grad - &moments.exp_avg)? * (1.0 - b1))?)?;
                // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                let exp_avg_sq = ((&moments.exp_avg_sq * b2)? + (grad.sqr()? * (1.0 - b2))?)?;
                let bias1 = 1.0 - b1.powi(step as i32);
                let bias2 = 1.0 - b2.powi(step as i32);
                let step_size = lr / bias1;
                let denom = ((exp_avg_sq.sqrt()? / bias2.sqrt())? + eps)?;
                let decayed = if group.weight_decay != 0.0 {
                    (&param * (1.0 - lr * group.weight_decay))?
                } else {
                    param
                };
                let updated = (decayed - ((&exp_avg / &denom)? * step_size)?)?;
                let master = match moments.master {
                    Some(_) => {
                        var.set(&updated.to_dtype(var.dtype())?)?;
                        Some(updated)
                    }
                    None => {
                        var.set(&updated)?;
                        None
                    }
                };
                self.state.insert(
                    name.clone(),
                    Moments {
                        step,
                        exp_avg,
                        exp_avg_sq,
                        master,
                    },
                );
            }
        }
        Ok(())
    }

    /// The optimizer state as named f32 tensors (`{param}.exp_avg`, `{param}.exp_avg_sq`, and
    /// `{param}.master` for a parameter held below f32) and the per-parameter step counts, for
    /// checkpoints.
    pub fn state(&self) -> (HashMap<String, Tensor>, HashMap<String, u64>) {
        let mut tensors = HashMap::new();
        let mut steps = HashMap::new();
        for (name, m) in &self.state {
            tensors.insert(format!("{name}.exp_avg"), m.exp_avg.clone());
            tensors.insert(format!("{name}.exp_avg_sq"), m.exp_avg_sq.clone());
            if let Some(master) = &m.master {
                tensors.insert(format!("{name}.master"), master.clone());
            }
            steps.insert(name.clone(), m.step);
        }
        (tensors, steps)
    }

    /// Restores what [`AdamW::state`] returned; every parameter with a step count must have
    /// both moments with its own shape. State saved in another dtype is read as f32; a
    /// parameter held below f32 takes its master from `{param}.master`, or from its current
    /// value when the checkpoint has none.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: &HashMap<String, u64>,
    ) -> Result<(), TrainError> {
        let shapes: HashMap<&str, &Var> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(n, v)| (n.as_str(), v)))
            .collect();
        let mut state = HashMap::new();
        for (name, &step) in steps {
            let var = shapes.get(name.as_str()).ok_or_else(|| {
                TrainError::Optimizer(format!(
                    "checkpoint has optimizer state for `{name}`, which is not a trainable parameter of this run"
                ))
            })?;
            let get = |suffix: &str| {
                let key = format!("{name}.{suffix}");
                let t = tensors.get(&key).ok_or_else(|| {
                    TrainError::Optimizer(format!("checkpoint optimizer state lacks `{key}`"))
                })?;
                if t.dims() != var.as_tensor().dims() {
                    return Err(TrainError::Optimizer(format!(
                        "checkpoint optimizer state `{key}` has shape {:?}, the parameter has {:?}",
                        t.dims(),
                        var.as_tensor().dims()
                    )));
                }
                Ok(t.to_dtype(STATE_DTYPE)?)
            };
            let master_key = format!("{name}.master");
            let master = match master_copy(var)? {
                Some(_) if tensors.contains_key(&master_key) => Some(get("master")?),
                other => other,
            };
            state.insert(
                name.clone(),
                Moments {
                    step,
                    exp_avg: get("exp_avg")?,
                    exp_avg_sq: get("exp_avg_sq")?,
                    master,
                },
            );
        }
        self.state = state;
        Ok(())
    }
}

/// An f32 copy of a parameter held in another dtype; None for an f32 parameter (it is its own
/// master).
fn master_copy(var: &Var) -> Result<Option<Tensor>, TrainError> {
    Ok(if var.dtype() == STATE_DTYPE {
        None
    } else {
        Some(var.as_tensor().to_dtype(STATE_DTYPE)?)
    })
}

/// Gradients by parameter name, summed over the micro-batches of one optimizer step.
#[derive(Debug, Default)]
pub struct Grads {
    sums: HashMap<String, Tensor>,
}

impl Grads {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.sums.get(name)
    }

    /// Adds one micro-batch's gradients. With each micro-batch loss defined as its summed
    /// token loss divided by the trained tokens of the whole step, the sum is the gradient of
    /// the step's mean token loss (not a mean of micro-batch means).
    pub fn accumulate(
        &mut self,
        store: &GradStore,
        groups: &[ParamGroup],
    ) -> Result<(), TrainError> {
        for group in groups {
            for (name, var) in &group.params {
                if let Some(g) = store.get(var.as_tensor()) {
                    let g = g.to_dtype(DType::F32)?;
                    let sum = match self.sums.remove(name) {
                        Some(prev) => (prev + g)?,
                        None => g,
                    };
                    self.sums.insert(name.clone(), sum);
                }
            }
        }
        Ok(())
    }

    /// The global L2 norm over every gradient, in f64.
    pub fn global_norm(&self) -> Result<f64, TrainError> {
        let mut total = 0f64;
        let mut names: Vec<&String> = self.sums.keys().collect();
        names.sort(); // a fixed order keeps the sum bit-for-bit reproducible
        for name in names {
            let sq = self.sums[name]
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
            total += sq;
        }
        Ok(total.sqrt())
    }

    pub fn clear(&mut self) {
        self.sums.clear();
    }

    /// Replaces a parameter's gradient (the data-parallel sum over ranks).
    pub(crate) fn set(&mut self, name: String, grad: Tensor) {
        self.sums.insert(name, grad);
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.sums.remove(name);
    }

    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }
}

/// The factor `clip_grad_norm_` multiplies gradients by: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_coefficient(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) => (max / (norm + 1e-6)).min(1.0),
        None => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn adamw(var: &Var, lr_scale: f64) -> AdamW {
        let groups = vec![ParamGroup {
            params: vec![("p".to_string(), var.clone())],
            lr_scale,
            weight_decay: 0.0,
        }];
        let cfg = Optimizer {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        };
        AdamW::new(groups, &cfg).unwrap()
    }

    fn grads_of(value: f32, n: usize) -> Grads {
        let mut g = Grads::new();
        g.set(
            "p".into(),
            Tensor::full(value, n, &Device::Cpu).unwrap(), // f32, as `accumulate` leaves it
        );
        g
    }

    /// Issue 12: a bf16 parameter used to get bf16 moments (`zeros_like`) while the gradients
    /// are f32, and the first step failed candle's dtype check. The state is f32 now.
    #[test]
    fn issue_12_bf16_parameters_step_with_f32_gradients_and_f32_state() {
        let var = Var::from_tensor(
            &Tensor::new(&[0.5f32, -0.25, 1.0], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let mut opt = adamw(&var, 1.0);
        opt.step(&grads_of(0.1, 3), 1e-2, 1.0).expect("a bf16 step");
        assert_eq!(var.dtype(), DType::BF16, "the parameter keeps its dtype");
        let (tensors, steps) = opt.state();
        assert_eq!(steps["p"], 1);
        for key in ["p.exp_avg", "p.exp_avg_sq", "p.master"] {
            assert_eq!(tensors[key].dtype(), DType::F32, "{key}");
        }
        // torch: the first AdamW step moves every element by lr·sign(g) (bias-corrected).
        let master: Vec<f32> = tensors["p.master"].to_vec1().unwrap();
        for (m, p0) in master.iter().zip([0.5f32, -0.25, 1.0]) {
            assert!((m - (p0 - 1e-2)).abs() < 1e-6, "{m} vs {}", p0 - 1e-2);
        }
    }

    /// Issue 12's numerics: with exp_avg_sq at 1.0 and 3000 steps of g² = 0.25, torch's f32
    /// state reaches 0.25 + 0.75·0.999³⁰⁰⁰ = 0.2873 (bf16 state stays at 1.0: 0.999 rounds to 1
    /// in bf16). The parameter is bf16; its state must behave as f32.
    #[test]
    fn issue_12_exp_avg_sq_of_a_bf16_parameter_decays_as_in_f32() {
        let var = Var::from_tensor(&Tensor::zeros(4, DType::BF16, &Device::Cpu).unwrap()).unwrap();
        let mut opt = adamw(&var, 1.0);
        let mut tensors = HashMap::new();
        tensors.insert(
            "p.exp_avg".to_string(),
            Tensor::zeros(4, DType::BF16, &Device::Cpu).unwrap(),
        );
        // Saved in bf16 by an older run: read back as f32.
        tensors.insert(
            "p.exp_avg_sq".to_string(),
            Tensor::ones(4, DType::BF16, &Device::Cpu).unwrap(),
        );
        opt.load_state(&tensors, &HashMap::from([("p".to_string(), 1u64)]))
            .unwrap();
        let g = grads_of(0.5, 4);
        for _ in 0..3000 {
            opt.step(&g, 0.0, 1.0).unwrap();
        }
        let got: Vec<f32> = opt.state().0["p.exp_avg_sq"].to_vec1().unwrap();
        let want = 0.25 + 0.75 * 0.999f64.powi(3000); // computed in f64: 0.287317...
        assert!((want - 0.2873).abs() < 1e-4);
        // f32 rounding over 3000 recursive updates moves the last digits (1.3e-5 here); bf16
        // state would still read 1.0.
        for v in got {
            assert!((v as f64 - want).abs() < 1e-4, "{v} vs {want}");
        }
    }

    /// Issue 12: a bf16 weight of 0.01 receiving −2.9e-5 updates never moves in pure bf16
    /// (half its spacing there is 3.05e-5); through the f32 master it moves by the sum.
    #[test]
    fn issue_12_small_updates_accumulate_in_the_f32_master() {
        // x rounded to bf16 (candle's cast), read back as f32.
        let bf16 = |x: f64| -> f32 {
            Tensor::new(&[x as f32], &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.to_vec1())
                .unwrap()[0]
        };
        let p0 = bf16(0.01);
        // The independent check that pure bf16 loses the update.
        assert_eq!(bf16(p0 as f64 - 2.9e-5), p0);
        let var = Var::from_tensor(
            &Tensor::new(&[0.01f32], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let mut opt = adamw(&var, 1.0);
        // A constant gradient: every AdamW step moves by lr (up to eps).
        let g = grads_of(1.0, 1);
        for _ in 0..100 {
            opt.step(&g, 2.9e-5, 1.0).unwrap();
        }
        let want = p0 as f64 - 100.0 * 2.9e-5;
        let master: Vec<f32> = opt.state().0["p.master"].to_vec1().unwrap();
        assert!((master[0] as f64 - want).abs() < 1e-6, "{}", master[0]);
        let seen: Vec<f32> = var.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        assert_eq!(seen[0], bf16(master[0] as f64));
        assert!(seen[0] < 0.0075, "the bf16 parameter moved: {}", seen[0]);
    }
}
