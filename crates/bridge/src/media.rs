//! Files both ways, streamed and size-capped, never held whole.
//!
//! - Matrix → XMPP: the homeserver's download URLs need a Matrix login (authenticated media),
//!   so a contact gets a link to the bridge instead: `<public_url>/media/<token>/<name>`, the
//!   token signed (HMAC-SHA256 with a key derived from the homeserver token) and expiring. The
//!   bridge streams the file from the homeserver when the link is opened.
//! - XMPP → Matrix: a contact's XEP-0066 link is fetched (never from loopback, private or
//!   link-local addresses unless `bridge.media_from_private_addresses`; no redirects), its type
//!   sniffed and, for images, its size read from the first bytes, and it is streamed into the
//!   homeserver's media repository.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::context::{Bridge, now_ms};

/// The key the bridge signs its media links with, derived from the homeserver token (a
/// secret only the bridge and the homeserver know, stable across restarts).
fn link_key(hs_token: &str) -> Vec<u8> {
    Sha256::digest(format!("messenger-bridge media links\0{hs_token}")).to_vec()
}

fn mac(key: &[u8], payload: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| {
        // HMAC takes keys of any length.
        unreachable!("HMAC-SHA256 accepts any key length")
    });
    mac.update(payload.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// A signed token for `mxc` with its type, valid until `expires_ms`.
pub(crate) fn sign(hs_token: &str, mxc: &str, mime: &str, expires_ms: i64) -> String {
    let payload = format!("{mxc}\n{mime}\n{expires_ms}");
    let sig = mac(&link_key(hs_token), &payload);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

/// The `(mxc, type)` a token names, if its signature holds and it has not expired.
pub(crate) fn verify(hs_token: &str, token: &str, now: i64) -> Option<(String, String)> {
    let (payload, sig) = token.split_once('.')?;
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    let mut check = <Hmac<Sha256> as Mac>::new_from_slice(&link_key(hs_token)).ok()?;
    check.update(payload.as_bytes());
    check.verify_slice(&sig).ok()?;
    let mut parts = payload.splitn(3, '\n');
    let (mxc, mime, expires) = (parts.next()?, parts.next()?, parts.next()?);
    (expires.parse::<i64>().ok()? > now).then(|| (mxc.to_owned(), mime.to_owned()))
}

/// A file name safe in a URL path and a `Content-Disposition`.
pub(crate) fn safe_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if name.trim_matches(['.', '_']).is_empty() {
        "file".into()
    } else {
        name
    }
}

/// The link a contact gets for a Matrix file.
pub(crate) fn link(bridge: &Bridge, mxc: &str, mime: &str, name: &str) -> String {
    let config = &bridge.inner.config;
    let lifetime = i64::try_from(config.bridge.media_link_lifetime_secs.saturating_mul(1000))
        .unwrap_or(i64::MAX);
    let token = sign(
        &config.appservice.hs_token,
        mxc,
        mime,
        now_ms().saturating_add(lifetime),
    );
    format!(
        "{}/media/{token}/{}",
        bridge.public_url().trim_end_matches('/'),
        safe_name(name)
    )
}

/// `GET /media/{token}/{name}`: the file, streamed from the homeserver.
pub(crate) async fn serve(
    State(bridge): State<Bridge>,
    Path((token, name)): Path<(String, String)>,
) -> Response {
    let config = &bridge.inner.config;
    let Some((mxc, mime)) = verify(&config.appservice.hs_token, &token, now_ms()) else {
        return (
            StatusCode::NOT_FOUND,
            "no such file, or the link has expired\n",
        )
            .into_response();
    };
    let upstream = match bridge.inner.matrix.download(&mxc).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%mxc, error = %e, "cannot fetch a Matrix file for a contact");
            return (StatusCode::BAD_GATEWAY, "the file cannot be fetched now\n").into_response();
        }
    };
    let max = config.bridge.max_media_bytes;
    if upstream.content_length().is_some_and(|n| n > max) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the file is larger than this bridge serves\n",
        )
            .into_response();
    }
    // Only media types a browser cannot run are shown inline: anything else (HTML, SVG,
    // scripts) would run on the bridge's own site, beside its login pages.
    let (mime, disposition) = match inline_type(&mime) {
        Some(m) => (m, "inline"),
        None => ("application/octet-stream".to_owned(), "attachment"),
    };
    let mut response = Response::builder()
        .header(http::header::CONTENT_TYPE, mime)
        .header(
            http::header::CONTENT_DISPOSITION,
            format!("{disposition}; filename=\"{}\"", safe_name(&name)),
        )
        .header("x-content-type-options", "nosniff")
        .header("content-security-policy", "sandbox; default-src 'none'")
        .header("referrer-policy", "no-referrer")
        .header(http::header::CACHE_CONTROL, "private, max-age=3600");
    if let Some(n) = upstream.content_length() {
        response = response.header(http::header::CONTENT_LENGTH, n);
    }
    response
        .body(Body::from_stream(capped(upstream.bytes_stream(), max)))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot build a media response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        })
}

