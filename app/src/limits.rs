//! Per-client fairness: how many generation requests a minute one client address may make, and how many
//! generations one address (or one visitor session) may have running at once, for the API and the web app alike.
//! The rate is a token bucket per address (governor); the running counts are permits dropped with the generation.
//! A breach names the limit and when to retry (429 with `Retry-After` on the API). Server-side only.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default generation requests a minute per client address (10 a second).
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 600;
/// Default generations running at once per client address: one client can fill a batch (the engine's default
/// `max_batch_size`), not the whole queue.
pub const DEFAULT_CONCURRENT_PER_CLIENT: usize = 32;
/// Default generations (panes) running at once per visitor session.
pub const DEFAULT_CONCURRENT_PER_SESSION: usize = 8;

/// New sessions one client address may create per minute (a burst of as many, then one every few seconds).
pub const SESSIONS_PER_MINUTE: u32 = 20;

/// Rate of new sessions per client address.
#[derive(Clone)]
pub struct SessionLimiter(Arc<DefaultKeyedRateLimiter<std::net::IpAddr>>);

impl SessionLimiter {
    /// At most `per_minute` new sessions a minute per address.
    pub fn per_minute(per_minute: NonZeroU32) -> Self {
        Self(Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute))))
    }

    /// Takes one new session for `addr`; false when it is over its rate.
    pub fn allow(&self, addr: IpAddr) -> bool {
        self.0.check_key(&addr).is_ok()
    }
}

impl Default for SessionLimiter {
    fn default() -> Self {
        Self::per_minute(NonZeroU32::new(SESSIONS_PER_MINUTE).expect("not zero"))
    }
}

/// The limits' settings; 0 turns one off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    /// Generation requests a minute per client address.
    pub requests_per_minute: u32,
    /// Generations running at once per client address.
    pub concurrent_per_client: usize,
    /// Generations running at once per visitor session.
    pub concurrent_per_session: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
            concurrent_per_client: DEFAULT_CONCURRENT_PER_CLIENT,
            concurrent_per_session: DEFAULT_CONCURRENT_PER_SESSION,
        }
    }
}

/// A limit a client went over.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Too many requests this minute.
    #[error("rate limit: at most {per_minute} generation requests a minute per client address; retry in {} s", retry_after.as_secs().max(1))]
    Rate {
        /// The limit.
        per_minute: u32,
        /// When the next request will be allowed.
        retry_after: Duration,
    },
    /// Too many generations running for one address or session.
    #[error("concurrency limit: at most {max} generations at once per {who}; wait for one to finish")]
    Concurrent {
        /// The limit.
        max: usize,
        /// `client address` or `visitor session`.
        who: &'static str,
    },
}

impl LimitError {
    /// Seconds a client should wait before retrying.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Self::Rate { retry_after, .. } => retry_after.as_secs().max(1),
            Self::Concurrent { .. } => 1,
        }
    }
}

/// The limits, shared by every request of the process.
#[derive(Clone)]
pub struct ClientLimits {
    settings: LimitSettings,
    rate: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self::new(LimitSettings::default())
    }
}

/// A running generation's place in its client's counts; given back when dropped.
#[derive(Debug)]
pub struct ClientPermit {
    running: Arc<Mutex<HashMap<String, usize>>>,
    keys: Vec<String>,
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut running = self.running.lock().expect("not poisoned");
        for key in &self.keys {
            if let Some(n) = running.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    running.remove(key);
                }
            }
        }
    }
}

impl ClientLimits {
    /// Limits with these settings.
    pub fn new(settings: LimitSettings) -> Self {
        let rate =
            NonZeroU32::new(settings.requests_per_minute).map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n))));
        Self { settings, rate, running: Arc::default() }
    }

    /// The settings.
    pub fn settings(&self) -> LimitSettings {
        self.settings
    }

    /// Counts one generation request of `addr` against its rate.
    pub fn request(&self, addr: IpAddr) -> Result<(), LimitError> {
        let Some(rate) = &self.rate else { return Ok(()) };
        rate.check_key(&addr).map_err(|not_until| LimitError::Rate {
            per_minute: self.settings.requests_per_minute,
            retry_after: not_until
                .wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default())),
        })
    }

    /// A place for one more running generation of `addr` (and of `session`, for the web app), or the limit it
    /// would go over.
    pub fn start(&self, addr: IpAddr, session: Option<&str>) -> Result<ClientPermit, LimitError> {
        let mut running = self.running.lock().expect("not poisoned");
        let mut keys = Vec::new();
        let mut check = |key: String, max: usize, who: &'static str| {
            if max > 0 && running.get(&key).copied().unwrap_or(0) >= max {
                return Err(LimitError::Concurrent { max, who });
            }
            keys.push(key);
            Ok(())
        };
        check(format!("addr:{addr}"), self.settings.concurrent_per_client, "client address")?;
        if let Some(session) = session {
            check(format!("session:{session}"), self.settings.concurrent_per_session, "visitor session")?;
        }
        for key in &keys {
            *running.entry(key.clone()).or_default() += 1;
        }
        Ok(ClientPermit { running: self.running.clone(), keys })
    }

    /// Generations running for `addr` now.
    pub fn running(&self, addr: IpAddr) -> usize {
        self.running.lock().expect("not poisoned").get(&format!("addr:{addr}")).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sessions_are_rate_limited_per_address() {
        let limiter = SessionLimiter::per_minute(NonZeroU32::new(3).unwrap());
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        assert_eq!((0..5).map(|_| limiter.allow(a)).collect::<Vec<_>>(), [true, true, true, false, false]);
        assert!(limiter.allow(b), "another address has its own quota");
    }

    #[test]
    fn running_generations_are_capped_per_address_and_session_and_given_back() {
        let limits = ClientLimits::new(LimitSettings {
            requests_per_minute: 0,
            concurrent_per_client: 3,
            concurrent_per_session: 2,
        });
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let one = limits.start(a, Some("s1")).unwrap();
        let two = limits.start(a, Some("s1")).unwrap();
        let err = limits.start(a, Some("s1")).unwrap_err();
        assert_eq!(err, LimitError::Concurrent { max: 2, who: "visitor session" });
        assert!(err.to_string().contains("at most 2 generations at once per visitor session"));
        let three = limits.start(a, None).unwrap();
        assert_eq!(limits.start(a, None).unwrap_err(), LimitError::Concurrent { max: 3, who: "client address" });
        assert!(limits.start(b, Some("s2")).is_ok(), "another address and session have their own counts");
        drop((one, two, three));
        assert_eq!(limits.running(a), 0);
        assert!(limits.start(a, Some("s1")).is_ok());
    }

    #[test]
    fn the_rate_names_its_limit_and_when_to_retry() {
        let limits = ClientLimits::new(LimitSettings { requests_per_minute: 2, ..LimitSettings::default() });
        let a = IpAddr::from([10, 0, 0, 1]);
        assert!(limits.request(a).is_ok() && limits.request(a).is_ok());
        let err = limits.request(a).unwrap_err();
        assert!(err.to_string().starts_with("rate limit: at most 2 generation requests a minute"), "{err}");
        assert!((1..=30).contains(&err.retry_after_secs()), "{}", err.retry_after_secs());
        assert!(limits.request(IpAddr::from([10, 0, 0, 2])).is_ok());
    }
}
