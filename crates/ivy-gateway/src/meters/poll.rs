//! Poll scheduling: when a meter's first and next poll cycles are due.

use tokio::time::Instant;

/// When a meter identified now is first polled: after `first_poll_delay_ms` plus random jitter, or with
/// `polling.align` at the first multiple of the interval on the wall clock at least `first_poll_delay_ms` away.
pub(crate) fn first_poll_at(polling: &crate::config::PollingConfig, interval_ms: u64) -> Instant {
    let now = Instant::now();
    if polling.align {
        return now + until_boundary(interval_ms, polling.first_poll_delay_ms);
    }
    let jitter_max = interval_ms * u64::from(polling.jitter_percent) / 100;
    now + std::time::Duration::from_millis(polling.first_poll_delay_ms + rand::random_range(0..=jitter_max))
}

/// When the cycle after one that started at `started` is due (never in the past: an overrun cycle is not caught up).
pub(crate) fn next_poll_at(polling: &crate::config::PollingConfig, interval_ms: u64, started: Instant) -> Instant {
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
