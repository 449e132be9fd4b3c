//! From policy: which mailbox a message is posted to, what goes in Graph `from`, and when the
//! original From moves to Reply-To. Pure; never sets `from` to an address the mailbox may not
//! send as (that is a 403 ErrorSendAsDenied).
//!
//! App-only (client credentials):
//! - From allowed (`allowed_senders`: exact address or `*@domain`, case-insensitive) →
//!   `/users/{From}`, `from` = From (the mailbox itself, with the display name).
//! - else `sender` configured → `/users/{sender}`; if From is the sender, `from` = From;
//!   otherwise `from` is left out (Exchange uses the mailbox) and the original From becomes
//!   `replyTo` when the message has no Reply-To.
//! - else → `ConvertError::NoMailbox`.
//!
//! Delegated: always `/me`, `from` is never set (the signed-in user sends). The original From
//! moves to `replyTo` (when there is no Reply-To) unless it is the sender or an allowed address.
//!
//! No From header (or one without an address): MAIL FROM stands in for it; with an empty MAIL
//! FROM too, the mail goes from `sender` with nothing moved.

use super::recipients::HeaderAddr;
use super::text::address_key;
use super::{ConvertError, ConvertOptions, Mailbox};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SenderPlan {
    pub mailbox: Mailbox,
    /// Graph `from`: only ever the mailbox's own address.
    pub from: Option<HeaderAddr>,
    /// The original From, to put in `replyTo` (only when the message has no Reply-To).
    pub reply_to: Option<HeaderAddr>,
    /// For the MIME path: the address the `From:` header must be rewritten to (the mailbox),
    /// when the original From is not one the mailbox may send as.
    pub rewrite_from: Option<String>,
}

/// `*@domain` (or `@domain`) matches the domain; anything else is an exact address.
pub(crate) fn is_allowed(address: &str, allowed: &[String]) -> bool {
    let key = address_key(address);
    let domain = key.rsplit_once('@').map(|(_, d)| d);
    allowed.iter().any(|entry| {
        let entry = address_key(entry);
        if entry.is_empty() {
            return false;
        }
        match entry.strip_prefix("*@").or_else(|| entry.strip_prefix('@')) {
            Some(d) => domain == Some(d),
            None => entry == key,
        }
    })
}

