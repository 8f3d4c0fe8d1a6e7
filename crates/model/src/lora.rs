//! LoRA as PEFT does it: which linear layers get adapters, how A and B start, the trainable
//! parameters under PEFT's names, and `print_trainable_parameters()`'s line.

use crate::error::{Error, Result};
use crate::llama::CausalLm;
use crate::nn::{LoraAdapter, normal, shared_rng};
use candle_core::{Tensor, Var};
use rand::{Rng, SeedableRng};
use runner_recipe::plan::{AdapterPlan, LoraInit, TargetModules};

// The PEFT format (files, reading adapters back) lives in `crate::peft`, above this module;
// `crate::load::inject` puts a plan's adapters on a model.

/// The prefix PEFT's `PeftModelForCausalLM` puts before module names: the trainable
/// parameters are named as PEFT saves them.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Names of the modules the targets select, in model order. `names` are all linear layers'
/// module names (`lm_head` included). Every list entry must match at least one module.
pub fn select_targets(names: &[String], targets: &TargetModules) -> Result<Vec<String>> {
    match targets {
        TargetModules::AllLinear => Ok(names.iter().filter(|n| *n != "lm_head").cloned().collect()),
        TargetModules::Names(list) => {
            let matches = |n: &str, t: &str| n == t || n.ends_with(&format!(".{t}"));
            for t in list {
                if !names.iter().any(|n| matches(n, t)) {
                    let mut leaves: Vec<&str> = names
                        .iter()
                        .map(|n| n.rsplit('.').next().unwrap_or(n))
                        .collect();
                    leaves.sort();
                    leaves.dedup();
                    return Err(Error::TargetNotFound {
                        target: t.clone(),
                        hint: format!("; the linear layers are named {}", leaves.join(", ")),
                    });
                }
            }
            Ok(names
                .iter()
                .filter(|n| list.iter().any(|t| matches(n, t)))
                .cloned()
                .collect())
        }
        TargetModules::Regex(pattern) => {
            let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                Error::BadTargetRegex {
                    pattern: pattern.clone(),
                    message: e.to_string(),
                }
            })?;
            let sel: Vec<String> = names.iter().filter(|n| re.is_match(n)).cloned().collect();
            if sel.is_empty() {
                return Err(Error::TargetNotFound {
                    target: pattern.clone(),
                    hint: format!(
                        " (the regex must match the whole name, e.g. `{}`)",
                        names.first().map(String::as_str).unwrap_or("")
                    ),
                });
            }
            Ok(sel)
        }
    }
}

/// Adapter settings, as resolved from the recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub scaling: f64,
    pub targets: TargetModules,
    pub init: LoraInit,
    /// DoRA: a trainable per-output-row magnitude on top of the LoRA update.
    pub use_dora: bool,
}

impl LoraSettings {
    /// Checks that the plan asks only for what this stage implements.
    pub fn from_plan(plan: &AdapterPlan) -> Result<Self> {
        if plan.r == 0 {
            return Err(Error::Adapter("lora_r must be positive".into()));
        }
        Ok(Self {
            r: plan.r,
            alpha: plan.alpha,
            dropout: plan.dropout,
            scaling: plan.scaling,
            targets: plan.targets.clone(),
            init: plan.init,
            use_dora: plan.use_dora,
        })
    }
}

/// What [`inject`] did.
#[derive(Debug, Clone)]
pub struct Adapters {
    /// Targeted module names, in model order.
    pub modules: Vec<String>,
    /// `(PEFT name, parameter)`: `lora_A` then `lora_B` (and the DoRA magnitude) for each
    /// module, then the trainable copies of `lora_modules_to_save` (`....weight`).
    pub params: Vec<(String, Var)>,
    pub r: usize,
    pub scaling: f64,
    /// Modules trained fully (`lora_modules_to_save`), e.g. `model.embed_tokens`, `lm_head`.
    pub modules_to_save: Vec<String>,
    /// PiSSA: the initial `lora_A` / `lora_B` (PEFT names), kept to convert the trained
    /// adapter to a plain LoRA of the original base ([`Adapters::pissa_as_lora`]).
    pub pissa_initial: Vec<(String, Tensor)>,
}

