//! The API the console reads beyond what the CLI already had: who am I
//! (`/api/v1/me`), sessions a page at a time (`/api/v1/sessions`), and
//! reviews as they change (`/api/v1/reviews/events`, server-sent events).
//! Each answers only what the caller may see: their own sessions and
//! their agents', or everything for the console's admin groups.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_http::{Body, ProxyError, json_response};
use portcullis_identity::{AuthMethod, Principal};
use portcullis_store::{SessionQuery, SessionRow, Store};

use super::Console;

pub const ME: &str = "/api/v1/me";
pub const SESSIONS: &str = "/api/v1/sessions";
pub const REVIEW_EVENTS: &str = "/api/v1/reviews/events";
/// How often the review stream looks, and how long one stream lasts (a
/// browser's EventSource reconnects, authenticating again).
const EVENTS_EVERY: Duration = Duration::from_secs(1);
const EVENTS_FOR: Duration = Duration::from_secs(600);

/// `GET /api/v1/me`: the caller, and (for a console session) the value
/// its state changes must carry.
pub fn me(console: &Console, who: &Principal, session: Option<&str>) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "principal": who.subject,
            "kind": who.kind,
            "groups": who.groups,
            "method": who.via.label(),
            "admin": console.is_admin(who),
            "csrf": session.map(super::csrf_value),
        }),
    )
}

/// `GET /api/v1/sessions?principal=&connection=&protocol=&outcome=&live=1&before=MS&limit=N`.
pub async fn sessions(
    console: &Console,
    store: &Store,
    req: &Request<Incoming>,
    who: &Principal,
) -> Result<Response<Body>, ProxyError> {
    if req.method() != Method::GET {
        return Err(ProxyError::Method(req.method().clone(), "GET"));
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .take(16)
            .collect();
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let number = |k: &str| -> Result<Option<i64>, ProxyError> {
        get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ProxyError::CallerBody(format!("{k} must be a number")))
            })
            .transpose()
    };
    let name = who.subject.strip_prefix("user:").unwrap_or(&who.subject);
    let suffix = format!("@{name}");
    let limit = number("limit")?.unwrap_or(50).clamp(1, 200);
    let q = SessionQuery {
        visible_to: (!console.is_admin(who)).then_some((who.subject.as_str(), suffix.as_str())),
        principal: get("principal"),
        connection: get("connection"),
        protocol: get("protocol"),
        outcome: get("outcome"),
        live_only: get("live") == Some("1"),
        before_ms: number("before")?,
        limit: limit + 1,
    };
    let mut rows = store.sessions_page(&q).await.map_err(|e| {
        tracing::error!(error = %e, "listing sessions failed");
        ProxyError::AuditUnavailable
    })?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|r| r.started_at_ms)).flatten();
    let list: Vec<_> = rows.iter().map(session_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"sessions": list, "next_before": next}),
    ))
}

fn session_json(s: &SessionRow) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "principal": s.principal,
        "connection": s.connection,
        "protocol": s.protocol,
        "started_at_ms": s.started_at_ms,
        "ended_at_ms": s.ended_at_ms,
        "outcome": s.outcome,
        "live": s.ended_at_ms.is_none(),
        "recording_digest": s.recording_digest,
    })
}

/// `GET /api/v1/reviews/events`: the reviews the caller may see, sent
/// again each time they change, for ten minutes; ends early when the
/// caller's token is revoked or expires.
pub fn review_events(
    approvals: portcullis_approval::Approvals,
    store: Store,
    who: Principal,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + EVENTS_FOR;
        let mut last = String::new();
        while tokio::time::Instant::now() < until && credential_live(&store, &who).await {
            if let Ok(list) = approvals.list(None).await {
                let visible: Vec<_> = list
                    .into_iter()
                    .filter(|r| crate::api::review_visible(r, &who))
                    .collect();
                let json = serde_json::json!({"reviews": visible}).to_string();
                if json != last {
                    let event = format!("event: reviews\ndata: {json}\n\n");
                    if tx.send(Bytes::from(event)).await.is_err() {
                        return;
                    }
                    last = json;
                }
            }
            tokio::time::sleep(EVENTS_EVERY).await;
        }
    });
    let mut resp = Response::new(Events(rx).boxed());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether the credential a stream was opened with still holds.
async fn credential_live(store: &Store, who: &Principal) -> bool {
    let now = portcullis_identity::unix_now();
    match &who.via {
        AuthMethod::GatewayToken { token_id, .. } => match store.token_by_id(token_id).await {
            Ok(Some(t)) => t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now),
            _ => false,
        },
        AuthMethod::Oidc {
            expires_at: Some(exp),
            ..
        } => *exp > now,
        _ => true,
    }
}

/// A body fed by a channel: one frame per message, ended when the sender
/// is gone.
struct Events(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Events {
    type Data = Bytes;
    type Error = portcullis_http::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}
