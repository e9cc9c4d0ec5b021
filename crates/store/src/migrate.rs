//! Schema migrations: an ordered list of SQL steps and a version table.
//! Hand-written rather than `sqlx::migrate!` because the embedded migrator
//! needs sqlx's proc-macro crate (minutes of build time on CI's 2 cores)
//! for what is a dozen lines here.

use sqlx::AnyPool;
use sqlx::AssertSqlSafe;

use crate::Backend;

use crate::StoreError;

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        groups TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER
    )",
    ),
    (
        2,
        "CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        event TEXT NOT NULL
    )",
    ),
    (
        3,
        "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        connection TEXT NOT NULL,
        protocol TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        outcome TEXT,
        recording_digest TEXT
    )",
    ),
    // A token a person minted for an agent names that person.
    (4, "ALTER TABLE tokens ADD COLUMN on_behalf_of TEXT"),
    // The approved definition (hash) of each upstream MCP tool, and a
    // changed one waiting for approval.
    (
        5,
        "CREATE TABLE mcp_tool_pins (
        connection TEXT NOT NULL,
        tool TEXT NOT NULL,
        hash TEXT NOT NULL,
        pending_hash TEXT,
        first_seen INTEGER NOT NULL,
        approved_at INTEGER,
        PRIMARY KEY (connection, tool)
    )",
    ),
    // Client certificates (agents' and callers') revoked before expiry.
    (
        6,
        "CREATE TABLE revoked_certs (
        fingerprint TEXT PRIMARY KEY,
        subject TEXT,
        revoked_at INTEGER NOT NULL
    )",
    ),
    // Reviews of held actions, and the just-in-time grants they yield.
    (
        7,
        "CREATE TABLE reviews (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        requester TEXT NOT NULL,
        on_behalf_of TEXT,
        connection TEXT NOT NULL,
        kind TEXT NOT NULL,
        action TEXT NOT NULL,
        action_sha256 TEXT NOT NULL,
        classification TEXT NOT NULL,
        state TEXT NOT NULL,
        required INTEGER NOT NULL,
        approvers TEXT NOT NULL,
        approvals TEXT NOT NULL,
        decided_by TEXT,
        reason TEXT,
        used_at INTEGER
    );
    CREATE INDEX reviews_lookup ON reviews (requester, connection, action_sha256);
    CREATE TABLE jit_grants (
        principal TEXT NOT NULL,
        connection TEXT NOT NULL,
        until INTEGER NOT NULL,
        review TEXT NOT NULL,
        PRIMARY KEY (principal, connection)
    )",
    ),
    // Gateways sharing this store announce themselves (peers on /status).
    (
        8,
        "CREATE TABLE gateways (
        id TEXT PRIMARY KEY,
        public_url TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    )",
    ),
    // One-time tokens an agent exchanges for its certificate.
    (
        9,
        "CREATE TABLE enrolments (
        id TEXT PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        agent TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
    )",
    ),
    // The gateway that ran each session, so that a gateway that died
    // with sessions open has them closed (by itself at restart, or by a
    // peer once its heartbeat is stale).
    (10, "ALTER TABLE sessions ADD COLUMN gateway TEXT"),
    // The gateway as an OAuth 2.1 authorization server for MCP clients:
    // registered clients; one-time and rotating secrets (pending sign-ins,
    // consents, authorization codes, refresh tokens) by hash, each in a
    // family that is revoked as one; access tokens bound to a resource.
    (
        11,
        "ALTER TABLE tokens ADD COLUMN audience TEXT;
    ALTER TABLE tokens ADD COLUMN oauth_family TEXT;
    CREATE INDEX tokens_oauth_family ON tokens (oauth_family);
    CREATE TABLE oauth_clients (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        redirect_uris TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE oauth_grants (
        hash BLOB PRIMARY KEY,
        kind TEXT NOT NULL,
        client_id TEXT NOT NULL,
        family TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        spent_at INTEGER,
        revoked_at INTEGER
    );
    CREATE INDEX oauth_grants_family ON oauth_grants (family);
    CREATE INDEX oauth_grants_client ON oauth_grants (client_id)",
    ),
    // The console lists sessions newest first, a page at a time.
    (
        12,
        "CREATE INDEX sessions_started ON sessions (started_at_ms, id);
    CREATE INDEX sessions_principal ON sessions (principal, started_at_ms, id)",
    ),
    // An admin's request to end a live session, seen by whichever gateway
    // runs it (the store is the meeting point).
    (
        13,
        "CREATE TABLE session_ends (
        session_id TEXT PRIMARY KEY,
        requested_at INTEGER NOT NULL,
        requested_by TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX session_ends_requested ON session_ends (requested_at)",
    ),
    // A held SQL write's preview (JSON): what it would change.
    (14, "ALTER TABLE reviews ADD COLUMN preview TEXT"),
    // What each principal took under each grant's budget, by the minute:
    // rolling windows are sums of minutes, kept here so they hold across
    // gateways and restarts.
    (
        15,
        "CREATE TABLE budget_usage (
        principal TEXT NOT NULL,
        grant_name TEXT NOT NULL,
        counter TEXT NOT NULL,
        minute INTEGER NOT NULL,
        used INTEGER NOT NULL,
        PRIMARY KEY (principal, grant_name, counter, minute)
    );
    CREATE INDEX budget_usage_minute ON budget_usage (minute)",
    ),
    // How the identity providers named people when the gateway last
    // started (`Store::record_naming`): one row.
    (
        16,
        "CREATE TABLE identity_naming (
        id INTEGER PRIMARY KEY,
        naming TEXT NOT NULL,
        changed_at INTEGER NOT NULL
    )",
    ),
    // A token minted on a person's behalf is written only while the
    // person holds fewer than the bound of live ones (`insert_token`
    // counts them); listing a person's tokens reads the same column.
    (
        17,
        "CREATE INDEX tokens_on_behalf_of ON tokens (on_behalf_of)",
    ),
    // Keys every gateway on the store shares (`Store::shared_key`): what
    // one gateway seals, another opens.
    (
        18,
        "CREATE TABLE gateway_keys (
        name TEXT PRIMARY KEY,
        key BLOB NOT NULL,
        created_at INTEGER NOT NULL
    )",
    ),
];

