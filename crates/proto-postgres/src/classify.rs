//! Statement classification with a real SQL parser. Pure: SQL text in, a
//! class out.
//!
//! Prove, don't guess: a statement is a read only if its kind is on an
//! allow-list *and* every function it calls is known to have no side
//! effects. [`analyse`] returns the class the statement's kinds give and
//! the calls still to be proven; the front proves them against the
//! target's own catalog (`pg_proc.provolatile`, see [`crate::catalog`]) and
//! [`Analysis::resolve`] combines the two. [`classify`] is the same without
//! a catalog: only a short built-in list counts as proven there. Text the
//! parser cannot read is `Unknown`, never a guess.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AccessExpr, BinaryOperator, CopyTarget, Expr, ObjectName, Query, Select, Statement,
    TableFactor, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};

/// What a statement can do, from least to most powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Class {
    /// Reads data, or only controls the session/transaction harmlessly.
    #[default]
    Read,
    /// Changes data.
    Write,
    /// Changes schema.
    Ddl,
    /// Changes privileges, server state, or the session's safety settings.
    Admin,
    /// Not proven: the parser could not read it, or it runs code whose
    /// effects the gateway cannot see (a volatile or unknown function, a
    /// procedure, a prepared statement).
    Unknown,
}

impl Class {
    /// The class with its article, for messages: "a write statement",
    /// "an admin statement".
    pub fn statement(self) -> &'static str {
        match self {
            Class::Read => "a read statement",
            Class::Write => "a write statement",
            Class::Ddl => "a DDL statement",
            Class::Admin => "an admin statement",
            Class::Unknown => "a statement that could not be proven free of side effects",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Ddl => "ddl",
            Class::Admin => "admin",
            Class::Unknown => "unknown",
        }
    }
}

/// A function a statement calls, by the name it was written with:
/// lower-cased unless quoted, as PostgreSQL folds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Call {
    /// The schema, when the call names one.
    pub schema: Option<String>,
    pub name: String,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What the target's catalog says about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Every function the name can reach is immutable or stable (or a
    /// volatile built-in known to be harmless).
    Pure,
    /// Some function the name can reach is volatile.
    Volatile,
    /// No function of that name is visible: not proven.
    Missing,
}

/// A statement's class before its calls are proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The class its kinds (and calls known by name) give.
    pub class: Class,
    /// Calls that still need a proof; the statement is no more than
    /// `class` only if each is [`Proof::Pure`].
    pub calls: Vec<Call>,
    /// Names that may be calls in attribute notation: PostgreSQL reads
    /// `t.f` (and `(t).f`) as `f(t)` when `t` has no column `f`. A review
    /// ran a volatile `archive(customers)` unheld as `c.archive`. Proven
    /// like calls, except that no function of the name is fine (a
    /// column).
    pub attributes: Vec<Call>,
    /// What the statement reads by name, for the masker's column rules.
    pub refs: References,
    /// It evaluates expressions (a query, or an expression beyond a plain
    /// value or name), so PostgreSQL may call operators, casts and the
    /// like on its own: `SELECT 1 = '1'::text` touches no relation and
    /// names no function, yet runs an operator's code.
    pub evaluates: bool,
    /// How many of its statements may write: each statement of a
    /// multi-statement text that the parse alone does not show to be a
    /// read (a write, DDL, admin, or one calling functions that need a
    /// proof). A text the parser could not read counts each of its
    /// statements (more, never less). What a writes budget counts.
    pub writes: usize,
    /// How many statements the text holds (each `;`-separated part of a
    /// text the parser could not read).
    pub statements: usize,
    /// Running it may redefine named prepared statements or portals
    /// where the protocol does not show it: a keyword that prepares,
    /// deallocates, declares, closes or discards, or that runs code
    /// (`DO`, `CALL`, `EXECUTE`), outside literals and quoted names; any
    /// text the parser could not read. (Calls of the caller's functions
    /// are the masker's to weigh: it knows which are built-in.)
    pub redefines: bool,
    /// The cursors it declares and fetches from, by name as PostgreSQL
    /// folds it: a cursor's query runs at each FETCH, so its proof is
    /// taken again there.
    pub cursors: Cursors,
}

/// Cursor names a text declares and fetches from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors {
    pub declared: Vec<String>,
    pub fetched: Vec<String>,
}

/// The names a statement refers to, folded as PostgreSQL folds them: what
/// column rules need to know whether a computed output may derive from a
/// protected column (see `crate::masking`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Relations read or written (the last part of the name); names of
    /// the statement's own CTEs are left out.
    pub relations: std::collections::BTreeSet<String>,
    /// The same relations by their whole name as written, each part
    /// folded and quoted (`"s1"."t"` and `"s2"."t"` are two): what a
    /// budget of distinct tables counts.
    pub qualified: std::collections::BTreeSet<String>,
    /// Identifiers used as values: a column (the last part of a compound
    /// name), or a bare name that may be a whole row (`row_to_json(t)`),
    /// and the qualifier of `t.*` inside an expression.
    pub values: std::collections::BTreeSet<String>,
    /// Aliases given to relations, and the relation each stands for.
    pub aliases: std::collections::BTreeMap<String, String>,
    /// A `*` or `t.*` in a select list: every column of a relation.
    pub wildcard: bool,
    /// An alias renames columns somewhere (`FROM users u(a, b, x)`,
    /// `(SELECT u.* …) s(a, b, x)`, `WITH c(a, b, x) AS …`): a name read
    /// through it says nothing about which column it is.
    pub renames_columns: bool,
    /// What the statement returns was decided elsewhere (`FETCH`,
    /// `EXECUTE`), or the text could not be read: nothing is known.
    pub opaque: bool,
}

impl References {
    fn opaque() -> Self {
        Self {
            opaque: true,
            ..Self::default()
        }
    }
}

impl Analysis {
    /// The writes a writes budget counts for this text once its class is
    /// proven `class`: every statement when the catalog could not prove
    /// it (a view calling a volatile function reads as a read to the
    /// parser), else those that may write; at least one.
    pub fn writes_under(&self, class: Class) -> usize {
        match class {
            Class::Unknown => self.statements,
            _ => self.writes,
        }
        .max(1)
    }

