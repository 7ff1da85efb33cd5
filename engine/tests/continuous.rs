//! The continuous batcher behind `EngineHandle`, on the tiny Llama fixture: many concurrent requests over several
//! adapters give exactly what each gives alone; cancellation, eviction, broken adapters and overload behave.

mod common;

use common::{fixture, token_rows};
use engine::registry::ResidencyLimits;
use engine::{
    AdapterId, Catalog, Engine, EngineConfig, EngineHandle, EngineStats, Error, Event, Field, FinishReason, Finished,
    GenerateRequest, Prompt, SamplingParams,
};
use std::path::Path;
use std::time::{Duration, Instant};

fn config(adapters_dir: &Path) -> EngineConfig {
    let mut cfg = EngineConfig::new(fixture("tiny-llama/base"));
    cfg.catalog = Catalog { adapters_dir: Some(adapters_dir.to_path_buf()), allow_hub: false, ..Default::default() };
    cfg.max_input_tokens = 64;
    cfg.max_new_tokens = 200;
    cfg
}

fn request(prompt: &[u32], adapter: Option<&str>, max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Tokens(prompt.to_vec()),
        adapter: adapter.map(|a| AdapterId::new(a).unwrap()),
        sampling: SamplingParams::greedy(),
        max_new_tokens,
        stop: vec![],
        ..GenerateRequest::default()
    }
}

/// Reads a stream to its end: the token ids and the final event.
fn collect(mut stream: engine::GenerationStream) -> engine::Result<(Vec<u32>, Finished)> {
    let mut tokens = Vec::new();
    loop {
        match stream.blocking_next() {
            Some(Ok(Event::Token(t))) => tokens.push(t.id),
            Some(Ok(Event::Finished(f))) => {
                assert!(stream.blocking_next().is_none(), "nothing after Finished");
                return Ok((tokens, f));
            }
            Some(Err(e)) => return Err(e),
            None => panic!("stream ended without Finished"),
        }
    }
}

fn run_alone(engine: &EngineHandle, prompt: &[u32], adapter: Option<&str>, n: usize) -> Vec<u32> {
    collect(engine.generate(request(prompt, adapter, n)).unwrap()).unwrap().0
}

const ADAPTERS: [Option<&str>; 5] = [None, Some("qv_r8"), Some("all_r4"), Some("attn_r16_rslora"), Some("mlp_r2")];

#[test]
fn sixty_four_concurrent_requests_equal_each_alone() {
    let engine = Engine::spawn(config(&fixture("tiny-llama/adapters"))).unwrap();
    let prompts = token_rows(&common::tiny_set_reference("tiny-llama")["input_ids"]);
    let jobs: Vec<(Vec<u32>, Option<&str>, usize)> = (0..64)
        .map(|i| {
            let p = &prompts[i % 5];
            (p[..(4 + (i * 7) % 20)].to_vec(), ADAPTERS[(i / 5) % 5], 4 + i % 9)
        })
        .collect();
    let expected: Vec<Vec<u32>> = jobs.iter().map(|(p, a, n)| run_alone(&engine, p, *a, *n)).collect();
    let streams: Vec<_> = jobs.iter().map(|(p, a, n)| engine.generate(request(p, *a, *n)).unwrap()).collect();
    for (i, stream) in streams.into_iter().enumerate() {
        let (tokens, fin) = collect(stream).unwrap();
        assert_eq!(tokens, expected[i], "request {i} ({:?})", jobs[i].1);
        assert_eq!(fin.generated_tokens, tokens.len());
        assert_eq!(fin.prompt_tokens, jobs[i].0.len());
    }
    assert!(EngineStats::get(&engine.stats().steps) > 0);
}

