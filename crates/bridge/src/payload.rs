//! What the outbox holds for delivery to Matrix: a typed, versioned payload instead of ad-hoc
//! JSON, so an item written by one version of the bridge is read the same way by the next, and an
//! unreadable one is reported (never taken for delivered).
//!
//! The Matrix → XMPP direction stores the Matrix event itself (its format is Matrix's own).

use serde::{Deserialize, Serialize};

/// The newest payload version this build reads. Items without a version were written before
/// versions existed and have the same fields as version 1. Messages and notices are still
/// written as version 1 (a bridge of that version delivers them, without their reply or
/// correction); retractions and reactions are version 2.
pub(crate) const VERSION: u32 = 2;

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
        /// XEP-0308: the id of the message this one corrects (the body is its new text).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
        /// XEP-0461: the message this one answers, and the fallback ranges of the body (the
        /// quote, dropped when the answered message is found in Matrix).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<ReplyTo>,
        /// XEP-0333: the contact's client wants to know when the user has read it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        markable: bool,
        /// XEP-0066: the link of a file the message carries, fetched into Matrix.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_url: Option<String>,
    },
    /// XEP-0424: the contact took a message back.
    Retract {
        /// The id of the message taken back.
        stanza: String,
    },
    /// XEP-0444: the contact's whole set of reactions to a message.
    Reactions {
        /// The id of the message reacted to.
        stanza: String,
        /// The reactions (emoji); empty removes them all.
        keys: Vec<String>,
    },
    /// A notice in the portal (an error reply from the contact's server).
    Notice {
        /// The text.
        text: String,
    },
}

/// What a message answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReplyTo {
    /// The id of the message answered.
    pub(crate) id: String,
    /// XEP-0428 ranges of the body (code points) that quote it.
    #[serde(default)]
    pub(crate) fallback: Vec<(usize, usize)>,
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
                replaces: None,
                reply_to: None,
                markable: false,
                file_url: None,
            },
        )
    }

    /// The message's correction (XEP-0308) or reply (XEP-0461) details.
    pub(crate) fn with_relations(
        mut self,
        corrects: Option<String>,
        answers: Option<ReplyTo>,
    ) -> Self {
        if let ToMatrixKind::Message {
            replaces, reply_to, ..
        } = &mut self.kind
        {
            *replaces = corrects;
            *reply_to = answers;
        }
        self
    }

    /// The link of a file the message carries (XEP-0066).
    pub(crate) fn with_file(mut self, url: Option<String>) -> Self {
        if let ToMatrixKind::Message { file_url, .. } = &mut self.kind {
            *file_url = url;
        }
        self
    }

    /// Marks the message as asking for read markers (XEP-0333).
    pub(crate) fn markable(mut self, wanted: bool) -> Self {
        if let ToMatrixKind::Message { markable, .. } = &mut self.kind {
            *markable = wanted;
        }
        self
    }

    /// A retraction or a set of reactions.
    pub(crate) fn relation(user: &str, contact: &str, kind: ToMatrixKind) -> Self {
        Self::new(user, contact, kind)
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
        let v = match kind {
            ToMatrixKind::Message { .. } | ToMatrixKind::Notice { .. } => 1,
            ToMatrixKind::Retract { .. } | ToMatrixKind::Reactions { .. } => 2,
        };
        Self {
            v,
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
            ToMatrixKind::Notice { .. }
            | ToMatrixKind::Retract { .. }
            | ToMatrixKind::Reactions { .. } => None,
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
    fn relations_round_trip_and_only_new_kinds_are_version_2() {
        let reply = ToMatrix::message("@a:x", "b@y", "> q\nhi".into(), None, None, 1)
            .with_relations(
                None,
                Some(ReplyTo {
                    id: "m1".into(),
                    fallback: vec![(0, 4)],
                }),
            );
        assert_eq!(
            reply.v, 1,
            "an older bridge still delivers it, as plain text"
        );
        assert_eq!(ToMatrix::from_bytes(&reply.to_bytes()).unwrap(), reply);
        let reactions = ToMatrix::relation(
            "@a:x",
            "b@y",
            ToMatrixKind::Reactions {
                stanza: "m1".into(),
                keys: vec!["👍".into()],
            },
        );
        assert_eq!(reactions.v, 2);
        assert_eq!(
            ToMatrix::from_bytes(&reactions.to_bytes()).unwrap(),
            reactions
        );
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
        let newer = br#"{"v":3,"kind":"notice","user":"@a:x","contact":"b@y","text":"t"}"#;
        assert!(matches!(
            ToMatrix::from_bytes(newer),
            Err(PayloadError::TooNew(3))
        ));
    }
}