    /// The statement's class once each call has a proof.
    pub fn resolve(&self, mut proof: impl FnMut(&Call) -> Proof) -> Class {
        if self.class == Class::Unknown {
            return Class::Unknown;
        }
        let calls = self.calls.iter().all(|c| proof(c) == Proof::Pure);
        // A name no function has is a column.
        let attributes = self.attributes.iter().all(|c| proof(c) != Proof::Volatile);
        if calls && attributes {
            self.class
        } else {
            Class::Unknown
        }
    }

    /// Whether the catalog has anything to say.
    pub fn needs_proof(&self) -> bool {
        self.class != Class::Unknown && !(self.calls.is_empty() && self.attributes.is_empty())
    }
}

/// Analyses of statement texts seen before. [`analyse`] is a pure
/// function of the text, so a remembered answer is the answer; parsing is
/// most of the cost of a proof. Bounded in entries and in text length (a
/// long text is analysed every time rather than kept), and emptied when
/// full.
#[derive(Default)]
pub struct AnalysisCache {
    map: std::sync::Mutex<std::collections::HashMap<Box<str>, std::sync::Arc<Analysis>>>,
}

/// Texts kept at most.
const ANALYSES_MAX: usize = 1024;
/// Longest text kept.
const ANALYSIS_TEXT_MAX: usize = 4096;

impl AnalysisCache {
    pub fn get_or_analyse(&self, sql: &str) -> std::sync::Arc<Analysis> {
        if sql.len() > ANALYSIS_TEXT_MAX {
            return std::sync::Arc::new(analyse(sql));
        }
        let shared = number_free_key(sql);
        // Only a panic while holding it poisons it; the map is still whole.
        let lock = || self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = lock().get(shared.as_deref().unwrap_or(sql)) {
            return a.clone();
        }
        let a = std::sync::Arc::new(analyse(sql));
        // A text the parser could not read is kept under its own text
        // only: a number out of range (`varchar(99999999999999999999)`)
        // fails where any other would parse, so `Unknown` is not an
        // answer for the texts that share its numbers-free key.
        let key = match &shared {
            Some(k) if a.class != Class::Unknown => k.as_str(),
            _ => sql,
        };
        let mut map = lock();
        if map.len() >= ANALYSES_MAX {
            map.clear();
        }
        map.insert(key.into(), a.clone());
        a
    }
}

/// Statements whose analysis no number in them can change, by their first
/// word: the walker branches on kinds, names and calls, never on a
/// numeric literal's value. (Not EXPLAIN, SET, COPY, FETCH…: an option or
/// a setting may be a number.)
const NUMBER_FREE_KINDS: &[&str] = &["select", "insert", "update", "delete", "values", "with"];

/// The cache key for a text that differs from others only in its numbers
/// (`… WHERE aid = 12345`, sent with a new literal each time by clients
/// of the simple protocol): each number replaced by a NUL (which no plain
/// text holds; `#` is an operator). Only for the
/// plainest texts, where telling a number from anything else needs no
/// lexer: ASCII, one statement of a kind in [`NUMBER_FREE_KINDS`], and no
/// quote, dollar, backslash or comment anywhere — so every digit run
/// that does not continue a name is a numeric literal (or part of one),
/// and two texts with the same key parse to the same tree but for the
/// values of those literals. `None`: the text is its own key.
fn number_free_key(sql: &str) -> Option<String> {
    // One statement: a semicolon only at the very end.
    let body = sql.trim_end();
    let body = body.strip_suffix(';').unwrap_or(body);
    let plain = body
        .bytes()
        .all(|c| c.is_ascii() && !matches!(c, b'\'' | b'"' | b'$' | b'\\' | b';' | 0));
    if !plain || body.contains("--") || body.contains("/*") {
        return None;
    }
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()?
        .to_ascii_lowercase();
    if !NUMBER_FREE_KINDS.contains(&first.as_str()) {
        return None;
    }
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut key = String::with_capacity(sql.len());
    let mut prev = b' ';
    let mut in_number = false;
    for &c in sql.as_bytes() {
        if c.is_ascii_digit() && (in_number || !ident(prev)) {
            if !in_number {
                key.push('\0');
            }
            in_number = true;
        } else {
            // A number run into a name (`1e5`, `0x1F`, `9x1F`, `1_000`)
            // lexes by its digits (`0x` is hex, `9x` a number and an
            // alias): not merged.
            if in_number && (c.is_ascii_alphabetic() || c == b'_') {
                return None;
            }
            in_number = false;
            key.push(c as char);
        }
        prev = c;
    }
    Some(key)
}

/// The class of the most powerful statement in `sql` (which may hold
/// several, separated by semicolons), with only the built-in list of
/// side-effect-free functions as proof. The front proves calls against the
/// target's catalog instead ([`analyse`] + [`Analysis::resolve`]).
pub fn classify(sql: &str) -> Class {
    analyse(sql).resolve(builtin_proof)
}

/// The proof the built-in list gives without a catalog: the common
/// functions of `pg_catalog` that are immutable or stable there.
pub fn builtin_proof(c: &Call) -> Proof {
    let in_catalog = c.schema.as_deref().is_none_or(|s| s == "pg_catalog");
    if in_catalog
        && (BUILTIN_PURE.contains(&c.name.as_str()) || HARMLESS_VOLATILE.contains(&c.name.as_str()))
    {
        Proof::Pure
    } else {
        Proof::Missing
    }
}

/// The longest text analysed; a longer one is `unknown` (refused on
/// read-only connections, held where approvals apply). Tokenizing and
/// parsing take about 500 bytes of memory per byte of text, on the
/// async workers: a review stalled every caller for 15 s and ran the
/// gateway out of memory with 8 MB statements.
pub const MAX_ANALYSED: usize = 128 << 10;

