//! `loraland bench load`: an in-process load generator for the engine handle, shaped like the LoRA Land load test:
//! N concurrent closed-loop streams, prompts of 90–110 words, 90–110 new tokens, adapters round-robin over K random
//! r=8 q/v adapters written to disk in bf16 like the trainer's (so first requests pay a real cold load), against the
//! same load on the base model alone, in one run.

use super::workload::{engine_config, pct, run_load, write_adapters, Outcome, PromptKind};
use super::LoadBenchArgs;
use anyhow::Context;
use engine::{AdapterId, Engine, LoadOptions};
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
    // The loads of a round (label, streams, requests per stream, adapters, whether odd streams are constrained);
    // the single stream and the constrained load are base loads too.
    let mut loads: Vec<(String, usize, usize, &[AdapterId], bool)> = Vec::new();
    if args.single_stream {
        loads.push(("base, 1 stream".into(), 1, n * per, &[], false));
    }
    loads.push((format!("base, {n} streams"), n, per, &[], false));
    let mut first = 0;
    for &k in &args.adapters {
        loads.push((format!("K={k} adapters, {n} streams"), n, per, &ids[first..first + k], false));
        first += k;
    }
    if args.constrained {
        loads.push((format!("base, {n} streams, half to a JSON schema"), n, per, &[], true));
    }
    let schema = engine::Constraint::JsonSchema(super::workload::records_schema());
    let (mut rounds, mut adapter_loads, mut budget) = (Vec::new(), 0, 0);
    for round in 0..args.rounds {
        let engine = Engine::spawn(engine_config(&args, tmp.path(), n, total_k)?)?;
        budget = engine.config().step_token_budget();
        run_load(&engine, kind, "warm-up", 1, 1, |_, _, _| {})?;
        let mut outcomes: Vec<Option<Outcome>> = loads.iter().map(|_| None).collect();
        // Odd rounds run the loads in reverse, so that a steady drift weighs on both sides of each ratio.
        let order: Vec<usize> =
            if round % 2 == 0 { (0..loads.len()).collect() } else { (0..loads.len()).rev().collect() };
        for i in order {
            let (label, streams, requests, ids, constrained) = &loads[i];
            outcomes[i] = Some(run_load(&engine, kind, label, *streams, *requests, |s, j, req| {
                req.adapter = (!ids.is_empty()).then(|| ids[(s + j * n) % ids.len()].clone());
                if *constrained && s % 2 == 1 {
                    req.constraint = Some(schema.clone());
                }
            })?);
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
    for i in (0..loads.len()).filter(|&i| !loads[i].3.is_empty() || loads[i].4) {
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
