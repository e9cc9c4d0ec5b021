//! The gateway as the OAuth 2.1 authorization server of MCP clients,
//! against real parts: the official TypeScript SDK's client with its OAuth
//! provider, the suite's OpenID provider (oidc-provider) signing the
//! person in, curl playing the person's browser, the real PostgreSQL and a
//! real upstream MCP server. Each refusal the RFCs name is tried the way a
//! hostile client would.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::idp::{self, Idp};
use common::pg::{PG_PASSWORD, PgCluster};
use common::*;
use portcullis_tls::CertificateAuthority;
use serde_json::Value;

/// The gateway's client secret at the OpenID provider: must never appear
/// in a log, an audit entry or a page.
const GW_SECRET: &str = "canary-gateway-idp-secret-5c1e";
const UP_KEY: &str = "canary-oauth-upstream-key-8a2f";
/// A loopback redirect URI nothing listens on: the "browser" stops there.
const REDIRECT: &str = "http://127.0.0.1:9/callback";

struct Setup {
    tmp: tempfile::TempDir,
    gw: Proc,
    /// The gateway's CA, and a bundle trusting it and the provider.
    ca: String,
    bundle: String,
    _idp: Idp,
    _up: McpUpstream,
    _api: common::upstream::TestUpstream,
}

fn setup() -> Setup {
    let pg = PgCluster::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let idp = Idp::start_for_gateway(dir, "alice", "dba", GW_SECRET);
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    write_leaf(&ca, dir, "server");
    write_leaf(&ca, dir, "api");
    let up = mcp_upstream(dir, UP_KEY);
    let api = common::upstream::start(&dir.join("api.pem"), &dir.join("api.key"));
    std::fs::write(dir.join("up-key"), UP_KEY).unwrap();
    std::fs::write(dir.join("pgpw"), PG_PASSWORD).unwrap();
    let bundle = dir.join("bundle.pem");
    let pem = |p: &Path| std::fs::read_to_string(p).unwrap();
    std::fs::write(&bundle, pem(&dir.join("ca.pem")) + &pem(&idp.ca)).unwrap();
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
name = "db"
type = "postgres"
url = "postgres://postgres@localhost:{pgport}/postgres?sslrootcert={pgca}"
password = "file:pgpw"

[[connections]]
name = "docs"
type = "mcp"
url = "https://localhost:{up}/mcp"
ca_file = "ca.pem"
credential = {{ header = "x-upstream-key", secret = "file:up-key" }}

[[connections]]
name = "api"
type = "http"
url = "https://localhost:{api}"
ca_file = "ca.pem"

[[grants]]
name = "dbas"
groups = ["dba"]
connections = ["db", "docs", "api"]
"#,
        oauth = idp.oauth_config(),
        pgport = pg.port,
        pgca = pg.ca.display(),
        up = up.port,
        api = api.port,
    );
    let (gw, _) = gateway_with_config(dir, &config);
    Setup {
        ca: dir.join("ca.pem").to_str().unwrap().to_owned(),
        bundle: bundle.to_str().unwrap().to_owned(),
        tmp,
        gw,
        _idp: idp,
        _up: up,
        _api: api,
    }
}

impl Setup {
    fn cfg(&self) -> std::path::PathBuf {
        self.tmp.path().join("portcullis.toml")
    }

