//! `loraland bench decode`: decode throughput of the multi-adapter batch on a real model, for batch sizes 1, 8, 16
//! with (a) every row on the base model, (b) every row on one adapter, (c) every row on a different adapter, using
//! random r=8 q/v adapters (the LoRA Land training setup). Prints tokens/s and the ratios (b)/(a), (c)/(a).

use anyhow::Context;
use candle_core::DType;
use clap::Args;
use engine::adapter::LoraAdapter;
use engine::{AdapterBank, KvCache, Logits, Model, Module, SeqInput};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const GIB: f64 = (1u64 << 30) as f64;

/// `loraland bench decode` options.
#[derive(Args, Debug)]
pub struct DecodeBenchArgs {
    /// Base model: a GGUF file or a Hugging Face folder.
    #[arg(long, env = "LORALAND_MODEL", default_value = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,16")]
    pub batch_sizes: Vec<usize>,
    /// Decode steps timed per configuration (after one warm-up step).
    #[arg(long, default_value_t = 24)]
    pub steps: usize,
    /// Prompt tokens prefilled per row before timing.
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// Also time the prefill of a prompt of this many tokens at batch 1 on the base model (after one untimed
    /// prefill of the same length); 0 leaves it out.
    #[arg(long, default_value_t = 0)]
    pub prefill_len: usize,
    /// Also write the figures to this file as JSON (for scripts that compare runs, as `make bench-7b` does).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// GGUF quantization handling.
    #[arg(long, value_enum, default_value = "q8")]
    pub quant: server::args::QuantArg,
    /// Device and dtype.
    #[command(flatten)]
    pub device: server::args::DeviceArgs,
    /// Also time batch-1 decode of candle-transformers' own quantized_llama on the same GGUF, next to ours with
    /// the file's quantization kept (needs a build with `--features bench-reference`).
    #[arg(long)]
    pub reference: bool,
}

/// `n` random adapters for `model`: rank `r` on q_proj and v_proj (the LoRA Land training setup), stored in bf16 as
/// the trainer saves them.
pub fn random_adapters(model: &Model, n: usize, r: usize, seed: u64) -> anyhow::Result<Vec<Arc<LoraAdapter>>> {
    let target = model.adapter_target();
    (0..n)
        .map(|i| Ok(Arc::new(LoraAdapter::random(&target, r, &[Module::Q, Module::V], seed + i as u64, DType::BF16)?)))
        .collect()
}

/// The benchmark's prompt for row `row`: `len` token ids spread over the vocabulary (the same ids
/// `scripts/bench-7b/llama_cpp_rate.py` gives llama.cpp).
pub fn prompt(vocab: u32, row: usize, len: usize) -> Vec<u32> {
    (0..len).map(|j| ((row * 31 + j * 7) as u32 + 100) % vocab).collect()
}

