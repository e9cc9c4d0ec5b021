//! Budgets with real clients: psql is cut at its rows and refused its
//! writes (53400), on two gateways sharing a PostgreSQL store and after
//! a restart; curl on one keep-alive connection gets 429 with
//! `Retry-After`; the MCP SDK's tool call is refused as a tool error.

mod common;

use std::process::{Command, Output};

use common::pg::{PG_PASSWORD, PgCluster};
use common::*;
use portcullis_tls::CertificateAuthority;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

/// A store database of its own on the suite's cluster.
fn store_database() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let pg = PgCluster::shared();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let db = format!("pcl_budgets_{}_{n}", std::process::id());
    pg.psql_direct(&format!("DROP DATABASE IF EXISTS {db}"));
    pg.psql_direct(&format!("CREATE DATABASE {db}"));
    format!(
        "postgres://postgres@localhost:{}/{db}?sslrootcert={}",
        pg.port,
        pg.ca.display()
    )
}

fn config(store: &str, pg: &PgCluster, hook: u16) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"

[store]
url = "{store}"
password = "file:pgpw"

[postgres]
listen = "127.0.0.1:0"

[[connections]]
name = "db"
type = "postgres"
url = "postgres://postgres@localhost:{port}/postgres?sslrootcert={ca}"
password = "file:pgpw"

[[connections]]
name = "api"
type = "http"
url = "https://localhost:{hook}"
ca_file = "ca.pem"

[[grants]]
name = "readers"
groups = ["testers"]
connections = ["*"]
budgets = [
  {{ rows = 5, per = "hour" }},
  {{ requests = 2, per = "hour", method = "GET" }},
  {{ tool_calls = 1, per = "hour", tool = "http_request" }},
]

[[grants]]
name = "writers"
groups = ["writers"]
connections = ["db"]
budgets = [{{ writes = 2, per = "session" }}]

[[connections]]
name = "api-lift"
type = "http"
url = "https://localhost:{hook}"
ca_file = "ca.pem"
approval = {{ mode = "statements", methods = ["PATCH"], approvers = ["dba"], wait = "20s" }}

[[grants]]
name = "explorers"
groups = ["explorers"]
connections = ["db"]
budgets = [{{ tables = 2, per = "hour" }}]

[[grants]]
name = "racers"
groups = ["racers"]
connections = ["db"]
budgets = [{{ rows = 100, per = "hour" }}]

[[connections]]
name = "db-lift"
type = "postgres"
url = "postgres://postgres@localhost:{port}/postgres?sslrootcert={ca}"
password = "file:pgpw"
approval = {{ mode = "statements", classes = ["ddl"], approvers = ["dba"], wait = "20s" }}

[[grants]]
name = "lifters"
groups = ["lifters"]
connections = ["api-lift", "db-lift"]
budgets = [{{ requests = 1, per = "hour" }}, {{ rows = 2, per = "session" }}]

[[grants]]
name = "takers"
groups = ["takers"]
connections = ["api", "db"]
budgets = [{{ bytes = 2500, per = "hour" }}]

[[grants]]
name = "copiers"
groups = ["copiers"]
connections = ["db"]
budgets = [{{ rows = 4, per = "session" }}]
"#,
        port = pg.port,
        ca = pg.ca.display(),
    )
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    ca: String,
    /// The shared store's URL, with its password.
    store: String,
    token: String,
    writer: String,
    copier: String,
    lifter: String,
    racer: String,
    explorer: String,
    taker: String,
    bob: String,
    _hook: common::upstream::TestUpstream,
}

