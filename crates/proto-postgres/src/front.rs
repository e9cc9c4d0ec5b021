//! The caller-facing half: TLS (SSLRequest or direct), token
//! authentication through the password message, policy, then the relay.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use bytes::BytesMut;
use portcullis_config::{Config, Target};
use portcullis_identity::{Authenticator, Credential, Principal};
use portcullis_policy::{Decision, Policy};
use portcullis_tls::{HandshakeRecord, TlsMetrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::classify::Class;
use crate::frame::{FrameError, Message, Startup};
use crate::inspect::{self, Inspector, Refusal};
use crate::io::{FrameReader, ReadError};
use crate::messages::{self, sqlstate};
use crate::upstream::{PgUpstream, SetupError, UpstreamSession};

/// First byte of a TLS record carrying a handshake (direct TLS, PG 17).
const TLS_HANDSHAKE: u8 = 0x16;
/// ALPN protocol name PostgreSQL uses for TLS.
pub const ALPN: &[u8] = b"postgresql";
/// Placeholder refusals older than this many are forgotten (their error
/// was swallowed by an aborted transaction).
const MAX_PENDING_REFUSALS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    connection: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabel {
    connection: String,
}

#[derive(Clone)]
pub struct PgMetrics {
    sessions: Family<SessionLabels, Counter>,
    refused: Family<ConnLabel, Counter>,
    plaintext_refused: Counter,
}

impl PgMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            sessions: Family::default(),
            refused: Family::default(),
            plaintext_refused: Counter::default(),
        };
        registry.register(
            "portcullis_pg_sessions",
            "PostgreSQL sessions, by connection and outcome",
            m.sessions.clone(),
        );
        registry.register(
            "portcullis_pg_statements_refused",
            "PostgreSQL statements refused by a connection's rules",
            m.refused.clone(),
        );
        registry.register(
            "portcullis_pg_plaintext_refused",
            "Plaintext PostgreSQL startups refused",
            m.plaintext_refused.clone(),
        );
        m
    }
}

/// Where a gateway-issued cancel key leads.
struct CancelTarget {
    upstream: Arc<PgUpstream>,
    pid: i32,
    secret: i32,
}

#[derive(Clone)]
pub struct PgFront {
    inner: Arc<Inner>,
}

struct Inner {
    upstreams: HashMap<String, Arc<PgUpstream>>,
    protocols: HashMap<String, &'static str>,
    policy: Policy,
    auth: Authenticator,
    acceptor: TlsAcceptor,
    max_message: usize,
    handshake_timeout: Duration,
    cancels: Mutex<HashMap<(i32, i32), CancelTarget>>,
    metrics: PgMetrics,
    tls_metrics: TlsMetrics,
    masks: Arc<portcullis_mask::RuleSet>,
    mask_metrics: portcullis_mask::MaskMetrics,
    sessions: portcullis_audit::Sessions,
    /// Makes placeholder statements unguessable, so a caller cannot forge
    /// an error that the gateway would rewrite.
    nonce: String,
    cert_names: Vec<portcullis_config::CertName>,
    /// Each connection's approval rule.
    approval_rules: HashMap<String, portcullis_config::ApprovalRule>,
    approvals: std::sync::OnceLock<portcullis_approval::Approvals>,
}

/// What holds statements of one session for approval.
struct Gate {
    approvals: portcullis_approval::Approvals,
    rule: portcullis_config::ApprovalRule,
    principal: Principal,
    connection: String,
    /// For just-in-time access: the grant's end (Unix seconds); -1 until
    /// the first statement asks for it.
    jit_until: std::sync::atomic::AtomicI64,
    /// The audited session these statements belong to.
    session: String,
    /// The just-in-time duration the caller asked for (startup `options`).
    asked_session: Option<Duration>,
    /// Prepared statements held at every Bind.
    held: Mutex<crate::held::HeldStatements>,
}

impl Gate {
    fn held(&self) -> std::sync::MutexGuard<'_, crate::held::HeldStatements> {
        // Only a panic while holding it poisons it; the table is still whole.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `m` may wait for a person, so what was batched before it
    /// must reach the target first.
    fn may_wait(&self, m: &Message) -> bool {
        match self.rule.mode {
            portcullis_config::ApprovalMode::Session => matches!(m.tag, b'Q' | b'P' | b'F'),
            portcullis_config::ApprovalMode::Statements => match m.tag {
                b'Q' | b'F' => true,
                b'B' => {
                    messages::bind(&m.body).is_some_and(|b| self.held().get(&b.statement).is_some())
                }
                _ => false,
            },
            portcullis_config::ApprovalMode::None => false,
        }
    }

    /// Whether `m` binds a held statement that may change the schema (it
    /// was proven at Parse; this is when it runs).
    fn binds_schema_change(&self, m: &Message) -> bool {
        m.tag == b'B'
            && messages::bind(&m.body).is_some_and(|b| {
                self.held()
                    .get(&b.statement)
                    .is_some_and(|h| matches!(h.class, "ddl" | "admin" | "unknown"))
            })
    }

    /// The class under which a statement of `class` needs approval, if
    /// it does.
    fn needs_approval(&self, class: Class) -> Option<&'static str> {
        if portcullis_approval::holds_statement(&self.rule, class.as_str()) {
            return Some(class.as_str());
        }
        // What is not proven (a volatile function, EXECUTE of whatever was
        // prepared, a procedure) may do anything: held whenever anything is.
        (class == Class::Unknown && !self.rule.classes.is_empty()).then_some(class.as_str())
    }
}

/// What one session's relay and statement rules work with.
#[derive(Clone, Copy)]
struct SessionCtx<'a> {
    connection: &'a str,
    principal: &'a Principal,
    /// The grant that admitted the session.
    rule: &'a str,
    upstream: &'a PgUpstream,
    open: &'a portcullis_audit::OpenSession,
    gate: Option<&'a Gate>,
    bytes: &'a (AtomicU64, AtomicU64),
    /// Whether masking rules apply to this session.
    masked: bool,
}

