//! The run manifest, `run.json`: what a run was built from, read and wrote, so that a recipe in
//! git plus the manifest pin a result and `runner reproduce` / `runner diff` can check it.
//! Written atomically into every output folder and every checkpoint. In an output folder it is
//! also the marker of a finished run: written with `status: running` before training writes
//! anything there, and rewritten last, `complete` or `partial`, when the run ends.

use crate::error::bail;
use crate::error::{Error, Result};
use crate::inputs::InputIds;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FILE: &str = "run.json";
/// The GPU model behind `device`, or `None` on the CPU (or when the driver cannot say).
pub fn gpu_model(device: &candle_core::Device) -> Option<String> {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => runner_kernels::device::gpu_memory(gpu_id)
            .ok()
            .map(|g| format!("{}, {:.1} GB", g.name, g.total as f64 / 1e9)),
        _ => None,
    }
}

/// Bumped when a field changes meaning.
pub const FORMAT: &str = "runner-run/1";

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub runner: Build,
    pub recipe: RecipeRecord,
    /// The resolved plan, as `plan.json` holds it.
    pub plan: serde_json::Value,
    /// The folder the run started in: relative paths in the plan are relative to it.
    pub working_dir: PathBuf,
    pub inputs: InputIds,
    pub prepared_data: Option<PreparedRecord>,
    pub seed: u64,
    pub world_size: usize,
    /// candle's device (`Cpu`, `Cuda { gpu_id: 0 }`) and the weights' dtype.
    pub device: String,
    /// The GPU's model and memory as its driver reports them (`NVIDIA H200, 150.0 GB`), on a
    /// GPU run; with the CPU model in [`Build`], the machine kind bit-identity is expected on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    pub dtype: String,
    /// Worker threads the numeric code could use (`RAYON_NUM_THREADS`, else the CPUs).
    pub threads: usize,
    /// Seconds per stage, in order.
    pub stages: Vec<StageTime>,
    pub outcome: Option<OutcomeRecord>,
    /// Every file the run wrote under its folder (relative paths), with content hashes;
    /// `run.json` itself excluded.
    pub files: Vec<WrittenFile>,
    /// Whether the folder's adapter is the run's result (see [`RunStatus`]); absent in
    /// manifests written before it existed ([`Manifest::status`] derives it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// The run the folder or checkpoint belongs to (`crate::outdir::run_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// What an output folder's adapter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The run started and has not ended (still training, or killed): nothing there is final.
    Running,
    /// Training finished (or stopped early on its evaluation loss): the adapter is the result.
    Complete,
    /// Training stopped before the end (interrupted, loss watchdog, non-finite loss): the
    /// adapter is the state at that step.
    Partial,
    /// A checkpoint's manifest: that step's state, chosen by name.
    Checkpoint,
}

/// The binary that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub version: String,
    /// The git commit it was built from (`-dirty` with uncommitted changes; `unknown` when
    /// built without git and without `RUNNER_GIT_COMMIT`).
    pub git_commit: String,
    pub features: Vec<String>,
    pub profile: String,
    pub target: String,
    /// The CPU model (`/proc/cpuinfo`), the machine kind bit-identity is expected on.
    pub cpu: String,
}

impl Build {
    pub fn current() -> Build {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Build {
            version: runner_recipe::VERSION.to_string(),
            git_commit: env!("RUNNER_GIT_COMMIT").to_string(),
            features: if cfg!(feature = "cuda") {
                vec!["cuda".into()]
            } else {
                Vec::new()
            },
            profile: env!("RUNNER_BUILD_PROFILE").to_string(),
            target: env!("RUNNER_BUILD_TARGET").to_string(),
            cpu,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeRecord {
    /// The recipe's file name as given on the command line.
    pub name: String,
    pub text: String,
    pub blake3: String,
    /// `--set` overrides, in order.
    pub overrides: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedRecord {
    pub cache_key: String,
    pub reused_cache: bool,
    /// `--skip-bad-rows`: rows that could not be read were skipped (and counted), so a rerun
    /// must skip them too to see the same data (issue 17).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_bad_rows: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// `finished`, `early_stopping`, `interrupted`, `watchdog`, `non_finite`.
    pub stop: String,
    pub steps: u64,
    pub final_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub tokens_per_second: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub size: u64,
    pub blake3: String,
}

/// Worker threads available to the numeric code.
pub fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl Manifest {
    /// Reads `dir/run.json` (or the file itself).
    pub fn read(path: &Path) -> Result<Manifest> {
        let file = if path.is_dir() {
            path.join(FILE)
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&file).map_err(|e| {
            Error::Refused(format!(
                "{}: {e} (is this the output folder of a `runner run`? it writes {FILE} there)",
                file.display()
            ))
        })?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Refused(format!("{}: not a run manifest: {e}", file.display())))?;
        if m.format != FORMAT {
            bail!(
                "{}: manifest format `{}`, this runner reads `{FORMAT}`",
                file.display(),
                m.format
            );
        }
        Ok(m)
    }

    /// The status, derived from the outcome for manifests written before `status` existed.
    pub fn status(&self) -> RunStatus {
        if let Some(s) = self.status {
            return s;
        }
        match &self.outcome {
            None => RunStatus::Checkpoint,
            Some(o) if o.stop == "finished" || o.stop == "early_stopping" => RunStatus::Complete,
            Some(_) => RunStatus::Partial,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Writes `dir/run.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        runner_io::atomic::write(&dir.join(FILE), &self.to_bytes())?;
        Ok(())
    }

    /// This manifest as a checkpoint's: `files` are the checkpoint's other files.
    pub fn for_checkpoint(&self, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut m = self.clone();
        m.status = Some(RunStatus::Checkpoint);
        m.files = files
            .iter()
            .map(|(name, bytes)| WrittenFile {
                path: PathBuf::from(name),
                size: bytes.len() as u64,
                blake3: runner_io::hash::bytes(bytes),
            })
            .collect();
        m.to_bytes()
    }
}

/// The files under `dir` written (modified) at or after `since`, as relative paths with
/// hashes, sorted; `run.json`, temporary files and `reproduce-*` folders left out. Files a
/// previous run left in the same folder are not this run's and are not listed.
pub fn written_files(dir: &Path, since: std::time::SystemTime) -> Result<Vec<WrittenFile>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with("reproduce-") {
                continue;
            }
            let md = entry.metadata()?;
            if md.is_dir() {
                stack.push(path);
                continue;
            }
            if path == dir.join(FILE) || md.modified()? < since {
                continue;
            }
            out.push(WrittenFile {
                path: path.strip_prefix(dir).unwrap_or(&path).to_path_buf(),
                size: md.len(),
                blake3: runner_io::hash::file(&path)?,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
