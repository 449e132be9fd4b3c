//! Small HTML fix-ups for the Graph body: several HTML parts joined into one document, plain
//! text parts turned into HTML fragments, `<meta charset>` made to say UTF-8 (the content is
//! UTF-8 once decoded). String work only; never parses or rewrites anything else in the HTML.

/// Plain text as an HTML fragment: `&`, `<`, `>` escaped, line breaks as `<br>`.
pub(crate) fn text_fragment(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8 + 16);
    out.push_str("<div>");
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => {}
            '\n' => out.push_str("<br>\r\n"),
            c => out.push(c),
        }
    }
    out.push_str("</div>");
    out
}

/// Joins HTML parts (Apple Mail splits a body around attachments) into one document: the first
/// part's head and `<body>` tag, then the inside of every part's body, then `</body></html>`.
/// One part is returned as it is.
pub(crate) fn join_documents(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [first, ..] => {
            let (prefix, has_body) = match body_open(first) {
                Some(open) => (&first[..open], true),
                None => ("", false),
            };
            let mut out = String::from(prefix);
            for p in parts {
                out.push_str(body_inner(p));
            }
            if has_body {
                out.push_str("</body></html>");
            }
            out
        }
    }
}

/// Offset just after the `<body ...>` tag.
fn body_open(html: &str) -> Option<usize> {
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("<body") {
        let start = from + i;
        let after = lower.as_bytes().get(start + 5).copied();
        if matches!(after, Some(b'>' | b' ' | b'\t' | b'\r' | b'\n' | b'/')) {
            return lower[start..].find('>').map(|e| start + e + 1);
        }
        from = start + 5;
    }
    None
}

/// The inside of `<body>...</body>`, or everything when there is no body tag.
fn body_inner(html: &str) -> &str {
    let start = body_open(html).unwrap_or(0);
    let lower = html.to_ascii_lowercase();
    let end = lower[start..]
        .rfind("</body")
        .map(|e| start + e)
        .unwrap_or(html.len());
    &html[start..end]
}

/// Every `charset=...` inside a `<meta ...>` tag now says `utf-8`.
pub(crate) fn meta_charset_utf8(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(i) = lower[from..].find("<meta") {
        let tag_start = from + i;
        let tag_end = lower[tag_start..]
            .find('>')
            .map_or(lower.len(), |e| tag_start + e);
        let tag = &lower[tag_start..tag_end];
        if let Some(c) = tag.find("charset=") {
            let mut v = tag_start + c + "charset=".len();
            while matches!(lower.as_bytes().get(v), Some(b'"' | b'\'' | b' ')) {
                v += 1;
            }
            let v_end = lower[v..tag_end]
                .find(['"', '\'', ' ', ';', '/', '>'])
                .map_or(tag_end, |e| v + e);
            if &lower[v..v_end] != "utf-8" {
                out.push_str(&html[copied..v]);
                out.push_str("utf-8");
                copied = v_end;
            }
        }
        from = tag_end.max(tag_start + 5);
    }
    out.push_str(&html[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_escape() {
        assert_eq!(
            text_fragment("a<b & c\r\nd"),
            "<div>a&lt;b &amp; c<br>\r\nd</div>"
        );
    }

    #[test]
    fn joins_bodies_into_one_document() {
        let parts = vec![
            "<html><head><style>p{}</style></head><BODY class=\"x\"><p>one</p></body></html>"
                .to_string(),
            "<div>two</div>".to_string(),
            "<html><body><p>three</p></body></html>".to_string(),
        ];
        assert_eq!(
            join_documents(&parts),
            "<html><head><style>p{}</style></head><BODY class=\"x\"><p>one</p><div>two</div><p>three</p></body></html>"
        );
        assert_eq!(join_documents(&parts[1..2]), "<div>two</div>");
        assert_eq!(
            join_documents(&["<b>a</b>".into(), "<i>b</i>".into()]),
            "<b>a</b><i>b</i>"
        );
    }

    #[test]
    fn meta_charset_says_utf8() {
        assert_eq!(
            meta_charset_utf8(
                "<META http-equiv=Content-Type content=\"text/html; charset=windows-1252\"><meta charset='iso-8859-1'><p>charset=x</p>"
            ),
            "<META http-equiv=Content-Type content=\"text/html; charset=utf-8\"><meta charset='utf-8'><p>charset=x</p>"
        );
        assert_eq!(
            meta_charset_utf8("<meta charset=utf-8>"),
            "<meta charset=utf-8>"
        );
        assert_eq!(meta_charset_utf8("<meta"), "<meta");
        assert_eq!(meta_charset_utf8("<meta charset="), "<meta charset=utf-8");
    }
}
