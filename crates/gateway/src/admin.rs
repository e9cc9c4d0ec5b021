//! The admin listener: metrics, health, status, agents and reviews.
//! Served over TLS like everything else; meant for loopback or a private
//! interface. Only `/healthz` and `/metrics` (which carry no statements,
//! parameters or names of people) are open to whoever reaches it;
//! everything else needs a bearer token, and reviews are shown and decided
//! under the same visibility rules as on the gateway's API.

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
    pub(crate) id: String,
    /// Identifies approvers deciding reviews here.
    pub(crate) auth: portcullis_identity::Authenticator,
    /// What a client certificate may name (the gateway listener's rules:
    /// the admin listener asks for one from the same CA, optionally).
    pub(crate) cert_names: portcullis_tls::CertPolicy,
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
            .authenticate(credential)
            .await
            .map_err(ProxyError::Auth)
    }

    /// Everything but health and metrics: for an authenticated caller.
    async fn authenticated(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        use portcullis_http::ProxyError;
        let who = match self.caller(&req, conn).await {
            Ok(p) => p,
            Err(e) => {
                portcullis_http::linger(req.into_body()).await;
                return e.into_response();
            }
        };
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/agents") => json_response(
                StatusCode::OK,
                &serde_json::json!({"agents": self.links.list()}),
            ),
            (&Method::GET, "/status") => self.status().await,
            // The gateway API's review endpoints: a caller sees the
            // reviews they asked for or may decide, nothing else.
            (_, p) if p == "/reviews" || p.starts_with("/reviews/") => {
                crate::api::reviews(&self.approvals, "/reviews", req, &who)
                    .await
                    .unwrap_or_else(ProxyError::into_response)
            }
            _ => not_found(),
        }
    }

    /// This gateway, its store, its recordings and its peers.
    async fn status(&self) -> Response<Body> {
        let now = portcullis_identity::unix_now();
        let store = match self.store.ping().await {
            Ok(()) => {
                serde_json::json!({"backend": format!("{:?}", self.store.backend()).to_ascii_lowercase(), "ok": true})
            }
            Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
        };
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
        let ok = store["ok"] == true && healthy.is_ok();
        json_response(
            if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            &serde_json::json!({
                "id": self.id,
                "store": store,
                "recordings": {
                    "pending_uploads": pending,
                    "oldest_pending_s": oldest.map(|d| d.as_secs()),
                    "accepting_sessions": healthy.is_ok(),
                    "error": healthy.err(),
                },
                "peers": peers,
                "agents": self.links.list(),
            }),
        )
    }
}

impl Handler for Admin {
    async fn handle(&self, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
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
            (&Method::GET, "/healthz") => {
                let ok = self.store.ping().await.is_ok() && self.sink.healthy().is_ok();
                if ok {
                    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
                } else {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({"status": "unavailable"}),
                    )
                }
            }
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
