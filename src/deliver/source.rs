//! Reads an attachment's decoded bytes for its upload PUTs: a slice of memory, or base64 text in
//! the spooled message decoded one chunk at a time, so a 30 MiB attachment costs one chunk of
//! memory while it is uploaded, not its whole size. Blocking file I/O: run it off the runtime.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::convert::base64_stream::Base64Decoder;
use crate::convert::{AttachmentData, LargeAttachment};

/// How much base64 text is read from the spool at a time.
const READ_BLOCK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the spooled message {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The spooled text no longer decodes to what the plan was made from.
    #[error("the spooled attachment {name:?} does not decode as planned: {reason}")]
    Corrupt { name: String, reason: String },
}

/// Sequential reads are streamed; a read that starts anywhere else (a retried or resumed chunk)
/// decodes again from the part's start, which is rare and costs time, not memory.
pub struct AttachmentReader {
    attachment: LargeAttachment,
    message: PathBuf,
    file: Option<File>,
    /// Next unread byte of the base64 text, as a file offset.
    next_encoded: usize,
    decoder: Base64Decoder,
    /// Decoded bytes not yet handed out; `decoded_at` is the offset of the first.
    pending: Vec<u8>,
    decoded_at: usize,
    /// Digest of every byte decoded since the last rewind (always from the part's start).
    hasher: Sha256,
    hashed: usize,
}

impl AttachmentReader {
    /// `message` is the spooled `.eml` the attachment's plan was made from.
    pub fn new(attachment: &LargeAttachment, message: &Path) -> Self {
        AttachmentReader {
            attachment: attachment.clone(),
            message: message.to_path_buf(),
            file: None,
            next_encoded: 0,
            decoder: Base64Decoder::default(),
            pending: Vec::new(),
            decoded_at: 0,
            hasher: Sha256::new(),
            hashed: 0,
        }
    }

    /// The decoded bytes of `range`.
    pub fn read(&mut self, range: Range<usize>) -> Result<Bytes, SourceError> {
        if range.end > self.attachment.size {
            return Err(self.corrupt(format!(
                "range {range:?} is past its size {}",
                self.attachment.size
            )));
        }
        let (encoded, sha256) = match &self.attachment.data {
            AttachmentData::Bytes(bytes) => return Ok(bytes.slice(range)),
            AttachmentData::Base64 { encoded, sha256 } => (encoded.clone(), *sha256),
        };
        if self.file.is_none() || range.start < self.decoded_at {
            self.rewind(&encoded)?;
        }
        while self.decoded_at < range.start {
            // A block at a time: skipping to the middle must not hold what it skips.
            self.decode_until((range.start - self.decoded_at).min(READ_BLOCK), &encoded)?;
            let skip = (range.start - self.decoded_at).min(self.pending.len());
            self.pending.drain(..skip);
            self.decoded_at += skip;
        }
        self.decode_until(range.len(), &encoded)?;
        if range.end == self.attachment.size {
            // The last chunk commits the upload: everything must be the planned bytes first.
            self.check_digest(&sha256)?;
        }
        let rest = self.pending.split_off(range.len());
        let chunk = std::mem::replace(&mut self.pending, rest);
        self.decoded_at = range.end;
        Ok(chunk.into())
    }

    fn rewind(&mut self, encoded: &Range<usize>) -> Result<(), SourceError> {
        let file = File::open(&self.message).map_err(|e| self.io(e))?;
        self.file = Some(file);
        self.next_encoded = encoded.start;
        self.decoder = Base64Decoder::default();
        self.pending = Vec::new();
        self.decoded_at = 0;
        self.hasher = Sha256::new();
        self.hashed = 0;
        Ok(())
    }

    /// The digest of the whole attachment, decoded from the start since the last rewind, must
    /// be the plan's.
    fn check_digest(&mut self, planned: &[u8; 32]) -> Result<(), SourceError> {
        self.hash_pending();
        let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        // Whatever comes next (a retried chunk) decodes and hashes again from the start.
        self.file = None;
        if self.hashed != self.attachment.size || &digest != planned {
            return Err(self.corrupt(
                "its bytes are not the ones the plan was made from (SHA-256 differs)".into(),
            ));
        }
        Ok(())
    }

