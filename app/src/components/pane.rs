//! One answer column of a comparison: which model, the text as it streams, and its timings. The browser's side of
//! the pane protocol: [`PaneState::apply`] reads the same [`PaneEvent`] type the server sends.

use crate::api::{PaneEvent, PaneStatus, PaneTimings};
use leptos::prelude::*;

/// The live state of a pane; all signals, so it is cheap to clone into handlers.
#[derive(Clone, Copy, Debug)]
pub struct PaneState {
    /// The answer so far.
    pub text: RwSignal<String>,
    /// Where it stands.
    pub status: RwSignal<PaneStatus>,
    /// The error message, if it failed.
    pub error: RwSignal<Option<String>>,
    /// Pieces received (about one per token).
    pub pieces: RwSignal<usize>,
    /// The server's figures once it is done.
    pub done: RwSignal<Option<PaneTimings>>,
}

impl PaneState {
    /// A pane that has not run.
    pub fn new() -> Self {
        Self {
            text: RwSignal::new(String::new()),
            status: RwSignal::new(PaneStatus::Pending),
            error: RwSignal::new(None),
            pieces: RwSignal::new(0),
            done: RwSignal::new(None),
        }
    }

    /// Clears it for a new run.
    pub fn reset(&self) {
        self.text.set(String::new());
        self.status.set(PaneStatus::Running);
        self.error.set(None);
        self.pieces.set(0);
        self.done.set(None);
    }

    /// Applies one event of `/runs/{id}/stream` (already known to be for this pane).
    pub fn apply(&self, event: &PaneEvent) {
        match event {
            PaneEvent::Text { text, .. } => {
                self.text.update(|s| s.push_str(text));
                self.pieces.update(|n| *n += 1);
            }
            PaneEvent::Status { status, error, timings, .. } => {
                self.error.set(error.clone());
                self.done.set(*timings);
                self.status.set(*status);
            }
        }
    }

    /// The run's stream was lost: a pane that had not finished says so, instead of looking as if it still ran.
    pub fn lose_connection(&self) {
        if self.status.get_untracked() == PaneStatus::Running {
            self.error.set(Some("the connection to the server was lost before this answer ended".into()));
            self.status.set(PaneStatus::Error);
        }
    }

    /// The visitor stopped the run.
    pub fn stop(&self) {
        if self.status.get_untracked() == PaneStatus::Running {
            self.status.set(PaneStatus::Cancelled);
        }
    }
}

impl Default for PaneState {
    fn default() -> Self {
        Self::new()
    }
}

/// Formats the timings line of a pane.
pub fn timings(status: PaneStatus, done: Option<PaneTimings>, pieces: usize) -> String {
    match (status, done) {
        (_, Some(PaneTimings { generated_tokens, ttft_ms, tokens_per_s })) => {
            let speed = tokens_per_s.map_or_else(|| "–".to_string(), |t| format!("{t:.1}"));
            format!("{generated_tokens} tokens · first token {ttft_ms:.0} ms · {speed} tokens/s")
        }
        (PaneStatus::Cancelled, None) => "Stopped before it finished.".into(),
        (PaneStatus::Interrupted, None) => "Cut off by a server restart before it finished.".into(),
        (_, None) if pieces > 0 => format!("{pieces} tokens…"),
        (_, None) => String::new(),
    }
}

/// A pane's heading and the model id shown under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaneLabel {
    /// The adapter's task name, or "Base model".
    pub title: String,
    /// The adapter id, or `base`.
    pub model: String,
}

/// A pane.
#[component]
pub fn Pane(
    /// Column index (for test selectors).
    index: usize,
    /// Heading and model id.
    label: PaneLabel,
    state: PaneState,
) -> AnyView {
    view! {
        <section class="pane" data-pane=index data-status=move || state.status.get().as_str() aria-live="polite">
            <header class="pane-head">
                <h3>{label.title}</h3>
                <code class="muted">{label.model}</code>
            </header>
            <div class="pane-text">{move || state.text.get()}</div>
            {move || state.error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            <p class="pane-timings muted">{move || timings(state.status.get(), state.done.get(), state.pieces.get())}</p>
        </section>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_line() {
        let t = |n, ttft, tps| Some(PaneTimings { generated_tokens: n, ttft_ms: ttft, tokens_per_s: tps });
        assert_eq!(timings(PaneStatus::Running, None, 0), "");
        assert_eq!(timings(PaneStatus::Running, None, 3), "3 tokens…");
        assert_eq!(
            timings(PaneStatus::Done, t(12, 40.4, Some(25.25)), 12),
            "12 tokens · first token 40 ms · 25.2 tokens/s"
        );
        assert_eq!(timings(PaneStatus::Done, t(1, 5.0, None), 1), "1 tokens · first token 5 ms · – tokens/s");
        assert_eq!(timings(PaneStatus::Cancelled, None, 4), "Stopped before it finished.");
    }

    #[test]
    fn events_drive_the_pane_and_a_lost_stream_marks_only_unfinished_panes() {
        let owner = Owner::new();
        owner.with(|| {
            let (running, done) = (PaneState::new(), PaneState::new());
            running.reset();
            done.reset();
            done.apply(&PaneEvent::Text { pane: 1, text: "ok".into() });
            let figures = PaneTimings { generated_tokens: 1, ttft_ms: 3.0, tokens_per_s: None };
            done.apply(&PaneEvent::Status {
                pane: 1,
                status: PaneStatus::Done,
                finish_reason: Some(crate::api::FinishReason::Eos),
                error: None,
                timings: Some(figures),
            });
            running.apply(&PaneEvent::Text { pane: 0, text: "par".into() });
            for p in [&running, &done] {
                p.lose_connection();
            }
            assert_eq!(running.status.get_untracked(), PaneStatus::Error);
            assert_eq!(running.text.get_untracked(), "par", "the text so far is kept");
            assert!(running.error.get_untracked().unwrap().contains("connection to the server was lost"));
            assert_eq!((done.status.get_untracked(), done.error.get_untracked()), (PaneStatus::Done, None));
            assert_eq!((done.text.get_untracked(), done.done.get_untracked()), ("ok".to_string(), Some(figures)));
        });
    }
}
