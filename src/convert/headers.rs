//! Header → Graph field mapping: Subject, Importance / X-Priority / X-MSMail-Priority / Priority,
//! Disposition-Notification-To, Return-Receipt-To, and the first five `X-` headers for
//! `internetMessageHeaders`. Pure; never yields a header Graph would reject (non-`x-` name,
//! empty value, a sixth one, a value too long) or a subject over Exchange's 255 characters: what
//! is too long is cut, with a warning, never a reason to fail the message.

use mail_parser::Message;

use super::graph_json::{Importance, InternetMessageHeader};
use super::text::{MAX_FIELD_CHARS, cut_bytes, cut_chars, non_empty, one_line, unfold};

/// Graph rejects a sixth custom header.
pub const MAX_INTERNET_MESSAGE_HEADERS: usize = 5;

/// Longest `internetMessageHeaders` value sent, in bytes. Exchange refuses a message whose
/// header section passes 256 KB (`552 5.3.4`); five values this long, plus 500 recipients and
/// what Exchange adds itself, stay well below that.
pub const MAX_HEADER_VALUE_BYTES: usize = 16 * 1024;

/// Top-level header fields as (name, unfolded raw value), in message order. Values that are not
/// UTF-8 are skipped (the header section was already repaired to UTF-8 where possible).
pub(crate) fn raw_fields<'a>(msg: &'a Message<'a>, raw: &'a [u8]) -> Vec<(&'a str, String)> {
    msg.headers()
        .iter()
        .filter_map(|h| {
            let bytes = raw.get(h.offset_start() as usize..h.offset_end() as usize)?;
            let value = std::str::from_utf8(bytes).ok()?;
            Some((h.name(), unfold(value)))
        })
        .collect()
}

fn first<'a>(fields: &'a [(&str, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, v)| n.eq_ignore_ascii_case(name) && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// Decoded (RFC 2047), unfolded, one-line subject, cut to 255 characters; `None` when missing
/// or blank.
pub(crate) fn subject(msg: &Message<'_>) -> Option<String> {
    let mut subject = msg.subject().and_then(non_empty)?;
    if let Some(chars) = cut_chars(&mut subject, MAX_FIELD_CHARS) {
        tracing::warn!(
            chars,
            limit = MAX_FIELD_CHARS,
            "subject too long for Exchange; sent cut"
        );
    }
    Some(subject)
}

/// `Importance:` (high/normal/low), else `X-Priority:` (1-2 high, 3 normal, 4-5 low), else
/// `X-MSMail-Priority:`, else `Priority:` (urgent/normal/non-urgent). Unknown values are ignored.
pub(crate) fn importance(fields: &[(&str, String)]) -> Option<Importance> {
    let word = |v: &str| {
        let v = v.trim().to_ascii_lowercase();
        match v.as_str() {
            "high" | "urgent" => Some(Importance::High),
            "normal" | "medium" => Some(Importance::Normal),
            "low" | "non-urgent" => Some(Importance::Low),
            _ => None,
        }
    };
    if let Some(i) = first(fields, "Importance").and_then(word) {
        return Some(i);
    }
    if let Some(v) = first(fields, "X-Priority") {
        let i = match v.trim_start().chars().next() {
            Some('1' | '2') => Some(Importance::High),
            Some('3') => Some(Importance::Normal),
            Some('4' | '5') => Some(Importance::Low),
            _ => None,
        };
        if i.is_some() {
            return i;
        }
    }
    if let Some(i) = first(fields, "X-MSMail-Priority").and_then(word) {
        return Some(i);
    }
    first(fields, "Priority").and_then(word)
}

/// `Disposition-Notification-To` with a value → read receipt requested.
pub(crate) fn read_receipt(fields: &[(&str, String)]) -> Option<bool> {
    first(fields, "Disposition-Notification-To").map(|_| true)
}

/// `Return-Receipt-To` with a value → delivery receipt requested.
pub(crate) fn delivery_receipt(fields: &[(&str, String)]) -> Option<bool> {
    first(fields, "Return-Receipt-To").map(|_| true)
}

fn is_token_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// `X-` headers Graph must not get as custom headers: the priority ones are already mapped to
/// `importance`, and Exchange writes its own `X-MS-Exchange-*`, `X-MS-Has-Attach` and
/// `X-MS-TNEF-Correlator`.
fn is_mapped_or_exchange_owned(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "x-priority" | "x-msmail-priority" | "x-ms-has-attach" | "x-ms-tnef-correlator"
    ) || n.starts_with("x-ms-exchange-")
}

