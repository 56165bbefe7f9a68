//! XEP-0085 chat state notifications.
//!
//! ```xml
//! <message type='chat' to='bob@example.org'>
//!   <composing xmlns='http://jabber.org/protocol/chatstates'/>
//! </message>
//! ```

use crate::ns;
use crate::xml::Element;

/// The five chat states of XEP-0085 §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatState {
    /// Actively participating in the chat.
    Active,
    /// Typing a message.
    Composing,
    /// Was composing, stopped for a short while.
    Paused,
    /// Not actively participating.
    Inactive,
    /// Has effectively ended their participation.
    Gone,
}

impl ChatState {
    /// The element name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Composing => "composing",
            Self::Paused => "paused",
            Self::Inactive => "inactive",
            Self::Gone => "gone",
        }
    }

    /// The chat state among a message's children, if any.
    pub fn from_children(msg: &Element) -> Option<Self> {
        msg.children()
            .filter(|c| c.ns() == ns::CHATSTATES)
            .find_map(|c| match c.name() {
                "active" => Some(Self::Active),
                "composing" => Some(Self::Composing),
                "paused" => Some(Self::Paused),
                "inactive" => Some(Self::Inactive),
                "gone" => Some(Self::Gone),
                _ => None,
            })
    }

    /// `<composing xmlns='http://jabber.org/protocol/chatstates'/>` and so on.
    pub fn to_element(self) -> Element {
        Element::new(self.as_str(), ns::CHATSTATES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    #[test]
    fn each_state_round_trips() {
        for s in [
            ChatState::Active,
            ChatState::Composing,
            ChatState::Paused,
            ChatState::Inactive,
            ChatState::Gone,
        ] {
            let msg = Element::new("message", ns::CLIENT).with_child(s.to_element());
            let parsed = parse_element(&msg.to_xml(), ns::CLIENT).unwrap();
            assert_eq!(ChatState::from_children(&parsed), Some(s));
        }
    }

    #[test]
    fn unknown_or_wrong_namespace_is_none() {
        let m = parse_element(
            "<message><typing xmlns='http://jabber.org/protocol/chatstates'/><composing/></message>",
            ns::CLIENT,
        )
        .unwrap();
        assert_eq!(ChatState::from_children(&m), None);
    }
}
