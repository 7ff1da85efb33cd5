//! Constrained decoding (llguidance) through the continuous batcher, on the tiny Llama fixture and its byte-level
//! BPE tokenizer: the model's weights are random, so sampled text is noise unless the constraint holds it. Rows
//! constrained to a JSON schema, a regex or a choice share a batch with free rows and other adapters; every
//! constrained row matches its constraint, and the free rows get exactly the tokens they get without them.

mod common;

use common::fixture;
use engine::{
    AdapterId, Catalog, Constraint, Engine, EngineConfig, EngineHandle, Error, Event, Field, FinishReason, Finished,
    GenerateRequest, Prompt, SamplingParams,
};

fn engine(faults: engine::Faults) -> EngineHandle {
    let mut cfg = EngineConfig::new(fixture("tiny-llama/base"));
    cfg.catalog =
        Catalog { adapters_dir: Some(fixture("tiny-llama/adapters")), allow_hub: false, ..Default::default() };
    cfg.max_input_tokens = 64;
    cfg.max_new_tokens = 160;
    cfg.faults = faults;
    Engine::spawn(cfg).unwrap()
}

fn request(prompt: &str, adapter: Option<&str>, seed: u64, constraint: Option<Constraint>) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text(prompt.into()),
        adapter: adapter.map(|a| AdapterId::new(a).unwrap()),
        sampling: SamplingParams { temperature: Some(1.0), seed, ..Default::default() },
        max_new_tokens: 150,
        constraint,
        ..GenerateRequest::default()
    }
}

/// Reads a stream to its end: the tokens' ids, their text joined, and the final event.
fn collect(mut stream: engine::GenerationStream) -> (Vec<u32>, String, Finished) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match stream.blocking_next() {
            Some(Ok(Event::Token(t))) => {
                ids.push(t.id);
                text.push_str(&t.text);
            }
            Some(Ok(Event::Finished(f))) => return (ids, text, f),
            Some(Err(e)) => panic!("the request failed: {e}"),
            None => panic!("stream ended without Finished"),
        }
    }
}

fn sentiment_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "label": {"enum": ["positive", "negative", "neutral"]},
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
            "tags": {"type": "array", "items": {"enum": ["a", "bb"]}, "maxItems": 3}
        },
        "required": ["label", "score", "tags"],
        "additionalProperties": false
    })
}

/// Whether `text` is a JSON object of [`sentiment_schema`].
fn check_sentiment(text: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text:?}"))?;
    let o = v.as_object().ok_or(format!("not an object: {text}"))?;
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    let label = o.get("label").and_then(|l| l.as_str()).unwrap_or("");
    let score = o.get("score").and_then(|s| s.as_i64()).unwrap_or(-1);
    let tags = o.get("tags").and_then(|t| t.as_array()).cloned().unwrap_or_default();
    let ok = keys.len() == 3
        && ["positive", "negative", "neutral"].contains(&label)
        && (0..=100).contains(&score)
        && o.get("tags").is_some_and(|t| t.is_array())
        && tags.len() <= 3
        && tags.iter().all(|t| t == "a" || t == "bb");
    if ok {
        Ok(())
    } else {
        Err(format!("does not match the schema: {text}"))
    }
}

const ADAPTERS: [Option<&str>; 4] = [None, Some("qv_r8"), Some("all_r4"), Some("mlp_r2")];

#[test]
fn json_rows_in_a_mixed_batch_are_valid_every_time_and_leave_the_free_rows_unchanged() {
    let engine = engine(Default::default());
    let free = |i: usize, round: u64| request(&format!("review {i}:"), ADAPTERS[i % 4], 100 * round + i as u64, None);
    for round in 0..3u64 {
        // The free rows alone (together, without constrained neighbours) give the reference tokens.
        let alone: Vec<_> = (0..8).map(|i| engine.generate(free(i, round)).unwrap()).collect();
        let expected: Vec<Vec<u32>> = alone.into_iter().map(|s| collect(s).0).collect();
        // 16 rows: the 8 free ones again, and 8 constrained to the schema, over the same adapters.
        let mut streams = Vec::new();
        for i in 0..8 {
            streams.push(engine.generate(free(i, round)).unwrap());
            let constraint = Some(Constraint::JsonSchema(sentiment_schema()));
            let seed = 7 + 100 * round + i as u64;
            streams.push(
                engine.generate(request(&format!("label {i}:"), ADAPTERS[(i + 1) % 4], seed, constraint)).unwrap(),
            );
        }
        for (k, stream) in streams.into_iter().enumerate() {
            let (ids, text, fin) = collect(stream);
            if k % 2 == 0 {
                assert_eq!(ids, expected[k / 2], "round {round}: free row {} changed beside constrained rows", k / 2);
            } else {
                check_sentiment(&fin.text).unwrap_or_else(|e| panic!("round {round}, row {k}: {e}"));
                assert_eq!(fin.reason, FinishReason::Eos, "a complete object ends the sequence");
                assert_eq!(text, fin.text, "the streamed text is the whole text");
            }
        }
    }
}

