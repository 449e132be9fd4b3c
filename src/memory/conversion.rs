//! What converting one message takes from the memory budget: the facts of its MIME structure
//! that decide it ([`MimeShape`], measured by `convert::precheck` at DATA and kept in the spool
//! record) and the one rule from those facts to bytes ([`conversion_bytes`]). A message whose
//! shape is not known (spooled by an older version) gets the worst case any shape can reach.

use serde::{Deserialize, Serialize};

/// The facts of a message's structure that drive the memory its conversion takes. Counts come
/// from a walk that follows mail-parser's own (`convert::nesting`), so they name the parts
/// mail-parser will build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MimeShape {
    /// Parts mail-parser builds, the top level and multipart containers included.
    pub parts: u64,
    /// Bytes of every header section as mail-parser gets it: the top level's (at most 1 MiB
    /// once `convert` bounds it) and the parts' (at most 1 MiB by the structure limits).
    pub header_bytes: u64,
    /// Encoded bytes of the base64 attachments uploaded a chunk at a time from the spool file
    /// (binary, at least 3 MB decoded, not inside an attached message): mail-parser decodes
    /// them once while the plan is made, and the plan holds none of it.
    pub streamed_bytes: u64,
    /// Body bytes of the other binary attachments: decoded, copied into the plan, and as base64
    /// JSON when they go inline.
    pub attachment_bytes: u64,
    /// Body bytes of every other part (text and HTML, typed or not, attached messages whole):
    /// decoded to UTF-8 text, joined into the body and its JSON, or copied into the plan.
    pub text_bytes: u64,
    /// `convert` copies the whole message before parsing it (its header section is repaired:
    /// 8-bit, too big, or without the blank line that ends it).
    pub copied: bool,
}

/// Bytes a conversion of a message of `size` bytes may take at its peak, the spooled bytes it
/// reads back included, for `plans` Graph messages (one per 500 recipients). `None`: the shape
/// is unknown (a record from before shapes were kept), or its walk found no part (the whole
/// message then becomes the body): the worst case, which every shape stays under.
pub fn conversion_bytes(size: usize, shape: Option<&MimeShape>, plans: usize) -> usize {
    match shape {
        Some(shape) if shape.parts > 0 => shaped(size, shape, plans),
        _ => worst_case(size),
    }
}

// What each fact costs. The numbers are the peaks `examples/convert_peak.rs` measured over what
// the file read back already holds, on the shapes it writes (`--write DIR`; README, "Memory"),
// with a margin of at least 1.2 (2026-12-03, release build, glibc with the relay's 128 KiB mmap
// threshold). Per encoded byte of the part, or per message byte where said:
// - one big base64 attachment (3, 10, 31.5 MB): 0.75–0.82 × the message (mail-parser's decoded
//   copy; the upload reads the file again later);
// - ten 2 MB attachments kept in memory: 2.45 × (base64), 2.36 × (8-bit); mail-parser's decoded
//   copy, the plan's copy, the base64 of each for the inline try;
// - text: 10 MB of 7-bit text 2.0 ×, quoted-printable HTML 3.8 × (one 10 MB part) and 3.9 ×
//   (10,000 parts of 3 KB), attached messages 3.0–3.1 × (10 MB, plain or base64), 4.0 × (an
//   attached message of quoted-printable HTML parts);
// - 10,000 one-byte parts: ~200 bytes per part;
// - a 1 MiB top-level header: up to 80 bytes per header byte, for `To:a` or `Cc:a` fields again
//   and again (each an address convert reads); ~40 for other tiny fields;
// - with 1,000 recipients (two plans) the second plan adds a copy of the JSON of the first, which
//   stays below 4 MB (Graph's request limit; bigger attachments are shared `Bytes`).

/// The spooled bytes read back, whole.
const READ_BACK: usize = 1;
/// Per encoded byte of a streamed attachment.
const PER_STREAMED_BYTE: f64 = 1.0;
/// Per encoded byte of an attachment kept in memory.
const PER_ATTACHMENT_BYTE: f64 = 3.0;
/// Per byte of text.
const PER_TEXT_BYTE: f64 = 5.0;
/// Per header byte.
const PER_HEADER_BYTE: usize = 96;
/// Per part, however small.
const PER_PART: usize = 512;
/// Per plan past the first: its copy of the JSON, at most twice what is held (text, small
/// attachments) and at most the request limit with the structs around it.
const PER_EXTRA_PLAN: usize = 6 * 1024 * 1024;
/// Buffers a conversion always has, whatever the message.
const FIXED: usize = 1024 * 1024;

fn shaped(size: usize, shape: &MimeShape, plans: usize) -> usize {
    let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let times = |n: u64, k: f64| (bytes(n) as f64 * k) as usize;
    let held = bytes(shape.attachment_bytes).saturating_add(bytes(shape.text_bytes));
    let per_extra_plan = held.saturating_mul(2).min(PER_EXTRA_PLAN);
    [
        size.saturating_mul(READ_BACK + usize::from(shape.copied)),
        times(shape.streamed_bytes, PER_STREAMED_BYTE),
        times(shape.attachment_bytes, PER_ATTACHMENT_BYTE),
        times(shape.text_bytes, PER_TEXT_BYTE),
        bytes(shape.header_bytes).saturating_mul(PER_HEADER_BYTE),
        bytes(shape.parts).saturating_mul(PER_PART),
        plans.saturating_sub(1).saturating_mul(per_extra_plan),
        FIXED,
    ]
    .into_iter()
    .fold(0, usize::saturating_add)
}

/// 6 × the size (text at its worst, read back and copied), plus up to 96 MiB for a top-level
/// header section of tiny address fields (which `convert` bounds to 1 MiB).
fn worst_case(size: usize) -> usize {
    const HEADER_WORST: usize = 96 * 1024 * 1024;
    size.saturating_mul(6)
        .saturating_add(size.saturating_mul(PER_HEADER_BYTE).min(HEADER_WORST))
        .saturating_add(FIXED)
}
