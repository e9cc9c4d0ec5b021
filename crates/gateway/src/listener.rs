//! The TLS-only listener. Each accepted socket is sniffed: a TLS
//! ClientHello goes through the handshake (recorded, logged, counted);
//! anything else gets a plain 400 naming the https URL and is closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use portcullis_front::cold;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::limits::{ConnLimits, Full, Permit};
use crate::workers::{Serving, Workers};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_http::{Body, ConnInfo, HttpFront};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use portcullis_tls::TlsMetrics;

/// First byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// What serves the requests of a listener: the HTTP front, the admin
/// API, the demo API.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Whether requests may run long on a caller's behalf after hyper
    /// stops reading (MCP tool calls): the listener then keeps a watch on
    /// each connection's socket ([`portcullis_http::WatchedSocket`]), at
    /// the price of a second descriptor per connection.
    const WATCHES_HANG_UPS: bool = false;

    fn handle(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

impl Handler for HttpFront {
    async fn handle(&self, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
        HttpFront::handle(self, req, &conn).await
    }
}

/// The gateway's main listener: the proxy, plus the MCP endpoint at
/// `/mcp` (on the gateway's own host; a connection's host name or a
/// `/c/<connection>/mcp` path still goes to that connection).
#[derive(Clone)]
pub struct GatewayFront {
    /// The fronts of the config in force (a reload replaces them; a
    /// request keeps the ones it started with).
    pub stack: Arc<portcullis_front::Current<crate::reload::Stack>>,
    pub domain: Option<String>,
    /// Agent enrolment, when the agent listener's CA key is configured.
    pub enrol: Option<crate::enrol::Enrolment>,
    /// The OAuth authorization server, when `[oauth]` is configured.
    pub oauth: Option<Arc<crate::oauth::OAuthServer>>,
    /// The web console under `/ui/`.
    pub console: Arc<crate::console::Console>,
}

pub const MCP_PATH: &str = "/mcp";

impl Handler for GatewayFront {
    const WATCHES_HANG_UPS: bool = true;

    async fn handle(&self, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
        self.stack.load().handle(req, conn, self).await
    }
}

impl crate::reload::Stack {
    async fn handle(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
        listener: &GatewayFront,
    ) -> Response<Body> {
        let host = req.uri().host().map(str::to_owned).or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
        let path = req.uri().path().to_owned();
        // Before authentication: the enrolment token is the credential.
        if path == crate::enrol::ENROL_PATH {
            return cold(crate::enrol::handle(listener.enrol.as_ref(), req)).await;
        }
        let routed = self.http.routes(host.as_deref(), &path);
        // OAuth discovery and endpoints, unless an HTTP connection owns
        // the path (a target's own `/.well-known` stays its own).
        if !routed && crate::oauth::is_oauth_path(&path) {
            return match &listener.oauth {
                Some(o) => cold(o.handle(req, conn.peer.ip(), &self.ctx, &self.mcp)).await,
                None => {
                    portcullis_http::linger(req.into_body()).await;
                    portcullis_http::json_response(
                        http::StatusCode::NOT_FOUND,
                        &serde_json::json!({"error": "oauth_disabled",
                            "message": "this gateway is not an OAuth authorization server (configure [oauth])"}),
                    )
                }
            };
        }
        // The console's pages, then the gateway's own API, on paths no
        // connection routes.
        if !routed && (path == crate::console::UI || path.starts_with("/ui/")) {
            let oauth = listener.oauth.as_deref();
            return cold(listener.console.handle(req, oauth, conn.peer.ip())).await;
        }
        if !routed && path.starts_with("/saml/") {
            return cold(listener.console.handle_saml(req, conn.peer.ip())).await;
        }
        if !routed && is_api(&path) {
            return cold(self.api(req, &conn, &listener.console)).await;
        }
        // A connection of type "mcp": the MCP proxy.
        let mcp_route =
            portcullis_http::route::route(host.as_deref(), &path, listener.domain.as_deref())
                .filter(|r| self.mcp.is_mcp_connection(r.connection))
                .map(|r| (r.connection.to_owned(), r.rest.to_owned()));
        if mcp_route.is_none() && (path != MCP_PATH || routed) {
            let asked = listener.oauth.is_some().then(|| {
                let presented = req.headers().contains_key(http::header::AUTHORIZATION);
                (crate::oauth::authority(&req), presented)
            });
            let mut resp = self.http.handle(req, &conn).await;
            // The same challenge as an MCP connection's 401 (below): its
            // presence had told which names speak MCP (review).
            if resp.status() == http::StatusCode::UNAUTHORIZED
                && let Some((authority, presented)) = asked
                && let Some(v) = crate::oauth::challenge_header(
                    authority.as_deref(),
                    &path,
                    &self.mcp,
                    listener.domain.as_deref(),
                    presented,
                )
            {
                resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
            }
            return resp;
        }
        let at = portcullis_identity::Resource::Mcp(mcp_route.as_ref().map(|(c, _)| c.as_str()));
        let principal = self
            .http
            .authenticate(req.headers(), &conn, portcullis_config::Protocol::Mcp, at)
            .await;
        match principal {
            Ok(principal) => {
                let caller = portcullis_mcp::Caller {
                    principal,
                    peer: conn.peer.to_string(),
                    // The MCP handler ties it to the request (rmcp's own
                    // token); a proxied request's future is dropped
                    // with it instead.
                    gone: Default::default(),
                    hang_up: conn.hang_up.clone(),
                };
                match mcp_route {
                    Some((connection, rest)) => {
                        cold(self.mcp.proxy(req, caller, &connection, &rest)).await
                    }
                    None => cold(self.mcp.handle(req, caller)).await,
                }
            }
            Err(e) => {
                // (Audited by the admission path.) Read what the caller is
                // still sending, or it may see a reset instead of the 401.
                let authority = crate::oauth::authority(&req);
                portcullis_http::linger(req.into_body()).await;
                // Where an OAuth client learns how to get a token (RFC 9728 §5.1).
                let missing = matches!(
                    e,
                    portcullis_http::ProxyError::Auth(portcullis_identity::AuthError::Missing)
                );
                let mut resp = e.into_response();
                if resp.status() == http::StatusCode::UNAUTHORIZED
                    && listener.oauth.is_some()
                    && let Some(v) = crate::oauth::challenge_header(
                        authority.as_deref(),
                        &path,
                        &self.mcp,
                        listener.domain.as_deref(),
                        !missing,
                    )
                {
                    resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                }
                resp
            }
        }
    }
}

fn is_api(path: &str) -> bool {
    use crate::console::api::{
        ACCESS, ACCESS_EXPLAIN, AUDIT, AUDIT_EXPORT, AUDIT_VERIFY, ME, SESSIONS,
    };
    let exact = [
        ME,
        SESSIONS,
        AUDIT,
        AUDIT_VERIFY,
        AUDIT_EXPORT,
        ACCESS,
        ACCESS_EXPLAIN,
    ];
    path == crate::api::TOKENS
        || path == crate::api::BUDGETS
        || (path.starts_with(crate::api::TOKENS) && path.ends_with("/revoke"))
        || path.starts_with(crate::api::REVIEWS)
        || exact.contains(&path)
        || (path.starts_with("/api/v1/sessions/")
            && (path.ends_with("/recording") || path.ends_with("/end")))
}

impl crate::reload::Stack {
    /// `/api/v1`: the caller authenticated by the shared admission path.
    async fn api(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        console: &crate::console::Console,
    ) -> Response<Body> {
        use crate::console::api::{
            ACCESS, ACCESS_EXPLAIN, AUDIT, AUDIT_EXPORT, AUDIT_VERIFY, ME, REVIEW_EVENTS, SESSIONS,
        };
        let front = portcullis_config::Protocol::Http;
        // The console's session cookie, when no other credential is sent:
        // accepted here only (its audience), with CSRF on state changes.
        let session = match req.headers().contains_key(http::header::AUTHORIZATION) {
            true => None,
            false => crate::console::session_cookie(req.headers()),
        };
        let authenticated = match &session {
            Some(secret) => {
                let mut h = http::HeaderMap::new();
                if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {secret}")) {
                    h.insert(http::header::AUTHORIZATION, v);
                }
                self.http
                    .authenticate(&h, conn, front, crate::console::RESOURCE)
                    .await
            }
            None => {
                let at = portcullis_identity::Resource::Other;
                self.http.authenticate(req.headers(), conn, front, at).await
            }
        };
        let origin = || portcullis_front::Origin {
            peer: conn.peer.to_string(),
            front,
            tls: Some(conn.tls.clone()),
        };
        let who = match authenticated {
            Ok(p) => p,
            Err(e) => {
                portcullis_http::linger(req.into_body()).await;
                return e.into_response();
            }
        };
        let changes = !matches!(*req.method(), http::Method::GET | http::Method::HEAD);
        if let Some(secret) = &session
            && changes
            && !crate::console::csrf_ok(req.headers(), secret, console.origin())
        {
            let reason = "a console request that changes state without its CSRF value";
            self.ctx
                .refuse(Some(&who.subject), None, &origin(), reason)
                .await;
            portcullis_http::linger(req.into_body()).await;
            return portcullis_http::json_response(
                http::StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "csrf", "message": reason}),
            );
        }
        let path = req.uri().path().to_owned();
        let answer = if path == crate::api::TOKENS && req.method() == http::Method::GET {
            crate::console::api::tokens(console, &who).await
        } else if path == crate::api::TOKENS {
            crate::api::mint_for_agent(&self.ctx, req, &who).await
        } else if path.starts_with(crate::api::TOKENS) {
            crate::console::api::revoke_token(console, req, &who).await
        } else if path == ME {
            Ok(crate::console::api::me(console, &who, session.as_deref()))
        } else if path == SESSIONS {
            crate::console::api::sessions(console, console.store(), &req, &who).await
        } else if path.starts_with(SESSIONS) && path.ends_with("/end") {
            crate::console::api::end_session(console, req, &who).await
        } else if path.starts_with(SESSIONS) && path.ends_with("/recording") {
            crate::console::api::recording(console, &path, &who).await
        } else if path == ACCESS {
            Ok(crate::console::api::access(console, &self.ctx, &who))
        } else if path == crate::api::BUDGETS && req.method() == http::Method::GET {
            crate::console::api::budgets(console, &self.ctx, &req, &who).await
        } else if path == ACCESS_EXPLAIN {
            crate::console::api::explain(console, &self.ctx, &req, &who)
        } else if path == AUDIT {
            crate::console::api::audit(console, &req, &who).await
        } else if path == AUDIT_VERIFY {
            Ok(crate::console::api::audit_verify(console, &who).await)
        } else if path == AUDIT_EXPORT {
            Ok(crate::console::api::audit_export(console, &who))
        } else if path == REVIEW_EVENTS && req.method() == http::Method::GET {
            let approvals = self.ctx.approvals.clone();
            Ok(crate::console::api::review_events(
                console,
                approvals,
                who.clone(),
            ))
        } else {
            let prefix = crate::api::REVIEWS;
            crate::api::reviews(&self.ctx.approvals, prefix, req, &who).await
        };
        let mut resp = match answer {
            Ok(r) => r,
            Err(e) => {
                // Refusals are evidence, here as on the fronts.
                let reason = e.to_string();
                self.ctx
                    .refuse(Some(&who.subject), None, &origin(), &reason)
                    .await;
                e.into_response()
            }
        };
        // Answers (the CSRF value among them) are never cached nor sniffed.
        let h = resp.headers_mut();
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        h.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            http::HeaderValue::from_static("nosniff"),
        );
        let status = resp.status().as_u16();
        tracing::info!(target: "portcullis::access", peer = %conn.peer, principal = %who.subject, %path, status, "api request");
        resp
    }
}

