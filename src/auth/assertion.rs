//! Certificate credentials: a signed JWT client assertion (`private_key_jwt`) per token
//! request. PS256 with `x5t#S256` (Microsoft's current format) by default; RS256 with the SHA-1
//! `x5t` as an option for older setups. The private key never leaves this module.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaEncoding, RsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

use crate::config::AssertionAlg;

/// How long an assertion is valid: Microsoft asks for "5-10 minutes at most".
const LIFETIME_SECS: u64 = 600;

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("cannot read the certificate {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("cannot read the private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("cannot sign the client assertion: {0}")]
    Sign(String),
}

pub struct CertificateCredential {
    key: RsaKeyPair,
    alg: AssertionAlg,
    /// base64url(SHA-256(cert DER)) for PS256, base64url(SHA-1(cert DER)) for RS256.
    thumbprint: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl CertificateCredential {
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        alg: AssertionAlg,
    ) -> Result<Self, AssertionError> {
        let cert =
            CertificateDer::from_pem_file(cert_path).map_err(|e| AssertionError::Certificate {
                path: cert_path.display().to_string(),
                message: e.to_string(),
            })?;
        let key_error = |message: String| AssertionError::Key {
            path: key_path.display().to_string(),
            message,
        };
        let key =
            match PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_error(e.to_string()))? {
                PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
                PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
                _ => {
                    return Err(key_error(
                        "only RSA keys (PKCS#8 or PKCS#1 PEM) are supported".into(),
                    ));
                }
            }
            .map_err(|e| key_error(format!("not a usable RSA key ({e})")))?;
        let thumbprint = match alg {
            AssertionAlg::Ps256 => ring::digest::digest(&ring::digest::SHA256, cert.as_ref()),
            AssertionAlg::Rs256 => {
                ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.as_ref())
            }
        };
        Ok(CertificateCredential {
            key,
            alg,
            thumbprint: URL_SAFE_NO_PAD.encode(thumbprint.as_ref()),
            rng: SystemRandom::new(),
        })
    }

    /// A fresh signed assertion for `client_id`, addressed to the token endpoint `audience`.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<String, AssertionError> {
        let (alg, thumbprint_header, padding): (&str, &str, &'static dyn RsaEncoding) =
            match self.alg {
                AssertionAlg::Ps256 => ("PS256", "x5t#S256", &RSA_PSS_SHA256),
                AssertionAlg::Rs256 => ("RS256", "x5t", &RSA_PKCS1_SHA256),
            };
        let header = json!({"alg": alg, "typ": "JWT", thumbprint_header: self.thumbprint});
        let issued = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": self.jti()?,
            "nbf": issued,
            "iat": issued,
            "exp": issued + LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(padding, &self.rng, signing_input.as_bytes(), &mut signature)
            .map_err(|e| AssertionError::Sign(e.to_string()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// A random UUID (v4 layout) so Entra can refuse replays.
    fn jti(&self) -> Result<String, AssertionError> {
        let mut b = [0u8; 16];
        self.rng
            .fill(&mut b)
            .map_err(|_| AssertionError::Sign("no randomness".into()))?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::{
        RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256, UnparsedPublicKey,
    };

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn der() -> Vec<u8> {
        CertificateDer::from_pem_file(fixture("app.crt"))
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn ps256_assertion_verifies_and_names_the_certificate() {
        let der = der();
        let credential = CertificateCredential::load(
            &fixture("app.crt"),
            &fixture("app.key"),
            AssertionAlg::Ps256,
        )
        .unwrap();
        let now = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let jwt = credential
            .assertion("client-1", "https://login/t/oauth2/v2.0/token", now)
            .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "PS256");
        let expected =
            URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der).as_ref());
        assert_eq!(header["x5t#S256"], expected.as_str());
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["aud"], "https://login/t/oauth2/v2.0/token");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["nbf"].as_u64().unwrap(),
            600
        );
        let public = credential.key.public().as_ref().to_vec();
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, &public)
            .verify(signed.as_bytes(), &signature)
            .expect("signature verifies");
        let second = credential.assertion("client-1", "aud", now).unwrap();
        assert_ne!(
            decode(second.split('.').nth(1).unwrap())["jti"],
            claims["jti"],
            "jti must be unique"
        );
    }

    #[test]
    fn rs256_uses_the_sha1_thumbprint() {
        let der = der();
        // The PKCS#1 spelling of the same key.
        let credential = CertificateCredential::load(
            &fixture("app.crt"),
            &fixture("app-pkcs1.key"),
            AssertionAlg::Rs256,
        )
        .unwrap();
        let jwt = credential.assertion("c", "a", SystemTime::now()).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "RS256");
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        assert_eq!(
            header["x5t"],
            URL_SAFE_NO_PAD.encode(sha1.as_ref()).as_str()
        );
        let public = credential.key.public().as_ref().to_vec();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .expect("signature verifies");
    }

    #[test]
    fn unreadable_files_name_the_path() {
        let err = CertificateCredential::load(
            Path::new("/nonexistent.crt"),
            Path::new("/x.key"),
            AssertionAlg::Ps256,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent.crt"), "{err}");
    }
}
