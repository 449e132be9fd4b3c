//! Small string helpers for convert: cleaning header text, unfolding, repairing raw 8-bit
//! headers, URL path encoding. Pure functions; never panic, never allocate more than linear.

use std::borrow::Cow;

/// One-line text for Graph fields (subject, display names, header values): control characters
/// (CR, LF, TAB, NUL, ...) become spaces, runs of whitespace collapse to one, ends trimmed.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_control() || c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && !out.is_empty() {
            out.push(' ');
        }
        pending_space = false;
        out.push(c);
    }
    out
}

/// Text for a Graph body: keeps line breaks and tabs, drops other control characters (NUL and
/// friends, which Exchange does not accept in item bodies).
pub(crate) fn body_text(s: &str) -> Cow<'_, str> {
    let bad = |c: char| c.is_control() && !matches!(c, '\r' | '\n' | '\t');
    if s.chars().any(bad) {
        Cow::Owned(s.chars().filter(|&c| !bad(c)).collect())
    } else {
        Cow::Borrowed(s)
    }
}

/// Exchange's subject limit, in characters; display names are cut to it too (Exchange's own
/// display names stop at 256).
pub(crate) const MAX_FIELD_CHARS: usize = 255;

/// Cuts `s` to at most `max` characters; the length it had when it was cut.
pub(crate) fn cut_chars(s: &mut String, max: usize) -> Option<usize> {
    let (at, _) = s.char_indices().nth(max)?;
    let chars = max + s[at..].chars().count();
    s.truncate(at);
    Some(chars)
}

/// Cuts `s` to at most `max` bytes, at a character boundary; the length it had when it was cut.
pub(crate) fn cut_bytes(s: &mut String, max: usize) -> Option<usize> {
    let len = s.len();
    if len <= max {
        return None;
    }
    let at = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    s.truncate(at);
    Some(len)
}

/// `Some(one_line(s))` unless that is empty.
pub(crate) fn non_empty(s: &str) -> Option<String> {
    let s = one_line(s);
    (!s.is_empty()).then_some(s)
}

/// Where the top-level header section ends. One definition for everything that splits a
/// message into header and body (the parse, the MIME rewrite, the streamed attachment ranges),
/// so they can never disagree about where a byte is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderSection {
    /// Offset just past the last header field (and its continuation lines).
    pub fields_end: usize,
    /// Offset of the first body byte: past the separator line, or `fields_end` when the body
    /// starts without one (then the section needs a separator before mail-parser reads it).
    pub body_start: usize,
}

impl HeaderSection {
    /// The body follows the fields with no separator line between them.
    pub(crate) fn lacks_separator(&self) -> bool {
        self.fields_end == self.body_start
    }
}

/// Finds the header section the way mail-parser 0.11 ends it, plus Postfix's rule for a line
/// that is not a header field:
/// - a line starting with a space or tab right after a field continues it (mail-parser folds it
///   into the value, even when the rest of the line is blank);
/// - any other line of only spaces, tabs, CRs and form feeds (an empty line, but also `\r\r\n`
///   or `" \r\n"`) is the separator: mail-parser's `parse_headers` skips ASCII whitespace at the
///   start of each field and stops at the first LF it reaches that way;
/// - a line that is neither a field nor a continuation starts the body. mail-parser would drop
///   such a line and read on for headers; Postfix's cleanup (`is_header()`: printable ASCII name,
///   optional blanks, colon) and mail readers take it, and everything after it, as the body, and
///   so does the relay. A message whose first line is not a field has no header section at all.
///
/// One exception: a first line `From ...` (an mbox envelope line some sendmail-style programs
/// leave in) stays in the header section, where mail-parser reads it as an unknown field.
pub(crate) fn header_section(raw: &[u8]) -> HeaderSection {
    let mut pos = 0;
    let mut in_field = false;
    while pos < raw.len() {
        let end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| pos + i + 1);
        let line = &raw[pos..end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let folds = in_field && matches!(content.first(), Some(b' ' | b'\t'));
        if !folds {
            if content
                .iter()
                .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\x0c'))
            {
                return HeaderSection {
                    fields_end: pos,
                    body_start: end,
                };
            }
            let mbox_line = pos == 0 && content.starts_with(b"From ");
            if !is_field(content) && !mbox_line {
                return HeaderSection {
                    fields_end: pos,
                    body_start: pos,
                };
            }
            in_field = true;
        }
        pos = end;
    }
    HeaderSection {
        fields_end: raw.len(),
        body_start: raw.len(),
    }
}

/// Postfix's `is_header()`: a name of printable ASCII other than `:`, optional blanks, a colon.
fn is_field(line: &[u8]) -> bool {
    let name_len = line
        .iter()
        .take_while(|&&b| b.is_ascii_graphic() && b != b':')
        .count();
    name_len > 0
        && line[name_len..]
            .iter()
            .find(|&&b| b != b' ' && b != b'\t')
            .is_some_and(|&b| b == b':')
}

