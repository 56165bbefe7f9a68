//! The Matrix side: appservice, portals and ghosts, and the XMPP ⇄ Matrix mapping.
//!
//! [`Bridge`] is the running bridge; [`matrix::appservice::serve`] exposes it to the
//! homeserver. The binary (`messenger-bridge`) reads the configuration and wires these together.
//!
//! Layout: [`context`] holds the shared state and no logic; every other module adds one concern's
//! methods to [`Bridge`]: `delivery` (the outbox loops), `to_matrix` and `to_xmpp` (one direction
//! each, a file per kind of event), `portals`, `ghosts`, `sessions`, `notices`, `commands` and
//! `linking`. The rules are plain functions in [`mapping`] and [`ghost`].

mod client_caps;
mod commands;
pub mod config;
mod context;
pub mod credentials;
mod delivery;
pub mod ghost;
mod ghosts;
pub mod latency;
mod linking;
pub mod mapping;
pub mod matrix;
mod media;
pub mod metrics;
mod notices;
mod payload;
mod portal_cache;
mod portals;
mod sessions;
pub mod styling;
mod to_matrix;
mod to_xmpp;

pub use context::{Bridge, StartError};
pub use linking::password_safe_url;
pub use sessions::check_xmpp;
