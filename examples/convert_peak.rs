//! convert_peak: how much memory `convert` takes for one .eml, as a multiple of its size, and
//! what delivery reserves for it. Reads the file, walks its structure as DATA does
//! (`convert::precheck`), notes the process's peak RSS (VmHWM), converts it, and prints the growth
//! of the peak over the message size next to the share of the memory budget delivery reserves
//! for that structure (`memory::conversion_bytes`). The peak only ever grows, so measure one
//! file per run. Linux only.
//!
//! ```text
//! cargo run --release --example convert_peak -- --write DIR   # the measured shapes, as .eml
//! for f in DIR/*.eml; do cargo run --release --example convert_peak -- "$f"; done
//! RCPTS=1000 cargo run --release --example convert_peak -- FILE   # 1,000 envelope recipients
//! ```

use base64::Engine as _;
use graph_relay::convert::{self, ConvertOptions};
use graph_relay::envelope::Envelope;
use graph_relay::memory;
use graph_relay_testkit::mail::{Part, multipart, random_bytes};

fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir] = &args[..]
        && flag == "--write"
    {
        write_shapes(std::path::Path::new(dir));
        return;
    }
    let opts = ConvertOptions {
        sender: Some("relay@contoso.com".into()),
        ..Default::default()
    };
    let rcpts: usize = std::env::var("RCPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let envelope = Envelope::new(
        "a@contoso.com",
        (0..rcpts).map(|i| format!("b{i}@example.com")).collect(),
    );
    for path in args {
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let before = peak_kib();
        let outcome = convert::convert(&raw, &envelope, &opts);
        let after = peak_kib();
        // After the conversion: the walk's own buffers must not raise the peak measured from.
        let shape = convert::precheck(&raw).ok();
        let plans = convert::plans_for(rcpts);
        // The spooled bytes are read back inside the reservation; here they were read before.
        let reserve = memory::conversion_bytes(raw.len(), shape.as_ref(), plans) - raw.len();
        let size = raw.len() as f64 / 1024.0;
        let peak = (after - before) as f64;
        println!(
            "{path}: {:.1} MiB, peak +{:.1} MiB = {:.2} x size; reserves {:.1} MiB more than the \
             read-back, {:.2} x the peak ({}); {shape:?}",
            size / 1024.0,
            peak / 1024.0,
            peak / size,
            reserve as f64 / (1024.0 * 1024.0),
            reserve as f64 / 1024.0 / peak.max(1.0),
            match &outcome {
                Ok(plans) => format!("{} plan(s)", plans.len()),
                Err(e) => e.to_string(),
            }
        );
    }
}

/// Writes the shapes the reservation rule was measured on (README, "Memory").
fn write_shapes(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("create the directory");
    let shapes: [(&str, Vec<u8>); 13] = [
        ("b64_3mb", attachment_mail(3_000_000)),
        ("b64_10mb", attachment_mail(10_000_000)),
        ("b64_31_5mb", attachment_mail(31_500_000 / 78 * 57)),
        ("small_attachments_10x2mb", small_attachments(10, 2_000_000)),
        ("qp_html_10000_parts", qp_html_parts(9_990, 3_000)),
        ("qp_html_one_part_10mb", qp_html_parts(1, 10_000_000)),
        ("text_7bit_10mb", text_mail(10_000_000)),
        ("tiny_parts_10000", tiny_parts(9_990)),
        (
            "header_1mib_tiny_fields",
            header_mail("X:1\r\n", 1024 * 1024),
        ),
        // The worst per header byte: a bare address per field, each one convert reads.
        ("header_1mib_to_fields", header_mail("To:a\n", 1024 * 1024)),
        (
            "nested_rfc822_10mb",
            nested(&attachment_mail(10_000_000), false),
        ),
        (
            "nested_b64_rfc822_10mb",
            nested(&attachment_mail(10_000_000), true),
        ),
        (
            "nested_qp_html_parts",
            nested(&qp_html_parts(4_000, 3_000), false),
        ),
    ];
    for (name, raw) in shapes {
        let path = dir.join(format!("{name}.eml"));
        std::fs::write(&path, raw).expect("write the shape");
        println!("{}", path.display());
    }
}

const HEAD: &str =
    "From: a@contoso.com\r\nTo: b@example.com\r\nSubject: shape\r\nMIME-Version: 1.0\r\n";

/// A short text and one base64 PDF of `decoded` bytes (the shape of `benches/memory_load.rs`).
fn attachment_mail(decoded: usize) -> Vec<u8> {
    small_attachments(1, decoded)
}

/// A short text and `n` base64 PDFs of `decoded` bytes each.
fn small_attachments(n: usize, decoded: usize) -> Vec<u8> {
    let names: Vec<String> = (0..n).map(|i| format!("a{i}.pdf")).collect();
    let bytes: Vec<Vec<u8>> = (0..n).map(|i| random_bytes(decoded, i as u64)).collect();
    let parts: Vec<Part<'_>> = names
        .iter()
        .zip(&bytes)
        .map(|(n, b)| Part::file(n, b))
        .collect();
    multipart("a@contoso.com", "shape", &parts)
}

/// `n` quoted-printable HTML parts of about `each` bytes, every line a soft break.
fn qp_html_parts(n: usize, each: usize) -> Vec<u8> {
    let line = "<p style=3D\"color:red\">Gr=C3=BC=C3=9Fe aus K=C3=B6ln &amp; mehr</p>=\r\n";
    let body = line.repeat(each / line.len() + 1);
    let mut m = format!("{HEAD}Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n").into_bytes();
    for _ in 0..n {
        m.extend_from_slice(
            b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\
              Content-Transfer-Encoding: quoted-printable\r\n\r\n",
        );
        m.extend_from_slice(body.as_bytes());
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--b--\r\n");
    m
}

/// One 7-bit text/plain body of `len` bytes.
fn text_mail(len: usize) -> Vec<u8> {
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    format!(
        "{HEAD}Content-Type: text/plain\r\n\r\n{}",
        line.repeat(len / line.len())
    )
    .into_bytes()
}

/// `n` parts of one byte each.
fn tiny_parts(n: usize) -> Vec<u8> {
    let mut m = format!("{HEAD}Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n").into_bytes();
    for _ in 0..n {
        m.extend_from_slice(b"--b\r\n\r\nx\r\n");
    }
    m.extend_from_slice(b"--b--\r\n");
    m
}

/// A top-level header section of `bytes` bytes made of `field` again and again.
fn header_mail(field: &str, bytes: usize) -> Vec<u8> {
    let mut m = HEAD.as_bytes().to_vec();
    while m.len() + field.len() + 2 < bytes {
        m.extend_from_slice(field.as_bytes());
    }
    m.extend_from_slice(b"\r\nbody\r\n");
    m
}

/// `inner` attached as message/rfc822, plain or base64.
fn nested(inner: &[u8], encoded: bool) -> Vec<u8> {
    let mut m = format!(
        "{HEAD}Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\n\
         Content-Type: text/plain\r\n\r\nForwarded.\r\n--outer\r\nContent-Type: message/rfc822\r\n"
    )
    .into_bytes();
    if encoded {
        m.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
        let text = base64::engine::general_purpose::STANDARD.encode(inner);
        for line in text.as_bytes().chunks(76) {
            m.extend_from_slice(line);
            m.extend_from_slice(b"\r\n");
        }
    } else {
        m.extend_from_slice(b"\r\n");
        m.extend_from_slice(inner);
    }
    m.extend_from_slice(b"\r\n--outer--\r\n");
    m
}
