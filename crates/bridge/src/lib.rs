//! The Matrix side: appservice, portals and ghosts, and the XMPP ⇄ Matrix mapping.
//!
//! [`Bridge`] is the running bridge; [`matrix::appservice::serve`] exposes it to the
//! homeserver. The binary (`messenger-bridge`) reads the configuration and wires these together.

mod commands;
pub mod config;
pub mod credentials;
mod events;
pub mod ghost;
pub mod latency;
mod linking;
pub mod mapping;
pub mod matrix;
pub mod metrics;
mod portal;
mod runtime;

pub use runtime::{Bridge, StartError};
