//! Where a result column's data comes from, for column rules: a rule
//! follows the data, not the label. PostgreSQL names each output column's
//! source in RowDescription (table OID and attribute number) when the
//! column is a plain reference to a table column, through subqueries and
//! CTEs; a view's columns name the view. So a column is protected when:
//!
//! - its source is a protected table column (an alias does not matter);
//! - it comes from a view or materialized view that reads a protected
//!   column, at any depth (`pg_depend` of the view's rewrite rule): the
//!   whole view is treated as protected, since which of its columns carry
//!   the value is not recorded;
//! - it comes from a relation created after the session began (unknown to
//!   it, so unproven);
//! - it is computed (no source) by a statement that may derive it from a
//!   protected column: it names one, names a protected relation as a
//!   whole row (`row_to_json(t)`, `f(t.*)`), reads a relation unknown to
//!   the session, calls a function that is not a known built-in (which
//!   may read anything), or returns what was decided elsewhere (`FETCH`,
//!   `EXECUTE`).
//!
//! The pure half (this file) decides from names and sets; the look-up is
//! one catalog query at session start.

use std::collections::{HashMap, HashSet};

use portcullis_mask::{Masker, Rule};

use super::binary::Types;
use crate::classify::{Analysis, Call, Proof, builtin_proof};

/// The column rule a value falls under: the protected column's name, and
/// its table, as the rule names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub column: String,
    pub table: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Off when the rule has no column rules.
    active: bool,
    /// Protected table columns, by (table OID, attribute number).
    columns: HashMap<(u32, i16), Guard>,
    /// Views reading a protected column, and one such column.
    views: HashMap<u32, Guard>,
    /// Names of relations holding or reading protected columns.
    relations: HashMap<String, Guard>,
    /// Names of the views among them (any column of one may be protected).
    view_names: HashMap<String, Guard>,
    /// Every relation at session start: OID → name.
    known: HashMap<u32, String>,
    known_names: HashSet<String>,
    /// Functions of `pg_catalog`, and names that functions elsewhere
    /// have (which may read any table).
    builtin_functions: HashSet<String>,
    user_functions: HashSet<String>,
    /// The rules by the column part of their names.
    names: HashMap<String, Vec<Guard>>,
    /// The rule applied where no single column is to blame.
    fallback: Option<Guard>,
}

impl Sources {
    /// What is known while a schema change is under way: nothing, every
    /// relation and function is unknown and falls under the rule's
    /// fallback (outputs masked whole), as one newer than a reading does.
    pub fn closed(&self) -> Sources {
        Sources {
            active: self.active,
            fallback: self.fallback.clone(),
            names: self.names.clone(),
            ..Sources::default()
        }
    }

    /// The table name of a relation OID, for `table.column` label rules.
    pub fn table(&self, oid: u32) -> Option<&str> {
        self.known.get(&oid).map(String::as_str)
    }

    /// The rule applied where no single column is to blame (`None`
    /// without column rules).
    pub fn fallback(&self) -> Option<Guard> {
        self.fallback.clone()
    }

    /// The guard over an output column with source `(table, attnum)`;
    /// `derived` is the statement's, for computed columns.
    pub fn column(&self, table: u32, attnum: i16, derived: Option<&Guard>) -> Option<Guard> {
        if !self.active {
            return None;
        }
        if table == 0 {
            return derived.cloned();
        }
        if let Some(g) = self.columns.get(&(table, attnum)) {
            return Some(g.clone());
        }
        // Attribute 0 is the whole row (`SELECT t FROM t`).
        if attnum == 0
            && let Some(g) = self.table(table).and_then(|n| self.relations.get(n))
        {
            return Some(g.clone());
        }
        if let Some(g) = self.views.get(&table) {
            return Some(g.clone());
        }
        if !self.known.contains_key(&table) {
            return self.fallback.clone();
        }
        None
    }

