//! Appservice transaction marks: which homeserver transaction ids were already processed.
//!
//! A txn id alone is not enough: Synapse on SQLite restarts its ids at 1 after a restart, so a
//! "seen" id may be a new transaction. A mark therefore stores a fingerprint of the content
//! (the bridge hashes the event ids); a transaction is a duplicate only if both match.

use crate::backend::{RowExt as _, on_pool};
use crate::error::{QueryContext as _, Result};
use crate::{Store, now_millis};

/// Whether an appservice transaction was processed before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    /// Never seen, or the id was reused for different content: process it.
    New,
    /// The same id with the same content was processed: answer 200 without processing.
    Duplicate,
}

const SELECT_TXN: &str = "SELECT fingerprint FROM appservice_txns WHERE txn_id = $1";
const UPSERT_TXN: &str = "INSERT INTO appservice_txns (txn_id, fingerprint, received_at) \
    VALUES ($1, $2, $3) ON CONFLICT (txn_id) DO UPDATE SET fingerprint = excluded.fingerprint, \
    received_at = excluded.received_at";
const DELETE_TXNS_BEFORE: &str = "DELETE FROM appservice_txns WHERE received_at < $1";
const DELETE_TXNS: &str = "DELETE FROM appservice_txns";

impl Store {
    /// Whether transaction `txn_id` with this content fingerprint was already processed.
    pub async fn txn_status(&self, txn_id: &str, fingerprint: &str) -> Result<TxnStatus> {
        let seen = on_pool!(self, pool => {
            let row = sqlx::query(SELECT_TXN).bind(txn_id).fetch_optional(pool).await
                .ctx("look up a transaction mark")?;
            row.map(|r| r.text("fingerprint")).transpose()?
        });
        Ok(match seen {
            Some(f) if f == fingerprint => TxnStatus::Duplicate,
            _ => TxnStatus::New,
        })
    }

    /// Marks a transaction processed (call after its events are durably recorded, before
    /// answering 200). A reused id overwrites the older mark.
    pub async fn mark_txn(&self, txn_id: &str, fingerprint: &str) -> Result<()> {
        on_pool!(self, pool => sqlx::query(UPSERT_TXN).bind(txn_id).bind(fingerprint)
            .bind(now_millis()).execute(pool).await.map(|_| ()).ctx("save a transaction mark"))?;
        Ok(())
    }

    /// Forgets marks received before `before` (unix ms). Returns how many were removed.
    pub async fn forget_txns_before(&self, before: i64) -> Result<u64> {
        Ok(
            on_pool!(self, pool => sqlx::query(DELETE_TXNS_BEFORE).bind(before)
            .execute(pool).await.ctx("forget transaction marks")?.rows_affected()),
        )
    }

    /// Forgets all marks (e.g. when the homeserver is known to have restarted its ids).
    pub async fn forget_all_txns(&self) -> Result<u64> {
        Ok(on_pool!(self, pool => sqlx::query(DELETE_TXNS)
            .execute(pool).await.ctx("forget transaction marks")?.rows_affected()))
    }
}