fn setup() -> (Setup, Proc, Proc) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (ca, _) = CertificateAuthority::load_or_create(&dir).unwrap();
    write_leaf(&ca, &dir, "server");
    write_leaf(&ca, &dir, "hook");
    std::fs::write(dir.join("pgpw"), PG_PASSWORD).unwrap();
    let hook = common::upstream::start(&dir.join("hook.pem"), &dir.join("hook.key"));
    let pg = PgCluster::shared();
    let store = store_database();
    let cfg = config(&store, pg, hook.port);
    std::fs::write(dir.join("portcullis.toml"), &cfg).unwrap();
    let token = tester_token(&dir.join("portcullis.toml"));
    let out = cli_at(
        &dir.join("portcullis.toml"),
        &[
            "token",
            "create",
            "--principal",
            "agent:writer",
            "--group",
            "writers",
        ],
    );
    assert!(out.status.success());
    let writer = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = cli_at(
        &dir.join("portcullis.toml"),
        &[
            "token",
            "create",
            "--principal",
            "agent:copier",
            "--group",
            "copiers",
        ],
    );
    assert!(out.status.success());
    let copier = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let token_for = |principal: &str, group: &str| {
        let out = cli_at(
            &dir.join("portcullis.toml"),
            &[
                "token",
                "create",
                "--principal",
                principal,
                "--group",
                group,
            ],
        );
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let lifter = token_for("agent:lifter", "lifters");
    let racer = token_for("agent:racer", "racers");
    let explorer = token_for("agent:explorer", "explorers");
    let taker = token_for("agent:taker", "takers");
    let bob = token_for("user:bob", "dba");
    let a = start(&dir);
    let b = start(&dir);
    let s = Setup {
        _tmp: tmp,
        ca: dir.join("ca.pem").to_str().unwrap().to_string(),
        store: store.replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{PG_PASSWORD}@"),
            1,
        ),
        dir,
        token,
        writer,
        copier,
        lifter,
        racer,
        explorer,
        taker,
        bob,
        _hook: hook,
    };
    (s, a, b)
}

/// One more gateway on the shared config and store.
fn start(dir: &std::path::Path) -> Proc {
    let cfg = dir.join("portcullis.toml");
    let n = std::fs::read_dir(dir).unwrap().count();
    Proc::spawn(
        dir,
        &["--config", cfg.to_str().unwrap(), "gateway"],
        &format!("gw{n}.log"),
    )
}

fn psql(gw: &Proc, s: &Setup, token: &str, script: &str) -> Output {
    psql_db(gw, s, token, "db", script)
}

fn psql_db(gw: &Proc, s: &Setup, token: &str, db: &str, script: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=0",
            "-v",
            "VERBOSITY=verbose",
        ])
        .env("PGHOST", "localhost")
        .env("PGPORT", gw.pg_port.unwrap().to_string())
        .env("PGDATABASE", db)
        .env("PGUSER", "agent")
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &s.ca)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("\\set VERBOSITY verbose\n{script}").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `portcullis budgets show --json` on `gw` as `token`: the limit of
/// `grant` on `measure`.
fn budget_shown(
    gw: &Proc,
    s: &Setup,
    token: &str,
    grant: &str,
    measure: &str,
) -> serde_json::Value {
    let show = budgets_show(gw, s, token, &["--json"]);
    assert!(show.status.success(), "{}", both(&show));
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    v["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["grant"] == grant && b["measure"] == measure)
        .unwrap_or_else(|| panic!("no {measure} budget of {grant}: {v}"))
        .clone()
}

/// `portcullis budgets show ARGS` as the holder of `token`.
fn budgets_show(gw: &Proc, s: &Setup, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["budgets", "show"])
        .args(args)
        .env("PORTCULLIS_URL", &gw.url)
        .env("PORTCULLIS_CA", &s.ca)
        .env("PORTCULLIS_TOKEN", token)
        .env("HOME", &s.dir)
        .output()
        .unwrap()
}

