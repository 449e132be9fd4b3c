//! The sendmail interface (`graph-relay sendmail`, or the binary run as `sendmail`): what PHP's
//! `mail()`, cron, logwatch and other programs that pipe a message into `/usr/sbin/sendmail`
//! expect, with Postfix's semantics. It never delivers anything itself and never takes serve's
//! lock: it commits to the spool through the same `Ingest` as SMTP (fsynced before it exits 0)
//! when the spool belongs to the calling user, and otherwise submits over the relay's own SMTP
//! port, which answers 250 only once the message is fsynced. Any other outcome is a non-zero
//! sysexits code; a message is never claimed queued when it is not.
//!
//! - `args`: the command line; `message`: the input and its header edits; `forward`: the SMTP
//!   submission.

pub mod args;
mod forward;
pub mod message;

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::clock::SystemClock;
use crate::config::{Config, ConfigError, Source};
use crate::envelope::Envelope;
use crate::ingest::Ingest;
use crate::smtp::{self, AcceptError, MessageSink, SmtpSettings};
use crate::spool::Spool;

pub use args::{ArgsError, Invocation, Mode};
pub use forward::Forward;
use message::InputError;

/// The environment variable naming the configuration file when none is given.
pub const CONFIG_ENV: &str = "GRAPH_RELAY_CONFIG";
/// The configuration file of a packaged install, used when it exists.
pub const SYSTEM_CONFIG: &str = "/etc/graph-relay/relay.toml";

/// Exit codes from sysexits.h, as sendmail callers read them.
pub mod sysexits {
    pub const EX_USAGE: u8 = 64;
    pub const EX_DATAERR: u8 = 65;
    pub const EX_NOUSER: u8 = 67;
    pub const EX_UNAVAILABLE: u8 = 69;
    pub const EX_SOFTWARE: u8 = 70;
    pub const EX_IOERR: u8 = 74;
    pub const EX_TEMPFAIL: u8 = 75;
    pub const EX_NOPERM: u8 = 77;
    pub const EX_CONFIG: u8 = 78;
}

#[derive(Debug, thiserror::Error)]
pub enum SendmailError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("no recipients: name them as arguments, or use -t to read To/Cc/Bcc")]
    NoRecipients,
    #[error("{count} recipients; smtp.max_recipients is {max}")]
    TooManyRecipients { count: usize, max: usize },
    #[error(
        "recipient {0:?} is not a full address (local@domain): the relay sends only through \
         Microsoft Graph (for cron, set MAILTO to a full address)"
    )]
    BadRecipient(String),
    #[error("sender {0:?} is not a usable address")]
    BadSender(String),
    #[error("message refused: {0}")]
    Rejected(String),
    #[error("not queued, try again later: {0}")]
    TempFail(String),
    #[error("not queued: {0}")]
    NoPerm(String),
    #[error("not queued: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl SendmailError {
    /// The sysexits code for this failure.
    pub fn exit_code(&self) -> u8 {
        use sysexits::*;
        match self {
            SendmailError::Args(_)
            | SendmailError::NoRecipients
            | SendmailError::TooManyRecipients { .. }
            | SendmailError::BadSender(_) => EX_USAGE,
            SendmailError::Config(_) => EX_CONFIG,
            SendmailError::Input(InputError::TooBig(_)) | SendmailError::Rejected(_) => EX_DATAERR,
            SendmailError::Input(InputError::Io(_)) | SendmailError::Io(_) => EX_IOERR,
            SendmailError::BadRecipient(_) => EX_NOUSER,
            SendmailError::TempFail(_) => EX_TEMPFAIL,
            SendmailError::NoPerm(_) => EX_NOPERM,
            SendmailError::Unavailable(_) => EX_UNAVAILABLE,
        }
    }
}

/// Whether the program was started under the name `sendmail` (a symlink such as
/// `/usr/sbin/sendmail -> graph-relay`): then every argument is a sendmail argument.
pub fn invoked_as_sendmail(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "sendmail")
}

/// Which configuration file: `--config` or `-C` when given, else `$GRAPH_RELAY_CONFIG`, else
/// `/etc/graph-relay/relay.toml` when it exists, else what every command uses (`./relay.toml`
/// or the built-in defaults). Callers of sendmail run in any directory, so the current one is
/// the last resort.
pub fn config_source(
    explicit: Option<PathBuf>,
    env: Option<OsString>,
    system_config_exists: bool,
) -> Source {
    if let Some(path) = explicit {
        Source::Explicit(path)
    } else if let Some(path) = env.filter(|p| !p.is_empty()) {
        Source::Explicit(path.into())
    } else if system_config_exists {
        Source::Explicit(SYSTEM_CONFIG.into())
    } else {
        Source::Default
    }
}

