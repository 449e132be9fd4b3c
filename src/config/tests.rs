//! Unit tests of loading and validating: every layer, every bad key with its path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    let file = "[status]\nlisten = \"\"\n[microsoft]\ngraph_url = \"http://127.0.0.1:9/v1.0\"\n";
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
