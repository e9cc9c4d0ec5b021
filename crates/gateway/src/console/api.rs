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

/// A request's query parameters (at most `max` of them are read).
struct Query(Vec<(String, String)>);

impl Query {
    fn of(req: &Request<Incoming>, max: usize) -> Self {
        Self(
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .take(max)
                .collect(),
        )
    }

    /// The value of the first `k`, unless it is empty.
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

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

/// `GET /api/v1/sessions?principal=&person=&connection=&protocol=&outcome=&since=MS&live=1&before=MS&before_id=ID&limit=N`
/// (`person=alice`: user:alice and the agents acting for her).
pub async fn sessions(
    console: &Console,
    store: &Store,
    req: &Request<Incoming>,
    who: &Principal,
) -> Result<Response<Body>, ProxyError> {
    if req.method() != Method::GET {
        return Err(ProxyError::Method(req.method().clone(), "GET"));
    }
    let params = Query::of(req, 16);
    let get = |k: &str| params.get(k);
    let number = |k: &str| -> Result<Option<i64>, ProxyError> {
        get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ProxyError::CallerBody(format!("{k} must be a number")))
            })
            .transpose()
    };
    // A person sees their own and their agents' sessions (an agent only
    // its own: no `user:` name to match).
    let name = match who.subject.strip_prefix("user:") {
        Some(n) if who.kind == portcullis_identity::PrincipalKind::Human => n,
        _ => "\u{0}",
    };
    let limit = number("limit")?.unwrap_or(50).clamp(1, 200);
    let before = number("before")?.map(|ms| (ms, get("before_id").unwrap_or("")));
    let q = SessionQuery {
        visible_to: (!console.is_admin(who)).then_some((who.subject.as_str(), name)),
        person: get("person").map(|p| p.strip_prefix("user:").unwrap_or(p)),
        since_ms: number("since")?,
        principal: get("principal"),
        connection: get("connection"),
        protocol: get("protocol"),
        outcome: get("outcome"),
        live_only: get("live") == Some("1"),
        before,
        limit: limit + 1,
    };
    let mut rows = store.sessions_page(&q).await.map_err(|e| {
        tracing::error!(error = %e, "listing sessions failed");
        ProxyError::AuditUnavailable
    })?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more
        .then(|| {
            rows.last()
                .map(|r| serde_json::json!({"ms": r.started_at_ms, "id": r.id}))
        })
        .flatten();
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
    console: &Console,
    approvals: portcullis_approval::Approvals,
    who: Principal,
) -> Response<Body> {
    // Counted per person: agents a person mints share the person's slots
    // (a review filled every slot with one person's agents).
    let Some(slot) = console.stream_slot(who.accountable()) else {
        return json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &serde_json::json!({"error": "busy", "message": "too many review streams open"}),
        );
    };
    let store = console.store().clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let _slot = slot;
        let until = tokio::time::Instant::now() + EVENTS_FOR;
        let mut last = String::new();
        while tokio::time::Instant::now() < until && credential_live(&store, &who).await {
            if let Ok(list) = approvals.list(None).await {
                let visible: Vec<_> = list
                    .into_iter()
                    .filter(|r| crate::api::review_visible(r, &who))
                    .map(|r| crate::api::review_for(r, &who))
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
            // A stream whose reader went away stops at once.
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(EVENTS_EVERY) => {}
            }
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
        AuthMethod::ClientCertificate {
            fingerprint,
            expires_at,
        } => {
            expires_at.is_none_or(|e| e > now)
                && matches!(store.is_cert_revoked(fingerprint).await, Ok(false))
        }
        AuthMethod::Oidc { .. } => true,
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

pub const AUDIT: &str = "/api/v1/audit";
pub const AUDIT_VERIFY: &str = "/api/v1/audit/verify";
pub const AUDIT_EXPORT: &str = "/api/v1/audit/export";

fn forbidden(what: &str) -> Response<Body> {
    json_response(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": "forbidden", "message": format!("{what} is for the console's admin groups")}),
    )
}

fn entry_json(r: &portcullis_store::AuditRow) -> serde_json::Value {
    serde_json::json!({
        "seq": r.seq,
        "time_ms": r.time_ms,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
        "event": serde_json::from_str::<serde_json::Value>(&r.event).unwrap_or_default(),
    })
}

/// `GET /api/v1/audit?before=SEQ&limit=N`: entries, newest first (admins).
pub async fn audit(
    console: &Console,
    req: &Request<Incoming>,
    who: &Principal,
) -> Result<Response<Body>, ProxyError> {
    if !console.is_admin(who) {
        return Ok(forbidden("the audit log"));
    }
    let params = Query::of(req, 16);
    let param = |k: &str| params.get(k).and_then(|v| v.parse::<i64>().ok());
    let limit = param("limit").unwrap_or(100).clamp(1, 500);
    let before = param("before").unwrap_or(i64::MAX);
    let rows = console
        .store()
        .audit_rows_before(before, limit)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reading the audit log failed");
            ProxyError::AuditUnavailable
        })?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let list: Vec<_> = rows.iter().map(entry_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"entries": list, "next_before": next}),
    ))
}