/// Loads the configuration `config_source` picks. The packaged `/etc/graph-relay/relay.toml` is
/// readable only by root and the service's group (it names secret files), while `mail()` in PHP
/// or a cron job runs as some other user. When that file was picked implicitly and this user may
/// not read it, the built-in defaults and the environment are used instead: such a caller cannot
/// write the spool either, so it submits over `smtp.listen`, the one key that route needs.
pub fn load_config(
    explicit: Option<PathBuf>,
    env: Option<OsString>,
) -> Result<Config, ConfigError> {
    let implicit = explicit.is_none() && env.as_ref().is_none_or(|e| e.is_empty());
    let system = Path::new(SYSTEM_CONFIG);
    match Config::load(&config_source(explicit, env, system.exists())) {
        Err(e) if implicit && is_unreadable(&e, system) => {
            info!(
                config = SYSTEM_CONFIG,
                "not readable by this user; using the built-in defaults"
            );
            let env: Vec<(String, String)> = std::env::vars().collect();
            Config::from_layers(None, &env)
        }
        loaded => loaded,
    }
}

/// Whether `e` says `path` may not be read by this user.
fn is_unreadable(e: &ConfigError, path: &Path) -> bool {
    matches!(e, ConfigError::Read { path: p, source }
        if p == path && source.kind() == std::io::ErrorKind::PermissionDenied)
}

/// Runs one sendmail invocation with the process's stdin and stdout. `Ok` means every message
/// it was given is durable (in the spool, or in the relay's spool over SMTP).
pub async fn run(inv: Invocation, config: &Config) -> Result<(), SendmailError> {
    match inv.mode {
        Mode::Nothing => Ok(()),
        Mode::Smtp => smtp_session(config).await,
        Mode::Deliver => {
            let stdin = std::io::stdin().lock();
            let raw = message::read(stdin, inv.dot_ends, max_message_bytes(config))?;
            deliver(&inv, config, &raw, route(config)).await
        }
    }
}

/// Where this process's mail goes.
pub enum Route {
    /// Straight into the spool (it belongs to this user).
    Spool(Ingest),
    /// Over the running relay's SMTP port.
    Relay(Forward),
}

/// The spool when it exists and belongs to the effective user (as the service's own user, or
/// root on a relay run as root), else the relay's SMTP port. A spool that belongs to someone
/// else is never written: files this user made could be unreadable to the service, and
/// another user's directory is not ours to create things in.
pub fn route(config: &Config) -> Route {
    let dir = &config.queue.dir;
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    let ours = ["queue", "tmp"]
        .iter()
        .all(|sub| std::fs::metadata(dir.join(sub)).is_ok_and(|m| m.is_dir() && m.uid() == euid));
    if ours {
        match Spool::open(dir) {
            Ok(spool) => {
                info!(spool = %dir.display(), "writing the spool");
                return Route::Spool(Ingest::without_delivery(spool, Arc::new(SystemClock)));
            }
            Err(e) => info!(error = %e, "cannot open the spool; submitting over SMTP"),
        }
    } else {
        info!(
            spool = %dir.display(),
            euid,
            "the spool is missing or not this user's; submitting over SMTP"
        );
    }
    Route::Relay(relay(config))
}

fn relay(config: &Config) -> Forward {
    let listen = config
        .smtp
        .listen
        .first()
        .copied()
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 2525)));
    Forward::new(listen, config.hostname())
}

fn max_message_bytes(config: &Config) -> usize {
    usize::try_from(config.smtp.max_message_bytes).unwrap_or(usize::MAX)
}

/// `-bm`: one message from the input, edited and addressed as Postfix would, then queued.
pub async fn deliver(
    inv: &Invocation,
    config: &Config,
    raw: &[u8],
    route: Route,
) -> Result<(), SendmailError> {
    let user = login_name();
    let sender = envelope_sender(inv.sender.as_deref(), config, &user)?;
    let from = (!sender.is_empty()).then(|| match &inv.full_name {
        Some(name) => format!("{} <{sender}>", quoted(name)),
        None => sender.clone(),
    });
    let prepared = message::prepare(raw, inv.extract, from.as_deref());
    let recipients = recipients(&inv.recipients, &prepared.header_recipients)?;
    let max = config.smtp.max_recipients.max(1);
    if recipients.len() > max {
        return Err(SendmailError::TooManyRecipients {
            count: recipients.len(),
            max,
        });
    }
    let limit = max_message_bytes(config);
    if prepared.message.len() > limit {
        return Err(InputError::TooBig(limit).into());
    }
    let smtputf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
    let envelope = Envelope {
        helo: format!("sendmail (uid {} {user})", current_uid()),
        smtputf8,
        ..Envelope::new(sender, recipients)
    };
    let message = prepared.message;
    match route {
        Route::Spool(ingest) => {
            ingest
                .check_space(Some(message.len() as u64))
                .await
                .map_err(not_queued)?;
            let id = ingest.accept(envelope, message).await.map_err(not_queued)?;
            info!(queue_id = %id, "message queued in the spool");
            Ok(())
        }
        Route::Relay(forward) => forward.submit(&envelope, &message).await.map(drop),
    }
}

