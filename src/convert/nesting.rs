//! The MIME structure limits: how deep multiparts and attached messages may nest, how many parts
//! there may be and how many bytes their header sections may hold, before the relay refuses a
//! message. mail-parser's memory grows steeply with each (a part costs ~200 bytes however small,
//! a header byte up to ~40), so this measures them without it building anything: it walks the
//! message in the order mail-parser's `parse` does, with its boundary search and part end, but
//! reads each part's header section itself, keeping only Content-Type and
//! Content-Transfer-Encoding. Pure; linear in the message size, except that base64 or
//! quoted-printable attached messages are decoded to be walked too (as mail-parser does, three
//! levels deep). The same walk measures the [`MimeShape`] that sizes the conversion's share of
//! the memory budget.

use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;

use super::MAX_INLINE_ATTACHMENT_BYTES;
use crate::memory::MimeShape;

/// Deepest nesting of multiparts and attached messages accepted: Postfix's default
/// `mime_nesting_limit` (100). Real mail stays far below it (Exchange itself keeps at most 30
/// levels of attached messages).
pub const MAX_MIME_NESTING: usize = 100;
/// Most MIME parts accepted. Exchange takes 250 attachments; mail with more parts than this is
/// never real, and each costs mail-parser a few hundred bytes even when empty.
pub const MAX_MIME_PARTS: usize = 10_000;
/// Most bytes all the parts' header sections together may hold (the top-level one is bounded
/// by `text::prepare` instead). A real part's headers take a few hundred bytes.
pub const MAX_PART_HEADER_BYTES: usize = 1024 * 1024;

/// How many levels of encoded attached messages mail-parser parses (its `MAX_NESTED_ENCODED`).
const ENCODED_LEVELS: usize = 3;

/// Which limit a message is past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Excess {
    Depth,
    Parts,
    HeaderBytes,
}

/// The first limit `raw` (as mail-parser will get it) is past, if any (the walk stops there),
/// else its shape.
pub(crate) fn check(raw: &[u8]) -> Result<MimeShape, Excess> {
    let mut seen = Seen::default();
    walk(raw, 0, ENCODED_LEVELS, &mut seen)?;
    Ok(seen.shape)
}

/// Counts over the whole walk, nested encoded messages included.
#[derive(Default)]
struct Seen {
    /// The parts' header bytes, which [`MAX_PART_HEADER_BYTES`] bounds (not the top level's).
    part_header_bytes: usize,
    shape: MimeShape,
}

impl Seen {
    /// One more part, whose header section is `bytes` long.
    fn part(&mut self, bytes: usize, top_level: bool) -> Result<(), Excess> {
        self.shape.header_bytes += bytes as u64;
        if !top_level {
            self.part_header_bytes += bytes;
            if self.part_header_bytes > MAX_PART_HEADER_BYTES {
                return Err(Excess::HeaderBytes);
            }
        }
        self.shape.parts += 1;
        if self.shape.parts > MAX_MIME_PARTS as u64 {
            return Err(Excess::Parts);
        }
        Ok(())
    }

    /// A part's body of `bytes` bytes, of this kind.
    fn body(&mut self, bytes: usize, kind: Body) {
        let sum = match kind {
            Body::Streamed => &mut self.shape.streamed_bytes,
            Body::Attachment => &mut self.shape.attachment_bytes,
            Body::Text => &mut self.shape.text_bytes,
        };
        *sum += bytes as u64;
    }
}

/// What convert does with a part's body, as far as its memory goes (see [`MimeShape`]).
enum Body {
    Streamed,
    Attachment,
    Text,
}

/// One entry of mail-parser's state stack, as far as the structure is concerned.
#[derive(Default)]
struct Level {
    /// The boundary that ends the parts at this level.
    boundary: Option<Vec<u8>>,
    /// An attached message (or the top level): it ends at its parent's next boundary.
    message: bool,
    /// multipart/digest: a part without Content-Type is a message.
    digest: bool,
}