/// `GET /api/v1/audit/verify`: the whole chain checked against the
/// signed checkpoints, as `portcullis audit verify` does (admins; one at
/// a time).
pub async fn audit_verify(console: &Console, who: &Principal) -> Response<Body> {
    if !console.is_admin(who) {
        return forbidden("verifying the audit log");
    }
    let Ok(_one) = console.verifying.try_acquire() else {
        return json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &serde_json::json!({"error": "busy", "message": "a verification is already running"}),
        );
    };
    // Hashing the whole log is CPU work: off the async workers.
    let (store, dir) = (console.store().clone(), console.audit_dir.clone());
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        handle.block_on(portcullis_audit::verify(&store, &dir, None))
    })
    .await
    .unwrap_or_else(|e| Err(portcullis_audit::AuditError::Unavailable(e.to_string())));
    let body = match result {
        Ok(s) => serde_json::json!({
            "ok": true,
            "entries": s.entries,
            "last_seq": s.last_seq,
            "last_hash": s.last_hash,
            "checkpoints": s.checkpoints,
        }),
        Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
    };
    json_response(StatusCode::OK, &body)
}

/// `GET /api/v1/audit/export`: every entry as JSON lines, oldest first,
/// streamed a page at a time (admins).
pub fn audit_export(console: &Console, who: &Principal) -> Response<Body> {
    if !console.is_admin(who) {
        return forbidden("exporting the audit log");
    }
    let store = console.store().clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let mut after = 0;
        loop {
            let rows = match store.audit_rows(after, 1000).await {
                Ok(r) if !r.is_empty() => r,
                _ => return,
            };
            let mut chunk = String::new();
            for r in &rows {
                after = r.seq;
                chunk.push_str(&entry_json(r).to_string());
                chunk.push('\n');
            }
            if tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(Events(rx).boxed());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"portcullis-audit.jsonl\""),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub const ACCESS: &str = "/api/v1/access";
pub const ACCESS_EXPLAIN: &str = "/api/v1/access/explain";

/// `GET /api/v1/access`: connections with their protocol and approval
/// rule, the grants that reach each, and every grant (admins).
pub fn access(
    console: &Console,
    ctx: &portcullis_front::FrontContext,
    who: &Principal,
) -> Response<Body> {
    if !console.is_admin(who) {
        return forbidden("the access overview");
    }
    let grants = ctx.policy.grants();
    let agents = console.agents();
    let now = portcullis_identity::unix_now();
    let connections: Vec<_> = ctx
        .connections()
        .into_iter()
        .map(|(name, protocol)| {
            let approval = ctx.approval_of(name).map(|a| {
                serde_json::json!({
                    "mode": format!("{:?}", a.mode).to_ascii_lowercase(),
                    "classes": a.classes,
                    "methods": a.methods,
                    "tools": a.tools,
                    "approvers": a.approvers,
                    "required": a.required,
                })
            });
            let by: Vec<&str> = grants
                .iter()
                .filter(|g| g.connections.iter().any(|c| c == "*" || c == name))
                .map(|g| g.name.as_str())
                .collect();
            let masking: Vec<_> = ctx
                .masking_of(name)
                .map(|r| serde_json::json!({"rule": r.name, "groups": r.groups}))
                .collect();
            let agent = ctx.agent_of(name).map(|a| {
                let linked = agents
                    .iter()
                    .find(|l| l.agent == a && l.connections.iter().any(|c| c.name == name));
                serde_json::json!({
                    "name": a,
                    "linked": linked.is_some(),
                    "heartbeat_age_s": linked.map(|l| (now - l.last_heartbeat).max(0)),
                })
            });
            serde_json::json!({
                "name": name,
                "protocol": protocol.to_string(),
                "approval": approval,
                "grants": by,
                "masking": masking,
                "agent": agent,
            })
        })
        .collect();
    let grants: Vec<_> = grants
        .iter()
        .map(|g| {
            serde_json::json!({"name": g.name, "principals": g.principals, "groups": g.groups, "connections": g.connections})
        })
        .collect();
    let agents: Vec<_> = agents
        .iter()
        .map(|a| {
            serde_json::json!({
                "agent": a.agent,
                "version": a.version,
                "address": a.address,
                "connections": a.connections.iter().map(|c| &c.name).collect::<Vec<_>>(),
                "connected_at": a.connected_at,
                "heartbeat_age_s": (now - a.last_heartbeat).max(0),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &serde_json::json!({"connections": connections, "grants": grants, "agents": agents}),
    )
}

/// `GET /api/v1/access/explain?principal=P&groups=G1,G2&connection=C[&on_behalf_of=user:X]`:
/// what the policy decides for that caller, and by which grant (admins).
pub fn explain(
    console: &Console,
    ctx: &portcullis_front::FrontContext,
    req: &Request<Incoming>,
    who: &Principal,
) -> Result<Response<Body>, ProxyError> {
    if !console.is_admin(who) {
        return Ok(forbidden("explaining the policy"));
    }
    let params = Query::of(req, 8);
    let get = |k: &str| {
        params
            .get(k)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let principal =
        get("principal").ok_or_else(|| ProxyError::CallerBody("principal is missing".into()))?;
    portcullis_identity::validate_principal(&principal).map_err(ProxyError::CallerBody)?;
    let connection =
        get("connection").ok_or_else(|| ProxyError::CallerBody("connection is missing".into()))?;
    let groups: Vec<String> = get("groups")
        .map(|g| {
            g.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let on_behalf_of = get("on_behalf_of");
    let Some((_, protocol)) = ctx
        .connections()
        .into_iter()
        .find(|(n, _)| *n == connection)
    else {
        return Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"allow": false, "reason": format!("no connection named {connection:?}")}),
        ));
    };
    let asked = Principal {
        kind: portcullis_identity::PrincipalKind::of_subject(&principal),
        subject: principal,
        groups,
        via: AuthMethod::GatewayToken {
            token_id: String::new(),
            on_behalf_of,
            audience: None,
        },
    };
    let body = match ctx.decide(&asked, &connection, protocol) {
        Ok(rule) => serde_json::json!({"allow": true, "grant": rule}),
        Err(e) => serde_json::json!({"allow": false, "reason": e.to_string()}),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// The most records a replay answer carries (the rest are counted).
const MAX_RECORDS: usize = 5_000;
/// ... and at most this much of them (as JSON): a record may hold a 1 MiB
/// piece of a body, and a recording is never held decompressed whole.
const MAX_RECORD_BYTES: usize = 16 << 20;

/// Whether `who` may see a session of `principal`: their own, their own
/// agents' (`agent:NAME@them`, NAME without `@`), or any for an admin.
fn may_see(console: &Console, who: &Principal, principal: &str) -> bool {
    if console.is_admin(who) || principal == who.subject {
        return true;
    }
    let Some(name) = who
        .subject
        .strip_prefix("user:")
        .filter(|_| who.kind == portcullis_identity::PrincipalKind::Human)
    else {
        return false;
    };
    principal
        .strip_prefix("agent:")
        .and_then(|rest| rest.split_once('@'))
        .is_some_and(|(_, person)| person == name)
}

/// `GET /api/v1/sessions/ID/recording`: what the caller saw, as
/// recorded (masked), with the recording's digest and whether it is the
/// one the audit log sealed.
/// `GET /api/v1/tokens`: the caller's tokens and those of agents acting
/// for them (every token, for an admin), newest first; never a secret
/// (the store keeps only hashes).
pub async fn tokens(console: &Console, who: &Principal) -> Result<Response<Body>, ProxyError> {
    let admin = console.is_admin(who);
    let subject = (!admin).then_some(who.subject.as_str());
    let rows = console
        .store()
        .tokens_of(subject, if admin { 500 } else { 200 })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "listing tokens failed");
            ProxyError::AuditUnavailable
        })?;
    let mine = match &who.via {
        AuthMethod::GatewayToken { token_id, .. } => Some(token_id.as_str()),
        _ => None,
    };
    let now = portcullis_identity::unix_now();
    let list: Vec<_> = rows
        .iter()
        .map(|t| {
            let kind = match (t.audience.as_deref(), &t.on_behalf_of) {
                (Some("console"), _) => "console session",
                (Some(_), _) => "OAuth access",
                (None, Some(_)) => "agent, acting for a person",
                (None, None) => "token",
            };
            let state = match (t.revoked_at, t.expires_at) {
                (Some(_), _) => "revoked",
                (None, Some(e)) if e <= now => "expired",
                _ => "active",
            };
            serde_json::json!({
                "id": t.id,
                "principal": t.subject,
                "on_behalf_of": t.on_behalf_of,
                "groups": t.groups,
                "audience": t.audience,
                "kind": kind,
                "state": state,
                "created_at": t.created_at,
                "expires_at": t.expires_at,
                "revoked_at": t.revoked_at,
                "current": mine == Some(t.id.as_str()),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"tokens": list}),
    ))
}

/// `POST /api/v1/tokens/ID/revoke`: the caller's own tokens and their
/// agents' (any, for an admin); another's is as absent as a missing one.
/// Sessions the token opened end within about a second, on every gateway.
pub async fn revoke_token(
    console: &Console,
    req: Request<Incoming>,
    who: &Principal,
) -> Result<Response<Body>, ProxyError> {
    if req.method() != Method::POST {
        return Err(ProxyError::Method(req.method().clone(), "POST"));
    }
    let path = req.uri().path().to_owned();
    portcullis_http::linger(req.into_body()).await;
    let id = path
        .strip_prefix(crate::api::TOKENS)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_suffix("/revoke"))
        .unwrap_or("");
    let store_down = |e: portcullis_store::StoreError| {
        tracing::error!(error = %e, "revoking a token failed");
        ProxyError::AuditUnavailable
    };
    let found = match id.is_empty() || id.len() > 64 {
        true => None,
        false => console.store().token_by_id(id).await.map_err(store_down)?,
    };
    let visible = found.filter(|t| {
        console.is_admin(who)
            || t.subject == who.subject
            || t.on_behalf_of.as_deref() == Some(who.subject.as_str())
    });
    let Some(t) = visible else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "message": "no such token of yours"}),
        ));
    };
    console
        .audit()
        .append(&portcullis_audit::AuditEvent::Admin {
            action: "token_revoked".into(),
            detail: serde_json::json!({"token_id": t.id, "principal": t.subject, "by": who.subject}),
        })
        .await
        .map_err(|_| ProxyError::AuditUnavailable)?;
    let now = portcullis_identity::unix_now();
    console
        .store()
        .revoke_token(&t.id, now)
        .await
        .map_err(store_down)?;
    tracing::info!(token_id = %t.id, principal = %t.subject, by = %who.subject, "token revoked");
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"id": t.id, "revoked": true}),
    ))
}

