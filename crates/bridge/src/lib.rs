//! The Matrix side: appservice, portals and ghosts, and the XMPP ⇄ Matrix mapping.
