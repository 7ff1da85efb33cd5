//! The router, driven in-process with `oneshot`: pages render on the server, server functions reach SQLite, runs stream over SSE.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use leptos::prelude::LeptosOptions;
use server::{db, router, AppState};
use tower::ServiceExt;

async fn state() -> AppState {
    let db = db::connect("sqlite::memory:").await.unwrap();
    let leptos = LeptosOptions::builder().output_name("loraland").site_root("target/site").site_pkg_dir("pkg").build();
    AppState::new(db, leptos, "tiny-test-model", Default::default())
}

async fn body_text(res: axum::response::Response) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn home_page_renders_on_the_server_with_model_and_count() {
    let res = router(state().await).oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-request-id"));
    let html = body_text(res).await;
    assert!(html.contains("<h1>LoRA Land</h1>"), "{html}");
    assert!(html.contains(r#"<dd id="model-name">tiny-test-model"#), "{html}");
    assert!(html.contains("/pkg/loraland.js"), "{html}");
}

#[tokio::test]
async fn unknown_page_is_404() {
    let res = router(state().await).oneshot(Request::get("/nope").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(body_text(res).await.contains("Page not found"));
}

/// An engine on the tiny fixture with the fixture's `qv_r8` adapter installed under a catalog task's id.
async fn state_with_engine(adapters: &std::path::Path) -> AppState {
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tiny-llama");
    std::os::unix::fs::symlink(fixtures.join("adapters/qv_r8"), adapters.join("glue_sst2")).unwrap();
    let mut cfg = engine::EngineConfig::new(fixtures.join("base"));
    cfg.catalog =
        engine::Catalog { adapters_dir: Some(adapters.to_path_buf()), allow_hub: false, ..Default::default() };
    let handle = tokio::task::spawn_blocking(move || engine::Engine::spawn(cfg)).await.unwrap().unwrap();
    let st = state().await;
    st.engine.fill(handle);
    st
}

fn run_request() -> serde_json::Value {
    serde_json::json!({"request": {
        "task": "glue_sst2",
        "inputs": {"sentence": "a <b>bold</b> little film ."},
        "params": {"max_new_tokens": 5, "temperature": 0.0, "top_p": 1.0, "seed": 0},
        "panes": ["glue_sst2", null]
    }})
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    (status, headers, body_text(res).await)
}

#[tokio::test]
async fn a_run_gets_a_session_cookie_streams_both_panes_and_is_stored() {
    let adapters = tempfile::tempdir().unwrap();
    let st = state_with_engine(adapters.path()).await;
    let app = router(st.clone());
    let start = Request::post("/api/start_run")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(Body::from(run_request().to_string()))
        .unwrap();
    let (status, headers, body) = call(&app, start).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cookie = headers["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("loraland_session=") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
    let id: String = serde_json::from_str(&body).unwrap();

    // The stream, opened by the run's own session: pieces of both panes, a `done` status for each, then `end`.
    let session = cookie.split(';').next().unwrap().to_string();
    let open = || Request::get(format!("/runs/{id}/stream")).header("cookie", &session).body(Body::empty()).unwrap();
    let (status, headers, sse) = call(&app, open()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = |sse: &str| -> Vec<serde_json::Value> {
        sse.split("\n\n")
            .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter(|d| *d != "{}")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    };
    let data = events(&sse);
    for pane in [0, 1] {
        let done: Vec<_> = data.iter().filter(|e| e["pane"] == pane && e["type"] == "status").collect();
        assert_eq!(done.len(), 1, "{sse}");
        assert_eq!((done[0]["status"].as_str(), done[0]["finish_reason"].as_str()), (Some("done"), Some("length")));
        assert_eq!(done[0]["timings"]["generated_tokens"], 5);
        assert!(data.iter().any(|e| e["pane"] == pane && e["type"] == "text"));
    }
    assert!(sse.contains("event: end"), "{sse}");
    // Opened again, by anyone: the stored answers are replayed, nothing is generated again.
    let steps = st.engine.get().unwrap().stats().steps.load(std::sync::atomic::Ordering::Relaxed);
    let (_, _, again) = call(&app, Request::get(format!("/runs/{id}/stream")).body(Body::empty()).unwrap()).await;
    let text = |data: &[serde_json::Value], pane: i64| -> String {
        data.iter().filter(|e| e["pane"] == pane && e["type"] == "text").map(|e| e["text"].as_str().unwrap()).collect()
    };
    assert_eq!((text(&events(&again), 0), text(&events(&again), 1)), (text(&data, 0), text(&data, 1)));
    assert_eq!(st.engine.get().unwrap().stats().steps.load(std::sync::atomic::Ordering::Relaxed), steps);

    // Stored, and listed in this session's history only.
    let stored: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT status, finish_reason, generated_tokens FROM outputs WHERE run_id = $1 ORDER BY pane")
            .bind(&id)
            .fetch_all(&st.db)
            .await
            .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|(status, reason, n)| status == "done" && reason == "length" && *n == 5));
    let list = |cookie: Option<&str>| {
        let mut req = Request::post("/api/list_runs")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.body(Body::from("page=0")).unwrap()
    };
    let (_, _, mine) = call(&app, list(Some(&session))).await;
    let mine: serde_json::Value = serde_json::from_str(&mine).unwrap();
    assert_eq!(mine["runs"][0]["id"], id.as_str());
    assert_eq!(mine["runs"][0]["finished"], 2);
    let (_, _, none) = call(&app, list(None)).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&none).unwrap()["runs"].as_array().unwrap().len(), 0);

    // The shared page renders the run, markup escaped.
    let (status, _, html) = call(&app, Request::get(format!("/r/{id}")).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("a &lt;b&gt;bold&lt;/b&gt; little film ."), "{html}");
    assert!(!html.contains("<b>bold</b>"));
}

#[tokio::test]
async fn bad_runs_are_refused_and_nothing_is_stored() {
    let adapters = tempfile::tempdir().unwrap();
    let st = state_with_engine(adapters.path()).await;
    let app = router(st.clone());
    let mut bad = run_request();
    bad["request"]["task"] = "no_such_task".into();
    let mut long = run_request();
    long["request"]["params"]["max_new_tokens"] = 100_000.into();
    let mut extra = run_request();
    extra["request"]["inputs"]["nope"] = "x".into();
    let mut hot = run_request();
    hot["request"]["params"]["temperature"] = 500.0.into();
    let cases = [
        (bad, "unknown task"),
        (long, "max new tokens must be between 1 and 512, got 100000"),
        (extra, "`nope` is not a variable"),
        (hot, "temperature must be between 0 and 100, got 500"),
    ];
    for (body, needle) in cases {
        let req = Request::post("/api/start_run")
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, _, text) = call(&app, req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
        assert!(text.contains(needle), "{text}");
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs").fetch_one(&st.db).await.unwrap();
    assert_eq!(n, 0);
    let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(&st.db).await.unwrap();
    assert_eq!(sessions, 0, "a refused run creates no session");
    let (status, _, _) = call(&app, Request::get("/runs/nope/stream").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