    /// The SDK's client signing in at `path` and running `steps`; the
    /// person decides `decision` on the consent page.
    fn sdk(&self, path: &str, decision: &str, steps: &[&str]) -> Vec<Value> {
        let jar = self.tmp.path().join(format!("jar-{}", rand_tag()));
        let out = Command::new("node")
            .arg(idp::harness_dir().join("mcp-oauth-client.mjs"))
            .arg(format!("{}{path}", self.gw.url))
            .args(steps)
            .env("NODE_EXTRA_CA_CERTS", &self.ca)
            .env("BROWSER_CA", &self.bundle)
            .env("BROWSER_JAR", &jar)
            .env("DECISION", decision)
            .output()
            .expect("node runs the MCP SDK client");
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert!(
            !lines.iter().any(|l| l.get("client_error").is_some()),
            "{lines:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines
    }

    fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let mut args = vec!["--cacert".to_string(), self.ca.clone()];
        for (k, v) in fields {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        args.push(format!("{}{path}", self.gw.url));
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn register(&self, redirect: &str) -> Reply {
        let body = serde_json::json!({"client_name": "curl agent", "redirect_uris": [redirect]});
        curl(&[
            "--cacert",
            &self.ca,
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
            &format!("{}/oauth/register", self.gw.url),
        ])
    }

    /// `GET /oauth/authorize?QUERY` without following: status and
    /// `Location`.
    fn authorize(&self, query: &[(&str, &str)]) -> (u16, String) {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert", &self.ca])
            .args(["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"])
            .arg(format!("{}/oauth/authorize?{q}", self.gw.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (code, location) = text.split_once(' ').unwrap_or((&text, ""));
        (code.parse().unwrap_or(0), location.to_owned())
    }

    /// Play the browser through sign-in for `query`, up to the consent
    /// page: its one-time handle.
    fn consent_page(&self, query: &[(&str, &str)], jar: &Path) -> String {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let jar = jar.to_str().unwrap();
        let page = Command::new("curl")
            .args(["-sS", "-L", "--max-redirs", "10", "--max-time", "20"])
            .args(["--cacert", &self.bundle, "-c", jar, "-b", jar])
            .arg(format!("{}/oauth/authorize?{q}", self.gw.url))
            .output()
            .unwrap();
        let page = String::from_utf8_lossy(&page.stdout).into_owned();
        page.split("name=\"consent\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no consent page: {page}"))
            .to_owned()
    }

    /// Submit the consent form from the browser with cookie jar `jar`:
    /// the status and where it sends the browser.
    fn decide(&self, handle: &str, jar: &Path, decision: &str) -> (u16, String) {
        let jar = jar.to_str().unwrap();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert", &self.ca])
            .args(["-c", jar, "-b", jar, "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{redirect_url}"])
            .args(["--data-urlencode", &format!("consent={handle}")])
            .args(["--data-urlencode", &format!("decision={decision}")])
            .arg(format!("{}/oauth/consent", self.gw.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (code, location) = text.split_once(' ').unwrap_or((&text, ""));
        (code.parse().unwrap_or(0), location.to_owned())
    }

    fn audit(&self) -> Vec<Value> {
        let out = cli_at(&self.cfg(), &["audit", "export"]);
        json_lines(&out)
    }
}

fn rand_tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The query parameter `name` of a URL.
fn param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A PKCE pair (verifier, S256 challenge).
fn pkce(seed: &str) -> (String, String) {
    use base64::Engine;
    let verifier = format!("{seed}-{}", "v".repeat(50));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    (verifier, challenge)
}

/// A JSON-RPC `tools/list` at `path` with `token`: the HTTP status and
/// the `WWW-Authenticate` header.
fn mcp_status(s: &Setup, path: &str, token: Option<&str>) -> (u16, String) {
    let mut args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "20".into(),
        "--cacert".into(),
        s.ca.clone(),
        "-D".into(),
        "-".into(),
        "-o".into(),
        "/dev/null".into(),
        "-H".into(),
        "content-type: application/json".into(),
        "-H".into(),
        "accept: application/json, text/event-stream".into(),
        "-d".into(),
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#.into(),
    ];
    if let Some(t) = token {
        args.push("-H".into());
        args.push(format!("Authorization: Bearer {t}"));
    }
    args.push(format!("{}{path}", s.gw.url));
    let out = Command::new("curl").args(&args).output().unwrap();
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let challenge = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("www-authenticate:")
                .then(|| l[17..].trim().to_owned())
        })
        .unwrap_or_default();
    (status, challenge)
}

fn oauth_entries<'a>(audit: &'a [Value], action: &str) -> Vec<&'a Value> {
    audit
        .iter()
        .filter(|e| e.pointer("/event/kind") == Some(&Value::from("oauth")))
        .filter(|e| e.pointer("/event/action") == Some(&Value::from(action)))
        .collect()
}

