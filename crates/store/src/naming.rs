//! How the identity providers name people, as the gateway last started
//! with it: tokens minted for a person carry the name their provider gave
//! then, and keep it when a provider's namespace changes. So a change
//! revokes them (people sign in again and get the new name).

use crate::{Store, StoreError};

/// The condition a row for a person is written under (after `WHERE`): the store still
/// records this gateway's naming (bound last). On PostgreSQL the naming
/// row is read `FOR SHARE`: a start recording another naming holds it
/// `FOR UPDATE` until its revocation commits, so an insert either waits
/// and then sees the new naming, or commits first and is revoked (a
/// review found a token minted in that window that survived). SQLite has
/// one writer at a time, and a statement is whole.
pub(crate) fn still(backend: crate::Backend) -> &'static str {
    match backend {
        crate::Backend::Postgres => {
            "COALESCE((SELECT naming FROM identity_naming WHERE id = 1 FOR SHARE), '') = ?"
        }
        crate::Backend::Sqlite => {
            "COALESCE((SELECT naming FROM identity_naming WHERE id = 1), '') = ?"
        }
    }
}

/// Which token rows are a person's (they carry the name the person's
/// provider gave): a console session, a token a person minted for an
/// agent, an OAuth access token. [`is_for_person`] is the same rule on a
/// row about to be written; the two stay side by side.
const PERSON_TOKENS: &str =
    "(on_behalf_of IS NOT NULL OR audience = 'console' OR oauth_family IS NOT NULL)";

/// [`PERSON_TOKENS`] for a row about to be written.
pub(crate) fn is_for_person(t: &crate::NewTokenRow<'_>) -> bool {
    t.on_behalf_of.is_some() || t.audience == Some("console") || t.oauth_family.is_some()
}

impl Store {
    /// Record `naming` (how the providers name people, as text). When it
    /// differs from what was recorded (nothing recorded counts as empty,
    /// the naming before namespaces existed), every token minted for a
    /// person is revoked at `now`: console sessions, tokens a person
    /// minted for an agent, OAuth tokens and every OAuth grant. Returns
    /// how many tokens that revoked, or `None` when the naming is
    /// unchanged.
    pub async fn record_naming(&self, naming: &str, now: i64) -> Result<Option<u64>, StoreError> {
        // The row exists before anyone competes for it.
        sqlx::query(self.q(
            "INSERT INTO identity_naming (id, naming, changed_at) VALUES (1, '', ?) \
             ON CONFLICT (id) DO NOTHING",
        ))
        .bind(now)
        .execute(&self.pool)
        .await?;
        let mut tx = self.pool.begin().await?;
        // The naming is changed first: the row stays locked (PostgreSQL)
        // or the database write-locked (SQLite) until the revocation
        // below commits with it.
        let changed = sqlx::query(self.q(
            "UPDATE identity_naming SET naming = ?, changed_at = ? WHERE id = 1 AND naming <> ?",
        ))
        .bind(naming)
        .bind(now)
        .bind(naming)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !changed {
            tx.commit().await?;
            self.set_naming(naming);
            return Ok(None);
        }
        let tokens = sqlx::query(self.q(&format!(
            "UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL AND {PERSON_TOKENS}"
        )))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(self.q("UPDATE oauth_grants SET revoked_at = ? WHERE revoked_at IS NULL"))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.changes.moved_if(tokens > 0).await;
        self.set_naming(naming);
        Ok(Some(tokens))
    }

    /// Another handle on the same database with its own naming, as a
    /// second gateway sharing the store has (for the repository suite).
    #[cfg(any(test, feature = "testsuite"))]
    pub fn clone_fresh(&self) -> Store {
        Store {
            naming: Default::default(),
            ..self.clone()
        }
    }

    // A poisoned lock still holds a whole value (it is only assigned).
    fn set_naming(&self, naming: &str) {
        *self
            .naming
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(naming.to_owned());
    }

    /// The naming this handle recorded last, if it recorded one.
    pub(crate) fn my_naming(&self) -> Option<String> {
        self.naming
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the store still records this gateway's naming (true
    /// before it recorded one).
    pub(crate) async fn naming_holds(&self) -> Result<bool, StoreError> {
        let Some(mine) = self.my_naming() else {
            return Ok(true);
        };
        let recorded: Option<String> =
            sqlx::query_scalar(self.q("SELECT naming FROM identity_naming WHERE id = 1"))
                .fetch_optional(&self.pool)
                .await?;
        Ok(recorded.as_deref().unwrap_or("") == mine)
    }
}
