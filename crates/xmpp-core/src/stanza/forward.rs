//! Messages the account's own server forwards (XEP-0297): carbon copies of the account's
//! conversations on its other clients (XEP-0280) and results of an archive query (XEP-0313).
//!
//! ```xml
//! <message from='alice@x' to='alice@x/bridge'>
//!   <sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>
//!     <message from='alice@x/phone' to='bob@x' type='chat' id='m1'><body>hi</body></message>
//!   </forwarded></sent>
//! </message>
//! <message from='alice@x' to='alice@x/bridge'>
//!   <result xmlns='urn:xmpp:mam:2' queryid='q1' id='28482-98726-73623'>
//!     <forwarded xmlns='urn:xmpp:forward:0'>
//!       <delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/>
//!       <message from='bob@x/phone' to='alice@x' type='chat' id='m2'><body>hello</body></message>
//!     </forwarded>
//!   </result>
//! </message>
//! ```
//!
//! Only the account's own server may send these: a wrapper whose `from` is anyone but the
//! account's bare JID is a forgery (a contact sending a "carbon" to put words in the user's
//! mouth is a known attack on XMPP clients), which [`Forwarded::parse`] refuses.

use super::{Delay, Message, ParseError};
use crate::jid::Jid;
use crate::ns;
use crate::xml::Element;

/// Which side of a conversation a carbon copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarbonKind {
    /// The account sent it from another client.
    Sent,
    /// The account received it on another client.
    Received,
}

/// A forwarded message, unwrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// A carbon copy (XEP-0280).
    Carbon {
        /// Sent or received by the account.
        kind: CarbonKind,
        /// The original message.
        message: Message,
    },
    /// An archived message (XEP-0313), its original time in `message.delay`.
    Archived {
        /// The archive's id for it: where a later query resumes.
        archive_id: String,
        /// The query it answers.
        query_id: Option<String>,
        /// The original message.
        message: Message,
    },
}

/// Why a forwarded message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The wrapper did not come from the account's own server.
    #[error("a forwarded message from {from} (not the account's own server): ignored as forged")]
    Forged {
        /// Who sent the wrapper.
        from: String,
    },
    /// The wrapper or the message inside is malformed.
    #[error(transparent)]
    Invalid(#[from] ParseError),
}

impl Forwarded {
    /// Unwraps `el` if it carries a carbon or an archive result; `None` when it is an ordinary
    /// message. `own` is the account's JID: the wrapper must come from its bare JID (or have no
    /// `from`, which RFC 6120 §8.1.2.1 reads the same way).
    pub fn parse(el: &Element, own: &Jid) -> Option<Result<Self, ForwardError>> {
        let (wrapper, kind) = el.children().find_map(|c| {
            let kind = match (c.name(), c.ns()) {
                ("sent", ns::CARBONS) => Some(CarbonKind::Sent),
                ("received", ns::CARBONS) => Some(CarbonKind::Received),
                ("result", ns::MAM) => None,
                _ => return None,
            };
            Some((c, kind))
        })?;
        Some(Self::unwrap(el, wrapper, kind, own))
    }

    fn unwrap(
        el: &Element,
        wrapper: &Element,
        kind: Option<CarbonKind>,
        own: &Jid,
    ) -> Result<Self, ForwardError> {
        if let Some(from) = el.attr("from") {
            let trusted =
                Jid::parse(from).is_ok_and(|f| f.resource().is_none() && f.bare_eq(&own.to_bare()));
            if !trusted {
                return Err(ForwardError::Forged {
                    from: from.to_owned(),
                });
            }
        }
        let forwarded = wrapper
            .child("forwarded", ns::FORWARD)
            .ok_or_else(|| ParseError::new("forwarded", "no <forwarded/>"))?;
        let inner = forwarded
            .child("message", ns::CLIENT)
            .ok_or_else(|| ParseError::new("forwarded", "no <message/> inside"))?;
        let mut message = Message::from_element(inner)?;
        // XEP-0297 §3: the forwarder's delay is the original time when the message has none.
        if message.delay.is_none() {
            message.delay = Delay::from_children(forwarded)?;
        }
        Ok(match kind {
            Some(kind) => Self::Carbon { kind, message },
            None => Self::Archived {
                archive_id: wrapper
                    .attr("id")
                    .ok_or_else(|| ParseError::new("result", "no archive id"))?
                    .to_owned(),
                query_id: wrapper.attr("queryid").map(str::to_owned),
                message,
            },
        })
    }
}

