//! What `runner preprocess` / `runner inspect` do, as a library user: load a recipe, prepare
//! its data through the cache, print the summary, and show the first samples' masks.
//!
//!     cargo run -p runner-data --example preprocess -- recipes/tiny-smoke.yaml [--inspect N] [--force]

use runner_data::inspect::{InspectOptions, render};
use runner_data::{PrepareOptions, load_tokenizer, prepare_with};
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(recipe) = args.next() else {
        eprintln!("usage: preprocess RECIPE [--inspect N] [--force] [--skip-bad-rows]");
        return ExitCode::from(2);
    };
    let mut inspect = 0;
    let mut opts = PrepareOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--inspect" => inspect = args.next().and_then(|n| n.parse().ok()).unwrap_or(3),
            "--force" => opts.force = true,
            "--skip-bad-rows" => opts.skip_bad_rows = true,
            other => {
                eprintln!("unknown argument {other}");
                return ExitCode::from(2);
            }
        }
    }
    let loaded = match runner_recipe::load_path(recipe.as_ref(), &[]) {
        Ok(l) => l,
        Err(e) => {
            eprint!("{}", e.render(std::io::stderr().is_terminal()));
            return ExitCode::from(1);
        }
    };
    let run = || -> runner_data::Result<()> {
        let tok = load_tokenizer(&loaded.plan.model)?;
        let prepared = prepare_with(&loaded.plan.data, &tok, opts)?;
        println!("{}", prepared.summary);
        if inspect > 0 {
            let o = InspectOptions {
                samples: inspect,
                color: std::io::stdout().is_terminal(),
                tokens: false,
            };
            print!("{}", render(&tok, &prepared.train, o));
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
