//! Jabber identifiers (RFC 7622), treated the way the Messenger profile needs.
//!
//! Messenger localparts are opaque identifiers, compared case-insensitively; domains are
//! case-insensitive too. Both are lower-cased on parse so equal JIDs compare equal. Resources are
//! kept as they are. Full PRECIS profiles are not applied: the server is the authority on
//! identifiers, and the bridge only needs stable, comparable keys.

use std::fmt;
use std::str::FromStr;

/// A JID: `[local@]domain[/resource]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    local: Option<String>,
    domain: String,
    resource: Option<String>,
}

/// A string that is not a JID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JID {input:?}: {reason}")]
pub struct JidError {
    input: String,
    reason: &'static str,
}

impl Jid {
    /// Parses `[local@]domain[/resource]`.
    pub fn parse(s: &str) -> Result<Self, JidError> {
        let err = |reason| JidError {
            input: s.to_owned(),
            reason,
        };
        // RFC 7622 §3.1: the resource is everything after the first '/', and may contain '@'.
        let (bare, resource) = match s.split_once('/') {
            Some((b, r)) => (b, Some(r)),
            None => (s, None),
        };
        let (local, domain) = match bare.split_once('@') {
            Some((l, d)) => (Some(l), d),
            None => (None, bare),
        };
        if domain.is_empty() {
            return Err(err("empty domain"));
        }
        if local.is_some_and(str::is_empty) {
            return Err(err("empty localpart"));
        }
        if resource.is_some_and(str::is_empty) {
            return Err(err("empty resource"));
        }
        for part in [local, Some(domain), resource].into_iter().flatten() {
            if part.len() > 1023 {
                return Err(err("a part is longer than 1023 bytes"));
            }
            if part
                .chars()
                .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
            {
                return Err(err("control characters"));
            }
        }
        if domain.contains(char::is_whitespace) || local.is_some_and(|l| l.contains(' ')) {
            return Err(err("spaces outside the resource"));
        }
        if local.is_some_and(|l| l.contains(['"', '&', '\'', ':', '<', '>'])) {
            return Err(err("a character not allowed in a localpart"));
        }
        Ok(Self {
            local: local.map(str::to_lowercase),
            domain: domain.trim_end_matches('.').to_lowercase(),
            resource: resource.map(str::to_owned),
        })
    }

    /// A bare JID from parts (no resource).
    pub fn bare_from_parts(local: Option<&str>, domain: &str) -> Result<Self, JidError> {
        match local {
            Some(l) => Self::parse(&format!("{l}@{domain}")),
            None => Self::parse(domain),
        }
    }

    /// The localpart, if any.
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    /// The domainpart.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The resourcepart, if any.
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }

    /// This JID without its resource.
    pub fn to_bare(&self) -> Self {
        Self {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: None,
        }
    }

    /// Whether there is no resource.
    pub fn is_bare(&self) -> bool {
        self.resource.is_none()
    }

    /// Whether the bare parts of both are equal.
    pub fn bare_eq(&self, other: &Jid) -> bool {
        self.local == other.local && self.domain == other.domain
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.local {
            write!(f, "{l}@")?;
        }
        f.write_str(&self.domain)?;
        if let Some(r) = &self.resource {
            write!(f, "/{r}")?;
        }
        Ok(())
    }
}

impl FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_jid_and_keeps_resource_case() {
        let j = Jid::parse("Alice@Messenger.Live.com/Res@x/y").unwrap();
        assert_eq!(j.local(), Some("alice"));
        assert_eq!(j.domain(), "messenger.live.com");
        assert_eq!(j.resource(), Some("Res@x/y"));
        assert_eq!(j.to_string(), "alice@messenger.live.com/Res@x/y");
        assert_eq!(j.to_bare().to_string(), "alice@messenger.live.com");
    }

    #[test]
    fn opaque_localparts_compare_case_insensitively() {
        let a = Jid::parse("8f3A9c@messenger.live.com").unwrap();
        let b = Jid::parse("8F3a9C@MESSENGER.live.com").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn domain_only() {
        let j = Jid::parse("messenger.live.com").unwrap();
        assert_eq!(j.local(), None);
        assert!(j.is_bare());
    }

    #[test]
    fn rejects_invalid() {
        for bad in ["", "@d", "a@", "a@d/", "a b@d", "a<b@d", "a@d\n", "a@d e"] {
            assert!(Jid::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
