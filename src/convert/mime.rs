//! Signed or encrypted mail (multipart/signed, multipart/encrypted, application/pkcs7-mime):
//! sent as raw MIME so the signature survives. Only the top-level header section is touched; the
//! body bytes are never changed.
//!
//! Exchange takes the recipients of MIME mail from its headers, so:
//! - every `Bcc:` field is dropped and one `Bcc:` naming this group's envelope-only recipients
//!   is added;
//! - `To:`/`Cc:` stay byte for byte when every address in them is a recipient of this group;
//!   otherwise (a header-only address, or a group of a split message) they are rewritten to name
//!   exactly this group's To/Cc recipients, so header-only addresses are not sent to.
//! - when the From policy sends the mail from another mailbox, `From:` is rewritten to that
//!   mailbox (`Sender:` removed) and the original From added as `Reply-To:` if there was none.
//!
//! Top-level headers are not covered by S/MIME or PGP/MIME signatures, so none of this breaks
//! them.

use std::collections::HashSet;

use base64::Engine as _;
use mail_parser::{Message, MessageParser, MimeHeaders};

use super::recipients::{Group, HeaderAddr, header_addrs};
use super::sender::SenderPlan;
use super::text::{address_key, fields, header_section};

/// True for mail that must go as MIME: its top-level type is multipart/signed,
/// multipart/encrypted, application/pkcs7-mime or application/x-pkcs7-mime.
pub(crate) fn is_signed_or_encrypted(msg: &Message<'_>) -> bool {
    let Some(ct) = msg.root_part().content_type() else {
        return false;
    };
    let ctype = ct.ctype().to_ascii_lowercase();
    let sub = ct.subtype().unwrap_or("").to_ascii_lowercase();
    matches!(
        (ctype.as_str(), sub.as_str()),
        ("multipart", "signed")
            | ("multipart", "encrypted")
            | ("application", "pkcs7-mime")
            | ("application", "x-pkcs7-mime")
    )
}

/// The raw message with the header changes described above, for one group.
pub(crate) fn rewrite(
    raw: &[u8],
    group: &Group,
    header_to_cc: &[HeaderAddr],
    sender: &SenderPlan,
) -> Vec<u8> {
    let section = header_section(raw);
    let head = &raw[..section.fields_end];
    let eol: &[u8] = if head.windows(2).any(|w| w == b"\r\n") || head.is_empty() {
        b"\r\n"
    } else {
        b"\n"
    };

    let fields: Vec<&[u8]> = fields(head).collect();

    let keys = group.keys();
    let rewrite_to_cc = header_to_cc
        .iter()
        .any(|a| !keys.contains(&address_key(&a.address)))
        || fields.iter().any(|field| {
            let name = field_name(field);
            (name.eq_ignore_ascii_case("to") || name.eq_ignore_ascii_case("cc"))
                && names_outsider(field, &keys)
        });

    let mut out = Vec::with_capacity(raw.len() + 64 * (group.len() + 2));
    for field in fields {
        let name = field_name(field);
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("bcc") || (rewrite_to_cc && (is("to") || is("cc"))) {
            continue;
        }
        if let Some(mailbox) = &sender.rewrite_from {
            if is("sender") {
                continue;
            }
            if is("from") {
                push_field(&mut out, "From", &[plain(mailbox)], eol);
                continue;
            }
        }
        out.extend_from_slice(field);
        if !field.ends_with(b"\n") {
            out.extend_from_slice(eol);
        }
    }
    if rewrite_to_cc {
        push_field(&mut out, "To", &group.to, eol);
        push_field(&mut out, "Cc", &group.cc, eol);
    }
    push_field(&mut out, "Bcc", &group.bcc, eol);
    if sender.rewrite_from.is_some()
        && let Some(reply_to) = &sender.reply_to
    {
        push_field(&mut out, "Reply-To", std::slice::from_ref(reply_to), eol);
    }
    out.extend_from_slice(eol);
    out.extend_from_slice(&raw[section.body_start..]);
    out
}

/// Whether a `To:`/`Cc:` field, read on its own, names an address outside this group. The
/// whole-message parse is not enough: a malformed field before it can swallow it there, while
/// Exchange, reading the MIME we post, would still send to it (found by fuzzing).
fn names_outsider(field: &[u8], keys: &HashSet<String>) -> bool {
    let mut alone = field.to_vec();
    if !alone.ends_with(b"\n") {
        alone.extend_from_slice(b"\r\n");
    }
    alone.extend_from_slice(b"\r\n");
    let Some(msg) = MessageParser::default().parse(&alone[..]) else {
        return true;
    };
    header_addrs(msg.to().into_iter().chain(msg.cc()))
        .iter()
        .any(|a| !keys.contains(&address_key(&a.address)))
}