#[test]
fn a_cancelled_stream_frees_its_slot() {
    let mut cfg = config(&fixture("tiny-llama/adapters"));
    cfg.max_batch_size = 1;
    let engine = Engine::spawn(cfg).unwrap();
    let prompt = [1u32, 5, 9, 13];
    let mut long = engine.generate(request(&prompt, Some("qv_r8"), 200)).unwrap();
    assert!(matches!(long.blocking_next(), Some(Ok(Event::Token(_)))));
    drop(long);
    let start = Instant::now();
    let (tokens, fin) = collect(engine.generate(request(&prompt, None, 5)).unwrap()).unwrap();
    assert_eq!(tokens.len(), 5);
    assert_eq!(fin.reason, FinishReason::Length);
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn an_evicted_adapter_reloads_and_gives_the_same_tokens() {
    let mut cfg = config(&fixture("tiny-llama/adapters"));
    cfg.limits = ResidencyLimits { max_adapters: 1, ..ResidencyLimits::default() };
    let engine = Engine::spawn(cfg).unwrap();
    let prompt = [1u32, 20, 30, 40, 50];
    let first = run_alone(&engine, &prompt, Some("qv_r8"), 8);
    let other = run_alone(&engine, &prompt, Some("all_r4"), 8);
    let again = run_alone(&engine, &prompt, Some("qv_r8"), 8);
    assert_eq!(first, again);
    assert_ne!(first, other, "different adapters should differ on this prompt");
    let stats = engine.stats();
    assert!(EngineStats::get(&stats.adapter_evictions) >= 2);
    assert_eq!(EngineStats::get(&stats.adapter_loads), 3);
    assert_eq!(EngineStats::get(&stats.adapters_resident), 1);
}

#[test]
fn a_discarded_adapter_is_read_again_from_its_changed_files() {
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &str| {
        let d = dir.path().join("mine");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixture("tiny-llama/adapters").join(from).join(f), d.join(f)).unwrap();
        }
    };
    let engine = Engine::spawn(config(dir.path())).unwrap();
    let reference = Engine::spawn(config(&fixture("tiny-llama/adapters"))).unwrap();
    let prompt = [1u32, 20, 30, 40, 50];
    copy("qv_r8");
    let first = run_alone(&engine, &prompt, Some("mine"), 8);
    assert_eq!(first, run_alone(&reference, &prompt, Some("qv_r8"), 8));
    // New files under the same id (a training job run again): the resident copy serves until it is discarded.
    copy("all_r4");
    assert_eq!(run_alone(&engine, &prompt, Some("mine"), 8), first, "still the resident copy");
    engine.discard_adapter(AdapterId::new("mine").unwrap()).unwrap();
    let after = run_alone(&engine, &prompt, Some("mine"), 8);
    assert_eq!(after, run_alone(&reference, &prompt, Some("all_r4"), 8));
    assert_ne!(after, first);
    assert_eq!(EngineStats::get(&engine.stats().adapter_loads), 2);
    // Gone from disk: discarded, its next request fails to load it instead of generating with the old copy.
    std::fs::remove_dir_all(dir.path().join("mine")).unwrap();
    engine.discard_adapter(AdapterId::new("mine").unwrap()).unwrap();
    assert!(engine.generate(request(&prompt, Some("mine"), 4)).and_then(collect).is_err());
}

/// Reads a stream to its end on another thread, failing the test if it takes longer than `secs`.
fn collect_within(stream: engine::GenerationStream, secs: u64) -> engine::Result<(Vec<u32>, Finished)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(collect(stream));
    });
    rx.recv_timeout(Duration::from_secs(secs)).expect("the request never finished")
}

