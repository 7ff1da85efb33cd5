//! The training server functions: what the Train page offers (`train_info`), a visitor's jobs (`list_jobs`,
//! `get_job`), what its owner may do with one (`cancel_job`, `restart_job`, `delete_job`, `publish_job`), and the
//! trained adapters the gallery shows (`trained_adapters`). A job is made by the form's `POST /train/jobs` (see
//! [`crate::train`]).

use crate::train::{JobView, TrainParams};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// What the Train page offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOffer {
    /// Whether this server trains at all.
    pub available: bool,
    /// Whether it has synthetic data for the catalog's tasks.
    pub synthetic: bool,
    /// The form's defaults.
    pub defaults: TrainParams,
    /// Most steps a job may ask for.
    pub max_steps: usize,
    /// Largest upload, KiB.
    pub max_upload_kib: usize,
    /// Most examples in an upload.
    pub max_examples: usize,
    /// Jobs one session may have queued or running.
    pub jobs_per_session: usize,
}

/// What the Train page offers on this server.
#[server(endpoint = "train_info")]
pub async fn train_info() -> Result<TrainOffer, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let defaults = TrainParams::default();
    Ok(match &state.training {
        Some(t) => {
            let s = t.settings();
            TrainOffer {
                available: true,
                synthetic: t.lab().has_synthetic("glue_sst2"),
                defaults,
                max_steps: s.max_steps,
                max_upload_kib: s.max_upload_bytes >> 10,
                max_examples: s.max_examples,
                jobs_per_session: s.jobs_per_session,
            }
        }
        None => TrainOffer {
            available: false,
            synthetic: false,
            defaults,
            max_steps: 0,
            max_upload_kib: 0,
            max_examples: 0,
            jobs_per_session: 0,
        },
    })
}

/// This session's jobs, newest first.
#[server(endpoint = "list_jobs")]
pub async fn list_jobs() -> Result<Vec<JobView>, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let Some(session) = crate::session::current(&state).await? else { return Ok(Vec::new()) };
    crate::train::store::list_of(&state.db, &session).await.map_err(crate::context::db_error)
}

/// Job `id`, if this session made it or it is published.
#[server(endpoint = "get_job")]
pub async fn get_job(id: String) -> Result<Option<JobView>, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let session = crate::session::current(&state).await?;
    crate::train::store::visible(&state.db, &id, session.as_deref()).await.map_err(crate::context::db_error)
}

/// The trained adapters this session's gallery shows: its own finished ones, and every published one.
#[server(endpoint = "trained_adapters")]
pub async fn trained_adapters() -> Result<Vec<JobView>, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let session = crate::session::current(&state).await?;
    crate::train::store::gallery(&state.db, session.as_deref()).await.map_err(crate::context::db_error)
}

/// Checks that this session made job `id`.
#[cfg(feature = "ssr")]
async fn owned(state: &crate::state::AppState, id: &str) -> Result<(), ServerFnError> {
    let refused = || crate::context::Refusal::forbidden("only the session that made a training job can change it");
    let Some(session) = crate::session::current(state).await? else { return Err(refused().into()) };
    match crate::train::store::load(&state.db, id, None).await.map_err(crate::context::db_error)? {
        Some((_, owner)) if owner == session => Ok(()),
        _ => Err(refused().into()),
    }
}

/// A job that cannot make the change asked of it.
#[cfg(feature = "ssr")]
fn not_now(what: &str) -> ServerFnError {
    crate::context::Refusal::new(axum::http::StatusCode::CONFLICT, what.to_string()).into()
}

/// Cancels this session's queued or running job (a running one stops after its current step).
#[server(endpoint = "cancel_job")]
pub async fn cancel_job(id: String) -> Result<(), ServerFnError> {
    use crate::train::JobStatus;
    let state = expect_context::<crate::state::AppState>();
    owned(&state, &id).await?;
    match crate::train::store::transition(&state.db, &id, JobStatus::Cancelled, None).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(not_now("only a queued or running job can be cancelled")),
        Err(e) => Err(crate::context::db_error(e)),
    }
}

/// Queues this session's failed, cancelled or interrupted job again, from its first step.
#[server(endpoint = "restart_job")]
pub async fn restart_job(id: String) -> Result<(), ServerFnError> {
    use crate::train::JobStatus;
    let state = expect_context::<crate::state::AppState>();
    owned(&state, &id).await?;
    let training = state.training.as_ref().ok_or_else(|| not_now("training is not available on this server"))?;
    let session = crate::session::current(&state).await?.unwrap_or_default();
    crate::train::routes::room_for(&state.db, training.settings(), &session, true).await?;
    match crate::train::store::transition(&state.db, &id, JobStatus::Queued, None).await {
        Ok(true) => {
            training.wake();
            Ok(())
        }
        Ok(false) => Err(not_now("only a failed, cancelled or interrupted job can be started again")),
        Err(e) => Err(crate::context::db_error(e)),
    }
}

/// Deletes this session's job, with its uploaded data and its adapter.
#[server(endpoint = "delete_job")]
pub async fn delete_job(id: String) -> Result<(), ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    owned(&state, &id).await?;
    match crate::train::store::delete(&state.db, &id).await {
        Ok(true) => {
            if let Some(t) = &state.training {
                t.remove_adapter(&id, &state.engine);
            }
            Ok(())
        }
        Ok(false) => Err(not_now("a running job cannot be deleted: cancel it first")),
        Err(e) => Err(crate::context::db_error(e)),
    }
}

/// Shows this session's finished adapter in every visitor's gallery, or hides it again.
#[server(endpoint = "publish_job")]
pub async fn publish_job(id: String, published: bool) -> Result<(), ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    owned(&state, &id).await?;
    match crate::train::store::set_published(&state.db, &id, published).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(not_now("only a finished job can be published")),
        Err(e) => Err(crate::context::db_error(e)),
    }
}
