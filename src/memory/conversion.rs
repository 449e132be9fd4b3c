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
// - one big base64 attachment (3, 10, 31.5 MB): 0.74–0.83 × the message (mail-parser's decoded
//   copy; the upload reads the file again later);
// - ten 2 MB attachments kept in memory: 2.46 × (base64), 2.36 × (8-bit): mail-parser's decoded
//   copy, the plan's copy, the base64 of each for the inline try. Since `plan_request` makes a
//   base64 copy only of what can fit inline, 1.58 × (base64; 8-bit not measured again): the
//   multiplier is kept, with more margin;
// - text: 10 MB of 7-bit text 2.0 ×, quoted-printable HTML 3.8 × (one 10 MB part) and 4.6 ×
//   (10,000 parts of 3 KB, their headers and parts included), attached messages 3.0–3.1 × (10 MB,
//   plain or base64), 4.0 × (an attached message of quoted-printable HTML parts); with the copies
//   made only of what fits, attached messages 1.8, 2.0 and 2.7 ×;
// - 10,000 one-byte parts: ~220 bytes per part;
// - a 1 MiB top-level header: up to 80 bytes per header byte, for `To:a` fields again and again
//   (each an address convert reads); ~40 for other tiny fields;
// - with 1,000 recipients (two plans) the second plan adds a copy of the JSON of the first, which
//   stays below 4 MB (Graph's request limit; bigger attachments are shared `Bytes`).

/// The spooled bytes read back, whole.
const READ_BACK: usize = 1;
/// Per encoded byte of a streamed attachment. Not covered: a range that fails its check when the
/// plan is made (a bug, logged as an error) keeps mail-parser's copy in the plan, 0.75 more.
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    /// A shape of `parts` parts whose header sections hold `header_bytes`.
    fn shape(parts: u64, header_bytes: u64) -> MimeShape {
        MimeShape {
            parts,
            header_bytes,
            ..MimeShape::default()
        }
    }

    /// The reservation covers what `convert_peak` measured over the read-back (`peak` bytes,
    /// module comment), with the promised margin of 1.2.
    fn assert_covers(size: usize, shape: &MimeShape, plans: usize, peak: f64) {
        let reserved = conversion_bytes(size, Some(shape), plans);
        let over_read_back = reserved.saturating_sub(size) as f64;
        assert!(
            over_read_back >= 1.2 * peak,
            "{shape:?}: {over_read_back} bytes reserved over the read-back, {peak} measured"
        );
    }

    #[test]
    fn a_big_streamed_attachment_reserves_about_twice_its_size() {
        for size in [4_105_536, 13_684_486, 31_500_260] {
            let s = MimeShape {
                streamed_bytes: size as u64 - 300,
                text_bytes: 25,
                ..shape(3, 233)
            };
            assert_covers(size, &s, 1, 0.83 * size as f64);
            // It used to be 6 × the size plus 64 MiB: 254 MiB for the 31.5 MB one.
            let reserved = conversion_bytes(size, Some(&s), 1);
            assert!(reserved <= 2 * size + 2 * MIB, "{size}: {reserved}");
        }
    }

    #[test]
    fn attachments_kept_in_memory_reserve_three_times_their_bytes() {
        let size = 27_369_504;
        let s = MimeShape {
            attachment_bytes: 27_368_470,
            ..shape(12, 980)
        };
        assert_covers(size, &s, 1, 2.46 * size as f64);
        assert!(conversion_bytes(size, Some(&s), 1) <= 4 * size + 2 * MIB);
    }

    #[test]
    fn text_reserves_for_quoted_printable_html_at_its_worst() {
        let one_part = MimeShape {
            text_bytes: 10_000_065,
            ..shape(2, 209)
        };
        assert_covers(10_000_283, &one_part, 1, 3.83 * 10_000_283.0);
        let many_parts = MimeShape {
            text_bytes: 30_119_850,
            ..shape(9_991, 869_252)
        };
        assert_covers(31_009_089, &many_parts, 1, 4.57 * 31_009_089.0);
        let attached = MimeShape {
            text_bytes: 12_060_019,
            ..shape(4_004, 348_308)
        };
        assert_covers(12_416_358, &attached, 1, 3.98 * 12_416_358.0);
    }

    #[test]
    fn tiny_parts_and_tiny_header_fields_reserve_per_part_and_per_header_byte() {
        let tiny_parts = MimeShape {
            text_bytes: 59_940,
            ..shape(9_991, 20_102)
        };
        assert_covers(100_029, &tiny_parts, 1, 2.1 * MIB as f64);
        // `To:a` again and again, 1 MiB of it.
        let addresses = MimeShape {
            text_bytes: 5,
            ..shape(1, 1_048_569)
        };
        assert_covers(1_048_574, &addresses, 1, 80.4 * MIB as f64);
    }

    #[test]
    fn a_repaired_header_section_reserves_the_message_copy() {
        let plain = MimeShape {
            text_bytes: 1_000_000,
            ..shape(1, 100)
        };
        let copied = MimeShape {
            copied: true,
            ..plain
        };
        let extra = conversion_bytes(1_000_100, Some(&copied), 1)
            - conversion_bytes(1_000_100, Some(&plain), 1);
        assert_eq!(extra, 1_000_100);
    }

    #[test]
    fn each_plan_past_the_first_reserves_its_copy_of_the_json() {
        let small = MimeShape {
            text_bytes: 1_000,
            ..shape(1, 100)
        };
        let one = conversion_bytes(1_100, Some(&small), 1);
        assert_eq!(conversion_bytes(1_100, Some(&small), 3) - one, 2 * 2_000);
        // Past 4 MB of JSON a plan is refused, and bigger attachments are shared between plans.
        let big = MimeShape {
            attachment_bytes: 27_000_000,
            ..shape(12, 1_000)
        };
        let one = conversion_bytes(27_001_000, Some(&big), 1);
        let two = conversion_bytes(27_001_000, Some(&big), 2);
        assert_eq!(two - one, PER_EXTRA_PLAN);
        assert_covers(27_369_504, &big, 2, 2.56 * 27_369_504.0);
    }

    #[test]
    fn an_unknown_shape_reserves_the_worst_case() {
        let size = 2_000_000;
        let worst = conversion_bytes(size, None, 1);
        assert_eq!(worst, 6 * size + 96 * MIB + MIB);
        // A walk that found no part: the whole message becomes the body.
        assert_eq!(conversion_bytes(size, Some(&shape(0, 0)), 1), worst);
        // Every measured shape stays under it, the worst header included.
        assert!(worst - size >= (80.4 * MIB as f64) as usize);
        assert!(conversion_bytes(10_000_283, None, 1) - 10_000_283 >= 4 * 10_000_283);
    }
}
