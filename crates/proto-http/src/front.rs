use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_config::{Config, Protocol, Target};
use portcullis_front::{AdmitError, Admitted, FrontContext, Origin, cold};
use portcullis_identity::{Credential, Principal, Resource, token};
use portcullis_policy::budget::Measure;
use portcullis_tls::HandshakeRecord;

use crate::metrics::{ConnectionLabel, RequestLabels};
use crate::route::{has_dot_segment, route};
use crate::{Body, BodyState, ForwardError, HttpMetrics, ProxyError, SetupError, Upstream};

/// The reversible tokens of one principal on one connection.
use crate::vaults::{SharedVault, Vaults};

/// What the listener knows about the caller's connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: Arc<HandshakeRecord>,
    /// The audited sessions this connection carries.
    pub sessions: crate::session::ConnSessions,
    /// Cancelled when a session on this connection must end (its
    /// credential revoked or expired, its grant gone): the listener then
    /// closes the connection.
    pub cut: tokio_util::sync::CancellationToken,
    /// Whether the caller's socket has hung up ([`crate::HangUp`]).
    pub hang_up: crate::HangUp,
    /// `peer` as text and its address as `X-Forwarded-For`, written once
    /// per connection: formatting a socket address on every request was
    /// about 2% of a small request's CPU (`perf`).
    peer_text: String,
    forwarded_for: Option<HeaderValue>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        tls: Arc<HandshakeRecord>,
        cut: tokio_util::sync::CancellationToken,
        hang_up: crate::HangUp,
    ) -> Self {
        Self {
            peer,
            tls,
            sessions: Default::default(),
            cut,
            hang_up,
            peer_text: peer.to_string(),
            forwarded_for: HeaderValue::from_str(&peer.ip().to_string()).ok(),
        }
    }
}

/// The HTTP front: one per gateway, shared by every caller connection.
#[derive(Clone)]
pub struct HttpFront {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<FrontContext>,
    upstreams: HashMap<String, Upstream>,
    /// For upstreams served by agents, here and after a reload.
    links: Arc<portcullis_link::AgentRegistry>,
    domain: Option<String>,
    max_body: u64,
    metrics: HttpMetrics,
    /// Session-end work that runs after a response body is sent.
    finishing: tokio_util::task::TaskTracker,
    /// Reversible tokens shown to each principal on each connection.
    vaults: Arc<Vaults>,
    /// What a client certificate may name.
    cert_names: portcullis_tls::CertPolicy,
    /// Public login settings of each `[[oidc]]` issuer that has them.
    login: Vec<serde_json::Value>,
    /// Where the PostgreSQL listener ended up, once it is bound.
    postgres_port: std::sync::OnceLock<u16>,
}

/// The HTTP upstream of each connection that speaks HTTP.
fn upstreams(
    cfg: &Config,
    links: &Arc<portcullis_link::AgentRegistry>,
) -> Result<HashMap<String, Upstream>, SetupError> {
    let mut upstreams = HashMap::new();
    for c in &cfg.connections {
        match &c.target {
            Target::Http(t) => {
                upstreams.insert(c.name.clone(), Upstream::new(c, t, &cfg.upstream_tls)?);
            }
            Target::Agent(a) if a.protocol == Protocol::Http => {
                let u = Upstream::via_agent(c, &a.agent, links.clone(), &cfg.upstream_tls)?;
                upstreams.insert(c.name.clone(), u);
            }
            _ => {}
        }
    }
    Ok(upstreams)
}

/// The gateway's own discovery document for `portcullis login` and
/// `portcullis env`.
pub const WELL_KNOWN: &str = "/.well-known/portcullis";

