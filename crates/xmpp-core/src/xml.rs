//! XML for XMPP streams: the element tree, the incremental stream parser, and the writer side.

pub mod element;
pub mod stream;

pub use element::{Element, Node};
pub use stream::{SkippedStanza, StreamEvent, StreamHeader, StreamLimits, StreamParser, XmlError};

/// The opening of a client stream to `domain` (RFC 6120 §4.7). `from` is omitted: the Messenger
/// service assigns our identity from the token, and before TLS it must not be disclosed.
pub fn stream_header(domain: &str) -> String {
    let mut out = String::from("<?xml version='1.0'?><stream:stream to='");
    element::escape_into(&mut out, domain);
    out.push_str(
        "' version='1.0' xml:lang='en' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    out
}

/// The end of a stream (RFC 6120 §4.4).
pub const STREAM_CLOSE: &str = "</stream:stream>";
