//! Human in the loop, end to end: psql statements held for review and
//! approved, denied or timed out through `portcullis reviews`; binding to
//! the exact statement, single use, no self-approval, two approvers, the
//! signed webhook, just-in-time access ending mid-session, and HTTP.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::pg::{PG_PASSWORD, PgCluster};
use common::upstream::{self, TestUpstream};
use common::*;
use portcullis_tls::CertificateAuthority;
use serde_json::Value;

const HOOK_SECRET: &str = "webhook-secret-for-tests";

struct Setup {
    tmp: tempfile::TempDir,
    gw: Proc,
    ca: String,
    token: String,
    bob: String,
    dave: String,
    eve: String,
    hook: TestUpstream,
}

fn token(dir: &std::path::Path, principal: &str, group: &str) -> String {
    let out = Command::new(BIN)
        .args(["--config", dir.join("portcullis.toml").to_str().unwrap()])
        .args([
            "token",
            "create",
            "--principal",
            principal,
            "--group",
            group,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn setup() -> Setup {
    let pg = PgCluster::shared();
    static TABLE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        pg.psql_direct(
            "CREATE TABLE IF NOT EXISTS appr_t (id int);
             INSERT INTO appr_t SELECT g FROM generate_series(1, 1000) g;",
        );
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    for stem in ["server", "hook"] {
        write_leaf(&ca, dir, stem);
    }
    let hook = upstream::start(&dir.join("hook.pem"), &dir.join("hook.key"));
    std::fs::write(dir.join("pgpw"), PG_PASSWORD).unwrap();
    std::fs::write(dir.join("hook-secret"), HOOK_SECRET).unwrap();
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslrootcert={}",
        pg.port,
        pg.ca.display()
    );
    let pgconn = |name: &str, approval: &str| {
        format!(
            "[[connections]]\nname = \"{name}\"\ntype = \"postgres\"\nurl = \"{url}\"\npassword = \"file:pgpw\"\napproval = {approval}\n"
        )
    };
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"

[postgres]
listen = "127.0.0.1:0"

[approvals]
webhook = "https://localhost:{hook}/hook"
webhook_secret = "file:hook-secret"
webhook_ca_file = "ca.pem"

{guarded}
{two}
{quick}
{jit}
{previewed}
# Applies to reviewers only, yet masks every preview's sample: who will
# review is not known when it is taken.
[[masking.rules]]
name = "reviewers-pii"
connections = ["previewed"]
groups = ["dba"]

# Another group's: only prev_people.secret (a preview's sample is masked
# by every rule of the connection).
[[masking.rules]]
name = "contractors-secret"
connections = ["previewed"]
groups = ["contractors"]
detectors = []
[[masking.rules.fields]]
columns = ["prev_people.secret"]

[[connections]]
name = "api"
type = "http"
url = "https://localhost:{hook}"
ca_file = "ca.pem"
approval = {{ mode = "statements", methods = ["DELETE"], approvers = ["dba"], wait = "1s" }}

[[connections]]
name = "api-overrides"
type = "http"
url = "https://localhost:{hook}"
ca_file = "ca.pem"
method_overrides = true
approval = {{ mode = "statements", methods = ["DELETE"], approvers = ["dba"], wait = "1s" }}

# Reversible tokens and a held DELETE: the review shows the caller's form.
[[connections]]
name = "api-tokens"
type = "http"
url = "https://localhost:{hook}"
ca_file = "ca.pem"
approval = {{ mode = "statements", methods = ["DELETE"], approvers = ["dba"], wait = "1s" }}

[[masking.rules]]
name = "api-tokens"
connections = ["api-tokens"]
actions = {{ email = {{ action = "hash", reversible = true }} }}

[[connections]]
name = "api-jit"
type = "http"
url = "https://localhost:{hook}"
ca_file = "ca.pem"
approval = {{ mode = "session", approvers = ["dba"], wait = "1s", session = "30m" }}

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["*"]
"#,
        hook = hook.port,
        guarded = pgconn(
            "guarded",
            r#"{ mode = "statements", classes = ["write", "ddl"], approvers = ["dba"], wait = "30s" }"#
        ),
        two = pgconn(
            "guarded2",
            r#"{ mode = "statements", classes = ["write"], approvers = ["dba"], required = 2, wait = "30s" }"#
        ),
        quick = pgconn(
            "quick",
            r#"{ mode = "statements", classes = ["write"], approvers = ["dba"], wait = "1s" }"#
        ),
        jit = pgconn(
            "jit",
            r#"{ mode = "session", approvers = ["dba"], wait = "30s", session = "1h" }"#
        ),
        previewed = pgconn(
            "previewed",
            r#"{ mode = "statements", classes = ["write", "unknown"], approvers = ["dba"], wait = "30s", preview_timeout = "1s" }"#
        ),
    );
    let (gw, tester) = gateway_with_config(dir, &config);
    Setup {
        ca: dir.join("ca.pem").to_str().unwrap().to_string(),
        bob: token(dir, "user:bob", "dba"),
        dave: token(dir, "user:dave", "dba"),
        eve: token(dir, "user:eve", "dev"),
        tmp,
        gw,
        token: tester,
        hook,
    }
}

impl Setup {
    fn psql(&self, db: &str, script: &str) -> Output {
        self.conn().psql(db, script)
    }

    fn conn(&self) -> SetupRef {
        SetupRef {
            pg_port: self.gw.pg_port.unwrap(),
            ca: self.ca.clone(),
            token: self.token.clone(),
            options: String::new(),
        }
    }

    fn psql_bg(&self, db: &str, script: &str) -> std::thread::JoinHandle<Output> {
        self.psql_bg_with(db, script, "")
    }

    /// psql in the background with `PGOPTIONS`.
    fn psql_bg_with(
        &self,
        db: &str,
        script: &str,
        options: &str,
    ) -> std::thread::JoinHandle<Output> {
        let me = SetupRef {
            options: options.to_string(),
            ..self.conn()
        };
        let (db, script) = (db.to_string(), script.to_string());
        std::thread::spawn(move || me.psql(&db, &script))
    }

    fn reviews(&self, as_token: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["reviews"])
            .args(args)
            .env("PORTCULLIS_URL", &self.gw.url)
            .env("PORTCULLIS_CA", &self.ca)
            .env("PORTCULLIS_TOKEN", as_token)
            .env("HOME", self.tmp.path())
            .output()
            .unwrap()
    }

    /// The pending review whose action contains `needle`, waited for.
    fn pending(&self, needle: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.reviews(&self.bob, &["list", "--json", "--state", "pending"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let found = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| r["action"].as_str().unwrap_or("").contains(needle));
            if let Some(r) = found {
                return r;
            }
            assert!(Instant::now() < deadline, "no pending review for {needle}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn decide(&self, as_token: &str, verb: &str, id: &str, reason: Option<&str>) -> Output {
        let mut args = vec![verb, id];
        if let Some(r) = reason {
            args.extend(["--reason", r]);
        }
        self.reviews(as_token, &args)
    }
}

/// What a background psql needs (Setup itself is not Send-able across).
struct SetupRef {
    pg_port: u16,
    ca: String,
    token: String,
    /// `PGOPTIONS`.
    options: String,
}

impl SetupRef {
    fn psql(&self, db: &str, script: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=0"])
            .env("PGHOST", "localhost")
            .env("PGPORT", self.pg_port.to_string())
            .env("PGDATABASE", db)
            .env("PGUSER", "agent")
            .env("PGPASSWORD", &self.token)
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &self.ca)
            .env("PGOPTIONS", &self.options)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// How many rows with `id` remain (tests share the table: each uses its
/// own ids).
fn rows_with(id: i32) -> String {
    PgCluster::shared().psql_direct(&format!("SELECT count(*) FROM appr_t WHERE id = {id}"))
}

#[test]
fn a_held_delete_runs_once_approved_and_reads_pass() {
    let s = setup();
    // Reads are not held.
    let out = s.psql("guarded", "SELECT count(*) > 0 FROM appr_t;\n");
    assert!(text(&out).contains('t'), "{}", text(&out));

    let bg = s.psql_bg("guarded", "DELETE FROM appr_t WHERE id = 1;\n");
    let r = s.pending("WHERE id = 1");
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["requester"], "agent:tester");
    assert_eq!(r["connection"], "guarded");
    assert_eq!(r["classification"], "write");

    // Nobody approves their own request, and only approvers approve.
    let out = s.decide(&s.token, "approve", &id, None);
    assert!(!out.status.success());
    assert!(text(&out).contains("own request"), "{}", text(&out));
    let out = s.decide(&s.eve, "approve", &id, None);
    assert!(!out.status.success(), "{}", text(&out));
    // …and people outside the approver groups do not even see it.
    let out = s.reviews(&s.eve, &["list", "--json"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&id));
    let out = s.reviews(&s.token, &["list", "--json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&id),
        "the requester sees its own"
    );

    let out = s.decide(&s.bob, "approve", &id, None);
    assert!(out.status.success(), "{}", text(&out));
    // With no --gateway and no PORTCULLIS_URL the CLI finds the running
    // gateway through the store; `show` prints times people can read.
    let out = Command::new(BIN)
        .args([
            "--config",
            s.tmp.path().join("portcullis.toml").to_str().unwrap(),
        ])
        .args(["reviews", "show", &id])
        .env_remove("PORTCULLIS_URL")
        .env_remove("PORTCULLIS_CA")
        .env("PORTCULLIS_TOKEN", &s.bob)
        .env("HOME", s.tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let created = shown["created_at"].as_str().unwrap_or_default();
    assert!(created.contains('T') && created.ends_with('Z'), "{shown}");
    let out = bg.join().unwrap();
    let t = text(&out);
    assert!(t.contains(&id), "the caller was told which review: {t}");
    assert!(t.contains("DELETE 1") || !t.contains("ERROR"), "{t}");
    assert_eq!(rows_with(1), "0");

    // The webhook got a signed announcement.
    let hook = s
        .hook
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|x| x.path_and_query == "/hook" && x.body.contains(&id))
        .cloned()
        .expect("webhook call");
    let sig = hook.header("x-portcullis-signature").unwrap().to_string();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, HOOK_SECRET.as_bytes());
    let expected = format!(
        "sha256={}",
        hex::encode(aws_lc_rs::hmac::sign(&key, hook.body.as_bytes()).as_ref())
    );
    assert_eq!(sig, expected);
    let body: Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(body["review"]["id"], id);
    assert!(body["approve_command"].as_str().unwrap().contains(&id));

    // The audit chain tells the story.
    let out = Command::new(BIN)
        .args([
            "--config",
            s.tmp.path().join("portcullis.toml").to_str().unwrap(),
        ])
        .args(["audit", "export"])
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    for e in ["review_created", "review_approved", "review_used"] {
        assert!(audit.contains(e), "{e} missing");
    }
    // Linked to the session the statement belonged to.
    let used = audit
        .lines()
        .find(|l| l.contains("review_used") && l.contains(&id))
        .unwrap();
    let v: Value = serde_json::from_str(used).unwrap();
    let session = v
        .pointer("/event/detail/session")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{used}"));
    assert!(
        audit
            .lines()
            .any(|l| l.contains("session_start") && l.contains(session)),
        "no session {session}"
    );
    assert!(audit.contains("user:bob"));
}

#[test]
fn denial_timeout_binding_and_single_use() {
    let s = setup();
    // Denied: the statement fails with 42501 naming the review and the
    // reason, and the session goes on.
    let bg = s.psql_bg(
        "guarded",
        "DELETE FROM appr_t WHERE id = 2;\nSELECT 40 + 2;\n",
    );
    let r = s.pending("WHERE id = 2");
    let id = r["id"].as_str().unwrap().to_string();
    assert!(
        s.decide(&s.bob, "deny", &id, Some("not on a Friday"))
            .status
            .success()
    );
    let t = text(&bg.join().unwrap());
    assert!(t.contains(&id) && t.contains("not on a Friday"), "{t}");
    assert!(t.contains("42"), "the session stayed usable: {t}");
    assert_eq!(rows_with(2), "1");

    // Timeout (1 s on `quick`): 57014-style refusal naming the review;
    // the session goes on.
    let out = s.psql(
        "quick",
        "DELETE FROM appr_t WHERE id = 3;\nSELECT 'alive';\n",
    );
    let t = text(&out);
    assert!(
        t.contains("not decided within 1s") && t.contains("alive"),
        "{t}"
    );
    let held = s.pending("WHERE id = 3");
    let id3 = held["id"].as_str().unwrap().to_string();
    assert!(s.decide(&s.bob, "approve", &id3, None).status.success());

    // A different statement cannot ride on that approval…
    let t = text(&s.psql("quick", "DELETE FROM appr_t WHERE id >= 3;\n"));
    assert!(t.contains("not decided") && !t.contains(&id3), "{t}");
    assert_eq!(rows_with(500), "1");
    // …the approved one runs at once…
    let t = text(&s.psql("quick", "DELETE FROM appr_t WHERE id = 3;\n"));
    assert!(t.contains("DELETE 1"), "{t}");
    assert_eq!(rows_with(3), "0");
    // …and only once.
    let t = text(&s.psql("quick", "DELETE FROM appr_t WHERE id = 3;\n"));
    assert!(t.contains("not decided"), "{t}");
}

#[test]
fn two_approvers_and_http_requests() {
    let s = setup();
    let bg = s.psql_bg("guarded2", "DELETE FROM appr_t WHERE id = 4;\n");
    let r = s.pending("WHERE id = 4");
    let id = r["id"].as_str().unwrap().to_string();
    assert!(s.decide(&s.bob, "approve", &id, None).status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!bg.is_finished(), "one approval of two is not enough");
    let out = s.decide(&s.bob, "approve", &id, None);
    assert!(text(&out).contains("already approved"), "{}", text(&out));
    // The second approval through the admin listener: the same endpoint,
    // for the holder of a person's token.
    let admin = s.gw.admin.clone().expect("admin listener");
    let admin_post = |token: Option<&str>| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["--cacert", &s.ca, "-X", "POST", "-d", "{}"];
        if let Some(a) = &auth {
            args.extend(["-H", a.as_str()]);
        }
        let url = format!("https://{admin}/reviews/{id}/approve");
        args.push(&url);
        curl(&args)
    };
    let r = admin_post(None);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = admin_post(Some(&s.eve));
    assert_eq!(r.status, 403, "not an approver: {}", r.body);
    let r = admin_post(Some(&s.dave));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "approved");
    // Listing reviews there: for an authenticated caller, and only the
    // reviews they may see (statements and parameters stay private).
    let admin_get =
        |token: Option<&str>| get(&format!("https://{admin}"), &s.ca, token, "/reviews");
    assert_eq!(admin_get(None).status, 401);
    let seen = |token: &str| {
        let r = admin_get(Some(token));
        assert_eq!(r.status, 200, "{}", r.body);
        r.body.contains(&id)
    };
    assert!(seen(&s.dave), "an approver sees it");
    assert!(!seen(&s.eve), "someone else does not");
    let t = text(&bg.join().unwrap());
    assert!(!t.contains("ERROR"), "{t}");
    assert_eq!(rows_with(4), "0");

    // HTTP: a DELETE waits 1 s, then 403 with the review; once approved
    // the identical request runs, once; GET is not held.
    let del = |body: &str| {
        curl(&[
            "--cacert",
            &s.ca,
            "-X",
            "DELETE",
            "-H",
            &format!("Authorization: Bearer {}", s.token),
            "-d",
            body,
            &format!("{}/c/api/items/9", s.gw.url),
        ])
    };
    let r = del("{\"why\":\"cleanup\"}");
    assert_eq!(r.status, 403, "{}", r.body);
    let review = r.json()["review"].as_str().unwrap().to_string();
    assert_eq!(r.json()["error"], "approval_required");
    assert!(s.decide(&s.dave, "approve", &review, None).status.success());
    let other = del("{\"why\":\"something else\"}");
    assert_eq!(other.status, 403, "a different body is a different action");
    assert_eq!(del("{\"why\":\"cleanup\"}").status, 200);
    assert_eq!(del("{\"why\":\"cleanup\"}").status, 403, "single use");
    let r = get(&s.gw.url, &s.ca, Some(&s.token), "/c/api/items/9");
    assert_eq!(r.status, 200);

    // A POST the target would read as a DELETE (a method override) does
    // not walk around the rule: refused, and nothing reaches the target.
    let posted = |extra: &[&str], path: &str| {
        let auth = format!("Authorization: Bearer {}", s.token);
        let url = format!("{}{path}", s.gw.url);
        let mut args = vec!["--cacert", &s.ca, "-X", "POST", "-H", &auth];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    };
    for (extra, path) in [
        (
            &["-H", "X-HTTP-Method-Override: DELETE"][..],
            "/c/api/items/9",
        ),
        (&["-H", "X-HTTP-Method: DELETE"][..], "/c/api/items/9"),
        (&[][..], "/c/api/items/9?_method=DELETE"),
    ] {
        let r = posted(extra, path);
        assert_eq!(r.status, 400, "{extra:?} {path}: {}", r.body);
        assert!(r.body.contains("method overrides"), "{}", r.body);
    }
    assert_eq!(
        posted(&[], "/c/api/items/9").status,
        200,
        "a plain POST is not held"
    );
    // Where the connection says its target reads overrides, the rule sees
    // the overriding method: the POST is held as the DELETE it is.
    let r = posted(
        &["-H", "X-HTTP-Method-Override: DELETE"],
        "/c/api-overrides/items/9",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "approval_required");
    assert_eq!(posted(&[], "/c/api-overrides/items/9").status, 200);
}

