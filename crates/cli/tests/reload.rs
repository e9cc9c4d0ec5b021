//! Config reload with the real binary, curl and psql: a good change
//! applies without a restart (file change and SIGHUP), a bad one is
//! refused with the running config kept, and a removed grant or a
//! changed connection ends the live sessions it admitted.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::PgCluster;
use common::*;

struct Setup {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    gw: Proc,
    token: String,
    ca: String,
    api_port: u16,
    upstream: upstream::TestUpstream,
}

use common::db_api::config;

const BOTH: &str = common::db_api::TESTERS;

fn setup(rest: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let up = common::db_api::prepare(&dir);
    let (gw, token) = gateway_with_config(&dir, &config(up.port, rest));
    Setup {
        ca: dir.join("ca.pem").display().to_string(),
        dir,
        _tmp: tmp,
        gw,
        token,
        api_port: up.port,
        upstream: up,
    }
}

impl Setup {
    fn rewrite(&self, rest: &str) {
        // Written whole and renamed, as editors and config tools do.
        let tmp = self.dir.join("portcullis.toml.new");
        std::fs::write(&tmp, config(self.api_port, rest)).unwrap();
        std::fs::rename(&tmp, self.dir.join("portcullis.toml")).unwrap();
    }

    fn status(&self, path: &str) -> u16 {
        get(&self.gw.url, &self.ca, Some(&self.token), path).status
    }

