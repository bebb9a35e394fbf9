//! Per-meter DLMS health bookkeeping, pure (time passed in): exponential back-off after association rejections,
//! so a meter that locks out after repeated failed logins is not hammered, and rate-limited warnings.

use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// A change of association state worth one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AssociationChange {
    /// The meter started rejecting associations (the diagnostic).
    Rejected(String),
    /// An association succeeded again after rejections.
    Restored {
        /// Rejections in a row before it.
        rejections: u32,
    },
}

/// Back-off after association rejections (AARE result 1 permanent, 2 transient): the next AARQ waits `initial`,
/// doubling after each further rejection up to `max`; an accepted association resets it.
#[derive(Debug, Clone)]
pub(crate) struct RejectionBackoff {
    initial: Duration,
    max: Duration,
    rejections: u32,
    diagnostic: Option<String>,
    since_ms: u64,
    retry_at: Option<Instant>,
}

impl RejectionBackoff {
    /// A meter in good standing.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        RejectionBackoff {
            initial,
            max: max.max(initial),
            rejections: 0,
            diagnostic: None,
            since_ms: 0,
            retry_at: None,
        }
    }

    /// Continues a rejection period recorded by an earlier connection of the same meter ([`Self::status`]), so a
    /// meter that reconnects is not sent an AARQ before its back-off allows one.
    pub(crate) fn resume(&mut self, status: &Value, now: Instant, now_ms: u64) {
        let Some(rejections) = status.get("rejections").and_then(Value::as_u64).filter(|n| *n > 0) else { return };
        self.rejections = u32::try_from(rejections).unwrap_or(u32::MAX);
        self.diagnostic = status.get("diagnostic").and_then(Value::as_str).map(str::to_owned);
        self.since_ms = status.get("since").and_then(Value::as_u64).unwrap_or(now_ms);
        let wait_ms = status.get("retryAt").and_then(Value::as_u64).map_or(0, |at| at.saturating_sub(now_ms));
        // Never longer than the cap, whatever was recorded.
        self.retry_at = Some(now + Duration::from_millis(wait_ms).min(self.max));
    }

    /// Whether an AARQ may be sent now.
    pub(crate) fn may_attempt(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// Time until the next AARQ is allowed (`None` when allowed now).
    pub(crate) fn retry_in(&self, now: Instant) -> Option<Duration> {
        self.retry_at.filter(|t| *t > now).map(|t| t - now)
    }

    /// The current wait (0 when not rejecting).
    fn delay(&self) -> Duration {
        match self.rejections {
            0 => Duration::ZERO,
            n => self.initial.saturating_mul(1u32 << (n - 1).min(20)).min(self.max),
        }
    }

    /// The meter rejected an association at `now` (`now_ms` wall clock, for the API); returns the event to publish
    /// when this starts a rejection period.
    pub(crate) fn on_rejected(&mut self, now: Instant, now_ms: u64, diagnostic: &str) -> Option<AssociationChange> {
        self.rejections = self.rejections.saturating_add(1);
        self.retry_at = Some(now + self.delay());
        if self.rejections == 1 {
            self.since_ms = now_ms;
            self.diagnostic = Some(diagnostic.to_owned());
            return Some(AssociationChange::Rejected(diagnostic.to_owned()));
        }
        self.diagnostic = Some(diagnostic.to_owned());
        None
    }

    /// An association was accepted; returns the event to publish when it ends a rejection period.
    pub(crate) fn on_associated(&mut self) -> Option<AssociationChange> {
        let rejections = std::mem::take(&mut self.rejections);
        self.retry_at = None;
        self.diagnostic = None;
        (rejections > 0).then_some(AssociationChange::Restored { rejections })
    }

    /// While rejecting: `{association: "rejected", diagnostic, rejections, since, retryAt}` (ms since epoch), for
    /// `/api/meters/{id}`; `None` when associations succeed.
    pub(crate) fn status(&self, now: Instant, now_ms: u64) -> Option<Value> {
        (self.rejections > 0).then(|| {
            let retry_in = self.retry_in(now).map_or(0, |d| d.as_millis() as u64);
            json!({
                "association": "rejected",
                "diagnostic": self.diagnostic,
                "rejections": self.rejections,
                "since": self.since_ms,
                "retryAt": now_ms + retry_in,
            })
        })
    }

    /// The diagnostic of the last rejection, while rejecting.
    pub(crate) fn diagnostic(&self) -> Option<&str> {
        self.diagnostic.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_reports_each_change_once() {
        let t0 = Instant::now();
        let mut b = RejectionBackoff::new(Duration::from_secs(60), Duration::from_secs(300));
        assert!(b.may_attempt(t0));
        assert_eq!(
            b.on_rejected(t0, 1, "authentication-failure"),
            Some(AssociationChange::Rejected("authentication-failure".into()))
        );
        assert!(!b.may_attempt(t0 + Duration::from_secs(59)));
        assert!(b.may_attempt(t0 + Duration::from_secs(60)));
        let mut t = t0;
        for _ in 0..5 {
            t += b.retry_in(t).unwrap();
            assert_eq!(b.on_rejected(t, 2, "authentication-failure"), None, "one event per change of state");
        }
        assert_eq!(b.delay(), Duration::from_secs(300));
        assert_eq!(b.status(t, 0).unwrap()["association"], "rejected");
        assert_eq!(b.status(t, 0).unwrap()["rejections"], 6);
        assert_eq!(b.on_associated(), Some(AssociationChange::Restored { rejections: 6 }));
        assert_eq!(b.on_associated(), None);
        assert!(b.may_attempt(t));
        assert_eq!(b.status(t, 0), None);
    }

    #[test]
    fn a_reconnected_meter_resumes_its_backoff() {
        let t0 = Instant::now();
        let mut a = RejectionBackoff::new(Duration::from_secs(60), Duration::from_secs(300));
        a.on_rejected(t0, 1_000, "authentication-failure");
        let status = a.status(t0, 1_000).unwrap();
        let mut b = RejectionBackoff::new(Duration::from_secs(60), Duration::from_secs(300));
        b.resume(&status, t0 + Duration::from_secs(10), 11_000);
        assert!(!b.may_attempt(t0 + Duration::from_secs(10)));
        assert!(b.may_attempt(t0 + Duration::from_secs(60)));
        // Already a rejection period: the next rejection is not a new event; success ends it with one.
        assert_eq!(b.on_rejected(t0 + Duration::from_secs(60), 61_000, "authentication-failure"), None);
        assert_eq!(b.on_associated(), Some(AssociationChange::Restored { rejections: 2 }));
        let mut c = RejectionBackoff::new(Duration::from_secs(60), Duration::from_secs(300));
        c.resume(&json!({"association": "ok"}), t0, 0);
        assert!(c.may_attempt(t0));
    }

    #[test]
    fn delays_in_order() {
        let mut b = RejectionBackoff::new(Duration::from_millis(400), Duration::from_millis(1600));
        let now = Instant::now();
        let delays: Vec<u128> = (0..5)
            .map(|_| {
                b.on_rejected(now, 0, "x");
                b.delay().as_millis()
            })
            .collect();
        assert_eq!(delays, [400, 800, 1600, 1600, 1600]);
    }
}
