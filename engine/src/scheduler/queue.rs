//! Admission, as plain data: the requests waiting to join the batch, one queue per adapter (the base model's
//! too), and which of them join next. Admission is round-robin over the adapters that are ready, one request each
//! in turn starting after the adapter admitted last, within the batch's free rows and the KV budget; a request
//! whose adapter is not resident waits without holding up the others. A ready request too large for the room left
//! holds back every request that came after it, so the batch drains until it fits: passed over instead, it would
//! wait as long as smaller requests kept the batch full, for ever under steady load (TGI and vLLM admit in arrival
//! order for the same reason). Generic over what waits, so that the policy is tested with plain values (as
//! mistral.rs tests its admission queue with integers).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// What the queue needs to know about a waiting request.
pub(crate) trait Waiting {
    /// The queue it waits in (its adapter, `None` for the base model).
    type Key: Ord + Clone;
    /// Its queue.
    fn key(&self) -> &Self::Key;
    /// KV tokens it reserves once running (prompt + `max_new_tokens`, for each continuation).
    fn kv_need(&self) -> usize;
    /// Rows of the batch it takes once running (one per continuation).
    fn rows(&self) -> usize {
        1
    }
    /// When it was submitted.
    fn submitted(&self) -> Instant;
}

/// The waiting requests.
#[derive(Debug)]
pub(crate) struct Queue<R: Waiting> {
    queues: BTreeMap<R::Key, VecDeque<R>>,
    last: Option<R::Key>,
}

impl<R: Waiting> Default for Queue<R> {
    fn default() -> Self {
        Self { queues: BTreeMap::new(), last: None }
    }
}

/// Room in the batch for admissions. (No request needs more than an empty batch has: the request contract refuses
/// one over the KV budget, and more continuations than the batch's rows.)
#[derive(Clone, Copy, Debug)]
pub(crate) struct Room {
    /// Rows free in the batch.
    pub rows: usize,
    /// KV tokens free in the budget.
    pub kv: usize,
}

impl<R: Waiting> Queue<R> {
    /// Adds a request at the back of its adapter's queue.
    pub fn push(&mut self, r: R) {
        self.queues.entry(r.key().clone()).or_default().push_back(r);
    }

    /// Puts a request back at the front of its queue (preempted before it streamed anything).
    pub fn push_front(&mut self, r: R) {
        self.queues.entry(r.key().clone()).or_default().push_front(r);
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// The oldest request of each queue.
    pub fn fronts(&self) -> impl Iterator<Item = &R> {
        self.queues.values().filter_map(VecDeque::front)
    }

    /// Drops every request for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&R) -> bool) {
        for queue in self.queues.values_mut() {
            queue.retain(&mut keep);
        }
        self.queues.retain(|_, q| !q.is_empty());
    }

    /// Takes out every request waiting for `key`.
    pub fn take(&mut self, key: &R::Key) -> VecDeque<R> {
        self.queues.remove(key).unwrap_or_default()
    }

    /// Takes out everything.
    pub fn drain(&mut self) -> impl Iterator<Item = R> {
        std::mem::take(&mut self.queues).into_values().flatten()
    }

    /// The requests to admit now, in order: one per ready queue in turn, from the queue after the one admitted last,
    /// while `room` lasts. A queue whose next request does not fit is passed over, and that request holds back the
    /// requests submitted after it (see the module docs): only older ones may still join.
    pub fn admit(&mut self, mut room: Room, ready: impl Fn(&R::Key) -> bool) -> Vec<R> {
        let mut admitted = Vec::new();
        while room.rows > 0 {
            let fits = |r: &R| r.kv_need() <= room.kv && r.rows() <= room.rows;
            let held_after = (self.queues.iter())
                .filter(|(key, _)| ready(key))
                .filter_map(|(_, queue)| queue.front())
                .filter(|r| !fits(r))
                .map(Waiting::submitted)
                .min();
            let keys: Vec<R::Key> = self.queues.keys().cloned().collect();
            let start = match &self.last {
                Some(last) => keys.iter().position(|k| k > last).unwrap_or(0),
                None => 0,
            };
            let mut took = false;
            for key in keys[start..].iter().chain(&keys[..start]) {
                if !ready(key) {
                    continue;
                }
                let queue = self.queues.get_mut(key).expect("key listed");
                let front = queue.front().expect("queues are never empty");
                if !fits(front) || held_after.is_some_and(|t| front.submitted() > t) {
                    continue;
                }
                let (need, rows) = (front.kv_need(), front.rows());
                let r = queue.pop_front().expect("queues are never empty");
                if queue.is_empty() {
                    self.queues.remove(key);
                }
                room.rows = room.rows.saturating_sub(rows);
                room.kv = room.kv.saturating_sub(need);
                self.last = Some(key.clone());
                admitted.push(r);
                took = true;
                break;
            }
            if !took {
                break;
            }
        }
        admitted
    }

