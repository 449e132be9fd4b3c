//! SMTP ingress (placeholder: the session loop lands here).

mod sink;

pub use sink::{AcceptError, MessageSink};
