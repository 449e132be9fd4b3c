//! graph-relay: accepts mail over SMTP on localhost and delivers it through Microsoft Graph
//! `sendMail`. Modules are listed in data-flow order; the spool on disk is the truth.

pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod convert;
pub mod deliver;
pub mod notify;
pub mod smtp;
pub mod spool;
pub mod status;
