//! SMTP ingress against hostile framing and hostile pacing, over real sockets on 127.0.0.1:
//! every bare CR/LF variant around the DATA end dot (SMTP smuggling), BDAT chunk sizes that do
//! not fit, clients that trickle a byte at a time (slowloris) or keep a connection with NOOPs
//! that move no mail. The pacing tests run on
//! tokio's paused clock, so the 5- and 10-minute deadlines pass in virtual time.

use graph_relay_testkit as common;
use graph_relay_testkit::smtp_support as support;

use std::time::Duration;

use common::fake_graph::FakeMicrosoft;
use common::relay::{RelayOptions, TestRelay};
use support::{Raw, WAIT, settings, start};
use tokio::net::TcpStream;
use tokio::time::Instant;

const TIMEOUT_421: &str = "421 4.4.2 relay.test Timeout exceeded, closing connection";
const TOO_MANY_421: &str = "421 4.7.0 relay.test Too many errors, closing connection";
const TOO_BIG_552: &str = "552 5.3.4 Message size exceeds fixed maximum message size";
const BDAT_SYNTAX_501: &str = "501 5.5.4 Syntax: BDAT chunk-size [LAST]";
const UNFRAMED_421: &str = "421 4.5.0 relay.test Cannot find the end of that BDAT chunk, \
                            closing connection";

/// A second transaction hidden in the message text after a would-be end of data.
const SMUGGLED: &[u8] = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n\
                          Subject: smuggled\r\n\r\nsmuggled\r\n";

/// Sequences some SMTP implementation takes for the end of data, none of them `<CRLF>.<CRLF>`,
/// and what the message keeps of each: the bytes as sent, except that a `.` right after a CRLF
/// starts a dot-stuffed line and is removed (RFC 5321 §4.5.2).
const NOT_AN_END: [(&[u8], &[u8]); 14] = [
    (b"\n.\n", b"\n.\n"),
    (b"\r\n.\n", b"\r\n\n"),
    (b"\n.\r\n", b"\n.\r\n"),
    (b"\r.\r", b"\r.\r"),
    (b"\r.\r\n", b"\r.\r\n"),
    (b"\r.\n", b"\r.\n"),
    (b"\n.\r", b"\n.\r"),
    (b"\r\n.\r", b"\r\n\r"),
    (b"\r\n.\r\r\n", b"\r\n\r\r\n"),
    (b"\r\n.\r\r\r\n", b"\r\n\r\r\r\n"),
    (b"\r\n.\n\r\n", b"\r\n\n\r\n"),
    (b"\r\n..\r\n", b"\r\n.\r\n"),
    (b"\r\n. \r\n", b"\r\n \r\n"),
    (b"\n\n.\n\n", b"\n\n.\n\n"),
];

/// MAIL from `a@x.test` and RCPT to `r@y.test`.
async fn open_transaction(c: &mut Raw<TcpStream>) {
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    assert_eq!(c.cmd("RCPT TO:<r@y.test>").await, "250 2.1.5 Recipient OK");
}

/// `open_transaction`, then DATA and its 354.
async fn open_data(c: &mut Raw<TcpStream>) {
    open_transaction(c).await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
}

/// A connection whose small writes leave at once. With Nagle's algorithm a write that follows
/// an unacknowledged one waits for the peer's delayed ACK, tens of real milliseconds, and on the
/// paused clock virtual minutes pass meanwhile.
async fn connect(server: &support::TestServer) -> Raw<TcpStream> {
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    Raw::new(stream)
}

/// As `connect`, greeted and past EHLO.
async fn client(server: &support::TestServer) -> Raw<TcpStream> {
    let mut c = connect(server).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    c
}

/// Keeps a short timer pending so the paused clock advances in small steps. Tokio moves a
/// paused clock to the next timer whenever the runtime parks, even when it parked only for the
/// kernel to hand over loopback bytes; without this the step could be a whole reply timeout.
fn small_clock_steps() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[tokio::test]
async fn only_crlf_dot_crlf_ends_data_and_smuggled_commands_stay_message_text() {
    let server = start(settings()).await;
    for (i, (fake_end, kept)) in NOT_AN_END.iter().enumerate() {
        let mut c = server.client().await;
        open_data(&mut c).await;
        let mut data = b"Subject: s\r\n\r\nhello".to_vec();
        data.extend_from_slice(fake_end);
        data.extend_from_slice(SMUGGLED);
        data.extend_from_slice(b".\r\n");
        c.send(&data).await;
        let r = c.reply().await;
        assert!(
            r.starts_with("250 2.0.0 Ok: queued as "),
            "{fake_end:?}: {r}"
        );
        // The very next reply is NOOP's: no smuggled command was answered in between.
        assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK", "{fake_end:?}");
        let msgs = server.sink.messages();
        assert_eq!(
            msgs.len(),
            i + 1,
            "{fake_end:?}: one message per connection"
        );
        let (envelope, body) = &msgs[i];
        assert_eq!(envelope.mail_from, "a@x.test", "{fake_end:?}");
        assert_eq!(envelope.rcpt_to, vec!["r@y.test"], "{fake_end:?}");
        let want = [&b"Subject: s\r\n\r\nhello"[..], kept, SMUGGLED].concat();
        assert_eq!(
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&want),
            "{fake_end:?}"
        );
    }
    server.stop().await;
}