fn both(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn budgets_hold_for_psql_across_gateways_and_a_restart() {
    let (s, a, b) = setup();
    // 3 of 5 rows on gateway A.
    let out = psql(&a, &s, &s.token, "SELECT g FROM generate_series(1, 3) g;\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1\n2\n3",
        "{}",
        both(&out)
    );
    // On gateway B, 2 are left: the next 3 are cut at the limit, with
    // an error, never silently short; then nothing is left.
    let out = psql(
        &b,
        &s,
        &s.token,
        "SELECT g FROM generate_series(1, 3) g;\nSELECT 1;\n",
    );
    let said = both(&out);
    assert!(said.contains("53400"), "{said}");
    assert!(
        said.contains("budget \"rows per hour\" of grant \"readers\" is used up"),
        "{said}"
    );
    assert!(said.contains("the result was cut at the limit"), "{said}");
    assert_eq!(said.matches("53400").count(), 2, "{said}");
    assert!(said.contains("frees up from"), "{said}");
    // The store keeps it across a restart.
    assert!(b.stop().success());
    let b = start(&s.dir);
    let out = psql(&b, &s, &s.token, "SELECT 1;\n");
    assert!(both(&out).contains("53400"), "{}", both(&out));
    // `budgets show` says the same (as the principal itself).
    let rows = budget_shown(&b, &s, &s.token, "readers", "rows");
    assert_eq!(
        (rows["used"].as_u64(), rows["limit"].as_u64()),
        (Some(5), Some(5)),
        "{rows}"
    );
    // Another principal's budgets are not the agent's to read.
    let other = budgets_show(&b, &s, &s.token, &["--principal", "agent:writer"]);
    assert!(!other.status.success(), "{}", both(&other));

    // Writes per session: the third write of a session is refused, the
    // statement never reaching the target; a new session starts again.
    let script = "CREATE TEMP TABLE w (x int);\nINSERT INTO w VALUES (1);\nINSERT INTO w VALUES (2);\nSELECT count(*) FROM w;\n";
    let out = psql(&a, &s, &s.writer, script);
    let said = both(&out);
    assert!(said.contains("budget \"writes per session\""), "{said}");
    assert!(said.contains("53400"), "{said}");
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().ends_with('1'),
        "{said}"
    );
    let out = psql(&a, &s, &s.writer, "CREATE TEMP TABLE w (x int);\n");
    assert!(
        out.status.success() && !both(&out).contains("53400"),
        "{}",
        both(&out)
    );
    // One query of three writes (psql sends `\;`-joined statements as
    // one Query) counts three: all or none, with two allowed.
    let out = psql(
        &a,
        &s,
        &s.writer,
        "CREATE TEMP TABLE w (x int) \\; INSERT INTO w VALUES (1) \\; INSERT INTO w VALUES (2);\n",
    );
    let said = both(&out);
    assert!(
        said.contains("53400") && said.contains("has 2 of 2 left, not the 3 this needs"),
        "{said}"
    );

    // COPY TO counts its rows too, and is cut the same way; with nothing
    // left, statements that return no row (transaction control) still run.
    let out = psql(
        &a,
        &s,
        &s.copier,
        "COPY (SELECT g FROM generate_series(1, 10) g) TO STDOUT;\nBEGIN;\nCOMMIT;\nSELECT 1;\n",
    );
    let said = both(&out);
    let lines: Vec<&str> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.parse::<u32>().is_ok())
        .map(|_| "")
        .collect();
    assert!(lines.len() <= 4, "more rows than the budget: {said}");
    assert_eq!(said.matches("53400").count(), 2, "{said}");
    assert!(said.contains("BEGIN") && said.contains("COMMIT"), "{said}");
}

#[test]
fn budgets_hold_for_http_keep_alive_and_mcp_tool_calls() {
    let (s, a, _b) = setup();
    // Three GETs and a POST on one connection: the third GET is 429.
    let url = format!("{}/c/api/hello", a.url);
    let out = Command::new("curl")
        .args(["-s", "--cacert", &s.ca])
        .args(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
        .args(["-H", &format!("authorization: Bearer {}", s.token)])
        .args(["-w", "%{http_code} %{num_connects} %header{retry-after}\n"])
        .args([&url, &url, &url])
        .args([
            "--next",
            "-s",
            "--cacert",
            &s.ca,
            "-o",
            "/dev/null",
            "-X",
            "POST",
        ])
        .args(["-H", &format!("authorization: Bearer {}", s.token)])
        .args(["-w", "%{http_code} %{num_connects}\n", &url])
        // A method override counts under the method it names too.
        .args([
            "--next",
            "-s",
            "--cacert",
            &s.ca,
            "-o",
            "/dev/null",
            "-X",
            "POST",
        ])
        .args(["-H", &format!("authorization: Bearer {}", s.token)])
        .args(["-H", "x-http-method-override: GET"])
        .args(["-w", "%{http_code} %{num_connects}\n", &url])
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[0].starts_with("200 1"), "{lines:?}");
    assert!(lines[1].starts_with("200 0"), "{lines:?}");
    let third: Vec<&str> = lines[2].split(' ').collect();
    assert_eq!(&third[..2], ["429", "0"], "one connection: {lines:?}");
    let retry: u64 = third[2].parse().expect("Retry-After");
    assert!((1..=3600).contains(&retry), "{lines:?}");
    assert!(
        lines[3].starts_with("200"),
        "POST is not limited: {lines:?}"
    );
    assert!(
        lines[4].starts_with("429"),
        "an overriding GET is: {lines:?}"
    );

    // MCP: one http_request call per hour; the second is a tool error.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let transport = StreamableHttpClientTransport::with_client(
            https_client(&s.ca),
            StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", a.url))
                .auth_header(s.token.clone()),
        );
        let client = ().serve(transport).await.expect("MCP initialize");
        let call = |method: &str| {
            let args = serde_json::json!({"connection": "api", "method": method, "path": "/hello"});
            let serde_json::Value::Object(args) = args else {
                unreachable!()
            };
            client.call_tool(CallToolRequestParams::new("http_request").with_arguments(args))
        };
        // The tool's GET counts against the GET requests the proxy used up.
        let get = format!("{:?}", call("GET").await);
        assert!(get.contains("GET requests per hour"), "{get}");
        let first = call("POST").await.expect("first call");
        assert_ne!(first.is_error, Some(true), "{first:?}");
        let second = format!("{:?}", call("POST").await);
        assert!(
            second.contains("calls of tool http_request per hour"),
            "{second}"
        );

        // sql_query's rows count too: more than is left is refused whole.
        let sql = |text: &str| {
            let args = serde_json::json!({"connection": "db", "sql": text});
            let serde_json::Value::Object(args) = args else {
                unreachable!()
            };
            client.call_tool(CallToolRequestParams::new("sql_query").with_arguments(args))
        };
        let many = format!("{:?}", sql("SELECT g FROM generate_series(1, 10) g").await);
        assert!(
            many.contains("rows per hour") && many.contains("nothing was returned"),
            "{many}"
        );
        let few = sql("SELECT g FROM generate_series(1, 3) g")
            .await
            .expect("within the budget");
        assert_ne!(few.is_error, Some(true), "{few:?}");
        let rest = format!("{:?}", sql("SELECT g FROM generate_series(1, 3) g").await);
        assert!(rest.contains("rows per hour"), "2 left, 3 asked: {rest}");
        let _ = client.cancel().await;
    });
}

