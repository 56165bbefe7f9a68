//! What the benchmarks share: a small client-server API caller, process CPU times, URL encoding.

#![allow(dead_code, unreachable_pub)]

use serde_json::Value;

/// User and system CPU seconds of a process so far.
pub fn cpu_times(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of /proc/PID/stat (1-based, counting pid and comm).
    let tick = |i: usize| fields[i].parse::<f64>().unwrap() / 100.0;
    (tick(11), tick(12))
}

pub struct Matrix {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Matrix {
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null)
    }

    pub async fn count_from(&self, room: &str, sender: &str, prefix: &str) -> usize {
        let mut count = 0;
        let mut from: Option<String> = None;
        for _ in 0..20 {
            let mut path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
                enc(room)
            );
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", enc(f)));
            }
            let page = self.call(reqwest::Method::GET, &path, None).await;
            let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
            count += chunk
                .iter()
                .filter(|e| {
                    e["sender"] == sender
                        && e["content"]["body"]
                            .as_str()
                            .is_some_and(|b| b.starts_with(prefix))
                })
                .count();
            match page["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                _ => break,
            }
        }
        count
    }
}

/// Percent-encodes a path or query component.
pub fn enc(s: &str) -> String {
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

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Current resident memory (VmRSS) of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resets a process's peak resident memory to its current one (`clear_refs` 5), so the next
/// [`peak_rss_kib`] is the peak of what follows.
pub fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// A release bridge on the stack with alice linked to a fresh Matrix user: on the Messenger host
/// (OAuth tokens), or on the standard host (password, carbons, archive, stream management).
pub struct BenchBridge {
    pub process: tokio::process::Child,
    pub pid: u32,
    pub dir: std::path::PathBuf,
    pub matrix: std::sync::Arc<Matrix>,
    pub user_id: String,
    /// alice's domain.
    pub domain: String,
    bin: String,
    config: std::path::PathBuf,
}

impl BenchBridge {
    /// Starts it on the Messenger host with `bridge_extra` added to the `bridge:` section (YAML
    /// flow items, e.g. `media_from_private_addresses: true`).
    pub async fn start(env: &testkit::StackEnv, bridge_extra: &str) -> Self {
        Self::start_on(env, bridge_extra, false).await
    }

    /// Like [`BenchBridge::start`]; `standard`: on the stack's standard XMPP host.
    pub async fn start_on(env: &testkit::StackEnv, bridge_extra: &str, standard: bool) -> Self {
        use serde_json::json;
        let bin = std::env::var("MESSENGER_BRIDGE_BIN").unwrap_or_else(|_| {
            testkit::repo_root()
                .join("target/release/messenger-bridge")
                .display()
                .to_string()
        });
        assert!(
            std::path::Path::new(&bin).exists(),
            "build the bridge first: cargo build --release -p messenger-bridge"
        );
        let dir = std::env::temp_dir().join(format!("mb-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = String::from_utf8(
            std::process::Command::new(&bin)
                .arg("generate-key")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let config = dir.join("config.yaml");
        let (profile, domain) = if standard {
            ("standard", env.get("XMPP_STANDARD_DOMAIN"))
        } else {
            ("messenger", env.get("XMPP_MESSENGER_DOMAIN"))
        };
        std::fs::write(&config, format!(
            "homeserver: {{url: \"{}\", server_name: \"{}\"}}\nappservice: {{listen: \"127.0.0.1:29317\", registration: \"{}\"}}\n\
             xmpp: {{profile: {profile}, domain: \"{domain}\", host: \"{}\", port: {}, ca_file: \"{}\"}}\n\
             oauth: {{authorize_url: \"{}\", token_url: \"{}\", client_id: \"{}\", client_secret: \"{}\", redirect_url: \"{}\"}}\n\
             database: {{url: \"sqlite://{}/bridge.db\", encryption_key: \"{}\"}}\nbridge: {{permissions: {{\"{}\": user}}, {bridge_extra}}}\nlogging: {{filter: warn}}\n",
            env.get("SYNAPSE_URL"), env.get("MATRIX_SERVER_NAME"), env.get("AS_REGISTRATION"), env.get("XMPP_HOST"),
            env.get("XMPP_PORT"), env.get("XMPP_CA_FILE"), env.get("OAUTH_AUTHORIZE_URL"), env.get("OAUTH_TOKEN_URL"), env.get("OAUTH_CLIENT_ID"),
            env.get("OAUTH_CLIENT_SECRET"), env.get("OAUTH_REDIRECT_URI"), dir.display(), key.trim(), env.get("MATRIX_SERVER_NAME"),
        )).unwrap();
        let username = format!("bench{}", std::process::id());
        testkit::register_matrix_user(env, &username, "pass-word-1").await;
        let http = reqwest::Client::new();
        let login: Value = serde_json::from_slice(&http.post(format!("{}/_matrix/client/v3/login", env.get("SYNAPSE_URL")))
            .header("content-type", "application/json")
            .body(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": username}, "password": "pass-word-1"}).to_string())
            .send().await.unwrap().bytes().await.unwrap()).unwrap();
        let matrix = std::sync::Arc::new(Matrix {
            http: http.clone(),
            base: env.get("SYNAPSE_URL").to_owned(),
            token: login["access_token"].as_str().unwrap().to_owned(),
        });
        let user_id = login["user_id"].as_str().unwrap().to_owned();
        let tokens = if standard {
            json!({"password": "alicepass"}).to_string()
        } else {
            testkit::bridge_tokens_json(env, "alice").await
        };
        let mut link = tokio::process::Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .args([
                "link",
                "--user",
                &user_id,
                "--jid",
                &format!("alice@{domain}"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(link.stdin.as_mut().unwrap(), tokens.as_bytes())
            .await
            .unwrap();
        drop(link.stdin.take());
        assert!(link.wait().await.unwrap().success());
        let process = Self::spawn(&bin, &config, &dir).await;
        Self {
            pid: process.id().unwrap(),
            process,
            dir,
            matrix,
            user_id,
            domain: domain.to_owned(),
            bin,
            config,
        }
    }

    async fn spawn(
        bin: &str,
        config: &std::path::Path,
        dir: &std::path::Path,
    ) -> tokio::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("bridge.log"))
            .unwrap();
        let process = tokio::process::Command::new(bin)
            .arg("-c")
            .arg(config)
            .arg("run")
            .kill_on_drop(true)
            .stderr(log)
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if reqwest::get("http://127.0.0.1:29317/health")
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        process
    }

    /// Stops it gracefully (SIGTERM) and waits for it.
    pub async fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = self.process.wait().await;
    }

    /// Starts it again with the same configuration and database.
    pub async fn restart(&mut self) {
        self.process = Self::spawn(&self.bin, &self.config, &self.dir).await;
        self.pid = self.process.id().unwrap();
    }

    /// Waits until its XMPP sessions logged in `n` times in all.
    pub async fn wait_logged_in(&self, n: u64) {
        for _ in 0..300 {
            let text = reqwest::get("http://127.0.0.1:29317/metrics")
                .await
                .unwrap()
                .text()
                .await
                .unwrap_or_default();
            let logins =
                testkit::metric_value(&text, "messenger_bridge_xmpp_logins_total").unwrap_or(0);
            if logins >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the bridge did not log in to XMPP in 30 s");
    }

    /// Has `bob` write to alice, joins the portal the bridge opens; its room id.
    pub async fn open_portal(
        &self,
        env: &testkit::StackEnv,
        bob: &mut testkit::XmppContact,
    ) -> String {
        use serde_json::json;
        let _ = env;
        let alice = format!("alice@{}", self.domain);
        bob.send_chat(&alice, Some("open"), None).await;
        loop {
            let sync = self
                .matrix
                .call(
                    reqwest::Method::GET,
                    "/_matrix/client/v3/sync?timeout=2000",
                    None,
                )
                .await;
            if let Some(invites) = sync["rooms"]["invite"].as_object()
                && let Some(room) = invites.keys().next()
            {
                self.matrix
                    .call(
                        reqwest::Method::POST,
                        &format!("/_matrix/client/v3/join/{}", enc(room)),
                        Some(json!({})),
                    )
                    .await;
                return room.clone();
            }
        }
    }
}
