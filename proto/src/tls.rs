//! MQTT over TLS (`mqtts://`) for the broker's clients: the transport that
//! verifies the broker against a given CA, or the system's roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a TLS transport cannot be made; each names the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("ca_file {}: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("ca_file {}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("ca_file {}: {source}", path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no system root certificates found; give the broker's CA as ca_file")]
    NoSystemRoots,
    #[error("TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS transport that trusts the PEM certificates in `ca_file`, or the
/// system's root certificates when it is `None`. Errors name the file.
pub fn client_transport(ca_file: Option<&Path>) -> Result<Transport, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = |source| TlsError::Pem {
                path: path.to_path_buf(),
                source,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(pem)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem)?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate {
                    path: path.to_path_buf(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|source| TlsError::Certificate {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_transport(Some(&missing)).err().unwrap().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_transport(Some(&empty)).err().unwrap().to_string();
        assert!(err.contains("empty.pem") && err.contains("no PEM"), "{err}");
    }
}
