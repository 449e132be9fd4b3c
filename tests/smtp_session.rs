//! SMTP ingress over real sockets on 127.0.0.1: exact replies from raw exchanges, one test per
//! mailin-embedded defect (named `mailin_defect_*`), limits, timeouts and shutdown. The sink is a
//! recorder: the SMTP layer is what is under test.

use graph_relay_testkit::smtp_support as support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use graph_relay::smtp::{self, AcceptError};
use support::{Raw, RecordingSink, WAIT, settings, start};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn greeting_and_ehlo_advertise_the_extensions_and_nothing_unconfigured() {
    let server = start(settings()).await;
    let mut c = Raw::connect(server.addr).await;
    assert_eq!(c.reply().await, "220 relay.test ESMTP graph-relay ready");
    assert_eq!(
        c.cmd("EHLO client.test").await,
        "250-relay.test\n250-SIZE 36700160\n250-PIPELINING\n250-8BITMIME\n250-SMTPUTF8\n\
         250-CHUNKING\n250 ENHANCEDSTATUSCODES"
    );
    // Neither STARTTLS nor AUTH is offered or accepted without configuration.
    assert_eq!(
        c.cmd("STARTTLS").await,
        "502 5.5.1 STARTTLS not implemented"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN AHUAcA==").await,
        "502 5.5.1 AUTH not implemented"
    );
    assert_eq!(
        c.cmd("QUIT").await,
        "221 2.0.0 relay.test closing connection"
    );
    assert!(c.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn helo_gets_a_plain_250_and_mail_works_after_it() {
    let server = start(settings()).await;
    let mut c = Raw::connect(server.addr).await;
    c.reply().await;
    assert_eq!(c.cmd("HELO old.client").await, "250 relay.test");
    let r = c
        .send_mail("a@x.test", &["b@y.test"], "Subject: hi\r\n\r\nhi\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let msgs = server.sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0.helo, "old.client");
    server.stop().await;
}

#[tokio::test]
async fn a_transaction_records_envelope_and_exact_unstuffed_bytes() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    assert_eq!(
        c.cmd("MAIL FROM:<sender@x.test>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<one@y.test>").await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<two@y.test>").await,
        "250 2.1.5 Recipient OK"
    );
    // Duplicate (any case): accepted, recorded once.
    assert_eq!(
        c.cmd("RCPT TO:<ONE@y.test>").await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(
        c.cmd("DATA").await,
        "354 2.0.0 End data with <CR><LF>.<CR><LF>"
    );
    c.send(b"Subject: t\r\n\r\nline\r\n..leading dot\r\n.\r\n")
        .await;
    let r = c.reply().await;
    let ids = server.sink.queue_ids();
    assert_eq!(ids.len(), 1);
    assert_eq!(r, format!("250 2.0.0 Ok: queued as {}", ids[0]));
    let (env, body) = &server.sink.messages()[0];
    assert_eq!(env.mail_from, "sender@x.test");
    assert_eq!(env.rcpt_to, vec!["one@y.test", "two@y.test"]);
    assert_eq!(env.helo, "client.test");
    assert_eq!(env.client_ip, Some("127.0.0.1".parse().expect("ip")));
    assert_eq!(env.auth_user, None);
    assert!(!env.smtputf8);
    assert_eq!(
        body.as_slice(),
        b"Subject: t\r\n\r\nline\r\n.leading dot\r\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn rset_noop_vrfy_help_and_quit() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert_eq!(
        c.cmd("VRFY someone").await,
        "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"
    );
    assert_eq!(
        c.cmd("HELP").await,
        "214 2.0.0 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    // RSET ended the transaction: RCPT is out of order again, and a new MAIL is not nested.
    assert_eq!(
        c.cmd("RCPT TO:<b@y.test>").await,
        "503 5.5.1 Need MAIL command"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(
        c.cmd("QUIT").await,
        "221 2.0.0 relay.test closing connection"
    );
    assert!(c.closed().await);
    assert_eq!(server.sink.count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn many_messages_on_one_connection() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    for i in 0..5 {
        let r = c
            .send_mail(
                &format!("s{i}@x.test"),
                &["r@y.test"],
                &format!("Subject: {i}\r\n\r\nbody {i}\r\n"),
            )
            .await;
        assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    }
    let msgs = server.sink.messages();
    assert_eq!(msgs.len(), 5);
    for (i, (env, body)) in msgs.iter().enumerate() {
        assert_eq!(env.mail_from, format!("s{i}@x.test"));
        assert_eq!(body, format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes());
    }
    server.stop().await;
}

/// mailin-embedded answered `MAIL FROM:<>` with 500.
#[tokio::test]
async fn mailin_defect_null_sender_is_accepted() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("MAIL FROM:<>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RCPT TO:<r@y.test>").await, "250 2.1.5 Recipient OK");
    assert_eq!(c.cmd("DATA").await.get(..3), Some("354"));
    c.send(b"Subject: bounce\r\n\r\nx\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert_eq!(server.sink.messages()[0].0.mail_from, "");
    server.stop().await;
}

/// mailin-embedded answered `MAIL FROM: <a@b>` (a space after the colon) with 500.
#[tokio::test]
async fn mailin_defect_space_before_the_address_is_accepted() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("MAIL FROM: <a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RCPT TO: <r@y.test>").await, "250 2.1.5 Recipient OK");
    c.cmd("DATA").await;
    c.send(b"\r\nx\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    let (env, _) = &server.sink.messages()[0];
    assert_eq!(env.mail_from, "a@x.test");
    assert_eq!(env.rcpt_to, vec!["r@y.test"]);
    server.stop().await;
}

/// mailin-embedded answered any `SIZE=` parameter with 500 and never advertised SIZE.
#[tokio::test]
async fn mailin_defect_size_param_is_understood() {
    let mut s = settings();
    s.max_message_bytes = 1000;
    let server = start(s).await;
    let mut c = server.connect().await;
    c.reply().await;
    assert!(c.cmd("EHLO c").await.contains("\n250-SIZE 1000\n"));
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=1001").await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    // Refused MAIL leaves no transaction behind.
    assert_eq!(
        c.cmd("RCPT TO:<r@y.test>").await,
        "503 5.5.1 Need MAIL command"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=1000 BODY=8BITMIME").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=lots").await,
        "501 5.5.4 Invalid SIZE parameter"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> FROB=1").await,
        "555 5.5.4 Unsupported parameter FROB=1"
    );
    server.stop().await;
}

/// mailin-embedded had no size limit at all; here DATA over the limit is read to its end, then
/// refused with 552, and the session goes on.
#[tokio::test]
async fn mailin_defect_size_limit_is_enforced_after_reading_all_data() {
    let mut s = settings();
    s.max_message_bytes = 1000;
    let server = start(s).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RCPT TO:<r@y.test>").await, "250 2.1.5 Recipient OK");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    // 200 kB in lines, including lines that look like commands: none may be acted on.
    let line = format!("{}\r\n", "x".repeat(98));
    for _ in 0..2000 {
        c.send(line.as_bytes()).await;
    }
    c.send(b"QUIT\r\n.\r\n").await;
    assert_eq!(
        c.reply().await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert_eq!(server.sink.count(), 0);
    // Exactly at the limit is fine, and the session is still usable.
    let body = format!("{}\r\n", "y".repeat(998));
    let r = c.send_mail("a@x.test", &["r@y.test"], &body).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert_eq!(server.sink.messages()[0].1.len(), 1000);
    server.stop().await;
}

/// mailin-embedded ended DATA at `<LF>.<CRLF>`, so a second, smuggled transaction could ride in
/// one message. Only `<CRLF>.<CRLF>` ends DATA here.
#[tokio::test]
async fn mailin_defect_bare_lf_dot_does_not_end_data() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RCPT TO:<r@y.test>").await, "250 2.1.5 Recipient OK");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(
        b"Subject: s\r\n\r\nhello\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\n\
          DATA\r\nsmuggled\r\n.\n",
    )
    .await;
    c.send(b"tail\r\n.\r\n").await;
    // One reply only: the message, with the smuggling attempt inside it as text.
    let r = c.reply().await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    let msgs = server.sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0.rcpt_to, vec!["r@y.test"]);
    assert_eq!(
        msgs[0].1.as_slice(),
        b"Subject: s\r\n\r\nhello\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\n\
          DATA\r\nsmuggled\r\n\ntail\r\n"
    );
    server.stop().await;
}

/// mailin-embedded stayed in DATA after a 4xx/5xx at the end of data: the client's RSET and QUIT
/// were swallowed as body and it hung. Every sink error here gets its reply and the session goes
/// on.
#[tokio::test]
async fn mailin_defect_stuck_after_4xx_5xx_at_data_end() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    let cases = [
        (
            AcceptError::Unavailable("disk on fire".into()),
            "451 4.3.0 Queue unavailable, try again later",
        ),
        (
            AcceptError::NoSpace("ENOSPC".into()),
            "452 4.3.1 Insufficient system storage, try again later",
        ),
        (
            AcceptError::Rejected("not a MIME message".into()),
            "554 5.6.0 Message rejected: not a MIME message",
        ),
    ];
    for (error, want) in cases {
        server.sink.fail_next(error);
        let r = c
            .send_mail("a@x.test", &["r@y.test"], "Subject: s\r\n\r\nx\r\n")
            .await;
        assert_eq!(r, want);
        // The session answers the next commands: it is out of DATA, the transaction is over.
        assert_eq!(
            c.cmd("RCPT TO:<r@y.test>").await,
            "503 5.5.1 Need MAIL command"
        );
        assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    }
    assert_eq!(server.sink.count(), 0);
    let r = c
        .send_mail("a@x.test", &["r@y.test"], "Subject: s\r\n\r\nok\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert_eq!(
        c.cmd("QUIT").await,
        "221 2.0.0 relay.test closing connection"
    );
    assert!(c.closed().await);
    assert_eq!(server.sink.count(), 1);
    server.stop().await;
}

