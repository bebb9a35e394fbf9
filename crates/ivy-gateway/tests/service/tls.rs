//! TLS on every listener that carries credentials: MQTT over TLS, MQTT over secure WebSocket and HTTPS each accept
//! a client that trusts the test CA, and refuse a plain client and one that trusts another CA. Certificates are
//! made in the test (rcgen): a CA, and a server certificate for 127.0.0.1 and localhost signed by it.

use super::harness::{self, ADMIN};
pub use crate::ca::{TestCa, trusting};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TLS connection to `addr` (server name 127.0.0.1) and the leaf certificate the server presented.
pub async fn tls_connect(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Result<(tokio_rustls::client::TlsStream<tokio::net::TcpStream>, CertificateDer<'static>), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned().ok_or("no certificate")?;
    Ok((stream, leaf))
}

/// One HTTP/1.1 request on `stream` (kept alive); returns the status, the header block and the body.
pub async fn http_request(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, String, String), String> {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status line")?;
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return Ok((status, head, body));
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| "response timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("connection closed after {} bytes", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The CONNACK an MQTT client gets over `transport`, or why there was none.
async fn mqtt_connack(url_host: &str, port: u16, transport: Transport) -> Result<ConnectReturnCode, String> {
    let mut o = MqttOptions::new(format!("tls-probe-{port}-{}", free_port()), url_host, port);
    o.set_credentials(ADMIN.0, ADMIN.1);
    o.set_transport(transport);
    let (_c, mut ev) = AsyncClient::new(o, 10);
    match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(a)))) => Ok(a.code),
        Ok(Ok(other)) => Err(format!("{other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no CONNACK".into()),
    }
}

#[tokio::test]
async fn mqtt_tls_wss_and_https_accept_the_trusted_and_refuse_plain_or_untrusted_clients() {
    let ca = TestCa::new("ivy test CA");
    let other = TestCa::new("someone else's CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, leaf) = ca.write_server(certs.path());
    let (tls_port, wss_port) = (free_port(), free_port());
    let gw = harness::start(|c| {
        c.mqtt.tls_port = tls_port;
        c.mqtt.wss_port = wss_port;
        c.mqtt.tls_cert = Some(cert.clone());
        c.mqtt.tls_key = Some(key.clone());
        c.http.tls_cert = Some(cert.clone());
        c.http.tls_key = Some(key.clone());
    })
    .await;
    let addrs = gw.gw.addrs();
    assert_eq!(addrs.mqtt_tls.map(|a| a.port()), Some(tls_port));
    assert_eq!(addrs.mqtt_wss.map(|a| a.port()), Some(wss_port));
    let http = addrs.http.unwrap();

    // MQTT over TLS.
    let trusted = || Transport::tls_with_config(TlsConfiguration::Rustls(ca.client()));
    assert_eq!(mqtt_connack("127.0.0.1", tls_port, trusted()).await, Ok(ConnectReturnCode::Success));
    let untrusted =
        mqtt_connack("127.0.0.1", tls_port, Transport::tls_with_config(TlsConfiguration::Rustls(other.client()))).await;
    assert!(
        untrusted.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
        "a client trusting another CA must not connect: {untrusted:?}"
    );
    let plain = mqtt_connack("127.0.0.1", tls_port, Transport::Tcp).await;
    assert!(plain.is_err(), "plain MQTT on the TLS port must not connect: {plain:?}");
    // The plain listener still works and still checks passwords.
    assert_eq!(harness::connack(gw.mqtt(), ADMIN).await, Ok(ConnectReturnCode::Success));

    // MQTT over secure WebSocket.
    let url = format!("wss://127.0.0.1:{wss_port}/mqtt");
    let wss = |c| Transport::wss_with_config(TlsConfiguration::Rustls(c));
    assert_eq!(mqtt_connack(&url, wss_port, wss(ca.client())).await, Ok(ConnectReturnCode::Success));
    let untrusted = mqtt_connack(&url, wss_port, wss(other.client())).await;
    assert!(
        untrusted.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
        "a WSS client trusting another CA must not connect: {untrusted:?}"
    );
    let plain = mqtt_connack(&format!("ws://127.0.0.1:{wss_port}/mqtt"), wss_port, Transport::Ws).await;
    assert!(plain.is_err(), "plain WebSocket on the WSS port must not connect: {plain:?}");

    // HTTPS.
    let (mut stream, served) = tls_connect(http, ca.client()).await.expect("trusted HTTPS client connects");
    assert_eq!(served, leaf);
    let (status, head, _) = http_request(&mut stream, "GET", "/health", "", "").await.unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("strict-transport-security: max-age=31536000"), "{head}");
    let login = format!(r#"{{"username":"{}","password":"{}"}}"#, ADMIN.0, ADMIN.1);
    let (status, head, _) =
        http_request(&mut stream, "POST", "/api/login", "Content-Type: application/json\r\n", &login).await.unwrap();
    assert_eq!(status, 200, "{head}");
    let cookie = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap_or_default();
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");

    let refused = tls_connect(http, other.client()).await.map(|_| ());
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
        "an HTTPS client trusting another CA must fail the handshake: {refused:?}"
    );
    let mut plain = tokio::net::TcpStream::connect(http).await.unwrap();
    let answer = http_request(&mut plain, "GET", "/health", "Connection: close\r\n", "").await;
    assert!(answer.is_err(), "plain HTTP on the HTTPS port must get no HTTP answer: {answer:?}");
    // The listener still serves after those failures.
    assert!(tls_connect(http, ca.client()).await.is_ok());
    gw.gw.shutdown().await;
}

