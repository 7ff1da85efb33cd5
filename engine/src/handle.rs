//! `Engine::spawn` and the cheap, cloneable [`EngineHandle`]. The model and the continuous batcher live on their
//! own OS thread (see [`crate::scheduler`]); adapters load on a second thread. A request is validated and
//! tokenized on the caller's side, admitted against a bounded queue, and answered through a stream of events;
//! dropping the stream cancels the request.

use crate::config::{EngineConfig, ModelInfo};
use crate::constraint::{Grammars, Guide};
use crate::registry::{AdapterId, AdapterSource, Catalog, Loader, MergedSource};
use crate::request::{Event, Field, GenerateRequest, Limits, Prompt, SourceChoice};
use crate::scheduler::{self, Command, Permit, Submission};
use crate::stats::EngineStats;
use crate::{Error, Result, Tokenizer};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Whether the engine is serving, from its batching loop's heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The loop beat recently.
    Ok,
    /// The loop has not beaten for `for_` (over the stall threshold): a step that never ends, or a deadlock.
    Stalled {
        /// Age of the last heartbeat.
        for_: Duration,
    },
    /// The engine thread has exited (it panicked); every request fails with [`Error::EngineStopped`].
    Stopped,
}

/// Starts engines.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Loads the model on a new thread and starts the batching loop; returns once the model is loaded, or with the
    /// load error (or at once with [`Error::Config`] for a limit of zero).
    pub fn spawn(config: EngineConfig) -> Result<EngineHandle> {
        config.validate()?;
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let stats = Arc::new(EngineStats::default());
        let thread_cfg = config.clone();
        let thread_stats = stats.clone();
        let loop_tx = cmd_tx.clone();
        std::thread::Builder::new()
            .name("loraland-engine".into())
            .spawn(move || scheduler::run(thread_cfg, cmd_rx, loop_tx, ready_tx, thread_stats))
            .map_err(|e| Error::Io { path: config.model.clone(), source: e })?;
        let (tokenizer, info, loader) = ready_rx.recv().map_err(|_| Error::EngineStopped)??;
        let context = info.max_position_embeddings;
        let max_input_tokens = config.max_input_tokens.min(context.saturating_sub(1));
        let limits = Limits {
            max_input_tokens,
            max_new_tokens: config.max_new_tokens,
            context,
            max_prompt_bytes: max_input_tokens.saturating_mul(tokenizer.max_token_bytes()),
            vocab_size: info.vocab_size,
            max_choices: crate::request::MAX_CHOICES.min(config.max_batch_size),
            max_kv_tokens: config.max_kv_tokens,
        };
        let grammars = Grammars::new(tokenizer.clone(), info.vocab_size, info.eos_token_ids.clone());
        Ok(EngineHandle {
            inner: Arc::new(Inner {
                limits,
                grammars,
                tx: cmd_tx,
                loader,
                tokenizer,
                info,
                config,
                stats,
                in_flight: Arc::new(AtomicUsize::new(0)),
            }),
        })
    }
}

struct Inner {
    limits: Limits,
    grammars: Grammars,
    tx: mpsc::Sender<Command>,
    loader: Arc<Loader>,
    tokenizer: Tokenizer,
    info: ModelInfo,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

/// A handle on a running engine; clones share it.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("model", &self.inner.info.name).finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// Facts about the loaded model.
    pub fn model_info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Live counters and gauges.
    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    /// Whether the batching loop is alive and beating (see [`Health`]).
    pub fn health(&self) -> Health {
        let liveness = &self.inner.stats.liveness;
        if liveness.stopped() {
            return Health::Stopped;
        }
        match liveness.age() {
            age if age > self.inner.config.stall_after => Health::Stalled { for_: age },
            _ => Health::Ok,
        }
    }

