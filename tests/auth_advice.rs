//! `graph-relay auth status` on the real binary advises the fix that fits the cause: nothing
//! configured, an expired client secret, revoked consent, a dead delegated sign-in. (The TLS
//! case is in `outbound_tls_proxy.rs`; the notice and the status page in `reauth.rs`.)

use graph_relay_testkit as common;

use std::path::Path;

use common::fake_graph::{FakeMicrosoft, TokenFailure};
use graph_relay::auth::store::{CachedTokens, save};

/// `auth status` on a relay.toml with these `[microsoft]` lines: (exit code, stdout).
async fn auth_status(dir: &Path, ms: &FakeMicrosoft, microsoft: &str) -> (Option<i32>, String) {
    let config = dir.join("relay.toml");
    let toml = format!(
        "[microsoft]\nauthority = \"{}\"\ngraph_url = \"{}\"\n{microsoft}\n[queue]\ndir = \"{}\"\n",
        ms.authority(),
        ms.graph_url(),
        dir.join("spool").display()
    );
    std::fs::write(&config, toml).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_graph-relay"))
        .arg("--config")
        .arg(&config)
        .args(["auth", "status"])
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `[microsoft]` lines for the fake's app with this credential line.
fn app(ms: &FakeMicrosoft, credential: &str) -> String {
    format!(
        "tenant = \"{}\"\nclient_id = \"{}\"\n{credential}\n",
        ms.tenant(),
        ms.client_id()
    )
}

fn fix_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("fix: "))
        .unwrap_or_else(|| panic!("no fix: line in\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_configured_says_register_an_app_then_check() {
    let ms = FakeMicrosoft::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout) = auth_status(dir.path(), &ms, "").await;
    assert_eq!(code, Some(1));
    assert!(stdout.contains("state: missing"), "{stdout}");
    let fix = fix_line(&stdout);
    assert!(
        fix.starts_with("register an app in Microsoft Entra"),
        "{fix}"
    );
    assert!(
        fix.contains("microsoft.tenant and microsoft.client_id"),
        "{fix}"
    );
    assert!(fix.contains("`graph-relay check`"), "{fix}");
    assert_eq!(ms.token_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_secret_says_create_a_new_one_and_where_to_put_it() {
    let ms = FakeMicrosoft::start().await;
    ms.set_token_failure(Some(TokenFailure::SecretExpired));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, ms.client_secret()).unwrap();
    let microsoft = app(
        &ms,
        &format!("client_secret_file = \"{}\"", secret.display()),
    );
    let (code, stdout) = auth_status(dir.path(), &ms, &microsoft).await;
    assert_eq!(code, Some(1));
    assert!(stdout.contains("state: reauth_required"), "{stdout}");
    let fix = fix_line(&stdout);
    assert!(
        fix.starts_with("the client secret has expired: create a new one"),
        "{fix}"
    );
    assert!(
        fix.contains(&format!("write its Value into {}", secret.display())),
        "{fix}"
    );
    assert!(!stdout.contains(&ms.client_secret()), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_consent_says_grant_admin_consent() {
    let ms = FakeMicrosoft::start().await;
    ms.set_token_failure(Some(TokenFailure::ConsentRevoked));
    let dir = tempfile::tempdir().unwrap();
    let microsoft = app(&ms, &format!("client_secret = \"{}\"", ms.client_secret()));
    let (code, stdout) = auth_status(dir.path(), &ms, &microsoft).await;
    assert_eq!(code, Some(1));
    let fix = fix_line(&stdout);
    assert!(fix.contains("grant admin consent for Mail.Send"), "{fix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delegated_sign_in_says_auth_login() {
    let ms = FakeMicrosoft::start().await;
    ms.set_token_failure(Some(TokenFailure::RefreshTokenRevoked));
    let dir = tempfile::tempdir().unwrap();
    // A sign-in from long ago: its access token expired, its refresh token is what Entra refuses.
    save(
        &dir.path().join("spool").join("token.json"),
        &CachedTokens {
            flow: "delegated".into(),
            client_id: ms.client_id(),
            access_token: "expired".into(),
            expires_at: 1,
            lifetime: 3600,
            refresh_token: Some("revoked".into()),
        },
    )
    .unwrap();
    let (code, stdout) =
        auth_status(dir.path(), &ms, &common::relay::delegated_microsoft(&ms)).await;
    assert_eq!(code, Some(1));
    assert!(stdout.contains("AADSTS700082"), "{stdout}");
    let fix = fix_line(&stdout);
    assert!(
        fix.starts_with("run `graph-relay auth login` on the relay host"),
        "{fix}"
    );
}