/// Adapters swap under a limit of one while the batch is full: a request whose resident adapter is evicted while it
/// waits (for an adapter whose request came first) gets it loaded again, and every request completes with the
/// tokens it gives alone. Neither adapter evicts the other while both have requests waiting, and the engine does not
/// stall once the batch empties with an adapter still waiting for room.
#[test]
fn a_waiting_request_whose_adapter_is_evicted_gets_it_back() {
    let mut cfg = config(&fixture("tiny-llama/adapters"));
    cfg.limits = ResidencyLimits { max_adapters: 1, ..ResidencyLimits::default() };
    cfg.max_batch_size = 1;
    let engine = Engine::spawn(cfg).unwrap();
    let prompt = [1u32, 20, 30, 40, 50];
    let want_b = run_alone(&engine, &prompt, Some("all_r4"), 6);
    let want_a = run_alone(&engine, &prompt, Some("qv_r8"), 6);
    let stats = engine.stats();
    let (evictions, loads) = (EngineStats::get(&stats.adapter_evictions), EngineStats::get(&stats.adapter_loads));
    // The base model fills the batch; qv_r8 is resident and idle.
    let mut long = engine.generate(request(&prompt, None, 200)).unwrap();
    assert!(matches!(long.blocking_next(), Some(Ok(Event::Token(_)))));
    // all_r4's request comes first, then one for qv_r8: all_r4 loads and evicts qv_r8.
    let b = engine.generate(request(&prompt, Some("all_r4"), 6)).unwrap();
    let a = engine.generate(request(&prompt, Some("qv_r8"), 6)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while EngineStats::get(&stats.adapter_evictions) == evictions && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(long);
    assert_eq!(collect_within(b, 20).unwrap().0, want_b);
    assert_eq!(collect_within(a, 20).unwrap().0, want_a);
    // all_r4 in, qv_r8 back: two loads and two evictions, no back and forth.
    assert_eq!(EngineStats::get(&stats.adapter_loads) - loads, 2);
    assert_eq!(EngineStats::get(&stats.adapter_evictions) - evictions, 2);
}

/// An adapter discarded while a load of its old files is still on its way serves its new files: the old load,
/// no longer the current one, is dropped; kept, it took the adapter's place, the load started after the discard was
/// dropped as a duplicate, and the adapter served its old weights until evicted.
#[test]
fn an_adapter_discarded_while_it_loads_serves_its_new_files() {
    let dir = tempfile::tempdir().unwrap();
    // The adapter's folder is swapped whole (a rename), so that a load reads either files, never a mix.
    let install = |from: &str| {
        let staged = dir.path().join(format!("staged-{from}"));
        std::fs::create_dir(&staged).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixture("tiny-llama/adapters").join(from).join(f), staged.join(f)).unwrap();
        }
        let mine = dir.path().join("mine");
        if mine.exists() {
            std::fs::rename(&mine, dir.path().join(format!("old-{from}"))).unwrap();
        }
        std::fs::rename(staged, mine).unwrap();
    };
    let mut cfg = config(dir.path());
    // Each load of it waits 2 s after reading the files: time to change them and discard it meanwhile.
    cfg.faults.slow_loading = Some((AdapterId::new("mine").unwrap(), Duration::from_secs(2)));
    let engine = Engine::spawn(cfg).unwrap();
    let reference = Engine::spawn(config(&fixture("tiny-llama/adapters"))).unwrap();
    let prompt = [1u32, 20, 30, 40, 50];
    install("qv_r8");
    let before = engine.generate(request(&prompt, Some("mine"), 8)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    install("all_r4");
    engine.discard_adapter(AdapterId::new("mine").unwrap()).unwrap();
    let after = engine.generate(request(&prompt, Some("mine"), 8)).unwrap();
    let new = run_alone(&reference, &prompt, Some("all_r4"), 8);
    assert_ne!(new, run_alone(&reference, &prompt, Some("qv_r8"), 8));
    assert_eq!(collect_within(after, 30).unwrap().0, new, "a request after the discard gets the new files");
    assert_eq!(collect_within(before, 30).unwrap().0, new, "so does the one that waited through it");
    assert_eq!(EngineStats::get(&engine.stats().adapter_loads), 1, "the old load was dropped, not counted");
}