    /// The limits every request is checked against (see [`Limits`]).
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Checks `request` against the request contract ([`Limits`]: sampling ranges, stop sequences, the prompt's size
    /// before tokenizing, its tokens after, the room it leaves in the context, the adapter id against the catalog),
    /// tokenizes it and compiles its output constraint. Nothing is queued: [`EngineHandle::submit`] does that.
    /// Tokenizing and compiling are CPU work; callers on an async runtime run a large prompt's or a constrained
    /// request's `prepare` on a blocking thread.
    pub fn prepare(&self, mut request: GenerateRequest) -> Result<Prepared> {
        let limits = &self.inner.limits;
        limits.check_fields(&request)?;
        let guide = request.constraint.as_ref().map(|c| self.inner.grammars.compile(c)).transpose()?;
        let tokenizer = &self.inner.tokenizer;
        let mut prompt = match &request.prompt {
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Text(text) => tokenizer.encode(text, true)?,
            Prompt::Parts { parts, add_bos } => tokenizer.encode_parts(parts, *add_bos)?,
        };
        if let Some(n) = request.truncate {
            prompt.drain(..prompt.len().saturating_sub(n));
        }
        request.max_new_tokens = limits.check_tokens(&request, &prompt)?;
        request.fit_context = false;
        let choice = request.adapter_source;
        let source = match (&request.adapter, &request.merged_adapters) {
            (Some(id), _) => Some(self.resolve(id, choice)?),
            (None, Some(merge)) => {
                let parts =
                    merge.ids.iter().map(|id| Ok((id.clone(), self.resolve(id, choice)?))).collect::<Result<_>>()?;
                Some(AdapterSource::Merged(Arc::new(MergedSource::new(parts, merge.weights.clone(), merge.params))))
            }
            (None, None) => None,
        };
        if let Some(AdapterSource::Merged(merged)) = &source {
            // From here on the merge is the request's adapter, under its own id.
            request.adapter = Some(merged.id());
            request.merged_adapters = None;
        }
        Ok(Prepared { request, prompt, source, guide })
    }

    /// Where adapter `id` comes from, given where the request allows it to come from.
    fn resolve(&self, id: &AdapterId, choice: SourceChoice) -> Result<AdapterSource> {
        let catalog = &self.inner.config.catalog;
        match choice {
            SourceChoice::Any => catalog.resolve(id),
            SourceChoice::Local => Catalog { allow_hub: false, ..catalog.clone() }.resolve(id),
            SourceChoice::Hub if !catalog.allow_hub => {
                let reason = "cannot come from the hub: this engine does not allow the hub (--allow-hub)";
                Err(Error::Invalid { field: Field::Adapter, reason: reason.into() })
            }
            SourceChoice::Hub => Ok(AdapterSource::Hub { repo: id.as_str().to_string() }),
        }
    }

    /// Admits a prepared request to the queue, or fails with [`Error::Overloaded`] when it is full (or
    /// [`Error::EngineStopped`]), and returns its event stream.
    pub fn submit(&self, prepared: Prepared) -> Result<GenerationStream> {
        let Prepared { request, prompt, source, guide } = prepared;
        let cfg = &self.inner.config;
        let in_flight = &self.inner.in_flight;
        let waiting = in_flight.fetch_add(1, Ordering::SeqCst);
        let permit = Arc::new(Permit(in_flight.clone()));
        if waiting >= cfg.max_queue {
            return Err(Error::Overloaded { waiting });
        }
        if self.inner.stats.liveness.stopped() {
            return Err(Error::EngineStopped);
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        EngineStats::add(&self.inner.stats.submitted, 1);
        let load = request.adapter.clone().zip(source.clone());
        let choices = request.choices();
        let span = tracing::info_span!(
            "generation",
            adapter = request.adapter.as_ref().map_or("base", |id| id.as_str()),
            prompt_tokens = prompt.len()
        );
        let submission = Submission {
            request,
            prompt: prompt.into(),
            source,
            guide,
            events: tx,
            _permit: permit,
            submitted: Instant::now(),
            span: span.clone(),
        };
        self.inner.tx.send(Command::Submit(Box::new(submission))).map_err(|_| Error::EngineStopped)?;
        // After the submission, so the engine has the request before it can hear that the load failed. A load that
        // cannot start is reported to the request by the engine thread.
        if let Some((id, source)) = load {
            let _ = span.in_scope(|| self.inner.loader.ensure(&id, &source));
        }
        Ok(GenerationStream { rx, ended: false, open: choices })
    }

    /// [`EngineHandle::prepare`], then [`EngineHandle::submit`].
    pub fn generate(&self, request: GenerateRequest) -> Result<GenerationStream> {
        self.submit(self.prepare(request)?)
    }

    /// Loads `id` now (if not resident) so that its first request does not wait.
    pub fn preload(&self, id: AdapterId) -> Result<()> {
        let source = self.inner.config.catalog.resolve(&id)?;
        self.inner.loader.ensure(&id, &source)
    }

    /// Drops every loaded copy of `id` (resident, waiting for room, host-cached) because its files changed or
    /// are gone: the next request for it loads it again from its source. Sequences already generating with it
    /// finish on the copy they started with; requests after this call wait for the new one.
    pub fn discard_adapter(&self, id: AdapterId) -> Result<()> {
        self.inner.tx.send(Command::Discard(id)).map_err(|_| Error::EngineStopped)
    }
}

/// A request that passed [`EngineHandle::prepare`]: its tokens, and where its adapter comes from.
#[derive(Clone, Debug)]
pub struct Prepared {
    request: GenerateRequest,
    prompt: Vec<u32>,
    source: Option<AdapterSource>,
    guide: Option<Guide>,
}

impl Prepared {
    /// The prompt's token ids (after any truncation).
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// The request, with `max_new_tokens` as it will run (lowered to the context's room with `fit_context`), and a
    /// merge of adapters as its adapter: the merge's id (which only this prepared request can resolve).
    pub fn request(&self) -> &GenerateRequest {
        &self.request
    }
}

/// The events of one request: [`Event::Token`]s, and an [`Event::Finished`] for each continuation, the last
/// event; or an error, which ends it. Dropping it cancels the request; its KV cache is freed at the next step. A
/// stream never just stops: if the engine goes away before the last event, the stream's last item is
/// [`Error::EngineStopped`].
#[derive(Debug)]
pub struct GenerationStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<Event>>,
    ended: bool,
    /// Continuations not finished yet.
    open: usize,
}

impl GenerationStream {
    /// The next event, waiting for it; `None` after the last.
    pub async fn next_event(&mut self) -> Option<Result<Event>> {
        let item = self.rx.recv().await;
        self.settle(item)
    }

    /// The next event, blocking the thread (not for async contexts).
    pub fn blocking_next(&mut self) -> Option<Result<Event>> {
        let item = self.rx.blocking_recv();
        self.settle(item)
    }

    /// Turns the channel closing before a last event (the engine thread died) into [`Error::EngineStopped`].
    fn settle(&mut self, item: Option<Result<Event>>) -> Option<Result<Event>> {
        if self.ended {
            return None;
        }
        match item {
            None => {
                self.ended = true;
                Some(Err(Error::EngineStopped))
            }
            Some(event) => {
                match &event {
                    Ok(Event::Finished(_)) => self.open = self.open.saturating_sub(1),
                    Err(_) => self.open = 0,
                    Ok(Event::Token(_)) => {}
                }
                self.ended = self.open == 0;
                Some(event)
            }
        }
    }
}

impl futures_core::Stream for GenerationStream {
    type Item = Result<Event>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(item) => Poll::Ready(self.settle(item)),
            Poll::Pending => Poll::Pending,
        }
    }
}
