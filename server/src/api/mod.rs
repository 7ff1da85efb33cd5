//! The HTTP API beside the web app: LoRAX routes (`/generate`, `/generate_stream`, `POST /`), OpenAI routes
//! (`/v1/...`), and `/health`, `/info`, `/metrics`. Handlers check every field before anything is queued and
//! answer errors in their API's shape; the layers here add the body limit, compression, a timeout that ends once
//! a stream's headers are sent (so long streams are never cut) and the request metrics.

pub mod error;
pub mod extract;
pub mod generation;
pub mod lorax;
pub mod meta;
pub mod openai;
pub mod params;
pub mod sse;

use crate::config::HttpOptions;
use crate::{metrics, AppState};
use app::context::ClientAddr;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::{ApiError, ErrorKind, Flavor};
use futures_util::StreamExt;
use std::time::Instant;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

/// The API routes with their layers. `POST /` (lorax-client's route) is merged with the app's `GET /`.
pub fn routes(state: &AppState, options: &HttpOptions) -> Router<AppState> {
    metrics::install();
    let generation = Router::new()
        .route("/", post(lorax::compat))
        .route("/generate", post(lorax::generate))
        .route("/generate_stream", post(lorax::generate_stream))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, options.request_timeout))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_clients))
        .layer(DefaultBodyLimit::max(options.max_body_bytes));
    let router = Router::new()
        .merge(generation)
        .route("/v1/models", get(openai::models))
        .route("/v1/{*rest}", axum::routing::any(unknown_openai_route))
        .route("/info", get(meta::info))
        .route("/health", get(meta::health))
        .route("/metrics", get(meta::metrics))
        .layer(middleware::from_fn(observe))
        .layer(CompressionLayer::new());
    match cors(&options.cors_allow_origins) {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// Per-client limits on the generation routes: the client's rate of requests, and a place among its running
/// generations, held until the response's body (a stream, for streaming routes) is dropped. Over a limit: 429 with
/// `Retry-After`, naming the limit, in the route's API shape.
async fn limit_clients(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let flavor = if req.uri().path().starts_with("/v1/") { Flavor::OpenAi } else { Flavor::Lorax };
    let addr = req.extensions().get::<ClientAddr>().map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.0);
    let permit = match state.clients.request(addr).and_then(|()| state.clients.start(addr, None)) {
        Ok(permit) => permit,
        Err(e) => return ApiError::from(e).into_response_as(flavor),
    };
    let res = next.run(req).await;
    res.map(|body| {
        let held = body.into_data_stream().map(move |chunk| {
            let _held = &permit;
            chunk
        });
        axum::body::Body::from_stream(held)
    })
}

/// Answers 413 to a request whose `Content-Length` is over `max` bytes, before anything reads its body: in the
/// API's JSON shape on the API's routes, as text elsewhere (the pages' server functions).
pub async fn refuse_large_bodies(State(max): State<usize>, req: Request, next: Next) -> Response {
    let declared = req.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if declared.is_some_and(|n: usize| n > max) {
        let error = ApiError::new(ErrorKind::PayloadTooLarge, extract::BODY_TOO_LARGE);
        let path = req.uri().path();
        return match path {
            p if p.starts_with("/v1/") => error.into_response_as(Flavor::OpenAi),
            "/" | "/generate" | "/generate_stream" => error.into_response_as(Flavor::Lorax),
            _ => (StatusCode::PAYLOAD_TOO_LARGE, extract::BODY_TOO_LARGE).into_response(),
        };
    }
    next.run(req).await
}

/// CORS for the listed origins (`*` for any); none when the list is empty (the default).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([axum::http::header::CONTENT_TYPE, axum::http::header::AUTHORIZATION]),
    )
}

async fn unknown_openai_route(req: Request) -> Response {
    let msg = format!("unknown route {} {}", req.method(), req.uri().path());
    ApiError::new(ErrorKind::NotFound, msg).into_response_as(Flavor::OpenAi)
}

/// Records every API request's route, status, adapter and duration, and gives a timed-out request a JSON body.
async fn observe(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "-".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let mut res = next.run(req).await;
    if res.status() == StatusCode::REQUEST_TIMEOUT && res.extensions().get::<generation::AdapterLabel>().is_none() {
        let flavor = if route.starts_with("/v1") { Flavor::OpenAi } else { Flavor::Lorax };
        let message = "the request took longer than the server's timeout (--request-timeout); use a streaming route for long generations";
        res = ApiError::new(ErrorKind::Timeout, message).into_response_as(flavor);
    }
    let adapter = res.extensions().get::<generation::AdapterLabel>().map_or("", |a| a.0.as_str()).to_string();
    metrics::observe_http(&route, res.status().as_u16(), &adapter, start.elapsed());
    res
}
