//! The sendmail interface with the real binary: `graph-relay sendmail` and a `sendmail` symlink
//! fed on stdin as cron and PHP feed it, `-bs` spoken to over stdin/stdout, the messages it
//! leaves in the spool (envelope and bytes), delivery of them by a running relay to the fake
//! Graph, PHP's `mail()` through `sendmail_path`, and callers that may not write the spool
//! (run as another user, which needs root here) submitting over the relay's SMTP port.

use graph_relay_testkit as common;
use graph_relay_testkit::tools::{require, require_tool};

use common::fake_graph::*;
use common::relay::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_graph-relay");
/// Long enough for a running relay's periodic spool rescan (5 s) and a delivery.
const DELIVERY: Duration = Duration::from_secs(30);

/// A config file and an existing spool, with no relay running.
struct Spooled {
    dir: tempfile::TempDir,
    config: PathBuf,
    queue_dir: PathBuf,
}

fn spooled(smtp_extra: &str) -> Spooled {
    let dir = tempfile::tempdir().unwrap();
    let queue_dir = dir.path().join("spool");
    graph_relay::spool::Spool::open(&queue_dir).unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = \"127.0.0.1:0\"\nhostname = \"relay.test\"\n{smtp_extra}\n\
             [microsoft]\nsender = \"{DEFAULT_SENDER}\"\n[queue]\ndir = \"{}\"\n",
            queue_dir.display()
        ),
    )
    .unwrap();
    Spooled {
        dir,
        config,
        queue_dir,
    }
}

/// Runs `program args...` with `input` on stdin; `uid` runs it as that user (root only).
async fn run_as(
    program: &Path,
    args: &[&str],
    input: &[u8],
    env: &[(&str, &str)],
    uid: Option<u32>,
) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove(graph_relay::sendmail::CONFIG_ENV)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(uid) = uid {
        as_user(&mut command, uid);
    }
    let mut child = command.spawn().expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    // The command may exit before reading everything (a lone "." ends input): ignore EPIPE.
    let _ = stdin.write_all(input).await;
    drop(stdin);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sendmail finishes")
        .expect("sendmail output")
}