/// The caller reads its own reviews: a held request shows, and is bound
/// to, what the caller sent (a reversible token), never the value masking
/// swaps back for it on the way to the target (found in review: the
/// review's action held the swapped-back query).
#[test]
fn a_held_request_shows_the_callers_tokens_not_their_values() {
    let s = setup();
    let auth = format!("Authorization: Bearer {}", s.token);
    let token = get(&s.gw.url, &s.ca, Some(&s.token), "/c/api-tokens/whoami").json()["email"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(token.starts_with("[EMAIL:"), "{token}");
    let enc: String = token
        .bytes()
        .map(|b| match b.is_ascii_alphanumeric() {
            true => (b as char).to_string(),
            false => format!("%{b:02X}"),
        })
        .collect();
    let body = format!(r#"{{"email":"{token}"}}"#);
    let url = format!("{}/c/api-tokens/users?email={enc}", s.gw.url);
    let del = || {
        curl(&[
            "--cacert",
            &s.ca,
            "-X",
            "DELETE",
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
            &url,
        ])
    };
    let r = del();
    assert_eq!(r.status, 403, "{}", r.body);
    let id = r.json()["review"].as_str().unwrap().to_string();
    let mine = get(
        &s.gw.url,
        &s.ca,
        Some(&s.token),
        &format!("/api/v1/reviews/{id}"),
    );
    assert_eq!(mine.status, 200, "{}", mine.body);
    let action = mine.json()["action"].as_str().unwrap().to_string();
    assert!(action.contains(&format!("email={enc}")), "{action}");
    assert!(!mine.body.contains("erin"), "{}", mine.body);
    // A refused method override does not quote what the target would
    // have read (found in review: the value, upper-cased).
    for (q, b) in [
        (format!("?_method={enc}&_method=GET"), String::new()),
        (String::new(), format!(r#"{{"_method":"{token}"}}"#)),
    ] {
        let r = curl(&[
            "--cacert",
            &s.ca,
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "--data-binary",
            &b,
            &format!("{}/c/api-tokens/users{q}", s.gw.url),
        ]);
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("method override"), "{}", r.body);
        assert!(!r.body.to_lowercase().contains("erin"), "{}", r.body);
    }
    // Approved, the identical request runs, and the target gets the value.
    assert!(s.decide(&s.dave, "approve", &id, None).status.success());
    let r = del();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.hook.last().path_and_query,
        "/users?email=erin%40example.com"
    );
    assert_eq!(s.hook.last().body, r#"{"email":"erin@example.com"}"#);
}

#[test]
fn just_in_time_access_ends_while_the_session_is_open() {
    let s = setup();
    // The caller asks for 4 s (the rule allows up to an hour).
    let bg = s.psql_bg_with(
        "jit",
        "SELECT 'first';\nSELECT pg_sleep(5);\nSELECT 'after the grant';\n",
        "-c portcullis.session=4s",
    );
    let r = s.pending("session on jit for 4s");
    let id = r["id"].as_str().unwrap().to_string();
    assert!(s.decide(&s.bob, "approve", &id, None).status.success());
    let t = text(&bg.join().unwrap());
    assert!(t.contains("first"), "{t}");
    assert!(t.contains("just-in-time access"), "{t}");
    // The session itself ends when the grant runs out (during the
    // pg_sleep), not only the next statement.
    assert!(t.contains("the session is closed"), "{t}");
    assert!(!t.contains("after the grant\n"), "{t}");

    // More than the rule allows is cut to its maximum, and the caller is
    // told; a duration that is not one is refused at startup.
    let bg = s.psql_bg_with("jit", "SELECT 'granted';\n", "-c portcullis.session=2h");
    let r = s.pending("session on jit for 3600s");
    let id = r["id"].as_str().unwrap().to_string();
    assert!(s.decide(&s.bob, "deny", &id, None).status.success());
    let t = text(&bg.join().unwrap());
    assert!(
        t.contains("asked for 7200s") && t.contains("at most 3600s"),
        "{t}"
    );
    let t = text(
        &s.psql_bg_with("jit", "SELECT 1;\n", "-c portcullis.session=soon")
            .join()
            .unwrap(),
    );
    assert!(
        t.contains("portcullis.session") && t.contains("not a duration"),
        "{t}"
    );

    // HTTP asks with a header, which the target never sees.
    let ask = |value: &str| {
        curl(&[
            "--cacert",
            &s.ca,
            "-H",
            &format!("Authorization: Bearer {}", s.token),
            "-H",
            &format!("Portcullis-Session: {value}"),
            &format!("{}/c/api-jit/jit-probe", s.gw.url),
        ])
    };
    let r = ask("10m");
    assert_eq!(r.status, 403, "{}", r.body);
    let review = r.json()["review"].as_str().unwrap().to_string();
    let shown = s.reviews(&s.bob, &["show", &review]);
    assert!(
        text(&shown).contains("session on api-jit for 600s"),
        "{}",
        text(&shown)
    );
    assert!(s.decide(&s.bob, "approve", &review, None).status.success());
    assert_eq!(ask("10m").status, 200);
    let bad = ask("forever");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["error"], "bad_request");
    let seen = s.hook.seen.lock().unwrap();
    let probes: Vec<_> = seen
        .iter()
        .filter(|x| x.path_and_query == "/jit-probe")
        .collect();
    assert_eq!(probes.len(), 1);
    assert!(probes[0].header("portcullis-session").is_none());
}

#[test]
fn mcp_tool_calls_are_held_the_same_way() {
    let s = setup();
    common::idp::ensure_packages();
    let call_tool = |tool: &str, args: &str| -> Value {
        let out = Command::new("node")
            .arg(common::idp::harness_dir().join("mcp-client.mjs"))
            .arg(format!("{}/mcp", s.gw.url))
            .arg(&s.token)
            .args(["call", tool, args])
            .env("NODE_EXTRA_CA_CERTS", &s.ca)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null)
    };
    let call = |args: &str| call_tool("sql_query", args);
    let args = r#"{"connection": "quick", "sql": "DELETE FROM appr_t WHERE id = 6"}"#;
    let r = call(args);
    assert_eq!(r["isError"], true, "{r}");
    assert!(r.to_string().contains("needs approval"), "{r}");
    let review = s.pending("WHERE id = 6");
    let id = review["id"].as_str().unwrap();
    assert!(s.decide(&s.bob, "approve", id, None).status.success());
    let r = call(args);
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(rows_with(6), "0");
    // Reads are not held.
    let r = call(r#"{"connection": "quick", "sql": "SELECT count(*) FROM appr_t"}"#);
    assert_eq!(r["isError"], false, "{r}");
    // Found in review: http_request skipped the proxy's override rule, so
    // a POST the target reads as a DELETE ran unheld. Refused where the
    // rule holds methods; held as the DELETE where the target reads
    // overrides.
    for args in [
        r#"{"connection": "api", "method": "POST", "path": "/items/9", "query": {"_method": "DELETE"}}"#,
        r#"{"connection": "api", "method": "POST", "path": "/items/9", "body": {"_method": "DELETE"}}"#,
    ] {
        let r = call_tool("http_request", args);
        assert_eq!(r["isError"], true, "{r}");
        assert!(r.to_string().contains("method overrides"), "{r}");
    }
    let r = call_tool(
        "http_request",
        r#"{"connection": "api-overrides", "method": "POST", "path": "/items/9", "query": {"_method": "DELETE"}}"#,
    );
    assert!(r.to_string().contains("needs approval"), "{r}");
    let r = call_tool(
        "http_request",
        r#"{"connection": "api", "method": "POST", "path": "/items/9"}"#,
    );
    assert_eq!(r["isError"], false, "{r}");
}

/// The extended protocol (tokio-postgres): a statement prepared once is
/// held at each Bind with its parameters, so an approval covers those
/// values only; the private name it lives under cannot be run around the
/// gate.
#[test]
fn bound_parameters_are_part_of_the_approved_action() {
    let s = setup();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            (*client_tls(std::path::Path::new(&s.ca), &[])).clone(),
        );
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("localhost")
            .port(s.gw.pg_port.unwrap())
            .dbname("quick")
            .user("agent")
            .password(&s.token)
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let (client, conn) = cfg.connect(tls).await.unwrap();
        tokio::spawn(conn);
        let not_decided = |e: tokio_postgres::Error| {
            let db = e.as_db_error().expect("a database error").clone();
            assert_eq!(db.code().code(), "57014", "{}", db.message());
            assert!(db.message().contains("not decided"), "{}", db.message());
            db.message().to_string()
        };

        // Preparing waits for no one: nothing runs yet.
        let stmt = client
            .prepare("DELETE FROM appr_t WHERE id = $1")
            .await
            .unwrap();
        // Bound to 11 (int4, sent binary), it waits 1 s and is not decided.
        not_decided(client.execute(&stmt, &[&11i32]).await.unwrap_err());
        let r = s.pending("-- parameters: $1 = '\\x0000000b' (binary)");
        let id = r["id"].as_str().unwrap().to_string();
        assert!(
            r["action"]
                .as_str()
                .unwrap()
                .starts_with("DELETE FROM appr_t WHERE id = $1"),
            "{r}"
        );
        assert!(s.decide(&s.bob, "approve", &id, None).status.success());

        // The same statement bound to 12 is another action.
        let m = not_decided(client.execute(&stmt, &[&12i32]).await.unwrap_err());
        assert!(!m.contains(&id), "{m}");
        assert_eq!(rows_with(12), "1");
        // Bound to 11 it runs, once.
        assert_eq!(client.execute(&stmt, &[&11i32]).await.unwrap(), 1);
        assert_eq!(rows_with(11), "0");
        not_decided(client.execute(&stmt, &[&11i32]).await.unwrap_err());

        // The target knows the statement only by the gateway's name; a
        // caller that reads it there and runs it with EXECUTE is held too.
        let names = client
            .query("SELECT name FROM pg_prepared_statements", &[])
            .await
            .unwrap();
        let private: String = names
            .iter()
            .map(|r| r.get::<_, String>(0))
            .find(|n| n.starts_with("portcullis_held_"))
            .expect("the held statement under its private name");
        let e = client
            .simple_query(&format!("EXECUTE {private}(13)"))
            .await
            .unwrap_err();
        let db = e.as_db_error().expect("a database error").clone();
        assert_eq!(db.code().code(), "42501", "{}", db.message());
        assert!(db.message().contains("gateway's own"), "{}", db.message());
        assert_eq!(rows_with(13), "1");
        // The session is still usable.
        let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);

        // Found in review: a DELETE prepared in SQL, approved once as a
        // PREPARE, ran again and again through protocol Binds with new
        // parameters. A Bind of a name the gate did not see parsed is
        // held as unknown, its parameters part of the action.
        let ca = std::path::Path::new(&s.ca);
        let mut w = common::wire::Wire::login(s.gw.pg_port.unwrap(), ca, "quick", &s.token).await;
        let prepare = "PREPARE sqlp(int) AS DELETE FROM appr_t WHERE id = $1";
        let held = w.ask(prepare).await;
        assert!(
            common::wire::error_of(&held).contains("not decided"),
            "{held:?}"
        );
        let r = s.pending("PREPARE sqlp");
        let id = r["id"].as_str().unwrap().to_string();
        assert!(s.decide(&s.bob, "approve", &id, None).status.success());
        let made = w.ask(prepare).await;
        assert!(made.iter().all(|(t, _)| *t != b'E'), "{made:?}");
        let bind = [&b"\0sqlp\0\0\0\0\x01\0\0\0\x0214\0\0"[..]].concat();
        w.send(b'B', &bind).await;
        w.execute().await;
        w.sync().await;
        let bound = w.until(b'Z').await;
        assert!(
            common::wire::error_of(&bound).contains("not decided"),
            "{bound:?}"
        );
        let r = s.pending("sqlp");
        assert!(r["action"].as_str().unwrap().contains("'14'"), "{r}");
        assert_eq!(rows_with(14), "1");
        // A Parse of the same name, which the target refuses (the name
        // is taken), does not make the SQL one a statement the gate read
        // (review: it was marked as parsed at Parse, and the DELETE ran
        // with any parameters).
        w.parse("sqlp", "SELECT 1").await;
        w.sync().await;
        let refused = w.until(b'Z').await;
        let _ = refused;
        w.send(b'B', &bind).await;
        w.execute().await;
        w.sync().await;
        let bound = w.until(b'Z').await;
        let ran = bound
            .iter()
            .any(|(t, b)| *t == b'C' && b.starts_with(b"DELETE"));
        assert!(!ran, "{bound:?}");
        assert_eq!(rows_with(14), "1");
        w.terminate().await;
    });
}

