//! Which run an output folder belongs to, and what a new run may do with it. A folder holds
//! one run: a run refuses a folder that holds another (different recipe, plan or inputs, as
//! its `run.json` and checkpoints record them) unless it resumes that run or `--overwrite`
//! clears it first; resuming refuses any change that alters what is trained unless
//! `--allow-changed`, listing each difference. Also the check that an adapter folder holds a
//! finished run's adapter before `generate`, `export-gguf`, `merge` or `eval` use it.

use crate::error::bail;
use crate::error::{Context, Result};
use crate::inputs::InputIds;
use crate::manifest::{self, Manifest, RunStatus};
use runner_recipe::plan::{Plan, Resume};
use runner_train::checkpoint;
use std::path::{Path, PathBuf};

/// Plan keys that do not change what is trained: where and how often the run writes, logs,
/// evaluates and saves, when it stops early, what it exports afterwards, where the prepared
/// data is cached. Any other key (schedule, learning rate, data, sequence length, model,
/// adapter shape, seed, precision) does.
const NOT_TRAJECTORY: &[&str] = &[
    "train.output_dir",
    "train.resume",
    "train.logging_steps",
    "train.tensorboard",
    "train.eval",
    "train.eval_batch_size",
    "train.save",
    "train.early_stopping_patience",
    "train.loss_watchdog",
    "export",
    "substitutions",
    "data.prepared_path",
    "data.processes",
    // Its files are compared by content (`inputs.adapter_init`).
    "adapter.init_from",
];

/// Files a run writes into its folder: any of them (or a checkpoint) means the folder holds
/// a run.
const RUN_FILES: &[&str] = &[
    manifest::FILE,
    runner_model::peft::WEIGHTS_FILE,
    runner_model::peft::CONFIG_FILE,
    "metrics.jsonl",
    "loss.svg",
];

/// The plan as JSON without the keys that do not change what is trained.
fn trajectory(plan: &serde_json::Value) -> serde_json::Value {
    let mut v = plan.clone();
    for key in NOT_TRAJECTORY {
        let (parent, leaf) = match key.rsplit_once('.') {
            Some((p, l)) => (Some(p), l),
            None => (None, *key),
        };
        let obj = match parent {
            Some(p) => v.get_mut(p).and_then(|x| x.as_object_mut()),
            None => v.as_object_mut(),
        };
        if let Some(o) = obj {
            o.remove(leaf);
        }
    }
    v
}

/// The identity of a run: a hash of what it trains (the plan without [`NOT_TRAJECTORY`]) and
/// of its inputs' contents (model files by name, data, tokenizer, chat template, initial
/// adapter). Two runs with the same id train the same steps.
pub fn run_id(plan: &serde_json::Value, ids: &InputIds) -> String {
    let model: Vec<(String, &str)> = ids
        .model_files
        .iter()
        .map(|f| {
            let name = f.path.file_name().map(|n| n.to_string_lossy().into_owned());
            (name.unwrap_or_default(), f.blake3.as_str())
        })
        .collect();
    let data: Vec<(&str, Vec<&str>)> = ids
        .data
        .iter()
        .map(|d| {
            let files = d.files.iter().map(|f| f.blake3.as_str()).collect();
            (d.dataset.as_str(), files)
        })
        .collect();
    let adapter: Vec<&str> = ids.adapter_init.iter().map(|f| f.blake3.as_str()).collect();
    let key = serde_json::json!({
        "plan": trajectory(plan),
        "model": model,
        "data": data,
        "tokenizer": ids.tokenizer.fingerprint,
        "chat_template": ids.chat_template,
        "adapter_init": adapter,
    });
    let hash = runner_io::hash::bytes(key.to_string().as_bytes());
    hash[..16].to_string()
}

/// What changes what is trained between a recorded run (its plan, and its inputs when it
/// recorded them) and this one, one line per difference.
pub fn differences(
    recorded_plan: &serde_json::Value,
    recorded_ids: Option<&InputIds>,
    plan: &serde_json::Value,
    ids: &InputIds,
) -> Vec<String> {
    let mut out: Vec<String> =
        crate::reproduce::json_differences(&trajectory(recorded_plan), &trajectory(plan))
            .into_iter()
            .map(|(key, a, b)| format!("`{key}`: {a} → {b}"))
            .collect();
    if let Some(rec) = recorded_ids {
        out.extend(crate::reproduce::id_differences(rec, ids));
    }
    out
}

