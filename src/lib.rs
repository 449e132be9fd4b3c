//! graph-relay: accepts mail over SMTP on localhost and delivers it through Microsoft Graph
//! `sendMail`. Modules are listed in data-flow order; the spool on disk is the truth.

pub mod envelope;
pub mod metrics;
pub mod config;
pub mod clock;
pub mod smtp;
pub mod spool;
pub mod convert;
pub mod auth;
pub mod deliver;
pub mod outbound;
pub mod notify;
pub mod status;
pub mod ingest;
pub mod app;
pub mod cli;
pub mod send_test;
pub mod check;
pub mod sendmail;

/// What a unit test returns, so setup failures use `?` instead of panicking unwraps.
#[cfg(test)]
pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;