/// Every statement in `sql`, classified by kind, and the calls it makes
/// that need a proof.
pub fn analyse(sql: &str) -> Analysis {
    if sql.trim().trim_matches(';').trim().is_empty() {
        return Analysis {
            class: Class::Read,
            calls: Vec::new(),
            attributes: Vec::new(),
            refs: References::default(),
            evaluates: false,
            writes: 0,
            statements: 0,
            redefines: false,
            cursors: Cursors::default(),
        };
    }
    let unknown = |writes: usize| Analysis {
        class: Class::Unknown,
        calls: Vec::new(),
        attributes: Vec::new(),
        refs: References::opaque(),
        evaluates: true,
        writes,
        statements: writes,
        redefines: true,
        cursors: Cursors::default(),
    };
    let dialect = PostgreSqlDialect {};
    // One tokenization serves the differential check and the parse.
    // Text the gateway cannot read: every `;` may end a statement (some
    // inside literals: more, never less). Counting the tokenizer's own
    // `;` undercounted where it lexes differently from PostgreSQL (a
    // review hid two INSERTs from a writes budget behind `$a€$`).
    let separated = sql.matches(';').count() + 1;
    if sql.len() > MAX_ANALYSED {
        return unknown(separated);
    }
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
        return unknown(separated);
    };
    if lexes_differently(&tokens) {
        return unknown(separated);
    }
    let redefines = redefines(&tokens);
    if let Some((name, whole)) = table_statement(sql).filter(|_| !has_escaped_identifier(sql)) {
        let class = match OTHER_SESSIONS.contains(&name.as_str()) {
            true => Class::Admin,
            false => Class::Read,
        };
        return Analysis {
            class,
            calls: Vec::new(),
            attributes: Vec::new(),
            refs: References {
                relations: [name].into(),
                qualified: [whole].into(),
                ..References::default()
            },
            evaluates: true,
            writes: 0,
            statements: 1,
            redefines,
            cursors: Cursors::default(),
        };
    }
    let Ok(stmts) = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
    else {
        return unknown(separated);
    };
    let mut w = Walker::default();
    let mut writes = 0;
    for s in &stmts {
        let mut one = Walker::default();
        walk_top(&mut one, s);
        if one.class >= Class::Write || !one.calls.is_empty() {
            writes += 1;
        }
        walk_top(&mut w, s);
    }
    let mut calls: Vec<Call> = w.calls.into_iter().collect();
    calls.sort();
    let mut refs = w.refs;
    for cte in &w.ctes {
        refs.relations.remove(cte);
        refs.qualified.remove(&quote_part(cte));
    }
    // `U&"\0073sn"` is `ssn` to PostgreSQL (with any escape character
    // `UESCAPE` names): names spelled with escapes are not compared.
    refs.opaque |= has_escaped_identifier(sql);
    Analysis {
        class: w.class,
        calls,
        attributes: w.attributes.into_iter().collect(),
        refs,
        evaluates: w.evaluates,
        writes,
        statements: stmts.len(),
        redefines,
        cursors: cursors(&stmts),
    }
}

/// The cursors `stmts` declare and fetch from.
fn cursors(stmts: &[Statement]) -> Cursors {
    let mut c = Cursors::default();
    for s in stmts {
        match s {
            Statement::Declare { stmts, .. } => {
                c.declared
                    .extend(stmts.iter().flat_map(|d| d.names.iter()).map(folded));
            }
            Statement::Fetch { name, .. } => c.fetched.push(folded(name)),
            _ => {}
        }
    }
    c
}

/// What `sql` may change of its session's settings: the names a `SET` or
/// `RESET` at a statement's start names (lower case; `SET TIME ZONE` is
/// `timezone`), or `None` where it may change any (`RESET ALL`,
/// `DISCARD`, a `set_config` call, text the tokenizer cannot read). A
/// preview runs in a session of its own and must know what the caller's
/// holds (a review's `SET extra_float_digits = 0` made a preview show
/// one row and the run delete another).
pub fn settings_set(sql: &str) -> Option<Vec<String>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let sig: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let word = |t: Option<&&Token>| match t {
        Some(Token::Word(w)) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    };
    let mut names = Vec::new();
    let mut at_start = true;
    for (i, t) in sig.iter().enumerate() {
        if matches!(t, Token::SemiColon) {
            at_start = true;
            continue;
        }
        if let Token::Word(w) = t {
            let v = w.value.to_ascii_lowercase();
            // Quoted too: `"set_config"(…)` is the same call (code review).
            if v == "set_config" {
                return None;
            }
            if w.quote_style.is_some() {
                at_start = false;
                continue;
            }
            if v == "discard" {
                return None;
            }
            if at_start && (v == "set" || v == "reset") {
                let mut j = i + 1;
                while matches!(word(sig.get(j)).as_deref(), Some("local" | "session")) {
                    j += 1;
                }
                match word(sig.get(j)).as_deref() {
                    None | Some("all") => return None,
                    Some("time") => names.push("timezone".to_string()),
                    Some(n) => names.push(n.to_string()),
                }
            }
        }
        at_start = false;
    }
    Some(names)
}

/// Keywords that may redefine prepared statements or portals.
const REDEFINE: &[&str] = &[
    "prepare",
    "deallocate",
    "declare",
    "close",
    "discard",
    "do",
    "call",
    "execute",
];

/// Whether `sql` holds one of [`REDEFINE`] anywhere, as a run of letters
/// in any case: literals and quoted names included, so never less than
/// [`Analysis::redefines`] finds (a keyword is such a run in the text).
/// The cheap first look: a text without one is not analysed for it.
pub fn may_redefine(sql: &str) -> bool {
    sql.split(|c: char| !c.is_ascii_alphabetic())
        .any(|w| REDEFINE.iter().any(|k| w.eq_ignore_ascii_case(k)))
}

/// Words that start a statement changing the schema, or that run code
/// which may ([`may_change_schema`]).
const CHANGES_SCHEMA: &[&[u8]] = &[
    b"create",
    b"alter",
    b"drop",
    b"comment",
    b"grant",
    b"revoke",
    b"security",
    b"import",
    b"reassign",
    b"load",
    b"do",
    b"call",
    b"execute",
    // `COMMIT PREPARED`: a prepared transaction's DDL shows when it ends.
    b"prepared",
];

/// Words that start a write: beside a system catalog's name
/// (`pg_…`), a change to the catalog itself.
const WRITES: &[&[u8]] = &[b"insert", b"update", b"delete", b"merge", b"copy"];

