//! `messenger-bridge`: reads the configuration and wires the XMPP sessions, the store and the
//! Matrix appservice together. Nothing else lives here.

mod settings;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use bridge::Bridge;
use bridge::credentials::OAuthClient;
use bridge::matrix::MatrixClient;
use settings::Settings;
use store::{Keyring, LinkedUser, OAuthTokens, Store, StoreConfig};
use xmpp_core::connection::{TlsSettings, tls_client_config};
use xmpp_core::manager::{ManagerConfig, SessionManager};

const USAGE: &str = "usage: messenger-bridge [-c config.yaml] <command>

commands:
  run                       run the bridge (the default)
  check-config              report every problem in the configuration, then exit
  check-xmpp                connect to the configured XMPP server (TLS and login offer, no
                            real credentials) and say whether its certificate is trusted
  generate-registration [-o registration.yaml] [--force] [--double-puppet]
                            write the appservice registration for the homeserver (new tokens);
                            --double-puppet also writes doublepuppet.yaml beside it (a second
                            registration, so that what users write from other XMPP clients is
                            posted as them) and prints the appservice.double_puppet_token
  generate-key              print a new database encryption key
  link --user @u:server --jid user@domain [--profile messenger|standard]
                            link an account by hand; reads {\"access_token\", \"refresh_token\",
                            \"expires_in\"} or {\"password\"} as JSON from standard input
  healthcheck [HOST:PORT]   exit 0 if the bridge's /health answers 200 (default
                            127.0.0.1:29317; for container health checks without curl)
  version                   print the version

The configuration path can also be given with MB_CONFIG.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line for the operator, no backtrace.
            eprintln!("messenger-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    config: PathBuf,
    command: String,
    rest: Vec<String>,
}

fn parse_args(args: Vec<String>) -> anyhow::Result<Args> {
    let mut config =
        std::env::var("MB_CONFIG").map_or_else(|_| PathBuf::from("config.yaml"), PathBuf::from);
    let mut command = None;
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "--config" => config = it.next().context("-c needs a path")?.into(),
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ if command.is_none() && !a.starts_with('-') => command = Some(a),
            _ => rest.push(a),
        }
    }
    Ok(Args {
        config,
        command: command.unwrap_or_else(|| "run".into()),
        rest,
    })
}

fn option(rest: &[String], name: &str) -> Option<String> {
    rest.iter()
        .position(|a| a == name)
        .and_then(|i| rest.get(i + 1))
        .cloned()
}

fn real_main(args: Vec<String>) -> anyhow::Result<()> {
    let args = parse_args(args)?;
    // One crypto provider for rustls everywhere (reqwest and the XMPP sessions).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match args.command.as_str() {
        "version" => {
            println!("messenger-bridge {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "generate-key" => {
            let key = store::StoreKey::generate(format!(
                "k{}",
                time::OffsetDateTime::now_utc().unix_timestamp()
            ))?;
            println!("{}", key.to_spec());
            Ok(())
        }
        "check-config" => {
            let settings = load_settings(&args.config)?;
            println!(
                "{}: the configuration is valid (homeserver {}, XMPP {} profile {})",
                args.config.display(),
                settings.bridge.homeserver.url,
                settings.bridge.xmpp.domain,
                settings.bridge.xmpp.profile
            );
            Ok(())
        }
        "check-xmpp" => runtime()?.block_on(check_xmpp(&args.config)),
        "generate-registration" => generate_registration(&args),
        "healthcheck" => healthcheck(args.rest.first().map_or("127.0.0.1:29317", String::as_str)),
        "link" => runtime()?.block_on(link(&args)),
        "run" => runtime()?.block_on(run(&args.config)),
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// `GET /health` over plain HTTP/1.0 with std only: the container image's health check, so the
/// runtime image needs no curl.
fn healthcheck(addr: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::net::{TcpStream, ToSocketAddrs as _};
    let timeout = Duration::from_secs(3);
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("bad address {addr:?}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..])? {
            0 => break,
            n => len += n,
        }
    }
    let head = String::from_utf8_lossy(&head[..len]);
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        bail!("{addr}/health answered {status:?}")
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load_settings(path: &Path) -> anyhow::Result<Settings> {
    if !path.is_file() {
        bail!(
            "no configuration at {}; copy config.example.yaml there (or pass -c PATH)",
            path.display()
        );
    }
    settings::load(path).map_err(|problems| {
        anyhow::anyhow!(
            "{} has {} problem(s):\n  - {}",
            path.display(),
            problems.len(),
            problems.join("\n  - ")
        )
    })
}

fn init_logging(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(&settings.logging.filter));
    // Colour codes only for a terminal: a log file or journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if settings.logging.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let keyring =
        Keyring::parse(&settings.database.encryption_key).context("database.encryption_key")?;
    let mut config = StoreConfig::new(settings.database.url.clone(), keyring);
    config.max_connections = settings.database.max_connections;
    config.connect_attempts = settings.database.connect_attempts.max(1);
    // The bridge gives up by age (bridge.retry_for_secs), not by a count of attempts.
    config.outbox_max_attempts = u32::MAX;
    config.sqlite_sync = match settings.database.sqlite_synchronous {
        settings::SqliteSynchronous::Full => store::SqliteSync::Full,
        settings::SqliteSynchronous::Normal => store::SqliteSync::Normal,
    };
    Ok(Store::open(config).await?)
}

fn xmpp_tls(config: &bridge::config::BridgeConfig) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    tls_client_config(&TlsSettings {
        ca_file: config.xmpp.ca_file.clone(),
        insecure_skip_verify: config.xmpp.insecure_skip_verify,
        fingerprints: config.xmpp.tls_fingerprint.iter().cloned().collect(),
    })
    .context("xmpp TLS settings")
}

