//! One task per meter connection: detect the protocol (and registration packets), then hand the connection to
//! the protocol's driver, and clean up when it ends.

use super::conn::{Conn, EndReason, ReadOutcome};
use crate::config::ZeroAddressAction;
use crate::gateway::Shared;
use crate::model::Source;
use ivy_protocol::detect::{Detection, Detector, Protocol};
use ivy_protocol::registration::{Registration, ZeroAddressPolicy};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Runs a whole meter connection.
pub async fn run(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let conn_id = shared.next_conn_id();
    let (mut conn, mut requests) = Conn::new(shared.clone(), conn_id, peer, stream);
    tracing::debug!(peer = %peer, conn = conn_id, "meter connection accepted");
    let reason = match detect(&mut conn).await {
        Ok((Protocol::Dlt645, leftover)) => {
            shared.metrics.frame("detect_dlt645");
            super::dlt645::run(&mut conn, &mut requests, leftover).await
        }
        Ok((protocol, leftover)) => {
            super::dlms::run(&mut conn, &mut requests, leftover, protocol == Protocol::DlmsRaw).await
        }
        Err(reason) => reason,
    };
    tracing::debug!(peer = %peer, conn = conn_id, reason = %reason.as_str(), "meter connection ended");
    conn.finish(reason, requests).await;
}

/// Applies a registration packet: validates the id (it becomes a topic segment), identifies the meter and sends
/// the rule's acknowledgement. An invalid id ends the connection; nothing is published under it.
pub async fn apply_registration(
    conn: &mut Conn,
    registration: &Registration,
    protocol: Source,
) -> Result<(), EndReason> {
    let policy = match conn.shared.config.meters.zero_address_action {
        ZeroAddressAction::Accept => ZeroAddressPolicy::Accept,
        ZeroAddressAction::UseIp => ZeroAddressPolicy::UseIp,
    };
    let ip = conn.peer.ip().to_string();
    let meter_id = match registration.meter_id(policy, Some((&ip, conn.peer.port()))) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(peer = %conn.peer, id = ?registration.raw_id, error = %e, "registration packet with an invalid meter id; closing");
            conn.shared.metrics.parse_error("invalid_meter_id");
            return Err(EndReason::Rejected(e.to_string()));
        }
    };
    conn.identify(&meter_id, protocol);
    if let Some(ack) = &registration.ack {
        conn.send(ack).await?;
    }
    Ok(())
}

/// Detects the protocol; returns it with the bytes buffered so far.
async fn detect(conn: &mut Conn) -> Result<(Protocol, Vec<u8>), EndReason> {
    let mut detector = Detector::new(conn.shared.rules.clone());
    let deadline = Instant::now() + Duration::from_secs(conn.shared.config.meters.detection_timeout_secs);
    let probe_every = Duration::from_secs(conn.shared.config.meters.identify_after_secs);
    let mut probe_at = Instant::now() + probe_every;
    let mut unknown_logged = false;
    loop {
        match detector.poll() {
            Detection::NeedMore => {}
            Detection::Protocol(p) => return Ok((p, detector.into_buffered())),
            Detection::Registration(registration) => {
                apply_registration(conn, &registration, Source::Dlms).await?;
                conn.shared.metrics.frame("registration");
                // A heartbeat that is a wrapper packet (the EM114070's) means the connection speaks wrapped DLMS.
                if registration.wrapper_packet {
                    return Ok((Protocol::DlmsWrapped, detector.into_buffered()));
                }
                continue;
            }
            Detection::Unknown => {
                if !unknown_logged {
                    unknown_logged = true;
                    conn.shared.metrics.connections_unknown_protocol.inc();
                    tracing::warn!(peer = %conn.peer, sample = %hex::encode(detector.sample()), "unknown protocol; the connection closes at the detection timeout");
                }
            }
        }
        tokio::select! {
            outcome = conn.read() => match outcome {
                ReadOutcome::Data(_) => {
                    if !unknown_logged {
                        detector.push(&conn.input);
                    }
                }
                ReadOutcome::End(reason) => return Err(reason),
            },
            // A connection that says nothing: DL/T 645 meters answer a read-address request to the wildcard address
            // (DLMS meters ignore it, and the EM114070 announces itself with its heartbeat anyway).
            _ = tokio::time::sleep_until(probe_at), if detector.skipped() == 0 && !unknown_logged => {
                probe_at = Instant::now() + probe_every;
                let frame = ivy_protocol::dlt645::Frame::read_address();
                conn.send(&frame.encode_with_preamble(conn.shared.config.dlt645.wakeup_preamble)).await?;
            }
            _ = tokio::time::sleep_until(deadline) => {
                if !unknown_logged {
                    conn.shared.metrics.connections_unknown_protocol.inc();
                    tracing::warn!(peer = %conn.peer, sample = %hex::encode(detector.sample()), "no protocol detected in time; closing");
                }
                return Err(EndReason::DetectionFailed);
            }
        }
    }
}
