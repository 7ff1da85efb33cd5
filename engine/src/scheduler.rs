//! The continuous batcher, on the engine thread. Every iteration it takes new commands, admits waiting requests
//! into the running batch (round-robin over adapters, within the batch size and KV budget, once their adapter is
//! resident), runs ONE forward step for all running sequences — decode rows and chunks of prompts being prefilled,
//! base and every adapter together — then emits tokens and drops finished or cancelled sequences at once.
//! Adapter loads run on a loader thread (started by the request's caller, see [`crate::registry::Loader`]) and come
//! back as commands, so running streams never wait for disk.

use crate::config::{EngineConfig, ModelInfo};
use crate::registry::{AdapterId, AdapterSource, LoadDone, Loader, Residency};
use crate::request::{Event, Finished, GenerateRequest, Timings, TokenEvent};
use crate::sampling::{Sampled, Sampler};
use crate::stats::EngineStats;
use crate::tokenizer::TokenStream;
use crate::{AdapterBank, Error, FinishReason, KvCache, Logits, Model, Result, SeqInput, Tokenizer};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    pub prompt: Vec<u32>,
    pub source: Option<AdapterSource>,
    pub events: Events,
    /// Held for its `Drop`: frees the request's place in the queue when the request ends.
    pub _permit: Permit,
    pub submitted: Instant,
}

/// Messages to the engine thread.
#[derive(Debug)]
pub(crate) enum Command {
    Submit(Box<Submission>),
    Loaded { id: AdapterId, result: Result<Arc<crate::LoraAdapter>>, took: Duration },
    Shutdown,
}

/// A request in the running batch.
struct Seq {
    sub: Submission,
    cache: KvCache,
    prefilled: usize,
    next: Vec<u32>,
    generated: Vec<u32>,
    sampler: Sampler,
    stream: TokenStream,
    text: String,
    emitted: usize,
    started: Instant,
    first_token: Option<Instant>,
}

