//! Body and attachments: picks the Graph body (HTML when the message has an HTML part, else
//! text; charsets already decoded to UTF-8 by mail-parser) and turns every other part into an
//! attachment with a decoded, safe name. Pure; never loses a part (a broken multipart becomes
//! text), never panics.
//!
//! Inline: a part is `isInline` with `contentId` exactly when it has a Content-ID that the HTML
//! body refers to (`cid:`). An "inline" part the HTML never shows becomes a normal attachment,
//! because Outlook hides unreferenced inline attachments and the recipient would never see it.

use std::collections::HashSet;
use std::ops::Range;

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{Encoding, Message, MessagePart, MimeHeaders, PartType};

use sha2::{Digest, Sha256};

use super::base64_stream::Base64Decoder;
use super::graph_json::{BodyType, ItemBody};
use super::html;
use super::text::{self, Prepared, body_text, one_line};
use super::{AttachmentData, LargeAttachment, MAX_INLINE_ATTACHMENT_BYTES};

/// Body and attachments of one message.
#[derive(Debug, Clone)]
pub(crate) struct Content {
    pub body: ItemBody,
    pub parts: Vec<LargeAttachment>,
}

struct Found {
    name: Option<String>,
    content_type: String,
    content_id: Option<String>,
    is_inline: bool,
    size: usize,
    data: AttachmentData,
    /// A nested message's subject, for naming `.eml` files.
    message_subject: Option<String>,
}

/// `prepared` is what `msg` was parsed from; `spooled` the message as the spool holds it.
pub(crate) fn extract(msg: &Message<'_>, prepared: &Prepared<'_>, spooled: &[u8]) -> Content {
    let parsed: &[u8] = &prepared.bytes;
    let bare_texts: Vec<&MessagePart<'_>> = msg.attachments().filter(|p| is_bare_text(p)).collect();
    let html_parts: Vec<&MessagePart<'_>> = (0..msg.html_body_count())
        .filter_map(|i| msg.html_part(i as u32))
        .collect();
    let has_html = html_parts.iter().any(|p| p.is_text_html());
    let mut body = if has_html {
        let docs: Vec<String> = html_parts
            .iter()
            .chain(&bare_texts)
            .filter_map(|p| match &p.body {
                PartType::Html(h) => Some(h.to_string()),
                PartType::Text(_) => Some(html::text_fragment(&plain_text(p))),
                _ => None,
            })
            .collect();
        ItemBody {
            content_type: BodyType::Html,
            content: html::meta_charset_utf8(&html::join_documents(&docs)),
        }
    } else {
        let mut s = String::new();
        let text_parts = (0..msg.text_body_count()).filter_map(|i| msg.text_part(i as u32));
        for p in text_parts.chain(bare_texts.iter().copied()) {
            if matches!(p.body, PartType::Text(_)) {
                if !s.is_empty() && !s.ends_with('\n') {
                    s.push_str("\r\n");
                }
                s.push_str(&plain_text(p));
            }
        }
        ItemBody {
            content_type: BodyType::Text,
            content: s,
        }
    };

    let cids = if has_html {
        cid_references(&body.content)
    } else {
        HashSet::new()
    };

    let mut found: Vec<Found> = Vec::new();
    for p in msg.attachments().filter(|p| !is_bare_text(p)) {
        let (ctype, subtype) = type_of(p);
        // A multipart whose boundary never showed up: mail-parser hands it back as text.
        if ctype == "multipart" {
            let text = String::from_utf8_lossy(p.contents()).into_owned();
            if body.content.trim().is_empty() {
                body = ItemBody {
                    content_type: BodyType::Text,
                    content: text,
                };
            } else if !text.trim().is_empty() {
                found.push(Found {
                    name: None,
                    content_type: "text/plain".into(),
                    content_id: None,
                    is_inline: false,
                    size: text.len(),
                    data: AttachmentData::Bytes(text.into_bytes().into()),
                    message_subject: None,
                });
            }
            continue;
        }
        let is_message = p.is_message() || (ctype == "message" && subtype == "rfc822");
        let content_type = if is_message {
            "message/rfc822".to_string()
        } else if ctype.is_empty() || subtype.is_empty() {
            "application/octet-stream".to_string()
        } else {
            format!("{ctype}/{subtype}")
        };
        let content_id = p
            .content_id()
            .map(|c| {
                c.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .trim()
            })
            .filter(|c| !c.is_empty() && !c.chars().any(char::is_control))
            .map(str::to_string);
        let is_inline = content_id
            .as_deref()
            .is_some_and(|c| cids.contains(&c.to_lowercase()));
        let (size, data) = part_data(p, parsed, prepared, spooled);
        found.push(Found {
            name: p
                .attachment_name()
                .map(clean_file_name)
                .filter(|n| !n.is_empty()),
            content_type,
            content_id,
            is_inline,
            size,
            data,
            message_subject: p.message().and_then(|m| m.subject()).map(one_line),
        });
    }

    // Google Calendar sends the invitation twice: as a text/calendar alternative and as an
    // application/ics attachment with the same bytes. Keep one.
    let dup_calendar = |i: usize, f: &Found| {
        f.content_type == "text/calendar"
            && f.name.is_none()
            && found
                .iter()
                .enumerate()
                .any(|(j, g)| j != i && g.data == f.data && (g.name.is_some() || j < i))
    };
    let keep: Vec<bool> = found
        .iter()
        .enumerate()
        .map(|(i, f)| !dup_calendar(i, f))
        .collect();

    let mut parts = Vec::new();
    for (f, keep) in found.into_iter().zip(keep) {
        if !keep {
            continue;
        }
        let index = parts.len() + 1;
        let name = name_for(&f, index);
        parts.push(LargeAttachment {
            name,
            content_type: f.content_type,
            is_inline: f.is_inline,
            content_id: f.content_id,
            size: f.size,
            data: f.data,
        });
    }

    body.content = body_text(&body.content).into_owned();
    Content { body, parts }
}

