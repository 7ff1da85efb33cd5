//! Sessions and server facts: the first server functions, each a round trip through SQLite.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// A newly started session.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session's id (a random UUID).
    pub id: String,
    /// How many sessions the database holds, this one included.
    pub total: i64,
}

/// What the home page shows about the server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Overview {
    /// Name of the loaded base model.
    pub model: String,
    /// Sessions stored in the database.
    pub sessions: i64,
}

/// Creates a session row and returns it with the number of sessions stored.
#[server(endpoint = "start_session")]
pub async fn start_session() -> Result<SessionInfo, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let id = ssr::create_session(&state.db).await.map_err(|e| ServerFnError::new(format!("database error: {e}")))?;
    let total = ssr::count_sessions(&state.db).await.map_err(|e| ServerFnError::new(format!("database error: {e}")))?;
    Ok(SessionInfo { id, total })
}

/// The loaded model's name and how many sessions are stored.
#[server(endpoint = "overview")]
pub async fn get_overview() -> Result<Overview, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let sessions =
        ssr::count_sessions(&state.db).await.map_err(|e| ServerFnError::new(format!("database error: {e}")))?;
    Ok(Overview { model: state.model_name.to_string(), sessions })
}

#[cfg(feature = "ssr")]
pub(crate) mod ssr {
    //! The SQL behind the session server functions.
    use sqlx::SqlitePool;

    /// Inserts a new session and returns its id.
    pub async fn create_session(db: &SqlitePool) -> sqlx::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query("INSERT INTO sessions (id, created_at) VALUES (?, ?)")
            .bind(&id)
            .bind(crate::state::now_ms())
            .execute(db)
            .await?;
        Ok(id)
    }

    /// Number of stored sessions.
    pub async fn count_sessions(db: &SqlitePool) -> sqlx::Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(db).await
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[sqlx::test(migrations = "../migrations")]
        async fn sessions_are_created_and_counted(db: SqlitePool) {
            assert_eq!(count_sessions(&db).await.unwrap(), 0);
            let a = create_session(&db).await.unwrap();
            let b = create_session(&db).await.unwrap();
            assert_ne!(a, b);
            assert_eq!(count_sessions(&db).await.unwrap(), 2);
        }
    }
}
