//! Persistence. The embedded default is one SQLite database in the data
//! folder; several gateways share one PostgreSQL database instead
//! (`store.url = "postgres://…"`). Both run through sqlx's `Any` driver
//! with the same queries: written with `?` placeholders, which
//! [`Store::q`] turns into `$1, $2, …` for PostgreSQL.

mod keys;
mod migrate;
mod naming;
mod oauth;
mod token_cache;
mod usage;

pub use oauth::{GrantKind, OAuthClientRow, OAuthGrantRow, Spent};
pub use token_cache::CachedTokens;
pub use usage::{Taken, TooMany, UsageWindow};

use std::path::Path;
use std::sync::Arc;

use portcullis_identity::{TokenHash, TokenRecord};
use sqlx::{AnyPool, pool::PoolOptions};
type AnyPoolOptions = PoolOptions<sqlx::Any>;
use sqlx::{AssertSqlSafe, Executor, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("store migration {version} failed: {source}")]
    Migrate { version: i64, source: sqlx::Error },
    #[error(
        "the store was written by a newer Portcullis (schema {found}, this build knows {known})"
    )]
    TooNew { found: i64, known: i64 },
    #[error("corrupt row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error(
        "another gateway on this store names people differently since it started: \
         restart this one with the same identity providers before it signs anyone in"
    )]
    NamingChanged,
    #[error("{person} already holds {max} live tokens for agents, the most a person may hold")]
    TooManyForAgents { person: String, max: i64 },
    #[error("no randomness for a new key")]
    NoRandomness,
}

impl StoreError {
    /// A unique key was taken: another writer got there first (the audit
    /// chain's next sequence number), as opposed to a store that fails.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Query(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Moved by every revocation, read by [`CachedTokens`].
    changes: token_cache::Changes,
    /// How this gateway's providers name people, once recorded
    /// ([`Store::record_naming`]): a token minted for a person is written
    /// only while the store records the same.
    naming: Arc<std::sync::RwLock<Option<String>>>,
    /// The most live tokens minted on behalf of one person (for agents,
    /// and OAuth access tokens) at once: [`MAX_LIVE_FOR_AGENTS`].
    live_for_agents: i64,
    /// The connection audit batches are written on, kept between batches
    /// (SQLite only; [`Store::audit_batch`]).
    writer: Arc<tokio::sync::Mutex<Option<sqlx::pool::PoolConnection<sqlx::Any>>>>,
}

/// Live tokens one person may hold for agents at once (minted with
/// `token create --principal agent:NAME --gateway URL`, the console or
/// `/api/v1/tokens`; an OAuth grant's access tokens count once). Each
/// lives at most a day, but without a bound one person could hold any
/// number live at once.
pub const MAX_LIVE_FOR_AGENTS: i64 = 256;

/// The condition a token minted on a person's behalf is written under
/// (binds: the person, now, the token's OAuth family, the bound). An OAuth
/// grant's access tokens count once, as their family, and not against a
/// new one of the same family: a client refreshing in a loop would
/// otherwise fill its person's places (found in review).
const LIVE_FOR_AGENTS_BELOW: &str = "(SELECT COUNT(DISTINCT COALESCE(oauth_family, id)) \
     FROM tokens WHERE on_behalf_of = ? AND revoked_at IS NULL \
     AND (expires_at IS NULL OR expires_at > ?) \
     AND (oauth_family IS NULL OR oauth_family <> COALESCE(?, ''))) < ?";

/// Which database engine a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A token to insert (the secret itself is never given to the store).
#[derive(Debug, Clone)]
pub struct NewTokenRow<'a> {
    pub hash: TokenHash,
    pub subject: &'a str,
    pub groups: &'a [String],
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// For a token a person minted for an agent: that person.
    pub on_behalf_of: Option<&'a str>,
    /// The one resource an OAuth access token is accepted at.
    pub audience: Option<&'a str>,
    /// The OAuth grant family an access token belongs to (revoked with it).
    pub oauth_family: Option<&'a str>,
}