/// Whether `sql` may change the schema: it holds one of
/// [`CHANGES_SCHEMA`] as a word in any case, or one of [`WRITES`] and a
/// name starting `pg_` (literals, comments and quoted names included:
/// more, never less than a parse would find). For connections whose
/// statements are not parsed: DDL there makes the catalog proofs of every
/// connection stale. A word is a run of what PostgreSQL reads inside one
/// identifier (letters, digits, `_`, `$`, any byte past ASCII), so
/// `create_time` is not `create` (a review's ORM columns made every read
/// on the guarded connections look the catalog up again); a keyword that
/// starts a statement always has something else before it. Bytes, not
/// text: a statement that is not UTF-8 is looked at too.
pub fn may_change_schema(sql: &[u8]) -> bool {
    let inside = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$') || *c >= 0x80;
    let mut words = sql.split(|c| !inside(c)).filter(|w| !w.is_empty());
    // A name spelled with escapes (`U&"\0070g_proc"`) may be a catalog's
    // (review).
    let escaped = sql
        .windows(3)
        .any(|w| w[0].eq_ignore_ascii_case(&b'u') && w[1] == b'&' && w[2] == b'"');
    let (mut writes, mut catalog) = (false, escaped);
    words.any(|w| {
        writes |= WRITES.iter().any(|k| w.eq_ignore_ascii_case(k));
        catalog |= w.len() > 3 && w[..3].eq_ignore_ascii_case(b"pg_");
        CHANGES_SCHEMA.iter().any(|k| w.eq_ignore_ascii_case(k)) || (writes && catalog)
    })
}

/// Whether a write statement writes to a system catalog (a relation
/// named `pg_…`, as only the system's are by default): a change to the
/// schema as much as DDL (a superuser's `UPDATE pg_proc SET prosrc = …`).
pub fn writes_catalog(a: &Analysis) -> bool {
    a.refs.relations.iter().any(|r| r.starts_with("pg_")) || a.refs.opaque
}

/// Whether a keyword (an unquoted word) may redefine prepared statements
/// or portals (see [`Analysis::redefines`]). By words rather than by
/// parse: a statement the parser does not know still counts, and a false
/// alarm only costs a description again.
fn redefines(tokens: &[TokenWithSpan]) -> bool {
    let mut words = tokens.iter().filter_map(|t| match &t.token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.as_str()),
        _ => None,
    });
    words.any(|w| REDEFINE.iter().any(|k| w.eq_ignore_ascii_case(k)))
}

/// Walk one top-level statement. An EXPLAIN is walked into, run or not:
/// planning evaluates more than it seems. A review turned read-only off
/// with `EXPLAIN EXECUTE p(set_config(…))`: EXECUTE's parameters are
/// evaluated when it is planned, and the walk had stopped at the EXPLAIN.
/// Planning also folds functions and calls operators' estimators, hence
/// `evaluates`.
fn walk_top(w: &mut Walker, s: &Statement) {
    match s {
        Statement::Explain { statement, .. } if !explain_runs(s) => {
            // Its calls are proven (planning folds functions), its class
            // is not taken: what it would do is not done, unless it is
            // beyond reading (an EXECUTE, unreadable text).
            let before = w.class;
            w.walk(statement);
            // Planning a write folds the defaults of the columns it
            // fills (a column's or its domain's), which the text does not
            // name: a re-review's immutable-declared default ended another
            // session from `EXPLAIN INSERT` on a read-only connection.
            let opaque = matches!(
                statement.as_ref(),
                Statement::Execute { .. }
                    | Statement::Insert { .. }
                    | Statement::Update { .. }
                    | Statement::Merge { .. }
            );
            w.class = if w.class == Class::Unknown || opaque {
                Class::Unknown
            } else {
                before
            };
            w.evaluates = true;
        }
        Statement::Explain { statement, .. } => w.walk(statement),
        _ => w.walk(s),
    }
}

/// Whether `sql` has a Unicode-escaped identifier (`U&"…"`), whose name
/// only PostgreSQL's own unescaping gives.
fn has_escaped_identifier(sql: &str) -> bool {
    sql.as_bytes()
        .windows(3)
        .any(|w| w[0].eq_ignore_ascii_case(&b'u') && w[1] == b'&' && w[2] == b'"')
}

/// Whether the parser's tokens could differ from PostgreSQL's lexer, so
/// that text one reads as a string or a comment the other reads as a
/// statement. Not proven: unknown.
/// - An operator token holding a comment opener (PostgreSQL ends an
///   operator before `/*` or `--`, the parser does not).
/// - A `$` placeholder run straight into a word that begins with a
///   character other than a letter or digit beyond ASCII: PostgreSQL reads
///   `$a€$` as a dollar-quote tag (any byte past ASCII may be in one), the
///   parser a placeholder `$a` and a word `€$`. A review ran `select $a€$,
///   ' $a€$; drop table t; -- '` as a read on a connection whose approvals
///   held DDL, and the table was dropped.
/// - Two tokens that touch and spell `--` or `/*` across their boundary:
///   the parser's `?-` ends before the second `-` of a comment PostgreSQL
///   sees (`'{}'::jsonb ?-- '` hid statements after a newline; review).
/// - Data after `COPY … FROM STDIN;` in the text itself: the parser takes
///   it as the copy's rows, PostgreSQL runs it as statements once the copy
///   ends (review: a `DROP TABLE` behind an allowed COPY).
/// - A hex string holding anything but hex digits: the parser reads
///   backslash escapes in `X'…'`, PostgreSQL ends it at the first quote
///   (`X'\'); GRANT …` ran the GRANT; review).
fn lexes_differently(tokens: &[TokenWithSpan]) -> bool {
    // A token that differs on its own.
    let differs = |t: &Token| match t {
        Token::CustomBinaryOperator(op) => op.contains("/*") || op.contains("--"),
        Token::CopyData { .. } => true,
        Token::HexStringLiteral(s) => !s.chars().all(|c| c.is_ascii_hexdigit()),
        _ => false,
    };
    // Words, numbers, quoted strings, blanks and punctuation neither end
    // in `-` or `/` nor begin with `-` or `*`: their texts are not built.
    let plain = |t: &Token| {
        matches!(
            t,
            Token::Word(_)
                | Token::Number(..)
                | Token::SingleQuotedString(_)
                | Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)
                | Token::Comma
                | Token::Period
                | Token::LParen
                | Token::RParen
                | Token::SemiColon
        )
    };
    let spelled_across = |a: &Token, b: &Token| {
        if plain(a) || plain(b) {
            return false;
        }
        let (a, b) = (a.to_string(), b.to_string());
        (a.ends_with('-') && b.starts_with('-')) || (a.ends_with('/') && b.starts_with('*'))
    };
    let dollar_tag = |a: &Token, b: &Token| {
        let starts_past_ascii = |s: &str| s.chars().next().is_some_and(|c| !c.is_ascii());
        matches!(a, Token::Placeholder(p) if p.starts_with('$'))
            && match b {
                Token::Word(w) => starts_past_ascii(&w.value),
                other => starts_past_ascii(&other.to_string()),
            }
    };
    tokens.iter().any(|t| differs(&t.token))
        || tokens.windows(2).any(|w| {
            dollar_tag(&w[0].token, &w[1].token) || spelled_across(&w[0].token, &w[1].token)
        })
}

