//! The MCP endpoint driven by real MCP clients: rmcp's client (the official
//! Rust SDK) and the official TypeScript SDK's client on Node.js, against
//! the real PostgreSQL of the suite and a real HTTPS target.

mod common;

use std::process::Command;

use common::pg::{PG_PASSWORD, PgCluster};
use common::upstream::{self, TestUpstream};
use common::*;
use portcullis_tls::CertificateAuthority;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

const API_CANARY: &str = "canary-mcp-api-key-93b1";
const EMAIL: &str = "grace.hopper@navy.example";

struct Setup {
    tmp: tempfile::TempDir,
    gw: Proc,
    ca: String,
    token: String,
    api: TestUpstream,
}

fn setup() -> Setup {
    let pg = PgCluster::shared();
    // Once per binary: concurrent CREATE TABLE IF NOT EXISTS can collide.
    static TABLE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        pg.psql_direct(&format!(
            "CREATE TABLE IF NOT EXISTS mcp_customers (id int primary key, name text, email text);
             INSERT INTO mcp_customers VALUES (1, 'Grace', '{EMAIL}') ON CONFLICT DO NOTHING;"
        ));
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    for stem in ["server", "api"] {
        write_leaf(&ca, dir, stem);
    }
    let api = upstream::start(&dir.join("api.pem"), &dir.join("api.key"));
    std::fs::write(dir.join("api-key"), API_CANARY).unwrap();
    std::fs::write(dir.join("pgpw"), PG_PASSWORD).unwrap();
    let pgurl = format!(
        "postgres://postgres@localhost:{}/postgres?sslrootcert={}",
        pg.port,
        pg.ca.display()
    );
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"

[[connections]]
name = "db-rw"
type = "postgres"
url = "{pgurl}"
password = "file:pgpw"

[[connections]]
name = "db-ro"
type = "postgres"
url = "{pgurl}"
password = "file:pgpw"
access = "read-only"

[[connections]]
name = "secret-db"
type = "postgres"
url = "{pgurl}"
password = "file:pgpw"

[[connections]]
name = "api"
type = "http"
url = "https://localhost:{api}"
ca_file = "ca.pem"
credential = {{ header = "x-api-key", secret = "file:api-key" }}

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["db-rw", "db-ro", "api"]

[[masking.rules]]
name = "pii"
connections = ["*"]
actions = {{ email = {{ action = "partial", keep_domain = true }} }}
[[masking.rules.fields]]
columns = ["mcp_customers.name"]
[[masking.rules.fields]]
keys = ["api_key"]
"#,
        api = api.port,
    );
    let (gw, token) = gateway_with_config(dir, &config);
    Setup {
        ca: dir.join("ca.pem").to_str().unwrap().to_string(),
        tmp,
        gw,
        token,
        api,
    }
}

fn text_of(r: &CallToolResult) -> String {
    serde_json::to_value(&r.content)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["text"].as_str().map(str::to_string))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn call(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    name: &'static str,
    args: Value,
) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(name).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn rust_mcp_client_end_to_end() {
    // Setup starts its own runtimes (test target, cluster): outside ours.
    let s = setup();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(rust_client(&s));
}

