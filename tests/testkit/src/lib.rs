//! graph-relay's test kit, shared by the integration tests in `tests/*.rs` (which import it as
//! `common`): the fake Microsoft identity + Graph server, helpers to run the relay against it,
//! and the SMTP-level and client-program helpers of the `smtp_*` and `front_door_*` tests.
//! Test-only; never used by the relay itself.

pub mod fake_graph;
pub mod mail;
pub mod relay;
pub mod binary;
pub mod smtp_support;
pub mod front_door_support;
pub mod tools;
