//! Server functions: public endpoints under `/api`, called from the pages, and the types they exchange. They run on
//! the server with the [`crate::state::AppState`] of the request's context.

pub mod overview;
pub mod run;
pub mod train;
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
pub use train::{
    cancel_job, delete_job, get_job, list_jobs, publish_job, restart_job, train_info, trained_adapters, CancelJob,
    DeleteJob, PublishJob, RestartJob, TrainOffer,
};
pub use vote::{vote, win_rates, Vote, WinRate, WinRates};
