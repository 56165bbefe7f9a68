//! Bot commands, in the management room (a DM with the bot) or as `!msn <command>` in portals.

use xmpp_core::Jid;
use xmpp_core::stanza::{Presence, Show};

use crate::context::Bridge;

const HELP: &str = "Commands:
• login — link your Messenger account (a sign-in link)
• logout — unlink it and forget the tokens
• status — the connection state of your login
• contacts [search] — your contacts with their presence
• pm <contact> — open a chat with a contact
• presence <online|away|busy|invisible|offline> [message] — your status on Messenger
• sync — read contacts and profiles again
• help — this list";

/// The bot's greeting for a new management room.
pub(crate) async fn welcome(bridge: &Bridge, user: &str) -> String {
    match bridge.inner.store.linked_user(user).await {
        Ok(Some(u)) => format!("Hello! Your account {} is linked. {HELP}", u.jid),
        _ => format!("Hello! Send `login` to link your Messenger account.\n{HELP}"),
    }
}

/// Runs one command line from `user` in `room`.
pub(crate) async fn handle(bridge: &Bridge, user: &str, room: &str, line: &str) {
    let reply = run(bridge, user, room, line).await;
    bridge.bot_say(room, &reply).await;
}

async fn run(bridge: &Bridge, user: &str, room: &str, line: &str) -> String {
    let inner = &bridge.inner;
    let (command, args) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(c, a)| (c, a.trim()));
    let linked = match inner.store.linked_user(user).await {
        Ok(linked) => linked,
        Err(e) => {
            // Never answer as if the user were not linked because the database hiccuped.
            tracing::error!(%user, error = %e, "cannot read a linked user for a command");
            return "The bridge cannot read its database right now; try again in a moment."
                .to_owned();
        }
    };
    match (command.to_lowercase().as_str(), &linked) {
        ("help" | "", _) => HELP.to_owned(),
        // From any state: a refused or expired sign-in is mended by signing in again, and a
        // working link is replaced once the new sign-in succeeds.
        ("login", _) => {
            let reply = match crate::linking::start_login(bridge, user, room, args).await {
                Ok(text) | Err(text) => text,
            };
            match &linked {
                Some(u) if u.connection_state != "bad_credentials" => format!(
                    "You are linked as {}; signing in again replaces that login.\n{reply}",
                    u.jid
                ),
                _ => reply,
            }
        }
        ("cancel", _) => crate::linking::cancel(bridge, user),
        (_, None) => {
            "You are not linked yet. Send `login` to link your Messenger account.".to_owned()
        }
        ("status", Some(u)) => {
            let state = match inner.xmpp.session(user) {
                Some(s) => format!("connected as {}", s.jid()),
                None => u.connection_state.replace('_', " "),
            };
            format!("{} ({}): {state}", u.jid, u.server_profile.as_str())
        }
        ("logout", Some(u)) => {
            inner.xmpp.stop(user).await;
            crate::linking::revoke(bridge, user).await;
            let unlinked = inner.store.unlink_user(user).await;
            bridge.portals().remove_user(user);
            match unlinked {
                Ok(_) => format!("Logged out of {}; the tokens are forgotten.", u.jid),
                Err(e) => format!("Could not forget the login: {e}"),
            }
        }
        ("contacts", Some(_)) => match inner.xmpp.roster(user).await {
            Ok(items) => {
                let needle = args.to_lowercase();
                let names = inner
                    .roster_names
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let mut lines: Vec<String> = items
                    .iter()
                    .filter_map(|i| {
                        let name = i
                            .name
                            .clone()
                            .or_else(|| names.get(&(user.to_owned(), i.jid.to_string())).cloned())
                            .unwrap_or_else(|| i.jid.to_string());
                        let matches = needle.is_empty()
                            || name.to_lowercase().contains(&needle)
                            || i.jid.to_string().contains(&needle);
                        matches.then(|| {
                            format!("• {name} — {} ({})", i.jid, inner.ghosts.user_id(&i.jid))
                        })
                    })
                    .collect();
                lines.sort();
                if lines.is_empty() {
                    "No contacts match.".to_owned()
                } else {
                    format!("Contacts:\n{}", lines.join("\n"))
                }
            }
            Err(e) => format!("Cannot read your contacts now: {e}"),
        },
        ("pm", Some(_)) => {
            let Ok(contact) = find_contact(bridge, user, args).await else {
                return format!("No contact matches {args:?}. Send `contacts` to see them.");
            };
            match bridge.ensure_ghost(user, &contact, false).await {
                Ok(_) => match bridge.ensure_portal(user, &contact).await {
                    Ok(room) => {
                        format!("Opened the chat with {contact}: {room} (check your invites).")
                    }
                    Err(e) => format!("Could not open the chat: {e}"),
                },
                Err(e) => format!("Could not open the chat: {e}"),
            }
        }
        ("presence", Some(_)) => {
            let (state, message) = args
                .split_once(char::is_whitespace)
                .map_or((args, None), |(s, m)| (s, Some(m.trim().to_owned())));
            let presence = match state {
                "online" => Presence::available(None, message),
                "away" => Presence::available(Some(Show::Away), message),
                "busy" => Presence::available(Some(Show::Dnd), message),
                "invisible" | "offline" => Presence::unavailable(),
                _ => {
                    return "Usage: presence <online|away|busy|invisible|offline> [message]"
                        .to_owned();
                }
            };
            match inner.xmpp.set_presence(user, presence).await {
                Ok(()) => format!("Your presence is now {state}."),
                Err(e) => format!("Could not set your presence: {e}"),
            }
        }
        ("sync", Some(u)) => {
            bridge.start_session(user, &u.jid, u.server_profile);
            "Reconnecting to read your contacts and profiles again.".to_owned()
        }
        (other, _) => format!("Unknown command `{other}`.\n{HELP}"),
    }
}

async fn find_contact(bridge: &Bridge, user: &str, query: &str) -> Result<Jid, ()> {
    let query = query.trim();
    if query.is_empty() {
        return Err(());
    }
    let items = bridge.inner.xmpp.roster(user).await.map_err(|_| ())?;
    let q = query.to_lowercase();
    if let Some(i) = items
        .iter()
        .find(|i| i.jid.to_string() == q || i.jid.local() == Some(q.as_str()))
    {
        return Ok(i.jid.clone());
    }
    let matching: Vec<_> = items
        .iter()
        .filter(|i| {
            i.name
                .as_deref()
                .is_some_and(|n| n.to_lowercase().contains(&q))
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.jid.clone()),
        _ => Err(()),
    }
}