/// A statement's proven class, and (for a fast-path call) the function's
/// name as the target knows it.
struct Checked {
    class: Class,
    name: String,
}

/// What the caller sent, for the evidence of a refusal.
fn sent_text(m: &Message) -> String {
    match m.tag {
        b'Q' => messages::query_text(m).unwrap_or_default(),
        b'P' => messages::parse_text(m).map(|(_, s)| s).unwrap_or_default(),
        b'B' => messages::bind(&m.body).map_or_else(String::new, |b| {
            format!(
                "-- Bind of prepared statement \"{}\" with {} parameter(s)",
                b.statement,
                b.params.len()
            )
        }),
        b'F' => format!("-- fast-path function call: \\x{}", hex::encode(&m.body)),
        t => format!("-- message '{}'", t.escape_ascii()),
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A failing system RNG leaves zeros: the cancel key is then weak, but
    // nothing else depends on it being secret.
    let _ = SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

impl PgFront {
    // The gateway wires these once; a struct for them would only move the
    // list (noted in ARCHITECTURE.md as the place for a shared context).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &Config,
        auth: Authenticator,
        acceptor: TlsAcceptor,
        metrics: PgMetrics,
        tls_metrics: TlsMetrics,
        masks: Arc<portcullis_mask::RuleSet>,
        mask_metrics: portcullis_mask::MaskMetrics,
        sessions: portcullis_audit::Sessions,
        links: Arc<portcullis_link::AgentRegistry>,
    ) -> Result<Self, SetupError> {
        let mut upstreams = HashMap::new();
        for c in &cfg.connections {
            match &c.target {
                Target::Postgres(t) => {
                    upstreams.insert(
                        c.name.clone(),
                        Arc::new(PgUpstream::new(c, t, &cfg.upstream_tls)?),
                    );
                }
                Target::Agent(a) if a.protocol == "postgres" => {
                    upstreams.insert(
                        c.name.clone(),
                        Arc::new(PgUpstream::via_agent(c, a, links.clone())),
                    );
                }
                _ => {}
            }
        }
        let max_message = cfg
            .postgres
            .as_ref()
            .map(|p| p.max_message_bytes)
            .unwrap_or(16 * 1024 * 1024);
        Ok(Self {
            inner: Arc::new(Inner {
                upstreams,
                protocols: cfg.protocols(),
                policy: Policy::new(cfg.grants.clone()),
                auth,
                acceptor,
                max_message,
                handshake_timeout: cfg.limits.handshake_timeout,
                cancels: Mutex::new(HashMap::new()),
                metrics,
                tls_metrics,
                masks,
                mask_metrics,
                sessions,
                nonce: format!("{:016x}", random_u64()),
                cert_names: cfg
                    .postgres
                    .as_ref()
                    .map(|p| p.client_auth.principal_from.clone())
                    .unwrap_or_default(),
                approval_rules: cfg
                    .connections
                    .iter()
                    .filter_map(|c| c.approval.clone().map(|r| (c.name.clone(), r)))
                    .collect(),
                approvals: Default::default(),
            }),
        })
    }

    /// Hold actions for approval where a connection's rule says so.
    pub fn set_approvals(&self, approvals: portcullis_approval::Approvals) {
        let _ = self.inner.approvals.set(approvals);
    }

    /// Serve one caller's TCP connection until it ends.
    pub async fn connection(&self, stream: TcpStream, peer: SocketAddr) {
        self.inner.clone().connection(stream, peer).await
    }
}

fn closing(
    bytes: &(AtomicU64, AtomicU64),
    outcome: &str,
    error: Option<String>,
) -> portcullis_audit::Closing {
    portcullis_audit::Closing {
        outcome: outcome.to_string(),
        error,
        bytes_from_caller: bytes.0.load(Ordering::Relaxed),
        bytes_to_caller: bytes.1.load(Ordering::Relaxed),
        requests: 0,
    }
}

/// A message for the caller that ends the session.
fn fatal(code: &str, message: &str) -> Message {
    messages::error(true, code, message, None)
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) {
    let _ = w.write_all(&m.to_bytes()).await;
    let _ = w.flush().await;
}

impl Inner {
    async fn refusal(
        &self,
        principal: Option<&str>,
        connection: &str,
        peer: &SocketAddr,
        reason: &str,
    ) {
        self.sessions
            .refusal(
                principal.map(str::to_owned),
                Some(connection.to_string()),
                "postgres",
                peer.to_string(),
                reason.to_string(),
            )
            .await;
    }

    async fn tls(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, HandshakeRecord)> {
        portcullis_tls::accept(
            &self.acceptor,
            stream,
            peer,
            self.handshake_timeout,
            &self.tls_metrics,
        )
        .await
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.handshake_timeout, stream.peek(&mut first)).await {
            Ok(Ok(1)) => {}
            _ => return,
        }
        if first[0] == TLS_HANDSHAKE {
            // Direct TLS (PostgreSQL 17's sslnegotiation=direct).
            let Some((tls, record)) = self.tls(stream, peer).await else {
                return;
            };
            if record.alpn.as_deref() != Some("postgresql") {
                // Required by the protocol for direct TLS: without it the
                // client may not be speaking PostgreSQL at all.
                tracing::info!(%peer, "direct TLS without ALPN \"postgresql\"; closed");
                return;
            }
            self.session(tls, record).await;
            return;
        }

        let mut reader = FrameReader::new(stream, crate::frame::MAX_STARTUP_LEN);
        loop {
            let startup = match tokio::time::timeout(self.handshake_timeout, reader.startup()).await
            {
                Ok(Ok(Some(s))) => s,
                Ok(Ok(None)) | Err(_) => return,
                Ok(Err(e)) => {
                    let mut s = reader.into_inner();
                    send(
                        &mut s,
                        &fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            &format!("invalid startup packet: {e}"),
                        ),
                    )
                    .await;
                    return;
                }
            };
            match startup {
                Startup::GssEncRequest => {
                    // No GSSAPI encryption; the client may go on with an
                    // SSLRequest on the same socket.
                    if reader.get_mut().write_all(b"N").await.is_err() {
                        return;
                    }
                }
                Startup::Cancel { pid, secret } => {
                    // libpq before 17 sends cancels in plaintext: the key
                    // is all it carries.
                    self.cancel(pid, secret).await;
                    return;
                }
                Startup::Startup { .. } => {
                    self.metrics.plaintext_refused.inc();
                    tracing::warn!(%peer, "plaintext PostgreSQL startup refused");
                    let mut s = reader.into_inner();
                    let m = messages::error(
                        true,
                        sqlstate::INVALID_AUTHORIZATION,
                        "Portcullis accepts PostgreSQL connections over TLS only",
                        Some(
                            "connect with sslmode=verify-full and sslrootcert=<the gateway's CA> (or at least sslmode=require)",
                        ),
                    );
                    send(&mut s, &m).await;
                    return;
                }
                Startup::SslRequest => {
                    if reader.has_buffered() {
                        // Bytes sent after SSLRequest but before the
                        // handshake would be injected into the session.
                        return;
                    }
                    let mut stream = reader.into_inner();
                    if stream.write_all(b"S").await.is_err() {
                        return;
                    }
                    let Some((tls, record)) = self.tls(stream, peer).await else {
                        return;
                    };
                    self.session(tls, record).await;
                    return;
                }
            }
        }
    }

    async fn cancel(&self, pid: i32, secret: i32) {
        let target = self.cancels.lock().ok().and_then(|m| {
            m.get(&(pid, secret))
                .map(|t| (t.upstream.clone(), t.pid, t.secret))
        });
        match target {
            Some((upstream, upid, usecret)) => {
                tracing::info!(connection = %upstream.name, "forwarding a cancel request");
                if let Err(e) = upstream.cancel(upid, usecret).await {
                    tracing::warn!(connection = %upstream.name, error = %e, "cancel request failed");
                }
            }
            None => tracing::info!("cancel request with an unknown key ignored"),
        }
    }

    /// Everything after TLS: startup, authentication, policy, relay.
    async fn session<S>(self: &Arc<Self>, tls: S, record: HandshakeRecord)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let peer = record.peer;
        let (r, mut w) = tokio::io::split(tls);
        let mut reader = FrameReader::new(r, crate::frame::MAX_STARTUP_LEN);
        let params = match tokio::time::timeout(self.handshake_timeout, reader.startup()).await {
            Ok(Ok(Some(Startup::Startup { params }))) => params,
            Ok(Ok(Some(Startup::Cancel { pid, secret }))) => {
                self.cancel(pid, secret).await;
                return;
            }
            Ok(Ok(Some(_))) => {
                send(
                    &mut w,
                    &fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "unexpected request inside TLS",
                    ),
                )
                .await;
                return;
            }
            Ok(Err(e)) => {
                send(
                    &mut w,
                    &fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        &format!("invalid startup packet: {e}"),
                    ),
                )
                .await;
                return;
            }
            _ => return,
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let connection = get("database")
            .or_else(|| get("user"))
            .unwrap_or("")
            .to_string();
        // How long a just-in-time grant is asked for, if the caller says.
        let asked_session = match get("options")
            .and_then(|o| crate::options::setting(o, "portcullis.session"))
            .map(|v| portcullis_approval::parse_session_duration(&v))
        {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                let msg = format!("portcullis.session: {e}");
                send(&mut w, &fatal(sqlstate::INVALID_PARAMETER_VALUE, &msg)).await;
                return;
            }
        };
        if get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
            send(
                &mut w,
                &fatal(
                    sqlstate::NOT_SUPPORTED,
                    "replication connections are not supported",
                ),
            )
            .await;
            return;
        }

        // A verified client certificate names the caller by itself;
        // otherwise the password message carries the caller's token
        // (safe inside TLS).
        let password = match &record.client_cert {
            Some(_) => None,
            None => {
                send(&mut w, &messages::auth_cleartext()).await;
                reader.set_max(self.max_message.min(64 * 1024));
                let password =
                    match tokio::time::timeout(self.handshake_timeout, reader.next()).await {
                        Ok(Ok(Some(m))) if m.tag == b'p' => messages::password_text(&m),
                        _ => None,
                    };
                let Some(password) = password else {
                    send(
                        &mut w,
                        &fatal(sqlstate::PROTOCOL_VIOLATION, "expected a password message"),
                    )
                    .await;
                    return;
                };
                Some(password)
            }
        };
        let credential = match (&password, &record.client_cert) {
            (Some(p), _) => Credential::Bearer(p),
            (None, Some(der)) => Credential::Certificate {
                der,
                names: &self.cert_names,
            },
            (None, None) => return,
        };

        let outcome = |o: &'static str, c: &str| {
            let known = self.upstreams.contains_key(c);
            self.metrics
                .sessions
                .get_or_create(&SessionLabels {
                    connection: if known { c.to_string() } else { "-".into() },
                    outcome: o,
                })
                .inc();
        };
        let principal = match self.auth.authenticate(credential).await {
            Ok(p) => p,
            Err(e) => {
                outcome("unauthenticated", &connection);
                self.refusal(None, &connection, &peer, &e.to_string()).await;
                tracing::info!(%peer, connection = %connection, reason = %e, "postgres caller not authenticated");
                let msg =
                    format!("password authentication failed for connection \"{connection}\": {e}");
                send(&mut w, &fatal(sqlstate::INVALID_PASSWORD, &msg)).await;
                return;
            }
        };
        drop(password);
        let Some(upstream) = self.upstreams.get(&connection).cloned() else {
            outcome("unknown_connection", &connection);
            self.refusal(
                Some(&principal.subject),
                &connection,
                &peer,
                "unknown connection",
            )
            .await;
            let msg = match self.protocols.get(&connection) {
                Some(p) => format!("connection \"{connection}\" speaks {p}, not PostgreSQL"),
                None => format!(
                    "no connection named \"{connection}\" (the database name selects the connection)"
                ),
            };
            send(&mut w, &fatal(sqlstate::INVALID_CATALOG, &msg)).await;
            return;
        };
        let rule = match self.policy.decide(&principal, &connection) {
            Decision::Allow { rule, .. } => rule,
            Decision::Deny { reason } => {
                outcome("forbidden", &connection);
                self.refusal(
                    Some(&principal.subject),
                    &connection,
                    &peer,
                    &reason.to_string(),
                )
                .await;
                tracing::info!(%peer, principal = %principal.subject, connection = %connection, "postgres session denied");
                send(
                    &mut w,
                    &fatal(sqlstate::INSUFFICIENT_PRIVILEGE, &reason.to_string()),
                )
                .await;
                return;
            }
        };

        // Durable before the first byte goes to the target; no entry, no
        // session (fail closed).
        let opening = portcullis_audit::Opening {
            principal: principal.subject.clone(),
            principal_kind: format!("{:?}", principal.kind).to_ascii_lowercase(),
            auth: serde_json::to_value(&principal.via).unwrap_or_default(),
            connection: connection.clone(),
            protocol: "postgres",
            peer: peer.to_string(),
            tls: serde_json::to_value(&record).unwrap_or_default(),
            rule: rule.clone(),
            agent: upstream.agent().map(str::to_owned),
        };
        let open = match self.sessions.open(opening).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "audit or recording unavailable; session refused");
                let msg = "the session cannot be audited and recorded, so it is refused";
                send(&mut w, &fatal(sqlstate::CONNECTION_FAILURE, msg)).await;
                return;
            }
        };
        let recorder = open.recorder.clone();
        let started = Instant::now();
        let bytes = (AtomicU64::new(0), AtomicU64::new(0));
        let gate = match (self.approval_rules.get(&connection), self.approvals.get()) {
            (Some(rule), Some(approvals)) => {
                // Just-in-time access is asked for by the first statement:
                // a notice can reach the caller only once it is logged in.
                Some(Gate {
                    approvals: approvals.clone(),
                    rule: rule.clone(),
                    principal: principal.clone(),
                    connection: connection.clone(),
                    jit_until: std::sync::atomic::AtomicI64::new(-1),
                    session: open.id.clone(),
                    asked_session,
                    held: Mutex::new(crate::held::HeldStatements::new(&self.nonce)),
                })
            }
            _ => None,
        };
        let up = match upstream.connect(&params).await {
            Ok(u) => u,
            Err(e) => {
                open.seal(closing(&bytes, "upstream_error", Some(e.to_string())))
                    .await;
                outcome("upstream_error", &connection);
                tracing::warn!(connection = %connection, error = %e, "postgres upstream failed");
                let msg = format!("connection \"{connection}\": {e}");
                send(&mut w, &fatal(sqlstate::CONNECTION_FAILURE, &msg)).await;
                return;
            }
        };
        outcome("opened", &connection);
        tracing::info!(
            target: "portcullis::access",
            %peer,
            principal = %principal.subject,
            connection = %connection,
            rule = %rule,
            tls_version = %record.version,
            upstream_ms = started.elapsed().as_millis() as u64,
            "postgres session opened"
        );

        // The caller gets the gateway's own cancel key, mapped to the
        // target's; the target's key never leaves the gateway.
        let (pid, secret) = loop {
            let r = random_u64();
            let key = ((r as i32) & i32::MAX, (r >> 32) as i32);
            if let Ok(mut m) = self.cancels.lock()
                && !m.contains_key(&key)
            {
                m.insert(
                    key,
                    CancelTarget {
                        upstream: upstream.clone(),
                        pid: up.pid,
                        secret: up.secret,
                    },
                );
                break key;
            }
        };
        // `table.column` masking rules need the tables' OIDs, which only
        // the target knows: ask it before the caller gets the session.
        let mut up = up;
        let mut tables = HashMap::new();
        if let Some(rule) = self.masks.select(&connection, &principal.groups) {
            let names = rule.masker.column_rule_tables();
            if !names.is_empty() {
                let list = names
                    .iter()
                    .map(|n| format!("'{}'", n.replace('\'', "''")))
                    .collect::<Vec<_>>()
                    .join(",");
                let sql = format!(
                    "SELECT c.oid::text, lower(c.relname) FROM pg_catalog.pg_class c WHERE lower(c.relname) IN ({list})"
                );
                match up.simple_rows(&sql).await {
                    Ok(rows) => {
                        for r in rows {
                            if let (Some(Some(oid)), Some(Some(name))) = (r.first(), r.get(1))
                                && let Ok(oid) = oid.parse::<u32>()
                            {
                                tables.insert(oid, name.clone());
                            }
                        }
                    }
                    Err(e) => {
                        // Fail closed: without the lookup a rule could not apply.
                        tracing::warn!(connection = %connection, error = %e, "table lookup for masking failed");
                        send(&mut w, &fatal(sqlstate::CONNECTION_FAILURE, &format!("connection \"{connection}\": masking rules could not be prepared"))).await;
                        return;
                    }
                }
            }
        }
        let mut hello = BytesMut::new();
        messages::auth_ok().encode(&mut hello);
        for m in &up.startup_messages {
            m.encode(&mut hello);
        }
        messages::backend_key_data(pid, secret).encode(&mut hello);
        messages::ready_for_query(up.status).encode(&mut hello);
        let result = if w.write_all(&hello).await.is_ok() && w.flush().await.is_ok() {
            let mut chain: Vec<Box<dyn Inspector>> = Vec::new();
            let masks = self.masks.select(&connection, &principal.groups);
            if let Some(rule) = masks {
                chain.push(Box::new(
                    crate::masking::MaskInspector::new(rule.clone(), &connection)
                        .with_metrics(self.mask_metrics.clone())
                        .with_tables(tables.clone()),
                ));
            }
            // Last: the recording holds what the caller saw.
            chain.push(Box::new(
                crate::recording::RecordInspector::new(recorder.clone())
                    .skipping(format!("portcullis_refused_{}_", self.nonce)),
            ));
            let ctx = SessionCtx {
                connection: &connection,
                principal: &principal,
                rule: &rule,
                upstream: &upstream,
                open: &open,
                gate: gate.as_ref(),
                bytes: &bytes,
                masked: masks.is_some(),
            };
            let (label, reusable) = self.relay(reader, w, up, chain, &ctx).await;
            if let Some(session) = reusable {
                upstream.checkin(&params, session).await;
            }
            label
        } else {
            "caller_gone"
        };
        if let Ok(mut m) = self.cancels.lock() {
            m.remove(&(pid, secret));
        }
        open.seal(closing(&bytes, result, None)).await;
        tracing::info!(
            target: "portcullis::access",
            %peer,
            principal = %principal.subject,
            connection = %connection,
            outcome = result,
            duration_ms = started.elapsed().as_millis() as u64,
            "postgres session ended"
        );
    }

    /// Move messages both ways until either side ends. Returns how it
    /// ended, and the upstream session when it can serve another caller
    /// (the caller said goodbye with nothing in flight and no transaction
    /// open).
    async fn relay<R, W>(
        &self,
        mut caller_r: FrameReader<R>,
        caller_w: W,
        up: UpstreamSession,
        chain: Vec<Box<dyn Inspector>>,
        ctx: &SessionCtx<'_>,
    ) -> (&'static str, Option<UpstreamSession>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let SessionCtx {
            connection,
            principal,
            gate,
            bytes,
            ..
        } = *ctx;
        let reuse = ctx.upstream.reuse();
        let UpstreamSession {
            reader: mut up_r,
            writer: mut up_w,
            startup_messages,
            pid: up_pid,
            secret: up_secret,
            status,
        } = up;
        // Sync points sent (Query, Sync, FunctionCall) and ReadyForQuery
        // seen: equal means nothing is in flight.
        // (Atomics only because the future must be Send; both sides run
        // in this one task.)
        let syncs_sent = AtomicU64::new(0);
        let ready_seen = AtomicU64::new(0);
        let last_status = AtomicU8::new(status);
        // A statement that may change the schema went to the target: the
        // catalog's proofs are forgotten at each ReadyForQuery until the
        // session is out of its transaction (until then other sessions
        // still see, and may cache, the old schema).
        let schema_dirty = AtomicBool::new(false);
        let chain = Mutex::new(chain);
        let pending: Mutex<Pending> = Mutex::new(Pending::default());
        caller_r.set_max(self.max_message);
        // Both directions write to the caller: results from the target,
        // and notices about held statements.
        let caller_w = tokio::sync::Mutex::new(caller_w);

        let c2u = async {
            let mut out = BytesMut::new();
            loop {
                let first = match caller_r.next().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return Exit::CallerGone,
                    Err(ReadError::Frame(e)) => return Exit::CallerBadFrame(e),
                    Err(_) => return Exit::CallerGone,
                };
                let mut next = Some(first);
                let mut terminate = false;
                while let Some(m) = next.take() {
                    let tag = m.tag;
                    let checked = self.check(ctx, &m).await;
                    let class = checked
                        .as_ref()
                        .ok()
                        .and_then(|c| c.as_ref().map(|c| c.class));
                    let gated = match (checked, gate) {
                        (Err(refusal), _) => Err(refusal),
                        (Ok(checked), Some(g)) => {
                            // What was batched before goes first: only
                            // this statement waits.
                            if g.may_wait(&m) && !out.is_empty() {
                                bytes.0.fetch_add(out.len() as u64, Ordering::Relaxed);
                                if up_w.write_all(&out).await.is_err()
                                    || up_w.flush().await.is_err()
                                {
                                    return Exit::UpstreamGone;
                                }
                                out.clear();
                            }
                            self.gate(g, &m, checked.as_ref(), &caller_w).await
                        }
                        (Ok(_), None) => Ok(m.clone()),
                    };
                    let verdict = match gated {
                        Err(refusal) => Ok(Err(refusal)),
                        // (The poisoned guard is dropped here: it must not live
                        // across the awaits below.)
                        Ok(m) => chain
                            .lock()
                            .map(|mut c| inspect::frontend(&mut c, m))
                            .map_err(drop),
                    };
                    match verdict {
                        Ok(Ok(m)) => {
                            if class.is_some_and(|c| c >= Class::Ddl)
                                || gate.is_some_and(|g| g.binds_schema_change(&m))
                            {
                                schema_dirty.store(true, Ordering::Relaxed);
                            }
                            m.encode(&mut out)
                        }
                        Ok(Err(refusal)) => {
                            if !matches!(tag, b'Q' | b'P' | b'B' | b'F') {
                                return Exit::Refused(refusal);
                            }
                            self.metrics
                                .refused
                                .get_or_create(&ConnLabel {
                                    connection: connection.to_string(),
                                })
                                .inc();
                            tracing::info!(
                                target: "portcullis::access",
                                principal = %principal.subject,
                                connection,
                                reason = %refusal.message,
                                "statement refused"
                            );
                            // Refusals are evidence: what the caller sent,
                            // in the recording and the audit chain.
                            ctx.open
                                .refused(portcullis_audit::Refused {
                                    principal: &principal.subject,
                                    connection,
                                    rule: ctx.rule,
                                    class: class.map_or("-", Class::as_str),
                                    statement: &sent_text(&m),
                                    code: refusal.code,
                                    reason: &refusal.message,
                                })
                                .await;
                            let marker = pending
                                .lock()
                                .map(|mut p| p.push(&self.nonce, refusal))
                                .unwrap_or_default();
                            let placeholder = format!("SELECT {marker}()");
                            let stand_in = match tag {
                                b'P' => {
                                    let name = messages::parse_text(&m)
                                        .map(|(n, _)| n)
                                        .unwrap_or_default();
                                    messages::parse_named(&name, &placeholder)
                                }
                                // Binding a statement that cannot exist
                                // fails in order, like the Parse above.
                                b'B' => {
                                    let portal = messages::bind(&m.body)
                                        .map(|b| b.portal)
                                        .unwrap_or_default();
                                    messages::bind_message(&portal, &marker)
                                }
                                _ => messages::query(&placeholder),
                            };
                            // The stand-in goes through the chain too, so
                            // every inspector sees what the target will answer.
                            match chain
                                .lock()
                                .map(|mut c| inspect::frontend(&mut c, stand_in))
                            {
                                Ok(Ok(m)) => m.encode(&mut out),
                                _ => return Exit::Internal,
                            }
                        }
                        Err(_) => return Exit::Internal,
                    }
                    if matches!(tag, b'Q' | b'S' | b'F') {
                        syncs_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    if tag == b'X' {
                        terminate = true;
                        if reuse {
                            // Not forwarded: the session may serve the next caller.
                            out.truncate(out.len() - 5);
                        }
                        break;
                    }
                    next = match caller_r.buffered() {
                        Ok(m) => m,
                        Err(e) => return Exit::CallerBadFrame(e),
                    };
                }
                bytes.0.fetch_add(out.len() as u64, Ordering::Relaxed);
                if up_w.write_all(&out).await.is_err() || up_w.flush().await.is_err() {
                    return Exit::UpstreamGone;
                }
                out.clear();
                if terminate {
                    return Exit::CallerTerminated;
                }
            }
        };

        let u2c = async {
            let mut out = BytesMut::new();
            loop {
                let first = match up_r.next().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => return Exit::UpstreamGone,
                };
                let mut next = Some(first);
                while let Some(mut m) = next.take() {
                    if m.tag == b'E'
                        && let Some(r) = pending
                            .lock()
                            .ok()
                            .and_then(|mut p| p.take_if_placeholder(&self.nonce, &m))
                    {
                        m = messages::error(false, r.code, &r.message, None);
                    }
                    if m.tag == b'Z' {
                        ready_seen.fetch_add(1, Ordering::Relaxed);
                        let status = m.body.first().copied().unwrap_or(b'E');
                        last_status.store(status, Ordering::Relaxed);
                        if schema_dirty.load(Ordering::Relaxed) {
                            ctx.upstream.forget_catalog();
                            schema_dirty.store(status != b'I', Ordering::Relaxed);
                        }
                    }
                    match chain.lock().map(|mut c| inspect::backend(&mut c, m)) {
                        Ok(Ok(m)) => m.encode(&mut out),
                        Ok(Err(refusal)) => return Exit::Refused(refusal),
                        Err(_) => return Exit::Internal,
                    }
                    next = match up_r.buffered() {
                        Ok(m) => m,
                        Err(_) => return Exit::UpstreamGone,
                    };
                }
                bytes.1.fetch_add(out.len() as u64, Ordering::Relaxed);
                let mut cw = caller_w.lock().await;
                if cw.write_all(&out).await.is_err() || cw.flush().await.is_err() {
                    return Exit::CallerGone;
                }
                drop(cw);
                out.clear();
            }
        };

        let exit = tokio::select! {
            e = c2u => e,
            e = u2c => e,
        };
        let (label, last) = match &exit {
            Exit::CallerGone | Exit::CallerTerminated => ("caller_closed", None),
            Exit::UpstreamGone => (
                "upstream_closed",
                Some(fatal(
                    sqlstate::CONNECTION_FAILURE,
                    &format!("connection \"{connection}\": the target closed the connection"),
                )),
            ),
            Exit::CallerBadFrame(e) => {
                let code = match e {
                    FrameError::TooLong { .. } => sqlstate::PROGRAM_LIMIT,
                    _ => sqlstate::PROTOCOL_VIOLATION,
                };
                (
                    "caller_protocol_error",
                    Some(fatal(code, &format!("invalid message: {e}"))),
                )
            }
            Exit::Refused(r) => ("refused", Some(fatal(r.code, &r.message))),
            Exit::Internal => (
                "internal_error",
                Some(fatal(
                    sqlstate::CONNECTION_FAILURE,
                    "internal error in the gateway",
                )),
            ),
        };
        let mut caller_w = caller_w.into_inner();
        if let Some(m) = last {
            send(&mut caller_w, &m).await;
        }
        let _ = caller_w.shutdown().await;
        let idle = syncs_sent.load(Ordering::Relaxed) == ready_seen.load(Ordering::Relaxed)
            && last_status.load(Ordering::Relaxed) == b'I';
        let no_refusals = pending
            .lock()
            .map(|p| p.waiting.is_empty())
            .unwrap_or(false);
        if reuse && matches!(exit, Exit::CallerTerminated) && idle && no_refusals {
            let session = UpstreamSession {
                reader: up_r,
                writer: up_w,
                startup_messages,
                pid: up_pid,
                secret: up_secret,
                status: b'I',
            };
            return (label, Some(session));
        }
        if !matches!(exit, Exit::UpstreamGone) {
            // Tell the target we are done, so its backend ends now.
            let _ = up_w
                .write_all(&Message::new(b'X', bytes::Bytes::new()).to_bytes())
                .await;
            let _ = up_w.shutdown().await;
        }
        (label, None)
    }
}

