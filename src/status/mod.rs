//! The status surface: the status listener: `http` (router and guards), `json` (`/status`),
//! `metrics` (`/metrics`, the text of the counters in `crate::metrics`), `page` (the HTML page)
//! and `actions` (its buttons). Reads the spool and the token state; changes nothing except
//! through the same spool operations and sign-in the CLI uses.

pub mod actions;
pub mod http;
pub mod json;
pub mod metrics;
pub mod page;
