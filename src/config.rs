//! Typed configuration: built-in defaults (the repo's `relay.toml`, compiled in), then the file,
//! then `GRAPH_RELAY__SECTION__KEY` environment variables. `load` reports every bad key with its
//! full path, not just the first. This module never touches the network or the spool.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer};

/// The repo's `relay.toml`: the defaults every key falls back to.
pub const DEFAULTS_TOML: &str = include_str!("../relay.toml");

/// Environment variable prefix; `__` separates the section from the key.
pub const ENV_PREFIX: &str = "GRAPH_RELAY";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub smtp: SmtpConfig,
    pub microsoft: MicrosoftConfig,
    pub queue: QueueConfig,
    pub status: StatusConfig,
    pub notify: NotifyConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    #[serde(deserialize_with = "socket_addrs")]
    pub listen: Vec<SocketAddr>,
    pub hostname: String,
    #[serde(deserialize_with = "lenient_u64")]
    pub max_message_bytes: u64,
    #[serde(deserialize_with = "networks")]
    pub allowed_networks: Vec<IpNet>,
    #[serde(deserialize_with = "lenient_bool")]
    pub require_auth: bool,
    #[serde(default)]
    pub users: BTreeMap<String, SmtpUser>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    #[serde(default, deserialize_with = "socket_addrs")]
    pub implicit_tls_listen: Vec<SocketAddr>,
    #[serde(deserialize_with = "lenient_usize")]
    pub max_recipients: usize,
    #[serde(deserialize_with = "lenient_usize")]
    pub max_connections: usize,
    #[serde(deserialize_with = "lenient_u64")]
    pub idle_timeout_secs: u64,
    #[serde(deserialize_with = "lenient_u64")]
    pub command_timeout_secs: u64,
    #[serde(deserialize_with = "lenient_u64")]
    pub data_timeout_secs: u64,
    #[serde(deserialize_with = "lenient_u64")]
    pub data_memory_bytes: u64,
}

/// An SMTP AUTH user (`smtp.users.NAME`): a plain password, or a table with `password` or
/// `password_hash` (argon2 PHC string, from `graph-relay passwd`) and an optional `mailbox`, the
/// one address this user may send as (MAIL FROM and the From header).
#[derive(Clone, PartialEq)]
pub enum SmtpUser {
    /// `NAME = "password"`.
    Password(String),
    /// `NAME = { password_hash = "$argon2id$...", mailbox = "..." }`.
    Hashed {
        password_hash: String,
        mailbox: Option<String>,
    },
    /// `NAME = { password = "...", mailbox = "..." }`.
    Plain {
        password: String,
        mailbox: Option<String>,
    },
}

impl SmtpUser {
    /// The address this user may send as, when restricted.
    pub fn mailbox(&self) -> Option<&str> {
        match self {
            SmtpUser::Password(_) => None,
            SmtpUser::Hashed { mailbox, .. } | SmtpUser::Plain { mailbox, .. } => {
                mailbox.as_deref()
            }
        }
    }
}

impl fmt::Debug for SmtpUser {
    // By hand: passwords must never reach a log (hashes are harmless but noisy).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            SmtpUser::Password(_) | SmtpUser::Plain { .. } => "password",
            SmtpUser::Hashed { .. } => "password_hash",
        };
        f.debug_struct("SmtpUser")
            .field("secret", &kind)
            .field("mailbox", &self.mailbox())
            .finish()
    }
}

impl<'de> Deserialize<'de> for SmtpUser {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SmtpUserVisitor)
    }
}

struct SmtpUserVisitor;

