//! Homeserver outages, and the events they can cost the bridge.
//!
//! Synapse holds the events it has not yet put in an appservice transaction in memory while one
//! transaction is in flight, and forgets them when it stops (element-hq/synapse#11637, open): a
//! message the user sent in the second before a restart never reaches the bridge, and nothing
//! on the Matrix side says so. The bridge therefore notes the signs of an outage: a request
//! that cannot reach the homeserver, or the one TCP connection it keeps open to it without a
//! request (so nothing in the homeserver's logs) closing. Before it records anything more from
//! the homeserver it reads the portals' recent history and records what it never got, in order
//! (`to_xmpp::catch_up`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::context::{Bridge, now_ms};

/// What made the bridge think the homeserver may have lost events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A request or a connection could not reach it: it was down. Every portal is read.
    Unreachable,
    /// The watched connection closed while the homeserver still takes connections (it stopped
    /// and came back while this process was frozen, or a proxy in front dropped it). Only
    /// portals with recent events are read.
    ConnectionClosed,
}

/// An outage that has not been caught up yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    /// Events from this time on (unix ms) may be lost: the first sign, or the last transaction
    /// received before it if that was earlier (the one in flight when the homeserver stopped
    /// may never have arrived).
    pub(crate) since_ms: i64,
    /// Whether to read every portal, not only the recently active ones.
    pub(crate) every_portal: bool,
    noted: u64,
}

/// Signs of outages not caught up yet. Shared by every clone of the Matrix client.
#[derive(Debug, Default)]
pub(crate) struct Outages {
    state: Mutex<Option<Gap>>,
    noted: AtomicU64,
    /// When the last transaction arrived (unix ms; 0: none in this run).
    last_transaction_ms: AtomicI64,
    /// Held while events from the homeserver are recorded, by a transaction or a catch-up:
    /// one at a time, so a portal's events are recorded in order and a transaction waits for
    /// the catch-up before it.
    pub(crate) recording: tokio::sync::Mutex<()>,
}

impl Outages {
    /// Notes a sign of an outage; the gap starts at the first sign not yet caught up.
    pub(crate) fn note(&self, seen: Seen) {
        let noted = self.noted.fetch_add(1, Ordering::SeqCst) + 1;
        let now = now_ms();
        let last = self.last_transaction_ms.load(Ordering::SeqCst);
        let since_ms = if last > 0 { now.min(last) } else { now };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let gap = state.get_or_insert(Gap {
            since_ms,
            every_portal: false,
            noted,
        });
        if seen == Seen::Unreachable && !gap.every_portal {
            tracing::info!(
                "the homeserver is unreachable; what it may not have sent the bridge is read back once it answers"
            );
        }
        gap.every_portal |= seen == Seen::Unreachable;
        gap.noted = noted;
    }

    /// Notes that a transaction arrived now.
    pub(crate) fn note_transaction(&self) {
        self.last_transaction_ms.store(now_ms(), Ordering::SeqCst);
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

/// A connection that lived this long and then closed while the server takes new ones at once
/// was dropped for being idle (Synapse does after a minute), not by a stopping server.
const IDLE_DROP_AFTER: Duration = Duration::from_secs(50);
/// A gap this long between the watcher's ticks means this process was frozen or starved.
const STALL: Duration = Duration::from_secs(2);

async fn connect(address: &str) -> Option<TcpStream> {
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
        .await
        .ok()?
        .ok()
}

/// Waits until the connection closes; returns whether this process stalled meanwhile.
async fn until_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_tick = Instant::now();
    let mut stalled = false;
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                // Nothing is ever sent on this connection: any read ends when it closes.
                if matches!(read, Ok(0) | Err(_)) {
                    return stalled || last_tick.elapsed() > STALL;
                }
            }
            _ = tick.tick() => {
                stalled |= last_tick.elapsed() > STALL;
                last_tick = Instant::now();
            }
        }
    }
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
        let mut next: Option<TcpStream> = None;
        loop {
            let mut stream = match next.take() {
                Some(s) => s,
                None => match connect(&address).await {
                    Some(s) => s,
                    None => {
                        matrix.outages().note(Seen::Unreachable);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
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
            let opened = Instant::now();
            let stalled = until_closed(&mut stream).await;
            if opened.elapsed() >= IDLE_DROP_AFTER && !stalled {
                // Dropped for being idle, if the server takes a new one at once.
                next = connect(&address).await;
                if next.is_some() {
                    tracing::trace!("the homeserver dropped the idle watch connection");
                    continue;
                }
                matrix.outages().note(Seen::Unreachable);
            } else {
                tracing::debug!(stalled, "the watch connection to the homeserver closed");
                matrix.outages().note(Seen::ConnectionClosed);
            }
            // At most one new connection a second.
            tokio::time::sleep(Duration::from_secs(1)).await;
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
    fn a_gap_starts_at_the_last_transaction_before_its_first_sign() {
        let outages = Outages::default();
        outages.note_transaction();
        let received = outages.last_transaction_ms.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        outages.note(Seen::ConnectionClosed);
        assert_eq!(
            outages.open().unwrap().since_ms,
            received,
            "the transaction in flight at the stop may never have arrived"
        );
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