/// `TABLE name` (PostgreSQL's short form of `SELECT * FROM name`), which
/// the parser does not read: a read only when what follows is exactly one
/// relation name, plain or quoted, qualified or not. The relation's own
/// name (last part, folded) when it is one.
fn table_statement(sql: &str) -> Option<(String, String)> {
    let s = sql.trim().trim_end_matches(';').trim_end();
    if !is_table_statement(s) {
        return None;
    }
    let rest = s[5..].trim();
    let parts = split_name(rest);
    let whole = parts
        .iter()
        .map(|p| quote_part(p))
        .collect::<Vec<_>>()
        .join(".");
    Some((parts.last()?.clone(), whole))
}

/// The parts of a dotted name, each folded as PostgreSQL folds it
/// (ASCII letters lower-cased unless quoted; `""` in quotes is `"`).
fn split_name(name: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(q) = chars.next() {
                    if q == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            cur.push('"');
                        } else {
                            break;
                        }
                    } else {
                        cur.push(q);
                    }
                }
            }
            '.' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c.to_ascii_lowercase()),
        }
    }
    parts.push(cur);
    parts
}

fn is_table_statement(s: &str) -> bool {
    let Some(rest) = s
        .get(..5)
        .filter(|k| k.eq_ignore_ascii_case("table"))
        .and_then(|_| s.get(5..))
        .filter(|r| r.starts_with(char::is_whitespace))
    else {
        return false;
    };
    let mut chars = rest.trim_start().chars().peekable();
    let mut parts = 0;
    loop {
        match chars.next() {
            Some('"') => loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                    }
                    Some('"') => break,
                    Some(_) => {}
                    None => return false,
                }
            },
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                while chars
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '$')
                {
                    chars.next();
                }
            }
            _ => return false,
        }
        parts += 1;
        match chars.next() {
            None => return parts <= 3,
            Some('.') => {}
            Some(_) => return false,
        }
    }
}

/// Whether an EXPLAIN executes its statement: `ANALYZE` in either
/// spelling (`EXPLAIN ANALYZE …`, `EXPLAIN (ANALYZE[, …]) …`,
/// `EXPLAIN (ANALYZE true) …`). Any ANALYZE option whose value is not
/// plainly false counts.
fn explain_runs(s: &Statement) -> bool {
    let Statement::Explain {
        analyze, options, ..
    } = s
    else {
        return false;
    };
    if *analyze {
        return true;
    }
    // An allow-list, not a look for "analyze": PostgreSQL also reads
    // ANALYSE, and an option the gateway does not know may run it too.
    options.iter().flatten().any(|o| {
        let name = o.name.value.to_ascii_lowercase();
        let off = o.arg.as_ref().is_some_and(|a| {
            let v = a.to_string().trim_matches('\'').to_ascii_lowercase();
            matches!(v.as_str(), "false" | "off" | "0" | "no")
        });
        !(EXPLAIN_OPTIONS.contains(&name.as_str())
            || (ANALYZE_SPELLINGS.contains(&name.as_str()) && off))
    })
}

/// EXPLAIN options that only shape the plan's output.
const EXPLAIN_OPTIONS: &[&str] = &[
    "verbose",
    "costs",
    "settings",
    "generic_plan",
    "buffers",
    "wal",
    "timing",
    "summary",
    "format",
];
const ANALYZE_SPELLINGS: &[&str] = &["analyze", "analyse"];

/// Whether `sql` runs a statement prepared earlier (`EXECUTE name`):
/// what that does was decided when it was prepared, so a rule that holds
/// any class must hold this too.
pub fn executes_prepared(sql: &str) -> bool {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .is_ok_and(|stmts| stmts.iter().any(|s| matches!(s, Statement::Execute { .. })))
}

/// How many statements `sql` holds; `None` when it does not parse.
pub fn statement_count(sql: &str) -> Option<usize> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .ok()
        .map(|s| s.len())
}

/// Settings a caller may not change on a guarded connection: they would
/// undo the read-only session or change who the session acts as.
const GUARDED_SETTINGS: &[&str] = &[
    "read_only",
    "read write",
    "session_authorization",
    "session authorization",
    "role",
];

/// Settings a caller may change on a guarded connection: an allow-list.
/// Everything else is `admin`, notably what changes how the server reads
/// later text (`standard_conforming_strings`, `client_encoding`/`NAMES`,
/// `backslash_quote`), who the session is, or the read-only guard.
const SAFE_SETTINGS: &[&str] = &[
    "application_name",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "timezone",
    "datestyle",
    "intervalstyle",
    "extra_float_digits",
    "bytea_output",
    "client_min_messages",
    "work_mem",
    "jit",
    "plan_cache_mode",
    "random_page_cost",
    "max_parallel_workers_per_gather",
    "default_transaction_isolation",
    "transaction_isolation",
];

