//! Files both ways (issue #16): a Matrix file reaches the contact as a link to the bridge that
//! works without Matrix credentials (with XEP-0066 on a standard server), a contact's file link
//! is fetched into the homeserver with its type and image size, and a link to a private
//! address is refused with a notice.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{ContactLogin, StackEnv, XmppContact};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conversations::{alice, ghost_of, standard_portal_with_bob};
use crate::harness::*;

/// A PNG header (640×480) followed by `n` bytes that are not all alike.
fn png(n: usize) -> Vec<u8> {
    let mut data = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
    data.extend_from_slice(b"IHDR");
    data.extend_from_slice(&640u32.to_be_bytes());
    data.extend_from_slice(&480u32.to_be_bytes());
    data.extend((0..n).map(|i| (i * 7 + i / 251) as u8));
    data
}

/// Uploads `data` to the homeserver as the user; its `mxc://` URI.
async fn upload(user: &MatrixUser, data: Vec<u8>, mime: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!(
            "{}_matrix/media/v3/upload?filename=cat.png",
            user.client.homeserver()
        ))
        .bearer_auth(user.client.access_token().unwrap())
        .header("content-type", mime)
        .body(data)
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    body["content_uri"].as_str().unwrap().to_owned()
}

/// Downloads a Matrix file as the user (authenticated media).
async fn download(user: &MatrixUser, mxc: &str) -> Vec<u8> {
    let path = mxc.strip_prefix("mxc://").unwrap();
    let response = reqwest::Client::new()
        .get(format!(
            "{}_matrix/client/v1/media/download/{path}",
            user.client.homeserver()
        ))
        .bearer_auth(user.client.access_token().unwrap())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.bytes().await.unwrap().to_vec()
}

/// Serves `data` to every request, on loopback, with its length or (`with_length` false) ended
/// by closing the connection, as some servers do; its URL.
async fn serve_file(data: Vec<u8>, with_length: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let data = data.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let length = match with_length {
                    true => format!("content-length: {}\r\n", data.len()),
                    false => String::new(),
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n{length}connection: close\r\n\r\n"
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&data).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/share/Holiday%20Cat.png")
}

fn oob_message(to: &str, id: &str, url: &str) -> Value {
    json!({"op": "send_raw", "xml": format!(
        "<message to='{to}' type='chat' id='{id}'><body>{url}</body>\
         <x xmlns='jabber:x:oob'><url>{url}</url></x></message>")})
}

