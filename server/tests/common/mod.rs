//! Shared set-up of the API tests: the tiny fixture model in a real engine, the app state around it, requests
//! through `oneshot` and a real listener on port 0.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use leptos::prelude::LeptosOptions;
use server::config::HttpOptions;
use server::{db, router_with, AppState};
use std::net::SocketAddr;
use std::path::PathBuf;
use tower::ServiceExt;

/// The tiny Llama fixture.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tiny-llama")
}

/// An engine configuration on the tiny fixture with its four adapters.
pub fn engine_config() -> engine::EngineConfig {
    let mut cfg = engine::EngineConfig::new(fixtures().join("base"));
    cfg.catalog =
        engine::Catalog { adapters_dir: Some(fixtures().join("adapters")), allow_hub: false, ..Default::default() };
    cfg.max_input_tokens = 64;
    cfg.max_new_tokens = 200;
    cfg
}

/// App state with a loaded engine (`None`: the model is still "loading").
pub async fn state(engine: Option<engine::EngineConfig>) -> AppState {
    state_on(db::connect("sqlite::memory:").await.unwrap(), engine).await
}

/// App state over `db` (several replicas can share a Postgres one).
pub async fn state_on(db: db::Db, engine: Option<engine::EngineConfig>) -> AppState {
    let leptos = LeptosOptions::builder().output_name("loraland").site_root("target/site").site_pkg_dir("pkg").build();
    let slot = app::context::EngineSlot::default();
    if let Some(cfg) = engine {
        let handle = tokio::task::spawn_blocking(move || engine::Engine::spawn(cfg)).await.unwrap().unwrap();
        slot.fill(handle);
    }
    AppState::new(db, leptos, "base", slot)
}

/// A response's status, headers and body as JSON (or as a string value when it is not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `data:` payloads of an SSE body, and the names of `event:` lines.
    pub fn sse(&self) -> Vec<(Option<String>, String)> {
        let mut out = Vec::new();
        for block in self.text.split("\n\n") {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_string());
                }
            }
            if let Some(d) = data {
                out.push((event, d));
            }
        }
        out
    }
}

/// Sends `body` as JSON to `path` with `oneshot`.
pub async fn post(state: &AppState, options: &HttpOptions, path: &str, body: serde_json::Value) -> Reply {
    let req =
        Request::post(path).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap();
    send(state, options, req).await
}

/// `GET path` with `oneshot`.
pub async fn get(state: &AppState, path: &str) -> Reply {
    send(state, &HttpOptions::default(), Request::get(path).body(Body::empty()).unwrap()).await
}

/// Any request with `oneshot`; a response that does not finish within two minutes fails the test instead of
/// hanging it.
pub async fn send(state: &AppState, options: &HttpOptions, req: Request<Body>) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    let exchange = async {
        let res = router_with(state.clone(), options).oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), exchange)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 120 s"))
}

/// Serves `state` on 127.0.0.1:0; returns the address.
pub async fn listen(state: AppState, options: HttpOptions) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router_with(state, &options)).await.unwrap() });
    addr
}

/// A new visitor's glue_sst2 run of `panes` (adapter ids or null) on `addr`, greedy: its id and the session cookie.
pub async fn start_run(
    addr: SocketAddr,
    sentence: &str,
    panes: serde_json::Value,
    max_new_tokens: u32,
) -> (String, String) {
    let body = serde_json::json!({"request": {
        "task": "glue_sst2",
        "inputs": {"sentence": sentence},
        "params": {"max_new_tokens": max_new_tokens, "temperature": 0.0, "top_p": 1.0, "seed": 0},
        "panes": panes,
    }});
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/api/start_run"))
        .header("accept", "application/json")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.headers());
    let cookie = res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    (res.json().await.unwrap(), cookie)
}
