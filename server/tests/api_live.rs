//! The API on a real listener (port 0): server-sent events read by an SSE client, a suite of bad requests that
//! must each get the right 4xx and message without hurting the server, concurrent requests over adapters, client
//! disconnects that cancel generation, and a full queue answered 429.

mod common;

use common::{engine_config, listen, state};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};
use server::config::HttpOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PROMPT: &str = "Hello adapters";

async fn live() -> (SocketAddr, app::state::AppState) {
    let st = state(Some(engine_config())).await;
    (listen(st.clone(), HttpOptions::default()).await, st)
}

async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let res = reqwest::Client::new().post(format!("http://{addr}{path}")).json(body).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// The `data` of every event of an SSE response, with the event names.
async fn sse(addr: SocketAddr, path: &str, body: &Value) -> Vec<(String, String)> {
    let res = reqwest::Client::new().post(format!("http://{addr}{path}")).json(body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut events = res.bytes_stream().eventsource();
    let mut out = Vec::new();
    while let Some(e) = events.next().await {
        let e = e.unwrap();
        out.push((e.event, e.data));
    }
    out
}

#[tokio::test]
async fn sse_streams_read_by_an_sse_client() {
    let (addr, _st) = live().await;
    let params = json!({"adapter_id": "qv_r8", "max_new_tokens": 9, "details": true});
    let (_, whole) = post_json(addr, "/generate", &json!({"inputs": PROMPT, "parameters": params.clone()})).await;
    let events = sse(addr, "/generate_stream", &json!({"inputs": PROMPT, "parameters": params})).await;
    assert_eq!(events.len(), 9);
    let parsed: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    let text: String = parsed.iter().map(|e| e["token"]["text"].as_str().unwrap()).collect();
    assert_eq!(text, whole["generated_text"].as_str().unwrap());
    assert_eq!(parsed[8]["details"]["finish_reason"], "length");

    let chat = json!({"model": "qv_r8", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                      "temperature": 0, "stream": true});
    let events = sse(addr, "/v1/chat/completions", &chat).await;
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert!(events.iter().all(|(name, _)| name == "message"), "no error events: {events:?}");
}

#[tokio::test]
async fn concurrent_requests_over_adapters_each_match_their_solo_run() {
    let (addr, _st) = live().await;
    let adapters = [None, Some("qv_r8"), Some("all_r4"), Some("attn_r16_rslora"), Some("mlp_r2")];
    let body = |a: Option<&str>, i: usize| json!({"inputs": format!("{PROMPT} number {i}"), "parameters": {"adapter_id": a, "max_new_tokens": 10}});
    let mut solo = Vec::new();
    for (i, a) in adapters.iter().enumerate() {
        solo.push(post_json(addr, "/generate", &body(*a, i)).await.1["generated_text"].clone());
    }
    let tasks: Vec<_> = (0..20)
        .map(|k| {
            let i = k % adapters.len();
            let b = body(adapters[i], i);
            tokio::spawn(async move { (i, post_json(addr, "/generate", &b).await) })
        })
        .collect();
    for t in tasks {
        let (i, (status, v)) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(v["generated_text"], solo[i], "request for {:?}", adapters[i]);
    }
}

#[tokio::test]
async fn openai_logit_bias_bans_and_forces_tokens() {
    let (addr, _st) = live().await;
    let lorax = json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "details": true}});
    let (_, greedy) = post_json(addr, "/generate", &lorax).await;
    let ids: Vec<u64> =
        greedy["details"]["tokens"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let text = |v: &Value| v["choices"][0]["text"].as_str().unwrap().to_string();
    // The base model's name is what /v1/models lists first.
    let models = reqwest::get(format!("http://{addr}/v1/models")).await.unwrap().json::<Value>().await.unwrap();
    let base = models["data"][0]["id"].clone();
    let with = |extra: Value| {
        let mut body = json!({"model": base, "prompt": PROMPT, "max_tokens": 4, "temperature": 0});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, plain) = post_json(addr, "/v1/completions", &with(json!({}))).await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(text(&plain), greedy["generated_text"].as_str().unwrap(), "the same greedy run on both routes");
    // Banning the first greedy token changes the run; forcing a token makes every token that one.
    let (status, banned) =
        post_json(addr, "/v1/completions", &with(json!({"logit_bias": {ids[0].to_string(): -100}}))).await;
    assert_eq!(status, 200, "{banned}");
    assert_ne!(text(&banned), text(&plain));
    let forced_id = ids[1] as u32;
    let (status, forced) =
        post_json(addr, "/v1/completions", &with(json!({"logit_bias": {forced_id.to_string(): 100}}))).await;
    assert_eq!(status, 200, "{forced}");
    let tok = engine::Tokenizer::for_model(&common::fixtures().join("base")).unwrap();
    assert_eq!(text(&forced), tok.decode(&[forced_id; 4], true).unwrap());
    // The penalties are taken (and checked by the engine: see the bad-input suite).
    let (status, penalized) =
        post_json(addr, "/v1/completions", &with(json!({"presence_penalty": 1.5, "frequency_penalty": -0.5}))).await;
    assert_eq!(status, 200, "{penalized}");
}

