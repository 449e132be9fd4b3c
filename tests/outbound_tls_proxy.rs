//! Outbound HTTPS through a corporate network, on the real binary: the fake Microsoft server
//! behind a TLS front whose certificate comes from a throwaway CA (as a TLS-inspecting proxy
//! re-signs sites), and a local CONNECT proxy. `SSL_CERT_FILE` makes the CA trusted; without it
//! mail is held with the certificate error in `queue list`; `HTTPS_PROXY`, `NO_PROXY` and
//! `microsoft.proxy` decide whether the proxy carries the traffic.

use graph_relay_testkit as common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::binary::RelayProcess;
use common::fake_graph::{DEFAULT_SENDER, FakeMicrosoft};
use common::relay::send_ok;

const DELIVERY: Duration = Duration::from_secs(20);
/// The name the proxy resolves itself: the relay never looks it up (a proxied host is not
/// resolved by the client), so reaching it proves the request went through the proxy.
const PROXIED_HOST: &str = "fake-graph.invalid";

/// Every variable that changes where the relay's HTTPS goes or what it trusts; each test sets
/// the ones it needs and removes the rest, whatever the environment running the tests has.
const NETWORK_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A CA made for this test, and a server certificate it signed.
struct TestCa {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    leaf_der: CertificateDer<'static>,
    leaf_key: PrivateKeyDer<'static>,
}

impl TestCa {
    fn new(names: &[&str]) -> TestCa {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "graph-relay test inspecting proxy CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf certificate");
        TestCa {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            leaf_der: leaf.der().clone(),
            leaf_key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        }
    }

    fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("inspecting-proxy-ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }
}

/// Terminates TLS with the CA-signed certificate and forwards the plain bytes to the fake.
async fn tls_front(ca: &TestCa, backend: SocketAddr) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![ca.leaf_der.clone(), ca.ca_der.clone()],
        ca.leaf_key.clone_key(),
    )
    .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind TLS front");
    let addr = listener.local_addr().expect("front address");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake; nothing to forward.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    addr
}

/// One CONNECT the proxy received: its target and its `Proxy-Authorization` header.
#[derive(Debug, Clone)]
struct Tunnel {
    target: String,
    authorization: Option<String>,
}

/// A CONNECT proxy: records each tunnel, resolves [`PROXIED_HOST`] to 127.0.0.1 itself (as a
/// corporate proxy resolves names the client cannot), answers 200 and splices the bytes.
struct ConnectProxy {
    addr: SocketAddr,
    tunnels: Arc<Mutex<Vec<Tunnel>>>,
}

impl ConnectProxy {
    async fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let seen = tunnels.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(tunnel(socket, seen.clone()));
            }
        });
        ConnectProxy { addr, tunnels }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn tunnels(&self) -> Vec<Tunnel> {
        self.tunnels.lock().expect("proxy log").clone()
    }
}

async fn tunnel(mut client: TcpStream, seen: Arc<Mutex<Vec<Tunnel>>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the blank line may be swallowed (the TLS hello follows it).
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default();
    let target = match request.split_whitespace().collect::<Vec<_>>()[..] {
        ["CONNECT", target, _] => target.to_string(),
        _ => {
            let _ = client.write_all(b"HTTP/1.1 405 CONNECT only\r\n\r\n").await;
            return;
        }
    };
    let authorization = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_string())
    });
    seen.lock().expect("proxy log").push(Tunnel {
        target: target.clone(),
        authorization,
    });
    let (host, port) = target.rsplit_once(':').expect("CONNECT host:port");
    let host = if host == PROXIED_HOST {
        "127.0.0.1"
    } else {
        host
    };
    let Ok(mut upstream) = TcpStream::connect((host, port.parse::<u16>().expect("port"))).await
    else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

