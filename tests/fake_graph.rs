//! Self-tests of the fake Microsoft identity + Graph server (tests/common/fake_graph.rs): it must
//! reject what Graph and Entra reject, and accept a good request, so relay tests can trust it.

mod common;

use common::fake_graph::*;

#[tokio::test]
async fn starts() {
    let ms = FakeMicrosoft::start().await;
    assert!(ms.base_url().starts_with("http://127.0.0.1:"));
}
