//! The typed sections of the configuration and how each key's value is read (serde helpers that
//! also accept the string spellings environment variables arrive in). Shapes and spellings only:
//! rules across keys live in `validate`, layering in `load`. Error texts here are shown by
//! `check` and `serve` as they are, so they are part of the command-line contract. Never reads
//! files, the environment or the network.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer};

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
    #[serde(deserialize_with = "list")]
    pub listen: Vec<SocketAddr>,
    pub hostname: String,
    #[serde(deserialize_with = "lenient")]
    pub max_message_bytes: u64,
    #[serde(deserialize_with = "list")]
    pub allowed_networks: Vec<IpNet>,
    #[serde(deserialize_with = "lenient")]
    pub require_auth: bool,
    #[serde(default)]
    pub users: BTreeMap<String, SmtpUser>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    #[serde(default, deserialize_with = "list")]
    pub implicit_tls_listen: Vec<SocketAddr>,
    #[serde(deserialize_with = "lenient")]
    pub max_recipients: usize,
    #[serde(deserialize_with = "lenient")]
    pub max_connections: usize,
    #[serde(deserialize_with = "lenient")]
    pub idle_timeout_secs: u64,
    #[serde(deserialize_with = "lenient")]
    pub command_timeout_secs: u64,
    #[serde(deserialize_with = "lenient")]
    pub data_timeout_secs: u64,
    #[serde(deserialize_with = "lenient")]
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
    #[serde(deserialize_with = "parsed")]
    pub flow: Flow,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(deserialize_with = "parsed")]
    pub assertion_alg: AssertionAlg,
    #[serde(default)]
    pub sender: Option<String>,
    #[serde(deserialize_with = "list")]
    pub allowed_senders: Vec<String>,
    #[serde(deserialize_with = "lenient")]
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
    #[serde(deserialize_with = "parsed")]
    pub max_age: Duration,
    #[serde(deserialize_with = "parsed")]
    pub retry_min: Duration,
    #[serde(deserialize_with = "parsed")]
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// `None` when the status listener is disabled (empty string).
    #[serde(deserialize_with = "parsed")]
    pub listen: Option<SocketAddr>,
    /// Extra names (or IP addresses) the listener answers to in `Host`, beyond its own IP
    /// address and `localhost`: anything else is refused, which stops DNS rebinding.
    #[serde(deserialize_with = "list")]
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

// ---- how values are read ------------------------------------------------------------------
// Environment values arrive as strings (try_parsing is off so a secret "00123" stays a string),
// so numbers, booleans and lists also accept their string spelling. Each helper's messages are
// the ones `check` prints; type names (`StringOrList`) show in some of them, so keep the names.

/// A value written as one string, with the message for a bad spelling. Each type trims (or not)
/// as it always has: a list item written in a TOML array is taken as it stands.
trait FromConfigStr: Sized {
    fn from_config_str(s: &str) -> Result<Self, String>;
}

impl FromConfigStr for String {
    fn from_config_str(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
}

impl FromConfigStr for SocketAddr {
    fn from_config_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|_| format!("{s:?} is not an IP:port address"))
    }
}

/// `status.listen`: an empty string disables the listener.
impl FromConfigStr for Option<SocketAddr> {
    fn from_config_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        s.trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{s:?} is not an IP:port address (or \"\" to disable)"))
    }
}

/// A network in CIDR form, or a bare address meaning just that host.
impl FromConfigStr for IpNet {
    fn from_config_str(s: &str) -> Result<Self, String> {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{s:?} is not a network in CIDR form (e.g. 10.0.0.0/8)"))
    }
}

impl FromConfigStr for Duration {
    fn from_config_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map_err(|_| format!("{s:?} is not a duration (e.g. \"30s\", \"5m\", \"1h\", \"5d\")"))
    }
}

impl FromConfigStr for Flow {
    fn from_config_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "client_credentials" => Ok(Flow::ClientCredentials),
            "delegated" => Ok(Flow::Delegated),
            other => Err(format!(
                "expected one of \"client_credentials\", \"delegated\", found {other:?}"
            )),
        }
    }
}

impl FromConfigStr for AssertionAlg {
    fn from_config_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PS256" => Ok(AssertionAlg::Ps256),
            "RS256" => Ok(AssertionAlg::Rs256),
            _ => Err(format!("expected one of \"PS256\", \"RS256\", found {s:?}")),
        }
    }
}

/// One value from its string spelling.
fn parsed<'de, D: Deserializer<'de>, T: FromConfigStr>(d: D) -> Result<T, D::Error> {
    T::from_config_str(&String::deserialize(d)?).map_err(de::Error::custom)
}

/// A list written as a TOML array or as one comma-separated string (how env gives lists).
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

/// A list of values, each from its string spelling.
fn list<'de, D: Deserializer<'de>, T: FromConfigStr>(d: D) -> Result<Vec<T>, D::Error> {
    StringOrList::deserialize(d)?
        .into_items()
        .iter()
        .map(|s| T::from_config_str(s).map_err(de::Error::custom))
        .collect()
}

/// `notify.command`: a path, or an argv array. A string is never split (paths may hold commas);
/// empty means none.
fn optional_argv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let argv = match StringOrList::deserialize(d)? {
        StringOrList::One(s) => vec![s],
        StringOrList::Many(v) => v,
    };
    Ok((!argv.is_empty() && !argv[0].is_empty()).then_some(argv))
}

/// Numbers and booleans, which may also come as text; `EXPECTED` names the kind in messages.
trait Lenient: std::str::FromStr {
    const EXPECTED: &'static str;
}

impl Lenient for u64 {
    const EXPECTED: &'static str = "a whole number";
}

impl Lenient for usize {
    const EXPECTED: &'static str = "a whole number";
}

impl Lenient for bool {
    const EXPECTED: &'static str = "true or false";
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ValueOrText<T> {
    Value(T),
    Text(String),
}

fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Lenient + Deserialize<'de>,
{
    let what = T::EXPECTED;
    match ValueOrText::<T>::deserialize(d)
        .map_err(|_| de::Error::custom(format!("expected {what}")))?
    {
        ValueOrText::Value(v) => Ok(v),
        ValueOrText::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("expected {what}, found {s:?}"))),
    }
}
