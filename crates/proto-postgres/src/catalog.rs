//! Proofs from the target's own catalog: whether the functions a
//! statement calls are free of side effects (`pg_proc.provolatile`).
//!
//! Looked up on a session of the gateway's own (never the caller's, whose
//! pipeline may be mid-flight), cached per connection for a bounded time,
//! and forgotten when a statement that may change the schema passes.
//!
//! Names are resolved conservatively instead of through the caller's
//! `search_path`: an unqualified name stands for every function of that
//! name in every schema, and if any of them is volatile, the call is. A
//! caller who moves `pg_catalog` behind a schema of its own therefore
//! gains nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::classify::{self, Analysis, Call, Class, Proof};
use crate::upstream::{UpstreamError, UpstreamSession};

/// How long a proof is trusted: a function replaced outside the gateway
/// is seen again after this long at most.
const TTL: Duration = Duration::from_secs(30);
/// Entries kept per connection before the cache starts over.
const MAX_ENTRIES: usize = 4096;

/// One function the catalog knows under a name or OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRow {
    pub schema: String,
    pub name: String,
    /// `i` immutable, `s` stable, `v` volatile.
    pub volatility: u8,
}

/// Why a statement could not be proven: it is refused (or held), never
/// let through.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("the target's catalog could not be read: {0}")]
    Upstream(#[from] UpstreamError),
}

/// What the catalog said about one name or OID, and when.
type Entry = (Arc<[ProcRow]>, Instant);

/// Proofs by function name (every overload, every schema) and by OID.
#[derive(Default)]
struct Cache {
    names: HashMap<String, Entry>,
    oids: HashMap<u32, Entry>,
    /// The volatile functions PostgreSQL may call without the statement
    /// naming them ([`HIDDEN_VOLATILE`]).
    hidden: Option<Entry>,
}

/// Functions outside `pg_catalog` that are volatile and that PostgreSQL
/// calls without a statement naming them: an operator's code (and its
/// planner estimators), a cast, a type's input and output, operator-class
/// support (ORDER BY, hashing), an aggregate's steps, and anything a view
/// (its rewrite rule) or a row-security policy calls. A statement that
/// evaluates anything could reach any of them ([`reaches_hidden`]), so
/// while one exists no such statement on the connection is proven: it is
/// `unknown` (refused on read-only connections, held where approvals
/// apply). The first few are named in the log.
const HIDDEN_VOLATILE: &str = "SELECT n.nspname, p.proname, p.provolatile \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.provolatile = 'v' AND n.nspname <> 'pg_catalog' AND p.oid IN ( \
       SELECT oprcode::oid FROM pg_catalog.pg_operator \
       UNION SELECT oprrest::oid FROM pg_catalog.pg_operator \
       UNION SELECT oprjoin::oid FROM pg_catalog.pg_operator \
       UNION SELECT castfunc FROM pg_catalog.pg_cast \
       UNION SELECT typinput::oid FROM pg_catalog.pg_type \
       UNION SELECT typoutput::oid FROM pg_catalog.pg_type \
       UNION SELECT typreceive::oid FROM pg_catalog.pg_type \
       UNION SELECT typsend::oid FROM pg_catalog.pg_type \
       UNION SELECT typmodin::oid FROM pg_catalog.pg_type \
       UNION SELECT typmodout::oid FROM pg_catalog.pg_type \
       UNION SELECT amproc::oid FROM pg_catalog.pg_amproc \
       UNION SELECT aggtransfn::oid FROM pg_catalog.pg_aggregate \
       UNION SELECT aggfinalfn::oid FROM pg_catalog.pg_aggregate \
       UNION SELECT aggcombinefn::oid FROM pg_catalog.pg_aggregate \
       UNION SELECT aggserialfn::oid FROM pg_catalog.pg_aggregate \
       UNION SELECT aggdeserialfn::oid FROM pg_catalog.pg_aggregate \
       UNION SELECT aggmtransfn::oid FROM pg_catalog.pg_aggregate \
       UNION SELECT aggminvtransfn::oid FROM pg_catalog.pg_aggregate \
       UNION SELECT aggmfinalfn::oid FROM pg_catalog.pg_aggregate \
       UNION SELECT d.refobjid FROM pg_catalog.pg_depend d \
         WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass \
           AND d.classid IN ('pg_catalog.pg_rewrite'::regclass, 'pg_catalog.pg_policy'::regclass, \
             'pg_catalog.pg_constraint'::regclass) \
     ) ORDER BY 1, 2 LIMIT 5";

/// A function's volatility as the proofs take it: as declared for the
/// built-ins and for C functions an extension installed, volatile for
/// any other. A function written in SQL or a procedural language may call
/// a volatile one whatever it declares itself, and that one runs with
/// its full powers: a STABLE PL/pgSQL function returning `w()` inserted a
/// row (checked on PostgreSQL 15).
const VOLATILITY: &str = "CASE WHEN p.provolatile = 'v' \
       OR n.nspname IN ('pg_catalog', 'information_schema') THEN p.provolatile \
     WHEN l.lanname IN ('c', 'internal') AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
       WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e') \
       THEN p.provolatile \
     ELSE 'v' END";

