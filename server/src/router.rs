//! The axum router: Leptos pages and server functions with the app state in their context, static files, and the
//! HTTP layers around them.

use crate::config::HttpOptions;
use crate::{api, AppState};
use app::context::ClientAddr;
use app::{shell, App};
use axum::Router;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, AxumRouteListing, LeptosRoutes};
use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Builds the whole router for `state` with the default HTTP options. Tests drive it with
/// `tower::ServiceExt::oneshot`.
pub fn router(state: AppState) -> Router {
    router_with(state, &HttpOptions::default())
}

/// The app's page routes, generated once per process. Leptos suppresses resource loading process-wide while it
/// walks the app to list routes, so a page rendering at that moment would never finish (leptos-rs/leptos#4773);
/// generating the list once, before any router exists, keeps renders and route listing apart.
static ROUTES: LazyLock<Vec<AxumRouteListing>> = LazyLock::new(|| generate_route_list(App));

/// Builds the whole router: the API routes, the Leptos pages and server functions, static files.
pub fn router_with(state: AppState, options: &HttpOptions) -> Router {
    let routes = ROUTES.clone();
    let leptos = state.leptos.clone();
    let context_state = state.clone();
    Router::new()
        .merge(api::routes(&state, options))
        .route("/runs/{id}/stream", axum::routing::get(app::run::stream::run_events))
        .leptos_routes_with_context(
            &state,
            routes,
            move || provide_context(context_state.clone()),
            move || shell(leptos.clone()),
        )
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // Every route's body, the server functions' included: a declared length over the limit is answered 413 at
        // once, in the route's shape; a chunked body is cut off at the limit as it is read.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(options.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(options.max_body_bytes, api::refuse_large_bodies))
        .layer(axum::middleware::from_fn_with_state(options.trust_proxy, client_addr))
        .with_state(state)
}

/// Puts the request's [`ClientAddr`] in its extensions: the peer's address, or with `--trust-proxy` the last
/// address of `X-Forwarded-For`, the one the reverse proxy in front of us appended: the client as it saw it. The
/// entries before it are whatever the client sent, so a client cannot pick its address (and its limits) with them.
/// Without a peer (tests driving the router in-process), the unspecified address.
async fn client_addr(
    axum::extract::State(trust_proxy): axum::extract::State<bool>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let forwarded = || {
        let header = req.headers().get("x-forwarded-for")?.to_str().ok()?;
        header.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
    };
    let addr = trust_proxy.then(forwarded).flatten().or(peer).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    req.extensions_mut().insert(ClientAddr(addr));
    next.run(req).await
}