async fn rust_client(s: &Setup) {
    let transport = StreamableHttpClientTransport::with_client(
        https_client(&s.ca),
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", s.gw.url))
            .auth_header(s.token.clone()),
    );
    let client = ().serve(transport).await.expect("MCP initialize");

    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "list_connections",
            "sql_query",
            "http_request",
            "describe_schema"
        ]
    );

    // Only granted connections are listed, with type and access.
    let r = call(&client, "list_connections", json!({})).await;
    let conns = r.structured_content.clone().unwrap();
    let listed: Vec<_> = conns["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["access"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        listed.contains(&("db-ro".into(), "read-only".into())),
        "{listed:?}"
    );
    assert!(listed.iter().any(|(n, _)| n == "api"));
    assert!(!listed.iter().any(|(n, _)| n == "secret-db"));

    // Schema, for planning.
    let r = call(
        &client,
        "describe_schema",
        json!({"connection": "db-rw", "schema": "public"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{}", text_of(&r));
    assert!(
        text_of(&r).contains("public.mcp_customers"),
        "{}",
        text_of(&r)
    );
    assert!(text_of(&r).contains("email text"), "{}", text_of(&r));

    // A query: rows come back masked, as text and structured content.
    let r = call(
        &client,
        "sql_query",
        json!({"connection": "db-rw", "sql": "SELECT id, name, email FROM mcp_customers ORDER BY id"}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{}", text_of(&r));
    let body = serde_json::to_string(&r).unwrap();
    assert!(!body.contains(EMAIL), "unmasked email in {body}");
    assert!(body.contains("@navy.example"), "{body}");
    let sc = r.structured_content.clone().unwrap();
    assert_eq!(sc["columns"], json!(["id", "name", "email"]));
    assert_eq!(sc["rows"][0][1], "[NAME]", "a table.column rule");

    // The same masker as the wire protocol: the rule follows the column's
    // source through an alias, a computed output and a whole row.
    for sql in [
        "SELECT name AS n FROM mcp_customers",
        "SELECT upper(name) FROM mcp_customers",
        "SELECT row_to_json(c) FROM mcp_customers c",
    ] {
        let r = call(
            &client,
            "sql_query",
            json!({"connection": "db-rw", "sql": sql}),
        )
        .await;
        let body = serde_json::to_string(&r).unwrap();
        assert_ne!(r.is_error, Some(true), "{sql}: {body}");
        assert!(!body.to_lowercase().contains("grace"), "{sql}: {body}");
    }

    // Row limit.
    let r = call(
        &client,
        "sql_query",
        json!({"connection": "db-rw", "sql": "SELECT g FROM generate_series(1, 10) g", "max_rows": 3}),
    )
    .await;
    let sc = r.structured_content.clone().unwrap();
    assert_eq!(sc["rows"].as_array().unwrap().len(), 3);
    assert_eq!(sc["row_count"], 10);
    assert_eq!(sc["truncated"], true);

    // Timeout, enforced by the target.
    let r = call(
        &client,
        "sql_query",
        json!({"connection": "db-rw", "sql": "SELECT pg_sleep(5)", "timeout_ms": 300}),
    )
    .await;
    assert_eq!(r.is_error, Some(true));
    assert!(text_of(&r).contains("57014"), "{}", text_of(&r));

    // A write on a read-only connection is refused before it is sent.
    let r = call(
        &client,
        "sql_query",
        json!({"connection": "db-ro", "sql": "DELETE FROM mcp_customers"}),
    )
    .await;
    assert_eq!(r.is_error, Some(true));
    assert!(text_of(&r).contains("read-only"), "{}", text_of(&r));
    assert_eq!(
        PgCluster::shared().psql_direct("SELECT count(*) FROM mcp_customers"),
        "1"
    );
    // …and so is a second statement smuggled after a read (one statement
    // per call, as the schema says: an invalid-params error).
    let err = client
        .call_tool(
            CallToolRequestParams::new("sql_query").with_arguments(
                json!({"connection": "db-ro", "sql": "SELECT 1; SET default_transaction_read_only = off"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("one statement per call"), "{err}");

    // No grant, no call.
    let r = call(
        &client,
        "sql_query",
        json!({"connection": "secret-db", "sql": "SELECT 1"}),
    )
    .await;
    assert_eq!(r.is_error, Some(true));
    assert!(text_of(&r).contains("agent:tester"), "{}", text_of(&r));

    // An API call: the gateway adds the credential; the caller never sees it.
    let r = call(
        &client,
        "http_request",
        json!({"connection": "api", "path": "/things", "query": {"q": "x y"}}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{}", text_of(&r));
    assert_eq!(r.structured_content.clone().unwrap()["status"], 200);
    let seen = s.api.last();
    assert_eq!(seen.header("x-api-key"), Some(API_CANARY));
    assert_eq!(seen.path_and_query, "/things?q=x+y");
    assert!(seen.header("authorization").is_none());
    assert!(!serde_json::to_string(&r).unwrap().contains(API_CANARY));
    // A target echoing the key in JSON escapes: the parsed body shows it
    // overwritten (review: reading the JSON undid the escapes the scrubber
    // had not seen through).
    let r = call(
        &client,
        "http_request",
        json!({"connection": "api", "path": "/echo.json"}),
    )
    .await;
    let body = &r.structured_content.clone().unwrap()["body"];
    // Each `\u0073` of the raw bytes overwritten where it was read.
    assert_eq!(body["key"], "*".repeat(6 * API_CANARY.len()), "{body}");
    assert!(!serde_json::to_string(&r).unwrap().contains(API_CANARY));
    // Nor in the text the model reads (re-review: it showed the escapes).
    let escaped: String = API_CANARY.bytes().map(|b| format!("\\u{b:04x}")).collect();
    assert!(!text_of(&r).contains(&escaped), "{}", text_of(&r));
    assert!(
        text_of(&r).contains(&"*".repeat(API_CANARY.len())),
        "{}",
        text_of(&r)
    );
    // Path tricks are refused as malformed arguments.
    let err = client
        .call_tool(
            CallToolRequestParams::new("http_request").with_arguments(
                json!({"connection": "api", "path": "/a/../admin"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await;
    assert!(err.is_err(), "{err:?}");

    client.cancel().await.ok();

    // Every call is a session of the principal, in the audit log and the
    // recordings; secrets are nowhere in the gateway's files.
    let cfg = s.tmp.path().join("portcullis.toml");
    let out = Command::new(BIN)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "sessions",
            "list",
            "--json",
        ])
        .output()
        .unwrap();
    let sessions = String::from_utf8_lossy(&out.stdout).to_string();
    let mcp: Vec<Value> = sessions
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["protocol"] == "mcp")
        .collect();
    assert!(mcp.len() >= 5, "{sessions}");
    assert!(mcp.iter().all(|v| v["principal"] == "agent:tester"));
    let select = mcp
        .iter()
        .find(|v| v["connection"] == "db-rw" && v["outcome"] == "ok")
        .unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "replay", "--json"])
        .arg(select["id"].as_str().unwrap())
        .output()
        .unwrap();
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(replay.contains("pg_query"), "{replay}");
    assert!(!replay.contains(EMAIL));
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "audit", "verify"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (path, bytes) in all_files(s.tmp.path()) {
        if path.ends_with("api-key") || path.ends_with("pgpw") || path.ends_with("portcullis.toml")
        {
            continue;
        }
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
        assert!(
            !contains(&bytes, EMAIL),
            "unmasked email in {}",
            path.display()
        );
    }
}

/// A tool call already running when its token is revoked is stopped
/// within about a second, with the reason, and its session ends as
/// `credential_ended` (not after the query would have finished).
#[test]
fn a_running_tool_call_stops_when_its_token_is_revoked() {
    let s = setup();
    let cfg = s.tmp.path().join("portcullis.toml");
    let out = cli_at(
        &cfg,
        &[
            "token",
            "create",
            "--principal",
            "agent:doomed",
            "--group",
            "testers",
            "--json",
        ],
    );
    let (token, id) = created_token(&out);
    let marker = format!("portcullis_mcp_revoked_{}", std::process::id());
    let sql = format!("SELECT pg_sleep(20) AS {marker}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (stopped_after, text) = rt.block_on(async {
        let transport = StreamableHttpClientTransport::with_client(
            https_client(&s.ca),
            StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", s.gw.url))
                .auth_header(token),
        );
        let client = ().serve(transport).await.expect("MCP initialize");
        let cfg = cfg.clone();
        let revoke = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            let out = tokio::task::spawn_blocking(move || cli_at(&cfg, &["token", "revoke", &id]))
                .await
                .unwrap();
            assert!(out.status.success());
            std::time::Instant::now()
        });
        let r = call(
            &client,
            "sql_query",
            json!({"connection": "db-rw", "sql": sql, "timeout_ms": 30000}),
        )
        .await;
        let ended = std::time::Instant::now();
        let revoked_at = revoke.await.unwrap();
        assert_eq!(r.is_error, Some(true), "{}", text_of(&r));
        (ended.duration_since(revoked_at), text_of(&r))
    });
    assert!(text.contains("revoked"), "{text}");
    assert!(
        stopped_after < std::time::Duration::from_secs(3),
        "stopped {stopped_after:?} after the revocation"
    );
    // And on the target: the statement is cancelled, not left to run its
    // 20 s (a re-review found statements outliving their callers).
    PgCluster::shared().wait_running(
        &marker,
        0,
        5,
        "the revoked call's statement still runs on the target",
    );
    let audit = String::from_utf8_lossy(&cli_at(&cfg, &["audit", "export"]).stdout).to_string();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("session_end") && l.contains("credential_ended")),
        "{audit}"
    );
}

/// A tool call whose caller goes away (curl, cut off mid-call) stops:
/// its statement is cancelled on the target rather than left running to
/// its `timeout_ms` for no one, and its session ends as `caller_gone`.
#[test]
fn a_tool_call_stops_when_its_caller_goes_away() {
    let s = setup();
    let marker = format!("portcullis_mcp_gone_{}", std::process::id());
    let call = sleeping_call(&marker);
    let mut curl = Command::new("curl")
        .args(["-sS", "--cacert", &s.ca, "-H"])
        .arg(format!("authorization: Bearer {}", s.token))
        .args([
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-H",
            "mcp-protocol-version: 2025-06-18",
            "--data-binary",
        ])
        .arg(call)
        .arg(format!("{}/mcp", s.gw.url))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("curl runs");
    let pg = PgCluster::shared();
    pg.wait_running(&marker, 1, 15, "the call's statement never started");
    curl.kill().unwrap();
    curl.wait().unwrap();
    pg.wait_running(
        &marker,
        0,
        5,
        "the statement of a call whose caller went away still runs on the target",
    );
    let cfg = s.tmp.path().join("portcullis.toml");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while caller_gone_ends(&cfg) == 0 {
        assert!(
            std::time::Instant::now() < until,
            "no session ended caller_gone"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A JSON-RPC `sql_query` call that sleeps 30 s, marked for
/// `pg_stat_activity`.
fn sleeping_call(marker: &str) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "sql_query",
            "arguments": {
                "connection": "db-rw",
                "sql": format!("SELECT pg_sleep(30) AS {marker}"),
                "timeout_ms": 60000,
            },
        },
    })
    .to_string()
}

/// How many sessions the audit log shows ended `caller_gone`.
fn caller_gone_ends(cfg: &std::path::Path) -> usize {
    let audit = String::from_utf8_lossy(&cli_at(cfg, &["audit", "export"]).stdout).to_string();
    audit
        .lines()
        .filter(|l| l.contains("session_end") && l.contains("caller_gone"))
        .count()
}

/// The same with a second request pipelined behind the call (openssl
/// s_client writing both, then cut off): hyper reads no further while
/// the call runs, so only the socket's hang-up tells (a review kept such
/// statements running to their timeout).
#[test]
fn a_tool_call_stops_when_a_pipelining_caller_goes_away() {
    use std::io::Write;
    let s = setup();
    let marker = format!("portcullis_mcp_piped_{}", std::process::id());
    let call = sleeping_call(&marker);
    let addr =
        s.gw.url
            .trim_start_matches("https://")
            .replace("localhost", "127.0.0.1");
    let head = |len: usize| {
        format!(
            "POST /mcp HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
             mcp-protocol-version: 2025-06-18\r\ncontent-length: {len}\r\n\r\n",
            s.token
        )
    };
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &addr,
            "-servername",
            "localhost",
            "-CAfile",
            &s.ca,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl runs");
    let mut stdin = client.stdin.take().unwrap();
    // The call, then the start of a second request in the same write.
    let piped = format!("{}{call}{}", head(call.len()), &head(100)[..40]);
    stdin.write_all(piped.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let pg = PgCluster::shared();
    pg.wait_running(&marker, 1, 15, "the call's statement never started");
    client.kill().unwrap();
    client.wait().unwrap();
    pg.wait_running(
        &marker,
        0,
        5,
        "the statement of a pipelining caller that went away still runs on the target",
    );
}

#[test]
fn typescript_sdk_client_and_refusals() {
    let s = setup();
    common::idp::ensure_packages();
    let client = |token: &str, steps: &[&str]| -> Vec<Value> {
        let out = Command::new("node")
            .arg(common::idp::harness_dir().join("mcp-client.mjs"))
            .arg(format!("{}/mcp", s.gw.url))
            .arg(token)
            .args(steps)
            .env("NODE_EXTRA_CA_CERTS", &s.ca)
            .output()
            .expect("node runs the MCP SDK client");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let out = client(
        &s.token,
        &[
            "list",
            "call",
            "sql_query",
            r#"{"connection": "db-ro", "sql": "SELECT email FROM mcp_customers"}"#,
        ],
    );
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0]["tools"].as_array().unwrap().len(), 4);
    assert_eq!(out[1]["isError"], false, "{}", out[1]);
    let text = out[1].to_string();
    assert!(
        text.contains("@navy.example") && !text.contains(EMAIL),
        "{text}"
    );

    // Unauthenticated: refused by the gateway, in JSON, before MCP.
    let out = client(
        "pcl_not-a-real-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        &["list"],
    );
    let err = out[0]["client_error"].as_str().unwrap_or_default();
    assert!(err.contains("unauthenticated"), "{out:?}");
    let r = curl(&[
        "--cacert",
        &s.ca,
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        &format!("{}/mcp", s.gw.url),
    ]);
    assert_eq!(
        r.status,
        401,
        "curl exit {} body {:?} stderr {:?}\ngateway log:\n{}",
        r.curl_exit,
        r.body,
        r.stderr,
        s.gw.logs()
    );
}

#[test]
fn mcp_proxy_filters_pins_and_masks_upstream_tools() {
    let s = setup();
    let dir = s.tmp.path();
    let up_key = "canary-upstream-mcp-key-7d2e";
    let up = mcp_upstream(dir, up_key);
    std::fs::write(dir.join("up-key"), up_key).unwrap();
    // Add the MCP connection to the running setup's config and restart.
    let cfg_path = dir.join("portcullis.toml");
    let mut cfg = std::fs::read_to_string(&cfg_path).unwrap();
    cfg.push_str(&format!(
        r#"
[[connections]]
name = "directory"
type = "mcp"
url = "https://localhost:{port}/mcp"
ca_file = "ca.pem"
credential = {{ header = "x-upstream-key", secret = "file:up-key" }}
tools_deny = ["delete_*"]

[[connections]]
name = "directory-held"
type = "mcp"
url = "https://localhost:{port}/mcp"
ca_file = "ca.pem"
credential = {{ header = "x-upstream-key", secret = "file:up-key" }}
approval = {{ mode = "statements", tools = ["search"], approvers = ["approvers"], wait = "1s" }}

[[connections]]
name = "directory-stateful"
type = "mcp"
url = "https://localhost:{port}/stateful/mcp"
ca_file = "ca.pem"
credential = {{ header = "x-upstream-key", secret = "file:up-key" }}

[[connections]]
name = "directory-jit"
type = "mcp"
url = "https://localhost:{port}/mcp"
ca_file = "ca.pem"
credential = {{ header = "x-upstream-key", secret = "file:up-key" }}
approval = {{ mode = "session", approvers = ["approvers"], session = "1h", wait = "1s" }}

[[grants]]
name = "directory-users"
groups = ["testers"]
connections = ["directory", "directory-held", "directory-jit", "directory-stateful"]

[[connections]]
name = "directory-metered"
type = "mcp"
url = "https://localhost:{port}/mcp"
ca_file = "ca.pem"
credential = {{ header = "x-upstream-key", secret = "file:up-key" }}

[[grants]]
name = "directory-metered"
groups = ["testers"]
connections = ["directory-metered"]
budgets = [{{ bytes = 1, per = "hour" }}]
"#,
        port = up.port
    ));
    std::fs::write(&cfg_path, cfg).unwrap();
    drop(s.gw);
    let gw = Proc::spawn(
        dir,
        &["--config", cfg_path.to_str().unwrap(), "gateway"],
        "gateway2.log",
    );
    let url = format!("{}/c/directory/", gw.url);

    // A caller no grant reaches `directory` with cannot tell it is an MCP
    // connection, or a connection at all: refused word for word as for a
    // name nothing has (a re-review told MCP names by the body's shape).
    let out = cli_at(
        &cfg_path,
        &["token", "create", "--principal", "agent:outsider"],
    );
    let outsider = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let refused: Vec<(u16, String)> = ["directory", "nowhere", "api"]
        .iter()
        .map(|name| {
            let r = get(&gw.url, &s.ca, Some(&outsider), &format!("/c/{name}/mcp"));
            (r.status, r.body.replace(name, "NAME"))
        })
        .collect();
    assert_eq!(refused[0].0, 403, "{refused:?}");
    assert!(refused.iter().all(|r| r == &refused[0]), "{refused:?}");

    let client_at = |url: &str, steps: &[&str]| -> Vec<Value> {
        let out = Command::new("node")
            .arg(common::idp::harness_dir().join("mcp-client.mjs"))
            .arg(url)
            .arg(&s.token)
            .args(steps)
            .env("NODE_EXTRA_CA_CERTS", &s.ca)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let client = |steps: &[&str]| client_at(&url, steps);
    let upstream_calls = || -> String {
        curl(&[
            "--cacert",
            &s.ca,
            "-H",
            &format!("x-upstream-key: {up_key}"),
            &format!("https://localhost:{}/calls", up.port),
        ])
        .body
    };

    // Denied tools are hidden and refused; results are masked.
    let out = client(&[
        "list",
        "call",
        "search",
        r#"{"q": "ada"}"#,
        "call",
        "delete_everything",
        "{}",
    ]);
    assert_eq!(
        out[0]["tools"],
        json!(["search", "notify", "fail", "record", "files"]),
        "{out:?}"
    );
    let found = out[1].to_string();
    assert!(
        found.contains("@example.com") && !found.contains("ada.lovelace@"),
        "{found}"
    );
    let refused = out[2]["error"].as_str().unwrap_or_default();
    assert!(refused.contains("not allowed"), "{out:?}");
    assert_eq!(
        upstream_calls(),
        "1",
        "the denied call reached the upstream"
    );

    // Side doors (issue 17), as raw JSON-RPC.
    let rpc_at = |url: &str, body: &str| {
        curl(&[
            "--cacert",
            &s.ca,
            "-H",
            &format!("authorization: Bearer {}", s.token),
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-H",
            "mcp-protocol-version: 2025-06-18",
            "--data-binary",
            body,
            url,
        ])
    };
    let rpc = |body: &str| rpc_at(&url, body);
    // A call and a list sharing an id: refused (the answer would be read
    // as the list's, and pass unmasked).
    let r = rpc(
        r#"[{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"q":"a"}}},{"jsonrpc":"2.0","id":7,"method":"tools/list"}]"#,
    );
    assert!(r.body.contains("appears twice"), "{r:?}");
    assert!(!r.body.contains("ada.lovelace@"), "{r:?}");
    // A denied tool called as a notification (no id): refused.
    let r = rpc(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_everything"}}"#);
    assert_eq!(r.status, 403, "{r:?}");
    // A duplicate key: the gateway forwards what it checked.
    let r = rpc(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/list","method":"tools/call","params":{"name":"delete_everything","arguments":{}}}"#,
    );
    assert!(r.body.contains("not allowed"), "{r:?}");
    assert_eq!(upstream_calls(), "1", "a refused call reached the upstream");
    // Server notifications and a failing tool's message: masked.
    let r = rpc(
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notify","arguments":{}}}"#,
    );
    assert!(
        r.body.contains("looked up") && !r.body.contains("grace.hopper@"),
        "{r:?}"
    );
    let r = rpc(
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"fail","arguments":{}}}"#,
    );
    assert!(
        r.body.contains("no access") && !r.body.contains("grace.hopper@"),
        "{r:?}"
    );
    assert_eq!(upstream_calls(), "3");

    // Found in review: ids the gateway kept apart and the server read as
    // one (`1.0` and `1`) made a tool's result the answer to `tools/list`,
    // which is not masked. The server sees ids of the gateway's own; the
    // caller gets its own back.
    let r = rpc(
        r#"[{"jsonrpc":"2.0","id":1.0,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}},{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search","arguments":{"q":"y"}}}]"#,
    );
    assert!(r.body.contains("@example.com"), "{r:?}");
    assert!(
        !r.body.contains("ada.lovelace@") && !r.body.contains("portcullis-"),
        "{r:?}"
    );
    assert_eq!(upstream_calls(), "5");
    // JSON a tool writes into its text is masked by key, as
    // structuredContent is (review: `api_key` came back in the text).
    let r = rpc(
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"record","arguments":{}}}"#,
    );
    assert!(
        r.body.contains("Ada") && !r.body.contains("zz-canary-key"),
        "{r:?}"
    );
    assert_eq!(upstream_calls(), "6");
    // Files (base64) and tables carry values too (second review): text
    // decoded is masked, a file naming a key and binary the rule does not
    // pass are withheld, a CSV naming a key is withheld.
    let r = rpc(
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"files","arguments":{}}}"#,
    );
    assert!(!r.body.contains("zz-canary-key"), "{r:?}");
    let answer: Value = r
        .body
        .lines()
        .find_map(|l| serde_json::from_str(l.strip_prefix("data: ").unwrap_or(l)).ok())
        .unwrap_or_else(|| panic!("no answer: {r:?}"));
    let content = &answer["result"]["content"];
    assert_eq!(content[0]["resource"]["blob"], "", "{answer}");
    assert_eq!(content[1]["data"], "", "{answer}");
    assert!(
        !content[2]["text"]
            .as_str()
            .unwrap_or("")
            .contains("zz-canary"),
        "{answer}"
    );
    assert_eq!(upstream_calls(), "7");
    // The server's endpoint, whatever path or query a client puts after
    // the connection's name (`/c/NAME/mcp` included): the path is not
    // forwarded (review: it was, with the credential).
    let r = rpc_at(
        &format!("{url}other/endpoint?x=1"),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert!(r.body.contains("\"search\""), "{r:?}");
    // Only POST carries JSON-RPC: a PUT's body is not run unchecked.
    let put = curl(&[
        "--cacert",
        &s.ca,
        "-X",
        "PUT",
        "-H",
        &format!("authorization: Bearer {}", s.token),
        "-H",
        "content-type: application/json",
        "--data-binary",
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"delete_everything"}}"#,
        &url,
    ]);
    assert_eq!(put.status, 405, "{put:?}");
    assert_eq!(upstream_calls(), "7");
    // Just-in-time access holds every request, not only tool calls.
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"secret://customer"}}"#,
    ] {
        let r = rpc_at(&format!("{}/c/directory-jit/", gw.url), body);
        assert!(r.body.contains("not decided"), "{r:?}");
        assert!(!r.body.contains("\"tools\""), "{r:?}");
    }
    // Where calls are held or counted, a batch of them is refused whole
    // before any approval or budget is spent (review).
    let r = rpc_at(
        &format!("{}/c/directory-held/", gw.url),
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"a"}}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search","arguments":{"q":"a"}}}]"#,
    );
    assert!(r.body.contains("one at a time"), "{r:?}");
    // A DELETE (ending a session) waits for the grant too (review).
    let del = curl(&[
        "--cacert",
        &s.ca,
        "-X",
        "DELETE",
        "-H",
        &format!("authorization: Bearer {}", s.token),
        &format!("{}/c/directory-jit/", gw.url),
    ]);
    assert!(del.body.contains("not decided"), "{del:?}");

    // The server's session id is sealed to the caller and connection it
    // was given to: another principal holding it, the bare id, or a
    // forged seal get 404 (review: it was passed through as it was).
    let stateful = format!("{}/c/directory-stateful/", gw.url);
    let post = |token: &str, session: Option<&str>, body: &str| {
        let auth = format!("authorization: Bearer {token}");
        let sid = session.map(|s| format!("mcp-session-id: {s}"));
        let mut args = vec![
            "--cacert",
            &s.ca,
            "-D",
            "-",
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-H",
            "mcp-protocol-version: 2025-06-18",
            "--data-binary",
            body,
        ];
        if let Some(sid) = &sid {
            args.extend(["-H", sid.as_str()]);
        }
        args.push(&stateful);
        curl(&args)
    };
    let init = post(
        &s.token,
        None,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    let sealed = init
        .body
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: "))
        .unwrap_or_else(|| panic!("no session id: {init:?}"))
        .trim()
        .to_string();
    let (bare, _) = sealed.rsplit_once('.').unwrap();
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let own = post(&s.token, Some(&sealed), list);
    assert!(own.body.contains("\"search\""), "{own:?}");
    let other = common::cli_at(
        &cfg_path,
        &[
            "token",
            "create",
            "--principal",
            "agent:other",
            "--group",
            "testers",
        ],
    );
    let other = String::from_utf8(other.stdout).unwrap().trim().to_string();
    let forged = format!("{bare}.{}", "0".repeat(64));
    for (token, sid) in [
        (&other, sealed.as_str()),
        (&s.token, bare),
        (&s.token, &forged),
    ] {
        let r = post(token, Some(sid), list);
        assert!(
            r.body.contains("session_not_found") && !r.body.contains("\"search\""),
            "{r:?}"
        );
    }
    // The seal's key is the store's: another gateway on the same store
    // (behind the same address) opens it, and a forged one still not.
    let other_gw = Proc::spawn(
        dir,
        &["--config", cfg_path.to_str().unwrap(), "gateway"],
        "gateway-other.log",
    );
    let there = format!("{}/c/directory-stateful/", other_gw.url);
    for (sid, opens) in [(sealed.as_str(), true), (forged.as_str(), false)] {
        let r = curl(&[
            "--cacert",
            &s.ca,
            "-H",
            &format!("authorization: Bearer {}", s.token),
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-H",
            "mcp-protocol-version: 2025-06-18",
            "-H",
            &format!("mcp-session-id: {sid}"),
            "--data-binary",
            list,
            &there,
        ]);
        assert_eq!(r.body.contains("\"search\""), opens, "{r:?}");
    }
    drop(other_gw);

    // A bytes budget covers a proxied server's answers too: one larger
    // than what is left is refused whole (429), nothing of it handed over.
    let metered = rpc_at(
        &format!("{}/c/directory-metered/", gw.url),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    );
    assert_eq!(metered.status, 429, "{metered:?}");
    assert!(
        metered.body.contains("budget_exceeded")
            && metered.body.contains("bytes per hour")
            && !metered.body.contains("search"),
        "{metered:?}"
    );

    // An approval rule on an MCP connection holds the tools it names: no
    // one approves within its wait, so the call is refused and never
    // reaches the upstream; a tool it does not name runs.
    let held_url = format!("{}/c/directory-held/", gw.url);
    let out = client_at(
        &held_url,
        &[
            "list",
            "call",
            "search",
            r#"{"q": "held"}"#,
            "call",
            "notify",
            "{}",
        ],
    );
    let refused = out[1]["error"].as_str().unwrap_or_default();
    assert!(refused.contains("not decided"), "{out:?}");
    assert_ne!(out[2]["isError"], true, "{out:?}");
    assert_eq!(upstream_calls(), "8", "only the call not held ran");

    // The upstream changes a tool's description: it is held.
    let r = curl(&[
        "--cacert",
        &s.ca,
        "-X",
        "POST",
        "-H",
        &format!("x-upstream-key: {up_key}"),
        &format!("https://localhost:{}/bump", up.port),
    ]);
    assert_eq!(r.body, "bumped");
    let out = client(&["list", "call", "search", r#"{"q": "x"}"#]);
    assert_eq!(
        out[0]["tools"],
        json!(["notify", "fail", "record", "files"]),
        "{out:?}"
    );
    assert!(
        out[1]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("changed its definition"),
        "{out:?}"
    );
    assert_eq!(upstream_calls(), "8");
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(["--config", cfg_path.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let tools = String::from_utf8_lossy(
        &cli(&["mcp", "tools", "--connection", "directory", "--json"]).stdout,
    )
    .to_string();
    assert!(tools.contains("\"state\":\"held\""), "{tools}");

    // A person approves the change: the tool is back.
    let out = cli(&[
        "mcp",
        "approve",
        "--connection",
        "directory",
        "--tool",
        "search",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = client(&["list", "call", "search", r#"{"q": "y"}"#]);
    assert_eq!(
        out[0]["tools"],
        json!(["search", "notify", "fail", "record", "files"]),
        "{out:?}"
    );
    assert_ne!(out[1]["isError"], true, "{out:?}");
    assert!(
        out[1].to_string().contains("found ***@example.com for y"),
        "{out:?}"
    );
    assert_eq!(upstream_calls(), "9");

    // A client that leaves mid-call does not leave its session open: it
    // ends `caller_gone`, its recording sealed (a review found such
    // sessions open, unsealed, until the gateway's next start).
    let gone = || caller_gone_ends(&cfg_path);
    let before = gone();
    let mut slow = Command::new("curl")
        .args(["-sS", "--cacert", &s.ca, "-H"])
        .arg(format!("authorization: Bearer {}", s.token))
        .args([
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "--data-binary",
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"search","arguments":{"q":"slow"}}}"#,
            &url,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("curl runs");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while upstream_calls() != "10" {
        assert!(
            std::time::Instant::now() < until,
            "the slow call never reached the upstream"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    slow.kill().unwrap();
    slow.wait().unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gone() != before + 1 {
        assert!(
            std::time::Instant::now() < until,
            "the session of a proxied call whose client left was not ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let listed = String::from_utf8_lossy(&cli(&["sessions", "list"]).stdout).to_string();
    assert!(
        !listed
            .lines()
            .any(|l| l.contains("directory") && l.contains("open")),
        "{listed}"
    );

    let audit = String::from_utf8_lossy(&cli(&["audit", "export"]).stdout).to_string();
    for action in ["mcp_tool_pinned", "mcp_tool_changed", "mcp_tool_approved"] {
        assert!(audit.contains(action), "{action} missing");
    }
    assert!(!gw.logs().contains(up_key));
    for (path, bytes) in all_files(dir) {
        if path.ends_with("up-key") || path.ends_with("mcp-upstream.log") {
            continue;
        }
        assert!(
            !contains(&bytes, up_key),
            "upstream key in {}",
            path.display()
        );
        assert!(
            !contains(&bytes, "ada.lovelace@example.com"),
            "unmasked in {}",
            path.display()
        );
    }
}

/// A hostile server's answers carry data wherever a message has room for
/// it; a review found each of these passing a key rule's value or an
/// address (2026-12-05): an `initialize`'s instructions and `_meta`; a
/// tool list's descriptions, `_meta` and `nextCursor`; an SSE event framed
/// with lone CRs (the official SDK client read the value); an SSE `id:`
/// line; a member JSON-RPC does not define. And a listed tool whose
/// annotations or title change is flagged (hidden) as a changed
/// description is.
#[test]
fn a_hostile_servers_answers_are_masked_wherever_they_carry_data() {
    let s = setup();
    let dir = s.tmp.path();
    let up_key = "canary-hostile-mcp-key-41c9";
    let secret = "zz-canary-key-4410";
    let up = mcp_hostile_upstream(dir, up_key, EMAIL, secret);
    std::fs::write(dir.join("up-key"), up_key).unwrap();
    let cfg_path = dir.join("portcullis.toml");
    let mut cfg = std::fs::read_to_string(&cfg_path).unwrap();
    cfg.push_str(&format!(
        r#"
[[connections]]
name = "hostile"
type = "mcp"
url = "https://localhost:{port}/mcp"
ca_file = "ca.pem"
credential = {{ header = "x-upstream-key", secret = "file:up-key" }}

[[grants]]
name = "hostile-users"
groups = ["testers"]
connections = ["hostile"]
"#,
        port = up.port
    ));
    std::fs::write(&cfg_path, cfg).unwrap();
    drop(s.gw);
    let gw = Proc::spawn(
        dir,
        &["--config", cfg_path.to_str().unwrap(), "gateway"],
        "gateway2.log",
    );
    let url = format!("{}/c/hostile/mcp", gw.url);
    let auth = format!("Authorization: Bearer {}", s.token);
    let rpc = |id: u32, method: &str, params: Value| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let r = curl(&[
            "--cacert",
            &s.ca,
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-d",
            &body.to_string(),
            &url,
        ]);
        assert_eq!(r.status, 200, "{method}: {} {}", r.body, r.stderr);
        assert!(
            !r.body.contains(secret) && !r.body.contains("grace.hopper"),
            "{method} {params}: {}",
            r.body
        );
        r.body
    };
    rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
    );
    let first = rpc(2, "tools/list", json!({}));
    assert!(first.contains("\"rug\""), "{first}");
    // Listed again with `readOnlyHint` flipped and a new title: held.
    let second = rpc(3, "tools/list", json!({}));
    assert!(!second.contains("\"rug\""), "{second}");
    for tool in ["crsse", "othersse", "extra"] {
        let body = rpc(4, "tools/call", json!({"name": tool, "arguments": {}}));
        assert!(body.contains("ok"), "{tool}: {body}");
    }
    // What is not JSON-RPC is answered in JSON-RPC, with 400 (review: the
    // gateway's own error shape, and `[]` or `42` were forwarded).
    for (body, code) in [
        ("{", -32700),
        ("[]", -32600),
        ("42", -32600),
        (
            r#"{"jsonrpc":"2.0","id":{"a":[1]},"method":"ping"}"#,
            -32600,
        ),
        (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, -32600),
    ] {
        let r = curl(&[
            "--cacert",
            &s.ca,
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-d",
            body,
            &url,
        ]);
        assert_eq!(r.status, 400, "{body}: {r:?}");
        let j = r.json();
        assert_eq!(j["error"]["code"], code, "{body}: {j}");
        assert_eq!(j["id"], Value::Null, "{body}: {j}");
    }
    rpc(5, "ping", json!({}));
}
