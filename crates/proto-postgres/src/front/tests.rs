//! The front and the relay driven over in-memory streams: a scripted
//! caller on one end of a `tokio::io::duplex`, a scripted target (a few
//! lines of the protocol on loopback TCP) on the other. No initdb, no
//! TLS handshake: fast enough for every save, beside the end-to-end
//! suite that runs real psql against a real PostgreSQL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use portcullis_store::Store;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;

use super::*;
use crate::frame::Message;
use crate::messages::SqlState;

/// A value the masking rule must never let through.
const PLANTED: &str = "ada.lovelace@example.com";

struct World {
    front: PgFront,
    store: Store,
    token: String,
    outsider: String,
    /// What the target received, and how it answers.
    target: Arc<TargetState>,
    _dir: tempfile::TempDir,
}

fn config(port: u16) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:8443"
cert = "s.pem"
key = "s.key"

[postgres]
listen = "127.0.0.1:5433"

[[connections]]
name = "db"
type = "postgres"
url = "postgres://app@127.0.0.1:{port}/app?sslmode=disable"
password = "file:pgpw"

[[connections]]
name = "masked"
type = "postgres"
url = "postgres://app@127.0.0.1:{port}/app?sslmode=disable"
password = "file:pgpw"

[[connections]]
name = "ro"
type = "postgres"
url = "postgres://app@127.0.0.1:{port}/app?sslmode=disable"
password = "file:pgpw"
access = "read-only"

[[connections]]
name = "guarded"
type = "postgres"
url = "postgres://app@127.0.0.1:{port}/app?sslmode=disable"
password = "file:pgpw"
approval = {{ mode = "statements", classes = ["write"], approvers = ["dba"], wait = "1s" }}

[[connections]]
name = "api"
type = "http"
url = "https://localhost:1"

[masking]
rules = [{{ connections = ["masked"], detectors = ["email"] }}]

[[grants]]
name = "testers"
groups = ["testers"]
connections = ["*"]
"#
    )
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (port, target) = scripted_target().await;
    std::fs::write(dir.path().join("pgpw"), "pw").unwrap();
    let path = dir.path().join("portcullis.toml");
    let cfg = Config::parse(&config(port), &path).unwrap();
    let (ctx, store) = portcullis_front::testing::context(&cfg, dir.path()).await;
    let mut registry = Registry::default();
    let acceptor = acceptor();
    let front = PgFront::new(
        Arc::new(ctx),
        &cfg,
        acceptor,
        PgMetrics::register(&mut registry),
        TlsMetrics::register(&mut registry),
        portcullis_link::AgentRegistry::new(),
    )
    .unwrap();
    let tester =
        portcullis_front::testing::token(&store, "agent:tester", &["testers".into()]).await;
    let outsider = portcullis_front::testing::token(&store, "agent:outsider", &[]).await;
    World {
        front,
        store,
        token: tester,
        outsider,
        target,
        _dir: dir,
    }
}

/// An acceptor the in-memory sessions never use (they start after TLS).
fn acceptor() -> TlsAcceptor {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
    let sc = portcullis_tls::server_config(
        &Default::default(),
        vec![c.cert.der().clone()],
        key,
        &[ALPN],
    )
    .unwrap();
    TlsAcceptor::from(sc)
}

/// The scripted target's log and its one function's volatility.
struct TargetState {
    /// Queries (and Binds, as `BIND name`) received, in order.
    seen: Mutex<Vec<String>>,
    /// `provolatile` of function `public.f` in the scripted catalog.
    volatility: std::sync::atomic::AtomicU8,
}

/// A target that speaks just enough of the protocol: trusts the gateway,
/// answers each query with one text row holding [`PLANTED`], answers
/// catalog look-ups for one function `public.f`, and fails a call of an
/// unknown function (or a Bind of an unknown statement) the way
/// PostgreSQL does.
async fn scripted_target() -> (u16, Arc<TargetState>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let state = Arc::new(TargetState {
        seen: Mutex::new(Vec::new()),
        volatility: std::sync::atomic::AtomicU8::new(b's'),
    });
    let shared = state.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_target(s, shared.clone()));
        }
    });
    (port, state)
}

