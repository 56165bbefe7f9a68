//! Ghost users: the Matrix users that stand for XMPP contacts, `@msn_<escaped id>:<server>`.
//!
//! Contact identifiers are opaque (Messenger ids), so the mapping is a reversible escape, not a
//! pretty name: characters outside `[a-z0-9.-]` (including `_` and `=`) become `=xx` per UTF-8
//! byte. Contacts on the bridge's default XMPP domain use only their localpart; any other domain
//! is kept after an escaped `@` (`=40`), so JIDs from different servers never collide.

use ruma::{OwnedUserId, UserId};
use xmpp_core::Jid;

/// Maps contact JIDs to ghost user ids and back.
#[derive(Debug, Clone)]
pub struct GhostNames {
    prefix: String,
    server_name: String,
    default_domain: String,
}

impl GhostNames {
    /// `prefix` (e.g. `msn_`), the homeserver's server name, and the XMPP domain whose contacts
    /// get short names.
    pub fn new(prefix: &str, server_name: &str, default_domain: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            server_name: server_name.to_owned(),
            default_domain: default_domain.to_lowercase(),
        }
    }

    /// The ghost's localpart for a contact.
    pub fn localpart(&self, contact: &Jid) -> String {
        let mut out = self.prefix.clone();
        let local = contact.local().unwrap_or("");
        escape_into(&mut out, local);
        if contact.domain() != self.default_domain || local.is_empty() {
            out.push_str("=40");
            escape_into(&mut out, contact.domain());
        }
        out
    }

    /// The ghost's user id for a contact.
    pub fn user_id(&self, contact: &Jid) -> OwnedUserId {
        let s = format!("@{}:{}", self.localpart(contact), self.server_name);
        // Escaping leaves only characters valid in a localpart, so this cannot fail for a valid
        // server name (checked at start-up).
        UserId::parse(&s).unwrap_or_else(|_| {
            UserId::parse(format!("@{}invalid:{}", self.prefix, self.server_name))
                .unwrap_or_else(|_| unreachable_user())
        })
    }

    /// Whether `user` is one of our ghosts (by namespace).
    pub fn is_ghost(&self, user: &str) -> bool {
        user.strip_prefix('@')
            .and_then(|u| u.strip_prefix(self.prefix.as_str()))
            .is_some_and(|rest| rest.ends_with(&format!(":{}", self.server_name)))
    }

    /// The contact a ghost stands for.
    pub fn contact(&self, user: &UserId) -> Option<Jid> {
        if user.server_name().as_str() != self.server_name {
            return None;
        }
        let escaped = user.localpart().strip_prefix(self.prefix.as_str())?;
        let raw = unescape(escaped)?;
        let jid = match raw.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() => format!("{local}@{domain}"),
            Some((_, domain)) => domain.to_owned(),
            None => format!("{raw}@{}", self.default_domain),
        };
        Jid::parse(&jid).ok()
    }
}

fn unreachable_user() -> OwnedUserId {
    // A syntactically valid fallback that can never be in our namespace.
    UserId::parse("@invalid:invalid").expect("static user id is valid")
}

fn escape_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("={b:02x}")),
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> GhostNames {
        GhostNames::new("msn_", "example.org", "messenger.live.com")
    }

    #[test]
    fn default_domain_contacts_get_short_names() {
        let jid = Jid::parse("8F3a_9c@messenger.live.com").unwrap();
        let user = names().user_id(&jid);
        assert_eq!(user.as_str(), "@msn_8f3a=5f9c:example.org");
        assert_eq!(names().contact(&user), Some(jid));
    }

    #[test]
    fn other_domains_and_odd_characters_round_trip() {
        for s in [
            "bob@xmpp.example.com",
            "o.brien+x@jabber.org",
            "ünï@xmpp.example.com",
            "a=b@messenger.live.com",
        ] {
            let jid = Jid::parse(s).unwrap();
            let user = names().user_id(&jid);
            assert!(names().is_ghost(user.as_str()), "{user}");
            assert_eq!(names().contact(&user), Some(jid), "{s} → {user}");
        }
    }

    #[test]
    fn namespace_checks() {
        assert!(!names().is_ghost("@alice:example.org"));
        assert!(!names().is_ghost("@msn_bob:other.org"));
        assert!(
            names()
                .contact(&UserId::parse("@msn_=zz:example.org").unwrap())
                .is_none()
        );
        assert!(
            names()
                .contact(&UserId::parse("@alice:example.org").unwrap())
                .is_none()
        );
    }
}
