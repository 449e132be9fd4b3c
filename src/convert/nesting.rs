//! The MIME nesting limit: how deep multiparts and attached messages may nest before the relay
//! refuses a message. mail-parser's memory grows steeply with depth (400,000 levels in 30 MB
//! cost over 500 MB), so the depth is measured without it building anything: this walks the
//! message with mail-parser's own primitives (header parsing, boundary search, part end) in the
//! order its `parse` does, keeping only a stack of boundaries. Pure; linear in the message size,
//! except that base64 or quoted-printable attached messages are decoded to be walked too (as
//! mail-parser does, three levels deep).

use mail_parser::parsers::MessageStream;
use mail_parser::{GetHeader, HeaderName, HeaderValue, MessageParser};

/// Deepest nesting of multiparts and attached messages accepted: Postfix's default
/// `mime_nesting_limit` (100). Real mail stays far below it (Exchange itself keeps at most 30
/// levels of attached messages).
pub const MAX_MIME_NESTING: usize = 100;

/// How many levels of encoded attached messages mail-parser parses (its `MAX_NESTED_ENCODED`).
const ENCODED_LEVELS: usize = 3;

/// True when the message nests deeper than `limit`. Stops at the first level past it.
pub(crate) fn exceeds(raw: &[u8], limit: usize) -> bool {
    exceeds_at(raw, limit, ENCODED_LEVELS)
}

/// One entry of mail-parser's state stack, as far as depth is concerned.
#[derive(Default)]
struct Level {
    /// The boundary that ends the parts at this level.
    boundary: Option<Vec<u8>>,
    /// An attached message (or the top level): it ends at its parent's next boundary.
    message: bool,
    /// multipart/digest: a part without Content-Type is a message.
    digest: bool,
}

fn exceeds_at(raw: &[u8], limit: usize, encoded_levels: usize) -> bool {
    let conf = MessageParser::new();
    let mut stream = MessageStream::new(raw);
    let mut stack: Vec<Level> = Vec::new();
    let mut current = Level {
        message: true,
        ..Level::default()
    };
    let mut headers = Vec::new();
    'outer: loop {
        headers.clear();
        if !stream.parse_headers(&conf, &mut headers) {
            break;
        }
        let content_type = headers
            .header_value(&HeaderName::ContentType)
            .and_then(HeaderValue::as_content_type);
        let (ctype, subtype) = content_type.map_or(("", None), |c| (c.ctype(), c.subtype()));
        if ctype == "multipart"
            && let Some(boundary) = content_type.and_then(|c| c.attribute("boundary"))
            && stream.seek_next_part(boundary.as_bytes())
        {
            let inner = Level {
                boundary: Some(boundary.as_bytes().to_vec()),
                message: false,
                digest: subtype == Some("digest"),
            };
            stack.push(std::mem::replace(&mut current, inner));
            if stack.len() > limit {
                return true;
            }
            stream.skip_crlf();
            continue;
        }
        let is_message = match content_type {
            Some(_) => ctype == "message" && matches!(subtype, Some("rfc822" | "global")),
            None => current.digest,
        };
        let encoding = match headers.header_value(&HeaderName::ContentTransferEncoding) {
            Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("base64") => Some(true),
            Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("quoted-printable") => Some(false),
            _ => None,
        };
        if is_message && encoding.is_none() {
            let inner = Level {
                boundary: current.boundary.take(),
                message: true,
                digest: false,
            };
            stack.push(std::mem::replace(&mut current, inner));
            if stack.len() > limit {
                return true;
            }
            continue;
        }
        let boundary = current.boundary.clone().unwrap_or_default();
        let end = match encoding {
            Some(base64) if is_message && encoded_levels > 0 => {
                let (end, inner) = if base64 {
                    stream.decode_base64_mime(&boundary)
                } else {
                    stream.decode_quoted_printable_mime(&boundary)
                };
                let depth = stack.len() + 1;
                if end != usize::MAX
                    && (depth > limit || exceeds_at(&inner, limit - depth, encoded_levels - 1))
                {
                    return true;
                }
                end
            }
            // The bytes themselves do not matter here, only where the part ends.
            _ => stream.mime_part(&boundary).0,
        };
        if end == usize::MAX {
            let (_, found) = stream.seek_part_end(current.boundary.as_deref());
            if !found {
                current.boundary = None;
            }
        }
        if current.boundary.is_none() {
            if stream.offset() >= raw.len() {
                break;
            }
            continue;
        }
        loop {
            if current.message {
                // The attached message ended at its parent's boundary.
                let Some(mut parent) = stack.pop() else {
                    break 'outer;
                };
                parent.boundary = current.boundary.take();
                current = parent;
            }
            if !stream.is_multipart_end() {
                break; // the next part's headers follow
            }
            let Some(parent) = stack.pop() else {
                break 'outer;
            };
            current = parent;
            match &current.boundary {
                Some(b) if stream.seek_next_part_offset(b).is_some() => {}
                _ => break 'outer,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `depth` multiparts, each the only part of the one around it.
    pub(crate) fn nested(depth: usize) -> Vec<u8> {
        let mut raw = b"From: a@b.example\r\nTo: c@d.example\r\n".to_vec();
        for i in 0..depth {
            raw.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\ndeep\r\n");
        for i in (0..depth).rev() {
            raw.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
        }
        raw
    }

    #[test]
    fn counts_nested_multiparts() {
        assert!(!exceeds(&nested(3), 3));
        assert!(exceeds(&nested(4), 3));
        assert!(!exceeds(&nested(MAX_MIME_NESTING), MAX_MIME_NESTING));
        assert!(exceeds(&nested(400), MAX_MIME_NESTING));
    }

    #[test]
    fn siblings_are_not_depth() {
        let mut raw =
            b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n".to_vec();
        for _ in 0..300 {
            raw.extend_from_slice(
                b"--o\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\nx\r\n--i--\r\n",
            );
        }
        raw.extend_from_slice(b"--o--\r\n");
        assert!(!exceeds(&raw, 2));
        assert!(exceeds(&raw, 1));
    }

    #[test]
    fn attached_messages_count_plain_and_encoded() {
        let inner = String::from_utf8(nested(2)).expect("ascii");
        let plain = format!(
            "From: a@b.example\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--o--\r\n"
        );
        // multipart, message, then the inner two multiparts.
        assert!(!exceeds(plain.as_bytes(), 4));
        assert!(exceeds(plain.as_bytes(), 3));
        use base64::Engine as _;
        let encoded = format!(
            "From: a@b.example\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--o--\r\n",
            base64::engine::general_purpose::STANDARD.encode(inner.as_bytes())
        );
        assert!(!exceeds(encoded.as_bytes(), 4));
        assert!(exceeds(encoded.as_bytes(), 3));
    }

    #[test]
    fn flat_and_odd_mail_is_shallow() {
        for raw in [
            &b"From: a@b\r\n\r\nbody"[..],
            b"no headers at all",
            b"",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\nno boundary ever",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nunterminated",
        ] {
            assert!(!exceeds(raw, 1), "{:?}", String::from_utf8_lossy(raw));
        }
    }
}
