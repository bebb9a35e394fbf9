//! Service-manager notifications (`sd_notify(3)`) for `Type=notify` units: `READY=1` once every listener is bound,
//! `WATCHDOG=1` at half the interval systemd asks for (`WatchdogSec=` → `WATCHDOG_USEC`), `STOPPING=1` when a
//! graceful stop begins. Without `NOTIFY_SOCKET` in the environment (not started by systemd) nothing is sent.
//!
//! The keep-alives come from a task on the gateway's async runtime, so a runtime that stops scheduling tasks stops
//! them and systemd restarts the service. A failed send is logged, never fatal: the gateway serves meters either way.

use sd_notify::NotifyState;
use std::time::Duration;

/// The service's notification state; [`Service::stopping`] ends the watchdog keep-alives.
#[derive(Debug)]
pub struct Service {
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

/// Tells the service manager the gateway is ready (`READY=1` and `STATUS=status`) and starts the watchdog
/// keep-alives when a watchdog is configured for this process. Call it inside the tokio runtime, after every
/// listener is bound.
pub fn ready(status: &str) -> Service {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
    let watchdog = sd_notify::watchdog_enabled().map(|timeout| {
        let period = keepalive_period(timeout);
        tracing::debug!(?timeout, ?period, "systemd watchdog enabled");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                send(&[NotifyState::Watchdog]);
            }
        })
    });
    Service { watchdog }
}

impl Service {
    /// Tells the service manager a graceful stop has begun (`STOPPING=1`) and stops the keep-alives: the stop is
    /// bounded by `gateway.shutdown_timeout_secs` and systemd's own stop timeout.
    pub fn stopping(mut self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        if let Some(task) = self.watchdog.take() {
            task.abort();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(task) = self.watchdog.take() {
            task.abort();
        }
    }
}

/// Half the watchdog timeout (what `sd_watchdog_enabled(3)` recommends), at least 10 ms.
pub fn keepalive_period(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(10))
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_at_half_the_timeout() {
        assert_eq!(keepalive_period(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(keepalive_period(Duration::from_micros(1)), Duration::from_millis(10));
    }
}
