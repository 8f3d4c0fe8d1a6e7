//! Writes the synthetic multi-turn chat set (`runner_data::testing::write_synthetic_chats`) as
//! JSONL, for benchmarks of `runner preprocess` (tools/data/bench_preprocess.sh).
//!
//!     cargo run -p runner-data --example gen_chats -- ROWS OUT.jsonl

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(rows), Some(out)) = (args.first().and_then(|r| r.parse().ok()), args.get(1)) else {
        eprintln!("usage: gen_chats ROWS OUT.jsonl");
        return ExitCode::from(2);
    };
    match runner_data::testing::write_synthetic_chats(out.as_ref(), rows) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write {out}: {e}");
            ExitCode::from(1)
        }
    }
}
