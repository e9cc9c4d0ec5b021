use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_config::{Config, Target};
use portcullis_identity::{AuthError, Authenticator, Credential, Principal, token};
use portcullis_mask::RuleSet;
use portcullis_policy::{Decision, Policy};
use portcullis_tls::HandshakeRecord;

use crate::metrics::{ConnectionLabel, RequestLabels};
use crate::route::{has_dot_segment, route};
use crate::{
    Body, BodyState, ForwardError, HttpMetrics, MaskMetrics, ProxyError, SetupError, Upstream,
};

/// The reversible tokens of one principal on one connection.
type SharedVault = Arc<std::sync::Mutex<portcullis_mask::Vault>>;

/// What the listener knows about the caller's connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: Arc<HandshakeRecord>,
    /// The audited sessions this connection carries.
    pub sessions: crate::session::ConnSessions,
}

/// The HTTP front: one per gateway, shared by every caller connection.
#[derive(Clone)]
pub struct HttpFront {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    upstreams: HashMap<String, Upstream>,
    /// Every connection's protocol, to say so instead of "unknown".
    protocols: HashMap<String, &'static str>,
    policy: Policy,
    pub(crate) auth: Authenticator,
    domain: Option<String>,
    max_body: u64,
    metrics: HttpMetrics,
    masks: Arc<RuleSet>,
    mask_metrics: MaskMetrics,
    pub(crate) sessions: portcullis_audit::Sessions,
    /// Session-end work that runs after a response body is sent.
    finishing: tokio_util::task::TaskTracker,
    /// Reversible tokens shown to each principal on each connection.
    vaults: std::sync::Mutex<HashMap<(String, String), SharedVault>>,
    /// Where a client certificate's principal is read from.
    cert_names: Vec<portcullis_config::CertName>,
    /// Public login settings of each `[[oidc]]` issuer that has them.
    login: Vec<serde_json::Value>,
    postgres_port: std::sync::OnceLock<u16>,
    approval_rules: HashMap<String, portcullis_config::ApprovalRule>,
    pub(crate) approvals: std::sync::OnceLock<portcullis_approval::Approvals>,
}

/// The gateway's own discovery document for `portcullis login` and
/// `portcullis env`.
pub const WELL_KNOWN: &str = "/.well-known/portcullis";