#[tokio::test]
async fn files_flow_both_ways_and_private_links_are_refused() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "files").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Standard).await;
    let (mut bridge, room) = standard_portal_with_bob(&env, &user, &mut bob, false).await;
    let ghost = ghost_of(&env, "bob");
    let alice = alice(&env);

    // Matrix → XMPP: a link to the bridge, with XEP-0066, that works without a Matrix login.
    let picture = png(300 * 1024);
    let mxc = upload(&user, picture.clone(), "image/png").await;
    user.send_json(
        &room,
        "m.room.message",
        json!({"msgtype": "m.image", "body": "cat.png", "url": mxc, "info": {"mimetype": "image/png", "size": picture.len()}}),
    )
    .await;
    let got = bob
        .wait_for(T, |e| {
            e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.contains("/media/"))
        })
        .await;
    let link = got["body"].as_str().unwrap().to_owned();
    assert_eq!(
        got["oob"],
        link.as_str(),
        "XEP-0066 names the same URL: {got}"
    );
    assert!(link.ends_with("/cat.png"), "{link}");
    let fetched = reqwest::get(&link).await.unwrap();
    assert!(fetched.status().is_success(), "{}", fetched.status());
    assert_eq!(
        fetched.headers()["content-type"],
        "image/png",
        "served with its type"
    );
    assert!(
        fetched.bytes().await.unwrap().to_vec() == picture,
        "the contact gets the same bytes"
    );
    let tampered = link.replacen("/media/", "/media/x", 1);
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 404);
    // A file the user declared as HTML is a download, never a page on the bridge's site.
    let page = upload(&user, b"<script>alert(1)</script>".to_vec(), "text/html").await;
    user.send_json(
        &room,
        "m.room.message",
        json!({"msgtype": "m.file", "body": "page.html", "url": page, "info": {"mimetype": "text/html"}}),
    )
    .await;
    let got = bob
        .wait_for(T, |e| {
            e["event"] == "message"
                && e["body"]
                    .as_str()
                    .is_some_and(|b| b.ends_with("/page.html"))
        })
        .await;
    let fetched = reqwest::get(got["body"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        fetched.headers()["content-type"],
        "application/octet-stream"
    );
    assert!(
        fetched.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    bridge.stop().await;

    // XMPP → Matrix: the contact's link is fetched into the homeserver (loopback allowed
    // here, as for a test server on the same host).
    bridge.configure("media_from_private_addresses", "true");
    bridge.start().await;
    let served = png(200 * 1024);
    let url = serve_file(served.clone(), true).await;
    bob.command(oob_message(&alice, "bob-f1", &url)).await;
    let image = user
        .wait_event(&room, "the contact's picture", |e| {
            e["sender"] == ghost.as_str() && e["content"]["msgtype"] == "m.image"
        })
        .await;
    let content = &image["content"];
    assert_eq!(content["body"], "Holiday_Cat.png");
    assert_eq!(
        content["info"]["mimetype"], "image/png",
        "sniffed, not declared"
    );
    assert_eq!(content["info"]["w"], 640);
    assert_eq!(content["info"]["h"], 480);
    assert_eq!(content["info"]["size"], served.len());
    let stored = download(&user, content["url"].as_str().unwrap()).await;
    assert!(stored == served, "the homeserver has the same bytes");
    let timeline = user.timeline(&room).await;
    assert!(
        !timeline
            .iter()
            .any(|e| e["content"]["body"] == url.as_str()),
        "the link itself is not posted as well"
    );
    // A server that sends no length (Synapse needs one: the bridge counts it first).
    let unsized_file = png(100 * 1024);
    let unsized_url = serve_file(unsized_file.clone(), false).await;
    bob.command(oob_message(&alice, "bob-f3", &unsized_url))
        .await;
    let second = user
        .wait_event(&room, "the picture without a length", |e| {
            e["sender"] == ghost.as_str()
                && e["content"]["msgtype"] == "m.image"
                && e["content"]["info"]["size"] == unsized_file.len()
        })
        .await;
    let stored = download(&user, second["content"]["url"].as_str().unwrap()).await;
    assert!(stored == unsized_file, "the same bytes");
    bridge.stop().await;

    // Without the allowance a loopback link is refused: the link and a notice, not silence.
    bridge.edit_config(
        "media_from_private_addresses: true",
        "media_from_private_addresses: false",
    );
    bridge.start().await;
    bob.command(oob_message(&alice, "bob-f2", &url)).await;
    user.wait_event(&room, "the link as text", |e| {
        e["sender"] == ghost.as_str() && e["content"]["body"] == url.as_str()
    })
    .await;
    let notice = user
        .wait_event(&room, "a notice why", |e| {
            e["sender"] == ghost.as_str() && e["content"]["msgtype"] == "m.notice"
        })
        .await;
    assert!(
        notice["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("private or loopback")),
        "{notice}"
    );
    bob.quit().await;
    bridge.stop().await;
}

#[tokio::test]
async fn on_the_messenger_profile_a_file_is_a_plain_link() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "plainfile").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    let data = png(10 * 1024);
    let mxc = upload(&user, data.clone(), "image/png").await;
    user.send_json(
        &room,
        "m.room.message",
        json!({"msgtype": "m.file", "body": "the plan", "filename": "plan.png", "url": mxc, "info": {"mimetype": "image/png"}}),
    )
    .await;
    let link = bob
        .wait_for(T, |e| {
            e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.contains("/media/"))
        })
        .await;
    assert!(link["oob"].is_null(), "no XEP-0066 on Messenger: {link}");
    let caption = bob
        .wait_for(Duration::from_secs(10), |e| e["body"] == "the plan")
        .await;
    assert_eq!(caption["event"], "message");
    let fetched = reqwest::get(link["body"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        fetched.to_vec() == data,
        "the same bytes, without a Matrix login"
    );
    bob.quit().await;
    bridge.stop().await;
}

/// Where the user's server offers XEP-0363 (the stack's Prosody: an HTTP file share on
/// loopback, allowed here by `media_from_private_addresses`), a Matrix file is put there and
/// the contact gets the server's own link, with the same bytes, as from any XMPP client.
#[tokio::test]
async fn a_matrix_file_goes_to_the_users_own_server_when_it_offers_upload() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "upload").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Standard).await;
    let (mut bridge, room) = standard_portal_with_bob(&env, &user, &mut bob, false).await;
    bridge.stop().await;
    bridge.configure("media_from_private_addresses", "true");
    bridge.start().await;
    wait_logged_in(&bridge, 1).await;

    let picture = png(200 * 1024);
    let mxc = upload(&user, picture.clone(), "image/png").await;
    user.send_json(
        &room,
        "m.room.message",
        json!({"msgtype": "m.image", "body": "dog.png", "url": mxc, "info": {"mimetype": "image/png", "size": picture.len()}}),
    )
    .await;
    let share = format!("http://127.0.0.1:{}/file_share/", env.get("XMPP_HTTP_PORT"));
    let got = bob
        .wait_for(T, |e| {
            e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.contains("dog.png"))
        })
        .await;
    let link = got["body"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&share),
        "the server's share, not the bridge's link: {link}\n{}",
        bridge.log_tail()
    );
    assert_eq!(got["oob"], link.as_str(), "XEP-0066 names it: {got}");
    let fetched = reqwest::get(&link).await.unwrap();
    assert!(fetched.status().is_success(), "{}", fetched.status());
    assert!(
        fetched.bytes().await.unwrap().to_vec() == picture,
        "the contact gets the same bytes"
    );
    bob.quit().await;
    bridge.stop().await;
}
