//! `loraland bench load --random-model mistral-7b`: the load of `bench load` on a model with random weights built on
//! the device (no download), shaped like the LoRA Land deployment: 25 random r=8 q/v adapters; 1, 8 and 32 streams;
//! every stream on the base model, on one adapter, or each on a different adapter. Next to tokens/s and TTFT it
//! prints the decode step (the inter-token latency p50: one step of the running batch) and its floor, the bytes of
//! weights a step reads over the device's measured memory bandwidth.

use super::workload::{engine_config, pct, run_load, write_adapters, PromptKind};
use super::LoadBenchArgs;
use crate::print_line;
use anyhow::Context;
use engine::{AdapterId, Engine, ModelConfig, RandomWeights};

/// Adapters of the LoRA Land deployment.
const ADAPTERS: usize = 25;

/// Runs the random-model load and prints a Markdown table.
pub fn run(args: &LoadBenchArgs) -> anyhow::Result<()> {
    let preset = args.random_model.as_deref().unwrap_or("mistral-7b");
    let config = ModelConfig::preset(preset)?;
    let tmp = tempfile::tempdir()?;
    let ids = write_adapters(tmp.path(), &config, ADAPTERS).context("writing random adapters")?;
    let max_streams = args.stream_counts.iter().copied().max().unwrap_or(1);
    let mut cfg = engine_config(args, tmp.path(), max_streams, ADAPTERS)?;
    cfg.model = format!("random {preset}").into();
    cfg.random_weights = Some(RandomWeights { config: config.clone(), seed: 0 });
    let device = cfg.load.device.clone();
    let bandwidth = engine::memory_bandwidth(&device)?;
    let engine = Engine::spawn(cfg)?;
    let info = engine.model_info().clone();
    let floor_ms = info.decode_weight_bytes as f64 / bandwidth * 1e3;
    let kind = PromptKind::TokenIds { vocab_size: config.vocab_size as u32 };
    let per = args.requests_per_stream;

    print_line(&format!(
        "load: random {preset} ({} layers, hidden {}) on {} in {}, {} closed-loop requests per stream, prompts \
         90-110 tokens, 90-110 new tokens, {ADAPTERS} random r=8 q/v adapters",
        config.num_hidden_layers, config.hidden_size, info.device, info.dtype, per
    ));
    print_line(&format!(
        "decode-step floor: {:.2} GB of weights / {:.0} GB/s measured (device copy) = {floor_ms:.2} ms\n",
        info.decode_weight_bytes as f64 / 1e9,
        bandwidth / 1e9
    ));
    print_line("| streams | adapters | tokens/s | vs base | TTFT p50 ms | TTFT p99 ms | decode step ms (ITL p50) | step / floor |");
    print_line("|---:|---|---:|---:|---:|---:|---:|---:|");
    // Warm-up (first kernels, first allocations), not reported.
    run_load(&engine, kind, "warm-up", 1, 1, |_, _, _| {})?;
    let one: &[AdapterId] = &ids[..1];
    for &n in &args.stream_counts {
        let loads: [(&str, Option<&[AdapterId]>); 3] =
            [("base only", None), ("one adapter", Some(one)), ("each a different one", Some(&ids))];
        let mut base_rate = None;
        for (label, adapters) in loads {
            let o = run_load(&engine, kind, label, n, per, |i, j, req| {
                req.adapter = adapters.map(|a| a[(i + j * n) % a.len()].clone());
            })?;
            let base = *base_rate.get_or_insert(o.tokens_per_s);
            let step = pct(&o.itl, 0.5);
            print_line(&format!(
                "| {n} | {label} | {:.1} | {:.2} | {:.0} | {:.0} | {step:.2} | {:.2} |",
                o.tokens_per_s,
                o.tokens_per_s / base,
                pct(&o.ttft, 0.5),
                pct(&o.ttft, 0.99),
                step / floor_ms
            ));
        }
    }
    Ok(())
}
