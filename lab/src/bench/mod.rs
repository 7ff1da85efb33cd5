//! `loraland bench ...`: the benchmarks. `decode` times the multi-adapter batch's decode steps on a real model;
//! `load` runs closed-loop streams through the engine handle (and, with `--random-model`, a model of a given shape
//! with random weights, [`random`]) over the workload of [`workload`]; `http` and `abuse` drive a running server
//! from outside; `reference` is candle-transformers' own model, the speed reference of `decode --reference`.

pub mod decode;
pub mod http;
pub mod load;
pub mod random;
#[cfg(feature = "bench-reference")]
pub mod reference;
pub mod workload;

use clap::Args;
use std::path::PathBuf;

/// This process's peak resident memory in bytes (`VmHWM` of /proc/self/status; None where there is no such file).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// `loraland bench load` options.
#[derive(Args, Debug)]
pub struct LoadBenchArgs {
    /// Base model: a GGUF file or a Hugging Face folder.
    #[arg(long, env = "LORALAND_MODEL", default_value = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// Concurrent streams.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Adapter counts to compare with the base model alone.
    #[arg(long, value_delimiter = ',', default_value = "1,4,25")]
    pub adapters: Vec<usize>,
    /// Requests each stream sends, one after the other.
    #[arg(long, default_value_t = 2)]
    pub requests_per_stream: usize,
    /// Also measure one stream on the base model, sending as many requests as all the streams together one after the
    /// other (for the concurrency scaling ratio: the same work, and long enough to steady the figure).
    #[arg(long, default_value_t = true)]
    pub single_stream: bool,
    /// GGUF quantization handling.
    #[arg(long, value_enum, default_value = "q8")]
    pub quant: server::args::QuantArg,
    /// Device and dtype.
    #[command(flatten)]
    pub device: server::args::DeviceArgs,
    /// Most tokens in one engine step [default: 64 on the CPU, 512 on a GPU].
    #[arg(long)]
    pub max_batch_tokens: Option<std::num::NonZeroUsize>,
    /// Instead of `--model`, a model of this architecture with random weights built on the device (no download):
    /// `mistral-7b` (the LoRA Land base) or `mistral-tiny` (the same vocabulary and heads, CPU-sized). Runs the
    /// streams of `--stream-counts` on the base model, on one adapter, and with every stream on a different one
    /// of 25, and prints the decode step next to its floor (weight bytes / measured memory bandwidth).
    #[arg(long)]
    pub random_model: Option<String>,
    /// Rounds of every load, each on a fresh engine (so each round's adapters start cold), in alternating order; the
    /// table pools all rounds and the ratios to the base are given per round (drift on a shared machine affects both
    /// sides of a ratio measured minutes apart) with their median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Also run the base load with every other stream's output constrained to a JSON schema (a list of records
    /// longer than any request, so both halves generate as many tokens) and give its tokens/s against the free one.
    #[arg(long)]
    pub constrained: bool,
    /// Also run the base load while a LoRA adapter trains beside it in the same process, as a web-app training job
    /// does (the demo adapters' settings on a task's synthetic data, in the training pool of `loraland serve`), and
    /// give its time to first token against the base load's.
    #[arg(long)]
    pub while_training: bool,
    /// Training threads for `--while-training` [default: half the cores, as `loraland serve --train-threads`].
    #[arg(long)]
    pub train_threads: Option<usize>,
    /// Concurrent streams to measure with `--random-model`.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub stream_counts: Vec<usize>,
}
