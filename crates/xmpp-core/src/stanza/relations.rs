//! What a message can say about an earlier one: XEP-0461 replies (with XEP-0428 fallback
//! ranges), XEP-0308 corrections, XEP-0424 retractions, XEP-0444 reactions and XEP-0333 chat
//! markers. In a one-to-one chat each names the earlier message by its `id` attribute.
//!
//! ```xml
//! <message to='bob@x' type='chat' id='r2'>
//!   <body>> hi&#10;hello</body>
//!   <reply xmlns='urn:xmpp:reply:0' to='bob@x' id='m1'/>
//!   <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='5'/></fallback>
//! </message>
//! ```

use crate::ns;
use crate::xml::Element;

/// XEP-0461: the message this one answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The JID of the author of the message answered (optional in the XEP).
    pub to: Option<String>,
    /// Its id.
    pub id: String,
}

/// XEP-0428: a part of the body that is only there for clients without some XEP (a quote of
/// the message replied to, a retraction's explanation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The namespace of the XEP it stands in for.
    pub for_ns: String,
    /// The ranges of the body, in Unicode code points, `[start, end)`; empty means all of it.
    pub ranges: Vec<(usize, usize)>,
}

/// XEP-0444: the sender's whole set of reactions to a message (an empty set removes them all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reactions {
    /// The id of the message reacted to.
    pub id: String,
    /// The reactions, each an emoji.
    pub keys: Vec<String>,
}

pub(super) fn reply(el: &Element) -> Option<Reply> {
    let r = el.child("reply", ns::REPLY)?;
    Some(Reply {
        to: r.attr("to").map(str::to_owned),
        id: r.attr("id")?.to_owned(),
    })
}

pub(super) fn fallbacks(el: &Element) -> Vec<Fallback> {
    el.children()
        .filter(|c| c.is("fallback", ns::FALLBACK))
        .filter_map(|f| {
            let ranges = f
                .children()
                .filter(|b| b.is("body", ns::FALLBACK))
                .filter_map(|b| {
                    let start = b.attr("start")?.parse().ok()?;
                    let end = b.attr("end")?.parse().ok()?;
                    (start <= end).then_some((start, end))
                })
                .collect();
            Some(Fallback {
                for_ns: f.attr("for")?.to_owned(),
                ranges,
            })
        })
        .collect()
}

/// XEP-0308 `<replace id/>`.
pub(super) fn replace(el: &Element) -> Option<String> {
    el.child("replace", ns::CORRECT)
        .and_then(|r| r.attr("id"))
        .map(str::to_owned)
}

/// XEP-0424: `<retract id/>` (version 1), or the older `<apply-to id><retract/></apply-to>`
/// (XEP-0422 fastening, version 0) that clients still send.
pub(super) fn retract(el: &Element) -> Option<String> {
    if let Some(id) = el.child("retract", ns::RETRACT).and_then(|r| r.attr("id")) {
        return Some(id.to_owned());
    }
    let apply = el.child("apply-to", ns::FASTEN)?;
    apply.child("retract", ns::RETRACT_0)?;
    apply.attr("id").map(str::to_owned)
}

pub(super) fn reactions(el: &Element) -> Option<Reactions> {
    let r = el.child("reactions", ns::REACTIONS)?;
    let mut keys: Vec<String> = Vec::new();
    for k in r.children().filter(|c| c.is("reaction", ns::REACTIONS)) {
        let key = k.text();
        if !key.is_empty() && !keys.contains(&key) {
            keys.push(key);
        }
    }
    Some(Reactions {
        id: r.attr("id")?.to_owned(),
        keys,
    })
}

/// XEP-0333 `<displayed id/>`.
pub(super) fn displayed(el: &Element) -> Option<String> {
    el.child("displayed", ns::MARKERS)
        .and_then(|d| d.attr("id"))
        .map(str::to_owned)
}

/// Serializes what is set, in a fixed order.
pub(super) fn push_elements(el: &mut Element, m: &super::Message) {
    if let Some(r) = &m.reply {
        el.push_child(
            Element::new("reply", ns::REPLY)
                .with_opt_attr("to", r.to.clone())
                .with_attr("id", r.id.clone()),
        );
    }
    for f in &m.fallbacks {
        let mut fe = Element::new("fallback", ns::FALLBACK).with_attr("for", f.for_ns.clone());
        for (start, end) in &f.ranges {
            fe.push_child(
                Element::new("body", ns::FALLBACK)
                    .with_attr("start", start.to_string())
                    .with_attr("end", end.to_string()),
            );
        }
        el.push_child(fe);
    }
    if let Some(id) = &m.replace {
        el.push_child(Element::new("replace", ns::CORRECT).with_attr("id", id.clone()));
    }
    if let Some(id) = &m.retract {
        el.push_child(Element::new("retract", ns::RETRACT).with_attr("id", id.clone()));
    }
    if let Some(r) = &m.reactions {
        let mut re = Element::new("reactions", ns::REACTIONS).with_attr("id", r.id.clone());
        for k in &r.keys {
            re.push_child(Element::new("reaction", ns::REACTIONS).with_text(k.clone()));
        }
        el.push_child(re);
    }
    if m.markable {
        el.push_child(Element::new("markable", ns::MARKERS));
    }
    if let Some(id) = &m.displayed {
        el.push_child(Element::new("displayed", ns::MARKERS).with_attr("id", id.clone()));
    }
    if m.store_hint {
        el.push_child(Element::new("store", ns::HINTS));
    }
    if let Some(url) = &m.oob_url {
        el.push_child(
            Element::new("x", ns::OOB)
                .with_child(Element::new("url", ns::OOB).with_text(url.clone())),
        );
    }
}