/// A bare CR or LF before `<CRLF>.<CRLF>` does not hide the end: the client and every compliant
/// server agree that the data ends there, and what follows is the client's next command.
#[tokio::test]
async fn crlf_dot_crlf_after_a_bare_cr_or_lf_still_ends_data() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    let cases: [(&[u8], &[u8]); 4] = [
        (b"\r\n.\r\n", b"\r\n"),
        (b"\r\r\n.\r\n", b"\r\r\n"),
        (b"\n\r\n.\r\n", b"\n\r\n"),
        (b"\r\n.\r\r\n\r\n.\r\n", b"\r\n\r\r\n\r\n"),
    ];
    for (end, kept) in cases {
        open_data(&mut c).await;
        c.send(&[&b"Subject: s\r\n\r\nhello"[..], end].concat())
            .await;
        let r = c.reply().await;
        assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{end:?}: {r}");
        assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK", "{end:?}");
        let body = server.sink.messages().pop().expect("a message").1;
        assert_eq!(
            body,
            [&b"Subject: s\r\n\r\nhello"[..], kept].concat(),
            "{end:?}"
        );
    }
    assert_eq!(server.sink.count(), cases.len());
    server.stop().await;
}

/// The whole relay: a message carrying a smuggled second transaction behind `<CRLF>.<CR><CR><LF>`
/// reaches Graph once, with the smuggled text in its body, and the victim never gets mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smuggled_transaction_never_reaches_graph() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let mut c = Raw::ready(TcpStream::connect(relay.smtp).await.expect("connect")).await;
    open_data(&mut c).await;
    let mut data =
        b"From: a@x.test\r\nTo: r@y.test\r\nSubject: first\r\n\r\nhello\r\n.\r\r\n".to_vec();
    data.extend_from_slice(SMUGGLED);
    data.extend_from_slice(b".\r\n");
    c.send(&data).await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    let sent = ms.wait_for_sent(1, WAIT).await;
    relay.wait_queue_empty(WAIT).await;
    let sent_now = ms.sent();
    assert_eq!(sent_now.len(), 1, "exactly one message reached Graph");
    assert_eq!(sent[0].subject().as_deref(), Some("first"));
    assert_eq!(sent[0].all_recipients(), vec!["r@y.test"]);
    let (_, content) = sent[0].body().expect("body");
    assert!(content.contains("RCPT TO:<victim@y.test>"), "{content}");
    relay.shutdown().await;
}

/// smtp-proto restarted overflowing digits, so `BDAT 999999999999999999999 LAST` was `BDAT 9
/// LAST` and the rest of the "chunk" was read as commands. A chunk that cannot fit gets 552; as
/// its bytes cannot be skipped, the connection then closes with 421 rather than reading them as
/// commands.
#[tokio::test]
async fn bdat_sizes_that_do_not_fit_get_552_and_the_connection_closes() {
    let mut s = settings();
    s.max_message_bytes = 1000;
    let server = start(s).await;
    for size in [
        "999999999999999999999",
        "18446744073709551616",
        "18446744073709551615",
        "99999999999999999999999999999999999999999",
        "1001",
    ] {
        let mut c = server.client().await;
        open_transaction(&mut c).await;
        let mut batch = format!("BDAT {size} LAST\r\n").into_bytes();
        batch.extend_from_slice(SMUGGLED);
        batch.extend_from_slice(b".\r\nQUIT\r\n");
        c.send(&batch).await;
        assert_eq!(c.reply().await, TOO_BIG_552, "BDAT {size}");
        assert_eq!(c.reply().await, UNFRAMED_421, "BDAT {size}");
        assert!(c.closed().await, "BDAT {size}");
    }
    assert_eq!(server.sink.count(), 0);
    // A chunk that fits is still fine.
    let mut c = server.client().await;
    open_transaction(&mut c).await;
    let chunk = vec![b'x'; 1000];
    c.send(&[&b"BDAT 1000 LAST\r\n"[..], &chunk].concat()).await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(server.sink.messages()[0].1, chunk);
    server.stop().await;
}

