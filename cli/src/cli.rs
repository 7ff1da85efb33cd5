//! The `loraland` command line: `serve` (the default) and the tools.

use clap::{Parser, Subcommand};
use server::config::ServeConfig;
use std::path::PathBuf;

/// LoRA Land: many LoRA adapters on one base model, served and compared.
#[derive(Parser, Debug)]
#[command(name = "loraland", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; without a subcommand, `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server options (when no subcommand is given).
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the web app and the API (boxed: the server's options outweigh every other subcommand's).
    Serve(Box<ServeConfig>),
    /// Generate text for a prompt with the base model and/or adapters, as one mixed batch.
    Generate(lab::generate::GenerateArgs),
    /// Fine-tune a LoRA adapter on a catalog task's synthetic data or on a JSONL file.
    Train(lab::train::TrainArgs),
    /// Score the base model and task adapters on a task's held-out split (or every task with --all).
    Eval(lab::eval::EvalArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Fetch the embedded default model (SmolLM2-135M-Instruct) into the data folder and verify it.
    FetchModel {
        /// Folder that receives models/<file>.
        #[arg(long, env = "LORALAND_DATA_DIR", default_value = server::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// `loraland bench ...`
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Decode tokens/s of the multi-adapter batch: base vs one adapter vs every row a different adapter.
    Decode(lab::bench::decode::DecodeBenchArgs),
    /// Closed-loop load over K adapters vs the base model alone: tokens/s, TTFT and inter-token latency.
    Load(lab::bench::LoadBenchArgs),
    /// A running server under closed-loop HTTP users (the LoRA Land report's k6 shape): errors, latency, memory.
    Http(lab::bench::http::HttpBenchArgs),
    /// A running server under abuse (bad, oversized and flooding requests): each case's answers, then whether it
    /// still serves.
    Abuse(lab::bench::http::AbuseArgs),
}
