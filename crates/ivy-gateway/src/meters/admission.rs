//! Who may open and keep a meter connection (SPEC 2.5, docs/SECURITY-identity.md): a global cap and a per-IP
//! concurrent cap at accept, and a rate limit that punishes what is abusive rather than the address.
//!
//! 4G meters often share one public address (carrier NAT), so an address is not a peer: refusing an address
//! because of one misbehaving peer also refuses the honest meters behind it. Connections are therefore never refused
//! for their rate. Instead every connection that ends without identifying a meter (silence, garbage, a failed
//! handshake, a refused identification) is a strike against its address; past `max_attempts` strikes in the window
//! the address is penalised for `block`: it may hold only `max_unidentified_penalised` unidentified connections at
//! once, and a newer connection closes the oldest unidentified one. A meter identifies in its first packet and is
//! then out of reach; an abuser's idle connections are what gets closed. New meter ids per address are rate limited
//! too (id spraying). Pure bookkeeping with the time passed in, so it is tested without sleeping.

use super::SessionHandle;
use crate::metrics::RejectReason;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections overall.
    pub max_connections: usize,
    /// Concurrent connections per IP.
    pub max_per_ip: usize,
    /// Whether abusive connections are rate limited.
    pub rate_limiting: bool,
    /// Connections per IP per window that may end without identifying before the IP is penalised.
    pub max_attempts: u32,
    /// The window.
    pub window: Duration,
    /// How long an IP stays penalised.
    pub block: Duration,
    /// Unidentified connections a penalised IP may hold at once.
    pub max_unidentified_penalised: usize,
    /// New meter ids per IP per minute (0 = unlimited).
    pub max_new_ids_per_minute: u32,
}

