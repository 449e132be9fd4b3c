//! Self-tests of the fake Microsoft identity + Graph server (the testkit's fake_graph.rs): it must
//! reject what Graph and Entra reject, and accept a good request, so relay tests can trust it.
//! Uses reqwest directly; never the relay.

use graph_relay_testkit as common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::fake_graph::*;
use serde_json::{Value, json};
use std::time::Duration;

const MAILBOX: &str = "relay@contoso.test";

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let r = rb.send().await.expect("request to fake");
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        text: r.text().await.unwrap(),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post_json(url: &str, token: Option<&str>, body: &Value) -> Resp {
    let mut rb = http().post(url).json(body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    send(rb).await
}

fn sendmail_url(ms: &FakeMicrosoft, mailbox: &str) -> String {
    format!("{}/users/{mailbox}/sendMail", ms.graph_url())
}

fn good_message() -> Value {
    json!({
        "message": {
            "subject": "Meet for lunch?",
            "body": {"contentType": "Text", "content": "The new cafeteria is open."},
            "toRecipients": [{"emailAddress": {"address": "frannis@contoso.test", "name": "Fran"}}],
            "ccRecipients": [{"emailAddress": {"address": "danas@contoso.test"}}],
            "bccRecipients": [{"emailAddress": {"address": "hidden@example.org"}}],
            "internetMessageHeaders": [{"name": "X-Relay-Id", "value": "q1"}],
            "importance": "high",
            "attachments": [{
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "hello.txt",
                "contentType": "text/plain",
                "contentBytes": STANDARD.encode(b"hello attachment"),
            }],
        },
        "saveToSentItems": false,
    })
}

/// sendMail with `message` changed by `f`; returns the answer.
async fn send_modified(ms: &FakeMicrosoft, f: impl FnOnce(&mut Value)) -> Resp {
    let mut body = good_message();
    f(&mut body);
    let token = ms.mint_app_token();
    post_json(&sendmail_url(ms, MAILBOX), Some(&token), &body).await
}

fn x_headers(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"name": format!("X-Custom-{i}"), "value": "v"}))
            .collect(),
    )
}

// --- Graph: accepted ------------------------------------------------------------------------

#[tokio::test]
async fn accepts_a_good_json_sendmail_and_records_it() {
    let ms = FakeMicrosoft::start().await;
    let r = send_modified(&ms, |_| {}).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(r.text.is_empty(), "202 has no body");
    let sent = ms.wait_for_sent(1, Duration::from_secs(5)).await;
    let m = &sent[0];
    assert_eq!(m.mailbox, MAILBOX);
    assert_eq!(m.path, SendPath::SendMailJson);
    assert_eq!(m.subject().as_deref(), Some("Meet for lunch?"));
    assert_eq!(m.to(), vec!["frannis@contoso.test"]);
    assert_eq!(m.cc(), vec!["danas@contoso.test"]);
    assert_eq!(m.bcc(), vec!["hidden@example.org"]);
    assert_eq!(
        m.body(),
        Some(("text".into(), "The new cafeteria is open.".into()))
    );
    assert_eq!(m.headers(), vec![("X-Relay-Id".into(), "q1".into())]);
    assert_eq!(m.save_to_sent_items(), Some(false));
    let atts = m.attachments();
    assert_eq!(atts.len(), 1);
    assert_eq!(atts[0].name, "hello.txt");
    assert_eq!(atts[0].bytes, b"hello attachment");
    assert_eq!(ms.request_count(Route::SendMail), 1);
    assert_eq!(
        ms.request_count_for_path(&format!("/v1.0/users/{MAILBOX}/sendMail")),
        1
    );
}

#[tokio::test]
async fn accepts_five_x_headers_html_body_and_case_insensitive_enums() {
    let ms = FakeMicrosoft::start().await;
    let r = send_modified(&ms, |b| {
        b["message"]["internetMessageHeaders"] = x_headers(5);
        b["message"]["body"] = json!({"contentType": "HTML", "content": "<p>hi</p>"});
        b["message"]["importance"] = json!("Low");
        b["message"]["replyTo"] = json!([{"emailAddress": {"address": "orig@example.org"}}]);
    })
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let sent = ms.sent();
    assert_eq!(sent[0].headers().len(), 5);
    assert_eq!(sent[0].body().unwrap().0, "html");
    assert_eq!(sent[0].reply_to(), vec!["orig@example.org"]);
}

