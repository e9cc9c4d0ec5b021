use super::*;

fn c(sql: &str) -> Class {
    classify(sql)
}

fn calls(sql: &str) -> Vec<String> {
    analyse(sql).calls.iter().map(|c| c.to_string()).collect()
}

#[test]
fn reads() {
    for sql in [
        "SELECT 1",
        "select abalance from pgbench_accounts where aid = $1",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "EXPLAIN DELETE FROM t",
        "EXPLAIN (ANALYZE false) DELETE FROM t",
        "EXPLAIN (ANALYZE off, VERBOSE) DELETE FROM t",
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
        // Not a SELECT INTO, not a lock: words in a string.
        "SELECT 'pour into cup', 'for update'",
        "SELECT coalesce(a, 1), nullif(b, 2), greatest(1, 2), current_timestamp FROM t",
        "SELECT count(*), max(a), lower(b) FROM t GROUP BY b",
        "SELECT * FROM generate_series(1, 3) AS g(i)",
        "SELECT a, row_number() OVER (PARTITION BY b ORDER BY c) FROM t",
        "SELECT random(), clock_timestamp()",
        "DECLARE c CURSOR FOR SELECT * FROM t",
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
        "SELECT * FROM t FOR SHARE",
        "SELECT * FROM (SELECT * FROM t FOR UPDATE) s",
        "TRUNCATE t",
        "NOTIFY chan, 'x'",
        "EXPLAIN ANALYZE DELETE FROM t",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "SELECT 1; DELETE FROM t",
        "SELECT * FROM (WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM u) s",
        "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE",
    ] {
        assert!(c(sql) >= Class::Write, "{sql}: {:?}", c(sql));
        assert_ne!(c(sql), Class::Read, "{sql}");
    }
}

/// The security review's findings (issue 16), each one a regression.
#[test]
fn review_findings() {
    // EXPLAIN with ANALYZE as an option runs its statement.
    for sql in [
        "EXPLAIN (ANALYZE) UPDATE t SET a = 1",
        "EXPLAIN (ANALYZE true) UPDATE t SET a = 1",
        "EXPLAIN (ANALYZE 1) DELETE FROM t",
        "EXPLAIN (ANALYZE on, VERBOSE) DELETE FROM t",
        "EXPLAIN (VERBOSE, analyze) DELETE FROM t",
        "explain (format json, ANALYZE) insert into t values (1)",
    ] {
        assert!(c(sql) >= Class::Write, "{sql}: {:?}", c(sql));
    }
    // A function in the FROM list is a call like any other.
    assert_eq!(
        c("SELECT * FROM set_config('default_transaction_read_only','off',false)"),
        Class::Admin
    );
    assert_eq!(
        c("SELECT * FROM pg_catalog.set_config('default_transaction_read_only','off',false) AS x"),
        Class::Admin
    );
    assert_eq!(
        c("SELECT 1 FROM t, LATERAL set_config('role', 'postgres', false)"),
        Class::Admin
    );
    // COPY to a file or a program is admin, never a read.
    assert_eq!(c("COPY t TO PROGRAM 'id > /tmp/x'"), Class::Admin);
    assert_eq!(c("COPY (SELECT 1) TO '/tmp/x'"), Class::Admin);
    assert_eq!(c("COPY t FROM PROGRAM 'id'"), Class::Admin);
    assert_eq!(c("COPY t FROM '/etc/passwd'"), Class::Admin);
    // Functions with side effects, anywhere, are not proven reads.
    for sql in [
        "SELECT purge_customer(2)",
        "SELECT setval('s', 1)",
        "SELECT nextval('s')",
        "SELECT lo_unlink(16384)",
        "SELECT lo_create(0)",
        "SELECT * FROM purge_customer(2)",
        "SELECT * FROM t WHERE id IN (SELECT purge_customer(2))",
        "WITH x AS (SELECT purge_customer(2)) SELECT * FROM x",
        "VALUES (purge_customer(2))",
        "SELECT * FROM t, LATERAL purge_customer(t.id)",
        "SELECT * FROM t JOIN purge_customer(2) p ON true",
        "SELECT CASE WHEN true THEN purge_customer(2) END",
        "SELECT a FROM t ORDER BY purge_customer(a)",
        "SELECT a FROM t GROUP BY a HAVING purge_customer(a) > 0",
        "DECLARE c CURSOR FOR SELECT purge_customer(2)",
        "EXPLAIN ANALYZE SELECT purge_customer(2)",
        "EXPLAIN (ANALYZE) SELECT purge_customer(2)",
        "SELECT \"coalesce\"(1)",
        "SELECT public.count(*) FROM t",
        "CALL do_things()",
        "SELECT query_to_xml('select set_config(''role'',''x'',false)', true, true, '')",
        "SELECT 1 OPERATOR(public.+++) 2",
    ] {
        assert_eq!(c(sql), Class::Unknown, "{sql}");
    }
}

