//! XEP-0054 vcard-temp, read only: full name, nickname and photo.
//!
//! ```xml
//! <vCard xmlns='vcard-temp'><FN>Bob Builder</FN><NICKNAME>bob</NICKNAME>
//!   <PHOTO><TYPE>image/png</TYPE><BINVAL>iVBORw0…</BINVAL></PHOTO></vCard>
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::ParseError;
use crate::ns;
use crate::xml::Element;

/// The parts of a vCard the bridge uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VCard {
    /// `FN`.
    pub full_name: Option<String>,
    /// `NICKNAME`.
    pub nickname: Option<String>,
    /// `PHOTO` with inline data (`EXTVAL` links are not fetched).
    pub photo: Option<Photo>,
}

/// An inline vCard photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Photo {
    /// `TYPE`, e.g. `image/png`.
    pub mime: String,
    /// The decoded `BINVAL` bytes.
    pub data: Vec<u8>,
}

/// The `<vCard xmlns='vcard-temp'/>` of a vCard get.
pub fn query() -> Element {
    Element::new("vCard", ns::VCARD)
}

impl VCard {
    /// Parses a vCard result payload. A missing vCard (empty result) is the default.
    pub fn from_element(el: &Element) -> Result<Self, ParseError> {
        if !el.is("vCard", ns::VCARD) {
            return Err(ParseError::new(
                "vCard",
                format!("not a vCard: <{}>", el.name()),
            ));
        }
        let text = |name: &str| {
            el.child_text(name, ns::VCARD)
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        };
        let photo = match el.child("PHOTO", ns::VCARD) {
            Some(p) => match p.child_text("BINVAL", ns::VCARD) {
                Some(b64) => {
                    // BINVAL is often wrapped at 76 columns (RFC 2045 style).
                    let compact: String =
                        b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                    let data = STANDARD
                        .decode(compact.as_bytes())
                        .map_err(|e| ParseError::new("vCard", format!("bad PHOTO BINVAL: {e}")))?;
                    let mime = p
                        .child_text("TYPE", ns::VCARD)
                        .map(|t| t.trim().to_owned())
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| sniff_mime(&data).to_owned());
                    (!data.is_empty()).then_some(Photo { mime, data })
                }
                None => None,
            },
            None => None,
        };
        Ok(Self {
            full_name: text("FN"),
            nickname: text("NICKNAME"),
            photo,
        })
    }

    /// The best display name: FN, else NICKNAME.
    pub fn display_name(&self) -> Option<&str> {
        self.full_name.as_deref().or(self.nickname.as_deref())
    }
}

fn sniff_mime(data: &[u8]) -> &'static str {
    if data.starts_with(b"\x89PNG") {
        "image/png"
    } else if data.starts_with(b"\xff\xd8") {
        "image/jpeg"
    } else if data.starts_with(b"GIF8") {
        "image/gif"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    #[test]
    fn parses_name_nick_and_wrapped_photo() {
        let el = parse_element(
            "<vCard xmlns='vcard-temp'><FN> Bob Builder </FN><NICKNAME>bob</NICKNAME>\
             <PHOTO><BINVAL>iVBO\n Rw==</BINVAL></PHOTO></vCard>",
            ns::CLIENT,
        )
        .unwrap();
        let v = VCard::from_element(&el).unwrap();
        assert_eq!(v.display_name(), Some("Bob Builder"));
        assert_eq!(v.nickname.as_deref(), Some("bob"));
        let photo = v.photo.unwrap();
        assert_eq!(photo.data, b"\x89PNG");
        assert_eq!(photo.mime, "image/png");
    }

    #[test]
    fn empty_vcard_and_bad_photo() {
        let el = parse_element("<vCard xmlns='vcard-temp'/>", ns::CLIENT).unwrap();
        assert_eq!(VCard::from_element(&el).unwrap(), VCard::default());
        let el = parse_element(
            "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>!!!</BINVAL></PHOTO></vCard>",
            ns::CLIENT,
        )
        .unwrap();
        assert!(VCard::from_element(&el).is_err());
    }
}