/// Longest header field (with its continuation lines) mail-parser is given: Exchange's limit for
/// a whole header section. Past it a field is cut.
pub(crate) const MAX_HEADER_FIELD_BYTES: usize = 256 * 1024;
/// Most header bytes mail-parser is given. Its memory grows up to ~40 times the size of a header
/// section made of tiny fields or addresses, so the section is bounded; fields past this are
/// dropped (Exchange refuses headers over 256 KB anyway).
pub(crate) const MAX_HEADER_SECTION_BYTES: usize = 1024 * 1024;

/// The message as mail-parser gets it: the header section made readable and bounded, the body
/// bytes untouched, so a body offset in the parse maps to the spooled message by a constant.
pub(crate) struct Prepared<'a> {
    pub bytes: Cow<'a, [u8]>,
    /// Where the body starts in `bytes` and in the spooled message.
    parsed_body: usize,
    spooled_body: usize,
    /// Header fields cut to [`MAX_HEADER_FIELD_BYTES`], and dropped past
    /// [`MAX_HEADER_SECTION_BYTES`].
    pub cut_fields: usize,
    pub dropped_fields: usize,
}

impl Prepared<'_> {
    /// The spooled message's offset of the byte at `parsed` in `bytes`; `None` inside the
    /// header section, which was rewritten.
    pub(crate) fn spooled_offset(&self, parsed: usize) -> Option<usize> {
        Some(parsed.checked_sub(self.parsed_body)? + self.spooled_body)
    }
}

/// Repairs of the top-level header section, all before the body:
/// - headers sent with raw 8-bit bytes that are not UTF-8 (old PHP scripts, printers) are read
///   as windows-1252, line by line, so "café" survives instead of turning into U+FFFD;
/// - a body that starts without a separator line (see [`header_section`]) gets one, so
///   mail-parser reads it as the body instead of dropping its first line;
/// - a field over [`MAX_HEADER_FIELD_BYTES`] is cut, and fields past
///   [`MAX_HEADER_SECTION_BYTES`] are dropped, and counted (Postfix's cleanup likewise
///   discards what is past its `header_size_limit`).
///
/// Borrowed when nothing changes.
pub(crate) fn prepare(raw: &[u8]) -> Prepared<'_> {
    let section = header_section(raw);
    let head = &raw[..section.body_start];
    let add_separator = section.lacks_separator() && section.body_start < raw.len();
    let repair = std::str::from_utf8(head).is_err();
    let too_big = section.fields_end > MAX_HEADER_SECTION_BYTES
        || fields(&raw[..section.fields_end]).any(|f| f.len() > MAX_HEADER_FIELD_BYTES);
    if !repair && !add_separator && !too_big {
        return Prepared {
            bytes: Cow::Borrowed(raw),
            parsed_body: section.body_start,
            spooled_body: section.body_start,
            cut_fields: 0,
            dropped_fields: 0,
        };
    }
    let mut out = Vec::with_capacity(raw.len() + 64);
    let (mut cut, mut dropped) = (0, 0);
    for field in fields(&raw[..section.fields_end]) {
        let mut field = field;
        if field.len() > MAX_HEADER_FIELD_BYTES {
            field = &field[..MAX_HEADER_FIELD_BYTES];
            cut += 1;
        }
        if out.len() + field.len() + 2 > MAX_HEADER_SECTION_BYTES {
            dropped += 1;
            continue;
        }
        for line in field.split_inclusive(|&b| b == b'\n') {
            match std::str::from_utf8(line) {
                Ok(_) => out.extend_from_slice(line),
                Err(_) => out.extend_from_slice(windows_1252(line).as_bytes()),
            }
        }
        if !field.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    if add_separator {
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(&raw[section.fields_end..section.body_start]);
    }
    let parsed_body = out.len();
    out.extend_from_slice(&raw[section.body_start..]);
    Prepared {
        bytes: Cow::Owned(out),
        parsed_body,
        spooled_body: section.body_start,
        cut_fields: cut,
        dropped_fields: dropped,
    }
}

/// The whole message as its body, for mail in which mail-parser finds neither a header nor a body
/// (a lone line such as an mbox-like `From ...` with no colon anywhere): delivered as text rather
/// than failed after its 250.
pub(crate) fn prepare_as_body(raw: &[u8]) -> Prepared<'_> {
    let mut out = Vec::with_capacity(raw.len() + 2);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(raw);
    Prepared {
        bytes: Cow::Owned(out),
        parsed_body: 2,
        spooled_body: 0,
        cut_fields: 0,
        dropped_fields: 0,
    }
}

