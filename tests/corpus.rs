//! MIME corpus test for `convert`: every directory under `tests/corpus/` is one case (see
//! `tests/corpus/README.md`); its plan(s) must equal `expected.json`, and must keep the rules
//! that hold for every message (envelope recipients exactly once, ≤ 500 per plan, ≤ 5 `x-`
//! headers, requests < 4 MB). Fails when it finds no cases. `UPDATE_GOLDEN=1` rewrites goldens.

#[path = "corpus/cases.rs"]
mod cases;
#[path = "corpus/invariants.rs"]
mod invariants;

use std::fmt::Write as _;

use base64::Engine as _;
use cases::{case_dirs, corpus_dir, default_options};
use graph_relay::convert::{self, ConvertOptions};
use graph_relay::envelope::Envelope;
use invariants::check_invariants;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What a case produces, as golden JSON.
fn outcome(raw: &[u8], envelope: &Envelope, opts: &ConvertOptions) -> Value {
    let precheck = match convert::precheck(raw) {
        Ok(_) => Value::from("ok"),
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
    let dirs = case_dirs();
    assert!(
        !dirs.is_empty(),
        "no corpus cases found in {}",
        corpus_dir().display()
    );

    let mut failures = Vec::new();
    for dir in &dirs {
        let cases::Case {
            name,
            raw,
            envelope,
            opts,
            ..
        } = match cases::load(dir) {
            Ok(case) => case,
            Err(e) => {
                failures.push(format!("{}: {e}", dir.display()));
                continue;
            }
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
