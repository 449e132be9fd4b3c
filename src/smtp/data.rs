//! How message data is framed on the wire: the DATA receiver (where the dot-terminated text
//! ends, and dot-unstuffing), the BDAT command line (how many octets the chunk has) and the
//! sizes clients declare. Pure functions over bytes; the session does the I/O.
//!
//! # The DATA end rule (SMTP smuggling)
//!
//! Only `<CRLF>.<CRLF>` ends DATA. A `.` next to a bare CR or a bare LF (`<LF>.<LF>`,
//! `<CRLF>.<LF>`, `<LF>.<CRLF>`, `<CR>.<CR>`, `<CRLF>.<CR><CR><LF>`, ...) does not: those bytes
//! are message text, kept as sent, so a second transaction hidden behind them stays text inside
//! the one message. Bare CR and bare LF are neither line ends nor refused (legacy clients send
//! bare-LF mail and the conversion copes with it); the only thing a line start changes is
//! dot-unstuffing, and a line starts only after CRLF: a `.` right after CRLF is removed (RFC 5321
//! §4.5.2), unless the line is exactly `.`, which is the end. So `<CRLF>.<LF>` keeps `<CRLF><LF>`
//! and `<CRLF>.<CR><CR><LF>` keeps `<CRLF><CR><CR><LF>`.
//!
//! smtp-proto's receiver, used before, ended data at `<CRLF>.<CR>...<CR><LF>` (it kept its "after
//! CRLF dot" state across a run of CRs), so a client (or an upstream MTA passing such bytes
//! through) could put a second transaction in one message; Postfix' `smtpd_forbid_bare_newline`
//! is the reference for the fix. This receiver is a byte state machine whose state survives
//! between reads, so where TCP splits the input makes no difference.
//!
//! # BDAT sizes
//!
//! smtp-proto's size parser restarts on overflow (`BDAT 999999999999999999999` is `BDAT 9`, and
//! `MAIL ... SIZE=999999999999999999999` declares 9), so the session parses BDAT lines here, with
//! a checked `u64`, and checks MAIL's `SIZE=` here before trusting smtp-proto's value.

/// Where the receiver is relative to the end-of-data sequence `<CRLF>.<CRLF>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside a line (the last byte was not a CR, and no CRLF just ended).
    Text,
    /// The last byte was a CR (kept), so an LF now ends a line.
    Cr,
    /// A CRLF just ended a line (or the data just began).
    LineStart,
    /// `<CRLF>.`: the dot is held back; it is either dot-stuffing or the start of the end.
    Dot,
    /// `<CRLF>.<CR>`: the dot and the CR are held back; an LF now ends the data.
    DotCr,
    /// `<CRLF>.<CRLF>` seen.
    Ended,
}

/// The DATA receiver: feed it what arrives, it appends the unstuffed message to a buffer and
/// says where the data ended.
#[derive(Debug)]
pub(crate) struct DataReader {
    state: State,
}

/// What one `feed` did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Fed {
    /// Input bytes used; when `ended`, the rest belongs to the next command.
    pub(crate) consumed: usize,
    /// The end-of-data line was among them.
    pub(crate) ended: bool,
}

impl DataReader {
    /// A receiver at the start of the data, which is the start of a line (the DATA command's
    /// line has just ended), so a first line of `.` ends an empty message and `..x` is unstuffed.
    pub(crate) fn new() -> Self {
        DataReader {
            state: State::LineStart,
        }
    }

    /// Consumes `input` up to and including the end-of-data line if it is there, appending the
    /// message bytes to `body`. After the end it consumes nothing.
    pub(crate) fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Fed {
        if self.state == State::Ended {
            return Fed {
                consumed: 0,
                ended: true,
            };
        }
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Text {
                // Fast path: nothing can happen before the next CR.
                let rest = &input[i..];
                let run = rest.iter().position(|&b| b == b'\r').unwrap_or(rest.len());
                body.extend_from_slice(&rest[..run]);
                i += run;
                if i == input.len() {
                    break;
                }
            }
            let byte = input[i];
            i += 1;
            self.state = match (self.state, byte) {
                (State::Text | State::LineStart, b'\r') => {
                    body.push(byte);
                    State::Cr
                }
                (State::Text, _) => {
                    body.push(byte);
                    State::Text
                }
                (State::Cr, b'\n') => {
                    body.push(byte);
                    State::LineStart
                }
                (State::Cr, b'\r') => {
                    body.push(byte);
                    State::Cr
                }
                (State::Cr, _) => {
                    body.push(byte);
                    State::Text
                }
                (State::LineStart, b'.') => State::Dot,
                (State::LineStart, _) => {
                    body.push(byte);
                    State::Text
                }
                (State::Dot, b'\r') => State::DotCr,
                // The line is `.` and more: the dot was stuffing. A bare LF is text, not a line
                // end, so `<CRLF>.<LF>` lands here too.
                (State::Dot, _) => {
                    body.push(byte);
                    State::Text
                }
                (State::DotCr, b'\n') => State::Ended,
                // `<CRLF>.<CR>` and not LF: stuffing again; the held CR is text.
                (State::DotCr, b'\r') => {
                    body.extend_from_slice(b"\r\r");
                    State::Cr
                }
                (State::DotCr, _) => {
                    body.push(b'\r');
                    body.push(byte);
                    State::Text
                }
                // Not reached: feeding returns as soon as the end is seen.
                (State::Ended, _) => State::Ended,
            };
            if self.state == State::Ended {
                return Fed {
                    consumed: i,
                    ended: true,
                };
            }
        }
        Fed {
            consumed: input.len(),
            ended: false,
        }
    }
}