#[test]
fn bytes_returned_are_bounded_over_http_and_mcp() {
    let (s, a, b) = setup();
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "--cacert", &s.ca])
            .args(["-H", &format!("authorization: Bearer {}", s.taker)])
            .args(["-w", "\n%{http_code} %header{retry-after}"])
            .arg(format!("{}/c/api{path}", a.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), text)
    };
    let (code, small) = get("/hello");
    assert_eq!(code, Some(0));
    assert!(small.ends_with("\n200 "), "{small}");
    // A declared length larger than what is left: refused whole, never
    // cut short (the 1 MiB never reaches the caller).
    let (_, big) = get("/big");
    assert!(
        big.contains("budget_exceeded") && big.contains("bytes per hour"),
        "{big}"
    );
    let status: Vec<&str> = big.lines().last().unwrap().split(' ').collect();
    assert_eq!(status[0], "429", "{big}");
    assert!(status[1].parse::<u64>().is_ok(), "Retry-After: {big}");
    // A body that streams (no length) is cut where it would cross, with
    // an error the client sees: curl does not get a complete response.
    let (code, streamed) = get("/stream");
    assert_ne!(code, Some(0), "a cut body is an error: {streamed}");
    let body = streamed.rsplit_once('\n').map_or("", |x| x.0);
    assert!(body.len() < 2500 && body.starts_with('a'), "{}", body.len());
    // The gateway exports what it counted and gave back, by grant.
    let metrics = common::get(
        &format!("https://{}", a.admin.clone().unwrap()),
        &s.ca,
        None,
        "/metrics",
    )
    .body;
    let value = |name: &str| -> u64 {
        let line = format!("{name}{{grant=\"takers\",measure=\"bytes\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {metrics}"))
    };
    let used = value("portcullis_budget_taken_total") - value("portcullis_budget_given_back_total");
    assert!((2000..=2500).contains(&used), "{metrics}");
    // What the caller took is counted on the other gateway too (the
    // store): MCP results larger than what is left are refused whole.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let transport = StreamableHttpClientTransport::with_client(
            https_client(&s.ca),
            StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", b.url))
                .auth_header(s.taker.clone()),
        );
        let client = ().serve(transport).await.expect("MCP initialize");
        let sql = |text: &str| {
            let args = serde_json::json!({"connection": "db", "sql": text});
            let serde_json::Value::Object(args) = args else {
                unreachable!()
            };
            client.call_tool(CallToolRequestParams::new("sql_query").with_arguments(args))
        };
        let big = format!("{:?}", sql("SELECT repeat('x', 1500)").await);
        assert!(
            big.contains("bytes per hour") && big.contains("nothing of it was returned"),
            "{big}"
        );
        // The target's error text is bytes too (a failed cast quotes its
        // input): larger than what is left, it is not handed over.
        let quoted = format!("{:?}", sql("SELECT repeat('q', 3000)::int").await);
        assert!(
            quoted.contains("target's error") && !quoted.contains("qqqqqqqqqq"),
            "{quoted}"
        );
        let mut refused = None;
        for _ in 0..30 {
            let r = format!("{:?}", sql("SELECT 1").await);
            if r.contains("bytes per hour") {
                refused = Some(r);
                break;
            }
        }
        assert!(refused.is_some(), "small results use the budget up");
        let _ = client.cancel().await;
    });
    // The oracle: never more taken than the limit, on either gateway.
    let takers = budget_shown(&b, &s, &s.taker, "takers", "bytes");
    let used = takers["used"].as_u64().unwrap();
    assert!((2000..=2500).contains(&used), "{takers}");
}

