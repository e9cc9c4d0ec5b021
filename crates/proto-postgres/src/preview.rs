//! Preview before approval: a held INSERT, UPDATE, DELETE or MERGE is
//! run once on the gateway's own session with the target, inside a
//! transaction that is always rolled back, so the reviewer sees how many
//! rows of which tables it would change, and a few of them (masked).
//!
//! Running a statement nobody has approved yet is only safe when nothing
//! it does can outlive the rollback. Proven, not guessed, in two halves:
//! - the statement itself: one plain data-changing statement whose every
//!   function is proven free of side effects (its class is `write`, see
//!   [`crate::classify`] and [`crate::catalog`]), no data-changing CTE;
//! - what the target runs on its own when the statement changes rows:
//!   read from the catalog, inside the preview's transaction, for every
//!   table the change can reach (the target, its partitions and children,
//!   and the tables whose foreign keys cascade from them): no trigger
//!   (they run arbitrary code), no rule, no view or foreign table, no
//!   identity column or default that advances a sequence, no default,
//!   constraint or policy that calls a volatile function.
//!
//! Anything else is not previewed, and the review says why. The preview
//! runs under a short `statement_timeout` and `lock_timeout`, at most
//! [`MAX_CONCURRENT`] at once per connection.

use std::sync::Arc;
use std::time::Duration;

use portcullis_approval::{Preview, Sample, SampleRow, TableChange};
use sqlparser::ast::{
    ObjectName, SelectItem, SetExpr, Statement, TableFactor, TableObject, Visit, Visitor,
    WildcardAdditionalOptions,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::inspect::{Inspector, Verdict};
use crate::upstream::{PgUpstream, UpstreamError, UpstreamSession};

/// Previews running at once per connection; past it a held statement is
/// held without one (saying so) rather than queued behind others.
pub const MAX_CONCURRENT: usize = 2;

/// Rows shown in a sample.
pub const SAMPLE_ROWS: usize = 5;

/// What kind of change a previewable statement makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Insert,
    Update,
    Delete,
    Merge,
}

/// A statement that may be previewed, as far as its text tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    /// The table it changes, as written (quoted as it was).
    pub table: String,
    /// Every relation it names, as written (CTE names among them: they
    /// resolve to nothing, or shadow a relation and are checked as one).
    pub relations: Vec<String>,
    /// The same statement returning every column of the changed rows,
    /// for the sample (`None` for MERGE: PostgreSQL before 17 has no
    /// RETURNING there).
    pub returning_all: Option<String>,
}

/// Counts the data-changing statements anywhere in a statement (a CTE
/// may hold one).
struct Writes(usize);

impl Visitor for Writes {
    type Break = ();
    fn pre_visit_statement(&mut self, s: &Statement) -> std::ops::ControlFlow<()> {
        if matches!(
            s,
            Statement::Insert(_)
                | Statement::Update(_)
                | Statement::Delete(_)
                | Statement::Merge(_)
        ) {
            self.0 += 1;
        }
        std::ops::ControlFlow::Continue(())
    }
}

fn table_name(t: &TableFactor) -> Option<&ObjectName> {
    match t {
        TableFactor::Table { name, .. } => Some(name),
        _ => None,
    }
}

fn star() -> Vec<SelectItem> {
    vec![SelectItem::Wildcard(WildcardAdditionalOptions::default())]
}