/// A BDAT command line, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bdat {
    /// `BDAT size [LAST]`; `size` is `None` when it does not fit in 64 bits.
    Chunk { size: Option<u64>, last: bool },
    /// A BDAT line that is not `BDAT 1*DIGIT [LAST]`.
    Syntax,
}

/// `Some` when `line` is a BDAT command (RFC 3030: `"BDAT" SP chunk-size [SP end-marker] CRLF`,
/// case-insensitive, extra spaces tolerated), `None` for any other command.
pub(crate) fn parse_bdat(line: &[u8]) -> Option<Bdat> {
    let line = line
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(line);
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, &[][..]),
    };
    if !verb.eq_ignore_ascii_case(b"BDAT") {
        return None;
    }
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let parsed = match (words.next(), words.next(), words.next()) {
        (Some(size), last, None) if is_digits(size) => match last {
            None => Some(false),
            Some(word) if word.eq_ignore_ascii_case(b"LAST") => Some(true),
            Some(_) => None,
        }
        .map(|last| Bdat::Chunk {
            size: checked_size(size),
            last,
        }),
        _ => None,
    };
    Some(parsed.unwrap_or(Bdat::Syntax))
}

/// Whether a MAIL line declares a `SIZE=` too large for 64 bits, which smtp-proto misreads as
/// a small number.
pub(crate) fn declares_oversized_size(line: &[u8]) -> bool {
    line.split(u8::is_ascii_whitespace).any(|word| {
        word.get(..5)
            .is_some_and(|key| key.eq_ignore_ascii_case(b"SIZE="))
            && is_digits(&word[5..])
            && checked_size(&word[5..]).is_none()
    })
}

fn is_digits(word: &[u8]) -> bool {
    !word.is_empty() && word.iter().all(u8::is_ascii_digit)
}

