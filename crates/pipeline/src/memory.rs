//! The memory plan of a run: the device it is for (`--plan-device`, else the one the run
//! would use), the compute dtype there, the estimated peak of one training step by part (printed
//! by `--dry-run`), and the refusal of a micro-batch that cannot fit, before the model loads.

use crate::error::bail;
use crate::error::{Error, Result};
use runner_model::memory::{self, MemoryPlan, PlanDevice, PlanInput, gb};
use runner_model::precision::{ComputePrecision, DeviceKind, compute_precision};
use runner_recipe::plan::Plan;

/// The device a plan is for: the one `--plan-device` names, else the run's own (the CPU, or GPU
/// `gpu` as its driver reports it).
pub fn target(plan_device: Option<&str>, gpu: Option<usize>) -> Result<PlanDevice> {
    if let Some(text) = plan_device {
        let mut d = PlanDevice::parse(text).map_err(Error::Refused)?;
        if d.kind == DeviceKind::Cpu {
            d.available = available_memory();
            d.label = "the CPU (host memory available now)".into();
        }
        return Ok(d);
    }
    match gpu {
        None => Ok(PlanDevice {
            kind: DeviceKind::Cpu,
            label: "the CPU (host memory available now)".into(),
            available: available_memory(),
        }),
        Some(ordinal) => match runner_kernels::gpu_memory(ordinal) {
            Ok(m) => Ok(PlanDevice {
                kind: DeviceKind::Cuda,
                label: format!(
                    "GPU {ordinal}: {} ({:.1} GB, free now)",
                    m.name,
                    gb(m.total)
                ),
                available: Some(m.free),
            }),
            Err(e) => bail!(
                "{e}; to plan for a GPU this machine does not have, pass --plan-device with its \
                 name (h200, h100, a100-80, ...) or cuda:GB (e.g. cuda:24)"
            ),
        },
    }
}

/// The plan's inputs that come from the recipe and the model's configuration.
pub struct Estimate {
    pub precision: ComputePrecision,
    pub plan: MemoryPlan,
    /// The same step with `gradient_checkpointing` on, when the recipe has it off.
    pub with_checkpointing: Option<MemoryPlan>,
    pub micro_batch_size: usize,
    pub row: usize,
}

/// Estimates a step of `micro_batch_size` rows of `row` positions for `plan` on `device`,
/// from the model's configuration alone.
pub fn estimate(
    plan: &Plan,
    cfg: &runner_model::ModelConfig,
    adapter_params: usize,
    device: &PlanDevice,
    micro_batch_size: usize,
    row: usize,
) -> Result<Estimate> {
    let precision = compute_precision(plan.train.precision, plan.train.tf32, device.kind)
        .map_err(Error::Refused)?;
    let modules_to_save: Vec<String> = runner_model::lora::MODULES_TO_SAVE
        .iter()
        .filter(|m| {
            plan.adapter
                .modules_to_save
                .iter()
                .any(|w| *m == w || m.ends_with(&format!(".{w}")))
        })
        .map(|m| m.to_string())
        .collect();
    let input = |ckpt| PlanInput {
        cfg,
        adapter_params,
        modules_to_save: &modules_to_save,
        quant: plan.adapter.base_quant,
        dtype: precision.dtype,
        device: device.kind,
        micro_batch_size,
        row,
        gradient_checkpointing: ckpt,
        lora_dropout: plan.adapter.dropout > 0.0,
    };
    let ckpt = plan.train.gradient_checkpointing;
    Ok(Estimate {
        plan: memory::plan(&input(ckpt)),
        with_checkpointing: (!ckpt).then(|| memory::plan(&input(true))),
        precision,
        micro_batch_size,
        row,
    })
}

impl Estimate {
    /// The refusal when the step does not fit on `device`, with the figures and the fixes.
    pub fn refusal(&self, device: &PlanDevice) -> Option<String> {
        memory::refusal(
            &self.plan,
            device.available?,
            &device.label,
            self.micro_batch_size,
            self.row,
            self.with_checkpointing.as_ref(),
        )
    }

    /// What `--dry-run` prints.
    pub fn render(&self, plan: &Plan, device: &PlanDevice) -> String {
        let mut out = String::new();
        let quant = match plan.adapter.base_quant {
            runner_recipe::plan::BaseQuant::None => String::new(),
            runner_recipe::plan::BaseQuant::Nf4 => ", NF4 base".into(),
            runner_recipe::plan::BaseQuant::Int8 => ", int8 base".into(),
        };
        out.push_str(&format!(
            "memory plan for {}: {:?} weights and activations{quant}, micro_batch_size {} × {} \
             positions\n",
            device.label, self.precision.dtype, self.micro_batch_size, self.row
        ));
        for n in &self.precision.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out.push_str(&self.plan.to_string());
        match device.available {
            Some(a) => out.push_str(&format!(" of {:.1} GB available\n", gb(a))),
            None => out.push('\n'),
        }
        out
    }
}