/// `body` without the parts that are fallbacks for `for_ns` (code-point ranges; a fallback
/// without ranges is the whole body). Ranges past the end are cut at the end.
pub fn strip_fallback(body: &str, fallbacks: &[Fallback], for_ns: &str) -> String {
    let mut cut: Vec<(usize, usize)> = Vec::new();
    for f in fallbacks.iter().filter(|f| f.for_ns == for_ns) {
        if f.ranges.is_empty() {
            return String::new();
        }
        cut.extend(f.ranges.iter().copied());
    }
    if cut.is_empty() {
        return body.to_owned();
    }
    body.chars()
        .enumerate()
        .filter(|(i, _)| !cut.iter().any(|(s, e)| (*s..*e).contains(i)))
        .map(|(_, c)| c)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jid::Jid;
    use crate::stanza::Message;
    use crate::xml::stream::parse_element;

    fn parse(xml: &str) -> Message {
        Message::from_element(&parse_element(xml, ns::CLIENT).unwrap()).unwrap()
    }

    #[test]
    fn a_reply_with_its_quote_marked_as_fallback() {
        let m = parse(
            "<message type='chat' id='r2'><body>&gt; hi ☺\nhello</body>\
             <reply xmlns='urn:xmpp:reply:0' to='bob@x/phone' id='m1'/>\
             <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>\
             <body start='0' end='7'/></fallback></message>",
        );
        let reply = m.reply.clone().unwrap();
        assert_eq!(reply.id, "m1");
        assert_eq!(reply.to.as_deref(), Some("bob@x/phone"));
        assert_eq!(
            strip_fallback(m.body.as_deref().unwrap(), &m.fallbacks, ns::REPLY),
            "hello",
            "code points, not bytes: ☺ is one"
        );
        assert_eq!(
            strip_fallback("x", &m.fallbacks, ns::RETRACT),
            "x",
            "another XEP's fallback is kept"
        );
    }

    #[test]
    fn corrections_retractions_and_reactions_name_the_earlier_message() {
        let m = parse(
            "<message type='chat'><body>fixed</body>\
             <replace xmlns='urn:xmpp:message-correct:0' id='m1'/></message>",
        );
        assert_eq!(m.replace.as_deref(), Some("m1"));
        let m = parse(
            "<message type='chat'><retract xmlns='urn:xmpp:message-retract:1' id='m2'/></message>",
        );
        assert_eq!(m.retract.as_deref(), Some("m2"));
        let m = parse(
            "<message type='chat'><apply-to xmlns='urn:xmpp:fasten:0' id='m3'>\
             <retract xmlns='urn:xmpp:message-retract:0'/></apply-to></message>",
        );
        assert_eq!(m.retract.as_deref(), Some("m3"), "the older fastening form");
        let m = parse(
            "<message type='chat'><reactions xmlns='urn:xmpp:reactions:0' id='m4'>\
             <reaction>👍</reaction><reaction>👍</reaction><reaction></reaction>\
             <reaction>🎉</reaction></reactions></message>",
        );
        assert_eq!(
            m.reactions.unwrap(),
            Reactions {
                id: "m4".into(),
                keys: vec!["👍".into(), "🎉".into()]
            }
        );
        let m = parse(
            "<message type='chat'><reactions xmlns='urn:xmpp:reactions:0' id='m4'/></message>",
        );
        assert!(m.reactions.unwrap().keys.is_empty(), "all removed");
        let m = parse(
            "<message type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='m5'/></message>",
        );
        assert_eq!(m.displayed.as_deref(), Some("m5"));
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let mut m = Message::chat(Jid::parse("bob@x").unwrap(), "> a\nb");
        m.id = Some("i9".into());
        m.reply = Some(Reply {
            to: Some("bob@x".into()),
            id: "m1".into(),
        });
        m.fallbacks = vec![Fallback {
            for_ns: ns::REPLY.into(),
            ranges: vec![(0, 4)],
        }];
        m.markable = true;
        m.store_hint = true;
        let xml = m.to_element().to_xml();
        assert!(
            xml.contains("<reply xmlns='urn:xmpp:reply:0' to='bob@x' id='m1'/>"),
            "{xml}"
        );
        assert_eq!(parse(&xml), m);
        let mut r = Message::chat(Jid::parse("bob@x").unwrap(), "");
        r.body = None;
        r.reactions = Some(Reactions {
            id: "m1".into(),
            keys: vec!["👍".into()],
        });
        r.replace = Some("m2".into());
        r.retract = Some("m3".into());
        r.displayed = Some("m4".into());
        r.oob_url = Some("https://up.example/cat.png".into());
        assert_eq!(parse(&r.to_element().to_xml()), r);
    }
}
