//! What the outbox holds for delivery to Matrix: a typed, versioned payload instead of ad-hoc
//! JSON, so an item written by one version of the bridge is read the same way by the next, and an
//! unreadable one is reported (never taken for delivered).
//!
//! The Matrix → XMPP direction stores the Matrix event itself (its format is Matrix's own).

use serde::{Deserialize, Serialize};

/// The payload version this build writes. Items without a version were written before versions
/// existed and have the same fields as version 1.
pub(crate) const VERSION: u32 = 1;

/// One item for Matrix, as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ToMatrix {
    /// The format version ([`VERSION`]).
    #[serde(default = "version_1")]
    pub(crate) v: u32,
    /// The linked Matrix user.
    pub(crate) user: String,
    /// The contact's bare JID.
    pub(crate) contact: String,
    /// What to deliver.
    #[serde(flatten)]
    pub(crate) kind: ToMatrixKind,
}

/// What a [`ToMatrix`] item delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ToMatrixKind {
    /// A contact's chat message.
    Message {
        /// The text.
        body: String,
        /// The XEP-0203 delay stamp (unix ms), for messages stored while the user was away.
        ts: Option<i64>,
        /// The stanza's `id`, for the message map.
        stanza_id: Option<String>,
        /// When the bridge received it (unix ms): the message's time when it has no stamp, so
        /// a redelivery after a crash keeps it.
        received: i64,
        /// The bare JID of the user's own account when the user wrote it (from another of
        /// their clients: a carbon or the archive); its ghost posts it. Absent: the contact.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        own: Option<String>,
    },
    /// A notice in the portal (an error reply from the contact's server).
    Notice {
        /// The text.
        text: String,
    },
}

fn version_1() -> u32 {
    1
}

/// Why a stored payload cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PayloadError {
    /// Not the JSON this bridge writes.
    #[error("unreadable outbox item: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a newer version of the bridge.
    #[error(
        "outbox item of format version {0}, newer than this bridge ({VERSION}); upgrade the bridge"
    )]
    TooNew(u32),
}

impl ToMatrix {
    /// A message payload.
    pub(crate) fn message(
        user: &str,
        contact: &str,
        body: String,
        ts: Option<i64>,
        stanza_id: Option<String>,
        received: i64,
    ) -> Self {
        Self::new(
            user,
            contact,
            ToMatrixKind::Message {
                body,
                ts,
                stanza_id,
                received,
                own: None,
            },
        )
    }

    /// The user's own message, written from another of their clients as `own` (bare JID).
    pub(crate) fn own_message(mut self, own: String) -> Self {
        if let ToMatrixKind::Message { own: o, .. } = &mut self.kind {
            *o = Some(own);
        }
        self
    }

    /// A notice payload.
    pub(crate) fn notice(user: &str, contact: &str, text: String) -> Self {
        Self::new(user, contact, ToMatrixKind::Notice { text })
    }

    fn new(user: &str, contact: &str, kind: ToMatrixKind) -> Self {
        Self {
            v: VERSION,
            user: user.to_owned(),
            contact: contact.to_owned(),
            kind,
        }
    }

    /// The stored form.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a stored item.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, PayloadError> {
        let item: Self = serde_json::from_slice(bytes)?;
        if item.v > VERSION {
            return Err(PayloadError::TooNew(item.v));
        }
        Ok(item)
    }

    /// The time the message should carry in Matrix: its delay stamp, or when it was received.
    pub(crate) fn origin_ts(&self) -> Option<i64> {
        match &self.kind {
            ToMatrixKind::Message { ts, received, .. } => Some(ts.unwrap_or(*received)),
            ToMatrixKind::Notice { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips() {
        let p = ToMatrix::message("@a:x", "b@y", "hi".into(), None, Some("id1".into()), 42);
        assert_eq!(ToMatrix::from_bytes(&p.to_bytes()).unwrap(), p);
        assert_eq!(p.origin_ts(), Some(42));
    }

    #[test]
    fn items_written_before_versions_still_read() {
        let old = br#"{"kind":"message","user":"@a:x","contact":"b@y","body":"hi","ts":7,"stanza_id":null,"received":9}"#;
        let p = ToMatrix::from_bytes(old).unwrap();
        assert_eq!(p.v, 1);
        assert_eq!(
            p.origin_ts(),
            Some(7),
            "the delay stamp wins over the receive time"
        );
        let notice = br#"{"kind":"notice","user":"@a:x","contact":"b@y","text":"t"}"#;
        assert!(matches!(
            ToMatrix::from_bytes(notice).unwrap().kind,
            ToMatrixKind::Notice { .. }
        ));
    }

    #[test]
    fn unreadable_and_newer_items_are_errors() {
        assert!(matches!(
            ToMatrix::from_bytes(b"null"),
            Err(PayloadError::Malformed(_))
        ));
        assert!(matches!(
            ToMatrix::from_bytes(br#"{"kind":"sticker","user":"a","contact":"b"}"#),
            Err(PayloadError::Malformed(_))
        ));
        let newer = br#"{"v":2,"kind":"notice","user":"@a:x","contact":"b@y","text":"t"}"#;
        assert!(matches!(
            ToMatrix::from_bytes(newer),
            Err(PayloadError::TooNew(2))
        ));
    }
}
