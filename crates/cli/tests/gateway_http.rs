//! `portcullis gateway --config` against real HTTPS targets started by the
//! test: credential injection, verification failures, limits, timeouts.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::upstream::{self, TestUpstream};
use common::*;
use portcullis_tls::{CertificateAuthority, LeafKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CANARY: &str = "canary-upstream-secret-7f3a9c";

struct Setup {
    tmp: tempfile::TempDir,
    gw: Proc,
    ca: String,
    token: String,
    good: TestUpstream,
    _others: Vec<TestUpstream>,
}

fn write_cert(
    ca: &CertificateAuthority,
    dir: &Path,
    stem: &str,
    names: &[&str],
) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let c = ca
        .issue(LeafKind::Server, &names, Duration::from_secs(86400))
        .unwrap();
    let (cp, kp) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cp, c.cert_pem).unwrap();
    std::fs::write(&kp, c.key_pem).unwrap();
    (cp, kp)
}

fn setup(profile: &str) -> Setup {
    setup_with(profile, "")
}

/// `limits`: extra lines for the `[limits]` section.
fn setup_with(profile: &str, limits: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("ca2")).unwrap();
    let (ca, _) = CertificateAuthority::load_or_create(dir).unwrap();
    let (other_ca, _) = CertificateAuthority::load_or_create(&dir.join("ca2")).unwrap();
    write_cert(&ca, dir, "server", &["localhost", "127.0.0.1", "*.gw.test"]);

    let (c, k) = write_cert(&ca, dir, "good", &["localhost"]);
    let good = upstream::start(&c, &k);
    let (c, k) = write_cert(&other_ca, dir, "untrusted", &["localhost"]);
    let untrusted = upstream::start(&c, &k);
    let (c, k) = write_cert(&ca, dir, "wronghost", &["wrong.example"]);
    let wronghost = upstream::start(&c, &k);
    let down_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(dir.join("upstream-key"), format!("{CANARY}\n")).unwrap();

    let cred = r#"credential = { header = "x-api-key", secret = "file:upstream-key" }"#;
    let config = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
domain = "gw.test"
cert = "server.pem"
key = "server.key"
tls = {{ profile = "{profile}" }}

[limits]
max_request_body_bytes = 100000
max_header_bytes = 8192
{limits}

[[connections]]
name = "good"
type = "http"
url = "https://localhost:{good}/base"
ca_file = "ca.pem"
{cred}

[[connections]]
name = "slow"
type = "http"
url = "https://localhost:{good}"
ca_file = "ca.pem"
timeout = "1s"
{cred}

[[connections]]
name = "untrusted"
type = "http"
url = "https://localhost:{untrusted}"
ca_file = "ca.pem"
{cred}

[[connections]]
name = "wronghost"
type = "http"
url = "https://localhost:{wronghost}"
ca_file = "ca.pem"
{cred}

[[connections]]
name = "down"
type = "http"
url = "https://localhost:{down_port}"
ca_file = "ca.pem"
{cred}

[[connections]]
name = "nogrant"
type = "http"
url = "https://localhost:{good}"
ca_file = "ca.pem"

[[masking.rules]]
name = "good-pii"
connections = ["good"]
pass_content_types = ["image/*"]
[[masking.rules.fields]]
keys = ["password"]

[[masking.rules]]
name = "slow-tokens"
connections = ["slow"]
actions = {{ email = {{ action = "hash", reversible = true }} }}

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["good", "slow", "untrusted", "wronghost", "down"]
"#,
        good = good.port,
        untrusted = untrusted.port,
        wronghost = wronghost.port,
    );
    let (gw, token) = gateway_with_config(dir, &config);
    Setup {
        ca: dir.join("ca.pem").display().to_string(),
        tmp,
        gw,
        token,
        good,
        _others: vec![untrusted, wronghost],
    }
}

impl Setup {
    fn get(&self, path: &str) -> Reply {
        get(&self.gw.url, &self.ca, Some(&self.token), path)
    }

    fn auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }
}

