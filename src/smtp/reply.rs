//! SMTP replies: a code, an enhanced status code (RFC 3463) and one line of text, formatted
//! exactly as sent. Every reply the session sends is built here, so the wire text lives in one
//! place. Never puts client-supplied text on the wire unsanitised.

use std::borrow::Cow;
use std::fmt;

/// One single-line reply: `code x.y.z text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    code: u16,
    esc: [u8; 3],
    text: Cow<'static, str>,
}

impl Reply {
    pub(crate) fn new(code: u16, esc: [u8; 3], text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            esc,
            text: text.into(),
        }
    }

    pub(crate) fn code(&self) -> u16 {
        self.code
    }

    /// The reply as sent, CRLF included.
    pub(crate) fn to_wire(&self) -> String {
        format!("{self}\r\n")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.esc;
        write!(f, "{} {a}.{b}.{c} {}", self.code, self.text)
    }
}

/// Text safe to put in a reply: printable ASCII only, one line, at most `max` characters.
pub(crate) fn sanitize(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

// The fixed replies. Functions rather than constants so each call site reads as the reply it sends.

pub(crate) fn ok() -> Reply {
    Reply::new(250, [2, 0, 0], "OK")
}
pub(crate) fn sender_ok() -> Reply {
    Reply::new(250, [2, 1, 0], "Sender OK")
}
pub(crate) fn recipient_ok() -> Reply {
    Reply::new(250, [2, 1, 5], "Recipient OK")
}
pub(crate) fn start_data() -> Reply {
    Reply::new(354, [2, 0, 0], "End data with <CR><LF>.<CR><LF>")
}
pub(crate) fn vrfy() -> Reply {
    Reply::new(
        252,
        [2, 0, 0],
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}
pub(crate) fn start_tls() -> Reply {
    Reply::new(220, [2, 0, 0], "Ready to start TLS")
}
pub(crate) fn auth_ok() -> Reply {
    Reply::new(235, [2, 7, 0], "Authentication successful")
}
pub(crate) fn too_many_recipients() -> Reply {
    Reply::new(452, [4, 5, 3], "Too many recipients")
}
/// A BDAT chunk that is not the last one.
pub(crate) fn chunk_received(size: usize) -> Reply {
    Reply::new(250, [2, 0, 0], format!("{size} octets received"))
}
pub(crate) fn too_big() -> Reply {
    Reply::new(
        552,
        [5, 3, 4],
        "Message size exceeds fixed maximum message size",
    )
}
pub(crate) fn unknown_command() -> Reply {
    Reply::new(500, [5, 5, 1], "Unknown command")
}
pub(crate) fn line_too_long() -> Reply {
    Reply::new(500, [5, 5, 2], "Line too long")
}
pub(crate) fn syntax(text: &str) -> Reply {
    Reply::new(501, [5, 5, 4], format!("Syntax: {}", sanitize(text, 100)))
}
pub(crate) fn bad_sender() -> Reply {
    Reply::new(501, [5, 1, 7], "Bad sender address syntax")
}
pub(crate) fn bad_recipient() -> Reply {
    Reply::new(501, [5, 1, 3], "Bad recipient address syntax")
}
pub(crate) fn not_implemented(what: &'static str) -> Reply {
    Reply::new(502, [5, 5, 1], format!("{what} not implemented"))
}
pub(crate) fn bad_sequence(text: &'static str) -> Reply {
    Reply::new(503, [5, 5, 1], text)
}
pub(crate) fn unsupported_parameter(text: &str) -> Reply {
    Reply::new(
        555,
        [5, 5, 4],
        format!("Unsupported parameter {}", sanitize(text, 64)),
    )
}
pub(crate) fn auth_required() -> Reply {
    Reply::new(530, [5, 7, 0], "Authentication required")
}
pub(crate) fn auth_failed() -> Reply {
    Reply::new(535, [5, 7, 8], "Authentication credentials invalid")
}
pub(crate) fn auth_mechanism() -> Reply {
    Reply::new(504, [5, 5, 4], "Unrecognized authentication type")
}
pub(crate) fn auth_cancelled() -> Reply {
    Reply::new(501, [5, 7, 0], "Authentication cancelled")
}
pub(crate) fn auth_bad_base64() -> Reply {
    Reply::new(501, [5, 5, 2], "Invalid base64 data")
}
pub(crate) fn encryption_required() -> Reply {
    Reply::new(
        538,
        [5, 7, 11],
        "Encryption required for requested authentication mechanism",
    )
}
pub(crate) fn queued(id: &str) -> Reply {
    Reply::new(250, [2, 0, 0], format!("Ok: queued as {id}"))
}
pub(crate) fn spool_unavailable() -> Reply {
    Reply::new(451, [4, 3, 0], "Queue unavailable, try again later")
}
pub(crate) fn spool_full() -> Reply {
    Reply::new(
        452,
        [4, 3, 1],
        "Insufficient system storage, try again later",
    )
}
/// MAIL FROM of an AUTH user mapped to another mailbox (Postfix's wording).
pub(crate) fn sender_not_owned(address: &str, user: &str) -> Reply {
    Reply::new(
        553,
        [5, 7, 1],
        format!(
            "<{}>: Sender address rejected: not owned by user {}",
            sanitize(address, 200),
            sanitize(user, 64)
        ),
    )
}
/// A From header (or its absence) that is not the AUTH user's mailbox, at the end of DATA.
pub(crate) fn from_not_owned(user: &str, mailbox: &str) -> Reply {
    Reply::new(
        550,
        [5, 7, 1],
        format!(
            "From header must be <{}>: user {} may send only as that mailbox",
            sanitize(mailbox, 200),
            sanitize(user, 64)
        ),
    )
}
pub(crate) fn rejected(reason: &str) -> Reply {
    Reply::new(
        554,
        [5, 6, 0],
        format!("Message rejected: {}", sanitize(reason, 200)),
    )
}
pub(crate) fn access_denied(host: &str) -> Reply {
    Reply::new(554, [5, 7, 1], format!("{host} Access denied"))
}
pub(crate) fn too_many_connections(host: &str) -> Reply {
    Reply::new(
        421,
        [4, 7, 0],
        format!("{host} Too many connections, try again later"),
    )
}
pub(crate) fn too_many_errors(host: &str) -> Reply {
    Reply::new(
        421,
        [4, 7, 0],
        format!("{host} Too many errors, closing connection"),
    )
}
pub(crate) fn timeout(host: &str) -> Reply {
    Reply::new(
        421,
        [4, 4, 2],
        format!("{host} Timeout exceeded, closing connection"),
    )
}
pub(crate) fn unframed_chunk(host: &str) -> Reply {
    Reply::new(
        421,
        [4, 5, 0],
        format!("{host} Cannot find the end of that BDAT chunk, closing connection"),
    )
}
pub(crate) fn shutting_down(host: &str) -> Reply {
    Reply::new(
        421,
        [4, 3, 2],
        format!("{host} Service shutting down, closing connection"),
    )
}
pub(crate) fn bye(host: &str) -> Reply {
    Reply::new(221, [2, 0, 0], format!("{host} closing connection"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_code_enhanced_code_and_text() {
        assert_eq!(
            spool_unavailable().to_wire(),
            "451 4.3.0 Queue unavailable, try again later\r\n"
        );
        assert_eq!(
            encryption_required().to_string(),
            "538 5.7.11 Encryption required for requested authentication mechanism"
        );
    }

    #[test]
    fn sanitize_keeps_one_printable_line() {
        assert_eq!(sanitize("bad\r\n250 ok\u{e9}", 100), "bad??250 ok?");
        assert_eq!(sanitize("abcdef", 3), "abc");
        assert_eq!(
            rejected("no\r\nbody").to_wire(),
            "554 5.6.0 Message rejected: no??body\r\n"
        );
    }
}
