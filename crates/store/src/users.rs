//! Linked users (Matrix user ⇄ JID, server profile, connection state) and their encrypted
//! secrets: OAuth tokens and the XMPP password.

use std::fmt;

use crate::backend::{PoolExt as _, RowExt, on_pool};
use crate::crypto::{OpenError, secret_aad};
use crate::error::{Error, QueryContext as _, Result};
use crate::{Store, now_millis};

/// Which kind of XMPP server a user connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerProfile {
    /// The Messenger XMPP service (OAuth tokens).
    Messenger,
    /// A standard XMPP server (password).
    Standard,
}

impl ServerProfile {
    /// The stored text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messenger => "messenger",
            Self::Standard => "standard",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "messenger" => Ok(Self::Messenger),
            "standard" => Ok(Self::Standard),
            other => Err(Error::InvalidData {
                what: "linked_users.server_profile",
                detail: format!("unknown profile `{other}`"),
            }),
        }
    }
}

/// A Matrix user linked to an XMPP account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedUser {
    /// The Matrix user id, e.g. `@alice:example.org`.
    pub matrix_user: String,
    /// The user's bare JID.
    pub jid: String,
    /// Which kind of server the JID lives on.
    pub server_profile: ServerProfile,
    /// The bridge's connection state for this user (free text owned by the bridge).
    pub connection_state: String,
    /// The room where the bot talks to this user.
    pub management_room: Option<String>,
    /// When the link was created (unix ms).
    pub created_at: i64,
    /// When the record last changed (unix ms).
    pub updated_at: i64,
}

/// A secret slot of a linked user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecretSlot {
    /// OAuth access token.
    OAuthAccess,
    /// OAuth refresh token.
    OAuthRefresh,
    /// XMPP password (standard servers).
    Password,
}

impl SecretSlot {
    /// The stored text form (also part of the encryption's associated data).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OAuthAccess => "oauth_access",
            Self::OAuthRefresh => "oauth_refresh",
            Self::Password => "password",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "oauth_access" => Ok(Self::OAuthAccess),
            "oauth_refresh" => Ok(Self::OAuthRefresh),
            "password" => Ok(Self::Password),
            other => Err(Error::InvalidData {
                what: "user_secrets.slot",
                detail: format!("unknown slot `{other}`"),
            }),
        }
    }
}

/// A user's OAuth tokens, decrypted. `Debug` hides the tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthTokens {
    /// The access token.
    pub access_token: String,
    /// The refresh token, if the server issued one.
    pub refresh_token: Option<String>,
    /// When the access token expires (unix ms).
    pub expires_at: Option<i64>,
}

impl fmt::Debug for OAuthTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthTokens")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What [`Store::rotate_secrets`] did.
#[derive(Debug, Default)]
pub struct RotationReport {
    /// Secrets re-encrypted with the current key.
    pub reencrypted: u64,
    /// Secrets that could not be decrypted and were left as they were, with the reason.
    pub failed: Vec<Error>,
}

const UPSERT_USER: &str = "INSERT INTO linked_users (matrix_user, jid, server_profile, \
    connection_state, management_room, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $6) \
    ON CONFLICT (matrix_user) DO UPDATE SET jid = excluded.jid, \
    archive_cursor = CASE WHEN linked_users.jid = excluded.jid \
    THEN linked_users.archive_cursor END, \
    server_profile = excluded.server_profile, connection_state = excluded.connection_state, \
    management_room = excluded.management_room, updated_at = excluded.updated_at";
const JID_OWNER: &str = "SELECT matrix_user FROM linked_users WHERE jid = $1";
const SELECT_USER: &str = "SELECT matrix_user, jid, server_profile, connection_state, \
    management_room, created_at, updated_at FROM linked_users WHERE matrix_user = $1";
const SELECT_USER_BY_JID: &str = "SELECT matrix_user, jid, server_profile, connection_state, \
    management_room, created_at, updated_at FROM linked_users WHERE jid = $1";
const SELECT_USERS: &str = "SELECT matrix_user, jid, server_profile, connection_state, \
    management_room, created_at, updated_at FROM linked_users ORDER BY matrix_user";
const SET_STATE: &str =
    "UPDATE linked_users SET connection_state = $2, updated_at = $3 WHERE matrix_user = $1";
const SET_ROOM: &str =
    "UPDATE linked_users SET management_room = $2, updated_at = $3 WHERE matrix_user = $1";
