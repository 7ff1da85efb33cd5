//! `loraland bench load`: an in-process load generator for the engine handle, shaped like the LoRA Land load test:
//! N concurrent closed-loop streams, prompts of 90–110 words, 90–110 new tokens, adapters round-robin over K random
//! r=8 q/v adapters written to disk in bf16 like the trainer's (so first requests pay a real cold load), against the
//! same load on the base model alone, in one run.

use anyhow::Context;
use candle_core::DType;
use clap::Args;
use engine::registry::ResidencyLimits;
use engine::{
    AdapterId, Catalog, Engine, EngineConfig, EngineHandle, Event, GenerateRequest, LoadOptions, ModelConfig, Module,
    Prompt, SamplingParams,
};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    pub quant: crate::generate::QuantArg,
    /// Device and dtype.
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
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
    /// Concurrent streams to measure with `--random-model`.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub stream_counts: Vec<usize>,
}

const WORDS: &[&str] = &[
    "the", "model", "adapter", "question", "answer", "review", "product", "service", "customer", "weather", "report",
    "market", "city", "river", "history", "science", "music", "library", "garden", "summary", "travel", "energy",
    "policy", "health", "team", "season", "language", "number", "result", "table", "story", "friend", "morning",
];

struct Sample {
    ttft: Duration,
    itl: Vec<Duration>,
    tokens: usize,
}

pub(crate) struct Outcome {
    pub label: String,
    pub tokens_per_s: f64,
    pub ttft: Vec<Duration>,
    pub itl: Vec<Duration>,
    tokens: usize,
    seconds: f64,
}

impl Outcome {
    /// The outcomes of one load over several rounds as one: all samples, total tokens over total time.
    fn pooled(rounds: &[&Outcome]) -> Outcome {
        let (tokens, seconds) = (rounds.iter().map(|o| o.tokens).sum(), rounds.iter().map(|o| o.seconds).sum());
        Outcome {
            label: rounds[0].label.clone(),
            tokens_per_s: tokens as f64 / seconds,
            ttft: rounds.iter().flat_map(|o| o.ttft.iter().copied()).collect(),
            itl: rounds.iter().flat_map(|o| o.itl.iter().copied()).collect(),
            tokens,
            seconds,
        }
    }
}

/// What the streams send: text of 90-110 words, or (for a model with random weights) 90-110 random token ids.
#[derive(Clone, Copy)]
pub(crate) enum PromptKind {
    Words,
    TokenIds { vocab_size: u32 },
}

fn prompt(kind: PromptKind, rng: &mut rand::rngs::StdRng) -> Prompt {
    let n = rng.random_range(90..=110);
    match kind {
        PromptKind::Words => {
            Prompt::Text((0..n).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" "))
        }
        PromptKind::TokenIds { vocab_size } => {
            Prompt::Tokens((0..n).map(|_| rng.random_range(3..vocab_size)).collect())
        }
    }
}

