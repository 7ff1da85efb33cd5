//! Each pane's generation, run once however many streams watch it. A pane generates in a task of its own, not in
//! the stream that started it: its text goes to every watcher through a broadcast and into its database row every
//! few hundred milliseconds, so a stream that opens later (or reconnects) replays the text so far and follows the
//! rest. The generation ends as `cancelled` when its run's owner stops it, or when no one has watched it for
//! [`ORPHAN_GRACE`]; a transient failure (the model still loading, the queue full) puts the pane back to `pending`
//! rather than storing it as the pane's result. An ended pane stays known here for [`KEEP_ENDED`], so that a
//! stream that read the pane's row before it ended joins it instead of starting it again.

use super::store;
use super::types::{FinishReason, PaneEvent, PaneStatus, PaneTimings, PaneView};
use crate::context::EngineSlot;
use crate::db::Db;
use crate::limits::{ClientPermit, LimitError};
use engine::{Event, Field, GenerateRequest};
use futures_util::stream::{self, BoxStream, StreamExt};
use futures_util::FutureExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// How often a generating pane's text is written to its row.
pub const FLUSH_EVERY: Duration = Duration::from_millis(300);
/// How long a generation goes on with no one watching it (a reload reconnects within that) before it is cancelled.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(5);
/// How long an ended pane stays joinable.
pub const KEEP_ENDED: Duration = Duration::from_secs(30);

/// A pane of a run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PaneKey {
    /// The run.
    pub run: String,
    /// The pane's column.
    pub pane: i64,
}

/// What a generation broadcasts to its watchers.
#[derive(Clone, Debug)]
enum Update {
    /// Text at byte `offset` of the pane's text.
    Text { offset: usize, text: String },
    /// The end, with the pane as stored.
    End(Box<PaneView>),
}

struct LiveState {
    text: String,
    end: Option<PaneView>,
    tx: broadcast::Sender<Update>,
}

/// A generation in flight (or just ended).
struct Live {
    state: Mutex<LiveState>,
    cancel: watch::Sender<bool>,
}

impl Live {
    fn new() -> Arc<Self> {
        let (tx, _) = broadcast::channel(256);
        let state = Mutex::new(LiveState { text: String::new(), end: None, tx });
        Arc::new(Self { state, cancel: watch::channel(false).0 })
    }

    /// The state, also after a panic while it was held: a pane must still be able to end (see [`Generation::spawn`]).
    fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, piece: &str) {
        let mut st = self.lock();
        let offset = st.text.len();
        st.text.push_str(piece);
        let _ = st.tx.send(Update::Text { offset, text: piece.to_string() });
    }

    fn end(&self, view: PaneView) {
        let mut st = self.lock();
        st.end = Some(view.clone());
        let _ = st.tx.send(Update::End(Box::new(view)));
    }

    fn watchers(&self) -> usize {
        self.lock().tx.receiver_count()
    }

    fn text(&self) -> String {
        self.lock().text.clone()
    }

    /// A watcher: the text so far and everything after it.
    fn watch(self: &Arc<Self>, pane: i64) -> BoxStream<'static, PaneEvent> {
        let (rx, text, end) = {
            let st = self.lock();
            (st.tx.subscribe(), st.text.clone(), st.end.clone())
        };
        let sent = text.len();
        let head = stream::iter((!text.is_empty()).then_some(PaneEvent::Text { pane, text }));
        if let Some(end) = end {
            return head.chain(stream::iter([PaneEvent::status_of(&end)])).boxed();
        }
        let follow = stream::unfold(Some((rx, sent, self.clone())), move |state| async move {
            let (mut rx, mut sent, live) = state?;
            loop {
                let update = match rx.recv().await {
                    Ok(update) => update,
                    // Behind the broadcast, or it is gone: catch up from the text itself.
                    Err(_) => {
                        let st = live.lock();
                        match &st.end {
                            Some(end) => Update::End(Box::new(end.clone())),
                            None => Update::Text { offset: sent, text: st.text[sent..].to_string() },
                        }
                    }
                };
                match update {
                    Update::Text { offset, text } if offset + text.len() > sent => {
                        let new = if offset >= sent { text } else { text[sent - offset..].to_string() };
                        sent = offset.max(sent) + new.len();
                        return Some((vec![PaneEvent::Text { pane, text: new }], Some((rx, sent, live))));
                    }
                    Update::Text { .. } => continue,
                    Update::End(view) => {
                        let mut out = Vec::new();
                        if view.text.len() > sent {
                            out.push(PaneEvent::Text { pane, text: view.text[sent..].to_string() });
                        }
                        out.push(PaneEvent::status_of(&view));
                        return Some((out, None));
                    }
                }
            }
        });
        head.chain(follow.flat_map(stream::iter)).boxed()
    }
}