#[test]
fn credential_is_injected_and_caller_headers_are_cleaned() {
    let s = setup("intermediate");
    let r = curl(&[
        "--http1.1",
        "--cacert",
        &s.ca,
        "-H",
        &s.auth(),
        "-H",
        "x-api-key: forged-by-caller",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "Connection: x-drop-me",
        "-H",
        "x-drop-me: 1",
        "-H",
        "x-keep-me: 2",
        &format!("{}/c/good/items/7?sort=asc&x=%20y", s.gw.url),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["ok"], true);
    let seen = s.good.last();
    assert_eq!(
        seen.path_and_query, "/base/items/7?sort=asc&x=%20y",
        "base path + rest + query"
    );
    assert_eq!(
        seen.header("x-api-key"),
        Some(CANARY),
        "the gateway's credential, not the caller's"
    );
    assert_eq!(
        seen.header("authorization"),
        None,
        "the caller's token never reaches the target"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-drop-me"), None);
    assert_eq!(seen.header("x-keep-me"), Some("2"));
    assert!(seen.authority.starts_with("localhost:"), "{seen:?}");
    assert_eq!(seen.version, "HTTP/2.0", "ALPN chose h2 to the target");

    // A large response streams back whole.
    let r = s.get("/c/slow/big");
    assert_eq!(r.body.len(), 1 << 20);
    assert!(!r.body.contains(CANARY));
}

#[test]
fn host_routing_under_the_gateway_domain() {
    let s = setup("intermediate");
    let port = s.gw.port();
    let via_host = |host: &str, path: &str| {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let url = format!("https://{host}:{port}{path}");
        curl(&[
            "--resolve",
            &resolve,
            "--cacert",
            &s.ca,
            "-H",
            &s.auth(),
            &url,
        ])
    };
    let r = via_host("good.gw.test", "/items?x=1");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.good.last().path_and_query, "/base/items?x=1");
    // A host under the domain is subject to the same policy.
    let r = via_host("nogrant.gw.test", "/x");
    assert_eq!(r.status, 403, "{r:?}");
}

#[test]
fn upstream_failures_are_502_or_504_with_reasons() {
    let s = setup("intermediate");
    let r = s.get("/c/untrusted/x");
    assert_eq!(r.status, 502, "{r:?}");
    let j = r.json();
    assert_eq!(j["error"], "bad_gateway");
    assert_eq!(j["connection"], "untrusted");
    assert!(
        j["message"].as_str().unwrap().contains("not trusted"),
        "{j}"
    );

    let r = s.get("/c/wronghost/x");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("not valid for host \"localhost\""),
        "{}",
        r.body
    );

    let r = s.get("/c/down/x");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.json()["message"].as_str().unwrap().contains("refused"),
        "{}",
        r.body
    );

    // A slow target: 504 after the connection's 1 s, while other callers
    // are served meanwhile.
    let (url, ca, token) = (s.gw.url.clone(), s.ca.clone(), s.token.clone());
    let slow = std::thread::spawn(move || get(&url, &ca, Some(&token), "/c/slow/slow"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.get("/c/good/ping").status, 200);
    let r = slow.join().unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.json()["error"], "upstream_timeout");

    // Nothing was sent to the untrusted targets: verification happens
    // before any byte of the request.
    assert_eq!(s._others[0].count(), 0);
    assert_eq!(s._others[1].count(), 0);
    // No fallback: still refused on retry, and the good one still works.
    assert_eq!(s.get("/c/untrusted/x").status, 502);
    assert_eq!(s.get("/c/good/ping").status, 200);
}

/// Mozilla's server-side guidelines, checked from outside: the server's
/// suite order wins over the client's, and the gateway's responses carry
/// HSTS.
#[test]
fn server_cipher_order_and_hsts() {
    let s = setup("intermediate");
    // The client prefers AES-128; the server prefers AES-256.
    let t13 = s_client(
        s.gw.port(),
        &s.ca,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
        ],
    );
    assert!(t13.contains("TLS_AES_256_GCM_SHA384"), "{t13}");
    let t12 = s_client(
        s.gw.port(),
        &s.ca,
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384",
        ],
    );
    assert!(t12.contains("AES256-GCM-SHA384"), "{t12}");
    for path in ["/healthz", "/nothing", "/c/good/ping"] {
        let r = curl(&[
            "--cacert",
            &s.ca,
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{}{path}", s.gw.url),
        ]);
        assert!(
            r.body
                .to_ascii_lowercase()
                .contains("strict-transport-security: max-age=63072000"),
            "{path}: {}",
            r.body
        );
    }
}

