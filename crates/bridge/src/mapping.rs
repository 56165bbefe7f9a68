//! The mapping rules between XMPP and Matrix, as plain functions (no I/O), per the mapping
//! table in ARCHITECTURE.md.

use ruma::presence::PresenceState;
use serde_json::{Value, json};
use xmpp_core::stanza::{ChatState, Presence, PresenceType, Show};

/// An XMPP message body as Matrix `m.room.message` content: `/me ` becomes `m.emote`.
pub fn xmpp_body_to_matrix(body: &str) -> Value {
    match body.strip_prefix("/me ") {
        Some(action) => json!({"msgtype": "m.emote", "body": action}),
        None => json!({"msgtype": "m.text", "body": body}),
    }
}

/// A notice for the portal (errors, delivery failures).
pub fn notice(text: &str) -> Value {
    json!({"msgtype": "m.notice", "body": text})
}

/// Matrix `m.room.message` content as an XMPP body. `None` for content we cannot express (the
/// caller answers with a notice). `media_base` turns `mxc://` URLs into links.
pub fn matrix_to_xmpp_body(content: &Value, media_base: &str) -> Option<String> {
    let msgtype = content.get("msgtype")?.as_str()?;
    let body = content.get("body").and_then(Value::as_str).unwrap_or("");
    let is_html = content.get("format").and_then(Value::as_str) == Some("org.matrix.custom.html");
    let text = match content.get("formatted_body").and_then(Value::as_str) {
        Some(html) if is_html => html_to_text(html),
        _ => strip_reply_fallback(body, content),
    };
    match msgtype {
        "m.text" | "m.notice" => Some(text),
        "m.emote" => Some(format!("/me {text}")),
        "m.image" | "m.file" | "m.video" | "m.audio" => {
            let url = content
                .get("url")
                .and_then(Value::as_str)
                .map(|u| mxc_to_http(u, media_base));
            Some(match url {
                Some(u) => format!("{body} {u}"),
                None => body.to_owned(),
            })
        }
        _ => (!body.is_empty()).then(|| body.to_owned()),
    }
}

fn mxc_to_http(mxc: &str, media_base: &str) -> String {
    match mxc.strip_prefix("mxc://") {
        Some(rest) => format!(
            "{}/_matrix/client/v1/media/download/{rest}",
            media_base.trim_end_matches('/')
        ),
        None => mxc.to_owned(),
    }
}

/// Drops the `> <@user> quoted` lines clients put in front of replies (their HTML has
/// `<mx-reply>` instead, which [`html_to_text`] drops).
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

/// Reduces Matrix HTML to readable plain text: tags dropped, line breaks kept, links as
/// `text (url)`, lists as bullets, entities decoded, reply fallbacks removed.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    let mut skip_depth = 0usize; // inside <mx-reply>
    let mut link: Option<String> = None;
    let mut link_text_start = 0;
    while let Some(lt) = rest.find('<') {
        if skip_depth == 0 {
            decode_entities_into(&mut out, &rest[..lt]);
        }
        let Some(gt) = rest[lt..].find('>') else {
            rest = &rest[lt..];
            break;
        };
        let tag = &rest[lt + 1..lt + gt];
        rest = &rest[lt + gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if name == "mx-reply" {
            skip_depth = if closing {
                skip_depth.saturating_sub(1)
            } else {
                skip_depth + 1
            };
            continue;
        }
        if skip_depth > 0 {
            continue;
        }
        match (name.as_str(), closing) {
            ("br", _) => out.push('\n'),
            (
                "p" | "div" | "blockquote" | "pre" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul"
                | "ol",
                true,
            ) if !out.ends_with('\n') => out.push('\n'),
            ("li", false) => {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str("• ");
            }
            ("a", false) => {
                link = attr_value(tag, "href");
                link_text_start = out.len();
            }
            ("a", true) => {
                if let Some(href) = link.take() {
                    let text = &out[link_text_start..];
                    if text != href && !href.starts_with("https://matrix.to/") {
                        out.push_str(&format!(" ({href})"));
                    }
                }
            }
            _ => {}
        }
    }
    if skip_depth == 0 {
        decode_entities_into(&mut out, rest);
    }
    out.trim_end().to_owned()
}

fn attr_value(tag: &str, name: &str) -> Option<String> {
    let i = tag.find(&format!("{name}="))?;
    let v = &tag[i + name.len() + 1..];
    let quote = v.chars().next()?;
    if quote == '"' || quote == '\'' {
        let end = v[1..].find(quote)?;
        let mut s = String::new();
        decode_entities_into(&mut s, &v[1..1 + end]);
        Some(s)
    } else {
        Some(v.split_whitespace().next()?.to_owned())
    }
}

fn decode_entities_into(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let decoded = after.find(';').filter(|&semi| semi <= 10).and_then(|semi| {
            let name = &after[..semi];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some(' '),
                n if n.starts_with("#x") || n.starts_with("#X") => u32::from_str_radix(&n[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            }?;
            Some((ch, semi))
        });
        match decoded {
            Some((ch, semi)) => {
                out.push(ch);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
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
            matrix_to_xmpp_body(&emote, "https://hs").as_deref(),
            Some("/me waves")
        );
    }

    #[test]
    fn html_is_reduced_to_clean_text() {
        let content = json!({
            "msgtype": "m.text", "body": "**bold** [x](https://x.org)",
            "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply><blockquote>old</blockquote></mx-reply><p><strong>bold</strong> &amp; <a href=\"https://x.org\">x</a></p><ul><li>one</li><li>two</li></ul>a<br/>b &lt;3 &#x263A;"
        });
        assert_eq!(
            matrix_to_xmpp_body(&content, "https://hs").unwrap(),
            "bold & x (https://x.org)\n• one\n• two\na\nb <3 ☺"
        );
    }

    #[test]
    fn plain_reply_fallback_is_dropped() {
        let content = json!({"msgtype": "m.text", "body": "> <@bob:x> old\n> more\n\nnew text", "m.relates_to": {"m.in_reply_to": {"event_id": "$e"}}});
        assert_eq!(
            matrix_to_xmpp_body(&content, "https://hs").unwrap(),
            "new text"
        );
    }

    #[test]
    fn media_becomes_a_link_and_unknown_types_need_a_body() {
        let image = json!({"msgtype": "m.image", "body": "cat.png", "url": "mxc://hs.org/abc"});
        assert_eq!(
            matrix_to_xmpp_body(&image, "https://hs.org/").unwrap(),
            "cat.png https://hs.org/_matrix/client/v1/media/download/hs.org/abc"
        );
        assert_eq!(
            matrix_to_xmpp_body(&json!({"msgtype": "m.location", "body": ""}), "x"),
            None
        );
        assert_eq!(matrix_to_xmpp_body(&json!({"body": "no type"}), "x"), None);
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
