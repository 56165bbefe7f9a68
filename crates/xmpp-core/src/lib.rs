//! Per-user XMPP client sessions (RFC 6120/6121) for the Messenger profile and standard servers.
//!
//! This crate knows nothing of Matrix. Layers, from the wire up:
//! - [`xml`]: the incremental stream parser (sans I/O, limits, restricted XML) and element tree;
//! - [`stanza`]: typed messages, presence, IQs and the payloads the bridge maps;
//! - [`sasl`]: the SASL mechanisms, as byte-exact state machines;
//! - [`negotiation`]: STARTTLS → SASL → bind as a sans-I/O state machine;
//! - [`connection`] and [`session`]: the thin I/O layer (TCP, TLS, reader and writer tasks);
//! - [`stream_management`]: XEP-0198 counters and what a broken stream leaves to resume;
//! - [`manager`]: many sessions, paced connects, reconnects with backoff and jitter.

pub mod connection;
pub mod jid;
pub mod manager;
pub mod negotiation;
pub mod ns;
pub mod profile;
pub mod sasl;
pub mod session;
pub mod stanza;
pub mod stream_management;
pub mod xml;

pub use jid::Jid;
pub use profile::ServerProfile;
