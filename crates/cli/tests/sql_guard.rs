//! Read-only and approvals against a caller who writes hostile SQL
//! (issue 16), on the suite's real PostgreSQL, with real clients: psql,
//! tokio-postgres (simple and extended protocol) and a raw-protocol client
//! for the fast-path function call ('F').
//!
//! The oracle: a fingerprint of the whole test database (table contents,
//! sequences, large objects, relations, functions, roles, settings) taken
//! directly from the server before and after every hostile statement, which
//! goes through a read-only connection and through an approval connection
//! nobody approves. Any difference is a broken guarantee. The generator
//! crosses side-effect functions with every position a call can take;
//! `PORTCULLIS_ORACLE_CASES=N` runs N of them (0: all; default 160).

mod common;

use std::path::Path;
use std::process::Command;

use common::pg::{PG_PASSWORD, PgCluster};
use common::*;
use portcullis_tls::CertificateAuthority;

struct Guard {
    tmp: tempfile::TempDir,
    _gw: Proc,
    ca: String,
    token: String,
    port: u16,
    db: String,
    marker: String,
}

const SETUP: &str = r#"
CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
INSERT INTO customers SELECT i, 'name' || i, 'user' || i || '@example.com' FROM generate_series(1, 6) i;
CREATE TABLE side_effects (what text);
CREATE SEQUENCE s;
SELECT lo_create(4242);
CREATE FUNCTION purge_customer(i int) RETURNS int LANGUAGE sql VOLATILE AS
  $$ DELETE FROM customers WHERE id = i; INSERT INTO side_effects VALUES ('purged'); SELECT 1 $$;
CREATE FUNCTION stable_name(i int) RETURNS text LANGUAGE sql STABLE AS
  $$ SELECT name FROM customers WHERE id = i $$;
CREATE PROCEDURE purge_proc(i int) LANGUAGE sql AS $$ DELETE FROM customers WHERE id = i $$;
CREATE FUNCTION archive(c customers) RETURNS int LANGUAGE sql VOLATILE AS
  $$ INSERT INTO side_effects VALUES ('archived ' || c.id); SELECT 1 $$;
CREATE FUNCTION wraps_purge(i int) RETURNS int LANGUAGE plpgsql STABLE AS
  $$ BEGIN RETURN purge_customer(i); END $$;
"#;

/// Everything a statement could change, read straight from the server.
const FINGERPRINT: &str = r#"SELECT concat_ws(' | ',
  (SELECT string_agg(c::text, ',' ORDER BY id) FROM customers c),
  (SELECT coalesce(string_agg(what, ',' ORDER BY what), '') FROM side_effects),
  (SELECT last_value::text || is_called::text FROM s),
  (SELECT string_agg(oid::text, ',' ORDER BY oid) FROM pg_largeobject_metadata),
  (SELECT string_agg(relname || ':' || relkind::text || ':' || relnatts, ',' ORDER BY relname)
     FROM pg_class WHERE relnamespace = 'public'::regnamespace),
  (SELECT string_agg(proname || provolatile::text, ',' ORDER BY proname)
     FROM pg_proc WHERE pronamespace = 'public'::regnamespace),
  (SELECT string_agg(rolname || rolsuper::text, ',' ORDER BY rolname) FROM pg_roles),
  (SELECT coalesce(string_agg(array_to_string(setconfig, ','), ';' ORDER BY setdatabase, setrole), '')
     FROM pg_db_role_setting),
  (SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace),
  (SELECT coalesce(obj_description('customers'::regclass), '')),
  (SELECT coalesce(string_agg(relacl::text, ','), '') FROM pg_class WHERE relname = 'customers'))"#;

