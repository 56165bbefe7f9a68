//! Logins in progress, by link token or OAuth `state`: in memory, used once, expiring.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oauth2::PkceCodeVerifier;

#[derive(Debug)]
pub(crate) enum Step {
    /// The bot's link, not opened yet.
    Link,
    /// Sent to the provider with this PKCE verifier.
    /// Sent to the provider with this PKCE verifier, from the browser holding this cookie
    /// value: the callback must come back to that browser.
    Authorizing(PkceCodeVerifier, String),
}

#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) user: String,
    pub(crate) room: String,
    pub(crate) created: Instant,
    pub(crate) step: Step,
}

/// Logins in progress, by link token or OAuth `state`. In memory: a bridge restart simply
/// invalidates them, and the user sends `login` again.
#[derive(Debug)]
pub(crate) struct Logins {
    /// How long a link and its sign-in stay valid.
    lifetime: Duration,
    pending: Mutex<HashMap<String, Pending>>,
    /// Device-code polls by user, to cancel them.
    pub(crate) device: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

impl Logins {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            pending: Mutex::default(),
            device: Mutex::default(),
        }
    }

    pub(crate) fn insert(&self, key: String, p: Pending) {
        let mut map = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let lifetime = self.lifetime;
        map.retain(|_, v| v.created.elapsed() < lifetime);
        map.insert(key, p);
    }

    /// The Matrix user a fresh link is for, without using the link up (a link preview or a
    /// second look must not spend it).
    pub(crate) fn user_of(&self, key: &str) -> Option<String> {
        let map = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key)
            .filter(|p| p.created.elapsed() < self.lifetime && matches!(p.step, Step::Link))
            .map(|p| p.user.clone())
    }

    /// Takes an entry: it works once, and only while fresh.
    pub(crate) fn take(&self, key: &str) -> Option<Pending> {
        let mut map = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(key)
            .filter(|p| p.created.elapsed() < self.lifetime)
    }

    pub(crate) fn cancel_user(&self, user: &str) -> bool {
        let mut cancelled = false;
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, p| {
                let keep = p.user != user;
                cancelled |= !keep;
                keep
            });
        if let Some(h) = self
            .device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(user)
        {
            h.abort();
            cancelled = true;
        }
        cancelled
    }
}

/// What a new link logs in with.
pub(crate) enum Secret {
    OAuth {
        access_token: String,
        refresh_token: Option<String>,
        expires_in: Option<i64>,
    },
    Password(String),
}

pub(crate) fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
