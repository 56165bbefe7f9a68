//! The Matrix side: the client-server API as the appservice ([`client`]) and the appservice API
//! the homeserver calls ([`appservice`]).

pub mod appservice;
pub mod client;
pub(crate) mod outage;

pub use client::{MatrixClient, MatrixError};
