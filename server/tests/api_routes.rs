//! Every API route through the router (`oneshot`) on a real engine with the tiny fixture model: the LoRAX and
//! OpenAI shapes, streams, details, stop sequences, readiness, info, metrics, and each error with its status.

mod common;

use axum::http::StatusCode;
use common::{engine_config, get, post, state};
use serde_json::json;
use server::config::HttpOptions;
use std::time::Duration;

const PROMPT: &str = "Hello adapters";

fn opts() -> HttpOptions {
    HttpOptions::default()
}

#[tokio::test]
async fn lorax_generate_with_details_prefill_and_full_text() {
    let st = state(Some(engine_config())).await;
    let params = json!({"adapter_id": "qv_r8", "max_new_tokens": 6, "details": true, "decoder_input_details": true});
    let r = post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": params})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    let d = &v["details"];
    assert_eq!(d["finish_reason"], "length");
    assert_eq!(d["generated_tokens"], 6);
    assert_eq!(d["seed"], serde_json::Value::Null, "greedy has no seed");
    let tokens = d["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    let joined: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(joined, v["generated_text"].as_str().unwrap());
    assert!(tokens.iter().all(|t| t["logprob"].as_f64().unwrap() <= 0.0));
    let prefill = d["prefill"].as_array().unwrap();
    assert_eq!(prefill.len(), d["prompt_tokens"].as_u64().unwrap() as usize);
    assert!(prefill[0]["logprob"].is_null(), "nothing predicts the first prompt token");
    assert!(prefill[1..].iter().all(|t| t["logprob"].as_f64().is_some_and(|lp| lp <= 0.0)), "{prefill:?}");

    let full = json!({"adapter_id": "qv_r8", "max_new_tokens": 6, "return_full_text": true});
    let r2 = post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": full})).await.json();
    assert_eq!(r2["generated_text"].as_str().unwrap(), format!("{PROMPT}{}", v["generated_text"].as_str().unwrap()));
    assert!(r2.get("details").is_none());
}

#[tokio::test]
async fn sampling_reports_its_seed_and_replays() {
    let st = state(Some(engine_config())).await;
    let params = json!({"do_sample": true, "temperature": 1.5, "max_new_tokens": 8, "details": true});
    let a = post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": params})).await.json();
    let seed = a["details"]["seed"].as_u64().expect("a sampled request reports its seed");
    let replay = json!({"do_sample": true, "temperature": 1.5, "max_new_tokens": 8, "seed": seed});
    let b = post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": replay})).await.json();
    assert_eq!(a["generated_text"], b["generated_text"]);
}

#[tokio::test]
async fn stream_equals_generate_and_last_event_carries_details() {
    let st = state(Some(engine_config())).await;
    let params = json!({"adapter_id": "all_r4", "max_new_tokens": 7, "details": true});
    let whole = post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": params.clone()})).await.json();
    let r = post(&st, &opts(), "/generate_stream", json!({"inputs": PROMPT, "parameters": params})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events: Vec<serde_json::Value> = r.sse().iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(events.len(), 7, "one event per token");
    let text: String = events.iter().map(|e| e["token"]["text"].as_str().unwrap()).collect();
    assert_eq!(text, whole["generated_text"].as_str().unwrap());
    assert!(events[..6].iter().all(|e| e["generated_text"].is_null() && e["details"].is_null()));
    let last = &events[6];
    assert_eq!(last["generated_text"], whole["generated_text"]);
    assert_eq!(last["details"]["finish_reason"], "length");
    assert_eq!(last["details"]["generated_tokens"], 7);
}

#[tokio::test]
async fn compat_route_answers_a_list_or_a_stream() {
    let st = state(Some(engine_config())).await;
    let body = json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 3}, "stream": false});
    let r = post(&st, &opts(), "/", body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let body = json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 3}, "stream": true});
    let r = post(&st, &opts(), "/", body).await;
    let events = r.sse();
    assert_eq!(events.len(), 3);
    let last: serde_json::Value = serde_json::from_str(&events[2].1).unwrap();
    assert_eq!(last["generated_text"], list[0]["generated_text"]);
    // The app's page is still at GET /.
    assert_eq!(get(&st, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn stop_sequence_ends_the_text_before_it() {
    let st = state(Some(engine_config())).await;
    let params = json!({"adapter_id": "mlp_r2", "max_new_tokens": 12});
    let whole = post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": params})).await.json();
    let text = whole["generated_text"].as_str().unwrap().to_string();
    let stop: String = text.chars().skip(3).take(2).collect();
    assert_eq!(stop.chars().count(), 2, "need some text to cut: {text:?}");
    let params = json!({"adapter_id": "mlp_r2", "max_new_tokens": 12, "stop": [stop], "details": true});
    let cut = post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": params})).await.json();
    let expected = &text[..text.find(&stop).unwrap()];
    assert_eq!(cut["generated_text"].as_str().unwrap(), expected);
    assert_eq!(cut["details"]["finish_reason"], "stop_sequence");
}

#[tokio::test]
async fn openai_chat_completions_and_models() {
    let st = state(Some(engine_config())).await;
    let messages = json!([{"role": "user", "content": "Name a task"}]);
    let body = json!({"model": "qv_r8", "messages": messages, "max_tokens": 5, "temperature": 0});
    let r = post(&st, &opts(), "/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "qv_r8");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let content = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let s = post(&st, &opts(), "/v1/chat/completions", stream_body).await;
    let events = s.sse();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<serde_json::Value> =
        events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(streamed, content);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "length"));

    let models = get(&st, "/v1/models").await.json();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["base", "all_r4", "attn_r16_rslora", "mlp_r2", "qv_r8"]);
    assert_eq!(models["data"][1]["parent"], "base");
}