impl HttpFront {
    /// Build the front for `cfg`. Fails if any connection's TLS settings
    /// or credential cannot be loaded: a gateway that cannot guard a
    /// connection does not start.
    pub fn new(
        ctx: Arc<FrontContext>,
        cfg: &Config,
        metrics: HttpMetrics,
        links: Arc<portcullis_link::AgentRegistry>,
    ) -> Result<Self, SetupError> {
        let upstreams = upstreams(cfg, &links)?;
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                upstreams,
                links,
                domain: cfg.gateway.domain.clone(),
                max_body: cfg.limits.max_request_body_bytes,
                metrics,
                vaults: Default::default(),
                finishing: tokio_util::task::TaskTracker::new(),
                cert_names: cfg.gateway.client_auth.cert_policy(),
                login: cfg
                    .oidc
                    .iter()
                    .filter_map(|o| {
                        let l = o.login.as_ref()?;
                        Some(serde_json::json!({
                            "issuer": o.settings.issuer,
                            "client_id": l.client_id,
                            "scopes": l.scopes,
                        }))
                    })
                    .collect(),
                postgres_port: Default::default(),
            }),
        })
    }

    /// The front a reloaded config gives: its connections and the
    /// reloaded admission context; the listener's settings, metrics,
    /// reversible-token vaults and unfinished session ends kept (so that
    /// a drain at shutdown waits for those of every generation).
    pub fn reloaded(&self, ctx: Arc<FrontContext>, cfg: &Config) -> Result<Self, SetupError> {
        let i = &self.inner;
        let postgres_port = std::sync::OnceLock::new();
        if let Some(p) = i.postgres_port.get() {
            let _ = postgres_port.set(*p);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                upstreams: upstreams(cfg, &i.links)?,
                links: i.links.clone(),
                domain: i.domain.clone(),
                max_body: i.max_body,
                metrics: i.metrics.clone(),
                finishing: i.finishing.clone(),
                vaults: i.vaults.clone(),
                cert_names: i.cert_names.clone(),
                login: i.login.clone(),
                postgres_port,
            }),
        })
    }

    /// Authenticate a request the way the front does (for the gateway's
    /// other endpoints on this listener: `/mcp`, `/api/v1`), a refusal
    /// audited as `front`'s.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        conn: &ConnInfo,
        front: Protocol,
        at: Resource<'_>,
    ) -> Result<Principal, ProxyError> {
        self.inner.authenticate(headers, conn, front, at).await
    }

    /// Whether `host`/`path` routes to a connection (and so belongs to
    /// the proxy, not to the gateway's own endpoints).
    pub fn routes(&self, host: Option<&str>, path: &str) -> bool {
        route(host, path, self.inner.domain.as_deref()).is_some()
    }

    /// Where the PostgreSQL listener ended up (after binding), for
    /// [`WELL_KNOWN`].
    pub fn set_postgres_port(&self, port: u16) {
        let _ = self.inner.postgres_port.set(port);
    }

    /// What a CLI needs to log in and set up tools: the identity
    /// providers' public login settings and the PostgreSQL port. Public
    /// by design (like an OpenID discovery document): no secrets, no
    /// connection names.
    fn well_known(&self) -> Response<Body> {
        let body = serde_json::json!({
            "oidc": self.inner.login,
            "postgres": self.inner.postgres_port.get().map(|p| serde_json::json!({"port": p})),
        });
        crate::error::json_response(http::StatusCode::OK, &body)
    }

    /// Wait for the session-end entries of responses already sent (at
    /// shutdown: nothing accepted is lost).
    pub async fn drain(&self) {
        self.inner.finishing.close();
        self.inner.finishing.wait().await;
    }

    /// Answer one request. Never fails: every refusal is a JSON response.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        if req.uri().path() == WELL_KNOWN && req.method() == http::Method::GET {
            return self.well_known();
        }
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let mut seen = Seen::default();
        // Exported over OTLP when asked: who, where, the decision; never
        // the path (its query may carry a secret) or a credential.
        let span = tracing::debug_span!(
            target: portcullis_front::TRACE_TARGET,
            "http_request",
            otel.name = "HTTP request",
            method = %method,
            principal = tracing::field::Empty,
            connection = tracing::field::Empty,
            decision = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        let proxied = {
            use tracing::Instrument;
            // On the heap: moved into `Instrumented`, the request's future
            // was held twice in this one's state (rustc keeps a moved
            // future's slot): 15.7 KB per request in flight
            // (`portcullis_front::cold`).
            Box::pin(self.inner.proxy(req, conn, &mut seen))
                .instrument(span.clone())
                .await
        };
        let resp = match proxied {
            Ok(r) => r,
            Err(e) => {
                seen.error.get_or_insert_with(|| e.to_string());
                seen.gone = matches!(e, ProxyError::CallerGone);
                if matches!(e, ProxyError::RecordingUnavailable(_)) {
                    // Nothing more on this connection is recorded: it ends
                    // after this answer (its session seals what was written).
                    conn.cut.cancel();
                }
                if e.status().is_server_error() {
                    tracing::warn!(connection = seen.connection.unwrap_or("-"), error = %e, "request failed");
                }
                e.into_response()
            }
        };
        let status = resp.status().as_u16();
        let resp = self
            .inner
            .clone()
            .audit_outcome(&mut seen, conn, status, resp)
            .await;
        let connection = seen.connection.unwrap_or("-").to_owned();
        if !span.is_disabled() {
            let principal = seen.principal.as_ref().map(|p| p.subject.as_str());
            span.record("principal", principal.unwrap_or("-"));
            span.record("connection", connection.as_str());
            let decision = if seen.rule.is_some() {
                "allowed"
            } else {
                "refused"
            };
            span.record("decision", decision);
            span.record("status", status);
        }
        tracing::info!(
            target: "portcullis::access",
            peer = %conn.peer,
            principal = seen.principal.as_ref().map(|p| p.subject.as_str()).unwrap_or("-"),
            connection = %connection,
            rule = seen.rule.as_deref().unwrap_or("-"),
            method = %method,
            path = %path,
            status,
            duration_us = started.elapsed().as_micros() as u64,
            "http request"
        );
        self.inner
            .metrics
            .requests
            .get_or_create(&RequestLabels { connection, status })
            .inc();
        resp
    }
}