/// `depth`: levels above this message (it is an encoded attached message when > 0).
fn walk(raw: &[u8], depth: usize, encoded_levels: usize, seen: &mut Seen) -> Result<(), Excess> {
    let mut stream = MessageStream::new(raw);
    let mut stack: Vec<Level> = Vec::new();
    let mut current = Level {
        message: true,
        ..Level::default()
    };
    'outer: loop {
        let start = stream.offset();
        let Some(fields) = read_fields(raw, start) else {
            break;
        };
        stream.skip_bytes(fields.end - start);
        seen.part(fields.end - start, depth + stack.len() == 0)?;
        let content_type = fields
            .content_type
            .map(|v| MessageStream::new(v).parse_content_type());
        let content_type = content_type.as_ref().and_then(HeaderValue::as_content_type);
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
            if depth + stack.len() > MAX_MIME_NESTING {
                return Err(Excess::Depth);
            }
            stream.skip_crlf();
            continue;
        }
        let is_message = match content_type {
            Some(_) => ctype == "message" && matches!(subtype, Some("rfc822" | "global")),
            None => current.digest,
        };
        let encoding =
            fields
                .encoding
                .and_then(|v| match MessageStream::new(v).parse_unstructured() {
                    HeaderValue::Text(e) if e.eq_ignore_ascii_case("base64") => Some(true),
                    HeaderValue::Text(e) if e.eq_ignore_ascii_case("quoted-printable") => {
                        Some(false)
                    }
                    _ => None,
                });
        if is_message && encoding.is_none() {
            let inner = Level {
                boundary: current.boundary.take(),
                message: true,
                digest: false,
            };
            stack.push(std::mem::replace(&mut current, inner));
            if depth + stack.len() > MAX_MIME_NESTING {
                return Err(Excess::Depth);
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
                let inner_depth = depth + stack.len() + 1;
                if end != usize::MAX {
                    if inner_depth > MAX_MIME_NESTING {
                        return Err(Excess::Depth);
                    }
                    walk(&inner, inner_depth, encoded_levels - 1, seen)?;
                }
                end
            }
            // The bytes themselves do not matter here, only where the part ends.
            _ => stream.mime_part(&boundary).0,
        };
        // mail-parser keeps a part as text when it is typed text (or not typed), or a multipart
        // whose boundary never shows.
        let binary =
            content_type.is_some() && !is_message && !matches!(ctype, "text" | "multipart");
        let kind = body_kind(
            raw.get(fields.end..end),
            binary && in_top_message(depth, &stack, &current),
            encoding,
        );
        if end == usize::MAX {
            let (_, found) = stream.seek_part_end(current.boundary.as_deref());
            if !found {
                current.boundary = None;
            }
        }
        // An encoded attached message's parts are inside its body, counted once as the outer
        // part's bytes.
        if depth == 0 {
            seen.body(stream.offset().saturating_sub(fields.end), kind);
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
    Ok(())
}

/// Whether a part met at this point of the walk belongs to the message itself, not to a message
/// attached to it (which convert copies whole, as one attachment).
fn in_top_message(depth: usize, stack: &[Level], current: &Level) -> bool {
    let in_attached =
        stack.iter().skip(1).any(|l| l.message) || (current.message && !stack.is_empty());
    depth == 0 && !in_attached
}

/// What convert does with a part's body: `None` when its end was not found (mail-parser keeps it
/// as text then); `binary` when mail-parser keeps it as bytes and convert makes it an
/// attachment of its own; `encoding` as in the walk (`Some(true)`: base64).
fn body_kind(body: Option<&[u8]>, binary: bool, encoding: Option<bool>) -> Body {
    match (body, encoding) {
        (Some(_), _) if !binary => Body::Text,
        // Base64 that does not decode is kept as text too.
        (Some(base64), Some(true)) => match base64_decoded_len(base64) {
            Some(n) if n >= MAX_INLINE_ATTACHMENT_BYTES => Body::Streamed,
            Some(_) => Body::Attachment,
            None => Body::Text,
        },
        (Some(_), _) => Body::Attachment,
        (None, _) => Body::Text,
    }
}

/// How many bytes base64 `text` decodes to; `None` when it holds a byte mail-parser's decoder
/// refuses (it then keeps the part as text).
fn base64_decoded_len(text: &[u8]) -> Option<usize> {
    // Byte lanes and no early return, so the compiler vectorizes it (30 MB: ~15 ms, not ~65).
    let (mut symbols, mut refused) = (0usize, 0u8);
    for chunk in text.chunks(u8::MAX as usize) {
        let mut in_chunk = 0u8;
        for &b in chunk {
            let letter = (b | 0x20).wrapping_sub(b'a') < 26;
            let symbol = letter | (b.wrapping_sub(b'0') < 10) | (b == b'+') | (b == b'/');
            let skipped = (b == b'=') | (b == b' ') | (b == b'\t') | (b == b'\r') | (b == b'\n');
            in_chunk += u8::from(symbol);
            refused |= u8::from(!(symbol | skipped));
        }
        symbols += usize::from(in_chunk);
    }
    (refused == 0).then_some(symbols / 4 * 3)
}

