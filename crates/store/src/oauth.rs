//! The OAuth authorization server's state: registered clients, and the
//! secrets of a sign-in (pending requests, consents, authorization codes,
//! refresh tokens), kept by hash only. Every secret belongs to a family
//! (one person's grant to one client); reusing a spent one revokes the
//! family, access tokens included. Spending is one conditional UPDATE,
//! so two gateways racing on one code cannot both win.

use sqlx::Row;

use crate::{Store, StoreError};

/// A client registered through dynamic client registration (RFC 7591).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClientRow {
    pub id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// What a secret in `oauth_grants` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// A sign-in sent to the identity provider, waiting for its answer.
    Request,
    /// A signed-in person's pending decision on a client's request.
    Consent,
    /// An authorization code (RFC 6749 §4.1).
    Code,
    /// A refresh token; rotated on every use.
    Refresh,
    /// A one-time sign-in link to the web console (the quickstart's).
    Link,
    /// A console sign-in sent to a SAML identity provider (its request ID),
    /// bound to the browser that started it.
    SamlRequest,
    /// A SAML assertion that signed someone in: kept until it expires, so
    /// that the same assertion never signs in twice.
    SamlAssertion,
}

impl GrantKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Consent => "consent",
            Self::Code => "code",
            Self::Refresh => "refresh",
            Self::Link => "link",
            Self::SamlRequest => "saml_request",
            Self::SamlAssertion => "saml_assertion",
        }
    }
}

/// A secret to keep (its hash) with what it stands for (`data`, JSON
/// written and read by the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthGrantRow {
    pub hash: [u8; 32],
    pub kind: GrantKind,
    pub client_id: String,
    pub family: String,
    pub data: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// The result of spending a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spent {
    /// Spent now, by this caller.
    Fresh {
        client_id: String,
        family: String,
        data: String,
    },
    /// Spent before: the family it belongs to (the caller decides whether
    /// reuse revokes it).
    Reused { client_id: String, family: String },
    /// Unknown, of another kind, expired or revoked.
    Invalid,
}

