//! What each subcommand does, by wiring the stage crates together.

use crate::args::{Cli, Color, Command, RecipeArgs};
use anyhow::Context;
use runner_pipeline::inputs::HubNeed;
use runner_recipe::plan::*;
use runner_recipe::{LoadError, Loaded};
use std::io::IsTerminal;
use std::process::ExitCode;

/// The smoke recipe compiled into the binary: `runner run` with no recipe runs it.
const SMOKE_RECIPE: &str = include_str!("../../../recipes/tiny-smoke.yaml");
const SMOKE_NAME: &str = "recipes/tiny-smoke.yaml (built in)";

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    // Named in the message of a process ended by SIGINT/SIGTERM (`runner run` names its stages).
    let name = format!("{:?}", cli.command);
    runner_io::interrupt::set_stage(name.split([' ', '{']).next().unwrap_or_default());
    match cli.command {
        Command::Validate { recipe, explain } => {
            let loaded = match load(&recipe) {
                Ok(l) => l,
                Err(e) => return Ok(report(&e, color)),
            };
            print_substitutions(&loaded);
            if explain {
                print!(
                    "{}",
                    runner_recipe::explain::render(
                        &loaded.plan,
                        &loaded.explanation,
                        &loaded.sources
                    )
                );
            }
            eprintln!("{}: valid", loaded.sources.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            recipe,
            dry_run,
            plan_device,
            skip_bad_rows,
            smoke,
            parallel,
            folder,
        } => {
            let loaded = match load(&recipe) {
                Ok(l) => l,
                // A smoke run substitutes the model: one not fetched here is no error for it.
                Err(e) if smoke => match runner_pipeline::smoke::tolerate_absent_model(Err(e)) {
                    Ok(l) => l,
                    Err(e) => return Ok(report(&e, color)),
                },
                Err(e) => return Ok(report(&e, color)),
            };
            if smoke {
                // The recipe's own config.json and tokenizer when they can be had (issue 19):
                // from the local cache, else downloaded (those files only: never weights or
                // data); offline (`HF_HUB_OFFLINE=1`) or with the Hub out of reach, the smoke
                // run's substitutes stand in and say so.
                let loaded = match pinned(&loaded, HubNeed::Configuration) {
                    Ok(l) => l,
                    Err(e) => {
                        let reason = e.to_string();
                        let reason = reason.lines().next().unwrap_or_default();
                        println!("note: the recipe's hub files were not fetched ({reason})");
                        loaded
                    }
                };
                let smoke = runner_pipeline::smoke::prepare(&loaded)?;
                println!(
                    "smoke run of {}: the recipe as written, with these substitutions:",
                    loaded.sources.name
                );
                for s in &smoke.substitutions {
                    println!("  {s}");
                }
                print_substitutions(&smoke.loaded);
                print!("{}", stages(&smoke.loaded.plan));
                let folder = runner_pipeline::outdir::FolderFlags {
                    overwrite: folder.overwrite,
                    allow_changed: folder.allow_changed,
                };
                return crate::run::smoke(&smoke, folder, skip_bad_rows);
            }
            if dry_run {
                let loaded = pinned(&loaded, HubNeed::Configuration)?;
                print_substitutions(&loaded);
                print!("{}", stages(&loaded.plan));
                let (text, refusal) = runner_pipeline::memory::dry_run(
                    &loaded.plan,
                    plan_device.as_deref(),
                    parallel.gpus,
                )?;
                print!("{text}");
                return Ok(match refusal {
                    Some(message) => {
                        eprintln!("error: {message}");
                        ExitCode::FAILURE
                    }
                    None => ExitCode::SUCCESS,
                });
            }
            let placement = crate::launch::placement(&parallel)?;
            // A launcher's ranks each print this; of a job's ranks only rank 0 does.
            let launcher = matches!(placement, crate::launch::Placement::Launch { .. });
            if placement.is_rank_zero() && !launcher {
                print_substitutions(&loaded);
                print!("{}", stages(&loaded.plan));
            }
            let label = match &recipe.recipe {
                Some(p) => p.display().to_string(),
                None => String::new(),
            };
            if let crate::launch::Placement::Launch { processes } = placement {
                // Downloaded once here, not by every rank at the same time.
                pinned(&loaded, HubNeed::All)?;
                return crate::launch::launch(processes);
            }
            let folder = runner_pipeline::outdir::FolderFlags {
                overwrite: folder.overwrite,
                allow_changed: folder.allow_changed,
            };
            crate::run::run(&loaded, &label, &placement, folder, skip_bad_rows)
        }
        Command::Preprocess {
            recipe,
            force,
            skip_bad_rows,
            json,
        } => {
            let loaded = match load(&recipe) {
                Ok(l) => l,
                Err(e) => return Ok(report(&e, color)),
            };
            let loaded = pinned(&loaded, HubNeed::Data)?;
            let options = runner_data::PrepareOptions {
                force,
                skip_bad_rows,
                ..Default::default()
            };
            let tok = runner_data::load_tokenizer(&loaded.plan.model)?;
            let summary = runner_data::preprocess(&loaded.plan.data, &tok, options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            recipe,
            samples,
            tokens,
            eval,
        } => {
            let loaded = match load(&recipe) {
                Ok(l) => l,
                Err(e) => return Ok(report(&e, color)),
            };
            let loaded = pinned(&loaded, HubNeed::Data)?;
            let tok = runner_data::load_tokenizer(&loaded.plan.model)?;
            let options = runner_data::PrepareOptions {
                no_write: true,
                ..Default::default()
            };
            let prepared = runner_data::prepare_with(&loaded.plan.data, &tok, options)?;
            let shown = if eval {
                &prepared.eval
            } else {
                &prepared.train
            };
            let opts = runner_data::inspect::InspectOptions {
                samples,
                color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                tokens,
            };
            print!("{}", runner_data::inspect::render(&tok, shown, opts));
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            recipe,
            adapter,
            train,
        } => {
            let loaded = match load(&recipe) {
                Ok(l) => l,
                Err(e) => return Ok(report(&e, color)),
            };
            crate::run::eval(&pinned(&loaded, HubNeed::All)?, adapter, train)
        }
        Command::Generate {
            recipe,
            model,
            adapter,
            no_adapter,
            prompt,
            user,
            system,
            chat,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
        } => {
            let loaded = match load(&recipe) {
                Ok(l) => l,
                Err(e) => return Ok(report(&e, color)),
            };
            // `--model` replaces the recipe's base model: nothing of it is read.
            let loaded = match model {
                None => pinned(&loaded, HubNeed::All)?,
                Some(_) => loaded,
            };
            if (top_k.is_some() || top_p.is_some()) && temperature == 0.0 {
                anyhow::bail!(
                    "--top-k and --top-p sample; give a --temperature above 0 too (0 is greedy)"
                );
            }
            crate::generate::generate(
                &loaded,
                crate::generate::GenerateArgs {
                    model,
                    adapter,
                    no_adapter,
                    prompt,
                    user,
                    system,
                    chat,
                    max_new_tokens,
                    temperature,
                    top_k,
                    top_p,
                    seed,
                },
            )
        }
        Command::ExportGguf {
            recipe,
            model,
            adapter,
            no_adapter,
            out,
            ty,
            force,
        } => {
            let loaded = match load(&recipe) {
                Ok(l) => l,
                Err(e) => return Ok(report(&e, color)),
            };
            let loaded = match model {
                None => pinned(&loaded, HubNeed::All)?,
                Some(_) => loaded,
            };
            crate::generate::export_gguf(
                &loaded,
                model.as_deref(),
                adapter.as_deref(),
                no_adapter,
                &out,
                &ty,
                force,
            )
        }
        Command::Merge {
            base,
            adapter,
            out,
            dtype,
            dequantized_base,
            force,
        } => {
            runner_pipeline::outdir::check_adapter(&adapter)?;
            let base_quant = match dequantized_base {
                crate::args::DequantizedBase::None => BaseQuant::None,
                crate::args::DequantizedBase::Nf4 => BaseQuant::Nf4,
                crate::args::DequantizedBase::Int8 => BaseQuant::Int8,
            };
            let dtype = match dtype {
                crate::args::MergedDtype::F32 => candle_core::DType::F32,
                crate::args::MergedDtype::Bf16 => candle_core::DType::BF16,
                crate::args::MergedDtype::F16 => candle_core::DType::F16,
            };
            if base.to_ascii_lowercase().ends_with(".gguf") {
                return Ok(runner_pipeline::export::merge_gguf_base(
                    std::path::Path::new(&base),
                    &adapter,
                    &out,
                    dtype,
                    base_quant,
                    force,
                )?);
            }
            let base_dir = match base.strip_prefix("builtin:") {
                Some(name) => runner_model::tiny::builtin(name)?,
                None => std::path::PathBuf::from(&base),
            };
            let report = runner_export::merge::merge_folder_into(
                &base_dir, &adapter, &out, dtype, force, base_quant,
            )?;
            println!(
                "merged {} module(s) (scaling {}, DoRA {}) into {}: {} shard(s), {} tensors, {} bytes as {:?}",
                report.merged_modules.len(),
                report.scaling,
                report.use_dora,
                out.display(),
                report.shards.len(),
                report.tensors,
                report.bytes_written,
                report.dtype
            );
            // A few fixed sequences of ids inside every vocabulary.
            let rows: Vec<Vec<u32>> = (0..3u32)
                .map(|r| (0..16u32).map(|i| 3 + (r * 37 + i * 11) % 200).collect())
                .collect();
            let diff = runner_export::merge::max_logit_difference_on(
                &base_dir, &adapter, &out, &rows, base_quant,
            )?;
            let on = match base_quant {
                BaseQuant::None => "the base as stored",
                BaseQuant::Nf4 => {
                    "the NF4 round-tripped base (what a QLoRA adapter trained against)"
                }
                BaseQuant::Int8 => {
                    "the int8 round-tripped base (what a load_in_8bit adapter trained against)"
                }
            };
            println!("merged into {on}");
            println!(
                "largest logit difference, base + adapter vs merged: {diff:.3e} (relative to the largest logit)"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch { recipe } => {
            let loaded = match load(&recipe) {
                Ok(l) => l,
                Err(e) => return Ok(report(&e, color)),
            };
            fetch(&loaded)
        }
        Command::Schema { output } => {
            let text = runner_recipe::schema::recipe_schema_text();
            match output {
                Some(path) => runner_io::atomic::write(&path, text.as_bytes())
                    .with_context(|| format!("writing the schema to {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reproduce { output_dir, out } => crate::reproduce::reproduce(&output_dir, out),
        Command::Diff { run_a, run_b } => crate::reproduce::diff(&run_a, &run_b),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "runner", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `loaded` with the hub ids its plan names resolved for `need` (downloaded into the Hugging
/// Face cache when it lacks them) and pinned to their commits.
fn pinned(loaded: &Loaded, need: HubNeed) -> anyhow::Result<Loaded> {
    let settings = runner_hub::Settings::from_env();
    let (plan, pins) = runner_pipeline::inputs::pin_hub(&loaded.plan, need, &settings, false)?;
    for p in pins.iter().filter(|p| !p.snapshot.downloaded.is_empty()) {
        eprintln!("{}", p.downloaded_line());
    }
    Ok(Loaded {
        plan,
        ..loaded.clone()
    })
}

/// `runner fetch`: everything the recipe reads from the Hub, asked of the Hub even when cached
/// (a branch moves on), and the commits it is pinned to.
fn fetch(loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let settings = runner_hub::Settings::from_env();
    let (_, pins) = runner_pipeline::inputs::pin_hub(&loaded.plan, HubNeed::All, &settings, true)?;
    let name = &loaded.sources.name;
    if pins.is_empty() {
        println!("{name}: every input is a local path or built in; nothing to fetch");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &pins {
        let s = &p.snapshot;
        println!(
            "{:<18} {} @ {} = {}  ({})",
            p.role,
            s.repo,
            s.revision,
            s.commit,
            if s.downloaded.is_empty() {
                "already in the cache".to_string()
            } else {
                format!(
                    "downloaded {} file(s), {}",
                    s.downloaded.len(),
                    runner_pipeline::inputs::human_bytes(s.bytes)
                )
            }
        );
    }
    println!("cache: {}", settings.cache.display());
    let mut keys = Vec::new();
    for p in &pins {
        match p.role.as_str() {
            "base_model" => keys.push(format!("revision_of_model: {}", p.snapshot.commit)),
            r if r.starts_with("datasets[") || r.starts_with("test_datasets[") => {
                keys.push(format!("{r}.revision: {}", p.snapshot.commit))
            }
            _ => {}
        }
    }
    if !keys.is_empty() {
        println!("to pin them in the recipe: {}", keys.join("; "));
    }
    println!(
        "on a machine without network: copy the cache there and run with HF_HUB_CACHE=<its path> HF_HUB_OFFLINE=1"
    );
    Ok(ExitCode::SUCCESS)
}

fn load(args: &RecipeArgs) -> Result<Loaded, LoadError> {
    let started = std::time::Instant::now();
    let result = match &args.recipe {
        Some(path) => runner_recipe::load_path(path, &args.set),
        None => runner_recipe::load_str(SMOKE_NAME, SMOKE_RECIPE, &args.set),
    };
    tracing::info!(
        ok = result.is_ok(),
        overrides = args.set.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recipe loaded"
    );
    result
}

/// Prints every diagnostic and returns the exit code: 1 invalid, 2 unusable.
fn report(e: &LoadError, color: bool) -> ExitCode {
    eprint!("{}", e.render(color));
    match e {
        LoadError::Invalid { .. } => ExitCode::from(1),
        LoadError::Unusable { .. } => ExitCode::from(2),
    }
}

fn print_substitutions(loaded: &Loaded) {
    if loaded.plan.substitutions.is_empty() {
        return;
    }
    println!("substitutions (runner runs a documented equivalent):");
    for s in &loaded.plan.substitutions {
        println!("  {}: {} → {}", s.key, s.asked, s.runs);
    }
}

/// The stages `runner run` will execute, in order, in one screen.
fn stages(plan: &Plan) -> String {
    let d = &plan.data;
    let a = &plan.adapter;
    let t = &plan.train;
    let datasets: Vec<String> = d
        .datasets
        .iter()
        .map(|ds| format!("{} ({})", ds.path, format_name(&ds.format)))
        .collect();
    let targets = match &a.targets {
        TargetModules::AllLinear => "every linear layer except lm_head".to_string(),
        TargetModules::Names(n) => n.join(", "),
        TargetModules::Regex(r) => format!("modules matching /{r}/"),
    };
    let length = match t.max_steps {
        Some(s) => format!("{s} steps"),
        None => format!("{} epoch(s)", t.num_epochs),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "1. data    {} → sequence_len {}, packing {}, cache under {}\n",
        datasets.join(", "),
        d.sequence_len,
        if d.sample_packing { "on" } else { "off" },
        d.prepared_path.display()
    ));
    out.push_str(&format!(
        "2. model   {} with {:?} r={} alpha={} (scale {:.4}) on {}{}\n",
        plan.model.base_model,
        a.kind,
        a.r,
        a.alpha,
        a.scaling,
        targets,
        match a.base_quant {
            BaseQuant::None => String::new(),
            BaseQuant::Nf4 => ", base in NF4".into(),
            BaseQuant::Int8 => ", base in int8".into(),
        }
    ));
    out.push_str(&format!(
        "3. train   {length}, micro-batch {} × accumulation {}, lr {} ({:?}), AdamW, seed {}\n",
        t.micro_batch_size,
        t.gradient_accumulation_steps,
        t.learning_rate,
        t.scheduler.kind,
        t.seed
    ));
    let mut exports = vec![format!("PEFT adapter → {}", t.output_dir.display())];
    if plan.export.merge_adapter {
        exports.push(format!(
            "merged model ({:?}) → {}",
            plan.export.merged_dtype,
            t.output_dir.join("merged").display()
        ));
    }
    for q in &plan.export.gguf {
        exports.push(format!("GGUF {}", q.as_str()));
    }
    out.push_str(&format!("4. export  {}\n", exports.join(", ")));
    out
}

fn format_name(f: &DatasetFormat) -> String {
    match f {
        DatasetFormat::Alpaca(v) => format!("{v:?}").to_lowercase(),
        DatasetFormat::CustomAlpaca(_) => "custom alpaca".into(),
        DatasetFormat::ChatTemplate(_) => "chat_template".into(),
        DatasetFormat::Completion { .. } => "completion".into(),
        DatasetFormat::InputOutput => "input_output".into(),
        DatasetFormat::Pretokenized => "pre-tokenized".into(),
    }
}