/// Whether `sql` is one plain INSERT, UPDATE, DELETE or MERGE, and which
/// table it changes; `Err` says why it is not previewed. Pure.
pub fn target(sql: &str) -> Result<Target, String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|_| "the statement could not be read".to_string())?;
    if statements.len() != 1 {
        return Err("only a single statement is previewed".into());
    }
    let mut s = statements.remove(0);
    let mut writes = Writes(0);
    let _ = s.visit(&mut writes);
    let more_than_one = || {
        Err("a statement that changes data in more than one place (a data-changing WITH) is not previewed".to_string())
    };
    // `WITH … DELETE …` is a query whose body is the change.
    let dml = match &mut s {
        Statement::Query(q) if q.order_by.is_none() && q.limit_clause.is_none() => {
            match q.body.as_mut() {
                SetExpr::Insert(d)
                | SetExpr::Update(d)
                | SetExpr::Delete(d)
                | SetExpr::Merge(d) => d,
                _ => return Err("only INSERT, UPDATE, DELETE and MERGE are previewed".into()),
            }
        }
        other => other,
    };
    let (kind, table) = match dml {
        Statement::Insert(i) => {
            let TableObject::TableName(name) = &i.table else {
                return Err("an INSERT into a table function is not previewed".into());
            };
            let name = name.to_string();
            i.returning = Some(star());
            (Kind::Insert, name)
        }
        Statement::Update(u) => {
            if !u.table.joins.is_empty() {
                return Err("an UPDATE of a join is not previewed".into());
            }
            let name = table_name(&u.table.relation)
                .ok_or("an UPDATE of something other than a table is not previewed")?
                .to_string();
            u.returning = Some(star());
            (Kind::Update, name)
        }
        Statement::Delete(d) => {
            let from = match &d.from {
                sqlparser::ast::FromTable::WithFromKeyword(f)
                | sqlparser::ast::FromTable::WithoutKeyword(f) => f,
            };
            let [only] = from.as_slice() else {
                return Err("a DELETE from more than one table is not previewed".into());
            };
            if !d.tables.is_empty() || !only.joins.is_empty() {
                return Err("a DELETE from more than one table is not previewed".into());
            }
            let name = table_name(&only.relation)
                .ok_or("a DELETE from something other than a table is not previewed")?
                .to_string();
            d.returning = Some(star());
            (Kind::Delete, name)
        }
        Statement::Merge(m) => {
            let name = table_name(&m.table)
                .ok_or("a MERGE into something other than a table is not previewed")?
                .to_string();
            (Kind::Merge, name)
        }
        _ => return Err("only INSERT, UPDATE, DELETE and MERGE are previewed".into()),
    };
    if writes.0 != 1 {
        return more_than_one();
    }
    let mut relations = Vec::new();
    let _ = sqlparser::ast::visit_relations(&s, |r| {
        relations.push(r.to_string());
        std::ops::ControlFlow::<()>::Continue(())
    });
    relations.sort();
    relations.dedup();
    let returning_all = (kind != Kind::Merge).then(|| s.to_string());
    Ok(Target {
        kind,
        table,
        relations,
        returning_all,
    })
}

use crate::catalog::literal;

/// Built-in volatile functions a preview may run: the read proof's
/// harmless ones but `pg_sleep`, harmless to data but not to a preview (it
/// would hold the statement's locks while others wait).
fn preview_harmless() -> impl Iterator<Item = &'static str> {
    crate::classify::HARMLESS_VOLATILE
        .iter()
        .copied()
        .filter(|n| *n != "pg_sleep")
}

/// Functions whose value depends on the session that runs them: the
/// preview runs on the gateway's, the statement on the caller's.
const SESSION_BOUND: &[&str] = &[
    "current_setting",
    "pg_backend_pid",
    "inet_client_addr",
    "inet_client_port",
    "pg_my_temp_schema",
    "current_schema",
    "current_schemas",
    "pg_current_xact_id",
    "txid_current",
    "pg_current_xact_id_if_assigned",
];

fn literals<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.into_iter().map(literal).collect();
    if v.is_empty() {
        "NULL".into()
    } else {
        v.join(", ")
    }
}

