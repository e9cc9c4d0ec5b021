//! Statement classification with a real SQL parser. Pure: SQL text in, a
//! class out. When in doubt the answer is the stricter class, and text the
//! parser cannot read is `Unknown`, never a guess.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Statement, visit_expressions, visit_statements};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// What a statement can do, from least to most powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Reads data, or only controls the session/transaction harmlessly.
    Read,
    /// Changes data.
    Write,
    /// Changes schema.
    Ddl,
    /// Changes privileges, server state, or the session's safety settings.
    Admin,
    /// The parser could not read it.
    Unknown,
}

impl Class {
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

/// The class of the most powerful statement in `sql` (which may hold
/// several, separated by semicolons).
pub fn classify(sql: &str) -> Class {
    if sql.trim().trim_matches(';').trim().is_empty() {
        return Class::Read;
    }
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(stmts) => stmts
            .iter()
            .map(|s| match s {
                // Plain EXPLAIN plans without running anything.
                Statement::Explain { analyze: false, .. } => Class::Read,
                _ => statement(s).max(nested(s)),
            })
            .max()
            .unwrap_or(Class::Read),
        Err(_) => Class::Unknown,
    }
}

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

fn mentions_guarded(s: &Statement) -> bool {
    let text = s.to_string().to_ascii_lowercase();
    GUARDED_SETTINGS.iter().any(|g| text.contains(g))
}

fn statement(s: &Statement) -> Class {
    use Statement as S;
    match s {
        S::Query(q) => {
            let text = q.to_string().to_ascii_lowercase();
            // SELECT … INTO creates a table; FOR UPDATE/SHARE takes row locks.
            if text.contains(" into ") && !text.contains("insert into") {
                Class::Ddl
            } else if !q.locks.is_empty()
                || text.contains(" for update")
                || text.contains(" for share")
            {
                Class::Write
            } else {
                Class::Read
            }
        }
        S::Explain {
            statement: inner,
            analyze,
            ..
        } => {
            if *analyze {
                statement(inner)
            } else {
                Class::Read
            }
        }
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
        | S::UNLISTEN { .. } => Class::Read,
        S::Declare { .. } => {
            // A cursor is as powerful as its query.
            if s.to_string().to_ascii_lowercase().contains("for update") {
                Class::Write
            } else {
                Class::Read
            }
        }
        S::StartTransaction { .. } | S::Set(_) | S::Reset(_) => {
            if mentions_guarded(s) {
                Class::Admin
            } else {
                Class::Read
            }
        }
        S::Copy { to, .. } => {
            if *to {
                Class::Read
            } else {
                Class::Write
            }
        }
        S::Insert(_)
        | S::Update(_)
        | S::Delete(_)
        | S::Merge(_)
        | S::Truncate(_)
        | S::Call(_)
        | S::Lock(_)
        | S::NOTIFY { .. } => Class::Write,
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
        // Roles, grants, extensions, databases, vacuum, and everything not
        // listed above: the strictest known class.
        _ => Class::Admin,
    }
}

/// Functions that change server or session state even inside a read-only
/// transaction (`set_config` could switch the read-only default off).
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
];

/// The class implied by statements and function calls nested anywhere in
/// `s` (data-modifying CTEs, `SELECT set_config(…)`).
fn nested(s: &Statement) -> Class {
    let mut worst = Class::Read;
    let _ = visit_statements(s, |inner| {
        if !std::ptr::eq(inner, s) && !matches!(inner, Statement::Query(_)) {
            worst = worst.max(statement(inner));
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_expressions(s, |e| {
        if let Expr::Function(f) = e {
            let name = f.name.to_string().to_ascii_lowercase();
            let base = name.rsplit('.').next().unwrap_or(&name).trim_matches('"');
            if ADMIN_FUNCTIONS.contains(&base) {
                worst = Class::Admin;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sql: &str) -> Class {
        classify(sql)
    }

    #[test]
    fn reads() {
        for sql in [
            "SELECT 1",
            "select abalance from pgbench_accounts where aid = $1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "EXPLAIN DELETE FROM t",
            "SHOW search_path",
            "BEGIN",
            "BEGIN READ ONLY",
            "COMMIT",
            "ROLLBACK",
            "SET search_path TO public",
            "SET application_name = 'x'",
            "COPY t TO STDOUT",
            "COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)",
            "",
            " ; ",
            "LISTEN chan",
        ] {
            assert_eq!(c(sql), Class::Read, "{sql}");
        }
    }

    #[test]
    fn writes() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t WHERE id = 1",
            "COPY t FROM STDIN",
            "SELECT * FROM t FOR UPDATE",
            "TRUNCATE t",
            "NOTIFY chan, 'x'",
            "EXPLAIN ANALYZE DELETE FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT 1; DELETE FROM t",
            "SELECT * FROM (WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM u) s",
        ] {
            assert!(c(sql) >= Class::Write, "{sql}: {:?}", c(sql));
            assert_ne!(c(sql), Class::Read, "{sql}");
        }
    }

    #[test]
    fn ddl_and_admin() {
        assert_eq!(c("CREATE TABLE t (a int)"), Class::Ddl);
        assert_eq!(c("DROP TABLE t"), Class::Ddl);
        assert_eq!(c("ALTER TABLE t ADD COLUMN b int"), Class::Ddl);
        assert_eq!(c("SELECT * INTO t2 FROM t"), Class::Ddl);
        assert_eq!(c("GRANT ALL ON t TO bob"), Class::Admin);
        assert_eq!(c("SET default_transaction_read_only = off"), Class::Admin);
        assert_eq!(
            c("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"),
            Class::Admin
        );
        assert_eq!(c("START TRANSACTION READ WRITE"), Class::Admin);
        assert_eq!(c("SET ROLE postgres"), Class::Admin);
        assert_eq!(c("RESET default_transaction_read_only"), Class::Admin);
        assert_eq!(c("CREATE EXTENSION pgcrypto"), Class::Admin);
        assert_eq!(
            c("SELECT set_config('default_transaction_read_only', 'off', false)"),
            Class::Admin
        );
        assert_eq!(
            c("select pg_catalog.pg_terminate_backend(42)"),
            Class::Admin
        );
        assert_eq!(c("SELECT count(*), max(a) FROM t"), Class::Read);
    }

    #[test]
    fn unparseable_is_unknown() {
        assert_eq!(c("SELEC 1"), Class::Unknown);
        assert_eq!(c("DELETE FROM"), Class::Unknown);
        assert_eq!(c("EXECUTE stmt(1)"), Class::Unknown);
        assert!(executes_prepared("EXECUTE stmt(1)"));
        assert!(executes_prepared("SELECT 1; EXECUTE stmt"));
        assert!(!executes_prepared("SELECT 'EXECUTE stmt'"));
        assert!(!executes_prepared("EXECUTE"));
    }
}
