//! Using the recipe crate as a library: load a recipe (with overrides), then hand each stage
//! its own section of the resolved Plan.
//!
//!     cargo run --example plan -- recipes/tiny-smoke.yaml lora_r=16

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: plan RECIPE [key=value ...]");
        return ExitCode::from(2);
    };
    let overrides: Vec<String> = args.collect();
    match runner_recipe::load_path(path.as_ref(), &overrides) {
        Ok(loaded) => {
            let plan = &loaded.plan;
            println!(
                "data stage gets {} dataset(s), sequence_len {}",
                plan.data.datasets.len(),
                plan.data.sequence_len
            );
            println!("model stage gets base model {}", plan.model.base_model);
            println!(
                "adapter: r={} scaling={}",
                plan.adapter.r, plan.adapter.scaling
            );
            println!(
                "train stage gets lr {} for {:?} steps",
                plan.train.learning_rate, plan.train.max_steps
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{}", e.render(false));
            ExitCode::from(1)
        }
    }
}