impl Adapters {
    /// LoRA+ learning-rate multiplier of a parameter: B matrices and 1-D adapter parameters
    /// (DoRA magnitudes) train at `lr · ratio`, A matrices at `lr`.
    pub fn loraplus_multiplier(name: &str, ratio: Option<f64>) -> f64 {
        match ratio {
            Some(r)
                if name.ends_with(".lora_B.weight") || name.ends_with(".lora_magnitude_vector") =>
            {
                r
            }
            _ => 1.0,
        }
    }

    /// A trained PiSSA adapter as a plain LoRA of the original (not residual) base, as PEFT's
    /// `save_pretrained(path_initial_model_for_weight_conversion=...)` converts it:
    /// `ΔW = s·(B·A − B₀·A₀) = s·[B | −B₀]·[A ; A₀]`, so rank 2r with the same scaling (the
    /// caller doubles `lora_alpha`, or multiplies it by √2 under rsLoRA). Other parameters
    /// (module-to-save copies) are kept as they are. `None` when this is not a PiSSA adapter.
    pub fn pissa_as_lora(&self) -> Result<Option<Adapters>> {
        if self.pissa_initial.is_empty() {
            return Ok(None);
        }
        let initial: std::collections::HashMap<&str, &Tensor> = self
            .pissa_initial
            .iter()
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        let mut params = Vec::with_capacity(self.params.len());
        for (name, var) in &self.params {
            let t = var.as_tensor();
            let converted = match initial.get(name.as_str()) {
                Some(t0) if name.ends_with(".lora_A.weight") => Tensor::cat(&[t, *t0], 0)?,
                Some(t0) => Tensor::cat(&[t, &t0.neg()?], 1)?,
                None if name.ends_with(".lora_magnitude_vector") => {
                    return Err(Error::Adapter(
                        "a PiSSA adapter with DoRA magnitudes cannot be converted to LoRA".into(),
                    ));
                }
                None => t.clone(),
            };
            params.push((name.clone(), Var::from_tensor(&converted)?));
        }
        Ok(Some(Adapters {
            modules: self.modules.clone(),
            params,
            r: 2 * self.r,
            scaling: self.scaling,
            modules_to_save: self.modules_to_save.clone(),
            pissa_initial: Vec::new(),
        }))
    }

