//! `cargo xtask bench`: the benchmarks. Being written; `main.rs` only dispatches here.

/// Runs the benchmarks. `args` is everything after `bench` on the command line, unparsed, so this
/// module can define its own flags (for example with `clap::Parser::try_parse_from`).
pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    let _ = args;
    Err(anyhow::anyhow!("bench is being written"))
}