/// `answer`, unless the caller leaves first: the forward is dropped (its
/// target request with it) and the session marked. hyper drops a
/// request's work itself when it reads the connection's end or the
/// stream's reset (the guard below marks the session then); an HTTP/1.1
/// caller that pipelined another request behind this one and left is
/// not read again while this one runs, so its socket is asked every
/// [`crate::hangup::POLL`] (such requests were forwarded to their end for
/// nobody: review).
async fn unless_caller_leaves<T>(
    answer: impl Future<Output = Result<T, ProxyError>>,
    conn: &ConnInfo,
    live: &crate::session::LiveSession,
    received: &std::sync::atomic::AtomicU64,
) -> Result<T, ProxyError> {
    /// When the request's work is dropped unfinished: the body bytes that
    /// reached the target are counted all the same (a review delivered
    /// whole uploads, then hung up or reset the stream, under sessions
    /// that counted nothing), and the session is marked left if its
    /// caller's connection hung up (an HTTP/2 stream reset alone drops a
    /// request on a connection that goes on, and a review saw such
    /// sessions end `caller_gone` behind their other streams' answers).
    struct Abandoned<'a> {
        live: &'a crate::session::LiveSession,
        hang_up: &'a crate::HangUp,
        received: &'a std::sync::atomic::AtomicU64,
        armed: bool,
    }
    impl Drop for Abandoned<'_> {
        fn drop(&mut self) {
            if self.armed {
                let received = self.received.load(std::sync::atomic::Ordering::Relaxed);
                self.live.abandoned(received, self.hang_up.seen());
            }
        }
    }
    let mut guard = Abandoned {
        live,
        hang_up: &conn.hang_up,
        received,
        armed: true,
    };
    let left = conn.hang_up.left();
    let answered = tokio::select! {
        // An answer that is ready is answered (and recorded as sent).
        biased;
        // A failure because the caller left (its body cut off) is its
        // leaving (a review saw such sessions end 400).
        r = answer => match r {
            Err(_) if conn.hang_up.seen() => Err(ProxyError::CallerGone),
            r => r,
        },
        () = left => Err(ProxyError::CallerGone),
    };
    guard.armed = false;
    answered
}

/// A refused body of up to this size is read and discarded before the
/// refusal is sent, for at most [`LINGER_TIME`]: a client still uploading
/// when the answer arrives may otherwise see a reset instead of the 413
/// (nginx's "lingering close" does the same).
const LINGER_MAX_BYTES: u64 = 8 * 1024 * 1024;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// HTTP/2: a request body dropped before its response is sent resets
/// the stream (RST_STREAM CANCEL), and clients report a framing error
/// instead of the refusal; read up to this much of an oversized body
/// (within [`LINGER_TIME`]) so that the 413 arrives. HTTP/1 closes the
/// connection after a refusal instead.
const H2_LINGER_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Read and discard what is left of a refused request's body (bounded in
/// size and time), so the client reads the refusal instead of a reset.
pub async fn linger(body: Incoming) {
    cold(linger_up_to(body, LINGER_MAX_BYTES)).await
}

async fn linger_up_to(mut body: Incoming, max: u64) {
    let drain = async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > max {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// What was learnt about a request on its way through, for the access
/// and audit logs.
#[derive(Default)]
struct Seen<'a> {
    connection: Option<&'a str>,
    principal: Option<Principal>,
    rule: Option<String>,
    /// The refusal is already in the audit log (the admission path wrote
    /// it).
    audited: bool,
    /// Set once the session-start entry is durable: the session, and
    /// this request's number in it.
    live: Option<(Arc<crate::session::LiveSession>, u64)>,
    error: Option<String>,
    /// The bytes of the request's body that passed so far.
    bytes_from_caller: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The caller left before the answer ([`ProxyError::CallerGone`]).
    gone: bool,
}

/// What a request's recording shows where it differs from what goes to
/// the target: the caller's own path and body length, where masking
/// swapped reversible tokens back (a swapped body's length would tell the
/// caller the value's: review).
struct Recorded<'a> {
    path: &'a str,
    body_len: Option<usize>,
}

impl Recorded<'_> {
    /// Record the request's head as the caller sent it.
    fn record(
        &self,
        recorder: &portcullis_record::Recorder,
        request: u64,
        method: &http::Method,
        headers: &http::HeaderMap,
    ) -> Result<(), portcullis_record::RecordError> {
        let len = self.body_len.map(|n| n.to_string());
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| match &len {
                Some(n) if name == header::CONTENT_LENGTH => (name.as_str(), n.as_bytes()),
                _ => (name.as_str(), value.as_bytes()),
            })
            .collect();
        let head = portcullis_record::Head::Request {
            request: Some(request),
            method: method.as_str(),
            path: self.path,
        };
        recorder.head(head, &pairs)
    }
}

/// The request body on its way to the target, recorded: as it streams, or,
/// where masking swapped reversible tokens back into it, the caller's own
/// bytes at once (the caller may read its own recording). With it, the
/// count of its bytes received from the caller so far.
fn recorded_request_body(
    body: Body,
    caller_body: Option<&bytes::Bytes>,
    live: &crate::session::LiveSession,
    request_no: u64,
) -> Result<(Body, Arc<std::sync::atomic::AtomicU64>), ProxyError> {
    let Some(sent_by_caller) = caller_body else {
        let tap = crate::tap::Tap::new(body, live.recorder.clone(), Some(request_no), true);
        let received = tap.counted();
        return Ok((tap.boxed(), received));
    };
    if let Err(e) = live.recorder.body(Some(request_no), true, sent_by_caller) {
        tracing::error!(error = %e, "recording failed; request refused");
        return Err(ProxyError::RecordingUnavailable(e.to_string()));
    }
    Ok((body, Arc::new((sent_by_caller.len() as u64).into())))
}

/// A request on its way to the target, after the caller's checks.
/// A request admitted on a connection ([`Inner::admit`]).
struct Routed<'a> {
    req: Request<Incoming>,
    /// The path past the connection's name.
    rest: String,
    name: &'a String,
    upstream: &'a Upstream,
    admitted: Admitted,
}

