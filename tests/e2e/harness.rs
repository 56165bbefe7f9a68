//! Starting the bridge with a fresh database, Matrix users (matrix-sdk) and waits.

use std::path::PathBuf;
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::{Client, Room};
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::Value;
use testkit::StackEnv;
use tokio::process::{Child, Command};

/// One test at a time: the bridge port is fixed by the registration.
pub(crate) async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub(crate) fn unique(tag: &str) -> String {
    format!("{tag}{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (n as u32) ^ (n >> 32) as u32 ^ std::process::id().rotate_left(16)
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// The bridge under test, as a process with its own config and database.
pub(crate) struct TestBridge {
    pub(crate) env: StackEnv,
    pub(crate) dir: PathBuf,
    pub(crate) config: PathBuf,
    /// The XMPP domain users are linked on (the Messenger host unless
    /// [`TestBridge::use_standard_host`]).
    xmpp_domain: String,
    child: Option<Child>,
}

impl TestBridge {
    pub(crate) async fn new(env: &StackEnv, backend: Backend) -> Self {
        let dir = std::env::temp_dir().join(unique("mb-e2e-"));
        std::fs::create_dir_all(&dir).unwrap();
        let db_url = match backend {
            Backend::Sqlite => format!("sqlite://{}/bridge.db", dir.display()),
            Backend::Postgres => {
                let db = unique("bridge_e2e_");
                let status = Command::new("psql")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-U",
                        "postgres",
                        "-d",
                        "test",
                        "-c",
                        &format!("CREATE DATABASE {db}"),
                    ])
                    .status()
                    .await
                    .unwrap();
                assert!(
                    status.success(),
                    "cannot create a PostgreSQL database for the test"
                );
                format!("postgres://postgres@127.0.0.1:5432/{db}")
            }
        };
        let key = {
            let out = Command::new(env!("CARGO_BIN_EXE_messenger-bridge"))
                .arg("generate-key")
                .output()
                .await
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let yaml = format!(
            "homeserver:\n  url: {hs}\n  server_name: {server}\n\
             appservice:\n  listen: 127.0.0.1:29317\n  registration: {reg}\n\
             xmpp:\n  profile: messenger\n  domain: {domain}\n  host: {host}\n  port: {port}\n  ca_file: {ca}\n  keepalive_secs: 30\n\
             oauth:\n  authorize_url: {authz}\n  token_url: {token}\n  revoke_url: {revoke}\n  device_url: {device}\n  client_id: {cid}\n  client_secret: {secret}\n  redirect_url: {redirect}\n\
             database:\n  url: {db_url}\n  encryption_key: {key}\n\
             bridge:\n  permissions:\n    \"*\": none\n    {server}: user\n    \"@outsider:{server}\": none\n  state_notice_delay_secs: 3\n  max_message_bytes: 4000\n  backfill_messages: 0\n\
             logging:\n  filter: info,bridge=debug,xmpp_core=trace\n",
            hs = env.get("SYNAPSE_URL"),
            server = env.get("MATRIX_SERVER_NAME"),
            reg = env.get("AS_REGISTRATION"),
            domain = env.get("XMPP_MESSENGER_DOMAIN"),
            host = env.get("XMPP_HOST"),
            port = env.get("XMPP_PORT"),
            ca = env.get("XMPP_CA_FILE"),
            authz = env.get("OAUTH_AUTHORIZE_URL"),
            token = env.get("OAUTH_TOKEN_URL"),
            revoke = env.get("OAUTH_REVOKE_URL"),
            device = env.get("OAUTH_DEVICE_URL"),
            cid = env.get("OAUTH_CLIENT_ID"),
            secret = env.get("OAUTH_CLIENT_SECRET"),
            redirect = env.get("OAUTH_REDIRECT_URI"),
        );
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        Self {
            env: env.clone(),
            dir,
            config,
            xmpp_domain: env.get("XMPP_MESSENGER_DOMAIN").to_owned(),
            child: None,
        }
    }

    /// Configures the bridge for the stack's standard XMPP host (SCRAM passwords, vCards that
    /// contacts publish themselves, roster changes) instead of the Messenger profile.
    pub(crate) fn use_standard_host(&mut self) {
        self.edit_config("profile: messenger", "profile: standard");
        let standard = self.env.get("XMPP_STANDARD_DOMAIN").to_owned();
        self.edit_config(
            &format!("domain: {}", self.env.get("XMPP_MESSENGER_DOMAIN")),
            &format!("domain: {standard}"),
        );
        self.xmpp_domain = standard;
    }

    /// Configures the bridge for the stack's ejabberd (a second standard server).
    pub(crate) fn use_ejabberd(&mut self) {
        self.edit_config("profile: messenger", "profile: standard");
        let domain = self.env.get("EJABBERD_DOMAIN").to_owned();
        self.edit_config(
            &format!("domain: {}", self.env.get("XMPP_MESSENGER_DOMAIN")),
            &format!("domain: {domain}"),
        );
        self.edit_config(
            &format!("port: {}\n", self.env.get("XMPP_PORT")),
            &format!("port: {}\n", self.env.get("EJABBERD_PORT")),
        );
        self.xmpp_domain = domain;
    }

    /// Turns double puppeting on with the stack's second registration (its token).
    pub(crate) fn use_double_puppeting(&self) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen(
            "appservice:\n",
            &format!(
                "appservice:\n  double_puppet_token: {}\n",
                self.env.get("DOUBLE_PUPPET_TOKEN")
            ),
            1,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Replaces (or adds) `key: value` in the `xmpp:` section of the config.
    pub(crate) fn configure_xmpp(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen("xmpp:\n", &format!("xmpp:\n  {key}: {value}\n"), 1);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Links `matrix_user` to `xmpp_user` on the standard host with the seeded password.
    pub(crate) async fn link_with_password(&self, matrix_user: &UserId, xmpp_user: &str) {
        let secret = serde_json::json!({ "password": format!("{xmpp_user}pass") }).to_string();
        self.link_with_tokens(matrix_user, xmpp_user, &secret).await;
    }

    /// Adds `key: value` to the `bridge:` section of the config.
    pub(crate) fn configure(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen("bridge:\n", &format!("bridge:\n  {key}: {value}\n"), 1);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Replaces text in the config (e.g. `"profile: messenger"` → `"profile: standard"`).
    pub(crate) fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "{from:?} not in the config");
        std::fs::write(&self.config, text.replacen(from, to, 1)).unwrap();
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_messenger-bridge"));
        c.arg("-c").arg(&self.config);
        c
    }

    /// Links `matrix_user` to the XMPP account `xmpp_user` with real tokens from the provider.
    pub(crate) async fn link(&self, matrix_user: &UserId, xmpp_user: &str) {
        let tokens = testkit::bridge_tokens_json(&self.env, xmpp_user).await;
        self.link_with_tokens(matrix_user, xmpp_user, &tokens).await;
    }

    /// Logs everything of the bridge's own crates at `trace` (and the rest at `debug`).
    pub(crate) fn trace_logging(&self) {
        self.edit_config(
            "filter: info,bridge=debug,xmpp_core=trace",
            "filter: debug,bridge=trace,xmpp_core=trace,store=trace,messenger_bridge=trace",
        );
    }

    /// Asserts that the bridge's log holds none of the stack's secrets, the config's encryption
    /// key, nor any of `extra` (tokens the test saw).
    pub(crate) fn assert_log_has_no_secrets(&self, extra: &[&str]) {
        let log = std::fs::read_to_string(self.dir.join("bridge.log")).unwrap();
        let config = std::fs::read_to_string(&self.config).unwrap();
        let key = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("encryption_key: "))
            .unwrap()
            .to_owned();
        let key_bytes = key
            .split_once(':')
            .map_or(key.as_str(), |(_, b)| b)
            .to_owned();
        let mut secrets = vec![
            self.env.get("OAUTH_CLIENT_SECRET").to_owned(),
            self.env.get("AS_TOKEN").to_owned(),
            self.env.get("HS_TOKEN").to_owned(),
            key_bytes,
        ];
        secrets.extend(extra.iter().map(|s| (*s).to_owned()));
        assert!(
            log.lines().count() > 20,
            "the log is too short to prove anything"
        );
        for secret in secrets.iter().filter(|s| s.len() >= 8) {
            assert!(
                !log.contains(secret.as_str()),
                "a secret ({}…) is in the bridge's log",
                &secret[..4]
            );
        }
    }

    /// Configures the bridge as the provider's public client (no secret, PKCE only).
    pub(crate) fn use_public_client(&self) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("client_secret:"))
            .map(|l| {
                if l.trim_start().starts_with("client_id:") {
                    "  client_id: messenger-bridge-public".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&self.config, text + "\n").unwrap();
    }

    /// Links `matrix_user` to `xmpp_user` with the given secret JSON (`access_token`,
    /// `refresh_token`, `expires_in`, or `password`), as `messenger-bridge link` reads it.
    pub(crate) async fn link_with_tokens(
        &self,
        matrix_user: &UserId,
        xmpp_user: &str,
        tokens: &str,
    ) {
        use tokio::io::AsyncWriteExt;
        let jid = format!("{xmpp_user}@{}", self.xmpp_domain);
        let mut child = self
            .command()
            .args(["link", "--user", matrix_user.as_str(), "--jid", &jid])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(tokens.as_bytes())
            .await
            .unwrap();
        assert!(
            child.wait().await.unwrap().success(),
            "messenger-bridge link failed"
        );
    }

    /// Starts the bridge and waits until `/health` says ready.
    pub(crate) async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("bridge.log"))
            .unwrap();
        let child = self
            .command()
            .arg("run")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the bridge exited with {status}:\n{}", self.log_tail());
            }
            if http
                .get("http://127.0.0.1:29317/health")
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the bridge did not become ready:\n{}", self.log_tail());
    }

    /// The bridge's `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        reqwest::get("http://127.0.0.1:29317/metrics")
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGSTOP: the process is frozen; connections to it stay open and requests queue in the
    /// kernel, as with a bridge stuck on a slow disk.
    pub(crate) async fn pause(&self) {
        self.signal("-STOP").await;
    }

    /// SIGCONT after [`Self::pause`].
    pub(crate) async fn resume(&self) {
        self.signal("-CONT").await;
    }

    async fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the bridge is running");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL: no chance to flush or close anything.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// SIGTERM and wait.
    pub(crate) async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("bridge.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Opens the bridge's store (same config) to look inside.
    pub(crate) async fn open_store(&self) -> store::Store {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let url = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("url: ")
                    .filter(|u| u.starts_with("sqlite") || u.starts_with("postgres"))
            })
            .unwrap();
        let key = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("encryption_key: "))
            .unwrap();
        store::Store::open(store::StoreConfig::new(
            url,
            store::Keyring::parse(key).unwrap(),
        ))
        .await
        .unwrap()
    }
}

