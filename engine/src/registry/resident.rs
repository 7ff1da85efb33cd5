//! Which adapters are resident: a bounded set (count, bytes, rank) with least-recently-used eviction of idle,
//! unpinned adapters, and the [`AdapterBank`] of the resident set that the model's forward pass reads.

use super::AdapterId;
use crate::adapter::LoraAdapter;
use crate::{AdapterBank, Error, Result};
use std::collections::HashSet;
use std::sync::Arc;

/// Limits on resident adapters.
#[derive(Clone, Copy, Debug)]
pub struct ResidencyLimits {
    /// Most adapters resident at once.
    pub max_adapters: usize,
    /// Most bytes of adapter weights resident at once.
    pub max_bytes: usize,
    /// Largest LoRA rank accepted.
    pub max_rank: usize,
    /// On a GPU, bytes of host copies kept of loaded adapters, so that one evicted from the GPU comes back without
    /// reading the disk (see [`super::HostCache`]).
    pub host_cache_bytes: usize,
}

impl Default for ResidencyLimits {
    fn default() -> Self {
        Self { max_adapters: 64, max_bytes: 2 << 30, max_rank: 64, host_cache_bytes: 8 << 30 }
    }
}

#[derive(Debug)]
struct Entry {
    id: AdapterId,
    adapter: Arc<LoraAdapter>,
    last_used: u64,
}

/// The resident adapters, in bank slot order.
#[derive(Debug)]
pub struct Residency {
    limits: ResidencyLimits,
    num_layers: usize,
    entries: Vec<Entry>,
    pinned: HashSet<AdapterId>,
    bank: Arc<AdapterBank>,
    dirty: bool,
    clock: u64,
    evictions: u64,
}

impl Residency {
    /// An empty set; `pinned` adapters are never evicted once loaded.
    pub fn new(limits: ResidencyLimits, num_layers: usize, pinned: HashSet<AdapterId>) -> Self {
        Self {
            limits,
            num_layers,
            entries: Vec::new(),
            pinned,
            bank: Arc::new(AdapterBank::default()),
            dirty: false,
            clock: 0,
            evictions: 0,
        }
    }

    /// The bank slot of `id`, if resident.
    pub fn slot(&self, id: &AdapterId) -> Option<usize> {
        self.entries.iter().position(|e| &e.id == id)
    }

    /// Marks `id` as just used.
    pub fn touch(&mut self, id: &AdapterId) {
        self.clock += 1;
        let now = self.clock;
        if let Some(e) = self.entries.iter_mut().find(|e| &e.id == id) {
            e.last_used = now;
        }
    }

    /// Refuses an adapter that can never be resident under the limits.
    pub fn check(&self, adapter: &LoraAdapter) -> Result<()> {
        let rank = adapter.max_rank();
        if rank > self.limits.max_rank {
            return Err(Error::RankLimit { rank, max: self.limits.max_rank });
        }
        if adapter.bytes() > self.limits.max_bytes {
            return Err(Error::AdapterTooLarge { bytes: adapter.bytes(), max: self.limits.max_bytes });
        }
        Ok(())
    }

    /// Evicts least-recently-used adapters that are neither pinned nor in `busy`, merges of adapters first, until
    /// one more adapter of `bytes` fits, adding their ids to `evicted`. Returns whether it fits now.
    pub fn make_room(&mut self, bytes: usize, busy: &HashSet<AdapterId>, evicted: &mut Vec<AdapterId>) -> bool {
        loop {
            let used: usize = self.entries.iter().map(|e| e.adapter.bytes()).sum();
            if self.entries.len() < self.limits.max_adapters && used + bytes <= self.limits.max_bytes {
                return true;
            }
            let victim = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !self.pinned.contains(&e.id) && !busy.contains(&e.id))
                // Idle merges go first: clients choose merges freely, and a flood of them must displace merges,
                // not the adapters other requests use.
                .min_by_key(|(_, e)| (!e.id.is_merge(), e.last_used))
                .map(|(i, _)| i);
            let Some(i) = victim else { return false };
            let e = self.entries.remove(i);
            tracing::info!(adapter = %e.id, "evicting idle adapter");
            self.evictions += 1;
            self.dirty = true;
            evicted.push(e.id);
        }
    }

    /// Adds a loaded adapter (after [`Residency::make_room`]).
    pub fn insert(&mut self, id: AdapterId, adapter: Arc<LoraAdapter>) {
        self.clock += 1;
        self.entries.push(Entry { id, adapter, last_used: self.clock });
        self.dirty = true;
    }

    /// The bank of the resident adapters, rebuilt after a change.
    pub fn bank(&mut self) -> Result<Arc<AdapterBank>> {
        if self.dirty {
            let adapters = self.entries.iter().map(|e| e.adapter.clone()).collect();
            self.bank = Arc::new(AdapterBank::new(adapters, self.num_layers)?);
            self.dirty = false;
        }
        Ok(self.bank.clone())
    }

    /// The resident adapters, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = (&AdapterId, &Arc<LoraAdapter>)> {
        self.entries.iter().map(|e| (&e.id, &e.adapter))
    }

    /// Takes `id` out of the resident set (an adapter found unusable), pinned or not.
    pub fn remove(&mut self, id: &AdapterId) {
        if let Some(i) = self.slot(id) {
            self.entries.remove(i);
            self.dirty = true;
        }
    }

    /// Resident adapter ids, in slot order.
    pub fn ids(&self) -> Vec<AdapterId> {
        self.entries.iter().map(|e| e.id.clone()).collect()
    }

    /// Number of resident adapters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no adapter is resident.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of resident adapter weights.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.adapter.bytes()).sum()
    }

    /// Adapters evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}
