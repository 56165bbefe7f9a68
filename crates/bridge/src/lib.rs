//! The Matrix side: appservice, portals and ghosts, and the XMPP ⇄ Matrix mapping.

pub mod ghost;
pub mod mapping;
pub mod matrix;
