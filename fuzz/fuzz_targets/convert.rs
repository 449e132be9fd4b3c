//! Fuzz target: `convert::precheck` + `convert::convert` on arbitrary message bytes. Never a
//! panic; every plan keeps the corpus rules (tests/corpus/invariants.rs: envelope recipients
//! exactly once, ≤ 500 per plan, ≤ 5 `x-` headers with values, requests < 4,000,000 bytes);
//! precheck and convert agree on what can never convert; every planned upload decodes to its
//! size; every plan describes itself.
//!
//! Input: byte 0 picks the options, byte 1 the envelope recipients, the rest is the message.

#![no_main]

#[path = "../../tests/corpus/invariants.rs"]
mod invariants;

use graph_relay::convert::{self, ConvertError, ConvertOptions, PlanRequest};
use graph_relay::envelope::Envelope;
use libfuzzer_sys::fuzz_target;

/// Envelope recipients to pick from: plain, mixed case, IDN in both spellings, and the
/// addresses the seed messages' To/Cc name.
const RCPTS: [&str; 8] = [
    "b@example.com",
    "C@Example.com",
    "a@contoso.com",
    "jö@exämple.de",
    "x@xn--exmple-cua.de",
    "customer@example.com",
    "to@example.com",
    "cc@example.org",
];

fuzz_target!(|data: &[u8]| {
    // The relay parses with mail-parser inside `catch_unwind` (convert::parse): a panic there,
    // such as mail-parser 0.11.9's overflow in its quoted-printable decoder (finding 13), is
    // caught and the message read another way. libfuzzer-sys's hook aborts on every panic,
    // caught or not; this one only prints, and a panic that escapes still aborts the run.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("{info}"))));
    let [opt, pick, raw @ ..] = data else {
        return;
    };
    let opts = ConvertOptions {
        sender: (opt & 1 != 0).then(|| "relay@contoso.com".to_string()),
        allowed_senders: match (opt >> 1) & 3 {
            0 => vec![],
            1 => vec!["*@contoso.com".into()],
            2 => vec!["*@example.com".into(), "a@contoso.com".into()],
            _ => vec!["*".into()],
        },
        save_to_sent_items: opt & 8 != 0,
        delegated: opt & 16 != 0,
    };
    let rcpt_to: Vec<String> = RCPTS
        .iter()
        .enumerate()
        .filter(|(i, _)| pick & (1 << i) != 0)
        .map(|(_, a)| a.to_string())
        .collect();
    let envelope = Envelope::new(if opt & 32 != 0 { "" } else { "a@contoso.com" }, rcpt_to);

    let pre = convert::precheck(raw);
    match convert::convert(raw, &envelope, &opts) {
        Ok(plans) => {
            let problems = invariants::check_invariants(&plans, &envelope);
            assert!(problems.is_empty(), "{problems:#?}");
            for plan in &plans {
                let _ = plan.describe(raw);
                if let PlanRequest::Draft { uploads, .. } = &plan.request {
                    for upload in uploads {
                        let bytes = upload.decoded(raw).expect("a planned upload decodes");
                        assert_eq!(bytes.len(), upload.size, "{}", upload.name);
                    }
                }
            }
            assert!(
                pre.is_ok(),
                "precheck refused ({pre:?}) mail that converts: it would get a 554 at DATA"
            );
        }
        Err(e @ (ConvertError::Empty | ConvertError::Unparseable)) => assert!(
            pre.is_err(),
            "precheck passed mail that can never convert ({e}): a 250, then a bounce"
        ),
        Err(_) => {}
    }
});