async fn serve_target(s: TcpStream, state: Arc<TargetState>) {
    let (r, mut w) = tokio::io::split(s);
    let mut r = FrameReader::new(r, 1 << 20);
    if !matches!(r.startup().await, Ok(Some(Startup::Startup { .. }))) {
        return;
    }
    let mut hello = BytesMut::new();
    messages::auth_ok().encode(&mut hello);
    messages::backend_key_data(7, 8).encode(&mut hello);
    messages::ready_for_query(b'I').encode(&mut hello);
    let _ = w.write_all(&hello).await;
    // After an error in an extended-protocol batch, everything up to Sync
    // is skipped, as PostgreSQL does.
    let mut failed = false;
    while let Ok(Some(m)) = r.next().await {
        let mut out = BytesMut::new();
        match m.tag {
            tag::QUERY => answer_query(&m, &state, &mut out),
            tag::PARSE if !failed => {
                let sql = messages::parse_text(&m).map(|p| p.1).unwrap_or_default();
                if let Some(at) = sql.find("portcullis_refused_") {
                    let name = sql[at..].trim_end_matches("()");
                    let msg = format!("function {name}() does not exist");
                    messages::error(false, sqlstate::UNDEFINED_FUNCTION, &msg, None)
                        .encode(&mut out);
                    failed = true;
                } else {
                    Message::new(tag::PARSE_COMPLETE, Bytes::new()).encode(&mut out);
                }
            }
            tag::BIND if !failed => {
                let name = messages::bind(&m.body)
                    .map(|b| b.statement)
                    .unwrap_or_default();
                state.seen.lock().unwrap().push(format!("BIND {name}"));
                if name.starts_with("portcullis_refused_") {
                    let msg = format!("prepared statement \"{name}\" does not exist");
                    messages::error(false, sqlstate::INVALID_PARAMETER_VALUE, &msg, None)
                        .encode(&mut out);
                    failed = true;
                } else {
                    Message::new(tag::BIND_COMPLETE, Bytes::new()).encode(&mut out);
                }
            }
            tag::EXECUTE if !failed => {
                data_row(PLANTED).encode(&mut out);
                Message::new(tag::COMMAND_COMPLETE, Bytes::from_static(b"SELECT 1\0"))
                    .encode(&mut out);
            }
            tag::SYNC => {
                failed = false;
                messages::ready_for_query(b'I').encode(&mut out);
            }
            tag::TERMINATE => return,
            _ => continue,
        }
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn answer_query(m: &Message, state: &TargetState, out: &mut BytesMut) {
    let sql = messages::query_text(m).unwrap_or_default();
    if sql.contains("pg_catalog.pg_proc") {
        // The gateway's own catalog look-up.
        let v = [state.volatility.load(std::sync::atomic::Ordering::Relaxed)];
        let v = std::str::from_utf8(&v).unwrap_or("v");
        // (Names arrive hex-encoded: 'f' is 66.)
        if sql.contains("'66'") {
            data_row_cells(&["public", "f", v]).encode(out);
        }
        Message::new(tag::COMMAND_COMPLETE, Bytes::from_static(b"SELECT 1\0")).encode(out);
        messages::ready_for_query(b'I').encode(out);
        return;
    }
    state.seen.lock().unwrap().push(sql.clone());
    if sql.contains("guard_off") {
        // As the server reports a setting that code it ran changed.
        let mut b = BytesMut::new();
        b.put_slice(b"default_transaction_read_only\0off\0");
        Message::new(tag::PARAMETER_STATUS, b.freeze()).encode(out);
    }
    if let Some(at) = sql.find("portcullis_refused_") {
        let name = sql[at..].trim_end_matches("()");
        let msg = format!("function {name}() does not exist");
        messages::error(false, sqlstate::UNDEFINED_FUNCTION, &msg, None).encode(out);
    } else {
        row_description("email").encode(out);
        data_row(PLANTED).encode(out);
        Message::new(tag::COMMAND_COMPLETE, Bytes::from_static(b"SELECT 1\0")).encode(out);
    }
    messages::ready_for_query(b'I').encode(out);
}

fn data_row_cells(cells: &[&str]) -> Message {
    let mut b = BytesMut::new();
    b.put_i16(cells.len() as i16);
    for c in cells {
        b.put_i32(c.len() as i32);
        b.put_slice(c.as_bytes());
    }
    Message::new(tag::DATA_ROW, b.freeze())
}

fn row_description(column: &str) -> Message {
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.put_slice(column.as_bytes());
    b.put_u8(0);
    b.put_i32(0); // no table
    b.put_i16(0);
    b.put_i32(25); // text
    b.put_i16(-1);
    b.put_i32(-1);
    b.put_i16(0);
    Message::new(tag::ROW_DESCRIPTION, b.freeze())
}

fn data_row(cell: &str) -> Message {
    data_row_cells(&[cell])
}

fn record() -> HandshakeRecord {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    HandshakeRecord {
        peer,
        version: "TLSv1_3".into(),
        cipher_suite: "TLS13_AES_128_GCM_SHA256".into(),
        group: None,
        sni: None,
        alpn: Some("postgresql".into()),
        client_cert_sha256: None,
        duration_us: 0,
        client_cert: None,
    }
}

/// A scripted caller: the session runs on the other end of the pipe.
struct Caller {
    r: FrameReader<tokio::io::ReadHalf<DuplexStream>>,
    w: tokio::io::WriteHalf<DuplexStream>,
    session: tokio::task::JoinHandle<()>,
}

impl Caller {
    async fn start(w: &World, params: &[(&str, &str)]) -> Self {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let inner = w.front.inner.clone();
        let session = tokio::spawn(async move { inner.session(theirs, record()).await });
        let (r, mut wr) = tokio::io::split(ours);
        wr.write_all(&messages::startup(params)).await.unwrap();
        Self {
            r: FrameReader::new(r, 1 << 20),
            w: wr,
            session,
        }
    }

    async fn send(&mut self, m: Message) {
        self.w.write_all(&m.to_bytes()).await.unwrap();
    }

    async fn next(&mut self) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(10), self.r.next())
            .await
            .expect("the gateway answers")
            .ok()
            .flatten()
    }

    /// Messages up to and including ReadyForQuery (or the end).
    async fn until_ready(&mut self) -> Vec<Message> {
        let mut got = Vec::new();
        while let Some(m) = self.next().await {
            let done = m.tag == tag::READY_FOR_QUERY;
            got.push(m);
            if done {
                break;
            }
        }
        got
    }

    /// Log in with `token`: what the gateway answers after the password.
    async fn login(&mut self, token: &str) -> Vec<Message> {
        let auth = self.next().await.expect("a password request");
        assert_eq!(auth.tag, tag::AUTHENTICATION);
        let mut body = BytesMut::new();
        body.put_slice(token.as_bytes());
        body.put_u8(0);
        self.send(Message::new(tag::PASSWORD, body.freeze())).await;
        self.until_ready().await
    }
}

