//! Rich messages both ways (issue #16, first part): replies, edits, reactions and deletes. On a
//! standard server each is the XEP naming the exact message (XEP-0461, 0308, 0444, 0424); on the
//! Messenger profile, which has none of them, each is its text fallback or a notice.

use ruma::EventId;
use serde_json::{Value, json};
use testkit::{ContactLogin, StackEnv, XmppContact};

use crate::conversations::{alice, ghost_of, standard_portal_with_bob};
use crate::harness::*;

/// The contact's next chat message whose body is `body`.
async fn message_with_body(bob: &mut XmppContact, body: &str) -> Value {
    bob.wait_for(T, |e| e["event"] == "message" && e["body"] == body)
        .await
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

fn edit_of(event: &EventId, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("* {body}"),
        "m.new_content": text(body),
        "m.relates_to": {"rel_type": "m.replace", "event_id": event},
    })
}

fn reply_to(event: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body, "m.relates_to": {"m.in_reply_to": {"event_id": event}}})
}

fn reaction_to(event: &str, key: &str) -> Value {
    json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event, "key": key}})
}

fn redacted(e: &Value) -> bool {
    e["content"]
        .as_object()
        .is_some_and(serde_json::Map::is_empty)
        && e["unsigned"]["redacted_because"].is_object()
}

