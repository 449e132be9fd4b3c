//! What the SMTP listener and its sessions need from the configuration, in the units they use.
//! Built once at start-up and shared; what changes later is only the TLS certificate (`reload_tls`,
//! on SIGHUP) and the shared counters (connection limit, AUTH failures per address). The only
//! I/O here is reading the TLS PEM files.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use crate::config::{Config, SmtpUser};
use crate::memory::MemoryBudget;

use super::throttle::AuthThrottle;
use super::tls::{self, ServerTls, TlsSetupError};

/// Settings for `serve` and `serve_connection`. Construct with `new` (defaults) or
/// `from_config`, then adjust the public fields before wrapping in an `Arc`.
/// Granularity of the DATA memory budget.
pub(crate) const DATA_MEMORY_UNIT: usize = 64 * 1024;

pub struct SmtpSettings {
    /// Name in the 220 greeting, the EHLO reply and 421s.
    pub hostname: String,
    /// Largest message accepted (after dot-unstuffing); advertised as `SIZE`.
    pub max_message_bytes: usize,
    /// Clients outside these networks get `554 5.7.1` at connect.
    pub allowed_networks: Vec<IpNet>,
    /// Most distinct recipients per transaction; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Concurrent connections over every listener sharing these settings; more get `421 4.7.0`.
    pub max_connections: usize,
    /// Longest silence (one read, or writes draining) anywhere in a session before `421 4.4.2`.
    pub idle_timeout: Duration,
    /// Longest time for a whole command line (or AUTH response), from when the server starts
    /// waiting for it, before `421 4.4.2`: a client trickling a byte at a time cannot hold a
    /// connection longer than an idle one.
    pub command_timeout: Duration,
    /// Longest time for a whole message, from the DATA command (or the first BDAT) to its end,
    /// before `421 4.4.2`; for BDAT it also bounds the commands between the chunks.
    pub data_timeout: Duration,
    /// After shutdown starts, how long sessions in the middle of a transaction may finish it.
    pub shutdown_grace: Duration,
    /// Protocol errors (unknown commands, bad syntax, out of order) tolerated per connection;
    /// the next one gets `421 4.7.0` and the connection is closed.
    pub max_errors: usize,
    /// NOOP, RSET, VRFY and HELP tolerated between two accepted messages (Postfix's
    /// `smtpd_junk_command_limit`); past it each one counts as a protocol error, so a client
    /// cannot hold a connection slot for ever with a NOOP before each timeout.
    pub max_junk_commands: usize,
    /// Failed AUTH attempts tolerated per connection; the next one closes it with `421 4.7.0`.
    pub max_auth_failures: usize,
    /// MAIL FROM needs a successful AUTH first (`530 5.7.0`).
    pub require_auth: bool,
    /// AUTH users. AUTH is offered only when this is not empty.
    pub users: BTreeMap<String, SmtpUser>,
    /// Failed AUTH attempts per client address, over every connection sharing these settings:
    /// past a few, each `535` is delayed.
    pub auth_throttle: AuthThrottle,
    /// Most argon2 password verifications running at once (each takes ~19 MiB and a CPU for
    /// tens of milliseconds); more wait their turn.
    pub max_hash_verifications: usize,
    /// When set, STARTTLS is offered and `serve_implicit_tls` works.
    pub tls: Option<ServerTls>,
    /// Message data all sessions together may hold in memory while DATA is being received;
    /// past it a message is drained and refused with `452 4.3.1` (try again later), so many
    /// large messages at once cannot exhaust the host's memory.
    pub data_memory_bytes: usize,
    limiter: OnceLock<Arc<Semaphore>>,
    data_memory: OnceLock<Arc<Semaphore>>,
    hash_slots: OnceLock<Semaphore>,
}

/// What `SmtpSettings::reload_tls` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsReload {
    /// The new certificate is in use for new handshakes.
    Reloaded,
    /// No TLS before and none configured now.
    NotConfigured,
    /// The new files could not be used; the old certificate stays. Holds the reason.
    Failed(String),
    /// TLS was turned on or off in the file: that takes a restart (listeners and EHLO
    /// depend on it). Nothing changed.
    NeedsRestart,
}

impl SmtpSettings {
    /// The built-in defaults (those of `relay.toml`, read from `Config::default()`), with the
    /// given host name.
    pub fn new(hostname: impl Into<String>) -> Self {
        let mut s = Self::from_config(&Config::default());
        s.hostname = one_line(&hostname.into());
        s
    }

