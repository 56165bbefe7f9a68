//! End-to-end tests of the bridge on the real stack: Synapse, the Messenger-profile XMPP
//! service and its OAuth provider. matrix-sdk plays the Matrix user, slixmpp the contacts, and
//! the bridge runs as its own process (so it can be killed). Run `deploy/local/stack up` first;
//! `tests/run` does. Compiled as an integration test of the `messenger-bridge` package.
//!
//! The bridge listens on the port in the stack's registration, so tests run one at a time.

#![allow(clippy::unwrap_used)]

mod appservice_api;
mod conversations;
mod demo;
mod durability;
mod harness;
mod linking;
mod media;
mod messaging;
mod profiles;
mod resilience;
mod rich;
mod security;
