//! Server facts for the home page, and the SQL of visitor sessions (the cookie logic is in `crate::session`).

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