    /// Whether the statement may compute a value from a protected column
    /// (see the module's list), and the rule to apply if so.
    pub fn derived(&self, a: &Analysis) -> Option<Guard> {
        if !self.active {
            return None;
        }
        if self.unproven(a) {
            return self.fallback.clone();
        }
        let r = &a.refs;
        if let Some(g) = r
            .relations
            .iter()
            .find_map(|n| self.view_names.get(&n.to_ascii_lowercase()))
        {
            return Some(g.clone());
        }
        // Columns renamed by an alias: `lower(x)` over `users u(a, b, x)`
        // (or a subquery or CTE renamed so) may be the protected one under
        // another name, if the statement reads a protected relation.
        if r.renames_columns
            && let Some(g) = r
                .relations
                .iter()
                .find_map(|n| self.relations.get(&n.to_ascii_lowercase()))
        {
            return Some(g.clone());
        }
        let reads = |table: &str| r.relations.iter().any(|n| n.eq_ignore_ascii_case(table));
        for v in &r.values {
            let v = v.to_ascii_lowercase();
            // A `table.column` rule counts only where that table is read.
            if let Some(g) = self
                .names
                .get(&v)
                .and_then(|gs| gs.iter().find(|g| g.table.as_deref().is_none_or(reads)))
            {
                return Some(g.clone());
            }
            // A whole row of a protected relation, by its name or alias.
            let relation = r.aliases.get(&v).map(|s| s.to_ascii_lowercase());
            if let Some(g) = self.relations.get(relation.as_deref().unwrap_or(&v)) {
                return Some(g.clone());
            }
        }
        None
    }

    /// Whether what the statement returns was decided where the analysis
    /// cannot see: opaque text, an unknown class, a call that may read a
    /// table, a relation the catalog did not list (a `FETCH` of a cursor
    /// opened elsewhere is opaque).
    pub fn unproven(&self, a: &Analysis) -> bool {
        let r = &a.refs;
        self.active
            && (r.opaque
                || a.class == crate::classify::Class::Unknown
                || a.calls.iter().any(|c| !self.reads_nothing(c))
                || r.relations
                    .iter()
                    .any(|n| !self.known_names.contains(&n.to_ascii_lowercase())))
    }

    /// Whether a call can only be a built-in function, which reads no
    /// table: `pg_catalog` has a function of that name and no other
    /// schema has one. (Built-ins that run SQL text are never proven:
    /// the analysis marks them unknown.)
    fn reads_nothing(&self, c: &Call) -> bool {
        let in_catalog = c.schema.as_deref().is_none_or(|s| s == "pg_catalog");
        if self.builtin_functions.is_empty() {
            // No catalog (tests of the pure half): the short list.
            return builtin_proof(c) == Proof::Pure;
        }
        in_catalog
            && self.builtin_functions.contains(&c.name)
            && !self.user_functions.contains(&c.name)
    }

    /// Whether a COPY of the statement's output may carry a protected
    /// column (COPY out names no column sources, so such a COPY is
    /// refused): it may derive one, or it copies every column (`*`, or a
    /// table without a column list) of a protected relation.
    pub fn reads_protected(&self, a: &Analysis) -> bool {
        self.active
            && (self.derived(a).is_some()
                || (a.refs.wildcard
                    && a.refs
                        .relations
                        .iter()
                        .any(|n| self.relations.contains_key(&n.to_ascii_lowercase()))))
    }
}

