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

/// `Some(one_line(s))` unless that is empty.
pub(crate) fn non_empty(s: &str) -> Option<String> {
    let s = one_line(s);
    (!s.is_empty()).then_some(s)
}

/// Headers sent with raw 8-bit bytes that are not UTF-8 (old PHP scripts, printers) are read
/// as windows-1252, line by line, so "café" survives instead of turning into U+FFFD. Only the
/// header section changes; the body bytes are kept as they are. Borrowed when nothing changes.
pub(crate) fn repair_header_bytes(raw: &[u8]) -> Cow<'_, [u8]> {
    let end = header_section_end(raw);
    let head = &raw[..end];
    if std::str::from_utf8(head).is_ok() {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len() + 64);
    for line in head.split_inclusive(|&b| b == b'\n') {
        match std::str::from_utf8(line) {
            Ok(_) => out.extend_from_slice(line),
            Err(_) => out.extend_from_slice(windows_1252(line).as_bytes()),
        }
    }
    out.extend_from_slice(&raw[end..]);
    Cow::Owned(out)
}

/// Offset where the header section ends: just after the first empty line (CRLF or bare LF), or
/// the end of the input when there is none.
pub(crate) fn header_section_end(raw: &[u8]) -> usize {
    let mut pos = 0;
    while pos < raw.len() {
        let line_end = match raw[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => pos + i + 1,
            None => return raw.len(),
        };
        let line = &raw[pos..line_end];
        if line == b"\n" || line == b"\r\n" {
            return line_end;
        }
        pos = line_end;
    }
    raw.len()
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
        let fixed = repair_header_bytes(raw);
        let mut want = "Subject: café €\r\nFrom: a@b\r\n\r\nbody "
            .as_bytes()
            .to_vec();
        want.push(0xe9);
        assert_eq!(&fixed[..], &want[..]);
        assert!(matches!(
            repair_header_bytes(b"A: b\r\n\r\n\xff"),
            Cow::Borrowed(_)
        ));
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
