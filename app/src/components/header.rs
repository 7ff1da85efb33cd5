//! The site header: name, tagline and the hydration marker the browser tests wait for.

use leptos::prelude::*;

/// Site header. Once the WASM has hydrated the page, `data-hydrated="true"` appears on it: effects never run
/// during server rendering, so the attribute tells tests (and curious users) that the page is interactive.
#[component]
pub fn Header() -> AnyView {
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    view! {
        <header class="site-header" data-hydrated=move || hydrated.get().to_string()>
            <a class="brand" href="/">"LoRA Land"</a>
            <span class="tagline">"Many fine-tuned adapters, one base model"</span>
            <nav class="site-nav" aria-label="Site">
                <a href="/">"Adapters"</a>
                <a href="/compare">"Compare"</a>
                <a href="/train">"Train"</a>
                <a href="/history">"History"</a>
            </nav>
        </header>
    }
    .into_any()
}