#[tokio::test]
async fn accepts_base64_mime_with_line_breaks() {
    let ms = FakeMicrosoft::start().await;
    let mime = "From: relay@contoso.test\r\nTo: a@example.org\r\nBcc: b@example.org\r\nSubject: mime test\r\n\r\nbody\r\n";
    let b64 = STANDARD.encode(mime);
    let wrapped: String = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap().to_string() + "\r\n")
        .collect();
    let r = send(
        http()
            .post(sendmail_url(&ms, MAILBOX))
            .bearer_auth(ms.mint_app_token())
            .header("content-type", "text/plain")
            .body(wrapped),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let m = &ms.sent()[0];
    assert_eq!(m.path, SendPath::SendMailMime);
    assert_eq!(m.mime.as_deref(), Some(mime.as_bytes()));
    assert_eq!(m.subject().as_deref(), Some("mime test"));
    assert_eq!(m.all_recipients(), vec!["a@example.org", "b@example.org"]);
}

// --- Graph: rejected like Graph -------------------------------------------------------------

#[tokio::test]
async fn rejects_a_sixth_x_header() {
    let ms = FakeMicrosoft::start().await;
    let r = send_modified(&ms, |b| {
        b["message"]["internetMessageHeaders"] = x_headers(6)
    })
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "InvalidInternetMessageHeaderCollection");
    assert_eq!(
        r.message(),
        "Maximum number of headers in one message should be less than or equal to 5."
    );
    assert!(ms.sent().is_empty());
}

#[tokio::test]
async fn rejects_an_empty_header_list() {
    let ms = FakeMicrosoft::start().await;
    let r = send_modified(&ms, |b| b["message"]["internetMessageHeaders"] = json!([])).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "InvalidInternetMessageHeaderCollection");
}

#[tokio::test]
async fn rejects_a_header_not_starting_with_x() {
    let ms = FakeMicrosoft::start().await;
    let r = send_modified(&ms, |b| {
        b["message"]["internetMessageHeaders"] =
            json!([{"name": "List-Unsubscribe", "value": "<mailto:u@x>"}])
    })
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "InvalidInternetMessageHeader");
    assert_eq!(
        r.message(),
        "The internet message header name 'List-Unsubscribe' should start with 'x-' or 'X-'."
    );
}

#[tokio::test]
async fn rejects_unknown_properties_and_parameters() {
    let ms = FakeMicrosoft::start().await;
    let r = send_modified(&ms, |b| b["message"]["priority"] = json!("high")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "RequestBodyRead");
    assert!(
        r.message().starts_with(
            "The property 'priority' does not exist on type 'microsoft.graph.message'."
        ),
        "{}",
        r.message()
    );

    let r = send_modified(&ms, |b| {
        b["message"]["toRecipients"][0]["emailAddress"]["display"] = json!("x")
    })
    .await;
    assert_eq!(r.code(), "RequestBodyRead", "{}", r.text);
    assert!(r.message().contains("microsoft.graph.emailAddress"));

    let r = send_modified(&ms, |b| b["bogus"] = json!(1)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "RequestBodyRead");

    let r = send_modified(&ms, |b| b["saveToSentItems"] = json!("false")).await;
    assert_eq!(r.status, 400, "a string is not an Edm.Boolean");

    let r = send_modified(&ms, |b| b["message"]["importance"] = json!("urgent")).await;
    assert_eq!(r.status, 400);
    let r = send_modified(&ms, |b| {
        b["message"]["body"]["contentType"] = json!("markdown")
    })
    .await;
    assert_eq!(r.status, 400);
    let r = send_modified(&ms, |b| b["message"]["subject"] = json!(["a"])).await;
    assert_eq!(r.status, 400);

    let r = send_modified(&ms, |b| *b = json!({"saveToSentItems": true})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "ErrorInvalidParameter");
    assert!(ms.sent().is_empty());
}

#[tokio::test]
async fn rejects_bad_recipients() {
    let ms = FakeMicrosoft::start().await;
    let r = send_modified(&ms, |b| {
        b["message"]["toRecipients"] = json!([{"emailAddress": {"address": "a@x.test;b@x.test"}}])
    })
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "ErrorInvalidRecipients");
    assert!(
        r.message()
            .contains("Recipient 'a@x.test;b@x.test' isn't resolved")
    );

    let r = send_modified(&ms, |b| {
        b["message"]["toRecipients"] = json!([{"emailAddress": {"address": "Bob <bob@x.test>"}}])
    })
    .await;
    assert_eq!(r.code(), "ErrorInvalidRecipients");

    let r = send_modified(&ms, |b| {
        let m = b["message"].as_object_mut().unwrap();
        m.remove("toRecipients");
        m.remove("ccRecipients");
        m.remove("bccRecipients");
    })
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "ErrorInvalidRecipients");
    assert!(r.message().contains("contains no recipients"));

    let many: Vec<Value> = (0..501)
        .map(|i| json!({"emailAddress": {"address": format!("r{i}@x.test")}}))
        .collect();
    let r = send_modified(&ms, |b| b["message"]["bccRecipients"] = Value::Array(many)).await;
    assert_eq!(r.status, 400, "more than 500 recipients");
    assert!(ms.sent().is_empty());
}