/// A request too large for the room left in the batch is not passed over for as long as smaller requests keep the
/// batch full: the requests submitted after it wait until it has joined. (Passed over, it waited for the whole
/// backlog here, and for ever under steady load: a request that never ends while the server looks healthy.)
#[test]
fn a_large_request_is_not_starved_by_smaller_ones_that_keep_the_batch_full() {
    let mut cfg = config(&fixture("tiny-llama/adapters"));
    cfg.max_kv_tokens = 40;
    let engine = Engine::spawn(cfg).unwrap();
    // Resident: the large request waits only for room.
    run_alone(&engine, &[1, 2, 3, 4], Some("qv_r8"), 1);
    // Small base requests of 7 to 11 KV tokens with staggered ends: one leaving makes room for the next, never for
    // the large one (34 of the 40), which fits only beside at most one of them.
    let small = |i: usize| request(&[1, 5 + (i % 7) as u32, 9, 13], None, 3 + i % 5);
    // Each submission between two instants: its engine-side submission time lies between them.
    let submit = |r: GenerateRequest| {
        let before = Instant::now();
        let stream = engine.generate(r).unwrap();
        (before, Instant::now(), stream)
    };
    let older: Vec<_> = (0..8).map(|i| submit(small(i))).collect();
    let (large_before, _, large) = submit(request(&[1, 20, 30, 40], Some("qv_r8"), 30));
    let younger: Vec<_> = (8..48).map(|i| submit(small(i))).collect();
    let (tokens, large) = collect_within(large, 60).unwrap();
    assert_eq!(tokens.len(), large.generated_tokens);
    // When the large request joined the batch, at the earliest: and the latest each younger one could have joined.
    let large_joined = large_before + large.timings.queue;
    let mut joined_before = 0;
    for (_, after, stream) in younger {
        let (_, fin) = collect_within(stream, 60).unwrap();
        joined_before += usize::from(after + fin.timings.queue < large_joined);
    }
    assert_eq!(joined_before, 0, "younger requests joined the batch before the large one");
    for (_, _, stream) in older {
        collect_within(stream, 60).unwrap();
    }
}

/// A request larger than the batch's whole KV budget (prompt plus `max_new_tokens`, times its continuations) is
/// refused at once by the request contract, naming the field to lower: it could never join the batch beside anything.
#[test]
fn a_request_over_the_kv_budget_is_refused_at_once() {
    let mut cfg = config(&fixture("tiny-llama/adapters"));
    cfg.max_kv_tokens = 40;
    let engine = Engine::spawn(cfg).unwrap();
    let over = |err: &Error, need: &str| {
        matches!(err, Error::Invalid { field: Field::MaxNewTokens, reason }
            if reason.contains(&format!("needs {need} tokens of KV cache")) && reason.contains("budget of 40"))
    };
    let err = engine.generate(request(&[1, 2, 3, 4], None, 37)).unwrap_err();
    assert!(over(&err, "41"), "{err}");
    let n = |n| GenerateRequest { n: Some(n), ..request(&[1, 2, 3, 4], None, 6) };
    let err = engine.generate(n(5)).unwrap_err();
    assert!(over(&err, "50"), "{err}");
    let mut four = engine.generate(n(4)).expect("4 x (4 + 6) fits");
    let mut finished = 0;
    while let Some(event) = four.blocking_next() {
        finished += usize::from(matches!(event.unwrap(), Event::Finished(_)));
    }
    assert_eq!(finished, 4);
}

