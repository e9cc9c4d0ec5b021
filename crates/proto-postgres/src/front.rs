//! The caller-facing half. A session runs as the protocol does:
//! TLS (SSLRequest or direct) → [`Inner::startup`] → [`Inner::credential`]
//! (password message or client certificate) → [`Inner::admit`] (the
//! shared admission path) → [`Inner::run_admitted`] (audited session,
//! target session, cancel key, inspectors) → the [`Relay`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use bytes::BytesMut;
use portcullis_config::{Config, Protocol, Target};
use portcullis_front::{AdmitError, Admitted, Closing, FrontContext, Origin, Outcome};
use portcullis_identity::Credential;
use portcullis_tls::{HandshakeRecord, TlsMetrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::frame::{Startup, tag};
use crate::inspect::Inspector;
use crate::io::FrameReader;
use crate::messages::{self, sqlstate};
use crate::relay::{Relay, SessionCtx, fatal, send};
use crate::statements::Gate;
use crate::upstream::{PgUpstream, SetupError, UpstreamSession};

/// First byte of a TLS record carrying a handshake (direct TLS, PG 17).
const TLS_HANDSHAKE: u8 = 0x16;
/// ALPN protocol name PostgreSQL uses for TLS.
pub const ALPN: &[u8] = b"postgresql";
/// Tries at drawing a cancel key not already in use.
const CANCEL_KEY_TRIES: usize = 16;

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
    ctx: Arc<FrontContext>,
    upstreams: HashMap<String, Arc<PgUpstream>>,
    /// For upstreams served by agents, here and after a reload.
    links: Arc<portcullis_link::AgentRegistry>,
    acceptor: TlsAcceptor,
    max_message: usize,
    handshake_timeout: Duration,
    /// Shared with the fronts of later reloads.
    cancels: Arc<Mutex<HashMap<(i32, i32), CancelTarget>>>,
    /// Cancel requests being forwarded (see [`Inner::cancel`]).
    forwarding: Arc<tokio::sync::Semaphore>,
    metrics: PgMetrics,
    tls_metrics: TlsMetrics,
    /// Makes placeholder statements unguessable, so a caller cannot forge
    /// an error that the gateway would rewrite.
    nonce: String,
    cert_names: portcullis_tls::CertPolicy,
}

/// What the caller's startup packet asked for.
struct StartupRequest {
    params: Vec<(String, String)>,
    /// The database name selects the connection.
    connection: String,
    /// The just-in-time duration asked for (`options=-c portcullis.session=30m`).
    asked_session: Option<Duration>,
}

/// An open, audited session and what serves it.
struct Live<'a> {
    admitted: &'a Admitted,
    upstream: &'a Arc<PgUpstream>,
    open: &'a portcullis_front::OpenSession,
    gate: Option<&'a Gate>,
}

/// An admitted caller on its way to the relay.
struct Session<R, W> {
    reader: FrameReader<R>,
    writer: W,
    startup: StartupRequest,
    admitted: Admitted,
    upstream: Arc<PgUpstream>,
    /// For the access log.
    tls_version: String,
}

/// The PostgreSQL upstream of each connection that speaks it.
fn upstreams(
    cfg: &Config,
    links: &Arc<portcullis_link::AgentRegistry>,
) -> Result<HashMap<String, Arc<PgUpstream>>, SetupError> {
    let mut upstreams = HashMap::new();
    for c in &cfg.connections {
        let upstream = match &c.target {
            Target::Postgres(t) => PgUpstream::new(c, t, &cfg.upstream_tls)?,
            Target::Agent(a) if a.protocol == Protocol::Postgres => {
                let strict = cfg.postgres.as_ref().is_some_and(|p| p.strict_roles);
                PgUpstream::via_agent(c, a, links.clone(), strict)
            }
            _ => continue,
        };
        upstreams.insert(c.name.clone(), Arc::new(upstream));
    }
    Ok(upstreams)
}

