//! `GET /runs/{id}/stream`: a stored run's panes as server-sent events, one JSON [`PaneEvent`] each, then a last
//! `event: end`. A finished pane is replayed from the database; a pane generating in this process is joined (its
//! text so far, then the rest, see [`super::executor`]); a pane another process is generating is followed through
//! its row; a pane that has not run, or was interrupted, is started, but only for the run's own session (anyone
//! else sees it as stored). Opening the stream never starts a second generation of a pane.

use super::executor::PaneKey;
use super::store;
use super::types::{PaneEvent, PaneStatus, PaneView, RunView};
use crate::context::ClientAddr;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use std::convert::Infallible;

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
        run.panes.iter().map(|p| ending_with_status(p.pane, pane(&state, &run, p, owner.as_ref()))).collect();
    stream::select_all(panes)
}

/// A pane's events, their last one its status whatever happens: events that stop without one (a row that could not
/// be read back, a generation that went away) end with an error that says so. The browser closes the run's stream
/// at `end`, and a pane without a status would look as if it still ran, for ever.
fn ending_with_status(pane: i64, events: BoxStream<'static, PaneEvent>) -> BoxStream<'static, PaneEvent> {
    stream::unfold(Some((events, false)), move |state| async move {
        let (mut events, ended) = state?;
        match events.next().await {
            Some(event) => {
                let ended = matches!(event, PaneEvent::Status { .. });
                Some((event, Some((events, ended))))
            }
            None if ended => None,
            None => {
                tracing::warn!(pane, "a pane's events stopped before its status");
                let error = "the server lost track of this answer before it ended; open the run again to see it";
                let status = PaneEvent::Status {
                    pane,
                    status: PaneStatus::Error,
                    finish_reason: None,
                    error: Some(error.into()),
                    timings: None,
                };
                Some((status, None))
            }
        }
    })
    .boxed()
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

/// A pane another process generates: its text so far, then its row followed to the end (see
/// [`store::follow_row`]).
fn follow(state: AppState, key: PaneKey, seen: PaneView) -> BoxStream<'static, PaneEvent> {
    let sent = seen.text.len();
    replay_text(&seen).chain(store::follow_row(state.db, key.run, key.pane, sent)).boxed()
}

fn replay_text(p: &PaneView) -> BoxStream<'static, PaneEvent> {
    stream::iter((!p.text.is_empty()).then(|| PaneEvent::Text { pane: p.pane, text: p.text.clone() })).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::types::FinishReason;

    fn text(t: &str) -> PaneEvent {
        PaneEvent::Text { pane: 1, text: t.into() }
    }

    #[tokio::test]
    async fn a_panes_events_always_end_with_its_status() {
        let done = PaneEvent::Status {
            pane: 1,
            status: PaneStatus::Done,
            finish_reason: Some(FinishReason::Eos),
            error: None,
            timings: None,
        };
        let whole: Vec<PaneEvent> =
            ending_with_status(1, stream::iter([text("a"), done.clone()]).boxed()).collect().await;
        assert_eq!(whole, [text("a"), done], "a status at the end is kept as it is");
        for cut in [vec![text("a")], vec![]] {
            let events: Vec<PaneEvent> = ending_with_status(1, stream::iter(cut.clone()).boxed()).collect().await;
            assert_eq!(events[..cut.len()], cut[..]);
            let Some(PaneEvent::Status { pane: 1, status: PaneStatus::Error, error: Some(e), .. }) = events.last()
            else {
                panic!("{events:?}")
            };
            assert!(e.contains("lost track"), "{e}");
        }
    }
}
