//! End to end: the relay's token handling against the fake identity platform and Graph —
//! no credentials (hold), a revoked token (one refresh, one retry), throttling, an expired
//! secret (reauth_required, then the status page's Re-authorize), and delegated device code login.

use graph_relay_testkit as common;

use common::fake_graph::*;
use common::mail::{Part, multipart};
use common::relay::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn mail(subject: &str) -> Vec<u8> {
    format!("From: relay@contoso.test\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n")
        .into_bytes()
}

async fn send(relay: &TestRelay, subject: &str) {
    let code = send_raw(
        relay.smtp,
        "relay@contoso.test",
        &["alice@example.org"],
        &mail(subject),
    )
    .await;
    assert_eq!(code, 250, "SMTP must accept {subject:?}");
}

/// Polls `/status` until `cond` holds.
async fn wait_status(relay: &TestRelay, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = relay.status_json().await;
        if cond(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!("status never showed {what}: {s}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn press_reauthorize(relay: &TestRelay) {
    let addr = relay.status.expect("status listener");
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("http://{addr}/reauthorize"))
        .send()
        .await
        .expect("POST /reauthorize");
    assert!(
        r.status().is_success() || r.status().is_redirection(),
        "reauthorize answered {}",
        r.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_mail_is_accepted_and_held() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(
        &ms,
        RelayOptions {
            credentials: false,
            ..RelayOptions::default()
        },
    )
    .await;
    send(&relay, "held").await;
    assert_eq!(
        relay.files_in("queue").len(),
        2,
        "message + envelope in queue/: {:?}",
        relay.files_in("queue")
    );
    relay.wake();
    let s = wait_status(&relay, "a held message", |s| s["queue"]["held"] == 1).await;
    assert_eq!(s["token"]["state"], "missing", "{s}");
    assert_eq!(s["queue"]["pending"], 1, "{s}");
    assert_eq!(s["queue"]["failed"], 0, "{s}");
    // Give delivery a moment to (wrongly) try: nothing may reach Microsoft.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ms.requests().is_empty(),
        "no request without credentials:\n{}",
        ms.request_log()
    );
    assert_eq!(relay.files_in("queue").len(), 2, "still queued");
    assert!(relay.files_in("failed").is_empty());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_means_one_refresh_one_retry_delivered_once() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    send(&relay, "before").await;
    ms.wait_for_sent(1, WAIT).await;
    assert_eq!(ms.token_requests(), 1);

    ms.revoke_all_tokens();
    send(&relay, "after").await;
    let sent = ms.wait_for_sent(2, WAIT).await;
    relay.wait_queue_empty(WAIT).await;

    assert_eq!(sent[1].subject().as_deref(), Some("after"));
    assert_eq!(ms.sent().len(), 2, "delivered once");
    assert_eq!(
        ms.token_requests(),
        2,
        "exactly one refresh:\n{}",
        ms.request_log()
    );
    let sends: Vec<u16> = ms
        .requests()
        .iter()
        .filter(|r| r.route == Route::SendMail)
        .map(|r| r.status)
        .collect();
    assert_eq!(sends, vec![202, 401, 202], "one retry after the 401");
    let s = relay.status_json().await;
    assert_eq!(s["token"]["state"], "valid", "{s}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_429_retry_after_is_waited_out() {
    let ms = FakeMicrosoft::start().await;
    ms.push_response(Route::SendMail, ScriptedResponse::throttled("1.5"));
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    send(&relay, "throttled").await;
    ms.wait_for_sent(1, WAIT).await;
    relay.wait_queue_empty(WAIT).await;
    let sends: Vec<_> = ms
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::SendMail)
        .collect();
    assert_eq!(
        sends.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 202]
    );
    let waited = sends[1].at.duration_since(sends[0].at);
    assert!(
        waited >= Duration::from_millis(1400),
        "Retry-After 1.5 not honoured: retried after {waited:?}"
    );
    assert_eq!(ms.sent().len(), 1);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_outage_is_transient() {
    let ms = FakeMicrosoft::start().await;
    ms.fail_next_token_requests(1, TokenFailure::TemporarilyUnavailable);
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    send(&relay, "after outage").await;
    let sent = ms.wait_for_sent(1, WAIT).await;
    assert_eq!(sent[0].subject().as_deref(), Some("after outage"));
    relay.wait_queue_empty(WAIT).await;
    assert!(relay.files_in("failed").is_empty());
    assert!(ms.token_requests() >= 2);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_secret_holds_mail_until_reauthorized() {
    let ms = FakeMicrosoft::start().await;
    ms.set_token_failure(Some(TokenFailure::SecretExpired));
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    send(&relay, "while expired").await;
    relay.wake();
    let s = wait_status(&relay, "reauth_required with a held message", |s| {
        s["token"]["state"] == "reauth_required" && s["queue"]["held"] == 1
    })
    .await;
    assert!(
        s["token"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("7000222"),
        "{s}"
    );
    send(&relay, "still accepted").await;
    assert_eq!(ms.request_count(Route::SendMail), 0);
    assert!(relay.files_in("failed").is_empty(), "held, never failed");

    // The operator fixes the secret and presses Re-authorize.
    ms.set_token_failure(None);
    press_reauthorize(&relay).await;
    let sent = ms.wait_for_sent(2, WAIT).await;
    let mut subjects: Vec<_> = sent.iter().map(|m| m.subject().unwrap()).collect();
    subjects.sort();
    assert_eq!(subjects, vec!["still accepted", "while expired"]);
    relay.wait_queue_empty(WAIT).await;
    wait_status(&relay, "valid", |s| s["token"]["state"] == "valid").await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_device_code_login_from_the_status_page_drains_held_mail() {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::delegated(&ms)).await;
    send(&relay, "needs login").await;
    relay.wake();
    wait_status(&relay, "a held message", |s| s["queue"]["held"] == 1).await;
    assert_eq!(ms.request_count(Route::SendMail), 0);

    press_reauthorize(&relay).await;
    let code = ms.wait_for_device_code(WAIT).await;
    assert!(
        code.scope.split(' ').any(|s| s == "offline_access"),
        "asks for a refresh token: {}",
        code.scope
    );
    assert_eq!(ms.approve_device_code(), 1);

    let m = &ms.wait_for_sent(1, WAIT).await[0];
    assert!(m.delegated, "sent with the delegated token");
    assert_eq!(m.mailbox, ms.delegated_user());
    assert_eq!(m.subject().as_deref(), Some("needs login"));
    relay.wait_queue_empty(WAIT).await;
    let codes = ms.device_codes();
    assert_eq!(codes[0].state, DeviceCodeState::Redeemed);
    assert_eq!(codes[0].too_fast_polls, 0, "polls respect the interval");

    // The refresh token was stored 0600 in the token cache.
    let cache = relay.queue_dir().join("token.json");
    let meta = std::fs::metadata(&cache).expect("token cache written");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_large_message_goes_through_the_draft_path() {
    // The draft path (POST /me/messages, createUploadSession) needs Mail.ReadWrite; Graph answers
    // 403 ErrorAccessDenied to a delegated token that only has Mail.Send.
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::delegated(&ms)).await;
    ms.set_device_code_auto_approve(true);
    press_reauthorize(&relay).await;
    wait_status(&relay, "valid", |s| s["token"]["state"] == "valid").await;

    let big: Vec<u8> = (0..4_500_000u32).map(|i| (i % 249) as u8).collect();
    let msg = multipart(
        &ms.delegated_user(),
        "big delegated",
        &[Part::file("big.bin", &big)],
    );
    send_ok(
        relay.smtp,
        &ms.delegated_user(),
        &["alice@example.org"],
        &msg,
    )
    .await;
    let m = &ms.wait_for_sent(1, WAIT).await[0];
    assert_eq!(m.path, SendPath::Draft);
    assert!(m.attachments()[0].bytes == big);
    relay.shutdown().await;
}

/// Certificate credentials (JWT client assertion), PS256 with `x5t#S256` and the older RS256 with
/// `x5t`: the fake checks the thumbprint and the signature against the registered certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_credentials_deliver_with_ps256_and_rs256() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (alg, key) in [("PS256", "app.key"), ("RS256", "app-pkcs1.key")] {
        let ms = FakeMicrosoft::start().await;
        ms.set_client_certificate_pem(&std::fs::read_to_string(fixtures.join("app.crt")).unwrap());
        let relay = TestRelay::start(
            &ms,
            RelayOptions {
                credentials: false,
                microsoft_extra: format!(
                    "tenant = \"{}\"\nclient_id = \"{}\"\nclient_certificate = \"{}\"\nclient_key = \"{}\"\nassertion_alg = \"{alg}\"\n",
                    ms.tenant(),
                    ms.client_id(),
                    fixtures.join("app.crt").display(),
                    fixtures.join(key).display()
                ),
                ..RelayOptions::default()
            },
        )
        .await;
        let message = format!(
            "From: relay@contoso.test\r\nTo: a@example.org\r\nSubject: signed with {alg}\r\n\r\nhi\r\n"
        );
        send_ok(
            relay.smtp,
            "relay@contoso.test",
            &["a@example.org"],
            message.as_bytes(),
        )
        .await;
        let sent = ms.wait_for_sent(1, WAIT).await;
        assert_eq!(sent[0].subject(), Some(format!("signed with {alg}")));
        let token_request = ms
            .requests()
            .into_iter()
            .find(|r| r.route == Route::Token)
            .expect("a token request");
        assert_eq!(
            token_request.form_value("client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert!(
            token_request.form_value("client_secret").is_none(),
            "no secret with a certificate"
        );
        relay.shutdown().await;
    }
}

/// A wrong secret shows at start-up, before any mail: the relay asks for a token at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_secret_shows_on_status_before_any_mail() {
    let ms = FakeMicrosoft::start().await;
    ms.set_token_failure(Some(TokenFailure::InvalidSecret));
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = relay.status_json().await;
        if status["token"]["state"] == "reauth_required" {
            break status;
        }
        assert!(Instant::now() < deadline, "state never changed: {status}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let reason = status["token"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("AADSTS7000215"), "{reason}");
    assert_eq!(status["queue"]["pending"], 0);
    assert_eq!(ms.token_requests(), 1);
    relay.shutdown().await;
}