/// Why running the change to `t` (calling `calls`) before anyone
/// approves it could leave something behind: one row per reason.
///
/// A function is trusted for a preview only when it is built in and not
/// volatile (or a harmless built-in), or declared immutable or stable by
/// a role the connection's role is not a member of: a caller could have
/// written a function of its own role's with any label. Functions are
/// found in the expressions themselves (`pg_node_tree`: defaults, checks,
/// domain constraints and defaults, policies, index expressions), not in
/// `pg_depend`, which records nothing for built-ins (`nextval('s'::text)`
/// names no sequence either).
fn hazards_query(t: &Target, calls: &[String]) -> String {
    format!(
        r#"WITH RECURSIVE reach(oid) AS (
    SELECT to_regclass({table})::oid
  UNION
    SELECT x.oid FROM reach r, LATERAL (
        SELECT i.inhrelid AS oid FROM pg_catalog.pg_inherits i WHERE i.inhparent = r.oid
      UNION ALL
        SELECT c.conrelid FROM pg_catalog.pg_constraint c
         WHERE c.contype = 'f' AND c.confrelid = r.oid
           AND (c.confdeltype IN ('c', 'n', 'd') OR c.confupdtype IN ('c', 'n', 'd'))
    ) x
),
coltypes(oid) AS (
    SELECT a.atttypid FROM reach r JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid
     WHERE a.attnum > 0 AND NOT a.attisdropped
  UNION
    SELECT x.oid FROM coltypes c, LATERAL (
        SELECT t.typbasetype AS oid FROM pg_catalog.pg_type t WHERE t.oid = c.oid AND t.typbasetype <> 0
      UNION ALL
        SELECT t.typelem FROM pg_catalog.pg_type t WHERE t.oid = c.oid AND t.typelem <> 0
      UNION ALL
        SELECT a.atttypid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_attribute a ON a.attrelid = t.typrelid
         WHERE t.oid = c.oid AND t.typrelid <> 0 AND a.attnum > 0 AND NOT a.attisdropped
    ) x
),
untrusted(oid) AS MATERIALIZED (
    SELECT p.oid FROM pg_catalog.pg_proc p
     WHERE NOT ((p.pronamespace = 'pg_catalog'::regnamespace
                 AND (p.provolatile <> 'v' OR p.proname IN ({harmless})))
             OR (p.pronamespace <> 'pg_catalog'::regnamespace AND p.provolatile <> 'v'
                 AND NOT pg_catalog.pg_has_role(current_user, p.proowner, 'MEMBER')))
),
exprs(what, tree) AS (
    SELECT format('the default of column %I of %s', a.attname, d.adrelid::regclass), d.adbin::text
      FROM reach r JOIN pg_catalog.pg_attrdef d ON d.adrelid = r.oid
      JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
  UNION ALL
    SELECT format('constraint %I of %s', c.conname, c.conrelid::regclass), c.conbin::text
      FROM reach r JOIN pg_catalog.pg_constraint c ON c.conrelid = r.oid WHERE c.conbin IS NOT NULL
  UNION ALL
    SELECT format('constraint %I of type %s', c.conname, c.contypid::regtype), c.conbin::text
      FROM coltypes t JOIN pg_catalog.pg_constraint c ON c.contypid = t.oid WHERE c.conbin IS NOT NULL
  UNION ALL
    SELECT format('the default of type %s', t.oid::regtype), t.typdefaultbin::text
      FROM coltypes c JOIN pg_catalog.pg_type t ON t.oid = c.oid WHERE t.typdefaultbin IS NOT NULL
  UNION ALL
    SELECT format('policy %I of %s', p.polname, p.polrelid::regclass),
           coalesce(p.polqual::text, '') || coalesce(p.polwithcheck::text, '')
      FROM reach r JOIN pg_catalog.pg_policy p ON p.polrelid = r.oid
  UNION ALL
    SELECT format('an index of %s', i.indrelid::regclass),
           coalesce(i.indexprs::text, '') || coalesce(i.indpred::text, '')
      FROM reach r JOIN pg_catalog.pg_index i ON i.indrelid = r.oid
),
hazard(what) AS (
    SELECT format('%s is not a table (a view or a foreign table)', c.oid::regclass)
      FROM reach r JOIN pg_catalog.pg_class c ON c.oid = r.oid WHERE c.relkind NOT IN ('r', 'p')
  UNION ALL
    SELECT format('it reads %s, which is not a table: what it runs is not proven for a preview', c.oid::regclass)
      FROM unnest(ARRAY[{relations}]::text[]) n(name)
      JOIN pg_catalog.pg_class c ON c.oid = to_regclass(n.name) WHERE c.relkind NOT IN ('r', 'p', 'm')
  UNION ALL
    SELECT format('table %s has trigger %I, which could act outside the transaction', t.tgrelid::regclass, t.tgname)
      FROM reach r JOIN pg_catalog.pg_trigger t ON t.tgrelid = r.oid WHERE NOT t.tgisinternal
  UNION ALL
    SELECT format('table %s has rule %I', w.ev_class::regclass, w.rulename)
      FROM reach r JOIN pg_catalog.pg_rewrite w ON w.ev_class = r.oid WHERE w.rulename <> '_RETURN'
  UNION ALL
    SELECT format('column %I of %s is an identity column (its sequence would advance)', a.attname, a.attrelid::regclass)
      FROM reach r JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid
     WHERE a.attidentity <> '' AND NOT a.attisdropped
  UNION ALL
    SELECT DISTINCT format('%s calls %s, which is not proven free of side effects for a preview', e.what, m[1]::oid::regprocedure)
      FROM exprs e, regexp_matches(e.tree, {func_ids}, 'g') m
     WHERE m[1]::oid IN (SELECT oid FROM untrusted)
  UNION ALL
    SELECT format('the input or output of type %s is %s, which is not proven free of side effects', t.oid::regtype, f.oid::regprocedure)
      FROM coltypes c JOIN pg_catalog.pg_type t ON t.oid = c.oid,
           unnest(ARRAY[t.typinput::oid, t.typoutput::oid, t.typreceive::oid, t.typsend::oid]) f(oid)
     WHERE f.oid <> 0 AND f.oid IN (SELECT oid FROM untrusted)
  UNION ALL
    SELECT DISTINCT format('it calls %s, which is not proven free of side effects for a preview', p.oid::regprocedure)
      FROM pg_catalog.pg_proc p
     WHERE p.proname IN ({calls}) AND p.oid IN (SELECT oid FROM untrusted)
  UNION ALL
    SELECT DISTINCT format('%s runs behind an operator, cast, type or aggregate and is not proven free of side effects for a preview', p.oid::regprocedure)
      FROM pg_catalog.pg_proc p
     WHERE p.pronamespace <> 'pg_catalog'::regnamespace AND p.oid IN (SELECT oid FROM untrusted)
       AND p.oid IN (
             SELECT oprcode::oid FROM pg_catalog.pg_operator
       UNION SELECT oprrest::oid FROM pg_catalog.pg_operator
       UNION SELECT oprjoin::oid FROM pg_catalog.pg_operator
       UNION SELECT castfunc FROM pg_catalog.pg_cast
       UNION SELECT typinput::oid FROM pg_catalog.pg_type
       UNION SELECT typoutput::oid FROM pg_catalog.pg_type
       UNION SELECT typreceive::oid FROM pg_catalog.pg_type
       UNION SELECT typsend::oid FROM pg_catalog.pg_type
       UNION SELECT amproc::oid FROM pg_catalog.pg_amproc
       UNION SELECT aggtransfn::oid FROM pg_catalog.pg_aggregate
       UNION SELECT aggfinalfn::oid FROM pg_catalog.pg_aggregate)
)
SELECT CASE WHEN to_regclass({table}) IS NULL THEN format('table %s does not exist', {table}) END
UNION ALL
SELECT what FROM hazard
LIMIT 5"#,
        table = literal(&t.table),
        harmless = literals(preview_harmless()),
        relations = literals(t.relations.iter().map(String::as_str)),
        calls = literals(calls.iter().map(String::as_str)),
        func_ids = crate::catalog::FUNC_IDS,
    )
}