#[test]
fn error_text_notifications_and_settings_count_as_bytes_returned() {
    // A value can come back in an error's text (a failed cast quotes
    // it), a notification's payload or a reported setting: bytes
    // returned, so a bytes budget is not a door they walk through. What
    // fits is counted; past what is left the text is withheld (the error
    // and its SQLSTATE still reach the caller).
    let (s, a, _b) = setup();
    let out = psql(
        &a,
        &s,
        &s.taker,
        "SELECT repeat('x', 2000)::int;\nSELECT repeat('y', 2000)::int;\n\
         LISTEN c;\nSELECT pg_notify('c', repeat('z', 3000));\n\
         SELECT set_config('application_name', repeat('w', 3000), false);\n",
    );
    let said = both(&out);
    assert!(
        said.contains(&"x".repeat(2000)),
        "within the budget: {said}"
    );
    // The first error fits and is whole; the second's text and its own
    // SQLSTATE are withheld (a statement may choose its SQLSTATE).
    assert!(said.contains("22P02"), "{said}");
    assert!(
        said.contains("53400: portcullis") && said.contains("error text was withheld"),
        "{said}"
    );
    for leaked in ["yyyyyyyyyy", "zzzzzzzzzz"] {
        assert!(!said.contains(leaked), "{leaked}: {said}");
    }
    // The row itself is cut; the notification never comes.
    assert!(said.contains("53400"), "{said}");
}

#[test]
fn review_findings_on_budgets_stay_fixed() {
    let (s, a, _b) = setup();
    let port = a.pg_port.unwrap();
    let ca = std::path::PathBuf::from(&s.ca);
    // Made before the gateway's first statement (its catalog proofs are
    // cached for a while; a change made outside it is not seen at once).
    let pg = PgCluster::shared();
    let tag = std::process::id();
    pg.psql_direct(&format!(
        "CREATE TABLE IF NOT EXISTS bump_hits_{tag} (x int); \
         CREATE OR REPLACE FUNCTION bump_{tag}() RETURNS int LANGUAGE sql VOLATILE AS \
         'INSERT INTO bump_hits_{tag} VALUES (1) RETURNING 1'; \
         CREATE OR REPLACE VIEW bumpv_{tag} AS SELECT bump_{tag}() AS x"
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // An Execute with no Sync after it is still in flight: its rows
        // stay under the reservation (4 per session for copiers).
        let mut w = common::wire::Wire::login(port, &ca, "db", &s.copier).await;
        w.parse("", "SELECT g FROM generate_series(1, 1000) g")
            .await;
        w.bind("").await;
        w.flush().await;
        w.until(b'2').await;
        w.execute().await;
        w.flush().await;
        let answers = w.until_any(b"EC").await;
        let rows = answers.iter().filter(|(t, _)| *t == b'D').count();
        assert!(
            rows <= 4,
            "{rows} rows: {}",
            common::wire::error_of(&answers)
        );
        assert!(common::wire::error_of(&answers).contains("53400"));
        w.sync().await;
        w.until_ready(None).await;

        // A statement prepared in SQL is not one the gateway saw parsed:
        // each Bind of it counts as a write (2 per session for writers),
        // and a protocol Parse of its name (which fails on the target)
        // does not make it a read.
        let mut w = common::wire::Wire::login(port, &ca, "db", &s.writer).await;
        w.query("PREPARE s AS SELECT 1").await;
        w.until_ready(None).await;
        w.parse("s", "SELECT 2").await;
        w.sync().await;
        w.until_ready(None).await;
        let mut refused = String::new();
        for _ in 0..3 {
            w.bind("s").await;
            w.execute().await;
            w.sync().await;
            let answers = w.until_ready(None).await;
            if answers.iter().any(|(t, _)| *t == b'E') {
                refused = common::wire::error_of(&answers);
                break;
            }
        }
        assert!(
            refused.contains("53400") && refused.contains("writes per session"),
            "{refused:?}"
        );
    });

    // A read the catalog cannot prove (a view over a volatile function)
    // counts every statement of its query as a write.
    let q = format!("SELECT * FROM bumpv_{tag}");
    let out = psql(&a, &s, &s.writer, &format!("{q} \\; {q} \\; {q};\n"));
    let said = both(&out);
    assert!(said.contains("not the 3 this needs"), "{said}");

    // Under a tables budget, a statement whose tables cannot be read
    // from its text is refused (it would count none).
    let out = psql(
        &a,
        &s,
        &s.explorer,
        "SELECT y FROM ROWS FROM (generate_series(1, 1)) AS x(y), pg_class LIMIT 1;\n",
    );
    let said = both(&out);
    assert!(
        said.contains("53400") && said.contains("cannot be read"),
        "{said}"
    );

    // Every method override counts: a second override header naming GET
    // is a GET (the readers' two GETs an hour).
    let url = format!("{}/c/api/hello", a.url);
    let codes = |extra: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-s",
                "--cacert",
                &s.ca,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["-H", &format!("authorization: Bearer {}", s.token)])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(codes(&[]), "200");
    assert_eq!(codes(&[]), "200");
    let sneaky = codes(&[
        "-X",
        "POST",
        "-H",
        "x-http-method-override: POST",
        "-H",
        "x-method-override: GET",
    ]);
    assert_eq!(sneaky, "429");
    let repeated = codes(&["-X", "POST"]);
    assert_eq!(repeated, "200", "a POST is not a GET");
    // A form body naming the method (Rails and Laravel read `_method`
    // there) counts under it too; a multipart one naming it is refused.
    assert_eq!(codes(&["--data", "a=1&_method=GET"]), "429");
    assert_eq!(codes(&["-F", "_method=GET"]), "400");
    assert_eq!(codes(&["--data", "a=1"]), "200");
}