/// `<enable xmlns='urn:xmpp:carbons:2'/>`, the payload of the IQ set that turns carbons on.
pub fn enable_carbons() -> Element {
    Element::new("enable", ns::CARBONS)
}

/// Where an archive query starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveCursor {
    /// After the message with this archive id.
    After(String),
    /// From this time (Unix milliseconds) on.
    Since(i64),
}

/// A XEP-0313 query for the account's archive, one page of at most `max` messages, oldest
/// first, from `cursor` on.
pub fn archive_query(query_id: &str, cursor: &ArchiveCursor, max: u32) -> Element {
    let field = |var: &str, value: String| {
        Element::new("field", ns::DATA)
            .with_attr("var", var.to_owned())
            .with_child(Element::new("value", ns::DATA).with_text(value))
    };
    let mut form = Element::new("x", ns::DATA)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", ns::MAM.to_owned()).with_attr("type", "hidden"));
    let mut set = Element::new("set", ns::RSM)
        .with_child(Element::new("max", ns::RSM).with_text(max.to_string()));
    match cursor {
        ArchiveCursor::After(id) => {
            set.push_child(Element::new("after", ns::RSM).with_text(id.clone()));
        }
        ArchiveCursor::Since(ms) => {
            let stamp =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(*ms) * 1_000_000)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned());
            form.push_child(field("start", stamp));
        }
    }
    Element::new("query", ns::MAM)
        .with_attr("queryid", query_id.to_owned())
        .with_child(form)
        .with_child(set)
}

/// A XEP-0313 query for the last `max` messages exchanged with `with` (RSM `<before/>`: the
/// last page, oldest first within it).
pub fn archive_last_with(query_id: &str, with: &Jid, max: u32) -> Element {
    let form = Element::new("x", ns::DATA)
        .with_attr("type", "submit")
        .with_child(
            Element::new("field", ns::DATA)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", ns::DATA).with_text(ns::MAM.to_owned())),
        )
        .with_child(
            Element::new("field", ns::DATA)
                .with_attr("var", "with")
                .with_child(Element::new("value", ns::DATA).with_text(with.to_bare().to_string())),
        );
    let set = Element::new("set", ns::RSM)
        .with_child(Element::new("max", ns::RSM).with_text(max.to_string()))
        .with_child(Element::new("before", ns::RSM));
    Element::new("query", ns::MAM)
        .with_attr("queryid", query_id.to_owned())
        .with_child(form)
        .with_child(set)
}

