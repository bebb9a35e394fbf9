//! TLS for the gateway's own listeners (HTTPS, and the TLS meter port with client certificates): PEM certificate
//! and CA loading, a certificate resolver whose key pair can be replaced while the gateway runs (SIGHUP), a bounded
//! handshake with its failure classified, an accept loop that does handshakes off the accept path (HTTPS), the
//! names a client certificate gives its holder, and `ivy-gateway cert self-signed` (rcgen) for quick starts.
//!
//! Connections that are already open keep the certificate they were set up with; new handshakes get the current
//! one. The MQTT TLS and WSS listeners are the broker's: it loads its certificate once (see `mqtt::broker`).

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// A TLS setup problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no usable PEM item.
    #[error("{0}: {1}")]
    Pem(PathBuf, String),
    /// The key does not belong to the certificate, or its type is not supported.
    #[error("{cert} / {key}: {problem}")]
    KeyPair {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Certificate generation or writing failed.
    #[error("{0}")]
    Generate(String),
}

/// The crypto provider the gateway uses everywhere (rmqtt and rustls both link aws-lc-rs; see DEPENDENCIES).
pub fn provider() -> Arc<CryptoProvider> {
    // Installing fails only when a default exists already; that one is then used by everything else too.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Reads a PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC1), and checks that
/// the key belongs to the leaf.
pub fn load_key_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Pem(cert.to_path_buf(), e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(cert.to_path_buf(), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Pem(cert.to_path_buf(), "no CERTIFICATE in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Pem(key.to_path_buf(), format!("no usable PEM private key ({e})")))?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::KeyPair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        problem: e.to_string(),
    })
}

/// Reads the CA certificate(s) of a PEM file as trust anchors for client certificates.
pub fn load_client_ca(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem(path.to_path_buf(), e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(path.to_path_buf(), e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::Pem(path.to_path_buf(), "no usable CA CERTIFICATE in the file".into()));
    }
    Ok(roots)
}

/// A verifier that requires every client to present a certificate chaining to a CA in `client_ca` (PEM), checked
/// by rustls' WebPKI verifier (signature chain, validity period, client-auth key usage).
pub fn client_verifier(client_ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = load_client_ca(client_ca)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Pem(client_ca.to_path_buf(), e.to_string()))
}

/// The names a client certificate gives its holder: the `dNSName` entries of its subject alternative names when
/// it has any, else its subject common names (RFC 6125 6.4.4: the CN only counts without SANs). Empty when the
/// certificate names nothing usable or does not parse.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let sans: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(name) => Some((*name).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if !sans.is_empty() {
        return sans;
    }
    cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_owned)).collect()
}

/// Why a server-side handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not complete within the timeout (a silent or slow peer).
    Timeout,
    /// Client certificates are required and the client sent none.
    NoCertificate,
    /// The client's certificate did not verify (another CA, expired, wrong key usage).
    BadCertificate,
    /// The peer does not speak TLS (plaintext on a TLS port) or broke the protocol.
    Protocol,
    /// The connection failed or closed during the handshake.
    Io,
}

impl HandshakeFailure {
    /// Every failure.
    pub const ALL: [HandshakeFailure; 5] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::Protocol,
        HandshakeFailure::Io,
    ];

    /// The snake_case name (a metric label).
    pub fn as_str(&self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Io => "io",
        }
    }

    fn of(error: &std::io::Error) -> Self {
        match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::NoCertificatesPresented) => HandshakeFailure::NoCertificate,
            Some(rustls::Error::InvalidCertificate(_)) => HandshakeFailure::BadCertificate,
            Some(_) => HandshakeFailure::Protocol,
            None => HandshakeFailure::Io,
        }
    }
}

/// Runs the server side of a handshake on `socket`, bounded by `timeout`.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    socket: TcpStream,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
    match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(HandshakeFailure::of(&e)),
        Err(_) => Err(HandshakeFailure::Timeout),
    }
}

/// The HTTP listener's certificate: loaded from PEM files, replaced by [`CertStore::reload`].
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertReload {
    /// The files hold the certificate already served.
    Unchanged,
    /// New handshakes get the new certificate.
    Replaced,
}

