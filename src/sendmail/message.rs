//! The message a sendmail caller pipes in, made into what SMTP ingest would have stored: lines
//! ending in CRLF (callers write bare LF), a leading mbox `From ` line dropped, the input ended
//! by a lone `.` unless `-i`; then the header edits Postfix makes for local submissions: Bcc and
//! Resent-Bcc removed, a From header added when there is none, and (`-t`) the recipients read
//! from To/Cc/Bcc or, when present, Resent-To/Cc/Bcc. Pure apart from reading the input.

use std::io::{BufRead, Read};

use mail_parser::{HeaderName, MessageParser};

use crate::convert::{header_fields, header_section};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("the message is larger than smtp.max_message_bytes ({0} bytes)")]
    TooBig(usize),
    #[error("cannot read the message from stdin: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the message: each line ends in CRLF, leading `From ` (and `>From `) lines are dropped,
/// and with `dot_ends` a line with only `.` ends the input (nothing after it is read). Stops
/// with `TooBig` as soon as the message passes `limit` bytes.
pub fn read(mut input: impl BufRead, dot_ends: bool, limit: usize) -> Result<Vec<u8>, InputError> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut leading = true;
    loop {
        line.clear();
        // A line longer than the whole limit is refused without holding more than that.
        let read = input
            .by_ref()
            .take(limit as u64 + 2)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if leading && is_from_line(text) {
            continue;
        }
        leading = false;
        if dot_ends && text == b"." {
            break;
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
        if out.len() > limit {
            return Err(InputError::TooBig(limit));
        }
    }
    Ok(out)
}

/// The mbox separator (`From sender date`), possibly `>`-quoted: not part of the message.
fn is_from_line(line: &[u8]) -> bool {
    let start = line.iter().take_while(|&&b| b == b'>').count();
    line[start..].starts_with(b"From ")
}

/// What `prepare` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub message: Vec<u8>,
    /// With `-t`: the addresses from the recipient headers, as written (not yet checked).
    pub header_recipients: Vec<String>,
}

