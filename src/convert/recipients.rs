//! Who receives: the envelope (RCPT TO) decides, the headers only lend each envelope address its
//! place (To/Cc) and display name; and the split into groups of at most 500. Pure; never sends
//! to an address that is only in a header.

use std::collections::{HashMap, HashSet};

use super::graph_json::Recipient;
use super::text::{MAX_FIELD_CHARS, address_key, cut_chars, non_empty};

/// RFC 5321's longest address (64-octet local part, `@`, 255-octet domain). Anything longer is no
/// address Exchange can resolve.
const MAX_ADDRESS_BYTES: usize = 320;

/// Exchange Online's limit of recipients (To + Cc + Bcc) per message.
pub const MAX_RECIPIENTS_PER_MESSAGE: usize = 500;

/// The most Graph messages (plans) mail to `recipients` envelope recipients becomes.
pub fn plans_for(recipients: usize) -> usize {
    recipients.div_ceil(MAX_RECIPIENTS_PER_MESSAGE).max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    To,
    Cc,
    Bcc,
}

/// An address as written in a header: address plus optional display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderAddr {
    pub address: String,
    pub name: Option<String>,
}

impl HeaderAddr {
    pub fn recipient(&self) -> Recipient {
        Recipient::new(self.address.clone(), self.name.clone())
    }
}

/// One envelope recipient with its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rcpt {
    pub role: Role,
    pub addr: HeaderAddr,
    /// Position in the header (To/Cc, header order) or in the envelope (Bcc): keeps output in
    /// the order the author wrote.
    order: usize,
}

/// The recipients of one Graph message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Group {
    pub to: Vec<HeaderAddr>,
    pub cc: Vec<HeaderAddr>,
    pub bcc: Vec<HeaderAddr>,
}

impl Group {
    pub fn len(&self) -> usize {
        self.to.len() + self.cc.len() + self.bcc.len()
    }

    /// Lower-cased addresses of this group.
    pub fn keys(&self) -> HashSet<String> {
        self.to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(|a| address_key(&a.address))
            .collect()
    }
}

/// An address Graph can take as written: `local@domain`, no longer than RFC 5321 allows, with no
/// space, control or bracket-like character (mail-parser hands junk fields over as "addresses"
/// such as `B@example.com>` or `ews@contoso}`; Graph refuses those, which would fail a message
/// that got its 250 — found by fuzzing), and a domain of letters, digits, hyphens and dots
/// (IDN letters included). Anything else ("root", "undisclosed") is no header address at all.
fn is_clean_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let local_ok = local
        .chars()
        .all(|c| !c.is_whitespace() && !c.is_control() && !"<>()[]\\,;:\"@".contains(c));
    let domain_ok = domain
        .chars()
        .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
    !local.is_empty()
        && !domain.is_empty()
        && address.len() <= MAX_ADDRESS_BYTES
        && local_ok
        && domain_ok
}

/// Addresses of parsed header fields (all fields of one name, groups flattened), without entries that are not `local@domain`.
pub(crate) fn header_addrs<'a, 'x: 'a>(
    fields: impl IntoIterator<Item = &'a mail_parser::Address<'x>>,
) -> Vec<HeaderAddr> {
    fields
        .into_iter()
        .flat_map(|addr| addr.iter())
        .filter_map(|a| {
            let address = a.address()?.trim();
            if !is_clean_address(address) {
                return None;
            }
            let name = a.name().and_then(non_empty).map(|mut name| {
                if let Some(chars) = cut_chars(&mut name, MAX_FIELD_CHARS) {
                    tracing::warn!(
                        %address,
                        chars,
                        limit = MAX_FIELD_CHARS,
                        "display name too long for Exchange; sent cut"
                    );
                }
                name
            });
            Some(HeaderAddr {
                address: address.to_string(),
                name,
            })
        })
        .collect()
}

