//! Least privilege for read-only connections. A connection with
//! `access = "read-only"` is enforced by the gateway and, as a backstop,
//! by the target (`default_transaction_read_only = on`). The backstop is
//! only as good as the database role the gateway logs in with: a
//! superuser, an owner or a role with write privileges can undo it. This
//! module asks the target what the role can do ([`check`]) and says what
//! is wrong with it ([`RoleReport::problems`]) and what to create instead
//! ([`advice`]). Everything but [`check`] is pure.

use std::time::Duration;

use crate::{PgUpstream, UpstreamError};

/// What the target says about the role the gateway logs in with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleReport {
    /// `current_user`.
    pub role: String,
    pub superuser: bool,
    /// `BYPASSRLS`: row-level security does not apply to it.
    pub bypass_rls: bool,
    /// `CREATEROLE`.
    pub create_role: bool,
    /// `CREATEDB`.
    pub create_db: bool,
    /// Member of `pg_write_all_data` (PostgreSQL 14 and later).
    pub write_all_data: bool,
    /// Member of `pg_execute_server_program` (`COPY … PROGRAM`).
    pub server_program: bool,
    /// Member of `pg_read_server_files` or `pg_write_server_files`.
    pub server_files: bool,
    /// Tables, partitioned tables, materialized views, views and sequences
    /// it owns outside the system schemas.
    pub owned: u64,
    /// Tables it may INSERT, UPDATE, DELETE or TRUNCATE (any of them).
    pub writable: u64,
    /// Up to five of those, schema-qualified.
    pub writable_examples: Vec<String>,
    /// CREATE on the database (new schemas).
    pub create_in_database: bool,
    /// CREATE in at least one non-system schema.
    pub create_in_schema: bool,
}

/// One row, 13 columns, in the order [`parse_row`] reads them. Only
/// catalog functions present in PostgreSQL 12 to 17. Role membership is
/// asked by OID of a role read from `pg_roles`, so a predefined role that
/// does not exist yet (`pg_write_all_data` before 14) is simply not
/// found: `pg_has_role` never sees a name it cannot resolve, whatever
/// order the planner evaluates the conditions in.
pub const ROLE_QUERY: &str = r#"SELECT r.rolname,
  r.rolsuper,
  r.rolbypassrls,
  r.rolcreaterole,
  r.rolcreatedb,
  EXISTS (SELECT 1 FROM pg_catalog.pg_roles g
          WHERE g.rolname = 'pg_write_all_data'
            AND pg_catalog.pg_has_role(current_user, g.oid, 'MEMBER')),
  EXISTS (SELECT 1 FROM pg_catalog.pg_roles g
          WHERE g.rolname = 'pg_execute_server_program'
            AND pg_catalog.pg_has_role(current_user, g.oid, 'MEMBER')),
  EXISTS (SELECT 1 FROM pg_catalog.pg_roles g
          WHERE g.rolname IN ('pg_read_server_files', 'pg_write_server_files')
            AND pg_catalog.pg_has_role(current_user, g.oid, 'MEMBER')),
  (SELECT count(*) FROM pg_catalog.pg_class c
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relowner = r.oid
     AND c.relkind IN ('r', 'p', 'm', 'v', 'S')
     AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
     AND left(n.nspname, 8) <> 'pg_temp_'
     AND left(n.nspname, 14) <> 'pg_toast_temp_'),
  (SELECT count(*) FROM pg_catalog.pg_class c
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p')
     AND left(n.nspname, 3) <> 'pg_'
     AND n.nspname <> 'information_schema'
     AND pg_catalog.has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')),
  (SELECT pg_catalog.string_agg(w.q, ',' ORDER BY w.q) FROM (
     SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS q
     FROM pg_catalog.pg_class c
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p')
       AND left(n.nspname, 3) <> 'pg_'
       AND n.nspname <> 'information_schema'
       AND pg_catalog.has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
     ORDER BY 1
     LIMIT 5) w),
  pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'),
  EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n
          WHERE left(n.nspname, 3) <> 'pg_'
            AND n.nspname <> 'information_schema'
            AND pg_catalog.has_schema_privilege(n.oid, 'CREATE'))
FROM pg_catalog.pg_roles r
WHERE r.rolname = current_user"#;