/// The DDL of `sql` for `backend`: the steps are written for SQLite;
/// PostgreSQL wants 64-bit integers and BYTEA.
fn ddl(sql: &str, backend: Backend) -> String {
    match backend {
        Backend::Sqlite => sql.to_string(),
        Backend::Postgres => sql.replace("INTEGER", "BIGINT").replace("BLOB", "BYTEA"),
    }
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Arbitrary, fixed: the advisory lock that serialises gateways migrating
/// one shared PostgreSQL database at the same time.
const MIGRATION_LOCK: i64 = 0x706f_7274_6375;

pub(crate) async fn run(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    if backend == Backend::Postgres {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT pg_advisory_lock({MIGRATION_LOCK})"
        )))
        .execute(&mut *conn)
        .await?;
    }
    let result = migrate(&mut conn, backend).await;
    if backend == Backend::Postgres {
        let _ = sqlx::query(AssertSqlSafe(format!(
            "SELECT pg_advisory_unlock({MIGRATION_LOCK})"
        )))
        .execute(&mut *conn)
        .await;
    }
    result
}

async fn migrate(conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<(), StoreError> {
    sqlx::query(AssertSqlSafe(ddl(
        "CREATE TABLE IF NOT EXISTS portcullis_schema (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
        backend,
    )))
    .execute(&mut *conn)
    .await?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM portcullis_schema")
            .fetch_one(&mut *conn)
            .await?;
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    let insert = match backend {
        Backend::Sqlite => "INSERT INTO portcullis_schema (version, applied_at) VALUES (?, ?)",
        Backend::Postgres => "INSERT INTO portcullis_schema (version, applied_at) VALUES ($1, $2)",
    };
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let step = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            // raw_sql: a step may hold several statements.
            sqlx::raw_sql(AssertSqlSafe(ddl(sql, backend)))
                .execute(&mut *tx)
                .await?;
            sqlx::query(insert)
                .bind(*version)
                .bind(now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        };
        step.await.map_err(|source| StoreError::Migrate {
            version: *version,
            source,
        })?;
        tracing::info!(version, "store schema migrated");
    }
    Ok(())
}