/// The first five `X-` headers for `internetMessageHeaders`, in message order: name as first
/// written, value unfolded and trimmed, empty values skipped. A name that appears more than once
/// (cron's `X-Cron-Env`) becomes one header with the values joined by ", ", since Exchange keeps
/// one value per header name. Headers mapped to Graph fields or owned by Exchange are left out.
pub(crate) fn x_headers(fields: &[(&str, String)]) -> Vec<InternetMessageHeader> {
    let mut out: Vec<InternetMessageHeader> = Vec::new();
    for (name, value) in fields {
        let is_x = name.len() > 2 && name.as_bytes()[..2].eq_ignore_ascii_case(b"x-");
        if !is_x || !is_token_name(name) || is_mapped_or_exchange_owned(name) {
            continue;
        }
        let value = one_line(value);
        if value.is_empty() {
            continue;
        }
        if let Some(h) = out.iter_mut().find(|h| h.name.eq_ignore_ascii_case(name)) {
            h.value.push_str(", ");
            h.value.push_str(&value);
        } else if out.len() < MAX_INTERNET_MESSAGE_HEADERS {
            out.push(InternetMessageHeader {
                name: name.to_string(),
                value,
            });
        }
    }
    for h in &mut out {
        if let Some(bytes) = cut_bytes(&mut h.value, MAX_HEADER_VALUE_BYTES) {
            tracing::warn!(
                header = %h.name,
                bytes,
                limit = MAX_HEADER_VALUE_BYTES,
                "header value too long for Graph; sent cut"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    fn with_fields<T>(raw: &str, f: impl FnOnce(&[(&str, String)]) -> T) -> T {
        let msg = MessageParser::new().parse(raw.as_bytes()).expect("parses");
        let fields = raw_fields(&msg, raw.as_bytes());
        f(&fields)
    }

    #[test]
    fn importance_mapping() {
        let cases = [
            ("Importance: High\r\n", Some(Importance::High)),
            ("Importance: low\r\n", Some(Importance::Low)),
            ("X-Priority: 1 (Highest)\r\n", Some(Importance::High)),
            ("X-Priority: 2\r\n", Some(Importance::High)),
            ("X-Priority: 3 (Normal)\r\n", Some(Importance::Normal)),
            ("X-Priority: 5 (Lowest)\r\n", Some(Importance::Low)),
            ("X-MSMail-Priority: Low\r\n", Some(Importance::Low)),
            ("Priority: urgent\r\n", Some(Importance::High)),
            ("Priority: non-urgent\r\n", Some(Importance::Low)),
            (
                "Importance: bogus\r\nX-Priority: 4\r\n",
                Some(Importance::Low),
            ),
            ("Subject: none\r\n", None),
        ];
        for (hdr, want) in cases {
            let raw = format!("From: a@b.example\r\n{hdr}\r\nbody\r\n");
            assert_eq!(with_fields(&raw, importance), want, "{hdr}");
        }
    }

    #[test]
    fn receipts() {
        let raw = "From: a@b.example\r\nDisposition-Notification-To: a@b.example\r\nReturn-Receipt-To: <a@b.example>\r\n\r\nx";
        assert_eq!(with_fields(raw, read_receipt), Some(true));
        assert_eq!(with_fields(raw, delivery_receipt), Some(true));
        let raw = "From: a@b.example\r\nDisposition-Notification-To:\r\n\r\nx";
        assert_eq!(with_fields(raw, read_receipt), None);
        assert_eq!(with_fields(raw, delivery_receipt), None);
    }

    #[test]
    fn long_values_are_cut_not_refused() {
        let long = "é".repeat(MAX_HEADER_VALUE_BYTES);
        let raw = format!("From: a@b.example\r\nX-Big: {long}\r\nX-Small: s\r\n\r\nbody");
        let got = with_fields(&raw, x_headers);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].value.len(), MAX_HEADER_VALUE_BYTES);
        assert!(long.starts_with(&got[0].value));
        assert_eq!(got[1].value, "s");
        let raw = format!(
            "From: a@b.example\r\nSubject: {}\r\n\r\nbody",
            "ü".repeat(300)
        );
        let msg = MessageParser::new().parse(raw.as_bytes()).expect("parses");
        assert_eq!(subject(&msg), Some("ü".repeat(MAX_FIELD_CHARS)));
    }

    #[test]
    fn x_headers_first_five_unfolded_non_empty_merged() {
        let raw = "From: a@b.example\r\nX-One: 1\r\nX-Empty:   \r\nx-two: two\r\n  folded  \r\nReferences: <r@x>\r\nX-Priority: 1\r\nX-MS-Exchange-Organization-SCL: -1\r\nX-Three: 3\r\nX-one: 1b\r\nX-Four: 4\r\nX-Five: 5\r\nX-Six: 6\r\nX-Two: 2b\r\n\r\nbody";
        let got = with_fields(raw, x_headers);
        let got: Vec<(String, String)> = got.into_iter().map(|h| (h.name, h.value)).collect();
        assert_eq!(
            got,
            vec![
                ("X-One".into(), "1, 1b".into()),
                ("x-two".into(), "two folded, 2b".into()),
                ("X-Three".into(), "3".into()),
                ("X-Four".into(), "4".into()),
                ("X-Five".into(), "5".into()),
            ]
        );
    }
}