type Key = Option<AdapterId>;

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
    waiting: BTreeMap<Key, VecDeque<Submission>>,
    running: Vec<Seq>,
    last_key: Option<Key>,
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
        device: if model.device().is_cpu() { "cpu".into() } else { format!("{:?}", model.device().location()) },
    };
    let done: LoadDone = Arc::new(move |id, result, took| tx.send(Command::Loaded { id, result, took }).is_ok());
    let loader = match Loader::spawn(model.adapter_target(), cfg.limits.host_cache_bytes, cfg.hub, done) {
        Ok(loader) => loader,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let pinned: HashSet<AdapterId> = cfg.pinned.iter().cloned().collect();
    let residency = Residency::new(cfg.limits, model.config().num_hidden_layers, pinned);
    let eos = crate::generate::eos_tokens(&model, &tokenizer);
    let mut s = Scheduler {
        model,
        tokenizer: tokenizer.clone(),
        eos,
        stats,
        residency,
        loader: loader.clone(),
        parked: Vec::new(),
        waiting: BTreeMap::new(),
        running: Vec::new(),
        last_key: None,
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
        let what = panic
            .downcast_ref::<&str>()
            .map(|m| m.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
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
                self.waiting.entry(sub.request.adapter.clone()).or_default().push_back(*sub);
            }
            Command::Loaded { id, result, took } => self.on_loaded(id, result, took),
            Command::Shutdown => return false,
        }
        true
    }

    /// Makes sure the adapter of every waiting request is resident or on its way: the caller started its load, but
    /// it may have been evicted since, or its load may have failed before the request arrived.
    fn load_for_waiting(&mut self) {
        let mut stopped = Vec::new();
        for (key, queue) in &self.waiting {
            let (Some(id), Some(src)) = (key, queue.front().and_then(|s| s.source.as_ref())) else { continue };
            if self.residency.slot(id).is_none() && self.loader.ensure(id, src).is_err() {
                stopped.push(id.clone());
            }
        }
        for id in stopped {
            self.fail_waiting(&id, "the adapter loader has stopped".into());
        }
    }

    fn on_loaded(&mut self, id: AdapterId, result: Result<Arc<crate::LoraAdapter>>, took: Duration) {
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
        let oldest: HashMap<&AdapterId, Instant> =
            self.waiting.iter().filter_map(|(key, queue)| Some((key.as_ref()?, queue.front()?.submitted))).collect();
        let mut parked = std::mem::take(&mut self.parked);
        parked.sort_by_key(|(id, _)| oldest.get(id).map_or((1, None), |&t| (0, Some(t))));
        let (mut still, mut evicted) = (Vec::new(), Vec::new());
        for (id, adapter) in parked {
            if self.residency.slot(&id).is_some() {
                continue;
            }
            let mine = oldest.get(&id).copied();
            let mut busy = running.clone();
            for (resident, &since) in &oldest {
                if mine.is_none_or(|mine| since <= mine) {
                    busy.insert((*resident).clone());
                }
            }
            if self.residency.make_room(adapter.bytes(), &busy, &mut evicted) {
                self.residency.insert(id, adapter);
            } else {
                still.push((id, adapter));
            }
        }
        self.parked = still;
        for id in &evicted {
            self.loader.forget(id);
        }
        EngineStats::set(&self.stats.adapter_evictions, self.residency.evictions());
    }

    fn fail_waiting(&mut self, id: &AdapterId, reason: String) {
        if let Some(queue) = self.waiting.remove(&Some(id.clone())) {
            for sub in queue {
                let _ = sub.events.send(Err(Error::AdapterLoad { id: id.clone(), reason: reason.clone() }));
            }
        }
    }

    /// Fails the requests that have waited longer than `adapter_load_timeout` for an adapter that is still not
    /// resident, saying what the adapter was doing. Requests waiting only for room in the batch are not affected.
    /// Returns the next such deadline.
    fn expire_waiting(&mut self, now: Instant) -> Option<Instant> {
        let timeout = self.cfg.adapter_load_timeout;
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (key, queue) in &mut self.waiting {
            let Some(id) = key else { continue };
            if self.residency.slot(id).is_some() {
                continue;
            }
            let Some(oldest) = queue.front().map(|s| s.submitted) else { continue };
            if now - oldest < timeout {
                next = Some(next.map_or(oldest + timeout, |n| n.min(oldest + timeout)));
                continue;
            }
            let state = if self.parked.iter().any(|(p, _)| p == id) {
                "loaded, waiting for room: every resident adapter is in use".to_string()
            } else {
                match self.loader.started(id) {
                    Some(t) => format!("loading for {:.1} s", (now - t).as_secs_f64()),
                    None => "not loading".to_string(),
                }
            };
            while let Some(sub) = queue.front() {
                let waited = now - sub.submitted;
                if waited < timeout {
                    next = Some(next.map_or(sub.submitted + timeout, |n| n.min(sub.submitted + timeout)));
                    break;
                }
                let sub = queue.pop_front().expect("front exists");
                EngineStats::add(&self.stats.adapter_load_timeouts, 1);
                let waited_secs = waited.as_secs_f64();
                let _ = sub.events.send(Err(Error::AdapterLoadTimeout {
                    id: id.clone(),
                    waited_secs,
                    state: state.clone(),
                }));
                expired.push((id.clone(), state.clone()));
            }
        }
        self.waiting.retain(|_, q| !q.is_empty());
        for (id, state) in expired {
            tracing::warn!(adapter = %id, %state, "a request timed out waiting for its adapter");
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
        for (_, queue) in std::mem::take(&mut self.waiting) {
            for sub in queue {
                let _ = sub.events.send(Err(copy()));
            }
        }
    }

    fn drop_cancelled(&mut self) {
        self.running.retain(|s| !s.sub.events.is_closed());
        for queue in self.waiting.values_mut() {
            queue.retain(|s| !s.events.is_closed());
        }
        self.waiting.retain(|_, q| !q.is_empty());
    }

    fn kv_reserved(&self) -> usize {
        self.running.iter().map(|s| s.sub.prompt.len() + s.sub.request.max_new_tokens).sum()
    }

    /// Admits waiting requests, one per adapter in turn, starting after the adapter admitted last.
    fn admit(&mut self) {
        let mut kv = self.kv_reserved();
        loop {
            if self.running.len() >= self.cfg.max_batch_size {
                return;
            }
            let keys: Vec<Key> = self.waiting.keys().cloned().collect();
            if keys.is_empty() {
                return;
            }
            let start = match &self.last_key {
                Some(last) => keys.iter().position(|k| k > last).unwrap_or(0),
                None => 0,
            };
            let mut admitted = false;
            for key in keys[start..].iter().chain(&keys[..start]) {
                if let Some(id) = key {
                    if self.residency.slot(id).is_none() {
                        continue;
                    }
                }
                let queue = self.waiting.get_mut(key).expect("key listed");
                let need = queue.front().map_or(0, |s| s.prompt.len() + s.request.max_new_tokens);
                if kv + need > self.cfg.max_kv_tokens && !self.running.is_empty() {
                    continue;
                }
                let sub = queue.pop_front().expect("queues are never empty");
                if queue.is_empty() {
                    self.waiting.remove(key);
                }
                kv += need;
                self.last_key = Some(key.clone());
                self.start(sub);
                admitted = true;
                break;
            }
            if !admitted {
                return;
            }
        }
    }

    fn start(&mut self, sub: Submission) {
        if let Some(id) = &sub.request.adapter {
            self.residency.touch(id);
        }
        let sampler = Sampler::new(sub.request.sampling.clone());
        self.running.push(Seq {
            cache: self.model.new_cache(),
            prefilled: 0,
            next: Vec::new(),
            generated: Vec::new(),
            sampler,
            stream: TokenStream::new(),
            text: String::new(),
            emitted: 0,
            started: Instant::now(),
            first_token: None,
            sub,
        });
    }

    fn publish_gauges(&self) {
        let waiting: usize = self.waiting.values().map(VecDeque::len).sum();
        EngineStats::set(&self.stats.running, self.running.len() as u64);
        EngineStats::set(&self.stats.waiting, waiting as u64);
        EngineStats::set(&self.stats.kv_tokens, self.kv_reserved() as u64);
        EngineStats::set(&self.stats.adapters_resident, self.residency.len() as u64);
    }

    /// One forward pass over every running sequence. A failure belongs to the sequences that cause it: a
    /// sequence without room in the model's context, with non-finite logits, or whose rows make the forward pass
    /// fail (found by retrying each alone, after rolling every cache back) ends with its error, and the others go
    /// on with exactly the tokens they would have had. The batch as a whole is never failed.
    fn step(&mut self) {
        let bank = match self.residency.bank() {
            Ok(bank) => bank,
            Err(e) => return self.drop_unusable_adapters(&e),
        };
        self.fail_overlong();
        // Sort by adapter slot so rows sharing an adapter are contiguous segments.
        let slot_of = |s: &Seq| s.sub.request.adapter.as_ref().and_then(|id| self.residency.slot(id));
        let mut order: Vec<(Option<usize>, usize)> =
            self.running.iter().enumerate().map(|(i, s)| (slot_of(s), i)).collect();
        order.sort();
        // Token budget: decode rows first, then prompt chunks.
        let decoding = self.running.iter().filter(|s| s.prefilled == s.sub.prompt.len()).count();
        let budget = self.cfg.step_token_budget().saturating_sub(decoding);
        let left: Vec<(Instant, usize)> =
            self.running.iter().map(|s| (s.started, s.sub.prompt.len() - s.prefilled)).collect();
        let chunks = prefill_chunks(&left, budget);
        let picked: Vec<(Option<usize>, usize)> = order
            .into_iter()
            .filter(|&(_, i)| chunks[i] > 0 || self.running[i].prefilled == self.running[i].sub.prompt.len())
            .collect();
        if picked.is_empty() {
            return;
        }
        self.inject_faults();
        let lens: Vec<usize> = self.running.iter().map(|s| s.cache.len()).collect();
        let rows = match self.forward(&picked, &chunks, &bank).and_then(|l| Ok(l.to_vec2::<f32>()?)) {
            Ok(rows) => rows,
            Err(e) => {
                self.rollback(&lens);
                let culprits = self.isolate(&picked, &chunks, &bank, &lens, &e);
                return self.remove_failed(culprits);
            }
        };
        EngineStats::add(&self.stats.steps, 1);
        EngineStats::set(&self.stats.batch_size, picked.len() as u64);
        let mut failed = Vec::new();
        let mut ready = Vec::with_capacity(rows.len());
        for (row, &(_, i)) in rows.iter().zip(&picked) {
            let s = &mut self.running[i];
            if chunks[i] > 0 {
                s.prefilled += chunks[i];
                if s.prefilled < s.sub.prompt.len() {
                    continue; // more of the prompt to go; these logits are not needed
                }
            }
            if row.iter().any(|x| !x.is_finite()) {
                let e = Error::Generation(
                    "the model's output for this request was not a number (NaN or infinite logits)".into(),
                );
                failed.push((i, e));
                continue;
            }
            ready.push((i, &row[..]));
        }
        let sampled = sample_rows(&mut self.running, &ready);
        let mut done = Vec::new();
        for (&(i, _), next) in ready.iter().zip(sampled) {
            if self.emit(i, next) {
                done.push(i);
            }
        }
        for (i, e) in failed {
            tracing::warn!(adapter = ?self.running[i].sub.request.adapter, "a request failed alone: {e}");
            let _ = self.running[i].sub.events.send(Err(e));
            done.push(i);
        }
        done.sort_unstable();
        for i in done.into_iter().rev() {
            self.running.swap_remove(i);
        }
    }

    /// Fails, alone, every running sequence whose next token would not fit the model's context (the request
    /// contract keeps prompt plus `max_new_tokens` within it, so this is a guard, not a limit).
    fn fail_overlong(&mut self) {
        let context = self.model.config().max_position_embeddings;
        let over: Vec<(usize, Error)> = (self.running.iter().enumerate())
            .filter_map(|(i, s)| {
                let len = s.sub.prompt.len() + s.generated.len();
                (len > context).then_some((i, Error::SequenceTooLong { len, max: context }))
            })
            .collect();
        self.remove_failed(over);
    }

    /// Sends each `(index, error)` to its sequence and removes those sequences from the batch.
    fn remove_failed(&mut self, mut failed: Vec<(usize, Error)>) {
        failed.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, e) in failed {
            let seq = self.running.swap_remove(i);
            tracing::warn!(adapter = ?seq.sub.request.adapter, "a request failed alone: {e}");
            let _ = seq.sub.events.send(Err(e));
        }
    }

    /// Rolls every running sequence's cache back to `lens` (what it held before a failed step appended to it).
    fn rollback(&mut self, lens: &[usize]) {
        for (s, &len) in self.running.iter_mut().zip(lens) {
            s.cache.truncate(len);
        }
    }

    /// After a failed step: runs each picked sequence alone (rolling it back again) to find the ones whose rows
    /// fail. When none fails alone (memory ran out only together), the newest admission is the one given up: put
    /// back in the queue if it has not streamed a token yet, failed otherwise.
    fn isolate(
        &mut self,
        picked: &[(Option<usize>, usize)],
        chunks: &[usize],
        bank: &AdapterBank,
        lens: &[usize],
        error: &Error,
    ) -> Vec<(usize, Error)> {
        tracing::warn!(batch = picked.len(), "a step failed ({error}); retrying its sequences one at a time");
        let mut culprits = Vec::new();
        for &one in picked {
            if let Err(e) = self.forward(&[one], chunks, bank) {
                culprits.push((one.1, Error::Generation(e.to_string())));
            }
            self.rollback(lens);
        }
        if culprits.is_empty() {
            if let Some(&(_, newest)) = picked.iter().max_by_key(|&&(_, i)| self.running[i].started) {
                if self.running[newest].generated.is_empty() && picked.len() > 1 {
                    let seq = self.running.swap_remove(newest);
                    tracing::warn!(adapter = ?seq.sub.request.adapter, "preempted: back to the queue");
                    self.waiting.entry(seq.sub.request.adapter.clone()).or_default().push_front(seq.sub);
                } else {
                    culprits.push((newest, Error::Generation(error.to_string())));
                }
            }
        }
        culprits
    }

    /// The bank of resident adapters could not be built: each resident adapter is tried alone, and those that fail
    /// are evicted and their requests (running and waiting) fail with the cause.
    fn drop_unusable_adapters(&mut self, error: &Error) {
        tracing::error!("the adapter bank could not be built: {error}");
        let layers = self.model.config().num_hidden_layers;
        let bad: Vec<(AdapterId, String)> = self
            .residency
            .entries()
            .filter_map(|(id, a)| AdapterBank::new(vec![a.clone()], layers).err().map(|e| (id.clone(), e.to_string())))
            .collect();
        for (id, reason) in &bad {
            self.residency.remove(id);
            self.loader.forget(id);
            let err = || Error::AdapterLoad { id: id.clone(), reason: reason.clone() };
            let failed: Vec<(usize, Error)> = (self.running.iter().enumerate())
                .filter(|(_, s)| s.sub.request.adapter.as_ref() == Some(id))
                .map(|(i, _)| (i, err()))
                .collect();
            self.remove_failed(failed);
            self.fail_waiting(id, reason.clone());
        }
    }

    /// The faults a test asked for (see [`crate::config::Faults`]).
    fn inject_faults(&self) {
        let step = EngineStats::get(&self.stats.steps);
        let faults = &self.cfg.faults;
        if let Some((at, pause)) = faults.stall_at_step {
            if at == step {
                std::thread::sleep(pause);
            }
        }
        if let Some(delay) = faults.step_delay {
            std::thread::sleep(delay);
        }
        if faults.panic_at_step == Some(step) {
            panic!("injected fault at step {step}");
        }
    }

    fn forward(
        &mut self,
        picked: &[(Option<usize>, usize)],
        chunks: &[usize],
        bank: &AdapterBank,
    ) -> Result<candle_core::Tensor> {
        let mut seqs: Vec<SeqInput<'_>> = Vec::with_capacity(picked.len());
        let mut refs: Vec<Option<&mut Seq>> = self.running.iter_mut().map(Some).collect();
        for &(slot, i) in picked {
            let s = refs[i].take().expect("each sequence once");
            let Seq { cache, sub, next, prefilled, .. } = s;
            let tokens: &[u32] = if chunks[i] > 0 { &sub.prompt[*prefilled..*prefilled + chunks[i]] } else { next };
            seqs.push(SeqInput { tokens, cache, adapter: slot });
        }
        let logits = self.model.forward(&mut seqs, bank, Logits::Last)?;
        if let Some(id) = &self.cfg.faults.forward_error_for {
            if picked.iter().any(|&(_, i)| self.running[i].sub.request.adapter.as_ref() == Some(id)) {
                return Err(Error::Generation(format!("injected fault: a step with adapter {id}")));
            }
        }
        if let Some(id) = &self.cfg.faults.nan_logits_for {
            let (n, vocab) = logits.dims2()?;
            let mut rows: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            for (r, &(_, i)) in picked.iter().enumerate() {
                if self.running[i].sub.request.adapter.as_ref() == Some(id) {
                    rows[r * vocab..(r + 1) * vocab].fill(f32::NAN);
                }
            }
            return Ok(candle_core::Tensor::from_vec(rows, (n, vocab), logits.device())?);
        }
        Ok(logits)
    }

    /// Appends the sampled token `next` to running sequence `i` and sends it; returns whether the sequence is finished.
    fn emit(&mut self, i: usize, next: Sampled) -> bool {
        let eos = &self.eos;
        let tokenizer = &self.tokenizer;
        let s = &mut self.running[i];
        s.generated.push(next.token);
        s.next = vec![next.token];
        s.first_token.get_or_insert_with(Instant::now);
        EngineStats::add(&self.stats.generated_tokens, 1);
        let special = tokenizer.is_special(next.token);
        let mut finish = None;
        if eos.contains(&next.token) {
            finish = Some(FinishReason::Eos);
        } else if !special {
            match s.stream.push(tokenizer, next.token) {
                Ok(Some(piece)) => s.text.push_str(&piece),
                Ok(None) => {}
                Err(e) => tracing::warn!("detokenization failed: {e}"),
            }
        }
        if finish.is_none() {
            if let Some(pos) = first_stop(&s.text, &s.sub.request.stop, s.emitted) {
                s.text.truncate(pos);
                finish = Some(FinishReason::StopSequence);
            } else if s.generated.len() >= s.sub.request.max_new_tokens {
                finish = Some(FinishReason::Length);
            }
        }
        if matches!(finish, Some(FinishReason::Length | FinishReason::Eos)) {
            if let Ok(Some(rest)) = s.stream.flush(tokenizer) {
                s.text.push_str(&rest);
            }
        }
        let safe = if finish.is_some() { s.text.len() } else { s.text.len() - held_back(&s.text, &s.sub.request.stop) };
        let piece = s.text.get(s.emitted..safe.max(s.emitted)).unwrap_or("").to_string();
        s.emitted = safe.max(s.emitted);
        let event = TokenEvent { id: next.token, text: piece, logprob: next.logprob, special };
        let mut gone = s.sub.events.send(Ok(Event::Token(event))).is_err();
        if let Some(reason) = finish {
            let now = Instant::now();
            let submitted = s.sub.submitted;
            let finished = Finished {
                reason,
                prompt_tokens: s.sub.prompt.len(),
                generated_tokens: s.generated.len(),
                text: s.text.clone(),
                timings: Timings {
                    queue: s.started - submitted,
                    time_to_first_token: s.first_token.unwrap_or(now) - submitted,
                    total: now - submitted,
                },
            };
            let _ = s.sub.events.send(Ok(Event::Finished(finished)));
            gone = true;
        }
        gone
    }
}

