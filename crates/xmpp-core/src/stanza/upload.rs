//! XEP-0363 HTTP file upload: a slot on the user's server (a PUT URL to send the file to, a GET
//! URL to share), and how the service is found (XEP-0030 items of the server).
//!
//! ```xml
//! <request xmlns='urn:xmpp:http:upload:0' filename='a.jpg' size='23456' content-type='image/jpeg'/>
//! <slot xmlns='urn:xmpp:http:upload:0'>
//!   <put url='https://up.x/a.jpg'><header name='Authorization'>Basic …</header></put>
//!   <get url='https://up.x/a.jpg'/>
//! </slot>
//! ```

use crate::jid::Jid;
use crate::ns;
use crate::xml::Element;

/// An upload service the user's server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadService {
    /// Where to ask for slots.
    pub jid: Jid,
    /// The largest file it takes, when it says.
    pub max_size: Option<u64>,
}

/// Where to put a file and where it can then be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// `https://…` (or `http://`) to PUT the bytes to.
    pub put: String,
    /// Headers to send with the PUT (only the ones XEP-0363 allows).
    pub headers: Vec<(String, String)>,
    /// The URL to share.
    pub get: String,
}

/// The payload of a slot request.
pub fn slot_request(filename: &str, size: u64, content_type: &str) -> Element {
    Element::new("request", ns::HTTP_UPLOAD)
        .with_attr("filename", filename.to_owned())
        .with_attr("size", size.to_string())
        .with_attr("content-type", content_type.to_owned())
}

/// The slot in an answer, when it is one with HTTP(S) URLs.
pub fn parse_slot(payload: Option<&Element>) -> Option<Slot> {
    let slot = payload.filter(|p| p.is("slot", ns::HTTP_UPLOAD))?;
    let put = slot.child("put", ns::HTTP_UPLOAD)?;
    let get = slot.child("get", ns::HTTP_UPLOAD)?.attr("url")?;
    let put_url = put.attr("url")?;
    let web = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    if !web(put_url) || !web(get) {
        return None;
    }
    let headers = put
        .children()
        .filter(|h| h.is("header", ns::HTTP_UPLOAD))
        .filter_map(|h| {
            let name = h.attr("name")?;
            // XEP-0363 §5: only these; anything else is dropped, and no line breaks.
            let allowed = ["authorization", "cookie", "expires"]
                .contains(&name.to_ascii_lowercase().as_str());
            let value = h.text();
            (allowed && !value.contains(['\r', '\n'])).then(|| (name.to_owned(), value))
        })
        .collect();
    Some(Slot {
        put: put_url.to_owned(),
        headers,
        get: get.to_owned(),
    })
}

/// The service's size limit from its disco#info answer (the XEP-0128 form).
pub fn max_size(info: Option<&Element>) -> Option<u64> {
    info?
        .children()
        .filter(|x| x.is("x", ns::DATA))
        .flat_map(Element::children)
        .find(|f| f.attr("var") == Some("max-file-size"))
        .and_then(|f| f.child_text("value", ns::DATA))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    #[test]
    fn a_slot_keeps_only_the_allowed_headers() {
        let el = parse_element(
            "<slot xmlns='urn:xmpp:http:upload:0'><put url='https://up.x/a'>\
             <header name='Authorization'>Basic Zm9v</header><header name='Host'>evil</header>\
             </put><get url='https://up.x/a'/></slot>",
            ns::CLIENT,
        )
        .unwrap();
        let slot = parse_slot(Some(&el)).unwrap();
        assert_eq!(slot.put, "https://up.x/a");
        assert_eq!(slot.get, "https://up.x/a");
        assert_eq!(
            slot.headers,
            vec![("Authorization".into(), "Basic Zm9v".into())]
        );
        let ftp = parse_element(
            "<slot xmlns='urn:xmpp:http:upload:0'><put url='ftp://up.x/a'/><get url='https://up.x/a'/></slot>",
            ns::CLIENT,
        )
        .unwrap();
        assert_eq!(parse_slot(Some(&ftp)), None);
    }

    #[test]
    fn the_size_limit_comes_from_the_form() {
        let el = parse_element(
            "<query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:http:upload:0'/>\
             <x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:http:upload:0</value></field>\
             <field var='max-file-size'><value>209715200</value></field></x></query>",
            ns::CLIENT,
        )
        .unwrap();
        assert_eq!(max_size(Some(&el)), Some(209_715_200));
        assert_eq!(
            slot_request("a b.txt", 5, "text/plain").to_xml(),
            "<request xmlns='urn:xmpp:http:upload:0' filename='a b.txt' size='5' content-type='text/plain'/>"
        );
    }
}
