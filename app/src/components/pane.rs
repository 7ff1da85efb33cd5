//! One answer column of a comparison: which model, the text as it streams, and its timings.

use leptos::prelude::*;

/// The live state of a pane; all signals, so it is cheap to clone into handlers.
#[derive(Clone, Copy, Debug)]
pub struct PaneState {
    /// The answer so far.
    pub text: RwSignal<String>,
    /// `idle`, `running`, `done`, `stopped` or `error`.
    pub status: RwSignal<&'static str>,
    /// The error message, if it failed.
    pub error: RwSignal<Option<String>>,
    /// Pieces received (about one per token).
    pub pieces: RwSignal<usize>,
    /// Final token count, time to first token (ms) and decode speed, from the server.
    pub done: RwSignal<Option<(i64, f64, Option<f64>)>>,
}

impl PaneState {
    /// An idle pane.
    pub fn new() -> Self {
        Self {
            text: RwSignal::new(String::new()),
            status: RwSignal::new("idle"),
            error: RwSignal::new(None),
            pieces: RwSignal::new(0),
            done: RwSignal::new(None),
        }
    }

    /// Clears it for a new run.
    pub fn reset(&self) {
        self.text.set(String::new());
        self.status.set("running");
        self.error.set(None);
        self.pieces.set(0);
        self.done.set(None);
    }

    /// Applies one event of `/runs/{id}/stream` (already known to be for this pane).
    pub fn apply(&self, event: &serde_json::Value) {
        if let Some(t) = event.get("text").and_then(|t| t.as_str()) {
            self.text.update(|s| s.push_str(t));
            self.pieces.update(|n| *n += 1);
        }
        if let Some(e) = event.get("error").and_then(|e| e.as_str()) {
            self.error.set(Some(e.to_string()));
            self.status.set("error");
        }
        if let Some(d) = event.get("done") {
            let tokens = d.get("generated_tokens").and_then(|v| v.as_i64()).unwrap_or(0);
            let ttft = d.get("ttft_ms").and_then(|v| v.as_f64()).unwrap_or(0.0);
            let tps = d.get("tokens_per_s").and_then(|v| v.as_f64());
            self.done.set(Some((tokens, ttft, tps)));
            self.status.set("done");
        }
    }
}

impl PaneState {
    /// The run's stream was lost: a pane that had not finished says so, instead of looking as if it still ran.
    pub fn lose_connection(&self) {
        if self.status.get_untracked() == "running" {
            self.error.set(Some("the connection to the server was lost before this answer ended".into()));
            self.status.set("error");
        }
    }
}

impl Default for PaneState {
    fn default() -> Self {
        Self::new()
    }
}

/// Formats the timings line of a pane.
pub fn timings(done: Option<(i64, f64, Option<f64>)>, pieces: usize) -> String {
    match done {
        Some((tokens, ttft, tps)) => {
            let speed = tps.map_or_else(|| "–".to_string(), |t| format!("{t:.1}"));
            format!("{tokens} tokens · first token {ttft:.0} ms · {speed} tokens/s")
        }
        None if pieces > 0 => format!("{pieces} tokens…"),
        None => String::new(),
    }
}

/// A pane.
#[component]
pub fn Pane(
    /// Column index (for test selectors).
    index: usize,
    /// Heading: the adapter's name or "Base model".
    title: String,
    /// The model id shown under the heading.
    model: String,
    state: PaneState,
) -> AnyView {
    view! {
        <section class="pane" data-pane=index data-status=move || state.status.get() aria-live="polite">
            <header class="pane-head">
                <h3>{title}</h3>
                <code class="muted">{model}</code>
            </header>
            <div class="pane-text">{move || state.text.get()}</div>
            {move || state.error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            <p class="pane-timings muted">{move || timings(state.done.get(), state.pieces.get())}</p>
        </section>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_stream_marks_only_unfinished_panes() {
        let owner = Owner::new();
        owner.with(|| {
            let (running, done) = (PaneState::new(), PaneState::new());
            running.reset();
            done.reset();
            done.apply(&serde_json::json!({"pane": 1, "text": "ok", "done": {"generated_tokens": 1, "ttft_ms": 3.0}}));
            running.apply(&serde_json::json!({"pane": 0, "text": "par"}));
            for p in [&running, &done] {
                p.lose_connection();
            }
            assert_eq!(running.status.get_untracked(), "error");
            assert_eq!(running.text.get_untracked(), "par", "the text so far is kept");
            assert!(running.error.get_untracked().unwrap().contains("connection to the server was lost"));
            assert_eq!((done.status.get_untracked(), done.error.get_untracked()), ("done", None));
        });
    }

    #[test]
    fn timings_line() {
        assert_eq!(timings(None, 0), "");
        assert_eq!(timings(None, 3), "3 tokens…");
        assert_eq!(timings(Some((12, 40.4, Some(25.25))), 12), "12 tokens · first token 40 ms · 25.2 tokens/s");
        assert_eq!(timings(Some((1, 5.0, None)), 1), "1 tokens · first token 5 ms · – tokens/s");
    }
}
