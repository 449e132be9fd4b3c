//! Where the configuration comes from and how its layers combine: the built-in defaults (the
//! repo's `relay.toml`, compiled in), then the file, then `GRAPH_RELAY__SECTION__KEY` environment
//! variables (lists comma-separated). Every key the file or environment sets is read on its own
//! against the defaults, so one run reports every bad key with its full path, and a bad key falls
//! back to its default while the rest are still checked across keys (`validate`). Never touches
//! the network or the spool.

use std::path::{Path, PathBuf};

use config::{Map, Value, ValueKind};
use serde::Deserialize;

use super::{Config, KeyError};

/// The repo's `relay.toml`: the defaults every key falls back to.
pub const DEFAULTS_TOML: &str = include_str!("../../relay.toml");

/// Environment variable prefix; `__` separates the section from the key.
pub const ENV_PREFIX: &str = "GRAPH_RELAY";

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
        let defaults = tree(config::Config::builder().add_source(toml(DEFAULTS_TOML)))
            .map_err(|e| ConfigError::Syntax(format!("built-in defaults: {e}")))?;
        let given = given_tree(file_text, env)?;
        let (accepted, mut errors) = read_each_key(&defaults, &given);
        // Keys that are each fine alone are fine together (no field's reading depends on
        // another's), so this only fails if that stops being true: then say where.
        let config = match serde_path_to_error::deserialize::<_, Config>(accepted) {
            Ok(config) => config,
            Err(e) => {
                errors.push(key_error(e.path().to_string(), e.inner()));
                return Err(ConfigError::Invalid(errors));
            }
        };
        errors.extend(config.validate());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

impl Default for Config {
    /// The built-in defaults alone (what `relay.toml` in the repo says).
    fn default() -> Self {
        Config::from_layers(None, &[])
            .expect("the built-in relay.toml is a valid configuration (a unit test checks it)")
    }
}

fn toml(text: &str) -> config::File<config::FileSourceString, config::FileFormat> {
    config::File::from_str(text, config::FileFormat::Toml)
}

/// The layers of `builder` merged into one untyped tree.
fn tree(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
) -> Result<Value, config::ConfigError> {
    builder.build()?.try_deserialize()
}

/// What the file and the environment set, without the defaults.
fn given_tree(file_text: Option<&str>, env: &[(String, String)]) -> Result<Value, ConfigError> {
    let mut given = config::Config::builder();
    if let Some(text) = file_text {
        given = given.add_source(toml(text));
    }
    let env_map: Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .cloned()
        .collect();
    given = given.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(false)
            .source(Some(env_map)),
    );
    tree(given).map_err(|e| ConfigError::Syntax(e.to_string()))
}

/// Reads each key `given` sets on its own, against the defaults: a bad one is reported with its
/// path and left out (its default stands), so every bad key is found in one pass. Returns the
/// defaults with the good keys put in.
fn read_each_key(defaults: &Value, given: &Value) -> (Value, Vec<KeyError>) {
    let mut accepted = defaults.clone();
    let mut errors = Vec::new();
    let mut keys = Vec::new();
    set_keys(given, Some(defaults), &mut Vec::new(), &mut keys);
    for (path, value) in keys {
        let mut alone = defaults.clone();
        set(&mut alone, &path, value.clone());
        match Config::deserialize(alone) {
            Ok(_) => set(&mut accepted, &path, value),
            Err(e) => errors.push(key_error(path.join("."), &e)),
        }
    }
    (accepted, errors)
}

/// config's errors repeat the key ("for key `x`"); the path already says it.
fn key_error(path: String, error: &config::ConfigError) -> KeyError {
    let message = error.to_string();
    let message = match message.find(" for key `") {
        Some(at) => message[..at].to_string(),
        None => message,
    };
    KeyError { path, message }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The keys `given` sets, each with its value, in name order. A table goes down to its entries
/// where the defaults have a table there too (a section, `smtp.users`); anything else (a value,
/// an unknown section, a user's table) is one key, read as a whole.
fn set_keys(
    given: &Value,
    defaults: Option<&Value>,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Value)>,
) {
    match (&given.kind, defaults.map(|d| &d.kind)) {
        (ValueKind::Table(entries), Some(ValueKind::Table(default_entries))) => {
            let mut names: Vec<&String> = entries.keys().collect();
            names.sort();
            for name in names {
                path.push(name.clone());
                set_keys(&entries[name], default_entries.get(name), path, out);
                path.pop();
            }
        }
        _ => out.push((path.clone(), given.clone())),
    }
}

/// Puts `value` at `path`, making the tables on the way (as the layers' own merge does).
fn set(tree: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *tree = value;
        return;
    };
    let mut node = tree;
    for name in parents {
        node = table(node)
            .entry(name.clone())
            .or_insert_with(|| Map::<String, Value>::new().into());
    }
    table(node).insert(last.clone(), value);
}

/// The table at `node`, which becomes an empty one if it was anything else.
fn table(node: &mut Value) -> &mut Map<String, Value> {
    if !matches!(node.kind, ValueKind::Table(_)) {
        *node = Map::<String, Value>::new().into();
    }
    match &mut node.kind {
        ValueKind::Table(map) => map,
        _ => unreachable!("made a table just above"),
    }
}