/// Rows each user table gained, changed or lost so far in this
/// transaction (counted by PostgreSQL itself, cascades included).
const COUNTS: &str = "SELECT format('%I.%I', schemaname, relname), n_tup_ins, n_tup_upd, n_tup_del \
     FROM pg_catalog.pg_stat_xact_user_tables \
     WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY 1";

/// The primary key's columns of `table`, in key order.
fn primary_key_query(table: &str) -> String {
    format!(
        "SELECT a.attname, quote_ident(a.attname), format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_index i \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = to_regclass({}) AND i.indisprimary \
         ORDER BY array_position(i.indkey::int2[], a.attnum)",
        literal(table)
    )
}

/// Every masking rule's inspector in turn: the sample is read by
/// whoever reviews, who is not known yet, so it gets every rule of the
/// connection at once (never less than any one reviewer's).
struct Chain(Vec<crate::masking::MaskInspector>);

impl Inspector for Chain {
    fn frontend(&mut self, msg: &crate::frame::Message) -> Verdict {
        for i in &mut self.0 {
            if let Verdict::Refuse(r) = i.frontend(msg) {
                return Verdict::Refuse(r);
            }
        }
        Verdict::Pass
    }

    fn backend(&mut self, msg: &crate::frame::Message) -> Verdict {
        let mut now = msg.clone();
        let mut changed = false;
        for i in &mut self.0 {
            match i.backend(&now) {
                Verdict::Pass => {}
                Verdict::Rewrite(m) => {
                    now = m;
                    changed = true;
                }
                other => return other,
            }
        }
        if changed {
            Verdict::Rewrite(now)
        } else {
            Verdict::Pass
        }
    }
}

/// A held statement as the caller sent it.
pub enum Sql<'a> {
    /// A simple query.
    Simple(&'a str),
    /// A prepared statement's text, its parameter types, and the Bind
    /// that runs it.
    Bound {
        sql: &'a str,
        types: &'a [u32],
        bind: &'a crate::messages::Bind<'a>,
    },
}

