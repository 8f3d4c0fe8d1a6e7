//! The `runner` binary: argument parsing, process set-up (devices, ranks, signals) and
//! printing; the pipeline itself is `runner_pipeline`.

mod args;
mod commands;
mod generate;
mod launch;
mod reproduce;
mod run;

use clap::{CommandFactory, Parser};
use std::process::ExitCode;

// Tokenization allocates many small buffers; glibc malloc cost about a third of the data
// stage's CPU time (measured in crates/data's bench_chat).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's C API (linked through the `mimalloc` crate); `mi_option_purge_delay` is option 15 in
// mimalloc.h (v2 and v3).
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

fn main() -> ExitCode {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // candle's CPU worker threads spin while idle; with the default limit they take the
        // cores other work needs (measured in crates/model's step_bench: 33–42 vs 62–75 tok/s).
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100") };
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // A training step frees and reallocates the same large activation buffers every few
        // seconds; mimalloc returns freed memory to the OS after 10 ms by default, so each step
        // paid the kernel to zero those pages again (sys time 24.7 s → 9.4 s over 4 SmolLM2
        // steps). Peak RSS is what the step needs either way.
        // SAFETY: a plain option setter, called before any large allocation.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    let argv = args::axolotl_overrides(std::env::args_os().collect(), &args::Cli::command());
    let cli = match args::Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    init_logging(cli.verbose);
    install_signal_handler();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(1)
        }
    }
}

/// SIGINT/SIGTERM (and SIGHUP): while training, a first signal finishes the step and saves a
/// checkpoint; anywhere else, or on a second signal, the process ends at once with a message
/// naming the stage, after removing the temporary files it had open (every file is written to
/// a temporary name and renamed, so nothing half-written is left under a final name).
fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| {
        use std::sync::atomic::Ordering;
        if launch::IGNORE_SIGNALS.load(Ordering::SeqCst) {
            return;
        }
        let stop = runner_io::interrupt::stop_flag();
        if runner_io::interrupt::is_graceful() && !stop.swap(true, Ordering::SeqCst) {
            eprintln!(
                "\nstopping after this step (saving a checkpoint); press Ctrl-C again to abort"
            );
            return;
        }
        runner_io::atomic::remove_live_temporaries();
        let stage = runner_io::interrupt::stage();
        eprintln!(
            "\ninterrupted{}: stopped now; nothing was left half-written under a final name (a run resumes from its last checkpoint)",
            if stage.is_empty() {
                String::new()
            } else {
                format!(" during {stage}")
            }
        );
        std::process::exit(130);
    });
}

/// The error and its causes, each said once: library errors already print their source
/// (`{path}: {source}`), which anyhow's `{:#}` would repeat (issue 17).
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