#[derive(Debug, Default)]
struct IpState {
    active: usize,
    window_start: Option<Instant>,
    strikes: u32,
    penalised_until: Option<Instant>,
    last_logged: Option<Instant>,
    /// Unidentified connections, oldest first.
    unidentified: VecDeque<SessionHandle>,
    ids_window_start: Option<Instant>,
    new_ids: u32,
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
/// The window of the new-id rate.
const ID_WINDOW: Duration = Duration::from_secs(60);

impl Admission {
    /// New bookkeeping under `limits`.
    pub fn new(limits: Limits) -> Self {
        Admission { limits, active: 0, per_ip: HashMap::new() }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Decides on a new connection from `ip`; on success the caller must [`release`](Self::release) it when it
    /// closes. Only the concurrent caps refuse: the rate limit acts on unidentified connections
    /// ([`track_unidentified`](Self::track_unidentified)).
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), RejectReason> {
        if self.active >= self.limits.max_connections {
            return Err(RejectReason::MaxConnections);
        }
        let state = self.per_ip.entry(ip).or_default();
        if state.active >= self.limits.max_per_ip {
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

    /// Whether `ip` is penalised at `now`.
    pub fn is_penalised(&self, ip: IpAddr, now: Instant) -> bool {
        self.per_ip.get(&ip).and_then(|s| s.penalised_until).is_some_and(|t| now < t)
    }

    /// A new connection from `ip` is unidentified until [`identified`](Self::identified). If `ip` is penalised
    /// and holds its quota of unidentified connections, returns the oldest one, which the caller closes.
    pub fn track_unidentified(&mut self, ip: IpAddr, handle: SessionHandle, now: Instant) -> Option<SessionHandle> {
        let limits = self.limits;
        let penalised = self.is_penalised(ip, now);
        let state = self.per_ip.entry(ip).or_default();
        state.unidentified.retain(|h| !h.is_closed());
        let evicted =
            (limits.rate_limiting && penalised && state.unidentified.len() >= limits.max_unidentified_penalised)
                .then(|| state.unidentified.pop_front())
                .flatten();
        state.unidentified.push_back(handle);
        evicted
    }

    /// Connection `conn_id` from `ip` identified a meter: it is out of reach of the rate limit.
    pub fn identified(&mut self, ip: IpAddr, conn_id: u64) {
        if let Some(state) = self.per_ip.get_mut(&ip) {
            state.unidentified.retain(|h| h.conn_id() != conn_id);
        }
    }

    /// Connection `conn_id` from `ip` ended at `now`; one that never identified a meter is a strike, and too many
    /// strikes in the window penalise the IP. Returns true when this strike penalised it.
    pub fn ended(&mut self, ip: IpAddr, conn_id: u64, identified: bool, now: Instant) -> bool {
        let limits = self.limits;
        let Some(state) = self.per_ip.get_mut(&ip) else { return false };
        state.unidentified.retain(|h| h.conn_id() != conn_id);
        if identified || !limits.rate_limiting {
            return false;
        }
        if state.window_start.is_none_or(|start| now.duration_since(start) >= limits.window) {
            state.window_start = Some(now);
            state.strikes = 0;
        }
        state.strikes = state.strikes.saturating_add(1);
        let was_penalised = state.penalised_until.is_some_and(|t| now < t);
        if state.strikes > limits.max_attempts {
            state.penalised_until = Some(now + limits.block);
            return !was_penalised;
        }
        false
    }

    /// Whether `ip` may register one more meter id that the registry does not hold (counts it if so).
    pub fn allow_new_id(&mut self, ip: IpAddr, now: Instant) -> bool {
        let max = self.limits.max_new_ids_per_minute;
        if max == 0 {
            return true;
        }
        let state = self.per_ip.entry(ip).or_default();
        if state.ids_window_start.is_none_or(|start| now.duration_since(start) >= ID_WINDOW) {
            state.ids_window_start = Some(now);
            state.new_ids = 0;
        }
        if state.new_ids >= max {
            return false;
        }
        state.new_ids += 1;
        true
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
            s.unidentified.retain(|h| !h.is_closed());
            s.active > 0
                || s.penalised_until.is_some_and(|t| t > now)
                || s.window_start.is_some_and(|t| now.duration_since(t) < window)
                || s.ids_window_start.is_some_and(|t| now.duration_since(t) < ID_WINDOW)
                || s.last_logged.is_some_and(|t| now.duration_since(t) < LOG_EVERY)
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
            max_attempts: 2,
            window: Duration::from_secs(60),
            block: Duration::from_secs(300),
            max_unidentified_penalised: 2,
            max_new_ids_per_minute: 3,
        }
    }

    /// Live sessions: a handle's session is alive while its queue's receiving end is kept.
    #[derive(Default)]
    struct Sessions(Vec<tokio::sync::mpsc::Receiver<crate::meters::QueuedRequest>>);

    impl Sessions {
        fn handle(&mut self, id: u64) -> SessionHandle {
            let (h, rx, _) = SessionHandle::new(id, 1);
            self.0.push(rx);
            h
        }
    }

    #[test]
    fn caps() {
        let mut a = Admission::new(limits());
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(a.admit(ip1), Ok(()));
        assert_eq!(a.admit(ip1), Ok(()));
        assert_eq!(a.admit(ip1), Err(RejectReason::PerIpLimit));
        assert_eq!(a.admit(ip2), Ok(()));
        assert_eq!(a.admit(ip2), Err(RejectReason::MaxConnections));
        a.release(ip1);
        assert_eq!(a.admit(ip2), Ok(()));
        assert_eq!(a.active(), 3);
    }

    #[test]
    fn strikes_penalise_unidentified_connections_only() {
        let mut a = Admission::new(limits());
        let mut live = Sessions::default();
        let t = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // Identified connections are never strikes, however many.
        for n in 0..100 {
            a.admit(ip).unwrap();
            assert!(a.track_unidentified(ip, live.handle(n), t).is_none());
            a.identified(ip, n);
            assert!(!a.ended(ip, n, true, t));
            a.release(ip);
        }
        assert!(!a.is_penalised(ip, t));
        // Three connections that never identify: the third strike penalises the address.
        assert!(!a.ended(ip, 200, false, t));
        assert!(!a.ended(ip, 201, false, t));
        assert!(a.ended(ip, 202, false, t));
        assert!(a.is_penalised(ip, t + Duration::from_secs(299)));
        assert!(!a.is_penalised(ip, t + Duration::from_secs(301)));
        // Penalised: two unidentified connections at once; a third closes the oldest, never the newest.
        let (h1, h2, h3) = (live.handle(1), live.handle(2), live.handle(3));
        assert!(a.track_unidentified(ip, h1, t).is_none());
        assert!(a.track_unidentified(ip, h2.clone(), t).is_none());
        assert_eq!(a.track_unidentified(ip, h3.clone(), t).map(|h| h.conn_id()), Some(1));
        // Once identified, a connection is out of reach.
        a.identified(ip, 2);
        assert!(a.track_unidentified(ip, live.handle(4), t).is_none());
        assert_eq!(a.track_unidentified(ip, live.handle(5), t).map(|h| h.conn_id()), Some(3));
        // The admission caps are unaffected by the penalty.
        assert_eq!(a.admit(ip), Ok(()));
    }

    #[test]
    fn new_ids_per_minute_and_sweep() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(a.allow_new_id(ip, t) && a.allow_new_id(ip, t) && a.allow_new_id(ip, t));
        assert!(!a.allow_new_id(ip, t + Duration::from_secs(59)));
        assert!(a.allow_new_id(ip, t + Duration::from_secs(61)));
        assert!(a.should_log(ip, t));
        assert!(!a.should_log(ip, t + Duration::from_secs(30)));
        a.sweep(t + Duration::from_secs(3600));
        assert_eq!(a.tracked_ips(), 0);
    }
}