pub struct ListenerSettings {
    pub public_url: String,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

/// Accept on `listener` until `shutdown`, handing each socket to
/// `on_conn` in a task of `tracker`, with its place under `limits` (held
/// for as long as the task runs) or why there is none: the listener's
/// protocol says the refusal. With connection workers ([`Workers`]) each
/// worker accepts from the listening socket itself and serves what it
/// accepted: the kernel wakes every worker's reactor for a connection and
/// the first to call `accept` takes it, so an idle worker takes it before
/// a busy one. (Dealing sockets from one loop cost a hand-off per
/// connection, the socket moved between reactors and the worker woken
/// from another thread: new connections per request fell from 0.74 to
/// 0.64 of the best peer; docs/performance.md.)
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    limits: Arc<ConnLimits>,
    on_conn: F,
) where
    F: Fn(TcpStream, SocketAddr, Result<Permit, Full>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on_conn = Arc::new(on_conn);
    let Some(workers) = Workers::get() else {
        return accept_here(listener, shutdown, tracker, limits, on_conn, None).await;
    };
    let socket = match listener.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot share the listener with the connection workers");
            return;
        }
    };
    let mut accepting = 0;
    for (i, worker) in workers.handles().iter().enumerate() {
        let own = match socket.try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "a connection worker cannot accept");
                continue;
            }
        };
        let (shutdown, limits, on_conn) = (shutdown.clone(), limits.clone(), on_conn.clone());
        let t = tracker.clone();
        drop(worker.spawn(tracker.track_future(async move {
            match TcpListener::from_std(own) {
                Ok(l) => accept_here(l, shutdown, t, limits, on_conn, Some((workers, i))).await,
                Err(e) => tracing::warn!(error = %e, "a connection worker cannot accept"),
            }
        })));
        accepting += 1;
    }
    if accepting == 0 {
        // No worker could take it: accept here after all.
        match TcpListener::from_std(socket) {
            Ok(l) => accept_here(l, shutdown, tracker, limits, on_conn, None).await,
            Err(e) => tracing::warn!(error = %e, "cannot accept connections"),
        }
        return;
    }
    drop(socket);
    shutdown.cancelled().await;
}