/// The fields of a header section (up to `fields_end`), each with its continuation lines.
pub(crate) fn fields(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = head;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 0;
        loop {
            end = rest[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| end + i + 1);
            if !matches!(rest.get(end), Some(b' ' | b'\t')) {
                break;
            }
        }
        let (field, tail) = rest.split_at(end);
        rest = tail;
        Some(field)
    })
}

/// windows-1252 → UTF-8 (the 0x80..0x9F range mapped as Windows does; undefined bytes kept as
/// the Latin-1 code point).
pub(crate) fn windows_1252(bytes: &[u8]) -> String {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9f => HIGH[(b - 0x80) as usize],
            _ => b as char,
        })
        .collect()
}

/// Unfolds a raw header value (as it appears after the colon): line breaks and the whitespace
/// around them become one space; ends trimmed.
pub(crate) fn unfold(raw: &str) -> String {
    raw.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Percent-encodes one URL path segment: unreserved characters, `@` and `'` stay, everything
/// else (including `/`, `?`, `#`, `%` and non-ASCII) becomes `%XX` of its UTF-8 bytes.
pub(crate) fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@' | b'\'') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Lower-case form used to compare addresses (SMTP local parts are case-sensitive in theory,
/// never in Exchange), with the domain in its ASCII (punycode) spelling: an SMTPUTF8-less client
/// writes `RCPT TO:<bob@xn--bcher-kva.example>` for the `bob@bücher.example` of its To header.
pub(crate) fn address_key(address: &str) -> String {
    let address = address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_lowercase();
    match address.rsplit_once('@') {
        Some((local, domain)) if !domain.is_ascii() => match idna::domain_to_ascii(domain) {
            Ok(ascii) => format!("{local}@{ascii}"),
            Err(_) => address,
        },
        _ => address,
    }
}

/// Undoes RFC 3676 `format=flowed`: a line ending in a space continues on the next line of the
/// same quote depth (the space is dropped with `delsp=yes`); space-stuffing is removed; the
/// signature separator `-- ` is never joined. Lines end in CRLF.
pub(crate) fn unflow(text: &str, delsp: bool) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut para = String::new();
    let mut para_depth: Option<usize> = None;
    let flush = |lines: &mut Vec<String>, para: &mut String, depth: usize| {
        let mut line = ">".repeat(depth);
        if depth > 0 && !para.is_empty() {
            line.push(' ');
        }
        line.push_str(para);
        lines.push(line);
        para.clear();
    };
    let body = text.strip_suffix('\n').unwrap_or(text);
    for raw in body.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let depth = line.bytes().take_while(|&b| b == b'>').count();
        let mut content = &line[depth..];
        if let Some(rest) = content.strip_prefix(' ') {
            content = rest;
        }
        if let Some(d) = para_depth
            && d != depth
        {
            flush(&mut lines, &mut para, d);
        }
        let flowed = content.ends_with(' ') && content != "-- ";
        if flowed {
            para.push_str(if delsp {
                &content[..content.len() - 1]
            } else {
                content
            });
            para_depth = Some(depth);
        } else {
            para.push_str(content);
            flush(&mut lines, &mut para, depth);
            para_depth = None;
        }
    }
    if let Some(d) = para_depth {
        flush(&mut lines, &mut para, d);
    }
    let mut out = lines.join("\r\n");
    if text.ends_with('\n') {
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_collapses_controls() {
        assert_eq!(one_line("  a\r\n\tb\0c  "), "a b c");
        assert_eq!(one_line(""), "");
    }

    #[test]
    fn repairs_latin1_header_lines_only() {
        let raw = b"Subject: caf\xe9 \x80\r\nFrom: a@b\r\n\r\nbody \xe9";
        let fixed = prepare(raw);
        let mut want = "Subject: café €\r\nFrom: a@b\r\n\r\nbody "
            .as_bytes()
            .to_vec();
        want.push(0xe9);
        assert_eq!(&fixed.bytes[..], &want[..]);
        let body = raw.len() - 5;
        assert_eq!(fixed.spooled_offset(want.len() - 5), Some(body));
        assert!(matches!(
            prepare(b"A: b\r\n\r\n\xff").bytes,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn header_section_ends_where_mail_parser_ends_it() {
        let section = |raw: &[u8]| {
            let s = header_section(raw);
            (s.fields_end, s.body_start)
        };
        // Empty line, whitespace-only line, bare LF.
        assert_eq!(section(b"A: 1\r\n\r\nbody"), (6, 8));
        assert_eq!(section(b"A: 1\r\n\r\r\nbody"), (6, 9));
        assert_eq!(section(b"A: 1\n\nbody"), (5, 6));
        // A blank line that starts with a space right after a field folds into it.
        assert_eq!(section(b"A: 1\r\n \r\nB: 2\r\n\r\nx"), (15, 17));
        // ...but ends the section where no field precedes it.
        assert_eq!(section(b" \r\nbody"), (0, 3));
        // A line that is no field starts the body; so does an indented first line.
        assert_eq!(section(b"A: 1\r\nHello world\r\n"), (6, 6));
        assert_eq!(section(b"Hello\r\nA: 1\r\n"), (0, 0));
        assert_eq!(section(b"  A: 1\r\n\r\n"), (0, 0));
        assert_eq!(section(b"Bad name: 1\r\n\r\n"), (0, 0));
        // Blanks before the colon are allowed (RFC 822); an mbox From_ line is kept.
        assert_eq!(section(b"A : 1\r\n\r\n"), (7, 9));
        assert_eq!(
            section(b"From a@b Mon Jan  1 00:00:00 2024\nA: 1\n\nx"),
            (39, 40)
        );
        // Headers only.
        assert_eq!(section(b"A: 1\r\n"), (6, 6));
        assert_eq!(section(b""), (0, 0));
    }

    #[test]
    fn mail_parser_reads_the_prepared_body_where_the_section_says() {
        use mail_parser::MessageParser;
        for raw in [
            &b"A: 1\r\n\r\r\nbody\r\n"[..],
            b"A: 1\r\nHello world\r\nsecond\r\n",
            b"Hello world\r\nA: 1\r\n",
            b"Subject: caf\xe9\r\n \t\r\nX-A: 1\r\n \r\n\x0c\r\nbody",
            b"  A: 1\r\nB: 2\r\n\r\nbody",
        ] {
            let section = header_section(raw);
            let prepared = prepare(raw);
            let msg = MessageParser::new()
                .parse(&prepared.bytes[..])
                .expect("parses");
            let offset_body = msg.root_part().offset_body as usize;
            assert_eq!(
                prepared.spooled_offset(offset_body),
                Some(section.body_start),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn unflows_format_flowed() {
        let text = "This is a long \r\nparagraph.\r\n> quoted \r\n> more\r\n>> deeper\r\n\r\n-- \r\nsig\r\n";
        assert_eq!(
            unflow(text, false),
            "This is a long paragraph.\r\n> quoted more\r\n>> deeper\r\n\r\n-- \r\nsig\r\n"
        );
        assert_eq!(unflow("Ab \r\ncd", true), "Abcd");
        assert_eq!(unflow(" From me", false), "From me");
        assert_eq!(unflow("", false), "");
    }

    #[test]
    fn a_huge_header_section_is_bounded_and_the_body_kept() {
        let mut raw = b"From: a@b\r\nX-Big: ".to_vec();
        raw.extend(std::iter::repeat_n(b'v', 3 * MAX_HEADER_FIELD_BYTES));
        raw.extend_from_slice(b"\r\n");
        for _ in 0..MAX_HEADER_SECTION_BYTES / 5 {
            raw.extend_from_slice(b"X:1\r\n");
        }
        raw.extend_from_slice(b"Subject: late\r\n\r\nbody");
        let prepared = prepare(&raw);
        assert!(prepared.bytes.len() < MAX_HEADER_SECTION_BYTES + 10);
        assert_eq!(prepared.cut_fields, 1);
        assert!(prepared.dropped_fields > 0);
        assert!(prepared.bytes.ends_with(b"\r\n\r\nbody"));
        let body = prepared.bytes.len() - 4;
        assert_eq!(prepared.spooled_offset(body), Some(raw.len() - 4));
        assert_eq!(prepared.spooled_offset(3), None);
        let fields: Vec<&[u8]> = fields(b"A: 1\r\n 2\r\nB: 3\nC: 4").collect();
        assert_eq!(fields, [&b"A: 1\r\n 2\r\n"[..], b"B: 3\n", b"C: 4"]);
    }

    #[test]
    fn cuts_at_character_boundaries() {
        let mut s = "aé€b".to_string();
        assert_eq!(cut_chars(&mut s, 4), None);
        assert_eq!(cut_chars(&mut s, 2), Some(4));
        assert_eq!(s, "aé");
        let mut s = "aé€b".to_string();
        assert_eq!(cut_bytes(&mut s, 5), Some(7));
        assert_eq!(s, "aé", "the euro sign's three bytes do not fit in two");
        assert_eq!(cut_bytes(&mut s, 10), None);
    }

    #[test]
    fn unfolds() {
        assert_eq!(unfold(" aa\r\n bb  \r\n"), "aa bb");
        assert_eq!(unfold(" x\n\ty\n"), "x y");
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode_path_segment("a.b@contoso.com"), "a.b@contoso.com");
        assert_eq!(encode_path_segment("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
        assert_eq!(encode_path_segment("jörg@x"), "j%C3%B6rg@x");
    }
}