/// Applies the header edits to a message from `read`. `from` is the From header to add when
/// the message has none (`None`: add none).
pub fn prepare(message: &[u8], extract: bool, from: Option<&str>) -> Prepared {
    let (fields, body) = split(message);
    let mut header = Vec::new();
    for field in &fields {
        header.extend_from_slice(field);
    }
    let header_recipients = if extract {
        recipients_in(&header)
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(message.len() + 128);
    let has_from = fields.iter().any(|f| is_named(f, "from"));
    if let (false, Some(from)) = (has_from, from) {
        out.extend_from_slice(format!("From: {from}\r\n").as_bytes());
    }
    for field in fields
        .iter()
        .filter(|f| !is_named(f, "bcc") && !is_named(f, "resent-bcc"))
    {
        out.extend_from_slice(field);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Prepared {
        message: out,
        header_recipients,
    }
}

/// The header fields (each with its continuation lines and CRLF) and the body, split where the
/// relay's conversion splits them (`convert::header_section`): callers often write no empty line
/// at all (`echo body | sendmail`), and then the first line that is no field starts the body.
fn split(message: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let section = header_section(message);
    let fields = header_fields(&message[..section.fields_end]).collect();
    (fields, &message[section.body_start..])
}

fn is_named(field: &[u8], name: &str) -> bool {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
    field[..colon]
        .trim_ascii()
        .eq_ignore_ascii_case(name.as_bytes())
}

/// Postfix `-t`: the addresses in To, Cc and Bcc; but when the message has any Resent-To,
/// Resent-Cc or Resent-Bcc (it is being resent), only those.
fn recipients_in(header: &[u8]) -> Vec<String> {
    let mut block = header.to_vec();
    block.extend_from_slice(b"\r\n");
    let Some(msg) = MessageParser::new().parse_headers(&block) else {
        return Vec::new();
    };
    let resent = [
        HeaderName::ResentTo,
        HeaderName::ResentCc,
        HeaderName::ResentBcc,
    ];
    let names = if resent.iter().any(|n| msg.header(n.clone()).is_some()) {
        resent
    } else {
        [HeaderName::To, HeaderName::Cc, HeaderName::Bcc]
    };
    names
        .into_iter()
        .flat_map(|name| msg.header_values(name).collect::<Vec<_>>())
        .filter_map(|value| value.as_address())
        .flat_map(|list| list.iter())
        // A bare word (`root`) parses as a name without address: keep it, so it is refused as
        // a recipient instead of vanishing.
        .filter_map(|addr| addr.address().or(addr.name()))
        .map(|a| a.trim().to_string())
        .collect()
}

/// The addresses in a command-line recipient argument, which may be a list (`a@x, b@y`) or
/// carry a name (`Jo <jo@x>`), as Postfix reads them: like the value of a To header.
pub fn addresses_in(arg: &str) -> Vec<String> {
    recipients_in(format!("To: {arg}\r\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(input: &str, dot_ends: bool) -> String {
        String::from_utf8(read(input.as_bytes(), dot_ends, 1 << 20).unwrap()).unwrap()
    }

    #[test]
    fn bare_lf_becomes_crlf_and_a_last_line_gets_its_end() {
        assert_eq!(read_str("a\nb\r\nc", true), "a\r\nb\r\nc\r\n");
        assert_eq!(read_str("", true), "");
    }

    #[test]
    fn a_lone_dot_ends_the_input_unless_i() {
        let input = "Subject: x\n\none\n.\ntwo\n";
        assert_eq!(read_str(input, true), "Subject: x\r\n\r\none\r\n");
        assert_eq!(
            read_str(input, false),
            "Subject: x\r\n\r\none\r\n.\r\ntwo\r\n"
        );
        // Only a dot alone: `..` and `.x` are text, kept as written.
        assert_eq!(read_str("..\n.x\n", true), "..\r\n.x\r\n");
    }

    #[test]
    fn leading_mbox_from_lines_are_dropped() {
        assert_eq!(
            read_str(
                "From root Mon Jan  1 00:00:00 2026\n>From x\nFrom: a@b.example\n\nFrom here\n",
                true
            ),
            "From: a@b.example\r\n\r\nFrom here\r\n"
        );
    }

    #[test]
    fn too_big_stops_reading() {
        let input = "x".repeat(100) + "\n";
        assert!(matches!(
            read(input.as_bytes(), true, 50),
            Err(InputError::TooBig(50))
        ));
        assert!(read(input.as_bytes(), true, 102).is_ok());
    }

    #[test]
    fn extract_reads_to_cc_bcc_and_removes_bcc() {
        let msg = b"To: A <a@x.example>, b@x.example\r\nCc: c@x.example\r\nBcc: hidden@x.example,\r\n more@x.example\r\nSubject: s\r\n\r\nbody\r\n";
        let p = prepare(msg, true, None);
        assert_eq!(
            p.header_recipients,
            [
                "a@x.example",
                "b@x.example",
                "c@x.example",
                "hidden@x.example",
                "more@x.example"
            ]
        );
        assert_eq!(
            String::from_utf8(p.message).unwrap(),
            "To: A <a@x.example>, b@x.example\r\nCc: c@x.example\r\nSubject: s\r\n\r\nbody\r\n"
        );
        // Without -t the headers give no recipients, and Bcc still goes.
        let p = prepare(msg, false, None);
        assert!(p.header_recipients.is_empty());
        assert!(!String::from_utf8(p.message).unwrap().contains("hidden"));
    }

    #[test]
    fn resent_headers_win_when_present() {
        let msg = b"To: old@x.example\r\nResent-To: new@x.example\r\nResent-Bcc: secret@x.example\r\n\r\nb\r\n";
        let p = prepare(msg, true, None);
        assert_eq!(p.header_recipients, ["new@x.example", "secret@x.example"]);
        assert!(!String::from_utf8(p.message).unwrap().contains("secret"));
    }

    #[test]
    fn from_is_added_only_when_missing() {
        let p = prepare(
            b"Subject: s\r\n\r\nb\r\n",
            false,
            Some("\"Web\" <w@x.example>"),
        );
        assert_eq!(
            String::from_utf8(p.message).unwrap(),
            "From: \"Web\" <w@x.example>\r\nSubject: s\r\n\r\nb\r\n"
        );
        let p = prepare(
            b"FROM: me@x.example\r\n\r\nb\r\n",
            false,
            Some("w@x.example"),
        );
        assert_eq!(
            String::from_utf8(p.message).unwrap(),
            "FROM: me@x.example\r\n\r\nb\r\n"
        );
    }

    #[test]
    fn input_without_a_header_is_all_body() {
        let p = prepare(
            b"hello world\r\nsecond: line\r\n",
            false,
            Some("w@x.example"),
        );
        assert_eq!(
            String::from_utf8(p.message).unwrap(),
            "From: w@x.example\r\n\r\nhello world\r\nsecond: line\r\n"
        );
        // A header with no empty line after it: the first non-field line starts the body.
        let p = prepare(b"Subject: s\r\nhello\r\n", false, None);
        assert_eq!(
            String::from_utf8(p.message).unwrap(),
            "Subject: s\r\n\r\nhello\r\n"
        );
    }

    #[test]
    fn command_line_recipients_may_be_lists_with_names() {
        assert_eq!(addresses_in("a@x.example"), ["a@x.example"]);
        assert_eq!(
            addresses_in("Jo Doe <jo@x.example>, b@x.example"),
            ["jo@x.example", "b@x.example"]
        );
        assert_eq!(addresses_in("root"), ["root"]);
    }
}
