//! The status surface: (in `http`) the `/status` JSON, the `/metrics` text of the counters in
//! `crate::metrics`, and the HTML page. Reads the spool and the token state; changes nothing
//! except through the same spool operations the CLI uses.

pub mod http;