/// Samples the next token of each running sequence `i` in `ready` from its logits row, the rows split across
/// candle's workers (a softmax over the vocabulary per row adds up to a serial stretch of the step otherwise).
fn sample_rows(running: &mut [Seq], ready: &[(usize, &[f32])]) -> Vec<Sampled> {
    struct Job<'a> {
        seq: &'a mut Seq,
        logits: &'a [f32],
        sampled: Option<Sampled>,
    }
    let mut seqs: Vec<Option<&mut Seq>> = running.iter_mut().map(Some).collect();
    let jobs: Vec<Mutex<Job<'_>>> = ready
        .iter()
        .map(|&(i, logits)| Mutex::new(Job { seq: seqs[i].take().expect("each sequence once"), logits, sampled: None }))
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(jobs.len(), |range| {
        for job in &jobs[range] {
            let mut job = job.lock().expect("not poisoned");
            let Job { seq: s, logits, sampled } = &mut *job;
            let history =
                if s.sampler.needs_history() { [&s.sub.prompt[..], &s.generated[..]].concat() } else { Vec::new() };
            *sampled = Some(s.sampler.sample(logits, &history));
        }
    });
    jobs.into_iter().map(|j| j.into_inner().expect("not poisoned").sampled.expect("sampled")).collect()
}

