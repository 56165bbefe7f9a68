//! RFC 6121 §2 roster: the contact list. Read-only in the Messenger profile.
//!
//! ```xml
//! <query xmlns='jabber:iq:roster'>
//!   <item jid='bob@x' name='Bob' subscription='both'><group>Friends</group></item>
//! </query>
//! ```

use super::ParseError;
use crate::jid::Jid;
use crate::ns;
use crate::xml::Element;

/// RFC 6121 §2.1.2.5 subscription states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    /// No subscription either way.
    None,
    /// We see their presence.
    To,
    /// They see ours.
    From,
    /// Both.
    Both,
    /// Removed (only in roster pushes).
    Remove,
}

/// One roster item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: Jid,
    /// The display name the user gave the contact (or the server provides).
    pub name: Option<String>,
    /// Subscription state.
    pub subscription: Subscription,
    /// Groups.
    pub groups: Vec<String>,
}

/// The `<query xmlns='jabber:iq:roster'/>` of a roster get.
pub fn query() -> Element {
    Element::new("query", ns::ROSTER)
}

/// Parses the items of a roster result or push. An item with an invalid JID is an error: the
/// caller logs it; a roster is never silently partial.
pub fn parse_items(query: &Element) -> Result<Vec<RosterItem>, ParseError> {
    if !query.is("query", ns::ROSTER) {
        return Err(ParseError::new("query", "not a roster query"));
    }
    query
        .children()
        .filter(|c| c.is("item", ns::ROSTER))
        .map(|item| {
            let jid = item
                .attr("jid")
                .ok_or_else(|| ParseError::new("item", "no jid"))?;
            let jid = Jid::parse(jid)
                .map_err(|e| ParseError::new("item", e.to_string()))?
                .to_bare();
            let subscription = match item.attr("subscription") {
                Some("to") => Subscription::To,
                Some("from") => Subscription::From,
                Some("both") => Subscription::Both,
                Some("remove") => Subscription::Remove,
                _ => Subscription::None,
            };
            Ok(RosterItem {
                jid,
                name: item
                    .attr("name")
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned),
                subscription,
                groups: item
                    .children()
                    .filter(|g| g.is("group", ns::ROSTER))
                    .map(Element::text)
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    #[test]
    fn parses_items() {
        let q = parse_element(
            "<query xmlns='jabber:iq:roster' ver='1'><item jid='Bob@x/r' name='Bob' subscription='both'>\
             <group>A</group><group>B</group></item><item jid='carol@x'/></query>",
            ns::CLIENT,
        )
        .unwrap();
        let items = parse_items(&q).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].jid.to_string(), "bob@x");
        assert_eq!(items[0].name.as_deref(), Some("Bob"));
        assert_eq!(items[0].subscription, Subscription::Both);
        assert_eq!(items[0].groups, ["A", "B"]);
        assert_eq!(items[1].subscription, Subscription::None);
        assert_eq!(items[1].name, None);
    }

    #[test]
    fn bad_item_is_an_error() {
        let q = parse_element(
            "<query xmlns='jabber:iq:roster'><item name='x'/></query>",
            ns::CLIENT,
        )
        .unwrap();
        assert!(parse_items(&q).is_err());
    }
}