#[tokio::test]
async fn openai_completions_echo_and_agree_with_lorax() {
    let st = state(Some(engine_config())).await;
    let body = json!({"model": "attn_r16_rslora", "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "echo": true});
    let v = post(&st, &opts(), "/v1/completions", body).await.json();
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap();
    let lorax = json!({"inputs": PROMPT, "parameters": {"adapter_id": "attn_r16_rslora", "max_new_tokens": 6}});
    let l = post(&st, &opts(), "/generate", lorax).await.json();
    assert_eq!(text, format!("{PROMPT}{}", l["generated_text"].as_str().unwrap()));
    // The base model is named by its own name.
    let base = json!({"model": "base", "prompt": PROMPT, "max_tokens": 2});
    assert_eq!(post(&st, &opts(), "/v1/completions", base).await.status, StatusCode::OK);
}

#[tokio::test]
async fn health_info_and_metrics() {
    let loading = state(None).await;
    let h = get(&loading, "/health").await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.json()["status"], "loading");
    let busy = post(&loading, &opts(), "/generate", json!({"inputs": "x"})).await;
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.headers["retry-after"], "1");

    let st = state(Some(engine_config())).await;
    assert_eq!(get(&st, "/health").await.status, StatusCode::OK);
    let info = get(&st, "/info").await.json();
    assert_eq!(info["model_id"], "base");
    assert_eq!(info["model_dtype"], "f32");
    assert_eq!(info["model_device_type"], "cpu");
    assert_eq!(info["max_input_length"], 64);
    assert_eq!(info["max_batch_prefill_tokens"], engine::config::DEFAULT_MAX_BATCH_TOKENS_CPU);
    assert_eq!(info["max_batch_total_tokens"], engine::config::DEFAULT_MAX_KV_TOKENS);
    assert_eq!(info["adapters"]["available"].as_array().unwrap().len(), 4);

    let params = json!({"adapter_id": "qv_r8", "max_new_tokens": 2});
    post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": params})).await;
    post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": {"adapter_id": "nope"}})).await;
    let m = get(&st, "/metrics").await;
    assert!(m.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    for needle in [
        r#"loraland_http_requests_total{route="/generate",status="200",adapter="qv_r8"}"#,
        r#"loraland_http_requests_total{route="/generate",status="404",adapter=""}"#,
        r#"loraland_generations_total{adapter="qv_r8",finish_reason="length"}"#,
        "loraland_time_to_first_token_seconds_bucket",
        "loraland_queue_time_seconds_bucket",
        "loraland_engine_running_requests",
        "loraland_engine_kv_tokens",
        "loraland_adapters_resident 1",
        "loraland_adapter_loads_total",
        "loraland_model_ready 1",
    ] {
        assert!(m.text.contains(needle), "missing {needle} in:\n{}", m.text);
    }
    // Merges are labelled `(merged)`, whichever merge: clients cannot grow the label set.
    for weight in [0.5, 0.7] {
        let merge = json!({"ids": ["qv_r8"], "weights": [weight]});
        let params = json!({"merged_adapters": merge, "max_new_tokens": 2});
        post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": params})).await;
    }
    let m = get(&st, "/metrics").await;
    assert!(
        m.text.contains(r#"loraland_generations_total{adapter="(merged)",finish_reason="length"} 2"#),
        "{}",
        m.text
    );
    assert!(!m.text.contains(r#"adapter="merged:"#), "{}", m.text);
}

#[tokio::test]
async fn errors_have_the_right_status_and_shape() {
    let st = state(Some(engine_config())).await;
    let cases: [(&str, serde_json::Value, StatusCode, &str); 6] = [
        (
            "/generate",
            json!({"inputs": PROMPT, "parameters": {"adapter_id": "nope"}}),
            StatusCode::NOT_FOUND,
            "adapter `nope` not found",
        ),
        (
            "/generate",
            json!({"inputs": PROMPT, "parameters": {"adapter_id": "../x"}}),
            StatusCode::BAD_REQUEST,
            "invalid adapter id",
        ),
        (
            "/generate",
            json!({"inputs": "word ".repeat(100)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "more than the limit of 64",
        ),
        (
            "/generate",
            json!({"inputs": PROMPT, "parameters": {"top_p": 2}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "`parameters.top_p`",
        ),
        (
            "/generate",
            json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 250}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 1 and 200",
        ),
        ("/generate_stream", json!({"inputs": ""}), StatusCode::UNPROCESSABLE_ENTITY, "`inputs` must not be empty"),
    ];
    for (path, body, status, needle) in cases {
        let r = post(&st, &opts(), path, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        let v = r.json();
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {}", r.text);
        assert!(v["error_type"].is_string());
    }
    let chat = json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]});
    let r = post(&st, &opts(), "/v1/chat/completions", chat).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let e = &r.json()["error"];
    assert_eq!(e["param"], "model");
    assert_eq!(e["code"], "model_not_found");
    assert!(e["message"].as_str().unwrap().contains("`nope` does not exist"));
    let long = json!({"model": "base", "prompt": "word ".repeat(100)});
    let r = post(&st, &opts(), "/v1/completions", long).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn body_limit_timeout_and_hub_source() {
    let st = state(Some(engine_config())).await;
    let small = HttpOptions { max_body_bytes: 64, ..HttpOptions::default() };
    let r = post(&st, &small, "/generate", json!({"inputs": "x".repeat(100)})).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error_type"], "payload_too_large");

    let hasty = HttpOptions { request_timeout: Duration::from_millis(1), ..HttpOptions::default() };
    let body = json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 150}});
    let r = post(&st, &hasty, "/generate", body).await;
    assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT);
    assert!(r.json()["error"].as_str().unwrap().contains("--request-timeout"));

    let hub_off =
        json!({"inputs": PROMPT, "parameters": {"adapter_id": "predibase/magicoder", "adapter_source": "hub"}});
    let r = post(&st, &opts(), "/generate", hub_off.clone()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["error"].as_str().unwrap().contains("--allow-hub"));

    // With the hub allowed, the download is a real code path; here no hub is reachable, and the error says so.
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    let mut cfg = engine_config();
    cfg.catalog.allow_hub = true;
    let hub = state(Some(cfg)).await;
    let r = post(&hub, &opts(), "/generate", hub_off).await;
    assert_eq!(r.status, StatusCode::FAILED_DEPENDENCY, "{}", r.text);
    assert!(r.json()["error"].as_str().unwrap().contains("predibase/magicoder"), "{}", r.text);
    // The base model still answers.
    let ok = post(&hub, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn compression_skips_streams_and_cors_is_off_unless_configured() {
    use axum::body::Body;
    use axum::http::Request;
    let st = state(Some(engine_config())).await;
    let gzip = |path: &str| Request::get(path).header("accept-encoding", "gzip").body(Body::empty()).unwrap();
    let models = common::send(&st, &opts(), gzip("/v1/models")).await;
    assert_eq!(models.headers["content-encoding"], "gzip");
    let stream = Request::post("/generate_stream")
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip")
        .body(Body::from(json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}).to_string()))
        .unwrap();
    let s = common::send(&st, &opts(), stream).await;
    assert!(s.headers.get("content-encoding").is_none(), "server-sent events are never compressed");
    assert_eq!(s.sse().len(), 2);

    let preflight = || {
        Request::options("/v1/chat/completions")
            .header("origin", "https://example.com")
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap()
    };
    let off = common::send(&st, &opts(), preflight()).await;
    assert!(off.headers.get("access-control-allow-origin").is_none());
    let cors = HttpOptions { cors_allow_origins: vec!["https://example.com".into()], ..HttpOptions::default() };
    let on = common::send(&st, &cors, preflight()).await;
    assert_eq!(on.headers["access-control-allow-origin"], "https://example.com");
}

/// `/health` follows the engine's heartbeat: 503 "stalled" while its loop is stuck in a step, 200 once it beats
/// again, and 503 "stopped" (with requests answered 503) after its thread died.
#[tokio::test]
async fn health_reports_a_stalled_and_a_stopped_engine() {
    let mut cfg = engine_config();
    cfg.stall_after = std::time::Duration::from_millis(300);
    cfg.faults.stall_at_step = Some((0, std::time::Duration::from_millis(2000)));
    let st = state(Some(cfg)).await;
    let slow = tokio::spawn({
        let st = st.clone();
        async move { post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})).await }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let h = get(&st, "/health").await;
        if h.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(h.json()["status"], "stalled");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never reported stalled");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(get(&st, "/health").await.status, StatusCode::OK);

    let mut cfg = engine_config();
    cfg.faults.panic_at_step = Some(0);
    let st = state(Some(cfg)).await;
    let failed = post(&st, &opts(), "/generate", json!({"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failed.json()["error"], "the inference engine has stopped");
    let h = get(&st, "/health").await;
    assert_eq!((h.status, h.json()["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("stopped")));
}

/// The inference extension's signals, as its endpoint picker reads them: with one resident place and a long
/// generation on `qv_r8`, a request for `all_r4` waits, and `/metrics` says so under vLLM's names.
#[tokio::test]
async fn metrics_carry_the_inference_extensions_queue_kv_and_lora_signals() {
    use engine::{AdapterId, GenerateRequest, Prompt, SamplingParams};
    let mut cfg = engine_config();
    cfg.limits.max_adapters = 1;
    cfg.faults.step_delay = Some(Duration::from_millis(20));
    let st = state(Some(cfg)).await;
    let engine = st.engine.get().unwrap().clone();
    let request = |adapter: &str, max_new_tokens| GenerateRequest {
        prompt: Prompt::Tokens(vec![1, 2, 3, 4]),
        adapter: Some(AdapterId::new(adapter).unwrap()),
        sampling: SamplingParams::greedy(),
        max_new_tokens,
        ..GenerateRequest::default()
    };
    let mut long = engine.generate(request("qv_r8", 150)).unwrap();
    // Running: its first token is out.
    let long = tokio::task::spawn_blocking(move || {
        long.blocking_next().unwrap().unwrap();
        long
    })
    .await
    .unwrap();
    let waiting = engine.generate(request("all_r4", 2)).unwrap();
    let sample = |text: &str, name: &str| -> String {
        text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in:\n{text}")).to_string()
    };
    let mut text = String::new();
    for _ in 0..200 {
        text = get(&st, "/metrics").await.text;
        if sample(&text, "vllm:num_requests_waiting").ends_with(" 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sample(&text, "vllm:num_requests_waiting"), r#"vllm:num_requests_waiting{model_name="base"} 1"#);
    assert_eq!(sample(&text, "vllm:num_requests_running"), r#"vllm:num_requests_running{model_name="base"} 1"#);
    let kv: f64 = sample(&text, "vllm:kv_cache_usage_perc").rsplit(' ').next().unwrap().parse().unwrap();
    let expected = (4 + 150) as f64 / engine.config().max_kv_tokens as f64;
    assert!((kv - expected).abs() < 1e-9, "KV usage {kv}, expected {expected}");
    assert!(text.contains(&format!(r#"vllm:gpu_cache_usage_perc{{model_name="base"}} {kv}"#)), "{text}");
    let info = sample(&text, "vllm:lora_requests_info");
    let (labels, value) = info.rsplit_once(' ').unwrap();
    assert_eq!(
        labels,
        r#"vllm:lora_requests_info{max_lora="1",running_lora_adapters="qv_r8",waiting_lora_adapters="all_r4"}"#
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - value.parse::<f64>().unwrap()).abs() < 60.0, "the value is when it was written: {value}");
    drop((long, waiting));
}