    /// Wait up to `secs` for `path` to answer `want`.
    fn wait_for(&self, path: &str, want: u16, secs: u64) -> u16 {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status(path);
            if s == want || Instant::now() > until {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn metrics(&self) -> String {
        let admin = self.gw.admin.clone().expect("admin listener");
        let base = if admin.starts_with("https://") {
            admin
        } else {
            format!("https://{admin}")
        };
        get(&base, &self.ca, None, "/metrics").body
    }

    fn reloads(&self, result: &str) -> u64 {
        let prefix = format!("portcullis_config_reloads_total{{result=\"{result}\"}} ");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn audit(&self) -> String {
        let out = cli_at(&self.dir.join("portcullis.toml"), &["audit", "export"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Wait up to 10 s for `n` reloads with `result`; how many there were.
    fn wait_reloads(&self, result: &str, n: u64) -> u64 {
        let until = Instant::now() + Duration::from_secs(10);
        while self.reloads(result) < n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.reloads(result)
    }

    fn conninfo(&self, db: &str) -> String {
        format!(
            "host=localhost port={} dbname={db} user=agent sslmode=verify-full sslrootcert={}",
            self.gw.pg_port.expect("postgres listener"),
            self.ca
        )
    }

    fn sighup(&self) {
        let pid = self.gw.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

/// A grant and a connection added to the file are in force within a few
/// seconds, with no restart; SIGHUP reloads too; each reload is audited.
#[test]
fn a_good_change_applies_without_a_restart() {
    let only_db = r#"
[[grants]]
name = "testers"
groups = ["testers"]
connections = ["db"]
"#;
    let s = setup(only_db);
    assert_eq!(s.status("/c/api/x"), 403, "no grant yet");
    // Not granted, and no such connection yet: refused alike (which
    // connections exist is told only to callers a grant covers them for).
    assert_eq!(s.status("/c/api2/x"), 403, "no such connection yet");

    let more = r#"
[[connections]]
name = "api2"
type = "http"
url = "https://localhost:APIPORT"
ca_file = "ca.pem"

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["db", "api", "api2"]
"#;
    s.rewrite(more);
    assert_eq!(s.wait_for("/c/api/x", 200, 10), 200, "{}", s.gw.logs());
    assert_eq!(s.status("/c/api2/x"), 200, "the added connection routes");
    assert_eq!(s.reloads("ok"), 1);
    let audit = s.audit();
    assert!(audit.contains("\"reload\":true"), "{audit}");
    assert!(audit.contains("connection api2 added"), "{audit}");
    assert!(s.gw.logs().contains("config reloaded"));

    // SIGHUP reads the file again even when it did not change.
    s.sighup();
    assert_eq!(s.wait_reloads("ok", 2), 2, "{}", s.gw.logs());
    assert_eq!(s.status("/c/api2/x"), 200);
}

/// A file that does not parse, or names what does not exist, is refused:
/// the running config keeps serving, the error is logged, counted and
/// audited, and it names the line without quoting it.
#[test]
fn a_bad_change_is_refused_and_the_running_config_kept() {
    let s = setup(BOTH);
    assert_eq!(s.status("/c/api/x"), 200);

    // A syntax error on a line holding a secret someone pasted inline.
    let broken =
        format!("{BOTH}\n[[connections]]\nname = \"x\"\npassword = \"CANARY-reload-secret\n");
    s.rewrite(&broken);
    assert_eq!(s.wait_reloads("error", 1), 1, "{}", s.gw.logs());
    assert_eq!(s.status("/c/api/x"), 200, "the running config is kept");

    // Valid TOML, but a grant naming a connection that does not exist.
    let dangling = BOTH.replace("[\"db\", \"api\"]", "[\"db\", \"api\", \"nope\"]");
    s.rewrite(&dangling);
    assert_eq!(s.wait_reloads("error", 2), 2, "{}", s.gw.logs());
    assert_eq!(s.status("/c/api/x"), 200);
    assert_eq!(s.reloads("ok"), 0);

    // Who may call changed (a new identity provider): that needs a
    // restart, and nothing else from the file applies meanwhile.
    let idp = format!(
        "{BOTH}\n[[oidc]]\nissuer = \"https://idp.example\"\naudiences = [\"portcullis\"]\n"
    );
    s.rewrite(&idp);
    assert_eq!(s.wait_reloads("error", 3), 3, "{}", s.gw.logs());
    assert!(
        s.gw.logs().contains("restart the gateway"),
        "{}",
        s.gw.logs()
    );

    let logs = s.gw.logs();
    assert!(logs.contains("config reload refused"), "{logs}");
    assert!(!logs.contains("CANARY-reload-secret"), "secret in the log");
    for f in all_files(&s.dir) {
        if f.0.ends_with("portcullis.toml") || f.0.ends_with("portcullis.toml.new") {
            continue;
        }
        assert!(
            !contains(&f.1, "CANARY-reload-secret"),
            "secret in {}",
            f.0.display()
        );
    }

    // Fixed again: it applies.
    s.rewrite(BOTH);
    assert_eq!(s.wait_reloads("ok", 1), 1, "{}", s.gw.logs());
    // (The CLI reads the file too: the audit once it is valid again.)
    let audit = s.audit();
    assert!(audit.contains("config_reload_refused"), "{audit}");
    assert!(
        !audit.contains("CANARY-reload-secret"),
        "secret in the audit"
    );
}

/// Nothing stale: a reload that takes the grant away ends the open psql
/// session it admitted (FATAL 42501, within about a second of the
/// reload), refuses new ones and the next HTTP request; a session on a
/// connection the reload did not touch goes on.
#[test]
fn a_removed_grant_ends_the_sessions_it_admitted() {
    let two = r#"
[[connections]]
name = "db2"
type = "postgres"
url = "postgres://postgres@localhost:PGPORT/postgres?sslrootcert=PGROOT"
password = "file:pgpw"

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["db", "db2", "api"]
"#;
    let pg = PgCluster::shared();
    let fill = |t: &str| {
        t.replace("PGPORT", &pg.port.to_string())
            .replace("PGROOT", &pg.ca.display().to_string())
    };
    let s = setup(&fill(two));
    let mut doomed = HeldPsql::open(&s.conninfo("db"), &s.token);
    let mut kept = HeldPsql::open(&s.conninfo("db2"), &s.token);
    std::thread::sleep(Duration::from_millis(1500));

    s.rewrite(&fill(&two.replace(
        "connections = [\"db\", \"db2\", \"api\"]",
        "connections = [\"db2\"]",
    )));
    assert_eq!(s.wait_for("/c/api/x", 403, 10), 403, "{}", s.gw.logs());
    std::thread::sleep(Duration::from_millis(1000));
    doomed.send("select 'after';");
    kept.send("select 'kept after';");
    let (o, e) = doomed.finish();
    assert!(o.contains("before") && !o.contains("after"), "{o} {e}");
    assert!(e.contains("withdrawn by a config reload"), "{e}");
    let (o, e) = kept.finish();
    assert!(
        o.contains("kept after"),
        "the untouched session goes on: {o} {e}"
    );

    // New sessions are refused as any caller without a grant is.
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "select 1"])
        .arg(s.conninfo("db"))
        .env("PGPASSWORD", &s.token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let audit = s.audit();
    assert!(audit.contains("access_ended"), "{audit}");
}

/// A connection changed by a reload (here: made read-only) ends the
/// sessions opened under its old definition, though the grant stays:
/// they were admitted to something that no longer exists.
#[test]
fn a_changed_connection_ends_its_sessions() {
    let s = setup(BOTH);
    let mut held = HeldPsql::open(&s.conninfo("db"), &s.token);
    std::thread::sleep(Duration::from_millis(1500));
    let text = std::fs::read_to_string(s.dir.join("portcullis.toml")).unwrap();
    let read_only = text.replace(
        "password = \"file:pgpw\"\n",
        "password = \"file:pgpw\"\naccess = \"read-only\"\n",
    );
    std::fs::write(s.dir.join("portcullis.toml"), read_only).unwrap();
    s.wait_reloads("ok", 1);
    std::thread::sleep(Duration::from_millis(1000));
    held.send("select 'after';");
    let (o, e) = held.finish();
    assert!(!o.contains("after"), "{o} {e}");
    assert!(e.contains("was changed by a config reload"), "{e}");
    // A new session gets the new definition: writes are refused.
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "create temp table t(x int)"])
        .arg(s.conninfo("db"))
        .env("PGPASSWORD", &s.token)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("read-only"), "{e}");
}

/// A budget changed by a reload ends the sessions its grant admitted:
/// they count against limits taken when they opened, which are no longer
/// the grant's.
#[test]
fn a_changed_budget_ends_its_sessions() {
    let s = setup(BOTH);
    let mut held = HeldPsql::open(&s.conninfo("db"), &s.token);
    std::thread::sleep(Duration::from_millis(1500));
    let text = std::fs::read_to_string(s.dir.join("portcullis.toml")).unwrap();
    let budgeted = text.replace(
        "connections = [\"db\", \"api\"]\n",
        "connections = [\"db\", \"api\"]\nbudgets = [{ rows = 1000, per = \"hour\" }]\n",
    );
    assert_ne!(budgeted, text);
    std::fs::write(s.dir.join("portcullis.toml"), budgeted).unwrap();
    s.wait_reloads("ok", 1);
    std::thread::sleep(Duration::from_millis(1000));
    held.send("select 'after';");
    let (o, e) = held.finish();
    assert!(!o.contains("after"), "{o} {e}");
    assert!(e.contains("budget of the grant"), "{e}");
}

/// A request held for approval across a reload is not forwarded under
/// the rules it was admitted by: once approved it gets 503
/// config_changed, and sent again it is admitted under the new ones.
#[test]
fn a_request_held_across_a_reload_is_not_forwarded_under_old_rules() {
    let held = r#"
[[connections]]
name = "guarded"
type = "http"
url = "https://localhost:APIPORT"
ca_file = "ca.pem"
approval = { mode = "statements", methods = ["DELETE"], approvers = ["dba"], wait = "20s" }

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["db", "api", "guarded"]
"#;
    let s = setup(held);
    let out = cli_at(
        &s.dir.join("portcullis.toml"),
        &[
            "token",
            "create",
            "--principal",
            "user:dana",
            "--group",
            "dba",
        ],
    );
    let approver = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let before = s.upstream.count();
    let (url, ca, token) = (s.gw.url.clone(), s.ca.clone(), s.token.clone());
    let caller = std::thread::spawn(move || {
        curl(&[
            "--cacert",
            &ca,
            "-X",
            "DELETE",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{url}/c/guarded/items/1"),
        ])
    });
    // The review exists; then a reload (an unrelated connection added).
    let reviews = |args: &[&str]| {
        Command::new(BIN)
            .arg("reviews")
            .args(args)
            .env("PORTCULLIS_URL", &s.gw.url)
            .env("PORTCULLIS_CA", &s.ca)
            .env("PORTCULLIS_TOKEN", &approver)
            .output()
            .unwrap()
    };
    let until = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let out = reviews(&["list", "--json", "--state", "pending"]);
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_owned);
        if let Some(l) = line {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            break v["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < until, "no review");
        std::thread::sleep(Duration::from_millis(200));
    };
    let more = format!(
        "{held}\n[[connections]]\nname = \"other\"\ntype = \"http\"\nurl = \"https://localhost:APIPORT\"\nca_file = \"ca.pem\"\n"
    );
    s.rewrite(&more);
    assert_eq!(s.wait_reloads("ok", 1), 1, "{}", s.gw.logs());
    assert!(reviews(&["approve", &id]).status.success());
    let r = caller.join().unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "config_changed");
    assert_eq!(s.upstream.count(), before, "nothing reached the target");
}
