//! The command line, defined once: `--help`, completions and the Axolotl-style `--key=value`
//! overrides all come from these definitions.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "runner",
    version,
    about = "Declarative LoRA / QLoRA fine-tuning from one validated YAML recipe",
    long_about = "Declarative LoRA / QLoRA fine-tuning from one validated YAML recipe.\n\n\
        Recipes use Axolotl's flat keys. Any recipe key can be overridden on the command line \
        with `--set key=value` or Axolotl's `--key=value` form; overrides are validated like \
        the file's own values."
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUNNER_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Colour in diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    pub color: Color,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a recipe: exit 0 when valid, 1 when invalid, 2 when the input is unusable.
    Validate {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Print the resolved plan: every value, with the recipe line, override or default it
        /// came from.
        #[arg(long)]
        explain: bool,
    },
    /// Validate a recipe and run its pipeline: data → model → train → export.
    Run {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Validate and print the stages without running them.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: plan memory for this device instead of the one the run would use:
        /// `cpu`, a GPU by name (h200, h100, a100-80, a100-40, l40s, a10, l4, rtx4090, rtx3090)
        /// or `cuda:GB` for any GPU with that much memory (e.g. cuda:24).
        #[arg(long, value_name = "DEVICE", requires = "dry_run")]
        plan_device: Option<String>,
        /// Skip malformed rows (counted in the data summary) instead of stopping at the first.
        #[arg(long)]
        skip_bad_rows: bool,
        /// Smoke-train the recipe as written, in seconds on the CPU: a tiny random model of the
        /// same family, its tokenizer when local (else a built-in one), the first rows of its
        /// data (generated rows when not local), a few steps; every substitution is printed.
        #[arg(long, conflicts_with_all = ["dry_run", "gpus", "processes"])]
        smoke: bool,
        #[command(flatten)]
        parallel: ParallelArgs,
        #[command(flatten)]
        folder: FolderArgs,
    },
    /// Prepare the recipe's datasets (through the cache) and print a summary: rows read,
    /// dropped and truncated, tokens, trained fraction, packing efficiency, time.
    Preprocess {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Prepare again even when the cache holds this exact data.
        #[arg(long)]
        force: bool,
        /// Skip malformed rows (and count them) instead of stopping at the first.
        #[arg(long)]
        skip_bad_rows: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download what a recipe reads from the Hugging Face Hub (base model, tokenizer,
    /// datasets) into the Hugging Face cache and print the commits, for machines without network.
    Fetch {
        #[command(flatten)]
        recipe: RecipeArgs,
    },
    /// Show the first prepared samples with trained and masked tokens told apart (colour on a
    /// terminal, ⟦ ⟧ around trained text otherwise), to check loss masks.
    Inspect {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// How many samples to show.
        #[arg(short = 'n', long, default_value_t = 3)]
        samples: usize,
        /// Also list every token as id:label:text.
        #[arg(long)]
        tokens: bool,
        /// Show evaluation samples instead of training samples.
        #[arg(long)]
        eval: bool,
    },
    /// Loss and perplexity of the recipe's model (+ an adapter) on its evaluation set, or on
    /// its training set with --train.
    Eval {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// A PEFT adapter folder to evaluate with (default: the recipe's lora_model_dir, else
        /// none: the base model alone).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Evaluate on the training samples instead of the evaluation set.
        #[arg(long)]
        train: bool,
    },
    /// Generate text from the recipe's model (+ adapter), a merged model or a GGUF file: a
    /// plain prompt, or chat messages through the chat template the recipe trains with;
    /// tokens are streamed to standard output.
    Generate {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Generate from this model instead of the recipe's base_model: a merged model folder
        /// or a .gguf file (no adapter unless --adapter).
        #[arg(long)]
        model: Option<String>,
        /// A PEFT adapter folder (default: the recipe's lora_model_dir, else the adapter in its
        /// output_dir if a run left one there, else none). A run's adapter is refused unless
        /// the run is complete: name a checkpoint (OUTPUT_DIR/checkpoint-N) to use another.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Use no adapter, even when the recipe names or produced one.
        #[arg(long, conflicts_with = "adapter")]
        no_adapter: bool,
        /// A plain-text prompt (no chat template), tokenized as `tokenizer(text)` does.
        #[arg(long)]
        prompt: Option<String>,
        /// A user message, rendered with the chat template and the generation prompt.
        #[arg(long)]
        user: Option<String>,
        /// A system message before --user (or before the --chat messages).
        #[arg(long)]
        system: Option<String>,
        /// A JSON file with the conversation so far: `[{"role": "user", "content": "..."}]`.
        #[arg(long)]
        chat: Option<PathBuf>,
        /// At most this many new tokens; generation also ends at EOS / end of turn.
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        /// Sampling temperature; 0 (the default) is greedy decoding.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Sample only among the k most likely tokens (with --temperature).
        #[arg(long)]
        top_k: Option<usize>,
        /// Sample only from the smallest set of tokens whose probability reaches p (with
        /// --temperature).
        #[arg(long)]
        top_p: Option<f64>,
        /// Seed of the sampling stream (default: the recipe's seed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Write a GGUF for llama.cpp / Ollama: the recipe's model with its adapter merged (or
    /// --model, a merged folder or GGUF), the tokenizer and chat template in the metadata;
    /// then read it back and print the largest logit difference.
    ExportGguf {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Export this model instead of the recipe's base_model (a merged folder or a .gguf).
        #[arg(long)]
        model: Option<String>,
        /// The PEFT adapter to merge (default as for `generate`: lora_model_dir, else the
        /// adapter in output_dir).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Merge no adapter.
        #[arg(long, conflicts_with = "adapter")]
        no_adapter: bool,
        /// The GGUF file to write; refused if it exists, unless --force.
        #[arg(long, short)]
        out: PathBuf,
        /// Tensor type: f32, f16 or q8_0 (norms stay f32).
        #[arg(long = "type", default_value = "q8_0")]
        ty: String,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Merge a PEFT adapter into its base model (W' = W + s·BA; DoRA rescaled per row),
    /// shard by shard, then print the largest logit difference between base + adapter and the
    /// merged model on a few sequences.
    Merge {
        /// The base model: a Hugging Face folder (safetensors) or `builtin:NAME`.
        #[arg(long)]
        base: String,
        /// The adapter folder (adapter_config.json + adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        /// Where the merged model goes; refused if it already holds a model, unless --force.
        #[arg(long, short)]
        out: PathBuf,
        /// Weight dtype of the merged model.
        #[arg(long, value_enum, default_value_t = MergedDtype::F32)]
        dtype: MergedDtype,
        /// For QLoRA adapters: merge into the base as training saw it, every decoder
        /// projection quantized and dequantized (nf4: load_in_4bit, int8: load_in_8bit);
        /// `none` merges into the stored weights.
        #[arg(long, value_enum, default_value_t = DequantizedBase::None)]
        dequantized_base: DequantizedBase,
        /// Replace a model already in the output folder.
        #[arg(long)]
        force: bool,
    },
    /// Rerun a finished run from its manifest (OUTPUT_DIR/run.json) into a new folder
    /// (OUTPUT_DIR/reproduce-N unless --out) and compare the adapters. Refuses, listing the
    /// differences, when an input (data, model, tokenizer, template) no longer has its recorded
    /// hash. Run it from the folder the run started in (it changes there when the data paths
    /// are relative).
    Reproduce {
        /// The output folder of the run (holding run.json).
        output_dir: PathBuf,
        /// Where the rerun writes (must not exist yet).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// What differs between two runs (their run.json): runner version and build, recipe keys,
    /// input hashes, device and threads, metrics, and the files each wrote.
    Diff {
        /// An output folder (or its run.json).
        run_a: PathBuf,
        /// Another output folder (or its run.json).
        run_b: PathBuf,
    },
    /// Print the recipe JSON Schema (for editors; committed as schemas/recipe.schema.json).
    Schema {
        /// Write to this file (atomically) instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Where `runner run` trains: the CPU (default), GPUs, or several CPU processes.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct ParallelArgs {
    /// Train on N GPUs (needs a build with `--features cuda`): one process per GPU, adapter
    /// gradients summed over NCCL. Under torchrun-style launchers (RANK, WORLD_SIZE,
    /// LOCAL_RANK, MASTER_ADDR, MASTER_PORT set) each process uses GPU LOCAL_RANK instead.
    #[arg(long, value_name = "N", conflicts_with = "processes")]
    pub gpus: Option<usize>,
    /// Train on the CPU with N data-parallel processes (gradients summed over TCP): the
    /// multi-GPU code path without GPUs, for tests and debugging.
    #[arg(long, value_name = "N")]
    pub processes: Option<usize>,
}

/// What `runner run` may do with an output folder that already holds a run.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct FolderArgs {
    /// Clear output_dir first when it holds a run (another one, or this one), and start afresh.
    #[arg(long)]
    pub overwrite: bool,
    /// Resume although the recipe changed what is trained (schedule, learning rate, data,
    /// model, adapter shape): the differences are listed and the run continues with the new
    /// values from the checkpoint's step.
    #[arg(long)]
    pub allow_changed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DequantizedBase {
    None,
    Nf4,
    Int8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MergedDtype {
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Args)]
pub struct RecipeArgs {
    /// The recipe (YAML). Without one, the built-in smoke recipe (recipes/tiny-smoke.yaml) is
    /// used.
    pub recipe: Option<PathBuf>,
    /// Override a recipe key: `--set lora_r=32`, `--set datasets[0].path=data.jsonl`. The value
    /// is YAML; an empty value unsets the key. Axolotl's `--lora_r=32` form works too.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Rewrites Axolotl's `--key=value` into `--set key=value` for every `--name=value` whose
/// name is not one of our own flags, so that recipes' command lines carry over.
pub fn axolotl_overrides(argv: Vec<OsString>, cmd: &clap::Command) -> Vec<OsString> {
    let mut ours: Vec<String> = Vec::new();
    collect_long_flags(cmd, &mut ours);
    let mut out = Vec::with_capacity(argv.len());
    let mut after_dashdash = false;
    for arg in argv {
        let text = arg.to_str();
        match text {
            Some("--") => {
                after_dashdash = true;
                out.push(arg);
            }
            Some(t) if !after_dashdash && t.starts_with("--") && t.contains('=') => {
                let (name, value) = t[2..].split_once('=').unwrap_or((&t[2..], ""));
                if ours.iter().any(|f| f == name) {
                    out.push(arg);
                } else {
                    out.push("--set".into());
                    out.push(format!("{name}={value}").into());
                }
            }
            _ => out.push(arg),
        }
    }
    out
}

fn collect_long_flags(cmd: &clap::Command, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            out.push(long.to_string());
        }
    }
    out.push("help".into());
    out.push("version".into());
    for sub in cmd.get_subcommands() {
        collect_long_flags(sub, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn axolotl_style_flags_become_overrides() {
        let argv: Vec<OsString> = [
            "runner",
            "validate",
            "r.yaml",
            "--lora_r=32",
            "--color=never",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out = axolotl_overrides(argv, &Cli::command());
        let out: Vec<&str> = out.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            out,
            [
                "runner",
                "validate",
                "r.yaml",
                "--set",
                "lora_r=32",
                "--color=never"
            ]
        );
    }
}