#[test]
fn policy_denies_by_default() {
    let s = setup("intermediate");
    let r = s.get("/c/nogrant/x");
    assert_eq!(r.status, 403, "{r:?}");
    let j = r.json();
    assert_eq!(j["error"], "forbidden");
    assert_eq!(j["principal"], "agent:tester");
    assert_eq!(j["connection"], "nogrant");
    let before = s.good.count();
    assert_eq!(s.get("/c/nogrant/y").status, 403);
    assert_eq!(s.good.count(), before, "a denied request reaches nobody");
    // curl normalises ../ itself; send it raw with --path-as-is.
    let raw = curl(&[
        "--path-as-is",
        "--cacert",
        &s.ca,
        "-H",
        &s.auth(),
        &format!("{}/c/good/a/../../x", s.gw.url),
    ]);
    assert_eq!(raw.status, 400, "{raw:?}");
}

/// A HEAD answered by the gateway itself (a refusal, an unknown path, an
/// unauthenticated caller) is a head without a body on both HTTP
/// versions: over HTTP/2 the body the gateway wrote reset the stream
/// (review, 2026-12-05: `curl -I` got PROTOCOL_ERROR).
#[test]
fn head_requests_the_gateway_answers_itself_have_no_body() {
    let s = setup("intermediate");
    for version in ["--http1.1", "--http2"] {
        for (path, token, status) in [
            ("/c/nogrant/x", true, 403),
            ("/c/good/a/../../x", true, 400),
            ("/c/good/x", false, 401),
        ] {
            let auth = s.auth();
            let mut args = vec!["-I", "--path-as-is", version, "--cacert", &s.ca];
            if token {
                args.extend(["-H", &auth]);
            }
            let url = format!("{}{path}", s.gw.url);
            args.push(&url);
            let r = curl(&args);
            assert_eq!(r.curl_exit, 0, "{version} {path}: {r:?}");
            assert_eq!(r.status, status, "{version} {path}: {r:?}");
        }
    }
}

#[test]
fn limits_on_headers_and_bodies() {
    let s = setup("intermediate");
    let u = format!("{}/c/good/upload", s.gw.url);
    let small = s.tmp.path().join("small.bin");
    let big = s.tmp.path().join("big.bin");
    std::fs::write(&small, vec![b'a'; 50_000]).unwrap();
    std::fs::write(&big, vec![b'a'; 200_000]).unwrap();
    let post = |file: &Path, extra: &[&str]| {
        let data = format!("@{}", file.display());
        let auth = s.auth();
        let mut args = vec![
            "--cacert",
            s.ca.as_str(),
            "-H",
            auth.as_str(),
            "--data-binary",
            data.as_str(),
        ];
        args.extend_from_slice(extra);
        args.push(&u);
        curl(&args)
    };
    let r = post(&small, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body_len"], 50_000);
    let before = s.good.count();
    let r = post(&big, &[]);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json()["error"], "payload_too_large");
    assert_eq!(
        s.good.count(),
        before,
        "a declared oversize body is refused before the target"
    );
    // Chunked: no length declared up front; refused when the limit is hit.
    let r = post(&big, &["-H", "Transfer-Encoding: chunked"]);
    assert_eq!(r.status, 413, "{r:?}");
    // HTTP/2 callers get the same 413 JSON, not a stream error, however
    // far over the limit the body is.
    let r = post(&big, &["--http2"]);
    assert_eq!(r.status, 413, "{r:?}");
    let far = s.tmp.path().join("far.bin");
    std::fs::write(&far, vec![b'a'; 12 * 1024 * 1024]).unwrap();
    for v in ["--http1.1", "--http2"] {
        let r = post(&far, &[v]);
        assert_eq!(r.status, 413, "{v}: {r:?}");
        assert_eq!(r.json()["error"], "payload_too_large");
    }

    let huge = format!("x-big: {}", "h".repeat(20_000));
    let r = curl(&["--cacert", &s.ca, "-H", &s.auth(), "-H", &huge, &u]);
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(s.get("/c/good/ping").status, 200, "still serving");
}