/// Accept on `listener` until `shutdown`, each connection served in a
/// task of `tracker` on the runtime this runs on, or (`worker`: this is
/// that connection worker) on the worker [`Workers::place`] picks.
async fn accept_here<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    limits: Arc<ConnLimits>,
    on_conn: Arc<F>,
    worker: Option<(&'static Workers, usize)>,
) where
    F: Fn(TcpStream, SocketAddr, Result<Permit, Full>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let admission = limits.admit(peer.ip());
        if let Err(full) = admission {
            tracing::warn!(%peer, ?full, "connection refused at a cap");
        }
        let Some((workers, here)) = worker else {
            drop(tracker.spawn(on_conn(stream, peer, admission)));
            continue;
        };
        let (there, serving) = workers.place(here);
        let conn = (stream, peer, admission, on_conn.clone());
        if there == here {
            drop(tracker.spawn(serve_counted(conn, serving)));
        } else {
            hand_over(&workers.handles()[there], &tracker, conn, serving);
        }
    }
}

/// An accepted connection and what serves it.
type Accepted<F> = (TcpStream, SocketAddr, Result<Permit, Full>, Arc<F>);

async fn serve_counted<F, Fut>((stream, peer, admission, on_conn): Accepted<F>, serving: Serving)
where
    F: Fn(TcpStream, SocketAddr, Result<Permit, Full>) -> Fut,
    Fut: Future<Output = ()>,
{
    on_conn(stream, peer, admission).await;
    drop(serving);
}

