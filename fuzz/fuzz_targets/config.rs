//! Fuzz target: configuration text. Whatever `relay.toml` holds, loading it ends in a config or
//! a `ConfigError` that names the problem, never a panic; a config that loads also validates
//! clean and yields SMTP settings.
//!
//! Input: the TOML text (lossy UTF-8), optionally followed by `\0` and `KEY=VALUE` lines for
//! the `GRAPH_RELAY__...` environment layer.

#![no_main]

use graph_relay::config::Config;
use graph_relay::smtp::SmtpSettings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (file, env_text) = text.split_once('\0').unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(config) = Config::from_layers(Some(file), &env) {
        assert!(config.validate().is_empty(), "loaded, so it validated");
        let _settings = SmtpSettings::from_config(&config);
        let _ = (config.hostname(), config.scope(), config.token_url());
    }
});
