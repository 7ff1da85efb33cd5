//! Loading adapters off the batching thread. Two loader threads read adapters from their sources, one for local
//! folders and one for Hugging Face hub downloads, so that a slow download never holds up a local load behind it
//! (on a GPU they also keep host copies in a shared [`HostCache`]); the engine thread hears of each load through a
//! callback. A panic while loading is that adapter's load error, and the thread goes on.
//!
//! Loads are started by whoever first needs an adapter: the request's caller, as soon as the request is queued, so a
//! load runs while the engine computes the current step and the adapter is ready when the engine next looks (the
//! engine thread only reads commands between steps: starting the load there would add a step to every cold
//! request's first token); the engine thread itself for preloads and for waiting requests whose adapter was evicted
//! or failed. [`Loader::ensure`] starts at most one load per adapter until the engine forgets it. Each load has a
//! number: a load still on its way when its adapter is discarded (its files changed) is no longer the current one,
//! and neither the engine ([`Loader::is_current`]) nor the host cache keeps what it read.

use super::{AdapterId, AdapterSource, HostCache, HubLimits};
use crate::adapter::{AdapterTarget, LoraAdapter};
use crate::config::Faults;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A finished load, as the loader reports it.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The adapter.
    pub id: AdapterId,
    /// Which load of `id` this was (see [`Loader::is_current`]).
    pub load: u64,
    /// The adapter as loaded, or why it could not be.
    pub result: Result<Arc<LoraAdapter>>,
    /// How long the load took.
    pub took: Duration,
    /// The span of whoever asked for it.
    pub span: tracing::Span,
}

/// Hears of every finished load; false stops the loader.
pub(crate) type LoadDone = Arc<dyn Fn(Loaded) -> bool + Send + Sync>;

/// One load to do.
struct Job {
    id: AdapterId,
    source: AdapterSource,
    /// The load's number.
    load: u64,
    /// The span of whoever asked for it: the load's log lines go there.
    span: tracing::Span,
}

/// The adapters the loader tracks: resident, loaded and waiting for room, or being loaded (the ones no one needs to
/// load), each with its load; and the number the next load gets.
#[derive(Debug, Default)]
struct Tracking {
    adapters: HashMap<AdapterId, Tracked>,
    next_load: u64,
}

/// A tracked adapter: when its load started, and that load's number.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    started: Instant,
    load: u64,
}

/// The shared side of the loader threads.
#[derive(Debug)]
pub(crate) struct Loader {
    local: Sender<Job>,
    hub: Sender<Job>,
    tracking: Mutex<Tracking>,
    /// The workers' host cache (on a GPU).
    host: Option<Arc<Mutex<HostCache>>>,
}

/// What a loader thread needs.
#[derive(Clone)]
struct Worker {
    target: AdapterTarget,
    /// On a GPU: adapters are read into host memory, kept there (bounded), and copied to the device.
    host: Option<Arc<Mutex<HostCache>>>,
    hub: HubLimits,
    done: LoadDone,
    /// Those the loader injects: [`Faults::panic_loading`], [`Faults::slow_loading`].
    faults: Faults,
}

impl Worker {
    fn spawn(self, name: &str) -> Result<Sender<Job>> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for Job { id, source, load, span } in rx {
                    let start = Instant::now();
                    let result = span.in_scope(|| self.load_caught(&id, &source, load));
                    if !(self.done)(Loaded { id, load, result, took: start.elapsed(), span }) {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the adapter loader thread: {e}")))?;
        Ok(tx)
    }

    /// [`Worker::load`], with a panic turned into that adapter's load error, so that the thread goes on loading
    /// the others (and the adapter is not left looking as if it still loaded).
    fn load_caught(&self, id: &AdapterId, source: &AdapterSource, load: u64) -> Result<Arc<LoraAdapter>> {
        let run = || {
            if self.faults.panic_loading.as_ref() == Some(id) {
                panic!("injected fault: a panic while loading {id}");
            }
            let loaded = self.load(id, source, load);
            // After the files were read: they may change while this load is still on its way.
            if let Some((_, pause)) = self.faults.slow_loading.as_ref().filter(|(slow, _)| slow == id) {
                std::thread::sleep(*pause);
            }
            loaded
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
            let what = crate::error::panic_message(&*panic);
            tracing::error!(adapter = %id, "the adapter loader panicked: {what}");
            Err(Error::AdapterLoad { id: id.clone(), reason: "the loader failed on it (an internal error)".into() })
        })
    }

    fn load(&self, id: &AdapterId, source: &AdapterSource, load: u64) -> Result<Arc<LoraAdapter>> {
        let Some(host) = &self.host else { return super::load(id, source, &self.target, &self.hub) };
        let cached = host.lock().expect("not poisoned").get(id);
        let on_host = match cached {
            Some(a) => {
                tracing::debug!(adapter = %id, "adapter copied back from host memory");
                a
            }
            None => {
                let host_target = AdapterTarget { device: candle_core::Device::Cpu, ..self.target.clone() };
                let a = super::load(id, source, &host_target, &self.hub)?;
                host.lock().expect("not poisoned").insert(id.clone(), a.clone(), load);
                a
            }
        };
        on_host.to_target(&self.target).map(Arc::new)
    }
}

