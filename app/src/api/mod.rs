//! Server functions: public endpoints under `/api`, called from the pages. They run on the server with the
//! [`crate::state::AppState`] of the request's context.

pub mod run;
pub(crate) mod session;

pub use session::{get_overview, start_session, GetOverview, Overview, SessionInfo, StartSession};
pub use run::{count_tokens, get_run, start_run, CountTokens, GetRun, PaneView, RunParams, RunRequest, RunView, StartRun};
