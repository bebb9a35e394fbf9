//! Who may open a meter connection (SPEC 2.5): a global cap, a per-IP concurrent cap, and per-IP attempts per
//! window with a temporary block. Pure bookkeeping with the time passed in, so it is tested without sleeping.

use crate::metrics::RejectReason;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections overall.
    pub max_connections: usize,
    /// Concurrent connections per IP.
    pub max_per_ip: usize,
    /// Whether attempts are rate limited.
    pub rate_limiting: bool,
    /// Attempts allowed per IP per window.
    pub max_attempts: u32,
    /// The window.
    pub window: Duration,
    /// How long an IP stays blocked.
    pub block: Duration,
}

#[derive(Debug, Default)]
struct IpState {
    active: usize,
    window_start: Option<Instant>,
    attempts: u32,
    blocked_until: Option<Instant>,
    last_logged: Option<Instant>,
}

/// The bookkeeping.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    active: usize,
    per_ip: HashMap<IpAddr, IpState>,
}

/// How often a refused IP is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

impl Admission {
    /// New bookkeeping under `limits`.
    pub fn new(limits: Limits) -> Self {
        Admission { limits, active: 0, per_ip: HashMap::new() }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Decides on a new connection from `ip` at `now`; on success the caller must [`release`](Self::release) it
    /// when it closes.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), RejectReason> {
        let limits = self.limits;
        let state = self.per_ip.entry(ip).or_default();
        if let Some(until) = state.blocked_until {
            if now < until {
                return Err(RejectReason::Blocked);
            }
            state.blocked_until = None;
        }
        if limits.rate_limiting {
            let fresh_window = state.window_start.is_none_or(|start| now.duration_since(start) >= limits.window);
            if fresh_window {
                state.window_start = Some(now);
                state.attempts = 0;
            }
            state.attempts += 1;
            if state.attempts > limits.max_attempts {
                state.blocked_until = Some(now + limits.block);
                return Err(RejectReason::RateLimited);
            }
        }
        if self.active >= limits.max_connections {
            return Err(RejectReason::MaxConnections);
        }
        if state.active >= limits.max_per_ip {
            return Err(RejectReason::PerIpLimit);
        }
        state.active += 1;
        self.active += 1;
        Ok(())
    }

    /// A connection from `ip` closed.
    pub fn release(&mut self, ip: IpAddr) {
        self.active = self.active.saturating_sub(1);
        if let Some(state) = self.per_ip.get_mut(&ip) {
            state.active = state.active.saturating_sub(1);
        }
    }

    /// Whether a refusal for `ip` should be logged now (at most once per IP per minute).
    pub fn should_log(&mut self, ip: IpAddr, now: Instant) -> bool {
        let state = self.per_ip.entry(ip).or_default();
        if state.last_logged.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return false;
        }
        state.last_logged = Some(now);
        true
    }

    /// Forgets IPs with nothing to remember (call periodically so the map stays bounded by recent peers).
    pub fn sweep(&mut self, now: Instant) {
        let window = self.limits.window.max(LOG_EVERY);
        self.per_ip.retain(|_, s| {
            s.active > 0
                || s.blocked_until.is_some_and(|t| t > now)
                || s.window_start.is_some_and(|t| now.duration_since(t) < window)
        });
    }

    /// IPs tracked (for tests and stats).
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 3,
            max_per_ip: 2,
            rate_limiting: true,
            max_attempts: 4,
            window: Duration::from_secs(60),
            block: Duration::from_secs(300),
        }
    }

    #[test]
    fn caps_and_rate_limit() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(a.admit(ip1, t), Ok(()));
        assert_eq!(a.admit(ip1, t), Ok(()));
        assert_eq!(a.admit(ip1, t), Err(RejectReason::PerIpLimit));
        assert_eq!(a.admit(ip2, t), Ok(()));
        assert_eq!(a.admit(ip2, t), Err(RejectReason::MaxConnections));
        a.release(ip1);
        // Fifth attempt of ip1 in the window: blocked for 5 minutes.
        assert_eq!(a.admit(ip1, t), Ok(()));
        assert_eq!(a.admit(ip1, t), Err(RejectReason::RateLimited));
        a.release(ip1);
        a.release(ip1);
        assert_eq!(a.admit(ip1, t + Duration::from_secs(120)), Err(RejectReason::Blocked));
        assert_eq!(a.admit(ip1, t + Duration::from_secs(301)), Ok(()));
        assert_eq!(a.active(), 2);
    }

    #[test]
    fn logging_is_throttled_and_sweep_forgets() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(a.should_log(ip, t));
        assert!(!a.should_log(ip, t + Duration::from_secs(30)));
        assert!(a.should_log(ip, t + Duration::from_secs(61)));
        a.admit(ip, t).unwrap();
        a.release(ip);
        a.sweep(t + Duration::from_secs(3600));
        assert_eq!(a.tracked_ips(), 0);
    }
}