/// A text/plain part's text, with `format=flowed` undone.
fn plain_text(p: &MessagePart<'_>) -> String {
    let text = match &p.body {
        PartType::Text(t) => t.as_ref(),
        _ => "",
    };
    let ct = p.content_type();
    let attr_is = |name: &str, value: &str| {
        ct.and_then(|c| c.attribute(name))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    if attr_is("format", "flowed") {
        text::unflow(text, attr_is("delsp", "yes"))
    } else {
        text.to_string()
    }
}

/// `Content-Type: text` with no subtype (an old PHP mailer's, a script's) is not valid MIME, and
/// RFC 2045 section 5.2 reads an invalid Content-Type as text/plain; so do mail readers
/// (Thunderbird, Outlook) and Postfix. mail-parser makes the part an attachment instead; a part
/// like that which is not named or marked as an attachment is body text here.
fn is_bare_text(p: &MessagePart<'_>) -> bool {
    matches!(p.body, PartType::Text(_))
        && p.content_type().is_some_and(|c| {
            c.ctype().eq_ignore_ascii_case("text")
                && c.subtype().is_none_or(|s| s.trim().is_empty())
        })
        && p.attachment_name().is_none()
        && !p.content_disposition().is_some_and(|d| d.is_attachment())
}

/// Lower-cased (type, subtype); a part without Content-Type, or with a bare `text`, is
/// text/plain.
fn type_of(p: &MessagePart<'_>) -> (String, String) {
    match p.content_type() {
        Some(ct) => {
            let ctype = ct.ctype().trim().to_ascii_lowercase();
            let subtype = ct.subtype().unwrap_or("").trim().to_ascii_lowercase();
            if ctype == "text" && subtype.is_empty() {
                (ctype, "plain".into())
            } else {
                (ctype, subtype)
            }
        }
        None => ("text".into(), "plain".into()),
    }
}

/// The attachment's decoded size and bytes. A large base64 binary part stays in the spool as a
/// range (decoded again while it is uploaded) once that range is proven to decode to exactly
/// the bytes mail-parser decoded; anything else is copied out of the parsed message.
fn part_data(
    p: &MessagePart<'_>,
    parsed: &[u8],
    prepared: &Prepared<'_>,
    spooled: &[u8],
) -> (usize, AttachmentData) {
    let size = p.contents().len();
    let streamable = p.encoding == Encoding::Base64
        && !p.is_encoding_problem
        && matches!(p.body, PartType::Binary(_) | PartType::InlineBinary(_))
        && size >= MAX_INLINE_ATTACHMENT_BYTES;
    let start = prepared.spooled_offset(p.offset_body as usize);
    let end = prepared.spooled_offset(p.offset_end as usize);
    if streamable && let (Some(start), Some(end)) = (start, end) {
        let encoded = start..end;
        match verify_range(spooled, encoded.clone(), p.contents()) {
            Ok(sha256) => return (size, AttachmentData::Base64 { encoded, sha256 }),
            // Never stream bytes that are not the attachment: keep the parsed copy instead.
            Err(why) => tracing::error!(
                range = ?encoded,
                size,
                "streamed attachment range does not match the parse ({why}); keeping the attachment in memory"
            ),
        }
    }
    let bytes = part_bytes(p, parsed);
    (bytes.len(), AttachmentData::Bytes(bytes.into()))
}

/// Decodes `encoded` of the spooled message a block at a time, the way the upload will, and
/// compares it with what mail-parser decoded. `Ok` holds the SHA-256 the upload checks again.
fn verify_range(spooled: &[u8], encoded: Range<usize>, decoded: &[u8]) -> Result<[u8; 32], String> {
    let text = spooled
        .get(encoded.clone())
        .ok_or_else(|| format!("range past the message's {} bytes", spooled.len()))?;
    let mut decoder = Base64Decoder::default();
    let mut out = Vec::with_capacity(VERIFY_BLOCK / 4 * 3 + 3);
    let mut at = 0;
    for block in text.chunks(VERIFY_BLOCK) {
        out.clear();
        decoder.feed(block, &mut out).map_err(|e| e.to_string())?;
        if decoded.get(at..at + out.len()) != Some(&out[..]) {
            return Err(format!("decodes differently at byte {at}"));
        }
        at += out.len();
    }
    if at != decoded.len() {
        return Err(format!("decodes to {at} bytes, not {}", decoded.len()));
    }
    Ok(Sha256::digest(decoded).into())
}

/// Base64 text decoded at a time when a streamed range is checked.
const VERIFY_BLOCK: usize = 64 * 1024;

/// The attachment's bytes as the sender attached them: transfer encoding removed. Text parts in
/// a charset other than UTF-8/ASCII are taken from the raw part again, because mail-parser has
/// already converted them to UTF-8 (a windows-1252 CSV must stay windows-1252).
fn part_bytes(p: &MessagePart<'_>, raw: &[u8]) -> Vec<u8> {
    if matches!(p.body, PartType::Text(_) | PartType::Html(_)) && !p.is_encoding_problem {
        let charset = p
            .content_type()
            .and_then(|c| c.attribute("charset"))
            .map(|c| c.trim().to_ascii_lowercase());
        let converted = charset
            .as_deref()
            .is_some_and(|c| !matches!(c, "utf-8" | "utf8" | "us-ascii" | "ascii" | ""));
        if converted && let Some(slice) = raw.get(p.offset_body as usize..p.offset_end as usize) {
            let decoded = match p.encoding {
                Encoding::Base64 => base64_decode(slice),
                Encoding::QuotedPrintable => quoted_printable_decode(slice),
                Encoding::None => Some(slice.to_vec()),
            };
            if let Some(bytes) = decoded {
                return bytes;
            }
        }
    }
    p.contents().to_vec()
}

/// Lower-cased targets of every `cid:` reference in the HTML, raw and percent-decoded.
fn cid_references(html: &str) -> HashSet<String> {
    let lower = html.to_lowercase();
    let mut out = HashSet::new();
    let mut rest = lower.as_str();
    while let Some(pos) = rest.find("cid:") {
        rest = &rest[pos + 4..];
        let end = rest
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '>' | '<' | ')' | '(' | '&' | ';')
            })
            .unwrap_or(rest.len());
        let target = &rest[..end];
        if !target.is_empty() {
            out.insert(percent_decode(target));
            out.insert(target.to_string());
        }
        rest = &rest[end..];
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// A display file name: last path component only, control characters removed, trimmed.
pub(crate) fn clean_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned = one_line(last);
    let cleaned = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    truncate_keep_extension(cleaned, 200)
}