/// The type to serve inline, if the declared one is a plain image, video or audio type.
fn inline_type(mime: &str) -> Option<String> {
    let mime = mime
        .split(';')
        .next()
        .unwrap_or(mime)
        .trim()
        .to_ascii_lowercase();
    let ok = matches!(
        mime.as_str(),
        "image/png"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
            | "image/avif"
            | "image/heic"
            | "video/mp4"
            | "video/webm"
            | "video/ogg"
            | "video/quicktime"
    ) || mime.starts_with("audio/")
        && mime[6..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'+'));
    ok.then_some(mime)
}

/// A byte stream that fails once more than `max` bytes went through.
pub(crate) fn capped<S, E>(stream: S, max: u64) -> impl Stream<Item = std::io::Result<Bytes>>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut seen = 0u64;
    stream.map(move |chunk| {
        let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
        seen += chunk.len() as u64;
        if seen > max {
            return Err(std::io::Error::other(format!("over the {max}-byte cap")));
        }
        Ok(chunk)
    })
}

/// The type of a file from its first bytes, else what its sender declared, else
/// `application/octet-stream`.
pub(crate) fn sniff(head: &[u8], declared: Option<&str>) -> String {
    let found = match head {
        [0x89, b'P', b'N', b'G', ..] => Some("image/png"),
        [0xff, 0xd8, 0xff, ..] => Some("image/jpeg"),
        [b'G', b'I', b'F', b'8', ..] => Some("image/gif"),
        _ if is_webp(head) => Some("image/webp"),
        [
            _,
            _,
            _,
            _,
            b'f',
            b't',
            b'y',
            b'p',
            b'h',
            b'e',
            b'i',
            b'c' | b'x',
            ..,
        ]
        | [
            _,
            _,
            _,
            _,
            b'f',
            b't',
            b'y',
            b'p',
            b'm',
            b'i',
            b'f',
            b'1',
            ..,
        ] => Some("image/heic"),
        [
            _,
            _,
            _,
            _,
            b'f',
            b't',
            b'y',
            b'p',
            b'a',
            b'v',
            b'i',
            b'f',
            ..,
        ] => Some("image/avif"),
        [_, _, _, _, b'f', b't', b'y', b'p', ..] => Some("video/mp4"),
        [b'O', b'g', b'g', b'S', ..] => Some("audio/ogg"),
        [b'%', b'P', b'D', b'F', ..] => Some("application/pdf"),
        [0x1a, 0x45, 0xdf, 0xa3, ..] => Some("video/webm"),
        [b'I', b'D', b'3', ..] | [0xff, 0xfb, ..] => Some("audio/mpeg"),
        _ => None,
    };
    found
        .map(str::to_owned)
        .or_else(|| {
            declared
                .map(|d| d.split(';').next().unwrap_or(d).trim().to_ascii_lowercase())
                .filter(|d| d.contains('/') && d != "text/html")
        })
        .unwrap_or_else(|| "application/octet-stream".into())
}

/// A WebP image: a RIFF container of type `WEBP`.
fn is_webp(head: &[u8]) -> bool {
    head.get(..4) == Some(b"RIFF") && head.get(8..12) == Some(b"WEBP")
}

/// An image's width and height from its first bytes (PNG, GIF, JPEG, WebP).
pub(crate) fn image_size(head: &[u8]) -> Option<(u32, u32)> {
    let be16 =
        |b: &[u8], i: usize| Some(u32::from(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])));
    let le16 =
        |b: &[u8], i: usize| Some(u32::from(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?])));
    let be32 = |b: &[u8], i: usize| Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?));
    match head {
        [0x89, b'P', b'N', b'G', ..] => Some((be32(head, 16)?, be32(head, 20)?)),
        [b'G', b'I', b'F', b'8', ..] => Some((le16(head, 6)?, le16(head, 8)?)),
        _ if is_webp(head) && head.get(12..15) == Some(b"VP8") => match head.get(15)? {
            b' ' => Some((le16(head, 26)? & 0x3fff, le16(head, 28)? & 0x3fff)),
            b'L' => {
                let b = head.get(21..25)?;
                let w = 1 + (u32::from(b[0]) | (u32::from(b[1] & 0x3f) << 8));
                let h = 1
                    + ((u32::from(b[1]) >> 6)
                        | (u32::from(b[2]) << 2)
                        | (u32::from(b[3] & 0x0f) << 10));
                Some((w, h))
            }
            b'X' => {
                let b = head.get(24..30)?;
                let w = 1 + (u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16);
                let h = 1 + (u32::from(b[3]) | u32::from(b[4]) << 8 | u32::from(b[5]) << 16);
                Some((w, h))
            }
            _ => None,
        },
        [0xff, 0xd8, ..] => {
            // Walk the segments to the first start-of-frame.
            let mut i = 2;
            while i + 9 < head.len() {
                if head[i] != 0xff {
                    return None;
                }
                let marker = head[i + 1];
                let len = usize::try_from(be16(head, i + 2)?).ok()?;
                if matches!(marker, 0xc0..=0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf) {
                    return Some((be16(head, i + 7)?, be16(head, i + 5)?));
                }
                i += 2 + len;
            }
            None
        }
        _ => None,
    }
}

