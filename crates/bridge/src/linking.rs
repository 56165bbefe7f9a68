//! Account linking (OAuth 2.0 sign-in). Not built yet: `login` says so plainly.

use crate::runtime::Bridge;

/// Starts a login for `user`; returns the bot's answer.
pub(crate) async fn start_login(
    _bridge: &Bridge,
    _user: &str,
    _args: &str,
) -> Result<String, String> {
    Err("Linking through the bot is not available in this version yet; an administrator can link accounts with `messenger-bridge link`.".to_owned())
}

/// Cancels a pending login.
pub(crate) fn cancel(_bridge: &Bridge, _user: &str) -> String {
    "There is no login in progress.".to_owned()
}

/// Revokes the user's tokens at the provider, where supported.
pub(crate) async fn revoke(_bridge: &Bridge, _user: &str) {}

/// The web routes of account linking (none yet).
pub(crate) fn routes() -> axum::Router<Bridge> {
    axum::Router::new()
}