#[tokio::test]
async fn plain_http_sets_no_secure_flag_and_no_hsts() {
    let gw = harness::start(|_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(gw.gw.addrs().http.unwrap()).await.unwrap();
    let (status, head, _) = http_request(&mut stream, "GET", "/health", "", "").await.unwrap();
    assert_eq!(status, 200);
    assert!(!head.to_ascii_lowercase().contains("strict-transport-security"), "{head}");
    // The session cookie over plain HTTP: HttpOnly, but not Secure (a browser would never send it back).
    let login = format!(r#"{{"username":"{}","password":"{}"}}"#, ADMIN.0, ADMIN.1);
    let (status, head, _) =
        http_request(&mut stream, "POST", "/api/login", "Content-Type: application/json\r\n", &login).await.unwrap();
    assert_eq!(status, 200, "{head}");
    let cookie = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap_or_default();
    assert!(cookie.contains("HttpOnly") && !cookie.contains("Secure"), "{cookie}");
    gw.gw.shutdown().await;
}

#[tokio::test]
async fn self_signed_command_makes_a_certificate_the_gateway_serves_and_clients_can_trust() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ivy-gateway"))
        .args(["cert", "self-signed", "--san", "127.0.0.1", "--san", "gateway.example", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let gw = harness::start(|c| {
        c.http.tls_cert = Some(cert.clone());
        c.http.tls_key = Some(key.clone());
    })
    .await;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(&cert).unwrap();
    let (mut stream, served) = tls_connect(gw.gw.addrs().http.unwrap(), trusting(der.clone())).await.unwrap();
    assert_eq!(served, der);
    assert_eq!(http_request(&mut stream, "GET", "/health", "", "").await.unwrap().0, 200);
    gw.gw.shutdown().await;
}

#[test]
fn check_config_loads_the_certificate_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = TestCa::new("ivy check CA").write_server(dir.path());
    let check = |key: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ivy-gateway"))
            .arg("check-config")
            .current_dir(dir.path())
            .env("HTTP_TLS_CERT", &cert)
            .env("HTTP_TLS_KEY", key)
            .output()
            .unwrap()
    };
    assert!(check(&key).status.success());
    let wrong = check(&cert);
    assert_eq!(wrong.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("cert.pem") && stderr.contains("private key"), "{stderr}");
}

/// rmqtt builds its TLS configuration once, when its listeners start: a reload that finds the MQTT certificate files
/// changed must say so (needs a restart) rather than claim them applied, and the broker keeps serving the old one.
#[tokio::test]
async fn a_changed_mqtt_certificate_is_reported_as_needing_a_restart() {
    let ca = TestCa::new("ivy mqtt CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, first) = ca.write_server(certs.path());
    let gw = harness::start(|c| {
        c.mqtt.tls_port = free_port();
        c.mqtt.tls_cert = Some(cert.clone());
        c.mqtt.tls_key = Some(key.clone());
    })
    .await;
    let tls = gw.gw.addrs().mqtt_tls.unwrap();
    let config = (*gw.gw.meters().config).clone();
    let unchanged = gw.gw.reload(config.clone());
    assert_eq!(unchanged, Default::default(), "nothing changed, nothing reported");

    let (_, _, second) = ca.write_server(certs.path());
    assert_ne!(first, second);
    let report = gw.gw.reload(config);
    assert!(report.needs_restart.iter().any(|r| r.contains("MQTT TLS")), "{report:?}");
    assert!(report.applied.is_empty() && report.failed.is_empty(), "{report:?}");
    let (_, served) = tls_connect(tls, ca.client()).await.expect("MQTT/TLS still accepts the trusted client");
    assert_eq!(served, first, "the broker serves the certificate it started with until a restart");
    gw.gw.shutdown().await;
}
