//! The HTTP front driven over in-memory streams: a hyper client on one end
//! of a `tokio::io::duplex`, the front serving the other, and a scripted
//! target (plain HTTP on loopback) behind it. No TLS handshake, no
//! binary: fast enough for every save, beside the end-to-end suite that
//! runs real curl against real TLS.

use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_store::Store;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::*;

const PLANTED: &str = "ada.lovelace@example.com";

struct World {
    front: HttpFront,
    store: Store,
    tester: String,
    outsider: String,
    /// Requests the target received: method and path.
    seen: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn config(port: u16) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:8443"
cert = "s.pem"
key = "s.key"

[[connections]]
name = "api"
type = "http"
url = "http://127.0.0.1:{port}"
tls = "disable"

[[connections]]
name = "held"
type = "http"
url = "http://127.0.0.1:{port}"
tls = "disable"
approval = {{ mode = "statements", methods = ["DELETE"], approvers = ["dba"], wait = "1s" }}

[[connections]]
name = "db"
type = "postgres"
url = "postgres://app@127.0.0.1:1/app?sslmode=disable"
password = "file:pgpw"

[masking]
rules = [{{ connections = ["api", "held"], detectors = ["email"] }}]

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["*"]
"#
    )
}

/// A target that answers every request with JSON holding [`PLANTED`].
async fn scripted_target() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let log = log.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let log = log.clone();
                async move {
                    let line = format!("{} {}", req.method(), req.uri().path());
                    log.lock().unwrap().push(line);
                    let body = format!(r#"{{"email":"{PLANTED}"}}"#);
                    let resp = Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(bytes::Bytes::from(body)))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let io = TokioIo::new(s);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (port, seen)
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (port, seen) = scripted_target().await;
    std::fs::write(dir.path().join("pgpw"), "pw").unwrap();
    let path = dir.path().join("portcullis.toml");
    let cfg = Config::parse(&config(port), &path).unwrap();
    let (ctx, store) = portcullis_front::testing::context(&cfg, dir.path()).await;
    let mut registry = Registry::default();
    let metrics = HttpMetrics::register(&mut registry);
    let links = portcullis_link::AgentRegistry::new();
    let front = HttpFront::new(Arc::new(ctx), &cfg, metrics, links).unwrap();
    let tester =
        portcullis_front::testing::token(&store, "agent:tester", &["testers".into()]).await;
    let outsider = portcullis_front::testing::token(&store, "agent:outsider", &[]).await;
    World {
        front,
        store,
        tester,
        outsider,
        seen,
        _dir: dir,
    }
}

fn conn() -> Arc<ConnInfo> {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    Arc::new(ConnInfo {
        cut: Default::default(),
        peer,
        tls: Arc::new(HandshakeRecord {
            peer,
            version: "TLSv1_3".into(),
            cipher_suite: "TLS13_AES_128_GCM_SHA256".into(),
            group: None,
            sni: None,
            alpn: Some("http/1.1".into()),
            client_cert_sha256: None,
            duration_us: 0,
            client_cert: None,
        }),
        sessions: Default::default(),
    })
}

/// A client connection to the front over an in-memory pipe.
async fn client(w: &World) -> hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>> {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let front = w.front.clone();
    let info = conn();
    tokio::spawn(async move {
        let svc = service_fn(move |req| {
            let (front, info) = (front.clone(), info.clone());
            async move { Ok::<_, Infallible>(front.handle(req, &info).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(theirs), svc)
            .await;
    });
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn call(w: &World, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut send = client(w).await;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "gw.test");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(bytes::Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("the front answers")
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn audit_kinds(store: &Store) -> Vec<String> {
    portcullis_audit::entries(store)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.event["kind"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn admission_refusals_are_json_errors_and_each_is_audited_once() {
    let w = world().await;
    let cases = [
        (None, "/c/api/x", 401, "unauthenticated"),
        (Some("pcl_forged"), "/c/api/x", 401, "unauthenticated"),
        (
            Some(w.tester.as_str()),
            "/c/nowhere/x",
            404,
            "unknown_connection",
        ),
        (Some(w.tester.as_str()), "/c/db/x", 404, "wrong_protocol"),
        (Some(w.outsider.as_str()), "/c/api/x", 403, "forbidden"),
    ];
    for (i, (token, path, status, code)) in cases.into_iter().enumerate() {
        let (got, body) = call(&w, "GET", path, token).await;
        assert_eq!(got, status, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], code, "{body}");
        let refusals = audit_kinds(&w.store)
            .await
            .into_iter()
            .filter(|k| k == "refusal")
            .count();
        assert_eq!(refusals, i + 1, "{path}: exactly one entry per refusal");
    }
    assert!(
        w.seen.lock().unwrap().is_empty(),
        "nothing reached the target"
    );
}

#[tokio::test]
async fn an_admitted_request_is_forwarded_masked_and_audited() {
    let w = world().await;
    let (status, body) = call(&w, "GET", "/c/api/people/1", Some(&w.tester)).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(PLANTED), "masked: {body}");
    assert_eq!(w.seen.lock().unwrap().as_slice(), ["GET /people/1"]);
    let kinds = audit_kinds(&w.store).await;
    assert!(kinds.contains(&"session_start".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn a_held_request_waits_for_review_and_never_reaches_the_target() {
    let w = world().await;
    let (status, body) = call(&w, "DELETE", "/c/held/people/1", Some(&w.tester)).await;
    assert_eq!(status, 403, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "approval_required", "{body}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("not decided within 1s"),
        "{body}"
    );
    // A GET is not held by the rule.
    let (status, _) = call(&w, "GET", "/c/held/people/1", Some(&w.tester)).await;
    assert_eq!(status, 200);
    assert_eq!(w.seen.lock().unwrap().as_slice(), ["GET /people/1"]);
}
