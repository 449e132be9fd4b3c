//! End-to-end unit tests of `convert`: the rules of design section 5 on small messages built in
//! code.

use super::graph_json::{BodyType, Importance};
use super::*;

fn env(from: &str, rcpt: &[&str]) -> Envelope {
    Envelope::new(from, rcpt.iter().map(|s| s.to_string()).collect())
}

fn opts() -> ConvertOptions {
    ConvertOptions {
        sender: Some("relay@contoso.com".into()),
        allowed_senders: vec!["*@contoso.com".into()],
        save_to_sent_items: true,
        delegated: false,
    }
}

fn one(raw: &[u8], envelope: &Envelope, o: &ConvertOptions) -> GraphPlan {
    let mut plans = convert(raw, envelope, o).expect("converts");
    assert_eq!(plans.len(), 1);
    plans.remove(0)
}

fn send_mail(plan: &GraphPlan) -> &SendMail {
    match &plan.request {
        PlanRequest::SendMail(s) => s,
        other => panic!("expected sendMail, got {other:?}"),
    }
}

fn addrs(list: &[Recipient]) -> Vec<(&str, Option<&str>)> {
    list.iter()
        .map(|r| {
            (
                r.email_address.address.as_str(),
                r.email_address.name.as_deref(),
            )
        })
        .collect()
}

const SIMPLE: &[u8] = b"From: Ann <ann@contoso.com>\r\nTo: Bob <bob@example.com>, header-only@example.com\r\nCc: \"Carol C.\" <CAROL@example.com>\r\nSubject: =?UTF-8?Q?Caf=C3=A9?= menu\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nHello\r\n";

#[test]
fn envelope_decides_recipients() {
    let plan = one(
        SIMPLE,
        &env(
            "ann@contoso.com",
            &["bob@example.com", "carol@example.com", "secret@example.com"],
        ),
        &opts(),
    );
    let m = &send_mail(&plan).message;
    assert_eq!(
        addrs(&m.to_recipients),
        vec![("bob@example.com", Some("Bob"))]
    );
    assert_eq!(
        addrs(&m.cc_recipients),
        vec![("CAROL@example.com", Some("Carol C."))]
    );
    assert_eq!(addrs(&m.bcc_recipients), vec![("secret@example.com", None)]);
    assert_eq!(plan.recipients, 3);
    assert_eq!(m.subject.as_deref(), Some("Café menu"));
    assert_eq!(m.body.content_type, BodyType::Text);
    assert_eq!(m.body.content, "Hello\r\n");
}

#[test]
fn no_recipients_is_permanent_error() {
    let err = convert(SIMPLE, &env("ann@contoso.com", &[]), &opts()).expect_err("no rcpt");
    assert_eq!(err, ConvertError::NoRecipients);
    assert!(err.is_permanent());
}

#[test]
fn split_600_into_500_and_100() {
    let mut raw = String::from("From: ann@contoso.com\r\nTo: ");
    let to: Vec<String> = (0..400)
        .map(|i| format!("user{i:03}@example.com"))
        .collect();
    raw.push_str(&to.join(",\r\n "));
    raw.push_str("\r\nSubject: big list\r\n\r\nhi\r\n");
    let mut rcpt: Vec<String> = to.clone();
    rcpt.extend((0..200).map(|i| format!("bcc{i:03}@example.com")));
    let envelope = Envelope::new("ann@contoso.com", rcpt.clone());
    let plans = convert(raw.as_bytes(), &envelope, &opts()).expect("converts");
    assert_eq!(
        plans.iter().map(|p| p.recipients).collect::<Vec<_>>(),
        vec![500, 100]
    );
    let mut seen: Vec<String> = Vec::new();
    for p in &plans {
        let m = &send_mail(p).message;
        let n = m.to_recipients.len() + m.cc_recipients.len() + m.bcc_recipients.len();
        assert_eq!(n, p.recipients);
        assert!(
            m.to_recipients
                .iter()
                .all(|r| r.email_address.address.starts_with("user"))
        );
        assert!(
            m.bcc_recipients
                .iter()
                .all(|r| r.email_address.address.starts_with("bcc"))
        );
        seen.extend(
            m.to_recipients
                .iter()
                .chain(&m.cc_recipients)
                .chain(&m.bcc_recipients)
                .map(|r| r.email_address.address.clone()),
        );
    }
    seen.sort();
    rcpt.sort();
    assert_eq!(seen, rcpt, "every recipient exactly once");
}