#[tokio::test]
async fn replies_edits_reactions_and_deletes_flow_both_ways_on_a_standard_server() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "rich").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Standard).await;
    let (mut bridge, room) = standard_portal_with_bob(&env, &user, &mut bob, false).await;
    let ghost = ghost_of(&env, "bob");
    let alice = alice(&env);
    let tag = unique("rich");

    // Matrix → XMPP. An edit is a correction of the message the contact received.
    let m1 = user
        .send_json(&room, "m.room.message", text(&format!("{tag} typo")))
        .await;
    let first = message_with_body(&mut bob, &format!("{tag} typo")).await;
    let m1_id = first["id"].as_str().unwrap().to_owned();
    user.send_json(
        &room,
        "m.room.message",
        edit_of(&m1, &format!("{tag} fixed")),
    )
    .await;
    let edit = message_with_body(&mut bob, &format!("{tag} fixed")).await;
    assert_eq!(
        edit["replace"],
        m1_id.as_str(),
        "XEP-0308 names the message"
    );

    // A reply names the contact's message and quotes it as a marked fallback.
    bob.command(
        json!({"op": "send", "to": alice, "body": format!("{tag} question"), "id": "bob-q1"}),
    )
    .await;
    let question = user
        .wait_event(&room, "the contact's question", |e| {
            e["sender"] == ghost.as_str() && e["content"]["body"] == format!("{tag} question")
        })
        .await;
    let q_event = question["event_id"].as_str().unwrap().to_owned();
    user.send_json(
        &room,
        "m.room.message",
        reply_to(&q_event, &format!("{tag} answer")),
    )
    .await;
    let quote = format!("> {tag} question\n");
    let answer = message_with_body(&mut bob, &format!("{quote}{tag} answer")).await;
    assert_eq!(
        answer["reply"]["id"], "bob-q1",
        "XEP-0461 names the message"
    );
    assert_eq!(
        answer["reply"]["to"],
        bob.bare_jid(),
        "and its author, the contact"
    );
    assert_eq!(
        answer["fallbacks"],
        json!([{"for": "urn:xmpp:reply:0", "ranges": [[0, quote.chars().count()]]}]),
        "XEP-0428 marks the quote"
    );

    // Reactions: the user's whole set each time; taking one back sends the smaller set.
    let thumbs = user
        .send_json(&room, "m.reaction", reaction_to(&q_event, "👍"))
        .await;
    let r = bob.wait_for(T, |e| e["reactions"].is_object()).await;
    assert_eq!(r["reactions"], json!({"id": "bob-q1", "keys": ["👍"]}));
    assert!(
        r["body"].is_null() && r["store"] == true,
        "no body, a store hint: {r}"
    );
    user.send_json(&room, "m.reaction", reaction_to(&q_event, "🎉"))
        .await;
    let r = bob.wait_for(T, |e| e["reactions"].is_object()).await;
    assert_eq!(
        r["reactions"],
        json!({"id": "bob-q1", "keys": ["👍", "🎉"]})
    );
    user.redact(&room, &thumbs).await;
    let r = bob.wait_for(T, |e| e["reactions"].is_object()).await;
    assert_eq!(r["reactions"], json!({"id": "bob-q1", "keys": ["🎉"]}));

    // A deleted message is retracted (XEP-0424), with the XEP's fallback text.
    user.redact(&room, &m1).await;
    let retraction = bob.wait_for(T, |e| e["retract"].is_string()).await;
    assert_eq!(retraction["retract"], m1_id.as_str());
    assert_eq!(
        retraction["fallbacks"][0]["for"],
        "urn:xmpp:message-retract:1"
    );
    assert!(
        retraction["body"]
            .as_str()
            .is_some_and(|b| b.contains("retract"))
            && retraction["store"] == true,
        "the XEP's fallback body and a store hint: {retraction}"
    );

    // XMPP → Matrix. A correction is an edit of the event the message became.
    bob.command(json!({"op": "send", "to": alice, "body": format!("{tag} tpyo"), "id": "bob-t1"}))
        .await;
    let t1 = user
        .wait_event(&room, "the contact's typo", |e| {
            e["content"]["body"] == format!("{tag} tpyo")
        })
        .await;
    let t1_event = t1["event_id"].as_str().unwrap().to_owned();
    bob.command(json!({"op": "send_raw", "xml": format!(
        "<message to='{alice}' type='chat' id='bob-t2'><body>{tag} typo</body>\
         <replace xmlns='urn:xmpp:message-correct:0' id='bob-t1'/></message>")}))
        .await;
    let edit = user
        .wait_event(&room, "the contact's correction", |e| {
            e["sender"] == ghost.as_str() && e["content"]["m.relates_to"]["rel_type"] == "m.replace"
        })
        .await;
    assert_eq!(edit["sender"], ghost.as_str());
    assert_eq!(
        edit["content"]["m.relates_to"]["event_id"],
        t1_event.as_str()
    );
    assert_eq!(
        edit["content"]["m.new_content"]["body"],
        format!("{tag} typo")
    );

    // A reply to the user's message: the relation, and the quote dropped.
    user.send_text(&room, &format!("{tag} ping")).await;
    let ping = message_with_body(&mut bob, &format!("{tag} ping")).await;
    let ping_id = ping["id"].as_str().unwrap().to_owned();
    let ping_event = user
        .wait_event(&room, "the user's ping", |e| {
            e["content"]["body"] == format!("{tag} ping")
        })
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let quote = format!("> {tag} ping\n");
    bob.command(json!({"op": "send_raw", "xml": format!(
        "<message to='{alice}' type='chat' id='bob-r1'><body>{quote}{tag} pong</body>\
         <reply xmlns='urn:xmpp:reply:0' to='{alice}' id='{ping_id}'/>\
         <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>\
         <body start='0' end='{}'/></fallback></message>", quote.chars().count())}))
        .await;
    let pong = user
        .wait_event(&room, "the contact's reply", |e| {
            e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == ping_event.as_str()
        })
        .await;
    assert_eq!(
        pong["content"]["body"],
        format!("{tag} pong"),
        "quote dropped"
    );

    // A client naming its previous correction still edits the original (Matrix edits name
    // the original); a correction naming the user's message is new text, not an edit of it.
    bob.command(json!({"op": "send_raw", "xml": format!(
        "<message to='{alice}' type='chat' id='bob-t3'><body>{tag} typo 2</body>\
         <replace xmlns='urn:xmpp:message-correct:0' id='bob-t2'/></message>")}))
        .await;
    let again = user
        .wait_event(&room, "the second correction", |e| {
            e["content"]["m.new_content"]["body"] == format!("{tag} typo 2")
        })
        .await;
    assert_eq!(
        again["content"]["m.relates_to"]["event_id"],
        t1_event.as_str()
    );
    bob.command(json!({"op": "send_raw", "xml": format!(
        "<message to='{alice}' type='chat' id='bob-h1'><body>{tag} hijacked</body>\
         <replace xmlns='urn:xmpp:message-correct:0' id='{ping_id}'/></message>")}))
        .await;
    let hijack = user
        .wait_event(&room, "the forged correction as new text", |e| {
            e["sender"] == ghost.as_str() && e["content"]["body"] == format!("✎ {tag} hijacked")
        })
        .await;
    assert!(hijack["content"]["m.relates_to"].is_null(), "{hijack}");

    // Reactions from the contact: added, then the empty set takes them back.
    bob.command(json!({"op": "send_raw", "xml": format!(
        "<message to='{alice}' type='chat' id='bob-re1'>\
         <reactions xmlns='urn:xmpp:reactions:0' id='{ping_id}'><reaction>👍</reaction></reactions>\
         <store xmlns='urn:xmpp:hints'/></message>")}))
        .await;
    let reaction = user
        .wait_event(&room, "the contact's reaction", |e| {
            e["type"] == "m.reaction" && e["sender"] == ghost.as_str()
        })
        .await;
    assert_eq!(
        reaction["content"]["m.relates_to"],
        json!({"rel_type": "m.annotation", "event_id": ping_event, "key": "👍"})
    );
    let reaction_event = reaction["event_id"].as_str().unwrap().to_owned();
    bob.command(json!({"op": "send_raw", "xml": format!(
        "<message to='{alice}' type='chat' id='bob-re2'>\
         <reactions xmlns='urn:xmpp:reactions:0' id='{ping_id}'/>\
         <store xmlns='urn:xmpp:hints'/></message>")}))
        .await;
    user.wait_event(&room, "the contact's reaction taken back", |e| {
        e["event_id"] == reaction_event.as_str() && redacted(e)
    })
    .await;

    // A retraction removes the contact's own message; one naming the user's message does not.
    let retract = |id: &str, sid: &str| {
        format!(
            "<message to='{alice}' type='chat' id='{sid}'><body>retracted</body>\
             <retract xmlns='urn:xmpp:message-retract:1' id='{id}'/>\
             <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:message-retract:1'/>\
             <store xmlns='urn:xmpp:hints'/></message>"
        )
    };
    bob.command(json!({"op": "send_raw", "xml": retract(&ping_id, "bob-x0")}))
        .await;
    bob.command(json!({"op": "send_raw", "xml": retract("bob-t1", "bob-x1")}))
        .await;
    user.wait_event(&room, "the contact's message retracted", |e| {
        e["event_id"] == t1_event.as_str() && redacted(e)
    })
    .await;
    // Handled in order: the forged one came first.
    let timeline = user.timeline(&room).await;
    let ping_now = timeline
        .iter()
        .find(|e| e["event_id"] == ping_event.as_str())
        .unwrap();
    assert_eq!(
        ping_now["content"]["body"],
        format!("{tag} ping"),
        "the contact cannot retract the user's message"
    );
    assert!(
        !timeline.iter().any(|e| e["type"] == "m.room.redaction"
            && (e["redacts"] == ping_event.as_str()
                || e["content"]["redacts"] == ping_event.as_str())),
        "no redaction names the user's message"
    );
    assert!(
        !timeline
            .iter()
            .any(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace"
                && e["content"]["m.relates_to"]["event_id"] == ping_event.as_str()),
        "no edit names the user's message"
    );
    assert!(
        !timeline.iter().any(|e| e["content"]["body"] == "retracted"),
        "a retraction's fallback text is not posted"
    );
    bob.quit().await;
    bridge.stop().await;
}