impl Guard {
    /// A gateway in front of a database of its own, `guard_<test>_<pid>`
    /// (tests run in parallel).
    fn start(test: &str) -> Guard {
        let pg = PgCluster::shared();
        let pid = std::process::id();
        let db = format!("guard_{test}_{pid}");
        pg.psql_direct(&format!("DROP DATABASE IF EXISTS {db}"));
        pg.psql_direct(&format!("CREATE DATABASE {db}"));
        pg.psql_db(&db, SETUP);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
        write_leaf(&ca, dir, "server");
        std::fs::write(dir.join("pgpw"), format!("{PG_PASSWORD}\n")).unwrap();
        let url = format!(
            "postgres://postgres@localhost:{}/{db}?sslrootcert={}",
            pg.port,
            pg.ca.display()
        );
        // The role is the cluster's superuser on purpose: the worst case
        // an operator can configure, so only the gateway stands between.
        let config = format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"

[postgres]
listen = "127.0.0.1:0"

[[connections]]
name = "ro"
type = "postgres"
url = "{url}"
password = "file:pgpw"
access = "read-only"

[[connections]]
name = "guarded"
type = "postgres"
url = "{url}"
password = "file:pgpw"
approval = {{ mode = "statements", classes = ["write", "ddl", "admin", "unknown"], approvers = ["dba"], wait = "100ms" }}

[[connections]]
name = "writes-held"
type = "postgres"
url = "{url}"
password = "file:pgpw"
approval = {{ mode = "statements", classes = ["write"], approvers = ["dba"], wait = "100ms" }}

# Writes and DDL pass unheld; anything unproven waits (a class holds
# every more powerful one: "unknown" holds only itself).
[[connections]]
name = "ddl-free"
type = "postgres"
url = "{url}"
password = "file:pgpw"
approval = {{ mode = "statements", classes = ["unknown"], approvers = ["dba"], wait = "100ms" }}

# Full access: nothing read or held (a second door to the same database).
[[connections]]
name = "rw"
type = "postgres"
url = "{url}"
password = "file:pgpw"

[[grants]]
groups = ["testers"]
connections = ["ro", "guarded", "ddl-free", "writes-held", "rw"]
"#
        );
        let (gw, token) = gateway_with_config(dir, &config);
        let port = gw.pg_port.expect("postgres listener");
        Guard {
            ca: dir.join("ca.pem").display().to_string(),
            tmp,
            _gw: gw,
            token,
            port,
            db,
            marker: format!("/tmp/portcullis-oracle-{test}-{pid}"),
        }
    }

    async fn client(&self, connection: &str) -> tokio_postgres::Client {
        pg_client(self.port, Path::new(&self.ca), connection, &self.token)
            .await
            .unwrap()
    }

    /// A client straight to the server, around the gateway.
    async fn direct(&self) -> tokio_postgres::Client {
        let pg = PgCluster::shared();
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&pg.dir)
            .port(pg.port)
            .user("postgres")
            .dbname(&self.db);
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    fn cli(&self, args: &[&str]) -> String {
        let o = Command::new(BIN)
            .arg("--config")
            .arg(self.tmp.path().join("portcullis.toml"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

async fn fingerprint(direct: &tokio_postgres::Client) -> String {
    direct
        .query_one(FINGERPRINT, &[])
        .await
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_else(|e| format!("fingerprint failed: {e:?}"))
}

/// Side-effect functions, spelled every way a caller might.
const FUNCS: &[&str] = &[
    "purge_customer(1)",
    "public.purge_customer(2)",
    "\"purge_customer\"(3)",
    "PUBLIC.PURGE_CUSTOMER(4)",
    "\"public\".\"purge_customer\"(5)",
    "setval('s', 99)",
    "nextval('s')",
    "lo_unlink(4242)",
    "lo_create(777)",
    "set_config('default_transaction_read_only', 'off', false)",
    "pg_catalog.set_config('transaction_read_only', 'off', true)",
    "query_to_xml('select set_config(''default_transaction_read_only'',''off'',false)', true, true, '')",
];

/// Every place a call can hide.
const POSITIONS: &[&str] = &[
    "SELECT {f}",
    "SELECT * FROM {f} AS x",
    "SELECT 1 FROM customers, LATERAL (SELECT {f}) x",
    "SELECT * FROM customers WHERE id IN (SELECT {f})",
    "WITH x AS (SELECT {f}) SELECT * FROM x",
    "WITH x AS MATERIALIZED (SELECT {f}) SELECT 1",
    "VALUES ({f})",
    "SELECT CASE WHEN id > 0 THEN {f} END FROM customers",
    "SELECT id FROM customers ORDER BY {f}",
    "SELECT count(*) FROM customers GROUP BY id HAVING {f} IS NOT NULL",
    "SELECT (SELECT {f})",
    "SELECT ARRAY(SELECT {f})",
    "EXPLAIN ANALYZE SELECT {f}",
    "EXPLAIN (ANALYZE) SELECT {f}",
    "EXPLAIN (ANALYZE true, FORMAT JSON) SELECT {f}",
    "explain (costs off, analyze on) select {f}",
    "SELECT /* comment */ {f} -- trailing",
    "SELECT * FROM ROWS FROM ({f}) AS r",
    "TABLE customers; SELECT {f}",
    "BEGIN; SELECT {f}; COMMIT",
    "BEGIN READ ONLY; SELECT {f}; COMMIT",
    "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT {f}; COMMIT",
    "SELECT {f} FROM generate_series(1, 2)",
    "PREPARE p AS SELECT {f}; EXECUTE p",
];

/// Whole statements that write, change the schema, reach the server's
/// files, or switch the guards off.
fn statements(db: &str, marker: &str) -> Vec<String> {
    [
        "EXPLAIN ANALYZE DELETE FROM customers",
        "EXPLAIN (ANALYZE) UPDATE customers SET name = 'x'",
        "EXPLAIN (ANALYZE 1) INSERT INTO side_effects VALUES ('e')",
        "EXPLAIN (VERBOSE, ANALYZE on) DELETE FROM customers WHERE id = 1",
        "COPY customers TO PROGRAM 'touch {marker}'",
        "COPY (SELECT 1) TO '{marker}'",
        "COPY customers FROM PROGRAM 'echo 9,x,y'",
        "COPY side_effects FROM '/etc/hostname'",
        "DELETE FROM customers",
        "WITH d AS (DELETE FROM customers RETURNING *) SELECT * FROM d",
        "SELECT * FROM (WITH u AS (UPDATE customers SET name = 'u' RETURNING 1) SELECT * FROM u) s",
        "TRUNCATE side_effects",
        "INSERT INTO side_effects VALUES ('direct')",
        "MERGE INTO customers c USING (SELECT 1 AS id) s ON c.id = s.id WHEN MATCHED THEN DELETE",
        "CREATE TABLE made_here (a int)",
        "SELECT * INTO made_here2 FROM customers",
        "CREATE TEMP TABLE t_here (a int)",
        "DROP TABLE side_effects",
        "ALTER TABLE customers ADD COLUMN z int",
        "COMMENT ON TABLE customers IS 'x'",
        "GRANT ALL ON customers TO PUBLIC",
        "CREATE ROLE intruder",
        "ALTER DATABASE {db} SET default_transaction_read_only = off",
        "CREATE OR REPLACE FUNCTION stable_name(i int) RETURNS text LANGUAGE sql VOLATILE AS $$ SELECT 'x' $$",
        "CALL purge_proc(1)",
        "DO $$ BEGIN DELETE FROM customers; END $$",
        "DO LANGUAGE plpgsql $x$ BEGIN PERFORM purge_customer(5); END $x$",
        "SET default_transaction_read_only = off; DELETE FROM customers",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; DELETE FROM customers",
        "BEGIN READ WRITE; DELETE FROM customers; COMMIT",
        "START TRANSACTION READ WRITE; INSERT INTO side_effects VALUES ('x'); COMMIT",
        "BEGIN; SET TRANSACTION READ WRITE; DELETE FROM customers; COMMIT",
        "RESET ALL; DELETE FROM customers",
        "SET ROLE postgres; DELETE FROM customers",
        "PREPARE q AS DELETE FROM customers; EXECUTE q",
        "SELECT lo_import('/etc/hostname')",
        "SELECT U&\"purge\\005fcustomer\"(1)",
        "sElEcT PuRgE_CuStOmEr(1)",
        "SELECT pg_catalog.lo_unlink(4242)",
        "SELECT 1; DELETE FROM customers",
        "SELECT 1 /* ; */; DELETE FROM customers WHERE id = 2",
        // The adversarial review's parser differentials.
        "EXPLAIN (ANALYSE) DELETE FROM customers",
        "EXPLAIN (ANALYSE) SELECT pg_catalog.set_config('default_transaction_read_only','off',false)",
        "SELECT 1 ORDER BY 1 USING </* LIMIT ' */ ; COPY (SELECT 1) TO PROGRAM $$touch {marker}$$; --'",
        "SET standard_conforming_strings = off",
        "SELECT 'a\\', '; DELETE FROM customers; --'",
        "SET client_encoding = 'SJIS'",
        // A dollar-quote tag past ASCII: PostgreSQL reads a string where the
        // parser read a placeholder and a word (review, 2026-12-03).
        "SELECT $a€$, ' $a€$; DELETE FROM customers; -- '",
        "SELECT $€$, ' $€$; DROP TABLE side_effects; -- '",
        "SELECT '{}'::jsonb ?-- '\n$$a$$; COMMIT; BEGIN READ WRITE; DELETE FROM customers; COMMIT; --'",
        "WITH x AS (SELECT '{}'::jsonb ?-- '\n$$a$$), d AS (DELETE FROM customers RETURNING 1) SELECT 1 --') SELECT 1",
        "CREATE TABLE IF NOT EXISTS customers (a bit DEFAULT X'\\'); GRANT ALL ON customers TO PUBLIC; --')",
    ]
    .iter()
    .map(|s| s.replace("{db}", db).replace("{marker}", marker))
    .collect()
}

/// Ordinary reads that must pass on both connections (no false refusals).
const READS: &[&str] = &[
    "SELECT * FROM customers",
    "SELECT c.id, count(*) FROM customers c JOIN customers d ON c.id = d.id GROUP BY c.id ORDER BY 1",
    "SELECT id, row_number() OVER (ORDER BY name), lag(name) OVER (ORDER BY id) FROM customers",
    "WITH x AS (SELECT * FROM customers) SELECT max(id), min(name) FROM x",
    "SELECT coalesce(email, 'none'), lower(name), upper(name), length(name) FROM customers",
    "SELECT now(), current_date, current_timestamp, random() < 2",
    "SELECT * FROM generate_series(1, 3) g",
    "SELECT stable_name(1)",
    "SELECT * FROM customers WHERE name LIKE 'n%' OR id IN (SELECT id FROM customers LIMIT 2)",
    "SELECT jsonb_build_object('a', id) FROM customers",
    "SELECT 'purge_customer(1)' AS looks_like_a_call, $q$DELETE FROM customers$q$",
    "SELECT 'pour into cup', 'for update'",
    "EXPLAIN SELECT * FROM customers",
    "EXPLAIN DELETE FROM customers",
    "SHOW search_path",
    "BEGIN; SELECT 1; COMMIT",
    "SELECT to_char(now(), 'YYYY'), date_trunc('day', now())",
    "SELECT string_agg(name, ',') FROM customers",
    "TABLE customers",
    "SELECT pg_sleep(0)",
];

fn cases(g: &Guard) -> Vec<String> {
    let mut all: Vec<String> = statements(&g.db, &g.marker);
    for p in POSITIONS {
        for f in FUNCS {
            all.push(p.replace("{f}", f));
        }
    }
    let want: usize = std::env::var("PORTCULLIS_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(160);
    if want == 0 || want >= all.len() {
        return all;
    }
    // The whole-statement list always runs; a deterministic sample of the
    // generated ones (a different slice per seed) fills the rest.
    let fixed = statements(&g.db, &g.marker).len();
    let mut generated = all.split_off(fixed);
    let seed: u64 = std::env::var("PORTCULLIS_ORACLE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in (1..generated.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        generated.swap(i, (x >> 33) as usize % (i + 1));
    }
    generated.truncate(want.saturating_sub(fixed));
    all.extend(generated);
    all
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn hostile_sql_changes_nothing_through_read_only_or_unapproved_connections() {
    let g = Guard::start("oracle");
    let cases = cases(&g);
    eprintln!("oracle: {} hostile statements x 2 connections", cases.len());
    rt().block_on(async {
        let direct = g.direct().await;
        let before = fingerprint(&direct).await;
        assert!(before.contains("user1@example.com"), "{before}");
        for connection in ["ro", "guarded"] {
            let c = g.client(connection).await;
            for (i, sql) in cases.iter().enumerate() {
                let simple = c.simple_query(sql).await;
                // The extended protocol too, for what is one statement.
                let extended = if sql.contains(';') {
                    None
                } else {
                    Some(c.query(sql.as_str(), &[]).await)
                };
                let _ = c.simple_query("ROLLBACK").await;
                let after = fingerprint(&direct).await;
                assert_eq!(
                    before, after,
                    "case {i} on {connection} changed the database: {sql}\n simple: {simple:?}\n extended: {extended:?}"
                );
                assert!(
                    !Path::new(&g.marker).exists(),
                    "case {i} on {connection} reached the server's files: {sql}"
                );
                if connection == "ro" {
                    let r = c
                        .simple_query("SHOW default_transaction_read_only")
                        .await
                        .unwrap();
                    let on = r.iter().any(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
                        _ => false,
                    });
                    assert!(on, "case {i} switched the read-only backstop off: {sql}");
                }
            }
            // No false refusals: ordinary reads run, in both protocols.
            for sql in READS {
                c.simple_query(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{connection}: {sql}: {e}"));
                if !sql.contains(';') {
                    c.query(*sql, &[])
                        .await
                        .unwrap_or_else(|e| panic!("{connection} (extended): {sql}: {e}"));
                }
            }
        }
        assert_eq!(before, fingerprint(&direct).await);
    });
}

/// The review's findings, one by one, with psql.
#[test]
fn review_findings_are_refused_or_held_with_psql() {
    let g = Guard::start("findings");
    let psql = |connection: &str, sql: &str| {
        let o = Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(format!(
                "host=localhost port={} dbname={connection} user=agent sslmode=verify-full sslrootcert={}",
                g.port, g.ca
            ))
            .env("PGPASSWORD", &g.token)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let pg = PgCluster::shared();
    let count = || pg.psql_db(&g.db, "SELECT count(*) FROM customers");
    assert_eq!(count(), "6");

    // EXPLAIN (ANALYZE) UPDATE on the approval connection is held.
    let (ok, out) = psql(
        "guarded",
        "EXPLAIN (ANALYZE) UPDATE customers SET name = 'x'",
    );
    assert!(!ok && out.contains("review"), "{out}");
    assert_eq!(
        pg.psql_db(&g.db, "SELECT count(*) FROM customers WHERE name = 'x'"),
        "0"
    );
    // set_config in the FROM list cannot switch the backstop off, so the
    // EXPLAIN (ANALYZE) DELETE after it is refused as well.
    let (ok, out) = psql(
        "ro",
        "SELECT * FROM set_config('default_transaction_read_only','off',false)",
    );
    assert!(!ok && out.contains("admin"), "{out}");
    let (ok, out) = psql("ro", "EXPLAIN (ANALYZE) DELETE FROM customers");
    assert!(!ok && out.contains("read-only"), "{out}");
    assert_eq!(count(), "6");
    // COPY TO PROGRAM is admin.
    let copy = format!("COPY customers TO PROGRAM 'touch {}'", g.marker);
    let (ok, out) = psql("ro", &copy);
    assert!(!ok && out.contains("admin"), "{out}");
    assert!(!Path::new(&g.marker).exists());
    // A side-effect function in a SELECT is held on the approval connection.
    let (ok, out) = psql("guarded", "SELECT purge_customer(2)");
    assert!(!ok && out.contains("review"), "{out}");
    assert_eq!(count(), "6");
    // A stable SQL function of the application's own is a proven read:
    // its body is proven as a statement.
    let (ok, out) = psql("ro", "SELECT stable_name(3)");
    assert!(ok && out.trim() == "name3", "{out}");

    // Review, 2026-12-03: EXPLAIN EXECUTE evaluates its parameters when
    // it is planned; read-only was switched off that way.
    let (ok, out) = psql(
        "ro",
        "PREPARE p(text) AS SELECT $1; EXPLAIN EXECUTE p(set_config('default_transaction_read_only','off',false))",
    );
    assert!(!ok && out.contains("read-only"), "{out}");
    // Functions PostgreSQL calls without the statement naming them as
    // calls: attribute notation, a domain's CHECK, a STABLE function
    // calling a volatile one. Held on the approval connection.
    for sql in [
        "SELECT c.archive FROM customers c WHERE id = 1",
        "SELECT (c).archive FROM customers c WHERE id = 1",
        "SELECT wraps_purge(4)",
    ] {
        let (ok, out) = psql("guarded", sql);
        assert!(!ok && out.contains("review"), "{sql}: {out}");
        let (ok, out) = psql("ro", sql);
        assert!(!ok, "{sql}: {out}");
    }
    assert_eq!(count(), "6");
    assert_eq!(pg.psql_db(&g.db, "SELECT count(*) FROM side_effects"), "0");
    // `classes = ["write"]` holds what is more powerful: COPY FROM
    // PROGRAM is admin (review: it ran a shell command unheld).
    let (ok, out) = psql("writes-held", "COPY side_effects FROM PROGRAM 'echo x'");
    assert!(!ok && out.contains("review"), "{out}");

    // Refusals are evidence: the audit chain has the statement's digest
    // and the recording has what the caller sent, not the placeholder.
    let refused_sql = "DELETE FROM customers WHERE id = 3";
    let (ok, _) = psql("ro", refused_sql);
    assert!(!ok);
    let digest = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        refused_sql.as_bytes(),
    ));
    let audit = g.cli(&["audit", "export"]);
    let entry = audit
        .lines()
        .find(|l| l.contains("statement_refused") && l.contains(&digest))
        .unwrap_or_else(|| panic!("no statement_refused entry for {digest}:\n{audit}"));
    assert!(
        entry.contains("agent:tester") && entry.contains("\"ro\"") && entry.contains("write"),
        "{entry}"
    );
    let list = g.cli(&["sessions", "list", "--json", "--connection", "ro"]);
    let replays: Vec<String> = list
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .map(|id| g.cli(&["replay", &id, "--no-wait"]))
        .collect();
    let replay = replays
        .iter()
        .find(|r| r.contains(refused_sql))
        .unwrap_or_else(|| panic!("no replay shows the refused statement: {replays:?}"));
    assert!(replay.contains("REFUSED"), "{replay}");
    assert!(
        !replays.iter().any(|r| r.contains("portcullis_refused_")),
        "{replays:?}"
    );
}

/// The fast-path function call ('F'), from a raw-protocol client.
#[test]
fn function_call_messages_are_classified_by_their_function() {
    let g = Guard::start("fastpath");
    let pg = PgCluster::shared();
    let oid = |sig: &str| -> u32 {
        pg.psql_db(&g.db, &format!("SELECT '{sig}'::regprocedure::oid"))
            .parse()
            .unwrap()
    };
    // (abs: a fast-path call carries no collation, so no text function.)
    let (abs, purge) = (oid("abs(integer)"), oid("purge_customer(int)"));
    rt().block_on(async {
        // A non-volatile function runs on a read-only connection.
        let answers = fast_path(&g, "ro", abs, b"-42").await;
        let v = answers
            .iter()
            .find(|(t, _)| *t == b'V')
            .unwrap_or_else(|| panic!("no FunctionCallResponse: {answers:?}"));
        assert!(
            v.1.ends_with(b"42") && !v.1.ends_with(b"-42"),
            "{answers:?}"
        );
        // A volatile one is refused there...
        let answers = fast_path(&g, "ro", purge, b"1").await;
        let e = error_of(&answers);
        assert!(e.contains("42501") && e.contains("read-only"), "{e}");
        // ...and held on the approval connection.
        let answers = fast_path(&g, "guarded", purge, b"1").await;
        assert!(
            answers
                .iter()
                .any(|(t, b)| *t == b'N' && String::from_utf8_lossy(b).contains("review")),
            "{answers:?}"
        );
        let e = error_of(&answers);
        assert!(e.contains("57014"), "{e}");
        assert!(
            fast_path(&g, "guarded", abs, b"7")
                .await
                .iter()
                .any(|(t, _)| *t == b'V')
        );
    });
    assert_eq!(pg.psql_db(&g.db, "SELECT count(*) FROM customers"), "6");
}

use common::wire::error_of;

/// Log in over direct TLS and send one FunctionCall with one text
/// argument; every message up to ReadyForQuery comes back.
async fn fast_path(g: &Guard, connection: &str, oid: u32, arg: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut w = common::wire::Wire::login(g.port, Path::new(&g.ca), connection, &g.token).await;
    let mut body = Vec::new();
    body.extend_from_slice(&oid.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&(arg.len() as i32).to_be_bytes());
    body.extend_from_slice(arg);
    body.extend_from_slice(&0i16.to_be_bytes());
    w.send(b'F', &body).await;
    w.until_ready(None).await
}

/// A proof must not outlive the schema it was made on: a function made
/// volatile inside a transaction through the gateway, while another
/// session proves (and caches) the old stable one, is volatile once the
/// transaction commits.
#[test]
fn a_schema_change_through_the_gateway_ends_the_proofs_made_before_it() {
    let g = Guard::start("stale");
    let pg = PgCluster::shared();
    rt().block_on(async {
        let a = g.client("ddl-free").await;
        let b = g.client("ddl-free").await;
        let name = |r: Vec<tokio_postgres::SimpleQueryMessage>| {
            r.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
        };
        assert_eq!(
            name(b.simple_query("SELECT stable_name(1)").await.unwrap()),
            Some("name1".into())
        );
        a.batch_execute(
            "BEGIN; CREATE OR REPLACE FUNCTION stable_name(i int) RETURNS text LANGUAGE sql VOLATILE AS \
             $$ DELETE FROM customers WHERE id = i; SELECT 'gone' $$",
        )
        .await
        .unwrap();
        // Not proven while the change is under way (before 2026-12-05:
        // proven against the old function, and cached): held.
        let e = b
            .simple_query("SELECT stable_name(2)")
            .await
            .expect_err("proven while a schema change was under way");
        let message = e.as_db_error().map(|d| d.message().to_string());
        assert!(
            message.as_deref().is_some_and(|m| m.contains("review")),
            "{e:?}"
        );
        a.batch_execute("COMMIT").await.unwrap();
        let e = b
            .simple_query("SELECT stable_name(3)")
            .await
            .expect_err("a volatile function runs unreviewed");
        let message = e.as_db_error().map(|d| d.message().to_string());
        assert!(
            message.as_deref().is_some_and(|m| m.contains("review")),
            "{e:?}"
        );
    });
    assert_eq!(pg.psql_db(&g.db, "SELECT count(*) FROM customers"), "6");
}

/// A view replaced through another connection of the gateway's to the
/// same database, one whose statements are not read (full access): the
/// read-only and approval connections had proven reads of it (no hidden
/// code) and kept that for the cache's 30 s, so the new view's advisory
/// lock was taken on a read (2026-12-05). A schema change on any
/// connection makes every connection's proofs stale. Both protocols: the
/// extended one prepares the change before it runs it.
#[test]
fn a_schema_change_through_another_connection_ends_the_proofs() {
    let g = Guard::start("otherdoor");
    let pg = PgCluster::shared();
    pg.psql_db(
        &g.db,
        "CREATE VIEW v_plain AS SELECT 1 AS x; CREATE VIEW v_other AS SELECT 1 AS x;",
    );
    rt().block_on(async {
        let rw = g.client("rw").await;
        for (view, key, extended) in [("v_plain", 4250, false), ("v_other", 4251, true)] {
            let read = format!("SELECT * FROM {view}");
            // Proven, and the proof cached, on both guarded connections.
            reads_proven(&g, &[&read]).await;
            let replace = format!(
                "CREATE OR REPLACE VIEW {view} AS SELECT (pg_try_advisory_lock({key}))::int AS x"
            );
            if extended {
                rw.execute(&replace, &[]).await.unwrap();
            } else {
                rw.batch_execute(&replace).await.unwrap();
            }
            refused_unproven(&g, &read).await;
            assert_eq!(advisory_locks(&g).await, 0, "{view}: a lock was taken");
            // Put back through the same door: proven again at once.
            rw.batch_execute(&format!("CREATE OR REPLACE VIEW {view} AS SELECT 1 AS x"))
                .await
                .unwrap();
        }
    });
}

/// Review round 5: answers to what was sent before a schema change ended
/// it. A pipelined `pg_sleep` answered idle after `BEGIN; CREATE OR
/// REPLACE VIEW …` was sent, and the read-only connection's read, proven
/// against the committed view, ran the new one's advisory lock once the
/// change committed; a Sync the target ignored during copy-in (or a
/// Query it skipped in a failed batch) put the counts out of step, and a
/// later error "failed alone" a change that had succeeded.
#[test]
fn a_schema_change_is_not_ended_by_answers_to_what_came_before() {
    let g = Guard::start("answers");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE VIEW v_ans AS SELECT 1 AS x; CREATE TABLE t_copy (a int);",
    );
    let change = |lock: u32| {
        format!("CREATE OR REPLACE VIEW v_ans AS SELECT (pg_try_advisory_lock({lock}))::int AS x")
    };
    rt().block_on(async {
        // (Proven, the read would wait for the change's lock.)
        let refused = || {
            tokio::time::timeout(
                std::time::Duration::from_secs(20),
                refused_unproven(&g, "SELECT * FROM v_ans"),
            )
        };
        reads_proven(&g, &["SELECT * FROM v_ans"]).await;
        let login = || common::wire::Wire::login(g.port, Path::new(&g.ca), "rw", &g.token);
        // Pipelined: the sleep's idle answer comes after the change left.
        let mut w = login().await;
        w.query("SELECT pg_sleep(0.3)").await;
        w.query(&format!("BEGIN; {}", change(4270))).await;
        let first = w.until(b'Z').await;
        assert_eq!(first.last().map(|a| a.1.clone()), Some(b"I".to_vec()));
        let second = w.until(b'Z').await;
        assert_eq!(
            second.last().map(|a| a.1.clone()),
            Some(b"T".to_vec()),
            "{second:?}"
        );
        refused().await.expect("the read was proven and waited");
        w.ask("ROLLBACK").await;
        assert_eq!(advisory_locks(&g).await, 0, "a lock was taken");
        reads_proven(&g, &["SELECT * FROM v_ans"]).await;
        // A Query inside a failed extended batch: the session is closed
        // (the target would skip it, and the counts run ahead).
        let mut w = login().await;
        w.parse("", "SELECT 1/0").await;
        w.bind("").await;
        w.execute().await;
        w.query("SELECT 42").await;
        w.sync().await;
        let mut closed = w.until(b'E').await;
        if !error_of(&closed).contains("08P01") {
            closed = w.until(b'E').await;
        }
        assert!(error_of(&closed).contains("08P01"), "{closed:?}");
        // A Flush alone starts no batch: a query after it is answered.
        let mut w = login().await;
        w.flush().await;
        assert_eq!(w.value("SELECT 42").await, "42");
        w.terminate().await;
        // A Sync during a simple query's copy-in, which the target
        // ignores: it ran the counts ahead, and a later error in a
        // change's transaction "failed" the change. Now the session is
        // closed at the Sync.
        let mut w = login().await;
        w.query("COPY t_copy FROM STDIN").await;
        w.until(b'G').await;
        w.sync().await;
        w.send(b'f', b"stop\0").await;
        let closed = w.until(b'E').await;
        assert!(error_of(&closed).contains("08P01"), "{closed:?}");
        assert_eq!(advisory_locks(&g).await, 0, "a lock was taken");
        reads_proven(&g, &["SELECT * FROM v_ans"]).await;
    });
}

/// A driver's COPY FROM STDIN in the extended protocol (tokio-postgres,
/// as libpq: Bind, Execute, Sync; the data; CopyDone, Sync): the target
/// ignores the first Sync. Counted, it put the counts one ahead for the
/// rest of the session, and a later schema change there stayed under
/// way until the session ended, every read-only caller's proofs held
/// meanwhile (review round 5, LOW-A). A copy the target failed leaves
/// that Sync in doubt: a schema change on the session then closes it.
#[test]
fn a_drivers_copy_leaves_the_counts_level() {
    let g = Guard::start("copylevel");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE VIEW v_cp AS SELECT 1 AS x; CREATE TABLE t_cp (a int);",
    );
    rt().block_on(async {
        reads_proven(&g, &["SELECT * FROM v_cp"]).await;
        let rw = g.client("rw").await;
        assert_eq!(copy(&rw, b"1\n2\n").await.unwrap(), 2);
        rw.batch_execute("CREATE OR REPLACE VIEW v_cp AS SELECT 2 AS x")
            .await
            .unwrap();
        // The change ended at its answer, the session still open.
        reads_proven(&g, &["SELECT * FROM v_cp"]).await;
        assert_eq!(copy(&rw, b"3\n").await.unwrap(), 1, "and again");
        let e = copy(&rw, b"not a number\n").await.unwrap_err();
        assert!(format!("{e:?}").contains("invalid input"), "{e:?}");
        let e = rw
            .batch_execute("CREATE OR REPLACE VIEW v_cp AS SELECT 3 AS x")
            .await
            .unwrap_err();
        // (tokio-postgres may have closed the connection itself: under
        // load it can send CopyFail and Sync behind its CopyDone and Sync
        // once the error came, and an extra ReadyForQuery ends it; the
        // raw client below sees the gateway's own answer.)
        let m = e.as_db_error().map(|d| d.message().to_string());
        assert!(
            e.is_closed()
                || m.as_deref()
                    .is_some_and(|m| m.contains("cannot be followed")),
            "{e:?}"
        );
        let mut w = common::wire::Wire::login(g.port, Path::new(&g.ca), "rw", &g.token).await;
        w.parse("", "COPY t_cp FROM STDIN").await;
        w.bind("").await;
        w.execute().await;
        w.sync().await;
        w.until(b'G').await;
        w.send(b'd', b"not a number\n").await;
        w.send(b'c', b"").await;
        w.sync().await;
        let failed = w.until(b'Z').await;
        assert!(error_of(&failed).contains("invalid input"), "{failed:?}");
        w.query("CREATE OR REPLACE VIEW v_cp AS SELECT 3 AS x")
            .await;
        let closed = w.until(b'E').await;
        assert!(
            error_of(&closed).contains("cannot be followed"),
            "{closed:?}"
        );
        reads_proven(&g, &["SELECT * FROM v_cp"]).await;
        let x: i32 = g
            .direct()
            .await
            .query_one("SELECT x FROM v_cp", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(x, 2, "the change did not run");
    });
}

/// A trigger on the copy's table that waits, then raises: the target
/// fails the copy after its CopyInResponse and before it reads the Sync
/// sent behind the Execute, so it answers that Sync after all.
const FAILING_COPY: &str = "CREATE TABLE t_trig (a int); \
    CREATE FUNCTION trig_no() RETURNS trigger LANGUAGE plpgsql AS \
    $$ BEGIN PERFORM pg_sleep(1); RAISE EXCEPTION 'trigger says no'; END $$; \
    CREATE TRIGGER t_trig_no BEFORE INSERT ON t_trig FOR EACH STATEMENT EXECUTE FUNCTION trig_no();";

/// Review of the copy-in follower: a schema change sent between an
/// extended COPY's CopyInResponse (its Sync taken back) and the copy's
/// end was counted one place too early when a trigger then failed the
/// copy before the target read that Sync: the change was taken as ended
/// at the Sync's late answer, before it ran, and a read on `ro` was
/// proven against the old view and ran the new one's advisory lock once
/// it committed. Now nothing that needs the count exact passes until
/// the copy ends: the session is closed.
#[test]
fn a_change_sent_while_a_copy_may_fail_is_not_taken_as_ended() {
    let g = Guard::start("copyfails");
    PgCluster::shared().psql_db(
        &g.db,
        &format!("CREATE VIEW v_cf AS SELECT 1 AS x; {FAILING_COPY}"),
    );
    rt().block_on(async {
        reads_proven(&g, &["SELECT * FROM v_cf"]).await;
        let mut w = common::wire::Wire::login(g.port, Path::new(&g.ca), "rw", &g.token).await;
        w.parse("", "COPY t_trig FROM STDIN").await;
        w.bind("").await;
        w.execute().await;
        w.sync().await;
        w.until(b'G').await;
        w.send(b'c', b"").await;
        w.sync().await;
        w.query("BEGIN; CREATE OR REPLACE VIEW v_cf AS SELECT 2 + (pg_try_advisory_lock(4292))::int AS x")
            .await;
        let mut closed = w.until(b'E').await;
        if !error_of(&closed).contains("08P01") {
            closed = w.until(b'E').await;
        }
        assert!(error_of(&closed).contains("cannot be followed"), "{closed:?}");
        reads_proven(&g, &["SELECT * FROM v_cf"]).await;
        assert_eq!(advisory_locks(&g).await, 0, "a lock was taken");
        // The change pipelined behind the COPY before its copy-in began
        // (a sleep keeps the target busy while the relay reads it all):
        // counted after the Sync taken back, it was moved back a place
        // and not forward again when the trigger failed the copy (second
        // review). Now the session is closed at the take-back.
        let mut w = common::wire::Wire::login(g.port, Path::new(&g.ca), "rw", &g.token).await;
        w.query("SELECT pg_sleep(0.5)").await;
        w.parse("", "COPY t_trig FROM STDIN").await;
        w.bind("").await;
        w.execute().await;
        w.sync().await;
        w.parse("", "BEGIN").await;
        w.bind("").await;
        w.execute().await;
        w.parse("", "CREATE OR REPLACE VIEW v_cf AS SELECT 2 + (pg_try_advisory_lock(4293))::int AS x")
            .await;
        w.bind("").await;
        w.execute().await;
        let closed = w.until(b'E').await;
        assert!(error_of(&closed).contains("08P01"), "{closed:?}");
        // The sleep ran, and its answer comes ahead of the close (it
        // could be lost with the target's read it came in).
        assert_eq!(
            common::wire::texts(&closed, b'C'),
            ["SELECT 1\0"],
            "{closed:?}"
        );
        // (The change had begun: it ends once the target's session has.)
        reads_proven_soon(&g, "SELECT * FROM v_cf").await;
        assert_eq!(advisory_locks(&g).await, 0, "a lock was taken");
        let x: i32 = g
            .direct()
            .await
            .query_one("SELECT x FROM v_cf", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(x, 1, "the change did not run");
    });
}

/// A session closed while the relay handles one read of the target's
/// answers: what that read passed before the close reaches the caller
/// ahead of the goodbye. It was dropped with the rest of the read (a
/// review saw a `pg_sleep`'s answer lost that way). The target answers a
/// simple query's SELECT and its COPY's CopyInResponse in one write (it
/// flushes at the CopyInResponse); a Query pipelined behind the COPY
/// (counted while the sleep runs) closes the session there.
#[test]
fn answers_passed_before_a_close_reach_the_caller() {
    let g = Guard::start("batchclose");
    PgCluster::shared().psql_db(&g.db, "CREATE TABLE t_bc (a int);");
    rt().block_on(async {
        let mut w = common::wire::Wire::login(g.port, Path::new(&g.ca), "rw", &g.token).await;
        w.query("SELECT pg_sleep(0.3), 40 + 2 AS answer; COPY t_bc FROM STDIN")
            .await;
        w.query("SELECT 1").await;
        let answers = w.until(b'E').await;
        assert!(
            error_of(&answers).contains("sent inside a COPY"),
            "{answers:?}"
        );
        let tags: Vec<u8> = answers.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"TDCE", "{answers:?}");
        assert!(answers[1].1.ends_with(b"42"), "{answers:?}");
        assert_eq!(common::wire::texts(&answers, b'C'), ["SELECT 1\0"]);
    });
}

/// A caller on a full-access connection turns off the target's check for
/// a client that is gone and runs a statement that catches every cancel,
/// then leaves: the gateway's cancel is caught and its goodbye never read,
/// so the statement ran on for good (review, 2026-12-05). Its backend is
/// now ended for certain a few seconds after the session.
#[test]
fn a_statement_that_catches_the_cancel_ends_when_its_caller_leaves() {
    let g = Guard::start("outlive");
    rt().block_on(async {
        let mut w = common::wire::Wire::login(g.port, Path::new(&g.ca), "rw", &g.token).await;
        let set = w.ask("SET client_connection_check_interval = 0").await;
        assert!(set.iter().all(|(t, _)| *t != b'E'), "{set:?}");
        w.query(
            "DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(0.2); \
             EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$ /* outlive-mark */",
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        drop(w);
        let direct = g.direct().await;
        let running = || async {
            direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE query LIKE '%outlive-mark */' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        };
        assert_eq!(running().await, 1, "the statement runs, its cancel caught");
        let mut ended = false;
        for _ in 0..40 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if running().await == 0 {
                ended = true;
                break;
            }
        }
        // Never left running for the next test, whatever happened.
        direct
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE query LIKE '%outlive-mark */' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(ended, "the backend still ran 10 s after its caller left");
    });
}

/// `rows` into `t_cp` by the driver's COPY FROM STDIN.
async fn copy(
    rw: &tokio_postgres::Client,
    rows: &'static [u8],
) -> Result<u64, tokio_postgres::Error> {
    use futures_util::SinkExt;
    let sink = rw.copy_in("COPY t_cp FROM STDIN").await?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(rows)).await?;
    sink.finish().await
}

/// A schema change whose caller left before its answer (Query and
/// Terminate at once): the session's end had not moved the proofs, and
/// the replaced view's lock was taken on the read-only connection for the
/// cache's 30 s (review, 2026-12-05). Now the change counts until the
/// target's session has closed.
#[test]
fn a_schema_change_whose_caller_left_at_once_ends_the_proofs() {
    let g = Guard::start("leftatonce");
    PgCluster::shared().psql_db(&g.db, "CREATE VIEW v_gone AS SELECT 1 AS x;");
    rt().block_on(async {
        reads_proven(&g, &["SELECT * FROM v_gone"]).await;
        let mut w = common::wire::Wire::login(g.port, Path::new(&g.ca), "rw", &g.token).await;
        w.query("CREATE OR REPLACE VIEW v_gone AS SELECT (pg_try_advisory_lock(4260))::int AS x")
            .await;
        w.terminate().await;
        refused_unproven(&g, "SELECT * FROM v_gone").await;
        assert_eq!(advisory_locks(&g).await, 0, "a lock was taken");
    });
}

/// A schema change under way in an open transaction on another
/// connection: the read was proven against the committed view, waited
/// for the view's lock, and ran the new view once the change committed
/// (review: it ended another session). While one is under way, nothing
/// that rests on the catalog is proven; nor is a read after the
/// session's own change in its transaction (the look-up does not see
/// it): on a connection whose rule lets DDL pass, a stable function's
/// body replaced and called in one transaction took a lock unheld.
#[test]
fn a_schema_change_under_way_is_not_proven_against() {
    let g = Guard::start("underway");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE VIEW v_tx AS SELECT 1 AS x; \
         CREATE FUNCTION f_own() RETURNS int LANGUAGE sql STABLE AS 'select 1';",
    );
    rt().block_on(async {
        reads_proven(&g, &["SELECT * FROM v_tx"]).await;
        let rw = g.client("rw").await;
        rw.batch_execute(
            "BEGIN; CREATE OR REPLACE VIEW v_tx AS SELECT (pg_try_advisory_lock(4261))::int AS x",
        )
        .await
        .unwrap();
        // Refused at once (before: proven, then waiting for the lock).
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            refused_unproven(&g, "SELECT * FROM v_tx"),
        )
        .await
        .expect("the read waited for the change's lock");
        rw.batch_execute("COMMIT").await.unwrap();
        refused_unproven(&g, "SELECT * FROM v_tx").await;
        rw.batch_execute("CREATE OR REPLACE VIEW v_tx AS SELECT 1 AS x")
            .await
            .unwrap();
        reads_proven(&g, &["SELECT * FROM v_tx"]).await;
        // The session's own change, on a connection that lets DDL pass:
        // a stable function's body replaced, then called.
        let own = g.client("ddl-free").await;
        own.batch_execute(
            "BEGIN; CREATE OR REPLACE FUNCTION f_own() RETURNS int LANGUAGE sql STABLE \
             AS 'select pg_try_advisory_lock(4262)::int'",
        )
        .await
        .unwrap();
        let e = own
            .simple_query("SELECT f_own()")
            .await
            .expect_err("the session's own new function body ran unheld");
        assert!(e.as_db_error().is_some(), "{e:?}");
        assert_eq!(advisory_locks(&g).await, 0, "a lock was taken");
        own.batch_execute("ROLLBACK").await.unwrap();
        // Words in a literal are no schema change (review: a transaction
        // left open after one held every proof of the gateway).
        rw.batch_execute("BEGIN; SELECT 'create do call execute' AS words")
            .await
            .unwrap();
        reads_proven(&g, &["SELECT * FROM v_tx"]).await;
        rw.batch_execute("COMMIT").await.unwrap();
        // A schema change that failed alone inside a transaction changed
        // nothing (review: `BEGIN; CALL missing();` left idle held every
        // proof of the gateway until its session closed)…
        rw.batch_execute("BEGIN").await.unwrap();
        rw.batch_execute("CALL missing_proc_zz()")
            .await
            .expect_err("no such procedure");
        reads_proven(&g, &["SELECT * FROM v_tx"]).await;
        rw.batch_execute("ROLLBACK").await.unwrap();
        // …but one failing after a change that succeeded does not end it:
        // rolling back to the savepoint brings the change back.
        rw.batch_execute("BEGIN").await.unwrap();
        rw.batch_execute("CREATE OR REPLACE VIEW v_tx AS SELECT 1 AS x")
            .await
            .unwrap();
        rw.batch_execute("SAVEPOINT s").await.unwrap();
        rw.batch_execute("DROP TABLE missing_table_zz")
            .await
            .expect_err("no such table");
        refused_unproven(&g, "SELECT * FROM v_tx").await;
        rw.batch_execute("ROLLBACK TO s").await.unwrap();
        refused_unproven(&g, "SELECT * FROM v_tx").await;
        rw.batch_execute("ROLLBACK").await.unwrap();
        reads_proven(&g, &["SELECT * FROM v_tx"]).await;
    });
}