fn error_of(ms: &[Message]) -> Option<(String, String)> {
    let e = ms.iter().find(|m| m.tag == tag::ERROR_RESPONSE)?;
    let f = messages::parse_fields(&e.body);
    Some((
        messages::field(&f, b'C')?.to_owned(),
        messages::field(&f, b'M')?.to_owned(),
    ))
}

async fn refusals(store: &Store) -> usize {
    portcullis_audit::entries(store)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event["kind"] == "refusal")
        .count()
}

#[tokio::test]
async fn admission_refusals_are_said_in_sqlstates_and_audited() {
    let w = world().await;
    let cases: [(&str, &str, SqlState); 4] = [
        ("db", "pcl_not_a_token", sqlstate::INVALID_PASSWORD),
        ("nowhere", &w.token, sqlstate::INVALID_CATALOG),
        ("api", &w.token, sqlstate::INVALID_CATALOG),
        ("db", &w.outsider, sqlstate::INSUFFICIENT_PRIVILEGE),
    ];
    for (i, (db, token, code)) in cases.into_iter().enumerate() {
        let mut c = Caller::start(&w, &[("user", "x"), ("database", db)]).await;
        let got = c.login(token).await;
        let (got_code, msg) = error_of(&got).expect("an ErrorResponse");
        assert_eq!(got_code, code.code(), "{db}: {msg}");
        assert!(!msg.contains(token) || token.is_empty(), "{msg}");
        c.session.await.unwrap();
        assert_eq!(
            refusals(&w.store).await,
            i + 1,
            "{db}: one audit entry each"
        );
    }
    assert!(
        w.target.seen.lock().unwrap().is_empty(),
        "nothing reached the target"
    );
}