#[test]
fn an_mcp_client_signs_in_with_oauth_and_acts_for_the_person() {
    let s = setup();

    // Discovery from the 401.
    let (status, challenge) = mcp_status(&s, "/mcp", None);
    assert_eq!(status, 401);
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp", s.gw.url);
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    let prm = get(
        &s.gw.url,
        &s.ca,
        None,
        "/.well-known/oauth-protected-resource/mcp",
    )
    .json();
    assert_eq!(prm["resource"], format!("{}/mcp", s.gw.url));
    assert_eq!(prm["authorization_servers"][0], s.gw.url.as_str());
    let asm = get(
        &s.gw.url,
        &s.ca,
        None,
        "/.well-known/oauth-authorization-server",
    )
    .json();
    assert_eq!(asm["issuer"], s.gw.url.as_str());
    assert_eq!(
        asm["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );

    // The SDK: register, sign in (browser), consent, token, tool calls.
    let out = s.sdk(
        "/mcp",
        "allow",
        &[
            "list",
            "call",
            "sql_query",
            r#"{"connection": "db", "sql": "SELECT 41 + 1 AS answer"}"#,
        ],
    );
    let last = out.last().unwrap();
    let client_id = last["client_id"].as_str().unwrap().to_owned();
    assert!(
        client_id.starts_with("portcullis-test-agent-"),
        "{client_id}"
    );
    assert_eq!(last["state_ok"], true, "{last}");
    assert_eq!(last["iss"], s.gw.url.as_str());
    let tools = out[0]["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t == "sql_query"), "{out:?}");
    assert!(out[1].to_string().contains("42"), "{out:?}");
    assert_ne!(out[1]["isError"], true, "{out:?}");
    let access = last["tokens"]["access_token"].as_str().unwrap().to_owned();
    let refresh = last["tokens"]["refresh_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("pcl_"));

    // Audited as the client acting for the person, every step.
    let principal = format!("agent:{client_id}@alice");
    let audit = s.audit();
    for action in ["client_registered", "consented", "token_issued"] {
        let e = oauth_entries(&audit, action);
        assert!(
            e.iter().any(|e| e.to_string().contains(&client_id)),
            "{action}: {audit:?}"
        );
    }
    assert!(
        oauth_entries(&audit, "token_issued")[0]
            .to_string()
            .contains(&principal)
    );
    assert!(
        audit.iter().any(
            |e| e.pointer("/event/kind") == Some(&Value::from("session_start"))
                && e.to_string().contains(&principal)
                && e.to_string().contains("\"db\"")
        ),
        "no session as {principal}"
    );

    // Audience-bound: the token opens /mcp and nothing else.
    assert_eq!(mcp_status(&s, "/mcp", Some(&access)).0, 200);
    let (status, challenge) = mcp_status(&s, "/c/docs/mcp", Some(&access));
    assert_eq!(status, 401);
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let reply = get(&s.gw.url, &s.ca, Some(&access), "/c/api/anything");
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(reply.body.contains("issued for mcp"), "{}", reply.body);
    assert_eq!(
        get(&s.gw.url, &s.ca, Some(&access), "/api/v1/reviews").status,
        401
    );
    let psql = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT 1"])
        .arg(format!(
            "host=localhost port={} dbname=db user=agent sslmode=verify-full sslrootcert={}",
            s.gw.pg_port.unwrap(),
            s.ca
        ))
        .env("PGPASSWORD", &access)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    assert!(!psql.status.success());
    assert!(
        String::from_utf8_lossy(&psql.stderr).contains("issued for mcp"),
        "{psql:?}"
    );

    // Refresh rotates; the spent refresh token coming back revokes the
    // grant, the new access token with it.
    let rotated = s
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", &client_id),
            ],
        )
        .json();
    let access2 = rotated["access_token"].as_str().unwrap().to_owned();
    let refresh2 = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh);
    assert_ne!(access2, access);
    assert_eq!(mcp_status(&s, "/mcp", Some(&access2)).0, 200);
    // Another client cannot use it either (and that counts as theft).
    let other = s.register(REDIRECT).json()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stolen = s.post_form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &other),
        ],
    );
    assert_eq!(stolen.status, 400);
    assert_eq!(stolen.json()["error"], "invalid_grant");
    let reused = s.post_form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
        ],
    );
    assert_eq!(reused.status, 400, "{}", reused.body);
    assert_eq!(reused.json()["error"], "invalid_grant");
    assert_eq!(
        mcp_status(&s, "/mcp", Some(&access2)).0,
        401,
        "the family is revoked"
    );
    let after = s.post_form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh2),
            ("client_id", &client_id),
        ],
    );
    assert_eq!(after.json()["error"], "invalid_grant");
    // Replays of a revoked family's secret: one entry in all (re-review:
    // ten thousand replays wrote ten thousand).
    for _ in 0..5 {
        let r = s.post_form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", &client_id),
            ],
        );
        assert_eq!(r.json()["error"], "invalid_grant");
    }
    let audit = s.audit();
    let reuse = oauth_entries(&audit, "reuse_detected");
    assert_eq!(reuse.len(), 1, "{reuse:?}");

    // A second resource: an MCP connection. Its token opens it, not /mcp.
    let out = s.sdk("/c/docs/mcp", "allow", &["list"]);
    let last = out.last().unwrap();
    assert!(
        out[0]["tools"].as_array().is_some_and(|t| !t.is_empty()),
        "{out:?}"
    );
    let docs_client = last["client_id"].as_str().unwrap().to_owned();
    let docs_token = last["tokens"]["access_token"].as_str().unwrap().to_owned();
    assert_eq!(mcp_status(&s, "/c/docs/mcp", Some(&docs_token)).0, 200);
    assert_eq!(mcp_status(&s, "/mcp", Some(&docs_token)).0, 401);

    // An operator revokes the client: its token stops at once.
    let listed = json_lines(&cli_at(&s.cfg(), &["oauth", "clients", "list", "--json"]));
    assert!(
        listed
            .iter()
            .any(|c| c["id"] == docs_client.as_str() && c["status"] == "active")
    );
    let out = cli_at(&s.cfg(), &["oauth", "clients", "revoke", &docs_client]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mcp_status(&s, "/c/docs/mcp", Some(&docs_token)).0, 401);
    let listed = json_lines(&cli_at(&s.cfg(), &["oauth", "clients", "list", "--json"]));
    assert!(
        listed
            .iter()
            .any(|c| c["id"] == docs_client.as_str() && c["status"] == "revoked")
    );
    assert!(!oauth_entries(&s.audit(), "client_revoked").is_empty());

    // The person declines: the client hears access_denied, with its state.
    let out = s.sdk("/mcp", "deny", &[]);
    assert_eq!(out[0]["authorization_error"], "access_denied", "{out:?}");
    assert!(!oauth_entries(&s.audit(), "declined").is_empty());

    claude_code_sees_a_server_that_needs_sign_in(&s);

    // `mcp config` prints the no-token form for this config.
    let out = cli_at(
        &s.cfg(),
        &[
            "mcp",
            "config",
            "--client",
            "claude-code",
            "--gateway",
            &s.gw.url,
        ],
    );
    let snippet = String::from_utf8_lossy(&out.stdout);
    assert!(
        snippet.contains("/mcp") && !snippet.contains("Authorization"),
        "{snippet}"
    );

    // The gateway's own secret at the provider is nowhere but its file.
    for (path, bytes) in all_files(s.tmp.path()) {
        if path.ends_with("idp-secret") || path.starts_with(s.tmp.path().join("idp")) {
            continue;
        }
        assert!(
            !String::from_utf8_lossy(&bytes).contains(GW_SECRET),
            "secret leaked into {}",
            path.display()
        );
    }
}

