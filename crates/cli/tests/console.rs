//! The web console in a real browser: Playwright driving Debian's
//! Chromium (headless) against the real binary, people signing in through
//! the suite's OpenID provider and through a one-time link, a psql
//! statement held on a guarded connection until an approver approves it
//! in the browser. Says SKIPPED where Chromium is not installed (`.ci/run`
//! installs it).

mod common;

use std::process::Command;

use common::idp::{self, Idp};
use common::pg::{PG_PASSWORD, PgCluster};
use common::*;
use portcullis_tls::CertificateAuthority;
use serde_json::Value;

struct Setup {
    tmp: tempfile::TempDir,
    gw: Proc,
    spki: String,
    tester: String,
    _idp: Idp,
}

fn setup() -> Setup {
    let pg = PgCluster::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let idp = Idp::start_for_gateway(dir, "alice", "dba", "gw-secret-not-a-canary");
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    write_leaf(&ca, dir, "server");
    std::fs::write(dir.join("pgpw"), PG_PASSWORD).unwrap();
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"

[postgres]
listen = "127.0.0.1:0"

{oauth}
[[connections]]
name = "guarded"
type = "postgres"
url = "postgres://postgres@localhost:{pgport}/postgres?sslrootcert={pgca}"
password = "file:pgpw"
approval = {{ mode = "statements", classes = ["write", "ddl", "admin", "unknown"], approvers = ["dba", "admins"], required = 1, wait = "120s" }}

[[grants]]
name = "testers"
groups = ["testers", "admins"]
connections = ["guarded"]

# Applies to no one here; the access page lists it.
[[masking.rules]]
name = "contractors-pii"
connections = ["guarded"]
groups = ["contractors"]
[[masking.rules.fields]]
columns = ["ssn"]
action = "drop"
"#,
        oauth = idp.oauth_config(),
        pgport = pg.port,
        pgca = pg.ca.display(),
    );
    let (gw, tester) = gateway_with_config(dir, &config);
    let spki = format!(
        "{},{}",
        spki(&dir.join("server.pem")),
        spki(&dir.join("idp/idp.pem"))
    );
    Setup {
        tmp,
        gw,
        spki,
        tester,
        _idp: idp,
    }
}

impl Setup {
    fn cfg(&self) -> std::path::PathBuf {
        self.tmp.path().join("portcullis.toml")
    }

