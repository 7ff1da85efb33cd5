//! Votes: which pane of a run a visitor found better, one per run and session; and the per-adapter win rate the
//! gallery shows (wins over votes cast on runs where the adapter had a pane). A vote comes only from a session that
//! exists and has opened the run: a vote post never creates a session, so cookie-less posts count for nothing.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// An adapter's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinRate {
    /// The adapter id.
    pub adapter: String,
    /// Votes cast on runs where it had a pane.
    pub votes: i64,
    /// Votes for its pane.
    pub wins: i64,
}

/// Records this session's vote for `pane` of run `run_id` (replacing an earlier vote); returns the pane voted for.
#[server(endpoint = "vote")]
pub async fn vote(run_id: String, pane: i64) -> Result<i64, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let no_session = || {
        crate::context::Refusal::forbidden(
            "open the run's page first (with cookies enabled): votes come from visitors who saw it",
        )
    };
    let session = crate::session::current(&state).await?.ok_or_else(no_session)?;
    let viewed = crate::session::has_viewed(&state.db, &session, &run_id).await.map_err(crate::context::db_error)?;
    if !viewed {
        return Err(no_session().into());
    }
    ssr::vote(&state.db, &run_id, &session, pane).await.map_err(crate::context::Refusal::invalid)?;
    Ok(pane)
}

/// Every adapter's win rate.
#[server(endpoint = "win_rates")]
pub async fn win_rates() -> Result<Vec<WinRate>, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    ssr::win_rates(&state.db).await.map_err(crate::context::db_error)
}

#[cfg(feature = "ssr")]
pub(crate) mod ssr {
    //! The SQL behind votes.
    use super::WinRate;
    use crate::db::Db;
    use sqlx::Row;

    /// Stores a vote after checking that the run has that pane and more than one.
    pub async fn vote(db: &Db, run: &str, session: &str, pane: i64) -> Result<(), String> {
        let panes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outputs WHERE run_id = $1")
            .bind(run)
            .fetch_one(db)
            .await
            .map_err(|e| {
                tracing::error!("counting panes: {e}");
                "the server could not read its database".to_string()
            })?;
        if panes == 0 {
            return Err(format!("no run {run}"));
        }
        if panes < 2 {
            return Err("a run with one pane has nothing to compare".into());
        }
        if !(0..panes).contains(&pane) {
            return Err(format!("pane {pane} is not in this run (it has {panes})"));
        }
        sqlx::query(
            "INSERT INTO votes (run_id, session_id, pane, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (run_id, session_id) DO UPDATE SET pane = excluded.pane, created_at = excluded.created_at",
        )
        .bind(run)
        .bind(session)
        .bind(pane)
        .bind(crate::context::now_ms())
        .execute(db)
        .await
        .map_err(|e| {
            tracing::error!("storing a vote: {e}");
            "the server could not store the vote".to_string()
        })?;
        Ok(())
    }

    /// Wins and votes per adapter.
    pub async fn win_rates(db: &Db) -> sqlx::Result<Vec<WinRate>> {
        let rows = sqlx::query(
            "SELECT o.adapter_id AS adapter, COUNT(*) AS votes, SUM(CASE WHEN v.pane = o.pane THEN 1 ELSE 0 END) AS wins \
             FROM votes v JOIN outputs o ON o.run_id = v.run_id \
             WHERE o.adapter_id IS NOT NULL GROUP BY o.adapter_id ORDER BY o.adapter_id",
        )
        .fetch_all(db)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| WinRate { adapter: r.get("adapter"), votes: r.get("votes"), wins: r.get("wins") })
            .collect())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::run::store::insert_run;
        use crate::run::types::{RunParams, RunRequest};
        use crate::session::create_session;
        use std::collections::BTreeMap;

        #[tokio::test]
        async fn votes_replace_per_session_and_count_toward_win_rates() {
            for (_, db) in crate::db::test_databases().await {
                votes(&db).await;
            }
        }

        async fn votes(db: &Db) {
            let (a, b) = (create_session(db).await.unwrap(), create_session(db).await.unwrap());
            let inputs: BTreeMap<String, String> = [("sentence".to_string(), "ok".to_string())].into();
            let req = RunRequest {
                task: "glue_sst2".into(),
                inputs,
                params: RunParams::default(),
                panes: vec![Some("glue_sst2".into()), None],
            };
            let run = insert_run(db, &a, &req, "p").await.unwrap();
            vote(db, &run, &a, 1).await.unwrap();
            vote(db, &run, &a, 0).await.unwrap(); // replaces
            vote(db, &run, &b, 1).await.unwrap();
            let rates = win_rates(db).await.unwrap();
            assert_eq!(rates, [WinRate { adapter: "glue_sst2".into(), votes: 2, wins: 1 }]);
            assert!(vote(db, &run, &a, 2).await.unwrap_err().contains("pane 2 is not in this run"));
            assert!(vote(db, "nope", &a, 0).await.unwrap_err().contains("no run"));
            let solo = RunRequest { panes: vec![None], ..req };
            let one = insert_run(db, &a, &solo, "p").await.unwrap();
            assert!(vote(db, &one, &a, 0).await.unwrap_err().contains("nothing to compare"));
        }
    }
}