#[test]
fn calls_are_named_as_postgresql_folds_them() {
    assert_eq!(
        calls("SELECT MySchema.F(1), \"MixedCase\"(), \"s\".\"G\"() FROM h(2)"),
        vec!["MixedCase", "h", "myschema.f", "s.G"]
    );
    // PostgreSQL folds ASCII letters only: ÄRGER() calls "Ärger", never a
    // function "ärger" that might be proven pure instead.
    assert_eq!(calls("SELECT ÄRGER(1), Ärger(2)"), vec!["Ärger"]);
    assert!(calls("SELECT coalesce(1, 2), current_date").is_empty());
    assert_eq!(calls("SELECT count(*) FROM t"), vec!["count"]);
    // A plain EXPLAIN's calls are proven too: planning folds functions
    // and evaluates an EXECUTE's parameters (review).
    assert_eq!(calls("EXPLAIN SELECT f(1)"), vec!["f"]);
    assert_eq!(calls("EXPLAIN ANALYZE SELECT f(1)"), vec!["f"]);
    for sql in [
        "EXPLAIN EXECUTE p(set_config('default_transaction_read_only','off',false))",
        "EXPLAIN (COSTS off) EXECUTE p(1)",
        "EXPLAIN EXECUTE p",
    ] {
        assert_eq!(c(sql), Class::Unknown, "{sql}");
    }
    // A call that is planned, not run, and needs no proof (a named one).
    assert_eq!(
        c("EXPLAIN SELECT set_config('default_transaction_read_only','off',false)"),
        Class::Read
    );
    // One that needs a proof is unproven without the catalog.
    assert_eq!(c("EXPLAIN SELECT purge_customer(2)"), Class::Unknown);
}

#[test]
fn resolve_needs_every_call_pure() {
    let a = analyse("SELECT f(1), g(2) FROM t");
    assert!(a.needs_proof());
    assert_eq!(a.resolve(|_| Proof::Pure), Class::Read);
    assert_eq!(
        a.resolve(|c| if c.name == "g" {
            Proof::Volatile
        } else {
            Proof::Pure
        }),
        Class::Unknown
    );
    assert_eq!(a.resolve(|_| Proof::Missing), Class::Unknown);
    // A write stays a write once its calls are proven.
    let a = analyse("UPDATE t SET a = lower(b)");
    assert_eq!(a.resolve(|_| Proof::Pure), Class::Write);
    // Unknown is not made better by proofs.
    assert_eq!(analyse("SELEC 1").resolve(|_| Proof::Pure), Class::Unknown);
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
        c("SET \"default_transaction_read_only\" = off"),
        Class::Admin
    );
    assert_eq!(c("SET transaction_read_only = off"), Class::Admin);
    assert_eq!(
        c("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"),
        Class::Admin
    );
    assert_eq!(c("START TRANSACTION READ WRITE"), Class::Admin);
    assert_eq!(c("BEGIN READ WRITE"), Class::Admin);
    assert_eq!(c("SET ROLE postgres"), Class::Admin);
    assert_eq!(c("SET SESSION AUTHORIZATION postgres"), Class::Admin);
    assert_eq!(c("SET session_replication_role = replica"), Class::Admin);
    assert_eq!(c("RESET default_transaction_read_only"), Class::Admin);
    assert_eq!(c("CREATE EXTENSION pgcrypto"), Class::Admin);
    assert_eq!(
        c("SELECT set_config('default_transaction_read_only', 'off', false)"),
        Class::Admin
    );
    assert_eq!(c("SELECT \"set_config\"('role', 'x', false)"), Class::Admin);
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

