//! The README's first command, followed to the letter: `deploy/local/demo up` prints how to
//! connect; a Matrix client logs in as it says, accepts Bob's invite, writes, and gets Bob's
//! answer. And the registration `generate-registration` writes loads in Synapse.

use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use ruma::UserId;
use testkit::{StackEnv, repo_root};

use crate::harness::*;

#[tokio::test]
async fn the_demo_works_as_its_instructions_say() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let out = tokio::process::Command::new(repo_root().join("deploy/local/demo"))
        .arg("up")
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let result = async move {
        assert!(
            out.status.success(),
            "demo up failed: {}\n{}",
            printed,
            String::from_utf8_lossy(&out.stderr)
        );
        // Read the instructions as a person would.
        let value = |label: &str| -> String {
            printed
                .lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .map(|v| v.split_whitespace().next().unwrap().to_owned())
                .unwrap_or_else(|| panic!("no {label:?} in:\n{printed}"))
        };
        let homeserver = value("homeserver");
        let user = value("user");
        let password = value("password");
        assert_eq!(homeserver, env.get("SYNAPSE_URL"));

        let client = Client::builder()
            .homeserver_url(&homeserver)
            .build()
            .await
            .unwrap();
        client
            .matrix_auth()
            .login_username(&user, &password)
            .send()
            .await
            .unwrap();
        let bob = UserId::parse(format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"))).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let room = loop {
            client
                .sync_once(SyncSettings::default().timeout(Duration::from_secs(2)))
                .await
                .unwrap();
            let mut found = None;
            for r in client
                .invited_rooms()
                .into_iter()
                .chain(client.joined_rooms())
            {
                if r.get_member_no_sync(&bob).await.ok().flatten().is_some() {
                    found = Some(r);
                }
            }
            if let Some(r) = found {
                break r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no room with Bob within a minute:\n{printed}"
            );
        };
        if room.state() == matrix_sdk::RoomState::Invited {
            room.join().await.unwrap();
        }
        let text = unique("hello Bob ");
        {
            use ruma::events::room::message::RoomMessageEventContent;
            room.send(RoomMessageEventContent::text_plain(&text))
                .await
                .unwrap();
        }
        let want = format!("Bob here — you said: {text}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut options = matrix_sdk::room::MessagesOptions::backward();
            options.limit = 50u32.into();
            let msgs = room.messages(options).await.unwrap();
            let answered = msgs
                .chunk
                .iter()
                .filter_map(|e| {
                    serde_json::from_str::<serde_json::Value>(e.raw().json().get()).ok()
                })
                .any(|v| v["sender"] == bob.as_str() && v["content"]["body"] == want.as_str());
            if answered {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "Bob did not answer");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let outcome = tokio::spawn(result).await;
    let _ = tokio::process::Command::new(repo_root().join("deploy/local/demo"))
        .arg("stop")
        .status()
        .await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test]
async fn generated_registration_loads_in_synapse() {
    let env = StackEnv::load();
    let dir = std::env::temp_dir().join(unique("mb-reg-"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "homeserver:\n  url: {}\n  server_name: {}\nappservice:\n  registration: {}\n",
            env.get("SYNAPSE_URL"),
            env.get("MATRIX_SERVER_NAME"),
            dir.join("registration.yaml").display()
        ),
    )
    .unwrap();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_messenger-bridge"))
        .arg("-c")
        .arg(&config)
        .arg("generate-registration")
        .arg("--double-puppet")
        .output()
        .await
        .unwrap();
    assert!(status.status.success());
    let printed = String::from_utf8_lossy(&status.stdout);
    let dp_token = printed
        .lines()
        .find_map(|l| l.strip_prefix("set appservice.double_puppet_token: "))
        .expect("the double-puppet token is printed");
    let dp = std::fs::read_to_string(dir.join("doublepuppet.yaml")).unwrap();
    assert!(dp.contains(&format!("as_token: \"{dp_token}\"")), "{dp}");
    // Synapse's own loader, from the stack's Synapse.
    let python = std::path::Path::new(env.get("STACK_DIR")).join("synapse-venv/bin/python");
    let code = "import sys\nfrom synapse.config.appservice import load_appservices\n\
                services = load_appservices(sys.argv[1], [sys.argv[2]])\n\
                s = services[0]\nprint(s.id, s.sender.to_string(), s.is_interested_in_user('@msn_bob:' + sys.argv[1]), s.supports_ephemeral)";
    let out = tokio::process::Command::new(python)
        .args(["-c", code, env.get("MATRIX_SERVER_NAME")])
        .arg(dir.join("registration.yaml"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "Synapse cannot load it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.trim(),
        format!(
            "messenger-bridge @msnbot:{} True True",
            env.get("MATRIX_SERVER_NAME")
        ),
        "{printed}"
    );
    // The double-puppet registration: interested in every local user, exclusively in none.
    let code = "import sys\nfrom synapse.config.appservice import load_appservices\n\
                s = load_appservices(sys.argv[1], [sys.argv[2]])[0]\n\
                print(s.id, s.url, s.is_interested_in_user('@anyone:' + sys.argv[1]), \
                s.is_exclusive_user('@anyone:' + sys.argv[1]))";
    let out = tokio::process::Command::new(
        std::path::Path::new(env.get("STACK_DIR")).join("synapse-venv/bin/python"),
    )
    .args(["-c", code, env.get("MATRIX_SERVER_NAME")])
    .arg(dir.join("doublepuppet.yaml"))
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "Synapse cannot load the double-puppet registration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "messenger-bridge-doublepuppet None True False"
    );
}
