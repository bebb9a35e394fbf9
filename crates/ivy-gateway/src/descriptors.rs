//! File descriptors: every listener has its own connection cap, and the caps together must fit in the process's
//! open-file limit, or one plane (say, idle HTTP connections) starves the others (new meters, MQTT clients).
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit ([`raise_nofile_limit`]); then [`fit_caps`]
//! lowers the configured caps when their sum does not fit, meters first served: they keep up to three quarters of
//! the budget, HTTP and MQTT share the rest.

use crate::config::Config;
use std::num::NonZeroUsize;

/// Descriptors kept for everything that is not a client connection: the data files, the runtime's epoll and
/// blocking pool, logs, listeners.
pub const RESERVED: u64 = 128;

/// Smallest cap a plane is lowered to.
const MIN_CAP: usize = 16;

/// The soft and hard open-file limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit before the raise.
    pub before: u64,
    /// The soft limit now (the one in force).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (an unprivileged process may); returns the limits.
///
/// Errors: the limit cannot be read or set.
#[cfg(unix)]
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let before = current.current.unwrap_or(u64::MAX);
    let hard = current.maximum.unwrap_or(u64::MAX);
    if before >= hard {
        return Ok(NofileLimit { before, soft: before, hard });
    }
    let raised = rustix::process::Rlimit { current: current.maximum, maximum: current.maximum };
    setrlimit(Resource::Nofile, raised).map_err(std::io::Error::from)?;
    Ok(NofileLimit { before, soft: hard, hard })
}

/// Not limited this way outside Unix.
#[cfg(not(unix))]
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    Ok(NofileLimit { before: u64::MAX, soft: u64::MAX, hard: u64::MAX })
}

/// Lowers `config`'s connection caps so that together they fit in `limit` open files with [`RESERVED`] left
/// over; returns one sentence per change (to log). Meters keep their cap when it fits in three quarters of the
/// budget; HTTP gets up to a quarter of the rest, each MQTT listener an equal share of what remains.
pub fn fit_caps(limit: u64, config: &mut Config) -> Vec<String> {
    let budget = usize::try_from(limit.saturating_sub(RESERVED)).unwrap_or(usize::MAX);
    let q = &config.mqtt;
    let mqtt_listeners = 1 + [q.ws_port, q.tls_port, q.wss_port].iter().filter(|p| **p != 0).count();
    let http = if config.http.enabled { config.http.max_connections.get() } else { 0 };
    let wanted = config
        .meters
        .max_connections
        .get()
        .saturating_add(q.max_connections.get().saturating_mul(mqtt_listeners))
        .saturating_add(http);
    if wanted <= budget {
        return Vec::new();
    }
    let mut changes = Vec::new();
    let meters = config.meters.max_connections.get().min((budget / 4 * 3).max(MIN_CAP));
    let rest = budget.saturating_sub(meters);
    let http_cap = config.http.max_connections.get().min((rest / 4).max(MIN_CAP));
    let mqtt_cap = q.max_connections.get().min((rest.saturating_sub(http_cap) / mqtt_listeners).max(MIN_CAP));
    let mut lower = |key: &str, from: &mut NonZeroUsize, to: usize| {
        // MIN_CAP keeps every cap above zero.
        let Some(to) = NonZeroUsize::new(to) else { return };
        if to < *from {
            changes.push(format!("{key} lowered from {} to {to} to fit the open-file limit of {limit}", *from));
            *from = to;
        }
    };
    lower("meters.max_connections", &mut config.meters.max_connections, meters);
    if config.http.enabled {
        lower("http.max_connections", &mut config.http.max_connections, http_cap);
    }
    lower("mqtt.max_connections (per listener)", &mut config.mqtt.max_connections, mqtt_cap);
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_are_kept() {
        let mut c = Config::default();
        assert!(fit_caps(1_000_000, &mut c).is_empty());
        assert_eq!(c, Config::default());
    }

    #[test]
    fn a_small_limit_is_shared_with_meters_first() {
        let mut c = Config::default();
        c.meters.max_connections = NonZeroUsize::new(500).unwrap();
        let changes = fit_caps(1024, &mut c);
        assert_eq!(c.meters.max_connections.get(), 500, "meters fit in three quarters of 896: kept");
        assert_eq!(c.http.max_connections.get(), 99, "a quarter of the 396 left");
        assert_eq!(c.mqtt.max_connections.get(), 148, "the rest, shared by the TCP and WebSocket listeners");
        let total = c.meters.max_connections.get() + c.http.max_connections.get() + 2 * c.mqtt.max_connections.get();
        assert!(total as u64 <= 1024 - RESERVED, "{total}");
        assert_eq!(changes.len(), 2, "{changes:?}");

        let mut d = Config::default();
        fit_caps(1024, &mut d);
        assert_eq!(d.meters.max_connections.get(), 672, "10,000 meters do not fit: three quarters of the budget");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let l = raise_nofile_limit().unwrap();
        assert_eq!(l.soft, l.hard);
        assert!(l.soft >= l.before);
    }
}