/// The tables the preview tests change; made once per run. `prev_view`
/// and `prev_dom`'s check run nothing: a view or a domain's CHECK over a
/// volatile built-in (they were over `nextval`) now makes every statement
/// on the database unproven, held as `unknown` and never previewed
/// (`sql_guard.rs`). The check's function is the connection role's own,
/// which a preview does not trust.
fn preview_tables() -> &'static PgCluster {
    let pg = PgCluster::shared();
    static TABLES: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        pg.psql_direct(
            "CREATE TABLE prev_orders (id int PRIMARY KEY, email text, old boolean, qty int);
             CREATE TABLE prev_lines (id int PRIMARY KEY,
                 order_id int REFERENCES prev_orders ON DELETE CASCADE);
             INSERT INTO prev_orders
                 SELECT g, 'buyer' || g || '@example.com', g <= 4, g FROM generate_series(1, 10) g;
             INSERT INTO prev_lines SELECT g, (g % 4) + 1 FROM generate_series(1, 6) g;
             CREATE TABLE prev_race (id int PRIMARY KEY, old boolean);
             INSERT INTO prev_race SELECT g, g <= 4 FROM generate_series(1, 8) g;
             CREATE TABLE prev_plain (id int PRIMARY KEY, qty int);
             INSERT INTO prev_plain SELECT g, g FROM generate_series(1, 5) g;
             CREATE TABLE prev_people (id int PRIMARY KEY, name text, secret text);
             INSERT INTO prev_people VALUES (1, 'ann', 'ZQX-SECRET-0001'), (2, 'bo', 'ZQX-SECRET-0002');
             CREATE SEQUENCE prev_s1; CREATE SEQUENCE prev_s2; CREATE SEQUENCE prev_s3; CREATE SEQUENCE prev_s4;
             CREATE TABLE prev_def (id int PRIMARY KEY, n bigint DEFAULT nextval('prev_s1'::text));
             CREATE FUNCTION prev_positive(i int) RETURNS bool IMMUTABLE LANGUAGE sql AS 'SELECT i > 0';
             CREATE DOMAIN prev_dom AS int CHECK (prev_positive(VALUE));
             CREATE TABLE prev_domt (id int PRIMARY KEY, v prev_dom);
             CREATE VIEW prev_view AS SELECT n FROM (VALUES (3)) v(n);
             CREATE FUNCTION prev_lies(int) RETURNS int LANGUAGE plpgsql IMMUTABLE
                 AS $$BEGIN PERFORM nextval('prev_s4'); RETURN $1; END$$;
             CREATE TABLE prev_bound_race (id int PRIMARY KEY, old boolean);
             INSERT INTO prev_bound_race SELECT g, g <= 4 FROM generate_series(1, 8) g;
             CREATE TABLE prev_bound (id int PRIMARY KEY, qty int);
             INSERT INTO prev_bound SELECT g, g FROM generate_series(1, 6) g;
             CREATE TABLE prev_items (id int PRIMARY KEY, qty int);
             INSERT INTO prev_items SELECT g, g FROM generate_series(1, 10) g;
             CREATE TABLE prev_trig (id int PRIMARY KEY, x int);
             INSERT INTO prev_trig VALUES (1, 1);
             CREATE FUNCTION prev_note() RETURNS trigger LANGUAGE plpgsql
                 AS $$BEGIN PERFORM pg_notify('prev', 'changed'); RETURN NEW; END$$;
             CREATE TRIGGER prev_t BEFORE UPDATE ON prev_trig
                 FOR EACH ROW EXECUTE FUNCTION prev_note();
             CREATE TABLE prev_serial (id serial PRIMARY KEY, v text);
             CREATE FUNCTION prev_side() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';",
        );
    });
    pg
}