/// A Parse or Close the target skipped (after an error, until Sync) or
/// refused did not happen: a read Parse the target skipped must not make
/// the write statement still there a read (each Bind of it is a write).
#[test]
fn a_skipped_parse_or_close_does_not_turn_a_write_into_a_read() {
    let (s, a, _b) = setup();
    let port = a.pg_port.unwrap();
    let ca = std::path::PathBuf::from(&s.ca);
    let pg = PgCluster::shared();
    let table = format!("skipped_{}", std::process::id());
    pg.psql_direct(&format!("CREATE TABLE IF NOT EXISTS {table} (x int)"));
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for named in ["", "w"] {
            let mut w = common::wire::Wire::login(port, &ca, "db", &s.writer).await;
            w.parse(named, &insert).await;
            w.sync().await;
            w.until_ready(None).await;
            // Execute of a portal that does not exist: an error, after
            // which the target skips everything up to Sync.
            w.send(b'E', b"no_such_portal\0\0\0\0\0").await;
            if !named.is_empty() {
                // Close the write statement: skipped.
                let mut close = b"S".to_vec();
                close.extend_from_slice(named.as_bytes());
                close.push(0);
                w.send(b'C', &close).await;
            }
            // A read under the same name: skipped.
            w.parse(named, "SELECT 1").await;
            w.sync().await;
            let answers = w.until_ready(None).await;
            assert!(common::wire::error_of(&answers).contains("34000"));
            // The named case again with the name taken: refused by the
            // target (42P05), so nothing changed either.
            if !named.is_empty() {
                w.parse(named, "SELECT 1").await;
                w.sync().await;
                let answers = w.until_ready(None).await;
                assert!(common::wire::error_of(&answers).contains("42P05"));
            }
            let mut refused = String::new();
            for _ in 0..3 {
                w.bind(named).await;
                w.execute().await;
                w.sync().await;
                let answers = w.until_ready(None).await;
                if answers.iter().any(|(t, _)| *t == b'E') {
                    refused = common::wire::error_of(&answers);
                    break;
                }
            }
            assert!(
                refused.contains("53400") && refused.contains("writes per session"),
                "statement {named:?}: {refused:?}"
            );
        }
        // Reads cost nothing: a read parsed in an earlier batch, bound
        // again and again, and a read parsed in the batch that binds it.
        let mut w = common::wire::Wire::login(port, &ca, "db", &s.writer).await;
        w.parse("r", "SELECT 1").await;
        w.sync().await;
        w.until_ready(None).await;
        for i in 0..5 {
            if i % 2 == 0 {
                w.parse("", "SELECT 2").await;
                w.bind("").await;
            } else {
                w.bind("r").await;
            }
            w.execute().await;
            w.sync().await;
            let answers = w.until_ready(None).await;
            assert!(
                !answers.iter().any(|(t, _)| *t == b'E'),
                "read {i}: {}",
                common::wire::error_of(&answers)
            );
        }
    });
    let rows = pg.psql_direct(&format!("SELECT count(*) FROM {table}"));
    assert_eq!(rows.trim(), "4", "two writes per session, two sessions");
}

