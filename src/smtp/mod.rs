//! SMTP ingress: accepts mail from local applications and hands each complete message to a
//! [`MessageSink`]; answers 250 only when the sink says the message is durable. Never delivers,
//! converts or stores anything itself, and never logs message bodies or credentials.
//!
//! # Why smtp-proto and our own tokio loop, not mailin-embedded
//!
//! mailin-embedded (the obvious crate) was probed and rejected (`crates.md` §2):
//! - after a 4xx/5xx from `data_end` the session stays in DATA, so the client's next RSET/QUIT
//!   is swallowed as message body and the client hangs: a spool error could only be a 421;
//! - `MAIL FROM:<>`, `SIZE=`, `SMTPUTF8` and `MAIL FROM: <a@b>` get 500; it advertises neither
//!   SIZE, PIPELINING, SMTPUTF8 nor ENHANCEDSTATUSCODES;
//! - `<LF>.<CRLF>` ends DATA (an SMTP-smuggling primitive);
//! - no message size limit, no line length limit (memory exhaustion), no 421 at the connection
//!   limit (extra clients are accepted and starved);
//! - blocking thread pool whose `serve()` never returns: no graceful shutdown;
//! - its rustls pulls aws-lc-rs, which makes rustls panic at start-up next to ring, and it depends
//!   on the unmaintained rustls-pemfile. The parser and DATA state machine are private, so these
//!   could not be fixed from outside.
//!
//! [`smtp_proto`] (Stalwart's sans-IO parser) gives us the command and ESMTP parameter parsing;
//! this module adds the session state machine, DATA and BDAT framing of our own (smtp-proto's
//! DATA receiver ended data at `<CRLF>.<CR><CR><LF>` and its BDAT size parser restarted on
//! overflow: see `data`), limits, deadlines, TLS and AUTH on tokio.
//!
//! # Layout
//! - [`server`]: accept loop, connection limit, shutdown (`serve`, `serve_implicit_tls`,
//!   `serve_connection`).
//! - `session`: one connection's state machine; `conn`: buffered I/O with timeouts and
//!   deadlines; `data`: where DATA ends (only `<CRLF>.<CRLF>`) and what a BDAT line says;
//!   `reply`: every reply text; `sasl`: AUTH PLAIN/LOGIN against plain passwords and argon2
//!   hashes; [`throttle`]: the per-address delay after failed AUTH; [`tls`]: the rustls server
//!   config with a reloadable certificate.
//! - [`settings`]: [`SmtpSettings`]; `sink`: the [`MessageSink`] seam (space check at MAIL,
//!   accept at the end of DATA).

mod conn;
mod data;
mod reply;
mod sasl;
pub mod server;
mod session;
pub mod settings;
mod sink;
pub mod throttle;
pub mod tls;

pub use sasl::{HashError, hash_password};
pub use server::{serve, serve_connection, serve_implicit_tls};
pub use settings::{SmtpSettings, TlsReload};
pub use sink::{AcceptError, MessageSink};
pub use throttle::{AuthThrottle, ThrottlePolicy};
pub use tls::{ServerTls, TlsSetupError, load_server_config, server_config_from_pem};