impl<'de> de::Visitor<'de> for SmtpUserVisitor {
    type Value = SmtpUser;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a password string, or a table with password or password_hash and optionally mailbox",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SmtpUser, E> {
        Ok(SmtpUser::Password(v.to_string()))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<SmtpUser, A::Error> {
        let (mut password, mut password_hash, mut mailbox) = (None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "password" => &mut password,
                "password_hash" => &mut password_hash,
                "mailbox" => &mut mailbox,
                other => {
                    return Err(de::Error::custom(format!(
                        "unknown key `{other}`, expected password, password_hash or mailbox"
                    )));
                }
            };
            *slot = Some(map.next_value::<String>()?);
        }
        match (password, password_hash) {
            (Some(password), None) => Ok(SmtpUser::Plain { password, mailbox }),
            (None, Some(password_hash)) => Ok(SmtpUser::Hashed {
                password_hash,
                mailbox,
            }),
            (Some(_), Some(_)) => Err(de::Error::custom("set password or password_hash, not both")),
            (None, None) => Err(de::Error::custom(
                "needs password or password_hash (make one with `graph-relay passwd`)",
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    ClientCredentials,
    Delegated,
}

/// How the certificate client assertion is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlg {
    /// RSASSA-PSS with the SHA-256 thumbprint header `x5t#S256` (Microsoft's current format).
    Ps256,
    /// PKCS#1 v1.5 with the SHA-1 thumbprint header `x5t` (the older format).
    Rs256,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicrosoftConfig {
    pub authority: String,
    pub graph_url: String,
    pub scope: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(deserialize_with = "flow")]
    pub flow: Flow,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(deserialize_with = "assertion_alg")]
    pub assertion_alg: AssertionAlg,
    #[serde(default)]
    pub sender: Option<String>,
    #[serde(deserialize_with = "string_list")]
    pub allowed_senders: Vec<String>,
    #[serde(deserialize_with = "lenient_bool")]
    pub save_to_sent_items: bool,
    pub token_cache: String,
    /// Proxy for every outbound HTTPS request; wins over `HTTPS_PROXY`. A `Secret`: its URL may
    /// carry the proxy's user and password.
    #[serde(default)]
    pub proxy: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub dir: PathBuf,
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_min: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// `None` when the status listener is disabled (empty string).
    #[serde(deserialize_with = "optional_socket_addr")]
    pub listen: Option<SocketAddr>,
    /// Extra names (or IP addresses) the listener answers to in `Host`, beyond its own IP
    /// address and `localhost`: anything else is refused, which stops DNS rebinding.
    #[serde(deserialize_with = "string_list")]
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default, deserialize_with = "optional_argv")]
    pub command: Option<Vec<String>>,
}

/// A secret string that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An `http://` or `https://` proxy URL with a host. The message never repeats the URL: it may
/// hold the proxy password.
fn check_proxy_url(proxy: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(proxy).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not supported: use http://host:port (or https://)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(())
}

/// One bad key: its full dotted path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse configuration: {0}")]
    Syntax(String),
    #[error("invalid configuration:\n{}", list_errors(.0))]
    Invalid(Vec<KeyError>),
}

