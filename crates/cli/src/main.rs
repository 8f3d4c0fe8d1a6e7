//! The `runner` binary: argument parsing and wiring of the pipeline stages.

fn main() {}
