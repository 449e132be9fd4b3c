//! The MIME corpus's cases (one directory each under `tests/corpus/`, see README.md there),
//! loaded the same way for the corpus test (tests/corpus.rs) and the conversion benchmark
//! (benches/convert.rs). Test-only.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use graph_relay::convert::ConvertOptions;
use graph_relay::envelope::Envelope;
use serde::Deserialize;

/// One case: its message, envelope and options.
pub struct Case {
    pub name: String,
    pub raw: Vec<u8>,
    pub envelope: Envelope,
    pub opts: ConvertOptions,
}

/// Every case directory, sorted.
pub fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Reads a case: its message (`message.eml` or a `message.gen` generator) and `envelope.json`.
pub fn load(dir: &Path) -> Result<Case, String> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let raw = message_of(dir)?;
    let env_text = std::fs::read_to_string(dir.join("envelope.json")).unwrap_or_default();
    let case: CaseEnvelope =
        serde_json::from_str(&env_text).map_err(|e| format!("envelope.json: {e}"))?;
    let mut envelope = Envelope::new(case.mail_from, case.rcpt_to);
    envelope.smtputf8 = case.smtputf8;
    let opts = match case.options {
        None => default_options(),
        Some(o) => ConvertOptions {
            sender: o.sender,
            allowed_senders: o.allowed_senders,
            save_to_sent_items: o.save_to_sent_items,
            delegated: o.delegated,
        },
    };
    Ok(Case {
        name,
        raw,
        envelope,
        opts,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseEnvelope {
    mail_from: String,
    rcpt_to: Vec<String>,
    #[serde(default)]
    smtputf8: bool,
    #[serde(default)]
    options: Option<CaseOptions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseOptions {
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    allowed_senders: Vec<String>,
    #[serde(default = "yes")]
    save_to_sent_items: bool,
    #[serde(default)]
    delegated: bool,
}

fn yes() -> bool {
    true
}

/// Options when a case gives none: what a typical app-only install has.
pub fn default_options() -> ConvertOptions {
    ConvertOptions {
        sender: Some("relay@contoso.com".into()),
        allowed_senders: vec!["*@contoso.com".into()],
        save_to_sent_items: true,
        delegated: false,
    }
}

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// The message of a case: `message.eml`, or `message.gen` naming a generator below (for inputs
/// too large to commit).
fn message_of(dir: &Path) -> Result<Vec<u8>, String> {
    let eml = dir.join("message.eml");
    if eml.exists() {
        return std::fs::read(&eml).map_err(|e| format!("{}: {e}", eml.display()));
    }
    let gen_path = dir.join("message.gen");
    let name = std::fs::read_to_string(&gen_path).map_err(|e| {
        format!(
            "{}: neither message.eml nor message.gen ({e})",
            dir.display()
        )
    })?;
    match name.trim() {
        "large-draft" => Ok(large_draft()),
        other => Err(format!(
            "{}: unknown generator {other:?}",
            gen_path.display()
        )),
    }
}

/// Deterministic bytes (no randomness, so goldens are stable).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

fn base64_lines(data: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(b64.len() + b64.len() / 38);
    for chunk in b64.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out
}

/// A ~5.5 MB newsletter-style message: HTML with an inline logo, a 4.5 MB PDF and a 900 kB
/// spreadsheet. Must become a draft with the logo and the spreadsheet inline and the PDF
/// uploaded.
fn large_draft() -> Vec<u8> {
    let mut m = String::new();
    m.push_str(
        "From: Reports <reports@contoso.com>\r\n\
         To: Finance Team <finance@example.com>\r\n\
         Subject: Quarterly report Q3 (large)\r\n\
         Date: Tue, 01 Oct 2024 08:00:00 +0200\r\n\
         Message-ID: <q3-report-20241001@contoso.com>\r\n\
         MIME-Version: 1.0\r\n\
         X-Mailer: ReportServer 4.2\r\n\
         Content-Type: multipart/mixed; boundary=\"==outer==\"\r\n\
         \r\n\
         This is a multi-part message in MIME format.\r\n\
         --==outer==\r\n\
         Content-Type: multipart/related; boundary=\"==rel==\"\r\n\
         \r\n\
         --==rel==\r\n\
         Content-Type: text/html; charset=utf-8\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n\
         <html><body><img src=\"cid:logo@contoso.com\"><p>Attached: the Q3 report.</p></body></html>\r\n\
         --==rel==\r\n\
         Content-Type: image/png; name=\"logo.png\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-ID: <logo@contoso.com>\r\n\
         \r\n",
    );
    m.push_str(&base64_lines(&pattern(20_000, 1)));
    m.push_str(
        "--==rel==--\r\n\
         --==outer==\r\n\
         Content-Type: application/pdf; name=\"Q3-report.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"Q3-report.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         \r\n",
    );
    m.push_str(&base64_lines(&pattern(4_500_000, 2)));
    m.push_str(
        "--==outer==\r\n\
         Content-Type: application/vnd.openxmlformats-officedocument.spreadsheetml.sheet; name=\"figures.xlsx\"\r\n\
         Content-Disposition: attachment; filename=\"figures.xlsx\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         \r\n",
    );
    m.push_str(&base64_lines(&pattern(900_000, 3)));
    m.push_str("--==outer==--\r\n");
    m.into_bytes()
}