/// A superuser's write to the catalog itself through a connection that
/// does not classify statements: `UPDATE pg_proc SET prosrc = …` made a
/// proven stable function take a lock on the read-only connection for
/// the cache's 30 s (review, 2026-12-05). A write to a `pg_…` relation is
/// a schema change.
#[test]
fn a_write_to_the_catalog_ends_the_proofs() {
    let g = Guard::start("catalogwrite");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE FUNCTION g_cat() RETURNS int LANGUAGE sql STABLE AS 'select 1';",
    );
    rt().block_on(async {
        reads_proven(&g, &["SELECT g_cat()"]).await;
        g.client("rw")
            .await
            .batch_execute(
                "UPDATE pg_proc SET prosrc = 'select pg_try_advisory_lock(4263)::int'                  WHERE proname = 'g_cat'",
            )
            .await
            .unwrap();
        refused_unproven(&g, "SELECT g_cat()").await;
        assert_eq!(advisory_locks(&g).await, 0, "a lock was taken");
    });
}

/// Functions PostgreSQL calls without the statement naming them: a view
/// over a volatile function, and an operator of a built-in symbol (`=`)
/// whose code is volatile. Once either exists, statements that touch a
/// relation are not proven: refused on the read-only connection, held on
/// the approval one; nothing changes in the database.
#[test]
fn views_and_operators_that_run_volatile_code_are_not_proven() {
    let g = Guard::start("hidden");
    let pg = PgCluster::shared();
    let db = g.db.clone();
    // Made outside the gateway before its first statement (a change made
    // outside is seen within the catalog cache's 30 s, as for functions).
    let before = rt().block_on(async { fingerprint(&g.direct().await).await });
    pg.psql_db(
        &db,
        "CREATE FUNCTION eq_purge(a int, b text) RETURNS bool LANGUAGE sql VOLATILE AS \
           $$ INSERT INTO side_effects VALUES ('operator'); SELECT a::text = b $$; \
         CREATE OPERATOR = (leftarg = int, rightarg = text, function = eq_purge); \
         CREATE VIEW purging AS SELECT purge_customer(6) AS gone; \
         CREATE FUNCTION probe() RETURNS boolean LANGUAGE sql VOLATILE AS \
           $$ INSERT INTO side_effects VALUES ('probed'); SELECT true $$; \
         CREATE DOMAIN checked_int AS int CHECK (probe());",
    );
    let after_ddl = rt().block_on(async { fingerprint(&g.direct().await).await });
    rt().block_on(async {
        for conn in ["ro", "guarded"] {
            let c = g.client(conn).await;
            // Transaction control evaluates nothing: it still passes.
            c.simple_query("BEGIN").await.unwrap();
            c.simple_query("COMMIT").await.unwrap();
            for sql in [
                "SELECT * FROM purging",
                "SELECT name FROM customers WHERE id = '2'::text",
                // No relation, no function named: the operator runs anyway.
                "SELECT 1 = '1'::text",
                // A domain's CHECK (review).
                "SELECT 1::checked_int",
            ] {
                let e = c
                    .simple_query(sql)
                    .await
                    .expect_err(&format!("{conn}: {sql} ran unproven"));
                let m = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_default();
                // The gateway's refusal or hold, not the server's
                // read-only backstop catching the write afterwards.
                assert!(
                    m.contains("proven") || m.contains("review"),
                    "{conn}: {sql}: {m}"
                );
            }
        }
    });
    let after = rt().block_on(async { fingerprint(&g.direct().await).await });
    assert_eq!(after, after_ddl, "nothing ran");
    assert_ne!(before, after_ddl, "the DDL itself changed the schema");
}

