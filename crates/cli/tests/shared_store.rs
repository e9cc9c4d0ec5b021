//! Several gateways on one PostgreSQL store: the repository suite on
//! PostgreSQL, then two gateway processes sharing it — tokens, audit chain
//! under concurrent load, reviews, and one gateway dying mid-traffic.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::pg::{PG_PASSWORD, PgCluster};
use common::*;
use portcullis_tls::{CertificateAuthority, LeafKind};

/// A fresh database in the suite's cluster, and its URL (verified TLS).
fn database(name: &str) -> (String, String) {
    let pg = PgCluster::shared();
    let db = format!("pcl_{name}_{}", std::process::id());
    pg.psql_direct(&format!("DROP DATABASE IF EXISTS {db}"));
    pg.psql_direct(&format!("CREATE DATABASE {db}"));
    let url = format!(
        "postgres://postgres@localhost:{}/{db}?sslrootcert={}",
        pg.port,
        pg.ca.display()
    );
    (db, url)
}

#[test]
fn the_repository_suite_on_postgresql() {
    let (_, url) = database("suite");
    let with_pw =
        url.replace("postgres@", &format!("postgres:{PG_PASSWORD}@")) + "&sslmode=verify-full";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = portcullis_store::Store::open(&with_pw).await.unwrap();
        assert_eq!(store.backend(), portcullis_store::Backend::Postgres);
        portcullis_store::testsuite::run_all(&store).await;
        // Opening again (another gateway starting) finds the schema.
        let again = portcullis_store::Store::open(&with_pw).await.unwrap();
        portcullis_store::testsuite::tokens(&again).await;
    });
}

#[test]
fn two_gateways_share_tokens_audit_and_reviews() {
    let (_, url) = database("two");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    let leaf = ca
        .issue(
            LeafKind::Server,
            &["localhost".into(), "127.0.0.1".into()],
            Duration::from_secs(86400),
        )
        .unwrap();
    std::fs::write(dir.join("server.pem"), leaf.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), leaf.key_pem).unwrap();
    std::fs::write(dir.join("pgpw"), PG_PASSWORD).unwrap();
    let pg = PgCluster::shared();
    let target = format!(
        "postgres://postgres@localhost:{}/postgres?sslrootcert={}",
        pg.port,
        pg.ca.display()
    );
    let config = |name: &str| {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"

[store]
url = "{url}"
password = "file:pgpw"

[postgres]
listen = "127.0.0.1:0"

[[connections]]
name = "db"
type = "postgres"
url = "{target}"
password = "file:pgpw"
approval = {{ mode = "statements", classes = ["ddl"], approvers = ["dba"], wait = "30s" }}

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["db"]
# {name}
"#
        )
    };
    std::fs::write(dir.join("b.toml"), config("b")).unwrap();
    // Gateway A creates the token; B has never seen it.
    let (a, token) = gateway_with_config(dir, &config("a"));
    let b = Proc::spawn(
        dir,
        &["--config", dir.join("b.toml").to_str().unwrap(), "gateway"],
        "gateway-b.log",
    );
    let psql = |gw: &Proc, sql: &str| {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-c", sql])
            .env("PGHOST", "localhost")
            .env("PGPORT", gw.pg_port.unwrap().to_string())
            .env("PGDATABASE", "db")
            .env("PGUSER", "agent")
            .env("PGPASSWORD", &token)
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", dir.join("ca.pem"))
            .output()
            .unwrap()
    };
    let out = psql(&b, "SELECT 'via B'");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // …because the token lives in PostgreSQL, not in a file here.
    assert!(!dir.join("portcullis.db").exists());
    let with_pw =
        url.replace("postgres@", &format!("postgres:{PG_PASSWORD}@")) + "&sslmode=verify-full";
    let tokens = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = portcullis_store::Store::open(&with_pw).await.unwrap();
        store.list_tokens().await.unwrap()
    });
    assert!(tokens.iter().any(|t| t.subject == "agent:tester"));

    // Concurrent load through both: one audit chain that verifies.
    let ok = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for gw in [&a, &b, &a, &b] {
            let ok = ok.clone();
            let psql = &psql;
            scope.spawn(move || {
                for i in 0..10 {
                    if psql(gw, &format!("SELECT {i}")).status.success() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(ok.load(Ordering::Relaxed), 40);
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(["--config", dir.join("b.toml").to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["sessions", "list", "--json"]);
    let sessions = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(sessions >= 41, "{sessions} sessions indexed");

    // A review created on A is approved through B.
    let bob = {
        let out = cli(&[
            "token",
            "create",
            "--principal",
            "user:bob",
            "--group",
            "dba",
        ]);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (a_port, ca_pem) = (a.pg_port.unwrap(), dir.join("ca.pem"));
    let token2 = token.clone();
    let held = std::thread::spawn(move || {
        Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-c",
                "CREATE TABLE IF NOT EXISTS shared_t (x int)",
            ])
            .env("PGHOST", "localhost")
            .env("PGPORT", a_port.to_string())
            .env("PGDATABASE", "db")
            .env("PGUSER", "agent")
            .env("PGPASSWORD", &token2)
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", ca_pem)
            .output()
            .unwrap()
    });
    let reviews = |args: &[&str]| {
        Command::new(BIN)
            .arg("reviews")
            .args(args)
            .env("PORTCULLIS_URL", &b.url)
            .env("PORTCULLIS_CA", dir.join("ca.pem"))
            .env("PORTCULLIS_TOKEN", &bob)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let out = reviews(&["list", "--json", "--state", "pending"]);
        if let Some(id) = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|r| r["id"].as_str().map(str::to_string))
        {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reviews(&["approve", &id]).status.success());
    let out = held.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A dies mid-traffic; B keeps serving new sessions.
    let mut a = a;
    let _ = a.child.kill();
    let _ = a.child.wait();
    for i in 0..5 {
        let out = psql(&b, &format!("SELECT {i}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The store password never lands in either gateway's log.
    assert!(!b.logs().contains(PG_PASSWORD));
}
