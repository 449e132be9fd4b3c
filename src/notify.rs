//! Re-authorization notices (design section 4): `serve` watches the token state and, when it
//! changes, says so once — an ERROR (or INFO on recovery) log line, a POST to `notify.webhook_url`, and `notify.command`
//! with the notice JSON on stdin. Each has a bounded timeout; their failures are logged, never
//! fatal, and never delay mail.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::{TokenSource, TokenState, TokenStatus, Tokens};
use crate::config::Config;
use crate::outbound::describe;
use crate::spool::Spool;

/// How long a webhook or command may take before it is abandoned (and the command killed).
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    ReauthRequired,
    Recovered,
}

/// The `action` of a `recovered` notice.
const RECOVERED_ACTION: &str = "nothing: held mail is being delivered by itself";

/// The notice: webhook body and command stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub event: Event,
    pub reason: String,
    pub action: String,
    pub queue_pending: usize,
    pub host: String,
    pub at: String,
    pub text: String,
}

impl Notice {
    /// The notice for a change from `before` to `after`, if that change deserves one.
    pub fn for_change(
        before: TokenState,
        after: &TokenStatus,
        action: &str,
        queue_pending: usize,
        host: &str,
        now: SystemTime,
    ) -> Option<Notice> {
        let event = match (before, after.state) {
            (TokenState::ReauthRequired, TokenState::ReauthRequired) => return None,
            (_, TokenState::ReauthRequired) => Event::ReauthRequired,
            (TokenState::ReauthRequired, TokenState::Valid) => Event::Recovered,
            _ => return None,
        };
        let (text, action) = match event {
            Event::ReauthRequired => (
                format!(
                    "graph-relay on {host}: Microsoft sign-in needs attention ({}). Mail is held ({queue_pending} waiting), not lost. Fix: {action}",
                    after.reason
                ),
                action,
            ),
            Event::Recovered => (
                format!(
                    "graph-relay on {host}: Microsoft sign-in works again; delivering {queue_pending} held message(s)."
                ),
                // A receiver that shows every notice's action should not show an empty one.
                RECOVERED_ACTION,
            ),
        };
        Some(Notice {
            event,
            reason: after.reason.clone(),
            action: action.to_string(),
            queue_pending,
            host: host.to_string(),
            at: humantime::format_rfc3339_seconds(now).to_string(),
            text,
        })
    }
}

/// Where notices go.
#[derive(Debug, Clone)]
pub struct Notifier {
    http: reqwest::Client,
    webhook_url: Option<String>,
    command: Option<Vec<String>>,
}

impl Notifier {
    /// The notifier `notify.webhook_url` and `notify.command` ask for.
    pub fn for_config(config: &Config, http: reqwest::Client) -> Self {
        Notifier::new(
            http,
            config.notify.webhook_url.clone(),
            config.notify.command.clone(),
        )
    }

    pub fn new(
        http: reqwest::Client,
        webhook_url: Option<String>,
        command: Option<Vec<String>>,
    ) -> Self {
        Notifier {
            http,
            webhook_url,
            command,
        }
    }

    /// Logs the notice and delivers it to the webhook and the command, concurrently.
    pub async fn send(&self, notice: &Notice) {
        match notice.event {
            Event::ReauthRequired => {
                error!(reason = %notice.reason, action = %notice.action, "{}", notice.text)
            }
            Event::Recovered => info!("{}", notice.text),
        }
        let body = serde_json::to_vec(notice).expect("a notice always serializes");
        tokio::join!(self.post(&body), self.run_command(notice, &body));
    }

    async fn post(&self, body: &[u8]) {
        let Some(url) = &self.webhook_url else { return };
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .timeout(NOTIFY_TIMEOUT)
            .send();
        match request.await {
            Ok(response) if response.status().is_success() => {
                info!(status = %response.status(), "webhook notified")
            }
            Ok(response) => warn!(status = %response.status(), "webhook refused the notice"),
            // Without the URL: chat webhook URLs are secrets.
            Err(e) => warn!(error = %describe(&e.without_url()), "webhook notice failed"),
        }
    }

    async fn run_command(&self, notice: &Notice, body: &[u8]) {
        let Some(argv) = &self.command else { return };
        let Some((program, args)) = argv.split_first() else {
            return;
        };
        let state = match notice.event {
            Event::ReauthRequired => TokenState::ReauthRequired,
            Event::Recovered => TokenState::Valid,
        };
        let spawned = tokio::process::Command::new(program)
            .args(args)
            .env("GRAPH_RELAY_STATE", state.as_str())
            .env("GRAPH_RELAY_REASON", &notice.reason)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => return warn!(command = %program, error = %e, "cannot run notify.command"),
        };
        let run = async {
            if let Some(mut stdin) = child.stdin.take() {
                // A command that ignores its stdin closes the pipe early; that is fine.
                let _ = stdin.write_all(body).await;
            }
            child.wait().await
        };
        match tokio::time::timeout(NOTIFY_TIMEOUT, run).await {
            Ok(Ok(status)) if status.success() => info!(command = %program, "notify.command ran"),
            Ok(Ok(status)) => warn!(command = %program, %status, "notify.command failed"),
            Ok(Err(e)) => warn!(command = %program, error = %e, "notify.command failed"),
            Err(_) => warn!(command = %program, "notify.command timed out; killed"),
        }
    }
}

