//! MIME → Graph conversion throughput (input MIME bytes per second; criterion prints MiB/s):
//! `convert::convert` against `mail_parser::MessageParser::parse` alone, on the same inputs in
//! the same run, so the convert/parse_only ratio shows what convert costs on top of the parse it
//! cannot avoid.
//!
//! Groups: `corpus` (every case of tests/corpus under 1 MB that converts: real mail, all of
//! them as one iteration), `html_100k` (~100 KB HTML + text alternative), `attach_1m` and
//! `attach_10m` (text + 1 MiB / 10 MiB pseudo-random binary attachment).
//!
//! ```sh
//! cargo bench --bench convert -- --warm-up-time 1 --measurement-time 3
//! ```

#[path = "../tests/corpus/cases.rs"]
mod cases;

use std::hint::black_box;

use cases::{Case, case_dirs, pattern};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use graph_relay::convert::{self, ConvertOptions};
use graph_relay::envelope::Envelope;
use mail_builder::MessageBuilder;
use mail_parser::MessageParser;

/// A case convert succeeds on: a failing convert returns early and would look fast.
fn checked(case: Case) -> Case {
    if let Err(e) = convert::convert(&case.raw, &case.envelope, &case.opts) {
        panic!("{}: convert fails on this bench input: {e}", case.name);
    }
    case
}

/// Every corpus case that converts (the others are there to test refusals), except the
/// generated multi-megabyte one: it would outweigh the real mail, and the attach groups cover
/// big messages.
fn corpus() -> Vec<Case> {
    case_dirs()
        .iter()
        .map(|d| cases::load(d).unwrap_or_else(|e| panic!("{}: {e}", d.display())))
        .filter(|c| c.raw.len() < 1_000_000)
        .filter(|c| convert::convert(&c.raw, &c.envelope, &c.opts).is_ok())
        .collect()
}

fn synthetic(label: &str, builder: MessageBuilder<'_>) -> Case {
    let raw = builder
        .from(("Bench", "bench@contoso.test"))
        .to(("Someone", "someone@example.com"))
        .subject("convert benchmark")
        // Pinned so the input size does not change with the day of the month.
        .date(1_700_000_000_i64)
        .message_id("convert-bench@contoso.test")
        .write_to_vec()
        .expect("mail-builder writes to a Vec");
    let opts = ConvertOptions {
        sender: Some("relay@contoso.test".into()),
        ..Default::default()
    };
    let envelope = Envelope::new("bench@contoso.test", vec!["someone@example.com".into()]);
    checked(Case {
        name: label.into(),
        raw,
        envelope,
        opts,
    })
}

/// ~100 KB of MIME in all: the same paragraphs as HTML and as plain text.
fn html_100k() -> Case {
    let para = "<p>Quarterly figures for <b>Contoso</b>: revenue up, costs <i>down</i>, see the table.</p>\n";
    let line = "Quarterly figures for Contoso: revenue up, costs down, see the table.\n";
    let n = 100_000 / (para.len() + line.len());
    let html = format!("<html><body>\n{}</body></html>\n", para.repeat(n));
    synthetic(
        "html_100k",
        MessageBuilder::new()
            .text_body(line.repeat(n))
            .html_body(html),
    )
}

fn attachment(len: usize) -> Case {
    synthetic(
        "attachment",
        MessageBuilder::new()
            .text_body("The file is attached.\n")
            .attachment("application/octet-stream", "data.bin", pattern(len, 7)),
    )
}

fn bench_group(c: &mut Criterion, name: &str, cases: &[Case]) {
    let bytes: usize = cases.iter().map(|c| c.raw.len()).sum();
    eprintln!("{name}: {} message(s), {bytes} bytes of MIME", cases.len());
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes as u64));
    if bytes > 5_000_000 {
        // One convert of 10 MiB takes tens of ms; 100 samples would overrun --measurement-time.
        g.sample_size(10);
    }
    g.bench_function("parse_only", |b| {
        b.iter(|| {
            for case in cases {
                black_box(MessageParser::new().parse(black_box(&case.raw[..])));
            }
        })
    });
    g.bench_function("convert", |b| {
        b.iter(|| {
            for case in cases {
                let _ = black_box(convert::convert(
                    black_box(&case.raw),
                    &case.envelope,
                    &case.opts,
                ));
            }
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let corpus = corpus();
    assert!(!corpus.is_empty(), "no tests/corpus/*/message.eml found");
    bench_group(c, "corpus", &corpus);
    bench_group(c, "html_100k", &[html_100k()]);
    bench_group(c, "attach_1m", &[attachment(1 << 20)]);
    bench_group(c, "attach_10m", &[attachment(10 << 20)]);
}

criterion_group!(convert_benches, benches);
criterion_main!(convert_benches);
