//! Reading and checking `config.yaml`: every problem is reported at once with the key's path,
//! secrets can come from the environment or files, and environment variables override keys.

use std::path::{Path, PathBuf};

use bridge::config::BridgeConfig;
use serde::Deserialize;
use serde_json::Value;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Settings {
    #[serde(flatten)]
    pub(crate) bridge: BridgeConfig,
    pub(crate) database: DatabaseSettings,
    #[serde(default)]
    pub(crate) logging: LoggingSettings,
}

/// `Debug` hides the encryption key (and the URL's password).
#[derive(Clone, Deserialize)]
pub(crate) struct DatabaseSettings {
    /// `sqlite:///path/to/file.db` or `postgres://…`.
    pub(crate) url: String,
    /// Keys for secrets at rest, `id:BASE64` (first = current), separated by commas.
    #[serde(default)]
    pub(crate) encryption_key: String,
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: u32,
    /// Connection attempts at start (with backoff) before giving up.
    #[serde(default = "default_connect_attempts")]
    pub(crate) connect_attempts: u32,
    /// SQLite only: `full` or `normal` (see config.example.yaml).
    #[serde(default)]
    pub(crate) sqlite_synchronous: SqliteSynchronous,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = store::DatabaseUrl::parse(&self.url)
            .map_or_else(|_| "<unparsable>".to_owned(), |u| u.redacted());
        f.debug_struct("DatabaseSettings")
            .field("url", &url)
            .field("encryption_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// `database.sqlite_synchronous`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SqliteSynchronous {
    #[default]
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LoggingSettings {
    #[serde(default = "default_filter")]
    pub(crate) filter: String,
    #[serde(default = "default_format")]
    pub(crate) format: String,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        Self {
            filter: default_filter(),
            format: default_format(),
        }
    }
}

fn default_filter() -> String {
    "info".into()
}
fn default_format() -> String {
    "text".into()
}
fn default_connect_attempts() -> u32 {
    10
}
fn default_max_connections() -> u32 {
    8
}

/// Secrets that may come from `MB_<NAME>` or a file named by `MB_<NAME>_FILE`.
const SECRETS: [(&str, &str); 7] = [
    ("DATABASE_ENCRYPTION_KEY", "/database/encryption_key"),
    ("APPSERVICE_AS_TOKEN", "/appservice/as_token"),
    ("APPSERVICE_HS_TOKEN", "/appservice/hs_token"),
    ("OAUTH_CLIENT_SECRET", "/oauth/client_secret"),
    ("DATABASE_URL", "/database/url"),
    ("APPSERVICE_METRICS_TOKEN", "/appservice/metrics_token"),
    (
        "APPSERVICE_DOUBLE_PUPPET_TOKEN",
        "/appservice/double_puppet_token",
    ),
];

/// Loads the file, applies `MB__SECTION__KEY` overrides and secret variables, fills tokens
/// from the registration file. Returns the raw tree for checking.
pub(crate) fn load_tree(path: &Path, with_registration: bool) -> Result<Value, Vec<String>> {
    let built = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Yaml))
        .add_source(
            config::Environment::with_prefix("MB")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let mut tree: Value = built
        .try_deserialize()
        .map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let mut problems = Vec::new();
    for (name, pointer) in SECRETS {
        let value = match std::env::var(format!("MB_{name}_FILE")) {
            Ok(file) => match std::fs::read_to_string(&file) {
                Ok(s) => Some(s.trim().to_owned()),
                Err(e) => {
                    problems.push(format!("MB_{name}_FILE: cannot read {file}: {e}"));
                    None
                }
            },
            Err(_) => std::env::var(format!("MB_{name}")).ok(),
        };
        if let Some(v) = value {
            set_pointer(&mut tree, pointer, Value::String(v));
        }
    }
    if let Some(reg) = tree
        .pointer("/appservice/registration")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .filter(|_| with_registration)
    {
        match read_registration(&reg) {
            Ok(r) => {
                for (key, value) in [
                    ("as_token", r.as_token),
                    ("hs_token", r.hs_token),
                    ("id", r.id),
                    ("bot_localpart", r.sender_localpart),
                ] {
                    let current = tree
                        .pointer(&format!("/appservice/{key}"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if current.is_empty() || key.ends_with("token") {
                        set_pointer(
                            &mut tree,
                            &format!("/appservice/{key}"),
                            Value::String(value),
                        );
                    }
                }
            }
            Err(e) => problems.push(format!("appservice.registration: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(tree)
    } else {
        Err(problems)
    }
}

fn set_pointer(tree: &mut Value, pointer: &str, value: Value) {
    let mut node = tree;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        let Some(map) = node.as_object_mut() else {
            return;
        };
        if i == parts.len() - 1 {
            map.insert((*part).to_owned(), value);
            return;
        }
        node = map
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

/// The fields of an appservice registration the bridge needs.
#[derive(Debug, Deserialize)]
pub(crate) struct Registration {
    pub(crate) id: String,
    pub(crate) as_token: String,
    pub(crate) hs_token: String,
    pub(crate) sender_localpart: String,
}

pub(crate) fn read_registration(path: &Path) -> Result<Registration, String> {
    let built = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Yaml))
        .build()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    built
        .try_deserialize()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks the tree; returns every problem with the key's path and what to do.
/// The numeric options and their accepted ranges (inclusive).
const NUMBER_RANGES: &[(&str, u64, u64)] = &[
    ("/bridge/max_message_bytes", 256, 60_000),
    ("/bridge/state_notice_delay_secs", 0, 86_400),
    ("/bridge/login_link_lifetime_secs", 1, 86_400),
    ("/bridge/retry_for_secs", 60, 30 * 86_400),
    ("/bridge/retry_max_delay_secs", 1, 3_600),
    ("/bridge/max_queued_per_portal", 1, 1_000_000),
    ("/bridge/backfill_messages", 0, 1000),
    ("/xmpp/keepalive_secs", 5, 60),
    ("/xmpp/max_stanza_bytes", 16_384, 16 * 1024 * 1024),
];

pub(crate) fn check(tree: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let s = |ptr: &str| {
        tree.pointer(ptr)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let key = |ptr: &str| ptr.trim_start_matches('/').replace('/', ".");
    for required in [
        "/homeserver/url",
        "/homeserver/server_name",
        "/xmpp/domain",
        "/database/url",
    ] {
        if s(required).is_none() {
            p.push(format!("{}: missing; set it in config.yaml", key(required)));
        }
    }
    if let Some(url) = s("/homeserver/url")
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        p.push(format!("homeserver.url: {url:?} is not an http(s) URL"));
    }
    if let Some(name) = s("/homeserver/server_name")
        && ruma::ServerName::parse(name).is_err()
    {
        p.push(format!(
            "homeserver.server_name: {name:?} is not a valid server name"
        ));
    }
    for token in ["/appservice/as_token", "/appservice/hs_token"] {
        if s(token).is_none() {
            p.push(format!("{}: missing; set appservice.registration to the file written by `messenger-bridge generate-registration`", key(token)));
        }
    }
    if let Some(listen) = s("/appservice/listen")
        && listen.parse::<std::net::SocketAddr>().is_err()
    {
        p.push(format!(
            "appservice.listen: {listen:?} is not an address like 127.0.0.1:29317"
        ));
    }
    if let Some(profile) = s("/xmpp/profile")
        && xmpp_core::ServerProfile::parse(profile).is_none()
    {
        p.push(format!(
            "xmpp.profile: {profile:?} must be `messenger` or `standard`"
        ));
    }
    if let Some(port) = tree.pointer("/xmpp/port")
        && port.as_u64().is_none_or(|n| n == 0 || n > 65535)
    {
        p.push(format!("xmpp.port: {port} is not a port number"));
    }
    if let Some(ca) = s("/xmpp/ca_file")
        && !Path::new(ca).is_file()
    {
        p.push(format!("xmpp.ca_file: {ca} does not exist"));
    }
    if let Some(url) = s("/database/url")
        && let Err(e) = store::DatabaseUrl::parse(url)
    {
        p.push(format!("database.url: {e}"));
    }
    match s("/database/encryption_key") {
        None => p.push("database.encryption_key: missing; generate one with `messenger-bridge generate-key` (or set MB_DATABASE_ENCRYPTION_KEY / MB_DATABASE_ENCRYPTION_KEY_FILE)".into()),
        Some(k) => {
            if let Err(e) = store::Keyring::parse(k) {
                p.push(format!("database.encryption_key: {e}"));
            }
        }
    }
    if let Some(perms) = tree.pointer("/bridge/permissions") {
        match perms.as_object() {
            Some(map) => {
                for (who, level) in map {
                    if !matches!(level.as_str(), Some("user" | "admin" | "none")) {
                        p.push(format!(
                            "bridge.permissions.{who}: {level} must be `user`, `admin` or `none`"
                        ));
                    }
                }
            }
            None => p.push("bridge.permissions: must be a map of user/server → level".into()),
        }
    } else {
        p.push(
            "bridge.permissions: missing; nobody could use the bridge (e.g. `example.org: user`)"
                .into(),
        );
    }
    if let Some(oauth) = tree.get("oauth").filter(|o| !o.is_null()) {
        for k in ["authorize_url", "token_url", "client_id"] {
            if oauth
                .get(k)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                p.push(format!("oauth.{k}: missing"));
            }
        }
    } else if s("/xmpp/profile").unwrap_or("messenger") == "messenger" {
        p.push("oauth: missing; the messenger profile logs in with OAuth 2.0 (see config.example.yaml)".into());
    }
    if s("/xmpp/profile") == Some("standard")
        && let Some(url) = s("/appservice/public_url")
        && !bridge::password_safe_url(url)
    {
        p.push(format!(
            "appservice.public_url: {url:?} is plain HTTP to another host; the password form (standard profile) is served only over https:// or to a loopback address, so passwords never cross a network unencrypted"
        ));
    }
    if tree
        .pointer("/appservice/metrics_token")
        .and_then(Value::as_str)
        .is_some_and(|t| t.trim().len() < 16)
    {
        p.push("appservice.metrics_token: too short; use at least 16 random characters (or leave it out: then only loopback connections read /metrics)".into());
    }
    if let Some(pin) = s("/xmpp/tls_fingerprint") {
        let hex: String = pin.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            p.push(format!(
                "xmpp.tls_fingerprint: {pin:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed; `messenger-bridge check-xmpp` prints the server's)"
            ));
        }
    }
    // Every number has a range: a value outside it would hang or disable the bridge (a body
    // limit under a few bytes cannot be split, a zero retry delay spins).
    for (ptr, min, max) in NUMBER_RANGES {
        let Some(v) = tree.pointer(ptr) else {
            continue;
        };
        let n = v
            .as_u64()
            .or_else(|| v.as_str().and_then(|t| t.trim().parse().ok()));
        if !n.is_some_and(|n| (*min..=*max).contains(&n)) {
            p.push(format!(
                "{}: {v} is out of range; use a whole number from {min} to {max}",
                key(ptr)
            ));
        }
    }
    if let Some(f) = s("/logging/format")
        && !matches!(f, "text" | "json")
    {
        p.push(format!("logging.format: {f:?} must be `text` or `json`"));
    }
    // Type errors the checks above do not cover come from deserializing.
    if p.is_empty()
        && let Err(e) = serde_json::from_value::<Settings>(tree.clone())
    {
        p.push(format!("config: {e}"));
    }
    p
}

/// Loads and checks; `Err` lists every problem.
pub(crate) fn load(path: &Path) -> Result<Settings, Vec<String>> {
    let tree = load_tree(path, true)?;
    let problems = check(&tree);
    if !problems.is_empty() {
        return Err(problems);
    }
    serde_json::from_value(tree).map_err(|e| vec![format!("config: {e}")])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let tree = json!({
            "homeserver": {"url": "ftp://x", "server_name": ""},
            "appservice": {"listen": "nowhere"},
            "xmpp": {"profile": "aim", "port": 70000},
            "database": {"url": "mysql://x", "encryption_key": "nope"},
            "bridge": {"permissions": {"*": "root"}},
            "logging": {"format": "xml"},
        });
        let problems = check(&tree);
        for needle in [
            "homeserver.server_name: missing",
            "homeserver.url: \"ftp://x\"",
            "xmpp.domain: missing",
            "appservice.as_token: missing",
            "appservice.hs_token: missing",
            "appservice.listen",
            "xmpp.profile",
            "xmpp.port",
            "database.url",
            "database.encryption_key",
            "bridge.permissions.*",
            "logging.format",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(needle)),
                "no problem starting with {needle:?} in {problems:#?}"
            );
        }
    }

    #[test]
    fn numbers_out_of_range_are_problems() {
        let tree = json!({
            "xmpp": {"keepalive_secs": 0, "tls_fingerprint": "AB:CD", "profile": "standard"},
            "appservice": {"public_url": "http://bridge.example.org"},
            "bridge": {"max_message_bytes": 3, "retry_max_delay_secs": "0", "retry_for_secs": 600},
        });
        let problems = check(&tree);
        for needle in [
            "bridge.max_message_bytes: 3 is out of range",
            "bridge.retry_max_delay_secs",
            "xmpp.keepalive_secs",
            "xmpp.tls_fingerprint",
            "appservice.public_url",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(needle)),
                "no problem starting with {needle:?} in {problems:#?}"
            );
        }
        assert!(
            !problems
                .iter()
                .any(|p| p.starts_with("bridge.retry_for_secs")),
            "600 is in range: {problems:#?}"
        );
    }

    #[test]
    fn the_example_config_is_valid_once_secrets_are_given() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.yaml");
        let mut tree = load_tree(&path, false).unwrap();
        // The example leaves exactly the secrets empty.
        let problems = check(&tree);
        assert!(
            problems
                .iter()
                .all(|p| p.starts_with("appservice.") || p.starts_with("database.encryption_key")),
            "{problems:#?}"
        );
        set_pointer(&mut tree, "/appservice/as_token", json!("a"));
        set_pointer(&mut tree, "/appservice/hs_token", json!("h"));
        set_pointer(
            &mut tree,
            "/database/encryption_key",
            json!("k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        );
        assert_eq!(check(&tree), Vec::<String>::new());
    }

    #[test]
    fn set_pointer_creates_sections() {
        let mut v = json!({});
        set_pointer(&mut v, "/a/b", json!("x"));
        assert_eq!(v, json!({"a": {"b": "x"}}));
    }
}
