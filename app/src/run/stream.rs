//! `GET /runs/{id}/stream`: a stored run's panes as server-sent events, one JSON [`PaneEvent`] each, then a last
//! `event: end`. A finished pane is replayed from the database; a pane generating in this process is joined (its
//! text so far, then the rest, see [`super::executor`]); a pane another process is generating is followed through
//! its row; a pane that has not run, or was interrupted, is started, but only for the run's own session (anyone
//! else sees it as stored). Opening the stream never starts a second generation of a pane.

use super::executor::PaneKey;
use super::store::{self, STALE_AFTER};
use super::types::{PaneEvent, PaneStatus, PaneView, RunView};
use crate::context::ClientAddr;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use std::convert::Infallible;
use std::time::Duration;

/// How often a pane generated elsewhere is read back from the database.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(400);

/// The handler.
pub async fn run_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    addr: Option<axum::Extension<ClientAddr>>,
) -> Response {
    let addr = addr.map_or(ClientAddr(std::net::IpAddr::from([0, 0, 0, 0])), |axum::Extension(a)| a);
    let run = match store::load_stored(&state.db, &id).await {
        Ok(Some(run)) => run,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such run").into_response(),
        Err(e) => {
            tracing::error!("loading run {id}: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "the server could not read its database").into_response();
        }
    };
    let session = crate::session::from_headers(&state.db, &headers).await.ok().flatten();
    let owner =
        (session.as_deref() == Some(run.session.as_str())).then(|| Starter { addr, session: run.session.clone() });
    if let Some(session) = &session {
        if let Err(e) = crate::session::note_view(&state.db, session, &id).await {
            tracing::warn!("noting a view of run {id}: {e}");
        }
    }
    let events = pane_events(state, run.view, owner)
        .map(|event| Ok::<_, Infallible>(SseEvent::default().data(serde_json::to_string(&event).unwrap_or_default())));
    let end = stream::once(async { Ok(SseEvent::default().event("end").data("{}")) });
    Sse::new(events.chain(end)).keep_alive(KeepAlive::default()).into_response()
}

/// Runs every pane of a stored run to its end (the no-JavaScript path, for the run's owner, from a server
/// function); the results are stored.
pub async fn run_to_end(state: &AppState, id: &str) -> Result<(), String> {
    let run =
        store::load_stored(&state.db, id).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no run {id}"))?;
    let owner = Starter { addr: ClientAddr::current().await, session: run.session };
    pane_events(state.clone(), run.view, Some(owner)).for_each(|_| async {}).await;
    Ok(())
}

/// Who may start a run's panes: its owner, from this address.
#[derive(Clone, Debug)]
struct Starter {
    addr: ClientAddr,
    session: String,
}

/// Every pane's events, merged.
fn pane_events(
    state: AppState,
    run: RunView,
    owner: Option<Starter>,
) -> impl futures_util::Stream<Item = PaneEvent> + Send {
    let panes: Vec<BoxStream<'static, PaneEvent>> =
        run.panes.iter().map(|p| pane(&state, &run, p, owner.as_ref())).collect();
    stream::select_all(panes)
}

fn pane(state: &AppState, run: &RunView, p: &PaneView, owner: Option<&Starter>) -> BoxStream<'static, PaneEvent> {
    let key = PaneKey { run: run.id.clone(), pane: p.pane };
    if p.status.is_final() {
        return replay(p);
    }
    if let Some(joined) = state.runs.watch(&key) {
        return joined;
    }
    match p.status {
        PaneStatus::Running => follow(state.clone(), key, p.clone()),
        _ => match owner {
            Some(owner) => {
                let adapter = p.adapter.clone();
                let request = || super::check::stored_pane_request(run, adapter.as_deref());
                let permit = || state.clients.start(owner.addr.0, Some(&owner.session));
                state.runs.watch_or_start((&state.db, &state.engine), key, p.adapter.clone(), request, permit)
            }
            None => replay(p),
        },
    }
}

/// A pane as stored: its text and its status.
fn replay(p: &PaneView) -> BoxStream<'static, PaneEvent> {
    let text = (!p.text.is_empty()).then(|| PaneEvent::Text { pane: p.pane, text: p.text.clone() });
    stream::iter(text.into_iter().chain([PaneEvent::status_of(p)])).boxed()
}

/// A pane another process generates, read back from its row until it ends; a row that stops being written while
/// `running` (its process died) ends as `interrupted`.
fn follow(state: AppState, key: PaneKey, seen: PaneView) -> BoxStream<'static, PaneEvent> {
    let head = replay_text(&seen);
    let sent = seen.text.len();
    let rest = stream::unfold(Some((state, key, sent)), |st| async move {
        let (state, key, sent) = st?;
        loop {
            tokio::time::sleep(FOLLOW_EVERY).await;
            let Ok(Some((p, updated))) = store::load_pane(&state.db, &key.run, key.pane).await else {
                return Some((vec![], None));
            };
            let mut out = Vec::new();
            if p.text.len() > sent && p.text.is_char_boundary(sent) {
                out.push(PaneEvent::Text { pane: key.pane, text: p.text[sent..].to_string() });
            }
            let sent = p.text.len().max(sent);
            let stale = crate::context::now_ms() - updated > STALE_AFTER.as_millis() as i64;
            if p.status.is_final() || p.status != PaneStatus::Running {
                out.push(PaneEvent::status_of(&p));
                return Some((out, None));
            }
            if stale {
                let cut = PaneView { status: PaneStatus::Interrupted, ..p };
                let _ = store::finish_pane(&state.db, &key.run, &cut).await;
                out.push(PaneEvent::status_of(&cut));
                return Some((out, None));
            }
            if !out.is_empty() {
                return Some((out, Some((state, key, sent))));
            }
        }
    });
    head.chain(rest.flat_map(stream::iter)).boxed()
}

fn replay_text(p: &PaneView) -> BoxStream<'static, PaneEvent> {
    stream::iter((!p.text.is_empty()).then(|| PaneEvent::Text { pane: p.pane, text: p.text.clone() })).boxed()
}
