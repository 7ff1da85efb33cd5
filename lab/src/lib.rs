//! LoRA Land's lab: the tools around the product, as `loraland` subcommands. Fine-tuning (`train`), scoring on the
//! catalog tasks' held-out data (`eval`), generating from the command line (`generate`), the benchmarks (`bench`),
//! and the synthetic task data they use (`tasks`). Built on the engine and on the server crate's shared argument
//! types; nothing here is needed to serve.

pub mod bench;
pub mod eval;
pub mod generate;
pub mod local;
pub mod tasks;
pub mod train;

/// A command's output goes to stdout; logs go to stderr.
#[allow(clippy::print_stdout)]
pub fn print_line(line: &str) {
    println!("{line}");
}
