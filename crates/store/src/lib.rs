//! The bridge's persistent state: linked users, encrypted tokens, ghosts, portals, outbox.
