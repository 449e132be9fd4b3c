//! Submitting over the running relay's SMTP port, for callers that may not write the spool (PHP
//! as www-data, cron as root when the spool belongs to the service user): as durable as a spool
//! commit, since the relay answers 250 only once the message is fsynced. Never retries; a
//! refusal becomes the sysexits code that says whether to try again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use async_trait::async_trait;
use tracing::info;

use crate::envelope::{Envelope, QueueId};
use crate::send_test::{self, SendTestError};
use crate::smtp::{AcceptError, MessageSink};

use super::SendmailError;

/// The relay's SMTP port as a client on this host reaches it.
pub struct Forward {
    server: SocketAddr,
    helo: String,
}

impl Forward {
    /// Submits to `listen` (the first `smtp.listen` address); a wildcard address is reached on
    /// loopback of the same family.
    pub fn new(listen: SocketAddr, helo: String) -> Forward {
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Forward {
            server: SocketAddr::new(ip, listen.port()),
            helo,
        }
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Hands the message to the relay; `Ok` (with its reply) once it answered 250: durable in
    /// its spool.
    pub async fn submit(
        &self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<String, SendmailError> {
        // Loopback: no TLS, and the relay lets local clients in without AUTH unless told not to.
        let relay = send_test::SendTest {
            server: &self.server.to_string(),
            helo: &self.helo,
            login: None,
            starttls: false,
            relay_certificate: None,
        };
        let reply = send_test::submit(&relay, &envelope.mail_from, &envelope.rcpt_to, message)
            .await
            .map_err(|e| self.refused(e))?;
        info!(server = %self.server, %reply, "queued by the relay over SMTP");
        Ok(reply)
    }

    /// What a failed submission means for the caller.
    fn refused(&self, e: SendTestError) -> SendmailError {
        // A 5.7.x enhanced code is a policy refusal, whatever the basic code.
        let policy = matches!(&e, SendTestError::Refused { reply, .. }
            if reply.get(3..).is_some_and(|r| r.trim_start().starts_with("5.7.")));
        let why = format!("the relay at {} (smtp.listen): {e}", self.server);
        match e.reply_code() {
            // Not listening, cut off, timed out, or a 4xx: the relay may take it later.
            None | Some(400..=499) => SendmailError::TempFail(why),
            // Authentication required or refused, or a policy refusal (5.7.x).
            Some(530 | 535) => SendmailError::NoPerm(why),
            Some(_) if policy => SendmailError::NoPerm(why),
            // Too big, or mail that can never be converted.
            Some(552 | 554) => SendmailError::Rejected(why),
            Some(_) => SendmailError::Unavailable(why),
        }
    }
}

/// As the sink of `-bs`: each message the local session accepts is submitted to the relay,
/// and the session answers what the relay answered.
#[async_trait]
impl MessageSink for Forward {
    async fn accept(&self, envelope: Envelope, message: Vec<u8>) -> Result<QueueId, AcceptError> {
        match self.submit(&envelope, &message).await {
            // `250 2.0.0 Ok: queued as ID`: the session repeats the relay's id.
            Ok(reply) => Ok(reply
                .rsplit(' ')
                .next()
                .and_then(QueueId::parse)
                .unwrap_or_else(QueueId::generate)),
            Err(SendmailError::TempFail(why)) => Err(AcceptError::Unavailable(why)),
            Err(e) => Err(AcceptError::Rejected(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sendmail::sysexits::*;

    #[test]
    fn refusals_map_to_what_the_caller_should_do() {
        let forward = Forward::new(SocketAddr::from(([0, 0, 0, 0], 2525)), "h".into());
        assert_eq!(forward.server(), SocketAddr::from(([127, 0, 0, 1], 2525)));
        let refused = |reply: &str| {
            forward
                .refused(SendTestError::Refused {
                    stage: "MAIL FROM",
                    reply: reply.into(),
                })
                .exit_code()
        };
        assert_eq!(refused("451 4.3.0 Queue unavailable"), EX_TEMPFAIL);
        assert_eq!(refused("452 4.3.1 Insufficient storage"), EX_TEMPFAIL);
        assert_eq!(refused("530 5.7.0 Authentication required"), EX_NOPERM);
        assert_eq!(refused("554 5.7.1 Access denied"), EX_NOPERM);
        assert_eq!(refused("552 5.3.4 Message too big"), EX_DATAERR);
        assert_eq!(refused("554 5.6.0 Message rejected: x"), EX_DATAERR);
        assert_eq!(refused("550 5.1.1 No"), EX_UNAVAILABLE);
        let down = SendTestError::Connect {
            server: "127.0.0.1:2525".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(forward.refused(down).exit_code(), EX_TEMPFAIL);
    }
}