/// The catalog rows for functions matching `condition` (on `p`).
fn procs(condition: &str) -> String {
    format!(
        "SELECT n.nspname, p.proname, {VOLATILITY} FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_catalog.pg_language l ON l.oid = p.prolang WHERE {condition}"
    )
}

/// Whether a statement could reach a function PostgreSQL calls on its
/// own: it evaluates an expression, reads or writes a relation, calls a
/// function, or cannot be read through. (Transaction control, SET and
/// SHOW do not.)
fn reaches_hidden(a: &Analysis) -> bool {
    a.evaluates || !a.refs.relations.is_empty() || !a.calls.is_empty() || a.refs.opaque
}

impl Cache {
    fn fresh(e: Option<&Entry>) -> Option<Arc<[ProcRow]>> {
        e.filter(|(_, at)| at.elapsed() < TTL)
            .map(|(rows, _)| rows.clone())
    }

    fn room(&mut self) {
        if self.names.len() + self.oids.len() >= MAX_ENTRIES {
            self.names.clear();
            self.oids.clear();
        }
    }
}

#[derive(Default)]
pub struct Catalog {
    /// The gateway's own session for look-ups; opened on first use and
    /// again after an error.
    session: tokio::sync::Mutex<Option<UpstreamSession>>,
    cache: std::sync::Mutex<Cache>,
}

/// Whether `rows` (every function a call's name can reach) prove `call`
/// free of side effects.
pub fn prove(call: &Call, rows: &[ProcRow]) -> Proof {
    if call
        .schema
        .as_deref()
        .is_some_and(|s| s.starts_with("pg_temp"))
    {
        // Another session's temporary functions are not what the caller's
        // session would reach.
        return Proof::Missing;
    }
    let reachable: Vec<&ProcRow> = rows
        .iter()
        .filter(|r| r.name == call.name && call.schema.as_ref().is_none_or(|s| *s == r.schema))
        .collect();
    if reachable.is_empty() {
        return Proof::Missing;
    }
    if reachable.iter().all(|r| pure_row(r)) {
        Proof::Pure
    } else {
        Proof::Volatile
    }
}

fn pure_row(r: &ProcRow) -> bool {
    r.volatility != b'v'
        || (r.schema == "pg_catalog" && classify::HARMLESS_VOLATILE.contains(&r.name.as_str()))
}

/// The class of a fast-path function call ('F') to the function `row`
/// (`None`: no such function).
pub fn function_call_class(row: Option<&ProcRow>) -> Class {
    let Some(r) = row else {
        return Class::Unknown;
    };
    // The name decides first (set_config is admin wherever it is), then
    // the catalog.
    match classify::named_class(&r.name) {
        Some(class) => class,
        None if pure_row(r) => Class::Read,
        None => Class::Unknown,
    }
}

/// A literal the target reads the same whatever its settings
/// (`standard_conforming_strings`, encoding): hex of the UTF-8 bytes.
pub(crate) fn literal(s: &str) -> String {
    format!("convert_from(decode('{}', 'hex'), 'UTF8')", hex::encode(s))
}

impl Catalog {
    /// Forget every proof: something that may change the schema passed.
    pub fn forget(&self) {
        if let Ok(mut c) = self.cache.lock() {
            *c = Cache::default();
        }
    }

