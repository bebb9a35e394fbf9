//! Per-IP request rate limit: a fixed one-minute window per address, answered with 429 and `Retry-After`.

use crate::lock::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most; beyond it, finished windows are pruned first, then the table is reset (a burst of
/// spoofed sources can only reset counters, not exhaust memory).
const MAX_ADDRESSES: usize = 100_000;

/// The limiter.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_window: u32,
    window: Duration,
    table: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimiter {
    /// `per_window` requests per `window` per address.
    pub(crate) fn new(per_window: u32, window: Duration) -> Self {
        RateLimiter { per_window: per_window.max(1), window, table: Mutex::new(HashMap::new()) }
    }

    /// Counts a request from `ip`; `Err(retry_after)` when over the limit.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut table = lock(&self.table);
        if table.len() >= MAX_ADDRESSES && !table.contains_key(&ip) {
            table.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if table.len() >= MAX_ADDRESSES {
                table.clear();
            }
        }
        let entry = table.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_window {
            return Err(self.window.saturating_sub(now.duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_resets_after_the_window() {
        let l = RateLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(l.check(a, t0).is_ok());
        assert!(l.check(a, t0).is_ok());
        let retry = l.check(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(retry, Duration::from_secs(50));
        assert!(l.check(b, t0).is_ok(), "another address has its own budget");
        assert!(l.check(a, t0 + Duration::from_secs(60)).is_ok(), "a new window");
    }
}
