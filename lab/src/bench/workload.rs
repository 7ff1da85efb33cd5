//! The workload of `bench load`: prompts of 90–110 words (or token ids, for a random-weight model), 90–110 new
//! tokens, closed-loop streams through an engine handle, random adapters written to disk, and the figures taken
//! from what the streams saw.

use super::LoadBenchArgs;
use candle_core::DType;
use engine::registry::ResidencyLimits;
use engine::{
    AdapterId, Catalog, EngineConfig, EngineHandle, Event, GenerateRequest, ModelConfig, Module, Prompt, SamplingParams,
};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::{Duration, Instant};

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
    pub(crate) fn pooled(rounds: &[&Outcome]) -> Outcome {
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

/// The JSON schema of `bench load --constrained`: a list of 40 or more small records, longer than any request's
/// `max_new_tokens`, so that constrained rows generate as many tokens as free ones and the ratio measures the
/// masks alone.
pub(crate) fn records_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "array",
        "minItems": 40,
        "items": {
            "type": "object",
            "properties": {
                "word": {"type": "string", "maxLength": 12},
                "count": {"type": "integer", "minimum": 0, "maximum": 999},
                "kind": {"enum": ["noun", "verb", "other"]}
            },
            "required": ["word", "count", "kind"],
            "additionalProperties": false
        }
    })
}

/// Runs `streams` closed-loop clients; `shape(i, j, request)` sets the adapter (and anything else) of stream `i`'s
/// `j`-th request.
pub(crate) fn run_load(
    engine: &EngineHandle,
    kind: PromptKind,
    label: &str,
    streams: usize,
    per_stream: usize,
    shape: impl Fn(usize, usize, &mut GenerateRequest) + Sync,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let results: Vec<anyhow::Result<Vec<Sample>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..streams)
            .map(|i| {
                let shape = &shape;
                scope.spawn(move || -> anyhow::Result<Vec<Sample>> {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                    let mut samples = Vec::new();
                    for j in 0..per_stream {
                        let mut req = GenerateRequest {
                            prompt: prompt(kind, &mut rng),
                            sampling: SamplingParams {
                                temperature: Some(1.0),
                                seed: (i * 1000 + j) as u64,
                                ..Default::default()
                            },
                            max_new_tokens: rng.random_range(90..=110),
                            ..GenerateRequest::default()
                        };
                        shape(i, j, &mut req);
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
    cfg.catalog = Catalog { adapters_dir: Some(adapters_dir.to_path_buf()), allow_hub: false, ..Default::default() };
    cfg.limits = ResidencyLimits { max_adapters: max_k.max(1), ..ResidencyLimits::default() };
    cfg.max_batch_size = streams.max(1);
    cfg.max_batch_tokens = args.max_batch_tokens.map(std::num::NonZeroUsize::get);
    Ok(cfg)
}
