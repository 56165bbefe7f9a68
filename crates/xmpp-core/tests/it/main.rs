//! xmpp-core against the real local stack (Prosody with the Messenger-profile modules and the
//! OAuth provider), with slixmpp playing the contacts. Run `deploy/local/stack up` first;
//! `tests/run` does.

#![allow(clippy::unwrap_used)]

mod harness;
mod login;
mod misbehaving_server;
mod stanzas;
mod tls_pinning;
