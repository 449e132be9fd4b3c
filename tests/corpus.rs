//! MIME corpus test for `convert`: every directory under `tests/corpus/` is one case (see
//! `tests/corpus/README.md`); its plan(s) must equal `expected.json`, and must keep the rules
//! that hold for every message (envelope recipients exactly once, ≤ 500 per plan, ≤ 5 `x-`
//! headers, requests < 4 MB). Fails when it finds no cases. `UPDATE_GOLDEN=1` rewrites goldens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use graph_relay::convert::{
    self, ConvertOptions, GraphPlan, MAX_INTERNET_MESSAGE_HEADERS, MAX_RECIPIENTS_PER_MESSAGE,
    MAX_REQUEST_BYTES, PlanRequest,
};
use graph_relay::spool::Envelope;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

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
fn default_options() -> ConvertOptions {
    ConvertOptions {
        sender: Some("relay@contoso.com".into()),
        allowed_senders: vec!["*@contoso.com".into()],
        save_to_sent_items: true,
        delegated: false,
    }
}

fn corpus_dir() -> PathBuf {
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
fn pattern(len: usize, seed: u8) -> Vec<u8> {
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

/// What a case produces, as golden JSON.
fn outcome(raw: &[u8], envelope: &Envelope, opts: &ConvertOptions) -> Value {
    let precheck = match convert::precheck(raw) {
        Ok(()) => Value::from("ok"),
        Err(e) => Value::from(format!("error: {e}")),
    };
    match convert::convert(raw, envelope, opts) {
        Ok(plans) => {
            let mut plans: Vec<Value> = plans.iter().map(|p| p.describe(raw)).collect();
            plans.iter_mut().for_each(shorten_content_bytes);
            json!({ "precheck": precheck, "plans": plans })
        }
        Err(e) => json!({
            "precheck": precheck,
            "error": e.to_string(),
            "permanent": e.is_permanent(),
        }),
    }
}

/// Goldens stay small and readable: `contentBytes` longer than 4,000 characters is replaced by
/// `"<N bytes, sha256 HEX>"` of the decoded bytes.
fn shorten_content_bytes(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "contentBytes"
                    && let Value::String(s) = child
                    && s.len() > 4_000
                {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(s.as_bytes())
                        .unwrap_or_default();
                    let digest: String = Sha256::digest(&bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    *child = Value::String(format!("<{} bytes, sha256 {digest}>", bytes.len()));
                } else {
                    shorten_content_bytes(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(shorten_content_bytes),
        _ => {}
    }
}

fn key(a: &str) -> String {
    a.trim().to_lowercase()
}

/// Rules every conversion keeps, whatever the golden says.
fn check_invariants(plans: &[GraphPlan], envelope: &Envelope) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, plan) in plans.iter().enumerate() {
        if plan.recipients > MAX_RECIPIENTS_PER_MESSAGE {
            problems.push(format!("plan {i}: {} recipients", plan.recipients));
        }
        let (message, named): (Option<&convert::graph_json::Message>, Vec<String>) =
            match &plan.request {
                PlanRequest::SendMail(s) => {
                    let len = serde_json::to_vec(s).map(|v| v.len()).unwrap_or(usize::MAX);
                    if len >= MAX_REQUEST_BYTES {
                        problems.push(format!("plan {i}: sendMail body is {len} bytes"));
                    }
                    (Some(&s.message), json_recipients(&s.message))
                }
                PlanRequest::Draft { message, uploads } => {
                    let len = serde_json::to_vec(message)
                        .map(|v| v.len())
                        .unwrap_or(usize::MAX);
                    if len >= MAX_REQUEST_BYTES {
                        problems.push(format!("plan {i}: draft body is {len} bytes"));
                    }
                    if uploads.is_empty() {
                        problems.push(format!("plan {i}: draft without uploads"));
                    }
                    (Some(message), json_recipients(message))
                }
                PlanRequest::Mime { base64 } => {
                    if base64.len() >= MAX_REQUEST_BYTES {
                        problems.push(format!("plan {i}: MIME is {} bytes", base64.len()));
                    }
                    (None, mime_recipients(base64))
                }
            };
        if named.len() != plan.recipients {
            problems.push(format!(
                "plan {i}: recipients = {} but it names {}",
                plan.recipients,
                named.len()
            ));
        }
        for a in named {
            *seen.entry(key(&a)).or_default() += 1;
        }
        if let Some(m) = message {
            let h = &m.internet_message_headers;
            if h.len() > MAX_INTERNET_MESSAGE_HEADERS {
                problems.push(format!("plan {i}: {} internetMessageHeaders", h.len()));
            }
            for header in h {
                if !header.name.to_ascii_lowercase().starts_with("x-") || header.value.is_empty() {
                    problems.push(format!("plan {i}: bad header {header:?}"));
                }
            }
        }
    }
    let want: BTreeMap<String, usize> = envelope.rcpt_to.iter().map(|a| (key(a), 1)).collect();
    if seen != want {
        let extra: Vec<_> = seen
            .iter()
            .filter(|(k, n)| want.get(*k) != Some(n))
            .collect();
        let missing: Vec<_> = want.keys().filter(|k| !seen.contains_key(*k)).collect();
        problems.push(format!(
            "recipients differ from the envelope: not exactly once {extra:?}, missing {missing:?}"
        ));
    }
    problems
}

fn json_recipients(m: &convert::graph_json::Message) -> Vec<String> {
    m.to_recipients
        .iter()
        .chain(&m.cc_recipients)
        .chain(&m.bcc_recipients)
        .map(|r| r.email_address.address.clone())
        .collect()
}

fn mime_recipients(base64: &str) -> Vec<String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .unwrap_or_default();
    let Some(msg) = mail_parser::MessageParser::new().parse_headers(&raw) else {
        return Vec::new();
    };
    msg.all_to()
        .chain(msg.all_cc())
        .chain(msg.all_bcc())
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address().map(str::to_string))
        .collect()
}

