//! Test harness for the real local stack (`deploy/local/stack`).
//!
//! - [`StackEnv`]: the values `deploy/local/stack up` wrote to `$STACK_DIR/env`;
//! - [`oauth_tokens`]: real tokens from the stack's OAuth provider (authorization-code flow);
//! - [`XmppContact`]: a real XMPP client (slixmpp) playing a contact, driven over pipes;
//! - [`CutRelay`]: a TCP relay that a test cuts and restores, as a network cut.
//!
//! Tests that use it fail with a clear message when the stack is not up: `tests/run` starts it.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod cut;

pub use cut::CutRelay;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `$STACK_DIR/env` of the running stack.
#[derive(Debug, Clone)]
pub struct StackEnv {
    vars: HashMap<String, String>,
}

impl StackEnv {
    /// Loads the env file; panics with instructions when the stack is not up.
    pub fn load() -> Self {
        let dir = std::env::var("STACK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join(".stack"));
        let path = dir.join("env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the local stack is not up ({}: {e}); run `deploy/local/stack up` first",
                path.display()
            )
        });
        let vars = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Self { vars }
    }

    /// A value; panics naming the key when missing.
    pub fn get(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from the stack env file"))
    }

    /// The Python of the clients venv.
    pub fn python(&self) -> PathBuf {
        PathBuf::from(self.get("STACK_DIR")).join("clients-venv/bin/python")
    }

    /// The XMPP port as a number.
    pub fn xmpp_port(&self) -> u16 {
        self.get("XMPP_PORT").parse().unwrap()
    }
}

/// A token response from the provider.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The access token.
    pub access_token: String,
    /// The refresh token (the `wl.offline_access` scope is requested).
    pub refresh_token: Option<String>,
    /// Lifetime in seconds.
    pub expires_in: Option<u64>,
}