#[test]
fn a_corrupt_adapter_fails_only_its_own_requests() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["qv_r8", "broken"] {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixture("tiny-llama/adapters/qv_r8").join(f), d.join(f)).unwrap();
        }
    }
    let broken = dir.path().join("broken/adapter_model.safetensors");
    let bytes = std::fs::read(&broken).unwrap();
    std::fs::write(&broken, &bytes[..100]).unwrap();
    let engine = Engine::spawn(config(dir.path())).unwrap();
    let prompt = [1u32, 7, 8, 9];
    let good: Vec<_> = (0..3).map(|_| engine.generate(request(&prompt, Some("qv_r8"), 6)).unwrap()).collect();
    let bad: Vec<_> = (0..3).map(|_| engine.generate(request(&prompt, Some("broken"), 6)).unwrap()).collect();
    let base = engine.generate(request(&prompt, None, 6)).unwrap();
    for s in bad {
        let err = collect(s).unwrap_err();
        assert!(matches!(err, Error::AdapterLoad { ref id, .. } if id.as_str() == "broken"), "{err:?}");
        assert!(err.to_string().contains("adapter_model.safetensors"), "{err}");
        let folder = dir.path().display().to_string();
        assert!(!err.to_string().contains(&folder), "no server path reaches a client: {err}");
    }
    for s in good {
        assert_eq!(collect(s).unwrap().0.len(), 6);
    }
    assert_eq!(collect(base).unwrap().0.len(), 6);
    // The server goes on; a later request for the broken adapter is retried (and fails again, with the cause). (The
    // three first requests cost one load each at most: a request whose caller started a new load after the last
    // one failed may itself be failed by that earlier failure, its own load's failure still to be counted.)
    let failures = EngineStats::get(&engine.stats().adapter_load_failures);
    assert!((1..=3).contains(&failures), "{failures}");
    let retry = collect(engine.generate(request(&prompt, Some("broken"), 6)).unwrap()).unwrap_err();
    assert!(matches!(retry, Error::AdapterLoad { .. }));
    let after = EngineStats::get(&engine.stats().adapter_load_failures);
    assert!(after > failures && after <= 4, "{failures} then {after}");
}

