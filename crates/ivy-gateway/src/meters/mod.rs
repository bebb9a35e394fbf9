//! The meter side: the TCP listener with its limits, one session task per connection, and the registry of which
//! session holds which meter. Everything else talks to a session through its [`SessionHandle`]: a bounded queue
//! of [`SessionRequest`]s that the session executes one at a time, so polls and commands never interleave on the
//! wire.

pub mod admission;
pub mod conn;
pub mod context;
pub mod dlms;
pub mod dlt645;
pub mod listener;
pub mod poll;
pub mod registry;
pub mod session;

use crate::error::OpError;
use ivy_protocol::registration::MeterId;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