#[tokio::test]
async fn on_the_messenger_profile_they_fall_back_to_text_and_notices() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "plain").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    let ghost = ghost_of(&env, "bob");
    let alice = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let tag = unique("plain");

    let m1 = user
        .send_json(&room, "m.room.message", text(&format!("{tag} typo")))
        .await;
    let first = message_with_body(&mut bob, &format!("{tag} typo")).await;
    assert_eq!(first["markable"], false, "no XEP-0333 on Messenger");
    user.send_json(
        &room,
        "m.room.message",
        edit_of(&m1, &format!("{tag} fixed")),
    )
    .await;
    let edit = message_with_body(&mut bob, &format!("✎ {tag} fixed")).await;
    assert!(
        edit["replace"].is_null(),
        "no XEP-0308 on Messenger: {edit}"
    );

    bob.send_chat(&alice, Some(&format!("{tag} question")), None)
        .await;
    let q_event = user
        .wait_event(&room, "the contact's question", |e| {
            e["sender"] == ghost.as_str() && e["content"]["body"] == format!("{tag} question")
        })
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    user.send_json(
        &room,
        "m.room.message",
        reply_to(&q_event, &format!("{tag} answer")),
    )
    .await;
    let answer = message_with_body(&mut bob, &format!("> {tag} question\n{tag} answer")).await;
    assert!(
        answer["reply"].is_null() && answer["fallbacks"] == json!([]),
        "{answer}"
    );

    let thumbs = user
        .send_json(&room, "m.reaction", reaction_to(&q_event, "👍"))
        .await;
    let reacted = message_with_body(&mut bob, &format!("reacted 👍 to “{tag} question”")).await;
    assert!(reacted["reactions"].is_null());

    user.redact(&room, &thumbs).await;
    user.wait_event(&room, "a notice that the reaction stays", |e| {
        e["sender"] == ghost.as_str()
            && e["content"]["msgtype"] == "m.notice"
            && e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("cannot take back a reaction"))
    })
    .await;
    user.redact(&room, &m1).await;
    user.wait_event(&room, "a notice that the message stays", |e| {
        e["sender"] == ghost.as_str()
            && e["content"]["msgtype"] == "m.notice"
            && e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("cannot delete messages"))
    })
    .await;
    let extra = bob.drain(std::time::Duration::from_secs(2)).await;
    assert!(
        !extra
            .iter()
            .any(|e| e["retract"].is_string() || e["reactions"].is_object()),
        "no XEP elements on Messenger: {extra:?}"
    );
    bob.quit().await;
    bridge.stop().await;
}

