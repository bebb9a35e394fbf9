//! The HTTP accept loop: a connection cap and a header timeout of its own, so idle or slow clients cannot take
//! every file descriptor from the meters and MQTT (`axum::serve` has neither).
//!
//! - Above `max_connections` a new connection is closed at once (counted in `ivy_http_connections_refused`).
//! - A connection must send a request's headers within `header_timeout` (hyper's `header_read_timeout`); the same
//!   timer runs while a keep-alive connection waits for its next request, so idle connections are closed too.
//!   A response being streamed (the live SSE stream) is not affected.
//! - Accept errors (out of descriptors) back off briefly instead of spinning (the listener does it).

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::Layer;

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServeLimits {
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// Time to send a request's headers, and the longest idle keep-alive wait.
    pub(crate) header_timeout: Duration,
}

/// Serves `app` on `listener` (plain TCP or the HTTPS listener of [`crate::tls`]) until `shutdown`; then open
/// connections finish their current request and close.
pub(crate) async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            // Accept errors (out of descriptors) are retried by the listener after a short pause.
            accepted = listener.accept() => accepted,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            drop(stream);
            continue;
        };
        metrics.http_connections_active.inc();
        let service = TowerToHyperService::new(axum::Extension(ConnectInfo(peer)).layer(app.clone()));
        let (builder, shutdown, metrics) = (builder.clone(), shutdown.clone(), metrics.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await;
                }
            }
            metrics.http_connections_active.dec();
        });
    }
}