#[tokio::test]
async fn rejects_bad_attachments() {
    let ms = FakeMicrosoft::start().await;
    let r = send_modified(&ms, |b| {
        b["message"]["attachments"][0]["contentBytes"] = json!("not base64!!")
    })
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "RequestBodyRead");

    let r = send_modified(&ms, |b| {
        b["message"]["attachments"][0]
            .as_object_mut()
            .unwrap()
            .remove("@odata.type");
    })
    .await;
    assert_eq!(r.status, 400);

    let r = send_modified(&ms, |b| {
        b["message"]["attachments"][0]
            .as_object_mut()
            .unwrap()
            .remove("name");
    })
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "ErrorRequiredPropertyMissing");

    let r = send_modified(&ms, |b| {
        b["message"]["attachments"][0]["fileName"] = json!("x")
    })
    .await;
    assert_eq!(r.code(), "RequestBodyRead");
    assert!(r.message().contains("microsoft.graph.fileAttachment"));
    assert!(ms.sent().is_empty());
}

#[tokio::test]
async fn rejects_bad_mime() {
    let ms = FakeMicrosoft::start().await;
    for body in ["", "###not base64###"] {
        let r = send(
            http()
                .post(sendmail_url(&ms, MAILBOX))
                .bearer_auth(ms.mint_app_token())
                .header("content-type", "text/plain")
                .body(body),
        )
        .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.code(), "ErrorMimeContentInvalidBase64String");
        assert_eq!(r.message(), "Invalid base64 string for MIME content.");
    }
    // Valid MIME, but nobody to send to.
    let r = send(
        http()
            .post(sendmail_url(&ms, MAILBOX))
            .bearer_auth(ms.mint_app_token())
            .header("content-type", "text/plain")
            .body(STANDARD.encode("From: relay@contoso.test\r\nSubject: x\r\n\r\nbody\r\n")),
    )
    .await;
    assert_eq!(r.code(), "ErrorInvalidRecipients");
    assert!(ms.sent().is_empty());
}

#[tokio::test]
async fn rejects_bodies_over_4_mb_with_413() {
    let ms = FakeMicrosoft::start().await;
    let big = STANDARD.encode(vec![7u8; 3_200_000]); // 4,266,668 bytes of base64
    let r = send_modified(&ms, |b| {
        b["message"]["attachments"][0]["contentBytes"] = json!(big)
    })
    .await;
    assert_eq!(r.status, 413);
    assert!(ms.sent().is_empty());
}

#[tokio::test]
async fn rejects_missing_unknown_expired_and_revoked_tokens() {
    let ms = FakeMicrosoft::start().await;
    let url = sendmail_url(&ms, MAILBOX);
    for token in [None, Some("eyJ0eXAiOiJKV1QifQ.e30.c2ln")] {
        let r = post_json(&url, token, &good_message()).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.code(), "InvalidAuthenticationToken");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer "));
    }

    let token = ms.mint_app_token();
    ms.expire_all_tokens();
    let r = post_json(&url, Some(&token), &good_message()).await;
    assert_eq!(r.status, 401);
    let j = r.json();
    assert_eq!(j["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        j["error"]["message"],
        "Access token has expired or is not yet valid."
    );
    assert!(j["error"]["innerError"]["request-id"].is_string());
    assert!(j["error"]["innerError"]["date"].is_string());
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("authorization_uri=")
    );

    let token = ms.mint_app_token();
    assert_eq!(
        post_json(&url, Some(&token), &good_message()).await.status,
        202
    );
    ms.revoke_all_tokens();
    let r = post_json(&url, Some(&token), &good_message()).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.message(), "Access token has expired or is not yet valid.");
    // A token issued after the revocation works.
    let fresh = ms.mint_app_token();
    assert_eq!(
        post_json(&url, Some(&fresh), &good_message()).await.status,
        202
    );
    assert_eq!(ms.sent().len(), 2);
}

#[tokio::test]
async fn short_token_lifetimes_expire() {
    let ms = FakeMicrosoft::start().await;
    ms.set_token_lifetime(Duration::from_secs(1));
    let token = ms.mint_app_token();
    let url = sendmail_url(&ms, MAILBOX);
    assert_eq!(
        post_json(&url, Some(&token), &good_message()).await.status,
        202
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        post_json(&url, Some(&token), &good_message()).await.status,
        401
    );
}