/// `merged_adapters`: one adapter merged at weight 1 generates what the adapter does (token by token, with its
/// log-probabilities: the tiny model's greedy text is alike for every adapter); a TIES merge of two runs as an
/// adapter of its own, resident under its `merged:` id, streamed too.
#[tokio::test]
async fn merged_adapters_generate_as_an_adapter_of_their_own() {
    let (addr, st) = live().await;
    let run = |parameters: Value| {
        let mut p = json!({"max_new_tokens": 8, "details": true});
        p.as_object_mut().unwrap().extend(parameters.as_object().unwrap().clone());
        async move {
            let (status, body) = post_json(addr, "/generate", &json!({"inputs": PROMPT, "parameters": p})).await;
            assert_eq!(status, 200, "{body}");
            body["details"]["tokens"].as_array().unwrap().iter().map(|t| t["logprob"].as_f64().unwrap()).collect()
        }
    };
    let gap = |a: &Vec<f64>, b: &Vec<f64>| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let plain: Vec<f64> = run(json!({"adapter_id": "qv_r8"})).await;
    let base: Vec<f64> = run(json!({})).await;
    let one: Vec<f64> = run(json!({"merged_adapters": {"ids": ["qv_r8"], "weights": [1.0], "density": 1.0}})).await;
    assert!(gap(&one, &plain) < 1e-4, "a merge of one adapter at weight 1 is the adapter: {one:?} {plain:?}");
    assert!(gap(&one, &base) > 1e-3, "and not the base model");
    let half: Vec<f64> = run(json!({"merged_adapters": {"ids": ["qv_r8"], "weights": [0.5]}})).await;
    assert!(gap(&half, &plain) > 1e-3 && gap(&half, &base) > 1e-3, "half the adapter is neither");
    let ties = json!({"ids": ["qv_r8", "qv_r8"], "weights": [0.5, 1.0], "merge_strategy": "ties", "density": 0.4});
    let body = json!({"inputs": PROMPT, "parameters": {"merged_adapters": ties, "max_new_tokens": 8}});
    let events = sse(addr, "/generate_stream", &body).await;
    assert_eq!(events.len(), 8, "one event per token: {events:?}");
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert!(last["generated_text"].is_string(), "{last}");
    let resident = st.engine.get().unwrap().stats().adapter_activity().resident;
    assert_eq!(resident.iter().filter(|id| id.starts_with("merged:")).count(), 3, "{resident:?}");
}