/// Sends a notice on every token state change that deserves one, and wakes delivery so held
/// mail drains as soon as the state is valid again.
pub async fn watch_token_state(
    tokens: Arc<Tokens>,
    notifier: Notifier,
    spool: Spool,
    waker: Arc<Notify>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let host = config.hostname();
    let mut changes = tokens.subscribe();
    let mut before = changes.borrow_and_update().state;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let after = changes.borrow_and_update().clone();
        waker.notify_one();
        let pending = spool
            .run(|spool| spool.counts(SystemTime::now()).map(|c| c.pending))
            .await
            .unwrap_or(0);
        // The advice follows the reason: an expired secret and a revoked consent differ.
        let action = crate::auth::advice::for_status(&config, &after).unwrap_or_default();
        if let Some(notice) =
            Notice::for_change(before, &after, &action, pending, &host, SystemTime::now())
        {
            // Notices run beside delivery; a slow webhook never holds mail up.
            let notifier = notifier.clone();
            tokio::spawn(async move { notifier.send(&notice).await });
        }
        before = after.state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: TokenState, reason: &str) -> TokenStatus {
        TokenStatus {
            state,
            reason: reason.into(),
            expires_at: None,
        }
    }

    #[test]
    fn one_notice_per_state_change() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let reauth = status(
            TokenState::ReauthRequired,
            "invalid_grant: AADSTS700082: expired",
        );
        let notice = Notice::for_change(
            TokenState::Valid,
            &reauth,
            "run graph-relay auth login",
            5,
            "web1",
            now,
        )
        .unwrap();
        assert_eq!(notice.event, Event::ReauthRequired);
        assert_eq!(notice.queue_pending, 5);
        assert_eq!(notice.at, "2027-01-15T08:00:00Z");
        assert!(
            notice.text.contains("AADSTS700082")
                && notice.text.contains("run graph-relay auth login")
        );
        assert_eq!(
            Notice::for_change(TokenState::ReauthRequired, &reauth, "x", 5, "h", now),
            None
        );
        let back = Notice::for_change(
            TokenState::ReauthRequired,
            &status(TokenState::Valid, ""),
            "x",
            5,
            "h",
            now,
        );
        assert_eq!(back.map(|n| n.event), Some(Event::Recovered));
        assert_eq!(
            Notice::for_change(
                TokenState::Valid,
                &status(TokenState::Valid, ""),
                "x",
                0,
                "h",
                now
            ),
            None
        );
    }

    #[test]
    fn notice_json_has_the_contract_fields() {
        let now = SystemTime::UNIX_EPOCH;
        let notice = Notice::for_change(
            TokenState::Valid,
            &status(TokenState::ReauthRequired, "r"),
            "a",
            1,
            "h",
            now,
        )
        .unwrap();
        let value = serde_json::to_value(&notice).unwrap();
        for key in [
            "event",
            "reason",
            "action",
            "queue_pending",
            "host",
            "at",
            "text",
        ] {
            assert!(value.get(key).is_some(), "{key} missing in {value}");
        }
        assert_eq!(value["event"], "reauth_required");
    }

    #[test]
    fn a_recovered_notice_says_nothing_needs_doing() {
        let notice = Notice::for_change(
            TokenState::ReauthRequired,
            &status(TokenState::Valid, ""),
            "",
            3,
            "h",
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(notice.event, Event::Recovered);
        assert_eq!(notice.action, RECOVERED_ACTION);
        assert!(notice.text.contains("delivering 3 held"), "{}", notice.text);
    }

    #[tokio::test]
    async fn the_command_gets_the_notice_on_stdin_and_the_state_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "cat > {0}.json; echo \"$GRAPH_RELAY_STATE|$GRAPH_RELAY_REASON\" > {0}.env",
            out.display()
        );
        let notifier = Notifier::new(
            reqwest::Client::new(),
            None,
            Some(vec!["sh".into(), "-c".into(), script]),
        );
        let notice = Notice::for_change(
            TokenState::Valid,
            &status(TokenState::ReauthRequired, "invalid_client: AADSTS7000222"),
            "rotate the client secret",
            3,
            "h",
            SystemTime::now(),
        )
        .unwrap();
        notifier.send(&notice).await;
        let json: Notice =
            serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
        assert_eq!(json, notice);
        let env = std::fs::read_to_string(out.with_extension("env")).unwrap();
        assert_eq!(env.trim(), "reauth_required|invalid_client: AADSTS7000222");
    }
}
