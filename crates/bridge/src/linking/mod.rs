//! Account linking: `login` in the bot sends a one-time link to the bridge's web listener,
//! which redirects to the OAuth provider (authorization code with `state` and PKCE); the
//! provider sends the browser back to `/login/callback`, the bridge exchanges the code, logs in
//! to XMPP once to learn the JID the server binds, stores the tokens (encrypted) and starts the
//! session. `login --device` uses the device-code grant instead. For standard XMPP servers
//! without OAuth, the link opens a JID and password form (passwords never travel through
//! Matrix). Links expire after 10 minutes and work once.

mod device;
mod pages;
pub(crate) mod pending;

pub(crate) use pages::routes;

use std::time::Instant;

use oauth2::{AuthUrl, ClientId, ClientSecret, RedirectUrl, TokenUrl};
use store::{LinkedUser, OAuthTokens};
use xmpp_core::Jid;
use xmpp_core::connection::{ConnectionConfig, establish};
use xmpp_core::negotiation::NegotiationConfig;
use xmpp_core::sasl::{AuthIdentity, Credentials};

use crate::context::{Bridge, now_ms};
use device::start_device_login;
use pending::{Pending, Secret, Step, random_token};

impl Bridge {
    /// Where browsers reach the bridge.
    pub(crate) fn public_url(&self) -> String {
        let c = &self.inner.config;
        if let Some(u) = &c.appservice.public_url {
            return u.trim_end_matches('/').to_owned();
        }
        if let Some(r) = c.oauth.as_ref().and_then(|o| o.redirect_url.as_deref()) {
            return r
                .trim_end_matches("/login/callback")
                .trim_end_matches('/')
                .to_owned();
        }
        format!("http://{}", c.appservice.listen)
    }

    fn oauth_client(
        &self,
    ) -> Option<
        oauth2::basic::BasicClient<
            oauth2::EndpointSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointSet,
        >,
    > {
        let o = self.inner.config.oauth.as_ref()?;
        let redirect = format!("{}/login/callback", self.public_url());
        let mut client = oauth2::basic::BasicClient::new(ClientId::new(o.client_id.clone()))
            .set_auth_uri(AuthUrl::new(o.authorize_url.clone()).ok()?)
            .set_token_uri(TokenUrl::new(o.token_url.clone()).ok()?)
            .set_redirect_uri(RedirectUrl::new(o.redirect_url.clone().unwrap_or(redirect)).ok()?);
        if let Some(secret) = o.client_secret.clone().filter(|s| !s.is_empty()) {
            client = client.set_client_secret(ClientSecret::new(secret));
        }
        Some(client)
    }

    fn uses_oauth(&self) -> bool {
        self.inner.config.xmpp.profile != "standard" && self.inner.config.oauth.is_some()
    }

    /// Logs in to XMPP once with `credentials` and returns the bare JID the server binds. This
    /// also proves the credentials work before anything is stored.
    async fn probe_login(
        &self,
        jid_hint: Option<&Jid>,
        credentials: Credentials,
    ) -> Result<Jid, String> {
        let x = &self.inner.config.xmpp;
        let domain = jid_hint.map_or_else(|| x.domain.clone(), |j| j.domain().to_owned());
        let host = x.host.clone().unwrap_or_else(|| domain.clone());
        let connection = ConnectionConfig::new(domain.clone(), host, x.port);
        let profile = match jid_hint {
            Some(_) => xmpp_core::ServerProfile::Standard,
            None => xmpp_core::ServerProfile::Messenger,
        };
        let negotiation = NegotiationConfig {
            domain,
            profile,
            credentials,
            identity: AuthIdentity {
                username: jid_hint.and_then(|j| j.local().map(str::to_owned)),
                bare_jid: jid_hint.map(|j| j.to_bare().to_string()),
            },
            resource: None,
            mechanisms: None,
            stream_management: false,
            resume: None,
        };
        let established = establish(&connection, self.inner.xmpp_tls.clone(), &negotiation)
            .await
            .map_err(|e| e.to_string())?;
        let jid = established.negotiated.jid.to_bare();
        // Close the probe politely; the real session starts next.
        let mut stream = established.stream;
        let _ = tokio::io::AsyncWriteExt::write_all(
            &mut stream,
            xmpp_core::xml::STREAM_CLOSE.as_bytes(),
        )
        .await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        Ok(jid)
    }

    /// Whether the password form may log in to `domain`: it must be an allowed domain, and
    /// when the bridge connects to the domain itself (no `xmpp.host`), it must not resolve to a
    /// loopback, private or link-local address unless the operator allows that. The answer is
    /// for people: it names no address.
    pub(crate) async fn may_connect_to(&self, domain: &str) -> Result<(), String> {
        let x = &self.inner.config.xmpp;
        let allowed: Vec<&str> = if x.allowed_domains.is_empty() {
            vec![x.domain.as_str()]
        } else {
            x.allowed_domains.iter().map(String::as_str).collect()
        };
        if !allowed.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return Err(format!(
                "This bridge links accounts on {} only.",
                allowed.join(", ")
            ));
        }
        if x.host.is_some() || x.allow_private_addresses {
            return Ok(());
        }
        let generic = || "That server cannot be reached from this bridge.".to_owned();
        let addresses = tokio::net::lookup_host((domain, x.port))
            .await
            .map_err(|_| generic())?;
        for address in addresses {
            if is_internal(address.ip()) {
                tracing::warn!(%domain, %address, "the password form's domain resolves to an internal address; set xmpp.allow_private_addresses to allow it");
                return Err(generic());
            }
        }
        Ok(())
    }

    /// Stores a new link and starts the session.
    async fn finish_link(
        &self,
        user: &str,
        room: &str,
        jid: &Jid,
        profile: store::ServerProfile,
        secret: Secret,
    ) -> Result<(), String> {
        let store = &self.inner.store;
        let now = now_ms();
        let record = LinkedUser {
            matrix_user: user.to_owned(),
            jid: jid.to_string(),
            server_profile: profile,
            connection_state: "connecting".into(),
            management_room: Some(room.to_owned()),
            created_at: now,
            updated_at: now,
        };
        store
            .upsert_linked_user(&record)
            .await
            .map_err(|e| e.to_string())?;
        match secret {
            Secret::OAuth {
                access_token,
                refresh_token,
                expires_in,
            } => {
                let tokens = OAuthTokens {
                    access_token,
                    refresh_token,
                    expires_at: crate::credentials::expires_at(now, expires_in),
                };
                store
                    .set_oauth_tokens(user, &tokens)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Secret::Password(p) => store
                .set_password(user, &p)
                .await
                .map_err(|e| e.to_string())?,
        }
        tracing::info!(%user, %jid, "linked an account");
        self.start_session(user, &jid.to_string(), profile);
        self.bot_say(room, &format!("✅ Linked as {jid}. Your contacts appear as they write to you; send `contacts` to list them.")).await;
        Ok(())
    }
}