/// Runs the authorization-code flow with PKCE for a seeded account, as `client`
/// (`smoke-test` or `messenger-bridge`).
pub async fn oauth_tokens(env: &StackEnv, user: &str, client: &str) -> Tokens {
    let script = repo_root().join("tests/stack/oauth_flow.py");
    let out = Command::new(env.python())
        .arg(script)
        .arg(user)
        .args(["--client", client])
        .env("STACK_DIR", env.get("STACK_DIR"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "oauth_flow.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Tokens {
        access_token: v["access_token"].as_str().unwrap().to_owned(),
        refresh_token: v["refresh_token"].as_str().map(str::to_owned),
        expires_in: v["expires_in"].as_u64(),
    }
}

/// Revokes a token at the provider (RFC 7009), as the `smoke-test` client.
pub async fn revoke_token(env: &StackEnv, token: &str) {
    let code = "import sys; sys.path.insert(0, sys.argv[1]); import oauth_flow as o; \
                o.revoke(o.load_env(), sys.argv[2])";
    let out = Command::new(env.python())
        .args(["-c", code])
        .arg(repo_root().join("tests/stack"))
        .arg(token)
        .env("STACK_DIR", env.get("STACK_DIR"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "revoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates a Matrix user on the stack's Synapse with the shared-secret admin API
/// (`/_synapse/admin/v1/register`, HMAC-SHA1 of `nonce\0user\0password\0notadmin`).
pub async fn register_matrix_user(env: &StackEnv, username: &str, password: &str) {
    use hmac::{Hmac, Mac};
    let url = format!("{}/_synapse/admin/v1/register", env.get("SYNAPSE_URL"));
    let http = reqwest::Client::new();
    let nonce: Value =
        serde_json::from_slice(&http.get(&url).send().await.unwrap().bytes().await.unwrap())
            .unwrap();
    let nonce = nonce["nonce"].as_str().unwrap().to_owned();
    let mut mac =
        <Hmac<sha1::Sha1> as Mac>::new_from_slice(env.get("SYNAPSE_SHARED_SECRET").as_bytes())
            .unwrap();
    mac.update(format!("{nonce}\0{username}\0{password}\0notadmin").as_bytes());
    let mac: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let body = json!({"nonce": nonce, "username": username, "password": password, "admin": false, "mac": mac});
    let response = http
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    // An existing user is fine: tests that need a fresh one use unique names.
    assert!(
        status.is_success() || text.contains("M_USER_IN_USE"),
        "registering @{username} failed: {status} {text}"
    );
}

/// The value of one series (`name` or `name{labels}`) in a Prometheus text page.
pub fn metric_value(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A token response for the bridge's own OAuth client, as JSON for `messenger-bridge link`.
pub async fn bridge_tokens_json(env: &StackEnv, user: &str) -> String {
    bridge_tokens_json_for(env, user, "messenger-bridge").await
}

/// Like [`bridge_tokens_json`], issued to another of the provider's clients (e.g.
/// `messenger-bridge-public`, the bridge configured as a public client).
pub async fn bridge_tokens_json_for(env: &StackEnv, user: &str, client: &str) -> String {
    let t = oauth_tokens(env, user, client).await;
    json!({"access_token": t.access_token, "refresh_token": t.refresh_token, "expires_in": t.expires_in}).to_string()
}

/// How a contact logs in.
#[derive(Debug, Clone)]
pub enum ContactLogin {
    /// On the Messenger host with an OAuth token (X-MESSENGER-OAUTH2).
    Messenger,
    /// On the standard host with the seeded password.
    Standard,
    /// On the stack's ejabberd with the seeded password.
    Ejabberd,
}

/// A slixmpp client playing a contact (`tests/peers/xmpp_contact.py`).
#[derive(Debug)]
pub struct XmppContact {
    /// The contact's full JID as bound.
    pub jid: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Events read while waiting for another one.
    backlog: Vec<Value>,
}

impl XmppContact {
    /// Logs `user` in and waits until its session is ready.
    pub async fn start(env: &StackEnv, user: &str, login: ContactLogin) -> Self {
        Self::start_with(env, user, login, true).await
    }

    /// Like [`XmppContact::start`]; `presence = false` stays invisible (no initial presence).
    pub async fn start_with(
        env: &StackEnv,
        user: &str,
        login: ContactLogin,
        presence: bool,
    ) -> Self {
        Self::spawn(env, user, login, presence, false).await
    }

    /// Like [`XmppContact::start`], announcing its client's capabilities (XEP-0115), which
    /// list none of the rich-message XEPs: an older client.
    pub async fn start_announcing_caps(env: &StackEnv, user: &str, login: ContactLogin) -> Self {
        Self::spawn(env, user, login, true, true).await
    }

    async fn spawn(
        env: &StackEnv,
        user: &str,
        login: ContactLogin,
        presence: bool,
        caps: bool,
    ) -> Self {
        let mut cmd = Command::new(env.python());
        let (host, port, ca) = match login {
            ContactLogin::Ejabberd => ("EJABBERD_HOST", "EJABBERD_PORT", "EJABBERD_CA_FILE"),
            _ => ("XMPP_HOST", "XMPP_PORT", "XMPP_CA_FILE"),
        };
        cmd.arg(repo_root().join("tests/peers/xmpp_contact.py"))
            .args([
                "--host",
                env.get(host),
                "--port",
                env.get(port),
                "--ca",
                env.get(ca),
            ]);
        match login {
            ContactLogin::Messenger => {
                let tokens = oauth_tokens(env, user, "smoke-test").await;
                // `--x=value`: a token may start with '-', which argparse takes for an option.
                cmd.arg(format!("--jid={}", env.get("XMPP_MESSENGER_DOMAIN")))
                    .arg(format!("--token={}", tokens.access_token));
            }
            ContactLogin::Standard => {
                cmd.arg(format!("--jid={user}@{}", env.get("XMPP_STANDARD_DOMAIN")))
                    .arg(format!("--password={user}pass"));
            }
            ContactLogin::Ejabberd => {
                cmd.arg(format!("--jid={user}@{}", env.get("EJABBERD_DOMAIN")))
                    .arg(format!("--password={user}pass"));
            }
        }
        if !presence {
            cmd.arg("--no-presence");
        }
        if caps {
            cmd.arg("--caps");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut me = Self {
            jid: String::new(),
            child,
            stdin,
            lines,
            backlog: Vec::new(),
        };
        let ready = me
            .wait_for(Duration::from_secs(30), |e| {
                e["event"] == "ready" || e["event"] == "failed"
            })
            .await;
        assert_eq!(
            ready["event"], "ready",
            "contact {user} could not log in: {ready}"
        );
        me.jid = ready["jid"].as_str().unwrap().to_owned();
        me
    }

    /// The bare JID.
    pub fn bare_jid(&self) -> &str {
        self.jid.split('/').next().unwrap()
    }

    /// Sends a command (see the script's docs).
    pub async fn command(&mut self, cmd: Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Sends a chat message, optionally with a chat state.
    pub async fn send_chat(&mut self, to: &str, body: Option<&str>, state: Option<&str>) {
        self.command(json!({"op": "send", "to": to, "body": body, "state": state}))
            .await;
    }

    /// Waits for the first event matching `pred` (earlier non-matching events are kept).
    pub async fn wait_for(&mut self, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no matching event within {limit:?}; seen: {:?}",
                        self.backlog
                    )
                })
                .unwrap()
                .unwrap_or_else(|| panic!("the contact process ended; seen: {:?}", self.backlog));
            let v: Value = serde_json::from_str(&line).unwrap();
            if pred(&v) {
                return v;
            }
            self.backlog.push(v);
        }
    }

    /// The bodies of chat messages starting with `prefix`, in the order they arrived: waits up
    /// to `limit` for `n` of them, then `quiet` more for any extra (a duplicate, one too many).
    /// Never panics on a timeout: the caller compares with what it wants and says what is
    /// missing.
    pub async fn bodies_starting_with(
        &mut self,
        prefix: &str,
        n: usize,
        limit: Duration,
        quiet: Duration,
    ) -> Vec<String> {
        let matches = |e: &Value| {
            e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.starts_with(prefix))
        };
        let mut got = Vec::new();
        let mut keep = Vec::new();
        for e in std::mem::take(&mut self.backlog) {
            if matches(&e) {
                got.push(e["body"].as_str().unwrap_or_default().to_owned());
            } else {
                keep.push(e);
            }
        }
        self.backlog = keep;
        let deadline = tokio::time::Instant::now() + limit;
        let mut quiet_until = None;
        loop {
            if got.len() >= n && quiet_until.is_none() {
                quiet_until = Some(tokio::time::Instant::now() + quiet);
            }
            let until = quiet_until.unwrap_or(deadline);
            let Ok(Ok(Some(line))) = tokio::time::timeout_at(until, self.lines.next_line()).await
            else {
                break;
            };
            let v: Value = serde_json::from_str(&line).unwrap();
            if matches(&v) {
                got.push(v["body"].as_str().unwrap_or_default().to_owned());
            } else {
                self.backlog.push(v);
            }
        }
        got
    }

    /// All events received so far without waiting longer than `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        while let Ok(Ok(Some(line))) = tokio::time::timeout(quiet, self.lines.next_line()).await {
            self.backlog.push(serde_json::from_str(&line).unwrap());
        }
        std::mem::take(&mut self.backlog)
    }

    /// Logs out and waits for the process.
    pub async fn quit(mut self) {
        self.command(json!({"op": "quit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}