/// The fake behind a TLS front for `host` (certificate from a fresh CA), and a relay.toml whose
/// identity platform and Graph are `https://{host}:{front port}`. The scope stays the fake's
/// own, since the fake checks it against its plain address.
struct Scene {
    ms: FakeMicrosoft,
    ca: TestCa,
    front: SocketAddr,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Scene {
    async fn new(host: &str, microsoft_extra: &str) -> Scene {
        let ms = FakeMicrosoft::start().await;
        let ca = TestCa::new(&[host]);
        let front = tls_front(&ca, ms.addr()).await;
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[smtp]\nlisten = \"127.0.0.1:0\"\nhostname = \"relay.test\"\n\
             [microsoft]\nauthority = \"https://{host}:{port}\"\ngraph_url = \"https://{host}:{port}/v1.0\"\n\
             scope = \"{}\"\ntenant = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nsender = \"{DEFAULT_SENDER}\"\n{microsoft_extra}\
             [queue]\ndir = \"{}\"\nretry_min = \"1s\"\nretry_max = \"2s\"\n\
             [status]\nlisten = \"127.0.0.1:0\"\n",
            ms.scope(),
            ms.tenant(),
            ms.client_id(),
            ms.client_secret(),
            dir.path().join("spool").display(),
            port = front.port(),
        );
        let config = dir.path().join("relay.toml");
        std::fs::write(&config, toml).expect("write relay.toml");
        Scene {
            ms,
            ca,
            front,
            dir,
            config,
        }
    }

    /// Starts the binary with exactly `set` among [`NETWORK_ENV`]; its log goes to
    /// `relay.log` in the scene's directory.
    async fn start(&self, set: &[(&str, &str)]) -> RelayProcess {
        let env: Vec<(&str, Option<&str>)> = NETWORK_ENV
            .iter()
            .map(|name| {
                let value = set.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
                (*name, value)
            })
            .collect();
        let log = std::fs::File::create(self.log_path()).expect("create log");
        RelayProcess::start_with_env(
            &self.config,
            &[],
            "graph_relay=info",
            Stdio::from(log),
            &env,
        )
        .await
    }

    /// [`Scene::start`] with the test CA trusted through `SSL_CERT_FILE`, then one message
    /// sent and delivered.
    async fn deliver_one_trusting_the_ca(&self, set: &[(&str, &str)]) {
        let ca_file = self.ca.write_ca(self.dir.path());
        let mut set = set.to_vec();
        set.push(("SSL_CERT_FILE", ca_file.to_str().unwrap()));
        let relay = self.start(&set).await;
        send_one(&relay).await;
        let sent = self.ms.wait_for_sent(1, DELIVERY).await;
        assert_eq!(sent[0].subject().as_deref(), Some("through the proxy"));
        assert!(relay.terminate().await.success());
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("relay.log")
    }
}

async fn send_one(relay: &RelayProcess) {
    send_ok(
        relay.smtp,
        DEFAULT_SENDER,
        &["ann@example.com"],
        b"From: relay@contoso.test\r\nTo: ann@example.com\r\nSubject: through the proxy\r\n\r\nhello\r\n",
    )
    .await;
}

