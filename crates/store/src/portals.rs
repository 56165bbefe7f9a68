//! Portals ((linked user, contact) → Matrix room) and the per-portal message map
//! (Matrix event id ⇄ XMPP stanza id).

use crate::backend::{RowExt, on_pool};
use crate::error::{Error, QueryContext as _, Result};
use crate::{Store, now_millis};

/// A Matrix room bridging one linked user's conversation with one contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    /// The linked Matrix user.
    pub matrix_user: String,
    /// The contact's bare JID.
    pub contact_jid: String,
    /// The Matrix room id.
    pub room_id: String,
    /// When the portal was created (unix ms); set by the store on insert.
    pub created_at: i64,
}

/// One bridged message, known on both sides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageMapping {
    /// The portal's room id.
    pub room_id: String,
    /// The Matrix event id.
    pub matrix_event_id: String,
    /// The XMPP stanza id (`id` attribute or XEP-0359 stanza-id).
    pub xmpp_stanza_id: String,
    /// When it was recorded (unix ms).
    pub created_at: i64,
}

const UPSERT_PORTAL: &str = "INSERT INTO portals (matrix_user, contact_jid, room_id, created_at) \
    VALUES ($1, $2, $3, $4) ON CONFLICT (matrix_user, contact_jid) \
    DO UPDATE SET room_id = excluded.room_id";
const SELECT_PORTAL: &str = "SELECT matrix_user, contact_jid, room_id, created_at FROM portals \
    WHERE matrix_user = $1 AND contact_jid = $2";
const SELECT_PORTAL_BY_ROOM: &str = "SELECT matrix_user, contact_jid, room_id, created_at \
    FROM portals WHERE room_id = $1";
const SELECT_PORTALS_OF_USER: &str = "SELECT matrix_user, contact_jid, room_id, created_at \
    FROM portals WHERE matrix_user = $1 ORDER BY contact_jid";
const DELETE_PORTAL: &str = "DELETE FROM portals WHERE room_id = $1";
const INSERT_MAPPING: &str = "INSERT INTO message_map (room_id, matrix_event_id, \
    xmpp_stanza_id, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const SELECT_BY_EVENT: &str = "SELECT room_id, matrix_event_id, xmpp_stanza_id, created_at \
    FROM message_map WHERE room_id = $1 AND matrix_event_id = $2";
const SELECT_BY_STANZA: &str = "SELECT room_id, matrix_event_id, xmpp_stanza_id, created_at \
    FROM message_map WHERE room_id = $1 AND xmpp_stanza_id = $2";

fn portal_from_row(r: &impl RowExt) -> Result<Portal> {
    Ok(Portal {
        matrix_user: r.text("matrix_user")?,
        contact_jid: r.text("contact_jid")?,
        room_id: r.text("room_id")?,
        created_at: r.int("created_at")?,
    })
}

fn mapping_from_row(r: &impl RowExt) -> Result<MessageMapping> {
    Ok(MessageMapping {
        room_id: r.text("room_id")?,
        matrix_event_id: r.text("matrix_event_id")?,
        xmpp_stanza_id: r.text("xmpp_stanza_id")?,
        created_at: r.int("created_at")?,
    })
}

fn map_fk(
    result: std::result::Result<(), sqlx::Error>,
    what: &'static str,
    id: &str,
    op: &'static str,
) -> Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Err(Error::NotFound {
            what,
            id: id.to_owned(),
        }),
        Err(source) => Err(Error::Query {
            operation: op,
            source,
        }),
    }
}

impl Store {
    /// Creates the portal, or points an existing (user, contact) portal at a new room.
    /// The linked user must exist.
    pub async fn upsert_portal(
        &self,
        matrix_user: &str,
        contact_jid: &str,
        room_id: &str,
    ) -> Result<Portal> {
        let now = now_millis();
        let result = on_pool!(self, pool => sqlx::query(UPSERT_PORTAL)
            .bind(matrix_user).bind(contact_jid).bind(room_id).bind(now)
            .execute(pool).await.map(|_| ()));
        map_fk(result, "linked user", matrix_user, "save a portal")?;
        self.portal(matrix_user, contact_jid)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "portal",
                id: room_id.to_owned(),
            })
    }

    /// The portal of a user with a contact.
    pub async fn portal(&self, matrix_user: &str, contact_jid: &str) -> Result<Option<Portal>> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_PORTAL).bind(matrix_user).bind(contact_jid)
                .fetch_optional(pool).await.ctx("load a portal")?;
            row.as_ref().map(portal_from_row).transpose()
        })
    }

    /// The portal for a Matrix room.
    pub async fn portal_by_room(&self, room_id: &str) -> Result<Option<Portal>> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_PORTAL_BY_ROOM).bind(room_id)
                .fetch_optional(pool).await.ctx("load a portal by room")?;
            row.as_ref().map(portal_from_row).transpose()
        })
    }

    /// All portals of a linked user, by contact JID.
    pub async fn portals_of_user(&self, matrix_user: &str) -> Result<Vec<Portal>> {
        on_pool!(self, pool => {
            let rows = sqlx::query(SELECT_PORTALS_OF_USER).bind(matrix_user)
                .fetch_all(pool).await.ctx("load portals")?;
            rows.iter().map(portal_from_row).collect()
        })
    }

    /// Deletes a portal and its message map. Returns whether it existed.
    pub async fn delete_portal(&self, room_id: &str) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(DELETE_PORTAL).bind(room_id)
            .execute(pool).await.ctx("delete a portal")?.rows_affected());
        Ok(n > 0)
    }

    /// Records that a Matrix event and an XMPP stanza are the same message in a portal.
    /// Recording the same pair again is a no-op; the first mapping of either id wins.
    pub async fn map_message(
        &self,
        room_id: &str,
        matrix_event_id: &str,
        xmpp_stanza_id: &str,
    ) -> Result<()> {
        let result = on_pool!(self, pool => sqlx::query(INSERT_MAPPING)
            .bind(room_id).bind(matrix_event_id).bind(xmpp_stanza_id).bind(now_millis())
            .execute(pool).await.map(|_| ()));
        map_fk(result, "portal", room_id, "save a message mapping")
    }

    /// The mapping for a Matrix event in a portal.
    pub async fn message_by_event(
        &self,
        room_id: &str,
        matrix_event_id: &str,
    ) -> Result<Option<MessageMapping>> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_BY_EVENT).bind(room_id).bind(matrix_event_id)
                .fetch_optional(pool).await.ctx("look up a message by event id")?;
            row.as_ref().map(mapping_from_row).transpose()
        })
    }

    /// The mapping for an XMPP stanza id in a portal.
    pub async fn message_by_stanza(
        &self,
        room_id: &str,
        xmpp_stanza_id: &str,
    ) -> Result<Option<MessageMapping>> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_BY_STANZA).bind(room_id).bind(xmpp_stanza_id)
                .fetch_optional(pool).await.ctx("look up a message by stanza id")?;
            row.as_ref().map(mapping_from_row).transpose()
        })
    }
}
