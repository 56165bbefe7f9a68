//! Archive catch-up benchmark on the real stack (not a test): the bridge is stopped while the
//! user's phone stays online, a contact sends N messages (1,000 by default), the bridge starts
//! and reads them from the archive (XEP-0313) into one portal. Reports the time until the last
//! is in the room and the CPU the bridge and Synapse spent meanwhile, in the same run.
//!
//!   deploy/local/stack up
//!   cargo build --release -p messenger-bridge
//!   cargo bench -p messenger-bridge --bench catchup [-- N]

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use support::{BenchBridge, cpu_times};
use testkit::{ContactLogin, StackEnv, XmppContact};

mod support;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let env = StackEnv::load();
    let synapse_pid: u32 = env.get("SYNAPSE_PID").parse().unwrap();
    let mut bridge = BenchBridge::start_on(&env, "", true).await;
    bridge.wait_logged_in(1).await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Standard).await;
    let room = bridge.open_portal(&env, &mut bob).await;
    // The phone stays online: the server delivers to it and keeps nothing offline, so only the
    // archive has what follows.
    let mut phone = XmppContact::start(&env, "alice", ContactLogin::Standard).await;
    bridge.stop().await;

    let tag = format!("cu{} ", std::process::id());
    let alice = format!("alice@{}", bridge.domain);
    let sent = Instant::now();
    for i in 0..n {
        bob.send_chat(&alice, Some(&format!("{tag}{i:05}")), None)
            .await;
    }
    let got = phone
        .bodies_starting_with(
            &tag,
            n,
            Duration::from_secs(300),
            Duration::from_millis(200),
        )
        .await;
    assert_eq!(got.len(), n, "the phone got {} of {n}", got.len());
    println!(
        "{n} messages sent to the archive (and the phone) in {:.1} s",
        sent.elapsed().as_secs_f64()
    );

    let synapse_before = cpu_times(synapse_pid);
    let start = Instant::now();
    bridge.restart().await;
    let pid = bridge.pid;
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));
    let mut last_count = 0;
    let mut last_change = Instant::now();
    loop {
        let count = bridge.matrix.count_from(&room, &ghost, &tag).await;
        if count >= n {
            break;
        }
        if count != last_count {
            last_count = count;
            last_change = Instant::now();
        }
        assert!(
            last_change.elapsed() < Duration::from_secs(60),
            "stuck at {count} of {n} for a minute; see {}",
            bridge.dir.join("bridge.log").display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = start.elapsed().as_secs_f64();
    let bridge_cpu = cpu_times(pid);
    let synapse_after = cpu_times(synapse_pid);
    let bridge_s = bridge_cpu.0 + bridge_cpu.1;
    let synapse_s = (synapse_after.0 - synapse_before.0) + (synapse_after.1 - synapse_before.1);
    println!(
        "catch-up of {n} archived messages into one portal: {took:.1} s from the bridge's start ({:.0} messages/s)",
        n as f64 / took
    );
    println!(
        "CPU meanwhile: bridge {bridge_s:.2} s (start-up included), Synapse {synapse_s:.2} s; bridge/Synapse {:.1}%",
        100.0 * bridge_s / synapse_s.max(0.001)
    );
    bridge.stop().await;
    phone.quit().await;
    bob.quit().await;
}