impl TestBridge {
    /// Runs SQL in the bridge's own PostgreSQL database (a [`Backend::Postgres`] bridge).
    pub(crate) async fn psql(&self, sql: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let url = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("url: postgres"))
            .map(|rest| format!("postgres{rest}"))
            .expect("a PostgreSQL bridge");
        let status = Command::new("psql")
            .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "psql: {sql}");
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// A Matrix user played by matrix-sdk, syncing in the background.
pub(crate) struct MatrixUser {
    pub(crate) client: Client,
    pub(crate) user_id: OwnedUserId,
    sync: tokio::task::JoinHandle<()>,
}

impl MatrixUser {
    pub(crate) async fn new(env: &StackEnv, name: &str) -> Self {
        let username = unique(name);
        testkit::register_matrix_user(env, &username, "pass-word-1").await;
        let client = Client::builder()
            .homeserver_url(env.get("SYNAPSE_URL"))
            .build()
            .await
            .unwrap();
        client
            .matrix_auth()
            .login_username(&username, "pass-word-1")
            .send()
            .await
            .unwrap();
        client.sync_once(SyncSettings::default()).await.unwrap();
        let user_id = client.user_id().unwrap().to_owned();
        let c = client.clone();
        let sync = tokio::spawn(async move {
            loop {
                let _ = c
                    .sync(SyncSettings::default().timeout(Duration::from_secs(5)))
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            client,
            user_id,
            sync,
        }
    }

    /// Waits for an invite from `inviter` (a ghost) and joins it.
    pub(crate) async fn accept_invite_from(&self, inviter: &UserId, limit: Duration) -> Room {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            for room in self.client.invited_rooms() {
                let invite = room.invite_details().await;
                if invite
                    .ok()
                    .and_then(|d| d.inviter)
                    .is_some_and(|m| m.user_id() == inviter)
                {
                    room.join().await.unwrap();
                    return room;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no invite from {inviter} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The room's messages (`m.room.message` events as JSON), oldest first.
    pub(crate) async fn messages(&self, room: &OwnedRoomId) -> Vec<Value> {
        let mut out = self.timeline(room).await;
        out.retain(|v| v["type"] == "m.room.message");
        out
    }

    /// The room's last 500 events of every kind (reactions, redactions, state), oldest first.
    pub(crate) async fn timeline(&self, room: &OwnedRoomId) -> Vec<Value> {
        let room = self.client.get_room(room).unwrap();
        let mut options = MessagesOptions::backward();
        options.limit = 500u32.into();
        let messages = room.messages(options).await.unwrap();
        let mut out: Vec<Value> = messages
            .chunk
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e.raw().json().get()).ok())
            .collect();
        out.reverse();
        out
    }

    /// Waits until `pred` finds an event in the room's timeline; returns it.
    pub(crate) async fn wait_event(
        &self,
        room: &OwnedRoomId,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let events = self.timeline(room).await;
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return e.clone();
            }
            if tokio::time::Instant::now() >= deadline {
                let kinds: Vec<String> = events
                    .iter()
                    .map(|e| format!("{} {} {}", e["type"], e["sender"], e["content"]))
                    .collect();
                panic!("{what}: not within {T:?}; timeline:\n{}", kinds.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sends an event of any type with JSON content, as a client would; returns its id.
    pub(crate) async fn send_json(
        &self,
        room: &OwnedRoomId,
        event_type: &str,
        content: Value,
    ) -> ruma::OwnedEventId {
        let room = self.client.get_room(room).unwrap();
        room.send_raw(event_type, content)
            .await
            .unwrap()
            .response
            .event_id
    }

    /// Redacts (deletes) an event of the room.
    pub(crate) async fn redact(&self, room: &OwnedRoomId, event: &ruma::EventId) {
        let room = self.client.get_room(room).unwrap();
        room.redact(event, None, None).await.unwrap();
    }

    /// Waits until `pred` holds for the room's messages; returns them.
    pub(crate) async fn wait_messages(
        &self,
        room: &OwnedRoomId,
        limit: Duration,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msgs = self.messages(room).await;
            if pred(&msgs) {
                return msgs;
            }
            if tokio::time::Instant::now() >= deadline {
                let bodies: Vec<&str> = msgs
                    .iter()
                    .filter_map(|m| m["content"]["body"].as_str())
                    .collect();
                panic!("{what}: not within {limit:?}; messages: {bodies:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sends like a Matrix client does when the homeserver may be down: again every 500 ms, for
    /// up to a minute.
    pub(crate) async fn send_text_retrying(&self, room: &OwnedRoomId, text: &str) {
        use ruma::events::room::message::RoomMessageEventContent;
        let room = self.client.get_room(room).unwrap();
        let mut tries = 0;
        while let Err(e) = room.send(RoomMessageEventContent::text_plain(text)).await {
            tries += 1;
            assert!(tries < 120, "could not send {text}: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub(crate) async fn send_text(&self, room: &OwnedRoomId, text: &str) {
        use ruma::events::room::message::RoomMessageEventContent;
        let room = self.client.get_room(room).unwrap();
        room.send(RoomMessageEventContent::text_plain(text))
            .await
            .unwrap();
    }
}

impl Drop for MatrixUser {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

/// `deploy/local/stack restart <service>`: stops it and waits until it is healthy again.
pub(crate) async fn restart_stack_service(service: &str) {
    let status = Command::new(testkit::repo_root().join("deploy/local/stack"))
        .args(["restart", service])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "restarting {service} failed");
}

/// The bodies of the messages sent by `sender`.
/// Waits until the bridge's XMPP sessions have logged in `n` times in all (what a contact sends
/// before that only reaches the user's other clients).
pub(crate) async fn wait_logged_in(bridge: &TestBridge, n: u64) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let text = bridge.metrics().await;
        let logins =
            testkit::metric_value(&text, "messenger_bridge_xmpp_logins_total").unwrap_or(0);
        if logins >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge did not log in to XMPP within {T:?}\n{}",
            bridge.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of one metric line (`name{labels}`) of the bridge's `/metrics`.
pub(crate) async fn metric(bridge: &TestBridge, series: &str) -> u64 {
    let text = bridge.metrics().await;
    testkit::metric_value(&text, series)
        .unwrap_or_else(|| panic!("{series} not in the metrics:\n{text}"))
}

pub(crate) fn bodies_from<'a>(msgs: &'a [Value], sender: &str) -> Vec<&'a str> {
    msgs.iter()
        .filter(|m| m["sender"] == sender)
        .filter_map(|m| m["content"]["body"].as_str())
        .collect()
}

pub(crate) const T: Duration = Duration::from_secs(30);

/// Links alice, starts the bridge, and opens the portal with bob.
pub(crate) async fn portal_with_bob(
    env: &StackEnv,
    bridge: &mut TestBridge,
    user: &MatrixUser,
    bob: &mut testkit::XmppContact,
) -> OwnedRoomId {
    bridge.link(&user.user_id, "alice").await;
    open_portal_with_bob(env, bridge, user, bob).await
}

/// Like [`portal_with_bob`] for a user the test linked itself.
pub(crate) async fn open_portal_with_bob(
    env: &StackEnv,
    bridge: &mut TestBridge,
    user: &MatrixUser,
    bob: &mut testkit::XmppContact,
) -> OwnedRoomId {
    bridge.start().await;
    let ghost = UserId::parse(format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"))).unwrap();
    let alice_jid = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let hello = unique("open ");
    bob.send_chat(&alice_jid, Some(&hello), None).await;
    let room = user.accept_invite_from(&ghost, T).await;
    let room_id = room.room_id().to_owned();
    user.wait_messages(&room_id, T, "portal opened", |m| {
        bodies_from(m, ghost.as_str()).contains(&hello.as_str())
    })
    .await;
    room_id
}

/// Opens a login link as a browser does: GET its confirm page (which names the Matrix account),
/// then confirm with the page's anti-forgery value and its cookie, adding `fields` (the password
/// form's). Returns the confirm page's HTML and the answer to the confirmation.
pub(crate) async fn confirm_link(
    http: &reqwest::Client,
    link: &str,
    fields: &[(&str, &str)],
) -> (String, reqwest::Response) {
    let page = http.get(link).send().await.unwrap();
    assert_eq!(page.status(), 200, "the link shows its confirm page");
    let cookie = set_cookie(&page);
    let html = page.text().await.unwrap();
    let nonce = html
        .split("name=\"confirm\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let mut form = vec![("confirm", nonce.as_str())];
    form.extend_from_slice(fields);
    let answer = http
        .post(link)
        .header("cookie", cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    (html, answer)
}

/// The `name=value` part of a response's `Set-Cookie`, as a browser sends it back.
pub(crate) fn set_cookie(response: &reqwest::Response) -> String {
    response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// Percent-encodes a path segment (user and room ids).
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// GETs a client-server API path as `user`; the JSON answer (null when not JSON).
pub(crate) async fn get_json(user: &MatrixUser, path: &str) -> Value {
    let url = format!("{}{path}", user.client.homeserver());
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(user.client.access_token().unwrap())
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or_default()
}