/// Runs `streams` closed-loop clients; stream `i` uses `adapter_of(i, j)` for its `j`-th request.
pub(crate) fn run_load(
    engine: &EngineHandle,
    kind: PromptKind,
    label: &str,
    streams: usize,
    per_stream: usize,
    adapter_of: impl Fn(usize, usize) -> Option<AdapterId> + Sync,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let results: Vec<anyhow::Result<Vec<Sample>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..streams)
            .map(|i| {
                let adapter_of = &adapter_of;
                scope.spawn(move || -> anyhow::Result<Vec<Sample>> {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                    let mut samples = Vec::new();
                    for j in 0..per_stream {
                        let req = GenerateRequest {
                            prompt: prompt(kind, &mut rng),
                            adapter: adapter_of(i, j),
                            sampling: SamplingParams {
                                temperature: Some(1.0),
                                seed: (i * 1000 + j) as u64,
                                ..Default::default()
                            },
                            max_new_tokens: rng.random_range(90..=110),
                            ..GenerateRequest::default()
                        };
                        let sent = Instant::now();
                        let mut stream = engine.generate(req)?;
                        let (mut last, mut ttft, mut itl, mut tokens) = (sent, None, Vec::new(), 0);
                        while let Some(ev) = stream.blocking_next() {
                            match ev? {
                                Event::Token(_) => {
                                    let now = Instant::now();
                                    match ttft {
                                        None => ttft = Some(now - sent),
                                        Some(_) => itl.push(now - last),
                                    }
                                    last = now;
                                    tokens += 1;
                                }
                                Event::Finished(_) => break,
                            }
                        }
                        samples.push(Sample { ttft: ttft.unwrap_or_default(), itl, tokens });
                    }
                    Ok(samples)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("stream thread panicked"))))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let samples: Vec<Sample> = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?.into_iter().flatten().collect();
    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    Ok(Outcome {
        label: label.to_string(),
        tokens_per_s: tokens as f64 / elapsed,
        ttft: samples.iter().map(|s| s.ttft).collect(),
        itl: samples.into_iter().flat_map(|s| s.itl).collect(),
        tokens,
        seconds: elapsed,
    })
}

