//! `GET /health`, `GET /info` and `GET /metrics`: readiness, what the server runs with, and Prometheus metrics.

use crate::{metrics, AppState};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::{EngineHandle, EngineStats, Health};
use serde_json::json;

/// `GET /health`: 200 once the model is loaded and the engine's loop is beating; 503 while the model loads, when
/// the loop has stalled, or when the engine has stopped (the process then exits, see `serve`).
pub async fn health(State(state): State<AppState>) -> Response {
    let model = &*state.model_name;
    let unavailable = |body| (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    match state.engine.get().map(EngineHandle::health) {
        None => unavailable(json!({ "status": "loading", "model": model })),
        Some(Health::Ok) => Json(json!({ "status": "ok", "model": model })).into_response(),
        Some(Health::Stalled { for_ }) => {
            unavailable(json!({ "status": "stalled", "model": model, "stalled_seconds": for_.as_secs_f64() }))
        }
        Some(Health::Stopped) => unavailable(json!({ "status": "stopped", "model": model })),
    }
}

/// `GET /info`: the model, its dtype and device, the request limits and the adapters.
pub async fn info(State(state): State<AppState>) -> Response {
    let Some(engine) = state.engine.get() else {
        return super::generation::not_ready().into_response_as(super::error::Flavor::Lorax);
    };
    let model = engine.model_info();
    let cfg = engine.config();
    let stats = engine.stats();
    let available: Vec<String> = cfg.catalog.list_local().iter().map(ToString::to_string).collect();
    Json(json!({
        "model_id": model.name,
        "model_dtype": model.dtype,
        "model_device_type": model.device,
        "max_input_length": engine.limits().max_input_tokens,
        "max_new_tokens": cfg.max_new_tokens,
        "max_total_tokens": model.max_position_embeddings,
        "max_stop_sequences": engine::request::MAX_STOP_SEQUENCES,
        "max_concurrent_requests": cfg.max_queue,
        "max_batch_size": cfg.max_batch_size,
        // TGI's names: the tokens of one step (prefill chunks and decode rows), and of every running request.
        "max_batch_prefill_tokens": cfg.step_token_budget(),
        "max_batch_total_tokens": cfg.max_kv_tokens,
        "max_kv_tokens": cfg.max_kv_tokens,
        "vocab_size": model.vocab_size,
        "adapters": {
            "available": available,
            "resident": EngineStats::get(&stats.adapters_resident),
            "max_resident": cfg.limits.max_adapters,
            "max_bytes": cfg.limits.max_bytes,
            "max_rank": cfg.limits.max_rank,
            "hub": cfg.catalog.allow_hub,
        },
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = metrics::render(state.engine.get());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
