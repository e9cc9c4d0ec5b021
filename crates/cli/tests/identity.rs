//! Identity end to end: OIDC tokens from a real OpenID provider
//! (oidc-provider on Node.js), mTLS client certificates from the internal
//! CA, and live rotation of the server certificate under load.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::idp::{self, Idp};
use common::pg::{PG_PASSWORD, PgCluster};
use common::upstream::{self, TestUpstream};
use common::*;
use portcullis_tls::{CertificateAuthority, LeafKind};

const CANARY: &str = "canary-identity-upstream-key-51c0";

struct Setup {
    tmp: tempfile::TempDir,
    gw: Proc,
    ca: String,
    api: TestUpstream,
    idp: Idp,
}

/// A gateway trusting the test IdP, with an HTTP connection `api` and a
/// PostgreSQL connection `db`; mTLS optional on HTTPS, required on
/// PostgreSQL.
fn setup() -> Setup {
    setup_with(&[])
}

fn setup_with(idp_args: &[&str]) -> Setup {
    setup_full(idp_args, "required")
}

/// `pg_certs`: the PostgreSQL listener's client certificate mode.
fn setup_full(idp_args: &[&str], pg_certs: &str) -> Setup {
    let pg = PgCluster::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let idp = Idp::start_with(&dir.join("idp"), "alice", "dba,dev", idp_args);
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    write_leaf(&ca, dir, "server");
    write_leaf(&ca, dir, "api");
    let api = upstream::start(&dir.join("api.pem"), &dir.join("api.key"));
    std::fs::write(dir.join("api-key"), CANARY).unwrap();
    std::fs::write(dir.join("pgpw"), PG_PASSWORD).unwrap();
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"
client_auth = {{ mode = "optional", ca_file = "ca.pem" }}

[postgres]
listen = "127.0.0.1:0"
client_auth = {{ mode = "{pg_certs}", ca_file = "ca.pem" }}

[[oidc]]
issuer = "{issuer}"
audiences = ["{aud}", "{cli}"]
algorithms = ["ES256", "RS256"]
ca_file = "{idp_ca}"
login_client_id = "{cli}"
login_scopes = "openid offline_access groups"

[[connections]]
name = "api"
type = "http"
url = "https://localhost:{api}"
ca_file = "ca.pem"
credential = {{ header = "x-api-key", secret = "file:api-key" }}

[[connections]]
name = "releases"
type = "http"
url = "https://localhost:{api}"
ca_file = "ca.pem"
credential = {{ header = "x-api-key", secret = "file:api-key" }}

[[connections]]
name = "db"
type = "postgres"
url = "postgres://postgres@localhost:{pgport}/postgres?sslrootcert={pgca}"
password = "file:pgpw"

[[grants]]
name = "ci-bot-api"
principals = ["agent:ci-bot"]
connections = ["api"]

[[grants]]
name = "dbas"
groups = ["dba"]
connections = ["api", "db"]

[[grants]]
name = "deployer"
principals = ["agent:deployer"]
connections = ["api", "db", "releases"]
"#,
        issuer = idp.issuer,
        aud = idp::AUDIENCE,
        cli = idp::CLI_CLIENT,
        idp_ca = idp.ca.display(),
        api = api.port,
        pgport = pg.port,
        pgca = pg.ca.display(),
    );
    let (gw, _token) = gateway_with_config(dir, &config);
    let ca = dir.join("ca.pem").to_str().unwrap().to_string();
    Setup {
        tmp,
        gw,
        ca,
        api,
        idp,
    }
}

fn tamper(token: &str) -> String {
    // Flip one character of the payload: still base64url, still JSON-ish
    // once decoded or not, and never validly signed.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let p = &mut parts[1];
    let last = p.pop().unwrap();
    p.push(if last == 'A' { 'B' } else { 'A' });
    parts.join(".")
}