pub(crate) fn pct(xs: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn write_adapters(dir: &Path, config: &ModelConfig, n: usize) -> anyhow::Result<Vec<AdapterId>> {
    (0..n)
        .map(|i| {
            let id = format!("bench-{i:02}");
            engine::adapter::write_random_peft(
                &dir.join(&id),
                config,
                8,
                &[Module::Q, Module::V],
                1000 + i as u64,
                DType::BF16,
            )?;
            Ok(AdapterId::new(&id)?)
        })
        .collect()
}

/// An engine over `adapters_dir` for `streams` concurrent streams and `max_k` resident adapters.
pub(crate) fn engine_config(
    args: &LoadBenchArgs,
    adapters_dir: &Path,
    streams: usize,
    max_k: usize,
) -> anyhow::Result<EngineConfig> {
    let mut cfg = EngineConfig::new(&args.model);
    cfg.load = args.device.load_options(args.quant.into())?;
    cfg.catalog = Catalog { adapters_dir: Some(adapters_dir.to_path_buf()), allow_hub: false };
    cfg.limits = ResidencyLimits { max_adapters: max_k.max(1), ..ResidencyLimits::default() };
    cfg.max_batch_size = streams.max(1);
    cfg.max_batch_tokens = args.max_batch_tokens.map(std::num::NonZeroUsize::get);
    Ok(cfg)
}

/// Runs the load benchmark and prints a Markdown table.
pub fn run(args: LoadBenchArgs) -> anyhow::Result<()> {
    if args.random_model.is_some() {
        return crate::bench_random::run(&args);
    }
    let tmp = tempfile::tempdir()?;
    // Each adapter load gets adapters of its own, so that each starts cold whatever ran before it.
    let total_k: usize = args.adapters.iter().sum::<usize>().max(1);
    // The base's shape, for the random adapters and the cold-load timing below (the engine loads its own copy).
    let target = engine::Model::load(&args.model, &LoadOptions::default())?.adapter_target();
    let ids = write_adapters(tmp.path(), &target.config, total_k).context("writing random adapters")?;
    let (n, per, kind) = (args.streams, args.requests_per_stream, PromptKind::Words);
    // The loads of a round (label, streams, requests per stream, adapters); the single stream is a base load too.
    let mut loads: Vec<(String, usize, usize, &[AdapterId])> = Vec::new();
    if args.single_stream {
        loads.push(("base, 1 stream".into(), 1, n * per, &[]));
    }
    loads.push((format!("base, {n} streams"), n, per, &[]));
    let mut first = 0;
    for &k in &args.adapters {
        loads.push((format!("K={k} adapters, {n} streams"), n, per, &ids[first..first + k]));
        first += k;
    }
    let (mut rounds, mut adapter_loads, mut budget) = (Vec::new(), 0, 0);
    for round in 0..args.rounds {
        let engine = Engine::spawn(engine_config(&args, tmp.path(), n, total_k)?)?;
        budget = engine.config().step_token_budget();
        run_load(&engine, kind, "warm-up", 1, 1, |_, _| None)?;
        let mut outcomes: Vec<Option<Outcome>> = loads.iter().map(|_| None).collect();
        // Odd rounds run the loads in reverse, so that a steady drift weighs on both sides of each ratio.
        let order: Vec<usize> =
            if round % 2 == 0 { (0..loads.len()).collect() } else { (0..loads.len()).rev().collect() };
        for i in order {
            let (label, streams, requests, ids) = &loads[i];
            outcomes[i] = Some(run_load(&engine, kind, label, *streams, *requests, |s, j| {
                (!ids.is_empty()).then(|| ids[(s + j * n) % ids.len()].clone())
            })?);
        }
        adapter_loads += engine::EngineStats::get(&engine.stats().adapter_loads);
        rounds.push(outcomes.into_iter().map(|o| o.expect("every load ran")).collect::<Vec<_>>());
    }
    let base_at = usize::from(args.single_stream);
    let pooled: Vec<Outcome> =
        (0..loads.len()).map(|i| Outcome::pooled(&rounds.iter().map(|r| &r[i]).collect::<Vec<_>>())).collect();
    let base = &pooled[base_at];
    let p = |s: &str| crate::generate::print_line(s);
    p(&format!(
        "load: {} , {n} closed-loop streams x {per} requests, prompts 90-110 words, 90-110 new tokens, steps of at most \
         {budget} tokens, {} round(s) on fresh engines\n",
        args.model.display(),
        args.rounds
    ));
    p("| load | tokens/s | vs base | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |");
    p("|---|---:|---:|---:|---:|---:|---:|");
    let order = std::iter::once(base_at).chain((0..pooled.len()).filter(|&i| i != base_at));
    for o in order.map(|i| &pooled[i]) {
        p(&format!(
            "| {} | {:.1} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} |",
            o.label,
            o.tokens_per_s,
            o.tokens_per_s / base.tokens_per_s,
            pct(&o.ttft, 0.5),
            pct(&o.ttft, 0.99),
            pct(&o.itl, 0.5),
            pct(&o.itl, 0.99)
        ));
    }
    // Each ratio within its round, then the median over rounds.
    let per_round = |i: usize, f: &dyn Fn(&Outcome, &Outcome) -> f64| -> (f64, String) {
        let mut v: Vec<f64> = rounds.iter().map(|r| f(&r[i], &r[base_at])).collect();
        let listed = v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], listed)
    };
    p("\nratios to the base within each round: median (each round)");
    if args.single_stream {
        let (m, each) = per_round(0, &|one, base| base.tokens_per_s / one.tokens_per_s);
        p(&format!("- concurrency scaling, {n} streams / 1 stream, tokens/s: {m:.2}x ({each})"));
    }
    for i in (0..loads.len()).filter(|&i| !loads[i].3.is_empty()) {
        let (t, t_each) = per_round(i, &|o, base| o.tokens_per_s / base.tokens_per_s);
        let (f, f_each) = per_round(i, &|o, base| pct(&o.ttft, 0.5) / pct(&base.ttft, 0.5));
        p(&format!("- {}: tokens/s {t:.2}x ({t_each}); TTFT p50 {f:.2}x ({f_each})", loads[i].0));
    }
    // Cold loads of one r=8 q/v adapter from disk, off the batching thread.
    let mut times: Vec<Duration> = Vec::new();
    for id in ids.iter().take(10) {
        let t = Instant::now();
        engine::LoraAdapter::load(&tmp.path().join(id.as_str()), &target)?;
        times.push(t.elapsed());
    }
    p(&format!(
        "cold adapter load (r=8 q/v, from disk): p50 {:.1} ms, max {:.1} ms; adapter loads during the run: {adapter_loads}",
        pct(&times, 0.5),
        pct(&times, 1.0)
    ));
    Ok(())
}
