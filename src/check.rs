//! What `graph-relay check` looks at beyond the keys themselves: the files the configuration
//! names (readable, and PEM of the right kind), and whether the relay could deliver at all.
//! `serve` starts without either (it reads secret files at each token request and holds mail
//! until it can deliver), so these live here and not in `Config::validate`. Reads files; never
//! touches the network or the spool.

use std::fmt;
use std::path::Path;

use crate::auth::{AssertionError, CertificateCredential};
use crate::config::{Config, Flow, KeyError};
use crate::smtp::tls::{TlsSetupError, server_config_from_pem};

/// One reason the configuration cannot deliver yet; `serve` would still run and keep mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The key to set (the first of several when any will do).
    pub key: &'static str,
    /// What is missing, naming the keys.
    pub missing: String,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot deliver: {} (serve would still start, and keep the mail it accepts queued until this is fixed)",
            self.missing
        )
    }
}

/// Every file key that names a missing, unreadable or wrong file.
pub fn files(config: &Config) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let bad = |path: &str, message: String| KeyError {
        path: path.to_string(),
        message,
    };
    let ms = &config.microsoft;
    if let Some(path) = &ms.client_secret_file {
        match read("microsoft.client_secret_file", path) {
            Ok(secret) if String::from_utf8_lossy(&secret).trim().is_empty() => errors.push(bad(
                "microsoft.client_secret_file",
                format!("{} is empty", path.display()),
            )),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }

    let smtp = &config.smtp;
    let cert = smtp
        .tls_cert
        .as_ref()
        .map(|p| (p, read("smtp.tls_cert", p)));
    let key = smtp.tls_key.as_ref().map(|p| (p, read("smtp.tls_key", p)));
    match (cert, key) {
        (Some((cert_path, Ok(cert))), Some((key_path, Ok(key)))) => {
            if let Err(e) = server_config_from_pem(&cert, &key) {
                let (path, message) = match e {
                    TlsSetupError::Certificate { source, .. } => (
                        "smtp.tls_cert",
                        format!(
                            "{} is not a PEM certificate ({source})",
                            cert_path.display()
                        ),
                    ),
                    TlsSetupError::NoCertificate(_) => (
                        "smtp.tls_cert",
                        format!("{} holds no PEM certificate", cert_path.display()),
                    ),
                    TlsSetupError::Key { source, .. } => (
                        "smtp.tls_key",
                        format!("{} holds no PEM private key ({source})", key_path.display()),
                    ),
                    TlsSetupError::Rustls(e) => (
                        "smtp.tls_key",
                        format!(
                            "{} and the certificate {} do not make a TLS setup ({e})",
                            key_path.display(),
                            cert_path.display()
                        ),
                    ),
                };
                errors.push(bad(path, message));
            }
        }
        (cert, key) => {
            errors.extend(cert.and_then(|(_, r)| r.err()));
            errors.extend(key.and_then(|(_, r)| r.err()));
        }
    }

    if let (Some(cert), Some(key)) = (&ms.client_certificate, &ms.client_key) {
        let cert_read = read("microsoft.client_certificate", cert).err();
        let key_read = read("microsoft.client_key", key).err();
        if cert_read.is_none() && key_read.is_none() {
            let problem = match CertificateCredential::load(cert, key, ms.assertion_alg) {
                Ok(_) => None,
                Err(AssertionError::Certificate { message, .. }) => Some(bad(
                    "microsoft.client_certificate",
                    format!("{} is not a PEM certificate ({message})", cert.display()),
                )),
                Err(AssertionError::Key { message, .. } | AssertionError::Sign(message)) => {
                    Some(bad(
                        "microsoft.client_key",
                        format!("{}: {message}", key.display()),
                    ))
                }
            };
            errors.extend(problem);
        }
        errors.extend(cert_read);
        errors.extend(key_read);
    } else {
        // One without the other is already a key error (Config::validate); its file still counts.
        for (path, file) in [
            ("microsoft.client_certificate", &ms.client_certificate),
            ("microsoft.client_key", &ms.client_key),
        ] {
            errors.extend(file.as_ref().and_then(|f| read(path, f).err()));
        }
    }
    errors
}

