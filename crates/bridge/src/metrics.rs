//! Prometheus metrics: counters and a latency histogram, rendered in the text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Latency buckets in seconds: fine below 10 ms, where the bridge's own share lives.
const BUCKETS: [f64; 20] = [
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];
/// The parts of a message's latency, in the order they are rendered.
const PARTS: [&str; 4] = ["total", "queue", "remote", "bridge"];

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
    /// XMPP logins that reached the connected state.
    logins: u64,
    /// Broken XMPP streams resumed without a new login (XEP-0198).
    resumptions: u64,
    /// Contact vCard fetches, by outcome.
    vcard_fetches: BTreeMap<&'static str, u64>,
    /// Catch-ups after homeserver outages, and the events they found never sent.
    catch_ups: u64,
    events_recovered: u64,
    /// Per direction, one histogram per part of [`crate::latency::Breakdown`] (see `PARTS`).
    latency: BTreeMap<&'static str, [Histogram; 4]>,
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

    /// A message was bridged in `direction`; `timing` is its latency split up, when the bridge
    /// saw it arrive in this run.
    pub fn bridged(&self, direction: &'static str, timing: Option<crate::latency::Breakdown>) {
        self.with(|s| {
            *s.bridged.entry(direction).or_default() += 1;
            if let Some(t) = timing {
                let h = s.latency.entry(direction).or_default();
                for (i, d) in [t.total, t.queue, t.remote, t.bridge]
                    .into_iter()
                    .enumerate()
                {
                    h[i].observe(d.as_secs_f64());
                }
            }
        });
    }

    /// A failure of some kind.
    pub fn failure(&self, reason: &str) {
        self.with(|s| *s.failures.entry(reason.to_owned()).or_default() += 1);
    }

    /// The connection state of a user's session; `connected` also counts a login.
    pub fn session_state(&self, user: &str, state: &'static str) {
        self.with(|s| {
            match state {
                "connected" => s.logins += 1,
                "resumed" => s.resumptions += 1,
                _ => {}
            }
            let state = if state == "resumed" {
                "connected"
            } else {
                state
            };
            s.sessions.insert(user.to_owned(), state);
        });
    }

    /// A contact's vCard was fetched: `ok`, `too_large`, `timeout` or `error`.
    pub fn vcard_fetch(&self, result: &'static str) {
        self.with(|s| *s.vcard_fetches.entry(result).or_default() += 1);
    }

    /// A catch-up after a homeserver outage ran and recorded `recovered` events it had never
    /// been sent.
    pub fn catch_up(&self, recovered: usize) {
        self.with(|s| {
            s.catch_ups += 1;
            s.events_recovered += recovered as u64;
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
            out.push_str("# HELP messenger_bridge_xmpp_logins_total XMPP sessions that logged in (first logins and reconnects).\n# TYPE messenger_bridge_xmpp_logins_total counter\n");
            let _ = writeln!(out, "messenger_bridge_xmpp_logins_total {}", s.logins);
            out.push_str("# HELP messenger_bridge_xmpp_resumptions_total Broken XMPP streams resumed without a new login (XEP-0198 stream management).\n# TYPE messenger_bridge_xmpp_resumptions_total counter\n");
            let _ = writeln!(out, "messenger_bridge_xmpp_resumptions_total {}", s.resumptions);
            out.push_str("# HELP messenger_bridge_vcard_fetches_total Contact vCards fetched for ghost profiles, by result.\n# TYPE messenger_bridge_vcard_fetches_total counter\n");
            for r in ["ok", "too_large", "timeout", "error"] {
                let _ = writeln!(out, "messenger_bridge_vcard_fetches_total{{result=\"{r}\"}} {}", s.vcard_fetches.get(r).copied().unwrap_or(0));
            }
            out.push_str("# HELP messenger_bridge_homeserver_catch_ups_total Times the bridge read the portals' recent history after signs of a homeserver outage.\n# TYPE messenger_bridge_homeserver_catch_ups_total counter\n");
            let _ = writeln!(out, "messenger_bridge_homeserver_catch_ups_total {}", s.catch_ups);
            out.push_str("# HELP messenger_bridge_matrix_events_recovered_total Matrix events the homeserver never sent the bridge (lost in its restart), found in the rooms' history and bridged.\n# TYPE messenger_bridge_matrix_events_recovered_total counter\n");
            let _ = writeln!(out, "messenger_bridge_matrix_events_recovered_total {}", s.events_recovered);
            let name = "messenger_bridge_latency_seconds";
            let _ = writeln!(out, "# HELP {name} Time from the bridge receiving a message to the other side accepting it (part=total), split into waiting behind earlier messages of the portal (queue), the other side's request time (remote) and the bridge's own share (bridge).\n# TYPE {name} histogram");
            for (d, hists) in &s.latency {
                for (part, h) in PARTS.iter().zip(hists) {
                    let labels = format!("direction=\"{d}\",part=\"{part}\"");
                    for (i, b) in BUCKETS.iter().enumerate() {
                        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {}", h.counts[i]);
                    }
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
                    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
                    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
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
