//! Homeserver outages, and the events they can cost the bridge.
//!
//! Synapse holds the events it has not yet put in an appservice transaction in memory while one
//! transaction is in flight, and forgets them when it stops (element-hq/synapse#11637, open): a
//! message the user sent in the second before a restart never reaches the bridge, and nothing
//! on the Matrix side says so. The bridge therefore notes every sign of an outage: a request
//! that cannot reach the homeserver, or the one idle TCP connection it keeps open to it (no
//! request on it, so nothing in the homeserver's logs) closing. Before it records anything more
//! from the homeserver it reads the portals' recent history and records what it never got, in
//! order (`to_xmpp::catch_up`).

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::context::{Bridge, now_ms};

/// What made the bridge think the homeserver may have lost events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A request or a connection could not reach it: it was down. Every portal is read.
    Unreachable,
    /// The idle connection closed: the homeserver stopped, or only dropped an idle connection
    /// (Synapse does after a minute). Only portals with recent events are read.
    ConnectionClosed,
}

/// An outage that has not been caught up yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    /// When the first sign was seen (unix ms).
    pub(crate) since_ms: i64,
    /// Whether to read every portal, not only the recently active ones.
    pub(crate) every_portal: bool,
    noted: u64,
}

/// Signs of outages not caught up yet. Shared by every clone of the Matrix client.
#[derive(Debug, Default)]
pub(crate) struct Outages {
    state: Mutex<Option<Gap>>,
    noted: std::sync::atomic::AtomicU64,
    /// Held while a catch-up runs, so transactions wait for it and it runs once.
    pub(crate) catching_up: tokio::sync::Mutex<()>,
}

impl Outages {
    /// Notes a sign of an outage; the gap starts at the first sign not yet caught up.
    pub(crate) fn note(&self, seen: Seen) {
        let noted = self.noted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let gap = state.get_or_insert(Gap {
            since_ms: now_ms(),
            every_portal: false,
            noted,
        });
        gap.every_portal |= seen == Seen::Unreachable;
        gap.noted = noted;
    }

    /// The gap to catch up, if any.
    pub(crate) fn open(&self) -> Option<Gap> {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `gap` caught up, unless another sign was noted meanwhile (then it stays open, from
    /// its first sign).
    pub(crate) fn close(&self, gap: &Gap) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.is_some_and(|g| g.noted == gap.noted) {
            *state = None;
        }
    }
}

/// The homeserver's `host:port`, from its base URL.
fn address(base: &str) -> Option<String> {
    let url = reqwest::Url::parse(base).ok()?;
    Some(format!(
        "{}:{}",
        url.host_str()?,
        url.port_or_known_default()?
    ))
}

impl Bridge {
    /// Keeps one idle connection to the homeserver and notes an outage when it closes or
    /// cannot be opened; after one, catches up as soon as the homeserver answers again.
    pub(crate) async fn watch_homeserver_forever(self) {
        let matrix = &self.inner.matrix;
        let Some(address) = address(matrix.base_url()) else {
            tracing::warn!(
                url = matrix.base_url(),
                "cannot watch the homeserver: no host in its URL"
            );
            return;
        };
        loop {
            let connected =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&address)).await;
            let Ok(Ok(mut stream)) = connected else {
                matrix.outages().note(Seen::Unreachable);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            while matrix.outages().open().is_some() {
                match self.catch_up_from_homeserver().await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read what the homeserver may not have sent; trying again in 2 s");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            // Nothing is ever sent on this connection: any read ends when it closes.
            let mut buf = [0u8; 64];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            tracing::debug!("the idle connection to the homeserver closed");
            matrix.outages().note(Seen::ConnectionClosed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_stays_open_when_a_sign_comes_during_its_catch_up() {
        let outages = Outages::default();
        assert_eq!(outages.open(), None);
        outages.note(Seen::ConnectionClosed);
        let first = outages.open().unwrap();
        assert!(!first.every_portal);
        outages.note(Seen::Unreachable);
        let second = outages.open().unwrap();
        assert_eq!(
            second.since_ms, first.since_ms,
            "the gap starts at its first sign"
        );
        assert!(second.every_portal);
        outages.close(&first);
        assert_eq!(outages.open(), Some(second), "a later sign keeps it open");
        outages.close(&second);
        assert_eq!(outages.open(), None);
    }

    #[test]
    fn the_watched_address_comes_from_the_base_url() {
        assert_eq!(
            address("http://127.0.0.1:8008").as_deref(),
            Some("127.0.0.1:8008")
        );
        assert_eq!(
            address("https://matrix.example.org/").as_deref(),
            Some("matrix.example.org:443")
        );
        assert_eq!(address("http://synapse").as_deref(), Some("synapse:80"));
        assert_eq!(address("not a url"), None);
    }
}