fn list_errors(errors: &[KeyError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the config file comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `--config` given: the file must exist.
    Explicit(PathBuf),
    /// No `--config`: `./relay.toml` if it exists, else the built-in defaults alone.
    Default,
}

impl Config {
    /// Loads defaults, the file and the process environment.
    pub fn load(source: &Source) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(source, &env)
    }

    /// Loads defaults, the file and the given environment (tests pass their own).
    pub fn load_with_env(source: &Source, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let file_text = match source {
            Source::Explicit(path) => Some(read_file(path)?),
            Source::Default => {
                let path = Path::new("relay.toml");
                if path.exists() {
                    Some(read_file(path)?)
                } else {
                    None
                }
            }
        };
        Self::from_layers(file_text.as_deref(), env)
    }

    /// Merges the layers and deserializes, collecting every bad key.
    pub fn from_layers(
        file_text: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(text) = file_text {
            builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
        }
        let env_map: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .cloned()
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(false)
                .source(Some(env_map)),
        );
        let merged = builder
            .build()
            .map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let tree: config::Value = merged
            .try_deserialize()
            .map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let config = deserialize_collecting(tree)?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Cross-key rules that types alone cannot express.
    pub fn validate(&self) -> Vec<KeyError> {
        let mut errors = Vec::new();
        let mut bad = |path: &str, message: String| {
            errors.push(KeyError {
                path: path.to_string(),
                message,
            })
        };
        let smtp = &self.smtp;
        if smtp.listen.is_empty() {
            bad("smtp.listen", "at least one address is needed".into());
        }
        if smtp.max_message_bytes == 0 {
            bad("smtp.max_message_bytes", "must be greater than 0".into());
        }
        if smtp.max_recipients == 0 {
            bad("smtp.max_recipients", "must be greater than 0".into());
        }
        if smtp.max_connections == 0 {
            bad("smtp.max_connections", "must be greater than 0".into());
        }
        if smtp.data_memory_bytes < smtp.max_message_bytes {
            bad(
                "smtp.data_memory_bytes",
                "must be at least smtp.max_message_bytes, or no message of the largest size could ever be received".into(),
            );
        }
        for (key, secs) in [
            ("smtp.idle_timeout_secs", smtp.idle_timeout_secs),
            ("smtp.command_timeout_secs", smtp.command_timeout_secs),
            ("smtp.data_timeout_secs", smtp.data_timeout_secs),
        ] {
            if secs == 0 {
                bad(key, "must be greater than 0".into());
            }
        }
        if smtp.tls_cert.is_some() != smtp.tls_key.is_some() {
            bad(
                "smtp.tls_cert",
                "tls_cert and tls_key must be set together".into(),
            );
        }
        if !smtp.implicit_tls_listen.is_empty() && smtp.tls_cert.is_none() {
            bad(
                "smtp.implicit_tls_listen",
                "needs smtp.tls_cert and smtp.tls_key".into(),
            );
        }
        for (name, user) in &smtp.users {
            let path = format!("smtp.users.{name}");
            match user {
                SmtpUser::Password(p) | SmtpUser::Plain { password: p, .. } if p.is_empty() => bad(
                    &path,
                    "needs a non-empty password or an argon2 password_hash".into(),
                ),
                SmtpUser::Hashed { password_hash, .. } => {
                    if let Err(why) = check_password_hash(password_hash) {
                        bad(&format!("{path}.password_hash"), why);
                    }
                }
                _ => {}
            }
            if name.is_empty() || name.contains(char::is_whitespace) {
                bad(
                    &path,
                    "a user name must be non-empty, without spaces".into(),
                );
            }
            if let Some(mailbox) = user.mailbox()
                && !is_plain_address(mailbox)
            {
                bad(
                    &format!("{path}.mailbox"),
                    format!("{mailbox:?} is not a mailbox address (name@domain)"),
                );
            }
        }

        let ms = &self.microsoft;
        for (key, url) in [
            ("microsoft.authority", &ms.authority),
            ("microsoft.graph_url", &ms.graph_url),
        ] {
            if let Err(e) = reqwest::Url::parse(url) {
                bad(key, format!("not a URL ({e})"));
            }
        }
        if let Some(proxy) = self.proxy()
            && let Err(why) = check_proxy_url(proxy)
        {
            bad("microsoft.proxy", why);
        }
        let secrets = [
            ms.client_secret.is_some(),
            ms.client_secret_file.is_some(),
            ms.client_certificate.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if secrets > 1 {
            bad(
                "microsoft.client_secret",
                "set only one of client_secret, client_secret_file, client_certificate".into(),
            );
        }
        if ms.client_certificate.is_some() != ms.client_key.is_some() {
            bad(
                "microsoft.client_certificate",
                "client_certificate and client_key must be set together".into(),
            );
        }
        for pattern in &ms.allowed_senders {
            if !pattern.contains('@') {
                bad(
                    "microsoft.allowed_senders",
                    format!("{pattern:?} is neither an address nor *@domain"),
                );
            }
        }
        if let Some(sender) = &ms.sender
            && !sender.contains('@')
        {
            bad(
                "microsoft.sender",
                format!("{sender:?} is not a mailbox address"),
            );
        }

        let q = &self.queue;
        if q.retry_min.is_zero() {
            bad("queue.retry_min", "must be greater than 0".into());
        }
        if q.retry_max < q.retry_min {
            bad(
                "queue.retry_max",
                "must not be smaller than queue.retry_min".into(),
            );
        }
        for host in &self.status.allowed_hosts {
            if !is_host_name(host) {
                bad(
                    "status.allowed_hosts",
                    format!("{host:?} is not a host name or IP address (no scheme, port or path)"),
                );
            }
        }
        if let Some(url) = &self.notify.webhook_url
            && reqwest::Url::parse(url).is_err()
        {
            bad("notify.webhook_url", format!("{url:?} is not a URL"));
        }
        errors
    }

    /// `microsoft.proxy`, unless unset or empty (an empty environment override unsets it).
    pub fn proxy(&self) -> Option<&str> {
        let proxy = self.microsoft.proxy.as_ref()?.expose().trim();
        (!proxy.is_empty()).then_some(proxy)
    }

    /// Token endpoint: `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> Option<String> {
        let tenant = self.microsoft.tenant.as_deref()?;
        Some(format!(
            "{}/{}/oauth2/v2.0/token",
            self.microsoft.authority.trim_end_matches('/'),
            tenant
        ))
    }

    /// Device authorization endpoint: `{authority}/{tenant}/oauth2/v2.0/devicecode`.
    pub fn device_code_url(&self) -> Option<String> {
        let tenant = self.microsoft.tenant.as_deref()?;
        Some(format!(
            "{}/{}/oauth2/v2.0/devicecode",
            self.microsoft.authority.trim_end_matches('/'),
            tenant
        ))
    }

    /// `microsoft.scope`, or the origin of `graph_url` + `/.default`.
    pub fn scope(&self) -> String {
        if !self.microsoft.scope.is_empty() {
            return self.microsoft.scope.clone();
        }
        match reqwest::Url::parse(&self.microsoft.graph_url) {
            Ok(url) => format!("{}/.default", url.origin().ascii_serialization()),
            Err(_) => "https://graph.microsoft.com/.default".to_string(),
        }
    }

    /// `microsoft.token_cache`, or `<queue.dir>/token.json`.
    pub fn token_cache_path(&self) -> PathBuf {
        if self.microsoft.token_cache.is_empty() {
            self.queue.dir.join("token.json")
        } else {
            PathBuf::from(&self.microsoft.token_cache)
        }
    }

    /// `smtp.hostname`, or the system hostname.
    pub fn hostname(&self) -> String {
        if !self.smtp.hostname.is_empty() {
            return self.smtp.hostname.clone();
        }
        system_hostname().unwrap_or_else(|| "localhost".to_string())
    }

    /// True when the relay has what it needs to ask for tokens at all.
    pub fn has_credentials(&self) -> bool {
        let ms = &self.microsoft;
        let app_credential = ms.client_secret.is_some()
            || ms.client_secret_file.is_some()
            || ms.client_certificate.is_some();
        ms.tenant.is_some()
            && ms.client_id.is_some()
            && (ms.flow == Flow::Delegated || app_credential)
    }
}

