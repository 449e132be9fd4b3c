//! Fuzz target: the big-attachment path. A base64 part of at least 3,000,000 decoded bytes is
//! planned as a byte range of the spooled message and decoded again, a chunk at a time, while
//! it is uploaded. Around one such part, the fuzzer writes the headers, preamble, part headers,
//! line layout and trailer; for every upload the plan streams, each range read through
//! `deliver::source::AttachmentReader` (in order, then retried and resumed ranges) must equal
//! the bytes mail-parser decoded for that part, which is what the plan's size was taken from.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use base64::Engine as _;
use graph_relay::convert::fuzzing::prepared;
use graph_relay::convert::{
    self, AttachmentData, ConvertOptions, MAX_INLINE_ATTACHMENT_BYTES, PlanRequest,
};
use graph_relay::deliver::source::AttachmentReader;
use graph_relay::envelope::Envelope;
use libfuzzer_sys::fuzz_target;
use mail_parser::MessageParser;

#[derive(Arbitrary, Debug)]
struct Template {
    /// Raw header text after From/To/Subject.
    headers: Vec<u8>,
    /// The big part inside multipart/mixed (with a text part before it), or the whole body.
    multipart: bool,
    preamble: Vec<u8>,
    /// Raw text before the part's own Content-Type and Content-Transfer-Encoding.
    part_headers: Vec<u8>,
    /// Base64 characters per line; 0 = one line.
    line_len: u16,
    lf_only: bool,
    /// 3,000,000 + this % 4 bytes: each padding case.
    extra: u8,
    /// Bytes inserted into the base64 text: (position, byte).
    inserts: Vec<(u32, u8)>,
    trailer: Vec<u8>,
    /// Upload chunk size (at least 4 KiB, so one run stays short).
    chunk: u32,
    /// Ranges read after the sequential pass: (start, length).
    rereads: Vec<(u32, u32)>,
}

/// The attachment's bytes: 3,000,000 to 3,000,003 of them, base64-encoded once per length.
fn encoded(extra: u8) -> &'static str {
    static TEXT: OnceLock<Vec<String>> = OnceLock::new();
    let all = TEXT.get_or_init(|| {
        (0..4)
            .map(|n| {
                let data: Vec<u8> = (0..MAX_INLINE_ATTACHMENT_BYTES + n)
                    .map(|i| (i * 31 % 253) as u8)
                    .collect();
                base64::engine::general_purpose::STANDARD.encode(data)
            })
            .collect()
    });
    &all[usize::from(extra % 4)]
}

fn message(t: &Template) -> Vec<u8> {
    let eol: &[u8] = if t.lf_only { b"\n" } else { b"\r\n" };
    let mut body: Vec<u8> = Vec::with_capacity(4_200_000);
    let text = encoded(t.extra).as_bytes();
    let line = match usize::from(t.line_len) {
        0 => text.len(),
        n => n,
    };
    for chunk in text.chunks(line) {
        body.extend_from_slice(chunk);
        body.extend_from_slice(eol);
    }
    for &(at, byte) in t.inserts.iter().take(8) {
        let at = at as usize % (body.len() + 1);
        body.insert(at, byte);
    }

    let mut raw = b"From: a@contoso.com\r\nTo: b@example.com\r\nSubject: big\r\n".to_vec();
    raw.extend_from_slice(&t.headers);
    let part_head = b"Content-Type: application/octet-stream; name=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n";
    if t.multipart {
        raw.extend_from_slice(
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b0und\"\r\n\r\n",
        );
        raw.extend_from_slice(&t.preamble);
        raw.extend_from_slice(b"\r\n--b0und\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b0und\r\n");
        raw.extend_from_slice(&t.part_headers);
        raw.extend_from_slice(part_head);
        raw.extend_from_slice(&body);
        raw.extend_from_slice(b"--b0und--\r\n");
    } else {
        raw.extend_from_slice(&t.part_headers);
        raw.extend_from_slice(part_head);
        raw.extend_from_slice(&body);
    }
    raw.extend_from_slice(&t.trailer);
    raw
}

/// Where the spooled copy goes (memory-backed when the machine has /dev/shm).
fn spool_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("graph-relay-fuzz-{}.eml", std::process::id()))
    })
}

fuzz_target!(|t: Template| {
    let raw = message(&t);
    let opts = ConvertOptions {
        sender: Some("a@contoso.com".into()),
        ..Default::default()
    };
    let envelope = Envelope::new("a@contoso.com", vec!["b@example.com".into()]);
    let Ok(plans) = convert::convert(&raw, &envelope, &opts) else {
        return;
    };
    let streamed: Vec<_> = plans
        .iter()
        .filter_map(|p| match &p.request {
            PlanRequest::Draft { uploads, .. } => Some(uploads),
            _ => None,
        })
        .flatten()
        .filter_map(|u| match &u.data {
            AttachmentData::Base64 { encoded, .. } => Some((u, encoded.clone())),
            AttachmentData::Bytes(_) => None,
        })
        .collect();
    if streamed.is_empty() {
        return;
    }

    // What mail-parser decoded for each part, found by the part's place in the message.
    let (parsed_bytes, spooled) = prepared(&raw);
    let parsed = MessageParser::new()
        .parse(&parsed_bytes)
        .expect("convert parsed it");
    let path = spool_path();
    std::fs::write(path, &raw).expect("write the spooled copy");

    for (upload, range) in streamed {
        let part = parsed
            .parts
            .iter()
            .find(|p| {
                spooled(p.offset_body as usize) == Some(range.start)
                    && spooled(p.offset_end as usize) == Some(range.end)
            })
            .unwrap_or_else(|| panic!("upload {range:?} is no part of the message"));
        let planned = part.contents();
        assert_eq!(upload.size, planned.len(), "planned size");
        assert!(upload.size >= MAX_INLINE_ATTACHMENT_BYTES);

        let mut reader = AttachmentReader::new(upload, path);
        let chunk = (t.chunk as usize).clamp(4096, 8 << 20);
        let mut start = 0;
        while start < upload.size {
            let end = (start + chunk).min(upload.size);
            let got = reader.read(start..end).expect("streams");
            assert!(got == planned[start..end], "range {start}..{end}");
            start = end;
        }
        for &(at, len) in t.rereads.iter().take(4) {
            let start = at as usize % upload.size;
            let end = (start + len as usize % (1 << 20)).min(upload.size);
            let got = reader.read(start..end).expect("streams");
            assert!(got == planned[start..end], "reread {start}..{end}");
        }
    }
    let _ = std::fs::remove_file(path);
});