impl Sql<'_> {
    fn text(&self) -> &str {
        match self {
            Sql::Simple(s) | Sql::Bound { sql: s, .. } => s,
        }
    }

    /// Run `text` (this statement, or a variant of it with the same
    /// parameters) on `session`.
    async fn run(
        &self,
        session: &mut UpstreamSession,
        text: &str,
        max_rows: usize,
        inspector: Option<&mut (dyn Inspector + '_)>,
    ) -> Result<crate::upstream::QueryOutcome, UpstreamError> {
        match self {
            Sql::Simple(_) => session.query_inspected(text, max_rows, inspector).await,
            Sql::Bound { types, bind, .. } => {
                session
                    .bound_inspected(text, types, bind, max_rows, inspector)
                    .await
            }
        }
    }
}

/// The preview's own limits, from the approval rule.
#[derive(Debug, Clone)]
pub struct Limits {
    pub statement_timeout: Duration,
    /// The caller's session's settings that change how literals read
    /// (`DateStyle`, …), set for the preview's transaction.
    pub settings: Vec<(String, String)>,
    /// The caller's startup parameters (those that pass to the target:
    /// `search_path`, `extra_float_digits`, …), for the preview's session.
    pub startup: Vec<(String, String)>,
}

impl Limits {
    fn lock_timeout(&self) -> Duration {
        (self.statement_timeout / 5).max(Duration::from_millis(50))
    }
}

/// Preview `sql` (already proven `write`): what it would change, or why
/// it was not run. Never fails: every failure is a reason on the review.
pub async fn preview(
    up: &PgUpstream,
    sql: &Sql<'_>,
    masks: &[Arc<portcullis_mask::Rule>],
    limits: Limits,
) -> Preview {
    let target = match target(sql.text()) {
        Ok(t) => t,
        Err(why) => return Preview::not_previewed(why),
    };
    let Some(_slot) = up.preview_slot() else {
        return Preview::not_previewed(format!(
            "{MAX_CONCURRENT} previews were already running on this connection"
        ));
    };
    // The target stops each statement; this bounds the rest (connecting,
    // a target that stops answering).
    let bound = limits.statement_timeout * 4 + Duration::from_secs(5);
    let run = async {
        let mut session = up
            // A caller's statement runs here: never kept for anyone.
            .connect(&limits.startup, crate::Owner::Nobody)
            .await
            .map_err(|e| e.to_string())?;
        let outcome = run(up, &mut session, sql, &target, masks, limits).await;
        // Whatever happened, nothing stays: roll back, and close the
        // session (a caller's statement ran in it).
        let _ = session.simple_rows("ROLLBACK").await;
        session.close().await;
        outcome
    };
    match tokio::time::timeout(bound, run).await {
        Ok(Ok(p)) => p,
        Ok(Err(why)) => Preview::not_previewed(why),
        Err(_) => Preview::not_previewed("the target did not answer in time"),
    }
}

/// The preview proper, on `session` (rolled back by the caller).
/// Built-ins whose value differs between the preview and the run (a
/// review's preview showed one random row and the run deleted another).
const CHANCE: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "gen_random_uuid",
    "clock_timestamp",
    "timeofday",
];