#[test]
fn do_blocks_are_never_reads() {
    let class = c("DO $$ BEGIN PERFORM purge_customer(2); END $$");
    assert!(class >= Class::Admin, "{class:?}");
}

#[test]
fn table_statement_is_a_read_of_one_relation() {
    assert_eq!(c("TABLE customers"), Class::Read);
    assert_eq!(c("table public.\"Customers\" ;"), Class::Read);
    assert_eq!(c("TABLE \"a; DELETE FROM t\""), Class::Read);
    assert_eq!(c("TABLE t; DELETE FROM t"), Class::Unknown);
    assert_eq!(c("TABLE t WHERE purge(1) > 0"), Class::Unknown);
    assert_eq!(c("TABLE \"unterminated"), Class::Unknown);
    assert_eq!(c("TABLE"), Class::Unknown);
}

/// The adversarial review's bypasses (they passed as reads once).
#[test]
fn parser_differentials_and_session_settings() {
    // ANALYSE is PostgreSQL's other spelling; unknown options run too.
    assert!(c("EXPLAIN (ANALYSE) DELETE FROM t") >= Class::Write);
    assert_eq!(
        c(
            "EXPLAIN (ANALYSE) SELECT pg_catalog.set_config('default_transaction_read_only','off',false)"
        ),
        Class::Admin
    );
    assert!(c("EXPLAIN (SOMETHING_NEW) DELETE FROM t") >= Class::Write);
    assert_eq!(
        c("EXPLAIN (COSTS off, FORMAT json) DELETE FROM t"),
        Class::Read
    );
    assert_eq!(c("EXPLAIN (ANALYSE false) DELETE FROM t"), Class::Read);
    // An operator that swallows a comment opener lexes differently.
    assert_eq!(
        c(
            "SELECT 1 ORDER BY 1 USING </* LIMIT ' */ ; COPY (SELECT 1) TO PROGRAM $$touch /tmp/x$$; --'"
        ),
        Class::Unknown
    );
    assert_eq!(c("SELECT 1 -/* x */ 1"), Class::Unknown);
    // A dollar-quote tag with a character past ASCII that is no letter:
    // PostgreSQL reads a string where the parser reads a placeholder and
    // a word (review: this ran a DROP TABLE as a read).
    for sql in [
        "select $a€$, ' $a€$; drop table scratch; -- '",
        "select $€$, ' $€$; drop table scratch; -- '",
        "select $_1😀$ x $_1😀$",
        "select $ab\u{2028}$ x $ab\u{2028}$",
    ] {
        assert_eq!(c(sql), Class::Unknown, "{sql}");
    }
    // More differentials from the same review: `?-` before a comment's
    // second dash, rows after COPY FROM STDIN in the text, a hex string
    // with a backslash.
    for sql in [
        "SELECT '{}'::jsonb ?-- '\n$$a$$; COMMIT; BEGIN READ WRITE; DELETE FROM customers; COMMIT; --'",
        "WITH x AS (SELECT '{}'::jsonb ?-- '\n$$a$$), d AS (DELETE FROM customers RETURNING 1) SELECT 1 --') SELECT 1",
        "COPY side_effects FROM STDIN;\nDROP TABLE customers",
        "CREATE TABLE IF NOT EXISTS customers (a bit DEFAULT X'\\'); GRANT ALL ON customers TO PUBLIC; --')",
    ] {
        assert_eq!(c(sql), Class::Unknown, "{sql}");
    }
    for sql in [
        "SELECT '{}'::jsonb ? 'a'",
        "SELECT '{}'::jsonb ?- 1",
        "SELECT 10/-2, 1 - -1",
        "SELECT X'1F', x'ab'",
    ] {
        assert_eq!(c(sql), Class::Read, "{sql}");
    }
    // Tags PostgreSQL and the parser both read: a string, as before.
    for sql in [
        "select $a$x$a$",
        "select $é$ x $é$",
        "select $$ € $$",
        "select '$a€$'",
    ] {
        assert_eq!(c(sql), Class::Read, "{sql}");
    }
    // Settings: an allow-list.
    for sql in [
        "SET standard_conforming_strings = off",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'SJIS'",
        "SET backslash_quote = on",
        "SET LOCAL \"standard_conforming_strings\" TO off",
        "RESET standard_conforming_strings",
        "SET default_transaction_read_only = off",
        "SET role = postgres",
    ] {
        assert_eq!(c(sql), Class::Admin, "{sql}");
    }
    for sql in [
        "SET search_path TO public",
        "SET LOCAL statement_timeout = '5s'",
        "SET SESSION application_name = 'x'",
        "SET TIME ZONE 'UTC'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET enable_seqscan = off",
        "RESET ALL",
        "RESET search_path",
    ] {
        assert_eq!(c(sql), Class::Read, "{sql}");
    }
    // Special forms are calls to prove.
    assert_eq!(
        calls("SELECT ceil(1.5), substring('abc' from 1 for 2)"),
        vec!["ceil", "substring"]
    );
}

