//! Residency placement, as plain data: in which order loaded adapters take a place among the resident ones, and
//! which resident adapters each may not evict. The adapter whose requests have waited longest goes first; an
//! adapter in the running batch is never evicted, nor one whose requests have waited since before the adapter
//! taking its place (or at all, when that adapter has no requests: a preload). Without that rule, two adapters
//! with waiting requests evicted each other in turn while the batch was full, and an adapter waited behind younger
//! requests. The resident set itself ([`crate::registry::Residency`]) picks its victims, least recently used first.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::Instant;

/// One loaded adapter's turn: the adapters it may not evict.
#[derive(Debug)]
pub(crate) struct Turn<Id> {
    /// The adapter to place.
    pub id: Id,
    /// The resident adapters it must leave alone.
    pub busy: HashSet<Id>,
}

/// The turns of `parked` (loaded adapters waiting for a place), oldest waiting request first, given the adapters
/// of the running batch and when each adapter's oldest waiting request came.
pub(crate) fn turns<Id: Clone + Eq + Hash>(
    parked: &[Id],
    running: &HashSet<Id>,
    oldest: &HashMap<Id, Instant>,
) -> Vec<Turn<Id>> {
    let mut order: Vec<&Id> = parked.iter().collect();
    // Adapters with waiting requests first, by their oldest; preloads after, in the order they came.
    order.sort_by_key(|id| oldest.get(*id).map_or((1, None), |&t| (0, Some(t))));
    order
        .into_iter()
        .map(|id| {
            let mine = oldest.get(id).copied();
            let mut busy = running.clone();
            busy.extend(
                oldest
                    .iter()
                    .filter(|(_, &since)| mine.is_none_or(|mine| since <= mine))
                    .map(|(other, _)| other.clone()),
            );
            Turn { id: id.clone(), busy }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set(ids: &[&'static str]) -> HashSet<&'static str> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_oldest_waiting_goes_first_and_spares_the_running_and_the_older_waiting() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let oldest: HashMap<&str, Instant> = [("b", at(20)), ("a", at(10)), ("c", at(30))].into();
        let got = turns(&["c", "pre", "a"], &set(&["run"]), &oldest);
        let order: Vec<&str> = got.iter().map(|t| t.id).collect();
        assert_eq!(order, ["a", "c", "pre"], "by oldest waiting request; the preload last");
        // a (10 ms) may evict b and c, whose requests came later; c (30 ms) may not evict a or b.
        assert_eq!(got[0].busy, set(&["run", "a"]));
        assert_eq!(got[1].busy, set(&["run", "a", "b", "c"]));
        // A preload evicts nothing anyone waits for.
        assert_eq!(got[2].busy, set(&["run", "a", "b", "c"]));
    }
}