fn not_queued(e: AcceptError) -> SendmailError {
    match e {
        AcceptError::Rejected(why) => SendmailError::Rejected(why),
        AcceptError::Unavailable(why) | AcceptError::NoSpace(why) => {
            SendmailError::TempFail(format!("spool: {why}"))
        }
    }
}

/// `-bs`: an SMTP session on stdin/stdout, as from a trusted local client: loopback, no AUTH
/// asked or offered, no TLS (there is no network to protect), the configured size and
/// recipient limits.
async fn smtp_session(config: &Config) -> Result<(), SendmailError> {
    let mut settings = SmtpSettings::from_config(config);
    settings.require_auth = false;
    settings.users.clear();
    // The session's peer is this host, whatever networks the relay lets in over TCP.
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    settings.allowed_networks.push(peer.ip().into());
    let sink: Box<dyn MessageSink> = match route(config) {
        Route::Spool(ingest) => Box::new(ingest),
        Route::Relay(forward) => Box::new(forward),
    };
    let stream = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    smtp::serve_connection(
        stream,
        peer,
        &settings,
        sink.as_ref(),
        &CancellationToken::new(),
    )
    .await;
    Ok(())
}

/// `-f`/`-r` as given (`<>` or empty: the null sender; a bare name gets `@hostname`, as Postfix
/// appends its origin), else `microsoft.sender`, the mailbox the relay sends from anyway, else
/// `login@hostname`.
fn envelope_sender(
    given: Option<&str>,
    config: &Config,
    user: &str,
) -> Result<String, SendmailError> {
    let with_host = |local: &str| format!("{local}@{}", config.hostname());
    let Some(given) = given else {
        return Ok(config
            .microsoft
            .sender
            .clone()
            .unwrap_or_else(|| with_host(user)));
    };
    let trimmed = given.trim();
    if trimmed.is_empty() || trimmed == "<>" {
        return Ok(String::new());
    }
    let address = message::addresses_in(trimmed)
        .into_iter()
        .next()
        .ok_or_else(|| SendmailError::BadSender(given.to_string()))?;
    if !plain_address(&address) {
        return Err(SendmailError::BadSender(given.to_string()));
    }
    Ok(if address.contains('@') {
        address
    } else {
        with_host(&address)
    })
}

/// The command-line recipients (each may be a list) followed by those from the headers (`-t`),
/// duplicates dropped.
fn recipients(args: &[String], from_headers: &[String]) -> Result<Vec<String>, SendmailError> {
    let mut out: Vec<String> = Vec::new();
    let given = args.iter().flat_map(|a| {
        let found = message::addresses_in(a);
        // Something that parses to no address at all is still a (bad) recipient.
        if found.is_empty() {
            vec![a.clone()]
        } else {
            found
        }
    });
    for address in given.chain(from_headers.iter().cloned()) {
        let full = address
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
        if !full || !plain_address(&address) {
            return Err(SendmailError::BadRecipient(address));
        }
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&address)) {
            out.push(address);
        }
    }
    if out.is_empty() {
        return Err(SendmailError::NoRecipients);
    }
    Ok(out)
}

/// No spaces, controls or brackets: what can stand between `<` and `>` in SMTP.
fn plain_address(address: &str) -> bool {
    !address.is_empty()
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>'))
}