/// `login` / `login --device` from `user` in `room`; returns the bot's answer.
pub(crate) async fn start_login(
    bridge: &Bridge,
    user: &str,
    room: &str,
    args: &str,
) -> Result<String, String> {
    let device = args.split_whitespace().any(|a| a == "--device");
    if device {
        return start_device_login(bridge, user, room).await;
    }
    if !bridge.uses_oauth() && !password_safe_url(&bridge.public_url()) {
        tracing::error!(public_url = %bridge.public_url(), "refused to serve the password form over plain HTTP; set appservice.public_url to an https:// URL");
        return Err("Password sign-in is off on this bridge: its web address is not HTTPS, so a password would travel unencrypted. Ask the bridge administrator to serve it over HTTPS.".to_owned());
    }
    let token = random_token();
    bridge.inner.logins.insert(
        token.clone(),
        Pending {
            user: user.to_owned(),
            room: room.to_owned(),
            created: Instant::now(),
            step: Step::Link,
        },
    );
    let what = if bridge.uses_oauth() {
        "sign in with your Messenger account"
    } else {
        "enter your XMPP address and password"
    };
    Ok(format!(
        "Open this link to {what} (it works once, for {} minutes):\n{}/login/{token}\nSend `cancel` to stop.",
        bridge
            .inner
            .config
            .bridge
            .login_link_lifetime_secs
            .div_ceil(60),
        bridge.public_url()
    ))
}

/// `cancel`.
pub(crate) fn cancel(bridge: &Bridge, user: &str) -> String {
    if bridge.inner.logins.cancel_user(user) {
        "Login cancelled."
    } else {
        "There is no login in progress."
    }
    .to_owned()
}

/// Revokes the user's tokens at the provider (RFC 7009), where configured. Best effort.
pub(crate) async fn revoke(bridge: &Bridge, user: &str) {
    let Some(o) = bridge.inner.config.oauth.as_ref() else {
        return;
    };
    let Some(url) = o.revoke_url.as_deref() else {
        return;
    };
    let Ok(Some(tokens)) = bridge.inner.store.oauth_tokens(user).await else {
        return;
    };
    let http = reqwest::Client::new();
    for token in [
        tokens.refresh_token.as_deref(),
        Some(tokens.access_token.as_str()),
    ]
    .into_iter()
    .flatten()
    {
        let req = match o.client_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => http
                .post(url)
                .form(&[("token", token)])
                .basic_auth(&o.client_id, Some(s)),
            None => http
                .post(url)
                .form(&[("token", token), ("client_id", o.client_id.as_str())]),
        };
        if let Err(e) = req.send().await {
            tracing::warn!(%user, error = %e, "could not revoke a token at the provider");
        }
    }
}

/// Whether passwords may be typed into pages under `url`: HTTPS, or plain HTTP to this very
/// machine (loopback), where nothing crosses a network.
pub fn password_safe_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Loopback, private, link-local, unspecified, multicast, reserved or otherwise non-public
/// addresses, also when written inside an IPv6 address (mapped, compatible, NAT64, 6to4).
pub(crate) fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0 // 0/8 ("this network")
                || a == 100 && (b & 0xc0) == 64 // 100.64/10 (CGNAT)
                || a == 198 && (b & 0xfe) == 18 // 198.18/15 (benchmarking)
                || a >= 240 // 240/4 (reserved)
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded =
                |hi: u16, lo: u16| std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(v4.into()))
                // IPv4-compatible ::a.b.c.d
                || s[..6].iter().all(|x| *x == 0) && is_internal(embedded(s[6], s[7]).into())
                // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
                || (s[0] == 0x64 && s[1] == 0xff9b) && is_internal(embedded(s[6], s[7]).into())
                // 6to4 2002:a.b.c.d::/48
                || s[0] == 0x2002 && is_internal(embedded(s[1], s[2]).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_only_over_https_or_loopback() {
        for ok in [
            "https://bridge.example.org",
            "http://127.0.0.1:29317",
            "http://localhost:29317/x",
            "http://[::1]:29317",
        ] {
            assert!(password_safe_url(ok), "{ok}");
        }
        for bad in [
            "http://bridge.example.org",
            "http://10.0.0.2:29317",
            "http://127.0.0.1.evil.example",
            "ftp://x",
        ] {
            assert!(!password_safe_url(bad), "{bad}");
        }
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2001:db8::1", "8.8.8.8"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