/// A caller that leaves before its answer — closing the connection, or
/// closing it after pipelining the start of another request (hyper then
/// reads no further, so only the socket's hang-up tells), or half way
/// through its body — stops the forward: its session ends `caller_gone`
/// at once rather than with the target's status when the target answers
/// (the test target takes 5 s), counting the body bytes that arrived
/// (part of one, or all of one sent before leaving).
/// An HTTP/2 stream reset on a connection that goes on is not its
/// caller leaving: the session ends with its last answer's status.
#[test]
fn a_request_whose_caller_leaves_ends_caller_gone() {
    let s = setup("intermediate");
    let cfg = s.tmp.path().join("portcullis.toml");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let left = std::time::Instant::now();
    rt.block_on(async {
        let head = format!(
            "GET /c/good/slow HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\r\n",
            s.token
        );
        let upload = format!(
            "POST /c/good/upload HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-length: 90000\r\n\r\n{}",
            s.token,
            "z".repeat(1000)
        );
        // A whole body, then gone before the answer: its bytes reached
        // the target and are counted (a review saw 0).
        let whole = format!(
            "POST /c/good/slow HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-length: 1000\r\n\r\n{}",
            s.token,
            "w".repeat(1000)
        );
        for sent in [
            head.clone(),
            format!("{head}GET /c/good/next HTTP/1.1\r\nhost: loc"),
            upload,
            whole,
        ] {
            let mut tls = tls_connect(s.gw.port(), Path::new(&s.ca)).await;
            tls.write_all(sent.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(tls);
        }
        h2_reset_then_answered(&s).await;
    });
    let sessions = || json_lines(&cli_at(&cfg, &["sessions", "list", "--json"]));
    let gone = || {
        sessions()
            .into_iter()
            .filter(|s| s["connection"] == "good" && s["outcome"] == "caller_gone")
            .count()
    };
    while gone() < 4 {
        assert!(
            left.elapsed() < Duration::from_millis(4500),
            "sessions were not ended caller_gone before the target answered: {:?}",
            sessions()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let audit = String::from_utf8_lossy(&cli_at(&cfg, &["audit", "export"]).stdout).to_string();
    let ends: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e.to_string().contains("session_end"))
        .collect();
    fn field(v: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => m
                .get(name)
                .cloned()
                .or_else(|| m.values().find_map(|v| field(v, name))),
            _ => None,
        }
    }
    let with = |outcome: &str| -> Vec<&serde_json::Value> {
        ends.iter()
            .filter(|e| field(e, "outcome").is_some_and(|o| o.to_string().contains(outcome)))
            .collect()
    };
    let gone = with("caller_gone");
    assert_eq!(gone.len(), 4, "{ends:?}");
    // Nothing was counted as sent to them; the uploads count what came.
    assert!(
        gone.iter()
            .all(|e| field(e, "bytes_to_caller") == Some(0.into())),
        "{gone:?}"
    );
    assert_eq!(
        gone.iter()
            .filter(|e| field(e, "bytes_from_caller") == Some(1000.into()))
            .count(),
        2,
        "{gone:?}"
    );
    // The HTTP/2 session whose reset stream ended last ended with its
    // other stream's answer.
    let h2 = sessions()
        .into_iter()
        .filter(|s| s["connection"] == "good" && s["outcome"] != "caller_gone")
        .map(|s| s["outcome"].clone())
        .collect::<Vec<_>>();
    assert_eq!(h2, [serde_json::json!("200")], "{:?}", sessions());
}

/// An HTTP/2 connection to the gateway at `port` (TLS, ALPN `h2`): its
/// sender, and the task driving it (done when the connection closes).
async fn h2_connect(
    port: u16,
    ca: &Path,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls(ca, &[b"h2"]));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    (sender, tokio::spawn(conn))
}