fn random_u64() -> Option<u64> {
    let mut b = [0u8; 8];
    SystemRandom::new().fill(&mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

impl PgFront {
    pub fn new(
        ctx: Arc<FrontContext>,
        cfg: &Config,
        acceptor: TlsAcceptor,
        metrics: PgMetrics,
        tls_metrics: TlsMetrics,
        links: Arc<portcullis_link::AgentRegistry>,
    ) -> Result<Self, SetupError> {
        let upstreams = upstreams(cfg, &links)?;
        let max_message = cfg
            .postgres
            .as_ref()
            .map(|p| p.max_message_bytes)
            .unwrap_or(16 * 1024 * 1024);
        // Without randomness the placeholders would be guessable: a
        // gateway that cannot draw it does not start.
        let nonce = random_u64().ok_or(SetupError::Random)?;
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                upstreams,
                links,
                acceptor,
                max_message,
                handshake_timeout: cfg.limits.handshake_timeout,
                cancels: Default::default(),
                forwarding: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDING)),
                metrics,
                tls_metrics,
                nonce: format!("{nonce:016x}"),
                cert_names: cfg
                    .postgres
                    .as_ref()
                    .map(|p| p.client_auth.cert_policy())
                    .unwrap_or_default(),
            }),
        })
    }

    /// The front a reloaded config gives: its connections and the
    /// reloaded admission context; the listener's settings, cancel keys
    /// (sessions opened before the reload can still be cancelled) and
    /// metrics kept.
    pub fn reloaded(&self, ctx: Arc<FrontContext>, cfg: &Config) -> Result<Self, SetupError> {
        let i = &self.inner;
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                upstreams: upstreams(cfg, &i.links)?,
                links: i.links.clone(),
                acceptor: i.acceptor.clone(),
                max_message: i.max_message,
                handshake_timeout: i.handshake_timeout,
                cancels: i.cancels.clone(),
                forwarding: i.forwarding.clone(),
                metrics: i.metrics.clone(),
                tls_metrics: i.tls_metrics.clone(),
                nonce: i.nonce.clone(),
                cert_names: i.cert_names.clone(),
            }),
        })
    }

    /// Serve one caller's TCP connection until it ends.
    pub async fn connection(&self, stream: TcpStream, peer: SocketAddr) {
        self.inner.clone().connection(stream, peer).await
    }

    /// Refuse a connection over a cap with a FATAL 53300
    /// too_many_connections (what a server at its `max_connections`
    /// says). Said inside TLS, after the caller's startup packet, so that
    /// libpq shows the reason; nothing else is read.
    pub async fn refuse_busy(&self, stream: TcpStream, peer: SocketAddr, why: &str) {
        let m = fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            &format!("portcullis: {why}"),
        );
        let inner = &self.inner;
        let mut first = [0u8; 1];
        match tokio::time::timeout(inner.handshake_timeout, stream.peek(&mut first)).await {
            Ok(Ok(1)) => {}
            _ => return,
        }
        let tls = if first[0] == TLS_HANDSHAKE {
            inner.tls(stream, peer).await
        } else {
            let mut reader = FrameReader::new(stream, crate::frame::MAX_STARTUP_LEN);
            let mut tries = 0;
            loop {
                tries += 1;
                let next = tokio::time::timeout(inner.handshake_timeout, reader.startup()).await;
                match next {
                    Ok(Ok(Some(Startup::SslRequest))) => {
                        let mut stream = reader.into_inner();
                        if stream.write_all(b"S").await.is_err() {
                            return;
                        }
                        break inner.tls(stream, peer).await;
                    }
                    Ok(Ok(Some(Startup::GssEncRequest))) if tries == 1 => {
                        if reader.get_mut().write_all(b"N").await.is_err() {
                            return;
                        }
                    }
                    Ok(Ok(Some(_))) => {
                        let mut stream = reader.into_inner();
                        return send(&mut stream, &m).await;
                    }
                    _ => return,
                }
            }
        };
        let Some((tls, _)) = tls else { return };
        let mut reader = FrameReader::new(tls, crate::frame::MAX_STARTUP_LEN);
        if let Ok(Ok(Some(_))) =
            tokio::time::timeout(inner.handshake_timeout, reader.startup()).await
        {
            let mut tls = reader.into_inner();
            send(&mut tls, &m).await;
        }
    }
}