    /// Total number of adapter parameters.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// The dtype of adapter master weights (LoRA A/B, DoRA magnitudes): f32 whatever the base's
/// dtype, as PEFT keeps them (`get_peft_model(..., autocast_adapter_dtype=True)`, its default,
/// upcasts bf16/fp16 adapters to f32). Under `bf16` the frozen base and the activations are
/// bf16 and the LoRA op (`ops::lora_linear`, and the composed DoRA path in `nn`) casts the
/// adapter to the compute dtype in the forward; the
/// gradients, the optimizer moments and the saved adapter stay f32 (pure-bf16 Adam state does
/// not move: issue 12).
pub const ADAPTER_DTYPE: candle_core::DType = candle_core::DType::F32;

/// Puts a fresh adapter on every targeted linear layer. The seed fixes A's initialisation and
/// the dropout masks.
pub fn inject_settings(model: &mut CausalLm, s: &LoraSettings, seed: u64) -> Result<Adapters> {
    let names: Vec<String> = model.linears().iter().map(|l| l.name.clone()).collect();
    let selected: std::collections::HashSet<String> =
        select_targets(&names, &s.targets)?.into_iter().collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dropout_rng = shared_rng(seed ^ 0x5eed_d20f_0a7e);
    let mut params = Vec::new();
    let mut modules = Vec::new();
    let mut pissa_initial = Vec::new();
    for lin in model.linears_mut() {
        if !selected.contains(&lin.name) {
            continue;
        }
        if lin.lora.is_some() {
            return Err(Error::Adapter(format!(
                "{} already has an adapter",
                lin.name
            )));
        }
        let (din, dout) = (lin.in_features(), lin.out_features());
        let dev = lin.weight.device().clone();
        let (a, b) = match s.init {
            LoraInit::Kaiming | LoraInit::Gaussian => {
                let a_vals: Vec<f32> = if s.init == LoraInit::Kaiming {
                    // torch.nn.init.kaiming_uniform_(a=sqrt(5)): gain = sqrt(2/(1+a²)),
                    // bound = sqrt(3)·gain/sqrt(fan_in) = 1/sqrt(fan_in).
                    let gain = (2.0f64 / (1.0 + 5.0)).sqrt();
                    let bound = 3f64.sqrt() * gain / (din as f64).sqrt();
                    (0..s.r * din)
                        .map(|_| rng.random_range(-bound..bound) as f32)
                        .collect()
                } else {
                    // PEFT: nn.init.normal_(lora_A.weight, std=1 / r)
                    let std = 1.0 / s.r as f64;
                    (0..s.r * din)
                        .map(|_| (normal(&mut rng) * std) as f32)
                        .collect()
                };
                // Master weights in f32 whatever the base's dtype, as PEFT's
                // `autocast_adapter_dtype=True` keeps them (see [`ADAPTER_DTYPE`]).
                let a = Tensor::from_vec(a_vals, (s.r, din), &dev)?;
                let b = Tensor::zeros((dout, s.r), ADAPTER_DTYPE, &dev)?;
                (a, b)
            }
            LoraInit::Pissa { niter } => {
                if lin.quant.is_some() {
                    return Err(Error::Adapter(format!(
                        "{}: PiSSA must run before the base is quantized",
                        lin.name
                    )));
                }
                let (a, b, residual) = crate::pissa::pissa_factors(
                    &lin.weight,
                    s.r,
                    s.scaling,
                    niter,
                    seed ^ (modules.len() as u64).wrapping_mul(0x9E37_79B9),
                )
                .map_err(|e| Error::Adapter(format!("{}: {e}", lin.name)))?;
                lin.weight = residual;
                let (a, b) = (a.to_dtype(ADAPTER_DTYPE)?, b.to_dtype(ADAPTER_DTYPE)?);
                for (which, t) in [("lora_A", &a), ("lora_B", &b)] {
                    pissa_initial.push((
                        format!("{PEFT_PREFIX}{}.{which}.weight", lin.name),
                        t.copy()?,
                    ));
                }
                (a, b)
            }
        };
        let (a, b) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
        params.push((
            format!("{PEFT_PREFIX}{}.lora_A.weight", lin.name),
            a.clone(),
        ));
        params.push((
            format!("{PEFT_PREFIX}{}.lora_B.weight", lin.name),
            b.clone(),
        ));
        let magnitude = if s.use_dora {
            // PEFT: m = ||W + s·BA||_row at initialisation (= ||W||_row, B being zero).
            let m = crate::nn::dora_row_norm(
                &lin.dense_weight()?.to_dtype(ADAPTER_DTYPE)?,
                a.as_tensor(),
                b.as_tensor(),
                s.scaling,
            )?;
            let m = Var::from_tensor(&m)?;
            // PEFT saves it as `...lora_magnitude_vector` (no `.weight`).
            params.push((
                format!("{PEFT_PREFIX}{}.lora_magnitude_vector", lin.name),
                m.clone(),
            ));
            Some(m)
        } else {
            None
        };
        modules.push(lin.name.clone());
        lin.lora = Some(LoraAdapter {
            a,
            b,
            magnitude,
            scale: s.scaling,
            dropout: s.dropout,
            rng: dropout_rng.clone(),
        });
    }
    Ok(Adapters {
        modules,
        params,
        r: s.r,
        scaling: s.scaling,
        modules_to_save: Vec::new(),
        pissa_initial,
    })
}

/// The modules `lora_modules_to_save` can name: the token embeddings and the LM head.
pub const MODULES_TO_SAVE: [&str; 2] = ["model.embed_tokens", "lm_head"];

/// `lora_modules_to_save` as PEFT's `ModulesToSaveWrapper`: each named module gets a trainable
/// copy of its weight (saved as `base_model.model.<module>.weight`), which the forward pass
/// uses instead of the frozen original. Names match as PEFT matches them, by the end of the
/// module name (`embed_tokens` selects `model.embed_tokens`).
///
/// Tied embeddings (SmolLM2, Qwen3 small models): PEFT's default (`ensure_weight_tying:
/// false`, the only behaviour Axolotl exposes) wraps each named module separately, so the tie
/// is broken: `embed_tokens` alone trains the input embeddings while the LM head keeps the
/// frozen original; both names give two independent copies, both saved. We do the same, so
/// an adapter trained here behaves identically under `PeftModel.from_pretrained`.
pub fn add_modules_to_save(
    model: &mut CausalLm,
    adapters: &mut Adapters,
    wanted: &[String],
) -> Result<()> {
    for w in wanted {
        let hits: Vec<&str> = MODULES_TO_SAVE
            .iter()
            .copied()
            .filter(|m| *m == w || m.ends_with(&format!(".{w}")))
            .collect();
        if hits.is_empty() {
            return Err(Error::Adapter(format!(
                "lora_modules_to_save: `{w}` is not a module this engine can train fully; \
                 use embed_tokens and/or lm_head"
            )));
        }
    }
    for module in MODULES_TO_SAVE {
        let chosen = wanted
            .iter()
            .any(|w| module == w || module.ends_with(&format!(".{w}")));
        if !chosen {
            continue;
        }
        let name = format!("{PEFT_PREFIX}{module}.weight");
        if adapters.params.iter().any(|(n, _)| *n == name) {
            continue; // listed twice (`embed_tokens` and `model.embed_tokens`)
        }
        let var = if module == "lm_head" {
            if model.lm_head.lora.is_some() {
                return Err(Error::Adapter(
                    "lm_head is both a LoRA target and in lora_modules_to_save; choose one".into(),
                ));
            }
            // `Var::from_tensor` copies: with tied embeddings the input embeddings keep the
            // original tensor.
            let v = Var::from_tensor(&model.lm_head.weight)?;
            model.lm_head.weight = v.as_tensor().clone();
            v
        } else {
            let v = Var::from_tensor(&model.embed_tokens)?;
            model.embed_tokens = v.as_tensor().clone();
            v
        };
        adapters.params.push((name, var));
        adapters.modules_to_save.push(module.to_string());
    }
    Ok(())
}

/// Trainable and total parameter counts, as PEFT's `get_nb_trainable_parameters()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    pub trainable: usize,
    pub all: usize,
}

