//! eml2graph: prints the Graph plan(s) graph-relay would send for an .eml file, as JSON. The
//! tool used to write and review the corpus goldens. Reads only its input; never sends.
//!
//! ```text
//! cargo run --example eml2graph -- [FILE|-] [--from ADDR] [--to ADDR]... [--sender ADDR]
//!                                  [--allow ADDR|*@DOMAIN]... [--delegated] [--no-save]
//! ```
//! Without `--to`, the envelope is every To/Cc/Bcc address of the message. Without `--from`,
//! MAIL FROM is empty. Output: a JSON array of plans (`GraphPlan::describe`), or the error.

use std::io::Read as _;
use std::process::ExitCode;

use graph_relay::convert::{self, ConvertOptions};
use graph_relay::envelope::Envelope;

fn usage() -> ExitCode {
    eprintln!(
        "usage: eml2graph [FILE|-] [--from ADDR] [--to ADDR]... [--sender ADDR] [--allow ADDR|*@DOMAIN]... [--delegated] [--no-save]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut path: Option<String> = None;
    let mut mail_from = String::new();
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut opts = ConvertOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            let v = args.next();
            if v.is_none() {
                eprintln!("{name} needs a value");
            }
            v
        };
        match arg.as_str() {
            "--from" => match value("--from") {
                Some(v) => mail_from = v,
                None => return usage(),
            },
            "--to" => match value("--to") {
                Some(v) => rcpt_to.extend(v.split(',').map(|s| s.trim().to_string())),
                None => return usage(),
            },
            "--sender" => match value("--sender") {
                Some(v) => opts.sender = Some(v),
                None => return usage(),
            },
            "--allow" => match value("--allow") {
                Some(v) => opts.allowed_senders.push(v),
                None => return usage(),
            },
            "--delegated" => opts.delegated = true,
            "--no-save" => opts.save_to_sent_items = false,
            "-h" | "--help" => return usage(),
            a if a.starts_with("--") => {
                eprintln!("unknown option {a}");
                return usage();
            }
            a if path.is_none() => path = Some(a.to_string()),
            _ => return usage(),
        }
    }

    let raw = match path.as_deref() {
        None | Some("-") => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                eprintln!("reading stdin: {e}");
                return ExitCode::FAILURE;
            }
            buf
        }
        Some(p) => match std::fs::read(p) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{p}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };

    if rcpt_to.is_empty()
        && let Some(msg) = mail_parser::MessageParser::new().parse_headers(&raw)
    {
        rcpt_to = msg
            .all_to()
            .chain(msg.all_cc())
            .chain(msg.all_bcc())
            .flat_map(|a| a.iter())
            .filter_map(|a| a.address().map(str::to_string))
            .collect();
    }

    if let Err(e) = convert::precheck(&raw) {
        eprintln!("precheck: {e} (SMTP would refuse this at DATA)");
    }
    let envelope = Envelope::new(mail_from, rcpt_to);
    match convert::convert(&raw, &envelope, &opts) {
        Ok(plans) => {
            let json: Vec<_> = plans.iter().map(|p| p.describe(&raw)).collect();
            match serde_json::to_string_pretty(&json) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let kind = if e.is_permanent() {
                "permanent"
            } else {
                "configuration"
            };
            eprintln!("cannot convert ({kind}): {e}");
            ExitCode::FAILURE
        }
    }
}