struct Outgoing {
    parts: http::request::Parts,
    body: Body,
    state: Arc<BodyState>,
    /// The caller's own path and query, as it sent them (reversible
    /// tokens, not the values swapped back for them): what a reviewer
    /// sees.
    caller_pq: String,
    /// The target's path and query with the caller's own query, where
    /// tokens in it were swapped back: what the recording keeps.
    recorded_pq: Option<String>,
    /// The body as the caller sent it, where tokens in it were swapped
    /// back: what the recording keeps and a review is bound to.
    caller_body: Option<bytes::Bytes>,
    asked_session: Option<std::time::Duration>,
    vault: Option<SharedVault>,
}

impl Inner {
    /// The audit entry that closes a request: a refusal at once when no
    /// session started, else the session's end, written when the response
    /// body has been sent (the recording then covers it, and its digest is
    /// sealed into the entry).
    async fn audit_outcome(
        self: Arc<Self>,
        seen: &mut Seen<'_>,
        conn: &ConnInfo,
        status: u16,
        resp: Response<Body>,
    ) -> Response<Body> {
        let Some((live, request)) = seen.live.take() else {
            if status >= 400 && !seen.audited {
                let reason = seen
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("HTTP {status}"));
                let origin = origin(conn, Protocol::Http);
                let principal = seen.principal.as_ref().map(|p| p.subject.as_str());
                self.ctx
                    .refuse(principal, seen.connection, &origin, &reason)
                    .await;
            }
            return resp;
        };
        let error = seen.error.clone();
        let from_caller = seen.bytes_from_caller.take();
        let gone = seen.gone;
        let (mut parts, body) = resp.into_parts();
        // Through an agent, the caller's stream counts until its body ended.
        let permit = parts.extensions.remove::<portcullis_link::StreamPermit>();
        let recorder = live.recorder.clone();
        let body = crate::tap::Tap::new(body, recorder, Some(request), false).on_end(
            move |bytes_to_caller| {
                drop(permit);
                // Nothing reached a caller that had left.
                let sent = if gone { 0 } else { bytes_to_caller };
                // What the caller's body carried (not what it declared: a
                // caller that left mid-upload sent less, a chunked one
                // declares nothing).
                let received =
                    from_caller.map_or(0, |n| n.load(std::sync::atomic::Ordering::Relaxed));
                live.finished(status, error, (received, sent), gone);
            },
        );
        Response::from_parts(parts, body.boxed())
    }

    /// Who is calling: a bearer token when present, otherwise the client
    /// certificate verified in the handshake. A refusal is audited.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        conn: &ConnInfo,
        front: Protocol,
        at: Resource<'_>,
    ) -> Result<Principal, ProxyError> {
        let authorization = headers.get(header::AUTHORIZATION);
        let origin = origin(conn, front);
        let credential = match (authorization, &conn.tls.client_cert) {
            (None, Some(der)) => Credential::Certificate {
                der,
                names: &self.cert_names,
            },
            _ => match token::bearer(authorization.map(|v| v.as_bytes())) {
                Ok(t) => Credential::Bearer(t),
                Err(e) => {
                    self.ctx.refuse(None, None, &origin, &e.to_string()).await;
                    return Err(ProxyError::Auth(e));
                }
            },
        };
        self.ctx
            .authenticate(credential, at, None, &origin)
            .await
            .map_err(ProxyError::from)
    }

    /// A request, as the protocol runs it: admitted (who, which
    /// connection, under which rule), read (the target's form, reversible
    /// tokens swapped back), reviewed where a rule holds it, opened as a
    /// session and charged to its budget, then forwarded, masked, metered
    /// and recorded on the way back.
    async fn proxy<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        seen: &mut Seen<'a>,
    ) -> Result<Response<Body>, ProxyError> {
        let Routed {
            req,
            rest,
            name,
            upstream,
            admitted,
        } = self.admit(req, conn, seen).await?;
        let out = self.outgoing(req, &rest, upstream, &admitted, conn).await?;
        let (out, in_body) = self.reviewed(out, upstream, &admitted).await?;
        // Held or read for a while: the rules it was admitted under must
        // still be the ones in force (re-admitted under the new ones when
        // the caller sends it again).
        if !self.ctx.is_current() {
            return Err(ProxyError::ConfigChanged);
        }
        let Outgoing {
            parts,
            body,
            state,
            recorded_pq,
            caller_body,
            vault,
            ..
        } = out;
        let method = parts.method.clone();
        let recorded = Recorded {
            path: recorded_pq
                .as_deref()
                .or(parts.uri.path_and_query().map(|p| p.as_str()))
                .unwrap_or_default(),
            body_len: caller_body.as_ref().map(|b| b.len()),
        };
        let (live, request_no) = self
            .session(&admitted, upstream, conn, &parts, recorded)
            .await?;
        // After the session opened (a refused request is evidence in its
        // recording), before anything reaches the target.
        self.charge(&admitted, &live, &parts, &in_body).await?;
        let (body, received) =
            recorded_request_body(body, caller_body.as_ref(), &live, request_no)?;
        seen.live = Some((live.clone(), request_no));
        seen.bytes_from_caller = Some(received.clone());
        let answer = async {
            let resp = self
                .forward(
                    name,
                    admitted.principal.accountable(),
                    upstream,
                    Request::from_parts(parts, body),
                    &state,
                )
                .await?;
            let resp = self
                .mask(
                    &admitted,
                    &method,
                    resp,
                    vault.as_ref(),
                    upstream.scrubber(),
                )
                .await?;
            // The credential the gateway added, wherever the target echoed it.
            match upstream.scrubber() {
                Some(s) => s.response(resp).map_err(|reason| ProxyError::Upstream {
                    connection: name.to_owned(),
                    reason,
                }),
                None => Ok(resp),
            }
        };
        // A refusal may quote what the target sent (a charset, a coding):
        // scrubbed too (re-review).
        // On the heap: passed by value, it was held twice (as `proxy` above).
        let answer = unless_caller_leaves(Box::pin(answer), conn, &live, &received);
        let resp = match (answer.await, upstream.scrubber()) {
            (Err(e), Some(s)) => return Err(e.scrubbed(s)),
            (answer, _) => answer?,
        };
        let resp = crate::budget::meter(resp, &live).await?;
        record_response(resp, &live, request_no)
    }

    /// Who is calling, which connection the request names, and the rule
    /// that lets this principal use it. Authenticates before routing, so
    /// that unauthenticated callers learn nothing about which connections
    /// exist.
    async fn admit<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        seen: &mut Seen<'a>,
    ) -> Result<Routed<'a>, ProxyError> {
        let principal = match self
            .authenticate(req.headers(), conn, Protocol::Http, Resource::Other)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                seen.audited = true;
                // A refused caller may still be sending its body: read it,
                // or the client may see a reset instead of the 401.
                linger(req.into_body()).await;
                return Err(e);
            }
        };
        seen.principal = Some(principal.clone());
        let host = req.uri().host().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let Some(r) = route(host, req.uri().path(), self.domain.as_deref()) else {
            return Err(ProxyError::NoRoute);
        };
        let rest = r.rest.to_owned();
        let (name, upstream, admitted) = match self.authorize(principal, r.connection, conn).await {
            Ok(a) => a,
            Err(e) => {
                seen.audited = true;
                if matches!(e, ProxyError::Forbidden(_)) {
                    // A known connection: named in the access log and metrics.
                    seen.connection = self
                        .upstreams
                        .get_key_value(r.connection)
                        .map(|(k, _)| k.as_str());
                    linger(req.into_body()).await;
                }
                return Err(e);
            }
        };
        seen.connection = Some(name);
        seen.rule = Some(admitted.rule.clone());
        Ok(Routed {
            req,
            rest,
            name,
            upstream,
            admitted,
        })
    }

    /// The request under its rule's review: the methods a form body names
    /// (`_method=DELETE`) read where the method matters, and the request
    /// held for a person's approval where the rule says so. Returns the
    /// request with the body as the target will get it, and the methods
    /// the body named.
    async fn reviewed(
        &self,
        mut out: Outgoing,
        upstream: &Upstream,
        admitted: &Admitted,
    ) -> Result<(Outgoing, Vec<String>), ProxyError> {
        let method_matters = admitted.gate.as_ref().is_some_and(|g| g.holds_methods())
            || self.ctx.limits_methods(admitted);
        let mut in_body = Vec::new();
        if method_matters {
            let (body, named) = cold(crate::review::form_overrides(
                &out.parts.headers,
                out.body,
                &out.state,
                self.max_body,
            ))
            .await?;
            out.body = body;
            in_body = named;
        }
        if let Some(gate) = &admitted.gate {
            let held_method = crate::review::held_method(
                gate,
                &out.parts.method,
                &out.parts.headers,
                out.parts.uri.query(),
                &in_body,
                upstream.method_overrides(),
            )?;
            let held = crate::review::HeldRequest {
                method: &held_method,
                path_and_query: &out.caller_pq,
                caller_body: out.caller_body.as_deref(),
                asked_session: out.asked_session,
            };
            out.body = cold(crate::review::hold(
                gate,
                held,
                out.body,
                &out.state,
                self.max_body,
            ))
            .await?;
        }
        Ok((out, in_body))
    }

    /// One request taken from the session's budget, under its method and
    /// every method an override names (a target may read the method from
    /// either); with no bytes left to return, the request does not run.
    /// A spent budget may be lifted by a person where the rule allows.
    async fn charge(
        &self,
        admitted: &Admitted,
        live: &crate::session::LiveSession,
        parts: &http::request::Parts,
        in_body: &[String],
    ) -> Result<(), ProxyError> {
        let Some(b) = live.budget.get_or_init(|| self.ctx.budget(admitted)) else {
            return Ok(());
        };
        cold(Self::charge_budget(admitted, live, b, parts, in_body)).await
    }

    /// [`Self::charge`] under a budget.
    async fn charge_budget(
        admitted: &Admitted,
        live: &crate::session::LiveSession,
        b: &portcullis_front::Budget,
        parts: &http::request::Parts,
        in_body: &[String],
    ) -> Result<(), ProxyError> {
        let mut overridden = crate::review::method_overrides(&parts.headers, parts.uri.query());
        overridden.extend(in_body.iter().cloned());
        let qualifiers: Vec<Option<&str>> = std::iter::once(parts.method.as_str())
            .chain(overridden.iter().map(String::as_str))
            .map(Some)
            .collect();
        if let Err(e) = b.take_one_of(Measure::Requests, &qualifiers).await {
            lift(admitted, live, b, e).await?;
            b.take_one_of(Measure::Requests, &qualifiers)
                .await
                .map_err(ProxyError::Budget)?;
        }
        if b.counts(Measure::Bytes)
            && let Err(e) = b.left(Measure::Bytes, None).await
        {
            lift(admitted, live, b, e).await?;
        }
        Ok(())
    }

    /// The shared admission path for the routed connection, and its
    /// upstream half.
    async fn authorize(
        &self,
        principal: Principal,
        connection: &str,
        conn: &ConnInfo,
    ) -> Result<(&String, &Upstream, Admitted), ProxyError> {
        let origin = origin(conn, Protocol::Http);
        let admitted = self
            .ctx
            .authorize(principal, connection, Protocol::Http, &origin)
            .await?;
        match self.upstreams.get_key_value(connection) {
            Some((name, upstream)) => Ok((name, upstream, admitted)),
            // Admission knows every connection and the table was built from
            // the same config: unreachable, but refused with evidence.
            None => {
                let principal = Some(admitted.principal.subject.as_str());
                let reason = "no HTTP upstream for this connection";
                self.ctx
                    .refuse(principal, Some(connection), &origin, reason)
                    .await;
                Err(ProxyError::UnknownConnection(connection.to_owned()))
            }
        }
    }

    /// The caller's checks on the request (path, size), then the request
    /// for the target: its URI, headers, and tokens swapped back.
    async fn outgoing(
        &self,
        req: Request<Incoming>,
        rest: &str,
        upstream: &Upstream,
        admitted: &Admitted,
        conn: &ConnInfo,
    ) -> Result<Outgoing, ProxyError> {
        // TRACE echoes the request as the target got it, credential
        // included (a review read the connection's API key that way), and
        // so does IIS's TRACK; some servers read methods in any case.
        // CONNECT would make a tunnel nothing reads.
        // Nor through a method-override header a target may honour
        // (re-review), whatever the connection's `method_overrides`.
        let overrides = [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ]
        .iter()
        .flat_map(|h| req.headers().get_all(*h))
        .filter_map(|v| v.to_str().ok());
        let mut methods = std::iter::once(req.method().as_str()).chain(overrides);
        if methods.any(|m| {
            ["TRACE", "TRACK", "CONNECT"]
                .iter()
                .any(|e| m.trim().eq_ignore_ascii_case(e))
        }) {
            return Err(ProxyError::Method(
                req.method().clone(),
                "any other method (TRACE, TRACK and CONNECT are not forwarded)",
            ));
        }
        if has_dot_segment(rest) {
            return Err(ProxyError::BadPath(
                "paths with `.` or `..` segments are not forwarded".into(),
            ));
        }
        let req = self.within_limit(req).await?;
        let vault = self.vault(admitted);
        let paths = target_paths(rest, req.uri().query(), upstream, vault.as_ref())?;
        let TargetPaths {
            uri,
            caller_pq,
            recorded_pq,
        } = paths;
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        let asked_session = crate::review::requested_session(&parts.headers)?;
        crate::headers::request_to_upstream(&mut parts.headers, upstream.injected_header());
        if self
            .ctx
            .mask_rule(&admitted.connection, &admitted.principal)
            .is_some()
        {
            // Pieces of a body, each masked alone and joined by the
            // caller, are the whole unmasked body (a value cut in two
            // matches no detector): a masked caller gets whole bodies.
            parts.headers.remove(header::RANGE);
            parts.headers.remove(header::IF_RANGE);
            // A condition on the unmasked body's validator or date is an
            // oracle: a guessed ETag answered 304 confirms the guess.
            for h in [
                header::IF_NONE_MATCH,
                header::IF_MATCH,
                header::IF_MODIFIED_SINCE,
                header::IF_UNMODIFIED_SINCE,
            ] {
                parts.headers.remove(h);
            }
        }
        if let Some(v) = &conn.forwarded_for {
            parts.headers.insert("x-forwarded-for", v.clone());
        }
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let state = Arc::new(BodyState::default());
        let body = state.watch(body, self.max_body);
        let (body, caller_body) = self
            .reverse_tokens(body, &mut parts, vault.as_ref(), &state)
            .await?;
        Ok(Outgoing {
            parts,
            body,
            state,
            caller_pq,
            recorded_pq,
            caller_body,
            asked_session,
            vault,
        })
    }

    /// The request, or a refusal when the length it declares is over
    /// the body limit (the body read first, up to a bound, so that
    /// the client sees the refusal rather than a reset).
    async fn within_limit(&self, req: Request<Incoming>) -> Result<Request<Incoming>, ProxyError> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let Some(n) = declared.filter(|n| *n > self.max_body) else {
            return Ok(req);
        };
        let max = match req.version() {
            http::Version::HTTP_2 => H2_LINGER_MAX_BYTES,
            _ => LINGER_MAX_BYTES,
        };
        if n <= max {
            cold(linger_up_to(req.into_body(), max)).await;
        }
        Err(ProxyError::BodyTooLarge {
            limit: self.max_body,
        })
    }

    /// The reversible tokens shown to this principal on this connection,
    /// when its masking rule makes any.
    fn vault(&self, admitted: &Admitted) -> Option<SharedVault> {
        let rule = self
            .ctx
            .mask_rule(&admitted.connection, &admitted.principal)?;
        if !rule.masker.has_reversible() {
            return None;
        }
        self.vaults
            .get(&admitted.principal.subject, &admitted.connection)
    }

    /// Tokens may be in the body: read it (bounded by the request limit)
    /// and swap them back before it goes upstream. With the body to send,
    /// the caller's own where it differs.
    async fn reverse_tokens(
        &self,
        body: Body,
        parts: &mut http::request::Parts,
        vault: Option<&SharedVault>,
        state: &BodyState,
    ) -> Result<(Body, Option<bytes::Bytes>), ProxyError> {
        let Some(vault) = vault.filter(|v| v.lock().map(|v| !v.is_empty()).unwrap_or(false)) else {
            return Ok((body, None));
        };
        let bytes = body
            .collect()
            .await
            .map_err(|_| {
                if state.over_limit() {
                    ProxyError::BodyTooLarge {
                        limit: self.max_body,
                    }
                } else {
                    ProxyError::CallerBody("the request body could not be read".into())
                }
            })?
            .to_bytes();
        let ct = parts.headers.get(header::CONTENT_TYPE).cloned();
        let swapped = vault
            .lock()
            .ok()
            .and_then(|v| crate::masking::reverse_body(ct.as_ref(), &bytes, &v))
            .filter(|s| s[..] != bytes[..]);
        let (sent, caller) = match swapped {
            Some(s) => (bytes::Bytes::from(s), Some(bytes)),
            None => (bytes, None),
        };
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(sent.len()));
        Ok((crate::full(sent), caller))
    }

    /// The connection's session with this target, opened (durably, before
    /// the first byte goes to the target; no entry, no request: fail
    /// closed) by its first request; this request recorded in it.
    async fn session(
        &self,
        admitted: &Admitted,
        upstream: &Upstream,
        conn: &ConnInfo,
        parts: &http::request::Parts,
        recorded: Recorded<'_>,
    ) -> Result<(Arc<crate::session::LiveSession>, u64), ProxyError> {
        let principal = &admitted.principal;
        let key = crate::session::SessionKey {
            principal: principal.subject.clone(),
            auth: principal.via.clone(),
            connection: admitted.connection.clone(),
        };
        let agent = upstream.agent().map(str::to_owned);
        let refused = |e: &portcullis_front::SessionError| {
            tracing::error!(error = %e, "audit or recording unavailable; request refused");
            match e {
                portcullis_front::SessionError::Audit(_) => ProxyError::AuditUnavailable,
                portcullis_front::SessionError::Recording(r) => {
                    ProxyError::RecordingUnavailable(r.clone())
                }
            }
        };
        // A session that must end (its credential revoked or expired, its
        // grant gone) is marked and its connection cut, from the registry.
        let register = |session: &str, mark: Box<dyn Fn(portcullis_front::Ended) + Send + Sync>| {
            let cut = conn.cut.clone();
            let at = portcullis_front::At {
                session,
                connection: &admitted.connection,
                front: Protocol::Http,
                generation: self.ctx.generation,
            };
            self.ctx.live.register(principal, &at, move |why| {
                mark(why);
                cut.cancel();
            })
        };
        let live = conn
            .sessions
            .get_or_open(
                key,
                &self.finishing,
                || self.ctx.open(admitted, agent),
                register,
            )
            .await
            .map_err(|e| match e {
                crate::session::SessionError::Open(e) => refused(&e),
                crate::session::SessionError::TooMany => ProxyError::TooManySessions {
                    limit: crate::session::MAX_PER_CONNECTION,
                },
            })?;
        // A session opened earlier still stops taking requests when its
        // recordings cannot be stored (fail closed).
        self.ctx
            .sessions
            .sink()
            .healthy()
            .map_err(ProxyError::RecordingUnavailable)?;
        let request_no = live.next_request();
        let recorded = recorded.record(&live.recorder, request_no, &parts.method, &parts.headers);
        if let Err(e) = recorded {
            tracing::error!(error = %e, "recording failed; request refused");
            return Err(ProxyError::RecordingUnavailable(e.to_string()));
        }
        Ok((live, request_no))
    }

    /// Send the request to the target and wait for its answer's head.
    async fn forward(
        &self,
        name: &str,
        caller: &str,
        upstream: &Upstream,
        req: Request<Body>,
        state: &BodyState,
    ) -> Result<Response<Incoming>, ProxyError> {
        let sent = Instant::now();
        let result = upstream.forward(Some(caller), req, state).await;
        self.metrics
            .upstream_seconds
            .get_or_create(&ConnectionLabel {
                connection: name.to_owned(),
            })
            .observe(sent.elapsed().as_secs_f64());
        if state.over_limit()
            && let Some(rest) = state.take_rest()
        {
            linger(rest).await;
        }
        result.map_err(|e| match e {
            ForwardError::Timeout(after) => ProxyError::UpstreamTimeout {
                connection: name.to_owned(),
                after,
            },
            ForwardError::BodyTooLarge => ProxyError::BodyTooLarge {
                limit: self.max_body,
            },
            ForwardError::CallerBody(reason) => ProxyError::CallerBody(reason),
            ForwardError::Upstream(reason) => ProxyError::Upstream {
                connection: name.to_owned(),
                reason,
            },
            ForwardError::AgentUnavailable(agent) => ProxyError::AgentUnavailable {
                connection: name.to_owned(),
                agent,
            },
            ForwardError::Busy(reason) => ProxyError::AgentBusy {
                connection: name.to_owned(),
                reason,
            },
        })
    }

    /// The answer as the caller may see it: masked by the connection's
    /// rule, if one applies.
    async fn mask(
        &self,
        admitted: &Admitted,
        method: &http::Method,
        resp: Response<Incoming>,
        vault: Option<&SharedVault>,
        scrub: Option<&crate::scrub::Scrubber>,
    ) -> Result<Response<Body>, ProxyError> {
        let name = &admitted.connection;
        let Some(rule) = self.ctx.mask_rule(name, &admitted.principal) else {
            return Ok(resp.map(|b| b.map_err(Into::into).boxed()));
        };
        let mut stats = portcullis_mask::Stats::new();
        let masked = cold(crate::masking::mask_response(
            rule, method, resp, &mut stats, vault, scrub,
        ))
        .await
        .map_err(|f| match f {
            crate::masking::ResponseError::Mask(f) => ProxyError::MaskFailed {
                connection: name.clone(),
                reason: f.0,
            },
            crate::masking::ResponseError::Target(reason) => ProxyError::Upstream {
                connection: name.clone(),
                reason,
            },
        })?;
        self.ctx.mask_metrics.record(name, &stats);
        Ok(masked)
    }
}

