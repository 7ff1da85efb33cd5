//! Host copies of adapters that run on a GPU, so that an adapter evicted from GPU memory comes back by one
//! host-to-device copy instead of a disk read and parse (LoRAX keeps the same two tiers). Bounded in bytes, least
//! recently used out first. On the CPU there is one tier and no cache.

use super::AdapterId;
use crate::adapter::LoraAdapter;
use std::collections::HashMap;
use std::sync::Arc;

/// Adapters held in host memory, most recently used last.
#[derive(Debug)]
pub struct HostCache {
    max_bytes: usize,
    entries: Vec<(AdapterId, Arc<LoraAdapter>)>,
    /// Per discarded adapter, the first load whose copy may be kept: earlier loads read the files it replaced.
    first_kept: HashMap<AdapterId, u64>,
}

impl HostCache {
    /// An empty cache of at most `max_bytes` of adapter weights (0 turns it off).
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, entries: Vec::new(), first_kept: HashMap::new() }
    }

    /// The host copy of `id`, marked as just used.
    pub fn get(&mut self, id: &AdapterId) -> Option<Arc<LoraAdapter>> {
        let i = self.entries.iter().position(|(e, _)| e == id)?;
        let entry = self.entries.remove(i);
        let adapter = entry.1.clone();
        self.entries.push(entry);
        Some(adapter)
    }

    /// Keeps `adapter`, read by load number `load`, dropping the least recently used ones until it fits; one
    /// larger than the whole cache is not kept, nor one read before its adapter was discarded.
    pub fn insert(&mut self, id: AdapterId, adapter: Arc<LoraAdapter>, load: u64) {
        if self.first_kept.get(&id).is_some_and(|&first| load < first) {
            return;
        }
        self.entries.retain(|(e, _)| e != &id);
        if adapter.bytes() > self.max_bytes {
            return;
        }
        while self.bytes() + adapter.bytes() > self.max_bytes && !self.entries.is_empty() {
            self.entries.remove(0);
        }
        self.entries.push((id, adapter));
    }

    /// Drops the host copy of `id`, if any, and keeps none read by a load numbered below `next_load` (its files
    /// changed: a load still on its way read the old ones).
    pub fn discard(&mut self, id: &AdapterId, next_load: u64) {
        self.entries.retain(|(e, _)| e != id);
        self.first_kept.insert(id.clone(), next_load);
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|(_, a)| a.bytes()).sum()
    }

    /// Ids held, least recently used first.
    pub fn ids(&self) -> Vec<&AdapterId> {
        self.entries.iter().map(|(id, _)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Module;

    fn adapter(r: usize) -> Arc<LoraAdapter> {
        let t = crate::adapter::tiny_test_target();
        Arc::new(LoraAdapter::random(&t, r, &[Module::Q], 0, candle_core::DType::F32).unwrap())
    }

    fn id(s: &str) -> AdapterId {
        AdapterId::new(s).unwrap()
    }

    #[test]
    fn keeps_the_most_recently_used_within_its_bytes() {
        let one = adapter(4).bytes();
        let mut cache = HostCache::new(2 * one);
        cache.insert(id("a"), adapter(4), 0);
        cache.insert(id("b"), adapter(4), 1);
        assert!(cache.get(&id("a")).is_some()); // a is now the most recent
        cache.insert(id("c"), adapter(4), 2); // evicts b
        assert_eq!(cache.ids(), vec![&id("a"), &id("c")]);
        assert!(cache.get(&id("b")).is_none());
        assert!(cache.bytes() <= 2 * one);
        // Larger than the whole cache: not kept, nothing else dropped.
        cache.insert(id("big"), adapter(16), 3);
        assert_eq!(cache.ids(), vec![&id("a"), &id("c")]);
        // Off.
        let mut off = HostCache::new(0);
        off.insert(id("a"), adapter(4), 0);
        assert!(off.get(&id("a")).is_none());
    }

    /// A discarded adapter's copy is dropped, and so is one read by a load that started before the discard (it
    /// read the old files); a later load's copy is kept.
    #[test]
    fn a_discarded_adapter_keeps_no_copy_read_before_the_discard() {
        let mut cache = HostCache::new(1 << 20);
        cache.insert(id("a"), adapter(4), 3);
        cache.discard(&id("a"), 5);
        assert!(cache.get(&id("a")).is_none());
        cache.insert(id("a"), adapter(4), 4);
        assert!(cache.get(&id("a")).is_none(), "load 4 started before the discard");
        cache.insert(id("a"), adapter(4), 5);
        assert!(cache.get(&id("a")).is_some());
    }
}