/// Tokens per second of the prefill of one `len`-token prompt on the base model, after one untimed prefill.
fn prefill_rate(model: &Model, len: usize) -> anyhow::Result<f64> {
    let tokens = prompt(model.config().vocab_size as u32, 0, len);
    let empty = AdapterBank::default();
    let mut elapsed = 0.0;
    for _ in 0..2 {
        let mut cache = model.new_cache();
        let start = Instant::now();
        let mut seqs = [SeqInput { tokens: &tokens, cache: &mut cache, adapter: None }];
        let logits = model.forward(&mut seqs, &empty, Logits::Last)?;
        logits.argmax(1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        elapsed = start.elapsed().as_secs_f64();
    }
    Ok(len as f64 / elapsed)
}

/// Tokens per second of `steps` decode steps of a batch whose rows use `slots`.
fn decode_rate(
    model: &Model,
    bank: &AdapterBank,
    slots: &[Option<usize>],
    prompt_len: usize,
    steps: usize,
) -> anyhow::Result<f64> {
    let vocab = model.config().vocab_size as u32;
    let prompts: Vec<Vec<u32>> = (0..slots.len()).map(|i| prompt(vocab, i, prompt_len)).collect();
    let mut caches: Vec<KvCache> = slots.iter().map(|_| model.new_cache()).collect();
    let mut feed = prompts;
    let step = |feed: &mut Vec<Vec<u32>>, caches: &mut Vec<KvCache>| -> anyhow::Result<()> {
        let mut seqs: Vec<SeqInput<'_>> = feed
            .iter()
            .zip(caches.iter_mut())
            .zip(slots)
            .map(|((tokens, cache), &adapter)| SeqInput { tokens, cache, adapter })
            .collect();
        let logits = model.forward(&mut seqs, bank, Logits::Last)?;
        let next: Vec<u32> = logits.argmax(1)?.to_dtype(DType::U32)?.to_vec1()?;
        *feed = next.into_iter().map(|t| vec![t]).collect();
        Ok(())
    };
    step(&mut feed, &mut caches)?; // prefill
    step(&mut feed, &mut caches)?; // warm-up decode
    let start = Instant::now();
    for _ in 0..steps {
        step(&mut feed, &mut caches)?;
    }
    Ok((slots.len() * steps) as f64 / start.elapsed().as_secs_f64())
}

/// One batch size's figures, in tokens/s.
#[derive(serde::Serialize)]
struct Row {
    batch: usize,
    base: f64,
    one_adapter: f64,
    all_different: f64,
}

/// What `--json` writes.
#[derive(serde::Serialize)]
struct Report {
    model: PathBuf,
    quant: String,
    threads: String,
    load_s: f64,
    prefill_tokens: usize,
    prefill_tok_s: Option<f64>,
    prompt_len: usize,
    steps: usize,
    rows: Vec<Row>,
    /// The process's peak resident memory (Linux's VmHWM) after the runs.
    peak_rss_bytes: Option<u64>,
}

/// Runs the decode benchmark and prints a Markdown table.
pub fn run(args: DecodeBenchArgs) -> anyhow::Result<()> {
    let quant = args.quant.into();
    let start = Instant::now();
    let model = Model::load(&args.model, &args.device.load_options(quant)?)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let load_s = start.elapsed().as_secs_f64();
    let max_batch = args.batch_sizes.iter().copied().max().unwrap_or(1);
    let bank = AdapterBank::new(random_adapters(&model, max_batch, 8, 42)?, model.config().num_hidden_layers)?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    crate::print_line(&format!(
        "decode throughput, {} ({quant:?}), prompt {} tokens, {} steps, threads: {threads}\n",
        args.model.display(),
        args.prompt_len,
        args.steps
    ));
    let prefill = (args.prefill_len > 0).then(|| prefill_rate(&model, args.prefill_len)).transpose()?;
    if let Some(rate) = prefill {
        crate::print_line(&format!("prefill of {} tokens at batch 1: {rate:.1} tok/s\n", args.prefill_len));
    }
    crate::print_line(
        "| batch | (a) base tok/s | (b) one adapter tok/s | (c) all different tok/s | (b)/(a) | (c)/(a) |",
    );
    crate::print_line("|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &b in &args.batch_sizes {
        let base = decode_rate(&model, &bank, &vec![None; b], args.prompt_len, args.steps)?;
        let one = decode_rate(&model, &bank, &vec![Some(0); b], args.prompt_len, args.steps)?;
        let all: Vec<Option<usize>> = (0..b).map(Some).collect();
        let different = decode_rate(&model, &bank, &all, args.prompt_len, args.steps)?;
        crate::print_line(&format!(
            "| {b} | {base:.1} | {one:.1} | {different:.1} | {:.3} | {:.3} |",
            one / base,
            different / base
        ));
        rows.push(Row { batch: b, base, one_adapter: one, all_different: different });
    }
    let peak_rss_bytes = super::peak_rss_bytes();
    if let Some(bytes) = peak_rss_bytes {
        crate::print_line(&format!("\nloaded in {load_s:.1} s; peak resident memory {:.2} GiB", bytes as f64 / GIB));
    }
    if let Some(path) = &args.json {
        let report = Report {
            model: args.model.clone(),
            quant: format!("{quant:?}"),
            threads,
            load_s,
            prefill_tokens: args.prefill_len,
            prefill_tok_s: prefill,
            prompt_len: args.prompt_len,
            steps: args.steps,
            rows,
            peak_rss_bytes,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.reference {
        reference_comparison(&args)?;
    }
    Ok(())
}

#[cfg(feature = "bench-reference")]
fn reference_comparison(args: &DecodeBenchArgs) -> anyhow::Result<()> {
    let theirs = super::reference::decode_rate(&args.model, args.prompt_len, args.steps)?;
    let model = Model::load(&args.model, &engine::LoadOptions::default())?;
    let empty = AdapterBank::default();
    let ours = decode_rate(&model, &empty, &[None], args.prompt_len, args.steps)?;
    crate::print_line(&format!(
        "\nbatch 1, file quantization kept: ours {ours:.1} tok/s, candle-transformers quantized_llama {theirs:.1} tok/s, ratio {:.2}",
        ours / theirs
    ));
    Ok(())
}

#[cfg(not(feature = "bench-reference"))]
fn reference_comparison(_: &DecodeBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("--reference needs a build with `--features bench-reference`")
}