/// The panes generating in this process.
#[derive(Clone, Default)]
pub struct Executor {
    live: Arc<Mutex<HashMap<PaneKey, Arc<Live>>>>,
}

/// What a pane generates: its request as the engine takes it, or why it cannot run.
pub type PaneRequest = Result<GenerateRequest, String>;

impl Executor {
    /// Joins the pane's generation if this process runs it (or just ended it).
    pub fn watch(&self, key: &PaneKey) -> Option<BoxStream<'static, PaneEvent>> {
        let live = self.live.lock().expect("not poisoned").get(key).cloned()?;
        Some(live.watch(key.pane))
    }

    /// Joins the pane's generation, starting it with `request()` if this process does not run it: at most one
    /// generation per pane, however many streams open it at once. Starting takes a place in the client's limits
    /// (`permit`); without one the pane says so and stays pending.
    pub fn watch_or_start(
        &self,
        (db, engine): (&Db, &EngineSlot),
        key: PaneKey,
        adapter: Option<String>,
        request: impl FnOnce() -> PaneRequest,
        permit: impl FnOnce() -> Result<ClientPermit, LimitError>,
    ) -> BoxStream<'static, PaneEvent> {
        let mut map = self.live.lock().expect("not poisoned");
        if let Some(live) = map.get(&key) {
            return live.watch(key.pane);
        }
        let permit = match permit() {
            Ok(permit) => permit,
            Err(e) => {
                let view = PaneView {
                    pane: key.pane,
                    adapter,
                    text: String::new(),
                    status: PaneStatus::Error,
                    finish_reason: None,
                    error: Some(e.to_string()),
                    timings: None,
                };
                return stream::iter([PaneEvent::status_of(&view)]).boxed();
            }
        };
        let live = Live::new();
        map.insert(key.clone(), live.clone());
        drop(map);
        let watcher = live.watch(key.pane);
        // Made once the panes' lock is given back (a panic must not poison it); a panic here ends the pane with an
        // error, as its generation's would, instead of leaving it listed with nothing to end it.
        let request = std::panic::catch_unwind(std::panic::AssertUnwindSafe(request)).unwrap_or_else(|_| {
            tracing::error!(run = %key.run, pane = key.pane, "making the pane's request panicked");
            Err(INTERNAL_ERROR.into())
        });
        let generation = Generation {
            db: db.clone(),
            engine: engine.clone(),
            panes: self.live.clone(),
            key,
            adapter,
            live,
            owns_row: AtomicBool::new(false),
            _permit: permit,
        };
        generation.spawn(request);
        watcher
    }

    /// Stops every generating pane of `run`; returns how many.
    pub fn cancel_run(&self, run: &str) -> usize {
        let map = self.live.lock().expect("not poisoned");
        let mut stopped = 0;
        for (_, live) in map.iter().filter(|(k, l)| k.run == run && l.state.lock().is_ok_and(|s| s.end.is_none())) {
            live.cancel.send_replace(true);
            stopped += 1;
        }
        stopped
    }

    /// Panes generating now.
    pub fn generating(&self) -> usize {
        let map = self.live.lock().expect("not poisoned");
        map.values().filter(|l| l.state.lock().is_ok_and(|s| s.end.is_none())).count()
    }
}

