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
    /// The user is configured with a password hash this build cannot check.
    Unsupported,
}

/// Checks credentials against the configured users.
pub(crate) fn verify(users: &BTreeMap<String, SmtpUser>, creds: &Credentials) -> Verdict {
    if creds.username.is_empty() || creds.password.is_empty() {
        return Verdict::Invalid;
    }
    match users.get(&creds.username) {
        Some(SmtpUser::Password(expected)) => {
            if !expected.is_empty() && constant_time_eq(expected.as_bytes(), &creds.password) {
                Verdict::Valid
            } else {
                Verdict::Invalid
            }
        }
        Some(SmtpUser::Hashed { .. }) => Verdict::Unsupported,
        None => Verdict::Invalid,
    }
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

    fn users() -> BTreeMap<String, SmtpUser> {
        let mut m = BTreeMap::new();
        m.insert("wp".to_string(), SmtpUser::Password("s3cret".to_string()));
        m.insert(
            "h".to_string(),
            SmtpUser::Hashed {
                password_hash: "$argon2id$v=19$...".to_string(),
            },
        );
        m
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
        assert_eq!(verify(&users(), &ok), Verdict::Valid);
        let same_authz = parse_plain(b"wp\0wp\0s3cret").expect("well formed");
        assert_eq!(verify(&users(), &same_authz), Verdict::Valid);
        assert!(parse_plain(b"other\0wp\0s3cret").is_none());
        assert!(parse_plain(b"wp\0s3cret").is_none());
        assert!(parse_plain(b"\0wp\0s3cret\0x").is_none());
        let wrong = parse_plain(b"\0wp\0s3cre").expect("well formed");
        assert_eq!(verify(&users(), &wrong), Verdict::Invalid);
        let empty = parse_plain(b"\0wp\0").expect("well formed");
        assert_eq!(verify(&users(), &empty), Verdict::Invalid);
        let nobody = parse_plain(b"\0nobody\0s3cret").expect("well formed");
        assert_eq!(verify(&users(), &nobody), Verdict::Invalid);
        let hashed = parse_plain(b"\0h\0x").expect("well formed");
        assert_eq!(verify(&users(), &hashed), Verdict::Unsupported);
    }
}