#[test]
fn from_policy_in_json() {
    let envelope = env("bounce@site.example", &["bob@example.com"]);
    // allowed: sends as itself, from set
    let plan = one(SIMPLE, &envelope, &opts());
    assert_eq!(plan.mailbox, Mailbox::User("ann@contoso.com".into()));
    assert_eq!(plan.mailbox.path(), "/users/ann@contoso.com");
    let m = &send_mail(&plan).message;
    assert_eq!(
        m.from.as_ref().map(|r| r.email_address.address.as_str()),
        Some("ann@contoso.com")
    );
    assert!(m.reply_to.is_empty());

    // not allowed: via sender, no from, From moved to replyTo
    let raw =
        b"From: WordPress <wordpress@site.example>\r\nTo: bob@example.com\r\nSubject: x\r\n\r\nx";
    let plan = one(raw, &envelope, &opts());
    assert_eq!(plan.mailbox.path(), "/users/relay@contoso.com");
    let m = &send_mail(&plan).message;
    assert_eq!(m.from, None);
    assert_eq!(
        addrs(&m.reply_to),
        vec![("wordpress@site.example", Some("WordPress"))]
    );

    // existing Reply-To is kept, From not moved
    let raw = b"From: wordpress@site.example\r\nReply-To: Help <help@site.example>\r\nTo: bob@example.com\r\n\r\nx";
    let m = send_mail(&one(raw, &envelope, &opts())).message.clone();
    assert_eq!(
        addrs(&m.reply_to),
        vec![("help@site.example", Some("Help"))]
    );

    // no sender configured and not allowed
    let o = ConvertOptions {
        sender: None,
        ..opts()
    };
    let err = convert(raw, &envelope, &o).expect_err("no mailbox");
    assert!(matches!(err, ConvertError::NoMailbox { .. }));
    assert!(!err.is_permanent());

    // delegated
    let o = ConvertOptions {
        delegated: true,
        ..opts()
    };
    let plan = one(SIMPLE, &envelope, &o);
    assert_eq!(plan.mailbox.path(), "/me");
    assert_eq!(send_mail(&plan).message.from, None);
}

#[test]
fn missing_from_uses_mail_from() {
    let raw = b"To: bob@example.com\r\nSubject: cron\r\n\r\nout\r\n";
    let plan = one(raw, &env("root@contoso.com", &["bob@example.com"]), &opts());
    assert_eq!(plan.mailbox, Mailbox::User("root@contoso.com".into()));
    let plan = one(raw, &env("", &["bob@example.com"]), &opts());
    assert_eq!(plan.mailbox, Mailbox::User("relay@contoso.com".into()));
}

#[test]
fn header_mapping() {
    let raw = b"From: ann@contoso.com\r\nTo: bob@example.com\r\nReply-To: a@x.example, B <b@x.example>\r\nX-Priority: 1 (Highest)\r\nDisposition-Notification-To: ann@contoso.com\r\nReturn-Receipt-To: ann@contoso.com\r\nX-Mailer: PHPMailer 6.9.1 (https://github.com/PHPMailer/PHPMailer)\r\nX-A: 1\r\nX-B: 2\r\nX-C:\r\nX-D: 4\r\nX-E: 5\r\nX-F: 6\r\nSubject: a very\r\n long\r\n subject\r\n\r\nx";
    let plan = one(raw, &env("", &["bob@example.com"]), &opts());
    let m = &send_mail(&plan).message;
    assert_eq!(m.subject.as_deref(), Some("a very long subject"));
    assert_eq!(
        addrs(&m.reply_to),
        vec![("a@x.example", None), ("b@x.example", Some("B"))]
    );
    assert_eq!(m.importance, Some(Importance::High));
    assert_eq!(m.is_read_receipt_requested, Some(true));
    assert_eq!(m.is_delivery_receipt_requested, Some(true));
    let names: Vec<&str> = m
        .internet_message_headers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, vec!["X-Mailer", "X-A", "X-B", "X-D", "X-E"]);
    assert_eq!(
        m.internet_message_headers.len(),
        MAX_INTERNET_MESSAGE_HEADERS
    );
}