/// mailin-embedded had no way to stop: `serve()` never returned. Here an idle session gets
/// `421 4.3.2` at once, a session in a transaction finishes it first, new connections are
/// refused and `serve` returns.
#[tokio::test]
async fn mailin_defect_shutdown_is_graceful() {
    let mut s = settings();
    s.shutdown_grace = WAIT;
    let server = start(s).await;
    let mut idle = server.client().await;
    let mut busy = server.client().await;
    assert_eq!(
        busy.cmd("MAIL FROM:<a@x.test>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        busy.cmd("RCPT TO:<r@y.test>").await,
        "250 2.1.5 Recipient OK"
    );

    server.shutdown.cancel();
    assert_eq!(
        idle.reply().await,
        "421 4.3.2 relay.test Service shutting down, closing connection"
    );
    assert!(idle.closed().await);

    // The transaction in progress completes, then the session is closed.
    assert!(busy.cmd("DATA").await.starts_with("354 "));
    busy.send(b"Subject: last\r\n\r\nx\r\n.\r\n").await;
    assert!(busy.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(
        busy.reply().await,
        "421 4.3.2 relay.test Service shutting down, closing connection"
    );
    assert!(busy.closed().await);

    let addr = server.addr;
    let sink = server.sink.clone();
    server.stop().await;
    assert_eq!(sink.count(), 1);
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_grace_period_ends_unfinished_transactions() {
    let mut s = settings();
    s.shutdown_grace = Duration::from_millis(50);
    let server = start(s).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RCPT TO:<r@y.test>").await, "250 2.1.5 Recipient OK");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"Subject: never finished\r\n").await;
    server.shutdown.cancel();
    assert_eq!(
        c.reply().await,
        "421 4.3.2 relay.test Service shutting down, closing connection"
    );
    assert!(c.closed().await);
    let sink = server.sink.clone();
    server.stop().await;
    assert_eq!(sink.count(), 0);
}

#[tokio::test]
async fn an_empty_message_and_a_dot_stuffed_first_line() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    // The terminating dot right after the 354.
    let r = c.send_mail("a@x.test", &["r@y.test"], "").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let r = c.send_mail("a@x.test", &["r@y.test"], "..first\r\n").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let msgs = server.sink.messages();
    assert_eq!(msgs[0].1.as_slice(), b"");
    assert_eq!(msgs[1].1.as_slice(), b".first\r\n");
    server.stop().await;
}

#[tokio::test]
async fn eight_bit_data_is_accepted_without_body_8bitmime() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RCPT TO:<r@y.test>").await, "250 2.1.5 Recipient OK");
    c.cmd("DATA").await;
    let body = b"Subject: caf\xc3\xa9\r\n\r\nna\xefve latin-1 \xe9\r\n";
    c.send(body).await;
    c.send(b".\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert_eq!(server.sink.messages()[0].1.as_slice(), body);
    server.stop().await;
}

#[tokio::test]
async fn smtputf8_is_accepted_and_recorded() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    assert_eq!(
        c.cmd("MAIL FROM:<jörg@exämple.test> SMTPUTF8 BODY=8BITMIME")
            .await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<情報@例え.test>").await,
        "250 2.1.5 Recipient OK"
    );
    c.cmd("DATA").await;
    c.send("Subject: ü\r\n\r\nü\r\n.\r\n".as_bytes()).await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    // Without SMTPUTF8 the flag stays off.
    let r = c.send_mail("a@x.test", &["r@y.test"], "\r\nx\r\n").await;
    assert!(r.starts_with("250 2.0.0"));
    let msgs = server.sink.messages();
    assert_eq!(msgs[0].0.mail_from, "jörg@exämple.test");
    assert_eq!(msgs[0].0.rcpt_to, vec!["情報@例え.test"]);
    assert!(msgs[0].0.smtputf8);
    assert!(!msgs[1].0.smtputf8);
    server.stop().await;
}

#[tokio::test]
async fn pipelined_commands_get_their_replies_in_order() {
    let server = start(settings()).await;
    let mut c = server.connect().await;
    c.reply().await;
    // One write, one group: each reply must arrive without the client sending anything more.
    c.send(
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<bad\r\nRCPT TO:<r1@y.test>\r\n\
          RCPT TO:<r2@y.test>\r\nDATA\r\n",
    )
    .await;
    assert!(c.reply().await.ends_with("250 ENHANCEDSTATUSCODES"));
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    assert_eq!(c.reply().await, "501 5.1.3 Bad recipient address syntax");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert_eq!(c.reply().await, "354 2.0.0 End data with <CR><LF>.<CR><LF>");
    // The end of data and the next group in one write.
    c.send(b"\r\npipelined\r\n.\r\nMAIL FROM:<b@x.test>\r\nRCPT TO:<r3@y.test>\r\nDATA\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK");
    assert!(c.reply().await.starts_with("354 "));
    c.send(b"\r\nsecond\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(c.reply().await, "250 2.0.0 OK");
    assert_eq!(c.reply().await, "250 2.0.0 OK");
    assert_eq!(c.reply().await, "221 2.0.0 relay.test closing connection");
    assert!(c.closed().await);
    let msgs = server.sink.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].0.rcpt_to, vec!["r1@y.test", "r2@y.test"]);
    assert_eq!(msgs[0].1.as_slice(), b"\r\npipelined\r\n");
    assert_eq!(msgs[1].0.rcpt_to, vec!["r3@y.test"]);
    server.stop().await;
}