async fn run(
    up: &PgUpstream,
    session: &mut UpstreamSession,
    sql: &Sql<'_>,
    target: &Target,
    masks: &[Arc<portcullis_mask::Rule>],
    limits: Limits,
) -> Result<Preview, String> {
    let analysis = up.analyse(sql.text());
    // Names in attribute notation too: `c.tick` calls `tick(c)` (review).
    let calls: Vec<String> = analysis
        .calls
        .iter()
        .chain(&analysis.attributes)
        .map(|c| c.name.clone())
        .collect();
    if let Some(c) = calls.iter().find(|c| SESSION_BOUND.contains(&c.as_str())) {
        return Ok(Preview::not_previewed(format!(
            "it calls {c}, whose value depends on the caller's own session, not the gateway's"
        )));
    }
    if let Some(c) = calls.iter().find(|c| CHANCE.contains(&c.as_str())) {
        return Ok(Preview::not_previewed(format!(
            "it calls {c}, whose value differs from one run to the next: the rows shown need not be the rows changed"
        )));
    }
    // JIT off: the hazard query's estimates are large (recursive CTEs
    // over the catalog), and compiling it took seconds, not the query.
    let setup = format!(
        "BEGIN; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}; \
         SET LOCAL idle_in_transaction_session_timeout = {}; SET LOCAL jit = off",
        limits.statement_timeout.as_millis(),
        limits.lock_timeout().as_millis(),
        (limits.statement_timeout * 4).as_millis()
    );
    let server = |e: UpstreamError| e.to_string();
    session.simple_rows(&setup).await.map_err(server)?;
    for (name, value) in &limits.settings {
        // Set for this transaction only, as literals the target reads
        // the same whatever its settings.
        let set = format!(
            "SELECT pg_catalog.set_config({}, {}, true)",
            crate::catalog::literal(name),
            crate::catalog::literal(value)
        );
        session.simple_rows(&set).await.map_err(server)?;
    }
    let hazards = session
        .simple_rows(&hazards_query(target, &calls))
        .await
        .map_err(server)?;
    let reasons: Vec<String> = hazards
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    if !reasons.is_empty() {
        return Ok(Preview::not_previewed(reasons.join("; ")));
    }
    // A backend's counts include earlier transactions' not yet reported
    // (PostgreSQL 15 reports them when idle), so the statement's own
    // are the difference.
    let baseline = counts(session).await.map_err(server)?;
    session
        .simple_rows("SAVEPOINT portcullis_preview")
        .await
        .map_err(server)?;
    // Run once: the counts and the sample come from the same run. (The
    // text returning every column is the statement's own but for its
    // RETURNING list; the run-time check holds the real one to these
    // counts.)
    let mut chain = masking(up, session, masks).await;
    let shown = chain
        .as_ref()
        .is_some_and(|c| !c.0.iter().any(|i| i.reads_protected(sql.text())));
    let keys = match target.kind {
        Kind::Update if shown => primary_key(session, &target.table).await,
        _ => None,
    };
    let text = target.returning_all.as_deref().filter(|_| shown);
    let outcome = match (text, chain.as_mut()) {
        (Some(text), Some(chain)) => {
            let mut tap = KeyTap {
                keys: keys.as_deref().unwrap_or_default(),
                positions: None,
                captured: Vec::new(),
                inner: chain,
            };
            let out = sql.run(session, text, SAMPLE_ROWS, Some(&mut tap)).await;
            out.map(|o| Some((o, std::mem::take(&mut tap.captured))))
        }
        _ => sql.run(session, sql.text(), 0, None).await.map(|_| None),
    };
    let ran = match outcome {
        Ok(r) => r,
        // The code only: an error's text can quote the very values the
        // masking rules protect ("invalid input syntax: \"secret\"").
        Err(e) => {
            let code = match &e {
                UpstreamError::Server(m) => m.split(':').next().unwrap_or("?????").to_string(),
                _ => "the target did not answer".into(),
            };
            return Ok(Preview::not_previewed(format!(
                "running it failed (SQLSTATE {code})"
            )));
        }
    };
    let tables = since(&baseline, counts(session).await.map_err(server)?);
    let sample = match (ran, chain.as_mut()) {
        (Some((changed, found)), Some(chain)) => {
            Some(sample(session, target, changed, keys.as_deref(), &found, chain).await)
        }
        _ => Some(Sample {
            table: target.table.clone(),
            columns: Vec::new(),
            rows: Vec::new(),
            note: Some(
                if target.kind == Kind::Merge {
                    "MERGE shows no rows (PostgreSQL 15 has no RETURNING for it)"
                } else if chain.is_none() {
                    "no rows shown: the masking rules could not be prepared"
                } else {
                    "no rows shown: the statement reads a protected column into others"
                }
                .into(),
            ),
        }),
    };
    Ok(Preview::Counted { tables, sample })
}

/// Every masking rule's inspector, prepared on `session`; `None` when
/// one cannot be (then no row is shown).
async fn masking(
    up: &PgUpstream,
    session: &mut UpstreamSession,
    masks: &[Arc<portcullis_mask::Rule>],
) -> Option<Chain> {
    let mut chain = Chain(Vec::new());
    for rule in masks {
        chain.0.push(
            crate::masking::prepare(rule, session, up, &up.name)
                .await
                .ok()?,
        );
    }
    Some(chain)
}

async fn counts(session: &mut UpstreamSession) -> Result<Vec<TableChange>, UpstreamError> {
    Ok(session
        .simple_rows(COUNTS)
        .await?
        .into_iter()
        .filter_map(table_change)
        .collect())
}