#[test]
fn no_x_headers_means_no_field() {
    let plan = one(SIMPLE, &env("", &["bob@example.com"]), &opts());
    let json = serde_json::to_value(send_mail(&plan)).expect("json");
    assert!(json["message"].get("internetMessageHeaders").is_none());
    assert!(json["message"].get("attachments").is_none());
    assert_eq!(json["saveToSentItems"], true);
}

fn with_attachments(sizes: &[usize]) -> Vec<u8> {
    use base64::Engine as _;
    let mut raw = b"From: ann@contoso.com\r\nTo: bob@example.com\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n".to_vec();
    for (i, &size) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..size).map(|n| (n * 7 + i) as u8).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        raw.extend_from_slice(
            format!("--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"f{i}.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n").as_bytes(),
        );
        for line in b64.as_bytes().chunks(76) {
            raw.extend_from_slice(line);
            raw.extend_from_slice(b"\r\n");
        }
    }
    raw.extend_from_slice(b"--b1--\r\n");
    raw
}

#[test]
fn size_switch_to_draft() {
    let envelope = env("", &["bob@example.com"]);
    // 2.5 MB fits in one sendMail (3.3 MB of base64)
    let plan = one(&with_attachments(&[2_500_000]), &envelope, &opts());
    let PlanRequest::SendMail(s) = &plan.request else {
        panic!("expected sendMail");
    };
    assert!(json_len(s) < MAX_REQUEST_BYTES);
    assert_eq!(s.message.attachments[0].name, "f0.bin");

    // 3.2 MB does not: draft, and the attachment (>= 3 MB) goes to uploads
    let raw = with_attachments(&[3_200_000, 1000]);
    let plan = one(&raw, &envelope, &opts());
    let PlanRequest::Draft { message, uploads } = &plan.request else {
        panic!("expected draft, got {:?}", plan.describe(&raw)["request"]);
    };
    assert_eq!(message.attachments.len(), 1);
    assert_eq!(message.attachments[0].name, "f1.bin");
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].name, "f0.bin");
    assert_eq!(uploads[0].size, 3_200_000);
    // Streamed from the spool, decoding to what was attached.
    assert!(matches!(uploads[0].data, AttachmentData::Base64 { .. }));
    let expected: Vec<u8> = (0..3_200_000usize).map(|n| (n * 7) as u8).collect();
    assert!(uploads[0].decoded(&raw).is_some_and(|b| b == expected));
    assert_eq!(message.to_recipients.len(), 1);

    // two 2 MB files: each small, but not both inline
    let plan = one(
        &with_attachments(&[2_000_000, 2_000_000]),
        &envelope,
        &opts(),
    );
    let PlanRequest::Draft { message, uploads } = &plan.request else {
        panic!("expected draft");
    };
    assert_eq!(message.attachments.len(), 1);
    assert_eq!(uploads.len(), 1);
    assert!(json_len(message) < MAX_REQUEST_BYTES);
}

#[test]
fn huge_body_is_too_large() {
    let mut raw = b"From: ann@contoso.com\r\nTo: bob@example.com\r\n\r\n".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 4_100_000));
    let err = convert(&raw, &env("", &["bob@example.com"]), &opts()).expect_err("too large");
    assert!(matches!(err, ConvertError::TooLarge { .. }));
}

const SIGNED: &[u8] = b"From: ann@contoso.com\r\nTo: Bob <bob@example.com>, header-only@example.com\r\nBcc: old@example.com\r\nSubject: signed\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"sig\"\r\n\r\n--sig\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--sig\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\r\n--sig--\r\n";