/// Tables, a sequence and the locks on them: what a preview must leave
/// exactly as it found it.
fn fingerprint(pg: &PgCluster, tables: &[&str]) -> String {
    let mut parts: Vec<String> = tables
        .iter()
        .map(|t| format!("SELECT string_agg(t::text, ',' ORDER BY t.id) x FROM {t} t"))
        .collect();
    parts.push("SELECT last_value || '/' || is_called FROM prev_serial_id_seq".into());
    parts.push(format!(
        "SELECT count(*)::text FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
         WHERE c.relname IN ('{}')",
        tables.join("', '")
    ));
    pg.psql_direct(&format!(
        "SELECT md5(string_agg(coalesce(x, ''), '|')) FROM ({}) f",
        parts.join(" UNION ALL ")
    ))
}

fn table_change<'a>(preview: &'a Value, table: &str) -> &'a Value {
    preview["tables"]
        .as_array()
        .and_then(|t| t.iter().find(|c| c["table"] == table))
        .unwrap_or_else(|| panic!("no {table} in {preview}"))
}

#[test]
fn a_held_delete_shows_its_preview_and_is_held_again_when_the_data_changes() {
    let s = setup();
    let pg = preview_tables();
    let before = fingerprint(pg, &["prev_orders", "prev_lines"]);
    let bg = s.psql_bg("previewed", "DELETE FROM prev_orders WHERE old;\n");
    let r = s.pending("FROM prev_orders WHERE old");
    let p = &r["preview"];
    assert_eq!(p["status"], "counted", "{r}");
    // PostgreSQL's own counts, the cascade included.
    assert_eq!(table_change(p, "public.prev_orders")["deleted"], 4, "{p}");
    assert_eq!(table_change(p, "public.prev_lines")["deleted"], 6, "{p}");
    // The sample: the four rows as they were, masked by a rule that
    // applies only to reviewers (the agent itself reads them unmasked).
    let sample = &p["sample"];
    assert_eq!(sample["table"], "prev_orders", "{sample}");
    assert_eq!(
        sample["columns"],
        serde_json::json!(["id", "email", "old", "qty"])
    );
    let rows = sample["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{sample}");
    assert!(
        rows.iter()
            .all(|r| r["after"].is_null() && r["before"][2] == "t")
    );
    assert!(
        !sample.to_string().contains("@example.com"),
        "unmasked: {sample}"
    );
    let agent_reads = s.psql("previewed", "SELECT email FROM prev_orders WHERE id = 1;\n");
    assert!(
        text(&agent_reads).contains("buyer1@example.com"),
        "{}",
        text(&agent_reads)
    );
    // The preview left no trace: rows, cascade, sequence, locks.
    assert_eq!(
        fingerprint(pg, &["prev_orders", "prev_lines"]),
        before,
        "the preview changed the database"
    );
    // `reviews show` prints it, and the webhook carried it (masked).
    let shown = s.reviews(&s.bob, &["show", r["id"].as_str().unwrap()]);
    assert!(text(&shown).contains("\"deleted\": 4"), "{}", text(&shown));
    let deadline = Instant::now() + Duration::from_secs(10);
    let hook = loop {
        let seen = s.hook.seen.lock().unwrap().clone();
        if let Some(h) = seen
            .into_iter()
            .find(|x| x.body.contains(r["id"].as_str().unwrap()))
        {
            break h;
        }
        assert!(Instant::now() < deadline, "no webhook call");
        std::thread::sleep(Duration::from_millis(50));
    };
    let body: Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(body["review"]["preview"], *p);
    assert!(!hook.body.contains("@example.com"), "{}", hook.body);

    // Someone else adds a matching row while the review waits: what was
    // approved (4 rows) is not what would run (5), so it is held again.
    pg.psql_direct("INSERT INTO prev_orders VALUES (11, 'late@example.com', true, 11)");
    let first = r["id"].as_str().unwrap().to_string();
    let out = s.decide(&s.bob, "approve", &first, None);
    assert!(out.status.success(), "{}", text(&out));
    let again = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = s.pending("FROM prev_orders WHERE old");
            if r["id"] != first.as_str() {
                break r;
            }
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(
        table_change(&again["preview"], "public.prev_orders")["deleted"],
        5
    );
    assert_eq!(rows_left("prev_orders WHERE old"), "5", "nothing ran yet");
    let out = s.decide(&s.bob, "approve", again["id"].as_str().unwrap(), None);
    assert!(out.status.success(), "{}", text(&out));
    let out = bg.join().unwrap();
    let said = text(&out);
    assert!(said.contains("DELETE 5"), "{said}");
    assert!(said.contains("held again with a new preview"), "{said}");
    assert!(said.contains("5 now"), "{said}");
    assert_eq!(rows_left("prev_orders WHERE old"), "0");
}

