//! The meter side: the TCP listener with its limits, one session task per connection, and the registry of which
//! session holds which meter. Everything else talks to a session through its [`SessionHandle`]: a bounded queue
//! of [`SessionRequest`]s that the session executes one at a time, so polls and commands never interleave on the
//! wire.

pub mod admission;
pub mod conn;
pub mod dlms;
pub mod dlt645;
pub mod listener;
pub mod registry;
pub mod session;

use ivy_protocol::registration::MeterId;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// Stable error codes of command responses (SPEC 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is not JSON.
    InvalidJson,
    /// No request id.
    MissingId,
    /// No method.
    MissingMethod,
    /// Unknown method.
    UnknownMethod,
    /// Bad or missing parameters.
    InvalidParams,
    /// No such register/group.
    UnknownRegister,
    /// The meter is not connected (or not identified yet).
    MeterNotConnected,
    /// The meter's protocol cannot do this.
    UnsupportedForProtocol,
    /// No answer in time.
    Timeout,
    /// The meter answered with an error.
    MeterError,
    /// The DLMS association was rejected.
    AssociationRejected,
    /// The connection ended before the answer.
    ConnectionClosed,
    /// The meter's queue is full.
    Busy,
    /// The gateway is shutting down.
    ShuttingDown,
}

impl ErrorCode {
    /// The snake_case code.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingId => "missing_id",
            ErrorCode::MissingMethod => "missing_method",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::UnknownRegister => "unknown_register",
            ErrorCode::MeterNotConnected => "meter_not_connected",
            ErrorCode::UnsupportedForProtocol => "unsupported_for_protocol",
            ErrorCode::Timeout => "timeout",
            ErrorCode::MeterError => "meter_error",
            ErrorCode::AssociationRejected => "association_rejected",
            ErrorCode::ConnectionClosed => "connection_closed",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting_down",
        }
    }
}

/// A failed operation: a stable code, a message, and optional details (decoded error bits, DLMS result names).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Details, e.g. `{"error_flags": ["password_wrong"]}`.
    pub details: Option<Value>,
}

impl OpError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError { code, message: message.into(), details: None }
    }

    /// With details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// Relay target state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Disconnect the load (trip).
    Open,
    /// Reconnect the load.
    Close,
}

/// How a close is done on DL/T 645.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// Close directly (`1C`).
    Direct,
    /// Allow the customer to close (`1B`).
    Allow,
}

/// What a session is asked to do for one of its meters.
#[derive(Debug, Clone, PartialEq)]
pub enum MeterOp {
    /// One poll cycle of the meter's configured registers.
    Poll,
    /// Read registers (`read_register`, `read_all`, `read_group`), already resolved for the meter's protocol.
    Read {
        /// What to read.
        targets: Vec<crate::registers::Target>,
        /// Report a single reading (read_register) rather than a map.
        single: bool,
    },
    /// Open or close the relay.
    Relay {
        /// Target.
        state: RelayState,
        /// DL/T 645 close mode.
        mode: RelayMode,
    },
    /// Read the relay state.
    ReadRelayState,
    /// Read the meter address / serial.
    ReadAddress,
    /// Set the meter clock (ms since epoch, UTC).
    SyncTime(i64),
    /// Read any DLMS attribute.
    ReadObis {
        /// OBIS text.
        obis: String,
        /// Class.
        class_id: u16,
        /// Attribute.
        attribute: u8,
    },
}

/// A request queued to a session.
#[derive(Debug)]
pub struct SessionRequest {
    /// The meter (one connection may hold several DL/T 645 meters).
    pub meter_id: MeterId,
    /// What to do.
    pub op: MeterOp,
    /// When the caller stops waiting; the session fails the request with `timeout` if it is still queued then.
    pub deadline: Instant,
    /// Where the result goes (a JSON result object).
    pub reply: oneshot::Sender<Result<Value, OpError>>,
}

/// Why a request could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The session's queue is full.
    #[error("the meter's request queue is full")]
    Busy,
    /// The session has ended.
    #[error("the meter's connection has closed")]
    Closed,
}

/// A request as it waits in a session's queue. Boxed because tokio's channel allocates its first block of 32 slots
/// up front: with 80-byte requests that was 2.5 KiB for every connected meter, most of which never get a command.
pub type QueuedRequest = Box<SessionRequest>;

/// A handle on one connection's session task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    conn_id: u64,
    tx: mpsc::Sender<QueuedRequest>,
    close: CancellationToken,
    replaced: Arc<AtomicBool>,
}

impl SessionHandle {
    /// A handle and the session's receiving end of the request queue (`depth` requests).
    pub fn new(conn_id: u64, depth: usize) -> (Self, mpsc::Receiver<QueuedRequest>, CancellationToken) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        let close = CancellationToken::new();
        (SessionHandle { conn_id, tx, close: close.clone(), replaced: Arc::new(AtomicBool::new(false)) }, rx, close)
    }

    /// The connection id.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// Queues a request without waiting.
    pub fn submit(&self, request: SessionRequest) -> Result<(), (SubmitError, SessionRequest)> {
        self.tx.try_send(Box::new(request)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(r) => (SubmitError::Busy, *r),
            mpsc::error::TrySendError::Closed(r) => (SubmitError::Closed, *r),
        })
    }

    /// Asks the session to close because its meter reconnected elsewhere.
    pub fn close_replaced(&self) {
        self.replaced.store(true, Ordering::Relaxed);
        self.close.cancel();
    }

    /// Asks the session to close (shutdown).
    pub fn close(&self) {
        self.close.cancel();
    }

    /// Whether the close was a replacement.
    pub fn was_replaced(&self) -> bool {
        self.replaced.load(Ordering::Relaxed)
    }

    /// True once the session ended or was told to close.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.close.is_cancelled()
    }
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
