//! `runner reproduce OUTPUT_DIR` and `runner diff RUN_A RUN_B`: printing around
//! `runner_pipeline::reproduce`.

use runner_pipeline::manifest::Manifest;
use runner_pipeline::reproduce as rep;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn reproduce(output_dir: &Path, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let recorded = Manifest::read(output_dir)?;
    if recorded.status() != runner_pipeline::manifest::RunStatus::Complete {
        anyhow::bail!(
            "{}: the run is not complete (run.json says {:?}); reproduce reruns finished runs (resume it first)",
            output_dir.display(),
            recorded.status()
        );
    }
    let output_dir = std::path::absolute(output_dir)?;
    let out = match out {
        Some(o) if o.exists() => anyhow::bail!(
            "{} already exists; the rerun writes into a new folder (nothing was run)",
            o.display()
        ),
        Some(o) => std::path::absolute(o)?,
        None => rep::next_rerun_dir(&output_dir),
    };
    // Relative paths in the plan are relative to where the run started.
    let here = std::env::current_dir()?;
    if here != recorded.working_dir {
        std::env::set_current_dir(&recorded.working_dir).map_err(|e| {
            anyhow::anyhow!(
                "the run started in {}, where its relative paths point: {e}",
                recorded.working_dir.display()
            )
        })?;
        eprintln!(
            "note: working in {} (where the run started)",
            recorded.working_dir.display()
        );
    }
    let loaded = rep::recorded_recipe(&recorded, &out)?;
    let differences = rep::input_differences(&recorded, &loaded.plan)?;
    if !differences.is_empty() {
        for d in &differences {
            eprintln!("error: {d}");
        }
        anyhow::bail!(
            "{} difference(s) from the recorded run; refusing to reproduce it (nothing was run)",
            differences.len()
        );
    }
    let current = runner_pipeline::manifest::Build::current();
    if current.git_commit != recorded.runner.git_commit
        || current.version != recorded.runner.version
    {
        eprintln!(
            "note: recorded with runner {} ({}), this is {} ({})",
            recorded.runner.version,
            recorded.runner.git_commit,
            current.version,
            current.git_commit
        );
    }
    eprintln!("inputs match the record; rerunning into {}", out.display());
    // The recorded device: the CPU, or one GPU (a job of several ranks is not rerun yet).
    if recorded.world_size > 1 {
        anyhow::bail!(
            "the run was a job of {} ranks; `runner reproduce` reruns single-process runs only \
             (rerun it with `runner run {} --gpus N` / `--processes N` and compare with `runner diff`)",
            recorded.world_size,
            recorded.recipe.name
        );
    }
    let gpu = recorded.device.starts_with("Cuda").then_some(0);
    let placement = crate::launch::Placement::Single { gpu };
    // As the run read its data: with `--skip-bad-rows` when it was given.
    let skip_bad_rows = recorded
        .prepared_data
        .as_ref()
        .is_some_and(|p| p.skip_bad_rows);
    let code = crate::run::run(
        &loaded,
        &recorded.recipe.name,
        &placement,
        Default::default(),
        skip_bad_rows,
    )?;
    if code != ExitCode::SUCCESS {
        anyhow::bail!("the rerun did not finish; nothing to compare");
    }
    let rerun = Manifest::read(&out)?;
    let adapter = runner_model::peft::WEIGHTS_FILE;
    let (a, b) = (output_dir.join(adapter), out.join(adapter));
    // The recorded adapter must still be what the run wrote.
    if let Some(f) = recorded.files.iter().find(|f| f.path == Path::new(adapter))
        && runner_io::hash::file(&a)? != f.blake3
    {
        eprintln!(
            "warning: {} changed since the run wrote it (its hash is not the recorded one)",
            a.display()
        );
    }
    let cmp = rep::compare_adapters(&a, &b)?;
    let same_kind = rerun.runner.cpu == recorded.runner.cpu
        && rerun.threads == recorded.threads
        && rerun.device == recorded.device
        && rerun.gpu == recorded.gpu
        && rerun.world_size == recorded.world_size;
    if cmp.identical {
        println!(
            "reproduced: {} is bit-identical to {}",
            b.display(),
            a.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("the adapters differ: {} vs {}", a.display(), b.display());
    if let Some((name, d)) = &cmp.largest {
        println!("largest absolute difference: {d:.3e} in {name}");
    }
    for m in &cmp.mismatched {
        println!("tensor in one adapter only, or of another shape: {m}");
    }
    println!("{:>6}  {:>12}  {:>12}", "step", "recorded", "rerun");
    for (step, x, y) in rep::loss_curves(&output_dir, &out)? {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.6}"));
        println!("{step:>6}  {:>12}  {:>12}", f(x), f(y));
    }
    if same_kind {
        eprintln!(
            "error: same CPU ({}), threads ({}), device and world size: the adapter should be bit-identical",
            recorded.runner.cpu, recorded.threads
        );
        Ok(ExitCode::from(1))
    } else {
        eprintln!(
            "note: recorded on {} with {} thread(s), rerun on {} with {}: bit-identity is only expected on the same machine kind and thread count",
            recorded.runner.cpu, recorded.threads, rerun.runner.cpu, rerun.threads
        );
        Ok(ExitCode::SUCCESS)
    }
}

pub fn diff(a: &Path, b: &Path) -> anyhow::Result<ExitCode> {
    let (ma, mb) = (Manifest::read(a)?, Manifest::read(b)?);
    let rows = rep::diff(&ma, &mb)?;
    if rows.is_empty() {
        println!("no differences (besides timings)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut section = String::new();
    for (s, key, x, y) in rows {
        if s != section {
            println!("{s}:");
            section = s;
        }
        println!("  {key}: {x} → {y}");
    }
    Ok(ExitCode::SUCCESS)
}
