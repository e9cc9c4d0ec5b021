//! The admin listener: metrics, health, agents and reviews. Served over
//! TLS like everything else; meant for loopback or a private interface.
//! Reading is open to whoever reaches it; deciding a review needs a
//! person's token, as on the gateway's API.

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
}

impl Admin {
    /// `GET /reviews/ID`, `POST /reviews/ID/approve|deny`: the gateway
    /// API's review endpoints, for the holder of a bearer token.
    async fn review_api(&self, req: Request<Incoming>) -> Response<Body> {
        use portcullis_http::ProxyError;
        let bearer = portcullis_identity::token::bearer(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
        let who = match bearer {
            Ok(t) => self
                .auth
                .authenticate(portcullis_identity::Credential::Bearer(t))
                .await
                .map_err(ProxyError::Auth),
            Err(e) => Err(ProxyError::Auth(e)),
        };
        let who = match who {
            Ok(p) => p,
            Err(e) => {
                portcullis_http::linger(req.into_body()).await;
                return e.into_response();
            }
        };
        crate::api::reviews(&self.approvals, "/reviews", req, &who)
            .await
            .unwrap_or_else(ProxyError::into_response)
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
    async fn handle(&self, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
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
            (&Method::GET, "/agents") => json_response(
                StatusCode::OK,
                &serde_json::json!({"agents": self.links.list()}),
            ),
            // The operator's view: every review.
            (&Method::GET, "/reviews") => match self.approvals.list(None).await {
                Ok(list) => json_response(StatusCode::OK, &serde_json::json!({"reviews": list})),
                Err(e) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"error": "store_unavailable", "message": e.to_string()}),
                ),
            },
            (_, p) if p.starts_with("/reviews/") => self.review_api(req).await,
            (&Method::GET, "/status") => self.status().await,
            (&Method::GET, "/healthz") => {
                json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not_found", "message": "admin endpoints: GET /metrics, GET /healthz, GET /status, GET /agents, GET /reviews, GET /reviews/ID, POST /reviews/ID/approve|deny (bearer token)"}),
            ),
        }
    }
}
