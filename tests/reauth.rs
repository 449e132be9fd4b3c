//! The problem graph-relay exists for: the Microsoft token dies. Each case, against the fake
//! identity platform and Graph: 5 messages get 250 and none reach Graph; `/status` shows
//! `reauth_required` with the AADSTS reason; the webhook and the command receive the notice once;
//! then a person recovers it (secret restored, device code login from the status page,
//! `graph-relay auth login` beside serve, the Re-authorize button) and all 5 are delivered
//! exactly once, with a `recovered` notice.

use graph_relay_testkit as common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use common::fake_graph::{FakeMicrosoft, TokenFailure};
use common::relay::{RelayOptions, relay_toml};
use graph_relay::app::{self, Running, StartOptions};
use graph_relay::config::Config;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

/// A webhook endpoint that records every notice POSTed to it.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |body: axum::Json<Value>| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(body.0);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

struct Case {
    ms: FakeMicrosoft,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    running: Option<Running>,
    hook: Arc<Mutex<Vec<Value>>>,
    command_out: PathBuf,
    /// Messages sent before the token died.
    warm_ups: usize,
}

impl Case {
    /// Starts a relay whose `[microsoft]` section is `microsoft` (authority and graph_url are
    /// added), with the webhook and a notify command that appends each notice to a file.
    async fn start(
        ms: FakeMicrosoft,
        microsoft_extra: &str,
        prepare: impl FnOnce(&Path, &Config),
    ) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let (hook_url, hook) = webhook().await;
        let command_out = dir.path().join("notices.jsonl");
        let opts = RelayOptions {
            credentials: false,
            microsoft_extra: microsoft_extra.to_string(),
            ..RelayOptions::default()
        };
        let mut toml = relay_toml(&ms, &dir.path().join("spool"), &opts);
        toml.push_str(&format!(
            "\n[notify]\nwebhook_url = \"{hook_url}\"\ncommand = [\"sh\", \"-c\", \"cat >> {0}; echo >> {0}; echo \\\"$GRAPH_RELAY_STATE\\\" >> {0}.state\"]\n",
            command_out.display()
        ));
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, &toml).unwrap();
        let config =
            Config::from_layers(Some(&toml), &[]).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        prepare(dir.path(), &config);
        let running = app::start(config, StartOptions::default()).await.unwrap();
        Case {
            ms,
            dir,
            config_path,
            running: Some(running),
            hook,
            command_out,
            warm_ups: 0,
        }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    fn smtp(&self) -> SocketAddr {
        self.running().smtp_addrs()[0]
    }

    fn status_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().status_addr().unwrap())
    }

    async fn status(&self) -> Value {
        reqwest::get(self.status_url("/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn send(&self, subject: &str) {
        let message = Message::builder()
            .from("wp@contoso.test".parse::<Mailbox>().unwrap())
            .to("customer@example.com".parse::<Mailbox>().unwrap())
            .subject(subject)
            .body("body\n".to_string())
            .unwrap();
        let addr = self.smtp();
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(addr.port())
            .build();
        let response = transport
            .send(message)
            .await
            .expect("250 even while the token is dead");
        assert_eq!(u16::from(response.code()), 250);
    }

    async fn send_five(&self) {
        for i in 0..5 {
            self.send(&format!("held-{i}")).await;
        }
    }

    /// Waits for `/status` to say `state`, returning the document.
    async fn wait_state(&self, state: &str, held: usize) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = self.status().await;
            if status["token"]["state"] == state && status["queue"]["held"] == held {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "state never became {state} with {held} held: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Forgets the notices so far (the sign-in before the test's token death).
    async fn forget_notices(&self) {
        // The command writes the notice, then the state: let it finish before clearing.
        let lines = |path: &Path| {
            std::fs::read_to_string(path).map(|t| t.lines().filter(|l| !l.is_empty()).count())
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while lines(&self.command_out).ok()
            != lines(&self.command_out.with_extension("jsonl.state")).ok()
        {
            assert!(
                Instant::now() < deadline,
                "the notify command never finished"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.hook.lock().unwrap().clear();
        let _ = std::fs::remove_file(&self.command_out);
        let _ = std::fs::remove_file(self.command_out.with_extension("jsonl.state"));
    }

    fn notices(&self, event: &str) -> (usize, usize) {
        let hook = self
            .hook
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n["event"] == event)
            .count();
        let command = std::fs::read_to_string(&self.command_out)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|n| n["event"] == event))
            .count();
        (hook, command)
    }

    async fn wait_notices(&self, event: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.notices(event) != (1, 1) {
            assert!(
                Instant::now() < deadline,
                "{event} notice: (webhook, command) = {:?}",
                self.notices(event)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The dead-token half of every case: 5 × 250, nothing at Graph, state and notices; the
    /// notice and the page advise the fix for this cause (`action_part`).
    async fn expect_held(&self, reason_part: &str, action_part: &str) {
        self.send_five().await;
        let status = self.wait_state("reauth_required", 5).await;
        let reason = status["token"]["reason"].as_str().unwrap();
        assert!(
            reason.contains(reason_part),
            "reason {reason:?} lacks {reason_part:?}"
        );
        assert_eq!(status["queue"]["pending"], 5);
        assert_eq!(
            self.ms.sent().len(),
            self.warm_ups,
            "no held message may reach Graph"
        );
        self.wait_notices("reauth_required").await;
        let notice = self.hook.lock().unwrap()[0].clone();
        assert!(
            notice["reason"].as_str().unwrap().contains(reason_part),
            "{notice}"
        );
        let pending = notice["queue_pending"].as_u64().unwrap();
        // A credential already dead at start-up is reported before any mail arrives.
        assert!(
            (0..=5).contains(&pending),
            "queue_pending when the state changed: {notice}"
        );
        assert!(
            notice["action"]
                .as_str()
                .is_some_and(|a| a.contains(action_part)),
            "{notice}"
        );
        let states =
            std::fs::read_to_string(self.command_out.with_extension("jsonl.state")).unwrap();
        assert_eq!(
            states.trim(),
            "reauth_required",
            "the command gets GRAPH_RELAY_STATE"
        );
        // The page says it in plain words.
        let page = reqwest::get(self.status_url("/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("needs attention") && page.contains(reason_part),
            "{page}"
        );
        let advice = page
            .split("<p id=\"action\">")
            .nth(1)
            .and_then(|rest| rest.split("</p>").next())
            .unwrap_or_default();
        assert!(advice.contains(action_part), "{page}");
    }

    /// The recovery half: within 10 s all 5 are delivered exactly once, and `recovered` is sent.
    async fn expect_drained(&self, recovered_at: Instant) {
        let before = self.warm_ups;
        self.ms
            .wait_for_sent(before + 5, Duration::from_secs(10))
            .await;
        assert!(
            recovered_at.elapsed() < Duration::from_secs(10),
            "drained after {:?}",
            recovered_at.elapsed()
        );
        let mut subjects: Vec<String> = self
            .ms
            .sent()
            .iter()
            .filter_map(|m| m.subject())
            .filter(|s| s.starts_with("held-"))
            .collect();
        subjects.sort();
        let expected: Vec<String> = (0..5).map(|i| format!("held-{i}")).collect();
        assert_eq!(subjects, expected, "each held message exactly once");
        self.wait_state("valid", 0).await;
        self.wait_notices("recovered").await;
        assert_eq!(
            self.notices("reauth_required"),
            (1, 1),
            "one notice per state change"
        );
        // Settle, then make sure nothing was sent twice.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(self.ms.sent().len(), before + 5);
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        drop(self.dir);
    }
}

/// A client secret file holding the fake's secret, and the `[microsoft]` lines that use it.
fn secret_file(ms: &FakeMicrosoft, dir: &Path) -> (PathBuf, String) {
    let path = dir.join("client-secret");
    std::fs::write(&path, ms.client_secret()).unwrap();
    let extra = format!(
        "tenant = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\n",
        ms.tenant(),
        ms.client_id(),
        path.display()
    );
    (path, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_secret_holds_mail_until_the_secret_file_is_rotated() {
    let ms = FakeMicrosoft::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let (secret_file, extra) = secret_file(&ms, secrets.path());
    ms.set_token_failure(Some(TokenFailure::SecretExpired));
    let case = Case::start(ms, &extra, |_, _| {}).await;
    case.expect_held(
        "AADSTS7000222",
        &format!(
            "New client secret) and write its Value into {}",
            secret_file.display()
        ),
    )
    .await;

    // The admin creates a new secret in Entra and writes it to the file.
    case.ms.set_token_failure(None);
    case.ms.set_client_secret("rotated-secret-value");
    std::fs::write(&secret_file, "rotated-secret-value\n").unwrap();
    case.expect_drained(Instant::now()).await;
    case.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_consent_recovers_with_the_re_authorize_button() {
    let ms = FakeMicrosoft::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let (_, extra) = secret_file(&ms, secrets.path());
    ms.set_token_failure(Some(TokenFailure::ConsentRevoked));
    let case = Case::start(ms, &extra, |_, _| {}).await;
    case.expect_held("AADSTS65001", "grant admin consent for Mail.Send")
        .await;

    // Admin consent is granted again; the button asks the token endpoint at once.
    case.ms.set_token_failure(None);
    let recovered_at = Instant::now();
    let response = reqwest::Client::new()
        .post(case.status_url("/reauthorize"))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success() || response.status().is_redirection(),
        "{}",
        response.status()
    );
    case.expect_drained(recovered_at).await;
    case.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_401_for_an_early_revoked_token_then_auth_login_beside_serve() {
    let ms = FakeMicrosoft::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let (_, extra) = secret_file(&ms, secrets.path());
    let mut case = Case::start(ms, &extra, |_, _| {}).await;
    // A first message proves the token works and leaves it cached.
    case.send("warm-up").await;
    case.ms.wait_for_sent(1, Duration::from_secs(10)).await;
    case.warm_ups = 1;
    // The app is disabled: Graph refuses the cached token, and no new one is issued.
    case.ms.revoke_all_tokens();
    case.ms.set_token_failure(Some(TokenFailure::Custom {
        status: 400,
        error: "unauthorized_client".into(),
        code: 7000112,
        description: "AADSTS7000112: Application is disabled.".into(),
        suberror: None,
    }));
    case.expect_held("AADSTS7000112", "the app registration is disabled")
        .await;

    // The admin re-enables the app and runs `graph-relay auth login` next to the running serve.
    case.ms.set_token_failure(None);
    let recovered_at = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_graph-relay"))
        .args([
            "--config",
            case.config_path.to_str().unwrap(),
            "auth",
            "login",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    case.expect_drained(recovered_at).await;
    case.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_refresh_token_recovers_with_device_code_login_from_the_status_page() {
    let ms = FakeMicrosoft::start().await;
    let extra = common::relay::delegated_microsoft(&ms);
    // Sign in once before serve starts, as `graph-relay auth login` would.
    let (login_config_tx, login_config_rx) = std::sync::mpsc::channel();
    let mut case = Case::start(ms, &extra, |_, config| {
        login_config_tx.send(config.clone()).unwrap()
    })
    .await;
    let config = login_config_rx.recv().unwrap();
    case.ms.set_device_code_auto_approve(true);
    let device =
        graph_relay::auth::device_login(&config, reqwest::Client::new()).expect("delegated login");
    let code = device.start().await.unwrap();
    let tokens = device
        .poll(&code, |_| tokio::time::sleep(Duration::from_millis(5)))
        .await
        .unwrap();
    graph_relay::auth::store_login(&config, tokens, std::time::SystemTime::now()).unwrap();
    case.ms.set_device_code_auto_approve(false);
    case.send("warm-up").await;
    case.ms.wait_for_sent(1, Duration::from_secs(10)).await;
    case.warm_ups = 1;
    assert_eq!(
        case.ms.request_count_for_path("/v1.0/me/sendMail"),
        1,
        "delegated mail goes through /me"
    );
    // The first sign-in itself was a recovery from "nobody signed in yet"; wait for its notice.
    case.wait_notices("recovered").await;
    case.forget_notices().await;

    // 90 days idle: the access token expires and the refresh token is refused (AADSTS700082).
    case.ms.revoke_refresh_tokens();
    case.ms.expire_all_tokens();
    case.expect_held(
        "AADSTS700082",
        "run `graph-relay auth login` on the relay host",
    )
    .await;

    // Re-authorize on the status page: the code and link appear; the user signs in.
    let recovered_at = Instant::now();
    reqwest::Client::new()
        .post(case.status_url("/reauthorize"))
        .send()
        .await
        .unwrap();
    let pending = case.ms.wait_for_device_code(Duration::from_secs(10)).await;
    let page = reqwest::get(case.status_url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&pending.user_code),
        "the page shows the user code"
    );
    assert!(
        page.contains("https://microsoft.com/devicelogin"),
        "the page shows the link"
    );
    assert_eq!(case.ms.approve_device_code(), 1);
    case.expect_drained(recovered_at).await;
    let cache = std::fs::metadata(config.token_cache_path()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&cache.permissions()) & 0o777,
        0o600
    );
    case.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_secret_in_the_config_plus_sighup_recovers() {
    let ms = FakeMicrosoft::start().await;
    let inline_secret = format!(
        "tenant = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
        ms.tenant(),
        ms.client_id(),
        ms.client_secret()
    );
    ms.set_token_failure(Some(TokenFailure::SecretExpired));
    let case = Case::start(ms, &inline_secret, |_, _| {}).await;
    case.expect_held(
        "AADSTS7000222",
        "put its Value into microsoft.client_secret_file, then reload the running relay",
    )
    .await;

    // The admin puts a new secret into relay.toml and sends SIGHUP (what `reload` does).
    case.ms.set_token_failure(None);
    case.ms.set_client_secret("new-secret-from-config");
    let text = std::fs::read_to_string(&case.config_path).unwrap().replace(
        common::fake_graph::DEFAULT_CLIENT_SECRET,
        "new-secret-from-config",
    );
    std::fs::write(&case.config_path, &text).unwrap();
    let reloaded = Config::from_layers(Some(&text), &[]).unwrap();
    let recovered_at = Instant::now();
    case.running().reload(&reloaded);
    case.expect_drained(recovered_at).await;
    case.stop().await;
}