/// The end of one page of an archive query (`<fin/>` in the IQ result): whether the archive
/// has no more, and the id of the page's last message, where the next page starts. `None` when
/// the answer has no `<fin/>` (not a XEP-0313 answer: the catch-up cannot know where it is).
pub fn archive_page_end(payload: Option<&Element>) -> Option<(bool, Option<String>)> {
    let fin = payload.filter(|p| p.is("fin", ns::MAM))?;
    let complete = matches!(fin.attr("complete"), Some("true" | "1"));
    let last = fin
        .child("set", ns::RSM)
        .and_then(|s| s.child_text("last", ns::RSM));
    Some((complete, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    fn own() -> Jid {
        Jid::parse("alice@x/bridge").unwrap()
    }

    #[test]
    fn the_last_messages_with_a_contact_are_asked_for_with_before() {
        let q = archive_last_with("q1", &Jid::parse("bob@x/phone").unwrap(), 20).to_xml();
        assert!(
            q.contains("<field var='with'><value>bob@x</value></field>"),
            "{q}"
        );
        assert!(
            q.contains("<set xmlns='http://jabber.org/protocol/rsm'><max>20</max><before/></set>"),
            "{q}"
        );
        assert!(
            q.starts_with("<query xmlns='urn:xmpp:mam:2' queryid='q1'>"),
            "{q}"
        );
    }

    #[test]
    fn a_sent_carbon_from_the_own_server_is_unwrapped() {
        let el = parse_element(
            "<message from='alice@x' to='alice@x/bridge' type='chat'>\
             <sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:client' from='alice@x/phone' to='bob@x' type='chat' id='m1'>\
             <body>hi</body><stanza-id xmlns='urn:xmpp:sid:0' by='alice@x' id='s1'/></message>\
             </forwarded></sent></message>",
            ns::CLIENT,
        )
        .unwrap();
        let Some(Ok(Forwarded::Carbon { kind, message })) = Forwarded::parse(&el, &own()) else {
            panic!("not a carbon");
        };
        assert_eq!(kind, CarbonKind::Sent);
        assert_eq!(message.body.as_deref(), Some("hi"));
        assert_eq!(message.to.unwrap().to_string(), "bob@x");
        assert_eq!(message.stanza_ids, vec![("alice@x".into(), "s1".into())]);
    }

    #[test]
    fn a_carbon_from_a_contact_is_refused_as_forged() {
        for from in ["bob@x", "alice@x/phone", "x", "alice@evil"] {
            let el = parse_element(
                &format!(
                    "<message from='{from}'><received xmlns='urn:xmpp:carbons:2'>\
                     <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' \
                     from='carol@x' to='alice@x'><body>forged</body></message></forwarded>\
                     </received></message>"
                ),
                ns::CLIENT,
            )
            .unwrap();
            assert!(
                matches!(
                    Forwarded::parse(&el, &own()),
                    Some(Err(ForwardError::Forged { .. }))
                ),
                "{from}"
            );
        }
    }

    #[test]
    fn an_archive_result_keeps_its_id_and_original_time() {
        let el = parse_element(
            "<message to='alice@x/bridge'><result xmlns='urn:xmpp:mam:2' queryid='q1' id='a9'>\
             <forwarded xmlns='urn:xmpp:forward:0'>\
             <delay xmlns='urn:xmpp:delay' stamp='2024-01-01T00:00:00Z'/>\
             <message xmlns='jabber:client' from='bob@x/p' to='alice@x' type='chat'>\
             <body>old</body></message></forwarded></result></message>",
            ns::CLIENT,
        )
        .unwrap();
        let Some(Ok(Forwarded::Archived {
            archive_id,
            query_id,
            message,
        })) = Forwarded::parse(&el, &own())
        else {
            panic!("not an archive result");
        };
        assert_eq!(archive_id, "a9");
        assert_eq!(query_id.as_deref(), Some("q1"));
        assert_eq!(message.delay.unwrap().unix_millis(), 1_704_067_200_000);
    }

    #[test]
    fn ordinary_messages_are_not_forwarded_ones() {
        let el =
            parse_element("<message from='bob@x'><body>x</body></message>", ns::CLIENT).unwrap();
        assert!(Forwarded::parse(&el, &own()).is_none());
    }

    #[test]
    fn archive_queries_and_page_ends() {
        let q = archive_query("q1", &ArchiveCursor::After("a9".into()), 50).to_xml();
        assert!(
            q.contains("<after>a9</after>") && q.contains("<max>50</max>"),
            "{q}"
        );
        let q = archive_query("q2", &ArchiveCursor::Since(1_704_067_200_000), 50).to_xml();
        assert!(
            q.contains("<field var='start'><value>2024-01-01T00:00:00Z</value>"),
            "{q}"
        );
        let fin = parse_element(
            "<fin xmlns='urn:xmpp:mam:2' complete='true'><set xmlns='http://jabber.org/protocol/rsm'>\
             <first>a1</first><last>a9</last></set></fin>",
            ns::CLIENT,
        )
        .unwrap();
        assert_eq!(
            archive_page_end(Some(&fin)),
            Some((true, Some("a9".into())))
        );
        assert_eq!(archive_page_end(None), None);
    }
}