/// The caller's view of the response head, recorded. Bodies that stream
/// through unmasked are not held in memory: the body follows as
/// `http_body` events, as it is sent.
/// A used-up budget: held for an approver to lift it for this session
/// (on a connection with an approval rule), refused otherwise.
/// Where a request goes on the target, and how it is shown.
struct TargetPaths {
    uri: http::Uri,
    /// The caller's own path and query, as it sent them (reversible
    /// tokens, not the values swapped back for them): what a reviewer
    /// sees.
    caller_pq: String,
    /// The target's path and query with the caller's own query, where
    /// tokens in it were swapped back: what the recording keeps.
    recorded_pq: Option<String>,
}

/// The target's URI for `rest` and `query`, with the values reversible
/// tokens in the query stand for: they go to the target only, and the
/// caller's form is what reviews and recordings show (the caller can read
/// both of its own).
fn target_paths(
    rest: &str,
    query: Option<&str>,
    upstream: &Upstream,
    vault: Option<&SharedVault>,
) -> Result<TargetPaths, ProxyError> {
    let swapped = match (vault, query) {
        (Some(v), Some(q)) => v
            .lock()
            .ok()
            .and_then(|v| crate::masking::reverse_query(q, &v))
            .filter(|s| s != q),
        _ => None,
    };
    let caller_pq = match query {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let target_uri = |q: Option<&str>| {
        upstream
            .target_uri(rest, q)
            .map_err(|e| ProxyError::BadPath(format!("cannot build the target URI: {e}")))
    };
    let uri = target_uri(swapped.as_deref().or(query))?;
    let recorded_pq = match &swapped {
        Some(_) => target_uri(query)?.path_and_query().map(|p| p.to_string()),
        None => None,
    };
    Ok(TargetPaths {
        uri,
        caller_pq,
        recorded_pq,
    })
}

async fn lift(
    admitted: &Admitted,
    live: &crate::session::LiveSession,
    b: &portcullis_front::Budget,
    e: portcullis_front::BudgetError,
) -> Result<(), ProxyError> {
    let gate = admitted.gate.as_ref().zip(live.id());
    let lifted = match gate {
        Some((g, id)) => g.clone().in_session(&id).lift_budget(b, &e).await,
        None => None,
    };
    match lifted {
        Some(Ok(())) => Ok(()),
        _ => Err(ProxyError::Budget(e)),
    }
}

fn record_response(
    resp: Response<Body>,
    live: &crate::session::LiveSession,
    request_no: u64,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = resp.into_parts();
    crate::headers::response_to_caller(&mut parts.headers);
    // The target's reason phrase (HTTP/1.1) is free text nothing reads:
    // the caller gets the standard one.
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    let head = portcullis_record::Head::Response {
        request: Some(request_no),
        status: parts.status.as_u16(),
    };
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    if let Err(e) = live.recorder.head(head, &headers) {
        tracing::error!(error = %e, "recording failed; response withheld");
        return Err(ProxyError::RecordingUnavailable(e.to_string()));
    }
    Ok(Response::from_parts(parts, body))
}

fn origin(conn: &ConnInfo, front: Protocol) -> Origin {
    Origin {
        peer: conn.peer_text.clone(),
        front,
        tls: Some(conn.tls.clone()),
    }
}

impl From<AdmitError> for ProxyError {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::Unauthenticated(e) => ProxyError::Auth(e),
            AdmitError::UnknownConnection(name) => ProxyError::UnknownConnection(name),
            AdmitError::WrongProtocol {
                connection, speaks, ..
            } => ProxyError::WrongProtocol {
                connection,
                protocol: speaks,
            },
            AdmitError::Forbidden(reason) => ProxyError::Forbidden(reason),
        }
    }
}

#[cfg(test)]
mod tests;