/// The changes in `now` beyond `baseline`, tables that did not change
/// left out.
fn since(baseline: &[TableChange], now: Vec<TableChange>) -> Vec<TableChange> {
    now.into_iter()
        .filter_map(|mut c| {
            if let Some(b) = baseline.iter().find(|b| b.table == c.table) {
                c.inserted = c.inserted.saturating_sub(b.inserted);
                c.updated = c.updated.saturating_sub(b.updated);
                c.deleted = c.deleted.saturating_sub(b.deleted);
            }
            (c.inserted + c.updated + c.deleted > 0).then_some(c)
        })
        .collect()
}

fn table_change(row: Vec<Option<String>>) -> Option<TableChange> {
    let n = |i: usize| row.get(i)?.as_deref()?.parse::<u64>().ok();
    Some(TableChange {
        table: row.first()?.clone()?,
        inserted: n(1)?,
        updated: n(2)?,
        deleted: n(3)?,
    })
}

/// The rows the run returned, masked, as before and after (an UPDATE's
/// old values found by key once the run is undone).
async fn sample(
    session: &mut UpstreamSession,
    target: &Target,
    changed: crate::upstream::QueryOutcome,
    keys: Option<&[KeyColumn]>,
    found: &[Vec<Option<String>>],
    chain: &mut Chain,
) -> Sample {
    let table = session
        .simple_rows(&format!(
            "SELECT to_regclass({})::text",
            literal(&target.table)
        ))
        .await
        .ok()
        .and_then(|r| r.into_iter().next()?.into_iter().next()?)
        .unwrap_or_else(|| target.table.clone());
    let mut out = Sample {
        table,
        columns: changed.columns.clone(),
        rows: Vec::new(),
        note: None,
    };
    let rows = changed.rows.into_iter();
    out.rows = match target.kind {
        Kind::Delete => rows
            .map(|r| SampleRow {
                before: Some(r),
                after: None,
            })
            .collect(),
        Kind::Insert | Kind::Merge => rows
            .map(|r| SampleRow {
                before: None,
                after: Some(r),
            })
            .collect(),
        Kind::Update => {
            let before = match keys {
                Some(k) => old_rows(session, &out.table, k, found, chain).await,
                None => None,
            };
            if before.is_none() {
                out.note = Some(
                    "the values before are not shown: the table has no primary key to find them by"
                        .into(),
                );
            }
            rows.enumerate()
                .map(|(i, r)| SampleRow {
                    before: before.as_ref().and_then(|b: &Vec<_>| b.get(i).cloned()),
                    after: Some(r),
                })
                .collect()
        }
    };
    out
}

/// A primary key column: its name as the target reports it, and quoted
/// for SQL.
struct KeyColumn {
    name: String,
    quoted: String,
    /// Its type as SQL names it (`integer`, `character varying(20)`): a
    /// key value read as text is cast back to it.
    sql_type: String,
}

/// The primary key's columns, if the table has one.
async fn primary_key(session: &mut UpstreamSession, table: &str) -> Option<Vec<KeyColumn>> {
    let cols: Vec<KeyColumn> = session
        .simple_rows(&primary_key_query(table))
        .await
        .ok()?
        .into_iter()
        .filter_map(|r| {
            let mut r = r.into_iter();
            Some(KeyColumn {
                name: r.next()??,
                quoted: r.next()??,
                sql_type: r.next()??,
            })
        })
        .collect();
    (!cols.is_empty()).then_some(cols)
}

/// Reads the key of each changed row as the target sent it, before the
/// masking chain sees the row: the key finds the row's old values, and
/// is never shown itself unless the (masked) row shows it.
struct KeyTap<'a> {
    keys: &'a [KeyColumn],
    positions: Option<Vec<usize>>,
    captured: Vec<Vec<Option<String>>>,
    inner: &'a mut Chain,
}

impl Inspector for KeyTap<'_> {
    fn frontend(&mut self, msg: &crate::frame::Message) -> Verdict {
        self.inner.frontend(msg)
    }

    fn backend(&mut self, msg: &crate::frame::Message) -> Verdict {
        use crate::frame::tag;
        match msg.tag {
            tag::ROW_DESCRIPTION => {
                let names = crate::upstream::row_description_names(&msg.body);
                self.positions = self
                    .keys
                    .iter()
                    .map(|k| names.iter().position(|n| *n == k.name))
                    .collect();
            }
            tag::DATA_ROW if self.captured.len() < SAMPLE_ROWS => {
                if let Some(at) = &self.positions {
                    let cells = crate::upstream::data_row_text(&msg.body);
                    self.captured.push(
                        at.iter()
                            .map(|&i| cells.get(i).cloned().flatten())
                            .collect(),
                    );
                }
            }
            _ => {}
        }
        self.inner.backend(msg)
    }
}

