//! Server functions: public endpoints under `/api`, called from the pages, and the types they exchange. They run on
//! the server with the [`crate::state::AppState`] of the request's context.

pub mod overview;
pub mod run;
pub mod vote;

pub use crate::run::types::{
    FinishReason, PaneEvent, PaneStatus, PaneTimings, PaneView, RunPage, RunParams, RunRequest, RunSummary, RunView,
    MAX_APP_NEW_TOKENS, MAX_PANES,
};
pub use overview::{get_overview, GetOverview, Overview};
pub use run::{
    count_tokens, get_run, list_runs, run_form, start_run, stop_run, CountTokens, GetRun, ListRuns, RunForm, StartRun,
    StopRun,
};
pub use vote::{vote, win_rates, Vote, WinRate, WinRates};
