//! `portcullis doctor` and `[postgres] strict_roles` against the real
//! PostgreSQL of the suite: a superuser behind a read-only connection is
//! a problem, a least-privilege role is not.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::pg::{PG_PASSWORD, PgCluster};
use common::*;
use portcullis_tls::CertificateAuthority;
use serde_json::Value;

/// A least-privilege role and the one table it may read; dropped again
/// by [`Self::drop_all`].
struct Fixture {
    role: String,
    table: String,
    password: String,
}

impl Fixture {
    fn create(pg: &PgCluster) -> Fixture {
        let pid = std::process::id();
        let f = Fixture {
            role: format!("doctor_ro_{pid}"),
            table: format!("doctor_t_{pid}"),
            password: format!("canary-doctor-pw-{pid}-7c2a"),
        };
        f.drop_all(pg);
        let (role, table, password) = (&f.role, &f.table, &f.password);
        pg.psql_direct(&format!(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE {role} LOGIN PASSWORD '{password}';
             GRANT CONNECT ON DATABASE postgres TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             CREATE TABLE {table} (id int);
             GRANT SELECT ON {table} TO {role};
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
        ));
        f
    }

    /// Idempotent: also run first, in case an earlier run left them.
    fn drop_all(&self, pg: &PgCluster) {
        let (role, table) = (&self.role, &self.table);
        pg.psql_direct(&format!(
            "DROP TABLE IF EXISTS {table};
             DO $$ BEGIN
               IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                 EXECUTE 'DROP OWNED BY {role}';
                 EXECUTE 'DROP ROLE {role}';
               END IF;
             END $$;"
        ));
    }
}

fn pg_connection(name: &str, user: &str, password_file: &str) -> String {
    let pg = PgCluster::shared();
    format!(
        r#"
[[connections]]
name = "{name}"
type = "postgres"
url = "postgres://{user}@localhost:{p}/postgres?sslrootcert={root}"
password = "file:{password_file}"
access = "read-only"
"#,
        p = pg.port,
        root = pg.ca.display()
    )
}

fn config(dir: &Path, file: &str, postgres: &str, connections: &[String]) -> String {
    let text = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"
{postgres}
{}"#,
        connections.concat()
    );
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn portcullis(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("PORTCULLIS_LOG", "info");
    c
}

/// Run to the end, but not for longer than `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = Output {
        status: match status {
            Some(st) => st,
            None => child.wait().unwrap(),
        },
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        status.is_some(),
        "still running after {limit:?}; stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn no_secrets(out: &Output, secrets: &[&str]) {
    for s in secrets {
        assert!(!contains(&out.stdout, s), "a password on stdout");
        assert!(!contains(&out.stderr, s), "a password on stderr");
    }
}

/// The text block `doctor` prints for `connection`.
fn block<'a>(stdout: &'a str, connection: &str) -> &'a str {
    stdout
        .split("\n\n")
        .find(|b| b.trim_start().starts_with(&format!("{connection} (")))
        .unwrap_or_else(|| panic!("no block for {connection}:\n{stdout}"))
}

#[test]
fn doctor_and_strict_roles() {
    let pg = PgCluster::shared();
    let fixture = Fixture::create(pg);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    write_leaf(&ca, dir, "server");
    std::fs::write(dir.join("supw"), format!("{PG_PASSWORD}\n")).unwrap();
    std::fs::write(dir.join("leastpw"), format!("{}\n", fixture.password)).unwrap();
    let secrets = [PG_PASSWORD, fixture.password.as_str()];
    let su = pg_connection("su", "postgres", "supw");
    let least = pg_connection("least", &fixture.role, "leastpw");

    // Text: the superuser fails the check, the least-privilege role is ok.
    let both = config(dir, "both.toml", "", &[su.clone(), least.clone()]);
    let out = run_bounded(
        portcullis(dir, &["--config", both.as_str(), "doctor"]),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let s = block(&stdout, "su");
    assert!(s.contains("read-only"), "{s}");
    assert!(s.contains("problem:") && s.contains("superuser"), "{s}");
    assert!(s.contains("CREATE ROLE"), "the advice: {s}");
    let l = block(&stdout, "least");
    assert!(l.contains(&fixture.role), "{l}");
    assert!(l.contains("ok: least privilege"), "{l}");
    assert!(!l.contains("problem:"), "{l}");
    assert!(stderr.contains("checked: su"), "{stderr}");
    no_secrets(&out, &secrets);

    // JSON: the same facts.
    let out = run_bounded(
        portcullis(dir, &["--config", both.as_str(), "doctor", "--json"]),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1));
    no_secrets(&out, &secrets);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    });
    let all = v.as_array().expect("a JSON array");
    assert_eq!(all.len(), 2, "{v}");
    let find = |name: &str| {
        all.iter()
            .find(|o| o["connection"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {v}"))
    };
    let s = find("su");
    assert_eq!(s["access"], "read-only");
    assert_eq!(s["role"], "postgres");
    assert!(s["error"].is_null(), "{s}");
    let problems = s["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("superuser")),
        "{s}"
    );
    let l = find("least");
    assert_eq!(l["access"], "read-only");
    assert_eq!(l["role"], fixture.role.as_str());
    assert!(l["error"].is_null(), "{l}");
    assert_eq!(l["problems"], serde_json::json!([]), "{l}");

    // Only the least-privilege role: nothing to report, exit 0.
    let good = config(dir, "least.toml", "", std::slice::from_ref(&least));
    let out = run_bounded(
        portcullis(dir, &["--config", good.as_str(), "doctor"]),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    no_secrets(&out, &secrets);

    // strict_roles: the superuser keeps the gateway from starting…
    let strict = "[postgres]\nlisten = \"127.0.0.1:0\"\nstrict_roles = true\n";
    let bad = config(dir, "strict-su.toml", strict, std::slice::from_ref(&su));
    let out = run_bounded(
        portcullis(dir, &["--config", bad.as_str(), "gateway"]),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("portcullis: ready"), "{stdout}");
    assert!(stderr.contains("connection \"su\""), "{stderr}");
    assert!(stderr.contains("superuser"), "{stderr}");
    assert!(stderr.contains("portcullis doctor"), "{stderr}");
    no_secrets(&out, &secrets);

    // …a least-privilege role does not.
    let ok = config(
        dir,
        "strict-least.toml",
        strict,
        std::slice::from_ref(&least),
    );
    let gw = Proc::spawn(
        dir,
        &["--config", ok.as_str(), "gateway"],
        "strict-least.log",
    );
    assert!(gw.pg_port.is_some());
    let logs = gw.logs();
    assert!(!logs.contains(&fixture.password), "a password in the log");
    assert!(gw.stop().success());

    fixture.drop_all(pg);
}