/// The values before an UPDATE of the sample's rows, in the same order,
/// found by key once the update is undone.
async fn old_rows(
    session: &mut UpstreamSession,
    table: &str,
    keys: &[KeyColumn],
    found: &[Vec<Option<String>>],
    chain: &mut Chain,
) -> Option<Vec<Vec<Option<String>>>> {
    session
        .simple_rows("ROLLBACK TO SAVEPOINT portcullis_preview")
        .await
        .ok()?;
    let mut rows = Vec::new();
    for key in found {
        let cond = keys
            .iter()
            .zip(key)
            .map(|(k, v)| match v {
                Some(v) => format!("{} = CAST({} AS {})", k.quoted, literal(v), k.sql_type),
                None => format!("{} IS NULL", k.quoted),
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let one = session
            .query_inspected(
                &format!("SELECT * FROM {table} WHERE {cond}"),
                1,
                Some(&mut *chain),
            )
            .await
            .ok()?;
        rows.push(one.rows.into_iter().next()?);
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_changes_are_previewable() {
        let t = target("DELETE FROM orders WHERE created_at < now() - interval '30 days'").unwrap();
        assert_eq!(t.kind, Kind::Delete);
        assert_eq!(t.table, "orders");
        assert!(t.returning_all.unwrap().ends_with("RETURNING *"));
        let t = target("update public.\"Orders\" set x = 1 where id = 2 returning id").unwrap();
        assert_eq!(
            (t.kind, t.table.as_str()),
            (Kind::Update, "public.\"Orders\"")
        );
        assert!(t.returning_all.unwrap().ends_with("RETURNING *"));
        let t = target("INSERT INTO t (a) SELECT a FROM u").unwrap();
        assert_eq!((t.kind, t.table.as_str()), (Kind::Insert, "t"));
        // What it reads is checked too (a view can run anything).
        assert_eq!(t.relations, vec!["t".to_string(), "u".to_string()]);
        let t = target("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE").unwrap();
        assert_eq!((t.kind, t.returning_all), (Kind::Merge, None));
    }

    #[test]
    fn anything_else_says_why() {
        for (sql, why) in [
            ("SELECT 1", "only INSERT"),
            ("DELETE FROM a; DELETE FROM b", "single statement"),
            (
                "WITH x AS (DELETE FROM a RETURNING *) DELETE FROM b WHERE id IN (SELECT id FROM x)",
                "more than one place",
            ),
            (
                "WITH x AS (DELETE FROM a RETURNING *) SELECT * FROM x",
                "only INSERT",
            ),
            ("DROP TABLE t", "only INSERT"),
            (
                "WITH old AS (SELECT id FROM a WHERE x) DELETE FROM a WHERE id IN (SELECT id FROM old)",
                "",
            ),
            ("DELETE FROM", "could not be read"),
            ("UPDATE t SET a = 1 FROM u WHERE t.id = u.id", ""),
        ] {
            match target(sql) {
                Err(e) => assert!(e.contains(why), "{sql}: {e}"),
                Ok(t) => assert!(why.is_empty(), "{sql}: {t:?}"),
            }
        }
    }

    #[test]
    fn counts_are_the_statements_own() {
        let c = |t: &str, i, u, d| TableChange {
            table: t.into(),
            inserted: i,
            updated: u,
            deleted: d,
        };
        let baseline = [c("public.a", 5, 0, 4), c("public.gone", 1, 1, 1)];
        let now = vec![
            c("public.a", 5, 0, 8),
            c("public.b", 0, 2, 0),
            c("public.gone", 1, 1, 1),
        ];
        assert_eq!(
            since(&baseline, now),
            vec![c("public.a", 0, 0, 4), c("public.b", 0, 2, 0)]
        );
    }

    #[test]
    fn literals_are_quoted() {
        let t = Target {
            kind: Kind::Delete,
            table: "x'; DROP TABLE t; --".into(),
            relations: vec!["it's".into()],
            returning_all: None,
        };
        let q = hazards_query(&t, &["f'g".into()]);
        // Caller-written names reach the query only as hex, whatever the
        // server's `standard_conforming_strings`.
        for name in ["x'; DROP TABLE t; --", "it's", "f'g"] {
            assert!(q.contains(&literal(name)), "{name}");
        }
        assert!(!q.contains("DROP TABLE"));
        assert!(!preview_harmless().any(|n| n == "pg_sleep"));
    }
}