/// The first differing line of two pretty JSON texts, with context; long lines are shown around
/// their first differing character.
fn diff(want: &str, got: &str) -> String {
    let w: Vec<&str> = want.lines().collect();
    let g: Vec<&str> = got.lines().collect();
    let first = w
        .iter()
        .zip(&g)
        .position(|(a, b)| a != b)
        .unwrap_or(w.len().min(g.len()));
    let col = match (w.get(first), g.get(first)) {
        (Some(a), Some(b)) => a
            .chars()
            .zip(b.chars())
            .position(|(x, y)| x != y)
            .unwrap_or(a.chars().count().min(b.chars().count())),
        _ => 0,
    };
    let skip = col.saturating_sub(60);
    let from = first.saturating_sub(3);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "    first difference at line {}, column {}:",
        first + 1,
        col + 1
    );
    for (label, lines) in [("expected", &w), ("got     ", &g)] {
        for (n, line) in lines.iter().enumerate().skip(from).take(first - from + 4) {
            let (mark, shown): (&str, String) = if n == first {
                let s: String = line.chars().skip(skip).take(160).collect();
                (">", if skip > 0 { format!("…{s}") } else { s })
            } else {
                (" ", line.chars().take(160).collect())
            };
            let _ = writeln!(out, "    {label} {mark}{:5} {shown}", n + 1);
        }
    }
    out
}

#[test]
fn corpus() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no corpus cases found in {}",
        corpus_dir().display()
    );

    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let raw = match message_of(dir) {
            Ok(raw) => raw,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let env_text = std::fs::read_to_string(dir.join("envelope.json")).unwrap_or_default();
        let case: CaseEnvelope = match serde_json::from_str(&env_text) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: envelope.json: {e}"));
                continue;
            }
        };
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

        if let Ok(plans) = convert::convert(&raw, &envelope, &opts) {
            for p in check_invariants(&plans, &envelope) {
                failures.push(format!("{name}: {p}"));
            }
        }

        let got = serde_json::to_string_pretty(&outcome(&raw, &envelope, &opts))
            .expect("serializes")
            + "\n";
        let golden = dir.join("expected.json");
        if update {
            if let Err(e) = std::fs::write(&golden, &got) {
                failures.push(format!("{name}: writing {}: {e}", golden.display()));
            }
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{name}: differs from expected.json\n{}",
                diff(&want, &got)
            )),
            Err(e) => failures.push(format!(
                "{name}: no expected.json ({e}); run UPDATE_GOLDEN=1"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed (UPDATE_GOLDEN=1 cargo test --test corpus rewrites goldens; review them):\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
    eprintln!("corpus: {} cases passed", dirs.len());
}

/// Mangled corpus messages (bytes flipped, NUL/CR/LF/8-bit inserted, cut short) never make
/// `precheck` or `convert` panic. `FUZZ_ROUNDS=N` runs more rounds per case.
#[test]
fn mangled_corpus_never_panics() {
    let rounds: usize = std::env::var("FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let envelope = Envelope::new(
        "x@example.com",
        vec!["a@example.com".into(), "b@example.com".into()],
    );
    let opts = default_options();
    let mut seeds = 0;
    for entry in std::fs::read_dir(corpus_dir())
        .expect("tests/corpus exists")
        .flatten()
    {
        let Ok(raw) = std::fs::read(entry.path().join("message.eml")) else {
            continue;
        };
        seeds += 1;
        for _ in 0..rounds {
            let mut m = raw.clone();
            for _ in 0..(next() % 12 + 1) {
                let pos = (next() as usize) % m.len().max(1);
                match next() % 6 {
                    0 if !m.is_empty() => m[pos] = next() as u8,
                    1 => m.insert(
                        pos.min(m.len()),
                        [0, b'\n', b'\r', b'-', 0xff, b'=', b'"'][next() as usize % 7],
                    ),
                    2 if !m.is_empty() => {
                        m.remove(pos);
                    }
                    3 => {
                        let end = (pos + (next() as usize % 200)).min(m.len());
                        m.drain(pos..end);
                    }
                    4 => {
                        let end = (pos + (next() as usize % 200)).min(m.len());
                        let copy = m[pos.min(m.len())..end].to_vec();
                        let at = (next() as usize) % m.len().max(1);
                        m.splice(at..at, copy);
                    }
                    _ => m.truncate(pos),
                }
            }
            let _ = convert::precheck(&m);
            let _ = convert::convert(&m, &envelope, &opts);
        }
    }
    assert!(seeds > 0, "no corpus messages to mangle");
}
