//! Throttling of failed logins, shared by MQTT CONNECT and the HTTP API (login and Basic).
//!
//! Two limits, so guessing is slowed without handing an attacker a way to lock a real user out from elsewhere:
//! - per (user, source): the first `free_failures` failures cost nothing; after that each further failure doubles
//!   a wait (`delay` .. `max_delay`) during which that user from that source is refused without the password being
//!   checked. The same user from another address is not affected, and a success clears the pair.
//! - per source: at most `source_failures_per_minute` failures a minute for all user names together (slows
//!   spraying many names from one address). Carrier NAT puts many clients behind one address: the budget is
//!   generous and only failures count, never successful logins.
//!
//! IPv6 sources count per /64 (one subscriber's prefix). Tables are bounded; when full, stale entries are pruned
//! first, then the table is reset (an attacker with that many addresses can only reset counters).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Settings of [`LoginGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    /// Failures of one user from one source before waits start.
    pub free_failures: u32,
    /// The first wait; doubled at each further failure.
    pub delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// Failures a minute from one source, all users together (0 = no source budget).
    pub source_failures_per_minute: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            free_failures: 3,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            source_failures_per_minute: 30,
        }
    }
}

/// Entries kept at most per table.
const MAX_ENTRIES: usize = 100_000;
const SOURCE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct PairState {
    failures: u32,
    until: Instant,
}

#[derive(Debug, Default)]
struct Tables {
    pairs: HashMap<(String, IpAddr), PairState>,
    sources: HashMap<IpAddr, (Instant, u32)>,
}

/// The failed-login throttle.
#[derive(Debug, Default)]
pub struct LoginGuard {
    config: GuardConfig,
    tables: Mutex<Tables>,
}

/// The source key: IPv4 as is, IPv6 by /64, IPv4-mapped IPv6 as IPv4.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl LoginGuard {
    /// A guard with `config`.
    pub fn new(config: GuardConfig) -> Self {
        LoginGuard { config, tables: Mutex::new(Tables::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `user` from `ip` may try now; `Err(wait)` when not (the password must then not be checked).
    pub fn check(&self, user: &str, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = source_key(ip);
        let t = self.lock();
        if self.config.source_failures_per_minute > 0
            && let Some((start, n)) = t.sources.get(&ip)
            && now.duration_since(*start) < SOURCE_WINDOW
            && *n >= self.config.source_failures_per_minute
        {
            return Err(SOURCE_WINDOW.saturating_sub(now.duration_since(*start)));
        }
        match t.pairs.get(&(user.to_owned(), ip)) {
            Some(p) if p.until > now => Err(p.until - now),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt of `user` from `ip`.
    pub fn failed(&self, user: &str, ip: IpAddr, now: Instant) {
        let ip = source_key(ip);
        let mut t = self.lock();
        let t = &mut *t;
        if t.sources.len() >= MAX_ENTRIES && !t.sources.contains_key(&ip) {
            t.sources.retain(|_, (start, _)| now.duration_since(*start) < SOURCE_WINDOW);
            if t.sources.len() >= MAX_ENTRIES {
                t.sources.clear();
            }
        }
        let source = t.sources.entry(ip).or_insert((now, 0));
        if now.duration_since(source.0) >= SOURCE_WINDOW {
            *source = (now, 0);
        }
        source.1 = source.1.saturating_add(1);

        let key = (user.to_owned(), ip);
        if t.pairs.len() >= MAX_ENTRIES && !t.pairs.contains_key(&key) {
            // Pairs whose wait is over and that failed long ago carry no information worth keeping.
            t.pairs.retain(|_, p| p.until + self.config.max_delay > now);
            if t.pairs.len() >= MAX_ENTRIES {
                t.pairs.clear();
            }
        }
        let pair = t.pairs.entry(key).or_insert(PairState { failures: 0, until: now });
        pair.failures = pair.failures.saturating_add(1);
        if pair.failures > self.config.free_failures {
            let doublings = (pair.failures - self.config.free_failures - 1).min(20);
            let wait = self.config.delay.saturating_mul(1 << doublings).min(self.config.max_delay);
            pair.until = now + wait;
        }
    }

    /// Records a success: the pair's failures are forgotten (the source budget is not: a valid account of the
    /// attacker's own must not reset it).
    pub fn succeeded(&self, user: &str, ip: IpAddr) {
        self.lock().pairs.remove(&(user.to_owned(), source_key(ip)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn waits_grow_per_user_and_source_and_do_not_lock_out_other_sources() {
        let g = LoginGuard::new(GuardConfig { source_failures_per_minute: 0, ..Default::default() });
        let t0 = Instant::now();
        let (attacker, user) = (ip("203.0.113.9"), ip("198.51.100.7"));
        for _ in 0..3 {
            assert!(g.check("admin", attacker, t0).is_ok());
            g.failed("admin", attacker, t0);
        }
        assert!(g.check("admin", attacker, t0).is_ok(), "three failures are free");
        g.failed("admin", attacker, t0);
        assert_eq!(g.check("admin", attacker, t0), Err(Duration::from_secs(1)));
        g.failed("admin", attacker, t0 + Duration::from_secs(1));
        assert_eq!(g.check("admin", attacker, t0 + Duration::from_secs(1)), Err(Duration::from_secs(2)));
        for _ in 0..30 {
            g.failed("admin", attacker, t0);
        }
        assert_eq!(g.check("admin", attacker, t0), Err(Duration::from_secs(60)), "capped");
        assert!(g.check("admin", user, t0).is_ok(), "the real user elsewhere is not locked out");
        assert!(g.check("operator", attacker, t0).is_ok(), "another user from the source has its own pair");
        g.succeeded("admin", attacker);
        assert!(g.check("admin", attacker, t0).is_ok());
    }

    #[test]
    fn one_source_spraying_names_hits_its_budget() {
        let g = LoginGuard::new(GuardConfig { source_failures_per_minute: 5, ..Default::default() });
        let t0 = Instant::now();
        let a = ip("2001:db8:1:2:aaaa::1");
        for n in 0..5 {
            assert!(g.check(&format!("u{n}"), a, t0).is_ok());
            g.failed(&format!("u{n}"), a, t0);
        }
        let same_prefix = ip("2001:db8:1:2:bbbb::9");
        assert_eq!(g.check("new-name", same_prefix, t0 + Duration::from_secs(10)), Err(Duration::from_secs(50)));
        assert!(g.check("new-name", ip("2001:db8:1:3::1"), t0).is_ok(), "another /64");
        assert!(g.check("new-name", a, t0 + SOURCE_WINDOW).is_ok(), "a new window");
    }
}