/// The catalog query: types always (and those the rule passes); with
/// column rules, the attributes the rules may name, the views reading
/// them, every relation and every function name.
pub fn query(rule: &Rule) -> String {
    let masker = &rule.masker;
    let mut sql = String::from(
        "SELECT 't', t.oid::text, t.typtype::text, t.typbasetype::text, t.typname::text, '' \
         FROM pg_catalog.pg_type t WHERE t.typtype IN ('d','e','c') OR t.typname = 'citext' \
         OR (t.typtype = 'b' AND t.typelem <> 0 AND t.typlen = -1)",
    );
    if !rule.pass_pg_types.is_empty() {
        sql.push_str(&format!(
            " UNION ALL SELECT 'p', t.oid::text, '', '', t.typname::text, '' \
             FROM pg_catalog.pg_type t WHERE t.typname IN ({})",
            quoted(&rule.pass_pg_types)
        ));
    }
    let names = masker.column_rule_names();
    if names.is_empty() {
        return sql;
    }
    let list = quoted(&names);
    let attrs = format!(
        "SELECT a.attrelid, a.attnum FROM pg_catalog.pg_attribute a \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND lower(a.attname) IN ({list})"
    );
    sql.push_str(&format!(
        " UNION ALL SELECT 'a', a.attrelid::text, a.attnum::text, lower(c.relname), lower(a.attname), '' \
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND lower(a.attname) IN ({list}) \
         UNION ALL SELECT DISTINCT 'f', CASE WHEN n.nspname = 'pg_catalog' THEN 'b' ELSE 'u' END, '', '', p.proname::text, '' \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname <> 'information_schema' \
         UNION ALL SELECT 'r', c.oid::text, '', '', lower(c.relname), '' FROM pg_catalog.pg_class c \
         WHERE c.relkind IN ('r','v','m','f','p') \
         UNION ALL SELECT 'v', v.view::text, v.relid::text, v.attnum::text, '', '' FROM ( \
           WITH RECURSIVE p(relid, attnum) AS ({attrs}), \
           v(view, relid, attnum) AS ( \
             SELECT r.ev_class, d.refobjid, d.refobjsubid FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
             JOIN p ON p.relid = d.refobjid AND p.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.ev_class <> d.refobjid \
             UNION \
             SELECT r.ev_class, v.relid, v.attnum FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid JOIN v ON d.refobjid = v.view \
             WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.ev_class <> d.refobjid) \
           SELECT DISTINCT view, relid, attnum FROM v) v"
    ));
    sql
}

