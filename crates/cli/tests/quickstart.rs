//! The quickstart, end to end: the real binary, curl, openssl.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn quickstart_serves_the_demo_api_with_the_injected_key() {
    let qs = Quickstart::start();
    let url = qs.var("PORTCULLIS_URL");
    let ca = qs.var("PORTCULLIS_CA");
    let token = qs.var("PORTCULLIS_TOKEN");
    assert_eq!(qs.var("PORTCULLIS_DEMO_CONNECTION"), "demo-api");
    assert!(url.starts_with("https://localhost:"), "{url}");
    assert!(token.starts_with("pcl_"));

    // The README's curl command.
    let r = get(url, ca, Some(token), "/c/demo-api/hello");
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(
        j["api_key_valid"], true,
        "the demo API got its key from the gateway"
    );
    assert_eq!(
        j["caller_authorization_seen"], false,
        "the caller's token was not forwarded"
    );

    // The demo API itself refuses callers without its key: the key really
    // is what made the difference.
    let demo_port: u16 = std::fs::read_to_string(qs.data().join("portcullis.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("url = \"https://localhost:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .unwrap();
    let direct = get(
        &format!("https://localhost:{demo_port}"),
        ca,
        Some(token),
        "/hello",
    );
    assert_eq!(direct.status, 401, "{direct:?}");

    // Streaming a request body through: the upstream sees every byte.
    let body_file = qs.tmp.path().join("body.bin");
    std::fs::write(&body_file, "x".repeat(200_000)).unwrap();
    let data = format!("@{}", body_file.display());
    let auth = format!("Authorization: Bearer {token}");
    let u = format!("{url}/c/demo-api/echo?q=1");
    let r = curl(&[
        "--cacert",
        ca,
        "-H",
        &auth,
        "-X",
        "POST",
        "--data-binary",
        &data,
        &u,
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["body_bytes"], 200_000);
    assert_eq!(j["path"], "/echo?q=1");
    assert_eq!(j["caller_authorization_seen"], false);

    // HTTP/2 from the caller works too.
    let r = curl(&[
        "--http2",
        "--cacert",
        ca,
        "-H",
        &auth,
        &format!("{url}/c/demo-api/hello"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn bad_credentials_get_401_with_json_and_the_gateway_keeps_serving() {
    let qs = Quickstart::start();
    let (url, ca, token) = qs.creds();
    let unknown = format!("pcl_{}", "A".repeat(43));
    let cases: [(Option<&str>, &str); 4] = [
        (None, "no credential"),
        (Some("not-a-token"), "malformed"),
        (Some(&token[..20]), "malformed"),
        (Some(&unknown), "unknown token"),
    ];
    for (tok, expect) in cases {
        let r = get(url, ca, tok, "/c/demo-api/hello");
        assert_eq!(r.status, 401, "{tok:?}: {r:?}");
        let j = r.json();
        assert_eq!(j["error"], "unauthenticated");
        assert!(j["message"].as_str().unwrap().contains(expect), "{j}");
        if let Some(t) = tok {
            assert!(!r.body.contains(t), "the error echoes the token");
        }
    }
    // Unrouted and unknown connections, once authenticated.
    let r = get(url, ca, Some(token), "/hello");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("no_route"))
    );
    // A name no grant reaches is refused as an existing one would be:
    // which connections exist is not told (a review enumerated them).
    let r = get(url, ca, Some(token), "/c/nope/hello");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("forbidden"))
    );
    // Still serving.
    assert_eq!(get(url, ca, Some(token), "/c/demo-api/hello").status, 200);
}

#[test]
fn revoked_and_expired_tokens_are_refused_at_once() {
    let qs = Quickstart::start();
    let (url, ca) = (qs.var("PORTCULLIS_URL"), qs.var("PORTCULLIS_CA"));

    let out = qs.cli(&[
        "token",
        "create",
        "--principal",
        "agent:quickstart",
        "--ttl",
        "1h",
        "--json",
    ]);
    let (tok, id) = created_token(&out);
    assert_eq!(get(url, ca, Some(&tok), "/c/demo-api/hello").status, 200);

    // The list never shows secrets.
    let list = qs.cli(&["token", "list", "--json"]);
    let text = String::from_utf8(list.stdout).unwrap();
    assert!(text.contains(&id) && !text.contains(&tok[4..]), "{text}");

    let out = qs.cli(&["token", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = get(url, ca, Some(&tok), "/c/demo-api/hello");
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains("revoked"));
    let out = qs.cli(&["token", "revoke", "000000000000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token with id"));

    let out = qs.cli(&[
        "token",
        "create",
        "--principal",
        "agent:quickstart",
        "--ttl",
        "1s",
    ]);
    let short = String::from_utf8(out.stdout).unwrap().trim().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let r = get(url, ca, Some(&short), "/c/demo-api/hello");
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains("expired"));

    // A principal without a grant: 403 naming both.
    let out = qs.cli(&["token", "create", "--principal", "agent:other"]);
    let other = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = get(url, ca, Some(&other), "/c/demo-api/hello");
    assert_eq!(r.status, 403, "{r:?}");
    let j = r.json();
    assert_eq!(j["principal"], "agent:other");
    assert_eq!(j["connection"], "demo-api");
    assert!(j["message"].as_str().unwrap().contains("no grant"));

    let bad = qs.cli(&["token", "create", "--principal", "nocolon"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("KIND:NAME"));
}

#[test]
fn plaintext_is_refused_with_the_https_url() {
    let qs = Quickstart::start();
    let url = qs.var("PORTCULLIS_URL");
    let plain = url.replace("https://", "http://");
    let r = curl(&[&format!("{plain}/c/demo-api/hello")]);
    assert_eq!(r.status, 400, "{r:?}");
    let j = r.json();
    assert_eq!(j["error"], "tls_required");
    assert_eq!(j["https_url"], format!("{url}/c/demo-api/hello"));
    // And nothing was proxied: the metrics count no request for demo-api.
    let admin = qs.var("PORTCULLIS_ADMIN_URL");
    let m = get(admin, qs.var("PORTCULLIS_CA"), None, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("portcullis_plaintext_refused_total 1"),
        "{}",
        m.body
    );
    assert!(!m.body.contains("connection=\"demo-api\""), "{}", m.body);

    // psql pointed at the HTTPS port is told so in its own protocol.
    let port = qs.proc.port().to_string();
    let psql = |sslmode: &str| {
        let out = std::process::Command::new("psql")
            .arg(format!(
                "host=localhost port={port} dbname=demo-api user=agent sslmode={sslmode} connect_timeout=10"
            ))
            .args(["-c", "select 1"])
            .env("PGPASSWORD", "x")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = psql("prefer");
    assert!(
        e.contains("HTTPS port") && e.contains("PostgreSQL listener"),
        "{e}"
    );
    let e = psql("verify-full");
    assert!(!e.contains("invalid response to SSL negotiation"), "{e}");
    assert!(e.contains("does not support SSL"), "{e}");
}

/// A port already in use: one clear error, and no token left behind for
/// a gateway that never ran.
#[test]
fn a_port_in_use_is_one_clear_error_and_leaves_no_token() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = std::process::Command::new(BIN)
        .args(["quickstart", "--data-dir", data.to_str().unwrap()])
        .args(["--listen", &addr, "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("portcullis: error:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&addr), "{line}");
    assert_eq!(line.matches("Address already in use").count(), 1, "{line}");
    assert!(!data.join("quickstart.env").exists());
    let tokens = std::process::Command::new(BIN)
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "token",
            "list",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(tokens.status.success());
    assert!(
        tokens.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&tokens.stdout)
    );
}

#[test]
fn tls_versions_and_handshake_records() {
    let qs = Quickstart::start();
    let s_client = |extra: &[&str]| s_client(qs.proc.port(), qs.var("PORTCULLIS_CA"), extra);
    // TLS 1.1 is never negotiated, even when the client allows weak crypto.
    let old = s_client(&["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    assert!(old.contains("Cipher is (NONE)"), "{old}");
    assert!(
        old.contains("alert handshake failure") || old.contains("no protocols"),
        "{old}"
    );
    // TLS 1.2 (intermediate profile) works and verifies.
    let t12 = s_client(&["-tls1_2"]);
    assert!(t12.contains("Protocol  : TLSv1.2"), "{t12}");
    assert!(t12.contains("Verify return code: 0 (ok)"), "{t12}");

    // Every handshake is logged with what was negotiated.
    let r = get(
        qs.var("PORTCULLIS_URL"),
        qs.var("PORTCULLIS_CA"),
        Some(qs.var("PORTCULLIS_TOKEN")),
        "/c/demo-api/hello",
    );
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let logs = qs.proc.logs();
    assert!(logs.contains("tls handshake failed"), "{logs}");
    assert!(logs.contains("version=TLSv1_2"), "{logs}");
    assert!(logs.contains("version=TLSv1_3"), "{logs}");
    assert!(logs.contains("suite=TLS13_"), "{logs}");
    assert!(
        logs.contains("group=\"X25519") || logs.contains("group=X25519"),
        "{logs}"
    );
    assert!(logs.contains("sni=\"localhost\""), "{logs}");
    assert!(logs.contains("alpn="), "{logs}");

    let m = get(
        qs.var("PORTCULLIS_ADMIN_URL"),
        qs.var("PORTCULLIS_CA"),
        None,
        "/metrics",
    )
    .body;
    assert!(
        m.contains("portcullis_tls_handshakes_total{version=\"TLSv1_2\""),
        "{m}"
    );
    assert!(
        m.contains("portcullis_tls_handshake_failures_total{reason="),
        "{m}"
    );
    assert!(
        m.contains("portcullis_http_requests_total{connection=\"demo-api\",status=\"200\"}"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_upstream_response_seconds_bucket"),
        "{m}"
    );
}

#[test]
fn rerunning_quickstart_reuses_ca_token_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Quickstart::run_in(tmp.path());
    let data = tmp.path().join("data");
    let env1 = read_env(&data.join("quickstart.env"));
    let ca1 = std::fs::read(data.join("ca.pem")).unwrap();
    let cfg1 = std::fs::read(data.join("portcullis.toml")).unwrap();
    assert!(first.stop().success(), "clean exit on SIGTERM");

    let second = Quickstart::run_in(tmp.path());
    let env2 = read_env(&data.join("quickstart.env"));
    assert_eq!(std::fs::read(data.join("ca.pem")).unwrap(), ca1, "CA kept");
    assert_eq!(
        std::fs::read(data.join("portcullis.toml")).unwrap(),
        cfg1,
        "config kept"
    );
    assert_eq!(
        env1["PORTCULLIS_TOKEN"], env2["PORTCULLIS_TOKEN"],
        "token kept"
    );
    let r = get(
        &env2["PORTCULLIS_URL"],
        &env2["PORTCULLIS_CA"],
        Some(&env2["PORTCULLIS_TOKEN"]),
        "/c/demo-api/hello",
    );
    assert_eq!(r.status, 200, "{r:?}");

    // What an agent is given holds its own credentials, not the
    // person's (review: the console link in the file an agent sources
    // signed it in as the admin).
    let agent = read_env(&data.join("quickstart-agent.env"));
    assert_eq!(agent["PORTCULLIS_TOKEN"], env2["PORTCULLIS_TOKEN"]);
    assert_eq!(agent["PORTCULLIS_URL"], env2["PORTCULLIS_URL"]);
    assert!(
        !agent.contains_key("PORTCULLIS_CONSOLE_URL")
            && !agent.contains_key("PORTCULLIS_APPROVER_TOKEN"),
        "{agent:?}"
    );

    // The console's one-time link, new at each start: it signs in the
    // local admin once, into an HttpOnly cookie the API accepts.
    let link = &env2["PORTCULLIS_CONSOLE_URL"];
    assert_ne!(&env1["PORTCULLIS_CONSOLE_URL"], link);
    // (The first run listened elsewhere: its link's path, on this run.)
    let old_path = &env1["PORTCULLIS_CONSOLE_URL"][env1["PORTCULLIS_URL"].len()..];
    let old = curl(&[
        "-o",
        "/dev/null",
        "--cacert",
        &env2["PORTCULLIS_CA"],
        &format!("{}{old_path}", env2["PORTCULLIS_URL"]),
    ]);
    assert_eq!(old.status, 403, "a new link replaces the previous one");
    let head = std::process::Command::new("curl")
        .args([
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            &env2["PORTCULLIS_CA"],
            link,
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 303") || head.starts_with("HTTP/2 303"),
        "{head}"
    );
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: __Host-portcullis-console="))
        .unwrap_or_else(|| panic!("{head}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let me = curl(&[
        "--cacert",
        &env2["PORTCULLIS_CA"],
        "-H",
        &format!("cookie: __Host-portcullis-console={session}"),
        &format!("{}/api/v1/me", env2["PORTCULLIS_URL"]),
    ])
    .json();
    assert_eq!(
        (me["principal"].as_str(), me["admin"].as_bool()),
        (Some("user:admin"), Some(true))
    );
    // The console's session opens nothing else.
    let r = get(
        &env2["PORTCULLIS_URL"],
        &env2["PORTCULLIS_CA"],
        Some(session),
        "/c/demo-api/hello",
    );
    assert_eq!(r.status, 401, "{r:?}");
    let again = curl(&["-o", "/dev/null", "--cacert", &env2["PORTCULLIS_CA"], link]);
    assert_eq!(again.status, 403, "a link works once");

    // Private material is private.
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "ca.key",
        "server.key",
        "secrets/demo-api-key",
        "quickstart.env",
    ] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    drop(second);
}

#[test]
fn the_demo_api_key_never_leaks() {
    let qs = Quickstart::start();
    let (url, ca, token) = qs.creds();
    let key = std::fs::read_to_string(qs.data().join("secrets/demo-api-key")).unwrap();
    let key = key.trim();
    assert!(key.len() >= 32);
    let mut bodies = String::new();
    for path in [
        "/c/demo-api/hello",
        "/c/demo-api/echo",
        "/c/demo-api/missing",
        "/c/nope/x",
    ] {
        bodies.push_str(&get(url, ca, Some(token), path).body);
    }
    bodies.push_str(&get(url, ca, None, "/c/demo-api/hello").body);
    let verbose = curl(&[
        "-v",
        "--cacert",
        ca,
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{url}/c/demo-api/hello"),
    ]);
    bodies.push_str(&verbose.stderr);
    bodies.push_str(&get(qs.var("PORTCULLIS_ADMIN_URL"), ca, None, "/metrics").body);
    assert!(!bodies.contains(key), "the demo key reached a caller");

    let logs = qs.proc.logs();
    assert!(!logs.contains(key), "the demo key is in the log");
    assert!(!logs.contains(token), "the caller token is in the log");
    // The database holds neither the key nor the token (only its hash).
    for (path, bytes) in all_files(&qs.data()) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("portcullis.db") {
            assert!(!contains(&bytes, key), "{name} holds the demo key");
            assert!(!contains(&bytes, token), "{name} holds the token");
        }
    }
}

#[test]
fn quickstart_masks_the_demo_customers() {
    let qs = Quickstart::start();
    let (url, ca, token) = qs.creds();
    let r = get(url, ca, Some(token), "/c/demo-api/customers");
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(
        j["customers"].as_array().unwrap().len(),
        3,
        "structure kept"
    );
    assert_eq!(
        j["customers"][0]["name"], "Ada Lovelace",
        "non-sensitive values kept"
    );
    for raw in [
        "ada.lovelace@example.com",
        "grace.hopper",
        "7946 0958",
        "555-0132",
        "4111 1111 1111 1111",
        "5500-0000-0000",
        "378282246310005",
        "GB82 WEST",
        "DE89370400440532013000",
        "203.0.113.42",
        "2001:db8::8a2e:370:7334",
        "sk_live_",
        "ghp_",
        "enigma-1912",
    ] {
        assert!(!r.body.contains(raw), "{raw} leaked: {}", r.body);
    }
    assert_eq!(j["customers"][0]["card"], "**** **** **** 1111");
    assert_eq!(j["customers"][0]["email"], "***@example.com");
    let m = get(qs.var("PORTCULLIS_ADMIN_URL"), ca, None, "/metrics").body;
    assert!(
        m.contains("portcullis_masked_values_total{connection=\"demo-api\",detector=\"card\"} 3"),
        "{m}"
    );
}

#[test]
fn http_requests_are_recorded_masked_and_replayable() {
    let qs = Quickstart::start();
    let (url, ca, token) = qs.creds();
    assert_eq!(
        get(url, ca, Some(token), "/c/demo-api/customers").status,
        200
    );
    // The session ends (and is sealed) once its body has been sent.
    let mut s = serde_json::Value::Null;
    for _ in 0..40 {
        let out = qs.cli(&["sessions", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        // Newest first.
        s = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        if s["outcome"] != "open" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (
            s["protocol"].as_str(),
            s["connection"].as_str(),
            s["outcome"].as_str()
        ),
        (Some("http"), Some("demo-api"), Some("200"))
    );
    let out = qs.cli(&["replay", s["id"].as_str().unwrap(), "--no-wait"]);
    let replay = String::from_utf8(out.stdout).unwrap();
    assert!(
        replay.contains("> GET /customers") && replay.contains("< 200"),
        "{replay}"
    );
    assert!(
        replay.contains("***@example.com") && !replay.contains("ada.lovelace@"),
        "{replay}"
    );
    let key = std::fs::read_to_string(qs.data().join("secrets/demo-api-key")).unwrap();
    for (path, bytes) in all_files(&qs.data().join("recordings")) {
        let (records, _) = (path.clone(), bytes);
        let json = qs.cli(&[
            "replay",
            path.file_stem().unwrap().to_str().unwrap(),
            "--json",
        ]);
        let j = String::from_utf8(json.stdout).unwrap();
        assert!(
            !j.contains(token) && !j.contains(key.trim()),
            "secret recorded in {}",
            records.display()
        );
    }
    let bad = qs.cli(&["replay", "nothex!"]);
    assert!(!bad.status.success());
}

/// A keep-alive connection is one session: one start, one end counting
/// its requests, one recording with the requests numbered. Each request
/// is still authenticated on its own: a bad token mid-connection is
/// refused while the session goes on.
#[test]
fn a_keep_alive_connection_is_one_session_with_numbered_requests() {
    let qs = Quickstart::start();
    let (url, ca, token) = qs.creds();
    // One curl, four requests: one TLS connection (curl reuses it
    // across --next); the third request carries a wrong token.
    let mut cmd = std::process::Command::new("curl");
    for (i, (tok, path)) in [
        (token, "/hello"),
        (token, "/customers"),
        ("pcl_not-a-token", "/hello"),
        (token, "/hello"),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args([
            "-sS",
            "--cacert",
            ca,
            "-w",
            "\n%{http_code} %{num_connects}\n",
        ])
        .args(["-H", &format!("Authorization: Bearer {tok}")])
        .arg(format!("{url}/c/demo-api{path}"));
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let codes: Vec<&str> = text
        .lines()
        .filter(|l| l.len() == 5 && l.as_bytes()[3] == b' ')
        .collect();
    assert_eq!(
        codes,
        ["200 1", "200 0", "401 0", "200 0"],
        "one connection: {text}"
    );

    // The session ends once the connection has closed.
    let ended = |qs: &Quickstart| -> Vec<serde_json::Value> {
        let out = qs.cli(&["audit", "export"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.pointer("/event/kind") == Some(&"session_end".into()))
            .collect()
    };
    let mut ends = ended(&qs);
    for _ in 0..40 {
        if !ends.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        ends = ended(&qs);
    }
    assert_eq!(ends.len(), 1, "{ends:?}");
    let end = &ends[0]["event"];
    assert_eq!(end["requests"], 3, "the refused request is not one: {end}");
    assert_eq!(end["outcome"], "200", "{end}");
    let id = end["session"].as_str().unwrap();
    let out = qs.cli(&["replay", id, "--no-wait"]);
    let replay = String::from_utf8(out.stdout).unwrap();
    for line in [
        "#1 > GET /hello",
        "#2 > GET /customers",
        "#3 > GET /hello",
        "#3 < 200",
    ] {
        assert!(replay.contains(line), "{line} missing:\n{replay}");
    }
    // Masked in the recording as in the response.
    assert!(!replay.contains("ada.lovelace@"), "{replay}");

    // HTTP/2: four requests in parallel on one connection share one
    // session; their body events carry their numbers, so interleaved
    // streams stay apart.
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--http2", "-Z", "--cacert", ca, "-o", "/dev/null"])
        .args(["-w", "%{http_version} %{http_code}\n"])
        .args(["-H", &format!("Authorization: Bearer {token}")]);
    for _ in 0..4 {
        cmd.arg(format!("{url}/c/demo-api/customers"));
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("2 200").count(), 4, "{text}");
    let mut ends = ended(&qs);
    for _ in 0..40 {
        if ends.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        ends = ended(&qs);
    }
    assert_eq!(ends.len(), 2, "{ends:?}");
    let end = &ends[1]["event"];
    assert_eq!(end["requests"], 4, "{end}");
    let id = end["session"].as_str().unwrap();
    let out = qs.cli(&["replay", id, "--json"]);
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for n in 1..=4 {
        let of = |kind: &str| {
            records
                .iter()
                .filter(|r| r["type"] == kind && r["request"] == n)
                .count()
        };
        assert_eq!(of("http_request"), 1, "request {n}");
        assert_eq!(of("http_response"), 1, "request {n}");
        assert!(of("http_body") >= 1, "request {n}'s body");
    }
}

#[test]
fn policy_explain_names_the_rule_or_the_denial() {
    let qs = Quickstart::start();
    let out = qs.cli(&[
        "policy",
        "explain",
        "--principal",
        "agent:quickstart",
        "--connection",
        "demo-api",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("ALLOW") && text.contains("\"quickstart-demo\""),
        "{text}"
    );
    // What else applies there: masking, no approval.
    assert!(text.contains("masking:  rule \"quickstart-pii\""), "{text}");
    assert!(text.contains("approval: none"), "{text}");
    let out = qs.cli(&[
        "policy",
        "explain",
        "--principal",
        "agent:other",
        "--connection",
        "demo-api",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "DENY exits 1");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["masking"], "quickstart-pii");
    assert_eq!(v["reason"]["kind"], "no_grant");
    assert_eq!(v["connection_defined"], true);
    let out = qs.cli(&[
        "policy",
        "explain",
        "--principal",
        "agent:quickstart",
        "--connection",
        "nope",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("DENY") && text.contains("no connection named"),
        "{text}"
    );
    let out = qs.cli(&[
        "policy",
        "explain",
        "--principal",
        "bad",
        "--connection",
        "demo-api",
    ]);
    assert!(!out.status.success());
}

#[test]
fn cert_issue_and_rotate_server() {
    let qs = Quickstart::start();
    let prefix = qs.tmp.path().join("bot");
    let out = qs.cli(&[
        "cert",
        "issue",
        "--principal",
        "agent:bot",
        "--ttl",
        "1d",
        "--out",
        prefix.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = qs.var("PORTCULLIS_CA");
    let verify = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    let pem = prefix.with_extension("pem");
    let v = verify(&[
        "verify",
        "-CAfile",
        ca,
        "-purpose",
        "sslclient",
        pem.to_str().unwrap(),
    ]);
    assert!(v.contains(": OK"), "{v}");
    let v = verify(&[
        "verify",
        "-CAfile",
        ca,
        "-purpose",
        "sslserver",
        pem.to_str().unwrap(),
    ]);
    assert!(
        !v.contains(": OK"),
        "a client certificate is not a server certificate: {v}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(prefix.with_extension("key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let before = std::fs::read(qs.data().join("server.pem")).unwrap();
    let out = qs.cli(&["cert", "rotate-server", "--name", "gw.example.com"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = qs.data().join("server.pem");
    assert_ne!(std::fs::read(&after).unwrap(), before);
    let v = verify(&[
        "verify",
        "-CAfile",
        ca,
        "-purpose",
        "sslserver",
        "-verify_hostname",
        "gw.example.com",
        after.to_str().unwrap(),
    ]);
    assert!(v.contains(": OK"), "{v}");
}

#[test]
fn agent_demo_routes_demo_api_through_a_separate_agent_process() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let proc = Proc::spawn(
        tmp.path(),
        &[
            "quickstart",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--agent-demo",
        ],
        "quickstart.log",
    );
    let env = read_env(&data.join("quickstart.env"));
    let (url, ca, token) = (
        &env["PORTCULLIS_URL"],
        &env["PORTCULLIS_CA"],
        &env["PORTCULLIS_TOKEN"],
    );
    // The README's curl works unchanged.
    let r = get(url, ca, Some(token), "/c/demo-api/hello");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["api_key_valid"], true);

    // The key exists only under data/agent/; the gateway's config routes
    // demo-api to the agent and holds no secret for it.
    let key = std::fs::read_to_string(data.join("agent/secrets/demo-api-key")).unwrap();
    let key = key.trim();
    assert!(!data.join("secrets/demo-api-key").exists());
    let config = std::fs::read_to_string(data.join("portcullis.toml")).unwrap();
    assert!(config.contains("agent = \"quickstart\""), "{config}");
    for (path, bytes) in all_files(&data) {
        if path.starts_with(data.join("agent")) {
            continue;
        }
        assert!(
            !contains(&bytes, key),
            "the demo key is in {}",
            path.display()
        );
    }
    assert!(!proc.logs().contains(key));

    // The agent is a second process, listed by the gateway.
    let out = std::process::Command::new(BIN)
        .args(["agents", "list"])
        .args(["--admin", &env["PORTCULLIS_ADMIN_URL"], "--ca", ca])
        .env("PORTCULLIS_TOKEN", &env["PORTCULLIS_TOKEN"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.starts_with("quickstart ") && listed.contains("demo-api"),
        "{listed}"
    );
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let agent_cfg = data.join("agent/agent.toml");
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains(agent_cfg.to_str().unwrap()),
        "no agent process"
    );
    // If the agent dies, the quickstart says so and reaps it (no zombie).
    let children = std::process::Command::new("pgrep")
        .args(["-P", &proc.child.id().to_string()])
        .output()
        .unwrap();
    let agent_pid = String::from_utf8_lossy(&children.stdout)
        .lines()
        .next()
        .expect("the agent is a child of the quickstart")
        .trim()
        .to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &agent_pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        proc.logs().contains("the demo agent exited"),
        "{}",
        proc.logs()
    );
    let state = std::process::Command::new("ps")
        .args(["-o", "stat=", "-p", &agent_pid])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&state.stdout).trim().is_empty(),
        "reaped, not a zombie: {}",
        String::from_utf8_lossy(&state.stdout)
    );
    assert!(proc.stop().success());
    std::thread::sleep(Duration::from_millis(300));
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&ps.stdout).contains(agent_cfg.to_str().unwrap()));
}

/// One connection carries a bounded number of sessions: each distinct
/// credential opens its own, and past the limit a request is refused with
/// 429 while the connection's other sessions go on.
#[test]
fn sessions_per_connection_are_bounded() {
    let qs = Quickstart::start();
    let (url, ca, _) = qs.creds();
    let tokens: Vec<String> = (0..65)
        .map(|_| {
            let out = qs.cli(&["token", "create", "--principal", "agent:quickstart"]);
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        })
        .collect();
    let mut cmd = std::process::Command::new("curl");
    for (i, tok) in tokens.iter().chain(tokens.first()).enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", "--cacert", ca, "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{num_connects}\n"])
            .args(["-H", &format!("Authorization: Bearer {tok}")])
            .arg(format!("{url}/c/demo-api/hello"));
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 66, "{text}");
    assert_eq!(
        lines.iter().filter(|l| l.ends_with(" 1")).count(),
        1,
        "one connection: {text}"
    );
    assert!(lines[..64].iter().all(|l| l.starts_with("200")), "{text}");
    assert!(lines[64].starts_with("429"), "{text}");
    // A credential that already has its session on the connection goes on.
    assert!(lines[65].starts_with("200"), "{text}");
}

/// Nothing stale: revoking a token closes the keep-alive connection its
/// HTTP session lives on within about a second (the listener cuts the
/// connection whatever its protocol; HTTP/1.1 here), and the session's
/// end entry says why.
#[test]
fn revoking_a_token_closes_its_keep_alive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let qs = Quickstart::start();
    let (token, id) = qs.agent_token();
    let ca = std::path::PathBuf::from(qs.var("PORTCULLIS_CA"));
    let port = qs.proc.port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // HTTP/1.1 keep-alive: one request answered, then idle.
    let mut h1 = rt.block_on(async {
        let mut s = tls_connect(port, &ca).await;
        let req = format!(
            "GET /c/demo-api/hello HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        s
    });
    let revoked_at = std::time::Instant::now();
    assert!(qs.cli(&["token", "revoke", &id]).status.success());
    let closed = rt.block_on(async {
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(5), h1.read(&mut buf)).await
    });
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection is closed: {closed:?}"
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(4));
    // The session's end says why.
    std::thread::sleep(Duration::from_millis(500));
    let audit = String::from_utf8_lossy(&qs.cli(&["audit", "export"]).stdout).to_string();
    let end = audit
        .lines()
        .filter(|l| l.contains("session_end"))
        .find(|l| l.contains("credential_ended"))
        .unwrap_or_else(|| panic!("no credential_ended session end in {audit}"));
    assert!(end.contains("revoked"), "{end}");
}

/// The gateway keeps token records in memory (`CachedTokens`): a
/// revocation written by another process (`portcullis token revoke`) must
/// still hold from the very next request, while the token is busy on a
/// keep-alive connection and the cache is warm.
#[test]
fn a_revocation_holds_from_the_next_request_while_the_token_is_in_use() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let qs = Quickstart::start();
    let (token, id) = qs.agent_token();
    let (url, ca) = (qs.var("PORTCULLIS_URL"), qs.var("PORTCULLIS_CA"));
    let revoked = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = {
        let (revoked, url) = (revoked.clone(), format!("{url}/c/demo-api/hello"));
        let client = https_client(ca);
        rt.spawn(async move {
            let (mut served, mut refused) = (0u32, 0u32);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while refused < 50 && tokio::time::Instant::now() < deadline {
                // Read before sending: true means the revocation had
                // returned before this request left.
                let after = revoked.load(Ordering::SeqCst);
                match client.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if after => {
                        assert_eq!(
                            r.status(),
                            401,
                            "a request sent after the revocation returned was served"
                        );
                        refused += 1;
                    }
                    Ok(r) => {
                        served += u32::from(r.status() == 200);
                        let _ = r.bytes().await;
                    }
                    // The revoked session's connection closed under it.
                    Err(_) => {}
                }
            }
            (served, refused)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(qs.cli(&["token", "revoke", &id]).status.success());
    revoked.store(true, Ordering::SeqCst);
    let (served, refused) = rt.block_on(load).unwrap();
    assert!(served > 0, "the token was in use before its revocation");
    assert_eq!(refused, 50, "requests after the revocation were answered");
}

/// The admin listener authenticates everything but /healthz and /metrics,
/// with an operator's token or a client certificate from the gateway's CA.
#[test]
fn the_admin_listener_takes_a_token_or_a_client_certificate() {
    let qs = Quickstart::start();
    let admin = qs.var("PORTCULLIS_ADMIN_URL");
    let ca = qs.var("PORTCULLIS_CA");
    let prefix = qs.tmp.path().join("ops");
    let out = qs.cli(&[
        "cert",
        "issue",
        "--principal",
        "agent:ops",
        "--out",
        prefix.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let (cert, key) = (
        format!("{}.pem", prefix.display()),
        format!("{}.key", prefix.display()),
    );
    let status = format!("{admin}/status");
    let anonymous = curl(&["--cacert", ca, &status]);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let with_cert = curl(&["--cacert", ca, "--cert", &cert, "--key", &key, &status]);
    assert_eq!(with_cert.status, 200, "{with_cert:?}");
    // No grant reaches anything for agent:ops: it reads the verdict, and
    // neither the agent nor the peers.
    let seen: serde_json::Value = serde_json::from_str(&with_cert.body).unwrap();
    assert_eq!(seen["accepting_sessions"], true, "{seen}");
    assert_eq!(seen["agents"], serde_json::json!([]), "{seen}");
    assert!(seen.get("peers").is_none(), "{seen}");
    let auth = format!("Authorization: Bearer {}", qs.var("PORTCULLIS_TOKEN"));
    assert_eq!(curl(&["--cacert", ca, "-H", &auth, &status]).status, 200);
    // Probes need nothing.
    assert_eq!(
        curl(&["--cacert", ca, &format!("{admin}/healthz")]).status,
        200
    );
    assert_eq!(
        curl(&["--cacert", ca, &format!("{admin}/metrics")]).status,
        200
    );
}

/// A client certificate from the listener's own CA still names only the
/// principal kinds the listener accepts (`principal_kinds`, default
/// agents): a CN of `user:root` is refused with the reason, an agent's
/// is admitted. Certificates made with openssl, as an operator would.
#[test]
fn a_client_certificate_naming_another_kind_is_refused() {
    let qs = Quickstart::start();
    let (url, ca, _) = qs.creds();
    let dir = qs.tmp.path();
    let data = qs.data();
    let issue = |cn: &str| {
        let (key, csr, cert) = (
            dir.join(format!("{}.key", cn.replace(':', "_"))),
            dir.join("r.csr"),
            dir.join(format!("{}.pem", cn.replace(':', "_"))),
        );
        let req = std::process::Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(&key)
            .args(["-subj", &format!("/CN={cn}"), "-out"])
            .arg(&csr)
            .output()
            .unwrap();
        assert!(
            req.status.success(),
            "{}",
            String::from_utf8_lossy(&req.stderr)
        );
        std::fs::write(dir.join("ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let sign = std::process::Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(data.join("ca.pem"))
            .arg("-CAkey")
            .arg(data.join("ca.key"))
            .arg("-extfile")
            .arg(dir.join("ext"))
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            sign.status.success(),
            "{}",
            String::from_utf8_lossy(&sign.stderr)
        );
        (cert.display().to_string(), key.display().to_string())
    };
    let hello = format!("{url}/c/demo-api/hello");
    let (cert, key) = issue("user:root");
    let r = curl(&["--cacert", ca, "--cert", &cert, "--key", &key, &hello]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.body.contains("principal_kinds"), "{}", r.body);
    let (cert, key) = issue("agent:quickstart");
    let r = curl(&["--cacert", ca, "--cert", &cert, "--key", &key, &hello]);
    assert_eq!(r.status, 200, "{r:?}");
}

/// Mozilla's server-side TLS guidelines, checked from outside with
/// sslyze: the HTTPS and admin listeners meet the intermediate profile
/// (protocols, suites, curves, server cipher order, certificate).
#[test]
fn listeners_meet_mozillas_intermediate_profile() {
    let qs = Quickstart::start();
    let ca = qs.var("PORTCULLIS_CA");
    mozilla_compliant(qs.proc.port(), ca, "intermediate", None);
    let admin: u16 = qs
        .var("PORTCULLIS_ADMIN_URL")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    mozilla_compliant(admin, ca, "intermediate", None);
}