/// `POST /api/v1/sessions/ID/end` (`{"reason": "…"}`): an admin asks
/// whichever gateway runs the live session to end it (within about a
/// second, through the store); audited before it is asked.
pub async fn end_session(
    console: &Console,
    req: Request<Incoming>,
    who: &Principal,
) -> Result<Response<Body>, ProxyError> {
    if req.method() != Method::POST {
        return Err(ProxyError::Method(req.method().clone(), "POST"));
    }
    let path = req.uri().path().to_owned();
    let id = path
        .strip_prefix(SESSIONS)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_suffix("/end"))
        .unwrap_or("")
        .to_owned();
    let body = http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
        .map_err(|_| ProxyError::BodyTooLarge { limit: 4096 })?
        .to_bytes();
    if !console.is_admin(who) {
        return Ok(forbidden("ending a session"));
    }
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ProxyError::CallerBody("not a session id".into()));
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct End {
        reason: Option<String>,
    }
    let end: End = if body.is_empty() {
        End { reason: None }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ProxyError::CallerBody(format!("expected {{\"reason\": \"…\"}}: {e}")))?
    };
    let reason: String = end
        .reason
        .unwrap_or_else(|| "ended from the console".into())
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let store_down = |e: portcullis_store::StoreError| {
        tracing::error!(error = %e, "ending a session failed");
        ProxyError::AuditUnavailable
    };
    let live = console
        .store()
        .session_by_id(&id)
        .await
        .map_err(store_down)?
        .is_some_and(|r| r.ended_at_ms.is_none());
    if !live {
        return Ok(json_response(
            StatusCode::CONFLICT,
            &serde_json::json!({"error": "not_live", "message": "no such live session"}),
        ));
    }
    console
        .audit()
        .append(&portcullis_audit::AuditEvent::Admin {
            action: "session_end_requested".into(),
            detail: serde_json::json!({"session": id, "by": who.subject, "reason": reason}),
        })
        .await
        .map_err(|_| ProxyError::AuditUnavailable)?;
    let now = portcullis_identity::unix_now();
    let asked = console
        .store()
        .request_session_end(&id, &who.subject, &reason, now)
        .await
        .map_err(store_down)?;
    tracing::info!(session = %id, by = %who.subject, %reason, asked, "session end requested");
    Ok(json_response(
        StatusCode::ACCEPTED,
        &serde_json::json!({"session": id, "ending": asked, "reason": reason}),
    ))
}

