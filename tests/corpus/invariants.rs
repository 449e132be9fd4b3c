//! The rules every conversion keeps, whatever a golden says (envelope recipients exactly once,
//! at most 500 per plan, at most 5 `x-` headers with values, requests under 4,000,000 bytes),
//! checked the same way by the corpus test (tests/corpus.rs) and the `convert` fuzz target
//! (fuzz/fuzz_targets/convert.rs). Test-only.

use std::collections::BTreeMap;

use base64::Engine as _;
use graph_relay::convert::{
    self, GraphPlan, MAX_INTERNET_MESSAGE_HEADERS, MAX_RECIPIENTS_PER_MESSAGE, MAX_REQUEST_BYTES,
    PlanRequest,
};
use graph_relay::envelope::Envelope;

fn key(a: &str) -> String {
    a.trim().to_lowercase()
}

/// Rules every conversion keeps, whatever the golden says.
pub fn check_invariants(plans: &[GraphPlan], envelope: &Envelope) -> Vec<String> {
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

/// The addresses the To, Cc and Bcc fields of a MIME plan name, each once (sent mail kept
/// byte for byte may name one address in two fields; it is still one recipient).
fn mime_recipients(base64: &str) -> Vec<String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .unwrap_or_default();
    let mut named = field_recipients(&raw);
    let mut seen = std::collections::HashSet::new();
    named.retain(|a| seen.insert(key(a)));
    named
}

/// The deliverable addresses the To, Cc and Bcc fields of `raw`'s header section name. Each field
/// is read on its own, because mail-parser reading a whole header section lets one bad field
/// swallow the next (after `Date:-T` it does not see the following line), and Exchange, which
/// reads MIME plans, does not.
pub fn field_recipients(raw: &[u8]) -> Vec<String> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if line == b"\n" || line == b"\r\n" {
            break;
        }
        match fields.last_mut() {
            Some(field) if matches!(line.first(), Some(b' ' | b'\t')) => {
                field.extend_from_slice(line)
            }
            _ => fields.push(line.to_vec()),
        }
    }
    let mut named = Vec::new();
    for mut field in fields {
        let name = field.split(|&b| b == b':').next().unwrap_or_default();
        if !["to", "cc", "bcc"]
            .iter()
            .any(|n| name.trim_ascii().eq_ignore_ascii_case(n.as_bytes()))
        {
            continue;
        }
        field.extend_from_slice(b"\r\n\r\n");
        let Some(msg) = mail_parser::MessageParser::new().parse_headers(&field) else {
            continue;
        };
        named.extend(
            msg.all_to()
                .chain(msg.all_cc())
                .chain(msg.all_bcc())
                .flat_map(|a| a.iter())
                .filter_map(|a| a.address().filter(|a| deliverable(a)).map(str::to_string)),
        );
    }
    named
}

/// Whether Exchange could send to `address`: a dot-atom `local@domain` (letters, digits and the
/// RFC 5322 atext signs; the domain letters, digits, dots and hyphens). Header junk that
/// mail-parser still reads as an address (`bob.jones��xample.com`, `@example.com>`, control
/// characters and text of other fields) is kept in MIME byte for byte and names nobody.
fn deliverable(address: &str) -> bool {
    address.rsplit_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.is_empty()
            && local
                .chars()
                .all(|c| c.is_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c))
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
    })
}