#[test]
fn oidc_tokens_from_a_real_provider() {
    let s = setup();
    let url = &s.gw.url;
    let jwt = s.idp.client_credentials_token();

    // A client-credentials token is the agent `agent:ci-bot`.
    let r = get(url, &s.ca, Some(&jwt), "/c/api/hello");
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = s.api.last();
    assert_eq!(seen.header("x-api-key"), Some(CANARY));
    assert!(
        seen.header("authorization").is_none(),
        "the caller's token must not reach the target"
    );

    // Tampered payload: refused, saying why, without echoing the token.
    let r = get(url, &s.ca, Some(&tamper(&jwt)), "/c/api/hello");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.body.contains("signature") || r.body.contains("malformed"),
        "{}",
        r.body
    );
    assert!(!r.body.contains(&jwt[jwt.len() - 20..]));

    // An agent cannot mint tokens for other agents.
    let r = curl(&[
        "--cacert",
        &s.ca,
        "-H",
        &format!("Authorization: Bearer {jwt}"),
        "--json",
        r#"{"principal": "agent:other"}"#,
        &format!("{url}/api/v1/tokens"),
    ]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("only a person"), "{}", r.body);

    // A token from another provider (its own issuer and keys): refused.
    let other = Idp::start(&s.tmp.path().join("idp2"), "mallory", "dba");
    let foreign = other.client_credentials_token();
    let r = get(url, &s.ca, Some(&foreign), "/c/api/hello");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("not configured"), "{}", r.body);
    // Tokens naming issuers the caller makes up are refused for one
    // reason: counted, not an entry each (review: keying on the whole
    // reason let one address write an entry per issuer it invented).
    use base64::Engine as _;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    for i in 0..20 {
        let made_up = format!(
            "{}.{}.AAAA",
            b64(r#"{"alg":"RS256","kid":"k"}"#),
            b64(&format!(
                r#"{{"iss":"https://evil.example/{i}","sub":"x","exp":4102444800}}"#
            ))
        );
        let r = get(url, &s.ca, Some(&made_up), "/c/api/hello");
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.body.contains("evil.example"), "{}", r.body);
    }

    // The audit log names the principal and how it authenticated.
    let out = Command::new(BIN)
        .args([
            "--config",
            s.tmp.path().join("portcullis.toml").to_str().unwrap(),
        ])
        .args(["audit", "export"])
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(audit.contains("agent:ci-bot"), "{audit}");
    assert!(audit.contains("\"oidc\""), "{audit}");
    let whole = audit
        .lines()
        .filter(|l| l.contains("\"refusal\"") && l.contains("is not configured"))
        .count();
    assert_eq!(whole, 1, "{audit}");
    // The JWT is a credential: never in the gateway's files or log.
    let sig = jwt.rsplit('.').next().unwrap();
    for (path, bytes) in all_files(s.tmp.path()) {
        if path.starts_with(s.tmp.path().join("idp")) {
            continue;
        }
        assert!(!contains(&bytes, sig), "token in {}", path.display());
    }
    assert!(!s.gw.logs().contains(sig));
}

/// `portcullis ARGS` as a user whose home is `home`, trusting the IdP's
/// CA (as a system root would) and the gateway's.
fn user_cli(s: &Setup, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env("XDG_CONFIG_HOME", home.join(".config"))
        .env("HOME", home)
        .env("SSL_CERT_FILE", &s.idp.ca)
        .env("PORTCULLIS_CA", &s.ca)
        .args(args);
    c
}

/// `portcullis token create --principal PRINCIPAL --gateway … --ttl TTL`
/// as the user signed in under `home`: a token for an agent acting for them.
fn mint_as_user(s: &Setup, home: &Path, principal: &str, ttl: &str) -> std::process::Output {
    user_cli(s, home, &["token", "create", "--principal", principal])
        .args(["--gateway", &s.gw.url, "--ttl", ttl])
        .output()
        .unwrap()
}

/// Run `portcullis login …`, hand the first stderr line holding a URL
/// with `marker` to `browser`, and wait for login to succeed.
fn login_with(s: &Setup, home: &Path, args: &[&str], marker: &str, browser: impl FnOnce(&str)) {
    let mut login = user_cli(s, home, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = login.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("login printed no URL");
        if let Some(u) = line.split_whitespace().find(|w| w.contains(marker)) {
            break u.to_string();
        }
    };
    browser(&url);
    let st = login.wait().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(st.success(), "login failed: {rest:?}");
}