/// The class of a SET or RESET: a read for the settings on the
/// allow-list (and transaction modes that are not READ WRITE), else admin.
fn setting(s: &Statement) -> Class {
    let text = s.to_string().to_ascii_lowercase();
    let mut rest = text
        .strip_prefix("set ")
        .or_else(|| text.strip_prefix("reset "))
        .unwrap_or("")
        .trim_start();
    while let Some(r) = rest
        .strip_prefix("local ")
        .or_else(|| rest.strip_prefix("session "))
    {
        rest = r.trim_start();
    }
    if rest.starts_with("transaction") || rest.starts_with("characteristics") {
        return if mentions_guarded(s) {
            Class::Admin
        } else {
            Class::Read
        };
    }
    if rest == "all" || rest.starts_with("time zone") {
        return Class::Read;
    }
    let name: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '=')
        .filter(|c| *c != '"')
        .collect();
    if name == "search_path" && !text.starts_with("reset") {
        // The value: whatever follows the name and `TO` or `=`.
        let value = rest[name.len()..].trim_start_matches(|c: char| c == '"' || c.is_whitespace());
        let value = value
            .strip_prefix("to ")
            .or_else(|| value.strip_prefix('='))
            .unwrap_or(value);
        if !search_path_keeps_catalog_first(value) {
            return Class::Admin;
        }
    }
    if SAFE_SETTINGS.contains(&name.as_str()) || name.starts_with("enable_") {
        Class::Read
    } else {
        Class::Admin
    }
}

/// Whether a `search_path` value leaves `pg_catalog` searched first:
/// unnamed (PostgreSQL then searches it before the path) or named first.
/// Named later, a schema before it could shadow built-in functions and
/// operators, which the proofs take to be the built-in ones.
pub fn search_path_keeps_catalog_first(value: &str) -> bool {
    let mut schemas = Vec::new();
    for s in value.split(',') {
        let s = s.trim();
        let bare = s
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
            .unwrap_or(s);
        // Only plain names are read here: an escape (E'…', U&"…"), a
        // quote inside a name or any other spelling PostgreSQL might read
        // as `pg_catalog` is not judged, it is refused (fail closed).
        if !bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        {
            return false;
        }
        if !bare.is_empty() {
            schemas.push(bare.to_ascii_lowercase());
        }
    }
    match schemas.iter().position(|s| s == "pg_catalog") {
        None => true,
        Some(i) => i == 0,
    }
}

fn mentions_guarded(s: &Statement) -> bool {
    let text = s.to_string().to_ascii_lowercase();
    GUARDED_SETTINGS.iter().any(|g| text.contains(g))
}

/// The class of one statement by its kind alone (what it nests is the
/// walker's business).
fn statement(s: &Statement) -> Class {
    use Statement as S;
    match s {
        // Locks and SELECT INTO are found where they are, in any
        // (sub)query, by the walker.
        S::Query(_) => Class::Read,
        S::Explain { .. } => Class::Read,
        S::ExplainTable { .. }
        | S::ShowFunctions { .. }
        | S::ShowVariable { .. }
        | S::ShowStatus { .. }
        | S::ShowVariables { .. }
        | S::ShowCreate { .. }
        | S::ShowColumns { .. }
        | S::ShowCatalogs { .. }
        | S::ShowDatabases { .. }
        | S::ShowSchemas { .. }
        | S::ShowTables { .. }
        | S::ShowViews { .. }
        | S::ShowCollation { .. }
        | S::Commit { .. }
        | S::Rollback { .. }
        | S::Savepoint { .. }
        | S::ReleaseSavepoint { .. }
        | S::Fetch { .. }
        | S::Close { .. }
        | S::Discard { .. }
        | S::Deallocate { .. }
        | S::LISTEN { .. }
        | S::UNLISTEN { .. }
        // A cursor is as powerful as its query, which the walker visits.
        | S::Declare { .. } => Class::Read,
        S::StartTransaction { .. } => {
            if mentions_guarded(s) {
                Class::Admin
            } else {
                Class::Read
            }
        }
        S::Set(_) | S::Reset(_) => setting(s),
        // COPY TO STDOUT reads; to a file or a program it runs on the
        // server's file system as the server (`admin`); FROM writes.
        S::Copy { to, target, .. } => match (to, target) {
            (true, CopyTarget::Stdout) => Class::Read,
            (_, CopyTarget::File { .. } | CopyTarget::Program { .. }) => Class::Admin,
            _ => Class::Write,
        },
        S::Insert(_)
        | S::Update(_)
        | S::Delete(_)
        | S::Merge(_)
        | S::Truncate(_)
        | S::Lock(_)
        | S::NOTIFY { .. } => Class::Write,
        // A procedure's body is not visible here: judged like a volatile
        // call, never by its text.
        S::Call(_) => Class::Unknown,
        S::Prepare {
            statement: inner, ..
        } => statement(inner),
        // What a prepared statement does is not visible here.
        S::Execute { .. } => Class::Unknown,
        S::CreateView(_)
        | S::CreateTable(_)
        | S::CreateIndex(_)
        | S::CreateSchema { .. }
        | S::CreateSequence { .. }
        | S::CreateType { .. }
        | S::CreateDomain(_)
        | S::CreateFunction(_)
        | S::CreateProcedure { .. }
        | S::CreateTrigger(_)
        | S::CreatePolicy(_)
        | S::CreateRule(_)
        | S::CreateOperator(_)
        | S::CreateAggregate(_)
        | S::CreateCollation(_)
        | S::CreateTextSearch(_)
        | S::AlterTable(_)
        | S::AlterSchema(_)
        | S::AlterIndex { .. }
        | S::AlterView(_)
        | S::AlterFunction(_)
        | S::AlterType(_)
        | S::AlterPolicy(_)
        | S::AlterTrigger(_)
        | S::Drop { .. }
        | S::DropFunction(_)
        | S::DropDomain(_)
        | S::DropProcedure { .. }
        | S::DropPolicy(_)
        | S::DropRule(_)
        | S::DropTrigger(_)
        | S::Comment { .. }
        | S::RefreshMaterializedView(_)
        | S::RenameTable(_) => Class::Ddl,
        // Roles, grants, extensions, databases, vacuum, DO blocks and
        // everything not listed above: the strictest known class.
        _ => Class::Admin,
    }
}

/// Functions that change server or session state even inside a read-only
/// transaction (`set_config` could switch the read-only default off), or
/// reach the server's files: `admin` wherever they appear, in any schema.
const ADMIN_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "lo_import",
    "lo_export",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    // Other sessions' statement text ([`OTHER_SESSIONS`]).
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
];