fn rows_left(from_where: &str) -> String {
    PgCluster::shared().psql_direct(&format!("SELECT count(*) FROM {from_where}"))
}

#[test]
fn what_cannot_be_previewed_says_why_and_is_not_run() {
    let s = setup();
    let pg = preview_tables();
    let mine = ["prev_items", "prev_trig", "prev_serial"];
    let before = fingerprint(pg, &mine);
    for (sql, needle, why) in [
        (
            "UPDATE prev_trig SET x = 2;",
            "prev_trig SET x = 2",
            "table prev_trig has trigger prev_t",
        ),
        (
            "INSERT INTO prev_serial (v) VALUES ('a');",
            "INSERT INTO prev_serial",
            "the default of column id of prev_serial calls nextval",
        ),
        (
            "DELETE FROM prev_items WHERE id = prev_side();",
            "id = prev_side()",
            "not proven free of side effects",
        ),
        (
            "WITH x AS (DELETE FROM prev_items RETURNING id) DELETE FROM prev_trig WHERE id IN (SELECT id FROM x);",
            "WITH x AS",
            "more than one place",
        ),
    ] {
        let bg = s.psql_bg("previewed", &format!("{sql}\n"));
        let r = s.pending(needle);
        assert_eq!(r["preview"]["status"], "not_previewed", "{sql}: {r}");
        let reason = r["preview"]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{sql}: {reason}");
        let out = s.decide(&s.bob, "deny", r["id"].as_str().unwrap(), Some("test"));
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&bg.join().unwrap()).contains("denied"));
    }
    assert_eq!(
        fingerprint(pg, &mine),
        before,
        "a statement that was not previewed ran"
    );

    // An UPDATE shows each sampled row before and after.
    let bg = s.psql_bg(
        "previewed",
        "UPDATE prev_items SET qty = qty + 100 WHERE id IN (9, 10);\n",
    );
    let r = s.pending("qty = qty + 100");
    let p = &r["preview"];
    assert_eq!(table_change(p, "public.prev_items")["updated"], 2, "{p}");
    let rows = p["sample"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{p}");
    for row in rows {
        let (b, a) = (&row["before"], &row["after"]);
        assert_eq!(b[0], a[0], "paired by key: {p}");
        let (qb, qa): (i64, i64) = (
            b[1].as_str().unwrap().parse().unwrap(),
            a[1].as_str().unwrap().parse().unwrap(),
        );
        assert_eq!(qa, qb + 100, "{p}");
    }
    let out = s.decide(&s.bob, "deny", r["id"].as_str().unwrap(), None);
    assert!(out.status.success());
    bg.join().unwrap();
    assert_eq!(fingerprint(pg, &mine), before);
}

