//! TLS for the HTTP data plane, the gRPC listener (Flight SQL, OTLP) and the TCP ingest
//! listeners (rustls, ring provider; tonic's own TLS features are not used, as they
//! would change the TLS stack's features and rebuild everything above it).
//!
//! `[tls] cert_file` (a PEM chain, leaf first) and `key_file` (a PEM private key) are
//! read once at startup; a file that is missing, holds no certificate or no key, or a
//! key that does not match, refuses startup with the reason. Handshakes run inside the
//! connection's task, bounded by the listener's header (HTTP) or idle (TCP) time, so a
//! client that never finishes one holds only its own slot.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use weir_core::config::TlsConfig;

/// Why the certificate could not be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cannot read the certificates of {path}: {why}")]
    Certs { path: String, why: String },
    #[error("tls: {0} holds no certificate")]
    NoCert(String),
    #[error("tls: cannot read a private key from {path}: {why}")]
    Key { path: String, why: String },
    #[error("tls: the certificate and key do not make a server configuration: {0}")]
    Config(String),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::Certs {
        path: path.display().to_string(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.display().to_string()));
    }
    Ok(certs)
}

/// The acceptor of `[tls]` for HTTP/1.1 and TCP ingest, or None when it is not
/// configured.
pub fn acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    with_alpn(config, b"http/1.1")
}

/// The acceptor of `[tls]` for the gRPC listener (ALPN `h2`).
pub fn grpc_acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    with_alpn(config, b"h2")
}

fn with_alpn(config: &TlsConfig, alpn: &[u8]) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
        return Ok(None);
    };
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        why: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    server.alpn_protocols = vec![alpn.to_vec()];
    // No session resumption: with a resumed TLS 1.3 session, records that a client
    // sends right before closing without close_notify were lost (tests/tls.rs); a
    // full handshake per connection costs little next to a batch of records.
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        assert!(acceptor(&TlsConfig::default()).unwrap().is_none());
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let cfg = |c: &Path, k: &Path| TlsConfig {
            cert_file: Some(c.to_owned()),
            key_file: Some(k.to_owned()),
        };
        let Err(e) = acceptor(&cfg(&empty, &empty)) else {
            panic!("an empty certificate file was taken");
        };
        assert!(matches!(e, TlsError::NoCert(_)), "{e}");
        let Err(e) = acceptor(&cfg(&dir.path().join("nope.pem"), &empty)) else {
            panic!("a missing certificate file was taken");
        };
        assert!(e.to_string().contains("nope.pem"), "{e}");
    }
}