    fn browser(&self, steps: &[&str]) -> Vec<Value> {
        let shots = std::env::var("PORTCULLIS_SCREENSHOTS").ok();
        let out = Command::new("node")
            .arg(idp::harness_dir().join("console.mjs"))
            .arg(&self.gw.url)
            .args(steps)
            .env("SPKI", &self.spki)
            .envs(shots.map(|s| ("SHOTS", s)))
            .output()
            .expect("node runs Playwright");
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        for l in &lines {
            assert!(
                l.get("error").is_none(),
                "{l}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        lines
    }

    fn psql(&self, token: &str) -> HeldPsql {
        let conninfo = format!(
            "host=localhost port={} dbname=guarded user=agent sslmode=verify-full sslrootcert={}",
            self.gw.pg_port.unwrap(),
            self.tmp.path().join("ca.pem").display()
        );
        HeldPsql::open(&conninfo, token)
    }

    fn link(&self, principal: &str, groups: &[&str]) -> String {
        let mut args = vec![
            "console",
            "link",
            "--principal",
            principal,
            "--gateway",
            &self.gw.url,
        ];
        for g in groups {
            args.extend(["--group", g]);
        }
        let out = cli_at(&self.cfg(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// The id of `principal`'s session (waiting for it to be admitted).
fn session_of(s: &Setup, principal: &str) -> String {
    listed(s, "principal", principal, "id").unwrap_or_else(|| panic!("no session of {principal}"))
}

/// The outcome `sessions list` gives session `id`, once it has one.
fn outcome_of(s: &Setup, id: &str) -> Option<String> {
    listed(s, "id", id, "outcome")
}

/// Field `want` of the first session `sessions list` shows with `key` =
/// `value`, once it has that field (waiting up to 10 s).
fn listed(s: &Setup, key: &str, value: &str, want: &str) -> Option<String> {
    for _ in 0..100 {
        let out = cli_at(&s.cfg(), &["sessions", "list", "--json"]);
        let found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v[key] == value)
            .and_then(|v| v[want].as_str().map(str::to_owned));
        if found.is_some() {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

fn step<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["step"] == name)
        .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
}

#[test]
fn an_approver_approves_a_held_statement_in_the_browser() {
    if chromium().is_none() {
        eprintln!("SKIPPED: Chromium is not installed (apt-get install chromium)");
        return;
    }
    let s = setup();
    let table = format!("console_t_{}", std::process::id());

    // An agent's DDL waits for a person.
    let mut held = s.psql(&s.tester);
    held.send(&format!("CREATE TABLE {table} (x int);"));
    held.send("select 'after';");
    let sid = session_of(&s, "agent:tester");

    // Alice (group dba) signs in through the provider and approves it;
    // the page updates from the server's events.
    let out = s.browser(&[
        "signin-oidc",
        "review",
        &table,
        "shot",
        "reviews",
        "approve",
        &table,
        "storage",
        "sessions",
        "axe",
        "sessions",
        "axe",
        "reviews",
        "replay",
        &sid,
        "fetch",
        "/api/v1/audit",
        "fetch",
        "/api/v1/access",
        "fetch",
        "/api/v1/access/explain?principal=agent:x&connection=guarded",
    ]);
    assert_eq!(step(&out, "signin-oidc")["principal"], "user:alice");
    assert_eq!(step(&out, "review")["enabled"], true);
    // Approved, and (the statement ran at once) already used.
    let state = step(&out, "approve")["state"].as_str().unwrap().to_owned();
    assert!(state == "approved" || state == "used", "{state}");
    let (stdout, stderr) = held.finish();
    assert!(stdout.contains("after"), "{stdout}{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    let verify = PgCluster::shared().psql_direct(&format!("SELECT count(*) FROM {table}"));
    assert!(verify.contains('0'), "{verify}");

    // Nothing a script could steal.
    let storage = step(&out, "storage");
    assert_eq!(storage["cookie"], "", "the session cookie is HttpOnly");
    assert_eq!(
        (storage["local"].as_u64(), storage["session"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(
        !storage["html"].as_str().unwrap().contains("pcl_"),
        "no token in the page"
    );
    assert!(
        !storage["url"].as_str().unwrap().contains("pcl_"),
        "no token in the URL"
    );
    // Alice is no admin: the tester's session is not hers to see.
    let rows = step(&out, "sessions")["rows"].as_array().unwrap().clone();
    assert!(
        rows.iter().all(|r| r["principal"] != "agent:tester"),
        "{rows:?}"
    );
    for l in out.iter().filter(|l| l["step"] == "axe") {
        assert_eq!(l["violations"], serde_json::json!([]), "{l}");
    }
    // Not hers to replay either: as absent as a missing one.
    assert!(
        step(&out, "replay")["failed"]
            .as_str()
            .unwrap()
            .contains("no such session")
    );
    for f in out.iter().filter(|l| l["step"] == "fetch") {
        assert_eq!(
            f["status"], 403,
            "the audit log and the policy are for admins: {f}"
        );
    }

    // An admin (signed in by a one-time link) sees every session; the link
    // works once.
    let link = s.link("user:admin", &["admins"]);
    let axe_replay = format!("replay/{sid}");
    let out = s.browser(&[
        "signin-link",
        &link,
        "sessions",
        "shot",
        "sessions",
        "audit-verify",
        "shot",
        "audit",
        "axe",
        "audit",
        "explain",
        "agent:tester",
        "testers",
        "guarded",
        "shot",
        "access",
        "axe",
        "access",
        "explain",
        "agent:stranger",
        "",
        "guarded",
        "replay",
        &sid,
        "shot",
        "replay",
        "axe",
        &axe_replay,
    ]);
    // The replay: what the caller saw, with the sealed digest.
    let replay = step(&out, "replay");
    assert_eq!(replay["current"], "ev-1", "a link names one event");
    assert!(
        replay["digest"]
            .as_str()
            .unwrap()
            .contains("matches the audit log"),
        "{replay}"
    );
    let types = replay["types"].to_string();
    assert!(
        types.contains("pg_query") && types.contains("session_end"),
        "{types}"
    );
    let text = replay["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("CREATE TABLE {table}")) && text.contains("after"),
        "{text}"
    );
    let audit = step(&out, "audit-verify");
    assert!(audit["rows"].as_u64().unwrap() > 3, "{audit}");
    assert!(
        audit["verdict"]
            .as_str()
            .unwrap()
            .starts_with("Chain intact"),
        "{audit}"
    );
    for l in out.iter().filter(|l| l["step"] == "axe") {
        assert_eq!(l["violations"], serde_json::json!([]), "{l}");
    }
    let explained: Vec<&Value> = out.iter().filter(|l| l["step"] == "explain").collect();
    assert!(
        explained[0]["connections"].to_string().contains("guarded"),
        "{explained:?}"
    );
    assert_eq!(explained[0]["answer"], "Allowed by grant testers.");
    // The connection's masking rules and how it is served.
    let row = explained[0]["connections"].to_string();
    assert!(
        row.contains("contractors-pii (contractors)") && row.contains("direct"),
        "{row}"
    );
    assert!(
        explained[1]["answer"]
            .as_str()
            .unwrap()
            .starts_with("Denied"),
        "{explained:?}"
    );
    assert_eq!(step(&out, "signin-link")["principal"], "user:admin (admin)");
    let rows = step(&out, "sessions")["rows"].as_array().unwrap().clone();
    assert!(
        rows.iter()
            .any(|r| r["principal"] == "agent:tester" && r["connection"] == "guarded"),
        "{rows:?}"
    );
    let again = curl(&["-k", "-o", "/dev/null", &link]);
    assert_eq!(again.status, 403, "a link works once");
}

/// Review: a page an admin visited sent the admin's browser to the
/// attacker's own one-time link, which silently swapped the admin's
/// console session for the attacker's. A link reached from a page now
/// shows whom it signs in and asks; its form is accepted from the
/// console's own origin only; only a client without fetch metadata
/// (curl, a script) is signed in at once.
#[test]
fn a_link_reached_from_another_page_asks_before_signing_in() {
    let s = setup();
    let link = s.link("user:mallory", &["dev"]);
    let t = link.split_once("?t=").unwrap().1.to_string();
    let form = format!("t={t}");
    let cookie_of = |r: &Reply| {
        r.body
            .to_ascii_lowercase()
            .contains("set-cookie: __host-portcullis-console=")
    };
    // From another site: a page naming the person, no session.
    let r = curl(&["-k", "-i", "-H", "Sec-Fetch-Site: cross-site", &link]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("user:mallory") && r.body.contains("<form"),
        "{}",
        r.body
    );
    assert!(!cookie_of(&r), "{}", r.body);
    // Its form posted from another site, by header or by origin: refused.
    let post = format!("{}/ui/link", s.gw.url);
    for h in ["Sec-Fetch-Site: cross-site", "Origin: https://evil.example"] {
        let r = curl(&["-k", "-i", "-H", h, "--data", &form, &post]);
        assert_eq!(r.status, 403, "{h}: {}", r.body);
        assert!(!cookie_of(&r), "{}", r.body);
    }
    // From the page itself: signed in, once.
    let origin = format!("Origin: {}", s.gw.url);
    let r = curl(&[
        "-k",
        "-i",
        "-H",
        "Sec-Fetch-Site: same-origin",
        "-H",
        &origin,
        "--data",
        &form,
        &post,
    ]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(cookie_of(&r), "{}", r.body);
    let again = curl(&["-k", "-o", "/dev/null", &link]);
    assert_eq!(again.status, 403, "a link works once");
    // Opened in a browser, even as its own navigation (a redirect from a
    // link the admin opened keeps `none`: re-review): it asks too.
    let link = s.link("user:mallory", &["dev"]);
    let r = curl(&["-k", "-i", "-H", "Sec-Fetch-Site: none", &link]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!cookie_of(&r), "{}", r.body);
    // A browser that sends no fetch metadata (an old one, a plain-HTTP
    // origin) is still a browser (code review).
    let r = curl(&["-k", "-i", "-A", "Mozilla/5.0 (X11; Linux x86_64)", &link]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!cookie_of(&r), "{}", r.body);
    // Its POST without fetch metadata needs our `Origin`.
    let r = curl(&[
        "-k",
        "-i",
        "--data",
        &format!("t={}", link.split_once("?t=").unwrap().1),
        &post,
    ]);
    assert_eq!(r.status, 403, "{}", r.body);
    // A client without fetch metadata (curl, a script): at once.
    let r = curl(&["-k", "-i", &link]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(cookie_of(&r), "{}", r.body);
}

#[test]
fn the_console_refuses_self_approval_forgery_and_a_spent_session() {
    if chromium().is_none() {
        eprintln!("SKIPPED: Chromium is not installed (apt-get install chromium)");
        return;
    }
    let s = setup();
    let table = format!("console_self_{}", std::process::id());
    // user:admin asks, with a token of their own; the console signs the
    // same person in.
    let out = cli_at(
        &s.cfg(),
        &[
            "token",
            "create",
            "--principal",
            "user:admin",
            "--group",
            "admins",
        ],
    );
    assert!(out.status.success());
    let admin_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut held = s.psql(&admin_token);
    // With a right-to-left override in a comment: the page must show the
    // statement as it runs, not as the override makes it read.
    held.send(&format!("CREATE TABLE {table} /* \u{202e} */ (x int);"));

    let link = s.link("user:admin", &["admins"]);
    let out = s.browser(&[
        "signin-link",
        &link,
        "review",
        &table,
        "post-without-csrf",
        &table,
        "post-with-csrf",
        &table,
        "signout",
        "me",
    ]);
    // The page explains, and the API refuses what the page would not send.
    let review = step(&out, "review");
    assert_eq!(review["enabled"], false);
    let text = review["text"].as_str().unwrap();
    assert!(text.contains("someone else must approve"));
    assert!(
        text.contains("⟨U+202E⟩") && !text.contains('\u{202e}'),
        "{text}"
    );
    let forged = step(&out, "post-without-csrf");
    assert_eq!(forged["status"], 403, "{forged}");
    assert!(forged["body"].as_str().unwrap().contains("csrf"));
    let own = step(&out, "post-with-csrf");
    assert_ne!(own["status"], 200, "{own}");
    assert!(own["body"].as_str().unwrap().contains("own"), "{own}");
    // Signing out revokes the session on the server.
    assert_eq!(step(&out, "signout")["status"], 401);
    assert_eq!(step(&out, "me")["status"], 401);
    drop(held);

    // The API without a browser: no cookie, no session.
    let ca = s.tmp.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let r = get(&s.gw.url, ca, None, "/api/v1/sessions");
    assert_eq!(r.status, 401);
    // An agent in an admin group is no console admin: it sees its own
    // sessions only, and no audit log.
    let out = cli_at(
        &s.cfg(),
        &[
            "token",
            "create",
            "--principal",
            "agent:ops",
            "--group",
            "admins",
        ],
    );
    let agent = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let me = get(&s.gw.url, ca, Some(&agent), "/api/v1/me").json();
    assert_eq!(me["admin"], false, "{me}");
    assert_eq!(
        get(&s.gw.url, ca, Some(&agent), "/api/v1/audit").status,
        403
    );
    let sessions = get(&s.gw.url, ca, Some(&agent), "/api/v1/sessions").json();
    assert!(
        sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["principal"] == "agent:ops")
    );
    // Review streams are bounded per principal.
    let streams: Vec<_> = (0..5)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-sS",
                    "-N",
                    "--max-time",
                    "8",
                    "--cacert",
                    ca,
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .args(["-H", &format!("Authorization: Bearer {agent}")])
                .arg(format!("{}/api/v1/reviews/events", s.gw.url))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<String> = streams
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned())
        .collect();
    assert!(codes.iter().any(|c| c == "429"), "{codes:?}");
    // Sign-out with a made-up session writes nothing.
    let fake = "pcl_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let csrf: String = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("portcullis-csrf:{fake}").as_bytes(),
    )
    .as_ref()
    .iter()
    .map(|b| format!("{b:02x}"))
    .collect();
    let r = curl(&[
        "--cacert",
        ca,
        "-X",
        "POST",
        "-H",
        &format!("cookie: __Host-portcullis-console={fake}"),
        "-H",
        &format!("x-portcullis-csrf: {csrf}"),
        &format!("{}/ui/logout", s.gw.url),
    ]);
    assert_eq!(r.status, 403, "{r:?}");
    let audit =
        String::from_utf8_lossy(&cli_at(&s.cfg(), &["audit", "export"]).stdout).into_owned();
    assert_eq!(
        audit.matches("console_signed_out").count(),
        1,
        "only the real sign-out"
    );
    // Answers of the API are not cached; sign-ins per address are bounded.
    let head = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert", ca])
        .args(["-H", &format!("Authorization: Bearer {agent}")])
        .arg(format!("{}/api/v1/me", s.gw.url))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(
        head.contains("cache-control: no-store") && head.contains("nosniff"),
        "{head}"
    );
    let codes: Vec<u16> = (0..62)
        .map(|_| {
            curl(&[
                "-o",
                "/dev/null",
                "--cacert",
                ca,
                &format!("{}/ui/login", s.gw.url),
            ])
            .status
        })
        .collect();
    assert_eq!(codes.last(), Some(&429), "{codes:?}");
    // Pages carry a strict policy: scripts from the gateway only.
    let head = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert", ca])
        .arg(format!("{}/ui/", s.gw.url))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"));
}

#[test]
fn tokens_are_minted_and_revoked_and_live_sessions_ended_in_the_browser() {
    if chromium().is_none() {
        eprintln!("SKIPPED: Chromium is not installed (apt-get install chromium)");
        return;
    }
    let s = setup();
    // The admin mints a token for an agent acting for them; psql uses it.
    let link = s.link("user:admin", &["admins"]);
    let out = s.browser(&["signin-link", &link, "mint-token", "claude", "tokens"]);
    let minted = step(&out, "mint-token");
    let secret = minted["secret"].as_str().expect("a secret shown once");
    assert!(secret.starts_with("pcl_"), "{minted}");
    assert!(
        minted["text"]
            .as_str()
            .unwrap()
            .contains("agent:claude@admin"),
        "{minted}"
    );
    let rows = step(&out, "tokens")["rows"].to_string();
    assert!(
        rows.contains("agent:claude@admin for user:admin") && rows.contains("console session"),
        "{rows}"
    );
    assert!(!rows.contains(secret), "the list never shows a secret");
    let mut agent = s.psql(secret);
    agent.send("select 'one';");
    let agent_sid = session_of(&s, "agent:claude@admin");

    // The tester's session, live; the admin ends it from the sessions page.
    let mut tester = s.psql(&s.tester);
    tester.send("select 'alive';");
    let tester_sid = session_of(&s, "agent:tester");

    // Bob (no admin) may not end it, nor see the admin's tokens.
    let bob = s.link("user:bob", &["dev"]);
    let out = s.browser(&["signin-link", &bob, "post-end", &tester_sid, "tokens"]);
    let refused = step(&out, "post-end");
    assert_eq!(refused["status"], 403, "{refused}");
    let rows = step(&out, "tokens")["rows"].to_string();
    assert!(
        !rows.contains("admin") && rows.contains("user:bob"),
        "{rows}"
    );

    let link = s.link("user:admin", &["admins"]);
    let out = s.browser(&[
        "signin-link",
        &link,
        "sessions",
        "person=admin",
        "end-session",
        &tester_sid,
        "revoke-token",
        "agent:claude@admin",
        "shot",
        "tokens",
        "axe",
        "tokens",
        "axe",
        "sessions",
    ]);
    for l in out.iter().filter(|l| l["step"] == "axe") {
        assert_eq!(l["violations"], serde_json::json!([]), "{l}");
    }
    assert_eq!(step(&out, "end-session")["note"], "ending…");
    // The person behind the agent: the admin's agent, not the tester.
    let rows = step(&out, "sessions")["rows"].to_string();
    assert!(
        rows.contains("agent:claude@admin") && !rows.contains("agent:tester"),
        "{rows}"
    );
    // Both sessions end within about a second of the store's word.
    std::thread::sleep(std::time::Duration::from_secs(3));
    tester.send("select 'too late';");
    agent.send("select 'two';");
    let (t_out, t_err) = tester.finish();
    assert!(
        t_out.contains("alive") && !t_out.contains("too late"),
        "{t_out}{t_err}"
    );
    assert!(t_err.contains("ended by user:admin"), "{t_err}");
    let (a_out, a_err) = agent.finish();
    assert!(
        a_out.contains("one") && !a_out.contains("two"),
        "{a_out}{a_err}"
    );
    assert_eq!(outcome_of(&s, &tester_sid).as_deref(), Some("access_ended"));
    assert_eq!(
        outcome_of(&s, &agent_sid).as_deref(),
        Some("credential_ended")
    );
    // The CLI ends one the same way; an ended one is refused.
    let out = cli_at(
        &s.cfg(),
        &[
            "token",
            "create",
            "--principal",
            "agent:cli-end",
            "--group",
            "testers",
        ],
    );
    let cli_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut third = s.psql(&cli_token);
    third.send("select 'still';");
    let third_sid = session_of(&s, "agent:cli-end");
    let out = cli_at(
        &s.cfg(),
        &["sessions", "end", &third_sid, "--reason", "maintenance"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    third.send("select 'gone';");
    let (o, e) = third.finish();
    assert!(o.contains("still") && !o.contains("gone"), "{o}{e}");
    assert!(e.contains("maintenance"), "{e}");
    let again = cli_at(&s.cfg(), &["sessions", "end", &tester_sid]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no live session"));

    // And the audit log says who asked.
    let audit = json_lines(&cli_at(&s.cfg(), &["audit", "export"]));
    assert!(
        audit
            .iter()
            .any(|e| e["event"]["action"] == "session_end_requested"
                && e["event"]["detail"]["session"] == tester_sid.as_str()
                && e["event"]["detail"]["by"] == "user:admin")
    );
    assert!(audit.iter().any(|e| e["event"]["action"] == "token_revoked"
        && e["event"]["detail"]["principal"] == "agent:claude@admin"));
}
