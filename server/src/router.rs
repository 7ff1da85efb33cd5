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
        .route("/train/jobs", axum::routing::post(app::train::routes::create_job))
        .route("/train/{id}/events", axum::routing::get(app::train::routes::job_events))
        .route("/train/{id}/adapter.zip", axum::routing::get(app::train::routes::download))
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
        .layer(axum::middleware::from_fn_with_state(ProxyTrust::of(options), client_addr))
        .with_state(state)
}

/// Whose `X-Forwarded-For` is believed: none, or the peers in these ranges (`--trust-proxy`, `--trusted-proxies`).
#[derive(Clone, Debug)]
struct ProxyTrust(Option<std::sync::Arc<[ipnet::IpNet]>>);

impl ProxyTrust {
    fn of(options: &HttpOptions) -> Self {
        Self(options.trust_proxy.then(|| options.trusted_proxies.clone().into()))
    }

    /// The client of a request from `peer` (`None`: driven in-process, no peer) with this `X-Forwarded-For`: the
    /// last entry, the one the proxy appended, when the peer is a trusted proxy; otherwise the peer. The entries
    /// before the last are whatever the client sent, so a client cannot pick its address (and its limits) with
    /// them, nor by sending the header to a replica directly.
    fn client(&self, peer: Option<IpAddr>, forwarded: Option<&str>) -> IpAddr {
        let peer = peer.map(|p| p.to_canonical());
        let trusted = match (&self.0, peer) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(nets), Some(p)) => nets.iter().any(|n| n.contains(&p)),
        };
        let last = || forwarded?.rsplit(',').next()?.trim().parse::<IpAddr>().ok();
        trusted.then(last).flatten().or(peer).unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }
}

/// Puts the request's [`ClientAddr`] in its extensions (see [`ProxyTrust::client`]). Without a peer (tests driving
/// the router in-process), the unspecified address.
async fn client_addr(
    axum::extract::State(trust): axum::extract::State<ProxyTrust>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let forwarded = req.headers().get("x-forwarded-for").and_then(|h| h.to_str().ok());
    let addr = trust.client(peer, forwarded);
    req.extensions_mut().insert(ClientAddr(addr));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies_and_only_their_own_entry() {
        let trusting = ProxyTrust::of(&HttpOptions { trust_proxy: true, ..HttpOptions::default() });
        let nginx = Some(ip("10.0.0.2"));
        // Behind the proxy: the entry it appended, whatever the client wrote before it.
        assert_eq!(trusting.client(nginx, Some("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(trusting.client(nginx, Some("198.51.100.1, 203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(trusting.client(Some(ip("::ffff:127.0.0.1")), Some("203.0.113.7")), ip("203.0.113.7"));
        // A peer outside the trusted ranges (a visitor reaching the replica directly) is itself.
        assert_eq!(trusting.client(Some(ip("198.51.100.9")), Some("203.0.113.7")), ip("198.51.100.9"));
        assert_eq!(trusting.client(Some(ip("2001:db8::1")), Some("203.0.113.7")), ip("2001:db8::1"));
        // A garbled header, or none: the peer.
        assert_eq!(trusting.client(nginx, Some("not an address")), ip("10.0.0.2"));
        assert_eq!(trusting.client(nginx, None), ip("10.0.0.2"));
        // Without --trust-proxy the header means nothing.
        let plain = ProxyTrust::of(&HttpOptions::default());
        assert_eq!(plain.client(nginx, Some("203.0.113.7")), ip("10.0.0.2"));
        // The ranges are the operator's to set.
        let only = ProxyTrust::of(&HttpOptions {
            trust_proxy: true,
            trusted_proxies: vec!["192.0.2.0/24".parse().unwrap()],
            ..HttpOptions::default()
        });
        assert_eq!(only.client(Some(ip("192.0.2.5")), Some("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(only.client(nginx, Some("203.0.113.7")), ip("10.0.0.2"));
    }
}