/// The value of a run of ASCII digits, or `None` when it does not fit in a `u64`.
fn checked_size(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in the given pieces; returns the body, and the bytes left over after the
    /// end (None when the data did not end).
    fn run(pieces: &[&[u8]]) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut reader = DataReader::new();
        let mut body = Vec::new();
        for (n, piece) in pieces.iter().enumerate() {
            let fed = reader.feed(piece, &mut body);
            if fed.ended {
                let mut rest = piece[fed.consumed..].to_vec();
                for later in &pieces[n + 1..] {
                    rest.extend_from_slice(later);
                }
                return (body, Some(rest));
            }
            assert_eq!(fed.consumed, piece.len());
        }
        (body, None)
    }

    /// (input, message, what follows the end or None when the data does not end)
    type Case = (&'static [u8], &'static [u8], Option<&'static [u8]>);

    const CASES: &[Case] = &[
        (b".\r\n", b"", Some(b"")),
        (b".\r\nQUIT\r\n", b"", Some(b"QUIT\r\n")),
        (b"a\r\n.\r\n", b"a\r\n", Some(b"")),
        (b"..x\r\n.\r\n", b".x\r\n", Some(b"")),
        (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", Some(b"")),
        (b"a\r\n...\r\n.\r\nNOOP", b"a\r\n..\r\n", Some(b"NOOP")),
        (b"\r\n.\r\n", b"\r\n", Some(b"")),
        (b"a\r\r\n.\r\nX", b"a\r\r\n", Some(b"X")),
        (b"a\n\r\n.\r\n", b"a\n\r\n", Some(b"")),
        (b"a\r\n.\r\r\n.\r\n", b"a\r\n\r\r\n", Some(b"")),
        (b"a\r\n.\r\r\n\r\n.\r\n", b"a\r\n\r\r\n\r\n", Some(b"")),
        // Not an end: the bytes stay, less a stuffing dot after CRLF.
        (b"a\n.\nb", b"a\n.\nb", None),
        (b"a\r\n.\nb", b"a\r\n\nb", None),
        (b"a\n.\r\nb", b"a\n.\r\nb", None),
        (b"a\r.\rb", b"a\r.\rb", None),
        (b"a\r.\r\nb", b"a\r.\r\nb", None),
        (b"a\r\n.\rb", b"a\r\n\rb", None),
        (b"a\r\n.\r\r\nb", b"a\r\n\r\r\nb", None),
        (b"a\r\n.\r\r\r\nb", b"a\r\n\r\r\r\nb", None),
        (b"a\r\n.\n\r\nb", b"a\r\n\n\r\nb", None),
        (b"a\r\n. \r\nb", b"a\r\n \r\nb", None),
        (b"\n.\n", b"\n.\n", None),
        (b".\n", b"\n", None),
        (b".\r", b"", None),
        (b"a\x00\xff\r\n\x00.\r\n", b"a\x00\xff\r\n\x00.\r\n", None),
    ];

    #[test]
    fn only_crlf_dot_crlf_ends_and_stuffing_dots_go() {
        for (input, body, rest) in CASES {
            let (got, left) = run(&[input]);
            assert_eq!(got, *body, "{input:?}");
            assert_eq!(left.as_deref(), *rest, "{input:?}");
        }
    }

    /// Every case split at every offset, and fed one byte at a time, ends (or not) at the same
    /// place with the same message.
    #[test]
    fn where_the_input_is_split_makes_no_difference() {
        for (input, body, rest) in CASES {
            for at in 0..=input.len() {
                let (a, b) = input.split_at(at);
                let (got, left) = run(&[a, b]);
                assert_eq!(got, *body, "{input:?} split at {at}");
                assert_eq!(left.as_deref(), *rest, "{input:?} split at {at}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            let (got, left) = run(&bytes);
            assert_eq!(got, *body, "{input:?} byte by byte");
            assert_eq!(left.as_deref(), *rest, "{input:?} byte by byte");
        }
    }

    /// The end sequence with every mix of CR, LF and `.` up to six bytes long after "x": it ends
    /// the data exactly when `<CRLF>.<CRLF>` occurs in it, and then right after its first one.
    #[test]
    fn exhaustive_cr_lf_dot_mixes_end_only_at_crlf_dot_crlf() {
        let alphabet = [b'\r', b'\n', b'.'];
        for len in 1..=6u32 {
            for mut code in 0..3usize.pow(len) {
                let mut input = b"x".to_vec();
                for _ in 0..len {
                    input.push(alphabet[code % 3]);
                    code /= 3;
                }
                let first_end = input
                    .windows(5)
                    .position(|w| w == b"\r\n.\r\n")
                    .map(|p| p + 5);
                let mut reader = DataReader::new();
                let mut body = Vec::new();
                let fed = reader.feed(&input, &mut body);
                assert_eq!(fed.ended.then_some(fed.consumed), first_end, "{input:?}");
            }
        }
    }

    #[test]
    fn nothing_is_consumed_after_the_end() {
        let mut reader = DataReader::new();
        let mut body = Vec::new();
        assert!(reader.feed(b"a\r\n.\r\n", &mut body).ended);
        let fed = reader.feed(b"MAIL FROM:<a@b>\r\n", &mut body);
        assert_eq!(
            fed,
            Fed {
                consumed: 0,
                ended: true
            }
        );
        assert_eq!(body, b"a\r\n");
    }

    #[test]
    fn a_long_text_run_is_copied_whole() {
        let mut input = vec![b'y'; 100_000];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut body = Vec::new();
        let fed = DataReader::new().feed(&input, &mut body);
        assert_eq!(
            fed,
            Fed {
                consumed: input.len(),
                ended: true
            }
        );
        assert_eq!(body.len(), 100_002);
    }

    #[test]
    fn bdat_lines_are_parsed_with_a_checked_size() {
        let chunk = |size, last| Some(Bdat::Chunk { size, last });
        let cases: [(&[u8], Option<Bdat>); 15] = [
            (b"BDAT 0\r\n", chunk(Some(0), false)),
            (b"bdat 123456 last\r\n", chunk(Some(123_456), true)),
            (b"BDAT  12   LAST  \r\n", chunk(Some(12), true)),
            (b"BDAT 7\n", chunk(Some(7), false)),
            (
                b"BDAT 18446744073709551615 LAST\r\n",
                chunk(Some(u64::MAX), true),
            ),
            (b"BDAT 18446744073709551616 LAST\r\n", chunk(None, true)),
            (b"BDAT 999999999999999999999 LAST\r\n", chunk(None, true)),
            (b"BDAT\r\n", Some(Bdat::Syntax)),
            (b"BDAT LAST\r\n", Some(Bdat::Syntax)),
            (b"BDAT 12x LAST\r\n", Some(Bdat::Syntax)),
            (b"BDAT -1\r\n", Some(Bdat::Syntax)),
            (b"BDAT 5 LAST x\r\n", Some(Bdat::Syntax)),
            (b"BDAT 5 FIRST\r\n", Some(Bdat::Syntax)),
            (b"BDATX 5\r\n", None),
            (b"DATA\r\n", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse_bdat(line),
                want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn mail_sizes_beyond_64_bits_are_noticed() {
        for (line, over) in [
            (&b"MAIL FROM:<a@b> SIZE=999999999999999999999\r\n"[..], true),
            (
                b"MAIL FROM:<a@b> size=18446744073709551616 BODY=8BITMIME\r\n",
                true,
            ),
            (b"MAIL FROM:<a@b> SIZE=18446744073709551615\r\n", false),
            (b"MAIL FROM:<a@b> SIZE=1000\r\n", false),
            (b"MAIL FROM:<a@b> SIZE=\r\n", false),
            (b"MAIL FROM:<a@b>\r\n", false),
        ] {
            assert_eq!(declares_oversized_size(line), over, "{line:?}");
        }
    }
}