const DELETE_USER: &str = "DELETE FROM linked_users WHERE matrix_user = $1";
const GET_CURSOR: &str = "SELECT archive_cursor FROM linked_users WHERE matrix_user = $1";
const SET_CURSOR: &str =
    "UPDATE linked_users SET archive_cursor = $3 WHERE matrix_user = $1 AND jid = $2";

const UPSERT_SECRET: &str = "INSERT INTO user_secrets (matrix_user, slot, key_id, sealed, \
    expires_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
    ON CONFLICT (matrix_user, slot) DO UPDATE SET key_id = excluded.key_id, \
    sealed = excluded.sealed, expires_at = excluded.expires_at, updated_at = excluded.updated_at";
const DELETE_SECRET: &str = "DELETE FROM user_secrets WHERE matrix_user = $1 AND slot = $2";
const DELETE_SECRETS: &str = "DELETE FROM user_secrets WHERE matrix_user = $1";
const SELECT_SECRET: &str = "SELECT key_id, sealed, expires_at FROM user_secrets \
    WHERE matrix_user = $1 AND slot = $2";
const SELECT_STALE_SECRETS: &str = "SELECT matrix_user, slot, key_id, sealed FROM user_secrets \
    WHERE key_id <> $1 ORDER BY matrix_user, slot";
const REWRAP_SECRET: &str = "UPDATE user_secrets SET key_id = $4, sealed = $5 \
    WHERE matrix_user = $1 AND slot = $2 AND key_id = $3";