/// A display name as an RFC 5322 quoted string.
fn quoted(name: &str) -> String {
    let mut out = String::from("\"");
    for c in name.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// The login name of the real user (from the password database), else `$USER`, else `uidN`.
fn login_name() -> String {
    let uid = current_uid();
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain old data; zeroed is valid and getpwuid_r only writes it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of pwd's strings below.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc == 0 && !found.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded, so pw_name points to a NUL-terminated string in buf.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        if let Ok(name) = name.to_str()
            && !name.is_empty()
        {
            return name.to_string();
        }
    }
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid{uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_comes_from_the_flag_then_the_environment_then_etc() {
        let path = |source: Source| match source {
            Source::Explicit(path) => Some(path),
            Source::Default => None,
        };
        let flag = Some(PathBuf::from("/x.toml"));
        let env = Some(OsString::from("/env.toml"));
        assert_eq!(
            path(config_source(flag, env.clone(), true)),
            Some("/x.toml".into())
        );
        assert_eq!(
            path(config_source(None, env, true)),
            Some("/env.toml".into())
        );
        assert_eq!(
            path(config_source(None, Some(OsString::new()), true)),
            Some(SYSTEM_CONFIG.into())
        );
        assert_eq!(path(config_source(None, None, false)), None);
    }

    #[test]
    fn only_a_system_config_this_user_may_not_read_falls_back() {
        let system = Path::new(SYSTEM_CONFIG);
        let read = |path: &Path, kind| ConfigError::Read {
            path: path.into(),
            source: std::io::Error::from(kind),
        };
        use std::io::ErrorKind::{NotFound, PermissionDenied};
        assert!(is_unreadable(&read(system, PermissionDenied), system));
        assert!(!is_unreadable(&read(system, NotFound), system));
        assert!(!is_unreadable(
            &read(Path::new("/x.toml"), PermissionDenied),
            system
        ));
        assert!(!is_unreadable(&ConfigError::Syntax("x".into()), system));
    }

    #[test]
    fn recipients_are_checked_listed_and_deduplicated() {
        let r = recipients(
            &["A <a@x.example>, b@x.example".into()],
            &["B@x.example".into(), "c@x.example".into()],
        )
        .unwrap();
        assert_eq!(r, ["a@x.example", "b@x.example", "c@x.example"]);
        assert!(matches!(
            recipients(&["root".into()], &[]),
            Err(SendmailError::BadRecipient(r)) if r == "root"
        ));
        assert!(matches!(
            recipients(&[], &[]),
            Err(SendmailError::NoRecipients)
        ));
    }

    #[test]
    fn sender_defaults_to_the_relay_mailbox_then_the_user() {
        let mut config = Config::from_layers(None, &[]).unwrap();
        config.smtp.hostname = "web1.example".into();
        assert_eq!(
            envelope_sender(None, &config, "www-data").unwrap(),
            "www-data@web1.example"
        );
        config.microsoft.sender = Some("relay@contoso.test".into());
        assert_eq!(
            envelope_sender(None, &config, "www-data").unwrap(),
            "relay@contoso.test"
        );
        assert_eq!(
            envelope_sender(Some("Me <me@x.example>"), &config, "u").unwrap(),
            "me@x.example"
        );
        assert_eq!(envelope_sender(Some("<>"), &config, "u").unwrap(), "");
        assert_eq!(
            envelope_sender(Some("bounces"), &config, "u").unwrap(),
            "bounces@web1.example"
        );
    }

    #[tokio::test]
    async fn a_tmp_file_removed_mid_commit_fails_the_command_and_queues_nothing()
    -> crate::TestResult {
        let dir = tempfile::tempdir()?;
        // What serve's start-up scan does to tmp/ while the command writes there: the message
        // file goes before the record is written.
        let hook: crate::spool::WriteHook = Arc::new(|path: &Path| {
            if path.extension().is_some_and(|e| e == "json") {
                std::fs::remove_file(path.with_extension("eml"))?;
            }
            Ok(())
        });
        let spool = Spool::open(dir.path())?.with_write_hook(hook);
        let route = Route::Spool(Ingest::without_delivery(spool, Arc::new(SystemClock)));
        let config = Config::from_layers(None, &[])?;
        let inv = args::parse(&["a@x.example".into()])?;
        let result = deliver(&inv, &config, b"Subject: s\r\n\r\nb\r\n", route).await;
        let err = result
            .err()
            .ok_or("a commit whose tmp file vanished succeeded")?;
        assert_eq!(err.exit_code(), sysexits::EX_TEMPFAIL, "{err}");
        for area in ["queue", "tmp"] {
            let left: Vec<_> = std::fs::read_dir(dir.path().join(area))?.collect();
            assert!(left.is_empty(), "{area}: {left:?}");
        }
        Ok(())
    }

    #[test]
    fn full_names_are_quoted() {
        assert_eq!(quoted("Web \"Site\""), "\"Web \\\"Site\\\"\"");
        assert_eq!(quoted("a\r\nb"), "\"ab\"");
    }
}