/// The pending review of kind `budget`, waited for.
fn pending_lift(gw: &Proc, s: &Setup) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = Command::new(BIN)
            .args(["reviews", "list", "--json", "--state", "pending"])
            .env("PORTCULLIS_URL", &gw.url)
            .env("PORTCULLIS_CA", &s.ca)
            .env("PORTCULLIS_TOKEN", &s.bob)
            .env("HOME", &s.dir)
            .output()
            .unwrap();
        if let Some(r) = json_lines(&out).into_iter().find(|r| r["kind"] == "budget") {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "no budget review");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn decide(gw: &Proc, s: &Setup, verb: &str, id: &str) {
    let out = Command::new(BIN)
        .args(["reviews", verb, id])
        .env("PORTCULLIS_URL", &gw.url)
        .env("PORTCULLIS_CA", &s.ca)
        .env("PORTCULLIS_TOKEN", &s.bob)
        .env("HOME", &s.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
}

#[test]
fn an_approver_lifts_a_budget_for_one_session() {
    let (s, a, _b) = setup();
    let url = format!("{}/c/api-lift/hello", a.url);
    let gets = |n: usize| {
        let mut c = Command::new("curl");
        c.args(["-s", "--cacert", &s.ca])
            .args(["-H", &format!("authorization: Bearer {}", s.lifter)])
            .args(["-w", "%{http_code} %{num_connects}\n"]);
        for _ in 0..n {
            c.args(["-o", "/dev/null", &url]);
        }
        c
    };
    let out = gets(1).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200 1");
    // One connection, two more requests: the first waits for a person,
    // who lifts the limit for this session; the second needs no one.
    let held = gets(2).spawn_output();
    let r = pending_lift(&a, &s);
    let action = r["action"].as_str().unwrap();
    assert!(
        action.starts_with("lift budget \"requests per hour\" of grant \"lifters\" for session "),
        "{r}"
    );
    decide(&a, &s, "approve", r["id"].as_str().unwrap());
    let out = held.join().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines, ["200 1", "200 0"], "{}", both(&out));
    // Another connection is another session: held again; denied, 429.
    let held = gets(1).spawn_output();
    let r = pending_lift(&a, &s);
    decide(&a, &s, "deny", r["id"].as_str().unwrap());
    let out = held.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "429 1",
        "{}",
        both(&out)
    );
}

trait SpawnOutput {
    fn spawn_output(self) -> std::thread::JoinHandle<Output>;
}

impl SpawnOutput for Command {
    fn spawn_output(mut self) -> std::thread::JoinHandle<Output> {
        std::thread::spawn(move || self.output().unwrap())
    }
}

#[test]
fn concurrent_sessions_share_one_allowance() {
    let (s, a, _b) = setup();
    // Eight sessions at once, 60 rows each, 100 rows an hour: what is left
    // is reserved by the session that reads it, so together they get at
    // most 100 (the rest is cut with 53400), and what was not used is
    // given back.
    let used = |s: &Setup, a: &Proc| {
        budget_shown(a, s, &s.racer, "racers", "rows")["used"]
            .as_u64()
            .unwrap()
    };
    // One session alone: it reserves all 100, takes 30, gives 70 back.
    let out = psql(
        &a,
        &s,
        &s.racer,
        "SELECT g FROM generate_series(1, 30) g;\n",
    );
    assert!(
        out.status.success() && !both(&out).contains("53400"),
        "{}",
        both(&out)
    );
    assert_eq!(used(&s, &a), 30);
    let s = std::sync::Arc::new(s);
    let a = std::sync::Arc::new(a);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (s, a) = (s.clone(), a.clone());
            std::thread::spawn(move || {
                psql(
                    &a,
                    &s,
                    &s.racer,
                    "SELECT g FROM generate_series(1, 60) g;\n",
                )
            })
        })
        .collect();
    let mut rows = 0;
    let mut cut = 0;
    for h in handles {
        let out = h.join().unwrap();
        rows += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim().parse::<u32>().is_ok())
            .count();
        cut += usize::from(both(&out).contains("53400"));
    }
    assert!(rows <= 70, "{rows} rows for the 70 left");
    assert!(cut >= 7, "{rows} rows, {cut} cut");
    // The store holds what was sent (psql prints no row of a result that
    // ended in an error, so it may show fewer), never more than the limit.
    let total = used(&s, &a);
    assert!(
        total <= 100 && total as usize >= 30 + rows,
        "{total} used, {rows} shown"
    );
}

