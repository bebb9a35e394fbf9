//! Accepts meter connections under the admission limits and starts one session task per connection.

use super::context::MeterContext;
use super::session;
use super::transport::MeterTls;
use crate::lock::lock;
use crate::metrics::RejectReason;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Releases the admission slot when the session ends, however it ends.
struct AdmissionSlot {
    ctx: Arc<MeterContext>,
    peer: SocketAddr,
}

impl Drop for AdmissionSlot {
    fn drop(&mut self) {
        let mut a = lock(&self.ctx.admission);
        a.release(self.peer.ip());
        self.ctx.metrics.connections_active.set(a.active() as i64);
    }
}

fn configure(stream: &TcpStream, keepalive_secs: u64) {
    let _ = stream.set_nodelay(true);
    if keepalive_secs > 0 {
        let sock = socket2::SockRef::from(stream);
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(keepalive_secs))
            .with_interval(Duration::from_secs(keepalive_secs.div_ceil(4).max(1)));
        if let Err(e) = sock.set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "cannot enable TCP keepalive");
        }
    }
}

/// Runs the accept loop until shutdown; `tls` makes it the TLS meter port. Both ports share the admission limits
/// (a source's connections count together whichever port they use).
pub(crate) async fn run(listener: TcpListener, ctx: Arc<MeterContext>, tls: Option<MeterTls>) {
    let mut sweep = tokio::time::interval(Duration::from_secs(ctx.config.meters.sweep_interval_secs.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = sweep.tick() => {
                lock(&ctx.admission).sweep(Instant::now());
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = {
            let mut a = lock(&ctx.admission);
            let now = Instant::now();
            let decision =
                if ctx.source_allowed(peer.ip()) { a.admit(peer.ip()) } else { Err(RejectReason::SourceNotAllowed) };
            match decision {
                Ok(()) => {
                    ctx.metrics.connections_active.set(a.active() as i64);
                    Ok(())
                }
                Err(reason) => Err((reason, a.should_log(peer.ip(), now))),
            }
        };
        if let Err((reason, log)) = admitted {
            ctx.metrics.rejected(reason);
            if log {
                tracing::warn!(peer = %peer, ?reason, "meter connection refused (logged once per IP per minute)");
            }
            drop(stream);
            continue;
        }
        ctx.metrics.connections_total.inc();
        configure(&stream, ctx.config.meters.tcp_keepalive_secs);
        let slot = AdmissionSlot { ctx: ctx.clone(), peer };
        let ctx = ctx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            session::run(ctx, stream, peer, tls).await;
        });
    }
}
