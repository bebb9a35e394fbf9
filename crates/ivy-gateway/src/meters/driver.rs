//! The skeleton both protocol drivers share: the two-layer failure of an operation, the request lifecycle (deadline
//! check, meter check, dispatch, reply), and readings publication. A driver implements [`Driver`]: one method per
//! meter operation, each returning a typed answer; what the answer looks like as JSON is decided in `commands`.

use super::conn::{Conn, EndReason};
use super::{MeterOp, OpResult, RelayConfirmation, RelayDetail, RelayMode, RelayState, SessionRequest, TimeSet};
use crate::error::{ErrorCode, OpError};
use crate::hub::HubEvent;
use crate::model::{Reading, Source};
use crate::registers::Target;
use ivy_protocol::dlms::{AttributeDescriptor, Data};
use ivy_protocol::registration::MeterId;
use std::time::Duration;
use tokio::time::Instant;

/// Why an operation did not produce its answer, in two layers (as in tokio-modbus): the operation failed but the
/// connection is fine (the meter refused, did not answer in time, answered something unusable), or the connection
/// itself ended and the session must end too.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The operation failed; the session goes on.
    Op(OpError),
    /// The connection ended.
    End(EndReason),
}

impl From<EndReason> for Failure {
    fn from(reason: EndReason) -> Self {
        Failure::End(reason)
    }
}

impl From<OpError> for Failure {
    fn from(error: OpError) -> Self {
        Failure::Op(error)
    }
}

/// What a register read produced: per register (key, reading or why not), in order, and what stopped the read
/// early, if anything. Readings read before a stop are still published.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    /// Per register: its key and its reading or error.
    pub results: Vec<(String, Result<Reading, OpError>)>,
    /// What ended the read before the last register.
    pub stopped: Option<Failure>,
}

impl Reads {
    /// A read that stopped before reading anything.
    pub(crate) fn stopped(failure: impl Into<Failure>) -> Self {
        Reads { results: Vec::new(), stopped: Some(failure.into()) }
    }
}

/// A protocol driver: what one meter connection can be asked to do. Each method runs one operation to its end
/// (bounded by `deadline`) on a meter this connection serves.
pub(crate) trait Driver {
    /// The connection.
    fn conn(&self) -> &Conn;
    /// The protocol (the `source` of its readings).
    const SOURCE: Source;
    /// Whether `meter` is served by this connection (identified here and not replaced).
    fn serves(&self, meter: &MeterId) -> bool;
    /// Reads registers.
    async fn read(&mut self, meter: &MeterId, targets: Vec<Target>, deadline: Instant) -> Reads;
    /// Opens or closes the relay.
    async fn switch_relay(
        &mut self,
        meter: &MeterId,
        state: RelayState,
        mode: RelayMode,
        deadline: Instant,
    ) -> Result<RelayConfirmation, Failure>;
    /// Reads the relay state.
    async fn read_relay_state(&mut self, meter: &MeterId, deadline: Instant) -> Result<RelayDetail, Failure>;
    /// Reads the meter's address or serial number.
    async fn read_address(&mut self, meter: &MeterId, deadline: Instant) -> Result<String, Failure>;
    /// Sets the meter's clock to `unix_ms` (UTC).
    async fn sync_time(&mut self, meter: &MeterId, unix_ms: i64, deadline: Instant) -> Result<TimeSet, Failure>;
    /// Reads any attribute (DLMS only).
    async fn read_attribute(
        &mut self,
        meter: &MeterId,
        attribute: AttributeDescriptor,
        deadline: Instant,
    ) -> Result<Data, Failure>;
    /// Shows that `meter` is still on this connection (an identity contest, see `Conn::identify`): any answer from
    /// the meter, even a refusal, is `Ok`; only silence until `deadline` is a timeout.
    async fn probe(&mut self, meter: &MeterId, deadline: Instant) -> Result<(), Failure>;

    /// Called after every request that left the connection up (DLMS releases its association here).
    async fn settle(&mut self) -> Result<(), EndReason> {
        Ok(())
    }
}

