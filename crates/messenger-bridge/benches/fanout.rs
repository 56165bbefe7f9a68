//! Fan-out benchmark on the real stack (not a test): C contacts each send M messages at once,
//! unpaced, each with `<active/>` as real clients send, into C portals; compared, in the same
//! run, with the same C×M events sent straight to Synapse as the same ghosts into the same rooms
//! (appservice token, concurrency 32). The homeserver is the limit: the bridge should reach
//! ≥ 90% of the bare sender's rate. Reports both rates and each process's CPU per message.
//!
//!   deploy/local/stack up
//!   cargo build --release -p messenger-bridge
//!   cargo bench -p messenger-bridge --bench fanout [-- CONTACTS MESSAGES]   (default 50 40)

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Matrix, cpu_times, enc};
use testkit::{StackEnv, repo_root};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod support;

/// Bodies seen in the user's rooms, by tag prefix; duplicates counted.
#[derive(Default)]
struct Seen {
    bodies: HashSet<String>,
    duplicates: usize,
}

impl Seen {
    fn count(&self, tag: &str) -> usize {
        self.bodies.iter().filter(|b| b.starts_with(tag)).count()
    }
}

/// Follows the user's /sync: joins every invite (remembering which ghost invited), and records
/// every message body from a ghost.
fn spawn_sync(
    matrix: Arc<Matrix>,
    user: String,
    seen: Arc<Mutex<Seen>>,
    rooms: Arc<Mutex<HashMap<String, String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let filter = enc(&json!({"room": {"timeline": {"limit": 5000}}}).to_string());
        let mut since: Option<String> = None;
        loop {
            let mut path = format!("/_matrix/client/v3/sync?timeout=10000&filter={filter}");
            if let Some(s) = &since {
                path.push_str(&format!("&since={}", enc(s)));
            }
            let page = matrix.call(reqwest::Method::GET, &path, None).await;
            if let Some(invites) = page["rooms"]["invite"].as_object() {
                for (room, invite) in invites {
                    let inviter = invite["invite_state"]["events"]
                        .as_array()
                        .and_then(|events| {
                            events.iter().find(|e| {
                                e["type"] == "m.room.member" && e["state_key"] == user.as_str()
                            })
                        })
                        .and_then(|e| e["sender"].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    let m = matrix.clone();
                    let r = room.clone();
                    tokio::spawn(async move {
                        m.call(
                            reqwest::Method::POST,
                            &format!("/_matrix/client/v3/join/{}", enc(&r)),
                            Some(json!({})),
                        )
                        .await;
                    });
                    rooms.lock().unwrap().insert(room.clone(), inviter);
                }
            }
            if let Some(joined) = page["rooms"]["join"].as_object() {
                let mut seen = seen.lock().unwrap();
                for (_, room) in joined {
                    if room["timeline"]["limited"] == true && since.is_some() {
                        eprintln!("warning: a sync timeline was limited; counts may be short");
                    }
                    for e in room["timeline"]["events"].as_array().into_iter().flatten() {
                        if e["type"] != "m.room.message" || e["sender"] == user.as_str() {
                            continue;
                        }
                        if let Some(body) = e["content"]["body"].as_str()
                            && !seen.bodies.insert(body.to_owned())
                        {
                            seen.duplicates += 1;
                        }
                    }
                }
            }
            match page["next_batch"].as_str() {
                Some(next) => since = Some(next.to_owned()),
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let contacts = numbers.first().copied().unwrap_or(50);
    let per_contact = numbers.get(1).copied().unwrap_or(40);
    let total = contacts * per_contact;
    let env = StackEnv::load();
    let bin = std::env::var("MESSENGER_BRIDGE_BIN").unwrap_or_else(|_| {
        repo_root()
            .join("target/release/messenger-bridge")
            .display()
            .to_string()
    });
    assert!(
        std::path::Path::new(&bin).exists(),
        "build the bridge first: cargo build --release -p messenger-bridge"
    );
    let dir = std::env::temp_dir().join(format!("mb-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The contacts: accounts on the standard host (Prosody's own `register`).
    let domain = env.get("XMPP_STANDARD_DOMAIN").to_owned();
    let prosody_cfg = format!("{}/prosody/prosody.cfg.lua", env.get("STACK_DIR"));
    let users: Vec<String> = (1..=contacts).map(|i| format!("fanout{i:03}")).collect();
    for u in &users {
        let ok = tokio::process::Command::new("prosodyctl")
            .args([
                "--config",
                &prosody_cfg,
                "register",
                u,
                &domain,
                &format!("{u}pass"),
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .unwrap()
            .success();
        assert!(ok, "prosodyctl register {u}");
    }

    let key = String::from_utf8(
        std::process::Command::new(&bin)
            .arg("generate-key")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, format!(
        "homeserver: {{url: \"{}\", server_name: \"{}\"}}\nappservice: {{listen: \"127.0.0.1:29317\", registration: \"{}\"}}\n\
         xmpp: {{profile: messenger, domain: \"{}\", host: \"{}\", port: {}, ca_file: \"{}\"}}\n\
         oauth: {{authorize_url: \"{}\", token_url: \"{}\", client_id: \"{}\", client_secret: \"{}\", redirect_url: \"{}\"}}\n\
         database: {{url: \"sqlite://{}/bridge.db\", encryption_key: \"{}\"}}\nbridge: {{permissions: {{\"{}\": user}}}}\nlogging: {{filter: warn}}\n",
        env.get("SYNAPSE_URL"), env.get("MATRIX_SERVER_NAME"), env.get("AS_REGISTRATION"), env.get("XMPP_MESSENGER_DOMAIN"), env.get("XMPP_HOST"),
        env.get("XMPP_PORT"), env.get("XMPP_CA_FILE"), env.get("OAUTH_AUTHORIZE_URL"), env.get("OAUTH_TOKEN_URL"), env.get("OAUTH_CLIENT_ID"),
        env.get("OAUTH_CLIENT_SECRET"), env.get("OAUTH_REDIRECT_URI"), dir.display(), key.trim(), env.get("MATRIX_SERVER_NAME"),
    )).unwrap();

    // The Matrix user, linked to alice.
    let username = format!("fanout{}", std::process::id());
    testkit::register_matrix_user(&env, &username, "pass-word-1").await;
    let http = reqwest::Client::new();
    let login: Value = serde_json::from_slice(&http.post(format!("{}/_matrix/client/v3/login", env.get("SYNAPSE_URL")))
        .header("content-type", "application/json")
        .body(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": username}, "password": "pass-word-1"}).to_string())
        .send().await.unwrap().bytes().await.unwrap()).unwrap();
    let matrix = Arc::new(Matrix {
        http: http.clone(),
        base: env.get("SYNAPSE_URL").to_owned(),
        token: login["access_token"].as_str().unwrap().to_owned(),
    });
    let user_id = login["user_id"].as_str().unwrap().to_owned();
    let tokens = testkit::bridge_tokens_json(&env, "alice").await;
    let mut link = tokio::process::Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .args(["link", "--user", &user_id, "--jid"])
        .arg(format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN")))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    link.stdin
        .as_mut()
        .unwrap()
        .write_all(tokens.as_bytes())
        .await
        .unwrap();
    drop(link.stdin.take());
    assert!(link.wait().await.unwrap().success());

    let mut bridge = tokio::process::Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .arg("run")
        .kill_on_drop(true)
        .stderr(std::fs::File::create(dir.join("bridge.log")).unwrap())
        .spawn()
        .unwrap();
    let bridge_pid = bridge.id().unwrap();
    let synapse_pid: u32 =
        std::fs::read_to_string(format!("{}/run/synapse.pid", env.get("STACK_DIR")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    for _ in 0..200 {
        if http
            .get("http://127.0.0.1:29317/health")
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let rooms = Arc::new(Mutex::new(HashMap::new()));
    let sync = spawn_sync(matrix.clone(), user_id.clone(), seen.clone(), rooms.clone());

    // The contacts log in; each opens its portal with one message.
    let alice = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let mut peer = tokio::process::Command::new(env.python())
        .arg(repo_root().join("tests/peers/burst_contacts.py"))
        .args([
            "--domain",
            &domain,
            "--users",
            &users.join(","),
            "--to",
            &alice,
        ])
        .args([
            "--host",
            env.get("XMPP_HOST"),
            "--port",
            env.get("XMPP_PORT"),
        ])
        .args(["--ca", env.get("XMPP_CA_FILE")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut peer_in = peer.stdin.take().unwrap();
    let mut peer_out = BufReader::new(peer.stdout.take().unwrap()).lines();
    let mut expect = async |event: &str| {
        let line = peer_out.next_line().await.unwrap().unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], event, "{line}");
    };
    expect("ready").await;
    let mut send = async |count: usize, tag: &str| {
        let cmd = json!({"op": "send", "count": count, "tag": tag}).to_string() + "\n";
        peer_in.write_all(cmd.as_bytes()).await.unwrap();
    };
    send(1, "open").await;
    expect("sent").await;
    wait_until(
        "every portal opened and joined",
        Duration::from_secs(120),
        || {
            seen.lock().unwrap().count("open") >= contacts
                && rooms.lock().unwrap().len() >= contacts
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let portals: Vec<(String, String)> = rooms
        .lock()
        .unwrap()
        .iter()
        .map(|(room, ghost)| (room.clone(), ghost.clone()))
        .collect();

    // 1. Bare: the same events straight to Synapse, as the same ghosts into the same rooms.
    let bare_tag = format!("bare{}", std::process::id());
    let as_token = env.get("AS_TOKEN").to_owned();
    let (s0, t0) = (cpu_times(synapse_pid), Instant::now());
    {
        let limit = Arc::new(tokio::sync::Semaphore::new(32));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..per_contact {
            for (n, (room, ghost)) in portals.iter().enumerate() {
                let permit = limit.clone().acquire_owned().await.unwrap();
                let (http, base, token) = (
                    http.clone(),
                    env.get("SYNAPSE_URL").to_owned(),
                    as_token.clone(),
                );
                let url = format!(
                    "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/{bare_tag}-{n}-{i}?user_id={}",
                    enc(room),
                    enc(ghost)
                );
                let body =
                    json!({"msgtype": "m.text", "body": format!("{bare_tag} {n} {i}")}).to_string();
                tasks.spawn(async move {
                    let r = http
                        .put(url)
                        .bearer_auth(token)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "bare send: {}", r.status());
                    drop(permit);
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    }
    wait_until(
        "the bare events in the rooms",
        Duration::from_secs(600),
        || seen.lock().unwrap().count(&bare_tag) >= total,
    )
    .await;
    let (s1, bare_secs) = (cpu_times(synapse_pid), t0.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. Bridged: the contacts write, all at once.
    let tag = format!("burst{}", std::process::id());
    let (b2, s2, t2) = (
        cpu_times(bridge_pid),
        cpu_times(synapse_pid),
        Instant::now(),
    );
    send(per_contact, &tag).await;
    expect("sent").await;
    wait_until(
        "the bridged messages in the rooms",
        Duration::from_secs(600),
        || seen.lock().unwrap().count(&tag) >= total,
    )
    .await;
    let (b3, s3, bridged_secs) = (
        cpu_times(bridge_pid),
        cpu_times(synapse_pid),
        t2.elapsed().as_secs_f64(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let duplicates = seen.lock().unwrap().duplicates;
    assert_eq!(duplicates, 0, "{duplicates} messages arrived twice");
    sync.abort();

    let cpu = |a: (f64, f64), b: (f64, f64)| (b.0 - a.0) + (b.1 - a.1);
    let ms_per = |secs: f64| secs * 1000.0 / total as f64;
    let (bare_rate, bridged_rate) = (total as f64 / bare_secs, total as f64 / bridged_secs);
    println!(
        "fan-out: {contacts} contacts × {per_contact} messages, unpaced, <active/> on each (bridge release build, SQLite, 2 cores)"
    );
    println!();
    println!("| sender | wall s | messages/s | Synapse CPU ms / msg | bridge CPU ms / msg |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| bare appservice (32 at once) | {bare_secs:.1} | {bare_rate:.1} | {:.2} | — |",
        ms_per(cpu(s0, s1))
    );
    println!(
        "| bridged (XMPP contacts) | {bridged_secs:.1} | {bridged_rate:.1} | {:.2} | {:.2} |",
        ms_per(cpu(s2, s3)),
        ms_per(cpu(b2, b3))
    );
    println!();
    println!(
        "bridged / bare throughput: {:.0}%; bridge CPU / Synapse CPU: {:.1}%",
        100.0 * bridged_rate / bare_rate,
        100.0 * cpu(b2, b3) / cpu(s2, s3).max(1e-9)
    );
    peer_in.write_all(b"{\"op\": \"quit\"}\n").await.ok();
    let _ = bridge.kill().await;
}
