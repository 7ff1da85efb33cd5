//! The 404 page.

use leptos::prelude::*;

/// Shown for any path no route matches; answers with status 404 on the server.
#[component]
pub fn NotFound() -> AnyView {
    #[cfg(feature = "ssr")]
    {
        if let Some(resp) = use_context::<leptos_axum::ResponseOptions>() {
            resp.set_status(axum::http::StatusCode::NOT_FOUND);
        }
    }
    view! {
        <section class="panel">
            <h1>"Page not found"</h1>
            <p><a href="/">"Back to the adapters"</a></p>
        </section>
    }
    .into_any()
}