/// On one HTTP/2 connection: a slow request, a quick one answered, then
/// the slow one's stream reset (its response dropped), then the
/// connection closed in good order.
async fn h2_reset_then_answered(s: &Setup) {
    let (mut sender, closed) = h2_connect(s.gw.port(), Path::new(&s.ca)).await;
    let mut ask = |path: &str| {
        let req = http::Request::get(format!("https://localhost:{}{path}", s.gw.port()))
            .header("authorization", format!("Bearer {}", s.token))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.send_request(req)
    };
    let slow = ask("/c/good/slow");
    let quick = ask("/c/good/ping");
    let slow = tokio::spawn(slow);
    assert_eq!(quick.await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Dropping the response resets its stream.
    slow.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(3), closed).await;
}

#[test]
fn a_caller_vanishing_mid_body_does_not_hurt_others() {
    let s = setup("intermediate");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..3 {
            let mut tls = tls_connect(s.gw.port(), Path::new(&s.ca)).await;
            let head = format!(
                "POST /c/good/upload HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-length: 90000\r\n\r\n",
                s.token
            );
            tls.write_all(head.as_bytes()).await.unwrap();
            tls.write_all(&[b'z'; 1000]).await.unwrap();
            tls.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(tls);
        }
        // A raw, well-formed request on a fresh connection still works.
        let mut tls = tls_connect(s.gw.port(), Path::new(&s.ca)).await;
        let req = format!(
            "GET /c/good/after HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
            s.token
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        let _ = tls.read_to_end(&mut resp).await;
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    });
    assert_eq!(s.get("/c/good/ping").status, 200);
    // The partial bodies never reached the target as complete requests.
    assert!(
        s.good
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.path_and_query != "/base/upload" || r.body_len != 90000)
    );
}

#[test]
fn modern_profile_refuses_tls12() {
    let s = setup("modern");
    let run = |v: &str| s_client(s.gw.port(), &s.ca, &[v]);
    let t12 = run("-tls1_2");
    assert!(t12.contains("Cipher is (NONE)"), "{t12}");
    let t13 = run("-tls1_3");
    assert!(
        t13.contains("Protocol  : TLSv1.3") || t13.contains("New, TLSv1.3"),
        "{t13}"
    );
    assert_eq!(s.get("/c/good/ping").status, 200);
}

