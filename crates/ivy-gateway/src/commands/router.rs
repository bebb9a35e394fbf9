//! Routes validated commands to the session that holds the meter and shapes the answer. The same path serves MQTT
//! (`.../command/request` → `.../command/response`) and HTTP (`POST /api/meters/{id}/commands`).

use super::reply;
use super::request::{self, Command, CommandRequest, IdField, RegisterName, RegisterSelection, Rejected};
use crate::config::CommandsConfig;
use crate::error::{ErrorCode, OpError};
use crate::meters::registry::Registry;
use crate::meters::{MeterOp, OpResult, SessionRequest, SubmitError};
use crate::metrics::Metrics;
use crate::model::{Source, now_ms};
use crate::mqtt::topics::TopicPrefix;
use crate::mqtt::{InboundCommand, OutboundMessage, Publisher, Qos};
use crate::registers::{Resolver, Target};
use crate::reload::Current;
use ivy_protocol::dlms::AttributeDescriptor;
use ivy_protocol::registration::MeterId;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

/// The router. It holds only what routing needs: the registry (which session holds a meter), the catalogues
/// (to resolve register names), the counters and the command settings.
#[derive(Debug, Clone)]
pub(crate) struct CommandRouter {
    registry: Arc<Registry>,
    resolver: Arc<Current<Resolver>>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    limit: Arc<Semaphore>,
}

/// A command's outcome: the response payload, and the id to echo.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// The response payload (`{ts, id, success, result, ...}`).
    pub payload: Value,
    /// Whether the command succeeded.
    pub success: bool,
    /// The error code when it failed.
    pub code: Option<ErrorCode>,
}

impl CommandRouter {
    /// A router over `registry`, resolving names with `resolver`, bounded by `config`.
    pub(crate) fn new(
        registry: Arc<Registry>,
        resolver: Arc<Current<Resolver>>,
        metrics: Arc<Metrics>,
        config: &CommandsConfig,
    ) -> Self {
        let limit = Arc::new(Semaphore::new(config.max_concurrent.get()));
        CommandRouter { registry, resolver, metrics, timeout: Duration::from_millis(config.timeout_ms), limit }
    }

    /// Validates and executes one request payload for `meter_id`; `None` when nothing can be answered (an
    /// unparseable payload without a recoverable id).
    pub(crate) async fn execute(&self, meter_id: &MeterId, payload: &[u8]) -> Option<Answer> {
        let started = Instant::now();
        let req = match request::parse(payload) {
            Ok(r) => r,
            Err(Rejected { id, error }) => {
                self.metrics.invalid_commands.inc();
                self.metrics.command("invalid", error.code.as_str(), 0.0);
                tracing::info!(meter = %meter_id, code = error.code.as_str(), error = %error, "invalid command request");
                let (id, field) = match id {
                    Some((v, f)) => (Some(v), f),
                    None if error.code == ErrorCode::InvalidJson => return None,
                    None => (None, IdField::Id),
                };
                let payload = reply::failure(id.as_ref(), field, &error, now_ms());
                return Some(Answer { payload, success: false, code: Some(error.code) });
            }
        };
        let result = self.run(meter_id, &req).await;
        let seconds = started.elapsed().as_secs_f64();
        let method = req.command.method().as_str();
        Some(match result {
            Ok(value) => {
                self.metrics.command(method, "success", seconds);
                Answer {
                    payload: reply::success(&req.id_value, req.id_field, reply::result(&value), now_ms()),
                    success: true,
                    code: None,
                }
            }
            Err(e) => {
                self.metrics.command(method, e.code.as_str(), seconds);
                tracing::info!(meter = %meter_id, method, code = e.code.as_str(), error = %e, "command failed");
                Answer {
                    payload: reply::failure(Some(&req.id_value), req.id_field, &e, now_ms()),
                    success: false,
                    code: Some(e.code),
                }
            }
        })
    }

    async fn run(&self, meter_id: &MeterId, req: &CommandRequest) -> Result<OpResult, OpError> {
        let deadline = Instant::now() + self.timeout;
        let Some((handle, info)) = self.registry.get(meter_id) else {
            return Err(OpError::new(ErrorCode::MeterNotConnected, format!("meter {meter_id} is not connected")));
        };
        let op = self.op_for(&req.command, info.protocol)?;
        let _permit = tokio::time::timeout_at(deadline, self.limit.acquire())
            .await
            .map_err(|_| OpError::new(ErrorCode::Busy, "too many commands in progress"))?
            .map_err(|_| OpError::new(ErrorCode::ShuttingDown, "the gateway is shutting down"))?;
        let (tx, rx) = oneshot::channel();
        let request = SessionRequest { meter_id: meter_id.clone(), op, deadline, reply: tx };
        if let Err((e, _)) = handle.submit(request) {
            return Err(match e {
                SubmitError::Busy => OpError::new(ErrorCode::Busy, "the meter's command queue is full"),
                SubmitError::Closed => {
                    OpError::new(ErrorCode::MeterNotConnected, format!("meter {meter_id} is not connected"))
                }
            });
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(OpError::new(ErrorCode::ConnectionClosed, "the meter's connection closed")),
            // Never reported as success: the session may still be talking to the meter, but the caller's deadline
            // has passed.
            Err(_) => Err(OpError::new(ErrorCode::Timeout, "no answer before the command deadline")),
        }
    }

