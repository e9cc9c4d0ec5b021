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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::classify::{self, Analysis, Call, Class, Proof};
use crate::upstream::{UpstreamError, UpstreamSession};

/// How long a proof is trusted: a function replaced where the gateway
/// does not see it (outside it, or by a function called through a
/// full-access connection) is seen again after this long at most. Was
/// 30 s: a review's function replaced a view through a full-access
/// connection, and the read-only connection's next read ran it. The look
/// for hidden code once per connection per 5 s is cheap beside that.
const TTL: Duration = Duration::from_secs(5);

/// Schema changes that went through this process, on any connection: one
/// more each time a statement that may have changed the schema finishes
/// ([`Catalog::forget`]). Every catalog reading carries the count from
/// before it began, and is stale once the count moved. Process-wide, not
/// per connection: two connections to one database (or to one server
/// under two host names, or through an agent) are not told apart, and a
/// review's view replaced through a read-write connection was still
/// proven a read on the read-only one for the cache's 30 s. A change in
/// another process (another gateway, a direct session) is seen after
/// [`TTL`] at most.
static SCHEMA_EPOCH: AtomicU64 = AtomicU64::new(0);

/// When a catalog answer was read: the time and the schema count from
/// before the look-up was sent (a change that finishes while it runs
/// makes it stale at once: it may have read the schema before).
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    at: Instant,
    epoch: u64,
}

impl Reading {
    /// Taken before the look-up is sent.
    pub(crate) fn begin() -> Self {
        Self {
            at: Instant::now(),
            epoch: SCHEMA_EPOCH.load(Ordering::Acquire),
        }
    }

    /// Younger than [`TTL`], and no schema change finished since it began.
    pub(crate) fn fresh(&self) -> bool {
        self.at.elapsed() < TTL && self.epoch == SCHEMA_EPOCH.load(Ordering::Acquire)
    }
}

/// A statement that may have changed the schema finished: every catalog
/// reading in the process is stale.
pub(crate) fn schema_changed() {
    SCHEMA_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// Sessions of this process with a schema change sent and their
/// transaction not yet seen to end ([`SchemaChange`]).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A schema change under way on one session: sent, and its transaction
/// not yet seen to end. While any is, no statement is proven against
/// the catalog on any connection (each is `unknown`: refused on
/// read-only connections, held where approvals apply): a proof reads the catalog as committed, and the statement runs under
/// what commits before it starts or while it waits for a lock. A review
/// held a `CREATE OR REPLACE VIEW` open in a transaction through a
/// full-access connection, read the view on the read-only connection
/// (proven against the old view, then waiting for the view's lock), and
/// committed: the new view's `pg_terminate_backend` ran (2026-12-05).
/// The session's own statements after its change too: the look-up's
/// session does not see what its transaction has not committed.
/// Dropped when the transaction is seen to end, or the session is gone:
/// every reading is stale from then on.
#[derive(Debug)]
pub(crate) struct SchemaChange(());

impl SchemaChange {
    pub(crate) fn begin() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        Self(())
    }
}

