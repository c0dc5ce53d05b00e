//! TLS for the servers this process runs (the embedded broker's terminals,
//! HTTP and gRPC): a certificate chain and key from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a server's TLS cannot be set up; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cert_file {}: {source}", path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("cert_file {}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("key_file {}: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("cert_file {} and its key: {source}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// A TLS acceptor serving the chain in `cert` (leaf first) with `key`,
/// offering the application protocols `alpn` (none for MQTT; `http/1.1`
/// for HTTP; `h2` for gRPC).
pub fn acceptor(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsAcceptor, TlsSetupError> {
    let bad_cert = |source| TlsSetupError::Certificate {
        path: cert.to_path_buf(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(bad_cert)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad_cert)?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsSetupError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    let config_error = |source| TlsSetupError::Config {
        path: cert.to_path_buf(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(config_error)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The gRPC server's acceptor: `http.tls_cert_file` and `tls_key_file`,
/// offering HTTP/2; `None` without them.
pub fn grpc_acceptor(
    config: &tillwatch_config::Config,
) -> Result<Option<tokio_rustls::TlsAcceptor>, TlsSetupError> {
    match (&config.http.tls_cert_file, &config.http.tls_key_file) {
        (Some(cert), Some(key)) => Ok(Some(acceptor(cert, key, &[b"h2"])?)),
        _ => Ok(None),
    }
}