fn user_from_row(r: &impl RowExt) -> Result<LinkedUser> {
    Ok(LinkedUser {
        matrix_user: r.text("matrix_user")?,
        jid: r.text("jid")?,
        server_profile: ServerProfile::parse(&r.text("server_profile")?)?,
        connection_state: r.text("connection_state")?,
        management_room: r.opt_text("management_room")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

fn not_found(matrix_user: &str) -> Error {
    Error::NotFound {
        what: "linked user",
        id: matrix_user.to_owned(),
    }
}

impl Store {
    /// Creates or updates a linked user. `created_at` is kept on update; `updated_at` is set
    /// to now. Fails with [`Error::JidTaken`] if another Matrix user has the JID.
    pub async fn upsert_linked_user(&self, user: &LinkedUser) -> Result<()> {
        const OP: &str = "save a linked user";
        let now = now_millis();
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let owner = sqlx::query(JID_OWNER).bind(&user.jid).fetch_optional(&mut *tx).await.ctx(OP)?;
            if let Some(owner) = owner {
                let other_user = owner.text("matrix_user")?;
                if other_user != user.matrix_user {
                    return Err(Error::JidTaken { jid: user.jid.clone(), other_user });
                }
            }
            sqlx::query(UPSERT_USER)
                .bind(&user.matrix_user)
                .bind(&user.jid)
                .bind(user.server_profile.as_str())
                .bind(&user.connection_state)
                .bind(&user.management_room)
                .bind(now)
                .execute(&mut *tx)
                .await
                .ctx(OP)?;
            tx.commit().await.ctx(OP)
        })
    }

    /// The linked user with this Matrix id.
    pub async fn linked_user(&self, matrix_user: &str) -> Result<Option<LinkedUser>> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_USER).bind(matrix_user).fetch_optional(pool).await
                .ctx("load a linked user")?;
            row.as_ref().map(user_from_row).transpose()
        })
    }

    /// The linked user with this JID.
    pub async fn linked_user_by_jid(&self, jid: &str) -> Result<Option<LinkedUser>> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_USER_BY_JID).bind(jid).fetch_optional(pool).await
                .ctx("load a linked user by JID")?;
            row.as_ref().map(user_from_row).transpose()
        })
    }

    /// All linked users, ordered by Matrix id (loaded once at start).
    pub async fn linked_users(&self) -> Result<Vec<LinkedUser>> {
        on_pool!(self, pool => {
            let rows = sqlx::query(SELECT_USERS).fetch_all(pool).await.ctx("load linked users")?;
            rows.iter().map(user_from_row).collect()
        })
    }

    /// Records the bridge's connection state for a user.
    pub async fn set_connection_state(&self, matrix_user: &str, state: &str) -> Result<()> {
        let done = on_pool!(self, pool => sqlx::query(SET_STATE)
            .bind(matrix_user).bind(state).bind(now_millis())
            .execute(pool).await.ctx("save a connection state")?.rows_affected());
        if done == 0 {
            Err(not_found(matrix_user))
        } else {
            Ok(())
        }
    }

    /// Where the bridge resumes reading the user's message archive (opaque to the store).
    pub async fn archive_cursor(&self, matrix_user: &str) -> Result<Option<String>> {
        on_pool!(self, pool => {
            let row = sqlx::query(GET_CURSOR).bind(matrix_user)
                .fetch_optional(pool).await.ctx("read an archive cursor")?;
            match row {
                Some(row) => row.opt_text("archive_cursor"),
                None => Ok(None),
            }
        })
    }

    /// Saves where the bridge resumes reading the archive of `jid`, the user's linked account;
    /// nothing when the user has linked another account since.
    pub async fn set_archive_cursor(
        &self,
        matrix_user: &str,
        jid: &str,
        cursor: &str,
    ) -> Result<()> {
        on_pool!(self, pool => sqlx::query(SET_CURSOR).bind(matrix_user).bind(jid).bind(cursor)
            .execute(pool).await.ctx("save an archive cursor").map(|_| ()))
    }

    /// Sets (or clears) a user's management room.
    pub async fn set_management_room(&self, matrix_user: &str, room: Option<&str>) -> Result<()> {
        let done = on_pool!(self, pool => sqlx::query(SET_ROOM)
            .bind(matrix_user).bind(room).bind(now_millis())
            .execute(pool).await.ctx("save a management room")?.rows_affected());
        if done == 0 {
            Err(not_found(matrix_user))
        } else {
            Ok(())
        }
    }

    /// Removes a linked user with their secrets, portals and message map. Returns whether the
    /// user existed.
    pub async fn unlink_user(&self, matrix_user: &str) -> Result<bool> {
        let done = on_pool!(self, pool => sqlx::query(DELETE_USER).bind(matrix_user)
            .execute(pool).await.ctx("delete a linked user")?.rows_affected());
        Ok(done > 0)
    }

    /// Stores a user's OAuth tokens encrypted, replacing earlier ones.
    pub async fn set_oauth_tokens(&self, matrix_user: &str, tokens: &OAuthTokens) -> Result<()> {
        const OP: &str = "save OAuth tokens";
        let now = now_millis();
        let access = self.seal(matrix_user, SecretSlot::OAuthAccess, &tokens.access_token);
        let refresh = tokens
            .refresh_token
            .as_deref()
            .map(|t| self.seal(matrix_user, SecretSlot::OAuthRefresh, t));
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let exists = sqlx::query(SELECT_USER).bind(matrix_user).fetch_optional(&mut *tx)
                .await.ctx(OP)?.is_some();
            if !exists {
                return Err(not_found(matrix_user));
            }
            sqlx::query(UPSERT_SECRET)
                .bind(matrix_user).bind(SecretSlot::OAuthAccess.as_str())
                .bind(&access.0).bind(&access.1).bind(tokens.expires_at).bind(now)
                .execute(&mut *tx).await.ctx(OP)?;
            match &refresh {
                Some((key_id, sealed)) => sqlx::query(UPSERT_SECRET)
                    .bind(matrix_user).bind(SecretSlot::OAuthRefresh.as_str())
                    .bind(key_id).bind(sealed).bind(None::<i64>).bind(now)
                    .execute(&mut *tx).await.ctx(OP)?,
                None => sqlx::query(DELETE_SECRET)
                    .bind(matrix_user).bind(SecretSlot::OAuthRefresh.as_str())
                    .execute(&mut *tx).await.ctx(OP)?,
            };
            tx.commit().await.ctx(OP)
        })
    }

    /// A user's OAuth tokens, decrypted; `None` if none are stored.
    pub async fn oauth_tokens(&self, matrix_user: &str) -> Result<Option<OAuthTokens>> {
        let Some((access_token, expires_at)) = self
            .load_secret(matrix_user, SecretSlot::OAuthAccess)
            .await?
        else {
            return Ok(None);
        };
        let refresh_token = self
            .load_secret(matrix_user, SecretSlot::OAuthRefresh)
            .await?
            .map(|(t, _)| t);
        Ok(Some(OAuthTokens {
            access_token,
            refresh_token,
            expires_at,
        }))
    }

    /// Stores a user's XMPP password encrypted (standard servers).
    pub async fn set_password(&self, matrix_user: &str, password: &str) -> Result<()> {
        let (key_id, sealed) = self.seal(matrix_user, SecretSlot::Password, password);
        let result = on_pool!(self, pool => sqlx::query(UPSERT_SECRET)
            .bind(matrix_user).bind(SecretSlot::Password.as_str())
            .bind(&key_id).bind(&sealed).bind(None::<i64>).bind(now_millis())
            .execute(pool).await.map(|_| ()));
        match result {
            Ok(()) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                Err(not_found(matrix_user))
            }
            Err(source) => Err(Error::Query {
                operation: "save a password",
                source,
            }),
        }
    }

    /// A user's XMPP password, decrypted.
    pub async fn password(&self, matrix_user: &str) -> Result<Option<String>> {
        Ok(self
            .load_secret(matrix_user, SecretSlot::Password)
            .await?
            .map(|(p, _)| p))
    }

    /// Deletes all of a user's secrets (tokens and password).
    pub async fn clear_secrets(&self, matrix_user: &str) -> Result<()> {
        on_pool!(self, pool => sqlx::query(DELETE_SECRETS).bind(matrix_user)
            .execute(pool).await.map(|_| ()).ctx("delete secrets"))?;
        Ok(())
    }

    /// Re-encrypts every secret not under the current key. Secrets that cannot be decrypted
    /// are reported in [`RotationReport::failed`] and left untouched; the rest are rotated.
    pub async fn rotate_secrets(&self) -> Result<RotationReport> {
        const OP: &str = "rotate secrets";
        let current = self.keyring.current_id().to_owned();
        let mut report = RotationReport::default();
        let stale: Vec<(String, SecretSlot, String, Vec<u8>)> = on_pool!(self, pool => {
            let rows = sqlx::query(SELECT_STALE_SECRETS).bind(&current).fetch_all(pool).await
                .ctx(OP)?;
            rows.iter()
                .map(|r| Ok((r.text("matrix_user")?, SecretSlot::parse(&r.text("slot")?)?,
                    r.text("key_id")?, r.bytes("sealed")?)))
                .collect::<Result<_>>()?
        });
        for (user, slot, key_id, sealed) in stale {
            let plain = match self.open_secret(&user, slot, &key_id, &sealed) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(matrix_user = %user, slot = slot.as_str(), "cannot rotate: {e}");
                    report.failed.push(e);
                    continue;
                }
            };
            let (new_id, resealed) = self.seal(&user, slot, &plain);
            // Only replace the row if nobody rewrote it meanwhile (same old key id).
            let n = on_pool!(self, pool => sqlx::query(REWRAP_SECRET)
                .bind(&user).bind(slot.as_str()).bind(&key_id).bind(&new_id).bind(&resealed)
                .execute(pool).await.ctx(OP)?.rows_affected());
            report.reencrypted += n;
        }
        Ok(report)
    }

    fn seal(&self, matrix_user: &str, slot: SecretSlot, plaintext: &str) -> (String, Vec<u8>) {
        self.keyring.seal(
            &secret_aad(matrix_user, slot.as_str()),
            plaintext.as_bytes(),
        )
    }

    fn open_secret(
        &self,
        user: &str,
        slot: SecretSlot,
        key_id: &str,
        sealed: &[u8],
    ) -> Result<String> {
        let aad = secret_aad(user, slot.as_str());
        let bytes = self
            .keyring
            .open(key_id, &aad, sealed)
            .map_err(|e| match e {
                OpenError::UnknownKey => Error::UnknownKeyId {
                    matrix_user: user.to_owned(),
                    slot: slot.as_str(),
                    key_id: key_id.to_owned(),
                },
                OpenError::Corrupt => Error::Decrypt {
                    matrix_user: user.to_owned(),
                    slot: slot.as_str(),
                    key_id: key_id.to_owned(),
                },
            })?;
        String::from_utf8(bytes).map_err(|_| Error::InvalidData {
            what: "user_secrets.sealed",
            detail: format!("the {} of {user} is not UTF-8", slot.as_str()),
        })
    }

    async fn load_secret(
        &self,
        matrix_user: &str,
        slot: SecretSlot,
    ) -> Result<Option<(String, Option<i64>)>> {
        let row = on_pool!(self, pool => {
            let row = sqlx::query(SELECT_SECRET).bind(matrix_user).bind(slot.as_str())
                .fetch_optional(pool).await.ctx("load a secret")?;
            row.map(|r| Ok::<_, Error>((r.text("key_id")?, r.bytes("sealed")?, r.opt_int("expires_at")?)))
                .transpose()?
        });
        let Some((key_id, sealed, expires_at)) = row else {
            return Ok(None);
        };
        Ok(Some((
            self.open_secret(matrix_user, slot, &key_id, &sealed)?,
            expires_at,
        )))
    }
}