impl ParamCounts {
    pub fn of(model: &CausalLm, adapters: &Adapters) -> Self {
        let trainable: usize = adapters.params.iter().map(|(_, v)| v.elem_count()).sum();
        Self {
            trainable,
            all: model.base_param_count() + trainable,
        }
    }
}

impl std::fmt::Display for ParamCounts {
    /// `trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330`, as PEFT prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = if self.all == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.all as f64
        };
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            thousands(self.trainable),
            thousands(self.all)
        )
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.0.mlp.down_proj",
            "lm_head",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn list_regex_all_linear() {
        let n = names();
        let l = select_targets(
            &n,
            &TargetModules::Names(vec!["q_proj".into(), "lm_head".into()]),
        )
        .unwrap();
        assert_eq!(l, vec!["model.layers.0.self_attn.q_proj", "lm_head"]);
        let r = select_targets(&n, &TargetModules::Regex(r".*\.(q|v)_proj".into())).unwrap();
        assert_eq!(r.len(), 2);
        // fullmatch: `q_proj` alone matches nothing as a regex
        assert!(select_targets(&n, &TargetModules::Regex("q_proj".into())).is_err());
        let a = select_targets(&n, &TargetModules::AllLinear).unwrap();
        assert_eq!(a.len(), 3);
        // suffix must be a whole component
        let e = select_targets(&n, &TargetModules::Names(vec!["proj".into()])).unwrap_err();
        assert!(e.to_string().contains("`proj`"), "{e}");
    }

    #[test]
    fn loraplus_groups() {
        let m = |n: &str| Adapters::loraplus_multiplier(n, Some(16.0));
        assert_eq!(
            m("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            1.0
        );
        assert_eq!(
            m("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"),
            16.0
        );
        assert_eq!(
            m("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"),
            16.0
        );
        assert_eq!(Adapters::loraplus_multiplier("x.lora_B.weight", None), 1.0);
    }

    #[test]
    fn peft_formatting() {
        let c = ParamCounts {
            trainable: 4_884_480,
            all: 139_399_488,
        };
        assert_eq!(
            c.to_string(),
            "trainable params: 4,884,480 || all params: 139,399,488 || trainable%: 3.5039"
        );
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
