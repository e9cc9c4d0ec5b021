//! The admin listener: metrics, health, status, agents and reviews.
//! Served over TLS like everything else; meant for loopback or a private
//! interface. Only `/healthz` and `/metrics` (which carry no statements,
//! parameters or names of people) are open to whoever reaches it;
//! everything else needs a bearer token, and reviews are shown and decided
//! under the same visibility rules as on the gateway's API. `/status` and
//! `/agents` show everything to an admin (`[console] admin_groups`); any
//! other caller sees whether sessions are taken, and only the agents and
//! connections its grants reach, without addresses, peers or error texts
//! (a review: any agent's token read the internal network's map here).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use portcullis_http::{Body, ConnInfo, full, json_response};
use prometheus_client::registry::Registry;

use crate::listener::Handler;

#[derive(Clone)]
pub struct Admin {
    pub(crate) registry: Arc<Registry>,
    pub(crate) links: Arc<portcullis_link::AgentRegistry>,
    pub(crate) approvals: portcullis_approval::Approvals,
    pub(crate) store: portcullis_store::Store,
    pub(crate) sink: portcullis_recordings::RecordingSink,
    pub(crate) audit: portcullis_audit::AuditLog,
    pub(crate) id: String,
    /// Identifies approvers deciding reviews here.
    pub(crate) auth: portcullis_identity::Authenticator,
    /// What a client certificate may name (the gateway listener's rules:
    /// the admin listener asks for one from the same CA, optionally).
    pub(crate) cert_names: portcullis_tls::CertPolicy,
    /// Where refusals here are written: evidence, as on the gateway
    /// listener (a review probed tokens and tried a self-approval here
    /// without a trace).
    pub(crate) sessions: portcullis_front::Sessions,
    /// The config in force: whose grants reach which agent's connections.
    pub(crate) stack: Arc<portcullis_front::Current<crate::reload::Stack>>,
    /// `[console] admin_groups`: who sees everything here.
    pub(crate) admin_groups: Vec<String>,
    /// `[gateway] metrics_token`: asked for on `/metrics` when set.
    pub(crate) metrics_token: Option<portcullis_config::Secret>,
}