impl Inner {
    /// The statement rules' half that needs no person: prove the class of
    /// what `m` carries (Query, Parse, FunctionCall) and apply the
    /// read-only rule. `None`: no rule of this session looks at `m`.
    async fn check(&self, ctx: &SessionCtx<'_>, m: &Message) -> Result<Option<Checked>, Refusal> {
        let up = ctx.upstream;
        let gated = ctx
            .gate
            .is_some_and(|g| g.rule.mode == portcullis_config::ApprovalMode::Statements);
        if !matches!(m.tag, b'Q' | b'P' | b'F') || !(up.read_only || gated || ctx.masked) {
            return Ok(None);
        }
        let unproven = |e: crate::catalog::ProofError| Refusal {
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
            message: format!(
                "portcullis: connection \"{}\": the statement could not be proven free of side effects ({e}), so it was refused",
                ctx.connection
            ),
        };
        let checked = match m.tag {
            b'F' if ctx.masked => {
                // Its result is not a row the masker can read.
                return Err(Refusal {
                    code: sqlstate::INSUFFICIENT_PRIVILEGE,
                    message: format!(
                        "portcullis: connection \"{}\" masks results: fast-path function calls are refused",
                        ctx.connection
                    ),
                });
            }
            _ if !(up.read_only || gated) => return Ok(None),
            b'F' => match messages::function_call_oid(m) {
                Some(oid) => {
                    let (class, name) = up.function_class(oid).await.map_err(unproven)?;
                    Checked { class, name }
                }
                None => Checked {
                    class: Class::Unknown,
                    name: "?".into(),
                },
            },
            _ => {
                let sql = match m.tag {
                    b'Q' => messages::query_text(m),
                    _ => messages::parse_text(m).map(|(_, s)| s),
                };
                let class = match sql {
                    Some(sql) => up.classify(&sql).await.map_err(unproven)?,
                    None => Class::Unknown,
                };
                Checked {
                    class,
                    name: String::new(),
                }
            }
        };
        if up.read_only
            && let Some(r) = inspect::read_only(ctx.connection, checked.class)
        {
            return Err(r);
        }
        Ok(Some(checked))
    }

