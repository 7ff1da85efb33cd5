//! What a run is, on both sides of the wire: what a visitor asks for ([`RunRequest`], [`RunParams`]), a stored run
//! and its panes ([`RunView`], [`PaneView`], [`PaneStatus`], [`FinishReason`]), what `/runs/{id}/stream` sends
//! ([`PaneEvent`]), and a page of history ([`RunPage`]). The browser and the server read the same types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most panes in one run (the compare page's limit).
pub const MAX_PANES: usize = 4;
/// The largest `max_new_tokens` the app's form offers (the engine's own limit is what is enforced).
pub const MAX_APP_NEW_TOKENS: u32 = 256;

/// Generation parameters of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunParams {
    /// Tokens to generate at most.
    pub max_new_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f32,
    /// Seed of the sampler.
    pub seed: u64,
    /// Hold the base model's panes to the task's output format (its label set or JSON schema, see
    /// `catalog::Task::constraint`); adapter panes run free, as they were trained.
    #[serde(default)]
    pub constrained: bool,
}

impl Default for RunParams {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: 0.0, top_p: 1.0, seed: 0, constrained: false }
    }
}

/// What the visitor asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The catalog task whose template the inputs fill.
    pub task: String,
    /// A value per template variable.
    pub inputs: BTreeMap<String, String>,
    /// Generation parameters.
    pub params: RunParams,
    /// One entry per pane: an adapter id, or `None` for the base model.
    pub panes: Vec<Option<String>>,
}

/// Why a generation ended: the engine's `FinishReason`, with its names (the browser cannot link the engine; the
/// server converts with one exhaustive match, and the names are stored as they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop sequence appeared in the text.
    StopSequence,
    /// The output constraint allowed no further token.
    Constraint,
}

impl FinishReason {
    const ALL: [Self; 4] = [Self::Length, Self::Eos, Self::StopSequence, Self::Constraint];

    /// The stored name: `length`, `eos`, `stop_sequence`, `constraint`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Eos => "eos",
            Self::StopSequence => "stop_sequence",
            Self::Constraint => "constraint",
        }
    }

    /// The reason with this stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// Where a pane stands. Stored in the database as [`PaneStatus::as_str`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaneStatus {
    /// Not started.
    #[default]
    Pending,
    /// Generating.
    Running,
    /// Finished (see its finish reason).
    Done,
    /// Stopped by the visitor, or everyone watching it left; its text so far is kept.
    Cancelled,
    /// Cut off by a server restart; its text so far is kept, and its run's owner can run it again.
    Interrupted,
    /// It could not run (the message says why).
    Error,
}

impl PaneStatus {
    /// The name shown on the page (`data-status`) and stored: `pending`, `running`, `done`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
            Self::Error => "error",
        }
    }

    /// The status with this stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Running, Self::Done, Self::Cancelled, Self::Interrupted, Self::Error]
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// Whether the pane will not change any more (by itself).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Cancelled | Self::Error)
    }
}

/// A finished pane's figures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaneTimings {
    /// Tokens generated.
    pub generated_tokens: i64,
    /// Time to first token, in milliseconds.
    pub ttft_ms: f64,
    /// Decode speed.
    pub tokens_per_s: Option<f64>,
}

/// One pane of a stored run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaneView {
    /// Column index.
    pub pane: i64,
    /// The adapter, `None` for the base model.
    pub adapter: Option<String>,
    /// The answer so far (the whole answer once done).
    pub text: String,
    /// Where it stands.
    pub status: PaneStatus,
    /// Why it ended, when done.
    pub finish_reason: Option<FinishReason>,
    /// The error, when it could not run.
    pub error: Option<String>,
    /// Figures, when done.
    pub timings: Option<PaneTimings>,
}

/// What `/runs/{id}/stream` sends, as the JSON data of each server-sent event (the browser reads the same type).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PaneEvent {
    /// More of a pane's text (on opening, the text it already has).
    Text {
        /// The pane.
        pane: i64,
        /// The text to append.
        text: String,
    },
    /// A pane's state changed: it ended, or (for a run the visitor does not own) it is not generating.
    Status {
        /// The pane.
        pane: i64,
        /// Where it stands now.
        status: PaneStatus,
        /// Why it ended, when done.
        finish_reason: Option<FinishReason>,
        /// The error, when it could not run.
        error: Option<String>,
        /// Figures, when done.
        timings: Option<PaneTimings>,
    },
}

impl PaneEvent {
    /// The pane it is about.
    pub fn pane(&self) -> i64 {
        match self {
            Self::Text { pane, .. } | Self::Status { pane, .. } => *pane,
        }
    }

    /// The status event of a stored pane.
    pub fn status_of(p: &PaneView) -> Self {
        Self::Status {
            pane: p.pane,
            status: p.status,
            finish_reason: p.finish_reason,
            error: p.error.clone(),
            timings: p.timings,
        }
    }
}

/// A stored run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// The run id (the `/r/:id` link).
    pub id: String,
    /// The catalog task.
    pub task: Option<String>,
    /// The template inputs.
    pub inputs: BTreeMap<String, String>,
    /// The rendered prompt.
    pub prompt: String,
    /// Generation parameters.
    pub params: RunParams,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The panes, in order.
    pub panes: Vec<PaneView>,
}

/// A page of this session's runs, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunPage {
    /// The runs of this page.
    pub runs: Vec<RunSummary>,
    /// Whether an older page exists.
    pub more: bool,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run id.
    pub id: String,
    /// The catalog task.
    pub task: Option<String>,
    /// The start of the prompt.
    pub excerpt: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Panes, and how many finished.
    pub panes: i64,
    /// Finished panes.
    pub finished: i64,
}

/// Runs shown per history page.
pub const HISTORY_PAGE: i64 = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_wire() {
        for s in [PaneStatus::Pending, PaneStatus::Running, PaneStatus::Done, PaneStatus::Cancelled] {
            assert_eq!(PaneStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for r in FinishReason::ALL {
            assert_eq!(FinishReason::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        let event = PaneEvent::Text { pane: 1, text: "hi".into() };
        assert_eq!(serde_json::to_value(&event).unwrap(), serde_json::json!({"type": "text", "pane": 1, "text": "hi"}));
    }
}