#[test]
fn the_upstream_secret_appears_nowhere_but_the_upstream() {
    let s = setup("intermediate");
    let mut seen_by_caller = String::new();
    for p in [
        "/c/good/x",
        "/c/untrusted/x",
        "/c/wronghost/x",
        "/c/down/x",
        "/c/nogrant/x",
        "/c/nope/x",
        "/nothing",
    ] {
        let r = s.get(p);
        seen_by_caller.push_str(&r.body);
    }
    let v = curl(&[
        "-v",
        "--cacert",
        &s.ca,
        "-H",
        &s.auth(),
        &format!("{}/c/good/x", s.gw.url),
    ]);
    seen_by_caller.push_str(&v.stderr);
    seen_by_caller.push_str(&v.body);
    // A target that echoes the credential re-encoded (upper case, title
    // case, hex, base64 at each alignment): each spelling is overwritten
    // in the body and the headers (left for later last stop).
    let e = curl(&[
        "-i",
        "--cacert",
        &s.ca,
        "-H",
        &s.auth(),
        &format!("{}/c/good/echo.encoded", s.gw.url),
    ]);
    assert!(e.body.matches('\n').count() >= 5, "{}", e.body);
    let folded = e.body.to_ascii_lowercase();
    assert!(!folded.contains(CANARY), "{}", e.body);
    assert!(!folded.contains(&hex::encode(CANARY)), "{}", e.body);
    for lead in ["", "u:", "key="] {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{lead}{CANARY}"));
        // The characters that encode the secret alone.
        let inner = &b64[lead.len().div_ceil(3) * 4 + 4..b64.len() - 4];
        assert!(!e.body.contains(inner), "{lead}: {}", e.body);
    }
    for spelled in [
        CANARY
            .bytes()
            .map(|b| format!("&#{b};"))
            .collect::<String>(),
        CANARY.bytes().map(|b| format!("%{b:02X}")).collect(),
        CANARY.bytes().map(|b| format!("\\x{b:02x}")).collect(),
    ] {
        // Not even the first third of it (re-review: escapers that
        // escape every character).
        assert!(
            !e.body.contains(&spelled[..spelled.len() / 3]),
            "{}",
            e.body
        );
    }
    assert!(e.body.matches("****").count() >= 18, "{}", e.body);
    seen_by_caller.push_str(&e.body);
    // Wide spellings written in two frames, cut at points the caller
    // chooses (second re-review: a spelling wider than the hold, or
    // broken by a long run of blanks, passed whole when split).
    for cut in [7, 150, 311, 400, 700, 1000, 1290] {
        let w = s.get(&format!("/c/good/echo.split?cut={cut}"));
        assert_eq!(w.status, 200, "{}", w.body);
        let squeezed: String = w
            .body
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        assert!(squeezed.matches("****").count() >= 4, "{cut}: {}", w.body);
        for part in [&CANARY[..6], &CANARY[CANARY.len() - 6..]] {
            assert!(!squeezed.contains(part), "{cut}: {}", w.body);
            assert!(!squeezed.contains(&hex::encode(part)), "{cut}: {}", w.body);
            let refs: String = part.bytes().map(|b| format!("&#x{b:08x};")).collect();
            assert!(!squeezed.contains(&refs[..36]), "{cut}: {}", w.body);
            let us: String = part.bytes().map(|b| format!("\\u{b:04x}")).collect();
            assert!(!squeezed.contains(&us[..18]), "{cut}: {}", w.body);
        }
        seen_by_caller.push_str(&w.body);
    }
    // The key sent as the answer's content coding: refused, and the
    // refusal does not quote it (re-review).
    let c = s.get("/c/good/echo.coding");
    assert_eq!(c.status, 502, "{}", c.body);
    assert!(!c.body.to_ascii_lowercase().contains(CANARY), "{}", c.body);
    seen_by_caller.push_str(&c.body);
    assert!(
        !seen_by_caller.contains(CANARY),
        "the secret reached the caller"
    );
    assert_eq!(s.good.last().header("x-api-key"), Some(CANARY));
    let tok = s.token.clone();
    let logs = s.gw.logs();
    assert!(!logs.contains(CANARY), "secret in the log");
    assert!(!logs.contains(&tok), "token in the log");
    let db = std::fs::read(s.tmp.path().join("portcullis.db")).unwrap();
    assert!(!contains(&db, CANARY) && !contains(&db, &tok));
}