/// XEP-0333 both ways: the user reading a contact's markable message sends `<displayed/>`
/// naming it; the contact's `<displayed/>` moves their ghost's read receipt onto the user's
/// message, which the bridge sent `<markable/>`.
#[tokio::test]
async fn read_markers_flow_both_ways_on_a_standard_server() {
    use ruma::api::client::receipt::create_receipt::v3::ReceiptType as SendReceipt;
    use ruma::events::receipt::{ReceiptThread, ReceiptType};

    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "reader").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Standard).await;
    let (mut bridge, room) = standard_portal_with_bob(&env, &user, &mut bob, false).await;
    let ghost = ghost_of(&env, "bob");
    let alice = alice(&env);
    let tag = unique("read");

    bob.command(json!({"op": "send_raw", "xml": format!(
        "<message to='{alice}' type='chat' id='bob-m1'><body>{tag} read me</body>\
         <markable xmlns='urn:xmpp:chat-markers:0'/></message>")}))
        .await;
    let event = user
        .wait_event(&room, "the contact's markable message", |e| {
            e["content"]["body"] == format!("{tag} read me")
        })
        .await;
    let event_id = EventId::parse(event["event_id"].as_str().unwrap()).unwrap();
    let matrix_room = user.client.get_room(&room).unwrap();
    matrix_room
        .send_single_receipt(SendReceipt::Read, ReceiptThread::Unthreaded, event_id)
        .await
        .unwrap();
    let marker = bob.wait_for(T, |e| e["displayed"].is_string()).await;
    assert_eq!(marker["displayed"], "bob-m1");

    user.send_text(&room, &format!("{tag} did you read")).await;
    let mine = message_with_body(&mut bob, &format!("{tag} did you read")).await;
    assert_eq!(
        mine["markable"], true,
        "the bridge asks for markers: {mine}"
    );
    let mine_event = user
        .wait_event(&room, "the user's message", |e| {
            e["content"]["body"] == format!("{tag} did you read")
        })
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.command(json!({"op": "send_raw", "xml": format!(
        "<message to='{alice}' type='chat' id='bob-d1'>\
         <displayed xmlns='urn:xmpp:chat-markers:0' id='{}'/></message>", mine["id"].as_str().unwrap())}))
        .await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let receipt = matrix_room
            .load_user_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, &ghost)
            .await
            .unwrap();
        if receipt
            .as_ref()
            .is_some_and(|(e, _)| e.as_str() == mine_event)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ghost's read receipt is not on the user's message: {receipt:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    bob.quit().await;
    bridge.stop().await;
}