/// Decides mailbox, `from` and Reply-To. `from_header` is the first From address, if any;
/// `has_reply_to` whether the message has its own Reply-To.
pub(crate) fn decide(
    from_header: Option<HeaderAddr>,
    mail_from: &str,
    has_reply_to: bool,
    opts: &ConvertOptions,
) -> Result<SenderPlan, ConvertError> {
    let from = from_header.or_else(|| {
        let m = mail_from
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim();
        (!m.is_empty()).then(|| HeaderAddr {
            address: m.to_string(),
            name: None,
        })
    });
    let sender = opts
        .sender
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let is_sender =
        |a: &HeaderAddr| sender.is_some_and(|s| address_key(s) == address_key(&a.address));
    let allowed = |a: &HeaderAddr| is_allowed(&a.address, &opts.allowed_senders);
    let moved = |a: &HeaderAddr| (!has_reply_to).then(|| a.clone());

    if opts.delegated {
        let own = from.as_ref().is_some_and(|a| is_sender(a) || allowed(a));
        return Ok(SenderPlan {
            mailbox: Mailbox::Me,
            from: None,
            reply_to: if own {
                None
            } else {
                from.as_ref().and_then(moved)
            },
            rewrite_from: match (&from, sender) {
                (Some(_), Some(s)) if !own => Some(s.to_string()),
                _ => None,
            },
        });
    }

    match (from, sender) {
        (Some(f), _) if allowed(&f) => Ok(SenderPlan {
            mailbox: Mailbox::User(f.address.clone()),
            from: Some(f),
            reply_to: None,
            rewrite_from: None,
        }),
        (Some(f), Some(s)) if is_sender(&f) => Ok(SenderPlan {
            mailbox: Mailbox::User(s.to_string()),
            from: Some(f),
            reply_to: None,
            rewrite_from: None,
        }),
        (Some(f), Some(s)) => Ok(SenderPlan {
            mailbox: Mailbox::User(s.to_string()),
            from: None,
            reply_to: moved(&f),
            rewrite_from: Some(s.to_string()),
        }),
        (None, Some(s)) => Ok(SenderPlan {
            mailbox: Mailbox::User(s.to_string()),
            from: None,
            reply_to: None,
            rewrite_from: None,
        }),
        (f, None) => Err(ConvertError::NoMailbox {
            from: f.map(|a| a.address).unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(sender: Option<&str>, allowed: &[&str]) -> ConvertOptions {
        ConvertOptions {
            sender: sender.map(Into::into),
            allowed_senders: allowed.iter().map(|s| s.to_string()).collect(),
            save_to_sent_items: true,
            delegated: false,
        }
    }

    fn ha(address: &str, name: Option<&str>) -> Option<HeaderAddr> {
        Some(HeaderAddr {
            address: address.into(),
            name: name.map(Into::into),
        })
    }

    #[test]
    fn allowed_matching() {
        let allowed = vec![
            "Exact@Contoso.com".to_string(),
            "*@Fabrikam.com".to_string(),
        ];
        assert!(is_allowed("exact@contoso.com", &allowed));
        assert!(!is_allowed("other@contoso.com", &allowed));
        assert!(is_allowed("any@FABRIKAM.com", &allowed));
        assert!(!is_allowed("any@sub.fabrikam.com", &allowed));
        assert!(!is_allowed("fabrikam.com", &allowed));
    }

    #[test]
    fn allowed_from_sends_as_itself() {
        let p = decide(
            ha("Jo@fabrikam.com", Some("Jo")),
            "bounce@x",
            false,
            &opts(Some("relay@contoso.com"), &["*@fabrikam.com"]),
        )
        .expect("plan");
        assert_eq!(p.mailbox, Mailbox::User("Jo@fabrikam.com".into()));
        assert_eq!(p.from, ha("Jo@fabrikam.com", Some("Jo")));
        assert_eq!(p.reply_to, None);
        assert_eq!(p.rewrite_from, None);
    }

    #[test]
    fn other_from_goes_via_sender_and_moves_to_reply_to() {
        let o = opts(Some("relay@contoso.com"), &[]);
        let p = decide(ha("wp@site.example", Some("WordPress")), "", false, &o).expect("plan");
        assert_eq!(p.mailbox, Mailbox::User("relay@contoso.com".into()));
        assert_eq!(p.from, None);
        assert_eq!(p.reply_to, ha("wp@site.example", Some("WordPress")));
        assert_eq!(p.rewrite_from.as_deref(), Some("relay@contoso.com"));
        // an existing Reply-To wins
        let p = decide(ha("wp@site.example", None), "", true, &o).expect("plan");
        assert_eq!(p.reply_to, None);
        // From that is the sender itself
        let p = decide(ha("RELAY@contoso.com", None), "", false, &o).expect("plan");
        assert_eq!(p.from, ha("RELAY@contoso.com", None));
        assert_eq!(p.reply_to, None);
    }

    #[test]
    fn missing_from_uses_mail_from_then_sender() {
        let o = opts(Some("relay@contoso.com"), &["cron@host.example"]);
        let p = decide(None, "<cron@host.example>", false, &o).expect("plan");
        assert_eq!(p.mailbox, Mailbox::User("cron@host.example".into()));
        let p = decide(None, "", false, &o).expect("plan");
        assert_eq!(p.mailbox, Mailbox::User("relay@contoso.com".into()));
        assert_eq!((p.from, p.reply_to), (None, None));
    }

    #[test]
    fn no_sender_and_not_allowed_is_no_mailbox() {
        let err =
            decide(ha("x@y.example", None), "", false, &opts(None, &[])).expect_err("no mailbox");
        assert!(matches!(err, ConvertError::NoMailbox { ref from } if from == "x@y.example"));
        assert!(decide(None, "", false, &opts(None, &[])).is_err());
    }

    #[test]
    fn delegated_is_me_without_from() {
        let mut o = opts(Some("me@contoso.com"), &[]);
        o.delegated = true;
        let p = decide(ha("app@site.example", None), "", false, &o).expect("plan");
        assert_eq!(p.mailbox, Mailbox::Me);
        assert_eq!(p.from, None);
        assert_eq!(p.reply_to, ha("app@site.example", None));
        let p = decide(ha("me@contoso.com", None), "", false, &o).expect("plan");
        assert_eq!((p.from, p.reply_to, p.rewrite_from), (None, None, None));
        let o = ConvertOptions {
            delegated: true,
            ..opts(None, &[])
        };
        assert_eq!(
            decide(None, "", false, &o).expect("plan").mailbox,
            Mailbox::Me
        );
    }
}
