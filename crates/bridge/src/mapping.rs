//! The mapping rules between XMPP and Matrix, as plain functions (no I/O), per the mapping
//! table in ARCHITECTURE.md.

use ruma::presence::PresenceState;
use serde_json::{Value, json};
use xmpp_core::stanza::{ChatState, Presence, PresenceType, Show};

/// An XMPP message body as Matrix `m.room.message` content: `/me ` becomes `m.emote`, and
/// XEP-0393 styling is also given as HTML (the body keeps its marks).
pub fn xmpp_body_to_matrix(body: &str) -> Value {
    let (msgtype, text) = match body.strip_prefix("/me ") {
        Some(action) => ("m.emote", action),
        None => ("m.text", body),
    };
    let mut content = json!({"msgtype": msgtype, "body": text});
    if let Some(html) = crate::styling::styled_to_html(text) {
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(html);
    }
    content
}

/// A notice for the portal (errors, delivery failures).
pub fn notice(text: &str) -> Value {
    json!({"msgtype": "m.notice", "body": text})
}

/// Matrix `m.room.message` content as an XMPP body. `None` for content we cannot express (the
/// caller answers with a notice). A file is its name or caption (the link to it is the
/// bridge's: see `media`). With `styled` (the contact's server is a standard one) HTML becomes
/// XEP-0393 styling; without, the plain `body` is sent, which already carries the user's marks.
pub fn matrix_to_xmpp_body(content: &Value, styled: bool) -> Option<String> {
    let msgtype = content.get("msgtype")?.as_str()?;
    let body = content.get("body").and_then(Value::as_str).unwrap_or("");
    let is_html = content.get("format").and_then(Value::as_str) == Some("org.matrix.custom.html");
    let text = match content.get("formatted_body").and_then(Value::as_str) {
        Some(html) if is_html && styled => crate::styling::html_to_styled(html)
            .unwrap_or_else(|| strip_reply_fallback(body, content)),
        _ => strip_reply_fallback(body, content),
    };
    match msgtype {
        "m.text" | "m.notice" => Some(text),
        "m.emote" => Some(format!("/me {text}")),
        "m.image" | "m.file" | "m.video" | "m.audio" => Some(body.to_owned()),
        _ => (!body.is_empty()).then(|| body.to_owned()),
    }
}

/// Drops the `> <@user> quoted` lines clients put in front of replies (their HTML has
/// `<mx-reply>` instead, which [`crate::styling::html_to_styled`] drops).
fn strip_reply_fallback(body: &str, content: &Value) -> String {
    let is_reply = content.pointer("/m.relates_to/m.in_reply_to").is_some();
    if !is_reply {
        return body.to_owned();
    }
    let mut lines = body.lines().peekable();
    while lines
        .peek()
        .is_some_and(|l| l.starts_with("> ") || *l == ">")
    {
        lines.next();
    }
    if lines.peek().is_some_and(|l| l.is_empty()) {
        lines.next();
    }
    lines.collect::<Vec<_>>().join("\n")
}

/// A file in a Matrix message: its `mxc://` URI, name, type, and the caption when the body is
/// one (Matrix 1.10: a `filename` that differs from the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixFile {
    /// `mxc://server/id`.
    pub mxc: String,
    /// The file name.
    pub name: String,
    /// The declared type.
    pub mime: String,
    /// The caption.
    pub caption: Option<String>,
}

/// The file a message carries, if any (unencrypted: an encrypted one has `file`, not `url`).
pub fn matrix_file(content: &Value) -> Option<MatrixFile> {
    let msgtype = content.get("msgtype")?.as_str()?;
    if !matches!(msgtype, "m.image" | "m.file" | "m.video" | "m.audio") {
        return None;
    }
    let mxc = content.get("url")?.as_str()?.to_owned();
    // Strictly `mxc://<server name>/<[A-Za-z0-9_-]+>`: the bridge fetches it with its own
    // token, so nothing else may reach the homeserver's URL.
    if !<&ruma::MxcUri>::from(mxc.as_str()).is_valid() {
        return None;
    }
    let body = content.get("body").and_then(Value::as_str).unwrap_or("");
    let filename = content.get("filename").and_then(Value::as_str);
    let name = filename.unwrap_or(body);
    Some(MatrixFile {
        mxc,
        name: if name.is_empty() {
            "file".into()
        } else {
            name.to_owned()
        },
        mime: content
            .pointer("/info/mimetype")
            .and_then(Value::as_str)
            .unwrap_or("application/octet-stream")
            .to_owned(),
        caption: filename
            .filter(|f| *f != body && !body.is_empty())
            .map(|_| body.to_owned()),
    })
}

