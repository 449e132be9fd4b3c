//! CLI entry: parses the command line, sets up logging, runs one command and turns its outcome
//! into an exit code. The only place that uses `anyhow`.

use std::ffi::OsString;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use graph_relay::app::{self, StartOptions};
use std::sync::Arc;

use graph_relay::auth;
use graph_relay::auth::device_code::{self, SignInError};
use graph_relay::cli::{
    AuthCommand, CheckArgs, Cli, Command, PasswdArgs, QueueCommand, SendTestArgs, SendmailArgs,
    ServeArgs,
};
use graph_relay::clock::SystemClock;
use graph_relay::config::{Config, ConfigError, Flow, Source};
use graph_relay::envelope::QueueId;
use graph_relay::send_test;
use graph_relay::sendmail;
use graph_relay::spool::{Spool, SpoolError, list_line};

fn main() -> ExitCode {
    graph_relay::memory::return_big_buffers_to_the_system();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match argv.first() {
        // A `sendmail` symlink: every argument is sendmail's, none is ours.
        Some(argv0) if sendmail::invoked_as_sendmail(argv0) => Cli {
            config: None,
            command: Command::Sendmail(SendmailArgs {
                args: argv[1..].to_vec(),
            }),
        },
        _ => Cli::parse_from(argv),
    };
    if let Command::Sendmail(args) = &cli.command {
        return sendmail_command(cli.config.clone(), &args.args);
    }
    init_logging("info");
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// `graph-relay sendmail ...` or the binary run as `sendmail`: quiet unless something fails
/// (cron mails whatever a job prints) or `-v`; the exit code is a sysexits code.
fn sendmail_command(config: Option<PathBuf>, args: &[OsString]) -> ExitCode {
    let fail = |e: sendmail::SendmailError| {
        eprintln!("sendmail: {e}");
        ExitCode::from(e.exit_code())
    };
    let inv = match sendmail::args::parse(args) {
        Ok(inv) => inv,
        Err(e) => return fail(e.into()),
    };
    init_logging(if inv.verbose { "info" } else { "warn" });
    let config = match sendmail::load_config(
        config.or_else(|| inv.config.clone()),
        std::env::var_os(sendmail::CONFIG_ENV),
    ) {
        Ok(config) => config,
        Err(e) => return fail(e.into()),
    };
    let Some(runtime) = runtime() else {
        return ExitCode::from(sendmail::sysexits::EX_SOFTWARE);
    };
    match runtime.block_on(sendmail::run(inv, &config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let source = match &cli.config {
        Some(path) => Source::Explicit(path.clone()),
        None => Source::Default,
    };
    if let Command::Check(args) = &cli.command {
        return Ok(check(&source, args));
    }
    if let Command::Passwd(args) = &cli.command {
        return passwd(args);
    }
    let config = load(&source)?;
    match cli.command {
        Command::Serve(args) => serve(config, args, &source).await,
        Command::Check(_) | Command::Passwd(_) | Command::Sendmail(_) => {
            unreachable!("handled above")
        }
        Command::Auth(AuthCommand::Login) => login(config).await,
        Command::Auth(AuthCommand::Status) => auth_status(config).await,
        Command::Queue(command) => queue(config, command),
        Command::SendTest(args) => send(config, args).await,
    }
}

fn load(source: &Source) -> Result<Config> {
    Config::load(source).map_err(|e| anyhow::anyhow!(e))
}

/// `check`: bad keys, then files the configuration names that cannot be used, then what it
/// lacks to deliver (an error unless `--allow-incomplete`, since `serve` runs without it).
fn check(source: &Source, args: &CheckArgs) -> ExitCode {
    let config = match Config::load(source) {
        Ok(config) => config,
        Err(ConfigError::Invalid(errors)) => {
            for error in errors {
                println!("{error}");
            }
            return ExitCode::FAILURE;
        }
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let files = graph_relay::check::files(&config);
    for error in &files {
        println!("{error}");
    }
    let gaps = graph_relay::check::delivery_gaps(&config);
    let warn = if args.allow_incomplete {
        "warning: "
    } else {
        ""
    };
    for gap in &gaps {
        println!("{warn}{gap}");
    }
    if !gaps.is_empty() && !args.allow_incomplete {
        println!(
            "(to accept a configuration that cannot deliver yet: graph-relay check --allow-incomplete)"
        );
    }
    if !files.is_empty() || (!gaps.is_empty() && !args.allow_incomplete) {
        return ExitCode::FAILURE;
    }
    if gaps.is_empty() {
        println!("configuration OK");
    } else {
        println!("configuration OK, but it cannot deliver yet (see the warnings above)");
    }
    ExitCode::SUCCESS
}

async fn serve(config: Config, args: ServeArgs, source: &Source) -> Result<ExitCode> {
    // Handlers first: once the ready line is out, a SIGHUP must reload, not kill.
    let mut signals = Signals::install()?;
    let running = app::start(
        config,
        StartOptions {
            dry_run: args.dry_run,
            ..StartOptions::default()
        },
    )
    .await?;
    let smtp: Vec<String> = running
        .smtp_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let status = running
        .status_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    // A stable line scripts and tests wait for (ports may be 0 in the config).
    println!("graph-relay ready smtp={} status={status}", smtp.join(","));
    std::io::stdout().flush().ok();
    signals.wait(&running, source).await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for SIGTERM/SIGINT; on SIGHUP reloads the configuration (a bad file is reported
    /// and the running one kept).
    async fn wait(&mut self, running: &app::Running, source: &Source) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => match Config::load(source) {
                    Ok(config) => running.reload(&config),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
                },
            }
        }
    }
}

fn http_client(config: &Config) -> Result<reqwest::Client> {
    Ok(graph_relay::outbound::client(config)?)
}

/// `auth login`: the device code flow (delegated), or proof that the app credentials work.
/// Either way the token cache changes, which a running `serve` notices within seconds.
async fn login(config: Config) -> Result<ExitCode> {
    let http = http_client(&config)?;
    if let Some(device) = auth::device_login(&config, http.clone()) {
        let pending = device_code::login(device, &config, |code| {
            println!(
                "To sign in, open {} and enter the code {}",
                code.verification_uri, code.user_code
            );
            if let Some(message) = &code.message {
                println!("{message}");
            }
            std::io::stdout().flush().ok();
        })
        .await?;
        return match pending.signed_in().await {
            Ok(()) => {
                println!(
                    "signed in; tokens stored in {}",
                    config.token_cache_path().display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(SignInError::Store(e)) => {
                Err(e).with_context(|| format!("writing {}", config.token_cache_path().display()))
            }
            Err(SignInError::Login(e)) => {
                println!("login failed: {e}");
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let tokens = auth::from_config(&config, http, Arc::new(SystemClock));
    match tokens.token().await {
        Ok(token) => {
            auth::store_app_token(&config, &token)
                .with_context(|| format!("writing {}", config.token_cache_path().display()))?;
            println!(
                "app credentials work; token valid until {}",
                humantime::format_rfc3339_seconds(token.expires_at)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("login failed: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `auth status`: state and expiry; exit 0 when a token can be had.
async fn auth_status(config: Config) -> Result<ExitCode> {
    let tokens = auth::from_config(&config, http_client(&config)?, Arc::new(SystemClock));
    let outcome = tokens.token().await;
    let status = tokens.status();
    println!(
        "flow: {}",
        if config.microsoft.flow == Flow::Delegated {
            "delegated"
        } else {
            "client_credentials"
        }
    );
    println!("state: {}", status.state.as_str());
    if let Some(expires) = status.expires_at {
        println!("expires_at: {}", humantime::format_rfc3339_seconds(expires));
    }
    match outcome {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            println!("reason: {e}");
            println!("fix: {}", auth::advice::for_error(&config, &e));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn queue(config: Config, command: QueueCommand) -> Result<ExitCode> {
    let spool = Spool::open(&config.queue.dir)
        .with_context(|| format!("opening {}", config.queue.dir.display()))?;
    let now = SystemTime::now();
    match command {
        QueueCommand::List => {
            let records = spool.list_all()?;
            if records.is_empty() {
                println!("queue is empty");
            }
            for record in records {
                println!("{}", list_line(&record));
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Retry { all: true, .. } => {
            let moved = spool.retry_all_failed(now)?;
            println!("{} failed message(s) queued for delivery now", moved.len());
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Retry { id, .. } => {
            let id = parse_id(id.as_deref().unwrap_or_default())?;
            known(
                spool
                    .retry(&id, now)
                    .map(|r| println!("queued for delivery now: {}", list_line(&r))),
            )
        }
        QueueCommand::Delete { id } => {
            let id = parse_id(&id)?;
            known(
                spool
                    .delete(&id)
                    .map(|r| println!("deleted: {}", list_line(&r))),
            )
        }
    }
}

fn parse_id(text: &str) -> Result<QueueId> {
    match QueueId::parse(text.trim()) {
        Some(id) => Ok(id),
        None => bail!("{text:?} is not a queue id (see `graph-relay queue list`)"),
    }
}

/// Exit 1 for an unknown id, as the contract says; other errors are real errors.
fn known(result: Result<(), SpoolError>) -> Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(SpoolError::NotFound(id)) => {
            eprintln!("no message {id} in the queue");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// A password from stdin: with `from_stdin`, everything up to end of input; else the first line,
/// after a prompt when stdin is a terminal. One trailing newline is dropped; `None` when empty.
fn read_password(from_stdin: bool) -> Result<Option<String>> {
    use std::io::{BufRead as _, Read as _};
    let stdin = std::io::stdin();
    let mut password = String::new();
    if from_stdin {
        stdin
            .lock()
            .read_to_string(&mut password)
            .context("reading the password from stdin")?;
    } else {
        if stdin.is_terminal() {
            eprint!("Password (it shows as you type; or pipe it in with --password-stdin): ");
            std::io::stderr().flush().ok();
        }
        stdin
            .lock()
            .read_line(&mut password)
            .context("reading the password from stdin")?;
    }
    let password = password
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&password);
    Ok((!password.is_empty()).then(|| password.to_string()))
}

/// `passwd`: reads a password from stdin and prints its argon2id PHC string (stdout, alone on
/// its line, so scripts can capture it); the relay.toml line to paste goes to stderr.
fn passwd(args: &PasswdArgs) -> Result<ExitCode> {
    let Some(password) = read_password(args.password_stdin)? else {
        eprintln!("error: empty password; nothing hashed");
        return Ok(ExitCode::FAILURE);
    };
    let hash = graph_relay::smtp::hash_password(password.as_bytes())?;
    println!("{hash}");
    eprintln!("paste into relay.toml under [smtp.users]:  NAME = {{ password_hash = \"{hash}\" }}");
    Ok(ExitCode::SUCCESS)
}

async fn send(config: Config, args: SendTestArgs) -> Result<ExitCode> {
    let server = match args.server {
        Some(server) => server,
        None => config
            .smtp
            .listen
            .first()
            .map(ToString::to_string)
            .context("smtp.listen is empty")?,
    };
    let from = args
        .from
        .or_else(|| config.microsoft.sender.clone())
        .unwrap_or_else(|| "relay-test@localhost".to_string());
    let password = match &args.user {
        Some(_) => match read_password(args.password_stdin)? {
            Some(password) => Some(password),
            None => bail!("empty password: nothing to log in with"),
        },
        None => None,
    };
    // The relay's own certificate, so a self-signed one passes STARTTLS; unreadable → CAs only.
    let relay_certificate = config.smtp.tls_cert.as_ref().and_then(|path| {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        CertificateDer::pem_file_iter(path).ok()?.next()?.ok()
    });
    let hostname = config.hostname();
    let relay = send_test::SendTest {
        server: &server,
        helo: &hostname,
        login: args.user.as_deref().zip(password.as_deref()),
        starttls: !args.no_starttls,
        relay_certificate,
    };
    let reply = send_test::send(&relay, &from, &args.to).await?;
    println!("{reply}");
    Ok(if reply.starts_with("250") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
