//! Typed stanzas (RFC 6120 §8, RFC 6121) and the payloads the bridge maps, one module per XEP.
//!
//! Each type converts from an [`Element`](crate::xml::Element) (tolerating unknown children and
//! attributes, as RFC 6120 §8.4 asks) and back. Invalid required parts are errors; the session
//! reports such a stanza and keeps going rather than tearing the stream down.

pub mod chatstates;
pub mod delay;
pub mod disco;
pub mod error;
pub mod forward;
pub mod iq;
pub mod message;
pub mod presence;
pub mod relations;
pub mod roster;
pub mod upload;
pub mod vcard;

pub use chatstates::ChatState;
pub use delay::Delay;
pub use disco::ServerFeatures;
pub use error::{StanzaError, StreamError};
pub use forward::{ArchiveCursor, CarbonKind, Forwarded};
pub use iq::{Iq, IqType};
pub use message::{Message, MessageType};
pub use presence::{Presence, PresenceType, Show};
pub use relations::{Fallback, Reactions, Reply};
pub use roster::{RosterItem, Subscription};
pub use upload::{Slot, UploadService};
pub use vcard::{Photo, VCard};

use crate::jid::Jid;
use crate::xml::Element;

/// A stanza that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid <{element}>: {reason}")]
pub struct ParseError {
    /// The element that was being parsed.
    pub element: &'static str,
    /// What was wrong with it.
    pub reason: String,
}

impl ParseError {
    pub(crate) fn new(element: &'static str, reason: impl Into<String>) -> Self {
        Self {
            element,
            reason: reason.into(),
        }
    }
}

/// Reads an optional JID attribute.
pub(crate) fn jid_attr(
    el: &Element,
    name: &str,
    element: &'static str,
) -> Result<Option<Jid>, ParseError> {
    el.attr(name)
        .map(|s| Jid::parse(s).map_err(|e| ParseError::new(element, format!("'{name}': {e}"))))
        .transpose()
}