impl Drop for SchemaChange {
    fn drop(&mut self) {
        // Stale first: whoever sees none under way sees the new count.
        schema_changed();
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a schema change is under way on any session of the process.
pub(crate) fn schema_in_flight() -> bool {
    IN_FLIGHT.load(Ordering::Acquire) > 0
}
/// Entries kept per connection before the cache starts over.
const MAX_ENTRIES: usize = 4096;

/// One function the catalog knows under a name or OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRow {
    pub schema: String,
    pub name: String,
    /// `i` immutable, `s` stable, `v` volatile; `q` a function written
    /// in SQL whose body is proven as a statement would be ([`volatility`]).
    pub volatility: u8,
    /// The body of a `q` function.
    pub body: Option<String>,
    /// Made by `initdb` (an OID below 16384): only these are trusted for
    /// their schema or their name. A review's superuser added a PL/pgSQL
    /// `pg_catalog.random(int)` that took a lock, and it was proven
    /// harmless by its name.
    pub builtin: bool,
    /// Its OID: a fast-path call's look-up takes only the row of the
    /// function it asked about.
    pub oid: Option<u32>,
}

/// Why a statement could not be proven: it is refused (or held), never
/// let through.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("the target's catalog could not be read: {0}")]
    Upstream(#[from] UpstreamError),
}

/// What the catalog said about one name or OID, and when.
type Entry = (Arc<[ProcRow]>, Reading);

/// Proofs by function name (every overload, every schema) and by OID.
#[derive(Default)]
struct Cache {
    names: HashMap<String, Entry>,
    oids: HashMap<u32, Entry>,
    /// The volatile functions PostgreSQL may call without the statement
    /// naming them ([`HIDDEN_VOLATILE`]).
    hidden: Option<Entry>,
}

/// Functions that PostgreSQL calls without a statement naming them: an
/// operator's code (and its planner estimators), a cast, a type's input
/// and output, operator-class support (ORDER BY, hashing), an aggregate's
/// steps, range types' canonical and difference functions, conversions,
/// and anything a view (its rewrite rule), a row-security policy, a
/// constraint, or what the planner folds while planning a read calls:
/// index expressions and predicates, partition keys and extended
/// statistics (`pg_depend` from `pg_class` and `pg_statistic_ext`; a
/// review's role without privileges planted an index `WHERE a > k(0)`
/// whose function ended other sessions when a read-only caller selected
/// from the table, run as the gateway's role). Not here: functions'
/// planner support and text search parsers and templates, which only a
/// superuser can set (documented): extensions' dictionaries (`unaccent`,
/// `dict_int`) made every read unproven. A statement that
/// evaluates anything could reach any of them ([`reaches_hidden`]), so
/// while one exists no such statement on the connection is proven: it is
/// `unknown` (refused on read-only connections, held where approvals
/// apply). The first few are named in the log. These are the candidates'
/// OIDs; [`hidden_query`] keeps those not proven.
const HIDDEN_CANDIDATES: &str = "\
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
       UNION SELECT f FROM pg_catalog.pg_range r, unnest(ARRAY[r.rngcanonical::oid, r.rngsubdiff::oid]) f \
       UNION SELECT conproc::oid FROM pg_catalog.pg_conversion \
       UNION SELECT d.refobjid FROM pg_catalog.pg_depend d \
         WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass \
           AND d.classid IN ('pg_catalog.pg_rewrite'::regclass, 'pg_catalog.pg_policy'::regclass, \
             'pg_catalog.pg_constraint'::regclass, 'pg_catalog.pg_class'::regclass, \
             'pg_catalog.pg_statistic_ext'::regclass)";

/// The pattern of a function's OID in an expression tree (`pg_node_tree`
/// as text): a call, an operator's function, an aggregate, a window
/// function. `[0-9]`, not `\d`: on a target whose
/// `standard_conforming_strings` is off the backslash would be read as an
/// escape and nothing found. The preview reads trees with it too.
pub(crate) const FUNC_IDS: &str = "':(?:funcid|opfuncid|aggfnoid|winfnoid) ([0-9]+)'";

/// Functions a view or a row-security policy calls on a read, built-ins
/// included, read from their expression trees: `pg_depend` records
/// nothing for built-ins, so a view over `nextval`, `pg_try_advisory_lock`
/// or `pg_terminate_backend` was proven a read (2026-12-05). Only what a
/// read runs: a view's SELECT rule (`ev_type = '1'`; an `ON INSERT` rule
/// over `nextval` had made every read on the connection unproven, review),
/// and policies' `USING` (a `WITH CHECK` runs on writes only) of those a
/// `SELECT` (or `SELECT … FOR UPDATE`) applies. Views the system made at
/// `initdb` (OIDs below 16384, PostgreSQL's `FirstNormalObjectId`:
/// `pg_stat_activity`, `information_schema`) are left out; views an
/// extension or a schema owner made are in. Materialized views are not:
/// reading one runs nothing. Domains' CHECKs too (a cast to the domain
/// runs one on a read).
fn called_on_read() -> String {
    format!(
        "SELECT m[1]::oid FROM pg_catalog.pg_rewrite w \
           JOIN pg_catalog.pg_class c ON c.oid = w.ev_class, \
           pg_catalog.regexp_matches(w.ev_action::text || coalesce(w.ev_qual::text, ''), {FUNC_IDS}, 'g') m \
           WHERE c.relkind = 'v' AND c.oid >= 16384 AND w.ev_type = '1' \
         UNION SELECT m[1]::oid FROM pg_catalog.pg_policy p, \
           pg_catalog.regexp_matches(coalesce(p.polqual::text, ''), {FUNC_IDS}, 'g') m \
           WHERE p.polcmd IN ('*', 'r', 'w') \
         UNION SELECT m[1]::oid FROM pg_catalog.pg_constraint k, \
           pg_catalog.regexp_matches(k.conbin::text, {FUNC_IDS}, 'g') m \
           WHERE k.contypid <> 0 AND k.conbin IS NOT NULL"
    )
}

/// Built-in functions that objects a user made have PostgreSQL call on
/// its own: an operator, a cast, a type's input and output, operator-class
/// support and an aggregate's steps, each made after `initdb` over a
/// function of `pg_catalog` (a review's `CREATE CAST (int8 AS bool) WITH
/// FUNCTION pg_try_advisory_lock(int8)` and operator `||` over it ran on
/// reads: [`HIDDEN_CANDIDATES`] is searched outside `pg_catalog` only),
/// and domains' CHECKs ([`called_on_read`]: a review's `CHECK
/// (set_config(VALUE, 'off', false) IS NOT NULL)` turned the read-only
/// transaction off from a read-only connection).
const MADE_OVER_BUILTINS: &str = "\
       SELECT oprcode::oid FROM pg_catalog.pg_operator WHERE oid >= 16384 \
       UNION SELECT oprrest::oid FROM pg_catalog.pg_operator WHERE oid >= 16384 \
       UNION SELECT oprjoin::oid FROM pg_catalog.pg_operator WHERE oid >= 16384 \
       UNION SELECT castfunc FROM pg_catalog.pg_cast WHERE oid >= 16384 \
       UNION SELECT f FROM pg_catalog.pg_type t, unnest(ARRAY[t.typinput::oid, t.typoutput::oid, \
           t.typreceive::oid, t.typsend::oid, t.typmodin::oid, t.typmodout::oid]) f WHERE t.oid >= 16384 \
       UNION SELECT amproc::oid FROM pg_catalog.pg_amproc WHERE oid >= 16384 \
       UNION SELECT f FROM pg_catalog.pg_aggregate a, unnest(ARRAY[a.aggtransfn::oid, \
           a.aggfinalfn::oid, a.aggcombinefn::oid, a.aggserialfn::oid, a.aggdeserialfn::oid, \
           a.aggmtransfn::oid, a.aggminvtransfn::oid, a.aggmfinalfn::oid]) f WHERE a.aggfnoid >= 16384";

/// The handlers of the foreign-data wrappers behind foreign tables:
/// reading a foreign table runs its wrapper's code, which no catalog
/// entry proves (a review's `file_fdw` table with `program` ran a shell
/// command from a read-only connection; a `postgres_fdw` table over a
/// view advanced another database's sequence).
const FOREIGN_HANDLERS: &str = "\
       SELECT w.fdwhandler FROM pg_catalog.pg_foreign_data_wrapper w \
         JOIN pg_catalog.pg_foreign_server v ON v.srvfdw = w.oid \
         JOIN pg_catalog.pg_foreign_table f ON f.ftserver = v.oid";

/// Volatile functions of well-known extensions that read and change
/// nothing, behind their own views or aggregates: `pg_stat_statements`
/// (in most production databases), `pg_buffercache`, `intagg` (each made
/// every read on a read-only connection unproven, review). Only as members
/// of the extension of that name, which only its owner can add functions
/// to.
const HARMLESS_IN_EXTENSIONS: &str = "\
       EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
         JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid \
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid \
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e' \
           AND (e.extname, p.proname) IN (('pg_stat_statements', 'pg_stat_statements'), \
             ('pg_stat_statements', 'pg_stat_statements_info'), \
             ('pg_buffercache', 'pg_buffercache_pages'), \
             ('intagg', 'int_agg_state'), ('intagg', 'int_agg_final_array')))";

/// Functions PostgreSQL may call without a statement naming them that are
/// not proven free of side effects: outside `pg_catalog` (or added to it
/// after `initdb`), those [`volatility`] does not prove (`v`), or SQL
/// functions whose bodies must be proven (`q`): a review ran a STABLE SQL
/// wrapper of a volatile function through a view, a domain's CHECK and a
/// default argument. Built-ins reached through what a user made
/// ([`called_on_read`], [`MADE_OVER_BUILTINS`]) that are volatile, or
/// that the proofs class by name (`set_config`, `query_to_xml`, …), but
/// those known to be harmless. Foreign tables' wrappers. At most
/// [`MAX_HIDDEN`] + 1.
fn hidden_query() -> String {
    let harmless = sql_list(classify::HARMLESS_VOLATILE.iter());
    let named = sql_list(classify::NAMED_FUNCTIONS.iter().flat_map(|l| l.iter()));
    let volatility = volatility();
    let called_on_read = called_on_read();
    format!(
        "SELECT n.nspname, p.proname, {volatility}, \
           CASE WHEN l.lanname = 'sql' THEN p.prosrc END, (p.oid < 16384)::text FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
         WHERE ((n.nspname <> 'pg_catalog' OR p.oid >= 16384) AND ({volatility}) IN ('v', 'q') \
             AND p.oid IN ({HIDDEN_CANDIDATES} UNION {FOREIGN_HANDLERS}) \
             AND NOT ({HARMLESS_IN_EXTENSIONS})) \
           OR (n.nspname = 'pg_catalog' AND p.oid < 16384 \
             AND (p.provolatile = 'v' OR p.proname IN ({named})) AND p.proname NOT IN ({harmless}) \
             AND p.oid IN ({called_on_read} UNION {MADE_OVER_BUILTINS} UNION {FOREIGN_HANDLERS})) \
         ORDER BY 1, 2 LIMIT {}",
        MAX_HIDDEN + 1
    )
}

/// Hidden functions looked at, at most: past it, the connection's
/// statements that touch relations are not proven.
const MAX_HIDDEN: usize = 200;

/// A function's volatility as the proofs take it: as declared for the
/// built-ins and for C functions an extension installed; `q` for one
/// written in SQL (a text body, read from `prosrc`), whose body is proven
/// like a statement; volatile for any other. A function written in SQL or
/// a procedural language may call a volatile one whatever it declares
/// itself, and that one runs with its full powers: a STABLE PL/pgSQL
/// function returning `w()` inserted a row (checked on PostgreSQL 15).
/// (`prosqlbody`, a `BEGIN ATOMIC` body, is read through `to_jsonb` so the
/// query runs on versions without the column.) A default argument that
/// may call a function makes a function volatile (a review's pure body
/// had a default inserting a row), and so does a SQL function's own
/// setting other than `search_path`: its body is read under it
/// (`standard_conforming_strings = off` made a literal and a call of one
/// text; re-review). A function is taken at its declared volatility for
/// its schema only when `initdb` made it: a superuser may add functions to
/// `pg_catalog` or `information_schema` (review). A function in `internal`
/// (the server's own C code under a new name) is as volatile as the
/// built-ins running the same code, whatever it declares (a review's
/// IMMUTABLE alias of `pg_advisory_lock_int8` took locks; the constructors
/// PostgreSQL makes for a user's range type run the built-ins' code and
/// are proven so); an aggregate is taken as declared, since the steps it
/// runs are judged on their own (an aggregate's own entry is `internal`).
/// A function that runs SQL handed to it as text
/// ([`classify::RUNS_SQL_TEXT`]) is volatile whatever it declares:
/// `tablefunc`'s `crosstab` behind a view ran what its text said.
fn volatility() -> String {
    let runs_sql_text = sql_list(classify::RUNS_SQL_TEXT.iter());
    format!("CASE WHEN p.proname IN ({runs_sql_text}) THEN 'v' {VOLATILITY_BY_CATALOG}")
}

/// [`volatility`]'s cases past the names.
const VOLATILITY_BY_CATALOG: &str = "\
     WHEN p.provolatile = 'v' \
       OR (n.nspname IN ('pg_catalog', 'information_schema') AND p.oid < 16384) THEN p.provolatile \
     WHEN p.proargdefaults IS NOT NULL \
       AND pg_catalog.pg_get_expr(p.proargdefaults, 0) LIKE '%(%' THEN 'v' \
     WHEN p.prokind = 'a' THEN p.provolatile \
     WHEN l.lanname = 'internal' THEN coalesce((SELECT b.provolatile \
       FROM pg_catalog.pg_proc b WHERE b.oid < 16384 AND b.prolang = p.prolang \
         AND b.prosrc = p.prosrc ORDER BY b.provolatile DESC LIMIT 1), 'v') \
     WHEN l.lanname = 'c' AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
       WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e') \
       THEN p.provolatile \
     WHEN l.lanname = 'sql' AND (to_jsonb(p) ->> 'prosqlbody') IS NULL \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) c \
         WHERE c NOT LIKE 'search_path=%') \
       THEN 'q' \
     ELSE 'v' END";

/// Names as a SQL list of literals (ours: none holds a quote).
fn sql_list<'a>(names: impl Iterator<Item = &'a &'a str>) -> String {
    names
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The catalog rows for functions matching `condition` (on `p`).
fn procs(condition: &str) -> String {
    let volatility = volatility();
    format!(
        "SELECT n.nspname, p.proname, {volatility}, \
           CASE WHEN l.lanname = 'sql' THEN p.prosrc END, (p.oid < 16384)::text, p.oid::text \
         FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_catalog.pg_language l ON l.oid = p.prolang WHERE {condition}"
    )
}

/// How deep SQL function bodies are followed into the functions they
/// call, and how many names one proof looks up at most: past either,
/// what is left is not proven.
const MAX_BODY_DEPTH: usize = 4;
const MAX_BODY_NAMES: usize = 64;

/// Whether a statement could reach a function PostgreSQL calls on its
/// own: it evaluates an expression, reads or writes a relation, calls a
/// function, or cannot be read through. (Transaction control, SET and
/// SHOW do not.)
pub(crate) fn reaches_hidden(a: &Analysis) -> bool {
    a.evaluates || !a.refs.relations.is_empty() || !a.calls.is_empty() || a.refs.opaque
}

impl Cache {
    fn fresh(e: Option<&Entry>) -> Option<Arc<[ProcRow]>> {
        e.filter(|(_, read)| read.fresh())
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
    prove_by(call, rows, &pure_row)
}

/// [`prove`], with `q` functions pure where `body_pure` says their body
/// was proven.
fn prove_with(call: &Call, rows: &[ProcRow], body_pure: &dyn Fn(&ProcRow) -> bool) -> Proof {
    prove_by(call, rows, &|r| {
        pure_row(r) || (r.volatility == b'q' && body_pure(r))
    })
}

/// Whether every function `call` can reach is `pure`.
fn prove_by(call: &Call, rows: &[ProcRow], pure: &dyn Fn(&ProcRow) -> bool) -> Proof {
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
    if reachable.iter().all(|r| pure(r)) {
        Proof::Pure
    } else {
        Proof::Volatile
    }
}

/// Which SQL function bodies are proven free of side effects: each is a
/// read whose calls are proven (built-ins, or SQL functions whose bodies
/// are, recursively), and whose names in attribute notation reach no
/// volatile function. A body not analysed (past the depth), or on a
/// cycle, is not.
fn body_proofs(
    known: &HashMap<String, Arc<[ProcRow]>>,
    bodies: &HashMap<String, Analysis>,
) -> std::collections::HashSet<String> {
    let mut pure = std::collections::HashSet::new();
    // Each pass proves the bodies whose calls are proven by the passes
    // before it: a cycle never is.
    loop {
        let before = pure.len();
        for (body, a) in bodies {
            if pure.contains(body) || a.class != Class::Read {
                continue;
            }
            let body_pure = |r: &ProcRow| r.body.as_ref().is_some_and(|b| pure.contains(b));
            let ok = a.resolve(|c| {
                let rows = known.get(c.name.as_str()).map_or(&[][..], |v| v);
                prove_with(c, rows, &body_pure)
            }) == Class::Read;
            if ok {
                pure.insert(body.clone());
            }
        }
        if pure.len() == before {
            return pure;
        }
    }
}

fn pure_row(r: &ProcRow) -> bool {
    matches!(r.volatility, b'i' | b's')
        || (r.builtin
            && r.schema == "pg_catalog"
            && classify::HARMLESS_VOLATILE.contains(&r.name.as_str()))
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
    /// Every other connection's proofs are stale too ([`schema_changed`]).
    pub fn forget(&self) {
        schema_changed();
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
        let on_catalog = reaches_hidden(a) || a.needs_proof();
        if a.class < Class::Ddl && on_catalog && schema_in_flight() {
            tracing::info!(
                "a schema change is under way through the gateway: statements that rest on the catalog are not proven until its transaction has ended"
            );
            return Ok(Class::Unknown);
        }
        if a.class < Class::Ddl && reaches_hidden(a) && !self.hidden(&open).await?.is_empty() {
            return Ok(Class::Unknown);
        }
        self.resolve_calls(a, &open).await
    }

    /// The volatile functions PostgreSQL may call on its own (cached as
    /// the other proofs are, and forgotten with them).
    async fn hidden<F, Fut>(&self, open: F) -> Result<Arc<[ProcRow]>, ProofError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            Cache::fresh(cache.hidden.as_ref())
        };
        if let Some(rows) = cached {
            return Ok(rows);
        }
        let read = Reading::begin();
        let found = self.query(&hidden_query(), &open).await?;
        let rows: Arc<[ProcRow]> = if found.len() > MAX_HIDDEN {
            found.into()
        } else {
            // SQL functions whose bodies are proven are not hidden callees.
            let mut known: HashMap<String, Arc<[ProcRow]>> = HashMap::new();
            for r in &found {
                let mut v = known.get(&r.name).map(|x| x.to_vec()).unwrap_or_default();
                v.push(r.clone());
                known.insert(r.name.clone(), v.into());
            }
            let pure = self.proven_bodies(&mut known, &open).await?;
            found
                .into_iter()
                .filter(|r| {
                    !(r.volatility == b'q' && r.body.as_ref().is_some_and(|b| pure.contains(b)))
                })
                .collect()
        };
        if !rows.is_empty() {
            let names: Vec<String> = rows
                .iter()
                .map(|r| format!("{}.{}", r.schema, r.name))
                .collect();
            tracing::warn!(functions = ?names, "the target has volatile functions PostgreSQL calls without a statement naming them (operators, casts, types, views, policies…): statements that evaluate anything, touch a relation or call a function are not proven on this connection");
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.hidden = Some((rows.clone(), read));
        Ok(rows)
    }