/// What `runner run --dry-run` shows: the model stage's summary and the memory plan for the
/// device the run would use (or `plan_device`), from the configuration alone: the weights need
/// not be here. `gpus` is the recipe's data-parallel GPU count, if any. Returns the text to
/// print and, when the step cannot fit there, the refusal (the CLI exits 1 with it).
pub fn dry_run(
    plan: &Plan,
    plan_device: Option<&str>,
    gpus: Option<usize>,
) -> Result<(String, Option<String>)> {
    let model_plan = crate::inputs::materialized(&plan.model)?;
    let summary = runner_model::summarize(&model_plan, &plan.adapter)?;
    let mut out = format!("{summary}\n");
    // Data-parallel ranks each hold a whole replica: the plan of one GPU is the plan of each.
    let device = target(plan_device, gpus.map(|_| 0))?;
    let d = &plan.data;
    // Without packing or padding rows are as long as their longest sample: `sequence_len` is
    // the bound the data can reach.
    let row = d.sequence_len;
    let estimate = estimate(
        plan,
        &summary.cfg,
        summary.counts.trainable,
        &device,
        plan.train.micro_batch_size,
        row,
    )?;
    out.push_str(&estimate.render(plan, &device));
    if !(d.sample_packing || d.pad_to_sequence_len) {
        out.push_str("  (rows at their longest: sequence_len; shorter samples need less)\n");
    }
    if let Some(n) = gpus.filter(|&n| n > 1) {
        out.push_str(&format!(
            "  (per GPU: each of the {n} data-parallel ranks holds this)\n"
        ));
    }
    Ok((out, estimate.refusal(&device)))
}

/// Refuses a micro-batch whose training step cannot fit in the memory of this process's device
/// (host memory available, or the GPU's free memory), before the model loads: the alternative
/// is the kernel or the CUDA allocator killing the run mid-step.
pub fn step_fits(
    plan: &Plan,
    model_plan: &runner_recipe::plan::ModelPlan,
    data: &runner_data::Prepared,
    device: &candle_core::Device,
) -> Result<()> {
    let gpu = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
        _ => None,
    };
    let target = target(None, gpu)?;
    let summary = runner_model::summarize(model_plan, &plan.adapter)?;
    let (batch, row) = shape_of_data(plan, data);
    let estimate = estimate(
        plan,
        &summary.cfg,
        summary.counts.trainable,
        &target,
        batch,
        row,
    )?;
    match estimate.refusal(&target) {
        Some(message) => Err(Error::Refused(message)),
        None => Ok(()),
    }
}

/// The positions per row a run's micro-batches have: `sequence_len` when packing or padding to
/// it, else the longest sample (capped by `sequence_len`); and the rows in a micro-batch (at
/// most the rows there are).
pub fn shape_of_data(plan: &Plan, data: &runner_data::Prepared) -> (usize, usize) {
    let d = &plan.data;
    let longest = data.train.iter().map(|s| s.len()).max().unwrap_or(0);
    let row = if d.sample_packing || d.pad_to_sequence_len {
        d.sequence_len
    } else {
        longest.min(d.sequence_len)
    };
    let rows = match &data.train_packs {
        Some(packs) => packs.len(),
        None => data.train.len(),
    };
    (plan.train.micro_batch_size.min(rows.max(1)), row)
}

/// Memory this process may still use: `MemAvailable`, capped by the cgroup's limit.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    let mut avail = kb * 1024;
    let read = |f: &str| std::fs::read_to_string(f).ok()?.trim().parse::<u64>().ok();
    if let (Some(max), Some(cur)) = (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        avail = avail.min(max.saturating_sub(cur));
    }
    Some(avail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_device_names_gpus_and_refuses_unknown_ones() {
        let h200 = target(Some("h200"), None).unwrap();
        assert_eq!(h200.kind, DeviceKind::Cuda);
        assert_eq!(h200.available, Some(143_771 * 1024 * 1024));
        let any = target(Some("cuda:24"), None).unwrap();
        assert_eq!(any.available, Some(24_000_000_000));
        let e = target(Some("tpu"), None).unwrap_err().to_string();
        assert!(e.contains("h200") && e.contains("cuda:GB"), "{e}");
        assert!(available_memory().is_some_and(|b| b > 0));
        assert_eq!(target(Some("cpu"), None).unwrap().kind, DeviceKind::Cpu);
    }

    /// Without CUDA in the build, planning for "the GPU the run would use" says how to name one.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_plan_without_cuda_points_to_plan_device() {
        let e = target(None, Some(0)).unwrap_err().to_string();
        assert!(e.contains("--plan-device"), "{e}");
    }
}
