//! Server facts for the home page.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// What the home page shows about the server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Overview {
    /// Name of the loaded base model.
    pub model: String,
    /// Sessions stored in the database.
    pub sessions: i64,
}

/// The loaded model's name and how many sessions are stored.
#[server(endpoint = "overview")]
pub async fn get_overview() -> Result<Overview, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let sessions = crate::session::count_sessions(&state.db).await.map_err(crate::context::db_error)?;
    Ok(Overview { model: state.model_name.to_string(), sessions })
}
