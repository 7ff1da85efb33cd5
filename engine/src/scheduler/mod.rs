//! The continuous batcher, on the engine thread. Every iteration it takes new commands, admits waiting requests
//! into the running batch (round-robin over adapters, within the batch size and KV budget, once their adapter is
//! resident), runs ONE forward step for all running sequences — decode rows and chunks of prompts being prefilled,
//! base and every adapter together — then emits tokens and drops finished or cancelled sequences at once.
//! Adapter loads run on a loader thread (started by the request's caller, see [`crate::registry::Loader`]) and come
//! back as commands, so running streams never wait for disk.

mod placement;
mod queue;
mod step;

use crate::config::{EngineConfig, ModelInfo};
use crate::constraint::Guide;
use crate::output::{eos_tokens, TextOutput};
use crate::registry::{AdapterId, AdapterSource, LoadDone, Loaded, Loader, Residency};
use crate::request::{Event, GenerateRequest};
use crate::sampling::{Sampler, SamplingParams};
use crate::stats::EngineStats;
use crate::{Error, KvCache, Model, Result, Tokenizer};
use queue::{Queue, Room, Waiting};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::time::Instant;

type Events = tokio::sync::mpsc::UnboundedSender<Result<Event>>;

/// Held by a request until it ends; frees its place in the queue.
#[derive(Debug)]
pub(crate) struct Permit(pub(crate) Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A validated request on its way to the engine thread.
#[derive(Debug)]
pub(crate) struct Submission {
    pub request: GenerateRequest,
    /// Shared by the continuations of an `n` > 1 request.
    pub prompt: Arc<[u32]>,
    pub source: Option<AdapterSource>,
    /// The compiled output constraint, if any.
    pub guide: Option<Guide>,
    pub events: Events,
    /// Held for its `Drop`: frees the request's place in the queue when the request ends (all its continuations).
    pub _permit: Arc<Permit>,
    pub submitted: Instant,
    /// The request's span, a child of its caller's: the engine's log lines about it go there.
    pub span: tracing::Span,
}

impl Waiting for Submission {
    type Key = Option<AdapterId>;
    fn key(&self) -> &Self::Key {
        &self.request.adapter
    }
    fn kv_need(&self) -> usize {
        (self.prompt.len() + self.request.max_new_tokens) * self.request.choices()
    }
    fn rows(&self) -> usize {
        self.request.choices()
    }
    fn submitted(&self) -> Instant {
        self.submitted
    }
}

/// Messages to the engine thread.
#[derive(Debug)]
pub(crate) enum Command {
    Submit(Box<Submission>),
    Loaded(Loaded),
    /// [`crate::EngineHandle::discard_adapter`].
    Discard(AdapterId),
    Shutdown,
}

/// A request in the running batch: one continuation of it.
struct Seq {
    sub: Submission,
    /// Which continuation this is (`0..n`).
    choice: usize,
    cache: KvCache,
    /// Prompt tokens already through the model.
    prefilled: usize,
    /// The token to feed next, once the prompt is prefilled.
    next: Vec<u32>,
    generated: Vec<u32>,
    sampler: Sampler,
    output: TextOutput,
    /// Log-probabilities of the prompt's tokens after the first, as far as prefilled (when the request asks).
    prompt_logprobs: Vec<f32>,
    started: Instant,
    first_token: Option<Instant>,
}

impl Seq {
    /// Continuations still to fork off this one: `n - 1` for the first continuation until it samples (forks are
    /// made when the prompt is prefilled, from the logits it samples from), else none.
    fn forks_left(&self) -> usize {
        if self.choice == 0 && self.generated.is_empty() {
            self.sub.request.choices() - 1
        } else {
            0
        }
    }
}

struct Scheduler {
    cfg: EngineConfig,
    model: Model,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    stats: Arc<EngineStats>,
    residency: Residency,
    loader: Arc<Loader>,
    /// Loaded adapters waiting for room (every resident one is busy).
    parked: Vec<(AdapterId, Arc<crate::LoraAdapter>)>,
    /// Adapters to drop once no running sequence uses them ([`Command::Discard`]); none of their requests is
    /// admitted until then.
    discarded: Vec<AdapterId>,
    waiting: Queue<Submission>,
    running: Vec<Seq>,
}

/// The engine thread's body: loads the model, reports readiness, then serves commands until shutdown.
pub(crate) fn run(
    cfg: EngineConfig,
    rx: Receiver<Command>,
    tx: Sender<Command>,
    ready: SyncSender<Result<(Tokenizer, ModelInfo, Arc<Loader>)>>,
    stats: Arc<EngineStats>,
) {
    let loaded = (|| -> Result<(Model, Tokenizer)> {
        if let Some(random) = &cfg.random_weights {
            let model = Model::random(random.config.clone(), &cfg.load, random.seed)?;
            return Ok((model, Tokenizer::synthetic(random.config.vocab_size)?));
        }
        let model = Model::load(&cfg.model, &cfg.load)?;
        let tokenizer = Tokenizer::for_model(&cfg.model)?;
        Ok((model, tokenizer))
    })();
    let (model, tokenizer) = match loaded {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let info = ModelInfo {
        name: match &cfg.random_weights {
            Some(_) => cfg.model.display().to_string(),
            None => crate::ModelFiles::locate(&cfg.model).map(|f| f.name).unwrap_or_default(),
        },
        max_position_embeddings: model.config().max_position_embeddings,
        vocab_size: model.config().vocab_size,
        dtype: format!("{:?}", model.dtype()).to_lowercase(),
        decode_weight_bytes: model.decode_weight_bytes(),
        eos_token_ids: eos_tokens(model.config(), &tokenizer),
        device: if model.device().is_cpu() { "cpu".into() } else { format!("{:?}", model.device().location()) },
    };
    let done: LoadDone = Arc::new(move |loaded| tx.send(Command::Loaded(loaded)).is_ok());
    let faults = cfg.faults.clone();
    let loader = match Loader::spawn(model.adapter_target(), cfg.limits.host_cache_bytes, cfg.hub, done, faults) {
        Ok(loader) => loader,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let pinned: HashSet<AdapterId> = cfg.pinned.iter().cloned().collect();
    let residency = Residency::new(cfg.limits, model.config().num_hidden_layers, pinned);
    let eos = info.eos_token_ids.clone();
    let mut s = Scheduler {
        model,
        tokenizer: tokenizer.clone(),
        eos,
        stats,
        residency,
        loader: loader.clone(),
        parked: Vec::new(),
        discarded: Vec::new(),
        waiting: Queue::default(),
        running: Vec::new(),
        cfg,
    };
    for id in s.cfg.pinned.clone().into_iter().chain(s.cfg.preload.clone()) {
        match s.cfg.catalog.resolve(&id) {
            Ok(src) => {
                if let Err(e) = loader.ensure(&id, &src) {
                    tracing::warn!(adapter = %id, "cannot preload: {e}");
                }
            }
            Err(e) => tracing::warn!(adapter = %id, "cannot preload: {e}"),
        }
    }
    if ready.send(Ok((tokenizer, info, loader))).is_err() {
        return;
    }
    s.stats.liveness.beat();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.serve(rx)));
    s.stats.liveness.stop();
    if let Err(panic) = outcome {
        let what = crate::error::panic_message(&*panic);
        tracing::error!(running = s.running.len(), "the engine thread panicked: {what}; every request fails");
        s.fail_all(Error::EngineStopped);
    }
}

impl Scheduler {
    fn serve(&mut self, rx: Receiver<Command>) {
        let mut received = None;
        loop {
            self.stats.liveness.beat();
            for cmd in received.take().into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                if !self.handle(cmd) {
                    return;
                }
            }
            self.drop_cancelled();
            self.drop_discarded();
            self.load_for_waiting();
            self.place_parked();
            self.admit();
            let now = Instant::now();
            let next_deadline = self.expire_waiting(now);
            self.publish_gauges();
            if self.running.is_empty() {
                // Nothing to step, after placing and admitting what could be (the last step may have made room):
                // only a command can change that, or time (a waiting request's deadline, the heartbeat).
                let sleep = next_deadline.map_or(crate::config::TICK, |d| (d - now).min(crate::config::TICK));
                match rx.recv_timeout(sleep) {
                    Ok(cmd) => received = Some(cmd),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                continue;
            }
            self.step();
        }
    }

    /// Returns false on shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit(sub) => {
                self.waiting.push(*sub);
            }
            Command::Loaded(loaded) => loaded.span.clone().in_scope(|| self.on_loaded(loaded)),
            Command::Discard(id) => {
                if !self.discarded.contains(&id) {
                    self.discarded.push(id);
                }
            }
            Command::Shutdown => return false,
        }
        true
    }

    /// Makes sure the adapter of every waiting request is resident or on its way: the caller started its load, but
    /// it may have been evicted since, or its load may have failed before the request arrived.
    fn load_for_waiting(&mut self) {
        let mut stopped = Vec::new();
        for front in self.waiting.fronts() {
            let (Some(id), Some(src)) = (&front.request.adapter, &front.source) else { continue };
            if self.residency.slot(id).is_none() && front.span.in_scope(|| self.loader.ensure(id, src)).is_err() {
                stopped.push(id.clone());
            }
        }
        for id in stopped {
            self.fail_waiting(&id, "the adapter loader has stopped".into());
        }
    }

    fn on_loaded(&mut self, Loaded { id, load, result, took, .. }: Loaded) {
        if !self.loader.is_current(&id, load) {
            // Discarded (its files changed) while this load was on its way: it read the old files. A waiting
            // request has a newer load started for it.
            tracing::info!(adapter = %id, "a load that is no longer current (the adapter was discarded); dropped");
            return;
        }
        let checked = result.and_then(|a| self.residency.check(&a).map(|()| a));
        match checked {
            Ok(adapter) => {
                EngineStats::add(&self.stats.adapter_loads, 1);
                EngineStats::set(&self.stats.last_adapter_load_us, took.as_micros() as u64);
                tracing::info!(adapter = %id, ms = took.as_secs_f64() * 1e3, "adapter loaded");
                self.parked.push((id, adapter));
                self.place_parked();
            }
            Err(e) => {
                EngineStats::add(&self.stats.adapter_load_failures, 1);
                tracing::warn!(adapter = %id, "adapter failed to load: {e}");
                self.loader.forget(&id);
                let reason = match e {
                    Error::AdapterLoad { reason, .. } => reason,
                    other => other.to_string(),
                };
                self.fail_waiting(&id, reason);
            }
        }
    }

    /// Moves loaded adapters into the resident set as room allows, the one whose requests have waited longest
    /// first. Idle adapters are evicted for it, except those with requests waiting since before its own (or any
    /// waiting requests, for a preload): two adapters with waiting requests would otherwise evict each other in
    /// turn while the batch is full, and an adapter never waits behind younger requests.
    fn place_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let running: HashSet<AdapterId> = self.running.iter().filter_map(|s| s.sub.request.adapter.clone()).collect();
        let oldest: HashMap<AdapterId, Instant> =
            self.waiting.fronts().filter_map(|s| Some((s.request.adapter.clone()?, s.submitted))).collect();
        // In the order they were loaded: placement keeps it among equals (the preloads).
        let ids: Vec<AdapterId> = self.parked.iter().map(|(id, _)| id.clone()).collect();
        let mut loaded: HashMap<AdapterId, Arc<crate::LoraAdapter>> =
            std::mem::take(&mut self.parked).into_iter().collect();
        let mut evicted = Vec::new();
        for turn in placement::turns(&ids, &running, &oldest) {
            let adapter = loaded.remove(&turn.id).expect("each parked adapter has one turn");
            if self.residency.slot(&turn.id).is_some() {
                continue;
            }
            if self.residency.make_room(adapter.bytes(), &turn.busy, &mut evicted) {
                self.residency.insert(turn.id, adapter);
            } else {
                self.parked.push((turn.id, adapter));
            }
        }
        for id in &evicted {
            self.loader.forget(id);
        }
        EngineStats::set(&self.stats.adapter_evictions, self.residency.evictions());
    }

    fn fail_waiting(&mut self, id: &AdapterId, reason: String) {
        for sub in self.waiting.take(&Some(id.clone())) {
            let _ = sub.events.send(Err(Error::AdapterLoad { id: id.clone(), reason: reason.clone() }));
        }
    }

    /// Fails the requests that have waited longer than `adapter_load_timeout` for an adapter that is still not
    /// resident, saying what the adapter was doing. Requests waiting only for room in the batch are not affected.
    /// Returns the next such deadline.
    fn expire_waiting(&mut self, now: Instant) -> Option<Instant> {
        let (residency, discarded) = (&self.residency, &self.discarded);
        let ready = |key: &Option<AdapterId>| {
            key.as_ref().is_none_or(|id| residency.slot(id).is_some() && !discarded.contains(id))
        };
        let (expired, next) = self.waiting.expire(now, self.cfg.adapter_load_timeout, ready);
        let mut states: HashMap<AdapterId, String> = HashMap::new();
        for sub in expired {
            let id = sub.request.adapter.clone().expect("only adapters' requests wait for something but room");
            let state = states.entry(id.clone()).or_insert_with(|| {
                if self.parked.iter().any(|(p, _)| *p == id) {
                    "loaded, waiting for room: every resident adapter is in use".to_string()
                } else {
                    match self.loader.started(&id) {
                        Some(t) => format!("loading for {:.1} s", (now - t).as_secs_f64()),
                        None => "not loading".to_string(),
                    }
                }
            });
            EngineStats::add(&self.stats.adapter_load_timeouts, 1);
            let waited_secs = (now - sub.submitted).as_secs_f64();
            tracing::warn!(parent: &sub.span, adapter = %id, %state, waited_secs, "timed out waiting for the adapter");
            let _ = sub.events.send(Err(Error::AdapterLoadTimeout { id, waited_secs, state: state.clone() }));
        }
        next
    }

    /// Ends every running and waiting request with `error`.
    fn fail_all(&mut self, error: Error) {
        let message = error.to_string();
        let copy = || match &error {
            Error::EngineStopped => Error::EngineStopped,
            _ => Error::Generation(message.clone()),
        };
        for seq in self.running.drain(..) {
            let _ = seq.sub.events.send(Err(copy()));
        }
        for sub in self.waiting.drain() {
            let _ = sub.events.send(Err(copy()));
        }
    }

    fn drop_cancelled(&mut self) {
        self.running.retain(|s| !s.sub.events.is_closed());
        self.waiting.retain(|s| !s.events.is_closed());
    }

    /// Drops the discarded adapters no running sequence uses any more: out of the resident set, the parked loads
    /// and the loader's records and host cache, so that their next request loads them again.
    fn drop_discarded(&mut self) {
        let running = &self.running;
        let (done, busy): (Vec<_>, Vec<_>) = std::mem::take(&mut self.discarded)
            .into_iter()
            .partition(|id| !running.iter().any(|s| s.sub.request.adapter.as_ref() == Some(id)));
        self.discarded = busy;
        for id in done {
            tracing::info!(adapter = %id, "adapter discarded: the next request loads it again");
            self.residency.remove(&id);
            self.parked.retain(|(p, _)| p != &id);
            self.loader.discard(&id);
        }
    }

    /// KV tokens the running sequences reserve, the continuations still to fork included.
    fn kv_reserved(&self) -> usize {
        self.running.iter().map(|s| (s.sub.prompt.len() + s.sub.request.max_new_tokens) * (1 + s.forks_left())).sum()
    }

    /// Rows of the batch in use, the continuations still to fork included.
    fn rows_reserved(&self) -> usize {
        self.running.iter().map(|s| 1 + s.forks_left()).sum()
    }

    /// Admits waiting requests while the batch has rows and KV budget left (see [`Queue::admit`]).
    fn admit(&mut self) {
        let room = Room {
            rows: self.cfg.max_batch_size.saturating_sub(self.rows_reserved()),
            kv: self.cfg.max_kv_tokens.saturating_sub(self.kv_reserved()),
        };
        let (residency, discarded) = (&self.residency, &self.discarded);
        let ready = |key: &Option<AdapterId>| {
            key.as_ref().is_none_or(|id| residency.slot(id).is_some() && !discarded.contains(id))
        };
        for sub in self.waiting.admit(room, ready) {
            self.start(sub);
        }
    }

    fn start(&mut self, sub: Submission) {
        if let Some(id) = &sub.request.adapter {
            self.residency.touch(id);
        }
        let sampler = Sampler::new(sub.request.sampling.clone());
        let output = TextOutput::new(self.eos.clone(), sub.request.stop.clone(), sub.request.max_new_tokens);
        self.running.push(Seq {
            choice: 0,
            cache: self.model.new_cache(),
            prefilled: 0,
            next: Vec::new(),
            generated: Vec::new(),
            sampler,
            output,
            prompt_logprobs: Vec::new(),
            started: Instant::now(),
            first_token: None,
            sub,
        });
    }

    /// Continuation `choice` of running sequence `i`, whose prompt is prefilled and which has not sampled yet: a
    /// copy of its cache, its own sampler (seed + `choice`) and text.
    fn fork(&self, i: usize, choice: usize) -> Result<Seq> {
        let s = &self.running[i];
        let sub = Submission {
            request: s.sub.request.clone(),
            prompt: s.sub.prompt.clone(),
            source: s.sub.source.clone(),
            guide: s.sub.guide.clone(),
            events: s.sub.events.clone(),
            _permit: s.sub._permit.clone(),
            submitted: s.sub.submitted,
            span: s.sub.span.clone(),
        };
        let sampling = SamplingParams {
            seed: sub.request.sampling.seed.wrapping_add(choice as u64),
            ..sub.request.sampling.clone()
        };
        Ok(Seq {
            choice,
            cache: s.cache.fork()?,
            prefilled: s.prefilled,
            next: Vec::new(),
            generated: Vec::new(),
            sampler: Sampler::new(sampling),
            output: TextOutput::new(self.eos.clone(), sub.request.stop.clone(), sub.request.max_new_tokens),
            prompt_logprobs: s.prompt_logprobs.clone(),
            started: s.started,
            first_token: None,
            sub,
        })
    }

    fn publish_gauges(&self) {
        EngineStats::set(&self.stats.running, self.running.len() as u64);
        EngineStats::set(&self.stats.waiting, self.waiting.len() as u64);
        EngineStats::set(&self.stats.kv_tokens, self.kv_reserved() as u64);
        EngineStats::set(&self.stats.adapters_resident, self.residency.len() as u64);
        let mut resident: Vec<String> = self.residency.entries().map(|(id, _)| id.to_string()).collect();
        resident.sort();
        let residency = &self.residency;
        let mut waited_for: Vec<String> = self
            .waiting
            .fronts()
            .filter_map(|s| s.request.adapter.as_ref())
            .filter(|id| residency.slot(id).is_none())
            .map(|id| id.to_string())
            .collect();
        waited_for.sort();
        waited_for.dedup();
        if let Ok(mut a) = self.stats.adapters.lock() {
            if a.resident != resident || a.waited_for != waited_for || a.max_resident != self.cfg.limits.max_adapters {
                *a = crate::stats::AdapterActivity { resident, waited_for, max_resident: self.cfg.limits.max_adapters };
            }
        }
    }
}