#[test]
fn search_path_may_not_put_a_schema_before_pg_catalog() {
    for sql in [
        "SET search_path TO public",
        "SET search_path TO pg_catalog, evil",
        "SET search_path TO \"$user\", public",
        "RESET search_path",
    ] {
        assert_eq!(classify(sql), Class::Read, "{sql}");
    }
    for sql in [
        "SET search_path TO evil, pg_catalog",
        "SET search_path = public, pg_catalog",
        "SET search_path = 'evil', 'pg_catalog'",
        "SET LOCAL search_path TO evil,pg_catalog",
        "SET SESSION search_path = \"evil\", \"PG_CATALOG\"",
        // Spellings PostgreSQL reads as pg_catalog that a name match would
        // miss: escapes are refused, not judged.
        "SET search_path = 'evil', E'pg\\x5fcatalog'",
        "SET search_path = evil, U&\"\\0070g_catalog\"",
    ] {
        assert_eq!(classify(sql), Class::Admin, "{sql}");
    }
    assert!(search_path_keeps_catalog_first("public"));
    assert!(search_path_keeps_catalog_first(" pg_catalog , public"));
    assert!(!search_path_keeps_catalog_first("evil, pg_catalog"));
    assert!(!search_path_keeps_catalog_first("evil, E'pg\\x5fcatalog'"));
    assert!(!search_path_keeps_catalog_first(
        "evil, U&\"\\0070g_catalog\""
    ));
    assert!(search_path_keeps_catalog_first("\"$user\", public"));
}

#[test]
fn the_analysis_cache_gives_the_same_answer_and_stays_bounded() {
    let cache = AnalysisCache::default();
    for sql in ["SELECT 1", "SELECT f()", "DELETE FROM t", "SELECT nope("] {
        let first = cache.get_or_analyse(sql);
        let again = cache.get_or_analyse(sql);
        assert!(std::sync::Arc::ptr_eq(&first, &again), "{sql}");
        let fresh = analyse(sql);
        assert_eq!(
            (first.class, first.calls.len()),
            (fresh.class, fresh.calls.len()),
            "{sql}"
        );
    }
    for i in 0..(ANALYSES_MAX + 10) {
        cache.get_or_analyse(&format!("SELECT {i}"));
    }
    assert!(cache.map.lock().unwrap().len() <= ANALYSES_MAX);
    // A long text is analysed, not kept.
    let long = format!("SELECT 1 -- {}", "x".repeat(ANALYSIS_TEXT_MAX));
    let a = cache.get_or_analyse(&long);
    assert_eq!(a.class, Class::Read);
    assert!(!cache.map.lock().unwrap().contains_key(long.as_str()));
}

