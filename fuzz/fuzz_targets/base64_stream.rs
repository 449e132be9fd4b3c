//! Fuzz target: the streaming base64 decoder (`convert::base64_stream`) against mail-parser's
//! MIME base64 decoder. Big attachments are planned from mail-parser's decoding and uploaded from
//! ours, so wherever mail-parser decodes a body, ours must give the same bytes, however the text
//! is split into pieces.
//!
//! Input: byte 0 picks the piece sizes, the rest is the base64 body text.

#![no_main]

use graph_relay::convert::base64_stream::Base64Decoder;
use libfuzzer_sys::fuzz_target;
use mail_parser::parsers::MessageStream;

fuzz_target!(|data: &[u8]| {
    let Some((&split, text)) = data.split_first() else {
        return;
    };
    // Whole, then in pieces of 1..=16 bytes, then in pieces that grow (1, 2, 3, ...).
    let whole = decode(text, &mut std::iter::repeat(text.len().max(1)));
    let fixed = usize::from(split % 16) + 1;
    assert_eq!(
        decode(text, &mut std::iter::repeat(fixed)),
        whole,
        "pieces of {fixed}"
    );
    assert_eq!(decode(text, &mut (1..)), whole, "growing pieces");

    // mail-parser with no boundary reads to the end; usize::MAX is its "not base64" (the part
    // is then an encoding problem, which convert never streams).
    let (end, expected) = MessageStream::new(text).decode_base64_mime(b"");
    if end != usize::MAX {
        assert_eq!(
            whole.as_deref().ok(),
            Some(expected.as_ref()),
            "mail-parser decodes this text; ours must give the same bytes"
        );
    }
});

/// Our decoder fed `text` in pieces of the sizes `sizes` yields.
fn decode(
    text: &[u8],
    sizes: &mut dyn Iterator<Item = usize>,
) -> Result<Vec<u8>, graph_relay::convert::base64_stream::InvalidByte> {
    let mut decoder = Base64Decoder::default();
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        decoder.feed(piece, &mut out)?;
        rest = tail;
    }
    Ok(out)
}