impl HttpFront {
    /// Build the front for `cfg`. Fails if any connection's TLS settings
    /// or credential cannot be loaded: a gateway that cannot guard a
    /// connection does not start.
    pub fn new(
        cfg: &Config,
        auth: Authenticator,
        metrics: HttpMetrics,
        masks: Arc<RuleSet>,
        mask_metrics: MaskMetrics,
        sessions: portcullis_audit::Sessions,
        links: Arc<portcullis_link::AgentRegistry>,
    ) -> Result<Self, SetupError> {
        let mut upstreams = HashMap::new();
        for c in &cfg.connections {
            match &c.target {
                Target::Http(t) => {
                    upstreams.insert(c.name.clone(), Upstream::new(c, t, &cfg.upstream_tls)?);
                }
                Target::Agent(a) if a.protocol == "http" => {
                    let u = Upstream::via_agent(c, &a.agent, links.clone(), &cfg.upstream_tls)?;
                    upstreams.insert(c.name.clone(), u);
                }
                _ => {}
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                upstreams,
                protocols: cfg.protocols(),
                policy: Policy::new(cfg.grants.clone()),
                auth,
                domain: cfg.gateway.domain.clone(),
                max_body: cfg.limits.max_request_body_bytes,
                metrics,
                masks,
                mask_metrics,
                vaults: Default::default(),
                sessions,
                finishing: tokio_util::task::TaskTracker::new(),
                cert_names: cfg.gateway.client_auth.principal_from.clone(),
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
                approval_rules: cfg
                    .connections
                    .iter()
                    .filter_map(|c| c.approval.clone().map(|r| (c.name.clone(), r)))
                    .collect(),
                approvals: Default::default(),
            }),
        })
    }

    /// Authenticate a request the way the front does (for the gateway's
    /// other endpoints on this listener, such as `/mcp`).
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        conn: &ConnInfo,
    ) -> Result<Principal, ProxyError> {
        self.inner.authenticate(headers, conn).await
    }

    /// Whether `host`/`path` routes to a connection (and so belongs to
    /// the proxy, not to the gateway's own endpoints).
    pub fn routes(&self, host: Option<&str>, path: &str) -> bool {
        route(host, path, self.inner.domain.as_deref()).is_some()
    }

    /// Hold requests for approval where a connection's rule says so, and
    /// serve the review API.
    pub fn set_approvals(&self, approvals: portcullis_approval::Approvals) {
        let _ = self.inner.approvals.set(approvals);
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
        let resp = match self.inner.proxy(req, conn, &mut seen).await {
            Ok(r) => r,
            Err(e) => {
                seen.error.get_or_insert_with(|| e.to_string());
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

/// A refused body of up to this size is read and discarded before the
/// refusal is sent, for at most [`LINGER_TIME`]: a client still uploading
/// when the answer arrives may otherwise see a reset instead of the 413
/// (nginx's "lingering close" does the same).
const LINGER_MAX_BYTES: u64 = 8 * 1024 * 1024;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Read and discard what is left of a refused request's body (bounded in
/// size and time), so the client reads the refusal instead of a reset.
pub async fn linger(mut body: Incoming) {
    let drain = async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > LINGER_MAX_BYTES {
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
    /// Set once the session-start entry is durable: the session, and
    /// this request's number in it.
    live: Option<(Arc<crate::session::LiveSession>, u64)>,
    error: Option<String>,
    bytes_from_caller: Option<u64>,
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
            if status >= 400 {
                let reason = seen
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("HTTP {status}"));
                self.sessions
                    .refusal(
                        seen.principal.as_ref().map(|p| p.subject.clone()),
                        seen.connection.map(str::to_owned),
                        "http",
                        conn.peer.to_string(),
                        reason,
                    )
                    .await;
            }
            return resp;
        };
        let error = seen.error.clone();
        let bytes_from_caller = seen.bytes_from_caller.unwrap_or(0);
        let (parts, body) = resp.into_parts();
        let recorder = live.recorder.clone();
        let body = crate::tap::Tap::new(body, recorder, Some(request), false).on_end(
            move |bytes_to_caller| {
                live.finished(status, error, bytes_from_caller, bytes_to_caller);
            },
        );
        Response::from_parts(parts, body.boxed())
    }

    /// Who is calling: a bearer token when present, otherwise the client
    /// certificate verified in the handshake.
    pub(crate) async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        conn: &ConnInfo,
    ) -> Result<Principal, ProxyError> {
        let authorization = headers.get(header::AUTHORIZATION);
        let credential = match (authorization, &conn.tls.client_cert) {
            (None, Some(der)) => Credential::Certificate {
                der,
                names: &self.cert_names,
            },
            _ => Credential::Bearer(
                token::bearer(authorization.map(|v| v.as_bytes())).map_err(ProxyError::Auth)?,
            ),
        };
        self.auth.authenticate(credential).await.map_err(|e| {
            if e != AuthError::Unavailable {
                tracing::info!(peer = %conn.peer, reason = %e, "caller not authenticated");
            }
            ProxyError::Auth(e)
        })
    }

    async fn proxy<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        seen: &mut Seen<'a>,
    ) -> Result<Response<Body>, ProxyError> {
        // Authenticate before routing, so that unauthenticated callers
        // learn nothing about which connections exist.
        let principal = match self.authenticate(req.headers(), conn).await {
            Ok(p) => p,
            Err(e) => {
                // A refused caller may still be sending its body: read it,
                // or the client may see a reset instead of the 401.
                linger(req.into_body()).await;
                return Err(e);
            }
        };
        seen.principal = Some(principal);
        let principal = seen.principal.as_ref().expect("just set");

        let host = req.uri().host().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let r = match route(host, req.uri().path(), self.domain.as_deref()) {
            Some(r) => r,
            // The gateway's own API lives on paths no connection routes.
            None if req.uri().path() == crate::api::TOKENS => {
                return crate::api::mint_for_agent(self, req, principal).await;
            }
            None if req.uri().path().starts_with(crate::api::REVIEWS) => {
                let Some(approvals) = self.approvals.get() else {
                    return Err(ProxyError::NoRoute);
                };
                return crate::api::reviews(approvals, crate::api::REVIEWS, req, principal).await;
            }
            None => return Err(ProxyError::NoRoute),
        };
        let Some((name, upstream)) = self.upstreams.get_key_value(r.connection) else {
            return Err(match self.protocols.get(r.connection) {
                Some(protocol) => ProxyError::WrongProtocol {
                    connection: r.connection.to_owned(),
                    protocol,
                },
                None => ProxyError::UnknownConnection(r.connection.to_owned()),
            });
        };
        seen.connection = Some(name);

        match self.policy.decide(principal, name) {
            Decision::Allow { rule, .. } => seen.rule = Some(rule),
            Decision::Deny { reason } => {
                seen.error = Some(reason.to_string());
                linger(req.into_body()).await;
                return Err(ProxyError::Forbidden(reason));
            }
        }

        if has_dot_segment(r.rest) {
            return Err(ProxyError::CallerBody(
                "paths with `.` or `..` segments are not forwarded".into(),
            ));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared.filter(|n| *n > self.max_body) {
            if n <= LINGER_MAX_BYTES {
                linger(req.into_body()).await;
            }
            return Err(ProxyError::BodyTooLarge {
                limit: self.max_body,
            });
        }
        let rule = self.masks.select(name, &principal.groups);
        let vault = rule
            .filter(|r| r.masker.has_reversible())
            .and_then(|_| self.vaults.lock().ok())
            .map(|mut v| {
                v.entry((principal.subject.clone(), name.clone()))
                    .or_default()
                    .clone()
            });
        let query = req.uri().query().map(str::to_owned);
        let query = match (&vault, &query) {
            (Some(v), Some(q)) => v
                .lock()
                .ok()
                .and_then(|v| crate::masking::reverse_query(q, &v))
                .or(query.clone()),
            _ => query,
        };
        // The caller's own path and query: what a reviewer sees.
        let caller_pq = match &query {
            Some(q) => format!("{}?{q}", r.rest),
            None => r.rest.to_string(),
        };
        let uri = upstream
            .target_uri(r.rest, query.as_deref())
            .map_err(|e| ProxyError::CallerBody(format!("cannot build the target URI: {e}")))?;

        let method = req.method().clone();
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        let asked_session = crate::review::requested_session(&parts.headers)?;
        crate::headers::request_to_upstream(&mut parts.headers, upstream.injected_header());
        if let Ok(v) = HeaderValue::from_str(&conn.peer.ip().to_string()) {
            parts.headers.insert("x-forwarded-for", v);
        }
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let state = Arc::new(BodyState::default());
        let body = state.watch(body, self.max_body);
        let has_tokens = vault
            .as_ref()
            .is_some_and(|v| v.lock().map(|v| !v.is_empty()).unwrap_or(false));
        let body = if has_tokens {
            // Tokens may be in the body: read it (bounded by the request
            // limit) and swap them back before it goes upstream.
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
            let swapped = vault.as_ref().and_then(|v| {
                v.lock()
                    .ok()
                    .and_then(|v| crate::masking::reverse_body(ct.as_ref(), &bytes, &v))
            });
            let bytes = swapped.map(bytes::Bytes::from).unwrap_or(bytes);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            crate::full(bytes)
        } else {
            body
        };
        let body = match (self.approval_rules.get(name.as_str()), self.approvals.get()) {
            (Some(rule), Some(approvals)) => {
                crate::review::hold(
                    approvals,
                    rule,
                    principal,
                    name,
                    &method,
                    asked_session,
                    &caller_pq,
                    body,
                    &state,
                    self.max_body,
                )
                .await?
            }
            _ => body,
        };

        // The connection's session with this target, opened (durably, before
        // the first byte goes to the target; no entry, no request: fail
        // closed) by its first request.
        let auth = serde_json::to_value(&principal.via).unwrap_or_default();
        let key = crate::session::SessionKey {
            principal: principal.subject.clone(),
            auth: auth.to_string(),
            connection: name.clone(),
        };
        let opening = || portcullis_audit::Opening {
            principal: principal.subject.clone(),
            principal_kind: format!("{:?}", principal.kind).to_ascii_lowercase(),
            auth,
            connection: name.clone(),
            protocol: "http",
            peer: conn.peer.to_string(),
            tls: serde_json::to_value(&*conn.tls).unwrap_or_default(),
            rule: seen.rule.clone().unwrap_or_default(),
            agent: upstream.agent().map(str::to_owned),
        };
        let refused = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "audit or recording unavailable; request refused");
            ProxyError::AuditUnavailable
        };
        let live = conn
            .sessions
            .get_or_open(key, &self.finishing, || self.sessions.open(opening()))
            .await
            .map_err(|e| match e {
                crate::session::SessionError::Open(e) => refused(&e),
                crate::session::SessionError::TooMany => ProxyError::TooManySessions {
                    limit: crate::session::MAX_PER_CONNECTION,
                },
            })?;
        // A session opened earlier still stops taking requests when its
        // recordings cannot be stored (fail closed).
        self.sessions.sink().healthy().map_err(|e| refused(&e))?;
        let request_no = live.next_request();
        let request = portcullis_record::Event::HttpRequest {
            request: Some(request_no),
            method: method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: portcullis_record::redact_headers(
                parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_bytes())),
            ),
            body: None,
        };
        if let Err(e) = live.recorder.event(request) {
            tracing::error!(error = %e, "recording failed; request refused");
            return Err(ProxyError::AuditUnavailable);
        }
        let body =
            crate::tap::Tap::new(body, live.recorder.clone(), Some(request_no), true).boxed();
        seen.live = Some((live, request_no));
        seen.bytes_from_caller = declared;

        let sent = Instant::now();
        let result = upstream
            .forward(Request::from_parts(parts, body), &state)
            .await;
        self.metrics
            .upstream_seconds
            .get_or_create(&ConnectionLabel {
                connection: name.clone(),
            })
            .observe(sent.elapsed().as_secs_f64());
        if state.over_limit()
            && let Some(rest) = state.take_rest()
        {
            linger(rest).await;
        }
        let resp = result.map_err(|e| match e {
            ForwardError::Timeout(after) => ProxyError::UpstreamTimeout {
                connection: name.clone(),
                after,
            },
            ForwardError::BodyTooLarge => ProxyError::BodyTooLarge {
                limit: self.max_body,
            },
            ForwardError::CallerBody(reason) => ProxyError::CallerBody(reason),
            ForwardError::Upstream(reason) => ProxyError::Upstream {
                connection: name.clone(),
                reason,
            },
            ForwardError::AgentUnavailable(agent) => ProxyError::AgentUnavailable {
                connection: name.clone(),
                agent,
            },
        })?;
        let resp = match rule {
            None => resp.map(|b| b.map_err(Into::into).boxed()),
            Some(rule) => {
                let mut stats = portcullis_mask::Stats::new();
                let masked = crate::masking::mask_response(
                    rule,
                    &method,
                    resp,
                    &mut stats,
                    vault.as_deref(),
                )
                .await
                .map_err(|f| ProxyError::MaskFailed {
                    connection: name.clone(),
                    reason: f.0,
                })?;
                self.mask_metrics.record(name, &stats);
                masked
            }
        };
        let (mut parts, body) = resp.into_parts();
        crate::headers::response_to_caller(&mut parts.headers);
        // The caller's view of the response. Bodies that stream through
        // unmasked are not held in memory, so only their head is recorded.
        if let Some((live, request_no)) = seen.live.as_ref() {
            let w = &live.recorder;
            let event = portcullis_record::Event::HttpResponse {
                request: Some(*request_no),
                status: parts.status.as_u16(),
                headers: portcullis_record::redact_headers(
                    parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_bytes())),
                ),
                // The body follows as `http_body` events, as it is sent.
                body: None,
            };
            if let Err(e) = w.event(event) {
                tracing::error!(error = %e, "recording failed; response withheld");
                return Err(ProxyError::AuditUnavailable);
            }
        }
        Ok(Response::from_parts(parts, body))
    }
}
