//! A certificate authority made in the test (rcgen) and clients that trust only it; shared by the test targets
//! that need TLS (`#[path = "../common/ca.rs"] mod ca;`).

// Each test target uses a part of it.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A test certificate authority.
pub struct TestCa {
    pub cert: CertificateDer<'static>,
    /// The CA certificate, PEM (for a server or client that reads files).
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert: cert.der().clone(), pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A server certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM, certificate DER).
    pub fn server(&self) -> (String, String, CertificateDer<'static>) {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "ivy-gateway test");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// Writes a server certificate and key into `dir` as `cert.pem`/`key.pem`; returns the paths and the DER.
    pub fn write_server(&self, dir: &Path) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let (cert, key, der) = self.server();
        let (cp, kp) = (dir.join("cert.pem"), dir.join("key.pem"));
        // Written next to the target and renamed, as an operator's deploy step would.
        std::fs::write(dir.join("cert.pem.new"), cert).unwrap();
        std::fs::write(dir.join("key.pem.new"), key).unwrap();
        std::fs::rename(dir.join("key.pem.new"), &kp).unwrap();
        std::fs::rename(dir.join("cert.pem.new"), &cp).unwrap();
        (cp, kp, der)
    }

    /// A client configuration that trusts only this CA.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        trusting(self.cert.clone())
    }

    /// A certificate signed by this CA, with `sans` as subject alternative names (DNS names or IP addresses; none:
    /// no SAN extension), `cn` as subject CN and `usage` as its only extended key usage: (certificate PEM, key PEM).
    pub fn issue(&self, sans: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client configuration that trusts only this CA, before its client certificate is chosen.
    pub fn client_builder(&self) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        rustls::ClientConfig::builder_with_provider(ivy_gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
    }

    /// A meter's client configuration: trusts `server_ca`, presents a client certificate of this CA with `sans`
    /// and `cn`.
    pub fn meter_client(&self, server_ca: &TestCa, sans: &[&str], cn: &str) -> Arc<rustls::ClientConfig> {
        let (cert, key) = self.issue(sans, cn, ExtendedKeyUsagePurpose::ClientAuth);
        with_certificate(server_ca, &cert, &key)
    }
}

/// A client configuration that trusts `server_ca` and presents the PEM certificate `cert` with key `key`.
pub fn with_certificate(server_ca: &TestCa, cert: &str, key: &str) -> Arc<rustls::ClientConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_der(key).to_vec()));
    Arc::new(server_ca.client_builder().with_client_auth_cert(vec![pem_der(cert)], key).unwrap())
}

/// The DER of the first PEM block of `pem`.
pub fn pem_der(pem: &str) -> CertificateDer<'static> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    CertificateDer::from(base64::engine::general_purpose::STANDARD.decode(body).unwrap())
}

/// A client configuration that trusts only `root`.
pub fn trusting(root: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(ivy_gateway::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