/// Re-review, 2026-12-03: a STABLE SQL function wrapping a volatile one,
/// reached through a view PostgreSQL expands, a volatile default argument
/// behind a proven body, and a SQL body read under its own
/// `standard_conforming_strings = off`. None is proven; nothing runs.
#[test]
fn wrappers_defaults_and_settings_of_sql_functions_are_not_proven() {
    let g = Guard::start("wrappers");
    let pg = PgCluster::shared();
    pg.psql_db(
        &g.db,
        "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql STABLE AS $$ SELECT purge_customer(6) $$; \
         CREATE FUNCTION label(i int, j int DEFAULT purge_customer(5)) RETURNS int LANGUAGE sql STABLE AS $$ SELECT i $$; \
         SET check_function_bodies = off; \
         CREATE FUNCTION legacy() RETURNS text LANGUAGE sql STABLE SET standard_conforming_strings = off \
           AS $$ SELECT '\\', ' || purge_customer(4)::text --' $$;",
    );
    let before = rt().block_on(async { fingerprint(&g.direct().await).await });
    let refused = |sql: &str| {
        rt().block_on(async {
            for conn in ["ro", "guarded"] {
                let c = g.client(conn).await;
                let e = c
                    .simple_query(sql)
                    .await
                    .expect_err(&format!("{conn}: {sql} ran unproven"));
                let m = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_default();
                assert!(
                    m.contains("proven") || m.contains("review"),
                    "{conn}: {sql}: {m}"
                );
            }
        })
    };
    refused("SELECT sneaky()");
    refused("SELECT label(1)");
    refused("SELECT legacy()");
    let after = rt().block_on(async { fingerprint(&g.direct().await).await });
    assert_eq!(after, before, "nothing ran");
}