    /// Just-in-time access: a live grant, or a person's yes now.
    async fn just_in_time<W: AsyncWrite + Unpin>(
        &self,
        g: &Gate,
        caller_w: &tokio::sync::Mutex<W>,
    ) -> Result<i64, Refusal> {
        let now = portcullis_identity::unix_now();
        if let Ok(Some(until)) = g
            .approvals
            .jit_until(&g.principal.subject, &g.connection)
            .await
            && until > now
        {
            return Ok(until);
        }
        let ask = portcullis_approval::SessionRequest::new(&g.connection, &g.rule, g.asked_session);
        let held = ask.held(&g.principal, &g.connection, &g.rule, Some(&g.session));
        let review = match g.approvals.check(&held).await {
            Ok(portcullis_approval::Check::Approved(r)) => return Ok(r.expires_at),
            Ok(portcullis_approval::Check::Pending(r)) => r,
            Err(e) => return Err(unavailable(&e)),
        };
        {
            let mut w = caller_w.lock().await;
            if let Some(cut) = ask.cut_notice() {
                send(&mut *w, &messages::notice("01000", &cut)).await;
            }
            send(
                &mut *w,
                &messages::notice("01000", &portcullis_approval::waiting_message(&review)),
            )
            .await;
        }
        outcome_of(
            g,
            g.approvals
                .wait(&review.id, g.rule.wait, Some(&g.session))
                .await,
        )
        .map(|r| {
            r.map(|r| r.expires_at)
                .unwrap_or(now + ask.duration.as_secs() as i64)
        })
    }