fn queue_list(config: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_graph-relay"))
        .arg("--config")
        .arg(config)
        .args(["queue", "list"])
        .output()
        .expect("queue list runs");
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn ssl_cert_file_makes_a_private_ca_trusted() {
    let scene = Scene::new("127.0.0.1", "").await;
    scene.deliver_one_trusting_the_ca(&[]).await;
}

#[tokio::test]
async fn an_untrusted_certificate_holds_mail_and_queue_list_says_why() {
    let scene = Scene::new("127.0.0.1", "").await;
    // The system store: it has never heard of this CA.
    let relay = scene.start(&[]).await;
    send_one(&relay).await;
    let deadline = tokio::time::Instant::now() + DELIVERY;
    let listed = loop {
        let listed = queue_list(&scene.config);
        if listed.contains("attempts=1") || tokio::time::Instant::now() >= deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(listed.contains("\tpending\t"), "{listed}");
    assert!(
        listed.contains("invalid peer certificate: UnknownIssuer"),
        "queue list does not name the certificate problem:\n{listed}"
    );
    assert_eq!(
        scene.ms.token_requests(),
        0,
        "TLS must fail before any request"
    );
    assert!(scene.ms.sent().is_empty());
    // The status page says it too, with what to do: the sign-in itself is not the problem.
    let status = relay.status.expect("the scene's relay has a status page");
    let page = reqwest::get(format!("http://{status}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let unreachable = page
        .split("<div id=\"unreachable\">")
        .nth(1)
        .and_then(|rest| rest.split("</div>").next())
        .unwrap_or_else(|| panic!("no unreachable section in\n{page}"));
    assert!(
        unreachable.contains("UnknownIssuer")
            && unreachable.contains("What to do: the server&#39;s TLS certificate is not trusted"),
        "{unreachable}"
    );
    assert!(relay.terminate().await.success());

    // Held, not lost: once the CA is trusted the same message goes out (and only it).
    let ca_file = scene.ca.write_ca(scene.dir.path());
    let relay = scene
        .start(&[("SSL_CERT_FILE", ca_file.to_str().unwrap())])
        .await;
    scene.ms.wait_for_sent(1, DELIVERY).await;
    assert!(relay.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_status_blames_the_certificate_and_says_how_to_trust_the_ca() {
    let scene = Scene::new("127.0.0.1", "").await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_graph-relay"));
    for name in NETWORK_ENV {
        command.env_remove(name);
    }
    let out = command
        .arg("--config")
        .arg(&scene.config)
        .args(["auth", "status"])
        .output()
        .await
        .expect("auth status runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("UnknownIssuer"), "{stdout}");
    let fix = stdout
        .lines()
        .find_map(|l| l.strip_prefix("fix: "))
        .unwrap_or_else(|| panic!("no fix: line in\n{stdout}"));
    assert!(
        fix.starts_with("the server's TLS certificate is not trusted")
            && fix.contains("SSL_CERT_FILE"),
        "{fix}"
    );
}

#[tokio::test]
async fn https_proxy_from_the_environment_carries_every_request() {
    let scene = Scene::new(PROXIED_HOST, "").await;
    let proxy = ConnectProxy::start().await;
    scene
        .deliver_one_trusting_the_ca(&[("HTTPS_PROXY", &proxy.url())])
        .await;
    let tunnels = proxy.tunnels();
    let expected = format!("{PROXIED_HOST}:{}", scene.front.port());
    assert!(!tunnels.is_empty());
    assert!(tunnels.iter().all(|t| t.target == expected), "{tunnels:?}");
}

#[tokio::test]
async fn no_proxy_naming_the_host_goes_direct() {
    let scene = Scene::new("localhost", "").await;
    let proxy = ConnectProxy::start().await;
    scene
        .deliver_one_trusting_the_ca(&[
            ("HTTPS_PROXY", &proxy.url()),
            ("NO_PROXY", "example.org, localhost"),
        ])
        .await;
    assert!(proxy.tunnels().is_empty(), "{:?}", proxy.tunnels());
}

#[tokio::test]
async fn microsoft_proxy_wins_over_the_environment_and_its_password_stays_out_of_the_log() {
    let configured = ConnectProxy::start().await;
    let from_env = ConnectProxy::start().await;
    let extra = format!("proxy = \"http://alice:s3cret-pw@{}\"\n", configured.addr);
    let scene = Scene::new(PROXIED_HOST, &extra).await;
    scene
        .deliver_one_trusting_the_ca(&[("HTTPS_PROXY", &from_env.url())])
        .await;
    assert!(from_env.tunnels().is_empty(), "{:?}", from_env.tunnels());
    let tunnels = configured.tunnels();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw")
    );
    assert!(!tunnels.is_empty());
    assert!(
        tunnels
            .iter()
            .all(|t| t.authorization.as_deref() == Some(basic.as_str())),
        "{tunnels:?}"
    );
    let log = std::fs::read_to_string(scene.log_path()).expect("read log");
    assert!(
        log.contains(&format!("http://{}", configured.addr)),
        "the log does not say which proxy is used:\n{log}"
    );
    assert!(!log.contains("s3cret-pw"), "proxy password logged:\n{log}");
}