#[test]
fn a_full_queue_answers_overloaded_and_bad_requests_fail_before_queueing() {
    let mut cfg = config(&fixture("tiny-llama/adapters"));
    cfg.max_queue = 2;
    let engine = Engine::spawn(cfg).unwrap();
    let prompt = [1u32, 2, 3];
    let a = engine.generate(request(&prompt, None, 150)).unwrap();
    let b = engine.generate(request(&prompt, None, 150)).unwrap();
    let err = engine.generate(request(&prompt, None, 5)).unwrap_err();
    assert!(matches!(err, Error::Overloaded { waiting: 2 }), "{err:?}");
    drop((a, b));
    // Once the two finish or are cancelled, there is room again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ok = loop {
        match engine.generate(request(&prompt, None, 3)) {
            Ok(s) => break collect(s).unwrap(),
            Err(Error::Overloaded { .. }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(ok.0.len(), 3);

    let long = vec![5u32; 65];
    assert!(matches!(engine.generate(request(&long, None, 3)), Err(Error::PromptTooLong { len: 65, max: 64 })));
    assert!(matches!(engine.generate(request(&prompt, None, 0)), Err(Error::MaxNewTokens { requested: 0, .. })));
    assert!(matches!(engine.generate(request(&prompt, None, 201)), Err(Error::MaxNewTokens { max: 200, .. })));
    assert!(matches!(engine.generate(request(&prompt, Some("nope"), 3)), Err(Error::UnknownAdapter(_))));
    assert!(matches!(engine.generate(request(&[], None, 3)), Err(Error::EmptyPrompt)));
    assert!(AdapterId::new("../../etc").is_err());
}

#[test]
fn stop_sequences_end_the_text_before_them() {
    let engine = Engine::spawn(config(&fixture("tiny-llama/adapters"))).unwrap();
    let prompt = [1u32, 11, 12, 13];
    let (_, full) = collect(engine.generate(request(&prompt, None, 12)).unwrap()).unwrap();
    assert!(full.text.chars().count() >= 4, "need some text to cut: {:?}", full.text);
    let cut_at: String = full.text.chars().skip(2).take(2).collect();
    let mut req = request(&prompt, None, 12);
    req.stop = vec![cut_at.clone()];
    let mut stream = engine.generate(req).unwrap();
    let mut streamed = String::new();
    let fin = loop {
        match stream.blocking_next().unwrap().unwrap() {
            Event::Token(t) => streamed.push_str(&t.text),
            Event::Finished(f) => break f,
        }
    };
    let expected = &full.text[..full.text.find(&cut_at).unwrap()];
    assert_eq!(fin.reason, FinishReason::StopSequence);
    assert_eq!(fin.text, expected);
    assert_eq!(streamed, expected, "streamed pieces never include the stop sequence");
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_of_the_step_budget() {
    let prompt: Vec<u32> = (0..40).map(|i| 3 + (i * 37) % 200).collect();
    let whole = Engine::spawn(config(&fixture("tiny-llama/adapters"))).unwrap();
    assert_eq!(whole.config().step_token_budget(), engine::config::DEFAULT_MAX_BATCH_TOKENS_CPU);
    let expected = run_alone(&whole, &prompt, Some("qv_r8"), 3);

    let mut cfg = config(&fixture("tiny-llama/adapters"));
    cfg.max_batch_tokens = Some(4);
    let chunked = Engine::spawn(cfg).unwrap();
    let steps = EngineStats::get(&chunked.stats().steps);
    let (tokens, fin) = collect(chunked.generate(request(&prompt, Some("qv_r8"), 3)).unwrap()).unwrap();
    assert_eq!(tokens, expected, "the same tokens, prefilled 4 tokens at a time");
    assert_eq!(fin.prompt_tokens, 40);
    // Ten steps of four prompt tokens (the tenth gives the first token), then one step per further token.
    assert_eq!(EngineStats::get(&chunked.stats().steps) - steps, 10 + 2);

    for (field, edit) in [
        ("max_batch_tokens", (|c: &mut EngineConfig| c.max_batch_tokens = Some(0)) as fn(&mut EngineConfig)),
        ("max_batch_size", |c| c.max_batch_size = 0),
        ("max_queue", |c| c.max_queue = 0),
    ] {
        let mut cfg = config(&fixture("tiny-llama/adapters"));
        edit(&mut cfg);
        match Engine::spawn(cfg) {
            Err(Error::Config(msg)) => assert!(msg.contains(field), "{msg}"),
            other => panic!("{field} = 0: {:?}", other.map(|_| ())),
        }
    }
}

/// `n` continuations: the prompt is prefilled once, each continuation samples with seed + its index (so it is what
/// a single request with that seed gets), and the stream ends after the last one's final event.
#[test]
fn n_continuations_share_one_prefill_and_each_equals_its_seed_alone() {
    let engine = Engine::spawn(config(&fixture("tiny-llama/adapters"))).unwrap();
    let prompt: Vec<u32> = (5..25).collect();
    let sampled = |seed: u64, n: Option<usize>| GenerateRequest {
        sampling: SamplingParams { temperature: Some(1.0), seed, ..Default::default() },
        n,
        ..request(&prompt, Some("all_r4"), 12)
    };
    let alone: Vec<Vec<u32>> =
        (0..3).map(|c| collect(engine.generate(sampled(40 + c, None)).unwrap()).unwrap().0).collect();
    assert!(alone[0] != alone[1] || alone[1] != alone[2], "different seeds give different runs");

    let before = EngineStats::get(&engine.stats().prefill_tokens);
    let mut stream = engine.generate(sampled(40, Some(3))).unwrap();
    let mut tokens = vec![Vec::new(); 3];
    let mut finished = Vec::new();
    while let Some(event) = stream.blocking_next() {
        match event.unwrap() {
            Event::Token(t) => tokens[t.choice].push(t.id),
            Event::Finished(f) => finished.push(f.choice),
        }
    }
    finished.sort_unstable();
    assert_eq!(finished, vec![0, 1, 2], "one final event per continuation, then the end");
    assert_eq!(tokens, alone);
    assert_eq!(EngineStats::get(&engine.stats().prefill_tokens) - before, prompt.len() as u64, "prefilled once");

    // Out of range: refused by name.
    for n in [0, 17] {
        match engine.prepare(sampled(1, Some(n))) {
            Err(Error::Invalid { field: engine::Field::N, reason }) => {
                assert!(reason.contains("between 1 and 16"), "{reason}")
            }
            other => panic!("n = {n}: {other:?}"),
        }
    }
}