#[test]
fn rows_that_change_after_the_last_preview_roll_the_approved_statement_back() {
    let s = setup();
    let pg = preview_tables();
    let bg = s.psql_bg("previewed", "DELETE FROM prev_race WHERE old;\n");
    let r = s.pending("FROM prev_race WHERE old");
    assert_eq!(
        table_change(&r["preview"], "public.prev_race")["deleted"],
        4,
        "{r}"
    );
    // Another session changes one of the rows and holds its lock past
    // the gateway's last preview (which times out on it, so counts
    // nothing): the statement itself then waits, and deletes 3 rows.
    let locker = std::thread::spawn(|| {
        PgCluster::shared().psql_direct(
            "BEGIN; UPDATE prev_race SET old = false WHERE id = 1; SELECT pg_sleep(3); COMMIT;",
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql_direct(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%SET old = false WHERE id = 1%' AND wait_event = 'PgSleep'",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "the locker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = s.decide(&s.bob, "approve", r["id"].as_str().unwrap(), None);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&bg.join().unwrap());
    locker.join().unwrap();
    assert!(
        said.contains("would have changed other rows than its preview")
            && said.contains("rolled back"),
        "{said}"
    );
    assert!(
        !said.contains("DELETE 3"),
        "the count of a rolled-back statement was shown: {said}"
    );
    // Nothing of it stayed: the three rows it reached are still there.
    assert_eq!(rows_left("prev_race WHERE old"), "3");
    // And the session goes on: the same statement, sent again, is held
    // again on the data as it is now.
    let bg = s.psql_bg("previewed", "DELETE FROM prev_race WHERE old;\n");
    let again = s.pending("FROM prev_race WHERE old");
    assert_eq!(
        table_change(&again["preview"], "public.prev_race")["deleted"],
        3
    );
    let out = s.decide(&s.bob, "approve", again["id"].as_str().unwrap(), None);
    assert!(out.status.success());
    let said = text(&bg.join().unwrap());
    assert!(said.contains("DELETE 3"), "{said}");
    assert_eq!(rows_left("prev_race WHERE old"), "0");
}

#[test]
fn a_statement_bound_through_the_extended_protocol_is_previewed_with_its_parameters() {
    let s = setup();
    let pg = preview_tables();
    let before = fingerprint(pg, &["prev_bound"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = std::sync::Arc::new(driver(&s, "previewed").await);
        // Parameters sent binary, with the types the driver named.
        let stmt = client
            .prepare("UPDATE prev_bound SET qty = qty + $2 WHERE id <= $1")
            .await
            .unwrap();
        let run = {
            let (client, stmt) = (client.clone(), stmt.clone());
            tokio::spawn(async move { client.execute(&stmt, &[&3i32, &1000i32]).await })
        };
        let pending = tokio::task::block_in_place(|| s.pending("SET qty = qty + $2"));
        let p = &pending["preview"];
        assert_eq!(p["status"], "counted", "{pending}");
        assert_eq!(table_change(p, "public.prev_bound")["updated"], 3, "{p}");
        let rows = p["sample"]["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3, "{p}");
        for row in rows {
            let q = |v: &Value| v[1].as_str().unwrap().parse::<i64>().unwrap();
            assert_eq!(q(&row["after"]), q(&row["before"]) + 1000, "{p}");
        }
        assert_eq!(fingerprint(pg, &["prev_bound"]), before);
        let id = pending["id"].as_str().unwrap();
        assert!(s.decide(&s.bob, "deny", id, None).status.success());
        let e = run.await.unwrap().unwrap_err();
        let db = e.as_db_error().expect("a database error");
        assert!(db.message().contains("denied"), "{}", db.message());
    });
    assert_eq!(fingerprint(pg, &["prev_bound"]), before);
}

/// A tokio-postgres client (extended protocol, binary parameters) on
/// connection `db` as the agent.
async fn driver(s: &Setup, db: &str) -> tokio_postgres::Client {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
        (*client_tls(std::path::Path::new(&s.ca), &[])).clone(),
    );
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("localhost")
        .port(s.gw.pg_port.unwrap())
        .dbname(db)
        .user("agent")
        .password(&s.token)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, conn) = cfg.connect(tls).await.unwrap();
    tokio::spawn(conn);
    client
}

#[test]
fn an_approved_bound_statement_runs_checked_in_its_own_transaction() {
    let s = setup();
    let pg = preview_tables();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = std::sync::Arc::new(driver(&s, "previewed").await);
        let stmt = client
            .prepare("DELETE FROM prev_bound_race WHERE old = $1")
            .await
            .unwrap();
        let run = |client: std::sync::Arc<tokio_postgres::Client>, stmt: tokio_postgres::Statement| {
            tokio::spawn(async move { client.execute(&stmt, &[&true]).await })
        };
        let first = run(client.clone(), stmt.clone());
        let r = tokio::task::block_in_place(|| s.pending("FROM prev_bound_race WHERE old"));
        assert_eq!(table_change(&r["preview"], "public.prev_bound_race")["deleted"], 4, "{r}");
        // A row changes under it after the gateway's last preview (which
        // times out on the lock): the run deletes 3, and is rolled back.
        let locker = std::thread::spawn(|| {
            PgCluster::shared().psql_direct(
                "BEGIN; UPDATE prev_bound_race SET old = false WHERE id = 1; SELECT pg_sleep(3); COMMIT;",
            )
        });
        tokio::task::block_in_place(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while pg.psql_direct(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%prev_bound_race SET old = false%' AND wait_event = 'PgSleep'",
            ) != "1"
            {
                assert!(Instant::now() < deadline, "the locker did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(s.decide(&s.bob, "approve", r["id"].as_str().unwrap(), None).status.success());
        });
        let e = first.await.unwrap().unwrap_err();
        let db = e.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), "40001", "{}", db.message());
        assert!(db.message().contains(r["id"].as_str().unwrap()), "{}", db.message());
        tokio::task::block_in_place(|| locker.join().unwrap());
        assert_eq!(rows_left("prev_bound_race WHERE old"), "3");

        // Sent again on the same connection: held on the data as it is,
        // approved, it runs and reports its own count.
        let second = run(client.clone(), stmt.clone());
        let again = tokio::task::block_in_place(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let a = s.pending("FROM prev_bound_race WHERE old");
                if a["id"] != r["id"] {
                    break a;
                }
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        assert_eq!(table_change(&again["preview"], "public.prev_bound_race")["deleted"], 3);
        tokio::task::block_in_place(|| {
            assert!(s.decide(&s.bob, "approve", again["id"].as_str().unwrap(), None).status.success());
        });
        assert_eq!(second.await.unwrap().unwrap(), 3);
        // The session goes on.
        let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
    });
    assert_eq!(rows_left("prev_bound_race WHERE old"), "0");
}

/// Review: the preview ran with the gateway's own DateStyle, so a literal
/// the caller's session reads as 2 January showed the row of 1 February
/// (same count, other row). The preview runs with the caller's
/// `DateStyle`, `IntervalStyle` and `TimeZone` as the target reported them.
#[test]
fn a_preview_reads_literals_as_the_callers_session_does() {
    let s = setup();
    let pg = preview_tables();
    let table = format!("prev_days_{}", std::process::id());
    pg.psql_direct(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, day date, what text); \
         INSERT INTO {table} VALUES (1, '2025-02-01', 'first of february'), (2, '2025-01-02', 'second of january')"
    ));
    let bg = s.psql_bg(
        "previewed",
        &format!("SET DateStyle = 'ISO, DMY';\nDELETE FROM {table} WHERE day = '02/01/2025';\n"),
    );
    let r = s.pending(&format!("FROM {table} WHERE day"));
    let p = r["preview"].to_string();
    assert!(p.contains("second of january"), "{p}");
    assert!(!p.contains("first of february"), "{p}");
    assert!(
        s.decide(&s.bob, "deny", r["id"].as_str().unwrap(), None)
            .status
            .success()
    );
    bg.join().unwrap();
}