#[tokio::test]
async fn startup_mistakes_are_refused_before_the_password() {
    let w = world().await;
    let cases = [
        (
            [("user", "x"), ("database", "db"), ("replication", "true")],
            sqlstate::NOT_SUPPORTED,
        ),
        (
            [
                ("user", "x"),
                ("database", "db"),
                ("options", "-c portcullis.session=forever"),
            ],
            sqlstate::INVALID_PARAMETER_VALUE,
        ),
    ];
    for (params, code) in cases {
        let mut c = Caller::start(&w, &params).await;
        let got = c.until_ready().await;
        assert_eq!(error_of(&got).map(|e| e.0).as_deref(), Some(code.code()));
    }
}

#[tokio::test]
async fn a_session_relays_masks_and_refuses_in_protocol_order() {
    let w = world().await;
    let mut c = Caller::start(&w, &[("user", "x"), ("database", "masked")]).await;
    let hello = c.login(&w.token).await;
    assert!(error_of(&hello).is_none(), "logged in");
    assert!(hello.iter().any(|m| m.tag == tag::BACKEND_KEY_DATA));

    // A fast-path call on a masked connection: refused, in order, and the
    // session goes on.
    let mut call = BytesMut::new();
    call.put_u32(1299); // now()
    call.put_i16(0);
    call.put_i16(0);
    call.put_i16(0);
    c.send(Message::new(tag::FUNCTION_CALL, call.freeze()))
        .await;
    let got = c.until_ready().await;
    let (code, msg) = error_of(&got).expect("refused");
    assert_eq!(code, sqlstate::INSUFFICIENT_PRIVILEGE.code(), "{msg}");
    assert!(msg.contains("fast-path"), "{msg}");
    assert!(
        !msg.contains("portcullis_refused_"),
        "the placeholder is swapped: {msg}"
    );

    // A query: relayed, its row masked.
    c.send(messages::query("SELECT email FROM people")).await;
    let got = c.until_ready().await;
    let row = got.iter().find(|m| m.tag == tag::DATA_ROW).expect("a row");
    let text = String::from_utf8_lossy(&row.body);
    assert!(!text.contains(PLANTED), "masked: {text}");
    assert!(error_of(&got).is_none());

    c.send(Message::new(tag::TERMINATE, Bytes::new())).await;
    c.session.await.unwrap();
    let seen = w.target.seen.lock().unwrap().clone();
    // The caller said goodbye with nothing in flight: the target's
    // session is cleaned for the next caller rather than closed.
    // First the masker's catalog look-up (types), before the caller
    // has the session.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[0].contains("pg_catalog.pg_type"), "{seen:?}");
    assert_eq!(seen[3], "DISCARD ALL");
    assert!(
        seen[1].starts_with("SELECT portcullis_refused_"),
        "{seen:?}"
    );
    assert_eq!(seen[2], "SELECT email FROM people");

    let entries = portcullis_audit::entries(&w.store).await.unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.event["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"statement_refused"), "{kinds:?}");
    let end = entries
        .iter()
        .find(|e| e.event["kind"] == "session_end")
        .expect("sealed");
    assert_eq!(end.event["outcome"], "caller_closed");
}

/// Review round 5: code a read ran turned the target's read-only guard
/// off (`set_config(…, 'off', false)` in a view's function), the target
/// said so, and the session went on. A read-only session ends there.
#[tokio::test]
async fn a_read_only_session_ends_when_the_target_reports_its_guard_off() {
    let w = world().await;
    let mut c = Caller::start(&w, &[("user", "x"), ("database", "ro")]).await;
    assert!(error_of(&c.login(&w.token).await).is_none());
    c.send(messages::query("SELECT email FROM people")).await;
    assert!(error_of(&c.until_ready().await).is_none());
    c.send(messages::query("SELECT guard_off FROM people"))
        .await;
    let got = c.until_ready().await;
    let (code, msg) = error_of(&got).expect("closed");
    assert_eq!(code, sqlstate::INSUFFICIENT_PRIVILEGE.code(), "{msg}");
    assert!(msg.contains("read-only guard"), "{msg}");
    assert!(c.next().await.is_none(), "the session ended");
    c.session.await.unwrap();
    // The same report on a connection that is not read-only is the
    // caller's own business.
    let mut c = Caller::start(&w, &[("user", "x"), ("database", "db")]).await;
    assert!(error_of(&c.login(&w.token).await).is_none());
    c.send(messages::query("SELECT guard_off FROM people"))
        .await;
    assert!(error_of(&c.until_ready().await).is_none());
}

#[tokio::test]
async fn a_broken_message_ends_the_session_with_a_protocol_error() {
    let w = world().await;
    let mut c = Caller::start(&w, &[("user", "x"), ("database", "db")]).await;
    assert!(error_of(&c.login(&w.token).await).is_none());
    // A length that says "less than its own header".
    c.w.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
    let got = c.until_ready().await;
    assert_eq!(
        error_of(&got).map(|e| e.0).as_deref(),
        Some(sqlstate::PROTOCOL_VIOLATION.code())
    );
    c.session.await.unwrap();
    let entries = portcullis_audit::entries(&w.store).await.unwrap();
    let end = entries.last().unwrap();
    assert_eq!(end.event["outcome"], "caller_protocol_error");
}

#[tokio::test]
async fn a_prepared_statement_is_proven_again_at_each_bind() {
    // Read-only: the new class is not allowed. Approvals: the new class
    // needs a review, which only a Parse can be held for.
    for db in ["ro", "guarded"] {
        rebind_case(db).await;
    }
}

async fn rebind_case(db: &str) {
    use std::sync::atomic::Ordering;
    let w = world().await;
    let mut c = Caller::start(&w, &[("user", "x"), ("database", db)]).await;
    assert!(error_of(&c.login(&w.token).await).is_none());
    let sync = || Message::new(tag::SYNC, Bytes::new());
    let execute = || Message::new(tag::EXECUTE, Bytes::from_static(b"\0\0\0\0\0"));

    // Prepared while f is stable: a read, allowed, and it runs.
    c.send(messages::parse_named("s1", "SELECT f()")).await;
    c.send(messages::bind_message("", "s1")).await;
    c.send(execute()).await;
    c.send(sync()).await;
    let got = c.until_ready().await;
    assert!(error_of(&got).is_none(), "{db}: {:?}", error_of(&got));
    assert!(got.iter().any(|m| m.tag == tag::DATA_ROW));

    // f is replaced by a volatile function, and the gateway's catalog
    // learns it (a schema change through it, or its cache running out).
    w.target.volatility.store(b'v', Ordering::Relaxed);
    w.front.inner.upstreams[db].forget_catalog();
    c.send(messages::bind_message("", "s1")).await;
    c.send(execute()).await;
    c.send(sync()).await;
    let got = c.until_ready().await;
    let (code, msg) = error_of(&got).expect("refused");
    assert_eq!(code, sqlstate::INSUFFICIENT_PRIVILEGE.code(), "{db}: {msg}");
    assert!(msg.contains("prepare it again"), "{db}: {msg}");
    assert!(
        !got.iter().any(|m| m.tag == tag::DATA_ROW),
        "{db}: it did not run"
    );

    let binds: Vec<String> = w
        .target
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.starts_with("BIND"))
        .cloned()
        .collect();
    // On a connection with an approval rule a named statement lives
    // under a private name (see `crate::held`).
    let first = match db {
        "guarded" => binds[0].starts_with("BIND portcullis_plain_"),
        _ => binds[0] == "BIND s1",
    };
    assert!(first, "{db}: {binds:?}");
    assert!(
        binds[1].starts_with("BIND portcullis_refused_"),
        "{db}: the second Bind never reached the target: {binds:?}"
    );
    if db == "ro" {
        // Prepared again: proven against the new definition, refused at Parse.
        c.send(messages::parse_named("s1", "SELECT f()")).await;
        c.send(sync()).await;
        let got = c.until_ready().await;
        assert!(
            error_of(&got).is_some(),
            "a volatile call on a read-only connection"
        );
    }
}
