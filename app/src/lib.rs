//! LoRA Land's web app: the page shell, the router and the pages, rendered on the server (`ssr`) and hydrated in the
//! browser (`hydrate`). Layout after Leptos' start-axum-workspace.
//!
//! Every component returns [`AnyView`] (its view ends in `.into_any()`), as the Leptos book advises for large
//! apps: the type of an unerased view nests the types of every component inside it, and a release build of the
//! WASM (where cargo-leptos does not set `--cfg erase_components`, as it does for debug builds) of the home page
//! overflowed rustc's query depth limit by 130 levels. Erasing at each component keeps every type as deep as one
//! component's own markup, however the pages grow.

pub mod api;
pub mod components;
#[cfg(feature = "ssr")]
pub mod context;
#[cfg(feature = "ssr")]
pub mod db;
#[cfg(feature = "ssr")]
pub mod limits;
pub mod pages;
pub mod run;
#[cfg(feature = "ssr")]
pub mod session;
#[cfg(feature = "ssr")]
pub mod state;
pub mod train;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::{
    components::{Route, Router, Routes},
    ParamSegment, SsrMode, StaticSegment,
};

/// The HTML document around the app; used by the server for every page.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <meta name="color-scheme" content="light dark"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// The root component: meta tags, stylesheet and routes.
#[component]
pub fn App() -> AnyView {
    provide_meta_context();
    view! {
        <Stylesheet id="leptos" href="/pkg/loraland.css"/>
        <Title text="LoRA Land"/>
        <Router>
            <components::Header/>
            <main id="main">
                <Routes fallback=|| view! { <pages::NotFound/> }>
                    // Async: the server waits for the data and sends whole pages, so they read the same
                    // without JavaScript (out-of-order streaming needs a script to place its chunks).
                    <Route path=StaticSegment("") view=pages::Home ssr=SsrMode::Async/>
                    <Route path=(StaticSegment("a"), ParamSegment("adapter")) view=pages::Playground ssr=SsrMode::Async/>
                    <Route path=(StaticSegment("r"), ParamSegment("id")) view=pages::RunPage ssr=SsrMode::Async/>
                    <Route path=StaticSegment("history") view=pages::History ssr=SsrMode::Async/>
                    <Route path=StaticSegment("compare") view=pages::Compare ssr=SsrMode::Async/>
                    <Route path=StaticSegment("train") view=pages::Train ssr=SsrMode::Async/>
                    <Route path=(StaticSegment("train"), ParamSegment("id")) view=pages::JobPage ssr=SsrMode::Async/>
                </Routes>
            </main>
        </Router>
    }
    .into_any()
}