#[tokio::test]
async fn constrained_output_and_logprobs_on_both_routes() {
    let (addr, _st) = live().await;
    let schema = json!({
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["answer", "n"],
        "additionalProperties": false
    });
    let valid = |text: &str| {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
        assert!(["yes", "no"].contains(&v["answer"].as_str().unwrap_or("")), "{text}");
        assert!(v["n"].as_i64().is_some_and(|n| (0..=9).contains(&n)), "{text}");
    };
    // LoRAX's form, sampled (the tiny model's text is noise otherwise), with an adapter.
    for seed in 0..3 {
        let params = json!({"adapter_id": "qv_r8", "max_new_tokens": 60, "do_sample": true, "seed": seed,
                            "response_format": {"type": "json_object", "schema": schema}, "details": true});
        let (status, v) = post_json(addr, "/generate", &json!({"inputs": PROMPT, "parameters": params})).await;
        assert_eq!(status, 200, "{v}");
        valid(v["generated_text"].as_str().unwrap());
        assert_eq!(v["details"]["finish_reason"], "eos_token");
    }
    // OpenAI's form, streamed: the deltas join to the object.
    let models = reqwest::get(format!("http://{addr}/v1/models")).await.unwrap().json::<Value>().await.unwrap();
    let base = models["data"][0]["id"].clone();
    let chat = json!({"model": base, "messages": [{"role": "user", "content": "answer"}], "max_tokens": 60,
                      "seed": 4, "stream": true, "logprobs": true, "top_logprobs": 2,
                      "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}});
    let events = sse(addr, "/v1/chat/completions", &chat).await;
    let chunks: Vec<Value> =
        events.iter().filter(|(_, d)| d != "[DONE]").map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    valid(&content);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    let entries: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array()).flatten().collect();
    let tokens: String = entries.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert_eq!(tokens, content, "one logprobs entry per token, in order");
    for e in &entries {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
    }

    // Completions' logprobs equal the LoRAX details' of the same greedy run; the greedy token is the top one.
    let lorax = json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": true}});
    let (_, greedy) = post_json(addr, "/generate", &lorax).await;
    let body = json!({"model": base, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 3});
    let (status, v) = post_json(addr, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let details = greedy["details"]["tokens"].as_array().unwrap();
    let ours: Vec<f64> = lp["token_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let theirs: Vec<f64> = details.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
    assert_eq!(ours, theirs);
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!((1..=4).contains(&top.len()), "{top:?}");
        let best = top.values().map(|x| x.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert_eq!(best, ours[i], "the greedy token is the most likely");
    }
    let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test]
async fn n_choices_and_best_of_sample_each_choice_with_its_own_seed() {
    let (addr, _st) = live().await;
    let chat = |n: Option<u64>, seed: u64, stream: bool| {
        json!({"model": "qv_r8", "messages": [{"role": "user", "content": "go"}], "max_tokens": 8, "seed": seed,
               "n": n, "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }})
    };
    let content = |v: &Value, i: usize| v["choices"][i]["message"]["content"].as_str().unwrap().to_string();
    let (status, three) = post_json(addr, "/v1/chat/completions", &chat(Some(3), 20, false)).await;
    assert_eq!(status, 200, "{three}");
    let choices = three["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let mut total = 0;
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let (_, alone) = post_json(addr, "/v1/chat/completions", &chat(None, 20 + i as u64, false)).await;
        assert_eq!(content(&three, i), content(&alone, 0), "choice {i} is seed {} alone", 20 + i);
        total += alone["usage"]["completion_tokens"].as_u64().unwrap();
    }
    assert_eq!(three["usage"]["completion_tokens"], total);
    // Streamed: each choice's deltas join to its text; usage and [DONE] come once, at the end.
    let events = sse(addr, "/v1/chat/completions", &chat(Some(3), 20, true)).await;
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    for i in 0..3 {
        let text: String = (chunks.iter())
            .filter(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty()) && c["choices"][0]["index"] == i)
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, content(&three, i));
    }
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], total);

    // LoRAX best_of: the likeliest of the sequences, the others beside it; each seed replays its sequence.
    let params = json!({"best_of": 3, "do_sample": true, "seed": 7, "max_new_tokens": 6, "details": true});
    let (status, best) = post_json(addr, "/generate", &json!({"inputs": PROMPT, "parameters": params})).await;
    assert_eq!(status, 200, "{best}");
    let d = &best["details"];
    let others = d["best_of_sequences"].as_array().unwrap();
    assert_eq!(others.len(), 2);
    let score = |tokens: &Value| tokens.as_array().unwrap().iter().map(|t| t["logprob"].as_f64().unwrap()).sum::<f64>();
    let mut seeds = vec![d["seed"].as_u64().unwrap()];
    for o in others {
        assert!(score(&d["tokens"]) >= score(&o["tokens"]), "the chosen sequence is the likeliest");
        seeds.push(o["seed"].as_u64().unwrap());
    }
    seeds.sort_unstable();
    assert_eq!(seeds, vec![7, 8, 9]);
    let replay = json!({"do_sample": true, "seed": d["seed"], "max_new_tokens": 6});
    let (_, alone) = post_json(addr, "/generate", &json!({"inputs": PROMPT, "parameters": replay})).await;
    assert_eq!(alone["generated_text"], best["generated_text"]);
}

struct Case {
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    needle: &'static str,
}

fn case(path: &'static str, body: Value, status: u16, needle: &'static str) -> Case {
    Case { path, content_type: Some("application/json"), body: body.to_string().into_bytes(), status, needle }
}

fn lorax(params: Value, status: u16, needle: &'static str) -> Case {
    case("/generate", json!({"inputs": PROMPT, "parameters": params}), status, needle)
}

fn chat(extra: Value, status: u16, needle: &'static str) -> Case {
    let mut body = json!({"model": "qv_r8", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    case("/v1/chat/completions", body, status, needle)
}

fn completion(extra: Value, status: u16, needle: &'static str) -> Case {
    let mut body = json!({"model": "qv_r8", "prompt": "hi", "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    case("/v1/completions", body, status, needle)
}

fn bad_inputs() -> Vec<Case> {
    let ten_mb = {
        let mut b = br#"{"inputs": ""#.to_vec();
        b.extend(std::iter::repeat_n(b'a', 10 << 20));
        b.extend(br#""}"#);
        b
    };
    vec![
        lorax(json!({"temperature": -1}), 422, "`parameters.temperature` must be between 0 and 100"),
        lorax(json!({"temperature": 1e9}), 422, "`parameters.temperature`"),
        lorax(json!({"temperature": "hot"}), 422, "`parameters.temperature` invalid type"),
        lorax(json!({"top_p": 0}), 422, "`parameters.top_p` must be > 0"),
        lorax(json!({"top_p": 1.5}), 422, "`parameters.top_p`"),
        lorax(json!({"top_p": "x"}), 422, "`parameters.top_p` invalid type"),
        lorax(json!({"top_k": 0}), 422, "`parameters.top_k` must be strictly positive"),
        lorax(json!({"top_k": -5}), 422, "`parameters.top_k`"),
        lorax(json!({"top_k": 1.5}), 422, "`parameters.top_k` invalid type"),
        lorax(json!({"repetition_penalty": 0}), 422, "`parameters.repetition_penalty`"),
        lorax(json!({"repetition_penalty": -2}), 422, "`parameters.repetition_penalty`"),
        lorax(json!({"max_new_tokens": 0}), 422, "`parameters.max_new_tokens` must be between 1 and 200"),
        lorax(json!({"max_new_tokens": 100_000_000}), 422, "`parameters.max_new_tokens` must be between 1 and 200"),
        lorax(json!({"max_new_tokens": -1}), 422, "`parameters.max_new_tokens`"),
        lorax(json!({"max_new_tokens": "ten"}), 422, "`parameters.max_new_tokens` invalid type"),
        lorax(json!({"seed": -1}), 422, "`parameters.seed`"),
        lorax(json!({"seed": "abc"}), 422, "`parameters.seed` invalid type"),
        lorax(json!({"do_sample": "yes"}), 422, "`parameters.do_sample` invalid type"),
        lorax(json!({"stop": "x"}), 422, "`parameters.stop` invalid type"),
        lorax(json!({"stop": ["a", "b", "c", "d", "e"]}), 422, "`parameters.stop` has 5 sequences"),
        lorax(json!({"stop": [""]}), 422, "`parameters.stop` must not contain an empty string"),
        lorax(json!({"details": 1}), 422, "`parameters.details` invalid type"),
        lorax(json!({"truncate": 0}), 422, "`parameters.truncate` must be strictly positive"),
        lorax(json!({"best_of": 0}), 422, "`parameters.best_of` must be strictly positive, got 0"),
        lorax(json!({"typical_p": 0.5}), 422, "`parameters.typical_p` is not supported"),
        lorax(json!({"watermark": true}), 422, "`parameters.watermark` is not supported"),
        lorax(
            json!({"merged_adapters": {"ids": ["qv_r8"], "weights": [1, 2]}}),
            422,
            "`parameters.merged_adapters` has 2 weights for 1 adapters",
        ),
        lorax(
            json!({"merged_adapters": {"ids": ["qv_r8"], "merge_strategy": "svd"}}),
            422,
            "`parameters.merged_adapters.merge_strategy` must be one of linear, ties, dare_linear, dare_ties",
        ),
        lorax(
            json!({"merged_adapters": {"ids": ["qv_r8", "qv_r8"], "merge_strategy": "ties", "density": 0}}),
            422,
            "density must be > 0 and <= 1, got 0",
        ),
        lorax(
            json!({"merged_adapters": {"ids": ["qv_r8"], "majority_sign_method": "most"}}),
            422,
            "`parameters.merged_adapters.majority_sign_method` must be `total` or `frequency`",
        ),
        lorax(
            json!({"merged_adapters": {"ids": []}}),
            422,
            "`parameters.merged_adapters` must name 1 to 16 adapters, got 0",
        ),
        lorax(
            json!({"merged_adapters": {"ids": ["../x"]}}),
            400,
            "`parameters.merged_adapters.ids`: invalid adapter id",
        ),
        lorax(json!({"merged_adapters": {"ids": ["nope"]}}), 404, "adapter `nope` not found"),
        lorax(
            json!({"adapter_id": "qv_r8", "merged_adapters": {"ids": ["qv_r8"]}}),
            422,
            "cannot be set with an adapter",
        ),
        lorax(json!({"merged_adapters": {"ids": ["qv_r8", "all_r4"]}}), 424, "qv_r8 has rank 8 and all_r4 rank 4"),
        lorax(json!({"adapter_source": "s3", "adapter_id": "x"}), 422, "`parameters.adapter_source` is not supported"),
        lorax(json!({"adapter_source": "ftp", "adapter_id": "x"}), 422, "must be `local` or `hub`"),
        lorax(json!({"adapter_source": "hub", "adapter_id": "a/b"}), 422, "--allow-hub"),
        lorax(json!({"adapter_id": "../../etc/passwd"}), 400, "invalid adapter id"),
        lorax(json!({"adapter_id": "/etc/passwd"}), 400, "invalid adapter id"),
        lorax(json!({"adapter_id": "a/b/c"}), 400, "at most one '/'"),
        lorax(json!({"adapter_id": "qv_r8\u{0}"}), 400, "invalid adapter id"),
        lorax(json!({"adapter_id": "no_such_adapter"}), 404, "adapter `no_such_adapter` not found"),
        lorax(json!({"adapter_id": "owner/not-local"}), 404, "adapter `owner/not-local` not found"),
        case("/generate", json!({"inputs": ""}), 422, "`inputs` must not be empty"),
        case("/generate", json!({"parameters": {}}), 422, "missing field `inputs`"),
        case("/generate", json!({"inputs": 123}), 422, "`inputs` invalid type"),
        case("/generate", json!({"inputs": "word ".repeat(200)}), 422, "more than the limit of 64"),
        case("/generate", json!({"inputs": PROMPT, "parameters": "fast"}), 422, "`parameters` invalid type"),
        case("/generate_stream", json!({"inputs": PROMPT, "parameters": {"top_k": 0}}), 422, "`parameters.top_k`"),
        Case {
            path: "/generate",
            content_type: Some("application/json"),
            body: b"{\"inputs\": \"hi\",".to_vec(),
            status: 400,
            needle: "malformed JSON",
        },
        Case {
            path: "/generate",
            content_type: Some("application/json"),
            body: b"{\"inputs\": \"\xff\xfe\"}".to_vec(),
            status: 400,
            needle: "malformed JSON",
        },
        Case {
            path: "/generate",
            content_type: Some("application/json"),
            body: ten_mb.clone(),
            status: 413,
            needle: "larger than the server's limit",
        },
        Case {
            path: "/generate",
            content_type: None,
            body: b"{\"inputs\": \"hi\"}".to_vec(),
            status: 415,
            needle: "content-type: application/json",
        },
        chat(json!({"n": 0}), 400, "`n` must be between 1 and 16, got 0"),
        chat(json!({"n": 17}), 400, "`n` must be between 1 and 16, got 17"),
        case(
            "/generate",
            json!({"inputs": PROMPT, "parameters": {"best_of": 2}}),
            422,
            "`parameters.best_of` above 1 needs sampling",
        ),
        case(
            "/generate_stream",
            json!({"inputs": PROMPT, "parameters": {"best_of": 2, "do_sample": true}}),
            422,
            "`parameters.best_of` above 1 is not supported when streaming",
        ),
        chat(json!({"messages": []}), 400, "`messages` must not be empty"),
        chat(json!({"messages": [{"role": "wizard", "content": "x"}]}), 400, "`messages[0].role`"),
        chat(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            400,
            "`messages[0].content[0]` is not supported",
        ),
        chat(json!({"messages": "hi"}), 400, "`messages` invalid type"),
        chat(json!({"temperature": 3}), 400, "`temperature` must be between 0 and 2"),
        chat(json!({"top_p": 0}), 400, "`top_p` must be > 0"),
        chat(json!({"max_tokens": 0}), 400, "`max_tokens` must be between 1 and 200"),
        chat(json!({"max_tokens": 1_000_000}), 400, "`max_tokens` must be between 1 and 200"),
        chat(json!({"max_completion_tokens": -3}), 400, "`max_completion_tokens`"),
        chat(json!({"stop": ["a", "b", "c", "d", "e"]}), 400, "`stop` has 5 sequences"),
        chat(json!({"stop": 7}), 400, "`stop`"),
        chat(json!({"presence_penalty": 3}), 400, "`presence_penalty` must be between -2 and 2, got 3"),
        chat(json!({"frequency_penalty": -2.5}), 400, "`frequency_penalty` must be between -2 and 2"),
        chat(json!({"frequency_penalty": "x"}), 400, "`frequency_penalty` invalid type"),
        chat(json!({"logit_bias": {"abc": 1}}), 400, "`logit_bias` keys must be token ids, got \"abc\""),
        chat(json!({"logit_bias": {"5": "up"}}), 400, "`logit_bias` token 5's bias must be a number"),
        chat(json!({"logit_bias": {"5": 200}}), 400, "`logit_bias` must be between -100 and 100"),
        chat(json!({"logit_bias": {"99999999": 1}}), 400, "`logit_bias` token 99999999 is not in the vocabulary"),
        chat(json!({"logit_bias": [1, 2]}), 400, "`logit_bias` must be an object"),
        chat(json!({"logprobs": "yes"}), 400, "`logprobs` must be a boolean"),
        chat(json!({"top_logprobs": 3}), 400, "`top_logprobs` needs `logprobs` set to true"),
        chat(json!({"logprobs": true, "top_logprobs": 21}), 400, "`top_logprobs` must be between 0 and 20, got 21"),
        chat(json!({"response_format": {"type": "xml"}}), 400, "`response_format` type must be text, json_object"),
        chat(json!({"response_format": "json"}), 400, "`response_format` must be an object with a string `type`"),
        chat(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}}),
            400,
            "`response_format` cannot be compiled",
        ),
        chat(json!({"response_format": {"type": "json_schema"}}), 400, "needs a `json_schema` object"),
        chat(json!({"response_format": {"type": "choice", "choice": [1]}}), 400, "`choice` must be a list of strings"),
        case(
            "/generate",
            json!({"inputs": PROMPT, "parameters": {"response_format": {"type": "regex", "regex": "(["}}}),
            422,
            "`parameters.response_format` cannot be compiled",
        ),
        case(
            "/generate",
            json!({"inputs": PROMPT, "parameters": {"response_format": {"type": "json_object", "schema": "{bad"}}}),
            422,
            "`parameters.response_format` `schema` is not valid JSON",
        ),
        chat(json!({"tools": [{"type": "function"}]}), 400, "`tools` is not supported"),
        chat(json!({"model": "nope"}), 404, "the model `nope` does not exist"),
        chat(json!({"model": "../adapters"}), 400, "invalid adapter id"),
        chat(json!({"model": ""}), 400, "`model` must name the base model or an adapter"),
        chat(json!({"prompt": "x"}), 400, "`prompt` belongs to /v1/completions"),
        case("/v1/chat/completions", json!({"model": "qv_r8"}), 400, "`messages` is required"),
        completion(json!({"prompt": ""}), 400, "`prompt` must not be empty"),
        completion(json!({"prompt": ["a", "b"]}), 400, "only one prompt per request"),
        completion(json!({"logprobs": 6}), 400, "`logprobs` must be between 0 and 5, got 6"),
        completion(json!({"logprobs": true}), 400, "`logprobs` must be an integer"),
        completion(json!({"suffix": "end"}), 400, "`suffix` is not supported"),
        completion(json!({"seed": "x"}), 400, "`seed` invalid type"),
        Case {
            path: "/v1/completions",
            content_type: Some("application/json"),
            body: b"not json".to_vec(),
            status: 400,
            needle: "malformed JSON",
        },
        Case {
            path: "/v1/chat/completions",
            content_type: Some("application/json"),
            body: ten_mb,
            status: 413,
            needle: "larger than the server's limit",
        },
    ]
}

#[tokio::test]
async fn bad_input_suite_gets_clear_4xx_and_the_server_keeps_serving() {
    let (addr, _st) = live().await;
    let client = reqwest::Client::new();
    let cases = bad_inputs();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let mut req = client.post(format!("http://{addr}{}", c.path)).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        // LoRAX routes: {"error": "..."}; OpenAI routes: {"error": {"message": "..."}}.
        let message = body["error"].as_str().or_else(|| body["error"]["message"].as_str()).unwrap_or("").to_string();
        if status != c.status || !message.contains(c.needle) {
            let shown: String = String::from_utf8_lossy(&c.body).chars().take(120).collect();
            failures.push(format!(
                "{} {shown}: got {status} {message:?}, want {} containing {:?}",
                c.path, c.status, c.needle
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let (status, ok) =
        post_json(addr, "/generate", &json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 3}})).await;
    assert_eq!(status, 200);
    assert_eq!(ok["details"], Value::Null);
    assert!(ok["generated_text"].is_string());
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
}

fn smollm2() -> PathBuf {
    let p = std::env::var_os("LORALAND_SMOLLM2").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(p.is_file(), "{} is missing: run `make fetch-model` first", p.display());
    p
}

/// Waits until the engine has no running request, for at most 10 s.
async fn wait_idle(st: &app::state::AppState) {
    let engine = st.engine.get().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine::EngineStats::get(&engine.stats().running) > 0 {
        assert!(Instant::now() < deadline, "the engine is still running a request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On the real default model (slow enough on CPU that 150 tokens take seconds): a client that disconnects after
/// its first token stops its generation, and with a queue of one a second request gets 429 until the first ends.
#[tokio::test]
async fn disconnect_cancels_generation_and_a_full_queue_is_429() {
    let mut cfg = engine::EngineConfig::new(smollm2());
    cfg.load.quant = engine::QuantMode::Q8;
    cfg.max_queue = 1;
    let st = state(Some(cfg)).await;
    let addr = listen(st.clone(), HttpOptions::default()).await;
    let engine = st.engine.get().unwrap().clone();
    let generated = || engine::EngineStats::get(&engine.stats().generated_tokens);

    // Sampling at a high temperature keeps the model away from its end-of-sequence token.
    let params = json!({"max_new_tokens": 150, "do_sample": true, "temperature": 3.0, "seed": 1});
    let body = json!({"inputs": "Tell me a long story about adapters.", "parameters": params});
    let before = generated();
    let res = reqwest::Client::new().post(format!("http://{addr}/generate_stream")).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut events = res.bytes_stream().eventsource();
    events.next().await.unwrap().unwrap();

    // The queue (one request) is full while the stream runs.
    let second = reqwest::Client::new().post(format!("http://{addr}/generate")).json(&body).send().await.unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    let err: Value = second.json().await.unwrap();
    assert_eq!(err["error_type"], "overloaded");

    drop(events);
    wait_idle(&st).await;
    let used = generated() - before;
    assert!(used < 100, "the disconnected stream kept generating: {used} tokens");

    // The slot is free again.
    let small = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}});
    let (status, _) = post_json(addr, "/generate", &small).await;
    assert_eq!(status, 200);
}

/// One client over its limits gets 429 with `Retry-After` and the limit named, while another client (another
/// address, here the last entry of a trusted proxy's X-Forwarded-For) is served; a server function's body over the limit is
/// 413 too.
#[tokio::test]
async fn a_client_over_its_limits_gets_429_and_others_are_served() {
    let mut st = state(Some(engine_config())).await;
    st.clients = app::limits::ClientLimits::new(app::limits::LimitSettings {
        requests_per_minute: 3,
        concurrent_per_client: 1,
        concurrent_per_session: 0,
    });
    let options = HttpOptions { trust_proxy: true, max_body_bytes: 4096, ..HttpOptions::default() };
    let addr = listen(st, options).await;
    let client = reqwest::Client::new();
    let send = |from: &'static str, tokens: u32| {
        client
            .post(format!("http://{addr}/generate_stream"))
            .header("x-forwarded-for", from)
            .json(&json!({"inputs": PROMPT, "parameters": {"max_new_tokens": tokens}}))
            .send()
    };
    // A long stream holds the client's one place; its second request is refused meanwhile.
    let long = send("10.0.0.1", 150).await.unwrap();
    assert_eq!(long.status(), 200);
    let second = send("10.0.0.1", 2).await.unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    let body: Value = second.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("at most 1 generations at once per client address"), "{body}");
    assert_eq!(send("10.0.0.2", 2).await.unwrap().status(), 200, "another client is served");
    drop(long);
    // Its rate: three requests a minute, the fourth waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = send("10.0.0.1", 2).await.unwrap();
    assert_eq!(third.status(), 200, "the place is given back when the stream is dropped");
    third.bytes().await.unwrap();
    let fourth = send("10.0.0.1", 2).await.unwrap();
    assert_eq!(fourth.status(), 429);
    let wait: u64 = fourth.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((2..=60).contains(&wait), "{wait}");
    let body: Value = fourth.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().starts_with("rate limit: at most 3 generation requests a minute"),
        "{body}"
    );
    // The client is the entry the proxy appended, the last: what a client writes before it changes nothing.
    assert_eq!(send("10.0.0.3, 10.0.0.1", 2).await.unwrap().status(), 429, "a forged first entry is not the client");
    assert_eq!(send("10.0.0.1, 10.0.0.3", 2).await.unwrap().status(), 200, "the last entry is");
    // Bodies over the limit are refused on every route, the pages' server functions included.
    let big = "x".repeat(8192);
    let fn_res = client.post(format!("http://{addr}/api/count_tokens")).json(&json!({"text": big})).send().await;
    assert_eq!(fn_res.unwrap().status(), 413);
}
