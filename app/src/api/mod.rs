//! Server functions: public endpoints under `/api`, called from the pages. They run on the server with the
//! [`crate::state::AppState`] of the request's context.

pub mod run;
pub(crate) mod session;
pub mod vote;

pub use run::{
    count_tokens, get_run, list_runs, run_form, start_run, CountTokens, GetRun, ListRuns, PaneView, RunForm, RunPage,
    RunParams, RunRequest, RunSummary, RunView, StartRun, MAX_PANES,
};
pub use session::{get_overview, GetOverview, Overview};
pub use vote::{vote, win_rates, Vote, WinRate, WinRates};