/// The analysis cache keys texts that differ only in their numbers alike,
/// and only where no number can change the analysis.
#[test]
fn number_free_keys_merge_only_what_analyses_alike() {
    let same = [
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 9",
        ),
        (
            "UPDATE t1 SET v = v + 1.5 WHERE id IN (1, 22, 333)",
            "UPDATE t1 SET v = v + 7.0 WHERE id IN (4, 5, 6)",
        ),
        ("select purge(7) from t", "select purge(8) from t"),
    ];
    for (a, b) in same {
        assert_eq!(
            number_free_key(a).map(|k| k.replace(';', "")),
            number_free_key(b),
            "{a} / {b}"
        );
        assert_eq!(analyse(a), analyse(b), "{a} / {b}");
    }
    // Digits in names are names: never merged.
    assert_ne!(
        number_free_key("SELECT * FROM t1"),
        number_free_key("SELECT * FROM t2")
    );
    assert_ne!(
        number_free_key("SELECT c1 FROM t"),
        number_free_key("SELECT c2 FROM t")
    );
    // `#` is an operator, not a stand-in for a number.
    assert_ne!(
        number_free_key("SELECT a #5 b FROM t"),
        number_free_key("SELECT a ## b FROM t")
    );
    assert_ne!(
        number_free_key("SELECT bal FROM acct WHERE id = #"),
        number_free_key("SELECT bal FROM acct WHERE id = 42")
    );
    // Kinds where a number may be an option or a setting, anything quoted,
    // commented, escaped or dollar-quoted, and several statements: the
    // text is its own key.
    for own in [
        "EXPLAIN (ANALYZE 0) DELETE FROM t",
        "SET statement_timeout = 0",
        "COPY t TO STDOUT",
        "FETCH 5 FROM c",
        "SELECT 1; SET search_path = evil",
        "SELECT 'a1' FROM t",
        "SELECT \"c1\" FROM t",
        "SELECT $1 FROM t",
        "SELECT 1 -- 2",
        "SELECT 1 /* 2 */",
        "SELECT E'\\x41'",
        "SELECT 1 FROM t\u{e9}",
        // A number run into a name lexes by its digits.
        "SELECT 0x1F",
        "SELECT 9x1F",
        "SELECT 1e5",
        "SELECT 1_000",
    ] {
        assert_eq!(number_free_key(own), None, "{own}");
    }
}

/// A text the parser cannot read for the value of a number alone (out of
/// range) does not poison the texts that share its numbers-free key.
#[test]
fn an_unreadable_number_does_not_poison_its_key() {
    let cache = AnalysisCache::default();
    let bad = cache.get_or_analyse("SELECT CAST(v AS varchar(99999999999999999999)) FROM t");
    assert_eq!(bad.class, Class::Unknown);
    let good = cache.get_or_analyse("SELECT CAST(v AS varchar(255)) FROM t");
    assert_eq!(good.class, Class::Read);
}

/// What may make PostgreSQL call an operator, cast or type function on
/// its own: any query or expression; not transaction control or SET.
#[test]
fn statements_that_evaluate_expressions_are_marked() {
    for sql in [
        "SELECT 1 = '1'::text",
        "VALUES (1)",
        "EXPLAIN SELECT 1",
        "UPDATE t SET a = a + 1",
        "TABLE t",
        "not sql at all (",
    ] {
        assert!(analyse(sql).evaluates, "{sql}");
    }
    for sql in [
        "BEGIN",
        "COMMIT",
        "SET statement_timeout = 0",
        "SHOW search_path",
        "",
    ] {
        assert!(!analyse(sql).evaluates, "{sql}");
    }
}