/// An argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) the relay can verify.
fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = argon2::PasswordHash::new(hash).map_err(|e| {
        format!("not an argon2 PHC string ({e}); make one with `graph-relay passwd`")
    })?;
    let algorithm = parsed.algorithm.as_str();
    if !matches!(algorithm, "argon2id" | "argon2i" | "argon2d") {
        return Err(format!(
            "algorithm {algorithm:?} is not argon2; make one with `graph-relay passwd`"
        ));
    }
    argon2::Params::try_from(&parsed)
        .map(|_| ())
        .map_err(|e| format!("argon2 parameters not usable ({e})"))
}

/// `name@domain`, one address, no display name or spaces.
fn is_plain_address(address: &str) -> bool {
    match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !address
                    .chars()
                    .any(|c| c.is_whitespace() || "<>,;\"".contains(c))
        }
        None => false,
    }
}

/// A bare host name or IP address as `Host` would carry it, without a port: what
/// `status.allowed_hosts` lists.
pub fn is_host_name(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length and gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Deserializes the merged tree; on each failure records the key, drops it (so its default
/// applies) and tries again, so one run reports every bad key.
fn deserialize_collecting(mut tree: config::Value) -> Result<Config, ConfigError> {
    let defaults: config::Value = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Syntax(format!("built-in defaults: {e}")))?;
    let mut errors = Vec::new();
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(repaired) => {
                // The rest of the file is still worth checking: report its cross-key problems too.
                errors.extend(repaired.validate());
                return Err(ConfigError::Invalid(errors));
            }
            Err(err) => {
                let path = err.path().to_string();
                let message = clean_message(&err.inner().to_string());
                let (path, removed) = reset_key(&mut tree, &defaults, &path, &message);
                errors.push(KeyError { path, message });
                if !removed {
                    return Err(ConfigError::Invalid(errors));
                }
            }
        }
    }
    Err(ConfigError::Invalid(errors))
}