    /// What the approval gate makes of one message from the caller: the
    /// message to send on (a held statement renamed to its private name,
    /// see [`crate::held`]), once a person has said yes where one must;
    /// or a refusal to give in protocol order.
    async fn gate<W: AsyncWrite + Unpin>(
        &self,
        g: &Gate,
        m: &Message,
        checked: Option<&Checked>,
        caller_w: &tokio::sync::Mutex<W>,
    ) -> Result<Message, Refusal> {
        use portcullis_config::ApprovalMode;
        match g.rule.mode {
            ApprovalMode::None => return Ok(m.clone()),
            ApprovalMode::Session => {
                if matches!(m.tag, b'Q' | b'P' | b'F') {
                    self.hold_session(g, caller_w).await?;
                }
                return Ok(m.clone());
            }
            ApprovalMode::Statements => {}
        }
        match m.tag {
            b'Q' => {
                if let Some(sql) = messages::query_text(m)
                    && let Some(class) = checked.and_then(|c| g.needs_approval(c.class))
                {
                    self.hold(g, &sql, class, caller_w).await?;
                }
                Ok(m.clone())
            }
            // A fast-path call is held like the statement that would call
            // it, its arguments part of the action.
            b'F' => {
                if let Some(c) = checked
                    && let Some(class) = g.needs_approval(c.class)
                {
                    let action = format!(
                        "-- fast-path function call\n{}(...) -- message: \\x{}",
                        c.name,
                        hex::encode(&m.body)
                    );
                    self.hold(g, &action, class, caller_w).await?;
                }
                Ok(m.clone())
            }
            // Held at each Bind, with its parameters, not here.
            b'P' => {
                let Some((name, sql)) = messages::parse_text(m) else {
                    return Ok(m.clone());
                };
                match checked.and_then(|c| g.needs_approval(c.class)) {
                    None => {
                        g.held().forget(&name);
                        Ok(m.clone())
                    }
                    Some(class) => {
                        let private = g.held().prepare(&name, &sql, class).map_err(held_refusal)?;
                        // It was read above, so it reads again; if not, fail closed.
                        messages::rename_parse(m, &private).ok_or_else(|| Refusal {
                            code: sqlstate::PROTOCOL_VIOLATION,
                            message: "portcullis: a Parse message could not be read".into(),
                        })
                    }
                }
            }
            b'B' => {
                let Some(bind) = messages::bind(&m.body) else {
                    return Ok(m.clone());
                };
                if crate::held::reserved(&bind.statement) {
                    return Err(held_refusal(crate::held::HeldError::Reserved(
                        bind.statement,
                    )));
                }
                let Some(h) = g.held().get(&bind.statement).cloned() else {
                    return Ok(m.clone());
                };
                let action = crate::held::action(&h.sql, &bind);
                self.hold(g, &action, h.class, caller_w).await?;
                Ok(bind.encode_for(&h.private))
            }
            b'D' | b'C' => {
                let Some(name) = messages::statement_target(m) else {
                    return Ok(m.clone());
                };
                let private = match m.tag {
                    b'C' => g.held().close(&name),
                    _ => g.held().get(&name).map(|h| h.private.clone()),
                };
                Ok(private.map_or_else(|| m.clone(), |p| messages::statement_message(m.tag, &p)))
            }
            _ => Ok(m.clone()),
        }
    }

