//! The status page in a real browser: Debian's Chromium, driven through ChromeDriver's WebDriver
//! HTTP API with reqwest. With the delegated flow and nobody signed in, the page shows the
//! notice and the held message; the Re-authorize button starts the device code login at the fake
//! identity platform and the page shows the code and the link; once the user approves, a reload
//! says the sign-in works and the held mail reaches Graph.
//!
//! Needs `/usr/bin/chromium` and `chromedriver` (Debian's `chromium` and `chromium-driver`, which
//! `.ci/run` installs); without them the test prints a "skipped: ..." line and passes, or fails
//! when `CI` is set.

use graph_relay_testkit as common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fake_graph::{DEVICE_VERIFICATION_URI, FakeMicrosoft};
use common::relay::{RelayOptions, TestRelay, smtp_client};
use lettre::message::Mailbox;
use lettre::{AsyncTransport, Message};
use reqwest::Method;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Generous: every wait below polls and returns as soon as its condition holds.
const TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

fn chromedriver() -> Option<PathBuf> {
    common::tools::find("chromedriver")
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A WebDriver error answer (`{"value":{"error":..,"message":..}}`).
struct WebDriverError {
    error: String,
    message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

/// ChromeDriver, the Chromium it started, and a fresh profile. Dropping it ends the session
/// (ChromeDriver closes Chromium), then kills ChromeDriver's whole process group, so nothing is
/// left running even when the test panics.
struct Browser {
    http: reqwest::Client,
    port: u16,
    session: Option<String>,
    driver: Child,
    /// ChromeDriver's output and log, printed when the test fails.
    logs: [PathBuf; 2],
    /// Removed after the processes are gone (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl Browser {
    async fn start(chromedriver: &Path) -> Browser {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let out = dir.path().join("chromedriver.out");
        let log = dir.path().join("chromedriver.log");
        let out_file = File::create(&out).expect("chromedriver output file");
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(out_file.try_clone().expect("dup output file"))
            .stderr(out_file)
            // Its own process group: Chromium and its helpers join it, and Drop kills them all.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let mut browser = Browser {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("reqwest client"),
            port,
            session: None,
            driver,
            logs: [out, log],
            dir,
        };
        browser.wait_ready().await;

        let profile = browser.dir.path().join("profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--no-proxy-server",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let created = browser
            .raw(Method::POST, "/session".into(), Some(capabilities))
            .await
            .unwrap_or_else(|e| panic!("ChromeDriver could not start Chromium: {e}"));
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {created}"))
            .to_string();
        browser.session = Some(session);
        browser
            .call(
                Method::POST,
                "/timeouts",
                Some(json!({"pageLoad": TIMEOUT.as_millis() as u64, "implicit": 0})),
            )
            .await;
        browser
    }

    /// Waits until ChromeDriver answers `GET /status` with `ready: true`.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(exit) = self.driver.try_wait().expect("chromedriver wait") {
                panic!("chromedriver exited at start: {exit}");
            }
            if let Ok(status) = self.raw(Method::GET, "/status".into(), None).await
                && status["ready"] == true
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready on port {} after {TIMEOUT:?}",
                self.port
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// One WebDriver request; the answer's `value`, or the WebDriver error.
    async fn raw(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| WebDriverError {
            error: "transport".into(),
            message: format!("{method} {url}: {e}"),
        })?;
        let ok = response.status().is_success();
        let answer: Value = response.json().await.map_err(|e| WebDriverError {
            error: "transport".into(),
            message: format!("{method} {url}: not JSON: {e}"),
        })?;
        let value = answer["value"].clone();
        if ok {
            Ok(value)
        } else {
            Err(WebDriverError {
                error: value["error"].as_str().unwrap_or("unknown").into(),
                message: value["message"].as_str().unwrap_or_default().into(),
            })
        }
    }

    /// A request within the session (`path` after `/session/{id}`); panics on an error.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method.clone(), path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let session = self.session.as_deref().expect("a WebDriver session");
        self.raw(method, format!("/session/{session}{path}"), body)
            .await
    }

    async fn goto(&self, url: &str) {
        self.call(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn reload(&self) {
        self.call(Method::POST, "/refresh", Some(json!({}))).await;
    }

    async fn current_url(&self) -> String {
        let url = self.call(Method::GET, "/url", None).await;
        url.as_str().expect("URL string").to_string()
    }

    async fn source(&self) -> String {
        let source = self.call(Method::GET, "/source", None).await;
        source.as_str().unwrap_or_default().to_string()
    }

    /// The element `css` selects on the current page, if any.
    async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .try_call(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        match found {
            Ok(element) => Some(element[ELEMENT].as_str().expect("element id").to_string()),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("find {css:?}: {e}"),
        }
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .call(
                Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .expect("element list")
            .iter()
            .map(|e| e[ELEMENT].as_str().expect("element id").to_string())
            .collect()
    }

    /// Waits for `css` to appear on the current page.
    async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(element) = self.find(css).await {
                return element;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {css:?} after {TIMEOUT:?}; page:\n{}",
                    self.source().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn text(&self, element: &str) -> String {
        let text = self
            .call(Method::GET, &format!("/element/{element}/text"), None)
            .await;
        text.as_str().expect("text").to_string()
    }

    async fn attribute(&self, element: &str, name: &str) -> Option<String> {
        let value = self
            .call(
                Method::GET,
                &format!("/element/{element}/attribute/{name}"),
                None,
            )
            .await;
        value.as_str().map(str::to_string)
    }

    async fn click(&self, element: &str) {
        self.call(
            Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// The text of the element `css` selects (waiting for it).
    async fn text_of(&self, css: &str) -> String {
        let element = self.wait_for(css).await;
        self.text(&element).await
    }

    /// `data-state` of `#state`, after a reload.
    async fn reload_until_state(&self, state: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.reload().await;
            let element = self.wait_for("#state").await;
            if self.attribute(&element, "data-state").await.as_deref() == Some(state) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the page never said {state:?} after {TIMEOUT:?}; page:\n{}",
                    self.source().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Ends the session: ChromeDriver closes Chromium.
    async fn quit(&mut self) {
        if self.session.is_some() {
            self.call(Method::DELETE, "", None).await;
            self.session = None;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Plain blocking HTTP: Drop cannot await, and this may run while unwinding.
            let _ = delete_session(self.port, &session);
        }
        // ChromeDriver leads its own process group; Chromium and its helpers are in it too.
        // The driver is not reaped yet, so the group id cannot have been reused.
        let group = self.driver.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {} (last lines) ---", log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn delete_session(port: u16, session: &str) -> std::io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(())
}

async fn wait_status(relay: &TestRelay, state: &str, held: u64) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = relay.status_json().await;
        if status["token"]["state"] == state && status["queue"]["held"] == held {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "/status never said {state} with {held} held: {status}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_shows_held_mail_and_re_authorizes_with_a_device_code() {
    if !common::tools::require(
        Path::new(CHROMIUM).is_file(),
        &format!(
            "{CHROMIUM} is missing (install Debian's chromium and chromium-driver; .ci/run does)"
        ),
    ) {
        return;
    }
    let Some(chromedriver) = chromedriver() else {
        common::tools::unavailable(
            "chromedriver is not on PATH (install Debian's chromium-driver; .ci/run does)",
        );
        return;
    };
    let started = Instant::now();

    // A delegated relay that nobody signed in to yet: mail is accepted and held.
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::delegated(&ms)).await;
    let mut browser = Browser::start(&chromedriver).await;

    let message = Message::builder()
        .from("wp@contoso.test".parse::<Mailbox>().unwrap())
        .to("customer@example.com".parse::<Mailbox>().unwrap())
        .subject("Order #1001 confirmation")
        .body("held until someone signs in\n".to_string())
        .unwrap();
    let reply = smtp_client(relay.smtp)
        .send(message)
        .await
        .expect("250 while nobody is signed in");
    assert_eq!(u16::from(reply.code()), 250);
    wait_status(&relay, "reauth_required", 1).await;
    let queued: Vec<String> = relay
        .files_in("queue")
        .iter()
        .filter_map(|f| f.strip_suffix(".eml").map(str::to_string))
        .collect();
    assert_eq!(queued.len(), 1, "one message in the spool: {queued:?}");
    let id = &queued[0];

    // The page: state, reason, what to do, and the held message with its actions.
    let page = format!("http://{}/", relay.status.expect("status listener"));
    browser.goto(&page).await;
    let state = browser.wait_for("#state").await;
    assert_eq!(
        browser.attribute(&state, "data-state").await.as_deref(),
        Some("reauth_required")
    );
    let headline = browser.text(&state).await;
    assert!(
        headline.contains("needs attention") && headline.contains("held, not lost"),
        "{headline}"
    );
    let reason = browser.text_of("#reason").await;
    assert!(
        reason.starts_with("Reason: ") && reason.contains("nobody has signed in yet"),
        "{reason}"
    );
    let action = browser.text_of("#action").await;
    assert!(
        action.starts_with("What to do: ")
            && action.contains("graph-relay auth login")
            && action.contains("Re-authorize"),
        "{action}"
    );
    assert_eq!(
        browser.text_of("#counts").await,
        "1 pending (1 held for re-authorization), 0 failed"
    );
    let rows = browser.find_all("table tr").await;
    assert_eq!(rows.len(), 2, "a header row and one message");
    let row = browser.text(&rows[1]).await;
    for part in [
        id.as_str(),
        "held",
        "wp@contoso.test",
        "customer@example.com",
    ] {
        assert!(row.contains(part), "queue row lacks {part:?}: {row}");
    }
    let mut actions = Vec::new();
    for form in browser.find_all("table tr form").await {
        actions.push(browser.attribute(&form, "action").await.unwrap_or_default());
    }
    assert_eq!(
        actions,
        [format!("/queue/{id}/retry"), format!("/queue/{id}/delete")]
    );
    assert!(
        browser.find("#login").await.is_none(),
        "no login in progress yet"
    );
    assert!(ms.device_codes().is_empty());

    // Re-authorize: the browser POSTs the form; the device code login starts at the fake, and
    // the page it is sent back to shows the code and the link.
    let button = browser.wait_for("#reauthorize").await;
    assert_eq!(browser.text(&button).await, "Re-authorize");
    browser.click(&button).await;
    let pending = ms.wait_for_device_code(TIMEOUT).await;
    assert_eq!(
        browser.text_of("#user-code").await,
        pending.user_code,
        "the page shows the code the fake issued"
    );
    let link = browser.wait_for("#verification-uri").await;
    assert_eq!(browser.text(&link).await, DEVICE_VERIFICATION_URI);
    assert_eq!(
        browser.attribute(&link, "href").await.as_deref(),
        Some(DEVICE_VERIFICATION_URI)
    );
    assert_eq!(
        browser.current_url().await,
        page,
        "POST, then redirect: a reload must not start another login"
    );
    assert_eq!(
        ms.device_codes().len(),
        1,
        "one press, one device code login"
    );
    assert_eq!(ms.sent().len(), 0, "nothing delivered before the sign-in");

    // The user signs in; a reload says it works and the held mail goes out.
    assert_eq!(ms.approve_device_code(), 1);
    browser.reload_until_state("valid").await;
    let headline = browser.text_of("#state").await;
    assert!(headline.contains("sign-in works"), "{headline}");
    let login = browser.text_of("#login").await;
    assert!(login.contains("Signed in"), "{login}");
    assert!(browser.find("#reason").await.is_none());
    let sent = ms.wait_for_sent(1, TIMEOUT).await;
    assert_eq!(
        sent[0].subject().as_deref(),
        Some("Order #1001 confirmation")
    );
    wait_status(&relay, "valid", 0).await;
    relay.wait_queue_empty(TIMEOUT).await;
    browser.reload().await;
    assert_eq!(
        browser.text_of("#counts").await,
        "0 pending (0 held for re-authorization), 0 failed"
    );
    assert!(browser.find_all("table tr").await.is_empty());
    assert_eq!(ms.sent().len(), 1, "delivered exactly once");

    browser.quit().await;
    drop(browser);
    relay.shutdown().await;
    println!("browser test took {:?}", started.elapsed());
}