    /// Everything from the config except TLS (which needs file reads that can fail; see
    /// `try_from_config`).
    pub fn from_config(c: &Config) -> Self {
        let smtp = &c.smtp;
        let s = SmtpSettings {
            hostname: one_line(&c.hostname()),
            max_message_bytes: usize::try_from(smtp.max_message_bytes).unwrap_or(usize::MAX),
            allowed_networks: smtp.allowed_networks.clone(),
            max_recipients: smtp.max_recipients.max(1),
            max_connections: smtp.max_connections.max(1),
            idle_timeout: Duration::from_secs(smtp.idle_timeout_secs.max(1)),
            command_timeout: Duration::from_secs(smtp.command_timeout_secs.max(1)),
            data_timeout: Duration::from_secs(smtp.data_timeout_secs.max(1)),
            // Not config keys: fixed policy.
            shutdown_grace: Duration::from_secs(10),
            max_errors: 10,
            max_junk_commands: 100,
            max_auth_failures: 3,
            require_auth: smtp.require_auth,
            users: smtp.users.clone(),
            auth_throttle: AuthThrottle::default(),
            max_hash_verifications: std::thread::available_parallelism()
                .map_or(2, usize::from)
                .clamp(1, 8),
            tls: None,
            data_memory_bytes: usize::try_from(smtp.data_memory_bytes).unwrap_or(usize::MAX),
            limiter: OnceLock::new(),
            data_memory: OnceLock::new(),
            hash_slots: OnceLock::new(),
        };
        for (user, mailbox) in unsendable_mailboxes(c) {
            warn!(
                user = %user,
                mailbox = %mailbox,
                "smtp.users mailbox is neither microsoft.sender nor in microsoft.allowed_senders: \
                 its mail will be sent from microsoft.sender"
            );
        }
        s
    }

    /// `from_config` plus the TLS server config when `smtp.tls_cert`/`smtp.tls_key` are set.
    pub fn try_from_config(c: &Config) -> Result<Self, TlsSetupError> {
        let mut s = Self::from_config(c);
        if let (Some(cert), Some(key)) = (&c.smtp.tls_cert, &c.smtp.tls_key) {
            s.tls = Some(tls::load_server_config(cert, key)?);
        }
        Ok(s)
    }

    /// SIGHUP: loads the certificate and key named in `c` (which may be new files, or renewed
    /// ones at the same paths) for every handshake from now on. A bad pair is logged and the
    /// running certificate kept.
    pub fn reload_tls(&self, c: &Config) -> TlsReload {
        let files = c.smtp.tls_cert.as_deref().zip(c.smtp.tls_key.as_deref());
        match (&self.tls, files) {
            (Some(tls), Some((cert, key))) => match tls.reload_files(cert, key) {
                Ok(()) => {
                    info!(cert = %cert.display(), "SMTP TLS certificate reloaded");
                    TlsReload::Reloaded
                }
                Err(e) => {
                    error!(error = %e, "SMTP TLS certificate not reloaded; keeping the one in use");
                    TlsReload::Failed(e.to_string())
                }
            },
            (None, None) => TlsReload::NotConfigured,
            (Some(_), None) => {
                warn!(
                    "smtp.tls_cert was removed: TLS stays on with the current certificate until a restart"
                );
                TlsReload::NeedsRestart
            }
            (None, Some(_)) => {
                warn!("smtp.tls_cert was added: STARTTLS is offered only after a restart");
                TlsReload::NeedsRestart
            }
        }
    }

    /// Whether a client at `ip` may connect at all.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allowed_networks.iter().any(|net| net.contains(&ip))
    }

    /// The connection limit shared by every listener serving with these settings. Created on
    /// first use from `max_connections`.
    pub(crate) fn limiter(&self) -> Arc<Semaphore> {
        self.limiter
            .get_or_init(|| Arc::new(Semaphore::new(self.max_connections.max(1))))
            .clone()
    }

    /// The shared budget for message data held in memory, in `DATA_MEMORY_UNIT` permits.
    pub(crate) fn data_memory(&self) -> Arc<Semaphore> {
        self.data_memory
            .get_or_init(|| Arc::new(Semaphore::new(self.data_memory_units())))
            .clone()
    }

    fn data_memory_units(&self) -> usize {
        (self.data_memory_bytes / DATA_MEMORY_UNIT).clamp(1, Semaphore::MAX_PERMITS)
    }

    /// The same budget, for conversion to share: what it holds, reception cannot, and the
    /// other way round.
    pub fn shared_memory(&self) -> MemoryBudget {
        MemoryBudget::new(
            self.data_memory(),
            DATA_MEMORY_UNIT,
            self.data_memory_units(),
        )
    }

    /// Permits for argon2 verifications (see `max_hash_verifications`).
    pub(crate) fn hash_slots(&self) -> &Semaphore {
        self.hash_slots
            .get_or_init(|| Semaphore::new(self.max_hash_verifications.max(1)))
    }
}