#[test]
fn qualified_names_tell_schemas_and_quoted_dots_apart() {
    let q = |sql: &str| -> Vec<String> { analyse(sql).refs.qualified.into_iter().collect() };
    // Same table name in two schemas: two tables for a budget, one name
    // for the masker's column rules.
    assert_eq!(
        q("SELECT * FROM s1.t, s2.t"),
        vec![r#""s1"."t""#.to_string(), r#""s2"."t""#.to_string()]
    );
    assert_eq!(analyse("SELECT * FROM s1.t, s2.t").refs.relations.len(), 1);
    // A quoted dot is not a schema; case folds as PostgreSQL folds it.
    assert_eq!(q(r#"SELECT * FROM "a.b", a.b, A.B"#).len(), 2);
    // A CTE is not a table; TABLE names one.
    assert_eq!(
        q("WITH c AS (SELECT 1) SELECT * FROM c, t"),
        vec![r#""t""#.to_string()]
    );
    assert_eq!(q("TABLE s.\"T\""), vec![r#""s"."T""#.to_string()]);
}

#[test]
fn each_statement_that_may_write_counts_for_a_writes_budget() {
    let w = |sql: &str| analyse(sql).writes;
    assert_eq!(w("SELECT 1"), 0);
    assert_eq!(w("INSERT INTO t VALUES (1)"), 1);
    // A batch is as many writes as it has writing statements: a budget
    // of writes is not one query with a hundred INSERTs in it.
    assert_eq!(
        w("INSERT INTO t VALUES (1); SELECT 1; UPDATE t SET x = 2; DELETE FROM t"),
        3
    );
    assert_eq!(w("BEGIN; INSERT INTO t VALUES (1); COMMIT"), 1);
    assert_eq!(w("CREATE TABLE u (x int); DROP TABLE u"), 2);
    // Calls that need a proof may write.
    assert_eq!(w("SELECT f(); SELECT g(); SELECT 1"), 2);
    // Not readable by the parser: each `;`-separated part counts.
    assert_eq!(w("FROBNICATE a; FROBNICATE b; SELECT 1"), 3);
}

/// The masker's first look never misses what the analysis finds: a text
/// whose analysis may redefine statements is one the first look names,
/// and words in literals or quoted names count only for the first look.
#[test]
fn the_first_look_at_redefining_words_never_misses_the_analysis() {
    for (sql, analysed) in [
        ("select 1", false),
        ("select 'we close at 5, do call'", false),
        ("select \"close\" from t", false),
        ("DEALLOCATE s1; PREPARE s1 AS select 2", true),
        ("close p; declare p cursor for select 2", true),
        ("Do $$ begin end $$", true),
        ("execute s1(1)", true),
        // The parser cannot read it: unknown, counted.
        ("selec prepare garbage (", true),
    ] {
        let a = analyse(sql);
        assert_eq!(a.redefines, analysed, "{sql}");
        assert!(!a.redefines || may_redefine(sql), "{sql}");
    }
    assert!(!may_redefine(
        "select id, name from users order by random()"
    ));
}

#[test]
fn text_too_long_to_analyse_is_unknown() {
    let long = format!("SELECT {}", vec!["1"; MAX_ANALYSED / 2].join(","));
    let a = analyse(&long);
    assert_eq!(a.class, Class::Unknown);
    // Every raw `;` may end a statement: a writes budget counts them.
    let hidden = format!(
        "SELECT '{}'; INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)",
        "x".repeat(MAX_ANALYSED)
    );
    assert_eq!(analyse(&hidden).writes_under(Class::Unknown), 3);
    // Review: a dollar tag PostgreSQL reads and the tokenizer does not.
    let tag = "SELECT $a€$, ' $a€$; INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); -- '";
    assert!(analyse(tag).writes_under(Class::Unknown) >= 3);
}

/// What a statement may change of its session's settings, for previews.
#[test]
fn settings_a_statement_sets() {
    let names = |sql: &str| settings_set(sql);
    assert_eq!(names("SELECT 1"), Some(vec![]));
    assert_eq!(names("UPDATE t SET x = 1"), Some(vec![]));
    assert_eq!(
        names("SET extra_float_digits = 0; DELETE FROM t"),
        Some(vec!["extra_float_digits".into()])
    );
    assert_eq!(
        names("/* c */ set local BYTEA_OUTPUT to 'escape'"),
        Some(vec!["bytea_output".into()])
    );
    assert_eq!(
        names("SET SESSION TIME ZONE 'UTC'"),
        Some(vec!["timezone".into()])
    );
    assert_eq!(names("RESET search_path"), Some(vec!["search_path".into()]));
    assert_eq!(
        names("BEGIN; SET \"search_path\" = x"),
        Some(vec!["search_path".into()])
    );
    for any in [
        "RESET ALL",
        "DISCARD ALL",
        "SELECT pg_catalog.set_config('search_path', 'x', false)",
        "SET",
    ] {
        assert_eq!(names(any), None, "{any}");
    }
    // A literal or a quoted name is not a keyword, but a quoted
    // `set_config` is the same function (code review).
    assert_eq!(names("SELECT 'SET x = 1', \"SET\""), Some(vec![]));
    assert_eq!(names("SELECT \"set_config\"('a', 'b', false)"), None);
}

/// The look at statements a connection does not classify: DDL and code
/// in any case and spelling PostgreSQL takes (a prefix, a comment before
/// it, quoted, in a later statement), never a read or a write alone.
#[test]
fn schema_changes_are_seen_by_words() {
    for sql in [
        "CREATE OR REPLACE VIEW v AS SELECT 1",
        "/* x */create view v as select 1",
        "SELECT 1;ALTER FUNCTION f() STABLE",
        "drop view v",
        "COMMENT ON TABLE t IS 'x'",
        "GRANT SELECT ON t TO r",
        "DO $$BEGIN EXECUTE 'CREATE VIEW v AS SELECT 1'; END$$",
        "CALL p()",
        "EXECUTE prepared_ddl",
        "IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y",
        "SECURITY LABEL ON TABLE t IS 'x'",
        "LOAD 'plugin'",
        "cReAtE\tINDEX i ON t ((f(a)))",
        "COMMIT PREPARED 'ddl'",
        "UPDATE U&\"\\0070g_proc\" SET prosrc = prosrc",
        "UPDATE pg_proc SET prosrc = 'select 1' WHERE proname = 'g'",
        "update pg_catalog.pg_rewrite set ev_action = ev_action",
        "select 1;drop view v",
    ] {
        assert!(super::may_change_schema(sql.as_bytes()), "{sql}");
    }
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, now())",
        "BEGIN",
        "END",
        "SELECT created_at, dropped FROM docs",
        // Review: ORM columns and prose in literals.
        "SELECT create_time, call_id, load_date, user_comment FROM t",
        "SELECT pg_backend_pid(), count(*) FROM pg_stat_activity",
        "UPDATE docs SET updated_at = now() WHERE id = $1",
    ] {
        assert!(!super::may_change_schema(sql.as_bytes()), "{sql}");
    }
}

/// Other sessions' statement text is not a read a caller sharing the
/// connection's role may make (review: one principal read another's
/// literals).
#[test]
fn other_sessions_statements_are_admin() {
    for sql in [
        "SELECT query FROM pg_stat_activity",
        "select usename, query from pg_catalog.pg_stat_activity where pid <> pg_backend_pid()",
        "TABLE pg_stat_activity",
        "SELECT * FROM pg_stat_get_activity(NULL)",
        "SELECT pg_stat_get_backend_activity(1)",
        "WITH a AS (SELECT * FROM pg_stat_activity) SELECT count(*) FROM a",
    ] {
        assert_eq!(c(sql), Class::Admin, "{sql}");
    }
    assert_eq!(c("SELECT count(*) FROM pg_stat_database"), Class::Read);
}