impl Inner {
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
            return self.direct_tls(stream, peer).await;
        }

        let mut reader = FrameReader::new(stream, crate::frame::MAX_STARTUP_LEN);
        // One GSSENC request per connection (then SSLRequest or nothing):
        // a client repeating it would hold the socket without end.
        let mut gssenc_declined = false;
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
                Startup::GssEncRequest if gssenc_declined => {
                    let mut s = reader.into_inner();
                    let m = fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "GSSENC was already declined on this connection; send SSLRequest",
                    );
                    send(&mut s, &m).await;
                    return;
                }
                Startup::GssEncRequest => {
                    // No GSSAPI encryption; the client may go on with an
                    // SSLRequest on the same socket.
                    gssenc_declined = true;
                    if reader.get_mut().write_all(b"N").await.is_err() {
                        return;
                    }
                }
                Startup::Cancel { pid, secret } => {
                    // libpq before 17 sends cancels in plaintext: the key
                    // is all it carries.
                    self.cancel(pid, secret);
                    return;
                }
                Startup::Startup { .. } => {
                    self.metrics.plaintext_refused.inc();
                    tracing::warn!(%peer, "plaintext PostgreSQL startup refused");
                    send(&mut reader.into_inner(), &plaintext_refused()).await;
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

    /// Direct TLS (PostgreSQL 17's `sslnegotiation=direct`).
    async fn direct_tls(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
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
    }

    /// Forward a cancel request, apart from the connection that carried
    /// it: the caller's connection (and its slot in the listener's limits)
    /// ends at once. A review held a thousand slots with cancels an agent
    /// never answered, locking out every caller from that address.
    /// Bounded: at most [`MAX_FORWARDING`] at once, each by the target's
    /// timeout; past that, a cancel is dropped and logged.
    fn cancel(&self, pid: i32, secret: i32) {
        let target = self.cancels.lock().ok().and_then(|m| {
            m.get(&(pid, secret))
                .map(|t| (t.upstream.clone(), t.pid, t.secret))
        });
        let Some((upstream, upid, usecret)) = target else {
            tracing::info!("cancel request with an unknown key ignored");
            return;
        };
        let Ok(slot) = self.forwarding.clone().try_acquire_owned() else {
            tracing::warn!(connection = %upstream.name, "too many cancel requests in flight; this one was dropped");
            return;
        };
        tracing::info!(connection = %upstream.name, "forwarding a cancel request");
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = upstream.cancel(upid, usecret).await {
                tracing::warn!(connection = %upstream.name, error = %e, "cancel request failed");
            }
        });
    }

    /// Everything after TLS, phase by phase.
    async fn session<S>(self: &Arc<Self>, tls: S, record: HandshakeRecord)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (r, mut w) = tokio::io::split(tls);
        let mut reader = FrameReader::new(r, crate::frame::MAX_STARTUP_LEN);
        let Some(startup) = self.startup(&mut reader, &mut w).await else {
            return;
        };
        let Some(password) = self.credential(&mut reader, &mut w, &record).await else {
            return;
        };
        let Some((admitted, upstream)) = self
            .admit(&mut w, &startup, &record, password.as_deref())
            .await
        else {
            return;
        };
        drop(password);
        let session = Session {
            reader,
            writer: w,
            startup,
            admitted,
            upstream,
            tls_version: record.version.to_string(),
        };
        self.run_admitted(session).await;
    }

    /// The startup packet: which connection, and what else was asked.
    async fn startup<R, W>(&self, reader: &mut FrameReader<R>, w: &mut W) -> Option<StartupRequest>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let params = match tokio::time::timeout(self.handshake_timeout, reader.startup()).await {
            Ok(Ok(Some(Startup::Startup { params }))) => params,
            Ok(Ok(Some(Startup::Cancel { pid, secret }))) => {
                self.cancel(pid, secret);
                return None;
            }
            Ok(Ok(Some(_))) => {
                let m = fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "unexpected request inside TLS",
                );
                send(w, &m).await;
                return None;
            }
            Ok(Err(e)) => {
                let m = fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    &format!("invalid startup packet: {e}"),
                );
                send(w, &m).await;
                return None;
            }
            _ => return None,
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let connection = get("database").or_else(|| get("user")).unwrap_or("");
        let connection = connection.to_string();
        // How long a just-in-time grant is asked for, if the caller says.
        let asked_session = match get("options")
            .and_then(|o| crate::options::setting(o, "portcullis.session"))
            .map(|v| portcullis_approval::parse_session_duration(&v))
        {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                let msg = format!("portcullis.session: {e}");
                send(w, &fatal(sqlstate::INVALID_PARAMETER_VALUE, &msg)).await;
                return None;
            }
        };
        if get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
            let msg = "replication connections are not supported";
            send(w, &fatal(sqlstate::NOT_SUPPORTED, msg)).await;
            return None;
        }
        Some(StartupRequest {
            params,
            connection,
            asked_session,
        })
    }

    /// A verified client certificate names the caller by itself
    /// (`Some(None)`); otherwise the password message carries the
    /// caller's token (safe inside TLS).
    async fn credential<R, W>(
        &self,
        reader: &mut FrameReader<R>,
        w: &mut W,
        record: &HandshakeRecord,
    ) -> Option<Option<String>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if record.client_cert.is_some() {
            return Some(None);
        }
        send(w, &messages::auth_cleartext()).await;
        reader.set_max(self.max_message.min(64 * 1024));
        let password = match tokio::time::timeout(self.handshake_timeout, reader.next()).await {
            Ok(Ok(Some(m))) if m.tag == tag::PASSWORD => messages::password_text(&m),
            _ => None,
        };
        if password.is_none() {
            let m = fatal(sqlstate::PROTOCOL_VIOLATION, "expected a password message");
            send(w, &m).await;
        }
        password.map(Some)
    }

    fn count_session(&self, outcome: &'static str, connection: &str) {
        let known = self.upstreams.contains_key(connection);
        let labels = SessionLabels {
            connection: if known {
                connection.to_string()
            } else {
                "-".into()
            },
            outcome,
        };
        self.metrics.sessions.get_or_create(&labels).inc();
    }

    /// The shared admission path; a refusal is said as PostgreSQL says it.
    async fn admit<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        startup: &StartupRequest,
        record: &HandshakeRecord,
        password: Option<&str>,
    ) -> Option<(Admitted, Arc<PgUpstream>)> {
        let credential = match (password, &record.client_cert) {
            (Some(p), _) => Credential::Bearer(p),
            (None, Some(der)) => Credential::Certificate {
                der,
                names: &self.cert_names,
            },
            (None, None) => return None,
        };
        let origin = Origin {
            peer: record.peer.to_string(),
            front: Protocol::Postgres,
            tls: Some(Arc::new(record.clone())),
        };
        let connection = &startup.connection;
        let admitted = self
            .ctx
            .admit(credential, connection, Protocol::Postgres, &origin)
            .await;
        let refusal = match admitted {
            Ok(a) => match self.upstreams.get(connection) {
                Some(u) => return Some((a, u.clone())),
                // Admission knows every connection and the table was built
                // from the same config: unreachable, but refused with
                // evidence.
                None => {
                    let principal = Some(a.principal.subject.as_str());
                    let reason = "no PostgreSQL upstream for this connection";
                    self.ctx
                        .refuse(principal, Some(connection), &origin, reason)
                        .await;
                    AdmitError::UnknownConnection(connection.clone())
                }
            },
            Err(e) => e,
        };
        let (label, code, msg) = match &refusal {
            AdmitError::Unauthenticated(e) => (
                "unauthenticated",
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for connection \"{connection}\": {e}"),
            ),
            AdmitError::UnknownConnection(_) => (
                "unknown_connection",
                sqlstate::INVALID_CATALOG,
                format!(
                    "no connection named \"{connection}\" (the database name selects the connection)"
                ),
            ),
            AdmitError::WrongProtocol { speaks, .. } => (
                "unknown_connection",
                sqlstate::INVALID_CATALOG,
                format!("connection \"{connection}\" speaks {speaks}, not PostgreSQL"),
            ),
            AdmitError::Forbidden(reason) => (
                "forbidden",
                sqlstate::INSUFFICIENT_PRIVILEGE,
                reason.to_string(),
            ),
        };
        self.count_session(label, connection);
        send(w, &fatal(code, &msg)).await;
        None
    }

    /// The admitted caller's session: audited, then the target's session,
    /// then the relay; sealed however it ends.
    async fn run_admitted<R, W>(&self, s: Session<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Session {
            reader,
            writer: mut w,
            startup,
            admitted,
            upstream,
            tls_version,
        } = s;
        let connection = admitted.connection.as_str();
        let peer = admitted.origin.peer.as_str();
        // Durable before the first byte goes to the target; no entry, no
        // session (fail closed).
        let agent = upstream.agent().map(str::to_owned);
        let open = match self.ctx.open(&admitted, agent).await {
            Ok(open) => open,
            Err(e) => {
                send(&mut w, &fatal(sqlstate::CONNECTION_FAILURE, unopened(&e))).await;
                return;
            }
        };
        let started = Instant::now();
        let gate = admitted.gate.clone().map(|g| {
            let masks = self.ctx.masks.rules_for(connection);
            Gate::new(
                g.in_session(&open.id),
                startup.asked_session,
                &self.nonce,
                masks,
                startup.params.clone(),
            )
        });
        let owner = crate::Owner::Caller {
            subject: admitted.principal.subject.clone(),
            accountable: admitted.principal.accountable().to_owned(),
        };
        let up = match upstream.connect(&startup.params, owner).await {
            Ok(u) => u,
            Err(e) => {
                open.seal(closing(Outcome::UpstreamError, Some(e.to_string()), 0, 0))
                    .await;
                self.count_session("upstream_error", connection);
                tracing::warn!(connection, error = %e, "postgres upstream failed");
                let msg = format!("connection \"{connection}\": {e}");
                send(&mut w, &fatal(sqlstate::CONNECTION_FAILURE, &msg)).await;
                return;
            }
        };
        self.count_session("opened", connection);
        tracing::info!(
            target: "portcullis::access",
            peer,
            principal = %admitted.principal.subject,
            connection,
            rule = %admitted.rule,
            tls_version,
            upstream_ms = started.elapsed().as_millis() as u64,
            "postgres session opened"
        );
        let live = Live {
            admitted: &admitted,
            upstream: &upstream,
            open: &open,
            gate: gate.as_ref(),
        };
        let (outcome, from, to) = self.relayed(reader, &mut w, up, &live, &startup).await;
        open.seal(closing(outcome, None, from, to)).await;
        tracing::info!(
            target: "portcullis::access",
            peer,
            principal = %admitted.principal.subject,
            connection,
            outcome = %outcome,
            duration_ms = started.elapsed().as_millis() as u64,
            "postgres session ended"
        );
    }

    /// The relay between the caller and the target's session `up`, under
    /// a cancel key of the gateway's; a target session left idle goes back
    /// to the pool. The outcome and the bytes each way.
    async fn relayed<R, W>(
        &self,
        reader: FrameReader<R>,
        w: &mut W,
        up: UpstreamSession,
        live: &Live<'_>,
        startup: &StartupRequest,
    ) -> (Outcome, u64, u64)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Some(key) = self.cancel_key(live.upstream, &up) else {
            let msg = "internal error in the gateway (no randomness for a cancel key)";
            send(w, &fatal(sqlstate::CONNECTION_FAILURE, msg)).await;
            return (Outcome::InternalError, 0, 0);
        };
        let end = self.serve(reader, w, up, key, live).await;
        if let Ok(mut m) = self.cancels.lock() {
            m.remove(&key);
        }
        match end {
            Ok(e) => {
                if let Some(session) = e.reusable {
                    live.upstream.checkin(&startup.params, session).await;
                }
                (e.outcome, e.bytes_from_caller, e.bytes_to_caller)
            }
            Err(outcome) => (outcome, 0, 0),
        }
    }

    /// The caller gets the gateway's own cancel key, mapped to the
    /// target's; the target's key never leaves the gateway. `None` if no
    /// unused key could be drawn (the random source failed).
    fn cancel_key(&self, upstream: &Arc<PgUpstream>, up: &UpstreamSession) -> Option<(i32, i32)> {
        for _ in 0..CANCEL_KEY_TRIES {
            let r = random_u64()?;
            let key = ((r as i32) & i32::MAX, (r >> 32) as i32);
            let mut m = self.cancels.lock().ok()?;
            if let std::collections::hash_map::Entry::Vacant(slot) = m.entry(key) {
                slot.insert(CancelTarget {
                    upstream: upstream.clone(),
                    pid: up.pid,
                    secret: up.secret,
                });
                return Some(key);
            }
        }
        None
    }

    /// Hand the session over (the caller's login completes) and relay.
    async fn serve<R, W>(
        &self,
        reader: FrameReader<R>,
        w: &mut W,
        mut up: UpstreamSession,
        (pid, secret): (i32, i32),
        live: &Live<'_>,
    ) -> Result<crate::relay::RelayEnd, Outcome>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let connection = live.admitted.connection.as_str();
        let principal = &live.admitted.principal;
        let masks = self.ctx.mask_rule(connection, principal);
        let mut chain: Vec<Box<dyn Inspector>> = Vec::new();
        if let Some(rule) = masks {
            // Before the caller gets the session: fail closed without it.
            match crate::masking::prepare(rule, &mut up, live.upstream, connection).await {
                Ok(i) => chain.push(Box::new(i.with_metrics(self.ctx.mask_metrics.clone()))),
                Err(e) => {
                    tracing::warn!(connection, error = %e, "catalog look-up for masking failed");
                    let msg =
                        format!("connection \"{connection}\": masking rules could not be prepared");
                    send(w, &fatal(sqlstate::CONNECTION_FAILURE, &msg)).await;
                    return Err(Outcome::UpstreamError);
                }
            }
        }
        // Last: the recording holds what the caller saw.
        chain.push(Box::new(
            crate::recording::RecordInspector::new(live.open.recorder.clone())
                .skipping(format!("portcullis_refused_{}_", self.nonce)),
        ));
        let mut hello = BytesMut::new();
        messages::auth_ok().encode(&mut hello);
        for m in &up.startup_messages {
            if let (Some(g), tag::PARAMETER_STATUS) = (live.gate, m.tag) {
                g.reported(&m.body);
            }
            m.encode(&mut hello);
        }
        messages::backend_key_data(pid, secret).encode(&mut hello);
        messages::ready_for_query(up.status).encode(&mut hello);
        if w.write_all(&hello).await.is_err() || w.flush().await.is_err() {
            return Err(Outcome::CallerGone);
        }
        let refused = self
            .metrics
            .refused
            .get_or_create(&ConnLabel {
                connection: connection.to_string(),
            })
            .clone();
        let prepared = Mutex::new(crate::statements::Prepared::default());
        let watch = self.ctx.live.watch(
            principal,
            &live.open.id,
            connection,
            Protocol::Postgres,
            self.ctx.generation,
        );
        let budget = self.ctx.budget(live.admitted);
        let ctx = SessionCtx {
            budget: budget.as_ref(),
            prepared: &prepared,
            watch: Some(&watch),
            connection,
            principal,
            rule: &live.admitted.rule,
            upstream: live.upstream,
            open: live.open,
            gate: live.gate,
            masked: masks.is_some(),
            nonce: &self.nonce,
            max_message: self.max_message,
            refused: &refused,
        };
        Ok(Relay::run(&ctx, reader, w, up, chain).await)
    }
}

fn closing(outcome: Outcome, error: Option<String>, from: u64, to: u64) -> Closing {
    Closing {
        outcome,
        error,
        bytes_from_caller: from,
        bytes_to_caller: to,
        requests: 0,
    }
}

#[cfg(test)]
mod tests;

/// Why a session could not be opened, in the caller's words.
fn unopened(e: &portcullis_front::SessionError) -> &'static str {
    match e {
        portcullis_front::SessionError::Audit(_) => {
            "portcullis: the session cannot be audited (the audit store is unavailable), so it is refused"
        }
        portcullis_front::SessionError::Recording(_) => {
            "portcullis: the session cannot be recorded (the recordings spool is unavailable), so it is refused"
        }
    }
}

/// The answer to a startup sent without TLS.
fn plaintext_refused() -> crate::frame::Message {
    messages::error(
        true,
        sqlstate::INVALID_AUTHORIZATION,
        "Portcullis accepts PostgreSQL connections over TLS only",
        Some(
            "connect with sslmode=verify-full and sslrootcert=<the gateway's CA> (or at least sslmode=require)",
        ),
    )
}

/// Cancel requests forwarded at once, at most.
const MAX_FORWARDING: usize = 64;
