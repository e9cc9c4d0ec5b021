//! The outbound agent end to end: a real gateway and a real
//! `portcullis agent` process on loopback, psql and curl through the
//! agent, the agent killed and restarted, the gateway restarted, 100
//! sessions on one link with a stalled reader, an agent announcing what it
//! may not serve, and a revoked agent certificate.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::pg::{PG_PASSWORD, PgCluster};
use common::upstream::{self, TestUpstream};
use common::*;
use portcullis_tls::{CertificateAuthority, LeafKind};

const API_CANARY: &str = "canary-agent-held-api-key-4e91";

/// `[gateway] metrics_token` of these gateways.
const METRICS_TOKEN: &str = "metrics-canary-3f9a";

struct Setup {
    tmp: tempfile::TempDir,
    gw: Option<Proc>,
    agent: Option<std::process::Child>,
    ca: String,
    token: String,
    api: TestUpstream,
    agent_port: u16,
    gw_port: u16,
    pg_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Setup {
    fn gw_dir(&self) -> PathBuf {
        self.tmp.path().join("gw")
    }

    fn agent_dir(&self) -> PathBuf {
        self.tmp.path().join("agent")
    }

    fn start_gateway(&mut self) {
        let dir = self.gw_dir();
        let cfg = dir.join("portcullis.toml");
        self.gw = Some(Proc::spawn(
            &dir,
            &["--config", cfg.to_str().unwrap(), "gateway"],
            "gateway.log",
        ));
    }

    fn start_agent(&mut self, config: &str) {
        let dir = self.agent_dir();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["--config", dir.join(config).to_str().unwrap(), "agent"])
            .env("PORTCULLIS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.agent_dir().join("agent.log")).unwrap_or_default()
    }

    fn gw(&self) -> &Proc {
        self.gw.as_ref().unwrap()
    }

    /// Wait until curl through the agent answers 200 (the agent has
    /// (re)connected).
    fn wait_through(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = get(&self.gw().url, &self.ca, Some(&self.token), "/c/api/hello");
            if r.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent never became reachable: {} {}\nagent log:\n{}",
                r.status,
                r.body,
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `SELECT pg_sleep(20)` through the agent, in the background.
    fn long_statement(&self) -> std::thread::JoinHandle<std::process::Output> {
        let (pg_port, ca, token) = (self.pg_port, self.ca.clone(), self.token.clone());
        std::thread::spawn(move || psql_as(pg_port, &ca, &token, "SELECT pg_sleep(20)"))
    }

    fn psql(&self, sql: &str) -> std::process::Output {
        psql_as(self.pg_port, &self.ca, &self.token, sql)
    }
}

/// psql on the gateway's connection `db` with `token`.
fn psql_as(pg_port: u16, ca: &str, token: &str, sql: &str) -> std::process::Output {
    psql_on("db", pg_port, ca, token, sql)
}

/// psql on the gateway's connection `connection` with `token`.
fn psql_on(
    connection: &str,
    pg_port: u16,
    ca: &str,
    token: &str,
    sql: &str,
) -> std::process::Output {
    psql_command(connection, pg_port, ca, token, sql)
        .output()
        .unwrap()
}

/// The psql command [`psql_on`] runs, to spawn instead.
fn psql_command(connection: &str, pg_port: u16, ca: &str, token: &str, sql: &str) -> Command {
    let mut c = Command::new("psql");
    c.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGHOST", "localhost")
        .env("PGPORT", pg_port.to_string())
        .env("PGDATABASE", connection)
        .env("PGUSER", "agent")
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", ca)
        .env("PGCONNECT_TIMEOUT", "10");
    c
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// psql running `sql` on connection `db` through the gateway, its output
/// dropped (a caller to kill mid-statement).
fn quiet_psql(s: &Setup, sql: &str) -> std::process::Child {
    psql_command("db", s.pg_port, &s.ca, &s.token, sql)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn setup() -> Setup {
    setup_with("")
}

/// [`setup`] with `extra` at the end of the gateway's config.
fn setup_with(extra: &str) -> Setup {
    setup_full(extra, "")
}

/// [`setup_with`], and `pg_extra` in the gateway's `[postgres]`.
fn setup_full(extra: &str, pg_extra: &str) -> Setup {
    let pg = PgCluster::shared();
    let tmp = tempfile::tempdir().unwrap();
    let gw_dir = tmp.path().join("gw");
    let agent_dir = tmp.path().join("agent");
    std::fs::create_dir_all(&gw_dir).unwrap();
    std::fs::create_dir_all(&agent_dir).unwrap();
    let (ca, _) = CertificateAuthority::load_or_create(&gw_dir).unwrap();
    write_leaf(&ca, &gw_dir, "server");
    write_leaf(&ca, &agent_dir, "api");
    let api = upstream::start(&agent_dir.join("api.pem"), &agent_dir.join("api.key"));

    // The agent's side: certificate, the gateway's CA, and the secrets.
    ca.write_leaf(
        LeafKind::Client,
        &agent_dir.join("agent"),
        &["connector:dc1".into()],
        Duration::from_secs(86400),
    )
    .unwrap();
    std::fs::copy(ca.cert_path(), agent_dir.join("gateway-ca.pem")).unwrap();
    std::fs::write(agent_dir.join("api-key"), API_CANARY).unwrap();
    std::fs::write(agent_dir.join("pgpw"), PG_PASSWORD).unwrap();

    let (agent_port, gw_port, pg_port) = (free_port(), free_port(), free_port());
    let connections = format!(
        r#"
[[connections]]
name = "api"
type = "http"
url = "https://localhost:{api}"
ca_file = "gateway-ca.pem"
credential = {{ header = "x-api-key", secret = "file:api-key" }}

[[connections]]
name = "db"
type = "postgres"
url = "postgres://postgres@localhost:{pgport}/postgres?sslrootcert={pgca}"
password = "file:pgpw"

[[connections]]
name = "dbro"
type = "postgres"
url = "postgres://postgres@localhost:{pgport}/postgres?sslrootcert={pgca}"
password = "file:pgpw"
"#,
        api = api.port,
        pgport = pg.port,
        pgca = pg.ca.display(),
    );
    let agent_head = format!(
        r#"
[agent]
gateway = "localhost:{agent_port}"
ca_file = "gateway-ca.pem"
cert = "agent.pem"
key = "agent.key"
"#
    );
    std::fs::write(
        agent_dir.join("agent.toml"),
        format!("{agent_head}{connections}"),
    )
    .unwrap();
    // An agent that also announces a connection it is not assigned.
    std::fs::write(
        agent_dir.join("greedy.toml"),
        format!(
            "{agent_head}{connections}\n[[connections]]\nname = \"billing\"\ntype = \"http\"\nurl = \"https://localhost:1\"\n"
        ),
    )
    .unwrap();

    let gw_config = format!(
        r#"
[gateway]
listen = "127.0.0.1:{gw_port}"
cert = "server.pem"
key = "server.key"
admin_listen = "127.0.0.1:0"
metrics_token = "file:metrics-token"

[postgres]
listen = "127.0.0.1:{pg_port}"
{pg_extra}

[agent_listener]
listen = "127.0.0.1:{agent_port}"
ca_file = "ca.pem"
enrol_ca_key = "ca.key"

[[connections]]
name = "api"
type = "http"
agent = "dc1"
timeout = "5s"

[[connections]]
name = "db"
type = "postgres"
agent = "dc1"

# Read-only at the gateway only: the agent's own definition says nothing.
[[connections]]
name = "dbro"
type = "postgres"
agent = "dc1"
access = "read-only"

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["api", "db", "dbro"]
"#
    ) + extra;
    std::fs::write(gw_dir.join("metrics-token"), METRICS_TOKEN).unwrap();
    let (gw, token) = gateway_with_config(&gw_dir, &gw_config);
    let mut s = Setup {
        ca: gw_dir.join("ca.pem").to_str().unwrap().to_string(),
        tmp,
        gw: Some(gw),
        agent: None,
        token,
        api,
        agent_port,
        gw_port,
        pg_port,
    };
    s.start_agent("agent.toml");
    s.wait_through();
    s
}

#[test]
fn psql_and_curl_through_the_agent_with_credentials_only_there() {
    let s = setup();
    let r = get(&s.gw().url, &s.ca, Some(&s.token), "/c/api/hello?x=1");
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = s.api.last();
    assert_eq!(seen.header("x-api-key"), Some(API_CANARY));
    assert_eq!(seen.path_and_query, "/hello?x=1");
    assert!(seen.header("authorization").is_none());
    assert!(!r.body.contains(API_CANARY));
    // A target echoing the credential the agent added: scrubbed at the
    // agent, in the body and the headers (the gateway never knows it).
    let r = curl(&[
        "-i",
        "--cacert",
        &s.ca,
        "-H",
        &format!("authorization: Bearer {}", s.token),
        &format!("{}/c/api/echo", s.gw().url),
    ]);
    assert!(r.body.contains("x-api-key: ****"), "{}", r.body);
    assert!(!r.body.contains(API_CANARY), "{}", r.body);

    let out = s.psql("SELECT current_user, 40 + 2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres|42");

    // The gateway's read-only mode reaches the target through the agent:
    // the agent opens the server session read-only although its own
    // definition of the connection does not say so (defence in depth).
    let show = |connection: &str| {
        let o = psql_on(
            connection,
            s.pg_port,
            &s.ca,
            &s.token,
            "SHOW default_transaction_read_only",
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(show("dbro"), "on");
    assert_eq!(show("db"), "off");
    // Its role was checked through the agent: a superuser, logged (not
    // under strict_roles, so served).
    assert!(
        s.gw().logs().contains("is not least privilege"),
        "{}",
        s.gw().logs()
    );
    let o = psql_on(
        "dbro",
        s.pg_port,
        &s.ca,
        &s.token,
        "SELECT nextval('no_such_seq')",
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The gateway knows the agent and what it serves.
    let admin = format!(
        "https://127.0.0.1:{}",
        s.gw()
            .logs()
            .lines()
            .find(|l| l.contains("admin listener"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .unwrap()
    );
    let out = Command::new(BIN)
        .args(["agents", "list", "--json", "--admin", &admin, "--ca", &s.ca])
        .args(["--token", &s.token])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("\"agent\":\"dc1\""), "{listed}");
    assert!(listed.contains("\"name\":\"db\""), "{listed}");
    // Not where the agent is: that is for admins.
    assert!(!listed.contains("\"address\""), "{listed}");
    // /metrics names every connection: with `metrics_token` set, only the
    // scraper holding it reads them (a caller's own token is not enough).
    for bearer in [None, Some(s.token.as_str()), Some("metrics-canary-3f9b")] {
        let r = get(&admin, &s.ca, bearer, "/metrics");
        assert_eq!(r.status, 401, "{bearer:?}: {}", r.body);
        assert!(!r.body.contains("\"api\""), "{}", r.body);
    }
    let m = get(&admin, &s.ca, Some(METRICS_TOKEN), "/metrics");
    assert_eq!(m.status, 200, "{}", m.body);
    assert!(m.body.contains("portcullis_"), "{}", m.body);
    let list_as = |token: &str| {
        let out = Command::new(BIN)
            .args(["agents", "list", "--json", "--admin", &admin, "--ca", &s.ca])
            .args(["--token", token])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // So does the console's access page (what an admin reads there).
    let cfg = s.gw_dir().join("portcullis.toml");
    let out = cli_at(
        &cfg,
        &[
            "token",
            "create",
            "--principal",
            "user:root",
            "--group",
            "admins",
        ],
    );
    let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let listed = list_as(&root);
    assert!(listed.contains("\"address\":\"127.0.0.1:"), "{listed}");
    // A principal no grant reaches `db` with does not learn of the agent.
    let out = cli_at(&cfg, &["token", "create", "--principal", "agent:nobody"]);
    let nobody = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        list_as(&nobody),
        "",
        "an agent listed to a principal with no grant"
    );
    let url = format!("https://localhost:{}", s.gw_port);
    let access = get(&url, &s.ca, Some(&root), "/api/v1/access").json();
    let db = access["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "db")
        .unwrap();
    assert_eq!(db["agent"]["name"], "dc1", "{access}");
    assert_eq!(db["agent"]["linked"], true, "{access}");
    assert!(db["agent"]["heartbeat_age_s"].as_i64().unwrap() < 60);
    assert_eq!(access["agents"][0]["agent"], "dc1", "{access}");

    // Audit entries say which agent a session went through.
    let out = Command::new(BIN)
        .args([
            "--config",
            s.gw_dir().join("portcullis.toml").to_str().unwrap(),
        ])
        .args(["audit", "export"])
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(
        audit.lines().any(|l| l.contains("session_start")
            && l.contains("\"agent\":\"dc1\"")
            && l.contains("\"db\"")),
        "{audit}"
    );

    // Credentials exist only in the agent's folder.
    let gw_dir = s.gw_dir();
    for (path, bytes) in all_files(&gw_dir) {
        assert!(
            !contains(&bytes, API_CANARY),
            "API key in {}",
            path.display()
        );
        assert!(
            !contains(&bytes, PG_PASSWORD),
            "PG password in {}",
            path.display()
        );
    }
    assert!(!s.agent_log().contains(API_CANARY) && !s.agent_log().contains(PG_PASSWORD));
}

/// The agent keeps a target session for the next caller only when the
/// last one left it idle, and then reset: the same backend, nothing of the
/// last caller's left in it. A caller that leaves inside a transaction,
/// with an answer still in flight or in the middle of an unsynced
/// pipeline costs the agent that session instead.
#[test]
fn the_agent_hands_on_only_idle_reset_sessions() {
    let s = setup();
    let ca = std::path::PathBuf::from(&s.ca);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let login = || wire::Wire::login(s.pg_port, &ca, "db", &s.token);
    // The agent resets and keeps a session after the caller has gone.
    let settle = || std::thread::sleep(Duration::from_millis(500));
    rt.block_on(async {
        let mut a = login().await;
        let pid_a = a
            .value(
                "SET search_path TO pg_catalog; CREATE TEMP TABLE left_behind(x int); \
                 PREPARE p AS SELECT 1; SELECT pg_backend_pid()",
            )
            .await;
        a.terminate().await;
        settle();

        let mut b = login().await;
        assert_eq!(
            b.value("SELECT pg_backend_pid()").await,
            pid_a,
            "an idle session is kept; agent log:\n{}",
            s.agent_log()
        );
        assert_eq!(
            b.value("SELECT current_setting('search_path')").await,
            "\"$user\", public"
        );
        assert_eq!(
            b.value("SELECT count(*) FROM pg_prepared_statements").await,
            "0"
        );
        assert_eq!(
            b.value("SELECT to_regclass('pg_temp.left_behind') IS NULL")
                .await,
            "t"
        );
        b.terminate().await;
        settle();

        // Left inside a transaction: closed.
        let mut c = login().await;
        assert_eq!(c.value("BEGIN; SELECT pg_backend_pid()").await, pid_a);
        c.terminate().await;
        settle();
        let mut d = login().await;
        let pid_d = d.value("SELECT pg_backend_pid()").await;
        assert_ne!(pid_d, pid_a, "a session left in a transaction was kept");

        // Left with its answer still on the way: closed.
        d.query("SELECT pg_sleep(0.5), 'from d'").await;
        d.terminate().await;
        settle();
        settle();
        let mut e = login().await;
        let pid_e = e.value("SELECT pg_backend_pid()").await;
        assert_ne!(pid_e, pid_d, "a session with an answer in flight was kept");
        assert_eq!(e.value("SELECT 'from e'").await, "from e");

        // Left in the middle of an unsynced pipeline: closed.
        e.parse("", "SELECT 1").await;
        e.bind("").await;
        e.execute().await;
        e.terminate().await;
        settle();
        let mut f = login().await;
        let pid_f = f.value("SELECT pg_backend_pid()").await;
        assert_ne!(pid_f, pid_e, "a session in an unsynced pipeline was kept");
        f.terminate().await;
    });
}

/// Some session state outlives `DISCARD ALL` (here `setseed`: the next
/// `random()` is predictable to whoever set it; a `dblink` connection is
/// another). An idle session therefore goes back only to the principal
/// that left it, never to another caller with the same parameters.
#[test]
fn a_kept_session_goes_back_only_to_its_principal() {
    let s = setup();
    let ca = std::path::PathBuf::from(&s.ca);
    let out = cli_at(
        &s.gw_dir().join("portcullis.toml"),
        &[
            "token",
            "create",
            "--principal",
            "agent:other",
            "--group",
            "testers",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let settle = || std::thread::sleep(Duration::from_millis(500));
    rt.block_on(async {
        let mut a = wire::Wire::login(s.pg_port, &ca, "db", &s.token).await;
        let pid_a = a.value("SELECT pg_backend_pid()").await;
        a.value("SELECT setseed(0.42)").await;
        a.terminate().await;
        settle();

        let mut b = wire::Wire::login(s.pg_port, &ca, "db", &other).await;
        let pid_b = b.value("SELECT pg_backend_pid()").await;
        assert_ne!(pid_b, pid_a, "another principal got agent:tester's session");
        b.terminate().await;
        settle();

        // The principal that left it gets it back, seed and all.
        let mut a = wire::Wire::login(s.pg_port, &ca, "db", &s.token).await;
        assert_eq!(a.value("SELECT pg_backend_pid()").await, pid_a);
        a.terminate().await;
    });
}

#[test]
fn agent_killed_mid_session_then_back_and_gateway_restarted() {
    let mut s = setup();
    // A long statement through the agent…
    let long = s.long_statement();
    std::thread::sleep(Duration::from_millis(1500));
    // …and the agent dies.
    let killed = Instant::now();
    s.kill_agent();
    let out = long.join().unwrap();
    assert!(!out.status.success(), "the session should have failed");
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "the caller waited for nothing"
    );

    // Callers get a clear error naming the agent, not a hang.
    let r = get(&s.gw().url, &s.ca, Some(&s.token), "/c/api/hello");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "agent_unavailable");
    assert_eq!(r.json()["agent"], "dc1");
    let out = s.psql("SELECT 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dc1") && err.contains("not connected"),
        "{err}"
    );
    // The gateway keeps serving what does not need the agent.
    let r = get(&s.gw().url, &s.ca, None, "/.well-known/portcullis");
    assert_eq!(r.status, 200);

    // The agent comes back; the next session works.
    s.start_agent("agent.toml");
    s.wait_through();
    let out = s.psql("SELECT 7");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The gateway restarts; the agent reconnects by itself.
    let gw = s.gw.take().unwrap();
    assert!(gw.stop().success());
    std::thread::sleep(Duration::from_millis(500));
    s.start_gateway();
    assert_eq!(s.gw().port(), s.gw_port);
    s.wait_through();
    let out = s.psql("SELECT 8");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.agent_log().contains("reconnecting to the gateway"));
}

/// A read-only connection's database role was checked by nothing when an
/// agent served it (the gateway cannot reach that target). It is checked
/// through each new link before a caller's first session: logged, and
/// under `strict_roles` callers are refused until it passes. The test
/// cluster's role is a superuser, which could undo read-only.
#[test]
fn read_only_roles_through_an_agent_are_checked() {
    let s = setup_full("", "strict_roles = true");
    let o = psql_on("dbro", s.pg_port, &s.ca, &s.token, "SELECT 1");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("strict_roles") && err.contains("superuser") && err.contains("dc1"),
        "{err}"
    );
    // A read-write connection is not checked; the gateway serves on.
    let o = psql_on("db", s.pg_port, &s.ca, &s.token, "SELECT 40 + 2");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");
    // Checked once per link, not per session.
    let o = psql_on("dbro", s.pg_port, &s.ca, &s.token, "SELECT 1");
    assert!(!o.status.success());
    let logs = s.gw().logs();
    let checks = logs
        .lines()
        .filter(|l| l.contains("is not least privilege") && !l.contains("strict_roles:"))
        .count();
    assert_eq!(checks, 1, "{logs}");
}

/// Review: one caller holding every stream an agent allows stalled every
/// other caller on that agent. A principal holds at most
/// `max_agent_streams_per_caller` at once (PostgreSQL sessions for their
/// lifetime, HTTP requests until their body ended); past it it is
/// refused in its own protocol, and other principals go on.
#[test]
fn one_caller_cannot_take_every_stream_of_an_agent() {
    let s = setup_with("\n[limits]\nmax_agent_streams_per_caller = 2\n");
    let cfg = s.tmp.path().join("gw/portcullis.toml");
    let out = cli_at(
        &cfg,
        &[
            "token",
            "create",
            "--principal",
            "agent:other",
            "--group",
            "testers",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Tokens alice minted for three agents, written to the store as the
    // gateway writes them (minting needs her sign-in at a provider).
    let store = format!(
        "sqlite://{}?mode=rwc",
        s.tmp.path().join("gw/portcullis.db").display()
    );
    let alices: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|a| {
            let subject = format!("agent:{a}@alice");
            delegated_token(&store, &subject, "user:alice", &["testers".to_string()])
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (port, pg_port) = (s.gw().port(), s.pg_port);
    let ca = PathBuf::from(&s.ca);
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Two streams held: a 32 MiB answer not read, and a session.
        let mut stalled = tls_connect(port, &ca).await;
        let req = format!(
            "GET /c/api/huge HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\r\n",
            s.token
        );
        stalled.write_all(req.as_bytes()).await.unwrap();
        let mut first = [0u8; 64];
        let n = stalled.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"));
        let mut session = common::wire::Wire::login(pg_port, &ca, "db", &s.token).await;
        assert_eq!(session.value("SELECT 40 + 2").await, "42");

        // A third is refused, in each protocol.
        let url = s.gw().url.clone();
        let third = |token: String| {
            let (ca, url) = (s.ca.clone(), url.clone());
            tokio::task::spawn_blocking(move || get(&url, &ca, Some(&token), "/c/api/hello"))
        };
        let r = third(s.token.clone()).await.unwrap();
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(r.body.contains("agent_busy"), "{}", r.body);
        let (pg, token) = (pg_port, s.token.clone());
        let ca_s = s.ca.clone();
        let o = tokio::task::spawn_blocking(move || psql_as(pg, &ca_s, &token, "SELECT 1"))
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("max_agent_streams_per_caller"),
            "{err}"
        );

        // Another principal goes on.
        let r = third(other.clone()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        // An upload the target answered before reading it still holds its
        // stream (re-review: uploads to a target that answered 202 at once
        // were not counted once their answer ended). `other` holds two.
        let mut uploads = Vec::new();
        for _ in 0..2 {
            let mut up = tls_connect(port, &ca).await;
            let req = format!(
                "POST /c/api/early HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {other}\r\ncontent-length: 1000000\r\n\r\npartial"
            );
            up.write_all(req.as_bytes()).await.unwrap();
            let mut head = [0u8; 64];
            let n = up.read(&mut head).await.unwrap();
            assert!(head[..n].starts_with(b"HTTP/1.1 202"), "{:?}", String::from_utf8_lossy(&head[..n]));
            uploads.push(up);
        }
        let r = third(other.clone()).await.unwrap();
        assert_eq!(r.status, 429, "{}", r.body);
        drop(uploads);

        // Streams that ended count no more.
        drop(stalled);
        drop(session);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = third(s.token.clone()).await.unwrap();
            if r.status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{}", r.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Agents a person minted share the person's share (a review: each
        // agent name had one of its own, so minting agents multiplied it).
        let mut alice_held = Vec::new();
        for token in &alices[..2] {
            let mut c = tls_connect(port, &ca).await;
            let req = format!(
                "GET /c/api/huge HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n"
            );
            c.write_all(req.as_bytes()).await.unwrap();
            let mut head = [0u8; 64];
            let n = c.read(&mut head).await.unwrap();
            assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&head[..n]));
            alice_held.push(c);
        }
        let r = third(alices[2].clone()).await.unwrap();
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(r.body.contains("agent_busy"), "{}", r.body);
        let r = third(s.token.clone()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        drop(alice_held);
    });
}

/// Through an agent too, a caller killed mid-statement leaves nothing
/// running on the target, and its share is held until the statement is
/// cancelled (a review killed clients in a loop and had 38 statements
/// running under a share of 2).
#[test]
fn a_caller_killed_mid_statement_through_the_agent_leaves_nothing_running() {
    let s = setup();
    let marker = format!("portcullis_agent_gone_{}", std::process::id());
    let sql = format!("select pg_sleep(30) as {marker}");
    let children: Vec<_> = (0..2).map(|_| quiet_psql(&s, &sql)).collect();
    let pg = PgCluster::shared();
    pg.wait_running(&marker, 2, 15, "the statements never ran");
    for mut c in children {
        c.kill().unwrap();
        let _ = c.wait();
    }
    pg.wait_running(
        &marker,
        0,
        5,
        "the departed caller's statements still run on the target",
    );
}

/// A caller that turns off the target's check for a departed client and
/// runs a statement catching every cancel, then is killed: through an
/// agent too, its backend is ended for certain a few seconds later (it
/// ran on for good: review, 2026-12-05).
#[test]
fn a_statement_that_catches_the_cancel_through_the_agent_ends_with_its_caller() {
    let s = setup();
    let marker = format!("portcullis_agent_outlive_{}", std::process::id());
    let sql = format!(
        "SET client_connection_check_interval = 0; \
         DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(0.2); \
         EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$ /* {marker} */"
    );
    let mut caller = quiet_psql(&s, &sql);
    let pg = PgCluster::shared();
    pg.wait_running(&marker, 1, 15, "the statement never ran");
    caller.kill().unwrap();
    let _ = caller.wait();
    let ended = std::panic::catch_unwind(|| {
        pg.wait_running(
            &marker,
            0,
            10,
            "the statement that catches its cancel ran on after its caller",
        )
    });
    // Never left running for the tests after this one.
    pg.psql_direct(&format!(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity \
         where query like '%{marker}%' and pid <> pg_backend_pid()"
    ));
    if let Err(e) = ended {
        std::panic::resume_unwind(e);
    }
}

/// An agent killed mid-statement cannot cancel it, and the gateway cannot
/// reach the target: the target stops it by itself within seconds (the
/// connection check the agent asks for at every startup) rather than
/// running it to its end.
#[test]
fn a_killed_agent_leaves_nothing_running_on_the_target() {
    let mut s = setup();
    let marker = format!("portcullis_agent_killed_{}", std::process::id());
    let sql = format!("select pg_sleep(60) as {marker}");
    let mut caller = quiet_psql(&s, &sql);
    let pg = PgCluster::shared();
    pg.wait_running(&marker, 1, 15, "the statement never ran");
    s.kill_agent();
    pg.wait_running(
        &marker,
        0,
        10,
        "the statement ran on after kill -9 of the agent",
    );
    let _ = caller.kill();
    let _ = caller.wait();
}

#[test]
fn hundred_sessions_over_one_link_with_a_stalled_reader() {
    let s = setup();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = s.gw().port();
    let ca = PathBuf::from(&s.ca);
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A caller asks for 32 MiB and then stops reading.
        let mut stalled = tls_connect(port, &ca).await;
        let req = format!(
            "GET /c/api/huge HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\r\n",
            s.token
        );
        stalled.write_all(req.as_bytes()).await.unwrap();
        let mut first = [0u8; 64];
        let n = stalled.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"));

        // 100 others, at once, on the same link.
        let done = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let ca = ca.clone();
            let token = s.token.clone();
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut tls = tls_connect(port, &ca).await;
                let req = format!(
                    "GET /c/api/n{i} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
                );
                tls.write_all(req.as_bytes()).await.unwrap();
                let mut buf = Vec::new();
                tls.read_to_end(&mut buf).await.unwrap();
                if buf.starts_with(b"HTTP/1.1 200") {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a session was stalled by another")
                .unwrap();
        }
        assert_eq!(done.load(Ordering::Relaxed), 100);
        eprintln!("100 sessions beside a stalled one: {:?}", started.elapsed());
        drop(stalled);
    });
    // Still one link.
    assert_eq!(s.gw().logs().matches("agent connected").count(), 1);
}

#[test]
fn an_agent_announcing_foreign_connections_is_refused_and_revocation_cuts_the_link() {
    let mut s = setup();
    // Revoke the agent's certificate: the link (and a live session) is cut.
    let long = s.long_statement();
    std::thread::sleep(Duration::from_millis(1000));
    let cfg = s.gw_dir().join("portcullis.toml");
    let out = Command::new(BIN)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "cert",
            "revoke",
            "--cert",
        ])
        .arg(s.agent_dir().join("agent.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();
    let out = long.join().unwrap();
    assert!(
        !out.status.success(),
        "the live session survived revocation; gateway log:\n{}",
        s.gw().logs()
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(10));
    let r = get(&s.gw().url, &s.ca, Some(&s.token), "/c/api/hello");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(s.gw().logs().contains("revoked"));

    // A fresh certificate, but a config that announces `billing`, which
    // the gateway does not assign to dc1: refused, and the agent says why.
    s.kill_agent();
    let (ca, _) = CertificateAuthority::load_or_create(&s.gw_dir()).unwrap();
    ca.write_leaf(
        LeafKind::Client,
        &s.agent_dir().join("agent"),
        &["connector:dc1".into()],
        Duration::from_secs(86400),
    )
    .unwrap();
    s.start_agent("greedy.toml");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.agent_log().contains("refused this agent's link") {
        assert!(Instant::now() < deadline, "agent log:\n{}", s.agent_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s.agent_log().contains("billing"));
    assert!(s.gw().logs().contains("agent link refused"));
    let r = get(&s.gw().url, &s.ca, Some(&s.token), "/c/api/hello");
    assert_eq!(r.status, 503);

    // A review found any CA in the listener's bundle could link as any
    // agent and be sent its connections' traffic. A partner CA appended
    // to the bundle (it is the callers' one too) passes the handshake;
    // its `connector:dc1` is refused all the same.
    s.kill_agent();
    let partner_dir = s.tmp.path().join("partner");
    std::fs::create_dir_all(&partner_dir).unwrap();
    let (partner, _) = CertificateAuthority::load_or_create(&partner_dir).unwrap();
    let bundle = s.gw_dir().join("ca.pem");
    let mut pem = std::fs::read_to_string(&bundle).unwrap();
    pem.push_str(partner.cert_pem());
    std::fs::write(&bundle, pem).unwrap();
    partner
        .write_leaf(
            LeafKind::Client,
            &s.agent_dir().join("agent"),
            &["connector:dc1".into()],
            Duration::from_secs(86400),
        )
        .unwrap();
    s.start_agent("agent.toml");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.gw().logs().contains("not issued by the agents' CA") {
        assert!(
            Instant::now() < deadline,
            "gateway log:\n{}\nagent log:\n{}",
            s.gw().logs(),
            s.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = get(&s.gw().url, &s.ca, Some(&s.token), "/c/api/hello");
    assert_eq!(r.status, 503, "{}", r.body);
    let _ = s.agent_port;
}

#[test]
fn an_agent_keeps_a_link_to_every_gateway() {
    let mut s = setup();
    // A second gateway beside the first (same CA, same store), with its
    // own listeners.
    let dir = s.gw_dir();
    let a_cfg = std::fs::read_to_string(dir.join("portcullis.toml")).unwrap();
    let (b_port, b_pg, b_agents) = (free_port(), free_port(), free_port());
    let b_cfg = a_cfg
        .replace(
            &format!("127.0.0.1:{}\"", s.gw_port),
            &format!("127.0.0.1:{b_port}\""),
        )
        .replace(
            &format!("127.0.0.1:{}\"", s.pg_port),
            &format!("127.0.0.1:{b_pg}\""),
        )
        .replace(
            &format!("127.0.0.1:{}\"", s.agent_port),
            &format!("127.0.0.1:{b_agents}\""),
        );
    std::fs::write(dir.join("b.toml"), b_cfg).unwrap();
    let b = Proc::spawn(
        &dir,
        &["--config", dir.join("b.toml").to_str().unwrap(), "gateway"],
        "gateway-b.log",
    );
    // The agent now dials both.
    let agent_cfg = s.agent_dir().join("agent.toml");
    let text = std::fs::read_to_string(&agent_cfg).unwrap().replace(
        &format!("gateway = \"localhost:{}\"", s.agent_port),
        &format!(
            "gateway = [\"localhost:{}\", \"localhost:{b_agents}\"]",
            s.agent_port
        ),
    );
    std::fs::write(s.agent_dir().join("both.toml"), text).unwrap();
    s.kill_agent();
    s.start_agent("both.toml");
    s.wait_through();
    // Callers reach the agent's connections through either gateway, with
    // the same token (the gateways share the store).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(&b.url, &s.ca, Some(&s.token), "/c/api/hello");
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    // One gateway goes away; the other keeps serving through the agent.
    let a = s.gw.take().unwrap();
    assert!(a.stop().success());
    let r = get(&b.url, &s.ca, Some(&s.token), "/c/api/hello");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(b.logs().contains("agent connected"));
}

/// An agent host gets its certificate with a one-time token instead of
/// files copied from the gateway's CA: its key is made there and never
/// leaves; the token works once.
#[test]
fn an_agent_enrols_with_a_one_time_token() {
    let mut s = setup();
    s.kill_agent();
    let out = Command::new(BIN)
        .args([
            "--config",
            s.gw_dir().join("portcullis.toml").to_str().unwrap(),
            "agents",
            "enrol",
            "--name",
            "dc1",
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("pce_"), "{token}");
    let dir = s.agent_dir();
    std::fs::write(dir.join("enrol-token"), &token).unwrap();
    let config = std::fs::read_to_string(dir.join("agent.toml")).unwrap();
    let enrolled = |cert: &str| {
        config.replace(
            "cert = \"agent.pem\"\nkey = \"agent.key\"\n",
            &format!(
                "cert = \"{cert}.pem\"\nkey = \"{cert}.key\"\nenrol = {{ url = \"https://localhost:{}\", token = \"file:enrol-token\" }}\n",
                s.gw_port
            ),
        )
    };
    std::fs::write(dir.join("enrolled.toml"), enrolled("enrolled")).unwrap();
    std::fs::write(dir.join("again.toml"), enrolled("again")).unwrap();

    s.start_agent("enrolled.toml");
    s.wait_through();
    let key = std::fs::read_to_string(dir.join("enrolled.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("enrolled.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The key stayed on the agent's host: not in any gateway file or log.
    // (Past the ASN.1 prefix every key of this kind shares.)
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let body = &body[body.len() / 2 - 20..];
    for (path, bytes) in all_files(&s.gw_dir()) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&body[..40]),
            "agent key in {}",
            path.display()
        );
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&token),
            "enrolment token in {}",
            path.display()
        );
    }
    let audit = Command::new(BIN)
        .args([
            "--config",
            s.gw_dir().join("portcullis.toml").to_str().unwrap(),
            "audit",
            "export",
        ])
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("agent_enrolment_created"), "{audit}");
    assert!(
        audit.contains("agent_enrolled") && audit.contains("connector:dc1"),
        "{audit}"
    );

    // Once only: a second agent with the same token is refused.
    let out = Command::new(BIN)
        .args([
            "--config",
            dir.join("again.toml").to_str().unwrap(),
            "agent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already used"), "{err}");
    assert!(!dir.join("again.pem").exists() && !dir.join("again.key").exists());
}