impl Store {
    pub async fn insert_oauth_client(&self, c: &OAuthClientRow) -> Result<(), StoreError> {
        let uris = serde_json::to_string(&c.redirect_uris).map_err(|e| StoreError::Corrupt {
            table: "oauth_clients",
            reason: e.to_string(),
        })?;
        sqlx::query(self.q(
            "INSERT INTO oauth_clients (id, name, redirect_uris, created_at) VALUES (?, ?, ?, ?)",
        ))
        .bind(&c.id)
        .bind(&c.name)
        .bind(uris)
        .bind(c.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn oauth_client(&self, id: &str) -> Result<Option<OAuthClientRow>, StoreError> {
        let row = sqlx::query(self.q(
            "SELECT id, name, redirect_uris, created_at, revoked_at FROM oauth_clients WHERE id = ?",
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| client_from_row(&r)).transpose()
    }

    pub async fn oauth_clients(&self) -> Result<Vec<OAuthClientRow>, StoreError> {
        let rows = sqlx::query(self.q(
            "SELECT id, name, redirect_uris, created_at, revoked_at FROM oauth_clients \
             ORDER BY created_at, id",
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(client_from_row).collect()
    }

    /// Revoke a client with everything issued to it: its pending and
    /// refresh secrets and its access tokens (which ends the sessions
    /// they opened). False if there is no such client.
    pub async fn revoke_oauth_client(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            self.q("UPDATE oauth_clients SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?"),
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let tokens = sqlx::query(self.q(
            "UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL AND oauth_family IN \
             (SELECT family FROM oauth_grants WHERE client_id = ?)",
        ))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            self.q(
                "UPDATE oauth_grants SET revoked_at = COALESCE(revoked_at, ?) WHERE client_id = ?",
            ),
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.changes.moved_if(tokens.rows_affected() > 0).await;
        Ok(done.rows_affected() > 0)
    }

    pub async fn insert_oauth_grant(&self, g: &OAuthGrantRow) -> Result<(), StoreError> {
        self.insert_grant(g, "").await.map(drop)
    }

    /// Insert `g` (`then`: what follows the values, e.g. a conflict
    /// clause); the rows it added.
    /// Every grant is a person's (a code, a refresh token, a consent): it
    /// is written only while the store records this gateway's naming of
    /// people (see `naming.rs`), in the same statement.
    async fn insert_grant(&self, g: &OAuthGrantRow, then: &str) -> Result<u64, StoreError> {
        let naming = self.my_naming();
        let done = sqlx::query(self.q(&format!(
            "INSERT INTO oauth_grants (hash, kind, client_id, family, data, created_at, expires_at) \
             SELECT ?, ?, ?, ?, ?, ?, ? WHERE {}{then}",
            // SQLite reads `ON CONFLICT` after a bare SELECT as a join's.
            if naming.is_some() { crate::naming::still(self.backend) } else { "true" }
        )))
        .bind(&g.hash[..])
        .bind(g.kind.as_str())
        .bind(&g.client_id)
        .bind(&g.family)
        .bind(&g.data)
        .bind(g.created_at)
        .bind(g.expires_at);
        let done = match naming {
            Some(n) => done.bind(n),
            None => done,
        };
        let written = done.execute(&self.pool).await?.rows_affected();
        if written == 0 && !self.naming_holds().await? {
            return Err(StoreError::NamingChanged);
        }
        Ok(written)
    }

    /// Keep `g` unless a secret with its hash is already kept: true if
    /// this call kept it, false if it was there before (a replay). The
    /// insert is the check, so two gateways cannot both accept it.
    pub async fn insert_oauth_grant_once(&self, g: &OAuthGrantRow) -> Result<bool, StoreError> {
        Ok(self
            .insert_grant(g, " ON CONFLICT (hash) DO NOTHING")
            .await?
            == 1)
    }

    /// Revoke every unspent secret of `kind` kept for `client_id` (a new
    /// one-time link replaces the person's previous one).
    pub async fn revoke_oauth_grants_of(
        &self,
        kind: GrantKind,
        client_id: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(self.q(
            "UPDATE oauth_grants SET revoked_at = ? WHERE kind = ? AND client_id = ? \
             AND revoked_at IS NULL AND spent_at IS NULL",
        ))
        .bind(now)
        .bind(kind.as_str())
        .bind(client_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The data of the unspent, unrevoked secret with `hash` of `kind`
    /// that is still valid at `now`, without spending it (a console link
    /// names its person on the page that asks to use it).
    pub async fn peek_oauth_grant(
        &self,
        hash: &[u8; 32],
        kind: GrantKind,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            self.q("SELECT data FROM oauth_grants WHERE hash = ? AND kind = ? \
             AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > ?"),
        )
        .bind(&hash[..])
        .bind(kind.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Spend the secret with `hash`, once, if it is of `kind`, unexpired
    /// and unrevoked at `now`. The update is the check.
    pub async fn spend_oauth_grant(
        &self,
        hash: &[u8; 32],
        kind: GrantKind,
        now: i64,
    ) -> Result<Spent, StoreError> {
        let done = sqlx::query(self.q(
            "UPDATE oauth_grants SET spent_at = ? WHERE hash = ? AND kind = ? \
             AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > ?",
        ))
        .bind(now)
        .bind(&hash[..])
        .bind(kind.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(self.q(
            "SELECT client_id, family, data, spent_at FROM oauth_grants WHERE hash = ? AND kind = ?",
        ))
        .bind(&hash[..])
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Spent::Invalid);
        };
        let client_id: String = row.try_get("client_id")?;
        let family: String = row.try_get("family")?;
        if done.rows_affected() == 1 {
            return Ok(Spent::Fresh {
                client_id,
                family,
                data: row.try_get("data")?,
            });
        }
        let spent: Option<i64> = row.try_get("spent_at")?;
        Ok(match spent {
            Some(_) => Spent::Reused { client_id, family },
            None => Spent::Invalid,
        })
    }

    /// Revoke a family: every secret in it and every access token issued
    /// from it, and every one issued from it later (a token endpoint racing
    /// this one checks [`Self::oauth_family_live`] after it stored what it
    /// issues). Returns how many access tokens were live.
    ///
    /// The marker is committed before the rows are revoked: an issuer that
    /// stored its rows before the marker has them revoked here; one that
    /// stores them after sees the marker.
    pub async fn revoke_oauth_family(&self, family: &str, now: i64) -> Result<u64, StoreError> {
        let client: Option<String> = sqlx::query_scalar(
            self.q("SELECT client_id FROM oauth_grants WHERE family = ? LIMIT 1"),
        )
        .bind(family)
        .fetch_optional(&self.pool)
        .await?;
        let mut marker = [0u8; 32];
        marker.copy_from_slice(
            aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                format!("revoked-family:{family}").as_bytes(),
            )
            .as_ref(),
        );
        sqlx::query(self.q(
            "INSERT INTO oauth_grants (hash, kind, client_id, family, data, created_at, expires_at, revoked_at) \
             VALUES (?, 'revoked', ?, ?, '{}', ?, ?, ?) ON CONFLICT (hash) DO NOTHING",
        ))
        .bind(&marker[..])
        .bind(client.unwrap_or_default())
        .bind(family)
        .bind(now)
        // Outlives every member of the family (a grant lasts at most a day).
        .bind(now + 2 * 24 * 3600)
        .bind(now)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            self.q("UPDATE oauth_grants SET revoked_at = COALESCE(revoked_at, ?) WHERE family = ?"),
        )
        .bind(now)
        .bind(family)
        .execute(&self.pool)
        .await?;
        let tokens =
            sqlx::query(self.q(
                "UPDATE tokens SET revoked_at = ? WHERE oauth_family = ? AND revoked_at IS NULL",
            ))
            .bind(now)
            .bind(family)
            .execute(&self.pool)
            .await?;
        self.changes.moved_if(tokens.rows_affected() > 0).await;
        Ok(tokens.rows_affected())
    }

    /// Whether a family may still be used: not revoked, and its client
    /// not revoked. Asked after issuing, so that a revocation racing the
    /// issue is never lost.
    pub async fn oauth_family_live(
        &self,
        family: &str,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        let revoked: i64 = sqlx::query_scalar(
            self.q("SELECT COUNT(*) FROM oauth_grants WHERE family = ? AND kind = 'revoked'"),
        )
        .bind(family)
        .fetch_one(&self.pool)
        .await?;
        let client_revoked: i64 = sqlx::query_scalar(
            self.q("SELECT COUNT(*) FROM oauth_clients WHERE id = ? AND revoked_at IS NOT NULL"),
        )
        .bind(client_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(revoked == 0 && client_revoked == 0)
    }

    /// Registered clients not revoked.
    pub async fn oauth_live_clients(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            self.q("SELECT COUNT(*) FROM oauth_clients WHERE revoked_at IS NULL"),
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Forget OAuth secrets that ended before `before` (a spent refresh
    /// token is kept until its grant's end: reuse detection needs it),
    /// sign-ins in progress (requests, consents, SAML requests) as soon as
    /// they expired by `now` (anyone may start one: a review kept
    /// thousands a minute on disk for a day), access tokens of OAuth grants
    /// that expired before `before`, and clients registered before it that
    /// never got a person's consent (anyone may register, so unused
    /// registrations must not pile up). Returns how many rows went.
    pub async fn sweep_oauth(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        let pending = sqlx::query(self.q("DELETE FROM oauth_grants WHERE expires_at < ? \
             AND kind IN ('request', 'consent', 'saml_request')"))
        .bind(now)
        .execute(&self.pool)
        .await?;
        let grants = sqlx::query(self.q("DELETE FROM oauth_grants WHERE expires_at < ?"))
            .bind(before)
            .execute(&self.pool)
            .await?;
        let tokens = sqlx::query(
            self.q("DELETE FROM tokens WHERE oauth_family IS NOT NULL AND expires_at < ?"),
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        let clients = sqlx::query(self.q(&format!(
            "DELETE FROM oauth_clients WHERE created_at < ? AND {UNUSED}"
        )))
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(pending.rows_affected()
            + grants.rows_affected()
            + tokens.rows_affected()
            + clients.rows_affected())
    }

    /// Make room for one more registration: of the clients no person
    /// consented to, keep the newest `keep - 1` and forget the rest,
    /// oldest first (a review filled the cap of clients with a flood of
    /// registrations, refusing every new MCP client for a day). A client a
    /// person consented to is never forgotten here. Returns how many went.
    pub async fn oauth_make_room(&self, keep: i64) -> Result<u64, StoreError> {
        let unconsented: i64 = sqlx::query_scalar(self.q(&format!(
            "SELECT COUNT(*) FROM oauth_clients WHERE {UNCONSENTED}"
        )))
        .fetch_one(&self.pool)
        .await?;
        if unconsented < keep {
            return Ok(0);
        }
        let gone = sqlx::query(self.q(&format!(
            "DELETE FROM oauth_clients WHERE id IN (SELECT id FROM oauth_clients \
             WHERE {UNCONSENTED} ORDER BY created_at, id LIMIT ?)"
        )))
        .bind(unconsented - keep + 1)
        .execute(&self.pool)
        .await?;
        Ok(gone.rows_affected())
    }
}

/// A client no person consented to: no code, refresh token or revoked
/// grant of its own, and no access token.
macro_rules! unused {
    () => {
        "NOT EXISTS \
         (SELECT 1 FROM oauth_grants g WHERE g.client_id = oauth_clients.id \
          AND g.kind IN ('code', 'refresh', 'revoked')) \
         AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.subject = 'agent:' || oauth_clients.id)"
    };
}
const UNUSED: &str = unused!();
/// [`UNUSED`], and not revoked: what counts against the cap.
const UNCONSENTED: &str = concat!("oauth_clients.revoked_at IS NULL AND ", unused!());

fn client_from_row(r: &sqlx::any::AnyRow) -> Result<OAuthClientRow, StoreError> {
    let uris: String = r.try_get("redirect_uris")?;
    let redirect_uris = serde_json::from_str(&uris).map_err(|e| StoreError::Corrupt {
        table: "oauth_clients",
        reason: format!("redirect_uris: {e}"),
    })?;
    Ok(OAuthClientRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        redirect_uris,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}
