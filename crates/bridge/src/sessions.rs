//! Linked users' XMPP sessions: start-up, account settings, connection states and the
//! notices about them (debounced), and access tokens refreshed ahead of expiry.

use std::sync::Arc;
use std::time::Duration;

use store::Direction;
use tokio::sync::mpsc;
use xmpp_core::manager::{AccountConfig, AccountEvent, ConnectionState};
use xmpp_core::{Jid, ServerProfile};

use crate::context::{Bridge, StartError};

/// The resource the bridge asks for on standard servers when `xmpp.resource` is not set.
pub(crate) const DEFAULT_RESOURCE: &str = "messenger-bridge";

impl Bridge {
    /// Starts the background loops and every linked user's XMPP session. `events` is the
    /// session manager's event receiver.
    pub async fn start(&self, events: mpsc::Receiver<AccountEvent>) -> Result<(), StartError> {
        let inner = &self.inner;
        inner.matrix.register(inner.bot.localpart()).await?;
        if let Err(e) = inner
            .matrix
            .set_display_name(&inner.bot, &inner.config.appservice.bot_displayname)
            .await
        {
            tracing::warn!(error = %e, "could not set the bot's display name");
        }
        // One bridge per database: whatever a previous run had claimed died with it.
        let released = inner.store.release_claims().await?;
        if released > 0 {
            tracing::info!(
                count = released,
                "redelivering messages the previous run had in flight"
            );
        }
        let handling = tokio::spawn(self.clone().xmpp_event_loop(events));
        *self
            .inner
            .xmpp_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handling);
        tokio::spawn(self.clone().deliver_forever(Direction::ToMatrix));
        tokio::spawn(self.clone().deliver_forever(Direction::ToXmpp));
        tokio::spawn(self.clone().refresh_tokens_forever());
        tokio::spawn(self.clone().prune_outbox_forever());
        tokio::spawn(self.clone().watch_homeserver_forever());
        let users = inner.store.linked_users().await?;
        tracing::info!(
            count = users.len(),
            "starting XMPP sessions of linked users"
        );
        for user in users {
            // Permissions are read again at every start: a user the administrator removed gets
            // no session, and is told why.
            if inner.config.bridge.level(&user.matrix_user).is_none() {
                tracing::warn!(user = %user.matrix_user, "not starting the session of a user no longer allowed by bridge.permissions");
                let this = self.clone();
                tokio::spawn(async move {
                    this.notify_user(&user.matrix_user, "⛔ The bridge administrator no longer allows you to use this bridge, so your account is not connected. Your login is kept; ask the administrator if this is a mistake.").await;
                });
                continue;
            }
            self.start_session(&user.matrix_user, &user.jid, user.server_profile);
        }
        Ok(())
    }

    /// For a graceful stop, after the session manager's `shutdown`: waits (at most `limit`)
    /// until every XMPP event read before it is recorded. Returns whether all were.
    pub async fn finish_xmpp_events(&self, limit: Duration) -> bool {
        let handling = self
            .inner
            .xmpp_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match handling {
            Some(task) => tokio::time::timeout(limit, task).await.is_ok(),
            None => true,
        }
    }

    /// The XMPP account configuration of a linked user.
    pub(crate) fn account_config(
        &self,
        matrix_user: &str,
        jid: &str,
        profile: store::ServerProfile,
    ) -> AccountConfig {
        let x = &self.inner.config.xmpp;
        let jid = Jid::parse(jid).ok();
        let domain = jid
            .as_ref()
            .map_or_else(|| x.domain.clone(), |j| j.domain().to_owned());
        let host = x.host.clone().unwrap_or_else(|| domain.clone());
        let mut connection = xmpp_core::connection::ConnectionConfig::new(domain, host, x.port);
        connection.limits.max_stanza_bytes = x.max_stanza_bytes;
        AccountConfig {
            account: matrix_user.to_owned(),
            profile: match profile {
                store::ServerProfile::Messenger => ServerProfile::Messenger,
                store::ServerProfile::Standard => ServerProfile::Standard,
            },
            connection,
            jid,
            // On a standard server a fixed resource by default: a new login then replaces the
            // bridge's own previous session (one a crash left for the server to keep, XEP-0198)
            // instead of standing beside it and splitting the conversation with it.
            resource: x.resource.clone().or_else(|| {
                (profile == store::ServerProfile::Standard).then(|| DEFAULT_RESOURCE.to_owned())
            }),
            mechanisms: None,
        }
    }

    /// Starts (or restarts) a linked user's XMPP session.
    pub fn start_session(&self, matrix_user: &str, jid: &str, profile: store::ServerProfile) {
        let account = self.account_config(matrix_user, jid, profile);
        self.inner
            .xmpp
            .start(account, self.inner.credentials.clone());
    }

    /// Access tokens are refreshed ahead of expiry (rotating refresh tokens are saved at once),
    /// whether or not a reconnect needs them now.
    pub(crate) async fn refresh_tokens_forever(self) {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            let users = match self.inner.store.linked_users().await {
                Ok(users) => users,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list linked users to refresh their tokens; trying again in 15 s");
                    continue;
                }
            };
            for user in users
                .iter()
                .filter(|u| u.connection_state != "bad_credentials")
            {
                if let Err(e) = self
                    .inner
                    .credentials
                    .refresh_if_expiring(&user.matrix_user)
                    .await
                {
                    tracing::warn!(user = %user.matrix_user, error = %e, "could not refresh the access token");
                }
            }
        }
    }

    pub(crate) async fn on_state(&self, account: &str, state: ConnectionState) {
        let label = match &state {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected { resumed: true, .. } => "resumed",
            ConnectionState::Connected { .. } => "connected",
            ConnectionState::TransientDisconnect { .. } => "transient_disconnect",
            ConnectionState::BadCredentials { .. } => "bad_credentials",
            ConnectionState::Failed { .. } => "failed",
            ConnectionState::LoggedOut => "logged_out",
        };
        self.inner.metrics.session_state(account, label);
        let label = if label == "resumed" {
            "connected"
        } else {
            label
        };
        if let Err(e) = self.inner.store.set_connection_state(account, label).await {
            // Only the `status` answer and the start-up skip of refused logins read it.
            tracing::warn!(user = %account, error = %e, "could not save the connection state");
        }
        let (previous_notified, was_refused) = {
            let mut states = self
                .inner
                .states
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let prev = states
                .get(account)
                .map(|(_, notified)| *notified)
                .unwrap_or(false);
            let was_refused = matches!(
                states.get(account),
                Some((ConnectionState::BadCredentials { .. }, _))
            );
            let keep = matches!(
                state,
                ConnectionState::TransientDisconnect { .. } | ConnectionState::Connecting
            ) && prev;
            states.insert(account.to_owned(), (state.clone(), keep));
            (prev, was_refused)
        };
        match state {
            ConnectionState::Connected { jid, .. } => {
                let rooms = self
                    .inner
                    .waiting_for_session
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(account)
                    .unwrap_or_default();
                for room in rooms {
                    if let Err(e) = self.inner.store.due_now(Direction::ToXmpp, &room).await {
                        tracing::warn!(user = %account, error = %e, "could not retry waiting messages at once; they go at their retry time");
                    }
                }
                self.inner.wake_to_xmpp.notify_one();
                if previous_notified {
                    self.notify_user(
                        account,
                        &format!("✅ Connected again as {}.", jid.to_bare()),
                    )
                    .await;
                }
            }
            ConnectionState::BadCredentials { reason } => {
                // The details are for the operator's log; the user is told once what to do.
                tracing::warn!(user = %account, %reason, "the XMPP login was refused; the user is asked to log in again");
                if !was_refused {
                    self.notify_user(account, "❌ Your account's sign-in is no longer accepted (it expired or was revoked). Send `login` to link your account again.").await;
                }
            }
            ConnectionState::Failed { reason } => {
                self.notify_user(account, &format!("❌ Cannot connect to XMPP: {reason}. The bridge administrator needs to fix the configuration.")).await;
            }
            ConnectionState::TransientDisconnect { reason, .. } => {
                // Debounced: only a disconnect that lasts gets a notice.
                let this = self.clone();
                let account = account.to_owned();
                let delay = Duration::from_secs(self.inner.config.bridge.state_notice_delay_secs);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let still_down = {
                        let mut states = this
                            .inner
                            .states
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        match states.get_mut(&account) {
                            Some((
                                ConnectionState::TransientDisconnect { .. }
                                | ConnectionState::Connecting,
                                notified,
                            )) if !*notified => {
                                *notified = true;
                                true
                            }
                            _ => false,
                        }
                    };
                    if still_down {
                        this.notify_user(&account, &format!("⚠ Lost the connection to XMPP ({reason}); reconnecting by itself. Messages you send meanwhile are delivered once it is back.")).await;
                    }
                });
            }
            ConnectionState::Connecting | ConnectionState::LoggedOut => {}
        }
    }
}