/// The same parser read `SIZE=999999999999999999999` as 9, so MAIL accepted it.
#[tokio::test]
async fn a_declared_size_beyond_64_bits_gets_552_at_mail() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=999999999999999999999")
            .await,
        TOO_BIG_552
    );
    // The session goes on.
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=1000").await,
        "250 2.1.0 Sender OK"
    );
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    server.stop().await;
}

/// A BDAT whose size cannot be read says nothing about where its chunk ends either.
#[tokio::test]
async fn bdat_syntax_errors_get_501_and_the_connection_closes() {
    let server = start(settings()).await;
    for line in [
        "BDAT",
        "BDAT LAST",
        "BDAT 12x LAST",
        "BDAT -1",
        "BDAT 0x10",
        "BDAT 5 LAST extra",
        "BDAT 5 FIRST",
    ] {
        let mut c = server.client().await;
        open_transaction(&mut c).await;
        c.send(format!("{line}\r\nNOOP\r\n").as_bytes()).await;
        assert_eq!(c.reply().await, BDAT_SYNTAX_501, "{line}");
        assert_eq!(c.reply().await, UNFRAMED_421, "{line}");
        assert!(c.closed().await, "{line}");
    }
    assert_eq!(server.sink.count(), 0);
    server.stop().await;
}

/// Sends `bytes` one at a time, `every` apart, until the server answers, and asserts the answer
/// is the timeout 421 and a close, at `deadline` from now give or take `every`. Returns how many
/// bytes went out. Panics if all were sent without an answer.
async fn trickle_until_cut_off(
    c: &mut Raw<TcpStream>,
    bytes: &[u8],
    every: Duration,
    deadline: Duration,
) -> usize {
    let start = Instant::now();
    for (i, b) in bytes.iter().enumerate() {
        c.send(&[*b]).await;
        if c.answered_within(every).await {
            assert_cut_off_at(start.elapsed(), deadline, every);
            assert_eq!(c.reply().await, TIMEOUT_421);
            assert!(c.closed().await);
            return i + 1;
        }
    }
    panic!("no answer after trickling {} bytes", bytes.len());
}

/// Asserts `took` is the deadline, give or take the trickle interval (the clock only moves in
/// steps of the timers pending).
fn assert_cut_off_at(took: Duration, deadline: Duration, every: Duration) {
    assert!(
        took >= deadline - every && took <= deadline + every,
        "cut off after {took:?}, deadline {deadline:?}"
    );
}

/// Before, the idle timeout was per read: one byte every few seconds kept a command line open
/// forever. Now a line has `command_timeout` (5 min by default) from when the server starts
/// waiting for it, while a client that sends its commands normally is served meanwhile.
#[tokio::test(start_paused = true)]
async fn a_trickled_command_line_is_cut_off_at_the_command_deadline() {
    small_clock_steps();
    let server = start(settings()).await;
    let every = Duration::from_secs(5);
    let mut slow = client(&server).await;
    let mut normal = client(&server).await;
    let sent = tokio::join!(
        async {
            let line = format!("NOOP {}\r\n", "x".repeat(2000));
            trickle_until_cut_off(&mut slow, line.as_bytes(), every, Duration::from_secs(300)).await
        },
        async {
            tokio::time::sleep(Duration::from_secs(100)).await;
            let r = normal
                .send_mail("a@x.test", &["r@y.test"], "Subject: s\r\n\r\nhi\r\n")
                .await;
            assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
        }
    )
    .0;
    assert!(sent < 100, "{sent} bytes");
    assert_eq!(server.sink.count(), 1);
    server.stop().await;
}

/// DATA (and a BDAT message) must be complete within `data_timeout` (10 min by default) of its
/// start, however steadily it trickles; nothing of a cut-off message is accepted.
#[tokio::test(start_paused = true)]
async fn trickled_message_data_is_cut_off_at_the_data_deadline() {
    small_clock_steps();
    let server = start(settings()).await;
    let every = Duration::from_secs(5);
    let body = "x\r\n".repeat(1000);
    let data_deadline = Duration::from_secs(600);

    let mut c = client(&server).await;
    open_data(&mut c).await;
    trickle_until_cut_off(&mut c, body.as_bytes(), every, data_deadline).await;

    // BDAT: one large chunk trickled.
    let mut c = client(&server).await;
    open_transaction(&mut c).await;
    c.send(b"BDAT 3000 LAST\r\n").await;
    trickle_until_cut_off(&mut c, body.as_bytes(), every, data_deadline).await;

    // BDAT: many one-byte chunks, each quick on its own; the deadline covers the message.
    let mut c = client(&server).await;
    open_transaction(&mut c).await;
    let start = Instant::now();
    let reply = loop {
        c.send(b"BDAT 1\r\nx").await;
        let r = c.reply().await;
        if r != "250 2.0.0 1 octets received" {
            break r;
        }
        if c.answered_within(every).await {
            break c.reply().await;
        }
    };
    assert_eq!(reply, TIMEOUT_421);
    assert_cut_off_at(start.elapsed(), data_deadline, every);
    assert_eq!(server.sink.count(), 0);
    server.stop().await;
}