#[test]
fn distinct_tables_are_counted_across_sessions() {
    let (s, a, b) = setup();
    PgCluster::shared().psql_direct(
        "CREATE TABLE IF NOT EXISTS bt1 (x int); CREATE TABLE IF NOT EXISTS bt2 (x int); \
         CREATE TABLE IF NOT EXISTS bt3 (x int);",
    );
    let script = "SELECT count(*) FROM bt1;\nWITH c AS (SELECT 1) SELECT count(*) FROM bt2, c;\nSELECT count(*) FROM bt1;\nSELECT count(*) FROM bt3;\n";
    let out = psql(&a, &s, &s.explorer, script);
    let said = both(&out);
    assert_eq!(said.matches("53400").count(), 1, "{said}");
    assert!(
        said.contains("budget \"distinct tables per hour\""),
        "{said}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0\n0\n0",
        "{said}"
    );
    // The window is the principal's, on every gateway: a table seen
    // passes, a third does not.
    let out = psql(
        &b,
        &s,
        &s.explorer,
        "SELECT count(*) FROM bt2;\nSELECT count(*) FROM bt3;\n",
    );
    let said = both(&out);
    assert_eq!(said.matches("53400").count(), 1, "{said}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{said}");
}

#[test]
fn an_approver_lifts_a_rows_budget_for_one_psql_session() {
    let (s, a, _b) = setup();
    let s = std::sync::Arc::new(s);
    let a = std::sync::Arc::new(a);
    // Two rows per session: the first two pass; BEGIN and COMMIT return
    // no rows and ask no one; the next read waits for a person, who lifts
    // the limit for this session.
    let bg = {
        let (s, a) = (s.clone(), a.clone());
        std::thread::spawn(move || {
            let script = "SELECT g FROM generate_series(1, 2) g;\nBEGIN;\nCOMMIT;\nSELECT g FROM generate_series(3, 7) g;\n";
            let mut out = psql_db(&a, &s, &s.lifter, "db-lift", script);
            out.stdout.retain(|b| *b != b'\r');
            out
        })
    };
    let r = pending_lift(&a, &s);
    assert!(
        r["action"]
            .as_str()
            .unwrap()
            .starts_with("lift budget \"rows per session\""),
        "{r}"
    );
    decide(&a, &s, "approve", r["id"].as_str().unwrap());
    let out = bg.join().unwrap();
    let said = both(&out);
    assert!(!said.contains("53400"), "{said}");
    let rows: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.parse::<u32>().is_ok())
        .map(str::to_string)
        .collect();
    assert_eq!(rows, ["1", "2", "3", "4", "5", "6", "7"], "{said}");
}

/// What a delegated agent spends is kept under its person (minting agents
/// must not multiply a budget); asked for its own budgets, the agent is
/// shown that use, where it was shown its own name's (none: the last
/// stop's "left for later").
#[test]
fn a_delegated_agent_is_shown_the_use_counted_under_its_person() {
    let (s, a, _b) = setup();
    // A token alice minted for `agent:claude`, written to the store as the
    // gateway writes one (minting needs her sign-in at a provider).
    let secret = delegated_token(
        &s.store,
        "agent:claude@alice",
        "user:alice",
        &["testers".to_string()],
    );
    let out = psql(&a, &s, &secret, "SELECT generate_series(1, 3);\n");
    assert!(out.status.success(), "{}", both(&out));
    let rows = budget_shown(&a, &s, &secret, "readers", "rows");
    assert_eq!(rows["used"].as_u64(), Some(3), "{rows}");
    let show = budgets_show(&a, &s, &secret, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(v["principal"], "agent:claude@alice", "{v}");
    assert_eq!(v["counted_under"], "user:alice", "{v}");
    let text = both(&budgets_show(&a, &s, &secret, &[]));
    assert!(text.contains("counted under user:alice"), "{text}");
    assert!(text.contains(": 3 of 5"), "{text}");
}
