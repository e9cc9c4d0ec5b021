//! What principals used of their grants' budgets: sums of minutes per
//! counter (`rows`, `requests:GET`, `tables:public.orders`), read by the
//! rolling windows. A take reads and adds in one serialized step, so
//! gateways sharing the store never give out the same allowance twice.

use sqlx::Row;

use crate::{Backend, Store, StoreError};

/// A window a take stays within: what was used from minute `since` on,
/// plus what is taken, may not pass `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageWindow {
    pub since: i64,
    pub limit: i64,
}

/// What a take got: how much, and for each window what was used before
/// it and the first minute of that use (when the window frees up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub granted: i64,
    pub used: Vec<(i64, Option<i64>)>,
}

/// A distinct-names take refused: window `window` had seen `seen` names
/// from minute `first` on, and the `new` ones would pass its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooMany {
    pub window: usize,
    pub seen: i64,
    pub first: Option<i64>,
    /// How many of the names were new to it.
    pub new: i64,
}

type Conn = sqlx::pool::PoolConnection<sqlx::Any>;

impl Store {
    /// Add `n` to what `principal` used of `counter` under `grant` in
    /// `minute` (Unix minutes). A negative `n` gives back.
    pub async fn add_usage(
        &self,
        principal: &str,
        grant: &str,
        counter: &str,
        minute: i64,
        n: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        self.add_usage_on(&mut conn, principal, grant, counter, minute, n)
            .await
    }

    async fn add_usage_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        principal: &str,
        grant: &str,
        counter: &str,
        minute: i64,
        n: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(self.q(
            "INSERT INTO budget_usage (principal, grant_name, counter, minute, used) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (principal, grant_name, counter, minute) \
             DO UPDATE SET used = budget_usage.used + excluded.used",
        ))
        .bind(principal)
        .bind(grant)
        .bind(counter)
        .bind(minute)
        .bind(n)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// What `principal` used of `counter` under `grant` from minute
    /// `since` on, and the first minute with any use (when the window
    /// starts to free up).
    pub async fn usage_since(
        &self,
        principal: &str,
        grant: &str,
        counter: &str,
        since: i64,
    ) -> Result<(i64, Option<i64>), StoreError> {
        let mut conn = self.pool.acquire().await?;
        self.usage_since_on(&mut conn, principal, grant, counter, since)
            .await
    }