/// One pane's generation task.
struct Generation {
    db: Db,
    engine: EngineSlot,
    /// The executor's panes, to forget this one once it has ended.
    panes: Arc<Mutex<HashMap<PaneKey, Arc<Live>>>>,
    key: PaneKey,
    adapter: Option<String>,
    live: Arc<Live>,
    /// Whether this process claimed the pane's row (and so writes its end).
    owns_row: AtomicBool,
    /// The pane's place in its client's limits, held until the generation ends.
    _permit: ClientPermit,
}

/// The message of a pane that an internal error ended.
const INTERNAL_ERROR: &str = "the server failed while generating this answer (an internal error)";

/// How a generation ended.
enum Outcome {
    /// For good: stored as the pane's result.
    Final(PaneView),
    /// It could not run now (model loading, queue full): shown, not stored; the pane is pending again.
    Transient(String),
    /// Another process ended the pane's row meanwhile (it took this process for dead): shown as interrupted, and
    /// the row left as that process wrote it.
    Taken,
}

impl Generation {
    /// Runs the generation to its end in a task of its own, in a span under the request that started it (the
    /// engine's lines about this pane carry that request's id).
    fn spawn(self, request: PaneRequest) {
        let span = tracing::info_span!("pane", run = %self.key.run, pane = self.key.pane);
        let task = async move { self.guarded(self.run(request)).await };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    /// Runs `body`; if it panics, the pane ends with an error (stored, when this process owns its row). Nothing
    /// else would end it: every stream on it would wait for ever.
    async fn guarded(&self, body: impl std::future::Future<Output = ()>) {
        let Err(panic) = std::panic::AssertUnwindSafe(body).catch_unwind().await else { return };
        let what = engine::error::panic_message(&*panic);
        let ended = self.live.lock().end.is_some();
        tracing::error!(run = %self.key.run, pane = self.key.pane, ended, "the pane's generation panicked: {what}");
        if !ended {
            let view = self.view(PaneStatus::Error, self.live.text(), None, Some(INTERNAL_ERROR.into()));
            self.end(view.clone(), Some(view), KEEP_ENDED).await;
        }
    }

    async fn run(&self, request: PaneRequest) {
        let (db, key) = (&self.db, &self.key);
        match store::claim_pane(db, &key.run, key.pane).await {
            Ok(true) => {}
            // Another replica read the row as pending at the same moment and claimed it first: follow it.
            Ok(false) => {
                tracing::info!(run = %key.run, pane = key.pane, "another process generates the pane; following it");
                let end = self.relay().await;
                self.live.end(end);
                self.forget_after(KEEP_ENDED);
                return;
            }
            Err(e) => tracing::error!(run = %key.run, pane = key.pane, "cannot mark the pane running: {e}"),
        }
        self.owns_row.store(true, Ordering::SeqCst);
        match self.drive(request).await {
            Outcome::Final(view) => self.end(view.clone(), Some(view), KEEP_ENDED).await,
            // Forgotten at once: the pane is pending again, and the next stream to open it runs it.
            Outcome::Transient(message) => {
                let pending = self.view(PaneStatus::Pending, String::new(), None, None);
                let shown = self.view(PaneStatus::Error, self.live.text(), None, Some(message));
                self.end(shown, Some(pending), Duration::ZERO).await;
            }
            Outcome::Taken => {
                let shown = self.view(PaneStatus::Interrupted, self.live.text(), None, None);
                self.end(shown, None, KEEP_ENDED).await;
            }
        }
    }

    /// Ends the pane: `stored` into its row (when this process owns it), `shown` to its watchers; forgotten after
    /// `keep`.
    async fn end(&self, shown: PaneView, stored: Option<PaneView>, keep: Duration) {
        if let Some(stored) = stored.filter(|_| self.owns_row.load(Ordering::SeqCst)) {
            if let Err(e) = store::finish_pane(&self.db, &self.key.run, &stored).await {
                tracing::error!(run = %self.key.run, pane = self.key.pane, "storing the pane's end: {e}");
            }
        }
        self.live.end(shown);
        self.forget_after(keep);
    }

    /// Kept a while after its end, for streams that read the pane's row before it ended (see the module docs); a
    /// newer generation of the pane listed meanwhile stays.
    fn forget_after(&self, keep: Duration) {
        let (panes, key, live) = (self.panes.clone(), self.key.clone(), self.live.clone());
        tokio::spawn(async move {
            tokio::time::sleep(keep).await;
            let mut panes = panes.lock().expect("not poisoned");
            if panes.get(&key).is_some_and(|listed| Arc::ptr_eq(listed, &live)) {
                panes.remove(&key);
            }
        });
    }

    /// The pane as the process that claimed it writes its row: its text into this pane's watchers, to its end.
    async fn relay(&self) -> PaneView {
        let mut rows = store::follow_row(self.db.clone(), self.key.run.clone(), self.key.pane, 0);
        let mut end = None;
        while let Some(event) = rows.next().await {
            match event {
                PaneEvent::Text { text, .. } => self.live.push(&text),
                PaneEvent::Status { status, finish_reason, error, timings, .. } => {
                    let text = self.live.text();
                    end = Some(PaneView {
                        pane: self.key.pane,
                        adapter: self.adapter.clone(),
                        text,
                        status,
                        finish_reason,
                        error,
                        timings,
                    });
                }
            }
        }
        end.unwrap_or_else(|| self.view(PaneStatus::Interrupted, self.live.text(), None, None))
    }

    fn view(
        &self,
        status: PaneStatus,
        text: String,
        done: Option<&engine::Finished>,
        error: Option<String>,
    ) -> PaneView {
        let timings = done.map(|f| {
            let decode = f.timings.total.saturating_sub(f.timings.time_to_first_token).as_secs_f64();
            PaneTimings {
                generated_tokens: f.generated_tokens as i64,
                ttft_ms: f.timings.time_to_first_token.as_secs_f64() * 1e3,
                tokens_per_s: (decode > 0.0).then(|| f.generated_tokens.saturating_sub(1) as f64 / decode),
            }
        });
        PaneView {
            pane: self.key.pane,
            adapter: self.adapter.clone(),
            text,
            status,
            finish_reason: done.map(|f| finish_reason(f.reason)),
            error,
            timings,
        }
    }

    async fn drive(&self, request: PaneRequest) -> Outcome {
        let request = match request {
            Ok(r) => r,
            Err(message) => return Outcome::Final(self.view(PaneStatus::Error, String::new(), None, Some(message))),
        };
        let Some(engine) = self.engine.get().cloned() else {
            return Outcome::Transient("the model is still loading; try again shortly".into());
        };
        let prepared = tokio::task::spawn_blocking({
            let engine = engine.clone();
            move || engine.prepare(request)
        })
        .await;
        let submitted = match prepared {
            Ok(Ok(prepared)) => engine.submit(prepared),
            Ok(Err(e)) => Err(e),
            Err(e) => return Outcome::Transient(format!("the request could not be prepared: {e}")),
        };
        let mut generation = match submitted {
            Ok(g) => g,
            Err(e) => return self.failed(&e),
        };
        let mut cancel = self.live.cancel.subscribe();
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let (mut saved, mut saved_at, mut orphaned) = (0usize, Instant::now(), None::<Instant>);
        loop {
            tokio::select! {
                event = generation.next_event() => match event {
                    Some(Ok(Event::Token(t))) => self.live.push(&t.text),
                    Some(Ok(Event::Finished(f))) => {
                        return Outcome::Final(self.view(PaneStatus::Done, f.text.clone(), Some(&f), None));
                    }
                    Some(Err(e)) => return self.failed(&e),
                    None => return Outcome::Transient("the inference engine stopped".into()),
                },
                _ = cancel.changed() => {
                    return Outcome::Final(self.view(PaneStatus::Cancelled, self.live.text(), None, None));
                }
                _ = flush.tick() => {
                    let text = self.live.text();
                    // New text, or a heartbeat: the row of a pane still waiting for its first token stays fresh.
                    if text.len() != saved || saved_at.elapsed() >= store::HEARTBEAT_EVERY {
                        match store::save_text(&self.db, &self.key.run, self.key.pane, &text).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!(run = %self.key.run, "another process ended the pane's row; stopped");
                                return Outcome::Taken;
                            }
                            Err(e) => tracing::warn!(run = %self.key.run, "storing a pane's text: {e}"),
                        }
                        (saved, saved_at) = (text.len(), Instant::now());
                    }
                    orphaned = if self.live.watchers() > 0 { None } else { Some(orphaned.unwrap_or_else(Instant::now)) };
                    if orphaned.is_some_and(|t| t.elapsed() > ORPHAN_GRACE) {
                        tracing::info!(run = %self.key.run, pane = self.key.pane, "no one watches the pane; cancelled");
                        return Outcome::Final(self.view(PaneStatus::Cancelled, self.live.text(), None, None));
                    }
                }
            }
        }
    }

    /// The engine's refusal or failure: transient ones (busy, loading, stopped) are not the pane's result.
    fn failed(&self, e: &engine::Error) -> Outcome {
        use engine::Error as E;
        let message = describe(e);
        match e {
            E::Overloaded { .. } | E::EngineStopped | E::AdapterLoadTimeout { .. } => Outcome::Transient(message),
            _ => Outcome::Final(self.view(PaneStatus::Error, self.live.text(), None, Some(message))),
        }
    }
}