/// A preview connected with no startup parameters and did not follow the
/// caller's `SET search_path`: it counted the rows of `public.T` while
/// the run would delete those of another schema's `T`. It now connects
/// with the caller's startup parameters (pgjdbc sends `search_path` as
/// one), and a session that may have changed its `search_path` on a
/// target that does not report it is not previewed.
#[test]
fn a_preview_resolves_names_as_the_callers_session_does() {
    let s = setup();
    let pg = preview_tables();
    let pid = std::process::id();
    let (schema, table) = (format!("prev_shadow_{pid}"), format!("prev_sp_{pid}"));
    pg.psql_direct(&format!(
        "CREATE SCHEMA {schema}; \
         CREATE TABLE public.{table} (id int PRIMARY KEY); \
         INSERT INTO public.{table} SELECT generate_series(1, 5); \
         CREATE TABLE {schema}.{table} (id int PRIMARY KEY); \
         INSERT INTO {schema}.{table} SELECT generate_series(1, 3)"
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ca = std::path::Path::new(&s.ca);
        let mut w = common::wire::Wire::login_with(
            s.gw.pg_port.unwrap(),
            ca,
            "previewed",
            &s.token,
            &[("search_path", &schema)],
        )
        .await;
        w.query(&format!("DELETE FROM {table} WHERE id > 0")).await;
        let r = tokio::task::block_in_place(|| s.pending(&format!("FROM {table} WHERE id > 0")));
        assert_eq!(
            table_change(&r["preview"], &format!("{schema}.{table}"))["deleted"],
            3,
            "{r}"
        );
        tokio::task::block_in_place(|| {
            assert!(
                s.decide(&s.bob, "deny", r["id"].as_str().unwrap(), None)
                    .status
                    .success()
            );
        });
        let denied = w.until(b'E').await;
        assert!(!common::wire::error_of(&denied).is_empty(), "{denied:?}");
    });
    // Changed in the session: the preview says it cannot follow.
    let bg = s.psql_bg(
        "previewed",
        &format!("SET search_path = {schema};\nDELETE FROM {table} WHERE id >= 1;\n"),
    );
    let r = s.pending(&format!("FROM {table} WHERE id >= 1"));
    assert_eq!(r["preview"]["status"], "not_previewed", "{r}");
    let reason = r["preview"]["reason"].as_str().unwrap();
    assert!(reason.contains("search_path"), "{reason}");
    assert!(
        s.decide(&s.bob, "deny", r["id"].as_str().unwrap(), None)
            .status
            .success()
    );
    bg.join().unwrap();
    let left = pg.psql_direct(&format!(
        "SELECT (SELECT count(*) FROM public.{table}) || '/' || (SELECT count(*) FROM {schema}.{table})"
    ));
    assert_eq!(left.trim(), "5/3", "nothing was deleted");
}