/// `portcullis env` parsed into (name, value) pairs.
fn env_vars(s: &Setup, home: &Path) -> std::collections::HashMap<String, String> {
    let out = user_cli(s, home, &["env", "--gateway", &s.gw.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

#[test]
fn browser_login_with_pkce_and_refresh() {
    // Access tokens live 30 s: inside `env`'s refresh margin, so every
    // `env` refreshes with the refresh token.
    let s = setup_with(&["--access-ttl", "30"]);
    let home = s.tmp.path().join("home");
    let jar = s.tmp.path().join("jar");
    login_with(
        &s,
        &home,
        &["login", "--gateway", &s.gw.url, "--browser"],
        "code_challenge=",
        |url| {
            assert!(url.contains("code_challenge_method=S256"), "{url}");
            let page = s.idp.follow_authorize(url, &jar);
            assert!(page.contains("Signed in to Portcullis"), "{page}");
        },
    );
    let cache = home.join(".config/portcullis/credentials.json");
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    let first = cached["gateways"][&s.gw.url]["bearer"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(cached["gateways"][&s.gw.url]["refresh_token"].is_string());

    let token = env_vars(&s, &home)["PORTCULLIS_TOKEN"].clone();
    assert_ne!(
        token, first,
        "env should have refreshed the short-lived token"
    );
    let r = get(&s.gw.url, &s.ca, Some(&token), "/c/api/hello");
    assert_eq!(r.status, 200, "{}", r.body);

    // Signed out: env refuses, naming the fix.
    let out = user_cli(&s, &home, &["logout", "--gateway", &s.gw.url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = user_cli(&s, &home, &["env", "--gateway", &s.gw.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("portcullis login"));
}

#[test]
fn device_flow_login_then_curl_and_psql_as_the_user() {
    let s = setup();
    let home = s.tmp.path().join("home");
    login_with(
        &s,
        &home,
        &["login", "--gateway", &s.gw.url, "--device"],
        "user_code=",
        |url| s.idp.approve_device(url, &s.tmp.path().join("jar")),
    );

    // The cached credential is private to the user.
    let cache = home.join(".config/portcullis/credentials.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cache).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // `portcullis env` prints what tools need, with the user's token.
    let env = env_vars(&s, &home);
    let token = env["PORTCULLIS_TOKEN"].clone();
    assert_eq!(env["PGPASSWORD"], token);
    assert_eq!(env["PGPORT"], s.gw.pg_port.unwrap().to_string());
    assert_eq!(env["PGSSLMODE"], "verify-full");

    // As user:alice (group dba) over HTTP…
    let r = get(&s.gw.url, &s.ca, Some(&token), "/c/api/hello");
    assert_eq!(r.status, 200, "{}", r.body);

    // Alice mints a token for an agent acting for her: it carries her
    // groups, and the audit log names both.
    let out = mint_as_user(&s, &home, "agent:claude", "1h");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("acting for user:alice"));
    let delegated = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = get(&s.gw.url, &s.ca, Some(&delegated), "/c/api/hello");
    assert_eq!(r.status, 200, "{}", r.body);
    let out = Command::new(BIN)
        .args([
            "--config",
            s.tmp.path().join("portcullis.toml").to_str().unwrap(),
        ])
        .args(["audit", "export"])
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    let start = audit
        .lines()
        .find(|l| l.contains("session_start") && l.contains("agent:claude"))
        .unwrap_or_else(|| panic!("no session of agent:claude in {audit}"));
    assert!(start.contains("\"on_behalf_of\":\"user:alice\""), "{start}");
    assert!(audit.contains("token_delegated"));
    assert!(start.contains("agent:claude@alice"), "namespaced: {start}");
    // Alice mints a token naming agent:deployer: it is
    // agent:deployer@alice, not the real agent, and gets none of its
    // grants (releases is granted to agent:deployer only); the real
    // agent's token does.
    let out = mint_as_user(&s, &home, "agent:deployer", "1h");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let impostor = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = get(&s.gw.url, &s.ca, Some(&impostor), "/c/releases/hello");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("agent:deployer@alice"), "{}", r.body);
    let out = Command::new(BIN)
        .args([
            "--config",
            s.tmp.path().join("portcullis.toml").to_str().unwrap(),
        ])
        .args(["token", "create", "--principal", "agent:deployer"])
        .output()
        .unwrap();
    let real = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = get(&s.gw.url, &s.ca, Some(&real), "/c/releases/hello");
    assert_eq!(r.status, 200, "{}", r.body);
    // Already namespaced under someone else: refused at minting.
    let out = mint_as_user(&s, &home, "agent:deployer@bob", "1h");
    assert!(!out.status.success());
    // More than a day is refused.
    let out = mint_as_user(&s, &home, "agent:claude", "2d");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 24 hours"));

    // A person holds at most 256 live tokens for agents (two are minted
    // above): minting past that is refused in HTTP's words, 429, over one
    // connection at a time, and the CLI says why.
    let mint_url = format!("{}/api/v1/tokens", s.gw.url);
    let auth = format!("Authorization: Bearer {token}");
    let mut args = vec![
        "-sS",
        "--max-time",
        "300",
        "--cacert",
        &s.ca,
        "-H",
        &auth,
        "--json",
        r#"{"principal": "agent:many", "ttl": "1h"}"#,
        "-w",
        "\n%{http_code}\n",
    ];
    args.extend(std::iter::repeat_n(mint_url.as_str(), 260));
    let out = Command::new("curl").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let codes: Vec<&str> = text
        .lines()
        .filter(|l| l.len() == 3 && l.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(codes.len(), 260, "{}", String::from_utf8_lossy(&out.stderr));
    let created = codes.iter().take_while(|c| **c == "201").count();
    assert_eq!(created, 254, "{codes:?}");
    assert!(codes[created..].iter().all(|c| *c == "429"), "{codes:?}");
    assert!(text.contains("too_many_tokens"), "{text}");
    assert!(text.contains("256 live tokens"), "{text}");
    let out = mint_as_user(&s, &home, "agent:claude", "1h");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("256 live tokens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Revoking one frees its place.
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let out = cli_at(
        &s.tmp.path().join("portcullis.toml"),
        &["token", "revoke", first["id"].as_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = curl(&[
        "--cacert",
        &s.ca,
        "-H",
        &auth,
        "--json",
        r#"{"principal": "agent:many", "ttl": "1h"}"#,
        &mint_url,
    ]);
    assert_eq!(r.status, 201, "{}", r.body);

    // …and over PostgreSQL, where this listener requires a client
    // certificate as well: without one the handshake fails.
    let pg_port = s.gw.pg_port.unwrap().to_string();
    let psql = |extra: &[(&str, &str)]| {
        let mut c = Command::new("psql");
        c.args(["-X", "-A", "-t", "-c", "select current_user"])
            .env("PGHOST", "localhost")
            .env("PGPORT", &pg_port)
            .env("PGDATABASE", "db")
            .env("PGUSER", "alice")
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &s.ca)
            .env("PGCONNECT_TIMEOUT", "10");
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = psql(&[("PGPASSWORD", &token)]);
    assert!(!out.status.success());

    // With a certificate for agent:deployer, no password is asked.
    let out = Command::new(BIN)
        .args(["--data-dir", s.tmp.path().to_str().unwrap()])
        .args([
            "cert",
            "issue",
            "--principal",
            "agent:deployer",
            "--ttl",
            "1h",
        ])
        .args(["--out", s.tmp.path().join("deployer").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = s.tmp.path().join("deployer.pem");
    let key = s.tmp.path().join("deployer.key");
    let out = psql(&[
        ("PGSSLCERT", cert.to_str().unwrap()),
        ("PGSSLKEY", key.to_str().unwrap()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");
}

#[test]
fn client_certificates_name_the_caller() {
    let s = setup();
    let data = s.tmp.path();
    let issue = |principal: &str, stem: &str| {
        let out = Command::new(BIN)
            .args(["--data-dir", data.to_str().unwrap()])
            .args(["cert", "issue", "--principal", principal])
            .args(["--out", data.join(stem).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    issue("agent:deployer", "deployer");
    issue("agent:nobody", "nobody");
    let with_cert = |stem: &str| {
        let cert = data.join(format!("{stem}.pem"));
        let key = data.join(format!("{stem}.key"));
        curl(&[
            "--cacert",
            &s.ca,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &format!("{}/c/api/hello", s.gw.url),
        ])
    };
    // A certificate alone authenticates (optional mode)…
    let r = with_cert("deployer");
    assert_eq!(r.status, 200, "{}", r.body);
    // …and grants still decide: agent:nobody has none.
    let r = with_cert("nobody");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("agent:nobody"), "{}", r.body);
    // Without a certificate or a token: 401.
    let r = get(&s.gw.url, &s.ca, None, "/c/api/hello");
    assert_eq!(r.status, 401, "{}", r.body);

    // A certificate from a CA the listener does not trust fails the
    // handshake.
    let other = data.join("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    let (rogue, _) = CertificateAuthority::load_or_create(&other).unwrap();
    rogue
        .write_leaf(
            LeafKind::Client,
            &data.join("rogue"),
            &["agent:deployer".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
    // The same CA's certificate named by its CN alone (`agent:deployer`,
    // a kind the listener accepts from other CAs).
    rogue
        .write_leaf(
            LeafKind::Client,
            &data.join("rogue-cn"),
            &["deployer".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let r = with_cert("rogue");
    assert_eq!(r.status, 0, "rogue certificate accepted: {}", r.body);
    let refused = |l: &str| l.contains("invalid_certificate") || l.contains("alert");
    assert!(refused(&s.gw.logs_when(Duration::from_secs(10), refused)));
    // The handshake log names the client certificate of the good one.
    assert!(s.gw.logs().contains("client_cert_sha256"));

    // The listener's client CA bundle is reloaded without a restart:
    // once the other CA is added to the bundle, its certificate passes the
    // handshake. It names nobody, though: this listener has no
    // `client_auth.namespace`, and a review found the other CA's CN
    // `deployer` was the internal CA's `agent:deployer`, with its grants.
    let bundle = data.join("ca.pem");
    let mut pem = std::fs::read_to_string(&bundle).unwrap();
    pem.push_str(&std::fs::read_to_string(other.join("ca.pem")).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = with_cert("rogue-cn");
        if r.status != 0 {
            assert_eq!(r.status, 401, "{}", r.body);
            assert!(r.body.contains("client_auth.namespace"), "{}", r.body);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "client CA bundle not reloaded: {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(s.gw.logs().contains("client CA bundle reloaded"));
    // The first CA still counts.
    assert_eq!(with_cert("deployer").status, 200);
    // A review found the other CA could write the gateway's own trust
    // domain (`spiffe://portcullis/agent/deployer`, as `rogue` has it)
    // and name any principal: refused, though the handshake passes.
    let r = with_cert("rogue");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("internal_ca"), "{}", r.body);
    rogue
        .write_leaf(
            LeafKind::Client,
            &data.join("rogue-alice"),
            &["user:alice".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let r = with_cert("rogue-alice");
    assert_eq!(r.status, 401, "{}", r.body);
    // The internal CA's own `user:alice` still names her.
    issue("user:alice", "alice");
    let r = with_cert("alice");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("user:alice"), "{}", r.body);
}

#[test]
fn server_certificate_rotates_under_load_without_failures() {
    let q = Quickstart::start();
    let (url, ca, token) = q.creds();
    let port = q.proc.port();
    let ca_path = std::path::PathBuf::from(ca);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let fingerprints = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, fps) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            fingerprints.clone(),
        );
        let ca_path = ca_path.clone();
        let token = token.to_string();
        workers.push(rt.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while !stop.load(Ordering::Relaxed) {
                // A new connection (and handshake) per request.
                let mut tls = tls_connect(port, &ca_path).await;
                let fp = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                fps.lock().unwrap().insert(portcullis_tls::sha256_hex(&fp));
                let req = format!(
                    "GET /c/demo-api/hello HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
                );
                let mut buf = Vec::new();
                let res = async {
                    tls.write_all(req.as_bytes()).await?;
                    tls.read_to_end(&mut buf).await
                }
                .await;
                if res.is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = q.cli(&["cert", "rotate-server"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Wait until new handshakes present the new certificate.
    let deadline = Instant::now() + Duration::from_secs(15);
    while fingerprints.lock().unwrap().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for w in workers {
            w.await.unwrap();
        }
    });
    assert_eq!(
        fingerprints.lock().unwrap().len(),
        2,
        "the rotated certificate was never served"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert!(q.proc.logs().contains("server certificate reloaded"));

    // Expiry and reloads are exported.
    let admin = q.var("PORTCULLIS_ADMIN_URL");
    let m = get(admin, ca, None, "/metrics");
    assert!(
        m.body.contains("portcullis_certificate_not_after_seconds{"),
        "{}",
        m.body
    );
    assert!(m.body.contains("result=\"ok\"} 1"), "{}", m.body);
    // The CA bundle of the demo connection is exported too.
    assert!(
        m.body.lines().any(
            |l| l.starts_with("portcullis_certificate_not_after_seconds{") && l.contains("ca.pem")
        ),
        "{}",
        m.body
    );
    let _ = url;
}

/// Nothing stale: a psql session opened with an identity provider's token
/// ends when that token expires (nobody revokes an OIDC token; its `exp`
/// is the end), with FATAL 28000, while the session is open.
#[test]
fn a_psql_session_ends_when_its_oidc_token_expires() {
    let s = setup_full(&["--access-ttl", "6"], "optional");
    let home = s.tmp.path().join("home");
    login_with(
        &s,
        &home,
        &["login", "--gateway", &s.gw.url, "--device"],
        "user_code=",
        |url| s.idp.approve_device(url, &s.tmp.path().join("jar")),
    );
    let env = env_vars(&s, &home);
    let conninfo = format!(
        "host=localhost port={} dbname=db user=alice sslmode=verify-full sslrootcert={}",
        s.gw.pg_port.unwrap(),
        s.ca,
    );
    let mut held = HeldPsql::open(&conninfo, &env["PGPASSWORD"]);
    std::thread::sleep(Duration::from_secs(9));
    held.send("select 'after';");
    let (o, e) = held.finish();
    assert!(o.contains("before") && !o.contains("after"), "{o} {e}");
    assert!(e.contains("token expired"), "{e}");
}

/// Nothing stale: a psql session opened with a client certificate ends
/// when the certificate expires, as one opened with an OIDC token does
/// (found in review: the dates were checked on every request, and a psql
/// session is one).
#[test]
fn a_psql_session_ends_when_its_client_certificate_expires() {
    let s = setup_full(&[], "optional");
    let dir = s.tmp.path();
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    ca.write_leaf(
        LeafKind::Client,
        &dir.join("brief"),
        &["agent:deployer".into()],
        Duration::from_secs(6),
    )
    .unwrap();
    let conninfo = format!(
        "host=localhost port={} dbname=db user=deployer sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        s.gw.pg_port.unwrap(),
        s.ca,
        dir.join("brief.pem").display(),
        dir.join("brief.key").display(),
    );
    let mut held = HeldPsql::open(&conninfo, "");
    std::thread::sleep(Duration::from_secs(9));
    held.send("select 'after';");
    let (o, e) = held.finish();
    assert!(o.contains("before") && !o.contains("after"), "{o} {e}");
    assert!(e.contains("certificate expired"), "{e}");
}

/// Two real providers, each with a client `ci-bot`. The partner's is
/// given a namespace: its `ci-bot` is `agent:partner/ci-bot`, which no
/// grant for the home `agent:ci-bot` covers, and which the home provider
/// cannot name. Left without namespaces, the gateway refuses to start.
#[test]
fn a_second_provider_names_its_callers_in_its_own_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let home = Idp::start(&dir.join("idp-home"), "alice", "dba");
    let partner = Idp::start(&dir.join("idp-partner"), "alice", "dba");
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    write_leaf(&ca, dir, "server");
    write_leaf(&ca, dir, "api");
    let api = upstream::start(&dir.join("api.pem"), &dir.join("api.key"));
    std::fs::write(dir.join("api-key"), CANARY).unwrap();
    let issuer = |idp: &Idp, extra: &str| {
        format!(
            "[[oidc]]\nissuer = \"{}\"\naudiences = [\"{}\"]\nca_file = \"{}\"\n{extra}\n",
            idp.issuer,
            idp::AUDIENCE,
            idp.ca.display()
        )
    };
    let config_with = |home_ns: &str, namespace: &str| {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"

{home}
{partner}

[[connections]]
name = "api"
type = "http"
url = "https://localhost:{port}"
ca_file = "ca.pem"
credential = {{ header = "x-api-key", secret = "file:api-key" }}

[[connections]]
name = "releases"
type = "http"
url = "https://localhost:{port}"
ca_file = "ca.pem"
credential = {{ header = "x-api-key", secret = "file:api-key" }}

[[grants]]
principals = ["agent:ci-bot"]
connections = ["api"]

[[grants]]
principals = ["agent:partner/ci-bot"]
connections = ["releases"]
"#,
            home = issuer(&home, home_ns),
            partner = issuer(&partner, namespace),
            port = api.port,
        )
    };
    let config = |namespace: &str| config_with("", namespace);

    // Both bare, neither saying so: the gateway does not start, and says
    // what to write.
    let bare = dir.join("bare.toml");
    std::fs::write(&bare, config("")).unwrap();
    let out = Command::new("timeout")
        .args(["60", BIN, "--config", bare.to_str().unwrap(), "gateway"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("oidc[0].namespace") && err.contains(&partner.issuer),
        "{err}"
    );

    // Both bare on purpose: they start. A token a person minted for an
    // agent (written to the store as the gateway writes one) works.
    let (gw, _) = gateway_with_config(dir, &config_with("namespace = \"\"", "namespace = \"\""));
    let ca = dir.join("ca.pem").to_str().unwrap().to_string();
    let store = format!("sqlite://{}?mode=rwc", dir.join("portcullis.db").display());
    let delegated = delegated_token(&store, "agent:claude@alice", "user:alice", &[]);
    let r = get(&gw.url, &ca, Some(&delegated), "/c/api/hello");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("agent:claude@alice"), "{}", r.body);
    gw.stop();

    // The partner gets a namespace: what was minted for people under the
    // old naming is revoked at start (alice may have been the partner's).
    let (gw, _) = gateway_with_config(dir, &config("namespace = \"partner\""));
    let r = get(&gw.url, &ca, Some(&delegated), "/c/api/hello");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("revoked"), "{}", r.body);
    let home_jwt = home.client_credentials_token();
    let partner_jwt = partner.client_credentials_token();

    // The home `ci-bot` has its grant; the partner's does not share it.
    assert_eq!(
        get(&gw.url, &ca, Some(&home_jwt), "/c/api/hello").status,
        200
    );
    let r = get(&gw.url, &ca, Some(&partner_jwt), "/c/api/hello");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("agent:partner/ci-bot"), "{}", r.body);
    // Its own grant names it with its namespace; the home one is not it.
    let r = get(&gw.url, &ca, Some(&partner_jwt), "/c/releases/hello");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(&gw.url, &ca, Some(&home_jwt), "/c/releases/hello");
    assert_eq!(r.status, 403, "{}", r.body);

    // The audit log keeps the two apart.
    let out = Command::new(BIN)
        .args(["--config", dir.join("portcullis.toml").to_str().unwrap()])
        .args(["audit", "export"])
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(audit.contains("\"agent:partner/ci-bot\""), "{audit}");
    assert!(audit.contains("\"agent:ci-bot\""), "{audit}");
    assert!(audit.contains("identity_naming_changed"), "{audit}");
}

/// The default `ca.pem` beside the config may be a bundle of the
/// operator's CAs rather than the gateway's own: the gateway starts,
/// says why nothing names a principal in the trust domain `portcullis`,
/// and refuses such certificates. Named explicitly, the same file stops it.
#[test]
fn a_bundle_is_never_taken_for_the_internal_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    write_leaf(&ca, dir, "server");
    ca.write_leaf(
        LeafKind::Client,
        &dir.join("alice"),
        &["user:alice".into()],
        Duration::from_secs(3600),
    )
    .unwrap();
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    CertificateAuthority::load_or_create(&other).unwrap();
    let mut pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    pem.push_str(&std::fs::read_to_string(other.join("ca.pem")).unwrap());
    std::fs::write(dir.join("ca.pem"), pem).unwrap();
    let config = |extra: &str| {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"
client_auth = {{ mode = "optional", ca_file = "ca.pem" }}
{extra}

[[grants]]
principals = ["user:alice"]
connections = ["*"]
"#
        )
    };
    let explicit = dir.join("explicit.toml");
    std::fs::write(&explicit, config("internal_ca = \"ca.pem\"")).unwrap();
    let out = Command::new("timeout")
        .args(["60", BIN, "--config", explicit.to_str().unwrap(), "gateway"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("holds 2 certificates"), "{err}");

    let (gw, _) = gateway_with_config(dir, &config(""));
    assert!(
        gw.logs().contains("not taken as the internal CA"),
        "{}",
        gw.logs()
    );
    let r = curl(&[
        "--cacert",
        dir.join("ca.pem").to_str().unwrap(),
        "--cert",
        dir.join("alice.pem").to_str().unwrap(),
        "--key",
        dir.join("alice.key").to_str().unwrap(),
        &format!("{}/api/v1/me", gw.url),
    ]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("internal_ca"), "{}", r.body);
    gw.stop();

    // A review put a partner's CA alone in the default `ca.pem`: taken as
    // the internal CA, it names any principal. Without the `ca.key` the
    // gateway's own CA has beside it, the gateway says so at start.
    let partner = std::fs::read_to_string(other.join("ca.pem")).unwrap();
    std::fs::write(dir.join("ca.pem"), partner).unwrap();
    std::fs::rename(dir.join("ca.key"), dir.join("ca.key.away")).unwrap();
    let (gw, _) = gateway_with_config(dir, &config(""));
    assert!(
        gw.logs().contains("no ca.key is beside it"),
        "{}",
        gw.logs()
    );
}

/// `agent_clients` with the real provider: its `ci-bot` client-credentials
/// token is `agent:ci-bot` only while the issuer lists that client with its
/// own `sub`; with another listed, or bound to another `sub`, the token is
/// refused and says why.
#[test]
fn only_listed_clients_are_agents() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let idp = Idp::start(&dir.join("idp"), "alice", "dba");
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    write_leaf(&ca, dir, "server");
    let config = |agents: &str| {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"

[[oidc]]
issuer = "{}"
audiences = ["{}"]
ca_file = "{}"
agent_clients = [{agents}]
"#,
            idp.issuer,
            idp::AUDIENCE,
            idp.ca.display()
        )
    };
    let ca = dir.join("ca.pem").to_str().unwrap().to_string();
    let jwt = idp.client_credentials_token();
    let (gw, _) = gateway_with_config(dir, &config("\"deployer\""));
    let r = get(&gw.url, &ca, Some(&jwt), "/api/v1/me");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.body.contains("ci-bot") && r.body.contains("agent_clients"),
        "{}",
        r.body
    );
    gw.stop();
    let (gw, _) = gateway_with_config(
        dir,
        &config("{ client = \"ci-bot\", subject = \"svc-other\" }"),
    );
    let r = get(&gw.url, &ca, Some(&jwt), "/api/v1/me");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("not that agent"), "{}", r.body);
    gw.stop();
    let (gw, _) = gateway_with_config(dir, &config("\"deployer\", \"ci-bot\""));
    let r = get(&gw.url, &ca, Some(&jwt), "/api/v1/me");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["principal"], "agent:ci-bot", "{}", r.body);
    assert_eq!(r.json()["kind"], "agent", "{}", r.body);
}

/// A partner CA beside the internal one: under the HTTP listener's
/// `client_auth.namespace` its `deployer` is `agent:partner/deployer`, not
/// the internal CA's `agent:deployer`; on the PostgreSQL listener, which
/// has no namespace, it names nobody while the internal CA's certificate
/// still opens a psql session.
#[test]
fn another_cas_certificates_name_callers_in_the_listeners_namespace() {
    let pg = common::pg::PgCluster::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    write_leaf(&ca, dir, "server");
    let partner_dir = dir.join("partner");
    std::fs::create_dir_all(&partner_dir).unwrap();
    let (partner, _) = CertificateAuthority::load_or_create(&partner_dir).unwrap();
    let client = |ca: &CertificateAuthority, stem: &str, name: &str| {
        ca.write_leaf(
            LeafKind::Client,
            &dir.join(stem),
            &[name.into()],
            Duration::from_secs(3600),
        )
        .unwrap();
    };
    client(&ca, "ours", "agent:deployer");
    // The partner's `deployer`: by its CN alone (no SPIFFE ID).
    client(&partner, "theirs", "deployer");
    let bundle = ca.cert_pem().to_string() + partner.cert_pem();
    std::fs::write(dir.join("clients.pem"), bundle).unwrap();
    std::fs::write(dir.join("pgpw"), PG_PASSWORD).unwrap();
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"
internal_ca = "ca.pem"
client_auth = {{ mode = "optional", ca_file = "clients.pem", namespace = "partner" }}

[postgres]
listen = "127.0.0.1:0"
client_auth = {{ mode = "optional", ca_file = "clients.pem" }}

[[connections]]
name = "db"
type = "postgres"
url = "postgres://postgres@localhost:{pgport}/postgres?sslrootcert={pgca}"
password = "file:pgpw"

[[grants]]
principals = ["agent:deployer"]
connections = ["db"]
"#,
        pgport = pg.port,
        pgca = pg.ca.display(),
    );
    let (gw, _) = gateway_with_config(dir, &config);
    // The listener without a namespace says at start why the partner's
    // certificates will name nobody; the one with a namespace does not.
    let logs = gw.logs();
    assert!(
        logs.contains("postgres.client_auth.ca_file holds CAs other than the internal CA"),
        "{logs}"
    );
    assert!(
        !logs.contains("gateway.client_auth.ca_file holds"),
        "{logs}"
    );
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let me = |stem: &str| {
        curl(&[
            "--cacert",
            &path("ca.pem"),
            "--cert",
            &path(&format!("{stem}.pem")),
            "--key",
            &path(&format!("{stem}.key")),
            &format!("{}/api/v1/me", gw.url),
        ])
    };
    let r = me("ours");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["principal"], "agent:deployer", "{}", r.body);
    let r = me("theirs");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["principal"],
        "agent:partner/deployer",
        "{}",
        r.body
    );

    let psql = |stem: &str| {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-c", "select current_user"])
            .env("PGHOST", "localhost")
            .env("PGPORT", gw.pg_port.unwrap().to_string())
            .env("PGDATABASE", "db")
            .env("PGUSER", "deployer")
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", path("ca.pem"))
            .env("PGSSLCERT", path(&format!("{stem}.pem")))
            .env("PGSSLKEY", path(&format!("{stem}.key")))
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap()
    };
    let out = psql("ours");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");
    let out = psql("theirs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("client_auth.namespace"), "{err}");
}
