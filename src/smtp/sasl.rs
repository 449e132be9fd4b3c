//! SMTP AUTH PLAIN and LOGIN (RFC 4954, RFC 4616): decoding the client's base64 responses and
//! checking them against `smtp.users`. Pure; the exchange itself lives in the session. Never logs
//! or returns a password, and never treats an empty password as a match.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::config::SmtpUser;

/// The LOGIN prompts, base64 of "Username:" and "Password:".
pub(crate) const LOGIN_USERNAME: &str = "334 VXNlcm5hbWU6\r\n";
pub(crate) const LOGIN_PASSWORD: &str = "334 UGFzc3dvcmQ6\r\n";
/// The empty PLAIN challenge.
pub(crate) const PLAIN_CHALLENGE: &str = "334 \r\n";

/// What a client's SASL response line means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Response {
    /// `*`: the client gave up (RFC 4954 §4).
    Cancel,
    Data(Vec<u8>),
    BadBase64,
}

/// Decodes one response line (CRLF optional). `=` is an empty response.
pub(crate) fn decode(line: &[u8]) -> Response {
    let text = trim_eol(line);
    match text {
        b"*" => Response::Cancel,
        b"=" | b"" => Response::Data(Vec::new()),
        _ => match STANDARD.decode(text) {
            Ok(bytes) => Response::Data(bytes),
            Err(_) => Response::BadBase64,
        },
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.trim_ascii()
}

/// A username and password the client presented.
pub(crate) struct Credentials {
    pub(crate) username: String,
    password: Vec<u8>,
}

impl Credentials {
    pub(crate) fn new(username: Vec<u8>, password: Vec<u8>) -> Option<Self> {
        let username = String::from_utf8(username).ok()?;
        Some(Credentials { username, password })
    }
}

/// Splits a PLAIN message `authzid NUL authcid NUL passwd`. An authorization identity other than
/// the user's own is refused (None), as is anything malformed.
pub(crate) fn parse_plain(message: &[u8]) -> Option<Credentials> {
    let mut parts = message.split(|&b| b == 0);
    let authz = parts.next()?;
    let authc = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() || (!authz.is_empty() && authz != authc) {
        return None;
    }
    Credentials::new(authc.to_vec(), password.to_vec())
}

/// What checking the credentials found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Valid,
    Invalid,
}

/// The first step of checking credentials: plain passwords are compared at once; argon2 hashes
/// are slow by design, so the session verifies them off the async threads (`verify_hash`).
#[derive(Debug)]
pub(crate) enum Check {
    Done(Verdict),
    Hash {
        hash: String,
        password: Vec<u8>,
        /// False for a decoy: the user does not exist, and the hash of another user is checked
        /// only so the answer takes as long as for a real user. The verdict is Invalid.
        real: bool,
    },
}

/// Looks the user up and compares a plain password, or says which hash to verify.
pub(crate) fn check(users: &BTreeMap<String, SmtpUser>, creds: &Credentials) -> Check {
    if creds.username.is_empty() || creds.password.is_empty() {
        return Check::Done(Verdict::Invalid);
    }
    let hash = |hash: &String, real: bool| Check::Hash {
        hash: hash.clone(),
        password: creds.password.clone(),
        real,
    };
    match users.get(&creds.username) {
        Some(
            SmtpUser::Password(expected)
            | SmtpUser::Plain {
                password: expected, ..
            },
        ) => {
            if !expected.is_empty() && constant_time_eq(expected.as_bytes(), &creds.password) {
                Check::Done(Verdict::Valid)
            } else {
                Check::Done(Verdict::Invalid)
            }
        }
        Some(SmtpUser::Hashed { password_hash, .. }) => hash(password_hash, true),
        None => match users.values().find_map(|u| match u {
            SmtpUser::Hashed { password_hash, .. } => Some(password_hash),
            _ => None,
        }) {
            Some(decoy) => hash(decoy, false),
            None => Check::Done(Verdict::Invalid),
        },
    }
}

/// Verifies a password against an argon2 PHC string (its own parameters apply). Blocking and
/// CPU- and memory-heavy: call it from `spawn_blocking`. A malformed hash never matches.
pub(crate) fn verify_hash(hash: &str, password: &[u8]) -> Verdict {
    use argon2::PasswordVerifier;
    match argon2::Argon2::default().verify_password(password, hash) {
        Ok(()) => Verdict::Valid,
        Err(argon2::password_hash::Error::PasswordInvalid) => Verdict::Invalid,
        Err(e) => {
            tracing::warn!(error = %e, "an smtp.users password_hash cannot be used; AUTH refused");
            Verdict::Invalid
        }
    }
}

/// Why `hash_password` failed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("the password is empty")]
    Empty,
    #[error("cannot hash the password: {0}")]
    Argon2(String),
}