    /// Just-in-time access, asked for by the first statement and checked
    /// by every one after.
    async fn hold_session<W: AsyncWrite + Unpin>(
        &self,
        g: &Gate,
        caller_w: &tokio::sync::Mutex<W>,
    ) -> Result<(), Refusal> {
        let mut until = g.jit_until.load(Ordering::Relaxed);
        if until < 0 {
            until = self.just_in_time(g, caller_w).await?;
            g.jit_until.store(until, Ordering::Relaxed);
        }
        if portcullis_identity::unix_now() >= until {
            return Err(Refusal {
                code: sqlstate::INSUFFICIENT_PRIVILEGE,
                message: format!(
                    "portcullis: just-in-time access to connection \"{}\" ended; reconnect to ask for it again",
                    g.connection
                ),
            });
        }
        Ok(())
    }

    /// Hold `action` (a statement, with its parameters when bound) until
    /// a person decides, or let it through at once if already approved.
    async fn hold<W: AsyncWrite + Unpin>(
        &self,
        g: &Gate,
        action: &str,
        class: &str,
        caller_w: &tokio::sync::Mutex<W>,
    ) -> Result<(), Refusal> {
        let held = portcullis_approval::Held {
            requester: &g.principal,
            connection: &g.connection,
            kind: "statement",
            action,
            classification: class,
            rule: &g.rule,
            session: Some(&g.session),
            grant: None,
        };
        let review = match g.approvals.check(&held).await {
            Ok(portcullis_approval::Check::Approved(_)) => return Ok(()),
            Ok(portcullis_approval::Check::Pending(r)) => r,
            Err(e) => return Err(unavailable(&e)),
        };
        {
            let mut w = caller_w.lock().await;
            send(
                &mut *w,
                &messages::notice("01000", &portcullis_approval::waiting_message(&review)),
            )
            .await;
        }
        tracing::info!(target: "portcullis::access", principal = %g.principal.subject, connection = %g.connection, review = %review.id, "statement held for review");
        outcome_of(
            g,
            g.approvals
                .wait(&review.id, g.rule.wait, Some(&g.session))
                .await,
        )
        .map(|_| ())
    }
}