#[tokio::test]
async fn me_needs_a_delegated_token_and_users_needs_the_right_one() {
    let ms = FakeMicrosoft::start().await;
    let me = format!("{}/me/sendMail", ms.graph_url());
    let r = post_json(&me, Some(&ms.mint_app_token()), &good_message()).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "ResourceNotFound");

    let delegated = ms.mint_delegated_token(&["Mail.Send"]);
    let r = post_json(&me, Some(&delegated), &good_message()).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(ms.sent()[0].mailbox, ms.delegated_user());
    assert!(ms.sent()[0].delegated);

    let r = post_json(
        &sendmail_url(&ms, "someone.else@contoso.test"),
        Some(&delegated),
        &good_message(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "ErrorAccessDenied");

    let no_send = ms.mint_delegated_token(&["User.Read"]);
    let r = post_json(&me, Some(&no_send), &good_message()).await;
    assert_eq!(r.status, 403);

    let r = post_json(
        &sendmail_url(&ms, "not-an-address"),
        Some(&ms.mint_app_token()),
        &good_message(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "ErrorInvalidUser");
}

#[tokio::test]
async fn from_must_be_the_mailbox_unless_send_as_is_granted() {
    let ms = FakeMicrosoft::start().await;
    let with_from = |b: &mut Value| {
        b["message"]["from"] = json!({"emailAddress": {"address": "wordpress@example.org"}})
    };
    let r = send_modified(&ms, with_from).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "ErrorSendAsDenied");
    assert_eq!(r.message(), SEND_AS_DENIED_MESSAGE);

    ms.allow_send_as(MAILBOX, "wordpress@example.org");
    let r = send_modified(&ms, with_from).await;
    assert_eq!(r.status, 202);
    assert_eq!(
        ms.sent()[0].from().as_deref(),
        Some("wordpress@example.org")
    );
}

// --- scripting and concurrency ----------------------------------------------------------------

#[tokio::test]
async fn scripted_failures_come_first_then_normal_service() {
    let ms = FakeMicrosoft::start().await;
    ms.fail_next_sends(
        1,
        429,
        &[("Retry-After", "2")],
        r#"{"error":{"code":"TooManyRequests","message":"Please retry again later."}}"#,
    );
    ms.push_response(
        Matcher::route(Route::SendMail).mailbox("other@contoso.test"),
        ScriptedResponse::send_as_denied(),
    );
    let r = send_modified(&ms, |_| {}).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("2"));
    let r = send_modified(&ms, |_| {}).await;
    assert_eq!(
        r.status, 202,
        "the mailbox matcher does not select {MAILBOX}"
    );
    let r = post_json(
        &sendmail_url(&ms, "other@contoso.test"),
        Some(&ms.mint_app_token()),
        &good_message(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(ms.sent().len(), 1);
    let rejected = ms.rejected();
    assert_eq!(rejected.len(), 2);
    assert!(rejected.iter().all(|r| r.scripted));
    assert_eq!(rejected[0].error_code.as_deref(), Some("TooManyRequests"));
}

#[tokio::test]
async fn counts_concurrency_per_mailbox_and_throttles_the_fifth() {
    let ms = FakeMicrosoft::start().await;
    ms.set_response_delay(Duration::from_millis(400));
    let token = ms.mint_app_token();
    let url = sendmail_url(&ms, MAILBOX);
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (url, token) = (url.clone(), token.clone());
            tokio::spawn(async move { post_json(&url, Some(&token), &good_message()).await })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        4,
        "{statuses:?}"
    );
    let throttled: Vec<_> = results.iter().filter(|r| r.status == 429).collect();
    assert_eq!(throttled.len(), 2);
    assert_eq!(throttled[0].code(), "ApplicationThrottled");
    assert!(
        ms.max_in_flight(MAILBOX) >= 5,
        "the refused ones were in flight too"
    );
    assert_eq!(ms.max_in_flight("other@contoso.test"), 0);
}

#[tokio::test]
async fn wait_for_sent_times_out_with_the_request_log() {
    let ms = FakeMicrosoft::start().await;
    let _ = send_modified(&ms, |b| b["message"]["internetMessageHeaders"] = json!([])).await;
    let waited = tokio::spawn(async move {
        ms.wait_for_sent(1, Duration::from_millis(200)).await;
    })
    .await;
    let panic = waited.expect_err("must time out");
    let msg = panic.into_panic();
    let msg = msg.downcast_ref::<String>().expect("formatted panic");
    assert!(
        msg.contains("InvalidInternetMessageHeaderCollection"),
        "{msg}"
    );
}

