//! convert_peak: how much memory `convert` takes for one .eml, as a multiple of its size. Reads
//! the file, notes the process's peak RSS (VmHWM), converts it, and prints the growth of the
//! peak over the message size: the multiplier the delivery side reserves from the shared memory
//! budget before it converts (`deliver::convert_memory`). Linux only.
//!
//! ```text
//! cargo run --release --example convert_peak -- FILE...
//! ```

use graph_relay::convert::{self, ConvertOptions};
use graph_relay::envelope::Envelope;

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
    let opts = ConvertOptions {
        sender: Some("relay@contoso.com".into()),
        ..Default::default()
    };
    let envelope = Envelope::new("a@contoso.com", vec!["b@example.com".into()]);
    for path in std::env::args().skip(1) {
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
        let size = raw.len() as f64 / 1024.0;
        println!(
            "{path}: {:.1} MiB, peak +{:.1} MiB = {:.2} x size ({})",
            size / 1024.0,
            (after - before) as f64 / 1024.0,
            (after - before) as f64 / size,
            match &outcome {
                Ok(plans) => format!("{} plan(s)", plans.len()),
                Err(e) => e.to_string(),
            }
        );
    }
}