/// Gives every envelope recipient its role: To or Cc (with the header's spelling and display
/// name) when a To/Cc header names it, Bcc otherwise. Envelope duplicates are dropped.
/// Header addresses that are not in the envelope are not returned.
pub(crate) fn classify(rcpt_to: &[String], to: &[HeaderAddr], cc: &[HeaderAddr]) -> Vec<Rcpt> {
    let mut in_headers: HashMap<String, (Role, usize, &HeaderAddr)> = HashMap::new();
    for (i, a) in to.iter().enumerate() {
        in_headers
            .entry(address_key(&a.address))
            .or_insert((Role::To, i, a));
    }
    for (i, a) in cc.iter().enumerate() {
        in_headers
            .entry(address_key(&a.address))
            .or_insert((Role::Cc, i, a));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(rcpt_to.len());
    for (i, r) in rcpt_to.iter().enumerate() {
        let key = address_key(r);
        if key.is_empty() || !seen.insert(key.clone()) {
            continue;
        }
        match in_headers.get(&key) {
            Some(&(role, order, a)) => out.push(Rcpt {
                role,
                addr: a.clone(),
                order,
            }),
            None => out.push(Rcpt {
                role: Role::Bcc,
                addr: HeaderAddr {
                    address: r
                        .trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string(),
                    name: None,
                },
                order: i,
            }),
        }
    }
    out
}

/// Splits the envelope recipients (envelope order) into groups of at most `max`; inside a group,
/// To and Cc keep header order and Bcc envelope order. Every recipient lands in exactly one
/// group.
pub(crate) fn split(rcpts: &[Rcpt], max: usize) -> Vec<Group> {
    rcpts
        .chunks(max.max(1))
        .map(|chunk| {
            let mut chunk: Vec<&Rcpt> = chunk.iter().collect();
            chunk.sort_by_key(|r| (r.role, r.order));
            let mut g = Group::default();
            for r in chunk {
                let list = match r.role {
                    Role::To => &mut g.to,
                    Role::Cc => &mut g.cc,
                    Role::Bcc => &mut g.bcc,
                };
                list.push(r.addr.clone());
            }
            g
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha(address: &str, name: Option<&str>) -> HeaderAddr {
        HeaderAddr {
            address: address.into(),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn envelope_decides_and_headers_lend_place_and_name() {
        let to = [
            ha("Alice@Example.com", Some("Alice")),
            ha("header-only@example.com", None),
        ];
        let cc = [ha("carol@example.com", Some("Carol"))];
        let env = vec![
            "bob@example.com".to_string(),
            "carol@EXAMPLE.com".to_string(),
            "alice@example.com".to_string(),
            "BOB@example.com".to_string(),
        ];
        let groups = split(&classify(&env, &to, &cc), 500);
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        assert_eq!(g.to, vec![ha("Alice@Example.com", Some("Alice"))]);
        assert_eq!(g.cc, vec![ha("carol@example.com", Some("Carol"))]);
        assert_eq!(g.bcc, vec![ha("bob@example.com", None)]);
        assert_eq!(g.len(), 3);
    }

    #[test]
    fn a_punycode_rcpt_matches_the_unicode_spelling_in_to() {
        let to = [ha("bob@bücher.example", Some("Bob"))];
        let groups = split(
            &classify(&["bob@xn--bcher-kva.example".into()], &to, &[]),
            500,
        );
        assert_eq!(groups[0].to, vec![ha("bob@bücher.example", Some("Bob"))]);
        assert!(groups[0].bcc.is_empty(), "not sent as Bcc");
    }

    #[test]
    fn address_in_to_and_cc_keeps_its_first_place() {
        let to = [ha("a@x.org", None)];
        let cc = [ha("a@x.org", Some("A"))];
        let groups = split(&classify(&["a@x.org".into()], &to, &cc), 500);
        assert_eq!(groups[0].to, vec![ha("a@x.org", None)]);
        assert!(groups[0].cc.is_empty());
    }

    #[test]
    fn splits_600_into_500_and_100_each_once() {
        let to: Vec<HeaderAddr> = (0..300).map(|i| ha(&format!("t{i}@x.org"), None)).collect();
        let cc: Vec<HeaderAddr> = (0..200).map(|i| ha(&format!("c{i}@x.org"), None)).collect();
        let mut env: Vec<String> = Vec::new();
        for i in 0..300 {
            env.push(format!("t{i}@x.org"));
            if i < 200 {
                env.push(format!("c{i}@x.org"));
            }
            if i < 100 {
                env.push(format!("b{i}@x.org"));
            }
        }
        assert_eq!(env.len(), 600);
        let groups = split(&classify(&env, &to, &cc), MAX_RECIPIENTS_PER_MESSAGE);
        assert_eq!(
            groups.iter().map(Group::len).collect::<Vec<_>>(),
            vec![500, 100]
        );
        let mut all: Vec<String> = groups
            .iter()
            .flat_map(|g| g.to.iter().chain(&g.cc).chain(&g.bcc))
            .map(|a| a.address.clone())
            .collect();
        all.sort();
        let mut want = env.clone();
        want.sort();
        assert_eq!(all, want, "every recipient exactly once");
        for g in &groups {
            assert!(g.to.iter().all(|a| a.address.starts_with('t')));
            assert!(g.cc.iter().all(|a| a.address.starts_with('c')));
            assert!(g.bcc.iter().all(|a| a.address.starts_with('b')));
        }
    }

    #[test]
    fn empty_envelope_gives_no_groups() {
        assert!(split(&classify(&[], &[ha("a@x.org", None)], &[]), 500).is_empty());
    }
}
