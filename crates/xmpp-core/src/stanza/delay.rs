//! XEP-0203 delayed delivery (and the legacy XEP-0091 `jabber:x:delay` some servers still add).
//!
//! ```xml
//! <delay xmlns='urn:xmpp:delay' from='capulet.com' stamp='2002-09-10T23:08:25Z'>Offline Storage</delay>
//! <x xmlns='jabber:x:delay' stamp='20020910T23:08:25'/>
//! ```

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::ParseError;
use crate::ns;
use crate::xml::Element;

const LEGACY_NS: &str = "jabber:x:delay";

/// When a stanza was originally sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delay {
    /// The original time (XEP-0082 DateTime, UTC).
    pub stamp: OffsetDateTime,
    /// Who delayed it (the server, usually).
    pub from: Option<String>,
    /// Why (`Offline Storage`).
    pub reason: Option<String>,
}

impl Delay {
    /// The delay among a stanza's children. XEP-0203 wins over the legacy form; when a stanza
    /// carries several XEP-0203 delays (each hop adds one) the earliest is the original time.
    pub fn from_children(stanza: &Element) -> Result<Option<Self>, ParseError> {
        let mut best: Option<Self> = None;
        for c in stanza.children().filter(|c| c.is("delay", ns::DELAY)) {
            let d = Self::parse(c)?;
            if best.as_ref().is_none_or(|b| d.stamp < b.stamp) {
                best = Some(d);
            }
        }
        if best.is_some() {
            return Ok(best);
        }
        stanza
            .child("x", LEGACY_NS)
            .map(Self::parse_legacy)
            .transpose()
    }

    fn parse(el: &Element) -> Result<Self, ParseError> {
        let stamp = el
            .attr("stamp")
            .ok_or_else(|| ParseError::new("delay", "no stamp"))?;
        let stamp = OffsetDateTime::parse(stamp, &Rfc3339)
            .map_err(|e| ParseError::new("delay", format!("bad stamp {stamp:?}: {e}")))?;
        let reason = Some(el.text()).filter(|t| !t.is_empty());
        Ok(Self {
            stamp,
            from: el.attr("from").map(str::to_owned),
            reason,
        })
    }

    fn parse_legacy(el: &Element) -> Result<Self, ParseError> {
        let raw = el
            .attr("stamp")
            .ok_or_else(|| ParseError::new("x", "no stamp"))?;
        let format = format_description!("[year][month][day]T[hour]:[minute]:[second]");
        let stamp = PrimitiveDateTime::parse(raw, format)
            .map_err(|e| ParseError::new("x", format!("bad legacy stamp {raw:?}: {e}")))?
            .assume_utc();
        let reason = Some(el.text()).filter(|t| !t.is_empty());
        Ok(Self {
            stamp,
            from: el.attr("from").map(str::to_owned),
            reason,
        })
    }

    /// Milliseconds since the Unix epoch (what Matrix's `ts` wants).
    pub fn unix_millis(&self) -> i64 {
        (self.stamp.unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// `<delay xmlns='urn:xmpp:delay' stamp='…'/>`.
    pub fn to_element(&self) -> Element {
        let stamp = self.stamp.format(&Rfc3339).unwrap_or_default();
        let mut el = Element::new("delay", ns::DELAY).with_attr("stamp", stamp);
        if let Some(f) = &self.from {
            el.set_attr("from", f.clone());
        }
        if let Some(r) = &self.reason {
            el.push_text(r.clone());
        }
        el
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    fn msg(inner: &str) -> Element {
        parse_element(&format!("<message>{inner}</message>"), ns::CLIENT).unwrap()
    }

    #[test]
    fn parses_xep_0203_with_fraction_and_offset() {
        let m = msg(
            "<delay xmlns='urn:xmpp:delay' from='x.org' stamp='2002-09-10T23:08:25.123+02:00'>Offline Storage</delay>",
        );
        let d = Delay::from_children(&m).unwrap().unwrap();
        assert_eq!(d.unix_millis(), 1_031_692_105_123);
        assert_eq!(d.from.as_deref(), Some("x.org"));
        assert_eq!(d.reason.as_deref(), Some("Offline Storage"));
    }

    #[test]
    fn earliest_of_several_and_legacy_fallback() {
        let m = msg(
            "<delay xmlns='urn:xmpp:delay' stamp='2020-01-01T00:00:10Z'/>\
                     <delay xmlns='urn:xmpp:delay' stamp='2020-01-01T00:00:05Z'/>",
        );
        assert_eq!(
            Delay::from_children(&m).unwrap().unwrap().unix_millis(),
            1_577_836_805_000
        );
        let legacy = msg("<x xmlns='jabber:x:delay' stamp='20020910T23:08:25'/>");
        assert_eq!(
            Delay::from_children(&legacy)
                .unwrap()
                .unwrap()
                .unix_millis(),
            1_031_699_305_000
        );
        assert_eq!(Delay::from_children(&msg("<body>x</body>")).unwrap(), None);
    }

    #[test]
    fn bad_stamps_are_errors() {
        assert!(
            Delay::from_children(&msg("<delay xmlns='urn:xmpp:delay' stamp='yesterday'/>"))
                .is_err()
        );
        assert!(Delay::from_children(&msg("<delay xmlns='urn:xmpp:delay'/>")).is_err());
    }

    #[test]
    fn round_trips() {
        let m = msg("<delay xmlns='urn:xmpp:delay' stamp='2021-05-06T07:08:09Z'/>");
        let d = Delay::from_children(&m).unwrap().unwrap();
        let back = Element::new("message", ns::CLIENT).with_child(d.to_element());
        assert_eq!(Delay::from_children(&back).unwrap().unwrap(), d);
    }
}