impl fmt::Debug for SmtpSettings {
    // By hand: `users` holds passwords, which must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("hostname", &self.hostname)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("allowed_networks", &self.allowed_networks)
            .field("max_recipients", &self.max_recipients)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("data_timeout", &self.data_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("max_errors", &self.max_errors)
            .field("max_junk_commands", &self.max_junk_commands)
            .field("max_auth_failures", &self.max_auth_failures)
            .field("require_auth", &self.require_auth)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("auth_throttle", self.auth_throttle.policy())
            .field("max_hash_verifications", &self.max_hash_verifications)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Users whose `mailbox` Graph would not send from (app-only flow): not `microsoft.sender` and
/// not matched by `microsoft.allowed_senders` (address or `*@domain`).
fn unsendable_mailboxes(c: &Config) -> Vec<(&str, &str)> {
    let ms = &c.microsoft;
    if ms.flow == crate::config::Flow::Delegated {
        return Vec::new();
    }
    let sendable = |mailbox: &str| {
        let mailbox = mailbox.trim().to_ascii_lowercase();
        let domain = mailbox.rsplit_once('@').map(|(_, d)| d.to_string());
        let is_sender = ms
            .sender
            .as_deref()
            .is_some_and(|s| s.trim().eq_ignore_ascii_case(&mailbox));
        is_sender
            || ms.allowed_senders.iter().any(|entry| {
                let entry = entry.trim().to_ascii_lowercase();
                match entry.strip_prefix("*@").or_else(|| entry.strip_prefix('@')) {
                    Some(d) => domain.as_deref() == Some(d),
                    None => !entry.is_empty() && entry == mailbox,
                }
            })
    };
    c.smtp
        .users
        .iter()
        .filter_map(|(user, u)| u.mailbox().map(|m| (user.as_str(), m)))
        .filter(|(_, m)| !sendable(m))
        .collect()
}

fn one_line(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == '.')
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn defaults_allow_loopback_only() {
        let s = SmtpSettings::new("relay.test");
        assert!(s.allows("127.0.0.1".parse().expect("ip")));
        assert!(s.allows("127.9.9.9".parse().expect("ip")));
        assert!(s.allows("::1".parse().expect("ip")));
        assert!(s.allows("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!s.allows("10.0.0.1".parse().expect("ip")));
        assert!(!s.allows("::2".parse().expect("ip")));
    }

    #[test]
    fn from_config_copies_the_smtp_section() {
        let env = vec![
            (
                "GRAPH_RELAY__SMTP__HOSTNAME".to_string(),
                "mx.example".to_string(),
            ),
            (
                "GRAPH_RELAY__SMTP__MAX_MESSAGE_BYTES".to_string(),
                "1234".to_string(),
            ),
            (
                "GRAPH_RELAY__SMTP__IDLE_TIMEOUT_SECS".to_string(),
                "7".to_string(),
            ),
            (
                "GRAPH_RELAY__SMTP__MAX_RECIPIENTS".to_string(),
                "5".to_string(),
            ),
            (
                "GRAPH_RELAY__SMTP__COMMAND_TIMEOUT_SECS".to_string(),
                "8".to_string(),
            ),
            (
                "GRAPH_RELAY__SMTP__DATA_TIMEOUT_SECS".to_string(),
                "9".to_string(),
            ),
        ];
        let config = Config::from_layers(None, &env).expect("config");
        let s = SmtpSettings::from_config(&config);
        assert_eq!(s.hostname, "mx.example");
        assert_eq!(s.max_message_bytes, 1234);
        assert_eq!(s.max_recipients, 5);
        assert_eq!(s.idle_timeout, Duration::from_secs(7));
        assert_eq!(s.command_timeout, Duration::from_secs(8));
        assert_eq!(s.data_timeout, Duration::from_secs(9));
        assert!(s.tls.is_none());
        assert!(format!("{s:?}").contains("mx.example"));
    }

    #[test]
    fn mailboxes_graph_would_not_send_from_are_found() {
        let file = r#"
[smtp.users]
a = { password = "x", mailbox = "Relay@Contoso.com" }
b = { password = "x", mailbox = "shop@fabrikam.com" }
c = { password = "x", mailbox = "ann@contoso.com" }
d = { password = "x", mailbox = "eve@elsewhere.com" }
e = "no mailbox"
[microsoft]
sender = "relay@contoso.com"
allowed_senders = ["*@fabrikam.com", "ann@contoso.com"]
"#;
        let config = Config::from_layers(Some(file), &[]).expect("config");
        assert_eq!(unsendable_mailboxes(&config), [("d", "eve@elsewhere.com")]);
    }

    #[test]
    fn hostname_is_kept_to_one_token() {
        assert_eq!(SmtpSettings::new("a\r\nb c").hostname, "abc");
        assert_eq!(SmtpSettings::new("").hostname, "localhost");
    }
}