/// Byte offset of the earliest stop sequence in `text` that ends after `from` (earlier text was already checked).
fn first_stop(text: &str, stops: &[String], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|stop| {
            let begin = from.saturating_sub(stop.len());
            let begin = (0..=begin).rev().find(|&b| text.is_char_boundary(b)).unwrap_or(0);
            text[begin..].find(stop.as_str()).map(|p| p + begin)
        })
        .min()
}

/// Prompt tokens each running sequence prefills in this step, given when it was admitted and how many of its prompt
/// tokens are left: the budget goes to the oldest admission first, so that a prompt half prefilled is never
/// overtaken by one admitted after it (whatever the adapter slots that order the batch's rows).
fn prefill_chunks(left: &[(Instant, usize)], mut budget: usize) -> Vec<usize> {
    let mut chunks = vec![0; left.len()];
    let mut by_admission: Vec<usize> = (0..left.len()).collect();
    by_admission.sort_by_key(|&i| (left[i].0, i));
    for i in by_admission {
        let take = left[i].1.min(budget);
        chunks[i] = take;
        budget -= take;
    }
    chunks
}

/// Bytes at the end of `text` that could be the start of a stop sequence, and so are held back.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for stop in stops {
        for (len, _) in stop.char_indices().skip(1) {
            if len > hold && text.ends_with(&stop[..len]) {
                hold = len;
            }
        }
    }
    hold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefill_budget_goes_to_the_oldest_admission_first() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // Running order as the batch holds it (after swap_remove): admitted at 30, 10, 20, 0 ms; the one at 0 ms
        // is decoding (nothing left).
        let left = [(at(30), 50), (at(10), 7), (at(20), 100), (at(0), 0)];
        assert_eq!(prefill_chunks(&left, 60), vec![0, 7, 53, 0]);
        assert_eq!(prefill_chunks(&left, 200), vec![50, 7, 100, 0]);
        assert_eq!(prefill_chunks(&left, 5), vec![0, 5, 0, 0]);
        assert_eq!(prefill_chunks(&left, 0), vec![0; 4]);
    }

    #[test]
    fn stop_sequences_are_found_and_prefixes_held() {
        let stops = vec!["###".to_string(), "\nUser:".to_string()];
        assert_eq!(first_stop("abc ### x", &stops, 0), Some(4));
        assert_eq!(first_stop("abc\nUser: hi", &stops, 5), Some(3));
        assert_eq!(first_stop("abc", &stops, 0), None);
        assert_eq!(held_back("answer #", &stops), 1);
        assert_eq!(held_back("answer ##", &stops), 2);
        assert_eq!(held_back("answer\nUs", &stops), 3);
        assert_eq!(held_back("answer", &stops), 0);
    }
}
