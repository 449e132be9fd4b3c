//! Shared code for integration tests: the fake Microsoft identity + Graph server, and helpers
//! to run the relay against it. Test-only; never used by the relay itself.
#![allow(dead_code)]

pub mod fake_graph;
pub mod mail;
pub mod relay;
pub mod binary;
