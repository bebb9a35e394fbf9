//! One task per meter connection: detect the protocol (and registration packets), then hand the connection to
//! the protocol's driver, and clean up when it ends.

use super::conn::{Conn, EndReason, ReadOutcome, record_end};
use super::context::MeterContext;
use super::transport::{self, MeterStream, MeterTls};
use super::{CloseCause, SessionHandle};
use crate::lock::lock;
use crate::metrics::RejectReason;
use crate::model::Source;
use ivy_protocol::detect::{Detection, Detector, Protocol};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Runs a whole meter connection; `tls` on the TLS meter port (the handshake runs here, off the accept loop, and
/// counts as unidentified time like any other: a penalised source's stuck handshakes are evicted first).
pub(crate) async fn run(ctx: Arc<MeterContext>, tcp: TcpStream, peer: SocketAddr, tls: Option<MeterTls>) {
    let conn_id = ctx.next_conn_id();
    let (handle, mut requests, close) = SessionHandle::new(conn_id, ctx.config.commands.queue_depth.get());
    let evicted = lock(&ctx.admission).track_unidentified(peer.ip(), handle.clone(), std::time::Instant::now());
    if let Some(oldest) = evicted {
        ctx.metrics.rejected(RejectReason::RateLimited);
        oldest.close_for(CloseCause::Evicted);
    }
    tracing::debug!(peer = %peer, conn = conn_id, tls = tls.is_some(), "meter connection accepted");
    let (stream, certified) = match &tls {
        None => (MeterStream::Plain(tcp), None),
        Some(tls) => match Box::pin(transport::accept(&ctx, tcp, peer, tls, &close)).await {
            Some((stream, names)) => (stream, Some(names)),
            None => {
                // Failed, timed out, evicted or shut down before any meter could identify.
                requests.close();
                record_end(&ctx, peer, conn_id, false);
                return;
            }
        },
    };
    let mut conn = Conn::new(ctx.clone(), peer, stream, certified, handle, close);
    // Detection, each driver and the ending are boxed: a future is as large as its largest state, so inline
    // every connection's task would keep the size of the larger driver (and of the TLS handshake, the detection
    // and the ending) for its whole life; boxed, a connection holds the state of the stage it is in.
    let reason = match Box::pin(detect(&mut conn)).await {
        Ok((Protocol::Dlt645, leftover)) => {
            ctx.metrics.frame("detect_dlt645");
            Box::pin(super::dlt645::run(&mut conn, &mut requests, leftover)).await
        }
        Ok((_, leftover)) => Box::pin(super::dlms::run(&mut conn, &mut requests, leftover)).await,
        Err(reason) => reason,
    };
    tracing::debug!(peer = %peer, conn = conn_id, reason = %reason.as_str(), "meter connection ended");
    Box::pin(conn.finish(reason, requests)).await;
}

/// Detects the protocol; returns it with the bytes buffered so far.
async fn detect(conn: &mut Conn) -> Result<(Protocol, Vec<u8>), EndReason> {
    let mut detector = Detector::new(conn.ctx.rules.clone());
    let deadline = Instant::now() + Duration::from_secs(conn.ctx.config.meters.detection_timeout_secs);
    let probe_every = Duration::from_secs(conn.ctx.config.meters.identify_after_secs);
    let mut probe_at = Instant::now() + probe_every;
    let mut probes = 0u32;
    let mut unknown_logged = false;
    loop {
        match detector.poll() {
            Detection::NeedMore => {}
            Detection::Protocol(p) => return Ok((p, detector.into_buffered())),
            Detection::Registration(registration) => {
                conn.apply_registration(&registration, Source::Dlms).await?;
                conn.ctx.metrics.frame("registration");
                // A heartbeat that is a wrapper packet (the EM114070's) means the connection speaks wrapped DLMS.
                if registration.wrapper_packet {
                    return Ok((Protocol::DlmsWrapped, detector.into_buffered()));
                }
                continue;
            }
            Detection::Unknown => {
                if !unknown_logged {
                    unknown_logged = true;
                    conn.ctx.metrics.connections_unknown_protocol.inc();
                    tracing::warn!(peer = %conn.peer, sample = %hex::encode(detector.sample()), "unknown protocol; the connection closes at the detection timeout");
                }
            }
        }
        tokio::select! {
            outcome = conn.read() => match outcome {
                ReadOutcome::Data => {
                    if !unknown_logged {
                        detector.push(&conn.input);
                    }
                }
                ReadOutcome::End(reason) => return Err(reason),
            },
            // A connection that says nothing: DL/T 645 meters answer a read-address request to the wildcard address,
            // DLMS meters an AARQ (each ignores the other's frame). The probes alternate, read-address first; the
            // EM114070 announces itself with its heartbeat anyway.
            _ = tokio::time::sleep_until(probe_at), if detector.skipped() == 0 && !unknown_logged => {
                probe_at = Instant::now() + probe_every;
                probes += 1;
                let probe = if probes % 2 == 1 {
                    ivy_protocol::dlt645::Frame::read_address().encode_with_preamble(conn.ctx.config.dlt645.wakeup_preamble)
                } else {
                    match super::dlms::association_probe(&conn.ctx.config.dlms) {
                        Some(bytes) => bytes,
                        None => continue,
                    }
                };
                conn.send(&probe).await?;
            }
            _ = tokio::time::sleep_until(deadline) => {
                if !unknown_logged {
                    conn.ctx.metrics.connections_unknown_protocol.inc();
                    tracing::warn!(peer = %conn.peer, sample = %hex::encode(detector.sample()), "no protocol detected in time; closing");
                }
                return Err(EndReason::DetectionFailed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hub::Hub;
    use crate::registers::Resolver;
    use crate::reload::Current;
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    /// Upper bounds, in bytes, of what a waiting connection's futures may take (debug build, as tests run; about
    /// 20 % above the sizes when written: 656, 1416 and 2384 B). Every held meter keeps one session and one driver
    /// future (19,000 on one gateway), and a future is as large as its largest state: a stage or request awaited
    /// inline instead of boxed (see `run` and the drivers' main loops) pushes these past the bound (inline
    /// detection and commands: 1672, 2184 and 3312 B).
    const SESSION_MAX: usize = 800;
    const DLT645_MAX: usize = 1700;
    const DLMS_MAX: usize = 2860;

    #[tokio::test]
    async fn a_waiting_connection_holds_only_its_waiting_state() {
        let config = Arc::new(Config::default());
        let resolver = Arc::new(Current::new(Resolver::from_config(&config).expect("default catalogue")));
        let ctx =
            Arc::new(MeterContext::new(config, resolver, Hub::new(), Default::default(), CancellationToken::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _meter = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (tcp, peer) = listener.accept().await.expect("accept");
        let session = run(ctx.clone(), tcp, peer, None);
        let session_size = std::mem::size_of_val(&session);
        drop(session);

        let _meter = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (tcp, peer) = listener.accept().await.expect("accept");
        let (handle, mut requests, close) = SessionHandle::new(1, 4);
        let mut conn = Conn::new(ctx, peer, MeterStream::Plain(tcp), None, handle, close);
        let dlt645 = std::mem::size_of_val(&super::super::dlt645::run(&mut conn, &mut requests, Vec::new()));
        let dlms = std::mem::size_of_val(&super::super::dlms::run(&mut conn, &mut requests, Vec::new()));
        eprintln!("session {session_size} B, DL/T 645 driver {dlt645} B, DLMS driver {dlms} B");
        assert!(session_size <= SESSION_MAX, "session future {session_size} B > {SESSION_MAX} B: box the new stage");
        assert!(dlt645 <= DLT645_MAX, "DL/T 645 driver future {dlt645} B > {DLT645_MAX} B: box the new request");
        assert!(dlms <= DLMS_MAX, "DLMS driver future {dlms} B > {DLMS_MAX} B: box the new request");
    }
}