/// `graph-relay --config CONFIG sendmail args...`.
async fn sendmail(config: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut all = vec!["--config", config.to_str().unwrap(), "sendmail"];
    all.extend_from_slice(args);
    run_as(Path::new(BIN), &all, input, &[], None).await
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every committed message in `queue/`: (record, message bytes).
fn queued(queue_dir: &Path) -> Vec<(Value, String)> {
    let queue = queue_dir.join("queue");
    let mut out = Vec::new();
    for name in files_in(&queue) {
        if let Some(id) = name.strip_suffix(".json") {
            let record: Value =
                serde_json::from_slice(&std::fs::read(queue.join(&name)).unwrap()).unwrap();
            let eml = std::fs::read(queue.join(format!("{id}.eml"))).unwrap();
            out.push((record, String::from_utf8(eml).unwrap()));
        }
    }
    out
}

fn the_one(queue_dir: &Path) -> (Value, String) {
    let mut all = queued(queue_dir);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn rcpt_to(record: &Value) -> Vec<&str> {
    record["envelope"]["rcpt_to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the child as `uid` from `/`: the checkout it is started from may be closed to others.
fn as_user(command: &mut Command, uid: u32) {
    command.uid(uid).gid(uid).current_dir("/");
}

/// The binary at a path in `dir` (made world-traversable) that any user can run: the build's
/// own path may be under a home directory other users cannot enter. A hard link where it can
/// be, since a copy just written can fail to exec (ETXTBSY) while other tests fork.
fn runnable_by_anyone(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("graph-relay");
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[tokio::test]
async fn cron_style_echo_body_is_committed_with_its_envelope() {
    let s = spooled("");
    // What Debian's cron runs: the option soup, then the MAILTO address.
    let out = sendmail(
        &s.config,
        &[
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "user@example.com",
        ],
        b"body\n",
    )
    .await;
    assert_exit(&out, 0);
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    let (record, eml) = the_one(&s.queue_dir);
    assert_eq!(record["envelope"]["mail_from"], DEFAULT_SENDER, "{record}");
    assert_eq!(rcpt_to(&record), ["user@example.com"]);
    assert_eq!(record["state"], "pending");
    // No header at all in: a From is added; bare LF became CRLF as SMTP stores it.
    assert_eq!(
        eml,
        format!("From: \"CronDaemon\" <{DEFAULT_SENDER}>\r\n\r\nbody\r\n")
    );
    assert_eq!(files_in(&s.queue_dir.join("tmp")), Vec::<String>::new());
}

#[tokio::test]
async fn dash_t_reads_to_cc_bcc_adds_arguments_and_drops_the_bcc_header() {
    let s = spooled("");
    let msg = b"From: App <app@contoso.test>\nTo: Alice <alice@example.org>, bob@example.org\n\
        Cc: carol@example.org\nBcc: dave@example.org,\n  erin@example.org\nSubject: hello\n\n\
        body line\n";
    let out = sendmail(&s.config, &["-t", "-i", "frank@example.org"], msg).await;
    assert_exit(&out, 0);
    let (record, eml) = the_one(&s.queue_dir);
    assert_eq!(
        rcpt_to(&record),
        [
            "frank@example.org",
            "alice@example.org",
            "bob@example.org",
            "carol@example.org",
            "dave@example.org",
            "erin@example.org"
        ]
    );
    assert_eq!(
        eml,
        "From: App <app@contoso.test>\r\nTo: Alice <alice@example.org>, bob@example.org\r\n\
         Cc: carol@example.org\r\nSubject: hello\r\n\r\nbody line\r\n"
    );
}

#[tokio::test]
async fn dash_f_sets_the_envelope_sender_and_dash_capital_f_names_a_missing_from() {
    let s = spooled("");
    let out = sendmail(
        &s.config,
        &[
            "-f",
            "www@contoso.test",
            "-F",
            "Web \"Shop\"",
            "a@example.org",
        ],
        b"Subject: no from\n\nx\n",
    )
    .await;
    assert_exit(&out, 0);
    let out = sendmail(
        &s.config,
        &["-fbounce@contoso.test", "-FIgnored", "a@example.org"],
        b"From: Me <me@contoso.test>\nSubject: has from\n\ny\n",
    )
    .await;
    assert_exit(&out, 0);
    let mut all = queued(&s.queue_dir);
    all.sort_by_key(|(r, _)| r["id"].as_str().unwrap().to_string());
    assert_eq!(all[0].0["envelope"]["mail_from"], "www@contoso.test");
    assert_eq!(
        all[0].1,
        "From: \"Web \\\"Shop\\\"\" <www@contoso.test>\r\nSubject: no from\r\n\r\nx\r\n"
    );
    assert_eq!(all[1].0["envelope"]["mail_from"], "bounce@contoso.test");
    assert_eq!(
        all[1].1,
        "From: Me <me@contoso.test>\r\nSubject: has from\r\n\r\ny\r\n"
    );
}

#[tokio::test]
async fn a_lone_dot_ends_the_message_unless_dash_i() {
    let s = spooled("");
    let input = b"Subject: dots\n\none\n.\ntwo\n";
    assert_exit(&sendmail(&s.config, &["a@example.org"], input).await, 0);
    assert_exit(
        &sendmail(&s.config, &["-oi", "b@example.org"], input).await,
        0,
    );
    let all = queued(&s.queue_dir);
    let body_of = |rcpt: &str| {
        let (_, eml) = all.iter().find(|(r, _)| rcpt_to(r) == [rcpt]).unwrap();
        eml.split_once("\r\n\r\n").unwrap().1.to_string()
    };
    assert_eq!(body_of("a@example.org"), "one\r\n");
    assert_eq!(body_of("b@example.org"), "one\r\n.\r\ntwo\r\n");
}

#[tokio::test]
async fn refusals_exit_with_sysexits_codes_and_queue_nothing() {
    let s = spooled("max_message_bytes = 20000\n");
    // MIME nested past the limit: nothing the relay would ever convert.
    let depth = graph_relay::convert::MAX_MIME_NESTING + 1;
    let mut too_deep = b"Subject: deep\n".to_vec();
    for i in 0..depth {
        too_deep
            .extend(format!("Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n").bytes());
    }
    too_deep.extend(b"Content-Type: text/plain\n\nthe bottom\n");
    for i in (0..depth).rev() {
        too_deep.extend(format!("--b{i}--\n").bytes());
    }
    let cases: [(&[&str], &[u8], i32, &str); 6] = [
        (&[], b"Subject: x\n\nno one\n", 64, "no recipients"),
        (
            &["-t"],
            b"Subject: x\n\nno header rcpt\n",
            64,
            "no recipients",
        ),
        (&["-k", "a@example.org"], b"x\n", 64, "unknown option -k"),
        (&["root"], b"x\n", 67, "not a full address"),
        (
            &["a@example.org"],
            &[b'x'; 30000],
            65,
            "larger than smtp.max_message_bytes",
        ),
        (&["a@example.org"], &too_deep, 65, "nested too deeply"),
    ];
    for (args, input, code, text) in cases {
        let out = sendmail(&s.config, args, input).await;
        assert_exit(&out, code);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(text), "{args:?}: {stderr}");
    }
    let bad_config = s.dir.path().join("missing.toml");
    let out = sendmail(&bad_config, &["a@example.org"], b"x\n").await;
    assert_exit(&out, 78);
    assert!(queued(&s.queue_dir).is_empty());
}

#[tokio::test]
async fn a_sendmail_symlink_takes_sendmail_arguments_and_the_config_from_the_environment() {
    let s = spooled("");
    let link = s.dir.path().join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let out = run_as(
        &link,
        &["-t", "-i"],
        b"To: zoe@example.org\nSubject: via symlink\n\nhi\n",
        &[(
            graph_relay::sendmail::CONFIG_ENV,
            s.config.to_str().unwrap(),
        )],
        None,
    )
    .await;
    assert_exit(&out, 0);
    let (record, eml) = the_one(&s.queue_dir);
    assert_eq!(rcpt_to(&record), ["zoe@example.org"]);
    assert!(eml.contains("Subject: via symlink\r\n"), "{eml}");
}

/// One transaction with `graph-relay --config CONFIG sendmail -bs` over its stdin/stdout (as
/// `uid` when given): EHLO (no AUTH or STARTTLS offered), MAIL, RCPT, DATA, QUIT; the command
/// must then exit 0. Returns the reply to the end of DATA.
async fn bs_transaction(bin: &Path, config: &Path, uid: Option<u32>, data: &[u8]) -> String {
    let mut command = Command::new(bin);
    command
        .args(["--config", config.to_str().unwrap(), "sendmail", "-bs"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(uid) = uid {
        as_user(&mut command, uid);
    }
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut reply = async || {
        let mut text = String::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("a reply in time")
                .unwrap()
                .expect("a reply before EOF");
            let last = line.as_bytes().get(3) != Some(&b'-');
            text.push_str(&line);
            text.push('\n');
            if last {
                return text;
            }
        }
    };
    assert!(reply().await.starts_with("220 "));
    let mut say = async |line: &[u8]| stdin.write_all(line).await.unwrap();
    say(b"EHLO app.local\r\n").await;
    let ehlo = reply().await;
    assert!(ehlo.contains("SIZE") && !ehlo.contains("AUTH") && !ehlo.contains("STARTTLS"));
    say(b"MAIL FROM:<app@contoso.test>\r\n").await;
    assert!(reply().await.starts_with("250"));
    say(b"RCPT TO:<bob@example.org>\r\n").await;
    assert!(reply().await.starts_with("250"));
    say(b"DATA\r\n").await;
    assert!(reply().await.starts_with("354"));
    say(data).await;
    let queued_reply = reply().await;
    say(b"QUIT\r\n").await;
    assert!(reply().await.starts_with("221"));
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    queued_reply
}

#[tokio::test]
async fn dash_bs_speaks_smtp_on_stdin_and_stdout() {
    // The session is local whatever networks the relay lets in over TCP.
    let s = spooled("allowed_networks = [\"10.0.0.0/8\"]\n");
    let reply = bs_transaction(
        Path::new(BIN),
        &s.config,
        None,
        b"Subject: bs\r\n\r\n..dot-stuffed\r\n.\r\n",
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let (record, eml) = the_one(&s.queue_dir);
    let id = record["id"].as_str().unwrap();
    assert!(reply.contains(id), "{reply} names {id}");
    assert_eq!(record["envelope"]["mail_from"], "app@contoso.test");
    assert_eq!(rcpt_to(&record), ["bob@example.org"]);
    assert_eq!(eml, "Subject: bs\r\n\r\n.dot-stuffed\r\n");
}

/// A relay running in this process, and a config file for the sendmail command that names
/// the same spool and the relay's real SMTP port, readable by any user.
struct Serving {
    ms: FakeMicrosoft,
    relay: TestRelay,
    config_dir: tempfile::TempDir,
    config: PathBuf,
}

async fn serving() -> Serving {
    let ms = FakeMicrosoft::start().await;
    let relay = TestRelay::start(&ms, RelayOptions::default()).await;
    let config_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(config_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = config_dir.path().join("relay.toml");
    let toml = relay_toml(&ms, &relay.queue_dir(), &RelayOptions::default()).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", relay.smtp),
        1,
    );
    std::fs::write(&config, toml).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    Serving {
        ms,
        relay,
        config_dir,
        config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_left_in_the_spool_is_delivered_by_the_running_relay() {
    let s = serving().await;
    let out = sendmail(
        &s.config,
        &["-t", "-i"],
        b"From: relay@contoso.test\nTo: alice@example.org\nBcc: hidden@example.org\n\
          Subject: from cron\n\nthe job's output\n",
    )
    .await;
    assert_exit(&out, 0);
    // The command wrote the spool itself: the relay finds it at its next rescan.
    let sent = s.ms.wait_for_sent(1, DELIVERY).await;
    assert_eq!(sent[0].subject().as_deref(), Some("from cron"));
    assert_eq!(sent[0].to(), ["alice@example.org"]);
    assert_eq!(sent[0].bcc(), ["hidden@example.org"]);
    let (_, body) = sent[0].body().unwrap();
    assert!(body.contains("the job's output"), "{body}");
    s.relay.wait_queue_empty(DELIVERY).await;
}

/// `php -r 'mail(...)'` with `sendmail_path` pointing at the command, as the user given (None:
/// this one). Returns what PHP printed: `true` when mail() saw exit 0.
async fn php_mail(bin: &Path, config: &Path, uid: Option<u32>) -> String {
    let sendmail_path = format!(
        "{} --config {} sendmail -t -i",
        bin.display(),
        config.display()
    );
    let script = r#"var_export(mail("alice@example.org", "PHP subject", "Hello from PHP.\nSecond line.", "From: shop@contoso.test\r\nCc: bob@example.org"));"#;
    let out = run_as(
        Path::new("php"),
        &[
            "-n",
            "-d",
            &format!("sendmail_path={sendmail_path}"),
            "-r",
            script,
        ],
        b"",
        &[],
        uid,
    )
    .await;
    assert_exit(&out, 0);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_mail_through_sendmail_path_is_delivered() {
    if !require_tool("php", ".ci/run installs php-cli") {
        return;
    }
    let s = serving().await;
    assert_eq!(php_mail(Path::new(BIN), &s.config, None).await, "true");
    let sent = s.ms.wait_for_sent(1, DELIVERY).await;
    assert_eq!(sent[0].subject().as_deref(), Some("PHP subject"));
    assert_eq!(sent[0].to(), ["alice@example.org"]);
    assert_eq!(sent[0].cc(), ["bob@example.org"]);
    let (_, body) = sent[0].body().unwrap();
    assert!(
        body.contains("Hello from PHP.") && body.contains("Second line."),
        "{body}"
    );
}

const WWW_DATA: u32 = 33;
const NOBODY: u32 = 65534;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_as_www_data_cannot_write_the_spool_and_submits_over_smtp() {
    if !require(is_root(), "running PHP as www-data needs root")
        || !require_tool("php", ".ci/run installs php-cli")
    {
        return;
    }
    let s = serving().await;
    assert_eq!(
        php_mail(
            &runnable_by_anyone(s.config_dir.path()),
            &s.config,
            Some(WWW_DATA)
        )
        .await,
        "true"
    );
    // Accepted over SMTP: the relay delivers at once, no rescan needed.
    let sent = s.ms.wait_for_sent(1, DELIVERY).await;
    assert_eq!(sent[0].subject().as_deref(), Some("PHP subject"));
    assert_eq!(
        sent[0].all_recipients(),
        ["alice@example.org", "bob@example.org"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_bs_as_another_user_passes_each_message_to_the_relay_over_smtp() {
    if !require(is_root(), "running as another user needs root") {
        return;
    }
    let s = serving().await;
    let data = b"From: relay@contoso.test\r\nSubject: bs relayed\r\n\r\nhello\r\n.\r\n";
    let bin = runnable_by_anyone(s.config_dir.path());
    let reply = bs_transaction(&bin, &s.config, Some(NOBODY), data).await;
    assert!(reply.starts_with("250"), "{reply}");
    let sent = s.ms.wait_for_sent(1, DELIVERY).await;
    assert_eq!(sent[0].subject().as_deref(), Some("bs relayed"));
    assert_eq!(sent[0].bcc(), ["bob@example.org"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_spool_with_no_relay_listening_is_a_temporary_failure() {
    if !require(is_root(), "running as another user needs root") {
        return;
    }
    let s = spooled("");
    let bin = runnable_by_anyone(s.dir.path());
    std::fs::set_permissions(&s.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let args = [
        "--config",
        s.config.to_str().unwrap(),
        "sendmail",
        "a@example.org",
    ];
    let env = [("GRAPH_RELAY__SMTP__LISTEN", closed.to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run_as(&bin, &args, b"Subject: x\n\ny\n", &env, Some(NOBODY)).await;
    assert_exit(&out, 75);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("try again later") && stderr.contains(&closed.to_string()),
        "{stderr}"
    );
    assert!(queued(&s.queue_dir).is_empty());
    assert_eq!(files_in(&s.queue_dir.join("tmp")), Vec::<String>::new());
}