/// The same wrapper through a view, which PostgreSQL expands without the
/// statement naming the function (made before the gateway's first
/// statement: its catalog answers are cached for a while).
#[test]
fn a_view_over_a_stable_wrapper_is_not_proven() {
    let g = Guard::start("wrapview");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql STABLE AS $$ SELECT purge_customer(6) $$; \
         CREATE VIEW v_sneaky AS SELECT sneaky() AS n;",
    );
    let before = rt().block_on(async { fingerprint(&g.direct().await).await });
    rt().block_on(async {
        for conn in ["ro", "guarded"] {
            let c = g.client(conn).await;
            let e = c
                .simple_query("SELECT * FROM v_sneaky")
                .await
                .expect_err(&format!("{conn}: the view ran unproven"));
            let m = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default();
            assert!(m.contains("proven") || m.contains("review"), "{conn}: {m}");
        }
    });
    let after = rt().block_on(async { fingerprint(&g.direct().await).await });
    assert_eq!(after, before, "nothing ran");
}

/// A statement's refusal on both guarded connections: the gateway's
/// refusal or hold ("proven" / "review", or a write refused by name),
/// not the server's read-only backstop catching a write afterwards.
async fn refused_unproven(g: &Guard, sql: &str) {
    for conn in ["ro", "guarded"] {
        let c = g.client(conn).await;
        let e = c
            .simple_query(sql)
            .await
            .expect_err(&format!("{conn}: {sql} ran unproven"));
        let m = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(
            m.contains("proven") || m.contains("review") || m.contains("statement was refused"),
            "{conn}: {sql}: {m}"
        );
        // Refused for what it is, not because the catalog look failed.
        assert!(!m.contains("could not be read"), "{conn}: {sql}: {m}");
    }
}

