//! The poll cycle both drivers share: each meter's timetable (first poll with jitter or aligned, next poll after
//! each cycle, overrides per meter), the gateway-wide bound on meters polled at once, and the end of a cycle
//! (publication of its readings, its typed outcome counted).

use super::conn::{Conn, EndReason};
use super::context::MeterContext;
use crate::config::PollingConfig;
use crate::metrics::PollOutcome;
use ivy_protocol::registration::MeterId;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// When a meter is polled next.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PollTimer {
    next: Option<Instant>,
    interval_ms: u64,
}

impl PollTimer {
    /// The timer of `meter`, identified now: polled when polling is on for it (global setting or its override)
    /// and `can_poll` (the driver has something to poll); first after the first-poll delay.
    pub(crate) fn start(ctx: &MeterContext, meter: &MeterId, can_poll: bool) -> Self {
        let polling = &ctx.config.polling;
        let (enabled, interval_ms) = ctx.resolver.get().poll_settings(meter, polling.enabled, polling.interval_ms);
        PollTimer { next: (enabled && can_poll).then(|| first_poll_at(polling, interval_ms)), interval_ms }
    }

    /// Re-reads the meter's poll settings before a cycle (poll groups and overrides may have been reloaded on
    /// SIGHUP): a new interval applies from the next cycle on; with polling now off for the meter, or nothing
    /// to poll (`can_poll` false), the timer stops and `false` is returned.
    pub(crate) fn refresh(&mut self, ctx: &MeterContext, meter: &MeterId, can_poll: bool) -> bool {
        let polling = &ctx.config.polling;
        let (enabled, interval_ms) = ctx.resolver.get().poll_settings(meter, polling.enabled, polling.interval_ms);
        self.interval_ms = interval_ms;
        if !(enabled && can_poll) {
            self.next = None;
        }
        self.next.is_some()
    }

    /// When the next cycle is due (`None`: not polled).
    pub(crate) fn due_at(&self) -> Option<Instant> {
        self.next
    }

    /// Whether a cycle is due at `now`.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.next.is_some_and(|t| t <= now)
    }

    /// No more polling (the meter was replaced by a newer connection).
    pub(crate) fn stop(&mut self) {
        self.next = None;
    }

    /// Schedules the cycle after one that started at `started`.
    pub(crate) fn schedule_next(&mut self, polling: &PollingConfig, started: Instant) {
        self.next = Some(next_poll_at(polling, self.interval_ms, started));
    }
}

/// Waits for one of the gateway's poll permits (`polling.max_concurrent`), or for the session to end.
pub(crate) async fn permit(conn: &Conn) -> Result<OwnedSemaphorePermit, EndReason> {
    let permits = conn.ctx.poll_permits.clone();
    tokio::select! {
        p = permits.acquire_owned() => p.map_err(|_| EndReason::Shutdown),
        reason = conn.closed() => Err(reason),
    }
}

/// Counts a poll cycle that started at `started` and ended with `outcome`.
pub(crate) fn count_cycle(conn: &Conn, outcome: PollOutcome, started: Instant) {
    conn.ctx.metrics.poll(outcome, started.elapsed().as_secs_f64());
}
/// When a meter identified now is first polled: after `first_poll_delay_ms` plus random jitter, or with
/// `polling.align` at the first multiple of the interval on the wall clock at least `first_poll_delay_ms` away.
fn first_poll_at(polling: &PollingConfig, interval_ms: u64) -> Instant {
    let now = Instant::now();
    if polling.align {
        return now + until_boundary(interval_ms, polling.first_poll_delay_ms);
    }
    let jitter_max = interval_ms * u64::from(polling.jitter_percent) / 100;
    now + std::time::Duration::from_millis(polling.first_poll_delay_ms + rand::random_range(0..=jitter_max))
}

/// When the cycle after one that started at `started` is due (never in the past: an overrun cycle is not caught up).
fn next_poll_at(polling: &PollingConfig, interval_ms: u64, started: Instant) -> Instant {
    let now = Instant::now();
    if polling.align {
        return now + until_boundary(interval_ms, 1);
    }
    now.max(started + std::time::Duration::from_millis(interval_ms))
}

/// Time from now to the next multiple of `interval_ms` since the Unix epoch that is at least `min_ms` away.
fn until_boundary(interval_ms: u64, min_ms: u64) -> std::time::Duration {
    let interval = interval_ms.max(1);
    let now_ms = crate::model::now_ms();
    let mut wait = interval - now_ms % interval;
    while wait < min_ms {
        wait += interval;
    }
    std::time::Duration::from_millis(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_waits_end_on_a_multiple_of_the_interval() {
        for (interval, min) in [(1000, 0), (5000, 1), (15 * 60_000, 20_000), (7, 100)] {
            let before = crate::model::now_ms();
            let wait = until_boundary(interval, min).as_millis() as u64;
            let after = crate::model::now_ms();
            assert!(wait >= min && wait <= min + interval, "{interval}/{min}: {wait}");
            // The boundary is computed from a clock reading between `before` and `after`.
            assert!((before..=after).any(|t| (t + wait).is_multiple_of(interval)), "{interval}: {wait}");
        }
    }
}