/// Hashes a password for `smtp.users.NAME.password_hash`: argon2id, version 19, the argon2
/// crate's default (OWASP-recommended) cost m=19456 KiB, t=2, p=1, and a random 16-byte salt.
/// Returns the PHC string.
pub fn hash_password(password: &[u8]) -> Result<String, HashError> {
    use argon2::PasswordHasher;
    if password.is_empty() {
        return Err(HashError::Empty);
    }
    argon2::Argon2::default()
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError::Argon2(e.to_string()))
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// argon2id of "s3cret" with cheap parameters (m=64 KiB, t=1), so debug test runs stay fast.
    const HASH: &str = "$argon2id$v=19$m=64,t=1,p=1$Z3JhcGgtcmVsYXktdGVzdA$RbBwOb4T0heR6KjJpbjbMGujHz7H1rYC2FMHsTXIaU4";

    fn users() -> BTreeMap<String, SmtpUser> {
        let mut m = BTreeMap::new();
        m.insert("wp".to_string(), SmtpUser::Password("s3cret".to_string()));
        m.insert(
            "mapped".to_string(),
            SmtpUser::Plain {
                password: "pw".to_string(),
                mailbox: Some("wp@contoso.com".to_string()),
            },
        );
        m.insert(
            "h".to_string(),
            SmtpUser::Hashed {
                password_hash: HASH.to_string(),
                mailbox: None,
            },
        );
        m
    }

    /// Runs `check` and, for hashes, the verification, as the session does.
    fn verify(creds: &Credentials) -> Verdict {
        match check(&users(), creds) {
            Check::Done(v) => v,
            Check::Hash {
                hash,
                password,
                real,
            } => match verify_hash(&hash, &password) {
                Verdict::Valid if real => Verdict::Valid,
                _ => Verdict::Invalid,
            },
        }
    }

    #[test]
    fn decodes_responses() {
        assert_eq!(decode(b"*\r\n"), Response::Cancel);
        assert_eq!(decode(b"=\r\n"), Response::Data(Vec::new()));
        assert_eq!(decode(b"dXNlcg==\r\n"), Response::Data(b"user".to_vec()));
        assert_eq!(decode(b"!!!\r\n"), Response::BadBase64);
    }

    #[test]
    fn plain_checks_identity_and_password() {
        let ok = parse_plain(b"\0wp\0s3cret").expect("well formed");
        assert_eq!(verify(&ok), Verdict::Valid);
        let same_authz = parse_plain(b"wp\0wp\0s3cret").expect("well formed");
        assert_eq!(verify(&same_authz), Verdict::Valid);
        assert!(parse_plain(b"other\0wp\0s3cret").is_none());
        assert!(parse_plain(b"wp\0s3cret").is_none());
        assert!(parse_plain(b"\0wp\0s3cret\0x").is_none());
        let wrong = parse_plain(b"\0wp\0s3cre").expect("well formed");
        assert_eq!(verify(&wrong), Verdict::Invalid);
        let empty = parse_plain(b"\0wp\0").expect("well formed");
        assert_eq!(verify(&empty), Verdict::Invalid);
        let mapped = parse_plain(b"\0mapped\0pw").expect("well formed");
        assert_eq!(verify(&mapped), Verdict::Valid);
    }

    #[test]
    fn hashed_passwords_verify_and_unknown_users_check_a_decoy() {
        let ok = parse_plain(b"\0h\0s3cret").expect("well formed");
        assert!(matches!(
            check(&users(), &ok),
            Check::Hash { real: true, .. }
        ));
        assert_eq!(verify(&ok), Verdict::Valid);
        let wrong = parse_plain(b"\0h\0s3cretX").expect("well formed");
        assert_eq!(verify(&wrong), Verdict::Invalid);
        // An unknown user costs a hash verification too, and never passes, even with the
        // password of the user whose hash is the decoy.
        let nobody = parse_plain(b"\0nobody\0s3cret").expect("well formed");
        assert!(matches!(
            check(&users(), &nobody),
            Check::Hash { real: false, .. }
        ));
        assert_eq!(verify(&nobody), Verdict::Invalid);
        // Without hashed users there is nothing to time against.
        let mut plain_only = users();
        plain_only.remove("h");
        assert!(matches!(
            check(&plain_only, &nobody),
            Check::Done(Verdict::Invalid)
        ));
        assert_eq!(verify_hash("$argon2id$broken", b"x"), Verdict::Invalid);
    }

    #[test]
    fn hash_password_makes_a_default_argon2id_phc_string_that_verifies() {
        let hash = hash_password(b"correct horse").expect("hashes");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(verify_hash(&hash, b"correct horse"), Verdict::Valid);
        assert_eq!(verify_hash(&hash, b"correct horsE"), Verdict::Invalid);
        assert_ne!(
            hash,
            hash_password(b"correct horse").expect("hashes"),
            "salted"
        );
        assert!(matches!(hash_password(b""), Err(HashError::Empty)));
    }
}
