//! AdamW exactly as `torch.optim.AdamW` computes it (decoupled weight decay, bias correction,
//! per-parameter step counts), parameter groups with their own learning-rate scale (LoRA+),
//! global-norm gradient clipping as `torch.nn.utils.clip_grad_norm_`, and gradient
//! accumulation across micro-batches.

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
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

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
                        exp_avg: var.as_tensor().zeros_like()?,
                        exp_avg_sq: var.as_tensor().zeros_like()?,
                    },
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
                    (var.as_tensor() * (1.0 - lr * group.weight_decay))?
                } else {
                    var.as_tensor().clone()
                };
                let updated = (decayed - ((&exp_avg / &denom)? * step_size)?)?;
                var.set(&updated)?;
                self.state.insert(
                    name.clone(),
                    Moments {
                        step,
                        exp_avg,
                        exp_avg_sq,
                    },
                );
            }
        }
        Ok(())
    }

    /// The optimizer state as named tensors (`{param}.exp_avg`, `{param}.exp_avg_sq`) and the
    /// per-parameter step counts, for checkpoints.
    pub fn state(&self) -> (HashMap<String, Tensor>, HashMap<String, u64>) {
        let mut tensors = HashMap::new();
        let mut steps = HashMap::new();
        for (name, m) in &self.state {
            tensors.insert(format!("{name}.exp_avg"), m.exp_avg.clone());
            tensors.insert(format!("{name}.exp_avg_sq"), m.exp_avg_sq.clone());
            steps.insert(name.clone(), m.step);
        }
        (tensors, steps)
    }

    /// Restores what [`AdamW::state`] returned; every parameter with a step count must have
    /// both moments with its own shape.
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
                Ok(t.to_dtype(var.as_tensor().dtype())?)
            };
            state.insert(
                name.clone(),
                Moments {
                    step,
                    exp_avg: get("exp_avg")?,
                    exp_avg_sq: get("exp_avg_sq")?,
                },
            );
        }
        self.state = state;
        Ok(())
    }
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
