//! Live engine gauges and counters, updated by the batching thread and read by the server's `/metrics`, and the
//! loop's liveness (a heartbeat at every iteration, and whether the thread has stopped).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Gauges (current values) and counters (totals since start).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests in the running batch.
    pub running: AtomicU64,
    /// Requests waiting to join it.
    pub waiting: AtomicU64,
    /// Sequences in the last step.
    pub batch_size: AtomicU64,
    /// KV tokens reserved by running requests.
    pub kv_tokens: AtomicU64,
    /// Adapters resident.
    pub adapters_resident: AtomicU64,
    /// Adapter loads that succeeded.
    pub adapter_loads: AtomicU64,
    /// Adapter loads that failed.
    pub adapter_load_failures: AtomicU64,
    /// Adapters evicted.
    pub adapter_evictions: AtomicU64,
    /// Duration of the last adapter load, in microseconds.
    pub last_adapter_load_us: AtomicU64,
    /// Forward steps run.
    pub steps: AtomicU64,
    /// Prompt tokens run through the model (a prompt prefilled once for all its continuations counts once).
    pub prefill_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Requests admitted to the queue.
    pub submitted: AtomicU64,
    /// Requests failed because their adapter did not become resident in time.
    pub adapter_load_timeouts: AtomicU64,
    /// The batching loop's heartbeat.
    pub liveness: Liveness,
    /// Which adapters are resident and which are waited for, by name.
    pub adapters: Mutex<AdapterActivity>,
}

/// The adapters a load balancer routes by (the Gateway API Inference Extension's LoRA affinity): those resident,
/// which serve a request at once, and those that requests wait for (not resident yet). Sorted, for stable output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdapterActivity {
    /// Adapters resident now.
    pub resident: Vec<String>,
    /// Adapters that waiting requests need and that are not resident.
    pub waited_for: Vec<String>,
    /// Most adapters resident at once.
    pub max_resident: usize,
}

/// The batching loop's heartbeat: it beats at the top of every iteration, and an idle loop wakes to beat at least
/// every [`crate::handle::TICK`]; a heartbeat older than the stall threshold means the loop is stuck (in a step
/// that never ends, or a deadlock). The thread marks itself stopped when it exits, normally or by a panic.
#[derive(Debug)]
pub struct Liveness {
    epoch: Instant,
    beat_us: AtomicU64,
    stopped: AtomicBool,
}

impl Default for Liveness {
    fn default() -> Self {
        Self { epoch: Instant::now(), beat_us: AtomicU64::new(0), stopped: AtomicBool::new(false) }
    }
}

impl Liveness {
    /// Records a heartbeat now.
    pub(crate) fn beat(&self) {
        self.beat_us.store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Marks the loop as stopped for good.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Time since the last heartbeat.
    pub fn age(&self) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_micros(self.beat_us.load(Ordering::Relaxed)))
    }

    /// Whether the loop's thread has exited.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

impl EngineStats {
    /// The adapters resident and waited for, as the batching loop last published them.
    pub fn adapter_activity(&self) -> AdapterActivity {
        self.adapters.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Reads a value.
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    pub(crate) fn set(v: &AtomicU64, x: u64) {
        v.store(x, Ordering::Relaxed);
    }

    pub(crate) fn add(v: &AtomicU64, x: u64) {
        v.fetch_add(x, Ordering::Relaxed);
    }
}