/// `sql` runs on both guarded connections within 20 s: proven again
/// once a change under way has ended.
async fn reads_proven_soon(g: &Guard, sql: &str) {
    for conn in ["ro", "guarded"] {
        let c = g.client(conn).await;
        let mut tries = 0;
        while let Err(e) = c.simple_query(sql).await {
            tries += 1;
            assert!(tries < 200, "{conn}: {sql}: {e:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Each of `sqls` runs on both guarded connections: still proven reads.
async fn reads_proven(g: &Guard, sqls: &[&str]) {
    for conn in ["ro", "guarded"] {
        let c = g.client(conn).await;
        for sql in sqls {
            c.simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{conn}: {sql}: {e:?}"));
        }
    }
}

/// Advisory locks held on the server, by anyone.
async fn advisory_locks(g: &Guard) -> i64 {
    g.direct()
        .await
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Views over built-in functions with effects: `pg_depend` records
/// nothing for built-ins, so the views' calls of `nextval`,
/// `pg_advisory_lock` and `pg_terminate_backend` were not seen, and
/// reading the view was proven a read — on the approval connection it
/// ran unheld (advanced the sequence, took a lock for the session, ended
/// another session); on the read-only one the server's read-only
/// transaction stopped only `nextval` (2026-12-05). Now the calls in
/// views' and policies' expression trees are read, and nothing runs.
#[test]
fn views_over_built_in_side_effects_are_not_proven() {
    let g = Guard::start("builtinview");
    let pg = PgCluster::shared();
    let victim = format!("victim_{}", g.db);
    pg.psql_db(
        &g.db,
        &format!(
            "CREATE VIEW v_next AS SELECT nextval('s') AS n; \
             CREATE VIEW v_lock AS SELECT pg_try_advisory_lock(4242) AS l; \
             CREATE VIEW v_kill AS SELECT pg_terminate_backend(pid) AS k \
               FROM pg_stat_activity WHERE application_name = '{victim}';"
        ),
    );
    rt().block_on(async {
        // A session of someone else's, which the third view would end.
        let mut cfg = tokio_postgres::Config::new();
        let cluster = PgCluster::shared();
        cfg.host_path(&cluster.dir)
            .port(cluster.port)
            .user("postgres")
            .dbname(&g.db)
            .application_name(&victim);
        let (other, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
        let alive = tokio::spawn(conn);
        let before = fingerprint(&g.direct().await).await;
        for view in ["v_next", "v_lock", "v_kill"] {
            refused_unproven(&g, &format!("SELECT * FROM {view}")).await;
            refused_unproven(&g, &format!("SELECT 1 FROM customers, {view}")).await;
        }
        assert_eq!(fingerprint(&g.direct().await).await, before, "nothing ran");
        assert_eq!(advisory_locks(&g).await, 0, "no advisory lock was taken");
        other
            .simple_query("SELECT 1")
            .await
            .expect("the other session lives");
        assert!(!alive.is_finished(), "the other session lives");
    });
}

/// A row-security policy's expression runs on reads: the same for a
/// built-in with effects there.
#[test]
fn policies_over_built_in_side_effects_are_not_proven() {
    let g = Guard::start("builtinpolicy");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE POLICY locking ON customers USING (pg_advisory_lock(4243) IS NOT NULL);",
    );
    rt().block_on(refused_unproven(&g, "SELECT name FROM customers"));
}

/// What stays proven beside that: views over built-ins that are stable or
/// harmless (`random`, `now`), the system's own views, and tables.
#[test]
fn views_over_harmless_built_ins_stay_proven() {
    let g = Guard::start("harmlessview");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE VIEW v_dice AS SELECT random() AS r, now() AS t, gen_random_uuid() AS u;",
    );
    rt().block_on(reads_proven(
        &g,
        &[
            "SELECT r FROM v_dice",
            // (Not `pg_stat_activity`: other sessions' statements are
            // admin since 2026-12-05.)
            "SELECT count(*) FROM pg_stat_database",
            "SELECT name FROM customers WHERE id = 1",
        ],
    ));
}

/// Review of the views' fix (2026-12-05): built-ins reached through
/// objects a user made over them — an operator, a cast, a domain's CHECK
/// (which turned the read-only transaction off from the read-only
/// connection with `set_config`) — were proven reads: the hidden
/// functions were searched outside `pg_catalog` only.
#[test]
fn built_ins_behind_operators_casts_and_domains_are_not_proven() {
    let g = Guard::start("madeover");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE OPERATOR public.|| (leftarg = int4, rightarg = int4, \
           function = pg_catalog.pg_try_advisory_lock); \
         CREATE CAST (int8 AS bool) WITH FUNCTION pg_catalog.pg_try_advisory_lock(int8); \
         CREATE DOMAIN d_off AS text CHECK (pg_catalog.set_config(VALUE, 'off', false) IS NOT NULL); \
         CREATE DOMAIN d_next AS int8 CHECK (pg_catalog.nextval('s') > VALUE);",
    );
    rt().block_on(async {
        let before = fingerprint(&g.direct().await).await;
        for sql in [
            "SELECT 1 || 2",
            "SELECT 4242::int8::bool",
            "SELECT 'default_transaction_read_only'::d_off",
            "SELECT 1::int8::d_next",
            "SELECT name FROM customers",
        ] {
            refused_unproven(&g, sql).await;
        }
        assert_eq!(fingerprint(&g.direct().await).await, before, "nothing ran");
        assert_eq!(advisory_locks(&g).await, 0, "no advisory lock was taken");
    });
}

/// Reading a foreign table runs its wrapper's code: a review's `file_fdw`
/// table with `program` ran a shell command from the read-only
/// connection. Its handler is not proven: reads are refused or held.
#[test]
fn foreign_tables_are_not_proven_reads() {
    let g = Guard::start("foreign");
    let marker = format!("/tmp/portcullis-fdw-ran-{}", std::process::id());
    let _ = std::fs::remove_file(&marker);
    PgCluster::shared().psql_db(
        &g.db,
        &format!(
            "CREATE EXTENSION file_fdw; CREATE SERVER files FOREIGN DATA WRAPPER file_fdw; \
             CREATE FOREIGN TABLE ft (x text) SERVER files \
               OPTIONS (program 'touch {marker}; echo hi');"
        ),
    );
    rt().block_on(async {
        refused_unproven(&g, "SELECT * FROM ft").await;
        refused_unproven(&g, "SELECT name FROM customers").await;
    });
    assert!(!Path::new(&marker).exists(), "the wrapper's program ran");
}

/// A function a superuser added to `pg_catalog` is not trusted for its
/// schema or its name (review: a PL/pgSQL `pg_catalog.random(int)` taking
/// a lock was proven harmless), and `txid_current()` (stable, but it
/// gives the transaction an id) is a write.
#[test]
fn functions_added_to_pg_catalog_are_not_built_ins() {
    let g = Guard::start("planted");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE FUNCTION pg_catalog.random(i int) RETURNS int VOLATILE LANGUAGE plpgsql \
           AS $$BEGIN PERFORM pg_advisory_lock(31337); RETURN i; END$$; \
         CREATE FUNCTION pg_catalog.portcullis_planted() RETURNS int IMMUTABLE LANGUAGE plpgsql \
           AS $$BEGIN PERFORM pg_advisory_lock(31338); RETURN 1; END$$;",
    );
    rt().block_on(async {
        for sql in [
            "SELECT random(1)",
            "SELECT portcullis_planted()",
            "SELECT txid_current()",
        ] {
            refused_unproven(&g, sql).await;
        }
        // Other built-ins are still proven (`random()` is not: proofs go
        // by name, and every `random` must be proven).
        g.client("ro")
            .await
            .simple_query("SELECT lower('X')")
            .await
            .unwrap();
        assert_eq!(advisory_locks(&g).await, 0, "no advisory lock was taken");
    });
}

/// What runs on writes only does not make reads unproven (review: an
/// `ON INSERT` rule over `nextval` on a view, and a policy's `WITH CHECK`,
/// had made every read on the connection unproven).
#[test]
fn code_that_runs_on_writes_only_leaves_reads_proven() {
    let g = Guard::start("writesonly");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE TABLE ins (id int8, v text); CREATE VIEW vins AS SELECT v FROM ins; \
         CREATE RULE vins_i AS ON INSERT TO vins DO INSTEAD INSERT INTO ins VALUES (nextval('s'), NEW.v); \
         CREATE POLICY adds ON customers FOR INSERT WITH CHECK (nextval('s') > 0);",
    );
    rt().block_on(reads_proven(
        &g,
        &[
            "SELECT v FROM vins",
            "SELECT name FROM customers WHERE id = 1",
        ],
    ));
}

/// The plpgsql function the next tests plant: declared immutable, it
/// takes an advisory lock (any side effect would do).
const LOCKING_FN: &str = "CREATE FUNCTION fx(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql \
    AS $$BEGIN PERFORM pg_advisory_lock(i); RETURN i; END$$;";

/// Re-review (2026-12-05): the planner folds calls with constant
/// arguments in a table's index predicates and expressions, partition
/// key and extended statistics while it plans a read; a role without
/// privileges planted such an index and its function ran, as the
/// gateway's role, on a read-only caller's `SELECT`.
#[test]
fn what_the_planner_folds_for_a_read_is_not_proven() {
    for (name, ddl, read) in [
        (
            "idxpred",
            "CREATE TABLE ip (a int); CREATE INDEX ON ip (a) WHERE a > fx(7001);",
            "SELECT * FROM ip",
        ),
        (
            "idxexpr",
            "CREATE TABLE ie (a int); CREATE INDEX ON ie ((a + fx(7002)));",
            "SELECT * FROM ie",
        ),
        (
            "partkey",
            "CREATE TABLE pk (a int) PARTITION BY RANGE ((a + fx(7003))); \
             CREATE TABLE pk1 PARTITION OF pk FOR VALUES FROM (0) TO (100000);",
            "SELECT * FROM pk",
        ),
        (
            "extstats",
            "CREATE TABLE es (a int, b int); CREATE STATISTICS es_s ON (a + fx(7004)), b FROM es;",
            "SELECT * FROM es WHERE b = 1 AND a = 2",
        ),
    ] {
        let g = Guard::start(name);
        PgCluster::shared().psql_db(&g.db, &format!("{LOCKING_FN} {ddl}"));
        rt().block_on(async {
            refused_unproven(&g, read).await;
            assert_eq!(advisory_locks(&g).await, 0, "{name}: no lock was taken");
        });
    }
}

/// Re-review (2026-12-05): a prepared statement reading a view was
/// proven at Parse only (it names no function), and kept running after
/// the view was replaced by one over `nextval` (a driver's statement
/// cache, 38 Binds). Its Binds are proven again: once the gateway sees
/// the change (its catalog answers live 30 s), they are refused.
#[test]
fn a_prepared_read_is_proven_again_when_what_it_reads_changes() {
    let g = Guard::start("rebind");
    let pg = PgCluster::shared();
    pg.psql_db(
        &g.db,
        "CREATE VIEW later AS SELECT name, 0::int8 AS n FROM customers;",
    );
    rt().block_on(async {
        let mut clients = Vec::new();
        for conn in ["ro", "guarded"] {
            let c = g.client(conn).await;
            let st = c.prepare("SELECT * FROM later").await.unwrap();
            assert_eq!(c.query(&st, &[]).await.unwrap().len(), 6, "{conn}");
            clients.push((conn, c, st));
        }
        pg.psql_db(
            &g.db,
            "CREATE OR REPLACE VIEW later AS SELECT name, nextval('s') AS n FROM customers;",
        );
        let before = fingerprint(&g.direct().await).await;
        // Past the catalog cache's 5 s.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        for (conn, c, st) in &clients {
            let e = c
                .query(st, &[])
                .await
                .expect_err(&format!("{conn}: the replaced view ran"));
            let m = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default();
            assert!(m.contains("prepare it again"), "{conn}: {m}");
        }
        assert_eq!(fingerprint(&g.direct().await).await, before, "nothing ran");
    });
}

