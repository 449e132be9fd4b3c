//! Base64 decoding in pieces. A large attachment is not kept decoded: it is decoded again from the
//! spooled message, a chunk at a time, while it is uploaded. That only works if the pieces come
//! out byte for byte as mail-parser decoded the part whole when the plan was made, so this
//! decoder follows mail-parser's MIME decoder rule for rule: whitespace and a lone `-` are
//! skipped, `=` closes the current group (even a one-character group), and a partial group left
//! at the end is dropped. Pure: no I/O.

/// A byte that can not appear in a base64 body (the part was not base64 after all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("byte 0x{0:02x} is not base64")]
pub struct InvalidByte(pub u8);

/// Carries an unfinished 4-character group from one call of [`Base64Decoder::feed`] to the next.
#[derive(Debug, Default, Clone)]
pub struct Base64Decoder {
    group: u32,
    count: u8,
}

impl Base64Decoder {
    /// Decodes `input`, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), InvalidByte> {
        out.reserve(input.len() / 4 * 3 + 3);
        let mut rest = input;
        loop {
            rest = self.whole_groups(rest, out);
            let Some((&byte, tail)) = rest.split_first() else {
                return Ok(());
            };
            rest = tail;
            self.push(byte, out)?;
        }
    }

    /// The fast path: four base64 characters in a row, between groups. Stops at the first
    /// byte that is anything else (line ends, padding), which `push` then takes.
    fn whole_groups<'a>(&mut self, mut rest: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        if self.count != 0 {
            return rest;
        }
        while let [a, b, c, d, tail @ ..] = rest {
            let (a, b, c, d) = (
                DECODE[*a as usize],
                DECODE[*b as usize],
                DECODE[*c as usize],
                DECODE[*d as usize],
            );
            if (a | b | c | d) > 63 {
                break;
            }
            let group =
                (u32::from(a) << 18) | (u32::from(b) << 12) | (u32::from(c) << 6) | u32::from(d);
            out.extend_from_slice(&group.to_be_bytes()[1..]);
            rest = tail;
        }
        rest
    }

    fn push(&mut self, byte: u8, out: &mut Vec<u8>) -> Result<(), InvalidByte> {
        match DECODE[byte as usize] {
            v if v < 64 => {
                self.group = (self.group << 6) | u32::from(v);
                self.count += 1;
                if self.count == 4 {
                    out.extend_from_slice(&self.group.to_be_bytes()[1..]);
                    self.reset();
                }
            }
            _ => match byte {
                b'=' => self.close_group(out),
                b' ' | b'\t' | b'\r' | b'\n' | b'-' => {}
                other => return Err(InvalidByte(other)),
            },
        }
        Ok(())
    }

    /// `=` padding: emit what the group holds. mail-parser emits one byte for a one-character
    /// group too (its six bits, shifted up), so this does.
    fn close_group(&mut self, out: &mut Vec<u8>) {
        match self.count {
            1 => out.push((self.group << 2) as u8),
            2 => out.push((self.group >> 4) as u8),
            3 => out.extend_from_slice(&[(self.group >> 10) as u8, (self.group >> 2) as u8]),
            _ => {}
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.group = 0;
        self.count = 0;
    }
}

/// Not a base64 character.
const INVALID: u8 = 0xff;

/// Each byte's 6-bit value, or [`INVALID`].
static DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < 64 {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestResult;
    use base64::Engine as _;
    use mail_parser::{MessageParser, MimeHeaders};

    fn decode_in_pieces(input: &[u8], piece: usize) -> Result<Vec<u8>, InvalidByte> {
        let mut decoder = Base64Decoder::default();
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            decoder.feed(chunk, &mut out)?;
        }
        Ok(out)
    }

    /// What mail-parser makes of `body` as the base64 attachment of a message.
    fn mail_parser_decodes(body: &[u8]) -> Vec<u8> {
        let mut raw = b"From: a@b\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
        raw.extend_from_slice(body);
        raw.extend_from_slice(b"\r\n--B--\r\n");
        let msg = MessageParser::new().parse(&raw).expect("parses");
        let part = msg.attachment(0).expect("one attachment");
        assert!(part.content_type().is_some());
        part.contents().to_vec()
    }

    #[test]
    fn pieces_decode_like_mail_parser_whole() -> TestResult {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let plain = base64::engine::general_purpose::STANDARD.encode(&data);
        let wrapped: Vec<u8> = plain
            .as_bytes()
            .chunks(76)
            .flat_map(|l| l.iter().copied().chain(*b"\r\n"))
            .collect();
        let odd_inputs: [&[u8]; 8] = [
            b"QUJD",
            b"QUI=",
            b"QQ==",
            b"QUJDRA",        // trailing partial group: dropped
            b"QUJDR=",        // `=` after one character
            b"QU JD\tRE\nVG", // whitespace anywhere
            b"QUJD-REVG",     // a lone dash
            b"QQ==QUJD",      // padding in the middle
        ];
        for input in odd_inputs.iter().copied().chain([wrapped.as_slice()]) {
            let expected = mail_parser_decodes(input);
            for piece in [1, 2, 3, 5, 76, 4096] {
                assert_eq!(
                    decode_in_pieces(input, piece)?,
                    expected,
                    "input {:?} in pieces of {piece}",
                    String::from_utf8_lossy(&input[..input.len().min(40)])
                );
            }
        }
        assert_eq!(decode_in_pieces(&wrapped, 77)?, data);
        Ok(())
    }

    #[test]
    fn a_foreign_byte_is_an_error() {
        assert_eq!(
            decode_in_pieces(b"QUJD*", 3),
            Err(InvalidByte(b'*')),
            "the caller must not upload a part that is not base64"
        );
    }
}