pub async fn recording(
    console: &Console,
    path: &str,
    who: &Principal,
) -> Result<Response<Body>, ProxyError> {
    let id = path
        .strip_prefix(SESSIONS)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_suffix("/recording"))
        .unwrap_or("");
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ProxyError::CallerBody("not a session id".into()));
    }
    let not_found = || {
        json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "message": "no such session, or no recording of it yet"}),
        )
    };
    let row = console.store().session_by_id(id).await.map_err(|e| {
        tracing::error!(error = %e, "session lookup failed");
        ProxyError::AuditUnavailable
    })?;
    // Another person's session is as absent as a missing one.
    let Some(row) = row.filter(|r| may_see(console, who, &r.principal)) else {
        return Ok(not_found());
    };
    let scratch = tempfile::tempdir().map_err(|e| ProxyError::CallerBody(e.to_string()))?;
    let file = match console.sink().fetch(id, scratch.path()).await {
        Ok(p) => p,
        Err(portcullis_recordings::SinkError::NotFound(_)) => return Ok(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "recording fetch failed");
            return Err(ProxyError::RecordingUnavailable(e.to_string()));
        }
    };
    // Decompressing and hashing a recording is CPU work.
    let read = tokio::task::spawn_blocking(move || {
        let r = portcullis_record::read_first(&file, MAX_RECORDS, MAX_RECORD_BYTES);
        drop(scratch);
        r
    })
    .await;
    let portcullis_record::First {
        records,
        total,
        digest,
    } = match read {
        Ok(Ok(r)) => r,
        _ => {
            return Ok(json_response(
                StatusCode::CONFLICT,
                &serde_json::json!({"error": "unreadable", "message": "the recording cannot be read (yet): try again when the session ends"}),
            ));
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "session": session_json(&row),
            "records": records,
            "total": total,
            "digest": digest,
            "audit_digest": row.recording_digest,
            "digest_matches": row.recording_digest.as_deref() == Some(digest.as_str()),
        }),
    ))
}

