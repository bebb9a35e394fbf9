//! The meter side: the TCP listener with its limits, one session task per connection, and the registry of which
//! session holds which meter. Everything else talks to a session through its [`SessionHandle`]: a bounded queue
//! of [`SessionRequest`]s that the session executes one at a time, so polls and commands never interleave on the
//! wire.

pub mod admission;
pub(crate) mod conn;
pub mod context;
pub(crate) mod dlms;
pub(crate) mod dlms_health;
pub(crate) mod dlms_values;
pub(crate) mod dlt645;
pub(crate) mod driver;
pub(crate) mod listener;
pub(crate) mod meter_time;
pub(crate) mod poll;
pub mod registry;
pub(crate) mod session;
pub(crate) mod transport;

use crate::error::OpError;
use crate::model::Reading;
use ivy_protocol::dlms::Obis;
use ivy_protocol::registration::MeterId;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
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

/// What a session is asked to do for one of its meters (a parsed command, registers already resolved).
#[derive(Debug, Clone, PartialEq)]
pub enum MeterOp {
    /// Read registers (`read_register`, `read_all`, `read_group`), resolved for the meter's protocol.
    Read {
        /// What to read.
        targets: Vec<crate::registers::Target>,
        /// Answer with the one reading (`read_register`) rather than a map.
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
    /// Show that the meter is still on this connection (an identity contest): DL/T 645 reads the communication
    /// address register at the meter's address, DLMS reads the logical device name. Any answer, even an error
    /// reply, shows the holder is alive.
    Probe,
    /// Read any DLMS attribute.
    ReadAttribute(ivy_protocol::dlms::AttributeDescriptor),
}

/// What a meter operation produced, typed; `commands::reply` renders it as the response's `result`.
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    /// `read_register`: the reading.
    Reading(Reading),
    /// `read_all` / `read_group`: per register key (catalogue key or generated name), its reading or why not.
    Readings(Vec<(String, Result<Reading, OpError>)>),
    /// The relay was switched.
    RelaySwitched {
        /// The state asked for.
        state: RelayState,
        /// What the meter confirmed.
        confirmation: RelayConfirmation,
    },
    /// The relay state was read.
    RelayStatus(RelayDetail),
    /// The meter's address (DL/T 645) or serial number (DLMS).
    Address(String),
    /// The clock was set.
    TimeSet(TimeSet),
    /// A DLMS attribute's value.
    Attribute {
        /// The object.
        obis: Obis,
        /// Its value.
        data: ivy_protocol::dlms::Data,
    },
    /// The meter answered an identity probe ([`MeterOp::Probe`]; never a command's result).
    Alive,
}

/// A clock setting that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeSet {
    /// The local time sent, ISO 8601 (none when it has no calendar form).
    pub time: Option<String>,
    /// Sent as a broadcast, which has no reply by design (DL/T 645).
    pub broadcast: bool,
}

/// How a relay switch was confirmed.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayConfirmation {
    /// DLMS: the disconnect control's output_state read back after the action (none when it could not be read).
    OutputState(Option<bool>),
    /// DL/T 645: the meter acknowledged this control command.
    Acknowledged(&'static str),
}

/// The protocol detail of a relay state read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayDetail {
    /// DLMS disconnect control: output_state and control_state (when it is an enum).
    Dlms {
        /// output_state.
        output_state: bool,
        /// control_state.
        control_state: Option<u8>,
    },
    /// DL/T 645 status word 3.
    Dlt645 {
        /// The word.
        status_word_3: u16,
    },
}

impl RelayDetail {
    /// Whether the load is disconnected.
    pub fn is_open(&self) -> bool {
        match self {
            RelayDetail::Dlms { output_state, .. } => !output_state,
            RelayDetail::Dlt645 { status_word_3 } => {
                status_word_3 & ivy_protocol::dlt645::registers::RELAY_OPEN_BIT != 0
            }
        }
    }
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
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<OpResult, OpError>>,
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

/// Why a session was told to close by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The gateway is stopping (or nobody said).
    Shutdown,
    /// Its meter reconnected on another connection.
    Replaced,
    /// It was still unidentified and its source IP, after misbehaving, opened a newer connection.
    Evicted,
}

/// A handle on one connection's session task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    conn_id: u64,
    tx: mpsc::Sender<QueuedRequest>,
    close: CancellationToken,
    cause: Arc<AtomicU8>,
    reads: Arc<AtomicU64>,
}

impl SessionHandle {
    /// A handle and the session's receiving end of the request queue (`depth` requests).
    pub fn new(conn_id: u64, depth: usize) -> (Self, mpsc::Receiver<QueuedRequest>, CancellationToken) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        let close = CancellationToken::new();
        let handle = SessionHandle {
            conn_id,
            tx,
            close: close.clone(),
            cause: Arc::new(AtomicU8::new(0)),
            reads: Arc::new(AtomicU64::new(0)),
        };
        (handle, rx, close)
    }

    /// Counts bytes arriving from the peer (the session calls it on every read); an identity probe looks at it.
    pub fn note_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads from the peer so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
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
        self.close_for(CloseCause::Replaced);
    }

    /// Asks the session to close for `cause`.
    pub fn close_for(&self, cause: CloseCause) {
        let code = match cause {
            CloseCause::Shutdown => 0,
            CloseCause::Replaced => 1,
            CloseCause::Evicted => 2,
        };
        self.cause.store(code, Ordering::Relaxed);
        self.close.cancel();
    }

    /// Asks the session to close (shutdown).
    pub fn close(&self) {
        self.close.cancel();
    }

    /// Why the session was told to close.
    pub fn close_cause(&self) -> CloseCause {
        match self.cause.load(Ordering::Relaxed) {
            1 => CloseCause::Replaced,
            2 => CloseCause::Evicted,
            _ => CloseCause::Shutdown,
        }
    }

    /// True once the session ended or was told to close.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.close.is_cancelled()
    }
}