/// Names as a SQL list of string literals.
fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("'{}'", n.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Read the query's rows.
pub fn read(masker: &Masker, rows: &[Vec<Option<String>>]) -> (Types, Sources) {
    let mut types = Types::default();
    let mut s = Sources {
        active: masker.has_column_rules(),
        ..Sources::default()
    };
    let cell = |r: &Vec<Option<String>>, i: usize| r.get(i).cloned().flatten().unwrap_or_default();
    let mut views = Vec::new();
    for r in rows {
        let kind = cell(r, 0);
        let oid: u32 = cell(r, 1).parse().unwrap_or(0);
        match kind.as_str() {
            "t" => match (cell(r, 2).as_str(), cell(r, 4).as_str()) {
                (_, "citext") | ("e", _) => {
                    types.text.insert(oid);
                }
                ("d", _) => {
                    types.domains.insert(oid, cell(r, 3).parse().unwrap_or(0));
                }
                ("c", _) => {
                    types.composites.insert(oid);
                }
                _ => {
                    types.arrays.insert(oid);
                }
            },
            "a" => {
                let (table, column) = (cell(r, 3), cell(r, 4));
                if masker.column_rule_applies(&column, Some(&table)) {
                    let attnum = cell(r, 2).parse().unwrap_or(0);
                    let g = Guard {
                        column,
                        table: Some(table.clone()),
                    };
                    s.relations.entry(table).or_insert_with(|| g.clone());
                    s.columns.insert((oid, attnum), g);
                }
            }
            "p" => {
                types.passed.insert(oid);
            }
            "f" => {
                let set = match cell(r, 1).as_str() {
                    "b" => &mut s.builtin_functions,
                    _ => &mut s.user_functions,
                };
                set.insert(cell(r, 4));
            }
            "r" => {
                let name = cell(r, 4);
                s.known_names.insert(name.clone());
                s.known.insert(oid, name);
            }
            "v" => views.push((
                oid,
                cell(r, 2).parse().unwrap_or(0),
                cell(r, 3).parse().unwrap_or(0),
            )),
            _ => {}
        }
    }
    // A view reading several candidate columns has a row for each; only
    // those the rules protect count.
    for (view, relid, attnum) in views {
        if let Some(g) = s.columns.get(&(relid, attnum)).cloned() {
            if let Some(name) = s.known.get(&view) {
                s.relations.entry(name.clone()).or_insert_with(|| g.clone());
                s.view_names.insert(name.clone(), g.clone());
            }
            s.views.insert(view, g);
        }
    }
    for (table, column) in masker.column_rules() {
        let g = Guard { column, table };
        if s.fallback.is_none() {
            s.fallback = Some(g.clone());
        }
        s.names.entry(g.column.clone()).or_default().push(g);
    }
    (types, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::analyse;
    use portcullis_mask::{FieldRule, MaskSpec};

    fn sources() -> Sources {
        let spec = MaskSpec {
            fields: vec![FieldRule {
                columns: vec!["ssn".into()],
                ..FieldRule::default()
            }],
            ..MaskSpec::default()
        };
        let m = Masker::new(&spec, Some(b"k")).unwrap();
        let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        let rows = vec![
            row(&["a", "100", "3", "users", "ssn", ""]),
            row(&["a", "300", "1", "archive", "ssn", ""]),
            row(&["r", "100", "", "", "users", ""]),
            row(&["r", "200", "", "", "orders", ""]),
            row(&["r", "400", "", "", "v_people", ""]),
            row(&["v", "400", "100", "3", "", ""]),
        ];
        read(&m, &rows).1
    }

    #[test]
    fn sources_decide_by_table_and_attribute_not_label() {
        let s = sources();
        let ssn = Some(Guard {
            column: "ssn".into(),
            table: Some("users".into()),
        });
        assert_eq!(s.column(100, 3, None), ssn);
        assert_eq!(s.column(100, 1, None), None);
        assert_eq!(s.column(100, 0, None), ssn, "the whole row");
        // A view reading users.ssn: every column of it.
        assert_eq!(s.column(400, 1, None), ssn);
        // A relation newer than the session: not proven.
        assert!(s.column(999, 1, None).is_some());
        assert_eq!(s.column(200, 1, None), None);
    }

    #[test]
    fn computed_outputs_that_may_derive_from_a_protected_column() {
        let s = sources();
        let derived = |sql: &str| s.derived(&analyse(sql)).is_some();
        // Named, whole rows, unknown relations, user functions, cursors.
        assert!(derived("SELECT lower(ssn) AS x FROM users"));
        assert!(derived("SELECT upper(u.ssn) FROM users u"));
        assert!(derived("SELECT row_to_json(u) FROM users u"));
        assert!(derived("SELECT row_to_json(users) FROM users"));
        assert!(derived("SELECT json_agg(u.*) FROM users u"));
        assert!(derived("SELECT (u).ssn FROM users u"));
        assert!(derived("SELECT length(x) FROM v_people"));
        assert!(derived("SELECT length(x) FROM made_later"));
        assert!(derived("SELECT my_lookup(1)"));
        assert!(derived("SELECT public.lower(name) FROM orders"));
        assert!(derived("FETCH ALL FROM c"));
        assert!(derived("EXECUTE p"));
        assert!(derived("SELECT query_to_xml('select 1', true, true, '')"));
        assert!(derived("not sql at all"));
        // Columns renamed by a table alias.
        assert!(derived("SELECT lower(x) FROM users AS u(a, b, x)"));
        assert!(!derived("SELECT lower(x) FROM orders AS o(a, x)"));
        assert!(derived(
            "SELECT lower(c) FROM (SELECT u.* FROM users u) AS s(a, b, c)"
        ));
        assert!(derived(
            "WITH x(a, b, c) AS (SELECT * FROM users) SELECT lower(c) FROM x"
        ));
        // A name spelled with escapes is the same name to PostgreSQL.
        assert!(derived("SELECT lower(U&\"\\0073sn\") FROM users"));
        assert!(derived(
            "SELECT lower(U&\"\\0073sn\" UESCAPE '!') FROM users"
        ));
        assert!(derived(
            "WITH x AS (SELECT ssn AS y FROM users) SELECT lower(y) FROM x"
        ));
        // What does not touch one.
        assert!(!derived("SELECT count(*) FROM users"));
        assert!(!derived("SELECT lower(name), id + 1 FROM users"));
        assert!(!derived("SELECT 1"));
        assert!(!derived("WITH x AS (SELECT 1 AS y) SELECT y FROM x"));
        assert!(s.reads_protected(&analyse("COPY users TO STDOUT")));
        assert!(s.reads_protected(&analyse("COPY users (id, ssn) TO STDOUT")));
        assert!(s.reads_protected(&analyse("COPY (SELECT * FROM users) TO STDOUT")));
        assert!(s.reads_protected(&analyse("COPY (SELECT u.* FROM users u) TO STDOUT")));
        assert!(!s.reads_protected(&analyse("COPY users (id, name) TO STDOUT")));
        assert!(!s.reads_protected(&analyse("COPY (SELECT id FROM users) TO STDOUT")));
        assert!(!s.reads_protected(&analyse("COPY orders TO STDOUT")));
    }
}