/// `GET /api/v1/budgets?principal=P`: what P has used of every grant's
/// budget (its rolling windows, from the store; a per-session limit is
/// counted by the live session and shown without use). Visible to P, the
/// person an agent acts for, and admins.
pub async fn budgets(
    console: &Console,
    ctx: &portcullis_front::FrontContext,
    req: &Request<Incoming>,
    who: &Principal,
) -> Result<Response<Body>, ProxyError> {
    let params = Query::of(req, 4);
    let principal = params.get("principal").unwrap_or(who.subject.as_str());
    if !may_see(console, who, principal) {
        return Err(ProxyError::Forbidden(
            portcullis_policy::DenyReason::NoGrant {
                principal: who.subject.clone(),
                connection: "the budgets of another principal".into(),
            },
        ));
    }
    // What a delegated agent spends is kept under its person (minting
    // agents must not multiply a budget): asked for its own, that is the
    // use to show. (Another principal's is shown under its name: whether
    // a token of that name was minted by its person is the token's.)
    let counted = match principal == who.subject {
        true => who.accountable(),
        false => principal,
    };
    let mut out = Vec::new();
    for g in ctx.policy.grants().iter().filter(|g| !g.budgets.is_empty()) {
        for l in &g.budgets {
            let (used, first) = if l.per.minutes().is_some() {
                let (u, f) = ctx.budgets.used(counted, &g.name, l).await.map_err(|e| {
                    tracing::error!(error = %e, "reading budgets failed");
                    ProxyError::Budget(portcullis_front::BudgetError::Unavailable(g.name.clone()))
                })?;
                (Some(u), f)
            } else {
                (None, None)
            };
            let resets_at = l.per.minutes().zip(first).map(|(m, f)| (f + m) * 60);
            out.push(serde_json::json!({
                "grant": g.name, "what": l.describe(), "measure": l.measure, "per": l.per,
                "only": l.only, "limit": l.limit, "used": used, "resets_at": resets_at,
            }));
        }
    }
    Ok(portcullis_http::json_response(
        StatusCode::OK,
        &serde_json::json!({ "principal": principal, "counted_under": counted, "budgets": out }),
    ))
}