impl CertStore {
    /// Loads `cert` and `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pair = load_key_pair(cert, key)?;
        Ok(CertStore { cert: cert.to_path_buf(), key: key.to_path_buf(), current: RwLock::new(Arc::new(pair)) })
    }

    /// Reads the files again; on any problem the certificate in use stays (and the error says why).
    pub fn reload(&self) -> Result<CertReload, TlsError> {
        let pair = load_key_pair(&self.cert, &self.key)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.cert == pair.cert {
            return Ok(CertReload::Unchanged);
        }
        *current = Arc::new(pair);
        Ok(CertReload::Replaced)
    }

    /// The leaf certificate served now (DER).
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).cert.first().cloned()
    }

    /// A server configuration that resolves every handshake to this store's current certificate (HTTP/1.1 ALPN,
    /// TLS 1.2 and 1.3, no client certificates).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let mut config = builder.with_no_client_auth().with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A server configuration like [`server_config`](Self::server_config) that requires every client to present a
    /// certificate `verifier` accepts (the TLS meter port; no ALPN: meters speak their own protocols).
    pub fn server_config_with_clients(
        self: &Arc<Self>,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok(Arc::new(builder.with_client_cert_verifier(verifier).with_cert_resolver(self.clone())))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Handshakes in progress at once; further connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped (slow or idle sockets hold nothing longer).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTPS listener for `axum::serve`: a task accepts TCP connections and runs each handshake in its own task
/// (a slow client never blocks the others); finished TLS streams are handed over through a small queue.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `config` until `shutdown` is cancelled.
    pub fn start(tcp: TcpListener, config: Arc<ServerConfig>, shutdown: CancellationToken) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let (socket, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and similar: back off instead of spinning.
                            tracing::warn!(error = %e, "HTTPS accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = socket.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match handshake(&acceptor, socket, HANDSHAKE_TIMEOUT).await {
                        Ok(stream) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Err(failure) => tracing::debug!(%peer, failure = failure.as_str(), "TLS handshake failed"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Settings of `ivy-gateway cert self-signed`.
#[derive(Debug, Clone, clap::Args)]
pub struct SelfSignedArgs {
    /// Subject alternative names: DNS names or IP addresses the clients use to reach the gateway (repeatable).
    #[arg(long = "san", default_values = ["localhost", "127.0.0.1"])]
    pub sans: Vec<String>,
    /// Directory for `cert.pem` (public) and `key.pem` (mode 0600).
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// A self-signed certificate and its key, both PEM.
#[derive(Debug, Clone)]
pub struct GeneratedPair {
    /// The certificate (give it to clients as the trusted certificate).
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// Generates a self-signed ECDSA P-256 server certificate for `sans`, valid from now for `days`.
pub fn self_signed(sans: &[String], days: u32) -> Result<GeneratedPair, TlsError> {
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    if sans.is_empty() {
        return Err(TlsError::Generate("at least one --san is needed".into()));
    }
    let mut params = rcgen::CertificateParams::new(sans.to_vec()).map_err(gen_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, sans[0].clone());
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "IVY Gateway (self-signed)");
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clients whose clocks run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days.max(1)));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(GeneratedPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Writes `cert.pem` and `key.pem` into `args.out_dir` (the key with mode 0600, created that way, never widened);
/// returns their paths. Existing files are kept unless `args.force`.
pub fn write_self_signed(args: &SelfSignedArgs) -> Result<(PathBuf, PathBuf), TlsError> {
    let pair = self_signed(&args.sans, args.days)?;
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| TlsError::Generate(format!("{}: {e}", args.out_dir.display())))?;
    let cert = args.out_dir.join("cert.pem");
    let key = args.out_dir.join("key.pem");
    for p in [&cert, &key] {
        if p.exists() && !args.force {
            return Err(TlsError::Generate(format!("{} exists (use --force to replace it)", p.display())));
        }
    }
    write_file(&key, pair.key_pem.as_bytes(), 0o600)?;
    write_file(&cert, pair.cert_pem.as_bytes(), 0o644)?;
    Ok((cert, key))
}

/// Writes through a temporary file created with `mode`, then renames (a reader never sees half a key, and the
/// key is never readable by others, not even for a moment).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    let err = |e: std::io::Error| TlsError::Generate(format!("{}: {e}", path.display()));
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(&tmp).map_err(err)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_loads_and_a_mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let args = SelfSignedArgs {
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            out_dir: dir.path().into(),
            days: 30,
            force: false,
        };
        let (cert, key) = write_self_signed(&args).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(write_self_signed(&args).is_err(), "existing files are kept without --force");
        let store = Arc::new(CertStore::load(&cert, &key).unwrap());
        assert!(store.server_config().is_ok());
        assert_eq!(store.reload().unwrap(), CertReload::Unchanged);

        // Another key for the same certificate: refused, and the served certificate stays.
        let other = self_signed(&["localhost".into()], 1).unwrap();
        std::fs::write(&key, other.key_pem).unwrap();
        let served = store.leaf();
        assert!(matches!(store.reload(), Err(TlsError::KeyPair { .. })));
        assert_eq!(store.leaf(), served);
        assert!(matches!(CertStore::load(&key, &key), Err(TlsError::Pem(..))));
    }
}