#[tokio::test]
async fn out_of_order_commands_get_503() {
    let server = start(settings()).await;
    let mut c = server.connect().await;
    c.reply().await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test>").await,
        "503 5.5.1 Send EHLO or HELO first"
    );
    c.cmd("EHLO c").await;
    assert_eq!(
        c.cmd("RCPT TO:<r@y.test>").await,
        "503 5.5.1 Need MAIL command"
    );
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 Need MAIL command");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 Need RCPT command");
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test>").await,
        "503 5.5.1 Nested MAIL command"
    );
    // Still in the transaction, and still usable.
    assert_eq!(c.cmd("RCPT TO:<r@y.test>").await, "250 2.1.5 Recipient OK");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"\r\nx\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    server.stop().await;
}

#[tokio::test]
async fn bad_addresses_and_unknown_commands() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("FROBNICATE").await, "500 5.5.1 Unknown command");
    assert_eq!(c.cmd("").await, "500 5.5.1 Unknown command");
    assert_eq!(c.cmd("EXPN list").await, "502 5.5.1 EXPN not implemented");
    assert_eq!(
        c.cmd("MAIL FROM:a@x.test").await,
        "501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> BODY=BINARYMIME").await,
        "555 5.5.4 Unsupported parameter BODY=BINARYMIME"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(
        c.cmd("RCPT TO:<>").await,
        "501 5.1.3 Bad recipient address syntax"
    );
    c.send(b"RCPT TO:<a\xff@y.test>\r\n").await;
    assert_eq!(c.reply().await, "501 5.1.3 Bad recipient address syntax");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    server.stop().await;
}

