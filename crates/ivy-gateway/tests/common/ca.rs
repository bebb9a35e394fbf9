//! A certificate authority made in the test (rcgen) and clients that trust only it; shared by the test targets
//! that need TLS (`#[path = "../common/ca.rs"] mod ca;`).

// Each test target uses a part of it.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
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