    async fn usage_since_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        principal: &str,
        grant: &str,
        counter: &str,
        since: i64,
    ) -> Result<(i64, Option<i64>), StoreError> {
        let row = sqlx::query(self.q(
            "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) AS used, MIN(minute) AS first \
             FROM budget_usage WHERE principal = ? AND grant_name = ? AND counter = ? AND minute >= ?",
        ))
        .bind(principal)
        .bind(grant)
        .bind(counter)
        .bind(since)
        .fetch_one(conn)
        .await?;
        Ok((row.try_get("used")?, row.try_get("first")?))
    }

    /// The distinct counters starting with `prefix` that `principal` used
    /// under `grant` from minute `since` on (the tables a budget of
    /// distinct tables has seen), and the first minute of them.
    pub async fn counters_since(
        &self,
        principal: &str,
        grant: &str,
        prefix: &str,
        since: i64,
    ) -> Result<(Vec<String>, Option<i64>), StoreError> {
        let mut conn = self.pool.acquire().await?;
        self.counters_since_on(&mut conn, principal, grant, prefix, since)
            .await
    }

    async fn counters_since_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        principal: &str,
        grant: &str,
        prefix: &str,
        since: i64,
    ) -> Result<(Vec<String>, Option<i64>), StoreError> {
        // The counters from `prefix` up to (not including) `prefix` with its
        // last character one higher: the same range on either backend,
        // with no pattern syntax to escape.
        let mut upper: Vec<char> = prefix.chars().collect();
        if let Some(last) = upper.last_mut() {
            *last = char::from_u32(*last as u32 + 1).unwrap_or(char::MAX);
        }
        let upper: String = upper.into_iter().collect();
        let rows = sqlx::query(self.q(
            "SELECT counter, MIN(minute) AS first FROM budget_usage \
             WHERE principal = ? AND grant_name = ? AND counter >= ? AND counter < ? AND minute >= ? \
             GROUP BY counter ORDER BY counter",
        ))
        .bind(principal)
        .bind(grant)
        .bind(prefix)
        .bind(upper)
        .bind(since)
        .fetch_all(conn)
        .await?;
        let mut first: Option<i64> = None;
        let mut names = Vec::with_capacity(rows.len());
        for r in rows {
            let c: String = r.try_get("counter")?;
            let f: i64 = r.try_get("first")?;
            first = Some(first.map_or(f, |x| x.min(f)));
            names.push(c[prefix.len()..].to_string());
        }
        Ok((names, first))
    }

    /// Take up to `want` of `counter` in `minute`, as much as every one
    /// of `windows` has left (0 when one has none), in one step against
    /// every other take of the same counter, on this gateway or another
    /// sharing the store.
    pub async fn take_usage(
        &self,
        principal: &str,
        grant: &str,
        counter: &str,
        minute: i64,
        windows: &[UsageWindow],
        want: i64,
    ) -> Result<Taken, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let result = self
            .take_usage_on(&mut conn, principal, grant, counter, minute, windows, want)
            .await;
        close_if_failed(&mut conn, &result);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn take_usage_on(
        &self,
        conn: &mut Conn,
        principal: &str,
        grant: &str,
        counter: &str,
        minute: i64,
        windows: &[UsageWindow],
        want: i64,
    ) -> Result<Taken, StoreError> {
        let mut tx = self.begin_turn(conn, principal, grant, counter).await?;
        let mut granted = want.max(0);
        let mut used = Vec::with_capacity(windows.len());
        for w in windows {
            let (u, first) = self
                .usage_since_on(&mut tx, principal, grant, counter, w.since)
                .await?;
            granted = granted.min((w.limit - u).max(0));
            used.push((u, first));
        }
        if granted > 0 {
            self.add_usage_on(&mut tx, principal, grant, counter, minute, granted)
                .await?;
        }
        tx.commit().await?;
        Ok(Taken { granted, used })
    }

    /// Record `names` (counters `prefix` + name) used in `minute` unless
    /// that makes one of `windows` see more distinct names than its
    /// limit; in one step, as [`Self::take_usage`].
    #[allow(clippy::too_many_arguments)]
    pub async fn take_distinct(
        &self,
        principal: &str,
        grant: &str,
        prefix: &str,
        names: &[String],
        minute: i64,
        windows: &[UsageWindow],
    ) -> Result<Result<(), TooMany>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let result = self
            .take_distinct_on(&mut conn, principal, grant, prefix, names, minute, windows)
            .await;
        close_if_failed(&mut conn, &result);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn take_distinct_on(
        &self,
        conn: &mut Conn,
        principal: &str,
        grant: &str,
        prefix: &str,
        names: &[String],
        minute: i64,
        windows: &[UsageWindow],
    ) -> Result<Result<(), TooMany>, StoreError> {
        let mut tx = self.begin_turn(conn, principal, grant, prefix).await?;
        for (i, w) in windows.iter().enumerate() {
            let (seen, first) = self
                .counters_since_on(&mut tx, principal, grant, prefix, w.since)
                .await?;
            let new = names.iter().filter(|n| !seen.contains(n)).count();
            if (seen.len() + new) as i64 > w.limit {
                // Nothing was written: the rollback only ends the turn.
                tx.rollback().await?;
                return Ok(Err(TooMany {
                    window: i,
                    seen: seen.len() as i64,
                    first,
                    new: new as i64,
                }));
            }
        }
        for n in names {
            let c = format!("{prefix}{n}");
            self.add_usage_on(&mut tx, principal, grant, &c, minute, 1)
                .await?;
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// A transaction that is the only one, on any gateway, working on
    /// `counter` of `principal` under `grant` until it ends. SQLite:
    /// IMMEDIATE takes the database's write lock up front. PostgreSQL: a
    /// transaction-scoped advisory lock on a hash of the three (two keys
    /// sharing a hash only wait for each other).
    async fn begin_turn<'c>(
        &self,
        conn: &'c mut Conn,
        principal: &str,
        grant: &str,
        counter: &str,
    ) -> Result<sqlx::Transaction<'c, sqlx::Any>, StoreError> {
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        let mut tx = sqlx::Connection::begin_with(&mut **conn, begin).await?;
        if self.backend == Backend::Postgres {
            let key = format!("portcullis budget\u{1f}{principal}\u{1f}{grant}\u{1f}{counter}");
            sqlx::query(self.q(
                "SELECT CAST(1 AS BIGINT) AS turn FROM (SELECT pg_advisory_xact_lock(hashtextextended(?, 0))) AS l",
            ))
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        }
        Ok(tx)
    }

    /// Forget use older than minute `before` (no window reaches it).
    pub async fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(self.q("DELETE FROM budget_usage WHERE minute < ?"))
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// A connection whose transaction failed is not given back to the pool:
/// a failed COMMIT in SQLite rolls back while sqlx still counts the
/// transaction open (see `Store::audit_batch`).
fn close_if_failed<T>(conn: &mut Conn, result: &Result<T, StoreError>) {
    if result.is_err() {
        conn.close_on_drop();
    }
}