/// The two fields of a header section that decide the structure (raw values, the last of each
/// name wins, as in mail-parser), and where the section ends.
struct Fields<'a> {
    content_type: Option<&'a [u8]>,
    encoding: Option<&'a [u8]>,
    end: usize,
}

/// Reads a header section from `pos` the way mail-parser's `parse_headers` does: blanks before a
/// field are skipped and an LF reached that way ends the section; a name is every non-blank
/// byte up to the first colon after one (lower-cased); a line with no such colon is skipped; a
/// value runs to the first LF not followed by a space or tab. `None` when the input ends before
/// the section does and no field was read (mail-parser then has no part here).
fn read_fields(raw: &[u8], mut pos: usize) -> Option<Fields<'_>> {
    let mut fields = Fields {
        content_type: None,
        encoding: None,
        end: raw.len(),
    };
    let mut any = false;
    loop {
        while pos < raw.len() && raw[pos] != b'\n' && raw[pos].is_ascii_whitespace() {
            pos += 1;
        }
        match raw.get(pos) {
            None => return any.then_some(fields),
            Some(b'\n') => {
                fields.end = pos + 1;
                return Some(fields);
            }
            Some(_) => {}
        }
        // The name: up to 26 bytes are enough to tell the two names apart.
        let mut name = [0u8; 26];
        let mut len = 0;
        let mut named = false;
        while let Some(&b) = raw.get(pos) {
            pos += 1;
            match b {
                b':' if len > 0 => {
                    named = true;
                    break;
                }
                b'\n' => break,
                b if b.is_ascii_whitespace() || b == b':' => {}
                b => {
                    if let Some(slot) = name.get_mut(len) {
                        *slot = b.to_ascii_lowercase();
                    }
                    len += 1;
                }
            }
        }
        if !named {
            if pos >= raw.len() && raw.last() != Some(&b'\n') {
                return any.then_some(fields);
            }
            continue;
        }
        any = true;
        let start = pos;
        loop {
            match raw[pos..].iter().position(|&b| b == b'\n') {
                Some(i) => pos += i + 1,
                None => pos = raw.len(),
            }
            if !matches!(raw.get(pos), Some(b' ' | b'\t')) {
                break;
            }
        }
        let value = &raw[start..pos];
        match name.get(..len) {
            Some(b"content-type") => fields.content_type = Some(value),
            Some(b"content-transfer-encoding") => fields.encoding = Some(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit check alone.
    fn verdict(raw: &[u8]) -> Result<(), Excess> {
        check(raw).map(drop)
    }

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
        assert_eq!(verdict(&nested(MAX_MIME_NESTING)), Ok(()));
        assert_eq!(verdict(&nested(MAX_MIME_NESTING + 1)), Err(Excess::Depth));
        assert_eq!(verdict(&nested(400_000)), Err(Excess::Depth));
        // mail-parser reads `Content - Type` as Content-Type too.
        let spaced = String::from_utf8(nested(MAX_MIME_NESTING + 1))
            .expect("ascii")
            .replace("Content-Type", "Content - Type");
        assert_eq!(verdict(spaced.as_bytes()), Err(Excess::Depth));
    }

    #[test]
    fn siblings_are_parts_not_depth() {
        let siblings = |n: usize| {
            let mut raw =
                b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n".to_vec();
            for _ in 0..n {
                raw.extend_from_slice(
                    b"--o\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\nx\r\n--i--\r\n",
                );
            }
            raw.extend_from_slice(b"--o--\r\n");
            raw
        };
        // The top level, then two parts per sibling.
        assert_eq!(verdict(&siblings((MAX_MIME_PARTS - 1) / 2)), Ok(()));
        assert_eq!(verdict(&siblings(MAX_MIME_PARTS / 2)), Err(Excess::Parts));
    }

    #[test]
    fn part_headers_are_bounded() {
        let mut raw = b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n".to_vec();
        raw.extend(std::iter::repeat_n(&b"X:1\r\n"[..], MAX_PART_HEADER_BYTES / 5).flatten());
        raw.extend_from_slice(b"\r\nx\r\n--o--\r\n");
        assert_eq!(verdict(&raw), Err(Excess::HeaderBytes));
    }

    #[test]
    fn attached_messages_count_plain_and_encoded() {
        let inner = String::from_utf8(nested(MAX_MIME_NESTING - 2)).expect("ascii");
        let wrap = |cte: &str, body: &str| {
            format!(
                "From: a@b.example\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n{cte}\r\n{body}\r\n--o--\r\n"
            )
        };
        // multipart, message, then the inner levels: exactly the limit.
        assert_eq!(verdict(wrap("", &inner).as_bytes()), Ok(()));
        let deeper = String::from_utf8(nested(MAX_MIME_NESTING - 1)).expect("ascii");
        assert_eq!(verdict(wrap("", &deeper).as_bytes()), Err(Excess::Depth));
        use base64::Engine as _;
        let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let cte = "Content-Transfer-Encoding: base64\r\n";
        assert_eq!(verdict(wrap(cte, &encode(&inner)).as_bytes()), Ok(()));
        assert_eq!(
            verdict(wrap(cte, &encode(&deeper)).as_bytes()),
            Err(Excess::Depth)
        );
    }

    #[test]
    fn flat_and_odd_mail_passes() {
        for raw in [
            &b"From: a@b\r\n\r\nbody"[..],
            b"\r\nno headers at all",
            b"",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\nno boundary ever",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nunterminated",
            b"no colon\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\n--x--",
        ] {
            assert_eq!(verdict(raw), Ok(()), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    /// A multipart/mixed message: each part a header section (no blank line) and a body.
    fn mixed(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut raw = format!(
            "From: a@b.example\r\nContent-Type: multipart/mixed; boundary={boundary}\r\n\r\n"
        )
        .into_bytes();
        for (head, body) in parts {
            raw.extend_from_slice(format!("--{boundary}\r\n{head}\r\n\r\n").as_bytes());
            raw.extend_from_slice(body);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        raw
    }

    /// Base64 of `decoded` zero bytes, in 76-column lines.
    fn base64_of(decoded: usize) -> Vec<u8> {
        let text = "A".repeat(decoded.div_ceil(3) * 4);
        text.as_bytes()
            .chunks(76)
            .flat_map(|l| [l, b"\r\n"].concat())
            .collect()
    }

    /// `got` is `want` plus at most the CRLF and boundary after a body.
    fn assert_body_bytes(got: u64, want: usize) {
        let want = want as u64;
        assert!(
            (want..want + 16).contains(&got),
            "{got} bytes, {want} expected"
        );
    }

    const PDF: &str = "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64";

    #[test]
    fn shape_counts_parts_and_every_header_section() -> Result<(), Excess> {
        let top = "From: a@b.example\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n";
        let raw = format!("{top}--o\r\nX-A: 1\r\n\r\nx\r\n--o\r\n\r\ny\r\n--o--\r\n");
        let shape = check(raw.as_bytes())?;
        assert_eq!(shape.parts, 3);
        assert_eq!(
            shape.header_bytes as usize,
            top.len() + "X-A: 1\r\n\r\n".len() + 2
        );
        Ok(())
    }

    #[test]
    fn shape_streams_only_big_binary_base64_at_the_top() -> Result<(), Excess> {
        let big = base64_of(MAX_INLINE_ATTACHMENT_BYTES);
        let under = base64_of(MAX_INLINE_ATTACHMENT_BYTES - 3);
        let mut broken = big.clone();
        broken[100] = b'*';
        let csv = "Content-Type: text/csv\r\nContent-Transfer-Encoding: base64";
        let shape = check(&mixed(
            "o",
            &[
                ("Content-Type: text/plain", b"hello"),
                (PDF, &big),
                (PDF, &under),
                (csv, &big),
                (PDF, &broken),
            ],
        ))?;
        assert_eq!(shape.parts, 6);
        assert_body_bytes(shape.streamed_bytes, big.len());
        assert_body_bytes(shape.attachment_bytes, under.len());
        // The text, the CSV (text, never streamed) and the PDF mail-parser cannot decode.
        assert!(shape.text_bytes >= (5 + 2 * big.len()) as u64);
        assert!(shape.text_bytes < (5 + 2 * big.len() + 48) as u64);
        Ok(())
    }

    #[test]
    fn shape_counts_an_attached_message_whole_as_text() -> Result<(), Excess> {
        let big = base64_of(MAX_INLINE_ATTACHMENT_BYTES);
        let inner = mixed("i", &[(PDF, &big)]);
        let plain = check(&mixed("o", &[("Content-Type: message/rfc822", &inner)]))?;
        assert_eq!((plain.streamed_bytes, plain.attachment_bytes), (0, 0));
        assert_body_bytes(plain.text_bytes, big.len());
        assert_eq!(plain.parts, 4); // the top, the attached message, its top, its PDF

        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&inner);
        let cte = "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64";
        let shape = check(&mixed("o", &[(cte, encoded.as_bytes())]))?;
        // Its encoded bytes, once: not its parts again.
        assert_eq!((shape.streamed_bytes, shape.attachment_bytes), (0, 0));
        assert_body_bytes(shape.text_bytes, encoded.len());
        assert_eq!(shape.parts, 4);
        Ok(())
    }
}
