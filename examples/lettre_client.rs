//! Sends one message to a running graph-relay with lettre, the way a Rust app would.
//!
//! ```sh
//! cargo run --example lettre_client -- 127.0.0.1:2525 app@contoso.com someone@example.com
//! ```

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:2525".into());
    let from: Mailbox = args
        .next()
        .unwrap_or_else(|| "app@contoso.com".into())
        .parse()?;
    let to: Mailbox = args
        .next()
        .unwrap_or_else(|| "someone@example.com".into())
        .parse()?;
    let (host, port) = server.rsplit_once(':').ok_or("server must be HOST:PORT")?;

    let email = Message::builder()
        .from(from)
        .to(to)
        .subject("Hello from lettre through graph-relay")
        .multipart(MultiPart::alternative_plain_html(
            "Plain text body.".to_string(),
            "<p>HTML <b>body</b>.</p>".to_string(),
        ))?;
    // Plain SMTP on loopback: the relay only offers STARTTLS when a certificate is configured.
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port.parse()?)
        .build();
    let response = transport.send(email).await?;
    println!(
        "{} {}",
        response.code(),
        response.message().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}