    /// The session operation for a request on a meter of `protocol`, with registers resolved.
    fn op_for(&self, command: &Command, protocol: Source) -> Result<MeterOp, OpError> {
        let resolver = self.resolver.get();
        let unsupported = |what: &str| {
            OpError::new(
                ErrorCode::UnsupportedForProtocol,
                format!("{what} is not available on a {} meter", protocol.as_str()),
            )
        };
        let resolve = |name: &RegisterName| -> Result<Target, OpError> {
            match (protocol, name) {
                (Source::Dlt645, RegisterName::Key(k)) => resolver.dlt_di(k).map(Target::Dlt645),
                (Source::Dlt645, RegisterName::DataId(di)) => Ok(Target::Dlt645(*di)),
                (Source::Dlt645, RegisterName::Obis { .. }) => Err(unsupported("reading an OBIS code")),
                (Source::Dlms, RegisterName::Key(k)) => resolver.dlms_target(k, None, None).map(Target::Dlms),
                (Source::Dlms, RegisterName::Obis { obis, class_id, attribute }) => {
                    resolver.dlms_target(obis, *class_id, *attribute).map(Target::Dlms)
                }
                (Source::Dlms, RegisterName::DataId(_)) => Err(unsupported("reading a DL/T 645 data identifier")),
            }
        };
        let read_many =
            |selection: &RegisterSelection| -> Result<MeterOp, OpError> {
                let RegisterSelection { registers, group } = selection;
                let mut targets: Vec<Target> = registers.iter().map(resolve).collect::<Result<_, _>>()?;
                if let Some(g) = group {
                    let unknown = || OpError::new(ErrorCode::UnknownRegister, format!("unknown register group '{g}'"));
                    match protocol {
                        Source::Dlt645 => targets
                            .extend(resolver.dlt_group(g).ok_or_else(unknown)?.iter().map(|di| Target::Dlt645(*di))),
                        Source::Dlms => targets
                            .extend(resolver.dlms_group(g).ok_or_else(unknown)?.iter().cloned().map(Target::Dlms)),
                    }
                }
                Ok(MeterOp::Read { targets, single: false })
            };
        Ok(match command {
            Command::ReadRegister(name) => MeterOp::Read { targets: vec![resolve(name)?], single: true },
            Command::ReadAll(selection) | Command::ReadGroup(selection) => read_many(selection)?,
            Command::RelayControl { state, mode } => MeterOp::Relay { state: *state, mode: *mode },
            Command::ReadRelayState => MeterOp::ReadRelayState,
            Command::ReadAddress => MeterOp::ReadAddress,
            Command::SyncTime(ms) => MeterOp::SyncTime(ms.unwrap_or(now_ms() as i64)),
            Command::ReadObis { obis, class_id, attribute } => {
                if protocol == Source::Dlt645 {
                    return Err(unsupported("read_obis"));
                }
                MeterOp::ReadAttribute(AttributeDescriptor::new(*class_id, *obis, *attribute))
            }
        })
    }

    /// Serves MQTT command requests until the inbound queue closes: each request runs in its own task (bounded by
    /// the router's limit) and its answer goes to `.../command/response`.
    pub(crate) async fn run_mqtt(
        self,
        prefix: TopicPrefix,
        publisher: Publisher,
        mut inbound: mpsc::Receiver<InboundCommand>,
    ) {
        while let Some(msg) = inbound.recv().await {
            let meter_id = match MeterId::new(&msg.meter) {
                Ok(id) => id,
                Err(e) => {
                    // No response topic can be built from an invalid id.
                    self.metrics.invalid_commands.inc();
                    tracing::info!(meter = %msg.meter, error = %e, "command for an invalid meter id");
                    continue;
                }
            };
            let router = self.clone();
            let prefix = prefix.clone();
            let publisher = publisher.clone();
            tokio::spawn(async move {
                if let Some(answer) = router.execute(&meter_id, &msg.payload).await {
                    let topic = prefix.command_response(&meter_id);
                    let _ =
                        publisher.publish(OutboundMessage::json(topic, &answer.payload, Qos::AtLeastOnce, false)).await;
                }
            });
        }
    }
}
