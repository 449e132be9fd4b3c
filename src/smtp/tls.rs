//! The TLS server side for STARTTLS and implicit TLS: PEM certificate chain and private key,
//! rustls with the ring provider named explicitly (never the process default, which panics when
//! two providers are compiled in), and a certificate that can be swapped while the relay runs
//! (SIGHUP after a renewal): handshakes after the swap use the new one, sessions already running
//! keep theirs. Reads key files; never logs key material.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why the TLS config could not be built (or a new certificate not loaded).
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

/// The server's TLS setup: a rustls config whose certificate can be replaced in place.
/// Cloning shares the certificate slot.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    cert: Arc<CertSlot>,
}

impl ServerTls {
    /// The rustls config for an acceptor (every handshake asks the slot for the current
    /// certificate).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The end-entity certificate handshakes present now (DER).
    pub fn current_certificate(&self) -> Option<CertificateDer<'static>> {
        self.cert.get().cert.first().cloned()
    }

    /// Loads a new certificate and key from PEM files and, only if they are good and match,
    /// makes handshakes use them. On error the current certificate stays.
    pub fn reload_files(&self, cert: &Path, key: &Path) -> Result<(), TlsSetupError> {
        let (chain, key) = read_files(cert, key)?;
        self.cert.set(certified(chain, key)?);
        Ok(())
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// The certificate every handshake gets; replaced whole, never edited.
struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertSlot")
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Loads a PEM certificate chain and private key from files.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<ServerTls, TlsSetupError> {
    let (chain, key) = read_files(cert, key)?;
    build(chain, key)
}

/// Builds the config from PEM text (tests and embedded certificates).
pub fn server_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerTls, TlsSetupError> {
    let (chain, key) = read_pem(cert_pem, key_pem)?;
    build(chain, key)
}

type Pair = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn read_files(cert: &Path, key: &Path) -> Result<Pair, TlsSetupError> {
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
    Ok((chain, key_der))
}

fn read_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Pair, TlsSetupError> {
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
    Ok((chain, key_der))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The chain and key as one `CertifiedKey`; refuses a key that does not belong to the
/// certificate (rustls would otherwise only find out in the handshake).
fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let certified = CertifiedKey::from_der(chain, key, &provider())?;
    Ok(Arc::new(certified))
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerTls, TlsSetupError> {
    let cert = Arc::new(CertSlot(RwLock::new(certified(chain, key)?)));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    Ok(ServerTls {
        config: Arc::new(config),
        cert,
    })
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
