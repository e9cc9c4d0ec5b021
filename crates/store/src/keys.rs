//! Keys every gateway on one store shares, made once by whichever asks
//! first. Sealed values a gateway hands out (the MCP proxy's session ids)
//! must open on every other gateway behind the same address: a key of
//! the process's own made each one fail over to a new session. Whoever
//! can read the store could forge such a seal; they can read far more
//! there already (the audit log, the sessions).

use crate::{Store, StoreError};

/// A shared key's length in bytes.
pub const KEY_LEN: usize = 32;

impl Store {
    /// The key named `name`: the one stored, or a new random one stored
    /// now. Two gateways asking at once get the same key: the insert of
    /// the one that comes second does nothing, and both read the row.
    pub async fn shared_key(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let mut fresh = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut fresh).map_err(|_| StoreError::NoRandomness)?;
        sqlx::query(self.q(
            "INSERT INTO gateway_keys (name, key, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
        ))
        .bind(name)
        .bind(&fresh[..])
        .bind(crate::migrate::now())
        .execute(&self.pool)
        .await?;
        let key: Vec<u8> =
            sqlx::query_scalar(self.q("SELECT key FROM gateway_keys WHERE name = ?"))
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
        if key.len() != KEY_LEN {
            return Err(StoreError::Corrupt {
                table: "gateway_keys",
                reason: format!("key {name:?} is {} bytes", key.len()),
            });
        }
        Ok(key)
    }
}