    /// Takes out the requests that have waited `timeout` or longer in a queue that is not `ready`, and returns them
    /// with the next such deadline.
    pub fn expire(
        &mut self,
        now: Instant,
        timeout: Duration,
        ready: impl Fn(&R::Key) -> bool,
    ) -> (Vec<R>, Option<Instant>) {
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (key, queue) in &mut self.queues {
            if ready(key) {
                continue;
            }
            while let Some(r) = queue.front() {
                let deadline = r.submitted() + timeout;
                if now < deadline {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    break;
                }
                expired.push(queue.pop_front().expect("front exists"));
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        (expired, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request: its queue, its KV need, when it came.
    #[derive(Clone, Debug, PartialEq)]
    struct R(u8, usize, u64);

    fn at(ms: u64) -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    impl Waiting for R {
        type Key = u8;
        fn key(&self) -> &u8 {
            &self.0
        }
        fn kv_need(&self) -> usize {
            self.1
        }
        fn submitted(&self) -> Instant {
            at(self.2)
        }
    }

    fn queue(items: &[R]) -> Queue<R> {
        let mut q = Queue::default();
        items.iter().cloned().for_each(|r| q.push(r));
        q
    }

    const ALL: fn(&u8) -> bool = |_| true;

    #[test]
    fn admission_is_round_robin_over_queues_and_resumes_after_the_last() {
        let mut q = queue(&[R(0, 1, 0), R(0, 1, 1), R(0, 1, 2), R(1, 1, 3), R(2, 1, 4), R(2, 1, 5)]);
        let room = |rows| Room { rows, kv: 100 };
        let keys = |v: Vec<R>| v.iter().map(|r| r.0).collect::<Vec<_>>();
        assert_eq!(keys(q.admit(room(4), ALL)), [0, 1, 2, 0], "one per queue in turn");
        assert_eq!(keys(q.admit(room(1), ALL)), [2], "the next turn starts after queue 0");
        assert_eq!(keys(q.admit(room(5), ALL)), [0]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_queue_whose_adapter_is_not_ready_is_passed_over() {
        let mut q = queue(&[R(0, 10, 0), R(1, 10, 1), R(2, 10, 2)]);
        let got = q.admit(Room { rows: 3, kv: 30 }, |k| *k != 2);
        assert_eq!(got, [R(0, 10, 0), R(1, 10, 1)], "queue 2's adapter is not resident");
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_request_too_large_for_the_room_holds_back_younger_requests_until_it_fits() {
        // Queue 1's request (KV 50, submitted at 5 ms) does not fit the 30 left; queue 0's requests of 10 keep
        // coming. Passed over, it would wait for as long as they keep the batch full.
        let mut q = queue(&[R(0, 10, 0), R(0, 10, 10), R(0, 10, 20), R(1, 50, 5), R(2, 10, 30)]);
        let room = |kv| Room { rows: 8, kv };
        assert_eq!(q.admit(room(30), ALL), [R(0, 10, 0)], "only the request older than it joins");
        assert_eq!(q.admit(room(20), ALL), [], "the younger ones wait while the batch drains");
        assert_eq!(q.admit(room(60), ALL), [R(1, 50, 5), R(2, 10, 30)], "it joins once it fits");
        assert_eq!(q.admit(room(100), ALL), [R(0, 10, 10), R(0, 10, 20)]);
        // Only a ready request holds: one whose adapter is not resident cannot run, and holds back nothing.
        let mut q = queue(&[R(1, 50, 0), R(0, 10, 10)]);
        assert_eq!(q.admit(room(30), |k| *k == 0), [R(0, 10, 10)]);
    }

    #[test]
    fn requests_of_a_queue_that_is_not_ready_expire_at_their_deadline() {
        let mut q = queue(&[R(0, 1, 0), R(0, 1, 50), R(1, 1, 0)]);
        let ready = |k: &u8| *k == 1;
        let (expired, next) = q.expire(at(120), Duration::from_millis(100), ready);
        assert_eq!(expired, [R(0, 1, 0)], "queue 1 is ready: its requests only wait for room");
        assert_eq!(next, Some(at(150)));
        let (expired, next) = q.expire(at(150), Duration::from_millis(100), ready);
        assert_eq!((expired, next), (vec![R(0, 1, 50)], None));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn retain_take_and_push_front() {
        let mut q = queue(&[R(0, 1, 0), R(0, 2, 1), R(1, 3, 2)]);
        q.retain(|r| r.1 != 2);
        assert_eq!(q.fronts().cloned().collect::<Vec<_>>(), [R(0, 1, 0), R(1, 3, 2)]);
        q.push_front(R(1, 9, 9));
        assert_eq!(q.take(&1).into_iter().collect::<Vec<_>>(), [R(1, 9, 9), R(1, 3, 2)]);
        assert_eq!(q.drain().collect::<Vec<_>>(), [R(0, 1, 0)]);
    }
}