#[test]
fn responses_are_masked_and_uninspectable_bodies_refused() {
    let s = setup("intermediate");
    // gzip JSON: decoded, masked, sent back identity-encoded and valid.
    let r = curl(&[
        "--cacert",
        &s.ca,
        "-H",
        &s.auth(),
        "-D",
        "-",
        &format!("{}/c/good/pii.gz", s.gw.url),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let (head, body) = r.body.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(!head.contains("etag"), "{head}");
    let j: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(j["user"]["email"], "[EMAIL]");
    assert_eq!(j["user"]["card"], "[CARD]");
    assert_eq!(j["user"]["password"], "[PASSWORD]");
    assert!(!body.contains("carol") && !body.contains("4242") && !body.contains("s3cr3t"));

    // Not inspectable: refused, never passed raw.
    for path in ["/c/good/compress", "/c/good/badjson"] {
        let r = s.get(path);
        assert_eq!(r.status, 502, "{path}: {r:?}");
        let j = r.json();
        assert_eq!(j["error"], "masking_failed");
        assert!(!r.body.contains("carol@example.com"), "{path}: {}", r.body);
    }
    // A type the masker cannot read, in any spelling: refused unless the
    // rule lists it (`pass_content_types = ["image/*"]`).
    let r = s.get("/c/good/octet");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.json()["error"], "masking_failed");
    assert!(r.body.contains("pass_content_types"), "{}", r.body);
    let r = s.get("/c/good/image");
    assert_eq!(r.status, 200, "listed: passed");
    // Response headers carry data: masked (a URL's percent-encoded
    // form too); the structural ones are kept.
    let r = curl(&[
        "--cacert",
        &s.ca,
        "-H",
        &s.auth(),
        "-D",
        "-",
        &format!("{}/c/good/headers", s.gw.url),
    ]);
    assert_eq!(r.status, 302, "{r:?}");
    let head = r
        .body
        .split_once("\r\n\r\n")
        .unwrap()
        .0
        .to_ascii_lowercase();
    assert!(!head.contains("carol"), "{head}");
    assert!(head.contains("x-user-email: [email]"), "{head}");
    assert!(
        head.contains("location: https://localhost/users/[email]"),
        "{head}"
    );
    assert!(head.contains("content-type: text/plain"), "{head}");
    // JSON keys are data too.
    let r = s.get("/c/good/keys");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.body.contains("carol") && !r.body.contains("dave"),
        "{}",
        r.body
    );
    let j = r.json();
    assert_eq!(
        j.as_object().unwrap().len(),
        2,
        "two keys masked alike stay two"
    );
    // A body fetched in pieces and joined is the whole unmasked text: a
    // masked caller's Range is not forwarded; the whole masked body comes.
    let mut joined = String::new();
    for (a, b) in [(0, 12), (13, 40)] {
        let r = curl(&[
            "--cacert",
            &s.ca,
            "-H",
            &s.auth(),
            "-r",
            &format!("{a}-{b}"),
            &format!("{}/c/good/ranged", s.gw.url),
        ]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(s.good.last().header("range").is_none());
        joined.push_str(&r.body);
    }
    assert!(!joined.contains("carol@example.com"), "{joined}");
    assert!(joined.contains("[EMAIL]"), "{joined}");
    // A connection without a rule is not masked.
    let r = s.get("/c/slow/pii-free");
    assert_eq!(r.status, 200);

    let m = s.gw.logs();
    assert!(!m.contains("carol@example.com"));
}

#[test]
fn reversible_tokens_are_swapped_back_on_the_way_in() {
    let s = setup("intermediate");
    let r = s.get("/c/slow/whoami");
    let token = r.json()["email"].as_str().unwrap().to_string();
    assert!(token.starts_with("[EMAIL:"), "{token}");
    // In the query string (percent-encoded, as clients send it).
    let enc: String = token
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let r = s.get(&format!("/c/slow/lookup?email={enc}&x=1"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        s.good.last().path_and_query,
        "/lookup?email=erin%40example.com&x=1"
    );
    // In a JSON body.
    let body = format!(r#"{{"email":"{token}","note":"keep"}}"#);
    let r = curl(&[
        "--cacert",
        &s.ca,
        "-H",
        &s.auth(),
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
        &format!("{}/c/slow/search", s.gw.url),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        s.good.last().body,
        r#"{"email":"erin@example.com","note":"keep"}"#
    );
    // A forged token is passed as it is.
    let r = s.get("/c/slow/lookup?email=%5BEMAIL%3A0000000000000000%5D");
    assert_eq!(r.status, 200);
    assert_eq!(
        s.good.last().path_and_query,
        "/lookup?email=%5BEMAIL%3A0000000000000000%5D"
    );
    // The caller reads its own recordings (console API): they hold the
    // requests as it sent them, with the token. A review found they held
    // erin's address, swapped back on the way to the target. (What this
    // target echoes back of the request it got is the caller's to see
    // anyway: recorded as sent.)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let recordings: Vec<serde_json::Value> = loop {
        let list = s.get("/api/v1/sessions?connection=slow").json();
        let ended: Vec<String> = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| !x["outcome"].is_null())
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect();
        if ended.len() >= 4 {
            break ended
                .iter()
                .flat_map(|id| {
                    let r = s.get(&format!("/api/v1/sessions/{id}/recording")).json();
                    r["records"].as_array().unwrap().clone()
                })
                .collect();
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let from_caller: String = recordings
        .iter()
        .filter(|r| r["type"] == "http_request" || r["from_caller"] == true)
        .map(|r| r.to_string())
        .collect();
    assert!(
        from_caller.contains(&format!("email={enc}&x=1")),
        "{from_caller}"
    );
    assert!(
        from_caller.contains(&token) && from_caller.contains("keep"),
        "{from_caller}"
    );
    assert!(!from_caller.contains("erin"), "{from_caller}");
    // Nor does the recorded length tell the value's (review).
    let posted = recordings
        .iter()
        .find(|r| r["type"] == "http_request" && r["method"] == "POST")
        .unwrap();
    let length = posted["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "content-length")
        .map(|h| h[1].as_str().unwrap().to_string());
    assert_eq!(length, Some(body.len().to_string()), "{posted}");
}

/// A caller opening connections past the per-peer cap gets a clear 503
/// for the new ones, while the connections it already has keep working;
/// a place freed is usable again.
#[test]
fn connections_past_the_cap_are_refused_and_existing_ones_continue() {
    let s = setup_with("intermediate", "max_connections_per_peer = 3");
    let ca = PathBuf::from(&s.ca);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let request = format!(
            "GET /c/good/ping HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
            s.token
        );
        // One request on a held connection: the status line's code.
        async fn ask(
            c: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            request: &str,
        ) -> String {
            c.write_all(request.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = c.read(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        }
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut c = tls_connect(s.gw.port(), &ca).await;
            let r = ask(&mut c, &request).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            held.push(c);
        }
        // The fourth: refused in HTTP, with the reason.
        let r = tokio::task::spawn_blocking({
            let (ca, url) = (s.ca.clone(), format!("{}/c/good/ping", s.gw.url));
            let auth = s.auth();
            move || curl(&["--cacert", &ca, "-H", &auth, &url])
        })
        .await
        .unwrap();
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.json()["error"], "too_many_connections");
        // Those already accepted go on.
        for c in held.iter_mut() {
            let r = ask(c, &request).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }
        // A place freed is usable again.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = tokio::task::spawn_blocking({
            let (ca, url) = (s.ca.clone(), format!("{}/c/good/ping", s.gw.url));
            let auth = s.auth();
            move || curl(&["--cacert", &ca, "-H", &auth, &url])
        })
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    });
    // Counted.
    let m = s.gw.logs();
    assert!(m.contains("connection refused at a cap"), "{m}");
}

/// An HTTP/2 connection with no request for `idle_timeout` is closed
/// (GOAWAY), like an idle HTTP/1 keep-alive connection; one in use is not.
#[test]
fn idle_http2_connections_are_closed() {
    let s = setup_with("intermediate", "idle_timeout = \"2s\"");
    let ca = PathBuf::from(&s.ca);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut sender, closed) = h2_connect(s.gw.port(), &ca).await;
        let ask = |sender: &mut hyper::client::conn::http2::SendRequest<
            http_body_util::Empty<bytes::Bytes>,
        >| {
            let req = http::Request::get(format!("https://localhost:{}/c/good/ping", s.gw.port()))
                .header("authorization", format!("Bearer {}", s.token))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            sender.send_request(req)
        };
        // In use: requests a second apart keep it open past the timeout.
        for _ in 0..4 {
            let r = ask(&mut sender).await.unwrap();
            assert_eq!(r.status(), 200);
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        // Then quiet: closed by the gateway.
        let ended = tokio::time::timeout(Duration::from_secs(6), closed).await;
        assert!(ended.is_ok(), "the idle HTTP/2 connection was not closed");
    });
}

/// `tls = { profile = "modern" }` meets Mozilla's modern profile, checked
/// from outside with sslyze.
#[test]
fn the_modern_profile_meets_mozillas_modern_guidelines() {
    let s = setup("modern");
    mozilla_compliant(s.gw.port(), &s.ca, "modern", None);
}