/// Re-review: false positives that made every read on a read-only
/// connection unproven — a user's range type (the constructors
/// PostgreSQL makes for it are `internal` code under a new name), an
/// aggregate over an immutable step, and `pg_stat_statements`' view —
/// and an `internal` alias of a built-in with effects, declared
/// immutable, which is not proven.
#[test]
fn internal_code_is_as_volatile_as_the_built_in_it_runs() {
    let g = Guard::start("internalcode");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE TYPE floatrange AS RANGE (subtype = float8, subtype_diff = float8mi); \
         CREATE FUNCTION sq_step(a int8, b int) RETURNS int8 IMMUTABLE LANGUAGE sql AS 'SELECT a + b * b'; \
         CREATE AGGREGATE sumsq(int) (sfunc = sq_step, stype = int8, initcond = '0'); \
         CREATE EXTENSION IF NOT EXISTS pg_stat_statements;",
    );
    rt().block_on(reads_proven(
        &g,
        &[
            "SELECT name FROM customers WHERE id = 1",
            "SELECT floatrange(1, 5)",
            "SELECT sumsq(id) FROM customers",
        ],
    ));
    // Now an alias of the server's own advisory lock, declared immutable.
    let g2 = Guard::start("internalalias");
    PgCluster::shared().psql_db(
        &g2.db,
        "CREATE FUNCTION lk(int8) RETURNS void IMMUTABLE STRICT LANGUAGE internal \
           AS 'pg_advisory_lock_int8';",
    );
    rt().block_on(async {
        refused_unproven(&g2, "SELECT lk(7006)").await;
        assert_eq!(advisory_locks(&g2).await, 0, "no lock was taken");
    });
}