/// Connects to the configured XMPP server as far as TLS and the login offer, without logging in: proves the server is reachable and its certificate is trusted before anyone
/// signs in. `Ok` says what was verified; `Err` says what failed and how to fix it.
pub async fn check_xmpp(
    config: &crate::config::BridgeConfig,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
) -> Result<String, String> {
    use xmpp_core::connection::{ConnectError, ConnectionConfig, establish};
    use xmpp_core::negotiation::{NegotiationConfig, NegotiationError};
    use xmpp_core::sasl::{AuthIdentity, Credentials, SaslError};
    let x = &config.xmpp;
    let host = x.host.clone().unwrap_or_else(|| x.domain.clone());
    let connection = ConnectionConfig::new(x.domain.clone(), host.clone(), x.port);
    let profile = ServerProfile::parse(&x.profile).unwrap_or(ServerProfile::Messenger);
    let probe = NegotiationConfig {
        domain: x.domain.clone(),
        profile,
        // Never sent (no mechanism is allowed).
        credentials: match profile {
            ServerProfile::Messenger => Credentials::AccessToken("check-xmpp".into()),
            ServerProfile::Standard => Credentials::Password("check-xmpp".into()),
        },
        identity: AuthIdentity {
            username: Some("check-xmpp".into()),
            bare_jid: Some(format!("check-xmpp@{}", x.domain)),
        },
        resource: None,
        // No mechanism at all: the check stops at the server's login offer and never sends a
        // login attempt (a failed login could count against the bridge's address).
        mechanisms: Some(Vec::new()),
        stream_management: false,
        resume: None,
    };
    let place = format!("{} at {host}:{}", x.domain, x.port);
    match establish(&connection, tls, &probe).await {
        Ok(_) => Ok(format!(
            "{place}: TLS verified; logged in (unexpectedly, with a dummy secret)"
        )),
        Err(ConnectError::Negotiation(NegotiationError::Sasl(SaslError::NoMechanism {
            offered,
            ..
        }))) => Ok(format!(
            "{place}: reachable, TLS certificate verified; login offered with [{offered}] (not attempted)"
        )),
        Err(e @ (ConnectError::Tls { .. } | ConnectError::TlsSettings(_))) => {
            Err(format!("{place}: {e}"))
        }
        Err(e) => Err(format!("{place}: {e}")),
    }
}
