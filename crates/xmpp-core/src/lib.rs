//! Per-user XMPP client sessions (RFC 6120/6121) for the Messenger profile and standard servers.