/// Runs one queued request: fails it when its deadline passed while queued or when its meter is not served here,
/// else dispatches it, publishes the readings it produced, settles the driver and replies. Returns an error only
/// when the connection ended.
pub(crate) async fn execute<D: Driver>(driver: &mut D, request: SessionRequest) -> Result<(), EndReason> {
    let SessionRequest { meter_id, op, deadline, reply } = request;
    if Instant::now() >= deadline {
        let _ = reply
            .send(Err(OpError::new(ErrorCode::Timeout, "the command waited in the meter's queue past its deadline")));
        return Ok(());
    }
    if !driver.serves(&meter_id) {
        let _ = reply.send(Err(OpError::new(ErrorCode::MeterNotConnected, "meter is not on this connection")));
        return Ok(());
    }
    let result = match op {
        MeterOp::Read { targets, single } => {
            let Reads { results, stopped } = driver.read(&meter_id, targets, deadline).await;
            let readings: Vec<Reading> = results.iter().filter_map(|(_, r)| r.as_ref().ok().cloned()).collect();
            publish(driver.conn(), &meter_id, D::SOURCE, readings);
            match (stopped, single) {
                (Some(failure), _) => Err(failure),
                (None, true) => match results.into_iter().next() {
                    Some((_, Ok(reading))) => Ok(OpResult::Reading(reading)),
                    Some((_, Err(e))) => Err(Failure::Op(e)),
                    None => Err(Failure::Op(OpError::new(ErrorCode::InvalidParams, "nothing to read"))),
                },
                (None, false) => Ok(OpResult::Readings(results)),
            }
        }
        MeterOp::Relay { state, mode } => driver
            .switch_relay(&meter_id, state, mode, deadline)
            .await
            .map(|confirmation| OpResult::RelaySwitched { state, confirmation }),
        MeterOp::ReadRelayState => driver.read_relay_state(&meter_id, deadline).await.map(OpResult::RelayStatus),
        MeterOp::ReadAddress => driver.read_address(&meter_id, deadline).await.map(OpResult::Address),
        MeterOp::SyncTime(ms) => driver.sync_time(&meter_id, ms, deadline).await.map(OpResult::TimeSet),
        MeterOp::ReadAttribute(attribute) => driver
            .read_attribute(&meter_id, attribute, deadline)
            .await
            .map(|data| OpResult::Attribute { obis: attribute.obis, data }),
        MeterOp::Probe => driver.probe(&meter_id, deadline).await.map(|()| OpResult::Alive),
    };
    let settled = match &result {
        Err(Failure::End(_)) => Ok(()),
        _ => driver.settle().await,
    };
    match result {
        Ok(answer) => {
            let _ = reply.send(Ok(answer));
        }
        Err(Failure::Op(e)) => {
            let _ = reply.send(Err(e));
        }
        Err(Failure::End(reason)) => {
            let _ = reply.send(Err(connection_closed()));
            return Err(reason);
        }
    }
    settled
}

/// Publishes `readings` of `meter` (a snapshot of what one poll or command read); nothing when empty.
pub(crate) fn publish(conn: &Conn, meter: &MeterId, source: Source, readings: Vec<Reading>) {
    if readings.is_empty() {
        return;
    }
    conn.ctx.hub.publish(HubEvent::Readings { meter_id: meter.clone(), source, readings, snapshot: true });
}

/// At most one warning per period; counts what it held back. A meter that keeps sending malformed replies (or
/// stops answering) must not write a log line per frame or per poll: each driver keeps one per meter for what a
/// meter's data can trigger again and again, and logs at most once per [`WARN_EVERY`] with the number held back.
#[derive(Debug, Clone)]
pub(crate) struct WarnLimiter {
    period: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl WarnLimiter {
    /// One warning per `period`.
    pub(crate) fn new(period: Duration) -> Self {
        WarnLimiter { period, last: None, held_back: 0 }
    }

    /// `Some(warnings held back since the last one)` when a warning may be logged at `now`.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now < t + self.period => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// How often a meter's repeated trouble is logged at most.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(60);

/// The meter did not answer before the deadline.
pub(crate) fn timeout() -> OpError {
    OpError::new(ErrorCode::Timeout, "the meter did not answer in time")
}

/// The connection ended before the answer.
pub(crate) fn connection_closed() -> OpError {
    OpError::new(ErrorCode::ConnectionClosed, "the meter's connection closed")
}

/// The meter answered with something that does not answer the request.
pub(crate) fn unexpected(what: &str) -> Failure {
    Failure::Op(OpError::new(ErrorCode::MeterError, format!("unexpected reply{what}")))
}

/// The operation does not exist in this protocol.
pub(crate) fn unsupported(message: &str) -> Failure {
    Failure::Op(OpError::new(ErrorCode::UnsupportedForProtocol, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_once_per_period() {
        let t0 = Instant::now();
        let mut w = WarnLimiter::new(Duration::from_secs(60));
        assert_eq!(w.allow(t0), Some(0));
        assert_eq!(w.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(w.allow(t0 + Duration::from_secs(59)), None);
        assert_eq!(w.allow(t0 + Duration::from_secs(60)), Some(2));
    }
}