#[tokio::test]
async fn too_many_errors_close_the_connection() {
    let mut s = settings();
    s.max_errors = 3;
    let server = start(s).await;
    let mut c = server.client().await;
    for _ in 0..3 {
        assert_eq!(c.cmd("BOGUS").await, "500 5.5.1 Unknown command");
    }
    assert_eq!(
        c.cmd("BOGUS").await,
        "421 4.7.0 relay.test Too many errors, closing connection"
    );
    assert!(c.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn an_overlong_line_gets_500_and_the_session_goes_on() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    // The reply comes before the line ends: the client is not kept waiting.
    c.send(format!("MAIL FROM:<{}@x.test>", "a".repeat(5000)).as_bytes())
        .await;
    assert_eq!(c.reply().await, "500 5.5.2 Line too long");
    // The rest of the over-long line is skipped, not parsed as a command.
    c.send(format!("{} SIZE=1\r\n", "b".repeat(20_000)).as_bytes())
        .await;
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    // A whole over-long line in one write is the same.
    c.send(format!("NOOP {}\r\nNOOP\r\n", "c".repeat(5000)).as_bytes())
        .await;
    assert_eq!(c.reply().await, "500 5.5.2 Line too long");
    assert_eq!(c.reply().await, "250 2.0.0 OK");
    server.stop().await;
}

#[tokio::test]
async fn max_recipients_gets_452_and_the_rest_is_delivered() {
    let mut s = settings();
    s.max_recipients = 2;
    let server = start(s).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RCPT TO:<r1@y.test>").await, "250 2.1.5 Recipient OK");
    assert_eq!(c.cmd("RCPT TO:<r2@y.test>").await, "250 2.1.5 Recipient OK");
    // A duplicate does not count against the limit.
    assert_eq!(c.cmd("RCPT TO:<r1@y.test>").await, "250 2.1.5 Recipient OK");
    assert_eq!(
        c.cmd("RCPT TO:<r3@y.test>").await,
        "452 4.5.3 Too many recipients"
    );
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"\r\nx\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert_eq!(
        server.sink.messages()[0].0.rcpt_to,
        vec!["r1@y.test", "r2@y.test"]
    );
    server.stop().await;
}