/// How long the query may take once the session is open (opening it has
/// the connection's own timeout).
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Fill a report from the row [`ROLE_QUERY`] returns (text format:
/// booleans `t`/`f`). `None` if the row does not have that shape.
pub fn parse_row(row: &[Option<String>]) -> Option<RoleReport> {
    if row.len() != 13 {
        return None;
    }
    let text = |i: usize| row[i].as_deref();
    let flag = |i: usize| match text(i)? {
        "t" | "true" => Some(true),
        "f" | "false" => Some(false),
        _ => None,
    };
    let count = |i: usize| text(i)?.trim().parse::<u64>().ok();
    let examples = match text(10) {
        None | Some("") => Vec::new(),
        Some(list) => list.split(',').map(str::to_string).collect(),
    };
    Some(RoleReport {
        role: text(0)?.to_string(),
        superuser: flag(1)?,
        bypass_rls: flag(2)?,
        create_role: flag(3)?,
        create_db: flag(4)?,
        write_all_data: flag(5)?,
        server_program: flag(6)?,
        server_files: flag(7)?,
        owned: count(8)?,
        writable: count(9)?,
        writable_examples: examples,
        create_in_database: flag(11)?,
        create_in_schema: flag(12)?,
    })
}

impl RoleReport {
    /// One sentence per way this role could undo read-only; empty when it
    /// is least privilege.
    pub fn problems(&self) -> Vec<String> {
        let role = &self.role;
        if self.superuser {
            // Everything else follows from it; one sentence says it all.
            return vec![format!(
                "role {role:?} is a superuser: it passes every privilege check and can turn \
                 read-only off"
            )];
        }
        let mut out = Vec::new();
        if self.bypass_rls {
            out.push(format!(
                "role {role:?} has BYPASSRLS: row-level security does not apply to it"
            ));
        }
        if self.create_role {
            out.push(format!(
                "role {role:?} has CREATEROLE: it can create roles and grant them more than it \
                 should have"
            ));
        }
        if self.create_db {
            out.push(format!(
                "role {role:?} has CREATEDB: it can create databases"
            ));
        }
        if self.write_all_data {
            out.push(format!(
                "role {role:?} is a member of pg_write_all_data: it can write every table"
            ));
        }
        if self.server_program {
            out.push(format!(
                "role {role:?} is a member of pg_execute_server_program: it can run programs on \
                 the database server (COPY ... PROGRAM)"
            ));
        }
        if self.server_files {
            out.push(format!(
                "role {role:?} is a member of pg_read_server_files or pg_write_server_files: it \
                 can read or write files on the database server"
            ));
        }
        if self.owned > 0 {
            out.push(format!(
                "role {role:?} owns {} table(s), view(s) or sequence(s): an owner can grant \
                 itself any privilege on them and turn off their row-level security",
                self.owned
            ));
        }
        if self.writable > 0 {
            let mut s = format!(
                "role {role:?} may INSERT, UPDATE, DELETE or TRUNCATE on {} table(s)",
                self.writable
            );
            if !self.writable_examples.is_empty() {
                s.push_str(&format!(" (e.g. {})", self.writable_examples.join(", ")));
            }
            out.push(s);
        }
        if self.create_in_database {
            out.push(format!(
                "role {role:?} has CREATE on the database: it can create schemas"
            ));
        }
        if self.create_in_schema {
            out.push(format!(
                "role {role:?} has CREATE in a schema: it can create tables and functions \
                 (PostgreSQL 14 and older give this on schema public to everyone: \
                 REVOKE CREATE ON SCHEMA public FROM PUBLIC)"
            ));
        }
        out
    }
}

/// `name` as an SQL identifier, always quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL a DBA runs (as a superuser or the database's owner) to create
/// a least-privilege role for a read-only connection to `database`. The
/// password is a placeholder: choose one and give it to the gateway by
/// reference (`password = "env:…"` or `"file:…"`).
pub fn advice(role_suggestion: &str, database: &str) -> String {
    let role = ident(role_suggestion);
    let db = ident(database);
    format!(
        "-- A least-privilege role for a read-only connection (run as a superuser or the\n\
         -- owner of database {db}; replace the placeholder with a generated password):\n\
         CREATE ROLE {role} LOGIN PASSWORD 'REPLACE-WITH-A-GENERATED-PASSWORD';\n\
         GRANT CONNECT ON DATABASE {db} TO {role};\n\
         GRANT USAGE ON SCHEMA public TO {role};\n\
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};\n\
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role};\n\
         ALTER ROLE {role} SET default_transaction_read_only = on;\n\
         -- PostgreSQL 14 and older: REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n\
         -- Repeat USAGE and SELECT for every other schema callers read. ALTER DEFAULT\n\
         -- PRIVILEGES covers tables created later by the role that runs it (add\n\
         -- FOR ROLE <owner> for each role that creates tables).\n\
         -- Then set the connection's url user to {role} and its password by reference.\n"
    )
}

/// Ask the target what the connection's role can do. Opens a session of
/// its own and ends it.
pub async fn check(upstream: &PgUpstream) -> Result<RoleReport, UpstreamError> {
    let mut session = upstream.connect(&[], crate::Owner::Gateway).await?;
    let rows = tokio::time::timeout(QUERY_TIMEOUT, session.simple_rows(ROLE_QUERY))
        .await
        .map_err(|_| UpstreamError::Timeout(QUERY_TIMEOUT));
    // Tell the target we are done, so its backend ends now.
    // Bounded, as every goodbye is: a target that stopped reading would
    // hold the command.
    crate::upstream::goodbye(&mut session.writer, true).await;
    let rows = rows??;
    let row = rows.first().ok_or_else(|| {
        UpstreamError::Protocol("the role query returned no row (is current_user a role?)".into())
    })?;
    parse_row(row).ok_or_else(|| {
        UpstreamError::Protocol(format!(
            "the role query returned a row of an unexpected shape ({} columns)",
            row.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> RoleReport {
        RoleReport {
            role: "reader".into(),
            ..Default::default()
        }
    }

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_string)).collect()
    }

    /// The query's row for a least-privilege role named `role`.
    fn clean_row(role: &str) -> Vec<Option<String>> {
        let mut r = row(&[Some("f"); 13]);
        r[0] = Some(role.into());
        r[8] = Some("0".into());
        r[9] = Some("0".into());
        r[10] = None;
        r
    }

    #[test]
    fn a_clean_role_has_no_problems() {
        assert!(clean().problems().is_empty());
    }

    #[test]
    fn a_superuser_is_one_problem_naming_it() {
        let r = RoleReport {
            superuser: true,
            writable: 10,
            create_in_schema: true,
            ..clean()
        };
        let p = r.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("superuser"), "{p:?}");
        assert!(p[0].contains("reader"), "{p:?}");
    }

    #[test]
    fn an_owner_is_a_problem() {
        let p = RoleReport {
            owned: 3,
            ..clean()
        }
        .problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("owns 3"), "{p:?}");
    }

    #[test]
    fn write_privileges_are_a_problem_with_examples() {
        let p = RoleReport {
            writable: 7,
            writable_examples: vec!["public.orders".into(), "public.people".into()],
            ..clean()
        }
        .problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("7 table"), "{p:?}");
        assert!(p[0].contains("public.orders, public.people"), "{p:?}");
    }

    #[test]
    fn each_flag_is_its_own_problem() {
        let p = RoleReport {
            bypass_rls: true,
            create_role: true,
            create_db: true,
            write_all_data: true,
            server_program: true,
            server_files: true,
            create_in_database: true,
            create_in_schema: true,
            ..clean()
        }
        .problems();
        assert_eq!(p.len(), 8, "{p:?}");
        for word in [
            "BYPASSRLS",
            "CREATEROLE",
            "CREATEDB",
            "pg_write_all_data",
            "pg_execute_server_program",
            "pg_read_server_files",
            "create schemas",
            "schema public",
        ] {
            assert!(p.iter().any(|s| s.contains(word)), "{word}: {p:?}");
        }
    }

    #[test]
    fn parses_the_query_row() {
        let r = parse_row(&row(&[
            Some("app"),
            Some("f"),
            Some("f"),
            Some("t"),
            Some("f"),
            Some("f"),
            Some("f"),
            Some("t"),
            Some("2"),
            Some("4"),
            Some("public.a,\"Odd\".b"),
            Some("f"),
            Some("t"),
        ]))
        .unwrap();
        assert_eq!(r.role, "app");
        assert!(!r.superuser && r.create_role && !r.create_db && r.server_files);
        assert_eq!((r.owned, r.writable), (2, 4));
        assert_eq!(r.writable_examples, vec!["public.a", "\"Odd\".b"]);
        assert!(!r.create_in_database && r.create_in_schema);
    }

    #[test]
    fn parses_a_clean_row_with_no_examples() {
        let r = parse_row(&clean_row("reader")).unwrap();
        assert_eq!(r, clean());
        assert!(r.problems().is_empty());
    }

    #[test]
    fn refuses_rows_of_another_shape() {
        assert_eq!(parse_row(&row(&[Some("app"), Some("f")])), None);
        let mut bad = row(&[Some("x"); 13]);
        assert_eq!(parse_row(&bad), None);
        bad = clean_row("app");
        bad[1] = Some("yes".into());
        assert_eq!(parse_row(&bad), None);
        // The role name may not be NULL.
        bad[0] = None;
        bad[1] = Some("f".into());
        assert_eq!(parse_row(&bad), None);
    }

    #[test]
    fn advice_creates_a_read_only_role_without_a_secret() {
        let a = advice("portcullis_ro", "orders");
        for want in [
            "CREATE ROLE \"portcullis_ro\" LOGIN",
            "GRANT CONNECT ON DATABASE \"orders\" TO \"portcullis_ro\"",
            "GRANT USAGE ON SCHEMA public",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES",
            "ALTER ROLE \"portcullis_ro\" SET default_transaction_read_only = on",
            "REPLACE-WITH-A-GENERATED-PASSWORD",
        ] {
            assert!(a.contains(want), "{want}:\n{a}");
        }
        assert!(advice("a\"b", "d").contains("\"a\"\"b\""));
    }

    #[test]
    fn the_query_has_the_columns_parse_row_reads() {
        // 13 top-level select items: count commas at nesting depth 0
        // between SELECT and the final FROM.
        let body = ROLE_QUERY
            .strip_prefix("SELECT ")
            .and_then(|q| q.rsplit_once("\nFROM pg_catalog.pg_roles r"))
            .map(|(cols, _)| cols)
            .unwrap();
        let (mut depth, mut items, mut quoted) = (0i32, 1, false);
        for ch in body.chars() {
            match ch {
                '\'' => quoted = !quoted,
                '(' if !quoted => depth += 1,
                ')' if !quoted => depth -= 1,
                ',' if !quoted && depth == 0 => items += 1,
                _ => {}
            }
        }
        assert_eq!(items, 13);
    }
}
