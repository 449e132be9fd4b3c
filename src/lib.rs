//! graph-relay: accepts mail over SMTP on localhost and delivers it through Microsoft Graph
//! `sendMail`; the spool on disk is the truth.
//!
//! Modules are listed bottom-up, and each may use only the modules above it: first what every
//! part shares (plain data, counters, the clock, the configuration, the outbound HTTP client),
//! then a message's path in data-flow order (SMTP in, spool, conversion, sign-in, delivery, and
//! `ingest`, which joins SMTP to the spool and delivery), then what watches and shows it, then
//! `serve`'s wiring and the other commands.

// Shared by every part.
pub mod envelope;
pub mod metrics;
pub mod clock;
pub mod memory;
pub mod config;
pub mod outbound;
// A message's path.
pub mod smtp;
pub mod spool;
pub mod convert;
pub mod auth;
pub mod deliver;
pub mod ingest;
// Watching and showing it.
pub mod notify;
pub mod status;
// `serve` and the other commands.
pub mod app;
pub mod cli;
pub mod send_test;
pub mod check;
pub mod sendmail;

/// What a unit test returns, so setup failures use `?` instead of panicking unwraps.
#[cfg(test)]
pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;