#[tokio::test]
async fn client_disconnect_mid_data_accepts_nothing() {
    let server = start(settings()).await;
    {
        let mut c = server.client().await;
        assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
        assert_eq!(c.cmd("RCPT TO:<r@y.test>").await, "250 2.1.5 Recipient OK");
        assert!(c.cmd("DATA").await.starts_with("354 "));
        c.send(b"Subject: cut\r\n\r\nhalf a mess").await;
        // Dropped here: the connection closes mid-DATA.
    }
    let mut c = server.client().await;
    let r = c
        .send_mail("b@x.test", &["r@y.test"], "\r\nwhole\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let sink = server.sink.clone();
    server.stop().await;
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0.mail_from, "b@x.test");
}

#[tokio::test]
async fn clients_outside_allowed_networks_get_554_at_connect() {
    let mut s = settings();
    s.allowed_networks = vec!["10.0.0.0/8".parse().expect("net")];
    let server = start(s).await;
    let mut c = Raw::connect(server.addr).await;
    assert_eq!(c.reply().await, "554 5.7.1 relay.test Access denied");
    assert!(c.closed().await);
    server.stop().await;
}

/// The seam: a connection accepted over loopback, served as if it came from elsewhere.
#[tokio::test]
async fn serve_connection_checks_the_given_peer_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut s = settings();
    s.allowed_networks = vec!["192.0.2.0/24".parse().expect("net")];
    let settings = Arc::new(s);
    let sink = Arc::new(RecordingSink::default());
    let token = CancellationToken::new();

    for (peer, allowed) in [("203.0.113.9:4000", false), ("192.0.2.7:4000", true)] {
        let peer: SocketAddr = peer.parse().expect("peer");
        let client = tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            let first = c.reply().await;
            if first.starts_with("220") {
                c.cmd("EHLO c").await;
                let r = c.send_mail("a@x.test", &["r@y.test"], "\r\nx\r\n").await;
                assert!(r.starts_with("250 2.0.0"), "{r}");
                c.cmd("QUIT").await;
            }
            (first, c.closed().await)
        });
        let (stream, _) = listener.accept().await.expect("accept");
        smtp::serve_connection(stream, peer, &settings, sink.as_ref(), &token).await;
        let (first, closed) = client.await.expect("client");
        assert!(closed);
        if allowed {
            assert!(first.starts_with("220 "), "{first}");
        } else {
            assert_eq!(first, "554 5.7.1 relay.test Access denied");
        }
    }
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0.client_ip, Some("192.0.2.7".parse().expect("ip")));
}