    async fn resolve_calls<F, Fut>(&self, a: &Analysis, open: F) -> Result<Class, ProofError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        if !a.needs_proof() {
            return Ok(a.resolve(|_| Proof::Missing));
        }
        let names: Vec<String> = a
            .calls
            .iter()
            .chain(&a.attributes)
            .map(|c| c.name.clone())
            .collect();
        let mut known = self.rows_for(&names, &open).await?;
        let pure = self.proven_bodies(&mut known, &open).await?;
        let body_pure = |r: &ProcRow| r.body.as_ref().is_some_and(|b| pure.contains(b));
        Ok(a.resolve(|c| {
            let rows = known.get(c.name.as_str()).map_or(&[][..], |v| v);
            prove_with(c, rows, &body_pure)
        }))
    }

    /// The SQL function bodies among `known` proven free of side effects,
    /// looking up the functions they call (added to `known`) a few levels
    /// deep.
    async fn proven_bodies<F, Fut>(
        &self,
        known: &mut HashMap<String, Arc<[ProcRow]>>,
        open: &F,
    ) -> Result<std::collections::HashSet<String>, ProofError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        // SQL functions' bodies, proven as statements: their own calls
        // are looked up in turn, a few levels deep.
        let mut bodies: HashMap<String, Analysis> = HashMap::new();
        for _ in 0..MAX_BODY_DEPTH {
            let fresh: Vec<String> = known
                .values()
                .flat_map(|rows| rows.iter())
                .filter_map(|r| r.body.clone().filter(|_| r.volatility == b'q'))
                .filter(|b| !bodies.contains_key(b))
                .collect();
            if fresh.is_empty() {
                break;
            }
            let mut next = Vec::new();
            for body in fresh {
                let analysed = classify::analyse(&body);
                for c in analysed.calls.iter().chain(&analysed.attributes) {
                    if !known.contains_key(&c.name) && !next.contains(&c.name) {
                        next.push(c.name.clone());
                    }
                }
                bodies.insert(body, analysed);
            }
            if known.len() + next.len() > MAX_BODY_NAMES {
                break;
            }
            known.extend(self.rows_for(&next, open).await?);
        }
        Ok(body_proofs(known, &bodies))
    }

    /// The catalog rows for each of `names` (every overload, every
    /// schema), from the cache where fresh, else in one look-up.
    async fn rows_for<F, Fut>(
        &self,
        names: &[String],
        open: &F,
    ) -> Result<HashMap<String, Arc<[ProcRow]>>, ProofError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        let mut known: HashMap<String, Arc<[ProcRow]>> = HashMap::new();
        let mut missing: Vec<&str> = Vec::new();
        {
            // A poisoned cache is only a cold one.
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for name in names {
                match Cache::fresh(cache.names.get(name)) {
                    Some(rows) => {
                        known.insert(name.clone(), rows);
                    }
                    None if !missing.contains(&name.as_str()) => missing.push(name),
                    None => {}
                }
            }
        }
        if missing.is_empty() {
            return Ok(known);
        }
        let list = missing
            .iter()
            .map(|n| literal(n))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = procs(&format!("p.proname::text IN ({list})"));
        let read = Reading::begin();
        let rows = self.query(&sql, open).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.room();
        for name in missing {
            let mine: Arc<[ProcRow]> = rows.iter().filter(|r| r.name == name).cloned().collect();
            cache.names.insert(name.to_string(), (mine.clone(), read));
            known.insert(name.to_string(), mine);
        }
        Ok(known)
    }

    /// The function a fast-path call names by OID.
    pub async fn function<F, Fut>(&self, oid: u32, open: F) -> Result<Option<ProcRow>, ProofError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        if schema_in_flight() {
            return Ok(None);
        }
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            Cache::fresh(cache.oids.get(&oid))
        };
        // Only the row about `oid`: an answer that is not about it (a
        // look-up session out of step with its queries) proves nothing.
        let about = |rows: &[ProcRow]| rows.iter().find(|r| r.oid == Some(oid)).cloned();
        if let Some(rows) = cached {
            return Ok(about(&rows));
        }
        let sql = procs(&format!("p.oid = {oid}"));
        let read = Reading::begin();
        let rows: Arc<[ProcRow]> = self.query(&sql, open).await?.into();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.room();
        cache.oids.insert(oid, (rows.clone(), read));
        Ok(about(&rows))
    }

    /// The rows `sql` answers on the gateway's own look-up session.
    pub(crate) async fn rows<F, Fut>(
        &self,
        sql: &str,
        open: F,
    ) -> Result<crate::upstream::CatalogRows, ProofError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        let mut slot = self.session.lock().await;
        // Out of the slot while the look-up runs, back only once its
        // answer is read to the end: a look-up dropped half way (its
        // caller's credential ended mid-statement, an MCP request was
        // cancelled) drops the session with it. Left in the slot, its
        // unread answer was the next look-up's, and every look-up after
        // read the one before it: a function proven by another's row
        // (review, 2026-12-05). A broken session is dialled again too.
        let mut session = match slot.take() {
            Some(s) => s,
            None => open().await?,
        };
        let rows = session.simple_rows(sql).await?;
        *slot = Some(session);
        Ok(rows)
    }

    async fn query<F, Fut>(&self, sql: &str, open: F) -> Result<Vec<ProcRow>, ProofError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<UpstreamSession, UpstreamError>>,
    {
        let rows = self.rows(sql, open).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let mut it = r.into_iter();
                let schema = it.next()??;
                let name = it.next()??;
                let volatility = *it.next()??.as_bytes().first()?;
                let body = it.next().flatten();
                let builtin = it.next().flatten().as_deref() == Some("true");
                let oid = it.next().flatten().and_then(|o| o.parse().ok());
                Some(ProcRow {
                    schema,
                    name,
                    volatility,
                    body,
                    builtin,
                    oid,
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
            body: None,
            builtin: schema == "pg_catalog",
            oid: None,
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
    fn sql_bodies_are_proven_like_statements() {
        let q = |name: &str, body: &str| ProcRow {
            body: Some(body.into()),
            ..row("public", name, b'q')
        };
        let rows = [
            q("outer", "SELECT inner_one($1) + 1"),
            q("inner_one", "SELECT lower('x') = 'x'"),
            q("wraps", "SELECT w()"),
            row("public", "w", b'v'),
            q("writes", "DELETE FROM t RETURNING 1"),
            q("cyc1", "SELECT cyc2()"),
            q("cyc2", "SELECT cyc1()"),
            q("attr", "SELECT c.w FROM t c"),
            row("pg_catalog", "lower", b'i'),
        ];
        let mut known: HashMap<String, Arc<[ProcRow]>> = HashMap::new();
        for r in &rows {
            let mut v: Vec<ProcRow> = known.get(&r.name).map(|x| x.to_vec()).unwrap_or_default();
            v.push(r.clone());
            known.insert(r.name.clone(), v.into());
        }
        let bodies: HashMap<String, Analysis> = rows
            .iter()
            .filter_map(|r| r.body.clone())
            .map(|b| (b.clone(), classify::analyse(&b)))
            .collect();
        let pure = body_proofs(&known, &bodies);
        let proven = |name: &str| {
            let body_pure = |r: &ProcRow| r.body.as_ref().is_some_and(|b| pure.contains(b));
            prove_with(&call(None, name), &known[name], &body_pure)
        };
        assert_eq!(proven("outer"), Proof::Pure);
        assert_eq!(proven("inner_one"), Proof::Pure);
        // A STABLE function calling a volatile one writes (PostgreSQL 15).
        assert_eq!(proven("wraps"), Proof::Volatile);
        assert_eq!(proven("writes"), Proof::Volatile);
        assert_eq!(proven("cyc1"), Proof::Volatile);
        assert_eq!(proven("attr"), Proof::Volatile);
        // Not proven, never pure by itself.
        assert_eq!(
            prove(&call(None, "outer"), &known["outer"]),
            Proof::Volatile
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
        // A `random(int)` a superuser added to `pg_catalog` is no built-in
        // (review: it took a lock and was proven harmless by its name).
        let planted = ProcRow {
            builtin: false,
            ..row("pg_catalog", "random", b'v')
        };
        let rows = [row("pg_catalog", "random", b'v'), planted];
        assert_eq!(prove(&call(None, "random"), &rows), Proof::Volatile);
    }

    /// Planning a write folds its columns' defaults: an EXPLAIN of one is
    /// not proven; of a read or a DELETE it still is (re-review).
    #[test]
    fn explaining_a_write_that_fills_columns_is_not_proven() {
        for sql in [
            "EXPLAIN INSERT INTO t (a) VALUES (1)",
            "EXPLAIN (COSTS OFF) UPDATE t SET b = DEFAULT",
            "EXPLAIN MERGE INTO t USING u ON t.a = u.a WHEN NOT MATCHED THEN INSERT (a) VALUES (u.a)",
        ] {
            assert_eq!(classify::classify(sql), Class::Unknown, "{sql}");
        }
        for sql in [
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN DELETE FROM t WHERE a = 1",
        ] {
            assert_eq!(classify::classify(sql), Class::Read, "{sql}");
        }
    }

    /// Every spelling of a FETCH (or MOVE) either names its cursor,
    /// folded as PostgreSQL folds it, so the cursor's query is proven
    /// again, or is not read at all and so not proven (`FETCH c`, which
    /// the parser does not read, is `unknown`).
    #[test]
    fn fetches_name_their_cursor_in_every_spelling() {
        for sql in [
            "FETCH c",
            "MOVE 1 FROM c",
            "MOVE NEXT IN c",
            "FETCH 1 FROM c",
            "FETCH NEXT FROM C",
            "FETCH ALL IN c",
            "FETCH FORWARD 5 FROM c",
            "fetch absolute 3 in c",
            "BEGIN; FETCH 2 FROM c",
        ] {
            let a = classify::analyse(sql);
            assert!(
                a.class == Class::Unknown || a.cursors.fetched == ["c"],
                "{sql}: {a:?}"
            );
        }
        assert_eq!(classify::analyse("FETCH 1 FROM c").class, Class::Read);
        let a = classify::analyse(r#"DECLARE "C" CURSOR FOR SELECT 1"#);
        assert_eq!(a.cursors.declared, ["C"]);
        assert_eq!(
            classify::analyse(r#"FETCH 1 FROM "C""#).cursors.fetched,
            ["C"]
        );
    }

    /// The catalog query takes every function that runs SQL text as
    /// volatile: its list is the classifier's.
    #[test]
    fn volatility_names_every_function_that_runs_sql_text() {
        let v = volatility();
        for name in classify::RUNS_SQL_TEXT {
            assert!(v.contains(&format!("'{name}'")), "{name}");
        }
    }

    /// Stable, but each call gives the transaction an id (review).
    #[test]
    fn functions_that_assign_a_transaction_id_are_writes() {
        for name in ["txid_current", "pg_current_xact_id"] {
            let r = row("pg_catalog", name, b's');
            assert_eq!(function_call_class(Some(&r)), Class::Write, "{name}");
            assert_eq!(
                classify::classify(&format!("SELECT {name}()")),
                Class::Write
            );
        }
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