/// Views that show other sessions' statement text, literals and all:
/// every caller of a connection shares its database role, and PostgreSQL
/// shows a role's sessions to each other (a review's principal read
/// another's values from `pg_stat_activity` through the MCP `sql_query`
/// tool, 2026-12-05). Reading one is `admin` (refused on read-only
/// connections, held where approvals apply), as calling the functions
/// behind them is ([`ADMIN_FUNCTIONS`]).
const OTHER_SESSIONS: &[&str] = &["pg_stat_activity"];

/// The class a function's name alone gives it, in any schema: `admin`
/// for server-state functions, `unknown` for those that run SQL text;
/// `None`: its catalog entry decides.
pub fn named_class(name: &str) -> Option<Class> {
    if ADMIN_FUNCTIONS.contains(&name) {
        Some(Class::Admin)
    } else if RUNS_SQL_TEXT.contains(&name) {
        Some(Class::Unknown)
    } else if ASSIGNS_XID.contains(&name) {
        Some(Class::Write)
    } else {
        None
    }
}

/// Every function [`named_class`] classes by its name: the catalog look
/// for code PostgreSQL runs on its own counts these wherever a view or a
/// user's object calls them, whatever their volatility.
pub(crate) const NAMED_FUNCTIONS: &[&[&str]] = &[ADMIN_FUNCTIONS, RUNS_SQL_TEXT, ASSIGNS_XID];

/// Functions declared stable that give the transaction an id of its own:
/// each call from a "read" consumed one (review, 2026-12-05), a write
/// the read-only transaction allows.
const ASSIGNS_XID: &[&str] = &["txid_current", "pg_current_xact_id"];

/// Functions the catalog calls stable although they run SQL handed to
/// them as text, which the gateway never sees parsed: their volatility
/// proves nothing about what they run.
/// Extensions' too, matched in any schema: `tablefunc` (which a role
/// with CREATE on the database may install) and `xml2` (a re-review ran
/// `crosstab('select … pg_advisory_lock(…)')` from a read-only
/// connection, and through a view).
pub(crate) const RUNS_SQL_TEXT: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
    "crosstab",
    "crosstab2",
    "crosstab3",
    "crosstab4",
    "connectby",
    "xpath_table",
];

/// Names the parser reports as function calls that PostgreSQL treats as
/// syntax (no `pg_proc` entry, no user code), when written unquoted and
/// unqualified.
const SYNTAX_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "current_schema",
    "row",
    "array",
    "exists",
    "grouping",
];

/// Volatile built-ins with no effect beyond the statement's own result.
pub(crate) const HARMLESS_VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "pg_sleep",
    "currval",
    "lastval",
];

/// Common immutable or stable functions of `pg_catalog`: the proof the
/// pure [`classify`] accepts without a catalog.
const BUILTIN_PURE: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "bool_and",
    "bool_or",
    "every",
    "string_agg",
    "array_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "variance",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    "now",
    "lower",
    "upper",
    "length",
    "char_length",
    "octet_length",
    "substr",
    "replace",
    "concat",
    "concat_ws",
    "left",
    "right",
    "btrim",
    "ltrim",
    "rtrim",
    "lpad",
    "rpad",
    "split_part",
    "strpos",
    "md5",
    "abs",
    "round",
    "trunc",
    "ceil",
    "floor",
    "mod",
    "power",
    "sqrt",
    "date_trunc",
    "date_part",
    "to_char",
    "to_date",
    "to_timestamp",
    "to_number",
    "age",
    "generate_series",
    "unnest",
    "array_length",
    "cardinality",
    "jsonb_build_object",
    "json_build_object",
    "jsonb_build_array",
    "json_build_array",
    "to_json",
    "to_jsonb",
    "row_to_json",
    "jsonb_array_elements",
    "json_array_elements",
    "jsonb_each",
    "json_each",
    "jsonb_typeof",
    "json_typeof",
    "format",
    "pg_typeof",
    "version",
    "current_setting",
    "pg_backend_pid",
    "encode",
    "decode",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "starts_with",
    "initcap",
    "reverse",
    "repeat",
    "translate",
    "quote_ident",
    "quote_literal",
    "has_table_privilege",
    "pg_get_viewdef",
    "pg_table_size",
    "pg_total_relation_size",
    "pg_relation_size",
    "pg_size_pretty",
    "obj_description",
    "col_description",
    "format_type",
    "pg_get_expr",
    "pg_get_constraintdef",
    "pg_get_indexdef",
    "pg_get_userbyid",
    "pg_table_is_visible",
    "pg_get_function_arguments",
    "pg_get_function_result",
    "array_to_string",
    "string_to_array",
    "extract",
    "make_interval",
    "make_date",
    "substring",
    "position",
    "overlay",
];

/// Walks every statement, query, expression and table reference of a
/// statement: the kinds it nests and the functions it calls, wherever
/// they are (select list, FROM, joins, WHERE, CTEs, subqueries, VALUES,
/// LATERAL, defaults).
#[derive(Default)]
struct Walker {
    class: Class,
    calls: std::collections::BTreeSet<Call>,
    attributes: std::collections::BTreeSet<Call>,
    refs: References,
    /// Names of the statement's CTEs (relations by those names are its own).
    ctes: std::collections::BTreeSet<String>,
    evaluates: bool,
}

/// An identifier as PostgreSQL folds it.
fn folded(i: &sqlparser::ast::Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_ascii_lowercase(),
    }
}

/// One folded name part, quoted as PostgreSQL quotes identifiers.
fn quote_part(p: &str) -> String {
    format!("\"{}\"", p.replace('"', "\"\""))
}

/// A whole name, each part folded and quoted: unambiguous (a quoted
/// part may hold a dot).
fn qualified(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| p.as_ident().map(folded).unwrap_or_default())
        .map(|p| quote_part(&p))
        .collect::<Vec<_>>()
        .join(".")
}

/// The last part of a name, folded; empty if it is not a plain identifier.
fn last_part(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(folded)
        .unwrap_or_default()
}

impl Walker {
    fn walk(&mut self, s: &Statement) {
        let _ = s.visit(self);
    }

