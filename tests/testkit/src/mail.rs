//! Test messages as mail clients write them: multipart MIME with base64 attachments in
//! 76-column lines, and deterministic attachment bytes.

use base64::Engine as _;

/// Deterministic bytes that do not compress or repeat in a chunk-sized pattern.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One attachment of a test message.
pub struct Part<'a> {
    pub name: &'a str,
    pub content_type: &'a str,
    pub bytes: &'a [u8],
    /// Content-ID, for images the HTML body shows.
    pub cid: Option<&'a str>,
}

impl<'a> Part<'a> {
    pub fn file(name: &'a str, bytes: &'a [u8]) -> Self {
        Part {
            name,
            content_type: "application/pdf",
            bytes,
            cid: None,
        }
    }
}

/// A multipart message from `from` to alice@example.org, as a mail client writes it: base64 in
/// 76-column lines. With inline parts the body is HTML showing each of them.
pub fn multipart(from: &str, subject: &str, parts: &[Part<'_>]) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: alice@example.org\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n"
    )
    .into_bytes();
    let images: Vec<String> = parts
        .iter()
        .filter_map(|p| p.cid.map(|c| format!("<img src=\"cid:{c}\">")))
        .collect();
    if images.is_empty() {
        m.extend_from_slice(b"Content-Type: text/plain\r\n\r\nPlease find attached.\r\n");
    } else {
        let html = format!("<p>Logo:</p>{}", images.concat());
        m.extend_from_slice(format!("Content-Type: text/html\r\n\r\n{html}\r\n").as_bytes());
    }
    for p in parts {
        let mut head = format!(
            "--b\r\nContent-Type: {}; name=\"{}\"\r\nContent-Transfer-Encoding: base64\r\n",
            p.content_type, p.name
        );
        match p.cid {
            Some(cid) => head.push_str(&format!(
                "Content-ID: <{cid}>\r\nContent-Disposition: inline; filename=\"{}\"\r\n\r\n",
                p.name
            )),
            None => head.push_str(&format!(
                "Content-Disposition: attachment; filename=\"{}\"\r\n\r\n",
                p.name
            )),
        }
        m.extend_from_slice(head.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(p.bytes);
        for line in b64.as_bytes().chunks(76) {
            m.extend_from_slice(line);
            m.extend_from_slice(b"\r\n");
        }
    }
    m.extend_from_slice(b"--b--\r\n");
    m
}