#[tokio::test]
async fn max_connections_gets_421_and_close() {
    let mut s = settings();
    s.max_connections = 1;
    let server = start(s).await;
    let mut first = Raw::connect(server.addr).await;
    assert!(first.reply().await.starts_with("220 "));
    let mut second = Raw::connect(server.addr).await;
    assert_eq!(
        second.reply().await,
        "421 4.7.0 relay.test Too many connections, try again later"
    );
    assert!(second.closed().await);
    assert!(first.cmd("QUIT").await.starts_with("221 "));
    assert!(first.closed().await);
    // The slot frees once the first session's task ends; poll briefly for it.
    let mut greeted = false;
    for _ in 0..100 {
        let mut c = Raw::connect(server.addr).await;
        if c.reply().await.starts_with("220 ") {
            greeted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(greeted, "the slot was never released");
    server.stop().await;
}

#[tokio::test]
async fn idle_timeout_gets_421_4_4_2() {
    let mut s = settings();
    s.idle_timeout = Duration::from_millis(200);
    let server = start(s).await;
    let mut c = Raw::connect(server.addr).await;
    assert!(c.reply().await.starts_with("220 "));
    assert_eq!(
        c.reply().await,
        "421 4.4.2 relay.test Timeout exceeded, closing connection"
    );
    assert!(c.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn data_timeout_gets_421_and_accepts_nothing() {
    let mut s = settings();
    s.data_timeout = Duration::from_millis(200);
    let server = start(s).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RCPT TO:<r@y.test>").await, "250 2.1.5 Recipient OK");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(b"Subject: slow\r\n").await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 relay.test Timeout exceeded, closing connection"
    );
    assert!(c.closed().await);
    assert_eq!(server.sink.count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn bdat_out_of_sequence_drains_its_chunk_and_says_503() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    // No RCPT yet: the 12-byte chunk ("QUIT\r\nQUIT\r\n") must not be read as commands.
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    c.send(b"BDAT 12 LAST\r\nQUIT\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await, "503 5.5.1 Need RCPT command");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert!(c.cmd("QUIT").await.starts_with("221"));
    assert_eq!(server.sink.count(), 0);
    server.stop().await;
}

/// RFC 3030 CHUNKING: raw chunks (no dot-stuffing, binary-safe), a reply per chunk, the
/// message committed at LAST; `BDAT 0 LAST` ends a message; DATA cannot follow BDAT.
#[tokio::test]
async fn bdat_chunks_make_one_message_byte_for_byte() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    let part1 = b"Subject: chunked\r\n\r\n.leading dot stays\r\n";
    let part2 = b"\x00\xffbinary\r\n.\r\n";
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert!(c.cmd("RCPT TO:<b@y.test>").await.starts_with("250 2.1.5"));
    // Pipelined: both chunks and the end in one write.
    let mut batch = format!("BDAT {}\r\n", part1.len()).into_bytes();
    batch.extend_from_slice(part1);
    batch.extend_from_slice(format!("BDAT {}\r\n", part2.len()).as_bytes());
    batch.extend_from_slice(part2);
    batch.extend_from_slice(b"BDAT 0 LAST\r\n");
    c.send(&batch).await;
    assert_eq!(
        c.reply().await,
        format!("250 2.0.0 {} octets received", part1.len())
    );
    assert_eq!(
        c.reply().await,
        format!("250 2.0.0 {} octets received", part2.len())
    );
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    let (envelope, bytes) = server.sink.messages().pop().expect("one message");
    assert_eq!(envelope.rcpt_to, vec!["b@y.test".to_string()]);
    assert_eq!(
        bytes,
        [&part1[..], &part2[..]].concat(),
        "kept exactly as sent"
    );

    // A second transaction on the same connection: DATA after BDAT is out of order.
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert!(c.cmd("RCPT TO:<b@y.test>").await.starts_with("250 2.1.5"));
    c.send(b"BDAT 3\r\nabc").await;
    assert_eq!(c.reply().await, "250 2.0.0 3 octets received");
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 DATA after BDAT");
    assert!(c.cmd("QUIT").await.starts_with("221"));
    assert_eq!(server.sink.count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn bdat_over_the_size_limit_is_drained_and_refused_at_last() {
    let mut s = settings();
    s.max_message_bytes = 10;
    let server = start(s).await;
    let mut c = server.client().await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert!(c.cmd("RCPT TO:<b@y.test>").await.starts_with("250 2.1.5"));
    c.send(b"BDAT 8\r\n12345678").await;
    assert_eq!(c.reply().await, "250 2.0.0 8 octets received");
    c.send(b"BDAT 8 LAST\r\nQUIT\r\nab").await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    assert_eq!(
        c.cmd("NOOP").await,
        "250 2.0.0 OK",
        "the chunk was not read as commands"
    );
    assert_eq!(server.sink.count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn lettre_sends_several_messages_on_one_connection() {
    use lettre::address::Envelope;
    use lettre::transport::smtp::client::AsyncSmtpConnection;
    use lettre::transport::smtp::extension::ClientId;

    let server = start(settings()).await;
    let mut conn = AsyncSmtpConnection::connect_tokio1(
        server.addr,
        Some(WAIT),
        &ClientId::Domain("lettre.test".into()),
        None,
        None,
    )
    .await
    .expect("lettre connects");
    for i in 0..3 {
        let email = lettre::Message::builder()
            .from("Sender <sender@x.test>".parse().expect("from"))
            .to(format!("rcpt{i}@y.test").parse().expect("to"))
            .subject(format!("Grüße {i}"))
            .body(format!("body {i}: ünïcödé\n.leading dot\n"))
            .expect("message");
        let envelope = Envelope::new(
            Some("sender@x.test".parse().expect("from")),
            vec![format!("rcpt{i}@y.test").parse().expect("to")],
        )
        .expect("envelope");
        let response = conn
            .send(&envelope, &email.formatted())
            .await
            .expect("lettre send");
        assert!(response.is_positive());
        let text = response.message().collect::<Vec<_>>().join(" ");
        assert!(text.contains("Ok: queued as "), "{text}");
    }
    conn.quit().await.expect("quit");
    let msgs = server.sink.messages();
    assert_eq!(msgs.len(), 3);
    for (i, (env, body)) in msgs.iter().enumerate() {
        assert_eq!(env.helo, "lettre.test");
        assert_eq!(env.rcpt_to, vec![format!("rcpt{i}@y.test")]);
        let text = String::from_utf8_lossy(body);
        assert!(text.contains(&format!("rcpt{i}@y.test")), "{text}");
        assert!(body.ends_with(b"\r\n"), "{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn python_smtplib_sends_and_sees_the_extensions() {
    let server = start(settings()).await;
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
code, _ = s.ehlo("py.test")
print("ehlo", code)
print("features", ",".join(sorted(s.esmtp_features)))
for i in range(2):
    msg = ("From: a@x.test\r\nTo: b@y.test\r\nSubject: py %d\r\n\r\nh\xe9llo %d\r\n.dot\r\n" % (i, i)).encode("latin-1")
    refused = s.sendmail("a@x.test", ["b@y.test", "c@y.test"], msg)
    print("refused", len(refused))
try:
    s.sendmail("a@x.test", ["b@y.test"], b"x" * 100, mail_options=["SIZE=99999999999"])
except smtplib.SMTPSenderRefused as e:
    print("sizeerr", e.smtp_code, e.smtp_error.decode())
print("quit", s.quit()[0])
"#;
    let out = support::python(script, &[server.addr.port().to_string()]).await;
    assert!(out.contains("ehlo 250"), "{out}");
    assert!(
        out.contains("features 8bitmime,chunking,enhancedstatuscodes,pipelining,size,smtputf8"),
        "{out}"
    );
    assert_eq!(out.matches("refused 0").count(), 2, "{out}");
    assert!(
        out.contains("sizeerr 552 5.3.4 Message size exceeds fixed maximum message size"),
        "{out}"
    );
    assert!(out.contains("quit 221"), "{out}");
    let msgs = server.sink.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].0.rcpt_to, vec!["b@y.test", "c@y.test"]);
    assert_eq!(msgs[0].0.helo, "py.test");
    // smtplib dot-stuffs; we unstuff; the 8-bit byte survives.
    assert!(
        msgs[1]
            .1
            .ends_with(b"Subject: py 1\r\n\r\nh\xe9llo 1\r\n.dot\r\n"),
        "{:?}",
        String::from_utf8_lossy(&msgs[1].1)
    );
    server.stop().await;
}

/// Many large messages at once cannot exhaust memory: past `data_memory_bytes` (all sessions
/// together) a message is drained and refused with 452 4.3.1, the session stays usable, and
/// the budget comes back when the holder finishes.
#[tokio::test]
async fn data_memory_budget_refuses_with_452_and_recovers() {
    let mut s = settings();
    s.max_message_bytes = 200 * 1024;
    s.data_memory_bytes = 256 * 1024;
    let server = start(s).await;
    let line = format!("{}\r\n", "x".repeat(1022));
    let body = |kib: usize| line.repeat(kib);

    // Session A holds 192 KiB in memory, mid-DATA.
    let mut a = Raw::ready(tokio::net::TcpStream::connect(server.addr).await.unwrap()).await;
    assert!(a.cmd("MAIL FROM:<a@x.org>").await.starts_with("250"));
    assert!(a.cmd("RCPT TO:<b@y.org>").await.starts_with("250"));
    assert!(a.cmd("DATA").await.starts_with("354"));
    a.send(body(192).as_bytes()).await;
    // No reply comes mid-DATA to wait on; give the server a moment to read what was sent.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Session B's 100 KiB does not fit beside it.
    let mut b = Raw::ready(tokio::net::TcpStream::connect(server.addr).await.unwrap()).await;
    let refused = b.send_mail("c@x.org", &["d@y.org"], &body(100)).await;
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    let noop = b.cmd("NOOP").await;
    assert!(noop.starts_with("250"), "the session stays usable: {noop}");

    // A finishes; its share is returned, and B's retry fits.
    a.send(b".\r\n").await;
    assert!(a.reply().await.starts_with("250 2.0.0"));
    let accepted = b.send_mail("c@x.org", &["d@y.org"], &body(100)).await;
    assert!(accepted.starts_with("250 2.0.0"), "{accepted}");
    assert_eq!(server.sink.count(), 2);
    server.stop().await;
}