/// Serve a connection on another worker: its socket moves to that
/// worker's reactor, so its wake-ups happen on the thread that serves it.
fn hand_over<F, Fut>(worker: &Handle, tracker: &TaskTracker, conn: Accepted<F>, serving: Serving)
where
    F: Fn(TcpStream, SocketAddr, Result<Permit, Full>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stream, peer, admission, on_conn) = conn;
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot hand a connection to a worker");
            return;
        }
    };
    drop(worker.spawn(tracker.track_future(async move {
        match TcpStream::from_std(stream) {
            Ok(s) => serve_counted((s, peer, admission, on_conn), serving).await,
            Err(e) => tracing::warn!(%peer, error = %e, "cannot serve a connection on a worker"),
        }
    })));
}

/// Serve HTTPS with `front` on `listener`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    front: H,
    settings: Arc<ListenerSettings>,
    metrics: TlsMetrics,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    limits: Arc<ConnLimits>,
) {
    let stop = shutdown.clone();
    accept_loop(
        listener,
        stop,
        tracker,
        limits,
        move |stream, peer, admission| {
            let conn = Connection {
                acceptor: acceptor.clone(),
                front: front.clone(),
                settings: settings.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
            };
            async move {
                match admission {
                    Ok(_permit) => conn.run(stream, peer).await,
                    Err(full) => conn.refuse_full(stream, peer, full).await,
                }
            }
        },
    )
    .await
}