// --- draft path ---------------------------------------------------------------------------

#[tokio::test]
async fn draft_upload_session_and_send() {
    let ms = FakeMicrosoft::start().await;
    let token = ms.mint_app_token();
    let users = format!("{}/users/{MAILBOX}", ms.graph_url());

    let mut draft = good_message()["message"].clone();
    draft.as_object_mut().unwrap().remove("bccRecipients");
    let r = post_json(&format!("{users}/messages"), Some(&token), &draft).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["isDraft"], true);

    // Small attachment by POST.
    let small = json!({"@odata.type": "#microsoft.graph.fileAttachment", "name": "small.bin",
        "contentBytes": STANDARD.encode([1u8, 2, 3])});
    let r = post_json(
        &format!("{users}/messages/{id}/attachments"),
        Some(&token),
        &small,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Upload sessions: too small is refused.
    let cus = format!("{users}/messages/{id}/attachments/createUploadSession");
    let r = post_json(
        &cus,
        Some(&token),
        &json!({"AttachmentItem": {"attachmentType": "file", "name": "x", "size": 1000}}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.code(),
        "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"
    );
    let r = post_json(&cus, Some(&token), &json!({"AttachmentItem": {"attachmentType": "file", "name": "x", "size": 5_000_000, "bogus": 1}})).await;
    assert_eq!(r.code(), "RequestBodyRead");

    let size = 5_000_000usize;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let r = post_json(
        &cus,
        Some(&token),
        &json!({"AttachmentItem": {"attachmentType": "file", "name": "big.bin", "size": size, "contentType": "application/octet-stream"}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let j = r.json();
    assert_eq!(j["nextExpectedRanges"], json!(["0-"]));
    assert!(j["expirationDateTime"].is_string());
    let upload_url = j["uploadUrl"].as_str().unwrap().to_string();
    assert!(upload_url.starts_with(&format!("{}/upload/", ms.base_url())));

    let put = |range: (usize, usize), auth: bool| {
        let mut rb = http()
            .put(&upload_url)
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("bytes {}-{}/{size}", range.0, range.1),
            )
            .body(data[range.0..=range.1].to_vec());
        if auth {
            rb = rb.bearer_auth(&token);
        }
        send(rb)
    };
    let chunk = 10 * 320 * 1024; // 3,276,800

    let r = put((0, chunk - 1), true).await;
    assert_eq!(
        r.status, 400,
        "an Authorization header on the upload URL is refused"
    );
    let r = put((chunk, size - 1), false).await;
    assert_eq!(r.status, 416, "out of order");
    let r = send(
        http()
            .put(&upload_url)
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("bytes 0-{}/{size}", 4 * 1024 * 1024),
            )
            .body(data[0..=4 * 1024 * 1024].to_vec()),
    )
    .await;
    assert_eq!(r.status, 413, "chunks over 4 MiB are refused");

    let r = put((0, chunk - 1), false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["nextExpectedRanges"], json!([chunk.to_string()]));
    let r = put((chunk, size - 1), false).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.header("location").unwrap().contains("/Attachments('"));
    assert!(r.text.is_empty());

    assert!(ms.sent().is_empty(), "nothing is sent before /send");
    let r = send(
        http()
            .post(format!("{users}/messages/{id}/send"))
            .bearer_auth(&token)
            .header("content-length", "0"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);

    let m = &ms.wait_for_sent(1, Duration::from_secs(5)).await[0];
    assert_eq!(m.path, SendPath::Draft);
    assert_eq!(m.draft_id.as_deref(), Some(id.as_str()));
    assert_eq!(m.subject().as_deref(), Some("Meet for lunch?"));
    let atts = m.attachments();
    let names: Vec<&str> = atts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["hello.txt", "small.bin", "big.bin"]);
    assert_eq!(atts[2].bytes, data);
    let chunks = ms.upload_chunks();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].len, chunk);

    // The draft is gone: sending it again is 404.
    let r = send(
        http()
            .post(format!("{users}/messages/{id}/send"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "ErrorItemNotFound");
    assert_eq!(ms.unsent_drafts(), 0);
}

#[tokio::test]
async fn draft_send_checks_recipients_and_drafts_need_mail_readwrite() {
    let ms = FakeMicrosoft::start_with(FakeConfig {
        app_roles: vec!["Mail.Send".into()],
        ..FakeConfig::default()
    })
    .await;
    let token = ms.mint_app_token();
    let users = format!("{}/users/{MAILBOX}", ms.graph_url());
    let r = post_json(
        &format!("{users}/messages"),
        Some(&token),
        &json!({"subject": "x"}),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "ErrorAccessDenied");

    let ms = FakeMicrosoft::start().await;
    let token = ms.mint_app_token();
    let users = format!("{}/users/{MAILBOX}", ms.graph_url());
    let r = post_json(
        &format!("{users}/messages"),
        Some(&token),
        &json!({"subject": "no recipients"}),
    )
    .await;
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = send(
        http()
            .post(format!("{users}/messages/{id}/send"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "ErrorInvalidRecipients");
    assert!(ms.sent().is_empty());
}

// --- token endpoint -------------------------------------------------------------------------

async fn token_form(ms: &FakeMicrosoft, tenant: &str, form: &[(&str, &str)]) -> Resp {
    let url = format!("{}/{tenant}/oauth2/v2.0/token", ms.base_url());
    send(http().post(url).form(form)).await
}

async fn client_credentials(ms: &FakeMicrosoft, secret: &str, scope: &str) -> Resp {
    let (cid, tenant) = (ms.client_id(), ms.tenant());
    token_form(
        ms,
        &tenant,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &cid),
            ("client_secret", secret),
            ("scope", scope),
        ],
    )
    .await
}

fn assert_entra_error(r: &Resp, status: u16, error: &str, code: u64) {
    assert_eq!(r.status, status, "{}", r.text);
    let j = r.json();
    assert_eq!(j["error"], error, "{}", r.text);
    assert_eq!(j["error_codes"], json!([code]));
    let desc = j["error_description"].as_str().unwrap();
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
    assert!(
        desc.contains("Trace ID: ")
            && desc.contains("Correlation ID: ")
            && desc.contains("Timestamp: ")
    );
    for k in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(j[k].is_string(), "{k} missing: {}", r.text);
    }
}