/// Round 3 (2026-12-05): planning a write folds its columns' defaults (a
/// column's, or its domain's), which the statement does not name: an
/// immutable-declared default took a lock (and, on the approval
/// connection, advanced a sequence) from `EXPLAIN INSERT`. Reads of the
/// table stay proven.
#[test]
fn explaining_a_write_is_not_proven_when_it_folds_defaults() {
    let g = Guard::start("explaindefault");
    PgCluster::shared().psql_db(
        &g.db,
        &format!(
            "{LOCKING_FN} CREATE TABLE dflt (a int, b int DEFAULT fx(7101)); \
             CREATE DOMAIN dk AS int DEFAULT fx(7102); CREATE TABLE dflt2 (a int, b dk);"
        ),
    );
    rt().block_on(async {
        for sql in [
            "EXPLAIN (COSTS OFF) INSERT INTO dflt (a) VALUES (1)",
            "EXPLAIN INSERT INTO dflt2 (a) VALUES (1)",
            "EXPLAIN UPDATE dflt SET b = DEFAULT",
        ] {
            refused_unproven(&g, sql).await;
        }
        assert_eq!(advisory_locks(&g).await, 0, "no lock was taken");
        reads_proven(&g, &["SELECT count(*) FROM dflt"]).await;
    });
}

/// Round 3: `tablefunc` (which a role with CREATE on the database may
/// install) runs the SQL text it is handed, declared stable: a caller's
/// `crosstab('select … pg_try_advisory_lock(…)')` ran, directly and
/// through a view. Such functions are not proven, wherever they are.
#[test]
fn extension_functions_that_run_sql_text_are_not_proven() {
    let g = Guard::start("tablefunc");
    PgCluster::shared().psql_db(&g.db, "CREATE EXTENSION tablefunc;");
    rt().block_on(async {
        refused_unproven(
            &g,
            "SELECT * FROM crosstab('select 1::text, 2::text, pg_try_advisory_lock(7201)::text') \
             AS x(r text, c1 text)",
        )
        .await;
        refused_unproven(
            &g,
            "SELECT * FROM connectby('customers, (select pg_try_advisory_lock(7202)) z', \
             'id', 'id', '1', 0) AS x(a int, b int, l int)",
        )
        .await;
    });
    let g2 = Guard::start("tablefuncview");
    PgCluster::shared().psql_db(
        &g2.db,
        "CREATE EXTENSION tablefunc; CREATE VIEW cv AS SELECT * FROM \
           crosstab('select 1::text, 2::text, pg_try_advisory_lock(7203)::text') AS x(r text, c1 text);",
    );
    rt().block_on(async {
        refused_unproven(&g2, "SELECT * FROM cv").await;
        assert_eq!(advisory_locks(&g).await, 0, "no lock was taken");
        assert_eq!(advisory_locks(&g2).await, 0, "no lock was taken");
    });
}

/// Round 3: bundled extensions whose objects had made every read on the
/// read-only connection unproven (text search dictionaries, buffer cache
/// and aggregate helpers) leave reads proven.
#[test]
fn bundled_extensions_leave_reads_proven() {
    let g = Guard::start("bundled");
    PgCluster::shared().psql_db(
        &g.db,
        "CREATE EXTENSION unaccent; CREATE EXTENSION dict_int; CREATE EXTENSION dict_xsyn; \
         CREATE EXTENSION pg_buffercache; CREATE EXTENSION intagg;",
    );
    rt().block_on(reads_proven(&g, &["SELECT count(*) FROM customers"]));
}

/// Round 3: a cursor's query runs at each FETCH, but was proven at its
/// DECLARE only: a function it calls, replaced after the DECLARE by one
/// taking a lock, ran at FETCH once the gateway's catalog answers were
/// fresh. A FETCH proves the cursor's query again.
#[test]
fn a_cursor_is_proven_again_at_each_fetch() {
    let g = Guard::start("cursor");
    let pg = PgCluster::shared();
    pg.psql_db(
        &g.db,
        "CREATE FUNCTION g(i int) RETURNS int STABLE LANGUAGE sql SET search_path = public \
           AS 'SELECT i + 1';",
    );
    rt().block_on(async {
        let mut clients = Vec::new();
        for conn in ["ro", "guarded"] {
            let c = g.client(conn).await;
            c.simple_query("BEGIN").await.unwrap();
            c.simple_query("DECLARE c CURSOR FOR SELECT g(id) FROM customers")
                .await
                .unwrap_or_else(|e| panic!("{conn}: {e:?}"));
            c.simple_query("FETCH 1 FROM c")
                .await
                .unwrap_or_else(|e| panic!("{conn}: {e:?}"));
            clients.push((conn, c));
        }
        pg.psql_db(
            &g.db,
            "CREATE OR REPLACE FUNCTION g(i int) RETURNS int VOLATILE LANGUAGE plpgsql \
               AS $$BEGIN PERFORM pg_advisory_lock(7301); RETURN i; END$$;",
        );
        // Past the catalog cache's 5 s.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        for (conn, c) in &clients {
            let e = c
                .simple_query("FETCH 1 FROM c")
                .await
                .expect_err(&format!("{conn}: the replaced function ran"));
            let m = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default();
            assert!(m.contains("declare it again"), "{conn}: {m}");
        }
        assert_eq!(advisory_locks(&g).await, 0, "no lock was taken");
    });
}

/// The same for a portal executed with a row limit (what drivers' row
/// streaming does): each later Execute runs its query again, so it is
/// proven again; a function replaced after its Bind does not run.
#[test]
fn a_portal_is_proven_again_when_its_execute_continues() {
    let g = Guard::start("portal");
    let pg = PgCluster::shared();
    pg.psql_db(
        &g.db,
        "CREATE FUNCTION g(i int) RETURNS int STABLE LANGUAGE sql SET search_path = public \
           AS 'SELECT i + 1';",
    );
    rt().block_on(async {
        let mut clients = Vec::new();
        for conn in ["ro", "guarded"] {
            clients.push((conn, g.client(conn).await));
        }
        let mut open = Vec::new();
        for (conn, c) in &mut clients {
            let tx = c.transaction().await.unwrap();
            let st = tx.prepare("SELECT g(id) FROM customers").await.unwrap();
            let portal = tx.bind(&st, &[]).await.unwrap();
            let rows = tx
                .query_portal(&portal, 1)
                .await
                .unwrap_or_else(|e| panic!("{conn}: {e:?}"));
            assert_eq!(rows.len(), 1, "{conn}");
            open.push((*conn, tx, portal));
        }
        pg.psql_db(
            &g.db,
            "CREATE OR REPLACE FUNCTION g(i int) RETURNS int VOLATILE LANGUAGE plpgsql \
               AS $$BEGIN PERFORM pg_advisory_lock(7302); RETURN i; END$$;",
        );
        // Past the catalog cache's 5 s.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        for (conn, tx, portal) in &open {
            let e = tx
                .query_portal(portal, 1)
                .await
                .expect_err(&format!("{conn}: the replaced function ran"));
            let m = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default();
            assert!(m.contains("bind it again"), "{conn}: {m}");
        }
        drop(open);
        assert_eq!(advisory_locks(&g).await, 0, "no lock was taken");
    });
}