/// Re-review: `SET extra_float_digits = 0` (a read, not held) made a
/// preview read `0.1 + 0.2` otherwise than the run, so it showed one row
/// and the run deleted another; `bytea_output` likewise. A session that
/// set what the target does not report, or a statement that sets it
/// itself, is not previewed; settings that cannot change a statement's
/// rows leave previews on.
#[test]
fn a_setting_the_preview_cannot_follow_stops_the_preview() {
    let s = setup();
    let pg = preview_tables();
    let table = format!("prev_efd_{}", std::process::id());
    pg.psql_direct(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY); INSERT INTO {table} SELECT generate_series(1, 4)"
    ));
    let decide_deny = |r: &Value| {
        assert!(
            s.decide(&s.bob, "deny", r["id"].as_str().unwrap(), None)
                .status
                .success()
        );
    };
    // A harmless setting: previewed.
    let bg = s.psql_bg(
        "previewed",
        &format!("SET statement_timeout = '5s';\nDELETE FROM {table} WHERE id = 4;\n"),
    );
    let r = s.pending(&format!("FROM {table} WHERE id = 4"));
    assert_eq!(
        table_change(&r["preview"], &format!("public.{table}"))["deleted"],
        1,
        "{r}"
    );
    decide_deny(&r);
    bg.join().unwrap();
    // Set earlier in the session.
    let bg = s.psql_bg(
        "previewed",
        &format!(
            "SET extra_float_digits = 0;\nDELETE FROM {table} WHERE id = 1 + (SELECT count(*) FROM (VALUES (0.1::float8 + 0.2::float8)) v(f) WHERE f::text = '0.3');\n"
        ),
    );
    let r = s.pending(&format!("FROM {table} WHERE id = 1 +"));
    assert_eq!(r["preview"]["status"], "not_previewed", "{r}");
    assert!(
        r["preview"]["reason"]
            .as_str()
            .unwrap()
            .contains("extra_float_digits"),
        "{r}"
    );
    decide_deny(&r);
    bg.join().unwrap();
    // Set by the statement's own text, before it runs.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ca = std::path::Path::new(&s.ca);
        let mut w = common::wire::Wire::login(s.gw.pg_port.unwrap(), ca, "previewed", &s.token).await;
        w.query(&format!(
            "SET bytea_output = 'escape'; DELETE FROM {table} WHERE id = length('\\x41'::bytea::text)"
        ))
        .await;
        let r = tokio::task::block_in_place(|| s.pending(&format!("FROM {table} WHERE id = length")));
        assert_eq!(r["preview"]["status"], "not_previewed", "{r}");
        assert!(r["preview"]["reason"].as_str().unwrap().contains("bytea_output"), "{r}");
        tokio::task::block_in_place(|| decide_deny(&r));
        let denied = w.until(b'E').await;
        assert!(!common::wire::error_of(&denied).is_empty(), "{denied:?}");
    });
    let left = pg.psql_direct(&format!("SELECT count(*) FROM {table}"));
    assert_eq!(left.trim(), "4", "nothing was deleted");
}

/// Review: an approved Bind into a named portal was run by a simple
/// query (`FETCH ALL FROM p1`) instead of its Execute, so the count check
/// that follows the Execute never ran, and the delete committed. Now
/// nothing but the portal's Execute (or a Describe, Flush or Close) may
/// come first: anything else ends the session, and nothing ran.
#[test]
fn an_approved_portal_runs_only_by_its_execute() {
    let s = setup();
    let pg = preview_tables();
    let table = format!("prev_fetch_{}", std::process::id());
    pg.psql_direct(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY); INSERT INTO {table} SELECT generate_series(1, 6)"
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ca = std::path::Path::new(&s.ca);
        let mut w =
            common::wire::Wire::login(s.gw.pg_port.unwrap(), ca, "previewed", &s.token).await;
        w.parse(
            "",
            &format!("DELETE FROM {table} WHERE id <= $1 RETURNING *"),
        )
        .await;
        // Bind into portal p1, one text parameter '3', then Flush.
        w.send(b'B', b"p1\0\0\0\0\0\x01\0\0\0\x013\0\0").await;
        w.flush().await;
        let r = tokio::task::block_in_place(|| s.pending(&format!("FROM {table} WHERE id")));
        assert_eq!(
            table_change(&r["preview"], &format!("public.{table}"))["deleted"],
            3,
            "{r}"
        );
        tokio::task::block_in_place(|| {
            assert!(
                s.decide(&s.bob, "approve", r["id"].as_str().unwrap(), None)
                    .status
                    .success()
            );
        });
        // (The BindComplete is held back with the gateway's own answers
        // until the Execute shows which are whose.)
        w.query("FETCH ALL FROM p1").await;
        let refused = w.until(b'E').await;
        // Refused before the portal rule looks: a simple query inside an
        // unfinished extended batch ends the session.
        assert!(
            common::wire::error_of(&refused).contains("08P01"),
            "{refused:?}"
        );
    });
    let left = pg.psql_direct(&format!("SELECT count(*) FROM {table}"));
    assert_eq!(left.trim(), "6", "nothing was deleted");
}

/// Each way a review found to make the preview leave a trace or show a
/// protected value, kept: a sequence behind a text cast, a domain's
/// check, a view the statement reads, a function labelled immutable by
/// the connection's own role, a failing preview's error text, a
/// protected value copied into another column.
#[test]
fn previews_the_review_broke_stay_fixed() {
    let s = setup();
    let pg = preview_tables();
    let sequences = || {
        pg.psql_direct(
            "SELECT string_agg(coalesce(last_value::text, 'never'), ',' ORDER BY sequencename) \
             FROM pg_sequences WHERE sequencename LIKE 'prev_s_'",
        )
    };
    let before = (
        sequences(),
        fingerprint(pg, &["prev_def", "prev_domt", "prev_plain", "prev_people"]),
    );
    for (sql, needle, why) in [
        (
            "INSERT INTO prev_def (id) VALUES (1);",
            "INSERT INTO prev_def",
            "nextval",
        ),
        (
            "INSERT INTO prev_domt (id, v) VALUES (1, 5);",
            "INSERT INTO prev_domt",
            "type prev_dom",
        ),
        (
            "INSERT INTO prev_def (id, n) SELECT n, 0 FROM prev_view;",
            "FROM prev_view",
            "it reads prev_view, which is not a table",
        ),
        (
            // A PL/pgSQL function is unproven whatever it declares.
            "DELETE FROM prev_plain WHERE id = prev_lies(-1);",
            "prev_lies(-1)",
            "not proven free of side effects",
        ),
        (
            "UPDATE prev_people SET id = secret::int WHERE id = 1;",
            "SET id = secret::int",
            "SQLSTATE 22P02",
        ),
        (
            "UPDATE prev_plain SET qty = qty WHERE pg_sleep(0.2) IS NOT NULL;",
            "pg_sleep(0.2)",
            "pg_sleep",
        ),
        (
            "DELETE FROM prev_plain WHERE current_setting('application_name') = 'psql';",
            "current_setting",
            "the caller's own session",
        ),
    ] {
        let bg = s.psql_bg("previewed", &format!("{sql}\n"));
        let r = s.pending(needle);
        assert_eq!(r["preview"]["status"], "not_previewed", "{sql}: {r}");
        let reason = r["preview"]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{sql}: {reason}");
        assert!(!r.to_string().contains("ZQX-SECRET"), "{r}");
        let out = s.decide(&s.bob, "deny", r["id"].as_str().unwrap(), None);
        assert!(out.status.success(), "{}", text(&out));
        bg.join().unwrap();
    }
    // A protected value copied into another column: counted, no rows.
    let bg = s.psql_bg(
        "previewed",
        "UPDATE prev_people SET name = secret WHERE id = 2;\n",
    );
    let r = s.pending("SET name = secret");
    assert_eq!(
        table_change(&r["preview"], "public.prev_people")["updated"],
        1,
        "{r}"
    );
    assert_eq!(r["preview"]["sample"]["rows"], serde_json::json!([]), "{r}");
    assert!(!r.to_string().contains("ZQX-SECRET"), "{r}");
    // The requester sees the counts, never the sample.
    let shown = s.reviews(&s.token, &["show", "--json", r["id"].as_str().unwrap()]);
    let mine: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(mine["preview"]["status"], "counted", "{mine}");
    assert!(mine["preview"].get("sample").is_none(), "{mine}");
    assert!(
        s.decide(&s.bob, "deny", r["id"].as_str().unwrap(), None)
            .status
            .success()
    );
    bg.join().unwrap();
    let after = (
        sequences(),
        fingerprint(pg, &["prev_def", "prev_domt", "prev_plain", "prev_people"]),
    );
    assert_eq!(after, before, "a preview left a trace");
    let audit = Command::new(BIN)
        .args([
            "--config",
            s.tmp.path().join("portcullis.toml").to_str().unwrap(),
        ])
        .args(["audit", "export"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&audit.stdout).contains("ZQX-SECRET"));
}