#[test]
fn regexes_choices_grammars_and_json_objects_hold_when_sampling() {
    let engine = engine(Default::default());
    type Holds = Box<dyn Fn(&str) -> bool>;
    let cases: Vec<(Constraint, Holds)> = vec![
        (
            Constraint::Regex("[0-9]{3}-[a-z]{2,4}".into()),
            Box::new(|t: &str| {
                let (digits, letters) = t.split_once('-').unwrap_or(("", ""));
                digits.len() == 3
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && (2..=4).contains(&letters.len())
                    && letters.bytes().all(|b| b.is_ascii_lowercase())
            }),
        ),
        (Constraint::Choice(vec!["yes".into(), "no".into(), "not \"sure\"".into()]), {
            Box::new(|t: &str| ["yes", "no", "not \"sure\""].contains(&t))
        }),
        (
            Constraint::Lark(
                "start: greeting \" \" name\ngreeting: \"hi\" | \"hello\"\nname: /[A-Z][a-z]{1,5}/".into(),
            ),
            Box::new(|t: &str| {
                let (g, n) = t.split_once(' ').unwrap_or(("", ""));
                ["hi", "hello"].contains(&g)
                    && (2..=6).contains(&n.len())
                    && n.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            }),
        ),
    ];
    for (constraint, holds) in &cases {
        let streams: Vec<_> = (0..6u64)
            .map(|seed| {
                engine.generate(request("x", ADAPTERS[seed as usize % 4], seed, Some(constraint.clone()))).unwrap()
            })
            .collect();
        for stream in streams {
            let (_, _, fin) = collect(stream);
            assert!(holds(&fin.text), "{constraint:?} gave {:?}", fin.text);
            assert_eq!(fin.reason, FinishReason::Eos, "{constraint:?}: {:?}", fin.text);
        }
    }
    // Any JSON object: with room enough it completes; it is JSON whenever it does.
    let objects: Vec<_> = (0..4u64)
        .map(|seed| engine.generate(request("{", None, seed, Some(Constraint::JsonObject))).unwrap())
        .collect();
    for stream in objects {
        let (_, _, fin) = collect(stream);
        if fin.reason == FinishReason::Eos {
            // JSON's syntax, checked without reading numbers into f64 (noise writes ones like 4.2E9666388).
            serde_json::from_str::<serde::de::IgnoredAny>(&fin.text).unwrap_or_else(|e| panic!("{e}: {}", fin.text));
            assert!(fin.text.starts_with('{') && fin.text.ends_with('}'), "{}", fin.text);
        } else {
            assert_eq!(fin.reason, FinishReason::Length, "{}", fin.text);
            assert!(fin.text.starts_with('{'), "{}", fin.text);
        }
    }
}

#[test]
fn a_grammar_that_does_not_compile_is_refused_naming_the_problem() {
    let engine = engine(Default::default());
    let refused = |constraint: Constraint| match engine.prepare(request("x", None, 1, Some(constraint))) {
        Err(Error::Invalid { field: Field::Constraint, reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let reason = refused(Constraint::Regex("([a-z]".into()));
    assert!(reason.contains("cannot be compiled"), "{reason}");
    let reason = refused(Constraint::JsonSchema(serde_json::json!({"type": "no-such-type"})));
    assert!(reason.contains("no-such-type"), "{reason}");
    let reason = refused(Constraint::Lark("start: missing_rule".into()));
    assert!(reason.contains("missing_rule"), "{reason}");
    let reason = refused(Constraint::JsonSchema(serde_json::json!(["not", "a", "schema"])));
    assert!(reason.contains("must be an object"), "{reason}");
    let reason = refused(Constraint::Choice(vec![]));
    assert!(reason.contains("between 1 and"), "{reason}");
    let reason = refused(Constraint::Regex("a".repeat(engine::constraint::MAX_GRAMMAR_BYTES + 1)));
    assert!(reason.contains("at most"), "{reason}");
    // The engine serves on.
    let (_, _, fin) =
        collect(engine.generate(request("x", None, 1, Some(Constraint::Choice(vec!["ok".into()])))).unwrap());
    assert_eq!(fin.text, "ok");
}

#[test]
fn a_constraint_that_dead_ends_stops_with_its_own_finish_reason() {
    let engine = engine(engine::Faults { dead_end_after: Some(3), ..Default::default() });
    let constraint = Some(Constraint::Regex("[a-z]{10,20}".into()));
    let stuck = engine.generate(request("x", Some("qv_r8"), 1, constraint)).unwrap();
    let mut free = request("x", Some("qv_r8"), 1, None);
    free.sampling.logit_bias = vec![(2, -100.0)]; // never its end-of-sequence token: it runs to its length
    let free = engine.generate(free).unwrap();
    let (ids, text, fin) = collect(stuck);
    assert_eq!(fin.reason, FinishReason::Constraint);
    assert_eq!((ids.len(), fin.generated_tokens), (3, 3));
    assert_eq!(text, fin.text, "what was streamed is the whole text");
    assert!(text.bytes().all(|b| b.is_ascii_lowercase()), "{text:?}");
    // A free row beside it goes on to its own end.
    let (_, _, fin) = collect(free);
    assert_eq!(fin.reason, FinishReason::Length);
    assert_eq!(fin.generated_tokens, 150);
}
