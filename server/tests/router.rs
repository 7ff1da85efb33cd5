//! The router, driven in-process with `oneshot`: pages render on the server and server functions reach SQLite.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use leptos::prelude::LeptosOptions;
use server::{db, router, AppState};
use std::sync::Arc;
use tower::ServiceExt;

async fn state() -> AppState {
    let db = db::connect("sqlite::memory:").await.unwrap();
    let leptos = LeptosOptions::builder().output_name("loraland").site_root("target/site").site_pkg_dir("pkg").build();
    AppState { db, leptos, model_name: Arc::from("tiny-test-model"), engine: Default::default() }
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
async fn start_session_server_fn_writes_a_row() {
    let state = state().await;
    let app = router(state.clone());
    for expected_total in 1..=2 {
        let req = Request::post("/api/start_session")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body_text(res).await).unwrap();
        assert_eq!(json["total"], expected_total);
        assert_eq!(json["id"].as_str().unwrap().len(), 36);
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(&state.db).await.unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn unknown_page_is_404() {
    let res = router(state().await).oneshot(Request::get("/nope").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(body_text(res).await.contains("Page not found"));
}