    fn call(&mut self, name: &ObjectName, may_be_syntax: bool) {
        let parts: Vec<(String, bool)> = name
            .0
            .iter()
            .map(|p| match p.as_ident() {
                Some(i) => match i.quote_style {
                    Some(_) => (i.value.clone(), true),
                    // PostgreSQL folds ASCII letters only (in UTF-8):
                    // folding more would prove a function it never calls.
                    None => (i.value.to_ascii_lowercase(), false),
                },
                // A computed name part cannot be proven.
                None => (String::new(), true),
            })
            .collect();
        let Some((base, quoted)) = parts.last().cloned() else {
            self.class = Class::Unknown;
            return;
        };
        if base.is_empty() || parts.len() > 3 {
            self.class = Class::Unknown;
            return;
        }
        if let Some(class) = named_class(&base) {
            self.class = self.class.max(class);
            return;
        }
        if parts.len() == 1 && !quoted && may_be_syntax && SYNTAX_FUNCTIONS.contains(&base.as_str())
        {
            return;
        }
        let schema = (parts.len() >= 2).then(|| parts[parts.len() - 2].0.clone());
        self.calls.insert(Call { schema, name: base });
    }
}

impl Walker {
    /// Names an expression reads as values (see [`References::values`]).
    fn value_refs(&mut self, e: &Expr) {
        use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
        let values = &mut self.refs.values;
        match e {
            Expr::Identifier(i) => {
                values.insert(folded(i));
            }
            Expr::CompoundIdentifier(parts) => {
                if let Some(last) = parts.last() {
                    values.insert(folded(last));
                }
            }
            Expr::QualifiedWildcard(name, _) => {
                values.insert(last_part(name));
            }
            Expr::Function(f) => {
                // `f(t.*)`: a whole row as an argument.
                if let FunctionArguments::List(list) = &f.args {
                    for a in &list.args {
                        let arg = match a {
                            FunctionArg::Named { arg, .. }
                            | FunctionArg::ExprNamed { arg, .. }
                            | FunctionArg::Unnamed(arg) => arg,
                        };
                        if let FunctionArgExpr::QualifiedWildcard(name) = arg {
                            values.insert(last_part(name));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// A name that may be a call in attribute notation.
    fn attribute(&mut self, i: &sqlparser::ast::Ident) {
        self.attributes.insert(Call {
            schema: None,
            name: folded(i),
        });
    }

    fn builtin(&mut self, name: &str) {
        self.calls.insert(Call {
            schema: None,
            name: name.into(),
        });
    }
}

impl Visitor for Walker {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        self.class = self.class.max(statement(s));
        if matches!(s, Statement::Fetch { .. } | Statement::Execute { .. }) {
            self.refs.opaque = true;
        }
        if let Statement::Copy {
            source:
                sqlparser::ast::CopySource::Table {
                    table_name,
                    columns,
                },
            ..
        } = s
        {
            self.refs.relations.insert(last_part(table_name));
            self.refs.qualified.insert(qualified(table_name));
            self.refs.values.extend(columns.iter().map(folded));
            self.refs.wildcard |= columns.is_empty();
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        let name = last_part(r);
        if OTHER_SESSIONS.contains(&name.as_str()) {
            self.class = self.class.max(Class::Admin);
        }
        self.refs.relations.insert(name);
        self.refs.qualified.insert(qualified(r));
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        self.evaluates = true;
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.insert(folded(&cte.alias.name));
                self.refs.renames_columns |= !cte.alias.columns.is_empty();
            }
        }
        // FOR UPDATE / SHARE take row locks: a write, wherever it is.
        if !q.locks.is_empty() {
            self.class = self.class.max(Class::Write);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        use sqlparser::ast::SelectItem;
        self.refs.wildcard |= s.projection.iter().any(|p| {
            matches!(
                p,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        });
        // SELECT … INTO creates a table.
        if s.into.is_some() {
            self.class = self.class.max(Class::Ddl);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            alias: Some(alias),
            args: None,
            ..
        } = t
        {
            self.refs
                .aliases
                .insert(folded(&alias.name), last_part(name));
        }
        // An alias with a column list renames what it aliases, whatever
        // it is (a table, a subquery, a function's result).
        let alias = match t {
            TableFactor::Table { alias, .. }
            | TableFactor::Derived { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::NestedJoin { alias, .. } => alias.as_ref(),
            // Kinds PostgreSQL does not have: not proven either way.
            _ => {
                self.refs.renames_columns = true;
                None
            }
        };
        if alias.is_some_and(|a| !a.columns.is_empty()) {
            self.refs.renames_columns = true;
        }
        match t {
            // `FROM f(…)`: a function in the FROM list is a call like any.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => self.call(name, false),
            TableFactor::Function { name, .. } => self.call(name, false),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        // A plain value or name (a SET's) calls nothing by itself.
        self.evaluates |= !matches!(
            e,
            Expr::Value(_) | Expr::Identifier(_) | Expr::CompoundIdentifier(_)
        );
        self.value_refs(e);
        match e {
            Expr::Function(f) => self.call(&f.name, true),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                if let Some(last) = parts.last() {
                    self.attribute(last);
                }
            }
            Expr::CompoundFieldAccess { access_chain, .. } => {
                for a in access_chain {
                    match a {
                        AccessExpr::Dot(Expr::Identifier(i)) => self.attribute(i),
                        AccessExpr::Dot(Expr::CompoundIdentifier(parts)) => {
                            parts.iter().for_each(|i| self.attribute(i))
                        }
                        _ => {}
                    }
                }
            }
            // Special forms the parser reads as syntax are ordinary
            // functions to PostgreSQL, found through search_path.
            Expr::Ceil { .. } => self.builtin("ceil"),
            Expr::Floor { .. } => self.builtin("floor"),
            Expr::Substring { .. } => self.builtin("substring"),
            Expr::Position { .. } => self.builtin("position"),
            Expr::Overlay { .. } => self.builtin("overlay"),
            // A user-defined operator runs its function: not proven here.
            Expr::BinaryOp {
                op: BinaryOperator::Custom(_) | BinaryOperator::PGCustomBinaryOperator(_),
                ..
            } => self.class = Class::Unknown,
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests;
