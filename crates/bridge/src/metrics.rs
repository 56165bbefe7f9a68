//! Prometheus metrics: counters and a latency histogram, rendered in the text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct State {
    bridged: BTreeMap<&'static str, u64>,
    failures: BTreeMap<String, u64>,
    sessions: BTreeMap<String, &'static str>,
    /// Time inside the bridge, per direction.
    latency: BTreeMap<&'static str, Histogram>,
    /// Stanza received → homeserver accepted.
    end_to_end: BTreeMap<&'static str, Histogram>,
}

/// The bridge's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A message was bridged in `direction` after `elapsed` in the delivery step; `received_ms`
    /// is when the bridge first saw it.
    pub fn bridged(&self, direction: &'static str, elapsed: Duration, received_ms: Option<i64>) {
        self.with(|s| {
            *s.bridged.entry(direction).or_default() += 1;
            s.latency
                .entry(direction)
                .or_default()
                .observe(elapsed.as_secs_f64());
            if let Some(r) = received_ms {
                let now = crate::runtime::now_ms();
                s.end_to_end
                    .entry(direction)
                    .or_default()
                    .observe(((now - r).max(0) as f64) / 1000.0);
            }
        });
    }

    /// A failure of some kind.
    pub fn failure(&self, reason: &str) {
        self.with(|s| *s.failures.entry(reason.to_owned()).or_default() += 1);
    }

    /// The connection state of a user's session.
    pub fn session_state(&self, user: &str, state: &'static str) {
        self.with(|s| {
            s.sessions.insert(user.to_owned(), state);
        });
    }

    /// How many messages were bridged in a direction.
    pub fn bridged_count(&self, direction: &str) -> u64 {
        self.with(|s| s.bridged.get(direction).copied().unwrap_or(0))
    }

    /// Renders the Prometheus text format; `outbox` holds the depth per direction.
    pub fn render(&self, outbox: &[(&str, i64)]) -> String {
        let mut out = String::new();
        self.with(|s| {
            out.push_str("# HELP messenger_bridge_messages_total Messages bridged, by direction.\n# TYPE messenger_bridge_messages_total counter\n");
            for d in ["xmpp_to_matrix", "matrix_to_xmpp"] {
                let _ = writeln!(out, "messenger_bridge_messages_total{{direction=\"{d}\"}} {}", s.bridged.get(d).copied().unwrap_or(0));
            }
            out.push_str("# HELP messenger_bridge_failures_total Delivery and protocol failures, by reason.\n# TYPE messenger_bridge_failures_total counter\n");
            for (reason, n) in &s.failures {
                let _ = writeln!(out, "messenger_bridge_failures_total{{reason=\"{reason}\"}} {n}");
            }
            out.push_str("# HELP messenger_bridge_sessions XMPP sessions, by state.\n# TYPE messenger_bridge_sessions gauge\n");
            let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
            for st in ["connecting", "connected", "transient_disconnect", "bad_credentials", "failed", "logged_out"] {
                by_state.insert(st, 0);
            }
            for st in s.sessions.values() {
                *by_state.entry(st).or_default() += 1;
            }
            for (st, n) in by_state {
                let _ = writeln!(out, "messenger_bridge_sessions{{state=\"{st}\"}} {n}");
            }
            for (name, help, hists) in [
                ("messenger_bridge_delivery_seconds", "Time to deliver one message once taken from the outbox.", &s.latency),
                ("messenger_bridge_end_to_end_seconds", "Time from the bridge receiving a message to the other side accepting it.", &s.end_to_end),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
                for (d, h) in hists {
                    for (i, b) in BUCKETS.iter().enumerate() {
                        let _ = writeln!(out, "{name}_bucket{{direction=\"{d}\",le=\"{b}\"}} {}", h.counts[i]);
                    }
                    let _ = writeln!(out, "{name}_bucket{{direction=\"{d}\",le=\"+Inf\"}} {}", h.count);
                    let _ = writeln!(out, "{name}_sum{{direction=\"{d}\"}} {}", h.sum);
                    let _ = writeln!(out, "{name}_count{{direction=\"{d}\"}} {}", h.count);
                }
            }
        });
        out.push_str("# HELP messenger_bridge_outbox_depth Messages waiting for delivery, by direction.\n# TYPE messenger_bridge_outbox_depth gauge\n");
        for (d, n) in outbox {
            let _ = writeln!(
                out,
                "messenger_bridge_outbox_depth{{direction=\"{d}\"}} {n}"
            );
        }
        out
    }
}