/// Formatting both ways (XEP-0393 message styling ⇄ Matrix HTML) on a standard server; on the
/// Messenger profile the plain body goes, with the user's own marks.
#[tokio::test]
async fn formatting_becomes_styling_and_back() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "styled").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Standard).await;
    let (mut bridge, room) = standard_portal_with_bob(&env, &user, &mut bob, false).await;
    let ghost = ghost_of(&env, "bob");
    let alice = alice(&env);
    let tag = unique("style");
    let html = |tag: &str| {
        json!({
            "msgtype": "m.text",
            "body": format!("{tag} **bold** and _it_"),
            "format": "org.matrix.custom.html",
            "formatted_body": format!("{tag} <strong>bold</strong> and <em>it</em> <code>a*b</code>"),
        })
    };
    user.send_json(&room, "m.room.message", html(&tag)).await;
    message_with_body(&mut bob, &format!("{tag} *bold* and _it_ `a*b`")).await;

    bob.send_chat(&alice, Some(&format!("{tag} *yes* `x_y`")), None)
        .await;
    let styled = user
        .wait_event(&room, "the contact's styled message", |e| {
            e["sender"] == ghost.as_str() && e["content"]["body"] == format!("{tag} *yes* `x_y`")
        })
        .await;
    assert_eq!(styled["content"]["format"], "org.matrix.custom.html");
    assert_eq!(
        styled["content"]["formatted_body"],
        format!("{tag} <strong>yes</strong> <code>x_y</code>")
    );
    bob.quit().await;
    bridge.stop().await;

    // The Messenger profile: the plain body, marks and all.
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "plainstyle").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    user.send_json(&room, "m.room.message", html(&tag)).await;
    message_with_body(&mut bob, &format!("{tag} **bold** and _it_")).await;
    bob.quit().await;
    bridge.stop().await;
}

/// On a standard server, a contact whose client announces its capabilities (XEP-0115) without
/// corrections, replies and reactions gets their text fallbacks, as on the Messenger profile:
/// the bridge asks that client once what it supports (disco#info about its `node#ver`).
#[tokio::test]
async fn a_contact_whose_client_lacks_the_xeps_gets_the_text_fallbacks() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "oldclient").await;
    let mut bob = XmppContact::start_announcing_caps(&env, "bob", ContactLogin::Standard).await;
    let (mut bridge, room) = standard_portal_with_bob(&env, &user, &mut bob, false).await;
    let log = bridge.dir.join("bridge.log");
    let deadline = tokio::time::Instant::now() + T;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("a contact's client capabilities")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge never learned bob's client capabilities\n{}",
            bridge.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let ghost = ghost_of(&env, "bob");
    let tag = unique("old");

    let m1 = user
        .send_json(&room, "m.room.message", text(&format!("{tag} typo")))
        .await;
    message_with_body(&mut bob, &format!("{tag} typo")).await;
    user.send_json(
        &room,
        "m.room.message",
        edit_of(&m1, &format!("{tag} fixed")),
    )
    .await;
    let edit = message_with_body(&mut bob, &format!("✎ {tag} fixed")).await;
    assert!(
        edit["replace"].is_null(),
        "no XEP-0308 for this client: {edit}"
    );

    bob.send_chat(&alice(&env), Some(&format!("{tag} question")), None)
        .await;
    let q_event = user
        .wait_event(&room, "the contact's question", |e| {
            e["sender"] == ghost.as_str() && e["content"]["body"] == format!("{tag} question")
        })
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    user.send_json(
        &room,
        "m.room.message",
        reply_to(&q_event, &format!("{tag} answer")),
    )
    .await;
    let answer = message_with_body(&mut bob, &format!("> {tag} question\n{tag} answer")).await;
    assert!(
        answer["reply"].is_null(),
        "no XEP-0461 for this client: {answer}"
    );
    user.send_json(&room, "m.reaction", reaction_to(&q_event, "👍"))
        .await;
    let reacted = message_with_body(&mut bob, &format!("reacted 👍 to “{tag} question”")).await;
    assert!(
        reacted["reactions"].is_null(),
        "no XEP-0444 for this client: {reacted}"
    );
    bob.quit().await;
    bridge.stop().await;
}