#[test]
fn oauth_refuses_what_the_rfcs_refuse() {
    let s = setup();
    let mcp_resource = format!("{}/mcp", s.gw.url);

    // Discovery, before any sign-in, answers alike for an MCP connection
    // (`docs`), an HTTP one (`api`), a PostgreSQL one (`db`) and a name
    // that is none: a review told them apart by the metadata's 404 and
    // by which 401s carried a challenge.
    for name in ["docs", "api", "db", "no-such-name"] {
        let at = format!("/.well-known/oauth-protected-resource/c/{name}");
        let prm = get(&s.gw.url, &s.ca, None, &at);
        assert_eq!(prm.status, 200, "{name}: {}", prm.body);
        let prm = prm.json();
        assert_eq!(prm["resource"], format!("{}/c/{name}", s.gw.url), "{name}");
        assert_eq!(prm["scopes_supported"][0], "mcp", "{name}");
        let metadata = format!("{}{at}", s.gw.url);
        for (token, invalid) in [
            (None, ""),
            (Some("pcl_not_a_token"), ", error=\"invalid_token\""),
        ] {
            let (status, challenge) = mcp_status(&s, &format!("/c/{name}/mcp"), token);
            assert_eq!(status, 401, "{name}");
            assert_eq!(
                challenge,
                format!("Bearer resource_metadata=\"{metadata}\", scope=\"mcp\"{invalid}"),
                "{name}"
            );
        }
    }

    // Registration: redirect URIs only from the allow-list.
    for bad in [
        "https://evil.test/cb",
        "http://evil.test/cb",
        "http://127.0.0.1.evil.test/cb",
    ] {
        let r = s.register(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"], "invalid_redirect_uri");
    }
    let reg = s.register(REDIRECT);
    assert_eq!(reg.status, 201, "{}", reg.body);
    let client = reg.json()["client_id"].as_str().unwrap().to_owned();
    assert_eq!(reg.json()["token_endpoint_auth_method"], "none");

    let (verifier, challenge) = pkce("ok");
    let base = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut q = vec![
            ("response_type", "code".to_string()),
            ("client_id", client.clone()),
            ("redirect_uri", REDIRECT.to_string()),
            ("state", "s1".to_string()),
            ("code_challenge", challenge.clone()),
            ("code_challenge_method", "S256".to_string()),
            ("resource", mcp_resource.clone()),
        ];
        for (k, v) in extra {
            q.retain(|(n, _)| n != k);
            if !v.is_empty() {
                q.push((k, v.clone()));
            }
        }
        q
    };
    let authorize = |extra: &[(&'static str, String)]| {
        let q = base(extra);
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s.authorize(&q)
    };
    // Unknown client or unregistered redirect: a page, never a redirect.
    for extra in [
        vec![("client_id", "nobody-12345678".to_string())],
        vec![("redirect_uri", "http://127.0.0.1:9/other".to_string())],
    ] {
        let (status, location) = authorize(&extra);
        assert_eq!(status, 400, "{extra:?}");
        assert!(location.is_empty(), "{extra:?} redirected to {location}");
    }
    // The rest goes back to the client with the RFC's error.
    let cases: Vec<(Vec<(&'static str, String)>, &str)> = vec![
        (vec![("code_challenge", String::new())], "invalid_request"),
        (
            vec![("code_challenge_method", "plain".into())],
            "invalid_request",
        ),
        (
            vec![("code_challenge_method", String::new())],
            "invalid_request",
        ),
        (
            vec![("response_type", "token".into())],
            "unsupported_response_type",
        ),
        (vec![("scope", "admin".into())], "invalid_scope"),
        (
            vec![("resource", "https://evil.test/mcp".into())],
            "invalid_target",
        ),
        (
            vec![("resource", format!("{}/c/api", s.gw.url))],
            "invalid_target",
        ),
        (
            vec![("resource", format!("{}/c/nowhere/mcp", s.gw.url))],
            "invalid_target",
        ),
    ];
    for (extra, error) in cases {
        let (status, location) = authorize(&extra);
        assert_eq!(status, 302, "{extra:?}");
        assert!(location.starts_with(REDIRECT), "{extra:?}: {location}");
        assert_eq!(
            param(&location, "error").as_deref(),
            Some(error),
            "{extra:?}: {location}"
        );
        assert_eq!(param(&location, "state").as_deref(), Some("s1"));
        assert_eq!(param(&location, "iss").as_deref(), Some(s.gw.url.as_str()));
    }
    // Started under another name for the gateway: sent to the issuer's
    // host first (its cookie must come back to the callback there).
    let other_host = s.gw.url.replace("localhost", "127.0.0.1");
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(base(&[]).iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert", &s.ca])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"])
        .arg(format!("{other_host}/oauth/authorize?{q}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with(&format!("302 {}/oauth/authorize?", s.gw.url)),
        "{text}"
    );

    // Codes: one real sign-in per case.
    let jar = s.tmp.path().join("jar");
    let code_for = |seed: &str, extra: &[(&'static str, String)]| -> (String, String) {
        let (verifier, challenge) = pkce(seed);
        let mut e = vec![("code_challenge", challenge)];
        e.extend(extra.iter().cloned());
        let q = base(&e);
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let handle = s.consent_page(&q, &jar);
        let (_, back) = s.decide(&handle, &jar, "allow");
        let code = param(&back, "code").unwrap_or_else(|| panic!("no code in {back:?}"));
        (code, verifier)
    };
    let exchange = |code: &str, verifier: &str, extra: &[(&str, &str)]| {
        let mut f = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", verifier),
            ("client_id", client.as_str()),
            ("redirect_uri", REDIRECT),
        ];
        f.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        f.extend_from_slice(extra);
        s.post_form("/oauth/token", &f)
    };
    let started = Instant::now();
    let (stale_code, stale_verifier) = code_for("stale", &[]);

    // A wrong verifier burns the code; the right one then fails too.
    let (code, good) = code_for("a", &[]);
    let r = exchange(&code, &verifier, &[]);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let r = exchange(&code, &good, &[]);
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);
    // A code is spent once; replaying it revokes what it yielded.
    let (code, good) = code_for("b", &[]);
    let first = exchange(&code, &good, &[]);
    assert_eq!(first.status, 200, "{}", first.body);
    let token = first.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(mcp_status(&s, "/mcp", Some(&token)).0, 200);
    let again = exchange(&code, &good, &[]);
    assert_eq!(again.json()["error"], "invalid_grant");
    assert_eq!(mcp_status(&s, "/mcp", Some(&token)).0, 401);
    // A token for another resource than the code's.
    let (code, good) = code_for("c", &[]);
    let docs = format!("{}/c/docs/mcp", s.gw.url);
    let r = exchange(&code, &good, &[("resource", &docs)]);
    assert_eq!(r.json()["error"], "invalid_target", "{}", r.body);
    // Another redirect URI than the request's.
    let (code, good) = code_for("short", &[]);
    let r = exchange(&code, "too-short", &[]);
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);
    let (code, good_d) = code_for("d", &[]);
    let _ = good;
    let good = good_d;
    let r = exchange(
        &code,
        &good,
        &[("redirect_uri", "http://127.0.0.1:9/other")],
    );
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);
    // Each spent code refused is evidence, saying why (review: a wrong
    // verifier left no entry).
    let audit = s.audit();
    let refused = oauth_entries(&audit, "grant_refused");
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|e| e.pointer("/event/reason").and_then(Value::as_str))
        .collect();
    for why in [
        "code_verifier does not match",
        "another resource",
        "code_verifier is malformed",
        "redirect_uri differs",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(why)),
            "{why}: {reasons:?}"
        );
    }
    assert!(
        refused.iter().all(|e| e.pointer("/event/family").is_some()),
        "{refused:?}"
    );
    // Unknown codes, clients and grant types.
    let r = exchange("not-a-code", &good, &[]);
    assert_eq!(r.json()["error"], "invalid_grant");
    let r = s.post_form(
        "/oauth/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", "x"),
            ("code_verifier", &good),
            ("client_id", "nobody-1"),
        ],
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let r = s.post_form(
        "/oauth/token",
        &[("grant_type", "password"), ("client_id", &client)],
    );
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    let r = s.post_form(
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("grant_type", "refresh_token"),
            ("client_id", &client),
        ],
    );
    assert_eq!(r.json()["error"], "invalid_request", "a parameter twice");

    // The browser binding: a consent submitted from another browser (a
    // page an attacker got signed in and forwarded) is refused, and the
    // handle is spent; a forged handle or state is refused.
    let q = base(&[]);
    let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let handle = s.consent_page(&q, &jar);
    let (status, location) = s.decide(&handle, &s.tmp.path().join("other-jar"), "allow");
    assert_eq!((status, location.as_str()), (403, ""));
    assert_eq!(s.decide(&handle, &jar, "allow").0, 400, "spent");
    let r = s.post_form(
        "/oauth/consent",
        &[("consent", "forged"), ("decision", "allow")],
    );
    assert_eq!(r.status, 400);
    let r = get(
        &s.gw.url,
        &s.ca,
        None,
        "/oauth/callback?state=forged&code=x",
    );
    assert_eq!(r.status, 400);
    assert!(!r.body.contains("<script"), "pages carry no script");

    // Races: two requests spending one code or one refresh token at once.
    // Whoever wins, nothing of the grant is usable afterwards (a
    // revocation racing an issue is never lost).
    let setup = &s;
    let race = |fields: Vec<(&'static str, String)>| -> Vec<Reply> {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let barrier = barrier.clone();
                    let fields = fields.clone();
                    scope.spawn(move || {
                        let f: Vec<(&str, &str)> =
                            fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        barrier.wait();
                        setup.post_form("/oauth/token", &f)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    for round in 0..3 {
        let (code, good) = code_for(&format!("race{round}"), &[]);
        let replies = race(vec![
            ("grant_type", "authorization_code".into()),
            ("code", code),
            ("code_verifier", good),
            ("client_id", client.clone()),
        ]);
        assert!(replies.iter().any(|r| r.status == 400), "one loses");
        for r in replies.iter().filter(|r| r.status == 200) {
            let access = r.json()["access_token"].as_str().unwrap().to_owned();
            let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
            assert_eq!(
                mcp_status(&s, "/mcp", Some(&access)).0,
                401,
                "round {round}"
            );
            let again = s.post_form(
                "/oauth/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh),
                    ("client_id", &client),
                ],
            );
            assert_eq!(again.json()["error"], "invalid_grant", "round {round}");
        }
        // The same for a refresh token.
        let (code, good) = code_for(&format!("rrace{round}"), &[]);
        let first = exchange(&code, &good, &[]).json();
        let replies = race(vec![
            ("grant_type", "refresh_token".into()),
            (
                "refresh_token",
                first["refresh_token"].as_str().unwrap().to_owned(),
            ),
            ("client_id", client.clone()),
        ]);
        for r in replies.iter().filter(|r| r.status == 200) {
            let access = r.json()["access_token"].as_str().unwrap().to_owned();
            assert_eq!(
                mcp_status(&s, "/mcp", Some(&access)).0,
                401,
                "refresh round {round}"
            );
        }
        let access = first["access_token"].as_str().unwrap();
        assert_eq!(mcp_status(&s, "/mcp", Some(access)).0, 401);
    }

    // Names that would reorder the consent page are refused; one address
    // registers a bounded number of clients.
    let spoof = serde_json::json!({"client_name": "Claude Code\u{202e}gninruter", "redirect_uris": [REDIRECT]});
    let r = curl(&[
        "--cacert",
        &s.ca,
        "-H",
        "content-type: application/json",
        "-d",
        &spoof.to_string(),
        &format!("{}/oauth/register", s.gw.url),
    ]);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_client_metadata"))
    );
    let statuses: Vec<u16> = (0..25).map(|_| s.register(REDIRECT).status).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(
        s.register(REDIRECT).json()["error"],
        "temporarily_unavailable"
    );

    // An expired code (codes live 60 s).
    let wait = Duration::from_secs(62).saturating_sub(started.elapsed());
    std::thread::sleep(wait);
    let r = exchange(&stale_code, &stale_verifier, &[]);
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

/// Claude Code, when installed (`.ci/run` installs it under
/// `tests/node/claude`; `CLAUDE_BIN` points elsewhere): `claude mcp add
/// --transport http` with no header, then `claude mcp list`, shows the
/// gateway as needing authentication, not as failed.
fn claude_code_sees_a_server_that_needs_sign_in(s: &Setup) {
    let claude = std::env::var_os("CLAUDE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| idp::harness_dir().join("claude/node_modules/.bin/claude"));
    if !claude.exists() {
        eprintln!(
            "SKIPPED: Claude Code is not installed at {}",
            claude.display()
        );
        return;
    }
    let home = s.tmp.path().join("claude-home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&claude)
            .args(args)
            .current_dir(&home)
            .env("HOME", &home)
            .env("NODE_EXTRA_CA_CERTS", &s.ca)
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env_remove("ANTHROPIC_API_KEY")
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let url = format!("{}/mcp", s.gw.url);
    let added = run(&["mcp", "add", "--transport", "http", "portcullis", &url]);
    let listed = run(&["mcp", "list"]);
    eprintln!("claude mcp add: {added}\nclaude mcp list: {listed}");
    let line = listed
        .lines()
        .find(|l| l.contains("portcullis"))
        .unwrap_or_else(|| panic!("not listed: {added}\n{listed}"));
    assert!(
        line.to_ascii_lowercase().contains("auth") && !line.contains("Failed"),
        "{line}"
    );
}
