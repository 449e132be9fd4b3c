//! The TLS server config for STARTTLS and implicit TLS: PEM certificate chain and private key,
//! rustls with the ring provider named explicitly (never the process default, which panics when
//! two providers are compiled in). Reads key files; never logs key material.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read TLS certificate {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),
    #[error("cannot read TLS private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS certificate and key do not make a server config: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Loads a PEM certificate chain and private key from files.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsSetupError::Certificate {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate(cert.to_path_buf()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsSetupError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    build(chain, key_der)
}

/// Builds the config from PEM text (tests and embedded certificates).
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsSetupError::Certificate {
            path: PathBuf::from("<memory>"),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate(PathBuf::from("<memory>")));
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsSetupError::Key {
        path: PathBuf::from("<memory>"),
        source,
    })?;
    build(chain, key_der)
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        let err = server_config_from_pem(b"not pem", b"not pem").expect_err("must fail");
        assert!(matches!(err, TlsSetupError::NoCertificate(_)), "{err}");
        let err = load_server_config(Path::new("/nonexistent/cert.pem"), Path::new("/x"))
            .expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