async fn check_xmpp(path: &Path) -> anyhow::Result<()> {
    let settings = load_settings(path)?;
    let tls = xmpp_tls(&settings.bridge)?;
    match bridge::check_xmpp(&settings.bridge, tls).await {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(problem) => bail!("{problem}"),
    }
}

async fn run(path: &Path) -> anyhow::Result<()> {
    let settings = load_settings(path)?;
    init_logging(&settings);
    let config = settings.bridge.clone();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), homeserver = %config.homeserver.url, xmpp = %config.xmpp.domain, "starting");

    let store = open_store(&settings).await?;
    tracing::info!(backend = store.backend_name(), url = %store.url().redacted(), "store ready");

    let listener = tokio::net::TcpListener::bind(&config.appservice.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (appservice.listen): is another bridge running?",
                config.appservice.listen
            )
        })?;

    let matrix = connect_homeserver(&config).await?;

    let tls = xmpp_tls(&config)?;
    let mut manager_config = ManagerConfig::new(tls.clone());
    manager_config.max_concurrent_connects = config.xmpp.max_concurrent_connects;
    manager_config.timers.keepalive = Duration::from_secs(config.xmpp.keepalive_secs.clamp(5, 60));
    let (xmpp, events) = SessionManager::new(manager_config);

    let oauth = config
        .oauth
        .clone()
        .map(OAuthClient::new)
        .transpose()
        .map_err(|e| anyhow::anyhow!("oauth: {e}"))?;
    let bridge = Bridge::new(
        config.clone(),
        store.clone(),
        matrix.clone(),
        xmpp.clone(),
        tls.clone(),
        oauth,
    )?;

    // Started before the listener serves: start releases the previous run's claims, which
    // must not catch a message the new run has just claimed.
    bridge.start(events).await?;
    let server = tokio::spawn(bridge::matrix::appservice::serve(listener, bridge.clone()));
    match matrix.ping().await {
        Ok(d) => {
            tracing::info!(round_trip = ?d, "the homeserver reaches the bridge (appservice ping)")
        }
        Err(e) => {
            tracing::warn!(error = %e, "the homeserver cannot reach the bridge at its registration URL; check `url` in the registration file and appservice.listen")
        }
    }
    tracing::info!(listen = %config.appservice.listen, bot = %bridge.bot(), "bridge running");
    // The XMPP server's reachability and certificate, checked now rather than after someone's
    // first sign-in.
    {
        let (config, tls) = (config.clone(), tls.clone());
        tokio::spawn(async move {
            match bridge::check_xmpp(&config, tls).await {
                Ok(report) => tracing::info!("XMPP server check: {report}"),
                Err(problem) => tracing::error!("XMPP server check failed: {problem}"),
            }
        });
    }

    tokio::select! {
        r = server => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the appservice listener failed: {e}"),
            Err(e) => bail!("the appservice listener crashed: {e}"),
        },
        () = shutdown_signal() => tracing::info!("shutting down"),
    }
    // Graceful stop: every stream is closed after handling what its server had already sent,
    // and every event read is recorded before the store closes.
    xmpp.shutdown().await;
    if !bridge.finish_xmpp_events(Duration::from_secs(30)).await {
        tracing::warn!("stopped before every XMPP event read was recorded");
    }
    bridge.save_archive_cursors().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn connect_homeserver(config: &bridge::config::BridgeConfig) -> anyhow::Result<MatrixClient> {
    // The homeserver may still be starting (docker compose): try for a minute.
    let mut delay = Duration::from_millis(500);
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(config.homeserver.startup_wait_secs);
    loop {
        match MatrixClient::connect(
            &config.homeserver.url,
            &config.appservice.as_token,
            &config.appservice.id,
        )
        .await
        {
            Ok(c) => return Ok(c),
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, retry_in = ?delay, "the homeserver is not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => bail!("{e} (homeserver.url)"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn generate_registration(args: &Args) -> anyhow::Result<()> {
    let tree =
        settings::load_tree(&args.config, false).map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    let get = |ptr: &str, default: &str| {
        tree.pointer(ptr)
            .and_then(serde_json::Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    let server = get("/homeserver/server_name", "");
    if server.is_empty() {
        bail!(
            "homeserver.server_name is missing in {}",
            args.config.display()
        );
    }
    let output = option(&args.rest, "-o")
        .or_else(|| {
            tree.pointer("/appservice/registration")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        })
        .context("say where to write it: -o registration.yaml (or set appservice.registration)")?;
    let force = args.rest.iter().any(|a| a == "--force");
    if Path::new(&output).exists() && !force {
        bail!(
            "{output} exists; pass --force to replace it (the homeserver must then load the new tokens)"
        );
    }
    let double_puppet = args.rest.iter().any(|a| a == "--double-puppet");
    let dp_path = Path::new(&output).with_file_name("doublepuppet.yaml");
    // Checked before anything is written: a refusal leaves both files as they were.
    if double_puppet && dp_path.exists() && !force {
        bail!("{} exists; pass --force to replace it", dp_path.display());
    }
    let listen = get("/appservice/listen", "127.0.0.1:29317");
    let url = get("/appservice/url", &format!("http://{listen}"));
    let id = get("/appservice/id", "messenger-bridge");
    let bot = get("/appservice/bot_localpart", "msnbot");
    let prefix = get("/appservice/ghost_prefix", "msn_");
    let token = || {
        let bytes: [u8; 32] = rand::random();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let escaped = server.replace('.', "\\\\.");
    let yaml = format!(
        "# Appservice registration of messenger-bridge, written by `messenger-bridge generate-registration`.\n\
         # Give this file to the homeserver (Synapse: app_service_config_files) and point the bridge's\n\
         # appservice.registration at it.\n\
         id: {id}\nurl: \"{url}\"\nas_token: \"{}\"\nhs_token: \"{}\"\nsender_localpart: {bot}\n\
         rate_limited: false\nreceive_ephemeral: true\nde.sorunome.msc2409.push_ephemeral: true\n\
         namespaces:\n  users:\n    - exclusive: true\n      regex: \"@{prefix}.*:{escaped}\"\n    - exclusive: true\n      regex: \"@{bot}:{escaped}\"\n  aliases: []\n  rooms: []\n",
        token(),
        token()
    );
    std::fs::write(&output, yaml).with_context(|| format!("cannot write {output}"))?;
    println!("wrote {output}");
    if double_puppet {
        let path = dp_path;
        let as_token = token();
        let yaml = format!(
            "# Double puppeting for messenger-bridge, written by `messenger-bridge generate-registration --double-puppet`.\n\
             # Give this file to the homeserver too (Synapse: app_service_config_files). It owns no one\n\
             # (non-exclusive) and receives nothing (no url); its token lets the bridge post, as a local\n\
             # user, what that user wrote from another XMPP client. Keep the token secret.\n\
             id: {id}-doublepuppet\nurl: null\nas_token: \"{as_token}\"\nhs_token: \"{}\"\n\
             sender_localpart: {bot}-doublepuppet\nrate_limited: false\n\
             namespaces:\n  users:\n    - exclusive: false\n      regex: \"@.*:{escaped}\"\n  aliases: []\n  rooms: []\n",
            token()
        );
        std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
        println!(
            "set appservice.double_puppet_token: {as_token}\n(or MB_APPSERVICE_DOUBLE_PUPPET_TOKEN) in the bridge's configuration"
        );
    }
    Ok(())
}

async fn link(args: &Args) -> anyhow::Result<()> {
    let settings = load_settings(&args.config)?;
    let user = option(&args.rest, "--user").context("--user @someone:server is required")?;
    let jid = option(&args.rest, "--jid").context("--jid user@domain is required")?;
    let jid = xmpp_core::Jid::parse(&jid)?.to_bare().to_string();
    let profile = match option(&args.rest, "--profile")
        .as_deref()
        .unwrap_or(&settings.bridge.xmpp.profile)
    {
        "messenger" => store::ServerProfile::Messenger,
        "standard" => store::ServerProfile::Standard,
        other => bail!("--profile {other:?}: use messenger or standard"),
    };
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the secret from standard input")?;
    let secret: serde_json::Value =
        serde_json::from_str(&input).context("standard input must be JSON")?;
    let store = open_store(&settings).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    store
        .upsert_linked_user(&LinkedUser {
            matrix_user: user.clone(),
            jid: jid.clone(),
            server_profile: profile,
            connection_state: "logged_out".into(),
            management_room: None,
            created_at: now,
            updated_at: now,
        })
        .await?;
    if let Some(password) = secret["password"].as_str() {
        store.set_password(&user, password).await?;
    } else {
        let access_token = secret["access_token"]
            .as_str()
            .context("JSON needs access_token or password")?
            .to_owned();
        let tokens = OAuthTokens {
            access_token,
            refresh_token: secret["refresh_token"].as_str().map(str::to_owned),
            expires_at: bridge::credentials::expires_at(now, secret["expires_in"].as_i64()),
        };
        store.set_oauth_tokens(&user, &tokens).await?;
    }
    store.close().await;
    println!("linked {user} to {jid}; restart the bridge (or it picks the account up on start)");
    Ok(())
}
