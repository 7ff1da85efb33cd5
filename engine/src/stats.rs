//! Live engine gauges and counters, updated by the batching thread and read by the server's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
}

impl EngineStats {
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