impl Store {
    /// Open (creating if needed) the SQLite database at `path` and bring
    /// its schema up to date.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        Self::open(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Open the store at `url` (`sqlite://PATH` or `postgres://…`, TLS
    /// settings in the URL as libpq spells them) and bring its schema up
    /// to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Open {
                path: redact(url),
                source: sqlx::Error::Configuration(
                    "store URLs are sqlite://PATH or postgres://…".into(),
                ),
            });
        };
        let options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            // A pooled SQLite connection is a file handle that cannot go
            // stale, and pinging it before each use doubled the hand-offs to
            // sqlx's worker thread on every request's token lookup (the
            // largest cost left on the HTTP path). A network connection to
            // PostgreSQL can die while idle, so it is still checked.
            .test_before_acquire(backend != Backend::Sqlite)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets the CLI (`token revoke`) write while a
                        // gateway reads. In WAL mode, NORMAL makes a commit
                        // durable against a crash of the process (what
                        // `kill -9` tests) without an fsync per commit; a
                        // power loss may lose the last commits, never
                        // corrupt the chain. FULL would put an fsync on
                        // every request's path. The page cache is 512 KiB
                        // per connection rather than SQLite's 2 MiB: up to
                        // eight full caches stay resident once a load has
                        // grown the store (docs/performance.md), and the
                        // pages a request touches are few (token records
                        // are cached, audit entries append).
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
                             PRAGMA cache_size = -512;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            });
        let pool = options
            .connect(url)
            .await
            .map_err(|source| StoreError::Open {
                path: redact(url),
                source,
            })?;
        migrate::run(&pool, backend).await?;
        let changes = match backend {
            Backend::Sqlite => token_cache::Changes::for_sqlite_url(url),
            // Other gateways write a shared PostgreSQL store, and no mark
            // of theirs can be read without a round trip: uncached.
            Backend::Postgres => token_cache::Changes::Unmarked,
        };
        changes.ensure().await;
        Ok(Self {
            pool,
            backend,
            changes,
            naming: Default::default(),
            live_for_agents: MAX_LIVE_FOR_AGENTS,
            writer: Default::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `sql` for this backend: `?` placeholders become `$N` on
    /// PostgreSQL. The queries here hold no `?` inside literals.
    pub(crate) fn q(&self, sql: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(placeholders(sql, self.backend))
    }

    /// Write a token. A token for a person is written only while the
    /// store records this gateway's naming ([`StoreError::NamingChanged`]),
    /// and one minted on a person's behalf only while that person holds
    /// fewer than [`MAX_LIVE_FOR_AGENTS`] live ones
    /// ([`StoreError::TooManyForAgents`]).
    pub async fn insert_token(&self, t: &NewTokenRow<'_>) -> Result<String, StoreError> {
        let id = t.hash.id();
        let groups = serde_json::to_string(t.groups).map_err(|e| StoreError::Corrupt {
            table: "tokens",
            reason: e.to_string(),
        })?;
        // Both conditions are part of the one INSERT, so no other
        // gateway's start (naming) or mint (count) can come between the
        // check and the write.
        let naming = self.my_naming().filter(|_| naming::is_for_person(t));
        let sql = self.insert_token_sql(naming.is_some(), t.on_behalf_of.is_some());
        let mut insert = sqlx::query(self.q(&sql))
            .bind(&id)
            .bind(&t.hash.0[..])
            .bind(t.subject)
            .bind(groups)
            .bind(t.created_at)
            .bind(t.expires_at)
            .bind(t.on_behalf_of)
            .bind(t.audience)
            .bind(t.oauth_family);
        if let Some(n) = &naming {
            insert = insert.bind(n);
        }
        if let Some(person) = t.on_behalf_of {
            insert = insert
                .bind(person)
                .bind(t.created_at)
                .bind(t.oauth_family)
                .bind(self.live_for_agents);
        }
        let written = match (t.on_behalf_of, self.backend) {
            // Two mints for one person at once would each count the other
            // out (READ COMMITTED): they take turns.
            (Some(person), Backend::Postgres) => {
                let mut tx = self.pool.begin().await?;
                sqlx::query(self.q("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))"))
                    .bind(person)
                    .execute(&mut *tx)
                    .await?;
                let written = insert.execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                written
            }
            // SQLite has one writer at a time and a statement is whole; no
            // transaction of ours to leave open on a failed commit (see
            // `audit_batch`).
            _ => insert.execute(&self.pool).await?.rows_affected(),
        } > 0;
        if written {
            return Ok(id);
        }
        Err(self.not_written(t, naming.is_some()).await)
    }

    /// The INSERT of `insert_token`, under the naming condition (binds:
    /// the naming) and the bound on live tokens for agents (binds: see
    /// [`LIVE_FOR_AGENTS_BELOW`]), in that order.
    fn insert_token_sql(&self, naming: bool, for_agent: bool) -> String {
        let mut conditions = Vec::new();
        if naming {
            conditions.push(naming::still(self.backend));
        }
        if for_agent {
            conditions.push(LIVE_FOR_AGENTS_BELOW);
        }
        format!(
            "INSERT INTO tokens (id, hash, subject, groups, created_at, expires_at, on_behalf_of, \
             audience, oauth_family) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?{}{}",
            if conditions.is_empty() { "" } else { " WHERE " },
            conditions.join(" AND ")
        )
    }

    /// Which condition kept `t` out: the naming, when it was checked and
    /// no longer holds; else the bound (or the store's failure to tell).
    async fn not_written(&self, t: &NewTokenRow<'_>, naming_checked: bool) -> StoreError {
        let naming_holds = match naming_checked {
            false => true,
            true => match self.naming_holds().await {
                Ok(holds) => holds,
                Err(e) => return e,
            },
        };
        match t.on_behalf_of {
            Some(person) if naming_holds => StoreError::TooManyForAgents {
                person: person.to_owned(),
                max: self.live_for_agents,
            },
            _ => StoreError::NamingChanged,
        }
    }

    /// This handle with at most `max` live tokens per person for agents
    /// (for tests that reach the bound without minting hundreds).
    #[cfg(any(test, feature = "testsuite"))]
    pub fn with_live_for_agents(mut self, max: i64) -> Self {
        self.live_for_agents = max;
        self
    }

    pub async fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(self.q(
            "SELECT id, subject, groups, created_at, expires_at, revoked_at, on_behalf_of, audience \
             FROM tokens WHERE hash = ?",
        ))
        .bind(&hash.0[..])
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    pub async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(self.q(
            "SELECT id, subject, groups, created_at, expires_at, revoked_at, on_behalf_of, audience \
             FROM tokens WHERE id = ?",
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    /// The newest `limit` tokens of `subject` or minted on its behalf
    /// (every token, with `None`), newest first.
    pub async fn tokens_of(
        &self,
        subject: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        const COLUMNS: &str = "SELECT id, subject, groups, created_at, expires_at, revoked_at, on_behalf_of, audience \
             FROM tokens";
        let rows = match subject {
            Some(s) => {
                sqlx::query(self.q(&format!(
                    "{COLUMNS} WHERE subject = ? OR on_behalf_of = ? \
                     ORDER BY created_at DESC, id DESC LIMIT ?"
                )))
                .bind(s)
                .bind(s)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(self.q(&format!(
                    "{COLUMNS} ORDER BY created_at DESC, id DESC LIMIT ?"
                )))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(token_from_row).collect()
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(self.q(
            "SELECT id, subject, groups, created_at, expires_at, revoked_at, on_behalf_of, audience \
             FROM tokens ORDER BY created_at, id",
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Credentials that stopped being valid between `since` and `now`
    /// (Unix seconds, both included), as `token:ID` or `cert:FINGERPRINT`
    /// with the reason: tokens revoked or expired, certificates revoked.
    pub async fn ended_credentials(
        &self,
        since: i64,
        now: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let tokens = sqlx::query(self.q(
            "SELECT id, revoked_at FROM tokens WHERE (revoked_at IS NOT NULL AND revoked_at >= ?) \
             OR (expires_at IS NOT NULL AND expires_at >= ? AND expires_at <= ?)",
        ))
        .bind(since)
        .bind(since)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let certs =
            sqlx::query(self.q("SELECT fingerprint FROM revoked_certs WHERE revoked_at >= ?"))
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
        let sessions = sqlx::query(self.q(
            "SELECT session_id, requested_by, reason FROM session_ends WHERE requested_at >= ?",
        ))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut ended = Vec::with_capacity(tokens.len() + certs.len() + sessions.len());
        for r in &sessions {
            let id: String = r.try_get("session_id")?;
            let by: String = r.try_get("requested_by")?;
            let reason: String = r.try_get("reason")?;
            ended.push((format!("session:{id}"), format!("ended by {by}: {reason}")));
        }
        for r in &tokens {
            let id: String = r.try_get("id")?;
            let revoked: Option<i64> = r.try_get("revoked_at")?;
            let why = if revoked.is_some() {
                "revoked"
            } else {
                "expired"
            };
            ended.push((format!("token:{id}"), format!("the token was {why}")));
        }
        for r in &certs {
            let fp: String = r.try_get("fingerprint")?;
            ended.push((
                format!("cert:{fp}"),
                "the client certificate was revoked".into(),
            ));
        }
        Ok(ended)
    }

    /// Ask whichever gateway runs live session `id` to end it. False when
    /// there is no such session, it has already ended, or its end was
    /// already asked for.
    pub async fn request_session_end(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(self.q(
            "INSERT INTO session_ends (session_id, requested_at, requested_by, reason) \
             SELECT id, ?, ?, ? FROM sessions WHERE id = ? AND ended_at_ms IS NULL \
             ON CONFLICT (session_id) DO NOTHING",
        ))
        .bind(now)
        .bind(by)
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revoke a token by id. Returns false if no such token exists; a token
    /// revoked twice keeps its first revocation time. An access token an
    /// MCP client got through OAuth takes its whole grant with it: the
    /// refresh token and every token issued from it (a review found the
    /// client refreshed a revoked token into a new one that worked).
    pub async fn revoke_token(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let family: Option<Option<String>> =
            sqlx::query_scalar(self.q("SELECT oauth_family FROM tokens WHERE id = ?"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(Some(family)) = family {
            self.revoke_oauth_family(&family, now).await?;
        }
        let done = sqlx::query(
            self.q("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?"),
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        let found = done.rows_affected() > 0;
        self.changes.moved_if(found).await;
        Ok(found)
    }

    /// The token lookup the gateway authenticates through: cached, and as
    /// strict as this store (see [`CachedTokens`]).
    pub fn cached_tokens(&self) -> CachedTokens {
        CachedTokens::new(self.clone())
    }

    pub async fn insert_review(&self, r: &ReviewRow) -> Result<(), StoreError> {
        sqlx::query(self.q("INSERT INTO reviews (id, created_at, expires_at, requester, on_behalf_of, connection, kind, \
             action, action_sha256, classification, state, required, approvers, approvals, decided_by, \
             reason, used_at, preview) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
        .bind(&r.id)
        .bind(r.created_at)
        .bind(r.expires_at)
        .bind(&r.requester)
        .bind(&r.on_behalf_of)
        .bind(&r.connection)
        .bind(&r.kind)
        .bind(&r.action)
        .bind(&r.action_sha256)
        .bind(&r.classification)
        .bind(&r.state)
        .bind(r.required)
        .bind(&r.approvers)
        .bind(&r.approvals)
        .bind(&r.decided_by)
        .bind(&r.reason)
        .bind(r.used_at)
        .bind(&r.preview)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Write a review's decision fields, only if its state is still
    /// `expected` (two approvers racing cannot both win).
    pub async fn update_review(&self, r: &ReviewRow, expected: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(self.q(
            "UPDATE reviews SET state = ?, approvals = ?, decided_by = ?, reason = ?, used_at = ? \
             WHERE id = ? AND state = ?",
        ))
        .bind(&r.state)
        .bind(&r.approvals)
        .bind(&r.decided_by)
        .bind(&r.reason)
        .bind(r.used_at)
        .bind(&r.id)
        .bind(expected)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn review(&self, id: &str) -> Result<Option<ReviewRow>, StoreError> {
        let row = sqlx::query(self.q("SELECT * FROM reviews WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| review_from_row(&r)).transpose()
    }

    /// Reviews, newest first; `state` filters.
    pub async fn reviews(&self, state: Option<&str>) -> Result<Vec<ReviewRow>, StoreError> {
        let rows = match state {
            Some(s) => {
                sqlx::query(
                    self.q("SELECT * FROM reviews WHERE state = ? ORDER BY created_at DESC, id"),
                )
                .bind(s)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(self.q("SELECT * FROM reviews ORDER BY created_at DESC, id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(review_from_row).collect()
    }

    /// The newest pending or approved review of this exact action.
    pub async fn review_for_action(
        &self,
        requester: &str,
        connection: &str,
        action_sha256: &str,
    ) -> Result<Option<ReviewRow>, StoreError> {
        let row = sqlx::query(self.q(
            "SELECT * FROM reviews WHERE requester = ? AND connection = ? AND action_sha256 = ? \
             AND state IN ('pending', 'approved') ORDER BY created_at DESC LIMIT 1",
        ))
        .bind(requester)
        .bind(connection)
        .bind(action_sha256)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| review_from_row(&r)).transpose()
    }

    pub async fn grant_jit(
        &self,
        principal: &str,
        connection: &str,
        until: i64,
        review: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(self.q("INSERT INTO jit_grants (principal, connection, until, review) VALUES (?, ?, ?, ?) \
             ON CONFLICT (principal, connection) DO UPDATE SET until = excluded.until, review = excluded.review"))
        .bind(principal)
        .bind(connection)
        .bind(until)
        .bind(review)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Until when `principal` holds just-in-time access to `connection`.
    pub async fn jit_until(
        &self,
        principal: &str,
        connection: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            self.q("SELECT until FROM jit_grants WHERE principal = ? AND connection = ?"),
        )
        .bind(principal)
        .bind(connection)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// This gateway is alive (peers see it on `/status`).
    /// Seen now, by the database's clock: gateways whose clocks disagree
    /// still agree on who stopped beating (see [`Self::cut_sessions`]).
    pub async fn gateway_heartbeat(
        &self,
        id: &str,
        public_url: &str,
        started_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(self.q(&format!(
            "INSERT INTO gateways (id, public_url, started_at, last_seen) VALUES (?, ?, ?, {}) \
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, public_url = excluded.public_url",
            self.now_sql()
        )))
        .bind(id.to_string())
        .bind(public_url.to_string())
        .bind(started_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The database's clock, in Unix seconds, as SQL.
    fn now_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "CAST(strftime('%s', 'now') AS INTEGER)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)",
        }
    }

    /// Gateways seen since `since` (Unix seconds): (id, public_url, started_at, last_seen).
    pub async fn gateways(
        &self,
        since: i64,
    ) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let rows = sqlx::query(self.q(
            "SELECT id, public_url, started_at, last_seen FROM gateways WHERE last_seen >= ? ORDER BY id",
        ))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("public_url")?,
                    r.try_get("started_at")?,
                    r.try_get("last_seen")?,
                ))
            })
            .collect()
    }

    /// A round trip to the database (`/status`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Revoke a client certificate by its SHA-256 fingerprint (hex).
    pub async fn revoke_cert(
        &self,
        fingerprint: &str,
        subject: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(self.q(
            "INSERT INTO revoked_certs (fingerprint, subject, revoked_at) VALUES (?, ?, ?) \
             ON CONFLICT (fingerprint) DO NOTHING",
        ))
        .bind(fingerprint)
        .bind(subject)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Record a one-time enrolment token (its hash) for agent `agent`.
    pub async fn insert_enrolment(
        &self,
        id: &str,
        hash: &[u8],
        agent: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(self.q(
            "INSERT INTO enrolments (id, hash, agent, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(id)
        .bind(hash)
        .bind(agent)
        .bind(created_at)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Use the enrolment token with `hash`: the agent it was made for
    /// (with the token's id), once, and only before it expires. The
    /// update is the check, so two gateways racing on one token cannot
    /// both win.
    pub async fn use_enrolment(
        &self,
        hash: &[u8],
        now: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let done = sqlx::query(self.q("UPDATE enrolments SET used_at = ? \
             WHERE hash = ? AND used_at IS NULL AND expires_at > ?"))
        .bind(now)
        .bind(hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let row = sqlx::query(self.q("SELECT id, agent FROM enrolments WHERE hash = ?"))
            .bind(hash)
            .fetch_one(&self.pool)
            .await?;
        Ok(Some((row.try_get(0)?, row.try_get(1)?)))
    }

    pub async fn is_cert_revoked(&self, fingerprint: &str) -> Result<bool, StoreError> {
        let n: i64 =
            sqlx::query_scalar(self.q("SELECT COUNT(*) FROM revoked_certs WHERE fingerprint = ?"))
                .bind(fingerprint)
                .fetch_one(&self.pool)
                .await?;
        Ok(n > 0)
    }

    /// Pins of one MCP connection's tools.
    pub async fn tool_pins(&self, connection: &str) -> Result<Vec<ToolPin>, StoreError> {
        let rows = sqlx::query(self.q(
            "SELECT connection, tool, hash, pending_hash, first_seen, approved_at \
             FROM mcp_tool_pins WHERE connection = ? ORDER BY tool",
        ))
        .bind(connection)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ToolPin {
                    connection: r.try_get("connection")?,
                    tool: r.try_get("tool")?,
                    hash: r.try_get("hash")?,
                    pending_hash: r.try_get("pending_hash")?,
                    first_seen: r.try_get("first_seen")?,
                    approved_at: r.try_get("approved_at")?,
                })
            })
            .collect()
    }

    /// Pin a tool seen for the first time (trust on first use). Returns
    /// false when a pin existed already (it is left alone).
    pub async fn pin_tool(
        &self,
        connection: &str,
        tool: &str,
        hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(self.q(
            "INSERT INTO mcp_tool_pins (connection, tool, hash, first_seen, approved_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (connection, tool) DO NOTHING",
        ))
        .bind(connection)
        .bind(tool)
        .bind(hash)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Note a changed definition, held until approved.
    pub async fn flag_tool(
        &self,
        connection: &str,
        tool: &str,
        pending_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            self.q("UPDATE mcp_tool_pins SET pending_hash = ? WHERE connection = ? AND tool = ?"),
        )
        .bind(pending_hash)
        .bind(connection)
        .bind(tool)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Approve a tool's pending definition. Returns the approved hash, or
    /// None when nothing was pending.
    pub async fn approve_tool(
        &self,
        connection: &str,
        tool: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(self.q(
            "UPDATE mcp_tool_pins SET hash = pending_hash, pending_hash = NULL, approved_at = ? \
             WHERE connection = ? AND tool = ? AND pending_hash IS NOT NULL RETURNING hash",
        ))
        .bind(now)
        .bind(connection)
        .bind(tool)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("hash")).transpose()?)
    }

    pub async fn close(&self) {
        // The kept writer goes back first: a pool waits for every
        // connection it lent before it closes.
        drop(self.writer.lock().await.take());
        self.pool.close().await;
    }
}

fn token_from_row(r: &sqlx::any::AnyRow) -> Result<TokenRecord, StoreError> {
    let groups: String = r.try_get("groups")?;
    let groups = serde_json::from_str(&groups).map_err(|e| StoreError::Corrupt {
        table: "tokens",
        reason: format!("groups: {e}"),
    })?;
    Ok(TokenRecord {
        id: r.try_get("id")?,
        subject: r.try_get("subject")?,
        groups,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        on_behalf_of: r.try_get("on_behalf_of")?,
        audience: r.try_get("audience")?,
    })
}

/// Which sessions a page lists.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery<'a> {
    /// Only sessions of this principal (`user:alice`), and of the agents
    /// acting for the person of this name (`agent:NAME@alice`, where NAME
    /// has no `@`: `agent:x@bob@alice` is bob@alice's, not alice's).
    pub visible_to: Option<(&'a str, &'a str)>,
    /// Only the sessions of the person of this name and their agents
    /// (`user:NAME`, `agent:X@NAME`): the same relation as `visible_to`.
    pub person: Option<&'a str>,
    /// Started at or after this (Unix ms).
    pub since_ms: Option<i64>,
    pub principal: Option<&'a str>,
    pub connection: Option<&'a str>,
    pub protocol: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub live_only: bool,
    /// Started before this (Unix ms), or at that time with a smaller id:
    /// the next page, where the last one ended.
    pub before: Option<(i64, &'a str)>,
    pub limit: i64,
}

/// `s` for a LIKE pattern with `\` as the escape character.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// A review as stored; `approvers` and `approvals` are JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRow {
    pub id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub requester: String,
    pub on_behalf_of: Option<String>,
    pub connection: String,
    pub kind: String,
    pub action: String,
    pub action_sha256: String,
    pub classification: String,
    pub state: String,
    pub required: i64,
    pub approvers: String,
    pub approvals: String,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub used_at: Option<i64>,
    /// What a held SQL write would change, as JSON.
    pub preview: Option<String>,
}

fn review_from_row(r: &sqlx::any::AnyRow) -> Result<ReviewRow, StoreError> {
    Ok(ReviewRow {
        id: r.try_get("id")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        requester: r.try_get("requester")?,
        on_behalf_of: r.try_get("on_behalf_of")?,
        connection: r.try_get("connection")?,
        kind: r.try_get("kind")?,
        action: r.try_get("action")?,
        action_sha256: r.try_get("action_sha256")?,
        classification: r.try_get("classification")?,
        state: r.try_get("state")?,
        required: r.try_get("required")?,
        approvers: r.try_get("approvers")?,
        approvals: r.try_get("approvals")?,
        decided_by: r.try_get("decided_by")?,
        reason: r.try_get("reason")?,
        used_at: r.try_get("used_at")?,
        preview: r.try_get("preview")?,
    })
}

/// Numbered placeholders for PostgreSQL.
fn placeholders(sql: &str, backend: Backend) -> String {
    if backend == Backend::Sqlite {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// A store URL for messages: the password never appears.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The approved definition of an upstream MCP tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPin {
    pub connection: String,
    pub tool: String,
    pub hash: String,
    /// A changed definition seen since, not yet approved.
    pub pending_hash: Option<String>,
    pub first_seen: i64,
    pub approved_at: Option<i64>,
}

/// One audit log row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    pub time_ms: i64,
    pub prev_hash: String,
    pub hash: String,
    /// Canonical JSON of the event.
    pub event: String,
}

/// One row of the session index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub principal: String,
    pub connection: String,
    pub protocol: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub outcome: Option<String>,
    pub recording_digest: Option<String>,
    /// The gateway that ran it (absent for sessions from before it was kept).
    pub gateway: Option<String>,
}

impl Store {
    /// Write audit rows and session-index rows in one transaction, with one
    /// statement each (group commit: many sessions, few round trips). Fails
    /// as a whole if a sequence number is taken.
    pub async fn audit_batch(
        &self,
        rows: &[AuditRow],
        sessions: &[SessionRow],
    ) -> Result<(), StoreError> {
        // On SQLite the batches go through one connection kept for them
        // (the audit writer is one task, so the lock is never contended).
        // Taken from the pool each time, a connection found its page cache
        // stale after another's commit and read back the pages it was about
        // to append to: ~20 reads and a third of the store's CPU per
        // session on new connections (`strace`, 2026-12-04). A SQLite
        // connection is a file handle that cannot go stale; a network one
        // to PostgreSQL can, so it is taken from the pool, checked, each
        // time.
        let mut kept = match self.backend {
            Backend::Sqlite => Some(self.writer.lock().await),
            Backend::Postgres => None,
        };
        let conn = match kept.as_mut().and_then(|k| k.take()) {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        let mut batch = MidBatch(Some(conn));
        let result = match &mut batch.0 {
            Some(conn) => self.audit_batch_on(conn, rows, sessions).await,
            None => Ok(()),
        };
        let Some(mut conn) = batch.0.take() else {
            return result;
        };
        // A taken sequence number (another gateway appended first) fails
        // an INSERT, not the COMMIT: the rollback leaves the connection
        // clean, and reconnecting (TLS to a shared store) on every race
        // would slow the gateways that race most.
        if result.as_ref().is_err_and(|e| !e.is_conflict()) {
            // A failed COMMIT (SQLITE_FULL) rolls the transaction back in
            // SQLite while sqlx still counts it as open: returned to the
            // pool, that connection's next "BEGIN" became a SAVEPOINT inside
            // a transaction that never ended, holding the write lock for
            // good ("database is locked" after the disk had room again) and
            // reporting commits that were never durable. A connection whose
            // transaction failed is never reused.
            conn.close_on_drop();
        } else if let Some(k) = kept.as_mut() {
            **k = Some(conn);
        }
        result
    }

    async fn audit_batch_on(
        &self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
        rows: &[AuditRow],
        sessions: &[SessionRow],
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            return self.audit_batch_sqlite(conn, rows, sessions).await;
        }
        // sqlx refuses `begin_with` on a connection it believes is already
        // in a transaction rather than nesting.
        let mut tx = sqlx::Connection::begin_with(&mut **conn, "BEGIN").await?;
        for chunk in rows.chunks(AUDIT_ROWS_PER_INSERT) {
            let q = sqlx::query(self.q(&audit_rows_insert(chunk.len())));
            bind_audit_rows(q, chunk).execute(&mut *tx).await?;
        }
        for chunk in sessions.chunks(SESSIONS_PER_INSERT) {
            let q = sqlx::query(self.q(&sessions_upsert(chunk.len())));
            bind_sessions(q, chunk).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The batch on SQLite: its transaction and every insert as one
    /// query of several statements, one trip to sqlx's worker thread for
    /// the connection. A statement at a time, each trip was a wake-up of
    /// that thread and one back (four or more per batch), which was most
    /// of the store's CPU per session on new connections (`perf`,
    /// 2026-12-05). IMMEDIATE takes SQLite's write lock up front (no lock
    /// upgrade to fail half-way).
    async fn audit_batch_sqlite(
        &self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
        rows: &[AuditRow],
        sessions: &[SessionRow],
    ) -> Result<(), StoreError> {
        let mut sql = String::from("BEGIN IMMEDIATE;");
        for chunk in rows.chunks(AUDIT_ROWS_PER_INSERT) {
            sql += &audit_rows_insert(chunk.len());
            sql.push(';');
        }
        for chunk in sessions.chunks(SESSIONS_PER_INSERT) {
            sql += &sessions_upsert(chunk.len());
            sql.push(';');
        }
        sql += "COMMIT";
        // sqlx binds a query's arguments to its statements in order.
        let q = bind_sessions(bind_audit_rows(sqlx::query(self.q(&sql)), rows), sessions);
        let Err(failed) = q.execute(&mut **conn).await else {
            return Ok(());
        };
        // A statement that failed leaves the transaction open (a failed
        // COMMIT has already rolled it back, and this one then fails
        // harmlessly): closed here, so a connection kept after a taken
        // sequence number starts its next batch clean. Should that fail
        // too, the batch fails as something other than a conflict, and
        // the connection is closed rather than kept holding the lock.
        let failed = StoreError::from(failed);
        match sqlx::query("ROLLBACK").execute(&mut **conn).await {
            Err(e) if failed.is_conflict() => Err(e.into()),
            _ => Err(failed),
        }
    }

    /// Append an audit row; fails if `seq` is taken (another writer got
    /// there first), which keeps the chain linear.
    pub async fn audit_insert(&self, r: &AuditRow) -> Result<(), StoreError> {
        sqlx::query(self.q(
            "INSERT INTO audit_log (seq, time_ms, prev_hash, hash, event) VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(r.seq)
        .bind(r.time_ms)
        .bind(&r.prev_hash)
        .bind(&r.hash)
        .bind(&r.event)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last (seq, hash) of the audit chain.
    pub async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query(self.q("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?)))
            .transpose()
    }

    /// Audit rows with `seq > after`, oldest first, at most `limit`.
    pub async fn audit_rows(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(self.q("SELECT seq, time_ms, prev_hash, hash, event FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?"))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        audit_rows_of(&rows)
    }

    /// The entries before sequence number `before`, newest first (the
    /// console's pages).
    pub async fn audit_rows_before(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(self.q("SELECT seq, time_ms, prev_hash, hash, event FROM audit_log WHERE seq < ? ORDER BY seq DESC LIMIT ?"))
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        audit_rows_of(&rows)
    }
}

fn audit_rows_of(rows: &[sqlx::any::AnyRow]) -> Result<Vec<AuditRow>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok(AuditRow {
                seq: r.try_get("seq")?,
                time_ms: r.try_get("time_ms")?,
                prev_hash: r.try_get("prev_hash")?,
                hash: r.try_get("hash")?,
                event: r.try_get("event")?,
            })
        })
        .collect()
}

impl Store {
    pub async fn session_start(&self, s: &SessionRow) -> Result<(), StoreError> {
        sqlx::query(self.q("INSERT INTO sessions (id, principal, connection, protocol, started_at_ms) VALUES (?, ?, ?, ?, ?)"))
        .bind(&s.id)
        .bind(&s.principal)
        .bind(&s.connection)
        .bind(&s.protocol)
        .bind(s.started_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn session_end(
        &self,
        id: &str,
        ended_at_ms: i64,
        outcome: &str,
        digest: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(self.q(
            "UPDATE sessions SET ended_at_ms = ?, outcome = ?, recording_digest = ? WHERE id = ?",
        ))
        .bind(ended_at_ms)
        .bind(outcome)
        .bind(digest)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn sessions(&self) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(self.q(
            "SELECT id, principal, connection, protocol, started_at_ms, ended_at_ms, outcome, recording_digest, gateway \
             FROM sessions ORDER BY started_at_ms, id",
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    pub async fn session_by_id(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(self.q(
            "SELECT id, principal, connection, protocol, started_at_ms, ended_at_ms, outcome, recording_digest, gateway \
             FROM sessions WHERE id = ?",
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| session_from_row(&r)).transpose()
    }

    /// A page of sessions, newest first, started before `q.before_ms`
    /// and matching every filter given.
    pub async fn sessions_page(&self, q: &SessionQuery<'_>) -> Result<Vec<SessionRow>, StoreError> {
        let mut sql = String::from(
            "SELECT id, principal, connection, protocol, started_at_ms, ended_at_ms, outcome, recording_digest, gateway \
             FROM sessions WHERE started_at_ms <= ? AND (started_at_ms < ? OR id < ?) \
             AND started_at_ms >= ?",
        );
        let mut binds: Vec<String> = Vec::new();
        // A principal and the agents acting for the person of `name`.
        let mut person_and_agents = |subject: String, name: &str| {
            sql.push_str(
                " AND (principal = ? OR (principal LIKE ? ESCAPE '\\' \
                 AND principal NOT LIKE ? ESCAPE '\\'))",
            );
            binds.push(subject);
            binds.push(format!("agent:%@{}", like_escape(name)));
            binds.push(format!("agent:%@%@{}", like_escape(name)));
        };
        if let Some((subject, person)) = q.visible_to {
            person_and_agents(subject.to_owned(), person);
        }
        if let Some(name) = q.person {
            person_and_agents(format!("user:{name}"), name);
        }
        for (column, value) in [
            ("principal", q.principal),
            ("connection", q.connection),
            ("protocol", q.protocol),
            ("outcome", q.outcome),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                binds.push(v.to_owned());
            }
        }
        if q.live_only {
            sql.push_str(" AND ended_at_ms IS NULL");
        }
        // A person's view matches few rows scattered through the history:
        // walking the time index backwards would visit every row in index
        // order (measured 200 ms at 100,000 sessions); one pass and a
        // top-N sort is five times faster. `+ 0` keeps the planner off the
        // index for this order only (bench/console.py).
        if q.visible_to.is_some() {
            sql.push_str(" ORDER BY started_at_ms + 0 DESC, id DESC LIMIT ?");
        } else {
            sql.push_str(" ORDER BY started_at_ms DESC, id DESC LIMIT ?");
        }
        let (before_ms, before_id) = q.before.unwrap_or((i64::MAX, ""));
        let mut query = sqlx::query(self.q(&sql))
            .bind(before_ms)
            .bind(before_ms)
            .bind(before_id.to_owned())
            .bind(q.since_ms.unwrap_or(i64::MIN));
        for b in binds {
            query = query.bind(b);
        }
        let rows = query
            .bind(q.limit.clamp(1, 500))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Sessions with no end left by a process that died: those of
    /// `previous` (this gateway's id in its last run, known dead because
    /// this process holds its lock), with `unowned` those from before
    /// gateways were recorded, and those of any other gateway whose last
    /// heartbeat is more than `stale_secs` old by the database's clock.
    /// Never `me`'s own.
    pub async fn cut_sessions(
        &self,
        previous: Option<&str>,
        me: &str,
        stale_secs: i64,
        unowned: bool,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(self.q(&format!(
            "SELECT id, principal, connection, protocol, started_at_ms, ended_at_ms, outcome, recording_digest, gateway \
             FROM sessions WHERE ended_at_ms IS NULL AND (gateway IS NULL OR gateway <> ?) AND (gateway = ? \
             OR (gateway IS NULL AND ? = 1) \
             OR gateway IN (SELECT id FROM gateways WHERE last_seen < {} - ?)) \
             ORDER BY started_at_ms, id LIMIT 1000",
            self.now_sql()
        )))
        .bind(me)
        .bind(previous.unwrap_or(""))
        .bind(i64::from(unowned))
        .bind(stale_secs)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }
}

fn session_from_row(r: &sqlx::any::AnyRow) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        id: r.try_get("id")?,
        principal: r.try_get("principal")?,
        connection: r.try_get("connection")?,
        protocol: r.try_get("protocol")?,
        started_at_ms: r.try_get("started_at_ms")?,
        ended_at_ms: r.try_get("ended_at_ms")?,
        outcome: r.try_get("outcome")?,
        recording_digest: r.try_get("recording_digest")?,
        gateway: r.try_get("gateway")?,
    })
}

/// What a caller is told when the store fails under `what` (the cause is
/// logged, never shown).
pub(crate) fn unavailable(
    what: &'static str,
) -> impl Fn(StoreError) -> portcullis_identity::AuthError {
    move |e| {
        tracing::error!(error = %e, "{what} failed");
        portcullis_identity::AuthError::Unavailable
    }
}

impl portcullis_identity::TokenStore for Store {
    fn cert_revoked<'a>(&'a self, fingerprint: &'a str) -> portcullis_identity::RevokedFuture<'a> {
        Box::pin(async move {
            self.is_cert_revoked(fingerprint)
                .await
                .map_err(unavailable("revocation lookup"))
        })
    }

    fn mint<'a>(
        &'a self,
        m: &'a portcullis_identity::Mint<'a>,
    ) -> portcullis_identity::MintFuture<'a> {
        Box::pin(async move {
            self.insert_token(&NewTokenRow {
                hash: m.hash,
                subject: m.subject,
                groups: m.groups,
                created_at: m.created_at,
                expires_at: Some(m.expires_at),
                on_behalf_of: Some(m.on_behalf_of),
                audience: None,
                oauth_family: None,
            })
            .await
            .map_err(|e| match e {
                StoreError::TooManyForAgents { max, .. } => {
                    portcullis_identity::DelegateError::TooMany { max }
                }
                e => unavailable("storing a delegated token")(e).into(),
            })
        })
    }

    fn token_by_hash<'a>(&'a self, hash: &'a TokenHash) -> portcullis_identity::LookupFuture<'a> {
        Box::pin(async move {
            self.token_by_hash(hash)
                .await
                .map_err(unavailable("token lookup"))
        })
    }
}

/// The repository suite, for this crate's tests and the shared-store
/// test against PostgreSQL; not built into the binary.
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

/// A connection in the middle of an audit batch. Dropped before the
/// batch's answer (the future awaiting it cancelled), it is closed rather
/// than returned to the pool: on SQLite the batch is one query whose
/// transaction sqlx does not know of, and sqlx's worker runs it to its
/// first answer whether or not anyone waits, so it could be left open,
/// holding the write lock, on a connection the pool hands out again.
/// Closing it rolls that back.
struct MidBatch(Option<sqlx::pool::PoolConnection<sqlx::Any>>);

impl Drop for MidBatch {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            conn.close_on_drop();
        }
    }
}

/// Audit rows in one INSERT (5 values each, under SQLite's bound on a
/// statement's parameters), and session rows (9 each).
const AUDIT_ROWS_PER_INSERT: usize = 150;
const SESSIONS_PER_INSERT: usize = 100;

/// An INSERT of `n` audit rows, `?` placeholders.
fn audit_rows_insert(n: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?)"; n].join(", ");
    format!("INSERT INTO audit_log (seq, time_ms, prev_hash, hash, event) VALUES {values}")
}

/// An INSERT of `n` session rows; an end row updates the start row
/// written earlier.
fn sessions_upsert(n: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; n].join(", ");
    format!(
        "INSERT INTO sessions (id, principal, connection, protocol, started_at_ms, ended_at_ms, outcome, recording_digest, gateway) \
         VALUES {values} ON CONFLICT(id) DO UPDATE SET ended_at_ms = excluded.ended_at_ms, \
         outcome = excluded.outcome, recording_digest = excluded.recording_digest"
    )
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// [`audit_rows_insert`]'s values, in order.
fn bind_audit_rows<'q>(mut q: AnyQuery<'q>, rows: &[AuditRow]) -> AnyQuery<'q> {
    for r in rows {
        q = q
            .bind(r.seq)
            .bind(r.time_ms)
            .bind(r.prev_hash.clone())
            .bind(r.hash.clone())
            .bind(r.event.clone());
    }
    q
}

/// [`sessions_upsert`]'s values, in order.
fn bind_sessions<'q>(mut q: AnyQuery<'q>, sessions: &[SessionRow]) -> AnyQuery<'q> {
    for s in sessions {
        q = q
            .bind(s.id.clone())
            .bind(s.principal.clone())
            .bind(s.connection.clone())
            .bind(s.protocol.clone())
            .bind(s.started_at_ms)
            .bind(s.ended_at_ms)
            .bind(s.outcome.clone())
            .bind(s.recording_digest.clone())
            .bind(s.gateway.clone());
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_identity::token;

    #[tokio::test]
    async fn the_suite_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("p.db")).await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        testsuite::run_all(&store).await;
    }

    /// Each SQLite connection's page cache is bounded (memory after a
    /// load: docs/performance.md).
    #[tokio::test]
    async fn sqlite_connections_keep_a_small_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("p.db")).await.unwrap();
        let (size,): (i64,) = sqlx::query_as("PRAGMA cache_size")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(size, -512);
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let t = token::generate().unwrap();
        {
            let s = Store::open_sqlite(&path).await.unwrap();
            s.insert_token(&NewTokenRow {
                hash: t.hash,
                subject: "agent:x",
                groups: &[],
                created_at: 1,
                expires_at: None,
                on_behalf_of: None,
                audience: None,
                oauth_family: None,
            })
            .await
            .unwrap();
            s.close().await;
        }
        let s = Store::open_sqlite(&path).await.unwrap();
        assert!(s.token_by_hash(&t.hash).await.unwrap().is_some());
    }

    #[test]
    fn placeholders_and_redaction() {
        assert_eq!(
            placeholders("a = ? AND b = ?", Backend::Postgres),
            "a = $1 AND b = $2"
        );
        assert_eq!(placeholders("a = ?", Backend::Sqlite), "a = ?");
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
