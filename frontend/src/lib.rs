//! The WASM entry point: hydrates the server-rendered page (the Leptos start-axum-workspace layout).

/// Called by the generated `/pkg/loraland.js` once the WASM is loaded.
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