/// config's errors repeat the key ("for key `x`"); the path already says it.
fn clean_message(message: &str) -> String {
    match message.find(" for key `") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// Puts the default back at `path` (or removes an unknown key). Returns the path as reported to
/// the user and whether the tree changed.
fn reset_key(
    tree: &mut config::Value,
    defaults: &config::Value,
    path: &str,
    message: &str,
) -> (String, bool) {
    let mut segments: Vec<String> = path
        .split('.')
        .filter(|s| !s.is_empty() && *s != "?")
        .map(String::from)
        .collect();
    // serde reports an unknown field at its parent; the name is in the message.
    if let Some(name) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
        && segments.last().map(String::as_str) != Some(name)
    {
        segments.push(name.to_string());
    }
    let shown = segments.join(".");
    let default = lookup(defaults, &segments).cloned();
    let changed = match table_at(tree, &segments[..segments.len().saturating_sub(1)]) {
        Some(table) => {
            let key = segments.last().cloned().unwrap_or_default();
            match default {
                Some(value) => table.insert(key, value).is_some(),
                None => table.remove(&key).is_some(),
            }
        }
        None => false,
    };
    (shown, changed)
}

fn lookup<'a>(value: &'a config::Value, segments: &[String]) -> Option<&'a config::Value> {
    let mut current = value;
    for segment in segments {
        match &current.kind {
            config::ValueKind::Table(map) => current = map.get(segment)?,
            _ => return None,
        }
    }
    Some(current)
}

fn table_at<'a>(
    value: &'a mut config::Value,
    segments: &[String],
) -> Option<&'a mut config::Map<String, config::Value>> {
    let mut current = value;
    for segment in segments {
        match &mut current.kind {
            config::ValueKind::Table(map) => current = map.get_mut(segment)?,
            _ => return None,
        }
    }
    match &mut current.kind {
        config::ValueKind::Table(map) => Some(map),
        _ => None,
    }
}

// ---- leaf deserializers -------------------------------------------------------------------
// Environment values arrive as strings (try_parsing is off so a secret "00123" stays a string),
// so numbers, booleans and lists also accept their string spelling.

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_items(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            StringOrList::Many(v) => v,
        }
    }
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(StringOrList::deserialize(d)?.into_items())
}

fn socket_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    string_list(d)?
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|_| de::Error::custom(format!("{s:?} is not an IP:port address")))
        })
        .collect()
}

fn optional_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim().parse().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "{s:?} is not an IP:port address (or \"\" to disable)"
        ))
    })
}

fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    string_list(d)?
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    de::Error::custom(format!(
                        "{s:?} is not a network in CIDR form (e.g. 10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

fn optional_argv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let argv = match StringOrList::deserialize(d)? {
        StringOrList::One(s) => vec![s],
        StringOrList::Many(v) => v,
    };
    Ok((!argv.is_empty() && !argv[0].is_empty()).then_some(argv))
}

fn flow<'de, D: Deserializer<'de>>(d: D) -> Result<Flow, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "client_credentials" => Ok(Flow::ClientCredentials),
        "delegated" => Ok(Flow::Delegated),
        other => Err(de::Error::custom(format!(
            "expected one of \"client_credentials\", \"delegated\", found {other:?}"
        ))),
    }
}

fn assertion_alg<'de, D: Deserializer<'de>>(d: D) -> Result<AssertionAlg, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim().to_ascii_uppercase().as_str() {
        "PS256" => Ok(AssertionAlg::Ps256),
        "RS256" => Ok(AssertionAlg::Rs256),
        _ => Err(de::Error::custom(format!(
            "expected one of \"PS256\", \"RS256\", found {s:?}"
        ))),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|_| {
        de::Error::custom(format!(
            "{s:?} is not a duration (e.g. \"30s\", \"5m\", \"1h\", \"5d\")"
        ))
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Value(T),
    Text(String),
}

fn lenient<'de, D, T>(d: D, what: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    match Lenient::<T>::deserialize(d).map_err(|_| de::Error::custom(format!("expected {what}")))? {
        Lenient::Value(v) => Ok(v),
        Lenient::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("expected {what}, found {s:?}"))),
    }
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    lenient(d, "a whole number")
}