fn field_name(field: &[u8]) -> &str {
    let end = field.iter().position(|&b| b == b':').unwrap_or(0);
    std::str::from_utf8(&field[..end]).unwrap_or("").trim()
}

fn plain(address: &str) -> HeaderAddr {
    HeaderAddr {
        address: address.to_string(),
        name: None,
    }
}

/// `Name: a, b` folded after each address; nothing when the list is empty.
fn push_field(out: &mut Vec<u8>, name: &str, addrs: &[HeaderAddr], eol: &[u8]) {
    if addrs.is_empty() {
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    for (i, a) in addrs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
            out.extend_from_slice(eol);
            out.push(b' ');
        }
        out.extend_from_slice(format_addr(a).as_bytes());
    }
    out.extend_from_slice(eol);
}

fn format_addr(a: &HeaderAddr) -> String {
    match a.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => format!("{} <{}>", encode_phrase(name), a.address),
        None => a.address.clone(),
    }
}

/// A display name as a quoted string (ASCII) or RFC 2047 UTF-8 base64 encoded words.
fn encode_phrase(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        return format!("\"{escaped}\"");
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in name.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::Mailbox;

    fn ha(a: &str, n: Option<&str>) -> HeaderAddr {
        HeaderAddr {
            address: a.into(),
            name: n.map(Into::into),
        }
    }

    fn keep_sender() -> SenderPlan {
        SenderPlan {
            mailbox: Mailbox::User("a@x.org".into()),
            from: None,
            reply_to: None,
            rewrite_from: None,
        }
    }

    const RAW: &[u8] = b"From: a@x.org\r\nTo: B <b@x.org>\r\nBcc: old@x.org\r\nSubject: s\r\nContent-Type: multipart/signed; boundary=Z\r\n\r\n--Z\r\nbody\r\n--Z--\r\n";

    #[test]
    fn adds_bcc_keeps_to_when_all_present() {
        let group = Group {
            to: vec![ha("b@x.org", Some("B"))],
            cc: vec![],
            bcc: vec![ha("hidden@x.org", None)],
        };
        let out = rewrite(RAW, &group, &[ha("b@x.org", Some("B"))], &keep_sender());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "From: a@x.org\r\nTo: B <b@x.org>\r\nSubject: s\r\nContent-Type: multipart/signed; boundary=Z\r\nBcc: hidden@x.org\r\n\r\n--Z\r\nbody\r\n--Z--\r\n"
        );
    }

    #[test]
    fn a_to_that_a_malformed_field_hides_from_the_parse_is_still_rewritten() {
        // The whole-message parse lets the bad Content-Type parameter swallow the To line, so
        // convert sees no header To/Cc; Exchange would still read `To: a@ime` from the MIME.
        let raw = b"Content-Type: multipart/signed;\x01y\nTo: a@ime\n\nbody\n";
        let group = Group {
            to: vec![],
            cc: vec![],
            bcc: vec![ha("c@example.com", None)],
        };
        let out = String::from_utf8_lossy(&rewrite(raw, &group, &[], &keep_sender())).into_owned();
        assert!(!out.contains("a@ime"), "{out}");
        assert!(out.contains("Bcc: c@example.com\n"), "{out}");
        // A To naming only this group's recipients stays byte for byte.
        let group = Group {
            to: vec![ha("b@x.org", Some("B"))],
            cc: vec![],
            bcc: vec![],
        };
        let out = rewrite(RAW, &group, &[], &keep_sender());
        assert!(String::from_utf8_lossy(&out).contains("To: B <b@x.org>\r\n"));
    }

    #[test]
    fn rewrites_to_when_header_only_address_and_from_policy() {
        let group = Group {
            to: vec![],
            cc: vec![],
            bcc: vec![ha("c@x.org", None)],
        };
        let sender = SenderPlan {
            mailbox: Mailbox::User("relay@x.org".into()),
            from: None,
            reply_to: Some(ha("a@x.org", Some("Zoë"))),
            rewrite_from: Some("relay@x.org".into()),
        };
        let out = rewrite(RAW, &group, &[ha("b@x.org", Some("B"))], &sender);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "From: relay@x.org\r\nSubject: s\r\nContent-Type: multipart/signed; boundary=Z\r\nBcc: c@x.org\r\nReply-To: =?UTF-8?B?Wm/Dqw==?= <a@x.org>\r\n\r\n--Z\r\nbody\r\n--Z--\r\n"
        );
    }
}