fn held_refusal(e: crate::held::HeldError) -> Refusal {
    let code = match e {
        crate::held::HeldError::Reserved(_) => sqlstate::INSUFFICIENT_PRIVILEGE,
        crate::held::HeldError::TooMany => sqlstate::PROGRAM_LIMIT,
    };
    Refusal {
        code,
        message: format!("portcullis: {e}"),
    }
}

fn unavailable(e: &portcullis_approval::ReviewError) -> Refusal {
    Refusal {
        code: sqlstate::INSUFFICIENT_PRIVILEGE,
        message: format!(
            "portcullis: the statement needs approval, which cannot be checked now ({e})"
        ),
    }
}

/// A wait's outcome as the caller hears it.
fn outcome_of(
    g: &Gate,
    o: Result<portcullis_approval::Outcome, portcullis_approval::ReviewError>,
) -> Result<Option<portcullis_approval::Review>, Refusal> {
    use portcullis_approval::Outcome;
    match o {
        Ok(Outcome::Approved(r)) => Ok(Some(r)),
        Ok(Outcome::Denied(r)) => Err(Refusal {
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
            message: format!(
                "portcullis: review {} was denied by {}{}",
                r.id,
                r.decided_by.as_deref().unwrap_or("an approver"),
                r.reason
                    .as_deref()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default()
            ),
        }),
        Ok(Outcome::Expired(r)) => Err(Refusal {
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
            message: format!("portcullis: review {} expired before it was approved", r.id),
        }),
        Ok(Outcome::TimedOut(r)) => Err(Refusal {
            code: QUERY_CANCELED,
            message: format!(
                "portcullis: review {} was not decided within {}s; it stays open until it expires: once approved, run the same statement again",
                r.id,
                g.rule.wait.as_secs()
            ),
        }),
        Err(e) => Err(unavailable(&e)),
    }
}