/// The first line of `text`, cut to `max` characters (with "…" when cut): what a quote or a
/// reaction fallback shows of a message.
pub fn excerpt(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() <= max {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Splits text into parts of at most `max_bytes`, at line breaks or spaces where possible,
/// never inside a character.
pub fn split_text(text: &str, max_bytes: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max_bytes {
        let mut cut = max_bytes;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let window = &rest[..cut];
        let at = window
            .rfind('\n')
            .or_else(|| window.rfind(' '))
            .filter(|&i| i > max_bytes / 2)
            .map_or(cut, |i| i + 1);
        parts.push(rest[..at].trim_end().to_owned());
        rest = &rest[at..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest.to_owned());
    }
    parts
}

/// A contact's XMPP presence as Matrix presence and status message.
pub fn xmpp_presence_to_matrix(p: &Presence) -> (PresenceState, Option<String>) {
    let state = match (p.kind, p.show) {
        (PresenceType::Available, None | Some(Show::Chat)) => PresenceState::Online,
        (PresenceType::Available, Some(Show::Away | Show::Xa | Show::Dnd)) => {
            PresenceState::Unavailable
        }
        _ => PresenceState::Offline,
    };
    let status = match (p.show, &p.status) {
        (Some(Show::Dnd), Some(s)) => Some(format!("Busy: {s}")),
        (Some(Show::Dnd), None) => Some("Busy".to_owned()),
        (_, s) => s.clone(),
    };
    (state, status)
}

/// The linked user's Matrix presence as their XMPP presence. Going offline on Matrix keeps the
/// XMPP session (messages must still arrive) and shows "extended away".
pub fn matrix_presence_to_xmpp(state: &str, status: Option<String>) -> Presence {
    let show = match state {
        "online" => None,
        "unavailable" => Some(Show::Away),
        _ => Some(Show::Xa),
    };
    Presence::available(show, status)
}

/// Whether a chat state means "typing".
pub fn chat_state_is_typing(state: ChatState) -> bool {
    state == ChatState::Composing
}

/// Whether a message id is one the bridge gives what it sends to XMPP: `mx` and 16 hex
/// digits (a hash of the Matrix event id), and `-<part>` for a split message.
/// What the message map holds for a reaction the bridge sent to XMPP:
/// `react:<id reacted to>:<hash>`, so its later redaction finds the message again. A contact's
/// message with an id like that is not kept in the map.
pub(crate) const REACTION_ID_PREFIX: &str = "react:";

/// The id the message map keeps for a part of a split message the bridge sent (`mx…-2` →
/// `mx…`): its first part's.
pub(crate) fn first_part_id(id: &str) -> Option<&str> {
    let (base, _) = id.rsplit_once('-')?;
    is_bridge_message_id(id).then_some(base)
}

pub fn is_bridge_message_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("mx") else {
        return false;
    };
    let (hash, part) = rest.split_once('-').unwrap_or((rest, "0"));
    hash.len() == 16
        && hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && !part.is_empty()
        && part.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn me_prefix_becomes_emote_and_back() {
        assert_eq!(
            xmpp_body_to_matrix("/me waves"),
            json!({"msgtype": "m.emote", "body": "waves"})
        );
        assert_eq!(
            xmpp_body_to_matrix("hi /me"),
            json!({"msgtype": "m.text", "body": "hi /me"})
        );
        let emote = json!({"msgtype": "m.emote", "body": "waves"});
        assert_eq!(
            matrix_to_xmpp_body(&emote, true).as_deref(),
            Some("/me waves")
        );
    }

    #[test]
    fn html_is_styled_for_standard_servers_and_plain_for_messenger() {
        let content = json!({
            "msgtype": "m.text", "body": "**bold** [x](https://x.org)",
            "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply><blockquote>old</blockquote></mx-reply><p><strong>bold</strong> <a href=\"https://x.org\">x</a></p>"
        });
        assert_eq!(
            matrix_to_xmpp_body(&content, true).unwrap(),
            "*bold* x (https://x.org)"
        );
        assert_eq!(
            matrix_to_xmpp_body(&content, false).unwrap(),
            "**bold** [x](https://x.org)",
            "the plain body keeps the marks"
        );
    }

    #[test]
    fn styling_from_xmpp_is_also_given_as_html() {
        assert_eq!(
            xmpp_body_to_matrix("a *b*"),
            json!({"msgtype": "m.text", "body": "a *b*", "format": "org.matrix.custom.html", "formatted_body": "a <strong>b</strong>"})
        );
        assert_eq!(
            xmpp_body_to_matrix("/me _waves_"),
            json!({"msgtype": "m.emote", "body": "_waves_", "format": "org.matrix.custom.html", "formatted_body": "<em>waves</em>"})
        );
        assert!(xmpp_body_to_matrix("2 * 3").get("formatted_body").is_none());
    }

    #[test]
    fn plain_reply_fallback_is_dropped() {
        let content = json!({"msgtype": "m.text", "body": "> <@bob:x> old\n> more\n\nnew text", "m.relates_to": {"m.in_reply_to": {"event_id": "$e"}}});
        assert_eq!(matrix_to_xmpp_body(&content, true).unwrap(), "new text");
    }

    #[test]
    fn files_are_found_and_unknown_types_need_a_body() {
        let image = json!({"msgtype": "m.image", "body": "cat.png", "url": "mxc://hs.org/abc", "info": {"mimetype": "image/png"}});
        assert_eq!(matrix_to_xmpp_body(&image, true).unwrap(), "cat.png");
        assert_eq!(
            matrix_file(&image),
            Some(MatrixFile {
                mxc: "mxc://hs.org/abc".into(),
                name: "cat.png".into(),
                mime: "image/png".into(),
                caption: None
            })
        );
        let captioned = json!({"msgtype": "m.file", "body": "the report", "filename": "r.pdf", "url": "mxc://hs.org/r"});
        let file = matrix_file(&captioned).unwrap();
        assert_eq!(
            (file.name.as_str(), file.caption.as_deref()),
            ("r.pdf", Some("the report"))
        );
        assert_eq!(
            matrix_file(&json!({"msgtype": "m.image", "body": "x", "file": {"url": "mxc://e/x"}})),
            None,
            "encrypted files are not fetched"
        );
        for bad in [
            "mxc://..\\..\\client\\v3\\joined_rooms?a=/",
            "mxc://hs.org/../../client/v3/sync",
            "mxc://hs.org/a%2e%2e",
            "mxc://hs.org/a/b",
            "mxc:///abc",
        ] {
            assert_eq!(
                matrix_file(&json!({"msgtype": "m.file", "body": "x", "url": bad})),
                None,
                "{bad}"
            );
        }
        assert_eq!(
            matrix_to_xmpp_body(&json!({"msgtype": "m.location", "body": ""}), true),
            None
        );
        assert_eq!(matrix_to_xmpp_body(&json!({"body": "no type"}), true), None);
    }

    #[test]
    fn bridge_message_ids_are_recognised() {
        assert!(is_bridge_message_id("mx0123456789abcdef"));
        assert!(is_bridge_message_id("mx0123456789abcdef-2"));
        for other in [
            "mx",
            "mxyz",
            "mx0123456789ABCDEF",
            "mx0123456789abcdef-",
            "m1",
            "mx0123456789abcde",
        ] {
            assert!(!is_bridge_message_id(other), "{other}");
        }
    }

    #[test]
    fn split_respects_limits_words_and_characters() {
        let text = "word ".repeat(100);
        let parts = split_text(&text, 64);
        assert!(parts.iter().all(|p| p.len() <= 64));
        assert_eq!(parts.concat().replace(' ', ""), text.replace(' ', ""));
        let emoji = "☺".repeat(50); // 3 bytes each
        let parts = split_text(&emoji, 10);
        assert!(
            parts
                .iter()
                .all(|p| p.len() <= 10 && p.chars().all(|c| c == '☺'))
        );
        assert_eq!(parts.concat(), emoji);
        assert_eq!(split_text("short", 64), vec!["short"]);
    }

    #[test]
    fn presence_mapping() {
        let mut p = Presence::available(Some(Show::Dnd), Some("meeting".into()));
        assert_eq!(
            xmpp_presence_to_matrix(&p),
            (PresenceState::Unavailable, Some("Busy: meeting".into()))
        );
        p.show = None;
        assert_eq!(xmpp_presence_to_matrix(&p).0, PresenceState::Online);
        assert_eq!(
            xmpp_presence_to_matrix(&Presence::unavailable()).0,
            PresenceState::Offline
        );
        assert_eq!(
            matrix_presence_to_xmpp("unavailable", None).show,
            Some(Show::Away)
        );
        assert_eq!(
            matrix_presence_to_xmpp("online", Some("hi".into()))
                .status
                .as_deref(),
            Some("hi")
        );
    }
}