/// The Matrix `msgtype` for a file type.
pub(crate) fn msgtype(mime: &str) -> &'static str {
    match mime.split('/').next() {
        Some("image") => "m.image",
        Some("video") => "m.video",
        Some("audio") => "m.audio",
        _ => "m.file",
    }
}

/// A contact's file link the bridge may fetch: `http(s)`, and (unless allowed) only public
/// addresses. Returns the address to connect to, so what was checked is what is used.
pub(crate) async fn checked_address(
    url: &reqwest::Url,
    allow_private: bool,
) -> Result<SocketAddr, String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{} links are not fetched", url.scheme()));
    }
    let host = url.host_str().ok_or("the link has no host")?;
    let port = url.port_or_known_default().ok_or("the link has no port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::lookup_host((host, port)),
    )
    .await
    .map_err(|_| format!("{host} did not resolve in time"))?
    .map_err(|e| format!("{host} does not resolve: {e}"))?
    .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{host} has no address"))?;
    if !allow_private && let Some(bad) = addrs.iter().find(|a| crate::linking::is_internal(a.ip()))
    {
        return Err(format!(
            "{host} is a private or loopback address ({}); the bridge does not fetch those",
            bad.ip()
        ));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_signed_and_expire() {
        let token = sign("hs", "mxc://x/abc", "image/png", 2_000);
        assert_eq!(
            verify("hs", &token, 1_000),
            Some(("mxc://x/abc".into(), "image/png".into()))
        );
        assert_eq!(verify("hs", &token, 2_000), None, "expired");
        assert_eq!(verify("other", &token, 1_000), None, "another key");
        let (payload, sig) = token.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode("mxc://x/secret\nimage/png\n9999999999999");
        assert_eq!(verify("hs", &format!("{forged}.{sig}"), 1_000), None);
        assert_eq!(verify("hs", payload, 1_000), None);
        assert_eq!(verify("hs", "garbage", 1_000), None);
    }

    #[test]
    fn types_and_image_sizes_come_from_the_first_bytes() {
        let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&640u32.to_be_bytes());
        png.extend_from_slice(&480u32.to_be_bytes());
        assert_eq!(sniff(&png, Some("text/html")), "image/png");
        assert_eq!(image_size(&png), Some((640, 480)));
        let gif = b"GIF89a\x20\x03\x58\x02rest";
        assert_eq!(image_size(gif), Some((800, 600)));
        // SOI, an APP0 segment of 16 bytes, then SOF0 with height 200 and width 300.
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10];
        jpeg.extend_from_slice(&[0; 14]);
        jpeg.extend_from_slice(&[0xff, 0xc0, 0x00, 0x11, 0x08, 0x00, 0xc8, 0x01, 0x2c, 0x03]);
        jpeg.extend_from_slice(&[0; 8]);
        assert_eq!(image_size(&jpeg), Some((300, 200)));
        let mut webp = b"RIFF\0\0\0\0WEBPVP8X\0\0\0\0\0\0\0\0".to_vec();
        webp.extend_from_slice(&[0x7f, 0x02, 0x00, 0xdf, 0x01, 0x00]);
        assert_eq!(sniff(&webp, None), "image/webp");
        assert_eq!(image_size(&webp), Some((640, 480)));
        assert_eq!(
            sniff(b"hello", Some("text/plain; charset=utf-8")),
            "text/plain"
        );
        assert_eq!(
            sniff(b"<html>", Some("text/html")),
            "application/octet-stream",
            "never served back as HTML"
        );
        assert_eq!(msgtype("image/png"), "m.image");
        assert_eq!(msgtype("application/pdf"), "m.file");
    }

    #[test]
    fn file_names_are_made_safe() {
        assert_eq!(safe_name("cat pic.png"), "cat_pic.png");
        assert_eq!(safe_name("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("\"><script>"), "___script_");
    }

    #[test]
    fn only_harmless_types_are_served_inline() {
        assert_eq!(inline_type("image/png").as_deref(), Some("image/png"));
        assert_eq!(
            inline_type("audio/ogg; codecs=opus").as_deref(),
            Some("audio/ogg")
        );
        for bad in [
            "text/html",
            "image/svg+xml",
            "application/javascript",
            "audio/x\r\nx",
            "",
        ] {
            assert_eq!(inline_type(bad), None, "{bad}");
        }
    }

    #[test]
    fn internal_addresses_include_the_ones_hidden_in_ipv6() {
        use crate::linking::is_internal;
        for internal in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn private_addresses_are_refused_unless_allowed() {
        let url = reqwest::Url::parse("http://127.0.0.1:8080/x").unwrap();
        assert!(checked_address(&url, false).await.is_err());
        assert!(checked_address(&url, true).await.is_ok());
        let url = reqwest::Url::parse("http://[::1]/x").unwrap();
        assert!(checked_address(&url, false).await.is_err());
        let url = reqwest::Url::parse("file:///etc/passwd").unwrap();
        assert!(checked_address(&url, true).await.is_err());
    }
}