/// SQLSTATE 57014: the statement waited too long for its review.
const QUERY_CANCELED: &str = "57014";

enum Exit {
    /// The caller sent Terminate.
    CallerTerminated,
    CallerGone,
    UpstreamGone,
    CallerBadFrame(FrameError),
    Refused(Refusal),
    Internal,
}

/// Refusals waiting for their placeholder's error to come back from the
/// target, keyed by sequence number.
#[derive(Default)]
struct Pending {
    seq: u64,
    waiting: VecDeque<(u64, Refusal)>,
}

impl Pending {
    /// Queue `r` and return the name of a placeholder to send in its
    /// place: a function or prepared statement that cannot exist, which
    /// the target rejects in order, aborting the transaction just as a
    /// real error would, with the name in its message.
    fn push(&mut self, nonce: &str, r: Refusal) -> String {
        self.seq += 1;
        if self.waiting.len() >= MAX_PENDING_REFUSALS {
            self.waiting.pop_front();
        }
        self.waiting.push_back((self.seq, r));
        format!("portcullis_refused_{nonce}_{}", self.seq)
    }

    /// If `m` is the target's error for one of our placeholders, the
    /// refusal to send instead.
    fn take_if_placeholder(&mut self, nonce: &str, m: &Message) -> Option<Refusal> {
        if self.waiting.is_empty() {
            return None;
        }
        let fields = messages::parse_fields(&m.body);
        let text = messages::field(&fields, b'M')?;
        let marker = format!("portcullis_refused_{nonce}_");
        let at = text.find(&marker)? + marker.len();
        let seq: u64 = text[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let i = self.waiting.iter().position(|(s, _)| *s == seq)?;
        self.waiting.remove(i).map(|(_, r)| r)
    }
}