struct Connection<H> {
    acceptor: TlsAcceptor,
    front: H,
    settings: Arc<ListenerSettings>,
    metrics: TlsMetrics,
    shutdown: CancellationToken,
}

impl<H: Handler> Connection<H> {
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        let deadline = self.settings.handshake_timeout;
        let mut first = [0u8; 1];
        match tokio::time::timeout(deadline, stream.peek(&mut first)).await {
            Ok(Ok(1)) => {}
            // Closed, failed or silent before sending anything.
            _ => return,
        }
        if first[0] != TLS_HANDSHAKE {
            self.metrics.plaintext_refused.inc();
            refuse_plaintext(stream, peer, &self.settings.public_url).await;
            return;
        }

        // Held while the connection is served: long MCP calls ask it
        // whether the caller hung up (hyper may not read far enough to
        // see it).
        let watched = H::WATCHES_HANG_UPS
            .then(|| portcullis_http::WatchedSocket::of(&stream))
            .flatten();
        let hang_up = watched
            .as_ref()
            .map(portcullis_http::WatchedSocket::watch)
            .unwrap_or_default();
        let Some((tls, record)) =
            portcullis_tls::accept(&self.acceptor, stream, peer, deadline, &self.metrics).await
        else {
            return;
        };

        let cut = tokio_util::sync::CancellationToken::new();
        let info = Arc::new(ConnInfo::new(peer, Arc::new(record), cut.clone(), hang_up));
        let front = self.front.clone();
        // When the connection last started a request (seconds since it
        // opened): an idle HTTP/2 connection is closed like an idle
        // keep-alive one.
        let opened = std::time::Instant::now();
        let last_request = Arc::new(AtomicU64::new(0));
        let seen = last_request.clone();
        let svc = service_fn(move |req| {
            let front = front.clone();
            let info = info.clone();
            seen.store(opened.elapsed().as_secs(), Ordering::Relaxed);
            let head = req.method() == http::Method::HEAD;
            async move {
                let mut resp = front.handle(req, info).await;
                if head {
                    // A HEAD answer has no body; the gateway's own answers
                    // (errors, refusals) are written with one, and sent
                    // over HTTP/2 it reset the stream (review: `curl -I`
                    // got PROTOCOL_ERROR). The head, length included,
                    // stays.
                    use hyper::body::Body as _;
                    if let Some(n) = resp.body().size_hint().exact()
                        && n > 0
                    {
                        resp.headers_mut()
                            .entry(http::header::CONTENT_LENGTH)
                            .or_insert(http::HeaderValue::from(n));
                    }
                    resp = resp.map(|_| portcullis_http::full(bytes::Bytes::new()));
                }
                // This host speaks HTTPS only: browsers (the console, an
                // OAuth sign-in) must never try it in plaintext.
                resp.headers_mut()
                    .entry(http::header::STRICT_TRANSPORT_SECURITY)
                    .or_insert(http::HeaderValue::from_static(HSTS));
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.idle_timeout)
            .max_buf_size(self.settings.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(self.settings.max_header_bytes as u32)
            .max_concurrent_streams(MAX_STREAMS);
        let conn = builder.serve_connection(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        let idle = self.settings.idle_timeout;
        let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(250)));
        let mut closing = false;
        // Set when a session on the connection was cut: what is still
        // running after a short grace is dropped, not waited for.
        let mut hard_stop: Option<tokio::time::Instant> = None;
        let result = loop {
            let dropped = async {
                match hard_stop {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = cut.cancelled(), if hard_stop.is_none() => {
                    tracing::info!(%peer, "connection closed: a session on it ended");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    hard_stop = Some(tokio::time::Instant::now() + CUT_GRACE);
                }
                _ = dropped => return,
                _ = self.shutdown.cancelled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = tick.tick(), if !closing => {
                    let quiet = opened.elapsed().as_secs()
                        .saturating_sub(last_request.load(Ordering::Relaxed));
                    if quiet >= idle.as_secs().max(1) {
                        // GOAWAY (HTTP/2) or close after the response in
                        // flight (HTTP/1): streams already running finish.
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

impl<H: Handler> Connection<H> {
    /// Over a cap: the handshake, then 503 to every request on the
    /// connection (in the caller's HTTP version), then close.
    async fn refuse_full(self, stream: TcpStream, peer: SocketAddr, full: Full) {
        let deadline = self.settings.handshake_timeout;
        let Some((tls, _)) =
            portcullis_tls::accept(&self.acceptor, stream, peer, deadline, &self.metrics).await
        else {
            return;
        };
        let svc = service_fn(move |_req| async move {
            let mut r = portcullis_http::json_response(
                http::StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "too_many_connections", "message": full.message()}),
            );
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            Ok::<_, Infallible>(r)
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().keep_alive(false);
        let conn = builder.serve_connection(TokioIo::new(tls), svc);
        let _ = tokio::time::timeout(deadline, conn).await;
    }
}

/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS: u32 = 100;

/// Two years, as Mozilla's server-side TLS guidelines recommend.
const HSTS: &str = "max-age=63072000";

/// How long requests already running on a connection whose session was
/// cut may finish before the connection is dropped.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// Answer a plaintext request with 400 and the https URL, then close.
/// Reads what the caller sent first (briefly) so the reply is not lost to
/// a reset, and so the URL can include the requested path.
async fn refuse_plaintext(mut stream: TcpStream, peer: SocketAddr, public_url: &str) {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    if let Some(kind) = postgres_packet(&buf[..n]) {
        return refuse_postgres(stream, peer, kind).await;
    }
    let path = request_path(&buf[..n]).unwrap_or("/");
    let url = format!("{}{}", public_url.trim_end_matches('/'), path);
    tracing::warn!(%peer, "plaintext refused on a TLS-only listener");
    let body = serde_json::json!({
        "error": "tls_required",
        "message": format!("this port accepts HTTPS only; use {url}"),
        "https_url": url,
    })
    .to_string();
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// What a PostgreSQL client sends first, when it is one.
#[derive(Debug, PartialEq, Eq)]
enum PgFirst {
    /// SSLRequest or GSSENCRequest: it waits for one byte.
    EncryptionRequest,
    Startup,
}

/// Whether `head` starts with a PostgreSQL client's first message (a
/// length, then the SSLRequest, GSSENCRequest or protocol 3 code).
fn postgres_packet(head: &[u8]) -> Option<PgFirst> {
    let len = u32::from_be_bytes(head.get(0..4)?.try_into().ok()?);
    let code = u32::from_be_bytes(head.get(4..8)?.try_into().ok()?);
    match (len, code) {
        (8, 80_877_103 | 80_877_104) => Some(PgFirst::EncryptionRequest),
        (9..=10_000, 196_608) => Some(PgFirst::Startup),
        _ => None,
    }
}

/// A PostgreSQL client on the HTTPS port: told so in its own protocol
/// (libpq would otherwise say "invalid response to SSL negotiation: H").
/// Encryption is declined ('N'); a client that then goes on in plaintext
/// gets a FATAL naming the mistake, one that insists on TLS reports that
/// the server does not support it, and nothing is served either way.
async fn refuse_postgres(mut stream: TcpStream, peer: SocketAddr, first: PgFirst) {
    tracing::warn!(%peer, "a PostgreSQL client on the HTTPS port: refused");
    if first == PgFirst::EncryptionRequest {
        if stream.write_all(b"N").await.is_err() {
            return;
        }
        let mut startup = vec![0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut startup));
        if !matches!(read.await, Ok(Ok(n)) if n > 0) {
            return;
        }
    }
    let message = "this is the Portcullis gateway's HTTPS port; connect PostgreSQL clients \
                   to its PostgreSQL listener ([postgres] listen) with sslmode=verify-full";
    let _ = stream.write_all(&pg_fatal("08P01", message)).await;
    let _ = stream.shutdown().await;
}

/// An ErrorResponse with severity FATAL. (Three fields: written here
/// rather than depending on the PostgreSQL front from the listener.)
fn pg_fatal(code: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

/// The path of an HTTP/1 request line, if it is a plain origin-form path
/// of printable characters (it is echoed back, so nothing odd passes).
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let _method = parts.next()?;
    let target = parts.next()?;
    let path = target.split('?').next()?;
    let ok = path.starts_with('/')
        && path.len() <= 512
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    ok.then_some(path)
}

#[cfg(test)]
mod tests {
    use super::{PgFirst, accept_loop, pg_fatal, postgres_packet, request_path};
    use crate::limits::{ConnLimits, ConnMetrics};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    /// Each connection is served on the connection worker that accepted
    /// it, and a worker that is busy leaves it to the others: with every
    /// worker but one blocked, connections are still served (on that
    /// one). The tracker waits for them.
    #[tokio::test]
    async fn connections_are_served_by_the_workers_free_to_take_them() {
        let Some(workers) = crate::workers::Workers::get() else {
            // PORTCULLIS_CONNECTION_THREADS=0: nothing to check here.
            return;
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        let limits = ConnLimits::new("test", 8, 8, ConnMetrics::default());
        let serving = tokio::spawn(accept_loop(
            l,
            stop.clone(),
            tracker.clone(),
            limits,
            |mut s: tokio::net::TcpStream, _, admission| async move {
                assert!(admission.is_ok());
                let name = std::thread::current().name().unwrap_or("").to_string();
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(format!("{}:{name}", String::from_utf8_lossy(&b)).as_bytes())
                    .await
                    .unwrap();
            },
        ));
        let ask = |i: usize| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(format!("{i:04}").as_bytes()).await.unwrap();
            let mut answer = String::new();
            c.read_to_string(&mut answer).await.unwrap();
            let (echo, thread) = answer.split_once(':').unwrap();
            assert_eq!(echo, format!("{i:04}"));
            assert!(thread.starts_with("portcullis-conn-"), "{thread}");
            thread.to_string()
        };
        for i in 0..workers.len() * 2 {
            ask(i).await;
        }
        // Every worker but the last blocked (a thread-blocking wait, as a
        // long masking pass would be).
        let n = workers.len();
        let mut release = Vec::new();
        let mut blocked = Vec::new();
        for w in &workers.handles()[..n - 1] {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (on_tx, on_rx) = tokio::sync::oneshot::channel();
            drop(w.spawn(async move {
                let _ = on_tx.send(std::thread::current().name().map(str::to_string));
                let _ = rx.recv();
            }));
            blocked.push(on_rx.await.unwrap().unwrap());
            release.push(tx);
        }
        for i in 0..4 {
            let thread = ask(100 + i).await;
            assert!(!blocked.contains(&thread), "{thread} was blocked");
        }
        drop(release);
        stop.cancel();
        serving.await.unwrap();
        tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait())
            .await
            .unwrap();
    }

    #[test]
    fn postgres_first_messages_are_recognised() {
        let ssl = [0, 0, 0, 8, 4, 210, 22, 47];
        assert_eq!(postgres_packet(&ssl), Some(PgFirst::EncryptionRequest));
        let gss = [0, 0, 0, 8, 4, 210, 22, 48];
        assert_eq!(postgres_packet(&gss), Some(PgFirst::EncryptionRequest));
        let startup = [0, 0, 0, 40, 0, 3, 0, 0, b'u'];
        assert_eq!(postgres_packet(&startup), Some(PgFirst::Startup));
        assert_eq!(postgres_packet(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(postgres_packet(&[0, 0, 0, 8]), None);
        let e = pg_fatal("08P01", "m");
        assert_eq!(e[0], b'E');
        assert_eq!(
            u32::from_be_bytes(e[1..5].try_into().unwrap()) as usize,
            e.len() - 1
        );
    }

    #[test]
    fn request_path_is_extracted_safely() {
        assert_eq!(
            request_path(b"GET /c/x/hello?a=1 HTTP/1.1\r\nHost: h\r\n"),
            Some("/c/x/hello")
        );
        assert_eq!(request_path(b"GET / HTTP/1.1"), Some("/"));
        assert_eq!(request_path(b"GET http://evil/ HTTP/1.1"), None);
        assert_eq!(request_path(b"GET /\"><script> HTTP/1.1"), None);
        assert_eq!(request_path(b"\x00\x01"), None);
    }
}