/// What `runner run` may do with its output folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct FolderFlags {
    /// `--overwrite`: clear a folder that holds another run (or this one) and start afresh.
    pub overwrite: bool,
    /// `--allow-changed`: resume although the recipe changed what is trained.
    pub allow_changed: bool,
}

/// The decision for a run's output folder.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The checkpoint training continues from (`None`: from the first step).
    pub resume: Option<PathBuf>,
    /// This run's identity ([`run_id`]), recorded in its manifest and checkpoints.
    pub run_id: String,
    /// Clear the folder first (`--overwrite` on a folder that holds a run).
    pub clear: bool,
    /// What the user should read (changes accepted with `--allow-changed`, a restart).
    pub notes: Vec<String>,
}

/// What a folder holds.
struct Held {
    manifest: Option<Manifest>,
    /// Why a run.json there could not be read (another runner's format, damaged).
    unreadable: Option<String>,
    checkpoints: Vec<(u64, PathBuf)>,
    files: Vec<&'static str>,
}

impl Held {
    fn read(dir: &Path) -> Result<Held> {
        let (manifest, unreadable) = match dir.join(manifest::FILE).is_file() {
            true => match Manifest::read(dir) {
                Ok(m) => (Some(m), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            },
            false => (None, None),
        };
        Ok(Held {
            manifest,
            unreadable,
            checkpoints: checkpoint::list(dir)?,
            files: RUN_FILES
                .iter()
                .copied()
                .filter(|f| dir.join(f).exists())
                .collect(),
        })
    }

    fn any(&self) -> bool {
        !self.files.is_empty() || !self.checkpoints.is_empty()
    }

    /// One line saying what the folder holds.
    fn describe(&self, dir: &Path) -> String {
        let newest = self.checkpoints.last().map_or(String::new(), |(_, p)| {
            format!("; newest checkpoint {}", p.display())
        });
        let Some(m) = &self.manifest else {
            let why = match &self.unreadable {
                Some(e) => format!("a run.json this runner cannot read ({e})"),
                None => "no run.json".to_string(),
            };
            return format!(
                "{} holds the files of a run ({}) with {why}{newest}",
                dir.display(),
                self.files.join(", ")
            );
        };
        let recipe = &m.recipe.name;
        let what = match (m.status(), &m.outcome) {
            (RunStatus::Complete, Some(o)) => format!("a complete run ({} steps)", o.steps),
            (RunStatus::Partial, Some(o)) => {
                format!("a partial run ({} at step {})", o.stop, o.steps)
            }
            _ => "a run that did not finish (killed, or still running)".to_string(),
        };
        format!("{} holds {what} of {recipe}{newest}", dir.display())
    }
}

/// `a` and `b` name the same folder.
fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| {
        p.canonicalize()
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    norm(a) == norm(b)
}

/// The recorded plan and inputs of a checkpoint: its `plan.json`, and its `run.json` when the
/// pipeline wrote one.
fn checkpoint_record(dir: &Path) -> Result<(serde_json::Value, Option<InputIds>)> {
    let file = dir.join("plan.json");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read the checkpoint's plan", file.display()))?;
    let plan = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a plan written by runner", file.display()))?;
    let ids = match dir.join(manifest::FILE).is_file() {
        true => Some(Manifest::read(dir)?.inputs),
        false => None,
    };
    Ok((plan, ids))
}

/// Decides what the run does with `plan.train.output_dir` (reads only; [`prepare`] acts).
pub fn claim(plan: &Plan, ids: &InputIds, flags: FolderFlags) -> Result<Claim> {
    let out_dir = &plan.train.output_dir;
    let plan_json = serde_json::to_value(plan)?;
    let id = run_id(&plan_json, ids);
    let held = Held::read(out_dir)?;
    let mut notes = Vec::new();
    let explicit = match &plan.train.resume {
        Resume::From(d) => Some(d.clone()),
        _ => None,
    };
    if flags.overwrite {
        if let Some(d) = &explicit
            && d.parent().is_some_and(|p| same_dir(p, out_dir))
        {
            bail!(
                "--overwrite would delete {}, the checkpoint resume_from_checkpoint names (nothing was changed)",
                d.display()
            );
        }
        if held.any() {
            notes.push(format!(
                "--overwrite: clearing {} (it held: {})",
                out_dir.display(),
                held.describe(out_dir)
            ));
        }
    }
    let resume = match (&plan.train.resume, flags.overwrite) {
        (Resume::Fresh, _) | (Resume::Latest, true) => None,
        (Resume::From(d), _) => Some(d.clone()),
        (Resume::Latest, false) => {
            // The folder's own run: the one its run.json names, else (older folders) any.
            let owner = held.manifest.as_ref().and_then(|m| m.run_id.clone());
            checkpoint::latest(out_dir, owner.as_deref())?
        }
    };
    let options =
        "pass --overwrite to clear it and start this run afresh, or choose another output_dir";
    if held.any() && !flags.overwrite {
        match &resume {
            Some(d) if !d.parent().is_some_and(|p| same_dir(p, out_dir)) => bail!(
                "{}; resuming {} into it would mix two runs: {options}",
                held.describe(out_dir),
                d.display()
            ),
            Some(_) => {}
            None => {
                let recorded = held.manifest.as_ref();
                let same = recorded.and_then(|m| m.run_id.as_deref()) == Some(id.as_str());
                let finished = recorded.is_some_and(|m| m.status() == RunStatus::Complete);
                if plan.train.resume == Resume::Latest && same && !finished {
                    // This very run, killed before its first checkpoint: start it again.
                    notes.push(format!(
                        "{} holds this run, stopped before its first checkpoint: starting it again from step 0",
                        out_dir.display()
                    ));
                } else {
                    let mut msg = held.describe(out_dir);
                    let mut same_run = false;
                    if let Some(m) = recorded {
                        let diffs = differences(&m.plan, Some(&m.inputs), &plan_json, ids);
                        same_run = diffs.is_empty();
                        if same_run {
                            msg.push_str(" (the same recipe and inputs as this run)");
                        } else {
                            msg.push_str(": another run; what differs (recorded → now):");
                            for d in &diffs {
                                msg.push_str(&format!("\n  {d}"));
                            }
                        }
                    }
                    let resume_hint = match (same_run && !finished, held.checkpoints.is_empty()) {
                        (true, false) => "; or resume it: auto_resume_from_checkpoints: true",
                        _ => "",
                    };
                    bail!("{msg}\n{options}{resume_hint}");
                }
            }
        }
    }
    if let Some(d) = &resume {
        let (rec_plan, rec_ids) = checkpoint_record(d)?;
        let diffs = differences(&rec_plan, rec_ids.as_ref(), &plan_json, ids);
        if !diffs.is_empty() {
            let list: String = diffs.iter().map(|d| format!("\n  {d}")).collect();
            if !flags.allow_changed {
                bail!(
                    "resuming from {} with a recipe that changes what is trained (checkpoint → now):{list}\n\
                     a resumed run would not be the run the checkpoint belongs to: restore these values, \
                     or pass --allow-changed to continue with the new ones from the checkpoint's step, \
                     or --overwrite to start afresh",
                    d.display()
                );
            }
            notes.push(format!(
                "--allow-changed: resuming from {} with these changes (checkpoint → now):{list}",
                d.display()
            ));
        }
    }
    Ok(Claim {
        resume,
        run_id: id,
        clear: flags.overwrite && held.any(),
        notes,
    })
}

/// The advisory lock a run holds on its output folder (`.runner.lock`; the system releases it
/// when the process ends, however it ends): a second process writing into the same folder
/// is refused instead of mixing two runs' files.
pub const LOCK_FILE: &str = ".runner.lock";

/// Takes the output folder's lock (creating the folder), for as long as the file lives.
pub fn lock(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another runner process (it holds {LOCK_FILE}); wait for it to end or choose another output_dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Acts on a [`Claim`] (the writing rank only): clears the folder under `--overwrite`, then
/// removes the temporaries interrupted runs left in it. Returns the temporaries removed.
pub fn prepare(plan: &Plan, claim: &Claim) -> Result<Vec<PathBuf>> {
    let out_dir = &plan.train.output_dir;
    if claim.clear {
        clear(out_dir, Some(&plan.data.prepared_path))?;
    }
    Ok(runner_io::atomic::remove_temporaries(out_dir)?)
}

/// Empties `dir` crash-safely: every entry is moved into one temporary folder inside it
/// (`.overwritten.trash-PID`), which is then deleted; a kill midway leaves only entries not yet
/// moved and a temporary the next run removes. The entry holding `keep` (a prepared-data cache
/// inside the output folder) stays.
pub fn clear(dir: &Path, keep: Option<&Path>) -> Result<()> {
    let trash = dir.join(format!(".overwritten.trash-{}", std::process::id()));
    std::fs::create_dir_all(&trash).with_context(|| format!("{}", trash.display()))?;
    let keep = keep.map(|k| std::path::absolute(k).unwrap_or_else(|_| k.to_path_buf()));
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if path == trash || entry.file_name() == LOCK_FILE {
            continue;
        }
        let abs = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        if keep.as_ref().is_some_and(|k| k.starts_with(&abs)) {
            continue;
        }
        runner_io::fault::op("rename aside", &path);
        std::fs::rename(&path, trash.join(entry.file_name()))
            .with_context(|| format!("moving {} aside to clear it", path.display()))?;
    }
    runner_io::fault::op("remove", &trash);
    std::fs::remove_dir_all(&trash).with_context(|| format!("removing {}", trash.display()))?;
    Ok(())
}

/// Refuses an adapter folder whose `run.json` says its run did not finish (killed, still
/// running, interrupted, stopped by a watchdog): its adapter is an intermediate state that
/// looks final. A checkpoint folder, chosen by name, is accepted; so is a folder without a
/// run.json (an adapter from elsewhere).
pub fn check_adapter(dir: &Path) -> Result<()> {
    if !dir.join(manifest::FILE).is_file() {
        return Ok(());
    }
    let m = Manifest::read(dir)?;
    let state = match (m.status(), &m.outcome) {
        (RunStatus::Complete | RunStatus::Checkpoint, _) => return Ok(()),
        (RunStatus::Partial, Some(o)) => format!("stopped at step {} ({})", o.steps, o.stop),
        _ => "has not finished (killed, or still running)".to_string(),
    };
    let checkpoints = checkpoint::list_run(dir, m.run_id.as_deref()).unwrap_or_default();
    let choose = match checkpoints.last() {
        Some((_, p)) => format!(
            "to use a saved state, name the checkpoint: --adapter {}",
            p.display()
        ),
        None => "it has no checkpoint to choose instead".to_string(),
    };
    bail!(
        "{}: the run that wrote this adapter {state}, so it is not the run's result; {choose}; or resume the run to finish it",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trajectory_keeps_what_is_trained_only() {
        let plan = serde_json::json!({
            "train": {"output_dir": "a", "max_steps": 10, "learning_rate": 0.1, "save": {"every": 2}},
            "export": {"gguf": []},
            "adapter": {"r": 8, "init_from": null},
        });
        let mut other = plan.clone();
        other["train"]["output_dir"] = "b".into();
        other["train"]["save"]["every"] = 5.into();
        assert_eq!(trajectory(&plan), trajectory(&other));
        other["train"]["max_steps"] = 20.into();
        let d = crate::reproduce::json_differences(&trajectory(&plan), &trajectory(&other));
        assert_eq!(d, [("train.max_steps".into(), "10".into(), "20".into())]);
    }

    #[test]
    fn clear_keeps_the_prepared_cache_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "run.json",
            "metrics.jsonl",
            "checkpoint-3/a",
            "prepared/k/summary.json",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        clear(d.path(), Some(&d.path().join("prepared"))).unwrap();
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["prepared"]);
    }

    #[test]
    fn issue_17_group_1_a_second_writer_of_the_folder_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let held = lock(&out).unwrap();
        let e = lock(&out).unwrap_err().to_string();
        assert!(e.contains("in use by another runner process"), "{e}");
        drop(held);
        lock(&out).unwrap();
    }
}
