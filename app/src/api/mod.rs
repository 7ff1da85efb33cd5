//! Server functions: public endpoints under `/api`, called from the pages. They run on the server with the
//! [`crate::state::AppState`] of the request's context.

mod session;

pub use session::{get_overview, start_session, GetOverview, Overview, SessionInfo, StartSession};