    /// The class of `a` with its calls proven against the catalog.
    /// `open` dials the look-up session when there is none.
    pub async fn resolve<F, Fut>(&self, a: &Analysis, open: F) -> Result<Class, ProofError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        if a.class < Class::Ddl && reaches_hidden(a) && !self.hidden(&open).await?.is_empty() {
            return Ok(Class::Unknown);
        }
        self.resolve_calls(a, &open).await
    }

    /// The volatile functions PostgreSQL may call on its own (cached as
    /// the other proofs are, and forgotten with them).
    async fn hidden<F, Fut>(&self, open: F) -> Result<Arc<[ProcRow]>, ProofError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            Cache::fresh(cache.hidden.as_ref())
        };
        if let Some(rows) = cached {
            return Ok(rows);
        }
        let rows: Arc<[ProcRow]> = self.query(HIDDEN_VOLATILE, open).await?.into();
        if !rows.is_empty() {
            let names: Vec<String> = rows
                .iter()
                .map(|r| format!("{}.{}", r.schema, r.name))
                .collect();
            tracing::warn!(functions = ?names, "the target has volatile functions PostgreSQL calls without a statement naming them (operators, casts, types, views, policies…): statements that touch relations are not proven on this connection");
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.hidden = Some((rows.clone(), Instant::now()));
        Ok(rows)
    }

    async fn resolve_calls<F, Fut>(&self, a: &Analysis, open: F) -> Result<Class, ProofError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        if !a.needs_proof() {
            return Ok(a.resolve(|_| Proof::Missing));
        }
        let mut known: HashMap<&str, Arc<[ProcRow]>> = HashMap::new();
        let mut missing: Vec<&str> = Vec::new();
        {
            // A poisoned cache is only a cold one.
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for c in a.calls.iter().chain(&a.attributes) {
                match Cache::fresh(cache.names.get(&c.name)) {
                    Some(rows) => {
                        known.insert(&c.name, rows);
                    }
                    None if !missing.contains(&c.name.as_str()) => missing.push(&c.name),
                    None => {}
                }
            }
        }
        if !missing.is_empty() {
            let list = missing
                .iter()
                .map(|n| literal(n))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = procs(&format!("p.proname::text IN ({list})"));
            let rows = self.query(&sql, open).await?;
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.room();
            for name in missing {
                let mine: Arc<[ProcRow]> =
                    rows.iter().filter(|r| r.name == name).cloned().collect();
                cache
                    .names
                    .insert(name.to_string(), (mine.clone(), Instant::now()));
                known.insert(name, mine);
            }
        }
        Ok(a.resolve(|c| prove(c, known.get(c.name.as_str()).map_or(&[][..], |v| v))))
    }

    /// The function a fast-path call names by OID.
    pub async fn function<F, Fut>(&self, oid: u32, open: F) -> Result<Option<ProcRow>, ProofError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            Cache::fresh(cache.oids.get(&oid))
        };
        if let Some(rows) = cached {
            return Ok(rows.first().cloned());
        }
        let sql = procs(&format!("p.oid = {oid}"));
        let rows: Arc<[ProcRow]> = self.query(&sql, open).await?.into();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.room();
        cache.oids.insert(oid, (rows.clone(), Instant::now()));
        Ok(rows.first().cloned())
    }

    async fn query<F, Fut>(&self, sql: &str, open: F) -> Result<Vec<ProcRow>, ProofError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        let mut slot = self.session.lock().await;
        if slot.is_none() {
            *slot = Some(open().await?);
        }
        let Some(session) = slot.as_mut() else {
            return Ok(Vec::new());
        };
        let rows = match session.simple_rows(sql).await {
            Ok(rows) => rows,
            Err(e) => {
                // A broken session is dialled again next time.
                *slot = None;
                return Err(e.into());
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let mut it = r.into_iter();
                let schema = it.next()??;
                let name = it.next()??;
                let volatility = *it.next()??.as_bytes().first()?;
                Some(ProcRow {
                    schema,
                    name,
                    volatility,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(schema: &str, name: &str, v: u8) -> ProcRow {
        ProcRow {
            schema: schema.into(),
            name: name.into(),
            volatility: v,
        }
    }

    fn call(schema: Option<&str>, name: &str) -> Call {
        Call {
            schema: schema.map(str::to_owned),
            name: name.into(),
        }
    }

    #[test]
    fn every_overload_a_name_can_reach_must_be_pure() {
        let rows = [
            row("pg_catalog", "lower", b'i'),
            row("public", "lower", b'v'),
        ];
        // Unqualified: the caller's search_path could reach public.lower.
        assert_eq!(prove(&call(None, "lower"), &rows), Proof::Volatile);
        assert_eq!(
            prove(&call(Some("pg_catalog"), "lower"), &rows),
            Proof::Pure
        );
        assert_eq!(
            prove(&call(Some("public"), "lower"), &rows),
            Proof::Volatile
        );
        assert_eq!(prove(&call(Some("other"), "lower"), &rows), Proof::Missing);
        assert_eq!(prove(&call(None, "nothing"), &rows), Proof::Missing);
        assert_eq!(
            prove(&call(Some("pg_temp"), "lower"), &rows),
            Proof::Missing
        );
    }

    #[test]
    fn harmless_volatile_builtins_only_in_pg_catalog() {
        let rows = [row("pg_catalog", "random", b'v')];
        assert_eq!(prove(&call(None, "random"), &rows), Proof::Pure);
        let rows = [
            row("pg_catalog", "random", b'v'),
            row("public", "random", b'v'),
        ];
        assert_eq!(prove(&call(None, "random"), &rows), Proof::Volatile);
        let rows = [row("pg_catalog", "nextval", b'v')];
        assert_eq!(prove(&call(None, "nextval"), &rows), Proof::Volatile);
    }

    #[test]
    fn function_calls_by_oid() {
        assert_eq!(function_call_class(None), Class::Unknown);
        assert_eq!(
            function_call_class(Some(&row("pg_catalog", "lower", b'i'))),
            Class::Read
        );
        assert_eq!(
            function_call_class(Some(&row("pg_catalog", "set_config", b'v'))),
            Class::Admin
        );
        assert_eq!(
            function_call_class(Some(&row("pg_catalog", "lo_creat", b'v'))),
            Class::Unknown
        );
        assert_eq!(
            function_call_class(Some(&row("pg_catalog", "query_to_xml", b's'))),
            Class::Unknown
        );
    }

    #[test]
    fn literals_survive_any_quoting() {
        let l = literal("a'b\\c\"");
        assert_eq!(l.matches('\'').count(), 6, "{l}");
        assert!(
            l.starts_with("convert_from(decode('6127625c6322', 'hex')"),
            "{l}"
        );
    }
}