    /// Decodes until `want` bytes are pending; fewer means the text ended early.
    fn decode_until(&mut self, want: usize, encoded: &Range<usize>) -> Result<(), SourceError> {
        self.pending
            .reserve(want.saturating_sub(self.pending.len()));
        let mut block = vec![0; READ_BLOCK];
        while self.pending.len() < want {
            let len = READ_BLOCK.min(encoded.end - self.next_encoded);
            if len == 0 {
                return Err(self.corrupt(format!(
                    "its text ends {} bytes short",
                    want - self.pending.len()
                )));
            }
            let block = &mut block[..len];
            let file = self.file.as_mut().expect("opened by rewind");
            file.seek(SeekFrom::Start(self.next_encoded as u64))
                .and_then(|_| file.read_exact(block))
                .map_err(|e| io_error(&self.message, e))?;
            self.next_encoded += len;
            if let Err(e) = self.decoder.feed(block, &mut self.pending) {
                return Err(self.corrupt(e.to_string()));
            }
            self.hash_pending();
        }
        Ok(())
    }

    /// Feeds the digest what was decoded since, up to the attachment's size (the text may hold a
    /// few more bytes than that; they are not the attachment's).
    fn hash_pending(&mut self) {
        let decoded_end = (self.decoded_at + self.pending.len()).min(self.attachment.size);
        if decoded_end > self.hashed {
            let from = self.hashed - self.decoded_at;
            let to = decoded_end - self.decoded_at;
            self.hasher.update(&self.pending[from..to]);
            self.hashed = decoded_end;
        }
    }

    fn io(&self, source: io::Error) -> SourceError {
        io_error(&self.message, source)
    }

    fn corrupt(&self, reason: String) -> SourceError {
        SourceError::Corrupt {
            name: self.attachment.name.clone(),
            reason,
        }
    }
}

fn io_error(path: &Path, source: io::Error) -> SourceError {
    SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestResult;
    use crate::convert::{ConvertOptions, PlanRequest, convert};
    use crate::envelope::Envelope;
    use base64::Engine as _;

    /// A spooled message with one 5 MB base64 attachment, and the attachment's plan.
    fn spooled(
        dir: &Path,
    ) -> Result<(PathBuf, LargeAttachment, Vec<u8>), Box<dyn std::error::Error>> {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let mut raw = b"From: a@contoso.com\r\nTo: b@example.com\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: application/pdf; name=big.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
        for line in b64.as_bytes().chunks(76) {
            raw.extend_from_slice(line);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"--B--\r\n");
        let path = dir.join("m.eml");
        std::fs::write(&path, &raw)?;
        let opts = ConvertOptions {
            sender: Some("a@contoso.com".into()),
            ..Default::default()
        };
        let envelope = Envelope::new("a@contoso.com", vec!["b@example.com".into()]);
        let plans = convert(&raw, &envelope, &opts)?;
        let PlanRequest::Draft { uploads, .. } = &plans[0].request else {
            return Err("expected a draft".into());
        };
        Ok((path, uploads[0].clone(), data))
    }

    #[test]
    fn chunks_read_in_any_order_match_the_attachment() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (path, attachment, data) = spooled(dir.path())?;
        assert!(matches!(attachment.data, AttachmentData::Base64 { .. }));
        let mut reader = AttachmentReader::new(&attachment, &path);
        let step = 3_276_800;
        // In order, then a retried chunk, then a resume from the middle.
        for range in [
            0..step,
            step..5_000_000,
            step..5_000_000,
            100..200,
            4_999_999..5_000_000,
        ] {
            assert_eq!(
                reader.read(range.clone())?,
                &data[range.clone()],
                "{range:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_changed_spool_file_is_reported_not_uploaded() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (path, attachment, _) = spooled(dir.path())?;
        let mut reader = AttachmentReader::new(&attachment, &path);
        let len = std::fs::metadata(&path)?.len();
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_len(len / 2)?;
        let err = reader.read(0..5_000_000).expect_err("short file");
        assert!(matches!(err, SourceError::Io { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn changed_bytes_that_still_decode_never_complete_an_upload() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (path, attachment, _) = spooled(dir.path())?;
        let AttachmentData::Base64 { encoded, .. } = &attachment.data else {
            return Err("expected a streamed attachment".into());
        };
        let mut raw = std::fs::read(&path)?;
        let at = encoded.start + 100;
        raw[at] = if raw[at] == b'A' { b'B' } else { b'A' };
        std::fs::write(&path, &raw)?;
        let mut reader = AttachmentReader::new(&attachment, &path);
        let step = 3_276_800;
        reader.read(0..step)?;
        let err = reader
            .read(step..5_000_000)
            .expect_err("the last chunk is refused");
        assert!(err.to_string().contains("SHA-256"), "{err}");
        Ok(())
    }
}