#[test]
fn signed_mail_goes_as_mime_with_bcc() {
    let plan = one(
        SIGNED,
        &env("", &["bob@example.com", "hidden@example.com"]),
        &opts(),
    );
    assert_eq!(plan.mailbox.path(), "/users/ann@contoso.com");
    assert_eq!(plan.recipients, 2);
    let PlanRequest::Mime { base64 } = &plan.request else {
        panic!("expected mime");
    };
    use base64::Engine as _;
    let mime = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .expect("base64");
    let mime = String::from_utf8(mime).expect("utf8");
    assert!(
        mime.starts_with("From: ann@contoso.com\r\nSubject: signed\r\n"),
        "{mime}"
    );
    assert!(
        mime.contains(
            "\r\nTo: \"Bob\" <bob@example.com>\r\nBcc: hidden@example.com\r\n\r\n--sig\r\n"
        ),
        "{mime}"
    );
    assert!(!mime.contains("header-only@") && !mime.contains("old@"));
    let body_at = SIGNED
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("blank line")
        + 4;
    assert!(
        mime.as_bytes().ends_with(&SIGNED[body_at..]),
        "body bytes unchanged"
    );
}

#[test]
fn precheck_refuses_only_hopeless_mail() {
    assert_eq!(precheck(b""), Err(ConvertError::Empty));
    assert_eq!(precheck(b" \r\n\r\n"), Err(ConvertError::Empty));
    // No header section: delivered as its body (see `headerless_mail_keeps_its_body`).
    assert!(precheck(b"just some text\r\nwithout headers\r\n").is_ok());
    assert!(precheck(b"\r\n\r\nbody").is_ok());
    assert!(precheck(SIMPLE).is_ok());
    assert!(precheck(b"Subject: no from, no to\r\n\r\n").is_ok());
    let mut big = SIGNED.to_vec();
    big.extend(std::iter::repeat_n(b'A', 3_000_000));
    assert!(matches!(
        precheck(&big),
        Err(ConvertError::MimeTooLarge { .. })
    ));
}

/// The shape measured at DATA agrees with what `convert` does: the attachment it uploads from
/// the spool file is counted as streamed, so its message reserves about twice its size.
#[test]
fn precheck_shape_counts_what_convert_streams() -> crate::TestResult {
    let raw = with_attachments(&[MAX_INLINE_ATTACHMENT_BYTES, 1_000]);
    let shape = precheck(&raw)?;
    let plan = one(&raw, &env("", &["bob@example.com"]), &opts());
    let PlanRequest::Draft { uploads, .. } = &plan.request else {
        panic!("a draft: {plan:?}");
    };
    let streamed = uploads
        .iter()
        .filter(|u| matches!(u.data, AttachmentData::Base64 { .. }))
        .count();
    assert_eq!(streamed, 1);
    let encoded = base64_len(MAX_INLINE_ATTACHMENT_BYTES) / 76 * 78;
    assert!(shape.streamed_bytes as usize >= encoded, "{shape:?}");
    assert!(
        (1_300..1_500).contains(&shape.attachment_bytes),
        "{shape:?}"
    );
    let reserved = crate::memory::conversion_bytes(raw.len(), Some(&shape), 1);
    assert!(reserved < 2 * raw.len() + 2 * 1024 * 1024, "{reserved}");
    assert!(!shape.copied);
    // An 8-bit header section is repaired on a copy of the whole message.
    let latin = [&b"Subject: caf\xe9\r\n"[..], &raw].concat();
    assert!(precheck(&latin)?.copied);
    Ok(())
}