fn lenient_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    lenient(d, "a whole number")
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    lenient(d, "true or false")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_layers(file, &env)
    }

    fn bad_paths(err: ConfigError) -> Vec<String> {
        match err {
            ConfigError::Invalid(errors) => errors.into_iter().map(|e| e.path).collect(),
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn built_in_defaults_match_the_contract() {
        let c = load(None, &[]).expect("defaults load");
        assert_eq!(
            c.smtp.listen,
            vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.smtp.max_message_bytes, 36_700_160);
        assert_eq!(c.smtp.max_recipients, 1000);
        assert_eq!(c.smtp.max_connections, 200);
        assert!(!c.smtp.require_auth);
        assert_eq!(c.microsoft.flow, Flow::ClientCredentials);
        assert_eq!(c.queue.retry_min, Duration::from_secs(30));
        assert_eq!(c.queue.retry_max, Duration::from_secs(3600));
        assert_eq!(c.queue.max_age, Duration::from_secs(5 * 86400));
        assert_eq!(c.status.listen, Some("127.0.0.1:8025".parse().unwrap()));
        assert_eq!(c.scope(), "https://graph.microsoft.com/.default");
        assert_eq!(c.token_cache_path(), PathBuf::from("./spool/token.json"));
        assert!(!c.has_credentials());
    }

    #[test]
    fn env_overrides_file_and_keeps_secret_strings() {
        let file = "[microsoft]\ntenant = \"t1\"\nclient_id = \"c1\"\n";
        let c = load(
            Some(file),
            &[
                (
                    "GRAPH_RELAY__SMTP__LISTEN",
                    "127.0.0.1:2626, 127.0.0.2:2627",
                ),
                ("GRAPH_RELAY__MICROSOFT__CLIENT_SECRET", "00123"),
                ("GRAPH_RELAY__SMTP__MAX_RECIPIENTS", "7"),
                ("GRAPH_RELAY__SMTP__REQUIRE_AUTH", "true"),
                ("OTHER__SMTP__LISTEN", "nonsense"),
            ],
        )
        .expect("loads");
        assert_eq!(c.smtp.listen.len(), 2);
        assert_eq!(
            c.microsoft.client_secret.as_ref().map(Secret::expose),
            Some("00123")
        );
        assert_eq!(c.smtp.max_recipients, 7);
        assert!(c.smtp.require_auth);
        assert_eq!(
            c.token_url().as_deref(),
            Some("https://login.microsoftonline.com/t1/oauth2/v2.0/token")
        );
        assert!(c.has_credentials());
    }

    #[test]
    fn every_bad_key_is_reported_with_its_path() {
        let file = r#"
[smtp]
listen = "nowhere"
max_message_bytes = "lots"
bogus = 1
[microsoft]
flow = "magic"
[queue]
retry_min = "soon"
"#;
        let paths = bad_paths(load(Some(file), &[]).unwrap_err());
        for expected in [
            "smtp.listen",
            "smtp.max_message_bytes",
            "smtp.bogus",
            "microsoft.flow",
            "queue.retry_min",
        ] {
            assert!(
                paths.contains(&expected.to_string()),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn flow_error_names_the_choices() {
        let err = load(Some("[microsoft]\nflow = \"magic\"\n"), &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("microsoft.flow: "), "{text}");
        assert!(text.contains("client_credentials"), "{text}");
    }

    #[test]
    fn cross_key_rules() {
        let file =
            "[smtp]\ntls_cert = \"a.pem\"\ndata_memory_bytes = 1000\n[queue]\nretry_min = \"2h\"\n";
        let paths = bad_paths(load(Some(file), &[]).unwrap_err());
        assert!(paths.contains(&"smtp.tls_cert".to_string()));
        assert!(paths.contains(&"smtp.data_memory_bytes".to_string()));
        assert!(paths.contains(&"queue.retry_max".to_string()));
    }

    #[test]
    fn status_allowed_hosts_are_bare_names_or_addresses() {
        let good =
            "[status]\nallowed_hosts = [\"relay.lan\", \"203.0.113.7\", \"[::1]\", \"fe80::1\"]\n";
        assert_eq!(load(Some(good), &[]).unwrap().status.allowed_hosts.len(), 4);
        let env = load(
            None,
            &[("GRAPH_RELAY__STATUS__ALLOWED_HOSTS", "a.lan, b.lan")],
        )
        .unwrap();
        assert_eq!(env.status.allowed_hosts, ["a.lan", "b.lan"]);
        for bad in ["relay.lan:8025", "http://relay.lan", "relay.lan/x", "", "*"] {
            let file = format!("[status]\nallowed_hosts = [{bad:?}]\n");
            let paths = bad_paths(load(Some(&file), &[]).unwrap_err());
            assert_eq!(paths, ["status.allowed_hosts"], "{bad:?}");
        }
    }

    #[test]
    fn empty_status_listen_disables_it_and_scope_follows_graph_url() {
        let file =
            "[status]\nlisten = \"\"\n[microsoft]\ngraph_url = \"http://127.0.0.1:9/v1.0\"\n";
        let c = load(Some(file), &[]).unwrap();
        assert_eq!(c.status.listen, None);
        assert_eq!(c.scope(), "http://127.0.0.1:9/.default");
    }

    #[test]
    fn proxy_must_be_an_http_url_and_errors_never_show_it() {
        let ok = load(
            Some("[microsoft]\nproxy = \"http://u:pw@proxy.corp:3128\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(ok.proxy(), Some("http://u:pw@proxy.corp:3128"));
        assert!(
            !format!("{ok:?}").contains("pw@"),
            "Debug shows the proxy password"
        );
        let unset = load(None, &[("GRAPH_RELAY__MICROSOFT__PROXY", "")]).unwrap();
        assert_eq!(unset.proxy(), None);
        for bad in [
            "proxy.corp:3128",
            "socks5://u:pw@proxy.corp:1080",
            "http://",
        ] {
            let errors = match load(Some(&format!("[microsoft]\nproxy = \"{bad}\"\n")), &[]) {
                Err(ConfigError::Invalid(errors)) => errors,
                other => panic!("{bad}: {other:?}"),
            };
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].path, "microsoft.proxy");
            assert!(!errors[0].message.contains("pw"), "{errors:?}");
        }
    }

    /// A valid argon2id hash (of "s3cret", cheap parameters) for the `smtp.users` tests.
    const HASH: &str = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$9Vq1pMu4b1iP1hbqQeqBFw";

    #[test]
    fn smtp_users_in_every_form() {
        let file = format!(
            r#"
[smtp.users]
plain = "pw"
hashed = {{ password_hash = "{HASH}" }}
mapped = {{ password = "pw2", mailbox = "wp@contoso.com" }}
"mapped.hash" = {{ password_hash = "{HASH}", mailbox = "Ann@Contoso.com" }}
WordPress = "pw3"
"#
        );
        let c = load(Some(&file), &[("GRAPH_RELAY__SMTP__USERS__ENV", "pw4")]).expect("loads");
        let users = &c.smtp.users;
        assert_eq!(users["plain"], SmtpUser::Password("pw".into()));
        assert!(
            matches!(&users["hashed"], SmtpUser::Hashed { password_hash, mailbox: None } if password_hash == HASH)
        );
        assert_eq!(
            users["mapped"],
            SmtpUser::Plain {
                password: "pw2".into(),
                mailbox: Some("wp@contoso.com".into())
            }
        );
        assert_eq!(users["mapped.hash"].mailbox(), Some("Ann@Contoso.com"));
        assert_eq!(users["env"], SmtpUser::Password("pw4".into()));
        // Keys keep their case from the file (AUTH compares user names exactly).
        assert!(users.contains_key("WordPress"), "{:?}", users.keys());
        assert!(!format!("{c:?}").contains("pw2"));
    }

    #[test]
    fn bad_smtp_users_are_listed_with_their_paths() {
        // Shape errors (found while deserializing) ...
        let shapes = r#"
[smtp.users]
both = { password = "a", password_hash = "b" }
neither = { mailbox = "a@b.c" }
typo = { pasword = "x" }
"#;
        // ... and value errors (found by validate(), which runs once the shapes are right).
        let values = r#"
[smtp.users]
empty = ""
nothash = { password_hash = "$2y$10$abcdefghijklmnopqrstuv" }
garbage = { password_hash = "$argon2id$nonsense" }
badbox = { password = "x", mailbox = "Ann <ann@contoso.com>" }
"#;
        for (file, expected) in [
            (
                shapes,
                &["smtp.users.both", "smtp.users.neither", "smtp.users.typo"][..],
            ),
            (
                values,
                &[
                    "smtp.users.empty",
                    "smtp.users.nothash.password_hash",
                    "smtp.users.garbage.password_hash",
                    "smtp.users.badbox.mailbox",
                ][..],
            ),
        ] {
            let err = load(Some(file), &[]).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("graph-relay passwd"), "{text}");
            let paths = bad_paths(err);
            for expected in expected {
                assert!(
                    paths.contains(&expected.to_string()),
                    "{expected} missing from {paths:?}\n{text}"
                );
            }
        }
        let text = load(Some(shapes), &[]).unwrap_err().to_string();
        assert!(text.contains("unknown key `pasword`"), "{text}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = load(
            None,
            &[("GRAPH_RELAY__MICROSOFT__CLIENT_SECRET", "hunter2")],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
