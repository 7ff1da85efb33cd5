//! `loraland bench load`: an in-process load generator for the engine handle, shaped like the LoRA Land load test:
//! N concurrent closed-loop streams, prompts of 90–110 words, 90–110 new tokens, adapters round-robin over K random
//! r=8 q/v adapters written to disk in bf16 like the trainer's (so first requests pay a real cold load), against the
//! same load on the base model alone, in one run. With `--while-training`, the base load again while a LoRA adapter
//! trains in the same process ([`Training`]).

use super::workload::{engine_config, pct, run_load, write_adapters, Outcome, PromptKind};
use super::LoadBenchArgs;
use anyhow::Context;
use app::train::types::TrainParams;
use app::train::worker::TrainSettings;
use app::train::TaskLab;
use engine::train::{LoraShape, TrainConfig, TrainRun};
use engine::{AdapterId, Engine, LoadOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs the load benchmark and prints a Markdown table.
pub fn run(args: LoadBenchArgs) -> anyhow::Result<()> {
    if args.random_model.is_some() {
        return super::random::run(&args);
    }
    let tmp = tempfile::tempdir()?;
    // Each adapter load gets adapters of its own, so that each starts cold whatever ran before it.
    let total_k: usize = args.adapters.iter().sum::<usize>().max(1);
    // The base's shape, for the random adapters and the cold-load timing below (the engine loads its own copy).
    let target = engine::Model::load(&args.model, &LoadOptions::default())?.adapter_target();
    let ids = write_adapters(tmp.path(), &target.config, total_k).context("writing random adapters")?;
    let (n, per, kind) = (args.streams, args.requests_per_stream, PromptKind::Words);
    // The loads of a round; the single stream, the constrained load and the one beside training are base loads too.
    let load = |label: String, streams, requests, adapters| Load {
        label,
        streams,
        requests,
        adapters,
        constrained: false,
        training: false,
    };
    let mut loads: Vec<Load<'_>> = Vec::new();
    if args.single_stream {
        loads.push(load("base, 1 stream".into(), 1, n * per, &[]));
    }
    loads.push(load(format!("base, {n} streams"), n, per, &[]));
    let mut first = 0;
    for &k in &args.adapters {
        loads.push(load(format!("K={k} adapters, {n} streams"), n, per, &ids[first..first + k]));
        first += k;
    }
    if args.constrained {
        let label = format!("base, {n} streams, half to a JSON schema");
        loads.push(Load { constrained: true, ..load(label, n, per, &[]) });
    }
    let training = match args.while_training {
        true => Some(Training::prepare(&args)?),
        false => None,
    };
    if let Some(t) = &training {
        let label = format!("base, {n} streams, while a LoRA trains ({} training threads)", t.threads);
        loads.push(Load { training: true, ..load(label, n, per, &[]) });
    }
    let schema = engine::Constraint::JsonSchema(super::workload::records_schema());
    let (mut rounds, mut adapter_loads, mut budget) = (Vec::new(), 0, 0);
    let mut training_steps: Vec<(usize, Duration)> = Vec::new();
    for round in 0..args.rounds {
        let engine = Engine::spawn(engine_config(&args, tmp.path(), n, total_k)?)?;
        budget = engine.config().step_token_budget();
        run_load(&engine, kind, "warm-up", 1, 1, |_, _, _| {})?;
        let mut outcomes: Vec<Option<Outcome>> = loads.iter().map(|_| None).collect();
        // Odd rounds run the loads in reverse, so that a steady drift weighs on both sides of each ratio.
        let order: Vec<usize> =
            if round % 2 == 0 { (0..loads.len()).collect() } else { (0..loads.len()).rev().collect() };
        for i in order {
            let l = &loads[i];
            let beside = match (l.training, &training) {
                (true, Some(t)) => Some(t.start()?),
                _ => None,
            };
            outcomes[i] = Some(run_load(&engine, kind, &l.label, l.streams, l.requests, |s, j, req| {
                req.adapter = (!l.adapters.is_empty()).then(|| l.adapters[(s + j * n) % l.adapters.len()].clone());
                if l.constrained && s % 2 == 1 {
                    req.constraint = Some(schema.clone());
                }
            })?);
            if let Some(running) = beside {
                training_steps.push(running.stop()?);
            }
        }
        adapter_loads += engine::EngineStats::get(&engine.stats().adapter_loads);
        rounds.push(outcomes.into_iter().map(|o| o.expect("every load ran")).collect::<Vec<_>>());
    }
    let base_at = usize::from(args.single_stream);
    let pooled: Vec<Outcome> =
        (0..loads.len()).map(|i| Outcome::pooled(&rounds.iter().map(|r| &r[i]).collect::<Vec<_>>())).collect();
    let base = &pooled[base_at];
    let p = |s: &str| crate::print_line(s);
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
    for i in (0..loads.len()).filter(|&i| !loads[i].adapters.is_empty() || loads[i].constrained || loads[i].training) {
        let (t, t_each) = per_round(i, &|o, base| o.tokens_per_s / base.tokens_per_s);
        let (f, f_each) = per_round(i, &|o, base| pct(&o.ttft, 0.5) / pct(&base.ttft, 0.5));
        p(&format!("- {}: tokens/s {t:.2}x ({t_each}); TTFT p50 {f:.2}x ({f_each})", loads[i].label));
    }
    if !training_steps.is_empty() {
        let steps: usize = training_steps.iter().map(|s| s.0).sum();
        let seconds: f64 = training_steps.iter().map(|s| s.1.as_secs_f64()).sum();
        p(&format!(
            "training beside serving: {steps} steps (batch 8, rank 8 q/v, glue_sst2 synthetic) in {seconds:.1} s, \
             {:.2} steps/s",
            steps as f64 / seconds
        ));
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

/// One load of a round.
struct Load<'a> {
    label: String,
    streams: usize,
    requests: usize,
    /// Adapters round-robin over the requests; none: the base model.
    adapters: &'a [AdapterId],
    /// Every other stream held to a JSON schema.
    constrained: bool,
    /// A LoRA adapter trains beside it.
    training: bool,
}

/// `--while-training`: a run of the demo adapters' settings (the web app's defaults) on a task's synthetic data,
/// stepped in the pool a `loraland serve` training job computes in, for as long as one load lasts.
struct Training {
    run: Arc<Mutex<TrainRun>>,
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
}

/// A training run going on beside a load: its stop flag and thread.
struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<(usize, Duration)>>,
}

impl Training {
    fn prepare(args: &LoadBenchArgs) -> anyhow::Result<Self> {
        let defaults = TrainSettings::default();
        let threads = args.train_threads.unwrap_or(defaults.threads).max(1);
        let p = TrainParams::default();
        let targets = p.targets.iter().filter_map(|t| engine::Module::from_name(t)).collect();
        let config = TrainConfig {
            shape: LoraShape { rank: p.rank, alpha: p.alpha, targets },
            lr: p.lr,
            // The learning rate's schedule spans far more steps than any load lasts.
            steps: 1_000_000,
            batch_size: p.batch,
            ..Default::default()
        };
        let (train, held) = crate::tasks::AppLab.synthetic("glue_sst2", defaults.synthetic_examples, 0, 0)?;
        let pool = app::train::worker::training_pool(threads)?;
        let run = pool.install(|| TrainRun::prepare(&args.model, &train, &held, defaults.seq_len, config))?;
        Ok(Self { run: Arc::new(Mutex::new(run)), pool: Arc::new(pool), threads })
    }

    /// Starts stepping (the first step begins at once) until [`Running::stop`].
    fn start(&self) -> anyhow::Result<Running> {
        let stop = Arc::new(AtomicBool::new(false));
        let (run, pool, flag) = (self.run.clone(), self.pool.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("bench-train".into()).spawn(move || {
            let mut guard = run.lock().map_err(|_| anyhow::anyhow!("a training step panicked"))?;
            let run: &mut TrainRun = &mut guard;
            let started = Instant::now();
            let mut steps = 0;
            while !flag.load(Ordering::Relaxed) {
                pool.install(|| run.trainer.step())?;
                steps += 1;
            }
            Ok((steps, started.elapsed()))
        })?;
        Ok(Running { stop, thread })
    }
}

impl Running {
    /// Stops after the step under way; the steps done and the time they took.
    fn stop(self) -> anyhow::Result<(usize, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the training thread panicked"))?
    }
}