impl Loader {
    /// Starts the loader threads for `target`; `done` hears of every load and returns false to stop them.
    pub(crate) fn spawn(
        target: AdapterTarget,
        host_cache_bytes: usize,
        hub: HubLimits,
        done: LoadDone,
        faults: Faults,
    ) -> Result<Arc<Self>> {
        let host = (!target.device.is_cpu()).then(|| Arc::new(Mutex::new(HostCache::new(host_cache_bytes))));
        let worker = Worker { target, host: host.clone(), hub, done, faults };
        let local = worker.clone().spawn("loraland-adapter-loader")?;
        let hub = worker.spawn("loraland-hub-loader")?;
        Ok(Arc::new(Self { local, hub, tracking: Mutex::default(), host }))
    }

    /// Starts loading `id` from `source` unless it is resident, waiting for room or being loaded; the load logs in
    /// the caller's current span. Fails only if the loader thread has stopped.
    pub(crate) fn ensure(&self, id: &AdapterId, source: &AdapterSource) -> Result<()> {
        let mut tracking = self.tracking.lock().expect("not poisoned");
        if tracking.adapters.contains_key(id) {
            return Ok(());
        }
        tracing::info!(adapter = %id, ?source, "loading adapter");
        let queue = match source {
            AdapterSource::Local(_) => &self.local,
            AdapterSource::Hub { .. } => &self.hub,
            AdapterSource::Merged(m) if m.uses_hub() => &self.hub,
            AdapterSource::Merged(_) => &self.local,
        };
        let load = tracking.next_load;
        let job = Job { id: id.clone(), source: source.clone(), load, span: tracing::Span::current() };
        if queue.send(job).is_err() {
            return Err(Error::AdapterLoad { id: id.clone(), reason: "the adapter loader has stopped".into() });
        }
        tracking.next_load += 1;
        tracking.adapters.insert(id.clone(), Tracked { started: Instant::now(), load });
        Ok(())
    }

    /// When the load of `id` was started, if the loader tracks it (loading, loaded or resident).
    pub(crate) fn started(&self, id: &AdapterId) -> Option<Instant> {
        self.tracking.lock().expect("not poisoned").adapters.get(id).map(|t| t.started)
    }

    /// Whether `load` is the load of `id` the loader tracks now: false once `id` was discarded (and maybe loaded
    /// again) after that load started, so that what it read is not the adapter any more.
    pub(crate) fn is_current(&self, id: &AdapterId, load: u64) -> bool {
        self.tracking.lock().expect("not poisoned").adapters.get(id).is_some_and(|t| t.load == load)
    }

    /// Forgets `id` (evicted, or its load failed): the next request for it loads it again.
    pub(crate) fn forget(&self, id: &AdapterId) {
        self.tracking.lock().expect("not poisoned").adapters.remove(id);
    }

    /// Forgets `id` and drops its host copy (its files changed): the next request reads it from its source, and a
    /// load of it already on its way keeps no host copy either.
    pub(crate) fn discard(&self, id: &AdapterId) {
        let mut tracking = self.tracking.lock().expect("not poisoned");
        tracking.adapters.remove(id);
        if let Some(host) = &self.host {
            host.lock().expect("not poisoned").discard(id, tracking.next_load);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// One load per adapter however often it is asked for, until it is forgotten; a failed load reports its cause.
    #[test]
    fn loads_each_adapter_once_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let t = crate::adapter::tiny_test_target();
        crate::adapter::write_random_peft(
            &dir.path().join("a"),
            &t.config,
            4,
            &[crate::Module::Q],
            1,
            candle_core::DType::F32,
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let done: LoadDone =
            Arc::new(move |l: Loaded| tx.lock().unwrap().send((l.id, l.result.map(|a| a.max_rank()))).is_ok());
        let loader = Loader::spawn(t, 0, HubLimits::default(), done, Faults::default()).unwrap();
        let a = AdapterId::new("a").unwrap();
        let src = AdapterSource::Local(dir.path().join("a"));
        for _ in 0..3 {
            loader.ensure(&a, &src).unwrap();
        }
        let (id, rank) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((id.as_str(), rank.unwrap()), ("a", 4));
        loader.ensure(&a, &src).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "loaded twice");
        loader.forget(&a);
        loader.ensure(&a, &src).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().0, a);
        let missing = AdapterId::new("missing").unwrap();
        loader.ensure(&missing, &AdapterSource::Local(dir.path().join("missing"))).unwrap();
        let (id, result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(id, missing);
        assert!(result.unwrap_err().to_string().contains("missing"));
    }
}