impl Admin {
    /// Who is calling: the bearer token's principal, or (with no
    /// `Authorization`) the client certificate's; or the refusal.
    async fn caller(
        &self,
        req: &Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<portcullis_identity::Principal, portcullis_http::ProxyError> {
        use portcullis_http::ProxyError;
        use portcullis_identity::Credential;
        let authorization = req.headers().get(header::AUTHORIZATION);
        let credential = match (authorization, &conn.tls.client_cert) {
            (None, Some(der)) => Credential::Certificate {
                der,
                names: &self.cert_names,
            },
            _ => Credential::Bearer(
                portcullis_identity::token::bearer(authorization.map(|v| v.as_bytes()))
                    .map_err(ProxyError::Auth)?,
            ),
        };
        self.auth
            .authenticate(credential, portcullis_identity::Resource::Other)
            .await
            .map_err(ProxyError::Auth)
    }

    /// Everything but health and metrics: for an authenticated caller.
    async fn authenticated(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        let refused = |principal: Option<&str>, reason: String| {
            self.sessions.refusal(
                principal.map(str::to_owned),
                None,
                portcullis_config::Protocol::Http,
                conn.peer.to_string(),
                reason,
            )
        };
        let who = match self.caller(&req, conn).await {
            Ok(p) => p,
            Err(e) => {
                if refused(None, e.to_string()).await {
                    tracing::info!(peer = %conn.peer, reason = %e, "admin caller not authenticated");
                }
                portcullis_http::linger(req.into_body()).await;
                return e.into_response();
            }
        };
        let admin = crate::console::is_admin_in(&self.admin_groups, &who);
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/agents") => json_response(
                StatusCode::OK,
                &serde_json::json!({"agents": self.agents(&who, admin)}),
            ),
            (&Method::GET, "/status") => self.status(&who, admin).await,
            // The gateway API's review endpoints: a caller sees the
            // reviews they asked for or may decide, nothing else.
            (_, p) if p == "/reviews" || p.starts_with("/reviews/") => {
                match crate::api::reviews(&self.approvals, "/reviews", req, &who).await {
                    Ok(r) => r,
                    Err(e) => {
                        refused(Some(&who.subject), e.to_string()).await;
                        e.into_response()
                    }
                }
            }
            _ => not_found(),
        }
    }

    /// Whether `req` may read `/metrics`: always when no token is set,
    /// else with `Authorization: Bearer <token>` (compared in constant
    /// time). Its series name every connection and its traffic, so an
    /// operator whose admin listener callers can reach sets one.
    fn may_scrape(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.metrics_token else {
            return true;
        };
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|got| {
                aws_lc_rs::constant_time::verify_slices_are_equal(got, token.expose().as_bytes())
                    .is_ok()
            })
    }

    /// Whether sessions can be opened now: the store answers and takes
    /// audit entries, and the spool takes recordings. The reasons, if not.
    async fn readiness(&self) -> (serde_json::Value, Result<(), String>) {
        let ping = tokio::time::timeout(PROBE_TIMEOUT, self.store.ping()).await;
        let outage = self.audit.outage();
        let store = match (&ping, &outage) {
            (Ok(Ok(())), None) => {
                serde_json::json!({"backend": format!("{:?}", self.store.backend()).to_ascii_lowercase(), "ok": true})
            }
            (Ok(Err(e)), _) => serde_json::json!({"ok": false, "error": e.to_string()}),
            (Err(_), _) => {
                serde_json::json!({"ok": false, "error": format!("the store did not answer within {} ms", PROBE_TIMEOUT.as_millis())})
            }
            (Ok(Ok(())), Some(o)) => serde_json::json!({
                "ok": false,
                "error": format!("audit entries cannot be written: {}", o.reason),
                "failing_since_ms": o.since_ms,
                "unanswered": o.unanswered,
            }),
        };
        let verdict = match (store["ok"] == true, self.sink.healthy()) {
            (true, Ok(())) => Ok(()),
            (false, _) => Err("audit_store".to_owned()),
            (_, Err(_)) => Err("recording_spool".to_owned()),
        };
        (store, verdict)
    }

    /// The agents `who` may know of: all of them, with their addresses,
    /// for an admin; for anyone else the connections its grants reach
    /// (an agent serving none of them is not listed) and no address.
    fn agents(&self, who: &portcullis_identity::Principal, admin: bool) -> Vec<serde_json::Value> {
        let mut agents = self.links.list();
        if !admin {
            let stack = self.stack.load();
            agents.retain_mut(|a| {
                a.connections
                    .retain(|c| stack.ctx.policy.decide(who, &c.name).is_allow());
                !a.connections.is_empty()
            });
        }
        agents
            .into_iter()
            .map(|a| {
                let mut v = serde_json::json!(a);
                if let (false, Some(o)) = (admin, v.as_object_mut()) {
                    o.remove("address");
                }
                v
            })
            .collect()
    }

    /// This gateway, its store, its recordings and its peers (for an
    /// admin; the verdict alone for anyone else).
    async fn status(&self, who: &portcullis_identity::Principal, admin: bool) -> Response<Body> {
        let (store, verdict) = self.readiness().await;
        let code = if verdict.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        if !admin {
            // The verdict, not what the store said or where the peers are.
            return json_response(
                code,
                &serde_json::json!({
                    "id": self.id,
                    "accepting_sessions": verdict.is_ok(),
                    "refusing_for": verdict.err(),
                    "store": {"ok": store["ok"] == true},
                    "recordings": {"accepting_sessions": self.sink.healthy().is_ok()},
                    "agents": self.agents(who, false),
                }),
            );
        }
        let now = portcullis_identity::unix_now();
        let peers: Vec<serde_json::Value> = self
            .store
            .gateways(now - 30)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(id, url, started, seen)| {
                serde_json::json!({"id": id, "url": url, "started_at": started, "last_seen": seen, "self": id == self.id})
            })
            .collect();
        let (pending, oldest) = self.sink.backlog();
        let healthy = self.sink.healthy();
        json_response(
            code,
            &serde_json::json!({
                "id": self.id,
                "accepting_sessions": verdict.is_ok(),
                "refusing_for": verdict.err(),
                "store": store,
                "recordings": {
                    "pending_uploads": pending,
                    "oldest_pending_s": oldest.map(|d| d.as_secs()),
                    "accepting_sessions": healthy.is_ok(),
                    "error": healthy.err(),
                },
                "peers": peers,
                "agents": self.agents(who, true),
            }),
        )
    }
}

/// How long `/status` and `/healthz` wait for the store.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl Handler for Admin {
    async fn handle(&self, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                if !self.may_scrape(&req) {
                    // Evidence like any refusal (merged per address).
                    self.sessions
                        .refusal(
                            None,
                            None,
                            portcullis_config::Protocol::Http,
                            conn.peer.to_string(),
                            "GET /metrics without the metrics token".to_owned(),
                        )
                        .await;
                    portcullis_http::linger(req.into_body()).await;
                    let mut resp = json_response(
                        StatusCode::UNAUTHORIZED,
                        &serde_json::json!({"error": "unauthenticated",
                            "message": "/metrics needs the bearer token [gateway] metrics_token names"}),
                    );
                    resp.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return resp;
                }
                let mut text = String::new();
                if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry)
                {
                    tracing::error!(error = %e, "metrics encoding failed");
                    return json_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &serde_json::json!({"error": "internal", "message": "metrics encoding failed"}),
                    );
                }
                let mut resp = Response::new(full(Bytes::from(text)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            // Open (a load balancer's health check): the verdict of
            // /status without its details.
            (&Method::GET, "/healthz") => match self.readiness().await.1 {
                Ok(()) => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
                Err(cause) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"status": "unavailable", "cause": cause}),
                ),
            },
            _ => self.authenticated(req, &conn).await,
        }
    }
}

fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not_found", "message": "admin endpoints: GET /metrics, GET /healthz (open); GET /status, GET /agents, GET /reviews, GET /reviews/ID, POST /reviews/ID/approve|deny (bearer token)"}),
    )
}
