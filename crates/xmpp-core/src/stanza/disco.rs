//! XEP-0030 service discovery, the information part: which protocols an entity supports.
//!
//! ```xml
//! <iq type='get' to='x' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>
//! <iq type='result' from='x' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'>
//!   <identity category='server' type='im'/><feature var='urn:xmpp:carbons:2'/>
//! </query></iq>
//! ```

use crate::ns;
use crate::xml::Element;

/// The payload of a disco#info request.
pub fn info_query() -> Element {
    Element::new("query", ns::DISCO_INFO)
}

/// The payload of a disco#items request.
pub fn items_query() -> Element {
    Element::new("query", ns::DISCO_ITEMS)
}

/// The JIDs in a disco#items answer (at most `max`).
pub fn items(payload: Option<&Element>, max: usize) -> Vec<crate::jid::Jid> {
    payload
        .filter(|p| p.is("query", ns::DISCO_ITEMS))
        .map(|q| {
            q.children()
                .filter(|c| c.is("item", ns::DISCO_ITEMS))
                .filter_map(|c| crate::jid::Jid::parse(c.attr("jid")?).ok())
                .take(max)
                .collect()
        })
        .unwrap_or_default()
}

/// The payload of a disco#info request about a node (XEP-0115: `node#ver`).
pub fn info_query_node(node: &str) -> Element {
    Element::new("query", ns::DISCO_INFO).with_attr("node", node.to_owned())
}

/// The `var`s of the features in a disco#info answer (empty when it is not one).
pub fn features(payload: Option<&Element>) -> Vec<String> {
    payload
        .filter(|p| p.is("query", ns::DISCO_INFO))
        .map(|q| {
            q.children()
                .filter(|c| c.is("feature", ns::DISCO_INFO))
                .filter_map(|c| c.attr("var").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What the bridge uses of a server, found by discovery after login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFeatures {
    /// XEP-0280 message carbons (offered by the server).
    pub carbons: bool,
    /// XEP-0313 message archive of the account (offered on its bare JID).
    pub archive: bool,
    /// XEP-0363 HTTP file upload (a service among the server's items).
    pub upload: Option<super::UploadService>,
}

impl ServerFeatures {
    /// From the features of the server (`server`) and of the account's bare JID (`account`).
    pub fn from_features(server: &[String], account: &[String]) -> Self {
        Self {
            carbons: server.iter().any(|f| f == ns::CARBONS),
            archive: account.iter().chain(server).any(|f| f == ns::MAM),
            upload: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    #[test]
    fn features_are_read_from_the_answer() {
        let q = parse_element(
            "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' \
             type='im'/><feature var='urn:xmpp:carbons:2'/><feature var='jabber:iq:version'/>\
             </query>",
            ns::CLIENT,
        )
        .unwrap();
        let server = features(Some(&q));
        assert_eq!(server, vec!["urn:xmpp:carbons:2", "jabber:iq:version"]);
        let account = vec![ns::MAM.to_owned()];
        assert_eq!(
            ServerFeatures::from_features(&server, &account),
            ServerFeatures {
                carbons: true,
                archive: true,
                upload: None,
            }
        );
        assert_eq!(
            ServerFeatures::from_features(&[], &[]),
            ServerFeatures::default()
        );
    }
}
