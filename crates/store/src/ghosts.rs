//! Ghosts: the Matrix puppet users standing for XMPP contacts (JID → Matrix user, profile).

use crate::backend::{RowExt, on_pool};
use crate::error::{QueryContext as _, Result};
use crate::{Store, now_millis};

/// A Matrix ghost user for an XMPP contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ghost {
    /// The contact's bare JID.
    pub jid: String,
    /// The ghost's Matrix user id.
    pub matrix_user: String,
    /// Display name last set on Matrix.
    pub display_name: Option<String>,
    /// Hash of the avatar last uploaded (XEP-0153/0084 id), to skip re-uploads.
    pub avatar_hash: Option<String>,
    /// The `mxc://` URI of the uploaded avatar.
    pub avatar_mxc: Option<String>,
    /// When the record last changed (unix ms); set by the store.
    pub updated_at: i64,
}

const UPSERT_GHOST: &str = "INSERT INTO ghosts (jid, matrix_user, display_name, avatar_hash, \
    avatar_mxc, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
    ON CONFLICT (jid) DO UPDATE SET matrix_user = excluded.matrix_user, \
    display_name = excluded.display_name, avatar_hash = excluded.avatar_hash, \
    avatar_mxc = excluded.avatar_mxc, updated_at = excluded.updated_at";
const SELECT_GHOST: &str = "SELECT jid, matrix_user, display_name, avatar_hash, avatar_mxc, \
    updated_at FROM ghosts WHERE jid = $1";
const SELECT_GHOST_BY_MXID: &str = "SELECT jid, matrix_user, display_name, avatar_hash, \
    avatar_mxc, updated_at FROM ghosts WHERE matrix_user = $1";

fn ghost_from_row(r: &impl RowExt) -> Result<Ghost> {
    Ok(Ghost {
        jid: r.text("jid")?,
        matrix_user: r.text("matrix_user")?,
        display_name: r.opt_text("display_name")?,
        avatar_hash: r.opt_text("avatar_hash")?,
        avatar_mxc: r.opt_text("avatar_mxc")?,
        updated_at: r.int("updated_at")?,
    })
}

impl Store {
    /// Creates or replaces the ghost for `ghost.jid`.
    pub async fn upsert_ghost(&self, ghost: &Ghost) -> Result<()> {
        on_pool!(self, pool => sqlx::query(UPSERT_GHOST)
            .bind(&ghost.jid).bind(&ghost.matrix_user).bind(&ghost.display_name)
            .bind(&ghost.avatar_hash).bind(&ghost.avatar_mxc).bind(now_millis())
            .execute(pool).await.map(|_| ()).ctx("save a ghost"))?;
        Ok(())
    }

    /// The ghost for a contact JID.
    pub async fn ghost(&self, jid: &str) -> Result<Option<Ghost>> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_GHOST).bind(jid).fetch_optional(pool).await
                .ctx("load a ghost")?;
            row.as_ref().map(ghost_from_row).transpose()
        })
    }

    /// The ghost with this Matrix user id.
    pub async fn ghost_by_matrix_user(&self, matrix_user: &str) -> Result<Option<Ghost>> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_GHOST_BY_MXID).bind(matrix_user).fetch_optional(pool)
                .await.ctx("load a ghost by Matrix id")?;
            row.as_ref().map(ghost_from_row).transpose()
        })
    }
}
