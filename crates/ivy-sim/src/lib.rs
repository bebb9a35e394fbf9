//! Meter simulator: DL/T 645 meters (one or several addresses per connection, as behind an RS-485 DTU) and
//! IVY EM114070-style DLMS/COSEM meters (heartbeat, association, GET/SET/ACTION, pushes), dialing into a gateway.
//! Used as a library by the integration tests and by the `ivy-sim` load generator.

pub mod dlms;
pub mod dlt645;
pub mod fleet;
pub mod values;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

/// The byte stream a simulated meter talks over: a TCP connection, or a TLS session on one (the gateway's TLS
/// meter port, see [`connect_tls`]).
pub trait SimStream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    /// The TCP connection underneath (readiness for a slow reader, a reset).
    fn tcp(&self) -> &TcpStream;
}

impl SimStream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl SimStream for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// The client side of TLS on the gateway's meter port: what the meter trusts and the certificate it presents.
pub type TlsClientConfig = Arc<tokio_rustls::rustls::ClientConfig>;

/// A meter's TLS client configuration from PEM files: the CA that issued the gateway's certificate, and the meter's
/// client certificate (chain, leaf first) and private key. The certificate must name the meter ids that use it.
pub fn tls_client_config(
    gateway_ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsClientConfig, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |path: &std::path::Path| {
        CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs(gateway_ca)?);
    if added == 0 {
        return Err(format!("{}: no CA certificate", gateway_ca.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(cert)?, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(Arc::new(config))
}

/// Opens a TCP connection to `gateway` and runs a TLS handshake with `config` (which carries the meter's client
/// certificate), checking the gateway's certificate for `server_name`.
pub async fn connect_tls(
    gateway: SocketAddr,
    local: Option<IpAddr>,
    config: TlsClientConfig,
    server_name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tcp = connect(gateway, local).await?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// How long a meter takes to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyLatency {
    /// At once.
    #[default]
    None,
    /// Always this long.
    Fixed(Duration),
    /// Uniformly between the two.
    Uniform(Duration, Duration),
}

impl ReplyLatency {
    /// One delay.
    pub fn sample(&self) -> Duration {
        match *self {
            ReplyLatency::None => Duration::ZERO,
            ReplyLatency::Fixed(d) => d,
            ReplyLatency::Uniform(a, b) if b > a => {
                let span = (b - a).as_micros() as u64;
                a + Duration::from_micros(rand::random_range(0..=span))
            }
            ReplyLatency::Uniform(a, _) => a,
        }
    }
}

/// Faults to inject.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Corrupt the checksum of every reply while set (DL/T 645).
    pub corrupt_checksum: Arc<AtomicBool>,
    /// Bytes sent right after connecting, before anything else (garbage, an oversize frame).
    pub garbage_on_connect: Option<Vec<u8>>,
    /// Wait this long before each read from the socket (a slow reader: the gateway's writes back up).
    pub slow_read: Option<Duration>,
}

/// Counters of one simulated connection (or, summed, of a fleet).
#[derive(Debug, Default)]
pub struct SimStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Replies sent.
    pub replies: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Requests that arrived before the previous one was answered.
    pub overlaps: AtomicU64,
    /// Injected faults.
    pub faults: AtomicU64,
    /// Relay commands refused for bad credentials.
    pub auth_failures: AtomicU64,
    /// Relay operations carried out.
    pub relay_operations: AtomicU64,
    /// Clock settings received.
    pub time_syncs: AtomicU64,
    /// Pushes sent (DLMS).
    pub pushes: AtomicU64,
    /// Heartbeats sent (DLMS).
    pub heartbeats: AtomicU64,
    /// Associations accepted (DLMS).
    pub associations: AtomicU64,
    /// Releases (DLMS).
    pub releases: AtomicU64,
    /// Reads answered "object undefined" / "no requested data".
    pub undefined: AtomicU64,
}

/// Opens a TCP connection to `gateway`, optionally from a given local address (127.0.0.x spreads many connections
/// over several source addresses).
pub async fn connect(gateway: SocketAddr, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = match gateway {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(gateway).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads from the socket, first waiting `delay` when the meter is a slow reader.
pub(crate) async fn read_slowly<S: SimStream>(
    stream: &mut S,
    buf: &mut [u8],
    delay: Option<Duration>,
) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    if let Some(d) = delay {
        stream.tcp().readable().await?;
        tokio::time::sleep(d).await;
    }
    stream.read(buf).await
}
