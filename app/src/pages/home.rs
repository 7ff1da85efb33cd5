//! The home page: what LoRA Land is, which model is loaded, and the adapter gallery.

use crate::api::get_overview;
use crate::components::{Gallery, TrainedGallery};
use leptos::prelude::*;

/// `/`: the landing page.
#[component]
pub fn Home() -> AnyView {
    let info = Resource::new(|| (), |_| get_overview());

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
                                    <dt>"Visitor sessions"</dt>
                                    <dd>{info.sessions}</dd>
                                </dl>
                            }
                            .into_any(),
                            Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                        })
                }}
            </Suspense>
        </section>
        <TrainedGallery/>
        <Gallery/>
    }
    .into_any()
}