fn truncate_keep_extension(name: &str, max_chars: usize) -> String {
    if name.chars().count() <= max_chars {
        return name.to_string();
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() && e.chars().count() <= 10 => (s, Some(e)),
        _ => (name, None),
    };
    let room = max_chars - ext.map_or(0, |e| e.chars().count() + 1);
    let mut out: String = stem.chars().take(room).collect();
    if let Some(e) = ext {
        out.push('.');
        out.push_str(e);
    }
    out
}

fn name_for(f: &Found, index: usize) -> String {
    if f.content_type == "message/rfc822" {
        let base = f.name.clone().or_else(|| {
            f.message_subject
                .as_deref()
                .map(|s| s.replace(['/', '\\', ':', '*', '?', '"', '<', '>', '|'], "_"))
                .map(|s| truncate_keep_extension(s.trim(), 100))
                .filter(|s| !s.is_empty())
        });
        return match base {
            Some(b) if b.to_ascii_lowercase().ends_with(".eml") => b,
            Some(b) => format!("{b}.eml"),
            None => format!("attachment-{index}.eml"),
        };
    }
    if let Some(n) = &f.name {
        return n.clone();
    }
    if f.content_type == "text/calendar" {
        return "invite.ics".into();
    }
    format!("attachment-{index}.{}", extension(&f.content_type))
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "application/pdf" => "pdf",
        "image/png" => "png",
        "image/jpeg" | "image/jpg" | "image/pjpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/bmp" => "bmp",
        "image/tiff" => "tif",
        "image/svg+xml" => "svg",
        "image/heic" => "heic",
        "text/plain" => "txt",
        "text/html" => "html",
        "text/csv" => "csv",
        "text/calendar" | "application/ics" => "ics",
        "text/xml" | "application/xml" => "xml",
        "application/json" => "json",
        "application/zip" | "application/x-zip-compressed" => "zip",
        "application/gzip" | "application/x-gzip" => "gz",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.ms-excel" => "xls",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        "audio/mpeg" => "mp3",
        "audio/wav" | "audio/x-wav" => "wav",
        "video/mp4" => "mp4",
        "message/rfc822" => "eml",
        "application/pkcs7-signature" | "application/x-pkcs7-signature" => "p7s",
        "application/pgp-signature" => "asc",
        t if t.starts_with("text/") => "txt",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    fn content(raw: &[u8]) -> Content {
        let prepared = text::prepare(raw);
        let msg = MessageParser::new()
            .parse(&prepared.bytes[..])
            .expect("parses");
        extract(&msg, &prepared, raw)
    }

    fn bytes(part: &LargeAttachment) -> &[u8] {
        match &part.data {
            AttachmentData::Bytes(b) => b,
            AttachmentData::Base64 { .. } => panic!("{} is streamed", part.name),
        }
    }

    #[test]
    fn html_preferred_and_type_from_actual_part() {
        let c = content(b"From: a@b\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nplain\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--B--\r\n");
        assert_eq!(c.body.content_type, BodyType::Html);
        assert_eq!(c.body.content, "<p>html</p>");
        let c = content(b"From: a@b\r\n\r\nonly text\r\n");
        assert_eq!(c.body.content_type, BodyType::Text);
        assert_eq!(c.body.content, "only text\r\n");
        assert!(c.parts.is_empty());
    }

    #[test]
    fn inline_only_when_html_refers_to_cid() {
        let raw = b"From: a@b\r\nContent-Type: multipart/related; boundary=B\r\n\r\n--B\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:Logo%40x\">\r\n--B\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n--B\r\nContent-Type: image/gif\r\nContent-ID: <unused@x>\r\nContent-Disposition: inline\r\n\r\nGIF89a\r\n--B--\r\n";
        let c = content(raw);
        assert_eq!(c.parts.len(), 2);
        assert!(c.parts[0].is_inline);
        assert_eq!(c.parts[0].content_id.as_deref(), Some("logo@x"));
        assert_eq!(c.parts[0].name, "attachment-1.png");
        assert_eq!(bytes(&c.parts[0]), b"\x89PNG\r\n");
        assert!(!c.parts[1].is_inline);
        assert_eq!(c.parts[1].name, "attachment-2.gif");
    }

    #[test]
    fn names_are_cleaned_and_generated() {
        assert_eq!(clean_file_name("C:\\fakepath\\report.pdf"), "report.pdf");
        assert_eq!(clean_file_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_file_name(" a\r\nb.txt "), "a b.txt");
        let long = format!("{}.pdf", "x".repeat(300));
        let got = clean_file_name(&long);
        assert_eq!(got.chars().count(), 200);
        assert!(got.ends_with(".pdf"));
    }

    #[test]
    fn broken_boundary_keeps_text() {
        let c = content(b"From: a@b\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--YY\r\nContent-Type: text/plain\r\n\r\nhello\r\n--YY--\r\n");
        assert_eq!(c.body.content_type, BodyType::Text);
        assert!(c.body.content.contains("hello"));
        assert!(c.parts.is_empty());
    }

    #[test]
    fn text_attachment_keeps_its_charset_bytes() {
        let c = content(b"From: a@b\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee csv\r\n--B\r\nContent-Type: text/csv; charset=windows-1252; name=\"x.csv\"\r\nContent-Disposition: attachment; filename=\"x.csv\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9;=80\r\n--B--\r\n");
        assert_eq!(c.parts.len(), 1);
        assert_eq!(c.parts[0].name, "x.csv");
        assert_eq!(bytes(&c.parts[0]), b"caf\xe9;\x80");
    }

    #[test]
    fn a_range_streams_only_when_it_decodes_to_the_parsed_bytes() {
        use base64::Engine as _;
        let data = b"the attachment, decoded by mail-parser";
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        let spooled = format!("Xy:\r\n{b64}\r\n--b--");
        let at = 5..5 + b64.len();
        assert!(verify_range(spooled.as_bytes(), at.clone(), data).is_ok());
        // A range off by some bytes: into the header, or short of the end, or past the file.
        assert!(verify_range(spooled.as_bytes(), at.start - 4..at.end, data).is_err());
        assert!(verify_range(spooled.as_bytes(), at.start..at.end - 4, data).is_err());
        assert!(verify_range(spooled.as_bytes(), at.start..spooled.len() + 1, data).is_err());
    }
}
