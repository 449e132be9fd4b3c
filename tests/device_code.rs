//! The device code flow against the fake identity platform: every way a sign-in can end, and
//! `graph-relay auth login` / `auth status` on the real binary.

use graph_relay_testkit as common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake_graph::{FakeMicrosoft, TokenFailure};
use common::relay::{RelayOptions, relay_toml};
use graph_relay::auth::device_code::{DeviceCode, DeviceLogin, LoginError};
use graph_relay::config::Config;

fn delegated_config(ms: &FakeMicrosoft, dir: &Path) -> (Config, std::path::PathBuf) {
    let opts = RelayOptions::delegated(ms);
    let toml = relay_toml(ms, &dir.join("spool"), &opts);
    let path = dir.join("relay.toml");
    std::fs::write(&path, &toml).unwrap();
    (Config::from_layers(Some(&toml), &[]).unwrap(), path)
}

/// Runs the binary with the config at `path`; returns its exit code and stdout.
fn relay(path: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_graph-relay"))
        .arg("--config")
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn login(config: &Config) -> DeviceLogin {
    graph_relay::auth::device_login(config, reqwest::Client::new())
        .expect("delegated flow configured")
}

/// Polls with a sleep that only records how long it was asked to wait.
async fn poll(device: &DeviceLogin, code: &DeviceCode) -> (Result<(), LoginError>, Vec<Duration>) {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let record = waits.clone();
    let outcome = device
        .poll(code, move |d| {
            record.lock().unwrap().push(d);
            tokio::time::sleep(Duration::from_millis(5))
        })
        .await
        .map(drop);
    let waits = waits.lock().unwrap().clone();
    (outcome, waits)
}

#[tokio::test]
async fn declined_expired_and_unknown_codes_end_the_login_with_their_reason() {
    let ms = FakeMicrosoft::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = delegated_config(&ms, dir.path());
    let device = login(&config);

    let code = device.start().await.unwrap();
    assert_eq!(code.verification_uri, "https://microsoft.com/devicelogin");
    assert!(!code.user_code.is_empty());
    ms.decline_device_code();
    assert_eq!(poll(&device, &code).await.0, Err(LoginError::Declined));

    let code = device.start().await.unwrap();
    ms.expire_device_code();
    assert_eq!(poll(&device, &code).await.0, Err(LoginError::Expired));

    let mut bogus = device.start().await.unwrap();
    bogus.device_code = "not-a-code".into();
    assert_eq!(poll(&device, &bogus).await.0, Err(LoginError::BadCode));
}

#[tokio::test]
async fn pending_polls_wait_the_interval_and_slow_down_adds_five_seconds() {
    let ms = Arc::new(FakeMicrosoft::start().await);
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = delegated_config(&ms, dir.path());
    let device = login(&config);
    let code = device.start().await.unwrap();
    ms.fail_next_token_requests(
        1,
        TokenFailure::Custom {
            status: 400,
            error: "slow_down".into(),
            code: 70016,
            description: "AADSTS70016: slow down".into(),
            suberror: None,
        },
    );
    let approve = {
        let ms = ms.clone();
        tokio::spawn(async move {
            // Approve once the relay has polled a few times while pending.
            while ms.device_codes().last().is_none_or(|d| d.polls < 3) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ms.approve_device_code();
        })
    };
    let (outcome, waits) = poll(&device, &code).await;
    approve.await.unwrap();
    assert_eq!(outcome, Ok(()));
    let interval = Duration::from_secs(code.interval);
    assert_eq!(waits[0], interval, "first poll after one interval");
    assert_eq!(
        waits[1],
        interval + Duration::from_secs(5),
        "slow_down adds 5 s (RFC 8628)"
    );
    assert!(
        waits[2..].iter().all(|w| *w == waits[1]),
        "the longer interval is kept: {waits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_login_and_auth_status_on_the_binary() {
    let ms = FakeMicrosoft::start().await;
    ms.set_device_code_auto_approve(true);
    let dir = tempfile::tempdir().unwrap();
    let (config, path) = delegated_config(&ms, dir.path());
    let (code, stdout) = relay(&path, &["auth", "status"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("state: reauth_required"), "{stdout}");
    assert!(
        stdout.contains("graph-relay auth login"),
        "the fix is named: {stdout}"
    );

    let login_path = path.clone();
    let (code, stdout) =
        tokio::task::spawn_blocking(move || relay(&login_path, &["auth", "login"]))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{stdout}");
    let issued = ms.device_codes();
    assert!(
        stdout.contains("https://microsoft.com/devicelogin")
            && stdout.contains(&issued[0].user_code),
        "prints the link and the code: {stdout}"
    );
    assert!(issued[0].scope.contains("offline_access") && issued[0].scope.contains("Mail.Send"));
    let cache = config.token_cache_path();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cache).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let (code, stdout) = relay(&path, &["auth", "status"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("state: valid") && stdout.contains("expires_at: "),
        "{stdout}"
    );
}
