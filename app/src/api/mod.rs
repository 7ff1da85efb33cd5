//! Server functions: public endpoints under `/api`, called from the pages. They run on the server with the
//! [`crate::state::AppState`] of the request's context.

pub mod run;
pub(crate) mod session;

pub use run::{
    count_tokens, get_run, list_runs, start_run, CountTokens, GetRun, ListRuns, PaneView, RunPage, RunParams,
    RunRequest, RunSummary, RunView, StartRun,
};
pub use session::{get_overview, start_session, GetOverview, Overview, SessionInfo, StartSession};