/// Why this configuration cannot deliver mail yet, one entry per missing piece.
pub fn delivery_gaps(config: &Config) -> Vec<Gap> {
    let ms = &config.microsoft;
    let unset = |value: &Option<String>| value.as_deref().is_none_or(|v| v.trim().is_empty());
    let mut gaps = Vec::new();
    for (key, value) in [
        ("microsoft.tenant", &ms.tenant),
        ("microsoft.client_id", &ms.client_id),
    ] {
        if unset(value) {
            gaps.push(Gap {
                key,
                missing: format!("{key} is not set"),
            });
        }
    }
    // Delegated sign-in needs no app credential and sends as the signed-in user (`/me`).
    if ms.flow == Flow::ClientCredentials {
        if ms.client_secret.is_none()
            && ms.client_secret_file.is_none()
            && ms.client_certificate.is_none()
        {
            gaps.push(Gap {
                key: "microsoft.client_secret_file",
                missing: "no app credential for the client_credentials flow: set microsoft.client_secret_file, client_secret, or client_certificate + client_key".into(),
            });
        }
        if unset(&ms.sender) && ms.allowed_senders.is_empty() {
            gaps.push(Gap {
                key: "microsoft.sender",
                missing: "no mailbox to send from: microsoft.sender is not set and microsoft.allowed_senders is empty".into(),
            });
        }
    }
    gaps
}

/// The file's bytes, or a `key: cannot read PATH: reason` error.
fn read(key: &str, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError {
        path: key.to_string(),
        message: format!("cannot read {}: {}", path.display(), io_reason(&e)),
    })
}

/// The OS's words for an I/O error, without Rust's " (os error N)" suffix.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(file: &str) -> Config {
        Config::from_layers(Some(file), &[]).expect("config loads")
    }

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn missing_and_wrong_files_are_reported_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let missing = dir.path().join("missing");
        let file = format!(
            "[smtp]\ntls_cert = {key:?}\ntls_key = {missing:?}\n\
             [microsoft]\nclient_secret_file = {empty:?}\n",
            key = fixture("app.key"),
        );
        let errors: Vec<String> = files(&config(&file))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                format!("microsoft.client_secret_file: {} is empty", empty.display()),
                format!(
                    "smtp.tls_key: cannot read {}: No such file or directory",
                    missing.display()
                ),
            ]
        );
        // Both readable: a key where the certificate belongs is not a certificate.
        let file = format!(
            "[smtp]\ntls_cert = {key:?}\ntls_key = {key:?}\n",
            key = fixture("app.key")
        );
        let errors: Vec<String> = files(&config(&file))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [format!(
                "smtp.tls_cert: {} holds no PEM certificate",
                fixture("app.key")
            )]
        );
    }

    #[test]
    fn the_test_certificate_passes_for_smtp_and_for_the_app() {
        let file = format!(
            "[smtp]\ntls_cert = {cert:?}\ntls_key = {key:?}\n\
             [microsoft]\nclient_certificate = {cert:?}\nclient_key = {key:?}\n",
            cert = fixture("app.crt"),
            key = fixture("app-pkcs1.key"),
        );
        assert_eq!(files(&config(&file)), []);
    }

    #[test]
    fn gaps_follow_the_flow() {
        let keys = |file: &str| -> Vec<&'static str> {
            delivery_gaps(&config(file)).iter().map(|g| g.key).collect()
        };
        assert_eq!(
            keys(""),
            [
                "microsoft.tenant",
                "microsoft.client_id",
                "microsoft.client_secret_file",
                "microsoft.sender"
            ]
        );
        assert_eq!(
            keys(
                "[microsoft]\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\nallowed_senders = [\"*@contoso.com\"]\n"
            ),
            [] as [&str; 0]
        );
        assert_eq!(
            keys("[microsoft]\nflow = \"delegated\"\ntenant = \" \"\nclient_id = \"c\"\n"),
            ["microsoft.tenant"]
        );
    }
}