/// The defaults do not hurt a slow but real client: a minute between commands and a message
/// whose lines come 30 s apart for 5 minutes.
#[tokio::test(start_paused = true)]
async fn a_slow_but_steady_client_is_served() {
    small_clock_steps();
    let server = start(settings()).await;
    let mut c = client(&server).await;
    let pause = Duration::from_secs(60);
    tokio::time::sleep(pause).await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender OK");
    tokio::time::sleep(pause).await;
    assert_eq!(c.cmd("RCPT TO:<r@y.test>").await, "250 2.1.5 Recipient OK");
    tokio::time::sleep(pause).await;
    assert!(c.cmd("DATA").await.starts_with("354 "));
    for i in 0..10 {
        c.send(format!("line {i}\r\n").as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    c.send(b".\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    tokio::time::sleep(pause).await;
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    assert_eq!(server.sink.count(), 1);
    server.stop().await;
}

/// Two tricklers take both slots of `max_connections = 2`: a real client is turned away with
/// 421 4.7.0 meanwhile, and served once the tricklers are cut off at the command deadline.
#[tokio::test(start_paused = true)]
async fn tricklers_holding_every_slot_are_cut_off_and_real_clients_get_in() {
    small_clock_steps();
    let mut s = settings();
    s.max_connections = 2;
    let server = start(s).await;
    let every = Duration::from_secs(3);
    let mut tricklers = Vec::new();
    for _ in 0..2 {
        let mut c = client(&server).await;
        tricklers.push(tokio::spawn(async move {
            let line = format!("MAIL FROM:<{}@x.test>\r\n", "a".repeat(1000));
            trickle_until_cut_off(&mut c, line.as_bytes(), every, Duration::from_secs(300)).await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut turned_away = connect(&server).await;
    assert_eq!(
        turned_away.reply().await,
        "421 4.7.0 relay.test Too many connections, try again later"
    );
    for t in tricklers {
        t.await.expect("trickler cut off at the command deadline");
    }
    // The slots free as the trickler sessions end; poll briefly for one.
    let mut c = None;
    for _ in 0..100 {
        let mut attempt = connect(&server).await;
        if attempt.reply().await.starts_with("220 ") {
            c = Some(attempt);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = c.expect("a slot came free");
    assert!(c.cmd("EHLO real.client").await.starts_with("250"));
    let r = c
        .send_mail("a@x.test", &["r@y.test"], "Subject: s\r\n\r\nhi\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    server.stop().await;
}

/// Postfix's `smtpd_junk_command_limit`: NOOP, RSET, VRFY and HELP are answered as usual up to
/// 100 between accepted messages; past that each one counts as an error, so a client that
/// keeps a slot with a NOOP before every timeout is closed after 110. Mail resets the count.
#[tokio::test]
async fn commands_that_move_no_mail_are_limited_between_messages() {
    let server = start(settings()).await;
    let mut c = server.client().await;
    let junk = ["NOOP", "RSET", "VRFY postmaster", "HELP"];
    for i in 0..100 {
        let reply = c.cmd(junk[i % junk.len()]).await;
        assert!(reply.starts_with("2"), "command {i}: {reply}");
    }
    let accepted = c
        .send_mail("a@x.test", &["r@y.test"], "Subject: s\r\n\r\nhi\r\n")
        .await;
    assert!(
        accepted.starts_with("250 2.0.0 Ok: queued as "),
        "{accepted}"
    );
    // The count starts again after the message: 100 more, then 10 more that count as errors.
    for i in 0..110 {
        assert_eq!(
            c.cmd("NOOP").await,
            "250 2.0.0 OK",
            "NOOP {i} after the message"
        );
    }
    assert_eq!(c.cmd("NOOP").await, TOO_MANY_421);
    assert!(c.closed().await);
    assert_eq!(server.sink.count(), 1);
    server.stop().await;
}
