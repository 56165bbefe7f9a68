//! `login --device`: the OAuth 2.0 device authorization grant (RFC 8628), polled in the
//! background until the user signs in, declines, or the code expires.

use std::time::{Duration, Instant};

use serde::Deserialize;
use xmpp_core::sasl::Credentials;

use super::pending::Secret;
use crate::context::Bridge;

pub(super) async fn start_device_login(
    bridge: &Bridge,
    user: &str,
    room: &str,
) -> Result<String, String> {
    let o = bridge
        .inner
        .config
        .oauth
        .clone()
        .ok_or("This bridge has no OAuth provider configured.")?;
    let device_url = o
        .device_url
        .clone()
        .ok_or("The OAuth provider has no device login configured; send `login` instead.")?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| e.to_string())?;
    let scope = o.scopes.join(" ");
    let mut req = http.post(&device_url).form(&[
        ("client_id", o.client_id.as_str()),
        ("scope", scope.as_str()),
    ]);
    if let Some(s) = o.client_secret.as_deref().filter(|s| !s.is_empty()) {
        req = req.basic_auth(&o.client_id, Some(s));
    }
    let response = req
        .send()
        .await
        .map_err(|e| format!("The OAuth provider is unreachable ({e}); try again later."))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    #[derive(Deserialize)]
    struct DeviceAuth {
        device_code: String,
        user_code: String,
        verification_uri: String,
        verification_uri_complete: Option<String>,
        expires_in: Option<u64>,
        interval: Option<u64>,
    }
    let auth: DeviceAuth = if status.is_success() {
        serde_json::from_slice(&body).map_err(|_| {
            "The OAuth provider answered something unexpected; try again later.".to_owned()
        })?
    } else {
        return Err(format!(
            "The OAuth provider refused the device login ({status}); try `login` instead."
        ));
    };
    let this = bridge.clone();
    let (user_owned, room_owned) = (user.to_owned(), room.to_owned());
    let expires = Duration::from_secs(auth.expires_in.unwrap_or(600).min(1800));
    let mut interval = Duration::from_secs(auth.interval.unwrap_or(5).max(1));
    let device_code = auth.device_code.clone();
    let task = tokio::spawn(async move {
        let credentials = this.inner.oauth.clone();
        let deadline = Instant::now() + expires;
        loop {
            tokio::time::sleep(interval).await;
            if Instant::now() > deadline {
                this.bot_say(
                    &room_owned,
                    "The device code expired; send `login --device` to get a new one.",
                )
                .await;
                break;
            }
            let Some(oauth) = credentials.as_ref() else {
                break;
            };
            match oauth
                .token_request(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device_code.as_str()),
                ])
                .await
            {
                Ok(t) => {
                    let result = match this
                        .probe_login(None, Credentials::AccessToken(t.access_token.clone()))
                        .await
                    {
                        Ok(jid) => {
                            let secret = Secret::OAuth {
                                access_token: t.access_token,
                                refresh_token: t.refresh_token,
                                expires_in: t.expires_in,
                            };
                            this.finish_link(
                                &user_owned,
                                &room_owned,
                                &jid,
                                store::ServerProfile::Messenger,
                                secret,
                            )
                            .await
                        }
                        Err(e) => Err(format!("the XMPP login with the new token failed: {e}")),
                    };
                    if let Err(e) = result {
                        this.bot_say(
                            &room_owned,
                            &format!("❌ Linking failed: {e}. Send `login` to try again."),
                        )
                        .await;
                    }
                    break;
                }
                Err(e) if e.contains("authorization_pending") => {}
                Err(e) if e.contains("slow_down") => interval += Duration::from_secs(5),
                Err(e) => {
                    this.bot_say(
                        &room_owned,
                        &format!(
                            "❌ Device login failed: {e}. Send `login --device` to try again."
                        ),
                    )
                    .await;
                    break;
                }
            }
        }
        // Forget our own handle only: a newer device login of this user may have replaced it.
        let me = tokio::task::try_id();
        let mut device = this
            .inner
            .logins
            .device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if device.get(&user_owned).map(tokio::task::AbortHandle::id) == me {
            device.remove(&user_owned);
        }
    });
    // A second `login --device` replaces the first: the first stops polling.
    let previous = bridge
        .inner
        .logins
        .device
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(user.to_owned(), task.abort_handle());
    if let Some(previous) = previous {
        previous.abort();
    }
    let direct = auth
        .verification_uri_complete
        .map(|u| format!(" (or open {u} directly)"))
        .unwrap_or_default();
    Ok(format!(
        "Go to {} and enter the code {}{direct}; it is valid for {} minutes. I'll tell you here when it worked; send `cancel` to stop.",
        auth.verification_uri,
        auth.user_code,
        expires.as_secs() / 60
    ))
}