#[tokio::test]
async fn client_credentials_token_works_on_graph() {
    let ms = FakeMicrosoft::start().await;
    let r = client_credentials(&ms, &ms.client_secret(), &ms.scope()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["expires_in"], 3599);
    assert_eq!(j["ext_expires_in"], 3599);
    assert!(j.get("refresh_token").is_none());
    let token = j["access_token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");
    let r = post_json(&sendmail_url(&ms, MAILBOX), Some(token), &good_message()).await;
    assert_eq!(r.status, 202);
    assert_eq!(ms.token_requests(), 1);
    assert_eq!(ms.token_requests_for("client_credentials"), 1);

    // HTTP Basic client authentication is accepted too.
    let url = ms.token_url();
    let r = send(
        http()
            .post(url)
            .basic_auth(ms.client_id(), Some(ms.client_secret()))
            .form(&[("grant_type", "client_credentials"), ("scope", &ms.scope())]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn token_endpoint_refuses_bad_requests_like_entra() {
    let ms = FakeMicrosoft::start().await;
    let r = client_credentials(&ms, "wrong", &ms.scope()).await;
    assert_entra_error(&r, 401, "invalid_client", 7000215);

    let r = client_credentials(
        &ms,
        &ms.client_secret(),
        "https://graph.microsoft.com/.default",
    )
    .await;
    assert_entra_error(&r, 400, "invalid_resource", 500011);
    let r = client_credentials(
        &ms,
        &ms.client_secret(),
        &format!("{}/Mail.Send", ms.base_url()),
    )
    .await;
    assert_entra_error(&r, 400, "invalid_scope", 1002012);

    let cid = ms.client_id();
    let secret = ms.client_secret();
    let scope = ms.scope();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", cid.as_str()),
        ("client_secret", secret.as_str()),
        ("scope", scope.as_str()),
    ];
    let r = token_form(&ms, "00000000-0000-0000-0000-000000000000", &form).await;
    assert_entra_error(&r, 400, "invalid_request", 90002);
    let r = token_form(&ms, "common", &form).await;
    assert_eq!(r.status, 400);

    let mut bad_client = form;
    bad_client[1].1 = "11111111-1111-1111-1111-111111111111";
    let r = token_form(&ms, &ms.tenant(), &bad_client).await;
    assert_entra_error(&r, 400, "unauthorized_client", 700016);

    let r = token_form(&ms, &ms.tenant(), &form[..2]).await;
    assert_entra_error(&r, 401, "invalid_client", 7000218);
    let r = token_form(&ms, &ms.tenant(), &[form[0], form[1], form[2]]).await;
    assert_entra_error(&r, 400, "invalid_request", 900144);

    // JSON is not a form: Entra sees no grant_type.
    let r = send(
        http()
            .post(ms.token_url())
            .json(&json!({"grant_type": "client_credentials"})),
    )
    .await;
    assert_entra_error(&r, 400, "invalid_request", 900144);
    let r = token_form(&ms, &ms.tenant(), &[("grant_type", "password")]).await;
    assert_entra_error(&r, 400, "unsupported_grant_type", 70003);
    assert_eq!(ms.issued_tokens(), 0);
    assert_eq!(ms.token_requests(), 10);
}

#[tokio::test]
async fn scripted_token_failures() {
    let ms = FakeMicrosoft::start().await;
    let (secret, scope) = (ms.client_secret(), ms.scope());

    ms.fail_next_token_requests(1, TokenFailure::Throttled { retry_after: 60 });
    let r = client_credentials(&ms, &secret, &scope).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("60"));
    assert_eq!(client_credentials(&ms, &secret, &scope).await.status, 200);

    let cases = [
        (TokenFailure::SecretExpired, 401, "invalid_client", 7000222),
        (TokenFailure::ConsentRevoked, 400, "invalid_grant", 65001),
        (
            TokenFailure::RefreshTokenRevoked,
            400,
            "invalid_grant",
            700082,
        ),
        (TokenFailure::GrantRevoked, 400, "invalid_grant", 50173),
        (
            TokenFailure::InteractionRequired,
            400,
            "interaction_required",
            50076,
        ),
        (
            TokenFailure::TemporarilyUnavailable,
            503,
            "temporarily_unavailable",
            90024,
        ),
        (TokenFailure::ServerError(500), 500, "server_error", 50000),
    ];
    for (f, status, error, code) in cases {
        ms.set_token_failure(Some(f));
        let r = client_credentials(&ms, &secret, &scope).await;
        assert_entra_error(&r, status, error, code);
    }
    ms.set_token_failure(Some(TokenFailure::ConsentRevoked));
    assert_eq!(
        client_credentials(&ms, &secret, &scope).await.json()["suberror"],
        "consent_required"
    );
    ms.set_token_failure(None);
    assert_eq!(client_credentials(&ms, &secret, &scope).await.status, 200);

    ms.set_client_secret("rotated-secret");
    assert_entra_error(
        &client_credentials(&ms, &secret, &scope).await,
        401,
        "invalid_client",
        7000215,
    );
    assert_eq!(
        client_credentials(&ms, "rotated-secret", &scope)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn device_code_flow_refresh_rotation_and_revocation() {
    let ms = FakeMicrosoft::start().await;
    let cid = ms.client_id();
    let scope = format!("offline_access {}/Mail.Send", ms.base_url());
    let r = send(
        http()
            .post(ms.device_code_url())
            .form(&[("client_id", cid.as_str()), ("scope", scope.as_str())]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    for k in ["device_code", "user_code", "verification_uri", "message"] {
        assert!(j[k].is_string(), "{k}");
    }
    assert!(j["expires_in"].is_u64() && j["interval"].is_u64());
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .contains(j["user_code"].as_str().unwrap())
    );
    let device_code = j["device_code"].as_str().unwrap().to_string();

    let poll = || {
        let (cid, dc) = (cid.clone(), device_code.clone());
        let ms = &ms;
        async move {
            token_form(
                ms,
                "organizations",
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("client_id", cid.as_str()),
                    ("device_code", dc.as_str()),
                ],
            )
            .await
        }
    };
    assert_entra_error(&poll().await, 400, "authorization_pending", 70016);
    assert_eq!(ms.approve_device_code(), 1);
    let r = poll().await;
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert_eq!(j["scope"], "Mail.Send");
    let access = j["access_token"].as_str().unwrap().to_string();
    let rt1 = j["refresh_token"].as_str().unwrap().to_string();
    assert_entra_error(&poll().await, 400, "invalid_grant", 54005);
    assert_eq!(ms.device_codes()[0].polls, 3);
    assert_eq!(ms.device_codes()[0].state, DeviceCodeState::Redeemed);

    // The delegated token sends through /me.
    let r = post_json(
        &format!("{}/me/sendMail", ms.graph_url()),
        Some(&access),
        &good_message(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);

    // Refresh rotates; the old refresh token still works (as in Entra) but is counted as stale.
    let refresh = |rt: String| {
        let cid = cid.clone();
        let ms = &ms;
        async move {
            token_form(
                ms,
                &ms.tenant(),
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", &cid),
                    ("refresh_token", &rt),
                ],
            )
            .await
        }
    };
    let r = refresh(rt1.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rt2 = r.json()["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    assert_eq!(ms.stale_refresh_token_uses(), 0);
    assert_eq!(refresh(rt1.clone()).await.status, 200);
    assert_eq!(ms.stale_refresh_token_uses(), 1);
    assert_entra_error(
        &refresh("garbage".into()).await,
        400,
        "invalid_grant",
        9002313,
    );

    // A confidential secret on the public client's grant is refused.
    let r = token_form(
        &ms,
        &ms.tenant(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &cid),
            ("refresh_token", &rt2),
            ("client_secret", "x"),
        ],
    )
    .await;
    assert_entra_error(&r, 401, "invalid_client", 700025);

    ms.revoke_refresh_tokens();
    assert_entra_error(&refresh(rt2).await, 400, "invalid_grant", 700082);
    assert_eq!(ms.token_requests_for("refresh_token"), 5);
}

#[tokio::test]
async fn device_code_declined_expired_and_wrong_resource() {
    let ms = FakeMicrosoft::start().await;
    let cid = ms.client_id();
    let ask = |scope: String| {
        let (cid, url) = (cid.clone(), ms.device_code_url());
        async move {
            send(
                http()
                    .post(url)
                    .form(&[("client_id", cid.as_str()), ("scope", scope.as_str())]),
            )
            .await
        }
    };
    let r = ask("offline_access https://graph.microsoft.com/Mail.Send".into()).await;
    assert_entra_error(&r, 400, "invalid_resource", 500011);

    for (action, error, code) in [
        ("decline", "authorization_declined", 70000),
        ("expire", "expired_token", 70019),
    ] {
        let j = ask("offline_access Mail.Send".into()).await.json();
        let dc = j["device_code"].as_str().unwrap().to_string();
        let info = ms.wait_for_device_code(Duration::from_secs(1)).await;
        assert_eq!(info.device_code, dc);
        match action {
            "decline" => assert_eq!(ms.decline_device_code(), 1),
            _ => assert_eq!(ms.expire_device_code(), 1),
        }
        let r = token_form(
            &ms,
            &ms.tenant(),
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", &cid),
                ("device_code", &dc),
            ],
        )
        .await;
        assert_entra_error(&r, 400, error, code);
    }
}

// --- certificate credentials -----------------------------------------------------------------

fn openssl(args: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn client_assertion_is_checked_against_the_registered_certificate() {
    if !common::tools::require_tool("openssl", "the fake checks assertion signatures with it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    assert!(openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap()
    ]));
    assert!(openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/CN=graph-relay-test",
        "-days",
        "2",
        "-out",
        cert.to_str().unwrap()
    ]));
    let pem_body = |path: &std::path::Path| -> Vec<u8> {
        let text = std::fs::read_to_string(path).unwrap();
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(b64).unwrap()
    };
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    let key_pair = ring::signature::RsaKeyPair::from_pkcs8(&pem_body(&key)).unwrap();
    let cert_der = pem_body(&cert);

    let ms = FakeMicrosoft::start().await;
    ms.set_client_certificate_pem(&cert_pem);
    let cid = ms.client_id();
    let make_jwt = |aud: &str, tamper: bool| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let x5t = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &cert_der));
        let header = json!({"alg": "PS256", "typ": "JWT", "x5t#S256": x5t});
        let claims = json!({"aud": aud, "iss": cid, "sub": cid, "jti": format!("{now}-{tamper}"), "nbf": now, "iat": now, "exp": now + 600});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; key_pair.public().modulus_len()];
        key_pair
            .sign(
                &ring::signature::RSA_PSS_SHA256,
                &ring::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        if tamper {
            sig[10] ^= 0xff;
        }
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    let request = |jwt: String| {
        let (cid, scope, url) = (ms.client_id(), ms.scope(), ms.token_url());
        async move {
            send(http().post(url).form(&[
                ("grant_type", "client_credentials"),
                ("client_id", cid.as_str()),
                ("scope", scope.as_str()),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", jwt.as_str()),
            ]))
            .await
        }
    };
    let r = request(make_jwt(&ms.token_url(), false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = request(make_jwt(&ms.token_url(), true)).await;
    assert_entra_error(&r, 401, "invalid_client", 700027);
    let r = request(make_jwt(
        "https://login.microsoftonline.com/x/oauth2/v2.0/token",
        false,
    ))
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(ms.issued_tokens(), 1);
}

#[tokio::test]
async fn util_formats() {
    use std::time::{Duration as D, UNIX_EPOCH};
    let t = UNIX_EPOCH + D::from_secs(1_452_304_932);
    assert_eq!(util::aad_timestamp(t), "2016-01-09 02:02:12Z");
    assert_eq!(util::rfc3339(t), "2016-01-09T02:02:12.0000000Z");
    assert_eq!(util::percent_decode("a%20b+c%2", true), "a b c%2");
    assert_eq!(
        util::percent_decode("Users('a%40b')", false),
        "Users('a@b')"
    );
}
