//! The command line (design section 2): clap types only; `main.rs` runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "graph-relay",
    version,
    about = "Local SMTP relay that delivers mail through Microsoft Graph"
)]
pub struct Cli {
    /// Configuration file (default ./relay.toml; the built-in defaults apply when it is absent).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run SMTP, delivery and the status page until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Load and validate the configuration; print every bad key, every file it names that
    /// cannot be read, and what it lacks to deliver mail.
    Check(CheckArgs),
    /// Microsoft sign-in.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Inspect and change the queue (works while serve runs).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Send a test message through the running relay's SMTP port.
    SendTest(SendTestArgs),
    /// Hash an SMTP AUTH password (argon2id) for `smtp.users`; prints the hash to paste into
    /// relay.toml as `NAME = { password_hash = "..." }`.
    Passwd(PasswdArgs),
    /// The sendmail interface for PHP mail(), cron and other programs (also what the binary
    /// does when run as `sendmail`): reads a message from stdin and queues it. Takes sendmail's
    /// options (-t, -i, -f, -F, -bs, ...); see README "sendmail interface".
    #[command(disable_help_flag = true)]
    Sendmail(SendmailArgs),
}

#[derive(Debug, Args)]
pub struct SendmailArgs {
    /// Sendmail options and recipients, read as sendmail reads them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Accept a configuration that cannot deliver yet (no tenant, client id, app credential or
    /// sender): print those as warnings and exit 0. `serve` starts without them and keeps the
    /// mail it accepts queued. Bad keys and unreadable files still fail.
    #[arg(long)]
    pub allow_incomplete: bool,
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Read the password from stdin without a prompt: everything up to end of input, minus one
    /// trailing newline (for scripts: `printf %s "$PW" | graph-relay passwd --password-stdin`).
    /// Without it the first line of stdin is read, after a prompt when stdin is a terminal.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Write each Graph request to <queue.dir>/outbox/<id>.json instead of sending it. Only mail
    /// received by the dry run goes there (it keeps its own spool, <queue.dir>/dry-run/); mail
    /// already queued is left untouched for the real serve.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Sign in (delegated: device code flow) or prove the app credentials work.
    Login,
    /// Show the token state and expiry.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// One line per message: id, state, attempts, next attempt, last error, from, recipients.
    List,
    /// Make a message (or every failed one) due now.
    Retry {
        /// Queue id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every failed message.
        #[arg(long)]
        all: bool,
    },
    /// Remove a message.
    Delete {
        /// Queue id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct SendTestArgs {
    /// Recipient.
    #[arg(long)]
    pub to: String,
    /// Sender (default: microsoft.sender, else relay-test@localhost).
    #[arg(long)]
    pub from: Option<String>,
    /// SMTP server (default: the first smtp.listen address).
    #[arg(long)]
    pub server: Option<String>,
    /// Log in with AUTH PLAIN as this smtp.users user (for a relay with require_auth). The
    /// password is read from stdin: its first line, after a prompt on a terminal.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Read the password from stdin without a prompt: everything up to end of input, minus one
    /// trailing newline (`printf %s "$PW" | graph-relay send-test --user wp --password-stdin ...`).
    #[arg(long, requires = "user")]
    pub password_stdin: bool,
    /// Stay in plain text even when the relay offers STARTTLS (by default send-test upgrades, as
    /// PHPMailer does, trusting the system CAs and the relay's own smtp.tls_cert).
    #[arg(long)]
    pub no_starttls: bool,
}