/// Mail spooled before the structure limits existed never reaches mail-parser: it fails for good,
/// with the reason, instead of taking the relay's memory.
#[test]
fn spooled_mail_past_the_structure_limits_fails_cleanly() {
    let mut deep = b"From: a@contoso.com\r\nTo: bob@example.com\r\n".to_vec();
    for i in 0..=MAX_MIME_NESTING {
        deep.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                .as_bytes(),
        );
    }
    deep.extend_from_slice(b"\r\nbottom\r\n");
    let envelope = env("a@contoso.com", &["bob@example.com"]);
    let err = convert(&deep, &envelope, &opts()).expect_err("too deep");
    assert_eq!(err, ConvertError::TooDeep);
    assert!(err.is_permanent());
    assert_eq!(
        err.to_string(),
        format!("MIME structure nested too deeply (limit {MAX_MIME_NESTING})")
    );
    assert_eq!(precheck(&deep), Err(ConvertError::TooDeep));
}

#[test]
fn mailbox_path_is_encoded() {
    assert_eq!(Mailbox::Me.path(), "/me");
    assert_eq!(
        Mailbox::User("a/b?c@x.com".into()).path(),
        "/users/a%2Fb%3Fc@x.com"
    );
}

/// Deterministic pseudo-random mutations of real messages: convert must never panic.
#[test]
fn never_panics_on_mangled_input() {
    let seeds: [&[u8]; 3] = [SIMPLE, SIGNED, &with_attachments(&[300])];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let envelope = env("x@y", &["bob@example.com", "z@example.com"]);
    for seed in seeds {
        for _ in 0..400 {
            let mut m = seed.to_vec();
            for _ in 0..(next() % 8 + 1) {
                let pos = (next() as usize) % m.len().max(1);
                match next() % 4 {
                    0 if !m.is_empty() => m[pos] = next() as u8,
                    1 => m.insert(
                        pos.min(m.len()),
                        [b'\0', b'\n', b'\r', b'-', 0xff][next() as usize % 5],
                    ),
                    2 if !m.is_empty() => {
                        m.remove(pos);
                    }
                    _ => m.truncate(pos),
                }
            }
            let _ = precheck(&m);
            let _ = convert(&m, &envelope, &opts());
        }
    }
}

#[test]
fn junk_a_header_hands_over_as_an_address_never_reaches_graph() {
    // mail-parser reads these fields as "B@example.com>" and "ews@contoso}"; Graph would refuse
    // both and fail a message that got its 250 (a fuzzing find). The envelope recipient goes as
    // Bcc in its own spelling instead, and the junk Reply-To is dropped.
    let raw = b"From: ann@contoso.com\r\nTo: B@example.com>\r\nReply-To: ews@contoso}\r\nSubject: s\r\n\r\nhi\r\n";
    let plan = one(raw, &env("ann@contoso.com", &["b@example.com"]), &opts());
    let m = &send_mail(&plan).message;
    assert!(m.to_recipients.is_empty(), "{:?}", m.to_recipients);
    assert_eq!(addrs(&m.bcc_recipients), vec![("b@example.com", None)]);
    assert!(m.reply_to.is_empty(), "{:?}", m.reply_to);
}

#[test]
fn a_lone_line_mail_parser_reads_nothing_in_is_delivered_as_the_body() {
    // precheck passes it (it is not empty), so it got a 250: it must convert (a fuzzing find).
    let raw = b"From Mitoring <mtos\0\0\0\x06\0\0.\r\n";
    assert!(precheck(raw).is_ok());
    let plan = one(raw, &env("ann@contoso.com", &["bob@example.com"]), &opts());
    let m = &send_mail(&plan).message;
    assert!(m.body.content.contains("From Mitoring"), "{:?}", m.body);
    assert_eq!(addrs(&m.bcc_recipients), vec![("bob@example.com", None)]);
}

#[test]
fn a_panic_inside_mail_parser_during_the_structure_walk_is_an_error_not_a_crash() {
    // mail-parser 0.11.9 subtracts with overflow on this input (fuzz finding 14; the first two
    // bytes are the fuzz target's options). In a build with overflow checks that panicked out of
    // precheck; now it is refused like any message mail-parser cannot read.
    let input = include_bytes!("../../fuzz/regressions/convert/structure-walk-qp-overflow");
    let raw = &input[2..];
    assert!(precheck(raw).is_err());
    assert!(convert(raw, &env("ann@contoso.com", &["bob@example.com"]), &opts()).is_err());
}