/// The engine's finish reason in the app's (identical) vocabulary.
pub fn finish_reason(r: engine::FinishReason) -> FinishReason {
    match r {
        engine::FinishReason::Length => FinishReason::Length,
        engine::FinishReason::Eos => FinishReason::Eos,
        engine::FinishReason::StopSequence => FinishReason::StopSequence,
        engine::FinishReason::Constraint => FinishReason::Constraint,
    }
}

/// The engine's refusal or failure in the app's words (its fields as the form labels them).
pub fn describe(e: &engine::Error) -> String {
    use engine::Error as E;
    let label = |field: Field| match field {
        Field::MaxNewTokens => "max new tokens",
        Field::TopP => "top-p",
        Field::Temperature => "temperature",
        Field::Prompt => "the prompt",
        other => other.name(),
    };
    match e {
        E::Invalid { field, reason } => format!("{} {reason}", label(*field)),
        E::MaxNewTokens { requested, max } => format!("max new tokens must be between 1 and {max}, got {requested}"),
        E::ContextExceeded { prompt, max_new_tokens, context } => format!(
            "the prompt ({prompt} tokens) plus max new tokens ({max_new_tokens}) is more than the model's context of \
             {context} tokens"
        ),
        E::PromptTooLong { len, max } => format!("the prompt has {len} tokens, more than the limit of {max}"),
        E::PromptTooLarge { max_tokens, .. } => format!("the prompt is longer than the limit of {max_tokens} tokens"),
        E::UnknownAdapter(id) => {
            format!(
                "the adapter `{id}` is not installed on this server (an adapter folder named `{id}` in --adapters-dir)"
            )
        }
        E::Overloaded { .. } => "the server is busy (queue full); try again in a moment".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(text: &str) -> PaneView {
        PaneView {
            pane: 0,
            adapter: None,
            text: text.into(),
            status: PaneStatus::Done,
            finish_reason: Some(FinishReason::Eos),
            error: None,
            timings: None,
        }
    }

    fn texts(events: &[PaneEvent]) -> String {
        events.iter().map(|e| if let PaneEvent::Text { text, .. } = e { text.as_str() } else { "" }).collect()
    }

    #[tokio::test]
    async fn a_late_watcher_replays_the_text_so_far_and_follows_the_rest() {
        let live = Live::new();
        live.push("Hel");
        let early = live.watch(0);
        live.push("lo");
        let late = live.watch(0);
        live.push(" world");
        live.end(ended("Hello world"));
        let after = live.watch(0);
        for watcher in [early, late, after] {
            let events: Vec<PaneEvent> = watcher.collect().await;
            assert_eq!(texts(&events), "Hello world");
            assert!(matches!(events.last(), Some(PaneEvent::Status { status: PaneStatus::Done, .. })), "{events:?}");
        }
    }

    /// A stored run of one base pane, and the database it is in.
    async fn one_pane_run() -> (Db, String) {
        let db = crate::db::connect("sqlite::memory:").await.unwrap();
        let request = crate::run::types::RunRequest {
            task: "glue_sst2".into(),
            inputs: Default::default(),
            params: Default::default(),
            panes: vec![None],
        };
        let session = crate::session::create_session(&db).await.unwrap();
        let run = store::insert_run(&db, &session, &request, "prompt").await.unwrap();
        (db, run)
    }

    fn internal_error(event: Option<&PaneEvent>) -> bool {
        let Some(PaneEvent::Status { status, error, .. }) = event else { return false };
        *status == PaneStatus::Error && error.as_deref() == Some(INTERNAL_ERROR)
    }

    /// A generation that panics before it ends its pane: the pane ends with an error, stored in the row this process
    /// claimed, so that its watchers, and streams that open it later, do not wait for ever (nothing else ends it).
    #[tokio::test]
    async fn a_pane_whose_generation_panics_ends_with_an_error() {
        let (db, run) = one_pane_run().await;
        assert!(store::claim_pane(&db, &run, 0).await.unwrap());
        let key = PaneKey { run: run.clone(), pane: 0 };
        let live = Live::new();
        live.push("half an ans");
        let watcher = live.watch(0);
        let panes = Arc::new(Mutex::new(HashMap::from([(key.clone(), live.clone())])));
        let permit = crate::limits::ClientLimits::default().start([127, 0, 0, 1].into(), None).unwrap();
        let generation = Generation {
            db: db.clone(),
            engine: EngineSlot::default(),
            panes,
            key,
            adapter: None,
            live,
            owns_row: AtomicBool::new(true),
            _permit: permit,
        };
        generation.guarded(async { panic!("a bug in the generation") }).await;
        let events: Vec<PaneEvent> = tokio::time::timeout(Duration::from_secs(5), watcher.collect()).await.unwrap();
        assert_eq!(texts(&events), "half an ans");
        assert!(internal_error(events.last()), "{events:?}");
        let (stored, _) = store::load_pane(&db, &run, 0).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.text.as_str()), (PaneStatus::Error, "half an ans"));
    }

    /// A pane whose request panics while it is made ends with an error; the pane is not left listed with nothing to
    /// end it, and the executor's lock is not poisoned.
    #[tokio::test]
    async fn a_pane_whose_request_panics_ends_with_an_error() {
        let (db, run) = one_pane_run().await;
        let executor = Executor::default();
        let key = PaneKey { run, pane: 0 };
        let limits = crate::limits::ClientLimits::default();
        let permit = || limits.start([127, 0, 0, 1].into(), None);
        let engine = EngineSlot::default();
        let request = || -> PaneRequest { panic!("a bug in the request") };
        let watcher = executor.watch_or_start((&db, &engine), key.clone(), None, request, permit);
        let events: Vec<PaneEvent> = tokio::time::timeout(Duration::from_secs(5), watcher.collect()).await.unwrap();
        assert!(internal_error(events.last()), "{events:?}");
        let again: Vec<PaneEvent> = executor.watch(&key).expect("ended, still joinable").collect().await;
        assert!(internal_error(again.last()), "{again:?}");
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_the_broadcast_catches_up_from_the_text() {
        let live = Live::new();
        let slow = live.watch(0);
        let mut whole = String::new();
        for i in 0..1000 {
            let piece = format!("{i} ");
            live.push(&piece);
            whole.push_str(&piece);
        }
        live.end(ended(&whole));
        let events: Vec<PaneEvent> = slow.collect().await;
        assert_eq!(texts(&events), whole, "lagging past the channel's 256 updates loses nothing");
    }
}
