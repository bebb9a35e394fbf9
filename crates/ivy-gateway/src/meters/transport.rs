//! The byte stream under a meter session: plain TCP (`meters.port`), or TLS on the TLS meter port
//! (`meters.tls_port`), where every meter presents a client certificate of `meters.tls_client_ca` and may identify
//! only as a meter id its certificate names (docs/SECURITY-identity.md, "TLS on the meter port").

use super::context::MeterContext;
use crate::tls::HandshakeFailure;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 4096;

/// A meter connection's transport.
#[derive(Debug)]
pub(crate) enum MeterStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS with a verified client certificate.
    Tls(Box<TlsStream<TcpStream>>),
}

impl MeterStream {
    /// Reads the bytes available (empty: the peer closed). Cancel-safe: nothing is consumed unless it returns.
    /// A plain connection holds no buffer while it waits (most of a fleet waits most of the time); a TLS one
    /// holds one chunk, next to the TLS session's own buffers.
    pub(crate) async fn read_some(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            MeterStream::Plain(s) => loop {
                s.readable().await?;
                let mut buf = Vec::with_capacity(READ_CHUNK);
                match s.try_read_buf(&mut buf) {
                    Ok(_) => return Ok(buf),
                    // Readiness can be spurious.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            MeterStream::Tls(s) => {
                let mut buf = Vec::with_capacity(READ_CHUNK);
                s.read_buf(&mut buf).await?;
                Ok(buf)
            }
        }
    }

    /// Writes all of `bytes` and pushes them onto the wire (TLS records included).
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            MeterStream::Plain(s) => s.write_all(bytes).await,
            MeterStream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    /// Closes the sending side (TLS: close_notify first).
    pub(crate) async fn shutdown(&mut self) {
        let _ = match self {
            MeterStream::Plain(s) => s.shutdown().await,
            MeterStream::Tls(s) => s.shutdown().await,
        };
    }
}

/// The TLS meter port's server side: certificate, required client certificates, handshake timeout.
#[derive(Clone)]
pub(crate) struct MeterTls {
    acceptor: TlsAcceptor,
    timeout: Duration,
}

impl std::fmt::Debug for MeterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeterTls").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl MeterTls {
    /// `config` must require client certificates (`tls::CertStore::server_config_with_clients`).
    pub(crate) fn new(config: Arc<rustls::ServerConfig>, timeout: Duration) -> Self {
        MeterTls { acceptor: TlsAcceptor::from(config), timeout }
    }
}

/// What a completed TLS handshake gives a session: the stream and the meter ids its certificate names.
pub(crate) type Certified = (MeterStream, Vec<String>);

/// Runs the handshake of a connection to the TLS meter port, bounded by the handshake timeout and ended early by
/// `close` (the connection was evicted) or shutdown. A failure is counted and logged (once per IP per minute);
/// the caller records the connection as one that never identified (a strike for the rate limit).
pub(crate) async fn accept(
    ctx: &MeterContext,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: &MeterTls,
    close: &CancellationToken,
) -> Option<Certified> {
    let outcome = tokio::select! {
        r = crate::tls::handshake(&tls.acceptor, tcp, tls.timeout) => r,
        _ = close.cancelled() => return None,
        _ = ctx.shutdown.cancelled() => return None,
    };
    let failure = match outcome {
        Ok(stream) => {
            let names = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| crate::tls::certificate_names(leaf))
                .unwrap_or_default();
            if !names.is_empty() {
                ctx.metrics.meter_tls_handshakes.inc();
                tracing::debug!(%peer, ids = ?names, "TLS meter connection; its certificate names these meter ids");
                return Some((MeterStream::Tls(Box::new(stream)), names));
            }
            tracing::warn!(%peer, "TLS meter client certificate names no meter id (no DNS SAN, no CN); closing");
            HandshakeFailure::BadCertificate
        }
        Err(failure) => failure,
    };
    ctx.metrics.meter_tls_failed(failure.as_str());
    if crate::lock::lock(&ctx.admission).should_log(peer.ip(), std::time::Instant::now()) {
        tracing::warn!(%peer, failure = failure.as_str(), "TLS meter handshake failed (logged once per IP per minute)");
    }
    None
}
