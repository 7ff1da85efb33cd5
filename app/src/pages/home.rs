//! The home page: what LoRA Land is, which model is loaded, the adapter gallery, and a session started through a
//! server function.

use crate::api::{get_overview, StartSession};
use crate::components::Gallery;
use leptos::prelude::*;

/// `/`: the landing page.
#[component]
pub fn Home() -> impl IntoView {
    let info = Resource::new(|| (), |_| get_overview());
    let start = ServerAction::<StartSession>::new();
    let session = start.value();

    view! {
        <section class="panel intro">
            <h1>"LoRA Land"</h1>
            <p>
                "Serve many task-specific LoRA adapters on one shared base model, and compare their answers "
                "with the base model's, side by side."
            </p>
            <Suspense fallback=|| view! { <p class="muted">"Loading server information…"</p> }>
                {move || {
                    info.get()
                        .map(|res| match res {
                            Ok(info) => view! {
                                <dl class="server-info" id="server-info">
                                    <dt>"Base model"</dt>
                                    <dd id="model-name">{info.model}</dd>
                                    <dt>"Sessions stored"</dt>
                                    <dd>{info.sessions}</dd>
                                </dl>
                            }
                            .into_any(),
                            Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                        })
                }}
            </Suspense>
        </section>
        <Gallery/>
        <section class="panel">
            <h2>"Your session"</h2>
            <button
                id="start-session"
                class="button primary"
                on:click=move |_| {
                    start.dispatch(StartSession {});
                }
                disabled=move || start.pending().get()
            >
                "Start a session"
            </button>
            <p id="session-status" aria-live="polite">
                {move || match session.get() {
                    None => "No session yet.".to_string(),
                    Some(Ok(s)) => format!("Session {} started ({} in total).", s.id, s.total),
                    Some(Err(e)) => format!("Could not start a session: {e}"),
                }}
            </p>
        </section>
    }
}
